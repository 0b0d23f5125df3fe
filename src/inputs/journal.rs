//! The scan journal: what the last walk saw, so a no-op run can skip the walk.
//!
//! # Design
//! A walk costs a `readdir` per directory, `.gitignore` matching and a glob match per entry;
//! on a 20,000-file tree that is most of a no-op build. The journal records, per set of walk
//! rules (its [`signature`]: root, globs, prune list, ignore switch), the directories the walk
//! entered with their mtime and inode, every matched file with its stat and digest, and the
//! ignore files that shaped the walk (inside the root, and `.gitignore`, `.ignore` and
//! `.git/info/exclude` above it).
//!
//! Replaying it is one `stat` per directory and one `fstatat` per file, in parallel, with no
//! `readdir` and no matching, the way git's untracked cache and index work:
//! - A directory's mtime changes whenever an entry is created, removed or renamed in it, so
//!   an unchanged directory still holds the same names, and the same rules pick the same
//!   files. A vanished or replaced directory, or any changed ignore file, sends the run back
//!   to the full walk.
//! - A directory whose mtime moved is read again (one `readdir`) and its entries' names and
//!   types compared with the digest recorded at the walk: builds touch directories all the
//!   time without changing what a walk would find there (a step replaces its ignored `dist/`
//!   inside a package, and the package directory's mtime moves). The same names and types
//!   mean the same walk there; the new mtime is recorded. The digest is only taken of
//!   directories that stood still while they were read and were not racy (their mtime had
//!   not settled, [`super::settles_ns`], at the walk); without one, any change means a walk.
//! - A file whose stat is unchanged and not racy keeps its digest; one that changed in place
//!   is hashed again, alone. That is also the "one file edited" case, which then skips the
//!   walk too.
//!
//! Filesystems whose directory mtimes cannot be trusted (some network mounts) can turn the
//! journal off with `CAIRN_NO_SCAN_JOURNAL=1`; git's `core.untrackedCache` has the same caveat.

use super::{hash_file, hex32, now_ns, settles_ns, unhex32, FileDigest, ScanStats, Snapshot, StatEntry, WalkOptions};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"CJ3\0";

/// A directory the walk entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirRec {
    /// Relative to the root; "" for the root itself.
    pub rel: String,
    pub mtime_ns: i64,
    pub ino: u64,
    /// blake3 of every entry's name and type, sorted (ignored ones too), or zeros when it
    /// could not be taken safely (the directory changed while it was read, or was racy).
    pub listing: [u8; 32],
    /// When `mtime_ns` was last confirmed (the walk's start, or a later replay's check).
    pub checked_ns: i64,
}

/// The digest of a directory's entries: names and types, sorted. The same names and types
/// mean the walk decides the same for every entry of the directory (ignored or not, entered
/// or not); what changed inside an entry is caught by that entry's own record.
fn listing(dir: &Path) -> Option<[u8; 32]> {
    use rustix::fs::{Dir, FileType, Mode, OFlags};
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty()).ok()?;
    let mut names: Vec<(Vec<u8>, u8)> = Vec::new();
    for e in Dir::read_from(&fd).ok()? {
        let e = e.ok()?;
        let n = e.file_name().to_bytes();
        if n == b"." || n == b".." {
            continue;
        }
        let kind = match e.file_type() {
            FileType::Unknown => {
                let st = rustix::fs::statat(&fd, e.file_name(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW).ok()?;
                FileType::from_raw_mode(st.st_mode)
            }
            k => k,
        };
        let code = match kind {
            FileType::Directory => b'd',
            FileType::RegularFile => b'f',
            FileType::Symlink => b'l',
            _ => b'o',
        };
        names.push((n.to_vec(), code));
    }
    names.sort_unstable();
    let mut h = blake3::Hasher::new();
    for (n, code) in names {
        h.update(&(n.len() as u32).to_le_bytes());
        h.update(&n);
        h.update(&[code]);
    }
    Some(*h.finalize().as_bytes())
}

fn dir_mtime(path: &Path) -> Option<(i64, u64)> {
    let st = rustix::fs::stat(path).ok()?;
    let (_, mtime, _, ino) = super::stat_fields(&st);
    Some((mtime, ino))
}

/// A range of one of the journal's arenas (`names`, `owners`): a decoded journal is one
/// allocation per arena, not two per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    at: u32,
    len: u32,
}

