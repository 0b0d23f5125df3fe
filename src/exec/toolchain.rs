//! Toolchain probes that cost nothing when nothing changed.
//!
//! A probe (`elixir --version`) boots a runtime: 0.3–0.6 s for the BEAM, most of a warm run.
//! Its output changes only when what it ran changes, so the first time a probe runs here it
//! is traced (`exec::trace`): every file its processes opened or executed is recorded with its
//! `lstat` and `stat` (device, inode, size, mtime, ctime), and every path they looked for and
//! did not find (a `.tool-versions` an asdf shim would read, a `PATH` entry earlier than the
//! one that answered) is recorded as absent. The next run re-uses the output when every
//! recorded file stats the same and every absent one is still absent; anything else runs the
//! probe again (and records it again).
//!
//! The record's key holds what decides the probe besides files: its command, the directory it
//! runs in, `PATH`, the values of the environment variables toolchain managers read (`ASDF_*`,
//! `MISE_*`, `RUSTUP_*`, `CARGO_*`, `JAVA_HOME`, `GOROOT`, `ERL_*`, ... and the names a
//! toolchain declares in `env`), the user and the machine (`/etc/machine-id` and the host
//! name): a record is never used on another machine, even when the store is copied there.
//! Paths under `/proc`, `/sys`, `/dev` and `/run` change by themselves, and files the probe
//! wrote are its own: neither is recorded. Where tracing is unavailable, or a probe opened more than 20,000 paths,
//! it simply runs every time.

use super::process;
use super::trace::{self, Kind};
use crate::cache::Store;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Environment variables (by prefix, or whole names) a probe's output may depend on besides
/// `PATH`, whatever the toolchain declares.
const MANAGER_ENV: &[&str] = &[
    "ASDF_",
    "MISE_",
    "RTX_",
    "RUSTUP_",
    "CARGO_",
    "NVM_",
    "VOLTA_",
    "PYENV_",
    "RBENV_",
    "GOENV_",
    "ERL_",
    "ELIXIR_",
    "KERL_",
    "NODE_",
    "JAVA_HOME",
    "GOROOT",
    "GOTOOLCHAIN",
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "LD_LIBRARY_PATH",
];

/// Most paths a record may hold (checking it must stay cheap).
const MAX_PATHS: usize = 20_000;

const VERSION: u32 = 2;

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq, Eq, Clone, Copy)]
struct Stat(u64, u64, u64, i64, i64);

impl Stat {
    fn of(m: &std::fs::Metadata) -> Stat {
        Stat(
            m.dev(),
            m.ino(),
            m.size(),
            m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        )
    }
}

/// One path as the probe found it: (`lstat`, `stat`); `(None, None)`: absent.
type Seen = (Option<Stat>, Option<Stat>);

fn look(path: &Path) -> Seen {
    (std::fs::symlink_metadata(path).ok().map(|m| Stat::of(&m)), std::fs::metadata(path).ok().map(|m| Stat::of(&m)))
}

/// How a path looks now; a directory only looked at counts by identity (device, inode):
/// what a `stat` of it tells a shell checking `$PWD`, whose times move with every entry.
fn look_as(path: &Path, identity_only: bool) -> Seen {
    let seen = look(path);
    if identity_only && std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
        let id = |s: Option<Stat>| s.map(|s| Stat(s.0, s.1, 0, 0, 0));
        (id(seen.0), id(seen.1))
    } else {
        seen
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Record {
    version: u32,
    output: String,
    /// Path, how it looked, whether it was only looked at (not opened).
    paths: Vec<(String, Seen, bool)>,
}

/// What a probe said: its exit status and its output (stdout then stderr, trimmed).
pub struct Probed {
    pub success: bool,
    pub status: String,
    pub output: String,
    /// Reused from an earlier run here (nothing it depends on changed).
    pub cached: bool,
}

fn machine() -> String {
    let id = std::fs::read_to_string("/etc/machine-id").unwrap_or_default();
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}|{}|{}", id.trim(), host.trim(), unsafe { libc::getuid() })
}

