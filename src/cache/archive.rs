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

/// Every entry of `outputs` under `root`, sorted and without duplicates (unreadable or
/// missing outputs are left out).
fn list(root: &Path, outputs: &[String]) -> Vec<Item> {
    let mut items = Vec::new();
    let (walk, carve) = split_outputs(outputs);
    for out in &walk {
        let _ = collect(root, out, &mut items, &carve);
    }
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    items.dedup_by(|a, b| a.rel == b.rel);
    items
}

/// The first path where the worktree's outputs differ from freshly extracted ones, said the
/// way a person wants to hear why outputs were restored: `deps/x.ex was changed`.
pub fn first_difference(staged: &Path, worktree: &Path, outputs: &[String]) -> Option<String> {
    let (a, b) = (list(staged, outputs), list(worktree, outputs));
    let there: std::collections::HashMap<&str, &Item> = b.iter().map(|i| (i.rel.as_str(), i)).collect();
    for it in &a {
        let Some(w) = there.get(it.rel.as_str()) else {
            return Some(format!("{} was removed", it.rel));
        };
        let differs = match (&it.kind, &w.kind) {
            (Kind::Dir, Kind::Dir) => it.mode != w.mode,
            (Kind::Symlink(x), Kind::Symlink(y)) => x != y,
            (Kind::File, Kind::File) => {
                it.mode != w.mode || it.size != w.size || fs::read(&it.abs).ok() != fs::read(&w.abs).ok()
            }
            _ => true,
        };
        if differs {
            let how = if it.mode != w.mode && matches!((&it.kind, &w.kind), (Kind::File, Kind::File)) {
                format!("had its permissions changed ({:o} → {:o})", it.mode, w.mode)
            } else {
                "was changed".to_string()
            };
            return Some(format!("{} {how}", it.rel));
        }
    }
    let staged: HashSet<&str> = a.iter().map(|i| i.rel.as_str()).collect();
    b.iter().find(|w| !staged.contains(w.rel.as_str())).map(|w| format!("{} was added", w.rel))
}

/// Entries of `outputs` changed (written, created, chmod'ed) at or after `since_ns`.
pub fn changed_since(root: &Path, outputs: &[String], since_ns: i64) -> Vec<String> {
    list(root, outputs)
        .into_iter()
        .filter(|it| !matches!(it.kind, Kind::Dir) && (it.stat.mtime >= since_ns || it.stat.ctime >= since_ns))
        .map(|it| it.rel)
        .collect()
}

/// The first output file (in path order) whose content `pred` flags, with what it said.
pub fn find_in_outputs(
    root: &Path,
    outputs: &[String],
    pred: impl Fn(&[u8]) -> Option<String>,
) -> Option<(String, String)> {
    for it in list(root, outputs) {
        if matches!(it.kind, Kind::File) {
            if let Some(what) = fs::read(&it.abs).ok().and_then(|bytes| pred(&bytes)) {
                return Some((it.rel, what));
            }
        }
    }
    None
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

/// What came out of an archive besides the staged files.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub entries: u64,
    pub bytes: u64,
}

fn unsafe_entry(entry: &str, problem: impl Into<String>) -> ArchiveError {
    ArchiveError::Unsafe { entry: entry.to_string(), problem: problem.into() }
}

/// Lexically validate an entry path: relative, no `..`, no root or prefix, not empty.
fn check_path(raw: &str) -> Result<PathBuf, ArchiveError> {
    if raw.is_empty() {
        return Err(unsafe_entry(raw, "empty path"));
    }
    if raw.starts_with('/') {
        return Err(unsafe_entry(raw, "absolute path"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(raw).components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            Component::ParentDir => return Err(unsafe_entry(raw, "path contains `..`")),
            Component::RootDir | Component::Prefix(_) => return Err(unsafe_entry(raw, "absolute path")),
        }
    }
    if out.as_os_str().is_empty() {
        return Err(unsafe_entry(raw, "empty path"));
    }
    Ok(out)
}

/// Does a symlink at `link` (relative to the root) pointing to `target` stay inside the root?
fn link_stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir => {
                depth -= 1;
                if depth < 0 {
                    return false;
                }
            }
            _ => return false,
        }
    }
    true
}

/// Files up to this size are handed to writer threads; larger ones are written by the reader.
const PARALLEL_FILE_MAX: u64 = 256 << 10;
/// Writer threads: creating many small files is bound by system calls, not by a core.
const WRITERS: usize = 4;

