//! Quality profile of a dataset version, computed on registration: per
//! column null rate, out-of-bounds rate, distinct count, range, category
//! values; time coverage against the declared one; dictionary completeness;
//! and warnings for everything short of the data-quality bar (no nulls or
//! wrong values, full time coverage, a complete dictionary).
//!
//! Users see the profile, so it withholds what would single someone out:
//! no min/max of identifier, sensitive or string columns (an extreme is one
//! unit's value, or a rare category) and only category values held by at least
//! [`CATEGORY_MIN_UNITS`] privacy units.

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use super::manifest::{ColumnType, Manifest};
use crate::dataset::{ColumnRole, DatasetSource};

/// Counts in a published profile are multiples of this.
pub const PUBLISHED_COUNT_GRAIN: u64 = 10;

/// Category values rarer than this many privacy units stay out of the
/// profile and the synthetic sample.
pub const CATEGORY_MIN_UNITS: i64 = 10;
/// String columns with more distinct values than this are not categories.
const MAX_CATEGORIES: i64 = 50;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnProfile {
    pub name: String,
    pub nulls: u64,
    pub null_rate: f64,
    pub distinct: u64,
    /// Values outside the manifest's bounds (numeric columns).
    pub out_of_bounds: u64,
    pub out_of_bounds_rate: f64,
    pub min: Option<String>,
    pub max: Option<String>,
    /// Category values held by enough privacy units (string columns with
    /// few distinct values).
    pub categories: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    pub rows: u64,
    pub privacy_units: u64,
    pub columns: Vec<ColumnProfile>,
    /// First and last date seen in the time-coverage column.
    pub observed_coverage: Option<(String, String)>,
    /// Share of columns with a description (and, for numbers, a unit).
    pub dictionary_completeness: f64,
    pub warnings: Vec<String>,
}

fn round_to_grain(n: u64) -> u64 {
    (n + PUBLISHED_COUNT_GRAIN / 2) / PUBLISHED_COUNT_GRAIN * PUBLISHED_COUNT_GRAIN
}

impl Profile {
    /// The profile as users (not administrators) see it: counts rounded to
    /// [`PUBLISHED_COUNT_GRAIN`] (rates from the rounded counts), no
    /// extremes of any column (an extreme is one unit's value), the observed
    /// time coverage to the month, categories only those held by at least
    /// [`CATEGORY_MIN_UNITS`] units (as computed), and warnings rebuilt
    /// from the rounded figures. One firm more or less between two versions
    /// moves a published count only when it crosses a rounding boundary.
    pub fn published(&self) -> Profile {
        let rows = round_to_grain(self.rows);
        let rate = |n: u64| {
            if rows == 0 {
                0.0
            } else {
                n as f64 / rows as f64
            }
        };
        let mut warnings = Vec::new();
        let columns = self
            .columns
            .iter()
            .map(|c| {
                let (nulls, out_of_bounds) =
                    (round_to_grain(c.nulls), round_to_grain(c.out_of_bounds));
                if nulls > 0 {
                    warnings.push(format!(
                        "{}: about {:.0}% of values are missing",
                        c.name,
                        rate(nulls) * 100.0
                    ));
                }
                if out_of_bounds > 0 {
                    warnings.push(format!(
                        "{}: about {:.0}% of values are outside the declared bounds",
                        c.name,
                        rate(out_of_bounds) * 100.0
                    ));
                }
                ColumnProfile {
                    name: c.name.clone(),
                    nulls,
                    null_rate: rate(nulls),
                    distinct: round_to_grain(c.distinct),
                    out_of_bounds,
                    out_of_bounds_rate: rate(out_of_bounds),
                    min: None,
                    max: None,
                    categories: c.categories.clone(),
                }
            })
            .collect();
        warnings.extend(
            self.warnings
                .iter()
                .filter(|w| w.starts_with("dictionary:"))
                .cloned(),
        );
        let month = |date: &String| date.chars().take(7).collect::<String>();
        Profile {
            rows,
            privacy_units: round_to_grain(self.privacy_units),
            columns,
            observed_coverage: self
                .observed_coverage
                .as_ref()
                .map(|(first, last)| (month(first), month(last))),
            dictionary_completeness: self.dictionary_completeness,
            warnings,
        }
    }
}

async fn scalar_row(
    ctx: &SessionContext,
    sql: &str,
) -> datafusion::error::Result<Vec<Option<String>>> {
    let batches = ctx.sql(sql).await?.collect().await?;
    let Some(batch) = batches.first() else {
        return Ok(Vec::new());
    };
    let mut row = Vec::new();
    for column in batch.columns() {
        let text = cast(column, &DataType::Utf8)?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("cast to Utf8");
        row.push((!text.is_null(0)).then(|| text.value(0).to_string()));
    }
    Ok(row)
}

