//! What one dp query spends, decided from the schema and the request
//! alone, before any data is read: the contribution bounds its
//! sensitivities are scaled to, its ε (declared, or the least that meets an
//! error bound), that ε's even split over the noisy quantities, δ, ρ under
//! zCDP accounting, and the [`Cost`] charged before anything is computed.

use super::{Measure, reject};
use crate::dp::budget::{self, Cost};
use crate::dp::{DpSession, DpTable};
use crate::policy::{Accounting, DpRules, Mechanism};
use crate::query::error::QueryError;

/// How much of the data one privacy unit may move, and how that is made
/// true.
#[derive(Debug, Clone, Copy)]
pub(super) struct Bounds {
    /// Groups one unit may be in.
    pub max_groups: u32,
    /// Rows one unit may have in one group.
    pub max_rows: u32,
    /// Rows one unit may have over all groups: the L1 sensitivity of a
    /// grouped count (a sum's is this times its bound).
    pub total_rows: u32,
    /// The largest L2 norm of one unit's per-group row counts (a sum's is
    /// this times its bound).
    pub l2_rows: f64,
    pub by: Enforced,
}

/// Who keeps a unit within its [`Bounds`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Enforced {
    /// The table has one row per unit: nothing to bound.
    Unique,
    /// The manifest's `max_rows_per_unit`, which the data was checked
    /// against at registration: a unit has at most that many rows in all,
    /// so the query runs as it is, with no per-unit stage.
    Declared,
    /// The query's plan: per (unit, group) capped at `max_rows` rows'
    /// worth, at most `max_groups` groups per unit.
    PerQuery,
}

impl Bounds {
    /// The bounds of a query over `table`: one row per unit needs none; a
    /// declared `max_rows_per_unit` r is used as it is (less noise, no
    /// truncation, no per-unit stage) when it is no looser than the
    /// policy's per-query bounds on every sensitivity the query's noise is
    /// scaled to: rows in all (r ≤ groups · rows), their L2 norm under
    /// Gaussian noise (r ≤ rows · √groups), and groups per unit when unit
    /// counts are released or keys thresholded on them (r ≤ groups);
    /// otherwise the policy's bounds, enforced in the plan. The choice
    /// depends on the policy, the manifest and the query's shape only.
    pub fn of(table: &DpTable, units_needed: bool) -> Self {
        let (groups, rows) = (
            table.rules.max_groups_per_unit,
            table.rules.max_rows_per_group,
        );
        let gaussian = table.rules.mechanism == Mechanism::Gaussian;
        let per_query_l2 = f64::from(rows) * f64::from(groups).sqrt();
        if table.unit_is_unique {
            Bounds {
                max_groups: 1,
                max_rows: 1,
                total_rows: 1,
                l2_rows: 1.0,
                by: Enforced::Unique,
            }
        } else if let Some(declared) = table.rows_per_unit
            && u64::from(declared) <= u64::from(groups) * u64::from(rows)
            && (!gaussian || f64::from(declared) <= per_query_l2)
            && (!units_needed || declared <= groups)
        {
            // r rows in all: in at most r groups, at most r in one; the L2
            // norm of counts summing to r is at most r (all in one group).
            Bounds {
                max_groups: declared,
                max_rows: declared,
                total_rows: declared,
                l2_rows: f64::from(declared),
                by: Enforced::Declared,
            }
        } else {
            Bounds {
                max_groups: groups,
                max_rows: rows,
                total_rows: groups.saturating_mul(rows),
                l2_rows: per_query_l2,
                by: Enforced::PerQuery,
            }
        }
    }

    /// Rows one unit contributes over all groups (the L1 sensitivity of a
    /// grouped count).
    pub fn group_factor(self) -> i64 {
        i64::from(self.total_rows)
    }
}

/// The query's privacy spend and how its noise is drawn.
#[derive(Debug, Clone, Copy)]
pub(super) struct Spend {
    /// The contribution bounds the sensitivities are scaled to.
    pub bounds: Bounds,
    /// Keys pass a noisy threshold (no published categories).
    pub thresholded: bool,
    /// Gaussian noise (otherwise Laplace).
    pub gaussian: bool,
    /// zCDP accounting (otherwise (ε, δ)).
    pub zcdp: bool,
    /// The query's ε: declared, or the least that meets the error bound.
    pub epsilon: f64,
    /// Each noisy quantity's share of ε (under zCDP: √(2ρ_each)).
    pub epsilon_each: f64,
    /// Each Gaussian quantity's share of the query's δ.
    pub delta_each: f64,
    /// Each noisy quantity's share of ρ (zCDP only).
    pub rho_each: f64,
    /// What the ledger is charged.
    pub cost: Cost,
}

