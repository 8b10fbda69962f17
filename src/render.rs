//! Rendering answers as JSON values: the shape of `scubactl query --format
//! json`, shared with the tests' oracle so both sides print cells alike.

use datafusion::arrow::array::{Array, ArrayRef, AsArray};
use datafusion::arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int32Type, Int64Type, TimeUnit, UInt64Type,
};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use serde_json::{json, Value};

/// Every row of `batches` as a JSON array of cells.
pub fn rows(batches: &[RecordBatch]) -> Vec<Value> {
    let mut out = Vec::new();
    for b in batches {
        for row in 0..b.num_rows() {
            out.push(Value::Array(
                b.columns().iter().map(|c| cell(c, row)).collect(),
            ));
        }
    }
    out
}

/// One cell as JSON: numbers as numbers, strings as strings, lists as
/// arrays, NULL as null, and anything else as its display text.
pub fn cell(column: &ArrayRef, row: usize) -> Value {
    if column.is_null(row) {
        return Value::Null;
    }
    match column.data_type() {
        DataType::Int64 => json!(column.as_primitive::<Int64Type>().value(row)),
        DataType::Int32 => json!(column.as_primitive::<Int32Type>().value(row)),
        DataType::UInt64 => json!(column.as_primitive::<UInt64Type>().value(row)),
        DataType::Float64 => float(column.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => float(column.as_primitive::<Float32Type>().value(row) as f64),
        DataType::Boolean => json!(column.as_boolean().value(row)),
        DataType::Utf8 => json!(column.as_string::<i32>().value(row)),
        DataType::LargeUtf8 => json!(column.as_string::<i64>().value(row)),
        DataType::Utf8View => json!(column.as_string_view().value(row)),
        DataType::List(_) => {
            let list = column.as_list::<i32>().value(row);
            Value::Array((0..list.len()).map(|i| cell(&list, i)).collect())
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => {
            let opts = FormatOptions::default();
            match ArrayFormatter::try_new(column.as_ref(), &opts) {
                Ok(f) => json!(f.value(row).to_string()),
                Err(_) => Value::Null,
            }
        }
        _ => {
            let opts = FormatOptions::default();
            match ArrayFormatter::try_new(column.as_ref(), &opts) {
                Ok(f) => json!(f.value(row).to_string()),
                Err(_) => Value::Null,
            }
        }
    }
}

fn float(x: f64) -> Value {
    serde_json::Number::from_f64(x).map_or_else(|| json!(x.to_string()), Value::Number)
}
