//! How often the 95% interval of `--estimate` holds the true total.
//!
//! Real in-process leaves; a fault injector in front of them makes one leaf
//! unreachable for queries (it still reports its row count, as a leaf that
//! went away after its last report does). Each trial places 40 batches of
//! clustered random rows on 8 leaves with its own placement seed, then
//! compares the estimates of the partial answer with the true totals.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, AsArray, Float64Array};
use datafusion::arrow::datatypes::DataType;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use scuba::coverage::MissingReason;
use scuba::decode::InputFormat;
use scuba::ipc::IpcStream;
use scuba::schema::TIME_COLUMN_DEFAULT;
use scuba::wire::{BatchId, LeafStats};
use scuba_aggregator::engine::{Aggregator, QueryAnswer, QueryDefaults, QueryOptions};
use scuba_aggregator::ingest::{ingest, IngestOptions};
use scuba_aggregator::transport::{
    FragmentReply, InProcessTransport, IngestAck, IngestFailure, LeafTransport,
};
use scuba_leaf::{Leaf, LeafOptions};

const TRIALS: u64 = 200;
const LEAVES: usize = 8;
const BATCHES: usize = 40;

/// Real leaves, except that one never answers a fragment.
struct Unreachable {
    inner: InProcessTransport,
    leaf: usize,
}

#[async_trait]
impl LeafTransport for Unreachable {
    fn leaf_ids(&self) -> Vec<String> {
        self.inner.leaf_ids()
    }

    async fn stats(&self, leaf: usize) -> Result<LeafStats, MissingReason> {
        self.inner.stats(leaf).await
    }

    async fn fragment(
        &self,
        leaf: usize,
        table: &str,
        plan: Arc<Vec<u8>>,
    ) -> Result<FragmentReply, MissingReason> {
        if leaf == self.leaf {
            return Err(MissingReason::Unreachable);
        }
        self.inner.fragment(leaf, table, plan).await
    }

    async fn ingest(
        &self,
        leaf: usize,
        table: &str,
        batch_id: BatchId,
        ipc: Arc<IpcStream>,
    ) -> Result<IngestAck, IngestFailure> {
        self.inner.ingest(leaf, table, batch_id, ipc).await
    }
}

/// True totals of one trial's data.
#[derive(Debug, Default)]
struct Truth {
    rows: u64,
    sum_x: i64,
    /// Per group: rows, sum of x.
    groups: HashMap<String, (u64, i64)>,
}

/// Ingests `BATCHES` batches (one small input each, so one batch each) of
/// clustered rows: each batch has its own size, mean of `x` and mix of
/// groups, so leaves differ as clusters of batches do.
async fn load(transport: Arc<dyn LeafTransport>, trial: u64) -> Truth {
    let mut rng = StdRng::seed_from_u64(0xe571_0000 + trial);
    let mut truth = Truth::default();
    for b in 0..BATCHES {
        let rows = rng.random_range(20..=120);
        let mean = rng.random_range(0..100i64);
        let p_a = rng.random_range(0.1..0.9);
        let mut input = String::new();
        for _ in 0..rows {
            let x = mean + rng.random_range(0..50i64);
            let g = if rng.random_bool(p_a) { "a" } else { "b" };
            input.push_str(&format!("{{\"g\":\"{g}\",\"x\":{x}}}\n"));
            truth.rows += 1;
            truth.sum_x += x;
            let e = truth.groups.entry(g.to_string()).or_default();
            e.0 += 1;
            e.1 += x;
        }
        let report = ingest(
            Arc::clone(&transport),
            std::io::Cursor::new(input),
            IngestOptions {
                table: "t".into(),
                format: InputFormat::Jsonl,
                time_column: TIME_COLUMN_DEFAULT.into(),
                seed: Some(trial * 1_000 + b as u64),
                dry_run: false,
            },
            |_| {},
            |_| {},
        )
        .await
        .expect("ingest");
        assert_eq!(report.rows_ingested, rows as u64);
        assert_eq!(report.batches, 1);
    }
    truth
}

/// A cluster of fresh leaves whose aggregator cannot reach leaf `missing`.
fn cluster(missing: usize) -> (Arc<dyn LeafTransport>, Aggregator) {
    let leaves: Vec<Arc<Leaf>> = (0..LEAVES)
        .map(|i| {
            Leaf::open(LeafOptions::in_memory(&format!("leaf-{i}")))
                .expect("leaf")
                .0
        })
        .collect();
    let ingest_side: Arc<dyn LeafTransport> = Arc::new(InProcessTransport::new(leaves.clone()));
    let faulty: Arc<dyn LeafTransport> = Arc::new(Unreachable {
        inner: InProcessTransport::new(leaves),
        leaf: missing,
    });
    let addrs = (0..LEAVES)
        .map(|i| format!("in-process:leaf-{i}"))
        .collect();
    let aggregator = Aggregator::new(
        faulty,
        addrs,
        QueryDefaults {
            timeout_ms: 30_000,
            min_coverage: 0.0,
        },
    );
    (ingest_side, aggregator)
}

fn column<'a>(answer: &'a QueryAnswer, name: &str) -> &'a Float64Array {
    let (i, field) = answer
        .schema
        .column_with_name(name)
        .unwrap_or_else(|| panic!("no column {name} in {:?}", answer.schema));
    assert_eq!(field.data_type(), &DataType::Float64, "{name}");
    answer.batches[0]
        .column(i)
        .as_any()
        .downcast_ref::<Float64Array>()
        .expect("Float64")
}

