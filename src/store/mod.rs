//! The embedded store: one SQLite file (WAL, foreign keys, busy timeout,
//! `synchronous = FULL`) through sqlx, with migrations in `migrations/`.
//! Queries are plain portable SQL so a PostgreSQL backend can follow.
//!
//! Layout: `audit` (the hash-chained log and signed checkpoints), `jobs`
//! (durable job records and releases with receipts), `modules` (who uploaded
//! which module), `diagnostics` (what administrators may read of a job);
//! tokens and grants are in [`crate::accounts`].

pub mod audit;
pub mod diagnostics;
pub mod jobs;
pub mod modules;

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unknown job {0}")]
    UnknownJob(String),
    #[error("job {id} is {state}, not {expected}")]
    WrongState {
        id: String,
        state: String,
        expected: &'static str,
    },
    #[error("record: {0}")]
    Record(String),
}

/// A write transaction inside [`Store::transition`]: its connection for
/// queries, and the audit log.
pub struct Transaction<'c> {
    conn: &'c mut sqlx::SqliteConnection,
}

impl Transaction<'_> {
    /// The connection, for the change's own queries.
    pub fn conn(&mut self) -> &mut sqlx::SqliteConnection {
        self.conn
    }

    /// Append one audit entry in this transaction.
    pub async fn record(
        &mut self,
        actor: &str,
        action: &str,
        subject: &str,
        details: serde_json::Value,
    ) -> Result<audit::AuditEntry, StoreError> {
        audit::append(self.conn, actor, action, subject, details).await
    }
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The database of a data directory.
#[derive(Debug, Clone)]
pub struct Store {
    pool: SqlitePool,
}

impl Store {
    /// Open (creating if needed) and migrate the database at `path`.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // A committed job or audit entry survives a crash of the
            // process and of the machine.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::migrate::Migrator::new(Migrations)
            .await?
            .run(&pool)
            .await?;
        Ok(Store { pool })
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The one way to change state: `change` runs inside a write
    /// transaction and records its audit entries through
    /// [`Transaction::record`] (in the same transaction, in order); then it
    /// commits. An error from `change` rolls everything back, so no state
    /// change is ever without its entry and no entry without its change.
    ///
    /// ```ignore
    /// store.transition(async |tx| {
    ///     sqlx::query("UPDATE …").execute(tx.conn()).await?;
    ///     tx.record(actor, "thing.done", id, json!({})).await?;
    ///     Ok::<_, StoreError>(())
    /// }).await?;
    /// ```
    pub async fn transition<T, E>(
        &self,
        change: impl AsyncFnOnce(&mut Transaction<'_>) -> Result<T, E>,
    ) -> Result<T, E>
    where
        E: From<StoreError>,
    {
        let mut tx = self.begin_write().await?;
        let mut transaction = Transaction { conn: &mut tx };
        let value = change(&mut transaction).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(value)
    }

    /// Begin a transaction that writes. SQLite's `BEGIN IMMEDIATE` takes the
    /// write lock at once, so concurrent appends to the audit chain are
    /// serialised instead of failing at commit; this is the one place that
    /// knows the dialect (a PostgreSQL store would lock the chain head).
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }
}

/// The schema migrations, `migrations/NNNN_description.sql` embedded by
/// `build.rs` as (version, description, SQL), in order.
const MIGRATIONS: &[(i64, &str, &str)] = include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The embedded migrations as sqlx's migrator reads them (the same version,
/// description and checksum `sqlx::migrate!` gives, so data directories
/// made before keep their history).
#[derive(Debug)]
struct Migrations;

impl sqlx::migrate::MigrationSource<'static> for Migrations {
    fn resolve(
        self,
    ) -> futures::future::BoxFuture<
        'static,
        Result<Vec<sqlx::migrate::Migration>, sqlx::error::BoxDynError>,
    > {
        Box::pin(async {
            Ok(MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    sqlx::migrate::Migration::new(
                        *version,
                        std::borrow::Cow::Borrowed(*description),
                        sqlx::migrate::MigrationType::Simple,
                        sqlx::SqlSafeStr::into_sql_str(*sql),
                        sql.starts_with("-- no-transaction"),
                    )
                })
                .collect())
        })
    }
}
