//! Subjects' authorisations: an enterprise (the privacy unit) lets one
//! institution score it for one purpose over named datasets, for a time,
//! with a reference to the signed consent document. Created one by one or
//! imported in bulk, revocable at once, every change audited.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::{Store, StoreError, now};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAuthorisation {
    /// The subject's id in the data (e.g. the unified social credit code).
    pub subject: String,
    /// The institution (tenant) allowed to score.
    pub tenant: String,
    pub purpose: String,
    pub datasets: Vec<String>,
    /// Seconds since the Unix epoch.
    pub valid_from: i64,
    pub valid_until: i64,
    /// SHA-256 of the signed consent document.
    pub consent_sha256: String,
    /// Where the consent document is kept.
    pub consent_uri: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Authorisation {
    pub id: String,
    #[serde(flatten)]
    pub terms: NewAuthorisation,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

impl NewAuthorisation {
    /// Field checks; the message names the field.
    pub fn check(&self) -> Result<(), String> {
        crate::accounts::validate_tenant(&self.tenant)?;
        if self.subject.is_empty() || self.subject.len() > 128 {
            return Err("subject: 1 to 128 characters".into());
        }
        if self.purpose.is_empty()
            || self.purpose.len() > 64
            || !self
                .purpose
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(
                "purpose: lower-case letters, digits and '-', e.g. credit-assessment".into(),
            );
        }
        if self.datasets.is_empty() {
            return Err("datasets: at least one".into());
        }
        if self.valid_until <= self.valid_from {
            return Err("valid_until must be after valid_from".into());
        }
        if self.consent_sha256.len() != 64
            || !self.consent_sha256.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Err("consent_sha256: 64 hex digits".into());
        }
        if self.consent_uri.is_empty() {
            return Err("consent_uri: where the signed consent is kept".into());
        }
        Ok(())
    }
}

