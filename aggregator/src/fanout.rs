//! The fan-out state machine: which leaves answered, which are missing and
//! why, and whether the deadline has passed. No I/O and no clock: time comes
//! in as milliseconds since the query started, so tests drive it through
//! thousands of seeded schedules.
//!
//! Rules: a leaf's first outcome is final; an outcome at or after the
//! deadline is dropped and the leaf counts as `timeout`; at the deadline
//! every leaf still pending becomes `timeout`, and the answer is built from
//! what answered.

use scuba::coverage::{Coverage, MissingLeaf, MissingReason};

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The leaf answered; its tables held this many rows when it scanned.
    Answered {
        table_rows: u64,
    },
    Missing(MissingReason),
}

#[derive(Debug)]
pub struct FanOut {
    deadline_ms: u64,
    outcomes: Vec<Option<Outcome>>,
    finished_at_ms: Option<u64>,
}

impl FanOut {
    pub fn new(leaves: usize, deadline_ms: u64) -> Self {
        FanOut {
            deadline_ms,
            outcomes: vec![None; leaves],
            finished_at_ms: None,
        }
    }

    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }

    /// Records a leaf's outcome at `now_ms`. Returns whether it was kept
    /// (false when late, repeated, or after the answer was built).
    pub fn record(&mut self, leaf: usize, now_ms: u64, outcome: Outcome) -> bool {
        if self.finished_at_ms.is_some() || self.outcomes[leaf].is_some() {
            return false;
        }
        if now_ms >= self.deadline_ms {
            self.expire(now_ms);
            return false;
        }
        self.outcomes[leaf] = Some(outcome);
        if self.outcomes.iter().all(Option::is_some) {
            self.finished_at_ms = Some(now_ms);
        }
        true
    }

    /// At or past the deadline: every pending leaf times out.
    pub fn expire(&mut self, now_ms: u64) {
        if now_ms < self.deadline_ms || self.finished_at_ms.is_some() {
            return;
        }
        for o in &mut self.outcomes {
            if o.is_none() {
                *o = Some(Outcome::Missing(MissingReason::Timeout));
            }
        }
        self.finished_at_ms = Some(now_ms.min(self.deadline_ms));
    }

    /// True once every leaf has an outcome (answered, failed or timed out).
    pub fn is_done(&self) -> bool {
        self.finished_at_ms.is_some()
    }

    /// When the answer was complete (`None` while pending).
    pub fn finished_at_ms(&self) -> Option<u64> {
        self.finished_at_ms
    }

    pub fn outcome(&self, leaf: usize) -> Option<&Outcome> {
        self.outcomes[leaf].as_ref()
    }

    /// Coverage once done; `last_rows[i]` is what leaf `i` last reported for
    /// the queried tables, used for the leaves that did not answer.
    pub fn coverage(&self, ids: &[String], last_rows: &[u64]) -> Coverage {
        let mut answered = Vec::new();
        let mut missing = Vec::new();
        for (i, o) in self.outcomes.iter().enumerate() {
            match o {
                Some(Outcome::Answered { table_rows }) => answered.push(*table_rows),
                Some(Outcome::Missing(reason)) => missing.push((
                    MissingLeaf {
                        leaf: ids[i].clone(),
                        reason: reason.clone(),
                    },
                    last_rows[i],
                )),
                None => missing.push((
                    MissingLeaf {
                        leaf: ids[i].clone(),
                        reason: MissingReason::Timeout,
                    },
                    last_rows[i],
                )),
            }
        }
        Coverage::compute(&answered, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_answer_is_dropped_and_counts_as_timeout() {
        let mut f = FanOut::new(2, 100);
        assert!(f.record(0, 10, Outcome::Answered { table_rows: 5 }));
        assert!(!f.record(1, 100, Outcome::Answered { table_rows: 7 }));
        assert!(f.is_done());
        let c = f.coverage(&["a".into(), "b".into()], &[5, 7]);
        assert_eq!((c.rows_covered, c.rows_total, c.leaves_ok), (5, 12, 1));
        assert_eq!(c.missing[0].reason, MissingReason::Timeout);
    }

    #[test]
    fn answer_completes_as_soon_as_every_leaf_answered() {
        let mut f = FanOut::new(2, 100);
        f.record(1, 3, Outcome::Missing(MissingReason::Unreachable));
        assert!(!f.is_done());
        f.record(0, 4, Outcome::Answered { table_rows: 1 });
        assert_eq!(f.finished_at_ms(), Some(4));
    }
}
