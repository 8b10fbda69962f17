//! `scubactl`: the command line of the Scuba-style database. Glue only: the
//! logic lives in the `scuba`, `scuba-leaf` and `scuba-aggregator` crates.

mod client;
mod cluster;
mod demo;
mod gen;
mod output;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use scuba::decode::InputFormat;
use scuba::wire::{ErrorKind, QueryRequest, PROTOCOL_VERSION};
use scuba_aggregator::config::ClusterConfig;
use scuba_aggregator::engine::{Aggregator, QueryDefaults};
use scuba_aggregator::ingest::{ingest, ingest_bytes, IngestOptions};
use scuba_aggregator::transport::LeafTransport;
use scuba_leaf::log::FsyncPolicy;
use scuba_leaf::net::{client_endpoint, TlsFiles};
use scuba_leaf::{Leaf, LeafOptions, Startup};

/// Exit codes, documented in the README.
const EXIT_ERROR: u8 = 1;
const EXIT_BAD_REQUEST: u8 = 2;
const EXIT_COVERAGE: u8 = 3;

#[derive(Parser)]
#[command(
    name = "scubactl",
    version,
    about = "A Scuba-style in-memory analytics database"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Where the cluster is: `--cluster FILE`, or `--dir DIR` holding
/// `cluster.toml`; `$SCUBA_DIR` or `~/.scuba/local` when neither is given.
#[derive(Args, Clone)]
struct Where {
    #[arg(long, global = true)]
    cluster: Option<PathBuf>,
    #[arg(long, global = true)]
    dir: Option<PathBuf>,
}

