//! The demo's later steps: dp, review, contest, scoring, and what the
//! sandbox does to guests that misbehave.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use datasandbox::accounts::Role;
use datasandbox::client::Client;
use datasandbox::sandbox::{GuestCall, JobEnv, Limits, Output, Sandbox, SandboxConfig};
use sha2::Digest;

use super::*;

/// Step 4a: the same analysis in `dp` mode: every district, noisy. The
/// enterprise population answers exactly and with noise, so each tenant is
/// pinned to one side: fudan-lab (exact answers already) is refused, and a
/// second lab runs the dp analyses.
pub(super) async fn dp_step(
    config: &DemoConfig,
    admin: &Client,
    exact_analyst: &Client,
    exact_module: &str,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let refused = exact_analyst
        .submit_dp_job(
            exact_module,
            &["enterprises".to_string()],
            serde_json::json!({}),
            1.0,
        )
        .await
        .err()
        .map(|e| e.to_string())
        .unwrap_or_else(|| "ACCEPTED".into());
    writeln!(
        out,
        "   fudan-lab asking for dp answers on enterprises after exact ones: {refused}"
    )?;
    let token = admin.create_token(Role::Analyst, "sufe-lab", None).await?;
    let analyst = &admin.with_token(token.token);
    admin.grant("sufe-lab", "enterprises").await?;
    let module = &analyst
        .upload_module(
            read_guest(&config.guests_dir, "district_stats")?,
            Some("district-stats"),
        )
        .await?
        .sha256;
    let submitted = analyst
        .submit_dp_job(
            module,
            &["enterprises".to_string()],
            serde_json::json!({}),
            1.0,
        )
        .await?;
    let job = analyst
        .wait_job(&submitted.id, Duration::from_secs(60))
        .await?;
    if job.state != "released" {
        bail!(
            "demo dp job {} ended {} ({:?})",
            job.id,
            job.state,
            job.category
        );
    }
    let output = analyst.job_output(&job.id).await?;
    let receipt = analyst.receipt(&job.id).await?;
    let Some(Output::Table { arrow_ipc, .. }) = output.outputs.first() else {
        bail!("demo dp job {} released no table", job.id);
    };
    let (schema, batches) = datasandbox::arrow_ipc::decode(arrow_ipc)?;
    let report: serde_json::Value = serde_json::from_str(
        schema
            .metadata()
            .get(datasandbox::dp::DP_METADATA_KEY)
            .context("a dp answer carries its noise report")?,
    )?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let chongming = datasandbox::arrow_ipc::decode(arrow_ipc)
        .ok()
        .and_then(|(_, batches)| {
            let table = datafusion::arrow::util::pretty::pretty_format_batches(&batches).ok()?;
            table
                .to_string()
                .lines()
                .find(|l| l.contains("Chongming"))
                .map(|l| {
                    l.split(|c: char| c == '|' || c.is_whitespace())
                        .filter(|w| !w.is_empty())
                        .collect::<Vec<_>>()
                        .join(" ")
                })
        })
        .unwrap_or_default();
    let budget = analyst
        .budgets(None)
        .await?
        .into_iter()
        .find(|b| b.datasets.iter().any(|d| d == "enterprises"))
        .context("enterprises has a dp budget")?;
    writeln!(
        out,
        "   In dp mode (ε = 1 per query) the same module gets all {rows} published districts, \
         Chongming too ({chongming}), each count with discrete Laplace noise of scale {} \
         (95% within ±{:.1}) from OpenDP; the receipt states ε = {}; sufe-lab has ε = {} of \
         {} left on the enterprise population (every dataset keyed by enterprise).",
        report["columns"][0]["scale"][0],
        report["columns"][0]["ci95"].as_f64().unwrap_or_default(),
        receipt.body.privacy_cost.epsilon,
        budget.remaining.epsilon,
        budget.cap.epsilon
    )?;

    // Arbitrary code: sample-and-aggregate.
    let block_mean = analyst
        .upload_module(
            read_guest(&config.guests_dir, "block_mean")?,
            Some("block-mean"),
        )
        .await?;
    let spec = datasandbox::dp::sample_aggregate::Spec {
        // block-mean returns [mean, rows]: both are declared.
        dimensions: vec![
            datasandbox::dp::sample_aggregate::Dimension {
                name: "mean_employees".into(),
                lo: 0.0,
                hi: 400.0,
                default: 0.0,
            },
            datasandbox::dp::sample_aggregate::Dimension {
                name: "rows".into(),
                lo: 0.0,
                hi: 200.0,
                default: 0.0,
            },
        ],
        epsilon: 2.0,
        blocks: Some(21),
        block_millis: Some(500),
    };
    let submitted = analyst
        .submit_sample_aggregate_job(
            &block_mean.sha256,
            &["enterprises".to_string()],
            serde_json::json!({"column": "employees"}),
            &spec,
        )
        .await?;
    let job = analyst
        .wait_job(&submitted.id, Duration::from_secs(120))
        .await?;
    if job.state != "released" {
        bail!(
            "demo sample-aggregate job {} ended {} ({:?})",
            job.id,
            job.state,
            job.category
        );
    }
    let output = analyst.job_output(&job.id).await?;
    let mean = match output.outputs.first() {
        Some(Output::Value { value, .. }) => *value,
        other => bail!("demo sample-aggregate released {other:?}"),
    };
    writeln!(
        out,
        "   Sample-and-aggregate (any code, world block-analysis): block-mean ran in a fresh \
         instance on each of 21 disjoint blocks of enterprises (k declared, never derived from \
         the data; each enterprise placed by a keyed hash), two at a time, 500 ms each; the \
         release came at the time that fixes (11 rounds + 2 s), whatever the blocks did; the block means, \
         clamped to [0, 400], were averaged and noised (ε = 2): mean head count ≈ {mean:.1} \
         (true mean of the clamped block means ≈ 200; noise scale ≈ 19). Nothing per block left the host."
    )?;
    Ok(())
}

