//! Outputs fingerprints: are a step's outputs still what cairn left in the worktree?
//!
//! # Design
//! A hit whose outputs are already in place is not restored: the store remembers, per step
//! and worktree, a *stat fingerprint* of the outputs it installed (blake3 over every entry's
//! path, type and permission bits, size, mtime, inode and ctime, in walk order) and compares
//! it with the outputs on disk. On a no-op that comparison is most of the work, one `lstat`
//! per output file, so it has to be cheap:
//! - directories are listed once and each entry is stat'ed through its directory's
//!   descriptor (`fstatat`), so no path is resolved from the root per file;
//! - the walk is a queue of directories. Small outputs (a `dist/` of a few hundred files)
//!   are walked by the calling thread alone; once it has stat'ed [`PARALLEL_AFTER`] entries
//!   with directories still queued, helper threads join, so one step with 60,000 output
//!   files (`deps/` and `_build/`) does not leave the other cores idle;
//! - the records are put in walk order afterwards (pre-order, names sorted bytewise in each
//!   directory), which is the order the packer fingerprints in, so a step that just ran can
//!   record the fingerprint from the packer's own stats ([`fingerprint_entry`]).
//!
//! The fingerprint also says when the newest entry *settles* ([`super::settles_ns`]): one
//! recorded before then does not vouch for the content, since a change within the same
//! timestamp granule leaves the stat unchanged.

use super::{settles_ns, stat_fields};
use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, Stat};
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// Entries the calling thread stats alone before helpers join (if directories remain).
const PARALLEL_AFTER: usize = 2048;
/// Helper threads at most, besides the calling thread.
const MAX_HELPERS: usize = 3;

/// What a fingerprint keeps of an output entry's `lstat`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FingerprintStat {
    pub size: u64,
    pub mode: u32,
    pub mtime: i64,
    pub ino: u64,
    pub ctime: i64,
}

impl FingerprintStat {
    fn of(st: &Stat) -> FingerprintStat {
        let (size, mtime, ctime, ino) = stat_fields(st);
        #[allow(clippy::unnecessary_cast)]
        let mode = st.st_mode as u32;
        FingerprintStat { size, mode, mtime, ino, ctime }
    }

    /// The same from a `symlink_metadata` (the packer walks with `std::fs`).
    pub(crate) fn of_metadata(m: &std::fs::Metadata) -> FingerprintStat {
        use std::os::unix::fs::MetadataExt;
        let ns = |s: i64, n: i64| s * 1_000_000_000 + n;
        FingerprintStat {
            size: m.len(),
            mode: m.mode(),
            mtime: ns(m.mtime(), m.mtime_nsec()),
            ino: m.ino(),
            ctime: ns(m.ctime(), m.ctime_nsec()),
        }
    }
}

/// One entry of an outputs fingerprint: [`outputs_fingerprint`] and the packer (which has
/// the stats already) write the same bytes in the same order, so a step that just ran does
/// not stat its outputs a second time.
pub(crate) fn fingerprint_entry(buf: &mut Vec<u8>, rel: &[u8], st: FingerprintStat, settles: &mut i64) {
    *settles = (*settles).max(settles_ns(st.mtime));
    buf.extend_from_slice(rel);
    buf.push(0);
    for v in [st.size, u64::from(st.mode), st.mtime as u64, st.ino, st.ctime as u64] {
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A stat fingerprint of a step's outputs as they are on disk (see the module docs), and
/// when the newest entry settles. `None` if an output is missing or unreadable.
/// Outputs written `!path` are carved out of the others (another step's outputs nested in
/// them): neither they nor what is below them are fingerprinted.
pub fn outputs_fingerprint(root: &Path, outputs: &[String]) -> Option<(String, i64)> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut settles = 0i64;
    let carve: Vec<&[u8]> = outputs
        .iter()
        .filter_map(|o| o.strip_prefix('!'))
        .map(|c| c.trim_start_matches("./").trim_end_matches('/').as_bytes())
        .collect();
    for out in outputs.iter().filter(|o| !o.starts_with('!')) {
        let name = out.trim_start_matches("./").trim_end_matches('/');
        let top = root.join(name);
        let st = rustix::fs::lstat(&top).ok()?;
        fingerprint_entry(&mut buf, name.as_bytes(), FingerprintStat::of(&st), &mut settles);
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let tree = Tree::read(top)?;
            tree.emit(0, &mut name.as_bytes().to_vec(), &mut buf, &mut settles, &carve);
        }
    }
    Some((blake3::hash(&buf).to_hex().to_string(), settles))
}

