//! The local store: a SQLite index plus content-addressed blobs, under `cache/` by default.
//!
//! ```text
//! cache/index.sqlite                   entries, eviction memory, stat cache, run history
//! cache/blobs/<2 hex>/<blake3>.tar.zst one archive per distinct (outputs + logs)
//! cache/tmp/                           archives being written; garbage after a crash
//! ```
//!
//! # Invariants
//! - **Record only after success, enforced by types**: [`Store::lookup`] returns
//!   [`Lookup::Hit`] or [`Lookup::Miss`] holding a [`Pending`]; only [`Pending::commit`]
//!   creates an entry, and the executor calls it only after the step succeeded with every
//!   declared output present.
//! - **Crash-safe publish**: the archive is written to `tmp/`, fsynced, renamed to its
//!   content address, the blob directory fsynced, and only then the index row inserted. A
//!   crash at any point leaves either no row, or a row whose blob is complete.
//! - **Verified restore**: the blob's digest is checked while it is extracted into staging;
//!   a missing or corrupt blob drops the entry and counts as a miss with that reason.

pub mod archive;
pub mod index;
mod maintenance;
mod reasons;
pub mod remote;
pub mod s3;
pub mod tiered;
mod worktree;

pub use maintenance::{GcReport, VerifyReport};
pub use reasons::{miss_reasons, why_missed};
pub use worktree::Worktree;

use crate::plan::key::KeyManifest;
use archive::{ArchiveError, Limits, Packed, Unpacked};
use index::{Index, IndexError, Row};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

pub use crate::inputs::StatEntry;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error("store at {}: {context}: {source}", dir.display())]
    Io { dir: PathBuf, context: String, source: std::io::Error },
    #[error(transparent)]
    Archive(#[from] ArchiveError),
}

/// A stored entry.
#[derive(Debug, Clone)]
pub struct Entry {
    pub key: String,
    pub step: String,
    pub blob: String,
    pub outputs_digest: String,
    /// The key manifest as stored (JSON); parsed on demand by [`Entry::manifest`], since a hit
    /// never needs it and parsing one with hundreds of inputs costs more than the lookup.
    /// `None` for entries from [`Store::lookup`], which does not read it.
    pub manifest_json: Option<String>,
    pub duration_ms: u64,
    pub blob_size: u64,
    pub created_at: i64,
    pub last_used: i64,
    pub pinned: bool,
    /// Size of the stored logs; -1 when unknown.
    pub log_bytes: i64,
}

impl From<Row> for Entry {
    fn from(r: Row) -> Entry {
        Entry {
            manifest_json: r.manifest,
            key: r.key,
            step: r.step,
            blob: r.blob,
            outputs_digest: r.outputs_digest,
            duration_ms: r.duration_ms,
            blob_size: r.blob_size,
            created_at: r.created_at,
            last_used: r.last_used,
            pinned: r.pinned,
            log_bytes: r.log_bytes,
        }
    }
}

impl Entry {
    /// The stored key manifest, if it parses (entries from older key schemas may not).
    pub fn manifest(&self) -> Option<KeyManifest> {
        serde_json::from_str(self.manifest_json.as_deref()?).ok()
    }
}

/// The result of a lookup.
#[derive(Debug)]
pub enum Lookup {
    Hit(Entry),
    /// `evicted` is set when the key had an entry that garbage collection (or verification)
    /// removed: the reason says so.
    Miss(Pending, Option<String>),
}

/// A key that missed; the only way to create an entry for it.
#[derive(Debug, Clone)]
pub struct Pending {
    pub key: String,
    pub step: String,
    pub manifest: KeyManifest,
}

/// Why a restored link may not lead to a worktree path, if so (see [`archive::LinkRules`]).
pub type Protected<'a> = &'a (dyn Fn(&str) -> Option<String> + Sync);

/// What finding a key in the stores gave.
#[derive(Debug)]
pub enum Found {
    /// Stored: locally, or fetched from the remote cache and now stored locally (`remote`).
    Hit { entry: Entry, remote: bool },
    /// Nowhere to be had: the step runs. Why, and what a person should hear about it (a
    /// remote entry refused, say).
    Miss { pending: Pending, reasons: Vec<crate::plan::key::DirtyReason>, warnings: Vec<String> },
}

