//! The command layer's error type and cairn's exit codes.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success |
//! | 1 | a step (or deploy phase) failed |
//! | 2 | usage error: bad flags or arguments, unknown step, bad manual input |
//! | 3 | the pipeline file is invalid (syntax, schema or semantic check) |
//! | 4 | an I/O or store problem (a file can't be read, the store is damaged) |
//! | 5 | a gate is closed (branch policy, approval, window, lock) |
//! | 130 | interrupted (Ctrl-C) |

use crate::model::Diagnostic;
use std::path::PathBuf;

pub mod exit {
    pub const OK: u8 = 0;
    pub const STEP_FAILED: u8 = 1;
    pub const USAGE: u8 = 2;
    pub const INVALID_PIPELINE: u8 = 3;
    pub const IO: u8 = 4;
    pub const GATE_CLOSED: u8 = 5;
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}", render_diagnostics(.0))]
    Pipeline(Vec<Diagnostic>),
    #[error("cannot read {}: {source}\n  hint: {hint}", path.display())]
    Read { path: PathBuf, source: std::io::Error, hint: String },
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    StepFailed(String),
    #[error("{0}")]
    GateClosed(String),
    #[error("interrupted")]
    Interrupted,
}

fn render_diagnostics(d: &[Diagnostic]) -> String {
    let mut s: Vec<String> = d.iter().map(|d| format!("error: {d}")).collect();
    if d.len() > 1 {
        s.push(format!("{} problems found", d.len()));
    }
    s.join("\n")
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Pipeline(_) => exit::INVALID_PIPELINE,
            Error::Read { .. } | Error::Io(_) => exit::IO,
            Error::Usage(_) => exit::USAGE,
            Error::StepFailed(_) => exit::STEP_FAILED,
            Error::GateClosed(_) => exit::GATE_CLOSED,
            Error::Interrupted => exit::INTERRUPTED,
        }
    }
}

impl From<crate::plan::TriggerError> for Error {
    fn from(e: crate::plan::TriggerError) -> Self {
        Error::Usage(format!("error: {e}"))
    }
}

impl From<crate::plan::GraphError> for Error {
    fn from(e: crate::plan::GraphError) -> Self {
        match e {
            crate::plan::GraphError::UnknownStep(s) => Error::Usage(format!(
                "error: unknown step `{s}`\n  hint: `cairn graph -p FILE --format text` lists the steps"
            )),
            other => Error::Usage(format!("error: {other}")),
        }
    }
}
