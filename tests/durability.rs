//! Nothing acknowledged is lost, and memory stays bounded: crash recovery
//! from the disk log under `kill -9`, retention by age and by memory, and
//! backpressure when every leaf is full. Real processes on 127.0.0.1.

mod common;

use std::time::{Duration, Instant};

use common::{gen_events, gen_events_at, TestCluster};
use serde_json::json;

/// `TestCluster::up` with extra `cluster up` flags.
fn cluster_with(leaves: usize, flags: &[&str]) -> TestCluster {
    let dir = tempfile::Builder::new()
        .prefix("scuba-test-")
        .tempdir()
        .unwrap();
    let cluster = TestCluster { dir, leaves };
    let mut args = vec!["cluster", "up", "--leaves"];
    let n = leaves.to_string();
    args.push(&n);
    args.extend_from_slice(flags);
    let out = cluster.run(&args, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cluster
}

fn leaf_stats(cluster: &TestCluster, leaf: &str) -> serde_json::Value {
    cluster
        .status_json()
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["leaf"] == leaf)
        .cloned()
        .unwrap()
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum()
}

fn now_s() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Lines `{"id": k, "v": k % 7}` for k in `ids`.
fn id_lines(ids: std::ops::Range<u64>) -> Vec<u8> {
    ids.map(|k| format!("{{\"id\":{k},\"v\":{}}}\n", k % 7))
        .collect::<String>()
        .into_bytes()
}

