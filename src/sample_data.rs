//! The sample datasets shipped in `data/samples/`, generated
//! deterministically so the demo and the tests have realistic data without
//! any real enterprise in it.
//!
//! - `enterprises.csv`: an enterprise register. One row per enterprise (the
//!   privacy unit), with skewed district sizes (Pudong large, Chongming
//!   small), rare industries, and missing registered capital.
//! - `tax_records.csv`: quarterly tax records keyed by `enterprise_id`, with
//!   missing declarations and an `overdue` flag that depends on size, age and
//!   industry (so a model has something to learn).
//! - `social_security.csv`: quarterly social-security filings keyed by
//!   `enterprise_id`: insured head count and quarters in arrears.
//! - `utility_payments.csv`: monthly electricity bills keyed by
//!   `enterprise_id`: consumption and whether the bill was paid late.
//!
//! - `tax_overdue.csv`: the contest dataset, one row per enterprise: its
//!   register entry and 2023 tax history as features, and as the label
//!   whether it was overdue in any quarter of 2024 (derived from the rows
//!   above, no random draws of its own).
//!
//! The social-security and utility files share the latent risk of the tax records (a firm that runs
//! late on tax tends to shed insured staff and pay bills late), so a credit
//! model over all three has signal. They are drawn from a second random
//! stream, so adding them left the first two files unchanged.
//!
//! `dsb sample-data --out data/samples` rewrites them; a test checks the
//! checked-in files equal the generator's output.

use std::fmt::Write as _;
use std::path::Path;

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// Districts of Shanghai with relative weights for the number of
/// registered enterprises (skewed on purpose: small groups must exist).
const DISTRICTS: [(&str, u32); 16] = [
    ("Pudong", 260),
    ("Minhang", 120),
    ("Jiading", 90),
    ("Songjiang", 85),
    ("Baoshan", 70),
    ("Qingpu", 60),
    ("Fengxian", 55),
    ("Jing'an", 50),
    ("Xuhui", 48),
    ("Putuo", 35),
    ("Yangpu", 33),
    ("Changning", 30),
    ("Huangpu", 28),
    ("Hongkou", 22),
    ("Jinshan", 12),
    ("Chongming", 2),
];

/// Industries with weights; the last ones are rare.
const INDUSTRIES: [(&str, u32); 10] = [
    ("manufacturing", 250),
    ("wholesale-retail", 220),
    ("it-services", 150),
    ("construction", 90),
    ("logistics", 80),
    ("catering", 70),
    ("finance", 60),
    ("research", 40),
    ("shipbuilding", 4),
    ("aquaculture", 2),
];

/// Enterprises in the register.
pub const ENTERPRISES: usize = 2_000;
/// Quarters of tax records: 2023Q1 to 2024Q4.
pub const QUARTERS: usize = 8;

/// Months of utility bills: 2024-01 to 2024-12.
pub const MONTHS: usize = 12;

/// The sample datasets' ids, in the order they are registered.
pub const DATASETS: [&str; 5] = [
    "enterprises",
    "tax_records",
    "social_security",
    "utility_payments",
    "tax_overdue",
];

