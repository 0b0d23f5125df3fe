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

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("declared output `{0}` was not produced")]
    MissingOutput(String),
    #[error("output `{path}` is a {kind}, which cannot be cached")]
    Unsupported { path: String, kind: &'static str },
    #[error("archive entry `{entry}` refused: {problem}")]
    Unsafe { entry: String, problem: String },
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
                (context.starts_with("opening blob") && source.kind() == io::ErrorKind::NotFound)
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

fn collect(root: &Path, rel: &str, out: &mut Vec<Item>) -> Result<(), ArchiveError> {
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
            collect(root, &format!("{rel}/{name}"), out)?;
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
                b.append_data(&mut h, &it.rel, f.take(it.size)).map_err(io_err(format!("archiving {}", it.rel)))?;
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

/// The outputs digest of what is on disk now (the same bytes [`pack`] hashes), without
/// compressing or writing anything. `None` if an output is missing or unreadable.
pub fn outputs_digest(root: &Path, outputs: &[String]) -> Option<String> {
    let mut items = Vec::new();
    for out in outputs {
        collect(root, &normalize_output(out), &mut items).ok()?;
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
    for out in outputs {
        let from = items.len();
        collect(root, &normalize_output(out), &mut items)?;
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
        tmp_path,
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

fn write_file(dest: &Path, raw: &str, mode: u32, reader: &mut dyn Read, size: u64) -> Result<(), ArchiveError> {
    let f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode | 0o600)
        .open(dest)
        .map_err(io_err(format!("creating {raw}")))?;
    let mut w = BufWriter::with_capacity(256 << 10, f);
    let copied = io::copy(&mut reader.take(size), &mut w).map_err(io_err(format!("writing {raw}")))?;
    if copied != size {
        return Err(unsafe_entry(raw, "truncated entry"));
    }
    w.flush().map_err(io_err(format!("writing {raw}")))
}

/// Write a whole small file at once (no buffer: most restored files are small).
fn write_bytes(dest: &Path, raw: &str, mode: u32, data: &[u8]) -> Result<(), ArchiveError> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode | 0o600)
        .open(dest)
        .map_err(io_err(format!("creating {raw}")))?;
    f.write_all(data).map_err(io_err(format!("writing {raw}")))
}

/// Extract `blob` into the empty directory `staging`, verifying its digest.
///
/// One thread reads, validates and decompresses; small files are written by a pool of
/// writer threads. Anything refused stops the extraction; the caller removes `staging`.
pub fn unpack(blob: &Path, expected_digest: &str, staging: &Path, limits: Limits) -> Result<Unpacked, ArchiveError> {
    let file = File::open(blob).map_err(io_err(format!("opening blob {}", blob.display())))?;
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
    result
}

fn read_entries(
    file: File,
    expected_digest: &str,
    staging: &Path,
    limits: Limits,
    tx: &std::sync::mpsc::SyncSender<FileJob>,
    writer_error: &std::sync::Mutex<Option<ArchiveError>>,
) -> Result<Unpacked, ArchiveError> {
    // The blob is read (and hashed) a megabyte at a time: blake3 is several times faster on
    // large pieces than on the 8 KiB a default buffer would hand it.
    let reader = HashingReader { inner: file, hasher: blake3::Hasher::new() };
    let dec = zstd::stream::Decoder::with_buffer(BufReader::with_capacity(1 << 20, reader))
        .map_err(io_err("starting zstd"))?;
    let mut archive = tar::Archive::new(dec);
    let mut out = Unpacked::default();
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut symlinks: HashSet<PathBuf> = HashSet::new();
    let mut dirs: HashSet<PathBuf> = HashSet::new();
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
            return Err(unsafe_entry(&raw, "too many entries in the archive"));
        }
        let rel = check_path(&raw)?;
        if !seen.insert(rel.clone()) {
            return Err(unsafe_entry(&raw, "duplicate entry"));
        }
        // Nothing may be created through a symlink made by this archive.
        let mut ancestor = rel.parent();
        while let Some(a) = ancestor {
            if symlinks.contains(a) {
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
        let mode = entry.header().mode().unwrap_or(0o644) & 0o777 & !0o022;
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
                fs::create_dir_all(&dest).map_err(io_err(format!("creating {raw}")))?;
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode | 0o700))
                    .map_err(io_err(format!("chmod {raw}")))?;
                dirs.insert(dest);
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                out.bytes += size;
                if out.bytes > limits.max_bytes {
                    return Err(unsafe_entry(&raw, "archive expands beyond the byte budget"));
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
                std::os::unix::fs::symlink(&target, &dest).map_err(io_err(format!("creating link {raw}")))?;
                symlinks.insert(rel);
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
    Ok(out)
}

/// Read only the logs at the start of an archive (no verification: nothing is extracted).
pub fn read_logs(blob: &Path) -> Result<(Vec<u8>, Vec<u8>), ArchiveError> {
    let file = File::open(blob).map_err(io_err(format!("opening blob {}", blob.display())))?;
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

/// Move each staged output into place. Existing outputs are moved aside first and removed
/// only after the new ones are in place; a failure puts the old ones back.
pub fn install(staging: &Path, root: &Path, outputs: &[String], trash: &Path) -> Result<(), ArchiveError> {
    fs::create_dir_all(trash).map_err(io_err("creating the trash directory"))?;
    let mut moved: Vec<(PathBuf, PathBuf)> = Vec::new();
    let mut installed: Vec<PathBuf> = Vec::new();
    let result = (|| {
        for out in outputs {
            let rel = normalize_output(out);
            let src = staging.join(&rel);
            let dst = root.join(&rel);
            if fs::symlink_metadata(&src).is_err() {
                return Err(ArchiveError::MissingOutput(rel));
            }
            if let Some(parent) = dst.parent() {
                fs::create_dir_all(parent).map_err(io_err(format!("creating parent of {rel}")))?;
            }
            if fs::symlink_metadata(&dst).is_ok() {
                let aside = trash.join(format!("old-{}", unique()));
                fs::rename(&dst, &aside).map_err(io_err(format!("moving old {rel} aside")))?;
                moved.push((aside, dst.clone()));
            }
            fs::rename(&src, &dst).map_err(io_err(format!("moving {rel} into place")))?;
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
                let _ = fs::rename(&aside, &dst);
            }
            Err(e)
        }
    }
}

/// Remove a file, symlink or directory tree.
pub fn remove_any(p: &Path) -> io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
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
        let u = unpack(&p1.tmp_path, &p1.blob_digest, &staging, Limits::default()).unwrap();
        assert_eq!(u.stdout, b"log\n");
        assert_eq!(fs::read_to_string(staging.join("out/a.txt")).unwrap(), "hello");
        assert_eq!(fs::metadata(staging.join("out/sub/b.sh")).unwrap().mode() & 0o777, 0o755);
        assert_eq!(fs::read_link(staging.join("out/link")).unwrap(), Path::new("a.txt"));
        let wrong = unpack(&p1.tmp_path, &p2.blob_digest, &t.path().join("staging2"), Limits::default());
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
