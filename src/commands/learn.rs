//! `cairn learn STEP...`: run steps traced (report mode) and say which declarations they
//! lack, as a RON fragment in the pipeline's own shape, or (`--apply`) added to the file.
//!
//! The named steps run (forced) under `--sandbox report`; what they need runs as in any
//! build (usually hits). Every undeclared read, write, host read (`--strict`) and connection
//! becomes an addition (see `plan::undeclared::Learned`); `--apply` edits the pipeline text
//! in place (comments and layout kept, see `model::edit`) and checks the result parses and
//! validates before writing it.

use super::load_pipeline;
use crate::cli::{BuildArgs, LearnArgs, SummaryFormat};
use crate::error::Error;
use crate::plan::undeclared::Learned;
use crate::plan::Graph;

pub fn run(a: &LearnArgs) -> Result<(), Error> {
    let p = load_pipeline(&a.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    g.closure(&a.steps)?; // unknown names are a usage error before anything runs
    let summary_file = std::env::temp_dir().join(format!("cairn-learn-{}.json", std::process::id()));
    let build = BuildArgs {
        pipeline: a.pipeline.clone(),
        store: a.store.clone(),
        steps: a.steps.clone(),
        jobs: None,
        keep_going: true,
        force: a.steps.clone(),
        quiet: a.quiet,
        summary: SummaryFormat::None,
        summary_file: Some(summary_file.clone()),
        remote: Default::default(),
        no_wait: false,
        rebuild_sample: None,
        share_unreproducible: false,
        sandbox: Some(if a.strict { crate::cli::SandboxArg::Strict } else { crate::cli::SandboxArg::Report }),
        require_sandbox: true,
    };
    let built = super::build::run(&build);
    if let Err(Error::Interrupted | Error::Usage(_) | Error::Pipeline(_)) = &built {
        let _ = std::fs::remove_file(&summary_file);
        return built;
    }
    let text = std::fs::read(&summary_file);
    let _ = std::fs::remove_file(&summary_file);
    let summary: crate::report::RunSummary = match text.ok().and_then(|t| serde_json::from_slice(&t).ok()) {
        Some(s) => s,
        None => return built.and(Err(Error::Io("error: the build wrote no summary to learn from".into()))),
    };
    // A matrix expansion's findings go to the step as written in the pipeline.
    let base = |name: &str| g.nodes.iter().find(|n| n.name == name).map_or(name.to_string(), |n| n.base.clone());
    let mut learned = Learned::default();
    let mut traced = Vec::new();
    for s in &summary.steps {
        if s.sandbox.as_deref().is_some_and(|sb| sb.starts_with("report") || sb.starts_with("strict")) {
            traced.push(s.name.clone());
        }
        learned.add(&base(&s.name), &s.undeclared);
    }
    if traced.is_empty() {
        built?;
        return Err(Error::StepFailed("error: no step ran traced, so there is nothing to learn\n  hint: name steps that run commands (`cache: false` steps and failures before the command teach nothing)".into()));
    }
    for m in &learned.unfixable {
        eprintln!("note: {m}");
    }
    let file = a.pipeline.pipeline.display().to_string();
    if learned.is_empty() {
        println!("nothing undeclared: {} read and wrote only what they declare", traced.join(", "));
        return built;
    }
    if !a.apply {
        println!("// cairn learn: add these to {file} (or rerun with --apply)");
        print!("{}", learned.to_ron());
        return Ok(());
    }
    let original = std::fs::read_to_string(&a.pipeline.pipeline)
        .map_err(|e| Error::Io(format!("error: cannot read {file}: {e}")))?;
    let mut edited = original.clone();
    let edit = |text: &str, section: &str, name: &str, field: &str, values: Vec<String>, list: bool| {
        crate::model::edit::add_to_entry(text, section, name, field, &values, list).map_err(|e| {
            Error::Io(format!("error: cannot apply to {file}: {e}\n  hint: add these by hand:\n{}", learned.to_ron()))
        })
    };
    for (set, globs) in &learned.input_sets {
        edited = edit(&edited, "input_sets", set, "include", globs.iter().cloned().collect(), true)?;
    }
    for (step, fields) in &learned.steps {
        for (field, values) in fields {
            edited = edit(&edited, "steps", step, field, values.iter().cloned().collect(), true)?;
        }
    }
    for step in &learned.network {
        edited = edit(&edited, "steps", step, "network", vec!["true".into()], false)?;
    }
    let checked = crate::model::load(&file, edited.as_bytes()).and_then(|p| {
        Graph::build(&p).map(|_| ()).map_err(|e| {
            vec![crate::model::Diagnostic { file: file.clone(), line: 0, col: 0, message: e.to_string(), hint: None }]
        })
    });
    if let Err(d) = checked {
        return Err(Error::Io(format!(
            "error: the edited pipeline would not load, so {file} is unchanged:\n{}\n  hint: add these by hand:\n{}",
            d.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n"),
            learned.to_ron()
        )));
    }
    let tmp = a.pipeline.pipeline.with_extension("ron.cairn-learn");
    std::fs::write(&tmp, &edited).and_then(|()| std::fs::rename(&tmp, &a.pipeline.pipeline)).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::Io(format!("error: cannot write {file}: {e}\n  hint: add these by hand:\n{}", learned.to_ron()))
    })?;
    println!("applied to {file}:");
    print!("{}", learned.to_ron());
    Ok(())
}
