//! An HTTP client for the `/v1` API: what `dsb --server …`, the demo and
//! the tests use. API errors come back typed, with the server's code.

use std::path::Path;
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::accounts::{Grant, Role, TokenInfo};
use crate::api::{
    AuditVerdict, CreatedToken, DatasetDetail, DatasetSummary, ErrorBody, JobOutput, JobView,
    PolicyCheck, PolicySummary,
};
use crate::receipt::{PublicKey, Receipt};
use crate::store::audit::{AuditEntry, Checkpoint};
use crate::store::modules::ModuleInfo;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{code}: {message} (HTTP {status})")]
    Api {
        status: u16,
        code: String,
        message: String,
        retry_after: Option<u64>,
    },
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    Io(String),
}

impl ClientError {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Api { code, .. } => Some(code),
            _ => None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Client {
    /// A client for the server at `base` (`http://127.0.0.1:8470`).
    pub fn new(base: &str, token: Option<String>) -> Self {
        Client {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .expect("an HTTP client without TLS builds"),
            base: base.trim_end_matches('/').to_string(),
            token,
        }
    }

    /// The same server with another token.
    pub fn with_token(&self, token: impl Into<String>) -> Self {
        Client {
            token: Some(token.into()),
            ..self.clone()
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let builder = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        }
    }

    async fn send<T: DeserializeOwned>(builder: RequestBuilder) -> Result<T, ClientError> {
        let response = Self::checked(builder).await?;
        Ok(response.json().await?)
    }

    async fn checked(builder: RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let response = builder.send().await?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let text = response.text().await.unwrap_or_default();
        let (code, message) = match serde_json::from_str::<ErrorBody>(&text) {
            Ok(body) => (body.error.code, body.error.message),
            Err(_) => (
                status
                    .canonical_reason()
                    .unwrap_or("error")
                    .to_lowercase()
                    .replace(' ', "-"),
                text,
            ),
        };
        Err(ClientError::Api {
            status: status.as_u16(),
            code,
            message,
            retry_after,
        })
    }

    pub async fn healthz(&self) -> Result<String, ClientError> {
        Ok(Self::checked(self.request(Method::GET, "/healthz"))
            .await?
            .text()
            .await?)
    }

    pub async fn metrics(&self) -> Result<String, ClientError> {
        Ok(Self::checked(self.request(Method::GET, "/metrics"))
            .await?
            .text()
            .await?)
    }

    pub async fn openapi(&self) -> Result<serde_json::Value, ClientError> {
        Self::send(self.request(Method::GET, "/v1/openapi.json")).await
    }

    pub async fn upload_module(
        &self,
        bytes: Vec<u8>,
        name: Option<&str>,
    ) -> Result<ModuleInfo, ClientError> {
        let mut builder = self
            .request(Method::POST, "/v1/modules")
            .header(reqwest::header::CONTENT_TYPE, "application/wasm")
            .body(bytes);
        if let Some(name) = name {
            builder = builder.query(&[("name", name)]);
        }
        Self::send(builder).await
    }

    pub async fn modules(&self) -> Result<Vec<ModuleInfo>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/modules")).await
    }

    pub async fn submit_job(
        &self,
        module: &str,
        mode: &str,
        datasets: &[String],
        params: serde_json::Value,
    ) -> Result<JobView, ClientError> {
        self.post_job(module, mode, datasets, params, None).await
    }

    /// Submit a `dp`-mode job whose queries each spend `epsilon`.
    pub async fn submit_dp_job(
        &self,
        module: &str,
        datasets: &[String],
        params: serde_json::Value,
        epsilon: f64,
    ) -> Result<JobView, ClientError> {
        let epsilon = ("epsilon", serde_json::json!(epsilon));
        self.post_job(module, "dp", datasets, params, Some(epsilon))
            .await
    }

    /// Submit a `dp` job whose queries each spend the least ε that keeps
    /// their noise within `accuracy`.
    pub async fn submit_dp_job_within(
        &self,
        module: &str,
        datasets: &[String],
        params: serde_json::Value,
        accuracy: crate::dp::Accuracy,
    ) -> Result<JobView, ClientError> {
        let accuracy = ("accuracy", serde_json::json!(accuracy));
        self.post_job(module, "dp", datasets, params, Some(accuracy))
            .await
    }

    /// Submit a `sample-aggregate` job (a `block-analysis` module).
    pub async fn submit_sample_aggregate_job(
        &self,
        module: &str,
        datasets: &[String],
        params: serde_json::Value,
        spec: &crate::dp::sample_aggregate::Spec,
    ) -> Result<JobView, ClientError> {
        let spec = ("sample_aggregate", serde_json::json!(spec));
        self.post_job(module, "sample-aggregate", datasets, params, Some(spec))
            .await
    }