/// The record key: what decides the probe besides the files it reads.
fn key(command: &str, cwd: &Path, declared_env: &[String]) -> String {
    let mut h = blake3::Hasher::new();
    let mut put = |s: &str| {
        h.update(&(s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    };
    put("cairn-probe");
    put(&VERSION.to_string());
    put(env!("CARGO_PKG_VERSION"));
    put(command);
    put(&cwd.display().to_string());
    put(&machine());
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            k == "PATH"
                || k == "HOME"
                || declared_env.contains(k)
                || MANAGER_ENV.iter().any(|p| k == p || (p.ends_with('_') && k.starts_with(p)))
        })
        .collect();
    vars.sort();
    for (k, v) in vars {
        put(&k);
        put(&v);
    }
    h.finalize().to_hex().to_string()
}

/// Paths that change by themselves: not evidence of a different toolchain.
fn volatile(path: &str) -> bool {
    ["/proc/", "/sys/", "/dev/", "/run/"].iter().any(|p| path.starts_with(p))
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_string()
}

/// Run `command` (a toolchain probe) in `cwd`, or reuse its output from the last run when
/// nothing it depends on changed (see the module docs).
pub fn probe(store: Option<&Store>, command: &str, cwd: &Path, declared_env: &[String]) -> std::io::Result<Probed> {
    let traced = store.is_some() && trace::available();
    let k = traced.then(|| key(command, cwd, declared_env));
    if let (Some(store), Some(k)) = (store, &k) {
        let record = store.load_probe(k).and_then(|b| serde_json::from_slice::<Record>(&b).ok());
        if let Some(r) = record.filter(|r| r.version == VERSION) {
            if r.paths.iter().all(|(p, seen, only_looked)| look_as(Path::new(p), *only_looked) == *seen) {
                return Ok(Probed { success: true, status: "exit status: 0".into(), output: r.output, cached: true });
            }
        }
    }
    if !traced {
        let out = process::capture(command, cwd, false)?;
        return Ok(Probed {
            success: out.status.success(),
            status: out.status.to_string(),
            output: text(&out),
            cached: false,
        });
    }
    let (out, accesses) = process::capture_traced(command, cwd)?;
    let probed =
        Probed { success: out.status.success(), status: out.status.to_string(), output: text(&out), cached: false };
    if probed.success {
        // What the probe wrote itself (a temp file, a lock) is no evidence of the toolchain.
        let written: std::collections::HashSet<&Path> =
            accesses.iter().filter(|a| a.kind == Kind::Write).map(|a| a.path.as_path()).collect();
        // A directory the probe only looked at (a shell checking `$PWD`) counts by identity:
        // its times move whenever an entry in it does (the workspace root, every build).
        let opened: std::collections::HashSet<&Path> =
            accesses.iter().filter(|a| matches!(a.kind, Kind::Read | Kind::Exec)).map(|a| a.path.as_path()).collect();
        let mut paths: Vec<&Path> = accesses
            .iter()
            .filter(|a| matches!(a.kind, Kind::Read | Kind::Exec | Kind::Stat) && !written.contains(a.path.as_path()))
            .map(|a| a.path.as_path())
            .filter(|p| !volatile(&p.to_string_lossy()))
            .collect();
        paths.sort();
        paths.dedup();
        if paths.len() <= MAX_PATHS {
            let record = Record {
                version: VERSION,
                output: probed.output.clone(),
                paths: paths
                    .into_iter()
                    .map(|p| {
                        let only_looked = !opened.contains(p);
                        (p.to_string_lossy().into_owned(), look_as(p, only_looked), only_looked)
                    })
                    .collect(),
            };
            if let (Some(store), Some(k), Ok(bytes)) = (store, &k, serde_json::to_vec(&record)) {
                let _ = store.save_probe(k, &bytes);
            }
        }
    }
    Ok(probed)
}
