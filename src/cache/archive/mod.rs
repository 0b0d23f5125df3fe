//! The archive format of one cache entry, and its hardened extractor.
//!
//! An entry is one zstd-compressed tar stream: the step's logs as `.cairn/stdout` and
//! `.cairn/stderr` (first, so a replay reads only the start), then its declared outputs (paths
//! relative to the project root). It is
//! **canonical**: entries sorted by path, GNU headers, owner 0:0, mtime 0, only permission
//! bits kept (setuid/setgid/sticky dropped) — identical outputs give identical bytes.
//!
//! Two digests come out of packing: the blob digest (blake3 of the compressed bytes, the
//! blob's name, verified on every restore) and the **outputs digest** (blake3 of the tar bytes
//! of the outputs alone, without logs), which dependents hash for early cutoff.
//!
//! Extraction trusts nothing in the archive. It writes only into a fresh staging directory and
//! refuses: absolute paths, `..`, non-UTF-8 names, hard links, devices, FIFOs and unknown
//! types, symlinks whose target is absolute or resolves outside the root, anything created
//! through a symlink, duplicate entries, and archives over the byte or entry budget. The
//! blob's digest is checked when the stream ends; the caller swaps staging into place only
//! after everything passed.

use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

mod compare;
mod install;
pub mod linked;
mod links;
mod unpack;

pub use compare::{changed_since, differences, find_in_outputs, first_difference};
pub use install::{install, linked_ancestor, remove_any};
use links::check_links;
pub use links::LinkRules;
pub use unpack::{open_blob, read_logs, unpack, Unpacked};

/// Where logs live inside an archive.
pub const LOG_STDOUT: &str = ".cairn/stdout";
pub const LOG_STDERR: &str = ".cairn/stderr";

/// Limits that protect restores from archive bombs.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_bytes: u64,
    pub max_entries: u64,
    pub max_log_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_bytes: 256 << 30, max_entries: 5_000_000, max_log_bytes: 256 << 20 }
    }
}