    /// `POST /v1/jobs` with the mode's own field, if it has one.
    async fn post_job(
        &self,
        module: &str,
        mode: &str,
        datasets: &[String],
        params: serde_json::Value,
        extra: Option<(&str, serde_json::Value)>,
    ) -> Result<JobView, ClientError> {
        let mut body = serde_json::json!({
            "module": module,
            "mode": mode,
            "datasets": datasets,
            "params": params,
        });
        if let Some((field, value)) = extra {
            body[field] = value;
        }
        Self::send(self.request(Method::POST, "/v1/jobs").json(&body)).await
    }

    /// Create a contest from its TOML spec (administrators).
    pub async fn create_contest(
        &self,
        spec: String,
    ) -> Result<crate::contest::ContestView, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/contests")
                .header(reqwest::header::CONTENT_TYPE, "application/toml")
                .body(spec),
        )
        .await
    }

    pub async fn contests(&self) -> Result<Vec<crate::contest::ContestView>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/contests")).await
    }

    /// Submit the team's model to a contest.
    pub async fn submit_model(
        &self,
        contest: &str,
        module: &str,
    ) -> Result<crate::contest::SubmissionView, ClientError> {
        Self::send(
            self.request(Method::POST, &format!("/v1/contests/{contest}/submissions"))
                .json(&serde_json::json!({ "module": module })),
        )
        .await
    }

    /// The team's submissions to a contest.
    pub async fn submissions(
        &self,
        contest: &str,
    ) -> Result<Vec<crate::contest::SubmissionView>, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/contests/{contest}/submissions"))).await
    }

    /// Mark a scored submission as a final pick.
    pub async fn pick(&self, contest: &str, submission: &str) -> Result<(), ClientError> {
        Self::checked(self.request(
            Method::POST,
            &format!("/v1/contests/{contest}/submissions/{submission}/pick"),
        ))
        .await?;
        Ok(())
    }

    /// The public leaderboard, or (after the close) the private one.
    pub async fn leaderboard(
        &self,
        contest: &str,
        private: bool,
    ) -> Result<Vec<crate::contest::Standing>, ClientError> {
        Self::send(
            self.request(Method::GET, &format!("/v1/contests/{contest}/leaderboard"))
                .query(&[("private", private)]),
        )
        .await
    }

    /// A synthetic sample of a contest's features and label (CSV).
    pub async fn contest_sample(
        &self,
        contest: &str,
        rows: usize,
        seed: u64,
    ) -> Result<String, ClientError> {
        let response = Self::checked(
            self.request(Method::GET, &format!("/v1/contests/{contest}/sample"))
                .query(&[("rows", rows as u64), ("seed", seed)]),
        )
        .await?;
        response.text().await.map_err(ClientError::from)
    }

    /// One contest.
    pub async fn contest(&self, id: &str) -> Result<crate::contest::ContestView, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/contests/{id}"))).await
    }

    /// A conditional dataset's data-use agreement.
    pub async fn agreement(&self, dataset: &str) -> Result<crate::policy::Agreement, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/datasets/{dataset}/agreement"))).await
    }

    /// Apply for a conditional dataset.
    pub async fn apply(
        &self,
        application: &crate::applications::NewApplication,
    ) -> Result<crate::applications::Application, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/applications")
                .json(application),
        )
        .await
    }

    pub async fn applications(&self) -> Result<Vec<crate::applications::Application>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/applications")).await
    }

    pub async fn approve_application(
        &self,
        id: &str,
        approval: &crate::applications::Approval,
    ) -> Result<crate::applications::Application, ClientError> {
        Self::send(
            self.request(Method::POST, &format!("/v1/applications/{id}/approve"))
                .json(approval),
        )
        .await
    }

    pub async fn reject_application(
        &self,
        id: &str,
        reason: &str,
    ) -> Result<crate::applications::Application, ClientError> {
        Self::send(
            self.request(Method::POST, &format!("/v1/applications/{id}/reject"))
                .json(&serde_json::json!({ "reason": reason })),
        )
        .await
    }

    /// Held outputs the caller may review (administrators).
    pub async fn review_queue(&self) -> Result<Vec<crate::review::HeldOutput>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/reviews")).await
    }

    pub async fn held_output(&self, job: &str) -> Result<crate::review::HeldOutput, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/reviews/{job}"))).await
    }

    /// Approve, reject or request changes; returns the review's state.
    pub async fn decide(
        &self,
        job: &str,
        decision: &str,
        comment: &str,
    ) -> Result<String, ClientError> {
        let state: serde_json::Value = Self::send(
            self.request(Method::POST, &format!("/v1/reviews/{job}"))
                .json(&serde_json::json!({ "decision": decision, "comment": comment })),
        )
        .await?;
        Ok(state["state"].as_str().unwrap_or_default().to_string())
    }

    /// The review of one of the caller's held jobs.
    pub async fn job_review(&self, id: &str) -> Result<crate::review::HeldOutput, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/jobs/{id}/review"))).await
    }

    /// Privacy budgets: the caller's, or (administrators) a tenant's.
    pub async fn budgets(
        &self,
        tenant: Option<&str>,
    ) -> Result<Vec<crate::dp::budget::Budget>, ClientError> {
        let mut builder = self.request(Method::GET, "/v1/budgets");
        if let Some(tenant) = tenant {
            builder = builder.query(&[("tenant", tenant)]);
        }
        Self::send(builder).await
    }

    /// Raise a tenant's budget cap on a dataset (administrators).
    pub async fn grant_budget(
        &self,
        tenant: &str,
        dataset: &str,
        epsilon: f64,
        delta: f64,
        reason: &str,
    ) -> Result<crate::dp::budget::Budget, ClientError> {
        Self::send(self.request(Method::POST, "/v1/budgets/grants").json(&serde_json::json!({
            "tenant": tenant, "dataset": dataset, "epsilon": epsilon, "delta": delta, "reason": reason,
        })))
        .await
    }

    /// A job; with `wait_seconds`, long-polls for its end.
    pub async fn job(&self, id: &str, wait_seconds: u64) -> Result<JobView, ClientError> {
        Self::send(
            self.request(Method::GET, &format!("/v1/jobs/{id}"))
                .query(&[("wait", wait_seconds)]),
        )
        .await
    }

    /// Long-poll until the job is final or `timeout` has passed.
    pub async fn wait_job(&self, id: &str, timeout: Duration) -> Result<JobView, ClientError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let job = self.job(id, left.as_secs().clamp(1, 30)).await?;
            if !matches!(job.state.as_str(), "queued" | "running")
                || tokio::time::Instant::now() >= deadline
            {
                return Ok(job);
            }
        }
    }

    pub async fn jobs(&self) -> Result<Vec<JobView>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/jobs")).await
    }

    pub async fn cancel_job(&self, id: &str) -> Result<JobView, ClientError> {
        Self::send(self.request(Method::POST, &format!("/v1/jobs/{id}/cancel"))).await
    }

    pub async fn job_output(&self, id: &str) -> Result<JobOutput, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/jobs/{id}/output"))).await
    }

    /// The receipt exactly as served (for offline verification).
    pub async fn receipt_bytes(&self, id: &str) -> Result<Vec<u8>, ClientError> {
        Ok(
            Self::checked(self.request(Method::GET, &format!("/v1/jobs/{id}/receipt")))
                .await?
                .bytes()
                .await?
                .to_vec(),
        )
    }

    pub async fn receipt(&self, id: &str) -> Result<Receipt, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/jobs/{id}/receipt"))).await
    }

    pub async fn datasets(&self) -> Result<Vec<DatasetSummary>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/datasets")).await
    }

    pub async fn dataset(&self, id: &str) -> Result<DatasetDetail, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/datasets/{id}"))).await
    }

    pub async fn dataset_sample(&self, id: &str, rows: usize) -> Result<String, ClientError> {
        Ok(Self::checked(
            self.request(Method::GET, &format!("/v1/datasets/{id}/sample"))
                .query(&[("rows", rows)]),
        )
        .await?
        .text()
        .await?)
    }

    /// Register a dataset file under its manifest (admin).
    pub async fn add_dataset(
        &self,
        data: &Path,
        manifest: &Path,
    ) -> Result<DatasetSummary, ClientError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))
        };
        let file_name = data
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "data.csv".into());
        let form = reqwest::multipart::Form::new()
            .part(
                "manifest",
                reqwest::multipart::Part::bytes(read(manifest)?).file_name("manifest.toml"),
            )
            .part(
                "data",
                reqwest::multipart::Part::bytes(read(data)?).file_name(file_name),
            );
        Self::send(self.request(Method::POST, "/v1/datasets").multipart(form)).await
    }

    pub async fn grant(&self, tenant: &str, dataset: &str) -> Result<Grant, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/grants")
                .json(&serde_json::json!({ "tenant": tenant, "dataset": dataset })),
        )
        .await
    }

    pub async fn grants(&self) -> Result<Vec<Grant>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/grants")).await
    }

    pub async fn create_token(
        &self,
        role: Role,
        tenant: &str,
        expires_at: Option<i64>,
    ) -> Result<CreatedToken, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/tokens")
                .json(&serde_json::json!({
                    "role": role,
                    "tenant": tenant,
                    "expires_at": expires_at,
                })),
        )
        .await
    }

    pub async fn tokens(&self) -> Result<Vec<TokenInfo>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/tokens")).await
    }

    pub async fn revoke_token(&self, id: &str) -> Result<(), ClientError> {
        Self::checked(self.request(Method::DELETE, &format!("/v1/tokens/{id}"))).await?;
        Ok(())
    }

    pub async fn policies(&self) -> Result<Vec<PolicySummary>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/policies")).await
    }

    pub async fn check_policies(&self) -> Result<PolicyCheck, ClientError> {
        Self::send(self.request(Method::POST, "/v1/policies/check")).await
    }

    pub async fn reload_policies(&self) -> Result<Vec<PolicySummary>, ClientError> {
        Self::send(self.request(Method::POST, "/v1/policies/reload")).await
    }

    pub async fn keys(&self) -> Result<Vec<PublicKey>, ClientError> {
        Self::send(self.request(Method::GET, "/v1/keys")).await
    }

    pub async fn audit_entries(
        &self,
        after: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>, ClientError> {
        Self::send(
            self.request(Method::GET, "/v1/audit")
                .query(&[("after", after), ("limit", limit)]),
        )
        .await
    }

    /// Approve a scorer module with its params for a policy and an
    /// institution (admin).
    pub async fn approve_scorer(
        &self,
        approval: &crate::scoring::approvals::NewApproval,
    ) -> Result<crate::scoring::approvals::Approval, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/scoring/approvals")
                .json(approval),
        )
        .await
    }

    /// A job's diagnostics (admin).
    pub async fn job_diagnostics(&self, id: &str) -> Result<serde_json::Value, ClientError> {
        Self::send(self.request(Method::GET, &format!("/v1/jobs/{id}/diagnostics"))).await
    }

    pub async fn audit_verify(&self) -> Result<AuditVerdict, ClientError> {
        Self::send(self.request(Method::GET, "/v1/audit/verify")).await
    }

    pub async fn audit_checkpoint(&self) -> Result<Checkpoint, ClientError> {
        Self::send(self.request(Method::POST, "/v1/audit/checkpoints")).await
    }

    pub async fn import_authorisations(
        &self,
        csv: String,
    ) -> Result<Vec<crate::scoring::authorisations::Authorisation>, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/authorisations/import")
                .header(reqwest::header::CONTENT_TYPE, "text/csv")
                .body(csv),
        )
        .await
    }

    pub async fn add_authorisations(
        &self,
        terms: &[crate::scoring::authorisations::NewAuthorisation],
    ) -> Result<Vec<crate::scoring::authorisations::Authorisation>, ClientError> {
        Self::send(self.request(Method::POST, "/v1/authorisations").json(terms)).await
    }

    pub async fn authorisations(
        &self,
        subject: Option<&str>,
    ) -> Result<Vec<crate::scoring::authorisations::Authorisation>, ClientError> {
        let mut builder = self.request(Method::GET, "/v1/authorisations");
        if let Some(subject) = subject {
            builder = builder.query(&[("subject", subject)]);
        }
        Self::send(builder).await
    }

    pub async fn revoke_authorisation(&self, id: &str) -> Result<(), ClientError> {
        Self::checked(self.request(Method::DELETE, &format!("/v1/authorisations/{id}"))).await?;
        Ok(())
    }

    pub async fn score(
        &self,
        module: &str,
        policy: &str,
        subjects: &[String],
        params: serde_json::Value,
    ) -> Result<crate::scoring::ScoreBatch, ClientError> {
        Self::send(
            self.request(Method::POST, "/v1/scoring")
                .json(&serde_json::json!({
                    "module": module, "policy": policy, "subjects": subjects, "params": params,
                })),
        )
        .await
    }

    /// A raw request, for tests of shapes and statuses.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<(StatusCode, reqwest::header::HeaderMap, Vec<u8>), ClientError> {
        let mut builder = self.request(method, path);
        if let Some((content_type, bytes)) = body {
            builder = builder
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let response = builder.send().await?;
        let status = response.status();
        let headers = response.headers().clone();
        Ok((status, headers, response.bytes().await?.to_vec()))
    }
}
