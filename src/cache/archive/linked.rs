//! Restores that write less: an unpacked copy of an entry, kept in the store, restored by
//! hard links.
//!
//! On this kind of disk writing a file costs about a millisecond of kernel time, so
//! extracting a 30,000-file `deps/` takes seconds however fast zstd is; linking it takes what
//! `cp -al` takes. The first restore of an entry extracts it as before and then links the
//! extracted tree into `unpacked/BLOB/` in the store, with a manifest of every file's inode,
//! size and mtime and every directory's mode and symlink's target ([`make_copy`]). Later
//! restores build the staging directory by linking from that copy ([`link_from`]); the link
//! rules and directory modes are applied as for an extraction, and the staging directory is
//! installed the same way.
//!
//! # Keeping the copy true
//! A restored file and the copy are one inode, so a write in place to either changes both.
//! Three things keep a stale copy from ever being restored:
//! - before a step runs, its outputs that are linked (more than one link) are replaced by
//!   private copies ([`unshare`]), so a step rebuilding in place never writes through;
//! - steps read other steps' outputs read-only under the sandbox;
//! - every restore from a copy first checks each file's inode, size and mtime against the
//!   manifest: a file written since (by hand, say) makes the copy stale; it is removed and
//!   the entry extracted from its blob, which is checked against its digest.
//!
//! Where the store and the workspace are on different filesystems (no hard links), nothing
//! changes: restores extract.

use super::ArchiveError;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One entry of an unpacked copy.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
enum Item {
    /// A directory and its mode.
    D(String, u32),
    /// A regular file: inode, size, mtime (ns).
    F(String, u64, u64, i64),
    /// A symlink and its target.
    L(String, String),
}

/// What an unpacked copy holds.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    items: Vec<Item>,
    /// Bytes of its files (what the store counts for it).
    pub bytes: u64,
    /// The entry's logs (masked text, as captured).
    stdout: String,
    stderr: String,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let context = context.into();
    move |source| ArchiveError::Io { context, source }
}

