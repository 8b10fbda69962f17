//! Estimates for partial answers: COUNT and SUM columns scaled to every row
//! of the cluster, each with a 95% interval (`scubactl query --estimate`).
//!
//! # What is assumed
//!
//! Ingest places each batch of rows on a leaf chosen at random
//! ([`crate::placement`]), so each leaf holds a random cluster of batches,
//! and which leaves fail to answer has nothing to do with what they hold.
//! (Two-choice placement evens out how much each leaf gets, but never looks
//! at what is in a batch, so batches' contents stay exchangeable across
//! leaves.) A leaf that fails *because* of what it holds (say, one hot
//! batch) breaks the assumption, and no interval can see that.
//! The leaves that answered are then taken as a simple random sample,
//! without replacement, of `n` clusters out of the `N` leaves. The interval
//! is for the total over **all** rows the cluster holds (`rows_total` of the
//! coverage), not over the rows seen.
//!
//! # Method: the cluster ratio estimator, leaves as clusters
//!
//! For answering leaf `i`, `y_i` is the column's value for a group computed
//! over that leaf's rows alone (the merge plan run with only that leaf's
//! partitions; a group the leaf does not have has `y_i = 0`), and `m_i` the
//! rows that leaf holds for the queried table. With `M = rows_total`:
//!
//! ```text
//!   R  = Σ y_i / Σ m_i                       (sums over the n answering leaves)
//!   Ŷ  = R · M                               the estimate
//!   e_i = y_i − R · m_i                      residuals
//!   s² = Σ e_i² / (n − 1)
//!   f  = n / N
//!   V  = N² · (1 − f) · s² / n
//!   Ŷ ± t(0.975, n − 1) · √V                 the 95% interval
//! ```
//!
//! Derivation of `V`. Let `Y = Σ_{all N} y_i` be the true total and
//! `M̄ = M / N` the mean rows per leaf (known: `M` counts the missing
//! leaves' last reported rows). To first order,
//! `R − Y/M ≈ (ȳ − (Y/M)·m̄) / M̄ = ē / M̄`, where `ȳ`, `m̄` and `ē` are
//! means over the answering leaves and `e_i = y_i − (Y/M)·m_i` has
//! population mean 0. For a simple random sample of `n` of `N` clusters,
//! `Var(ē) = (1 − f)·S_e²/n`. So `Var(R) ≈ (1 − f)·S_e²/(n·M̄²)`, and on the
//! scale of totals `Var(Ŷ) = M²·Var(R) = (M/M̄)²·(1 − f)·S_e²/n =
//! N²·(1 − f)·S_e²/n`. `S_e²` is estimated by `s²` (with `R` for `Y/M`),
//! which gives `V` above; `t` is Student's with `n − 1` degrees of freedom.
//! The factor `1 − f` is the finite-population correction: with every leaf
//! answering there is nothing to estimate.
//!
//! For COUNT the lower bound is raised to the count seen, since rows on the
//! missing leaves can only add to it.
//!
//! With a single answering leaf there is no spread between leaves to learn
//! from: the estimate is given and its interval is null.
//!
//! # What is estimated
//!
//! Output columns that are, after aliases, a plain `count(..)` or `sum(..)`
//! (not DISTINCT) of an aggregate over one table's rows (filters and
//! projections below it are fine; joins, unions, nested aggregates, windows
//! and limits below it are not). Groups are matched across leaves by the
//! output columns that depend on the GROUP BY expressions only; other columns
//! (AVG, MIN, expressions over aggregates, ...) are left as they are and a
//! note names them. A HAVING that reads an aggregate filtered the partial
//! answer on unscaled values, so nothing is scaled then. LIMIT does not
//! matter: the scale `M / Σ m_i` is the same for every group, so the order
//! of the scaled values is the order of the partial ones, and the per-leaf
//! runs are made without the limit.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, Float64Array, Float64Builder};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::tree_node::TreeNode;
use datafusion::error::Result as DfResult;
use datafusion::logical_expr::{Aggregate, Distinct, Expr, LogicalPlan};
use datafusion::physical_plan::limit::{GlobalLimitExec, LocalLimitExec};
use datafusion::physical_plan::ExecutionPlan;
use scuba::coverage::Coverage;
use thiserror::Error;