/// A blake3 digest as the store names things by: 64 lowercase hex characters. Anything else
/// (from a damaged index, a remote) names no path in the store.
fn is_digest(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Where a step's entries are kept: found by key, restored into a worktree, read for their
/// logs, and created only by committing a [`Pending`] after the step succeeded. The local
/// store implements it; [`tiered::Tiered`] puts the remote cache behind it (a remote entry
/// is committed locally before it is restored, so every restore goes through one extractor).
pub trait EntryStore: Sync {
    /// Find `key`; a miss says why, compared with what `root` used last.
    fn find(&self, step: &str, key: &str, manifest: &KeyManifest, root: &Path) -> Result<Found, StoreError>;
    fn commit(&self, pending: Pending, packed: Packed, duration_ms: u64) -> Result<Entry, StoreError>;
    fn restore(
        &self,
        entry: &Entry,
        root: &Path,
        outputs: &[String],
        protected: Protected,
        explain: bool,
    ) -> Result<Restored, StoreError>;
    fn read_logs(&self, entry: &Entry) -> Result<(Vec<u8>, Vec<u8>), StoreError>;
}

impl EntryStore for Store {
    fn find(&self, step: &str, key: &str, manifest: &KeyManifest, root: &Path) -> Result<Found, StoreError> {
        Ok(match self.lookup(step, key, manifest)? {
            Lookup::Hit(entry) => Found::Hit { entry, remote: false },
            Lookup::Miss(pending, evicted) => Found::Miss {
                reasons: miss_reasons(self, root, step, key, manifest, evicted),
                pending,
                warnings: Vec::new(),
            },
        })
    }
    fn commit(&self, pending: Pending, packed: Packed, duration_ms: u64) -> Result<Entry, StoreError> {
        pending.commit(self, packed, duration_ms)
    }
    fn restore(
        &self,
        entry: &Entry,
        root: &Path,
        outputs: &[String],
        protected: Protected,
        explain: bool,
    ) -> Result<Restored, StoreError> {
        Store::restore(self, entry, root, outputs, protected, explain)
    }
    fn read_logs(&self, entry: &Entry) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        Store::read_logs(self, entry)
    }
}

/// What a restore produced.
#[derive(Debug)]
pub struct Restored {
    pub unpacked: Unpacked,
    pub bytes: u64,
    /// Why outputs cairn had installed were put back: the first file found changed.
    pub changed: Option<String>,
}

pub struct Store {
    dir: PathBuf,
    index: Mutex<Index>,
    /// The store could be read but not written (a read-only mount, no permission): hits are
    /// restored, nothing is stored.
    read_only: bool,
    /// What opening the store had to repair or give up, said once by the caller.
    warnings: Vec<String>,
}

