//! The deploy ledger: approvals, the audit log, each environment's lease and its queue, deploy
//! runs, their journal, and which release each region runs.
//!
//! # Where it lives
//! Without a remote, in the local store's index. With a `cairn serve` remote configured (the
//! pipeline's `remote.url`, `--remote` or `CAIRN_REMOTE`), on that server, in a ledger database
//! per namespace. Then every CI runner and laptop sharing the remote sees one lease per
//! environment and the same approvals. They share one journal too, so a rollout halted on one
//! runner resumes on another, and a region already running a release is skipped whoever deploys.
//! An `s3://` remote can't hold a ledger (S3 has no transactions), so there it stays local, and
//! cairn says so.
//!
//! # One implementation, two transports
//! Every operation is a value ([`Op`]), and [`apply`] runs it against an index in one
//! transaction:
//! - the local ledger calls [`apply`] on the store's index;
//! - `cairn serve` calls the same [`apply`] on its ledger database;
//! - the remote ledger posts the op as JSON to `POST /v8/cairn/ledger`.
//!
//! So the meaning of a lease's expiry, the queue's order and the journal's sequence cannot
//! drift between local and shared. Time is the ledger's clock: the server decides when a lease
//! has expired, so runners with skewed clocks still agree on who holds it.
//!
//! # Trust
//! The server keeps state but grants no authority. Signed approvals are verified by the
//! deploying client against the pipeline's `approval.keys` at every gate check, so a server (or
//! anyone holding a write token) cannot forge one. Unsigned approvals are as trustworthy as the
//! tokens allowed to write; environments that need more list reviewer keys.

