//! Turning input lines (JSON objects or CSV records) into Arrow batches.
//!
//! ```text
//!  stdin ──LineReader──> line (bounded) ──BatchBuilder::push_*──> typed column buffers
//!                         │ oversized                │ bad line: Rejection{line, reason}
//!                         v                          v
//!                     Rejection               finish() ──> RecordBatch + line numbers
//! ```
//!
//! A line is checked whole before any of its values is kept, so a rejected
//! line leaves no trace in the batch. Types come from the table's known
//! schema (what the cluster already holds, and what this ingest added); a
//! value that does not fit rejects its line, naming the column. An int64
//! column that meets a float widens to float64, in this batch and at the
//! leaves, whose older blocks are read as float64 from then on.

use std::collections::HashMap;
use std::io::BufRead;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::limits::{BATCH_BYTES_MAX, BATCH_ROWS_MAX, LINE_BYTES_MAX, TABLE_COLUMNS_MAX};
use crate::schema::{check_name, ColumnType};

/// Input formats `scubactl ingest` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    /// One JSON object per line.
    Jsonl,
    /// A header line of column names, then one record per line.
    Csv,
}

/// Why one input line was not ingested.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    /// 1-based line number in the input.
    pub line: u64,
    pub reason: String,
}

impl std::fmt::Display for Rejection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "line {}: {}", self.line, self.reason)
    }
}

/// One line from [`LineReader`].
#[derive(Debug)]
pub enum Line<'a> {
    Text {
        number: u64,
        text: &'a str,
    },
    /// Longer than [`LINE_BYTES_MAX`]; skipped without being held whole.
    Oversized {
        number: u64,
        len_bytes: usize,
    },
    /// Not UTF-8.
    NotUtf8 {
        number: u64,
    },
}

/// Reads lines with a bound on their length: a longer line is skipped and
/// reported, never buffered whole.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    number: u64,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        LineReader {
            inner,
            buf: Vec::with_capacity(4096),
            number: 0,
        }
    }

    /// The next line, without its line ending; `None` at the end of input.
    pub fn next_line(&mut self) -> std::io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let mut len_bytes = 0usize;
        let mut oversized = false;
        loop {
            let available = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if available.is_empty() {
                if len_bytes == 0 {
                    return Ok(None);
                }
                break;
            }
            let (chunk, done) = match memchr(b'\n', available) {
                Some(i) => (&available[..i], Some(i + 1)),
                None => (available, None),
            };
            len_bytes += chunk.len();
            if !oversized {
                if self.buf.len() + chunk.len() > LINE_BYTES_MAX {
                    oversized = true;
                    self.buf.clear();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            let consumed = done.unwrap_or(available.len());
            self.inner.consume(consumed);
            if done.is_some() {
                len_bytes += 1;
                break;
            }
        }
        self.number += 1;
        let number = self.number;
        if oversized {
            return Ok(Some(Line::Oversized { number, len_bytes }));
        }
        if self.buf.last() == Some(&b'\r') {
            self.buf.pop();
        }
        match std::str::from_utf8(&self.buf) {
            Ok(text) => Ok(Some(Line::Text { number, text })),
            Err(_) => Ok(Some(Line::NotUtf8 { number })),
        }
    }
}

fn memchr(needle: u8, haystack: &[u8]) -> Option<usize> {
    haystack.iter().position(|&b| b == needle)
}

/// A value of one cell, checked but not yet stored.
#[derive(Debug, Clone)]
enum Cell {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
    Tags(Vec<String>),
    Time(i64),
}

impl Cell {
    fn column_type(&self) -> ColumnType {
        match self {
            Cell::Int(_) => ColumnType::Int64,
            Cell::Float(_) => ColumnType::Float64,
            Cell::Bool(_) => ColumnType::Bool,
            Cell::Str(_) => ColumnType::Utf8,
            Cell::Tags(_) => ColumnType::Tags,
            Cell::Time(_) => ColumnType::Timestamp,
        }
    }
}

#[derive(Debug)]
enum Values {
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Str(Vec<Option<String>>),
    Tags(Vec<Option<Vec<String>>>),
    Time(Vec<Option<i64>>),
}

