//! String group keys as view strings.
//!
//! DataFusion groups a `Utf8View` key faster than a plain `Utf8` one: a
//! value of up to 12 bytes sits inline in its 16-byte view, so hashing and
//! comparing it touches no second buffer. Leaves keep string columns as
//! views already, so most keys are views; what still arrives plain is a
//! key computed as `Utf8`, above all a tag (tags are `List<Utf8>`, so
//! `unnest(tags)` is plain). This rewrite casts every plain string GROUP BY
//! key to `Utf8View` inside the aggregate (after any filter, so only the
//! rows that are grouped pay for the cast), and casts the answer's columns
//! back, so the answer's types are the same as without it.
//!
//! It runs on the logical plan before DataFusion optimizes it; the leaves
//! then run the cast in their partial aggregate.

use datafusion::arrow::datatypes::DataType;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Column, Result};
use datafusion::logical_expr::{cast, Aggregate, Expr, ExprSchemable, LogicalPlan, Projection};
use std::sync::Arc;

/// `plan` with its string group keys cast to `Utf8View`; its output schema
/// is unchanged.
pub fn group_strings_as_views(plan: LogicalPlan) -> Result<LogicalPlan> {
    // Most plans have no string key: leave them exactly as they are.
    if !plan.exists(|node| Ok(has_string_key(node)))? {
        return Ok(plan);
    }
    let original = Arc::clone(plan.schema());
    let rewritten = plan
        .transform_up(|node| match node {
            LogicalPlan::Aggregate(agg) => view_keys(agg),
            // A node above a rewritten aggregate sees new column types.
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })?
        .data;
    if rewritten.schema().as_ref() == original.as_ref() {
        return Ok(rewritten);
    }
    // Cast the answer's columns back to the types the query was planned
    // with (small: the answer is already aggregated).
    let exprs = rewritten
        .schema()
        .iter()
        .zip(original.fields())
        .map(|((qualifier, field), wanted)| {
            let column = Expr::Column(Column::new(qualifier.cloned(), field.name()));
            if field.data_type() == wanted.data_type() {
                column
            } else {
                cast(column, wanted.data_type().clone())
                    .alias_qualified(qualifier.cloned(), field.name())
            }
        })
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(
        exprs,
        Arc::new(rewritten),
    )?))
}

fn is_string_key(e: &Expr, input: &datafusion::common::DFSchema) -> bool {
    !matches!(e, Expr::GroupingSet(_)) && matches!(e.get_type(input), Ok(DataType::Utf8))
}

fn has_string_key(node: &LogicalPlan) -> bool {
    match node {
        LogicalPlan::Aggregate(agg) => agg
            .group_expr
            .iter()
            .any(|e| is_string_key(e, agg.input.schema())),
        _ => false,
    }
}

fn view_keys(agg: Aggregate) -> Result<Transformed<LogicalPlan>> {
    let input = agg.input.schema();
    let mut changed = false;
    let group_expr: Vec<Expr> = agg
        .group_expr
        .iter()
        .map(|e| {
            if !is_string_key(e, input) {
                return e.clone();
            }
            changed = true;
            let (qualifier, name) = e.qualified_name();
            cast(e.clone(), DataType::Utf8View).alias_qualified(qualifier, name)
        })
        .collect();
    if !changed {
        return Ok(Transformed::no(LogicalPlan::Aggregate(agg)));
    }
    let agg = Aggregate::try_new(agg.input, group_expr, agg.aggr_expr)?;
    Ok(Transformed::yes(LogicalPlan::Aggregate(agg)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{Field, Schema};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::{DataFrame, SessionContext};

    async fn session() -> SessionContext {
        let schema = Arc::new(Schema::new(vec![
            Field::new("service", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(vec![
                    Some("api"),
                    Some("a service name longer than twelve bytes"),
                    None,
                    Some("api"),
                ])),
                Arc::new(Int64Array::from(vec![1, 2, 3, 4])),
            ],
        )
        .unwrap();
        let ctx = SessionContext::new();
        let table = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        ctx.register_table("t", Arc::new(table)).unwrap();
        ctx
    }

    fn aggregate_key_types(plan: &LogicalPlan) -> Vec<DataType> {
        let mut types = Vec::new();
        plan.apply(|node| {
            if let LogicalPlan::Aggregate(agg) = node {
                for e in &agg.group_expr {
                    types.push(e.get_type(agg.input.schema()).unwrap());
                }
            }
            Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
        })
        .unwrap();
        types
    }

    #[tokio::test]
    async fn string_group_keys_are_grouped_as_views_and_the_answer_keeps_its_types() {
        let ctx = session().await;
        let sql = "SELECT service, sum(n) AS total FROM t WHERE n > 0 \
                   GROUP BY service ORDER BY total DESC";
        let plain = ctx.sql(sql).await.unwrap().logical_plan().clone();
        let viewed = group_strings_as_views(plain.clone()).unwrap();

        assert_eq!(aggregate_key_types(&plain), vec![DataType::Utf8]);
        assert_eq!(aggregate_key_types(&viewed), vec![DataType::Utf8View]);
        assert_eq!(viewed.schema().inner(), plain.schema().inner());
        assert_eq!(viewed.schema().columns(), plain.schema().columns());

        let run = |plan: LogicalPlan| {
            let ctx = &ctx;
            async move { DataFrame::new(ctx.state(), plan).collect().await.unwrap() }
        };
        let expected = run(plain).await;
        let got = run(viewed).await;
        assert_eq!(got, expected);
        assert_eq!(got[0].column(0).data_type(), &DataType::Utf8);
    }

    #[tokio::test]
    async fn a_query_without_string_keys_is_left_as_it_was() {
        let ctx = session().await;
        let plain = ctx
            .sql("SELECT n % 2 AS parity, count(*) FROM t GROUP BY 1")
            .await
            .unwrap()
            .logical_plan()
            .clone();
        let viewed = group_strings_as_views(plain.clone()).unwrap();
        assert_eq!(viewed, plain);
    }
}
