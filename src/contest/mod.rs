//! Contest mode: competitions on hidden data (the SODA open-data contest).
//!
//! An administrator creates a contest from a TOML spec (dataset, label,
//! features, metric, split, open and close times, limits, release rule).
//! The host draws a secret split seed; only its SHA-256 ever leaves. A
//! team (a contestant token's tenant) submits a `model` component: one
//! instance gets the training rows (features and label) through `train`,
//! then the public and private test rows shuffled together, without labels
//! or identifiers, through `predict`. The host clips the predictions to
//! what the metric reads (probabilities to [0, 1], values to the label's
//! declared range), scores them against the hidden labels and releases only
//! the public score, rounded to the contest's `step` and passed through the
//! release rule (the Ladder mechanism of Blum & Hardt by default: a new
//! score shows only if it beats the team's best by more than the step;
//! or plain). A released score is one of at most `range / step + 1` values
//! (201 by default: 7.65 bits). Private scores show after the close, on the
//! team's final picks (or its best public ones). Predictions, logs and
//! errors never leave; a failure the model caused is `not-scored` to the
//! team whatever it was (the detail is the administrators'). Guest failures
//! count against the quota, host failures (internal, interrupted,
//! cancelled) do not; each contest also caps submissions a day across all
//! teams.

mod evaluate;
pub mod metrics;
mod spec;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Row;

pub use evaluate::*;
pub use metrics::Metric;
pub use spec::*;

use crate::sandbox::Category;
use crate::store::{Store, StoreError, now};

/// Contest errors callers can act on.
#[derive(Debug, thiserror::Error)]
pub enum ContestError {
    #[error("{}", .0.join("\n"))]
    BadSpec(Vec<String>),
    #[error("unknown contest {0}")]
    Unknown(String),
    #[error("contest {0} already exists")]
    Exists(String),
    #[error("contest {0} is not open for submissions")]
    Closed(String),
    #[error("contest {0} is still open: private scores show after the close")]
    StillOpen(String),
    #[error("quota-exhausted: {0}")]
    Quota(Quota),
    #[error("only scored submissions can be picked")]
    PickNotScored,
    #[error("{0} final picks already made")]
    PicksSpent(u32),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which submission quota is spent.
#[derive(Debug, thiserror::Error)]
pub enum Quota {
    #[error("{0} submissions a day; the next counts from 00:00 UTC")]
    TeamDaily(u32),
    #[error("{0} submissions in all")]
    TeamTotal(u32),
    #[error(
        "the contest takes {0} submissions a day from all teams together; the next count from \
         00:00 UTC"
    )]
    ContestDaily(u32),
}

/// A contest as anyone may see it (never the seed).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContestView {
    #[serde(flatten)]
    pub spec: Spec,
    /// SHA-256 of the secret split seed (it commits to the split).
    pub seed_sha256: String,
    pub open: bool,
}

/// SHA-256 of a split seed: it commits to the split without revealing it.
pub fn seed_hash(seed: &str) -> String {
    hex::encode(Sha256::digest(seed.as_bytes()))
}

/// Record a new contest with a fresh secret seed.
pub async fn create(store: &Store, spec: &Spec, actor: &str) -> Result<ContestView, ContestError> {
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| StoreError::Record("no system randomness".into()))?;
    let seed = hex::encode(bytes);
    store.transition(async |tx| {
        let exists: Option<String> = sqlx::query_scalar("SELECT id FROM contests WHERE id = ?")
            .bind(&spec.id)
            .fetch_optional(tx.conn())
            .await
            .map_err(StoreError::from)?;
        if exists.is_some() {
            return Err(ContestError::Exists(spec.id.clone()));
        }
        sqlx::query("INSERT INTO contests (id, spec, seed, opens_at, closes_at, created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)")
            .bind(&spec.id)
            .bind(serde_json::to_string(spec).expect("spec serialises"))
            .bind(&seed)
            .bind(spec.opens_at)
            .bind(spec.closes_at)
            .bind(now())
            .bind(actor)
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
        tx.record(actor,
            "contest.created",
            &spec.id,
            serde_json::json!({ "dataset": spec.dataset, "metric": spec.metric, "seed_sha256": seed_hash(&seed) }),
        )
        .await?;
        Ok(view(spec.clone(), &seed))
    }).await
}

