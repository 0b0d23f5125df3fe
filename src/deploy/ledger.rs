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
//! Every operation is a value ([`Op`], in the core), and [`apply`] runs it against an index in
//! one transaction (its SQL lives with the index, `cache/index/ledger.rs`):
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
pub use cairn_core::ledger::*;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

/// Run `op` against the index `i` (see the module docs).
pub fn apply(i: &mut Index, op: &Op, now: i64) -> Result<Value, IndexError> {
    i.apply_ledger(op, now)
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
