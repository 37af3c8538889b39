//! The shipped sample datasets are exactly what the generator produces, and
//! have the shape the demo and the policy tests rely on.

use crate::common;

use common::*;
use datasandbox::sample_data;

#[test]
fn shipped_files_equal_the_generators_output() {
    for (name, text) in sample_data::generate() {
        let shipped = std::fs::read_to_string(samples().join(name)).unwrap();
        assert!(
            shipped == text,
            "data/samples/{name} is stale: run `cargo run -- sample-data`"
        );
    }
}

#[tokio::test]
async fn register_has_skewed_districts_rare_industries_and_nulls() {
    let rows = |sql: &'static str| async move {
        let batches = native(sql, &[register(datasandbox::dataset::Classification::Open)]).await;
        datafusion::arrow::util::pretty::pretty_format_batches(&batches)
            .unwrap()
            .to_string()
    };
    let counts = rows("SELECT MIN(n) AS smallest, MAX(n) AS largest FROM (SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district)").await;
    let numbers: Vec<i64> = counts
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|s| s.parse().ok())
        .collect();
    assert!(numbers[0] < 10 && numbers[1] > 300, "{counts}");
    let rare = rows("SELECT COUNT(*) AS n FROM enterprises WHERE industry = 'aquaculture'").await;
    assert!(
        rare.contains("| 1 ")
            || rare.contains("| 2 ")
            || rare.contains("| 3 ")
            || rare.contains("| 4 ")
            || rare.contains("| 5 "),
        "{rare}"
    );
    let nulls =
        rows("SELECT COUNT(*) - COUNT(registered_capital) AS missing FROM enterprises").await;
    assert!(!nulls.contains("| 0 "), "{nulls}");
}
