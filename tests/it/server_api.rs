//! The HTTP API on a real loopback server: every endpoint by role and
//! tenant, error shapes, request limits, tokens, OpenAPI, metrics.

use crate::common;

use std::time::Duration;

use common::{TestServer, guest};
use datasandbox::accounts::Role;
use datasandbox::client::Client;
use reqwest::{Method, StatusCode};

fn error_code(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body)
        .unwrap_or_else(|_| panic!("not a JSON error: {}", String::from_utf8_lossy(body)));
    value["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error.code in {value}"))
        .to_string()
}

/// A released job of tenant `lab-a`, and the clients of every principal.
struct World {
    server: TestServer,
    owner: Client,
    other: Client,
    contestant: Client,
    institution: Client,
    module: String,
    job: String,
}

async fn world() -> World {
    let server = TestServer::start().await;
    let owner = server.client(Role::Analyst, "lab-a").await;
    let other = server.client(Role::Analyst, "lab-b").await;
    let contestant = server.client(Role::Contestant, "team-c").await;
    let institution = server.client(Role::Institution, "bank-d").await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let module = owner
        .upload_module(guest("district_stats"), Some("stats"))
        .await
        .unwrap()
        .sha256;
    let job = owner
        .submit_job(
            &module,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap();
    let job = owner
        .wait_job(&job.id, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(job.state, "released", "{job:?}");
    World {
        server,
        owner,
        other,
        contestant,
        institution,
        module,
        job: job.id,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_matrix_every_endpoint_by_role_and_tenant() {
    let w = world().await;
    let anonymous = Client::new(&w.server.base, None);
    let bad_token = Client::new(
        &w.server.base,
        Some(format!("dsb_{}_{}", "0".repeat(16), "f".repeat(64))),
    );
    let revocable = w
        .server
        .admin
        .create_token(Role::Analyst, "lab-z", None)
        .await
        .unwrap()
        .info
        .id;
    let job = &w.job;
    let module = &w.module;
    let json = |v: serde_json::Value| Some(("application/json", v.to_string().into_bytes()));
    // (method, path, body, [anonymous, bad token, admin, owner, other tenant, contestant, institution])
    type Row = (Method, String, Option<(&'static str, Vec<u8>)>, [u16; 7]);
    let submit =
        serde_json::json!({ "module": module, "mode": "aggregate", "datasets": ["enterprises"] });
    let rows: Vec<Row> = vec![
        (Method::GET, "/healthz".into(), None, [200; 7]),
        (
            Method::GET,
            "/metrics".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (Method::GET, "/v1/openapi.json".into(), None, [200; 7]),
        (Method::GET, "/v1/keys".into(), None, [200; 7]),
        (
            Method::GET,
            "/v1/modules".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/v1/modules".into(),
            // Another module: uploading must not make `module` anyone else's.
            Some(("application/wasm", guest("block_mean"))),
            [401, 401, 201, 201, 201, 201, 201],
        ),
        (
            Method::GET,
            format!("/v1/modules/{module}"),
            None,
            [401, 401, 404, 200, 404, 404, 404],
        ),
        (
            Method::GET,
            "/v1/jobs".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        // The owner has the grant and the module; the other tenant has
        // neither (404, not 403: nothing is confirmed).
        (
            Method::POST,
            "/v1/jobs".into(),
            json(submit),
            [401, 401, 404, 202, 404, 404, 404],
        ),
        (
            Method::GET,
            format!("/v1/jobs/{job}"),
            None,
            [401, 401, 404, 200, 404, 404, 404],
        ),
        (
            Method::GET,
            format!("/v1/jobs/{job}/output"),
            None,
            [401, 401, 404, 200, 404, 404, 404],
        ),
        (
            Method::GET,
            format!("/v1/jobs/{job}/receipt"),
            None,
            [401, 401, 404, 200, 404, 404, 404],
        ),
        (
            Method::POST,
            format!("/v1/jobs/{job}/cancel"),
            None,
            [401, 401, 404, 409, 404, 404, 404],
        ),
        (
            Method::GET,
            "/v1/datasets".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/v1/datasets/enterprises".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/v1/datasets/enterprises/sample?rows=5".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::GET,
            "/v1/datasets/nope".into(),
            None,
            [401, 401, 404, 404, 404, 404, 404],
        ),
        (
            Method::POST,
            "/v1/datasets".into(),
            Some(("multipart/form-data; boundary=x", b"--x--\r\n".to_vec())),
            [401, 401, 400, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/grants".into(),
            json(serde_json::json!({ "tenant": "lab-q", "dataset": "tax_records" })),
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/grants".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/policies".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/policies/enterprises".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/policies/check".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/policies/reload".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/audit?limit=5".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/audit/verify".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/audit/checkpoints".into(),
            None,
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/tokens".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/tokens".into(),
            json(serde_json::json!({ "role": "analyst", "tenant": "lab-y" })),
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/authorisations".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/authorisations".into(),
            json(serde_json::json!([])),
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            format!("/v1/jobs/{job}/diagnostics"),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/scoring/approvals".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/scoring/approvals".into(),
            json(serde_json::json!({"policy": "credit-risk", "institution": "bank-d", "module": "a".repeat(64)})),
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/authorisations/import".into(),
            Some(("text/csv", b"subject,tenant,purpose,datasets,valid_from,valid_until,consent_sha256,consent_uri\n".to_vec())),
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::DELETE,
            "/v1/authorisations/none".into(),
            None,
            [401, 401, 404, 403, 403, 403, 403],
        ),
        // Scoring is for institutions; this one is named by no scoring
        // policy, so the policy is not found.
        (
            Method::POST,
            "/v1/scoring".into(),
            json(serde_json::json!({ "module": module, "policy": "credit-risk", "subjects": ["x"] })),
            [401, 401, 403, 403, 403, 403, 404],
        ),
        (
            Method::GET,
            "/v1/reviews".into(),
            None,
            [401, 401, 200, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/reviews/none".into(),
            None,
            [401, 401, 404, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/reviews/none".into(),
            json(serde_json::json!({ "decision": "approve" })),
            [401, 401, 404, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            format!("/v1/jobs/{job}/review"),
            None,
            [401, 401, 404, 404, 404, 404, 404],
        ),
        (
            Method::GET,
            "/v1/datasets/enterprises/agreement".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/v1/applications".into(),
            json(serde_json::json!({})),
            [401, 401, 400, 400, 400, 400, 400],
        ),
        (
            Method::GET,
            "/v1/applications".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/v1/applications/none/approve".into(),
            json(serde_json::json!({})),
            [401, 401, 404, 403, 403, 403, 403],
        ),
        (
            Method::POST,
            "/v1/applications/none/reject".into(),
            json(serde_json::json!({ "reason": "no" })),
            [401, 401, 404, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/contests".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/v1/contests".into(),
            Some(("application/toml", b"id = 1\n".to_vec())),
            [401, 401, 422, 403, 403, 403, 403],
        ),
        (
            Method::GET,
            "/v1/contests/none".into(),
            None,
            [401, 401, 404, 404, 404, 404, 404],
        ),
        (
            Method::POST,
            "/v1/contests/none/submissions".into(),
            json(serde_json::json!({ "module": module })),
            [401, 401, 403, 403, 403, 404, 403],
        ),
        (
            Method::GET,
            "/v1/contests/none/submissions".into(),
            None,
            [401, 401, 403, 403, 403, 404, 403],
        ),
        (
            Method::POST,
            "/v1/contests/none/submissions/x/pick".into(),
            None,
            [401, 401, 403, 403, 403, 404, 403],
        ),
        (
            Method::GET,
            "/v1/contests/none/leaderboard".into(),
            None,
            [401, 401, 404, 404, 404, 404, 404],
        ),
        (
            Method::GET,
            "/v1/contests/none/sample".into(),
            None,
            [401, 401, 404, 404, 404, 404, 404],
        ),
        (
            Method::GET,
            "/v1/budgets".into(),
            None,
            [401, 401, 200, 200, 200, 200, 200],
        ),
        (
            Method::POST,
            "/v1/budgets/grants".into(),
            json(serde_json::json!({ "tenant": "lab-a", "dataset": "enterprises", "epsilon": 1.0, "reason": "study" })),
            [401, 401, 201, 403, 403, 403, 403],
        ),
        (
            Method::DELETE,
            format!("/v1/tokens/{revocable}"),
            None,
            [401, 401, 204, 403, 403, 403, 403],
        ),
    ];
    let principals = [
        &anonymous,
        &bad_token,
        &w.server.admin,
        &w.owner,
        &w.other,
        &w.contestant,
        &w.institution,
    ];
    let names = [
        "anonymous",
        "bad token",
        "admin",
        "owner",
        "other tenant",
        "contestant",
        "institution",
    ];
    let mut failures = Vec::new();
    for (method, path, body, expected) in &rows {
        for ((client, name), want) in principals.iter().zip(names).zip(expected) {
            let (status, _, bytes) = client
                .raw(method.clone(), path, body.clone())
                .await
                .unwrap_or_else(|e| panic!("{method} {path} as {name}: {e:?}"));
            if status.as_u16() != *want {
                failures.push(format!(
                    "{method} {path} as {name}: {status}, expected {want}: {}",
                    String::from_utf8_lossy(&bytes)
                ));
            }
            if !status.is_success() {
                error_code(&bytes);
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // Every route of the OpenAPI document is in the matrix.
    let documented = w.server.admin.openapi().await.unwrap();
    for (path, item) in documented["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let covered = rows.iter().any(|(m, p, _, _)| {
                m.as_str().eq_ignore_ascii_case(method)
                    && matches_template(path, p.split('?').next().unwrap())
            });
            assert!(
                covered,
                "{method} {path} is documented but not in the access matrix"
            );
        }
    }
}

/// `/v1/jobs/{id}` matches `/v1/jobs/abc`.
fn matches_template(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}')) || t == p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_documents_exactly_the_routes_that_answer() {
    let server = TestServer::start().await;
    let document = server.admin.openapi().await.unwrap();
    assert_eq!(
        document["openapi"].as_str().unwrap().chars().next(),
        Some('3')
    );
    let paths = document["paths"].as_object().unwrap();
    for expected in [
        "/v1/modules",
        "/v1/jobs",
        "/v1/jobs/{id}",
        "/v1/jobs/{id}/cancel",
        "/v1/jobs/{id}/output",
        "/v1/jobs/{id}/receipt",
        "/v1/datasets",
        "/v1/datasets/{id}/sample",
        "/v1/policies/reload",
        "/v1/keys",
        "/v1/audit/verify",
        "/v1/tokens/{id}",
        "/healthz",
        "/metrics",
    ] {
        assert!(
            paths.contains_key(expected),
            "{expected} missing from the document"
        );
    }
    for (path, item) in paths {
        for method in item.as_object().unwrap().keys() {
            let concrete = path
                .replace("{sha256}", "x")
                .replace("{id}", "x")
                .replace("{dataset}", "x");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, _, body) = server
                .admin
                .raw(method.clone(), &concrete, None)
                .await
                .unwrap();
            assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            if status == StatusCode::NOT_FOUND {
                assert_ne!(
                    error_code(&body),
                    "no-such-route",
                    "{method} {path} has no route"
                );
            }
        }
    }
    // And a route that does not exist answers in the same error shape.
    let (status, _, body) = server
        .admin
        .raw(Method::GET, "/v1/nothing", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(error_code(&body), "no-such-route");
    let (status, _, body) = server
        .admin
        .raw(Method::PUT, "/v1/jobs", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(error_code(&body), "method-not-allowed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_typed_400s() {
    let server = TestServer::start_with(|c| c.max_body_bytes = 4096).await;
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let json = |text: &str| Some(("application/json", text.as_bytes().to_vec()));
    // (what, body, status, code, the message mentions)
    type Case<'a> = (&'a str, Option<(&'a str, Vec<u8>)>, u16, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        ("not json", json("{\"module\": "), 400, "bad-json", ""),
        (
            "unknown field",
            json(r#"{"module":"x","mode":"aggregate","datasets":["enterprises"],"colour":1}"#),
            400,
            "bad-json",
            "colour",
        ),
        (
            "wrong type",
            json(r#"{"module":"x","mode":"aggregate","datasets":"enterprises"}"#),
            400,
            "bad-json",
            "datasets",
        ),
        (
            "missing field",
            json(r#"{"module":"x"}"#),
            400,
            "bad-json",
            "mode",
        ),
        (
            "no content type",
            Some(("text/plain", b"{}".to_vec())),
            415,
            "unsupported-media-type",
            "",
        ),
        (
            "too large",
            Some(("application/json", vec![b' '; 10_000])),
            413,
            "body-too-large",
            "",
        ),
        (
            "unknown mode",
            json(r#"{"module":"x","mode":"everything","datasets":["enterprises"]}"#),
            400,
            "bad-job",
            "unsupported mode",
        ),
        (
            "no datasets",
            json(r#"{"module":"x","mode":"aggregate","datasets":[]}"#),
            400,
            "bad-job",
            "at least one dataset",
        ),
    ];
    for (what, body, status, code, mentions) in cases {
        let (got, _, bytes) = analyst.raw(Method::POST, "/v1/jobs", body).await.unwrap();
        assert_eq!(
            got.as_u16(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(&bytes)
        );
        assert_eq!(error_code(&bytes), code, "{what}");
        let text = String::from_utf8_lossy(&bytes);
        assert!(
            text.contains(mentions),
            "{what}: {text} should mention {mentions}"
        );
    }
    // Bad query strings and oversized headers.
    let (status, _, bytes) = analyst
        .raw(Method::GET, "/v1/jobs?limit=many", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(error_code(&bytes), "bad-query");
    let response = reqwest::Client::new()
        .get(format!("{}/v1/datasets", server.base))
        .header("x-padding", "a".repeat(20_000))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // Malformed modules are refused with the intake's reason, and the
    // module is not recorded.
    for (bytes, reason) in [
        (b"not wasm at all".to_vec(), "not-wasm"),
        (wat::parse_str("(module)").unwrap(), "core-module"),
    ] {
        let error = analyst.upload_module(bytes, None).await.unwrap_err();
        assert_eq!(error.code(), Some("invalid-module"), "{error}");
        assert!(error.to_string().contains(reason), "{error}");
    }
    assert!(analyst.modules().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_hashed_and_revocation_and_expiry_apply_at_once() {
    let server = TestServer::start().await;
    let created = server
        .admin
        .create_token(Role::Analyst, "lab-a", None)
        .await
        .unwrap();
    let analyst = server.admin.with_token(created.token.clone());
    analyst.datasets().await.unwrap();
    // Only the hash is stored.
    let secret = created.token.rsplit('_').next().unwrap().to_string();
    let stored: Vec<(String, String)> = sqlx::query_as("SELECT id, secret_sha256 FROM tokens")
        .fetch_all(server.service.store.pool())
        .await
        .unwrap();
    assert!(
        stored
            .iter()
            .all(|(_, hash)| !hash.contains(&secret) && hash.len() == 64)
    );
    server.admin.revoke_token(&created.info.id).await.unwrap();
    let error = analyst.datasets().await.unwrap_err();
    assert_eq!(error.code(), Some("unauthorized"));
    assert!(error.to_string().contains("revoked"), "{error}");
    // A token that has expired.
    let past = datasandbox::store::now() - 1;
    let expired = server
        .admin
        .create_token(Role::Analyst, "lab-a", Some(past))
        .await
        .unwrap();
    let error = server
        .admin
        .with_token(expired.token)
        .datasets()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("expired"), "{error}");
    // A token with the right id and a wrong secret is unknown.
    let forged = format!("dsb_{}_{}", created.info.id, "0".repeat(64));
    let error = server
        .admin
        .with_token(forged)
        .datasets()
        .await
        .unwrap_err();
    assert!(error.to_string().contains("unknown token"), "{error}");
    // Bad tenant names are refused.
    let error = server
        .admin
        .create_token(Role::Analyst, "lab a/../x", None)
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("bad-tenant"));
    // Every token change is in the audit log.
    let actions: Vec<String> = datasandbox::store::audit::entries(&server.service.store)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert!(actions.iter().filter(|a| *a == "token.created").count() >= 3);
    assert!(actions.contains(&"token.revoked".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datasets_grants_and_restricted_visibility() {
    let server = TestServer::start().await;
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let list = analyst.datasets().await.unwrap();
    // The restricted social-security filings are not even listed.
    assert_eq!(
        list.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
        ["enterprises", "tax_records", "utility_payments"]
    );
    assert!(list.iter().all(|d| !d.accessible), "{list:?}");
    // A synthetic sample has the declared columns and no real row.
    let sample = analyst.dataset_sample("enterprises", 20).await.unwrap();
    assert_eq!(sample.lines().count(), 21);
    let real = std::fs::read_to_string(common::samples().join("enterprises.csv")).unwrap();
    for line in sample.lines().skip(1) {
        assert!(
            !real.lines().any(|r| r == line),
            "sample row {line} is real"
        );
    }
    // Without a grant the job is refused like an unknown dataset.
    let module = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap();
    let error = analyst
        .submit_job(
            &module.sha256,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("not-found"));
    // Without a grant the dictionary is there, the profile is not; with
    // one, the published profile (rounded, no extremes); administrators see
    // it as computed.
    let detail = analyst.dataset("enterprises").await.unwrap();
    assert!(detail.profile.is_null(), "{}", detail.profile);
    assert!(detail.manifest["columns"].is_array());
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let detail = analyst.dataset("enterprises").await.unwrap();
    assert_eq!(detail.profile["rows"], 2000);
    assert!(
        detail.profile["columns"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["min"].is_null() && c["max"].is_null()),
        "{}",
        detail.profile
    );
    let full = server.admin.dataset("enterprises").await.unwrap();
    assert!(
        full.profile["columns"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| !c["min"].is_null()),
        "{}",
        full.profile
    );
    assert!(
        analyst
            .datasets()
            .await
            .unwrap()
            .iter()
            .any(|d| d.id == "enterprises" && d.accessible)
    );
    // A new version over HTTP, with a restricted classification, disappears
    // from the catalog of tenants without a grant.
    let dir = tempfile::tempdir().unwrap();
    let manifest = std::fs::read_to_string(common::samples().join("tax_records.toml"))
        .unwrap()
        .replace(
            "classification = \"conditional\"",
            "classification = \"restricted\"",
        );
    assert!(manifest.contains("restricted"));
    std::fs::write(dir.path().join("tax.toml"), manifest).unwrap();
    let added = server
        .admin
        .add_dataset(
            &common::samples().join("tax_records.csv"),
            &dir.path().join("tax.toml"),
        )
        .await
        .unwrap();
    assert_eq!(added.classification, "restricted");
    let visible: Vec<String> = analyst
        .datasets()
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(visible, ["enterprises", "utility_payments"]);
    assert_eq!(
        analyst.dataset("tax_records").await.unwrap_err().code(),
        Some("not-found")
    );
    // A bad manifest is a 422 naming the line.
    std::fs::write(
        dir.path().join("bad.toml"),
        "id = \"x\"\nclassification = 7\n",
    )
    .unwrap();
    let error = server
        .admin
        .add_dataset(
            &common::samples().join("tax_records.csv"),
            &dir.path().join("bad.toml"),
        )
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("bad-manifest"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_jobs_rejections_and_instantiation() {
    let server = TestServer::start().await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "lab-a").await;
    let stats = analyst
        .upload_module(guest("district_stats"), None)
        .await
        .unwrap();
    let hostile = analyst.upload_module(guest("hostile"), None).await.unwrap();
    let ok = analyst
        .submit_job(
            &stats.sha256,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({}),
        )
        .await
        .unwrap();
    let refused = analyst
        .submit_job(
            &hostile.sha256,
            "aggregate",
            &["enterprises".into()],
            serde_json::json!({"attack": "query", "sql": "SELECT name FROM enterprises"}),
        )
        .await
        .unwrap();
    for id in [&ok.id, &refused.id] {
        analyst.wait_job(id, Duration::from_secs(60)).await.unwrap();
    }
    let refused = analyst.job(&refused.id, 0).await.unwrap();
    assert_eq!(refused.state, "rejected");
    assert!(
        refused
            .category
            .unwrap()
            .starts_with("policy-rejected: row-level-output")
    );
    // The receipt is not there for a rejected job.
    assert_eq!(
        analyst.receipt(&refused.id).await.unwrap_err().code(),
        Some("not-released")
    );
    let expected = [
        "dsb_jobs_total{outcome=\"ok\",mode=\"aggregate\"} 1",
        "dsb_jobs_total{outcome=\"policy-rejected\",mode=\"aggregate\"} 1",
        "dsb_policy_rejections_total{code=\"row-level-output\"} 1",
        "dsb_job_duration_seconds_count 2",
        "dsb_instantiation_seconds_count 2",
        "dsb_queue_depth 0",
        "dsb_jobs_running 0",
    ];
    // A job's state is durable before its worker records the metrics; a
    // scrape right after the end may lag by that much, not more.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut text = server.admin.metrics().await.unwrap();
    while expected.iter().any(|e| !text.contains(e)) && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        text = server.admin.metrics().await.unwrap();
    }
    for expected in expected {
        assert!(text.contains(expected), "{expected} missing from\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_signs_audit_checkpoints_periodically_and_at_shutdown() {
    let mut server =
        TestServer::start_with(|c| c.checkpoint_interval = Duration::from_millis(200)).await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let store = server.service.store.clone();
    while datasandbox::store::audit::checkpoints(&store)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no periodic checkpoint"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // With nothing new, no new checkpoint.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let idle = datasandbox::store::audit::checkpoints(&store)
        .await
        .unwrap()
        .len();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        datasandbox::store::audit::checkpoints(&store)
            .await
            .unwrap()
            .len(),
        idle
    );
    server.stop().await.unwrap();
    let after = datasandbox::store::audit::checkpoints(&store)
        .await
        .unwrap();
    assert_eq!(after.len(), idle + 1, "shutdown signs the head");
    assert!(server.service.verify_audit().await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_requests_time_out_with_a_json_error() {
    let server = TestServer::start_with(|c| {
        c.request_timeout = Duration::from_secs(4);
        c.concurrency = 1;
    })
    .await;
    server.admin.grant("lab-a", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "lab-a").await;
    // Compiled outside HTTP: on a loaded machine the compile alone can
    // take longer than the 4 s request timeout this test is about.
    let submitter = datasandbox::service::Submitter {
        tenant: "lab-a".into(),
        role: Role::Analyst,
        actor: "lab-a".into(),
    };
    let hostile = server
        .service
        .upload_module(&submitter, guest("hostile"), None)
        .await
        .unwrap();
    // Spinning jobs one after another: the last stays unfinished for
    // longer than the request timeout.
    let mut jobs = Vec::new();
    for _ in 0..4 {
        jobs.push(
            analyst
                .submit_job(
                    &hostile.sha256,
                    "aggregate",
                    &["enterprises".into()],
                    serde_json::json!({"attack": "loop"}),
                )
                .await
                .unwrap()
                .id,
        );
    }
    // A long-poll longer than the request timeout is cut at the timeout.
    let started = std::time::Instant::now();
    let (status, _, body) = analyst
        .raw(Method::GET, &format!("/v1/jobs/{}?wait=25", jobs[3]), None)
        .await
        .unwrap();
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(error_code(&body), "request-timeout");
    assert!(started.elapsed() < Duration::from_secs(8));
    for id in &jobs {
        let _ = analyst.cancel_job(id).await;
    }
}
