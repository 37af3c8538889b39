//! The `dp` release mode with real DataFusion, real OpenDP noise, a real
//! SQLite ledger and real guests: answers carry noise of the stated scale,
//! keys are released only when published or past a noisy threshold, one
//! unit's contribution is bounded, budgets are charged before answers and
//! never overspent, and an empirical audit finds no more privacy loss than
//! configured.

use crate::common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use common::*;
use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, SchemaRef};
use datasandbox::catalog::Manifest;
use datasandbox::dataset::{Classification, DataFormat, DatasetSource};
use datasandbox::dp::budget::{self, Cost};
use datasandbox::dp::{DP_METADATA_KEY, DpSession, Ledger};
use datasandbox::policy::PolicySet;
use datasandbox::query::{QueryError, QuerySession};
use datasandbox::release::bind::dp_job_table;
use datasandbox::sandbox::{Category, GuestCall};
use datasandbox::store::Store;

/// The enterprise register's budget caps under `policies`.
fn enterprise_caps(policies: &PolicySet) -> budget::Caps {
    policies
        .policy_for("enterprises")
        .unwrap()
        .dp
        .unwrap()
        .caps()
}

/// The enterprise population as the direct (no-server) tests charge it: the
/// register alone, under its policy's caps.
fn enterprise_population(caps: budget::Caps) -> budget::Population {
    budget::Population {
        id: "enterprise".into(),
        datasets: vec!["enterprises".into()],
        caps,
    }
}

fn repo_policies() -> PolicySet {
    PolicySet::load(&repo().join("policies"), None).unwrap()
}

/// A sample dataset as a `dp` job's table under `policies`.
fn dp_sample(id: &str, policies: &PolicySet) -> DatasetSource {
    let manifest = Manifest::load(&samples().join(format!("{id}.toml"))).unwrap();
    dp_job_table(
        &manifest,
        &samples().join(format!("{id}.csv")),
        DataFormat::Csv,
        policies,
        id == "enterprises",
    )
}

pub(crate) fn session(
    store: &Store,
    tenant: &str,
    job: &str,
    epsilon: f64,
    tables: &[DatasetSource],
) -> Arc<DpSession> {
    Arc::new(DpSession {
        tables: tables
            .iter()
            .filter_map(|t| t.dp.clone().map(|dp| (t.name.clone(), dp)))
            .collect(),
        epsilon,

        accuracy: None,
        ledger: Ledger {
            store: store.clone(),
            principal: tenant.into(),
            job_id: job.into(),
            populations: Default::default(),
        },
    })
}

pub(crate) async fn store(dir: &Path) -> Store {
    Store::open(&dir.join("dsb.sqlite")).await.unwrap()
}

/// One DP query straight through the query session (no guest).
async fn dp_query(
    store: &Store,
    tenant: &str,
    epsilon: f64,
    sql: &str,
    tables: &[DatasetSource],
) -> Result<(SchemaRef, Vec<RecordBatch>), QueryError> {
    let query = QuerySession::open(tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session(store, tenant, "job-1", epsilon, tables)));
    query.run(sql, 64 << 20).await
}

pub(crate) fn report(schema: &SchemaRef) -> serde_json::Value {
    serde_json::from_str(&schema.metadata()[DP_METADATA_KEY]).unwrap()
}

pub(crate) fn strings(batches: &[RecordBatch], column: usize) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            let array = cast(b.column(column), &DataType::Utf8).unwrap();
            let array = array
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..array.len()).map(move |i| array.value(i).to_string())
        })
        .collect()
}

pub(crate) fn numbers(batches: &[RecordBatch], column: usize) -> Vec<f64> {
    batches
        .iter()
        .flat_map(|b| {
            let array = cast(b.column(column), &DataType::Float64).unwrap();
            let array = array
                .as_any()
                .downcast_ref::<Float64Array>()
                .unwrap()
                .clone();
            (0..array.len()).map(move |i| array.value(i))
        })
        .collect()
}

/// The exact answer, by plain DataFusion over the file.
pub(crate) async fn truth(sql: &str, id: &str) -> HashMap<String, f64> {
    let source =
        DatasetSource::from_file(&samples().join(format!("{id}.csv")), Classification::Open)
            .unwrap();
    let batches = native(sql, &[source]).await;
    strings(&batches, 0)
        .into_iter()
        .zip(numbers(&batches, 1))
        .collect()
}