struct FileJob {
    dest: PathBuf,
    raw: String,
    mode: u32,
    data: Vec<u8>,
}

fn create(dest: &Path, raw: &str, mode: u32) -> Result<File, ArchiveError> {
    OpenOptions::new().write(true).create_new(true).mode(mode | 0o600).open(dest).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            unsafe_entry(raw, "a file where the archive already has a directory or link")
        } else {
            ArchiveError::Io { context: format!("creating {raw}"), source: e }
        }
    })
}

fn write_file(dest: &Path, raw: &str, mode: u32, reader: &mut dyn Read, size: u64) -> Result<(), ArchiveError> {
    let f = create(dest, raw, mode)?;
    let mut w = BufWriter::with_capacity(256 << 10, f);
    let copied = io::copy(&mut reader.take(size), &mut w).map_err(io_err(format!("writing {raw}")))?;
    if copied != size {
        return Err(unsafe_entry(raw, "truncated entry"));
    }
    w.flush().map_err(io_err(format!("writing {raw}")))?;
    exact_mode(w.get_ref(), mode, raw)
}

/// Write a whole small file at once (no buffer: most restored files are small).
fn write_bytes(dest: &Path, raw: &str, mode: u32, data: &[u8]) -> Result<(), ArchiveError> {
    let mut f = create(dest, raw, mode)?;
    f.write_all(data).map_err(io_err(format!("writing {raw}")))?;
    exact_mode(&f, mode, raw)
}

/// Where a restore's symlinks may lead.
///
/// Every link is resolved the way the kernel would once the outputs are in place: through the
/// links of the archive itself (inside the step's outputs the archive is what will be there)
/// and through the links already in the worktree (outside them). A link is refused when that
/// resolution leaves the workspace, ends in `.git/` or cairn's own working directories, or
/// ends on a path `protected` names (the inputs of steps: a later run writing through such a
/// link would overwrite a source file). Resolution is done once every entry is known, so the
/// order of entries in the archive cannot hide a chain.
pub struct LinkRules<'a> {
    pub root: &'a Path,
    /// The step's declared outputs (as declared; normalised here).
    pub outputs: &'a [String],
    /// Why a path (relative to the root, `/`-separated) may not be a link's target, if so.
    pub protected: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

impl<'a> LinkRules<'a> {
    /// Links may point anywhere inside the workspace except cairn's and git's own directories.
    pub fn within(root: &'a Path, outputs: &'a [String]) -> LinkRules<'a> {
        LinkRules { root, outputs, protected: &|_| None }
    }
}

/// Follow `link -> target` (both relative to the root) to the path it finally names, through
/// the links `lookup` knows. Errors say how the chain escapes.
fn resolve_link(link: &Path, target: &Path, lookup: &dyn Fn(&Path) -> Option<PathBuf>) -> Result<PathBuf, String> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    fn parts(p: &Path) -> Result<Vec<OsString>, ()> {
        let mut v = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => v.push(n.to_owned()),
                Component::CurDir => {}
                Component::ParentDir => v.push("..".into()),
                Component::RootDir | Component::Prefix(_) => return Err(()),
            }
        }
        Ok(v)
    }
    let absolute = || format!("target `{}` leads to an absolute path", target.display());
    let mut cur: Vec<OsString> = parts(link.parent().unwrap_or(Path::new(""))).map_err(|_| absolute())?;
    let mut pending: VecDeque<OsString> = parts(target).map_err(|_| absolute())?.into();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if cur.pop().is_none() {
                return Err(format!("target `{}` leads outside the workspace", target.display()));
            }
            continue;
        }
        cur.push(c);
        let here: PathBuf = cur.iter().collect();
        if let Some(next) = lookup(&here) {
            hops += 1;
            if hops > 40 {
                return Err(format!("target `{}`: too many levels of symbolic links", target.display()));
            }
            cur.pop();
            let spliced = parts(&next).map_err(|_| {
                format!("target `{}` leads through `{}` to an absolute path", target.display(), here.display())
            })?;
            for s in spliced.into_iter().rev() {
                pending.push_front(s);
            }
        }
    }
    Ok(cur.iter().collect())
}

/// Is `rel` (relative to the root) `out` or inside it?
fn under(rel: &Path, out: &str) -> bool {
    rel.starts_with(out)
}

