//! Hermetic steps on Linux, unprivileged: a Landlock ruleset applied to a step's process
//! (and everything it starts) just before it runs its command.
//!
//! # The rule
//! Inside the workspace a step may read only its declared inputs, the outputs of the steps
//! it needs and its own outputs, and write only its own outputs (and its `scratch` paths,
//! such as cargo's `target/`). Directory names stay visible everywhere in the workspace
//! (Landlock hides contents, not existence). Outside the workspace nothing changes: every
//! sibling of every directory on the path to the workspace is granted in full, so the system,
//! toolchains, `$HOME` and the step's private `TMPDIR` work as before. With Landlock ABI 4 or
//! later, TCP connections are refused except to the ports of the services the step uses,
//! unless the step declares `network: true`.
//!
//! `Strict` narrows the outside to system paths, the private `TMPDIR` and the step's `host`
//! paths ([`Policy::outside`]). A [`Policy`] also says whether the step is traced
//! (`exec::trace`, `Report` and `Strict`); its read and write sets are then what the traced
//! accesses are compared with (`plan::undeclared`).
//!
//! A read of an undeclared file fails with `EACCES`, so the tool names the file itself (mix:
//! `could not read file ".../config/local.exs": permission denied`); a hit can then never rest
//! on it, since the step never succeeded with it.
//!
//! # Cost
//! One rule per granted directory costs nothing measurable; per-file rules cost ~10 µs each,
//! so input globs that cover whole directories (`lib/**`) become one directory rule when no
//! exclude carves files out of them.

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreated, RulesetCreatedAttr, RulesetStatus, ABI,
};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// What a step may touch inside the workspace (relative paths), and where it may connect.
#[derive(Debug, Default, Clone)]
pub struct Policy {
    /// Files and directory trees it may read.
    pub read: BTreeSet<String>,
    /// Directory trees and files it may read and write.
    pub write: BTreeSet<String>,

    /// `None`: any TCP connection; `Some(ports)`: only to these.
    pub connect: Option<Vec<u16>>,
    /// Apply Landlock (`enforce`, `strict`).
    pub enforce: bool,
    /// Trace what the step opens (`report`, `strict`; see `exec::trace`).
    pub trace: bool,
    /// `strict`: outside the workspace only these are granted (system directories, the
    /// private temp dir, the step's `host` paths); `None`: everything outside stays as it was.
    pub outside: Option<Vec<PathBuf>>,
    /// Output directories and files made for the rules to attach to (with the modification
    /// time they were made with); removed again after the step if it left them untouched
    /// and empty, so an output it did not produce is still missing.
    pub made: Vec<(PathBuf, Option<std::time::SystemTime>)>,
}

impl Policy {
    /// Remove what [`Policy::made`] holds that the step left untouched and empty.
    pub fn unmake(&self) {
        for (path, made_at) in &self.made {
            let Ok(meta) = std::fs::symlink_metadata(path) else { continue };
            if meta.is_dir() {
                let _ = std::fs::remove_dir(path); // only if empty
            } else if meta.len() == 0 && meta.modified().ok() == *made_at {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Which Landlock ABI this kernel has (`None`: no Landlock: an old kernel, another OS, or
/// Landlock disabled).
///
/// `CAIRN_LANDLOCK=off` pretends there is none (to see how a build degrades on such a machine).
pub fn abi() -> Option<i32> {
    if std::env::var_os("CAIRN_LANDLOCK").is_some_and(|v| v == "off") {
        return None;
    }
    // SAFETY: landlock_create_ruleset with LANDLOCK_CREATE_RULESET_VERSION takes no pointer.
    let v = unsafe { libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32) };
    (v > 0).then_some(v as i32)
}

/// The directory entries to grant in full so that everything outside `root` stays as it
/// was: every sibling of every directory on the path from `/` to `root`.
fn outside(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dir = PathBuf::from("/");
    for comp in root.components().skip(1) {
        let next = comp.as_os_str();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if e.file_name() != next {
                out.push(e.path());
            }
        }
        dir.push(next);
    }
    out
}

/// What `strict` grants outside the workspace, read-only: the system and where packaged
/// toolchains live.
pub const SYSTEM: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/nix", "/snap", "/proc", "/sys",
    "/dev", "/run",
];

/// What `strict` lets a step write outside the workspace (besides its temp dir).
const WRITABLE: &[&str] = &["/dev"];

/// Build the ruleset for `policy` in the parent (paths are opened here); the child only
/// calls [`restrict`]. `Err` says why no sandbox could be built.
pub fn ruleset(root: &Path, policy: &Policy) -> Result<RulesetCreated, String> {
    let abi = ABI::V7;
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let err = |e: landlock::RulesetError| e.to_string();
    let mut r = Ruleset::default().set_compatibility(CompatLevel::BestEffort).handle_access(all).map_err(err)?;
    if policy.connect.is_some() {
        r = r.handle_access(AccessNet::ConnectTcp).map_err(err)?;
    }
    let mut created = r.create().map_err(err)?;
    let grant = |created: RulesetCreated, path: &Path, access: BitFlags<AccessFs>| -> Result<RulesetCreated, String> {
        match PathFd::new(path) {
            Ok(fd) => created.add_rule(PathBeneath::new(fd, access)).map_err(err),
            Err(_) => Ok(created), // gone meanwhile, or not there yet: nothing to grant
        }
    };
    match &policy.outside {
        None => {
            for p in outside(root) {
                created = grant(created, &p, all)?;
            }
        }
        Some(allowed) => {
            for p in allowed {
                let rights = if WRITABLE.iter().any(|w| p == Path::new(w)) || p.starts_with(std::env::temp_dir()) {
                    all
                } else {
                    read
                };
                created = grant(created, p, rights)?;
            }
        }
    }
    // Directory listings (names, not contents) everywhere: in the workspace, and of the
    // directories on the way to it (a step that sandboxes its own children, as cairn's tests
    // do, must be able to list `/` to grant what lies outside its workspace).
    created = grant(created, Path::new("/"), AccessFs::ReadDir.into())?;
    for rel in &policy.read {
        created = grant(created, &root.join(rel), read)?;
    }
    for rel in &policy.write {
        created = grant(created, &root.join(rel), all)?;
    }
    for port in policy.connect.iter().flatten() {
        created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp)).map_err(err)?;
    }
    Ok(created)
}

