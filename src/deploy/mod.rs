//! Gated, region-sequenced deploys: one durable, journaled, resumable run per environment.
//!
//! # How a deploy goes
//! 1. **Release**: the environment's required steps must have stored results for their exact
//!    current keys (checked against the store, not assumed). The release is named by a blake3
//!    hash over those keys, the rendered deploy configuration and the *names* of its secrets.
//! 2. **Gates**: branch policy; an approval bound to (environment, release), unexpired, not by
//!    the deployer when self-approval is off; deploy windows (time zone aware) and freezes, which
//!    `--break-glass REASON` overrides, recorded in the run and the audit log.
//! 3. **Lease**: one deploy per environment. A lease with a time-to-live, renewed by a heartbeat
//!    thread; a crashed holder's lease simply expires. Waiting runs queue in arrival order.
//! 4. **Phases**, from the pure plan (`plan::trigger::plan_environment`): per region the deploy
//!    command, a health check with retries, a bake time; the migration once, in its phase;
//!    blue-green's switch. Every transition is written to the journal before and after it
//!    happens. A region whose deploy or health check fails is rolled back (and, by policy, the
//!    regions already done); a migration that fails after all regions halts and alerts but
//!    does not roll the apps back. A halt is a [`HaltReason`].
//! 5. **Resume**: `cairn deploy resume ENV` continues the newest unfinished run of that release at
//!    its first unfinished phase; deploying a release again skips regions already running it.
//!
//! Approvals, leases, runs, the journal and region state live in the [`ledger`]: the local
//! store, or `cairn serve` when a remote is configured, so CI runners share them.
//!
//! Secrets (e.g. `FLY_API_TOKEN`) reach the commands as environment variables and are masked in
//! everything printed or recorded.

pub mod ledger;

use crate::exec::process::{self, Console, Exit};
use crate::exec::secrets::Masker;
use crate::model::{Environment, Pipeline, Probe};
use crate::plan::trigger::{env_vars, render_env, EnvPlan, Phase};
use ledger::{ApprovalRow, LeaseAnswer, Ledger, LedgerError, Op};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a rollout stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    DeployFailed {
        region: String,
        detail: String,
    },
    Unhealthy {
        region: String,
        detail: String,
    },
    MigrationFailed {
        detail: String,
    },
    SwitchFailed {
        detail: String,
    },
    /// A traffic share failed its check; traffic went back to the old release.
    CanaryFailed {
        share: u8,
        detail: String,
    },
    /// The ledger could not record a phase's start, so the phase did not start.
    Ledger {
        detail: String,
    },
    Interrupted,
}

impl std::fmt::Display for HaltReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaltReason::DeployFailed { region, detail } => write!(f, "deploy to {region} failed: {detail}"),
            HaltReason::Unhealthy { region, detail } => write!(f, "{region} is unhealthy: {detail}"),
            HaltReason::MigrationFailed { detail } => write!(f, "the migration failed: {detail}"),
            HaltReason::SwitchFailed { detail } => write!(f, "switching traffic failed: {detail}"),
            HaltReason::CanaryFailed { share, detail } => {
                write!(f, "the canary at {share}% failed: {detail}; traffic moved back to 0%")
            }
            HaltReason::Ledger { detail } => write!(f, "the deploy ledger is unavailable: {detail}"),
            HaltReason::Interrupted => write!(f, "interrupted"),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Gate(String),
    #[error("{0}")]
    Halted(String),
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Store(String),
}

impl From<LedgerError> for DeployError {
    fn from(e: LedgerError) -> DeployError {
        DeployError::Store(e.to_string())
    }
}

pub fn now_ms() -> i64 {
    crate::cache::now_ms()
}

