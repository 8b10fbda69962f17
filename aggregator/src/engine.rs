//! The aggregator's query engine.
//!
//! ```text
//!  SQL ──DataFusion (ClusterTable per table)──> physical plan
//!        │ cut(): below the first exchange above each LeafScanExec
//!        v
//!  Prepared: fragments (encoded) + merge plan with slots
//!        │ kept by SQL text while the schemas stay (not when it calls now())
//!        v
//!  fragments ──> every leaf (fan-out, deadline) ──> per-leaf batches
//!        │ each slot replaced by a memory source, one partition per leaf,
//!        │ in a fresh copy of the merge plan
//!        v
//!  merge plan (final aggregate, sort-merge, limit) ──> answer + coverage
//! ```
//!
//! The aggregator knows tables and schemas from the leaves' reports (a
//! poller keeps them fresh; a miss refreshes them at once). A leaf that does
//! not answer by the deadline contributes an empty partition and is named in
//! the coverage; it never fails the query.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::num::NonZeroUsize;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::TableType;
use datafusion::error::Result as DfResult;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{Expr, LogicalPlan, Volatility};
use datafusion::physical_optimizer::optimizer::PhysicalOptimizer;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::{DataFrame, SQLOptions, SessionConfig, SessionContext};
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use lru::LruCache;
use scuba::coverage::{Coverage, MissingReason};
use scuba::limits::{PLAN_CACHE_ENTRIES_MAX, QUERY_TIMEOUT_MS_MAX};
use scuba::wire::{LeafStats, LeafStatus};
use scuba_leaf::fragment::{encode_fragment, LeafScanExec};

use crate::error::{AggError, Result};
use crate::estimate::{self, LeafValues, Preparation};
use crate::fanout::{FanOut, Outcome};
use crate::transport::LeafTransport;

/// How often the poller asks every leaf for its stats.
pub const POLL_INTERVAL_MS: u64 = 1_000;
/// How long a stats request may take before the leaf counts as down.
pub const STATS_TIMEOUT_MS: u64 = 1_000;
/// How long a leaf said to be restarting is reported so while it is away.
pub const RESTART_GRACE_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy)]
pub struct QueryDefaults {
    pub timeout_ms: u64,
    pub min_coverage: f64,
}

#[derive(Debug, Clone, Default)]
pub struct QueryOptions {
    pub timeout_ms: Option<u64>,
    pub min_coverage: Option<f64>,
    pub estimate: bool,
}

