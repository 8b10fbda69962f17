//! The aggregator's QUIC server: queries, cluster status, table schemas.

use std::sync::Arc;

use quinn::{Endpoint, RecvStream, SendStream};
use scuba::limits::SQL_BYTES_MAX;
use scuba::wire::{ErrorKind, Request, Response, WireError, PROTOCOL_VERSION};
use scuba_leaf::net::{read_frame, write_frame};

use crate::engine::{Aggregator, QueryOptions};
use crate::error::Result;

/// Bytes of result per `Batches` frame.
const REPLY_CHUNK_ROWS: usize = 64 * 1024;

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
    match request {
        Request::Query(q) => {
            if q.protocol_version != PROTOCOL_VERSION {
                let msg = scuba::Error::ProtocolVersion {
                    peer: q.protocol_version,
                    ours: PROTOCOL_VERSION,
                };
                write_frame(&mut send, &bad_request(msg.to_string())).await?;
            } else if q.sql.len() > SQL_BYTES_MAX {
                write_frame(
                    &mut send,
                    &bad_request(format!("SQL longer than {SQL_BYTES_MAX} bytes")),
                )
                .await?;
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
                        write_frame(&mut send, &Response::Batches(ipc)).await?;
                        for chunk in rows.chunks(4) {
                            let ipc = scuba::ipc::batches_to_ipc(&answer.schema, chunk)?;
                            write_frame(&mut send, &Response::Batches(ipc)).await?;
                        }
                        write_frame(
                            &mut send,
                            &Response::QueryDone {
                                coverage: answer.coverage,
                                notes: answer.notes,
                            },
                        )
                        .await?;
                    }
                    Err(e) => write_frame(&mut send, &Response::Error(e.to_wire())).await?,
                }
            }
        }
        Request::ClusterStatus => write_frame(&mut send, &Response::Status(agg.status())).await?,
        Request::TableSchema { table } => {
            let schema = agg
                .table_schema(&table)?
                .map(|s| scuba::ipc::schema_to_ipc(&s))
                .transpose()?;
            write_frame(&mut send, &Response::Schema(schema)).await?;
        }
        Request::LeafRestarting { leaf } => {
            agg.mark_restarting(&leaf);
            write_frame(&mut send, &Response::Ok).await?;
        }
        Request::Refresh => {
            agg.refresh().await;
            write_frame(&mut send, &Response::Ok).await?;
        }
        _ => {
            write_frame(
                &mut send,
                &bad_request("the aggregator does not serve that request".into()),
            )
            .await?
        }
    }
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}
