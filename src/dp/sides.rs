//! Which side of a population each tenant is on.
//!
//! A population can be answered exactly (`aggregate`, `contest`) and with
//! noise under a budget (`dp`, `sample-aggregate`). A tenant that saw exact
//! answers about a population would make ε meaningless for it, and one that
//! spent ε there is promised nothing stronger than ε. So the first protected
//! job a tenant submits on a population pins it to that side, durably and
//! with an audit entry, and every later job on the other side is refused
//! (`mode-conflict`). `dsb policy check` names the populations this applies
//! to. Tenants that collude across sides are outside this rule; a data
//! holder that needs ε to hold against them offers one side only.

use crate::policy::Side;
use crate::store::{Store, StoreError, now};

/// The tenant is pinned to the other side of the population.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error(
        "population {population}: you have had {pinned} answers about it (job {job_id}), so \
         {wanted} ones are refused"
    )]
    Conflict {
        population: String,
        pinned: &'static str,
        wanted: &'static str,
        job_id: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Pin `tenant` to `side` of `population` for `job_id`, or accept if it
/// already is; refuse if it is pinned to the other side.
pub async fn pin(
    store: &Store,
    tenant: &str,
    population: &str,
    side: Side,
    job_id: &str,
) -> Result<(), PinError> {
    store.transition(async |tx| {
        let existing: Option<(String, String)> = sqlx::query_as(
            "SELECT side, job_id FROM population_sides WHERE tenant = ? AND population = ?",
        )
        .bind(tenant)
        .bind(population)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::from)?;
        match existing {
            Some((pinned, first_job)) => {
                let pinned = Side::parse(&pinned).unwrap_or(Side::Exact);
                if pinned == side {
                    Ok(())
                } else {
                    Err(PinError::Conflict {
                        population: population.to_string(),
                        pinned: pinned.name(),
                        wanted: side.name(),
                        job_id: first_job,
                    })
                }
            }
            None => {
                sqlx::query(
                    "INSERT INTO population_sides (tenant, population, side, job_id, pinned_at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(tenant)
                .bind(population)
                .bind(side.name())
                .bind(job_id)
                .bind(now())
                .execute(tx.conn())
                .await
                .map_err(StoreError::from)?;
                tx.record(
                    "system",
                    "population.pinned",
                    &format!("{tenant}/{population}"),
                    serde_json::json!({ "side": side.name(), "job_id": job_id }),
                )
                .await?;
                Ok(())
            }
        }
    }).await
}