fn number(value: &Option<String>) -> u64 {
    value.as_deref().and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Profile `table` (registered with the manifest's declared schema).
pub async fn profile(
    manifest: &Manifest,
    table: &DatasetSource,
) -> datafusion::error::Result<Profile> {
    let ctx = SessionContext::new();
    crate::query::register(&ctx, table).await?;
    let t = &table.name;
    let unit = &manifest.privacy_unit;
    let totals = scalar_row(
        &ctx,
        &format!("SELECT COUNT(*), COUNT(DISTINCT \"{unit}\") FROM {t}"),
    )
    .await?;
    let rows = number(&totals[0]);
    let privacy_units = number(&totals[1]);
    let rate = |n: u64| {
        if rows == 0 {
            0.0
        } else {
            n as f64 / rows as f64
        }
    };
    let mut warnings = Vec::new();
    let mut columns = Vec::new();
    for column in &manifest.columns {
        let c = &column.name;
        let bounds = match column.bounds {
            Some([low, high]) => {
                format!("SUM(CASE WHEN \"{c}\" < {low} OR \"{c}\" > {high} THEN 1 ELSE 0 END)")
            }
            None => "0".into(),
        };
        let row = scalar_row(
            &ctx,
            &format!("SELECT COUNT(*) - COUNT(\"{c}\"), COUNT(DISTINCT \"{c}\"), MIN(\"{c}\"), MAX(\"{c}\"), {bounds} FROM {t}"),
        )
        .await?;
        let (nulls, distinct, out_of_bounds) = (number(&row[0]), number(&row[1]), number(&row[4]));
        // An extreme of a sensitive column is one unit's value; the first and
        // last string in sort order may be a rare category.
        let reveals_one_unit =
            matches!(column.role, ColumnRole::Identifier | ColumnRole::Sensitive)
                || column.data_type == ColumnType::String;
        let mut categories = Vec::new();
        if column.data_type == ColumnType::String
            && column.role != ColumnRole::Identifier
            && (distinct as i64) <= MAX_CATEGORIES
        {
            let batches = ctx
                .sql(&format!(
                    "SELECT \"{c}\" FROM {t} WHERE \"{c}\" IS NOT NULL GROUP BY \"{c}\" \
                     HAVING COUNT(DISTINCT \"{unit}\") >= {CATEGORY_MIN_UNITS} ORDER BY \"{c}\""
                ))
                .await?
                .collect()
                .await?;
            for batch in &batches {
                let values = batch
                    .column(0)
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .expect("string column");
                categories.extend(values.iter().flatten().map(str::to_string));
            }
        }
        if nulls > 0 {
            warnings.push(format!(
                "{c}: {:.1}% of values are missing",
                rate(nulls) * 100.0
            ));
        }
        if out_of_bounds > 0 {
            warnings.push(format!(
                "{c}: {:.1}% of values are outside the declared bounds",
                rate(out_of_bounds) * 100.0
            ));
        }
        columns.push(ColumnProfile {
            name: c.clone(),
            nulls,
            null_rate: rate(nulls),
            distinct,
            out_of_bounds,
            out_of_bounds_rate: rate(out_of_bounds),
            min: if reveals_one_unit {
                None
            } else {
                row[2].clone()
            },
            max: if reveals_one_unit {
                None
            } else {
                row[3].clone()
            },
            categories,
        });
    }
    let mut observed_coverage = None;
    if let Some(coverage) = &manifest.time_coverage {
        let column = columns
            .iter()
            .find(|p| p.name == coverage.column)
            .expect("checked in the manifest");
        if let (Some(first), Some(last)) = (&column.min, &column.max) {
            if first.as_str() > coverage.start.as_str() {
                warnings.push(format!(
                    "time coverage: data starts {first}, the manifest declares {}",
                    coverage.start
                ));
            }
            if last.as_str() < coverage.end.as_str() {
                warnings.push(format!(
                    "time coverage: data ends {last}, the manifest declares {}",
                    coverage.end
                ));
            }
            observed_coverage = Some((first.clone(), last.clone()));
        }
    }
    let complete = manifest
        .columns
        .iter()
        .filter(|c| {
            !c.description.is_empty()
                && (!c.data_type.is_numeric()
                    || c.role == ColumnRole::Identifier
                    || !c.unit.is_empty()
                    || c.role == ColumnRole::Label)
        })
        .count();
    let dictionary_completeness = complete as f64 / manifest.columns.len().max(1) as f64;
    if dictionary_completeness < 1.0 {
        warnings.push(format!(
            "dictionary: {complete} of {} columns fully described (description, and a unit for numbers)",
            manifest.columns.len()
        ));
    }
    Ok(Profile {
        rows,
        privacy_units,
        columns,
        observed_coverage,
        dictionary_completeness,
        warnings,
    })
}
