//! `dsb dev run`'s call assembly (`sandbox::local::call_for`) on real
//! files: each world gets the arguments the server would pass, a model's
//! label is held back from the rows it predicts, and missing inputs are
//! typed errors.

use std::path::Path;

use datasandbox::dataset::{Classification, DatasetSource};
use datasandbox::sandbox::local::{LocalCallError, call_for};
use datasandbox::sandbox::{GuestCall, World};

fn table(dir: &Path, name: &str, text: &str) -> DatasetSource {
    let path = dir.join(format!("{name}.csv"));
    std::fs::write(&path, text).unwrap();
    DatasetSource::from_file(&path, Classification::Open).unwrap()
}

fn rows_and_columns(ipc: &[u8]) -> (usize, Vec<String>) {
    let (schema, batches) = datasandbox::arrow_ipc::decode(ipc).unwrap();
    (
        batches.iter().map(|b| b.num_rows()).sum(),
        schema.fields().iter().map(|f| f.name().clone()).collect(),
    )
}

#[tokio::test]
async fn each_world_gets_what_the_server_would_pass() {
    let dir = tempfile::tempdir().unwrap();
    let train = table(dir.path(), "train", "x,y,label\n1,2,0\n3,4,1\n5,6,1\n");
    let holdout = dir.path().join("holdout.csv");
    std::fs::write(&holdout, "x,y,label\n7,8,0\n9,10,1\n").unwrap();

    let analysis = call_for(World::Analysis, &[], "{}".into(), None, None)
        .await
        .unwrap();
    assert!(matches!(analysis.call, GuestCall::Run { ref params } if params == "{}"));
    assert!(analysis.labels.is_none());

    // Locally the whole table is one block.
    let block = call_for(
        World::BlockAnalysis,
        std::slice::from_ref(&train),
        "{}".into(),
        None,
        None,
    )
    .await
    .unwrap();
    let GuestCall::Analyze { block, .. } = block.call else {
        panic!("not an analyze call")
    };
    assert_eq!(
        rows_and_columns(&block),
        (3, vec!["x".into(), "y".into(), "label".into()])
    );

    // A model trains on every column and predicts the holdout without its
    // label, which comes back for the local score.
    let model = call_for(
        World::Model,
        std::slice::from_ref(&train),
        "{}".into(),
        Some("label"),
        Some(&holdout),
    )
    .await
    .unwrap();
    assert_eq!(model.labels, Some(vec![0.0, 1.0]));
    let GuestCall::TrainPredict {
        train: t, features, ..
    } = model.call
    else {
        panic!("not a train-predict call")
    };
    assert_eq!(rows_and_columns(&t).0, 3);
    assert_eq!(
        rows_and_columns(&features),
        (2, vec!["x".into(), "y".into()])
    );
    // Without a holdout it predicts its own training rows.
    let own = call_for(
        World::Model,
        std::slice::from_ref(&train),
        "{}".into(),
        Some("label"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(own.labels, Some(vec![0.0, 1.0, 1.0]));

    // A scorer gets every table by name.
    let other = table(dir.path(), "other", "k\n1\n");
    let scorer = call_for(
        World::Scorer,
        &[train.clone(), other],
        "{}".into(),
        None,
        None,
    )
    .await
    .unwrap();
    let GuestCall::Score { rows, .. } = scorer.call else {
        panic!("not a score call")
    };
    let names: Vec<&str> = rows.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["train", "other"]);
}

#[tokio::test]
async fn missing_inputs_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    let train = table(dir.path(), "train", "x,name\n1,a\n2,b\n");
    let err = |r: Result<_, LocalCallError>| r.map(|_| ()).unwrap_err();
    assert!(matches!(
        err(call_for(World::BlockAnalysis, &[], "{}".into(), None, None).await),
        LocalCallError::NoData
    ));
    assert!(matches!(
        err(call_for(
            World::Model,
            std::slice::from_ref(&train),
            "{}".into(),
            None,
            None
        )
        .await),
        LocalCallError::NoLabel
    ));
    assert!(matches!(
        err(call_for(World::Model, std::slice::from_ref(&train), "{}".into(), Some("nope"), None).await),
        LocalCallError::UnknownLabel(name) if name == "nope"
    ));
    assert!(matches!(
        err(call_for(World::Model, &[train], "{}".into(), Some("name"), None).await),
        LocalCallError::LabelNotNumeric(name) if name == "name"
    ));
}
