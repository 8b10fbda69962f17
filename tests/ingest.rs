//! Ingest as a user runs it: `scubactl ingest` reading stdin into a real
//! 4-leaf cluster. Placement spreads rows evenly; bad lines are reported by
//! number while every good line lands exactly once.

mod common;

use common::{gen_events, TestCluster};

#[test]
fn placement_spreads_200k_rows_across_four_leaves() {
    let cluster = TestCluster::up(4);
    let out = cluster.ingest("events", &gen_events(200_000, 7), &["--seed", "7"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let per_leaf = cluster.rows_per_leaf("events");
    let total: u64 = per_leaf.iter().map(|(_, r)| r).sum();
    assert_eq!(total, 200_000);
    for (leaf, rows) in &per_leaf {
        let share = *rows as f64 / total as f64;
        assert!(
            (0.15..=0.35).contains(&share),
            "{leaf} holds {share:.3} of the rows: {per_leaf:?}"
        );
    }
}

/// Lines of [`input_with_bad_lines`]: several batches' worth, so that
/// several decoders each take chunks of them.
const INPUT_LINES: u64 = 3 * scuba::limits::BATCH_ROWS_MAX as u64 + 3_000;

/// The bad lines of [`input_with_bad_lines`], by id (the line number less
/// one), with what their report must say.
fn bad_lines() -> [(u64, &'static str); 9] {
    let batch = scuba::limits::BATCH_ROWS_MAX as u64;
    [
        (500, "invalid JSON"),
        (1000, "column `latency_ms`"),
        (1500, "exceeds the limit"),
        (2000, "JSON object"),
        (2500, "RFC 3339"),
        (2750, "not valid UTF-8"),
        (batch + 500, "invalid JSON"),
        (2 * batch + 1000, "column `latency_ms`"),
        (INPUT_LINES - 1, "invalid JSON"),
    ]
}

/// [`INPUT_LINES`] lines, a few of them bad, each in its own way
/// ([`bad_lines`]); and the ids of the good ones.
fn input_with_bad_lines() -> (Vec<u8>, Vec<u64>) {
    let oversized = format!(
        "{{\"id\": 999, \"blob\": \"{}\"}}",
        "x".repeat(2 * 1024 * 1024)
    );
    let bad = bad_lines();
    let mut input: Vec<u8> = Vec::new();
    let mut good_ids = Vec::new();
    for id in 0..INPUT_LINES {
        // Line 2751 is not UTF-8: a byte no character has, in a string of
        // the usual shape.
        let line = match bad.iter().position(|&(bad_id, _)| bad_id == id) {
            Some(0) | Some(6) | Some(8) => format!("{{\"id\": {id}, \"latency_ms\": "),
            Some(1) | Some(7) => format!("{{\"id\": {id}, \"latency_ms\": \"slow\"}}"),
            Some(2) => oversized.clone(),
            Some(3) => "[1, 2, 3]".to_string(),
            Some(4) => format!("{{\"id\": {id}, \"time\": \"not a time\"}}"),
            Some(_) => format!("{{\"id\": {id}, \"latency_ms\": 1, \"service\": \"s\u{fffd}\"}}"),
            None => {
                good_ids.push(id);
                format!(
                    "{{\"id\": {id}, \"latency_ms\": {}, \"service\": \"s{}é\"}}",
                    id % 97,
                    id % 5
                )
            }
        };
        // U+FFFD's first byte, 0xEF, becomes 0xFF.
        let at = input.len();
        input.extend_from_slice(line.as_bytes());
        if let Some(i) = line.find('\u{fffd}') {
            input[at + i] = 0xff;
        }
        input.push(b'\n');
    }
    (input, good_ids)
}

/// Each bad line of [`input_with_bad_lines`] was reported by its number
/// and reason, and every good line landed in `table` once.
fn assert_bad_lines_reported_and_good_lines_landed(
    cluster: &TestCluster,
    table: &str,
    out: &std::process::Output,
    good_ids: &[u64],
) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stderr}");
    let reported: Vec<&str> = stderr.lines().filter(|l| l.contains("line ")).collect();
    assert_eq!(reported.len(), bad_lines().len(), "{reported:?}");
    for ((id, why), reported) in bad_lines().into_iter().zip(reported) {
        let expected = format!("line {}: ", id + 1);
        assert!(reported.contains(&expected), "line {}: {reported}", id + 1);
        assert!(reported.contains(why), "line {}: {reported}", id + 1);
    }
    let good = good_ids.len();
    let rejected = bad_lines().len();
    assert!(
        stdout.contains(&format!("{good} rows ingested, {rejected} rows rejected")),
        "{stdout}"
    );

    let answer = cluster.query_json(
        &format!("SELECT count(*), count(DISTINCT id), sum(id) FROM {table}"),
        &[],
    );
    let expected_sum: u64 = good_ids.iter().sum();
    assert_eq!(
        answer["rows"][0],
        serde_json::json!([good, good, expected_sum])
    );
    let services = cluster.query_json(
        &format!(
            "SELECT service, count(*) FROM {table} WHERE id < 10 GROUP BY service ORDER BY service"
        ),
        &[],
    );
    assert_eq!(
        services["rows"],
        serde_json::json!([["s0é", 2], ["s1é", 2], ["s2é", 2], ["s3é", 2], ["s4é", 2]])
    );
}

#[test]
fn bad_lines_are_reported_by_number_and_good_lines_land_once() {
    let cluster = TestCluster::up(4);
    let (input, good_ids) = input_with_bad_lines();
    let out = cluster.ingest("events", &input, &[]);
    assert_bad_lines_reported_and_good_lines_landed(&cluster, "events", &out, &good_ids);
}

/// `scubactl ingest < FILE` reads the file where it lies (mapped), from
/// stdin's position on, as a pipe would be read: the same reports, the
/// same rows, and stdin left at the file's end.
#[test]
fn a_file_on_stdin_is_read_from_its_position_like_a_pipe() {
    use std::io::{Seek, Write};
    let cluster = TestCluster::up(2);
    let (input, good_ids) = input_with_bad_lines();
    let mut file = tempfile::tempfile().unwrap();
    // What a reader before this one consumed: not this ingest's lines.
    let before = b"{\"id\": -1}\nnot even json\n";
    file.write_all(before).unwrap();
    file.write_all(&input).unwrap();
    file.seek(std::io::SeekFrom::Start(before.len() as u64))
        .unwrap();
    let mut stdin = file.try_clone().unwrap();
    let out = cluster.run_with_stdin(&["ingest", "--table", "events"], stdin.try_clone().unwrap());
    assert_bad_lines_reported_and_good_lines_landed(&cluster, "events", &out, &good_ids);
    assert_eq!(
        stdin.stream_position().unwrap(),
        (before.len() + input.len()) as u64
    );
}

#[test]
fn an_int_column_widens_to_float_across_batches_and_leaves() {
    let cluster = TestCluster::up(2);
    assert!(cluster
        .ingest("m", b"{\"v\": 1}\n{\"v\": 2}\n", &[])
        .status
        .success());
    assert!(cluster.ingest("m", b"{\"v\": 2.5}\n", &[]).status.success());
    let answer = cluster.query_json("SELECT sum(v), arrow_typeof(sum(v)) FROM m", &[]);
    assert_eq!(answer["rows"][0], serde_json::json!([5.5, "Float64"]));
}

#[test]
fn a_type_conflict_with_the_cluster_names_table_column_and_line() {
    let cluster = TestCluster::up(2);
    assert!(cluster
        .ingest("t", b"{\"k\": \"text\"}\n", &[])
        .status
        .success());
    let out = cluster.ingest("t", b"{\"k\": \"more\"}\n{\"k\": 5}\n", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("line 2") && stderr.contains("table `t`") && stderr.contains("column `k`"),
        "{stderr}"
    );
    let answer = cluster.query_json("SELECT k FROM t ORDER BY k", &[]);
    assert_eq!(answer["rows"], serde_json::json!([["more"], ["text"]]));
}

#[test]
fn csv_input_lands_with_typed_columns() {
    let cluster = TestCluster::up(2);
    let csv = "time,service,latency_ms\n1700000000,api,12\n2023-11-14T22:13:21Z,\"web, eu\",7.5\n";
    let out = cluster.ingest("c", csv.as_bytes(), &["--format", "csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer = cluster.query_json("SELECT service, latency_ms, time FROM c ORDER BY time", &[]);
    assert_eq!(
        answer["rows"],
        serde_json::json!([
            ["api", 12.0, "2023-11-14T22:13:20"],
            ["web, eu", 7.5, "2023-11-14T22:13:21"]
        ])
    );
}

#[test]
fn a_bad_csv_header_rejects_every_line_and_lands_nothing() {
    let cluster = TestCluster::up(1);
    let out = cluster.ingest("c", b"a,a,b\n1,2,3\n4,5,6\n", &["--format", "csv"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stderr.contains("line 1: header: column `a` appears twice"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 3: no usable CSV header (header: column `a` appears twice)"),
        "{stderr}"
    );
    assert!(
        stdout.contains("0 rows ingested, 3 rows rejected"),
        "{stdout}"
    );
}

#[test]
fn a_type_conflict_across_batches_rejects_exactly_the_later_lines() {
    // Several batches' worth of lines, decoded on several threads. `x`
    // first comes as an int on the last line of the first batch, as text
    // all through the second, and as an int after that. The earliest line
    // decides, as if one reader read the input in order, however the
    // threads interleave.
    let cluster = TestCluster::up(2);
    let first_batch = scuba::limits::BATCH_ROWS_MAX as u64;
    let text_lines = first_batch + 1..=2 * first_batch;
    let total = 3 * first_batch + 5_000;
    let input: String = (1..=total)
        .map(|n| {
            if n < first_batch {
                format!("{{\"n\": {n}}}\n")
            } else if text_lines.contains(&n) {
                format!("{{\"n\": {n}, \"x\": \"t{n}\"}}\n")
            } else {
                format!("{{\"n\": {n}, \"x\": {n}}}\n")
            }
        })
        .collect();
    let out = cluster.ingest("conflict", input.as_bytes(), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let rejected: Vec<u64> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("rejected line "))
        .map(|l| l.split(':').next().unwrap().parse().unwrap())
        .collect();
    assert_eq!(rejected, text_lines.clone().collect::<Vec<u64>>());
    assert!(stderr.contains("column `x`"), "{stderr}");
    let answer = cluster.query_json(
        "SELECT count(*), count(x), sum(x), max(n) FROM conflict",
        &[],
    );
    let with_x: Vec<u64> = (first_batch..=total)
        .filter(|n| !text_lines.contains(n))
        .collect();
    let rows = total - (text_lines.end() - text_lines.start() + 1);
    assert_eq!(
        answer["rows"][0],
        serde_json::json!([rows, with_x.len(), with_x.iter().sum::<u64>(), total])
    );
}
