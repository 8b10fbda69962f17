//! The aggregator keeps planned queries by SQL text, so a dashboard's
//! repeated query skips DataFusion's planning, and every leaf keeps the
//! fragments it decoded by their bytes, so it skips decoding. A kept plan
//! must answer exactly as a fresh one: it sees rows that arrived since, it
//! is dropped when a table's schema changes, and a query whose plan depends
//! on the moment it was planned (`now()`) is planned every time.
//!
//! Real in-process leaves through the embedded database.

use std::time::Duration;

use datafusion::arrow::util::pretty::pretty_format_batches;
use scuba_aggregator::embedded::Database;
use scuba_aggregator::engine::QueryAnswer;

fn lines(from: usize, to: usize, extra: &str) -> String {
    (from..to)
        .map(|i| {
            format!(
                "{{\"time\":{},\"service\":\"s{}\",\"latency\":{}{extra}}}\n",
                1_700_000_000 + i,
                i % 3,
                i * 7 % 50
            )
        })
        .collect()
}

async fn ingest(db: &Database, text: String) {
    let report = db
        .ingest_jsonl("t", std::io::Cursor::new(text.into_bytes()))
        .await
        .expect("ingest");
    assert_eq!(report.rows_rejected, 0);
}

fn text(answer: &QueryAnswer) -> String {
    pretty_format_batches(&answer.batches)
        .expect("printable")
        .to_string()
}

async fn answer(db: &Database, sql: &str) -> String {
    text(&db.query(sql).await.expect("query"))
}

/// `sql`'s answer, and how many planned queries the aggregator keeps then.
async fn answer_and_kept(db: &Database, sql: &str) -> (String, usize) {
    let text = answer(db, sql).await;
    (text, db.aggregator().plans_kept())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_query_is_planned_once_and_still_sees_new_rows() {
    let db = Database::open(3).expect("open");
    ingest(&db, lines(0, 100, "")).await;
    let sql = "SELECT count(*) AS n FROM t";
    let (first, kept) = answer_and_kept(&db, sql).await;
    assert!(
        first.contains("| 100 |") && kept == 1,
        "{first} kept {kept}"
    );
    ingest(&db, lines(100, 150, "")).await;
    let (second, kept) = answer_and_kept(&db, sql).await;
    assert!(second.contains("| 150 |"), "{second}");
    assert_eq!(
        kept, 1,
        "same schema: the kept plan was used, not a second one"
    );
    for leaf in db.leaves() {
        assert_eq!(leaf.fragments_kept(), 1, "{}: decoded once", leaf.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_fragment_sees_the_rows_of_each_moment() {
    // Filtered, grouped and top-k fragments: each leaf binds the fragment
    // it kept to the blocks it holds when the query comes.
    let db = Database::open(3).expect("open");
    let queries = [
        "SELECT service, count(*) AS n, max(latency) AS m FROM t \
         WHERE latency >= 20 GROUP BY service ORDER BY service",
        "SELECT time, latency FROM t ORDER BY latency DESC, time LIMIT 5",
        "SELECT min(time) AS first, max(time) AS last, count(*) AS n FROM t",
    ];
    for round in 0..3 {
        ingest(&db, lines(round * 500, (round + 1) * 500, "")).await;
        let fresh = Database::open(3).expect("open");
        ingest(&fresh, lines(0, (round + 1) * 500, "")).await;
        for sql in queries {
            let kept = answer(&db, sql).await;
            assert_eq!(kept, answer(&fresh, sql).await, "round {round}: {sql}");
        }
    }
    for leaf in db.leaves() {
        assert_eq!(leaf.fragments_kept(), queries.len(), "{}", leaf.id());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_column_drops_the_kept_plans() {
    let db = Database::open(3).expect("open");
    ingest(&db, lines(0, 30, "")).await;
    let (first, kept) = answer_and_kept(&db, "SELECT count(*) FROM t").await;
    assert!(first.contains("30") && kept == 1, "{first} kept {kept}");
    ingest(&db, lines(30, 40, ",\"region\":\"eu\"")).await;
    let sql = "SELECT count(region) AS r, count(*) AS n FROM t";
    let (second, kept) = answer_and_kept(&db, sql).await;
    assert!(second.contains("| 10 | 40 |"), "{second}");
    assert_eq!(kept, 1, "the plan made for the old schema is gone");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_is_read_anew_by_every_query() {
    let db = Database::open(2).expect("open");
    ingest(&db, lines(0, 10, "")).await;
    let first = answer(&db, "SELECT now() AS at").await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    let second = answer(&db, "SELECT now() AS at").await;
    assert_ne!(first, second, "now() was frozen in a kept plan");
    answer(&db, "SELECT count(*) FROM t WHERE time < now()").await;
    answer(&db, "SELECT random() AS r").await;
    assert_eq!(db.aggregator().plans_kept(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_plan_answers_as_it_did_the_first_time() {
    // Subqueries, joins, sorts and limits: nodes that hold state while
    // they run; a kept plan runs as a fresh copy every time.
    let db = Database::open(4).expect("open");
    ingest(&db, lines(0, 3_000, "")).await;
    let queries = [
        "SELECT service, count(*), avg(latency) FROM t \
         WHERE latency > (SELECT avg(latency) FROM t) GROUP BY service ORDER BY service",
        "SELECT a.service, count(*) FROM t a \
         JOIN (SELECT DISTINCT service FROM t WHERE latency < 10) b ON a.service = b.service \
         GROUP BY a.service ORDER BY a.service",
        "SELECT latency, time FROM t ORDER BY latency DESC, time LIMIT 7",
        "SELECT count(DISTINCT latency), approx_percentile_cont(latency, 0.5) FROM t",
    ];
    for sql in queries {
        let first = answer(&db, sql).await;
        for _ in 0..3 {
            assert_eq!(answer(&db, sql).await, first, "{sql}");
        }
    }
    assert_eq!(db.aggregator().plans_kept(), queries.len());
}