/// Suffix of the column holding an estimate's lower 95% bound.
pub const LOW_SUFFIX: &str = "_low95";
/// Suffix of the column holding an estimate's upper 95% bound.
pub const HIGH_SUFFIX: &str = "_high95";

/// What an output column is, as far as estimation goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Depends on the GROUP BY expressions only: part of a group's key.
    Group,
    /// A plain `count(..)` over one table's rows: scaled.
    Count,
    /// A plain `sum(..)` over one table's rows: scaled.
    Sum,
    /// Anything else: left as it is.
    Other,
}

impl ColumnKind {
    fn is_scaled(self) -> bool {
        matches!(self, ColumnKind::Count | ColumnKind::Sum)
    }
}

/// The output columns' kinds, and why COUNT or SUM columns were demoted to
/// [`ColumnKind::Other`] (each reason once, in order).
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub kinds: Vec<ColumnKind>,
    pub reasons: BTreeSet<String>,
}

/// Classifies each output column of `plan` (a query's logical plan, as the
/// SQL planner made it). Never fails: what it cannot tell is `Other`.
pub fn classify(plan: &LogicalPlan) -> Classification {
    let mut walk = Walk::default();
    let kinds = (0..plan.schema().fields().len())
        .map(|i| walk.column(plan, i, false))
        .collect();
    Classification {
        kinds,
        reasons: walk.reasons,
    }
}

#[derive(Default)]
struct Walk {
    reasons: BTreeSet<String>,
}

impl Walk {
    /// The kind of output column `index` of `plan`. `having`: a filter
    /// above, reading an aggregate, dropped rows on unscaled values.
    fn column(&mut self, plan: &LogicalPlan, index: usize, having: bool) -> ColumnKind {
        match plan {
            LogicalPlan::Projection(p) => match p.expr.get(index) {
                Some(e) => self.expr(e, &p.input, having),
                None => ColumnKind::Other,
            },
            LogicalPlan::Filter(f) => {
                let having =
                    having || self.expr(&f.predicate, &f.input, false) != ColumnKind::Group;
                self.column(&f.input, index, having)
            }
            LogicalPlan::Sort(s) => self.column(&s.input, index, having),
            LogicalPlan::Limit(l) => self.column(&l.input, index, having),
            LogicalPlan::SubqueryAlias(s) => self.column(&s.input, index, having),
            LogicalPlan::Distinct(Distinct::All(input)) => self.column(input, index, having),
            LogicalPlan::Window(w) if index < w.input.schema().fields().len() => {
                self.column(&w.input, index, having)
            }
            LogicalPlan::Aggregate(a) => self.aggregate(a, index, having),
            _ => ColumnKind::Other,
        }
    }

    /// The kind of `expr`, evaluated over the rows of `input`.
    fn expr(&mut self, expr: &Expr, input: &LogicalPlan, having: bool) -> ColumnKind {
        match expr {
            Expr::Alias(a) => self.expr(&a.expr, input, having),
            Expr::Column(c) => match input.schema().index_of_column(c) {
                Ok(i) => self.column(input, i, having),
                Err(_) => ColumnKind::Other,
            },
            e => {
                // An expression is part of a key when it is deterministic
                // and reads group keys only.
                if e.is_volatile() || has_subquery(e) {
                    return ColumnKind::Other;
                }
                let all_groups = e.column_refs().into_iter().all(|c| {
                    input
                        .schema()
                        .index_of_column(c)
                        .is_ok_and(|i| self.column(input, i, false) == ColumnKind::Group)
                });
                if all_groups {
                    ColumnKind::Group
                } else {
                    ColumnKind::Other
                }
            }
        }
    }