impl Values {
    fn new(t: ColumnType, nulls: usize) -> Values {
        match t {
            ColumnType::Int64 => Values::Int(vec![None; nulls]),
            ColumnType::Float64 => Values::Float(vec![None; nulls]),
            ColumnType::Bool => Values::Bool(vec![None; nulls]),
            ColumnType::Utf8 => Values::Str(vec![None; nulls]),
            ColumnType::Tags => Values::Tags(vec![None; nulls]),
            ColumnType::Timestamp => Values::Time(vec![None; nulls]),
        }
    }

    fn len(&self) -> usize {
        match self {
            Values::Int(v) => v.len(),
            Values::Float(v) => v.len(),
            Values::Bool(v) => v.len(),
            Values::Str(v) => v.len(),
            Values::Tags(v) => v.len(),
            Values::Time(v) => v.len(),
        }
    }

    fn push_null(&mut self) {
        match self {
            Values::Int(v) => v.push(None),
            Values::Float(v) => v.push(None),
            Values::Bool(v) => v.push(None),
            Values::Str(v) => v.push(None),
            Values::Tags(v) => v.push(None),
            Values::Time(v) => v.push(None),
        }
    }

    /// Widens an int column to float in place.
    fn widen_to_float(&mut self) {
        if let Values::Int(v) = self {
            let floats = v.iter().map(|x| x.map(|i| i as f64)).collect();
            *self = Values::Float(floats);
        }
    }

    /// Stores a cell already checked to fit (ints into a float column allowed).
    fn push(&mut self, cell: Cell) {
        match (self, cell) {
            (Values::Int(v), Cell::Int(x)) => v.push(Some(x)),
            (Values::Float(v), Cell::Float(x)) => v.push(Some(x)),
            (Values::Float(v), Cell::Int(x)) => v.push(Some(x as f64)),
            (Values::Bool(v), Cell::Bool(x)) => v.push(Some(x)),
            (Values::Str(v), Cell::Str(x)) => v.push(Some(x)),
            (Values::Tags(v), Cell::Tags(x)) => v.push(Some(x)),
            (Values::Time(v), Cell::Time(x)) => v.push(Some(x)),
            (values, cell) => unreachable!("cell {cell:?} was checked to fit {values:?}"),
        }
    }

    fn finish(self) -> ArrayRef {
        match self {
            Values::Int(v) => {
                let mut b = Int64Builder::with_capacity(v.len());
                b.extend(v);
                Arc::new(b.finish())
            }
            Values::Float(v) => {
                let mut b = Float64Builder::with_capacity(v.len());
                b.extend(v);
                Arc::new(b.finish())
            }
            Values::Bool(v) => {
                let mut b = BooleanBuilder::with_capacity(v.len());
                b.extend(v);
                Arc::new(b.finish())
            }
            Values::Str(v) => {
                let mut b = StringBuilder::with_capacity(v.len(), v.len() * 8);
                for s in v {
                    b.append_option(s);
                }
                Arc::new(b.finish())
            }
            Values::Tags(v) => {
                let mut b = ListBuilder::new(StringBuilder::new());
                for tags in v {
                    match tags {
                        Some(tags) => {
                            for t in tags {
                                b.values().append_value(t);
                            }
                            b.append(true);
                        }
                        None => b.append(false),
                    }
                }
                Arc::new(b.finish())
            }
            Values::Time(v) => {
                let mut b = TimestampMicrosecondBuilder::with_capacity(v.len());
                b.extend(v);
                Arc::new(b.finish())
            }
        }
    }
}

#[derive(Debug)]
struct Column {
    name: String,
    column_type: ColumnType,
    values: Values,
}

/// A decoded batch, ready to send to a leaf.
#[derive(Debug, Clone)]
pub struct DecodedBatch {
    pub batch: RecordBatch,
    /// Input line number of each row.
    pub lines: Vec<u64>,
}

/// Accumulates checked lines into typed columns and cuts them into batches.
///
/// The builder knows the table's column types (seeded from the cluster with
/// [`BatchBuilder::with_known_types`]) so that it rejects a conflicting line
/// here, by number, instead of a whole batch at the leaf.
pub struct BatchBuilder {
    table: String,
    time_column: String,
    ingest_time_us: i64,
    known: HashMap<String, ColumnType>,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    lines: Vec<u64>,
    bytes: usize,
    csv_header: Option<Vec<String>>,
}

