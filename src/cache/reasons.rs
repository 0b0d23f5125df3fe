//! Why a step missed, from what the store remembers: the entry the worktree used last (else
//! the newest) of the same step, compared with the new key manifest.

use super::Store;
use crate::plan::key::{diff, DirtyReason, KeyManifest};
use std::path::Path;

/// Why a lookup missed: the entry was dropped as corrupt, evicted, or (never stored under this
/// key) what differs from the newest entry of the same step.
pub fn miss_reasons(
    store: &Store,
    root: &Path,
    step: &str,
    key: &str,
    manifest: &KeyManifest,
    evicted: Option<String>,
) -> Vec<DirtyReason> {
    match evicted {
        Some(why) if why.starts_with("corrupt") => {
            vec![DirtyReason::Corrupt { detail: why.trim_start_matches("corrupt: ").to_string() }]
        }
        Some(_) => vec![DirtyReason::Evicted],
        None => why_missed(store, root, step, key, manifest),
    }
}

/// Why a key missed: compare with the entry this worktree last used for the step (after a
/// revert, the newest entry is another branch's, whose differences nobody made here), else
/// with the newest entry of the step.
pub fn why_missed(store: &Store, root: &Path, step: &str, key: &str, manifest: &KeyManifest) -> Vec<DirtyReason> {
    match store.worktree(root).previous_entry(step, key) {
        Ok(Some(prev)) => match prev.manifest() {
            Some(old) => {
                let d = diff(&old, manifest);
                if d.is_empty() {
                    vec![DirtyReason::NoEntry]
                } else {
                    d
                }
            }
            None => vec![DirtyReason::NoEntry],
        },
        _ => vec![DirtyReason::NoEntry],
    }
}
