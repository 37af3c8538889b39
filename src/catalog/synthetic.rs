//! Synthetic samples: rows shaped like a dataset (its types, bounds, null
//! rates and common category values) but drawn at random, so developers can
//! run guests on their own machine with `dsb dev run --dataset <id>`.
//!
//! Built only from the dictionary and the published profile, never from
//! rows: identifiers are fresh (`SYN-000001`), numbers are uniform within
//! the declared bounds (sensitive columns) or the profiled range, dates
//! within the declared coverage, and categories only those the profile
//! publishes (held by enough privacy units).

use std::fmt::Write as _;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::manifest::{ColumnType, Manifest};
use super::profile::Profile;
use crate::dataset::ColumnRole;

/// `rows` synthetic rows as CSV text with a header, seeded by `seed`.
pub fn sample_csv(manifest: &Manifest, profile: &Profile, rows: usize, seed: u64) -> String {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut text = manifest
        .columns
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(",");
    text.push('\n');
    for row in 0..rows {
        let cells: Vec<String> = manifest
            .columns
            .iter()
            .map(|column| {
                let stats = profile.columns.iter().find(|p| p.name == column.name);
                let null_rate = stats.map_or(0.0, |s| s.null_rate);
                if column.role != ColumnRole::Identifier && rng.random::<f64>() < null_rate {
                    return String::new();
                }
                match column.data_type {
                    ColumnType::String if column.role == ColumnRole::Identifier => {
                        format!("SYN-{row:06}")
                    }
                    ColumnType::String => match stats.map(|s| s.categories.as_slice()) {
                        Some(categories) if !categories.is_empty() => {
                            csv_field(&categories[rng.random_range(0..categories.len())])
                        }
                        _ => format!("synthetic-{}", rng.random_range(0..20u32)),
                    },
                    ColumnType::Int64 | ColumnType::Float64 => {
                        let (low, high) = numeric_range(
                            column.role,
                            column.bounds,
                            stats.and_then(|s| s.min.clone()),
                            stats.and_then(|s| s.max.clone()),
                        );
                        let value = low + rng.random::<f64>() * (high - low);
                        if column.data_type == ColumnType::Int64 {
                            if column.role == ColumnRole::Identifier {
                                format!("-{}", row + 1)
                            } else {
                                format!("{}", value.round() as i64)
                            }
                        } else {
                            format!("{value:.2}")
                        }
                    }
                    ColumnType::Boolean => rng.random_bool(0.5).to_string(),
                    ColumnType::Date => {
                        let (start, end) = manifest
                            .time_coverage
                            .as_ref()
                            .filter(|c| c.column == column.name)
                            .map(|c| (c.start.clone(), c.end.clone()))
                            .unwrap_or_else(|| ("2000-01-01".into(), "2024-12-31".into()));
                        let year_from: u32 = start[..4].parse().unwrap_or(2000);
                        let year_to: u32 = end[..4].parse().unwrap_or(2024).max(year_from);
                        format!(
                            "{}-{:02}-{:02}",
                            rng.random_range(year_from..=year_to),
                            rng.random_range(1..=12u32),
                            rng.random_range(1..=28u32)
                        )
                    }
                }
            })
            .collect();
        writeln!(text, "{}", cells.join(",")).expect("writing to a String");
    }
    text
}

fn numeric_range(
    role: ColumnRole,
    bounds: Option<[f64; 2]>,
    min: Option<String>,
    max: Option<String>,
) -> (f64, f64) {
    let profiled = min
        .and_then(|m| m.parse().ok())
        .zip(max.and_then(|m| m.parse().ok()));
    match (role, profiled, bounds) {
        (ColumnRole::Sensitive, _, Some([low, high])) => (low, high),
        (_, Some((low, high)), _) => (low, high),
        (_, None, Some([low, high])) => (low, high),
        _ => (0.0, 100.0),
    }
}

fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_string()
    }
}
