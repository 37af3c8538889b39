//! `model-baseline`: predicts the training mean of the label for every row.
//! The constant baseline every real model must beat.
//!
//! Params: `{"label": "overdue"}`.

use std::sync::Mutex;

use datasandbox_guest::{Guest, ipc};

/// The fitted mean; `train` and `predict` run in one instance.
static MEAN: Mutex<Option<f64>> = Mutex::new(None);

struct Baseline;

impl Guest for Baseline {
    fn train(table: Vec<u8>, params: String) -> Result<(), String> {
        let params: serde_json::Value =
            serde_json::from_str(&params).map_err(|e| format!("params are not JSON: {e}"))?;
        let label = params
            .get("label")
            .and_then(|l| l.as_str())
            .unwrap_or("label");
        let (mut sum, mut count) = (0.0, 0usize);
        for batch in ipc::decode(&table).map_err(|e| e.to_string())? {
            for value in ipc::numeric_column(&batch, label)?.into_iter().flatten() {
                sum += value;
                count += 1;
            }
        }
        *MEAN.lock().map_err(|_| "poisoned")? =
            Some(if count == 0 { 0.0 } else { sum / count as f64 });
        Ok(())
    }

    fn predict(features: Vec<u8>) -> Result<Vec<f64>, String> {
        let mean = MEAN
            .lock()
            .map_err(|_| "poisoned")?
            .ok_or("predict before train")?;
        let rows: usize = ipc::decode(&features)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|b| b.num_rows())
            .sum();
        Ok(vec![mean; rows])
    }
}

datasandbox_guest::export!(Baseline);
