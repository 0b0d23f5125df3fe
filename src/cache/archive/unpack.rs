//! The hardened extractor: one reader validates and decompresses, writer threads create
//! small files; permission bits come back exactly as archived.

use super::*;

/// What came out of an archive besides the staged files.
#[derive(Debug, Default)]
pub struct Unpacked {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub entries: u64,
    pub bytes: u64,
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
pub(super) fn link_stays_inside(link: &Path, target: &Path) -> bool {
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
        if crate::interrupt::interrupted() {
            return Err(ArchiveError::Interrupted);
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
