//! Human output review. A policy with `review = "required"` holds a job's
//! output: the job ends `held`, the output is stored apart, nothing is
//! released. Two administrators who are not the author approve it
//! independently (neither sees the other's decision until both are in);
//! either may reject with a reason the author sees, or request changes
//! with comments. The second approval releases it with a receipt that
//! names the reviewers' key (token) ids.
//!
//! Automated pre-checks flag what human checkers reject most often, for
//! the reviewers and for the author: cells under the threshold, small
//! counts that are not rounded, model outputs with fewer than 10 residual
//! degrees of freedom, suppressed cells recoverable from a total row, and
//! (computed by the host from the data, see
//! `QuerySession::dominated_cells`) SUM cells dominated by one or two
//! privacy units.

use datafusion::arrow::array::{Array, Float64Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::sandbox::Output;
use crate::store::{Store, StoreError, now};

/// One pre-check finding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Finding {
    /// `cell-below-threshold`, `unrounded-small-count`, `residual-df`,
    /// `secondary-disclosure` or `dominance`.
    pub check: String,
    pub output: String,
    pub detail: String,
}

fn finding(check: &str, output: &str, detail: String) -> Finding {
    Finding {
        check: check.into(),
        output: output.into(),
        detail,
    }
}

/// Run the pre-checks on a job's outputs; `threshold` is the policy's
/// minimum group size.
pub fn prechecks(outputs: &[Output], threshold: u32) -> Vec<Finding> {
    let mut findings = Vec::new();
    let threshold = f64::from(threshold);
    for output in outputs {
        let Output::Table {
            name, arrow_ipc, ..
        } = output
        else {
            continue;
        };
        let Ok((schema, batches)) = crate::arrow_ipc::decode(arrow_ipc) else {
            continue;
        };
        for (index, field) in schema.fields().iter().enumerate() {
            let integer = matches!(
                field.data_type(),
                DataType::Int64 | DataType::Int32 | DataType::UInt64 | DataType::UInt32
            );
            if !integer {
                continue;
            }
            let mut below = 0;
            let mut unrounded = 0;
            for batch in &batches {
                let values = cast(batch.column(index), &DataType::Float64).expect("numeric cast");
                let values = values.as_any().downcast_ref::<Float64Array>().expect("f64");
                for v in values.iter().flatten() {
                    if v > 0.0 && v < threshold {
                        below += 1;
                    }
                    if v > 0.0 && v < 100.0 && v % 5.0 != 0.0 {
                        unrounded += 1;
                    }
                }
            }
            if below > 0 {
                findings.push(finding(
                    "cell-below-threshold",
                    name,
                    format!("{below} cell(s) of {} under {threshold}", field.name()),
                ));
            }
            if unrounded > 0 {
                findings.push(finding(
                    "unrounded-small-count",
                    name,
                    format!(
                        "{unrounded} count(s) of {} under 100 not rounded to 5",
                        field.name()
                    ),
                ));
            }
        }
        // A total row next to a suppressed (NULL) cell lets the cell be
        // recovered by subtraction.
        for batch in &batches {
            let Ok(labels) = cast(batch.column(0), &DataType::Utf8) else {
                continue;
            };
            let labels = labels.as_any().downcast_ref::<StringArray>().expect("utf8");
            let total = (0..labels.len()).any(|i| {
                labels.is_valid(i)
                    && matches!(labels.value(i).to_lowercase().as_str(), "total" | "all")
            });
            let nulls = (1..batch.num_columns()).any(|c| batch.column(c).null_count() > 0);
            if total && nulls {
                findings.push(finding(
                    "secondary-disclosure",
                    name,
                    "a total row and a suppressed cell: the cell may be recovered by subtraction"
                        .into(),
                ));
            }
        }
    }
    // Model outputs: coefficients against the number of observations.
    let value = |wanted: &str| {
        outputs.iter().find_map(|o| match o {
            Output::Value { name, value } if name == wanted => Some(*value),
            _ => None,
        })
    };
    let coefficients = outputs
        .iter()
        .filter(|o| matches!(o, Output::Value { name, .. } if name.starts_with("coef")))
        .count();
    if coefficients > 0
        && let Some(n) = value("n_obs").or_else(|| value("n"))
        && n - (coefficients as f64) < 10.0
    {
        findings.push(finding(
            "residual-df",
            "coefficients",
            format!(
                "{coefficients} coefficients from {n} observations: fewer than 10 residual degrees of freedom"
            ),
        ));
    }
    findings
}

