//! Swapping staged outputs into the worktree, never through a link, and removing trees that
//! may hold read-only directories.

use super::*;

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
