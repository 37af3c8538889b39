//! The query ledger: how many aggregate-mode queries a dataset has answered,
//! per tenant and over all tenants, per UTC day and in total.
//!
//! Cell-key perturbation stops repetition from averaging noise away, but a
//! tenant who can ask without end can still build many different pairs of
//! cells around one unit. The ledger bounds that across jobs (the per-job
//! cap is `max_queries_per_job`): each accepted query over a protected
//! dataset is recorded, in one `BEGIN IMMEDIATE` transaction with the check
//! of every limit the dataset's policy sets, before it runs. A query past a
//! limit is refused with `query-limit` and the refusal is audited; the
//! server refuses new aggregate jobs on an exhausted dataset with HTTP 429.
//! Counts depend only on how many queries were asked, never on data.

use std::collections::HashMap;

use crate::policy::LedgerLimits;
use crate::store::{Store, StoreError, now};

/// Why a query was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("query-limit: {0}")]
    Exhausted(#[from] Exhausted),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A dataset's ledger limit is reached.
#[derive(Debug, thiserror::Error)]
#[error("{dataset} has answered its {limit}")]
pub struct Exhausted {
    pub dataset: String,
    /// Which limit (`tenant_queries_per_day`, …).
    pub limit: &'static str,
}

/// One job's ledger: where its queries are recorded, under which limits.
#[derive(Debug, Clone)]
pub struct QueryLedger {
    pub store: Store,
    pub tenant: String,
    pub job_id: String,
    /// Per dataset (table name): its policy's limits.
    pub limits: HashMap<String, LedgerLimits>,
}

fn day_of(seconds: i64) -> i64 {
    seconds.div_euclid(86_400)
}

impl QueryLedger {
    /// Record one query over `datasets`, or refuse it if any limit is
    /// reached (then nothing is recorded).
    pub async fn record(&self, datasets: &[String]) -> Result<(), LedgerError> {
        let at = now();
        let day = day_of(at);
        self.store.transition(async |tx| {
            // A refusal is recorded (and committed) too: `Ok(Err(…))`.
            for dataset in datasets {
                let limits = self.limits.get(dataset).copied().unwrap_or_default();
                if let Some(reason) = exhausted(tx.conn(), dataset, &self.tenant, day, limits).await? {
                    tx.record(
                        &self.tenant,
                        "ledger.refused",
                        &self.job_id,
                        serde_json::json!({ "dataset": dataset, "limit": reason }),
                    )
                    .await?;
                    return Ok(Err(LedgerError::Exhausted(Exhausted {
                        dataset: dataset.clone(),
                        limit: reason,
                    })));
                }
            }
            for dataset in datasets {
                sqlx::query(
                    "INSERT INTO query_ledger (tenant, dataset, job_id, day, at) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&self.tenant)
                .bind(dataset)
                .bind(&self.job_id)
                .bind(day)
                .bind(at)
                .execute(tx.conn())
                .await
                .map_err(StoreError::from)?;
            }
            Ok::<_, LedgerError>(Ok(()))
        }).await?
    }
}

type Check<'a> = (Option<u32>, &'static str, Option<&'a str>, Option<i64>);

/// Whether any of `limits` is reached for `tenant` on `dataset`: the limit's
/// description, for the refusal.
async fn exhausted(
    conn: &mut sqlx::SqliteConnection,
    dataset: &str,
    tenant: &str,
    day: i64,
    limits: LedgerLimits,
) -> Result<Option<&'static str>, StoreError> {
    // (limit, its name, counted for this tenant only?, for this day only?)
    let checks: [Check<'_>; 4] = [
        (
            limits.tenant_queries_per_day,
            "queries per tenant and day",
            Some(tenant),
            Some(day),
        ),
        (
            limits.tenant_queries_total,
            "queries per tenant",
            Some(tenant),
            None,
        ),
        (
            limits.dataset_queries_per_day,
            "queries per day (all tenants)",
            None,
            Some(day),
        ),
        (
            limits.dataset_queries_total,
            "queries in total (all tenants)",
            None,
            None,
        ),
    ];
    for (limit, name, tenant, day) in checks {
        let Some(limit) = limit else { continue };
        let used: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM query_ledger WHERE dataset = ? \
             AND (? IS NULL OR tenant = ?) AND (? IS NULL OR day = ?)",
        )
        .bind(dataset)
        .bind(tenant)
        .bind(tenant)
        .bind(day)
        .bind(day)
        .fetch_one(&mut *conn)
        .await?;
        if used >= i64::from(limit) {
            return Ok(Some(name));
        }
    }
    Ok(None)
}

/// Whether `tenant` may still ask `dataset` anything (for admission: a job
/// that could not run a single query is refused up front). A refusal is
/// audited like one inside a job, with the tenant as subject.
pub async fn has_room(
    store: &Store,
    dataset: &str,
    tenant: &str,
    limits: LedgerLimits,
) -> Result<Result<(), Exhausted>, StoreError> {
    if limits == LedgerLimits::default() {
        return Ok(Ok(()));
    }
    // A read first: admission stays cheap while there is room.
    let mut conn = store.pool().acquire().await?;
    let Some(reason) = exhausted(&mut conn, dataset, tenant, day_of(now()), limits).await? else {
        return Ok(Ok(()));
    };
    drop(conn);
    store
        .transition(async |tx| {
            tx.record(
                tenant,
                "ledger.refused",
                tenant,
                serde_json::json!({ "dataset": dataset, "limit": reason, "at": "admission" }),
            )
            .await?;
            Ok(Err(Exhausted {
                dataset: dataset.to_string(),
                limit: reason,
            }))
        })
        .await
}
