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
    /// The CSV header once read: its names, or why it is unusable (then
    /// every later line is refused rather than read against a wrong header).
    csv_header: Option<std::result::Result<Vec<String>, String>>,
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
        // Straight from the text into cells: no `Value` tree, keys borrowed.
        let mut de = serde_json::Deserializer::from_str(text);
        let entries = serde::Deserializer::deserialize_map(
            &mut de,
            json::LineVisitor {
                time_column: &self.time_column,
            },
        )
        .and_then(|entries| de.end().map(|()| entries))
        .map_err(|e| reject(format!("invalid JSON: {e}")))?;
        let mut cells = Vec::with_capacity(entries.len());
        for (name, parsed) in entries {
            // Lines hold a few dozen keys at most: a scan beats hashing.
            if cells
                .iter()
                .any(|(n, _): &(std::borrow::Cow<'_, str>, Cell)| *n == name)
            {
                return Err(reject(format!("column `{name}` appears twice")));
            }
            match parsed {
                json::Parsed::Cell(Some(cell)) => cells.push((name, cell)),
                json::Parsed::Cell(None) => {}
                json::Parsed::Bad(reason) => {
                    return Err(reject(format!("column `{name}`: {reason}")))
                }
            }
        }
        self.push_cells(line, text.len(), cells)
    }

    /// Adds one CSV line. The first call takes the header.
    pub fn push_csv(&mut self, line: u64, text: &str) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        let header = match &self.csv_header {
            Some(Ok(header)) => header,
            Some(Err(why)) => return Err(reject(format!("no usable CSV header ({why})"))),
            None => {
                let header = read_csv_header(text).map_err(|why| format!("line {line}: {why}"));
                let outcome = header
                    .as_ref()
                    .map(|_| ())
                    .map_err(|why| reject(why.clone()));
                self.csv_header = Some(header);
                return outcome;
            }
        };
        let record = parse_csv_record(text).map_err(|e| reject(format!("invalid CSV: {e}")))?;
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
        matches!(self.csv_header, Some(Ok(_)))
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

    fn push_cells<K: AsRef<str>>(
        &mut self,
        line: u64,
        len_bytes: usize,
        cells: Vec<(K, Cell)>,
    ) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        // Check the whole line first, so a rejected line leaves no trace.
        let mut new_columns = 0;
        for (name, cell) in &cells {
            let name = name.as_ref();
            let found = cell.column_type();
            match self.known.get(name) {
                Some(&expected) => {
                    if expected.unify(found).is_none() {
                        let e = Error::TypeConflict {
                            table: self.table.clone(),
                            column: name.to_string(),
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
            let name = name.as_ref();
            has_time |= name == self.time_column;
            let found = cell.column_type();
            // Only a new column or a widening changes what is known: no
            // clone and insert per cell on the hot path.
            let column_type = match self.known.get_mut(name) {
                Some(expected) => {
                    let unified = expected.unify(found).expect("checked above");
                    *expected = unified;
                    unified
                }
                None => {
                    self.known.insert(name.to_string(), found);
                    found
                }
            };
            let i = match self.index.get(name) {
                Some(&i) => i,
                None => {
                    self.columns.push(Column {
                        name: name.to_string(),
                        column_type,
                        values: Values::new(column_type, rows),
                    });
                    self.index.insert(name.to_string(), self.columns.len() - 1);
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

/// Microseconds since the epoch from unix seconds (int or fractional).
fn seconds_to_us(seconds: f64) -> Result<i64, String> {
    let us = seconds * 1e6;
    if us.is_finite() && us.abs() < 9.0e18 {
        Ok(us.round() as i64)
    } else {
        Err(format!("time {seconds} is out of range"))
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

/// A CSV header's column names: valid, and each once.
fn read_csv_header(text: &str) -> std::result::Result<Vec<String>, String> {
    let names = parse_csv_record(text).map_err(|e| format!("invalid CSV header: {e}"))?;
    for (i, name) in names.iter().enumerate() {
        check_name(name).map_err(|e| format!("header: {e}"))?;
        if names[..i].contains(name) {
            return Err(format!("header: column `{name}` appears twice"));
        }
    }
    Ok(names)
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

/// Reading one JSON line straight into cells (serde visitors): keys are
/// borrowed from the line when they have no escapes, values become cells
/// without an intermediate `serde_json::Value`.
mod json {
    use std::borrow::Cow;
    use std::fmt;

    use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

    use super::{seconds_to_us, time_from_text, Cell};

    /// One value: a cell (none for null), or why it cannot be one.
    pub enum Parsed {
        Cell(Option<Cell>),
        Bad(String),
    }

    /// A key, borrowed from the input when possible.
    struct Key<'de>(Cow<'de, str>);

    impl<'de> de::Deserialize<'de> for Key<'de> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Key<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a string")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v.to_string())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                    Ok(Key(Cow::Owned(v)))
                }
            }
            d.deserialize_str(V)
        }
    }

    /// The top level: a JSON object, as (key, value) pairs in line order.
    pub struct LineVisitor<'a> {
        pub time_column: &'a str,
    }

    impl<'de> Visitor<'de> for LineVisitor<'_> {
        type Value = Vec<(Cow<'de, str>, Parsed)>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(map.size_hint().unwrap_or(16));
            while let Some(Key(name)) = map.next_key::<Key<'de>>()? {
                let time = name == self.time_column;
                let parsed = map.next_value_seed(CellSeed { time })?;
                out.push((name, parsed));
            }
            Ok(out)
        }
    }

    struct CellSeed {
        time: bool,
    }

    impl<'de> DeserializeSeed<'de> for CellSeed {
        type Value = Parsed;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Parsed, D::Error> {
            d.deserialize_any(self)
        }
    }

    fn time_kind(kind: &str) -> Parsed {
        Parsed::Bad(format!(
            "time must be unix seconds or RFC 3339 text, found {kind}"
        ))
    }

    impl<'de> Visitor<'de> for CellSeed {
        type Value = Parsed;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Parsed, E> {
            Ok(Parsed::Cell(None))
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Parsed, E> {
            Ok(if self.time {
                time_kind("a bool")
            } else {
                Parsed::Cell(Some(Cell::Bool(v)))
            })
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed, E> {
            if !self.time {
                return Ok(Parsed::Cell(Some(Cell::Int(v))));
            }
            Ok(match v.checked_mul(1_000_000) {
                Some(us) => Parsed::Cell(Some(Cell::Time(us))),
                None => Parsed::Bad(format!("time {v} is out of range")),
            })
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed, E> {
            match i64::try_from(v) {
                Ok(i) => self.visit_i64(i),
                Err(_) => self.visit_f64(v as f64),
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed, E> {
            if !self.time {
                return Ok(Parsed::Cell(Some(Cell::Float(v))));
            }
            Ok(match seconds_to_us(v) {
                Ok(us) => Parsed::Cell(Some(Cell::Time(us))),
                Err(e) => Parsed::Bad(e),
            })
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed, E> {
            if !self.time {
                return Ok(Parsed::Cell(Some(Cell::Str(v.to_string()))));
            }
            Ok(match time_from_text(v) {
                Ok(cell) => Parsed::Cell(Some(cell)),
                Err(e) => Parsed::Bad(e),
            })
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Parsed, E> {
            if self.time {
                return self.visit_str(&v);
            }
            Ok(Parsed::Cell(Some(Cell::Str(v))))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed, A::Error> {
            // Read to the end even when refusing, so the line parses on.
            let mut tags = Vec::new();
            let mut bad: Option<&'static str> = None;
            while let Some(item) = seq.next_element::<TagItem>()? {
                match item {
                    TagItem::Str(s) => tags.push(s),
                    TagItem::Other(kind) => {
                        bad.get_or_insert(kind);
                    }
                }
            }
            Ok(if self.time {
                time_kind("an array")
            } else if let Some(kind) = bad {
                Parsed::Bad(format!(
                    "arrays must hold only strings (tags), found {kind}"
                ))
            } else {
                Parsed::Cell(Some(Cell::Tags(tags)))
            })
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed, A::Error> {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            Ok(if self.time {
                time_kind("an object")
            } else {
                Parsed::Bad(
                    "nested objects are not supported; flatten them into top-level columns".into(),
                )
            })
        }
    }

    /// An element of a tags array: a string, or what else it was.
    enum TagItem {
        Str(String),
        Other(&'static str),
    }

    impl<'de> de::Deserialize<'de> for TagItem {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = TagItem;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<TagItem, E> {
                    Ok(TagItem::Str(v.to_string()))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<TagItem, E> {
                    Ok(TagItem::Str(v))
                }
                fn visit_unit<E: de::Error>(self) -> Result<TagItem, E> {
                    Ok(TagItem::Other("null"))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<TagItem, E> {
                    Ok(TagItem::Other("a bool"))
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<TagItem, E> {
                    Ok(TagItem::Other("a number"))
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<TagItem, E> {
                    Ok(TagItem::Other("a number"))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<TagItem, E> {
                    Ok(TagItem::Other("a number"))
                }
                fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TagItem, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(TagItem::Other("an array"))
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TagItem, A::Error> {
                    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                    Ok(TagItem::Other("an object"))
                }
            }
            d.deserialize_any(V)
        }
    }
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
    fn duplicate_keys_escaped_keys_and_huge_numbers_are_handled() {
        let mut b = builder();
        let err = b.push_json(1, r#"{"x": 1, "x": 2}"#).unwrap_err();
        assert!(err.reason.contains("appears twice"), "{err}");
        b.push_json(2, r#"{"caf\u00e9": "ok", "n": 18446744073709551615}"#)
            .unwrap();
        let batch = b.finish().unwrap().unwrap().batch;
        assert!(batch.column_by_name("café").is_some());
        assert_eq!(
            batch.column_by_name("n").unwrap().data_type(),
            &DataType::Float64
        );
        assert!(builder()
            .push_json(3, r#"{"a": 1} trailing"#)
            .unwrap_err()
            .reason
            .contains("invalid JSON"));
    }

    #[test]
    fn bad_csv_header_refuses_every_line_instead_of_reading_them_wrongly() {
        let mut b = builder();
        assert!(b
            .push_csv(1, "a,a,b")
            .unwrap_err()
            .reason
            .contains("`a` appears twice"));
        let err = b.push_csv(2, "1,2,3").unwrap_err();
        assert!(
            err.reason.contains("no usable CSV header (line 1:"),
            "{err}"
        );
        assert!(b.finish().unwrap().is_none());
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
