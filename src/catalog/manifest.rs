//! Dataset manifests: what a dataset is, who it is about, and its data
//! dictionary. Parsed from TOML with every problem reported as
//! `file:line: field: message`.

use std::path::{Path, PathBuf};

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::dataset::{Classification, ColumnNote, ColumnRole};
use crate::policy::line_of;

/// Column types a manifest can declare.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    String,
    Int64,
    Float64,
    Boolean,
    Date,
}

impl ColumnType {
    pub fn arrow(self) -> DataType {
        match self {
            ColumnType::String => DataType::Utf8,
            ColumnType::Int64 => DataType::Int64,
            ColumnType::Float64 => DataType::Float64,
            ColumnType::Boolean => DataType::Boolean,
            ColumnType::Date => DataType::Date32,
        }
    }

    /// Whether a file column of physical type `held` holds this logical
    /// type without loss, so jobs can read it cast to [`Self::arrow`]:
    /// any string encoding for strings, integers of up to 32 bits (signed,
    /// or unsigned below 2³²) for int64, single floats for float64, and
    /// either Arrow date. Anything that could overflow or round (unsigned
    /// 64-bit integers, doubles for int64, text for dates) is refused.
    pub fn accepts(self, held: &DataType) -> bool {
        use DataType as D;
        let is_string = |t: &DataType| matches!(t, D::Utf8 | D::LargeUtf8 | D::Utf8View);
        match self {
            ColumnType::String => {
                is_string(held)
                    || matches!(held, D::Dictionary(key, value) if key.is_integer() && is_string(value))
            }
            ColumnType::Int64 => matches!(
                held,
                D::Int8 | D::Int16 | D::Int32 | D::Int64 | D::UInt8 | D::UInt16 | D::UInt32
            ),
            ColumnType::Float64 => matches!(held, D::Float32 | D::Float64),
            ColumnType::Boolean => held == &D::Boolean,
            ColumnType::Date => matches!(held, D::Date32 | D::Date64),
        }
    }

    pub fn is_numeric(self) -> bool {
        matches!(self, ColumnType::Int64 | ColumnType::Float64)
    }

    pub fn sql(self) -> &'static str {
        match self {
            ColumnType::String => "VARCHAR",
            ColumnType::Int64 => "BIGINT",
            ColumnType::Float64 => "DOUBLE",
            ColumnType::Boolean => "BOOLEAN",
            ColumnType::Date => "DATE",
        }
    }
}

/// The declared time span of the data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeCoverage {
    /// The date column that places each row in time.
    pub column: String,
    /// ISO dates, inclusive.
    pub start: String,
    pub end: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ColumnFile {
    name: Spanned<String>,
    #[serde(rename = "type")]
    data_type: Spanned<ColumnType>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    unit: String,
    role: Spanned<ColumnRole>,
    bounds: Option<Spanned<[f64; 2]>>,
    categories: Option<Spanned<Vec<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestFile {
    id: Spanned<String>,
    title: String,
    domain: String,
    summary: String,
    owner: String,
    update_frequency: String,
    time_coverage: Option<Spanned<TimeCoverage>>,
    classification: Classification,
    privacy_unit: Spanned<String>,
    /// The population whose members the privacy unit names: datasets of
    /// one population share one privacy budget per tenant. Defaults to the
    /// dataset's id (a population of its own).
    population: Option<Spanned<String>>,
    /// A public bound on the rows one privacy unit has, checked against the
    /// data at registration.
    max_rows_per_unit: Option<Spanned<u32>>,
    #[serde(default)]
    join_keys: Vec<Spanned<String>>,
    columns: Spanned<Vec<ColumnFile>>,
}

/// One column of the data dictionary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub data_type: ColumnType,
    pub description: String,
    pub unit: String,
    pub role: ColumnRole,
    /// `[low, high]` for numeric columns: clamping bounds for differential
    /// privacy and the range quality checks hold the data to.
    pub bounds: Option<[f64; 2]>,
    /// The column's complete, published list of values (e.g. the
    /// districts): differentially private answers release these group keys
    /// directly; other keys pass only a noisy threshold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
    /// Line in the manifest, for messages about this column.
    #[serde(skip)]
    pub line: usize,
}

/// Largest `max_rows_per_unit` a manifest may declare.
pub const MAX_ROWS_PER_UNIT: u32 = 1_000_000;

/// A checked manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub id: String,
    pub title: String,
    pub domain: String,
    pub summary: String,
    pub owner: String,
    pub update_frequency: String,
    pub time_coverage: Option<TimeCoverage>,
    pub classification: Classification,
    pub privacy_unit: String,
    /// Empty when the file names none: see [`Manifest::population`].
    #[serde(default)]
    pub population: String,
    /// At most this many rows per privacy unit: public, declared by the
    /// data holder and checked against the data when a version is
    /// registered (a file with a unit over it is refused). `dp` queries on
    /// the table are bounded by it instead of per query when it is no
    /// looser than the policy's per-query bounds.
    #[serde(default)]
    pub max_rows_per_unit: Option<u32>,
    /// Line of `max_rows_per_unit` in the manifest, for messages.
    #[serde(skip)]
    pub max_rows_per_unit_line: usize,
    pub join_keys: Vec<String>,
    pub columns: Vec<ColumnSpec>,
    #[serde(skip)]
    pub source: PathBuf,
}

