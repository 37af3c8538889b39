//! The catalog checks manifests against data with file:line errors, keeps
//! every version, profiles data without exposing anyone, and generates
//! synthetic samples with no real row; `dsb policy check` catches bad
//! policy files.

use crate::common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;

use common::*;
use datasandbox::catalog::{Catalog, CatalogError, Manifest, synthetic};
use datasandbox::policy::{PolicySet, PolicyStore};

const MANIFEST: &str = include_str!("../../data/samples/enterprises.toml");

fn manifest_errors(text: &str) -> Vec<String> {
    Manifest::parse(Path::new("m.toml"), text)
        .expect_err("the manifest must be refused")
        .iter()
        .map(|e| e.to_string())
        .collect()
}

#[test]
fn manifest_errors_name_file_line_and_field() {
    let unknown = MANIFEST.replace("summary = ", "colour = \"red\"\nsummary = ");
    let errors = manifest_errors(&unknown);
    assert!(
        errors[0].starts_with("m.toml:5: manifest: unknown field `colour`"),
        "{errors:?}"
    );

    let bad_unit = MANIFEST.replace(
        "privacy_unit = \"enterprise_id\"",
        "privacy_unit = \"firm\"",
    );
    assert_eq!(
        manifest_errors(&bad_unit),
        vec!["m.toml:9: privacy_unit: firm is not a described column"]
    );

    let bad_role = MANIFEST.replace(
        "role = \"quasi-identifier\"\n# The published",
        "role = \"secret\"\n# The published",
    );
    assert!(manifest_errors(&bad_role)[0].contains("unknown variant `secret`"));

    let bad_bounds = MANIFEST.replace("bounds = [0, 100000]", "bounds = [100000, 0]");
    let errors = manifest_errors(&bad_bounds);
    assert!(
        errors[0].contains(": columns.bounds: bounds of employees must be finite with low < high"),
        "{errors:?}"
    );
    assert!(errors[0].starts_with("m.toml:60:"), "{errors:?}");

    let no_bounds = MANIFEST.replace("bounds = [0, 100000]\n", "");
    assert!(manifest_errors(&no_bounds)[0].contains("numeric column employees needs bounds"));

    let bad_key = MANIFEST.replace(
        "join_keys = [\"enterprise_id\"]",
        "join_keys = [\"firm_id\"]",
    );
    assert!(manifest_errors(&bad_key)[0].contains("join_keys: firm_id is not a described column"));
}

#[tokio::test]
async fn data_that_does_not_match_its_manifest_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let manifest = samples().join("enterprises.toml");
    let csv = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();

    // A value that is not an int64.
    let bad = dir.path().join("bad_types.csv");
    std::fs::write(&bad, csv.replacen(",110,", ",many,", 1)).unwrap();
    let error = catalog.add(&bad, &manifest).await.unwrap_err().to_string();
    assert!(
        error.contains("1 value(s) of column employees are not Int64"),
        "{error}"
    );
    assert!(
        error.contains("enterprises.toml:55: columns.type"),
        "{error}"
    );

    // An undescribed column.
    let extra = dir.path().join("extra.csv");
    let mut text = String::new();
    for (i, line) in csv.lines().enumerate() {
        text.push_str(line);
        text.push_str(if i == 0 { ",phone\n" } else { ",555\n" });
    }
    std::fs::write(&extra, text).unwrap();
    let error = catalog
        .add(&extra, &manifest)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("the data has a column phone the dictionary does not describe"),
        "{error}"
    );
    assert!(
        catalog.ids().unwrap().is_empty(),
        "nothing is registered after a refusal"
    );
}

#[tokio::test]
async fn every_version_stays_readable_by_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let manifest = samples().join("enterprises.toml");
    let first = catalog
        .add(&samples().join("enterprises.csv"), &manifest)
        .await
        .unwrap();
    let again = catalog
        .add(&samples().join("enterprises.csv"), &manifest)
        .await
        .unwrap();
    assert_eq!(
        first.hash, again.hash,
        "the same bytes are the same version"
    );

    let csv = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();
    let updated = dir.path().join("enterprises.csv");
    std::fs::write(
        &updated,
        csv.lines().take(1500).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let second = catalog.add(&updated, &manifest).await.unwrap();
    assert_ne!(second.hash, first.hash);
    assert_eq!(catalog.get("enterprises").unwrap().hash, second.hash);
    assert_eq!(
        catalog
            .get(&format!("enterprises@{}", first.hash))
            .unwrap()
            .profile
            .rows,
        2000
    );
    assert_eq!(
        catalog
            .get(&format!("enterprises@{}", second.hash))
            .unwrap()
            .profile
            .rows,
        1499
    );
    assert!(matches!(
        catalog.get("enterprises@0000"),
        Err(CatalogError::UnknownVersion { .. })
    ));
    assert!(matches!(
        catalog.get("nothing"),
        Err(CatalogError::UnknownDataset(_))
    ));
    assert!(matches!(
        catalog.get("../etc"),
        Err(CatalogError::UnknownDataset(_))
    ));
}