    fn aggregate(&mut self, a: &Aggregate, index: usize, having: bool) -> ColumnKind {
        if a.group_expr
            .iter()
            .any(|e| matches!(e, Expr::GroupingSet(_)))
        {
            self.reasons
                .insert("GROUPING SETS, ROLLUP and CUBE are not estimated".to_string());
            return ColumnKind::Other;
        }
        let groups = a.group_expr.len();
        if index < groups {
            return ColumnKind::Group;
        }
        let Some(mut e) = a.aggr_expr.get(index - groups) else {
            return ColumnKind::Other;
        };
        while let Expr::Alias(alias) = e {
            e = &alias.expr;
        }
        let kind = match e {
            Expr::AggregateFunction(f) if !f.params.distinct => match f.func.name() {
                "count" => ColumnKind::Count,
                "sum" => ColumnKind::Sum,
                _ => return ColumnKind::Other,
            },
            _ => return ColumnKind::Other,
        };
        if having {
            self.reasons.insert(
                "a HAVING clause reads aggregates, so it kept groups by their unscaled values"
                    .to_string(),
            );
            return ColumnKind::Other;
        }
        if !rows_of_one_table(&a.input) {
            self.reasons.insert(
                "COUNT and SUM are scaled only over one table's rows (no join, union, \
                 nested aggregate, window or limit below them)"
                    .to_string(),
            );
            return ColumnKind::Other;
        }
        kind
    }
}

fn has_subquery(e: &Expr) -> bool {
    e.exists(|e| {
        Ok(matches!(
            e,
            Expr::ScalarSubquery(_) | Expr::InSubquery(_) | Expr::Exists(_)
        ))
    })
    .unwrap_or(true)
}

/// Whether `plan` yields rows of one table, filtered and projected only:
/// then each of its rows lives on exactly one leaf.
fn rows_of_one_table(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::TableScan(_) => true,
        LogicalPlan::Projection(p) => {
            !p.expr.iter().any(has_subquery) && rows_of_one_table(&p.input)
        }
        LogicalPlan::Filter(f) => !has_subquery(&f.predicate) && rows_of_one_table(&f.input),
        LogicalPlan::SubqueryAlias(s) => rows_of_one_table(&s.input),
        LogicalPlan::Sort(s) => s.fetch.is_none() && rows_of_one_table(&s.input),
        _ => false,
    }
}

/// What to do with an answer when estimates were asked for.
#[derive(Debug)]
pub enum Preparation {
    /// Leave the answer as it is; the notes say why.
    Unchanged(Vec<String>),
    /// Run the merge once per answering leaf and pass the results to
    /// [`Estimator::apply`].
    Scale(Estimator),
}

/// Decides whether an answer with `schema` and `coverage`, from the query
/// planned as `logical` with `scans` leaf scans, is estimated.
pub fn prepare(
    logical: &LogicalPlan,
    schema: &SchemaRef,
    coverage: &Coverage,
    scans: usize,
) -> Preparation {
    let unchanged = |note: &str| Preparation::Unchanged(vec![format!("estimate: {note}")]);
    if !(coverage.coverage < 1.0 && coverage.rows_total > 0) {
        return unchanged("the answer covers every row, so no scaling was needed");
    }
    if coverage.rows_covered == 0 {
        return unchanged(
            "no leaf that answered holds rows of the queried tables, so nothing was scaled",
        );
    }
    if scans != 1 {
        return unchanged(
            "only queries that read one table once are estimated; nothing was scaled",
        );
    }
    let Classification { kinds, reasons } = classify(logical);
    if kinds.len() != schema.fields().len() {
        return unchanged(
            "the plan's columns do not match the answer's (a bug); nothing was scaled",
        );
    }
    let mut notes: Vec<String> = reasons
        .into_iter()
        .map(|r| format!("estimate: {r}"))
        .collect();
    let others: Vec<&str> = kinds
        .iter()
        .zip(schema.fields())
        .filter(|(k, _)| **k == ColumnKind::Other)
        .map(|(_, f)| f.name().as_str())
        .collect();
    if !others.is_empty() {
        notes.push(format!(
            "estimate: left as they are (not a COUNT or SUM that can be scaled): {}",
            others.join(", ")
        ));
    }
    if !kinds.iter().any(|k| k.is_scaled()) {
        notes.push("estimate: no column is a plain COUNT or SUM; nothing was scaled".to_string());
        return Preparation::Unchanged(notes);
    }
    Preparation::Scale(Estimator {
        kinds,
        leaves_total: coverage.leaves_total,
        rows_total: coverage.rows_total,
        notes,
    })
}

