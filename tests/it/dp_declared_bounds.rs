//! A declared `max_rows_per_unit`: a public bound the data holder writes in
//! the manifest, held against the data when a version is registered (a file
//! with a unit over it is refused), and then what `dp` queries on the table
//! are bounded by (no per-unit stage in the plan) whenever it is no looser
//! than the policy's per-query bounds. Real catalog, real DataFusion, real
//! OpenDP noise, a real SQLite ledger; the empirical audit runs on
//! neighbouring registered datasets that differ in one unit with the most
//! rows the bound allows.

use std::path::{Path, PathBuf};

use datasandbox::catalog::{Catalog, CatalogError, DatasetVersion, Manifest};
use datasandbox::dataset::DatasetSource;
use datasandbox::policy::PolicySet;
use datasandbox::query::QuerySession;
use datasandbox::release::bind::version_dp_table;

use crate::dp::{clopper_pearson, numbers, report, session, store, strings};

const MANIFEST: &str = "id = \"filings\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\n\
update_frequency = \"never\"\nclassification = \"restricted\"\nprivacy_unit = \"firm_id\"\n\
ROWS\njoin_keys = []\n\n\
[[columns]]\nname = \"firm_id\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n\
[[columns]]\nname = \"category\"\ntype = \"string\"\ndescription = \"c\"\nrole = \"attribute\"\ncategories = [\"a\", \"b\"]\n\n\
[[columns]]\nname = \"amount\"\ntype = \"int64\"\ndescription = \"a\"\nunit = \"yuan\"\nrole = \"sensitive\"\nbounds = [0, 100]\n";

/// Write `filings.csv` (rows: unit, category, amount) and its manifest
/// declaring `max_rows_per_unit` (`None`: no declaration), under `dir`.
fn write_dataset(dir: &Path, rows: &[(String, &str, i64)], declared: Option<&str>) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let mut csv = String::from("firm_id,category,amount\n");
    for (unit, category, amount) in rows {
        csv.push_str(&format!("{unit},{category},{amount}\n"));
    }
    std::fs::write(dir.join("filings.csv"), csv).unwrap();
    let line = declared.map_or(String::new(), |d| format!("max_rows_per_unit = {d}"));
    std::fs::write(dir.join("filings.toml"), MANIFEST.replace("ROWS", &line)).unwrap();
    dir.join("filings.toml")
}

fn policies(dir: &Path, max_groups: u32, max_rows: u32) -> PolicySet {
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("filings.toml"),
        format!(
            "dataset = \"filings\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 1000000.0\n\
             query_epsilon = [0.01, 20.0]\nmax_groups_per_unit = {max_groups}\n\
             max_rows_per_group = {max_rows}\n"
        ),
    )
    .unwrap();
    PolicySet::load(&policies, None).unwrap()
}

async fn register(dir: &Path, manifest: &Path) -> Result<DatasetVersion, CatalogError> {
    Catalog::open(&dir.join("catalog"))
        .unwrap()
        .add(&manifest.with_file_name("filings.csv"), manifest)
        .await
}