/// Apply a ruleset to the calling process (in the child, between fork and exec).
pub fn restrict(r: RulesetCreated) -> std::io::Result<()> {
    match r.restrict_self() {
        Ok(status) if status.ruleset != RulesetStatus::NotEnforced => Ok(()),
        Ok(_) => Err(std::io::Error::other("Landlock is not enforced on this kernel")),
        Err(e) => Err(std::io::Error::other(e.to_string())),
    }
}

/// Directory rules for input globs that cover whole trees (`lib/**`, `lib/`), when no
/// exclude applies and every file in the tree is an input (`count_files(tree)` says how many
/// there are: a git-ignored `config/local.exs` makes `config/` a per-file grant); the other
/// inputs are granted file by file.
pub fn input_rules(
    include: &[String],
    exclude: &[String],
    files: impl Iterator<Item = String>,
    count_files: impl Fn(&str) -> usize,
) -> BTreeSet<String> {
    let files: Vec<String> = files.collect();
    let trees: Vec<String> = if exclude.is_empty() {
        include
            .iter()
            .filter(|g| !g.starts_with('!'))
            .filter_map(|g| g.strip_suffix("/**").or_else(|| g.strip_suffix('/')))
            .filter(|d| !d.contains(['*', '?', '[', '{']))
            .map(String::from)
            .filter(|t| {
                let inside = files.iter().filter(|f| f.starts_with(&format!("{t}/"))).count();
                inside > 0 && inside == count_files(t)
            })
            .collect()
    } else {
        Vec::new()
    };
    let mut out: BTreeSet<String> = trees.iter().cloned().collect();
    for f in files {
        if !trees.iter().any(|t| f.starts_with(&format!("{t}/"))) {
            out.insert(f);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_trees_become_one_rule_unless_something_is_excluded() {
        let files = ["lib/a.ex", "lib/b/c.ex", "mix.exs", "test/x_test.exs"].map(String::from);
        let inc = ["lib/**", "mix.exs", "test/**/*.exs"].map(String::from);
        let on_disk = |t: &str| if t == "lib" { 2 } else { 0 };
        let rules = input_rules(&inc, &[], files.iter().cloned(), on_disk);
        assert_eq!(rules.into_iter().collect::<Vec<_>>(), ["lib", "mix.exs", "test/x_test.exs"]);
        let rules = input_rules(&inc, &["lib/b/**".to_string()], files.iter().cloned(), on_disk);
        assert_eq!(rules.len(), 4, "per file when something is excluded");
        let ignored_too = |t: &str| if t == "lib" { 3 } else { 0 };
        let rules = input_rules(&inc, &[], files.iter().cloned(), ignored_too);
        assert_eq!(rules.len(), 4, "per file when the tree holds a file that is not an input");
    }
}