/// Check every symlink of an extracted archive against `rules` (see [`LinkRules`]).
fn check_links(links: &std::collections::HashMap<PathBuf, PathBuf>, rules: &LinkRules) -> Result<(), ArchiveError> {
    if links.is_empty() {
        return Ok(());
    }
    let (outputs, _) = split_outputs(rules.outputs);
    let lookup = |p: &Path| -> Option<PathBuf> {
        if let Some(t) = links.get(p) {
            return Some(t.clone());
        }
        if outputs.iter().any(|o| under(p, o)) {
            return None; // replaced by the archive's content
        }
        let abs = rules.root.join(p);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.file_type().is_symlink() => Some(fs::read_link(&abs).unwrap_or_else(|_| PathBuf::from("/"))),
            _ => None,
        }
    };
    let mut sorted: Vec<_> = links.iter().collect();
    sorted.sort();
    for (link, target) in sorted {
        let raw = link.display().to_string();
        let end = resolve_link(link, target, &lookup).map_err(|why| unsafe_entry(&raw, format!("symlink {why}")))?;
        let end_s = end.to_string_lossy().replace('\\', "/");
        let first = end.components().next().map(|c| c.as_os_str().to_string_lossy().to_string()).unwrap_or_default();
        if end.as_os_str().is_empty() {
            return Err(unsafe_entry(
                &raw,
                format!("symlink target `{}` is the workspace root itself", target.display()),
            ));
        }
        if first == ".git" || first == ".cairn-tmp" {
            return Err(unsafe_entry(&raw, format!("symlink target `{}` points into `{first}/`", target.display())));
        }
        if let Some(why) = (rules.protected)(&end_s) {
            return Err(unsafe_entry(
                &raw,
                format!("symlink target `{}` resolves to `{end_s}`, {why}", target.display()),
            ));
        }
    }
    Ok(())
}

/// The process's umask, read without changing it (`umask(2)` can only be read by setting it,
/// which races with threads creating files).
fn umask() -> u32 {
    static UMASK: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *UMASK.get_or_init(|| {
        fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| s.lines().find_map(|l| l.strip_prefix("Umask:").map(|v| v.trim().to_string())))
            .and_then(|v| u32::from_str_radix(&v, 8).ok())
            .unwrap_or(0o022)
    })
}

/// Give a just-written file exactly `mode` when creating it with `mode | 0o600` under the
/// umask did not.
fn exact_mode(f: &File, mode: u32, raw: &str) -> Result<(), ArchiveError> {
    if (mode | 0o600) & !umask() != mode {
        f.set_permissions(fs::Permissions::from_mode(mode)).map_err(io_err(format!("chmod {raw}")))?;
    }
    Ok(())
}

/// Open a blob for reading, refusing anything but a regular file without blocking on it (a
/// FIFO planted where a blob should be would otherwise hang the open).
pub fn open_blob(blob: &Path) -> Result<File, ArchiveError> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOFOLLOW)
        .open(blob)
        .map_err(io_err(format!("opening blob {}", blob.display())))?;
    let meta = file.metadata().map_err(io_err(format!("opening blob {}", blob.display())))?;
    if !meta.is_file() {
        return Err(ArchiveError::Io {
            context: format!("opening blob {}", blob.display()),
            source: io::Error::new(io::ErrorKind::InvalidData, "not a regular file"),
        });
    }
    // Back to blocking reads (regular files never block anyway).
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = file.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
    }
    Ok(file)
}

/// Extract `blob` into the empty directory `staging`, verifying its digest, and check its
/// symlinks against `links`.
///
/// One thread reads, validates and decompresses; small files are written by a pool of
/// writer threads. Anything refused stops the extraction; the caller removes `staging`.
/// Permission bits come back exactly as archived (read-only files and directories too:
/// directories get theirs once everything inside them is written).
pub fn unpack(
    blob: &Path,
    expected_digest: &str,
    staging: &Path,
    limits: Limits,
    links: &LinkRules,
) -> Result<Unpacked, ArchiveError> {
    let file = open_blob(blob)?;
    fs::create_dir_all(staging).map_err(io_err("creating the staging directory"))?;
    let first_error: std::sync::Mutex<Option<ArchiveError>> = std::sync::Mutex::new(None);
    let (tx, rx) = std::sync::mpsc::sync_channel::<FileJob>(256);
    let rx = std::sync::Mutex::new(rx);
    let result = std::thread::scope(|s| {
        for _ in 0..WRITERS {
            s.spawn(|| loop {
                let job = match rx.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                    Ok(j) => j,
                    Err(_) => return,
                };
                if let Err(e) = write_bytes(&job.dest, &job.raw, job.mode, &job.data) {
                    first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                }
            });
        }
        let r = read_entries(file, expected_digest, staging, limits, &tx, &first_error);
        drop(tx);
        r
    });
    if let Some(e) = first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e);
    }
    let (out, symlinks, dir_modes) = result?;
    check_links(&symlinks, links)?;
    // Directories last and deepest first: a read-only one is finished only when its
    // contents are.
    for (dir, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(io_err(format!("chmod {}", dir.display())))?;
    }
    Ok(out)
}

