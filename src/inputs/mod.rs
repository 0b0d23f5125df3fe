//! Reading the source tree: one parallel walk for all steps, glob matching, `.gitignore`,
//! and content digests with a stat cache.
//!
//! # Design
//! - **One walk** of the project root serves every step: a single [`globset::GlobSet`] holds
//!   every step's include globs, and each match is mapped back to the steps that own the glob.
//!   Directories that are declared outputs (`deps/`, `_build/`), `.git`, the store and cairn's
//!   staging directory are pruned without being entered: outputs reach dependents through
//!   their archive digest, never as inputs.
//! - **The stat cache** maps `(root, path)` to `(size, mtime, ctime, inode, exec) → digest`.
//!   A file whose stat is unchanged is not read again. Like git's "racy clean" rule, a cached
//!   digest is trusted only if the file's mtime had settled ([`settles_ns`]: one timestamp
//!   granule, 50 ms on filesystems with sub-second stamps, 2 s on whole-second ones) when it
//!   was hashed: a file modified within the same granule as the hashing could have changed
//!   without changing its stat, so it is hashed again.
//! - Hashing happens in the walker's threads (one file per thread), which is what pays on
//!   many small files.

pub mod fingerprint;
pub mod journal;

pub use fingerprint::outputs_fingerprint;
pub(crate) use fingerprint::{fingerprint_entry, FingerprintStat};

use crate::plan::key::FileDigest;
use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Phase timings on stderr when `CAIRN_TIMINGS` is set (for performance work).
pub fn timing(label: &str, since: std::time::Instant) {
    if std::env::var_os("CAIRN_TIMINGS").is_some() {
        eprintln!("cairn timing: {label:<24} {:>8.1} ms", since.elapsed().as_secs_f64() * 1000.0);
    }
}

/// How long a timestamp stays "open": a change made that long after a file's last
/// modification may still be stamped with the same mtime, so a stat taken within it cannot
/// vouch for the content (git's "racy clean" problem).
///
/// It is the filesystem's timestamp granularity, read off the timestamp itself. Filesystems
/// with sub-second timestamps (ext4, xfs, btrfs, tmpfs, APFS; exFAT at 10 ms) stamp from the
/// kernel's coarse clock, which moves once per scheduler tick (at most 10 ms): 50 ms covers
/// them with room. Ones that keep whole seconds (ext3, HFS+) or two (FAT) show a zero
/// sub-second part: 2 s. (A sub-second filesystem stamps a zero part once in 10⁹ files,
/// which then merely waits the longer window.)
pub fn racy_window_ns(mtime_ns: i64) -> i64 {
    if mtime_ns.rem_euclid(1_000_000_000) == 0 {
        2_000_000_000
    } else {
        50_000_000
    }
}

/// When a file (or directory) modified at `mtime_ns` stops being racy: a stat taken from
/// then on vouches for its content.
pub fn settles_ns(mtime_ns: i64) -> i64 {
    mtime_ns.saturating_add(racy_window_ns(mtime_ns))
}

/// What the stat cache remembers of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatEntry {
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub ino: u64,
    pub exec: bool,
    pub digest: String,
    /// When the digest was computed (ns since the epoch).
    pub recorded_ns: i64,
}

/// Which files each step reads.
#[derive(Debug, Clone, Default)]
pub struct StepInputs {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Files git ignores that the step reads when they exist (see [`add_untracked`]).
    pub untracked: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct WalkOptions {
    pub root: PathBuf,
    pub gitignore: bool,
    /// Relative directories or files never entered (declared outputs, staging).
    pub prune: Vec<String>,
    /// Absolute directories never entered (the store).
    pub prune_abs: Vec<PathBuf>,
    pub threads: usize,
}

pub use cairn_core::events::ScanStats;

/// The result of one scan.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Per step (same order as the request): relative path → digest.
    pub per_step: Vec<BTreeMap<String, FileDigest>>,
    /// Stat-cache rows to write back (new or changed).
    pub updates: Vec<(String, StatEntry)>,
    pub stats: ScanStats,
    /// What this scan saw, for the next run's fast path; `None` when the journal did not change.
    pub journal: Option<journal::Journal>,
}

