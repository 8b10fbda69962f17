//! The embedded database: N leaves and an aggregator in this process, no
//! network. It runs the same leaf and aggregator code as the servers (plan
//! fragments are serialized and decoded exactly as over QUIC), so its answers
//! are the networked cluster's.
//!
//! ```no_run
//! # async fn demo() -> scuba_aggregator::Result<()> {
//! use scuba_aggregator::embedded::Database;
//! let db = Database::open(4)?;
//! let input = std::io::Cursor::new(r#"{"service":"api","latency_ms":12}"#);
//! db.ingest_jsonl("events", input).await?;
//! let answer = db.query("SELECT service, count(*) FROM events GROUP BY service").await?;
//! assert_eq!(answer.coverage.coverage, 1.0);
//! # Ok(()) }
//! ```

use std::io::Read;
use std::sync::Arc;

use scuba::decode::InputFormat;
use scuba::limits::QUERY_TIMEOUT_MS_DEFAULT;
use scuba::schema::TIME_COLUMN_DEFAULT;
use scuba_leaf::{Leaf, LeafOptions};

use crate::engine::{Aggregator, QueryAnswer, QueryDefaults, QueryOptions};
use crate::error::Result;
use crate::ingest::{ingest, IngestOptions, IngestReport};
use crate::transport::{InProcessTransport, LeafTransport};

pub struct Database {
    transport: Arc<dyn LeafTransport>,
    leaves: Vec<Arc<Leaf>>,
    aggregator: Aggregator,
}

impl Database {
    /// A database of `leaves` in-memory leaves (no disk log).
    pub fn open(leaves: usize) -> Result<Database> {
        let leaves = (0..leaves.max(1))
            .map(|i| Leaf::open(LeafOptions::in_memory(&format!("leaf-{i}"))).map(|(l, _)| l))
            .collect::<scuba_leaf::Result<Vec<_>>>()?;
        let addrs = leaves
            .iter()
            .map(|l| format!("in-process:{}", l.id()))
            .collect();
        let transport: Arc<dyn LeafTransport> = Arc::new(InProcessTransport::new(leaves.clone()));
        let aggregator = Aggregator::new(
            Arc::clone(&transport),
            addrs,
            QueryDefaults {
                timeout_ms: QUERY_TIMEOUT_MS_DEFAULT,
                min_coverage: 0.0,
            },
        );
        Ok(Database {
            transport,
            leaves,
            aggregator,
        })
    }

    /// Ingests JSON lines into `table`, placing batches as the CLI does.
    pub async fn ingest_jsonl<R: Read + Send + 'static>(
        &self,
        table: &str,
        input: R,
    ) -> Result<IngestReport> {
        self.ingest(
            input,
            IngestOptions {
                table: table.to_string(),
                format: InputFormat::Jsonl,
                time_column: TIME_COLUMN_DEFAULT.to_string(),
                seed: None,
                dry_run: false,
            },
        )
        .await
    }

    pub async fn ingest<R: Read + Send + 'static>(
        &self,
        input: R,
        options: IngestOptions,
    ) -> Result<IngestReport> {
        let report = ingest(Arc::clone(&self.transport), input, options, |_| {}, |_| {}).await?;
        self.aggregator.refresh().await;
        Ok(report)
    }

    pub async fn query(&self, sql: &str) -> Result<QueryAnswer> {
        self.aggregator.query(sql, &QueryOptions::default()).await
    }

    pub async fn query_with(&self, sql: &str, options: &QueryOptions) -> Result<QueryAnswer> {
        self.aggregator.query(sql, options).await
    }

    pub fn aggregator(&self) -> &Aggregator {
        &self.aggregator
    }

    /// The database's leaves.
    pub fn leaves(&self) -> &[Arc<Leaf>] {
        &self.leaves
    }
}