/// The generated files as (file name, CSV text).
pub fn generate() -> Vec<(&'static str, String)> {
    let mut rng = StdRng::seed_from_u64(20_261_127);
    let mut rng2 = StdRng::seed_from_u64(20_261_128);
    let mut social =
        String::from("enterprise_id,quarter,insured_headcount,contributions_paid,arrears\n");
    let mut utility = String::from("enterprise_id,month,electricity_kwh,amount_billed,paid_late\n");
    let mut contest = String::from(
        "enterprise_id,district,industry,size_class,employees,registered_capital,founded_year,tax_paid_2023,overdue_quarters_2023,undeclared_quarters_2023,overdue_2024\n",
    );
    let mut register = String::from(
        "enterprise_id,name,district,industry,size_class,employees,registered_capital,founded\n",
    );
    let mut tax = String::from("enterprise_id,quarter,tax_paid,vat_declared,overdue\n");
    for index in 0..ENTERPRISES {
        let id = format!(
            "91310{:03}{:010}",
            index % 997,
            1_000_000 + index * 7_919 % 9_000_000
        );
        let district = pick(&mut rng, &DISTRICTS);
        let industry = pick(&mut rng, &INDUSTRIES);
        // Head counts are heavy-tailed: most firms are micro or small.
        let employees = (2.0 * (rng.random::<f64>() * 6.5).exp()).round() as u64 + 1;
        let size_class = match employees {
            0..=9 => "micro",
            10..=99 => "small",
            100..=999 => "medium",
            _ => "large",
        };
        let capital = if rng.random_ratio(1, 20) {
            String::new()
        } else {
            format!(
                "{:.1}",
                (employees as f64 * (20.0 + rng.random::<f64>() * 80.0)).round()
            )
        };
        let year = 1995 + rng.random_range(0..29u32);
        let founded = format!(
            "{year}-{:02}-{:02}",
            rng.random_range(1..=12u32),
            rng.random_range(1..=28u32)
        );
        writeln!(
            register,
            "{id},Firm {index:04} Co. Ltd.,{district},{industry},{size_class},{employees},{capital},{founded}"
        )
        .expect("writing to a String");

        // Young, small firms in low-margin trades run late more often.
        let risk = 0.04
            + if employees < 10 { 0.10 } else { 0.0 }
            + if year >= 2019 { 0.08 } else { 0.0 }
            + if matches!(industry, "catering" | "construction" | "wholesale-retail") {
                0.06
            } else {
                0.0
            };
        let (mut paid_2023, mut overdue_2023, mut undeclared_2023, mut overdue_2024) =
            (0.0, 0u32, 0u32, 0u8);
        for quarter in 0..QUARTERS {
            let label = format!("{}Q{}", 2023 + quarter / 4, quarter % 4 + 1);
            let declared = !rng.random_ratio(1, 40);
            let tax_paid = if declared {
                format!(
                    "{:.2}",
                    employees as f64 * (800.0 + rng.random::<f64>() * 2_400.0)
                )
            } else {
                String::new()
            };
            let vat = if declared { "true" } else { "false" };
            let overdue = u8::from(!declared || rng.random::<f64>() < risk);
            writeln!(tax, "{id},{label},{tax_paid},{vat},{overdue}").expect("writing to a String");
            if quarter < 4 {
                paid_2023 += tax_paid.parse::<f64>().unwrap_or(0.0);
                overdue_2023 += u32::from(overdue);
                undeclared_2023 += u32::from(!declared);
            } else {
                overdue_2024 = overdue_2024.max(overdue);
            }
        }
        writeln!(
            contest,
            "{id},{district},{industry},{size_class},{employees},{capital},{year},{paid_2023:.2},{overdue_2023},{undeclared_2023},{overdue_2024}"
        )
        .expect("writing to a String");

        // A firm in trouble sheds insured staff and falls into arrears.
        let troubled = rng2.random::<f64>() < risk * 2.0;
        let coverage = 0.55 + rng2.random::<f64>() * 0.45;
        let mut headcount = (employees as f64 * coverage).round().max(1.0);
        for quarter in 0..QUARTERS {
            let label = format!("{}Q{}", 2023 + quarter / 4, quarter % 4 + 1);
            if troubled {
                headcount = (headcount * (0.80 + rng2.random::<f64>() * 0.15))
                    .round()
                    .max(1.0);
            } else {
                headcount = (headcount * (0.97 + rng2.random::<f64>() * 0.06))
                    .round()
                    .max(1.0);
            }
            let arrears = u8::from(rng2.random::<f64>() < if troubled { 0.35 } else { risk / 3.0 });
            let paid = headcount * (2_100.0 + rng2.random::<f64>() * 900.0) * 3.0;
            let paid = if arrears == 1 { paid * 0.4 } else { paid };
            writeln!(social, "{id},{label},{headcount},{paid:.2},{arrears}")
                .expect("writing to a String");
        }
        let base_kwh = employees as f64 * (150.0 + rng2.random::<f64>() * 450.0);
        for month in 0..MONTHS {
            let kwh = (base_kwh * (0.8 + rng2.random::<f64>() * 0.4)).round();
            let billed = kwh * 0.86;
            let late = u8::from(rng2.random::<f64>() < if troubled { 0.30 } else { risk / 2.0 });
            writeln!(
                utility,
                "{id},2024-{:02},{kwh},{billed:.2},{late}",
                month + 1
            )
            .expect("writing to a String");
        }
    }
    vec![
        ("enterprises.csv", register),
        ("tax_records.csv", tax),
        ("social_security.csv", social),
        ("utility_payments.csv", utility),
        ("tax_overdue.csv", contest),
    ]
}

fn pick<'a>(rng: &mut StdRng, weighted: &[(&'a str, u32)]) -> &'a str {
    let total: u32 = weighted.iter().map(|(_, w)| w).sum();
    let mut ticket = rng.random_range(0..total);
    for (name, weight) in weighted {
        if ticket < *weight {
            return name;
        }
        ticket -= weight;
    }
    unreachable!("ticket below the total weight")
}

/// Write the generated files into `dir`.
pub fn write(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, text) in generate() {
        std::fs::write(dir.join(name), text)?;
    }
    Ok(())
}
