//! How the aggregator and the ingest client reach leaves: over QUIC
//! ([`QuicTransport`]) or in the same process ([`InProcessTransport`], the
//! embedded database). Both run the same leaf code; the fan-out and the
//! ingest client are written against [`LeafTransport`] alone.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::record_batch::RecordBatch;
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use quinn::{Connection, Endpoint};
use scuba::coverage::MissingReason;
use scuba::ipc::IpcStream;
use scuba::wire::{BatchId, ErrorKind, LeafStats, Request, Response, WireError, PROTOCOL_VERSION};
use scuba_leaf::net::{connect, read_end, read_frame, read_last_frame, request};
use scuba_leaf::{Leaf, LeafError};
use tokio::sync::Mutex;

/// How long a connection attempt to a leaf may take.
pub const CONNECT_TIMEOUT_MS: u64 = 1_000;
/// How long a request runs before its leaf's port is first probed.
pub const PROBE_AFTER_MS: u64 = 100;
/// How often a pending request's leaf is probed again.
pub const PROBE_INTERVAL_MS: u64 = 250;
/// How long one probe waits for the kernel's refusal.
pub const PROBE_TIMEOUT_MS: u64 = 50;

/// What a probe learnt of a leaf's port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Nothing listens there: the process is gone (the kernel answered
    /// "port unreachable").
    Refused,
    /// Something holds the port, or the network says nothing (a stopped or
    /// slow process, or a host that drops ICMP).
    Unknown,
}

/// Probes a UDP port: a one-byte datagram from a connected socket. Where no
/// process holds the port, the kernel's ICMP "port unreachable" comes back
/// as `ECONNREFUSED`; a QUIC server ignores the datagram. This tells a dead
/// leaf (unreachable) from a silent one (timeout) without waiting for QUIC's
/// idle timeout.
pub async fn probe(addr: SocketAddr) -> Liveness {
    let bind = if addr.is_ipv4() {
        "0.0.0.0:0"
    } else {
        "[::]:0"
    };
    let Ok(sock) = tokio::net::UdpSocket::bind(bind).await else {
        return Liveness::Unknown;
    };
    if sock.connect(addr).await.is_err() {
        return Liveness::Unknown;
    }
    let refused = |e: &std::io::Error| e.kind() == std::io::ErrorKind::ConnectionRefused;
    if let Err(e) = sock.send(&[0u8]).await {
        return if refused(&e) {
            Liveness::Refused
        } else {
            Liveness::Unknown
        };
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_millis(PROBE_TIMEOUT_MS), sock.recv(&mut buf)).await {
        Ok(Err(e)) if refused(&e) => Liveness::Refused,
        _ => Liveness::Unknown,
    }
}

/// A leaf's answer to a fragment.
#[derive(Debug, Clone)]
pub struct FragmentReply {
    pub batches: Vec<RecordBatch>,
    /// The table's rows on that leaf when it scanned.
    pub table_rows: u64,
}

/// Why a batch did not land on a leaf.
#[derive(Debug, Clone)]
pub enum IngestFailure {
    /// The leaf could not be reached or did not answer: try another.
    Unreachable(String),
    /// The leaf answered with an error.
    Refused(WireError),
}

#[derive(Debug, Clone, Copy)]
pub struct IngestAck {
    pub rows: u64,
    pub duplicate: bool,
    pub memory_free_bytes: u64,
}

/// Reaches leaves by index (their order in the cluster file).
///
/// Methods do not time out by themselves beyond connection setup: callers
/// wrap them in their deadline, and dropping a future cancels the request
/// (its QUIC stream is reset and the leaf stops working on it).
#[async_trait]
pub trait LeafTransport: Send + Sync + 'static {
    fn leaf_ids(&self) -> Vec<String>;
    async fn stats(&self, leaf: usize) -> Result<LeafStats, MissingReason>;
    async fn fragment(
        &self,
        leaf: usize,
        table: &str,
        plan: Arc<Vec<u8>>,
    ) -> Result<FragmentReply, MissingReason>;
    async fn ingest(
        &self,
        leaf: usize,
        table: &str,
        batch_id: BatchId,
        ipc: Arc<IpcStream>,
    ) -> Result<IngestAck, IngestFailure>;
    /// Drops any cached connection to `leaf` (after a timeout), so the next
    /// request connects afresh.
    async fn reset(&self, _leaf: usize) {}
    /// True when `leaf`'s process is known to be gone right now (a probe
    /// was refused); false when it may be alive.
    async fn is_gone(&self, _leaf: usize) -> bool {
        false
    }
}