/// A file the walk kept: an input of some steps, or an ignore file (a guard).
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileRec {
    dir: u32,
    /// In [`Journal::names`].
    name: Span,
    size: u64,
    mtime_ns: i64,
    ctime_ns: i64,
    ino: u64,
    recorded_ns: i64,
    exec: bool,
    /// An ignore file: any change sends the run to the full walk.
    guard: bool,
    digest: [u8; 32],
    /// The steps reading the file, in [`Journal::owners`]; none for a guard.
    owners: Span,
}

/// `(size, mtime, ctime, ino)` of a path outside the walk, or `None` when it did not exist.
type Probe = Option<(u64, i64, i64, u64)>;

/// What one walk saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Journal {
    /// When the walk started (ns since the epoch): directories modified less than the racy
    /// window before it are not trusted.
    recorded_ns: i64,
    outside: Vec<(PathBuf, Probe)>,
    dirs: Vec<DirRec>,
    files: Vec<FileRec>,
    /// Every file's name, one after the other.
    names: String,
    /// Every file's owning steps, one run after the other.
    owners: Vec<u32>,
}

/// The walk rules a journal is valid for.
pub fn signature(opts: &WalkOptions, steps: &[super::StepInputs]) -> String {
    let mut h = blake3::Hasher::new();
    let mut put = |s: &[u8]| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s);
    };
    put(b"cairn scan journal 1");
    put(opts.root.as_os_str().as_encoded_bytes());
    put(&[u8::from(opts.gitignore)]);
    for p in &opts.prune {
        put(p.as_bytes());
    }
    put(b"--");
    for p in &opts.prune_abs {
        put(p.as_os_str().as_encoded_bytes());
    }
    for s in steps {
        put(b"step");
        for g in &s.include {
            put(g.as_bytes());
        }
        put(b"exclude");
        for g in &s.exclude {
            put(g.as_bytes());
        }
    }
    h.finalize().to_hex().to_string()
}

fn probe(path: &Path) -> Probe {
    std::fs::symlink_metadata(path).ok().map(|m| {
        (m.len(), m.mtime() * 1_000_000_000 + m.mtime_nsec(), m.ctime() * 1_000_000_000 + m.ctime_nsec(), m.ino())
    })
}

/// Ignore files outside the walk that can change what it keeps.
fn outside_paths(opts: &WalkOptions) -> Vec<PathBuf> {
    if !opts.gitignore {
        return Vec::new();
    }
    let mut out = vec![opts.root.join(".git/info/exclude")];
    for a in opts.root.ancestors().skip(1) {
        out.extend([a.join(".gitignore"), a.join(".ignore"), a.join(".git/info/exclude")]);
    }
    out
}

fn split(rel: &str) -> (&str, &str) {
    rel.rsplit_once('/').unwrap_or(("", rel))
}

fn is_guard(name: &str) -> bool {
    name == ".gitignore" || name == ".ignore"
}

