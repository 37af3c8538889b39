//! `data.query`: SQL through DataFusion over the job's datasets, one SELECT
//! at a time, open data only until an output policy exists, with results
//! equal to native DataFusion.

use crate::common;

use common::*;
use datasandbox::dataset::Classification;
use datasandbox::sandbox::{Category, GuestCall};

#[tokio::test]
async fn district_stats_matches_native_datafusion() {
    let datasets = vec![register(Classification::Open)];
    let execution = sandbox()
        .run_bytes(
            &guest("district_stats"),
            &env("district-stats", quick_limits(), datasets.clone()),
            GuestCall::Run {
                params: "{}".into(),
            },
        )
        .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    let expected = native(
        "SELECT district, COUNT(*) AS enterprises, AVG(employees) AS mean_employees \
         FROM enterprises GROUP BY district ORDER BY district",
        &datasets,
    )
    .await;
    assert_eq!(table(&execution, "by_district"), expected);
    assert_eq!(value(&execution, "districts"), 16.0);
}

#[tokio::test]
async fn joins_and_subqueries_over_open_data_match_native_datafusion() {
    let datasets = vec![register(Classification::Open), tax_records()];
    for sql in [
        "SELECT e.industry, SUM(t.tax_paid) AS tax FROM enterprises e JOIN tax_records t \
         ON e.enterprise_id = t.enterprise_id GROUP BY e.industry ORDER BY e.industry",
        "WITH big AS (SELECT * FROM enterprises WHERE employees > 100) \
         SELECT district, COUNT(*) AS n FROM big GROUP BY district ORDER BY district",
        "SELECT quarter, AVG(overdue) AS rate FROM tax_records WHERE enterprise_id IN \
         (SELECT enterprise_id FROM enterprises WHERE size_class = 'micro') GROUP BY quarter ORDER BY quarter",
    ] {
        let execution = query_through_guest(sql, datasets.clone()).await;
        assert_eq!(
            execution.category,
            Category::Ok,
            "{sql}: {:?}",
            execution.diagnostics
        );
        assert_eq!(
            table(&execution, "result"),
            native(sql, &datasets).await,
            "{sql}"
        );
    }
}

/// Statements that must be refused before they run, with the host reason
/// the guest (and, when it fails on it, the submitter) sees.
#[tokio::test]
async fn only_single_select_statements_run() {
    let refused = [
        (
            "DROP TABLE enterprises",
            "only SELECT statements are allowed",
        ),
        (
            "CREATE TABLE copy AS SELECT * FROM enterprises",
            "only SELECT statements are allowed",
        ),
        (
            "INSERT INTO enterprises SELECT * FROM enterprises",
            "only SELECT statements are allowed",
        ),
        (
            "DELETE FROM enterprises",
            "only SELECT statements are allowed",
        ),
        (
            "COPY enterprises TO '/tmp/stolen.csv'",
            "only SELECT statements are allowed",
        ),
        (
            "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
            "only SELECT statements are allowed",
        ),
        (
            "SET datafusion.execution.batch_size = 1",
            "only SELECT statements are allowed",
        ),
        (
            "EXPLAIN SELECT * FROM enterprises",
            "EXPLAIN is refused: it shows statistics and file paths",
        ),
        (
            "EXPLAIN ANALYZE SELECT * FROM enterprises",
            "EXPLAIN is refused: it shows statistics and file paths",
        ),
        ("SELECT 1; SELECT 2", "one statement per query"),
    ];
    for (sql, reason) in refused {
        let execution = query_through_guest(sql, vec![register(Classification::Open)]).await;
        assert_eq!(
            execution.category,
            Category::PolicyRejected(reason.into()),
            "{sql}"
        );
        assert_eq!(
            execution.diagnostics.queries[0].outcome,
            format!("rejected: {reason}"),
            "{sql}"
        );
    }
}

