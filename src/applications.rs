//! Conditional-access applications: a user applies for a `conditional`
//! dataset (purpose, columns, modes, term, intended outputs) and accepts
//! its data-use agreement; an administrator approves (optionally narrowing
//! columns, modes and term), which creates the grant, or rejects with a
//! reason. Answers are due within a number of working days (weekends and
//! configured holidays skipped); overdue applications are flagged. Every
//! step is audited.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::{Store, StoreError, now};

const DAY: i64 = 86_400;

/// The last second of the `days`-th working day after `from` (its day not
/// counted), skipping Saturdays, Sundays and `holidays` (days since the
/// Unix epoch).
pub fn deadline(from: i64, days: u32, holidays: &[i64]) -> i64 {
    let mut day = from.div_euclid(DAY);
    let mut left = days;
    while left > 0 {
        day += 1;
        // 1970-01-01 was a Thursday: Monday is 0.
        let weekday = (day + 3).rem_euclid(7);
        if weekday < 5 && !holidays.contains(&day) {
            left -= 1;
        }
    }
    (day + 1) * DAY - 1
}

/// A `YYYY-MM-DD` date as days since the Unix epoch.
pub fn parse_day(text: &str) -> Option<i64> {
    let at = humantime::parse_rfc3339(&format!("{text}T00:00:00Z")).ok()?;
    Some(
        at.duration_since(std::time::UNIX_EPOCH)
            .ok()?
            .as_secs()
            .div_euclid(DAY as u64) as i64,
    )
}

/// What an applicant sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApplication {
    pub dataset: String,
    pub purpose: String,
    /// Columns from the dictionary.
    pub columns: Vec<String>,
    /// Release modes, e.g. `aggregate`, `dp`.
    pub modes: Vec<String>,
    /// Days of access asked for.
    pub term_days: u32,
    pub intended_outputs: String,
    /// SHA-256 of the data-use agreement text the applicant accepts (it
    /// must be the current one).
    pub agreement_sha256: String,
}

/// An administrator's approval, optionally narrower than asked.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub columns: Option<Vec<String>>,
    pub modes: Option<Vec<String>>,
    pub term_days: Option<u32>,
}

/// An application as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Application {
    pub id: String,
    pub tenant: String,
    pub applicant: String,
    #[serde(flatten)]
    pub request: NewApplication,
    pub agreement_version: String,
    pub accepted_at: i64,
    pub submitted_at: i64,
    /// When the answer is due.
    pub deadline_at: i64,
    /// `pending`, `approved` or `rejected`.
    pub state: String,
    /// Pending past the deadline.
    pub overdue: bool,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    pub reason: Option<String>,
}

fn from_row(row: &sqlx::sqlite::SqliteRow, at: i64) -> Result<Application, StoreError> {
    let list = |name: &str| -> Result<Vec<String>, StoreError> {
        serde_json::from_str(&row.get::<String, _>(name))
            .map_err(|e| StoreError::Record(e.to_string()))
    };
    let state: String = row.get("state");
    let deadline_at: i64 = row.get("deadline_at");
    Ok(Application {
        id: row.get("id"),
        tenant: row.get("tenant"),
        applicant: row.get("applicant"),
        request: NewApplication {
            dataset: row.get("dataset"),
            purpose: row.get("purpose"),
            columns: list("columns")?,
            modes: list("modes")?,
            term_days: row.get::<i64, _>("term_days") as u32,
            intended_outputs: row.get("intended_outputs"),
            agreement_sha256: row.get("agreement_sha256"),
        },
        agreement_version: row.get("agreement_version"),
        accepted_at: row.get("accepted_at"),
        submitted_at: row.get("submitted_at"),
        overdue: state == "pending" && at > deadline_at,
        deadline_at,
        state,
        decided_by: row.get("decided_by"),
        decided_at: row.get("decided_at"),
        reason: row.get("reason"),
    })
}

