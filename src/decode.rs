//! Turning input lines (JSON objects or CSV records) into Arrow batches.
//!
//! ```text
//!  stdin ──ChunkReader──> TextChunk: cut into lines as read (bounded; one copy, the read)
//!  (a mapped file ──MappedChunks──> TextChunk: a slice of the mapping, uncut, no copy)
//!                            │ BatchBuilder::decode_chunk, walking TextChunk::lines:
//!                            │ oversized -> Rejection; JSON lines as bytes, and an uncut
//!                            │ chunk's read in place, their ends found as they are read;
//!                            │ CSV's checked as UTF-8
//!                            v
//!          BatchBuilder::push_*: JSON line in the usual keys ─────────────┐ straight in
//!                            other lines -> LineEntries (spans, reused) ─┴> columns
//!                            │ bad line: Rejection{line, reason}
//!                            v
//!          finish() ──> RecordBatch + line numbers (counted within the chunk)
//! ```
//!
//! JSON lines of the common shapes are read by a small hand-written reader
//! (`json::fast`) into spans of the line, with no allocation per line;
//! anything else (escapes, syntax errors, nesting) goes through serde_json,
//! which also words the errors. The fast reader checks UTF-8 only in a
//! string with a byte past ASCII (it reads nothing but ASCII outside
//! strings); a line it declines is checked whole before serde_json reads
//! it. A line is first read against the keys most lines have had, in their
//! order (`ShapeKeys`; any may be left out): matched as text, they need no
//! scanning, and their columns no lookup, so each value goes straight into
//! its column, read as the column's type. A line that does not fit them
//! there is taken back and read the long way. Several builders (one per
//! decoding thread) can share one [`KnownTypes`], kept in input order by a
//! [`ChunkOrder`]. [`LineReader`] reads lines one at a time, for callers
//! that want them so.
//!
//! A line is checked whole before any of its values is kept, or (straight
//! in) taken back whole, so a rejected line leaves no trace in the batch.
//! Types come from the table's known
//! schema (what the cluster already holds, and what this ingest added); a
//! value that does not fit rejects its line, naming the column. An int64
//! column that meets a float widens to float64, in this batch and at the
//! leaves, whose older blocks are read as float64 from then on.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::BufRead;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::builder::{BooleanBufferBuilder, NullBufferBuilder};
use datafusion::arrow::array::{ArrayRef, BooleanArray, ListArray, PrimitiveArray, StringArray};
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{
    ArrowPrimitiveType, DataType, Field, Float64Type, Int64Type, Schema, TimestampMicrosecondType,
};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::{Error, Result};
use crate::limits::{BATCH_BYTES_MAX, BATCH_ROWS_MAX, LINE_BYTES_MAX, TABLE_COLUMNS_MAX};
use crate::schema::{check_name, tags_type, ColumnType};

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

/// One line from [`LineReader`] or a [`TextChunk`].
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

/// One line of a [`TextChunk`], as bytes.
#[derive(Debug)]
pub enum LineBytes<'a> {
    Text {
        number: u64,
        bytes: &'a [u8],
    },
    /// Longer than [`LINE_BYTES_MAX`]; skipped without being held whole.
    Oversized {
        number: u64,
        len_bytes: usize,
    },
}

/// Whether a line is blank: only whitespace (as `str::trim` sees it).
/// A line that starts with printable ASCII is not, without more ado.
#[inline]
pub fn is_blank(line: &[u8]) -> bool {
    match line.first() {
        None => true,
        Some(&c) if c.is_ascii_graphic() => false,
        Some(_) => std::str::from_utf8(line).is_ok_and(|t| t.trim().is_empty()),
    }
}

/// A run of whole lines of the input, for decoding on several threads: the
/// reader only finds where the chunk ends; whoever decodes it reads its
/// lines ([`TextChunk::lines`]) and checks their UTF-8. Lines are numbered
/// within their chunk, from 1: the chunk's place in the input, and so the
/// number of lines before it, is known only to whoever takes the decoded
/// chunks back in order.
///
/// A chunk is either cut into lines by its reader ([`ChunkReader`], which
/// finds each line end as it reads) or not cut at all ([`MappedChunks`]):
/// then a JSON reader finds each line's end as it reads the line, in one
/// pass over the text, and anything else cuts it line by line as it goes.
#[derive(Debug, Default)]
pub struct TextChunk {
    text: Vec<u8>,
    /// The chunk's text, when it is a slice of input already in memory
    /// ([`MappedChunks`]; `text` is then empty).
    mapped: Option<bytes::Bytes>,
    /// `text`, once [`TextChunk::check_utf8`] found all of it UTF-8: its
    /// lines then need no check of their own.
    utf8: Option<String>,
    /// Where each line is, when the reader cut the chunk into lines.
    lines: Vec<ChunkLine>,
    /// Not cut into lines (`lines` is empty): its lines are the whole text.
    uncut: bool,
}

#[derive(Debug, Clone, Copy)]
enum ChunkLine {
    /// `text[start..end]`, without its line feed.
    Text { start: u32, end: u32 },
    /// Longer than [`LINE_BYTES_MAX`]: skipped, not held.
    Oversized { len_bytes: usize },
}

impl TextChunk {
    /// Whether the chunk has no lines.
    pub fn is_empty(&self) -> bool {
        match self.uncut {
            true => self.whole_text().is_empty(),
            false => self.lines.is_empty(),
        }
    }

    /// Checks the whole chunk's UTF-8 at once (a line feed is never part
    /// of another character, so the chunk is UTF-8 exactly when each of its
    /// lines is): one pass instead of one call per line. When some line is
    /// not, every line is checked on its own instead.
    pub fn check_utf8(&mut self) {
        // A slice of a mapping is not copied into a string: its lines are
        // checked one by one instead.
        if self.utf8.is_none() && self.mapped.is_none() {
            match String::from_utf8(std::mem::take(&mut self.text)) {
                Ok(text) => self.utf8 = Some(text),
                Err(e) => self.text = e.into_bytes(),
            }
        }
    }

    /// The chunk's lines, in order, numbered from 1.
    pub fn lines(&self) -> ChunkLines<'_> {
        ChunkLines {
            chunk: self,
            next: 0,
            number: 1,
        }
    }

    fn whole_text(&self) -> &[u8] {
        match (&self.mapped, &self.utf8) {
            (Some(mapped), _) => &mapped[..],
            (None, Some(whole)) => whole.as_bytes(),
            (None, None) => &self.text[..],
        }
    }
}

/// A walk over a [`TextChunk`]'s lines ([`TextChunk::lines`]), cutting an
/// uncut chunk at each line end as it goes. A reader that can find a line's
/// end itself takes the line from [`ChunkLines::uncut_rest`] and passes
/// over it with [`ChunkLines::pass_line`]; every other line comes from
/// [`ChunkLines::next_bytes`] or [`ChunkLines::next_text`].
pub struct ChunkLines<'a> {
    chunk: &'a TextChunk,
    /// The next line: its index in `chunk.lines`, or where it starts in
    /// the text of an uncut chunk.
    next: usize,
    /// The next line's number in the chunk.
    number: u64,
}

/// Where one line is, found by [`ChunkLines::next_line`].
enum NextLine {
    /// `text[start..end]`, without its line ending.
    Text {
        start: usize,
        end: usize,
    },
    Oversized {
        len_bytes: usize,
    },
}

impl<'a> ChunkLines<'a> {
    /// Lines passed so far.
    pub fn passed(&self) -> u64 {
        self.number - 1
    }

    /// For an uncut chunk: the text from the next line's start on, at most
    /// [`LINE_BYTES_MAX`] bytes of it, and whether that runs to the chunk's
    /// end. A line that ends in it (at a line feed, or at its end when that
    /// is the chunk's end) is a whole line of at most [`LINE_BYTES_MAX`]
    /// bytes. `None` for a chunk its reader cut, and past the last line.
    pub fn uncut_rest(&self) -> Option<(&'a [u8], bool)> {
        if !self.chunk.uncut {
            return None;
        }
        let rest = &self.chunk.whole_text()[self.next..];
        if rest.is_empty() {
            return None;
        }
        let to_end = rest.len() <= LINE_BYTES_MAX;
        Some((&rest[..rest.len().min(LINE_BYTES_MAX)], to_end))
    }

    /// Passes over the line [`ChunkLines::uncut_rest`] showed, which its
    /// reader found to end at `end` in it (its line feed, or the chunk's
    /// end).
    pub fn pass_line(&mut self, end: usize) {
        debug_assert!(self.chunk.uncut);
        self.next = (self.next + end + 1).min(self.chunk.whole_text().len());
        self.number += 1;
    }

    /// The next line, as bytes: whoever reads it checks its UTF-8 (as
    /// [`BatchBuilder::push_json_bytes`] does, where it must).
    pub fn next_bytes(&mut self) -> Option<LineBytes<'a>> {
        let number = self.number;
        Some(match self.next_line()? {
            NextLine::Oversized { len_bytes } => LineBytes::Oversized { number, len_bytes },
            NextLine::Text { start, end } => LineBytes::Text {
                number,
                bytes: &self.chunk.whole_text()[start..end],
            },
        })
    }

    /// The next line, as text.
    pub fn next_text(&mut self) -> Option<Line<'a>> {
        let number = self.number;
        Some(match self.next_line()? {
            NextLine::Oversized { len_bytes } => Line::Oversized { number, len_bytes },
            NextLine::Text { start, end } => match &self.chunk.utf8 {
                // Cut before a line end or a `\r` (ASCII), so at a
                // character's end.
                Some(whole) => Line::Text {
                    number,
                    text: &whole[start..end],
                },
                None => match std::str::from_utf8(&self.chunk.whole_text()[start..end]) {
                    Ok(text) => Line::Text { number, text },
                    Err(_) => Line::NotUtf8 { number },
                },
            },
        })
    }

    /// Finds the next line and passes over it.
    fn next_line(&mut self) -> Option<NextLine> {
        let (start, end) = if self.chunk.uncut {
            let text = self.chunk.whole_text();
            let start = self.next;
            if start >= text.len() {
                return None;
            }
            let end = memchr::memchr(b'\n', &text[start..]).map_or(text.len(), |i| start + i);
            self.next = (end + 1).min(text.len());
            if end - start > LINE_BYTES_MAX {
                self.number += 1;
                return Some(NextLine::Oversized {
                    len_bytes: self.next - start,
                });
            }
            (start, end)
        } else {
            let line = *self.chunk.lines.get(self.next)?;
            self.next += 1;
            match line {
                ChunkLine::Oversized { len_bytes } => {
                    self.number += 1;
                    return Some(NextLine::Oversized { len_bytes });
                }
                ChunkLine::Text { start, end } => (start as usize, end as usize),
            }
        };
        self.number += 1;
        let text = self.chunk.whole_text();
        let end = match text[start..end].last() {
            Some(b'\r') => end - 1,
            _ => end,
        };
        Some(NextLine::Text { start, end })
    }
}

/// Where chunks of lines come from, one at a time, in input order.
pub trait ChunkSource {
    /// The next chunk of lines; `None` at the end of the input.
    fn next_chunk(&mut self) -> std::io::Result<Option<TextChunk>>;
}

impl<R: std::io::Read> ChunkSource for ChunkReader<R> {
    fn next_chunk(&mut self) -> std::io::Result<Option<TextChunk>> {
        ChunkReader::next_chunk(self)
    }
}

/// Bytes at the start of each chunk whose lines [`MappedChunks`] counts to
/// size the chunk.
const SAMPLE_BYTES: usize = 64 * 1024;

/// Input already in memory (a mapped file), cut into chunks of whole lines
/// without copying it (each chunk's text is a slice of the input) and
/// without finding each line's end: the decoder does that as it reads the
/// line ([`ChunkLines::uncut_rest`]). A chunk aims at `max_lines` lines,
/// sized by the lines in its first [`SAMPLE_BYTES`]: a little under it
/// (15/16), so that a batch of such lines mostly fits one chunk; its
/// decoder cuts a chunk that holds more into several batches. A chunk ends
/// at the first line end at or past that size, which is at most
/// `max_bytes`.
pub struct MappedChunks {
    input: bytes::Bytes,
    /// Where the next chunk starts.
    at: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl MappedChunks {
    pub fn new(input: bytes::Bytes, max_lines: usize, max_bytes: usize) -> Self {
        MappedChunks {
            input,
            at: 0,
            max_lines,
            max_bytes,
        }
    }
}

impl ChunkSource for MappedChunks {
    fn next_chunk(&mut self) -> std::io::Result<Option<TextChunk>> {
        let rest = &self.input[self.at..];
        if rest.is_empty() {
            return Ok(None);
        }
        let sample = &rest[..rest.len().min(SAMPLE_BYTES)];
        let sampled_lines = memchr::memchr_iter(b'\n', sample).count();
        let aim = match sampled_lines {
            0 => self.max_bytes,
            n => (sample.len() / n).saturating_mul(self.max_lines - self.max_lines / 16),
        };
        let cut = aim.min(self.max_bytes).max(1).min(rest.len());
        // Past the line end at or after `cut - 1`, so a chunk is never empty.
        let len = memchr::memchr(b'\n', &rest[cut - 1..]).map_or(rest.len(), |i| cut + i);
        let chunk = TextChunk {
            mapped: Some(self.input.slice(self.at..self.at + len)),
            uncut: true,
            ..TextChunk::default()
        };
        self.at += len;
        Ok(Some(chunk))
    }
}

/// Bytes asked of the input per read.
const READ_BYTES: usize = 128 * 1024;

/// Reads an input in chunks of at most `max_lines` lines and about
/// `max_bytes` bytes (a chunk is cut at the first line end past it), one
/// chunk per [`ChunkReader::next_chunk`], in input order: whoever holds the
/// reader reads the next chunk, so several threads can take turns at one
/// input. A line longer than [`LINE_BYTES_MAX`] is skipped without being
/// held whole, and reported in its place.
pub struct ChunkReader<R> {
    input: R,
    max_lines: usize,
    max_bytes: usize,
    /// The chunk being filled.
    chunk: TextChunk,
    /// `chunk.text[line_start..]` is the line being read; up to `scanned`
    /// it has no line feed.
    line_start: usize,
    scanned: usize,
    /// Bytes of an oversized line skipped so far.
    skipping: Option<usize>,
    /// The input has no more bytes.
    at_end: bool,
    /// Why the last read failed; the lines read before it still go out.
    failed: Option<std::io::Error>,
    /// The error to give after the chunk it cut short.
    error: Option<std::io::Error>,
    done: bool,
}

impl<R: std::io::Read> ChunkReader<R> {
    pub fn new(input: R, max_lines: usize, max_bytes: usize) -> Self {
        ChunkReader {
            input,
            max_lines,
            max_bytes,
            chunk: TextChunk::default(),
            line_start: 0,
            scanned: 0,
            skipping: None,
            at_end: false,
            failed: None,
            error: None,
            done: false,
        }
    }

