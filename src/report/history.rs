//! History over stored run summaries: hit rate per run and per step, the steps that miss
//! most and cost most, time saved; and a step-by-step comparison of two runs.

use super::{ms, RunSummary};
use std::collections::BTreeMap;
use std::fmt::Write;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct StepStats {
    pub name: String,
    pub runs: usize,
    pub hits: usize,
    pub misses: usize,
    /// Time spent running the step (its misses), the cost of its misses.
    pub run_ms: u64,
    pub saved_ms: u64,
    /// Most frequent miss reason codes, with counts.
    pub reasons: BTreeMap<String, usize>,
}

/// Per-step aggregates over `runs`, sorted by the time their misses cost (most first).
pub fn step_stats(runs: &[RunSummary]) -> Vec<StepStats> {
    let mut by: BTreeMap<String, StepStats> = BTreeMap::new();
    for r in runs {
        for st in &r.steps {
            let e =
                by.entry(st.name.clone()).or_insert_with(|| StepStats { name: st.name.clone(), ..Default::default() });
            e.runs += 1;
            if st.status.is_hit() {
                e.hits += 1;
                e.saved_ms += st.saved_ms;
            } else if matches!(st.status, crate::events::Status::Ran | crate::events::Status::Failed) {
                e.misses += 1;
                e.run_ms += st.duration_ms;
                *e.reasons.entry(st.reason.clone()).or_default() += 1;
            }
        }
    }
    let mut v: Vec<StepStats> = by.into_values().collect();
    v.sort_by(|a, b| b.run_ms.cmp(&a.run_ms).then(b.misses.cmp(&a.misses)).then(a.name.cmp(&b.name)));
    v
}

/// The text of `cairn report --last N` (`runs` newest first).
pub fn history_text(runs: &[RunSummary]) -> String {
    let mut o = String::new();
    if runs.is_empty() {
        return "no runs recorded yet: run `cairn build` first\n".into();
    }
    let _ = writeln!(o, "last {} runs (newest first)", runs.len());
    let _ = writeln!(o, "  {:<26} {:<12} {:>6} {:>9} {:>9} {:>6}", "run", "result", "hits", "saved", "wall", "steps");
    for r in runs {
        let _ = writeln!(
            o,
            "  {:<26} {:<12} {:>5.0}% {:>9} {:>9} {:>6}",
            r.id,
            r.result,
            r.totals.hit_rate * 100.0,
            ms(r.totals.saved_ms),
            ms(r.totals.wall_ms),
            r.totals.steps
        );
    }
    let total_saved: u64 = runs.iter().map(|r| r.totals.saved_ms).sum();
    let hits: usize = runs.iter().map(|r| r.totals.hits).sum();
    let done: usize = runs.iter().map(|r| r.totals.hits + r.totals.ran).sum();
    let _ = writeln!(
        o,
        "overall: hit rate {:.0}%, time saved {}",
        if done == 0 { 0.0 } else { hits as f64 * 100.0 / done as f64 },
        ms(total_saved)
    );
    let _ = writeln!(o, "\nsteps by the time their misses cost");
    let _ = writeln!(
        o,
        "  {:<30} {:>5} {:>7} {:>6} {:>9} {:>9}  top reasons",
        "step", "runs", "misses", "hits", "cost", "saved"
    );
    for s in step_stats(runs) {
        let mut reasons: Vec<(&String, &usize)> = s.reasons.iter().collect();
        reasons.sort_by(|a, b| b.1.cmp(a.1));
        let top: Vec<String> = reasons.iter().take(3).map(|(r, n)| format!("{r}×{n}")).collect();
        let _ = writeln!(
            o,
            "  {:<30} {:>5} {:>7} {:>6} {:>9} {:>9}  {}",
            s.name,
            s.runs,
            s.misses,
            s.hits,
            ms(s.run_ms),
            ms(s.saved_ms),
            top.join(", ")
        );
    }
    o
}

/// `cairn report --diff A B`: step by step.
pub fn diff_text(a: &RunSummary, b: &RunSummary) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "A: {} ({}, {:.0}% hits, wall {})",
        a.id,
        a.result,
        a.totals.hit_rate * 100.0,
        ms(a.totals.wall_ms)
    );
    let _ = writeln!(
        o,
        "B: {} ({}, {:.0}% hits, wall {})",
        b.id,
        b.result,
        b.totals.hit_rate * 100.0,
        ms(b.totals.wall_ms)
    );
    let mut names: Vec<&str> = a.steps.iter().map(|s| s.name.as_str()).collect();
    for s in &b.steps {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    let _ = writeln!(o, "  {:<30} {:<12} {:<12} {:>9} {:>9}  change", "step", "A", "B", "A time", "B time");
    for n in names {
        let sa = a.steps.iter().find(|s| s.name == n);
        let sb = b.steps.iter().find(|s| s.name == n);
        let status =
            |s: Option<&super::StepSummary>| s.map(|s| s.status.as_str().to_string()).unwrap_or_else(|| "-".into());
        let time = |s: Option<&super::StepSummary>| s.map(|s| ms(s.duration_ms)).unwrap_or_else(|| "-".into());
        let change = match (sa, sb) {
            (Some(x), Some(y)) if x.key == y.key => "same key".to_string(),
            (Some(_), Some(y)) => format!("key changed; B: {}", y.reason),
            (None, Some(_)) => "only in B".into(),
            (Some(_), None) => "only in A".into(),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            o,
            "  {:<30} {:<12} {:<12} {:>9} {:>9}  {}",
            n,
            status(sa),
            status(sb),
            time(sa),
            time(sb),
            change
        );
    }
    o
}
