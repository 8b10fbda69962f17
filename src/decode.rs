//! Turning input lines (JSON objects or CSV records) into Arrow batches.
//!
//! ```text
//!  stdin ──LineReader──> line (bounded) ──BatchBuilder::push_*──> Arrow builders, one per column
//!                         │ oversized                │ bad line: Rejection{line, reason}
//!                         v                          v
//!                     Rejection               finish() ──> RecordBatch + line numbers
//! ```
//!
//! JSON lines of the common shapes are read by a small hand-written reader
//! (`json::fast`) that borrows keys and text from the line; anything else
//! (escapes, nesting, syntax errors) goes through serde_json, which also
//! words the errors. Several builders (one per decoding thread) can share
//! one [`KnownTypes`], kept in input order by a [`ChunkOrder`].
//!
//! A line is checked whole before any of its values is kept, so a rejected
//! line leaves no trace in the batch. Types come from the table's known
//! schema (what the cluster already holds, and what this ingest added); a
//! value that does not fit rejects its line, naming the column. An int64
//! column that meets a float widens to float64, in this batch and at the
//! leaves, whose older blocks are read as float64 from then on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    ArrayBuilder, ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder,
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
            let (chunk, done) = match memchr::memchr(b'\n', available) {
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

/// A value of one cell, checked but not yet stored; text borrows from the
/// line where it has no escapes.
#[derive(Debug, Clone, PartialEq)]
enum Cell<'a> {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Cow<'a, str>),
    Tags(Vec<Cow<'a, str>>),
    Time(i64),
}

impl Cell<'_> {
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

/// One column's values in the batch being built, straight in Arrow builders.
#[derive(Debug)]
enum Values {
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Tags(ListBuilder<StringBuilder>),
    Time(TimestampMicrosecondBuilder),
}

impl Values {
    fn new(t: ColumnType) -> Values {
        match t {
            ColumnType::Int64 => Values::Int(Int64Builder::new()),
            ColumnType::Float64 => Values::Float(Float64Builder::new()),
            ColumnType::Bool => Values::Bool(BooleanBuilder::new()),
            ColumnType::Utf8 => Values::Str(StringBuilder::new()),
            ColumnType::Tags => Values::Tags(ListBuilder::new(StringBuilder::new())),
            ColumnType::Timestamp => Values::Time(TimestampMicrosecondBuilder::new()),
        }
    }

    fn len(&self) -> usize {
        match self {
            Values::Int(b) => b.len(),
            Values::Float(b) => b.len(),
            Values::Bool(b) => b.len(),
            Values::Str(b) => b.len(),
            Values::Tags(b) => b.len(),
            Values::Time(b) => b.len(),
        }
    }

    fn append_nulls(&mut self, n: usize) {
        match self {
            Values::Int(b) => b.append_nulls(n),
            Values::Float(b) => b.append_nulls(n),
            Values::Bool(b) => b.append_nulls(n),
            Values::Str(b) => b.append_nulls(n),
            Values::Tags(b) => b.append_nulls(n),
            Values::Time(b) => b.append_nulls(n),
        }
    }

    /// Widens an int column to float in place.
    fn widen_to_float(&mut self) {
        if let Values::Int(b) = self {
            let ints = b.finish();
            let mut floats = Float64Builder::with_capacity(ints.len());
            floats.extend(ints.iter().map(|x| x.map(|i| i as f64)));
            *self = Values::Float(floats);
        }
    }

    /// Stores a cell already checked to fit (ints into a float column allowed).
    fn push(&mut self, cell: Cell<'_>) {
        match (self, cell) {
            (Values::Int(b), Cell::Int(x)) => b.append_value(x),
            (Values::Float(b), Cell::Float(x)) => b.append_value(x),
            (Values::Float(b), Cell::Int(x)) => b.append_value(x as f64),
            (Values::Bool(b), Cell::Bool(x)) => b.append_value(x),
            (Values::Str(b), Cell::Str(x)) => b.append_value(x),
            (Values::Tags(b), Cell::Tags(tags)) => {
                for t in tags {
                    b.values().append_value(t);
                }
                b.append(true);
            }
            (Values::Time(b), Cell::Time(x)) => b.append_value(x),
            (values, cell) => unreachable!("cell {cell:?} was checked to fit {values:?}"),
        }
    }