impl BatchBuilder {
    /// A builder for `table`; rows without a time get `ingest_time_us`.
    pub fn new(table: &str, time_column: &str, ingest_time_us: i64) -> Self {
        let mut known = HashMap::new();
        known.insert(time_column.to_string(), ColumnType::Timestamp);
        BatchBuilder {
            table: table.to_string(),
            time_column: time_column.to_string(),
            ingest_time_us,
            known,
            columns: Vec::new(),
            index: HashMap::new(),
            lines: Vec::new(),
            bytes: 0,
            csv_header: None,
        }
    }

    /// Seeds the types the table already has in the cluster.
    pub fn with_known_types(mut self, schema: &Schema) -> Self {
        for f in schema.fields() {
            if let Some(t) = ColumnType::from_arrow(f.data_type()) {
                if f.name() != &self.time_column {
                    self.known.insert(f.name().clone(), t);
                }
            }
        }
        self
    }

    /// Rows held now.
    pub fn rows(&self) -> usize {
        self.lines.len()
    }

    /// True when the batch should be cut before the next line.
    pub fn is_full(&self) -> bool {
        self.rows() >= BATCH_ROWS_MAX || self.bytes >= BATCH_BYTES_MAX / 2
    }

    /// Adds one JSON line; on error the batch is unchanged.
    pub fn push_json(&mut self, line: u64, text: &str) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        let value: Value =
            serde_json::from_str(text).map_err(|e| reject(format!("invalid JSON: {e}")))?;
        let Value::Object(map) = value else {
            return Err(reject("expected a JSON object".to_string()));
        };
        let mut cells = Vec::with_capacity(map.len());
        for (name, value) in map {
            let cell = if name == self.time_column {
                time_from_json(&value)
                    .map_err(|reason| reject(format!("column `{name}`: {reason}")))?
            } else {
                cell_from_json(value)
                    .map_err(|reason| reject(format!("column `{name}`: {reason}")))?
            };
            if let Some(cell) = cell {
                cells.push((name, cell));
            }
        }
        self.push_cells(line, text.len(), cells)
    }

    /// Adds one CSV line. The first call takes the header.
    pub fn push_csv(&mut self, line: u64, text: &str) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        let record = parse_csv_record(text).map_err(|e| reject(format!("invalid CSV: {e}")))?;
        let Some(header) = &self.csv_header else {
            for name in &record {
                check_name(name).map_err(|e| reject(format!("header: {e}")))?;
            }
            self.csv_header = Some(record);
            return Ok(());
        };
        if record.len() != header.len() {
            return Err(reject(format!(
                "expected {} fields as in the header, found {}",
                header.len(),
                record.len()
            )));
        }
        let mut cells = Vec::with_capacity(record.len());
        for (name, raw) in header.iter().zip(record) {
            if raw.is_empty() {
                continue;
            }
            let cell = if name == &self.time_column {
                time_from_text(&raw)
                    .map_err(|reason| reject(format!("column `{name}`: {reason}")))?
            } else {
                self.cell_from_csv(name, raw)
            };
            cells.push((name.clone(), cell));
        }
        self.push_cells(line, text.len(), cells)
    }

    /// True once a CSV header was read.
    pub fn has_csv_header(&self) -> bool {
        self.csv_header.is_some()
    }

    fn cell_from_csv(&self, name: &str, raw: String) -> Cell {
        // Text that the known type accepts is read as that type; otherwise
        // the value's own shape decides, and a conflict is caught later.
        match self.known.get(name) {
            Some(ColumnType::Utf8) => return Cell::Str(raw),
            Some(ColumnType::Float64) => {
                if let Ok(x) = raw.parse::<f64>() {
                    return Cell::Float(x);
                }
            }
            _ => {}
        }
        if let Ok(x) = raw.parse::<i64>() {
            Cell::Int(x)
        } else if let Ok(x) = raw.parse::<f64>() {
            Cell::Float(x)
        } else if raw == "true" || raw == "false" {
            Cell::Bool(raw == "true")
        } else {
            Cell::Str(raw)
        }
    }

    fn push_cells(
        &mut self,
        line: u64,
        len_bytes: usize,
        cells: Vec<(String, Cell)>,
    ) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        // Check the whole line first, so a rejected line leaves no trace.
        let mut new_columns = 0;
        for (name, cell) in &cells {
            let found = cell.column_type();
            match self.known.get(name) {
                Some(&expected) => {
                    if expected.unify(found).is_none() {
                        let e = Error::TypeConflict {
                            table: self.table.clone(),
                            column: name.clone(),
                            expected: expected.name().to_string(),
                            found: found.name().to_string(),
                        };
                        return Err(reject(e.to_string()));
                    }
                }
                None => {
                    check_name(name).map_err(|e| reject(e.to_string()))?;
                    new_columns += 1;
                }
            }
        }
        if self.known.len() + new_columns > TABLE_COLUMNS_MAX {
            return Err(reject(
                Error::TooManyColumns {
                    table: self.table.clone(),
                    max: TABLE_COLUMNS_MAX,
                }
                .to_string(),
            ));
        }

        let rows = self.rows();
        let mut has_time = false;
        for (name, cell) in cells {
            has_time |= name == self.time_column;
            let found = cell.column_type();
            // Only a new column or a widening changes what is known: no
            // clone and insert per cell on the hot path.
            let column_type = match self.known.get_mut(&name) {
                Some(expected) => {
                    let unified = expected.unify(found).expect("checked above");
                    *expected = unified;
                    unified
                }
                None => {
                    self.known.insert(name.clone(), found);
                    found
                }
            };
            let i = match self.index.get(&name) {
                Some(&i) => i,
                None => {
                    self.columns.push(Column {
                        name: name.clone(),
                        column_type,
                        values: Values::new(column_type, rows),
                    });
                    self.index.insert(name, self.columns.len() - 1);
                    self.columns.len() - 1
                }
            };
            let column = &mut self.columns[i];
            if column.column_type != column_type {
                column.values.widen_to_float();
                column.column_type = column_type;
            }
            column.values.push(cell);
        }
        if !has_time {
            let time = self.time_column.clone();
            let now = self.ingest_time_us;
            let i = match self.index.get(&time) {
                Some(&i) => i,
                None => {
                    self.columns.push(Column {
                        name: time.clone(),
                        column_type: ColumnType::Timestamp,
                        values: Values::new(ColumnType::Timestamp, rows),
                    });
                    self.index.insert(time, self.columns.len() - 1);
                    self.columns.len() - 1
                }
            };
            self.columns[i].values.push(Cell::Time(now));
        }
        for column in &mut self.columns {
            if column.values.len() == rows {
                column.values.push_null();
            }
        }
        self.lines.push(line);
        self.bytes += len_bytes;
        Ok(())
    }

    /// Cuts the rows held so far into a batch (none when empty). Column types
    /// learnt stay known for the next batch.
    pub fn finish(&mut self) -> Result<Option<DecodedBatch>> {
        if self.lines.is_empty() {
            return Ok(None);
        }
        let columns = std::mem::take(&mut self.columns);
        self.index.clear();
        self.bytes = 0;
        let lines = std::mem::take(&mut self.lines);
        let mut fields = Vec::with_capacity(columns.len());
        let mut arrays = Vec::with_capacity(columns.len());
        for column in columns {
            // A column widened after this batch started is widened here too.
            let mut values = column.values;
            let final_type = self
                .known
                .get(&column.name)
                .copied()
                .unwrap_or(column.column_type);
            if final_type == ColumnType::Float64 {
                values.widen_to_float();
            }
            fields.push(Field::new(&column.name, final_type.to_arrow(), true));
            arrays.push(values.finish());
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        Ok(Some(DecodedBatch { batch, lines }))
    }
}

