//! The call a guest gets when it runs on a developer's own files
//! (`dsb dev run`): for each world, the arguments the server would pass,
//! assembled from local tables. Nothing here is a release path: the data
//! is the developer's own.

use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{Array, Float64Array};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::error::ArrowError;

use super::{GuestCall, World};
use crate::arrow_ipc;
use crate::dataset::{Classification, DatasetError, DatasetSource};
use crate::query::{OpenError, read_table};

/// A call for a local run, and for `model` guests the labels held back from
/// the rows they predict.
#[derive(Debug)]
pub struct LocalCall {
    pub call: GuestCall,
    pub labels: Option<Vec<f64>>,
}

#[derive(Debug, thiserror::Error)]
pub enum LocalCallError {
    #[error("this world needs a table (--data)")]
    NoData,
    #[error("model guests need --label <column>")]
    NoLabel,
    #[error("no column {0}")]
    UnknownLabel(String),
    #[error("the label column {0} is not numeric")]
    LabelNotNumeric(String),
    #[error(transparent)]
    Open(#[from] OpenError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("encoding a table: {0}")]
    Encode(#[from] ArrowError),
}

/// The call for `world` over `datasets` (the first is the block, the
/// training table or each scorer table in turn). A `model` guest trains on
/// the first table with `label` and predicts `holdout` when given (else the
/// training rows), its label column removed.
pub async fn call_for(
    world: World,
    datasets: &[DatasetSource],
    params: String,
    label: Option<&str>,
    holdout: Option<&Path>,
) -> Result<LocalCall, LocalCallError> {
    let first = || datasets.first().ok_or(LocalCallError::NoData);
    let (call, labels) = match world {
        World::Analysis => (GuestCall::Run { params }, None),
        World::BlockAnalysis => {
            // Locally the whole table is one block.
            let (schema, batches) = read_table(first()?).await?;
            let block = arrow_ipc::encode(&schema, &batches)?;
            (GuestCall::Analyze { block, params }, None)
        }
        World::Scorer => {
            let mut rows = Vec::new();
            for dataset in datasets {
                let (schema, batches) = read_table(dataset).await?;
                rows.push((dataset.name.clone(), arrow_ipc::encode(&schema, &batches)?));
            }
            (GuestCall::Score { rows, params }, None)
        }
        World::Model => {
            let label = label.ok_or(LocalCallError::NoLabel)?;
            let (schema, batches) = read_table(first()?).await?;
            let (_, predict) = match holdout {
                Some(path) => {
                    read_table(&DatasetSource::from_file(path, Classification::Open)?).await?
                }
                None => (Arc::clone(&schema), batches.clone()),
            };
            let index = schema
                .index_of(label)
                .map_err(|_| LocalCallError::UnknownLabel(label.to_string()))?;
            let mut labels = Vec::new();
            let mut features = Vec::new();
            for batch in &predict {
                // Not `cast`: it turns unparsable text into nulls.
                let strict = CastOptions {
                    safe: false,
                    ..CastOptions::default()
                };
                let column = cast_with_options(batch.column(index), &DataType::Float64, &strict)
                    .map_err(|_| LocalCallError::LabelNotNumeric(label.to_string()))?;
                let column = column
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .ok_or_else(|| LocalCallError::LabelNotNumeric(label.to_string()))?;
                labels.extend(column.iter().map(|v| v.unwrap_or(f64::NAN)));
                let mut without = batch.clone();
                without.remove_column(index);
                features.push(without);
            }
            let feature_schema = match features.first() {
                Some(batch) => batch.schema(),
                None => {
                    let mut fields = schema.fields().to_vec();
                    fields.remove(index);
                    Arc::new(datafusion::arrow::datatypes::Schema::new(fields))
                }
            };
            (
                GuestCall::TrainPredict {
                    train: arrow_ipc::encode(&schema, &batches)?,
                    params,
                    features: arrow_ipc::encode(&feature_schema, &features)?,
                },
                Some(labels),
            )
        }
    };
    Ok(LocalCall { call, labels })
}
