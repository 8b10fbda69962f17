//! SQL functions the database puts in place of DataFusion's own: the same
//! name, signature and answers, computed faster for the shapes Scuba's
//! queries take. Everything else is passed to DataFusion's implementation.
//!
//! The aggregator registers them on the session it plans with, and every
//! leaf on the task context it decodes fragments with (a fragment names
//! its functions; a leaf resolves the names), so a shipped plan runs them.
//!
//! - [`DateBin`]: `date_bin` over the time column (microsecond timestamps)
//!   with a fixed stride. DataFusion's scales every value to nanoseconds,
//!   bins it through a function pointer with two divisions and checks, and
//!   scales it back; that was 45% of a leaf's CPU in a per-minute series.
//!   Here a row in the bin of the row before it (events come mostly in time
//!   order) takes a subtraction and a comparison, and any other one
//!   division, by a divisor reduced once per batch.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, PrimitiveArray};
use datafusion::arrow::datatypes::FieldRef;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampMicrosecondType};
use datafusion::common::{Result, ScalarValue};
use datafusion::config::ConfigOptions;
use datafusion::execution::context::SessionContext;
use datafusion::functions::datetime::date_bin::DateBinFunc;
use datafusion::logical_expr::interval_arithmetic::Interval;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature,
};
use strength_reduce::StrengthReducedU64;

/// The functions to register, each under its DataFusion name.
fn scalar_udfs() -> Vec<ScalarUDF> {
    vec![ScalarUDF::new_from_impl(DateBin::default())]
}

/// Puts the database's functions in place of DataFusion's in `ctx`.
pub fn register(ctx: &SessionContext) {
    for udf in scalar_udfs() {
        ctx.register_udf(udf);
    }
}

const NANOS_PER_MICRO: i64 = 1_000;
const NANOS_PER_DAY: i64 = 86_400 * 1_000_000_000;

/// `date_bin(stride, source[, origin])`: DataFusion's, with a fast path for
/// a microsecond timestamp array, a stride of whole microseconds without
/// months, and an origin of whole microseconds at or after 1970 (the
/// default origin is 1970). There every bin is
/// `origin + floor((t - origin) / stride) * stride`, exactly DataFusion's
/// answer as long as `t` lies between the origin and the last microsecond
/// that has a nanosecond count (year 2262); a batch with a value outside
/// that goes to DataFusion whole, so overflow still reads as NULL.
#[derive(Debug, Default, PartialEq, Eq, Hash)]
pub struct DateBin {
    inner: DateBinFunc,
}

/// The bins of a call of the fast path's shape; `None` for any other call,
/// which DataFusion then answers.
fn bin_micros(args: &[ColumnarValue]) -> Option<ArrayRef> {
    let stride_ns = match args.first()? {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(v))) if v.months == 0 => {
            i64::from(v.days)
                .checked_mul(NANOS_PER_DAY)?
                .checked_add(v.nanoseconds)?
        }
        ColumnarValue::Scalar(ScalarValue::IntervalDayTime(Some(v))) => i64::from(v.days)
            .checked_mul(NANOS_PER_DAY)?
            .checked_add(i64::from(v.milliseconds).checked_mul(1_000_000)?)?,
        _ => return None,
    };
    let origin_ns = match args {
        [_, _] => 0,
        [_, _, ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(o), _))] => *o,
        _ => return None,
    };
    if stride_ns <= 0
        || stride_ns % NANOS_PER_MICRO != 0
        || origin_ns < 0
        || origin_ns % NANOS_PER_MICRO != 0
    {
        return None;
    }
    let ColumnarValue::Array(source) = &args[1] else {
        return None;
    };
    let DataType::Timestamp(TimeUnit::Microsecond, tz) = source.data_type() else {
        return None;
    };
    let times = source.as_primitive::<TimestampMicrosecondType>();
    let stride = (stride_ns / NANOS_PER_MICRO) as u64;
    let reduced = StrengthReducedU64::new(stride);
    let origin = origin_ns / NANOS_PER_MICRO;
    // The last microsecond DataFusion can scale to nanoseconds.
    let last = i64::MAX / NANOS_PER_MICRO;
    let mut in_range = true;
    // The last bin's start: events arrive mostly in time order, so most
    // rows fall in the bin of the row before and need no division.
    let mut start = i64::MIN;
    let bins: Vec<i64> = times
        .values()
        .iter()
        .enumerate()
        .map(|(i, &t)| {
            let binned = origin <= t && t <= last;
            // A null's slot holds any value; it is not binned.
            in_range &= binned || times.is_null(i);
            if binned && t.wrapping_sub(start) as u64 >= stride {
                let since = t.wrapping_sub(origin) as u64;
                start = origin.wrapping_add(((since / reduced) * stride) as i64);
            }
            start
        })
        .collect();
    if !in_range {
        return None;
    }
    let bins = PrimitiveArray::<TimestampMicrosecondType>::new(bins.into(), times.nulls().cloned())
        .with_timezone_opt(tz.clone());
    Some(Arc::new(bins))
}