/// Record an application (the caller has checked it against the dataset).
pub async fn submit(
    store: &Store,
    tenant: &str,
    applicant: &str,
    request: &NewApplication,
    agreement_version: &str,
    deadline_at: i64,
) -> Result<Application, StoreError> {
    let id = crate::store::jobs::new_job_id();
    let at = now();
    store.transition(async |tx| {
        sqlx::query("INSERT INTO applications (id, tenant, applicant, dataset, purpose, columns, modes, term_days, intended_outputs, agreement_version, agreement_sha256, accepted_at, submitted_at, deadline_at, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'pending')")
            .bind(&id)
            .bind(tenant)
            .bind(applicant)
            .bind(&request.dataset)
            .bind(&request.purpose)
            .bind(serde_json::to_string(&request.columns).expect("serialises"))
            .bind(serde_json::to_string(&request.modes).expect("serialises"))
            .bind(i64::from(request.term_days))
            .bind(&request.intended_outputs)
            .bind(agreement_version)
            .bind(&request.agreement_sha256)
            .bind(at)
            .bind(at)
            .bind(deadline_at)
            .execute(tx.conn())
            .await?;
        tx.record(
            applicant,
            "application.submitted",
            &id,
            serde_json::json!({
                "dataset": request.dataset,
                "columns": request.columns,
                "modes": request.modes,
                "term_days": request.term_days,
                "agreement_version": agreement_version,
                "agreement_sha256": request.agreement_sha256,
                "accepted_at": at,
            }),
        )
        .await?;
        Ok::<_, StoreError>(())
    }).await?;
    get(store, &id)
        .await?
        .ok_or_else(|| StoreError::Record("lost an application".into()))
}

pub async fn get(store: &Store, id: &str) -> Result<Option<Application>, StoreError> {
    let row = sqlx::query("SELECT * FROM applications WHERE id = ?")
        .bind(id)
        .fetch_optional(store.pool())
        .await?;
    row.map(|r| from_row(&r, now())).transpose()
}

/// All applications, or one tenant's, oldest first.
pub async fn list(store: &Store, tenant: Option<&str>) -> Result<Vec<Application>, StoreError> {
    let rows = match tenant {
        Some(tenant) => {
            sqlx::query("SELECT * FROM applications WHERE tenant = ? ORDER BY submitted_at, id")
                .bind(tenant)
                .fetch_all(store.pool())
                .await?
        }
        None => {
            sqlx::query("SELECT * FROM applications ORDER BY submitted_at, id")
                .fetch_all(store.pool())
                .await?
        }
    };
    let at = now();
    rows.iter().map(|r| from_row(r, at)).collect()
}

/// Pending applications past their deadline.
pub async fn overdue(store: &Store) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM applications WHERE state = 'pending' AND deadline_at < ?",
    )
    .bind(now())
    .fetch_one(store.pool())
    .await?)
}

