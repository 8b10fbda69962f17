//! `scubactl`'s connection to the aggregator and, for ingest, the leaves.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use quinn::{Connection, Endpoint};
use scuba::wire::{LeafStatus, QueryRequest, Request, Response, WireError};
use scuba::Coverage;
use scuba_aggregator::config::ClusterConfig;
use scuba_aggregator::transport::QuicTransport;
use scuba_leaf::net::{
    brief_client_endpoint, client_endpoint, connect, read_end, read_frame, read_last_frame,
    request, TlsFiles,
};

pub struct Client {
    /// Kept so the endpoint outlives every use of the connection.
    _endpoint: Endpoint,
    conn: Connection,
}

/// A query's answer as the client receives it.
pub struct Answer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub coverage: Coverage,
    pub notes: Vec<String>,
}

/// What went wrong with a query, for the exit code.
pub enum QueryFailure {
    Server(WireError),
    Other(anyhow::Error),
}

pub fn load_config(path: &Path) -> Result<ClusterConfig> {
    ClusterConfig::load(path).with_context(|| {
        format!(
            "no cluster at {}: start one with `scubactl cluster up`, or pass --cluster FILE / --dir DIR",
            path.display()
        )
    })
}

pub fn tls(config: &ClusterConfig) -> TlsFiles {
    TlsFiles::in_dir(&config.tls_dir(), "client")
}

/// A transport to every leaf, for ingest.
pub fn leaf_transport(config: &ClusterConfig) -> Result<QuicTransport> {
    let endpoint = client_endpoint(&tls(config))?;
    let leaves: Vec<(String, SocketAddr)> = config
        .leaves
        .iter()
        .map(|l| (l.id.clone(), l.addr))
        .collect();
    Ok(QuicTransport::new(endpoint, leaves))
}

impl Client {
    pub async fn connect_config(config: &ClusterConfig) -> Result<Client> {
        Self::connect_as(config, &tls(config)).await
    }

    /// Connects presenting another node's certificate (a leaf telling the
    /// aggregator it restarts).
    pub async fn connect_as(config: &ClusterConfig, tls: &TlsFiles) -> Result<Client> {
        let endpoint = brief_client_endpoint(tls)?;
        let addr = config.aggregator.addr;
        let conn = tokio::time::timeout(Duration::from_secs(3), connect(&endpoint, addr))
            .await
            .map_err(|_| anyhow!("the aggregator at {addr} did not answer; is the cluster up?"))?
            .with_context(|| format!("connecting to the aggregator at {addr}"))?;
        Ok(Client {
            _endpoint: endpoint,
            conn,
        })
    }

    /// Closes the connection so the aggregator lets it go at once (it would
    /// otherwise keep it, pinging it, until its idle timeout), and lets the
    /// close packet leave before the process exits.
    pub async fn close(self) {
        self.conn.close(0u32.into(), b"done");
        // The connection's task sends the close when it next runs.
        tokio::task::yield_now().await;
    }

    async fn call(&self, req: &Request) -> Result<quinn::RecvStream> {
        Ok(request(&self.conn, req).await?)
    }

    pub async fn status(&self) -> Result<Vec<LeafStatus>> {
        let mut recv = self.call(&Request::ClusterStatus).await?;
        match read_last_frame::<Response>(&mut recv).await? {
            Some(Response::Status(s)) => Ok(s),
            other => bail!("unexpected reply {other:?}"),
        }
    }

    /// Tells the aggregator `leaf` is restarting.
    pub async fn leaf_restarting(&self, leaf: &str) -> Result<()> {
        let mut recv = self
            .call(&Request::LeafRestarting {
                leaf: leaf.to_string(),
            })
            .await?;
        let _ = read_last_frame::<Response>(&mut recv).await?;
        Ok(())
    }

    pub async fn refresh(&self) -> Result<()> {
        let mut recv = self.call(&Request::Refresh).await?;
        let _ = read_last_frame::<Response>(&mut recv).await?;
        Ok(())
    }

    pub async fn query(&self, q: QueryRequest) -> std::result::Result<Answer, QueryFailure> {
        let other = |e: anyhow::Error| QueryFailure::Other(e);
        let mut recv = self.call(&Request::Query(q)).await.map_err(other)?;
        let mut schema: Option<SchemaRef> = None;
        let mut batches = Vec::new();
        loop {
            match read_frame::<Response>(&mut recv)
                .await
                .map_err(|e| other(e.into()))?
            {
                Some(Response::Batches(ipc)) => {
                    let (s, b) = scuba::ipc::ipc_to_batches(Buffer::from_vec(ipc))
                        .map_err(|e| other(e.into()))?;
                    schema.get_or_insert(s);
                    batches.extend(b);
                }
                Some(Response::QueryDone { coverage, notes }) => {
                    read_end(&mut recv).await;
                    let schema = schema
                        .unwrap_or_else(|| Arc::new(datafusion::arrow::datatypes::Schema::empty()));
                    return Ok(Answer {
                        schema,
                        batches,
                        coverage,
                        notes,
                    });
                }
                Some(Response::Error(e)) => return Err(QueryFailure::Server(e)),
                Some(other_reply) => {
                    return Err(other(anyhow!("unexpected reply {other_reply:?}")))
                }
                None => {
                    return Err(other(anyhow!(
                        "the aggregator closed the stream before the answer ended"
                    )))
                }
            }
        }
    }
}