fn cell_from_json(value: Value) -> Result<Option<Cell>, String> {
    Ok(Some(match value {
        Value::Null => return Ok(None),
        Value::Bool(b) => Cell::Bool(b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Cell::Int(i),
            None => Cell::Float(
                n.as_f64()
                    .ok_or_else(|| format!("number {n} is out of range"))?,
            ),
        },
        Value::String(s) => Cell::Str(s),
        Value::Array(items) => {
            let mut tags = Vec::with_capacity(items.len());
            for item in items {
                match item {
                    Value::String(s) => tags.push(s),
                    other => {
                        return Err(format!(
                            "arrays must hold only strings (tags), found {}",
                            json_kind(&other)
                        ))
                    }
                }
            }
            Cell::Tags(tags)
        }
        Value::Object(_) => {
            return Err(
                "nested objects are not supported; flatten them into top-level columns".to_string(),
            )
        }
    }))
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a bool",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Microseconds since the epoch from unix seconds (int or fractional).
fn seconds_to_us(seconds: f64) -> Result<i64, String> {
    let us = seconds * 1e6;
    if us.is_finite() && us.abs() < 9.0e18 {
        Ok(us.round() as i64)
    } else {
        Err(format!("time {seconds} is out of range"))
    }
}

fn time_from_json(value: &Value) -> Result<Option<Cell>, String> {
    match value {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                i.checked_mul(1_000_000)
                    .map(|us| Some(Cell::Time(us)))
                    .ok_or_else(|| format!("time {i} is out of range"))
            } else {
                seconds_to_us(n.as_f64().unwrap_or(f64::NAN)).map(|us| Some(Cell::Time(us)))
            }
        }
        Value::String(s) => time_from_text(s).map(Some),
        other => Err(format!(
            "time must be unix seconds or RFC 3339 text, found {}",
            json_kind(other)
        )),
    }
}

