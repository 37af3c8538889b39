//! Arrow IPC stream bytes to and from `RecordBatch`es.

use arrow_array::RecordBatch;
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::ArrowError;

/// Decode Arrow IPC stream bytes into batches.
pub fn decode(bytes: &[u8]) -> Result<Vec<RecordBatch>, ArrowError> {
    StreamReader::try_new(bytes, None)?.collect()
}

/// Decode Arrow IPC stream bytes the guest owns (a block handed to
/// `analyze`) in place: the batches' buffers point into `bytes` instead of
/// a second copy of them (a buffer is copied only where the stream leaves
/// it unaligned for its type).
pub fn decode_owned(bytes: Vec<u8>) -> Result<Vec<RecordBatch>, ArrowError> {
    let mut buffer = arrow_buffer::Buffer::from_vec(bytes);
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut batches = Vec::new();
    while !buffer.is_empty() {
        if let Some(batch) = decoder.decode(&mut buffer)? {
            batches.push(batch);
        }
    }
    decoder.finish()?;
    Ok(batches)
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

/// The values of a numeric column as `f64` (integers, floats, and booleans
/// as 0/1), `None` for NULL. Errors name the column when it is missing or
/// not numeric.
pub fn numeric_column(batch: &RecordBatch, name: &str) -> Result<Vec<Option<f64>>, String> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type};
    use arrow_schema::DataType;

    let array = batch
        .column_by_name(name)
        .ok_or_else(|| format!("no column {name}"))?;
    Ok(match array.data_type() {
        DataType::Float64 => array.as_primitive::<Float64Type>().iter().collect(),
        DataType::Float32 => array
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.map(f64::from))
            .collect(),
        DataType::Int64 => array
            .as_primitive::<Int64Type>()
            .iter()
            .map(|v| v.map(|v| v as f64))
            .collect(),
        DataType::Int32 => array
            .as_primitive::<Int32Type>()
            .iter()
            .map(|v| v.map(f64::from))
            .collect(),
        DataType::Boolean => array
            .as_boolean()
            .iter()
            .map(|v| v.map(|v| f64::from(u8::from(v))))
            .collect(),
        other => return Err(format!("column {name} has type {other}, not a number")),
    })
}