impl Journal {
    /// Record a walk. `files` are the matched inputs (path, stat with digest, owning steps),
    /// `guards` the ignore files no step reads. `None` if the walk's pieces do not fit
    /// together (a file outside every entered directory): then there is no fast path.
    pub fn new(
        opts: &WalkOptions,
        recorded_ns: i64,
        mut dirs: Vec<DirRec>,
        files: Vec<(String, StatEntry, Vec<usize>)>,
        guards: Vec<(String, StatEntry)>,
    ) -> Option<Journal> {
        dirs.sort_by(|a, b| a.rel.cmp(&b.rel));
        // Each directory's listing, kept only when the directory did not change since the
        // walk stat it (before and after this read) and is not racy: then it is exactly
        // what the walk read.
        for d in &mut dirs {
            let path = if d.rel.is_empty() { opts.root.clone() } else { opts.root.join(&d.rel) };
            let steady = |m: Option<(i64, u64)>| m == Some((d.mtime_ns, d.ino));
            d.checked_ns = recorded_ns;
            d.listing = [0; 32];
            if settles_ns(d.mtime_ns) <= recorded_ns && steady(dir_mtime(&path)) {
                if let Some(l) = listing(&path) {
                    if steady(dir_mtime(&path)) {
                        d.listing = l;
                    }
                }
            }
        }
        let index: HashMap<&str, u32> = dirs.iter().enumerate().map(|(i, d)| (d.rel.as_str(), i as u32)).collect();
        let mut recs = Vec::with_capacity(files.len() + guards.len());
        let (mut names, mut owner_runs) = (String::new(), Vec::new());
        let with_owners = files.into_iter().map(|(r, s, o)| (r, s, o, true));
        for (rel, st, owners, matched) in with_owners.chain(guards.into_iter().map(|(r, s)| (r, s, vec![], false))) {
            let (dir, name) = split(&rel);
            let digest = if matched { unhex32(&st.digest)? } else { [0; 32] };
            let name_span = Span { at: names.len() as u32, len: name.len() as u32 };
            names.push_str(name);
            let owner_span = Span { at: owner_runs.len() as u32, len: owners.len() as u32 };
            owner_runs.extend(owners.into_iter().map(|o| o as u32));
            recs.push(FileRec {
                dir: *index.get(dir)?,
                name: name_span,
                size: st.size,
                mtime_ns: st.mtime_ns,
                ctime_ns: st.ctime_ns,
                ino: st.ino,
                recorded_ns: st.recorded_ns,
                exec: st.exec,
                guard: is_guard(name),
                digest,
                owners: owner_span,
            });
        }
        let text = |s: Span| &names[s.at as usize..(s.at + s.len) as usize];
        recs.sort_by(|a, b| (a.dir, text(a.name)).cmp(&(b.dir, text(b.name))));
        // The arenas again, in record order: what `decode` builds from `encode`.
        let (mut sorted_names, mut sorted_owners) = (String::with_capacity(names.len()), Vec::new());
        for r in &mut recs {
            let at = sorted_names.len() as u32;
            sorted_names.push_str(text(r.name));
            r.name.at = at;
            let at = sorted_owners.len() as u32;
            sorted_owners.extend_from_slice(&owner_runs[r.owners.at as usize..(r.owners.at + r.owners.len) as usize]);
            r.owners.at = at;
        }
        let outside = outside_paths(opts).into_iter().map(|p| (p.clone(), probe(&p))).collect();
        Some(Journal { recorded_ns, outside, dirs, files: recs, names: sorted_names, owners: sorted_owners })
    }

    /// A recorded file's name.
    fn name(&self, f: &FileRec) -> &str {
        &self.names[f.name.at as usize..(f.name.at + f.name.len) as usize]
    }

    /// The steps reading a recorded file.
    fn owners(&self, f: &FileRec) -> &[u32] {
        &self.owners[f.owners.at as usize..(f.owners.at + f.owners.len) as usize]
    }