    /// The next chunk of lines; `None` at the end of the input. A read
    /// error comes after the chunk of the lines read before it.
    pub fn next_chunk(&mut self) -> std::io::Result<Option<TextChunk>> {
        use std::io::Read as _;
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        loop {
            if self.done {
                return Ok(None);
            }
            while let Some(at) = memchr::memchr(b'\n', &self.chunk.text[self.scanned..]) {
                let end = self.scanned + at;
                let line_start = self.line_start;
                match self.skipping.take() {
                    Some(skipped) => {
                        self.chunk.lines.push(ChunkLine::Oversized {
                            len_bytes: skipped + (end - line_start) + 1,
                        });
                        // Drop the oversized line's last bytes.
                        self.chunk.text.drain(line_start..=end);
                    }
                    None if end - line_start > LINE_BYTES_MAX => {
                        self.chunk.lines.push(ChunkLine::Oversized {
                            len_bytes: end - line_start + 1,
                        });
                        self.chunk.text.drain(line_start..=end);
                    }
                    None => {
                        self.chunk.lines.push(ChunkLine::Text {
                            start: line_start as u32,
                            end: end as u32,
                        });
                        self.line_start = end + 1;
                    }
                }
                self.scanned = self.line_start;
                if self.chunk.lines.len() >= self.max_lines || self.line_start >= self.max_bytes {
                    return Ok(Some(self.cut()));
                }
            }
            self.scanned = self.chunk.text.len();
            let partial = self.chunk.text.len() - self.line_start;
            if self.skipping.is_some() || partial > LINE_BYTES_MAX {
                *self.skipping.get_or_insert(0) += partial;
                self.chunk.text.truncate(self.line_start);
                self.scanned = self.line_start;
            }
            if let Some(e) = self.failed.take() {
                self.done = true;
                // The line the error cut short is not a line.
                self.chunk.text.truncate(self.line_start);
                if self.chunk.lines.is_empty() {
                    return Err(e);
                }
                self.error = Some(e);
                return Ok(Some(std::mem::take(&mut self.chunk)));
            }
            if self.at_end {
                self.done = true;
                match self.skipping {
                    Some(len_bytes) => self.chunk.lines.push(ChunkLine::Oversized { len_bytes }),
                    None if self.line_start < self.chunk.text.len() => {
                        self.chunk.lines.push(ChunkLine::Text {
                            start: self.line_start as u32,
                            end: self.chunk.text.len() as u32,
                        })
                    }
                    None => {}
                }
                let chunk = std::mem::take(&mut self.chunk);
                return Ok((!chunk.lines.is_empty()).then_some(chunk));
            }
            match self
                .input
                .by_ref()
                .take(READ_BYTES as u64)
                .read_to_end(&mut self.chunk.text)
            {
                Ok(n) => self.at_end = n == 0,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                // Bytes read before the error are in the chunk: their whole
                // lines still go out.
                Err(e) => self.failed = Some(e),
            }
        }
    }

    /// Cuts the chunk at the current line start: the rest starts the next
    /// chunk, with room for as much text as this one had (grown by doubling
    /// instead, each chunk's text was copied about once more on the way).
    fn cut(&mut self) -> TextChunk {
        let mut text = Vec::with_capacity(self.line_start.min(self.max_bytes) + 2 * READ_BYTES);
        text.extend_from_slice(&self.chunk.text[self.line_start..]);
        let next = TextChunk {
            text,
            lines: Vec::with_capacity(self.chunk.lines.len()),
            ..TextChunk::default()
        };
        self.chunk.text.truncate(self.line_start);
        self.line_start = 0;
        self.scanned = 0;
        std::mem::replace(&mut self.chunk, next)
    }
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

/// Where a piece of text is in the text a line was read from (the line
/// itself, or [`LineEntries::scratch`]).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Span {
    start: u32,
    end: u32,
}

impl Span {
    /// The span's text. Every span is UTF-8: one into a line was checked
    /// when the line was read (see `json::fast::string`), and one into
    /// [`LineEntries::scratch`] was made from text.
    fn of(self, src: &[u8]) -> &str {
        std::str::from_utf8(self.bytes(src)).expect("spans are UTF-8, checked when read")
    }

    /// The span's bytes.
    #[inline]
    fn bytes(self, src: &[u8]) -> &[u8] {
        &src[self.start as usize..self.end as usize]
    }
}

/// One value of a line, read but not yet stored. Text is a span of the
/// source, so reading a line allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Raw {
    Null,
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(Span),
    /// `count` spans from `first` in [`LineEntries::tags`].
    Tags {
        first: u32,
        count: u32,
    },
    Time(i64),
    /// Why the value cannot be stored.
    Bad(Span),
}