/// Step 4d: an application for conditional data, then a reviewed release.
pub(super) async fn review_step(
    config: &DemoConfig,
    admin: &Client,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let token = admin
        .create_token(Role::Analyst, "tongji-lab", None)
        .await?;
    let analyst = admin.with_token(token.token);
    let agreement = analyst.agreement("utility_payments").await?;
    let applied = analyst
        .apply(&datasandbox::applications::NewApplication {
            dataset: "utility_payments".into(),
            purpose: "Seasonality of late electricity bills".into(),
            columns: vec!["month".into(), "paid_late".into(), "electricity_kwh".into()],
            modes: vec!["aggregate".into()],
            term_days: 90,
            intended_outputs: "Bills and late bills per month".into(),
            agreement_sha256: agreement.sha256.clone(),
        })
        .await?;
    let approved = admin
        .approve_application(
            &applied.id,
            &datasandbox::applications::Approval {
                columns: Some(vec!["month".into(), "paid_late".into()]),
                modes: None,
                term_days: Some(30),
            },
        )
        .await?;
    writeln!(
        out,
        "   Application: tongji-lab applied for utility_payments (accepting agreement {} \
         sha256 {}…), answer due by {} (5 working days); the admin approved it narrowed to \
         month and paid_late for 30 days: {}.",
        agreement.version,
        &agreement.sha256[..12],
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_secs(applied.deadline_at as u64)
        ),
        approved.state
    )?;
    let probe = analyst
        .upload_module(read_guest(&config.guests_dir, "hostile")?, Some("monthly"))
        .await?;
    let job = aggregate_job(
        &analyst,
        &probe.sha256,
        "utility_payments",
        serde_json::json!({"attack": "query", "sql": "SELECT month, COUNT(*) AS bills, SUM(paid_late) AS late FROM utility_payments GROUP BY month ORDER BY month"}),
    )
    .await?;
    let held = analyst.job_review(&job.id).await?;
    let second = admin.create_token(Role::Admin, "platform", None).await?;
    let reviewer = admin.with_token(second.token);
    admin.decide(&job.id, "approve", "").await?;
    let state = reviewer
        .decide(&job.id, "approve", "counts rounded, no small cells")
        .await?;
    let receipt = analyst.receipt(&job.id).await?;
    writeln!(
        out,
        "   Review: the job ended {} (utility_payments requires review; pre-checks: {}); two \
         administrators approved it blind; {}; the receipt names reviewers {}.",
        job.state,
        held.context["prechecks"]
            .as_array()
            .map(|f| f.len())
            .unwrap_or(0),
        state,
        receipt.body.reviewers.unwrap_or_default().join(" and ")
    )?;
    Ok(())
}

