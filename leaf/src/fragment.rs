//! Plan fragments: the part of a query plan that runs on every leaf.
//!
//! ```text
//!  aggregator                                   leaf
//!  ──────────                                   ────
//!  LeafScanExec{table, schema}
//!    │ ScubaCodec::try_encode
//!    v
//!  datafusion-proto bytes ──── QUIC ────>     decode_template (once per distinct
//!                                                 │ bytes; kept, holds no rows)
//!                                                 v
//!                                             template with LeafScanExec placeholders
//!                                                 │ bind_fragment: ScanSource::scan
//!                                                 v
//!                                             DataSourceExec over the leaf's blocks
//!                                                 │ fragment (filter, partial agg, top-k...)
//!                                                 v
//!                                             merged in order / coalesced ──> IPC batches
//! ```
//!
//! The aggregator never serializes data: a scan travels as its table name
//! and projected schema, and the leaf resolves it against its own blocks.

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Int64Array};
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::aggregate::AggregateFunctionExpr;
use datafusion::physical_expr::expressions::Literal;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::execution_plan::{
    Boundedness, ChildrenPropertiesMode, EmissionType, ReplaceChildrenOptions,
};
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::statistics::{StatisticsArgs, StatisticsContext};
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

/// Encodes [`LeafScanExec`] at the aggregator; at a leaf, decodes it back
/// into a [`LeafScanExec`] of [`LEAF_SCAN_PARTITIONS`] partitions, which
/// [`bind_fragment`] replaces with a scan of the leaf's own blocks.
#[derive(Debug, Default)]
pub struct ScubaCodec;

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
        Ok(Arc::new(LeafScanExec::new(
            &node.table,
            schema,
            LEAF_SCAN_PARTITIONS,
        )))
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
    Ok(
        datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(plan, &ScubaCodec)?
            .to_vec(),
    )
}

/// Decodes a fragment into a template: its scans stay [`LeafScanExec`]
/// placeholders, so it holds no rows and can be kept and bound again for
/// every query that ships the same bytes ([`bind_fragment`]).
pub fn decode_template(bytes: &[u8], ctx: &TaskContext) -> DfResult<Arc<dyn ExecutionPlan>> {
    datafusion_proto::bytes::physical_plan_from_bytes_with_extension_codec(bytes, ctx, &ScubaCodec)
}

/// A fragment ready to run as one stream: `template`'s scans resolved
/// against `source` (every other node a fresh copy, so no state of an
/// earlier run carries over), then its partitions merged in order when it
/// has an output ordering (the aggregator merges sorted runs), coalesced
/// otherwise.
pub fn bind_fragment(
    template: &Arc<dyn ExecutionPlan>,
    source: &dyn ScanSource,
) -> DfResult<Arc<dyn ExecutionPlan>> {
    let plan = fresh_copy(template, &mut |node| {
        let Some(scan) = node.downcast_ref::<LeafScanExec>() else {
            return Ok(None);
        };
        let batches = source
            .scan(&scan.table, &scan.schema)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        let mut partitions: Vec<Vec<RecordBatch>> = vec![Vec::new(); LEAF_SCAN_PARTITIONS];
        for (i, b) in batches.into_iter().enumerate() {
            partitions[i % LEAF_SCAN_PARTITIONS].push(b);
        }
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&partitions, Arc::clone(&scan.schema), None)?;
        Ok(Some(exec))
    })?;
    let plan = count_from_row_counts(plan)?;
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

/// A fresh copy of `plan` to execute once: every node for which `replace`
/// gives a node is replaced by it, and every other node is rebuilt with its
/// state reset (a top-k's dynamic filter, metrics), keeping its computed
/// properties. Replacements must have the properties of what they replace
/// (the same partitions, no ordering that was not there): nothing above
/// them is planned again, which is what makes a kept plan cheap to reuse.
pub fn fresh_copy<F>(
    plan: &Arc<dyn ExecutionPlan>,
    replace: &mut F,
) -> DfResult<Arc<dyn ExecutionPlan>>
where
    F: FnMut(&Arc<dyn ExecutionPlan>) -> DfResult<Option<Arc<dyn ExecutionPlan>>>,
{
    if let Some(new) = replace(plan)? {
        return Ok(new);
    }
    let children = plan.children();
    if children.is_empty() {
        return Arc::clone(plan).reset_state();
    }
    let children = children
        .into_iter()
        .map(|c| fresh_copy(c, replace))
        .collect::<DfResult<Vec<_>>>()?;
    Arc::clone(plan)
        .replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep),
        )?
        .reset_state()
}