/// (estimate, low, high) of column `name` in row `row`.
fn interval(answer: &QueryAnswer, name: &str, row: usize) -> (f64, f64, f64) {
    let get = |c: &str| {
        let a = column(answer, c);
        assert!(a.is_valid(row), "{c} is null");
        a.value(row)
    };
    (
        get(name),
        get(&format!("{name}_low95")),
        get(&format!("{name}_high95")),
    )
}

fn covers((_, low, high): (f64, f64, f64), truth: f64) -> bool {
    let slack = 1e-9 * truth.abs().max(1.0);
    low - slack <= truth && truth <= high + slack
}

#[derive(Debug, Default)]
struct Tally {
    covered: u64,
    trials: u64,
    /// Sum of relative half-widths, to report how wide intervals are.
    rel_width: f64,
}

impl Tally {
    fn add(&mut self, i: (f64, f64, f64), truth: f64) {
        self.trials += 1;
        if covers(i, truth) {
            self.covered += 1;
        }
        self.rel_width += (i.2 - i.1) / 2.0 / truth.abs().max(1.0);
    }

    fn fraction(&self) -> f64 {
        self.covered as f64 / self.trials.max(1) as f64
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn estimate_intervals_cover_the_true_totals() {
    let started = std::time::Instant::now();
    let options = QueryOptions {
        estimate: true,
        ..QueryOptions::default()
    };
    let names = ["count(*)", "sum(x)", "count(*) by g", "sum(x) by g"];
    let mut tallies: Vec<Tally> = names.iter().map(|_| Tally::default()).collect();
    for trial in 0..TRIALS {
        let missing = (trial as usize) % LEAVES;
        let (ingest_side, aggregator) = cluster(missing);
        let truth = load(ingest_side, trial).await;
        aggregator.refresh().await;

        let total = aggregator
            .query("SELECT count(*) AS n, sum(x) AS s FROM t", &options)
            .await
            .expect("query");
        let c = &total.coverage;
        assert!(c.partial && c.leaves_ok == LEAVES - 1, "{}", c.summary());
        assert_eq!(c.rows_total, truth.rows, "rows_total");
        if c.rows_covered == c.rows_total {
            // The missing leaf held nothing: no scaling, nothing to check.
            continue;
        }
        if trial == 0 {
            let names: Vec<&str> = total
                .schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect();
            assert_eq!(
                names,
                ["n", "n_low95", "n_high95", "s", "s_low95", "s_high95"]
            );
            assert!(
                total.notes.iter().any(|n| n.contains("7 of 8 leaves")),
                "{:?}",
                total.notes
            );
            println!("{}", total.coverage.summary());
            for note in &total.notes {
                println!("note: {note}");
            }
            println!(
                "n = {:?}, s = {:?}; truth n = {}, s = {}",
                interval(&total, "n", 0),
                interval(&total, "s", 0),
                truth.rows,
                truth.sum_x
            );
        }
        tallies[0].add(interval(&total, "n", 0), truth.rows as f64);
        tallies[1].add(interval(&total, "s", 0), truth.sum_x as f64);

        let grouped = aggregator
            .query(
                "SELECT g, count(*) AS n, sum(x) AS s FROM t GROUP BY g ORDER BY g",
                &options,
            )
            .await
            .expect("query");
        let keys = grouped.batches[0]
            .column(0)
            .as_string_view_opt()
            .expect("g is a string (leaves keep strings as views)");
        for row in 0..keys.len() {
            let (rows, sum) = truth.groups[keys.value(row)];
            tallies[2].add(interval(&grouped, "n", row), rows as f64);
            tallies[3].add(interval(&grouped, "s", row), sum as f64);
        }

        if trial < 20 {
            // A LIMIT keeps the group with the largest estimate, and its
            // estimate is the one without the limit: per-leaf runs see every
            // group, not each leaf's top one.
            let top = aggregator
                .query(
                    "SELECT g, count(*) AS n FROM t GROUP BY g ORDER BY n DESC LIMIT 1",
                    &options,
                )
                .await
                .expect("query");
            let g = top.batches[0]
                .column(0)
                .as_string_view_opt()
                .expect("g is a string (leaves keep strings as views)")
                .value(0);
            let row = (0..keys.len())
                .find(|&r| keys.value(r) == g)
                .expect("group");
            let (n, _, _) = interval(&grouped, "n", row);
            assert!(
                (0..keys.len()).all(|r| interval(&grouped, "n", r).0 <= n),
                "LIMIT kept a group that is not the largest"
            );
            let (a, b) = (interval(&top, "n", 0), interval(&grouped, "n", row));
            assert!(
                (a.0 - b.0).abs() < 1e-6 && (a.1 - b.1).abs() < 1e-6 && (a.2 - b.2).abs() < 1e-6,
                "{a:?} != {b:?}"
            );
        }
    }
    for (name, t) in names.iter().zip(&tallies) {
        println!(
            "{name}: the 95% interval covered the truth in {}/{} = {:.3} of trials \
             (mean relative half-width {:.4})",
            t.covered,
            t.trials,
            t.fraction(),
            t.rel_width / t.trials.max(1) as f64
        );
    }
    println!(
        "{TRIALS} trials in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (name, t) in names.iter().zip(&tallies) {
        assert!(t.trials >= TRIALS / 2, "{name}: only {} trials", t.trials);
        let f = t.fraction();
        assert!(
            (0.85..=1.0).contains(&f),
            "{name}: coverage {f:.3} is outside [0.85, 1.0]"
        );
    }
}
