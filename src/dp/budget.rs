//! Privacy budgets per (principal, population), in the store.
//!
//! A budget belongs to a **population**, not a dataset: datasets whose
//! privacy units are the same firms (the manifest's `population`) share one
//! ledger per principal and one cap over all principals, since a query on
//! any of them spends the same firms' privacy.
//!
//! A charge is one `BEGIN IMMEDIATE` transaction: read what was spent,
//! refuse if the charge would pass a cap, else write the charge and its
//! audit entry, commit. Only after the commit does the caller compute and
//! release the noisy answer, so a crash after the charge leaves it charged
//! (the safe side), and concurrent jobs serialise on the write lock and can
//! never overspend. Amounts are integers (ε in millionths, δ in 10⁻¹⁵, ρ
//! in 10⁻⁹), charges rounded up and caps rounded down.
//!
//! A principal's cap is the policy's `epsilon_total` / `delta_total` plus
//! whatever an administrator granted on top (audited, reason required);
//! nothing ever refunds spent budget, and a policy change moves only the
//! cap. A policy may also cap the total over all principals of the
//! population (`epsilon_dataset`, `delta_dataset`), against colluding
//! accounts.
//!
//! Under approximate accounting every charge's (ε, δ) adds up (basic
//! composition). Under zCDP accounting queries are charged ρ; the ρ charges
//! add up and are converted to (ε, δ) once, at the δ the cap leaves after
//! any approximate charges, and that ε plus the approximate charges' ε must
//! stay within the cap ([`zcdp_epsilon`]).

use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::store::{Store, StoreError, now};

const EPSILON_UNIT: f64 = 1e6;
const DELTA_UNIT: f64 = 1e15;
const RHO_UNIT: f64 = 1e9;

/// ε and δ of one charge or one cap, and ρ of a charge made under zCDP
/// accounting.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Cost {
    pub epsilon: f64,
    pub delta: f64,
    /// zCDP: the charge's ρ (0 under approximate-DP accounting).
    #[serde(default)]
    pub rho: f64,
}

/// What a set of charges adds up to, in integer units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Units {
    epsilon: i64,
    delta: i64,
    rho: i64,
}

impl std::ops::Add for Units {
    type Output = Units;
    fn add(self, other: Units) -> Units {
        Units {
            epsilon: self.epsilon + other.epsilon,
            delta: self.delta + other.delta,
            rho: self.rho + other.rho,
        }
    }
}

fn charge_units(cost: Cost) -> Units {
    Units {
        epsilon: (cost.epsilon * EPSILON_UNIT).ceil() as i64,
        delta: (cost.delta * DELTA_UNIT).ceil() as i64,
        rho: (cost.rho * RHO_UNIT).ceil() as i64,
    }
}

/// ε of ρ-zCDP at δ: ρ + 2√(ρ ln(1/δ)) (Bun and Steinke, Proposition 1.3);
/// infinite when no δ is left to convert with.
pub fn zcdp_epsilon(rho: f64, delta: f64) -> f64 {
    if rho <= 0.0 {
        0.0
    } else if delta <= 0.0 {
        f64::INFINITY
    } else {
        rho + 2.0 * (rho * (1.0 / delta).ln()).sqrt()
    }
}

/// The largest ρ whose conversion at δ is at most ε: (√(ln(1/δ) + ε) −
/// √ln(1/δ))².
pub fn zcdp_rho(epsilon: f64, delta: f64) -> f64 {
    let log = (1.0 / delta).ln();
    ((log + epsilon).sqrt() - log.sqrt()).powi(2)
}

/// What `spent` amounts to as (ε, δ) under the caps' accounting: pure and
/// approximate charges by basic composition; under zCDP the ρ charges are
/// converted once, at the δ the cap leaves after the approximate ones.
fn as_epsilon_delta(spent: Units, cap: Units, zcdp: bool) -> (f64, f64) {
    let epsilon = spent.epsilon as f64 / EPSILON_UNIT;
    let delta = spent.delta as f64 / DELTA_UNIT;
    if !zcdp || spent.rho == 0 {
        return (epsilon, delta);
    }
    let left = (cap.delta - spent.delta) as f64 / DELTA_UNIT;
    (
        epsilon + zcdp_epsilon(spent.rho as f64 / RHO_UNIT, left),
        cap.delta as f64 / DELTA_UNIT,
    )
}

/// Whether `spent` fits under `cap`.
fn fits(spent: Units, cap: Units, zcdp: bool) -> bool {
    if !zcdp {
        return spent.epsilon <= cap.epsilon && spent.delta <= cap.delta;
    }
    let (epsilon, _) = as_epsilon_delta(spent, cap, true);
    spent.delta <= cap.delta && epsilon <= cap.epsilon as f64 / EPSILON_UNIT
}

fn cap_units(cost: Cost) -> Units {
    Units {
        epsilon: (cost.epsilon * EPSILON_UNIT).floor() as i64,
        delta: (cost.delta * DELTA_UNIT).floor() as i64,
        rho: 0,
    }
}

