//! One build per workspace at a time.
//!
//! Two builds in one checkout would run a step while the other restores or packs the same
//! outputs, and store whatever they caught mid-write under a key that promises otherwise. A
//! build therefore holds an exclusive `flock` on `.cairn-tmp/build.lock` in the workspace for
//! as long as it runs. The kernel drops the lock when the process dies, however it dies, so a
//! crashed build never leaves the workspace locked. The file holds who has it (pid, start,
//! command line), which a waiting build prints.
//!
//! `.cairn-tmp/` is cairn's own scratch directory in the worktree (restores stage there); it
//! is never walked for inputs and carries a `.gitignore` of `*` so `git status` stays clean.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("another cairn build holds this workspace ({holder})\n  hint: wait for it, or run without --no-wait to queue behind it")]
    Busy { holder: String },
    #[error("cannot lock the workspace at {}: {source}\n  hint: check that the directory is writable", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("interrupted while waiting for the workspace lock")]
    Interrupted,
}

/// Held for the life of a build; dropping it (or the process ending) releases the lock.
pub struct WorkspaceLock {
    _file: File,
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

fn holder(f: &mut File) -> String {
    let mut s = String::new();
    let _ = f.rewind();
    let _ = f.read_to_string(&mut s);
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
        let dir = root.join(".cairn-tmp");
        let path = dir.join("build.lock");
        let io = |source| LockError::Io { path: path.clone(), source };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let ignore = dir.join(".gitignore");
        if !ignore.exists() {
            let _ = std::fs::write(&ignore, "*\n");
        }
        let mut f = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        if !try_lock(&f).map_err(io)? {
            let who = holder(&mut f);
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
                if try_lock(&f).map_err(io)? {
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
        let _ = f.set_len(0);
        let _ = f.rewind();
        let _ = f.write_all(info.as_bytes());
        Ok(WorkspaceLock { _file: f })
    }
}
