//! `scorer-simple`: sums one numeric column over a subject's rows in every
//! dataset that has it. A minimal scorer; the host clamps and buckets.
//!
//! Params: `{"column": "tax_paid"}`.

use datasandbox_guest::{Guest, ipc};

struct SumScorer;

impl Guest for SumScorer {
    fn score(rows: Vec<(String, Vec<u8>)>, params: String) -> Result<f64, String> {
        let params: serde_json::Value =
            serde_json::from_str(&params).map_err(|e| format!("params are not JSON: {e}"))?;
        let column = params
            .get("column")
            .and_then(|c| c.as_str())
            .ok_or("params need a \"column\"")?;
        let mut total = 0.0;
        for (_dataset, bytes) in rows {
            for batch in ipc::decode(&bytes).map_err(|e| e.to_string())? {
                if batch.column_by_name(column).is_some() {
                    total += ipc::numeric_column(&batch, column)?
                        .into_iter()
                        .flatten()
                        .sum::<f64>();
                }
            }
        }
        Ok(total)
    }
}

datasandbox_guest::export!(SumScorer);