impl Where {
    fn file(&self) -> PathBuf {
        cluster::cluster_file(self.cluster.as_deref(), self.dir.as_deref())
    }
    fn dir(&self) -> PathBuf {
        match (&self.cluster, &self.dir) {
            (Some(c), _) => c.parent().map(PathBuf::from).unwrap_or_default(),
            (None, Some(d)) => d.clone(),
            (None, None) => cluster::default_dir(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// A local cluster on 127.0.0.1.
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
        #[command(flatten)]
        at: Where,
    },
    /// Run a leaf server.
    Leaf {
        #[command(subcommand)]
        command: LeafCommand,
    },
    /// Run the aggregator server.
    Aggregator {
        #[command(subcommand)]
        command: AggregatorCommand,
    },
    /// Read JSON lines (or CSV) from stdin into a table.
    Ingest {
        #[arg(long)]
        table: String,
        #[arg(long, value_enum, default_value = "jsonl")]
        format: IngestFormat,
        /// The column holding each row's time (unix seconds or RFC 3339).
        #[arg(long, default_value = scuba::schema::TIME_COLUMN_DEFAULT)]
        time_column: String,
        /// Seed for placement (random by default).
        #[arg(long)]
        seed: Option<u64>,
        /// Decode and check every line against the cluster's types, report
        /// what would be ingested or rejected, and send nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Run SQL across the cluster.
    Query {
        sql: String,
        #[arg(long, value_enum, default_value = "table")]
        format: output::Format,
        /// Deadline in milliseconds (the cluster's default otherwise).
        #[arg(long)]
        timeout: Option<u64>,
        /// Fail (exit 3) when coverage is below this fraction.
        #[arg(long)]
        min_coverage: Option<f64>,
        /// Same as --min-coverage 1.
        #[arg(long)]
        strict: bool,
        /// Scale COUNT and SUM by 1/coverage, with 95% intervals.
        #[arg(long)]
        estimate: bool,
        /// Run the query this many times on one connection and print latency
        /// percentiles (ms) to stderr; the answer is printed once.
        #[arg(long, default_value_t = 1)]
        repeat: u32,
        #[command(flatten)]
        at: Where,
    },
    /// Write sample events as JSON lines to stdout.
    Gen {
        #[arg(long, default_value_t = 10_000)]
        rows: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Unix second of the first event.
        #[arg(long, default_value_t = 1_700_000_000)]
        start: i64,
    },
    /// The whole product in one go: a local cluster, sample events through
    /// stdin, example queries with coverage, then tear-down.
    Demo {
        #[arg(long, default_value_t = 4)]
        leaves: usize,
        #[arg(long, default_value_t = 200_000)]
        rows: u64,
    },
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// Start the cluster in the folder (creating it if needed); starts only
    /// what is not running.
    Up {
        /// Leaves of a new cluster (4 by default); an existing one keeps its own.
        #[arg(long)]
        leaves: Option<usize>,
        /// Memory budget per leaf, in bytes.
        #[arg(long)]
        memory_limit: Option<u64>,
        #[arg(long, value_enum, default_value = "group")]
        fsync: Fsync,
        /// Maximum age of a table's rows, as TABLE=DURATION (30d, 12h, 90m,
        /// 45s; `*` for every table). Repeatable. Off by default.
        #[arg(long, value_parser = parse_retention)]
        retention: Vec<(String, String)>,
        /// Size of a disk log segment, in bytes.
        #[arg(long)]
        log_segment_bytes: Option<u64>,
    },
    /// Stop every process of the cluster.
    Down,
    /// Leaves, addresses, tables, rows and memory.
    Status {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum LeafCommand {
    /// Serve one leaf of the cluster file (`--config` is an alias).
    Serve {
        #[arg(long, visible_alias = "config")]
        cluster: PathBuf,
        #[arg(long)]
        id: String,
        #[arg(long)]
        memory_limit: Option<u64>,
        #[arg(long, value_enum, default_value = "group")]
        fsync: Fsync,
        /// Take over from the leaf running at this address: it seals its
        /// memory into a hand-off segment and exits, and this process
        /// adopts the segment in place instead of reading the disk log.
        #[arg(long)]
        handoff: bool,
        /// Worker threads (default: one per core). `cluster up` gives each
        /// of its processes a share of the machine's cores.
        #[arg(long)]
        threads: Option<usize>,
    },
    /// Stop a leaf of a local cluster (`--dir`); with `--handoff` it leaves
    /// a hand-off segment that the next start adopts.
    Stop {
        id: String,
        #[arg(long)]
        handoff: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Restart a leaf of a local cluster (`--dir`).
    Restart {
        id: String,
        /// Hand memory over through shared memory instead of recovering
        /// from the disk log.
        #[arg(long)]
        handoff: bool,
        #[arg(long, value_enum, default_value = "group")]
        fsync: Fsync,
        #[command(flatten)]
        at: Where,
    },
}

#[derive(Subcommand)]
enum AggregatorCommand {
    /// Serve the aggregator of the cluster file (`--config` is an alias).
    Serve {
        #[arg(long, visible_alias = "config")]
        cluster: PathBuf,
        /// Worker threads (default: one per core).
        #[arg(long)]
        threads: Option<usize>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum IngestFormat {
    Jsonl,
    Csv,
}

#[derive(Clone, Copy, ValueEnum)]
enum Fsync {
    /// fsync before acknowledging, shared by concurrent batches.
    Group,
    /// Never fsync: for throwaway data only.
    Never,
}

impl Fsync {
    fn policy(self) -> FsyncPolicy {
        match self {
            Fsync::Group => FsyncPolicy::Group,
            Fsync::Never => FsyncPolicy::Never,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Fsync::Group => "group",
            Fsync::Never => "never",
        }
    }
}

/// How long a leaf that is exiting lets its close packets leave before it
/// frees its port.
const LEAF_CLOSE_GRACE_MS: u64 = 5;

/// Has glibc's malloc keep freed memory for reuse (the bounds are in
/// `scuba::limits`). Ingest allocates and frees a batch's buffers batch after
/// batch, in the client and in the leaves; served from fresh pages each
/// time, they cost page faults and zeroing (`benches/ingest-ab.sh`: 0.755
/// -> 0.73 s at the medians; see the README).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn keep_freed_memory() {
    use scuba::limits::{MALLOC_MMAP_THRESHOLD_BYTES, MALLOC_TRIM_THRESHOLD_BYTES};
    for (parameter, bytes) in [
        (libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES),
        (libc::M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD_BYTES),
    ] {
        let bytes = libc::c_int::try_from(bytes).expect("a bound that fits a C int");
        // SAFETY: mallopt(3) only sets one of glibc malloc's parameters; it
        // runs first thing in main, before any other thread exists.
        unsafe { libc::mallopt(parameter, bytes) };
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn keep_freed_memory() {}

/// Stdin mapped into memory, when it is a regular file (`scubactl ingest <
/// FILE`): the decoders read the file where it lies in the page cache
/// instead of copying it out first (pipes and terminals are read).
struct MappedStdin {
    /// The file from stdin's position to its end (as it was when mapped).
    bytes: bytes::Bytes,
    file: std::fs::File,
    end: u64,
}

impl MappedStdin {
    fn map() -> Option<MappedStdin> {
        use std::io::Seek;
        use std::os::fd::AsFd;
        let file = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned().ok()?);
        let meta = file.metadata().ok()?;
        let start = (&file).stream_position().ok()?;
        if !meta.is_file() || start >= meta.len() {
            return None;
        }
        // SAFETY: the mapping is only read, and only while this process
        // ingests. Were another process to cut the file short meanwhile, a
        // read past its new end would stop this one with SIGBUS (the batches
        // acknowledged before stay landed); the README says so, and input
        // that may shrink can come through a pipe (`cat FILE |`) instead.
        let map = unsafe { memmap2::Mmap::map(&file) }.ok()?;
        // Read once, front to back: pages behind the reader may go early.
        let _ = map.advise(memmap2::Advice::Sequential);
        let end = map.len() as u64;
        let bytes = bytes::Bytes::from_owner(map).slice(usize::try_from(start).ok()?..);
        Some(MappedStdin { bytes, file, end })
    }

    /// Leaves stdin's position at the end of what was read, as reading it
    /// would have.
    fn consumed(self) {
        use std::io::Seek;
        let _ = (&self.file).seek(std::io::SeekFrom::Start(self.end));
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SCUBA_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    // A query or a status is one request and its answer: one thread runs
    // it without starting workers or waking them across threads.
    let mut builder = if cli.command.is_one_request() {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    if let Some(n) = cli.command.threads() {
        builder.worker_threads(n.max(1));
    }
    let runtime = match builder.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

impl Command {
    /// Whether the command sends one request and prints its answer.
    fn is_one_request(&self) -> bool {
        matches!(
            self,
            Command::Query { .. }
                | Command::Cluster {
                    command: ClusterCommand::Status { .. },
                    ..
                }
        )
    }

    /// The worker threads a server was asked to run with.
    fn threads(&self) -> Option<usize> {
        match self {
            Command::Leaf {
                command: LeafCommand::Serve { threads, .. },
            }
            | Command::Aggregator {
                command: AggregatorCommand::Serve { threads, .. },
            } => *threads,
            _ => None,
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

async fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Cluster { command, at } => cluster_cmd(command, at).await,
        Command::Leaf {
            command:
                LeafCommand::Serve {
                    cluster,
                    id,
                    memory_limit,
                    fsync,
                    handoff,
                    ..
                },
        } => leaf_serve(cluster, id, memory_limit, fsync, handoff).await,
        Command::Leaf {
            command: LeafCommand::Stop { id, handoff, at },
        } => {
            cluster::stop_leaf(&at.dir(), &id, handoff).await?;
            println!(
                "leaf {id} stopped{}",
                if handoff {
                    " with a hand-off segment"
                } else {
                    ""
                }
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Leaf {
            command:
                LeafCommand::Restart {
                    id,
                    handoff,
                    fsync,
                    at,
                },
        } => {
            let ms = cluster::restart_leaf(&at.dir(), &id, handoff, fsync.name()).await?;
            let how = if handoff {
                "with hand-off"
            } else {
                "from the disk log"
            };
            println!("leaf {id} restarted {how}: answering again after {ms} ms");
            Ok(ExitCode::SUCCESS)
        }
        Command::Aggregator {
            command: AggregatorCommand::Serve { cluster, .. },
        } => aggregator_serve(cluster).await,
        Command::Ingest {
            table,
            format,
            time_column,
            seed,
            dry_run,
            at,
        } => ingest_cmd(table, format, time_column, seed, dry_run, at).await,
        Command::Query {
            sql,
            format,
            timeout,
            min_coverage,
            strict,
            estimate,
            repeat,
            at,
        } => {
            let min_coverage = if strict { Some(1.0) } else { min_coverage };
            if repeat > 1 {
                return repeat_query(sql, timeout, repeat, at).await;
            }
            query_cmd(sql, format, timeout, min_coverage, estimate, at).await
        }
        Command::Gen { rows, seed, start } => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
            gen::write_events(&mut out, rows, seed, start)?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { leaves, rows } => demo::run(leaves, rows).await,
    }
}

async fn cluster_cmd(command: ClusterCommand, at: Where) -> Result<ExitCode> {
    let dir = at.dir();
    match command {
        ClusterCommand::Up {
            leaves,
            memory_limit,
            fsync,
            retention,
            log_segment_bytes,
        } => {
            let new = cluster::NewCluster {
                memory_limit_bytes: memory_limit,
                log_segment_bytes,
                retention,
            };
            let config = cluster::up(&dir, leaves, &new, fsync.name()).await?;
            println!(
                "cluster of {} leaves up; aggregator at {}; folder {}",
                config.leaves.len(),
                config.aggregator.addr,
                dir.display()
            );
        }
        ClusterCommand::Down => {
            let stopped = cluster::down(&dir)?;
            println!(
                "stopped {}",
                if stopped.is_empty() {
                    "nothing".to_string()
                } else {
                    stopped.join(", ")
                }
            );
        }
        ClusterCommand::Status { json } => {
            let config = client::load_config(&at.file())?;
            let client = client::Client::connect_config(&config).await?;
            let status = client.status().await?;
            client.close().await;
            if json {
                println!("{}", serde_json::to_string_pretty(&status_json(&status))?);
            } else {
                print_status(&status);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn parse_retention(text: &str) -> std::result::Result<(String, String), String> {
    let (table, duration) = text
        .split_once('=')
        .ok_or_else(|| format!("`{text}`: expected TABLE=DURATION, e.g. events=30d"))?;
    scuba_aggregator::config::parse_duration_s(duration)?;
    Ok((table.to_string(), duration.to_string()))
}

fn status_json(status: &[scuba::wire::LeafStatus]) -> serde_json::Value {
    serde_json::Value::Array(
        status
            .iter()
            .map(|s| {
                let tables: Vec<serde_json::Value> = s
                    .stats
                    .iter()
                    .flat_map(|st| st.tables.iter())
                    .map(|t| serde_json::json!({"name": t.name, "rows": t.rows, "memory_bytes": t.memory_bytes, "rows_expired": t.rows_expired}))
                    .collect();
                serde_json::json!({
                    "leaf": s.leaf, "addr": s.addr, "state": s.state,
                    "last_report_ms_ago": s.last_report_ms_ago,
                    "memory_used_bytes": s.stats.as_ref().map(|x| x.memory_used_bytes),
                    "memory_limit_bytes": s.stats.as_ref().map(|x| x.memory_limit_bytes),
                    "tables": tables,
                })
            })
            .collect(),
    )
}

fn print_status(status: &[scuba::wire::LeafStatus]) {
    println!(
        "{:<10} {:<22} {:<11} {:>12} {:>12} {:>14}  tables",
        "leaf", "addr", "state", "last report", "rows", "memory"
    );
    for s in status {
        let rows: u64 = s
            .stats
            .iter()
            .flat_map(|x| x.tables.iter())
            .map(|t| t.rows)
            .sum();
        let mem = s
            .stats
            .as_ref()
            .map(|x| {
                format!(
                    "{:.1}/{:.0} MiB",
                    x.memory_used_bytes as f64 / 1048576.0,
                    x.memory_limit_bytes as f64 / 1048576.0
                )
            })
            .unwrap_or_else(|| "-".into());
        let tables = s
            .stats
            .iter()
            .flat_map(|x| x.tables.iter())
            .map(|t| {
                if t.rows_expired > 0 {
                    format!("{}={} rows ({} expired)", t.name, t.rows, t.rows_expired)
                } else {
                    format!("{}={} rows", t.name, t.rows)
                }
            })
            .collect::<Vec<_>>()
            .join(", ");
        let last = s
            .last_report_ms_ago
            .map(|ms| format!("{ms} ms ago"))
            .unwrap_or_else(|| "never".into());
        println!(
            "{:<10} {:<22} {:<11} {:>12} {:>12} {:>14}  {}",
            s.leaf, s.addr, s.state, last, rows, mem, tables
        );
    }
}

async fn leaf_serve(
    cluster: PathBuf,
    id: String,
    memory_limit: Option<u64>,
    fsync: Fsync,
    handoff: bool,
) -> Result<ExitCode> {
    let config = client::load_config(&cluster)?;
    let leaf_config = config
        .leaf(&id)
        .with_context(|| format!("leaf `{id}` is not in {}", cluster.display()))?
        .clone();
    let tls = TlsFiles::in_dir(&config.tls_dir(), &id);
    if handoff {
        take_over(&config, &leaf_config, &tls).await?;
    }
    let options = LeafOptions {
        retention_s: config.retention_s().map_err(|e| anyhow::anyhow!(e))?,
        log_segment_bytes: leaf_config
            .log_segment_bytes
            .unwrap_or(scuba_leaf::log::SEGMENT_BYTES_MAX_DEFAULT),
        id: id.clone(),
        data_dir: Some(config.resolve(&leaf_config.data_dir)),
        memory_limit_bytes: memory_limit
            .or(leaf_config.memory_limit_bytes)
            .unwrap_or_else(scuba_leaf::leaf::default_memory_limit_bytes),
        fsync: fsync.policy(),
        shm_dir: Some(config.shm_dir(&leaf_config)),
    };
    let (leaf, startup) = Leaf::open(options)?;
    settle_with_peers(&config, &leaf_config, &tls, &leaf).await?;
    match &startup {
        Startup::Recovered {
            recovery,
            rows,
            seconds,
            refused_segment,
            ..
        } => {
            if let Some(why) = refused_segment {
                tracing::warn!(leaf = %id, "did not adopt the hand-off segment: {why}");
            }
            if let Some(why) = &recovery.dropped_tail {
                tracing::warn!(leaf = %id, "recovery dropped a torn log tail: {why}");
            }
            tracing::info!(leaf = %id, rows, seconds, "recovered from the disk log");
        }
        Startup::Adopted {
            rows,
            blocks,
            seconds,
            ..
        } => {
            tracing::info!(leaf = %id, rows, blocks, seconds, "adopted the predecessor's memory");
        }
        Startup::Empty => {}
    }
    let endpoint = scuba_leaf::server::bind(leaf_config.addr, &tls)?;
    tracing::info!(leaf = %id, addr = %leaf_config.addr, "serving");
    // Rows past their table's retention expire every second.
    let expiring = Arc::clone(&leaf);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            let leaf = Arc::clone(&expiring);
            let _ = tokio::task::spawn_blocking(move || leaf.expire_by_age()).await;
        }
    });
    tokio::select! {
        _ = scuba_leaf::server::serve(Arc::clone(&leaf), endpoint.clone()) => {}
        _ = leaf.exit_requested() => {
            // Replies already written (acknowledgements) reach their clients
            // first, for at most a second.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
            while leaf.in_flight() > 0 && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            }
            tracing::info!(leaf = %id, "handed off; exiting");
        }
        _ = shutdown_signal() => {
            tracing::info!(leaf = %id, "stopping");
            leaf.release_shared_memory();
        }
    }
    endpoint.close(0u32.into(), b"shutdown");
    // Let the close reach peers (so they reconnect at once instead of
    // waiting out an idle timeout), but free the port quickly: a successor
    // is waiting for it. The close packets leave as soon as each
    // connection's task runs; waiting for idle would take three round-trip
    // timeouts.
    let _ = tokio::time::timeout(
        std::time::Duration::from_millis(LEAF_CLOSE_GRACE_MS),
        endpoint.wait_idle(),
    )
    .await;
    Ok(ExitCode::SUCCESS)
}

/// After a crash, the batches logged just before it may have been retried
/// on other leaves (this one died before acknowledging them). Wait until
/// clients have had time to retry (the port is still closed, so they see
/// this leaf as gone), ask every peer which of those batches it applied,
/// and keep only the others: no batch is counted twice.
async fn settle_with_peers(
    config: &ClusterConfig,
    me: &scuba_aggregator::config::LeafConfig,
    tls: &TlsFiles,
    leaf: &Arc<Leaf>,
) -> Result<()> {
    use scuba::wire::{Request, Response};
    use std::collections::HashSet;
    use std::time::Duration;
    let (ids, newest_us) = leaf.held_back();
    if ids.is_empty() {
        return Ok(());
    }
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0);
    let settle_at_us = newest_us.unwrap_or(0) + scuba_leaf::leaf::UNCERTAIN_WINDOW_MS * 1000;
    if settle_at_us > now_us {
        tokio::time::sleep(Duration::from_micros((settle_at_us - now_us) as u64)).await;
    }
    let endpoint = client_endpoint(tls)?;
    let mut elsewhere: HashSet<scuba::wire::BatchId> = HashSet::new();
    for peer in config.leaves.iter().filter(|l| l.id != me.id) {
        let ask = async {
            let conn = scuba_leaf::net::connect(&endpoint, peer.addr).await?;
            let mut recv =
                scuba_leaf::net::request(&conn, &Request::HeldBatches { ids: ids.clone() }).await?;
            match scuba_leaf::net::read_last_frame::<Response>(&mut recv).await? {
                Some(Response::HeldBatches(held)) => Ok(held),
                other => Err(anyhow::anyhow!("unexpected reply {other:?}")),
            }
        };
        match tokio::time::timeout(Duration::from_secs(2), ask).await {
            Ok(Ok(held)) => elsewhere.extend(held),
            Ok(Err(e)) => {
                tracing::warn!(peer = %peer.id, "could not ask which batches it holds: {e:#}")
            }
            Err(_) => tracing::warn!(peer = %peer.id, "did not say which batches it holds in time"),
        }
    }
    let (applied, dropped) = leaf.settle(&elsewhere)?;
    tracing::info!(leaf = %me.id, applied, dropped, "settled the batches logged just before the crash");
    Ok(())
}

/// Asks the leaf running at our address to hand its memory over, and waits
/// until it has exited and freed the port. Tells the aggregator first, so
/// queries report the leaf as `restarting` meanwhile.
async fn take_over(
    config: &ClusterConfig,
    leaf: &scuba_aggregator::config::LeafConfig,
    tls: &TlsFiles,
) -> Result<()> {
    use scuba::wire::{Request, Response};
    use std::time::Duration;
    if let Ok(Ok(c)) = tokio::time::timeout(
        Duration::from_secs(1),
        client::Client::connect_as(config, tls),
    )
    .await
    {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.leaf_restarting(&leaf.id)).await;
    }
    let endpoint = client_endpoint(tls)?;
    let conn = match tokio::time::timeout(
        Duration::from_secs(2),
        scuba_leaf::net::connect(&endpoint, leaf.addr),
    )
    .await
    {
        Ok(Ok(c)) => c,
        _ => {
            tracing::warn!(leaf = %leaf.id, "no running leaf answered at {}; starting from what is there", leaf.addr);
            return Ok(());
        }
    };
    let mut recv = scuba_leaf::net::request(&conn, &Request::Handoff).await?;
    match scuba_leaf::net::read_last_frame::<Response>(&mut recv).await? {
        Some(Response::HandoffDone {
            rows,
            blocks,
            bytes,
        }) => {
            tracing::info!(leaf = %leaf.id, rows, blocks, bytes, "predecessor handed off");
        }
        Some(Response::Error(e)) => {
            anyhow::bail!("the running leaf refused to hand off: {}", e.message)
        }
        other => anyhow::bail!("unexpected reply to a hand-off: {other:?}"),
    }
    conn.close(0u32.into(), b"taken over");
    // Wait for the predecessor to exit and free the port.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        match std::net::UdpSocket::bind(leaf.addr) {
            Ok(s) => {
                drop(s);
                return Ok(());
            }
            Err(_) if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(2)).await
            }
            Err(e) => anyhow::bail!("the predecessor did not free {}: {e}", leaf.addr),
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("signal handler");
    let mut int = signal(SignalKind::interrupt()).expect("signal handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

async fn aggregator_serve(cluster: PathBuf) -> Result<ExitCode> {
    let config = client::load_config(&cluster)?;
    let tls = TlsFiles::in_dir(&config.tls_dir(), "aggregator");
    let client = client_endpoint(&tls)?;
    let leaves = config
        .leaves
        .iter()
        .map(|l| (l.id.clone(), l.addr))
        .collect();
    let transport: Arc<dyn LeafTransport> = Arc::new(
        scuba_aggregator::transport::QuicTransport::new(client, leaves),
    );
    let addrs = config.leaves.iter().map(|l| l.addr.to_string()).collect();
    let aggregator = Arc::new(Aggregator::new(
        transport,
        addrs,
        QueryDefaults {
            timeout_ms: config.aggregator.timeout_ms,
            min_coverage: config.aggregator.min_coverage,
        },
    ));
    aggregator.refresh().await;
    aggregator.spawn_poller();
    let endpoint = scuba_leaf::net::server_endpoint(config.aggregator.addr, &tls)?;
    tracing::info!(addr = %config.aggregator.addr, leaves = config.leaves.len(), "aggregator serving");
    tokio::select! {
        _ = scuba_aggregator::server::serve(aggregator, endpoint.clone()) => {}
        _ = shutdown_signal() => tracing::info!("aggregator stopping"),
    }
    endpoint.close(0u32.into(), b"shutdown");
    Ok(ExitCode::SUCCESS)
}

async fn ingest_cmd(
    table: String,
    format: IngestFormat,
    time_column: String,
    seed: Option<u64>,
    dry_run: bool,
    at: Where,
) -> Result<ExitCode> {
    let config = client::load_config(&at.file())?;
    let transport: Arc<dyn LeafTransport> = Arc::new(client::leaf_transport(&config)?);
    // The aggregator is told about new tables and columns at the end; its
    // handshake is done meanwhile.
    let aggregator = {
        let config = config.clone();
        tokio::spawn(async move { client::Client::connect_config(&config).await })
    };
    let options = IngestOptions {
        table: table.clone(),
        format: match format {
            IngestFormat::Jsonl => InputFormat::Jsonl,
            IngestFormat::Csv => InputFormat::Csv,
        },
        time_column,
        seed,
        dry_run,
    };
    let progress = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
                .expect("valid template"),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(100));
        Some(bar)
    } else {
        None
    };
    let started = std::time::Instant::now();
    let bar = progress.clone();
    let on_rejection = |r: &scuba::decode::Rejection| match &progress {
        Some(p) => p.println(format!("rejected {r}")),
        None => eprintln!("rejected {r}"),
    };
    let on_progress = move |rows| {
        if let Some(b) = &bar {
            let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!("{rows} rows ingested, {rate:.0} rows/s"));
        }
    };
    let report = match MappedStdin::map() {
        Some(mapped) => {
            let report = ingest_bytes(
                transport,
                mapped.bytes.clone(),
                options,
                on_rejection,
                on_progress,
            )
            .await?;
            mapped.consumed();
            report
        }
        // Unbuffered: the reader asks for large reads of its own.
        None => {
            ingest(
                transport,
                std::io::stdin(),
                options,
                on_rejection,
                on_progress,
            )
            .await?
        }
    };
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    // Let the aggregator see new tables and columns at once: over the
    // connection made meanwhile, or a new one if that one is gone (a long
    // ingest may outlive an aggregator's restart).
    let refresh = |c: client::Client| async move {
        let done = tokio::time::timeout(std::time::Duration::from_secs(3), c.refresh()).await;
        c.close().await;
        matches!(done, Ok(Ok(())))
    };
    let refreshed = match aggregator.await {
        Ok(Ok(c)) => refresh(c).await,
        _ => false,
    };
    if !refreshed {
        if let Ok(c) = client::Client::connect_config(&config).await {
            refresh(c).await;
        }
    }
    println!(
        "table {table}: {} rows {}, {} rows rejected, {} batches ({} retried), {:.2} s, {:.0} rows/s",
        report.rows_ingested,
        if dry_run { "would be ingested (dry run)" } else { "ingested" },
        report.rows_rejected,
        report.batches,
        report.retries,
        report.seconds,
        report.rows_per_s()
    );
    if let Some(why) = report.stopped {
        eprintln!("error: {why}");
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    Ok(ExitCode::SUCCESS)
}

/// Latency of `repeat` runs of one query over one connection: p50, p99 and
/// max in ms on stderr, with how many answers were partial.
async fn repeat_query(
    sql: String,
    timeout: Option<u64>,
    repeat: u32,
    at: Where,
) -> Result<ExitCode> {
    let config = client::load_config(&at.file())?;
    let client = client::Client::connect_config(&config).await?;
    let mut latencies_ms = Vec::with_capacity(repeat as usize);
    let mut partial = 0;
    for _ in 0..repeat {
        let request = QueryRequest {
            protocol_version: PROTOCOL_VERSION,
            sql: sql.clone(),
            timeout_ms: timeout,
            min_coverage: None,
            estimate: false,
        };
        let started = std::time::Instant::now();
        match client.query(request).await {
            Ok(answer) => partial += u32::from(answer.coverage.partial),
            Err(client::QueryFailure::Server(e)) => anyhow::bail!("{}", e.message),
            Err(client::QueryFailure::Other(e)) => return Err(e),
        }
        latencies_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    client.close().await;
    latencies_ms.sort_by(f64::total_cmp);
    let at_q = |q: f64| latencies_ms[((latencies_ms.len() as f64 - 1.0) * q).round() as usize];
    eprintln!(
        "runs={repeat} p50_ms={:.2} p99_ms={:.2} max_ms={:.2} partial={partial}",
        at_q(0.5),
        at_q(0.99),
        at_q(1.0)
    );
    Ok(ExitCode::SUCCESS)
}

async fn query_cmd(
    sql: String,
    format: output::Format,
    timeout: Option<u64>,
    min_coverage: Option<f64>,
    estimate: bool,
    at: Where,
) -> Result<ExitCode> {
    if let Some(m) = min_coverage {
        anyhow::ensure!(
            (0.0..=1.0).contains(&m),
            "--min-coverage must be between 0 and 1, got {m}"
        );
    }
    let config = client::load_config(&at.file())?;
    let client = client::Client::connect_config(&config).await?;
    let request = QueryRequest {
        protocol_version: PROTOCOL_VERSION,
        sql,
        timeout_ms: timeout,
        min_coverage,
        estimate,
    };
    let answer = client.query(request).await;
    client.close().await;
    match answer {
        Ok(answer) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            output::print(
                &mut out,
                format,
                &answer.schema,
                &answer.batches,
                &answer.coverage,
            )?;
            if format != output::Format::Json {
                eprintln!("{}", answer.coverage.summary());
            }
            for note in &answer.notes {
                eprintln!("note: {note}");
            }
            if answer.coverage.partial {
                let missing: Vec<String> = answer
                    .coverage
                    .missing
                    .iter()
                    .map(|m| format!("{} ({})", m.leaf, m.reason))
                    .collect();
                eprintln!("warning: partial answer; missing {}", missing.join(", "));
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(client::QueryFailure::Server(e)) => {
            eprintln!("error: {}", e.message);
            if let Some(c) = &e.coverage {
                eprintln!("{}", c.summary());
                if format == output::Format::Json {
                    println!(
                        "{}",
                        serde_json::json!({"error": e.message, "coverage": c.to_json()})
                    );
                }
            }
            Ok(ExitCode::from(match e.kind {
                ErrorKind::BadRequest => EXIT_BAD_REQUEST,
                ErrorKind::CoverageTooLow => EXIT_COVERAGE,
                _ => EXIT_ERROR,
            }))
        }
        Err(client::QueryFailure::Other(e)) => Err(e),
    }
}