fn view(spec: Spec, seed: &str) -> ContestView {
    let at = now();
    ContestView {
        open: spec.opens_at <= at && at < spec.closes_at,
        spec,
        seed_sha256: seed_hash(seed),
    }
}

/// A contest and its secret seed.
pub async fn get(store: &Store, id: &str) -> Result<(Spec, String), ContestError> {
    let row = sqlx::query("SELECT spec, seed FROM contests WHERE id = ?")
        .bind(id)
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ContestError::Unknown(id.into()))?;
    let spec: Spec = serde_json::from_str(&row.get::<String, _>(0))
        .map_err(|e| StoreError::Record(e.to_string()))?;
    Ok((spec, row.get(1)))
}

pub async fn view_of(store: &Store, id: &str) -> Result<ContestView, ContestError> {
    let (spec, seed) = get(store, id).await?;
    Ok(view(spec, &seed))
}

pub async fn list(store: &Store) -> Result<Vec<ContestView>, ContestError> {
    let rows = sqlx::query("SELECT spec, seed FROM contests ORDER BY created_at, id")
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::from)?;
    rows.into_iter()
        .map(|row| {
            let spec: Spec = serde_json::from_str(&row.get::<String, _>(0))
                .map_err(|e| StoreError::Record(e.to_string()))?;
            Ok(view(spec, &row.get::<String, _>(1)))
        })
        .collect()
}

/// Check the contest is open and the team has quota left; record the
/// submission (counted until shown to be the host's failure).
pub async fn admit(
    store: &Store,
    spec: &Spec,
    team: &str,
    submission: &str,
) -> Result<(), ContestError> {
    let at = now();
    if !(spec.opens_at <= at && at < spec.closes_at) {
        return Err(ContestError::Closed(spec.id.clone()));
    }
    store.transition(async |tx| {
        let day_start = at - at.rem_euclid(86_400);
        let row = sqlx::query(
            "SELECT COUNT(*), SUM(CASE WHEN submitted_at >= ? THEN 1 ELSE 0 END) FROM contest_submissions WHERE contest_id = ? AND team = ? AND counted = 1",
        )
        .bind(day_start)
        .bind(&spec.id)
        .bind(team)
        .fetch_one(tx.conn())
        .await
        .map_err(StoreError::from)?;
        let total: i64 = row.get(0);
        let today: i64 = row.get::<Option<i64>, _>(1).unwrap_or(0);
        if today >= i64::from(spec.daily_limit) {
            return Err(ContestError::Quota(Quota::TeamDaily(spec.daily_limit)));
        }
        if total >= i64::from(spec.total_limit) {
            return Err(ContestError::Quota(Quota::TeamTotal(spec.total_limit)));
        }
        let contest_today: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM contest_submissions WHERE contest_id = ? AND counted = 1 AND submitted_at >= ?",
        )
        .bind(&spec.id)
        .bind(day_start)
        .fetch_one(tx.conn())
        .await
        .map_err(StoreError::from)?;
        if contest_today >= i64::from(spec.contest_daily_limit) {
            return Err(ContestError::Quota(Quota::ContestDaily(
                spec.contest_daily_limit,
            )));
        }
        sqlx::query("INSERT INTO contest_submissions (id, contest_id, team, submitted_at, state, counted) VALUES (?, ?, ?, ?, 'queued', 1)")
            .bind(submission)
            .bind(&spec.id)
            .bind(team)
            .bind(at)
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
        Ok(())
    }).await
}

