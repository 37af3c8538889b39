//! The aggregate release gate under attack: the attacks that once got rows
//! out, a neighbouring-dataset check (one enterprise added: every statement
//! must end the same way), a canary enterprise whose values must never
//! appear in a release, and a grammar-based query fuzzer over all of it.
//!
//! Statements run through the real `QuerySession` (DataFusion, the gate,
//! the vetting) on real CSV files; the parent module runs the same gate
//! through a wasm guest.

use std::path::Path;

use crate::common::*;
use datafusion::arrow::array::RecordBatch;
use datasandbox::catalog::Manifest;
use datasandbox::dataset::{DataFormat, DatasetSource};
use datasandbox::policy::PolicySet;
use datasandbox::query::{QueryError, QuerySession};
use datasandbox::release::cell_key::RecordKeys;
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// The canary: an enterprise whose head count and capital nobody else has.
const CANARY_ROW: &str =
    "913199999999999999,Canary Co. Ltd.,Pudong,it-services,large,7331,987654.25,2011-03-17";
const CANARY_EMPLOYEES: f64 = 7331.0;
const CANARY_CAPITAL: f64 = 987654.25;
const K: usize = 10;

/// What a statement ended as, without its data.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Released,
    Rejected(String),
    Invalid,
    Failed,
    TooLarge,
}

struct World {
    plain: QuerySession,
    with_canary: QuerySession,
    /// Native DataFusion over the data with the canary: the reference for
    /// group sizes.
    native: datafusion::prelude::SessionContext,
}

fn tables(dir: &Path, enterprises: &str) -> Vec<DatasetSource> {
    let policies = PolicySet::load(&repo().join("policies"), None).unwrap();
    // A fixed secret: a finding reproduces.
    let keys = RecordKeys::from_secret([7; 32]);
    let register = dir.join(enterprises);
    [
        ("enterprises", register),
        ("tax_records", samples().join("tax_records.csv")),
    ]
    .into_iter()
    .map(|(id, path)| {
        let manifest = Manifest::load(&samples().join(format!("{id}.toml"))).unwrap();
        datasandbox::release::bind::job_table(
            &manifest,
            &path,
            DataFormat::Csv,
            &policies,
            id == "enterprises",
            &keys,
        )
    })
    .collect()
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap().keep();
    let original = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();
    std::fs::write(dir.join("plain.csv"), &original).unwrap();
    std::fs::write(
        dir.join("canary.csv"),
        format!("{}{CANARY_ROW}\n", original),
    )
    .unwrap();
    let open = |name: &'static str| {
        let tables = tables(&dir, name);
        async move {
            QuerySession::open(&tables, &Default::default())
                .await
                .unwrap()
        }
    };
    let native = datafusion::prelude::SessionContext::new();
    for table in tables(&dir, "canary.csv") {
        datasandbox::query::register(&native, &table).await.unwrap();
    }
    World {
        plain: open("plain.csv").await,
        with_canary: open("canary.csv").await,
        native,
    }
}

async fn outcome(session: &QuerySession, sql: &str) -> (Kind, Vec<RecordBatch>) {
    match session.run(sql, 64 << 20).await {
        Ok((_, batches)) => (Kind::Released, batches),
        Err(QueryError::Rejected(reason)) => (
            Kind::Rejected(reason.split(':').next().unwrap_or_default().to_string()),
            Vec::new(),
        ),
        Err(QueryError::Invalid(_)) => (Kind::Invalid, Vec::new()),
        Err(QueryError::Failed { .. }) => (Kind::Failed, Vec::new()),
        Err(QueryError::TooLarge { .. }) => (Kind::TooLarge, Vec::new()),
    }
}

