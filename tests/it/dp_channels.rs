//! dp mode under attack, channel by channel: after the charge nothing but
//! the noisy answer may depend on the data.
//!
//! - Neighbouring registers (the sample register, and it plus a canary
//!   enterprise with values nobody else has) give every statement the same
//!   outcome kind, the same schema, the same noise report and the same
//!   charge; the canary's values never appear as a cell.
//! - A statement that would fail on one firm's value (the failure bit) is
//!   refused before the charge, whatever the data.
//! - NaN and ±∞ in a clamped column end in an answer, never a failure.
//! - Empirical audits of the sum and the threshold mechanisms: the ε a
//!   distinguishing test can prove stays within the configured ε.
//!
//! Statements run through the real `QuerySession` (DataFusion, OpenDP, a
//! SQLite ledger) on real files.

use std::path::Path;
use std::sync::Arc;

use crate::common::*;
use datafusion::arrow::array::{Array, Float64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datasandbox::catalog::Manifest;
use datasandbox::dataset::{DataFormat, DatasetSource};
use datasandbox::dp::{DP_METADATA_KEY, DpSession, Ledger};
use datasandbox::policy::PolicySet;
use datasandbox::query::{QueryError, QuerySession};
use datasandbox::release::bind::dp_job_table;
use datasandbox::store::Store;

const CANARY_ROW: &str =
    "913199999999999999,Canary Co. Ltd.,Pudong,it-services,large,7331,987654.25,2011-03-17";

/// What a statement ended as, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Released,
    Rejected(String),
    Invalid,
    Failed,
    TooLarge,
}

fn session(store: &Store, tenant: &str, epsilon: f64, tables: &[DatasetSource]) -> Arc<DpSession> {
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
            job_id: format!("{tenant}-job"),
            populations: Default::default(),
        },
    })
}

/// The register from `file` and the shipped tax records, as dp tables.
fn register_tables(dir: &Path, file: &str) -> Vec<DatasetSource> {
    let policies = PolicySet::load(&repo().join("policies"), None).unwrap();
    [
        ("enterprises", dir.join(file)),
        ("tax_records", samples().join("tax_records.csv")),
    ]
    .into_iter()
    .map(|(id, path)| {
        let manifest = Manifest::load(&samples().join(format!("{id}.toml"))).unwrap();
        dp_job_table(
            &manifest,
            &path,
            DataFormat::Csv,
            &policies,
            id == "enterprises",
        )
    })
    .collect()
}

async fn outcome(session: &QuerySession, sql: &str) -> (Kind, Option<String>, Vec<RecordBatch>) {
    match session.run(sql, 64 << 20).await {
        Ok((schema, batches)) => (
            Kind::Released,
            Some(format!(
                "{:?} {:?}",
                schema
                    .fields()
                    .iter()
                    .map(|f| (f.name().clone(), f.data_type().clone()))
                    .collect::<Vec<_>>(),
                schema.metadata().get(DP_METADATA_KEY)
            )),
            batches,
        ),
        Err(QueryError::Rejected(reason)) => (
            Kind::Rejected(reason.split(':').next().unwrap_or_default().to_string()),
            None,
            Vec::new(),
        ),
        Err(QueryError::Invalid(_)) => (Kind::Invalid, None, Vec::new()),
        Err(QueryError::Failed { .. }) => (Kind::Failed, None, Vec::new()),
        Err(QueryError::TooLarge { .. }) => (Kind::TooLarge, None, Vec::new()),
    }
}

async fn epsilon_spent(store: &Store, tenant: &str) -> i64 {
    sqlx::query_scalar::<_, Option<i64>>(
        "SELECT SUM(epsilon_micro) FROM dp_charges WHERE principal = ?",
    )
    .bind(tenant)
    .fetch_one(store.pool())
    .await
    .unwrap()
    .unwrap_or(0)
}