/// Record authorisations in one transaction (all or none), each audited.
pub async fn add(
    store: &Store,
    actor: &str,
    terms: &[NewAuthorisation],
) -> Result<Vec<Authorisation>, StoreError> {
    for (index, t) in terms.iter().enumerate() {
        t.check()
            .map_err(|m| StoreError::Record(format!("authorisation {}: {m}", index + 1)))?;
    }
    let created_at = now();
    store.transition(async |tx| {
        let mut added = Vec::new();
        for t in terms {
            let id = crate::store::jobs::new_job_id();
            sqlx::query("INSERT INTO authorisations (id, subject, tenant, purpose, datasets, valid_from, valid_until, consent_sha256, consent_uri, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
                .bind(&id)
                .bind(&t.subject)
                .bind(&t.tenant)
                .bind(&t.purpose)
                .bind(serde_json::to_string(&t.datasets).expect("serialisable"))
                .bind(t.valid_from)
                .bind(t.valid_until)
                .bind(&t.consent_sha256)
                .bind(&t.consent_uri)
                .bind(created_at)
                .execute(tx.conn())
                .await?;
            tx.record(
                actor,
                "authorisation.added",
                &id,
                serde_json::json!({
                    "subject": t.subject, "tenant": t.tenant, "purpose": t.purpose,
                    "datasets": t.datasets, "valid_from": t.valid_from,
                    "valid_until": t.valid_until, "consent_sha256": t.consent_sha256,
                }),
            )
            .await?;
            added.push(Authorisation {
                id,
                terms: t.clone(),
                created_at,
                revoked_at: None,
            });
        }
        Ok(added)
    }).await
}

/// Revoke at once; false when unknown or already revoked.
pub async fn revoke(store: &Store, actor: &str, id: &str) -> Result<bool, StoreError> {
    store
        .transition(async |tx| {
            let updated = sqlx::query(
                "UPDATE authorisations SET revoked_at = ? WHERE id = ? AND revoked_at IS NULL",
            )
            .bind(now())
            .bind(id)
            .execute(tx.conn())
            .await?;
            if updated.rows_affected() == 0 {
                return Ok(false);
            }
            tx.record(actor, "authorisation.revoked", id, serde_json::json!({}))
                .await?;
            Ok(true)
        })
        .await
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> Result<Authorisation, StoreError> {
    Ok(Authorisation {
        id: row.get(0),
        terms: NewAuthorisation {
            subject: row.get(1),
            tenant: row.get(2),
            purpose: row.get(3),
            datasets: serde_json::from_str(&row.get::<String, _>(4))
                .map_err(|e| StoreError::Record(e.to_string()))?,
            valid_from: row.get(5),
            valid_until: row.get(6),
            consent_sha256: row.get(7),
            consent_uri: row.get(8),
        },
        created_at: row.get(9),
        revoked_at: row.get(10),
    })
}

/// Every authorisation, or a subject's.
pub async fn list(store: &Store, subject: Option<&str>) -> Result<Vec<Authorisation>, StoreError> {
    let rows = match subject {
        Some(subject) => sqlx::query("SELECT id, subject, tenant, purpose, datasets, valid_from, valid_until, consent_sha256, consent_uri, created_at, revoked_at FROM authorisations WHERE subject = ? ORDER BY created_at, id")
            .bind(subject)
            .fetch_all(store.pool())
            .await?,
        None => sqlx::query("SELECT id, subject, tenant, purpose, datasets, valid_from, valid_until, consent_sha256, consent_uri, created_at, revoked_at FROM authorisations ORDER BY created_at, id")
            .fetch_all(store.pool())
            .await?,
    };
    rows.iter().map(from_row).collect()
}

/// Whether a live authorisation lets `tenant` score `subject` for
/// `purpose` over every one of `datasets` at time `at`.
pub async fn is_authorised(
    store: &Store,
    subject: &str,
    tenant: &str,
    purpose: &str,
    datasets: &[String],
    at: i64,
) -> Result<bool, StoreError> {
    let rows = sqlx::query("SELECT datasets FROM authorisations WHERE subject = ? AND tenant = ? AND purpose = ? AND revoked_at IS NULL AND valid_from <= ? AND valid_until > ?")
        .bind(subject)
        .bind(tenant)
        .bind(purpose)
        .bind(at)
        .bind(at)
        .fetch_all(store.pool())
        .await?;
    Ok(rows.iter().any(|row| {
        serde_json::from_str::<Vec<String>>(&row.get::<String, _>(0))
            .is_ok_and(|covered| datasets.iter().all(|d| covered.contains(d)))
    }))
}

/// Parse a consents CSV: a header naming the fields of
/// [`NewAuthorisation`] (datasets separated by `;`), one authorisation a row.
pub fn parse_csv(text: &str) -> Result<Vec<NewAuthorisation>, String> {
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let (_, header) = lines.next().ok_or("empty file")?;
    let columns: Vec<&str> = header.split(',').map(str::trim).collect();
    let expected = [
        "subject",
        "tenant",
        "purpose",
        "datasets",
        "valid_from",
        "valid_until",
        "consent_sha256",
        "consent_uri",
    ];
    if columns != expected {
        return Err(format!("line 1: the header must be {}", expected.join(",")));
    }
    lines
        .map(|(number, line)| {
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            if fields.len() != expected.len() {
                return Err(format!(
                    "line {}: {} fields, expected 8",
                    number + 1,
                    fields.len()
                ));
            }
            let time = |i: usize| {
                fields[i]
                    .parse::<i64>()
                    .map_err(|_| format!("line {}: {}: not a Unix time", number + 1, expected[i]))
            };
            let terms = NewAuthorisation {
                subject: fields[0].into(),
                tenant: fields[1].into(),
                purpose: fields[2].into(),
                datasets: fields[3].split(';').map(|d| d.trim().to_string()).collect(),
                valid_from: time(4)?,
                valid_until: time(5)?,
                consent_sha256: fields[6].into(),
                consent_uri: fields[7].into(),
            };
            terms
                .check()
                .map_err(|m| format!("line {}: {m}", number + 1))?;
            Ok(terms)
        })
        .collect()
}
