//! Arrow IPC, the one format for data on the wire, in the disk log and in
//! shared memory.

use std::io::Cursor;
use std::sync::Arc;

use datafusion::arrow::buffer::Buffer;
use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::arrow::ipc::reader::{StreamDecoder, StreamReader};
use datafusion::arrow::ipc::writer::StreamWriter;
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
