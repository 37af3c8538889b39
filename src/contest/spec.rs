//! A contest's spec: the TOML an administrator writes, checked with
//! `file:line` messages, and what it binds to.

use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::ContestError;
use super::metrics::Metric;
use crate::dataset::ColumnRole;

/// Fractions of the labelled rows.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Split {
    pub train: f64,
    pub public: f64,
    pub private: f64,
}

/// How public scores are released. Both round the score to the contest's
/// `step` first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ReleaseRule {
    /// The rounded score.
    Plain,
    /// The Ladder (the default): a new score only if it beats the team's
    /// best by more than `step`; otherwise the best again.
    #[default]
    Ladder,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpecFile {
    id: Spanned<String>,
    title: String,
    dataset: Spanned<String>,
    label: Spanned<String>,
    features: Option<Spanned<Vec<String>>>,
    metric: Metric,
    split: Spanned<Split>,
    opens: Spanned<String>,
    closes: Spanned<String>,
    #[serde(default = "default_daily")]
    daily_limit: u32,
    #[serde(default = "default_total")]
    total_limit: u32,
    #[serde(default = "default_picks")]
    final_picks: u32,
    /// Submissions a day from all teams together.
    #[serde(default = "default_contest_daily")]
    contest_daily_limit: u32,
    #[serde(default)]
    release: ReleaseRule,
    /// The released score's step (and the Ladder's margin).
    #[serde(alias = "ladder_step")]
    step: Option<Spanned<f64>>,
    /// The label's smallest and largest values: predictions are clipped to
    /// them (required for rmse, mae and macro-f1).
    label_range: Option<Spanned<[f64; 2]>>,
    fuel: Option<u64>,
    memory_mb: Option<u64>,
    timeout_seconds: Option<u64>,
    release_every_seconds: Option<u64>,
}

fn default_daily() -> u32 {
    5
}
fn default_total() -> u32 {
    100
}
fn default_picks() -> u32 {
    2
}
fn default_contest_daily() -> u32 {
    1_000
}

/// Released scores take at most this many steps across the metric's range
/// by default: log2(201) ≈ 7.65 bits a submission at most.
const DEFAULT_STEPS: f64 = 200.0;

fn default_step() -> f64 {
    1.0 / DEFAULT_STEPS
}

/// A checked contest spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Spec {
    pub id: String,
    pub title: String,
    pub dataset: String,
    pub label: String,
    /// Empty: every column that is neither an identifier nor the label.
    pub features: Vec<String>,
    pub metric: Metric,
    pub split: Split,
    /// Seconds since the Unix epoch.
    pub opens_at: i64,
    pub closes_at: i64,
    pub daily_limit: u32,
    pub total_limit: u32,
    pub final_picks: u32,
    /// Submissions a day from all teams together.
    #[serde(default = "default_contest_daily")]
    pub contest_daily_limit: u32,
    pub release: ReleaseRule,
    /// Released scores are multiples of this; the Ladder's margin.
    #[serde(alias = "ladder_step", default = "default_step")]
    pub step: f64,
    /// Predictions are clipped to it (and to [0, 1] for probabilities).
    #[serde(default)]
    pub label_range: Option<(f64, f64)>,
    pub fuel: Option<u64>,
    pub memory_mb: Option<u64>,
    pub timeout_seconds: Option<u64>,
    /// Scores are released on a schedule from the submission's start:
    /// at the first multiple of this many seconds after the run ended.
    /// Unset: once, at the time limit (the run's duration shows nothing).
    /// Shorter periods are faster and leak at most
    /// log2(⌈limit / period⌉) bits of the run's duration a submission.
    #[serde(default)]
    pub release_every_seconds: Option<u64>,
}

fn line_of(text: &str, offset: usize) -> usize {
    crate::policy::line_of(text, offset)
}

fn parse_time(text: &str) -> Option<i64> {
    humantime::parse_rfc3339(text)
        .ok()?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs() as i64)
}

