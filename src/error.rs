//! The command layer's error type and cairn's exit codes.
//!
//! The top-level [`Error`] wraps each layer's error type (`#[from]`), and the exit code
//! follows from the type ([`Error::exit_code`]), never from the call site. [`EXIT_CODES`] is
//! the one table: `cairn --help` prints it, and a test checks README's copy against it.

use crate::model::Diagnostic;
use std::path::PathBuf;

/// Every exit code and what it means.
pub const EXIT_CODES: &[(u8, &str)] = &[
    (exit::OK, "success"),
    (exit::STEP_FAILED, "a step (or deploy phase) failed"),
    (
        exit::USAGE,
        "usage error: bad flags, unknown step, bad manual input, missing secret, wrong toolchain, missing literal input",
    ),
    (exit::INVALID_PIPELINE, "the pipeline file is invalid (syntax, schema or semantic check)"),
    (exit::IO, "an I/O or store problem (an unreadable input, a damaged store; `cache verify` found corrupt entries)"),
    (
        exit::GATE_CLOSED,
        "a gate is closed (branch policy, approval, window, deploy lock), or another build holds the workspace (`--no-wait`)",
    ),
    (exit::INTERRUPTED, "interrupted (Ctrl-C or SIGTERM: the run stops within a second; a second Ctrl-C exits at once)"),
];

/// [`EXIT_CODES`] as a Markdown table (README's copy).
pub fn exit_codes_markdown() -> String {
    let mut s = String::from("| code | meaning |\n|---|---|\n");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!("| {code} | {meaning} |\n"));
    }
    s
}

/// [`EXIT_CODES`] for `--help`.
pub fn exit_codes_help() -> String {
    let mut s = String::from("Exit codes:\n");
    for (code, meaning) in EXIT_CODES {
        s.push_str(&format!("  {code:>3}  {meaning}\n"));
    }
    s
}

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
    #[error("error: {0}")]
    Exec(#[from] crate::exec::ExecError),
    #[error("error: {0}")]
    Store(#[from] crate::cache::StoreError),
    #[error("error: {0}")]
    Lock(#[from] crate::exec::workspace::LockError),
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
            Error::Exec(e) => match e {
                crate::exec::ExecError::Inputs(_) | crate::exec::ExecError::Store(_) => exit::IO,
                _ if crate::interrupt::interrupted() => exit::INTERRUPTED,
                _ => exit::USAGE,
            },
            Error::Store(_) => exit::IO,
            Error::Lock(e) => match e {
                crate::exec::workspace::LockError::Busy { .. } => exit::GATE_CLOSED,
                crate::exec::workspace::LockError::Interrupted => exit::INTERRUPTED,
                crate::exec::workspace::LockError::Io { .. } => exit::IO,
            },
        }
    }
}

/// A deploy error keeps its meaning: a closed gate, a halted rollout, a usage error, a store
/// or ledger problem.
impl From<crate::deploy::DeployError> for Error {
    fn from(e: crate::deploy::DeployError) -> Self {
        use crate::deploy::DeployError as D;
        match e {
            D::Gate(m) => Error::GateClosed(m),
            D::Halted(m) => Error::StepFailed(m),
            D::Usage(m) => Error::Usage(m),
            D::Store(m) => Error::Io(format!("error: {m}")),
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