/// Submissions whose job ended without the contest path recording it (a
/// crash): interrupted, not counted.
pub async fn settle_interrupted(store: &Store) -> Result<u64, StoreError> {
    let done = sqlx::query(
        "UPDATE contest_submissions SET state = 'interrupted', counted = 0, category = 'interrupted' \
         WHERE state = 'queued' AND id IN (SELECT id FROM jobs WHERE state NOT IN ('queued', 'running'))",
    )
    .execute(store.pool())
    .await?;
    Ok(done.rows_affected())
}

/// What a team is told of a failed submission. The guest chose its failure
/// after seeing the training rows (out of fuel, an error, a wrong count, a
/// NaN, …: about three bits a submission), so every failure it can cause is
/// one category, `not-scored`; the detail stays in the administrators'
/// records. Host failures (internal, cancelled) keep their own category:
/// the guest cannot choose them, and they are not charged.
pub fn team_category(category: &Category) -> Category {
    match category {
        Category::Ok | Category::Internal | Category::Cancelled => category.clone(),
        _ => Category::NotScored,
    }
}

/// A team's submission as the team sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SubmissionView {
    pub id: String,
    pub contest: String,
    pub team: String,
    pub submitted_at: i64,
    /// `queued`, `scored`, `failed` (counts) or `interrupted` (does not).
    pub state: String,
    pub category: Option<String>,
    pub counted: bool,
    /// The released public score (rounded, through the release rule).
    pub public_score: Option<f64>,
    pub picked: bool,
}

fn submission_view(row: &sqlx::sqlite::SqliteRow) -> SubmissionView {
    SubmissionView {
        id: row.get("id"),
        contest: row.get("contest_id"),
        team: row.get("team"),
        submitted_at: row.get("submitted_at"),
        state: row.get("state"),
        category: row.get("category"),
        counted: row.get::<i64, _>("counted") == 1,
        public_score: row.get("public_released"),
        picked: row.get::<i64, _>("picked") == 1,
    }
}

pub async fn submissions(
    store: &Store,
    contest: &str,
    team: &str,
) -> Result<Vec<SubmissionView>, StoreError> {
    let rows = sqlx::query("SELECT * FROM contest_submissions WHERE contest_id = ? AND team = ? ORDER BY submitted_at, id")
        .bind(contest)
        .bind(team)
        .fetch_all(store.pool())
        .await?;
    Ok(rows.iter().map(submission_view).collect())
}

/// Mark one of the team's scored submissions as a final pick.
pub async fn pick(
    store: &Store,
    spec: &Spec,
    team: &str,
    submission: &str,
) -> Result<(), ContestError> {
    if now() >= spec.closes_at {
        return Err(ContestError::Closed(spec.id.clone()));
    }
    store.transition(async |tx| {
        let state: Option<String> = sqlx::query_scalar(
            "SELECT state FROM contest_submissions WHERE id = ? AND contest_id = ? AND team = ?",
        )
        .bind(submission)
        .bind(&spec.id)
        .bind(team)
        .fetch_optional(tx.conn())
        .await
        .map_err(StoreError::from)?;
        match state.as_deref() {
            None => return Err(ContestError::Unknown(submission.into())),
            Some("scored") => {}
            Some(_) => {
                return Err(ContestError::PickNotScored);
            }
        }
        let picked: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM contest_submissions WHERE contest_id = ? AND team = ? AND picked = 1 AND id != ?",
        )
        .bind(&spec.id)
        .bind(team)
        .bind(submission)
        .fetch_one(tx.conn())
        .await
        .map_err(StoreError::from)?;
        if picked >= i64::from(spec.final_picks) {
            return Err(ContestError::PicksSpent(spec.final_picks));
        }
        sqlx::query("UPDATE contest_submissions SET picked = 1 WHERE id = ?")
            .bind(submission)
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
        tx.record(
            team,
            "contest.picked",
            submission,
            serde_json::json!({ "contest": spec.id }),
        )
        .await?;
        Ok(())
    }).await
}

