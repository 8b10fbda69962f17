//! Arrow IPC, the one format for data on the wire, in the disk log and in
//! shared memory.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::{StreamDecoder, StreamReader};
use datafusion::arrow::ipc::writer::{StreamEncoder, StreamWriter};
use datafusion::arrow::record_batch::RecordBatch;

use crate::error::Result;

/// Encodes a schema and batches as one self-contained IPC stream.
pub fn batches_to_ipc(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>> {
    // Sized up front (the batches' buffers plus room for the messages'
    // metadata and padding), so the stream is not copied as it grows.
    let data: usize = batches.iter().map(|b| b.get_array_memory_size()).sum();
    let mut out = Vec::with_capacity(data + 1024 * (1 + batches.len()));
    let mut writer = StreamWriter::try_new(&mut out, schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

/// An IPC stream kept as the pieces it was encoded into: the batch's column
/// buffers themselves (shared with the batch, not copied) between the
/// messages' headers and padding. A client sends a batch's stream this way,
/// so its bytes are copied once, into packets, instead of first into one
/// buffer and then into packets.
#[derive(Debug, Clone, Default)]
pub struct IpcStream {
    pieces: Vec<Buffer>,
    len: usize,
}

/// Pieces shorter than this (headers, padding, short columns) are gathered
/// into one, so a batch's stream is a few dozen pieces, not hundreds.
const IPC_PIECE_BYTES_MIN: usize = 4096;

impl IpcStream {
    /// Bytes in the whole stream.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The stream's bytes, in order.
    pub fn pieces(&self) -> &[Buffer] {
        &self.pieces
    }

    /// The stream as one buffer (a copy, unless it is one piece).
    pub fn to_buffer(&self) -> Buffer {
        match self.pieces.as_slice() {
            [one] => one.clone(),
            pieces => {
                let mut out = Vec::with_capacity(self.len);
                for p in pieces {
                    out.extend_from_slice(p.as_slice());
                }
                Buffer::from_vec(out)
            }
        }
    }

    fn push(&mut self, piece: Buffer, small: &mut Vec<u8>) {
        self.len += piece.len();
        if piece.len() < IPC_PIECE_BYTES_MIN {
            small.extend_from_slice(piece.as_slice());
            return;
        }
        self.flush(small);
        self.pieces.push(piece);
    }

    fn flush(&mut self, small: &mut Vec<u8>) {
        if !small.is_empty() {
            self.pieces.push(Buffer::from_vec(std::mem::take(small)));
        }
    }
}

/// Encodes one batch as a self-contained IPC stream, the same bytes as
/// [`batches_to_ipc`] writes, held as pieces ([`IpcStream`]).
pub fn batch_to_ipc_stream(batch: &RecordBatch) -> Result<IpcStream> {
    let mut encoder = StreamEncoder::try_new(batch.schema_ref())?;
    let mut stream = IpcStream::default();
    let mut small = Vec::new();
    for piece in encoder.encode(batch)? {
        stream.push(piece, &mut small);
    }
    for piece in encoder.finish()? {
        stream.push(piece, &mut small);
    }
    stream.flush(&mut small);
    Ok(stream)
}

/// A schema alone, as an IPC stream with no batches.
pub fn schema_to_ipc(schema: &Schema) -> Result<Vec<u8>> {
    batches_to_ipc(schema, &[])
}

/// Decodes a stream written by [`batches_to_ipc`] that `buffer` holds,
/// without copying its data: each array points into `buffer` (one that is
/// not aligned for its type is copied). A truncated stream, or bytes after
/// its end, is an error.
pub fn ipc_to_batches(mut buffer: Buffer) -> Result<(SchemaRef, Vec<RecordBatch>)> {
    let mut decoder = StreamDecoder::new();
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer)? {
            batches.push(batch);
        }
    }
    decoder.finish()?;
    let schema = decoder.schema().ok_or_else(|| {
        datafusion::arrow::error::ArrowError::IpcError("IPC stream without a schema".into())
    })?;
    Ok((schema, batches))
}

pub fn ipc_to_schema(bytes: &[u8]) -> Result<SchemaRef> {
    let reader = StreamReader::try_new(Cursor::new(bytes), None)?;
    Ok(Arc::clone(&reader.schema()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, BooleanArray, Int64Array, StringArray};

    fn batch(rows: usize) -> RecordBatch {
        let ints: ArrayRef = Arc::new(Int64Array::from_iter(
            (0..rows as i64).map(|i| (i % 7 != 0).then_some(i)),
        ));
        let strings: ArrayRef = Arc::new(StringArray::from_iter_values(
            (0..rows).map(|i| format!("value {i}")),
        ));
        let bools: ArrayRef =
            Arc::new(BooleanArray::from_iter((0..rows).map(|i| Some(i % 3 == 0))));
        RecordBatch::try_from_iter([("n", ints), ("s", strings), ("b", bools)]).unwrap()
    }

    #[test]
    fn a_stream_in_pieces_holds_the_bytes_the_stream_writer_writes() {
        for rows in [0, 1, 100, 10_000] {
            let b = batch(rows);
            let whole = batches_to_ipc(b.schema_ref(), std::slice::from_ref(&b)).unwrap();
            let pieces = batch_to_ipc_stream(&b).unwrap();
            assert_eq!(pieces.len(), whole.len(), "{rows} rows");
            assert_eq!(
                pieces.to_buffer().as_slice(),
                whole.as_slice(),
                "{rows} rows"
            );
            let (_, back) = ipc_to_batches(pieces.to_buffer()).unwrap();
            assert_eq!(back, vec![b]);
        }
    }

    #[test]
    fn a_stream_in_pieces_shares_its_big_columns_and_gathers_the_small_pieces() {
        let b = batch(10_000);
        let stream = batch_to_ipc_stream(&b).unwrap();
        let ints = b.column(0).to_data().buffers()[0].as_ptr();
        assert!(
            stream.pieces().iter().any(|p| p.as_ptr() == ints),
            "the int column's values are sent from where they are"
        );
        assert!(stream
            .pieces()
            .windows(2)
            .all(|w| w[0].len() >= IPC_PIECE_BYTES_MIN || w[1].len() >= IPC_PIECE_BYTES_MIN));
    }
}
