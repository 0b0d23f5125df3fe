//! `cairn report`: history, run diffs, HTML, trace and badge from stored run summaries.

use super::open_store;
use crate::cli::ReportArgs;
use crate::error::Error;
use crate::report::{history, render, RunSummary};

fn load_runs(store: &crate::cache::Store, n: usize) -> Result<Vec<RunSummary>, Error> {
    let rows = store.runs(n).map_err(|e| Error::Io(format!("error: {e}")))?;
    Ok(rows.into_iter().filter_map(|(_, json)| serde_json::from_str(&json).ok()).collect())
}

/// A run by id, id prefix, or `last`, `last~1` ...
fn find_run<'a>(runs: &'a [RunSummary], spec: &str) -> Result<&'a RunSummary, Error> {
    if let Some(rest) = spec.strip_prefix("last") {
        let back: usize = rest.trim_start_matches('~').parse().unwrap_or(0);
        return runs
            .get(back)
            .ok_or_else(|| Error::Usage(format!("error: there is no run `{spec}` (only {} recorded)", runs.len())));
    }
    let hits: Vec<&RunSummary> = runs.iter().filter(|r| r.id.starts_with(spec)).collect();
    match hits.as_slice() {
        [one] => Ok(one),
        [] => Err(Error::Usage(format!("error: no recorded run `{spec}`\n  hint: `cairn report` lists recent runs"))),
        _ => Err(Error::Usage(format!("error: `{spec}` matches {} runs; give more of the id", hits.len()))),
    }
}

fn write(path: &std::path::Path, content: &str) -> Result<(), Error> {
    std::fs::write(path, content).map_err(|e| Error::Io(format!("error: cannot write {}: {e}", path.display())))
}

pub fn run(args: &ReportArgs) -> Result<(), Error> {
    let root = std::env::current_dir().map_err(|e| Error::Io(format!("error: {e}")))?;
    let (store, _) = open_store(&args.store, &root)?;
    let runs = load_runs(&store, args.last.max(50))?;
    if let Some(d) = &args.diff {
        let (a, b) = (find_run(&runs, &d[0])?, find_run(&runs, &d[1])?);
        print!("{}", history::diff_text(a, b));
        return Ok(());
    }
    let wants_file = args.html.is_some() || args.trace.is_some() || args.badge.is_some();
    if wants_file {
        let run = find_run(&runs, args.run.as_deref().unwrap_or("last"))?;
        if let Some(p) = &args.html {
            write(p, &render::html(run, &runs[..runs.len().min(args.last)]))?;
            eprintln!("wrote {}", p.display());
        }
        if let Some(p) = &args.trace {
            write(p, &render::trace(run))?;
            eprintln!("wrote {}", p.display());
        }
        if let Some(p) = &args.badge {
            write(p, &render::badge(run))?;
            eprintln!("wrote {}", p.display());
        }
        return Ok(());
    }
    let recent = &runs[..runs.len().min(args.last)];
    if args.json {
        let v = serde_json::json!({"runs": recent, "steps": history::step_stats(recent)});
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
    } else {
        print!("{}", history::history_text(recent));
    }
    Ok(())
}