/// Can files be created in `dir`? (Permission bits alone don't say: root ignores them, and a
/// read-only mount refuses everyone.)
fn dir_writable(dir: &Path) -> bool {
    let probe = dir.join("tmp").join(format!(".write-probe-{}", archive::unique()));
    match fs::File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

pub use crate::clock::now_ms;

fn fsync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

impl Store {
    /// Open (or create) the store, healing what a crash, a full disk or a stray hand left:
    /// a `tmp` or `blobs` that is not a directory is replaced; a damaged index is moved aside
    /// (`index.sqlite.damaged-*`) and started afresh, which costs re-running steps, never a
    /// wrong hit; a store that cannot be written is opened read-only. Each repair is one
    /// warning in [`Store::warnings`].
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let io = |context: &str| {
            let dir = dir.to_path_buf();
            let context = context.to_string();
            move |source| StoreError::Io { dir, context, source }
        };
        let mut warnings = Vec::new();
        let mut writable = true;
        for sub in ["blobs", "tmp"] {
            let p = dir.join(sub);
            match fs::symlink_metadata(&p) {
                Ok(m) if m.is_dir() => {}
                Ok(_) => {
                    // A file (or link) where a directory belongs: nothing of the store's is in it.
                    if fs::remove_file(&p).is_ok() {
                        warnings.push(format!(
                            "the store's `{sub}` at {} was not a directory; replaced it with an empty one",
                            p.display()
                        ));
                    }
                }
                Err(_) => {}
            }
            match fs::create_dir_all(&p) {
                Ok(()) => {}
                Err(e) if dir.join("index.sqlite").exists() => {
                    writable = false;
                    let _ = e;
                }
                Err(e) => return Err(io("creating the store")(e)),
            }
        }
        let path = dir.join("index.sqlite");
        let marker = dir.join("index.damaged");
        if writable && !path.exists() {
            // A deleted index whose write-ahead log stayed behind: replaying that log into a
            // new, empty database would make it corrupt.
            for ext in ["-wal", "-shm"] {
                let _ = fs::remove_file(dir.join(format!("index.sqlite{ext}")));
            }
        }
        if writable && !dir_writable(dir) {
            writable = false;
        }
        let index = if !writable {
            warnings.push(format!(
                "the store at {} is read-only: stored results are restored, new ones are not stored",
                dir.display()
            ));
            Index::open_read_only(&path)?
        } else {
            let opened = match Index::open(&path) {
                Ok(_) if marker.exists() => Err(index::IndexError::damaged("a query failed in an earlier run")),
                other => other,
            };
            match opened {
                Ok(i) => i,
                Err(e) if e.is_damaged() => {
                    let aside = dir.join(format!("index.sqlite.damaged-{}", now_ms()));
                    fs::rename(&path, &aside).map_err(io("moving the damaged index aside"))?;
                    for ext in ["-wal", "-shm"] {
                        let _ = fs::remove_file(dir.join(format!("index.sqlite{ext}")));
                    }
                    warnings.push(format!(
                        "the store index {} was damaged ({e}); it was moved to {} and a new one started: steps run again and are stored anew",
                        path.display(),
                        aside.display()
                    ));
                    let fresh = Index::open(&path)?;
                    let _ = fs::remove_file(&marker);
                    fresh
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Store { dir: dir.to_path_buf(), index: Mutex::new(index), read_only: !writable, warnings })
    }

    /// Repairs and degradations made when opening (see [`Store::open`]).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// What this store remembers about one worktree (see [`Worktree`]).
    pub fn worktree<'a>(&'a self, root: &'a Path) -> Worktree<'a> {
        Worktree::new(self, root)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.dir.join("tmp")
    }

    pub(crate) fn index(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pass an index result on, leaving a marker when it shows the database is damaged: the
    /// next [`Store::open`] then moves it aside and starts afresh instead of every later
    /// build failing its lookups.
    fn noting<T>(&self, r: Result<T, IndexError>) -> Result<T, IndexError> {
        if let Err(e) = &r {
            if e.is_damaged() {
                let _ = fs::write(self.dir.join("index.damaged"), e.to_string());
            }
        }
        r
    }

    /// Where the blob of `digest` lives. A digest that is not 64 lowercase hex characters
    /// (a damaged or hostile index row) names a path that never exists inside the store, so
    /// it reads as a missing blob and nothing outside `blobs/` is ever opened or removed.
    pub fn blob_path(&self, digest: &str) -> PathBuf {
        if !is_digest(digest) {
            let name = blake3::hash(digest.as_bytes()).to_hex();
            return self.dir.join("blobs").join("invalid").join(format!("{name}.not-a-digest"));
        }
        self.dir.join("blobs").join(&digest[..2]).join(format!("{digest}.tar.zst"))
    }

    /// Look `key` (the key of `manifest`, computed once by the caller) up. The manifest is
    /// copied into the pending entry only on a miss.
    pub fn lookup(&self, step: &str, key: &str, manifest: &KeyManifest) -> Result<Lookup, StoreError> {
        let (row, evicted) = {
            let idx = self.index();
            match self.noting(idx.lookup(key))? {
                Some(row) => (Some(row), None),
                None => (None, self.noting(idx.eviction(key))?),
            }
        };
        match row {
            Some(row) => Ok(Lookup::Hit(row.into())),
            None => Ok(Lookup::Miss(
                Pending { key: key.to_string(), step: step.to_string(), manifest: manifest.clone() },
                evicted,
            )),
        }
    }

    /// A pending entry for a key that is stored already but is re-run on request (`--force`);
    /// committing it replaces the entry.
    pub fn pending_forced(&self, step: &str, manifest: KeyManifest) -> Pending {
        Pending { key: manifest.key(), step: step.to_string(), manifest }
    }

    pub fn get(&self, key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.index().get(key)?.map(Entry::from))
    }

    /// The newest entry of `step` other than `except_key`, for "why did this miss".
    pub fn latest_for_step(&self, step: &str, except_key: &str) -> Result<Option<Entry>, StoreError> {
        Ok(self.index().latest_for_step(step, except_key)?.map(Entry::from))
    }

    /// Replay an entry's logs without restoring its outputs.
    pub fn read_logs(&self, entry: &Entry) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
        if entry.log_bytes == 0 {
            return Ok((Vec::new(), Vec::new()));
        }
        archive::read_logs(&self.blob_path(&entry.blob)).or_else(|e| {
            if e.is_bad_blob() {
                self.drop_entry(&entry.key, &format!("corrupt: {e}"))?;
            }
            Err(e.into())
        })
    }

    /// Restore an entry's outputs into `root` transactionally; returns its logs.
    ///
    /// On a missing or corrupt blob the entry is dropped and the error says so; the caller
    /// treats it as a miss.
    ///
    /// `protected` names the worktree paths no restored link may lead to (see
    /// [`archive::LinkRules`]); the store's own directory is never a link's target either.
    pub fn restore(
        &self,
        entry: &Entry,
        root: &Path,
        outputs: &[String],
        protected: Protected,
        explain: bool,
    ) -> Result<Restored, StoreError> {
        let blob = self.blob_path(&entry.blob);
        let work = root.join(".cairn-tmp");
        let staging = work.join(format!("restore-{}", archive::unique()));
        let t = std::time::Instant::now();
        let store_rel = self
            .dir
            .canonicalize()
            .ok()
            .and_then(|d| d.strip_prefix(root.canonicalize().ok()?).ok().map(|r| r.to_string_lossy().to_string()))
            .filter(|r| !r.is_empty());
        let guard = |rel: &str| -> Option<String> {
            if let Some(s) = &store_rel {
                if Path::new(rel).starts_with(s) {
                    return Some("which is inside cairn's store".to_string());
                }
            }
            protected(rel)
        };
        let rules = archive::LinkRules { root, outputs, protected: &guard };
        // From the entry's unpacked copy by hard links when there is a sound one; else
        // extracted from the blob (and an unpacked copy made of it for next time).
        let linked = self.link_unpacked(&entry.blob, &staging, &rules);
        let unpacked = match linked {
            Some(Ok(u)) => Ok(u),
            Some(Err(e)) => Err(e),
            None => archive::unpack(&blob, &entry.blob, &staging, Limits::for_restore(root), &rules).inspect(|u| {
                self.keep_unpacked(&entry.blob, &staging, u);
            }),
        };
        let result = unpacked.and_then(|u| {
            crate::inputs::timing("restore: unpack", t);
            let changed = if explain { archive::first_difference(&staging, root, outputs) } else { None };
            let t = std::time::Instant::now();
            let r = archive::install(&staging, root, outputs, &work).map(|()| (u, changed));
            crate::inputs::timing("restore: install", t);
            r
        });
        // Interrupted, the half-extracted staging directory is left for the next build's
        // leftover cleaning: removing thousands of files would hold Ctrl-C up for seconds.
        if !matches!(result, Err(ArchiveError::Interrupted)) {
            let _ = archive::remove_any(&staging);
            let _ = fs::remove_dir(&work);
        }
        match result {
            Ok((unpacked, changed)) => {
                if !self.read_only {
                    self.index().touch(&entry.key, now_ms())?;
                }
                let bytes = unpacked.bytes;
                Ok(Restored { unpacked, bytes, changed })
            }
            Err(e) => {
                if e.is_bad_blob() {
                    self.drop_entry(&entry.key, &format!("corrupt: {e}"))?;
                }
                Err(e.into())
            }
        }
    }

    /// Where an entry's unpacked copy lives, and its manifest.
    fn unpacked_paths(&self, blob: &str) -> Option<(PathBuf, PathBuf)> {
        if !is_digest(blob) {
            return None;
        }
        let dir = self.dir.join("unpacked");
        Some((dir.join(blob), dir.join(format!("{blob}.json"))))
    }

    /// Restore into `staging` from the unpacked copy of `blob`, if there is one: `None` when
    /// there is none (or it was stale or unusable, and is gone now), else the result.
    fn link_unpacked(
        &self,
        blob: &str,
        staging: &Path,
        rules: &archive::LinkRules,
    ) -> Option<Result<archive::Unpacked, ArchiveError>> {
        if std::env::var_os("CAIRN_NO_UNPACKED").is_some() {
            return None;
        }
        let (copy, manifest) = self.unpacked_paths(blob)?;
        let m: archive::linked::Manifest = serde_json::from_slice(&fs::read(&manifest).ok()?).ok()?;
        let t = std::time::Instant::now();
        let r = archive::linked::link_from(&copy, &m, staging, rules);
        match r {
            Ok(u) => {
                crate::inputs::timing("restore: link from the unpacked copy", t);
                // Recently used: gc keeps it longest.
                let _ = fs::File::options()
                    .write(true)
                    .open(&manifest)
                    .and_then(|f| f.set_modified(std::time::SystemTime::now()));
                Some(Ok(u))
            }
            Err(archive::linked::NotUsable::Failed(e @ (ArchiveError::Interrupted | ArchiveError::Unsafe { .. }))) => {
                Some(Err(e))
            }
            Err(_) => {
                // Stale (a file was written since) or unusable: extract instead, afresh.
                let _ = archive::remove_any(staging);
                self.drop_unpacked(blob);
                None
            }
        }
    }

    /// After an extraction into `staging`: keep an unpacked copy of it (hard links) for the
    /// next restore. Quietly nothing when the store is read-only or on another filesystem.
    fn keep_unpacked(&self, blob: &str, staging: &Path, u: &archive::Unpacked) {
        if self.read_only || std::env::var_os("CAIRN_NO_UNPACKED").is_some() {
            return;
        }
        let Some((copy, manifest)) = self.unpacked_paths(blob) else { return };
        if manifest.exists() {
            return;
        }
        let t = std::time::Instant::now();
        let tmp = self.tmp_dir().join(format!("unpacked-{}", archive::unique()));
        let made = archive::linked::make_copy(staging, &tmp, u).ok().and_then(|m| {
            let _ = fs::create_dir_all(copy.parent()?);
            let _ = archive::remove_any(&copy);
            fs::rename(&tmp, &copy).ok()?;
            let json = serde_json::to_vec(&m).ok()?;
            let mtmp = self.tmp_dir().join(format!("unpacked-{}.json", archive::unique()));
            fs::write(&mtmp, json).and_then(|()| fs::rename(&mtmp, &manifest)).ok()
        });
        if made.is_none() {
            let _ = archive::remove_any(&tmp);
            let _ = archive::remove_any(&copy);
        }
        crate::inputs::timing("restore: keep an unpacked copy", t);
    }

    /// Remove the unpacked copy of `blob` (manifest first: without it the copy is unused).
    pub fn drop_unpacked(&self, blob: &str) {
        if let Some((copy, manifest)) = self.unpacked_paths(blob) {
            let _ = fs::remove_file(&manifest);
            let _ = archive::remove_any(&copy);
        }
    }

    /// The unpacked copies: (blob, bytes, last used), least recently used first.
    pub fn unpacked_copies(&self) -> Vec<(String, u64, std::time::SystemTime)> {
        let mut v = Vec::new();
        for e in fs::read_dir(self.dir.join("unpacked")).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Some(blob) = name.strip_suffix(".json") else { continue };
            let Ok(text) = fs::read(e.path()) else { continue };
            let Ok(m) = serde_json::from_slice::<archive::linked::Manifest>(&text) else { continue };
            let used = e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH);
            v.push((blob.to_string(), m.bytes, used));
        }
        v.sort_by_key(|(_, _, used)| *used);
        v
    }

    /// Mark entries used by this run (hits whose outputs were already in place are never
    /// restored, but they are used all the same: LRU eviction must not pick them first).
    pub fn touch_many(&self, keys: &[&str]) -> Result<(), StoreError> {
        if keys.is_empty() {
            return Ok(());
        }
        Ok(self.index().touch_many(keys, now_ms())?)
    }

    /// Remove an entry (and its blob when no other entry uses it).
    pub fn drop_entry(&self, key: &str, why: &str) -> Result<(), StoreError> {
        let idx = self.index();
        if let Some(row) = idx.remove(key, why, now_ms())? {
            if idx.blob_refs(&row.blob)? == 0 {
                let _ = fs::remove_file(self.blob_path(&row.blob));
                drop(idx);
                self.drop_unpacked(&row.blob);
                return Ok(());
            }
        }
        Ok(())
    }

    /// Sizes and counts.
    pub fn entries(&self) -> Result<Vec<Entry>, StoreError> {
        Ok(self.index().all()?.into_iter().map(Entry::from).collect())
    }

    pub fn set_pinned(&self, key: &str, pinned: bool) -> Result<bool, StoreError> {
        Ok(self.index().set_pinned(key, pinned)?)
    }

    /// The scan journal recorded for walk rules `sig`, if any and intact.
    ///
    /// Journals are plain files (`journals/<sig>` in the store), not index rows: a no-op build
    /// reads one whole, and a file is one `read` where a 2 MB row is a chain of overflow
    /// pages. A journal is a cache of what a walk would find, checked by its own checksum; a
    /// torn or missing one means a walk.
    pub fn load_journal(&self, sig: &str) -> Option<crate::inputs::journal::Journal> {
        let data = fs::read(self.dir.join("journals").join(sig)).ok()?;
        crate::inputs::journal::Journal::decode(&data)
    }

    /// Keep the journal of `sig` (written aside, then renamed over the old one); journals
    /// of walk rules unused for 30 days are removed.
    pub fn save_journal(&self, sig: &str, journal: &crate::inputs::journal::Journal) -> Result<(), StoreError> {
        self.keep_file("journals", sig, &journal.encode(), "scan journal")
    }

    /// A cached toolchain probe record (see `exec::toolchain`), if one is kept under `key`.
    pub fn load_probe(&self, key: &str) -> Option<Vec<u8>> {
        if !is_digest(key) {
            return None;
        }
        fs::read(self.dir.join("probes").join(key)).ok()
    }

    /// Keep a toolchain probe record (written aside, then renamed); records unused for 30
    /// days are removed.
    pub fn save_probe(&self, key: &str, data: &[u8]) -> Result<(), StoreError> {
        if !is_digest(key) {
            return Ok(());
        }
        self.keep_file("probes", key, data, "probe record")
    }

    /// Write `data` as `DIR/name` in the store (aside, then renamed over the old one); files
    /// in `DIR` unused for 30 days are removed.
    fn keep_file(&self, dir: &str, name: &str, data: &[u8], what: &str) -> Result<(), StoreError> {
        let dir = self.dir.join(dir);
        let io = |context: String| {
            let dir = dir.clone();
            move |source| StoreError::Io { dir, context, source }
        };
        fs::create_dir_all(&dir).map_err(io(format!("creating the {what} directory")))?;
        let tmp = self.tmp_dir().join(format!("keep-{}", archive::unique()));
        fs::write(&tmp, data).map_err(io(format!("writing a {what}")))?;
        if let Err(e) = fs::rename(&tmp, dir.join(name)) {
            let _ = fs::remove_file(&tmp);
            return Err(io(format!("publishing a {what}"))(e));
        }
        let month_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(30 * 86_400);
        for e in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t < month_ago) {
                let _ = fs::remove_file(e.path());
            }
        }
        Ok(())
    }

    /// Keep a lock file's content by digest (for structural diffs in `cairn why`).
    pub fn save_snapshot(&self, digest: &str, content: &str) {
        let _ = self.index().save_snapshot(digest, content);
    }

    pub fn snapshot(&self, digest: &str) -> Result<Option<String>, StoreError> {
        Ok(self.index().snapshot(digest)?)
    }

    /// The index, for the deploy journal (which lives in the same database).
    pub fn with_index<T>(&self, f: impl FnOnce(&mut Index) -> T) -> T {
        let mut idx = self.index.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut idx)
    }

    pub fn save_run(&self, id: &str, started_at: i64, pipeline: &str, summary: &str) -> Result<(), StoreError> {
        Ok(self.index().save_run(id, started_at, pipeline, summary)?)
    }

    pub fn runs(&self, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        Ok(self.index().runs(limit)?)
    }
}

