//! `block-mean`: the mean and row count of one numeric column of a block.
//!
//! Params: `{"column": "employees"}`. Returns `[mean, rows]` over the
//! non-NULL values.

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
        for batch in ipc::decode_owned(block).map_err(|e| e.to_string())? {
            for value in ipc::numeric_column(&batch, column)?.into_iter().flatten() {
                sum += value;
                count += 1;
            }
        }
        let mean = if count == 0 { 0.0 } else { sum / count as f64 };
        Ok(vec![mean, count as f64])
    }
}

datasandbox_guest::export!(BlockMean);