fn cost_of(units: Units) -> Cost {
    Cost {
        epsilon: units.epsilon as f64 / EPSILON_UNIT,
        delta: units.delta as f64 / DELTA_UNIT,
        rho: units.rho as f64 / RHO_UNIT,
    }
}

/// The caps a population's policies set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Caps {
    /// Per principal.
    pub total: Cost,
    /// Over all principals together (ε), if set.
    pub dataset_epsilon: Option<f64>,
    /// Over all principals together (δ), if set.
    pub dataset_delta: Option<f64>,
    /// zCDP accounting: ρ charges compose by addition and are converted to
    /// (ε, δ) once, against these caps.
    pub zcdp: bool,
}

impl Caps {
    /// The tighter of two caps, field by field (a population whose
    /// datasets' policies disagree gets the smallest of each).
    pub fn tightest(self, other: Caps) -> Caps {
        let min = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Caps {
            total: Cost {
                epsilon: self.total.epsilon.min(other.total.epsilon),
                delta: self.total.delta.min(other.total.delta),
                rho: 0.0,
            },
            dataset_epsilon: min(self.dataset_epsilon, other.dataset_epsilon),
            dataset_delta: min(self.dataset_delta, other.dataset_delta),
            // Basic composition is valid whatever was charged; zCDP only
            // when every policy of the population says so.
            zcdp: self.zcdp && other.zcdp,
        }
    }
}

/// Datasets that share one budget, and its caps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Population {
    pub id: String,
    /// Its datasets (charges recorded under a member's id before
    /// populations existed count too).
    pub datasets: Vec<String>,
    pub caps: Caps,
}

impl Population {
    /// A dataset that is a population of its own.
    pub fn solo(dataset: &str, caps: Caps) -> Population {
        Population {
            id: dataset.to_string(),
            datasets: vec![dataset.to_string()],
            caps,
        }
    }

    /// `population = ? OR dataset IN (…)`, and its binds.
    fn filter(&self) -> (String, Vec<&str>) {
        let marks = vec!["?"; self.datasets.len().max(1)].join(", ");
        let mut binds = vec![self.id.as_str()];
        if self.datasets.is_empty() {
            binds.push(self.id.as_str());
        } else {
            binds.extend(self.datasets.iter().map(String::as_str));
        }
        (format!("(population = ? OR dataset IN ({marks}))"), binds)
    }
}

/// Which budget a refused charge would have passed.
#[derive(Debug, thiserror::Error)]
pub enum Spent {
    #[error(
        "this query needs ε={} δ={:e}{}; population {population} has ε={} δ={:e} left for you",
        .needs.epsilon, .needs.delta,
        if .needs.rho > 0.0 { format!(" ρ={}", .needs.rho) } else { String::new() },
        .left.epsilon, .left.delta
    )]
    Principal {
        needs: Cost,
        population: String,
        left: Cost,
    },
    #[error("the budget of population {0} over all users is spent")]
    Population(String),
}

/// Why a charge was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChargeError {
    #[error("budget-exhausted: {0}")]
    Exhausted(Spent),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One principal's budget on one population.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Budget {
    pub principal: String,
    pub population: String,
    /// The population's datasets: a query on any of them spends this budget.
    pub datasets: Vec<String>,
    pub cap: Cost,
    pub spent: Cost,
    pub remaining: Cost,
}

async fn sums(
    conn: &mut sqlx::SqliteConnection,
    sql: &str,
    binds: &[&str],
) -> Result<Units, StoreError> {
    // Built from fixed text and `?` placeholders only (no value is ever
    // spliced in): safe to hand over as an owned string.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql.to_string()));
    for bind in binds {
        query = query.bind(*bind);
    }
    let row = query.fetch_one(&mut *conn).await?;
    Ok(Units {
        epsilon: row.get::<Option<i64>, _>(0).unwrap_or(0),
        delta: row.get::<Option<i64>, _>(1).unwrap_or(0),
        rho: row.get::<Option<i64>, _>(2).unwrap_or(0),
    })
}

async fn granted(
    conn: &mut sqlx::SqliteConnection,
    principal: &str,
    population: &Population,
) -> Result<Units, StoreError> {
    let (filter, mut binds) = population.filter();
    binds.insert(0, principal);
    sums(
        conn,
        &format!("SELECT SUM(epsilon_micro), SUM(delta_femto), 0 FROM dp_budget_grants WHERE principal = ? AND {filter}"),
        &binds,
    )
    .await
}

/// What was charged on `population`: to `principal`, or to everyone.
async fn spent(
    conn: &mut sqlx::SqliteConnection,
    principal: Option<&str>,
    population: &Population,
) -> Result<Units, StoreError> {
    let (filter, mut binds) = population.filter();
    let by_principal = match principal {
        Some(principal) => {
            binds.insert(0, principal);
            "principal = ? AND "
        }
        None => "",
    };
    sums(
        conn,
        &format!("SELECT SUM(epsilon_micro), SUM(delta_femto), SUM(rho_nano) FROM dp_charges WHERE {by_principal}{filter}"),
        &binds,
    )
    .await
}

