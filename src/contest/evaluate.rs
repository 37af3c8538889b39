//! Running a submission: the secret split, train and predict in one
//! instance, clipping, scoring, and recording the result with its ladder.

use std::collections::HashMap;

use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray, UInt32Array};
use datafusion::arrow::compute::{cast, concat_batches, take_record_batch};
use datafusion::arrow::datatypes::DataType;
use sha2::{Digest, Sha256};

use super::*;
use crate::dataset::DatasetSource;
use crate::sandbox::{Category, Diagnostics, GuestCall, JobEnv, LoadedModule, Returned, Sandbox};
use crate::store::{Store, StoreError};

/// The scores of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub public: f64,
    pub private: f64,
}

/// Split the labelled rows with the secret seed, run the model and score
/// its predictions, clipped to what the metric reads. The diagnostics are
/// the administrators' (the detailed failure category among them).
pub async fn evaluate(
    sandbox: &Sandbox,
    module: &LoadedModule,
    env: &JobEnv,
    spec: &Spec,
    seed: &str,
    table: &DatasetSource,
    privacy_unit: &str,
) -> (Result<Scores, Category>, Diagnostics) {
    let split = match split(spec, seed, table, privacy_unit).await {
        Ok(split) => split,
        Err(error) => {
            tracing::error!(job = %env.job_id, %error, "contest split");
            return (Err(Category::Internal), Diagnostics::default());
        }
    };
    let params = serde_json::json!({ "label": spec.label, "features": spec.features }).to_string();
    let execution = sandbox
        .run(
            module,
            env,
            GuestCall::TrainPredict {
                train: split.train,
                params,
                features: split.test,
            },
        )
        .await;
    let diagnostics = execution.diagnostics;
    let predictions = match (execution.category, execution.returned) {
        (Category::Ok, Some(Returned::Vector(p))) => p,
        (Category::Ok, _) => return (Err(Category::Internal), diagnostics),
        (category, _) => return (Err(category), diagnostics),
    };
    if predictions.len() != split.labels.len() {
        return (Err(Category::WrongPredictionCount), diagnostics);
    }
    if !predictions.iter().all(|p| spec.metric.valid(*p)) {
        return (Err(Category::InvalidPrediction), diagnostics);
    }
    let predictions: Vec<f64> = predictions
        .into_iter()
        .map(|p| spec.metric.clip(p, spec.label_range))
        .collect();
    let pick = |public: bool| -> (Vec<f64>, Vec<f64>) {
        split
            .is_public
            .iter()
            .zip(predictions.iter().zip(&split.labels))
            .filter(|(p, _)| **p == public)
            .map(|(_, (prediction, label))| (*prediction, *label))
            .unzip()
    };
    let (public_predictions, public_labels) = pick(true);
    let (private_predictions, private_labels) = pick(false);
    let scores = Scores {
        public: spec.metric.score(&public_predictions, &public_labels),
        private: spec.metric.score(&private_predictions, &private_labels),
    };
    (Ok(scores), diagnostics)
}

struct SplitData {
    /// Features and label of the training rows (Arrow IPC).
    train: Vec<u8>,
    /// Features of the public and private test rows, shuffled together.
    test: Vec<u8>,
    /// Per test row: its label and whether it is public.
    labels: Vec<f64>,
    is_public: Vec<bool>,
}

/// A keyed hash of a privacy unit: the same seed gives the same split.
fn keyed(seed: &str, purpose: &str, unit: &str) -> [u8; 32] {
    Sha256::new()
        .chain_update(seed.as_bytes())
        .chain_update([0])
        .chain_update(purpose.as_bytes())
        .chain_update([0])
        .chain_update(unit.as_bytes())
        .finalize()
        .into()
}

