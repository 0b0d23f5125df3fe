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

pub mod probe;
pub mod process;
pub mod rebuild;
pub mod runner;
pub mod sandbox;
pub mod secrets;
pub mod services;
pub mod toolchain;
pub mod trace;
pub mod workspace;

mod job;
mod prefetch;
mod prepare;
mod slots;

pub use crate::cache::{miss_reasons, why_missed};
pub use prefetch::Prefetch;
pub use prepare::*;
pub use slots::{SlotGuard, Slots};

use crate::cache::{archive, Lookup, Store};
use crate::inputs::{self, StepInputs, WalkOptions};
use crate::model::Pipeline;
use crate::plan::key::{DirtyReason, FileDigest, KeyManifest, Upstream, KEY_SCHEMA_VERSION};
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
    /// Where step commands run (see [`runner`]).
    pub runner: &'a dyn runner::StepRunner,
    /// Upload the entries of steps marked `reproducible: false` too.
    pub share_unreproducible: bool,
    /// `--sandbox`: overrides the pipeline's and the steps' own.
    pub sandbox_override: Option<crate::model::SandboxMode>,
    /// The Landlock ABI of this kernel, if it has Landlock.
    pub landlock: Option<i32>,
    /// This kernel has seccomp user notification (report mode can trace), checked only when
    /// some step traces.
    pub seccomp: bool,
    /// `--require-sandbox`: a step that should be sandboxed fails where it cannot be.
    pub require_sandbox: bool,
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
                let _ = self.store.worktree(&self.root).outputs_in_place(&n.name, &n.outputs, &digest, fingerprint);
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
        if let Err(e) = self.store.worktree(&self.root).note_used(&used) {
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
        sandbox: None,
        undeclared: vec![],
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
}
