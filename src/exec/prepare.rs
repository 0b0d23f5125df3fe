//! Before any step runs: probe toolchains (and check their version requirements), resolve
//! secrets, check literal inputs exist, and hash every selected step's inputs in one walk
//! (or replay the scan journal). Yields each step's key manifest without its upstream part.

use super::*;

/// OS and architecture, as they appear in keys.
pub fn platform() -> String {
    format!("{}-{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// Does the probe output show version `require` (e.g. "1.18" matches "1.18.3", not "1.180")?
pub fn version_matches(output: &str, require: &str) -> bool {
    let bytes = output.as_bytes();
    let mut from = 0;
    while let Some(pos) = output[from..].find(require) {
        let at = from + pos;
        let end = at + require.len();
        let before_ok = at == 0 || !(bytes[at - 1].is_ascii_digit() || bytes[at - 1] == b'.');
        let after_ok = end == bytes.len() || !bytes[end].is_ascii_digit();
        if before_ok && after_ok {
            return true;
        }
        from = at + 1;
    }
    false
}

/// Everything known about a step before upstream steps have run.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Per selected node: the manifest with `upstream` still empty.
    pub manifests: BTreeMap<usize, KeyManifest>,
    pub inputs: BTreeMap<usize, StepInputs>,
    pub masker: Masker,
    pub secret_values: BTreeMap<String, String>,
    /// Secrets that could not be resolved: only a step that runs needs its secrets, so a
    /// fully cached run succeeds without them (a fork's pull request has no tokens).
    pub secret_errors: BTreeMap<String, String>,
    /// Which step reads each input file (for checking where restored links lead).
    pub input_owners: std::sync::OnceLock<BTreeMap<String, usize>>,
    /// Warnings from preparing (a store that could not keep its stat cache, ...).
    pub warnings: Vec<String>,
    pub scan: inputs::ScanStats,
    pub walk: WalkOptions,
    /// The scan journal still to be kept (from [`prepare_deferring_journal`]): the build
    /// saves it while its steps run, off the path of a one-file change.
    pub pending_journal: Option<(String, inputs::journal::Journal)>,
}

impl Prepared {
    /// Keep the pending scan journal, if any; a failure is a warning.
    pub fn save_journal(journal: Option<(String, inputs::journal::Journal)>, store: &Store) -> Option<String> {
        let (sig, j) = journal?;
        let t = Instant::now();
        let r = store.save_journal(&sig, &j).err();
        timing("save scan journal", t);
        r.map(|e| format!("could not save the scan journal (the next run walks the tree): {e}"))
    }
}

/// Which files a step reads: its globs and those of its input sets.
pub fn step_inputs(p: &Pipeline, step: &crate::model::Step) -> StepInputs {
    let mut include = step.inputs.clone();
    let mut exclude = step.exclude.clone();
    for set in &step.input_sets {
        if let Some(s) = p.input_sets.get(set) {
            include.extend(s.include.iter().cloned());
            exclude.extend(s.exclude.iter().cloned());
        }
    }
    StepInputs { include, exclude, untracked: step.untracked.clone() }
}

pub fn walk_options(p: &Pipeline, root: &Path, cache_dir: &Path, threads: usize) -> WalkOptions {
    let mut prune: Vec<String> =
        p.steps.iter().flat_map(|(_, s)| s.outputs.iter().map(|o| archive::normalize_output(o))).collect();
    prune.sort();
    prune.dedup();
    WalkOptions {
        root: root.to_path_buf(),
        gitignore: p.gitignore,
        prune,
        prune_abs: vec![cache_dir.canonicalize().unwrap_or_else(|_| cache_dir.to_path_buf())],
        threads,
    }
}

pub use crate::inputs::timing;

/// Accumulated per-phase time inside workers (nanoseconds), printed with `CAIRN_TIMINGS`.
pub static PHASE_NS: [std::sync::atomic::AtomicU64; 4] = [const { std::sync::atomic::AtomicU64::new(0) }; 4];
const PHASE_NAMES: [&str; 4] = ["worker: key", "worker: lookup", "worker: outputs in place", "worker: logs/restore"];

pub(super) fn phase(i: usize, since: Instant) {
    PHASE_NS[i].fetch_add(since.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
}

pub fn print_phases() {
    if std::env::var_os("CAIRN_TIMINGS").is_some() {
        for (i, n) in PHASE_NAMES.iter().enumerate() {
            let ns = PHASE_NS[i].load(std::sync::atomic::Ordering::Relaxed);
            eprintln!("cairn timing: {n:<24} {:>8.1} ms (summed over workers)", ns as f64 / 1e6);
        }
    }
}

/// Literal input paths (no glob characters) of `selected` steps that do not exist: each one
/// an error with a hint that can be followed as written.
pub fn missing_literal_inputs(p: &Pipeline, g: &Graph, selected: &[usize], root: &Path) -> Vec<ExecError> {
    let mut out = Vec::new();
    for &i in selected {
        for inc in &step_inputs(p, &g.nodes[i].step).include {
            let literal = !inc.starts_with('!') && !inc.contains(['*', '?', '[', '{']);
            if literal && std::fs::symlink_metadata(root.join(inc.trim_end_matches('/'))).is_err() {
                let hint = match inc.rsplit('/').next().unwrap_or(inc) {
                    "mix.lock" => format!(
                        "run `mix deps.get` and commit mix.lock (cairn keys `deps/` on it); a project whose mix.exs \
                         declares no dependencies has no mix.lock: write the input as `{inc}*`, which may match nothing"
                    ),
                    "Cargo.lock" => "run `cargo generate-lockfile` and commit Cargo.lock".to_string(),
                    _ => format!("create it, or write the input as a glob (`{inc}*`) if it is optional"),
                };
                out.push(ExecError::MissingInput { step: g.nodes[i].name.clone(), path: inc.clone(), hint });
            }
        }
    }
    out
}

/// Probe toolchains, resolve secrets, hash inputs.
pub fn prepare(
    p: &Pipeline,
    g: &Graph,
    selected: &[usize],
    root: &Path,
    store: &Store,
    cache_dir: &Path,
    threads: usize,
) -> Result<Prepared, ExecError> {
    let mut prepared = prepare_deferring_journal(p, g, selected, root, store, cache_dir, threads)?;
    if let Some(w) = Prepared::save_journal(prepared.pending_journal.take(), store) {
        prepared.warnings.push(w);
    }
    Ok(prepared)
}

/// [`prepare`], leaving the scan journal to keep in [`Prepared::pending_journal`].
pub fn prepare_deferring_journal(
    p: &Pipeline,
    g: &Graph,
    selected: &[usize],
    root: &Path,
    store: &Store,
    cache_dir: &Path,
    threads: usize,
) -> Result<Prepared, ExecError> {
    // Toolchains, probed once each, in parallel.
    let used: BTreeSet<&str> =
        selected.iter().flat_map(|&i| g.nodes[i].step.toolchains.iter().map(String::as_str)).collect();
    let probes: Vec<(String, Result<String, ExecError>)> = std::thread::scope(|s| {
        let handles: Vec<_> = used
            .iter()
            .map(|name| {
                let tc = p.toolchains.get(name).expect("validated");
                let name = name.to_string();
                s.spawn(move || {
                    let t = Instant::now();
                    let result = super::toolchain::probe(Some(store), &tc.probe, root, &tc.env);
                    if std::env::var_os("CAIRN_TIMINGS").is_some() {
                        let how = if result.as_ref().is_ok_and(|p| p.cached) { "cached" } else { "ran" };
                        eprintln!("cairn timing: probe {name} ({how}) {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
                    }
                    let r = match result {
                        Err(e) => Err(ExecError::ProbeFailed {
                            name: name.clone(),
                            probe: tc.probe.clone(),
                            status: e.to_string(),
                            output: String::new(),
                        }),
                        Ok(out) => {
                            let text = out.output;
                            if !out.success {
                                Err(ExecError::ProbeFailed {
                                    name: name.clone(),
                                    probe: tc.probe.clone(),
                                    status: out.status,
                                    output: if text.is_empty() { String::new() } else { format!(": {text}") },
                                })
                            } else if let Some(req) = tc.require.as_ref().filter(|r| !version_matches(&text, r)) {
                                Err(ExecError::WrongVersion {
                                    name: name.clone(),
                                    require: req.clone(),
                                    probe: tc.probe.clone(),
                                    found: text
                                        .lines()
                                        .map(str::trim)
                                        .filter(|l| !l.is_empty())
                                        .collect::<Vec<_>>()
                                        .join(" / "),
                                })
                            } else {
                                Ok(text)
                            }
                        }
                    };
                    (name, r)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe thread")).collect()
    });
    let mut toolchains = BTreeMap::new();
    for (name, r) in probes {
        toolchains.insert(name, r?);
    }

    // Secrets of the selected steps. One that can't be resolved fails only a step that has
    // to run with it.
    let mut secret_values = BTreeMap::new();
    let mut secret_errors = BTreeMap::new();
    let mut warnings = Vec::new();
    for &i in selected {
        for s in &g.nodes[i].step.secrets {
            if !secret_values.contains_key(s) && !secret_errors.contains_key(s) {
                let source = p.secrets.get(s).expect("validated");
                match secrets::resolve(s, source, root) {
                    Ok(v) => {
                        secret_values.insert(s.clone(), v);
                    }
                    Err(e) => {
                        secret_errors.insert(s.clone(), e.to_string());
                    }
                }
            }
        }
    }
    let masker = Masker::new(secret_values.values().map(String::as_str));

    // Inputs, in one walk. Literal paths (no glob characters) are required.
    let walk = walk_options(p, root, cache_dir, threads);
    let step_in: Vec<StepInputs> = selected.iter().map(|&i| step_inputs(p, &g.nodes[i].step)).collect();
    if let Some(e) = missing_literal_inputs(p, g, selected, root).into_iter().next() {
        return Err(e);
    }
    let sig = inputs::journal::signature(&walk, &step_in);
    let t = Instant::now();
    let replayed = if std::env::var_os("CAIRN_NO_SCAN_JOURNAL").is_some() {
        Err("turned off by CAIRN_NO_SCAN_JOURNAL".to_string())
    } else {
        let j = store.load_journal(&sig);
        timing("  load scan journal", t);
        match j {
            Some(j) => j.replay(&walk, step_in.len()),
            None => Err("no journal for these walk rules yet".to_string()),
        }
    };
    timing("replay scan journal", t);
    if let (Err(why), true) = (&replayed, std::env::var_os("CAIRN_TIMINGS").is_some()) {
        eprintln!("cairn timing: walking the tree: {why}");
    }
    let replayed = replayed.ok();
    let mut snap = match replayed {
        Some(snap) => snap,
        None => {
            let t = Instant::now();
            let cache = store.worktree(root).load_stat_cache().unwrap_or_else(|e| {
                warnings.push(format!("could not read the stat cache (every input is hashed): {e}"));
                Default::default()
            });
            timing("load stat cache", t);
            let t = Instant::now();
            let snap = inputs::scan(&walk, &step_in, &cache)?;
            timing("walk and hash inputs", t);
            let t = Instant::now();
            if !store.is_read_only() {
                if let Err(e) = store.worktree(root).save_stat_cache(cache, &snap.updates) {
                    warnings.push(format!("could not save the stat cache (the next run hashes again): {e}"));
                }
            }
            timing("save stat cache", t);
            snap
        }
    };
    inputs::add_untracked(root, &step_in, &mut snap.per_step)?;
    if std::env::var_os("CAIRN_TIMINGS").is_some() {
        eprintln!(
            "cairn timing: {} files, {} hashed ({} bytes), {} from the stat cache",
            snap.stats.files, snap.stats.hashed, snap.stats.bytes_hashed, snap.stats.reused
        );
        for (p, _) in snap.updates.iter().take(3) {
            eprintln!("cairn timing: hashed {p}");
        }
    }
    let pending_journal = snap.journal.take().filter(|_| !store.is_read_only()).map(|j| (sig.clone(), j));

    let t = Instant::now();
    let mut manifests = BTreeMap::new();
    let mut inputs_by_node = BTreeMap::new();
    for (k, &i) in selected.iter().enumerate() {
        let n = &g.nodes[i];
        let mut secrets = n.step.secrets.clone();
        secrets.sort();
        secrets.dedup();
        let services = n
            .step
            .services
            .iter()
            .map(|s| {
                let def = p.services.get(s).expect("validated");
                (
                    s.clone(),
                    blake3::hash(serde_json::to_string(def).unwrap_or_default().as_bytes()).to_hex().to_string(),
                )
            })
            .collect();
        let mut outputs: Vec<String> = n.step.outputs.iter().map(|o| archive::normalize_output(o)).collect();
        outputs.sort();
        manifests.insert(
            i,
            KeyManifest {
                schema: KEY_SCHEMA_VERSION,
                command: n.run.clone(),
                workdir: n.step.workdir.clone().unwrap_or_else(|| ".".into()),
                env: n.env.clone(),
                secrets,
                toolchains: n.step.toolchains.iter().map(|t| (t.clone(), toolchains[t].clone())).collect(),
                services,
                platform: platform(),
                inputs: std::mem::take(&mut snap.per_step[k]),
                upstream: BTreeMap::new(),
                outputs,
            },
        );
        inputs_by_node.insert(i, step_in[k].clone());
    }
    timing("assemble manifests", t);
    Ok(Prepared {
        manifests,
        inputs: inputs_by_node,
        masker,
        secret_values,
        secret_errors,
        input_owners: std::sync::OnceLock::new(),
        warnings,
        scan: snap.stats,
        walk,
        pending_journal,
    })
}