const BY_DISTRICT: &str = "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_keys_are_all_released_with_noise_of_the_stated_scale() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policies = repo_policies();
    let tables = [dp_sample("enterprises", &policies)];
    let (schema, batches) = dp_query(&store, "lab", 1.0, BY_DISTRICT, &tables)
        .await
        .unwrap();
    let report = report(&schema);
    assert_eq!(report["epsilon"], 1.0);
    assert_eq!(report["delta"], 0.0);
    assert_eq!(report["keys"], "public");
    // One row per enterprise: sensitivity 1, so scale 1/ε.
    assert_eq!(report["columns"][0]["scale"][0], 1.0);
    let districts = strings(&batches, 0);
    // All sixteen published districts, Chongming (2 firms) included: an
    // absent group would itself say something.
    assert_eq!(districts.len(), 16);
    assert!(districts.contains(&"Chongming".to_string()));
    let exact = truth(BY_DISTRICT, "enterprises").await;
    let noisy = numbers(&batches, 1);
    assert!(
        districts.iter().zip(&noisy).any(|(d, n)| *n != exact[d]),
        "no noise at all"
    );
    for (district, n) in districts.iter().zip(&noisy) {
        assert!(
            (n - exact[district]).abs() < 25.0,
            "{district}: {n} vs {}",
            exact[district]
        );
    }
    // The charge is on the ledger, with its audit entry.
    let spent = budget::budget(
        &store,
        "lab",
        &enterprise_population(enterprise_caps(&policies)),
    )
    .await
    .unwrap();
    assert_eq!(
        spent.spent,
        Cost {
            epsilon: 1.0,
            delta: 0.0,
            rho: 0.0
        }
    );
    assert_eq!(spent.remaining.epsilon, 9.0);
    let actions: Vec<String> = datasandbox::store::audit::entries(&store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["budget.charged"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_keys_pass_only_a_noisy_threshold() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policies = repo_policies();
    let tables = [dp_sample("enterprises", &policies)];
    // Head counts are not a published list: most values belong to a few
    // firms and must not appear; the common small ones may.
    let sql = "SELECT employees, COUNT(*) AS n FROM enterprises GROUP BY employees";
    let (schema, batches) = dp_query(&store, "lab", 1.0, sql, &tables).await.unwrap();
    let report = report(&schema);
    assert_eq!(report["keys"], "threshold");
    assert!(report["delta"].as_f64().unwrap() > 0.0);
    let threshold = report["threshold"].as_f64().unwrap();
    let exact = truth(sql, "enterprises").await;
    let released = strings(&batches, 0);
    assert!(
        released.len() < exact.len() / 2,
        "{} of {}",
        released.len(),
        exact.len()
    );
    for key in &released {
        assert!(
            exact[key] >= threshold / 3.0,
            "{key} has {} firms and passed a threshold of {threshold}",
            exact[key]
        );
    }
    // Keys backed by a single firm never pass.
    let singles = exact.iter().filter(|(_, n)| **n == 1.0).count();
    assert!(singles > 50);
    assert!(released.iter().all(|k| exact[k] > 1.0));
    // The threshold's δ is charged too.
    let spent = budget::budget(
        &store,
        "lab",
        &enterprise_population(enterprise_caps(&policies)),
    )
    .await
    .unwrap();
    assert!(spent.spent.delta > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_outside_the_dp_subset_are_refused_before_any_charge() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policies = repo_policies();
    let tables = [
        dp_sample("enterprises", &policies),
        dp_sample("tax_records", &policies),
    ];
    for (sql, code) in [
        ("SELECT * FROM enterprises", "row-level-output"),
        (
            "SELECT district FROM enterprises WHERE employees > 10",
            "row-level-output",
        ),
        (
            "SELECT enterprise_id, COUNT(*) FROM enterprises GROUP BY enterprise_id",
            "identifier-used",
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE enterprise_id = '913100000001000000'",
            "identifier-used",
        ),
        (
            "SELECT MAX(employees) FROM enterprises",
            "aggregate-not-allowed",
        ),
        (
            "SELECT COUNT(DISTINCT district) FROM enterprises",
            "aggregate-argument",
        ),
        (
            "SELECT SUM(employees * 2) FROM enterprises",
            "aggregate-argument",
        ),
        (
            "SELECT COUNT(*) FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id",
            "dp-shape",
        ),
        (
            "SELECT n FROM (SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district) a JOIN (SELECT district, AVG(employees) AS m FROM enterprises GROUP BY district) b ON a.district = b.district",
            "dp-shape",
        ),
        (
            "SELECT district, COUNT(*) FROM enterprises GROUP BY ROLLUP(district)",
            "grouping-sets",
        ),
    ] {
        match dp_query(&store, "lab", 1.0, sql, &tables).await {
            Err(QueryError::Rejected(reason)) => {
                assert!(reason.starts_with(code), "{sql}: {reason}")
            }
            other => panic!("{sql}: {other:?}"),
        }
    }
    let charges: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM dp_charges")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(charges, 0);
    // Post-processing the noisy answer is fine: ORDER BY, LIMIT, HAVING.
    let (_, batches) = dp_query(
        &store,
        "lab",
        1.0,
        "SELECT district, COUNT(*) AS n, AVG(employees) AS mean FROM enterprises GROUP BY district HAVING COUNT(*) > 100 ORDER BY n DESC LIMIT 3",
        &tables,
    )
    .await
    .unwrap();
    assert_eq!(strings(&batches, 0)[0], "Pudong");
    assert!(strings(&batches, 0).len() <= 3);
}

/// A dataset where one enterprise has 10,000 rows and 100 others one each.
fn heavy_dataset(dir: &Path) -> DatasetSource {
    let mut csv = String::from("enterprise_id,category,amount\n");
    for i in 0..100 {
        csv.push_str(&format!("E{i:04},a,50\n"));
    }
    for _ in 0..10_000 {
        csv.push_str("HEAVY,a,100\n");
    }
    std::fs::write(dir.join("heavy.csv"), csv).unwrap();
    std::fs::write(
        dir.join("heavy.toml"),
        "id = \"heavy\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\nupdate_frequency = \"never\"\nclassification = \"restricted\"\nprivacy_unit = \"enterprise_id\"\njoin_keys = []\n\n[[columns]]\nname = \"enterprise_id\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n[[columns]]\nname = \"category\"\ntype = \"string\"\ndescription = \"c\"\nrole = \"attribute\"\ncategories = [\"a\", \"b\"]\n\n[[columns]]\nname = \"amount\"\ntype = \"int64\"\ndescription = \"a\"\nrole = \"sensitive\"\nbounds = [0, 100]\n",
    )
    .unwrap();
    let policies = dir.join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    std::fs::write(
        policies.join("heavy.toml"),
        "dataset = \"heavy\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 1000.0\nquery_epsilon = [0.01, 20.0]\nmax_groups_per_unit = 1\nmax_rows_per_group = 2\n",
    )
    .unwrap();
    let manifest = Manifest::load(&dir.join("heavy.toml")).unwrap();
    dp_job_table(
        &manifest,
        &dir.join("heavy.csv"),
        DataFormat::Csv,
        &PolicySet::load(&policies, None).unwrap(),
        false,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_unit_with_ten_thousand_rows_moves_a_sum_only_by_its_bound() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let tables = [heavy_dataset(dir.path())];
    let (schema, batches) = dp_query(
        &store,
        "lab",
        20.0,
        "SELECT category, SUM(amount) AS total, COUNT(*) AS n FROM heavy GROUP BY category",
        &tables,
    )
    .await
    .unwrap();
    let report = report(&schema);
    // Sensitivity: 1 group × 2 rows × 100 per row; ε split over 2 measures.
    assert_eq!(report["columns"][0]["scale"][0], 200.0 / 10.0);
    let ci = report["columns"][0]["ci95"].as_f64().unwrap();
    let categories = strings(&batches, 0);
    assert_eq!(categories, ["a", "b"]);
    let total = numbers(&batches, 1)[0];
    let rows = numbers(&batches, 2)[0];
    // 100 units × 50, plus at most 2 × 100 from the heavy one: never the
    // 1,000,000 its rows hold.
    assert!(total < 5_000.0 + 200.0 + 3.0 * ci, "{total}");
    assert!(total > 5_000.0 - 3.0 * ci, "{total}");
    assert!(rows < 102.0 + 30.0, "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_budget_refuses_the_query_and_the_job_releases_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policies = repo_policies();
    let tables = vec![dp_sample("enterprises", &policies)];
    let run = |job: &str| {
        let mut env = env(job, quick_limits(), tables.clone());
        env.dp = Some(session(&store, "lab", job, 2.0, &tables));
        let params = serde_json::json!({ "attack": "query", "sql": BY_DISTRICT }).to_string();
        async move {
            sandbox()
                .run_bytes(&guest("hostile"), &env, GuestCall::Run { params })
                .await
        }
    };
    // ε = 10 per tenant, 2 per query: five answers, then refusals.
    for i in 0..5 {
        let execution = run(&format!("job-{i}")).await;
        assert_eq!(execution.category, Category::Ok, "{i}");
        let result = table(&execution, "result");
        assert_eq!(result.iter().map(|b| b.num_rows()).sum::<usize>(), 16);
        assert!(result[0].schema().metadata().contains_key(DP_METADATA_KEY));
    }
    let execution = run("job-5").await;
    match &execution.category {
        Category::PolicyRejected(reason) => {
            assert!(reason.starts_with("budget-exhausted"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
    assert!(execution.submitter_report().outputs.is_empty());
    // Another tenant has its own budget.
    let other = QuerySession::open(&tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session(&store, "other-lab", "job-x", 2.0, &tables)));
    assert!(other.run(BY_DISTRICT, 1 << 20).await.is_ok());
    // An administrator's grant adds budget, audited; spent stays spent.
    let caps = enterprise_caps(&policies);
    budget::grant(
        &store,
        "admin",
        "lab",
        &enterprise_population(caps),
        "enterprises",
        Cost {
            epsilon: 2.0,
            delta: 0.0,
            rho: 0.0,
        },
        "second study",
    )
    .await
    .unwrap();
    let now = budget::budget(&store, "lab", &enterprise_population(caps))
        .await
        .unwrap();
    assert_eq!(now.spent.epsilon, 10.0);
    assert_eq!(now.remaining.epsilon, 2.0);
    assert_eq!(run("job-6").await.category, Category::Ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_concurrent_jobs_never_overspend_one_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let policies = repo_policies();
    let tables = vec![dp_sample("enterprises", &policies)];
    // All 64 are in flight at once; like the server's queue, at most 12
    // guests run at a time (the test sandbox's instance pool holds 16).
    let slots = Arc::new(tokio::sync::Semaphore::new(12));
    let mut handles = Vec::new();
    for i in 0..64 {
        let tables = tables.clone();
        let store = store.clone();
        let slots = Arc::clone(&slots);
        handles.push(tokio::spawn(async move {
            let _slot = slots.acquire().await.unwrap();
            let job = format!("job-{i}");
            let mut env = env(&job, quick_limits(), tables.clone());
            env.dp = Some(session(&store, "lab", &job, 0.5, &tables));
            let params = serde_json::json!({ "attack": "query", "sql": BY_DISTRICT }).to_string();
            sandbox()
                .run_bytes(&guest("hostile"), &env, GuestCall::Run { params })
                .await
        }));
    }
    let mut released = 0;
    for handle in handles {
        let execution = handle.await.unwrap();
        match &execution.category {
            Category::Ok => released += 1,
            Category::PolicyRejected(reason) => assert!(reason.starts_with("budget-exhausted")),
            other => panic!("{other:?} {:?}", execution.diagnostics),
        }
    }
    // ε = 10 at 0.5 a query: exactly twenty answers, and exactly what was
    // released was charged.
    assert_eq!(released, 20);
    let (charges, spent): (i64, i64) =
        sqlx::query_as("SELECT COUNT(*), SUM(epsilon_micro) FROM dp_charges")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(charges, 20);
    assert_eq!(spent, 10_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_fall_inside_their_reported_95_percent_intervals() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let mut policies_dir = repo().join("policies");
    // A roomy budget for repeated trials, same rules otherwise.
    let roomy = tempfile::tempdir().unwrap();
    for id in ["enterprises", "tax_records"] {
        let text = std::fs::read_to_string(policies_dir.join(format!("{id}.toml")))
            .unwrap()
            .replace("epsilon_total = 10.0", "epsilon_total = 100000.0")
            .replace("epsilon_dataset = 100.0", "epsilon_dataset = 100000.0");
        std::fs::write(roomy.path().join(format!("{id}.toml")), text).unwrap();
    }
    std::fs::create_dir_all(roomy.path().join("agreements")).unwrap();
    std::fs::copy(
        policies_dir.join("agreements/enterprises.md"),
        roomy.path().join("agreements/enterprises.md"),
    )
    .unwrap();
    policies_dir = roomy.path().to_path_buf();
    let policies = PolicySet::load(&policies_dir, None).unwrap();
    let tables = [
        dp_sample("enterprises", &policies),
        dp_sample("tax_records", &policies),
    ];
    let counts = truth(BY_DISTRICT, "enterprises").await;
    let paid_sql = "SELECT quarter, SUM(tax_paid) AS paid FROM tax_records GROUP BY quarter";
    let paid = truth(paid_sql, "tax_records").await;
    let (mut inside, mut total) = (0, 0);
    for _ in 0..20 {
        for (sql, exact) in [(BY_DISTRICT, &counts), (paid_sql, &paid)] {
            let (schema, batches) = dp_query(&store, "lab", 1.0, sql, &tables).await.unwrap();
            let ci = report(&schema)["columns"][0]["ci95"].as_f64().unwrap();
            for (key, value) in strings(&batches, 0).iter().zip(numbers(&batches, 1)) {
                // Counts are reported clamped at zero; sums as drawn.
                let distance = (value - exact[key]).abs();
                total += 1;
                if distance <= ci || (value == 0.0 && exact[key] <= ci) {
                    inside += 1;
                }
            }
        }
    }
    let share = inside as f64 / total as f64;
    eprintln!("coverage of the reported 95% intervals: {inside} of {total} = {share:.3}");
    assert!(total == 20 * (16 + 8));
    assert!(
        (0.92..=0.995).contains(&share),
        "{inside} of {total} inside"
    );
}

/// ln of the binomial probability mass, via ln Γ.
fn ln_choose(n: u64, k: u64) -> f64 {
    fn ln_factorial(n: u64) -> f64 {
        (1..=n).map(|i| (i as f64).ln()).sum()
    }
    ln_factorial(n) - ln_factorial(k) - ln_factorial(n - k)
}

/// P(X ≥ k) for X ~ Binomial(n, p).
fn upper_tail(n: u64, k: u64, p: f64) -> f64 {
    (k..=n)
        .map(|i| (ln_choose(n, i) + i as f64 * p.ln() + (n - i) as f64 * (1.0 - p).ln()).exp())
        .sum()
}

/// One-sided Clopper–Pearson bounds at confidence 1 − α for k of n.
pub(crate) fn clopper_pearson(k: u64, n: u64, alpha: f64) -> (f64, f64) {
    let solve = |f: &dyn Fn(f64) -> bool| {
        let (mut lo, mut hi) = (0.0f64, 1.0f64);
        for _ in 0..60 {
            let mid = (lo + hi) / 2.0;
            if f(mid) { hi = mid } else { lo = mid }
        }
        (lo + hi) / 2.0
    };
    // Lower: smallest p with P(X ≥ k) ≥ α; upper: largest p with P(X ≤ k) ≥ α.
    let lower = if k == 0 {
        0.0
    } else {
        solve(&|p| upper_tail(n, k, p) >= alpha)
    };
    let upper = if k == n {
        1.0
    } else {
        solve(&|p| 1.0 - upper_tail(n, k + 1, p) < alpha)
    };
    (lower, upper)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empirical_audit_finds_no_more_privacy_loss_than_configured() {
    // Neighbouring datasets: the same 50 enterprises, and one more.
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    let build = |name: &str, units: usize| {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(sub.join("policies")).unwrap();
        let mut csv = String::from("enterprise_id,kind\n");
        for i in 0..units {
            csv.push_str(&format!("E{i:04},k\n"));
        }
        std::fs::write(sub.join("audit.csv"), csv).unwrap();
        std::fs::write(
            sub.join("audit.toml"),
            "id = \"audit\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\nupdate_frequency = \"never\"\nclassification = \"restricted\"\nprivacy_unit = \"enterprise_id\"\njoin_keys = []\n\n[[columns]]\nname = \"enterprise_id\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n[[columns]]\nname = \"kind\"\ntype = \"string\"\ndescription = \"k\"\nrole = \"attribute\"\ncategories = [\"k\"]\n",
        )
        .unwrap();
        std::fs::write(
            sub.join("policies/audit.toml"),
            "dataset = \"audit\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 1000000.0\nquery_epsilon = [0.01, 2.0]\n",
        )
        .unwrap();
        let manifest = Manifest::load(&sub.join("audit.toml")).unwrap();
        dp_job_table(
            &manifest,
            &sub.join("audit.csv"),
            DataFormat::Csv,
            &PolicySet::load(&sub.join("policies"), None).unwrap(),
            true,
        )
    };
    let small = [build("d", 50)];
    let large = [build("d-prime", 51)];
    let epsilon = 1.0;
    let trials = 1000u64;
    let sql = "SELECT kind, COUNT(*) AS n FROM audit GROUP BY kind";
    let draws = |tables: [DatasetSource; 1], tenant: &'static str| {
        let store = store.clone();
        async move {
            let query = QuerySession::open(&tables, &Default::default())
                .await
                .unwrap()
                .with_dp(Some(session(&store, tenant, "audit-job", epsilon, &tables)));
            let mut values = Vec::new();
            for _ in 0..trials {
                let (_, batches) = query.run(sql, 1 << 20).await.unwrap();
                values.push(numbers(&batches, 1)[0]);
            }
            values
        }
    };
    let on_small = draws(small, "auditor-a").await;
    let on_large = draws(large, "auditor-b").await;
    // Noise is present and of the theoretical size: E|Z| ≈ scale (= 1).
    let mean_abs = on_small.iter().map(|v| (v - 50.0).abs()).sum::<f64>() / trials as f64;
    assert!(
        (0.6..=1.4).contains(&mean_abs),
        "mean |noise| {mean_abs} vs scale 1"
    );
    // Threshold test: S = {output ≥ 51}. ε ≥ ln(P[S|D'] / P[S|D]); with
    // Clopper–Pearson bounds at 99.9% on each side the lower bound on ε must
    // stay ≤ ε. The Laplace mechanism is tight on this event (the ratio is
    // e^ε exactly), so the confidence is what keeps a correct mechanism
    // from failing the test by chance (at most 0.2% of runs).
    let hits = |values: &[f64]| values.iter().filter(|v| **v >= 51.0).count() as u64;
    let (k_large, k_small) = (hits(&on_large), hits(&on_small));
    let (p_large_low, _) = clopper_pearson(k_large, trials, 0.001);
    let (_, p_small_high) = clopper_pearson(k_small, trials, 0.001);
    let epsilon_lower_bound = (p_large_low / p_small_high).ln();
    eprintln!(
        "empirical audit: {k_large} vs {k_small} of {trials} above the threshold; ε lower bound \
         {epsilon_lower_bound:.3} (configured {epsilon}); mean |noise| {mean_abs:.3} (scale 1)"
    );
    assert!(
        epsilon_lower_bound <= epsilon,
        "empirical ε ≥ {epsilon_lower_bound} > configured {epsilon} ({k_large} vs {k_small} of {trials})"
    );
    // And the test has power: without noise the two would be told apart
    // with certainty (k_large = trials, k_small = 0) and the bound explode.
    let (no_noise_low, _) = clopper_pearson(trials, trials, 0.001);
    let (_, no_noise_high) = clopper_pearson(0, trials, 0.001);
    assert!((no_noise_low / no_noise_high).ln() > 4.0 * epsilon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_jobs_over_http_state_their_cost_in_the_receipt_and_the_budget() {
    use datasandbox::accounts::Role;
    let mut server = TestServer::start().await;
    let analyst = server.client(Role::Analyst, "lab-a").await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    server
        .admin
        .grant("lab-a", "utility_payments")
        .await
        .unwrap();
    let module = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let job = analyst
        .submit_dp_job(&module, &["enterprises".into()], serde_json::json!({}), 1.0)
        .await
        .unwrap();
    assert_eq!(job.mode, "dp");
    let job = analyst.job(&job.id, 30).await.unwrap();
    assert_eq!(job.state, "released", "{job:?}");
    let output = analyst.job_output(&job.id).await.unwrap();
    let Some(datasandbox::sandbox::Output::Table { arrow_ipc, .. }) = output.outputs.first() else {
        panic!("{output:?}")
    };
    let (schema, batches) = datasandbox::arrow_ipc::decode(arrow_ipc).unwrap();
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 16);
    assert_eq!(report(&schema)["epsilon"], 1.0);
    // The receipt states what was charged.
    let receipt = analyst.receipt(&job.id).await.unwrap();
    assert_eq!(receipt.body.mode, "dp");
    assert_eq!(receipt.body.privacy_cost.epsilon, 1.0);
    let budgets = analyst.budgets(None).await.unwrap();
    let enterprises = budgets
        .iter()
        .find(|b| b.datasets.iter().any(|d| d == "enterprises"))
        .unwrap();
    assert_eq!(
        (enterprises.spent.epsilon, enterprises.remaining.epsilon),
        (1.0, 9.0)
    );
    // ε outside the policy's range, a dataset whose policy has no dp mode,
    // epsilon missing: refused at submission.
    for (datasets, epsilon) in [
        (vec!["enterprises".to_string()], Some(5.0)),
        (vec!["utility_payments".to_string()], Some(1.0)),
    ] {
        let error = analyst
            .submit_dp_job(&module, &datasets, serde_json::json!({}), epsilon.unwrap())
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("bad-job"), "{datasets:?}");
    }
    let error = analyst
        .submit_job(
            &module,
            "dp",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("bad-job"));
    // Only administrators raise a budget, and it is audited.
    assert_eq!(
        analyst
            .grant_budget("lab-a", "enterprises", 5.0, 0.0, "more")
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
    let raised = server
        .admin
        .grant_budget("lab-a", "enterprises", 5.0, 0.0, "second study")
        .await
        .unwrap();
    assert_eq!((raised.cap.epsilon, raised.remaining.epsilon), (15.0, 14.0));
    // tax_records has the same population: one budget. A dp job on it is
    // charged to the same ledger the enterprise register's job was.
    assert_eq!(raised.population, "enterprise");
    assert!(
        raised.datasets.contains(&"tax_records".to_string()),
        "{raised:?}"
    );
    server.admin.grant("lab-a", "tax_records").await.unwrap();
    let hostile = analyst
        .upload_module(guest("hostile"), None)
        .await
        .unwrap()
        .sha256;
    let job = analyst
        .submit_dp_job(
            &hostile,
            &["tax_records".into()],
            serde_json::json!({
                "attack": "query",
                "sql": "SELECT quarter, COUNT(*) AS n FROM tax_records GROUP BY quarter"
            }),
            0.5,
        )
        .await
        .unwrap();
    let job = analyst.job(&job.id, 30).await.unwrap();
    assert_eq!(job.state, "released", "{job:?}");
    let budgets = analyst.budgets(None).await.unwrap();
    assert_eq!(budgets.len(), 1, "one population, one budget: {budgets:?}");
    assert_eq!(
        (budgets[0].spent.epsilon, budgets[0].cap.epsilon),
        (1.5, 15.0)
    );
    // lab-a has had noisy answers about the enterprise population: exact
    // ones on any of its datasets are refused, and the refusal is typed.
    let error = analyst
        .submit_job(
            &module,
            "aggregate",
            &["tax_records".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("mode-conflict"), "{error}");
    // A tenant whose first job was exact is refused noisy ones.
    let exact = server.client(Role::Analyst, "lab-exact").await;
    server
        .admin
        .grant("lab-exact", "enterprises")
        .await
        .unwrap();
    let module = exact
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let job = exact
        .submit_job(
            &module,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap();
    exact.job(&job.id, 30).await.unwrap();
    let error = exact
        .submit_dp_job(&module, &["enterprises".into()], serde_json::json!({}), 1.0)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("mode-conflict"), "{error}");
    let actions: Vec<String> = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"budget.charged".to_string()));
    assert!(actions.contains(&"budget.granted".to_string()));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_and_aggregate_runs_any_code_per_block_and_releases_only_a_noisy_vector() {
    use datasandbox::accounts::Role;
    use datasandbox::dp::sample_aggregate::{Dimension, Spec};
    let mut server = TestServer::start().await;
    let analyst = server.client(Role::Analyst, "lab-a").await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let module = analyst
        .upload_module(guest("block_mean"), None)
        .await
        .unwrap()
        .sha256;
    let spec = Spec {
        dimensions: vec![
            Dimension {
                name: "mean_employees".into(),
                lo: 0.0,
                hi: 200.0,
                default: 0.0,
            },
            Dimension {
                name: "rows".into(),
                lo: 0.0,
                hi: 200.0,
                default: 0.0,
            },
        ],
        epsilon: 1.0,
        blocks: Some(20),
        block_millis: Some(300),
    };
    let run = |params: serde_json::Value| {
        let analyst = analyst.clone();
        let module = module.clone();
        let spec = spec.clone();
        async move {
            let submitted = std::time::Instant::now();
            let job = analyst
                .submit_sample_aggregate_job(&module, &["enterprises".into()], params, &spec)
                .await
                .unwrap();
            let job = analyst.job(&job.id, 60).await.unwrap();
            let took = submitted.elapsed();
            assert_eq!(job.state, "released", "{job:?}");
            let output = analyst.job_output(&job.id).await.unwrap();
            let values: HashMap<String, f64> = output
                .outputs
                .iter()
                .map(|o| match o {
                    datasandbox::sandbox::Output::Value { name, value } => (name.clone(), *value),
                    other => panic!("{other:?}"),
                })
                .collect();
            (job, values, took)
        }
    };
    let (job, values, took) = run(serde_json::json!({"column": "employees"})).await;
    // 2,000 enterprises in 20 blocks of about 100: each block's mean head
    // count, clamped, averaged, plus noise of scale (200/20)/(ε/2) = 20 per
    // dimension.
    assert_eq!(values.len(), 2, "only the declared dimensions: {values:?}");
    let exact = truth(
        "SELECT 'all', AVG(employees) FROM enterprises",
        "enterprises",
    )
    .await["all"];
    assert!(
        (values["mean_employees"] - exact).abs() < 120.0,
        "{values:?} vs {exact}"
    );
    assert!((values["rows"] - 2000.0 / 20.0).abs() < 120.0, "{values:?}");
    // Released at the time the declaration fixes (10 rounds of 300 ms plus
    // 2 s), whatever the blocks did; the submitter sees times in tens of
    // seconds.
    assert!(took >= std::time::Duration::from_secs(5), "{took:?}");
    assert_eq!(job.started_at.unwrap() % 10, 0);
    let receipt = analyst.receipt(&job.id).await.unwrap();
    assert_eq!(receipt.body.mode, "sample-aggregate");
    assert_eq!(receipt.body.privacy_cost.epsilon, 1.0);
    // A guest that fails on every block: each gets the default, nothing of
    // the failure (or its text) reaches the submitter; the release is noise
    // around the defaults.
    let (_, values, _) = run(serde_json::json!({})).await;
    assert_eq!(values.len(), 2);
    assert!(values["rows"].abs() < 120.0, "{values:?}");
    let job_text = serde_json::to_string(&values).unwrap();
    assert!(!job_text.contains("column"));
    // Wrong world, ε outside the policy's range, two datasets, a dataset
    // whose policy has no sample-aggregate mode: refused at submission.
    let analysis = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap()
        .sha256;
    let mut too_much = spec.clone();
    too_much.epsilon = 5.0;
    server.admin.grant("lab-a", "tax_records").await.unwrap();
    for (module, datasets, spec) in [
        (&analysis, vec!["enterprises".to_string()], &spec),
        (&module, vec!["enterprises".to_string()], &too_much),
        (
            &module,
            vec!["enterprises".to_string(), "tax_records".to_string()],
            &spec,
        ),
        (&module, vec!["tax_records".to_string()], &spec),
    ] {
        let error = analyst
            .submit_sample_aggregate_job(module, &datasets, serde_json::json!({}), spec)
            .await
            .unwrap_err();
        assert_eq!(error.code(), Some("bad-job"), "{datasets:?}");
    }
    // Both runs were charged: ε 2 of 10 spent.
    let budgets = analyst.budgets(None).await.unwrap();
    let spent = budgets
        .iter()
        .find(|b| b.datasets.iter().any(|d| d == "enterprises"))
        .unwrap()
        .spent
        .epsilon;
    assert_eq!(spent, 2.0);
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_charge_leaves_it_charged() {
    let dir = tempfile::tempdir().unwrap();
    let policies = repo_policies();
    let tables = [dp_sample("enterprises", &policies)];
    let caps = enterprise_caps(&policies);
    {
        let store = store(dir.path()).await;
        // The answer was computed and the process dies before the job ends:
        // nothing was released, but the charge was committed first.
        dp_query(&store, "lab", 2.0, BY_DISTRICT, &tables)
            .await
            .unwrap();
        store.pool().close().await;
    }
    let reopened = store(dir.path()).await;
    let budget = budget::budget(&reopened, "lab", &enterprise_population(caps))
        .await
        .unwrap();
    assert_eq!(budget.spent.epsilon, 2.0);
    // The audit chain holds the charge too.
    let entries = datasandbox::store::audit::entries(&reopened).await.unwrap();
    assert_eq!(entries.last().unwrap().action, "budget.charged");
}