    /// The journal as bytes, ending in the blake3 of everything before it: a journal is a
    /// plain file, and a torn or damaged one must read as no journal at all.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.files.len() * 96);
        out.extend_from_slice(MAGIC);
        let bytes = |out: &mut Vec<u8>, b: &[u8]| {
            out.extend_from_slice(&(b.len() as u32).to_le_bytes());
            out.extend_from_slice(b);
        };
        out.extend_from_slice(&self.recorded_ns.to_le_bytes());
        out.extend_from_slice(&(self.outside.len() as u32).to_le_bytes());
        for (p, pr) in &self.outside {
            bytes(&mut out, p.as_os_str().as_encoded_bytes());
            let (present, (a, b, c, d)) = match pr {
                Some(v) => (1u8, *v),
                None => (0u8, (0, 0, 0, 0)),
            };
            out.push(present);
            for v in [a, b as u64, c as u64, d] {
                out.extend_from_slice(&v.to_le_bytes());
            }
        }
        out.extend_from_slice(&(self.dirs.len() as u32).to_le_bytes());
        for d in &self.dirs {
            bytes(&mut out, d.rel.as_bytes());
            out.extend_from_slice(&d.mtime_ns.to_le_bytes());
            out.extend_from_slice(&d.ino.to_le_bytes());
            out.extend_from_slice(&d.listing);
            out.extend_from_slice(&d.checked_ns.to_le_bytes());
        }
        out.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            out.extend_from_slice(&f.dir.to_le_bytes());
            bytes(&mut out, self.name(f).as_bytes());
            for v in [f.size, f.mtime_ns as u64, f.ctime_ns as u64, f.ino, f.recorded_ns as u64] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.push(u8::from(f.exec) | u8::from(f.guard) << 1);
            out.extend_from_slice(&f.digest);
            let owners = self.owners(f);
            out.extend_from_slice(&(owners.len() as u32).to_le_bytes());
            for o in owners {
                out.extend_from_slice(&o.to_le_bytes());
            }
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// `None` for anything but a well-formed journal of this version (then: full walk).
    pub fn decode(data: &[u8]) -> Option<Journal> {
        let (data, sum) = data.split_at_checked(data.len().checked_sub(32)?)?;
        if blake3::hash(data).as_bytes() != sum {
            return None;
        }
        let mut r = Reader { data, at: 0 };
        if r.take(4)? != MAGIC {
            return None;
        }
        let recorded_ns = r.u64()? as i64;
        let mut outside = Vec::new();
        for _ in 0..r.u32()? {
            let p = PathBuf::from(std::str::from_utf8(r.bytes()?).ok()?);
            let present = r.take(1)?[0] == 1;
            let (a, b, c, d) = (r.u64()?, r.u64()? as i64, r.u64()? as i64, r.u64()?);
            outside.push((p, present.then_some((a, b, c, d))));
        }
        let n = r.u32()? as usize;
        let mut dirs = Vec::with_capacity(n.min(1 << 20));
        for _ in 0..n {
            let rel = std::str::from_utf8(r.bytes()?).ok()?.to_string();
            let (mtime_ns, ino) = (r.u64()? as i64, r.u64()?);
            let listing: [u8; 32] = r.take(32)?.try_into().ok()?;
            dirs.push(DirRec { rel, mtime_ns, ino, listing, checked_ns: r.u64()? as i64 });
        }
        let n = r.u32()? as usize;
        let mut files = Vec::with_capacity(n.min(1 << 22));
        let mut names = String::with_capacity(n.min(1 << 22) * 16);
        let mut owner_runs = Vec::with_capacity(n.min(1 << 22));
        for _ in 0..n {
            let dir = r.u32()?;
            if dir as usize >= dirs.len() {
                return None;
            }
            let name = std::str::from_utf8(r.bytes()?).ok()?;
            let name_span = Span { at: u32::try_from(names.len()).ok()?, len: name.len() as u32 };
            names.push_str(name);
            let (size, mtime_ns, ctime_ns, ino, recorded_ns) =
                (r.u64()?, r.u64()? as i64, r.u64()? as i64, r.u64()?, r.u64()? as i64);
            let flags = r.take(1)?[0];
            let digest: [u8; 32] = r.take(32)?.try_into().ok()?;
            let owners = Span { at: u32::try_from(owner_runs.len()).ok()?, len: r.u32()? };
            for _ in 0..owners.len {
                owner_runs.push(r.u32()?);
            }
            files.push(FileRec {
                dir,
                name: name_span,
                size,
                mtime_ns,
                ctime_ns,
                ino,
                recorded_ns,
                exec: flags & 1 != 0,
                guard: flags & 2 != 0,
                digest,
                owners,
            });
        }
        (r.at == data.len()).then_some(Journal { recorded_ns, outside, dirs, files, names, owners: owner_runs })
    }