/// A query's answer.
#[derive(Debug, Clone)]
pub struct QueryAnswer {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
    pub coverage: Coverage,
    pub notes: Vec<String>,
    /// Rows the leaves sent back (partial aggregates, top-k, or raw rows
    /// for a plain SELECT): what crossed the network.
    pub rows_from_leaves: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LeafState {
    Unknown,
    Up,
    /// Its port refused a probe: the process is gone.
    Down,
    /// It holds its port but did not answer (stopped, overloaded, cut off).
    Unresponsive,
    Restarting,
}

#[derive(Debug, Clone)]
struct LeafCache {
    state: LeafState,
    stats: Option<LeafStats>,
    last_report: Option<Instant>,
    /// Set when told the leaf is restarting: the pid of the process being
    /// replaced, and when. Cleared once another process answers.
    restarting: Option<(u32, Instant)>,
    /// Schemas decoded from `stats`, by table.
    schemas: HashMap<String, SchemaRef>,
}

/// Each table's name and unified schema, as a planning session knows them.
type TableSchemas = Vec<(String, SchemaRef)>;

/// A planning session and the queries planned in it, valid while the tables'
/// schemas stay as they were. Building a session registers every function
/// DataFusion has (about 0.1 ms); planning a query takes 0.2-0.6 ms more.
struct Planning {
    tables: TableSchemas,
    ctx: SessionContext,
    /// Counts sessions, so a plan made in one is never kept in the next.
    generation: u64,
    plans: LruCache<String, Arc<Prepared>>,
}

/// A query planned and cut, ready to run across the leaves any number of
/// times: each run splices its leaves' answers into a fresh copy of `merge`.
#[derive(Debug)]
struct Prepared {
    /// The plan above the fragments, with a slot where each was cut out.
    merge: Arc<dyn ExecutionPlan>,
    fragments: Vec<Fragment>,
    /// Each fragment's table and the bytes shipped to every leaf.
    encoded: Vec<(String, Arc<Vec<u8>>)>,
    schema: SchemaRef,
    /// The logical plan as the SQL planner made it, before optimization
    /// ([`estimate`] reads its columns).
    logical: LogicalPlan,
}

/// Whether planning `plan` again would give the same plan: not when it
/// calls a function whose value changes from call to call (`random()`) or
/// from query to query (`now()`, which the optimizer folds to a constant).
fn is_repeatable(plan: &LogicalPlan) -> bool {
    let mut repeatable = true;
    let _ = plan.apply_with_subqueries(|node| {
        node.apply_expressions(|e| {
            e.apply(|e| {
                if let Expr::ScalarFunction(f) = e {
                    if f.func.signature().volatility != Volatility::Immutable {
                        repeatable = false;
                        return Ok(TreeNodeRecursion::Stop);
                    }
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    });
    repeatable
}

pub struct Aggregator {
    transport: Arc<dyn LeafTransport>,
    ids: Vec<String>,
    addrs: Vec<String>,
    cache: RwLock<Vec<LeafCache>>,
    defaults: QueryDefaults,
    /// The planning session for the tables and schemas it was built with,
    /// and the queries planned in it.
    planning: std::sync::Mutex<Option<Planning>>,
    /// Runs the final merge of every query (no tables, no state); made
    /// once, as making one copies a whole session.
    merger: Arc<TaskContext>,
}

impl fmt::Debug for Aggregator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregator")
            .field("leaves", &self.ids)
            .finish()
    }
}

impl Aggregator {
    pub fn new(
        transport: Arc<dyn LeafTransport>,
        addrs: Vec<String>,
        defaults: QueryDefaults,
    ) -> Self {
        let ids = transport.leaf_ids();
        let cache = ids
            .iter()
            .map(|_| LeafCache {
                state: LeafState::Unknown,
                stats: None,
                last_report: None,
                restarting: None,
                schemas: HashMap::new(),
            })
            .collect();
        Aggregator {
            transport,
            ids,
            addrs,
            cache: RwLock::new(cache),
            defaults,
            planning: std::sync::Mutex::new(None),
            merger: SessionContext::new().task_ctx(),
        }
    }

    pub fn leaf_ids(&self) -> &[String] {
        &self.ids
    }

    /// Asks every leaf for its stats now (bounded by [`STATS_TIMEOUT_MS`]).
    pub async fn refresh(&self) {
        let mut pending: FuturesUnordered<_> = (0..self.ids.len())
            .map(|i| {
                let t = Arc::clone(&self.transport);
                async move {
                    let r =
                        tokio::time::timeout(Duration::from_millis(STATS_TIMEOUT_MS), t.stats(i))
                            .await;
                    (i, r)
                }
            })
            .collect();
        while let Some((i, r)) = pending.next().await {
            let mut cache = self.cache.write().expect("cache poisoned");
            let c = &mut cache[i];
            match r {
                Ok(Ok(stats)) => {
                    // Another process answering ends a restart.
                    if c.restarting.is_some_and(|(pid, _)| pid != stats.pid) {
                        c.restarting = None;
                    }
                    c.state = if stats.accepting_writes {
                        LeafState::Up
                    } else {
                        LeafState::Restarting
                    };
                    c.schemas = stats
                        .tables
                        .iter()
                        .filter_map(|t| {
                            scuba::ipc::ipc_to_schema(&t.schema_ipc)
                                .ok()
                                .map(|s| (t.name.clone(), s))
                        })
                        .collect();
                    c.stats = Some(stats);
                    c.last_report = Some(Instant::now());
                }
                Ok(Err(MissingReason::Restarting)) => c.state = LeafState::Restarting,
                Ok(Err(MissingReason::Unreachable)) => c.state = LeafState::Down,
                _ => c.state = LeafState::Unresponsive,
            }
            if c.restarting
                .is_some_and(|(_, since)| since.elapsed() < Duration::from_millis(RESTART_GRACE_MS))
            {
                c.state = LeafState::Restarting;
            }
            if c.state != LeafState::Up {
                let t = Arc::clone(&self.transport);
                tokio::spawn(async move { t.reset(i).await });
            }
        }
    }

    /// Keeps the cache fresh until the aggregator is dropped.
    pub fn spawn_poller(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(POLL_INTERVAL_MS));
            loop {
                tick.tick().await;
                let Some(agg) = weak.upgrade() else { return };
                agg.refresh().await;
            }
        });
    }

    /// Marks `leaf` as restarting until a process other than the current
    /// one answers for it (or [`RESTART_GRACE_MS`] pass).
    pub fn mark_restarting(&self, leaf: &str) {
        let mut cache = self.cache.write().expect("cache poisoned");
        if let Some(i) = self.ids.iter().position(|id| id == leaf) {
            let pid = cache[i].stats.as_ref().map_or(0, |s| s.pid);
            cache[i].restarting = Some((pid, Instant::now()));
            cache[i].state = LeafState::Restarting;
        }
    }

    /// Every leaf as last seen.
    pub fn status(&self) -> Vec<LeafStatus> {
        let cache = self.cache.read().expect("cache poisoned");
        cache
            .iter()
            .enumerate()
            .map(|(i, c)| LeafStatus {
                leaf: self.ids[i].clone(),
                addr: self.addrs.get(i).cloned().unwrap_or_default(),
                state: match c.state {
                    LeafState::Up => "up",
                    LeafState::Down | LeafState::Unknown => "down",
                    LeafState::Unresponsive => "unresponsive",
                    LeafState::Restarting => "restarting",
                }
                .to_string(),
                last_report_ms_ago: c.last_report.map(|t| t.elapsed().as_millis() as u64),
                stats: c.stats.clone(),
            })
            .collect()
    }

    /// The union of every leaf's schema for `table` (None if no leaf has it).
    pub fn table_schema(&self, table: &str) -> Result<Option<SchemaRef>> {
        let cache = self.cache.read().expect("cache poisoned");
        let mut unified: Option<SchemaRef> = None;
        for c in cache.iter() {
            if let Some(s) = c.schemas.get(table) {
                unified = Some(match unified {
                    None => Arc::clone(s),
                    Some(u) => scuba::schema::unify_schemas(table, &u, s)?,
                });
            }
        }
        Ok(unified)
    }

    fn table_names(&self) -> BTreeSet<String> {
        let cache = self.cache.read().expect("cache poisoned");
        cache
            .iter()
            .flat_map(|c| c.schemas.keys().cloned())
            .collect()
    }

    /// Rows each leaf last reported for `tables`.
    fn last_rows(&self, tables: &BTreeSet<String>) -> Vec<u64> {
        let cache = self.cache.read().expect("cache poisoned");
        cache
            .iter()
            .map(|c| {
                c.stats.as_ref().map_or(0, |s| {
                    s.tables
                        .iter()
                        .filter(|t| tables.contains(&t.name))
                        .map(|t| t.rows)
                        .sum()
                })
            })
            .collect()
    }

    /// The tables and their unified schemas as the cache knows them now.
    fn table_schemas(&self) -> Result<TableSchemas> {
        let mut tables = Vec::new();
        for table in self.table_names() {
            if let Some(schema) = self.table_schema(&table)? {
                tables.push((table, schema));
            }
        }
        Ok(tables)
    }

    fn new_session(&self, tables: &[(String, SchemaRef)]) -> Result<SessionContext> {
        let leaves = self.ids.len();
        let mut config = SessionConfig::new()
            .with_target_partitions(leaves.clamp(2, 16))
            .with_round_robin_repartition(false)
            .with_information_schema(false);
        config
            .options_mut()
            .optimizer
            .enable_dynamic_filter_pushdown = false;
        // Partial and final aggregates must stay apart: the partial runs on
        // the leaves. With one leaf nothing separates them, so this rule
        // would fuse them and raw rows would be shipped.
        let rules = PhysicalOptimizer::new()
            .rules
            .into_iter()
            .filter(|r| r.name() != "CombinePartialFinalAggregate")
            .collect();
        let state = SessionStateBuilder::new()
            .with_config(config)
            .with_default_features()
            .with_physical_optimizer_rules(rules)
            .build();
        let ctx = SessionContext::new_with_state(state);
        scuba::functions::register(&ctx);
        for (table, schema) in tables {
            let provider = ClusterTable {
                name: table.clone(),
                schema: Arc::clone(schema),
                leaves,
            };
            ctx.register_table(table.as_str(), Arc::new(provider))?;
        }
        Ok(ctx)
    }

    /// `sql` planned and cut into fragments: planned before, while the
    /// tables' schemas are unchanged and the plan does not depend on when
    /// it was made; planned now otherwise.
    async fn prepare(&self, sql: &str) -> Result<Arc<Prepared>> {
        let tables = self.table_schemas()?;
        let (ctx, generation) = {
            let mut planning = self.planning.lock().expect("planning poisoned");
            match &mut *planning {
                Some(p) if p.tables == tables => {
                    if let Some(prepared) = p.plans.get(sql) {
                        return Ok(Arc::clone(prepared));
                    }
                    (p.ctx.clone(), p.generation)
                }
                _ => {
                    let generation = planning.as_ref().map_or(0, |p| p.generation + 1);
                    let ctx = self.new_session(&tables)?;
                    *planning = Some(Planning {
                        tables,
                        ctx: ctx.clone(),
                        generation,
                        plans: LruCache::new(
                            NonZeroUsize::new(PLAN_CACHE_ENTRIES_MAX).expect("a bound above 0"),
                        ),
                    });
                    (ctx, generation)
                }
            }
        };
        // Queries only: the session is shared, so nothing may change it.
        let read_only = SQLOptions::new()
            .with_allow_ddl(false)
            .with_allow_dml(false)
            .with_allow_statements(false);
        let df = ctx.sql_with_options(sql, read_only).await?;
        let logical = df.logical_plan().clone();
        // The rewrite only speeds a query up; a plan it cannot rewrite runs
        // as planned.
        let viewed = crate::views::group_strings_as_views(logical.clone())
            .unwrap_or_else(|_| logical.clone());
        let physical = DataFrame::new(ctx.state(), viewed)
            .create_physical_plan()
            .await?;
        let schema = physical.schema();
        let mut fragments = Vec::new();
        let merge = cut(physical, &mut fragments)?;
        let encoded = fragments
            .iter()
            .map(|f| {
                Ok((
                    f.table.clone(),
                    Arc::new(encode_fragment(Arc::clone(&f.plan))?),
                ))
            })
            .collect::<Result<_>>()?;
        let prepared = Arc::new(Prepared {
            merge,
            fragments,
            encoded,
            schema,
            logical,
        });
        if is_repeatable(&prepared.logical) {
            let mut planning = self.planning.lock().expect("planning poisoned");
            if let Some(p) = planning.as_mut().filter(|p| p.generation == generation) {
                p.plans.put(sql.to_string(), Arc::clone(&prepared));
            }
        }
        Ok(prepared)
    }

    /// Queries planned and kept for reuse now.
    pub fn plans_kept(&self) -> usize {
        let planning = self.planning.lock().expect("planning poisoned");
        planning.as_ref().map_or(0, |p| p.plans.len())
    }

    /// Runs `sql` across the cluster. Never waits past the deadline; missing
    /// leaves are named in the coverage. Fails on bad SQL, or when coverage
    /// is below the minimum (the error still carries the coverage).
    pub async fn query(&self, sql: &str, options: &QueryOptions) -> Result<QueryAnswer> {
        let started = Instant::now();
        let timeout_ms = options
            .timeout_ms
            .unwrap_or(self.defaults.timeout_ms)
            .clamp(1, QUERY_TIMEOUT_MS_MAX);
        let min_coverage = options.min_coverage.unwrap_or(self.defaults.min_coverage);
        let prepared = match self.prepare(sql).await {
            Ok(p) => p,
            Err(AggError::Sql(first)) => {
                // Perhaps a table or column the cache has not seen yet.
                self.refresh().await;
                self.prepare(sql).await.map_err(|e| match e {
                    AggError::Sql(_) => AggError::Sql(first),
                    other => other,
                })?
            }
            Err(e) => return Err(e),
        };
        let mut answer = self
            .run(&prepared, started, timeout_ms, options.estimate)
            .await?;
        if answer
            .coverage
            .missing
            .iter()
            .any(|m| matches!(&m.reason, MissingReason::Error(e) if e.contains("stale schema")))
        {
            self.refresh().await;
            let prepared = self.prepare(sql).await?;
            answer = self
                .run(&prepared, started, timeout_ms, options.estimate)
                .await?;
        }
        if answer.coverage.coverage < min_coverage {
            return Err(AggError::CoverageTooLow {
                min: min_coverage,
                coverage: answer.coverage,
            });
        }
        Ok(answer)
    }

    /// Runs `plan` across the leaves; with `estimate`, a partial answer's
    /// COUNT and SUM columns are scaled ([`estimate`]).
    async fn run(
        &self,
        prepared: &Prepared,
        started: Instant,
        timeout_ms: u64,
        estimate: bool,
    ) -> Result<QueryAnswer> {
        let fragments = &prepared.fragments;
        let leaves = self.ids.len();
        let tables: BTreeSet<String> = fragments.iter().map(|f| f.table.clone()).collect();
        let last_rows = self.last_rows(&tables);

        let mut per_leaf: Vec<Vec<Vec<RecordBatch>>> =
            vec![vec![Vec::new(); fragments.len()]; leaves];
        // Rows each leaf that answered held for the queried tables.
        let mut answered_rows: Vec<Option<u64>> = vec![None; leaves];
        let coverage = if fragments.is_empty() {
            Coverage::compute(&vec![0; leaves], vec![])
        } else {
            let mut fan = FanOut::new(leaves, timeout_ms);
            let down: Vec<bool> = {
                let cache = self.cache.read().expect("cache poisoned");
                cache.iter().map(|c| c.state == LeafState::Down).collect()
            };
            let mut pending = FuturesUnordered::new();
            for (leaf, is_down) in down.iter().enumerate() {
                let transport = Arc::clone(&self.transport);
                let encoded = prepared.encoded.clone();
                let is_down = *is_down;
                pending.push(
                    async move {
                        // A leaf the poller found gone is checked at once (one
                        // probe, about a millisecond) instead of costing the
                        // deadline; if it came back, it is asked as usual.
                        if is_down && transport.is_gone(leaf).await {
                            return Err(MissingReason::Unreachable);
                        }
                        let mut out = Vec::with_capacity(encoded.len());
                        let mut rows_by_table: HashMap<String, u64> = HashMap::new();
                        for (table, plan) in encoded {
                            let reply = transport.fragment(leaf, &table, plan).await?;
                            rows_by_table.insert(table, reply.table_rows);
                            out.push(reply.batches);
                        }
                        Ok::<_, MissingReason>((out, rows_by_table.values().sum::<u64>()))
                    }
                    .map(move |r| (leaf, r)),
                );
            }
            let deadline =
                tokio::time::Instant::from_std(started) + Duration::from_millis(timeout_ms);
            while !fan.is_done() {
                match tokio::time::timeout_at(deadline, pending.next()).await {
                    Ok(Some((leaf, result))) => {
                        let now = elapsed_ms(started);
                        match result {
                            Ok((batches, table_rows)) => match conform(fragments, batches) {
                                Ok(b) => {
                                    if fan.record(leaf, now, Outcome::Answered { table_rows }) {
                                        per_leaf[leaf] = b;
                                    }
                                }
                                Err(e) => {
                                    fan.record(
                                        leaf,
                                        now,
                                        Outcome::Missing(MissingReason::Error(e)),
                                    );
                                }
                            },
                            Err(reason) => {
                                fan.record(leaf, now, Outcome::Missing(reason));
                            }
                        }
                    }
                    Ok(None) => break,
                    Err(_) => fan.expire(elapsed_ms(started).max(timeout_ms)),
                }
            }
            // Dropping the futures still pending cancels their requests.
            drop(pending);
            fan.expire(u64::MAX);
            for leaf in 0..leaves {
                if matches!(
                    fan.outcome(leaf),
                    Some(Outcome::Missing(MissingReason::Timeout))
                ) {
                    // Its connection may be dead (a restarted process does
                    // not know it); the next request connects afresh.
                    let t = Arc::clone(&self.transport);
                    tokio::spawn(async move { t.reset(leaf).await });
                }
            }
            for (leaf, batches) in per_leaf.iter_mut().enumerate() {
                match fan.outcome(leaf) {
                    Some(Outcome::Answered { table_rows }) => {
                        answered_rows[leaf] = Some(*table_rows)
                    }
                    _ => batches.iter_mut().for_each(Vec::clear),
                }
            }
            let mut coverage = fan.coverage(&self.ids, &last_rows);
            // A leaf known to be restarting is missing for that reason.
            let cache = self.cache.read().expect("cache poisoned");
            for m in &mut coverage.missing {
                if let Some(i) = self.ids.iter().position(|id| *id == m.leaf) {
                    let restarting = cache[i].restarting.is_some_and(|(_, since)| {
                        since.elapsed() < Duration::from_millis(RESTART_GRACE_MS)
                    });
                    if restarting
                        && matches!(
                            m.reason,
                            MissingReason::Unreachable | MissingReason::Timeout
                        )
                    {
                        m.reason = MissingReason::Restarting;
                    }
                }
            }
            coverage
        };

        let merge = splice(
            Arc::clone(&prepared.merge),
            &sources(fragments, &per_leaf, None)?,
        )?;
        let batches = datafusion::physical_plan::collect(merge, Arc::clone(&self.merger)).await?;
        let rows_from_leaves = per_leaf
            .iter()
            .flatten()
            .flatten()
            .map(|b| b.num_rows() as u64)
            .sum();
        let mut answer = QueryAnswer {
            schema: Arc::clone(&prepared.schema),
            batches,
            coverage,
            notes: Vec::new(),
            rows_from_leaves,
        };
        if estimate {
            apply_estimate(
                &mut answer,
                &prepared.logical,
                &prepared.merge,
                fragments,
                &per_leaf,
                &answered_rows,
            )
            .await;
        }
        Ok(answer)
    }
}

/// One memory source per fragment with one partition per leaf: every
/// leaf's batches, or with `only` that leaf's alone (the others empty).
fn sources(
    fragments: &[Fragment],
    per_leaf: &[Vec<Vec<RecordBatch>>],
    only: Option<usize>,
) -> DfResult<Vec<Arc<dyn ExecutionPlan>>> {
    fragments
        .iter()
        .enumerate()
        .map(|(k, f)| {
            let partitions: Vec<Vec<RecordBatch>> = per_leaf
                .iter()
                .enumerate()
                .map(|(leaf, l)| {
                    if only.is_none_or(|o| o == leaf) {
                        l[k].clone()
                    } else {
                        Vec::new()
                    }
                })
                .collect::<Vec<_>>();
            // The scan was planned with at least two partitions (see
            // `ClusterTable::scan`); those past the last leaf stay empty.
            let mut partitions = partitions;
            let planned =
                datafusion::physical_plan::ExecutionPlanProperties::output_partitioning(&f.plan)
                    .partition_count();
            partitions.resize(planned.max(partitions.len()), Vec::new());
            let exec: Arc<dyn ExecutionPlan> =
                MemorySourceConfig::try_new_exec(&partitions, f.plan.schema(), None)?;
            Ok(exec)
        })
        .collect()
}

/// Each answering leaf's share of the answer: the merge plan `cut` (its
/// limits removed) over that leaf's partitions alone.
async fn leaf_shares(
    cut: &Arc<dyn ExecutionPlan>,
    fragments: &[Fragment],
    per_leaf: &[Vec<Vec<RecordBatch>>],
    answered_rows: &[Option<u64>],
) -> DfResult<Vec<LeafValues>> {
    let cut = estimate::without_limits(Arc::clone(cut))?;
    let mut shares = Vec::new();
    for (leaf, rows) in answered_rows.iter().enumerate() {
        let Some(rows) = *rows else { continue };
        let plan = splice(Arc::clone(&cut), &sources(fragments, per_leaf, Some(leaf))?)?;
        let batches =
            datafusion::physical_plan::collect(plan, SessionContext::new().task_ctx()).await?;
        shares.push(LeafValues { rows, batches });
    }
    Ok(shares)
}

/// Scales a partial answer's COUNT and SUM columns (see [`estimate`]):
/// runs the merge plan `cut` once per answering leaf with only that leaf's
/// partitions. Never fails the query: what could not be estimated is left
/// as it is and said in a note.
async fn apply_estimate(
    answer: &mut QueryAnswer,
    logical: &LogicalPlan,
    cut: &Arc<dyn ExecutionPlan>,
    fragments: &[Fragment],
    per_leaf: &[Vec<Vec<RecordBatch>>],
    answered_rows: &[Option<u64>],
) {
    let estimator =
        match estimate::prepare(logical, &answer.schema, &answer.coverage, fragments.len()) {
            Preparation::Unchanged(notes) => {
                answer.notes.extend(notes);
                return;
            }
            Preparation::Scale(e) => e,
        };
    let outcome = leaf_shares(cut, fragments, per_leaf, answered_rows)
        .await
        .map_err(|e| format!("could not run the query per leaf: {e}"))
        .and_then(|shares| {
            estimator
                .apply(&answer.schema, &answer.batches, &shares)
                .map_err(|e| e.to_string())
        });
    match outcome {
        Ok(e) => {
            answer.schema = e.schema;
            answer.batches = e.batches;
            answer.notes.extend(e.notes);
        }
        Err(why) => answer
            .notes
            .push(format!("estimate: {why}; the answer is not scaled")),
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    started.elapsed().as_millis() as u64
}

/// Checks that a leaf's batches have its fragments' schemas and relabels
/// them with the aggregator's schema objects.
fn conform(
    fragments: &[Fragment],
    per_fragment: Vec<Vec<RecordBatch>>,
) -> std::result::Result<Vec<Vec<RecordBatch>>, String> {
    fragments
        .iter()
        .zip(per_fragment)
        .map(|(f, batches)| {
            let schema = f.plan.schema();
            batches
                .into_iter()
                .map(|b| {
                    RecordBatch::try_new_with_options(
                        Arc::clone(&schema),
                        b.columns().to_vec(),
                        &datafusion::arrow::array::RecordBatchOptions::new()
                            .with_row_count(Some(b.num_rows())),
                    )
                    .map_err(|e| format!("reply does not match the fragment's schema: {e}"))
                })
                .collect()
        })
        .collect()
}

/// A part of the plan that runs on every leaf.
#[derive(Debug)]
struct Fragment {
    table: String,
    plan: Arc<dyn ExecutionPlan>,
}

fn is_exchange(plan: &dyn ExecutionPlan) -> bool {
    plan.is::<CoalescePartitionsExec>()
        || plan.is::<SortPreservingMergeExec>()
        || plan.is::<RepartitionExec>()
}

fn scan_table(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    if let Some(scan) = plan.downcast_ref::<LeafScanExec>() {
        return Some(scan.table().to_string());
    }
    let children = plan.children();
    if children.len() == 1 {
        scan_table(children[0])
    } else {
        None
    }
}

/// Whether `plan` is a chain of one-input nodes ending at a leaf scan, with
/// no exchange in it: it may run on every leaf, partition by partition.
fn is_fragment(plan: &Arc<dyn ExecutionPlan>) -> bool {
    if plan.is::<LeafScanExec>() {
        return true;
    }
    if is_exchange(plan.as_ref()) {
        return false;
    }
    let children = plan.children();
    children.len() == 1 && is_fragment(children[0])
}

/// Cuts every maximal fragment out of `plan`, replacing each with a slot.
fn cut(
    plan: Arc<dyn ExecutionPlan>,
    fragments: &mut Vec<Fragment>,
) -> Result<Arc<dyn ExecutionPlan>> {
    if is_fragment(&plan) {
        let table = scan_table(&plan)
            .ok_or_else(|| AggError::Internal("fragment without a scan".into()))?;
        let index = fragments.len();
        fragments.push(Fragment {
            table,
            plan: Arc::clone(&plan),
        });
        return Ok(Arc::new(FragmentSlot { index, inner: plan }));
    }
    let children: Vec<Arc<dyn ExecutionPlan>> = plan.children().into_iter().cloned().collect();
    if children.is_empty() {
        return Ok(plan);
    }
    let new_children = children
        .into_iter()
        .map(|c| cut(c, fragments))
        .collect::<Result<Vec<_>>>()?;
    #[allow(deprecated)]
    Ok(plan.with_new_children(new_children)?)
}

/// A fresh copy of the merge plan `plan`, with each slot replaced by the
/// leaves' results for its fragment. Every node is new (reset), so a plan
/// kept from an earlier query carries no state from its runs; nothing is
/// planned again (each source stands in for its fragment's output, one
/// partition per leaf, as the plan above it was planned for).
fn splice(
    plan: Arc<dyn ExecutionPlan>,
    sources: &[Arc<dyn ExecutionPlan>],
) -> DfResult<Arc<dyn ExecutionPlan>> {
    scuba_leaf::fragment::fresh_copy(&plan, &mut |node| {
        Ok(node
            .downcast_ref::<FragmentSlot>()
            .map(|slot| Arc::clone(&sources[slot.index])))
    })
}

/// Marks where fragment `index` was cut out, until [`splice`] puts the
/// leaves' results there. It has the fragment's properties, so the plan
/// above it stays valid meanwhile. Never executed.
#[derive(Debug)]
struct FragmentSlot {
    index: usize,
    inner: Arc<dyn ExecutionPlan>,
}

impl datafusion::physical_plan::DisplayAs for FragmentSlot {
    fn fmt_as(
        &self,
        _t: datafusion::physical_plan::DisplayFormatType,
        f: &mut fmt::Formatter,
    ) -> fmt::Result {
        write!(f, "FragmentSlot: {}", self.index)
    }
}

impl ExecutionPlan for FragmentSlot {
    fn name(&self) -> &str {
        "FragmentSlot"
    }

    fn properties(&self) -> &Arc<datafusion::physical_plan::PlanProperties> {
        self.inner.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(
            &Arc<dyn datafusion::physical_expr::PhysicalExpr>,
        ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion>,
    ) -> DfResult<datafusion::common::tree_node::TreeNodeRecursion> {
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<datafusion::execution::TaskContext>,
    ) -> DfResult<datafusion::execution::SendableRecordBatchStream> {
        Err(datafusion::error::DataFusionError::Internal(
            "a fragment slot was not spliced".into(),
        ))
    }
}

/// A table as the aggregator sees it: the union of the leaves' schemas; a
/// scan becomes a [`LeafScanExec`] with one partition per leaf. Statistics
/// stay unknown, so no aggregate is answered from them at the aggregator.
#[derive(Debug)]
struct ClusterTable {
    name: String,
    schema: SchemaRef,
    leaves: usize,
}

#[async_trait]
impl TableProvider for ClusterTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let schema = match projection {
            Some(p) => Arc::new(self.schema.project(p)?),
            None => Arc::clone(&self.schema),
        };
        // At least two partitions, so DataFusion always puts an exchange
        // above the partition-local part: with one, a final aggregate (or
        // any single-partition step) would fall into the fragment and run
        // once per leaf-local partition.
        Ok(Arc::new(LeafScanExec::new(
            &self.name,
            schema,
            self.leaves.max(2),
        )))
    }
}