fn reason_of(e: &WireError) -> MissingReason {
    match e.kind {
        ErrorKind::Restarting => MissingReason::Restarting,
        _ => MissingReason::Error(e.message.clone()),
    }
}

/// A handshake under way, shared by everyone who waits for it.
type Handshake = Shared<BoxFuture<'static, Result<Connection, MissingReason>>>;

/// One leaf's connection: the live one, or the handshake that will make it.
#[derive(Default)]
struct Slot {
    conn: Option<Connection>,
    pending: Option<Handshake>,
}

/// Leaves over QUIC, one cached connection each.
pub struct QuicTransport {
    endpoint: Endpoint,
    leaves: Vec<(String, SocketAddr)>,
    connections: Vec<Mutex<Slot>>,
}

impl QuicTransport {
    pub fn new(endpoint: Endpoint, leaves: Vec<(String, SocketAddr)>) -> Self {
        let connections = leaves.iter().map(|_| Mutex::new(Slot::default())).collect();
        QuicTransport {
            endpoint,
            leaves,
            connections,
        }
    }

    /// The leaf's live connection, or a new one. The handshake runs in its
    /// own task: a caller that gives up (a stats poll's deadline) does not
    /// cancel it, so on a loaded machine a slow handshake still ends in a
    /// connection the next request uses, instead of starting over forever.
    async fn connection(&self, leaf: usize) -> Result<Connection, MissingReason> {
        let handshake = {
            let mut slot = self.connections[leaf].lock().await;
            if let Some(c) = &slot.conn {
                if c.close_reason().is_none() {
                    return Ok(c.clone());
                }
                slot.conn = None;
            }
            // A finished failure is not waited on again: try afresh.
            if slot
                .pending
                .as_ref()
                .is_some_and(|h| matches!(h.peek(), Some(Err(_))))
            {
                slot.pending = None;
            }
            slot.pending
                .get_or_insert_with(|| self.handshake(leaf))
                .clone()
        };
        let result = handshake.clone().await;
        let mut slot = self.connections[leaf].lock().await;
        // Only the handshake still in the slot is taken from it (`forget`
        // may have dropped it meanwhile).
        if slot.pending.as_ref().is_some_and(|h| h.ptr_eq(&handshake)) {
            slot.pending = None;
            if let Ok(c) = &result {
                slot.conn = Some(c.clone());
            }
        }
        result
    }

    fn handshake(&self, leaf: usize) -> Handshake {
        let endpoint = self.endpoint.clone();
        let addr = self.leaves[leaf].1;
        let task = tokio::spawn(async move {
            // A handshake that times out is a silent leaf (it may be
            // stopped); one that fails is an unreachable one.
            let handshake = tokio::time::timeout(
                Duration::from_millis(CONNECT_TIMEOUT_MS),
                connect(&endpoint, addr),
            );
            // A handshake sent to a closed port is lost and retried only
            // after QUIC's timeouts; a refused probe says at once nobody is
            // there. The probe runs beside the handshake, not before it: a
            // live leaf never answers a probe, so waiting for one cost every
            // new connection the probe's whole timeout (50 ms at the start
            // of every ingest).
            let refused = async {
                if probe(addr).await == Liveness::Refused {
                    return;
                }
                std::future::pending::<()>().await
            };
            tokio::select! {
                done = handshake => done
                    .map_err(|_| MissingReason::Timeout)?
                    .map_err(|_| MissingReason::Unreachable),
                () = refused => Err(MissingReason::Unreachable),
            }
        });
        task.map(|joined| joined.unwrap_or(Err(MissingReason::Unreachable)))
            .boxed()
            .shared()
    }

    /// Drops the leaf's connection. A handshake under way is left to end
    /// on its own (within [`CONNECT_TIMEOUT_MS`], or at once when a probe
    /// finds the port closed).
    async fn forget(&self, leaf: usize) {
        self.connections[leaf].lock().await.conn = None;
    }

