//! Reports in three stages: executor events (here, the [`StepReport`]s of a build) → a
//! versioned [`RunSummary`] → renderers (terminal table, JSON). Renderers only read the
//! summary, never executor state.

use crate::events::{BuildOutcome, Status, StepReport};
use crate::plan::Graph;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

pub mod history;
pub mod render;
pub use crate::clock::rfc3339_local;
pub use cairn_core::time::rfc3339;

/// Bump when the summary's JSON shape changes incompatibly.
pub const SUMMARY_SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StepSummary {
    pub name: String,
    pub key: Option<String>,
    pub status: Status,
    /// The first reason's code (`no-entry`, `input-changed` ...), or `hit` for hits.
    pub reason: String,
    /// Every reason, described.
    pub reasons: Vec<serde_json::Value>,
    pub detail: Option<String>,
    pub duration_ms: u64,
    pub saved_ms: u64,
    pub bytes_restored: u64,
    pub bytes_stored: u64,
    pub start_ms: u64,
    pub end_ms: u64,
    pub worker: usize,
    pub warnings: Vec<String>,
    /// The sandbox the step's command ran in (`landlock`, `off`, `unavailable`); absent when it
    /// did not run. Added within schema 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// What it read or wrote undeclared, when it was traced (`report` or `strict`): each
    /// finding with its path and the declaration that fixes it. Added within schema 1.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub undeclared: Vec<crate::plan::undeclared::Finding>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Totals {
    pub steps: usize,
    pub hits: usize,
    pub ran: usize,
    pub failed: usize,
    pub skipped: usize,
    pub cancelled: usize,
    pub hit_rate: f64,
    pub saved_ms: u64,
    pub wall_ms: u64,
    pub bytes_restored: u64,
    pub bytes_stored: u64,
    pub files_hashed: u64,
    pub files_from_stat_cache: u64,
    /// How the inputs were read: `journal` (the last walk replayed: stats only) or `walk`.
    /// Added within schema 1; older summaries read as "".
    #[serde(default)]
    pub inputs_scan: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunSummary {
    pub schema_version: u32,
    pub id: String,
    pub pipeline: String,
    pub started_at_ms: i64,
    pub result: String,
    pub steps: Vec<StepSummary>,
    pub totals: Totals,
    /// Step names on the longest chain of `needs` by duration.
    pub critical_path: Vec<String>,
}

/// How a hit was served, in words (the table, HTML and Markdown reports).
pub fn hit_why(st: &StepSummary) -> &'static str {
    match (st.status, st.bytes_restored) {
        (Status::HitRemote, _) => "restored from the remote cache",
        (_, 0) => "hit: outputs in place, nothing restored",
        _ => "restored from the store",
    }
}

fn step_summary(r: &StepReport) -> StepSummary {
    let reason = if r.status.is_hit() {
        "hit".to_string()
    } else {
        r.reasons.first().map(|d| d.code().to_string()).unwrap_or_else(|| match r.status {
            Status::Skipped => "upstream-failed".into(),
            Status::Cancelled => "cancelled".into(),
            _ => "ran".into(),
        })
    };
    StepSummary {
        name: r.name.clone(),
        key: r.key.clone(),
        status: r.status,
        reason,
        reasons: r
            .reasons
            .iter()
            .map(|d| {
                let mut v = serde_json::to_value(d).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("code".into(), d.code().into());
                    o.insert("detail".into(), d.describe().into());
                }
                v
            })
            .collect(),
        detail: r.detail.clone(),
        duration_ms: r.duration_ms,
        saved_ms: r.saved_ms,
        bytes_restored: r.bytes_restored,
        bytes_stored: r.bytes_stored,
        start_ms: r.start_ms,
        end_ms: r.end_ms,
        worker: r.worker,
        warnings: r.warnings.clone(),
        sandbox: r.sandbox.clone(),
        undeclared: r.undeclared.clone(),
    }
}

/// The longest chain through `needs`, weighted by each step's duration.
fn critical_path(outcome: &BuildOutcome, g: &Graph) -> Vec<String> {
    let by_name: std::collections::HashMap<&str, &StepReport> =
        outcome.steps.iter().map(|s| (s.name.as_str(), s)).collect();
    let mut best: std::collections::HashMap<usize, (u64, Option<usize>)> = Default::default();
    for (i, n) in g.nodes.iter().enumerate() {
        let Some(r) = by_name.get(n.name.as_str()) else { continue };
        let (prev_cost, prev) = n
            .needs
            .iter()
            .filter_map(|d| best.get(d).map(|(c, _)| (*c, Some(*d))))
            .max_by_key(|(c, _)| *c)
            .unwrap_or((0, None));
        best.insert(i, (prev_cost + r.duration_ms, prev));
    }
    let mut end = best.iter().max_by_key(|(i, (c, _))| (*c, std::cmp::Reverse(**i))).map(|(i, _)| *i);
    let mut path = Vec::new();
    while let Some(i) = end {
        path.push(g.nodes[i].name.clone());
        end = best[&i].1;
    }
    path.reverse();
    path
}

