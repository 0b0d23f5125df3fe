//! The executor: a dispatcher and worker threads.
//!
//! [`prepare`] does the work every build and cache-aware plan needs before any step runs:
//! probe toolchains (and check their version requirements), resolve secrets, and hash every
//! selected step's inputs in one walk. It yields each step's key manifest *without* its
//! upstream part, which is only known once upstream steps have finished.
//!
//! [`Build::run`] is the dispatcher: it starts ready steps on up to `jobs` workers, receives
//! their [`StepReport`]s over a channel, stops dependents of a failed step, and on Ctrl-C
//! stops launching and lets workers kill their process groups. A worker completes the key,
//! looks it up, and either restores the entry (replaying its log) or runs the command,
//! checks outputs and inputs, packs and commits. Only [`crate::cache::Pending::commit`]
//! creates entries.

pub mod process;
pub mod secrets;
pub mod services;
pub mod workspace;

use crate::cache::{archive, Lookup, Store};
use crate::inputs::{self, StepInputs, WalkOptions};
use crate::model::Pipeline;
use crate::plan::key::{diff, DirtyReason, FileDigest, KeyManifest, Upstream, KEY_SCHEMA_VERSION};
use crate::plan::Graph;
use process::{Console, Exit};
use secrets::Masker;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("toolchain `{name}`: probe `{probe}` failed ({status}){output}\n  hint: install the toolchain, or fix its probe in the pipeline")]
    ProbeFailed { name: String, probe: String, status: String, output: String },
    #[error("toolchain `{name}` must be version {require}, but `{probe}` reports: {found}\n  hint: install {name} {require} (e.g. with asdf or your package manager), or change `require`")]
    WrongVersion { name: String, require: String, probe: String, found: String },
    #[error("step `{step}` reads `{path}`, which does not exist: {hint}")]
    MissingInput { step: String, path: String, hint: String },
    #[error(transparent)]
    Secret(#[from] secrets::SecretError),
    #[error("{0}")]
    Inputs(#[from] inputs::InputError),
    #[error("{0}")]
    Store(#[from] crate::cache::StoreError),
    #[error("step `{step}` uses service `{service}`: services are started by `cairn build` only when the machine can run them; {problem}")]
    Service { step: String, service: String, problem: String },
}

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
    StepInputs { include, exclude }
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

fn phase(i: usize, since: Instant) {
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
                    let result = process::capture(&tc.probe, root, false);
                    let r = match result {
                        Err(e) => Err(ExecError::ProbeFailed {
                            name: name.clone(),
                            probe: tc.probe.clone(),
                            status: e.to_string(),
                            output: String::new(),
                        }),
                        Ok(out) => {
                            let text = format!(
                                "{}{}",
                                String::from_utf8_lossy(&out.stdout),
                                String::from_utf8_lossy(&out.stderr)
                            )
                            .trim()
                            .to_string();
                            if !out.status.success() {
                                Err(ExecError::ProbeFailed {
                                    name: name.clone(),
                                    probe: tc.probe.clone(),
                                    status: out.status.to_string(),
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
            let root_key = root.display().to_string();
            let t = Instant::now();
            let cache = store.load_stat_cache(&root_key).unwrap_or_else(|e| {
                warnings.push(format!("could not read the stat cache (every input is hashed): {e}"));
                Default::default()
            });
            timing("load stat cache", t);
            let t = Instant::now();
            let snap = inputs::scan(&walk, &step_in, &cache)?;
            timing("walk and hash inputs", t);
            let t = Instant::now();
            if !store.is_read_only() {
                if let Err(e) = store.save_stat_cache(&root_key, cache, &snap.updates) {
                    warnings.push(format!("could not save the stat cache (the next run hashes again): {e}"));
                }
            }
            timing("save stat cache", t);
            snap
        }
    };
    if std::env::var_os("CAIRN_TIMINGS").is_some() {
        eprintln!(
            "cairn timing: {} files, {} hashed ({} bytes), {} from the stat cache",
            snap.stats.files, snap.stats.hashed, snap.stats.bytes_hashed, snap.stats.reused
        );
        for (p, _) in snap.updates.iter().take(3) {
            eprintln!("cairn timing: hashed {p}");
        }
    }
    if let Some(j) = snap.journal.take().filter(|_| !store.is_read_only()) {
        let t = Instant::now();
        if let Err(e) = store.save_journal(&sig, &j) {
            warnings.push(format!("could not save the scan journal (the next run walks the tree): {e}"));
        }
        timing("save scan journal", t);
    }

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
    })
}

pub use cairn_core::events::{BuildOutcome, Status, StepReport};

/// The options of one build.
pub struct Build<'a> {
    pub pipeline: &'a Pipeline,
    pub graph: &'a Graph,
    pub root: PathBuf,
    pub store: &'a Store,
    pub selected: Vec<usize>,
    pub jobs: usize,
    pub keep_going: bool,
    pub force: BTreeSet<String>,
    pub console: &'a Console,
    pub zstd_level: i32,
    /// The shared remote cache, tried after a local miss.
    pub remote: Option<std::sync::Arc<crate::cache::remote::Remote>>,
    /// Output fingerprints taken ahead of the dispatch (see [`Prefetch`]).
    pub prefetch: Option<&'a Prefetch>,
    /// When the run started (before loading and probing): steps' times count from here.
    pub started: Instant,
}

/// Output fingerprints taken ahead, on a thread of their own while the inputs are scanned: on
/// a no-op, checking that outputs are still in place is half the work, and it does not depend
/// on the keys. The scan leaves a core idle while it loads its journal and assembles the
/// manifests; the fingerprints fill it.
///
/// A fingerprint taken ahead stands for a step's outputs as they were before this build wrote
/// anything. Once a step writes to the worktree (runs its command, or restores its outputs),
/// the fingerprints of that step and of every step downstream of it no longer count: those
/// steps are checked after the writer, in every schedule, and may see what it wrote (outputs
/// can overlap, like `deps/` inside `_build/`). Steps not downstream are unordered with the
/// writer anyway, so a fingerprint taken before its write is one a legal schedule could have
/// taken. A step looked at by the prefetcher and a worker at once is fingerprinted once.
pub struct Prefetch {
    /// Per step with outputs: its fingerprint, whether that still counts, and the steps it
    /// depends on (transitively).
    slots: BTreeMap<usize, Slot>,
    stop: std::sync::atomic::AtomicBool,
}

struct Slot {
    fingerprint: std::sync::OnceLock<Option<(String, i64)>>,
    stale: std::sync::atomic::AtomicBool,
    upstream: BTreeSet<usize>,
}

impl Prefetch {
    /// Slots for the selected steps that declare outputs.
    pub fn new(g: &Graph, selected: &[usize]) -> Prefetch {
        let slots = selected
            .iter()
            .filter(|&&i| !g.nodes[i].step.outputs.is_empty())
            .map(|&i| {
                let mut upstream = BTreeSet::new();
                let mut stack = g.nodes[i].needs.clone();
                while let Some(d) = stack.pop() {
                    if upstream.insert(d) {
                        stack.extend(g.nodes[d].needs.iter().copied());
                    }
                }
                let slot = Slot {
                    fingerprint: std::sync::OnceLock::new(),
                    stale: std::sync::atomic::AtomicBool::new(false),
                    upstream,
                };
                (i, slot)
            })
            .collect();
        Prefetch { slots, stop: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Fingerprint every slot's outputs, in order, until stopped.
    pub fn run(&self, g: &Graph, root: &Path) {
        use std::sync::atomic::Ordering::SeqCst;
        for (&i, slot) in &self.slots {
            if self.stop.load(SeqCst) {
                return;
            }
            if !slot.stale.load(SeqCst) {
                slot.fingerprint.get_or_init(|| inputs::outputs_fingerprint(root, &g.nodes[i].outputs));
            }
        }
    }

    /// The prefetcher stops at its next step (the dispatch is over).
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// `writer` is about to write to the worktree: its fingerprint and those of the steps
    /// downstream of it no longer count.
    pub fn wrote(&self, writer: usize) {
        for (&i, slot) in &self.slots {
            if i == writer || slot.upstream.contains(&writer) {
                slot.stale.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    fn fingerprint(&self, node: usize, root: &Path, outputs: &[String]) -> Option<(String, i64)> {
        match self.slots.get(&node) {
            Some(slot) if !slot.stale.load(std::sync::atomic::Ordering::SeqCst) => {
                slot.fingerprint.get_or_init(|| inputs::outputs_fingerprint(root, outputs)).clone()
            }
            _ => inputs::outputs_fingerprint(root, outputs),
        }
    }
}

/// Command slots: at most `jobs` step commands run at once, while more workers may look up,
/// verify and restore entries concurrently (that work waits on the disk, not on a core).
pub struct Slots {
    free: std::sync::Mutex<usize>,
    cv: std::sync::Condvar,
}

pub struct SlotGuard<'a>(&'a Slots);

impl Slots {
    pub fn new(n: usize) -> Slots {
        Slots { free: std::sync::Mutex::new(n.max(1)), cv: std::sync::Condvar::new() }
    }
    /// Wait for a slot; `None` if the run was interrupted meanwhile.
    pub fn acquire(&self) -> Option<SlotGuard<'_>> {
        let mut free = self.free.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            if process::interrupted() {
                return None;
            }
            if *free > 0 {
                *free -= 1;
                return Some(SlotGuard(self));
            }
            free = self.cv.wait_timeout(free, Duration::from_millis(50)).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.cv.notify_one();
    }
}

/// How many steps may be in flight (looking up, restoring, or waiting for a command slot).
const IN_FLIGHT_PER_JOB: usize = 2;

struct Job<'b> {
    node: usize,
    /// Borrowed from `prepared` unless upstream steps contribute (a no-op of independent
    /// steps copies no manifest).
    manifest: std::borrow::Cow<'b, KeyManifest>,
    worker: usize,
    build: &'b Build<'b>,
    prepared: &'b Prepared,
    slots: &'b Slots,
    services: &'b services::Services<'b>,
    /// Steps whose outputs' fingerprint was recorded before they settled (see
    /// [`Build::record_settled`]).
    unsettled: &'b std::sync::Mutex<Vec<Unsettled>>,
    t0: Instant,
}

/// Outputs written by this build whose recorded fingerprint is racy: step, outputs digest,
/// and when they settle.
type Unsettled = (usize, String, i64);

impl Build<'_> {
    /// Confirm the outputs this build wrote whose fingerprint was recorded before they
    /// settled, once they have: the same check the next build would make (the stat
    /// fingerprint, then the content, since a same-granule change hides behind an unchanged
    /// stat), made now while they are in the page cache, so the next no-op only stats them.
    /// Outputs changed since (a later step wrote into them) fail the check and stay as
    /// recorded: the next build restores them. Outputs written in the build's last moments
    /// stay racy; waiting for them would slow every build down.
    fn record_settled(&self, unsettled: Vec<Unsettled>) {
        let now = inputs::now_ns();
        for (node, digest, settles) in unsettled {
            if settles <= now {
                let n = &self.graph.nodes[node];
                let fingerprint = || inputs::outputs_fingerprint(&self.root, &n.outputs);
                let _ = self.store.outputs_in_place(&self.root, &n.name, &n.outputs, &digest, fingerprint);
            }
        }
    }

    fn is_forced(&self, node: usize) -> bool {
        let n = &self.graph.nodes[node];
        self.force.contains(&n.name) || self.force.contains(&n.base)
    }

    pub fn run(&self, prepared: &Prepared) -> BuildOutcome {
        let t0 = self.started;
        let g = self.graph;
        let selected: BTreeSet<usize> = self.selected.iter().copied().collect();
        let mut done: BTreeMap<usize, StepReport> = BTreeMap::new();
        let mut running: BTreeMap<usize, usize> = BTreeMap::new(); // node → worker slot
        let mut halted = false;
        let (tx, rx) = mpsc::channel::<(usize, StepReport)>();
        let slots = Slots::new(self.jobs);
        let mut users: std::collections::HashMap<String, usize> = Default::default();
        for &i in &self.selected {
            for svc in &g.nodes[i].step.services {
                *users.entry(svc.clone()).or_default() += 1;
            }
        }
        let services = services::Services::new(self.pipeline, &self.root, users);
        let release = |i: usize| {
            for svc in &g.nodes[i].step.services {
                services.release(svc);
            }
        };
        let in_flight = self.jobs.max(1) * IN_FLIGHT_PER_JOB;
        let unsettled = std::sync::Mutex::new(Vec::new());
        // A fixed pool of workers takes jobs from a queue (a thread per step cost more than a
        // no-op step's whole check). The queue's sender moves into the scope and is dropped
        // when the dispatch ends, which lets the workers go.
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = std::sync::Mutex::new(job_rx);
        std::thread::scope(|s| {
            let job_tx = job_tx;
            for _ in 0..in_flight.min(self.selected.len()) {
                let (tx, job_rx) = (tx.clone(), &job_rx);
                s.spawn(move || loop {
                    let next = job_rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                    let Ok(job) = next else { break };
                    let report = job.execute();
                    let _ = tx.send((job.node, report));
                });
            }
            loop {
                if process::interrupted() {
                    halted = true;
                }
                // Launch what is ready.
                for &i in &self.selected {
                    if done.contains_key(&i) || running.contains_key(&i) {
                        continue;
                    }
                    let needs: Vec<usize> = g.nodes[i].needs.iter().copied().filter(|d| selected.contains(d)).collect();
                    if let Some(bad) = needs.iter().find(|d| {
                        done.get(d)
                            .is_some_and(|r| !matches!(r.status, Status::HitLocal | Status::HitRemote | Status::Ran))
                    }) {
                        let upstream = &done[bad];
                        let (status, why) = if upstream.status == Status::Cancelled {
                            (Status::Cancelled, format!("upstream step {} was cancelled", upstream.name))
                        } else {
                            (Status::Skipped, format!("upstream step {} {}", upstream.name, upstream.status.as_str()))
                        };
                        done.insert(i, blank_report(&g.nodes[i].name, status, why, t0));
                        release(i);
                        continue;
                    }
                    if halted {
                        continue; // reported as cancelled once nothing runs any more
                    }
                    if !needs.iter().all(|d| done.contains_key(d)) || running.len() >= in_flight {
                        continue;
                    }
                    let mut manifest = std::borrow::Cow::Borrowed(&prepared.manifests[&i]);
                    for &d in &g.nodes[i].needs {
                        if let Some(c) = done.get(&d).and_then(|r| r.contribution.clone()) {
                            manifest.to_mut().upstream.insert(g.nodes[d].name.clone(), c);
                        }
                    }
                    let worker = (0..in_flight).find(|w| !running.values().any(|x| x == w)).unwrap_or(0);
                    running.insert(i, worker);
                    let job = Job {
                        node: i,
                        manifest,
                        worker,
                        build: self,
                        prepared,
                        slots: &slots,
                        services: &services,
                        unsettled: &unsettled,
                        t0,
                    };
                    if job_tx.send(job).is_err() {
                        break; // no worker left: cannot happen while the scope lives
                    }
                }
                if running.is_empty() {
                    break;
                }
                match rx.recv_timeout(Duration::from_millis(50)) {
                    Ok((i, report)) => {
                        running.remove(&i);
                        if report.status == Status::Failed && !self.keep_going {
                            halted = true;
                        }
                        let line = format!(
                            "cairn: [{}/{}] {} {} · running: {} · {:.1}s",
                            done.len() + 1,
                            self.selected.len(),
                            report.name,
                            report.status.as_str(),
                            if running.is_empty() {
                                "-".to_string()
                            } else {
                                running.keys().map(|&r| g.nodes[r].name.as_str()).collect::<Vec<_>>().join(", ")
                            },
                            t0.elapsed().as_secs_f64()
                        );
                        self.console.progress(&line);
                        done.insert(i, report);
                        release(i);
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            }
        });
        services.stop_all();
        self.console.finish();
        let interrupted = process::interrupted();
        for &i in &self.selected {
            done.entry(i).or_insert_with(|| {
                let why = if interrupted { "the run was interrupted" } else { "the run stopped after a failure" };
                blank_report(&g.nodes[i].name, Status::Cancelled, why.into(), t0)
            });
        }
        let steps: Vec<StepReport> =
            self.selected.iter().map(|i| done.remove(i).expect("every step has a report")).collect();
        self.record_settled(std::mem::take(&mut *unsettled.lock().unwrap_or_else(|p| p.into_inner())));
        let hits: Vec<&str> = steps.iter().filter(|r| r.status.is_hit()).filter_map(|r| r.key.as_deref()).collect();
        if !self.store.is_read_only() {
            if let Err(e) = self.store.touch_many(&hits) {
                self.console.note(&format!("warning: could not mark this run's hits as used: {e}"));
            }
        }
        let used: Vec<(&str, &str)> = steps
            .iter()
            .filter(|r| r.status.is_hit() || r.status == Status::Ran)
            .filter_map(|r| r.key.as_deref().map(|k| (r.name.as_str(), k)))
            .collect();
        if let Err(e) = self.store.note_used(&self.root, &used) {
            self.console.note(&format!("warning: could not record the keys this run used: {e}"));
        }
        BuildOutcome { steps, wall_ms: t0.elapsed().as_millis() as u64, interrupted, scan: prepared.scan }
    }
}

fn blank_report(name: &str, status: Status, detail: String, t0: Instant) -> StepReport {
    let now = t0.elapsed().as_millis() as u64;
    StepReport {
        name: name.to_string(),
        key: None,
        status,
        reasons: vec![],
        detail: Some(detail),
        duration_ms: 0,
        saved_ms: 0,
        bytes_restored: 0,
        bytes_stored: 0,
        start_ms: now,
        end_ms: now,
        worker: 0,
        warnings: vec![],
        contribution: None,
        missing_secret: None,
    }
}

impl Job<'_> {
    /// Remember outputs this job wrote whose fingerprint was recorded racy.
    fn unsettled(&self, settles: Option<i64>, outputs_digest: &str) {
        if let Some(at) = settles {
            self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).push((self.node, outputs_digest.into(), at));
        }
    }

    fn execute(&self) -> StepReport {
        let b = self.build;
        let node = &b.graph.nodes[self.node];
        let t = Instant::now();
        let key = self.manifest.key();
        phase(0, t);
        let start_ms = self.t0.elapsed().as_millis() as u64;
        let mut report = StepReport {
            name: node.name.clone(),
            key: Some(key.clone()),
            status: Status::Ran,
            reasons: vec![],
            detail: None,
            duration_ms: 0,
            saved_ms: 0,
            bytes_restored: 0,
            bytes_stored: 0,
            start_ms,
            end_ms: start_ms,
            worker: self.worker,
            warnings: vec![],
            contribution: None,
            missing_secret: None,
        };
        let has_outputs = !node.step.outputs.is_empty();
        let prefix = format!("[{}]", node.name);
        let mut pending = None;
        if !node.step.cache {
            report.reasons.push(DirtyReason::NotCacheable);
        } else {
            let t = Instant::now();
            let lookup = b.store.lookup(&node.name, &key, &self.manifest);
            phase(1, t);
            match lookup {
                Err(e) => {
                    b.console.note(&format!("warning: {}: store lookup failed, running the step: {e}", node.name));
                    report.warnings.push(format!("store lookup failed: {e}"));
                    report.reasons.push(DirtyReason::StoreError { detail: e.to_string() });
                }
                Ok(Lookup::Hit(entry)) if !b.is_forced(self.node) => {
                    match self.restore_hit(&entry, &mut report, Status::HitLocal, &prefix) {
                        Ok(()) => return report,
                        Err(e) => {
                            report.reasons.push(DirtyReason::Corrupt { detail: e.clone() });
                            b.console
                                .note(&format!("warning: {}: stored entry unusable, running again: {e}", node.name));
                            match b.store.lookup(&node.name, &key, &self.manifest) {
                                Ok(Lookup::Miss(p, _)) => pending = Some(p),
                                _ => report.warnings.push("could not re-open the entry after dropping it".into()),
                            }
                        }
                    }
                }
                Ok(Lookup::Hit(_)) => {
                    report.reasons.push(DirtyReason::Forced);
                    pending = Some(b.store.pending_forced(&node.name, self.manifest.clone().into_owned()));
                }
                Ok(Lookup::Miss(p, evicted)) => {
                    report.reasons.extend(miss_reasons(b.store, &b.root, &node.name, &key, &self.manifest, evicted));
                    if b.is_forced(self.node) {
                        report.reasons.insert(0, DirtyReason::Forced);
                        pending = Some(p);
                    } else {
                        match self.try_remote(&key, p, &mut report, &prefix) {
                            None => return report,
                            Some(p) => pending = Some(p),
                        }
                    }
                }
            }
        }

        // Run it: only now are its secrets needed.
        if let Some(e) = node.step.secrets.iter().find_map(|s| self.prepared.secret_errors.get(s)) {
            report.status = Status::Failed;
            report.detail = Some(e.lines().next().unwrap_or("a secret is missing").to_string());
            report.missing_secret = Some(e.clone());
            report.end_ms = self.t0.elapsed().as_millis() as u64;
            return report;
        }
        let mut env = process::base_env(node.step.pass_env.iter().map(String::as_str));
        env.extend(node.env.clone());
        for s in &node.step.secrets {
            if let Some(v) = self.prepared.secret_values.get(s) {
                env.insert(s.clone(), v.clone());
            }
        }
        let Some(_slot) = self.slots.acquire() else {
            report.status = Status::Cancelled;
            report.detail = Some("interrupted".into());
            return report;
        };
        if let Some(p) = self.build.prefetch {
            p.wrote(self.node);
        }
        report.start_ms = self.t0.elapsed().as_millis() as u64;
        for svc in &node.step.services {
            match self.services.acquire(svc) {
                Ok(exports) => env.extend(exports),
                Err(e) => {
                    b.console.note(&format!("{prefix} {e}"));
                    report.status = Status::Failed;
                    report.detail = Some(e.lines().next().unwrap_or("service failed").to_string());
                    report.end_ms = self.t0.elapsed().as_millis() as u64;
                    return report;
                }
            }
        }
        let cwd = b.root.join(node.step.workdir.as_deref().unwrap_or("."));
        let started_ns = inputs::now_ns();
        b.console.note(&format!("{prefix} $ {}", self.prepared.masker.mask(&node.run)));
        let outcome = process::run(
            &node.run,
            &cwd,
            &env,
            node.step.timeout.map(|d| d.0),
            &prefix,
            b.console,
            &self.prepared.masker,
        );
        report.end_ms = self.t0.elapsed().as_millis() as u64;
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                report.status = Status::Failed;
                report.detail = Some(format!("could not start `sh -c`: {e}"));
                return report;
            }
        };
        report.duration_ms = outcome.duration.as_millis() as u64;
        match &outcome.exit {
            Exit::Code(0) => {}
            Exit::Interrupted => {
                report.status = Status::Cancelled;
                report.detail = Some("interrupted".into());
                return report;
            }
            other => {
                report.status = Status::Failed;
                report.detail = Some(match other {
                    Exit::Code(c) => format!("exited with status {c}"),
                    Exit::Signal(s) => format!("killed by signal {s}"),
                    Exit::TimedOut => {
                        format!("timed out after {}", node.step.timeout.map(|d| d.to_string()).unwrap_or_default())
                    }
                    Exit::Interrupted => unreachable!("handled above"),
                });
                return report;
            }
        }
        report.contribution = Some(Upstream::Key(key.clone()));
        self.foreign_writes(&mut report, started_ns);
        let Some(pending) = pending else {
            return report;
        };
        if b.store.is_read_only() {
            return report; // said once when the store was opened
        }
        if has_outputs && !node.step.secrets.is_empty() {
            if let Some(refused) = self.secret_in_outputs(&mut report) {
                if refused {
                    return report;
                }
            }
        }
        // Inputs must not have changed while the step ran.
        let t = Instant::now();
        let inputs = &self.prepared.inputs[&self.node];
        match inputs::scan(&self.prepared.walk, std::slice::from_ref(inputs), &Default::default()) {
            Ok(after) if after.per_step[0] != self.manifest.inputs => {
                let changed = changed_paths(&self.manifest.inputs, &after.per_step[0]);
                let w = format!("inputs changed while the step ran ({}); the result is not stored", changed.join(", "));
                b.console.note(&format!("warning: {}: {w}", node.name));
                report.warnings.push(w);
                return report;
            }
            Ok(_) => {}
            Err(e) => {
                report.warnings.push(format!("could not re-check inputs ({e}); the result is not stored"));
                return report;
            }
        }
        timing("re-check inputs", t);
        let logs: [(&str, &[u8]); 2] = [(archive::LOG_STDOUT, &outcome.stdout), (archive::LOG_STDERR, &outcome.stderr)];
        let t = Instant::now();
        let packed = archive::pack(&b.root, &node.outputs, &logs, &b.store.tmp_dir(), b.zstd_level);
        timing("pack", t);
        match packed {
            Err(archive::ArchiveError::MissingOutput(o)) => {
                report.status = Status::Failed;
                report.detail = Some(format!("declared output `{o}` was not produced"));
                report.contribution = None;
            }
            Err(e) => {
                report.warnings.push(format!("could not store the result: {e}"));
                b.console.note(&format!("warning: {}: could not store the result: {e}", node.name));
            }
            Ok(mut packed) => {
                let tmp = packed.tmp_path.clone();
                let fingerprint = packed.fingerprint.take();
                let blob_size = packed.blob_size;
                let t = Instant::now();
                let committed = pending.commit(b.store, packed, report.duration_ms);
                timing("commit", t);
                match committed {
                    Ok(entry) => {
                        report.bytes_stored = blob_size;
                        for (path, d) in &self.manifest.inputs {
                            if crate::plan::lockfile::is_lockfile(path) {
                                if let Ok(text) = std::fs::read_to_string(b.root.join(path)) {
                                    b.store.save_snapshot(&d.digest, &text);
                                }
                            }
                        }
                        if let Some(remote) = &b.remote {
                            remote.upload_later(
                                &node.name,
                                &self.manifest,
                                &b.store.blob_path(&entry.blob),
                                crate::cache::remote::UploadInfo {
                                    blob_digest: entry.blob.clone(),
                                    outputs_digest: entry.outputs_digest.clone(),
                                    log_bytes: entry.log_bytes.max(0) as u64,
                                    duration_ms: entry.duration_ms,
                                    blob_size: entry.blob_size,
                                },
                            );
                        }
                        if has_outputs {
                            let settles = b.store.record_packed(
                                &b.root,
                                &node.name,
                                &node.outputs,
                                &entry.outputs_digest,
                                fingerprint.as_ref(),
                            );
                            self.unsettled(settles, &entry.outputs_digest);
                            report.contribution = Some(Upstream::Outputs(entry.outputs_digest));
                        }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(tmp);
                        report.warnings.push(format!("could not store the result: {e}"));
                    }
                }
            }
        }
        report
    }
}

impl Job<'_> {
    /// Why a restored link may not lead to `rel` (relative to the root): no link may end on
    /// a file some step reads, nor on a directory holding another step's inputs (a later
    /// run writing through it would change sources). A directory of this step's own inputs
    /// may be linked to: mix links `_build/*/lib/APP/priv` to the project's `priv/`.
    fn protected(&self, rel: &str) -> Option<String> {
        let g = self.build.graph;
        let owners = self.prepared.input_owners.get_or_init(|| {
            let mut m = BTreeMap::new();
            for (&node, manifest) in &self.prepared.manifests {
                for path in manifest.inputs.keys() {
                    m.entry(path.clone()).or_insert(node);
                }
            }
            m
        });
        if let Some(&owner) = owners.get(rel) {
            return Some(format!("an input of step `{}`", g.nodes[owner].name));
        }
        let dir = format!("{}/", rel.trim_end_matches('/'));
        let inside = |node: usize| {
            self.prepared
                .manifests
                .get(&node)
                .is_some_and(|m| m.inputs.range(dir.clone()..).next().is_some_and(|(p, _)| p.starts_with(&dir)))
        };
        // A directory of this step's own sources may be linked to (mix links
        // `_build/*/lib/APP/priv` to `priv/`); one holding only other steps' inputs may not.
        if inside(self.node) {
            return None;
        }
        self.prepared
            .manifests
            .keys()
            .copied()
            .find(|&n| inside(n))
            .map(|n| format!("a directory holding inputs of step `{}`", g.nodes[n].name))
    }

    /// Did the step write into the outputs of a step it needs (done earlier in this build)?
    /// `mix test` writes `.mix_test_failures` into compile's `_build/test/`: said by name,
    /// with the declaration that keeps the other step's outputs in place.
    fn foreign_writes(&self, report: &mut StepReport, since_ns: i64) {
        let b = self.build;
        let g = b.graph;
        let mut upstream = BTreeSet::new();
        let mut stack = g.nodes[self.node].needs.clone();
        while let Some(d) = stack.pop() {
            if upstream.insert(d) {
                stack.extend(g.nodes[d].needs.iter().copied());
            }
        }
        for a in upstream {
            let other = &g.nodes[a];
            if other.step.outputs.is_empty() {
                continue;
            }
            let Some(recorded) = b.store.installed_fingerprint(&b.root, &other.name) else { continue };
            if inputs::outputs_fingerprint(&b.root, &other.outputs).is_some_and(|(fp, _)| fp == recorded) {
                continue;
            }
            let written = archive::changed_since(&b.root, &other.outputs, since_ns);
            if written.is_empty() {
                continue;
            }
            let shown: Vec<&str> = written.iter().take(3).map(String::as_str).collect();
            let more = if written.len() > 3 { format!(" and {} more", written.len() - 3) } else { String::new() };
            let decl: Vec<String> = written.iter().take(3).map(|w| format!("\"{w}\"")).collect();
            let w = format!(
                "step `{}` wrote into the outputs of step `{}`: {}{more}; declare them as outputs of `{}` (outputs: [{}]) so `{}`'s outputs stay in place",
                g.nodes[self.node].name,
                other.name,
                shown.join(", "),
                g.nodes[self.node].name,
                decl.join(", "),
                other.name
            );
            b.console.note(&format!("warning: {w}"));
            report.warnings.push(w);
        }
    }

    /// Did the step write one of its secrets into an output? Warns naming the step, the
    /// output and the secret; `Some(true)` when the result must not be stored.
    fn secret_in_outputs(&self, report: &mut StepReport) -> Option<bool> {
        let b = self.build;
        let node = &b.graph.nodes[self.node];
        let maskers: Vec<(&String, Masker)> = node
            .step
            .secrets
            .iter()
            .filter_map(|s| self.prepared.secret_values.get(s).map(|v| (s, Masker::new([v.as_str()]))))
            .filter(|(_, m)| !m.is_empty())
            .collect();
        if maskers.is_empty() {
            return None;
        }
        let (file, secret) = archive::find_in_outputs(&b.root, &node.outputs, |bytes| {
            maskers.iter().find(|(_, m)| m.found_in(bytes)).map(|(name, _)| name.to_string())
        })?;
        let store = node.step.store_outputs_with_secret.or(b.pipeline.cache.store_outputs_with_secret).unwrap_or(false);
        let w = if store {
            format!("step `{}` wrote secret `{secret}` into its output `{file}`; it is stored as it is (`store_outputs_with_secret: true`): anyone who can read the cache can read it", node.name)
        } else {
            format!("step `{}` wrote secret `{secret}` into its output `{file}`; the result is not stored (cairn never puts a secret in the cache; set `store_outputs_with_secret: true` on the step to store it anyway)", node.name)
        };
        b.console.note(&format!("warning: {w}"));
        report.warnings.push(w);
        Some(!store)
    }

    /// Put a stored entry's outputs in place (or find them there) and replay its logs.
    fn restore_hit(
        &self,
        entry: &crate::cache::Entry,
        report: &mut StepReport,
        status: Status,
        prefix: &str,
    ) -> Result<(), String> {
        let b = self.build;
        let node = &b.graph.nodes[self.node];
        let has_outputs = !node.step.outputs.is_empty();
        let started = Instant::now();
        let t = Instant::now();
        let fingerprint = || match b.prefetch {
            Some(p) => p.fingerprint(self.node, &b.root, &node.outputs),
            None => inputs::outputs_fingerprint(&b.root, &node.outputs),
        };
        let in_place = has_outputs
            && b.store.outputs_in_place(&b.root, &node.name, &node.outputs, &entry.outputs_digest, fingerprint);
        if !in_place && has_outputs {
            if let Some(p) = b.prefetch {
                p.wrote(self.node); // about to restore into the worktree
            }
        }
        phase(2, t);
        let t = Instant::now();
        // Nothing to put in place (outputs already there, or none declared): replay the logs
        // alone, without unpacking into a staging directory in the worktree.
        let restored = if in_place || !has_outputs {
            b.store.read_logs(entry).map(|(stdout, stderr)| crate::cache::Restored {
                unpacked: archive::Unpacked { stdout, stderr, ..Default::default() },
                bytes: 0,
                changed: None,
            })
        } else {
            // Outputs cairn itself installed with these very bytes were edited: say which file.
            let explain = b.store.installed_digest(&b.root, &node.name).is_some_and(|d| d == entry.outputs_digest);
            let protected = |rel: &str| self.protected(rel);
            b.store.restore(entry, &b.root, &node.outputs, &protected, explain).inspect(|r| {
                if let Some(what) = &r.changed {
                    let outs: Vec<String> = node.step.outputs.iter().map(|o| archive::normalize_output(o)).collect();
                    let out = outs
                        .iter()
                        .find(|o| Path::new(what.split(' ').next().unwrap_or("")).starts_with(o.as_str()))
                        .map(|o| format!("{o}/"))
                        .unwrap_or_else(|| outs.join(", "));
                    let msg = format!("restored {out}: {what} since cairn wrote it");
                    b.console.note(&format!("{prefix} {msg}"));
                    report.warnings.push(msg);
                }
                let settles = b.store.record_installed(&b.root, &node.name, &node.outputs, &entry.outputs_digest);
                self.unsettled(settles, &entry.outputs_digest);
            })
        };
        phase(3, t);
        let restored = restored.map_err(|e| e.to_string())?;
        for (bytes, err) in [(&restored.unpacked.stdout, false), (&restored.unpacked.stderr, true)] {
            for line in String::from_utf8_lossy(bytes).lines() {
                b.console.line(prefix, line, err);
            }
        }
        report.status = status;
        report.saved_ms = entry.duration_ms;
        report.bytes_restored = restored.bytes;
        report.duration_ms = started.elapsed().as_millis() as u64;
        report.contribution = Some(Upstream::of(has_outputs, &entry.key, &entry.outputs_digest));
        report.end_ms = self.t0.elapsed().as_millis() as u64;
        Ok(())
    }

    /// After a local miss: fetch from the remote, store locally, restore. Returns the pending
    /// entry back when the step must run (`None`: it was a remote hit).
    fn try_remote(
        &self,
        key: &str,
        pending: crate::cache::Pending,
        report: &mut StepReport,
        prefix: &str,
    ) -> Option<crate::cache::Pending> {
        use crate::cache::remote::RemoteError;
        let b = self.build;
        let node = &b.graph.nodes[self.node];
        let Some(remote) = b.remote.as_ref() else { return Some(pending) };
        let fetched = match remote.fetch(key, &b.store.tmp_dir()) {
            Ok(Some(f)) => f,
            Ok(None) => return Some(pending),
            Err(RemoteError::Signature(d)) => {
                b.console.note(&format!("warning: {}: REMOTE ENTRY REJECTED: {d}; running the step", node.name));
                report.reasons.insert(0, DirtyReason::Signature { detail: d });
                return Some(pending);
            }
            Err(e) => {
                if !matches!(e, RemoteError::Unavailable(_)) {
                    b.console.note(&format!("warning: {}: {e}; running the step", node.name));
                }
                report.reasons.push(DirtyReason::RemoteError { detail: e.to_string() });
                return Some(pending);
            }
        };
        let env = fetched.envelope;
        let packed = archive::Packed {
            tmp_path: fetched.body.clone(),
            blob_digest: env.blob_digest.clone(),
            outputs_digest: env.outputs_digest.clone(),
            blob_size: env.blob_size,
            files: 0,
            raw_bytes: 0,
            log_bytes: env.log_bytes,
            fingerprint: None,
        };
        let committed = pending.commit(b.store, packed, env.duration_ms);
        let entry = match committed {
            Ok(entry) => entry,
            Err(e) => {
                let _ = std::fs::remove_file(&fetched.body);
                report.reasons.push(DirtyReason::RemoteError { detail: format!("storing the remote entry: {e}") });
                return match b.store.lookup(&node.name, key, &self.manifest) {
                    Ok(Lookup::Miss(p, _)) => Some(p),
                    _ => Some(b.store.pending_forced(&node.name, self.manifest.clone().into_owned())),
                };
            }
        };
        match self.restore_hit(&entry, report, Status::HitRemote, prefix) {
            Ok(()) => {
                report.reasons.clear();
                None
            }
            Err(e) => {
                report.reasons.push(DirtyReason::Corrupt { detail: e });
                match b.store.lookup(&node.name, key, &self.manifest) {
                    Ok(Lookup::Miss(p, _)) => Some(p),
                    _ => Some(b.store.pending_forced(&node.name, self.manifest.clone().into_owned())),
                }
            }
        }
    }
}