use crate::cache::index::{Index, IndexError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

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

/// Waiters that stopped polling for this long have left the line.
const QUEUE_STALE_MS: i64 = 10_000;

fn int(s: &str) -> i64 {
    s.parse().unwrap_or(0)
}

/// Run `op` against `i` in one immediate transaction, at `now` (ms since the epoch, the
/// ledger's clock). The answer's shape is documented on each [`Op`].
pub fn apply(i: &mut Index, op: &Op, now: i64) -> Result<Value, IndexError> {
    i.immediate(|i| apply_in(i, op, now))
}

fn apply_in(i: &Index, op: &Op, now: i64) -> Result<Value, IndexError> {
    Ok(match op {
        Op::Approve { env, release, approver, comment, expires_at, token, audit } => {
            i.exec(
                "INSERT INTO approvals (env, release, approver, comment, at, expires_at, token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &[env, release, approver, comment, &now, expires_at, token],
            )?;
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'approve', ?4)",
                &[&now, env, approver, audit],
            )?;
            Value::Null
        }
        Op::Approvals { env, release } => {
            let rows = i.rows(
                "SELECT approver, expires_at, comment, token FROM approvals WHERE env = ?1 AND release = ?2 ORDER BY at DESC",
                &[env, release],
            )?;
            let rows: Vec<ApprovalRow> = rows
                .into_iter()
                .map(|r| ApprovalRow {
                    approver: r[0].clone(),
                    expires_at: int(&r[1]),
                    comment: r[2].clone(),
                    token: r[3].clone(),
                })
                .collect();
            json!(rows)
        }
        Op::Audit { env, who, action, detail } => {
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                &[&now, env, who, action, detail],
            )?;
            Value::Null
        }
        Op::LeaseTry { env, run_id, holder, host, pid, ttl_ms } => {
            // The holder asking again (a retried request) keeps its lease.
            if i.exec(
                "UPDATE leases SET expires_at = ?3 WHERE env = ?1 AND run_id = ?2 AND expires_at > ?4",
                &[env, run_id, &(now + ttl_ms), &now],
            )? == 1
            {
                return Ok(json!(LeaseAnswer { acquired: true, holder: None }));
            }
            i.exec(
                "INSERT OR IGNORE INTO lease_queue (env, run_id, since, seen) VALUES (?1, ?2, ?3, ?3)",
                &[env, run_id, &now],
            )?;
            i.exec("UPDATE lease_queue SET seen = ?3 WHERE env = ?1 AND run_id = ?2", &[env, run_id, &now])?;
            i.exec("DELETE FROM lease_queue WHERE env = ?1 AND seen < ?2", &[env, &(now - QUEUE_STALE_MS)])?;
            let current = i.rows("SELECT run_id, holder, expires_at FROM leases WHERE env = ?1", &[env])?;
            let free = current.first().is_none_or(|h| int(&h[2]) <= now);
            let first =
                i.rows("SELECT run_id FROM lease_queue WHERE env = ?1 ORDER BY since, run_id LIMIT 1", &[env])?;
            if free && first.first().is_some_and(|r| r[0] == *run_id) {
                i.exec(
                    "INSERT OR REPLACE INTO leases (env, holder, run_id, host, pid, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    &[env, holder, run_id, host, pid, &now, &(now + ttl_ms)],
                )?;
                i.exec("DELETE FROM lease_queue WHERE env = ?1 AND run_id = ?2", &[env, run_id])?;
                json!(LeaseAnswer { acquired: true, holder: None })
            } else {
                let holder = match current.first() {
                    Some(h) if int(&h[2]) > now => h[1].clone(),
                    _ => "an earlier run".to_string(),
                };
                json!(LeaseAnswer { acquired: false, holder: Some(holder) })
            }
        }
        Op::LeaseRenew { env, run_id, ttl_ms } => {
            let n = i.exec(
                "UPDATE leases SET expires_at = ?3 WHERE env = ?1 AND run_id = ?2",
                &[env, run_id, &(now + ttl_ms)],
            )?;
            json!(n == 1)
        }
        Op::LeaseRelease { env, run_id } => {
            i.exec("DELETE FROM leases WHERE env = ?1 AND run_id = ?2", &[env, run_id])?;
            Value::Null
        }
        Op::LeaseLeave { env, run_id } => {
            i.exec("DELETE FROM lease_queue WHERE env = ?1 AND run_id = ?2", &[env, run_id])?;
            Value::Null
        }
        Op::LockStatus { env } => {
            let lease = i
                .rows("SELECT holder, run_id, host, pid, acquired_at, expires_at FROM leases WHERE env = ?1", &[env])?
                .into_iter()
                .next()
                .map(|h| Holder {
                    holder: h[0].clone(),
                    run_id: h[1].clone(),
                    host: h[2].clone(),
                    pid: int(&h[3]),
                    acquired_at: int(&h[4]),
                    expires_at: int(&h[5]),
                });
            let waiting = i
                .rows(
                    "SELECT run_id FROM lease_queue WHERE env = ?1 AND seen >= ?2 ORDER BY since, run_id",
                    &[env, &(now - QUEUE_STALE_MS)],
                )?
                .into_iter()
                .map(|r| r[0].clone())
                .collect();
            let live = lease.as_ref().is_some_and(|h| h.expires_at > now);
            json!(LockInfo { lease, live, waiting })
        }
        Op::LockBreak { env, who, reason } => {
            let was = i.rows("SELECT run_id FROM leases WHERE env = ?1", &[env])?;
            let was = was.first().map(|r| r[0].clone()).unwrap_or_default();
            i.exec("DELETE FROM leases WHERE env = ?1", &[env])?;
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'lock-release-force', ?4)",
                &[&now, env, who, &format!("{reason} (was {})", if was.is_empty() { "free" } else { &was })],
            )?;
            json!(was)
        }
        Op::RunStart { id, env, release, who, plan, break_glass } => {
            i.exec(
                "INSERT INTO deploy_runs (id, env, release, who, started_at, result, plan, break_glass) VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7)",
                &[id, env, release, who, &now, plan, break_glass],
            )?;
            if !break_glass.is_empty() {
                i.exec(
                    "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'break-glass', ?4)",
                    &[&now, env, who, break_glass],
                )?;
            }
            Value::Null
        }
        Op::RunResult { id, result, halt_reason, finished } => {
            let before = i.rows("SELECT result FROM deploy_runs WHERE id = ?1", &[id])?;
            let before = before.first().and_then(|r| r.first()).cloned().unwrap_or_default();
            let event = match (finished, before.as_str()) {
                (false, "halted") => "resumed".to_string(),
                (false, _) => "started".to_string(),
                (true, _) => result.clone(),
            };
            i.exec(
                "INSERT INTO deploy_events (run_id, at, event, detail) VALUES (?1, ?2, ?3, ?4)",
                &[id, &now, &event, halt_reason],
            )?;
            if *finished {
                i.exec(
                    "UPDATE deploy_runs SET result = ?2, halt_reason = ?3, finished_at = ?4 WHERE id = ?1",
                    &[id, result, halt_reason, &now],
                )?;
            } else {
                i.exec(
                    "UPDATE deploy_runs SET result = ?2, halt_reason = ?3 WHERE id = ?1",
                    &[id, result, halt_reason],
                )?;
            }
            Value::Null
        }
        Op::Unfinished { env } => {
            let rows = i.rows(
                "SELECT id, release FROM deploy_runs WHERE env = ?1 AND result IN ('halted', 'running', 'queued') ORDER BY started_at DESC, id DESC LIMIT 1",
                &[env],
            )?;
            json!(rows.first().map(|r| (r[0].clone(), r[1].clone())))
        }
        Op::History { env } => {
            let rows = i.rows(
                "SELECT id, who, release, started_at, result, COALESCE(halt_reason, ''), COALESCE(break_glass, '') FROM deploy_runs WHERE env = ?1 ORDER BY started_at DESC, id DESC",
                &[env],
            )?;
            let mut out: Vec<RunRow> = Vec::with_capacity(rows.len());
            for r in rows {
                let events = i
                    .rows("SELECT at, event, detail FROM deploy_events WHERE run_id = ?1 ORDER BY at, rowid", &[&r[0]])?
                    .into_iter()
                    .map(|e| RunEvent { at: int(&e[0]), event: e[1].clone(), detail: e[2].clone() })
                    .collect();
                out.push(RunRow {
                    id: r[0].clone(),
                    who: r[1].clone(),
                    release: r[2].clone(),
                    started_at: int(&r[3]),
                    result: r[4].clone(),
                    halt_reason: r[5].clone(),
                    break_glass: r[6].clone(),
                    events,
                });
            }
            json!(out)
        }
        Op::Journal { run_id, phase, what, state, detail } => {
            i.exec(
                "INSERT INTO deploy_journal (run_id, seq, at, phase, what, state, detail)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM deploy_journal WHERE run_id = ?1), ?2, ?3, ?4, ?5, ?6)",
                &[run_id, &now, phase, what, state, detail],
            )?;
            Value::Null
        }
        Op::DonePhases { run_id } => {
            // A phase is done when its last word is: a region rolled back afterwards, or a
            // traffic share reverted, is not.
            let rows = i.rows(
                "SELECT phase FROM deploy_journal j WHERE run_id = ?1 AND state IN ('done', 'skipped')
                 AND seq = (SELECT MAX(seq) FROM deploy_journal WHERE run_id = ?1 AND phase = j.phase) ORDER BY phase",
                &[run_id],
            )?;
            json!(rows.iter().filter_map(|r| r[0].parse::<usize>().ok()).collect::<Vec<_>>())
        }
        Op::RegionRelease { env, region } => {
            let rows = i.rows("SELECT release FROM region_state WHERE env = ?1 AND region = ?2", &[env, region])?;
            json!(rows.first().map(|r| r[0].clone()))
        }
        Op::RegionSet { env, region, release } => {
            i.exec(
                "INSERT OR REPLACE INTO region_state (env, region, release, at) VALUES (?1, ?2, ?3, ?4)",
                &[env, region, release, &now],
            )?;
            Value::Null
        }
        Op::RegionClear { env, region } => {
            i.exec("DELETE FROM region_state WHERE env = ?1 AND region = ?2", &[env, region])?;
            Value::Null
        }
    })
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("the deploy ledger in the local store: {0}")]
    Local(String),
    #[error("the shared deploy ledger at {url}: {detail}")]
    Remote { url: String, detail: String },
    /// The remote answers, but has no ledger (a Turborepo cache that is not `cairn serve`).
    #[error("the remote at {url} keeps no deploy ledger (it is not cairn serve)")]
    NotCairn { url: String },
}