/// Every method but `invoke_with_args` is DataFusion's.
impl ScalarUDFImpl for DateBin {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn schema_name(&self, args: &[Expr]) -> Result<String> {
        self.inner.schema_name(args)
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> Result<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn with_updated_config(&self, _config: &ConfigOptions) -> Option<ScalarUDF> {
        // DataFusion's date_bin does not depend on the session's settings.
        None
    }

    fn is_strict(&self) -> bool {
        self.inner.is_strict()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        match bin_micros(&args.args) {
            Some(bins) => Ok(ColumnarValue::Array(bins)),
            None => self.inner.invoke_with_args(args),
        }
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        self.inner.simplify(args, info)
    }

    fn short_circuits(&self) -> bool {
        self.inner.short_circuits()
    }

    fn evaluate_bounds(&self, input: &[&Interval]) -> Result<Interval> {
        self.inner.evaluate_bounds(input)
    }

    fn propagate_constraints(
        &self,
        interval: &Interval,
        inputs: &[&Interval],
    ) -> Result<Option<Vec<Interval>>> {
        self.inner.propagate_constraints(interval, inputs)
    }

    fn output_ordering(&self, inputs: &[ExprProperties]) -> Result<SortProperties> {
        self.inner.output_ordering(inputs)
    }

    fn preserves_lex_ordering(&self, inputs: &[ExprProperties]) -> Result<bool> {
        self.inner.preserves_lex_ordering(inputs)
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        self.inner.coerce_types(arg_types)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{IntervalMonthDayNanoArray, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::{Field, IntervalMonthDayNano, Schema, TimeUnit};
    use datafusion::arrow::record_batch::RecordBatch;
    use datafusion::arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::MemTable;

    fn times(values: Vec<Option<i64>>) -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(values))
    }

