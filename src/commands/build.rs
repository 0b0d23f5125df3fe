//! `cairn build`: run steps, restoring unchanged ones from the store.

use super::{load_pipeline, open_store, project_root};
use crate::cli::BuildArgs;
use crate::error::Error;
use crate::exec::{self, process, Build};
use crate::plan::Graph;
use crate::report;
use std::io::IsTerminal;

pub fn run(args: &BuildArgs) -> Result<(), Error> {
    let p = load_pipeline(&args.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    let root = project_root(&args.pipeline.pipeline);
    let (store, cache_dir) = open_store(&args.store, &root)?;
    let targets: Vec<String> =
        if args.steps.is_empty() { p.steps.names().map(String::from).collect() } else { args.steps.clone() };
    let selected = g.closure(&targets)?;
    for f in &args.force {
        if !g.nodes.iter().any(|n| &n.name == f || &n.base == f) {
            return Err(Error::Usage(format!("error: --force names unknown step `{f}`")));
        }
    }
    for &i in &selected {
        if let Some(s) = g.nodes[i].step.services.first() {
            return Err(Error::Usage(format!(
                "error: step `{}` uses service `{s}`, and this cairn cannot start services yet\n  hint: build the steps that need no service, e.g. `cairn build STEP`",
                g.nodes[i].name
            )));
        }
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    process::install_signal_handlers();
    let started_at = crate::cache::now_ms();
    let prepared = exec::prepare(&p, &g, &selected, &root, &store, &cache_dir, jobs.max(2))
        .map_err(|e| Error::Usage(format!("error: {e}")))?;
    let console = process::Console::new(args.quiet);
    let build = Build {
        pipeline: &p,
        graph: &g,
        root: root.clone(),
        store: &store,
        selected,
        jobs,
        keep_going: args.keep_going,
        force: args.force.iter().cloned().collect(),
        console: &console,
        zstd_level: 3,
    };
    let outcome = build.run(&prepared);
    let id = format!("{started_at}-{}", std::process::id());
    let summary = report::summarize(&id, &args.pipeline.pipeline.display().to_string(), started_at, &outcome, &g);
    let json = serde_json::to_string(&summary).expect("summaries serialise");
    let json = prepared.masker.mask(&json);
    if let Err(e) = store.save_run(&id, started_at, &summary.pipeline, &json) {
        eprintln!("warning: could not record the run: {e}");
    }
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    eprint!("{}", prepared.masker.mask(&report::table(&summary, color)));
    if outcome.interrupted {
        return Err(Error::Interrupted);
    }
    let failed = outcome.failed();
    if !failed.is_empty() {
        let details: Vec<String> = outcome
            .steps
            .iter()
            .filter(|s| s.status == exec::Status::Failed)
            .map(|s| format!("`{}` ({})", s.name, s.detail.as_deref().unwrap_or("failed")))
            .collect();
        return Err(Error::StepFailed(format!(
            "error: step {} failed\n  hint: its log is above; fix it and run `cairn build` again (unchanged steps are restored)",
            details.join(", ")
        )));
    }
    Ok(())
}
