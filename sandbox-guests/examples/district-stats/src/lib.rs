//! `district-stats`: enterprises and mean head count per district.
//!
//! Params (JSON, all optional): `{"table": "enterprises"}`.

use datasandbox_guest::{Guest, data, log, output};

struct DistrictStats;

impl Guest for DistrictStats {
    fn run(params: String) -> Result<(), String> {
        let params: serde_json::Value = serde_json::from_str(if params.trim().is_empty() {
            "{}"
        } else {
            &params
        })
        .map_err(|e| format!("params are not JSON: {e}"))?;
        let table = params
            .get("table")
            .and_then(|t| t.as_str())
            .unwrap_or("enterprises");
        if !data::tables().iter().any(|t| t.name == table) {
            return Err(format!("table {table} is not part of this job"));
        }
        log(&format!("district-stats over {table}"));
        let sql = format!(
            "SELECT district, COUNT(*) AS enterprises, AVG(employees) AS mean_employees \
             FROM {table} GROUP BY district ORDER BY district"
        );
        let batches = data::query(&sql).map_err(|e| e.to_string())?;
        let districts: usize = batches.iter().map(|b| b.num_rows()).sum();
        output::emit_table("by_district", &batches).map_err(|e| e.to_string())?;
        output::emit_value("districts", districts as f64).map_err(|e| e.to_string())?;
        Ok(())
    }
}

datasandbox_guest::export!(DistrictStats);
