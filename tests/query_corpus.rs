//! The query corpus (tests/corpus/events.sql) through a real 4-leaf cluster
//! and through the embedded database, each answer compared row by row with
//! one DataFusion session holding all the rows. Data: `scubactl gen` events
//! with NULLs, strings, tags, floats and both time formats.

mod common;

use common::{assert_same_rows, corpus, gen_events, oracle, oracle_rows, TestCluster};

const ROWS: u64 = 20_000;

#[test]
fn corpus_through_a_four_leaf_cluster_matches_one_datafusion_session() {
    let data = gen_events(ROWS, 42);
    let cluster = TestCluster::up(4);
    let out = cluster.ingest("events", &data, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ctx = oracle("events", &data);
    let queries = corpus();
    assert!(
        queries.len() >= 25,
        "the corpus has {} queries",
        queries.len()
    );
    for q in &queries {
        let answer = cluster.query_json(&q.sql, &[]);
        assert_eq!(answer["coverage"]["coverage"], 1.0, "{}", q.sql);
        let got = answer["rows"].as_array().unwrap();
        assert_same_rows(q, got, &oracle_rows(&ctx, &q.sql));
    }
}

#[test]
fn corpus_through_the_embedded_database_matches_one_datafusion_session() {
    let data = gen_events(ROWS, 43);
    let ctx = oracle("events", &data);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = scuba_aggregator::embedded::Database::open(4).unwrap();
    let report = rt
        .block_on(db.ingest_jsonl("events", std::io::Cursor::new(data.clone())))
        .unwrap();
    assert_eq!((report.rows_ingested, report.rows_rejected), (ROWS, 0));
    for q in &corpus() {
        let answer = rt
            .block_on(db.query(&q.sql))
            .unwrap_or_else(|e| panic!("{}: {e}", q.sql));
        assert_eq!(answer.coverage.coverage, 1.0);
        let got = scuba::render::rows(&answer.batches);
        assert_same_rows(q, &got, &oracle_rows(&ctx, &q.sql));
    }
}

#[test]
fn leaves_return_partial_aggregates_not_rows() {
    // 200k rows, 6 services: a GROUP BY must bring back at most one partial
    // row per group per leaf-local partition, whatever the rows scanned.
    let data = gen_events(200_000, 44);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let db = scuba_aggregator::embedded::Database::open(4).unwrap();
    rt.block_on(db.ingest_jsonl("events", std::io::Cursor::new(data)))
        .unwrap();
    let answer = rt
        .block_on(
            db.query("SELECT service, count(*), avg(latency_ms) FROM events GROUP BY service"),
        )
        .unwrap();
    let groups = 6;
    let partitions_per_leaf = scuba_leaf::fragment::LEAF_SCAN_PARTITIONS as u64;
    assert!(
        answer.rows_from_leaves <= groups * 4 * partitions_per_leaf,
        "{} rows crossed for {groups} groups",
        answer.rows_from_leaves
    );
    // Top-k: each leaf sends at most k rows.
    let answer = rt
        .block_on(db.query("SELECT id, latency_ms FROM events ORDER BY latency_ms DESC LIMIT 10"))
        .unwrap();
    assert!(
        answer.rows_from_leaves <= 10 * 4,
        "{} rows crossed for a top-10",
        answer.rows_from_leaves
    );
}
