//! Accounts: API tokens with a role and a tenant, and dataset grants.
//!
//! A token is `dsb_<id>_<secret>`: a public 8-byte id (for lookup, listing
//! and revocation) and a 32-byte secret from `ring::rand::SystemRandom`.
//! Only SHA-256 of the secret is stored; authentication looks the token up
//! by id and compares the hashes in constant time. Revocation and expiry
//! are read on every request, so they take effect at once. Every change is
//! in the audit log, in the same transaction.

use std::fmt;
use std::str::FromStr;

use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;
use subtle::ConstantTimeEq;

use crate::store::{Store, StoreError, now};

/// What a principal may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Registers datasets, writes policies, reviews, reads the audit log.
    Admin,
    /// Runs analyses on granted datasets.
    Analyst,
    /// A contest team.
    Contestant,
    /// A financial institution running consented scoring.
    Institution,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Admin,
        Role::Analyst,
        Role::Contestant,
        Role::Institution,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Analyst => "analyst",
            Role::Contestant => "contestant",
            Role::Institution => "institution",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| format!("unknown role {s:?} (admin, analyst, contestant, institution)"))
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub token_id: String,
    pub role: Role,
    pub tenant: String,
}

impl Principal {
    /// How the principal appears in the audit log.
    pub fn actor(&self) -> String {
        format!("{}/{}:{}", self.tenant, self.role, self.token_id)
    }

    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("missing or malformed token")]
    Malformed,
    #[error("unknown token")]
    Unknown,
    #[error("token revoked")]
    Revoked,
    #[error("token expired")]
    Expired,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A stored token, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenInfo {
    pub id: String,
    pub role: Role,
    pub tenant: String,
    pub created_at: i64,
    pub expires_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Tenant names: what shows in audit entries and ownership checks.
pub fn validate_tenant(tenant: &str) -> Result<(), String> {
    let ok = !tenant.is_empty()
        && tenant.len() <= 64
        && tenant
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tenant {tenant:?}: 1 to 64 characters of letters, digits, '-', '_' or '.'"
        ))
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut buffer)
        .expect("system randomness");
    hex::encode(buffer)
}

fn secret_hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// Create a token; returns its record and the token text, which is shown
/// once and never stored.
pub async fn create_token(
    store: &Store,
    actor: &str,
    role: Role,
    tenant: &str,
    expires_at: Option<i64>,
) -> Result<(TokenInfo, String), StoreError> {
    validate_tenant(tenant).map_err(StoreError::Record)?;
    let id = random_hex(8);
    let secret = random_hex(32);
    let created_at = now();
    store.transition(async |tx| {
        sqlx::query("INSERT INTO tokens (id, secret_sha256, role, tenant, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&id)
            .bind(secret_hash(&secret))
            .bind(role.name())
            .bind(tenant)
            .bind(created_at)
            .bind(expires_at)
            .execute(tx.conn())
            .await?;
        tx.record(
            actor,
            "token.created",
            &id,
            serde_json::json!({ "role": role, "tenant": tenant, "expires_at": expires_at }),
        )
        .await?;
        let info = TokenInfo {
            id: id.clone(),
            role,
            tenant: tenant.into(),
            created_at,
            expires_at,
            revoked_at: None,
        };
        Ok((info, format!("dsb_{id}_{secret}")))
    }).await
}

/// Revoke a token at once. Returns false when there is no such token.
pub async fn revoke_token(store: &Store, actor: &str, id: &str) -> Result<bool, StoreError> {
    store
        .transition(async |tx| {
            let updated =
                sqlx::query("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL")
                    .bind(now())
                    .bind(id)
                    .execute(tx.conn())
                    .await?;
            if updated.rows_affected() == 0 {
                return Ok(false);
            }
            tx.record(actor, "token.revoked", id, serde_json::json!({}))
                .await?;
            Ok(true)
        })
        .await
}

pub async fn list_tokens(store: &Store) -> Result<Vec<TokenInfo>, StoreError> {
    let rows = sqlx::query("SELECT id, role, tenant, created_at, expires_at, revoked_at FROM tokens ORDER BY created_at, id")
        .fetch_all(store.pool())
        .await?;
    rows.iter()
        .map(|row| {
            Ok(TokenInfo {
                id: row.get(0),
                role: row
                    .get::<String, _>(1)
                    .parse()
                    .map_err(StoreError::Record)?,
                tenant: row.get(2),
                created_at: row.get(3),
                expires_at: row.get(4),
                revoked_at: row.get(5),
            })
        })
        .collect()
}

/// Resolve a presented token to its principal.
pub async fn authenticate(store: &Store, token: &str) -> Result<Principal, AuthError> {
    let (id, secret) = token
        .strip_prefix("dsb_")
        .and_then(|rest| rest.split_once('_'))
        .filter(|(id, secret)| {
            id.len() == 16
                && secret.len() == 64
                && id
                    .bytes()
                    .chain(secret.bytes())
                    .all(|b| b.is_ascii_hexdigit())
        })
        .ok_or(AuthError::Malformed)?;
    let row = sqlx::query(
        "SELECT secret_sha256, role, tenant, expires_at, revoked_at FROM tokens WHERE id = ?",
    )
    .bind(id)
    .fetch_optional(store.pool())
    .await
    .map_err(StoreError::from)?
    .ok_or(AuthError::Unknown)?;
    let stored: String = row.get(0);
    if !bool::from(stored.as_bytes().ct_eq(secret_hash(secret).as_bytes())) {
        return Err(AuthError::Unknown);
    }
    if row.get::<Option<i64>, _>(4).is_some() {
        return Err(AuthError::Revoked);
    }
    if row.get::<Option<i64>, _>(3).is_some_and(|at| at <= now()) {
        return Err(AuthError::Expired);
    }
    Ok(Principal {
        token_id: id.into(),
        role: row
            .get::<String, _>(1)
            .parse()
            .map_err(|e: String| AuthError::Store(StoreError::Record(e)))?,
        tenant: row.get(2),
    })
}

/// A tenant's access to a conditional or restricted dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Grant {
    pub tenant: String,
    pub dataset: String,
    pub granted_by: String,
    pub granted_at: i64,
    pub expires_at: Option<i64>,
}

