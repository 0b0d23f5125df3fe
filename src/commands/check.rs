//! `cairn check`: validate a pipeline.

use super::load_pipeline;
use crate::cli::PipelineArg;
use crate::error::Error;
use crate::plan::Graph;

pub fn run(args: &PipelineArg) -> Result<(), Error> {
    let p = load_pipeline(&args.pipeline)?;
    let g = Graph::build(&p)?;
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