impl Raw {
    fn column_type(&self) -> Option<ColumnType> {
        Some(match self {
            Raw::Int(_) => ColumnType::Int64,
            Raw::Float(_) => ColumnType::Float64,
            Raw::Bool(_) => ColumnType::Bool,
            Raw::Str(_) => ColumnType::Utf8,
            Raw::Tags { .. } => ColumnType::Tags,
            Raw::Time(_) => ColumnType::Timestamp,
            Raw::Null | Raw::Bad(_) => return None,
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    key: Span,
    value: Raw,
}

/// A line's (key, value) pairs in line order; reused from line to line.
#[derive(Debug, Default)]
struct LineEntries {
    entries: Vec<Entry>,
    tags: Vec<Span>,
    /// The text spans point into when it is not the line itself: unescaped
    /// strings, CSV fields, reasons.
    scratch: String,
}

/// The keys of a shape most lines of a source have, as their text has
/// them (each in its quotes, one after another), for storing a line that
/// lists them, or some of them, in their order straight into their columns
/// ([`json::fast::store_line_shaped`]), and the column of each. Kept while
/// most lines are read in it, so a source whose lines sometimes have
/// another key does not unseat it; replaced by the last line's shape when
/// lines miss it. Empty when some key's text would differ from its name (an
/// escape), or a key is new.
#[derive(Debug, Default)]
struct ShapeKeys {
    quoted: Vec<u8>,
    ends: Vec<usize>,
    columns: Vec<usize>,
    /// The position of the time column's key.
    time_at: Option<usize>,
    /// Lines read in this shape lately, less [`ShapeKeys::MISS_COST`] for
    /// each line that was not; at 0 the shape is replaced.
    credit: u8,
    /// Lines of this builder read in a shape, and lines that missed one:
    /// when most miss, reading in a shape first is not worth it.
    hits: u32,
    misses: u32,
}

impl ShapeKeys {
    const CREDIT_MAX: u8 = 64;
    const CREDIT_START: u8 = 4;
    const MISS_COST: u8 = 4;

    fn set(&mut self, shape: &[usize], columns: &[Column]) {
        self.quoted.clear();
        self.ends.clear();
        self.columns.clear();
        self.time_at = None;
        self.credit = Self::CREDIT_START;
        let as_written = |c: &&Column| c.name.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
        for (k, &i) in shape.iter().enumerate() {
            let Some(column) = columns.get(i).filter(as_written) else {
                self.ends.clear();
                return;
            };
            self.quoted.push(b'"');
            self.quoted.extend_from_slice(column.name.as_bytes());
            self.quoted.push(b'"');
            self.ends.push(self.quoted.len());
            self.columns.push(i);
            if i == TIME_INDEX {
                self.time_at = Some(k);
            }
        }
    }

    /// The first of the keys from the `from`-th on written at `i` in
    /// `text`, and the index past it.
    #[inline]
    fn find(&self, text: &[u8], i: usize, from: usize) -> Option<(usize, usize)> {
        let mut start = from.checked_sub(1).map_or(0, |p| self.ends[p]);
        for (k, &end) in self.ends.iter().enumerate().skip(from) {
            // A column's name, so UTF-8: a line that has it has UTF-8 here.
            let quoted = &self.quoted[start..end];
            if text
                .get(i..i + quoted.len())
                .is_some_and(|written| same_key(written, quoted))
            {
                return Some((k, i + quoted.len()));
            }
            start = end;
        }
        None
    }

    fn worth_trying(&self) -> bool {
        !self.ends.is_empty() && self.misses <= self.hits / 4 + 4
    }

    fn stale(&self) -> bool {
        self.ends.is_empty() || self.credit == 0
    }

    fn hit(&mut self) {
        self.credit = (self.credit + 1).min(Self::CREDIT_MAX);
        self.hits += 1;
    }

    fn missed(&mut self) {
        self.credit = self.credit.saturating_sub(Self::MISS_COST);
        self.misses += 1;
    }
}

impl LineEntries {
    fn clear(&mut self) {
        self.entries.clear();
        self.tags.clear();
        self.scratch.clear();
    }

    fn push_text(&mut self, text: &str) -> Span {
        let start = self.scratch.len() as u32;
        self.scratch.push_str(text);
        Span {
            start,
            end: self.scratch.len() as u32,
        }
    }

    /// A cell read by serde or from CSV, its text copied into `scratch`.
    fn raw_of(&mut self, cell: Cell<'_>) -> Raw {
        match cell {
            Cell::Int(x) => Raw::Int(x),
            Cell::Float(x) => Raw::Float(x),
            Cell::Bool(x) => Raw::Bool(x),
            Cell::Time(x) => Raw::Time(x),
            Cell::Str(s) => Raw::Str(self.push_text(&s)),
            Cell::Tags(tags) => {
                let first = self.tags.len() as u32;
                for t in &tags {
                    let span = self.push_text(t);
                    self.tags.push(span);
                }
                Raw::Tags {
                    first,
                    count: tags.len() as u32,
                }
            }
        }
    }

    fn push(&mut self, key: &str, value: Raw) {
        let key = self.push_text(key);
        self.entries.push(Entry { key, value });
    }
}

/// One column's values in the batch being built. Each kind can drop its
/// values past a row ([`Values::truncate`]), so a line stored value by
/// value can be taken back whole.
#[derive(Debug)]
enum Values {
    Int(Fixed<Int64Type>),
    Float(Fixed<Float64Type>),
    Bool(Bools),
    Str(StrValues),
    Tags(TagValues),
    Time(Fixed<TimestampMicrosecondType>),
}

impl Values {
    fn new(t: ColumnType) -> Values {
        match t {
            ColumnType::Int64 => Values::Int(Fixed::with_capacity(0)),
            ColumnType::Float64 => Values::Float(Fixed::with_capacity(0)),
            ColumnType::Bool => Values::Bool(Bools::with_capacity(0)),
            ColumnType::Utf8 => Values::Str(StrValues::with_capacity(0, 0)),
            ColumnType::Tags => Values::Tags(TagValues::with_capacity(0, 0, 0)),
            ColumnType::Timestamp => Values::Time(Fixed::with_capacity(0)),
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

    /// Keeps the first `rows` values (and nulls), and no text or tag past
    /// them.
    fn truncate(&mut self, rows: usize) {
        match self {
            Values::Int(b) => b.truncate(rows),
            Values::Float(b) => b.truncate(rows),
            Values::Bool(b) => b.truncate(rows),
            Values::Str(b) => b.truncate(rows),
            Values::Tags(b) => b.truncate(rows),
            Values::Time(b) => b.truncate(rows),
        }
    }

    /// Widens an int column to float in place.
    fn widen_to_float(&mut self) {
        if let Values::Int(ints) = self {
            let floats = Fixed {
                values: ints.values.iter().map(|&i| i as f64).collect(),
                nulls: std::mem::replace(&mut ints.nulls, NullBufferBuilder::new(0)),
            };
            *self = Values::Float(floats);
        }
    }

    /// Stores a value already checked to fit (ints into a float column
    /// allowed); text is read from `src`.
    #[inline]
    fn push(&mut self, src: &[u8], tags: &[Span], raw: Raw) {
        match (self, raw) {
            (Values::Int(b), Raw::Int(x)) => b.push(x),
            (Values::Float(b), Raw::Float(x)) => b.push(x),
            (Values::Float(b), Raw::Int(x)) => b.push(x as f64),
            (Values::Bool(b), Raw::Bool(x)) => b.push(x),
            (Values::Str(b), Raw::Str(x)) => b.push(src, x),
            (Values::Tags(b), Raw::Tags { first, count }) => {
                b.push(src, &tags[first as usize..(first + count) as usize])
            }
            (Values::Time(b), Raw::Time(x)) => b.push(x),
            (values, raw) => unreachable!("value {raw:?} was checked to fit {values:?}"),
        }
    }

    /// The values so far as an array; the column starts over, empty, with
    /// room for as many values (and bytes of text) as the array has: the
    /// next batch is mostly the size of this one, and a column that grows
    /// to it copies its values at every step.
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

/// A fixed-width column's values (a null holds the type's default) and
/// which are null.
#[derive(Debug)]
struct Fixed<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    nulls: NullBufferBuilder,
}

impl<T: ArrowPrimitiveType> Fixed<T> {
    fn with_capacity(values: usize) -> Self {
        Fixed {
            values: Vec::with_capacity(values),
            nulls: NullBufferBuilder::new(values),
        }
    }

    #[inline]
    fn push(&mut self, value: T::Native) {
        self.values.push(value);
        self.nulls.append_non_null();
    }

    fn append_nulls(&mut self, n: usize) {
        self.values
            .resize(self.values.len() + n, T::Native::default());
        self.nulls.append_n_nulls(n);
    }

    fn truncate(&mut self, rows: usize) {
        self.values.truncate(rows);
        self.nulls.truncate(rows);
    }

    fn finish(&mut self) -> PrimitiveArray<T> {
        let done = std::mem::replace(self, Fixed::with_capacity(self.values.len()));
        let mut nulls = done.nulls;
        PrimitiveArray::new(ScalarBuffer::from(done.values), nulls.finish())
    }
}

/// A bool column's values and which are null.
#[derive(Debug)]
struct Bools {
    values: BooleanBufferBuilder,
    nulls: NullBufferBuilder,
}

impl Bools {
    fn with_capacity(values: usize) -> Self {
        Bools {
            values: BooleanBufferBuilder::new(values),
            nulls: NullBufferBuilder::new(values),
        }
    }

    #[inline]
    fn push(&mut self, value: bool) {
        self.values.append(value);
        self.nulls.append_non_null();
    }

    fn append_nulls(&mut self, n: usize) {
        self.values.append_n(n, false);
        self.nulls.append_n_nulls(n);
    }

    fn truncate(&mut self, rows: usize) {
        self.values.truncate(rows);
        self.nulls.truncate(rows);
    }

    fn finish(&mut self) -> BooleanArray {
        let mut done = std::mem::replace(self, Bools::with_capacity(self.values.len()));
        BooleanArray::new(done.values.finish(), done.nulls.finish())
    }
}

/// A string column's values: text and offsets in plain vectors, each short
/// value copied in one fixed 16-byte move instead of a call into `memcpy`
/// (Arrow's builder makes that call for every value, which was a tenth of
/// decoding event lines).
#[derive(Debug)]
struct StrValues {
    /// The values' text, then slack: `text[..len]` is theirs, and at least
    /// [`StrValues::COPY_BYTES`] more are always there to copy into.
    text: Vec<u8>,
    len: usize,
    ends: Ends,
}

/// Where each value of a string or list column starts (then where the last
/// one ends), and which values are null.
#[derive(Debug)]
struct Ends {
    offsets: Vec<i32>,
    nulls: NullBufferBuilder,
}

impl Ends {
    fn with_capacity(values: usize) -> Ends {
        let mut offsets = Vec::with_capacity(values + 1);
        offsets.push(0);
        Ends {
            offsets,
            nulls: NullBufferBuilder::new(values),
        }
    }

    /// A value that ends at `end`.
    #[inline]
    fn push(&mut self, end: usize) {
        // Batches are cut long before their text or tags could reach 2^31
        // (`BATCH_BYTES_MAX`).
        let end = i32::try_from(end).expect("a batch's values are under 2^31 bytes or items");
        self.offsets.push(end);
        self.nulls.append_non_null();
    }

    fn append_nulls(&mut self, n: usize) {
        let at = *self.offsets.last().expect("offsets start at 0");
        self.offsets.extend(std::iter::repeat_n(at, n));
        self.nulls.append_n_nulls(n);
    }

    /// Values held.
    fn count(&self) -> usize {
        self.offsets.len() - 1
    }

    /// Keeps the first `n` values.
    fn truncate(&mut self, n: usize) {
        self.offsets.truncate(n + 1);
        self.nulls.truncate(n);
    }

    /// Where value `n` starts (where the first `n` end).
    fn start_of(&self, n: usize) -> usize {
        self.offsets[n] as usize
    }

    fn finish(self) -> (OffsetBuffer<i32>, Option<NullBuffer>) {
        let mut nulls = self.nulls;
        (
            OffsetBuffer::new(ScalarBuffer::from(self.offsets)),
            nulls.finish(),
        )
    }
}

impl StrValues {
    /// Bytes moved at once for a value this short or shorter.
    const COPY_BYTES: usize = 16;

    /// Room for `values` values of `text_bytes` bytes in all.
    fn with_capacity(values: usize, text_bytes: usize) -> StrValues {
        StrValues {
            text: vec![0; text_bytes + Self::COPY_BYTES],
            len: 0,
            ends: Ends::with_capacity(values),
        }
    }

    #[inline]
    fn push(&mut self, src: &[u8], value: Span) {
        let (start, end) = (value.start as usize, value.end as usize);
        let n = end - start;
        if self.len + n + Self::COPY_BYTES > self.text.len() {
            let grown = (self.text.len() * 2).max(self.len + n + Self::COPY_BYTES);
            self.text.resize(grown, 0);
        }
        match src.get(start..start + Self::COPY_BYTES) {
            // The bytes after the value land in the slack, and the next
            // value overwrites them.
            Some(block) if n <= Self::COPY_BYTES => {
                self.text[self.len..self.len + Self::COPY_BYTES].copy_from_slice(block)
            }
            _ => self.text[self.len..self.len + n].copy_from_slice(&src[start..end]),
        }
        self.len += n;
        self.ends.push(self.len);
    }

    fn append_nulls(&mut self, n: usize) {
        self.ends.append_nulls(n);
    }

    /// Keeps the first `n` values, and only their text.
    fn truncate(&mut self, n: usize) {
        if n < self.ends.count() {
            self.ends.truncate(n);
            self.len = self.ends.start_of(n);
        }
    }

    /// The values so far as an array; starts over with room for as many.
    fn finish(&mut self) -> StringArray {
        let values = self.ends.count();
        let done = std::mem::replace(self, StrValues::with_capacity(values, self.len));
        let mut text = done.text;
        text.truncate(done.len);
        let (offsets, nulls) = done.ends.finish();
        // Arrow checks the text again (UTF-8, and each value's bounds). Each
        // value is a span checked when its line was read, but only `unsafe`
        // could skip the check, and `unsafe` stays in the leaf's
        // shared-memory module.
        StringArray::try_new(offsets, Buffer::from_vec(text), nulls)
            .expect("spans checked as UTF-8 make UTF-8 text")
    }
}

/// A tags column's values: lists of strings, the strings in one
/// [`StrValues`] (so each is one short move, as a string column's are).
#[derive(Debug)]
struct TagValues {
    items: StrValues,
    /// Where each list starts in `items`.
    ends: Ends,
}

impl TagValues {
    /// Room for `lists` lists of `items` strings of `text_bytes` bytes.
    fn with_capacity(lists: usize, items: usize, text_bytes: usize) -> TagValues {
        TagValues {
            items: StrValues::with_capacity(items, text_bytes),
            ends: Ends::with_capacity(lists),
        }
    }

    #[inline]
    fn push(&mut self, src: &[u8], tags: &[Span]) {
        for &t in tags {
            self.items.push(src, t);
        }
        self.end_list();
    }

    /// Ends a list at the last item pushed into `items`.
    #[inline]
    fn end_list(&mut self) {
        self.ends.push(self.items.ends.count());
    }

    fn append_nulls(&mut self, n: usize) {
        self.ends.append_nulls(n);
    }

    /// Keeps the first `n` lists, and only their items (items pushed for
    /// a list not ended are dropped too).
    fn truncate(&mut self, n: usize) {
        if n < self.ends.count() {
            self.ends.truncate(n);
        }
        self.items.truncate(self.ends.start_of(n));
    }

    /// The lists so far as an array; starts over with room for as many.
    fn finish(&mut self) -> ListArray {
        let (lists, items) = (self.ends.count(), self.items.ends.count());
        let mut done =
            std::mem::replace(self, TagValues::with_capacity(lists, items, self.items.len));
        let DataType::List(field) = tags_type() else {
            unreachable!("tags are a list")
        };
        let (offsets, nulls) = done.ends.finish();
        ListArray::try_new(field, offsets, Arc::new(done.items.finish()), nulls)
            .expect("offsets made one by one over the items")
    }
}

/// A column this builder has stored values in; kept across batches, so a
/// line's keys find their columns by the order they came in last time
/// (see `follower`).
#[derive(Debug)]
struct Column {
    name: String,
    column_type: ColumnType,
    values: Values,
    /// Values (not nulls) in the batch being built: a column without any is
    /// left out of it.
    non_null: usize,
    /// The last line that named this column: a second key naming it in
    /// the same line is a duplicate.
    seen_in: u64,
    /// Rows (values and nulls) in the batch being built.
    len: usize,
    /// The column whose key followed this one's last time: lines of one
    /// source mostly list their keys in one order, so a compare finds the
    /// next key's column without hashing, and a key left out of a line
    /// costs one lookup, not one for every key after it.
    follower: usize,
}

impl Column {
    fn new(name: &str, column_type: ColumnType, seen_in: u64) -> Column {
        Column {
            name: name.to_string(),
            column_type,
            values: Values::new(column_type),
            non_null: 0,
            seen_in,
            len: 0,
            follower: NO_COLUMN,
        }
    }

    #[inline]
    fn pad_to(&mut self, rows: usize) {
        if self.len < rows {
            self.values.append_nulls(rows - self.len);
            self.len = rows;
        }
    }

    #[inline]
    fn push(&mut self, src: &[u8], tags: &[Span], raw: Raw) {
        self.values.push(src, tags, raw);
        self.stored();
    }

    /// Counts a value just pushed into `values`.
    #[inline]
    fn stored(&mut self) {
        self.len += 1;
        self.non_null += 1;
    }

    /// Takes back what a line started at row `rows` stored: at most one
    /// value (a line names a column once), and any tag pushed for a list
    /// it did not end.
    fn take_back(&mut self, rows: usize) {
        if self.len >= rows {
            self.non_null -= self.len - rows;
            self.len = rows;
            self.values.truncate(rows);
        }
    }

    /// The values so far as an array; the column starts over, empty.
    fn finish(&mut self) -> ArrayRef {
        self.len = 0;
        self.non_null = 0;
        self.values.finish()
    }
}

/// No column (see `Column::follower`).
const NO_COLUMN: usize = usize::MAX;

/// Key equality for short keys without a call into `memcmp`: two loads
/// per side (overlapping) for keys of 4 to 16 bytes.
#[inline]
fn same_key(a: &[u8], b: &[u8]) -> bool {
    let n = a.len();
    if n != b.len() {
        return false;
    }
    let w4 = |s: &[u8], i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let w8 = |s: &[u8], i: usize| u64::from_le_bytes(s[i..i + 8].try_into().expect("eight bytes"));
    match n {
        0..=3 => a.iter().zip(b).all(|(x, y)| x == y),
        4..=8 => w4(a, 0) == w4(b, 0) && w4(a, n - 4) == w4(b, n - 4),
        9..=16 => w8(a, 0) == w8(b, 0) && w8(a, n - 8) == w8(b, n - 8),
        _ => a == b,
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

/// What one [`TextChunk`] decoded into ([`BatchBuilder::decode_chunk`]).
/// Line numbers count from the chunk's first line (1).
#[derive(Debug, Default)]
pub struct DecodedChunk {
    /// In input order; an error ends them (nothing after it was built).
    pub batches: Vec<Result<DecodedBatch>>,
    pub rejections: Vec<Rejection>,
    /// Lines read from the chunk, blank and rejected ones too: all of
    /// them, unless a batch could not be built.
    pub lines: u64,
}

/// The rejection of a line longer than [`LINE_BYTES_MAX`].
fn oversized(line: u64, len_bytes: usize) -> Rejection {
    Rejection {
        line,
        reason: format!("line of {len_bytes} bytes exceeds the limit of {LINE_BYTES_MAX} bytes"),
    }
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
    /// The column of the last line's first key (see `Column::follower`).
    first_key: usize,
    /// The column of each of the line's keys (reused from line to line).
    slots: Vec<Option<usize>>,
    /// The column of each key of the last line, by position: lines of one
    /// source mostly list the same keys in the same order, so a line's k-th
    /// key is compared with one name found without the keys before it (the
    /// followers' chain of loads, from key to key, is the fallback).
    shape: Vec<usize>,
    /// The keys most lines have had lately, as text, and their columns
    /// (columns are only ever added, so their positions stay valid).
    shape_keys: ShapeKeys,
    /// The line being read (reused from line to line).
    read: LineEntries,
    /// Counts lines pushed, to find a key named twice (`Column::seen_in`).
    stamp: u64,
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
            columns: vec![Column::new(time_column, ColumnType::Timestamp, 0)],
            index: HashMap::from([(time_column.to_string(), TIME_INDEX)]),
            first_key: TIME_INDEX,
            slots: Vec::new(),
            shape: Vec::new(),
            shape_keys: ShapeKeys::default(),
            read: LineEntries::default(),
            stamp: 0,
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
        self.push_json_bytes(line, text.as_bytes())
    }

    /// Adds one JSON line that may not be UTF-8 (then it is refused); on
    /// error the batch is unchanged.
    pub fn push_json_bytes(&mut self, line: u64, text: &[u8]) -> Result<(), Rejection> {
        match self.push_json_in_shape(line, text, true) {
            Some(_) => Ok(()),
            None => self.push_json_read(line, text),
        }
    }

    /// Adds the JSON line that starts `text`, when it is in the usual keys
    /// ([`ShapeKeys`]) and ends in `text` (at a line feed, or at its end
    /// when `to_end`); where it ends, if it was added. Any other line is
    /// left for [`BatchBuilder::push_json_read`], with nothing added.
    fn push_json_in_shape(&mut self, line: u64, text: &[u8], to_end: bool) -> Option<usize> {
        // A line in the usual keys goes straight into its columns.
        if !self.shape_keys.worth_trying() {
            return None;
        }
        let rows = self.rows();
        match json::fast::store_line_shaped(text, to_end, &self.shape_keys, &mut self.columns, rows)
        {
            Ok((has_time, end)) => {
                self.shape_keys.hit();
                // Counted as every line is, so a stale `seen_in` never
                // equals the next line's stamp.
                self.stamp += 1;
                self.end_line(line, end, rows, has_time);
                Some(end)
            }
            Err(json::fast::Unstored::Keys) => {
                self.shape_keys.missed();
                None
            }
            Err(json::fast::Unstored::Value) => None,
        }
    }

    /// Adds a JSON line the long way. It is read into spans and values (no
    /// `Value` tree, and no allocation per line) by the fast reader, which
    /// takes the common shapes; both it and the shaped reader check UTF-8
    /// only where a string has a byte past ASCII. Anything else (escapes,
    /// syntax errors, nesting, a bad time) is checked as UTF-8 whole and
    /// goes through serde_json, which also words the errors.
    fn push_json_read(&mut self, line: u64, text: &[u8]) -> Result<(), Rejection> {
        let mut read = std::mem::take(&mut self.read);
        let result = if json::fast::read_line(text, &self.time_column, &mut read) {
            self.push_entries(line, text.len(), text, &read)
        } else {
            let read_serde = std::str::from_utf8(text)
                .map_err(|_| "not valid UTF-8".to_string())
                .and_then(|text| {
                    json::read_line_serde(text, &self.time_column, &mut read)
                        .map_err(|e| format!("invalid JSON: {e}"))
                });
            match read_serde {
                Ok(()) => self.push_entries(line, text.len(), read.scratch.as_bytes(), &read),
                Err(reason) => Err(Rejection { line, reason }),
            }
        };
        self.read = read;
        result
    }

    /// Decodes every line of `chunk` as `format` into batches of at most
    /// [`BATCH_ROWS_MAX`] rows and [`BATCH_BYTES_MAX`] / 2 bytes of lines
    /// (usually one batch: a chunk is about a batch's worth). Line numbers,
    /// in the batches and the rejections, count from the chunk's first
    /// line (1). Stops at a batch that cannot be built.
    pub fn decode_chunk(&mut self, chunk: &mut TextChunk, format: InputFormat) -> DecodedChunk {
        // JSON lines are checked as UTF-8 as they are read (only where they
        // are not ASCII); CSV's, the whole chunk at once.
        if format == InputFormat::Csv {
            chunk.check_utf8();
        }
        let mut decoded = DecodedChunk::default();
        let uncut = chunk.uncut;
        let mut lines = chunk.lines();
        loop {
            if self.is_full() {
                match self.finish() {
                    Ok(batch) => decoded.batches.extend(batch.map(Ok)),
                    Err(e) => {
                        decoded.batches.push(Err(e));
                        decoded.lines = lines.passed();
                        return decoded;
                    }
                }
            }
            // A JSON line of an uncut chunk, in the usual keys, is read
            // where it lies, and its end found as it is read: one pass.
            if format == InputFormat::Jsonl {
                if let Some((rest, to_end)) = lines.uncut_rest() {
                    if let Some(end) = self.push_json_in_shape(lines.passed() + 1, rest, to_end) {
                        lines.pass_line(end);
                        continue;
                    }
                }
            }
            let result = match format {
                InputFormat::Jsonl => match lines.next_bytes() {
                    None => break,
                    Some(LineBytes::Text { bytes, .. }) if is_blank(bytes) => Ok(()),
                    // Not in the usual keys, or not worth trying them:
                    // the uncut chunk's line was tried above already.
                    Some(LineBytes::Text { number, bytes }) if uncut => {
                        self.push_json_read(number, bytes)
                    }
                    Some(LineBytes::Text { number, bytes }) => self.push_json_bytes(number, bytes),
                    Some(LineBytes::Oversized { number, len_bytes }) => {
                        Err(oversized(number, len_bytes))
                    }
                },
                InputFormat::Csv => match lines.next_text() {
                    None => break,
                    Some(Line::Text { text, .. }) if text.trim().is_empty() => Ok(()),
                    Some(Line::Text { number, text }) => self.push_csv(number, text),
                    Some(Line::Oversized { number, len_bytes }) => {
                        Err(oversized(number, len_bytes))
                    }
                    Some(Line::NotUtf8 { number }) => Err(Rejection {
                        line: number,
                        reason: "not valid UTF-8".to_string(),
                    }),
                },
            };
            if let Err(r) = result {
                decoded.rejections.push(r);
            }
        }
        decoded.lines = lines.passed();
        match self.finish() {
            Ok(batch) => decoded.batches.extend(batch.map(Ok)),
            Err(e) => decoded.batches.push(Err(e)),
        }
        decoded
    }

    /// Adds one CSV line. The first call takes the header.
    pub fn push_csv(&mut self, line: u64, text: &str) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        let header = match &self.csv_header {
            Some(Ok(header)) => header,
            Some(Err(why)) => return Err(reject(format!("no usable CSV header ({why})"))),
            None => {
                // The header's own rejection has its number; later lines
                // say why (numbers count within a chunk until the chunks
                // are put back in order, so none is written into a reason).
                let header = read_csv_header(text);
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
        let mut read = std::mem::take(&mut self.read);
        read.clear();
        for (name, raw) in header.iter().zip(record) {
            if raw.is_empty() {
                continue;
            }
            let cell = if name == &self.time_column {
                match time_from_text(&raw) {
                    Ok(cell) => cell,
                    Err(reason) => {
                        self.read = read;
                        return Err(reject(format!("column `{name}`: {reason}")));
                    }
                }
            } else {
                self.cell_from_csv(name, raw)
            };
            let value = read.raw_of(cell);
            read.push(name, value);
        }
        let result = self.push_entries(line, text.len(), read.scratch.as_bytes(), &read);
        self.read = read;
        result
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

    /// Adds one line read into `read`, whose spans point into `src`.
    fn push_entries(
        &mut self,
        line: u64,
        len_bytes: usize,
        src: &[u8],
        read: &LineEntries,
    ) -> Result<(), Rejection> {
        if self.push_in_shape(line, len_bytes, src, read) {
            return Ok(());
        }
        // One buffer for every line's column slots.
        let mut slots = std::mem::take(&mut self.slots);
        slots.clear();
        let result = self.push_entries_into(line, len_bytes, src, read, &mut slots);
        self.slots = slots;
        result
    }

    /// Adds a line whose keys are the last line's, in its order, and whose
    /// values each fit their column as it is (or are null): the common case,
    /// which needs no lookup, no check for a key named twice (the last
    /// line's columns are distinct: a line naming one twice never sets the
    /// shape) and no known types. False, with nothing added, for any other
    /// line, which `push_entries_into` then takes the long way.
    #[inline]
    fn push_in_shape(
        &mut self,
        line: u64,
        len_bytes: usize,
        src: &[u8],
        read: &LineEntries,
    ) -> bool {
        let entries = &read.entries;
        let shape = &self.shape;
        if entries.len() != shape.len() {
            return false;
        }
        for (entry, &i) in entries.iter().zip(shape) {
            let Some(column) = self.columns.get(i) else {
                return false;
            };
            if !same_key(column.name.as_bytes(), entry.key.bytes(src)) {
                return false;
            }
            let fits = match (column.column_type, entry.value) {
                (_, Raw::Null) => true,
                (ColumnType::Float64, Raw::Int(_)) => true,
                (_, Raw::Bad(_)) => false,
                (t, value) => value.column_type() == Some(t),
            };
            if !fits {
                return false;
            }
        }
        // Lines are counted here too, so a stale `seen_in` never equals
        // the next line's stamp.
        self.stamp += 1;
        let rows = self.rows();
        let mut has_time = false;
        for (entry, &i) in entries.iter().zip(shape) {
            if let Raw::Null = entry.value {
                continue; // the column pads it
            }
            let column = &mut self.columns[i];
            column.pad_to(rows);
            column.push(src, &read.tags, entry.value);
            has_time |= i == TIME_INDEX;
        }
        self.end_line(line, len_bytes, rows, has_time);
        true
    }

    /// Completes a line whose values are stored: the ingest time when it
    /// had none, and its number and size in the batch.
    #[inline]
    fn end_line(&mut self, line: u64, len_bytes: usize, rows: usize, has_time: bool) {
        if !has_time {
            let column = &mut self.columns[TIME_INDEX];
            column.pad_to(rows);
            column.push(&[], &[], Raw::Time(self.ingest_time_us));
        }
        self.lines.push(line);
        self.bytes += len_bytes;
    }

    /// The column of a line's `k`-th key when it is not where the last
    /// line had it: the column that followed the key before it last time,
    /// else a lookup by name (which teaches the follower). The key is a
    /// span of `src`, made text only for the lookup.
    fn slot_by_follower(
        &mut self,
        k: usize,
        key: Span,
        src: &[u8],
        slots: &[Option<usize>],
    ) -> Option<usize> {
        let predicted = match k {
            0 => self.first_key,
            _ => slots[k - 1].map_or(NO_COLUMN, |p: usize| self.columns[p].follower),
        };
        match self.columns.get(predicted) {
            Some(c) if same_key(c.name.as_bytes(), key.bytes(src)) => Some(predicted),
            _ => {
                let slot = self.index.get(key.of(src)).copied();
                if let Some(i) = slot {
                    match k {
                        0 => self.first_key = i,
                        _ => {
                            if let Some(p) = slots[k - 1] {
                                self.columns[p].follower = i;
                            }
                        }
                    }
                }
                slot
            }
        }
    }

    fn push_entries_into(
        &mut self,
        line: u64,
        len_bytes: usize,
        src: &[u8],
        read: &LineEntries,
        slots: &mut Vec<Option<usize>>,
    ) -> Result<(), Rejection> {
        let reject = |reason: String| Rejection { line, reason };
        let entries = &read.entries;
        self.stamp += 1;
        let stamp = self.stamp;
        // Find each key's column, and refuse a key named twice or a value
        // that cannot be stored. Only a column new to this builder, or a
        // value its type does not take as is, needs the shared known types.
        let mut needs_known = false;
        let mut same_shape = entries.len() == self.shape.len();
        for (k, entry) in entries.iter().enumerate() {
            let key = entry.key.bytes(src);
            let in_shape = self.shape.get(k).copied().unwrap_or(NO_COLUMN);
            let slot = match self.columns.get(in_shape) {
                Some(c) if same_key(c.name.as_bytes(), key) => Some(in_shape),
                _ => {
                    same_shape = false;
                    self.slot_by_follower(k, entry.key, src, slots)
                }
            };
            let twice = match slot {
                Some(i) => std::mem::replace(&mut self.columns[i].seen_in, stamp) == stamp,
                // Not a column yet: only another new key can share its name.
                None => entries[..k]
                    .iter()
                    .zip(slots.iter())
                    .any(|(e, s)| s.is_none() && e.key.bytes(src) == key),
            };
            if twice {
                let name = entry.key.of(src);
                return Err(reject(format!("column `{name}` appears twice")));
            }
            if let Raw::Bad(reason) = entry.value {
                let name = entry.key.of(src);
                return Err(reject(format!("column `{name}`: {}", reason.of(src))));
            }
            if let Some(found) = entry.value.column_type() {
                match slot {
                    Some(i) => {
                        let ours = self.columns[i].column_type;
                        if ours != found
                            && !(ours == ColumnType::Float64 && found == ColumnType::Int64)
                        {
                            needs_known = true;
                        }
                    }
                    None => needs_known = true,
                }
            }
            slots.push(slot);
        }
        if !same_shape {
            self.shape.clear();
            self.shape
                .extend(slots.iter().map(|slot| slot.unwrap_or(NO_COLUMN)));
            if self.shape_keys.stale() {
                self.shape_keys.set(&self.shape, &self.columns);
            }
        }
        // Check the whole line first, so a rejected line leaves no trace;
        // under one lock, so no other builder changes a type in between.
        let mut known = if needs_known {
            if let Some((order, k)) = &self.chunk {
                order.wait_before(*k);
            }
            let known = self.known.lock().expect("known types poisoned");
            let mut new_columns = 0;
            for entry in entries {
                let Some(found) = entry.value.column_type() else {
                    continue;
                };
                let name = entry.key.of(src);
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
        for (entry, &slot) in entries.iter().zip(slots.iter()) {
            let Some(found) = entry.value.column_type() else {
                continue; // null: the column pads it
            };
            let unified = known.as_mut().map(|known| {
                let name = entry.key.of(src);
                match known.get_mut(name) {
                    Some(expected) => {
                        *expected = expected.unify(found).expect("checked above");
                        *expected
                    }
                    None => {
                        known.insert(name.to_string(), found);
                        found
                    }
                }
            });
            let i = match slot {
                Some(i) => i,
                None => {
                    let name = entry.key.of(src);
                    let column_type = unified.expect("a new column takes the known types");
                    self.columns.push(Column::new(name, column_type, stamp));
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
            column.push(src, &read.tags, entry.value);
            has_time |= i == TIME_INDEX;
        }
        drop(known);
        self.end_line(line, len_bytes, rows, has_time);
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
                column.finish();
                continue;
            }
            column.pad_to(lines.len());
            fields.push(Field::new(
                &column.name,
                column.column_type.to_arrow(),
                true,
            ));
            arrays.push(column.finish());
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
    if let Some(us) = plain_utc_time_us(text.as_bytes()) {
        return Ok(Cell::Time(us));
    }
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

/// [`time_from_text`] for a string read from a line, when it is a time;
/// the common RFC 3339 shape read without the checks of text.
#[inline]
fn time_from_bytes(text: &[u8]) -> Option<i64> {
    if let Some(us) = plain_utc_time_us(text) {
        return Some(us);
    }
    match time_from_text(std::str::from_utf8(text).ok()?) {
        Ok(Cell::Time(us)) => Some(us),
        _ => None,
    }
}

/// Microseconds since the epoch of the commonest RFC 3339 shape,
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, read as chrono reads it (the fraction
/// cut to microseconds); `None` for anything else, which chrono then reads
/// (offsets, leap seconds, lower case) or refuses.
fn plain_utc_time_us(t: &[u8]) -> Option<i64> {
    if t.len() < 20 || t[t.len() - 1] != b'Z' {
        return None;
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        t[from..from + len].iter().try_fold(0i64, |n, &d| {
            d.is_ascii_digit().then(|| n * 10 + i64::from(d - b'0'))
        })
    };
    if t[4] != b'-' || t[7] != b'-' || t[10] != b'T' || t[13] != b':' || t[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0, 4)?, num(5, 2)?, num(8, 2)?);
    let (hour, minute, second) = (num(11, 2)?, num(14, 2)?, num(17, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > month_days || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let fraction = &t[19..t.len() - 1];
    let micros = match fraction {
        [] => 0,
        [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
            let mut us = 0;
            for k in 0..6 {
                let d = match digits.get(k) {
                    Some(d) if d.is_ascii_digit() => i64::from(d - b'0'),
                    Some(_) => return None,
                    None => 0,
                };
                us = us * 10 + d;
            }
            if !digits.iter().all(u8::is_ascii_digit) {
                return None;
            }
            us
        }
        _ => return None,
    };
    // Days from 1970-01-01 to the date (proleptic Gregorian, as chrono).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    Some(seconds * 1_000_000 + micros)
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

    use super::{seconds_to_us, time_from_text, Cell, LineEntries, Raw};

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
        use super::super::{
            seconds_to_us, time_from_bytes, Column, Entry, LineEntries, Raw, ShapeKeys, Span,
            Values,
        };

        fn span(start: usize, end: usize) -> Span {
            Span {
                start: start as u32,
                end: end as u32,
            }
        }

        /// Reads the line's (key, value) pairs in order into `out` (spans
        /// of `text`); false when it declines the line.
        pub fn read_line(text: &[u8], time_column: &str, out: &mut LineEntries) -> bool {
            out.clear();
            read(text, time_column, out).is_some()
        }

        /// Why [`store_line_shaped`] did not store a line.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub(in super::super) enum Unstored {
            /// Its keys are not the shape's: another key, one out of the
            /// shape's order, or one written differently.
            Keys,
            /// Its keys are, but a value is not one this reader stores as it
            /// is in its column: another type, an escape, a bad time, or
            /// anything [`read_line`] declines.
            Value,
        }

        /// Stores the line that starts `text` and lists `keys`' keys, in
        /// their order and as they are written there (any may be left out),
        /// straight into their columns, after `rows` rows. Each value must
        /// be of its column's type as it is (an int into a float column is
        /// one). The line ends at a line feed, or at the end of `text` when
        /// `to_end` (`text` is then the line, or runs to its chunk's end).
        /// Answers whether it had a time, and where it ends (its line feed,
        /// or the end of `text`); when it does not store the line, every
        /// column is as it was.
        pub(in super::super) fn store_line_shaped(
            text: &[u8],
            to_end: bool,
            keys: &ShapeKeys,
            columns: &mut [Column],
            rows: usize,
        ) -> Result<(bool, usize), Unstored> {
            let stored = store(text, to_end, keys, columns, rows);
            if stored.is_err() {
                for &c in &keys.columns {
                    columns[c].take_back(rows);
                }
            }
            stored
        }

        fn store(
            text: &[u8],
            to_end: bool,
            keys: &ShapeKeys,
            columns: &mut [Column],
            rows: usize,
        ) -> Result<(bool, usize), Unstored> {
            use Unstored::{Keys, Value};
            let mut has_time = false;
            let mut from = 0;
            let mut at = open(text).ok_or(Value)?;
            loop {
                let i = match at {
                    Member::Key(i) => i,
                    Member::Closed(end) => {
                        let end = closed(text, end, to_end).ok_or(Value)?;
                        return Ok((has_time, end));
                    }
                };
                let (k, next) = keys.find(text, i, from).ok_or(Keys)?;
                from = k + 1;
                let i = past_colon(text, next).ok_or(Value)?;
                let time = keys.time_at == Some(k);
                let column = &mut columns[keys.columns[k]];
                let (next, stored) = store_value(text, i, time, column, rows).ok_or(Value)?;
                has_time |= stored && time;
                at = after_value(text, next).ok_or(Value)?;
            }
        }

        /// Stores the value at `i` in `column` (padded to `rows` first),
        /// as [`value`] reads it; a null is not stored. The index past it,
        /// and whether it was stored.
        #[inline(always)]
        fn store_value(
            text: &[u8],
            i: usize,
            time: bool,
            column: &mut Column,
            rows: usize,
        ) -> Option<(usize, bool)> {
            let b = text;
            let first = *b.get(i)?;
            if first == b'n' {
                return b[i..].starts_with(b"null").then_some((i + 4, false));
            }
            column.pad_to(rows);
            let next = match (&mut column.values, first) {
                (Values::Str(s), b'"') if !time => {
                    let (span, next) = string(b, i)?;
                    s.push(b, span);
                    next
                }
                (Values::Int(v), b'-' | b'0'..=b'9') if !time => match number(b, i, false)? {
                    (Raw::Int(x), next) => {
                        v.push(x);
                        next
                    }
                    _ => return None,
                },
                (Values::Float(v), b'-' | b'0'..=b'9') if !time => match number(b, i, false)? {
                    (Raw::Int(x), next) => {
                        v.push(x as f64);
                        next
                    }
                    (Raw::Float(x), next) => {
                        v.push(x);
                        next
                    }
                    _ => return None,
                },
                (Values::Bool(v), b't') if !time && b[i..].starts_with(b"true") => {
                    v.push(true);
                    i + 4
                }
                (Values::Bool(v), b'f') if !time && b[i..].starts_with(b"false") => {
                    v.push(false);
                    i + 5
                }
                (Values::Tags(t), b'[') if !time => {
                    let next = string_list(b, i, |s| t.items.push(b, s))?;
                    t.end_list();
                    next
                }
                (Values::Time(v), b'"') if time => {
                    let (s, next) = string(b, i)?;
                    v.push(time_from_bytes(s.bytes(b))?);
                    next
                }
                (Values::Time(v), b'-' | b'0'..=b'9') if time => match number(b, i, true)? {
                    (Raw::Time(x), next) => {
                        v.push(x);
                        next
                    }
                    _ => return None,
                },
                _ => return None,
            };
            column.stored();
            Some((next, true))
        }

        /// Outside its strings, a line read here is ASCII (whitespace, JSON's
        /// punctuation, numbers and literals), and each string is checked as
        /// UTF-8 ([`string`]): a line that is not UTF-8 is declined.
        fn read(text: &[u8], time_column: &str, out: &mut LineEntries) -> Option<()> {
            let mut at = open(text)?;
            loop {
                let i = match at {
                    Member::Key(i) => i,
                    Member::Closed(end) => return closed(text, end, true).map(|_| ()),
                };
                let (key, next) = string(text, i)?;
                let time = super::super::same_key(key.bytes(text), time_column.as_bytes());
                let next = value(text, past_colon(text, next)?, time, key, out)?;
                at = after_value(text, next)?;
            }
        }

        /// Where a walk over an object's members is.
        enum Member {
            /// At a member's key, which starts here.
            Key(usize),
            /// Past the object's closing brace, which ends here.
            Closed(usize),
        }

        /// The first member of the object `b` opens with (after whitespace).
        #[inline(always)]
        fn open(b: &[u8]) -> Option<Member> {
            let i = skip_ws(b, 0);
            if b.get(i) != Some(&b'{') {
                return None;
            }
            let i = skip_ws(b, i + 1);
            Some(match b.get(i) {
                Some(b'}') => Member::Closed(i + 1),
                _ => Member::Key(i),
            })
        }

        /// The start of a member's value, for its key ending at `i`.
        #[inline(always)]
        fn past_colon(b: &[u8], i: usize) -> Option<usize> {
            let i = skip_ws(b, i);
            (b.get(i) == Some(&b':')).then(|| skip_ws(b, i + 1))
        }

        /// The next member, for a value ending at `i`.
        #[inline(always)]
        fn after_value(b: &[u8], i: usize) -> Option<Member> {
            let i = skip_ws(b, i);
            match b.get(i) {
                Some(b',') => Some(Member::Key(skip_ws(b, i + 1))),
                Some(b'}') => Some(Member::Closed(i + 1)),
                _ => None,
            }
        }

        /// Where the line ends (its line feed, or the end of `b` when
        /// `to_end`) if only whitespace follows an object that closed at
        /// `end`.
        #[inline(always)]
        fn closed(b: &[u8], end: usize, to_end: bool) -> Option<usize> {
            let i = skip_ws(b, end);
            match b.get(i) {
                Some(b'\n') => Some(i),
                None if to_end => Some(i),
                _ => None,
            }
        }

        /// Bytes that end the plain part of a JSON string: its closing
        /// quote, an escape, or a control character (invalid in JSON).
        const STOPS_STRING: [bool; 256] = {
            let mut t = [false; 256];
            let mut c = 0;
            while c < 0x20 {
                t[c] = true;
                c += 1;
            }
            t[b'"' as usize] = true;
            t[b'\\' as usize] = true;
            t
        };

        /// [`STOPS_STRING`] and every byte past ASCII.
        const STOPS_PLAIN: [bool; 256] = {
            let mut t = STOPS_STRING;
            let mut c = 0x80;
            while c < 0x100 {
                t[c] = true;
                c += 1;
            }
            t
        };

        /// Length of the plain run at the start of `b`, printable ASCII: up
        /// to the first byte in [`STOPS_PLAIN`] (none: `None`). Eight bytes
        /// at a time.
        #[inline]
        pub(crate) fn plain_len(b: &[u8]) -> Option<usize> {
            const ONES: u64 = 0x0101_0101_0101_0101;
            const HIGHS: u64 = 0x8080_8080_8080_8080;
            // High bit set in each byte that is zero (exact up to the first
            // one, which is all that is read).
            let zeros = |w: u64| w.wrapping_sub(ONES) & !w & HIGHS;
            let mut j = 0;
            while let Some(chunk) = b.get(j..j + 8) {
                let w = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
                let stops = zeros(w ^ (ONES * u64::from(b'"')))
                    | zeros(w ^ (ONES * u64::from(b'\\')))
                    // Below 0x20: control characters.
                    | (w.wrapping_sub(ONES * 0x20) & !w & HIGHS)
                    // Past ASCII.
                    | (w & HIGHS);
                if stops != 0 {
                    return Some(j + (stops.trailing_zeros() / 8) as usize);
                }
                j += 8;
            }
            b[j..]
                .iter()
                .position(|&c| STOPS_PLAIN[c as usize])
                .map(|k| j + k)
        }

        fn skip_ws(b: &[u8], mut i: usize) -> usize {
            // Not a line feed: JSON's whitespace, but it ends a line here.
            while let Some(b' ' | b'\t' | b'\r') = b.get(i) {
                i += 1;
            }
            i
        }

        /// The string opening at `i`, if it has no escape or control
        /// character and is UTF-8, and the index after its closing quote.
        #[inline(always)]
        fn string(b: &[u8], i: usize) -> Option<(Span, usize)> {
            if b.get(i) != Some(&b'"') {
                return None;
            }
            let start = i + 1;
            let mut end = start + plain_len(&b[start..])?;
            if b[end] >= 0x80 {
                end = past_ascii(b, end)?;
            }
            if b[end] != b'"' {
                return None;
            }
            Some((span(start, end), end + 1))
        }

        /// For a string whose ASCII run ends at `from`, on a byte past
        /// ASCII: where its plain part ends (as [`STOPS_STRING`] says),
        /// if the bytes from `from` to there are UTF-8 (those before are
        /// ASCII, so then the whole run is).
        #[cold]
        fn past_ascii(b: &[u8], from: usize) -> Option<usize> {
            let end = from + b[from..].iter().position(|&c| STOPS_STRING[c as usize])?;
            std::str::from_utf8(&b[from..end]).ok()?;
            Some(end)
        }

        #[inline(always)]
        fn value(
            text: &[u8],
            i: usize,
            time: bool,
            key: Span,
            out: &mut LineEntries,
        ) -> Option<usize> {
            // Each arm stores its entry where it is made: returned instead,
            // the entry was written to the stack and read back wider, which
            // stalled store forwarding on every key.
            let mut emit = |value: Raw, next: usize| {
                out.entries.push(Entry { key, value });
                Some(next)
            };
            let b = text;
            match *b.get(i)? {
                b'"' => {
                    let (s, next) = string(b, i)?;
                    let raw = if time {
                        // A bad time goes to serde_json's path, which words it.
                        match time_from_bytes(s.bytes(text)) {
                            Some(us) => Raw::Time(us),
                            None => return None,
                        }
                    } else {
                        Raw::Str(s)
                    };
                    emit(raw, next)
                }
                b'n' if b[i..].starts_with(b"null") => emit(Raw::Null, i + 4),
                b't' if !time && b[i..].starts_with(b"true") => emit(Raw::Bool(true), i + 4),
                b'f' if !time && b[i..].starts_with(b"false") => emit(Raw::Bool(false), i + 5),
                b'[' if !time => {
                    let first = out.tags.len();
                    let next = string_list(b, i, |s| out.tags.push(s))?;
                    let tags = Raw::Tags {
                        first: first as u32,
                        count: (out.tags.len() - first) as u32,
                    };
                    emit(tags, next)
                }
                b'-' | b'0'..=b'9' => {
                    let (raw, next) = number(text, i, time)?;
                    emit(raw, next)
                }
                _ => None,
            }
        }

        /// The list of strings opening at `i` (at its `[`), each handed to
        /// `item` in order, and the index past its `]`; `None` for a list
        /// of anything else (items handed on before stay handed on).
        #[inline(always)]
        fn string_list(b: &[u8], i: usize, mut item: impl FnMut(Span)) -> Option<usize> {
            let mut j = skip_ws(b, i + 1);
            if b.get(j) != Some(&b']') {
                loop {
                    let (s, next) = string(b, j)?;
                    item(s);
                    j = skip_ws(b, next);
                    match b.get(j) {
                        Some(b',') => j = skip_ws(b, j + 1),
                        Some(b']') => break,
                        _ => return None,
                    }
                }
            }
            Some(j + 1)
        }

        /// A number in JSON's grammar: an int64 when it has no fraction or
        /// exponent and fits, else a finite float. One pass over the digits,
        /// which also sums them: a float of at most 15 digits that is a
        /// power of ten up to 22 away from an integer is that integer times
        /// or over the power (both exact as f64, so one multiply or divide
        /// rounds correctly, to what `str::parse` gives); any other number
        /// goes to `str::parse`.
        ///
        /// Inlined into `value`: returned from a call, the (value, index)
        /// pair went through the stack in narrow stores and came back in
        /// one wide load, which stalled store forwarding on every number.
        #[inline(always)]
        pub(crate) fn number(text: &[u8], i: usize, time: bool) -> Option<(Raw, usize)> {
            const POW10: [f64; 23] = [
                1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14,
                1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22,
            ];
            let b = text;
            let negative = b[i] == b'-';
            let mut j = i + usize::from(negative);
            // The digits' value (wrapping past 19 digits: read only when
            // there are fewer) and how many there are.
            let (mut mantissa, mut count) = (0u64, 0u32);
            #[inline(always)]
            fn take(b: &[u8], mut j: usize, mantissa: &mut u64, count: &mut u32) -> usize {
                while let Some(&d) = b.get(j).filter(|d| d.is_ascii_digit()) {
                    *mantissa = mantissa.wrapping_mul(10).wrapping_add(u64::from(d - b'0'));
                    *count += 1;
                    j += 1;
                }
                j
            }
            match b.get(j) {
                Some(b'0') => {
                    j += 1;
                    count = 1;
                }
                Some(b'1'..=b'9') => j = take(b, j, &mut mantissa, &mut count),
                _ => return None,
            }
            let int_digits = count;
            let mut float = false;
            if b.get(j) == Some(&b'.') {
                if !b.get(j + 1).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                j = take(b, j + 1, &mut mantissa, &mut count);
                float = true;
            }
            let fraction_digits = count - int_digits;
            // The power of ten the digits are scaled by (None: too far).
            let mut scale = Some(-(fraction_digits as i32));
            if let Some(b'e' | b'E') = b.get(j) {
                j += 1;
                let minus = b.get(j) == Some(&b'-');
                if let Some(b'+' | b'-') = b.get(j) {
                    j += 1;
                }
                if !b.get(j).is_some_and(u8::is_ascii_digit) {
                    return None;
                }
                let mut exp = Some(0i32);
                while let Some(&d) = b.get(j).filter(|d| d.is_ascii_digit()) {
                    exp = exp
                        .and_then(|e| e.checked_mul(10))
                        .and_then(|e| e.checked_add(i32::from(d - b'0')));
                    j += 1;
                }
                let exp = exp.map(|e| if minus { -e } else { e });
                scale = scale.zip(exp).and_then(|(s, e)| s.checked_add(e));
                float = true;
            }
            // The number's text, for `str::parse` (ASCII, as just read).
            let s = || std::str::from_utf8(&b[i..j]).ok();
            let raw = if !float {
                let v: i64 = if count <= 18 {
                    let n = mantissa as i64;
                    if negative {
                        -n
                    } else {
                        n
                    }
                } else {
                    s()?.parse().ok()?
                };
                if v == 0 && negative {
                    return None; // serde_json reads -0 as a float
                }
                if time {
                    Raw::Time(v.checked_mul(1_000_000)?)
                } else {
                    Raw::Int(v)
                }
            } else {
                let m = mantissa as f64;
                let exact = match scale {
                    _ if count > 15 => None,
                    Some(k @ 0..=22) => Some(m * POW10[k as usize]),
                    Some(k @ -22..=-1) => Some(m / POW10[(-k) as usize]),
                    _ => None,
                };
                let v = match exact {
                    Some(v) if negative => -v,
                    Some(v) => v,
                    None => s()?.parse().ok()?,
                };
                if !v.is_finite() {
                    return None;
                }
                if time {
                    Raw::Time(seconds_to_us(v).ok()?)
                } else {
                    Raw::Float(v)
                }
            };
            Some((raw, j))
        }
    }

    /// Reads a line with serde_json into `out` (spans of `out.scratch`);
    /// the error is serde_json's.
    pub fn read_line_serde(
        text: &str,
        time_column: &str,
        out: &mut LineEntries,
    ) -> Result<(), serde_json::Error> {
        let mut de = serde_json::Deserializer::from_str(text);
        let entries = serde::Deserializer::deserialize_map(&mut de, LineVisitor { time_column })?;
        de.end()?;
        out.clear();
        for (name, parsed) in entries {
            let value = match parsed {
                Parsed::Cell(None) => Raw::Null,
                Parsed::Cell(Some(cell)) => out.raw_of(cell),
                Parsed::Bad(reason) => Raw::Bad(out.push_text(&reason)),
            };
            out.push(&name, value);
        }
        Ok(())
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
    use datafusion::arrow::array::{
        Array, AsArray, Float64Array, Int64Array, TimestampMicrosecondArray,
    };
    use datafusion::arrow::datatypes::{Int64Type, TimestampMicrosecondType};

    fn builder() -> BatchBuilder {
        BatchBuilder::new("events", "time", 42_000_000)
    }

    /// A string column's values, which must not be null.
    fn strings(batch: &RecordBatch, column: &str) -> Vec<String> {
        let values = batch.column_by_name(column).unwrap().as_string::<i32>();
        values.iter().map(|v| v.unwrap().to_string()).collect()
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
    fn keys_in_any_order_and_any_subset_land_in_their_own_columns() {
        // Lines that keep one key order (found by position), lines that
        // leave keys out or reorder them (found by follower or by name),
        // and a key named like a column's prefix.
        use rand::{seq::SliceRandom, Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let keys = ["time", "a", "ab", "b", "service", "c"];
        let mut b = builder();
        let mut expected: Vec<Vec<Option<i64>>> = Vec::new();
        for row in 0..3_000i64 {
            let mut order: Vec<usize> = (0..keys.len()).collect();
            match rng.random_range(0..4) {
                0 => order.shuffle(&mut rng),
                1 => order.retain(|_| rng.random_bool(0.7)),
                _ => {} // the usual order
            }
            let mut cells = vec![None; keys.len()];
            let fields: Vec<String> = order
                .iter()
                .map(|&k| {
                    let v = row * 10 + k as i64;
                    cells[k] = Some(v);
                    format!("\"{}\":{v}", keys[k])
                })
                .collect();
            b.push_json(row as u64 + 1, &format!("{{{}}}", fields.join(",")))
                .unwrap();
            expected.push(cells);
        }
        let batch = b.finish().unwrap().unwrap().batch;
        for (k, name) in keys.iter().enumerate().skip(1) {
            let column = batch.column_by_name(name).unwrap();
            let ints = column.as_any().downcast_ref::<Int64Array>().unwrap();
            for (row, cells) in expected.iter().enumerate() {
                assert_eq!(
                    ints.is_valid(row).then(|| ints.value(row)),
                    cells[k],
                    "column {name}, row {row}"
                );
            }
        }
    }

    #[test]
    fn string_values_of_any_length_and_nulls_read_back_across_batches() {
        // Short values (copied 16 bytes at once, also at a line's end),
        // long ones, non-ASCII text, empty strings and nulls.
        use datafusion::arrow::array::StringArray;
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let pieces = [
            "",
            "a",
            "é",
            "€uro",
            "x-y_z",
            "a longer value past sixteen bytes",
        ];
        let mut b = builder();
        for round in 0..3 {
            let mut expected = Vec::new();
            for row in 0..rng.random_range(1..2_000) {
                let value: Option<String> = rng.random_bool(0.8).then(|| {
                    (0..rng.random_range(0..4))
                        .map(|_| pieces[rng.random_range(0..pieces.len())])
                        .collect()
                });
                let line = match &value {
                    Some(v) if row % 2 == 0 => format!(r#"{{"time":1,"s":"{v}"}}"#),
                    Some(v) => format!(r#"{{"s":"{v}"}}"#),
                    None => r#"{"time":1}"#.to_string(),
                };
                b.push_json(row + 1, &line).unwrap();
                expected.push(value);
            }
            let batch = b.finish().unwrap().unwrap().batch;
            let column = batch.column_by_name("s").unwrap();
            let strings = column.as_any().downcast_ref::<StringArray>().unwrap();
            let got: Vec<Option<String>> = strings.iter().map(|v| v.map(String::from)).collect();
            assert_eq!(got, expected, "batch {round}");
        }
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
    fn a_line_shaped_like_the_last_is_checked_as_closely_as_any_other() {
        let mut b = builder();
        b.push_json(1, r#"{"time": 1, "x": 1, "s": "a"}"#).unwrap();
        // The same keys in the same order: a conflicting type, a key named
        // twice and a bad time are refused, and leave nothing behind.
        let err = b
            .push_json(2, r#"{"time": 2, "x": "one", "s": "b"}"#)
            .unwrap_err();
        assert!(err.reason.contains("column `x`"), "{err}");
        let err = b
            .push_json(3, r#"{"time": 3, "x": 3, "x": 4}"#)
            .unwrap_err();
        assert!(err.reason.contains("appears twice"), "{err}");
        let err = b
            .push_json(4, r#"{"time": "yesterday", "x": 4, "s": "d"}"#)
            .unwrap_err();
        assert!(err.reason.contains("column `time`"), "{err}");
        b.push_json(5, r#"{"time": 5, "x": null, "s": null}"#)
            .unwrap();
        b.push_json(6, r#"{"s": "f", "x": 6, "time": 6}"#).unwrap();
        b.push_json(7, r#"{"time": 7, "x": 7, "s": "g"}"#).unwrap();
        let batch = b.finish().unwrap().unwrap().batch;
        assert_eq!(batch.num_rows(), 4);
        let x = batch
            .column_by_name("x")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(
            x.iter().collect::<Vec<_>>(),
            [Some(1), None, Some(6), Some(7)]
        );
        let s = batch.column_by_name("s").unwrap().as_string::<i32>();
        assert_eq!(
            s.iter().collect::<Vec<_>>(),
            [Some("a"), None, Some("f"), Some("g")]
        );
        let time = batch.column_by_name("time").unwrap();
        let time = time.as_primitive::<TimestampMicrosecondType>();
        assert_eq!(
            time.values().to_vec(),
            [1_000_000, 5_000_000, 6_000_000, 7_000_000]
        );
    }

    #[test]
    fn lines_read_against_the_usual_keys_land_as_any_other() {
        let mut b = builder();
        let usual = |t: i64| format!(r#"{{"time": {t}, "x": {t}, "s": "s{t}", "tags": ["a"]}}"#);
        // Lines of the usual shape, some leaving a key out, a few with
        // spaces elsewhere or a key that starts like a usual one.
        let lines = [
            usual(1),
            usual(2),
            usual(3),
            r#"{"time": 4, "s": "s4", "tags": []}"#.to_string(),
            usual(5),
            r#"{ "time" :6 ,"x":6,  "s" : "s6" , "tags":["a","b"] }"#.to_string(),
            r#"{"time": 7, "xy": 7, "s": "s7", "tags": []}"#.to_string(),
            usual(8),
            r#"{"time": 9, "x": 9.5, "s": "s9", "tags": []}"#.to_string(),
            usual(10),
        ];
        for (n, line) in lines.iter().enumerate() {
            b.push_json(n as u64 + 1, line).unwrap();
        }
        // Read in the usual shape, a value that does not fit its column and
        // a bad time are refused as on any other line.
        let err = b
            .push_json(11, r#"{"time": 11, "x": "eleven", "s": "s11", "tags": []}"#)
            .unwrap_err();
        assert!(err.reason.contains("column `x`"), "{err}");
        let err = b
            .push_json(12, r#"{"time": "noon", "x": 12, "s": "s12", "tags": []}"#)
            .unwrap_err();
        assert!(err.reason.contains("column `time`"), "{err}");
        // Lines 3 to 6, 8 and 10 went straight into their columns (line 4
        // leaves a key out, in the usual order). Line 7 has another key;
        // lines 9, 11 and 12 have a value that does not go straight in (a
        // float for an int column, which widens it, text, a bad time): they
        // took the long way.
        assert_eq!(b.shape_keys.hits, 6);
        assert_eq!(b.shape_keys.misses, 1);
        let batch = b.finish().unwrap().unwrap().batch;
        assert_eq!(batch.num_rows(), 10);
        let x = batch.column_by_name("x").unwrap();
        let x = x.as_primitive::<datafusion::arrow::datatypes::Float64Type>();
        assert_eq!(
            x.iter().collect::<Vec<_>>(),
            [1.0, 2.0, 3.0, -1.0, 5.0, 6.0, -1.0, 8.0, 9.5, 10.0].map(|v| (v >= 0.0).then_some(v))
        );
        let xy = batch.column_by_name("xy").unwrap();
        assert_eq!(xy.as_primitive::<Int64Type>().value(6), 7);
        assert_eq!(xy.null_count(), 9);
        let expected: Vec<String> = (1..=10).map(|t| format!("s{t}")).collect();
        assert_eq!(strings(&batch, "s"), expected);
        let tags = batch.column_by_name("tags").unwrap().as_list::<i32>();
        assert_eq!(tags.value_length(5), 2);
        assert_eq!(tags.value_length(3), 0);
    }

    #[test]
    fn a_json_line_that_is_not_utf8_is_refused_whole_wherever_the_bad_byte_is() {
        let mut b = builder();
        let good =
            |t: i64| format!(r#"{{"time": {t}, "s": "é{t}€", "tags": ["😀", "t"], "ключ": "ü"}}"#);
        // Enough good lines that the bad ones are read against their keys.
        for t in 1..=8 {
            b.push_json_bytes(t as u64, good(t).as_bytes()).unwrap();
        }
        let bad: [&[u8]; 8] = [
            b"{\"time\": 9, \"s\": \"a\xffb\", \"tags\": [], \"\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\": \"u\"}",
            b"{\"time\": 9, \"s\": \"x\", \"tags\": [\"\xc3\"], \"\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87\": \"u\"}",
            // A character cut short at the end of a string, an overlong
            // encoding, a surrogate.
            b"{\"time\": 9, \"s\": \"\xe2\x82\", \"tags\": []}",
            b"{\"time\": 9, \"s\": \"\xc0\xaf\"}",
            b"{\"time\": 9, \"s\": \"\xed\xa0\x80\"}",
            // In a key, outside any string, and in a line only serde_json reads.
            b"{\"time\": 9, \"\xff\": 1}",
            b"{\"time\": 9, \"s\": \"x\"}\xff",
            b"{\"time\": 9, \"s\": \"\\n\xff\"}",
        ];
        for (k, line) in bad.iter().enumerate() {
            let err = b.push_json_bytes(100 + k as u64, line).unwrap_err();
            assert_eq!(err.line, 100 + k as u64);
            assert_eq!(err.reason, "not valid UTF-8", "line {k}");
        }
        b.push_json_bytes(9, good(9).as_bytes()).unwrap();
        assert!(b.shape_keys.hits > 0);
        let batch = b.finish().unwrap().unwrap().batch;
        assert_eq!(batch.num_rows(), 9);
        let expected: Vec<String> = (1..=9).map(|t| format!("é{t}€")).collect();
        assert_eq!(strings(&batch, "s"), expected);
        let tags = batch.column_by_name("tags").unwrap().as_list::<i32>();
        assert_eq!(tags.value(8).as_string::<i32>().value(0), "😀");
        let other = batch.column_by_name("ключ").unwrap().as_string::<i32>();
        assert_eq!(other.value(8), "ü");
    }

    #[test]
    fn a_blank_line_is_whitespace_as_trim_sees_it() {
        for (line, blank) in [
            (&b""[..], true),
            (b" \t \r", true),
            ("\u{a0}\u{2003} ".as_bytes(), true),
            (b"{}", false),
            (b"  {}", false),
            (b" \xff", false),
            ("\u{a0}x".as_bytes(), false),
        ] {
            assert_eq!(is_blank(line), blank, "{line:?}");
        }
    }

    #[test]
    fn a_source_that_changes_shape_every_line_is_read_whole() {
        let mut b = builder();
        for t in 1..=40 {
            let line = match t % 2 {
                0 => format!(r#"{{"time": {t}, "a": {t}, "b\"q": "x"}}"#),
                _ => format!(r#"{{"time": {t}, "b\"q": "y", "c": true}}"#),
            };
            b.push_json(t as u64, &line).unwrap();
        }
        // Lines are no longer read against a shape once most missed it.
        assert_eq!(b.shape_keys.hits, 0);
        assert!(b.shape_keys.misses <= 5, "{}", b.shape_keys.misses);
        let batch = b.finish().unwrap().unwrap().batch;
        assert_eq!(batch.num_rows(), 40);
        let a = batch
            .column_by_name("a")
            .unwrap()
            .as_primitive::<Int64Type>();
        assert_eq!(a.null_count(), 20);
        assert_eq!(a.value(1), 2);
        let quoted = batch.column_by_name("b\"q").unwrap().as_string::<i32>();
        assert_eq!(quoted.value(0), "y");
        assert_eq!(quoted.value(1), "x");
        let c = batch.column_by_name("c").unwrap().as_boolean();
        assert_eq!(c.true_count(), 20);
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
        // The same once `x` is a column, including the time column; a key
        // once per line stays fine after a refused line.
        b.push_json(1, r#"{"x": 1}"#).unwrap();
        for twice in [
            r#"{"x": 1, "y": 2, "x": 3}"#,
            r#"{"x": 1, "x": null}"#,
            r#"{"time": 1, "time": 2}"#,
        ] {
            let err = b.push_json(1, twice).unwrap_err();
            assert!(err.reason.contains("appears twice"), "{twice}: {err}");
        }
        b.push_json(1, r#"{"x": 2, "y": 3}"#).unwrap();
        assert_eq!(b.rows(), 2);
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

    /// A line read into entries, as owned (key, value) pairs.
    fn resolved(src: &str, read: &LineEntries) -> Vec<(String, json::Parsed<'static>)> {
        let src = src.as_bytes();
        let text = |s: Span| Cow::Owned(s.of(src).to_string());
        read.entries
            .iter()
            .map(|e| {
                let cell = |c| json::Parsed::Cell(Some(c));
                let value = match e.value {
                    Raw::Null => json::Parsed::Cell(None),
                    Raw::Int(x) => cell(Cell::Int(x)),
                    Raw::Float(x) => cell(Cell::Float(x)),
                    Raw::Bool(x) => cell(Cell::Bool(x)),
                    Raw::Time(x) => cell(Cell::Time(x)),
                    Raw::Str(s) => cell(Cell::Str(text(s))),
                    Raw::Tags { first, count } => cell(Cell::Tags(
                        read.tags[first as usize..(first + count) as usize]
                            .iter()
                            .map(|&s| text(s))
                            .collect(),
                    )),
                    Raw::Bad(s) => json::Parsed::Bad(s.of(src).to_string()),
                };
                (e.key.of(src).to_string(), value)
            })
            .collect()
    }

    /// What serde_json (the reference) reads from a line.
    fn serde_read(text: &str) -> Option<Vec<(String, json::Parsed<'static>)>> {
        let mut read = LineEntries::default();
        json::read_line_serde(text, "time", &mut read).ok()?;
        Some(resolved(&read.scratch, &read))
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
        let mut read = LineEntries::default();
        if !json::fast::read_line(text.as_bytes(), "time", &mut read) {
            return false;
        }
        let fast = resolved(text, &read);
        let serde = serde_read(text).unwrap_or_else(|| panic!("serde refuses {text}"));
        assert_eq!(fast.len(), serde.len(), "{text}");
        for ((fk, fv), (sk, sv)) in fast.iter().zip(&serde) {
            assert!(fk == sk && same(fv, sv), "{text}: {fv:?} vs {sv:?}");
        }
        true
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

    /// Pushes `lines` into a builder that stores lines in the usual keys
    /// straight into their columns (`straight`), or into one that never
    /// does: each line's outcome, the batch cut, and how many lines went
    /// straight in.
    fn pushed(
        lines: &[&[u8]],
        straight: bool,
    ) -> (Vec<Result<(), Rejection>>, Option<RecordBatch>, u32) {
        let mut b = builder();
        if !straight {
            b.shape_keys.misses = u32::MAX; // never worth trying
        }
        let outcomes = (1..)
            .zip(lines)
            .map(|(n, line)| b.push_json_bytes(n, line))
            .collect();
        let hits = b.shape_keys.hits;
        (outcomes, b.finish().unwrap().map(|d| d.batch), hits)
    }

    #[test]
    fn a_line_in_the_usual_keys_goes_straight_in_and_lands_as_the_long_way_lands_it() {
        let usual = br#"{"time": 1700000000, "a": 1.5, "b": ["x", "y"], "s": "s", "ok": true}"#;
        let check = |text: &[u8], straight: bool| {
            // The usual keys are set by the second line (the first makes
            // the columns) and read in by the third; the last line is read
            // in them whatever `text` was.
            let lines = [&usual[..], usual, usual, text, usual];
            let (outcomes, batch, hits) = pushed(&lines, true);
            let (long_outcomes, long_batch, _) = pushed(&lines, false);
            let shown = String::from_utf8_lossy(text);
            assert_eq!(outcomes, long_outcomes, "{shown}");
            assert_eq!(batch, long_batch, "{shown}");
            assert_eq!(hits, 2 + u32::from(straight), "{shown}");
        };
        for text in [
            &br#"{"time": 1, "a": 2, "b": [], "s": "t", "ok": false}"#[..],
            br#" {  "time"  :  "2024-01-01T00:00:00Z" ,"a":null,"b":[ "z" ] ,"s":"u","ok":null } "#,
            br#"{"time": 1700000000.25, "a": -0.5e1, "b": ["x"], "s": "", "ok": true}"#,
            "{\"time\": 1, \"b\": [\"😀\", \"é\"], \"s\": \"naïve €\"}".as_bytes(),
            // Keys left out, in the usual order.
            br#"{"time": 1, "s": "t"}"#,
            br#"{"a": 3, "ok": false}"#,
            br#"{"time": null, "b": null}"#,
            br#"{}"#,
        ] {
            check(text, true);
        }
        for text in [
            // Not the usual keys: another order, another key, one twice,
            // one written with an escape.
            &br#"{"a": 1, "time": 1}"#[..],
            br#"{"time": 1, "c": 3}"#,
            br#"{"time": 1, "a": 1, "a": 2}"#,
            br#"{"time": 1, "\u0061": 1}"#,
            // Values that do not go straight in, some after others did: a
            // list cut short by a number, an escape, another type.
            br#"{"time": 1, "a": 1, "b": ["x", 1], "s": "t"}"#,
            br#"{"time": 1, "b": ["x", "y"], "s": "a\nb"}"#,
            br#"{"time": 1, "a": "s"}"#,
            br#"{"time": 1, "ok": 1}"#,
            br#"{"time": 1, "s": 1}"#,
            br#"{"time": 1, "b": "x"}"#,
            br#"{"time": 1, "a": 1e400}"#,
            br#"{"time": true}"#,
            br#"{"time": "noon", "a": 1}"#,
            br#"{"time": [], "a": 1}"#,
            b"{\"time\": 1, \"b\": [\"x\", \"\xff\"]}",
            // Not JSON, or not one object.
            br#"{"time": 1, "s": "x"} x"#,
            br#"{"time": 1, "s": "x",}"#,
            br#"{"time": 1 "s": "x"}"#,
            br#"{"time": 1, "s": "x""#,
            br#"[1]"#,
            b"",
        ] {
            check(text, false);
        }
    }

    #[test]
    fn a_line_taken_back_leaves_every_kind_of_column_as_it_was() {
        let first = r#"{"time": 1, "n": 1, "f": 0.5, "ok": true, "s": "s", "t": ["a"]}"#;
        let mut b = builder();
        b.push_json(1, first).unwrap();
        let mut keys = ShapeKeys::default();
        keys.set(&(0..b.columns.len()).collect::<Vec<_>>(), &b.columns);
        let second = br#"{"time": 2, "n": 2, "f": 1.5, "ok": false, "s": "longer than sixteen bytes", "t": ["b", "c"]}"#;
        let stored = json::fast::store_line_shaped(second, true, &keys, &mut b.columns, 1);
        assert_eq!(stored, Ok((true, second.len())));
        for c in &mut b.columns {
            c.take_back(1);
        }
        let mut only_first = builder();
        only_first.push_json(1, first).unwrap();
        assert_eq!(
            b.finish().unwrap().unwrap().batch,
            only_first.finish().unwrap().unwrap().batch
        );
    }

    #[test]
    fn decimals_are_read_exactly_as_str_parse_reads_them() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut read = 0;
        for _ in 0..200_000 {
            let digits = rng.random_range(1..=18);
            let mut text = String::new();
            if rng.random_bool(0.3) {
                text.push('-');
            }
            let point = rng.random_range(1..=digits);
            for k in 0..digits {
                if k == point {
                    text.push('.');
                }
                // JSON: no leading zero before more integer digits.
                let first = k == 0 && point > 1;
                text.push(char::from(b'0' + rng.random_range(u8::from(first)..10)));
            }
            if point == digits {
                text.push_str(".5");
            }
            if rng.random_bool(0.3) {
                let sign = ["", "+", "-"][rng.random_range(0..3)];
                text.push_str(&format!("e{sign}{}", rng.random_range(0..40)));
            }
            let want: f64 = text.parse().unwrap();
            match json::fast::number(text.as_bytes(), 0, false) {
                Some((Raw::Float(got), end)) if end == text.len() => {
                    assert_eq!(got.to_bits(), want.to_bits(), "{text}")
                }
                // Only what JSON reads as -0 is declined (serde_json's).
                None if want == 0.0 => {}
                other => panic!("{text}: {other:?}"),
            }
            read += 1;
        }
        assert_eq!(read, 200_000);
    }

    #[test]
    fn plain_utc_times_are_read_exactly_as_chrono_reads_them() {
        use rand::{Rng, SeedableRng};
        for (text, plain) in [
            ("1900-02-29T00:00:00Z", false),
            ("2100-02-29T00:00:00Z", false),
            ("2023-02-29T00:00:00Z", false),
            ("2000-02-29T00:00:00Z", true),
            ("2024-02-29T12:30:45.5Z", true),
            ("0000-01-01T00:00:00Z", true),
            ("1969-12-31T23:59:59.999999Z", true),
            ("9999-12-31T23:59:59.999999999Z", true),
            ("2023-11-14T22:13:20.000Z", true),
            ("1970-01-01T00:00:60Z", false),
            ("2023-04-31T00:00:00Z", false),
        ] {
            let chrono = chrono::DateTime::parse_from_rfc3339(text)
                .ok()
                .map(|t| t.timestamp_micros());
            let ours = plain_utc_time_us(text.as_bytes());
            assert_eq!(ours.is_some(), plain, "{text}");
            if plain {
                assert_eq!(ours, chrono, "{text}");
            }
            let read = time_from_text(text).ok();
            assert_eq!(read, chrono.map(Cell::Time), "{text}");
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(13);
        let mut plain = 0;
        for _ in 0..100_000 {
            let mut text = format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                rng.random_range(0..10_000),
                rng.random_range(0..14),
                rng.random_range(0..33),
                rng.random_range(0..25),
                rng.random_range(0..61),
                rng.random_range(0..62),
            );
            if rng.random_bool(0.6) {
                text.push('.');
                for _ in 0..rng.random_range(0..12) {
                    text.push(char::from(b'0' + rng.random_range(0..10)));
                }
            }
            text.push_str(["Z", "Z", "z", "+02:00", "", "Zx"][rng.random_range(0..6)]);
            if rng.random_bool(0.05) {
                text = text.replacen('T', " ", 1);
            }
            let chrono = chrono::DateTime::parse_from_rfc3339(&text)
                .ok()
                .map(|t| t.timestamp_micros());
            if let Some(us) = plain_utc_time_us(text.as_bytes()) {
                assert_eq!(Some(us), chrono, "{text}");
                plain += 1;
            }
            let read = time_from_text(&text).ok();
            if let Some(us) = chrono {
                assert_eq!(read, Some(Cell::Time(us)), "{text}");
            }
        }
        assert!(plain > 10_000, "read only {plain} plainly");
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

    /// A thread waiting for every chunk before chunk `k` of `order`.
    fn waiter(order: &Arc<ChunkOrder>, k: u64) -> std::thread::JoinHandle<()> {
        let order = Arc::clone(order);
        std::thread::spawn(move || order.wait_before(k))
    }

    #[test]
    fn chunk_order_waits_for_every_earlier_chunk_in_any_finishing_order() {
        let order = Arc::new(ChunkOrder::default());
        let waiter = waiter(&order, 3);
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
        let waiter = waiter(&order, 7);
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
            err.reason
                .contains("no usable CSV header (header: column `a` appears twice)"),
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

    /// Every line of `input` as [`LineReader`] reads it, as text.
    fn lines_by_reader(input: &[u8]) -> Vec<String> {
        let mut r = LineReader::new(input);
        let mut out = Vec::new();
        while let Some(line) = r.next_line().unwrap() {
            out.push(format!("{line:?}"));
        }
        out
    }

    /// Reads `input` to its end through a [`ChunkReader`], handing each
    /// chunk to `send` in input order; stops early when `send` says false.
    fn read_chunks<R: std::io::Read>(
        input: R,
        max_lines: usize,
        max_bytes: usize,
        mut send: impl FnMut(TextChunk) -> bool,
    ) -> std::io::Result<()> {
        let mut reader = ChunkReader::new(input, max_lines, max_bytes);
        while let Some(chunk) = reader.next_chunk()? {
            if !send(chunk) {
                break;
            }
        }
        Ok(())
    }

    /// The same through a [`ChunkReader`] ([`lines_of_chunks`]), each chunk
    /// within `max_lines`.
    fn lines_by_chunks(input: &[u8], max_lines: usize, max_bytes: usize) -> Vec<String> {
        lines_of_chunks(
            ChunkReader::new(input, max_lines, max_bytes),
            Some(max_lines),
        )
    }

    /// The same through [`MappedChunks`] over the input in memory.
    fn lines_by_mapped_chunks(input: &[u8], max_lines: usize, max_bytes: usize) -> Vec<String> {
        let input = bytes::Bytes::copy_from_slice(input);
        lines_of_chunks(MappedChunks::new(input, max_lines, max_bytes), None)
    }

    /// Every line of `source`'s chunks, numbered in the whole input, as
    /// text; `max_lines`, when given, bounds each chunk's lines. Each chunk's
    /// lines must read the same after the whole chunk's UTF-8 check.
    fn lines_of_chunks(mut source: impl ChunkSource, max_lines: Option<usize>) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(mut chunk) = source.next_chunk().unwrap() {
            assert!(!chunk.is_empty());
            let before = out.len() as u64;
            let each = chunk_lines(&chunk, before);
            assert!(max_lines.is_none_or(|max| each.len() <= max));
            chunk.check_utf8();
            assert_eq!(chunk_lines(&chunk, before), each);
            out.extend(each);
        }
        out
    }

    /// A chunk's lines as text, numbered as if `before` lines came first.
    fn chunk_lines(chunk: &TextChunk, before: u64) -> Vec<String> {
        let mut lines = chunk.lines();
        std::iter::from_fn(|| {
            Some(match lines.next_text()? {
                Line::Text { number, text } => Line::Text {
                    number: number + before,
                    text,
                },
                Line::Oversized { number, len_bytes } => Line::Oversized {
                    number: number + before,
                    len_bytes,
                },
                Line::NotUtf8 { number } => Line::NotUtf8 {
                    number: number + before,
                },
            })
        })
        .map(|line| format!("{line:?}"))
        .collect()
    }

    #[test]
    fn chunked_and_mapped_reading_see_the_lines_a_line_reader_sees() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let long = |n: usize| "y".repeat(n);
        for round in 0..200 {
            let mut input = Vec::new();
            for _ in 0..rng.random_range(0..40) {
                match rng.random_range(0..10) {
                    0 => input.extend_from_slice(b"\r"),
                    1 => input.extend_from_slice(&[0xff, 0xfe]),
                    2 if round % 20 == 0 => {
                        let n = LINE_BYTES_MAX + rng.random_range(0..3 * READ_BYTES) - READ_BYTES;
                        input.extend_from_slice(long(n).as_bytes())
                    }
                    3 => input.extend_from_slice(long(rng.random_range(0..3000)).as_bytes()),
                    4 => input.extend_from_slice("\"é€😀\"".as_bytes()),
                    _ => input.extend_from_slice(format!("{{\"a\": {round}}}").as_bytes()),
                }
                if rng.random_bool(0.7) {
                    input.push(b'\n');
                }
            }
            let (max_lines, max_bytes) = (rng.random_range(1..6), rng.random_range(1..5000));
            let lines = lines_by_reader(&input);
            assert_eq!(
                lines_by_chunks(&input, max_lines, max_bytes),
                lines,
                "round {round}"
            );
            assert_eq!(
                lines_by_mapped_chunks(&input, max_lines, max_bytes),
                lines,
                "round {round}, mapped"
            );
        }
    }

    #[test]
    fn mapped_chunks_of_no_size_still_hold_a_line_each() {
        let input = bytes::Bytes::from_static(b"a\nbb\n\nc");
        let lines = lines_of_chunks(MappedChunks::new(input, 0, 0), Some(1));
        assert_eq!(lines, lines_by_reader(b"a\nbb\n\nc"));
    }

    /// A JSON line of the kinds ingest meets: mostly the usual keys (some
    /// left out, some null), and now and then another shape, a type
    /// conflict, an escape, bytes that are not UTF-8, bad syntax, trailing
    /// text, whitespace around the object, or nothing.
    fn random_json_line(rng: &mut impl rand::Rng, n: usize) -> Vec<u8> {
        let time = match rng.random_range(0..3) {
            0 => format!("{}", 1_700_000_000 + n),
            1 => format!("{}.25", 1_700_000_000 + n),
            _ => "\"2023-11-14T22:13:20Z\"".to_string(),
        };
        let usual = [
            format!("\"time\": {time}"),
            format!("\"service\": \"s{}\"", n % 7),
            format!("\"n\": {n}"),
            format!("\"f\": {}.5", n % 100),
            format!("\"ok\": {}", n.is_multiple_of(2)),
            "\"tags\": [\"a\", \"b\"]".to_string(),
            "\"s\": null".to_string(),
        ];
        let members: Vec<String> = match rng.random_range(0..20) {
            0 => vec!["\"other\": 1".into(), usual[2].clone()],
            1 => vec![usual[2].clone(), usual[0].clone()],
            2 => vec!["\"n\": \"text\"".into()],
            3 => vec!["\"f\": 7".into(), "\"n\": 2.5".into()],
            4 => vec!["\"service\": \"a\\\"b\"".into()],
            _ => usual
                .iter()
                .filter(|_| rng.random_bool(0.85))
                .cloned()
                .collect(),
        };
        let mut line = format!("{{{}}}", members.join(", ")).into_bytes();
        match rng.random_range(0..30) {
            0 => line.truncate(line.len() / 2),
            1 => line.extend_from_slice(b" x"),
            2 => line.extend_from_slice(b" \t "),
            3 => line.insert(0, b' '),
            4 => line = b"{\"service\": \"\xff\"}".to_vec(),
            5 => line.clear(),
            6 => line = b"  ".to_vec(),
            7 => line = b"[1]".to_vec(),
            _ => {}
        }
        line
    }

    /// `line`, padded inside its object with spaces to `len` bytes.
    fn padded_json_line(len: usize) -> Vec<u8> {
        let mut line = b"{\"n\": 1".to_vec();
        line.resize(len - 1, b' ');
        line.push(b'}');
        line
    }

    /// A chunk's batches with their lines, its rejections and its lines.
    type Decoded = (Vec<(RecordBatch, Vec<u64>)>, Vec<Rejection>, u64);

    /// What a builder makes of `chunk`.
    fn decoded(chunk: &mut TextChunk) -> Decoded {
        let decoded = builder().decode_chunk(chunk, InputFormat::Jsonl);
        let batches = decoded
            .batches
            .into_iter()
            .map(|b| b.map(|b| (b.batch, b.lines)).unwrap())
            .collect();
        (batches, decoded.rejections, decoded.lines)
    }

    #[test]
    fn an_uncut_chunk_decodes_as_the_same_lines_cut_by_a_reader() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for round in 0..60 {
            let mut input = Vec::new();
            for n in 0..rng.random_range(1..300) {
                input.extend(random_json_line(&mut rng, n));
                if round % 10 == 0 && rng.random_bool(0.05) {
                    // Around the longest line taken, whose end is found
                    // past the text a line's reader is shown.
                    let len = LINE_BYTES_MAX - 1 + rng.random_range(0..3);
                    input.push(b'\n');
                    input.extend(padded_json_line(len - 1));
                    input.extend_from_slice([&b"\r"[..], b" "][rng.random_range(0..2)]);
                }
                if rng.random_bool(0.1) {
                    input.push(b'\r');
                }
                input.push(b'\n');
            }
            if rng.random_bool(0.3) {
                input.pop(); // no line feed after the last line
            }
            let whole = |source: &mut dyn ChunkSource| {
                let chunk = source.next_chunk().unwrap().unwrap();
                assert!(source.next_chunk().unwrap().is_none(), "one chunk");
                chunk
            };
            let (lines, bytes) = (usize::MAX / 2, usize::MAX / 2);
            let mut cut = whole(&mut ChunkReader::new(&input[..], lines, bytes));
            let mut uncut = whole(&mut MappedChunks::new(
                bytes::Bytes::copy_from_slice(&input),
                lines,
                bytes,
            ));
            assert!(!cut.uncut && uncut.uncut);
            let (by_reader, by_uncut) = (decoded(&mut cut), decoded(&mut uncut));
            assert!(!by_reader.0.is_empty(), "round {round}: nothing stored");
            assert!(
                !by_reader.1.is_empty() || round % 10 != 0,
                "round {round}: nothing rejected"
            );
            assert_eq!(by_uncut, by_reader, "round {round}");
        }
    }

    #[test]
    fn a_line_past_the_limit_is_rejected_even_when_its_object_ends_within_it() {
        // Lines in the usual keys, then objects of exactly the limit's
        // length followed by nothing, a space, or `\r`: the first is the
        // longest line taken; the others are a byte too long however early
        // their object ends. The same whether the reader or the decoder
        // finds the line ends.
        let mut input = Vec::new();
        for n in 0..10 {
            input.extend(format!("{{\"n\": {n}}}\n").bytes());
        }
        for tail in [&b""[..], b" ", b"\r"] {
            input.extend(padded_json_line(LINE_BYTES_MAX));
            input.extend_from_slice(tail);
            input.push(b'\n');
        }
        input.extend(b"{\"n\": 99}\n");
        let (lines, bytes) = (usize::MAX / 2, usize::MAX / 2);
        let mut cut = ChunkReader::new(&input[..], lines, bytes)
            .next_chunk()
            .unwrap()
            .unwrap();
        let mut uncut = MappedChunks::new(input.into(), lines, bytes)
            .next_chunk()
            .unwrap()
            .unwrap();
        for chunk in [&mut cut, &mut uncut] {
            let (batches, rejections, lines) = decoded(chunk);
            assert_eq!(lines, 14);
            let rejected: Vec<u64> = rejections.iter().map(|r| r.line).collect();
            assert_eq!(rejected, [12, 13]);
            assert!(rejections[0].reason.contains("exceeds the limit"));
            assert_eq!(batches[0].1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14]);
        }
    }

    #[test]
    fn an_uncut_chunk_with_more_lines_than_a_batch_holds_decodes_into_several_batches() {
        // Long lines first, so the chunk is sized for few lines; then many
        // short ones.
        let mut input = Vec::new();
        for _ in 0..200 {
            input.extend(padded_json_line(1_000));
            input.push(b'\n');
        }
        let short = 2 * BATCH_ROWS_MAX + 100;
        for n in 0..short {
            input.extend(format!("{{\"n\": {n}}}\n").bytes());
        }
        let mut chunks = MappedChunks::new(input.into(), BATCH_ROWS_MAX, BATCH_BYTES_MAX / 2);
        let mut chunk = chunks.next_chunk().unwrap().unwrap();
        assert!(chunks.next_chunk().unwrap().is_none(), "one chunk");
        let (batches, rejections, lines) = decoded(&mut chunk);
        assert!(rejections.is_empty(), "{rejections:?}");
        assert_eq!(lines, 200 + short as u64);
        let rows: Vec<usize> = batches.iter().map(|(b, _)| b.num_rows()).collect();
        assert_eq!(rows, [BATCH_ROWS_MAX, BATCH_ROWS_MAX, 300]);
        let numbers: Vec<u64> = batches.into_iter().flat_map(|(_, lines)| lines).collect();
        assert_eq!(numbers, (1..=lines).collect::<Vec<u64>>());
    }

    #[test]
    fn a_strings_plain_run_ends_at_its_first_quote_escape_control_or_non_ascii_byte() {
        // Every length around the 8- and 16-byte steps, every stop byte at
        // every place, with other stops after it.
        for len in 0..48 {
            for stop in [b'"', b'\\', 0x00, 0x1f, b'\n', 0x80, 0xc3, 0xff] {
                for at in 0..=len {
                    let mut b: Vec<u8> = "az ~AZ09".bytes().cycle().take(len).collect();
                    if at < len {
                        b[at] = stop;
                        for later in (at + 1..len).step_by(3) {
                            b[later] = [b'"', 0xa9][later % 2];
                        }
                    }
                    let naive = b
                        .iter()
                        .position(|&c| c == b'"' || c == b'\\' || !(0x20..0x80).contains(&c));
                    assert_eq!(
                        json::fast::plain_len(&b),
                        naive,
                        "len {len}, stop {stop} at {at}"
                    );
                }
            }
        }
    }

    #[test]
    fn keys_compare_equal_exactly_when_their_bytes_are_equal() {
        let keys = [
            "",
            "a",
            "ab",
            "abc",
            "time",
            "tags",
            "timf",
            "status",
            "bytes",
            "region",
            "user_id",
            "endpoint",
            "latency_ms",
            "latency_mt",
            "a_sixteen_byte_k",
            "a_sixteen_byte_x",
            "seventeen_bytes_k",
            "seventeen_bytes_x",
            "héllo",
            "hello",
        ];
        for a in keys {
            for b in keys {
                assert_eq!(
                    same_key(a.as_bytes(), b.as_bytes()),
                    a == b,
                    "{a:?} vs {b:?}"
                );
            }
        }
    }

    #[test]
    fn a_read_error_hands_on_the_whole_lines_read_before_it() {
        /// Yields its bytes, then fails.
        struct Failing(&'static [u8]);
        impl std::io::Read for Failing {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                if self.0.is_empty() {
                    return Err(std::io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut lines = Vec::new();
        let err = read_chunks(Failing(b"a\nb\npart"), 10, 1000, |chunk| {
            lines.extend(chunk_lines(&chunk, lines.len() as u64));
            true
        })
        .unwrap_err();
        assert!(err.to_string().contains("disk on fire"));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[1].contains("\"b\""), "{lines:?}");
    }

    #[test]
    fn chunks_stop_when_their_taker_stops() {
        let input = "a\nb\nc\nd\n";
        let mut chunks = 0;
        read_chunks(input.as_bytes(), 1, 100, |_| {
            chunks += 1;
            chunks < 2
        })
        .unwrap();
        assert_eq!(chunks, 2);
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