#[tokio::test]
async fn nothing_outside_the_jobs_tables_is_reachable() {
    for sql in [
        "SELECT * FROM information_schema.tables",
        "SELECT * FROM 'data/samples/enterprises.csv'",
        "SELECT * FROM tax_records",
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM read_parquet('data/samples/enterprises.parquet')",
        "SELEC 1",
    ] {
        // Only the register is part of this job.
        let execution = query_through_guest(sql, vec![register(Classification::Open)]).await;
        assert_eq!(execution.category, Category::GuestError, "{sql}");
        let outcome = &execution.diagnostics.queries[0].outcome;
        assert!(outcome.starts_with("invalid: "), "{sql}: {outcome}");
    }
}

#[tokio::test]
async fn protected_datasets_fail_closed_without_a_policy() {
    for classification in [Classification::Conditional, Classification::Restricted] {
        let execution = query_through_guest(
            "SELECT district, COUNT(*) FROM enterprises GROUP BY district",
            vec![register(classification)],
        )
        .await;
        assert_eq!(
            execution.category,
            Category::PolicyRejected("no policy for this dataset (enterprises)".into())
        );
        assert_eq!(
            execution.category.to_string(),
            "policy-rejected: no policy for this dataset (enterprises)"
        );
        assert!(execution.outputs.is_empty());
    }
}

#[tokio::test]
async fn a_protected_table_hidden_in_a_subquery_is_still_refused() {
    let mut protected = tax_records();
    protected.classification = Classification::Restricted;
    let execution = query_through_guest(
        "SELECT COUNT(*) FROM enterprises WHERE enterprise_id IN (SELECT enterprise_id FROM tax_records WHERE overdue = 1)",
        vec![register(Classification::Open), protected],
    )
    .await;
    assert_eq!(
        execution.category,
        Category::PolicyRejected("no policy for this dataset (tax_records)".into())
    );
}

#[tokio::test]
async fn tables_lists_the_jobs_datasets_with_their_columns() {
    // district-stats refuses to run over a table that `tables()` does not list.
    let execution = sandbox()
        .run_bytes(
            &guest("district_stats"),
            &env(
                "tables",
                quick_limits(),
                vec![register(Classification::Open)],
            ),
            GuestCall::Run {
                params: r#"{"table":"tax_records"}"#.into(),
            },
        )
        .await;
    assert_eq!(execution.category, Category::GuestError);
    assert_eq!(
        execution.diagnostics.guest_error.as_deref(),
        Some("table tax_records is not part of this job")
    );
}

#[tokio::test]
async fn table_functions_are_refused_like_any_table_outside_the_job() {
    let execution = query_through_guest(
        "SELECT COUNT(*) FROM generate_series(1, 1000000000000)",
        vec![register(Classification::Open)],
    )
    .await;
    assert_eq!(
        execution.category.code(),
        "policy-rejected",
        "{:?}",
        execution.diagnostics
    );
    assert!(
        execution
            .category
            .to_string()
            .contains("is not part of this job")
    );
}

#[tokio::test]
async fn deeply_nested_sql_is_refused_without_hurting_the_host() {
    // 5,000 deep stays under the statement length bound (16 KiB), so the
    // parser's own recursion limit is what refuses it.
    let depth = 5_000;
    let sql = format!("SELECT {}1{} AS x", "(".repeat(depth), ")".repeat(depth));
    let execution = query_through_guest(&sql, vec![register(Classification::Open)]).await;
    assert_eq!(execution.category, Category::GuestError);
    assert!(
        execution.diagnostics.queries[0]
            .outcome
            .starts_with("invalid: ")
    );
    // Long statements are refused unparsed.
    let long = format!("SELECT 1 AS x{}", " ".repeat(2 << 20));
    let execution = query_through_guest(&long, vec![register(Classification::Open)]).await;
    assert_eq!(
        execution.diagnostics.queries[0].outcome,
        "invalid: statement too long"
    );
    let next = query_through_guest("SELECT 1 AS x", vec![register(Classification::Open)]).await;
    assert_eq!(next.category, Category::Ok);
}