/// Why a decision was refused.
/// An approval that asks for more than the application did.
#[derive(Debug, thiserror::Error)]
pub enum Widening {
    #[error("{what}: {extra} was not applied for; an approval can only narrow")]
    NotAppliedFor { what: &'static str, extra: String },
    #[error("term_days: at least 1, at most what was applied for")]
    TermDays,
}

/// Why an application is refused before it is recorded.
#[derive(Debug, thiserror::Error)]
pub enum ApplicationProblem {
    #[error("{0} is open: no application needed")]
    OpenDataset(String),
    #[error("purpose and intended_outputs: say what and why")]
    NoPurpose,
    #[error("columns: one or more columns of the dictionary")]
    Columns,
    #[error("modes: one or more of {0:?}")]
    Modes(Vec<String>),
    #[error("term_days: 1 to 366")]
    TermDays,
    #[error("{0} has no data-use agreement to accept yet")]
    NoAgreement(String),
    #[error("agreement_sha256: accept the current agreement (version {version}, sha256 {sha256})")]
    StaleAgreement { version: String, sha256: String },
}

#[derive(Debug, thiserror::Error)]
pub enum DecisionError {
    #[error("no application {0}")]
    Unknown(String),
    #[error("the application is already {0}")]
    Decided(String),
    #[error("{0}")]
    Wider(Widening),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The application `id`, if it still waits for a decision.
async fn pending(store: &Store, id: &str) -> Result<Application, DecisionError> {
    let application = get(store, id)
        .await?
        .ok_or_else(|| DecisionError::Unknown(id.into()))?;
    if application.state != "pending" {
        return Err(DecisionError::Decided(application.state));
    }
    Ok(application)
}

/// The error for a decision that lost the race to a concurrent one.
async fn decided_meanwhile(store: &Store, id: &str) -> DecisionError {
    match pending(store, id).await {
        Err(error) => error,
        Ok(_) => DecisionError::Decided("pending".into()),
    }
}

/// Approve: the grant is the application narrowed by `approval`, in the
/// same transaction as the decision and its audit entries.
pub async fn approve(
    store: &Store,
    actor: &str,
    id: &str,
    approval: &Approval,
) -> Result<Application, DecisionError> {
    let application = pending(store, id).await?;
    let asked = &application.request;
    let narrower = |given: &Option<Vec<String>>, asked: &[String], what: &'static str| {
        let given = given.clone().unwrap_or_else(|| asked.to_vec());
        match given.iter().find(|g| !asked.contains(g)) {
            Some(extra) => Err(DecisionError::Wider(Widening::NotAppliedFor {
                what,
                extra: extra.clone(),
            })),
            None => Ok(given),
        }
    };
    let columns = narrower(&approval.columns, &asked.columns, "columns")?;
    let modes = narrower(&approval.modes, &asked.modes, "modes")?;
    let term_days = approval.term_days.unwrap_or(asked.term_days);
    if term_days > asked.term_days || term_days == 0 {
        return Err(DecisionError::Wider(Widening::TermDays));
    }
    let at = now();
    let until = at + i64::from(term_days) * DAY;
    let decided = store.transition(async |tx| {
        let updated = sqlx::query("UPDATE applications SET state = 'approved', decided_by = ?, decided_at = ? WHERE id = ? AND state = 'pending'")
            .bind(actor)
            .bind(at)
            .bind(id)
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
        if updated.rows_affected() == 0 {
            // Another decision committed since `pending` read it; nothing of
            // this one is written.
            return Ok(false);
        }
        crate::accounts::grant_scoped(
            tx,
            actor,
            &application.tenant,
            &asked.dataset,
            Some(until),
            Some(&columns),
            Some(&modes),
        )
        .await?;
        tx.record(
            actor,
            "application.approved",
            id,
            serde_json::json!({ "columns": columns, "modes": modes, "until": until }),
        )
        .await?;
        Ok::<_, DecisionError>(true)
    }).await?;
    if !decided {
        return Err(decided_meanwhile(store, id).await);
    }
    Ok(get(store, id).await?.expect("just decided"))
}

/// Reject with a reason the applicant sees.
pub async fn reject(
    store: &Store,
    actor: &str,
    id: &str,
    reason: &str,
) -> Result<Application, DecisionError> {
    pending(store, id).await?;
    let decided = store.transition(async |tx| {
        let updated = sqlx::query("UPDATE applications SET state = 'rejected', decided_by = ?, decided_at = ?, reason = ? WHERE id = ? AND state = 'pending'")
            .bind(actor)
            .bind(now())
            .bind(reason)
            .bind(id)
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
        if updated.rows_affected() == 0 {
            return Ok(false);
        }
        tx.record(
            actor,
            "application.rejected",
            id,
            serde_json::json!({ "reason": reason }),
        )
        .await?;
        Ok::<_, DecisionError>(true)
    }).await?;
    if !decided {
        return Err(decided_meanwhile(store, id).await);
    }
    Ok(get(store, id).await?.expect("just decided"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_skip_weekends_and_holidays() {
        // Friday 2026-11-27 12:00 UTC + 5 working days: Friday 2026-12-04.
        let friday = parse_day("2026-11-27").unwrap() * DAY + 12 * 3600;
        let due = deadline(friday, 5, &[]);
        assert_eq!(due.div_euclid(DAY), parse_day("2026-12-04").unwrap());
        // A holiday on Tuesday moves it to Monday 2026-12-07.
        let holiday = parse_day("2026-12-01").unwrap();
        let due = deadline(friday, 5, &[holiday]);
        assert_eq!(due.div_euclid(DAY), parse_day("2026-12-07").unwrap());
        assert_eq!(due % DAY, DAY - 1, "the end of that day");
        assert_eq!(parse_day("2026-13-01"), None);
    }
}