    /// Replay the journal against the tree. `Ok(snapshot)` when every directory and ignore
    /// file is as recorded (files changed in place are hashed again, and the snapshot then
    /// carries the updated journal); otherwise why only a full walk can tell.
    pub fn replay(&self, opts: &WalkOptions, steps: usize) -> Result<Snapshot, String> {
        if self.owners.iter().any(|&o| o as usize >= steps) {
            return Err("recorded for other steps".into());
        }
        if let Some((p, _)) = self.outside.iter().find(|(p, pr)| probe(p) != *pr) {
            return Err(format!("{} changed", p.display()));
        }
        // Every directory first, one `stat` each, before any file is looked at. A directory
        // whose mtime moved (a build replaced an ignored `dist/` in it, say) or is racy is
        // read again: the same names and types as recorded mean the same walk there.
        let mut confirmed: Vec<(usize, i64, i64)> = Vec::new();
        for (k, rec) in self.dirs.iter().enumerate() {
            let path = if rec.rel.is_empty() { opts.root.clone() } else { opts.root.join(&rec.rel) };
            let name = if rec.rel.is_empty() { "the project root".to_string() } else { format!("{}/", rec.rel) };
            let checked = now_ns();
            let (mtime, ino) = dir_mtime(&path).ok_or_else(|| format!("{name} is gone"))?;
            if ino != rec.ino {
                return Err(format!("{name} was replaced"));
            }
            if mtime == rec.mtime_ns && settles_ns(mtime) <= rec.checked_ns {
                continue;
            }
            let same =
                rec.listing != [0; 32] && listing(&path) == Some(rec.listing) && dir_mtime(&path) == Some((mtime, ino));
            if !same && mtime == rec.mtime_ns {
                return Err(format!("{name} was modified just before it was recorded"));
            }
            if !same {
                return Err(format!("{name} changed (an entry was added, removed or renamed)"));
            }
            if settles_ns(mtime) <= checked {
                confirmed.push((k, mtime, checked));
            }
        }
        // Split the directories into contiguous runs of about equal file counts, several per
        // thread: the threads take runs as they go, so one descheduled thread (the outputs
        // are fingerprinted on another at the same time) does not hold the others up.
        let threads = opts.threads.clamp(1, 16);
        let mut starts = vec![0usize; self.dirs.len() + 1];
        for f in &self.files {
            starts[f.dir as usize + 1] += 1;
        }
        for i in 0..self.dirs.len() {
            starts[i + 1] += starts[i];
        }
        let per = self.files.len().div_ceil(threads * 8).max(256);
        let mut chunks: Vec<(usize, usize)> = Vec::new();
        let mut first = 0;
        for d in 0..self.dirs.len() {
            if starts[d + 1] - starts[first] >= per || d + 1 == self.dirs.len() {
                chunks.push((first, d + 1));
                first = d + 1;
            }
        }
        let started_ns = now_ns();
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut results: Vec<(usize, Result<Replayed, String>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.min(chunks.len()))
                .map(|_| {
                    let (starts, chunks, next) = (&starts, &chunks, &next);
                    s.spawn(move || {
                        let mut done = Vec::new();
                        loop {
                            let c = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&(a, b)) = chunks.get(c) else { break };
                            let r = self.replay_dirs(opts, a, b, starts, started_ns, steps);
                            let failed = r.is_err();
                            done.push((c, r));
                            if failed {
                                next.store(chunks.len(), std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                        }
                        done
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap_or_else(|_| vec![(0, Err("a stat thread panicked".into()))]))
                .collect()
        });
        results.sort_by_key(|(c, _)| *c);
        let mut changed: BTreeMap<usize, StatEntry> = BTreeMap::new();
        let mut per_step: Vec<Vec<(String, FileDigest)>> = vec![Vec::new(); steps];
        for (_, r) in results {
            let r = r?;
            changed.extend(r.changed);
            for (all, part) in per_step.iter_mut().zip(r.per_step) {
                all.extend(part);
            }
        }

        let mut snapshot = Snapshot::default();
        let mut stats = ScanStats { replayed: true, ..Default::default() };
        stats.files = self.files.iter().filter(|f| f.owners.len > 0).count() as u64;
        stats.reused = stats.files - changed.len() as u64;
        let mut updated = (!changed.is_empty() || !confirmed.is_empty()).then(|| self.clone());
        for &(k, mtime, checked) in &confirmed {
            let d = &mut updated.as_mut().expect("set when a directory was confirmed").dirs[k];
            (d.mtime_ns, d.checked_ns) = (mtime, checked);
        }
        for (&i, st) in &changed {
            stats.hashed += 1;
            stats.bytes_hashed += st.size;
            let u = &mut updated.as_mut().expect("set when something changed").files[i];
            (u.size, u.mtime_ns, u.ctime_ns, u.ino, u.exec) = (st.size, st.mtime_ns, st.ctime_ns, st.ino, st.exec);
            u.recorded_ns = st.recorded_ns;
            u.digest = unhex32(&st.digest).ok_or("bad digest")?;
            snapshot.updates.push((self.rel(i), st.clone()));
        }
        // Each thread sorted its part: a map is built from concatenated sorted runs, which its
        // (stable, run-detecting) sort merges in about one pass.
        snapshot.per_step = per_step.into_iter().map(|v| v.into_iter().collect()).collect();
        snapshot.stats = stats;
        snapshot.journal = updated;
        Ok(snapshot)
    }

    /// A recorded file's path relative to the root.
    fn rel(&self, i: usize) -> String {
        let f = &self.files[i];
        let dir = &self.dirs[f.dir as usize].rel;
        if dir.is_empty() {
            self.name(f).to_string()
        } else {
            format!("{dir}/{}", self.name(f))
        }
    }

    /// Check directories `a..b` and their files; the files that changed in place, re-hashed.
    /// Each thread also assembles its files' manifest entries (path and hex digest), so that
    /// work is spread over the threads too.
    #[allow(clippy::too_many_arguments)]
    fn replay_dirs(
        &self,
        opts: &WalkOptions,
        a: usize,
        b: usize,
        starts: &[usize],
        started_ns: i64,
        steps: usize,
    ) -> Result<Replayed, String> {
        use rustix::fs::{AtFlags, FileType, Mode, OFlags};
        let mut changed = Vec::new();
        let mut per_step: Vec<Vec<(String, FileDigest)>> = vec![Vec::new(); steps];
        let mut entry = |f: &FileRec, rel: String, digest: String, exec: bool| {
            let (last, rest) = match self.owners(f).split_last() {
                Some(x) => x,
                None => return,
            };
            for &o in rest {
                per_step[o as usize].push((rel.clone(), FileDigest { digest: digest.clone(), exec }));
            }
            per_step[*last as usize].push((rel, FileDigest { digest, exec }));
        };
        for d in a..b {
            let rec = &self.dirs[d];
            let path = if rec.rel.is_empty() { opts.root.clone() } else { opts.root.join(&rec.rel) };
            let name = if rec.rel.is_empty() { "the project root".to_string() } else { format!("{}/", rec.rel) };
            let gone = |e: rustix::io::Errno| format!("{name}: {e}");
            let fd = rustix::fs::open(&path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
                .map_err(gone)?;
            let st = rustix::fs::fstat(&fd).map_err(gone)?;
            if super::stat_fields(&st).3 != rec.ino {
                return Err(format!("{name} was replaced"));
            }
            for i in starts[d]..starts[d + 1] {
                let f = &self.files[i];
                let fname = self.name(f);
                let rel = || {
                    let mut p = String::with_capacity(rec.rel.len() + 1 + fname.len());
                    if !rec.rel.is_empty() {
                        p.push_str(&rec.rel);
                        p.push('/');
                    }
                    p.push_str(fname);
                    p
                };
                let st =
                    rustix::fs::statat(&fd, fname, AtFlags::SYMLINK_NOFOLLOW).map_err(|e| format!("{}: {e}", rel()))?;
                let kind = FileType::from_raw_mode(st.st_mode);
                if !matches!(kind, FileType::RegularFile | FileType::Symlink) {
                    return Err(format!("{} is no longer a file", rel()));
                }
                let (size, mtime_ns, ctime_ns, ino) = super::stat_fields(&st);
                let exec = kind == FileType::RegularFile && st.st_mode & 0o111 != 0;
                if size == f.size
                    && mtime_ns == f.mtime_ns
                    && ctime_ns == f.ctime_ns
                    && ino == f.ino
                    && exec == f.exec
                    && settles_ns(mtime_ns) <= f.recorded_ns
                {
                    if f.owners.len > 0 {
                        entry(f, rel(), hex32(&f.digest), f.exec);
                    }
                    continue;
                }
                if f.guard {
                    return Err(format!("ignore file {} changed", rel()));
                }
                let full = path.join(fname);
                let meta = std::fs::symlink_metadata(&full).map_err(|e| format!("{}: {e}", rel()))?;
                let (digest, _) = hash_file(&full, &meta).map_err(|e| format!("{}: {e}", rel()))?;
                let exec = !meta.file_type().is_symlink() && meta.mode() & 0o111 != 0;
                entry(f, rel(), digest.clone(), exec);
                changed.push((
                    i,
                    StatEntry {
                        size: meta.len(),
                        mtime_ns: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
                        ctime_ns: meta.ctime() * 1_000_000_000 + meta.ctime_nsec(),
                        ino: meta.ino(),
                        exec: !meta.file_type().is_symlink() && meta.mode() & 0o111 != 0,
                        digest,
                        recorded_ns: started_ns,
                    },
                ));
            }
        }
        for v in &mut per_step {
            v.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        Ok(Replayed { changed, per_step })
    }
}

/// What the replay of one run of directories found: files that changed (re-hashed), and its
/// files' manifest entries per step, each sorted by path.
struct Replayed {
    changed: Vec<(usize, StatEntry)>,
    per_step: Vec<Vec<(String, FileDigest)>>,
}

struct Reader<'a> {
    data: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.data.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{opts, write};
    use super::super::{scan, StepInputs};
    use super::*;

    fn steps() -> Vec<StepInputs> {
        vec![
            StepInputs { include: vec!["src/**".into()], ..Default::default() },
            StepInputs { include: vec!["**/*.rs".into(), "Cargo.toml".into()], ..Default::default() },
        ]
    }

    /// A tree, its first walk, and the journal aged past the racy window (as if recorded
    /// well after the files were written).
    fn recorded() -> (tempfile::TempDir, Journal, Snapshot) {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "src/a.rs", "a");
        write(r, "src/deep/b.rs", "b");
        write(r, "src/notes.md", "n");
        write(r, "Cargo.toml", "t");
        write(r, ".gitignore", "ignored/\n");
        write(r, "ignored/c.rs", "c");
        write(r, "out/d.rs", "d");
        let mut snap = scan(&opts(r), &steps(), &HashMap::new()).unwrap();
        let j = aged(snap.journal.take().expect("a walk records a journal"));
        (t, j, snap)
    }

    fn aged(mut j: Journal) -> Journal {
        j.recorded_ns += 5_000_000_000;
        for f in &mut j.files {
            f.recorded_ns += 5_000_000_000;
        }
        for d in &mut j.dirs {
            d.checked_ns += 5_000_000_000;
        }
        j
    }

    /// Set a path's mtime `secs` into the past (without following links).
    fn backdate(p: &Path, secs: i64) {
        let t = rustix::fs::Timespec { tv_sec: (now_ns() / 1_000_000_000 - secs) as _, tv_nsec: 0 };
        let times = rustix::fs::Timestamps { last_access: t, last_modification: t };
        rustix::fs::utimensat(rustix::fs::CWD, p, &times, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).unwrap();
    }

    #[test]
    fn a_directory_touched_but_holding_the_same_names_is_read_again_not_walked() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "src/a.rs", "a");
        write(r, ".gitignore", "dist/\n");
        std::fs::create_dir_all(r.join("src/dist")).unwrap();
        for p in ["src/a.rs", ".gitignore", "src/dist", "src", ""] {
            backdate(&r.join(p), 60);
        }
        let mut walked = scan(&opts(r), &steps(), &HashMap::new()).unwrap();
        let j = walked.journal.take().unwrap();
        assert!(j.dirs.iter().all(|d| d.listing != [0; 32]), "old directories get a listing");
        // A build replaces the ignored dist/ (src/ gets a new mtime, the same names).
        std::fs::remove_dir_all(r.join("src/dist")).unwrap();
        std::fs::create_dir(r.join("src/dist")).unwrap();
        backdate(&r.join("src"), 30);
        let replayed = j.replay(&opts(r), 2).expect("the same names: no walk");
        assert_eq!(replayed.per_step, walked.per_step);
        let updated = replayed.journal.expect("the new mtime is recorded");
        let again = updated.replay(&opts(r), 2).expect("still no walk");
        assert!(again.journal.is_none(), "nothing left to confirm");
        // A new name in it is a change the walk must see.
        write(r, "src/b.rs", "b");
        backdate(&r.join("src"), 20);
        assert!(updated.replay(&opts(r), 2).unwrap_err().contains("src/ changed"));
        // So is an entry whose type changed (an ignored directory becoming a file).
        std::fs::remove_file(r.join("src/b.rs")).unwrap();
        std::fs::remove_dir(r.join("src/dist")).unwrap();
        write(r, "src/dist", "now a file");
        backdate(&r.join("src"), 10);
        assert!(updated.replay(&opts(r), 2).unwrap_err().contains("src/ changed"));
    }