/// Where the ledger lives.
#[derive(Clone)]
pub enum Ledger {
    Local(Arc<crate::cache::Store>),
    Remote(Arc<RemoteLedger>),
}

pub struct RemoteLedger {
    url: String,
    token: Option<String>,
    namespace: String,
    client: reqwest::blocking::Client,
}

impl RemoteLedger {
    pub fn new(url: &str, token: Option<String>, namespace: &str) -> Result<RemoteLedger, String> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(10))
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        Ok(RemoteLedger { url: url.trim_end_matches('/').to_string(), token, namespace: namespace.to_string(), client })
    }

    fn call(&self, op: &Op) -> Result<Value, LedgerError> {
        let err = |detail: String| LedgerError::Remote { url: self.url.clone(), detail };
        let endpoint = format!("{}/v8/cairn/ledger?slug={}", self.url, self.namespace);
        // Ops are retried on transport errors and 5xx: a lost answer can at worst repeat an
        // audit or journal line, never take a lease twice (LeaseTry by the holder is a no-op).
        let mut last = String::new();
        for attempt in 0..4u32 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(250 * u64::from(attempt)));
            }
            let mut rb = self.client.post(&endpoint).json(op);
            if let Some(t) = &self.token {
                rb = rb.bearer_auth(t);
            }
            match rb.send() {
                Ok(r) if r.status().is_success() => {
                    return r.json::<Value>().map_err(|e| err(format!("unreadable answer: {e}")));
                }
                Ok(r) if r.status().is_server_error() => last = format!("HTTP {}", r.status()),
                Ok(r) => {
                    let status = r.status();
                    let body: Value = r.json().unwrap_or(Value::Null);
                    let msg = body["error"]["message"].as_str().unwrap_or("").to_string();
                    if status.as_u16() == 404 {
                        return Err(LedgerError::NotCairn { url: self.url.clone() });
                    }
                    let hint = match status.as_u16() {
                        401 | 403 => "; hint: set CAIRN_TOKEN to a token that may write this namespace",
                        _ => "",
                    };
                    return Err(err(format!("HTTP {status} {msg}{hint}")));
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(err(last))
    }
}