    /// The values so far as an array; the builder starts over, empty.
    fn finish(&mut self) -> ArrayRef {
        match self {
            Values::Int(b) => Arc::new(b.finish()),
            Values::Float(b) => Arc::new(b.finish()),
            Values::Bool(b) => Arc::new(b.finish()),
            Values::Str(b) => Arc::new(b.finish()),
            Values::Tags(b) => Arc::new(b.finish()),
            Values::Time(b) => Arc::new(b.finish()),
        }
    }
}

/// A column this builder has stored values in; kept across batches, so a
/// line's keys find their columns by position (see `hint`).
#[derive(Debug)]
struct Column {
    name: String,
    column_type: ColumnType,
    values: Values,
    /// Values (not nulls) in the batch being built: a column without any is
    /// left out of it.
    non_null: usize,
}

impl Column {
    fn pad_to(&mut self, rows: usize) {
        let len = self.values.len();
        if len < rows {
            self.values.append_nulls(rows - len);
        }
    }
}

/// The column types of one table as an ingest knows them: seeded from the
/// cluster and grown by every accepted line. Several builders (one per
/// decoding thread) share one, so a type conflict rejects exactly the line
/// that brings it, whichever thread reads it.
pub type KnownTypes = Arc<Mutex<HashMap<String, ColumnType>>>;

/// Keeps several builders' use of their shared [`KnownTypes`] in input
/// order. Input is cut into numbered chunks, each read whole by one builder;
/// a builder about to consult the known types (a column new to it, or a
/// value its column's type does not take) first waits until every earlier
/// chunk is finished. So the line that first brings a type is the earliest
/// in the input, and a conflict rejects exactly the lines a single reader
/// would reject. Builders wait rarely: once they know a table's columns,
/// most lines need nothing shared.
#[derive(Debug, Default)]
pub struct ChunkOrder {
    state: Mutex<ChunkOrderState>,
    changed: std::sync::Condvar,
}

#[derive(Debug, Default)]
struct ChunkOrderState {
    /// A builder stopped before its chunks (the ingest is ending): nobody
    /// waits any more.
    abandoned: bool,
    /// Every chunk below this one is finished.
    done_below: u64,
    /// Finished chunks above `done_below`.
    finished: std::collections::BTreeSet<u64>,
}

impl ChunkOrder {
    /// Records that chunk `k` is finished.
    pub fn finished(&self, k: u64) {
        let mut state = self.state.lock().expect("chunk order poisoned");
        state.finished.insert(k);
        while state.finished.first() == Some(&state.done_below) {
            state.finished.pop_first();
            state.done_below += 1;
        }
        self.changed.notify_all();
    }

    /// Releases every waiter for good: a builder stopped without finishing
    /// its chunks (its results had nowhere to go, or it panicked), so the
    /// chunks it held will never be finished and their results are dropped.
    pub fn abandon(&self) {
        self.state.lock().expect("chunk order poisoned").abandoned = true;
        self.changed.notify_all();
    }

    /// Waits until every chunk before `k` is finished (or the order was
    /// abandoned).
    fn wait_before(&self, k: u64) {
        let mut state = self.state.lock().expect("chunk order poisoned");
        while state.done_below < k && !state.abandoned {
            state = self.changed.wait(state).expect("chunk order poisoned");
        }
    }
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
    known: KnownTypes,
    columns: Vec<Column>,
    index: HashMap<String, usize>,
    /// The column of each key position of the last line: lines of one
    /// source mostly list their keys in the same order, so a name compare
    /// finds the column without hashing.
    hint: Vec<usize>,
    /// The column of each of the line's cells (reused from line to line).
    slots: Vec<Option<usize>>,
    lines: Vec<u64>,
    bytes: usize,
    /// The CSV header once read: its names, or why it is unusable (then
    /// every later line is refused rather than read against a wrong header).
    csv_header: Option<std::result::Result<Vec<String>, String>>,
    /// The chunk being read and the order it keeps, when builders share.
    chunk: Option<(Arc<ChunkOrder>, u64)>,
}

/// Column index of the time column (created first).
const TIME_INDEX: usize = 0;

