//! # cairn
//!
//! Declarative, reproducible build-and-deploy pipelines with content-addressed caching.
//!
//! ## Layers, and who may call whom
//! ```text
//! main.rs  → lib::run           thin: parse arguments, map the result to an exit code
//! cli      clap declarations     no I/O
//! commands one file per command  load → plan → execute → report; the only caller of effects
//! model    PURE                  the RON schema, parsing, validation with located diagnostics
//! plan     PURE                  step graph, trigger plans, deploy phases, drawings
//! ```
//! `model` and `plan` never import `std::fs`, `std::process`, the network or the store: what
//! they need from the world is passed in as values.

pub mod cli;
pub mod commands;
pub mod error;
pub mod model;
pub mod plan;

use clap::Parser;
pub use error::{exit, Error};

/// Run cairn with the process's arguments; returns the exit code.
pub fn run() -> u8 {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { exit::USAGE } else { exit::OK };
        }
    };
    match dispatch(cli) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

fn dispatch(cli: cli::Cli) -> Result<(), Error> {
    use cli::Command;
    match cli.command {
        Command::Check(p) => commands::check::run(&p),
        Command::Graph { pipeline, format } => commands::graph::run(&pipeline, format),
        Command::Plan(args) => commands::plan::run(&args),
    }
}
