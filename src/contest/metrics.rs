//! Contest metrics: predictions against hidden labels.

use serde::{Deserialize, Serialize};

/// How a contest scores predictions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Metric {
    /// Binary: predictions are probabilities, class 1 at ≥ 0.5.
    Accuracy,
    /// Binary: predictions are scores or probabilities.
    RocAuc,
    /// Binary: predictions are probabilities in [0, 1].
    LogLoss,
    /// Binary, positive class 1, threshold 0.5.
    F1,
    /// Multi-class: predictions are class ids.
    MacroF1,
    Rmse,
    Mae,
}

impl Metric {
    pub fn higher_is_better(self) -> bool {
        matches!(
            self,
            Metric::Accuracy | Metric::RocAuc | Metric::F1 | Metric::MacroF1
        )
    }

    /// Whether the labels are classes (and a split can be stratified).
    pub fn is_classification(self) -> bool {
        !matches!(self, Metric::Rmse | Metric::Mae)
    }

    /// Probabilities below this (or above one minus it) are clipped before
    /// log-loss, which bounds its score by ln(1000) ≈ 6.91.
    pub const LOG_LOSS_FLOOR: f64 = 1e-3;

    /// A prediction the host accepts (it is clipped before scoring).
    pub fn valid(self, prediction: f64) -> bool {
        prediction.is_finite()
    }

    /// Clip a prediction to what this metric reads: probabilities to
    /// [0, 1] (log-loss to [0.001, 0.999]), values and classes to the
    /// label's declared range. A hostile model cannot move the score by
    /// more than a prediction inside that range could, so predictions far
    /// outside it carry nothing through the score.
    pub fn clip(self, prediction: f64, label_range: Option<(f64, f64)>) -> f64 {
        match self {
            Metric::Accuracy | Metric::RocAuc | Metric::F1 => prediction.clamp(0.0, 1.0),
            Metric::LogLoss => prediction.clamp(Self::LOG_LOSS_FLOOR, 1.0 - Self::LOG_LOSS_FLOOR),
            Metric::MacroF1 | Metric::Rmse | Metric::Mae => match label_range {
                Some((lo, hi)) => prediction.clamp(lo, hi),
                None => prediction,
            },
        }
    }

    /// The scores this metric can give once predictions are clipped; the
    /// released score is one of the steps of this range.
    pub fn score_range(self, label_range: Option<(f64, f64)>) -> (f64, f64) {
        match self {
            Metric::Accuracy | Metric::RocAuc | Metric::F1 | Metric::MacroF1 => (0.0, 1.0),
            Metric::LogLoss => (0.0, -Self::LOG_LOSS_FLOOR.ln()),
            Metric::Rmse | Metric::Mae => (0.0, label_range.map_or(1.0, |(lo, hi)| hi - lo)),
        }
    }

    /// Whether scoring needs the label's declared range.
    pub fn needs_label_range(self) -> bool {
        matches!(self, Metric::Rmse | Metric::Mae | Metric::MacroF1)
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::Accuracy => "accuracy",
            Metric::RocAuc => "roc-auc",
            Metric::LogLoss => "log-loss",
            Metric::F1 => "f1",
            Metric::MacroF1 => "macro-f1",
            Metric::Rmse => "rmse",
            Metric::Mae => "mae",
        }
    }

    /// Score `predictions` against `labels` (same length, not empty).
    pub fn score(self, predictions: &[f64], labels: &[f64]) -> f64 {
        let n = labels.len() as f64;
        let pairs = || predictions.iter().zip(labels);
        match self {
            Metric::Accuracy => {
                pairs()
                    .filter(|(p, y)| (**p >= 0.5) == (**y >= 0.5))
                    .count() as f64
                    / n
            }
            Metric::RocAuc => roc_auc(predictions, labels),
            Metric::LogLoss => {
                -pairs()
                    .map(|(p, y)| {
                        let p = p.clamp(1e-15, 1.0 - 1e-15);
                        if *y >= 0.5 { p.ln() } else { (1.0 - p).ln() }
                    })
                    .sum::<f64>()
                    / n
            }
            Metric::F1 => {
                let binary: Vec<f64> = predictions
                    .iter()
                    .map(|p| f64::from(u8::from(*p >= 0.5)))
                    .collect();
                f1(&binary, labels, 1.0)
            }
            Metric::MacroF1 => {
                let mut classes: Vec<f64> = labels.iter().map(|y| y.round()).collect();
                classes.sort_by(f64::total_cmp);
                classes.dedup();
                let rounded: Vec<f64> = predictions.iter().map(|p| p.round()).collect();
                classes
                    .iter()
                    .map(|c| f1(&rounded, labels, *c))
                    .sum::<f64>()
                    / classes.len() as f64
            }
            Metric::Rmse => (pairs().map(|(p, y)| (p - y).powi(2)).sum::<f64>() / n).sqrt(),
            Metric::Mae => pairs().map(|(p, y)| (p - y).abs()).sum::<f64>() / n,
        }
    }
}

