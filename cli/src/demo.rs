//! `scubactl demo`: the main job end to end, as a user would run it, on a
//! throwaway local cluster.

use std::io::Write;
use std::process::{Command, ExitCode, Stdio};

use anyhow::{ensure, Context, Result};

const QUERIES: [&str; 5] = [
    "SELECT count(*) AS events FROM events",
    "SELECT service, count(*) AS errors, avg(latency_ms) AS avg_latency_ms FROM events WHERE status >= 500 GROUP BY service ORDER BY 2 DESC LIMIT 10",
    "SELECT date_bin(INTERVAL '1 minute', time) AS minute, count(*) AS events, max(latency_ms) AS worst_ms FROM events GROUP BY 1 ORDER BY 1 LIMIT 5",
    "SELECT endpoint, approx_percentile_cont(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99_ms, count(DISTINCT user_id) AS users FROM events GROUP BY endpoint ORDER BY p99_ms DESC",
    "SELECT tag, count(*) AS events FROM (SELECT unnest(tags) AS tag FROM events) GROUP BY tag ORDER BY events DESC",
];

/// `scubactl ARGS --dir DIR`.
fn scubactl(dir: &std::path::Path, args: &[&str]) -> Command {
    let mut c = Command::new(std::env::current_exe().expect("own path"));
    c.args(args).arg("--dir").arg(dir);
    c
}

pub async fn run(leaves: usize, rows: u64) -> Result<ExitCode> {
    let dir = std::env::temp_dir().join(format!("scuba-demo-{}", std::process::id()));
    let result = steps(&dir, leaves, rows);
    let down = scubactl(&dir, &["cluster", "down"]).status();
    let _ = std::fs::remove_dir_all(&dir);
    result?;
    down.context("tearing the cluster down")?;
    Ok(ExitCode::SUCCESS)
}

fn steps(dir: &std::path::Path, leaves: usize, rows: u64) -> Result<()> {
    println!("$ scubactl cluster up --leaves {leaves}");
    let ok = scubactl(dir, &["cluster", "up", "--leaves", &leaves.to_string()]).status()?;
    ensure!(ok.success(), "cluster up failed");

    println!("\n$ scubactl gen --rows {rows} | scubactl ingest --table events");
    let mut ingest = scubactl(dir, &["ingest", "--table", "events"])
        .stdin(Stdio::piped())
        .spawn()?;
    {
        let mut stdin =
            std::io::BufWriter::with_capacity(1 << 20, ingest.stdin.take().context("stdin")?);
        crate::gen::write_events(&mut stdin, rows, 1, 1_700_000_000)?;
        stdin.flush()?;
    }
    ensure!(ingest.wait()?.success(), "ingest failed");

    for q in QUERIES {
        println!("\n$ scubactl query \"{q}\"");
        let ok = scubactl(dir, &["query", q]).status()?;
        ensure!(ok.success(), "query failed: {q}");
    }
    println!("\n$ scubactl query --format json \"SELECT status, count(*) FROM events GROUP BY status ORDER BY status\"");
    let ok = scubactl(
        dir,
        &[
            "query",
            "--format",
            "json",
            "SELECT status, count(*) FROM events GROUP BY status ORDER BY status",
        ],
    )
    .status()?;
    ensure!(ok.success(), "json query failed");

    println!("\n$ scubactl cluster status");
    let ok = scubactl(dir, &["cluster", "status"]).status()?;
    ensure!(ok.success(), "status failed");
    println!("\n$ scubactl cluster down");
    Ok(())
}