/// Whether outputs need a human under a `review_cells_over` rule: more
/// cells than the rule allows, or any model coefficients.
pub fn rule_holds(outputs: &[Output], cells_over: u64) -> bool {
    let mut cells = 0u64;
    for output in outputs {
        match output {
            Output::Value { name, .. } if name.starts_with("coef") => return true,
            Output::Value { .. } | Output::Grade { .. } => cells += 1,
            Output::Table { arrow_ipc, .. } => {
                if let Ok((schema, batches)) = crate::arrow_ipc::decode(arrow_ipc) {
                    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
                    cells += (rows * schema.fields().len()) as u64;
                }
            }
        }
    }
    cells > cells_over
}

/// Hold a finished job's output for review.
pub async fn hold(
    store: &Store,
    job_id: &str,
    author: &str,
    outputs: &[Output],
    context: serde_json::Value,
) -> Result<(), StoreError> {
    sqlx::query("INSERT INTO held_outputs (job_id, author, held_at, outputs, context, state) VALUES (?, ?, ?, ?, ?, 'held')")
        .bind(job_id)
        .bind(author)
        .bind(now())
        .bind(serde_json::to_string(outputs).expect("outputs serialise"))
        .bind(context.to_string())
        .execute(store.pool())
        .await?;
    crate::store::jobs::hold(store, job_id).await
}

/// A decision as a reviewer sends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDecision {
    /// `approve`, `reject` or `request-changes`.
    pub decision: String,
    #[serde(default)]
    pub comment: String,
}

/// A recorded decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Decision {
    pub reviewer: String,
    pub key_id: String,
    pub decision: String,
    pub comment: String,
    pub at: i64,
}

/// A held output as a reviewer sees it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeldOutput {
    pub job_id: String,
    pub author: String,
    pub held_at: i64,
    /// `held`, `released`, `rejected` or `changes-requested`.
    pub state: String,
    #[schema(value_type = Object)]
    pub outputs: serde_json::Value,
    /// Module, datasets, policy, the SQL the guest ran with each query's
    /// outcome, release rules and noise reports, privacy cost, pre-checks.
    #[schema(value_type = Object)]
    pub context: serde_json::Value,
    /// Decisions: the viewer's own while the review is open; all once it
    /// has ended (blind review).
    pub decisions: Vec<Decision>,
}

/// Why a review action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no held output {0}")]
    Unknown(String),
    #[error("the author of an output never reviews it")]
    OwnOutput,
    #[error("the review of this output has ended ({0})")]
    Ended(String),
    #[error("you already decided on this output")]
    AlreadyDecided,
    #[error("decision: approve, reject or request-changes")]
    UnknownDecision,
    #[error("a rejection or a change request needs a comment the author sees")]
    NoComment,
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn decision_of(row: &sqlx::sqlite::SqliteRow) -> Decision {
    Decision {
        reviewer: row.get("reviewer"),
        key_id: row.get("key_id"),
        decision: row.get("decision"),
        comment: row.get("comment"),
        at: row.get("at"),
    }
}

async fn decisions(store: &Store, job_id: &str) -> Result<Vec<Decision>, StoreError> {
    let rows = sqlx::query("SELECT * FROM reviews WHERE job_id = ? ORDER BY at, reviewer")
        .bind(job_id)
        .fetch_all(store.pool())
        .await?;
    Ok(rows.iter().map(decision_of).collect())
}