fn changed_paths(a: &BTreeMap<String, FileDigest>, b: &BTreeMap<String, FileDigest>) -> Vec<String> {
    let mut out: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    out.sort();
    out.dedup();
    out
}

/// Why a lookup missed: the entry was dropped as corrupt, evicted, or (never stored under this
/// key) what differs from the newest entry of the same step.
pub fn miss_reasons(
    store: &Store,
    root: &Path,
    step: &str,
    key: &str,
    manifest: &KeyManifest,
    evicted: Option<String>,
) -> Vec<DirtyReason> {
    match evicted {
        Some(why) if why.starts_with("corrupt") => {
            vec![DirtyReason::Corrupt { detail: why.trim_start_matches("corrupt: ").to_string() }]
        }
        Some(_) => vec![DirtyReason::Evicted],
        None => why_missed(store, root, step, key, manifest),
    }
}

/// Why a key missed: compare with the entry this worktree last used for the step (after a
/// revert, the newest entry is another branch's, whose differences nobody made here), else
/// with the newest entry of the step.
pub fn why_missed(store: &Store, root: &Path, step: &str, key: &str, manifest: &KeyManifest) -> Vec<DirtyReason> {
    match store.previous_entry(root, step, key) {
        Ok(Some(prev)) => match prev.manifest() {
            Some(old) => {
                let d = diff(&old, manifest);
                if d.is_empty() {
                    vec![DirtyReason::NoEntry]
                } else {
                    d
                }
            }
            None => vec![DirtyReason::NoEntry],
        },
        _ => vec![DirtyReason::NoEntry],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_requirements() {
        assert!(version_matches("Erlang/OTP 27 [erts-15.1]\n\nElixir 1.18.3 (compiled with Erlang/OTP 27)", "1.18"));
        assert!(!version_matches("Elixir 1.180.0", "1.18"));
        assert!(!version_matches("Elixir 11.18.0", "1.18"));
        assert!(version_matches("27", "27"));
        assert!(!version_matches("Elixir 1.14.0 (compiled with Erlang/OTP 25)", "1.18"));
    }

    #[test]
    fn outputs_fingerprinted_ahead_count_until_the_step_or_one_upstream_writes() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["deps", "build", "docs"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
            std::fs::write(d.path().join(dir).join("a.txt"), "one").unwrap();
        }
        let p = crate::model::load(
            "t.ron",
            br#"Pipeline(name: "t", steps: {
                "deps": (run: "true", outputs: ["deps/"]),
                "build": (run: "true", needs: ["deps"], outputs: ["build/"]),
                "docs": (run: "true", outputs: ["docs/"]),
                "lint": (run: "true"),
            })"#,
        )
        .unwrap();
        let g = Graph::build(&p).unwrap();
        let all: Vec<usize> = (0..g.nodes.len()).collect();
        let at = |name: &str| g.nodes.iter().position(|n| n.name == name).unwrap();
        let out = |dir: &str| vec![format!("{dir}/")];
        let pf = Prefetch::new(&g, &all);
        assert_eq!(pf.slots.len(), 3, "only steps with outputs");
        pf.run(&g, d.path());
        let ahead = |name: &str| pf.fingerprint(at(name), d.path(), &out(name));
        let (build0, docs0) = (ahead("build"), ahead("docs"));
        assert_eq!(build0, inputs::outputs_fingerprint(d.path(), &out("build")));
        // Changes after the prefetch are not seen through it...
        for dir in ["build", "docs"] {
            std::fs::write(d.path().join(dir).join("b.txt"), "two").unwrap();
        }
        assert_eq!(ahead("build"), build0);
        // ...until a step upstream writes: then its dependents are checked afresh; a step not
        // downstream of the writer keeps what was taken ahead.
        pf.wrote(at("deps"));
        assert_ne!(ahead("build"), build0);
        assert_eq!(ahead("build"), inputs::outputs_fingerprint(d.path(), &out("build")));
        assert_eq!(ahead("docs"), docs0);
        pf.wrote(at("docs"));
        assert_ne!(ahead("docs"), docs0);
    }
}
