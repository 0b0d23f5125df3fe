//! What the store remembers about one worktree, kept apart from the entries themselves:
//! which outputs cairn installed there (their stat fingerprint, for skipping restores of
//! outputs already in place), which key each step used last (for honest miss reasons), the
//! stat cache of its inputs, and the leftovers of killed restores in its `.cairn-tmp/`.

use super::{archive, now_ms, Entry, Store, StoreError};
use crate::inputs::StatEntry;
use std::collections::HashMap;
use std::fs;
use std::path::Path;

/// The store's memory of the worktree at `root`.
pub struct Worktree<'a> {
    store: &'a Store,
    root: &'a Path,
    /// `root` as the index keys it.
    key: String,
}

impl<'a> Worktree<'a> {
    pub fn new(store: &'a Store, root: &'a Path) -> Worktree<'a> {
        Worktree { store, root, key: root.display().to_string() }
    }

    /// Remove what killed restores left in `.cairn-tmp/` (call with the workspace lock held,
    /// so no running restore is touched). How many leftovers went.
    pub fn clean_leftovers(root: &Path) -> usize {
        let work = root.join(".cairn-tmp");
        let mut n = 0;
        for e in fs::read_dir(&work).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if (name.starts_with("restore-") || name.starts_with("old-") || name.starts_with("rebuild-"))
                && archive::remove_any(&e.path()).is_ok()
            {
                n += 1;
            }
        }
        let _ = fs::remove_dir(&work); // only if nothing else is in it
        n
    }

    /// Remember which key each step used this run (see [`Worktree::previous_entry`]).
    pub fn note_used(&self, pairs: &[(&str, &str)]) -> Result<(), StoreError> {
        if pairs.is_empty() || self.store.is_read_only() {
            return Ok(());
        }
        Ok(self.store.index().set_last_keys(&self.key, pairs, now_ms())?)
    }

    /// The entry to explain a key of `step` against: the one this worktree last used, if it
    /// is not `key` itself and is still stored, else the newest other entry of the step.
    pub fn previous_entry(&self, step: &str, key: &str) -> Result<Option<Entry>, StoreError> {
        let last = self.store.index().last_key(&self.key, step)?;
        if let Some(last) = last.filter(|k| k != key) {
            if let Some(e) = self.store.get(&last)? {
                return Ok(Some(e));
            }
        }
        self.store.latest_for_step(step, key)
    }

    /// The key `step` last used here.
    pub fn last_key(&self, step: &str) -> Option<String> {
        self.store.index().last_key(&self.key, step).ok().flatten()
    }

    /// Record that `step`'s outputs here are now those of `outputs_digest`.
    ///
    /// Returns when the outputs settle if the fingerprint recorded is racy (they were written
    /// within a timestamp granule, [`crate::inputs::settles_ns`]): until it is recorded again
    /// after that, the next check reads every output to confirm it. The executor does so at
    /// the end of the build for the outputs that have settled by then.
    pub fn record_installed(&self, step: &str, outputs: &[String], outputs_digest: &str) -> Option<i64> {
        let now = crate::inputs::now_ns();
        let (fp, settles) = crate::inputs::outputs_fingerprint(self.root, outputs)?;
        let _ = self.store.index().set_installed(&self.key, step, outputs_digest, &fp, now);
        (settles > now).then_some(settles)
    }

    /// Record that `step`'s outputs, just packed, are those of `outputs_digest`, with the
    /// packer's fingerprint (which saves a second stat of every output); without one (a
    /// remote archive), a fresh one. Returns when the outputs settle if what it recorded is
    /// racy, like [`Worktree::record_installed`].
    pub fn record_packed(
        &self,
        step: &str,
        outputs: &[String],
        outputs_digest: &str,
        packed: Option<&archive::PackedFingerprint>,
    ) -> Option<i64> {
        match packed {
            Some(fp) => {
                let _ = self.store.index().set_installed(&self.key, step, outputs_digest, &fp.digest, fp.recorded_ns);
                (fp.settles_ns > fp.recorded_ns).then_some(fp.settles_ns)
            }
            None => self.record_installed(step, outputs, outputs_digest),
        }
    }

    /// Are `step`'s outputs here still exactly what an earlier run or restore of
    /// `outputs_digest` left? (Stat fingerprint, with the racy-window guard.) `fingerprint`
    /// takes the outputs' current stat fingerprint (possibly taken ahead).
    pub fn outputs_in_place(
        &self,
        step: &str,
        outputs: &[String],
        outputs_digest: &str,
        fingerprint: impl FnOnce() -> Option<(String, i64)>,
    ) -> bool {
        let Ok(Some((digest, fp, recorded))) = self.store.index().installed(&self.key, step) else {
            return false;
        };
        if digest != outputs_digest {
            return false;
        }
        let confirm = || {
            let same = archive::outputs_digest(self.root, outputs).is_some_and(|d| d == outputs_digest);
            if same {
                let _ = self.record_installed(step, outputs, outputs_digest);
            }
            same
        };
        match fingerprint() {
            // Cairn installed these outputs and something touched them since: if only their
            // times moved (a tool rewrote identical bytes), reading them is cheaper than
            // restoring them, and says whether anything really changed.
            Some((now_fp, _)) if now_fp != fp => confirm(),
            // Recorded within the racy window: a same-granule change could hide behind an
            // unchanged stat. Check the content, then record again (no longer racy).
            Some((_, settles)) if settles > recorded => confirm(),
            Some(_) => true,
            None => false,
        }
    }

    /// The stat fingerprint recorded for `step`'s outputs here.
    pub fn installed_fingerprint(&self, step: &str) -> Option<String> {
        self.store.index().installed(&self.key, step).ok().flatten().map(|(_, fp, _)| fp)
    }

    /// The outputs digest cairn last installed (ran, or restored) for `step` here.
    pub fn installed_digest(&self, step: &str) -> Option<String> {
        self.store.index().installed(&self.key, step).ok().flatten().map(|(d, _, _)| d)
    }

    /// The stat cache of this worktree's inputs (size, times, inode → digest).
    pub fn load_stat_cache(&self) -> Result<HashMap<String, StatEntry>, StoreError> {
        Ok(self.store.index().load_stat_cache(&self.key)?)
    }

    pub fn save_stat_cache(
        &self,
        base: HashMap<String, StatEntry>,
        rows: &[(String, StatEntry)],
    ) -> Result<(), StoreError> {
        Ok(self.store.index().save_stat_cache(&self.key, base, rows)?)
    }
}