/// A held output for `viewer` (`None`: the author's view, without other
/// reviewers' identities until the end).
pub async fn get(
    store: &Store,
    job_id: &str,
    viewer: Option<&str>,
) -> Result<HeldOutput, ReviewError> {
    let row = sqlx::query("SELECT * FROM held_outputs WHERE job_id = ?")
        .bind(job_id)
        .fetch_optional(store.pool())
        .await
        .map_err(StoreError::from)?
        .ok_or_else(|| ReviewError::Unknown(job_id.into()))?;
    let state: String = row.get("state");
    let author: String = row.get("author");
    if viewer == Some(author.as_str()) {
        return Err(ReviewError::OwnOutput);
    }
    let all = decisions(store, job_id).await?;
    let visible = match viewer {
        _ if state != "held" => all,
        Some(viewer) => all.into_iter().filter(|d| d.reviewer == viewer).collect(),
        None => Vec::new(),
    };
    let parse = |name: &str| -> Result<serde_json::Value, StoreError> {
        serde_json::from_str(&row.get::<String, _>(name))
            .map_err(|e| StoreError::Record(e.to_string()))
    };
    Ok(HeldOutput {
        job_id: job_id.into(),
        author,
        held_at: row.get("held_at"),
        // The author does not see the output before its release.
        outputs: if viewer.is_some() {
            parse("outputs")?
        } else {
            serde_json::Value::Null
        },
        // The author sees fixed pre-check codes with counts, never the
        // context reviewers guard (queries, outcomes, metadata, names the
        // guest wrote): a guest could put its whole output there.
        context: if viewer.is_some() {
            parse("context")?
        } else {
            author_context(&parse("context")?)
        },
        state,
        decisions: visible,
    })
}

/// What the author of a held output may see of its context: each pre-check
/// code that fired and how often.
fn author_context(context: &serde_json::Value) -> serde_json::Value {
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for finding in context["prechecks"].as_array().into_iter().flatten() {
        if let Some(check) = finding["check"].as_str() {
            *counts.entry(check.to_string()).or_default() += 1;
        }
    }
    serde_json::json!({
        "prechecks": counts
            .into_iter()
            .map(|(check, count)| serde_json::json!({ "check": check, "count": count }))
            .collect::<Vec<_>>(),
    })
}

/// Held outputs still waiting, oldest first.
pub async fn queue(store: &Store) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT job_id FROM held_outputs WHERE state = 'held' ORDER BY held_at, job_id",
    )
    .fetch_all(store.pool())
    .await?)
}

/// What a decision led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Waiting for another reviewer.
    Pending,
    /// Two approvals: the job was released (its receipt names the
    /// reviewers' key ids).
    Released(Option<Box<crate::receipt::Receipt>>),
    Rejected(String),
    ChangesRequested(String),
}

/// How a release after the second approval is signed and what it states.
pub struct Finish<'a> {
    pub privacy_cost: crate::receipt::PrivacyCost,
    pub signer: &'a crate::receipt::Signer,
}