impl RemoteLedger {
    /// Whether the remote keeps a ledger: `false` only when it answers without one (404).
    /// An unreachable or refusing remote counts as one, so its errors stop the deploy rather
    /// than letting runners fall back to separate local ledgers.
    pub fn has_ledger(&self) -> bool {
        !matches!(self.call(&Op::LockStatus { env: String::new() }), Err(LedgerError::NotCairn { .. }))
    }
}

impl Ledger {
    /// Where the ledger lives, for messages.
    pub fn describe(&self) -> String {
        match self {
            Ledger::Local(_) => "the local store".into(),
            Ledger::Remote(r) => format!("the shared ledger at {} (namespace {})", r.url, r.namespace),
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self, Ledger::Remote(_))
    }

    /// Run an op and decode its answer.
    pub fn call<T: DeserializeOwned>(&self, op: Op) -> Result<T, LedgerError> {
        let v = match self {
            Ledger::Local(store) => store
                .with_index(|i| apply(i, &op, crate::cache::now_ms()))
                .map_err(|e| LedgerError::Local(e.to_string()))?,
            Ledger::Remote(r) => r.call(&op)?,
        };
        serde_json::from_value(v).map_err(|e| match self {
            Ledger::Local(_) => LedgerError::Local(format!("unexpected answer: {e}")),
            Ledger::Remote(r) => LedgerError::Remote { url: r.url.clone(), detail: format!("unexpected answer: {e}") },
        })
    }