/// Lines `{"id": k, "time": time_s}` for k in `ids`.
fn timed_lines(ids: std::ops::Range<u64>, time_s: i64) -> Vec<u8> {
    ids.map(|k| format!("{{\"id\":{k},\"time\":{time_s}}}\n"))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn rows_past_retention_leave_queries_and_the_log_and_do_not_come_back() {
    let cluster = cluster_with(
        1,
        &["--retention", "events=10s", "--log-segment-bytes", "100000"],
    );
    // Rows 2 s old: within retention when sealed (ingest has 8 s of slack
    // on a loaded machine), past it 8 s later.
    let aging = timed_lines(0..70_000, now_s() - 2);
    assert!(cluster.ingest("events", &aging, &[]).status.success());
    let log_dir = cluster.path().join("leaves/leaf-0/log");
    let log_before = dir_bytes(&log_dir);
    let fresh = timed_lines(70_000..70_100, now_s() + 3600);
    assert!(cluster.ingest("events", &fresh, &[]).status.success());

    // Expiry runs every second; the sealed block of aging rows goes.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let stats = leaf_stats(&cluster, "leaf-0");
        if stats["tables"][0]["rows_expired"].as_u64().unwrap_or(0) >= 65_536 {
            break;
        }
        assert!(Instant::now() < deadline, "nothing expired: {stats}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let answer = cluster.query_json("SELECT count(*), min(id) FROM events", &[]);
    assert_eq!(
        answer["rows"][0],
        json!([100, 70_000]),
        "only the fresh rows are visible"
    );
    assert!(
        dir_bytes(&log_dir) < log_before,
        "expired segments leave the disk"
    );

    // A crash does not bring them back from the log.
    // SAFETY: kill(2) on a process this test started.
    unsafe { libc::kill(cluster.pid("leaf-0"), libc::SIGKILL) };
    assert!(cluster.run(&["cluster", "up"], None).status.success());
    let answer = cluster.query_json("SELECT count(*), min(id) FROM events", &[]);
    assert_eq!(answer["rows"][0], json!([100, 70_000]));
}

#[test]
fn memory_budget_expires_the_oldest_blocks_and_keeps_the_leaf_under_it() {
    let limit: u64 = 16_000_000;
    let cluster = cluster_with(1, &["--memory-limit", &limit.to_string()]);
    // Ten ingests one after another, each 10,000 s later than the last
    // (events 37 ms apart, so each spans 1,110 s). Within one ingest,
    // batches in flight at once may land in any order; across ingests,
    // arrival follows time.
    const RUNS: usize = 10;
    const PER_RUN: u64 = 30_000;
    for run in 0..RUNS {
        let events = gen_events_at(
            PER_RUN,
            22 + run as u64,
            1_700_000_000 + run as i64 * 10_000,
        );
        let out = cluster.ingest("events", &events, &[]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let total = RUNS as u64 * PER_RUN;
    let stats = leaf_stats(&cluster, "leaf-0");
    assert!(
        stats["memory_used_bytes"].as_u64().unwrap() <= limit,
        "{stats}"
    );
    let table = &stats["tables"][0];
    let (rows, expired) = (
        table["rows"].as_u64().unwrap(),
        table["rows_expired"].as_u64().unwrap(),
    );
    assert!(expired > 0, "{stats}");
    assert_eq!(rows + expired, total);
    // Oldest first, a block at a time: the oldest ingests are gone, the
    // newest are whole, and the blocks (65,536 rows) in between leave at
    // most three ingests partly kept.
    let answer = cluster.query_json(
        "SELECT CAST(floor((date_part('epoch', time) - 1700000000) / 10000) AS BIGINT) AS run, \
         count(*) FROM events GROUP BY run ORDER BY run",
        &[],
    );
    let mut kept = vec![0u64; RUNS];
    for bin in answer["rows"].as_array().unwrap() {
        kept[bin[0].as_u64().unwrap() as usize] = bin[1].as_u64().unwrap();
    }
    assert_eq!(kept.iter().sum::<u64>(), rows, "{kept:?}");
    let first_kept = kept.iter().position(|&n| n > 0).unwrap();
    let first_whole = kept.iter().position(|&n| n == PER_RUN).unwrap();
    assert!(first_whole - first_kept <= 3, "{kept:?}");
    assert!(
        kept[first_whole..].iter().all(|&n| n == PER_RUN),
        "{kept:?}"
    );
}

#[test]
fn ingest_stops_with_a_clear_message_when_every_leaf_is_full() {
    let limit: u64 = 300_000;
    let cluster = cluster_with(2, &["--memory-limit", &limit.to_string()]);
    let out = cluster.ingest("events", &gen_events(50_000, 23), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("every leaf refused"), "{stderr}");
    assert!(stderr.contains("memory budget"), "{stderr}");
    assert!(stderr.contains("rows landed"), "{stderr}");
    for leaf in ["leaf-0", "leaf-1"] {
        assert!(
            leaf_stats(&cluster, leaf)["memory_used_bytes"]
                .as_u64()
                .unwrap()
                <= limit
        );
    }
}

#[test]
fn kill_9_during_ingest_loses_no_acknowledged_row_and_counts_none_twice() {
    let cluster = TestCluster::up(4);
    // A fixed seed for the kill times and victims (xorshift).
    let mut seed: u64 = 0x5eed_cafe;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    const ROUNDS: u64 = 20;
    const ROWS: u64 = 20_000;
    for round in 0..ROUNDS {
        let input = id_lines(round * ROWS..(round + 1) * ROWS);
        let victim = format!("leaf-{}", next() % 4);
        let delay_ms = next() % 400;
        let (out, _) = std::thread::scope(|s| {
            let ingest = s.spawn(|| cluster.ingest("t", &input, &[]));
            std::thread::sleep(Duration::from_millis(delay_ms));
            // SAFETY: kill(2) on a process this test started.
            unsafe { libc::kill(cluster.pid(&victim), libc::SIGKILL) };
            (ingest.join().unwrap(), ())
        });
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains(&format!("{ROWS} rows ingested")),
            "round {round} (killed {victim} after {delay_ms} ms): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // Start the killed leaf again; it recovers from its log.
        let up = cluster.run(&["cluster", "up"], None);
        assert!(
            up.status.success(),
            "round {round} (killed {victim} after {delay_ms} ms): {}\n{}'s log:\n{}",
            String::from_utf8_lossy(&up.stderr),
            victim,
            std::fs::read_to_string(cluster.path().join("logs").join(format!("{victim}.log")))
                .unwrap_or_default()
        );
        let total = (round + 1) * ROWS;
        let answer = cluster.query_json("SELECT count(*), count(DISTINCT id), sum(id) FROM t", &[]);
        assert_eq!(
            answer["rows"][0],
            json!([total, total, total * (total - 1) / 2]),
            "round {round}: killed {victim} after {delay_ms} ms; coverage {}",
            answer["coverage"]
        );
    }
}

#[test]
fn cluster_up_starts_a_leaf_that_was_still_dying_when_it_looked() {
    // After `kill -9`, a leaf may still be exiting (say, in an fsync) when
    // `cluster up` looks for it. Here a stand-in process under the leaf's
    // name holds its pid file and exits two seconds later.
    let cluster = TestCluster::up(2);
    let stop = cluster.run(&["leaf", "stop", "leaf-1"], None);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let mut dying = std::process::Command::new("bash")
        .args(["-c", "exec -a 'scubactl leaf serve --id leaf-1' sleep 2"])
        .spawn()
        .unwrap();
    std::fs::write(
        cluster.path().join("run").join("leaf-1.pid"),
        dying.id().to_string(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(200)); // let it exec
    let started = Instant::now();
    let up = cluster.run(&["cluster", "up"], None);
    let stderr = String::from_utf8_lossy(&up.stderr);
    assert!(up.status.success(), "{stderr}");
    assert!(stderr.contains("started leaf-1"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(20));
    dying.wait().unwrap();
    assert_eq!(leaf_stats(&cluster, "leaf-1")["state"], "up");
}
