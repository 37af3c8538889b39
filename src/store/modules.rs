//! Which tenant uploaded which module. The bytes and compiled artifacts are
//! content-addressed in the sandbox's module store; a tenant sees and runs
//! only the modules it uploaded.

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Store, StoreError, audit, now};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ModuleInfo {
    pub sha256: String,
    pub world: String,
    pub size: i64,
    pub name: Option<String>,
    pub uploaded_at: i64,
}

/// Record an upload (idempotent per tenant and hash); audited.
pub async fn record(
    store: &Store,
    actor: &str,
    tenant: &str,
    module: &ModuleInfo,
) -> Result<(), StoreError> {
    let mut tx = store.begin_write().await?;
    let inserted = sqlx::query("INSERT INTO modules (tenant, sha256, world, size, name, uploaded_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
        .bind(tenant)
        .bind(&module.sha256)
        .bind(&module.world)
        .bind(module.size)
        .bind(&module.name)
        .bind(module.uploaded_at)
        .execute(&mut *tx)
        .await?;
    if inserted.rows_affected() == 1 {
        audit::append(
            &mut tx,
            actor,
            "module.uploaded",
            &module.sha256,
            serde_json::json!({ "tenant": tenant, "world": module.world, "size": module.size }),
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A new record for an upload now.
pub fn info(sha256: &str, world: &str, size: usize, name: Option<String>) -> ModuleInfo {
    ModuleInfo {
        sha256: sha256.into(),
        world: world.into(),
        size: size as i64,
        name,
        uploaded_at: now(),
    }
}

fn from_row(row: &sqlx::sqlite::SqliteRow) -> ModuleInfo {
    ModuleInfo {
        sha256: row.get(0),
        world: row.get(1),
        size: row.get(2),
        name: row.get(3),
        uploaded_at: row.get(4),
    }
}

/// A tenant's module, if it uploaded it.
pub async fn get(
    store: &Store,
    tenant: &str,
    sha256: &str,
) -> Result<Option<ModuleInfo>, StoreError> {
    let row = sqlx::query(
        "SELECT sha256, world, size, name, uploaded_at FROM modules WHERE tenant = ? AND sha256 = ?",
    )
    .bind(tenant)
    .bind(sha256)
    .fetch_optional(store.pool())
    .await?;
    Ok(row.as_ref().map(from_row))
}

/// A tenant's modules, newest first.
pub async fn of_tenant(store: &Store, tenant: &str) -> Result<Vec<ModuleInfo>, StoreError> {
    let rows = sqlx::query("SELECT sha256, world, size, name, uploaded_at FROM modules WHERE tenant = ? ORDER BY uploaded_at DESC, sha256")
        .bind(tenant)
        .fetch_all(store.pool())
        .await?;
    Ok(rows.iter().map(from_row).collect())
}
