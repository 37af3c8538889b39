//! `credit-risk`: a bank's logistic default-risk model, run at the data
//! holder over one enterprise's records (algorithm front-loading).
//!
//! Features, from the subject's rows only:
//! - `tax_records`: share of quarters overdue, share of quarters without a
//!   VAT declaration;
//! - `social_security`: change of the insured head count over the period
//!   (log of last over first quarter, rows arrive in the dataset's order)
//!   and share of quarters in arrears;
//! - `utility_payments`: share of electricity bills paid late;
//! - `enterprises`: log of the head count.
//!
//! p(default) = σ(β₀ + β·x) and the score is 1000 × (1 − p): higher is
//! safer. The host clamps and buckets it; the bank sees nothing else.
//! Params may override coefficients by name, e.g. `{"overdue_rate": 5.0}`.

use datasandbox_guest::arrow_array::RecordBatch;
use datasandbox_guest::{Guest, ipc};

/// The bank's coefficients (intercept first).
const COEFFICIENTS: [(&str, f64); 7] = [
    ("intercept", -2.2),
    ("overdue_rate", 4.0),
    ("undeclared_rate", 2.0),
    ("headcount_trend", -3.0),
    ("arrears_rate", 3.0),
    ("late_rate", 3.5),
    ("log_employees", -0.15),
];

struct CreditRisk;

/// Mean of a column's non-null values over all batches (`None` if none).
fn mean(batches: &[RecordBatch], column: &str) -> Result<Option<f64>, String> {
    let values = values(batches, column)?;
    Ok((!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64))
}

fn values(batches: &[RecordBatch], column: &str) -> Result<Vec<f64>, String> {
    let mut all = Vec::new();
    for batch in batches {
        all.extend(ipc::numeric_column(batch, column)?.into_iter().flatten());
    }
    Ok(all)
}

impl Guest for CreditRisk {
    fn score(rows: Vec<(String, Vec<u8>)>, params: String) -> Result<f64, String> {
        let params: serde_json::Value =
            serde_json::from_str(&params).map_err(|e| format!("params are not JSON: {e}"))?;
        let mut tables = std::collections::HashMap::new();
        for (dataset, bytes) in rows {
            tables.insert(dataset, ipc::decode(&bytes).map_err(|e| e.to_string())?);
        }
        let table = |id: &str| {
            tables
                .get(id)
                .map(Vec::as_slice)
                .ok_or_else(|| format!("the policy gives no {id} rows"))
        };
        let tax = table("tax_records")?;
        let social = table("social_security")?;
        let utility = table("utility_payments")?;
        let register = table("enterprises")?;

        let headcounts = values(social, "insured_headcount")?;
        let trend = match (headcounts.first(), headcounts.last()) {
            (Some(first), Some(last)) if *first > 0.0 && *last > 0.0 => (last / first).ln(),
            _ => 0.0,
        };
        // An enterprise without records scores as if every quarter was bad:
        // no history is no evidence of reliability.
        let features = [
            ("intercept", 1.0),
            ("overdue_rate", mean(tax, "overdue")?.unwrap_or(1.0)),
            (
                "undeclared_rate",
                1.0 - mean(tax, "vat_declared")?.unwrap_or(0.0),
            ),
            ("headcount_trend", trend),
            ("arrears_rate", mean(social, "arrears")?.unwrap_or(1.0)),
            ("late_rate", mean(utility, "paid_late")?.unwrap_or(1.0)),
            (
                "log_employees",
                mean(register, "employees")?.unwrap_or(1.0).max(1.0).ln(),
            ),
        ];
        let mut logit = 0.0;
        for ((name, x), (_, default)) in features.iter().zip(COEFFICIENTS) {
            let beta = params
                .get(*name)
                .and_then(|b| b.as_f64())
                .unwrap_or(default);
            logit += beta * x;
        }
        let default_probability = 1.0 / (1.0 + (-logit).exp());
        Ok(1000.0 * (1.0 - default_probability))
    }
}

datasandbox_guest::export!(CreditRisk);
