//! Arrow IPC stream bytes to and from `RecordBatch`es.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

/// Decode Arrow IPC stream bytes into batches.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    StreamReader::try_new(bytes, None)?.collect()
}

/// Encode batches as Arrow IPC stream bytes. `batches` must share one schema;
/// an empty slice encodes nothing and is refused by the host.
pub fn encode(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let Some(first) = batches.first() else {
        return Err(ArrowError::InvalidArgumentError(
            "no batches to encode".into(),
        ));
    };
    let mut writer = StreamWriter::try_new(Vec::new(), first.schema_ref())?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.into_inner()
}
