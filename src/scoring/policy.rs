//! Scoring policies (`policies/scoring/*.toml`): which institutions may
//! score for which purpose, which datasets and columns a scorer reads, the
//! output range and bucketing, and the per-institution caps. Errors name
//! `file:line`.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::policy::{PolicyDiagnostic, PolicyError, line_of, toml_files};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    name: Spanned<String>,
    institutions: Vec<String>,
    purpose: String,
    range: Spanned<[f64; 2]>,
    step: Spanned<f64>,
    #[serde(default)]
    per_minute: Option<u32>,
    #[serde(default)]
    daily_cap: Option<u64>,
    #[serde(default)]
    one_score_per_days: Option<Spanned<u32>>,
    datasets: Spanned<Vec<DatasetColumns>>,
    #[serde(default)]
    grades: Option<Spanned<Vec<Grade>>>,
}

/// One step of a grade scale: scores at or above `min` (and below the next
/// grade's `min`) release as `grade`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grade {
    pub grade: String,
    pub min: f64,
}

/// The columns a scorer reads from one dataset.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetColumns {
    pub id: String,
    pub columns: Vec<String>,
}

/// A checked scoring policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoringPolicy {
    pub name: String,
    pub institutions: Vec<String>,
    pub purpose: String,
    pub min: f64,
    pub max: f64,
    /// Released scores are multiples of `step` from `min`.
    pub step: f64,
    /// Subjects per minute per institution (none: no limit).
    pub per_minute: Option<u32>,
    /// Subjects per day per institution (none: no cap).
    pub daily_cap: Option<u64>,
    /// One score per subject, institution and purpose in each window of
    /// this many days (none: no such rule).
    pub one_score_per_days: Option<u32>,
    pub datasets: Vec<DatasetColumns>,
    /// When set, only the grade is released, never the number; highest
    /// `min` first, the last covering the bottom of the range.
    pub grades: Option<Vec<Grade>>,
    pub hash: String,
    pub source: PathBuf,
}

impl ScoringPolicy {
    /// Clamp to the range and round to the nearest step. `None` for a
    /// value that is not a number.
    pub fn bucket(&self, score: f64) -> Option<f64> {
        if !score.is_finite() {
            return None;
        }
        let clamped = score.clamp(self.min, self.max);
        let steps = ((clamped - self.min) / self.step).round();
        Some((self.min + steps * self.step).min(self.max))
    }

    /// What is released for a raw score: the bucketed number, or its grade
    /// when the policy has a grade scale. `None` for a value that is not a
    /// number.
    pub fn release(&self, score: f64) -> Option<Released> {
        let bucketed = self.bucket(score)?;
        Some(match &self.grades {
            None => Released::Score(bucketed),
            Some(grades) => Released::Grade(
                grades
                    .iter()
                    .find(|g| bucketed >= g.min)
                    .or(grades.last())
                    .expect("a checked scale has grades")
                    .grade
                    .clone(),
            ),
        })
    }

    pub fn dataset_ids(&self) -> Vec<String> {
        self.datasets.iter().map(|d| d.id.clone()).collect()
    }
}

/// A released score: a number or a grade.
#[derive(Debug, Clone, PartialEq)]
pub enum Released {
    Score(f64),
    Grade(String),
}

/// Load every `*.toml` in `dir` (a missing directory is no policies).
pub fn load_dir(dir: &Path) -> Result<Vec<ScoringPolicy>, PolicyError> {
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let files = toml_files(dir, "scoring policy")?;
    let mut policies: Vec<ScoringPolicy> = Vec::new();
    let mut problems = Vec::new();
    for file in files {
        match parse(&file) {
            Ok(policy) if policies.iter().any(|p| p.name == policy.name) => {
                problems.push(PolicyDiagnostic {
                    file,
                    line: 1,
                    message: format!("a second scoring policy named {:?}", policy.name),
                })
            }
            Ok(policy) => policies.push(policy),
            Err(mut found) => problems.append(&mut found),
        }
    }
    if problems.is_empty() {
        Ok(policies)
    } else {
        Err(PolicyError(problems))
    }
}