    #[test]
    fn replay_gives_what_the_walk_gave_without_walking() {
        let (t, j, walked) = recorded();
        let replayed = j.replay(&opts(t.path()), 2).expect("nothing changed");
        assert_eq!(replayed.per_step, walked.per_step);
        assert!(replayed.stats.replayed);
        assert_eq!((replayed.stats.files, replayed.stats.hashed), (walked.stats.files, 0));
        assert!(replayed.journal.is_none(), "nothing to save");
        assert_eq!(replayed.per_step[1].keys().collect::<Vec<_>>(), ["Cargo.toml", "src/a.rs", "src/deep/b.rs"]);
        assert_eq!(Journal::decode(&j.encode()), Some(j.clone()), "round trip");
    }

    #[test]
    fn a_file_edited_in_place_is_hashed_again_alone() {
        let (t, j, _) = recorded();
        write(t.path(), "src/deep/b.rs", "changed!");
        let replayed = j.replay(&opts(t.path()), 2).expect("directories unchanged");
        assert_eq!(replayed.stats.hashed, 1);
        let want = blake3::hash(b"changed!").to_hex().to_string();
        assert_eq!(replayed.per_step[0]["src/deep/b.rs"].digest, want);
        assert_eq!(replayed.per_step[1]["src/deep/b.rs"].digest, want);
        let updated = replayed.journal.expect("the journal changed");
        assert_eq!(updated.files.iter().filter(|f| f.digest == *blake3::hash(b"changed!").as_bytes()).count(), 1);
    }