/// Statements a dp job might send: in the DP subset, outside it, and the
/// attacks that once read a firm's value.
const STATEMENTS: &[&str] = &[
    "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district",
    "SELECT district, SUM(employees) AS s, AVG(registered_capital) AS c FROM enterprises GROUP BY district",
    "SELECT size_class, industry, COUNT(*) FROM enterprises GROUP BY size_class, industry",
    "SELECT COUNT(*) FROM enterprises WHERE employees > 7000",
    "SELECT district, COUNT(*) FROM enterprises WHERE registered_capital BETWEEN 987654 AND 987655 GROUP BY district",
    "SELECT name, COUNT(*) FROM enterprises GROUP BY name",
    "SELECT founded, COUNT(*) FROM enterprises GROUP BY founded",
    "SELECT quarter, SUM(tax_paid) FROM tax_records GROUP BY quarter",
    "SELECT quarter, COUNT(DISTINCT enterprise_id) FROM tax_records GROUP BY quarter",
    "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district HAVING COUNT(*) > 150 ORDER BY n DESC LIMIT 3",
    "SELECT n + 1 FROM (SELECT COUNT(*) AS n FROM enterprises WHERE employees = 7331) t",
    // The failure bit: fails exactly when the predicate holds.
    "SELECT COUNT(*) FROM enterprises WHERE 1 / (CAST(employees = 7331 AS BIGINT) - 1) >= 0",
    "SELECT COUNT(*) FROM enterprises WHERE 1 / (CAST(employees > 7000 AS BIGINT) - 1) >= 0",
    "SELECT COUNT(*) FROM enterprises WHERE employees / (employees - 7331) > 0",
    "SELECT COUNT(*) FROM enterprises WHERE employees % (employees - 7331) = 0",
    "SELECT COUNT(*) FROM enterprises WHERE CAST(district AS INT) > 0",
    "SELECT COUNT(*) FROM enterprises WHERE sqrt(7000 - employees) > 1",
    "SELECT COUNT(*) FROM enterprises WHERE ln(7331 - employees) > 1",
    "SELECT COUNT(*) FROM enterprises WHERE arrow_cast(employees * 1000000000000000, 'Int64') > 0",
    "SELECT COUNT(*) FROM enterprises WHERE CASE WHEN employees = 7331 THEN 1 / 0 ELSE 1 END = 1",
    "SELECT COUNT(*) FROM enterprises WHERE employees IN (SELECT employees FROM enterprises WHERE employees > 7000)",
    "SELECT SUM(employees * 2) FROM enterprises",
    "SELECT MAX(employees) FROM enterprises",
    "SELECT * FROM enterprises WHERE employees = 7331",
    "SELECT COUNT(*) FROM enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id",
    "SELECT district, COUNT(*) FROM enterprises WHERE enterprise_id = '913199999999999999' GROUP BY district",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbouring_registers_give_the_same_outcome_kind_report_and_charge() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();
    std::fs::write(dir.path().join("plain.csv"), &original).unwrap();
    std::fs::write(
        dir.path().join("canary.csv"),
        format!("{original}{CANARY_ROW}\n"),
    )
    .unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let plain_tables = register_tables(dir.path(), "plain.csv");
    let canary_tables = register_tables(dir.path(), "canary.csv");
    let plain = QuerySession::open(&plain_tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session(&store, "plain", 0.05, &plain_tables)));
    let canary = QuerySession::open(&canary_tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session(&store, "canary", 0.05, &canary_tables)));
    let mut released = 0;
    for sql in STATEMENTS {
        let before = (
            epsilon_spent(&store, "plain").await,
            epsilon_spent(&store, "canary").await,
        );
        let (kind, report, batches) = outcome(&plain, sql).await;
        let (canary_kind, canary_report, canary_batches) = outcome(&canary, sql).await;
        assert_eq!(kind, canary_kind, "{sql}");
        assert_ne!(
            kind,
            Kind::Failed,
            "{sql}: no statement fails after the charge"
        );
        // Schema and noise report (ε, δ, scales, threshold) depend on the
        // statement only.
        assert_eq!(report, canary_report, "{sql}");
        let charged = (
            epsilon_spent(&store, "plain").await - before.0,
            epsilon_spent(&store, "canary").await - before.1,
        );
        assert_eq!(charged.0, charged.1, "{sql}: the charge is the same");
        if kind == Kind::Released {
            released += 1;
            assert_eq!(charged.0, 50_000, "{sql}: charged ε = 0.05");
        } else {
            assert_eq!(charged.0, 0, "{sql}: refused before the charge");
        }
        // Published keys: the same rows in the same order.
        if sql.contains("GROUP BY district") && !sql.contains("HAVING") && kind == Kind::Released {
            let keys = |b: &[RecordBatch]| {
                rows(b)
                    .into_iter()
                    .map(|r| r[0].clone())
                    .collect::<Vec<_>>()
            };
            assert_eq!(keys(&batches), keys(&canary_batches), "{sql}");
        }
        for row in rows(&canary_batches) {
            for cell in row {
                assert!(
                    !cell.contains("Canary")
                        && !cell.contains("913199999999999999")
                        && cell != "7331"
                        && cell != "987654.25",
                    "{sql}: canary value {cell} released"
                );
            }
        }
    }
    assert!(
        released >= 10,
        "the test has statements that run: {released}"
    );
}