#[derive(Debug, thiserror::Error)]
pub enum InputError {
    #[error("invalid glob `{glob}`: {source}")]
    Glob { glob: String, source: globset::Error },
    #[error("cannot read input {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
}

fn glob(g: &str) -> Result<Glob, InputError> {
    GlobBuilder::new(g)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
        .map_err(|source| InputError::Glob { glob: g.to_string(), source })
}

/// A glob that also matches everything below a directory it names (`lib` → `lib/**`).
fn include_globs(g: &str) -> Vec<String> {
    let g = g.trim_start_matches("./");
    if g.ends_with('/') {
        vec![format!("{g}**")]
    } else if g.contains(['*', '?', '[', '{']) {
        vec![g.to_string()]
    } else {
        vec![g.to_string(), format!("{g}/**")]
    }
}

/// A digest's 64 lowercase hex characters as 32 bytes; `None` if it is not one.
pub(crate) fn unhex32(s: &str) -> Option<[u8; 32]> {
    let b = s.as_bytes();
    if b.len() != 64 {
        return None;
    }
    let v = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = v(b[2 * i])? << 4 | v(b[2 * i + 1])?;
    }
    Some(out)
}

/// 32 bytes as 64 lowercase hex characters.
pub(crate) fn hex32(d: &[u8; 32]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(64);
    for byte in d {
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 15) as usize] as char);
    }
    s
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// Digest a file (or a symlink, by its target) and report whether it is executable.
pub fn hash_file(path: &Path, meta: &std::fs::Metadata) -> std::io::Result<(String, bool)> {
    if meta.file_type().is_symlink() {
        let target = std::fs::read_link(path)?;
        let mut h = blake3::Hasher::new();
        h.update(b"symlink\0");
        h.update(target.as_os_str().as_encoded_bytes());
        return Ok((h.finalize().to_hex().to_string(), false));
    }
    let mut h = blake3::Hasher::new();
    let file = std::fs::File::open(path)?;
    if meta.len() > 16 * 1024 * 1024 {
        h.update_mmap(path)?;
    } else {
        h.update_reader(file)?;
    }
    Ok((h.finalize().to_hex().to_string(), meta.mode() & 0o111 != 0))
}

/// Add each step's `untracked` files to its inputs: files git ignores (a developer's
/// `config/local.exs`) that the step reads when present. The walk never sees them; here a
/// literal path is looked at directly and a glob below its fixed directory, whatever git
/// ignores, and every regular file found is hashed into the step's key. Absent, they add
/// nothing, so a checkout without one never hits an entry made with one.
pub fn add_untracked(
    root: &Path,
    steps: &[StepInputs],
    per_step: &mut [BTreeMap<String, FileDigest>],
) -> Result<(), InputError> {
    for (s, inputs) in steps.iter().enumerate() {
        for g in &inputs.untracked {
            let g = g.trim_start_matches("./");
            let fixed: String = match g.find(['*', '?', '[', '{']) {
                None => {
                    let path = root.join(g);
                    match std::fs::symlink_metadata(&path) {
                        Ok(meta) if meta.is_file() => {
                            let (digest, exec) =
                                hash_file(&path, &meta).map_err(|source| InputError::Read { path, source })?;
                            per_step[s].insert(g.to_string(), FileDigest { digest, exec });
                        }
                        _ => {}
                    }
                    continue;
                }
                Some(i) => g[..i].rsplit_once('/').map(|(d, _)| d.to_string()).unwrap_or_default(),
            };
            let matcher = glob(g)?.compile_matcher();
            for e in walkdir::WalkDir::new(root.join(&fixed)).follow_links(false).into_iter().flatten() {
                if !e.file_type().is_file() {
                    continue;
                }
                let Some(rel) = e.path().strip_prefix(root).ok().and_then(|r| r.to_str()) else { continue };
                if rel.starts_with(".git/") || !matcher.is_match(rel) {
                    continue;
                }
                let meta = e.metadata().map_err(|e| InputError::Read { path: root.join(rel), source: e.into() })?;
                let (digest, exec) = hash_file(e.path(), &meta)
                    .map_err(|source| InputError::Read { path: e.path().to_path_buf(), source })?;
                per_step[s].insert(rel.to_string(), FileDigest { digest, exec });
            }
        }
    }
    Ok(())
}