    fn stride(days: i32, nanoseconds: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(0, days, nanoseconds),
        )))
    }

    fn origin(ns: i64) -> ColumnarValue {
        ColumnarValue::Scalar(ScalarValue::TimestampNanosecond(Some(ns), None))
    }

    #[test]
    fn the_time_columns_shape_takes_the_short_path_and_others_go_to_datafusion() {
        let t = ColumnarValue::Array(times(vec![Some(1_700_000_000_123_456), None]));
        let minute = stride(0, 60_000_000_000);
        let binned = bin_micros(&[minute.clone(), t.clone()]).expect("short path");
        let binned = binned.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(binned.value(0), 1_699_999_980_000_000);
        assert!(binned.is_null(1));
        assert!(bin_micros(&[minute.clone(), t.clone(), origin(1_000)]).is_some());

        let months = ColumnarValue::Scalar(ScalarValue::IntervalMonthDayNano(Some(
            IntervalMonthDayNano::new(1, 0, 0),
        )));
        let nanos = ColumnarValue::Array(Arc::new(
            datafusion::arrow::array::TimestampNanosecondArray::from(vec![1i64]),
        ));
        let before_origin = ColumnarValue::Array(times(vec![Some(5), Some(-5)]));
        for declined in [
            vec![months, t.clone()],
            vec![stride(0, 1_500), t.clone()],
            vec![stride(0, -60_000_000_000), t.clone()],
            vec![minute.clone(), t.clone(), origin(-1_000)],
            vec![minute.clone(), t.clone(), origin(1_500)],
            vec![minute.clone(), nanos],
            vec![minute.clone(), before_origin],
            vec![minute, times(vec![Some(i64::MAX / 1_000 + 1)]).into()],
        ] {
            assert!(bin_micros(&declined).is_none(), "{declined:?}");
        }
        // A stride given as an array is DataFusion's to refuse.
        let strides: ArrayRef = Arc::new(IntervalMonthDayNanoArray::from(vec![
            IntervalMonthDayNano::new(0, 0, 60_000_000_000),
        ]));
        assert!(bin_micros(&[ColumnarValue::Array(strides), t]).is_none());
    }

    #[test]
    fn a_null_slots_value_is_not_binned() {
        let minute = 60_000_000;
        // A minute's start.
        let t0 = 1_699_999_980_000_000;
        // What a null's slot holds is up to whoever built the array. Here
        // one lies just before the origin, one past year 2262.
        let values = vec![t0 + 5, t0 - 5, t0 + 3, i64::MAX, t0 + minute];
        let nulls = vec![true, false, true, false, true];
        let source =
            PrimitiveArray::<TimestampMicrosecondType>::new(values.into(), Some(nulls.into()));
        let args = [
            stride(0, minute * 1_000),
            ColumnarValue::Array(Arc::new(source)),
            origin(t0 * 1_000),
        ];
        let binned = bin_micros(&args).expect("short path");
        let binned = binned.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            binned.iter().collect::<Vec<_>>(),
            [Some(t0), None, Some(t0), None, Some(t0 + minute)]
        );
    }

    /// The same SQL through a session with the database's functions
    /// ([`register`]) and through a stock one, over batches in and out of
    /// the short path's range.
    #[tokio::test]
    async fn date_bin_answers_exactly_as_datafusions_own() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "time",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            true,
        )]));
        let batch = |values: Vec<Option<i64>>| {
            RecordBatch::try_new(Arc::clone(&schema), vec![times(values)]).expect("batch")
        };
        let typical: Vec<Option<i64>> = (0..5_000i64)
            .map(|i| (i % 7 != 0).then(|| 1_700_000_000_000_000 + i * 7_919_993))
            .collect();
        let edges = vec![
            Some(0),
            Some(1),
            Some(-1),
            Some(-59_999_999),
            Some(-60_000_000),
            Some(i64::MAX / 1_000),
            Some(i64::MAX / 1_000 + 1),
            Some(i64::MAX),
            Some(i64::MIN),
            None,
        ];
        let near_origin = vec![Some(1_699_920_000_000_000), Some(1_699_920_000_000_001)];
        let table = MemTable::try_new(
            Arc::clone(&schema),
            vec![vec![batch(typical), batch(edges), batch(near_origin)]],
        )
        .expect("table");
        let ours = SessionContext::new();
        register(&ours);
        let stock = SessionContext::new();
        let table = Arc::new(table);
        ours.register_table("t", table.clone()).expect("register");
        stock.register_table("t", table).expect("register");
        for bin in [
            "date_bin(INTERVAL '1 minute', time)",
            "date_bin(INTERVAL '1 microsecond', time)",
            "date_bin(INTERVAL '7 minutes 3 seconds', time)",
            "date_bin(INTERVAL '1 day', time)",
            "date_bin(INTERVAL '1500 nanoseconds', time)",
            "date_bin(INTERVAL '1 month', time)",
            "date_bin(INTERVAL '5 minutes', time, TIMESTAMP '2023-11-14T00:00:00')",
            "date_bin(INTERVAL '5 minutes', time, TIMESTAMP '1969-12-31T23:59:00')",
        ] {
            let sql = format!("SELECT time, {bin} AS bin FROM t");
            let answer = |ctx: SessionContext| {
                let sql = sql.clone();
                async move {
                    match ctx.sql(&sql).await.expect("plans").collect().await {
                        Ok(batches) => pretty_format_batches(&batches).expect("prints").to_string(),
                        Err(e) => format!("error: {e}"),
                    }
                }
            };
            let expected = answer(stock.clone()).await;
            assert!(!expected.starts_with("error"), "{bin}: {expected}");
            assert_eq!(answer(ours.clone()).await, expected, "{bin}");
        }
    }
}