/// Symlinks of an archive (path → target, relative to the root) and directories whose exact
/// mode is set once their contents are written.
type Extracted = (Unpacked, std::collections::HashMap<PathBuf, PathBuf>, Vec<(PathBuf, u32)>);

fn read_entries(
    file: File,
    expected_digest: &str,
    staging: &Path,
    limits: Limits,
    tx: &std::sync::mpsc::SyncSender<FileJob>,
    writer_error: &std::sync::Mutex<Option<ArchiveError>>,
) -> Result<Extracted, ArchiveError> {
    // The blob is read (and hashed) a megabyte at a time: blake3 is several times faster on
    // large pieces than on the 8 KiB a default buffer would hand it.
    let reader = HashingReader { inner: file, hasher: blake3::Hasher::new() };
    let dec = zstd::stream::Decoder::with_buffer(BufReader::with_capacity(1 << 20, reader))
        .map_err(io_err("starting zstd"))?;
    let mut archive = tar::Archive::new(dec);
    let mut out = Unpacked::default();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut symlinks: std::collections::HashMap<PathBuf, PathBuf> = Default::default();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    let entries = archive.entries().map_err(io_err("reading the archive"))?;
    for entry in entries {
        if writer_error.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            break;
        }
        let mut entry =
            entry.map_err(|e| ArchiveError::Io { context: "reading an archive entry".into(), source: e })?;
        let raw_bytes = entry.path_bytes().into_owned();
        let raw = String::from_utf8(raw_bytes)
            .map_err(|e| unsafe_entry(&String::from_utf8_lossy(e.as_bytes()), "name is not UTF-8"))?;
        out.entries += 1;
        if out.entries > limits.max_entries {
            return Err(unsafe_entry(
                &raw,
                format!(
                    "too many entries in the archive (the limit is {}; CAIRN_RESTORE_MAX_ENTRIES)",
                    limits.max_entries
                ),
            ));
        }
        let rel = check_path(&raw)?;
        if !seen.insert(rel.clone()) {
            return Err(unsafe_entry(&raw, "duplicate entry"));
        }
        // Nothing may be created through a symlink made by this archive.
        let mut ancestor = rel.parent();
        while let Some(a) = ancestor {
            if symlinks.contains_key(a) {
                return Err(unsafe_entry(&raw, format!("parent `{}` is a symlink", a.display())));
            }
            ancestor = a.parent();
        }
        let kind = entry.header().entry_type();
        let size = entry.header().size().unwrap_or(0);
        if raw == LOG_STDOUT || raw == LOG_STDERR {
            if !kind.is_file() || size > limits.max_log_bytes {
                return Err(unsafe_entry(&raw, "malformed log entry"));
            }
            let mut buf = Vec::with_capacity(size as usize);
            (&mut entry).take(limits.max_log_bytes).read_to_end(&mut buf).map_err(io_err("reading a log"))?;
            if raw == LOG_STDOUT {
                out.stdout = buf;
            } else {
                out.stderr = buf;
            }
            continue;
        }
        if rel.starts_with(".cairn") {
            return Err(unsafe_entry(&raw, "reserved path"));
        }
        let dest = staging.join(&rel);
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777;
        let mut ensure_parent = |dest: &Path, raw: &str| -> Result<(), ArchiveError> {
            if let Some(parent) = dest.parent() {
                if !dirs.contains(parent) {
                    fs::create_dir_all(parent).map_err(io_err(format!("creating parent of {raw}")))?;
                    dirs.insert(parent.to_path_buf());
                }
            }
            Ok(())
        };
        match kind {
            tar::EntryType::Directory => {
                if fs::symlink_metadata(&dest).is_ok_and(|m| !m.is_dir()) {
                    return Err(unsafe_entry(&raw, "a directory where the archive already has a file"));
                }
                fs::create_dir_all(&dest).map_err(io_err(format!("creating {raw}")))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(format!("chmod {raw}")))?;
                if mode | 0o700 != mode {
                    dir_modes.push((dest.clone(), mode));
                }
                dirs.insert(dest);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                out.bytes += size;
                if out.bytes > limits.max_bytes {
                    return Err(unsafe_entry(
                        &raw,
                        format!(
                            "archive expands beyond the byte budget of {} bytes (CAIRN_RESTORE_MAX_BYTES, or the free space)",
                            limits.max_bytes
                        ),
                    ));
                }
                ensure_parent(&dest, &raw)?;
                if size <= PARALLEL_FILE_MAX {
                    let mut data = Vec::with_capacity(size as usize);
                    (&mut entry).take(size).read_to_end(&mut data).map_err(io_err(format!("reading {raw}")))?;
                    if data.len() as u64 != size {
                        return Err(unsafe_entry(&raw, "truncated entry"));
                    }
                    if tx.send(FileJob { dest, raw, mode, data }).is_err() {
                        break;
                    }
                } else {
                    write_file(&dest, &raw, mode, &mut entry, size)?;
                }
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(io_err(format!("reading link target of {raw}")))?
                    .ok_or_else(|| unsafe_entry(&raw, "symlink without a target"))?
                    .into_owned();
                if !link_stays_inside(&rel, &target) {
                    return Err(unsafe_entry(
                        &raw,
                        format!("symlink target `{}` leaves the output root", target.display()),
                    ));
                }
                ensure_parent(&dest, &raw)?;
                std::os::unix::fs::symlink(&target, &dest).map_err(|e| {
                    if e.kind() == io::ErrorKind::AlreadyExists {
                        unsafe_entry(&raw, "a symlink where the archive already has a file or directory")
                    } else {
                        ArchiveError::Io { context: format!("creating link {raw}"), source: e }
                    }
                })?;
                symlinks.insert(rel, target);
            }
            tar::EntryType::Link => return Err(unsafe_entry(&raw, "hard links are not allowed")),
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(unsafe_entry(&raw, "device files are not allowed"))
            }
            tar::EntryType::Fifo => return Err(unsafe_entry(&raw, "FIFOs are not allowed")),
            other => return Err(unsafe_entry(&raw, format!("entry type {other:?} is not allowed"))),
        }
    }
    // Drain what the tar reader left (padding, zstd frame end), then check the digest.
    let dec = archive.into_inner();
    let mut rest = dec.finish();
    io::copy(&mut rest, &mut io::sink()).map_err(io_err("reading the blob"))?;
    let found = rest.into_inner().hasher.finalize().to_hex().to_string();
    if found != expected_digest {
        return Err(ArchiveError::Digest { expected: expected_digest.to_string(), found });
    }
    Ok((out, symlinks, dir_modes))
}

