//! `cairn check`: validate a pipeline.

use super::load_pipeline;
use crate::cli::PipelineArg;
use crate::error::Error;
use crate::plan::Graph;

pub fn run(args: &PipelineArg) -> Result<(), Error> {
    let p = load_pipeline(&args.pipeline)?;
    let g = Graph::build(&p)?;
    // Inputs named literally must exist for `cairn build`; the pipeline itself is valid
    // without them (it may describe another checkout), so they are warnings here.
    let root = super::project_root(&args.pipeline);
    let all: Vec<usize> = (0..g.nodes.len()).collect();
    let mut by_path: std::collections::BTreeMap<String, (Vec<String>, String)> = Default::default();
    for e in crate::exec::missing_literal_inputs(&p, &g, &all, &root) {
        if let crate::exec::ExecError::MissingInput { step, path, hint } = e {
            let entry = by_path.entry(path).or_insert_with(|| (Vec::new(), hint));
            entry.0.push(step);
        }
    }
    for (path, (steps, hint)) in &by_path {
        eprintln!(
            "warning: `{path}` does not exist in {} (read by {}), so `cairn build` would stop\n  hint: {hint}",
            root.display(),
            steps.iter().map(|s| format!("`{s}`")).collect::<Vec<_>>().join(", ")
        );
    }
    println!(
        "{}: ok ({} steps, {} services, {} triggers, {} environments)",
        args.pipeline.display(),
        g.nodes.len(),
        p.services.len(),
        p.triggers.len(),
        p.environments.len()
    );
    Ok(())
}