/// Record a reviewer's decision and carry out what follows: the decision,
/// its audit entry and the job's release (or end) are one transaction, so
/// a failure between them leaves nothing half done.
pub async fn decide(
    store: &Store,
    job_id: &str,
    reviewer: &str,
    key_id: &str,
    decision: &NewDecision,
    finish: Finish<'_>,
) -> Result<Outcome, ReviewError> {
    if !matches!(
        decision.decision.as_str(),
        "approve" | "reject" | "request-changes"
    ) {
        return Err(ReviewError::UnknownDecision);
    }
    if decision.decision != "approve" && decision.comment.trim().is_empty() {
        return Err(ReviewError::NoComment);
    }
    store.transition(async |tx| {
        let row = sqlx::query("SELECT author, state, outputs FROM held_outputs WHERE job_id = ?")
            .bind(job_id)
            .fetch_optional(tx.conn())
            .await
            .map_err(StoreError::from)?
            .ok_or_else(|| ReviewError::Unknown(job_id.into()))?;
        let author: String = row.get(0);
        let state: String = row.get(1);
        if author == reviewer {
            return Err(ReviewError::OwnOutput);
        }
        if state != "held" {
            return Err(ReviewError::Ended(state));
        }
        let done: Option<String> =
            sqlx::query_scalar("SELECT decision FROM reviews WHERE job_id = ? AND reviewer = ?")
                .bind(job_id)
                .bind(reviewer)
                .fetch_optional(tx.conn())
                .await
                .map_err(StoreError::from)?;
        if done.is_some() {
            return Err(ReviewError::AlreadyDecided);
        }
        sqlx::query("INSERT INTO reviews (job_id, reviewer, key_id, decision, comment, at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(job_id)
            .bind(reviewer)
            .bind(key_id)
            .bind(&decision.decision)
            .bind(&decision.comment)
            .bind(now())
            .execute(tx.conn())
            .await
            .map_err(StoreError::from)?;
        tx.record(
            reviewer,
            "review.decided",
            job_id,
            serde_json::json!({ "decision": decision.decision, "comment": decision.comment }),
        )
        .await?;
        let approvals: Vec<String> = sqlx::query_scalar(
            "SELECT key_id FROM reviews WHERE job_id = ? AND decision = 'approve' ORDER BY at, reviewer",
        )
        .bind(job_id)
        .fetch_all(tx.conn())
        .await
        .map_err(StoreError::from)?;
        let (new_state, outcome) = match decision.decision.as_str() {
            "reject" => ("rejected", Outcome::Rejected(decision.comment.clone())),
            "request-changes" => (
                "changes-requested",
                Outcome::ChangesRequested(decision.comment.clone()),
            ),
            _ if approvals.len() >= 2 => {
                let outputs: Vec<Output> = serde_json::from_str(&row.get::<String, _>(2))
                    .map_err(|e| StoreError::Record(e.to_string()))?;
                let receipt = crate::store::jobs::release_held_in(
                    tx,
                    job_id,
                    &outputs,
                    finish.privacy_cost,
                    approvals,
                    finish.signer,
                )
                .await?;
                ("released", Outcome::Released(receipt.map(Box::new)))
            }
            _ => ("held", Outcome::Pending),
        };
        match &outcome {
            Outcome::Rejected(reason) => {
                crate::store::jobs::end_review_in(
                    tx,
                    job_id,
                    "rejected",
                    &format!("review-rejected: {reason}"),
                )
                .await?
            }
            // The job ends unreleased; the author resubmits after the changes
            // (the review record keeps `changes-requested`).
            Outcome::ChangesRequested(comment) => {
                crate::store::jobs::end_review_in(
                    tx,
                    job_id,
                    "rejected",
                    &format!("changes-requested: {comment}"),
                )
                .await?
            }
            Outcome::Pending | Outcome::Released(_) => {}
        }
        if new_state != "held" {
            sqlx::query("UPDATE held_outputs SET state = ? WHERE job_id = ?")
                .bind(new_state)
                .bind(job_id)
                .execute(tx.conn())
                .await
                .map_err(StoreError::from)?;
        }
        Ok(outcome)
    }).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, RecordBatch};
    use datafusion::arrow::datatypes::{Field, Schema};

    fn table(labels: &[&str], counts: &[Option<i64>]) -> Output {
        let schema = Arc::new(Schema::new(vec![
            Field::new("district", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from(labels.to_vec())),
                Arc::new(Int64Array::from(counts.to_vec())),
            ],
        )
        .unwrap();
        Output::Table {
            name: "t".into(),
            rows: labels.len(),
            arrow_ipc: crate::arrow_ipc::encode(&schema, &[batch]).unwrap(),
        }
    }

    fn checks(outputs: &[Output]) -> Vec<String> {
        prechecks(outputs, 10)
            .into_iter()
            .map(|f| f.check)
            .collect()
    }

    #[test]
    fn each_precheck_fires_on_a_crafted_output_and_stays_quiet_on_a_clean_one() {
        let clean = table(&["Pudong", "Minhang"], &[Some(520), Some(230)]);
        assert!(checks(&[clean]).is_empty());
        assert_eq!(
            checks(&[table(&["Pudong", "Chongming"], &[Some(520), Some(3)])]),
            ["cell-below-threshold", "unrounded-small-count"]
        );
        assert_eq!(
            checks(&[table(&["Pudong", "Xuhui"], &[Some(520), Some(47)])]),
            ["unrounded-small-count"]
        );
        assert_eq!(
            checks(&[table(
                &["Pudong", "Chongming", "Total"],
                &[Some(520), None, Some(525)]
            )]),
            ["secondary-disclosure"]
        );
        let model = |n: f64| {
            vec![
                Output::Value {
                    name: "coef_a".into(),
                    value: 0.3,
                },
                Output::Value {
                    name: "coef_b".into(),
                    value: -1.2,
                },
                Output::Value {
                    name: "n_obs".into(),
                    value: n,
                },
            ]
        };
        assert_eq!(checks(&model(11.0)), ["residual-df"]);
        assert!(checks(&model(500.0)).is_empty());
        // The review rule: over N cells, or any coefficient.
        let two_by_two = table(&["Pudong", "Minhang"], &[Some(520), Some(230)]);
        assert!(rule_holds(std::slice::from_ref(&two_by_two), 3));
        assert!(!rule_holds(std::slice::from_ref(&two_by_two), 4));
        assert!(rule_holds(&model(500.0), 1000));
    }
}