#[tokio::test]
async fn the_profile_reports_quality_without_exposing_anyone() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let version = catalog
        .add(
            &samples().join("enterprises.csv"),
            &samples().join("enterprises.toml"),
        )
        .await
        .unwrap();
    let profile = &version.profile;
    assert_eq!((profile.rows, profile.privacy_units), (2000, 2000));
    let column = |name: &str| profile.columns.iter().find(|c| c.name == name).unwrap();
    let capital = column("registered_capital");
    assert!(capital.nulls > 0 && (capital.null_rate - capital.nulls as f64 / 2000.0).abs() < 1e-12);
    assert!(
        profile
            .warnings
            .iter()
            .any(|w| w.starts_with("registered_capital:") && w.contains("missing"))
    );
    // Extremes of sensitive columns and of strings are withheld; dates shown.
    assert_eq!(
        (
            column("employees").min.clone(),
            column("employees").max.clone()
        ),
        (None, None)
    );
    assert_eq!(column("district").min, None);
    assert!(column("founded").min.is_some());
    // Categories: only values held by at least 10 enterprises.
    let districts = &column("district").categories;
    assert_eq!(districts.len(), 15);
    assert!(!districts.contains(&"Chongming".to_string()));
    assert!(
        !column("industry")
            .categories
            .contains(&"aquaculture".to_string())
    );
    assert!(column("enterprise_id").categories.is_empty());
    assert_eq!(profile.dictionary_completeness, 1.0);
    assert!(profile.observed_coverage.is_some());
}

#[tokio::test]
async fn synthetic_samples_contain_no_real_row_and_no_real_identifier() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let version = catalog
        .add(
            &samples().join("enterprises.csv"),
            &samples().join("enterprises.toml"),
        )
        .await
        .unwrap();
    let sample = synthetic::sample_csv(&version.manifest, &version.profile, 2000, 7);
    let real = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();
    let real_rows: HashSet<&str> = real.lines().skip(1).collect();
    let real_ids: HashSet<&str> = real
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    let mut rows = 0;
    for line in sample.lines().skip(1) {
        rows += 1;
        assert!(!real_rows.contains(line), "a real row leaked: {line}");
        assert!(!real_ids.contains(line.split(',').next().unwrap()));
        assert!(
            !line.contains("Chongming"),
            "a rare category leaked: {line}"
        );
    }
    assert_eq!(rows, 2000);
    assert_eq!(
        sample.lines().next().unwrap(),
        real.lines().next().unwrap(),
        "same columns"
    );

    // And it runs a guest under the dataset's policy, like the real thing.
    let path = dir.path().join("enterprises.csv");
    std::fs::write(&path, &sample).unwrap();
    let policies = PolicySet::load(&repo().join("policies"), None).unwrap();
    let table = datasandbox::release::bind::job_table(
        &version.manifest,
        &path,
        datasandbox::dataset::DataFormat::Csv,
        &policies,
        false,
        &version.record_keys,
    );
    let execution = query_through_guest(
        "SELECT district, COUNT(*) AS n FROM enterprises GROUP BY district",
        vec![table],
    )
    .await;
    assert_eq!(
        execution.category,
        datasandbox::sandbox::Category::Ok,
        "{:?}",
        execution.diagnostics
    );
}

fn write_policies(dir: &Path, files: &[(&str, &str)]) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(name), text).unwrap();
    }
}