/// Walk `opts.root` once and digest every file some step includes.
pub fn scan(
    opts: &WalkOptions,
    steps: &[StepInputs],
    stat_cache: &HashMap<String, StatEntry>,
) -> Result<Snapshot, InputError> {
    scan_inner(opts, steps, stat_cache, &[String::new()])
}

/// The directories a walk for `include` globs must cover (relative; `""`: the whole root):
/// each glob's leading literal directories (`packages/p017/**` → `packages/p017`, a literal
/// path → its directory). Nested ones are folded into the outer.
pub fn walk_bases(include: &[String]) -> Vec<String> {
    let mut bases: Vec<String> = Vec::new();
    for g in include.iter().filter(|g| !g.starts_with('!')) {
        let dir = g.ends_with('/');
        let g = g.trim_start_matches("./").trim_end_matches('/');
        let parts: Vec<&str> = g.split('/').collect();
        let literal = parts.iter().take_while(|p| !p.contains(['*', '?', '[', '{', '\\'])).count();
        // A literal path may be a file (unless written `dir/`): walk its directory.
        let keep = if literal == parts.len() && !dir { literal - 1 } else { literal };
        bases.push(parts[..keep].join("/"));
    }
    bases.sort();
    bases.dedup();
    let mut out: Vec<String> = Vec::new();
    for b in bases {
        if !out.iter().any(|o| o.is_empty() || b == *o || b.starts_with(&format!("{o}/"))) {
            out.push(b);
        }
    }
    if out.iter().any(String::is_empty) || out.is_empty() {
        return vec![String::new()];
    }
    out
}

/// [`scan`], walking only below `bases` (see [`walk_bases`]): what a step's own inputs
/// need, at the cost of its part of the tree. No journal comes of it.
pub fn scan_within(
    opts: &WalkOptions,
    steps: &[StepInputs],
    stat_cache: &HashMap<String, StatEntry>,
    bases: &[String],
) -> Result<Snapshot, InputError> {
    let mut snap = scan_inner(opts, steps, stat_cache, bases)?;
    if bases.iter().any(|b| !b.is_empty()) {
        snap.journal = None;
    }
    Ok(snap)
}