/// Grant `tenant` access to `dataset` (replacing an earlier grant).
pub async fn grant(
    store: &Store,
    actor: &str,
    tenant: &str,
    dataset: &str,
    expires_at: Option<i64>,
) -> Result<Grant, StoreError> {
    store
        .transition(async |tx| {
            let grant = grant_scoped(tx, actor, tenant, dataset, expires_at, None, None).await?;
            Ok(grant)
        })
        .await
}

/// Grant inside a write transaction, optionally limited to `columns` and
/// release `modes` (`None`: all), replacing an earlier grant; audited.
pub async fn grant_scoped(
    tx: &mut crate::store::Transaction<'_>,
    actor: &str,
    tenant: &str,
    dataset: &str,
    expires_at: Option<i64>,
    columns: Option<&[String]>,
    modes: Option<&[String]>,
) -> Result<Grant, StoreError> {
    validate_tenant(tenant).map_err(StoreError::Record)?;
    let granted_at = now();
    sqlx::query("DELETE FROM grants WHERE tenant = ? AND dataset = ?")
        .bind(tenant)
        .bind(dataset)
        .execute(tx.conn())
        .await?;
    let json =
        |list: Option<&[String]>| list.map(|l| serde_json::to_string(l).expect("serialises"));
    sqlx::query("INSERT INTO grants (tenant, dataset, granted_by, granted_at, expires_at, columns, modes) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(tenant)
        .bind(dataset)
        .bind(actor)
        .bind(granted_at)
        .bind(expires_at)
        .bind(json(columns))
        .bind(json(modes))
        .execute(tx.conn())
        .await?;
    tx.record(actor,
        "grant.added",
        dataset,
        serde_json::json!({ "tenant": tenant, "expires_at": expires_at, "columns": columns, "modes": modes }),
    )
    .await?;
    Ok(Grant {
        tenant: tenant.into(),
        dataset: dataset.into(),
        granted_by: actor.into(),
        granted_at,
        expires_at,
    })
}

/// What a live grant covers: `None` lists mean everything.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct GrantScope {
    pub columns: Option<Vec<String>>,
    pub modes: Option<Vec<String>>,
}

/// The scope of `tenant`'s live grant for `dataset`, if any.
pub async fn grant_scope(
    store: &Store,
    tenant: &str,
    dataset: &str,
) -> Result<Option<GrantScope>, StoreError> {
    let row = sqlx::query(
        "SELECT expires_at, columns, modes FROM grants WHERE tenant = ? AND dataset = ?",
    )
    .bind(tenant)
    .bind(dataset)
    .fetch_optional(store.pool())
    .await?;
    let Some(row) = row else { return Ok(None) };
    let expires: Option<i64> = row.get(0);
    if expires.is_some_and(|at| at <= now()) {
        return Ok(None);
    }
    let list = |i: usize| -> Result<Option<Vec<String>>, StoreError> {
        row.get::<Option<String>, _>(i)
            .map(|t| serde_json::from_str(&t).map_err(|e| StoreError::Record(e.to_string())))
            .transpose()
    };
    Ok(Some(GrantScope {
        columns: list(1)?,
        modes: list(2)?,
    }))
}

/// Whether `tenant` holds a live grant for `dataset`.
pub async fn has_grant(store: &Store, tenant: &str, dataset: &str) -> Result<bool, StoreError> {
    let expires: Option<Option<i64>> =
        sqlx::query_scalar("SELECT expires_at FROM grants WHERE tenant = ? AND dataset = ?")
            .bind(tenant)
            .bind(dataset)
            .fetch_optional(store.pool())
            .await?;
    Ok(matches!(expires, Some(None)) || matches!(expires, Some(Some(at)) if at > now()))
}

pub async fn list_grants(store: &Store) -> Result<Vec<Grant>, StoreError> {
    let rows = sqlx::query("SELECT tenant, dataset, granted_by, granted_at, expires_at FROM grants ORDER BY dataset, tenant")
        .fetch_all(store.pool())
        .await?;
    Ok(rows
        .iter()
        .map(|row| Grant {
            tenant: row.get(0),
            dataset: row.get(1),
            granted_by: row.get(2),
            granted_at: row.get(3),
            expires_at: row.get(4),
        })
        .collect())
}