#[test]
fn policy_check_reports_every_bad_file_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    write_policies(
        dir.path(),
        &[
            (
                "a.toml",
                "dataset = \"enterprises\"\nmodes = [\"aggregate\"]\nmin_group_size = 10\nmax_rows = 5\n",
            ),
            (
                "b.toml",
                "dataset = \"tax_records\"\nmodes = [\"aggregate\"]\nmin_group_size = 1\n",
            ),
            ("c.toml", "dataset = \"payroll\"\nmodes = [\"aggregate\"]\n"),
            (
                "d.toml",
                "dataset = \"enterprises\"\nmodes = [\"aggregate\"]\n",
            ),
            (
                "e.toml",
                "dataset = \"tax_records\"\nmodes = [\"teleport\"]\n",
            ),
            (
                "f.toml",
                "dataset = \"enterprises\"\nmodes = [\"aggregate\"]\nrounding = \"nearest-5\"\naggregates = [\"count\", \"sum\"]\n",
            ),
        ],
    );
    let known = vec!["enterprises".to_string(), "tax_records".to_string()];
    let problems: Vec<String> = PolicySet::load(dir.path(), Some(&known))
        .unwrap_err()
        .0
        .iter()
        .map(|d| d.to_string())
        .collect();
    let file = |name: &str| dir.path().join(name).display().to_string();
    let expected = [
        format!("{}:4: unknown field `max_rows`", file("a.toml")),
        format!("{}:3: `min_group_size` must be at least 2", file("b.toml")),
        format!(
            "{}:1: unknown dataset \"payroll\": not in the catalog",
            file("c.toml")
        ),
        format!("{}:2: unknown variant `teleport`", file("e.toml")),
    ];
    for want in &expected {
        assert!(
            problems.iter().any(|p| p.starts_with(want.as_str())),
            "missing {want} in {problems:#?}"
        );
    }
    // d.toml and f.toml both govern enterprises: the second is an error.
    assert!(
        problems
            .iter()
            .any(|p| p.contains("a second policy for enterprises")),
        "{problems:#?}"
    );

    // The CLI prints them and exits 1; the shipped policies pass.
    let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args(["policy", "check", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be at least 2"));
    let out = Command::new(env!("CARGO_BIN_EXE_dsb"))
        .args(["policy", "check", repo().join("policies").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn reload_swaps_policies_but_a_running_job_keeps_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("enterprises.toml");
    write_policies(
        dir.path(),
        &[(
            "enterprises.toml",
            "dataset = \"enterprises\"\nmodes = [\"aggregate\"]\nmin_group_size = 10\n",
        )],
    );
    let store = PolicyStore::open(dir.path(), None).unwrap();
    let running = store.current().policy_for("enterprises").unwrap();

    std::fs::write(
        &file,
        "dataset = \"enterprises\"\nmodes = [\"aggregate\"]\nmin_group_size = 25\n",
    )
    .unwrap();
    store.reload(None).unwrap();
    let fresh = store.current().policy_for("enterprises").unwrap();
    assert_eq!((running.min_group_size, fresh.min_group_size), (10, 25));
    assert_ne!(running.hash, fresh.hash, "the hash names the content");

    // A broken edit is refused and the last good set stays in force.
    std::fs::write(
        &file,
        "dataset = \"enterprises\"\nmodes = [\"aggregate\"]\nmin_group_size = 1\n",
    )
    .unwrap();
    assert!(store.reload(None).is_err());
    assert_eq!(
        store
            .current()
            .policy_for("enterprises")
            .unwrap()
            .min_group_size,
        25
    );
}

#[tokio::test]
async fn published_profiles_do_not_tell_two_versions_one_firm_apart() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = Catalog::open(&dir.path().join("catalog")).unwrap();
    let manifest = samples().join("enterprises.toml");
    let plain = catalog
        .add(&samples().join("enterprises.csv"), &manifest)
        .await
        .unwrap();
    // The next version has one firm more, with values nobody else has.
    let csv = std::fs::read_to_string(samples().join("enterprises.csv")).unwrap();
    let updated = dir.path().join("enterprises.csv");
    std::fs::write(
        &updated,
        format!(
            "{csv}913199999999999999,Canary Co. Ltd.,Pudong,it-services,large,99999,9999999.5,1999-01-01\n"
        ),
    )
    .unwrap();
    let canary = catalog.add(&updated, &manifest).await.unwrap();
    // As computed, the two differ by exactly one firm.
    assert_eq!(canary.profile.rows, plain.profile.rows + 1);
    // As published: rounded counts (the same here; one firm shows only
    // where a count crosses a multiple of 10), no extremes.
    let (a, b) = (plain.profile.published(), canary.profile.published());
    assert_eq!((a.rows, a.privacy_units), (b.rows, b.privacy_units));
    assert_eq!(a.rows % 10, 0);
    for (x, y) in a.columns.iter().zip(&b.columns) {
        assert_eq!(x.categories, y.categories, "{}", x.name);
        assert_eq!(x.distinct % 10, 0);
    }
    assert!(a.columns.iter().all(|c| c.min.is_none() && c.max.is_none()));
    let text = serde_json::to_string(&b).unwrap();
    for secret in ["99999", "9999999.5", "1999-01-01", "Canary"] {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
}
