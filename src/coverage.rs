//! Coverage: how much of the data an answer saw. Every answer carries one.
//!
//! `rows_total` counts the rows the whole cluster holds for the queried tables
//! (answering leaves' fresh counts, plus the last reported counts of the
//! leaves that did not answer), `rows_covered` the rows of the leaves that
//! answered, and `coverage = rows_covered / rows_total` (1.0 when empty).

use serde::{Deserialize, Serialize};
use serde_json::json;

/// Why a leaf is missing from an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MissingReason {
    /// It did not answer before the deadline.
    Timeout,
    /// It could not be reached (connection refused or lost).
    Unreachable,
    /// It is handing its data to a successor or recovering.
    Restarting,
    /// It answered with an error.
    Error(String),
}

impl std::fmt::Display for MissingReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MissingReason::Timeout => f.write_str("timeout"),
            MissingReason::Unreachable => f.write_str("unreachable"),
            MissingReason::Restarting => f.write_str("restarting"),
            MissingReason::Error(m) => write!(f, "error: {m}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingLeaf {
    pub leaf: String,
    pub reason: MissingReason,
}

/// The coverage of one answer. See the module docs for the definitions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Coverage {
    pub leaves_total: usize,
    pub leaves_ok: usize,
    pub missing: Vec<MissingLeaf>,
    pub rows_total: u64,
    pub rows_covered: u64,
    pub coverage: f64,
    pub partial: bool,
}

impl Coverage {
    /// Coverage from each leaf's outcome: `answered` holds the fresh row
    /// counts of the leaves that answered, `missing` the leaves that did not
    /// with the rows they last reported.
    pub fn compute(answered: &[u64], missing: Vec<(MissingLeaf, u64)>) -> Coverage {
        let rows_covered: u64 = answered.iter().sum();
        let rows_missing: u64 = missing.iter().map(|(_, rows)| rows).sum();
        let rows_total = rows_covered + rows_missing;
        let coverage = if rows_total == 0 {
            if missing.is_empty() || !answered.is_empty() {
                1.0
            } else {
                0.0
            }
        } else {
            rows_covered as f64 / rows_total as f64
        };
        let missing: Vec<MissingLeaf> = missing.into_iter().map(|(m, _)| m).collect();
        Coverage {
            leaves_total: answered.len() + missing.len(),
            leaves_ok: answered.len(),
            partial: !missing.is_empty(),
            missing,
            rows_total,
            rows_covered,
            coverage,
        }
    }

    /// The JSON object every output format prints.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "leaves_total": self.leaves_total,
            "leaves_ok": self.leaves_ok,
            "missing": self.missing.iter().map(|m| json!({"leaf": m.leaf, "reason": m.reason.to_string()})).collect::<Vec<_>>(),
            "rows_total": self.rows_total,
            "rows_covered": self.rows_covered,
            "coverage": self.coverage,
            "partial": self.partial,
        })
    }

    /// One line for humans, as `table` and `csv` output print to stderr.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "coverage {:.4} ({} of {} rows), leaves {}/{} ok, partial={}",
            self.coverage,
            self.rows_covered,
            self.rows_total,
            self.leaves_ok,
            self.leaves_total,
            self.partial
        );
        for m in &self.missing {
            s.push_str(&format!("; missing {} ({})", m.leaf, m.reason));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_cluster_has_full_coverage() {
        let c = Coverage::compute(&[10, 20, 30], vec![]);
        assert_eq!(
            (c.rows_total, c.rows_covered, c.coverage, c.partial),
            (60, 60, 1.0, false)
        );
        assert_eq!((c.leaves_total, c.leaves_ok), (3, 3));
    }

    #[test]
    fn missing_leaf_rows_count_in_total_only() {
        let m = MissingLeaf {
            leaf: "leaf-2".into(),
            reason: MissingReason::Timeout,
        };
        let c = Coverage::compute(&[30, 30], vec![(m, 40)]);
        assert_eq!((c.rows_total, c.rows_covered, c.partial), (100, 60, true));
        assert!((c.coverage - 0.6).abs() < 1e-12);
        assert_eq!(c.to_json()["missing"][0]["reason"], "timeout");
    }

    #[test]
    fn empty_cluster_has_coverage_one() {
        assert_eq!(Coverage::compute(&[0, 0], vec![]).coverage, 1.0);
    }
}