impl BatchBuilder {
    /// A builder for `table`; rows without a time get `ingest_time_us`.
    pub fn new(table: &str, time_column: &str, ingest_time_us: i64) -> Self {
        let mut known = HashMap::new();
        known.insert(time_column.to_string(), ColumnType::Timestamp);
        BatchBuilder {
            table: table.to_string(),
            time_column: time_column.to_string(),
            ingest_time_us,
            known: Arc::new(Mutex::new(known)),
            columns: vec![Column {
                name: time_column.to_string(),
                column_type: ColumnType::Timestamp,
                values: Values::new(ColumnType::Timestamp),
                non_null: 0,
            }],
            index: HashMap::from([(time_column.to_string(), TIME_INDEX)]),
            hint: Vec::new(),
            slots: Vec::new(),
            lines: Vec::new(),
            bytes: 0,
            csv_header: None,
            chunk: None,
        }
    }

    /// Seeds the types the table already has in the cluster.
    pub fn with_known_types(self, schema: &Schema) -> Self {
        {
            let mut known = self.known.lock().expect("known types poisoned");
            for f in schema.fields() {
                if let Some(t) = ColumnType::from_arrow(f.data_type()) {
                    if f.name() != &self.time_column {
                        known.insert(f.name().clone(), t);
                    }
                }
            }
        }
        self
    }

    /// The known types, to share with another builder of the same ingest.
    pub fn known_types(&self) -> KnownTypes {
        Arc::clone(&self.known)
    }

    /// Shares `known` with the builders it came from (seeded types included).
    pub fn sharing_known_types(mut self, known: KnownTypes) -> Self {
        self.known = known;
        self
    }

    /// Reads chunk `k` of the input next: see [`ChunkOrder`].
    pub fn start_chunk(&mut self, order: &Arc<ChunkOrder>, k: u64) {
        self.chunk = Some((Arc::clone(order), k));
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
        // Straight from the text into cells: no `Value` tree, keys and text
        // borrowed. The fast reader takes the common shapes; anything else
        // (escapes, syntax errors, nesting) goes through serde_json, which
        // also words the errors.
        let mut entries = match json::fast::read_line(text, &self.time_column) {
            Some(entries) => entries,
            None => {
                let mut de = serde_json::Deserializer::from_str(text);
                serde::Deserializer::deserialize_map(
                    &mut de,
                    json::LineVisitor {
                        time_column: &self.time_column,
                    },
                )
                .and_then(|entries| de.end().map(|()| entries))
                .map_err(|e| reject(format!("invalid JSON: {e}")))?
            }
        };
        for (i, (name, parsed)) in entries.iter().enumerate() {
            // Lines hold a few dozen keys at most: a scan beats hashing.
            if entries[..i].iter().any(|(n, _)| n == name) {
                return Err(reject(format!("column `{name}` appears twice")));
            }
            if let json::Parsed::Bad(reason) = parsed {
                return Err(reject(format!("column `{name}`: {reason}")));
            }
        }
        entries.retain(|(_, parsed)| !matches!(parsed, json::Parsed::Cell(None)));
        // In place: the entries' allocation holds the cells.
        let cells = entries
            .into_iter()
            .map(|(name, parsed)| match parsed {
                json::Parsed::Cell(Some(cell)) => (name, cell),
                _ => unreachable!("nulls and bad values were taken out above"),
            })
            .collect();
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

    fn cell_from_csv(&self, name: &str, raw: String) -> Cell<'static> {
        // Text that the known type accepts is read as that type; otherwise
        // the value's own shape decides, and a conflict is caught later.
        let known = match self.index.get(name) {
            Some(&i) => Some(self.columns[i].column_type),
            None => self
                .known
                .lock()
                .expect("known types poisoned")
                .get(name)
                .copied(),
        };
        match known {
            Some(ColumnType::Utf8) => return Cell::Str(Cow::Owned(raw)),
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
            Cell::Str(Cow::Owned(raw))
        }
    }

