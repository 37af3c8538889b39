//! Dataset files and their classification.
//!
//! A [`DatasetSource`] names one table a job may query: its SQL name, the file
//! that holds it and how it is classified. This module does not read rows;
//! `query` registers the files with DataFusion.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a dataset may be used; set by the data holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Classification {
    /// Public open data.
    Open,
    /// Usable after an approved access application.
    Conditional,
    /// Usable only by principals the administrator names.
    Restricted,
}

impl fmt::Display for Classification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Classification::Open => "open",
            Classification::Conditional => "conditional",
            Classification::Restricted => "restricted",
        })
    }
}

impl FromStr for Classification {
    type Err = DatasetError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "open" => Ok(Classification::Open),
            "conditional" => Ok(Classification::Conditional),
            "restricted" => Ok(Classification::Restricted),
            other => Err(DatasetError::UnknownClassification(other.to_string())),
        }
    }
}

/// File formats a dataset can be loaded from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Csv,
    Parquet,
    /// Arrow IPC file format (`.arrow`, `.feather`).
    Arrow,
}

impl DataFormat {
    /// The format a file's extension names, if any.
    pub fn from_path(path: &Path) -> Option<Self> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(DataFormat::Csv),
            "parquet" => Some(DataFormat::Parquet),
            "arrow" | "feather" | "ipc" => Some(DataFormat::Arrow),
            _ => None,
        }
    }
}

/// The role of a column in a data dictionary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ColumnRole {
    Identifier,
    QuasiIdentifier,
    Sensitive,
    Attribute,
    Label,
}

impl fmt::Display for ColumnRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ColumnRole::Identifier => "identifier",
            ColumnRole::QuasiIdentifier => "quasi-identifier",
            ColumnRole::Sensitive => "sensitive",
            ColumnRole::Attribute => "attribute",
            ColumnRole::Label => "label",
        })
    }
}

/// What the guest is told about a column in `data.tables`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnNote {
    pub name: String,
    pub role: ColumnRole,
    pub description: String,
}

/// One table a job may query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetSource {
    /// The table's SQL name: `[a-z][a-z0-9_]{0,62}`.
    pub name: String,
    pub path: PathBuf,
    pub format: DataFormat,
    pub classification: Classification,
    /// Declared column types (from the manifest); `None` infers them, which
    /// only `dsb dev run` on the developer's own files does.
    #[serde(skip)]
    pub schema: Option<datafusion::arrow::datatypes::SchemaRef>,
    /// The data dictionary, when the dataset has a manifest.
    #[serde(skip)]
    pub dictionary: Vec<ColumnNote>,
    /// The aggregate-mode rules for a protected dataset whose policy allows
    /// that mode; without them a protected dataset answers no query.
    #[serde(skip)]
    pub rules: Option<std::sync::Arc<crate::release::aggregate::TableRules>>,
    /// The dp-mode rules, for a job in `dp` mode over a dataset whose
    /// policy allows it (then `rules` is `None`).
    #[serde(skip)]
    pub dp: Option<std::sync::Arc<crate::dp::DpTable>>,
    /// The columns the job's grant covers (`None`: all). Queries naming
    /// any other column of this table are refused before they run.
    #[serde(skip)]
    pub granted_columns: Option<Vec<String>>,
}

#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    #[error("{0}: not a CSV, Parquet or Arrow IPC file (by its extension)")]
    UnsupportedFormat(PathBuf),
    #[error("{path}: cannot be used as a table name ({reason})")]
    InvalidName { path: PathBuf, reason: &'static str },
    #[error("unknown classification {0:?}: use open, conditional or restricted")]
    UnknownClassification(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}: holds no CSV, Parquet or Arrow IPC files")]
    EmptyDirectory(PathBuf),
    #[error("two datasets are named {0}")]
    DuplicateName(String),
}

impl DatasetSource {
    /// A dataset from one file; its table name is the file stem, lower-cased,
    /// with `-` and spaces turned into `_`.
    pub fn from_file(path: &Path, classification: Classification) -> Result<Self, DatasetError> {
        let format = DataFormat::from_path(path)
            .ok_or_else(|| DatasetError::UnsupportedFormat(path.to_path_buf()))?;
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        let name: String = stem
            .chars()
            .map(|c| match c {
                '-' | ' ' => '_',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        validate_table_name(&name).map_err(|reason| DatasetError::InvalidName {
            path: path.to_path_buf(),
            reason,
        })?;
        Ok(DatasetSource {
            name,
            path: path.to_path_buf(),
            format,
            classification,
            schema: None,
            dictionary: Vec::new(),
            rules: None,
            dp: None,
            granted_columns: None,
        })
    }

    /// Datasets from a file or from every supported file directly inside a
    /// directory, sorted by name.
    pub fn discover(
        path: &Path,
        classification: Classification,
    ) -> Result<Vec<Self>, DatasetError> {
        let io_error = |source| DatasetError::Io {
            path: path.to_path_buf(),
            source,
        };
        if !path.metadata().map_err(io_error)?.is_dir() {
            return Ok(vec![Self::from_file(path, classification)?]);
        }
        let mut found = Vec::new();
        for entry in std::fs::read_dir(path).map_err(io_error)? {
            let file = entry.map_err(io_error)?.path();
            if file.is_file() && DataFormat::from_path(&file).is_some() {
                found.push(Self::from_file(&file, classification)?);
            }
        }
        if found.is_empty() {
            return Err(DatasetError::EmptyDirectory(path.to_path_buf()));
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        ensure_unique_names(&found)?;
        Ok(found)
    }
}

/// Two tables in one job must not share a name.
pub fn ensure_unique_names(datasets: &[DatasetSource]) -> Result<(), DatasetError> {
    let mut names = std::collections::HashSet::new();
    for dataset in datasets {
        if !names.insert(dataset.name.as_str()) {
            return Err(DatasetError::DuplicateName(dataset.name.clone()));
        }
    }
    Ok(())
}

/// Table names are plain lower-case SQL identifiers, so a guest's SQL names
/// them without quoting and no name can smuggle syntax.
pub fn validate_table_name(name: &str) -> Result<(), &'static str> {
    let mut chars = name.chars();
    match chars.next() {
        Some(c) if c.is_ascii_lowercase() => {}
        Some(_) => return Err("must start with a letter a-z"),
        None => return Err("empty"),
    }
    if name.len() > 63 {
        return Err("longer than 63 characters");
    }
    if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err("only a-z, 0-9 and _ are allowed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_file_stems() {
        let d = DatasetSource::from_file(Path::new("/x/Tax-Records.csv"), Classification::Open)
            .unwrap();
        assert_eq!(d.name, "tax_records");
        assert_eq!(d.format, DataFormat::Csv);
        assert!(matches!(
            DatasetSource::from_file(Path::new("/x/1st.csv"), Classification::Open),
            Err(DatasetError::InvalidName { .. })
        ));
        assert!(matches!(
            DatasetSource::from_file(Path::new("/x/a;drop.csv"), Classification::Open),
            Err(DatasetError::InvalidName { .. })
        ));
        assert!(matches!(
            DatasetSource::from_file(Path::new("/x/a.txt"), Classification::Open),
            Err(DatasetError::UnsupportedFormat(_))
        ));
    }

    #[test]
    fn classifications_parse_and_print() {
        for c in [
            Classification::Open,
            Classification::Conditional,
            Classification::Restricted,
        ] {
            assert_eq!(c.to_string().parse::<Classification>().unwrap(), c);
        }
        assert!("secret".parse::<Classification>().is_err());
    }
}