fn numbers(rows: &[Vec<String>], column: usize) -> Vec<f64> {
    rows.iter()
        .filter_map(|r| r.get(column).and_then(|v| v.parse::<f64>().ok()))
        .collect()
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

/// Canary findings in one pair of neighbouring results: a canary value as a
/// cell, or as the difference of two cells of one column (within the
/// result with the canary, or between the two results).
fn canary_findings(plain: &[Vec<String>], with_canary: &[Vec<String>]) -> Vec<String> {
    let mut findings = Vec::new();
    let width = with_canary.first().map_or(0, Vec::len);
    for row in with_canary {
        for cell in row {
            if cell.contains("Canary") || cell.contains("913199999999999999") {
                findings.push(format!("canary text released: {cell}"));
            }
            if let Ok(v) = cell.parse::<f64>()
                && (near(v, CANARY_EMPLOYEES) || near(v, CANARY_CAPITAL))
            {
                findings.push(format!("canary value released: {cell}"));
            }
        }
    }
    for column in 0..width {
        let ours = numbers(with_canary, column);
        let theirs = numbers(plain, column);
        for (i, a) in ours.iter().enumerate() {
            for b in ours[i + 1..].iter().chain(theirs.iter()) {
                // The capital (a fraction nobody else has) is checked against
                // every pair; a head count is an integer that sums of other
                // firms can also differ by, so it is checked between the two
                // neighbouring results of the same cell only (below).
                if near((a - b).abs(), CANARY_CAPITAL) {
                    findings.push(format!("canary capital as a difference: {a} - {b}"));
                }
            }
        }
    }
    // Same group key (every non-numeric cell equal), same column: the
    // neighbours' difference is not the canary's head count.
    for row in with_canary {
        let key: Vec<&String> = row.iter().filter(|c| c.parse::<f64>().is_err()).collect();
        for other in plain {
            let other_key: Vec<&String> =
                other.iter().filter(|c| c.parse::<f64>().is_err()).collect();
            if key != other_key || row.len() != other.len() {
                continue;
            }
            for (a, b) in row.iter().zip(other) {
                if let (Ok(a), Ok(b)) = (a.parse::<f64>(), b.parse::<f64>())
                    && near(a - b, CANARY_EMPLOYEES)
                {
                    findings.push(format!(
                        "canary head count as a neighbour difference: {a} - {b}"
                    ));
                }
            }
        }
    }
    findings
}

/// Run `sql` on both neighbours and check the outcome kinds agree and the
/// canary stays hidden; returns the kind and any findings.
async fn probe(world: &World, sql: &str) -> (Kind, Vec<String>, Vec<Vec<String>>) {
    let (plain_kind, plain) = outcome(&world.plain, sql).await;
    let (kind, with_canary) = outcome(&world.with_canary, sql).await;
    let mut findings = Vec::new();
    if plain_kind != kind {
        findings.push(format!(
            "outcome differs between neighbours: {plain_kind:?} without the canary, {kind:?} with it"
        ));
    }
    let released = rows(&with_canary);
    findings.extend(canary_findings(&rows(&plain), &released));
    (kind, findings, released)
}

fn assert_refused(kind: &Kind, code: &str, sql: &str) {
    assert_eq!(kind, &Kind::Rejected(code.to_string()), "{sql}");
}

#[tokio::test]
async fn the_attacks_that_got_rows_out_are_refused() {
    let world = world().await;
    let attacks = [
        // 1. An aggregate over an aggregate of VALUES joined on the unit.
        (
            "SELECT e.district, e.industry, e.size_class, e.employees, e.registered_capital, e.founded, COUNT(*) AS n \
             FROM enterprises e LEFT JOIN (SELECT x AS enterprise_id FROM (SELECT x, COUNT(*) AS c FROM (VALUES ('-')) AS v(x) GROUP BY x) g) k \
             ON e.enterprise_id = k.enterprise_id WHERE e.district = 'Yangpu' \
             GROUP BY e.district, e.industry, e.size_class, e.employees, e.registered_capital, e.founded",
            "join-type",
        ),
        (
            "SELECT e.district, COUNT(*) AS n FROM enterprises e JOIN (SELECT x AS enterprise_id FROM (SELECT x, COUNT(*) AS c FROM (VALUES ('-')) AS v(x) GROUP BY x) g) k \
             ON e.enterprise_id = k.enterprise_id GROUP BY e.district",
            "outside-grammar",
        ),
        // 2. A failure that reads one firm's value.
        (
            "SELECT COUNT(*) FROM enterprises WHERE 1 / (CAST((district='Fengxian' AND founded=DATE '2016-04-20' AND employees >= 110) AS BIGINT) - 1) <> 0",
            "expression-not-total",
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE CAST(district AS INT) = 1",
            "expression-not-total",
        ),
        // 3. Named targets through VALUES on the join key.
        (
            "SELECT SUM(e.employees) FROM enterprises e JOIN (VALUES ('913100000001000000'), ('913100010001007919')) AS v(enterprise_id) ON e.enterprise_id = v.enterprise_id",
            "outside-grammar",
        ),
        // 5. The host's clock and entropy.
        (
            "SELECT COUNT(*), now() FROM enterprises",
            "volatile-function",
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE random() < 0.5",
            "volatile-function",
        ),
        ("SELECT uuid()", "volatile-function"),
        // 6. Rank targeting and arguments that are not the column.
        (
            "SELECT COUNT(*), SUM(employees) FROM (SELECT enterprise_id, employees FROM enterprises ORDER BY employees DESC LIMIT 10) t",
            "outside-grammar",
        ),
        (
            "SELECT COUNT(TRY_CAST(employees AS TINYINT)) FROM enterprises",
            "aggregate-argument",
        ),
        // 7. A branch whose cost depends on one firm: `repeat` is off every
        // query's function allow-list (and not total either).
        (
            "SELECT COUNT(*) FROM enterprises WHERE CASE WHEN employees = 110 THEN length(repeat(district, 100000)) ELSE 0 END > 0",
            "function-not-allowed",
        ),
        (
            "SELECT COUNT(*) FROM enterprises WHERE CASE WHEN employees = 110 THEN length(lower(district)) ELSE 0 END > 0",
            "expression-not-total",
        ),
        // Order statistics release one unit's value.
        (
            "SELECT MAX(employees) FROM enterprises",
            "aggregate-not-allowed",
        ),
        (
            "SELECT MEDIAN(employees) FROM enterprises",
            "aggregate-not-allowed",
        ),
        // Identifiers compared with literals, anywhere.
        (
            "SELECT COUNT(*) FROM enterprises WHERE enterprise_id IN ('913100000001000000', '913100010001007919')",
            "identifier-used",
        ),
        (
            "WITH x AS (SELECT enterprise_id AS eid, district FROM enterprises) SELECT district, COUNT(*) FROM x WHERE eid > '9131' GROUP BY district",
            "identifier-used",
        ),
        // A protected scan outside the aggregation.
        (
            "SELECT d.n FROM (SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district) d JOIN enterprises e ON e.district = d.district",
            "row-level-output",
        ),
    ];
    for (sql, code) in attacks {
        let (kind, findings, _) = probe(&world, sql).await;
        assert!(findings.is_empty(), "{sql}: {findings:?}");
        assert_refused(&kind, code, sql);
    }
}

#[tokio::test]
async fn the_release_reports_its_rule_not_what_was_withheld() {
    let world = world().await;
    let sql =
        "SELECT district, industry, COUNT(*) AS n FROM enterprises GROUP BY district, industry";
    let plain = world.plain.run(sql, 1 << 20).await.unwrap().0;
    let with_canary = world.with_canary.run(sql, 1 << 20).await.unwrap().0;
    assert!(plain.metadata().get("datasandbox.suppression").is_none());
    // The metadata is the rule: the same whatever the data.
    assert_eq!(plain.metadata(), with_canary.metadata());
    let rule: serde_json::Value =
        serde_json::from_str(&plain.metadata()["datasandbox.release"]).unwrap();
    assert_eq!(rule["perturbation"], "cell-key");
    assert_eq!(rule["min_group_size"], 10);
    assert_eq!(rule["max_count_adjustment"], 2);
}

#[tokio::test]
async fn renamed_and_dropped_units_are_judged_by_provenance() {
    let world = world().await;
    let simple = "SELECT district, COUNT(DISTINCT enterprise_id) AS firms FROM enterprises GROUP BY district ORDER BY district";
    let (kind, _, want) = probe(&world, simple).await;
    assert_eq!(kind, Kind::Released);
    for sql in [
        // The unit renamed in a derived table.
        "SELECT district, COUNT(DISTINCT eid) AS firms FROM (SELECT enterprise_id AS eid, district FROM enterprises) t GROUP BY district ORDER BY district",
        // The unit dropped before an outer aggregate that does not need it:
        // the host carries it to count units (COUNT(*) = firms here).
        "SELECT district, COUNT(*) AS firms FROM (SELECT district FROM enterprises) t GROUP BY district ORDER BY district",
    ] {
        let (kind, findings, got) = probe(&world, sql).await;
        assert_eq!(kind, Kind::Released, "{sql}");
        assert!(findings.is_empty(), "{sql}: {findings:?}");
        assert_eq!(got, want, "{sql}");
    }
}

#[tokio::test]
async fn the_same_cell_always_gets_the_same_perturbation_and_neighbours_do_not_difference() {
    let world = world().await;
    let sql = "SELECT district, COUNT(*) AS n, SUM(employees) AS staff FROM enterprises GROUP BY district ORDER BY district";
    let (_, first, _) = probe(&world, sql).await;
    assert!(first.is_empty(), "{first:?}");
    let once = rows(&world.with_canary.run(sql, 1 << 20).await.unwrap().1);
    for _ in 0..5 {
        // Repeating averages nothing away: the same answer every time,
        // also when the query is written differently.
        assert_eq!(
            rows(&world.with_canary.run(sql, 1 << 20).await.unwrap().1),
            once
        );
    }
    let reworded = "SELECT district, COUNT(*) AS n, SUM(employees) AS staff FROM enterprises WHERE employees >= 0 OR employees IS NULL GROUP BY district ORDER BY district";
    assert_eq!(
        rows(&world.with_canary.run(reworded, 1 << 20).await.unwrap().1),
        once
    );
    // Counts moved by at most 2; not all of them by nothing.
    let exact = rows(
        &native_typed(
            "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district HAVING COUNT(*) >= 10 ORDER BY district",
            &protected_samples(),
        )
        .await,
    );
    let plain = rows(&world.plain.run(sql, 1 << 20).await.unwrap().1);
    assert_eq!(plain.len(), exact.len());
    let mut moved = 0;
    for (got, want) in plain.iter().zip(&exact) {
        assert_eq!(got[0], want[0]);
        let delta = got[1].parse::<i64>().unwrap() - want[1].parse::<i64>().unwrap();
        assert!(delta.abs() <= 2, "{got:?} vs {want:?}");
        moved += usize::from(delta != 0);
    }
    assert!(moved > 0, "cell-key perturbation moved no count");
}

#[tokio::test]
async fn dominated_sums_are_withheld() {
    let world = world().await;
    // The classic attack: many small firms plus the target. Pudong's micro
    // firms (656 staff together) or the canary (7331): the canary holds over
    // half the head count, so SUM and AVG are withheld while the count is
    // released.
    let sql = "SELECT COUNT(*) AS n, SUM(employees) AS staff, AVG(employees) AS mean FROM enterprises \
               WHERE district = 'Pudong' AND (size_class = 'micro' OR employees = 7331)";
    let (kind, findings, released) = probe(&world, sql).await;
    assert_eq!(kind, Kind::Released);
    assert!(findings.is_empty(), "{findings:?}");
    assert_eq!(released.len(), 1);
    assert_ne!(released[0][0], "NULL");
    assert_eq!(released[0][1], "NULL", "{released:?}");
    assert_eq!(released[0][2], "NULL", "{released:?}");
}

// ---------------------------------------------------------------------------
// The query fuzzer.

/// One generated statement and, for plain grouped ones, what to check
/// natively: the FROM/WHERE and the group keys.
struct Generated {
    sql: String,
    native_groups: Option<(String, Vec<String>)>,
}

fn generate(rng: &mut StdRng) -> Generated {
    let joined = rng.random_bool(0.35);
    // Half the statements stay inside the grammar (the first entries of
    // each list), so the release path is exercised as hard as the refusals.
    let benign = rng.random_bool(0.5);
    let pick = |rng: &mut StdRng, items: &[&'static str], safe: usize| -> &'static str {
        let end = if benign { safe } else { items.len() };
        items[rng.random_range(0..end)]
    };
    let from = if joined {
        pick(
            rng,
            &[
                "enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id",
                "enterprises e INNER JOIN tax_records t ON t.enterprise_id = e.enterprise_id",
                "enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id AND t.overdue = 1",
                "(SELECT * FROM enterprises WHERE employees > 50) e JOIN (SELECT enterprise_id AS enterprise_id, quarter, tax_paid, overdue FROM tax_records) t ON e.enterprise_id = t.enterprise_id",
                "enterprises e JOIN tax_records t USING (enterprise_id)",
                "enterprises e LEFT JOIN tax_records t ON e.enterprise_id = t.enterprise_id",
                "enterprises e RIGHT JOIN tax_records t ON e.enterprise_id = t.enterprise_id",
                "enterprises e FULL JOIN tax_records t ON e.enterprise_id = t.enterprise_id",
                "enterprises e CROSS JOIN tax_records t",
                "enterprises e JOIN tax_records t ON e.district = t.quarter",
                "enterprises e JOIN tax_records t ON e.enterprise_id = t.enterprise_id AND e.name = 'Firm 0001 Co. Ltd.'",
                "enterprises e, tax_records t",
            ],
            5,
        )
    } else {
        pick(
            rng,
            &[
                "enterprises e",
                "enterprises e",
                "enterprises e",
                "(SELECT * FROM enterprises) e",
                "(SELECT * FROM enterprises WHERE employees > 20) e",
                "(SELECT district, industry, size_class, employees, registered_capital, founded FROM enterprises) e",
                "(SELECT district, industry, size_class, employees, registered_capital, founded FROM enterprises WHERE employees > 5) e",
                "(SELECT enterprise_id AS eid, district, industry, size_class, employees, registered_capital, founded, name, enterprise_id FROM enterprises) e",
                "(SELECT *, CASE WHEN employees < 10 THEN 'micro' ELSE 'other' END AS band FROM enterprises) e",
                "(SELECT * FROM enterprises ORDER BY employees DESC LIMIT 10) e",
                "(SELECT * FROM enterprises ORDER BY employees DESC LIMIT 11) e",
                "(SELECT DISTINCT * FROM enterprises) e",
                "(SELECT *, ROW_NUMBER() OVER (ORDER BY employees) AS rn FROM enterprises) e",
                "(SELECT * FROM enterprises UNION ALL SELECT * FROM enterprises) e",
                "(SELECT * FROM enterprises WHERE enterprise_id IN ('913100000001000000')) e",
                "(SELECT *, employees * 2 AS double_staff FROM enterprises) e",
                "enterprises e JOIN (VALUES ('913100000001000000'), ('913199999999999999')) v(enterprise_id) ON e.enterprise_id = v.enterprise_id",
                "enterprises e JOIN (SELECT enterprise_id FROM enterprises WHERE employees = 7331) c ON e.enterprise_id = c.enterprise_id",
            ],
            9,
        )
    };
    let mut predicates = vec![
        "e.district = 'Pudong'",
        "e.district <> 'Chongming'",
        "e.employees > 100",
        "e.employees >= 7331",
        "e.employees BETWEEN 10 AND 500",
        "e.industry IN ('logistics', 'it-services')",
        "e.size_class = 'large'",
        "e.registered_capital IS NULL",
        "e.registered_capital > 987654",
        "NOT (e.size_class = 'small')",
        "e.founded > DATE '2015-01-01'",
        "e.founded > '2011-03-16'",
        "CASE WHEN e.employees > 100 THEN 1 ELSE 0 END = 1",
        "coalesce(e.registered_capital, 0) > 100",
        "lower(e.district) = 'pudong'",
        "date_part('year', e.founded) = 2011",
        "e.name LIKE 'Firm 00%'",
        "e.name = 'Canary Co. Ltd.'",
        "e.enterprise_id = '913199999999999999'",
        "e.enterprise_id > '9131999'",
        "1 / (e.employees - 7331) > 0",
        "CAST(e.district AS INT) = 1",
        "TRY_CAST(e.employees AS TINYINT) IS NULL",
        "e.employees + 1 > 7000",
        "abs(e.employees) > 7000",
        "length(repeat(e.district, 3)) > 5",
        "e.employees IN (SELECT employees FROM enterprises WHERE employees > 7000)",
        "EXISTS (SELECT 1 FROM enterprises x WHERE x.employees = 7331)",
        "e.employees = (SELECT MAX(employees) FROM enterprises)",
        "random() < 2",
        "now() > DATE '2000-01-01'",
        "e.employees > (SELECT COUNT(*) FROM enterprises)",
        "e.registered_capital / e.employees > 100",
        "strpos(e.name, 'Canary') > 0",
        "regexp_like(e.name, 'Can.*')",
    ];
    let mut safe_predicates = 16;
    if joined {
        for (i, p) in [
            "t.overdue = 1",
            "t.tax_paid > 100000",
            "t.quarter = '2023Q1'",
        ]
        .into_iter()
        .enumerate()
        {
            predicates.insert(safe_predicates + i, p);
        }
        safe_predicates += 3;
        predicates.push("t.tax_paid / t.overdue > 1");
    }
    let mut groups = vec![
        "e.district",
        "e.industry",
        "e.size_class",
        "date_part('year', e.founded)",
        "CASE WHEN e.employees < 10 THEN 'micro' WHEN e.employees < 100 THEN 'small' ELSE 'larger' END",
        "e.employees",
        "e.registered_capital",
        "e.founded",
        "e.employees > 7000",
        "e.district = 'Pudong' AND e.employees = 7331",
        "e.enterprise_id",
        "e.name",
        "substr(e.name, 1, 9)",
    ];
    let mut measures = vec![
        "COUNT(*)",
        "COUNT(*)",
        "COUNT(e.registered_capital)",
        "COUNT(DISTINCT e.enterprise_id)",
        "SUM(e.employees)",
        "SUM(e.employees)",
        "AVG(e.employees)",
        "SUM(e.registered_capital)",
        "AVG(e.registered_capital)",
        "AVG(CAST(e.employees AS DOUBLE))",
        "MAX(e.employees)",
        "MIN(e.registered_capital)",
        "SUM(e.employees * 2)",
        "SUM(CASE WHEN e.employees = 7331 THEN e.registered_capital ELSE 0 END)",
        "COUNT(TRY_CAST(e.employees AS TINYINT))",
        "ARRAY_AGG(e.employees)",
        "COUNT(*) FILTER (WHERE e.employees > 7000)",
        "STRING_AGG(e.name, ',')",
        "SUM(DISTINCT e.employees)",
        "COUNT(DISTINCT e.district)",
        "FIRST_VALUE(e.employees ORDER BY e.employees DESC)",
    ];
    let (mut safe_groups, mut safe_measures) = (10, 10);
    if joined {
        groups.insert(safe_groups, "t.quarter");
        safe_groups += 1;
        for (i, m) in ["SUM(t.tax_paid)", "AVG(t.tax_paid)", "COUNT(t.tax_paid)"]
            .into_iter()
            .enumerate()
        {
            measures.insert(safe_measures + i, m);
        }
        safe_measures += 3;
    }
    let where_clause = if rng.random_bool(0.6) {
        let n = rng.random_range(1..=2);
        let parts: Vec<&str> = (0..n)
            .map(|_| pick(rng, &predicates, safe_predicates))
            .collect();
        let joiner = if rng.random_bool(0.7) {
            " AND "
        } else {
            " OR "
        };
        format!(" WHERE {}", parts.join(joiner))
    } else {
        String::new()
    };
    let group_count = rng.random_range(0..=2);
    let mut keys: Vec<&str> = Vec::new();
    for _ in 0..group_count {
        let g = pick(rng, &groups, safe_groups);
        if !keys.contains(&g) {
            keys.push(g);
        }
    }
    let measure_count = rng.random_range(1..=3);
    let chosen: Vec<&str> = (0..measure_count)
        .map(|_| pick(rng, &measures, safe_measures))
        .collect();
    let select: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS k{i}"))
        .chain(
            chosen
                .iter()
                .enumerate()
                .map(|(i, m)| format!("{m} AS m{i}")),
        )
        .collect();
    let group_by = if keys.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {}", keys.join(", "))
    };
    let having = if rng.random_bool(0.15) {
        pick(
            rng,
            &[
                " HAVING COUNT(*) > 20",
                " HAVING COUNT(*) < 5",
                " HAVING SUM(e.employees) > 7000",
                " HAVING MAX(e.employees) = 7331",
            ],
            3,
        )
    } else {
        ""
    };
    let order = if rng.random_bool(0.2) {
        pick(
            rng,
            &[
                " ORDER BY 1",
                " ORDER BY 1 DESC LIMIT 3",
                " LIMIT 1 OFFSET 2",
            ],
            3,
        )
    } else {
        ""
    };
    let row_level = !benign && rng.random_bool(0.2);
    let inner = if row_level {
        let columns = pick(
            rng,
            &[
                "e.*",
                "e.district, e.employees",
                "e.enterprise_id",
                "e.district, COUNT(*) OVER (PARTITION BY e.district) AS n",
                "DISTINCT e.district",
            ],
            5,
        );
        format!("SELECT {columns} FROM {from}{where_clause}{order}")
    } else {
        format!(
            "SELECT {} FROM {from}{where_clause}{group_by}{having}{order}",
            select.join(", ")
        )
    };
    let wrapped = if row_level {
        inner.clone()
    } else {
        match rng.random_range(0..10) {
            0 => format!("SELECT COUNT(*) AS groups FROM ({inner}) s"),
            1 => format!("SELECT * FROM ({inner}) s WHERE s.m0 > 7000"),
            2 => format!("SELECT s.*, ROW_NUMBER() OVER (ORDER BY s.m0) AS rank FROM ({inner}) s"),
            3 => format!("{inner} UNION ALL {inner}"),
            4 => format!("SELECT s.* FROM ({inner}) s JOIN enterprises x ON x.employees = s.m0"),
            5 => format!("WITH q AS ({inner}) SELECT * FROM q ORDER BY 1"),
            6 => format!(
                "SELECT (SELECT COUNT(*) FROM enterprises WHERE employees = 7331) AS probe, s.* FROM ({inner}) s"
            ),
            _ => inner.clone(),
        }
    };
    // Derived tables that drop the unit cannot be counted natively as
    // written (the gate carries the unit itself).
    let countable = !from.contains("founded FROM enterprises");
    let plain =
        countable && !row_level && wrapped == inner && having.is_empty() && order.is_empty();
    Generated {
        sql: wrapped,
        native_groups: plain.then(|| {
            (
                format!("{from}{where_clause}"),
                keys.iter().map(|k| k.to_string()).collect(),
            )
        }),
    }
}

/// Every released group of a plain grouped statement stands for at least
/// `K` enterprises, counted natively on the data with the canary.
async fn check_group_sizes(
    world: &World,
    from_where: &str,
    keys: &[String],
    released: &[Vec<String>],
) -> Vec<String> {
    let key_select: Vec<String> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| format!("{k} AS k{i}"))
        .collect();
    let sql = if keys.is_empty() {
        format!("SELECT COUNT(DISTINCT e.enterprise_id) AS units FROM {from_where}")
    } else {
        format!(
            "SELECT {}, COUNT(DISTINCT e.enterprise_id) AS units FROM {from_where} GROUP BY {}",
            key_select.join(", "),
            keys.join(", ")
        )
    };
    let Ok(frame) = world.native.sql(&sql).await else {
        return vec![format!("native reference failed to plan: {sql}")];
    };
    let native = rows(&frame.collect().await.unwrap());
    let mut findings = Vec::new();
    for row in released {
        let key = &row[..keys.len()];
        let units = native
            .iter()
            .find(|n| &n[..keys.len()] == key)
            .and_then(|n| n[keys.len()].parse::<usize>().ok())
            .unwrap_or(0);
        if units < K {
            findings.push(format!("group {key:?} released with {units} units"));
        }
    }
    findings
}

