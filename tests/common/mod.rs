//! Shared by the end-to-end tests: a real local cluster driven through the
//! `scubactl` binary, and an oracle (one DataFusion session holding every
//! row) to compare answers with.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use scuba::decode::{BatchBuilder, Line, LineReader};
use serde_json::Value;

pub fn scubactl() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_scubactl"))
}

/// A cluster of real processes on 127.0.0.1 in a temporary folder; torn
/// down when dropped (also when a test panics).
pub struct TestCluster {
    pub dir: tempfile::TempDir,
    pub leaves: usize,
}

impl TestCluster {
    pub fn up(leaves: usize) -> TestCluster {
        let dir = tempfile::Builder::new()
            .prefix("scuba-test-")
            .tempdir()
            .expect("tempdir");
        let c = TestCluster { dir, leaves };
        let out = c.run(&["cluster", "up", "--leaves", &leaves.to_string()], None);
        assert!(
            out.status.success(),
            "cluster up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        c
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `scubactl ARGS --dir DIR` with `stdin`.
    pub fn run(&self, args: &[&str], stdin: Option<&[u8]>) -> Output {
        let mut cmd = Command::new(scubactl());
        cmd.args(args).arg("--dir").arg(self.dir.path());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn scubactl");
        if let Some(input) = stdin {
            let mut s = child.stdin.take().expect("stdin");
            let input = input.to_vec();
            std::thread::spawn(move || {
                let _ = s.write_all(&input);
            });
        }
        child.wait_with_output().expect("wait scubactl")
    }

    /// Runs `scubactl` with `stdin` (such as a file) as its standard input.
    pub fn run_with_stdin(&self, args: &[&str], stdin: impl Into<Stdio>) -> Output {
        Command::new(scubactl())
            .args(args)
            .arg("--dir")
            .arg(self.dir.path())
            .stdin(stdin)
            .output()
            .expect("run scubactl")
    }

    pub fn ingest(&self, table: &str, input: &[u8], extra: &[&str]) -> Output {
        let mut args = vec!["ingest", "--table", table];
        args.extend_from_slice(extra);
        self.run(&args, Some(input))
    }

    /// `scubactl query --format json SQL`, parsed; panics unless exit 0.
    pub fn query_json(&self, sql: &str, extra: &[&str]) -> Value {
        let mut args = vec!["query", "--format", "json", sql];
        args.extend_from_slice(extra);
        let out = self.run(&args, None);
        assert!(
            out.status.success(),
            "query failed ({:?}): {sql}\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("query output is JSON")
    }

    pub fn status_json(&self) -> Value {
        let out = self.run(&["cluster", "status", "--json"], None);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status is JSON")
    }

    /// The pid of a running node (leaf id or "aggregator").
    pub fn pid(&self, name: &str) -> i32 {
        std::fs::read_to_string(self.dir.path().join("run").join(format!("{name}.pid")))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    /// Rows of `table` on each leaf, by leaf id, from `cluster status`.
    pub fn rows_per_leaf(&self, table: &str) -> Vec<(String, u64)> {
        self.status_json()
            .as_array()
            .expect("array")
            .iter()
            .map(|l| {
                let rows = l["tables"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["name"] == table)
                    .map(|t| t["rows"].as_u64().unwrap())
                    .sum();
                (l["leaf"].as_str().unwrap().to_string(), rows)
            })
            .collect()
    }

    /// The last lines of every node's log, on stderr (the test harness
    /// shows them with the failure).
    fn print_log_tails(&self) {
        const LINES: usize = 40;
        let Ok(entries) = std::fs::read_dir(self.dir.path().join("logs")) else {
            return;
        };
        let mut paths: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        paths.sort();
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LINES)..];
            eprintln!("--- last {} lines of {}", tail.len(), path.display());
            for line in tail {
                eprintln!("{line}");
            }
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // A failing test shows what the nodes logged before the folder goes.
        if std::thread::panicking() {
            self.print_log_tails();
        }
        let _ = self.run(&["cluster", "down"], None);
    }
}

/// `scubactl gen` output: deterministic sample events.
pub fn gen_events(rows: u64, seed: u64) -> Vec<u8> {
    gen_events_at(rows, seed, 1_700_000_000)
}

/// Sample events whose first one is at unix second `start`.
pub fn gen_events_at(rows: u64, seed: u64, start: i64) -> Vec<u8> {
    let out = Command::new(scubactl())
        .args([
            "gen",
            "--rows",
            &rows.to_string(),
            "--seed",
            &seed.to_string(),
            "--start",
            &start.to_string(),
        ])
        .output()
        .expect("scubactl gen");
    assert!(out.status.success());
    out.stdout
}

/// One DataFusion session holding every good row of `jsonl` as `table`.
pub fn oracle(table: &str, jsonl: &[u8]) -> SessionContext {
    let mut builder = BatchBuilder::new(table, "time", 0);
    let mut reader = LineReader::new(jsonl);
    let mut batches: Vec<RecordBatch> = Vec::new();
    while let Some(line) = reader.next_line().unwrap() {
        if let Line::Text { number, text } = line {
            if text.trim().is_empty() {
                continue;
            }
            let _ = builder.push_json(number, text);
            if builder.is_full() {
                batches.extend(builder.finish().unwrap().map(|d| d.batch));
            }
        }
    }
    batches.extend(builder.finish().unwrap().map(|d| d.batch));
    let mut schema: SchemaRef = Arc::new(datafusion::arrow::datatypes::Schema::empty());
    for b in &batches {
        schema = scuba::schema::unify_schemas(table, &schema, b.schema_ref()).unwrap();
    }
    let batches: Vec<RecordBatch> = batches
        .iter()
        .map(|b| scuba_leaf::table::adapt(b, &schema).unwrap())
        .collect();
    let ctx = SessionContext::new();
    let mem = MemTable::try_new(schema, vec![batches]).unwrap();
    ctx.register_table(table, Arc::new(mem)).unwrap();
    ctx
}

pub fn oracle_rows(ctx: &SessionContext, sql: &str) -> Vec<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let batches = rt
        .block_on(async { ctx.sql(sql).await?.collect().await })
        .unwrap_or_else(|e| panic!("oracle failed on {sql}: {e}"));
    scuba::render::rows(&batches)
}

/// One corpus entry.
pub struct CorpusQuery {
    pub sql: String,
    pub ordered: bool,
    pub tolerance: f64,
}

pub fn corpus() -> Vec<CorpusQuery> {
    let text = include_str!("../corpus/events.sql");
    let mut out: Vec<CorpusQuery> = Vec::new();
    for line in text.lines() {
        if let Some(spec) = line.strip_prefix("-- query:") {
            let mut q = CorpusQuery {
                sql: String::new(),
                ordered: false,
                tolerance: 1e-9,
            };
            for word in spec.split_whitespace() {
                match word {
                    "ordered" => q.ordered = true,
                    "unordered" => q.ordered = false,
                    w if w.starts_with("tolerance=") => {
                        q.tolerance = w["tolerance=".len()..].parse().unwrap()
                    }
                    w => panic!("unknown corpus word {w}"),
                }
            }
            out.push(q);
        } else if line.starts_with("--") || line.trim().is_empty() {
            continue;
        } else if let Some(q) = out.last_mut() {
            q.sql.push_str(line);
            q.sql.push(' ');
        }
    }
    out
}

fn close(a: &Value, b: &Value, tolerance: f64) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            x == y || (x - y).abs() <= tolerance * x.abs().max(y.abs()).max(1e-12)
        }
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| close(a, b, tolerance))
        }
        _ => a == b,
    }
}

/// Compares rows as the corpus entry says; panics with both sides.
pub fn assert_same_rows(q: &CorpusQuery, got: &[Value], expected: &[Value]) {
    let (mut got, mut expected) = (got.to_vec(), expected.to_vec());
    if !q.ordered {
        let key = |v: &Value| v.to_string();
        got.sort_by_key(key);
        expected.sort_by_key(key);
    }
    let same = got.len() == expected.len()
        && got
            .iter()
            .zip(&expected)
            .all(|(a, b)| close(a, b, q.tolerance));
    assert!(
        same,
        "query: {}\n got {} rows: {}\nwant {} rows: {}",
        q.sql,
        got.len(),
        serde_json::to_string(&got)
            .unwrap()
            .chars()
            .take(2000)
            .collect::<String>(),
        expected.len(),
        serde_json::to_string(&expected)
            .unwrap()
            .chars()
            .take(2000)
            .collect::<String>()
    );
}
