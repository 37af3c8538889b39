//! Snapshots (insta) of what users read: the API's error bodies for hostile
//! and mistaken requests, driven through the router without a socket, and
//! the CLI's output for the catalog and for policy checks, good and bad.
//! Hashes, times and temporary paths are redacted before the snapshot, so
//! a snapshot changes only when what a user reads changes.

use crate::common;

use std::process::Command;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use common::*;
use datasandbox::accounts::{self, Role};
use tower::ServiceExt;

/// 64 hex digits (SHA-256), timestamps and temporary directories.
fn redact(text: &str, temp: &std::path::Path) -> String {
    let text = text.replace(temp.to_str().unwrap(), "[tmp]");
    let mut out = String::with_capacity(text.len());
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes[i..]
            .iter()
            .take_while(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            .count();
        let starts_word = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        if starts_word && hex >= 16 {
            out.push_str("[hash]");
            i += hex;
            continue;
        }
        // RFC 3339 dates (2026-12-03T09:20:04Z) and bare dates.
        if starts_word
            && bytes.len() >= i + 10
            && bytes[i..i + 4].iter().all(u8::is_ascii_digit)
            && bytes[i + 4] == b'-'
            && bytes[i + 7] == b'-'
        {
            let end = bytes[i..]
                .iter()
                .position(|b| b.is_ascii_whitespace() || matches!(b, b'"' | b',' | b'|'))
                .map_or(bytes.len(), |n| i + n);
            out.push_str("[time]");
            i = end;
            continue;
        }
        let ch = text[i..].chars().next().unwrap();
        out.push(ch);
        i += ch.len_utf8();
    }
    out
}

async fn call(
    router: &axum::Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, String) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        request = request.header("content-type", "application/json");
    }
    let request = request
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| panic!("{path}: not JSON: {}", String::from_utf8_lossy(&bytes)));
    (status, serde_json::to_string_pretty(&value).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_error_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let service = std::sync::Arc::new(
        datasandbox::service::Service::open(&data_dir, &repo().join("policies"))
            .await
            .unwrap(),
    );
    service
        .add_dataset(
            "operator",
            &samples().join("enterprises.csv"),
            &samples().join("enterprises.toml"),
        )
        .await
        .unwrap();
    let config = datasandbox::server::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir,
        policies: repo().join("policies"),
        workers: datasandbox::worker::WorkerConfig {
            exe: Some(env!("CARGO_BIN_EXE_dsb").into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let server = datasandbox::server::Server::bind_service(config, std::sync::Arc::clone(&service))
        .await
        .unwrap();
    let router = server.router();
    let (_, analyst) =
        accounts::create_token(&service.store, "operator", Role::Analyst, "lab-a", None)
            .await
            .unwrap();
    let analyst = Some(analyst.as_str());
    let module = "0".repeat(64);
    let unknown = format!("dsb_{}_{}", "a".repeat(16), "b".repeat(64));
    let cases: Vec<(Method, String, Option<&str>, Option<String>)> = vec![
        (Method::GET, "/v1/jobs".into(), None, None),
        (Method::GET, "/v1/jobs".into(), Some("not-a-token"), None),
        (Method::GET, "/v1/jobs".into(), Some(&unknown), None),
        (Method::GET, "/v1/no-such-thing".into(), analyst, None),
        (Method::DELETE, "/v1/datasets".into(), analyst, None),
        (
            Method::POST,
            "/v1/jobs".into(),
            analyst,
            Some("{not json".into()),
        ),
        (
            Method::POST,
            "/v1/jobs".into(),
            analyst,
            Some(r#"{"module": "x", "mode": "aggregate", "datasets": [], "surprise": 1}"#.into()),
        ),
        (
            Method::POST,
            "/v1/jobs".into(),
            analyst,
            Some(format!(
                r#"{{"module": "{module}", "mode": "aggregate", "datasets": ["enterprises"]}}"#
            )),
        ),
        // Options of one mode on another are refused, not ignored.
        (
            Method::POST,
            "/v1/jobs".into(),
            analyst,
            Some(format!(
                r#"{{"module": "{module}", "mode": "aggregate", "datasets": ["enterprises"], "epsilon": 0.5}}"#
            )),
        ),
        (
            Method::POST,
            "/v1/jobs".into(),
            analyst,
            Some(format!(
                r#"{{"module": "{module}", "mode": "everything", "datasets": ["enterprises"]}}"#
            )),
        ),
        (Method::GET, format!("/v1/jobs/{module}"), analyst, None),
        (Method::GET, "/v1/grants".into(), analyst, None),
        (
            Method::GET,
            "/v1/datasets/no_such_dataset".into(),
            analyst,
            None,
        ),
        (Method::GET, "/v1/jobs?limit=many".into(), analyst, None),
    ];
    let mut snapshot = String::new();
    for (method, path, token, body) in cases {
        let (status, json) = call(&router, method.clone(), &path, token, body.as_deref()).await;
        let who = match token {
            None => "no token",
            Some(t) if t == unknown => "a well-formed token never issued",
            Some(t) if Some(t) == analyst => "an analyst",
            Some(_) => "a malformed token",
        };
        snapshot.push_str(&format!(
            "{method} {path}{} ({who})\n→ {status}\n{json}\n\n",
            body.map(|b| format!(" {b}")).unwrap_or_default()
        ));
    }
    insta::assert_snapshot!(redact(&snapshot, dir.path()));
}

fn dsb(args: &[&str], data_dir: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args(args)
        .env("DSB_DATA_DIR", data_dir)
        .env_remove("DSB_SERVER")
        .env("NO_COLOR", "1")
        .current_dir(repo())
        .output()
        .expect("running dsb");
    format!(
        "$ dsb {}\nexit: {}\n{}{}",
        args.join(" "),
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn cli_output_for_the_catalog_and_policy_checks() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut snapshot = String::new();
    for id in datasandbox::sample_data::DATASETS {
        let csv = format!("data/samples/{id}.csv");
        let manifest = format!("data/samples/{id}.toml");
        snapshot.push_str(&dsb(
            &["dataset", "add", &csv, "--manifest", &manifest],
            &data,
        ));
    }
    snapshot.push_str(&dsb(&["dataset", "list"], &data));
    snapshot.push_str(&dsb(
        &["policy", "check", "--data-dir", data.to_str().unwrap()],
        &data,
    ));
    // A policy directory with mistakes a new administrator makes, one per
    // file: an unknown key, a mode that does not exist, a group size of
    // zero, a dataset named twice.
    let bad = dir.path().join("bad-policies");
    std::fs::create_dir_all(&bad).unwrap();
    for (file, text) in [
        (
            "a.toml",
            "dataset = \"enterprises\"\nmodes = [\"aggregate\"]\ncolour = \"blue\"\n",
        ),
        (
            "b.toml",
            "dataset = \"tax_records\"\nmodes = [\"everything\"]\n",
        ),
        (
            "c.toml",
            "dataset = \"social_security\"\nmodes = [\"aggregate\"]\nmin_group_size = 0\n",
        ),
        (
            "d.toml",
            "dataset = \"utility_payments\"\nmodes = [\"aggregate\"]\n",
        ),
        (
            "e.toml",
            "dataset = \"utility_payments\"\nmodes = [\"aggregate\"]\n",
        ),
    ] {
        std::fs::write(bad.join(file), text).unwrap();
    }
    snapshot.push_str(&dsb(&["policy", "check", bad.to_str().unwrap()], &data));
    insta::assert_snapshot!(redact(&snapshot, dir.path()));
}
