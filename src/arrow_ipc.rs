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

/// What a guest's table may claim before anything is allocated for it.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    /// Rows the job may still emit.
    pub rows: usize,
    /// Columns one table may have.
    pub columns: usize,
}

/// Why a guest's Arrow IPC stream was refused. For diagnostics only: the
/// submitter sees `invalid-table`, never this text.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("framing: {0}")]
    Framing(&'static str),
    #[error("a claimed length passes the bytes sent: {0}")]
    Overrun(&'static str),
    #[error("more rows than the job may still emit")]
    TooManyRows,
    #[error("more columns than a table may have")]
    TooManyColumns,
    #[error("column type outside the allowed set: {0}")]
    Type(&'static str),
    #[error("compressed bodies are refused")]
    Compressed,
    #[error("dictionary batches are refused")]
    Dictionary,
    #[error("the decoder refused the stream: {0}")]
    Decode(String),
    #[error("the decoder panicked")]
    Panicked,
}

/// Decode an Arrow IPC stream that a guest wrote.
///
/// Nothing in the stream is trusted: before Arrow's reader sees it, every
/// message is walked and checked against the bytes actually sent and the
/// job's allowance, so no claimed length (metadata, body, buffers, rows) can
/// make the host allocate more than the stream's own size:
/// - one schema message, then record batches, then an optional end marker;
///   nothing after it;
/// - metadata verified as a flatbuffer, metadata version V4 or V5;
/// - columns of an allow-listed flat type only (booleans, integers of 8 to
///   64 bits, 32- and 64-bit floats, UTF-8 strings and string views, dates,
///   timestamps, 128-bit decimals), no children, no dictionaries;
/// - no compression (a small compressed body can claim gigabytes);
/// - every batch's row count within the allowance, every field node and
///   buffer within its batch and body.
///
/// The reader then runs under `catch_unwind`, so a malformed stream that
/// passes these checks still ends as a refusal, never a host panic.
pub fn decode_untrusted(
    bytes: &[u8],
    allowance: Allowance,
) -> Result<(SchemaRef, Vec<RecordBatch>), Refusal> {
    check_stream(bytes, allowance)?;
    let decoded = std::panic::catch_unwind(|| decode(bytes)).map_err(|_| Refusal::Panicked)?;
    let (schema, batches) = decoded.map_err(|e| Refusal::Decode(e.to_string()))?;
    if row_count(&batches) > allowance.rows {
        return Err(Refusal::TooManyRows);
    }
    Ok((schema, batches))
}

fn check_stream(bytes: &[u8], allowance: Allowance) -> Result<(), Refusal> {
    use datafusion::arrow::ipc::{MessageHeader, MetadataVersion, root_as_message};

    let mut pos = 0usize;
    let mut columns: Option<usize> = None;
    let mut rows = 0usize;
    while pos < bytes.len() {
        let word = read_u32(bytes, pos)?;
        let (meta_len, header) = if word == 0xFFFF_FFFF {
            (read_u32(bytes, pos + 4)? as i32, 8)
        } else {
            (word as i32, 4)
        };
        if meta_len == 0 {
            // The end-of-stream marker: nothing may follow it.
            if pos + header != bytes.len() {
                return Err(Refusal::Framing("bytes after the end-of-stream marker"));
            }
            break;
        }
        let meta_len =
            usize::try_from(meta_len).map_err(|_| Refusal::Framing("negative metadata length"))?;
        let meta_start = pos + header;
        let meta_end = meta_start
            .checked_add(meta_len)
            .filter(|end| *end <= bytes.len())
            .ok_or(Refusal::Overrun("metadata"))?;
        let message = root_as_message(&bytes[meta_start..meta_end])
            .map_err(|_| Refusal::Framing("metadata is not a valid flatbuffer message"))?;
        if !matches!(message.version(), MetadataVersion::V4 | MetadataVersion::V5) {
            return Err(Refusal::Framing("metadata version"));
        }
        let body_len = usize::try_from(message.bodyLength())
            .map_err(|_| Refusal::Framing("negative body length"))?;
        let body_end = meta_end
            .checked_add(body_len)
            .filter(|end| *end <= bytes.len())
            .ok_or(Refusal::Overrun("message body"))?;
        match (message.header_type(), columns) {
            (MessageHeader::Schema, None) => {
                let schema = message
                    .header_as_schema()
                    .ok_or(Refusal::Framing("schema message without a schema"))?;
                columns = Some(check_schema(&schema, allowance)?);
            }
            (MessageHeader::Schema, Some(_)) => {
                return Err(Refusal::Framing("a second schema"));
            }
            (MessageHeader::RecordBatch, Some(columns)) => {
                let batch = message
                    .header_as_record_batch()
                    .ok_or(Refusal::Framing("batch message without a batch"))?;
                rows = rows
                    .checked_add(check_batch(&batch, columns, body_len)?)
                    .filter(|rows| *rows <= allowance.rows)
                    .ok_or(Refusal::TooManyRows)?;
            }
            (MessageHeader::DictionaryBatch, _) => return Err(Refusal::Dictionary),
            (MessageHeader::RecordBatch, None) => {
                return Err(Refusal::Framing("a batch before the schema"));
            }
            _ => return Err(Refusal::Framing("message type outside schema and batch")),
        }
        pos = body_end;
    }
    if columns.is_none() {
        return Err(Refusal::Framing("no schema"));
    }
    Ok(())
}

fn read_u32(bytes: &[u8], at: usize) -> Result<u32, Refusal> {
    let word = at
        .checked_add(4)
        .and_then(|end| bytes.get(at..end))
        .ok_or(Refusal::Framing("truncated message prefix"))?;
    Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
}

/// The allow-listed column types; returns the number of columns.
fn check_schema(
    schema: &datafusion::arrow::ipc::Schema<'_>,
    allowance: Allowance,
) -> Result<usize, Refusal> {
    use datafusion::arrow::ipc::{Endianness, Precision, Type};

    if schema.endianness() != Endianness::Little {
        return Err(Refusal::Type("big-endian data"));
    }
    let fields = schema
        .fields()
        .ok_or(Refusal::Type("a schema without fields"))?;
    if fields.is_empty() {
        return Err(Refusal::Type("a schema without fields"));
    }
    if fields.len() > allowance.columns {
        return Err(Refusal::TooManyColumns);
    }
    for field in fields {
        if field.dictionary().is_some() {
            return Err(Refusal::Dictionary);
        }
        if field.children().is_some_and(|c| !c.is_empty()) {
            return Err(Refusal::Type("nested column"));
        }
        let allowed = match field.type_type() {
            Type::Bool
            | Type::Utf8
            | Type::LargeUtf8
            | Type::Utf8View
            | Type::Date
            | Type::Timestamp => true,
            Type::Int => field
                .type_as_int()
                .is_some_and(|int| matches!(int.bitWidth(), 8 | 16 | 32 | 64)),
            Type::FloatingPoint => field.type_as_floating_point().is_some_and(|float| {
                matches!(float.precision(), Precision::SINGLE | Precision::DOUBLE)
            }),
            Type::Decimal => field.type_as_decimal().is_some_and(|decimal| {
                decimal.bitWidth() == 128
                    && (1..=38).contains(&decimal.precision())
                    && (0..=decimal.precision()).contains(&decimal.scale())
            }),
            _ => false,
        };
        if !allowed {
            return Err(Refusal::Type("outside the flat allow-list"));
        }
    }
    Ok(fields.len())
}

/// Field nodes and buffers within the batch and its body; returns its rows.
fn check_batch(
    batch: &datafusion::arrow::ipc::RecordBatch<'_>,
    columns: usize,
    body_len: usize,
) -> Result<usize, Refusal> {
    if batch.compression().is_some() {
        return Err(Refusal::Compressed);
    }
    // String views carry their data in variadic buffers, counted here.
    let mut variadic = 0usize;
    for count in batch.variadicBufferCounts().into_iter().flatten() {
        variadic = usize::try_from(count)
            .ok()
            .and_then(|count| variadic.checked_add(count))
            .ok_or(Refusal::Framing("variadic buffer count"))?;
    }
    let rows =
        usize::try_from(batch.length()).map_err(|_| Refusal::Framing("negative row count"))?;
    let nodes = batch
        .nodes()
        .ok_or(Refusal::Framing("batch without field nodes"))?;
    if nodes.len() != columns {
        return Err(Refusal::Framing("field nodes do not match the schema"));
    }
    for node in nodes {
        if node.length() != batch.length() || !(0..=node.length()).contains(&node.null_count()) {
            return Err(Refusal::Framing("field node length or null count"));
        }
    }
    let buffers = batch
        .buffers()
        .ok_or(Refusal::Framing("batch without buffers"))?;
    // Validity and values for flat types; validity, offsets and data for
    // strings: never more than three buffers a column.
    if buffers.len() > (3 * columns).saturating_add(variadic) {
        return Err(Refusal::Framing("more buffers than the columns use"));
    }
    for buffer in buffers {
        let fits = u64::try_from(buffer.offset())
            .ok()
            .zip(u64::try_from(buffer.length()).ok())
            .and_then(|(offset, length)| offset.checked_add(length))
            .is_some_and(|end| end <= body_len as u64);
        if !fits {
            return Err(Refusal::Overrun("buffer"));
        }
    }
    Ok(rows)
}

/// Total rows in a set of batches.
pub fn row_count(batches: &[RecordBatch]) -> usize {
    batches.iter().map(RecordBatch::num_rows).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{ArrayRef, Int64Array, StringArray};
    use datafusion::arrow::ipc as fb;
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

    const ALLOW: Allowance = Allowance {
        rows: 1_000,
        columns: 16,
    };

    fn sample() -> Vec<u8> {
        let batch = RecordBatch::try_from_iter([
            ("n", Arc::new(Int64Array::from(vec![1, 2, 3])) as ArrayRef),
            (
                "s",
                Arc::new(StringArray::from(vec!["a", "b", "c"])) as ArrayRef,
            ),
        ])
        .unwrap();
        encode(&batch.schema(), &[batch]).unwrap()
    }

    /// One framed message: continuation marker, metadata length, metadata
    /// padded to 8 bytes, then `body`.
    fn framed(meta: &[u8], body: &[u8]) -> Vec<u8> {
        let padded = meta.len().div_ceil(8) * 8;
        let mut out = vec![0xFF; 4];
        out.extend_from_slice(&(padded as i32).to_le_bytes());
        out.extend_from_slice(meta);
        out.resize(8 + padded, 0);
        out.extend_from_slice(body);
        out
    }

    type Fbb<'a> = flatbuffers::FlatBufferBuilder<'a>;
    type Union = flatbuffers::WIPOffset<flatbuffers::UnionWIPOffset>;

    fn message(
        header_type: fb::MessageHeader,
        body_len: i64,
        header: impl FnOnce(&mut Fbb) -> Union,
    ) -> Vec<u8> {
        let mut fbb = Fbb::new();
        let header = header(&mut fbb);
        let mut message = fb::MessageBuilder::new(&mut fbb);
        message.add_version(fb::MetadataVersion::V5);
        message.add_header_type(header_type);
        message.add_header(header);
        message.add_bodyLength(body_len);
        let message = message.finish();
        fbb.finish(message, None);
        fbb.finished_data().to_vec()
    }

    /// A schema message with one field of `type_type` built by `type_`,
    /// with `children` child fields of type Int64.
    fn schema(type_type: fb::Type, bit_width: i32, children: usize) -> Vec<u8> {
        message(fb::MessageHeader::Schema, 0, |fbb| {
            let int = |fbb: &mut Fbb, width: i32| {
                let mut int = fb::IntBuilder::new(fbb);
                int.add_bitWidth(width);
                int.add_is_signed(true);
                int.finish().as_union_value()
            };
            let child_fields: Vec<_> = (0..children)
                .map(|_| {
                    let type_ = int(fbb, 64);
                    let mut field = fb::FieldBuilder::new(fbb);
                    field.add_type_type(fb::Type::Int);
                    field.add_type_(type_);
                    field.finish()
                })
                .collect();
            let child_vector = fbb.create_vector(&child_fields);
            let type_ = if type_type == fb::Type::Int {
                int(fbb, bit_width)
            } else {
                fb::ListBuilder::new(fbb).finish().as_union_value()
            };
            let name = fbb.create_string("x");
            let mut field = fb::FieldBuilder::new(fbb);
            field.add_name(name);
            field.add_nullable(true);
            field.add_type_type(type_type);
            field.add_type_(type_);
            field.add_children(child_vector);
            let field = field.finish();
            let fields = fbb.create_vector(&[field]);
            let mut schema = fb::SchemaBuilder::new(fbb);
            schema.add_fields(fields);
            schema.finish().as_union_value()
        })
    }

    fn batch(rows: i64, body_len: i64, buffer_len: i64, compressed: bool) -> Vec<u8> {
        message(fb::MessageHeader::RecordBatch, body_len, |fbb| {
            let nodes = fbb.create_vector(&[fb::FieldNode::new(rows, 0)]);
            let buffers =
                fbb.create_vector(&[fb::Buffer::new(0, 0), fb::Buffer::new(0, buffer_len)]);
            let compression = compressed.then(|| {
                let mut c = fb::BodyCompressionBuilder::new(fbb);
                c.add_codec(fb::CompressionType::ZSTD);
                c.finish()
            });
            let mut batch = fb::RecordBatchBuilder::new(fbb);
            batch.add_length(rows);
            batch.add_nodes(nodes);
            batch.add_buffers(buffers);
            if let Some(c) = compression {
                batch.add_compression(c);
            }
            batch.finish().as_union_value()
        })
    }

    fn int64_stream(batch_meta: Vec<u8>, body: &[u8]) -> Vec<u8> {
        let mut stream = framed(&schema(fb::Type::Int, 64, 0), &[]);
        stream.extend(framed(&batch_meta, body));
        stream
    }

    #[test]
    fn a_well_formed_guest_table_decodes() {
        let (schema, batches) = decode_untrusted(&sample(), ALLOW).unwrap();
        assert_eq!(schema.fields().len(), 2);
        assert_eq!(row_count(&batches), 3);
        // A hand-framed one-column table: three int64 values.
        let values: Vec<u8> = [1i64, 2, 3].iter().flat_map(|v| v.to_le_bytes()).collect();
        let stream = int64_stream(batch(3, 24, 24, false), &values);
        let (_, batches) = decode_untrusted(&stream, ALLOW).unwrap();
        assert_eq!(row_count(&batches), 3);
    }

    #[test]
    fn claimed_lengths_past_the_bytes_sent_are_refused_before_allocating() {
        // Metadata claiming 2 GiB in an 8-byte emit.
        let mut huge_meta = vec![0xFF; 4];
        huge_meta.extend_from_slice(&i32::MAX.to_le_bytes());
        assert_eq!(
            decode_untrusted(&huge_meta, ALLOW),
            Err(Refusal::Overrun("metadata"))
        );
        // A body claiming 2^40 bytes.
        let stream = int64_stream(batch(3, 1 << 40, 24, false), &[0; 24]);
        assert_eq!(
            decode_untrusted(&stream, ALLOW),
            Err(Refusal::Overrun("message body"))
        );
        // A buffer claiming more than its body.
        let stream = int64_stream(batch(3, 24, 1 << 40, false), &[0; 24]);
        assert_eq!(
            decode_untrusted(&stream, ALLOW),
            Err(Refusal::Overrun("buffer"))
        );
        // A negative metadata length.
        let mut negative = vec![0xFF; 4];
        negative.extend_from_slice(&(-8i32).to_le_bytes());
        assert!(matches!(
            decode_untrusted(&negative, ALLOW),
            Err(Refusal::Framing(_))
        ));
        // Truncation anywhere is an error (or, cut exactly between
        // messages, a shorter valid stream), never a panic.
        let whole = sample();
        let mut refused = 0;
        for cut in 0..whole.len() {
            match decode_untrusted(&whole[..cut], ALLOW) {
                Ok((_, batches)) => assert!(row_count(&batches) <= 3, "cut at {cut}"),
                Err(_) => refused += 1,
            }
        }
        assert!(refused >= whole.len() - 2, "{refused} of {}", whole.len());
    }

    #[test]
    fn compression_dictionaries_and_row_bombs_are_refused() {
        let stream = int64_stream(batch(3, 24, 24, true), &[0; 24]);
        assert_eq!(decode_untrusted(&stream, ALLOW), Err(Refusal::Compressed));
        let stream = int64_stream(batch(1 << 40, 24, 24, false), &[0; 24]);
        assert_eq!(decode_untrusted(&stream, ALLOW), Err(Refusal::TooManyRows));
        let small = Allowance {
            rows: 2,
            columns: 16,
        };
        assert_eq!(
            decode_untrusted(&sample(), small),
            Err(Refusal::TooManyRows)
        );
        let narrow = Allowance {
            rows: 10,
            columns: 1,
        };
        assert_eq!(
            decode_untrusted(&sample(), narrow),
            Err(Refusal::TooManyColumns)
        );
    }

    #[test]
    fn malformed_schemas_are_refused_not_panicked_on() {
        for (type_type, width, children) in [
            (fb::Type::Int, 7, 0),  // an integer 7 bits wide
            (fb::Type::Int, 64, 1), // an integer with a child
            (fb::Type::List, 0, 0), // a list without its child
            (fb::Type::List, 0, 1), // any nested type
        ] {
            let stream = framed(&schema(type_type, width, children), &[]);
            assert!(
                matches!(decode_untrusted(&stream, ALLOW), Err(Refusal::Type(_))),
                "{type_type:?} {width} {children}"
            );
        }
        // A schema with no fields.
        let empty = message(fb::MessageHeader::Schema, 0, |fbb| {
            let fields = fbb.create_vector::<flatbuffers::WIPOffset<fb::Field>>(&[]);
            let mut schema = fb::SchemaBuilder::new(fbb);
            schema.add_fields(fields);
            schema.finish().as_union_value()
        });
        assert!(matches!(
            decode_untrusted(&framed(&empty, &[]), ALLOW),
            Err(Refusal::Type(_))
        ));
        // A batch before any schema.
        let stream = framed(&batch(3, 24, 24, false), &[0; 24]);
        assert!(matches!(
            decode_untrusted(&stream, ALLOW),
            Err(Refusal::Framing(_))
        ));
    }

    #[test]
    fn random_mutations_never_panic() {
        // A small deterministic mutation fuzz: flip bytes of a valid stream.
        let whole = sample();
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..20_000 {
            let mut bytes = whole.clone();
            for _ in 0..4 {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let at = (state as usize) % bytes.len();
                bytes[at] = (state >> 32) as u8;
            }
            let _ = decode_untrusted(&bytes, ALLOW);
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode(b"not arrow at all").is_err());
        assert!(decode(&[]).is_err());
    }
}