    #[test]
    fn anything_that_can_change_the_file_set_falls_back_to_the_walk() {
        type Change = fn(&Path);
        let changes: [(&str, Change); 6] = [
            ("a new file", |r| write(r, "src/deep/new.rs", "x")),
            ("a removed file", |r| std::fs::remove_file(r.join("src/a.rs")).unwrap()),
            ("a removed directory", |r| std::fs::remove_dir_all(r.join("src/deep")).unwrap()),
            ("an edited .gitignore", |r| write(r, ".gitignore", "ignored/\nsrc/a.rs\n")),
            ("a file replaced by a directory", |r| {
                std::fs::remove_file(r.join("Cargo.toml")).unwrap();
                std::fs::create_dir(r.join("Cargo.toml")).unwrap();
            }),
            ("a .gitignore above the root", |r| write(r.parent().unwrap(), ".gitignore", "*.rs\n")),
        ];
        for (what, change) in changes {
            let parent = tempfile::tempdir().unwrap();
            let root = parent.path().join("root");
            let (t, j, _) = recorded();
            std::fs::rename(t.path(), &root).unwrap();
            // Moving the tree keeps inodes and mtimes: record it again in its new place.
            let mut snap = scan(&opts(&root), &steps(), &HashMap::new()).unwrap();
            let j2 = aged(snap.journal.take().unwrap());
            assert!(j2.replay(&opts(&root), 2).is_ok(), "{what}: unchanged tree replays");
            change(&root);
            assert!(j2.replay(&opts(&root), 2).is_err(), "{what}: must fall back to the walk");
            drop(j);
        }
    }

