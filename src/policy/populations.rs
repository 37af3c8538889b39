//! Populations across a policy set: which datasets share a budget, their
//! caps, and whether a population is offered both exactly and with noise.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::*;

/// What checking policies against the catalog's populations found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PopulationReport {
    /// Errors: the set is refused.
    pub problems: Vec<PolicyDiagnostic>,
    /// Facts an administrator should read (populations answered on both
    /// sides, and the rule that applies to them).
    pub notes: Vec<String>,
}

impl PolicySet {
    /// The tightest budget caps over `datasets` (one population) whose
    /// policies allow a noisy mode; `None` when none does.
    pub fn population_caps(&self, datasets: &[String]) -> Option<crate::dp::budget::Caps> {
        datasets
            .iter()
            .filter_map(|d| self.policy_for(d))
            .filter(|p| p.allows(Mode::Dp) || p.allows(Mode::SampleAggregate))
            .filter_map(|p| p.dp.map(|rules| rules.caps()))
            .reduce(|a, b| a.tightest(b))
    }

    /// Check the set against the catalog's populations (`dataset →
    /// population`): the noisy modes of one population share one budget,
    /// so their policies must state the same caps; and a population
    /// answered on both sides is reported with the per-tenant rule.
    pub fn check_populations(&self, populations: &BTreeMap<String, String>) -> PopulationReport {
        let mut members: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for (dataset, population) in populations {
            members.entry(population).or_default().push(dataset);
        }
        let mut report = PopulationReport::default();
        for (population, datasets) in members {
            let mut caps: Vec<(&str, Arc<Policy>, crate::dp::budget::Caps)> = Vec::new();
            let mut sides: BTreeMap<Side, Vec<String>> = BTreeMap::new();
            for dataset in &datasets {
                let Some(policy) = self.policy_for(dataset) else {
                    continue;
                };
                for mode in &policy.modes {
                    if let Some(side) = mode.side() {
                        sides
                            .entry(side)
                            .or_default()
                            .push(format!("{} on {dataset}", mode.name()));
                    }
                }
                if (policy.allows(Mode::Dp) || policy.allows(Mode::SampleAggregate))
                    && let Some(rules) = policy.dp
                {
                    caps.push((dataset, Arc::clone(&policy), rules.caps()));
                }
            }
            if let Some((first, _, expected)) = caps.first() {
                for (dataset, policy, found) in &caps[1..] {
                    if found != expected {
                        report.problems.push(PolicyDiagnostic {
                            file: policy.source.clone(),
                            line: 1,
                            message: format!(
                                "[dp] of {dataset} states other budget caps than {first}'s \
                                 ({found:?} against {expected:?}); both are in population \
                                 {population}, which has one budget"
                            ),
                        });
                    }
                }
            }
            if let (Some(exact), Some(noisy)) = (sides.get(&Side::Exact), sides.get(&Side::Noisy)) {
                report.notes.push(format!(
                    "population {population} answers exactly ({}) and with noise ({}): \
                     each tenant is pinned to one side by its first job on the population \
                     and is refused the other (mode-conflict)",
                    exact.join(", "),
                    noisy.join(", ")
                ));
            }
        }
        report
    }
}