#[tokio::test]
async fn fuzzed_queries_never_release_rows_small_groups_or_the_canary() {
    let world = world().await;
    let statements: usize = std::env::var("DSB_FUZZ_STATEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let mut rng = StdRng::seed_from_u64(
        std::env::var("DSB_FUZZ_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(17),
    );
    let (mut accepted, mut violations) = (0usize, Vec::new());
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..statements {
        let generated = generate(&mut rng);
        let (kind, findings, released) = probe(&world, &generated.sql).await;
        *kinds
            .entry(match &kind {
                Kind::Rejected(code) => code.clone(),
                other => format!("{other:?}"),
            })
            .or_default() += 1;
        for finding in findings {
            violations.push(format!("{}: {finding}", generated.sql));
        }
        if kind == Kind::Released {
            accepted += 1;
            if let Some((from_where, keys)) = &generated.native_groups {
                for finding in check_group_sizes(&world, from_where, keys, &released).await {
                    violations.push(format!("{}: {finding}", generated.sql));
                }
            }
        }
        if kind == Kind::Failed {
            violations.push(format!("{}: an accepted statement failed", generated.sql));
        }
    }
    eprintln!(
        "query fuzzer: {statements} statements, {accepted} released, {} violations; outcomes {kinds:?}",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{:#?}",
        &violations[..violations.len().min(20)]
    );
    assert!(
        accepted > statements / 20,
        "too few statements were accepted to mean anything"
    );
}

#[tokio::test]
async fn the_same_aggregation_twice_in_one_statement_is_released_twice() {
    let world = world().await;
    let sql = "SELECT COUNT(e.registered_capital) AS m0 FROM enterprises e \
               UNION ALL SELECT COUNT(e.registered_capital) AS m0 FROM enterprises e";
    let released = match world.with_canary.run(sql, 1 << 20).await {
        Ok((_, batches)) => rows(&batches),
        Err(e) => panic!("{e:?}"),
    };
    assert_eq!(released.len(), 2);
    assert_eq!(released[0], released[1]);
}

/// Copy the shipped policies to `dir`, with the enterprise register's
/// `[ledger]` replaced by `ledger`.
fn policies_with_ledger(dir: &Path, ledger: &str) -> std::path::PathBuf {
    let target = dir.join("policies");
    std::fs::create_dir_all(target.join("agreements")).unwrap();
    std::fs::create_dir_all(target.join("scoring")).unwrap();
    for sub in ["", "agreements", "scoring"] {
        for entry in std::fs::read_dir(repo().join("policies").join(sub)).unwrap() {
            let path = entry.unwrap().path();
            if path.is_file() {
                std::fs::copy(&path, target.join(sub).join(path.file_name().unwrap())).unwrap();
            }
        }
    }
    let register = target.join("enterprises.toml");
    let text = std::fs::read_to_string(&register).unwrap();
    let start = text.find("[ledger]").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    std::fs::write(
        &register,
        format!("{}[ledger]\n{ledger}{}", &text[..start], &text[end..]),
    )
    .unwrap();
    target
}

#[tokio::test]
async fn the_ledger_refuses_queries_past_its_limits_across_jobs() {
    use datasandbox::release::ledger::QueryLedger;
    let dir = tempfile::tempdir().unwrap();
    let store = datasandbox::store::Store::open(&dir.path().join("store.db"))
        .await
        .unwrap();
    let limits = PolicySet::load(
        &policies_with_ledger(dir.path(), "tenant_queries_total = 2\n"),
        None,
    )
    .unwrap()
    .policy_for("enterprises")
    .unwrap()
    .ledger;
    assert_eq!(limits.tenant_queries_total, Some(2));
    let session = |tenant: &str, job: &str| {
        let ledger = QueryLedger {
            store: store.clone(),
            tenant: tenant.into(),
            job_id: job.into(),
            limits: [("enterprises".to_string(), limits)].into_iter().collect(),
        };
        let tables = protected_samples();
        async move {
            QuerySession::open(&tables, &Default::default())
                .await
                .unwrap()
                .with_ledger(Some(std::sync::Arc::new(ledger)))
        }
    };
    let sql = "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district";
    // Two queries in two jobs pass; the third is refused, in a third job.
    for job in ["job-1", "job-2"] {
        session("analyst", job)
            .await
            .run(sql, 1 << 20)
            .await
            .unwrap();
    }
    match session("analyst", "job-3").await.run(sql, 1 << 20).await {
        Err(QueryError::Rejected(reason)) => {
            assert!(reason.starts_with("query-limit: enterprises"), "{reason}")
        }
        other => panic!("expected a query-limit refusal, got {other:?}"),
    }
    // Open data and other tenants are not held back by this tenant's count.
    session("another-analyst", "job-4")
        .await
        .run(sql, 1 << 20)
        .await
        .unwrap();
    // The refusal is in the audit chain.
    let entries = datasandbox::store::audit::entries(&store).await.unwrap();
    let refused: Vec<_> = entries
        .iter()
        .filter(|e| e.action == "ledger.refused")
        .collect();
    assert_eq!(refused.len(), 1);
    assert_eq!(refused[0].subject, "job-3");
    assert_eq!(refused[0].actor, "analyst");
}

#[tokio::test]
async fn an_exhausted_ledger_refuses_new_aggregate_jobs_up_front() {
    let dir = tempfile::tempdir().unwrap();
    catalog_with_samples(dir.path()).await;
    let policies = policies_with_ledger(dir.path(), "tenant_queries_per_day = 1\n");
    let service = datasandbox::service::Service::open(dir.path(), &policies)
        .await
        .unwrap();
    let params = serde_json::json!({
        "attack": "query",
        "sql": "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district",
    })
    .to_string();
    let hostile = guest("hostile");
    let datasets = ["enterprises".to_string()];
    let submit = || service.run_analysis("analyst", &hostile, &datasets, &params, |_| {});
    let first = submit().await.unwrap();
    assert_eq!(first.execution.category, datasandbox::sandbox::Category::Ok);
    // The receipt says the release is perturbed.
    assert!(first.receipt.unwrap().body.privacy_cost.perturbed);
    match submit().await {
        Err(datasandbox::service::ServiceError::QueryLimit(reason)) => {
            assert_eq!(reason.limit, "queries per tenant and day", "{reason}")
        }
        Err(other) => panic!("expected query-limit, got {other}"),
        Ok(result) => panic!("expected query-limit, got {:?}", result.execution.category),
    }
    let entries = datasandbox::store::audit::entries(&service.store)
        .await
        .unwrap();
    assert!(
        entries
            .iter()
            .any(|e| e.action == "ledger.refused" && e.subject == "analyst"),
        "the refused admission is audited"
    );
}

/// The same fuzzer against `dp` mode: the register and the register plus
/// the canary, each in a dp session (ε = 0.01 a query, budgets raised so no
/// statement meets an empty budget). Every statement must end the same way
/// on both, never fail after a charge, charge both the same, and release no
/// canary value (nor the canary's capital as a difference of two cells).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzed_queries_in_dp_mode_end_alike_on_neighbours() {
    use datasandbox::dp::budget::{self, Cost};
    use datasandbox::dp::{DpSession, Ledger};
    let dir = tempfile::tempdir().unwrap().keep();
    let original = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();
    std::fs::write(dir.join("plain.csv"), &original).unwrap();
    std::fs::write(dir.join("canary.csv"), format!("{original}{CANARY_ROW}\n")).unwrap();
    let store = datasandbox::store::Store::open(&dir.join("dsb.sqlite"))
        .await
        .unwrap();
    let policies = PolicySet::load(&repo().join("policies"), None).unwrap();
    let dp_tables = |register: &str| -> Vec<DatasetSource> {
        [
            ("enterprises", dir.join(register)),
            ("tax_records", samples().join("tax_records.csv")),
        ]
        .into_iter()
        .map(|(id, path)| {
            let manifest = Manifest::load(&samples().join(format!("{id}.toml"))).unwrap();
            datasandbox::release::bind::dp_job_table(
                &manifest,
                &path,
                DataFormat::Csv,
                &policies,
                id == "enterprises",
            )
        })
        .collect()
    };
    let open = |tenant: &'static str, tables: Vec<DatasetSource>| {
        let store = store.clone();
        async move {
            let dp = tables[0].dp.clone().unwrap();
            budget::grant(
                &store,
                "admin",
                tenant,
                &datasandbox::dp::budget::Population::solo("enterprise", dp.rules.caps()),
                "enterprises",
                Cost {
                    epsilon: 1e6,
                    delta: 0.5,
                    rho: 0.0,
                },
                "fuzzing",
            )
            .await
            .unwrap();
            let session = std::sync::Arc::new(DpSession {
                tables: tables
                    .iter()
                    .filter_map(|t| t.dp.clone().map(|dp| (t.name.clone(), dp)))
                    .collect(),
                epsilon: 0.01,
                accuracy: None,
                ledger: Ledger {
                    store: store.clone(),
                    principal: tenant.into(),
                    job_id: format!("{tenant}-fuzz"),
                    populations: Default::default(),
                },
            });
            QuerySession::open(&tables, &Default::default())
                .await
                .unwrap()
                .with_dp(Some(session))
        }
    };
    let plain = open("plain", dp_tables("plain.csv")).await;
    let canary = open("canary", dp_tables("canary.csv")).await;
    let charged = |tenant: &'static str| {
        let store = store.clone();
        async move {
            sqlx::query_scalar::<_, Option<i64>>(
                "SELECT SUM(epsilon_micro) FROM dp_charges WHERE principal = ?",
            )
            .bind(tenant)
            .fetch_one(store.pool())
            .await
            .unwrap()
            .unwrap_or(0)
        }
    };
    let statements: usize = std::env::var("DSB_FUZZ_STATEMENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000);
    let mut rng = StdRng::seed_from_u64(29);
    let (mut released, mut violations) = (0usize, Vec::new());
    let mut kinds: std::collections::BTreeMap<String, usize> = Default::default();
    for _ in 0..statements {
        let sql = generate(&mut rng).sql;
        let (plain_kind, plain_rows) = outcome(&plain, &sql).await;
        let (kind, canary_rows) = outcome(&canary, &sql).await;
        *kinds
            .entry(match &kind {
                Kind::Rejected(code) => code.clone(),
                other => format!("{other:?}"),
            })
            .or_default() += 1;
        if plain_kind != kind {
            violations.push(format!(
                "{sql}: {plain_kind:?} without the canary, {kind:?} with it"
            ));
        }
        if kind == Kind::Failed {
            violations.push(format!("{sql}: failed after the charge"));
        }
        if kind == Kind::Released {
            released += 1;
        }
        for finding in canary_findings(&rows(&plain_rows), &rows(&canary_rows)) {
            violations.push(format!("{sql}: {finding}"));
        }
    }
    let (plain_spent, canary_spent) = (charged("plain").await, charged("canary").await);
    if plain_spent != canary_spent {
        violations.push(format!(
            "charges differ: {plain_spent} without the canary, {canary_spent} with it"
        ));
    }
    eprintln!(
        "dp query fuzzer: {statements} statements, {released} released, {} violations; outcomes {kinds:?}",
        violations.len()
    );
    assert!(
        violations.is_empty(),
        "{:#?}",
        &violations[..violations.len().min(20)]
    );
    assert!(released > 0, "no statement was answered");
}