impl Limits {
    /// The limits of a restore into `root`: `CAIRN_RESTORE_MAX_BYTES` (default 64 GiB) and
    /// `CAIRN_RESTORE_MAX_ENTRIES` (default 2,000,000), and never more bytes than the
    /// filesystem of `root` has free (less 1 GiB), so a bomb stops before the disk is full.
    pub fn for_restore(root: &Path) -> Limits {
        let num = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
        let mut max_bytes = num("CAIRN_RESTORE_MAX_BYTES", 64 << 30);
        if let Ok(st) = rustix::fs::statvfs(root) {
            let free = st.f_bavail.saturating_mul(st.f_frsize);
            max_bytes = max_bytes.min(free.saturating_sub(1 << 30).max(1 << 20));
        }
        Limits { max_bytes, max_entries: num("CAIRN_RESTORE_MAX_ENTRIES", 2_000_000), ..Limits::default() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("declared output `{0}` was not produced")]
    MissingOutput(String),
    #[error("output `{path}` is a {kind}, which cannot be cached")]
    Unsupported { path: String, kind: &'static str },
    #[error("archive entry `{entry}` refused: {problem}")]
    Unsafe { entry: String, problem: String },
    #[error("output `{0}` changed while it was being stored (is a process the step started still writing?)")]
    ChangedWhilePacking(String),
    #[error("interrupted")]
    Interrupted,
    #[error("blob digest mismatch: expected {expected}, found {found}")]
    Digest { expected: String, found: String },
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
}

impl ArchiveError {
    /// Does this error mean the blob itself is bad (missing, unreadable as an archive,
    /// hostile, or not matching its digest), rather than the local disk failing?
    pub fn is_bad_blob(&self) -> bool {
        match self {
            ArchiveError::Digest { .. } | ArchiveError::Unsafe { .. } => true,
            ArchiveError::Io { context, source } => {
                (context.starts_with("opening blob")
                    && (matches!(source.kind(), io::ErrorKind::NotFound | io::ErrorKind::InvalidData)
                        || source.raw_os_error() == Some(libc::ELOOP)))
                    || context.starts_with("reading")
                    || context.starts_with("starting zstd")
            }
            _ => false,
        }
    }
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

fn unsafe_entry(entry: &str, problem: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe { entry: entry.to_string(), problem: problem.into() }
}

/// How much of a tar stream is gathered before it is hashed and compressed.
const STREAM_BUFFER: usize = 256 << 10;

/// A writer that hashes what passes through; hashing can be switched off.
struct Hashing<W> {
    inner: W,
    hasher: Option<blake3::Hasher>,
    count: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes what passes through.
struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// The stat fingerprint of outputs (see [`crate::inputs::outputs_fingerprint`]) taken from
/// the packer's own stats.
#[derive(Debug, Clone)]
pub struct PackedFingerprint {
    pub digest: String,
    /// When the newest output settles ([`crate::inputs::settles_ns`]).
    pub settles_ns: i64,
    /// When the fingerprint counts as recorded for the racy check: after the last read if
    /// every file was read once it had settled (a later change then moves its mtime, so the
    /// stat shows it), else before the first stat (racy: a check will read the content).
    pub recorded_ns: i64,
}

/// A packed entry, written to a temporary file.
#[derive(Debug)]
pub struct Packed {
    pub tmp_path: PathBuf,
    pub blob_digest: String,
    pub outputs_digest: String,
    pub blob_size: u64,
    pub files: u64,
    pub raw_bytes: u64,
    /// Total size of the logs (0: a hit has nothing to replay and needn't open the blob).
    pub log_bytes: u64,
    /// The outputs' stat fingerprint as packed; `None` for an archive that was not packed
    /// here (fetched from a remote).
    pub fingerprint: Option<PackedFingerprint>,
}

enum Kind {
    Dir,
    File,
    Symlink(PathBuf),
}

struct Item {
    rel: String,
    abs: PathBuf,
    kind: Kind,
    mode: u32,
    size: u64,
    /// The entry's `lstat`, as an outputs fingerprint keeps it.
    stat: crate::inputs::FingerprintStat,
}

impl Item {
    fn new(rel: &str, abs: PathBuf, kind: Kind, meta: &fs::Metadata) -> Item {
        let stat = crate::inputs::FingerprintStat::of_metadata(meta);
        let (mode, size) = match kind {
            Kind::Symlink(_) => (0o777, 0),
            Kind::File => (meta.mode() & 0o777, meta.len()),
            Kind::Dir => (meta.mode() & 0o777, 0),
        };
        Item { rel: rel.to_string(), abs, kind, mode, size, stat }
    }
}

/// A step's outputs as the graph gives them ([`crate::plan::Node::outputs`]): the paths to
/// walk, and the paths carved out of them (`!path`, another step's outputs nested inside).
pub fn split_outputs(outputs: &[String]) -> (Vec<String>, Vec<String>) {
    let (mut walk, mut carve) = (Vec::new(), Vec::new());
    for o in outputs {
        match o.strip_prefix('!') {
            Some(c) => carve.push(normalize_output(c)),
            None => walk.push(normalize_output(o)),
        }
    }
    (walk, carve)
}

fn collect(root: &Path, rel: &str, out: &mut Vec<Item>, carve: &[String]) -> Result<(), ArchiveError> {
    if !carve.is_empty() && carve.iter().any(|c| c == rel) {
        return Ok(()); // another step's output
    }
    let abs = root.join(rel);
    let meta = fs::symlink_metadata(&abs).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            ArchiveError::MissingOutput(rel.to_string())
        } else {
            ArchiveError::Io { context: format!("reading output {rel}"), source: e }
        }
    })?;
    let ft = meta.file_type();
    if ft.is_symlink() {
        let target = fs::read_link(&abs).map_err(io_err(format!("reading link {rel}")))?;
        out.push(Item::new(rel, abs, Kind::Symlink(target), &meta));
    } else if ft.is_file() {
        out.push(Item::new(rel, abs, Kind::File, &meta));
    } else if ft.is_dir() {
        out.push(Item::new(rel, abs.clone(), Kind::Dir, &meta));
        let mut names: Vec<_> = fs::read_dir(&abs)
            .map_err(io_err(format!("listing {rel}")))?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io_err(format!("listing {rel}")))?;
        names.sort();
        for name in names {
            let Some(name) = name.to_str() else {
                return Err(ArchiveError::Unsupported {
                    path: format!("{rel}/{}", name.to_string_lossy()),
                    kind: "non-UTF-8 name",
                });
            };
            collect(root, &format!("{rel}/{name}"), out, carve)?;
        }
    } else {
        let kind = if ft_is_fifo(&meta) { "FIFO" } else { "device or socket" };
        return Err(ArchiveError::Unsupported { path: rel.to_string(), kind });
    }
    Ok(())
}

