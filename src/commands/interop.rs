//! `cairn import github-actions` and `cairn export github-actions`: files in and out around
//! the text-to-text translations of `interop`.

use super::load_pipeline;
use crate::cli::{ExportCommand, ImportCommand};
use crate::error::Error;
use crate::interop::{github_export, github_import};
use crate::plan::Graph;
use std::path::PathBuf;

pub fn import(c: &ImportCommand) -> Result<(), Error> {
    let ImportCommand::GithubActions { workflow, output, name, force } = c;
    let file = workflow.display().to_string();
    let text = std::fs::read_to_string(workflow).map_err(|source| Error::Read {
        path: workflow.clone(),
        hint: "pass the workflow file, e.g. .github/workflows/ci.yml".into(),
        source,
    })?;
    let imported = github_import::import(&file, &text, &github_import::Options { name: name.clone() })
        .map_err(|e| Error::Usage(format!("error: {e}")))?;
    // What the pipeline says about itself: the diagnostics `cairn check` would give.
    let pipeline_name = crate::model::load("imported", imported.ron.as_bytes())
        .map(|p| p.name)
        .unwrap_or_else(|_| name.clone().unwrap_or_else(|| "imported".into()));
    let out = output.clone().unwrap_or_else(|| PathBuf::from(format!("pipelines/{pipeline_name}.ron")));
    for n in &imported.notes {
        eprintln!("note: {n}");
    }
    if out.as_os_str() == "-" {
        print!("{}", imported.ron);
    } else {
        if out.exists() && !force {
            return Err(Error::Usage(format!(
                "error: {} exists\n  hint: pass --force to replace it, or -o another file",
                out.display()
            )));
        }
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| Error::Io(format!("error: cannot create {}: {e}", dir.display())))?;
        }
        std::fs::write(&out, &imported.ron)
            .map_err(|e| Error::Io(format!("error: cannot write {}: {e}", out.display())))?;
        eprintln!("wrote {} from {file}", out.display());
    }
    let shown = if out.as_os_str() == "-" { "the pipeline".to_string() } else { out.display().to_string() };
    match crate::model::load(&shown, imported.ron.as_bytes()) {
        Ok(p) => {
            Graph::build(&p)?;
            eprintln!("`cairn check` accepts it; next: `cairn build -p {shown}`, then `cairn learn STEP --apply`");
        }
        Err(d) => {
            for d in &d {
                eprintln!("to do: {d}");
            }
            eprintln!("`cairn check -p {shown}` reports the {} place(s) above until a person fills them in", d.len());
        }
    }
    Ok(())
}

pub fn export(c: &ExportCommand) -> Result<(), Error> {
    let ExportCommand::GithubActions { pipeline, output, setup_action, cairn_version, runs_on } = c;
    let p = load_pipeline(&pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    // Jobs run at the repository root: the pipeline's path from there.
    let root = super::project_root(&pipeline.pipeline);
    let abs = std::path::absolute(&pipeline.pipeline).unwrap_or_else(|_| pipeline.pipeline.clone());
    let rel = abs
        .canonicalize()
        .unwrap_or(abs)
        .strip_prefix(&root)
        .map(|r| r.display().to_string())
        .unwrap_or_else(|_| pipeline.pipeline.display().to_string());
    let opts = github_export::Options {
        pipeline: rel,
        setup_action: setup_action.clone(),
        version: cairn_version.clone().unwrap_or_else(|| env!("CARGO_PKG_VERSION").to_string()),
        runs_on: runs_on.clone(),
    };
    let yaml = github_export::export(&p, &g, &opts);
    match output {
        None => print!("{yaml}"),
        Some(out) => {
            if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)
                    .map_err(|e| Error::Io(format!("error: cannot create {}: {e}", dir.display())))?;
            }
            std::fs::write(out, yaml).map_err(|e| Error::Io(format!("error: cannot write {}: {e}", out.display())))?;
            eprintln!("wrote {}", out.display());
        }
    }
    Ok(())
}
