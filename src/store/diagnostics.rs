//! Job diagnostics kept for administrators: bounded per job, dropped after
//! a retention period. They hold guest-written text (traps, errors, logs)
//! and engine text that can quote row values, so nothing here is ever shown
//! to a job's submitter; only the admin API and CLI read it.

use serde_json::Value;

use super::{Store, StoreError, now};
use crate::sandbox::Diagnostics;

/// How much is kept and for how long.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    /// Largest stored document; longer strings inside are cut to fit.
    pub max_bytes: usize,
    /// Documents older than this are deleted when a new one is written.
    pub max_age_seconds: i64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_bytes: 256 << 10,
            max_age_seconds: 30 * 86_400,
        }
    }
}

/// Store `diagnostics` for `job_id` (replacing any earlier record) and drop
/// records past the retention period.
pub async fn record(
    store: &Store,
    job_id: &str,
    diagnostics: &Diagnostics,
    retention: Retention,
) -> Result<(), StoreError> {
    let value = serde_json::to_value(diagnostics).map_err(|e| StoreError::Record(e.to_string()))?;
    record_value(store, job_id, value, retention).await
}

/// Store a diagnostics document of another shape (a scoring batch's
/// per-subject failures) under the same bound and retention.
pub async fn record_value(
    store: &Store,
    job_id: &str,
    value: Value,
    retention: Retention,
) -> Result<(), StoreError> {
    let body = bounded(value, retention.max_bytes);
    let recorded_at = now();
    let mut tx = store.pool().begin().await?;
    sqlx::query("DELETE FROM job_diagnostics WHERE recorded_at < ?")
        .bind(recorded_at - retention.max_age_seconds)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO job_diagnostics (job_id, recorded_at, body) VALUES (?, ?, ?) \
         ON CONFLICT (job_id) DO UPDATE SET recorded_at = excluded.recorded_at, body = excluded.body",
    )
    .bind(job_id)
    .bind(recorded_at)
    .bind(body.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A job's stored diagnostics, if any are still kept.
pub async fn get(store: &Store, job_id: &str) -> Result<Option<Value>, StoreError> {
    let body: Option<String> =
        sqlx::query_scalar("SELECT body FROM job_diagnostics WHERE job_id = ?")
            .bind(job_id)
            .fetch_optional(store.pool())
            .await?;
    body.map(|b| serde_json::from_str(&b).map_err(|e| StoreError::Record(e.to_string())))
        .transpose()
}

/// Cut the longest strings until the document fits in `max_bytes`.
fn bounded(mut value: Value, max_bytes: usize) -> Value {
    let mut limit = max_bytes;
    while value.to_string().len() > max_bytes && limit > 64 {
        limit /= 2;
        cut_strings(&mut value, limit);
    }
    if value.to_string().len() > max_bytes {
        return serde_json::json!({ "truncated": true });
    }
    value
}

fn cut_strings(value: &mut Value, limit: usize) {
    match value {
        Value::String(s) if s.len() > limit => {
            let mut end = limit;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push_str("…[cut]");
        }
        Value::Array(items) => {
            if items.len() > limit {
                items.truncate(limit);
            }
            items.iter_mut().for_each(|v| cut_strings(v, limit));
        }
        Value::Object(fields) => fields.values_mut().for_each(|v| cut_strings(v, limit)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_are_cut_to_their_bound() {
        let big = serde_json::json!({
            "trap": "x".repeat(1 << 20),
            "log": "é".repeat(100_000),
            "queries": (0..10_000).map(|i| serde_json::json!({"sql": format!("SELECT {i}")})).collect::<Vec<_>>(),
        });
        let cut = bounded(big, 64 << 10);
        assert!(cut.to_string().len() <= 64 << 10);
        assert!(cut["trap"].as_str().unwrap().ends_with("…[cut]"));
        let small = serde_json::json!({"trap": "short"});
        assert_eq!(bounded(small.clone(), 1024), small);
    }
}