/// A problem in a manifest or between a manifest and its data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{line}: {field}: {message}", file.display())]
pub struct ManifestError {
    pub file: PathBuf,
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl Manifest {
    /// The population this dataset's privacy units belong to: the
    /// manifest's `population`, else the dataset's own id.
    pub fn population(&self) -> &str {
        if self.population.is_empty() {
            &self.id
        } else {
            &self.population
        }
    }

    /// Parse and check a manifest on its own (the data is checked by
    /// [`Manifest::check_schema`]).
    pub fn parse(file: &Path, text: &str) -> Result<Self, Vec<ManifestError>> {
        let error = |line: usize, field: &str, message: String| ManifestError {
            file: file.to_path_buf(),
            line,
            field: field.to_string(),
            message,
        };
        let parsed: ManifestFile = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(1, |s| line_of(text, s.start));
            vec![error(line, "manifest", e.message().to_string())]
        })?;
        let at = |span: std::ops::Range<usize>| line_of(text, span.start);
        let mut problems = Vec::new();
        if let Err(reason) = crate::dataset::validate_table_name(parsed.id.get_ref()) {
            problems.push(error(
                at(parsed.id.span()),
                "id",
                format!("{:?} {reason}", parsed.id.get_ref()),
            ));
        }
        let columns_line = at(parsed.columns.span());
        let mut columns = Vec::new();
        for column in parsed.columns.into_inner() {
            let line = at(column.name.span());
            let name = column.name.into_inner();
            if columns.iter().any(|c: &ColumnSpec| c.name == name) {
                problems.push(error(
                    line,
                    "columns.name",
                    format!("column {name} is described twice"),
                ));
            }
            let data_type = *column.data_type.get_ref();
            let role = *column.role.get_ref();
            let bounds = column.bounds.as_ref().map(|b| *b.get_ref());
            match (&column.bounds, data_type.is_numeric()) {
                (Some(b), false) => problems.push(error(
                    at(b.span()),
                    "columns.bounds",
                    format!("column {name} is not numeric; bounds apply to int64 and float64"),
                )),
                (Some(b), true) => {
                    let [low, high] = *b.get_ref();
                    if !(low.is_finite() && high.is_finite() && low < high) {
                        problems.push(error(
                            at(b.span()),
                            "columns.bounds",
                            format!("bounds of {name} must be finite with low < high"),
                        ));
                    }
                }
                (None, true) if role != ColumnRole::Identifier => problems.push(error(
                    line,
                    "columns.bounds",
                    format!("numeric column {name} needs bounds = [low, high] (differential privacy clamps to them)"),
                )),
                (None, _) => {}
            }
            if let Some(categories) = &column.categories {
                let list = categories.get_ref();
                let unique: std::collections::HashSet<&String> = list.iter().collect();
                if role == ColumnRole::Identifier
                    || list.is_empty()
                    || list.len() > 1000
                    || unique.len() != list.len()
                {
                    problems.push(error(
                        at(categories.span()),
                        "columns.categories",
                        format!(
                            "categories of {name}: 1 to 1000 distinct published values, not on an identifier"
                        ),
                    ));
                }
            }
            columns.push(ColumnSpec {
                name,
                data_type,
                description: column.description,
                unit: column.unit,
                role,
                bounds,
                categories: column.categories.map(Spanned::into_inner),
                line,
            });
        }
        if columns.is_empty() {
            problems.push(error(
                columns_line,
                "columns",
                "the dictionary describes no column".into(),
            ));
        }
        let unit = parsed.privacy_unit.get_ref();
        match columns.iter().find(|c| &c.name == unit) {
            None => problems.push(error(
                at(parsed.privacy_unit.span()),
                "privacy_unit",
                format!("{unit} is not a described column"),
            )),
            Some(column) if column.role != ColumnRole::Identifier => problems.push(error(
                at(parsed.privacy_unit.span()),
                "privacy_unit",
                format!("{unit} must have the role identifier"),
            )),
            Some(_) => {}
        }
        if let Some(population) = &parsed.population {
            let name = population.get_ref();
            if name.is_empty()
                || name.len() > 64
                || !name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                problems.push(error(
                    at(population.span()),
                    "population",
                    "1 to 64 of a-z, A-Z, 0-9, _ and -".into(),
                ));
            }
        }
        if let Some(rows) = &parsed.max_rows_per_unit
            && !(1..=MAX_ROWS_PER_UNIT).contains(rows.get_ref())
        {
            problems.push(error(
                at(rows.span()),
                "max_rows_per_unit",
                format!("1 to {MAX_ROWS_PER_UNIT}"),
            ));
        }
        for key in &parsed.join_keys {
            if !columns.iter().any(|c| &c.name == key.get_ref()) {
                problems.push(error(
                    at(key.span()),
                    "join_keys",
                    format!("{} is not a described column", key.get_ref()),
                ));
            }
        }
        if let Some(coverage) = &parsed.time_coverage {
            let line = at(coverage.span());
            let coverage = coverage.get_ref();
            match columns.iter().find(|c| c.name == coverage.column) {
                Some(c) if c.data_type == ColumnType::Date => {}
                _ => problems.push(error(
                    line,
                    "time_coverage.column",
                    format!("{} is not a described date column", coverage.column),
                )),
            }
            for (field, value) in [
                ("time_coverage.start", &coverage.start),
                ("time_coverage.end", &coverage.end),
            ] {
                if !is_iso_date(value) {
                    problems.push(error(
                        line,
                        field,
                        format!("{value:?} is not a date (YYYY-MM-DD)"),
                    ));
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Manifest {
            id: parsed.id.into_inner(),
            title: parsed.title,
            domain: parsed.domain,
            summary: parsed.summary,
            owner: parsed.owner,
            update_frequency: parsed.update_frequency,
            time_coverage: parsed.time_coverage.map(Spanned::into_inner),
            classification: parsed.classification,
            privacy_unit: parsed.privacy_unit.into_inner(),
            population: parsed
                .population
                .map(Spanned::into_inner)
                .unwrap_or_default(),
            max_rows_per_unit_line: parsed
                .max_rows_per_unit
                .as_ref()
                .map_or(1, |rows| at(rows.span())),
            max_rows_per_unit: parsed.max_rows_per_unit.map(Spanned::into_inner),
            join_keys: parsed
                .join_keys
                .into_iter()
                .map(Spanned::into_inner)
                .collect(),
            columns,
            source: file.to_path_buf(),
        })
    }

    /// Read and parse a manifest file.
    pub fn load(file: &Path) -> Result<Self, Vec<ManifestError>> {
        let text = std::fs::read_to_string(file).map_err(|e| {
            vec![ManifestError {
                file: file.to_path_buf(),
                line: 0,
                field: "manifest".into(),
                message: format!("cannot read: {e}"),
            }]
        })?;
        Self::parse(file, &text)
    }

    /// The declared Arrow schema, in dictionary order.
    pub fn schema(&self) -> SchemaRef {
        std::sync::Arc::new(Schema::new(
            self.columns
                .iter()
                .map(|c| Field::new(&c.name, c.data_type.arrow(), true))
                .collect::<Vec<_>>(),
        ))
    }

    /// What the guest is told about each column.
    pub fn dictionary(&self) -> Vec<ColumnNote> {
        self.columns
            .iter()
            .map(|c| ColumnNote {
                name: c.name.clone(),
                role: c.role,
                description: c.description.clone(),
            })
            .collect()
    }

    pub fn identifiers(&self) -> Vec<String> {
        self.columns
            .iter()
            .filter(|c| c.role == ColumnRole::Identifier)
            .map(|c| c.name.clone())
            .collect()
    }

    /// Check the data file's columns against the dictionary: every column
    /// described, no extra ones, and (for typed formats) the declared types.
    pub fn check_schema(
        &self,
        names: &[String],
        types: Option<&[DataType]>,
    ) -> Result<(), Vec<ManifestError>> {
        let error = |line: usize, message: String| ManifestError {
            file: self.source.clone(),
            line,
            field: "columns".into(),
            message,
        };
        let mut problems = Vec::new();
        for name in names {
            if !self.columns.iter().any(|c| &c.name == name) {
                problems.push(error(
                    1,
                    format!("the data has a column {name} the dictionary does not describe"),
                ));
            }
        }
        for (index, column) in self.columns.iter().enumerate() {
            match names.iter().position(|n| n == &column.name) {
                None => problems.push(error(
                    column.line,
                    format!("column {} is described but not in the data", column.name),
                )),
                Some(position) => {
                    if let Some(types) = types
                        && !column.data_type.accepts(&types[position])
                    {
                        problems.push(error(
                            column.line,
                            format!(
                                "column {} is declared {:?} but the data holds {}",
                                column.name, column.data_type, types[position]
                            ),
                        ));
                    }
                    if position != index && types.is_none() {
                        problems.push(error(
                            column.line,
                            format!(
                                "column {} is described at position {} but is at {} in the file",
                                column.name,
                                index + 1,
                                position + 1
                            ),
                        ));
                    }
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

fn is_iso_date(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    matches!(parts.as_slice(), [y, m, d] if y.len() == 4 && m.len() == 2 && d.len() == 2
        && [y, m, d].iter().all(|p| p.chars().all(|c| c.is_ascii_digit()))
        && (1..=12).contains(&m.parse::<u32>().unwrap_or(0))
        && (1..=31).contains(&d.parse::<u32>().unwrap_or(0)))
}
