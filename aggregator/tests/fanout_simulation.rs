//! Deterministic simulation of the fan-out state machine: thousands of
//! seeded schedules of answers, errors, unreachable and crashed leaves,
//! duplicates, late and out-of-order deliveries, driven in time order as the
//! engine drives it. Every run checks the coverage contract; a failure names
//! its seed (rerun one with `FANOUT_SEED=<seed>`).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scuba::coverage::MissingReason;
use scuba_aggregator::fanout::{FanOut, Outcome};

const RUNS: u64 = 5_000;
const BASE_SEED: u64 = 0x5c0b_a000;

/// One delivery to the aggregator.
#[derive(Debug, Clone)]
struct Event {
    at_ms: u64,
    leaf: usize,
    outcome: Outcome,
}

#[derive(Debug)]
struct Schedule {
    leaves: usize,
    deadline_ms: u64,
    events: Vec<Event>,
    /// Rows each leaf last reported (for the leaves that end up missing).
    last_rows: Vec<u64>,
    /// Whether the engine's timer fires (calls `expire`) at the deadline,
    /// and how late it fires.
    timer: Option<u64>,
}

fn schedule(rng: &mut StdRng) -> Schedule {
    let leaves = rng.random_range(1..=64);
    let deadline_ms = rng.random_range(1..=5_000);
    let mut events = Vec::new();
    let mut last_rows = Vec::with_capacity(leaves);
    for leaf in 0..leaves {
        let rows = rng.random_range(0..1_000_000u64);
        last_rows.push(rows);
        // Sent anywhere up to twice the deadline; the network may delay it
        // so that a later send arrives first.
        let at = |rng: &mut StdRng| {
            let sent = rng.random_range(0..deadline_ms * 2);
            sent + rng.random_range(0..=deadline_ms / 2 + 1)
        };
        let first = match rng.random_range(0..10) {
            0..=4 => Some(Outcome::Answered { table_rows: rows }),
            5 => Some(Outcome::Missing(MissingReason::Error("boom".into()))),
            6 => Some(Outcome::Missing(MissingReason::Unreachable)),
            7 => Some(Outcome::Missing(MissingReason::Restarting)),
            _ => None, // crashed: never answers
        };
        if let Some(o) = first {
            events.push(Event {
                at_ms: at(rng),
                leaf,
                outcome: o,
            });
        }
        // Duplicates and stragglers: more deliveries for the same leaf,
        // with other rows, possibly before the first one (out of order).
        for _ in 0..rng.random_range(0..3) {
            let outcome = if rng.random_bool(0.7) {
                Outcome::Answered {
                    table_rows: rng.random_range(0..1_000_000),
                }
            } else {
                Outcome::Missing(MissingReason::Timeout)
            };
            events.push(Event {
                at_ms: at(rng),
                leaf,
                outcome,
            });
        }
        // Sometimes a delivery exactly at the deadline.
        if rng.random_bool(0.05) {
            events.push(Event {
                at_ms: deadline_ms,
                leaf,
                outcome: Outcome::Answered { table_rows: rows },
            });
        }
    }
    // Deliveries are in arrival order; ties keep the order they were made in.
    events.sort_by_key(|e| e.at_ms);
    let timer = rng.random_bool(0.8).then(|| rng.random_range(0..=50));
    Schedule {
        leaves,
        deadline_ms,
        events,
        last_rows,
        timer,
    }
}

