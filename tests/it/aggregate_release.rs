//! The aggregate release mode on protected data, through a wasm guest: a
//! corpus of attempts to get rows or small groups out, which must be refused
//! or come back with the small groups withheld, and legitimate analyses,
//! which must equal native DataFusion with the threshold applied by hand
//! (perturbation off) and stay within the perturbation's bounds (as
//! shipped). `gate` attacks the gate itself: the attacks that once got rows
//! out, neighbouring datasets, a canary, a query fuzzer, the ledger.

use crate::common;

mod gate;

use common::*;
use datasandbox::sandbox::{Category, Execution};

enum Expect {
    /// Refused before running, with this code.
    Refused(&'static str),
    /// Runs; equals this native query (with the threshold written out).
    Equals(&'static str),
    /// Runs and releases nothing (every group was too small).
    Nothing,
    /// Runs: the shape is harmless under the positive grammar (windows, set
    /// operations and subqueries above vetted aggregations see released
    /// rows only; a derived table may drop the unit, the host carries it).
    Released,
}

async fn run(sql: &str) -> Execution {
    query_through_guest(sql, protected_samples()).await
}

/// The shipped policies with cell-key perturbation off: released values
/// are exact, so they can be compared with native DataFusion.
fn exact_samples() -> Vec<datasandbox::dataset::DatasetSource> {
    let mut datasets = protected_samples();
    for dataset in &mut datasets {
        let mut rules = (*dataset.rules.clone().unwrap()).clone();
        rules.perturbation = None;
        dataset.rules = Some(std::sync::Arc::new(rules));
    }
    datasets
}

async fn expect(sql: &str, expected: Expect) {
    let execution = query_through_guest(sql, exact_samples()).await;
    match expected {
        Expect::Refused(code) => {
            assert_eq!(
                execution.category.code(),
                "policy-rejected",
                "{sql}: {:?}",
                execution.diagnostics
            );
            let reason = execution.category.reason().unwrap();
            assert!(
                reason.starts_with(code),
                "{sql}: expected {code}, got {reason}"
            );
            assert!(execution.outputs.is_empty());
        }
        Expect::Equals(reference) => {
            assert_eq!(
                execution.category,
                Category::Ok,
                "{sql}: {:?}",
                execution.diagnostics
            );
            let got = rows(&table(&execution, "result"));
            let want = rows(&native_typed(reference, &protected_samples()).await);
            assert!(
                !want.is_empty(),
                "{sql}: the reference must release something"
            );
            // Sums of floats are added in another order by the vetting:
            // equal to the last few ulps.
            let close = |a: &String, b: &String| match (a.parse::<f64>(), b.parse::<f64>()) {
                (Ok(x), Ok(y)) => (x - y).abs() <= 1e-9 * y.abs().max(1.0),
                _ => a == b,
            };
            assert!(
                got.len() == want.len()
                    && got
                        .iter()
                        .zip(&want)
                        .all(|(g, w)| g.len() == w.len()
                            && g.iter().zip(w).all(|(a, b)| close(a, b))),
                "{sql}: {got:?} vs {want:?}"
            );
        }
        Expect::Released => {
            assert_eq!(
                execution.category,
                Category::Ok,
                "{sql}: {:?}",
                execution.diagnostics
            );
        }
        Expect::Nothing => {
            assert_eq!(
                execution.category,
                Category::Ok,
                "{sql}: {:?}",
                execution.diagnostics
            );
            assert_eq!(
                rows(&table(&execution, "result")),
                Vec::<Vec<String>>::new(),
                "{sql}"
            );
        }
    }
}

#[tokio::test]
async fn attempts_to_get_rows_or_small_groups_out_fail() {
    use Expect::*;
    let corpus: Vec<(&str, Expect)> = vec![
        // Row-level output.
        ("SELECT * FROM enterprises", Refused("row-level-output")),
        (
            "SELECT enterprise_id FROM enterprises",
            Refused("row-level-output"),
        ),
        (
            "SELECT district, employees FROM enterprises WHERE employees > 5000",
            Refused("row-level-output"),
        ),
        (
            "SELECT e.district, t.tax_paid FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id",
            Refused("row-level-output"),
        ),
        (
            "SELECT district FROM enterprises LIMIT 1",
            Refused("row-level-output"),
        ),
        // Identifiers filtered, grouped, compared, used in expressions.
        (
            "SELECT COUNT(*) FROM enterprises WHERE enterprise_id = '913100000001000000'",
            Refused("identifier-used"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE name LIKE 'Firm 0001%'",
            Refused("identifier-used"),
        ),
        (
            "SELECT SUM(employees) FROM enterprises WHERE enterprise_id < '91310001'",
            Refused("identifier-used"),
        ),
        (
            "SELECT enterprise_id, COUNT(*) FROM enterprises GROUP BY enterprise_id",
            Refused("identifier-used"),
        ),
        (
            "SELECT LENGTH(name) AS l, COUNT(*) FROM enterprises GROUP BY LENGTH(name)",
            Refused("expression-not-total"),
        ),
        (
            "SELECT SUBSTR(enterprise_id, 1, 8) AS p, COUNT(*) FROM enterprises GROUP BY SUBSTR(enterprise_id, 1, 8)",
            Refused("expression-not-total"),
        ),
        (
            "SELECT COUNT(DISTINCT name) FROM enterprises",
            Refused("aggregate-argument"),
        ),
        (
            "SELECT district, COUNT(*) FROM enterprises GROUP BY district ORDER BY MIN(enterprise_id)",
            Refused("aggregate-not-allowed"),
        ),
        (
            "WITH x AS (SELECT enterprise_id AS k, district FROM enterprises) SELECT district, COUNT(*) FROM x WHERE k = '913100000001000000' GROUP BY district",
            Refused("identifier-used"),
        ),
        // Quoting and case tricks resolve to the same column.
        (
            "SELECT COUNT(*) FROM enterprises WHERE \"enterprise_id\" = '913100000001000000'",
            Refused("identifier-used"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE Enterprise_ID = '913100000001000000'",
            Refused("identifier-used"),
        ),
        (
            "SELECT COUNT(*) FROM ENTERPRISES WHERE NAME = 'Firm 0001 Co. Ltd.'",
            Refused("identifier-used"),
        ),
        // Aggregates outside the allow-list, or over computed values.
        (
            "SELECT MAX(employees) FROM enterprises",
            Refused("aggregate-not-allowed"),
        ),
        (
            "SELECT MIN(registered_capital) FROM enterprises",
            Refused("aggregate-not-allowed"),
        ),
        (
            "SELECT MEDIAN(employees) FROM enterprises",
            Refused("aggregate-not-allowed"),
        ),
        (
            // Off every query's function allow-list, before the gate.
            "SELECT ARRAY_AGG(district) FROM enterprises",
            Refused("function-not-allowed"),
        ),
        (
            "SELECT STRING_AGG(district, ',') FROM enterprises",
            Refused("function-not-allowed"),
        ),
        (
            "SELECT FIRST_VALUE(employees ORDER BY employees) FROM enterprises",
            Refused("aggregate-argument"),
        ),
        (
            "SELECT SUM(CASE WHEN employees = 828 THEN registered_capital ELSE 0 END) FROM enterprises",
            Refused("aggregate-argument"),
        ),
        (
            "SELECT SUM(employees * 2) FROM enterprises",
            Refused("aggregate-argument"),
        ),
        (
            "SELECT SUM(x) FROM (SELECT enterprise_id, CASE WHEN employees = 828 THEN registered_capital ELSE 0 END AS x FROM enterprises) s",
            Refused("aggregate-argument"),
        ),
        (
            "SELECT COUNT(*) FILTER (WHERE employees = 828) FROM enterprises",
            Refused("aggregate-argument"),
        ),
        // Shapes that select or difference rows.
        (
            "SELECT district, COUNT(*) FROM enterprises GROUP BY ROLLUP(district)",
            Refused("grouping-sets"),
        ),
        (
            "SELECT district, industry, COUNT(*) FROM enterprises GROUP BY CUBE(district, industry)",
            Refused("grouping-sets"),
        ),
        (
            "SELECT district, industry, COUNT(*) FROM enterprises GROUP BY GROUPING SETS ((district), (industry))",
            Refused("grouping-sets"),
        ),
        (
            "SELECT district, COUNT(*) OVER (PARTITION BY district) FROM enterprises",
            Refused("row-level-output"),
        ),
        (
            "SELECT district, RANK() OVER (ORDER BY COUNT(*)) FROM enterprises GROUP BY district",
            Released,
        ),
        (
            "SELECT district, COUNT(*) FROM enterprises GROUP BY district UNION ALL SELECT district, COUNT(*) FROM enterprises WHERE industry = 'aquaculture' GROUP BY district",
            Released,
        ),
        (
            "SELECT DISTINCT district FROM enterprises",
            Refused("row-level-output"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE employees = (SELECT MAX(employees) FROM enterprises)",
            Refused("subquery-expression"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE enterprise_id IN (SELECT enterprise_id FROM tax_records WHERE overdue = 1)",
            Refused("subquery-expression"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE EXISTS (SELECT 1 FROM tax_records WHERE overdue = 1)",
            Refused("subquery-expression"),
        ),
        (
            "SELECT district, (SELECT COUNT(*) FROM tax_records) AS n FROM enterprises GROUP BY district",
            Released,
        ),
        // Joins other than on declared keys.
        (
            "SELECT e.district, COUNT(*) FROM enterprises e JOIN tax_records t ON e.district = t.quarter GROUP BY e.district",
            Refused("join-not-on-declared-keys"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises e, tax_records t WHERE e.enterprise_id = t.enterprise_id",
            Refused("join-not-on-declared-keys"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises e CROSS JOIN tax_records t",
            Refused("join-not-on-declared-keys"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id AND e.name = 'Firm 0001 Co. Ltd.'",
            Refused("identifier-used"),
        ),
        // Derived tables that drop the privacy unit cannot be counted.
        (
            "SELECT district, COUNT(*) FROM (SELECT district FROM enterprises) s GROUP BY district",
            Released,
        ),
        // EXPLAIN shows statistics.
        (
            "EXPLAIN SELECT district, COUNT(*) FROM enterprises GROUP BY district",
            Refused("EXPLAIN"),
        ),
        // Tiny groups through narrow filters: allowed, but nothing comes back.
        (
            "SELECT COUNT(*) FROM enterprises WHERE district = 'Chongming'",
            Nothing,
        ),
        (
            "SELECT AVG(employees) FROM enterprises WHERE founded = DATE '2016-04-20'",
            Nothing,
        ),
        (
            "SELECT SUM(registered_capital) FROM enterprises WHERE district = 'Pudong' AND industry = 'aquaculture'",
            Nothing,
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE employees = 828",
            Nothing,
        ),
        // Many rows per unit: 16 tax rows but 2 enterprises.
        (
            "SELECT COUNT(*) FROM tax_records t JOIN enterprises e ON t.enterprise_id = e.enterprise_id WHERE e.district = 'Chongming'",
            Nothing,
        ),
        (
            "SELECT quarter, COUNT(*) FROM tax_records t JOIN enterprises e ON t.enterprise_id = e.enterprise_id WHERE e.industry = 'aquaculture' GROUP BY quarter",
            Nothing,
        ),
        // HAVING only sees released groups.
        (
            "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district HAVING COUNT(*) < 5",
            Nothing,
        ),
        // Error oracles: expressions that could fail on one row are refused
        // before anything runs.
        (
            "SELECT COUNT(*) FROM enterprises WHERE 1 / (employees - 828) > 0",
            Refused("expression-not-total"),
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE CAST(district AS INT) = 1",
            Refused("expression-not-total"),
        ),
    ];
    assert!(
        corpus.len() >= 40,
        "the corpus has {} attempts",
        corpus.len()
    );
    for (sql, expected) in corpus {
        expect(sql, expected).await;
    }
}

#[tokio::test]
async fn small_groups_are_withheld_and_look_like_absent_ones() {
    // Chongming has 2 enterprises; rare industries have fewer than 10.
    expect(
        "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district ORDER BY district",
        Expect::Equals(
            "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district \
             HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY district",
        ),
    )
    .await;
    let execution =
        run("SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district ORDER BY district")
            .await;
    let districts: Vec<String> = rows(&table(&execution, "result"))
        .into_iter()
        .map(|r| r[0].clone())
        .collect();
    assert!(!districts.contains(&"Chongming".to_string()));
    assert_eq!(districts.len(), 15);
    // An outer count sees only released groups.
    expect(
        "SELECT COUNT(*) AS groups FROM (SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry) s",
        Expect::Equals(
            "SELECT COUNT(*) AS groups FROM (SELECT industry, COUNT(*) AS n FROM enterprises GROUP BY industry \
             HAVING COUNT(DISTINCT enterprise_id) >= 10) s",
        ),
    )
    .await;
}

#[tokio::test]
async fn the_guest_learns_the_release_rule_and_nothing_about_withheld_groups() {
    let execution = run("SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district").await;
    let bytes = execution
        .outputs
        .iter()
        .find_map(|o| match o {
            datasandbox::sandbox::Output::Table { arrow_ipc, .. } => Some(arrow_ipc.clone()),
            _ => None,
        })
        .unwrap();
    let (schema, _) = datasandbox::arrow_ipc::decode(&bytes).unwrap();
    assert!(!schema.metadata().contains_key("datasandbox.suppression"));
    let rule: serde_json::Value =
        serde_json::from_str(&schema.metadata()["datasandbox.release"]).unwrap();
    assert_eq!(rule["mode"], "aggregate");
    assert_eq!(rule["perturbation"], "cell-key");
}

#[tokio::test]
async fn legitimate_analyses_stay_within_the_perturbation_bounds() {
    // As shipped (cell-key): the same groups as exact, counts within ±2,
    // sums and means within the magnitude bound of the largest contributions.
    let sql = "SELECT industry, COUNT(*) AS n, SUM(employees) AS staff, AVG(registered_capital) AS capital \
               FROM enterprises GROUP BY industry ORDER BY industry";
    let perturbed = rows(&table(&run(sql).await, "result"));
    let exact = rows(&table(
        &query_through_guest(sql, exact_samples()).await,
        "result",
    ));
    assert_eq!(perturbed.len(), exact.len());
    let mut moved = 0;
    for (got, want) in perturbed.iter().zip(&exact) {
        assert_eq!(got[0], want[0]);
        let (n, n0): (i64, i64) = (got[1].parse().unwrap(), want[1].parse().unwrap());
        assert!((n - n0).abs() <= 2, "{got:?} vs {want:?}");
        moved += usize::from(n != n0);
        for column in [2, 3] {
            assert_eq!(
                got[column] == "NULL",
                want[column] == "NULL",
                "{got:?} vs {want:?}"
            );
            if let (Ok(a), Ok(b)) = (got[column].parse::<f64>(), want[column].parse::<f64>()) {
                assert!((a - b).abs() <= 0.4 * b.abs() + 1.0, "{got:?} vs {want:?}");
            }
        }
    }
    assert!(moved > 0, "no count was perturbed");
}

#[tokio::test]
async fn a_value_backed_by_too_few_units_is_withheld() {
    // ~100 enterprises without registered capital plus the few with 828
    // employees: the group passes, its SUM stands for under 10 enterprises.
    let sql = "SELECT COUNT(*) AS n, SUM(registered_capital) AS capital FROM enterprises \
               WHERE registered_capital IS NULL OR employees = 828";
    let execution = run(sql).await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    let result = rows(&table(&execution, "result"));
    assert_eq!(result.len(), 1);
    assert_ne!(
        result[0][0], "NULL",
        "the count stands for enough enterprises"
    );
    assert_eq!(result[0][1], "NULL", "the sum stands for too few");
    let native = rows(&native_typed(sql, &protected_samples()).await);
    assert_ne!(
        native[0][1], "NULL",
        "natively the sum exists, so withholding it is the policy at work"
    );
}

#[tokio::test]
async fn legitimate_analyses_equal_native_datafusion() {
    let cases: Vec<(&str, &str)> = vec![
        (
            "SELECT industry, COUNT(*) AS n, AVG(employees) AS mean FROM enterprises GROUP BY industry ORDER BY industry",
            "SELECT industry, COUNT(*) AS n, AVG(employees) AS mean FROM enterprises GROUP BY industry HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY industry",
        ),
        (
            "SELECT size_class, COUNT(*) AS n, SUM(employees) AS staff FROM enterprises GROUP BY size_class ORDER BY size_class",
            "SELECT size_class, COUNT(*) AS n, SUM(employees) AS staff FROM enterprises GROUP BY size_class ORDER BY size_class",
        ),
        (
            "SELECT district, size_class, COUNT(*) AS n FROM enterprises GROUP BY district, size_class ORDER BY district, size_class",
            "SELECT district, size_class, COUNT(*) AS n FROM enterprises GROUP BY district, size_class HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY district, size_class",
        ),
        (
            "SELECT district, COUNT(DISTINCT enterprise_id) AS firms FROM enterprises GROUP BY district ORDER BY district",
            "SELECT district, COUNT(DISTINCT enterprise_id) AS firms FROM enterprises GROUP BY district HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY district",
        ),
        (
            "SELECT industry, AVG(registered_capital) AS capital FROM enterprises GROUP BY industry ORDER BY industry",
            "SELECT industry, AVG(registered_capital) AS capital FROM enterprises GROUP BY industry HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY industry",
        ),
        (
            "SELECT quarter, SUM(tax_paid) AS tax, AVG(overdue) AS overdue_rate FROM tax_records GROUP BY quarter ORDER BY quarter",
            "SELECT quarter, SUM(tax_paid) AS tax, AVG(overdue) AS overdue_rate FROM tax_records GROUP BY quarter ORDER BY quarter",
        ),
        (
            "SELECT e.industry, AVG(t.tax_paid) AS tax FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id GROUP BY e.industry ORDER BY e.industry",
            "SELECT e.industry, AVG(t.tax_paid) AS tax FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id GROUP BY e.industry HAVING COUNT(DISTINCT e.enterprise_id) >= 10 ORDER BY e.industry",
        ),
        (
            "SELECT e.district, SUM(t.overdue) AS overdue FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id GROUP BY e.district ORDER BY e.district",
            "SELECT e.district, SUM(t.overdue) AS overdue FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id GROUP BY e.district HAVING COUNT(DISTINCT e.enterprise_id) >= 10 ORDER BY e.district",
        ),
        (
            "WITH big AS (SELECT * FROM enterprises WHERE employees >= 100) SELECT district, COUNT(*) AS n FROM big GROUP BY district ORDER BY district",
            "WITH big AS (SELECT * FROM enterprises WHERE employees >= 100) SELECT district, COUNT(*) AS n FROM big GROUP BY district HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY district",
        ),
        (
            "SELECT CASE WHEN employees < 10 THEN 'micro' WHEN employees < 100 THEN 'small' ELSE 'larger' END AS band, COUNT(*) AS n FROM enterprises GROUP BY CASE WHEN employees < 10 THEN 'micro' WHEN employees < 100 THEN 'small' ELSE 'larger' END ORDER BY band",
            "SELECT CASE WHEN employees < 10 THEN 'micro' WHEN employees < 100 THEN 'small' ELSE 'larger' END AS band, COUNT(*) AS n FROM enterprises GROUP BY CASE WHEN employees < 10 THEN 'micro' WHEN employees < 100 THEN 'small' ELSE 'larger' END ORDER BY band",
        ),
        (
            "SELECT date_part('year', founded) AS year, COUNT(*) AS n FROM enterprises GROUP BY date_part('year', founded) ORDER BY year",
            "SELECT date_part('year', founded) AS year, COUNT(*) AS n FROM enterprises GROUP BY date_part('year', founded) HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY year",
        ),
        (
            "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district HAVING COUNT(*) > 100 ORDER BY district",
            "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district HAVING COUNT(*) > 100 AND COUNT(DISTINCT enterprise_id) >= 10 ORDER BY district",
        ),
        (
            "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district ORDER BY n DESC, district LIMIT 3",
            "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district ORDER BY n DESC, district LIMIT 3",
        ),
        (
            "SELECT COUNT(*) AS n, AVG(employees) AS mean FROM enterprises",
            "SELECT COUNT(*) AS n, AVG(employees) AS mean FROM enterprises",
        ),
        (
            "SELECT AVG(n) AS mean_firms FROM (SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district) s",
            "SELECT AVG(n) AS mean_firms FROM (SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district HAVING COUNT(DISTINCT enterprise_id) >= 10) s",
        ),
        (
            "SELECT industry, COUNT(*) AS n FROM enterprises WHERE district = 'Pudong' GROUP BY industry ORDER BY industry",
            "SELECT industry, COUNT(*) AS n FROM enterprises WHERE district = 'Pudong' GROUP BY industry HAVING COUNT(DISTINCT enterprise_id) >= 10 ORDER BY industry",
        ),
        (
            "SELECT vat_declared, COUNT(*) AS n, COUNT(tax_paid) AS paid FROM tax_records GROUP BY vat_declared ORDER BY vat_declared",
            // Undeclared quarters have no tax_paid: that COUNT stands for no enterprise.
            "SELECT vat_declared, COUNT(*) AS n, CASE WHEN COUNT(DISTINCT CASE WHEN tax_paid IS NOT NULL THEN enterprise_id END) >= 10 \
          THEN COUNT(tax_paid) END AS paid FROM tax_records GROUP BY vat_declared ORDER BY vat_declared",
        ),
    ];
    assert!(cases.len() >= 15);
    for (sql, reference) in cases {
        expect(sql, Expect::Equals(reference)).await;
    }
}

#[tokio::test]
async fn rounding_to_5_redacts_small_counts() {
    let mut datasets = protected_samples();
    let mut rules = (*datasets[0].rules.clone().unwrap()).clone();
    rules.rounding = datasandbox::policy::Rounding::Nearest5;
    rules.min_group_size = 2;
    rules.perturbation = None;
    rules.dominance = datasandbox::release::aggregate::Dominance { one: 1.0, two: 1.0 };
    datasets[0].rules = Some(std::sync::Arc::new(rules));
    let execution = query_through_guest(
        "SELECT industry, COUNT(*) AS n, SUM(employees) AS staff FROM enterprises GROUP BY industry ORDER BY industry",
        datasets.clone(),
    )
    .await;
    assert_eq!(
        execution.category,
        Category::Ok,
        "{:?}",
        execution.diagnostics
    );
    let released = rows(&table(&execution, "result"));
    let native = rows(&native_typed(
        "SELECT industry, COUNT(*) AS n, SUM(employees) AS staff FROM enterprises GROUP BY industry ORDER BY industry",
        &datasets,
    )
    .await);
    assert_eq!(released.len(), native.len());
    for (got, raw) in released.iter().zip(&native) {
        let raw_count: i64 = raw[1].parse().unwrap();
        if raw_count <= 7 {
            assert_eq!(got[1], "NULL", "{raw:?}");
        } else {
            let rounded: i64 = got[1].parse().unwrap();
            assert_eq!(rounded % 5, 0);
            assert!((rounded - raw_count).abs() <= 2, "{got:?} vs {raw:?}");
        }
        let staff: i64 = got[2].parse().unwrap();
        assert_eq!(staff % 5, 0);
    }
}

#[tokio::test]
async fn protected_data_without_an_aggregate_policy_answers_nothing() {
    let mut datasets = protected_samples();
    datasets[0].rules = None;
    let execution = query_through_guest(
        "SELECT district, COUNT(*) FROM enterprises GROUP BY district",
        datasets,
    )
    .await;
    assert_eq!(
        execution.category,
        Category::PolicyRejected("no policy for this dataset (enterprises)".into())
    );
}

#[tokio::test]
async fn counting_units_by_rows_and_by_distinct_values_agree() {
    // The register has one row per enterprise, so its unit counts may be row
    // counts; the general COUNT(DISTINCT …) path must release the same.
    let sql = "SELECT industry, COUNT(*) AS n, SUM(registered_capital) AS capital FROM enterprises \
               WHERE registered_capital IS NULL OR employees > 50 GROUP BY industry ORDER BY industry";
    let fast = protected_samples();
    assert!(fast[0].rules.as_ref().unwrap().unit_is_unique);
    let mut general = fast.clone();
    let mut rules = (*general[0].rules.clone().unwrap()).clone();
    rules.unit_is_unique = false;
    general[0].rules = Some(std::sync::Arc::new(rules));
    let a = query_through_guest(sql, fast).await;
    let b = query_through_guest(sql, general).await;
    assert_eq!(a.category, Category::Ok);
    assert_eq!(rows(&table(&a, "result")), rows(&table(&b, "result")));
}
