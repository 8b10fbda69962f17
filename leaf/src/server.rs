//! The leaf's QUIC server: one task per connection, one per request.

use std::net::SocketAddr;
use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::record_batch::RecordBatch;
use futures::StreamExt;
use quinn::{Endpoint, RecvStream, SendStream};
use scuba::limits::REPLY_BYTES_MAX;
use scuba::wire::{
    decode_borrowed, decode_payload, ErrorKind, IngestRef, Request, Response, WireError,
    PROTOCOL_VERSION,
};

use crate::error::{LeafError, Result};
use crate::leaf::{IngestOutcome, Leaf};
use crate::net::{end_reply, push_frame, read_payload, server_endpoint, write_bytes, TlsFiles};

/// Bytes of result batches per `Batches` frame.
const REPLY_CHUNK_BYTES: usize = 4 << 20;

/// Binds the leaf's endpoint.
pub fn bind(addr: SocketAddr, tls: &TlsFiles) -> Result<Endpoint> {
    server_endpoint(addr, tls)
}

/// Serves requests until the endpoint closes.
pub async fn serve(leaf: Arc<Leaf>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let leaf = Arc::clone(&leaf);
        tokio::spawn(async move {
            let conn = match incoming.await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!("handshake failed: {e}");
                    return;
                }
            };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let leaf = Arc::clone(&leaf);
                tokio::spawn(async move {
                    if let Err(e) = handle(leaf, send, recv).await {
                        tracing::debug!("request ended: {e}");
                    }
                });
            }
        });
    }
}

/// Applies a batch on a blocking thread; the reply says how it went.
async fn ingest(
    leaf: Arc<Leaf>,
    apply: impl FnOnce(&Leaf) -> Result<IngestOutcome> + Send + 'static,
) -> Result<Response> {
    let outcome = tokio::task::spawn_blocking(move || apply(&leaf))
        .await
        .map_err(|e| LeafError::Internal(format!("ingest task: {e}")))?;
    Ok(match outcome {
        Ok(o) => Response::IngestAck {
            rows: o.rows,
            duplicate: o.duplicate,
            memory_free_bytes: o.memory_free_bytes,
        },
        Err(e) => Response::Error(e.to_wire()),
    })
}

async fn handle(leaf: Arc<Leaf>, mut send: SendStream, mut recv: RecvStream) -> Result<()> {
    let Some(payload) = read_payload(&mut recv).await? else {
        return Ok(());
    };
    // A write (and a peer's question about writes) is counted until its
    // reply is delivered, so a hand-off exit does not cut an acknowledgement
    // the client would then retry on another leaf, where the rows would
    // land twice. Other replies are not waited for: a cut one reads as a
    // missing leaf, and a reply nobody acknowledges (its reader gone) held
    // every hand-off it overlapped for the full wait.
    let mut in_flight = None;
    let mut exit_after = false;
    // The reply's last frames, written at once with the stream's end.
    let mut last = Vec::new();
    // A batch is read where it arrived: its columns stay in its frame.
    if decode_borrowed::<IngestRef>(&payload).is_ok() {
        in_flight = Some(leaf.serving());
        let frame = Buffer::from_vec(payload);
        let reply = ingest(leaf, move |leaf| {
            let IngestRef::Ingest {
                table,
                batch_id,
                ipc,
                ..
            } = decode_borrowed(frame.as_slice())?;
            let at = ipc.as_ptr() as usize - frame.as_ptr() as usize;
            leaf.ingest_buffer(table, batch_id, frame.slice_with_length(at, ipc.len()))
        })
        .await?;
        push_frame(&mut last, &reply)?;
        return finish(send, recv, &last, in_flight).await;
    }
    match decode_payload::<Request>(&payload)? {
        // Read borrowed above; the owned form is served the same way.
        Request::Ingest {
            table,
            batch_id,
            ipc,
            ..
        } => {
            in_flight = Some(leaf.serving());
            let reply = ingest(Arc::clone(&leaf), move |leaf| {
                leaf.ingest_buffer(&table, batch_id, Buffer::from_vec(ipc))
            })
            .await?;
            push_frame(&mut last, &reply)?;
        }
        Request::Fragment {
            protocol_version,
            table,
            plan,
        } => {
            if protocol_version != PROTOCOL_VERSION {
                let e = WireError {
                    kind: ErrorKind::BadRequest,
                    message: scuba::Error::ProtocolVersion {
                        peer: protocol_version,
                        ours: PROTOCOL_VERSION,
                    }
                    .to_string(),
                    coverage: None,
                };
                push_frame(&mut last, &Response::Error(e))?;
            } else if let Err(e) = run_fragment(&leaf, &table, &plan, &mut send, &mut last).await {
                // The reply may be cut mid-way; the aggregator treats a reply
                // without its terminal frame as missing, never as smaller.
                last.clear();
                push_frame(&mut last, &Response::Error(e.to_wire()))?;
            }
        }
        Request::LeafStats => {
            let reply = match leaf.stats() {
                Ok(stats) => Response::Stats(stats),
                Err(e) => Response::Error(e.to_wire()),
            };
            push_frame(&mut last, &reply)?;
        }
        Request::HeldBatches { ids } => {
            in_flight = Some(leaf.serving());
            // A recovering peer asks about at most its held-back records.
            let reply = if ids.len() > crate::leaf::UNCERTAIN_RECORDS_MAX {
                Response::Error(WireError {
                    kind: ErrorKind::BadRequest,
                    message: format!(
                        "asked about {} batches; at most {} at once",
                        ids.len(),
                        crate::leaf::UNCERTAIN_RECORDS_MAX
                    ),
                    coverage: None,
                })
            } else {
                Response::HeldBatches(leaf.holds(&ids))
            };
            push_frame(&mut last, &reply)?;
        }
        Request::Handoff => {
            let leaf2 = Arc::clone(&leaf);
            let outcome = tokio::task::spawn_blocking(move || leaf2.handoff())
                .await
                .map_err(|e| LeafError::Internal(format!("hand-off task: {e}")))?;
            let reply = match outcome {
                Ok(s) => {
                    exit_after = true;
                    Response::HandoffDone {
                        rows: s.rows,
                        blocks: s.blocks as u64,
                        bytes: s.bytes,
                    }
                }
                Err(e) => Response::Error(e.to_wire()),
            };
            push_frame(&mut last, &reply)?;
        }
        other => {
            let e = WireError {
                kind: ErrorKind::BadRequest,
                message: format!("a leaf does not serve {}", request_name(&other)),
                coverage: None,
            };
            push_frame(&mut last, &Response::Error(e))?;
        }
    }
    let done = finish(send, recv, &last, in_flight).await;
    if exit_after {
        // The hand-off's reply was delivered (or its reader gone).
        leaf.request_exit();
    }
    done
}

