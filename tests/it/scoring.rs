//! Scoring mode over real HTTP: authorisations decide who is scored, each
//! subject gets a fresh instance over its own rows only, scores are clamped
//! and bucketed, and refusals look the same for existing and absent
//! subjects.

use crate::common;

use common::{TestServer, guest, samples};
use datasandbox::accounts::Role;
use datasandbox::client::Client;
use datasandbox::receipt::Receipt;
use datasandbox::scoring::ScoreBatch;
use datasandbox::store::now;
use reqwest::Method;

const CONSENT: &str = "5f2b9a0c8d7e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e2f1a";

fn authorisation(
    subject: &str,
    tenant: &str,
    purpose: &str,
    from: i64,
    until: i64,
) -> serde_json::Value {
    serde_json::json!({
        "subject": subject,
        "tenant": tenant,
        "purpose": purpose,
        "datasets": ["tax_records", "enterprises", "social_security", "utility_payments"],
        "valid_from": from,
        "valid_until": until,
        "consent_sha256": CONSENT,
        "consent_uri": format!("consents/{subject}.pdf"),
    })
}

/// The first `n` enterprise ids and their employee counts.
fn enterprises(n: usize) -> Vec<(String, f64)> {
    std::fs::read_to_string(samples().join("enterprises.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .take(n)
        .map(|line| {
            let fields: Vec<&str> = line.split(',').collect();
            (fields[0].to_string(), fields[5].parse().unwrap())
        })
        .collect()
}

async fn score(
    client: &Client,
    module: &str,
    subjects: &[&str],
    params: serde_json::Value,
) -> ScoreBatch {
    let body = serde_json::json!({
        "module": module, "policy": "credit-risk", "subjects": subjects, "params": params,
    });
    let (status, _, bytes) = client
        .raw(
            Method::POST,
            "/v1/scoring",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).unwrap()
}

/// Record authorisations over HTTP as the administrator; the stored ones.
async fn authorise(admin: &Client, terms: &serde_json::Value) -> Vec<serde_json::Value> {
    let (status, _, bytes) = admin
        .raw(
            Method::POST,
            "/v1/authorisations",
            Some(("application/json", terms.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&bytes));
    serde_json::from_slice(&bytes).unwrap()
}

/// Approve `module` with `params` for `policy` and `institution`, as an
/// administrator does after reviewing the institution's model.
async fn approve(
    admin: &Client,
    policy: &str,
    institution: &str,
    module: &str,
    params: serde_json::Value,
) {
    admin
        .approve_scorer(&datasandbox::scoring::approvals::NewApproval {
            policy: policy.into(),
            institution: institution.into(),
            module: module.into(),
            params,
        })
        .await
        .unwrap();
}

/// A server where bank-d's `scorer_simple` is approved for credit-risk
/// with `{"column": "employees"}`, and the first `n` enterprises authorised
/// it for credit assessment.
async fn approved_bank(n: usize) -> (TestServer, Client, String, Vec<(String, f64)>) {
    let server = TestServer::start().await;
    let bank = server.client(Role::Institution, "bank-d").await;
    let scorer = bank
        .upload_module(guest("scorer_simple"), None)
        .await
        .unwrap()
        .sha256;
    approve(
        &server.admin,
        "credit-risk",
        "bank-d",
        &scorer,
        serde_json::json!({"column": "employees"}),
    )
    .await;
    let ids = enterprises(n);
    let t = now();
    let terms: Vec<serde_json::Value> = ids
        .iter()
        .map(|(id, _)| authorisation(id, "bank-d", "credit-assessment", t - 10, t + 3600))
        .collect();
    authorise(&server.admin, &serde_json::json!(terms)).await;
    (server, bank, scorer, ids)
}

/// The HTTP status of scoring subject "x" under `policy`.
async fn refused_status(client: &Client, module: &str, policy: &str) -> reqwest::StatusCode {
    let body = serde_json::json!({"module": module, "policy": policy, "subjects": ["x"]});
    let (status, _, _) = client
        .raw(
            Method::POST,
            "/v1/scoring",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorised_subjects_get_bucketed_scores_and_the_rest_are_refused_alike() {
    let mut server = TestServer::start().await;
    let bank = server.client(Role::Institution, "bank-d").await;
    let other_bank = server.client(Role::Institution, "demo-bank").await;
    let scorer = bank
        .upload_module(guest("scorer_simple"), None)
        .await
        .unwrap()
        .sha256;
    approve(
        &server.admin,
        "credit-risk",
        "bank-d",
        &scorer,
        serde_json::json!({"column": "employees"}),
    )
    .await;
    let ids = enterprises(6);
    let t = now();
    let terms = serde_json::json!([
        authorisation(&ids[0].0, "bank-d", "credit-assessment", t - 10, t + 3600),
        authorisation(&ids[1].0, "bank-d", "credit-assessment", t - 10, t + 3600),
        authorisation(&ids[2].0, "bank-d", "credit-assessment", t - 10, t + 3600),
        authorisation(&ids[3].0, "bank-d", "credit-assessment", t - 3600, t - 10),
        authorisation(&ids[4].0, "bank-d", "marketing", t - 10, t + 3600),
        authorisation(
            &ids[5].0,
            "demo-bank",
            "credit-assessment",
            t - 10,
            t + 3600
        ),
        authorisation(
            "913199999999999999",
            "bank-d",
            "marketing",
            t - 10,
            t + 3600
        ),
    ]);
    let added = authorise(&server.admin, &terms).await;
    // Revoke the third at once.
    let (status, _, _) = server
        .admin
        .raw(
            Method::DELETE,
            &format!("/v1/authorisations/{}", added[2]["id"].as_str().unwrap()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, 204);

    let subjects: Vec<&str> = ids
        .iter()
        .map(|(id, _)| id.as_str())
        .chain(["913199999999999999", "no-such-enterprise"])
        .collect();
    let batch = score(
        &bank,
        &scorer,
        &subjects,
        serde_json::json!({"column": "employees"}),
    )
    .await;
    // Scored: the employees of the subject, rounded to the policy's step.
    for ((id, employees), result) in ids.iter().zip(&batch.results).take(2) {
        let expected = (employees / 10.0).round() * 10.0;
        assert_eq!(result.outcome, "scored");
        assert_eq!(result.score, Some(expected.min(1000.0)), "{id}");
    }
    // Revoked, expired, wrong purpose, another institution's, a subject not
    // in the data, a subject never authorised: one answer for all.
    assert_eq!(batch.results.len(), 8);
    for (subject, result) in subjects.iter().zip(&batch.results).skip(2) {
        assert_eq!(result.subject, *subject);
        assert_eq!(result.outcome, "not-authorised", "{subject}");
        assert_eq!(result.score, None);
    }
    // The receipt covers exactly the released scores; like every release,
    // its copy is in the data directory's receipts.
    let receipt: Receipt = batch.receipt.clone().unwrap();
    let copy = server
        .service
        .data_dir
        .join("receipts")
        .join(format!("{}.json", batch.job_id));
    let written: Receipt = serde_json::from_slice(&std::fs::read(&copy).unwrap()).unwrap();
    assert_eq!(written, receipt);
    let keys = bank.keys().await.unwrap();
    let released = serde_json::json!([
        { "kind": "value", "name": ids[0].0, "value": batch.results[0].score },
        { "kind": "value", "name": ids[1].0, "value": batch.results[1].score },
    ]);
    Receipt::verify(
        &serde_json::to_vec(&receipt).unwrap(),
        &keys,
        Some(&released),
    )
    .unwrap();
    assert_eq!(receipt.body.mode, "scoring");
    // The other institution can score only its own authorised subject.
    let other = other_bank
        .upload_module(guest("scorer_simple"), None)
        .await
        .unwrap()
        .sha256;
    approve(
        &server.admin,
        "credit-risk",
        "demo-bank",
        &other,
        serde_json::json!({"column": "employees"}),
    )
    .await;
    let batch = score(
        &other_bank,
        &other,
        &[&ids[0].0, &ids[5].0],
        serde_json::json!({"column": "employees"}),
    )
    .await;
    assert_eq!(batch.results[0].outcome, "not-authorised");
    assert_eq!(batch.results[1].outcome, "scored");
    // Analysts cannot score; a policy not naming the institution is a 404.
    let analyst = server.client(Role::Analyst, "bank-d").await;
    let status = refused_status(&analyst, &scorer, "credit-risk").await;
    assert_eq!(status, 403);
    let stranger = server.client(Role::Institution, "bank-x").await;
    let status = refused_status(&stranger, &scorer, "credit-risk").await;
    assert_eq!(status, 404);
    // Every authorisation change is audited.
    let actions: Vec<String> = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(
        actions
            .iter()
            .filter(|a| *a == "authorisation.added")
            .count(),
        7
    );
    assert!(actions.contains(&"authorisation.revoked".to_string()));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subject_gets_a_fresh_instance_and_hostile_values_are_contained() {
    let server = TestServer::start().await;
    let bank = server.client(Role::Institution, "bank-d").await;
    let probe = bank
        .upload_module(guest("scorer_probe"), None)
        .await
        .unwrap()
        .sha256;
    for kind in ["counter", "rows", "nan", "inf", "huge", "fail"] {
        approve(
            &server.admin,
            "credit-risk",
            "bank-d",
            &probe,
            serde_json::json!({"return": kind}),
        )
        .await;
    }
    // Each probe asks about subjects of its own: one score per subject and
    // purpose per period.
    let ids = enterprises(27);
    let t = now();
    let csv = std::iter::once("subject,tenant,purpose,datasets,valid_from,valid_until,consent_sha256,consent_uri".to_string())
        .chain(ids.iter().map(|(id, _)| {
            format!("{id},bank-d,credit-assessment,tax_records;enterprises;social_security;utility_payments,{},{},{CONSENT},consents/{id}.pdf", t - 10, t + 3600)
        }))
        .collect::<Vec<_>>()
        .join("\n");
    let (status, _, bytes) = server
        .admin
        .raw(
            Method::POST,
            "/v1/authorisations/import",
            Some(("text/csv", csv.into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status, 201, "{}", String::from_utf8_lossy(&bytes));
    let subjects: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    // A static counter never passes 1: no state survives between subjects.
    let batch = score(
        &bank,
        &probe,
        &subjects[..20],
        serde_json::json!({"return": "counter"}),
    )
    .await;
    assert_eq!(batch.results.len(), 20);
    for result in &batch.results {
        assert_eq!(
            (result.outcome.as_str(), result.score),
            ("scored", Some(100.0))
        );
    }
    // Each subject sees only its own rows: 8 quarters of tax records, its
    // one register row, 8 quarters of social security and 12 utility bills,
    // from four datasets (29 × 10 + 4 = 294, bucketed to 290).
    let batch = score(
        &bank,
        &probe,
        &subjects[20..23],
        serde_json::json!({"return": "rows"}),
    )
    .await;
    for result in &batch.results {
        assert_eq!(result.score, Some(290.0), "{result:?}");
    }
    // Values that are not numbers are refused; huge ones clamped. Every
    // failure the scorer can choose is one outcome, `not-scored`, with no
    // guest text; the administrators' diagnostics keep the detail.
    for (index, (probe_kind, outcome, score_value, detail)) in [
        ("nan", "not-scored", None, Some("invalid-score")),
        ("inf", "not-scored", None, Some("invalid-score")),
        ("huge", "scored", Some(1000.0), None),
        ("fail", "not-scored", None, Some("guest-error")),
    ]
    .into_iter()
    .enumerate()
    {
        let batch = score(
            &bank,
            &probe,
            &subjects[23 + index..24 + index],
            serde_json::json!({"return": probe_kind}),
        )
        .await;
        assert_eq!(batch.results[0].outcome, outcome, "{probe_kind}");
        assert_eq!(batch.results[0].score, score_value, "{probe_kind}");
        let text = serde_json::to_string(&batch).unwrap();
        assert!(!text.contains("7f3a9c"), "guest text leaked: {text}");
        if let Some(detail) = detail {
            assert!(!text.contains(detail), "{text}");
            let diagnostics = server.admin.job_diagnostics(&batch.job_id).await.unwrap();
            assert_eq!(
                diagnostics["scoring_failures"][0]["category"], detail,
                "{diagnostics}"
            );
        }
    }
    // One subject twice in a batch is refused before anything runs.
    let body = serde_json::json!({
        "module": probe, "policy": "credit-risk",
        "subjects": [subjects[0], subjects[1], subjects[0]], "params": {},
    });
    let (status, _, bytes) = bank
        .raw(
            Method::POST,
            "/v1/scoring",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&bytes));
    assert!(
        String::from_utf8_lossy(&bytes).contains("more than once"),
        "{}",
        String::from_utf8_lossy(&bytes)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_hold_under_concurrent_batches_and_daily_caps_stop_cleanly() {
    // The repository's policies plus two tight scoring policies.
    let policies = tempfile::tempdir().unwrap();
    for file in ["enterprises.toml", "tax_records.toml"] {
        std::fs::copy(
            common::repo().join("policies").join(file),
            policies.path().join(file),
        )
        .unwrap();
    }
    std::fs::create_dir(policies.path().join("agreements")).unwrap();
    std::fs::copy(
        common::repo().join("policies/agreements/enterprises.md"),
        policies.path().join("agreements/enterprises.md"),
    )
    .unwrap();
    std::fs::create_dir(policies.path().join("scoring")).unwrap();
    let tight = |name: &str, institution: &str, limit: &str| {
        format!(
            "name = \"{name}\"\ninstitutions = [\"{institution}\"]\npurpose = \"credit-assessment\"\nrange = [0, 1000]\nstep = 10\n{limit}\n\n[[datasets]]\nid = \"enterprises\"\ncolumns = [\"employees\"]\n"
        )
    };
    std::fs::write(
        policies.path().join("scoring/rated.toml"),
        tight("rated", "bank-d", "per_minute = 5"),
    )
    .unwrap();
    std::fs::write(
        policies.path().join("scoring/capped.toml"),
        tight("capped", "bank-e", "daily_cap = 3"),
    )
    .unwrap();
    let server = TestServer::start_in(policies.path(), |_| {}).await;
    let bank = server.client(Role::Institution, "bank-d").await;
    let scorer = bank
        .upload_module(guest("scorer_simple"), None)
        .await
        .unwrap()
        .sha256;
    approve(
        &server.admin,
        "rated",
        "bank-d",
        &scorer,
        serde_json::json!({"column": "employees"}),
    )
    .await;
    let ids: Vec<String> = enterprises(8).into_iter().map(|(id, _)| id).collect();
    let t = now();
    let terms: Vec<serde_json::Value> = ["bank-d", "bank-e"]
        .iter()
        .flat_map(|bank| {
            ids.iter().map(move |id| {
                let mut a = authorisation(id, bank, "credit-assessment", t - 10, t + 3600);
                a["datasets"] = serde_json::json!(["enterprises"]);
                a
            })
        })
        .collect();
    authorise(&server.admin, &serde_json::json!(terms)).await;
    let params = serde_json::json!({"column": "employees"});
    // Two concurrent batches of four share a rate of five a minute.
    let (a, b) = tokio::join!(
        bank.score(&scorer, "rated", &ids[..4], params.clone()),
        bank.score(&scorer, "rated", &ids[4..], params.clone()),
    );
    let results: Vec<_> = a
        .unwrap()
        .results
        .into_iter()
        .chain(b.unwrap().results)
        .collect();
    let scored = results.iter().filter(|r| r.outcome == "scored").count();
    let limited = results
        .iter()
        .filter(|r| r.outcome == "rate-limited")
        .count();
    assert_eq!((scored, limited), (5, 3), "{results:?}");
    // The bucket is in the store (a restart does not refill it): empty.
    let tokens: f64 = sqlx::query_scalar("SELECT tokens FROM scoring_rate WHERE tenant = 'bank-d'")
        .fetch_one(server.service.store.pool())
        .await
        .unwrap();
    assert!(tokens < 1.0, "{tokens}");
    // A daily cap of three (another institution, so the day's usage is its
    // own): the first batch stops after three, released with a receipt; the
    // next is refused whole.
    let bank = server.client(Role::Institution, "bank-e").await;
    let scorer = bank
        .upload_module(guest("scorer_simple"), None)
        .await
        .unwrap()
        .sha256;
    approve(
        &server.admin,
        "capped",
        "bank-e",
        &scorer,
        serde_json::json!({"column": "employees"}),
    )
    .await;
    let first = bank
        .score(&scorer, "capped", &ids[..5], params.clone())
        .await
        .unwrap();
    let outcomes: Vec<&str> = first.results.iter().map(|r| r.outcome.as_str()).collect();
    assert_eq!(
        outcomes,
        ["scored", "scored", "scored", "cap-reached", "cap-reached"]
    );
    assert!(first.receipt.is_some());
    let second = bank
        .score(&scorer, "capped", &ids[5..], params)
        .await
        .unwrap();
    assert!(second.results.iter().all(|r| r.outcome == "cap-reached"));
    assert!(second.receipt.is_none());
}

/// Per enterprise: the share of quarters overdue in the tax records.
fn overdue_rates() -> std::collections::HashMap<String, f64> {
    let mut counts: std::collections::HashMap<String, (f64, f64)> = Default::default();
    for line in std::fs::read_to_string(samples().join("tax_records.csv"))
        .unwrap()
        .lines()
        .skip(1)
    {
        let fields: Vec<&str> = line.split(',').collect();
        let entry = counts.entry(fields[0].to_string()).or_default();
        entry.0 += fields[4].parse::<f64>().unwrap();
        entry.1 += 1.0;
    }
    counts
        .into_iter()
        .map(|(id, (overdue, quarters))| (id, overdue / quarters))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logistic_model_ranks_risk_and_each_subject_gets_its_own_receipt() {
    let mut server = TestServer::start().await;
    let bank = server.client(Role::Institution, "demo-bank").await;
    let model = bank
        .upload_module(guest("credit_risk"), Some("credit-risk"))
        .await
        .unwrap()
        .sha256;
    for policy in ["credit-risk", "credit-grade"] {
        approve(
            &server.admin,
            policy,
            "demo-bank",
            &model,
            serde_json::json!({}),
        )
        .await;
    }
    let ids = enterprises(300);
    let t = now();
    // Consents to an assessment (credit-risk) and a decision (credit-grade).
    let terms: Vec<serde_json::Value> = ids
        .iter()
        .flat_map(|(id, _)| {
            ["credit-assessment", "credit-decision"]
                .map(|purpose| authorisation(id, "demo-bank", purpose, t - 10, t + 3600))
        })
        .collect();
    authorise(&server.admin, &serde_json::json!(terms)).await;
    let subjects: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let body = |policy: &str| {
        serde_json::json!({"module": model, "policy": policy, "subjects": subjects})
            .to_string()
            .into_bytes()
    };
    let (status, _, bytes) = bank
        .raw(
            Method::POST,
            "/v1/scoring",
            Some(("application/json", body("credit-risk"))),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let scored: ScoreBatch = serde_json::from_slice(&bytes).unwrap();

    // Enterprises that never ran late on tax score higher on average than
    // those overdue in at least a quarter of the quarters: the model has
    // learned something from the data it never let leave.
    let rates = overdue_rates();
    let (mut clean, mut late) = (Vec::new(), Vec::new());
    for result in &scored.results {
        assert_eq!(result.outcome, "scored", "{result:?}");
        let score = result.score.unwrap();
        assert!(
            (0.0..=1000.0).contains(&score) && score % 10.0 == 0.0,
            "{score}"
        );
        assert_eq!(result.grade, None);
        match rates[&result.subject] {
            0.0 => clean.push(score),
            r if r >= 0.25 => late.push(score),
            _ => {}
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    assert!(
        clean.len() >= 20 && late.len() >= 20,
        "{} {}",
        clean.len(),
        late.len()
    );
    assert!(
        mean(&clean) > mean(&late) + 100.0,
        "clean {:.0} vs late {:.0}",
        mean(&clean),
        mean(&late)
    );

    // Each scored subject has its own receipt, over its score only, signed
    // by the platform key; it shares the batch's job and audit entry.
    let keys = bank.keys().await.unwrap();
    let batch_receipt = scored.receipt.clone().unwrap();
    for result in &scored.results {
        let receipt = result.receipt.as_ref().unwrap();
        let own =
            serde_json::json!([{ "kind": "value", "name": result.subject, "value": result.score }]);
        let verified =
            Receipt::verify(&serde_json::to_vec(receipt).unwrap(), &keys, Some(&own)).unwrap();
        assert_eq!(
            verified.body.subject.as_deref(),
            Some(result.subject.as_str())
        );
        assert_eq!(verified.body.job_id, batch_receipt.body.job_id);
        assert_eq!(
            verified.body.audit_position,
            batch_receipt.body.audit_position
        );
    }
    // Moving a receipt to another subject breaks its signature.
    let mut forged = scored.results[0].receipt.clone().unwrap();
    forged.body.subject = Some(scored.results[1].subject.clone());
    assert!(Receipt::verify(&serde_json::to_vec(&forged).unwrap(), &keys, None).is_err());
    // The batch receipt still verifies, without a subject.
    assert_eq!(batch_receipt.body.subject, None);
    Receipt::verify(&serde_json::to_vec(&batch_receipt).unwrap(), &keys, None).unwrap();

    // Under the grade policy only the grade leaves, and it is the grade of
    // the same bucketed score.
    let (status, _, bytes) = bank
        .raw(
            Method::POST,
            "/v1/scoring",
            Some(("application/json", body("credit-grade"))),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    assert!(!String::from_utf8_lossy(&bytes).contains("\"value\""));
    let graded: ScoreBatch = serde_json::from_slice(&bytes).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for (number, grade) in scored.results.iter().zip(&graded.results) {
        assert_eq!(grade.score, None);
        let expected = match number.score.unwrap() {
            s if s >= 850.0 => "A",
            s if s >= 700.0 => "B",
            s if s >= 500.0 => "C",
            s if s >= 300.0 => "D",
            _ => "E",
        };
        assert_eq!(grade.grade.as_deref(), Some(expected), "{}", number.subject);
        seen.insert(expected);
    }
    assert!(
        seen.len() >= 3,
        "a useful scale spreads the subjects: {seen:?}"
    );
    // bank-d is not named by the grade policy.
    let other = server.client(Role::Institution, "bank-d").await;
    let other_model = other
        .upload_module(guest("credit_risk"), None)
        .await
        .unwrap()
        .sha256;
    let status = refused_status(&other, &other_model, "credit-grade").await;
    assert_eq!(status, 404);
    server.stop().await.unwrap();
}

/// The scorer is pinned: a bank that could run any module, or one module
/// with any params, on one consenting subject would read that subject's rows
/// a few bits a batch (`{"slice": i}`). Only the approved (module, params)
/// pair runs; anything else is refused before a row is read, and the
/// approval is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_an_approved_scorer_with_its_approved_params_runs() {
    let server = TestServer::start().await;
    let bank = server.client(Role::Institution, "bank-d").await;
    let scorer = bank
        .upload_module(guest("scorer_simple"), None)
        .await
        .unwrap()
        .sha256;
    let ids = enterprises(1);
    let t = now();
    authorise(
        &server.admin,
        &serde_json::json!([authorisation(
            &ids[0].0,
            "bank-d",
            "credit-assessment",
            t - 10,
            t + 3600
        )]),
    )
    .await;
    let attempt = |params: serde_json::Value| {
        let bank = bank.clone();
        let scorer = scorer.clone();
        let subject = ids[0].0.clone();
        async move {
            let body = serde_json::json!({
                "module": scorer, "policy": "credit-risk", "subjects": [subject], "params": params,
            });
            let (status, _, bytes) = bank
                .raw(
                    Method::POST,
                    "/v1/scoring",
                    Some(("application/json", body.to_string().into_bytes())),
                )
                .await
                .unwrap();
            (status, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    // Not approved at all.
    let (status, body) = attempt(serde_json::json!({"column": "employees"})).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("module-not-approved"), "{body}");
    approve(
        &server.admin,
        "credit-risk",
        "bank-d",
        &scorer,
        serde_json::json!({"column": "employees"}),
    )
    .await;
    let (status, body) = attempt(serde_json::json!({"column": "employees"})).await;
    assert_eq!(status, 200, "{body}");
    // The slicing attack: the same module, other params, refused each time.
    for slice in 0..3 {
        let (status, body) =
            attempt(serde_json::json!({"column": "employees", "slice": slice})).await;
        assert_eq!(status, 403, "{body}");
    }
    // An approval for another institution does not carry over.
    let other = server.client(Role::Institution, "demo-bank").await;
    let theirs = other
        .upload_module(guest("scorer_simple"), None)
        .await
        .unwrap()
        .sha256;
    assert_eq!(theirs, scorer);
    let body = serde_json::json!({
        "module": theirs, "policy": "credit-risk", "subjects": [ids[0].0], "params": {"column": "employees"},
    });
    let (status, _, _) = other
        .raw(
            Method::POST,
            "/v1/scoring",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
    assert_eq!(status, 403);
    let actions: Vec<String> = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.contains(&"scoring.approved".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_client_goes_away_runs_to_its_end_in_the_queue() {
    let (server, bank, scorer, ids) = approved_bank(1500).await;
    let subjects: Vec<&str> = ids.iter().map(|(id, _)| id.as_str()).collect();
    let body = serde_json::json!({
        "module": scorer, "policy": "credit-risk", "subjects": subjects,
        "params": {"column": "employees"},
    });
    // The client gives up a moment after sending (its connection closes).
    let request = {
        let bank = bank.clone();
        tokio::spawn(async move {
            bank.raw(
                Method::POST,
                "/v1/scoring",
                Some(("application/json", body.to_string().into_bytes())),
            )
            .await
        })
    };
    let store = server.service.store.clone();
    let running = || async {
        sqlx::query_scalar::<_, String>("SELECT state FROM jobs WHERE mode = 'scoring'")
            .fetch_optional(store.pool())
            .await
            .unwrap()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while running().await.as_deref() != Some("running") {
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    request.abort();
    assert!(request.await.unwrap_err().is_cancelled());
    // The batch goes on without it, to a released job with every subject
    // scored and charged.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        match running().await.as_deref() {
            Some("running") => {}
            Some(state) => {
                assert_eq!(state, "released");
                break;
            }
            None => panic!("the job vanished"),
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let output: String = sqlx::query_scalar("SELECT output FROM jobs WHERE mode = 'scoring'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let outputs: Vec<serde_json::Value> = serde_json::from_str(&output).unwrap();
    assert_eq!(outputs.len(), 1500);
    let charged: i64 =
        sqlx::query_scalar("SELECT SUM(scored) FROM scoring_usage WHERE tenant = 'bank-d'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(charged, 1500);
    // It ran as a job of the queue, which gives its worker back once the
    // batch (and its per-subject receipts) is done.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let metrics = server.admin.metrics().await.unwrap();
        if metrics.contains("dsb_jobs_running 0") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_score_per_subject_and_purpose_per_period_and_a_durable_rate() {
    let (server, bank, scorer, ids) = approved_bank(3).await;
    let params = serde_json::json!({"column": "employees"});
    let first = score(&bank, &scorer, &[&ids[0].0], params.clone()).await;
    assert_eq!(first.results[0].outcome, "scored");
    // Within the 30 days of credit-risk: the same subject again is
    // `already-scored`, with no score and no cap taken; the others run.
    let again = score(&bank, &scorer, &[&ids[0].0, &ids[1].0], params.clone()).await;
    assert_eq!(again.results[0].outcome, "already-scored");
    assert_eq!(again.results[0].score, None);
    assert_eq!(again.results[1].outcome, "scored");
    let used: i64 =
        sqlx::query_scalar("SELECT SUM(scored) FROM scoring_usage WHERE tenant = 'bank-d'")
            .fetch_one(server.service.store.pool())
            .await
            .unwrap();
    assert_eq!(used, 2, "the refused repeat took no place in the cap");
    // Concurrent batches asking about one subject: exactly one scores it.
    let racing = futures::future::join_all((0..4).map(|_| {
        let bank = bank.clone();
        let scorer = scorer.clone();
        let subject = ids[2].0.clone();
        let params = params.clone();
        async move { score(&bank, &scorer, &[&subject], params).await }
    }))
    .await;
    let scored = racing
        .iter()
        .filter(|b| b.results[0].outcome == "scored")
        .count();
    assert_eq!(scored, 1, "{racing:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_can_be_cancelled_between_subjects() {
    let (server, bank, scorer, ids) = approved_bank(1500).await;
    let subjects: Vec<String> = ids.iter().map(|(id, _)| id.clone()).collect();
    let request = {
        let bank = bank.clone();
        let scorer = scorer.clone();
        tokio::spawn(async move {
            let subjects: Vec<&str> = subjects.iter().map(String::as_str).collect();
            score(
                &bank,
                &scorer,
                &subjects,
                serde_json::json!({"column": "employees"}),
            )
            .await
        })
    };
    let store = server.service.store.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let id = loop {
        let running: Option<String> =
            sqlx::query_scalar("SELECT id FROM jobs WHERE mode = 'scoring' AND state = 'running'")
                .fetch_optional(store.pool())
                .await
                .unwrap();
        if let Some(id) = running {
            break id;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the batch never started"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    bank.cancel_job(&id).await.unwrap();
    let batch = request.await.unwrap();
    let count = |outcome: &str| {
        batch
            .results
            .iter()
            .filter(|r| r.outcome == outcome)
            .count()
    };
    assert!(count("cancelled") > 0, "nothing was left to cancel");
    assert_eq!(count("scored") + count("cancelled"), 1500);
    // What was scored before the cancel stays scored, charged and released.
    let used: i64 =
        sqlx::query_scalar("SELECT SUM(scored) FROM scoring_usage WHERE tenant = 'bank-d'")
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(used as usize, count("scored"));
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE id = ?")
        .bind(&id)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(
        state,
        if count("scored") > 0 {
            "released"
        } else {
            "rejected"
        }
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_file_that_fails_to_read_answers_internal_and_never_its_text() {
    let (server, bank, scorer, ids) = approved_bank(1).await;
    // The stored file goes bad after registration (disk fault, a botched
    // restore): its first row now holds a value that cannot be parsed,
    // a canary a reader's error message would quote.
    // The version is one stored before Parquet copies (read from its CSV).
    let version = server.service.catalog.get("enterprises").unwrap();
    std::fs::remove_file(&version.path).unwrap();
    let mut text = std::fs::read_to_string(&version.original).unwrap();
    let header_end = text.find('\n').unwrap() + 1;
    text.insert_str(
        header_end,
        "913199999999999999,Canary Co.,Yangpu,it-services,small,CANARY-7f3e,1.0,2010-01-01\n",
    );
    std::fs::write(&version.original, text).unwrap();
    let body = serde_json::json!({
        "module": scorer, "policy": "credit-risk", "subjects": [ids[0].0],
        "params": {"column": "employees"},
    });
    let (status, _, bytes) = bank
        .raw(
            Method::POST,
            "/v1/scoring",
            Some(("application/json", body.to_string().into_bytes())),
        )
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&bytes);
    assert_eq!(status, 500, "{text}");
    assert!(text.contains("\"internal\""), "{text}");
    assert!(
        !text.contains("CANARY"),
        "the reader's error reached the institution: {text}"
    );
}