/// Who is deploying: `CAIRN_ACTOR`, `GITHUB_ACTOR`, else the user name.
pub fn actor() -> String {
    ["CAIRN_ACTOR", "GITHUB_ACTOR", "USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        .unwrap_or_else(|| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// Gates: the verdicts are pure (`cairn_core::gates`); here they get the clock, the system's
// time zones and the ledger.

pub use cairn_core::gates::{branch_allowed, parse_rfc3339, release_hash};

/// Is `at_unix` inside one of the windows? (`None`: no windows, always open.)
pub fn window_open(env: &Environment, at_unix: i64) -> Result<Option<bool>, String> {
    cairn_core::gates::window_open(env, at_unix, &tz_offset_minutes)
}

/// Why the environment is closed at `now_unix` (windows, freezes); empty when open.
pub fn closed_now(env: &Environment, now_unix: i64) -> Result<Vec<String>, String> {
    cairn_core::gates::closed_now(env, now_unix, &tz_offset_minutes)
}

/// Minutes east of UTC for a window's time zone (IANA names are asked of the system's zoneinfo).
pub fn tz_offset_minutes(tz: &str, at_unix: i64) -> Option<i32> {
    if tz == "UTC" || tz == "Z" {
        return Some(0);
    }
    if let Some(rest) = tz.strip_prefix(['+', '-']) {
        let m = crate::model::validate::parse_hhmm(rest)? as i32;
        return Some(if tz.starts_with('-') { -m } else { m });
    }
    let out =
        std::process::Command::new("date").env("TZ", tz).args([&format!("--date=@{at_unix}"), "+%z"]).output().ok()?;
    let s = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !std::path::Path::new("/usr/share/zoneinfo").join(tz).exists() || s.len() != 5 {
        return None;
    }
    let sign = if s.starts_with('-') { -1 } else { 1 };
    let h: i32 = s[1..3].parse().ok()?;
    let m: i32 = s[3..5].parse().ok()?;
    Some(sign * (h * 60 + m))
}

pub struct GateInput<'a> {
    pub env_name: &'a str,
    pub env: &'a Environment,
    pub release: &'a str,
    pub branch: Option<&'a str>,
    pub actor: &'a str,
    pub now_unix: i64,
    pub break_glass: Option<&'a str>,
}

/// The approval gate of `release`: `Ok(Ok(note))` when a valid approval exists (who, and
/// their comment), `Ok(Err(why))` when none does. No approval configured: always open.
pub fn approval_state(
    ledger: &Ledger,
    env_name: &str,
    env: &Environment,
    release: &str,
    actor: &str,
) -> Result<Result<String, String>, DeployError> {
    let Some(a) = &env.approval else { return Ok(Ok("no approval required".into())) };
    let mut rows: Vec<ApprovalRow> =
        ledger.call(Op::Approvals { env: env_name.to_string(), release: release.to_string() })?;
    if !a.keys.is_empty() {
        // Only approvals whose signature still verifies, for exactly this row, count.
        let trusted = crate::keys::Trusted::parse(&a.keys).map_err(DeployError::Gate)?;
        rows.retain(|r| {
            SignedApproval::verify(&r.token, &trusted).is_ok_and(|s| {
                s.env == env_name && s.release == release && s.approver == r.approver && s.expires_at == r.expires_at
            })
        });
        if rows.is_empty() {
            return Ok(Err("no signed approval for this release".to_string()));
        }
    }
    let rows: Vec<cairn_core::gates::Approval> = rows
        .into_iter()
        .map(|r| cairn_core::gates::Approval { approver: r.approver, expires_at: r.expires_at, comment: r.comment })
        .collect();
    Ok(cairn_core::gates::approval_verdict(a, &rows, actor, now_ms()))
}

/// An approval signed by a reviewer's key, carried to CI as a token:
/// `cairn-approval-v1.BASE64(JSON).NAME:BASE64(SIGNATURE)`, the signature over the JSON bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedApproval {
    pub env: String,
    pub release: String,
    pub approver: String,
    pub comment: String,
    /// ms since the epoch.
    pub expires_at: i64,
}

const TOKEN_PREFIX: &str = "cairn-approval-v1.";

impl SignedApproval {
    pub fn sign(&self, key: &crate::keys::Secret) -> String {
        let body = serde_json::to_string(self).expect("approvals serialise");
        format!("{TOKEN_PREFIX}{}.{}", crate::keys::b64(body.as_bytes()), key.sign(body.as_bytes()))
    }

