//! Privacy budgets per (principal, dataset), in the store.
//!
//! A charge is one `BEGIN IMMEDIATE` transaction: read what was spent,
//! refuse if the charge would pass a cap, else write the charge and its
//! audit entry, commit. Only after the commit does the caller compute and
//! release the noisy answer, so a crash after the charge leaves it charged
//! (the safe side), and concurrent jobs serialise on the write lock and can
//! never overspend. Amounts are integers (ε in millionths, δ in 10⁻¹⁵),
//! charges rounded up and caps rounded down.
//!
//! A principal's cap is the policy's `epsilon_total` / `delta_total` plus
//! whatever an administrator granted on top (audited, reason required);
//! nothing ever refunds spent budget, and a policy change moves only the
//! cap. A policy may also cap the total over all principals of a dataset
//! (`epsilon_dataset`), against colluding accounts.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::{Store, StoreError, audit, now};

const EPSILON_UNIT: f64 = 1e6;
const DELTA_UNIT: f64 = 1e15;

/// ε and δ of one charge or one cap.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cost {
    pub epsilon: f64,
    pub delta: f64,
}

fn charge_units(cost: Cost) -> (i64, i64) {
    (
        (cost.epsilon * EPSILON_UNIT).ceil() as i64,
        (cost.delta * DELTA_UNIT).ceil() as i64,
    )
}

fn cap_units(cost: Cost) -> (i64, i64) {
    (
        (cost.epsilon * EPSILON_UNIT).floor() as i64,
        (cost.delta * DELTA_UNIT).floor() as i64,
    )
}

fn cost_of(epsilon: i64, delta: i64) -> Cost {
    Cost {
        epsilon: epsilon as f64 / EPSILON_UNIT,
        delta: delta as f64 / DELTA_UNIT,
    }
}

/// The caps a dataset's policy sets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Caps {
    /// Per principal.
    pub total: Cost,
    /// Over all principals together (ε), if set.
    pub dataset_epsilon: Option<f64>,
}

/// Why a charge was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    #[error("budget-exhausted: {0}")]
    Exhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One principal's budget on one dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Budget {
    pub principal: String,
    pub dataset: String,
    pub cap: Cost,
    pub spent: Cost,
    pub remaining: Cost,
}

async fn sums(
    conn: &mut sqlx::SqliteConnection,
    sql: &'static str,
    binds: &[&str],
) -> Result<(i64, i64), StoreError> {
    let mut query = sqlx::query(sql);
    for bind in binds {
        query = query.bind(*bind);
    }
    let row = query.fetch_one(&mut *conn).await?;
    Ok((
        row.get::<Option<i64>, _>(0).unwrap_or(0),
        row.get::<Option<i64>, _>(1).unwrap_or(0),
    ))
}

async fn granted(
    conn: &mut sqlx::SqliteConnection,
    principal: &str,
    dataset: &str,
) -> Result<(i64, i64), StoreError> {
    sums(
        conn,
        "SELECT SUM(epsilon_micro), SUM(delta_femto) FROM dp_budget_grants WHERE principal = ? AND dataset = ?",
        &[principal, dataset],
    )
    .await
}

async fn spent(
    conn: &mut sqlx::SqliteConnection,
    principal: &str,
    dataset: &str,
) -> Result<(i64, i64), StoreError> {
    sums(
        conn,
        "SELECT SUM(epsilon_micro), SUM(delta_femto) FROM dp_charges WHERE principal = ? AND dataset = ?",
        &[principal, dataset],
    )
    .await
}