/// Read only the logs at the start of an archive (no verification: nothing is extracted).
pub fn read_logs(blob: &Path) -> Result<(Vec<u8>, Vec<u8>), ArchiveError> {
    let file = open_blob(blob)?;
    let dec = zstd::stream::Decoder::new(file).map_err(io_err("starting zstd"))?;
    let mut archive = tar::Archive::new(dec);
    let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
    for entry in archive.entries().map_err(io_err("reading the archive"))? {
        let entry = entry.map_err(io_err("reading an archive entry"))?;
        let path = entry.path_bytes().into_owned();
        let target = if path == LOG_STDOUT.as_bytes() {
            &mut stdout
        } else if path == LOG_STDERR.as_bytes() {
            &mut stderr
        } else {
            break;
        };
        entry.take(Limits::default().max_log_bytes).read_to_end(target).map_err(io_err("reading a log"))?;
    }
    Ok((stdout, stderr))
}

/// A process-unique counter for temporary names.
pub fn unique() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{:x}", N.fetch_add(1, Ordering::Relaxed), t)
}

/// The first ancestor of `rel` (strictly between the root and `rel`) that is a symlink in the
/// worktree: an output under one would be written through the link.
pub fn linked_ancestor(root: &Path, rel: &str) -> Option<String> {
    let mut acc = PathBuf::new();
    let comps: Vec<_> = Path::new(rel).components().collect();
    for c in comps.iter().take(comps.len().saturating_sub(1)) {
        acc.push(c);
        if fs::symlink_metadata(root.join(&acc)).is_ok_and(|m| m.file_type().is_symlink()) {
            return Some(acc.display().to_string());
        }
    }
    None
}

