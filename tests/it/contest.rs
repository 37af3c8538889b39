//! Contest mode over real HTTP: teams submit real model components, which
//! train and predict inside wasmtime on a split they never see; only scores
//! leave, quotas hold, host failures are free, the Ladder hides small
//! changes, and the private board waits for the close.

use crate::common;

use std::time::Duration;

use common::{TestServer, guest};
use datasandbox::accounts::Role;
use datasandbox::client::Client;
use datasandbox::contest::SubmissionView;
use datasandbox::store::now;

fn rfc3339(at: i64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(at as u64))
        .to_string()
}

/// A spec over the shipped contest dataset; `extra` is appended.
fn spec(id: &str, closes_in: i64, extra: &str) -> String {
    format!(
        "id = \"{id}\"\ntitle = \"Who will be overdue on tax in 2024?\"\ndataset = \"tax_overdue\"\n\
         label = \"overdue_2024\"\nmetric = \"roc-auc\"\n\
         split = {{ train = 0.6, public = 0.2, private = 0.2 }}\n\
         opens = \"{}\"\ncloses = \"{}\"\n{schedule}{extra}",
        rfc3339(now() - 60),
        rfc3339(now() + closes_in),
        // Scores come on a 1 s schedule here (the default, a fixed time at
        // the limit, is what `scores_appear_at_a_fixed_time` checks).
        schedule = if extra.contains("release_every_seconds") {
            ""
        } else {
            "release_every_seconds = 1\n"
        }
    )
}

async fn upload(client: &Client, name: &str) -> String {
    client
        .upload_module(guest(name), None)
        .await
        .unwrap()
        .sha256
}