fn ft_is_fifo(meta: &fs::Metadata) -> bool {
    use std::os::unix::fs::FileTypeExt;
    meta.file_type().is_fifo()
}

/// Normalise a declared output path: no `./`, no trailing `/`.
pub fn normalize_output(out: &str) -> String {
    out.trim_start_matches("./").trim_end_matches('/').to_string()
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    let _ = h.set_username("");
    let _ = h.set_groupname("");
    h
}

/// Append `items`; the bytes of content, and whether a file was read before its mtime
/// settled ([`crate::inputs::settles_ns`]).
fn append_items<W: Write>(b: &mut tar::Builder<W>, items: &[Item]) -> Result<(u64, bool), ArchiveError> {
    let (mut raw_bytes, mut unsettled) = (0, false);
    for it in items {
        if crate::interrupt::interrupted() {
            return Err(ArchiveError::Interrupted);
        }
        match &it.kind {
            Kind::Dir => {
                let mut h = header(tar::EntryType::Directory, it.mode, 0);
                b.append_data(&mut h, format!("{}/", it.rel), io::empty())
                    .map_err(io_err(format!("archiving {}", it.rel)))?;
            }
            Kind::File => {
                unsettled |= crate::inputs::now_ns() < crate::inputs::settles_ns(it.stat.mtime);
                let f = File::open(&it.abs).map_err(io_err(format!("reading {}", it.rel)))?;
                let mut h = header(tar::EntryType::Regular, it.mode, it.size);
                b.append_data(&mut h, &it.rel, (&f).take(it.size)).map_err(io_err(format!("archiving {}", it.rel)))?;
                // What was read is what was stat'ed: the same size, times and inode after
                // the read (one fstat on the open file).
                let after = f.metadata().map_err(io_err(format!("reading {}", it.rel)))?;
                if !same_stat(&it.stat, &crate::inputs::FingerprintStat::of_metadata(&after)) {
                    return Err(ArchiveError::ChangedWhilePacking(it.rel.clone()));
                }
                raw_bytes += it.size;
            }
            Kind::Symlink(target) => {
                let mut h = header(tar::EntryType::Symlink, 0o777, 0);
                b.append_link(&mut h, &it.rel, target).map_err(io_err(format!("archiving link {}", it.rel)))?;
            }
        }
    }
    Ok((raw_bytes, unsettled))
}

fn same_stat(a: &crate::inputs::FingerprintStat, b: &crate::inputs::FingerprintStat) -> bool {
    (a.size, a.mode, a.mtime, a.ino, a.ctime) == (b.size, b.mode, b.mtime, b.ino, b.ctime)
}

/// Directories gained or lost no entry since they were listed (their times are unchanged).
fn dirs_unchanged(items: &[Item]) -> Result<(), ArchiveError> {
    for it in items.iter().filter(|it| matches!(it.kind, Kind::Dir)) {
        let now = fs::symlink_metadata(&it.abs).map_err(|_| ArchiveError::ChangedWhilePacking(it.rel.clone()))?;
        if !same_stat(&it.stat, &crate::inputs::FingerprintStat::of_metadata(&now)) {
            return Err(ArchiveError::ChangedWhilePacking(it.rel.clone()));
        }
    }
    Ok(())
}

/// The outputs digest of what is on disk now (the same bytes [`pack`] hashes), without
/// compressing or writing anything. `None` if an output is missing or unreadable.
pub fn outputs_digest(root: &Path, outputs: &[String]) -> Option<String> {
    let mut items = Vec::new();
    let (walk, carve) = split_outputs(outputs);
    for out in &walk {
        collect(root, out, &mut items, &carve).ok()?;
    }
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    items.dedup_by(|a, b| a.rel == b.rel);
    let sink = Hashing { inner: io::sink(), hasher: Some(blake3::Hasher::new()), count: 0 };
    let mut b = tar::Builder::new(BufWriter::with_capacity(STREAM_BUFFER, sink));
    b.mode(tar::HeaderMode::Deterministic);
    append_items(&mut b, &items).ok()?;
    b.get_mut().flush().ok()?;
    Some(b.get_mut().get_mut().hasher.take().expect("set above").finalize().to_hex().to_string())
}