/// Answers a partial `count(*)` over a whole table (no GROUP BY, no WHERE)
/// from the row count its scan knows exactly, instead of counting rows:
/// DataFusion counts `*` as `count(1)`, which builds a column of ones (8
/// bytes a row) for every batch scanned.
fn count_from_row_counts(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node: Arc<dyn ExecutionPlan>| {
        let Some(agg) = node.downcast_ref::<AggregateExec>() else {
            return Ok(Transformed::no(node));
        };
        if *agg.mode() != AggregateMode::Partial
            || !agg.group_expr().is_empty()
            || agg.filter_expr().iter().any(Option::is_some)
            || !agg.aggr_expr().iter().all(|e| counts_rows(e))
        {
            return Ok(Transformed::no(node));
        }
        let stats =
            StatisticsContext::new().compute(agg.input().as_ref(), &StatisticsArgs::new())?;
        let Precision::Exact(rows) = stats.num_rows else {
            return Ok(Transformed::no(node));
        };
        // One row of partial counts, in the partial aggregate's own schema.
        let schema = agg.schema();
        let columns = schema
            .fields()
            .iter()
            .map(|_| Arc::new(Int64Array::from(vec![rows as i64])) as ArrayRef)
            .collect();
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        let exec: Arc<dyn ExecutionPlan> =
            MemorySourceConfig::try_new_exec(&[vec![batch]], schema, None)?;
        Ok(Transformed::yes(exec))
    })
    .data()
}

/// Whether `e` counts every row: `count` of a constant that is not NULL,
/// not DISTINCT, with one Int64 state (the count so far).
fn counts_rows(e: &AggregateFunctionExpr) -> bool {
    e.fun().name() == "count"
        && !e.is_distinct()
        && e.expressions().iter().all(|x| {
            x.downcast_ref::<Literal>()
                .is_some_and(|l| !l.value().is_null())
        })
        && e.state_fields()
            .is_ok_and(|f| f.len() == 1 && f[0].data_type() == &DataType::Int64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::functions_aggregate::count::count_udaf;
    use datafusion::physical_expr::aggregate::AggregateExprBuilder;
    use datafusion::physical_expr::expressions::{col, lit};
    use datafusion::physical_plan::aggregates::PhysicalGroupBy;
    use datafusion::physical_plan::filter::FilterExec;
    use datafusion::prelude::SessionContext;

    /// A partial `count(...)` over two partitions of 3 and 2 rows, one NULL.
    fn partial_count(distinct: bool, filtered: bool) -> Arc<dyn ExecutionPlan> {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, true)]));
        let batch = |v: Vec<Option<i64>>| {
            RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(Int64Array::from(v))])
                .expect("batch")
        };
        let mut input: Arc<dyn ExecutionPlan> = MemorySourceConfig::try_new_exec(
            &[
                vec![batch(vec![Some(1), None, Some(3)])],
                vec![batch(vec![Some(4), Some(5)])],
            ],
            Arc::clone(&schema),
            None,
        )
        .expect("source");
        if filtered {
            let predicate = datafusion::physical_expr::expressions::binary(
                col("x", &schema).expect("x"),
                datafusion::logical_expr::Operator::Gt,
                lit(1i64),
                &schema,
            )
            .expect("predicate");
            input = Arc::new(FilterExec::try_new(predicate, input).expect("filter"));
        }
        let count = AggregateExprBuilder::new(count_udaf(), vec![lit(1i64)])
            .schema(Arc::clone(&schema))
            .alias("count(*)")
            .with_distinct(distinct)
            .build()
            .expect("count");
        Arc::new(
            AggregateExec::try_new(
                AggregateMode::Partial,
                PhysicalGroupBy::default(),
                vec![Arc::new(count)],
                vec![None],
                input,
                schema,
            )
            .expect("aggregate"),
        )
    }

    async fn total(plan: Arc<dyn ExecutionPlan>) -> i64 {
        let plan: Arc<dyn ExecutionPlan> = Arc::new(CoalescePartitionsExec::new(plan));
        let batches = datafusion::physical_plan::collect(plan, SessionContext::new().task_ctx())
            .await
            .expect("runs");
        batches
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<Int64Array>()
                    .expect("counts")
                    .values()
                    .to_vec()
            })
            .sum()
    }

    #[tokio::test]
    async fn count_star_over_a_whole_table_is_read_from_its_row_count() {
        let plan = count_from_row_counts(partial_count(false, false)).expect("rewrite");
        assert!(
            !format!(
                "{}",
                datafusion::physical_plan::displayable(plan.as_ref()).indent(true)
            )
            .contains("AggregateExec"),
            "nothing left to count"
        );
        assert_eq!(plan.schema(), partial_count(false, false).schema());
        assert_eq!(total(plan).await, 5);
    }

    #[tokio::test]
    async fn a_count_under_a_filter_is_still_counted() {
        let plan = count_from_row_counts(partial_count(false, true)).expect("rewrite");
        assert!(plan.is::<AggregateExec>());
        assert_eq!(total(plan).await, 3);
    }

    #[test]
    fn a_distinct_count_is_left_to_run() {
        let plan = count_from_row_counts(partial_count(true, false)).expect("rewrite");
        assert!(plan.is::<AggregateExec>());
    }
}
