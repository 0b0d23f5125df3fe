//! One build per workspace at a time.
//!
//! Two builds in one checkout would run a step while the other restores or packs the same
//! outputs, and store whatever they caught mid-write under a key that promises otherwise. A
//! build therefore holds an exclusive `flock` on the workspace's root directory itself for as
//! long as it runs: no file is written into the worktree for it. The kernel drops the lock
//! when the process dies, however it dies, so a crashed build never leaves the workspace
//! locked. Who holds it (pid, start, command line) is written outside the worktree, to
//! `$TMPDIR/cairn-workspaces/<hash of the root>`, which a waiting build prints.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cairn build holds this workspace ({holder})\n  hint: wait for it, or run without --no-wait to queue behind it")]
    Busy { holder: String },
    #[error("cannot lock the workspace at {}: {source}\n  hint: check that the directory exists and can be read", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("interrupted while waiting for the workspace lock")]
    Interrupted,
}

/// Held for the life of a build; dropping it (or the process ending) releases the lock.
pub struct WorkspaceLock {
    _dir: File,
}

fn try_lock(f: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Where the holder of `root`'s lock says who it is (outside the worktree).
pub fn holder_file(root: &Path) -> PathBuf {
    let id = blake3::hash(root.as_os_str().as_encoded_bytes()).to_hex();
    std::env::temp_dir().join("cairn-workspaces").join(&id[..16])
}

fn holder(root: &Path) -> String {
    let s = std::fs::read_to_string(holder_file(root)).unwrap_or_default();
    let s = s.trim();
    if s.is_empty() {
        "a build that is just starting".into()
    } else {
        s.to_string()
    }
}

impl WorkspaceLock {
    /// Take the workspace's lock. If another build has it: fail at once (`wait` false), or
    /// say who has it and wait, until it is free or the run is interrupted.
    pub fn acquire(root: &Path, wait: bool, on_wait: impl FnOnce(&str)) -> Result<WorkspaceLock, LockError> {
        let io = |source| LockError::Io { path: root.to_path_buf(), source };
        let dir = OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY).open(root).map_err(io)?;
        if !try_lock(&dir).map_err(io)? {
            let who = holder(root);
            if !wait {
                return Err(LockError::Busy { holder: who });
            }
            on_wait(&who);
            let started = Instant::now();
            loop {
                if crate::interrupt::interrupted() {
                    return Err(LockError::Interrupted);
                }
                std::thread::sleep(Duration::from_millis(if started.elapsed() < Duration::from_secs(2) {
                    20
                } else {
                    100
                }));
                if try_lock(&dir).map_err(io)? {
                    break;
                }
            }
        }
        let args: Vec<String> = std::env::args().collect();
        let info = format!(
            "pid {}, started {}, `{}`",
            std::process::id(),
            crate::clock::rfc3339_local(crate::clock::now_ms()),
            args.join(" ")
        );
        // Best effort: who holds the lock is only ever shown to a waiting build.
        let path = holder_file(root);
        if let Some(parent) = path.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        let tmp = path.with_extension(format!("{}", std::process::id()));
        if std::fs::write(&tmp, info).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
        Ok(WorkspaceLock { _dir: dir })
    }
}