/// A dataset of `units` enterprises with a kind (published or not) and a
/// float amount within [0, 100], plus `extra` rows, as an Arrow IPC file.
fn audit_table(
    dir: &Path,
    name: &str,
    published: bool,
    units: usize,
    extra: &[(&str, &str, f64)],
) -> DatasetSource {
    let sub = dir.join(name);
    std::fs::create_dir_all(sub.join("policies")).unwrap();
    let (mut ids, mut kinds, mut amounts) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..units {
        ids.push(format!("E{i:04}"));
        kinds.push("k".to_string());
        amounts.push(50.0);
    }
    for (id, kind, amount) in extra {
        ids.push(id.to_string());
        kinds.push(kind.to_string());
        amounts.push(*amount);
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("enterprise_id", DataType::Utf8, true),
        Field::new("kind", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
    ]));
    let batch = RecordBatch::try_new(
        Arc::clone(&schema),
        vec![
            Arc::new(StringArray::from(ids)),
            Arc::new(StringArray::from(kinds)),
            Arc::new(Float64Array::from(amounts)),
        ],
    )
    .unwrap();
    let file = std::fs::File::create(sub.join("audit.arrow")).unwrap();
    let mut writer = datafusion::arrow::ipc::writer::FileWriter::try_new(file, &schema).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let categories = if published {
        "categories = [\"k\", \"rare\"]\n"
    } else {
        ""
    };
    std::fs::write(
        sub.join("audit.toml"),
        format!(
            "id = \"audit\"\ntitle = \"t\"\ndomain = \"d\"\nsummary = \"s\"\nowner = \"o\"\n\
             update_frequency = \"never\"\nclassification = \"restricted\"\n\
             privacy_unit = \"enterprise_id\"\njoin_keys = []\n\n\
             [[columns]]\nname = \"enterprise_id\"\ntype = \"string\"\ndescription = \"id\"\nrole = \"identifier\"\n\n\
             [[columns]]\nname = \"kind\"\ntype = \"string\"\ndescription = \"k\"\nrole = \"attribute\"\n{categories}\n\
             [[columns]]\nname = \"amount\"\ntype = \"float64\"\ndescription = \"a\"\nrole = \"sensitive\"\nbounds = [0, 100]\n"
        ),
    )
    .unwrap();
    std::fs::write(
        sub.join("policies/audit.toml"),
        "dataset = \"audit\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 1000000.0\ndelta_total = 0.0009\nquery_epsilon = [0.01, 2.0]\n",
    )
    .unwrap();
    let manifest = Manifest::load(&sub.join("audit.toml")).unwrap();
    dp_job_table(
        &manifest,
        &sub.join("audit.arrow"),
        DataFormat::Arrow,
        &PolicySet::load(&sub.join("policies"), None).unwrap(),
        true,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nan_and_infinite_values_end_in_an_answer_never_a_failure() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let sql = "SELECT kind, SUM(amount) AS s, AVG(amount) AS a, COUNT(amount) AS n FROM audit GROUP BY kind";
    let mut kinds = Vec::new();
    for (name, extra) in [
        ("plain", vec![]),
        ("nan", vec![("X", "k", f64::NAN)]),
        ("inf", vec![("X", "k", f64::INFINITY)]),
        ("minus-inf", vec![("X", "k", f64::NEG_INFINITY)]),
        ("huge", vec![("X", "k", f64::MAX)]),
    ] {
        let tables = [audit_table(dir.path(), name, true, 40, &extra)];
        let query = QuerySession::open(&tables, &Default::default())
            .await
            .unwrap()
            .with_dp(Some(session(&store, name, 1.0, &tables)));
        let (kind, report, batches) = outcome(&query, sql).await;
        for row in rows(&batches) {
            for cell in &row[1..] {
                let value: f64 = cell.parse().unwrap_or(0.0);
                assert!(value.is_finite(), "{name}: {row:?}");
            }
        }
        kinds.push((kind, report));
    }
    assert!(
        kinds.iter().all(|k| *k == kinds[0]),
        "every neighbour ends the same way: {kinds:?}"
    );
    assert_eq!(kinds[0].0, Kind::Released);
}

