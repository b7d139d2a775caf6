//! The result table: one row a measurement, printed as markdown and
//! written as JSON.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// Whether a row meets its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Met {
    Yes,
    No,
    /// Not measured (a scenario failed or could not run), or no target
    /// to meet (the cluster rows of P3, a baseline for later work).
    Na,
}

impl Met {
    pub(crate) fn from(met: bool) -> Met {
        if met {
            Met::Yes
        } else {
            Met::No
        }
    }
}

/// One measured scenario, side by side with its baseline.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Row {
    /// `P1a`, `P3`, …
    pub(crate) id: String,
    pub(crate) scenario: String,
    pub(crate) smache: String,
    pub(crate) baseline: String,
    /// smache's figure over the baseline's (see `ratio_of`).
    pub(crate) ratio: Option<f64>,
    /// What the ratio divides.
    pub(crate) ratio_of: String,
    pub(crate) target: String,
    pub(crate) met: Met,
    /// Context worth a line under the table.
    pub(crate) notes: Vec<String>,
    /// The raw figures (percentiles, counts) behind the cells.
    pub(crate) data: serde_json::Value,
}

impl Row {
    /// A row for a scenario that could not be measured.
    pub(crate) fn na(id: &str, scenario: &str, target: &str, reason: &str) -> Row {
        Row {
            id: id.to_owned(),
            scenario: scenario.to_owned(),
            smache: format!("n/a ({reason})"),
            baseline: "—".to_owned(),
            ratio: None,
            ratio_of: String::new(),
            target: target.to_owned(),
            met: Met::Na,
            notes: Vec::new(),
            data: serde_json::Value::Null,
        }
    }
}

/// A whole run.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    pub(crate) mode: &'static str,
    /// Unix seconds at the start.
    pub(crate) started_at: u64,
    pub(crate) machine: serde_json::Value,
    pub(crate) rows: Vec<Row>,
    /// Wall time of each scenario group, in seconds.
    pub(crate) seconds: Vec<(String, f64)>,
    pub(crate) total_seconds: f64,
}

impl Report {
    /// The table, its notes, and the run's context, as markdown.
    pub(crate) fn markdown(&self) -> String {
        let mut out = String::new();
        out.push_str("| id | scenario | smache | baseline (same run) | ratio | target | met? |\n");
        out.push_str("|---|---|---|---|---|---|---|\n");
        for row in &self.rows {
            let ratio = row
                .ratio
                .map_or_else(|| "—".to_owned(), |r| format!("{r:.2}×"));
            let met = match row.met {
                Met::Yes => "yes",
                Met::No => "**no**",
                Met::Na => "n/a",
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                row.id, row.scenario, row.smache, row.baseline, ratio, row.target, met
            );
        }
        let notes: Vec<_> = self
            .rows
            .iter()
            .filter(|row| !row.ratio_of.is_empty() || !row.notes.is_empty())
            .collect();
        if !notes.is_empty() {
            out.push('\n');
            for row in notes {
                let mut parts = Vec::new();
                if !row.ratio_of.is_empty() {
                    parts.push(format!("ratio = {}", row.ratio_of));
                }
                parts.extend(row.notes.iter().cloned());
                let _ = writeln!(out, "* {} {}: {}", row.id, row.scenario, parts.join("; "));
            }
        }
        let _ = writeln!(
            out,
            "\nmode {}, {}; scenario wall times: {}; total {:.1} s",
            self.mode,
            self.machine_line(),
            self.seconds
                .iter()
                .map(|(name, secs)| format!("{name} {secs:.1} s"))
                .collect::<Vec<_>>()
                .join(", "),
            self.total_seconds
        );
        out
    }

    fn machine_line(&self) -> String {
        let get = |key: &str| {
            self.machine
                .get(key)
                .map(|v| v.to_string().trim_matches('"').to_owned())
                .unwrap_or_default()
        };
        format!(
            "{} CPUs, load {} → {}, redis {}",
            get("cpus"),
            get("load_before"),
            get("load_after"),
            get("redis_version")
        )
    }

    /// Writes the report as JSON to `path`, making its directory.
    pub(crate) fn write_json(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }
}
