//! `cairn graph`: draw the step graph.

use super::load_pipeline;
use crate::cli::{GraphFormat, PipelineArg};
use crate::error::Error;
use crate::plan::{render, Graph};

pub fn run(args: &PipelineArg, format: GraphFormat) -> Result<(), Error> {
    let p = load_pipeline(&args.pipeline)?;
    let g = Graph::build(&p)?;
    let out = match format {
        GraphFormat::Mermaid => render::mermaid(&p, &g),
        GraphFormat::Dot => render::dot(&p, &g),
        GraphFormat::Text => render::text(&p, &g),
    };
    print!("{out}");
    Ok(())
}
