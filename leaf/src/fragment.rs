//! Plan fragments: the part of a query plan that runs on every leaf.
//!
//! ```text
//!  aggregator                                   leaf
//!  ──────────                                   ────
//!  LeafScanExec{table, schema}                  ScubaCodec::try_decode
//!    │ ScubaCodec::try_encode                     │ ScanSource::scan(table, schema)
//!    v                                            v
//!  datafusion-proto bytes ──── QUIC ────>     DataSourceExec over the leaf's blocks
//!                                                 │ fragment (filter, partial agg, top-k...)
//!                                                 v
//!                                             merged in order / coalesced ──> IPC batches
//! ```
//!
//! The aggregator never serializes data: a scan travels as its table name
//! and projected schema, and the leaf resolves it against its own blocks.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, Partitioning,
    PlanProperties,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};

/// Partitions a leaf splits its blocks into, so both cores work on a fragment.
pub const LEAF_SCAN_PARTITIONS: usize = 2;

/// Where a leaf's scans find their rows.
pub trait ScanSource: Send + Sync + fmt::Debug {
    /// Every row of `table` adapted to `schema`; empty when the table is
    /// unknown here (a leaf that never saw the table holds none of its rows).
    fn scan(&self, table: &str, schema: &SchemaRef) -> crate::Result<Vec<RecordBatch>>;
}

/// "Scan `table` on every leaf": a placeholder in the aggregator's plan with
/// one partition per leaf. It never executes at the aggregator; the fragment
/// above it is cut out and shipped, and the leaf decodes it into a local scan.
#[derive(Debug)]
pub struct LeafScanExec {
    table: String,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl LeafScanExec {
    pub fn new(table: &str, schema: SchemaRef, leaves: usize) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(leaves.max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        LeafScanExec {
            table: table.to_string(),
            schema,
            properties: Arc::new(properties),
        }
    }

    pub fn table(&self) -> &str {
        &self.table
    }
}

impl DisplayAs for LeafScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "LeafScanExec: table={}, columns={}",
            self.table,
            self.schema.fields().len()
        )
    }
}

impl ExecutionPlan for LeafScanExec {
    fn name(&self) -> &str {
        "LeafScanExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.is_empty() {
            Ok(self)
        } else {
            Err(DataFusionError::Internal(
                "LeafScanExec has no children".into(),
            ))
        }
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        Err(DataFusionError::Internal(
            "LeafScanExec runs only on leaves; the aggregator must ship its fragment".into(),
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct ScanNode {
    table: String,
    schema_ipc: Vec<u8>,
}

/// Encodes [`LeafScanExec`] at the aggregator; at a leaf, decodes it into a
/// scan of the leaf's own blocks through its [`ScanSource`].
#[derive(Debug, Default)]
pub struct ScubaCodec {
    source: Option<Arc<dyn ScanSource>>,
}

impl ScubaCodec {
    /// The aggregator's codec: encodes scans, decodes none.
    pub fn for_aggregator() -> Self {
        ScubaCodec { source: None }
    }

    /// A leaf's codec: scans resolve against `source`.
    pub fn for_leaf(source: Arc<dyn ScanSource>) -> Self {
        ScubaCodec {
            source: Some(source),
        }
    }
}

fn bincode_config() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<{ scuba::limits::FRAME_BYTES_MAX }>()
}

impl PhysicalExtensionCodec for ScubaCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if !inputs.is_empty() {
            return Err(DataFusionError::Internal(
                "a scan node has no inputs".into(),
            ));
        }
        let (node, _): (ScanNode, usize) = bincode::serde::decode_from_slice(buf, bincode_config())
            .map_err(|e| DataFusionError::Plan(format!("malformed scan node: {e}")))?;
        let schema = scuba::ipc::ipc_to_schema(&node.schema_ipc)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let Some(source) = &self.source else {
            return Ok(Arc::new(LeafScanExec::new(&node.table, schema, 1)));
        };
        let batches = source
            .scan(&node.table, &schema)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); LEAF_SCAN_PARTITIONS];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % LEAF_SCAN_PARTITIONS].push(b);
        }
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&partitions, schema, None)?;
        Ok(exec)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let Some(scan) = node.downcast_ref::<LeafScanExec>() else {
            return Err(DataFusionError::NotImplemented(format!(
                "cannot ship plan node {} to leaves",
                node.name()
            )));
        };
        let schema_ipc = scuba::ipc::schema_to_ipc(&scan.schema)
            .map_err(|e| DataFusionError::Plan(e.to_string()))?;
        let node = ScanNode {
            table: scan.table.clone(),
            schema_ipc,
        };
        bincode::serde::encode_into_std_write(&node, buf, bincode_config())
            .map_err(|e| DataFusionError::Internal(format!("encoding scan node: {e}")))?;
        Ok(())
    }
}

/// Serializes a fragment for the wire.
pub fn encode_fragment(plan: Arc<dyn ExecutionPlan>) -> DfResult<Vec<u8>> {
    let codec = ScubaCodec::for_aggregator();
    Ok(
        datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, &codec)?
            .to_vec(),
    )
}

/// Decodes a fragment at a leaf, resolving its scans against `source`, and
/// readies it to run as one stream: partitions merged in order when the
/// fragment has an output ordering (the aggregator merges sorted runs),
/// coalesced otherwise.
pub fn decode_fragment(
    bytes: &[u8],
    ctx: &TaskContext,
    source: Arc<dyn ScanSource>,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let codec = ScubaCodec::for_leaf(source);
    let plan =
        datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, ctx, &codec)?;
    if plan.output_partitioning().partition_count() <= 1 {
        return Ok(plan);
    }
    Ok(match plan.output_ordering() {
        Some(ordering) => {
            let fetch = plan.fetch();
            Arc::new(SortPreservingMergeExec::new(ordering.clone(), plan).with_fetch(fetch))
        }
        None => Arc::new(CoalescePartitionsExec::new(plan)),
    })
}