fn scan_inner(
    opts: &WalkOptions,
    steps: &[StepInputs],
    stat_cache: &HashMap<String, StatEntry>,
    bases: &[String],
) -> Result<Snapshot, InputError> {
    let mut builder = GlobSetBuilder::new();
    let mut owner: Vec<usize> = Vec::new();
    let mut excludes: Vec<GlobSet> = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        for g in &s.include {
            if g.starts_with('!') {
                continue; // a negated include is an exclude, below
            }
            for expanded in include_globs(g) {
                builder.add(glob(&expanded)?);
                owner.push(i);
            }
        }
        let mut ex = GlobSetBuilder::new();
        let negated = s.include.iter().filter_map(|g| g.strip_prefix('!'));
        for g in s.exclude.iter().map(String::as_str).chain(negated) {
            for expanded in include_globs(g) {
                ex.add(glob(&expanded)?);
            }
        }
        excludes.push(ex.build().map_err(|source| InputError::Glob { glob: "(excludes)".into(), source })?);
    }
    let includes = builder.build().map_err(|source| InputError::Glob { glob: "(includes)".into(), source })?;

    let started_ns = now_ns();
    let prune: Vec<String> = opts.prune.iter().map(|p| p.trim_end_matches('/').to_string()).collect();
    let prune_abs = opts.prune_abs.clone();
    let root = opts.root.clone();

    /// One matched file: its path, what it is now, the steps that read it, whether it was hashed.
    struct Found {
        rel: String,
        stat: StatEntry,
        owners: Vec<usize>,
        hashed: bool,
    }
    #[derive(Default)]
    struct Local {
        files: Vec<Found>,
        dirs: Vec<journal::DirRec>,
        guards: Vec<(String, StatEntry)>,
    }
    let collected: Mutex<Local> = Mutex::new(Local::default());
    let first_error: Mutex<Option<InputError>> = Mutex::new(None);

    let starts: Vec<PathBuf> = bases.iter().map(|b| if b.is_empty() { root.clone() } else { root.join(b) }).collect();
    let mut wb = ignore::WalkBuilder::new(&starts[0]);
    for extra in &starts[1..] {
        wb.add(extra);
    }
    wb.hidden(false)
        .git_ignore(opts.gitignore)
        .git_exclude(opts.gitignore)
        .git_global(false)
        .ignore(opts.gitignore)
        .parents(opts.gitignore)
        .require_git(false)
        .follow_links(false)
        .threads(opts.threads.max(1));
    {
        let root = root.clone();
        wb.filter_entry(move |e| {
            let Ok(rel) = e.path().strip_prefix(&root) else { return true };
            let rel = rel.to_string_lossy();
            if rel == ".git" || rel == ".cairn-tmp" {
                return false;
            }
            if prune.iter().any(|p| *p == rel) {
                return false;
            }
            !prune_abs.iter().any(|p| e.path() == p)
        });
    }
    wb.build_parallel().run(|| {
        let includes = &includes;
        let excludes = &excludes;
        let owner = &owner;
        let root = &root;
        let first_error = &first_error;
        struct Flush<'a>(&'a Mutex<Local>, Local);
        impl Drop for Flush<'_> {
            fn drop(&mut self) {
                let mut all = self.0.lock().expect("no poisoning");
                all.files.append(&mut self.1.files);
                all.dirs.append(&mut self.1.dirs);
                all.guards.append(&mut self.1.guards);
            }
        }
        let mut flush = Flush(&collected, Local::default());
        let fail = move |path: &Path, source: std::io::Error| {
            first_error
                .lock()
                .expect("no poisoning")
                .get_or_insert(InputError::Read { path: path.to_path_buf(), source });
            ignore::WalkState::Quit
        };
        Box::new(move |entry| {
            let entry = match entry {
                Ok(e) => e,
                Err(_) => return ignore::WalkState::Continue,
            };
            let Some(ft) = entry.file_type() else { return ignore::WalkState::Continue };
            let Ok(rel) = entry.path().strip_prefix(root) else { return ignore::WalkState::Continue };
            let Some(rel) = rel.to_str() else { return ignore::WalkState::Continue };
            if ft.is_dir() {
                // Stat the directory before the walker reads it: an entry added or removed
                // afterwards changes its mtime, so the journal sees it next time.
                match std::fs::symlink_metadata(entry.path()) {
                    Ok(m) => flush.1.dirs.push(journal::DirRec {
                        rel: rel.to_string(),
                        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
                        ino: m.ino(),
                        listing: [0; 32],
                        checked_ns: 0,
                    }),
                    Err(source) => return fail(entry.path(), source),
                }
                return ignore::WalkState::Continue;
            }
            let hits = includes.matches(rel);
            let mut steps: Vec<usize> =
                hits.iter().map(|&h| owner[h]).filter(|&s| !excludes[s].is_match(rel)).collect();
            steps.sort_unstable();
            steps.dedup();
            let guard = matches!(entry.file_name().to_str(), Some(".gitignore" | ".ignore"));
            if steps.is_empty() && !guard {
                return ignore::WalkState::Continue;
            }
            let meta = match std::fs::symlink_metadata(entry.path()) {
                Ok(m) => m,
                Err(source) => return fail(entry.path(), source),
            };
            let mtime_ns = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
            let ctime_ns = meta.ctime() * 1_000_000_000 + meta.ctime_nsec();
            let exec = !ft.is_symlink() && meta.mode() & 0o111 != 0;
            let mut stat = StatEntry {
                size: meta.len(),
                mtime_ns,
                ctime_ns,
                ino: meta.ino(),
                exec,
                digest: String::new(),
                recorded_ns: started_ns,
            };
            if steps.is_empty() {
                // An ignore file no step reads: the journal watches it all the same.
                flush.1.guards.push((rel.to_string(), stat));
                return ignore::WalkState::Continue;
            }
            if let Some(c) = stat_cache.get(rel) {
                if c.size == stat.size
                    && c.mtime_ns == mtime_ns
                    && c.ctime_ns == ctime_ns
                    && c.ino == stat.ino
                    && c.exec == exec
                    && settles_ns(mtime_ns) <= c.recorded_ns
                {
                    stat.digest = c.digest.clone();
                    stat.recorded_ns = c.recorded_ns;
                    flush.1.files.push(Found { rel: rel.to_string(), stat, owners: steps, hashed: false });
                    return ignore::WalkState::Continue;
                }
            }
            match hash_file(entry.path(), &meta) {
                Ok((digest, _)) => {
                    stat.digest = digest;
                    flush.1.files.push(Found { rel: rel.to_string(), stat, owners: steps, hashed: true });
                    ignore::WalkState::Continue
                }
                Err(source) => fail(entry.path(), source),
            }
        })
    });
    if let Some(e) = first_error.into_inner().expect("no poisoning") {
        return Err(e);
    }
    let collected = collected.into_inner().expect("no poisoning");
    let mut snapshot = Snapshot { per_step: vec![BTreeMap::new(); steps.len()], ..Default::default() };
    let mut files = Vec::with_capacity(collected.files.len());
    for f in collected.files {
        snapshot.stats.files += 1;
        if f.hashed {
            snapshot.stats.hashed += 1;
            snapshot.stats.bytes_hashed += f.stat.size;
        } else {
            snapshot.stats.reused += 1;
        }
        for &s in &f.owners {
            snapshot.per_step[s].insert(f.rel.clone(), FileDigest { digest: f.stat.digest.clone(), exec: f.stat.exec });
        }
        if f.hashed {
            snapshot.updates.push((f.rel.clone(), f.stat.clone()));
        }
        files.push((f.rel, f.stat, f.owners));
    }
    snapshot.journal = journal::Journal::new(opts, started_ns, collected.dirs, files, collected.guards);
    Ok(snapshot)
}