/// Sends a reply's last frames with the stream's end, reads the request's
/// end, and waits until the peer has the reply before the write it answers
/// stops counting as in flight.
async fn finish(
    mut send: SendStream,
    mut recv: RecvStream,
    last: &[u8],
    in_flight: Option<impl Sized>,
) -> Result<()> {
    end_reply(&mut send, &mut recv, last).await?;
    drop(in_flight);
    Ok(())
}

fn request_name(r: &Request) -> &'static str {
    match r {
        Request::Ingest { .. } => "Ingest",
        Request::Fragment { .. } => "Fragment",
        Request::LeafStats => "LeafStats",
        Request::Handoff => "Handoff",
        Request::HeldBatches { .. } => "HeldBatches",
        Request::Query(_) => "Query",
        Request::ClusterStatus => "ClusterStatus",
        Request::TableSchema { .. } => "TableSchema",
        Request::Refresh => "Refresh",
        Request::LeafRestarting { .. } => "LeafRestarting",
    }
}

/// Runs a fragment and gathers its reply in `last`: batches in frames of
/// about [`REPLY_CHUNK_BYTES`], each full frame written at once, and the
/// last one with the terminal frame left for the stream's end.
async fn run_fragment(
    leaf: &Arc<Leaf>,
    table: &str,
    plan: &[u8],
    send: &mut SendStream,
    last: &mut Vec<u8>,
) -> Result<()> {
    let (table_rows, mut stream) = leaf.run_fragment(table, plan)?;
    let schema = stream.schema();
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_bytes = 0usize;
    let mut sent_bytes = 0usize;
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if batch.num_rows() == 0 {
            continue;
        }
        pending_bytes += batch.get_array_memory_size();
        pending.push(batch);
        if pending_bytes >= REPLY_CHUNK_BYTES {
            push_batches(last, &schema, &mut pending)?;
            pending_bytes = 0;
            sent_bytes += last.len();
            if sent_bytes > REPLY_BYTES_MAX {
                return Err(LeafError::ReplyTooLarge {
                    max_bytes: REPLY_BYTES_MAX,
                });
            }
            write_bytes(send, last).await?;
            last.clear();
        }
    }
    push_batches(last, &schema, &mut pending)?;
    push_frame(last, &Response::FragmentDone { table_rows })
}

/// Appends `pending` (emptied) to `out` as one `Batches` frame; nothing
/// when there are none.
fn push_batches(
    out: &mut Vec<u8>,
    schema: &datafusion::arrow::datatypes::SchemaRef,
    pending: &mut Vec<RecordBatch>,
) -> Result<()> {
    if pending.is_empty() {
        return Ok(());
    }
    let ipc = scuba::ipc::batches_to_ipc(schema, pending)?;
    pending.clear();
    push_frame(out, &Response::Batches(ipc))
}