/// One team on a leaderboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Standing {
    pub rank: usize,
    pub team: String,
    pub score: f64,
    /// When the team first reached this score.
    pub at: i64,
    pub submissions: usize,
}

/// The public leaderboard (best released public score per team, ties by
/// the earlier time), or after the close the private one (best private
/// score among the team's final picks, or its best public ones).
pub async fn leaderboard(
    store: &Store,
    spec: &Spec,
    private: bool,
) -> Result<Vec<Standing>, ContestError> {
    if private && now() < spec.closes_at {
        return Err(ContestError::StillOpen(spec.id.clone()));
    }
    let rows = sqlx::query("SELECT team, submitted_at, public_released, private_raw, picked FROM contest_submissions WHERE contest_id = ? AND state = 'scored' ORDER BY submitted_at, id")
        .bind(&spec.id)
        .fetch_all(store.pool())
        .await
        .map_err(StoreError::from)?;
    let mut by_team: HashMap<String, Vec<(i64, f64, f64, bool)>> = HashMap::new();
    for row in &rows {
        by_team.entry(row.get(0)).or_default().push((
            row.get(1),
            row.get(2),
            row.get(3),
            row.get::<i64, _>(4) == 1,
        ));
    }
    let mut standings = Vec::new();
    for (team, subs) in by_team {
        let candidates: Vec<(i64, f64)> = if private {
            let mut chosen: Vec<&(i64, f64, f64, bool)> = subs.iter().filter(|s| s.3).collect();
            if chosen.is_empty() {
                let mut by_public: Vec<&(i64, f64, f64, bool)> = subs.iter().collect();
                by_public.sort_by(|a, b| spec.rank(a.1, b.1).then(a.0.cmp(&b.0)));
                chosen = by_public
                    .into_iter()
                    .take(spec.final_picks as usize)
                    .collect();
            }
            chosen.into_iter().map(|s| (s.0, spec.round(s.2))).collect()
        } else {
            subs.iter().map(|s| (s.0, s.1)).collect()
        };
        let best = candidates
            .iter()
            .copied()
            .reduce(|a, b| if spec.better(b.1, a.1) { b } else { a })
            .expect("a team on the board has a scored submission");
        standings.push(Standing {
            rank: 0,
            team,
            score: best.1,
            at: best.0,
            submissions: subs.len(),
        });
    }
    standings.sort_by(|a, b| {
        spec.rank(a.score, b.score)
            .then(a.at.cmp(&b.at))
            .then_with(|| a.team.cmp(&b.team))
    });
    for (i, s) in standings.iter_mut().enumerate() {
        s.rank = i + 1;
    }
    Ok(standings)
}

/// Keep only a contest's feature and label columns of a CSV (the synthetic
/// sample's values contain no commas or quotes; anything else is refused).
pub fn project_csv(csv: &str, spec: &Spec) -> Result<String, String> {
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().ok_or("empty sample")?.split(',').collect();
    let mut wanted: Vec<usize> = Vec::new();
    for column in spec.features.iter().chain(std::iter::once(&spec.label)) {
        wanted.push(
            header
                .iter()
                .position(|h| h == column)
                .ok_or_else(|| format!("no column {column} in the sample"))?,
        );
    }
    let mut out = String::new();
    let pick = |fields: &[&str]| {
        wanted
            .iter()
            .map(|i| fields[*i])
            .collect::<Vec<_>>()
            .join(",")
    };
    out.push_str(&pick(&header));
    out.push('\n');
    for line in lines {
        if line.contains('"') {
            return Err("quoted values in the sample".into());
        }
        let fields: Vec<&str> = line.split(',').collect();
        if fields.len() != header.len() {
            return Err("ragged sample row".into());
        }
        out.push_str(&pick(&fields));
        out.push('\n');
    }
    Ok(out)
}
