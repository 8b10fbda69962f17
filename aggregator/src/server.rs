//! The aggregator's QUIC server: queries, cluster status, table schemas.

use std::sync::Arc;

use quinn::{Endpoint, RecvStream, SendStream};
use scuba::limits::SQL_BYTES_MAX;
use scuba::wire::{ErrorKind, Request, Response, WireError, PROTOCOL_VERSION};
use scuba_leaf::net::{end_reply, push_frame, read_frame, write_bytes};

use crate::engine::{Aggregator, QueryOptions};
use crate::error::Result;

/// Rows of result per `Batches` frame.
const REPLY_CHUNK_ROWS: usize = 64 * 1024;

/// Encoded reply bytes gathered before a write: a small answer leaves in
/// one write with the stream's end, a large one in writes of about this.
const REPLY_WRITE_BYTES: usize = 1 << 20;

pub async fn serve(aggregator: Arc<Aggregator>, endpoint: Endpoint) {
    while let Some(incoming) = endpoint.accept().await {
        let agg = Arc::clone(&aggregator);
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((send, recv)) = conn.accept_bi().await {
                let agg = Arc::clone(&agg);
                tokio::spawn(async move {
                    if let Err(e) = handle(agg, send, recv).await {
                        tracing::debug!("request ended: {e}");
                    }
                });
            }
        });
    }
}

fn bad_request(message: String) -> Response {
    Response::Error(WireError {
        kind: ErrorKind::BadRequest,
        message,
        coverage: None,
    })
}

async fn handle(agg: Arc<Aggregator>, mut send: SendStream, mut recv: RecvStream) -> Result<()> {
    let Some(request) = read_frame::<Request>(&mut recv).await? else {
        return Ok(());
    };
    // The reply's frames, written when they pass REPLY_WRITE_BYTES and at
    // the end, with the stream's end: a small answer is one write.
    let mut out = Vec::new();
    match request {
        Request::Query(q) => {
            if q.protocol_version != PROTOCOL_VERSION {
                let msg = scuba::Error::ProtocolVersion {
                    peer: q.protocol_version,
                    ours: PROTOCOL_VERSION,
                };
                push_frame(&mut out, &bad_request(msg.to_string()))?;
            } else if q.sql.len() > SQL_BYTES_MAX {
                push_frame(
                    &mut out,
                    &bad_request(format!("SQL longer than {SQL_BYTES_MAX} bytes")),
                )?;
            } else {
                let options = QueryOptions {
                    timeout_ms: q.timeout_ms,
                    min_coverage: q.min_coverage,
                    estimate: q.estimate,
                };
                match agg.query(&q.sql, &options).await {
                    Ok(answer) => {
                        let rows: Vec<_> = answer
                            .batches
                            .iter()
                            .flat_map(|b| {
                                (0..b.num_rows()).step_by(REPLY_CHUNK_ROWS).map(move |o| {
                                    b.slice(o, REPLY_CHUNK_ROWS.min(b.num_rows() - o))
                                })
                            })
                            .collect();
                        // Always send the schema, even for an empty answer.
                        let ipc = scuba::ipc::batches_to_ipc(&answer.schema, &[])?;
                        push_frame(&mut out, &Response::Batches(ipc))?;
                        for chunk in rows.chunks(4) {
                            let ipc = scuba::ipc::batches_to_ipc(&answer.schema, chunk)?;
                            push_frame(&mut out, &Response::Batches(ipc))?;
                            if out.len() >= REPLY_WRITE_BYTES {
                                write_bytes(&mut send, &out).await?;
                                out.clear();
                            }
                        }
                        push_frame(
                            &mut out,
                            &Response::QueryDone {
                                coverage: answer.coverage,
                                notes: answer.notes,
                            },
                        )?;
                    }
                    Err(e) => push_frame(&mut out, &Response::Error(e.to_wire()))?,
                }
            }
        }
        Request::ClusterStatus => push_frame(&mut out, &Response::Status(agg.status()))?,
        Request::TableSchema { table } => {
            let schema = agg
                .table_schema(&table)?
                .map(|s| scuba::ipc::schema_to_ipc(&s))
                .transpose()?;
            push_frame(&mut out, &Response::Schema(schema))?;
        }
        Request::LeafRestarting { leaf } => {
            agg.mark_restarting(&leaf);
            push_frame(&mut out, &Response::Ok)?;
        }
        Request::Refresh => {
            agg.refresh().await;
            push_frame(&mut out, &Response::Ok)?;
        }
        _ => push_frame(
            &mut out,
            &bad_request("the aggregator does not serve that request".into()),
        )?,
    }
    end_reply(&mut send, &mut recv, &out).await?;
    Ok(())
}