pub fn summarize(id: &str, pipeline: &str, started_at_ms: i64, outcome: &BuildOutcome, g: &Graph) -> RunSummary {
    let steps: Vec<StepSummary> = outcome.steps.iter().map(step_summary).collect();
    let count = |f: &dyn Fn(Status) -> bool| steps.iter().filter(|s| f(s.status)).count();
    let hits = count(&|s| s.is_hit());
    let ran = count(&|s| s == Status::Ran);
    let cacheable_done = hits + ran;
    let totals = Totals {
        steps: steps.len(),
        hits,
        ran,
        failed: count(&|s| s == Status::Failed),
        skipped: count(&|s| s == Status::Skipped),
        cancelled: count(&|s| s == Status::Cancelled),
        hit_rate: if cacheable_done == 0 { 0.0 } else { hits as f64 / cacheable_done as f64 },
        saved_ms: steps.iter().map(|s| s.saved_ms).sum(),
        wall_ms: outcome.wall_ms,
        bytes_restored: steps.iter().map(|s| s.bytes_restored).sum(),
        bytes_stored: steps.iter().map(|s| s.bytes_stored).sum(),
        files_hashed: outcome.scan.hashed,
        files_from_stat_cache: outcome.scan.reused,
        inputs_scan: if outcome.scan.replayed { "journal" } else { "walk" }.into(),
    };
    let result = if outcome.interrupted {
        "interrupted"
    } else if totals.failed > 0 {
        "failed"
    } else {
        "passed"
    };
    RunSummary {
        schema_version: SUMMARY_SCHEMA_VERSION,
        id: id.to_string(),
        pipeline: pipeline.to_string(),
        started_at_ms,
        result: result.to_string(),
        critical_path: critical_path(outcome, g),
        steps,
        totals,
    }
}

pub fn ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

pub fn bytes(b: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < U.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[u])
    }
}

/// The aligned table printed at the end of a run.
pub fn table(s: &RunSummary, color: bool) -> String {
    let paint = |status: Status, text: &str| -> String {
        if !color {
            return text.to_string();
        }
        let code = match status {
            Status::HitLocal | Status::HitRemote => "32",
            Status::Ran => "33",
            Status::Failed => "31",
            Status::Skipped | Status::Cancelled => "90",
        };
        format!("\x1b[{code}m{text}\x1b[0m")
    };
    let name_w = s.steps.iter().map(|x| x.name.chars().count()).max().unwrap_or(4).max(4);
    let mut o = String::new();
    let _ = writeln!(o, "{:<name_w$}  {:<10}  {:>8}  {:>8}  why", "step", "status", "time", "saved");
    for st in &s.steps {
        let why = if st.status.is_hit() {
            hit_why(st).to_string()
        } else if let Some(first) = st.reasons.first() {
            let mut d = first["detail"].as_str().unwrap_or("").to_string();
            if st.reasons.len() > 1 {
                let _ = write!(d, " (+{} more)", st.reasons.len() - 1);
            }
            if let Some(det) = &st.detail {
                let _ = write!(d, "; {det}");
            }
            d
        } else {
            st.detail.clone().unwrap_or_default()
        };
        let status = format!("{:<10}", st.status.as_str());
        let _ = writeln!(
            o,
            "{:<name_w$}  {}  {:>8}  {:>8}  {}",
            st.name,
            paint(st.status, &status),
            ms(st.duration_ms),
            if st.saved_ms > 0 { ms(st.saved_ms) } else { "-".into() },
            why
        );
    }
    let t = &s.totals;
    let _ = writeln!(
        o,
        "{} steps: {} hit, {} ran, {} failed, {} skipped, {} cancelled · hit rate {:.0}% · saved {} · wall {}",
        t.steps,
        t.hits,
        t.ran,
        t.failed,
        t.skipped,
        t.cancelled,
        t.hit_rate * 100.0,
        ms(t.saved_ms),
        ms(t.wall_ms)
    );
    // Which sandbox the commands that ran were in, grouped: `sandbox: landlock (ABI 7): a, b`.
    let mut by: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for st in &s.steps {
        if let Some(sb) = &st.sandbox {
            by.entry(sb.as_str()).or_default().push(st.name.as_str());
        }
    }
    if !by.is_empty() {
        let parts: Vec<String> = by.iter().map(|(sb, names)| format!("{sb}: {}", names.join(", "))).collect();
        let _ = writeln!(o, "sandbox: {}", parts.join(" · "));
    }
    o
}