/// Draw `trials` answers of `sql` on `tables`; what `pick` reads from each.
async fn draws(
    store: &Store,
    tenant: &str,
    tables: &[DatasetSource],
    sql: &str,
    trials: u64,
    pick: impl Fn(&[RecordBatch]) -> f64,
) -> Vec<f64> {
    let query = QuerySession::open(tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session(store, tenant, 1.0, tables)));
    let mut values = Vec::new();
    for _ in 0..trials {
        let (_, batches) = query.run(sql, 1 << 20).await.unwrap();
        values.push(pick(&batches));
    }
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empirical_audits_of_sums_and_thresholds_stay_within_the_configured_epsilon() {
    use crate::dp::clopper_pearson;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let trials = 1000u64;
    let epsilon = 1.0;

    // Sums: 40 firms of 50; the neighbour adds one of 100 (the bound). The
    // noise scale is 100/ε; S = {answer ≥ 2100} has probability 1/2 on the
    // neighbour and e^{-ε}/2 without it, a ratio of exactly e^ε.
    let sum_of = |b: &[RecordBatch]| {
        b[0].column(1)
            .as_any()
            .downcast_ref::<Float64Array>()
            .unwrap()
            .value(0)
    };
    let sql = "SELECT kind, SUM(amount) AS s FROM audit GROUP BY kind ORDER BY kind";
    let without = [audit_table(dir.path(), "sum-d", true, 40, &[])];
    let with = [audit_table(
        dir.path(),
        "sum-d1",
        true,
        40,
        &[("X", "k", 100.0)],
    )];
    let on_d = draws(&store, "sum-a", &without, sql, trials, sum_of).await;
    let on_d1 = draws(&store, "sum-b", &with, sql, trials, sum_of).await;
    let hits = |values: &[f64]| values.iter().filter(|v| **v >= 2100.0).count() as u64;
    let (k1, k0) = (hits(&on_d1), hits(&on_d));
    let (p1_low, _) = clopper_pearson(k1, trials, 0.001);
    let (_, p0_high) = clopper_pearson(k0, trials, 0.001);
    let sum_bound = (p1_low / p0_high).ln();
    let mean_abs = on_d.iter().map(|v| (v - 2000.0).abs()).sum::<f64>() / trials as f64;
    eprintln!(
        "sum audit: {k1} vs {k0} of {trials}; ε lower bound {sum_bound:.3} (configured \
         {epsilon}); mean |noise| {mean_abs:.1} (scale 100)"
    );
    assert!(sum_bound <= epsilon, "sum: ε ≥ {sum_bound}");
    assert!(
        (60.0..=140.0).contains(&mean_abs),
        "noise of scale 100: {mean_abs}"
    );

    // Thresholds: a key held by one firm is released with probability at
    // most δ (1e-7) on the neighbour that has it, never without it; a key
    // held by 80 firms passes almost always (the test has power).
    let sql = "SELECT kind, COUNT(*) AS n FROM audit GROUP BY kind";
    let rare_released =
        |b: &[RecordBatch]| rows(b).iter().filter(|r| r[0] == "rare").count() as f64;
    let common_released = |b: &[RecordBatch]| rows(b).iter().filter(|r| r[0] == "k").count() as f64;
    let with_rare = [audit_table(
        dir.path(),
        "threshold-d1",
        false,
        80,
        &[("X", "rare", 1.0)],
    )];
    let rare = draws(
        &store,
        "threshold-a",
        &with_rare,
        sql,
        trials,
        rare_released,
    )
    .await;
    let common = draws(&store, "threshold-b", &with_rare, sql, 200, common_released).await;
    let rare_hits = rare.iter().sum::<f64>() as u64;
    let (_, rare_high) = clopper_pearson(rare_hits, trials, 0.001);
    eprintln!(
        "threshold audit: a one-firm key released {rare_hits} of {trials} times (95% upper \
         bound {rare_high:.2e}; δ 1e-7); an 80-firm key {} of 200",
        common.iter().sum::<f64>()
    );
    assert_eq!(rare_hits, 0, "a single firm's key passed the threshold");
    assert!(common.iter().sum::<f64>() >= 195.0, "{common:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_budget_per_population_and_a_delta_cap_across_tenants() {
    use datasandbox::dp::budget::{self, Caps, ChargeError, Cost, Population};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let firms = Population {
        id: "enterprise".into(),
        datasets: vec!["enterprises".into(), "tax_records".into()],
        caps: Caps {
            total: Cost {
                epsilon: 1.0,
                delta: 1e-6,
                rho: 0.0,
            },
            dataset_epsilon: Some(100.0),
            dataset_delta: Some(3e-7),
            zcdp: false,
        },
    };
    let cost = |epsilon, delta| Cost {
        epsilon,
        delta,
        rho: 0.0,
    };
    // A charge recorded under a member dataset before populations existed
    // counts: declaring a population refunds nothing.
    sqlx::query(
        "INSERT INTO dp_charges (principal, dataset, population, job_id, epsilon_micro, delta_femto, charged_at) VALUES ('lab', 'tax_records', 'tax_records', 'old', 200000, 0, 0)",
    )
    .execute(store.pool())
    .await
    .unwrap();
    // ε spent on either dataset comes out of one budget.
    budget::charge(&store, "lab", &firms, "enterprises", "j1", cost(0.5, 0.0))
        .await
        .unwrap();
    budget::charge(&store, "lab", &firms, "tax_records", "j2", cost(0.3, 0.0))
        .await
        .unwrap();
    match budget::charge(&store, "lab", &firms, "enterprises", "j3", cost(0.1, 0.0)).await {
        Err(ChargeError::Exhausted(budget::Spent::Principal { population, .. })) => {
            assert_eq!(population, "enterprise")
        }
        other => panic!("{other:?}"),
    }
    let spent = budget::budget(&store, "lab", &firms).await.unwrap();
    assert_eq!((spent.spent.epsilon, spent.remaining.epsilon), (1.0, 0.0));
    // δ over all tenants together: three tenants of 1e-7 each fill the
    // population's 3e-7; a fourth is refused though its own δ is untouched.
    for tenant in ["a", "b", "c"] {
        budget::charge(
            &store,
            tenant,
            &firms,
            "enterprises",
            tenant,
            cost(0.01, 1e-7),
        )
        .await
        .unwrap();
    }
    match budget::charge(&store, "d", &firms, "tax_records", "d", cost(0.01, 1e-7)).await {
        Err(ChargeError::Exhausted(budget::Spent::Population(population))) => {
            assert_eq!(population, "enterprise")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn policy_check_refuses_disagreeing_population_caps_and_names_mixed_sides() {
    use std::collections::BTreeMap;
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "a.toml",
        "dataset = \"a\"\nmodes = [\"aggregate\", \"dp\"]\n[dp]\nepsilon_total = 10.0\n",
    );
    write(
        "b.toml",
        "dataset = \"b\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 5.0\n",
    );
    write("c.toml", "dataset = \"c\"\nmodes = [\"scoring\"]\n");
    let set = PolicySet::load(dir.path(), None).unwrap();
    let populations = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(d, p)| (d.to_string(), p.to_string()))
            .collect()
    };
    // a and b are the same firms: their noisy answers share one budget, so
    // their caps must agree.
    let report =
        set.check_populations(&populations(&[("a", "firm"), ("b", "firm"), ("c", "firm")]));
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].message.contains("population firm"),
        "{report:?}"
    );
    // a answers firm exactly and with noise: named, with the rule.
    assert_eq!(report.notes.len(), 1, "{report:?}");
    assert!(
        report.notes[0].contains("aggregate on a") && report.notes[0].contains("dp on a"),
        "{report:?}"
    );
    // Apart, each is a population of its own: b's caps are its own.
    let report = set.check_populations(&populations(&[("a", "a"), ("b", "b"), ("c", "c")]));
    assert!(report.problems.is_empty(), "{report:?}");
    let caps = set
        .population_caps(&["a".to_string(), "b".to_string()])
        .unwrap();
    assert_eq!(caps.total.epsilon, 5.0, "the tightest cap applies");
    // The shipped policies agree on the enterprise population.
    let shipped = PolicySet::load(&repo().join("policies"), None).unwrap();
    let mut enterprise = BTreeMap::new();
    for id in [
        "enterprises",
        "tax_records",
        "social_security",
        "utility_payments",
        "tax_overdue",
    ] {
        let manifest = Manifest::load(&samples().join(format!("{id}.toml"))).unwrap();
        enterprise.insert(id.to_string(), manifest.population().to_string());
    }
    let report = shipped.check_populations(&enterprise);
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!(report.notes.len(), 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dp_jobs_end_at_a_fixed_time_whatever_the_guest_and_the_data_did() {
    use datasandbox::accounts::Role;
    let mut server = TestServer::start().await;
    let analyst = server.client(Role::Analyst, "lab-t").await;
    server.admin.grant("lab-t", "enterprises").await.unwrap();
    let hostile = analyst
        .upload_module(guest("hostile"), None)
        .await
        .unwrap()
        .sha256;
    // Instant, a noisy query, and a guest that spins until the time limit
    // (10 s in the enterprises policy): each is released 11 s after it
    // started.
    let mut runs = Vec::new();
    for params in [
        serde_json::json!({ "attack": "ok" }),
        serde_json::json!({
            "attack": "query",
            "sql": "SELECT district, COUNT(*) FROM enterprises WHERE employees > 7000 GROUP BY district"
        }),
        serde_json::json!({ "attack": "loop" }),
    ] {
        let analyst = analyst.clone();
        let hostile = hostile.clone();
        runs.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let job = analyst
                .submit_dp_job(&hostile, &["enterprises".into()], params, 0.1)
                .await
                .unwrap();
            let job = analyst.job(&job.id, 60).await.unwrap();
            (job, started.elapsed())
        }));
    }
    let mut took = Vec::new();
    for run in runs {
        let (job, elapsed) = run.await.unwrap();
        assert_ne!(job.state, "running", "{job:?}");
        took.push(elapsed.as_secs_f64());
    }
    let spread = took.iter().cloned().fold(f64::MIN, f64::max)
        - took.iter().cloned().fold(f64::MAX, f64::min);
    eprintln!("dp release times after submission: {took:?} s; spread {spread:.3} s");
    assert!(took.iter().all(|t| *t >= 11.0), "{took:?}");
    // What is left of the timing channel: scheduling jitter, well under a
    // second here (the README states the figure).
    assert!(spread < 1.0, "{took:?}");
    // Over HTTP an error bound instead of ε: the receipt states what the
    // host chose to spend.
    let job = analyst
        .submit_dp_job_within(
            &hostile,
            &["enterprises".into()],
            serde_json::json!({
                "attack": "query",
                "sql": "SELECT district, COUNT(*) FROM enterprises GROUP BY district"
            }),
            datasandbox::dp::Accuracy {
                within: 20.0,
                confidence: 0.95,
            },
        )
        .await
        .unwrap();
    let job = analyst.job(&job.id, 60).await.unwrap();
    assert_eq!(job.state, "released", "{job:?}");
    let receipt = analyst.receipt(&job.id).await.unwrap();
    assert!(
        (receipt.body.privacy_cost.epsilon - 40f64.ln() / 20.0).abs() < 1e-5,
        "{:?}",
        receipt.body.privacy_cost
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_bound_buys_the_least_epsilon_that_reaches_it() {
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();
    std::fs::write(dir.path().join("plain.csv"), &original).unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let tables = register_tables(dir.path(), "plain.csv");
    let accuracy = datasandbox::dp::Accuracy {
        within: 20.0,
        confidence: 0.95,
    };
    let mut session = session(&store, "lab", 0.0, &tables);
    Arc::get_mut(&mut session).unwrap().accuracy = Some(accuracy);
    let query = QuerySession::open(&tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session));
    // plain.csv is a copy of the shipped register.
    let truth = crate::dp::truth(
        "SELECT district, COUNT(*) FROM enterprises GROUP BY district",
        "enterprises",
    )
    .await;
    // One count per district, one row per firm: sensitivity 1, so ±20 at
    // 95% needs ε = ln(2/0.05)/20 ≈ 0.184.
    let sql = "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district";
    let (mut inside, mut total) = (0, 0);
    for _ in 0..50 {
        let (schema, batches) = query.run(sql, 1 << 20).await.unwrap();
        let report: serde_json::Value =
            serde_json::from_str(schema.metadata().get(DP_METADATA_KEY).unwrap()).unwrap();
        let epsilon = report["epsilon"].as_f64().unwrap();
        assert!((epsilon - 40f64.ln() / 20.0).abs() < 1e-9, "{report}");
        for row in rows(&batches) {
            let noisy: f64 = row[1].parse().unwrap();
            let exact = truth.get(&row[0]).copied().unwrap_or(0.0);
            total += 1;
            // Counts are floored at 0 after the noise, which only helps.
            if (noisy - exact).abs() <= 20.0 {
                inside += 1;
            }
        }
    }
    let share = f64::from(inside) / f64::from(total);
    eprintln!("error bound ±20 at 95%: {inside} of {total} within ({share:.3})");
    assert!(share >= 0.95, "{inside} of {total}");
    // A bound one query cannot afford, and AVG: refused before any charge.
    let charged = epsilon_spent(&store, "lab").await;
    for (sql, code) in [
        (
            "SELECT district, SUM(employees) FROM enterprises GROUP BY district",
            "accuracy-unreachable",
        ),
        (
            "SELECT district, AVG(employees) FROM enterprises GROUP BY district",
            "accuracy-not-for-avg",
        ),
    ] {
        match query.run(sql, 1 << 20).await {
            Err(QueryError::Rejected(reason)) => assert!(reason.starts_with(code), "{reason}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
    assert_eq!(epsilon_spent(&store, "lab").await, charged);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gaussian_policy_noises_with_the_l2_sensitivity_and_spends_delta() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).unwrap();
    let shipped = std::fs::read_to_string(repo().join("policies/tax_records.toml")).unwrap();
    std::fs::write(
        policies.join("tax_records.toml"),
        format!(
            "{}mechanism = \"gaussian\"\n",
            shipped
                .replace("epsilon_total = 10.0", "epsilon_total = 100.0")
                .replace("epsilon_dataset = 100.0", "epsilon_dataset = 1000.0")
        ),
    )
    .unwrap();
    let manifest = Manifest::load(&samples().join("tax_records.toml")).unwrap();
    let tables = [dp_job_table(
        &manifest,
        &samples().join("tax_records.csv"),
        DataFormat::Csv,
        &PolicySet::load(&policies, None).unwrap(),
        false,
    )];
    let query = QuerySession::open(&tables, &Default::default())
        .await
        .unwrap()
        .with_dp(Some(session(&store, "lab", 1.0, &tables)));
    let truth = crate::dp::truth(
        "SELECT quarter, COUNT(DISTINCT enterprise_id) FROM tax_records GROUP BY quarter",
        "tax_records",
    )
    .await;
    // A firm is in eight quarters: L2 sensitivity √8. At ε = 1 and
    // δ = 1e-7: ρ = (√(ln 1e7 + 1) − √ln 1e7)², σ = √8 / √(2ρ).
    let log = (1e7f64).ln();
    let rho = ((log + 1.0).sqrt() - log.sqrt()).powi(2);
    let sigma = 8f64.sqrt() / (2.0 * rho).sqrt();
    let sql = "SELECT quarter, COUNT(*) AS n FROM tax_records GROUP BY quarter";
    let mut errors = Vec::new();
    for _ in 0..40 {
        let (schema, batches) = query.run(sql, 1 << 20).await.unwrap();
        let report: serde_json::Value =
            serde_json::from_str(schema.metadata().get(DP_METADATA_KEY).unwrap()).unwrap();
        assert!(
            report["columns"][0]["mechanism"]
                .as_str()
                .unwrap()
                .contains("gaussian"),
            "{report}"
        );
        let scale = report["columns"][0]["scale"][0].as_f64().unwrap();
        assert!((scale - sigma).abs() < 1e-6, "{scale} vs {sigma}");
        assert_eq!(report["delta"].as_f64().unwrap(), 1e-7, "{report}");
        for row in rows(&batches) {
            errors.push(row[1].parse::<f64>().unwrap() - truth[&row[0]]);
        }
    }
    let sd = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
    eprintln!(
        "gaussian counts: σ {sigma:.2} configured, {sd:.2} measured over {} counts",
        errors.len()
    );
    assert!((sd / sigma - 1.0).abs() < 0.2, "{sd} vs {sigma}");
    // Every query spent δ = 1e-7 besides its ε.
    let delta: i64 = sqlx::query_scalar("SELECT SUM(delta_femto) FROM dp_charges")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(delta, 40 * 100_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empirical_audit_of_sample_and_aggregate_stays_within_epsilon() {
    use crate::dp::clopper_pearson;
    use datasandbox::dp::sample_aggregate::{self, Dimension, Spec};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let (module, _) = sandbox().load_module(&guest("block_mean")).unwrap();
    // Neighbours: 30 firms with amount 50, and the same plus one whose
    // amount is enormous. block-mean returns [mean, rows]; the mean is
    // declared within [50, 100], so the canary's block is clamped to 100
    // and the other stays at 50: the mean dimension moves by exactly
    // (hi − lo)/k = 25, the sensitivity its noise (ε/2 of the release) is
    // scaled to, and {mean ≥ 75} has probabilities 1/2 and e^{-ε/2}/2.
    let without = audit_table(dir.path(), "sa-d", true, 30, &[]);
    let with = audit_table(dir.path(), "sa-d1", true, 30, &[("X", "k", 1e9)]);
    let spec = Spec {
        dimensions: vec![
            Dimension {
                name: "mean".into(),
                lo: 50.0,
                hi: 100.0,
                default: 50.0,
            },
            Dimension {
                name: "rows".into(),
                lo: 0.0,
                hi: 40.0,
                default: 0.0,
            },
        ],
        epsilon: 1.0,
        blocks: Some(2),
        block_millis: Some(5_000),
    };
    let trials = 2000u64;
    let draws = |table: DatasetSource, tenant: &'static str| {
        let store = store.clone();
        let module = std::sync::Arc::clone(&module);
        let spec = spec.clone();
        async move {
            let rules = table.dp.as_ref().unwrap().rules;
            let mut values = Vec::new();
            for trial in 0..trials {
                let job = env(&format!("{tenant}-{trial}"), quick_limits(), Vec::new());
                let release = sample_aggregate::run(sample_aggregate::Run {
                    sandbox: sandbox(),
                    module: &module,
                    env: &job,
                    table: &table,
                    privacy_unit: "enterprise_id",
                    rules,
                    spec: &spec,
                    params: r#"{"column": "amount"}"#,
                    store: &store,
                    principal: tenant,
                    population: datasandbox::dp::budget::Population::solo("audit", rules.caps()),
                    report_defaulted: false,
                })
                .await;
                assert_eq!(release.defaulted, 0);
                match release.outputs.first() {
                    Some(datasandbox::sandbox::Output::Value { value, .. }) => values.push(*value),
                    other => panic!("{other:?}"),
                }
            }
            values
        }
    };
    let on_d = draws(without, "sa-a").await;
    let on_d1 = draws(with, "sa-b").await;
    let hits = |values: &[f64]| values.iter().filter(|v| **v >= 75.0).count() as u64;
    let (k1, k0) = (hits(&on_d1), hits(&on_d));
    let (p1_low, _) = clopper_pearson(k1, trials, 0.001);
    let (_, p0_high) = clopper_pearson(k0, trials, 0.001);
    let bound = (p1_low / p0_high).ln();
    eprintln!(
        "sample-aggregate audit: {k1} vs {k0} of {trials}; ε lower bound {bound:.3} (configured 1)"
    );
    assert!(bound <= 1.0, "ε ≥ {bound}");
    // Power: the two are told apart in the right direction.
    assert!(k1 > k0, "{k1} vs {k0}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zcdp_accounting_composes_rho_and_answers_more_within_the_same_caps() {
    use datasandbox::dp::budget;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    // The same data and caps (ε = 2, δ = 1e-6 per tenant), accounted two
    // ways; every query asks ε = 0.5.
    let table = |name: &str, accounting: &str| {
        let base = audit_table(dir.path(), name, true, 40, &[]);
        let sub = dir.path().join(name);
        std::fs::write(
            sub.join("policies/audit.toml"),
            format!(
                "dataset = \"audit\"\nmodes = [\"dp\"]\n[dp]\nepsilon_total = 2.0\n\
                 delta_total = 1e-6\nquery_epsilon = [0.01, 2.0]\nmechanism = \"gaussian\"\n{accounting}"
            ),
        )
        .unwrap();
        let manifest = Manifest::load(&sub.join("audit.toml")).unwrap();
        let rebuilt = dp_job_table(
            &manifest,
            &base.path,
            DataFormat::Arrow,
            &PolicySet::load(&sub.join("policies"), None).unwrap(),
            true,
        );
        assert!(rebuilt.dp.is_some());
        rebuilt
    };
    let answered = |tables: [DatasetSource; 1], tenant: &'static str| {
        let store = store.clone();
        async move {
            let query = QuerySession::open(&tables, &Default::default())
                .await
                .unwrap()
                .with_dp(Some(session(&store, tenant, 0.5, &tables)));
            let mut answered = 0;
            loop {
                match query
                    .run(
                        "SELECT kind, COUNT(*) AS n FROM audit GROUP BY kind",
                        1 << 20,
                    )
                    .await
                {
                    Ok(_) => answered += 1,
                    Err(QueryError::Rejected(reason)) => {
                        assert!(reason.starts_with("budget-exhausted"), "{reason}");
                        break;
                    }
                    Err(other) => panic!("{other:?}"),
                }
                assert!(answered < 1000);
            }
            (answered, query)
        }
    };
    let (approximate, _) = answered([table("approximate", "")], "approximate").await;
    let (zcdp, query) = answered([table("zcdp", "accounting = \"zcdp\"\n")], "zcdp").await;
    // Basic composition: 2 / 0.5 = 4 queries. zCDP: each query is charged
    // ρ = (√(ln 1e6 + 0.5) − √ln 1e6)² ≈ 0.00444 and the cap is the ρ that
    // ε = 2 is worth at δ = 1e-6, ≈ 0.0676: 15 queries.
    let rho_query = budget::zcdp_rho(0.5, 1e-6);
    let rho_cap = budget::zcdp_rho(2.0, 1e-6);
    eprintln!(
        "ε = 0.5 a query under caps ε = 2, δ = 1e-6: {approximate} answered with approximate accounting, {zcdp} with zCDP"
    );
    assert_eq!(approximate, 4);
    assert_eq!(zcdp, (rho_cap / rho_query).floor() as usize);
    // What was spent, converted once, stays within the cap.
    let mut spent = 0.0;
    for _ in 0..zcdp {
        spent += rho_query;
    }
    assert!(budget::zcdp_epsilon(spent, 1e-6) <= 2.0);
    // A threshold on keys is not zCDP: refused before any charge.
    match query
        .run(
            "SELECT amount, COUNT(*) FROM audit GROUP BY amount",
            1 << 20,
        )
        .await
    {
        Err(QueryError::Rejected(reason)) => {
            assert!(reason.starts_with("zcdp-needs-published-keys"), "{reason}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_of_defaulted_blocks_is_released_only_with_noise() {
    use datasandbox::dp::sample_aggregate::{self, Dimension, Spec};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("dsb.sqlite")).await.unwrap();
    let (module, _) = sandbox().load_module(&guest("block_mean")).unwrap();
    let table = audit_table(dir.path(), "defaulted", true, 30, &[]);
    let rules = table.dp.as_ref().unwrap().rules;
    let spec = Spec {
        dimensions: vec![
            Dimension {
                name: "mean".into(),
                lo: 0.0,
                hi: 100.0,
                default: 0.0,
            },
            Dimension {
                name: "rows".into(),
                lo: 0.0,
                hi: 40.0,
                default: 0.0,
            },
        ],
        epsilon: 1.0,
        blocks: Some(2),
        block_millis: Some(5_000),
    };
    let mut released = Vec::new();
    for trial in 0..30 {
        let job = env(&format!("defaulted-{trial}"), quick_limits(), Vec::new());
        // No "column" in the params: block-mean fails on every block.
        let release = sample_aggregate::run(sample_aggregate::Run {
            sandbox: sandbox(),
            module: &module,
            env: &job,
            table: &table,
            privacy_unit: "enterprise_id",
            rules,
            spec: &spec,
            params: "{}",
            store: &store,
            principal: "lab",
            population: datasandbox::dp::budget::Population::solo("audit", rules.caps()),
            report_defaulted: true,
        })
        .await;
        assert_eq!(release.defaulted, 2);
        let value = release
            .outputs
            .iter()
            .find_map(|o| match o {
                datasandbox::sandbox::Output::Value { name, value }
                    if name == "defaulted_blocks" =>
                {
                    Some(*value)
                }
                _ => None,
            })
            .expect("the count is released when the policy says so");
        assert!((0.0..=2.0).contains(&value), "{value}");
        released.push(value);
    }
    // The exact count is 2 every time; the released one is not.
    assert!(released.iter().any(|v| *v != 2.0), "{released:?}");
}
