//! `block-mean`: the mean and row count of one numeric column of a block.
//!
//! Params: `{"column": "employees"}`. Returns `[mean, rows]`.

use datasandbox_guest::arrow_array::cast::AsArray;
use datasandbox_guest::arrow_array::types::{Float64Type, Int64Type};
use datasandbox_guest::arrow_schema::DataType;
use datasandbox_guest::{Guest, ipc};

struct BlockMean;

impl Guest for BlockMean {
    fn analyze(block: Vec<u8>, params: String) -> Result<Vec<f64>, String> {
        let params: serde_json::Value =
            serde_json::from_str(&params).map_err(|e| format!("params are not JSON: {e}"))?;
        let column = params
            .get("column")
            .and_then(|c| c.as_str())
            .ok_or("params need a \"column\"")?;
        let (mut sum, mut count) = (0.0, 0usize);
        for batch in ipc::decode(&block).map_err(|e| e.to_string())? {
            let array = batch
                .column_by_name(column)
                .ok_or_else(|| format!("no column {column}"))?;
            let values: Vec<f64> = match array.data_type() {
                DataType::Float64 => array
                    .as_primitive::<Float64Type>()
                    .iter()
                    .flatten()
                    .collect(),
                DataType::Int64 => array
                    .as_primitive::<Int64Type>()
                    .iter()
                    .flatten()
                    .map(|v| v as f64)
                    .collect(),
                other => return Err(format!("column {column} has type {other}, not a number")),
            };
            count += values.len();
            sum += values.iter().sum::<f64>();
        }
        let mean = if count == 0 { 0.0 } else { sum / count as f64 };
        Ok(vec![mean, count as f64])
    }
}

datasandbox_guest::export!(BlockMean);
