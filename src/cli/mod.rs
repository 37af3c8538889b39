//! `dsb --server URL …`: the CLI as a client of the `/v1` API (the binary's
//! own module; the library's [`datasandbox::client`] does the HTTP).
//! Human-readable output by default, `--json` for scripts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Subcommand;
use datasandbox::accounts::Role;
use datasandbox::client::Client;
use datasandbox::demo;
use datasandbox::receipt::Receipt;
use serde::Serialize;

#[derive(Subcommand)]
pub enum ModuleCommand {
    /// Upload a component; prints its sha256.
    Upload {
        file: PathBuf,
        #[arg(long)]
        name: Option<String>,
    },
    /// Your modules.
    List,
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token (shown once). Without --server: on the local data
    /// directory, to bootstrap the first administrator.
    Create {
        #[arg(long)]
        role: Role,
        #[arg(long)]
        tenant: String,
        /// Lifetime from now: `90d`, `12h`, `30min`…
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<Duration>,
    },
    List,
    Revoke {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum GrantCommand {
    /// Let a tenant run jobs on a conditional or restricted dataset.
    Add {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        dataset: String,
    },
    List,
}

#[derive(Subcommand)]
pub enum AuthCommand {
    /// Import authorisations from a consents CSV (header: subject, tenant,
    /// purpose, datasets (`;`-separated), valid_from, valid_until,
    /// consent_sha256, consent_uri).
    Import { file: PathBuf },
    /// Record one authorisation; the consent document's SHA-256 is computed
    /// from the file.
    Add {
        /// The subject's id in the data (e.g. a unified social credit code).
        #[arg(long)]
        subject: String,
        /// The institution (tenant) allowed to score.
        #[arg(long)]
        tenant: String,
        #[arg(long, default_value = "credit-assessment")]
        purpose: String,
        /// Datasets covered, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        datasets: Vec<String>,
        /// The signed consent document.
        #[arg(long)]
        consent: PathBuf,
        /// Where the consent is kept (default: the file's path).
        #[arg(long)]
        consent_uri: Option<String>,
        /// Valid from (Unix seconds; default now).
        #[arg(long)]
        from: Option<i64>,
        /// How long it is valid, e.g. 365d.
        #[arg(long, default_value = "365d")]
        valid_for: humantime::Duration,
    },
    /// Authorisations, all or one subject's.
    List {
        #[arg(long)]
        subject: Option<String>,
    },
    /// Revoke an authorisation at once.
    Revoke { id: String },
}

#[derive(clap::Args)]
pub struct ApplyArgs {
    #[arg(long)]
    pub dataset: String,
    #[arg(long)]
    pub purpose: String,
    /// Columns from the dictionary, comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    pub columns: Vec<String>,
    /// Release modes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "aggregate")]
    pub modes: Vec<String>,
    #[arg(long, default_value_t = 90)]
    pub term_days: u32,
    /// What you intend to publish.
    #[arg(long)]
    pub outputs: String,
    /// Accept the dataset's current data-use agreement (shown without it).
    #[arg(long)]
    pub accept_agreement: bool,
}

#[derive(Subcommand)]
pub enum ApplicationCommand {
    /// Applications with deadlines (all for admins, your own otherwise).
    List,
    /// Approve, optionally narrowing columns, modes and term (admin).
    Approve {
        id: String,
        #[arg(long, value_delimiter = ',')]
        columns: Option<Vec<String>>,
        #[arg(long, value_delimiter = ',')]
        modes: Option<Vec<String>>,
        #[arg(long)]
        term_days: Option<u32>,
    },
    /// Reject with a reason the applicant sees (admin).
    Reject {
        id: String,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum ReviewCommand {
    /// Held outputs you may review.
    List,
    /// One held output: outputs, queries, reports, policy, cost, pre-checks.
    Show { job: String },
    /// Approve (the second approval releases it).
    Approve {
        job: String,
        #[arg(long, default_value = "")]
        comment: String,
    },
    /// Reject with a reason the author sees.
    Reject {
        job: String,
        #[arg(long)]
        comment: String,
    },
    /// Send it back to the author with comments.
    RequestChanges {
        job: String,
        #[arg(long)]
        comment: String,
    },
}

#[derive(Subcommand)]
pub enum ContestCommand {
    /// Create a contest from a TOML spec (administrators).
    Create { spec: PathBuf },
    /// Every contest.
    List,
    /// Submit a model (a sha256 or a .wasm file, uploaded first).
    Submit {
        contest: String,
        #[arg(long)]
        module: String,
        /// Wait for the score.
        #[arg(long)]
        wait: bool,
    },
    /// Your team's submissions.
    Submissions { contest: String },
    /// Mark a scored submission as one of your final picks.
    Pick { contest: String, submission: String },
    /// The public leaderboard, or after the close the private one.
    Leaderboard {
        contest: String,
        #[arg(long)]
        private: bool,
    },
}

#[derive(Subcommand)]
pub enum BudgetCommand {
    /// Budgets on every dataset with a dp policy: cap, spent, left.
    Show {
        /// Another tenant's (administrators).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Add budget on top of a policy's cap (administrators; audited).
    Grant {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        dataset: String,
        #[arg(long)]
        epsilon: f64,
        #[arg(long, default_value_t = 0.0)]
        delta: f64,
        #[arg(long)]
        reason: String,
    },
}

#[derive(Subcommand)]
pub enum ScoreCommand {
    /// Score the subjects listed in a file (one id a line) with a scorer
    /// module under a scoring policy; prints one line per subject.
    Batch {
        /// A sha256 or a .wasm file (uploaded first).
        #[arg(long)]
        module: String,
        #[arg(long, default_value = "credit-risk")]
        policy: String,
        #[arg(long)]
        subjects: PathBuf,
        #[arg(long, default_value = "{}")]
        params: String,
        /// Subjects per request.
        #[arg(long, default_value_t = 500)]
        chunk: usize,
        /// Write each scored subject's own signed receipt to
        /// `<dir>/<subject>.json`.
        #[arg(long)]
        receipts: Option<PathBuf>,
    },
    /// Approve a scorer module, with its exact params, for one scoring
    /// policy and one institution (administrators, after review).
    Approve {
        #[arg(long, default_value = "credit-risk")]
        policy: String,
        #[arg(long)]
        institution: String,
        /// The scorer's sha256.
        #[arg(long)]
        module: String,
        #[arg(long, default_value = "{}")]
        params: String,
    },
}

/// A job as `dsb job submit` describes it.
pub struct Submission<'a> {
    /// A sha256 or a .wasm file (uploaded first).
    pub module: &'a str,
    pub mode: &'a str,
    pub datasets: &'a [String],
    /// JSON text for the guest.
    pub params: &'a str,
    /// `dp`: ε per query.
    pub epsilon: Option<f64>,
    /// `dp`: an error bound instead of ε.
    pub accuracy: Option<datasandbox::dp::Accuracy>,
    /// `sample-aggregate`: the declaration.
    pub sample: Option<datasandbox::dp::sample_aggregate::Spec>,
}

pub struct Remote {
    pub client: Client,
    pub json: bool,
}

impl Remote {
    fn print<T: Serialize>(&self, value: &T, human: impl FnOnce(&T)) -> anyhow::Result<()> {
        if self.json {
            println!("{}", serde_json::to_string_pretty(value)?);
        } else {
            human(value);
        }
        Ok(())
    }

    pub async fn module(&self, command: ModuleCommand) -> anyhow::Result<()> {
        match command {
            ModuleCommand::Upload { file, name } => {
                let bytes =
                    std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
                let info = self.client.upload_module(bytes, name.as_deref()).await?;
                self.print(&info, |i| {
                    println!("{}  {} component, {} bytes", i.sha256, i.world, i.size)
                })
            }
            ModuleCommand::List => {
                let modules = self.client.modules().await?;
                self.print(&modules, |list| {
                    for m in list {
                        println!(
                            "{}  {:<15} {:>9} B  {}",
                            m.sha256,
                            m.world,
                            m.size,
                            m.name.as_deref().unwrap_or("")
                        );
                    }
                })
            }
        }
    }

    /// Submit a job; `module` is a sha256 or a .wasm file (uploaded first).
    pub async fn submit(&self, submission: Submission<'_>, wait: bool) -> anyhow::Result<()> {
        let Submission {
            module,
            mode,
            datasets,
            params,
            epsilon,
            accuracy,
            sample,
        } = submission;
        let sha256 = if std::path::Path::new(module).is_file() {
            let bytes = std::fs::read(module)?;
            self.client.upload_module(bytes, None).await?.sha256
        } else {
            module.to_string()
        };
        let params: serde_json::Value =
            serde_json::from_str(params).context("--params must be JSON")?;
        let job = match (sample, epsilon, accuracy) {
            (Some(spec), _, _) => {
                self.client
                    .submit_sample_aggregate_job(&sha256, datasets, params, &spec)
                    .await?
            }
            (None, Some(epsilon), _) => {
                self.client
                    .submit_dp_job(&sha256, datasets, params, epsilon)
                    .await?
            }
            (None, None, Some(accuracy)) => {
                self.client
                    .submit_dp_job_within(&sha256, datasets, params, accuracy)
                    .await?
            }
            (None, None, None) => {
                self.client
                    .submit_job(&sha256, mode, datasets, params)
                    .await?
            }
        };
        if !wait {
            return self.print(&job, |j| println!("job {} {}", j.id, j.state));
        }
        let spinner = indicatif::ProgressBar::new_spinner();
        if !self.json {
            spinner.set_message(format!("job {} queued", job.id));
            spinner.enable_steady_tick(Duration::from_millis(120));
        }
        let mut current = job;
        while matches!(current.state.as_str(), "queued" | "running") {
            current = self.client.job(&current.id, 30).await?;
            spinner.set_message(format!("job {} {}", current.id, current.state));
        }
        spinner.finish_and_clear();
        self.print(&current, |j| {
            println!(
                "job {} {}: {}",
                j.id,
                j.state,
                j.category.as_deref().unwrap_or("")
            )
        })?;
        if current.state == "released" && !self.json {
            self.output(&current.id).await?;
        }
        if current.state != "released" {
            std::process::exit(2);
        }
        Ok(())
    }

    pub async fn show(&self, id: &str) -> anyhow::Result<()> {
        let job = self.client.job(id, 0).await?;
        self.print(&job, |j| {
            println!(
                "job {}\n  state    {}\n  category {}\n  mode     {} ({})\n  module   {}\n  datasets {}\n  receipt  {}",
                j.id,
                j.state,
                j.category.as_deref().unwrap_or("-"),
                j.mode,
                j.world,
                j.module,
                j.datasets
                    .iter()
                    .map(|d| format!("{}@{}", d.id, &d.version[..12.min(d.version.len())]))
                    .collect::<Vec<_>>()
                    .join(", "),
                if j.has_receipt { "yes" } else { "no" }
            )
        })
    }

    pub async fn diagnostics(&self, id: &str) -> anyhow::Result<()> {
        let diagnostics = self.client.job_diagnostics(id).await?;
        println!("{}", serde_json::to_string_pretty(&diagnostics)?);
        Ok(())
    }

    pub async fn output(&self, id: &str) -> anyhow::Result<()> {
        let output = self.client.job_output(id).await?;
        if self.json {
            println!("{}", serde_json::to_string_pretty(&output)?);
        } else {
            demo::print_outputs(&output.outputs, &mut std::io::stdout().lock())?;
        }
        Ok(())
    }

    pub async fn list_jobs(&self) -> anyhow::Result<()> {
        let jobs = self.client.jobs().await?;
        self.print(&jobs, |list| {
            for j in list {
                println!(
                    "{}  {:<9} {:<10} {}",
                    j.id,
                    j.state,
                    j.mode,
                    j.category.as_deref().unwrap_or("")
                );
            }
        })
    }

    pub async fn cancel(&self, id: &str) -> anyhow::Result<()> {
        let job = self.client.cancel_job(id).await?;
        self.print(&job, |j| println!("job {} {}", j.id, j.state))
    }

    /// Fetch a receipt, verify it against the server's published keys, and
    /// write it to `out` (or print it).
    pub async fn receipt(&self, id: &str, out: Option<PathBuf>) -> anyhow::Result<()> {
        let bytes = self.client.receipt_bytes(id).await?;
        let keys = self.client.keys().await?;
        let receipt = Receipt::verify(&bytes, &keys, None)
            .map_err(|e| anyhow::anyhow!("the server's receipt does not verify: {e}"))?;
        match out {
            Some(path) => {
                std::fs::write(&path, &bytes)?;
                eprintln!(
                    "receipt for job {} (signature valid, key {}) written to {}",
                    receipt.body.job_id,
                    receipt.body.key_id,
                    path.display()
                );
            }
            None => println!("{}", serde_json::to_string_pretty(&receipt)?),
        }
        Ok(())
    }

    pub async fn datasets(&self) -> anyhow::Result<()> {
        let list = self.client.datasets().await?;
        self.print(&list, |list| {
            for d in list {
                println!(
                    "{:<20} {:<12} {:>8} rows  {}  {}",
                    d.id,
                    d.classification,
                    d.rows,
                    if d.accessible { "access" } else { "no access" },
                    d.title
                );
            }
        })
    }

    pub async fn dataset(&self, id: &str) -> anyhow::Result<()> {
        let detail = self.client.dataset(id).await?;
        // The dictionary and profile are nested documents: JSON either way.
        println!("{}", serde_json::to_string_pretty(&detail)?);
        Ok(())
    }

    pub async fn add_dataset(
        &self,
        file: &std::path::Path,
        manifest: &std::path::Path,
    ) -> anyhow::Result<()> {
        let summary = self.client.add_dataset(file, manifest).await?;
        self.print(&summary, |d| {
            println!("added {}@{} ({} rows)", d.id, d.version, d.rows)
        })
    }

    pub async fn token(&self, command: TokenCommand) -> anyhow::Result<()> {
        match command {
            TokenCommand::Create {
                role,
                tenant,
                expires,
            } => {
                let expires_at = expires.map(|d| datasandbox::store::now() + d.as_secs() as i64);
                let created = self.client.create_token(role, &tenant, expires_at).await?;
                self.print(&created, |c| {
                    println!("{}", c.token);
                    eprintln!(
                        "token {} for {}/{} (shown once; store it now)",
                        c.info.id, c.info.tenant, c.info.role
                    );
                })
            }
            TokenCommand::List => {
                let tokens = self.client.tokens().await?;
                self.print(&tokens, |list| print_tokens(list))
            }
            TokenCommand::Revoke { id } => {
                self.client.revoke_token(&id).await?;
                println!("revoked {id}");
                Ok(())
            }
        }
    }

    pub async fn grant(&self, command: GrantCommand) -> anyhow::Result<()> {
        match command {
            GrantCommand::Add { tenant, dataset } => {
                let grant = self.client.grant(&tenant, &dataset).await?;
                self.print(&grant, |g| {
                    println!("granted {} to {}", g.dataset, g.tenant)
                })
            }
            GrantCommand::List => {
                let grants = self.client.grants().await?;
                self.print(&grants, |list| {
                    for g in list {
                        println!("{:<20} {:<20} by {}", g.dataset, g.tenant, g.granted_by);
                    }
                })
            }
        }
    }

    pub async fn audit_verify(&self) -> anyhow::Result<()> {
        let verdict = self.client.audit_verify().await?;
        self.print(&verdict, |v| {
            if v.intact {
                println!(
                    "audit chain intact: {} entries, {} signed checkpoints",
                    v.entries, v.checkpoints
                );
            } else {
                println!(
                    "BROKEN at entry {}: {}",
                    v.broken_at.unwrap_or(0),
                    v.reason.as_deref().unwrap_or("")
                );
            }
        })?;
        if !verdict.intact {
            std::process::exit(1);
        }
        Ok(())
    }

    pub async fn audit_checkpoint(&self) -> anyhow::Result<()> {
        let checkpoint = self.client.audit_checkpoint().await?;
        println!("{}", serde_json::to_string(&checkpoint)?);
        Ok(())
    }

    pub async fn reload_policies(&self) -> anyhow::Result<()> {
        let policies = self.client.reload_policies().await?;
        self.print(&policies, |list| {
            for p in list {
                println!(
                    "reloaded {:<20} {}  sha256 {}",
                    p.dataset.as_deref().unwrap_or("(default)"),
                    p.file,
                    &p.sha256[..16]
                );
            }
        })
    }
}

impl Remote {
    pub async fn review(&self, command: ReviewCommand) -> anyhow::Result<()> {
        let (job, decision, comment) = match command {
            ReviewCommand::List => {
                let list = self.client.review_queue().await?;
                return self.print(&list, |list| {
                    for h in list {
                        let checks = h.context["prechecks"]
                            .as_array()
                            .map(|c| c.len())
                            .unwrap_or(0);
                        println!(
                            "{}  by {}  {} pre-check finding(s)",
                            h.job_id, h.author, checks
                        );
                    }
                });
            }
            ReviewCommand::Show { job } => {
                let held = self.client.held_output(&job).await?;
                return self.print(&held, |h| {
                    println!("{}", serde_json::to_string_pretty(h).unwrap_or_default())
                });
            }
            ReviewCommand::Approve { job, comment } => (job, "approve", comment),
            ReviewCommand::Reject { job, comment } => (job, "reject", comment),
            ReviewCommand::RequestChanges { job, comment } => (job, "request-changes", comment),
        };
        let state = self.client.decide(&job, decision, &comment).await?;
        println!("{job}: {state}");
        Ok(())
    }

    pub async fn apply(&self, args: ApplyArgs) -> anyhow::Result<()> {
        let agreement = self.client.agreement(&args.dataset).await?;
        if !args.accept_agreement {
            println!(
                "{}\n(agreement version {}, sha256 {})\nRe-run with --accept-agreement to accept it and apply.",
                agreement.text.trim_end(),
                agreement.version,
                agreement.sha256
            );
            return Ok(());
        }
        let application = self
            .client
            .apply(&datasandbox::applications::NewApplication {
                dataset: args.dataset,
                purpose: args.purpose,
                columns: args.columns,
                modes: args.modes,
                term_days: args.term_days,
                intended_outputs: args.outputs,
                agreement_sha256: agreement.sha256,
            })
            .await?;
        self.print(&application, |a| {
            println!(
                "application {} for {} pending; answer due by {} (agreement {} accepted)",
                a.id,
                a.request.dataset,
                humantime::format_rfc3339_seconds(
                    std::time::UNIX_EPOCH + Duration::from_secs(a.deadline_at as u64)
                ),
                a.agreement_version
            )
        })
    }

    pub async fn application(&self, command: ApplicationCommand) -> anyhow::Result<()> {
        let print = |list: &Vec<datasandbox::applications::Application>| {
            for a in list {
                println!(
                    "{}  {:<12} {:<14} {:<9} due {}{}{}",
                    a.id,
                    a.tenant,
                    a.request.dataset,
                    a.state,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(a.deadline_at as u64)
                    ),
                    if a.overdue { "  OVERDUE" } else { "" },
                    a.reason
                        .as_ref()
                        .map(|r| format!("  reason: {r}"))
                        .unwrap_or_default()
                );
            }
        };
        match command {
            ApplicationCommand::List => {
                let list = self.client.applications().await?;
                self.print(&list, print)
            }
            ApplicationCommand::Approve {
                id,
                columns,
                modes,
                term_days,
            } => {
                let decided = self
                    .client
                    .approve_application(
                        &id,
                        &datasandbox::applications::Approval {
                            columns,
                            modes,
                            term_days,
                        },
                    )
                    .await?;
                self.print(&vec![decided], print)
            }
            ApplicationCommand::Reject { id, reason } => {
                let decided = self.client.reject_application(&id, &reason).await?;
                self.print(&vec![decided], print)
            }
        }
    }

    pub async fn contest(&self, command: ContestCommand) -> anyhow::Result<()> {
        let print_submissions = |list: &Vec<datasandbox::contest::SubmissionView>| {
            for s in list {
                println!(
                    "{}  {:<12} {:<24} {}{}",
                    s.id,
                    s.state,
                    s.category.as_deref().unwrap_or("-"),
                    s.public_score.map(|v| v.to_string()).unwrap_or_default(),
                    if s.picked { "  picked" } else { "" }
                );
            }
        };
        match command {
            ContestCommand::Create { spec } => {
                let text = std::fs::read_to_string(&spec)
                    .with_context(|| format!("reading {}", spec.display()))?;
                let contest = self.client.create_contest(text).await?;
                self.print(&contest, |c| {
                    println!(
                        "contest {} on {} ({}), split seed sha256 {}",
                        c.spec.id,
                        c.spec.dataset,
                        c.spec.metric.name(),
                        c.seed_sha256
                    )
                })
            }
            ContestCommand::List => {
                let list = self.client.contests().await?;
                self.print(&list, |list| {
                    for c in list {
                        println!(
                            "{:<24} {:<10} {:<12} {}",
                            c.spec.id,
                            c.spec.metric.name(),
                            if c.open { "open" } else { "closed" },
                            c.spec.title
                        );
                    }
                })
            }
            ContestCommand::Submit {
                contest,
                module,
                wait,
            } => {
                let sha256 = if std::path::Path::new(&module).is_file() {
                    self.client
                        .upload_module(std::fs::read(&module)?, None)
                        .await?
                        .sha256
                } else {
                    module
                };
                let mut submission = self.client.submit_model(&contest, &sha256).await?;
                if wait {
                    self.client
                        .wait_job(&submission.id, Duration::from_secs(600))
                        .await?;
                    submission = self
                        .client
                        .submissions(&contest)
                        .await?
                        .into_iter()
                        .find(|s| s.id == submission.id)
                        .context("the submission disappeared")?;
                }
                self.print(&vec![submission], print_submissions)
            }
            ContestCommand::Submissions { contest } => {
                let list = self.client.submissions(&contest).await?;
                self.print(&list, print_submissions)
            }
            ContestCommand::Pick {
                contest,
                submission,
            } => {
                self.client.pick(&contest, &submission).await?;
                println!("picked {submission}");
                Ok(())
            }
            ContestCommand::Leaderboard { contest, private } => {
                let board = self.client.leaderboard(&contest, private).await?;
                self.print(&board, |board| {
                    for s in board {
                        println!(
                            "{:>3}. {:<20} {:<10} ({} submissions)",
                            s.rank, s.team, s.score, s.submissions
                        );
                    }
                })
            }
        }
    }

    pub async fn budget(&self, command: BudgetCommand) -> anyhow::Result<()> {
        let print = |list: &Vec<datasandbox::dp::budget::Budget>| {
            for b in list {
                println!(
                    "{:<18} {:<12} ε spent {:.3} of {:.3}, {:.3} left   δ spent {:e} of {:e}   ({})",
                    b.population,
                    b.principal,
                    b.spent.epsilon,
                    b.cap.epsilon,
                    b.remaining.epsilon,
                    b.spent.delta,
                    b.cap.delta,
                    b.datasets.join(", ")
                );
            }
        };
        match command {
            BudgetCommand::Show { tenant } => {
                let list = self.client.budgets(tenant.as_deref()).await?;
                self.print(&list, print)
            }
            BudgetCommand::Grant {
                tenant,
                dataset,
                epsilon,
                delta,
                reason,
            } => {
                let budget = self
                    .client
                    .grant_budget(&tenant, &dataset, epsilon, delta, &reason)
                    .await?;
                self.print(&vec![budget], print)
            }
        }
    }

    pub async fn auth(&self, command: AuthCommand) -> anyhow::Result<()> {
        match command {
            AuthCommand::Import { file } => {
                let text = std::fs::read_to_string(&file)
                    .with_context(|| format!("reading {}", file.display()))?;
                let added = self.client.import_authorisations(text).await?;
                self.print(&added, |list| {
                    println!("imported {} authorisations", list.len())
                })
            }
            AuthCommand::Add {
                subject,
                tenant,
                purpose,
                datasets,
                consent,
                consent_uri,
                from,
                valid_for,
            } => {
                use sha2::Digest;
                let document = std::fs::read(&consent)
                    .with_context(|| format!("reading {}", consent.display()))?;
                let valid_from = from.unwrap_or_else(datasandbox::store::now);
                let terms = datasandbox::scoring::authorisations::NewAuthorisation {
                    subject,
                    tenant,
                    purpose,
                    datasets,
                    valid_from,
                    valid_until: valid_from
                        .saturating_add(i64::try_from(valid_for.as_secs()).unwrap_or(i64::MAX)),
                    consent_sha256: hex::encode(sha2::Sha256::digest(&document)),
                    consent_uri: consent_uri.unwrap_or_else(|| consent.display().to_string()),
                };
                let added = self.client.add_authorisations(&[terms]).await?;
                self.print(&added, |list| {
                    for a in list {
                        println!(
                            "{}  {} may be scored by {} for {} until {}",
                            a.id,
                            a.terms.subject,
                            a.terms.tenant,
                            a.terms.purpose,
                            a.terms.valid_until
                        );
                    }
                })
            }
            AuthCommand::List { subject } => {
                let list = self.client.authorisations(subject.as_deref()).await?;
                self.print(&list, |list| {
                    for a in list {
                        println!(
                            "{}  {:<20} {:<12} {:<18} {} → {}{}",
                            a.id,
                            a.terms.subject,
                            a.terms.tenant,
                            a.terms.purpose,
                            a.terms.valid_from,
                            a.terms.valid_until,
                            if a.revoked_at.is_some() {
                                "  revoked"
                            } else {
                                ""
                            }
                        );
                    }
                })
            }
            AuthCommand::Revoke { id } => {
                self.client.revoke_authorisation(&id).await?;
                println!("revoked {id}");
                Ok(())
            }
        }
    }

    pub async fn score(&self, command: ScoreCommand) -> anyhow::Result<()> {
        let (module, policy, subjects, params, chunk, receipts) = match command {
            ScoreCommand::Batch {
                module,
                policy,
                subjects,
                params,
                chunk,
                receipts,
            } => (module, policy, subjects, params, chunk, receipts),
            ScoreCommand::Approve {
                policy,
                institution,
                module,
                params,
            } => {
                let params: serde_json::Value =
                    serde_json::from_str(&params).context("--params must be JSON")?;
                let approval = self
                    .client
                    .approve_scorer(&datasandbox::scoring::approvals::NewApproval {
                        policy,
                        institution,
                        module,
                        params,
                    })
                    .await?;
                return self.print(&approval, |a| {
                    println!(
                        "approved {} for {} under {} (params sha256 {})",
                        a.module, a.institution, a.policy, a.params_sha256
                    )
                });
            }
        };
        let sha256 = if std::path::Path::new(&module).is_file() {
            self.client
                .upload_module(std::fs::read(&module)?, None)
                .await?
                .sha256
        } else {
            module
        };
        let params: serde_json::Value =
            serde_json::from_str(&params).context("--params must be JSON")?;
        let list: Vec<String> = std::fs::read_to_string(&subjects)
            .with_context(|| format!("reading {}", subjects.display()))?
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect();
        let progress = indicatif::ProgressBar::new(list.len() as u64);
        if self.json {
            progress.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let mut batches = Vec::new();
        for part in list.chunks(chunk.max(1)) {
            let batch = self
                .client
                .score(&sha256, &policy, part, params.clone())
                .await?;
            progress.inc(part.len() as u64);
            let stop = batch
                .results
                .iter()
                .any(|r| r.outcome == "cap-reached" || r.outcome == "rate-limited");
            batches.push(batch);
            if stop {
                break;
            }
        }
        progress.finish_and_clear();
        if let Some(dir) = &receipts {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            for r in batches.iter().flat_map(|b| &b.results) {
                if let Some(receipt) = &r.receipt {
                    // Subject ids name files: keep them to a safe alphabet.
                    let name: String = r
                        .subject
                        .chars()
                        .map(|c| {
                            if c.is_ascii_alphanumeric() || c == '-' {
                                c
                            } else {
                                '_'
                            }
                        })
                        .collect();
                    let path = dir.join(format!("{name}.json"));
                    std::fs::write(&path, serde_json::to_vec_pretty(receipt)?)
                        .with_context(|| format!("writing {}", path.display()))?;
                }
            }
        }
        self.print(&batches, |batches| {
            for batch in batches {
                for r in &batch.results {
                    match (r.score, &r.grade) {
                        (Some(score), _) => println!("{}  {}  {score}", r.subject, r.outcome),
                        (None, Some(grade)) => println!("{}  {}  {grade}", r.subject, r.outcome),
                        (None, None) => println!("{}  {}", r.subject, r.outcome),
                    }
                }
                eprintln!(
                    "job {}: {} scored, receipt {}",
                    batch.job_id,
                    batch
                        .results
                        .iter()
                        .filter(|r| r.outcome == "scored")
                        .count(),
                    if batch.receipt.is_some() {
                        "signed"
                    } else {
                        "none"
                    }
                );
            }
        })
    }
}

/// Tokens as a table (no secrets: only ids, roles, tenants, state).
pub fn print_tokens(tokens: &[datasandbox::accounts::TokenInfo]) {
    for t in tokens {
        println!(
            "{}  {:<12} {:<20} {}",
            t.id,
            t.role.name(),
            t.tenant,
            if t.revoked_at.is_some() {
                "revoked"
            } else {
                ""
            }
        );
    }
}

/// Commands that exist only against a server.
pub fn needs_server(what: &str) -> anyhow::Result<()> {
    bail!("`{what}` talks to a server: pass --server URL (or set DSB_SERVER) and a token")
}

/// A sample-and-aggregate declaration from `--dimension name=lo:hi:default`
/// flags, `--epsilon`, `--blocks` and `--block-millis`.
pub fn sample_spec(
    dimensions: &[String],
    epsilon: Option<f64>,
    blocks: Option<usize>,
    block_millis: Option<u64>,
) -> anyhow::Result<datasandbox::dp::sample_aggregate::Spec> {
    let epsilon = epsilon.context("--mode sample-aggregate needs --epsilon")?;
    if dimensions.is_empty() {
        bail!("--mode sample-aggregate needs at least one --dimension name=lo:hi:default");
    }
    let dimensions = dimensions
        .iter()
        .map(|text| {
            let parsed = text.split_once('=').and_then(|(name, range)| {
                let numbers: Vec<f64> = range
                    .split(':')
                    .map(str::parse)
                    .collect::<Result<_, _>>()
                    .ok()?;
                match numbers.as_slice() {
                    [lo, hi, default] => Some(datasandbox::dp::sample_aggregate::Dimension {
                        name: name.to_string(),
                        lo: *lo,
                        hi: *hi,
                        default: *default,
                    }),
                    _ => None,
                }
            });
            parsed.with_context(|| format!("--dimension {text}: expected name=lo:hi:default"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok(datasandbox::dp::sample_aggregate::Spec {
        dimensions,
        epsilon,
        blocks,
        block_millis,
    })
}
