//! Gated, region-sequenced deploys: one durable, journaled, resumable run per environment.
//!
//! # How a deploy goes
//! 1. **Release**: the environment's required steps must have stored results for their exact
//!    current keys (checked against the store, not assumed). The release is named by a blake3
//!    hash over those keys, the rendered deploy configuration and the *names* of its secrets.
//! 2. **Gates**: branch policy; an approval bound to (environment, release), unexpired, not by
//!    the deployer when self-approval is off; deploy windows (time zone aware) and freezes, which
//!    `--break-glass REASON` overrides, recorded in the run and the audit log.
//! 3. **Lease**: one deploy per environment. A lease with a time-to-live, renewed by a heartbeat
//!    thread; a crashed holder's lease simply expires. Waiting runs queue in arrival order.
//! 4. **Phases**, from the pure plan (`plan::trigger::plan_environment`): per region the deploy
//!    command, a health check with retries, a bake time; the migration once, in its phase;
//!    blue-green's switch. Every transition is written to the journal before and after it
//!    happens. A region whose deploy or health check fails is rolled back (and, by policy, the
//!    regions already done); a migration that fails after all regions halts and alerts but
//!    does not roll the apps back. A halt is a [`HaltReason`].
//! 5. **Resume**: `cairn deploy resume ENV` continues the newest unfinished run of that release at
//!    its first unfinished phase; deploying a release again skips regions already running it.
//!
//! Approvals, leases, runs, the journal and region state live in the [`ledger`]: the local
//! store, or `cairn serve` when a remote is configured, so CI runners share them.
//!
//! Secrets (e.g. `FLY_API_TOKEN`) reach the commands as environment variables and are masked in
//! everything printed or recorded.

pub mod ledger;

use crate::exec::process::{self, Console, Exit};
use crate::exec::secrets::Masker;
use crate::model::{Environment, Pipeline};
use crate::plan::trigger::{env_vars, render_env, EnvPlan, Phase};
use ledger::{ApprovalRow, LeaseAnswer, Ledger, LedgerError, Op};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod gates;
mod lease;
mod runner;

pub use gates::*;
pub use lease::*;
pub use runner::*;

/// Why a rollout stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    DeployFailed {
        region: String,
        detail: String,
    },
    Unhealthy {
        region: String,
        detail: String,
    },
    MigrationFailed {
        detail: String,
    },
    SwitchFailed {
        detail: String,
    },
    /// A traffic share failed its check; traffic went back to the old release.
    CanaryFailed {
        share: u8,
        detail: String,
    },
    /// The ledger could not record a phase's start, so the phase did not start.
    Ledger {
        detail: String,
    },
    Interrupted,
}

impl std::fmt::Display for HaltReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaltReason::DeployFailed { region, detail } => write!(f, "deploy to {region} failed: {detail}"),
            HaltReason::Unhealthy { region, detail } => write!(f, "{region} is unhealthy: {detail}"),
            HaltReason::MigrationFailed { detail } => write!(f, "the migration failed: {detail}"),
            HaltReason::SwitchFailed { detail } => write!(f, "switching traffic failed: {detail}"),
            HaltReason::CanaryFailed { share, detail } => {
                write!(f, "the canary at {share}% failed: {detail}; traffic moved back to 0%")
            }
            HaltReason::Ledger { detail } => write!(f, "the deploy ledger is unavailable: {detail}"),
            HaltReason::Interrupted => write!(f, "interrupted"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Gate(String),
    #[error("{0}")]
    Halted(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Store(String),
}

impl From<LedgerError> for DeployError {
    fn from(e: LedgerError) -> DeployError {
        DeployError::Store(e.to_string())
    }
}

pub fn now_ms() -> i64 {
    crate::cache::now_ms()
}

/// Who is deploying: `CAIRN_ACTOR`, `GITHUB_ACTOR`, else the user name.
pub fn actor() -> String {
    ["CAIRN_ACTOR", "GITHUB_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_windows() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-27T09:00:00+09:00"), Some(1_795_737_600));
        assert_eq!(parse_rfc3339("2026-11-27T00:00:00Z"), Some(1_795_737_600));
        assert_eq!(tz_offset_minutes("+09:00", 0), Some(540));
        assert_eq!(tz_offset_minutes("-05:30", 0), Some(-330));
    }
}
