//! Which scorer runs: an administrator approves one module, with its exact
//! parameters, for one scoring policy and one institution, after reviewing
//! it (the institution submits its model once). Scoring refuses any other
//! (module, params) pair. Without this a bank could score one consenting
//! subject again and again with different modules or `{"slice": i}`
//! parameters, each bounded score carrying a few more bits of the
//! subject's rows. Approvals and revocations are audited.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

use crate::store::{Store, StoreError, now};

/// An approval as the API takes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApproval {
    /// The scoring policy's name.
    pub policy: String,
    /// The institution (tenant) that may run it.
    pub institution: String,
    /// SHA-256 of the approved `scorer` module.
    pub module: String,
    /// The exact parameters it runs with (default `{}`).
    #[serde(default)]
    #[schema(value_type = Object)]
    pub params: serde_json::Value,
}

/// A stored approval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Approval {
    pub policy: String,
    pub institution: String,
    pub module: String,
    pub params_sha256: String,
    pub approved_by: String,
    pub approved_at: i64,
    pub revoked_at: Option<i64>,
}

/// The text a scorer receives for `params` (`{}` for none), and so the text
/// an approval's hash is taken over.
pub fn params_text(params: &serde_json::Value) -> String {
    match params {
        serde_json::Value::Null => "{}".to_string(),
        value => value.to_string(),
    }
}

pub fn params_sha256(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// Record (or renew) an approval.
pub async fn approve(
    store: &Store,
    approval: &NewApproval,
    actor: &str,
) -> Result<Approval, StoreError> {
    let hash = params_sha256(&params_text(&approval.params));
    let at = now();
    store.transition(async |tx| {
        sqlx::query(
            "INSERT INTO scoring_approvals (policy, institution, module, params_sha256, approved_by, approved_at) \
             VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (policy, institution, module, params_sha256) \
             DO UPDATE SET approved_by = excluded.approved_by, approved_at = excluded.approved_at, revoked_at = NULL",
        )
        .bind(&approval.policy)
        .bind(&approval.institution)
        .bind(&approval.module)
        .bind(&hash)
        .bind(actor)
        .bind(at)
        .execute(tx.conn())
        .await?;
        tx.record(actor,
            "scoring.approved",
            &approval.module,
            serde_json::json!({ "policy": approval.policy, "institution": approval.institution, "params_sha256": hash }),
        )
        .await?;
        Ok(Approval {
            policy: approval.policy.clone(),
            institution: approval.institution.clone(),
            module: approval.module.clone(),
            params_sha256: hash,
            approved_by: actor.to_string(),
            approved_at: at,
            revoked_at: None,
        })
    }).await
}

/// Whether this exact pair is approved (and not revoked).
pub async fn is_approved(
    store: &Store,
    policy: &str,
    institution: &str,
    module: &str,
    params_sha256: &str,
) -> Result<bool, StoreError> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM scoring_approvals WHERE policy = ? AND institution = ? AND module = ? \
         AND params_sha256 = ? AND revoked_at IS NULL",
    )
    .bind(policy)
    .bind(institution)
    .bind(module)
    .bind(params_sha256)
    .fetch_optional(store.pool())
    .await?;
    Ok(found.is_some())
}

/// Every approval, newest first.
pub async fn list(store: &Store) -> Result<Vec<Approval>, StoreError> {
    let rows = sqlx::query(
        "SELECT policy, institution, module, params_sha256, approved_by, approved_at, revoked_at \
         FROM scoring_approvals ORDER BY approved_at DESC, module",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .iter()
        .map(|row| Approval {
            policy: row.get(0),
            institution: row.get(1),
            module: row.get(2),
            params_sha256: row.get(3),
            approved_by: row.get(4),
            approved_at: row.get(5),
            revoked_at: row.get(6),
        })
        .collect())
}

/// Revoke every approval of `module`; returns how many.
pub async fn revoke(store: &Store, module: &str, actor: &str) -> Result<u64, StoreError> {
    store
        .transition(async |tx| {
            let done = sqlx::query(
        "UPDATE scoring_approvals SET revoked_at = ? WHERE module = ? AND revoked_at IS NULL",
    )
    .bind(now())
    .bind(module)
    .execute(tx.conn())
    .await?;
            tx.record(
                actor,
                "scoring.revoked",
                module,
                serde_json::json!({ "approvals": done.rows_affected() }),
            )
            .await?;
            Ok(done.rows_affected())
        })
        .await
}