/// Step 4c: a small contest, three teams (one writes Python), one
/// submission each.
pub(super) async fn contest_step(
    config: &DemoConfig,
    admin: &Client,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let at = |seconds: i64| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH
                + Duration::from_secs((datasandbox::store::now() + seconds) as u64),
        )
        .to_string()
    };
    let spec = format!(
        "id = \"overdue-2024\"\ntitle = \"Which enterprises will be overdue on tax in 2024?\"\n\
         dataset = \"tax_overdue\"\nlabel = \"overdue_2024\"\nmetric = \"roc-auc\"\n\
         split = {{ train = 0.6, public = 0.2, private = 0.2 }}\nopens = \"{}\"\ncloses = \"{}\"\n\
         daily_limit = 5\nrelease = \"ladder\"\nstep = 0.005\ntimeout_seconds = 20\n",
        at(-60),
        at(30 * 86_400)
    );
    let contest = admin.create_contest(spec).await?;
    let mut lines = Vec::new();
    let mut submissions = Vec::new();
    for (team, dir, guest, what) in [
        (
            "team-tongji",
            &config.guests_dir,
            "logistic_model",
            "logistic_model (Rust)",
        ),
        (
            "team-sjtu",
            &config.python_guests_dir,
            "logistic_model",
            "logistic_model.py (Python, componentize-py)",
        ),
        (
            "team-fudan",
            &config.guests_dir,
            "model_baseline",
            "model_baseline (Rust)",
        ),
    ] {
        let token = admin.create_token(Role::Contestant, team, None).await?;
        let client = admin.with_token(token.token);
        let module = client
            .upload_module(read_guest(dir, guest)?, Some(guest))
            .await?;
        let submitted = client
            .submit_model(&contest.spec.id, &module.sha256)
            .await?;
        submissions.push((team, what, client, submitted));
    }
    // Every score appears 21 s (the time limit) after its run started,
    // however long the model took.
    for (team, what, client, submitted) in submissions {
        client
            .wait_job(&submitted.id, Duration::from_secs(120))
            .await?;
        let view = client
            .submissions(&contest.spec.id)
            .await?
            .into_iter()
            .find(|s| s.id == submitted.id)
            .context("the submission is listed")?;
        lines.push(format!(
            "{team} submitted {what}: {} {}",
            view.state,
            view.public_score
                .map(|s| format!("(public ROC AUC {s})"))
                .unwrap_or_default()
        ));
    }
    let board = admin.leaderboard(&contest.spec.id, false).await?;
    writeln!(
        out,
        "   Contest {} on tax_overdue ({} features, label hidden, split by a secret seed with \
         sha256 {}…): each model trained and predicted in one instance; only the score left.",
        contest.spec.id,
        contest.spec.features.len(),
        &contest.seed_sha256[..12]
    )?;
    for line in lines {
        writeln!(out, "     {line}")?;
    }
    writeln!(out, "   Public leaderboard:")?;
    for s in board {
        writeln!(out, "     {}. {:<12} {}", s.rank, s.team, s.score)?;
    }
    Ok(())
}

/// Step 4b: a bank scores enterprises that authorised it.
pub(super) async fn scoring_step(
    config: &DemoConfig,
    admin: &Client,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let register = std::fs::read_to_string(config.samples_dir.join("enterprises.csv"))?;
    let ids: Vec<String> = register
        .lines()
        .skip(1)
        .take(4)
        .filter_map(|l| l.split(',').next().map(str::to_string))
        .collect();
    let now = datasandbox::store::now();
    let consents = std::iter::once(
        "subject,tenant,purpose,datasets,valid_from,valid_until,consent_sha256,consent_uri"
            .to_string(),
    )
    .chain(ids.iter().take(3).flat_map(|id| {
        // Each enterprise consents to an assessment and to a decision.
        ["credit-assessment", "credit-decision"].map(|purpose| {
            format!(
                "{id},demo-bank,{purpose},tax_records;enterprises;social_security;utility_payments,{},{},{},consents/{id}.pdf",
                now - 60,
                now + 86_400,
                hex::encode(sha2::Sha256::digest(format!("signed consent of {id}")))
            )
        })
    }))
    .collect::<Vec<_>>()
    .join("\n");
    let imported = admin.import_authorisations(consents).await?;
    let bank_token = admin
        .create_token(Role::Institution, "demo-bank", None)
        .await?;
    let bank = admin.with_token(bank_token.token);
    let scorer = bank
        .upload_module(
            read_guest(&config.guests_dir, "credit_risk")?,
            Some("credit-risk"),
        )
        .await?;
    // The administrator reviewed demo-bank's model and approves it, with
    // its (empty) params, for both policies; no other scorer would run.
    for policy in ["credit-risk", "credit-grade"] {
        admin
            .approve_scorer(&datasandbox::scoring::approvals::NewApproval {
                policy: policy.into(),
                institution: "demo-bank".into(),
                module: scorer.sha256.clone(),
                params: serde_json::json!({}),
            })
            .await?;
    }
    let batch = bank
        .score(&scorer.sha256, "credit-risk", &ids, serde_json::json!({}))
        .await?;
    let graded = bank
        .score(&scorer.sha256, "credit-grade", &ids, serde_json::json!({}))
        .await?;
    writeln!(
        out,
        "   Scoring: {} authorisations imported (consent hashes recorded); demo-bank's logistic \
         risk model ran once per subject in a fresh instance over that subject's tax, \
         social-security, utility and register rows only; released clamped to [0, 1000] in \
         steps of 10 (policy credit-risk) or as a grade A-E (policy credit-grade):",
        imported.len()
    )?;
    for (result, grade) in batch.results.iter().zip(&graded.results) {
        let line = format!(
            "     {}  {:<15} {:>5}  {}",
            result.subject,
            result.outcome,
            result.score.map(|s| s.to_string()).unwrap_or_default(),
            grade.grade.as_deref().unwrap_or_default()
        );
        writeln!(out, "{}", line.trim_end())?;
    }
    let keys = bank.keys().await?;
    let verified = batch
        .results
        .iter()
        .filter_map(|r| r.receipt.as_ref())
        .filter(|r| {
            datasandbox::receipt::Receipt::verify(
                &serde_json::to_vec(r).expect("serialises"),
                &keys,
                None,
            )
            .is_ok()
        })
        .count();
    writeln!(
        out,
        "   the fourth never authorised demo-bank: refused as if it did not exist; batch receipt \
         {}; {verified} per-subject receipts verified against the platform key.",
        if batch.receipt.is_some() {
            "signed"
        } else {
            "missing"
        }
    )?;
    let again = bank
        .score(
            &scorer.sha256,
            "credit-risk",
            &ids[..1],
            serde_json::json!({}),
        )
        .await?;
    writeln!(
        out,
        "   demo-bank asking about {} again for the same purpose within 30 days: {}.",
        ids[0],
        again
            .results
            .first()
            .map_or("no answer", |r| r.outcome.as_str())
    )?;
    Ok(())
}

