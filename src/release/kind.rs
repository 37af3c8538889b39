//! What a job asks to be: its mode and that mode's options, parsed once
//! from a request, so an option of one mode cannot reach another and no
//! later step parses a mode name again.

use crate::dp::Accuracy;
use crate::dp::sample_aggregate::Spec;
use crate::policy::Mode;

/// A job's release mode with its options.
#[derive(Debug, Clone, PartialEq)]
pub enum JobKind {
    /// Exact aggregates over protected data, under the release gate.
    Aggregate,
    /// DP SQL: each query's ε, or an error bound to meet.
    Dp(DpSpend),
    /// Sample-and-aggregate: the declared output and its ε.
    SampleAggregate(Box<Spec>),
    /// A contest submission (the team is the submitter's tenant).
    Contest(String),
}

/// How a dp job's queries spend ε.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum DpSpend {
    Epsilon(f64),
    Accuracy(Accuracy),
}

/// A request whose mode and options do not fit together.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum KindError {
    #[error("unsupported mode {0:?} (jobs run in: aggregate, dp, sample-aggregate, contest)")]
    UnknownMode(String),
    #[error("mode {mode} needs {needs}")]
    Missing {
        mode: &'static str,
        needs: &'static str,
    },
    #[error("`{option}` is not an option of mode {mode}")]
    Foreign {
        mode: &'static str,
        option: &'static str,
    },
    #[error(
        "say how much ε each query spends (`epsilon`) or the error bound it must reach \
         (`accuracy`), not both"
    )]
    BothSpends,
    #[error("accuracy: {0}")]
    Accuracy(String),
}

/// A request's mode and options as sent.
#[derive(Debug, Clone, Default)]
pub struct RequestedKind {
    pub mode: String,
    pub epsilon: Option<f64>,
    pub accuracy: Option<Accuracy>,
    pub sample_aggregate: Option<Spec>,
    pub contest: Option<String>,
}

impl JobKind {
    /// The kind a request asks for; every option must belong to its mode.
    pub fn parse(request: RequestedKind) -> Result<JobKind, KindError> {
        let RequestedKind {
            mode,
            epsilon,
            accuracy,
            sample_aggregate,
            contest,
        } = request;
        let mode = match mode.as_str() {
            "aggregate" => Mode::Aggregate,
            "dp" => Mode::Dp,
            "sample-aggregate" => Mode::SampleAggregate,
            "contest" => Mode::Contest,
            _ => return Err(KindError::UnknownMode(mode)),
        };
        let name = mode.name();
        let foreign = |option| Err(KindError::Foreign { mode: name, option });
        if mode != Mode::Dp {
            if epsilon.is_some() {
                return foreign("epsilon");
            }
            if accuracy.is_some() {
                return foreign("accuracy");
            }
        }
        if mode != Mode::SampleAggregate && sample_aggregate.is_some() {
            return foreign("sample_aggregate");
        }
        if mode != Mode::Contest && contest.is_some() {
            return foreign("contest");
        }
        Ok(match mode {
            Mode::Dp => JobKind::Dp(match (epsilon, accuracy) {
                (Some(epsilon), None) => DpSpend::Epsilon(epsilon),
                (None, Some(accuracy)) => {
                    accuracy.check().map_err(KindError::Accuracy)?;
                    DpSpend::Accuracy(accuracy)
                }
                (None, None) => {
                    return Err(KindError::Missing {
                        mode: name,
                        needs: "`epsilon` (ε per query) or `accuracy` (an error bound)",
                    });
                }
                (Some(_), Some(_)) => return Err(KindError::BothSpends),
            }),
            Mode::SampleAggregate => {
                JobKind::SampleAggregate(Box::new(sample_aggregate.ok_or(KindError::Missing {
                    mode: name,
                    needs: "`sample_aggregate` (dimensions, ranges, defaults, ε)",
                })?))
            }
            Mode::Contest => JobKind::Contest(contest.ok_or(KindError::Missing {
                mode: name,
                needs: "`contest` (the contest's id)",
            })?),
            _ => JobKind::Aggregate,
        })
    }

    /// The policy mode this kind needs.
    pub fn mode(&self) -> Mode {
        match self {
            JobKind::Aggregate => Mode::Aggregate,
            JobKind::Dp(_) => Mode::Dp,
            JobKind::SampleAggregate(_) => Mode::SampleAggregate,
            JobKind::Contest(_) => Mode::Contest,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(mode: &str) -> RequestedKind {
        RequestedKind {
            mode: mode.into(),
            ..RequestedKind::default()
        }
    }

    #[test]
    fn options_belong_to_their_mode() {
        assert_eq!(JobKind::parse(kind("aggregate")), Ok(JobKind::Aggregate));
        assert_eq!(
            JobKind::parse(RequestedKind {
                epsilon: Some(0.1),
                ..kind("dp")
            }),
            Ok(JobKind::Dp(DpSpend::Epsilon(0.1)))
        );
        assert!(matches!(
            JobKind::parse(kind("everything")),
            Err(KindError::UnknownMode(m)) if m == "everything"
        ));
        assert!(matches!(
            JobKind::parse(kind("dp")),
            Err(KindError::Missing { mode: "dp", .. })
        ));
        assert!(matches!(
            JobKind::parse(kind("contest")),
            Err(KindError::Missing {
                mode: "contest",
                ..
            })
        ));
        assert!(matches!(
            JobKind::parse(kind("sample-aggregate")),
            Err(KindError::Missing { .. })
        ));
        // An option of another mode is refused, not ignored: a contest id
        // on an aggregate request does not turn it into a submission.
        assert!(matches!(
            JobKind::parse(RequestedKind {
                contest: Some("overdue".into()),
                ..kind("aggregate")
            }),
            Err(KindError::Foreign {
                mode: "aggregate",
                option: "contest"
            })
        ));
        assert!(matches!(
            JobKind::parse(RequestedKind {
                epsilon: Some(0.1),
                ..kind("aggregate")
            }),
            Err(KindError::Foreign {
                option: "epsilon",
                ..
            })
        ));
        assert_eq!(
            JobKind::parse(RequestedKind {
                epsilon: Some(0.1),
                accuracy: Some(Accuracy {
                    within: 10.0,
                    confidence: 0.95
                }),
                ..kind("dp")
            }),
            Err(KindError::BothSpends)
        );
        assert!(matches!(
            JobKind::parse(RequestedKind {
                accuracy: Some(Accuracy {
                    within: -1.0,
                    confidence: 0.95
                }),
                ..kind("dp")
            }),
            Err(KindError::Accuracy(_))
        ));
    }
}