/// Move each staged output into place. Existing outputs are moved aside first and removed
/// only after the new ones are in place; a failure puts the old ones back. Nothing is written
/// through a link: an output whose parent in the worktree is a symlink is refused, and an
/// existing output that is a link is moved aside as the link itself.
pub fn install(staging: &Path, root: &Path, outputs: &[String], trash: &Path) -> Result<(), ArchiveError> {
    let (outputs, carve) = split_outputs(outputs);
    for rel in &outputs {
        let rel = rel.clone();
        if let Some(link) = linked_ancestor(root, &rel) {
            return Err(ArchiveError::Io {
                context: format!("restoring output {rel}"),
                source: io::Error::other(format!(
                    "`{link}` in the worktree is a symlink, and cairn never writes through one; remove it and build again"
                )),
            });
        }
    }
    fs::create_dir_all(trash).map_err(io_err("creating the trash directory"))?;
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut installed: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for rel in &outputs {
            let rel = rel.clone();
            let src = staging.join(&rel);
            let dst = root.join(&rel);
            let Ok(meta) = fs::symlink_metadata(&src) else {
                return Err(ArchiveError::MissingOutput(rel));
            };
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(io_err(format!("creating parent of {rel}")))?;
            }
            if fs::symlink_metadata(&dst).is_ok() {
                let aside = trash.join(format!("old-{}", unique()));
                rename_dir(&dst, &aside).map_err(io_err(format!("moving old {rel} aside")))?;
                moved.push((aside, dst.clone()));
            }
            let _ = meta;
            rename_dir(&src, &dst).map_err(io_err(format!("moving {rel} into place")))?;
            // Another step's outputs nested in this one stay where they were.
            if let Some((aside, _)) = moved.last().filter(|(_, d)| *d == dst) {
                for c in carve.iter().filter(|c| Path::new(c).starts_with(&rel)) {
                    let inner = Path::new(c).strip_prefix(&rel).expect("checked");
                    let (old, new) = (aside.join(inner), root.join(c));
                    if fs::symlink_metadata(&old).is_ok() && fs::symlink_metadata(&new).is_err() {
                        if let Some(parent) = new.parent() {
                            let _ = fs::create_dir_all(parent);
                        }
                        let _ = fs::rename(&old, &new);
                    }
                }
            }
            installed.push(dst);
        }
        Ok(())
    })();
    match result {
        Ok(()) => {
            for (aside, _) in moved {
                let _ = remove_any(&aside);
            }
            Ok(())
        }
        Err(e) => {
            for dst in installed {
                let _ = remove_any(&dst);
            }
            for (aside, dst) in moved {
                let _ = rename_dir(&aside, &dst);
            }
            Err(e)
        }
    }
}

/// `rename`, also for a directory without write permission for its owner (moving one to
/// another parent rewrites its `..`, which needs it): made writable for the move, then given
/// its mode back.
fn rename_dir(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
            let meta = fs::symlink_metadata(from)?;
            if !meta.is_dir() || meta.mode() & 0o200 != 0 {
                return Err(e);
            }
            fs::set_permissions(from, fs::Permissions::from_mode((meta.mode() & 0o7777) | 0o700))?;
            let r = fs::rename(from, to);
            let at = if r.is_ok() { to } else { from };
            let _ = fs::set_permissions(at, fs::Permissions::from_mode(meta.mode() & 0o7777));
            r
        }
        r => r,
    }
}

/// Remove a file, symlink or directory tree, including read-only directories (git writes
/// its objects' directories without write permission for anyone).
pub fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => match fs::remove_dir_all(p) {
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                make_writable(p);
                fs::remove_dir_all(p)
            }
            r => r,
        },
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Give every directory under `p` (not following links) owner read, write and search.
fn make_writable(p: &Path) {
    for e in walkdir::WalkDir::new(p).follow_links(false).contents_first(false).into_iter().flatten() {
        if e.file_type().is_dir() {
            if let Ok(m) = e.metadata() {
                if m.mode() & 0o700 != 0o700 {
                    let _ = fs::set_permissions(e.path(), fs::Permissions::from_mode((m.mode() & 0o7777) | 0o700));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
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