    #[test]
    fn recent_directories_and_foreign_journals_are_not_trusted() {
        let (t, j, _) = recorded();
        assert!(j.replay(&opts(t.path()), 1).is_err(), "owners beyond the step list");
        // Directories still racy at the walk (stamped in the future here, so whatever the
        // machine's speed) get no listing, and a replay cannot confirm them.
        let racy = tempfile::tempdir().unwrap();
        write(racy.path(), "src/deep/b.rs", "b");
        for p in ["src/deep", "src", ""] {
            backdate(&racy.path().join(p), -10);
        }
        let racy_journal = aged(scan(&opts(racy.path()), &steps(), &HashMap::new()).unwrap().journal.unwrap());
        assert!(racy_journal.dirs.iter().all(|d| d.listing == [0; 32]));
        let err = racy_journal.replay(&opts(racy.path()), 2).unwrap_err();
        assert!(err.contains("modified just before it was recorded"), "{err}");
        assert!(Journal::decode(b"CJ3\0garbage").is_none());
        let mut older = j.encode();
        older.truncate(older.len() - 32);
        older[..4].copy_from_slice(b"CJ2\0");
        let sum = blake3::hash(&older);
        older.extend_from_slice(sum.as_bytes());
        assert!(Journal::decode(&older).is_none(), "older format, with a valid checksum");
        let mut bytes = j.encode();
        bytes.pop();
        assert!(Journal::decode(&bytes).is_none(), "truncated");
        let mut bytes = j.encode();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 1;
        assert!(Journal::decode(&bytes).is_none(), "one bit flipped (a torn or damaged file)");
    }
}
