//! A local cluster on 127.0.0.1, kept in one folder:
//!
//! ```text
//!  DIR/cluster.toml        the cluster file (leaves, addresses, tls_dir)
//!  DIR/tls/                CA, and a certificate + key per node (leaf-i, aggregator, client)
//!  DIR/leaves/leaf-i/      each leaf's disk log
//!  DIR/run/NAME.pid        pids of running processes
//!  DIR/logs/NAME.log       their logs
//! ```
//!
//! `up` starts whatever is not running (so it also restarts a crashed leaf,
//! which recovers from its log); `down` stops everything.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use scuba_aggregator::config::{AggregatorConfig, ClusterConfig, LeafConfig};
use scuba_aggregator::transport::{LeafTransport, QuicTransport};
use scuba_leaf::net::{client_endpoint, TlsFiles};

pub const CLUSTER_FILE: &str = "cluster.toml";
/// How long `up` waits for every process to answer.
pub const STARTUP_TIMEOUT_MS: u64 = 30_000;

/// The folder used when neither `--cluster` nor `--dir` is given.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SCUBA_DIR") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".scuba").join("local")
}

/// Where the cluster file is, from `--cluster` or `--dir`.
pub fn cluster_file(cluster: Option<&Path>, dir: Option<&Path>) -> PathBuf {
    match (cluster, dir) {
        (Some(c), _) => c.to_path_buf(),
        (None, Some(d)) => d.join(CLUSTER_FILE),
        (None, None) => default_dir().join(CLUSTER_FILE),
    }
}

