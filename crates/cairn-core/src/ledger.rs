//! The deploy ledger's vocabulary: every operation is a value ([`Op`]) with typed answers,
//! so the local store, `cairn serve` and its clients speak one language. Applying an op is
//! the store's job (`cache::index`, the one SQLite owner); carrying it is `deploy::ledger`'s.

use serde::{Deserialize, Serialize};

/// One ledger operation. Reads need a read token on a remote, everything else a write token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    /// Record an approval (its token when signed) and an audit line.
    Approve {
        env: String,
        release: String,
        approver: String,
        comment: String,
        expires_at: i64,
        token: String,
        audit: String,
    },
    /// Approvals of a release, newest first: `Vec<ApprovalRow>`.
    Approvals {
        env: String,
        release: String,
    },
    Audit {
        env: String,
        who: String,
        action: String,
        detail: String,
    },
    /// Join the environment's queue and take the lease when it is free and this run is first
    /// in line: [`LeaseAnswer`].
    LeaseTry {
        env: String,
        run_id: String,
        holder: String,
        host: String,
        pid: i64,
        ttl_ms: i64,
    },
    /// Extend a held lease; `false` when it is no longer this run's (broken by force).
    LeaseRenew {
        env: String,
        run_id: String,
        ttl_ms: i64,
    },
    LeaseRelease {
        env: String,
        run_id: String,
    },
    /// Leave the queue without taking the lease (interrupted while waiting).
    LeaseLeave {
        env: String,
        run_id: String,
    },
    /// [`LockInfo`].
    LockStatus {
        env: String,
    },
    /// Break the lease, with the reason in the audit log; answers the run it belonged to.
    LockBreak {
        env: String,
        who: String,
        reason: String,
    },
    /// A new run, queued; a break-glass reason is also written to the audit log.
    RunStart {
        id: String,
        env: String,
        release: String,
        who: String,
        plan: String,
        break_glass: String,
    },
    /// Set a run's result; `finished` also stamps its end.
    RunResult {
        id: String,
        result: String,
        halt_reason: String,
        finished: bool,
    },
    /// The newest unfinished run of an environment: `Option<(id, release)>`.
    Unfinished {
        env: String,
    },
    /// Every run of an environment, newest first: `Vec<RunRow>`.
    History {
        env: String,
    },
    Journal {
        run_id: String,
        phase: i64,
        what: String,
        state: String,
        detail: String,
    },
    /// Phases of a run whose last journal entry says done or skipped: `Vec<usize>`.
    DonePhases {
        run_id: String,
    },
    /// The release a region runs: `Option<String>`.
    RegionRelease {
        env: String,
        region: String,
    },
    RegionSet {
        env: String,
        region: String,
        release: String,
    },
    RegionClear {
        env: String,
        region: String,
    },
}

impl Op {
    /// Whether the op only reads (a read token suffices on a remote).
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            Op::Approvals { .. }
                | Op::LockStatus { .. }
                | Op::Unfinished { .. }
                | Op::History { .. }
                | Op::DonePhases { .. }
                | Op::RegionRelease { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRow {
    pub approver: String,
    pub expires_at: i64,
    pub comment: String,
    pub token: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseAnswer {
    pub acquired: bool,
    /// Who holds the lease (or "an earlier run" for a free lease with others ahead in line).
    pub holder: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub holder: String,
    pub run_id: String,
    pub host: String,
    pub pid: i64,
    pub acquired_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The last lease taken, live or not.
    pub lease: Option<Holder>,
    /// Whether that lease is still live by the ledger's clock.
    pub live: bool,
    /// Runs waiting, first in line first.
    pub waiting: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunRow {
    pub id: String,
    pub who: String,
    pub release: String,
    pub started_at: i64,
    pub result: String,
    pub halt_reason: String,
    pub break_glass: String,
    /// What happened, in order: `started`, `halted` (with its reason), `resumed`,
    /// `succeeded` ... (absent from older ledgers).
    #[serde(default)]
    pub events: Vec<RunEvent>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunEvent {
    pub at: i64,
    pub event: String,
    pub detail: String,
}
