//! Command-line declarations (clap). No I/O here: `commands/` does the work.
//! Doc comments on flags are the long help.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// cairn: reproducible build-and-deploy pipelines with content-addressed caching.
///
/// Exit codes: 0 success, 1 a step failed, 2 usage error, 3 invalid pipeline,
/// 4 I/O or store problem, 5 a gate is closed, 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct PipelineArg {
    /// The pipeline file (RON).
    #[arg(short = 'p', long = "pipeline", default_value = "pipelines/cairn.ron", value_name = "FILE")]
    pub pipeline: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a pipeline: syntax, schema, names, cycles, globs, placeholders.
    Check(PipelineArg),
    /// Draw the step graph.
    Graph {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Show what a trigger would run: steps in order and each environment's deploy phases.
    Plan(PlanArgs),
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
    Text,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EventArg {
    Push,
    #[value(name = "pull_request", alias = "pull-request")]
    PullRequest,
    Manual,
}

impl From<EventArg> for crate::model::Event {
    fn from(e: EventArg) -> Self {
        match e {
            EventArg::Push => crate::model::Event::Push,
            EventArg::PullRequest => crate::model::Event::PullRequest,
            EventArg::Manual => crate::model::Event::Manual,
        }
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    /// The event to plan for.
    #[arg(long, value_enum)]
    pub event: EventArg,
    /// The branch pushed to, or for pull requests the target branch.
    #[arg(long)]
    pub branch: Option<String>,
    /// A manual run's input, NAME=VALUE (repeatable).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
}
