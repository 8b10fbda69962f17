//! The cluster file: which leaves exist, where, and where their
//! certificates are. `scubactl cluster up` writes one; a real deployment
//! writes its own.
//!
//! ```toml
//! tls_dir = "tls"                 # ca.pem, <node>.pem, <node>.key; relative to this file
//! [aggregator]
//! addr = "127.0.0.1:7100"
//! timeout_ms = 5000               # default query deadline
//! min_coverage = 0.0              # default minimum coverage
//! [[leaves]]
//! id = "leaf-0"
//! addr = "127.0.0.1:7101"
//! data_dir = "leaves/leaf-0"      # disk log; relative to this file
//! memory_limit_bytes = 4294967296 # optional
//! ```

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use scuba::limits::{LEAVES_MAX, QUERY_TIMEOUT_MS_DEFAULT};
use serde::{Deserialize, Serialize};

use crate::error::{AggError, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AggregatorConfig {
    pub addr: SocketAddr,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    #[serde(default)]
    pub min_coverage: f64,
}

fn default_timeout_ms() -> u64 {
    QUERY_TIMEOUT_MS_DEFAULT
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeafConfig {
    pub id: String,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
    /// Shared-memory folder for sealed blocks and the hand-off segment;
    /// under /dev/shm by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_dir: Option<PathBuf>,
    /// Size at which the leaf's disk log starts a new segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_segment_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterConfig {
    pub tls_dir: PathBuf,
    /// Maximum age of rows by table (`"*"` for all), e.g. `events = "30d"`.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub retention: std::collections::BTreeMap<String, String>,
    pub aggregator: AggregatorConfig,
    pub leaves: Vec<LeafConfig>,
    /// The folder relative paths are taken from (the cluster file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl ClusterConfig {
    pub fn load(path: &Path) -> Result<ClusterConfig> {
        let err = |message: String| AggError::Config {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let mut config: ClusterConfig = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        config.base_dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        config.validate().map_err(err)?;
        Ok(config)
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        let text = toml::to_string_pretty(self).map_err(|e| AggError::Internal(e.to_string()))?;
        std::fs::write(path, text)?;
        Ok(())
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.leaves.is_empty() {
            return Err("no leaves".into());
        }
        if self.leaves.len() > LEAVES_MAX {
            return Err(format!(
                "{} leaves; at most {LEAVES_MAX}",
                self.leaves.len()
            ));
        }
        let mut ids = HashSet::new();
        for leaf in &self.leaves {
            scuba::schema::check_name(&leaf.id).map_err(|e| format!("leaf id: {e}"))?;
            if !ids.insert(&leaf.id) {
                return Err(format!("leaf id `{}` appears twice", leaf.id));
            }
        }
        self.retention_s()?;
        if !(0.0..=1.0).contains(&self.aggregator.min_coverage) {
            return Err("aggregator.min_coverage must be between 0 and 1".into());
        }
        Ok(())
    }

    /// Retention in seconds by table.
    pub fn retention_s(
        &self,
    ) -> std::result::Result<std::collections::HashMap<String, u64>, String> {
        self.retention
            .iter()
            .map(|(t, d)| {
                parse_duration_s(d)
                    .map(|s| (t.clone(), s))
                    .map_err(|e| format!("retention for `{t}`: {e}"))
            })
            .collect()
    }

    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub fn tls_dir(&self) -> PathBuf {
        self.resolve(&self.tls_dir)
    }

    pub fn leaf(&self, id: &str) -> Option<&LeafConfig> {
        self.leaves.iter().find(|l| l.id == id)
    }

    /// The shared-memory folder of a leaf.
    pub fn shm_dir(&self, leaf: &LeafConfig) -> PathBuf {
        match &leaf.shm_dir {
            Some(d) => self.resolve(d),
            None => scuba_leaf::leaf::default_shm_dir(&leaf.id, &self.resolve(&leaf.data_dir)),
        }
    }
}

/// Parses `30d`, `12h`, `90m`, `45s` or a plain number of seconds.
pub fn parse_duration_s(text: &str) -> std::result::Result<u64, String> {
    let text = text.trim();
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a duration like 30d, 12h, 90m or 45s"))?;
    let unit_s = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => {
            return Err(format!(
                "`{text}`: unknown unit `{unit}` (use s, m, h or d)"
            ))
        }
    };
    n.checked_mul(unit_s)
        .ok_or_else(|| format!("`{text}` is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units_and_refuse_nonsense() {
        assert_eq!(parse_duration_s("30d"), Ok(30 * 86_400));
        assert_eq!(parse_duration_s("90m"), Ok(5_400));
        assert_eq!(parse_duration_s("45"), Ok(45));
        assert!(parse_duration_s("soon").is_err());
        assert!(parse_duration_s("3w").unwrap_err().contains("unknown unit"));
    }
}
