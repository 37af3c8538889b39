//! Server configuration: defaults, then a TOML file, then `DSB_*`
//! environment variables (`DSB_LISTEN`, `DSB_CONCURRENCY`, …: the field
//! name in upper case), then command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub policies: PathBuf,
    /// Jobs running at once (default: the number of cores).
    pub concurrency: usize,
    /// Jobs waiting for a worker before submissions get 429.
    pub max_queued: usize,
    /// Unfinished jobs per tenant.
    pub per_tenant_jobs: usize,
    /// Job submissions per tenant per minute (0: no limit).
    pub per_tenant_per_minute: u32,
    /// Largest request body (JSON), bytes.
    pub max_body_bytes: usize,
    /// Largest module upload, bytes.
    pub max_module_bytes: usize,
    /// Largest dataset upload, bytes.
    pub max_dataset_bytes: usize,
    #[serde(with = "seconds")]
    pub request_timeout: Duration,
    /// How long running jobs may take to finish at shutdown.
    #[serde(with = "seconds")]
    pub grace_period: Duration,
    /// Sign the audit head this often when it moved (0: only on demand).
    #[serde(with = "seconds")]
    pub checkpoint_interval: Duration,
    /// Working days an administrator has to answer an application.
    pub application_working_days: u32,
    /// Days that are not working days (`YYYY-MM-DD`), besides weekends.
    pub holidays: Vec<String>,
    /// Where guest calls run: supervised worker processes (the default)
    /// or this process (`[workers] isolation = "in-process"`).
    pub workers: crate::worker::WorkerConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8470)),
            data_dir: "dsb-data".into(),
            policies: "policies".into(),
            concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_queued: 256,
            per_tenant_jobs: 64,
            per_tenant_per_minute: 600,
            max_body_bytes: 1 << 20,
            max_module_bytes: 64 << 20,
            max_dataset_bytes: 1 << 30,
            request_timeout: Duration::from_secs(60),
            grace_period: Duration::from_secs(30),
            checkpoint_interval: Duration::from_secs(3600),
            application_working_days: 5,
            holidays: Vec::new(),
            workers: crate::worker::WorkerConfig::default(),
        }
    }
}

mod seconds {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let seconds = f64::deserialize(d)?;
        if !(0.0..=86_400.0 * 365.0).contains(&seconds) {
            return Err(serde::de::Error::custom("seconds out of range"));
        }
        Ok(Duration::from_secs_f64(seconds))
    }
}

/// The configuration keys, for the environment overlay.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "policies",
    "concurrency",
    "max_queued",
    "per_tenant_jobs",
    "per_tenant_per_minute",
    "max_body_bytes",
    "max_module_bytes",
    "max_dataset_bytes",
    "request_timeout",
    "grace_period",
    "checkpoint_interval",
    "application_working_days",
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("configuration: {0}")]
    Invalid(String),
}

impl ServerConfig {
    /// Defaults, overlaid with `file` (if given) and then with `DSB_*`
    /// variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
                    path: path.into(),
                    message: e.to_string(),
                })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                    path: path.into(),
                    message: e.message().to_string(),
                })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(key) = name
                .strip_prefix("DSB_")
                .map(str::to_ascii_lowercase)
                .filter(|k| KEYS.contains(&k.as_str()))
            else {
                continue;
            };
            // Numbers stay numbers; anything else is a string.
            let parsed = value
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| value.parse::<f64>().map(toml::Value::Float))
                .unwrap_or(toml::Value::String(value));
            table.insert(key, parsed);
        }
        let config: ServerConfig = table
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        if config.concurrency == 0 || config.per_tenant_jobs == 0 {
            return Err(ConfigError::Invalid(
                "concurrency and per_tenant_jobs must be at least 1".into(),
            ));
        }
        if let Some(bad) = config
            .holidays
            .iter()
            .find(|d| crate::applications::parse_day(d).is_none())
        {
            return Err(ConfigError::Invalid(format!(
                "holidays: {bad:?} is not a YYYY-MM-DD date"
            )));
        }
        if !(1..=60).contains(&config.application_working_days) {
            return Err(ConfigError::Invalid(
                "application_working_days: 1 to 60".into(),
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dsb.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nconcurrency = 3\ngrace_period = 5\n",
        )
        .unwrap();
        let env = [
            ("DSB_CONCURRENCY".to_string(), "7".to_string()),
            ("DSB_UNRELATED".to_string(), "x".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let config = ServerConfig::load(Some(&file), env).unwrap();
        assert_eq!(config.listen.port(), 9000);
        assert_eq!(config.concurrency, 7);
        assert_eq!(config.grace_period, Duration::from_secs(5));
        assert_eq!(config.max_queued, ServerConfig::default().max_queued);
    }

    #[test]
    fn bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("dsb.toml");
        std::fs::write(&file, "concurency = 3\n").unwrap();
        let error = ServerConfig::load(Some(&file), []).unwrap_err().to_string();
        assert!(error.contains("concurency"), "{error}");
        let error = ServerConfig::load(None, [("DSB_LISTEN".into(), "nowhere".into())])
            .unwrap_err()
            .to_string();
        assert!(error.contains("address"), "{error}");
    }
}
