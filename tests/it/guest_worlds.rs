//! The example guest of every world runs through the host and returns the
//! right numbers.

use crate::common;

use common::*;
use datafusion::arrow::array::{Array, Float64Array, Int64Array};
use datasandbox::dataset::Classification;
use datasandbox::sandbox::{Category, GuestCall, JobEnv, Returned};
use datasandbox::{arrow_ipc, query};

async fn register_ipc() -> (Vec<u8>, Vec<datafusion::arrow::array::RecordBatch>) {
    let (schema, batches) = query::read_table(&register(Classification::Open))
        .await
        .unwrap();
    (arrow_ipc::encode(&schema, &batches).unwrap(), batches)
}

fn employees(batches: &[datafusion::arrow::array::RecordBatch]) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let column = b.column_by_name("employees").unwrap();
            let column = column.as_any().downcast_ref::<Int64Array>().unwrap();
            column
                .iter()
                .flatten()
                .map(|v| v as f64)
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test]
async fn block_analysis_returns_its_vector() {
    let (block, batches) = register_ipc().await;
    let values = employees(&batches);
    let execution = sandbox()
        .run_bytes(
            &guest("block_mean"),
            &JobEnv::new("block"),
            GuestCall::Analyze {
                block,
                params: r#"{"column":"employees"}"#.into(),
            },
        )
        .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    assert_eq!(
        execution.returned,
        Some(Returned::Vector(vec![mean, values.len() as f64]))
    );
}

#[tokio::test]
async fn model_trains_then_predicts_in_one_instance() {
    let (train, batches) = register_ipc().await;
    let values = employees(&batches);
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let execution = sandbox()
        .run_bytes(
            &guest("model_baseline"),
            &JobEnv::new("model"),
            GuestCall::TrainPredict {
                train: train.clone(),
                params: r#"{"label":"employees"}"#.into(),
                features: train,
            },
        )
        .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    assert_eq!(
        execution.returned,
        Some(Returned::Vector(vec![mean; values.len()]))
    );
}

#[tokio::test]
async fn scorer_scores_one_subjects_rows() {
    let (schema, batches) = query::read_table(&tax_records()).await.unwrap();
    // One enterprise's rows.
    let first = batches[0].slice(0, 8);
    let tax = first.column_by_name("tax_paid").unwrap();
    let tax = tax.as_any().downcast_ref::<Float64Array>().unwrap();
    let expected: f64 = tax.iter().flatten().sum();
    let rows = vec![(
        "tax_records".to_string(),
        arrow_ipc::encode(&schema, std::slice::from_ref(&first)).unwrap(),
    )];
    let execution = sandbox()
        .run_bytes(
            &guest("scorer_simple"),
            &JobEnv::new("score"),
            GuestCall::Score {
                rows,
                params: r#"{"column":"tax_paid"}"#.into(),
            },
        )
        .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    assert_eq!(execution.returned, Some(Returned::Number(expected)));
    assert!(tax.len() == 8 && expected > 0.0);
}

#[tokio::test]
async fn non_analysis_worlds_have_no_data_access() {
    // The block-analysis linker has no `data` interface at all: a module that
    // imported it would be refused at intake (see module_intake.rs); here the
    // example simply runs without datasets.
    let (block, _) = register_ipc().await;
    let mut env = JobEnv::new("no-data");
    env.datasets = vec![register(Classification::Open)];
    let execution = sandbox()
        .run_bytes(
            &guest("block_mean"),
            &env,
            GuestCall::Analyze {
                block,
                params: r#"{"column":"no_such_column"}"#.into(),
            },
        )
        .await;
    assert_eq!(execution.category, Category::GuestError);
    assert!(execution.diagnostics.queries.is_empty());
}