impl Pending {
    /// Publish a packed archive as this key's entry. Only call after the step succeeded.
    pub fn commit(self, store: &Store, packed: Packed, duration_ms: u64) -> Result<Entry, StoreError> {
        if store.read_only {
            let _ = fs::remove_file(&packed.tmp_path);
            return Err(StoreError::Io {
                dir: store.dir.clone(),
                context: "storing".into(),
                source: std::io::Error::new(std::io::ErrorKind::ReadOnlyFilesystem, "the store is read-only"),
            });
        }
        let io = |context: String| {
            let dir = store.dir.clone();
            move |source| StoreError::Io { dir, context, source }
        };
        let dest = store.blob_path(&packed.blob_digest);
        let shard = dest.parent().expect("blob paths have a shard directory");
        fs::create_dir_all(shard).map_err(io("creating a blob shard".into()))?;
        if dest.exists() {
            // Same content already stored (identical outputs and logs): keep the existing blob.
            let _ = fs::remove_file(&packed.tmp_path);
        } else {
            fs::rename(&packed.tmp_path, &dest).map_err(io(format!("publishing blob {}", packed.blob_digest)))?;
            fsync_dir(shard).map_err(io("syncing the blob directory".into()))?;
        }
        let now = now_ms();
        let row = Row {
            key: self.key,
            step: self.step,
            blob: packed.blob_digest,
            outputs_digest: packed.outputs_digest,
            manifest: Some(self.manifest.canonical()),
            duration_ms,
            blob_size: packed.blob_size,
            created_at: now,
            last_used: now,
            pinned: false,
            log_bytes: packed.log_bytes as i64,
        };
        store.noting(store.index().insert(&row))?;
        Ok(row.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_packed_fingerprint_is_recorded_as_packed_and_reported_while_racy() {
        let t = tempfile::tempdir().unwrap();
        let store = Store::open(&t.path().join("cache")).unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("out")).unwrap();
        fs::write(root.join("out/a"), "a").unwrap();
        let outs = vec!["out/".to_string()];
        let fresh = crate::inputs::outputs_fingerprint(&root, &outs).unwrap().0;
        let installed = || store.index().installed(&root.display().to_string(), "s").unwrap().unwrap();
        let now = crate::inputs::now_ns();
        let fp = |settles_ns: i64, recorded_ns: i64| archive::PackedFingerprint {
            digest: "packed".into(),
            settles_ns,
            recorded_ns,
        };
        // Read settled: recorded as packed, nothing left to confirm.
        let settles =
            store.worktree(&root).record_packed("s", &outs, "d", Some(&fp(now - 5_000_000_000, now - 3_000_000_000)));
        assert_eq!((installed().1, installed().2, settles), ("packed".to_string(), now - 3_000_000_000, None));
        // Read before settling: recorded as packed all the same (no second stat pass), and the
        // caller learns when the outputs settle, to confirm them then.
        let settles = store.worktree(&root).record_packed("s", &outs, "d", Some(&fp(now + 1_000_000_000, now)));
        assert_eq!((installed().1, settles), ("packed".to_string(), Some(now + 1_000_000_000)));
        // No packer fingerprint (a remote archive): a fresh one.
        store.worktree(&root).record_packed("s", &outs, "d", None);
        assert_eq!(installed().1, fresh);
    }
}