    /// Parse a token and check its signature against `trusted`; the signer must be the
    /// approver it names.
    pub fn verify(token: &str, trusted: &crate::keys::Trusted) -> Result<SignedApproval, String> {
        let rest = token.trim().strip_prefix(TOKEN_PREFIX).ok_or("not a cairn approval token")?;
        let (body, sig) = rest.split_once('.').ok_or("malformed approval token")?;
        let body = crate::keys::unb64(body).ok_or("malformed approval token")?;
        trusted.verify(Some(sig), &body)?;
        let a: SignedApproval = serde_json::from_slice(&body).map_err(|_| "malformed approval token")?;
        let signer = sig.rsplit_once(':').map(|(n, _)| n).unwrap_or_default();
        if signer != a.approver {
            return Err(format!("signed by `{signer}` on behalf of `{}`", a.approver));
        }
        Ok(a)
    }
}

/// Check a signed approval for `env` and record it (with its token, which every later gate
/// check verifies again).
pub fn accept_signed_approval(
    ledger: &Ledger,
    env_name: &str,
    env: &Environment,
    token: &str,
) -> Result<SignedApproval, DeployError> {
    let refuse = |why: String| DeployError::Gate(format!("error: the approval token was refused: {why}"));
    let Some(a) = &env.approval else { return Err(refuse(format!("`{env_name}` needs no approval"))) };
    if a.keys.is_empty() {
        return Err(refuse(format!(
            "`{env_name}` lists no reviewer keys (approval.keys), so signatures can't be checked"
        )));
    }
    let trusted = crate::keys::Trusted::parse(&a.keys).map_err(refuse)?;
    let s = SignedApproval::verify(token, &trusted).map_err(refuse)?;
    if s.env != env_name {
        return Err(refuse(format!("it approves `{}`, not `{env_name}`", s.env)));
    }
    if !a.reviewers.contains(&s.approver) {
        return Err(refuse(format!("{} is not a reviewer of `{env_name}`", s.approver)));
    }
    ledger.exec(Op::Approve {
        env: s.env.clone(),
        release: s.release.clone(),
        approver: s.approver.clone(),
        comment: s.comment.clone(),
        expires_at: s.expires_at,
        token: token.trim().to_string(),
        audit: format!("signed approval of release {}", s.release),
    })?;
    Ok(s)
}

/// Why the environment is closed for deploys at `now_unix` (outside every window, in a
/// freeze); empty when open.
/// Check every gate; `Err` says which is closed and what to do.
pub fn check_gates(ledger: &Ledger, g: &GateInput) -> Result<Vec<String>, DeployError> {
    let mut notes = Vec::new();
    if !branch_allowed(g.env, g.branch) {
        return Err(DeployError::Gate(format!(
            "error: `{}` deploys only from {}; this is {}\n  hint: deploy from an allowed branch (pass --branch if cairn guessed wrong)",
            g.env_name,
            g.env.branches.join(", "),
            g.branch.map(|b| format!("`{b}`")).unwrap_or_else(|| "no branch".into())
        )));
    }
    if let Some(a) = &g.env.approval {
        match approval_state(ledger, g.env_name, g.env, g.release, g.actor)? {
            Ok(note) => notes.push(note),
            Err(why) => {
                return Err(DeployError::Gate(format!(
                    "error: `{}` needs an approval for release {} from one of {}: {why}\n  hint: cairn approve {} --release {} --by REVIEWER",
                    g.env_name,
                    g.release,
                    a.reviewers.join(", "),
                    g.env_name,
                    g.release
                )));
            }
        }
    }
    let closed = closed_now(g.env, g.now_unix).map_err(|e| DeployError::Usage(format!("error: {e}")))?;
    if !closed.is_empty() {
        match g.break_glass {
            Some(reason) if !reason.trim().is_empty() => {
                notes.push(format!("break-glass: {} ({})", closed.join(", "), reason));
            }
            _ => {
                return Err(DeployError::Gate(format!(
                    "error: `{}` is closed for deploys: {}\n  hint: wait for the window, or override with --break-glass \"REASON\" (recorded)",
                    g.env_name,
                    closed.join(", ")
                )))
            }
        }
    }
    Ok(notes)
}

// ---------------------------------------------------------------------------------------------
// The lease