/// `units` firms with `per_unit` rows each, all in one category: the
/// first half in `a`, the rest in `b`; amounts 50.
fn firms(units: usize, per_unit: usize) -> Vec<(String, &'static str, i64)> {
    (0..units)
        .flat_map(|i| {
            let category = if i < units / 2 { "a" } else { "b" };
            (0..per_unit).map(move |_| (format!("F{i:05}"), category, 50))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_holds_the_data_to_its_declared_rows_per_unit() {
    let dir = tempfile::tempdir().unwrap();
    // One firm with four rows, the others three; the manifest says three.
    let mut rows = firms(20, 3);
    rows.push(("F00000".into(), "a", 50));
    let manifest = write_dataset(&dir.path().join("over"), &rows, Some("3"));
    let Err(CatalogError::Manifest(problems)) = register(dir.path(), &manifest).await else {
        panic!("a unit over the declared bound registers");
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].field, "max_rows_per_unit");
    // The line of the declaration in the manifest (line 9).
    assert_eq!(problems[0].line, 9, "{}", problems[0]);
    assert!(
        problems[0]
            .message
            .starts_with("1 privacy unit(s) have more than 3 rows (the most: 4)"),
        "{}",
        problems[0].message
    );
    // Nothing was stored.
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    assert!(catalog.ids().unwrap().is_empty());

    // The same data under a bound it keeps registers, and the version
    // carries the bound.
    let manifest = write_dataset(&dir.path().join("within"), &rows, Some("4"));
    let version = register(dir.path(), &manifest).await.unwrap();
    assert_eq!(version.manifest.max_rows_per_unit, Some(4));

    // A bound of 0 (or past the largest) is a manifest error on its own.
    for bad in ["0", "1000001"] {
        let manifest = write_dataset(&dir.path().join("bad"), &rows, Some(bad));
        let problems = Manifest::load(&manifest).unwrap_err();
        assert_eq!(problems[0].field, "max_rows_per_unit", "{bad}");
        assert_eq!(problems[0].line, 9);
    }
}

async fn answer(
    tables: &[DatasetSource],
    store: &datasandbox::store::Store,
    epsilon: f64,
    sql: &str,
) -> (serde_json::Value, Vec<String>, Vec<f64>, Vec<f64>) {
    let query = QuerySession::open(tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session(store, "lab", "job-1", epsilon, tables)));
    let (schema, batches) = query.run(sql, 1 << 20).await.unwrap();
    (
        report(&schema),
        strings(&batches, 0),
        numbers(&batches, 1),
        numbers(&batches, 2),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_bound_replaces_per_query_bounding_when_it_is_no_looser() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    // 200 firms with three rows each, every firm's rows in one category:
    // 300 rows in `a`, 300 in `b`, amounts summing to 15,000 each.
    let manifest = write_dataset(&dir.path().join("data"), &firms(200, 3), Some("3"));
    let version = register(dir.path(), &manifest).await.unwrap();
    let sql = "SELECT category, COUNT(*) AS n, SUM(amount) AS total FROM filings GROUP BY category";

    // Policy bounds 2 groups × 2 rows = 4 ≥ 3: the declared bound is used.
    // ε = 10 over two measures: 5 each; sensitivities 3 rows and 3 × 100.
    let tables = [version_dp_table(&version, &policies(dir.path(), 2, 2))];
    let (report, keys, counts, sums) = answer(&tables, &store, 10.0, sql).await;
    assert_eq!(report["bounded"], "max_rows_per_unit");
    assert_eq!(report["max_rows_per_unit"], 3);
    assert_eq!(report["columns"][0]["scale"][0], 3.0 / 5.0);
    assert_eq!(report["columns"][1]["scale"][0], 300.0 / 5.0);
    assert_eq!(keys, ["a", "b"]);
    // Nothing truncated: every firm's three rows count (noise of scale 0.6
    // stays within ±12 with probability 1 − 10⁻⁸).
    for n in &counts {
        assert!((n - 300.0).abs() < 12.0, "{counts:?}");
    }
    for total in &sums {
        assert!((total - 15_000.0).abs() < 1_200.0, "{sums:?}");
    }

    // Unit counts are bounded by groups per unit: 3 > 2, so a query that
    // releases them is bounded per query instead.
    let (report, _, _, _) = answer(
        &tables,
        &store,
        10.0,
        "SELECT category, COUNT(DISTINCT firm_id) AS firms, COUNT(*) AS n FROM filings GROUP BY category",
    )
    .await;
    assert_eq!(report["bounded"], "per query");

    // Policy bounds 1 group × 2 rows = 2 < 3: the policy's per-query
    // bounding is tighter and runs (two rows of each firm count).
    let tables = [version_dp_table(&version, &policies(dir.path(), 1, 2))];
    let (report, _, counts, _) = answer(&tables, &store, 10.0, sql).await;
    assert_eq!(report["bounded"], "per query");
    assert_eq!(report["max_rows_per_unit"], 2);
    assert_eq!(report["columns"][0]["scale"][0], 2.0 / 5.0);
    for n in &counts {
        assert!((n - 200.0).abs() < 10.0, "{counts:?}");
    }

    // Without a declaration the per-query bounds hold whatever the policy.
    let manifest = write_dataset(&dir.path().join("undeclared"), &firms(200, 3), None);
    let version = Catalog::open(&dir.path().join("catalog-2"))
        .unwrap()
        .add(&manifest.with_file_name("filings.csv"), &manifest)
        .await
        .unwrap();
    let tables = [version_dp_table(&version, &policies(dir.path(), 2, 2))];
    let (report, _, _, _) = answer(&tables, &store, 10.0, sql).await;
    assert_eq!(report["bounded"], "per query");
    assert_eq!(report["max_rows_per_unit"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empirical_audit_of_the_declared_bound_finds_no_more_privacy_loss_than_configured() {
    // Neighbouring registered datasets: 50 firms with three rows each, and
    // the same with one more firm holding the most rows the bound allows,
    // all in one category (the worst case for a count).
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let base = firms(100, 3)[..150].to_vec();
    let mut neighbour = base.clone();
    for _ in 0..3 {
        neighbour.push(("EXTRA".into(), "a", 50));
    }
    let policies = policies(dir.path(), 1, 3);
    let mut tables = Vec::new();
    for (name, rows) in [("d", &base), ("d-prime", &neighbour)] {
        let manifest = write_dataset(&dir.path().join(name), rows, Some("3"));
        let version = Catalog::open(&dir.path().join(name).join("catalog"))
            .unwrap()
            .add(&manifest.with_file_name("filings.csv"), &manifest)
            .await
            .unwrap();
        tables.push([version_dp_table(&version, &policies)]);
    }
    let epsilon = 1.0;
    let trials = 1000u64;
    let sql = "SELECT category, COUNT(*) AS n FROM filings GROUP BY category";
    let mut draws = Vec::new();
    let mut reports = Vec::new();
    for (tables, tenant) in tables.iter().zip(["auditor-a", "auditor-b"]) {
        let query = QuerySession::open(tables, &Default::default())
            .await
            .unwrap()
            .with_dp(Some(session(&store, tenant, "audit-job", epsilon, tables)));
        let mut values = Vec::new();
        for _ in 0..trials {
            let (schema, batches) = query.run(sql, 1 << 20).await.unwrap();
            let stated = report(&schema);
            assert_eq!(stated["bounded"], "max_rows_per_unit");
            // Category `a`: 150 rows in D, 153 in D'; the same keys on both
            // (published), so the added firm shows only in the noisy count.
            assert_eq!(strings(&batches, 0), ["a", "b"]);
            reports.push(stated);
            values.push(numbers(&batches, 1)[0]);
        }
        draws.push(values);
    }
    // Neighbouring datasets: the same outcome and the same stated bounds,
    // scales and charge on every draw; only the noisy values differ.
    assert!(reports.iter().all(|r| *r == reports[0]), "{reports:?}");
    let (on_small, on_large) = (&draws[0], &draws[1]);
    // The noise is of the declared sensitivity: E|Z| ≈ scale = 3 / ε.
    let mean_abs = on_small.iter().map(|v| (v - 150.0).abs()).sum::<f64>() / trials as f64;
    assert!(
        (2.0..=4.0).contains(&mean_abs),
        "mean |noise| {mean_abs} vs scale 3"
    );
    // S = {output ≥ 153}: the discrete Laplace mechanism of scale 3 shifted
    // by 3 is tight on it (ratio e^ε); Clopper–Pearson at 99.9% each side.
    let hits = |values: &[f64]| values.iter().filter(|v| **v >= 153.0).count() as u64;
    let (k_large, k_small) = (hits(on_large), hits(on_small));
    let (p_large_low, _) = clopper_pearson(k_large, trials, 0.001);
    let (_, p_small_high) = clopper_pearson(k_small, trials, 0.001);
    let epsilon_lower_bound = (p_large_low / p_small_high).ln();
    eprintln!(
        "declared-bound audit: {k_large} vs {k_small} of {trials} at or above 153; ε lower bound \
         {epsilon_lower_bound:.3} (configured {epsilon}); mean |noise| {mean_abs:.3} (scale 3)"
    );
    assert!(
        epsilon_lower_bound <= epsilon,
        "empirical ε ≥ {epsilon_lower_bound} > configured {epsilon}"
    );
    // The test has power: a mechanism that scaled its noise to one row (a
    // third of the declared sensitivity) would be told apart.
    assert!(k_large > k_small, "{k_large} vs {k_small}");
}