/// Pack `outputs` (relative to `root`) and logs into a temporary file in `tmp_dir`.
pub fn pack(
    root: &Path,
    outputs: &[String],
    logs: &[(&str, &[u8])],
    tmp_dir: &Path,
    level: i32,
) -> Result<Packed, ArchiveError> {
    // The outputs' fingerprint comes from the stats the walk takes anyway: each output's
    // entries in walk order are what `outputs_fingerprint` visits.
    let before_stats = crate::inputs::now_ns();
    let mut items = Vec::new();
    let (mut fp, mut settles) = (Vec::with_capacity(64 * 1024), 0i64);
    let (walk, carve) = split_outputs(outputs);
    for out in &walk {
        let from = items.len();
        collect(root, out, &mut items, &carve)?;
        for it in &items[from..] {
            crate::inputs::fingerprint_entry(&mut fp, it.rel.as_bytes(), it.stat, &mut settles);
        }
    }
    let fp_digest = blake3::hash(&fp).to_hex().to_string();
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    items.dedup_by(|a, b| a.rel == b.rel);

    fs::create_dir_all(tmp_dir).map_err(io_err("creating the store's tmp directory"))?;
    let tmp_path = tmp_dir.join(format!("pack-{}-{}.tmp", std::process::id(), unique()));
    let file = File::create(&tmp_path).map_err(io_err(format!("creating {}", tmp_path.display())))?;
    // Whatever goes wrong from here (a full disk, an output changing underfoot), the partial
    // archive goes too.
    let r = pack_into(file, &tmp_path, items, logs, level, before_stats, fp_digest, settles);
    if r.is_err() {
        let _ = fs::remove_file(&tmp_path);
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn pack_into(
    file: File,
    tmp_path: &Path,
    items: Vec<Item>,
    logs: &[(&str, &[u8])],
    level: i32,
    before_stats: i64,
    fp_digest: String,
    settles: i64,
) -> Result<Packed, ArchiveError> {
    let blob =
        Hashing { inner: BufWriter::with_capacity(1 << 20, file), hasher: Some(blake3::Hasher::new()), count: 0 };
    let mut enc = zstd::stream::Encoder::new(blob, level).map_err(io_err("starting zstd"))?;
    let workers = std::thread::available_parallelism().map(|n| n.get() as u32).unwrap_or(1);
    if workers > 1 {
        let _ = enc.multithread(workers);
    }
    // Logs first, so they can be replayed without reading the whole archive; the outputs
    // digest covers what follows them. The tar stream is buffered before it is hashed and
    // compressed: blake3 hashes 16 chunks at once only when it is given them at once, and
    // tar writes a 512-byte header and then 8 KiB at a time.
    let tarw = BufWriter::with_capacity(STREAM_BUFFER, Hashing { inner: enc, hasher: None, count: 0 });
    let mut b = tar::Builder::new(tarw);
    b.mode(tar::HeaderMode::Deterministic);
    for (name, bytes) in logs {
        let mut h = header(tar::EntryType::Regular, 0o644, bytes.len() as u64);
        b.append_data(&mut h, name, *bytes).map_err(io_err("archiving logs"))?;
    }
    b.get_mut().flush().map_err(io_err("archiving logs"))?;
    b.get_mut().get_mut().hasher = Some(blake3::Hasher::new());
    let (raw_bytes, unsettled) = append_items(&mut b, &items)?;
    dirs_unchanged(&items)?;
    let recorded_ns = if unsettled { before_stats } else { crate::inputs::now_ns() };
    let fingerprint = Some(PackedFingerprint { digest: fp_digest, settles_ns: settles, recorded_ns });
    b.get_mut().flush().map_err(io_err("archiving outputs"))?;
    let outputs_digest = b.get_mut().get_mut().hasher.take().expect("set above").finalize().to_hex().to_string();
    let tarw = b.into_inner().map_err(io_err("finishing the archive"))?;
    let tarw =
        tarw.into_inner().map_err(|e| ArchiveError::Io { context: "flushing".into(), source: e.into_error() })?;
    let blob = tarw.inner.finish().map_err(io_err("finishing zstd"))?;
    let blob_digest = blob.hasher.expect("set above").finalize().to_hex().to_string();
    let blob_size = blob.count;
    let file =
        blob.inner.into_inner().map_err(|e| ArchiveError::Io { context: "flushing".into(), source: e.into_error() })?;
    file.sync_all().map_err(io_err("syncing the archive"))?;
    let log_bytes = logs.iter().map(|(_, b)| b.len() as u64).sum();
    Ok(Packed {
        tmp_path: tmp_path.to_path_buf(),
        blob_digest,
        outputs_digest,
        blob_size,
        files: items.len() as u64,
        raw_bytes,
        log_bytes,
        fingerprint,
    })
}

/// A process-unique counter for temporary names.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{:x}", N.fetch_add(1, Ordering::Relaxed), t)
}

#[cfg(test)]
mod tests {
    use super::links::resolve_link;
    use super::unpack::link_stays_inside;
    use super::*;

    #[test]
    fn link_containment() {
        assert!(link_stays_inside(Path::new("out/a"), Path::new("b")));
        assert!(link_stays_inside(Path::new("out/sub/a"), Path::new("../b")));
        assert!(!link_stays_inside(Path::new("out/a"), Path::new("../../etc/passwd")));
        assert!(!link_stays_inside(Path::new("a"), Path::new("/etc")));
    }

    fn resolve(link: &str, target: &str, links: &[(&str, &str)]) -> Result<String, String> {
        let map: std::collections::HashMap<PathBuf, PathBuf> =
            links.iter().map(|(l, t)| (PathBuf::from(l), PathBuf::from(t))).collect();
        resolve_link(Path::new(link), Path::new(target), &|p| map.get(p).cloned()).map(|p| p.display().to_string())
    }

    #[test]
    fn links_resolve_through_other_links_as_the_kernel_would() {
        assert_eq!(resolve("out/a", "b", &[]).unwrap(), "out/b");
        assert_eq!(resolve("out/sub/a", "../b", &[]).unwrap(), "out/b");
        // Lexically inside, physically outside: `x` is `out` itself, so `x/../..` leaves.
        let chain = [("out/x", ".")];
        assert!(resolve("out/a.txt", "x/../../elsewhere/f", &chain).unwrap_err().contains("outside the workspace"));
        assert_eq!(resolve("out/a.txt", "x/../f", &chain).unwrap(), "f");
        // Through a link to an absolute path; a loop.
        assert!(resolve("out/a", "up/f", &[("out/up", "/etc")]).unwrap_err().contains("absolute"));
        assert!(resolve("out/a", "l1/f", &[("out/l1", "l2"), ("out/l2", "l1")]).unwrap_err().contains("levels"));
        assert!(resolve("a", "/etc", &[]).is_err());
        assert_eq!(resolve("priv", "../x", &[]).unwrap_err(), "target `../x` leads outside the workspace");
    }

    #[test]
    fn read_only_files_and_directories_come_back_exactly() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("out/objects/ab")).unwrap();
        fs::write(root.join("out/objects/ab/cd"), "blob").unwrap();
        fs::write(root.join("out/shared"), "x").unwrap();
        fs::set_permissions(root.join("out/objects/ab/cd"), fs::Permissions::from_mode(0o444)).unwrap();
        fs::set_permissions(root.join("out/shared"), fs::Permissions::from_mode(0o664)).unwrap();
        fs::set_permissions(root.join("out/objects/ab"), fs::Permissions::from_mode(0o555)).unwrap();
        let outs = vec!["out/".to_string()];
        let p = pack(&root, &outs, &[], &t.path().join("tmp"), 3).unwrap();
        let staging = t.path().join("staging");
        unpack(&p.tmp_path, &p.blob_digest, &staging, Limits::default(), &LinkRules::within(&root, &outs)).unwrap();
        let mode = |p: &str| fs::symlink_metadata(staging.join(p)).unwrap().mode() & 0o7777;
        assert_eq!((mode("out/objects/ab/cd"), mode("out/shared"), mode("out/objects/ab")), (0o444, 0o664, 0o555));
        // Installing over the old outputs (read-only directories included) and cleaning up.
        install(&staging, &root, &outs, &t.path().join("trash")).unwrap();
        assert_eq!(fs::symlink_metadata(root.join("out/objects/ab")).unwrap().mode() & 0o777, 0o555);
        assert_eq!(outputs_digest(&root, &outs).unwrap(), p.outputs_digest, "the restored tree digests as stored");
        remove_any(&root.join("out")).unwrap();
        assert!(!root.join("out").exists());
    }

    #[test]
    fn identical_outputs_give_identical_bytes_and_round_trip() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("out/sub")).unwrap();
        fs::write(root.join("out/a.txt"), "hello").unwrap();
        fs::write(root.join("out/sub/b.sh"), "#!/bin/sh\n").unwrap();
        fs::set_permissions(root.join("out/sub/b.sh"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("a.txt", root.join("out/link")).unwrap();
        let outs = vec!["out/".to_string()];
        let p1 = pack(&root, &outs, &[(LOG_STDOUT, b"log\n")], &t.path().join("tmp"), 3).unwrap();
        // Touch mtimes: bytes must not change.
        std::thread::sleep(std::time::Duration::from_millis(20));
        fs::write(root.join("out/a.txt"), "hello").unwrap();
        let p2 = pack(&root, &outs, &[(LOG_STDOUT, b"other log\n")], &t.path().join("tmp"), 3).unwrap();
        assert_eq!(p1.outputs_digest, p2.outputs_digest, "logs do not affect the outputs digest");
        assert_ne!(p1.blob_digest, p2.blob_digest);
        let p3 = pack(&root, &outs, &[(LOG_STDOUT, b"log\n")], &t.path().join("tmp"), 3).unwrap();
        assert_eq!(fs::read(&p1.tmp_path).unwrap(), fs::read(&p3.tmp_path).unwrap(), "canonical bytes");

        let staging = t.path().join("staging");
        let rules = LinkRules::within(&root, &outs);
        let u = unpack(&p1.tmp_path, &p1.blob_digest, &staging, Limits::default(), &rules).unwrap();
        assert_eq!(u.stdout, b"log\n");
        assert_eq!(fs::read_to_string(staging.join("out/a.txt")).unwrap(), "hello");
        assert_eq!(fs::metadata(staging.join("out/sub/b.sh")).unwrap().mode() & 0o777, 0o755);
        assert_eq!(fs::read_link(staging.join("out/link")).unwrap(), Path::new("a.txt"));
        let wrong = unpack(&p1.tmp_path, &p2.blob_digest, &t.path().join("staging2"), Limits::default(), &rules);
        assert!(matches!(wrong, Err(ArchiveError::Digest { .. })));
    }

    #[test]
    fn the_packer_fingerprints_outputs_exactly_as_a_later_check_does() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        // Names whose byte order differs from path order (`b.txt` < `b/` as strings), a
        // symlink, an executable, and outputs that overlap (`out/` holds `out/deps/`).
        for (rel, text) in [("out/b.txt", "1"), ("out/b/x", "2"), ("out/deps/lib/c", "3"), ("gen.h", "4")] {
            fs::create_dir_all(root.join(rel).parent().unwrap()).unwrap();
            fs::write(root.join(rel), text).unwrap();
        }
        fs::set_permissions(root.join("out/b/x"), fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::symlink("b.txt", root.join("out/link")).unwrap();
        let outs = vec!["out/".to_string(), "./out/deps".to_string(), "gen.h".to_string()];
        let before = crate::inputs::now_ns();
        let p = pack(&root, &outs, &[], &t.path().join("tmp"), 3).unwrap();
        let packed = p.fingerprint.clone().unwrap();
        let fp = packed.digest.clone();
        let later = crate::inputs::outputs_fingerprint(&root, &outs).unwrap();
        assert_eq!((fp.clone(), packed.settles_ns), later);
        // Just written, so read before they settled: recorded as of before the stats (racy).
        assert!(packed.recorded_ns >= before && packed.recorded_ns < packed.settles_ns);
        // A changed output changes the later check's fingerprint, not the recorded one.
        fs::write(root.join("out/deps/lib/c"), "three").unwrap();
        assert_ne!(Some(fp), crate::inputs::outputs_fingerprint(&root, &outs).map(|(f, _)| f));
        // Entries last written a minute ago are read settled: recorded as of after the reads.
        let minute_ago =
            rustix::fs::Timespec { tv_sec: (crate::inputs::now_ns() / 1_000_000_000 - 60) as _, tv_nsec: 7 };
        let times = rustix::fs::Timestamps { last_access: minute_ago, last_modification: minute_ago };
        for f in ["out/b.txt", "out/b/x", "out/deps/lib/c", "gen.h", "out/b"] {
            rustix::fs::utimensat(rustix::fs::CWD, root.join(f), &times, rustix::fs::AtFlags::empty()).unwrap();
        }
        let settled = pack(&root, &["out/b/".to_string(), "gen.h".to_string()], &[], &t.path().join("tmp"), 3).unwrap();
        let settled = settled.fingerprint.unwrap();
        assert!(settled.recorded_ns >= settled.settles_ns, "not racy: {settled:?}");
    }
}