/// A port for a node of a local cluster: free now, and below the range the
/// system hands out for ephemeral binds. Every client endpoint takes an
/// ephemeral port, so a node port from that range could be taken by one
/// between `up` choosing it and the node binding it, or while a killed leaf
/// waits to be started again on it.
fn free_port() -> Result<u16> {
    use rand::Rng;
    let ephemeral_from = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    let below = ephemeral_from.saturating_sub(1);
    if below > NODE_PORTS_FROM {
        let mut rng = rand::rng();
        for _ in 0..256 {
            let port = rng.random_range(NODE_PORTS_FROM..below);
            if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
    }
    let s = UdpSocket::bind("127.0.0.1:0")?;
    Ok(s.local_addr()?.port())
}

/// The lowest port `cluster up` gives a node.
const NODE_PORTS_FROM: u16 = 20_000;

fn pid_path(dir: &Path, name: &str) -> PathBuf {
    dir.join("run").join(format!("{name}.pid"))
}

/// The pid in `DIR/run/NAME.pid` if that process is alive and is scubactl.
pub fn running_pid(dir: &Path, name: &str) -> Option<i32> {
    let pid: i32 = std::fs::read_to_string(pid_path(dir, name))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let cmdline = String::from_utf8_lossy(&cmdline);
    if cmdline.contains("scubactl") && cmdline.contains(name) && !is_zombie(pid) {
        Some(pid)
    } else {
        None
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|rest| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// Writes a new cluster file with free ports and certificates.
/// What `cluster up` writes into a new cluster file.
#[derive(Debug, Clone, Default)]
pub struct NewCluster {
    pub memory_limit_bytes: Option<u64>,
    pub log_segment_bytes: Option<u64>,
    /// `TABLE=DURATION` pairs.
    pub retention: Vec<(String, String)>,
}

fn create(dir: &Path, leaves: usize, new: &NewCluster) -> Result<ClusterConfig> {
    let memory_limit_bytes = new.memory_limit_bytes;
    std::fs::create_dir_all(dir)?;
    let host = "127.0.0.1";
    let aggregator = AggregatorConfig {
        addr: format!("{host}:{}", free_port()?).parse()?,
        timeout_ms: scuba::limits::QUERY_TIMEOUT_MS_DEFAULT,
        min_coverage: 0.0,
    };
    let leaves = (0..leaves)
        .map(|i| {
            Ok(LeafConfig {
                id: format!("leaf-{i}"),
                addr: format!("{host}:{}", free_port()?).parse()?,
                data_dir: PathBuf::from("leaves").join(format!("leaf-{i}")),
                memory_limit_bytes,
                shm_dir: None,
                log_segment_bytes: new.log_segment_bytes,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let config = ClusterConfig {
        tls_dir: PathBuf::from("tls"),
        retention: new.retention.iter().cloned().collect(),
        aggregator,
        leaves,
        base_dir: dir.to_path_buf(),
    };
    let mut nodes: Vec<String> = config.leaves.iter().map(|l| l.id.clone()).collect();
    nodes.push("aggregator".into());
    nodes.push("client".into());
    scuba_aggregator::certs::generate(&dir.join("tls"), &nodes)?;
    config.save(&dir.join(CLUSTER_FILE))?;
    Ok(config)
}

/// Stops one leaf of a local cluster; with `handoff` it first seals its
/// memory into a hand-off segment (which the next start adopts).
pub async fn stop_leaf(dir: &Path, id: &str, handoff: bool) -> Result<()> {
    let config = ClusterConfig::load(&dir.join(CLUSTER_FILE))?;
    let leaf = config
        .leaf(id)
        .with_context(|| format!("leaf `{id}` is not in the cluster"))?;
    if !handoff {
        stop(dir, id, libc::SIGTERM)?;
        return Ok(());
    }
    // Queries report the leaf as restarting until a successor answers.
    if let Ok(c) = crate::client::Client::connect_config(&config).await {
        let _ = c.leaf_restarting(id).await;
    }
    let tls = TlsFiles::in_dir(&config.tls_dir(), "client");
    let endpoint = client_endpoint(&tls)?;
    let conn = scuba_leaf::net::connect(&endpoint, leaf.addr).await?;
    let mut recv = scuba_leaf::net::request(&conn, &scuba::wire::Request::Handoff).await?;
    match scuba_leaf::net::read_last_frame::<scuba::wire::Response>(&mut recv).await? {
        Some(scuba::wire::Response::HandoffDone { .. }) => {}
        other => bail!("leaf {id} did not hand off: {other:?}"),
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while running_pid(dir, id).is_some() {
        if Instant::now() > deadline {
            bail!("leaf {id} handed off but did not exit");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = std::fs::remove_file(pid_path(dir, id));
    Ok(())
}

/// Restarts one leaf of a local cluster: with `handoff`, a new process
/// takes the running one's memory over; without, the leaf is stopped and
/// started again, recovering from its disk log. Returns the milliseconds
/// from the command to the new process answering.
pub async fn restart_leaf(dir: &Path, id: &str, handoff: bool, fsync: &str) -> Result<u64> {
    let file = dir.join(CLUSTER_FILE);
    let config = ClusterConfig::load(&file)?;
    let index = config
        .leaves
        .iter()
        .position(|l| l.id == id)
        .with_context(|| format!("leaf `{id}` is not in {}", file.display()))?;
    let file_s = file.to_string_lossy().to_string();
    let started = Instant::now();
    let old_pid = running_pid(dir, id);
    let mut args = leaf_serve_args(&file_s, id, fsync, local_threads(config.leaves.len()));
    if handoff {
        // The new process asks the running one to hand off, then adopts.
        args.push("--handoff".into());
    } else {
        if let Ok(c) = crate::client::Client::connect_config(&config).await {
            let _ = c.leaf_restarting(id).await;
        }
        stop(dir, id, libc::SIGTERM)?;
    }
    spawn(dir, id, &args)?;
    let new_pid = running_pid(dir, id);
    let tls = TlsFiles::in_dir(&config.tls_dir(), "client");
    let leaves: Vec<(String, SocketAddr)> = config
        .leaves
        .iter()
        .map(|l| (l.id.clone(), l.addr))
        .collect();
    let transport = QuicTransport::new(client_endpoint(&tls)?, leaves);
    let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS * 10);
    loop {
        // While nothing holds the port, the transport's probe beside the
        // handshake says so at once (a handshake sent to a free port is lost
        // and retried only after QUIC's first timeout).
        if let Ok(Ok(stats)) =
            tokio::time::timeout(Duration::from_millis(500), transport.stats(index)).await
        {
            if Some(stats.pid as i32) != old_pid
                && (new_pid.is_none() || Some(stats.pid as i32) == new_pid)
            {
                return Ok(started.elapsed().as_millis() as u64);
            }
        }
        if Instant::now() > deadline {
            bail!("leaf {id} did not come back; see logs/{id}.log");
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
        transport.reset(index).await;
    }
}

/// Worker threads for each process of a local cluster of `leaves` leaves
/// and an aggregator: the machine's cores shared out, at least one each.
/// A process on a machine of its own takes them all, but here they share:
/// on 2 cores, 5 processes of 2 threads each spent much of a small query
/// waking each other's threads. Alternating a cluster of one-thread
/// processes (`TOKIO_WORKER_THREADS=1 scubactl cluster up`) with a default
/// one, `scubactl query --repeat 1001 'SELECT count(*) FROM events'` took
/// p50 0.52-0.57 ms against 0.60-0.63, and the group-by queries were no
/// slower.
pub fn local_threads(leaves: usize) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / (leaves + 1)).max(1)
}

/// The arguments that start leaf `id` of the cluster in `file`.
fn leaf_serve_args(file: &str, id: &str, fsync: &str, threads: usize) -> Vec<String> {
    [
        "leaf",
        "serve",
        "--cluster",
        file,
        "--id",
        id,
        "--fsync",
        fsync,
        "--threads",
        &threads.to_string(),
    ]
    .map(String::from)
    .to_vec()
}

fn spawn(dir: &Path, name: &str, args: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    std::fs::create_dir_all(dir.join("run"))?;
    std::fs::create_dir_all(dir.join("logs"))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("logs").join(format!("{name}.log")))?;
    let exe = std::env::current_exe()?;
    let child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    std::fs::write(pid_path(dir, name), child.id().to_string())?;
    Ok(())
}

/// Starts every process of the cluster in `dir` that is not running.
pub async fn up(
    dir: &Path,
    leaves: Option<usize>,
    new: &NewCluster,
    fsync: &str,
) -> Result<ClusterConfig> {
    // Concurrent `cluster up`s (the tests start several at once) could give
    // two nodes the same port: each checks that a port is free before any
    // node has bound it. One at a time, from choosing ports until every
    // node answers.
    let _ports = ports_lock()?;
    let file = dir.join(CLUSTER_FILE);
    let config = if file.exists() {
        let c = ClusterConfig::load(&file)?;
        if leaves.is_some_and(|n| n != c.leaves.len()) {
            eprintln!(
                "note: {} already holds a cluster of {} leaves; starting that one",
                dir.display(),
                c.leaves.len()
            );
        }
        c
    } else {
        create(dir, leaves.unwrap_or(4), new)?
    };
    let file_s = file.to_string_lossy().to_string();
    let threads = local_threads(config.leaves.len());
    let spawn_leaf = |id: &str| spawn(dir, id, &leaf_serve_args(&file_s, id, fsync, threads));
    let mut started = Vec::new();
    for leaf in &config.leaves {
        if running_pid(dir, &leaf.id).is_none() {
            spawn_leaf(&leaf.id)?;
            started.push(leaf.id.clone());
        }
    }
    if running_pid(dir, "aggregator").is_none() {
        spawn(
            dir,
            "aggregator",
            &[
                "aggregator".into(),
                "serve".into(),
                "--cluster".into(),
                file_s.clone(),
                "--threads".into(),
                threads.to_string(),
            ],
        )?;
        started.push("aggregator".into());
    }
    wait_ready(&config, &mut started, &spawn_leaf).await?;
    if !started.is_empty() {
        eprintln!("started {}", started.join(", "));
    }
    Ok(config)
}

/// This machine's lock for choosing and binding node ports, held while the
/// returned file is open.
fn ports_lock() -> Result<std::fs::File> {
    let path = std::env::temp_dir().join("scuba-cluster-up.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    file.lock()
        .with_context(|| format!("locking {}", path.display()))?;
    Ok(file)
}

/// Every leaf is up in the aggregator's eyes, and it has heard from the
/// process now running for it (not a predecessor it still remembers).
fn all_up(dir: &Path, status: &[scuba::wire::LeafStatus]) -> bool {
    status.iter().all(|s| is_up(dir, s))
}

/// Whether the aggregator sees `leaf` up, answering from the process that
/// runs under its id now (when one does).
fn is_up(dir: &Path, leaf: &scuba::wire::LeafStatus) -> bool {
    leaf.state == "up"
        && match (running_pid(dir, &leaf.leaf), &leaf.stats) {
            (Some(pid), Some(stats)) => stats.pid as i32 == pid,
            (None, _) => true,
            (Some(_), None) => false,
        }
}

/// Waits until every leaf answers and the aggregator sees them all. A leaf
/// that was still running when `up` looked but is gone now (killed, and
/// still dying then) is started once (`spawn_leaf`) and added to `started`.
async fn wait_ready(
    config: &ClusterConfig,
    started: &mut Vec<String>,
    spawn_leaf: &dyn Fn(&str) -> Result<()>,
) -> Result<()> {
    let tls = TlsFiles::in_dir(&config.tls_dir(), "client");
    let endpoint = client_endpoint(&tls)?;
    let leaves: Vec<(String, SocketAddr)> = config
        .leaves
        .iter()
        .map(|l| (l.id.clone(), l.addr))
        .collect();
    let transport = Arc::new(QuicTransport::new(endpoint.clone(), leaves));
    let deadline = Instant::now() + Duration::from_millis(STARTUP_TIMEOUT_MS);
    for (i, leaf) in config.leaves.iter().enumerate() {
        loop {
            if transport.stats(i).await.is_ok() {
                break;
            }
            if !started.contains(&leaf.id) && running_pid(&config.base_dir, &leaf.id).is_none() {
                spawn_leaf(&leaf.id)?;
                started.push(leaf.id.clone());
            }
            if Instant::now() > deadline {
                bail!("leaf {} did not start; see its log under logs/", leaf.id);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    wait_aggregator(config, deadline).await
}

/// Waits until the aggregator answers and sees every leaf up.
async fn wait_aggregator(config: &ClusterConfig, deadline: Instant) -> Result<()> {
    let mut client = None;
    // What stood in the way the last time round, for the error.
    let mut waiting_for = String::from("the aggregator to answer");
    loop {
        if running_pid(&config.base_dir, "aggregator").is_none() {
            bail!("the aggregator exited while starting; see logs/aggregator.log");
        }
        if client.is_none() {
            match crate::client::Client::connect_config(config).await {
                Ok(c) => client = Some(c),
                Err(e) => waiting_for = format!("the aggregator to answer (last error: {e:#})"),
            }
        }
        if let Some(c) = &client {
            match c.status().await {
                Ok(status) if all_up(&config.base_dir, &status) => return Ok(()),
                Ok(status) => waiting_for = not_up(&config.base_dir, &status),
                Err(e) => {
                    waiting_for = format!("the aggregator's status (last error: {e:#})");
                    client = None; // reconnect next time round
                }
            }
        }
        if Instant::now() > deadline {
            bail!(
                "the aggregator did not see every leaf up in time: still waiting for {waiting_for}; \
                 see logs/aggregator.log"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The leaves [`all_up`] is still waiting for, as the aggregator last saw
/// them.
fn not_up(dir: &Path, status: &[scuba::wire::LeafStatus]) -> String {
    let waiting: Vec<String> = status
        .iter()
        .filter(|s| !is_up(dir, s))
        .map(|s| match &s.stats {
            Some(stats) if s.state == "up" => {
                format!(
                    "{} (it reported pid {}, not the running one)",
                    s.leaf, stats.pid
                )
            }
            _ => format!("{} ({})", s.leaf, s.state),
        })
        .collect();
    format!("leaves {}", waiting.join(", "))
}

/// Signals a process and waits for it to exit (SIGKILL after a grace period).
pub fn stop(dir: &Path, name: &str, signal: i32) -> Result<bool> {
    let Some(pid) = running_pid(dir, name) else {
        let _ = std::fs::remove_file(pid_path(dir, name));
        return Ok(false);
    };
    // SAFETY: kill(2) with a pid we verified is our own scubactl process.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while running_pid(dir, name).is_some() {
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(pid_path(dir, name));
    Ok(true)
}

pub fn down(dir: &Path) -> Result<Vec<String>> {
    let file = dir.join(CLUSTER_FILE);
    let config = ClusterConfig::load(&file)?;
    let mut stopped = Vec::new();
    if stop(dir, "aggregator", libc::SIGTERM)? {
        stopped.push("aggregator".to_string());
    }
    for leaf in &config.leaves {
        if stop(dir, &leaf.id, libc::SIGTERM)? {
            stopped.push(leaf.id.clone());
        }
        // A leaf that crashed earlier may have left blocks in shared memory.
        let _ = std::fs::remove_dir_all(config.shm_dir(leaf));
    }
    Ok(stopped)
}
