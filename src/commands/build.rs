//! `cairn build`: run steps, restoring unchanged ones from the store.

use super::{load_pipeline, open_store, project_root};
use crate::cli::{BuildArgs, SummaryFormat};
use crate::error::Error;
use crate::exec::{self, process, Build};
use crate::plan::Graph;
use crate::report;
use std::io::IsTerminal;

pub fn run(args: &BuildArgs) -> Result<(), Error> {
    let t_all = std::time::Instant::now();
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
    exec::timing("load and prepare", t_all);
    let t = std::time::Instant::now();
    let outcome = build.run(&prepared);
    exec::timing("dispatch", t);
    exec::print_phases();
    let t = std::time::Instant::now();
    let id = format!("{started_at}-{}", std::process::id());
    let summary = report::summarize(&id, &args.pipeline.pipeline.display().to_string(), started_at, &outcome, &g);
    // Mask once; everything below (store, stdout, files, renderers) sees only the masked summary.
    let mut value = serde_json::to_value(&summary).expect("summaries serialise");
    prepared.masker.mask_json(&mut value);
    let json = value.to_string();
    let summary: report::RunSummary = serde_json::from_value(value).expect("masking strings keeps the shape");
    if let Err(e) = store.save_run(&id, started_at, &summary.pipeline, &json) {
        eprintln!("warning: could not record the run: {e}");
    }
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match args.summary {
        SummaryFormat::Table => eprint!("{}", report::table(&summary, color)),
        SummaryFormat::Json => println!("{}", serde_json::to_string_pretty(&summary).expect("json")),
        SummaryFormat::None => {}
    }
    if let Some(path) = &args.summary_file {
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&summary).expect("json")) {
            eprintln!("warning: cannot write {}: {e}", path.display());
        }
    }
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(report::render::markdown(&summary).as_bytes()));
        if let Err(e) = written {
            eprintln!("warning: cannot append to GITHUB_STEP_SUMMARY: {e}");
        }
    }
    exec::timing("summary", t);
    exec::timing("total", t_all);
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
