//! Arrow IPC stream bytes: how tables cross the guest boundary.
//!
//! Owns encoding and decoding only; what may be encoded is the caller's
//! decision.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::error::ArrowError;
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

/// Encode batches of one schema as an Arrow IPC stream. An empty result still
/// carries its schema, so a guest can tell "no rows" from a broken stream.
pub fn encode(schema: &SchemaRef, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut writer = StreamWriter::try_new(Vec::new(), schema)?;
    for batch in batches {
        writer.write(batch)?;
    }
    writer.into_inner()
}

/// Decode an Arrow IPC stream into its schema and batches.
pub fn decode(bytes: &[u8]) -> Result<(SchemaRef, Vec<RecordBatch>), ArrowError> {
    let reader = StreamReader::try_new(bytes, None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

/// Total rows in a set of batches.
pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use std::sync::Arc;

    #[test]
    fn round_trips_batches_and_keeps_schema_of_empty_results() {
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "s",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let bytes = encode(&batch.schema(), std::slice::from_ref(&batch)).unwrap();
        let (schema, batches) = decode(&bytes).unwrap();
        assert_eq!(schema, batch.schema());
        assert_eq!(batches, vec![batch.clone()]);

        let empty = encode(&batch.schema(), &[]).unwrap();
        let (schema, batches) = decode(&empty).unwrap();
        assert_eq!(schema, batch.schema());
        assert_eq!(row_count(&batches), 0);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"not arrow at all").is_err());
        assert!(decode(&[]).is_err());
    }
}