    /// Runs `work` against `leaf` while probing its port; ends early with
    /// `Unreachable` once the probe finds the process gone.
    async fn watched<T>(
        &self,
        leaf: usize,
        work: impl std::future::Future<Output = Result<T, MissingReason>>,
    ) -> Result<T, MissingReason> {
        let addr = self.leaves[leaf].1;
        let watchdog = async {
            tokio::time::sleep(Duration::from_millis(PROBE_AFTER_MS)).await;
            loop {
                if probe(addr).await == Liveness::Refused {
                    return MissingReason::Unreachable;
                }
                tokio::time::sleep(Duration::from_millis(PROBE_INTERVAL_MS)).await;
            }
        };
        tokio::select! {
            r = work => r,
            reason = watchdog => {
                self.forget(leaf).await;
                Err(reason)
            }
        }
    }

    async fn call<R: serde::Serialize + Sync>(
        &self,
        leaf: usize,
        req: &R,
    ) -> Result<quinn::RecvStream, MissingReason> {
        let conn = self.connection(leaf).await?;
        match request(&conn, req).await {
            Ok(r) => Ok(r),
            Err(_) => {
                self.forget(leaf).await;
                Err(MissingReason::Unreachable)
            }
        }
    }
}

fn lost(e: LeafError) -> MissingReason {
    match e {
        LeafError::Net(_) => MissingReason::Unreachable,
        other => MissingReason::Error(other.to_string()),
    }
}

#[async_trait]
impl LeafTransport for QuicTransport {
    fn leaf_ids(&self) -> Vec<String> {
        self.leaves.iter().map(|(id, _)| id.clone()).collect()
    }

    async fn stats(&self, leaf: usize) -> Result<LeafStats, MissingReason> {
        self.watched(leaf, async {
            let mut recv = self.call(leaf, &Request::LeafStats).await?;
            match read_last_frame::<Response>(&mut recv).await.map_err(lost)? {
                Some(Response::Stats(s)) => Ok(s),
                Some(Response::Error(e)) => Err(reason_of(&e)),
                other => Err(MissingReason::Error(format!("unexpected reply {other:?}"))),
            }
        })
        .await
    }

    async fn reset(&self, leaf: usize) {
        self.forget(leaf).await;
    }

    async fn is_gone(&self, leaf: usize) -> bool {
        probe(self.leaves[leaf].1).await == Liveness::Refused
    }

    async fn fragment(
        &self,
        leaf: usize,
        table: &str,
        plan: Arc<Vec<u8>>,
    ) -> Result<FragmentReply, MissingReason> {
        self.watched(leaf, self.fragment_unwatched(leaf, table, plan))
            .await
    }

    async fn ingest(
        &self,
        leaf: usize,
        table: &str,
        batch_id: BatchId,
        ipc: Arc<IpcStream>,
    ) -> Result<IngestAck, IngestFailure> {
        // The watchdog ends the request early when the leaf is gone.
        self.watched(leaf, async {
            Ok(self.ingest_unwatched(leaf, table, batch_id, ipc).await)
        })
        .await
        .unwrap_or_else(|reason| Err(IngestFailure::Unreachable(reason.to_string())))
    }
}

impl QuicTransport {
    async fn fragment_unwatched(
        &self,
        leaf: usize,
        table: &str,
        plan: Arc<Vec<u8>>,
    ) -> Result<FragmentReply, MissingReason> {
        let req = Request::Fragment {
            protocol_version: PROTOCOL_VERSION,
            table: table.to_string(),
            plan: plan.as_ref().clone(),
        };
        let mut recv = self.call(leaf, &req).await?;
        let mut batches = Vec::new();
        // Buffer until the terminal frame: a reply cut mid-way is a missing
        // leaf, never a smaller answer.
        loop {
            match read_frame::<Response>(&mut recv).await.map_err(lost)? {
                Some(Response::Batches(ipc)) => {
                    let (_, b) = scuba::ipc::ipc_to_batches(Buffer::from_vec(ipc))
                        .map_err(|e| MissingReason::Error(e.to_string()))?;
                    batches.extend(b);
                }
                Some(Response::FragmentDone { table_rows }) => {
                    read_end(&mut recv).await;
                    return Ok(FragmentReply {
                        batches,
                        table_rows,
                    });
                }
                Some(Response::Error(e)) => return Err(reason_of(&e)),
                Some(other) => {
                    return Err(MissingReason::Error(format!("unexpected reply {other:?}")))
                }
                None => return Err(MissingReason::Unreachable),
            }
        }
    }

