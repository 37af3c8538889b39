//! The noisy answer: which group keys are released (the full cross product
//! of published categories, or the keys that pass OpenDP's threshold on
//! their noisy unit counts), then noise on every measure of every released
//! key, and the report of what was spent and how the noise was drawn.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::logical_expr::Aggregate;

use super::bounding::{Totals, width};
use super::spend::{Bounds, Enforced, Spend};
use super::{ColumnNoise, Key, Measure, Report, failed};
use crate::dp::DpTable;
use crate::dp::noise::{self, ci95};
use crate::policy::DpRules;
use crate::query::error::QueryError;

/// Keys released and, when thresholded, their noisy unit counts with the
/// noise scale and the threshold.
struct Released {
    keys: Vec<Key>,
    noisy_units: Option<(Vec<i64>, f64)>,
    threshold: Option<i64>,
}

fn release_keys(
    public: Option<&[&Vec<String>]>,
    totals: &HashMap<Key, Totals>,
    bounds: Bounds,
    spend: &Spend,
    rules: &DpRules,
) -> Result<Released, QueryError> {
    match public {
        Some(lists) => {
            let mut keys: Vec<Key> = vec![Vec::new()];
            for list in lists {
                keys = keys
                    .into_iter()
                    .flat_map(|prefix| {
                        list.iter().map(move |value| {
                            let mut key = prefix.clone();
                            key.push(Some(value.clone()));
                            key
                        })
                    })
                    .collect();
            }
            Ok(Released {
                keys,
                noisy_units: None,
                threshold: None,
            })
        }
        None => {
            let units: HashMap<String, i64> = totals
                .iter()
                .map(|(key, t)| (serde_json::to_string(key).expect("keys serialise"), t.units))
                .collect();
            let released = noise::threshold_keys(
                units,
                bounds.max_groups,
                spend.epsilon_each,
                rules.delta_per_query,
            )
            .map_err(failed)?;
            let mut keys: Vec<(Key, i64)> = released
                .counts
                .iter()
                .map(|(k, n)| (serde_json::from_str(k).expect("our own keys"), *n))
                .collect();
            keys.sort();
            let counts = keys.iter().map(|(_, n)| *n).collect::<Vec<_>>();
            Ok(Released {
                keys: keys.into_iter().map(|(k, _)| k).collect(),
                noisy_units: Some((counts, released.scale)),
                threshold: Some(released.threshold),
            })
        }
    }
}