/// Submit and wait for the end; the team's view of the submission.
async fn submit(client: &Client, contest: &str, module: &str) -> SubmissionView {
    let submitted = client.submit_model(contest, module).await.unwrap();
    client
        .wait_job(&submitted.id, Duration::from_secs(120))
        .await
        .unwrap();
    client
        .submissions(contest)
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == submitted.id)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_teams_compete_and_only_scores_leave() {
    let mut server = TestServer::start().await;
    let a = server.client(Role::Contestant, "team-a").await;
    let b = server.client(Role::Contestant, "team-b").await;
    let c = server.client(Role::Contestant, "team-c").await;
    // Compiled before the contest opens: the 40 s window is for the runs.
    let logistic = upload(&a, "logistic_model").await;
    let baseline = upload(&b, "model_baseline").await;
    let probe = upload(&c, "model_probe").await;
    let contest = server
        .admin
        .create_contest(spec(
            "overdue",
            40,
            // Every non-identifier column but the label; head count first
            // (the probe below leaks its first feature).
            "daily_limit = 5\nfinal_picks = 1\nfeatures = [\"employees\", \"district\", \"industry\", \"size_class\", \"registered_capital\", \"founded_year\", \"tax_paid_2023\", \"overdue_quarters_2023\", \"undeclared_quarters_2023\"]\n",
        ))
        .await
        .unwrap();
    assert!(contest.open);
    assert_eq!(contest.seed_sha256.len(), 64);
    assert!(!contest.spec.features.contains(&"enterprise_id".to_string()));
    assert!(!contest.spec.features.contains(&"overdue_2024".to_string()));

    let learned = submit(&a, "overdue", &logistic).await;
    assert_eq!(learned.state, "scored", "{learned:?}");
    let constant = submit(&b, "overdue", &baseline).await;
    assert_eq!(constant.state, "scored", "{constant:?}");
    // The constant baseline ranks nothing: AUC 0.5. The learned model is
    // clearly better.
    assert_eq!(constant.public_score, Some(0.5));
    let score = learned.public_score.unwrap();
    // Public test set of 400: an AUC standard error of about 0.03 around
    // the model's typical 0.64 across seeds.
    assert!(score > 0.56, "logistic AUC {score}");
    // A model that "predicts" the hidden test rows' head counts gets a
    // score and nothing else: the job's output is one number.
    let leak = submit(&c, "overdue", &probe).await;
    assert_eq!(leak.state, "scored");
    let output = c.job_output(&leak.id).await.unwrap();
    assert_eq!(output.outputs.len(), 1);
    assert!(matches!(
        &output.outputs[0],
        datasandbox::sandbox::Output::Value { name, .. } if name == "public_score"
    ));
    // The receipt binds module, dataset version, the split seed's hash and
    // the metric (through the params hash) to the score.
    let receipt = a.receipt(&learned.id).await.unwrap();
    assert_eq!(receipt.body.mode, "contest");
    assert_eq!(receipt.body.datasets[0].id, "tax_overdue");
    let params = serde_json::json!({
        "contest": "overdue",
        "metric": "roc-auc",
        "label": "overdue_2024",
        "features": contest.spec.features,
        "split_seed_sha256": contest.seed_sha256,
    })
    .to_string();
    assert_eq!(
        receipt.body.params_sha256,
        hex::encode(<sha2::Sha256 as sha2::Digest>::digest(params.as_bytes()))
    );
    // Teams see only their own submissions; the public board shows all.
    assert_eq!(a.submissions("overdue").await.unwrap().len(), 1);
    let board = b.leaderboard("overdue", false).await.unwrap();
    assert_eq!(board[0].team, "team-a");
    assert_eq!(board.len(), 3);
    // Final picks, and the private board only after the close.
    a.pick("overdue", &learned.id).await.unwrap();
    a.pick("overdue", &learned.id).await.unwrap();
    assert_eq!(
        a.pick("overdue", &leak.id).await.unwrap_err().code(),
        Some("not-found"),
        "another team's submission"
    );
    assert_eq!(
        a.leaderboard("overdue", true).await.unwrap_err().code(),
        Some("contest-open")
    );
    // Analysts and institutions cannot submit.
    let analyst = server.client(Role::Analyst, "lab").await;
    assert_eq!(
        analyst
            .submit_model("overdue", &logistic)
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
    let closes = contest.spec.closes_at;
    while now() < closes {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let private = a.leaderboard("overdue", true).await.unwrap();
    assert_eq!(private[0].team, "team-a");
    assert!(private[0].score > 0.56, "{private:?}");
    assert_eq!(
        a.submit_model("overdue", &logistic)
            .await
            .unwrap_err()
            .code(),
        Some("contest-closed")
    );
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotas_count_guest_failures_but_not_host_failures() {
    let mut server = TestServer::start().await;
    // The probe's behaviour follows the first feature it is given.
    for (id, first) in [
        ("count", "size_class"),
        ("nan", "district"),
        ("secret", "industry"),
        ("loop", "founded_year"),
    ] {
        server
            .admin
            .create_contest(spec(
                id,
                3600,
                &format!(
                    "daily_limit = 2\nfeatures = [\"{first}\", \"employees\"]\nfuel = 200000000\n"
                ),
            ))
            .await
            .unwrap();
    }
    let team = server.client(Role::Contestant, "team-x").await;
    let probe = upload(&team, "model_probe").await;
    // Four failures the model chose after seeing its training rows: the
    // team is told one category for all of them; the administrators keep
    // the detail.
    for (contest, detail) in [
        ("count", "wrong-prediction-count"),
        ("nan", "invalid-prediction"),
        ("secret", "guest-error"),
        ("loop", "out-of-fuel"),
    ] {
        let failed = submit(&team, contest, &probe).await;
        assert_eq!(failed.state, "failed", "{failed:?}");
        assert_eq!(failed.category.as_deref(), Some("not-scored"));
        assert!(failed.counted);
        assert_eq!(failed.public_score, None);
        let job = team.job(&failed.id, 0).await.unwrap();
        assert_eq!(job.category.as_deref(), Some("not-scored"));
        let text = serde_json::to_string(&job).unwrap();
        assert!(!text.contains(common::SECRET), "{text}");
        assert!(!text.contains(detail), "{text}");
        let diagnostics = server.admin.job_diagnostics(&failed.id).await.unwrap();
        assert_eq!(diagnostics["withheld_category"], detail, "{diagnostics}");
    }
    // A guest failure counts: one more today, then the quota is spent.
    submit(&team, "secret", &probe).await;
    assert_eq!(
        team.submit_model("secret", &probe)
            .await
            .unwrap_err()
            .code(),
        Some("quota-exhausted")
    );
    // A submission the host did not finish (cancelled while the looping
    // probe runs) does not count. Its contest gives the loop fuel and time
    // to outlast the cancel, so the test does not race the fuel limit.
    server
        .admin
        .create_contest(spec(
            "hold",
            3600,
            "daily_limit = 1\nfeatures = [\"founded_year\", \"employees\"]\n\
             fuel = 1000000000000\ntimeout_seconds = 120\n",
        ))
        .await
        .unwrap();
    let looping = team.submit_model("hold", &probe).await.unwrap();
    let cancelled = team.submit_model("hold", &probe).await.unwrap_err();
    assert_eq!(
        cancelled.code(),
        Some("quota-exhausted"),
        "the running loop counts until it is settled"
    );
    team.cancel_job(&looping.id).await.unwrap();
    team.wait_job(&looping.id, Duration::from_secs(60))
        .await
        .unwrap();
    let after = team
        .submissions("hold")
        .await
        .unwrap()
        .into_iter()
        .find(|s| s.id == looping.id)
        .unwrap();
    assert_eq!(after.state, "interrupted", "{after:?}");
    assert!(!after.counted);
    // So one more fits (cancelled too: it would loop for two minutes).
    let again = team.submit_model("hold", &probe).await.unwrap();
    team.cancel_job(&again.id).await.unwrap();
    team.wait_job(&again.id, Duration::from_secs(60))
        .await
        .unwrap();
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ladder_repeats_the_best_score_unless_clearly_beaten() {
    let mut server = TestServer::start().await;
    server
        .admin
        .create_contest(spec("ladder", 3600, "release = \"ladder\"\nstep = 0.02\n"))
        .await
        .unwrap();
    let team = server.client(Role::Contestant, "team-l").await;
    let logistic = upload(&team, "logistic_model").await;
    let baseline = upload(&team, "model_baseline").await;
    let first = submit(&team, "ladder", &baseline).await;
    assert_eq!(first.public_score, Some(0.5));
    let better = submit(&team, "ladder", &logistic).await;
    let best = better.public_score.unwrap();
    assert!(best > 0.52, "{best}");
    // Worse again: the board repeats the best, so probing learns nothing.
    let worse = submit(&team, "ladder", &baseline).await;
    assert_eq!(worse.public_score, Some(best));
    // The same model again: no improvement beyond the step, same answer.
    let same = submit(&team, "ladder", &logistic).await;
    assert_eq!(same.public_score, Some(best));
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_specs_are_refused_with_the_line() {
    let server = TestServer::start().await;
    let error = server
        .admin
        .create_contest(spec("bad", 3600, "").replace("roc-auc", "precision"))
        .await
        .unwrap_err();
    assert_eq!(error.code(), Some("bad-contest"));
    assert!(error.to_string().contains("spec.toml:5"), "{error}");
    let error = server
        .admin
        .create_contest(spec("bad", 3600, "").replace("overdue_2024", "employees"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not a label column"), "{error}");
    let error = server
        .admin
        .create_contest(spec("bad", 3600, "").replace("train = 0.6", "train = 0.7"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("split"), "{error}");
    let contestant = server.client(Role::Contestant, "t").await;
    assert_eq!(
        contestant
            .create_contest(spec("mine", 3600, ""))
            .await
            .unwrap_err()
            .code(),
        Some("forbidden")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_tries_its_model_locally_on_synthetic_data_first() {
    let mut server = TestServer::start().await;
    server
        .admin
        .create_contest(spec("local", 3600, ""))
        .await
        .unwrap();
    let (_, token) = datasandbox::accounts::create_token(
        &server.service.store,
        "test",
        Role::Contestant,
        "team-local",
        None,
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let module = common::guests_dir().join("logistic_model.wasm");
    let base = server.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_dsb"))
            .args([
                "--server",
                &base,
                "dev",
                "run",
                "--contest",
                "local",
                "--module",
            ])
            .arg(&module)
            .arg("--data-dir")
            .arg(dir.path())
            .env("DSB_TOKEN", token)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("local roc-auc on a synthetic holdout: "),
        "{stdout}"
    );
    // The local loop spends nothing: no submission was recorded.
    let team = server.client(Role::Contestant, "team-local").await;
    assert!(team.submissions("local").await.unwrap().is_empty());
    server.stop().await.unwrap();
}

/// The classic regression-contest leak: predict a huge constant plus a value
/// that packs a hidden feature, and read the value back from the score to
/// four decimals. Predictions are clipped to the label's range and the score
/// rounded to the step, so the released score is one of 201 values however
/// the predictions were chosen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predictions_cannot_carry_hidden_values_out_through_the_score() {
    let mut server = TestServer::start().await;
    let contest = server
        .admin
        .create_contest(
            spec(
                "mae",
                3600,
                "features = [\"employees\", \"district\"]\nlabel_range = [0.0, 1.0]\n",
            )
            .replace("roc-auc", "mae"),
        )
        .await
        .unwrap();
    assert_eq!(
        contest.spec.release,
        datasandbox::contest::ReleaseRule::Ladder
    );
    assert!((contest.spec.step - 0.005).abs() < 1e-12);
    let team = server.client(Role::Contestant, "team-p").await;
    // The probe "predicts" each hidden test row's head count: unclipped,
    // the MAE would be about the mean head count (tens), to four decimals.
    let probe = upload(&team, "model_probe").await;
    let leak = submit(&team, "mae", &probe).await;
    assert_eq!(leak.state, "scored", "{leak:?}");
    let score = leak.public_score.unwrap();
    assert!((0.0..=1.0).contains(&score), "{score}");
    let steps = score / 0.005;
    assert!(
        (steps - steps.round()).abs() < 1e-9,
        "{score} is not on the step grid"
    );
    // A label range is required where predictions are unbounded.
    let refused = server
        .admin
        .create_contest(spec("mae-open", 3600, "").replace("roc-auc", "mae"))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("label_range"), "{refused}");
    server.stop().await.unwrap();
}

/// Label probing needs many submissions: besides each team's quota, a
/// contest takes a fixed number a day from all teams together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_contest_caps_submissions_across_teams() {
    let mut server = TestServer::start().await;
    server
        .admin
        .create_contest(spec(
            "capped",
            3600,
            "daily_limit = 1\ncontest_daily_limit = 2\n",
        ))
        .await
        .unwrap();
    let mut refused = None;
    for team in ["team-1", "team-2", "team-3"] {
        let client = server.client(Role::Contestant, team).await;
        let baseline = upload(&client, "model_baseline").await;
        match client.submit_model("capped", &baseline).await {
            Ok(job) => {
                client
                    .wait_job(&job.id, Duration::from_secs(120))
                    .await
                    .unwrap();
            }
            Err(error) => refused = Some((team, error)),
        }
    }
    let (team, error) = refused.expect("the third team is refused");
    assert_eq!(team, "team-3");
    assert_eq!(error.code(), Some("quota-exhausted"));
    assert!(error.to_string().contains("all teams"), "{error}");
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scores_appear_at_a_fixed_time() {
    let server = TestServer::start().await;
    // No schedule: every score is released at the time limit (4 s) + 1 s
    // after its run started, the quick model's and the slow one's alike.
    let text =
        spec("timed", 3600, "timeout_seconds = 4\n").replace("release_every_seconds = 1\n", "");
    assert!(!text.contains("release_every_seconds"));
    server.admin.create_contest(text).await.unwrap();
    let quick = server.client(Role::Contestant, "team-quick").await;
    let slow = server.client(Role::Contestant, "team-slow").await;
    let baseline = upload(&quick, "model_baseline").await;
    let logistic = upload(&slow, "logistic_model").await;
    let timed = |client: Client, module: String| async move {
        let started = std::time::Instant::now();
        let view = submit(&client, "timed", &module).await;
        (view, started.elapsed().as_secs_f64())
    };
    let ((a, took_a), (b, took_b)) = tokio::join!(
        timed(quick.clone(), baseline),
        timed(slow.clone(), logistic)
    );
    assert_eq!((a.state.as_str(), b.state.as_str()), ("scored", "scored"));
    eprintln!("contest scores released after {took_a:.3} s and {took_b:.3} s");
    assert!(took_a >= 5.0 && took_b >= 5.0, "{took_a} {took_b}");
    assert!((took_a - took_b).abs() < 1.0, "{took_a} {took_b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_team_that_had_noisy_answers_about_the_firms_is_refused_before_its_quota() {
    let server = TestServer::start().await;
    server
        .admin
        .create_contest(spec("pinned", 3600, "daily_limit = 1\n"))
        .await
        .unwrap();
    // The same tenant, as an analyst, has had dp answers about the
    // enterprise population, which tax_overdue belongs to.
    server.admin.grant("team-n", "enterprises").await.unwrap();
    let analyst = server.client(Role::Analyst, "team-n").await;
    let stats = upload(&analyst, "district_stats").await;
    analyst
        .submit_dp_job(&stats, &["enterprises".into()], serde_json::json!({}), 0.5)
        .await
        .unwrap();
    let team = server.client(Role::Contestant, "team-n").await;
    let model = upload(&team, "model_baseline").await;
    let error = team.submit_model("pinned", &model).await.unwrap_err();
    assert_eq!(error.code(), Some("mode-conflict"), "{error}");
    // Nothing was counted: the day's one submission is still there, for a
    // team that may have it.
    assert!(team.submissions("pinned").await.unwrap().is_empty());
}
