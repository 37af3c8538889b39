//! The audit log: every state change appends an entry in the same
//! transaction as the change. Entry `n` stores `hash = SHA-256(hash(n-1) ‖
//! JCS(entry n without hashes))`, so editing, deleting, inserting or
//! reordering entries breaks the chain at the first changed entry.
//! Checkpoints sign the head hash so it can be published or anchored
//! outside.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::{Row, SqliteConnection};

use super::{Store, StoreError, now};
use crate::receipt::{PublicKey, Signer, canonical_json};

/// The hash before the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub seq: i64,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub subject: String,
    pub details: serde_json::Value,
    pub prev_hash: String,
    pub hash: String,
}

#[derive(Serialize)]
struct Hashed<'a> {
    seq: i64,
    at: i64,
    actor: &'a str,
    action: &'a str,
    subject: &'a str,
    details: &'a serde_json::Value,
}

fn entry_hash(prev_hash: &str, entry: &Hashed<'_>) -> String {
    hex::encode(
        Sha256::new()
            .chain_update(prev_hash.as_bytes())
            .chain_update(canonical_json(entry))
            .finalize(),
    )
}

/// The sequence number the next entry will get (for receipts that name
/// their own audit position). Call inside the appending transaction.
pub async fn next_seq(conn: &mut SqliteConnection) -> Result<i64, StoreError> {
    let last: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM audit_log")
        .fetch_one(&mut *conn)
        .await?;
    Ok(last.unwrap_or(0) + 1)
}

/// Append an entry; run it in the transaction of the change it records
/// (begun with [`Store::begin_write`], so appends are serialised).
pub(super) async fn append(
    conn: &mut SqliteConnection,
    actor: &str,
    action: &str,
    subject: &str,
    details: serde_json::Value,
) -> Result<AuditEntry, StoreError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, prev_hash) = match last {
        Some(row) => (row.get::<i64, _>(0) + 1, row.get::<String, _>(1)),
        None => (1, GENESIS.to_string()),
    };
    let at = now();
    let hash = entry_hash(
        &prev_hash,
        &Hashed {
            seq,
            at,
            actor,
            action,
            subject,
            details: &details,
        },
    );
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, action, subject, details, prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(at)
    .bind(actor)
    .bind(action)
    .bind(subject)
    .bind(details.to_string())
    .bind(&prev_hash)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    Ok(AuditEntry {
        seq,
        at,
        actor: actor.into(),
        action: action.into(),
        subject: subject.into(),
        details,
        prev_hash,
        hash,
    })
}

/// All entries in sequence order.
pub async fn entries(store: &Store) -> Result<Vec<AuditEntry>, StoreError> {
    entries_after(store, 0, i64::MAX).await
}

/// The hash of the newest entry, if any.
pub async fn head(store: &Store) -> Result<Option<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT hash FROM audit_log ORDER BY seq DESC LIMIT 1")
            .fetch_optional(store.pool())
            .await?,
    )
}

/// Up to `limit` entries with a sequence number above `after`, in order.
pub async fn entries_after(
    store: &Store,
    after: i64,
    limit: i64,
) -> Result<Vec<AuditEntry>, StoreError> {
    let rows = sqlx::query("SELECT seq, at, actor, action, subject, details, prev_hash, hash FROM audit_log WHERE seq > ? ORDER BY seq LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(store.pool())
        .await?;
    rows.into_iter()
        .map(|row| {
            let details: String = row.get(5);
            Ok(AuditEntry {
                seq: row.get(0),
                at: row.get(1),
                actor: row.get(2),
                action: row.get(3),
                subject: row.get(4),
                details: serde_json::from_str(&details).map_err(|e| {
                    StoreError::Record(format!("audit entry {}: {e}", row.get::<i64, _>(0)))
                })?,
                prev_hash: row.get(6),
                hash: row.get(7),
            })
        })
        .collect()
}

/// A signed statement of the chain's head.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub seq: i64,
    pub head_hash: String,
    pub at: i64,
    pub key_id: String,
    pub signature: String,
}

#[derive(Serialize)]
struct CheckpointBody<'a> {
    seq: i64,
    head_hash: &'a str,
    at: i64,
    key_id: &'a str,
}