    /// Run an op whose answer is nothing.
    pub fn exec(&self, op: Op) -> Result<(), LedgerError> {
        self.call::<Value>(op).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index() -> (tempfile::TempDir, Index) {
        let d = tempfile::tempdir().unwrap();
        let i = Index::open(&d.path().join("ledger.sqlite")).unwrap();
        (d, i)
    }

    fn try_lease(i: &mut Index, run: &str, now: i64) -> LeaseAnswer {
        let op = Op::LeaseTry {
            env: "prod".into(),
            run_id: run.into(),
            holder: format!("holder-{run}"),
            host: "h".into(),
            pid: 1,
            ttl_ms: 1000,
        };
        serde_json::from_value(apply(i, &op, now).unwrap()).unwrap()
    }

    #[test]
    fn the_lease_goes_in_arrival_order_and_expires_by_the_ledgers_clock() {
        let (_d, mut i) = index();
        assert!(try_lease(&mut i, "a", 0).acquired);
        let b = try_lease(&mut i, "b", 10);
        assert_eq!(b, LeaseAnswer { acquired: false, holder: Some("holder-a".into()) });
        assert!(!try_lease(&mut i, "c", 20).acquired);
        // The holder asking again keeps it (a retried request must not lose the lease).
        assert!(try_lease(&mut i, "a", 30).acquired);
        // Expired: b was first in line, so c still waits and b gets it.
        assert!(!try_lease(&mut i, "c", 1100).acquired);
        assert!(try_lease(&mut i, "b", 1100).acquired);
        let renewed: bool = serde_json::from_value(
            apply(&mut i, &Op::LeaseRenew { env: "prod".into(), run_id: "b".into(), ttl_ms: 1000 }, 1500).unwrap(),
        )
        .unwrap();
        assert!(renewed);
        let info: LockInfo =
            serde_json::from_value(apply(&mut i, &Op::LockStatus { env: "prod".into() }, 1600).unwrap()).unwrap();
        assert!(info.live);
        assert_eq!(info.lease.unwrap().run_id, "b");
        assert_eq!(info.waiting, vec!["c".to_string()]);
        let was: String = serde_json::from_value(
            apply(&mut i, &Op::LockBreak { env: "prod".into(), who: "ops".into(), reason: "stuck".into() }, 1700)
                .unwrap(),
        )
        .unwrap();
        assert_eq!(was, "b");
        let renewed: bool = serde_json::from_value(
            apply(&mut i, &Op::LeaseRenew { env: "prod".into(), run_id: "b".into(), ttl_ms: 1000 }, 1800).unwrap(),
        )
        .unwrap();
        assert!(!renewed, "a broken lease is not silently renewed");
        let audit = i.rows("SELECT action, detail FROM audit", &[]).unwrap();
        assert_eq!(audit, vec![vec!["lock-release-force".to_string(), "stuck (was b)".to_string()]]);
    }

    #[test]
    fn ops_round_trip_as_json_and_the_journal_numbers_itself() {
        let op = Op::Journal {
            run_id: "r".into(),
            phase: 2,
            what: "deploy fra".into(),
            state: "done".into(),
            detail: String::new(),
        };
        let text = serde_json::to_string(&op).unwrap();
        assert!(text.starts_with(r#"{"op":"journal""#), "{text}");
        assert_eq!(serde_json::from_str::<Op>(&text).unwrap(), op);
        let (_d, mut i) = index();
        apply(&mut i, &op, 1).unwrap();
        let again = Op::Journal {
            run_id: "r".into(),
            phase: 0,
            what: "deploy nrt".into(),
            state: "skipped".into(),
            detail: String::new(),
        };
        apply(&mut i, &again, 2).unwrap();
        let done: Vec<usize> =
            serde_json::from_value(apply(&mut i, &Op::DonePhases { run_id: "r".into() }, 3).unwrap()).unwrap();
        assert_eq!(done, vec![0, 2]);
        // A phase undone afterwards (a region rolled back, a traffic share reverted) is not done.
        let undo = Op::Journal {
            run_id: "r".into(),
            phase: 2,
            what: "rollback fra".into(),
            state: "rolled-back".into(),
            detail: String::new(),
        };
        apply(&mut i, &undo, 4).unwrap();
        let done: Vec<usize> =
            serde_json::from_value(apply(&mut i, &Op::DonePhases { run_id: "r".into() }, 5).unwrap()).unwrap();
        assert_eq!(done, vec![0]);
        let seqs = i.rows("SELECT seq FROM deploy_journal WHERE seq < 3 ORDER BY seq", &[]).unwrap();
        assert_eq!(seqs, vec![vec!["1".to_string()], vec!["2".to_string()]]);
        assert!(Op::History { env: "x".into() }.is_read() && !op.is_read());
    }
}