async fn split(
    spec: &Spec,
    seed: &str,
    table: &DatasetSource,
    privacy_unit: &str,
) -> Result<SplitData, String> {
    let (schema, batches) = crate::query::read_table(table)
        .await
        .map_err(|e| e.to_string())?;
    let all = concat_batches(&schema, &batches).map_err(|e| e.to_string())?;
    let strings = |name: &str| -> Result<StringArray, String> {
        let column = all
            .column_by_name(name)
            .ok_or_else(|| format!("no column {name}"))?;
        let array = cast(column, &DataType::Utf8).map_err(|e| e.to_string())?;
        Ok(array
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("Utf8")
            .clone())
    };
    let units = strings(privacy_unit)?;
    let labels = {
        let column = all.column_by_name(&spec.label).ok_or("no label column")?;
        let array = cast(column, &DataType::Float64).map_err(|e| e.to_string())?;
        array
            .as_any()
            .downcast_ref::<Float64Array>()
            .expect("Float64")
            .clone()
    };
    // Stratified by class for classification metrics: each class is split
    // in the same proportions, rows ordered by a keyed hash of their unit.
    let mut strata: HashMap<String, Vec<usize>> = HashMap::new();
    for row in 0..all.num_rows() {
        if units.is_null(row) || labels.is_null(row) {
            continue;
        }
        let stratum = if spec.metric.is_classification() {
            labels.value(row).round().to_string()
        } else {
            String::new()
        };
        strata.entry(stratum).or_default().push(row);
    }
    let (mut train, mut test) = (Vec::new(), Vec::new());
    let mut keys: Vec<&String> = strata.keys().collect();
    keys.sort();
    for key in keys {
        let mut rows = strata[key].clone();
        rows.sort_by_key(|r| keyed(seed, "split", units.value(*r)));
        let n = rows.len();
        let train_n = (n as f64 * spec.split.train).round() as usize;
        let public_n = (n as f64 * spec.split.public).round() as usize;
        for (i, row) in rows.into_iter().enumerate() {
            if i < train_n {
                train.push(row);
            } else {
                test.push((row, i < train_n + public_n));
            }
        }
    }
    train.sort_by_key(|r| keyed(seed, "train-order", units.value(*r)));
    test.sort_by_key(|(r, _)| keyed(seed, "test-order", units.value(*r)));
    let project = |rows: Vec<u32>, with_label: bool| -> Result<Vec<u8>, String> {
        let mut columns = spec.features.clone();
        if with_label {
            columns.push(spec.label.clone());
        }
        let indices = columns
            .iter()
            .map(|c| schema.index_of(c).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let taken: RecordBatch =
            take_record_batch(&all, &UInt32Array::from(rows)).map_err(|e| e.to_string())?;
        let projected = taken.project(&indices).map_err(|e| e.to_string())?;
        crate::arrow_ipc::encode(&projected.schema(), &[projected]).map_err(|e| e.to_string())
    };
    Ok(SplitData {
        train: project(train.iter().map(|r| *r as u32).collect(), true)?,
        labels: test.iter().map(|(r, _)| labels.value(*r)).collect(),
        is_public: test.iter().map(|(_, p)| *p).collect(),
        test: project(test.iter().map(|(r, _)| *r as u32).collect(), false)?,
    })
}

/// Record a submission's end; returns the public score to release.
pub async fn record(
    store: &Store,
    spec: &Spec,
    submission: &str,
    team: &str,
    outcome: &Result<Scores, Category>,
) -> Result<Option<f64>, StoreError> {
    store.transition(async |tx| {
        let result = match outcome {
            Ok(scores) => {
                let best: Vec<f64> = sqlx::query_scalar(
                    "SELECT public_released FROM contest_submissions WHERE contest_id = ? AND team = ? AND state = 'scored'",
                )
                .bind(&spec.id)
                .bind(team)
                .fetch_all(tx.conn())
                .await?;
                let best = best
                    .into_iter()
                    .reduce(|a, b| if spec.better(a, b) { a } else { b });
                let rounded = spec.round(scores.public);
                let released = match (spec.release, best) {
                    (ReleaseRule::Ladder, Some(best)) => {
                        let margin = if spec.metric.higher_is_better() {
                            rounded - best
                        } else {
                            best - rounded
                        };
                        if margin > spec.step { rounded } else { best }
                    }
                    _ => rounded,
                };
                sqlx::query("UPDATE contest_submissions SET state = 'scored', counted = 1, category = 'ok', public_raw = ?, private_raw = ?, public_released = ? WHERE id = ?")
                    .bind(scores.public)
                    .bind(scores.private)
                    .bind(released)
                    .bind(submission)
                    .execute(tx.conn())
                    .await?;
                Some(released)
            }
            Err(category) => {
                let host = matches!(category, Category::Internal | Category::Cancelled);
                sqlx::query(
                    "UPDATE contest_submissions SET state = ?, counted = ?, category = ?, category_detail = ? WHERE id = ?",
                )
                .bind(if host { "interrupted" } else { "failed" })
                .bind(i64::from(!host))
                .bind(team_category(category).code())
                .bind(category.code())
                .bind(submission)
                .execute(tx.conn())
                .await?;
                None
            }
        };
        Ok(result)
    }).await
}