/// F1 of class `positive` (labels and predictions compared after rounding).
fn f1(predictions: &[f64], labels: &[f64], positive: f64) -> f64 {
    let (mut tp, mut fp, mut fn_) = (0.0, 0.0, 0.0);
    for (p, y) in predictions.iter().zip(labels) {
        match (p.round() == positive, y.round() == positive) {
            (true, true) => tp += 1.0,
            (true, false) => fp += 1.0,
            (false, true) => fn_ += 1.0,
            (false, false) => {}
        }
    }
    if tp == 0.0 {
        0.0
    } else {
        2.0 * tp / (2.0 * tp + fp + fn_)
    }
}

/// Area under the ROC curve by ranks (ties share their mean rank).
fn roc_auc(predictions: &[f64], labels: &[f64]) -> f64 {
    let mut order: Vec<usize> = (0..predictions.len()).collect();
    order.sort_by(|a, b| predictions[*a].total_cmp(&predictions[*b]));
    let mut ranks = vec![0.0; predictions.len()];
    let mut i = 0;
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && predictions[order[j + 1]] == predictions[order[i]] {
            j += 1;
        }
        let mean_rank = (i + j) as f64 / 2.0 + 1.0;
        for k in i..=j {
            ranks[order[k]] = mean_rank;
        }
        i = j + 1;
    }
    let positives = labels.iter().filter(|y| **y >= 0.5).count() as f64;
    let negatives = labels.len() as f64 - positives;
    if positives == 0.0 || negatives == 0.0 {
        return 0.5;
    }
    let rank_sum: f64 = labels
        .iter()
        .zip(&ranks)
        .filter(|(y, _)| **y >= 0.5)
        .map(|(_, r)| r)
        .sum();
    (rank_sum - positives * (positives + 1.0) / 2.0) / (positives * negatives)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_match_hand_computed_values() {
        let labels = [1.0, 0.0, 1.0, 0.0];
        let perfect = [0.9, 0.1, 0.8, 0.3];
        assert_eq!(Metric::RocAuc.score(&perfect, &labels), 1.0);
        assert_eq!(Metric::RocAuc.score(&[0.5; 4], &labels), 0.5);
        assert_eq!(Metric::RocAuc.score(&[0.1, 0.9, 0.2, 0.8], &labels), 0.0);
        assert_eq!(Metric::Accuracy.score(&perfect, &labels), 1.0);
        assert_eq!(Metric::Accuracy.score(&[0.9, 0.9, 0.9, 0.9], &labels), 0.5);
        assert!((Metric::LogLoss.score(&[0.5; 4], &labels) - 2f64.ln()).abs() < 1e-12);
        // tp 1, fp 1, fn 1: F1 = 2/4.
        assert_eq!(Metric::F1.score(&[1.0, 1.0, 0.0, 0.0], &labels), 0.5);
        assert_eq!(
            Metric::MacroF1.score(&[0.0, 1.0, 2.0], &[0.0, 1.0, 2.0]),
            1.0
        );
        assert_eq!(Metric::Rmse.score(&[1.0, 3.0], &[0.0, 0.0]), 5f64.sqrt());
        assert_eq!(Metric::Mae.score(&[1.0, -3.0], &[0.0, 0.0]), 2.0);
        assert!(Metric::LogLoss.valid(1.5));
        assert!(!Metric::Rmse.valid(f64::NAN));
        assert!(!Metric::Mae.valid(f64::INFINITY));
    }

    #[test]
    fn clipping_bounds_every_score() {
        assert_eq!(Metric::LogLoss.clip(1.5, None), 0.999);
        assert_eq!(Metric::RocAuc.clip(-7.0, None), 0.0);
        assert_eq!(Metric::Mae.clip(1e6 + 0.1234, Some((0.0, 1.0))), 1.0);
        assert_eq!(Metric::Mae.clip(0.25, Some((0.0, 1.0))), 0.25);
        let worst = Metric::LogLoss.score(
            &[
                Metric::LogLoss.clip(0.0, None),
                Metric::LogLoss.clip(1.0, None),
            ],
            &[1.0, 0.0],
        );
        assert!(
            (worst - Metric::LogLoss.score_range(None).1).abs() < 1e-9,
            "{worst}"
        );
        assert_eq!(Metric::Mae.score_range(Some((2.0, 5.0))), (0.0, 3.0));
    }
}