/// One entry of a listed directory.
struct Listed {
    name: CString,
    stat: FingerprintStat,
    /// The directory's own listing, when the entry is one.
    child: Option<usize>,
}

/// Every directory of one output, listed and stat'ed; `dirs[0]` is the output itself.
struct Tree {
    dirs: Vec<Vec<Listed>>,
}

/// The walk's shared state: listings so far, directories still to list, and how many are
/// being listed right now (the walk is over when none are queued or in progress).
struct Walk {
    dirs: Vec<Option<Vec<Listed>>>,
    queue: Vec<(usize, PathBuf)>,
    busy: usize,
    failed: bool,
    helpers: usize,
}

impl Tree {
    fn read(top: PathBuf) -> Option<Tree> {
        let walk = Mutex::new(Walk { dirs: vec![None], queue: vec![(0, top)], busy: 0, failed: false, helpers: 0 });
        let wake = Condvar::new();
        std::thread::scope(|s| {
            let mut stated = 0usize;
            work(&walk, &wake, |n| {
                // The calling thread: after enough entries, with directories still queued,
                // helpers join.
                stated += n;
                if stated < PARALLEL_AFTER {
                    return;
                }
                let mut w = walk.lock().unwrap_or_else(|p| p.into_inner());
                if w.helpers > 0 || w.queue.is_empty() {
                    return;
                }
                let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
                w.helpers = (cores - 1).min(MAX_HELPERS);
                for _ in 0..w.helpers {
                    s.spawn(|| work(&walk, &wake, |_| {}));
                }
            });
        });
        let w = walk.into_inner().unwrap_or_else(|p| p.into_inner());
        if w.failed {
            return None;
        }
        Some(Tree { dirs: w.dirs.into_iter().collect::<Option<Vec<_>>>()? })
    }

    /// Write directory `dir`'s entries, and their subtrees, in walk order.
    fn emit(&self, dir: usize, rel: &mut Vec<u8>, buf: &mut Vec<u8>, settles: &mut i64, carve: &[&[u8]]) {
        for e in &self.dirs[dir] {
            let len = rel.len();
            rel.push(b'/');
            rel.extend_from_slice(e.name.to_bytes());
            if carve.is_empty() || !carve.contains(&rel.as_slice()) {
                fingerprint_entry(buf, rel, e.stat, settles);
                if let Some(child) = e.child {
                    self.emit(child, rel, buf, settles, carve);
                }
            }
            rel.truncate(len);
        }
    }
}

/// List directories from the queue until the walk is over; `listed(n)` after each one
/// (with its entry count).
fn work(walk: &Mutex<Walk>, wake: &Condvar, mut listed: impl FnMut(usize)) {
    loop {
        let (idx, path) = {
            let mut w = walk.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if w.failed {
                    return;
                }
                if let Some(task) = w.queue.pop() {
                    w.busy += 1;
                    break task;
                }
                if w.busy == 0 {
                    wake.notify_all();
                    return;
                }
                w = wake.wait(w).unwrap_or_else(|p| p.into_inner());
            }
        };
        let result = list(&path);
        let mut w = walk.lock().unwrap_or_else(|p| p.into_inner());
        w.busy -= 1;
        let n = match result {
            None => {
                w.failed = true;
                0
            }
            Some((mut entries, subdirs)) => {
                for (pos, sub) in subdirs {
                    let child = w.dirs.len();
                    w.dirs.push(None);
                    entries[pos].child = Some(child);
                    w.queue.push((child, sub));
                }
                let n = entries.len();
                w.dirs[idx] = Some(entries);
                n
            }
        };
        wake.notify_all();
        drop(w);
        listed(n);
    }
}

