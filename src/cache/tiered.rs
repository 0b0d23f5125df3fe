//! The local store, then the remote: one tiering rule for the planner and the executor.
//!
//! Lookups go to the local store first. After a local miss the remote is asked: the planner
//! asks for many keys at once without downloading ([`plan::Lookup`]); the executor fetches the
//! entry, has it verified (manifest, digest, signature) and commits it to the local store, so
//! every restore, whichever tier it came from, goes through the one hardened extractor.

use super::remote::{Remote, RemoteError};
use super::{Entry, EntryStore, Found as Found2, Pending, Store, StoreError};
use crate::plan::key::{DirtyReason, KeyManifest};
use crate::plan::{self, Known};
use std::path::Path;

pub struct Tiered<'a> {
    pub local: &'a Store,
    pub remote: Option<&'a Remote>,
    /// The worktree, for explaining misses against what it used last.
    pub root: &'a Path,
}

/// What asking the remote after a local miss gave.
pub enum Fetched {
    /// Not there (or no remote): run the step.
    Absent(Pending),
    /// Fetched, verified and now in the local store.
    Hit(Entry),
    /// The remote failed or its entry was refused: run the step, for this reason; `warning`
    /// when a person should hear of it (an unavailable remote is said once, elsewhere).
    Failed { pending: Pending, reason: DirtyReason, warning: Option<String> },
}

impl Tiered<'_> {
    /// After a local miss of `pending`'s key: the remote's entry, committed locally.
    pub fn fetch(&self, pending: Pending) -> Fetched {
        let Some(remote) = self.remote else { return Fetched::Absent(pending) };
        let fetched = match remote.fetch(&pending.key, &self.local.tmp_dir()) {
            Ok(Some(f)) => f,
            Ok(None) => return Fetched::Absent(pending),
            Err(RemoteError::Signature(d)) => {
                let warning = Some(format!("REMOTE ENTRY REJECTED: {d}"));
                return Fetched::Failed { pending, reason: DirtyReason::Signature { detail: d }, warning };
            }
            Err(e) => {
                let warning = (!matches!(e, RemoteError::Unavailable(_))).then(|| e.to_string());
                return Fetched::Failed {
                    pending,
                    reason: DirtyReason::RemoteError { detail: e.to_string() },
                    warning,
                };
            }
        };
        let env = fetched.envelope;
        let packed = super::archive::Packed {
            tmp_path: fetched.body.clone(),
            blob_digest: env.blob_digest.clone(),
            outputs_digest: env.outputs_digest.clone(),
            blob_size: env.blob_size,
            files: 0,
            raw_bytes: 0,
            log_bytes: env.log_bytes,
            fingerprint: None,
        };
        let again = pending.clone();
        match pending.commit(self.local, packed, env.duration_ms) {
            Ok(entry) => Fetched::Hit(entry),
            Err(e) => {
                let _ = std::fs::remove_file(&fetched.body);
                let reason = DirtyReason::RemoteError { detail: format!("storing the remote entry: {e}") };
                Fetched::Failed { pending: again, reason, warning: None }
            }
        }
    }
}

impl EntryStore for Tiered<'_> {
    /// The local store first; after a local miss, the remote (fetched, verified, committed).
    fn find(&self, step: &str, key: &str, manifest: &KeyManifest, root: &Path) -> Result<Found2, StoreError> {
        let (pending, mut reasons) = match self.local.find(step, key, manifest, root)? {
            hit @ Found2::Hit { .. } => return Ok(hit),
            Found2::Miss { pending, reasons, .. } => (pending, reasons),
        };
        Ok(match self.fetch(pending) {
            Fetched::Absent(pending) => Found2::Miss { pending, reasons, warnings: Vec::new() },
            Fetched::Hit(entry) => Found2::Hit { entry, remote: true },
            Fetched::Failed { pending, reason, warning } => {
                if matches!(reason, DirtyReason::Signature { .. }) {
                    reasons.insert(0, reason);
                } else {
                    reasons.push(reason);
                }
                Found2::Miss { pending, reasons, warnings: warning.into_iter().collect() }
            }
        })
    }
    fn commit(&self, pending: Pending, packed: super::archive::Packed, duration_ms: u64) -> Result<Entry, StoreError> {
        pending.commit(self.local, packed, duration_ms)
    }
    fn restore(
        &self,
        entry: &Entry,
        root: &Path,
        outputs: &[String],
        protected: super::Protected,
        explain: bool,
    ) -> Result<super::Restored, StoreError> {
        self.local.restore(entry, root, outputs, protected, explain)
    }
    fn read_logs(&self, entry: &Entry) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        self.local.read_logs(entry)
    }
}

impl plan::Lookup for Tiered<'_> {
    fn local(&self, step: &str, key: &str, manifest: &KeyManifest) -> Known {
        match self.local.find(step, key, manifest, self.root) {
            Ok(Found2::Hit { entry, .. }) => Known::Hit { outputs_digest: entry.outputs_digest },
            Ok(Found2::Miss { reasons, .. }) => Known::Miss { reasons },
            Err(e) => Known::Error(e.to_string()),
        }
    }

    fn remote(&self, keys: &[String]) -> Option<Result<Vec<Option<Option<String>>>, String>> {
        self.remote.map(|r| r.exists_many(keys).map_err(|e| e.to_string()))
    }
}
