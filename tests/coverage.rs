//! Coverage on every answer: exact on a healthy cluster, and honest when a
//! leaf is gone (killed with SIGKILL: named, `unreachable`, its rows counted
//! in the total but not covered).

mod common;

use common::{gen_events, TestCluster};
use serde_json::json;

#[test]
fn healthy_cluster_answers_with_full_coverage_and_exact_row_totals() {
    let cluster = TestCluster::up(4);
    assert!(cluster
        .ingest("events", &gen_events(10_000, 3), &[])
        .status
        .success());
    assert!(cluster
        .ingest("other", b"{\"x\": 1}\n", &[])
        .status
        .success());
    let answer = cluster.query_json("SELECT count(*) FROM events", &[]);
    let c = &answer["coverage"];
    assert_eq!(c["leaves_total"], 4);
    assert_eq!(c["leaves_ok"], 4);
    assert_eq!(c["missing"], json!([]));
    assert_eq!(c["rows_total"], 10_000, "rows of the queried table only");
    assert_eq!(c["rows_covered"], 10_000);
    assert_eq!(c["coverage"], 1.0);
    assert_eq!(c["partial"], false);
}

#[test]
fn table_and_csv_formats_print_coverage_on_stderr_only() {
    let cluster = TestCluster::up(2);
    assert!(cluster
        .ingest("t", b"{\"x\": 1}\n{\"x\": 2}\n", &[])
        .status
        .success());
    for format in ["table", "csv"] {
        let out = cluster.run(
            &["query", "--format", format, "SELECT sum(x) AS s FROM t"],
            None,
        );
        assert!(out.status.success());
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stdout.contains('3') && !stdout.contains("coverage"),
            "{format}: {stdout}"
        );
        assert!(
            stderr.contains("coverage 1.0000 (2 of 2 rows)"),
            "{format}: {stderr}"
        );
    }
}

#[test]
fn bad_sql_exits_2_with_datafusion_error() {
    let cluster = TestCluster::up(1);
    assert!(cluster.ingest("t", b"{\"x\": 1}\n", &[]).status.success());
    let out = cluster.run(&["query", "SELEC x FROM t"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("error"));
    let out = cluster.run(&["query", "SELECT nope FROM t"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));
}

#[test]
fn statements_that_change_state_are_refused_and_change_nothing() {
    let cluster = TestCluster::up(1);
    assert!(cluster.ingest("t", b"{\"x\": 1}\n", &[]).status.success());
    for sql in [
        "CREATE VIEW v AS SELECT x FROM t",
        "CREATE TABLE u AS SELECT 1 AS y",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let out = cluster.run(&["query", sql], None);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sql}: {stderr}");
        assert!(stderr.contains("not supported"), "{sql}: {stderr}");
    }
    let out = cluster.run(&["query", "SELECT * FROM v"], None);
    assert_eq!(out.status.code(), Some(2), "the view must not exist");
}

#[test]
fn killed_leaf_is_named_unreachable_and_its_rows_are_not_covered() {
    let cluster = TestCluster::up(4);
    assert!(cluster
        .ingest("events", &gen_events(20_000, 5), &[])
        .status
        .success());
    let before = cluster.rows_per_leaf("events");
    // Kill the leaf holding the most rows, so its loss shows in the coverage.
    let (victim, _) = before.iter().max_by_key(|(_, rows)| *rows).unwrap().clone();
    let pid = cluster.pid(&victim);
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let started = std::time::Instant::now();
    let answer = cluster.query_json("SELECT count(*) FROM events", &["--timeout", "2000"]);
    assert!(started.elapsed().as_millis() < 4_000);
    let c = &answer["coverage"];
    let live: u64 = before
        .iter()
        .filter(|(l, _)| *l != victim)
        .map(|(_, r)| r)
        .sum();
    assert_eq!(c["partial"], true);
    assert_eq!(c["leaves_ok"], 3);
    assert_eq!(c["rows_total"], 20_000);
    assert_eq!(c["rows_covered"], live);
    assert_eq!(
        c["missing"],
        json!([{"leaf": victim, "reason": "unreachable"}])
    );
    assert_eq!(answer["rows"][0][0], live);

    // A minimum the answer meets passes; one it misses fails with exit 3.
    let loose = cluster.run(
        &[
            "query",
            "--min-coverage",
            "0.1",
            "SELECT count(*) FROM events",
        ],
        None,
    );
    assert_eq!(
        loose.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&loose.stderr)
    );
    let tight = cluster.run(
        &[
            "query",
            "--min-coverage",
            "0.99",
            "SELECT count(*) FROM events",
        ],
        None,
    );
    assert_eq!(tight.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&tight.stderr).contains("below the minimum"));

    let strict = cluster.run(&["query", "--strict", "SELECT count(*) FROM events"], None);
    assert_eq!(
        strict.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&strict.stderr)
    );
    assert!(String::from_utf8_lossy(&strict.stderr).contains(&victim));

    // With --estimate, COUNT is scaled to all rows and comes with a 95%
    // interval; the partial answer's coverage is unchanged.
    let est = cluster.query_json(
        "SELECT service, count(*) AS n FROM events GROUP BY service ORDER BY service",
        &["--estimate"],
    );
    let columns: Vec<&str> = est["columns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(columns, ["service", "n", "n_low95", "n_high95"]);
    let estimated: f64 = est["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[1].as_f64().unwrap())
        .sum();
    assert!(
        (estimated - 20_000.0).abs() < 2_000.0,
        "estimated {estimated} of 20000 rows"
    );
}

#[test]
fn stopped_leaf_costs_at_most_the_deadline_and_is_named_timeout() {
    let cluster = TestCluster::up(4);
    assert!(cluster
        .ingest("events", &gen_events(40_000, 6), &[])
        .status
        .success());
    let before = cluster.rows_per_leaf("events");
    let (victim, victim_rows) = before.iter().max_by_key(|(_, rows)| *rows).unwrap().clone();
    let pid = cluster.pid(&victim);
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let started = std::time::Instant::now();
    let answer = cluster.query_json("SELECT count(*) FROM events", &["--timeout", "1000"]);
    let elapsed_ms = started.elapsed().as_millis();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // The deadline plus process start-up of scubactl itself (a debug build).
    assert!(elapsed_ms < 1000 + 1500, "answered after {elapsed_ms} ms");
    let c = &answer["coverage"];
    assert_eq!(c["missing"], json!([{"leaf": victim, "reason": "timeout"}]));
    assert_eq!(c["rows_total"], 40_000);
    assert_eq!(c["rows_covered"], 40_000 - victim_rows);

    let after = cluster.query_json("SELECT count(*) FROM events", &[]);
    assert_eq!(after["coverage"]["partial"], false, "{}", after["coverage"]);
    assert_eq!(after["rows"][0][0], 40_000);
}