pub struct Lease {
    env: String,
    run_id: String,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

/// Wait out a bake time (Ctrl-C ends it early; the rollout then halts before the next phase).
fn bake_for(bake: Option<&str>) {
    if let Some(b) = bake.and_then(|b| crate::model::Dur::parse(b).ok()) {
        let until = Instant::now() + b.0;
        while Instant::now() < until && !process::interrupted() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The regions a traffic canary watches: those deployed in the canary wave.
fn canary_regions(plan: &EnvPlan) -> Vec<Option<String>> {
    plan.phases
        .iter()
        .filter_map(|p| match p {
            Phase::Deploy { region, wave, .. } if wave == "canary" => Some(region.clone()),
            _ => None,
        })
        .collect()
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// Take the environment's lease, waiting in line while another live deploy holds it.
pub fn acquire_lease(
    ledger: &Ledger,
    env: &str,
    run_id: &str,
    who: &str,
    ttl: Duration,
    console: &Console,
) -> Result<Lease, DeployError> {
    let ttl_ms = ttl.as_millis() as i64;
    let mut announced = false;
    loop {
        let answer: LeaseAnswer = ledger.call(Op::LeaseTry {
            env: env.to_string(),
            run_id: run_id.to_string(),
            holder: who.to_string(),
            host: host(),
            pid: i64::from(std::process::id()),
            ttl_ms,
        })?;
        if answer.acquired {
            break;
        }
        if !announced {
            let holder = answer.holder.unwrap_or_else(|| "an earlier run".into());
            console.note(&format!("cairn: `{env}` is being deployed by {holder}; waiting for the lease"));
            announced = true;
        }
        if process::interrupted() {
            let _ = ledger.exec(Op::LeaseLeave { env: env.to_string(), run_id: run_id.to_string() });
            return Err(DeployError::Halted("interrupted while waiting for the lease".into()));
        }
        std::thread::sleep(if ledger.is_shared() { Duration::from_millis(500) } else { Duration::from_millis(200) });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (ledger, env, run_id, stop) = (ledger.clone(), env.to_string(), run_id.to_string(), stop.clone());
        std::thread::spawn(move || {
            let beat = (ttl / 3).max(Duration::from_millis(100));
            let mut warned = false;
            while !stop.load(Ordering::SeqCst) {
                let until = Instant::now() + beat;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // A lost heartbeat never cancels the running phase (a production deploy is
                // not cut midway); it is said once, loudly.
                let renewed: Result<bool, _> =
                    ledger.call(Op::LeaseRenew { env: env.clone(), run_id: run_id.clone(), ttl_ms });
                let problem = match renewed {
                    Ok(true) => None,
                    Ok(false) => Some(format!("the lease of `{env}` was broken (cairn lock release --force)")),
                    Err(e) => Some(format!("could not renew the lease of `{env}`: {e}")),
                };
                if let Some(p) = problem {
                    if !warned {
                        eprintln!("warning: {p}; this deploy goes on, but another may start");
                        warned = true;
                    }
                }
            }
        })
    };
    Ok(Lease { env: env.to_string(), run_id: run_id.to_string(), stop, heartbeat: Some(heartbeat) })
}

impl Lease {
    pub fn release(mut self, ledger: &Ledger) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let _ = ledger.exec(Op::LeaseRelease { env: self.env.clone(), run_id: self.run_id.clone() });
    }
}

// ---------------------------------------------------------------------------------------------
// Running phases

pub struct Runner<'a> {
    pub pipeline: &'a Pipeline,
    pub env_name: &'a str,
    pub env: &'a Environment,
    pub root: PathBuf,
    pub ledger: Ledger,
    pub console: &'a Console,
    pub masker: Masker,
    pub secret_env: BTreeMap<String, String>,
    pub release: String,
    pub run_id: String,
}

impl Runner<'_> {
    /// Write a transition to the journal. A failed write is a warning, except for a phase's
    /// start: a phase whose start can't be recorded does not start (`Err`), so the journal
    /// never misses something that happened.
    fn journal(&self, phase: usize, what: &str, state: &str, detail: &str) -> Result<(), HaltReason> {
        let op = Op::Journal {
            run_id: self.run_id.clone(),
            phase: phase as i64,
            what: what.to_string(),
            state: state.to_string(),
            detail: self.masker.mask(detail),
        };
        match self.ledger.exec(op) {
            Ok(()) => Ok(()),
            Err(e) if state == "started" => {
                Err(HaltReason::Ledger { detail: format!("could not record `{what}`: {e}") })
            }
            Err(e) => {
                self.console.note(&format!("warning: could not record `{what}` {state}: {e}"));
                Ok(())
            }
        }
    }

    fn set_region(&self, region: &str, release: Option<&str>) {
        let (env, region) = (self.env_name.to_string(), region.to_string());
        let op = match release {
            Some(r) => Op::RegionSet { env, region, release: r.to_string() },
            None => Op::RegionClear { env, region },
        };
        if let Err(e) = self.ledger.exec(op) {
            self.console.note(&format!("warning: {e}"));
        }
    }

    fn env_for_commands(&self) -> BTreeMap<String, String> {
        let mut env = process::base_env([]);
        env.extend(self.secret_env.clone());
        env.insert("CAIRN_RELEASE".into(), self.release.clone());
        env.insert("CAIRN_ENVIRONMENT".into(), self.env_name.to_string());
        env
    }

    /// Run one command; Ok(()) on exit 0.
    fn run_cmd(&self, label: &str, cmd: &str, timeout: Option<Duration>) -> Result<(), String> {
        self.console.note(&format!("[{label}] $ {}", self.masker.mask(cmd)));
        // Not cancellable: Ctrl-C lets a running phase finish; the rollout halts after it.
        let out = process::run_opts(
            cmd,
            &self.root,
            &self.env_for_commands(),
            timeout,
            &format!("[{label}]"),
            self.console,
            &self.masker,
            false,
        )
        .map_err(|e| format!("could not start: {e}"))?;
        match out.exit {
            Exit::Code(0) => Ok(()),
            Exit::Code(c) => Err(format!("exited with status {c}")),
            Exit::Signal(s) => Err(format!("killed by signal {s}")),
            Exit::TimedOut => Err("timed out".into()),
            Exit::Interrupted => Err("interrupted".into()),
        }
    }

    fn health(&self, region: Option<&str>) -> Result<(), String> {
        let Some(h) = &self.env.health else { return Ok(()) };
        let vars = env_vars(self.pipeline, self.env_name, self.env);
        let mut last = String::new();
        for attempt in 0..h.retries.max(1) {
            if attempt > 0 {
                std::thread::sleep(h.interval.0);
            }
            let ok = match &h.probe {
                Probe::Http(url) => {
                    let url = render_env(url, &vars, region, &self.release);
                    match reqwest::blocking::Client::builder()
                        .timeout(h.timeout.0)
                        .build()
                        .and_then(|c| c.get(&url).send())
                    {
                        Ok(r) if r.status().is_success() => true,
                        Ok(r) => {
                            last = format!("{url} answered {}", r.status());
                            false
                        }
                        Err(e) => {
                            last = format!("{url}: {e}");
                            false
                        }
                    }
                }
                Probe::Command(c) => {
                    let c = render_env(c, &vars, region, &self.release);
                    let r = self.run_cmd("health", &c, Some(h.timeout.0));
                    if let Err(e) = &r {
                        last = format!("`{c}` {e}");
                    }
                    r.is_ok()
                }
                Probe::Tcp(a) => {
                    use std::net::ToSocketAddrs;
                    let a = render_env(a, &vars, region, &self.release);
                    let ok = a
                        .to_socket_addrs()
                        .ok()
                        .and_then(|mut x| x.next())
                        .is_some_and(|x| std::net::TcpStream::connect_timeout(&x, h.timeout.0).is_ok());
                    if !ok {
                        last = format!("{a} refused");
                    }
                    ok
                }
            };
            if ok {
                return Ok(());
            }
        }
        Err(format!("health check failed {} times: {}", h.retries.max(1), self.masker.mask(&last)))
    }

    fn rollback_region(&self, region: Option<&str>, phase: usize) {
        let Some(rb) = &self.env.rollback else { return };
        let vars = env_vars(self.pipeline, self.env_name, self.env);
        let cmd = render_env(rb, &vars, region, &self.release);
        let what = format!("rollback {}", region.unwrap_or("(all)"));
        // A rollback is a repair: it runs even when its start can't be recorded.
        let _ = self.journal(phase, &what, "started", "");
        let r = self.run_cmd("rollback", &cmd, Some(Duration::from_secs(900)));
        // Not "done": the phase's last word is that it was undone, so a resume deploys it again.
        let state = if r.is_ok() { "rolled-back" } else { "rollback-failed" };
        let _ = self.journal(phase, &what, state, &r.err().unwrap_or_default());
        notify(self, "rolled-back", &format!("{} rolled back in {}", self.env_name, region.unwrap_or("all regions")));
        if let Some(r) = region {
            self.set_region(r, None);
        }
    }

    /// Run phases from `start`; `done_phases` are skipped (resume).
    pub fn run(&self, plan: &EnvPlan, done_phases: &[usize]) -> Result<(), HaltReason> {
        let vars = env_vars(self.pipeline, self.env_name, self.env);
        let mut completed_regions: Vec<(usize, Option<String>)> = Vec::new();
        for (k, phase) in plan.phases.iter().enumerate() {
            if process::interrupted() {
                return Err(HaltReason::Interrupted);
            }
            if done_phases.contains(&k) {
                continue;
            }
            match phase {
                Phase::Deploy { region, bake, .. } => {
                    let r = region.as_deref();
                    let label = r.unwrap_or("deploy").to_string();
                    // Skip a region already running this release.
                    if let Some(reg) = r {
                        let cur: Option<String> = self
                            .ledger
                            .call(Op::RegionRelease { env: self.env_name.to_string(), region: reg.to_string() })
                            .unwrap_or_default();
                        if cur.as_deref() == Some(self.release.as_str()) {
                            self.console.note(&format!("cairn: {reg} already runs release {}; skipped", self.release));
                            let _ =
                                self.journal(k, &format!("deploy {reg}"), "skipped", "already running this release");
                            completed_regions.push((k, Some(reg.to_string())));
                            continue;
                        }
                    }
                    let what = format!("deploy {label}");
                    self.journal(k, &what, "started", "")?;
                    notify(
                        self,
                        "region-started",
                        &format!("{} {label}: deploying release {}", self.env_name, self.release),
                    );
                    let cmd = render_env(&self.env.deploy, &vars, r, &self.release);
                    if let Err(e) = self.run_cmd(&label, &cmd, Some(Duration::from_secs(3600))) {
                        let _ = self.journal(k, &what, "failed", &e);
                        notify(self, "region-failed", &format!("{} {label}: deploy failed: {e}", self.env_name));
                        self.fail_policy(k, r, &completed_regions);
                        return Err(HaltReason::DeployFailed { region: label, detail: e });
                    }
                    if let Err(e) = self.health(r) {
                        let _ = self.journal(k, &what, "failed", &e);
                        notify(self, "region-failed", &format!("{} {label}: {e}", self.env_name));
                        self.fail_policy(k, r, &completed_regions);
                        return Err(HaltReason::Unhealthy { region: label, detail: e });
                    }
                    bake_for(bake.as_deref());
                    if let Some(reg) = r {
                        self.set_region(reg, Some(&self.release));
                    }
                    let _ = self.journal(k, &what, "done", "");
                    notify(
                        self,
                        "region-healthy",
                        &format!("{} {label}: healthy on release {}", self.env_name, self.release),
                    );
                    completed_regions.push((k, r.map(String::from)));
                }
                Phase::Migration { .. } => {
                    self.journal(k, "migrate", "started", "")?;
                    let timeout = self.env.migration.as_ref().and_then(|m| m.timeout).map(|d| d.0);
                    // Rendered now: the plan's copy names the release as a placeholder.
                    let command = self
                        .env
                        .migration
                        .as_ref()
                        .map(|m| render_env(&m.run, &vars, None, &self.release))
                        .unwrap_or_default();
                    if let Err(e) = self.run_cmd("migrate", &command, timeout) {
                        let _ = self.journal(k, "migrate", "failed", &e);
                        notify(
                            self,
                            "migration-failed",
                            &format!("{}: migration failed ({e}); apps were NOT rolled back", self.env_name),
                        );
                        return Err(HaltReason::MigrationFailed { detail: e });
                    }
                    let _ = self.journal(k, "migrate", "done", "");
                    notify(self, "migration-done", &format!("{}: migration done", self.env_name));
                }
                Phase::Switch { .. } => {
                    self.journal(k, "switch", "started", "")?;
                    let command = match &self.env.strategy {
                        crate::model::Strategy::BlueGreen(bg) => {
                            render_env(&bg.switch, &vars, self.env.regions.first().map(String::as_str), &self.release)
                        }
                        _ => String::new(),
                    };
                    // After the switch, every region is checked again; blue still runs, so a
                    // failure moves traffic straight back.
                    let r = self.run_cmd("switch", &command, Some(Duration::from_secs(900))).and_then(|()| {
                        let regions: Vec<Option<&str>> = if self.env.regions.is_empty() {
                            vec![None]
                        } else {
                            self.env.regions.iter().map(|r| Some(r.as_str())).collect()
                        };
                        regions.into_iter().try_for_each(|r| self.health(r))
                    });
                    if let Err(e) = r {
                        let _ = self.journal(k, "switch", "failed", &e);
                        let detail = match self.switch_back(k, &vars) {
                            Some(true) => format!("{e}; traffic switched back to blue"),
                            Some(false) => format!("{e}; switching back to blue failed too"),
                            None => e,
                        };
                        return Err(HaltReason::SwitchFailed { detail });
                    }
                    let _ = self.journal(k, "switch", "done", "");
                }
                Phase::Shift { share, bake, .. } => {
                    let what = format!("shift {share}%");
                    self.journal(k, &what, "started", "")?;
                    let watched = canary_regions(plan);
                    let r = self
                        .run_cmd("canary", &self.shift_command(*share), Some(Duration::from_secs(900)))
                        .and_then(|()| watched.iter().try_for_each(|reg| self.health(reg.as_deref())));
                    if let Err(e) = r {
                        let _ = self.journal(k, &what, "failed", &e);
                        notify(self, "canary-failed", &format!("{}: canary at {share}% failed: {e}", self.env_name));
                        self.shift_back(plan, k);
                        return Err(HaltReason::CanaryFailed { share: *share, detail: e });
                    }
                    bake_for(bake.as_deref());
                    let _ = self.journal(k, &what, "done", "");
                    notify(
                        self,
                        "traffic-shifted",
                        &format!("{}: {share}% of traffic on release {}", self.env_name, self.release),
                    );
                }
            }
        }
        Ok(())
    }

    /// Blue-green's fast rollback: traffic back to blue, which kept running.
    /// `None` when there is no `switch_back`, else whether it worked.
    fn switch_back(&self, phase: usize, vars: &BTreeMap<String, String>) -> Option<bool> {
        let crate::model::Strategy::BlueGreen(bg) = &self.env.strategy else { return None };
        let back = bg.switch_back.as_ref()?;
        let cmd = render_env(back, vars, self.env.regions.first().map(String::as_str), &self.release);
        let _ = self.journal(phase, "switch back", "started", "");
        let r = self.run_cmd("switch back", &cmd, Some(Duration::from_secs(900)));
        let state = if r.is_ok() { "rolled-back" } else { "rollback-failed" };
        let _ = self.journal(phase, "switch back", state, &r.clone().err().unwrap_or_default());
        notify(self, "rolled-back", &format!("{}: traffic switched back to blue", self.env_name));
        Some(r.is_ok())
    }

    /// The canary's `shift` command for `share` percent.
    fn shift_command(&self, share: u8) -> String {
        let crate::model::Strategy::Canary(c) = &self.env.strategy else { return String::new() };
        let mut vars = env_vars(self.pipeline, self.env_name, self.env);
        vars.insert("share".into(), share.to_string());
        render_env(
            c.shift.as_deref().unwrap_or_default(),
            &vars,
            self.env.regions.first().map(String::as_str),
            &self.release,
        )
    }

    /// A failed share sends all traffic back (`shift` at 0) and marks the shares already
    /// reached as reverted, so a resume climbs again from the first share.
    fn shift_back(&self, plan: &EnvPlan, failed: usize) {
        let _ = self.journal(failed, "shift 0%", "started", "");
        let r = self.run_cmd("canary", &self.shift_command(0), Some(Duration::from_secs(900)));
        let _ = self.journal(
            failed,
            "shift 0%",
            if r.is_ok() { "rolled-back" } else { "rollback-failed" },
            &r.clone().err().unwrap_or_default(),
        );
        for (k, ph) in plan.phases.iter().enumerate().take(failed) {
            if let Phase::Shift { share, .. } = ph {
                let _ = self.journal(k, &format!("shift {share}%"), "reverted", "traffic moved back to 0%");
            }
        }
        notify(self, "rolled-back", &format!("{}: canary traffic moved back to 0%", self.env_name));
    }

    fn fail_policy(&self, phase: usize, failed: Option<&str>, completed: &[(usize, Option<String>)]) {
        if self.env.on_failure.rollback_failed {
            self.rollback_region(failed, phase);
        }
        if self.env.on_failure.rollback_completed {
            for (k, r) in completed.iter().rev() {
                self.rollback_region(r.as_deref(), *k);
            }
        }
    }
}

/// Post a deploy event to the environment's webhooks (Slack-compatible JSON) and metric
/// endpoints. Failures are warnings, never a failed deploy.
pub fn notify(r: &Runner, event: &str, text: &str) {
    let text = r.masker.mask(text);
    for n in &r.env.notify {
        let sent = match n {
            crate::model::Notify::Slack(w) => {
                if !w.events.is_empty() && !w.events.iter().any(|e| e == event) {
                    continue;
                }
                let Some(url) = r.secret_env.get(&w.url_secret) else { continue };
                post(url, &serde_json::json!({"text": format!("[cairn] {text}"), "event": event}), None)
            }
            crate::model::Notify::Metric(m) => {
                let mut tags = m.tags.clone();
                tags.push(format!("environment:{}", r.env_name));
                tags.push(format!("app:{}", r.pipeline.name));
                tags.push(format!("event:{event}"));
                let body = serde_json::json!({"series": [{"metric": m.name, "points": [[now_ms() / 1000, 1]], "type": "count", "tags": tags}]});
                let key = m.api_key_secret.as_ref().and_then(|s| r.secret_env.get(s)).map(String::as_str);
                post(&m.url, &body, key)
            }
        };
        if let Err(e) = sent {
            r.console.note(&format!("warning: notification for {event} failed: {}", r.masker.mask(&e)));
        }
    }
}

fn post(url: &str, body: &serde_json::Value, api_key: Option<&str>) -> Result<(), String> {
    let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let mut rb = c.post(url).json(body);
    if let Some(k) = api_key {
        rb = rb.header("DD-API-KEY", k);
    }
    let r = rb.send().map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", r.status()))
    }
}

/// Resolve the environment's secrets (scoped definitions, `Inherit` from the pipeline).
pub fn env_secrets(p: &Pipeline, env: &Environment, root: &Path) -> Result<BTreeMap<String, String>, DeployError> {
    let mut out = BTreeMap::new();
    for (name, source) in env.secrets.iter() {
        let source = match source {
            crate::model::SecretSource::Inherit => {
                p.secrets.get(name).cloned().unwrap_or(crate::model::SecretSource::Inherit)
            }
            other => other.clone(),
        };
        let v = crate::exec::secrets::resolve(name, &source, root)
            .map_err(|e| DeployError::Usage(format!("error: {e}")))?;
        out.insert(name.clone(), v);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_windows() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2026-11-27T09:00:00+09:00"), Some(1_795_737_600));
        assert_eq!(parse_rfc3339("2026-11-27T00:00:00Z"), Some(1_795_737_600));
        assert_eq!(tz_offset_minutes("+09:00", 0), Some(540));
        assert_eq!(tz_offset_minutes("-05:30", 0), Some(-330));
    }
}