/// Sign the current head of the chain.
pub async fn checkpoint(store: &Store, signer: &Signer) -> Result<Checkpoint, StoreError> {
    let mut tx = store.begin_write().await?;
    let head = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?;
    let (seq, head_hash) = head.map_or((0, GENESIS.to_string()), |row| (row.get(0), row.get(1)));
    let at = now();
    let body = CheckpointBody {
        seq,
        head_hash: &head_hash,
        at,
        key_id: &signer.key_id,
    };
    let signature = hex::encode(signer.sign(&canonical_json(&body)));
    sqlx::query("INSERT INTO audit_checkpoints (seq, head_hash, at, key_id, signature) VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
        .bind(seq)
        .bind(&head_hash)
        .bind(at)
        .bind(&signer.key_id)
        .bind(&signature)
        .execute(&mut *tx)
        .await?;
    append(
        &mut tx,
        "system",
        "audit.checkpoint",
        &seq.to_string(),
        serde_json::json!({ "head_hash": head_hash }),
    )
    .await?;
    tx.commit().await?;
    Ok(Checkpoint {
        seq,
        head_hash,
        at,
        key_id: signer.key_id.clone(),
        signature,
    })
}

pub async fn checkpoints(store: &Store) -> Result<Vec<Checkpoint>, StoreError> {
    let rows = sqlx::query(
        "SELECT seq, head_hash, at, key_id, signature FROM audit_checkpoints ORDER BY seq",
    )
    .fetch_all(store.pool())
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| Checkpoint {
            seq: row.get(0),
            head_hash: row.get(1),
            at: row.get(2),
            key_id: row.get(3),
            signature: row.get(4),
        })
        .collect())
}

/// Where the chain breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit chain broken at entry {seq}: {reason}")]
pub struct Broken {
    pub seq: i64,
    pub reason: String,
}

/// Walk the chain and check every checkpoint. Returns the number of
/// entries and checkpoints verified.
pub fn verify(
    entries: &[AuditEntry],
    checkpoints: &[Checkpoint],
    keys: &[PublicKey],
) -> Result<(usize, usize), Broken> {
    let mut prev = GENESIS.to_string();
    for (index, entry) in entries.iter().enumerate() {
        let expected_seq = index as i64 + 1;
        if entry.seq != expected_seq {
            return Err(Broken {
                seq: expected_seq,
                reason: format!("entry {expected_seq} is missing (found {} next)", entry.seq),
            });
        }
        if entry.prev_hash != prev {
            return Err(Broken {
                seq: entry.seq,
                reason: "it does not follow the previous entry".into(),
            });
        }
        let hash = entry_hash(
            &prev,
            &Hashed {
                seq: entry.seq,
                at: entry.at,
                actor: &entry.actor,
                action: &entry.action,
                subject: &entry.subject,
                details: &entry.details,
            },
        );
        if hash != entry.hash {
            return Err(Broken {
                seq: entry.seq,
                reason: "its content does not match its hash (edited)".into(),
            });
        }
        prev = hash;
    }
    for checkpoint in checkpoints {
        let body = CheckpointBody {
            seq: checkpoint.seq,
            head_hash: &checkpoint.head_hash,
            at: checkpoint.at,
            key_id: &checkpoint.key_id,
        };
        let key = keys
            .iter()
            .find(|k| k.key_id == checkpoint.key_id)
            .ok_or_else(|| Broken {
                seq: checkpoint.seq,
                reason: format!("checkpoint signed by unknown key {}", checkpoint.key_id),
            })?;
        let public = hex::decode(&key.public_key).unwrap_or_default();
        let signature = hex::decode(&checkpoint.signature).unwrap_or_default();
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &public)
            .verify(&canonical_json(&body), &signature)
            .map_err(|_| Broken {
                seq: checkpoint.seq,
                reason: "checkpoint signature does not verify".into(),
            })?;
        let at_head = if checkpoint.seq == 0 {
            GENESIS.to_string()
        } else {
            entries
                .get(checkpoint.seq as usize - 1)
                .map(|e| e.hash.clone())
                .ok_or_else(|| Broken {
                    seq: checkpoint.seq,
                    reason: "checkpoint names an entry that no longer exists".into(),
                })?
        };
        if at_head != checkpoint.head_hash {
            return Err(Broken {
                seq: checkpoint.seq,
                reason: "the chain was rewritten since this checkpoint".into(),
            });
        }
    }
    Ok((entries.len(), checkpoints.len()))
}

/// Read an export (`dsb audit export`: JSON lines `{"entry": …}` and
/// `{"checkpoint": …}`) back into entries and checkpoints for
/// [`verify`]. A line that is neither is an error naming its line number.
pub fn read_export(text: &str) -> Result<(Vec<AuditEntry>, Vec<Checkpoint>), StoreError> {
    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "lowercase")]
    enum Line {
        Entry(AuditEntry),
        Checkpoint(Checkpoint),
    }
    let mut entries = Vec::new();
    let mut checkpoints = Vec::new();
    for (number, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Line>(line) {
            Ok(Line::Entry(entry)) => entries.push(entry),
            Ok(Line::Checkpoint(checkpoint)) => checkpoints.push(checkpoint),
            Err(error) => {
                return Err(StoreError::Record(format!(
                    "export line {}: {error}",
                    number + 1
                )));
            }
        }
    }
    Ok((entries, checkpoints))
}