/// Step 6, in process: misbehaving guests against the sandbox itself.
pub(super) async fn hostile_guests(
    config: &DemoConfig,
    district_stats: &[u8],
    hostile: &[u8],
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let sandbox_config = SandboxConfig {
        module_dir: Some(config.work_dir.join("modules")),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(sandbox_config.clone())?;
    let samples = datasandbox::catalog::Catalog::open(&config.work_dir.join("catalog"))?;
    let version = samples
        .add(
            &config.samples_dir.join("enterprises.csv"),
            &config.samples_dir.join("enterprises.toml"),
        )
        .await?;
    let policies = datasandbox::policy::PolicySet::load(&config.policies_dir, None)?;
    let register = datasandbox::release::bind::version_table(&version, &policies);
    let (module, _) = sandbox.load_module(district_stats)?;
    writeln!(
        out,
        "6. Hostile guests end in a fixed category and the host stays up \
         (in process, with a tighter fuel limit so the demo is quick):"
    )?;
    let strict = Limits {
        fuel: 500_000_000,
        ..Limits::default()
    };
    for (attack, protects) in [
        ("loop", "CPU (fuel)"),
        ("memory", "memory (256 MiB per instance)"),
        ("recursion", "the stack"),
        ("query-storm", "the query budget (100 per job)"),
        ("secret-error", "guest text never reaches the submitter"),
    ] {
        let mut env = JobEnv::new(format!("demo-{attack}"));
        env.limits = strict.clone();
        env.datasets = vec![register.clone()];
        let params = format!(r#"{{"attack":"{attack}"}}"#);
        let execution = sandbox
            .run_bytes(hostile, &env, GuestCall::Run { params })
            .await;
        writeln!(
            out,
            "   {attack:<13} -> {:<16} protects {protects}",
            execution.category.to_string()
        )?;
    }
    let mut env = JobEnv::new("demo-wasi-probe");
    env.datasets = vec![register.clone()];
    let probe = sandbox
        .run_bytes(
            hostile,
            &env,
            GuestCall::Run {
                params: r#"{"attack":"wasi-probe"}"#.into(),
            },
        )
        .await;
    expect_ok(&probe)?;
    let seen = |name: &str| {
        probe
            .outputs
            .iter()
            .find_map(|o| match o {
                Output::Value { name: n, value } if n == name => Some(*value),
                _ => None,
            })
            .unwrap_or(f64::NAN)
    };
    writeln!(
        out,
        "   wasi-probe    -> file read {}, socket {}, env vars {}, clock frozen at {} (the job's day)",
        yes_no(seen("file_read")),
        yes_no(seen("socket")),
        seen("env_vars"),
        seen("wall_clock_secs")
    )?;
    let next = sandbox
        .run(
            &module,
            &env_with(&register),
            GuestCall::Run {
                params: "{}".into(),
            },
        )
        .await;
    expect_ok(&next)?;
    writeln!(out, "   and the next job still succeeds: {}", next.category)?;
    let restarted = Sandbox::new(sandbox_config)?;
    let (_, load) = restarted.load_module(district_stats)?;
    writeln!(
        out,
        "7. After a restart the module is not compiled again: loaded from {load:?} cache."
    )?;
    Ok(())
}