    async fn ingest_unwatched(
        &self,
        leaf: usize,
        table: &str,
        batch_id: BatchId,
        ipc: Arc<IpcStream>,
    ) -> Result<IngestAck, IngestFailure> {
        let unreachable = |e: String| IngestFailure::Unreachable(e);
        let head = scuba::wire::ingest_frame_head(table, batch_id, ipc.len())
            .map_err(|e| unreachable(e.to_string()))?;
        let conn = self
            .connection(leaf)
            .await
            .map_err(|r| unreachable(r.to_string()))?;
        // The batch goes out as it is (its pieces shared with the batch,
        // not copied per try): the frame's head, then the stream's pieces.
        let mut chunks: Vec<bytes::Bytes> = std::iter::once(bytes::Bytes::from(head))
            .chain(
                ipc.pieces()
                    .iter()
                    .map(|p| bytes::Bytes::from_owner(Piece(p.clone()))),
            )
            .collect();
        let sent = async {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            send.write_all_chunks(&mut chunks)
                .await
                .map_err(|e| e.to_string())?;
            send.finish().map_err(|e| e.to_string())?;
            Ok::<_, String>(recv)
        };
        let mut recv = match sent.await {
            Ok(recv) => recv,
            Err(e) => {
                self.forget(leaf).await;
                return Err(unreachable(format!("sending a batch: {e}")));
            }
        };
        match read_last_frame::<Response>(&mut recv).await {
            Ok(Some(Response::IngestAck {
                rows,
                duplicate,
                memory_free_bytes,
            })) => Ok(IngestAck {
                rows,
                duplicate,
                memory_free_bytes,
            }),
            Ok(Some(Response::Error(e))) => Err(IngestFailure::Refused(e)),
            Ok(other) => Err(unreachable(format!("unexpected reply {other:?}"))),
            Err(e) => Err(unreachable(e.to_string())),
        }
    }
}

/// A piece of a batch's IPC stream (shared between tries and with the
/// batch), as bytes a QUIC stream sends without copying.
struct Piece(Buffer);

impl AsRef<[u8]> for Piece {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

/// Leaves in this process: the embedded database.
pub struct InProcessTransport {
    leaves: Vec<Arc<Leaf>>,
}

impl InProcessTransport {
    pub fn new(leaves: Vec<Arc<Leaf>>) -> Self {
        InProcessTransport { leaves }
    }

    pub fn leaves(&self) -> &[Arc<Leaf>] {
        &self.leaves
    }
}

#[async_trait]
impl LeafTransport for InProcessTransport {
    fn leaf_ids(&self) -> Vec<String> {
        self.leaves.iter().map(|l| l.id().to_string()).collect()
    }

    async fn stats(&self, leaf: usize) -> Result<LeafStats, MissingReason> {
        self.leaves[leaf]
            .stats()
            .map_err(|e| reason_of(&e.to_wire()))
    }

    async fn fragment(
        &self,
        leaf: usize,
        table: &str,
        plan: Arc<Vec<u8>>,
    ) -> Result<FragmentReply, MissingReason> {
        let leaf = &self.leaves[leaf];
        let (table_rows, mut stream) = leaf
            .run_fragment(table, &plan)
            .map_err(|e| MissingReason::Error(e.to_string()))?;
        let mut batches = Vec::new();
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| MissingReason::Error(e.to_string()))?;
            if b.num_rows() > 0 {
                batches.push(b);
            }
        }
        Ok(FragmentReply {
            batches,
            table_rows,
        })
    }

    async fn ingest(
        &self,
        leaf: usize,
        table: &str,
        batch_id: BatchId,
        ipc: Arc<IpcStream>,
    ) -> Result<IngestAck, IngestFailure> {
        let leaf = Arc::clone(&self.leaves[leaf]);
        let table = table.to_string();
        let outcome = tokio::task::spawn_blocking(move || {
            leaf.ingest_buffer(&table, batch_id, ipc.to_buffer())
        })
        .await
        .map_err(|e| IngestFailure::Unreachable(e.to_string()))?;
        match outcome {
            Ok(o) => Ok(IngestAck {
                rows: o.rows,
                duplicate: o.duplicate,
                memory_free_bytes: o.memory_free_bytes,
            }),
            Err(e) => Err(IngestFailure::Refused(e.to_wire())),
        }
    }
}