impl Spend {
    pub fn plan(
        rules: &DpRules,
        bounds: Bounds,
        measures: &[Measure],
        thresholded: bool,
        session: &DpSession,
    ) -> Result<Spend, QueryError> {
        let noisy_quantities: usize = measures
            .iter()
            .map(|m| match m {
                Measure::Units if thresholded => 0,
                Measure::Avg { .. } => 2,
                _ => 1,
            })
            .sum::<usize>()
            + usize::from(thresholded);
        let group_factor = bounds.group_factor();
        let gaussian = rules.mechanism == Mechanism::Gaussian;
        // The Gaussian quantities share the query's δ_per_query evenly (the
        // threshold, when keys are not published, stays Laplace with its own).
        let gaussian_quantities = noisy_quantities - usize::from(thresholded);
        let delta_each = rules.delta_per_query / gaussian_quantities.max(1) as f64;
        let zcdp = rules.accounting == Accounting::Zcdp;
        if zcdp {
            if thresholded {
                return Err(reject(
                    "zcdp-needs-published-keys",
                    "this population accounts in zCDP: group only by columns with published categories",
                ));
            }
            if session.accuracy.is_some() {
                return Err(reject(
                    "accuracy-not-for-zcdp",
                    "an error bound is translated to ε for Laplace noise; ask this table with an ε",
                ));
            }
        }
        if gaussian && session.accuracy.is_some() {
            return Err(reject(
                "accuracy-not-for-gaussian",
                "an error bound is translated to ε for Laplace noise; ask this table with an ε",
            ));
        }
        let epsilon = match session.accuracy {
            None => session.epsilon,
            Some(accuracy) => {
                // The least ε that keeps every noisy quantity within the
                // bound: the widest sensitivity decides, and each quantity
                // gets an even share, as with a declared ε.
                let mut widest = if thresholded {
                    f64::from(bounds.max_groups)
                } else {
                    0.0
                };
                for m in measures {
                    widest = widest.max(match m {
                        Measure::Count(_) => group_factor as f64,
                        Measure::Units => f64::from(bounds.max_groups),
                        Measure::Sum { lo, hi, .. } => group_factor as f64 * lo.abs().max(hi.abs()),
                        Measure::Avg { .. } => {
                            return Err(reject(
                                "accuracy-not-for-avg",
                                "an error bound applies to COUNT and SUM; ask for AVG with an ε",
                            ));
                        }
                    });
                }
                let needed = accuracy.epsilon_for(widest) * noisy_quantities.max(1) as f64;
                let (low, high) = rules.query_epsilon;
                if needed > high {
                    return Err(reject(
                        "accuracy-unreachable",
                        format!(
                            "±{} at {:.1}% needs ε = {needed:.4} for this query; one query may spend at most {high}",
                            accuracy.within,
                            accuracy.confidence * 100.0
                        ),
                    ));
                }
                needed.max(low)
            }
        };
        // zCDP accounting: the query is charged ρ, the ρ its ε would be
        // worth alone at the population's δ cap; every noisy quantity gets
        // an even share (Laplace at ε = √(2ρ) is ρ-zCDP, Gaussian at
        // σ = Δ₂/√(2ρ)).
        let rho_query = if zcdp {
            budget::zcdp_rho(epsilon, rules.delta_total)
        } else {
            0.0
        };
        let rho_each = rho_query / noisy_quantities.max(1) as f64;
        let epsilon_each = if zcdp {
            (2.0 * rho_each).sqrt()
        } else {
            epsilon / noisy_quantities.max(1) as f64
        };
        let cost = if zcdp {
            Cost {
                epsilon: 0.0,
                delta: 0.0,
                rho: rho_query,
            }
        } else {
            Cost {
                epsilon,
                delta: if thresholded {
                    rules.delta_per_query
                } else {
                    0.0
                } + if gaussian && gaussian_quantities > 0 {
                    rules.delta_per_query
                } else {
                    0.0
                },
                rho: 0.0,
            }
        };
        Ok(Spend {
            bounds,
            thresholded,
            gaussian,
            zcdp,
            epsilon,
            epsilon_each,
            delta_each,
            rho_each,
            cost,
        })
    }
}