/// One directory's entries (names sorted bytewise, each `lstat`ed through the directory's
/// descriptor) and the subdirectories to list next (position among the entries, path).
#[allow(clippy::type_complexity)]
fn list(path: &Path) -> Option<(Vec<Listed>, Vec<(usize, PathBuf)>)> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC | OFlags::NOFOLLOW;
    let fd = rustix::fs::open(path, flags, Mode::empty()).ok()?;
    let mut names: Vec<CString> = Vec::new();
    for e in Dir::read_from(&fd).ok()? {
        let e = e.ok()?;
        let n = e.file_name();
        if n.to_bytes() != b"." && n.to_bytes() != b".." {
            names.push(n.to_owned());
        }
    }
    names.sort_unstable();
    let mut entries = Vec::with_capacity(names.len());
    let mut subdirs = Vec::new();
    for name in names {
        let st = rustix::fs::statat(&fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW).ok()?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = path.join(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name.to_bytes()));
            subdirs.push((entries.len(), sub));
        }
        entries.push(Listed { name, stat: FingerprintStat::of(&st), child: None });
    }
    Some((entries, subdirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fingerprint as the walk used to take it: recursively, one directory at a time.
    fn sequential(root: &Path, outputs: &[String]) -> Option<(String, i64)> {
        fn visit(dir: &Path, rel: &mut Vec<u8>, buf: &mut Vec<u8>, settles: &mut i64) -> Option<()> {
            let mut names: Vec<_> = std::fs::read_dir(dir).ok()?.map(|e| e.unwrap().file_name()).collect();
            names.sort();
            for n in names {
                let p = dir.join(&n);
                let st = rustix::fs::lstat(&p).ok()?;
                let len = rel.len();
                rel.push(b'/');
                rel.extend_from_slice(n.as_encoded_bytes());
                fingerprint_entry(buf, rel, FingerprintStat::of(&st), settles);
                if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                    visit(&p, rel, buf, settles)?;
                }
                rel.truncate(len);
            }
            Some(())
        }
        let (mut buf, mut settles) = (Vec::new(), 0);
        for out in outputs {
            let name = out.trim_end_matches('/');
            let st = rustix::fs::lstat(root.join(name)).ok()?;
            fingerprint_entry(&mut buf, name.as_bytes(), FingerprintStat::of(&st), &mut settles);
            if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
                visit(&root.join(name), &mut name.as_bytes().to_vec(), &mut buf, &mut settles)?;
            }
        }
        Some((blake3::hash(&buf).to_hex().to_string(), settles))
    }

    #[test]
    fn a_large_output_walked_by_several_threads_fingerprints_as_one_walk_does() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path();
        // Enough entries for helpers to join, in nested directories whose names sort
        // differently as paths and as strings (`b` / `b.txt`).
        for d in 0..40 {
            for sub in ["b", "b/deep", "c"] {
                let dir = root.join(format!("deps/pkg{d:02}/{sub}"));
                std::fs::create_dir_all(&dir).unwrap();
                for f in 0..30 {
                    std::fs::write(dir.join(format!("f{f}")), format!("{d}{sub}{f}")).unwrap();
                }
            }
            std::fs::write(root.join(format!("deps/pkg{d:02}/b.txt")), "x").unwrap();
        }
        std::os::unix::fs::symlink("pkg00", root.join("deps/link")).unwrap();
        std::fs::write(root.join("top.txt"), "t").unwrap();
        let outs = vec!["deps/".to_string(), "top.txt".to_string()];
        let fp = outputs_fingerprint(root, &outs).unwrap();
        assert_eq!(Some(fp.clone()), sequential(root, &outs));
        assert_eq!(Some(fp.clone()), outputs_fingerprint(root, &outs), "stable");
        // Any change anywhere changes it.
        std::fs::write(root.join("deps/pkg33/b/deep/f7"), "changed!").unwrap();
        let changed = outputs_fingerprint(root, &outs).unwrap();
        assert_ne!(changed.0, fp.0);
        assert_eq!(Some(changed), sequential(root, &outs));
        // A missing output, or one that vanished, gives no fingerprint.
        assert!(outputs_fingerprint(root, &["nope/".to_string()]).is_none());
        std::fs::remove_dir_all(root.join("deps/pkg12")).unwrap();
        assert_eq!(outputs_fingerprint(root, &outs), sequential(root, &outs));
    }
}
