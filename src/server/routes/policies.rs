//! `/v1/policies`: the policies in force, checking the directory, reloading it
//! (admin).

use axum::extract::State;

use super::{ApiJson, ApiPath, ApiResult};
use crate::api::{PolicyCheck, PolicySummary};
use crate::server::AppState;
use crate::server::auth::Admin;
use crate::server::error::{ApiError, ErrorBody};

fn policy_summary(policy: &crate::policy::Policy) -> PolicySummary {
    PolicySummary {
        dataset: policy.dataset.clone(),
        file: policy
            .source
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sha256: policy.hash.clone(),
        modes: policy.modes.iter().map(|m| m.name().to_string()).collect(),
        min_group_size: policy.min_group_size,
    }
}

/// The policies in force (admin).
#[utoipa::path(get, path = "/v1/policies", tag = "policies", responses((status = 200, body = Vec<PolicySummary>), (status = 403, body = ErrorBody)))]
pub async fn list_policies(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<Vec<PolicySummary>>> {
    let set = state.service.policies.current();
    Ok(ApiJson(
        set.policies().iter().map(|p| policy_summary(p)).collect(),
    ))
}

/// One dataset's policy in force, with its text (admin).
#[utoipa::path(get, path = "/v1/policies/{dataset}", tag = "policies",
    params(("dataset" = String, Path)),
    responses((status = 200, body = Object), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn show_policy(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(dataset): ApiPath<String>,
) -> ApiResult<ApiJson<serde_json::Value>> {
    let set = state.service.policies.current();
    let policy = set
        .policies()
        .into_iter()
        .find(|p| p.dataset.as_deref() == Some(dataset.as_str()))
        .ok_or_else(|| ApiError::not_found("policy"))?;
    let text = std::fs::read_to_string(&policy.source).unwrap_or_default();
    Ok(ApiJson(serde_json::json!({
        "summary": policy_summary(&policy),
        "text": text,
    })))
}

/// Check the policy directory as it is on disk now, without applying it
/// (admin).
#[utoipa::path(post, path = "/v1/policies/check", tag = "policies",
    responses((status = 200, body = PolicyCheck), (status = 403, body = ErrorBody)))]
pub async fn check_policies(
    State(state): State<AppState>,
    _admin: Admin,
) -> ApiResult<ApiJson<PolicyCheck>> {
    let known = state.service.catalog.ids()?;
    let (problems, notes) =
        match crate::policy::PolicySet::load(state.service.policies.dir(), Some(&known)) {
            Ok(set) => {
                let report = set.check_populations(&state.service.populations()?);
                (
                    report.problems.iter().map(|d| d.to_string()).collect(),
                    report.notes,
                )
            }
            Err(error) => (
                error.0.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
                Vec::new(),
            ),
        };
    Ok(ApiJson(PolicyCheck {
        ok: problems.is_empty(),
        problems,
        notes,
    }))
}

/// Re-read the policy directory and apply it to jobs submitted from now on
/// (admin). On any error nothing changes (422 with every problem).
#[utoipa::path(post, path = "/v1/policies/reload", tag = "policies",
    responses((status = 200, body = Vec<PolicySummary>), (status = 403, body = ErrorBody), (status = 422, body = ErrorBody)))]
pub async fn reload_policies(
    State(state): State<AppState>,
    Admin(admin): Admin,
) -> ApiResult<ApiJson<Vec<PolicySummary>>> {
    state.service.reload_policies(&admin.actor()).await?;
    let set = state.service.policies.current();
    Ok(ApiJson(
        set.policies().iter().map(|p| policy_summary(p)).collect(),
    ))
}