/// Charge `cost` to `principal` on `dataset` for `job_id`, with its audit
/// entry, or refuse without writing anything.
pub async fn charge(
    store: &Store,
    principal: &str,
    dataset: &str,
    job_id: &str,
    cost: Cost,
    caps: Caps,
) -> Result<(), ChargeError> {
    let (epsilon, delta) = charge_units(cost);
    let mut tx = store.begin_write().await?;
    let (spent_epsilon, spent_delta) = spent(&mut tx, principal, dataset).await?;
    let (granted_epsilon, granted_delta) = granted(&mut tx, principal, dataset).await?;
    let (cap_epsilon, cap_delta) = cap_units(caps.total);
    let (cap_epsilon, cap_delta) = (cap_epsilon + granted_epsilon, cap_delta + granted_delta);
    if spent_epsilon + epsilon > cap_epsilon || spent_delta + delta > cap_delta {
        let left = cost_of(cap_epsilon - spent_epsilon, cap_delta - spent_delta);
        return Err(ChargeError::Exhausted(format!(
            "this query needs ε={} δ={:e}; {dataset} has ε={} δ={:e} left for you",
            cost.epsilon, cost.delta, left.epsilon, left.delta
        )));
    }
    if let Some(dataset_cap) = caps.dataset_epsilon {
        let (all_epsilon, _) = sums(
            &mut tx,
            "SELECT SUM(epsilon_micro), SUM(delta_femto) FROM dp_charges WHERE dataset = ?",
            &[dataset],
        )
        .await?;
        if all_epsilon + epsilon
            > cap_units(Cost {
                epsilon: dataset_cap,
                delta: 0.0,
            })
            .0
        {
            return Err(ChargeError::Exhausted(format!(
                "{dataset}'s budget over all users is spent"
            )));
        }
    }
    sqlx::query("INSERT INTO dp_charges (principal, dataset, job_id, epsilon_micro, delta_femto, charged_at) VALUES (?, ?, ?, ?, ?, ?)")
        .bind(principal)
        .bind(dataset)
        .bind(job_id)
        .bind(epsilon)
        .bind(delta)
        .bind(now())
        .execute(&mut *tx)
        .await
        .map_err(StoreError::from)?;
    audit::append(
        &mut tx,
        "system",
        "budget.charged",
        job_id,
        serde_json::json!({
            "principal": principal,
            "dataset": dataset,
            "epsilon": cost_of(epsilon, delta).epsilon,
            "delta": cost_of(epsilon, delta).delta,
        }),
    )
    .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// Add budget on top of the policy's cap (an administrator's action).
pub async fn grant(
    store: &Store,
    actor: &str,
    principal: &str,
    dataset: &str,
    amount: Cost,
    reason: &str,
) -> Result<(), StoreError> {
    let (epsilon, delta) = cap_units(amount);
    let mut tx = store.begin_write().await?;
    sqlx::query("INSERT INTO dp_budget_grants (principal, dataset, epsilon_micro, delta_femto, reason, actor, granted_at) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .bind(principal)
        .bind(dataset)
        .bind(epsilon)
        .bind(delta)
        .bind(reason)
        .bind(actor)
        .bind(now())
        .execute(&mut *tx)
        .await?;
    audit::append(
        &mut tx,
        actor,
        "budget.granted",
        &format!("{principal}/{dataset}"),
        serde_json::json!({ "epsilon": amount.epsilon, "delta": amount.delta, "reason": reason }),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A principal's budget on a dataset under `caps`.
pub async fn budget(
    store: &Store,
    principal: &str,
    dataset: &str,
    caps: Caps,
) -> Result<Budget, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let (spent_epsilon, spent_delta) = spent(&mut conn, principal, dataset).await?;
    let (granted_epsilon, granted_delta) = granted(&mut conn, principal, dataset).await?;
    let (cap_epsilon, cap_delta) = cap_units(caps.total);
    let (cap_epsilon, cap_delta) = (cap_epsilon + granted_epsilon, cap_delta + granted_delta);
    Ok(Budget {
        principal: principal.to_string(),
        dataset: dataset.to_string(),
        cap: cost_of(cap_epsilon, cap_delta),
        spent: cost_of(spent_epsilon, spent_delta),
        remaining: cost_of(
            (cap_epsilon - spent_epsilon).max(0),
            (cap_delta - spent_delta).max(0),
        ),
    })
}

/// Everything charged for one job.
pub async fn job_cost(store: &Store, job_id: &str) -> Result<Cost, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let (epsilon, delta) = sums(
        &mut conn,
        "SELECT SUM(epsilon_micro), SUM(delta_femto) FROM dp_charges WHERE job_id = ?",
        &[job_id],
    )
    .await?;
    Ok(cost_of(epsilon, delta))
}