/// Charge `cost` to `principal` on `population` (for a query on
/// `dataset`) for `job_id`, with its audit entry, or refuse without writing
/// anything.
pub async fn charge(
    store: &Store,
    principal: &str,
    population: &Population,
    dataset: &str,
    job_id: &str,
    cost: Cost,
) -> Result<(), ChargeError> {
    let caps = population.caps;
    let units = charge_units(cost);
    store.transition(async |tx| {
        let spent_units = spent(tx.conn(), Some(principal), population).await?;
        let cap = cap_units(caps.total) + granted(tx.conn(), principal, population).await?;
        if !fits(spent_units + units, cap, caps.zcdp) {
            let (used_epsilon, used_delta) = as_epsilon_delta(spent_units, cap, caps.zcdp);
            let left = Cost {
                epsilon: (cap.epsilon as f64 / EPSILON_UNIT - used_epsilon).max(0.0),
                delta: (cap.delta as f64 / DELTA_UNIT - used_delta).max(0.0),
                rho: 0.0,
            };
            return Err(ChargeError::Exhausted(Spent::Principal {
                needs: cost,
                population: population.id.clone(),
                left,
            }));
        }
        if caps.dataset_epsilon.is_some() || caps.dataset_delta.is_some() {
            let all = spent(tx.conn(), None, population).await? + units;
            // Under zCDP the ρ charges of all tenants are converted at the
            // population's δ cap (or, without one, each tenant's).
            let conversion_delta = caps.dataset_delta.or(caps.zcdp.then_some(caps.total.delta));
            let cap_all = Units {
                epsilon: caps
                    .dataset_epsilon
                    .map_or(i64::MAX / 4, |e| (e * EPSILON_UNIT).floor() as i64),
                delta: conversion_delta.map_or(i64::MAX / 4, |d| (d * DELTA_UNIT).floor() as i64),
                rho: 0,
            };
            if !fits(all, cap_all, caps.zcdp) {
                return Err(ChargeError::Exhausted(Spent::Population(
                    population.id.clone(),
                )));
            }
        }
        sqlx::query("INSERT INTO dp_charges (principal, dataset, population, job_id, epsilon_micro, delta_femto, rho_nano, charged_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(principal)
            .bind(dataset)
            .bind(&population.id)
            .bind(job_id)
            .bind(units.epsilon)
            .bind(units.delta)
            .bind(units.rho)
            .bind(now())
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
        tx.record(
            "system",
            "budget.charged",
            job_id,
            serde_json::json!({
                "principal": principal,
                "dataset": dataset,
                "population": population.id,
                "epsilon": cost_of(units).epsilon,
                "delta": cost_of(units).delta,
                "rho": cost_of(units).rho,
            }),
        )
        .await?;
        Ok(())
    }).await
}

/// Add budget on top of the policy's cap on a population (an
/// administrator's action, named by one of its datasets).
pub async fn grant(
    store: &Store,
    actor: &str,
    principal: &str,
    population: &Population,
    dataset: &str,
    amount: Cost,
    reason: &str,
) -> Result<(), StoreError> {
    let Units { epsilon, delta, .. } = cap_units(amount);
    store.transition(async |tx| {
        sqlx::query("INSERT INTO dp_budget_grants (principal, dataset, population, epsilon_micro, delta_femto, reason, actor, granted_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
            .bind(principal)
            .bind(dataset)
            .bind(&population.id)
            .bind(epsilon)
            .bind(delta)
            .bind(reason)
            .bind(actor)
            .bind(now())
            .execute(tx.conn())
            .await?;
        tx.record(actor,
            "budget.granted",
            &format!("{principal}/{}", population.id),
            serde_json::json!({ "epsilon": amount.epsilon, "delta": amount.delta, "reason": reason, "dataset": dataset }),
        )
        .await?;
        Ok(())
    }).await
}

/// A principal's budget on a population.
pub async fn budget(
    store: &Store,
    principal: &str,
    population: &Population,
) -> Result<Budget, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let spent_units = spent(&mut conn, Some(principal), population).await?;
    let cap = cap_units(population.caps.total) + granted(&mut conn, principal, population).await?;
    let (epsilon, delta) = as_epsilon_delta(spent_units, cap, population.caps.zcdp);
    let cap = cost_of(cap);
    Ok(Budget {
        principal: principal.to_string(),
        population: population.id.clone(),
        datasets: population.datasets.clone(),
        cap,
        spent: Cost {
            epsilon,
            delta,
            rho: spent_units.rho as f64 / RHO_UNIT,
        },
        remaining: Cost {
            epsilon: (cap.epsilon - epsilon).max(0.0),
            delta: (cap.delta - delta).max(0.0),
            rho: 0.0,
        },
    })
}

/// Everything charged for one job.
pub async fn job_cost(store: &Store, job_id: &str) -> Result<Cost, StoreError> {
    let mut conn = store.pool().acquire().await?;
    let units = sums(
        &mut conn,
        "SELECT SUM(epsilon_micro), SUM(delta_femto), SUM(rho_nano) FROM dp_charges WHERE job_id = ?",
        &[job_id],
    )
    .await?;
    Ok(cost_of(units))
}