/// `(size, mtime ns, ctime ns, inode)` of a `stat` (the field types differ between platforms).
#[allow(clippy::unnecessary_cast)]
pub(crate) fn stat_fields(st: &rustix::fs::Stat) -> (u64, i64, i64, u64) {
    (
        st.st_size as u64,
        st.st_mtime as i64 * 1_000_000_000 + st.st_mtime_nsec as i64,
        st.st_ctime as i64 * 1_000_000_000 + st.st_ctime_nsec as i64,
        st.st_ino as u64,
    )
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(crate) fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub(crate) fn opts(root: &Path) -> WalkOptions {
        WalkOptions { root: root.into(), gitignore: true, prune: vec!["out".into()], prune_abs: vec![], threads: 2 }
    }

    #[test]
    fn walk_bases_are_each_globs_literal_directories() {
        let b = |g: &[&str]| walk_bases(&g.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(b(&["packages/p017/**", "packages/p017/package.json"]), ["packages/p017"]);
        assert_eq!(b(&["lib/**", "config/*.exs", "mix.exs", "!lib/x/**"]), [""]);
        assert_eq!(b(&["lib/**", "config/*.exs", "test/"]), ["config", "lib", "test"]);
        assert_eq!(b(&["**/*.rs"]), [""]);
        assert_eq!(b(&[]), [""]);
    }

    #[test]
    fn globs_excludes_gitignore_and_pruned_outputs() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "src/a.rs", "a");
        write(r, "src/b.md", "b");
        write(r, "src/gen/c.rs", "c");
        write(r, "ignored.rs", "x");
        write(r, ".gitignore", "ignored.rs\n");
        write(r, "out/d.rs", "d");
        write(r, "Cargo.toml", "t");
        let steps = vec![
            StepInputs {
                include: vec!["src/**".into(), "!**/*.md".into()],
                exclude: vec!["src/gen/".into()],
                ..Default::default()
            },
            StepInputs { include: vec!["**/*.rs".into(), "Cargo.toml".into()], ..Default::default() },
        ];
        let snap = scan(&opts(r), &steps, &HashMap::new()).unwrap();
        assert_eq!(snap.per_step[0].keys().collect::<Vec<_>>(), ["src/a.rs"]);
        assert_eq!(snap.per_step[1].keys().collect::<Vec<_>>(), ["Cargo.toml", "src/a.rs", "src/gen/c.rs"]);
        assert_eq!(snap.per_step[1]["src/a.rs"].digest, blake3::hash(b"a").to_hex().to_string());
    }

    #[test]
    fn stat_cache_skips_unchanged_files_but_rehashes_racy_ones() {
        let t = tempfile::tempdir().unwrap();
        let r = t.path();
        write(r, "a.txt", "one");
        let steps = vec![StepInputs { include: vec!["*.txt".into()], ..Default::default() }];
        let first = scan(&opts(r), &steps, &HashMap::new()).unwrap();
        assert_eq!(first.stats.hashed, 1);
        // Hashed within its timestamp's granule (10 ms after a sub-second mtime): the row is
        // racy and the file is hashed again.
        let mut cache: HashMap<String, StatEntry> = first.updates.into_iter().collect();
        let row = cache.get_mut("a.txt").unwrap();
        row.recorded_ns = row.mtime_ns + 10_000_000;
        assert_ne!(row.mtime_ns % 1_000_000_000, 0, "this filesystem stamps sub-second mtimes");
        let second = scan(&opts(r), &steps, &cache).unwrap();
        assert_eq!(second.stats.hashed, 1, "a file modified in the racy window is re-hashed");
        // A row recorded well after the mtime is trusted...
        let mut cache: HashMap<String, StatEntry> = second.updates.into_iter().collect();
        cache.get_mut("a.txt").unwrap().recorded_ns += 5_000_000_000;
        let third = scan(&opts(r), &steps, &cache).unwrap();
        assert_eq!((third.stats.hashed, third.stats.reused), (0, 1));
        // ...until the file changes (size differs here).
        write(r, "a.txt", "two!");
        let fourth = scan(&opts(r), &steps, &cache).unwrap();
        assert_eq!(fourth.stats.hashed, 1);
        assert_eq!(fourth.per_step[0]["a.txt"].digest, blake3::hash(b"two!").to_hex().to_string());
    }

    #[test]
    fn the_racy_window_is_the_timestamp_granularity() {
        let sub_second = 1_700_000_000_123_456_789;
        assert_eq!(settles_ns(sub_second), sub_second + 50_000_000);
        let whole_second = 1_700_000_000_000_000_000; // ext3, HFS+, FAT: wait out a FAT granule
        assert_eq!(settles_ns(whole_second), whole_second + 2_000_000_000);
        assert_eq!(settles_ns(i64::MAX), i64::MAX, "no overflow on absurd mtimes");
    }
}