/// The released batch (group columns, then one noisy column per measure,
/// in the aggregation's schema) and its report.
pub(super) fn answer(
    aggregate: &Aggregate,
    table: &DpTable,
    groups: usize,
    measures: &[Measure],
    public: Option<&[&Vec<String>]>,
    totals: &HashMap<Key, Totals>,
    spend: &Spend,
) -> Result<(RecordBatch, Report), QueryError> {
    let rules = &table.rules;
    let bounds = spend.bounds;
    let Released {
        keys: released,
        noisy_units,
        threshold,
    } = release_keys(public, totals, bounds, spend, rules)?;
    let empty = Totals::empty(width(measures));
    let totals_of = |key: &Key| totals.get(key).unwrap_or(&empty);
    let Spend {
        gaussian,
        zcdp,
        epsilon_each,
        delta_each,
        rho_each,
        ..
    } = *spend;

    let mut columns: Vec<ArrayRef> = Vec::new();
    for (index, field) in aggregate.schema.fields().iter().take(groups).enumerate() {
        let values: StringArray = released.iter().map(|key| key[index].clone()).collect();
        columns.push(cast(&(Arc::new(values) as ArrayRef), field.data_type()).map_err(failed)?);
    }
    let mut noise_report = Vec::new();
    let mut slot = 0usize;
    let fields = aggregate.schema.fields();
    // Noise of one quantity: integer counts or float sums, with their L1
    // sensitivity (Laplace) or L2 sensitivity (Gaussian: a unit in
    // `max_groups` groups moves the unit counts by √max_groups, not
    // max_groups; its row counts by `l2_rows`).
    let spread = f64::from(bounds.max_groups).sqrt();
    let counts_noise =
        |values: &[i64], l1: i64, l2: f64| -> Result<(Vec<i64>, f64, f64), QueryError> {
            if gaussian {
                let floats: Vec<f64> = values.iter().map(|v| *v as f64).collect();
                let (noisy, scale) = if zcdp {
                    noise::gaussian_sums_zcdp(&floats, l2, rho_each)
                } else {
                    noise::gaussian_sums(&floats, l2, epsilon_each, delta_each)
                }
                .map_err(failed)?;
                Ok((
                    noisy.into_iter().map(|v| v.round() as i64).collect(),
                    scale,
                    noise::ci95_gaussian(scale),
                ))
            } else {
                let (noisy, scale) =
                    noise::laplace_counts(values, l1, epsilon_each).map_err(failed)?;
                Ok((noisy, scale, noise::ci95_discrete(scale)))
            }
        };
    let sums_noise =
        |values: &[f64], l1: f64, l2: f64| -> Result<(Vec<f64>, f64, f64), QueryError> {
            if gaussian {
                let (noisy, scale) = if zcdp {
                    noise::gaussian_sums_zcdp(values, l2, rho_each)
                } else {
                    noise::gaussian_sums(values, l2, epsilon_each, delta_each)
                }
                .map_err(failed)?;
                Ok((noisy, scale, noise::ci95_gaussian(scale)))
            } else {
                let (noisy, scale) =
                    noise::laplace_sums(values, l1, epsilon_each).map_err(failed)?;
                Ok((noisy, scale, ci95(scale)))
            }
        };
    let group_factor = bounds.group_factor();
    let l2_rows = bounds.l2_rows;
    for (i, m) in measures.iter().enumerate() {
        let field = &fields[groups + i];
        let (array, scales, interval): (ArrayRef, Vec<f64>, Option<f64>) = match m {
            Measure::Count(_) => {
                let values: Vec<i64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot].round() as i64)
                    .collect();
                slot += 1;
                let (noisy, scale, interval) = counts_noise(&values, group_factor, l2_rows)?;
                (
                    Arc::new(Int64Array::from_iter_values(
                        noisy.into_iter().map(|v| v.max(0)),
                    )),
                    vec![scale],
                    Some(interval),
                )
            }
            Measure::Units => {
                let (noisy, scale, interval) = match &noisy_units {
                    Some((counts, scale)) => (counts.clone(), *scale, noise::ci95_discrete(*scale)),
                    None => {
                        let values: Vec<i64> =
                            released.iter().map(|k| totals_of(k).units).collect();
                        counts_noise(&values, i64::from(bounds.max_groups), spread)?
                    }
                };
                (
                    Arc::new(Int64Array::from_iter_values(
                        noisy.into_iter().map(|v| v.max(0)),
                    )),
                    vec![scale],
                    Some(interval),
                )
            }
            Measure::Sum { lo, hi, .. } => {
                let values: Vec<f64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot])
                    .collect();
                slot += 1;
                let bound = lo.abs().max(hi.abs());
                let (noisy, scale, interval) =
                    sums_noise(&values, group_factor as f64 * bound, l2_rows * bound)?;
                (
                    Arc::new(Float64Array::from(noisy)),
                    vec![scale],
                    Some(interval),
                )
            }
            Measure::Avg { lo, hi, .. } => {
                let sums: Vec<f64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot])
                    .collect();
                let counts: Vec<i64> = released
                    .iter()
                    .map(|k| totals_of(k).partials[slot + 1].round() as i64)
                    .collect();
                slot += 2;
                let bound = lo.abs().max(hi.abs());
                let (noisy_sums, sum_scale, _) =
                    sums_noise(&sums, group_factor as f64 * bound, l2_rows * bound)?;
                let (noisy_counts, count_scale, _) = counts_noise(&counts, group_factor, l2_rows)?;
                let averages: Float64Array = noisy_sums
                    .iter()
                    .zip(&noisy_counts)
                    .map(|(s, n)| (*n >= 1).then(|| (s / *n as f64).clamp(*lo, *hi)))
                    .collect();
                (Arc::new(averages), vec![sum_scale, count_scale], None)
            }
        };
        noise_report.push(ColumnNoise {
            column: field.name().clone(),
            mechanism: if gaussian {
                if zcdp {
                    "discrete gaussian (opendp, zCDP)"
                } else {
                    "discrete gaussian (opendp, zCDP cast to (ε, δ))"
                }
            } else {
                "discrete laplace (opendp)"
            },
            scale: scales,
            ci95: interval,
        });
        columns.push(cast(&array, field.data_type()).map_err(failed)?);
    }
    let batch = RecordBatch::try_new(
        crate::release::positional_schema(&aggregate.schema),
        columns,
    )
    .map_err(failed)?;
    Ok((
        batch,
        Report {
            dataset: table.dataset.clone(),
            epsilon: if zcdp {
                spend.epsilon
            } else {
                spend.cost.epsilon
            },
            delta: spend.cost.delta,
            rho: zcdp.then_some(spend.cost.rho),
            keys: if spend.thresholded {
                "threshold"
            } else {
                "public"
            },
            threshold,
            bounded: match bounds.by {
                Enforced::Unique => "one row per unit",
                Enforced::Declared => "max_rows_per_unit",
                Enforced::PerQuery => "per query",
            },
            max_groups_per_unit: bounds.max_groups,
            max_rows_per_group: bounds.max_rows,
            max_rows_per_unit: bounds.total_rows,
            columns: noise_report,
        },
    ))
}
