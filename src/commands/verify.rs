//! `cairn verify --rebuild [STEP...]`: run stored steps again in a scratch copy of the worktree
//! and compare what they produce with their entries (see `exec::rebuild`).

use super::{load_pipeline, open_store, project_root};
use crate::cli::VerifyArgs;
use crate::error::Error;
use crate::exec::rebuild::{self, Verdict};
use crate::exec::{process, Prepared};
use crate::plan::{Graph, StepState};
use std::collections::BTreeMap;
use std::path::Path;

pub fn run(args: &VerifyArgs) -> Result<(), Error> {
    if !args.rebuild {
        return Err(Error::Usage(
            "error: `cairn verify` needs --rebuild (it re-runs stored steps and compares their outputs)\n  hint: `cairn cache verify` checks the store's blobs against their digests".into(),
        ));
    }
    let p = load_pipeline(&args.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    let root = project_root(&args.pipeline.pipeline);
    process::install_signal_handlers();
    let _lock = crate::exec::workspace::WorkspaceLock::acquire(&root, true, |who| {
        eprintln!("cairn: waiting for another build of this workspace to finish ({who})");
    })?;
    let (store, cache_dir) = open_store(&args.store, &root)?;
    let targets: Vec<String> =
        if args.steps.is_empty() { p.steps.names().map(String::from).collect() } else { args.steps.clone() };
    let selected = g.closure(&targets)?;
    let prepared = crate::exec::prepare(&p, &g, &selected, &root, &store, &cache_dir, 2)?;
    let states = super::plan::predict(&g, &selected, &prepared, &store);
    let wanted: Vec<usize> = selected
        .iter()
        .copied()
        .filter(|&i| {
            (args.steps.is_empty() || args.steps.iter().any(|t| g.nodes[i].name == *t || g.nodes[i].base == *t))
                && g.nodes[i].step.cache
        })
        .collect();
    let console = process::Console::new(false);
    let verdicts = check_and_say(&p, &g, &store, &root, &cache_dir, &prepared, &states, &wanted, &console, false);
    if process::interrupted() {
        return Err(Error::Interrupted);
    }
    let differ: Vec<&str> = verdicts
        .iter()
        .filter(|(_, v)| matches!(v, Verdict::Differs(_)))
        .map(|(i, _)| g.nodes[*i].name.as_str())
        .collect();
    if differ.is_empty() {
        return Ok(());
    }
    Err(Error::StepFailed(format!(
        "error: not reproducible: {}\n  hint: find what the step reads that changes (the date, randomness, the host), or mark it `reproducible: false`; `cairn cache quarantine {}` drops its entries and its dependents'",
        differ.join(", "),
        differ.join(" ")
    )))
}

/// Rebuild `nodes` and print a verdict for each.
#[allow(clippy::too_many_arguments)]
pub fn check_and_say(
    p: &crate::model::Pipeline,
    g: &Graph,
    store: &crate::cache::Store,
    root: &Path,
    cache_dir: &Path,
    prepared: &Prepared,
    states: &BTreeMap<usize, StepState>,
    nodes: &[usize],
    console: &process::Console,
    to_stderr: bool,
) -> Vec<(usize, Verdict)> {
    let verdicts = rebuild::check(p, g, store, root, cache_dir, prepared, states, nodes, console);
    for (i, v) in &verdicts {
        let name = &g.nodes[*i].name;
        let text = match v {
            Verdict::Reproducible => format!("{name}: reproducible (rebuilt byte for byte)"),
            Verdict::Differs(d) => format!("{name}: NOT reproducible:\n  {}", d.join("\n").replace('\n', "\n  ")),
            Verdict::Unchecked(why) => format!("{name}: not checked: {why}"),
        };
        if to_stderr {
            eprintln!("{}", prepared.masker.mask(&text));
        } else {
            println!("{}", prepared.masker.mask(&text));
        }
    }
    verdicts
}