/// Drives one schedule; `Err` describes the first broken promise.
fn run(seed: u64) -> Result<(), String> {
    let mut rng = StdRng::seed_from_u64(seed);
    let s = schedule(&mut rng);
    let ids: Vec<String> = (0..s.leaves).map(|i| format!("leaf-{i}")).collect();
    let mut fan = FanOut::new(s.leaves, s.deadline_ms);
    // The model: each leaf's first delivery before the deadline and before
    // the answer is complete is final.
    let mut expected: Vec<Option<Outcome>> = vec![None; s.leaves];
    let mut timer_fired = false;
    let mut finished_model: Option<u64> = None;
    let fire_at = s.timer.map(|late| s.deadline_ms + late);

    for e in &s.events {
        if let Some(at) = fire_at {
            if !timer_fired && e.at_ms >= at {
                fan.expire(at);
                timer_fired = true;
                if finished_model.is_none() {
                    finished_model = Some(s.deadline_ms);
                }
            }
        }
        let kept = fan.record(e.leaf, e.at_ms, e.outcome.clone());
        let should_keep =
            finished_model.is_none() && e.at_ms < s.deadline_ms && expected[e.leaf].is_none();
        if kept != should_keep {
            return Err(format!(
                "record({e:?}) returned {kept}, expected {should_keep} (deadline {})",
                s.deadline_ms
            ));
        }
        if should_keep {
            expected[e.leaf] = Some(e.outcome.clone());
            if expected.iter().all(Option::is_some) {
                finished_model = Some(e.at_ms);
            }
        } else if finished_model.is_none() && expected[e.leaf].is_none() && e.at_ms >= s.deadline_ms
        {
            // A late first outcome ends the wait (a repeat is ignored first).
            finished_model = Some(s.deadline_ms);
        }
        if kept && matches!(e.outcome, Outcome::Answered { .. }) && e.at_ms >= s.deadline_ms {
            return Err(format!("late answer kept: {e:?}"));
        }
    }
    if let Some(at) = fire_at {
        if !timer_fired {
            fan.expire(at);
            if finished_model.is_none() {
                finished_model = Some(s.deadline_ms);
            }
        }
    }
    // Before the deadline, nothing forces the answer.
    fan.expire(s.deadline_ms.saturating_sub(1));
    if fan.is_done() != finished_model.is_some() {
        return Err(format!(
            "done = {}, model says {:?}",
            fan.is_done(),
            finished_model
        ));
    }
    // What the engine does once it stops waiting.
    fan.expire(u64::MAX);
    let finished_model = finished_model.unwrap_or(s.deadline_ms);

    if !fan.is_done() {
        return Err("not done after expire(u64::MAX)".into());
    }
    let finished = fan.finished_at_ms().ok_or("done without a finish time")?;
    if finished > s.deadline_ms {
        return Err(format!(
            "finished at {finished}, after the deadline {}",
            s.deadline_ms
        ));
    }
    if finished != finished_model {
        return Err(format!("finished at {finished}, expected {finished_model}"));
    }

    let mut answered_rows = 0u64;
    let mut answered = 0usize;
    for (leaf, first) in expected.iter().enumerate() {
        let want = first
            .clone()
            .unwrap_or(Outcome::Missing(MissingReason::Timeout));
        let got = fan.outcome(leaf).cloned();
        if got.as_ref() != Some(&want) {
            return Err(format!("leaf {leaf}: outcome {got:?}, expected {want:?}"));
        }
        if let Some(Outcome::Answered { table_rows }) = got {
            answered_rows += table_rows;
            answered += 1;
            let on_time = s.events.iter().any(|e| {
                e.leaf == leaf
                    && e.at_ms < s.deadline_ms
                    && e.outcome == Outcome::Answered { table_rows }
            });
            if !on_time {
                return Err(format!(
                    "leaf {leaf} counted as answered from a late outcome"
                ));
            }
        }
    }

    let c = fan.coverage(&ids, &s.last_rows);
    if c.leaves_total != s.leaves {
        return Err(format!("leaves_total {} of {}", c.leaves_total, s.leaves));
    }
    if c.leaves_ok + c.missing.len() != c.leaves_total {
        return Err(format!(
            "leaves_ok {} + missing {} != leaves_total {}",
            c.leaves_ok,
            c.missing.len(),
            c.leaves_total
        ));
    }
    if c.leaves_ok != answered {
        return Err(format!("leaves_ok {}, expected {answered}", c.leaves_ok));
    }
    if c.rows_covered != answered_rows {
        return Err(format!(
            "rows_covered {}, answered leaves hold {answered_rows}",
            c.rows_covered
        ));
    }
    if !(0.0..=1.0).contains(&c.coverage) {
        return Err(format!("coverage {} outside [0, 1]", c.coverage));
    }
    if c.partial == c.missing.is_empty() {
        return Err(format!(
            "partial {} with {} missing",
            c.partial,
            c.missing.len()
        ));
    }
    // Late or repeated outcomes after the end change nothing.
    let before = c.clone();
    for leaf in 0..s.leaves {
        if fan.record(leaf, 0, Outcome::Answered { table_rows: 1 }) {
            return Err(format!(
                "leaf {leaf}: outcome kept after the answer was built"
            ));
        }
    }
    if fan.coverage(&ids, &s.last_rows) != before {
        return Err("coverage changed after the answer was built".into());
    }
    Ok(())
}

#[test]
fn fan_out_keeps_the_coverage_contract_under_random_schedules() {
    let seeds: Vec<u64> = match std::env::var("FANOUT_SEED") {
        Ok(s) => vec![s.parse().expect("FANOUT_SEED is a number")],
        Err(_) => (0..RUNS).map(|i| BASE_SEED + i).collect(),
    };
    for seed in seeds {
        if let Err(why) = run(seed) {
            panic!("fan-out simulation failed with seed {seed}: {why}");
        }
    }
}