/// One answering leaf's share: the query's answer over its rows alone.
#[derive(Debug, Clone)]
pub struct LeafValues {
    /// Rows the leaf held for the queried table when it scanned (`m_i`).
    pub rows: u64,
    /// The merge plan's output with only this leaf's partitions filled.
    pub batches: Vec<RecordBatch>,
}

/// Scales the COUNT and SUM columns of one answer (see the module docs).
#[derive(Debug)]
pub struct Estimator {
    kinds: Vec<ColumnKind>,
    leaves_total: usize,
    rows_total: u64,
    notes: Vec<String>,
}

/// An estimated answer: each scaled column is Float64 and followed by its
/// `_low95` and `_high95` bounds.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub notes: Vec<String>,
}

#[derive(Debug, Error)]
pub enum EstimateError {
    /// Two rows of an answer share a key, so leaves' rows cannot be matched.
    #[error(
        "the output columns do not tell the groups apart (select the GROUP BY columns too), \
         so nothing was scaled"
    )]
    GroupsNotIdentified,
    /// The answering leaves hold no rows.
    #[error("no answering leaf holds rows, so nothing was scaled")]
    NoRows,
    #[error("could not compute the estimate: {0}")]
    Arrow(#[from] ArrowError),
}

impl Estimator {
    /// The answer (`schema`, `batches`: the merge over every answering
    /// leaf) with its COUNT and SUM columns scaled, given each answering
    /// leaf's share.
    pub fn apply(
        &self,
        schema: &SchemaRef,
        batches: &[RecordBatch],
        leaves: &[LeafValues],
    ) -> Result<Estimate, EstimateError> {
        let answer = concat_batches(schema, batches)?;
        let keys: Vec<usize> = self.columns(ColumnKind::Group);
        let scaled: Vec<usize> = (0..self.kinds.len())
            .filter(|&c| self.kinds[c].is_scaled())
            .collect();
        let converter = RowConverter::new(
            keys.iter()
                .map(|&c| SortField::new(schema.field(c).data_type().clone()))
                .collect(),
        )?;

        let mut index: HashMap<Vec<u8>, usize> = HashMap::new();
        for (row, key) in key_rows(&converter, &answer, &keys)?
            .into_iter()
            .enumerate()
        {
            if index.insert(key, row).is_some() {
                return Err(EstimateError::GroupsNotIdentified);
            }
        }

        // y[k][row * n + i]: scaled column k, answer row, leaf i.
        let n = leaves.len();
        let rows = answer.num_rows();
        let mut y = vec![vec![0.0f64; rows * n]; scaled.len()];
        for (i, leaf) in leaves.iter().enumerate() {
            let leaf_schema = leaf
                .batches
                .first()
                .map_or(Arc::clone(schema), |b| b.schema());
            let b = concat_batches(&leaf_schema, &leaf.batches)?;
            let values = scaled
                .iter()
                .map(|&c| as_f64(b.column(c)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut seen = HashSet::new();
            for (r, key) in key_rows(&converter, &b, &keys)?.into_iter().enumerate() {
                // Groups cut from the answer by a LIMIT are not needed.
                let Some(&row) = index.get(&key) else {
                    continue;
                };
                if !seen.insert(row) {
                    return Err(EstimateError::GroupsNotIdentified);
                }
                for (k, v) in values.iter().enumerate() {
                    if v.is_valid(r) {
                        y[k][row * n + i] = v.value(r);
                    }
                }
            }
        }

        let m: Vec<f64> = leaves.iter().map(|l| l.rows as f64).collect();
        let m_sum: f64 = m.iter().sum();
        if m_sum <= 0.0 {
            return Err(EstimateError::NoRows);
        }
        let big_n = self.leaves_total as f64;
        let big_m = self.rows_total as f64;
        let t = (n >= 2).then(|| t_975(n - 1));

        let mut fields = Vec::with_capacity(self.kinds.len() + 2 * scaled.len());
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(fields.capacity());
        for (c, field) in schema.fields().iter().enumerate() {
            let Some(k) = scaled.iter().position(|&s| s == c) else {
                fields.push(Arc::clone(field));
                columns.push(Arc::clone(answer.column(c)));
                continue;
            };
            let present = answer.column(c);
            let mut est = Float64Builder::with_capacity(rows);
            let mut low = Float64Builder::with_capacity(rows);
            let mut high = Float64Builder::with_capacity(rows);
            for row in 0..rows {
                if present.is_null(row) {
                    est.append_null();
                    low.append_null();
                    high.append_null();
                    continue;
                }
                let ys = &y[k][row * n..(row + 1) * n];
                let y_sum: f64 = ys.iter().sum();
                let r = y_sum / m_sum;
                let estimate = r * big_m;
                est.append_value(estimate);
                match t {
                    Some(t) => {
                        let nf = n as f64;
                        let s2 = ys
                            .iter()
                            .zip(&m)
                            .map(|(y, m)| (y - r * m).powi(2))
                            .sum::<f64>()
                            / (nf - 1.0);
                        let f = nf / big_n;
                        let v = big_n * big_n * (1.0 - f).max(0.0) * s2 / nf;
                        let half = t * v.sqrt();
                        let mut lo = estimate - half;
                        if self.kinds[c] == ColumnKind::Count {
                            lo = lo.max(y_sum);
                        }
                        low.append_value(lo);
                        high.append_value(estimate + half);
                    }
                    None => {
                        low.append_null();
                        high.append_null();
                    }
                }
            }
            let name = field.name();
            fields.push(Arc::new(Field::new(name, DataType::Float64, true)));
            fields.push(Arc::new(Field::new(
                format!("{name}{LOW_SUFFIX}"),
                DataType::Float64,
                true,
            )));
            fields.push(Arc::new(Field::new(
                format!("{name}{HIGH_SUFFIX}"),
                DataType::Float64,
                true,
            )));
            columns.push(Arc::new(est.finish()));
            columns.push(Arc::new(low.finish()));
            columns.push(Arc::new(high.finish()));
        }
        let out_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
        let batch = RecordBatch::try_new(Arc::clone(&out_schema), columns)?;

        let mut notes = self.notes.clone();
        let names: Vec<&str> = scaled
            .iter()
            .map(|&c| schema.field(c).name().as_str())
            .collect();
        notes.push(format!(
            "estimate: {} scaled to all {} rows by the cluster ratio estimator \
             (leaves as clusters: sum of per-leaf values / sum of per-leaf rows × rows_total) \
             from {n} of {} leaves, with 95% intervals in the {LOW_SUFFIX}/{HIGH_SUFFIX} \
             columns",
            names.join(", "),
            self.rows_total,
            self.leaves_total
        ));
        if t.is_none() {
            notes.push(format!(
                "estimate: only {n} of {} leaves answered, so the spread between leaves \
                 is unknown and the {LOW_SUFFIX}/{HIGH_SUFFIX} columns are null",
                self.leaves_total
            ));
        }
        Ok(Estimate {
            schema: out_schema,
            batches: vec![batch],
            notes,
        })
    }

    fn columns(&self, kind: ColumnKind) -> Vec<usize> {
        (0..self.kinds.len())
            .filter(|&c| self.kinds[c] == kind)
            .collect()
    }
}

/// Each row's key (its group columns, encoded comparably); all rows share
/// the empty key when there are no group columns.
fn key_rows(
    converter: &RowConverter,
    batch: &RecordBatch,
    keys: &[usize],
) -> Result<Vec<Vec<u8>>, ArrowError> {
    if keys.is_empty() {
        return Ok(vec![Vec::new(); batch.num_rows()]);
    }
    let columns: Vec<ArrayRef> = keys.iter().map(|&c| Arc::clone(batch.column(c))).collect();
    let rows = converter.convert_columns(&columns)?;
    Ok(rows.iter().map(|r| r.as_ref().to_vec()).collect())
}

fn as_f64(column: &ArrayRef) -> Result<Float64Array, ArrowError> {
    let cast = cast(column, &DataType::Float64)?;
    cast.as_any()
        .downcast_ref::<Float64Array>()
        .cloned()
        .ok_or_else(|| ArrowError::CastError("cast to Float64 gave another type".into()))
}

/// `plan` without its LIMITs (and the fetch of TopK sorts and merges): a
/// per-leaf run must yield every group, not that leaf's top ones.
pub fn without_limits(plan: Arc<dyn ExecutionPlan>) -> DfResult<Arc<dyn ExecutionPlan>> {
    if plan.is::<GlobalLimitExec>() || plan.is::<LocalLimitExec>() {
        if let [child] = plan.children().as_slice() {
            return without_limits(Arc::clone(child));
        }
    }
    let plan = if plan.fetch().is_some() {
        plan.with_fetch(None).unwrap_or(plan)
    } else {
        plan
    };
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(plan);
    }
    let children = children
        .into_iter()
        .map(without_limits)
        .collect::<DfResult<Vec<_>>>()?;
    #[allow(deprecated)]
    plan.with_new_children(children)
}

/// Student's t quantile 0.975 for `df` degrees of freedom: exact to three
/// decimals for 1..=30, then the Cornish-Fisher expansion (within 0.001).
pub fn t_975(df: usize) -> f64 {
    const TABLE: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::NAN,
        1..=30 => TABLE[df - 1],
        _ => {
            let z: f64 = 1.959_964;
            let v = df as f64;
            z + (z.powi(3) + z) / (4.0 * v)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * v * v)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::datasource::MemTable;
    use datafusion::prelude::SessionContext;
    use scuba::coverage::{MissingLeaf, MissingReason};

    async fn logical(sql: &str) -> LogicalPlan {
        let schema = Arc::new(Schema::new(vec![
            Field::new("service", DataType::Utf8, true),
            Field::new("x", DataType::Int64, true),
            Field::new("y", DataType::Float64, true),
        ]));
        let ctx = SessionContext::new();
        let t = MemTable::try_new(Arc::clone(&schema), vec![vec![]]).expect("table");
        ctx.register_table("t", Arc::new(t)).expect("register");
        let u = MemTable::try_new(schema, vec![vec![]]).expect("table");
        ctx.register_table("u", Arc::new(u)).expect("register");
        ctx.sql(sql).await.expect("plans").logical_plan().clone()
    }

    async fn kinds(sql: &str) -> Vec<ColumnKind> {
        classify(&logical(sql).await).kinds
    }

    use ColumnKind::{Count, Group, Other, Sum};

    #[tokio::test]
    async fn count_and_sum_are_found_through_aliases_sorts_and_limits() {
        assert_eq!(kinds("SELECT count(*) FROM t").await, vec![Count]);
        assert_eq!(
            kinds("SELECT sum(x) AS s, count(y) AS n FROM t WHERE x > 3").await,
            vec![Sum, Count]
        );
        assert_eq!(
            kinds(
                "SELECT service, count(*) AS n FROM t GROUP BY service \
                 ORDER BY n DESC LIMIT 3"
            )
            .await,
            vec![Group, Count]
        );
        assert_eq!(
            kinds("SELECT upper(service) AS s, sum(y) FROM t GROUP BY service ORDER BY sum(x)")
                .await,
            vec![Group, Sum]
        );
        assert_eq!(
            kinds("SELECT n FROM (SELECT count(*) AS n FROM t AS a WHERE x > 1)").await,
            vec![Count]
        );
    }

    #[tokio::test]
    async fn other_aggregates_and_expressions_are_left_alone() {
        assert_eq!(
            kinds("SELECT avg(x), min(x), count(DISTINCT x), count(*) * 2 FROM t").await,
            vec![Other, Other, Other, Other]
        );
        assert_eq!(
            kinds("SELECT sum(x) / count(*), sum(x) FROM t").await,
            vec![Other, Sum]
        );
    }

    #[tokio::test]
    async fn unsafe_shapes_are_not_scaled_and_say_why() {
        let c = classify(
            &logical("SELECT service, count(*) FROM t GROUP BY service HAVING count(*) > 2").await,
        );
        assert_eq!(c.kinds, vec![Group, Other]);
        assert!(c.reasons.iter().any(|r| r.contains("HAVING")));
        assert_eq!(
            kinds("SELECT service, count(*) FROM t GROUP BY service HAVING service <> 'a'").await,
            vec![Group, Count]
        );
        assert_eq!(
            kinds("SELECT count(*) FROM (SELECT service FROM t GROUP BY service)").await,
            vec![Other]
        );
        assert_eq!(
            kinds("SELECT count(*) FROM t JOIN u ON t.x = u.x").await,
            vec![Other]
        );
        assert_eq!(
            kinds("SELECT sum(x) FROM (SELECT x FROM t LIMIT 5)").await,
            vec![Other]
        );
        let c =
            classify(&logical("SELECT service, count(*) FROM t GROUP BY ROLLUP(service)").await);
        assert!(!c.kinds.contains(&Count));
    }

    /// Coverage of leaves that answered with `answered` rows and missing
    /// leaves that last reported `missing` rows.
    fn coverage(answered: &[u64], missing: &[u64]) -> Coverage {
        let missing = missing
            .iter()
            .enumerate()
            .map(|(i, rows)| {
                (
                    MissingLeaf {
                        leaf: format!("leaf-{i}"),
                        reason: MissingReason::Timeout,
                    },
                    *rows,
                )
            })
            .collect();
        Coverage::compute(answered, missing)
    }

    fn batch(services: &[&str], values: &[i64]) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("service", DataType::Utf8, true),
                Field::new("n", DataType::Int64, false),
            ])),
            vec![
                Arc::new(StringArray::from(services.to_vec())),
                Arc::new(Int64Array::from(values.to_vec())),
            ],
        )
        .expect("batch")
    }

    fn f64s(b: &RecordBatch, c: usize) -> Vec<Option<f64>> {
        b.column(c)
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("f64")
            .iter()
            .collect()
    }

    #[tokio::test]
    async fn ratio_estimate_and_interval_match_the_formula() {
        let plan = logical("SELECT service, count(*) AS n FROM t GROUP BY service").await;
        // 3 of 4 leaves answered: 100, 200, 100 rows; the missing one 100.
        let cov = coverage(&[100, 200, 100], &[100]);
        let answer = batch(&["a", "b"], &[60, 340]);
        let schema = answer.schema();
        let Preparation::Scale(est) = prepare(&plan, &schema, &cov, 1) else {
            panic!("should scale")
        };
        let leaves = vec![
            LeafValues {
                rows: 100,
                batches: vec![batch(&["a", "b"], &[10, 90])],
            },
            LeafValues {
                rows: 200,
                batches: vec![batch(&["b", "a"], &[170, 30])],
            },
            LeafValues {
                rows: 100,
                batches: vec![batch(&["a", "b"], &[20, 80])],
            },
        ];
        let out = est.apply(&schema, &[answer], &leaves).expect("estimates");
        let names: Vec<&str> = out
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["service", "n", "n_low95", "n_high95"]);
        let b = &out.batches[0];
        // Group a: y = 10, 30, 20; R = 60/400; Ŷ = 75.
        let r = 60.0 / 400.0;
        let s2 = [(10.0, 100.0), (30.0, 200.0), (20.0, 100.0)]
            .iter()
            .map(|(y, m): &(f64, f64)| (y - r * m).powi(2))
            .sum::<f64>()
            / 2.0;
        let v = 16.0 * (1.0 - 0.75) * s2 / 3.0;
        let half = 4.303 * v.sqrt();
        let e = f64s(b, 1)[0].expect("estimate");
        assert!((e - 75.0).abs() < 1e-9);
        let lo = f64s(b, 2)[0].expect("low");
        let hi = f64s(b, 3)[0].expect("high");
        assert!((hi - (75.0 + half)).abs() < 1e-9);
        // A count is at least what was seen.
        assert!((lo - (75.0 - half).max(60.0)).abs() < 1e-9);
        assert!((f64s(b, 1)[1].expect("estimate") - 425.0).abs() < 1e-9);
        assert!(out.notes.iter().any(|n| n.contains("3 of 4 leaves")));
    }

    #[tokio::test]
    async fn one_leaf_gives_an_estimate_with_a_null_interval() {
        let plan = logical("SELECT service, count(*) AS n FROM t GROUP BY service").await;
        let cov = coverage(&[100], &[100, 100, 100]);
        let answer = batch(&["a"], &[10]);
        let schema = answer.schema();
        let Preparation::Scale(est) = prepare(&plan, &schema, &cov, 1) else {
            panic!("should scale")
        };
        let leaves = vec![LeafValues {
            rows: 100,
            batches: vec![batch(&["a"], &[10])],
        }];
        let out = est.apply(&schema, &[answer], &leaves).expect("estimates");
        let b = &out.batches[0];
        assert_eq!(f64s(b, 1), vec![Some(40.0)]);
        assert_eq!(f64s(b, 2), vec![None]);
        assert_eq!(f64s(b, 3), vec![None]);
        assert!(out.notes.iter().any(|n| n.contains("null")));
    }

    #[tokio::test]
    async fn unidentified_groups_are_refused() {
        let plan = logical("SELECT count(*) AS n FROM t GROUP BY service").await;
        let cov = coverage(&[100, 100], &[100]);
        let b = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new("n", DataType::Int64, false)])),
            vec![Arc::new(Int64Array::from(vec![1, 2]))],
        )
        .expect("batch");
        let schema = b.schema();
        let Preparation::Scale(est) = prepare(&plan, &schema, &cov, 1) else {
            panic!("should scale")
        };
        let err = est.apply(&schema, &[b], &[]).expect_err("ambiguous");
        assert!(matches!(err, EstimateError::GroupsNotIdentified));
    }

    #[tokio::test]
    async fn complete_answer_needs_no_scaling() {
        let plan = logical("SELECT count(*) FROM t").await;
        let schema = plan.schema().inner().clone();
        let cov = coverage(&[100, 100, 100], &[]);
        let Preparation::Unchanged(notes) = prepare(&plan, &schema, &cov, 1) else {
            panic!("complete answers are not scaled")
        };
        assert!(notes[0].contains("no scaling was needed"));
    }

    #[tokio::test]
    async fn complete_answer_with_estimate_is_unchanged_end_to_end() {
        use crate::embedded::Database;
        use crate::engine::QueryOptions;
        let db = Database::open(3).expect("db");
        let lines: String = (0..300)
            .map(|i| format!("{{\"service\":\"s{}\",\"x\":{i}}}\n", i % 4))
            .collect();
        db.ingest_jsonl("events", std::io::Cursor::new(lines))
            .await
            .expect("ingest");
        let sql = "SELECT service, count(*) AS n, sum(x) AS s FROM events GROUP BY service \
                   ORDER BY service";
        let plain = db.query(sql).await.expect("query");
        let options = QueryOptions {
            estimate: true,
            ..QueryOptions::default()
        };
        let est = db.query_with(sql, &options).await.expect("query");
        assert!(!est.coverage.partial);
        assert_eq!(est.schema, plain.schema);
        assert_eq!(est.batches, plain.batches);
        assert!(plain.notes.is_empty());
        assert_eq!(est.notes.len(), 1);
        assert!(est.notes[0].contains("no scaling was needed"));
    }

    #[test]
    fn t_quantiles_are_student_s() {
        assert_eq!(t_975(1), 12.706);
        assert_eq!(t_975(30), 2.042);
        assert!((t_975(40) - 2.021).abs() < 1e-3);
        assert!((t_975(120) - 1.980).abs() < 1e-3);
        assert!((t_975(100_000) - 1.960).abs() < 1e-3);
    }
}