    fn push_cells<K: AsRef<str>>(
        &mut self,
        line: u64,
        len_bytes: usize,
        cells: Vec<(K, Cell<'_>)>,
    ) -> Result<(), Rejection> {
        // One buffer for every line's column slots.
        let mut slots = std::mem::take(&mut self.slots);
        slots.clear();
        let result = self.push_cells_into(line, len_bytes, cells, &mut slots);
        self.slots = slots;
        result
    }

    fn push_cells_into<K: AsRef<str>>(
        &mut self,
        line: u64,
        len_bytes: usize,
        cells: Vec<(K, Cell<'_>)>,
        slots: &mut Vec<Option<usize>>,
    ) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        // Find each cell's column. Only a column new to this builder, or a
        // value its type does not take as is, needs the shared known types.
        let mut needs_known = false;
        for (k, (name, cell)) in cells.iter().enumerate() {
            let name = name.as_ref();
            let slot = match self.hint.get(k) {
                Some(&i) if self.columns[i].name == name => Some(i),
                _ => self.index.get(name).copied(),
            };
            match slot {
                Some(i) => {
                    let ours = self.columns[i].column_type;
                    let found = cell.column_type();
                    if ours != found && !(ours == ColumnType::Float64 && found == ColumnType::Int64)
                    {
                        needs_known = true;
                    }
                }
                None => needs_known = true,
            }
            slots.push(slot);
        }
        // Check the whole line first, so a rejected line leaves no trace;
        // under one lock, so no other builder changes a type in between.
        let mut known = if needs_known {
            if let Some((order, k)) = &self.chunk {
                order.wait_before(*k);
            }
            let known = self.known.lock().expect("known types poisoned");
            let mut new_columns = 0;
            for (name, cell) in &cells {
                let name = name.as_ref();
                let found = cell.column_type();
                match known.get(name) {
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
            if known.len() + new_columns > TABLE_COLUMNS_MAX {
                return Err(reject(
                    Error::TooManyColumns {
                        table: self.table.clone(),
                        max: TABLE_COLUMNS_MAX,
                    }
                    .to_string(),
                ));
            }
            Some(known)
        } else {
            None
        };

        let rows = self.rows();
        let mut has_time = false;
        for (k, ((name, cell), &slot)) in cells.into_iter().zip(slots.iter()).enumerate() {
            let name = name.as_ref();
            let found = cell.column_type();
            let unified = known.as_mut().map(|known| match known.get_mut(name) {
                Some(expected) => {
                    *expected = expected.unify(found).expect("checked above");
                    *expected
                }
                None => {
                    known.insert(name.to_string(), found);
                    found
                }
            });
            let i = match slot {
                Some(i) => i,
                None => {
                    let column_type = unified.expect("a new column takes the known types");
                    self.columns.push(Column {
                        name: name.to_string(),
                        column_type,
                        values: Values::new(column_type),
                        non_null: 0,
                    });
                    self.index.insert(name.to_string(), self.columns.len() - 1);
                    self.columns.len() - 1
                }
            };
            let column = &mut self.columns[i];
            if unified == Some(ColumnType::Float64) && column.column_type == ColumnType::Int64 {
                column.values.widen_to_float();
                column.column_type = ColumnType::Float64;
            }
            column.pad_to(rows);
            column.values.push(cell);
            column.non_null += 1;
            has_time |= i == TIME_INDEX;
            match self.hint.get_mut(k) {
                Some(h) => *h = i,
                None => self.hint.push(i),
            }
        }
        drop(known);
        if !has_time {
            let column = &mut self.columns[TIME_INDEX];
            column.pad_to(rows);
            column.values.push(Cell::Time(self.ingest_time_us));
            column.non_null += 1;
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
        let lines = std::mem::take(&mut self.lines);
        self.bytes = 0;
        let mut fields = Vec::with_capacity(self.columns.len());
        let mut arrays = Vec::with_capacity(self.columns.len());
        for column in &mut self.columns {
            if column.non_null == 0 {
                column.values.finish();
                continue;
            }
            column.pad_to(lines.len());
            fields.push(Field::new(
                &column.name,
                column.column_type.to_arrow(),
                true,
            ));
            arrays.push(column.values.finish());
            column.non_null = 0;
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

fn time_from_text(text: &str) -> Result<Cell<'static>, String> {
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
    #[derive(Debug, PartialEq)]
    pub enum Parsed<'a> {
        Cell(Option<Cell<'a>>),
        Bad(String),
    }

    /// A reader for the shapes event lines nearly always have: an object
    /// whose keys and string values have no escapes, numbers, `true`,
    /// `false`, `null`, and arrays of such strings. It answers `None` for
    /// anything else (escapes, nesting, big numbers, syntax errors), which
    /// then goes to serde_json, the reference: for every line it reads, it
    /// reads what serde_json reads (tested against it).
    pub mod fast {
        use std::borrow::Cow;

        use super::super::{seconds_to_us, time_from_text, Cell};
        use super::Parsed;

        type Entries<'a> = Vec<(Cow<'a, str>, Parsed<'a>)>;

        /// The line's (key, value) pairs in order, or `None`.
        pub fn read_line<'a>(text: &'a str, time_column: &str) -> Option<Entries<'a>> {
            let b = text.as_bytes();
            let mut i = skip_ws(b, 0);
            if b.get(i) != Some(&b'{') {
                return None;
            }
            i = skip_ws(b, i + 1);
            let mut out = Vec::with_capacity(16);
            if b.get(i) == Some(&b'}') {
                i += 1;
            } else {
                loop {
                    let (key, next) = string(text, i)?;
                    i = skip_ws(b, next);
                    if b.get(i) != Some(&b':') {
                        return None;
                    }
                    i = skip_ws(b, i + 1);
                    let (parsed, next) = value(text, i, key == time_column)?;
                    out.push((Cow::Borrowed(key), parsed));
                    i = skip_ws(b, next);
                    match b.get(i) {
                        Some(b',') => i = skip_ws(b, i + 1),
                        Some(b'}') => {
                            i += 1;
                            break;
                        }
                        _ => return None,
                    }
                }
            }
            (skip_ws(b, i) == b.len()).then_some(out)
        }

        fn skip_ws(b: &[u8], mut i: usize) -> usize {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = b.get(i) {
                i += 1;
            }
            i
        }

        /// The string opening at `i`, if it has no escape or control
        /// character, and the index after its closing quote.
        fn string(text: &str, i: usize) -> Option<(&str, usize)> {
            let b = text.as_bytes();
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let start = i + 1;
            let len = b[start..]
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
            if b[start + len] != b'"' {
                return None;
            }
            Some((&text[start..start + len], start + len + 1))
        }

        fn value(text: &str, i: usize, time: bool) -> Option<(Parsed<'_>, usize)> {
            let b = text.as_bytes();
            let cell = |c: Cell<'static>| Parsed::Cell(Some(c));
            match *b.get(i)? {
                b'"' => {
                    let (s, next) = string(text, i)?;
                    let parsed = if time {
                        match time_from_text(s) {
                            Ok(c) => cell(c),
                            Err(e) => Parsed::Bad(e),
                        }
                    } else {
                        Parsed::Cell(Some(Cell::Str(Cow::Borrowed(s))))
                    };
                    Some((parsed, next))
                }
                b'n' if b[i..].starts_with(b"null") => Some((Parsed::Cell(None), i + 4)),
                b't' if !time && b[i..].starts_with(b"true") => {
                    Some((cell(Cell::Bool(true)), i + 4))
                }
                b'f' if !time && b[i..].starts_with(b"false") => {
                    Some((cell(Cell::Bool(false)), i + 5))
                }
                b'[' if !time => {
                    let mut tags = Vec::new();
                    let mut j = skip_ws(b, i + 1);
                    if b.get(j) == Some(&b']') {
                        return Some((Parsed::Cell(Some(Cell::Tags(tags))), j + 1));
                    }
                    loop {
                        let (s, next) = string(text, j)?;
                        tags.push(Cow::Borrowed(s));
                        j = skip_ws(b, next);
                        match b.get(j) {
                            Some(b',') => j = skip_ws(b, j + 1),
                            Some(b']') => {
                                return Some((Parsed::Cell(Some(Cell::Tags(tags))), j + 1))
                            }
                            _ => return None,
                        }
                    }
                }
                b'-' | b'0'..=b'9' => number(text, i, time),
                _ => None,
            }
        }

        /// A number in JSON's grammar: an int64 when it has no fraction or
        /// exponent and fits, else a finite float.
        fn number(text: &str, i: usize, time: bool) -> Option<(Parsed<'_>, usize)> {
            let b = text.as_bytes();
            let digits = |mut j: usize| {
                while b.get(j).is_some_and(u8::is_ascii_digit) {
                    j += 1;
                }
                j
            };
            let mut j = i;
            if b[j] == b'-' {
                j += 1;
            }
            match b.get(j) {
                Some(b'0') => j += 1,
                Some(b'1'..=b'9') => j = digits(j + 1),
                _ => return None,
            }
            let mut float = false;
            if b.get(j) == Some(&b'.') {
                if !b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                j = digits(j + 1);
                float = true;
            }
            if let Some(b'e' | b'E') = b.get(j) {
                j += 1;
                if let Some(b'+' | b'-') = b.get(j) {
                    j += 1;
                }
                if !b.get(j).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                j = digits(j);
                float = true;
            }
            let s = &text[i..j];
            let parsed = if !float {
                let v: i64 = s.parse().ok()?;
                if v == 0 && b[i] == b'-' {
                    return None; // serde_json reads -0 as a float
                }
                match (time, v.checked_mul(1_000_000)) {
                    (false, _) => Parsed::Cell(Some(Cell::Int(v))),
                    (true, Some(us)) => Parsed::Cell(Some(Cell::Time(us))),
                    (true, None) => return None,
                }
            } else {
                let v: f64 = s.parse().ok()?;
                if !v.is_finite() {
                    return None;
                }
                match (time, time.then(|| seconds_to_us(v))) {
                    (false, _) => Parsed::Cell(Some(Cell::Float(v))),
                    (true, Some(Ok(us))) => Parsed::Cell(Some(Cell::Time(us))),
                    (true, _) => return None,
                }
            };
            Some((parsed, j))
        }
    }

    /// A key, borrowed from the input when it has no escapes.
    #[derive(serde::Deserialize)]
    struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

    /// The top level: a JSON object, as (key, value) pairs in line order.
    pub struct LineVisitor<'a> {
        pub time_column: &'a str,
    }

    impl<'de> Visitor<'de> for LineVisitor<'_> {
        type Value = Vec<(Cow<'de, str>, Parsed<'de>)>;

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
        type Value = Parsed<'de>;
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Parsed<'de>, D::Error> {
            d.deserialize_any(self)
        }
    }

    pub(super) fn time_kind(kind: &str) -> Parsed<'static> {
        Parsed::Bad(format!(
            "time must be unix seconds or RFC 3339 text, found {kind}"
        ))
    }