fn parse(file: &Path) -> Result<ScoringPolicy, Vec<PolicyDiagnostic>> {
    let diagnostic = |line: usize, message: String| PolicyDiagnostic {
        file: file.to_path_buf(),
        line,
        message,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| vec![diagnostic(0, format!("cannot read: {e}"))])?;
    let parsed: File = toml::from_str(&text).map_err(|e| {
        let line = e.span().map_or(1, |s| line_of(&text, s.start));
        vec![diagnostic(line, e.message().to_string())]
    })?;
    let at = |span: std::ops::Range<usize>| line_of(&text, span.start);
    let mut problems = Vec::new();
    let [min, max] = *parsed.range.get_ref();
    if !(min.is_finite() && max.is_finite() && min < max) {
        problems.push(diagnostic(
            at(parsed.range.span()),
            "range: two finite numbers, the lower first".into(),
        ));
    }
    let step = *parsed.step.get_ref();
    if !(step.is_finite() && step > 0.0 && step <= max - min) {
        problems.push(diagnostic(
            at(parsed.step.span()),
            "step: a positive number no larger than the range".into(),
        ));
    }
    if parsed.datasets.get_ref().is_empty()
        || parsed
            .datasets
            .get_ref()
            .iter()
            .any(|d| d.columns.is_empty())
    {
        problems.push(diagnostic(
            at(parsed.datasets.span()),
            "datasets: at least one, each with at least one column".into(),
        ));
    }
    if parsed.institutions.is_empty() {
        problems.push(diagnostic(
            at(parsed.name.span()),
            "institutions: name at least one tenant".into(),
        ));
    }
    if let Some(grades) = &parsed.grades {
        let scale = grades.get_ref();
        let descending = scale.windows(2).all(|w| w[0].min > w[1].min);
        let covers = scale.last().is_some_and(|g| g.min <= min);
        let named = scale
            .iter()
            .all(|g| !g.grade.is_empty() && g.grade.len() <= 16 && g.min.is_finite());
        if !(descending && covers && named) {
            problems.push(diagnostic(
                at(grades.span()),
                "grades: highest `min` first, strictly falling, the last at or below the \
                 range's lower end, each grade 1 to 16 characters"
                    .into(),
            ));
        }
    }
    if let Some(days) = &parsed.one_score_per_days
        && !(1..=366).contains(days.get_ref())
    {
        problems.push(diagnostic(
            at(days.span()),
            "one_score_per_days: 1 to 366".into(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(ScoringPolicy {
        name: parsed.name.into_inner(),
        institutions: parsed.institutions,
        purpose: parsed.purpose,
        min,
        max,
        step,
        per_minute: parsed.per_minute,
        daily_cap: parsed.daily_cap,
        one_score_per_days: parsed.one_score_per_days.map(Spanned::into_inner),
        datasets: parsed.datasets.into_inner(),
        grades: parsed.grades.map(Spanned::into_inner),
        hash: hex::encode(Sha256::digest(text.as_bytes())),
        source: file.to_path_buf(),
    })
}

/// Why a scoring request is refused before any subject runs.
#[derive(Debug, thiserror::Error)]
pub enum ScoringProblem {
    #[error("the scoring policy names column {column:?}, which {dataset} does not offer")]
    UnknownColumn { column: String, dataset: String },
    #[error("subjects: 1 to {max} per batch")]
    BatchSize { max: usize },
    #[error("subjects: {0} is listed more than once")]
    Repeated(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(min: f64, max: f64, step: f64) -> ScoringPolicy {
        ScoringPolicy {
            name: "t".into(),
            institutions: vec!["bank".into()],
            purpose: "credit-assessment".into(),
            min,
            max,
            step,
            per_minute: None,
            daily_cap: None,
            one_score_per_days: None,
            datasets: vec![],
            grades: None,
            hash: String::new(),
            source: PathBuf::new(),
        }
    }

    #[test]
    fn buckets_clamp_round_and_refuse_non_numbers() {
        let p = policy(0.0, 1000.0, 10.0);
        assert_eq!(p.bucket(123.4), Some(120.0));
        assert_eq!(p.bucket(125.0), Some(130.0));
        assert_eq!(p.bucket(-5.0), Some(0.0));
        assert_eq!(p.bucket(1e300), Some(1000.0));
        assert_eq!(p.bucket(f64::NAN), None);
        assert_eq!(p.bucket(f64::INFINITY), None);
        let odd = policy(0.0, 1000.0, 300.0);
        assert_eq!(odd.bucket(990.0), Some(900.0));
        assert_eq!(odd.bucket(1000.0), Some(900.0));
    }

    #[test]
    fn grade_scales_release_only_the_grade() {
        let mut p = policy(0.0, 1000.0, 10.0);
        p.grades = Some(
            [("A", 800.0), ("B", 600.0), ("C", 0.0)]
                .map(|(grade, min)| Grade {
                    grade: grade.into(),
                    min,
                })
                .to_vec(),
        );
        assert_eq!(p.release(805.0), Some(Released::Grade("A".into())));
        assert_eq!(
            p.release(796.0),
            Some(Released::Grade("A".into())),
            "bucketed to 800 first"
        );
        assert_eq!(p.release(794.0), Some(Released::Grade("B".into())));
        assert_eq!(p.release(-1e9), Some(Released::Grade("C".into())));
        assert_eq!(p.release(f64::NAN), None);
    }

    #[test]
    fn grade_scales_must_fall_and_cover_the_range() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "name = \"a\"\ninstitutions = [\"bank\"]\npurpose = \"credit-assessment\"\nrange = [0, 1000]\nstep = 10\ndatasets = [{ id = \"tax_records\", columns = [\"tax_paid\"] }]\ngrades = [{ grade = \"A\", min = 500 }, { grade = \"B\", min = 100 }]\n",
        )
        .unwrap();
        let error = load_dir(dir.path()).unwrap_err();
        assert_eq!(error.0[0].line, 7, "{:?}", error.0);
        assert!(error.0[0].message.contains("grades"));
    }

    #[test]
    fn bad_files_name_the_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "name = \"a\"\ninstitutions = [\"bank\"]\npurpose = \"credit-assessment\"\nrange = [10, 0]\nstep = 5\ndatasets = [{ id = \"tax_records\", columns = [\"tax_paid\"] }]\n",
        )
        .unwrap();
        let error = load_dir(dir.path()).unwrap_err();
        assert_eq!(error.0[0].line, 4, "{:?}", error.0);
        assert!(error.0[0].message.contains("range"));
    }
}