/// Parse and check a spec; errors are `file:line: message`.
pub fn parse_spec(file: &str, text: &str) -> Result<Spec, ContestError> {
    let parsed: SpecFile = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(text, s.start));
        ContestError::BadSpec(vec![format!("{file}:{line}: {}", e.message())])
    })?;
    let mut problems = Vec::new();
    let mut problem = |span: std::ops::Range<usize>, message: &str| {
        let line = if span.is_empty() {
            1
        } else {
            line_of(text, span.start)
        };
        problems.push(format!("{file}:{line}: {message}"));
    };
    let id = parsed.id.get_ref();
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        problem(parsed.id.span(), "id: lower-case letters, digits and '-'");
    }
    let split = *parsed.split.get_ref();
    let parts = [split.train, split.public, split.private];
    if parts.iter().any(|p| !(p.is_finite() && *p > 0.0))
        || (parts.iter().sum::<f64>() - 1.0).abs() > 1e-9
    {
        problem(
            parsed.split.span(),
            "split: train, public and private fractions, each above 0, summing to 1",
        );
    }
    let opens = parse_time(parsed.opens.get_ref());
    let closes = parse_time(parsed.closes.get_ref());
    match (opens, closes) {
        (None, _) => problem(
            parsed.opens.span(),
            "opens: an RFC 3339 time, e.g. 2026-11-01T00:00:00Z",
        ),
        (_, None) => problem(parsed.closes.span(), "closes: an RFC 3339 time"),
        (Some(o), Some(c)) if o >= c => problem(parsed.closes.span(), "closes: after opens"),
        _ => {}
    }
    let label_range = parsed.label_range.as_ref().map(|r| {
        let [lo, hi] = *r.get_ref();
        (lo, hi)
    });
    match (&parsed.label_range, label_range) {
        (Some(span), Some((lo, hi))) if !(lo.is_finite() && hi.is_finite() && lo < hi) => problem(
            span.span(),
            "label_range: [smallest, largest], finite, smallest first",
        ),
        (None, _) if parsed.metric.needs_label_range() => problem(
            0..0,
            "label_range = [smallest, largest] is required for rmse, mae and macro-f1: predictions are clipped to it",
        ),
        _ => {}
    }
    if parsed.contest_daily_limit < parsed.daily_limit {
        problem(0..0, "contest_daily_limit at least daily_limit");
    }
    if parsed.daily_limit == 0 || parsed.total_limit < parsed.daily_limit || parsed.final_picks == 0
    {
        problem(
            0..0,
            "daily_limit at least 1, total_limit at least daily_limit, final_picks at least 1",
        );
    }
    let (low, high) = parsed.metric.score_range(label_range);
    let step = parsed
        .step
        .as_ref()
        .map_or((high - low) / DEFAULT_STEPS, |s| *s.get_ref());
    if !(step.is_finite() && step > 0.0 && step <= high - low) {
        problem(
            parsed.step.as_ref().map_or(0..0, |s| s.span()),
            "step: above 0 and at most the metric's range",
        );
    }
    if !problems.is_empty() {
        return Err(ContestError::BadSpec(problems));
    }
    Ok(Spec {
        id: parsed.id.into_inner(),
        title: parsed.title,
        dataset: parsed.dataset.into_inner(),
        label: parsed.label.into_inner(),
        features: parsed.features.map(Spanned::into_inner).unwrap_or_default(),
        metric: parsed.metric,
        split,
        opens_at: opens.expect("checked"),
        closes_at: closes.expect("checked"),
        daily_limit: parsed.daily_limit,
        total_limit: parsed.total_limit,
        final_picks: parsed.final_picks,
        contest_daily_limit: parsed.contest_daily_limit,
        release: parsed.release,
        step,
        label_range,
        fuel: parsed.fuel,
        memory_mb: parsed.memory_mb,
        timeout_seconds: parsed.timeout_seconds,
        release_every_seconds: parsed.release_every_seconds,
    })
}

impl Spec {
    /// Check the spec against its dataset's dictionary; fills in the
    /// default features.
    pub fn bind(&mut self, manifest: &crate::catalog::Manifest) -> Result<(), ContestError> {
        let column = |name: &str| manifest.columns.iter().find(|c| c.name == name);
        let mut problems = Vec::new();
        match column(&self.label) {
            Some(c) if c.role == ColumnRole::Label => {}
            _ => problems.push(format!(
                "label: {} is not a label column of {}",
                self.label, manifest.id
            )),
        }
        if self.features.is_empty() {
            self.features = manifest
                .columns
                .iter()
                .filter(|c| c.role != ColumnRole::Identifier && c.name != self.label)
                .map(|c| c.name.clone())
                .collect();
        }
        for feature in &self.features {
            match column(feature) {
                Some(c) if c.role != ColumnRole::Identifier && c.name != self.label => {}
                _ => problems.push(format!(
                    "features: {feature} is not a non-identifier column of {} other than the label",
                    manifest.id
                )),
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ContestError::BadSpec(problems))
        }
    }

    /// The score on the step grid (cleaned of binary noise, so 0.505 shows
    /// as 0.505).
    pub(super) fn round(&self, score: f64) -> f64 {
        let step = if self.step > 0.0 {
            self.step
        } else {
            default_step()
        };
        let stepped = (score / step).round() * step;
        (stepped * 1e9).round() / 1e9
    }

    /// Most bits one released score can carry: log2 of the number of steps
    /// in the metric's range, plus one.
    pub fn bits_per_submission(&self) -> f64 {
        let (low, high) = self.metric.score_range(self.label_range);
        ((high - low) / self.step + 1.0).log2()
    }

    /// Leaderboard order of two scores: the better one first.
    pub(super) fn rank(&self, a: f64, b: f64) -> std::cmp::Ordering {
        if self.better(a, b) {
            std::cmp::Ordering::Less
        } else if self.better(b, a) {
            std::cmp::Ordering::Greater
        } else {
            std::cmp::Ordering::Equal
        }
    }

    pub(super) fn better(&self, a: f64, b: f64) -> bool {
        if self.metric.higher_is_better() {
            a > b
        } else {
            a < b
        }
    }
}
