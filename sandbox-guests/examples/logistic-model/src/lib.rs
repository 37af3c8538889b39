//! `logistic-model`: logistic regression trained by gradient descent inside
//! the sandbox. Numeric features are log-scaled (when non-negative) and
//! standardised with the training rows' statistics; text features are
//! one-hot encoded with the training rows' categories. Predicts a
//! probability per row.
//!
//! Params (the host passes them in contest mode):
//! `{"label": "...", "features": ["...", ...]}`.

use std::collections::BTreeMap;
use std::sync::Mutex;

use datasandbox_guest::arrow_array::cast::AsArray;
use datasandbox_guest::arrow_array::{Array, RecordBatch};
use datasandbox_guest::arrow_schema::DataType;
use datasandbox_guest::{Guest, ipc};

const ITERATIONS: usize = 400;
const LEARNING_RATE: f64 = 0.5;
const L2: f64 = 1e-3;

/// How one input column becomes model inputs.
enum Encoder {
    Numeric { log: bool, mean: f64, std: f64 },
    OneHot(Vec<String>),
}

struct Model {
    columns: Vec<(String, Encoder)>,
    weights: Vec<f64>,
}

static MODEL: Mutex<Option<Model>> = Mutex::new(None);

/// A column's values as text (any type), `None` for NULL.
fn text(batch: &RecordBatch, name: &str) -> Result<Vec<Option<String>>, String> {
    let column = batch
        .column_by_name(name)
        .ok_or_else(|| format!("no column {name}"))?;
    let strings = match column.data_type() {
        DataType::Utf8 => column.as_string::<i32>().clone(),
        DataType::LargeUtf8 | DataType::Utf8View => {
            return Err(format!("column {name}: unsupported text type"));
        }
        _ => return Err(format!("column {name} is not text")),
    };
    Ok((0..strings.len())
        .map(|i| strings.is_valid(i).then(|| strings.value(i).to_string()))
        .collect())
}

fn is_text(batch: &RecordBatch, name: &str) -> bool {
    batch
        .column_by_name(name)
        .is_some_and(|c| matches!(c.data_type(), DataType::Utf8))
}

fn numbers(batches: &[RecordBatch], name: &str) -> Result<Vec<Option<f64>>, String> {
    let mut all = Vec::new();
    for batch in batches {
        all.extend(ipc::numeric_column(batch, name)?);
    }
    Ok(all)
}

fn texts(batches: &[RecordBatch], name: &str) -> Result<Vec<Option<String>>, String> {
    let mut all = Vec::new();
    for batch in batches {
        all.extend(text(batch, name)?);
    }
    Ok(all)
}

impl Model {
    fn width(&self) -> usize {
        1 + self
            .columns
            .iter()
            .map(|(_, e)| match e {
                Encoder::Numeric { .. } => 1,
                Encoder::OneHot(values) => values.len(),
            })
            .sum::<usize>()
    }

    /// The design matrix of `batches`, one row per input row, with a
    /// leading 1 for the intercept.
    fn encode(&self, batches: &[RecordBatch]) -> Result<Vec<Vec<f64>>, String> {
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut matrix = vec![vec![1.0]; rows];
        for (name, encoder) in &self.columns {
            match encoder {
                Encoder::Numeric { log, mean, std } => {
                    for (row, value) in matrix.iter_mut().zip(numbers(batches, name)?) {
                        let x = value.map_or(*mean, |v| if *log { v.max(0.0).ln_1p() } else { v });
                        row.push((x - mean) / std);
                    }
                }
                Encoder::OneHot(values) => {
                    for (row, value) in matrix.iter_mut().zip(texts(batches, name)?) {
                        for category in values {
                            row.push(f64::from(u8::from(value.as_deref() == Some(category))));
                        }
                    }
                }
            }
        }
        Ok(matrix)
    }
}

fn sigmoid(z: f64) -> f64 {
    1.0 / (1.0 + (-z).exp())
}

struct Logistic;

impl Guest for Logistic {
    fn train(table: Vec<u8>, params: String) -> Result<(), String> {
        let params: serde_json::Value =
            serde_json::from_str(&params).map_err(|e| format!("params are not JSON: {e}"))?;
        let label = params["label"].as_str().ok_or("params need a \"label\"")?;
        let features: Vec<String> = params["features"]
            .as_array()
            .ok_or("params need \"features\"")?
            .iter()
            .filter_map(|f| f.as_str().map(str::to_string))
            .collect();
        let batches = ipc::decode(&table).map_err(|e| e.to_string())?;
        let first = batches.first().ok_or("no training rows")?;
        let mut columns = Vec::new();
        for name in &features {
            if is_text(first, name) {
                let mut counts: BTreeMap<String, usize> = BTreeMap::new();
                for value in texts(&batches, name)?.into_iter().flatten() {
                    *counts.entry(value).or_default() += 1;
                }
                // Categories seen at least 5 times; rarer ones share zeros.
                let values = counts
                    .into_iter()
                    .filter(|(_, n)| *n >= 5)
                    .map(|(v, _)| v)
                    .collect();
                columns.push((name.clone(), Encoder::OneHot(values)));
            } else {
                let raw: Vec<f64> = numbers(&batches, name)?.into_iter().flatten().collect();
                let log = raw.iter().all(|v| *v >= 0.0)
                    && raw.iter().copied().fold(0.0, f64::max) > 100.0;
                let xs: Vec<f64> = raw
                    .iter()
                    .map(|v| if log { v.ln_1p() } else { *v })
                    .collect();
                let n = xs.len().max(1) as f64;
                let mean = xs.iter().sum::<f64>() / n;
                let std = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n)
                    .sqrt()
                    .max(1e-9);
                columns.push((name.clone(), Encoder::Numeric { log, mean, std }));
            }
        }
        let mut model = Model {
            columns,
            weights: Vec::new(),
        };
        let x = model.encode(&batches)?;
        let y: Vec<f64> = numbers(&batches, label)?
            .into_iter()
            .map(|v| v.unwrap_or(0.0))
            .collect();
        let mut w = vec![0.0; model.width()];
        let n = x.len().max(1) as f64;
        for _ in 0..ITERATIONS {
            let mut gradient = vec![0.0; w.len()];
            for (row, target) in x.iter().zip(&y) {
                let error = sigmoid(row.iter().zip(&w).map(|(a, b)| a * b).sum()) - target;
                for (g, value) in gradient.iter_mut().zip(row) {
                    *g += error * value;
                }
            }
            for (j, (weight, g)) in w.iter_mut().zip(&gradient).enumerate() {
                let penalty = if j == 0 { 0.0 } else { L2 * *weight };
                *weight -= LEARNING_RATE * (g / n + penalty);
            }
        }
        model.weights = w;
        *MODEL.lock().map_err(|_| "poisoned")? = Some(model);
        Ok(())
    }

    fn predict(features: Vec<u8>) -> Result<Vec<f64>, String> {
        let guard = MODEL.lock().map_err(|_| "poisoned")?;
        let model = guard.as_ref().ok_or("predict before train")?;
        let batches = ipc::decode(&features).map_err(|e| e.to_string())?;
        Ok(model
            .encode(&batches)?
            .iter()
            .map(|row| sigmoid(row.iter().zip(&model.weights).map(|(a, b)| a * b).sum()))
            .collect())
    }
}

datasandbox_guest::export!(Logistic);