fn mtime_ns(m: &fs::Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// Link the extracted tree `staging` into `dest` (which must not exist) and describe it.
/// `Err` on any failure (no hard links across filesystems, say); the caller removes `dest`.
pub fn make_copy(staging: &Path, dest: &Path, logs: &super::Unpacked) -> Result<Manifest, ArchiveError> {
    fs::create_dir_all(dest).map_err(io("creating an unpacked copy"))?;
    let mut items = Vec::new();
    let mut bytes = 0;
    for e in walkdir::WalkDir::new(staging).min_depth(1).sort_by_file_name() {
        if crate::interrupt::interrupted() {
            return Err(ArchiveError::Interrupted);
        }
        let e = e.map_err(|e| io("reading the extracted tree")(e.into()))?;
        let rel = e.path().strip_prefix(staging).expect("below").to_string_lossy().into_owned();
        let to = dest.join(&rel);
        let meta = e.path().symlink_metadata().map_err(io(format!("stat {}", e.path().display())))?;
        let ft = meta.file_type();
        if ft.is_dir() {
            // The copy's directories stay writable (so it can be removed); their modes are in
            // the manifest, applied to each restore.
            fs::create_dir(&to).map_err(io(format!("mkdir {}", to.display())))?;
            items.push(Item::D(rel, meta.permissions().mode() & 0o7777));
        } else if ft.is_symlink() {
            let target = fs::read_link(e.path()).map_err(io(format!("readlink {}", e.path().display())))?;
            std::os::unix::fs::symlink(&target, &to).map_err(io(format!("symlink {}", to.display())))?;
            items.push(Item::L(rel, target.to_string_lossy().into_owned()));
        } else if ft.is_file() {
            fs::hard_link(e.path(), &to).map_err(io(format!("link {}", to.display())))?;
            bytes += meta.size();
            items.push(Item::F(rel, meta.ino(), meta.size(), mtime_ns(&meta)));
        }
    }
    Ok(Manifest {
        items,
        bytes,
        stdout: String::from_utf8_lossy(&logs.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&logs.stderr).into_owned(),
    })
}

/// Why a copy cannot be used.
#[derive(Debug)]
pub enum NotUsable {
    /// A file changed since the copy was made (or vanished): remove the copy.
    Stale(String),
    /// Linking failed (another filesystem, ...), or the restore was refused or interrupted.
    Failed(ArchiveError),
}

/// Build `staging` from the copy at `copy` by hard links, after checking every file is as
/// the manifest says; symlinks go through `links` as an extraction's do.
pub fn link_from(
    copy: &Path,
    m: &Manifest,
    staging: &Path,
    links: &super::LinkRules,
) -> Result<super::Unpacked, NotUsable> {
    let failed = NotUsable::Failed;
    // First the check, all of it, before anything is written.
    for item in &m.items {
        if let Item::F(rel, ino, size, mtime) = item {
            match copy.join(rel).symlink_metadata() {
                Ok(meta)
                    if meta.is_file() && meta.ino() == *ino && meta.size() == *size && mtime_ns(&meta) == *mtime => {}
                _ => return Err(NotUsable::Stale(rel.clone())),
            }
        }
    }
    fs::create_dir_all(staging).map_err(|e| failed(io("creating the staging directory")(e)))?;
    let mut out = super::Unpacked {
        stdout: m.stdout.clone().into_bytes(),
        stderr: m.stderr.clone().into_bytes(),
        ..Default::default()
    };
    let mut symlinks = std::collections::HashMap::new();
    let mut dir_modes: Vec<(PathBuf, u32)> = Vec::new();
    for item in &m.items {
        if crate::interrupt::interrupted() {
            return Err(failed(ArchiveError::Interrupted));
        }
        out.entries += 1;
        match item {
            Item::D(rel, mode) => {
                let to = staging.join(rel);
                fs::create_dir(&to).map_err(|e| failed(io(format!("mkdir {}", to.display()))(e)))?;
                dir_modes.push((to, *mode));
            }
            Item::F(rel, _, size, _) => {
                let to = staging.join(rel);
                fs::hard_link(copy.join(rel), &to).map_err(|e| failed(io(format!("link {}", to.display()))(e)))?;
                out.bytes += size;
            }
            Item::L(rel, target) => {
                let to = staging.join(rel);
                std::os::unix::fs::symlink(target, &to)
                    .map_err(|e| failed(io(format!("symlink {}", to.display()))(e)))?;
                symlinks.insert(PathBuf::from(rel), PathBuf::from(target));
            }
        }
    }
    super::links::check_links(&symlinks, links).map_err(failed)?;
    for (dir, mode) in dir_modes.iter().rev() {
        fs::set_permissions(dir, fs::Permissions::from_mode(*mode))
            .map_err(|e| failed(io(format!("chmod {}", dir.display()))(e)))?;
    }
    Ok(out)
}

/// Replace every regular file under `paths` (relative to `root`) that has other links by a
/// private copy with the same bytes and mode, so a step writing it in place never writes
/// through to a store's unpacked copy. Returns how many were replaced.
pub fn unshare(root: &Path, paths: &[String]) -> std::io::Result<usize> {
    let mut n = 0;
    for rel in paths {
        let base = root.join(rel);
        if base.symlink_metadata().is_err() {
            continue;
        }
        for e in walkdir::WalkDir::new(&base).follow_links(false) {
            let Ok(e) = e else { continue };
            if !e.file_type().is_file() {
                continue;
            }
            let meta = e.metadata()?;
            if meta.nlink() < 2 {
                continue;
            }
            let path = e.path();
            let tmp = path.with_file_name(format!(".{}.cairn-unshare", e.file_name().to_string_lossy()));
            let dir = path.parent().expect("a file has a parent");
            // A read-only directory is opened for the swap, then closed again.
            let dir_mode = dir.metadata()?.permissions().mode();
            let writable = dir_mode & 0o200 != 0;
            if !writable {
                fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode | 0o700))?;
            }
            // The copy is written while it is private and writable: bytes, then the original
            // mtime, then the original mode; then it replaces the linked file.
            let result = fs::copy(path, &tmp).and_then(|_| {
                fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))?;
                fs::File::options()
                    .write(true)
                    .open(&tmp)?
                    .set_times(fs::FileTimes::new().set_modified(meta.modified()?))?;
                fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.permissions().mode()))?;
                fs::rename(&tmp, path)
            });
            if result.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            if !writable {
                fs::set_permissions(dir, fs::Permissions::from_mode(dir_mode))?;
            }
            result?;
            n += 1;
        }
    }
    Ok(n)
}