    impl<'de> Visitor<'de> for CellSeed {
        type Value = Parsed<'de>;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON value")
        }

        fn visit_unit<E: de::Error>(self) -> Result<Parsed<'de>, E> {
            Ok(Parsed::Cell(None))
        }

        fn visit_bool<E: de::Error>(self, v: bool) -> Result<Parsed<'de>, E> {
            Ok(if self.time {
                time_kind("a bool")
            } else {
                Parsed::Cell(Some(Cell::Bool(v)))
            })
        }

        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Parsed<'de>, E> {
            if !self.time {
                return Ok(Parsed::Cell(Some(Cell::Int(v))));
            }
            Ok(match v.checked_mul(1_000_000) {
                Some(us) => Parsed::Cell(Some(Cell::Time(us))),
                None => Parsed::Bad(format!("time {v} is out of range")),
            })
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Parsed<'de>, E> {
            match i64::try_from(v) {
                Ok(i) => self.visit_i64(i),
                Err(_) => self.visit_f64(v as f64),
            }
        }

        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Parsed<'de>, E> {
            if !self.time {
                return Ok(Parsed::Cell(Some(Cell::Float(v))));
            }
            Ok(match seconds_to_us(v) {
                Ok(us) => Parsed::Cell(Some(Cell::Time(us))),
                Err(e) => Parsed::Bad(e),
            })
        }

        fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Parsed<'de>, E> {
            if self.time {
                return self.visit_str(v);
            }
            Ok(Parsed::Cell(Some(Cell::Str(Cow::Borrowed(v)))))
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Parsed<'de>, E> {
            if !self.time {
                return Ok(Parsed::Cell(Some(Cell::Str(Cow::Owned(v.to_string())))));
            }
            Ok(match time_from_text(v) {
                Ok(cell) => Parsed::Cell(Some(cell)),
                Err(e) => Parsed::Bad(e),
            })
        }

        fn visit_string<E: de::Error>(self, v: String) -> Result<Parsed<'de>, E> {
            if self.time {
                return self.visit_str(&v);
            }
            Ok(Parsed::Cell(Some(Cell::Str(Cow::Owned(v)))))
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Parsed<'de>, A::Error> {
            // Read to the end even when refusing, so the line parses on.
            let mut tags = Vec::new();
            let mut bad: Option<&'static str> = None;
            while let Some(item) = seq.next_element::<TagItem<'de>>()? {
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

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Parsed<'de>, A::Error> {
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
    enum TagItem<'a> {
        Str(Cow<'a, str>),
        Other(&'static str),
    }

    impl<'de> de::Deserialize<'de> for TagItem<'de> {
        fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = TagItem<'de>;
                fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                    f.write_str("a JSON value")
                }
                fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Str(Cow::Borrowed(v)))
                }
                fn visit_str<E: de::Error>(self, v: &str) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Str(Cow::Owned(v.to_string())))
                }
                fn visit_string<E: de::Error>(self, v: String) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Str(Cow::Owned(v)))
                }
                fn visit_unit<E: de::Error>(self) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Other("null"))
                }
                fn visit_bool<E: de::Error>(self, _: bool) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Other("a bool"))
                }
                fn visit_i64<E: de::Error>(self, _: i64) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Other("a number"))
                }
                fn visit_u64<E: de::Error>(self, _: u64) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Other("a number"))
                }
                fn visit_f64<E: de::Error>(self, _: f64) -> Result<TagItem<'de>, E> {
                    Ok(TagItem::Other("a number"))
                }
                fn visit_seq<A: SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> Result<TagItem<'de>, A::Error> {
                    while seq.next_element::<IgnoredAny>()?.is_some() {}
                    Ok(TagItem::Other("an array"))
                }
                fn visit_map<A: MapAccess<'de>>(
                    self,
                    mut map: A,
                ) -> Result<TagItem<'de>, A::Error> {
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
        let err = b.push_json(1, r#"{"x": null, "x": 2}"#).unwrap_err();
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

    /// What serde_json (the reference) reads from a line.
    fn serde_read(text: &str) -> Option<Vec<(Cow<'_, str>, json::Parsed<'_>)>> {
        let mut de = serde_json::Deserializer::from_str(text);
        serde::Deserializer::deserialize_map(
            &mut de,
            json::LineVisitor {
                time_column: "time",
            },
        )
        .and_then(|entries| de.end().map(|()| entries))
        .ok()
    }

    /// Floats within one unit in the last place: serde_json's default
    /// float parsing is not always correctly rounded; Rust's is.
    fn close(a: f64, b: f64) -> bool {
        a == b || (a.to_bits() as i64 - b.to_bits() as i64).abs() <= 1
    }

    fn same(fast: &json::Parsed<'_>, serde: &json::Parsed<'_>) -> bool {
        use json::Parsed::Cell as P;
        match (fast, serde) {
            (P(Some(Cell::Float(a))), P(Some(Cell::Float(b)))) => close(*a, *b),
            (P(Some(Cell::Time(a))), P(Some(Cell::Time(b)))) => (a - b).abs() <= 1,
            (a, b) => a == b,
        }
    }

    fn assert_fast_reads_as_serde(text: &str) -> bool {
        match json::fast::read_line(text, "time") {
            Some(fast) => {
                let serde = serde_read(text).unwrap_or_else(|| panic!("serde refuses {text}"));
                assert_eq!(fast.len(), serde.len(), "{text}");
                for ((fk, fv), (sk, sv)) in fast.iter().zip(&serde) {
                    assert!(fk == sk && same(fv, sv), "{text}: {fv:?} vs {sv:?}");
                }
                true
            }
            None => false,
        }
    }

    #[test]
    fn fast_json_reader_reads_what_serde_json_reads_or_declines() {
        for text in [
            r#"{}"#,
            r#" { "a" : 1 , "b":-0.0, "c": 0.5e-3, "d": 1E+2, "e": -12.25 } "#,
            r#"{"time": 1700000000, "s": "héllo wörld", "t": ["x", "y z"], "u": [], "n": null}"#,
            r#"{"time": "2024-01-01T00:00:00.5+02:00", "ok": true, "no": false}"#,
            r#"{"time": 1700000000.123456, "big": 9223372036854775807, "neg": -9223372036854775808}"#,
            r#"{"f": 0.1, "g": 123456789.123456789, "h": 2.2250738585072014e-308, "i": 1.7976931348623157e308}"#,
        ] {
            assert!(assert_fast_reads_as_serde(text), "declined {text}");
        }
        // Declined: serde_json reads them (or words the error).
        for text in [
            r#"{"a": "x\ny"}"#,
            r#"{"a\u00e9": 1}"#,
            r#"{"a": {"b": 1}}"#,
            r#"{"a": [1]}"#,
            r#"{"a": 18446744073709551615}"#,
            r#"{"a": 1e400}"#,
            r#"{"a": 01}"#,
            r#"{"a": 1.}"#,
            r#"{"a": .5}"#,
            r#"{"a": -}"#,
            r#"{"a": tru}"#,
            r#"{"a": truex}"#,
            r#"{"a": 1,}"#,
            r#"{"a" 1}"#,
            r#"{"a": 1} x"#,
            r#"{"time": true}"#,
            r#"{"time": ["x"]}"#,
            r#"{"time": 99999999999999999}"#,
            "{\"a\": \"tab\there\"}",
            r#"[1, 2]"#,
            r#"{"a": 1"#,
        ] {
            assert!(!assert_fast_reads_as_serde(text), "read {text}");
        }
    }

    #[test]
    fn fast_json_reader_agrees_with_serde_json_on_random_lines() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let pieces = [
            "0",
            "-0",
            "7",
            "-42",
            "3.25",
            "-0.0",
            "1e3",
            "2.5E-2",
            "1.0e+2",
            "0.1",
            "12345678901234567",
            "9007199254740993",
            "1.7976931348623157e308",
            "5e-324",
            "null",
            "true",
            "false",
            "\"\"",
            "\"plain\"",
            "\"ünï çødé\"",
            "\"esc\\\"aped\"",
            "[]",
            "[\"a\"]",
            "[\"a\", \"b\"]",
            "[ ]",
            "\"1700000000\"",
            "\"2024-02-29T12:00:00Z\"",
            "\"not a time\"",
            "1700000000",
            "1700000000.5",
            "{}",
            "[1]",
            "01",
            "1.",
            "-",
            "tru",
        ];
        let keys = ["time", "a", "b", "service", "ключ", "x y"];
        let mut read = 0;
        for _ in 0..20_000 {
            let n = rng.random_range(0..5);
            let mut line = String::from("{");
            for k in 0..n {
                if k > 0 {
                    line.push_str([",", " , ", ",\t"][rng.random_range(0..3)]);
                }
                let key = keys[rng.random_range(0..keys.len())];
                let value = pieces[rng.random_range(0..pieces.len())];
                line.push_str(&format!(
                    "\"{key}\"{}{value}",
                    [":", " : ", ":\t"][rng.random_range(0..3)]
                ));
            }
            line.push('}');
            if assert_fast_reads_as_serde(&line) {
                read += 1;
            }
        }
        assert!(read > 5_000, "the fast reader took only {read} lines");
    }

    #[test]
    fn chunk_order_waits_for_every_earlier_chunk_in_any_finishing_order() {
        let order = Arc::new(ChunkOrder::default());
        let waiter = {
            let order = Arc::clone(&order);
            std::thread::spawn(move || order.wait_before(3))
        };
        order.finished(2);
        order.finished(0);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(!waiter.is_finished(), "chunk 1 is not finished yet");
        order.finished(1);
        waiter.join().unwrap();
    }

    #[test]
    fn an_abandoned_chunk_order_releases_its_waiters() {
        let order = Arc::new(ChunkOrder::default());
        let waiter = {
            let order = Arc::clone(&order);
            std::thread::spawn(move || order.wait_before(7))
        };
        order.abandon();
        waiter.join().unwrap();
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
