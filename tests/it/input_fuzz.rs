//! Mutation fuzzing of every parser that takes an administrator's or a
//! tenant's text: dataset manifests, output policies, scoring policies and
//! contest specifications. Each shipped file is mutated thousands of times
//! (bytes overwritten, lines dropped or repeated, numbers replaced by
//! extremes); every parse must end in a value or a typed error, never a
//! panic. Deterministic (a fixed xorshift seed); `DSB_FUZZ_ROUNDS` runs more.

use crate::common;

use common::*;

struct Mutator(u64);

impl Mutator {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One to four mutations of `text`.
    fn mutate(&mut self, text: &str) -> String {
        const EXTREMES: [&str; 9] = [
            "-1",
            "0",
            "1e309",
            "-0.0",
            "nan",
            "inf",
            "18446744073709551616",
            "9223372036854775807",
            "\"\"",
        ];
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        for _ in 0..=self.below(4) {
            if lines.is_empty() {
                break;
            }
            let at = self.below(lines.len());
            match self.below(5) {
                0 => {
                    lines.remove(at);
                }
                1 => {
                    let copy = lines[at].clone();
                    lines.insert(at, copy);
                }
                2 => {
                    // Replace the first number on the line by an extreme.
                    let line = &lines[at];
                    if let Some(start) = line.find(|c: char| c.is_ascii_digit()) {
                        let end = line[start..]
                            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                            .map_or(line.len(), |e| start + e);
                        let extreme = EXTREMES[self.below(EXTREMES.len())];
                        lines[at] = format!("{}{extreme}{}", &line[..start], &line[end..]);
                    }
                }
                3 => {
                    let mut bytes = lines[at].clone().into_bytes();
                    if !bytes.is_empty() {
                        let i = self.below(bytes.len());
                        const NOISE: &[u8] = b"=[]{}\"',.#\\\n\0x9";
                        bytes[i] = NOISE[self.below(NOISE.len())];
                    }
                    lines[at] = String::from_utf8_lossy(&bytes).into_owned();
                }
                _ => {
                    let other = self.below(lines.len());
                    lines.swap(at, other);
                }
            }
        }
        lines.join("\n")
    }
}

fn rounds() -> usize {
    std::env::var("DSB_FUZZ_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(1_500)
}

fn shipped(dir: &std::path::Path) -> Vec<(String, String)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no files in {}", dir.display());
    files
}

#[test]
fn mutated_manifests_parse_or_fail_typed() {
    let mut m = Mutator(0x5EED_0001);
    let files = shipped(&samples());
    for round in 0..rounds() {
        let (name, text) = &files[round % files.len()];
        let mutated = m.mutate(text);
        let _ =
            datasandbox::catalog::manifest::Manifest::parse(std::path::Path::new(name), &mutated);
    }
}

#[test]
fn mutated_contest_specs_parse_or_fail_typed() {
    let mut m = Mutator(0x5EED_0002);
    let files = shipped(&repo().join("data/contests"));
    for round in 0..rounds() {
        let (name, text) = &files[round % files.len()];
        let _ = datasandbox::contest::parse_spec(name, &m.mutate(text));
    }
}

#[test]
fn mutated_policies_load_or_fail_typed() {
    let dir = tempfile::tempdir().unwrap();
    let scoring_dir = tempfile::tempdir().unwrap();
    let mut m = Mutator(0x5EED_0003);
    let policies = shipped(&repo().join("policies"));
    let scoring = shipped(&repo().join("policies/scoring"));
    // Policy files are read from a directory: a third of the rounds each,
    // they are slower than the in-memory parsers.
    for round in 0..rounds() / 3 {
        let (name, text) = &policies[round % policies.len()];
        let path = dir.path().join(name);
        std::fs::write(&path, m.mutate(text)).unwrap();
        let _ = datasandbox::policy::PolicySet::load(dir.path(), None);
        std::fs::remove_file(&path).unwrap();

        let (name, text) = &scoring[round % scoring.len()];
        let path = scoring_dir.path().join(name);
        std::fs::write(&path, m.mutate(text)).unwrap();
        let _ = datasandbox::scoring::policy::load_dir(scoring_dir.path());
        std::fs::remove_file(&path).unwrap();
    }
}

/// Mutated JSON bodies against every endpoint that takes one, as an
/// administrator (who reaches every handler): each answer is a 2xx or a
/// 4xx with a typed error body, never a 5xx, and the server keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutated_request_bodies_get_typed_answers() {
    use reqwest::Method;
    let server = TestServer::start().await;
    let seeds: [(&str, serde_json::Value); 8] = [
        (
            "/v1/jobs",
            serde_json::json!({"module": "ab".repeat(32), "mode": "aggregate", "datasets": ["enterprises"], "params": {}}),
        ),
        (
            "/v1/grants",
            serde_json::json!({"tenant": "lab-a", "dataset": "enterprises"}),
        ),
        (
            "/v1/tokens",
            serde_json::json!({"role": "analyst", "tenant": "lab-a"}),
        ),
        (
            "/v1/budgets/grants",
            serde_json::json!({"tenant": "lab-a", "dataset": "enterprises", "epsilon": 1.0}),
        ),
        (
            "/v1/applications",
            serde_json::json!({"dataset": "enterprises", "purpose": "research", "accept_agreement": true}),
        ),
        (
            "/v1/scoring",
            serde_json::json!({"policy": "credit-risk", "module": "ab", "subjects": ["1"], "params": {}}),
        ),
        (
            "/v1/authorisations",
            serde_json::json!({"subject": "1", "institution": "bank", "purpose": "credit"}),
        ),
        (
            "/v1/reviews/no-such-job",
            serde_json::json!({"decision": "approve", "note": "ok"}),
        ),
    ];
    let mut m = Mutator(0x5EED_0004);
    let mut answered = 0;
    for round in 0..rounds() / 5 {
        let (path, seed) = &seeds[round % seeds.len()];
        let body = m.mutate(&serde_json::to_string_pretty(seed).unwrap());
        let (status, _, bytes) = server
            .admin
            .raw(
                Method::POST,
                path,
                Some(("application/json", body.clone().into_bytes())),
            )
            .await
            .unwrap();
        assert!(
            !status.is_server_error(),
            "{path} {status} for {body}: {}",
            String::from_utf8_lossy(&bytes)
        );
        if status.is_client_error() {
            let error: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("{path} {status}: untyped body {bytes:?}"));
            assert!(error["error"]["code"].is_string(), "{path}: {error}");
        }
        answered += 1;
    }
    assert_eq!(answered, rounds() / 5);
    assert_eq!(server.admin.healthz().await.unwrap(), "ok");
}