fn time_from_text(text: &str) -> Result<Cell, String> {
    if let Ok(i) = text.parse::<i64>() {
        return i
            .checked_mul(1_000_000)
            .map(Cell::Time)
            .ok_or_else(|| format!("time {i} is out of range"));
    }
    if let Ok(x) = text.parse::<f64>() {
        return seconds_to_us(x).map(Cell::Time);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| Cell::Time(t.timestamp_micros()))
        .map_err(|_| {
            format!(
                "`{}` is neither unix seconds nor RFC 3339 time",
                text.chars().take(64).collect::<String>()
            )
        })
}

fn parse_csv_record(text: &str) -> Result<Vec<String>, csv::Error> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut record = csv::StringRecord::new();
    reader.read_record(&mut record)?;
    Ok(record.iter().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, Float64Array, Int64Array, TimestampMicrosecondArray};
    use datafusion::arrow::datatypes::DataType;

    fn builder() -> BatchBuilder {
        BatchBuilder::new("events", "time", 42_000_000)
    }

    #[test]
    fn json_lines_become_typed_columns_with_nulls_for_missing_fields() {
        let mut b = builder();
        b.push_json(1, r#"{"time": 10, "service": "api", "latency_ms": 12}"#)
            .unwrap();
        b.push_json(
            2,
            r#"{"time": "1970-01-01T00:00:11Z", "tags": ["a","b"], "ok": true}"#,
        )
        .unwrap();
        let out = b.finish().unwrap().unwrap();
        assert_eq!(out.lines, vec![1, 2]);
        let batch = out.batch;
        assert_eq!(batch.num_rows(), 2);
        let time = batch
            .column_by_name("time")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(time.value(0), 10_000_000);
        assert_eq!(time.value(1), 11_000_000);
        assert!(batch.column_by_name("service").unwrap().is_null(1));
        assert_eq!(
            batch.column_by_name("tags").unwrap().data_type(),
            &crate::schema::tags_type()
        );
        assert_eq!(
            batch.column_by_name("ok").unwrap().data_type(),
            &DataType::Boolean
        );
    }

    #[test]
    fn row_without_time_gets_ingest_time() {
        let mut b = builder();
        b.push_json(1, r#"{"x": 1}"#).unwrap();
        let batch = b.finish().unwrap().unwrap().batch;
        let time = batch
            .column_by_name("time")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert_eq!(time.value(0), 42_000_000);
    }

    #[test]
    fn int_column_widens_to_float_when_a_float_arrives() {
        let mut b = builder();
        b.push_json(1, r#"{"x": 1}"#).unwrap();
        b.push_json(2, r#"{"x": 2.5}"#).unwrap();
        b.push_json(3, r#"{"x": 3}"#).unwrap();
        let batch = b.finish().unwrap().unwrap().batch;
        let x = batch
            .column_by_name("x")
            .unwrap()
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap();
        assert_eq!(x.values().to_vec(), vec![1.0, 2.5, 3.0]);
    }

    #[test]
    fn conflicting_type_rejects_only_that_line_naming_table_and_column() {
        let mut b = builder();
        b.push_json(1, r#"{"x": 1}"#).unwrap();
        let err = b.push_json(2, r#"{"x": "one", "y": 5}"#).unwrap_err();
        assert_eq!(err.line, 2);
        assert!(
            err.reason.contains("column `x`") && err.reason.contains("table `events`"),
            "{err}"
        );
        b.push_json(3, r#"{"x": 3}"#).unwrap();
        let batch = b.finish().unwrap().unwrap().batch;
        assert_eq!(batch.num_rows(), 2);
        assert!(
            batch.column_by_name("y").is_none(),
            "a rejected line leaves no column behind"
        );
        let x = batch
            .column_by_name("x")
            .unwrap()
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(x.values().to_vec(), vec![1, 3]);
    }

    #[test]
    fn known_cluster_types_reject_conflicts_in_later_ingests() {
        let known = Schema::new(vec![Field::new("x", DataType::Utf8, true)]);
        let mut b = builder().with_known_types(&known);
        assert!(b
            .push_json(7, r#"{"x": 5}"#)
            .unwrap_err()
            .reason
            .contains("column `x`"));
    }

    #[test]
    fn malformed_json_and_bad_time_are_rejected_with_reasons() {
        let mut b = builder();
        assert!(b
            .push_json(1, "{not json")
            .unwrap_err()
            .reason
            .contains("invalid JSON"));
        assert!(b
            .push_json(2, "[1,2]")
            .unwrap_err()
            .reason
            .contains("JSON object"));
        assert!(b
            .push_json(3, r#"{"time": "yesterday"}"#)
            .unwrap_err()
            .reason
            .contains("RFC 3339"));
        assert!(b
            .push_json(4, r#"{"a": {"b": 1}}"#)
            .unwrap_err()
            .reason
            .contains("nested"));
        assert!(b
            .push_json(5, r#"{"a": [1]}"#)
            .unwrap_err()
            .reason
            .contains("strings"));
        assert_eq!(b.rows(), 0);
    }

    #[test]
    fn csv_reads_header_then_infers_types() {
        let mut b = builder();
        b.push_csv(1, "time,service,latency_ms,score").unwrap();
        b.push_csv(2, "10,api,12,0.5").unwrap();
        b.push_csv(3, "2024-01-01T00:00:00Z,\"db, primary\",,1")
            .unwrap();
        assert!(b
            .push_csv(4, "1,2")
            .unwrap_err()
            .reason
            .contains("expected 4 fields"));
        let batch = b.finish().unwrap().unwrap().batch;
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(
            batch.column_by_name("latency_ms").unwrap().data_type(),
            &DataType::Int64
        );
        assert_eq!(
            batch.column_by_name("score").unwrap().data_type(),
            &DataType::Float64
        );
        assert!(batch.column_by_name("latency_ms").unwrap().is_null(1));
    }

    #[test]
    fn line_reader_skips_oversized_lines_and_counts_them() {
        let long = "x".repeat(LINE_BYTES_MAX + 10);
        let input = format!("a\n{long}\nb\r\nc");
        let mut r = LineReader::new(input.as_bytes());
        assert!(matches!(
            r.next_line().unwrap(),
            Some(Line::Text {
                number: 1,
                text: "a"
            })
        ));
        assert!(matches!(
            r.next_line().unwrap(),
            Some(Line::Oversized { number: 2, .. })
        ));
        assert!(matches!(
            r.next_line().unwrap(),
            Some(Line::Text {
                number: 3,
                text: "b"
            })
        ));
        assert!(matches!(
            r.next_line().unwrap(),
            Some(Line::Text {
                number: 4,
                text: "c"
            })
        ));
        assert!(r.next_line().unwrap().is_none());
    }
}
