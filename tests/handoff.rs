//! Fast redeploy: a leaf hands its memory to its successor through shared
//! memory. The successor serves exactly the same rows, never serves a
//! segment it cannot check (it recovers from its disk log instead), and
//! queries keep answering meanwhile, naming the leaf `restarting`.

mod common;

use std::path::PathBuf;

use common::{assert_same_rows, corpus, gen_events, TestCluster};
use serde_json::{json, Value};

fn answers(cluster: &TestCluster) -> Vec<Vec<Value>> {
    corpus()
        .iter()
        .map(|q| {
            cluster.query_json(&q.sql, &[])["rows"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect()
}

fn shm_dir(cluster: &TestCluster, leaf: &str) -> PathBuf {
    scuba_leaf::leaf::default_shm_dir(leaf, &cluster.path().join("leaves").join(leaf))
}

fn leaf_log(cluster: &TestCluster, leaf: &str) -> String {
    std::fs::read_to_string(cluster.path().join("logs").join(format!("{leaf}.log"))).unwrap()
}

fn run_ok(cluster: &TestCluster, args: &[&str]) -> String {
    let out = cluster.run(args, None);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn handoff_restart_serves_identical_answers_and_takes_writes_after() {
    let cluster = TestCluster::up(2);
    assert!(cluster
        .ingest("events", &gen_events(30_000, 11), &[])
        .status
        .success());
    let before = answers(&cluster);
    let rows_before = cluster.rows_per_leaf("events");
    for leaf in ["leaf-0", "leaf-1"] {
        let said = run_ok(&cluster, &["leaf", "restart", leaf, "--handoff"]);
        assert!(said.contains("restarted with hand-off"), "{said}");
        assert!(leaf_log(&cluster, leaf).contains("adopted the hand-off segment in place"));
    }
    assert_eq!(cluster.rows_per_leaf("events"), rows_before);
    for ((q, got), want) in corpus().iter().zip(answers(&cluster)).zip(before) {
        assert_same_rows(q, &got, &want);
    }
    assert!(cluster
        .ingest("events", b"{\"id\": 30000, \"service\": \"late\"}\n", &[])
        .status
        .success());
    let answer = cluster.query_json("SELECT count(*), max(id) FROM events", &[]);
    assert_eq!(answer["rows"][0], json!([30_001, 30_000]));
    assert_eq!(answer["coverage"]["partial"], false);
}

/// Stops leaf-0 with a hand-off segment, damages the segment with `damage`,
/// starts the leaf again and checks it refused the segment for `reason`,
/// recovered every row from its log, and answers correctly.
fn corrupt_then_restart(damage: impl Fn(&PathBuf), reason: &str) {
    let cluster = TestCluster::up(2);
    assert!(cluster
        .ingest("events", &gen_events(30_000, 12), &[])
        .status
        .success());
    let rows_before = cluster.rows_per_leaf("events");
    let sum_before =
        cluster.query_json("SELECT sum(bytes), count(*) FROM events", &[])["rows"].clone();
    run_ok(&cluster, &["leaf", "stop", "leaf-0", "--handoff"]);
    damage(&shm_dir(&cluster, "leaf-0"));
    run_ok(&cluster, &["cluster", "up"]);
    // Served at once; a block that fails its check is found by the scan
    // that would read it or by the background pass. Until the log has
    // rebuilt the tables, every answer is right or names leaf-0 missing.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !leaf_log(&cluster, "leaf-0").contains("recovered from the disk log") {
        let answer = cluster.query_json("SELECT sum(bytes), count(*) FROM events", &[]);
        if answer["coverage"]["partial"] == true {
            assert_eq!(
                answer["coverage"]["missing"][0]["leaf"], "leaf-0",
                "{answer}"
            );
            assert_eq!(
                answer["coverage"]["missing"][0]["reason"], "restarting",
                "{answer}"
            );
        } else {
            assert_eq!(answer["rows"], sum_before, "{answer}");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "leaf-0 never recovered"
        );
    }
    let log = leaf_log(&cluster, "leaf-0");
    let refused = log
        .lines()
        .find(|l| l.contains("hand-off segment refused"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(refused.contains(reason), "{refused}");
    assert!(log.contains("recovered from the disk log"));
    assert_eq!(cluster.rows_per_leaf("events"), rows_before);
    let answer = cluster.query_json("SELECT sum(bytes), count(*) FROM events", &[]);
    assert_eq!(answer["rows"], sum_before);
    assert_eq!(answer["coverage"]["partial"], false);
}

fn first_block(dir: &PathBuf) -> PathBuf {
    let mut blocks: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "arrow"))
        .collect();
    blocks.sort();
    blocks.into_iter().next().expect("a block file")
}

fn patch(path: &PathBuf, at: usize, f: impl Fn(u8) -> u8) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at] = f(bytes[at]);
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn flipped_byte_in_a_block_is_refused_and_the_leaf_recovers_from_disk() {
    corrupt_then_restart(
        |dir| patch(&first_block(dir), 4096, |b| b ^ 0x40),
        "checksum mismatch",
    );
}

#[test]
fn truncated_block_is_refused_and_the_leaf_recovers_from_disk() {
    corrupt_then_restart(
        |dir| {
            let block = first_block(dir);
            let len = std::fs::metadata(&block).unwrap().len();
            std::fs::OpenOptions::new()
                .write(true)
                .open(&block)
                .unwrap()
                .set_len(len / 2)
                .unwrap();
        },
        "length",
    );
}

#[test]
fn other_layout_version_is_refused_and_the_leaf_recovers_from_disk() {
    corrupt_then_restart(
        |dir| patch(&dir.join("segment.hdr"), 8, |b| b.wrapping_add(1)),
        "layout version",
    );
}

#[test]
fn unset_valid_flag_is_refused_and_the_leaf_recovers_from_disk() {
    corrupt_then_restart(
        |dir| patch(&dir.join("segment.hdr"), 12, |_| 0),
        "valid flag unset",
    );
}

#[test]
fn queries_during_a_handoff_never_fail_and_name_the_leaf_restarting() {
    let cluster = TestCluster::up(2);
    assert!(cluster
        .ingest("events", &gen_events(20_000, 13), &[])
        .status
        .success());
    let rows_leaf0 = cluster.rows_per_leaf("events")[0].1;

    // While leaf-0 is away (stopped with a segment, not yet started again),
    // answers are partial and say why.
    run_ok(&cluster, &["leaf", "stop", "leaf-0", "--handoff"]);
    let away = cluster.query_json("SELECT count(*) FROM events", &[]);
    assert_eq!(
        away["coverage"]["missing"],
        json!([{"leaf": "leaf-0", "reason": "restarting"}])
    );
    assert_eq!(away["coverage"]["rows_total"], 20_000);
    assert_eq!(away["rows"][0][0], 20_000 - rows_leaf0);
    run_ok(&cluster, &["cluster", "up"]);

    // A storm of queries across restarts: none fails; any partial answer
    // names leaf-0 as restarting.
    std::thread::scope(|s| {
        let storm = s.spawn(|| {
            let mut answers = Vec::new();
            for _ in 0..30 {
                answers.push(
                    cluster.query_json("SELECT count(*) FROM events", &["--timeout", "3000"]),
                );
            }
            answers
        });
        for _ in 0..3 {
            run_ok(&cluster, &["leaf", "restart", "leaf-0", "--handoff"]);
        }
        for answer in storm.join().unwrap() {
            let c = &answer["coverage"];
            if c["partial"] == true {
                assert_eq!(
                    c["missing"],
                    json!([{"leaf": "leaf-0", "reason": "restarting"}]),
                    "{c}"
                );
            } else {
                assert_eq!(answer["rows"][0][0], 20_000);
            }
        }
    });
}

/// A cluster of one leaf, brought up with `extra` arguments to `cluster up`.
fn one_leaf_cluster(extra: &[&str]) -> TestCluster {
    let dir = tempfile::Builder::new()
        .prefix("scuba-test-")
        .tempdir()
        .unwrap();
    let cluster = TestCluster { dir, leaves: 1 };
    let mut args = vec!["cluster", "up", "--leaves", "1"];
    args.extend_from_slice(extra);
    run_ok(&cluster, &args);
    cluster
}

/// Kills leaf-0 outright and brings it back, from its disk log.
fn crash_and_recover_the_leaf(cluster: &TestCluster) {
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(cluster.pid("leaf-0"), libc::SIGKILL) };
    run_ok(cluster, &["cluster", "up"]);
    assert!(leaf_log(cluster, "leaf-0").contains("recovered from the disk log"));
}

/// Regression: adopting a segment once deleted the disk log's older
/// segments (their live counts were set after the log's clean-up ran), so a
/// crash after a hand-off lost rows on recovery.
#[test]
fn a_crash_after_a_handoff_recovers_every_row_from_the_log() {
    let cluster = one_leaf_cluster(&["--log-segment-bytes", "200000"]);
    assert!(cluster
        .ingest("events", &gen_events(100_000, 14), &[])
        .status
        .success());
    let before = cluster.query_json("SELECT count(*), sum(bytes) FROM events", &[])["rows"].clone();
    for _ in 0..2 {
        run_ok(&cluster, &["leaf", "restart", "leaf-0", "--handoff"]);
        assert_eq!(
            cluster.query_json("SELECT count(*), sum(bytes) FROM events", &[])["rows"],
            before
        );
    }
    crash_and_recover_the_leaf(&cluster);
    assert_eq!(
        cluster.query_json("SELECT count(*), sum(bytes) FROM events", &[])["rows"],
        before
    );
}

/// A successor appends to the segment its predecessor was writing, after
/// that segment's last partial block (the disk log writes whole blocks):
/// a crash afterwards still recovers every row, the predecessor's and the
/// successor's.
#[test]
fn rows_a_successor_appends_to_a_handed_off_segment_survive_a_crash() {
    let cluster = one_leaf_cluster(&[]);
    for seed in [21, 22, 23] {
        assert!(cluster
            .ingest("events", &gen_events(300, seed), &[])
            .status
            .success());
        if seed != 23 {
            run_ok(&cluster, &["leaf", "restart", "leaf-0", "--handoff"]);
        }
    }
    let segments = std::fs::read_dir(cluster.path().join("leaves/leaf-0/log"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension() == Some("log".as_ref()))
        .count();
    assert_eq!(segments, 1, "all three batches in one segment");
    let before = cluster.query_json("SELECT count(*), sum(bytes) FROM events", &[])["rows"].clone();
    assert_eq!(before[0][0], json!(900));
    crash_and_recover_the_leaf(&cluster);
    assert_eq!(
        cluster.query_json("SELECT count(*), sum(bytes) FROM events", &[])["rows"],
        before
    );
}
