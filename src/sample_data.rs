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

/// The generated files as (file name, CSV text).
pub fn generate() -> Vec<(&'static str, String)> {
    let mut rng = StdRng::seed_from_u64(20_261_127);
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
        }
    }
    vec![("enterprises.csv", register), ("tax_records.csv", tax)]
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
