//! What executors emit and reports read: how each step ended and why. Both sides depend on
//! these types, neither on the other.

use crate::plan::key::{DirtyReason, Upstream};
use serde::Serialize;

/// How a step ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    HitLocal,
    HitRemote,
    Ran,
    Failed,
    Skipped,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::HitLocal => "hit-local",
            Status::HitRemote => "hit-remote",
            Status::Ran => "ran",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
            Status::Cancelled => "cancelled",
        }
    }
    pub fn is_hit(self) -> bool {
        matches!(self, Status::HitLocal | Status::HitRemote)
    }
}

/// One step's result, as the report layer sees it.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    pub name: String,
    pub key: Option<String>,
    pub status: Status,
    pub reasons: Vec<DirtyReason>,
    /// Failure or skip detail.
    pub detail: Option<String>,
    pub duration_ms: u64,
    pub saved_ms: u64,
    pub bytes_restored: u64,
    pub bytes_stored: u64,
    /// Milliseconds after the run started.
    pub start_ms: u64,
    pub end_ms: u64,
    pub worker: usize,
    pub warnings: Vec<String>,
    #[serde(skip)]
    pub contribution: Option<Upstream>,
    /// The sandbox the step's command ran in (`landlock`, `off`, `unavailable`); `None` when
    /// it did not run.
    pub sandbox: Option<String>,
    /// What it touched undeclared, when it was traced (report or strict mode).
    pub undeclared: Vec<crate::plan::undeclared::Finding>,
    /// The step could not run because one of its secrets is missing (the whole message).
    #[serde(skip)]
    pub missing_secret: Option<String>,
}

/// What one walk over the inputs did.
#[derive(Debug, Default, Clone, Copy)]
pub struct ScanStats {
    pub files: u64,
    pub hashed: u64,
    pub reused: u64,
    pub bytes_hashed: u64,
    /// The scan journal was replayed (no walk).
    pub replayed: bool,
}

/// The result of a build.
#[derive(Debug)]
pub struct BuildOutcome {
    pub steps: Vec<StepReport>,
    pub wall_ms: u64,
    pub interrupted: bool,
    pub scan: ScanStats,
}

impl BuildOutcome {
    pub fn failed(&self) -> Vec<&str> {
        self.steps.iter().filter(|s| s.status == Status::Failed).map(|s| s.name.as_str()).collect()
    }
}
