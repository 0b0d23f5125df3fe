//! Reproducibility checks, as Nix's `--check` does them: run a stored step again, in a scratch
//! copy of the worktree, and compare what it produces with the stored entry, file by file.
//!
//! The scratch copy holds the worktree without cairn's store, `.git`, `.cairn-tmp` and every
//! step's declared outputs; the outputs of the steps the checked step needs are restored into
//! it from the store, as a build would find them. The step runs with the environment a build
//! gives it (declared env, `pass_env`, its secrets, its services). The stored entry is
//! extracted beside it through the same hardened extractor as any restore, and the two are
//! compared with [`crate::cache::archive::differences`].

use super::process::Console;
use super::runner::{StepCommand, StepRunner};
use super::{services, Prepared};
use crate::cache::{archive, Store};
use crate::model::Pipeline;
use crate::plan::{Graph, StepState};
use std::collections::BTreeMap;
use std::path::Path;

/// What checking one step found.
#[derive(Debug)]
pub enum Verdict {
    /// Rebuilt byte for byte.
    Reproducible,
    /// Rebuilt differently: each difference, described.
    Differs(Vec<String>),
    /// Could not be checked, and why (no stored entry, the rebuild failed, ...).
    Unchecked(String),
}

/// Copy the worktree at `root` into `scratch`, leaving out `skip` (relative paths: the store,
/// `.git`, `.cairn-tmp`, declared outputs).
fn copy_worktree(root: &Path, scratch: &Path, skip: &[String]) -> std::io::Result<()> {
    let walker = walkdir::WalkDir::new(root).follow_links(false).into_iter().filter_entry(|e| {
        let rel = e.path().strip_prefix(root).unwrap_or(e.path()).to_string_lossy().to_string();
        rel.is_empty() || !skip.iter().any(|s| rel == *s || rel.starts_with(&format!("{s}/")))
    });
    for e in walker {
        let e = e.map_err(std::io::Error::other)?;
        let rel = e.path().strip_prefix(root).unwrap_or(e.path());
        let dst = scratch.join(rel);
        let ft = e.file_type();
        if ft.is_dir() {
            std::fs::create_dir_all(&dst)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(e.path())?, &dst)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &dst)?;
        }
    }
    Ok(())
}

/// Check each of `nodes` (stored hits of `states`) by rebuilding it; results in order.
#[allow(clippy::too_many_arguments)]
pub fn check(
    p: &Pipeline,
    g: &Graph,
    store: &Store,
    root: &Path,
    cache_dir: &Path,
    prepared: &Prepared,
    states: &BTreeMap<usize, StepState>,
    nodes: &[usize],
    console: &Console,
) -> Vec<(usize, Verdict)> {
    let mut skip: Vec<String> = vec![".git".into(), ".cairn-tmp".into()];
    if let Ok(rel) = cache_dir.canonicalize().unwrap_or(cache_dir.to_path_buf()).strip_prefix(root) {
        skip.push(rel.to_string_lossy().to_string());
    }
    for n in &g.nodes {
        skip.extend(n.step.outputs.iter().map(|o| archive::normalize_output(o)));
    }
    let out = nodes.iter().map(|&i| (i, check_one(p, g, store, root, &skip, prepared, states, i, console))).collect();
    let _ = std::fs::remove_dir(root.join(".cairn-tmp")); // only if nothing else is in it
    out
}

#[allow(clippy::too_many_arguments)]
fn check_one(
    p: &Pipeline,
    g: &Graph,
    store: &Store,
    root: &Path,
    skip: &[String],
    prepared: &Prepared,
    states: &BTreeMap<usize, StepState>,
    i: usize,
    console: &Console,
) -> Verdict {
    let n = &g.nodes[i];
    if n.step.reproducible == Some(false) {
        return Verdict::Unchecked("declared `reproducible: false`".into());
    }
    let entry = match states.get(&i).and_then(|s| s.key.clone().filter(|_| s.hit && !s.remote)) {
        Some(key) => match store.get(&key) {
            Ok(Some(e)) => e,
            _ => return Verdict::Unchecked("its entry is not in the local store".into()),
        },
        None => return Verdict::Unchecked("no stored entry for its current key (build it first)".into()),
    };
    if let Some(e) = n.step.secrets.iter().find_map(|s| prepared.secret_errors.get(s)) {
        return Verdict::Unchecked(e.lines().next().unwrap_or("a secret is missing").to_string());
    }
    let Ok(work) = tempfile_dir(root) else { return Verdict::Unchecked("cannot create a scratch directory".into()) };
    let (scratch, stored) = (work.join("worktree"), work.join("stored"));
    let result = (|| {
        copy_worktree(root, &scratch, skip).map_err(|e| format!("copying the worktree: {e}"))?;
        // What the steps it needs produced, as a build would find it.
        for d in g.ancestors(i) {
            let up = &g.nodes[d];
            if up.step.outputs.is_empty() {
                continue;
            }
            let e = states
                .get(&d)
                .and_then(|s| s.key.as_ref())
                .and_then(|k| store.get(k).ok().flatten())
                .ok_or_else(|| format!("step `{}` it needs has no stored entry", up.name))?;
            store
                .restore(&e, &scratch, &up.outputs, &|_| None, false)
                .map_err(|e| format!("restoring `{}`'s outputs: {e}", up.name))?;
        }
        for out in n.step.outputs.iter().map(|o| archive::normalize_output(o)) {
            if let Some(parent) = scratch.join(&out).parent() {
                let _ = std::fs::create_dir_all(parent);
            }
        }
        let mut env = super::process::base_env(n.step.pass_env.iter().map(String::as_str));
        env.extend(n.env.clone());
        for s in &n.step.secrets {
            if let Some(v) = prepared.secret_values.get(s) {
                env.insert(s.clone(), v.clone());
            }
        }
        let users = n.step.services.iter().map(|s| (s.clone(), 1)).collect();
        let svcs = services::Services::new(p, &scratch, users);
        for s in &n.step.services {
            env.extend(svcs.acquire(s).map_err(|e| format!("service `{s}`: {e}"))?);
        }
        let cwd = scratch.join(n.step.workdir.as_deref().unwrap_or("."));
        let prefix = format!("[rebuild {}]", n.name);
        let cmd = StepCommand {
            step: &n.name,
            command: &n.run,
            cwd: &cwd,
            env: &env,
            timeout: n.step.timeout.map(|d| d.0),
            prefix: &prefix,
            sandbox: None,
        };
        let outcome = super::runner::LocalProcess.run(&cmd, console, &prepared.masker);
        svcs.stop_all();
        let outcome = outcome.map_err(|e| format!("could not start it: {e}"))?;
        if !outcome.success() {
            return Err(format!("the rebuild failed ({:?})", outcome.exit));
        }
        let rules = archive::LinkRules::within(&stored, &n.outputs);
        archive::unpack(&store.blob_path(&entry.blob), &entry.blob, &stored, archive::Limits::default(), &rules)
            .map_err(|e| format!("extracting the stored entry: {e}"))?;
        Ok(archive::differences(&stored, &scratch, &n.outputs))
    })();
    let _ = archive::remove_any(&work);
    match result {
        Ok(d) if d.is_empty() => Verdict::Reproducible,
        Ok(d) => Verdict::Differs(d),
        Err(why) => Verdict::Unchecked(why),
    }
}

/// A fresh scratch directory beside the worktree's own temporary files (same filesystem,
/// so restores can rename into it).
fn tempfile_dir(root: &Path) -> std::io::Result<std::path::PathBuf> {
    let dir = root.join(".cairn-tmp").join(format!("rebuild-{}", archive::unique()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
