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
//! Secrets (e.g. `FLY_API_TOKEN`) reach the commands as environment variables and are masked in
//! everything printed or recorded.

use crate::cache::Store;
use crate::exec::process::{self, Console, Exit};
use crate::exec::secrets::Masker;
use crate::model::{Environment, Pipeline, Probe};
use crate::plan::trigger::{env_vars, render_env, EnvPlan, Phase};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a rollout stopped before the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HaltReason {
    DeployFailed { region: String, detail: String },
    Unhealthy { region: String, detail: String },
    MigrationFailed { detail: String },
    SwitchFailed { detail: String },
    Interrupted,
}

impl std::fmt::Display for HaltReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HaltReason::DeployFailed { region, detail } => write!(f, "deploy to {region} failed: {detail}"),
            HaltReason::Unhealthy { region, detail } => write!(f, "{region} is unhealthy: {detail}"),
            HaltReason::MigrationFailed { detail } => write!(f, "the migration failed: {detail}"),
            HaltReason::SwitchFailed { detail } => write!(f, "switching traffic failed: {detail}"),
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

/// The release name: blake3 over required step keys, the rendered deploy configuration and
/// secret names (never values).
pub fn release_hash(env_name: &str, keys: &BTreeMap<String, String>, plan: &EnvPlan) -> String {
    let config = serde_json::json!({
        "environment": env_name,
        "keys": keys,
        "strategy": plan.strategy,
        "regions": plan.regions,
        "phases": plan.phases,
        "migration": plan.migration,
        "secrets": plan.secrets,
    });
    blake3::hash(config.to_string().as_bytes()).to_hex()[..16].to_string()
}

// ---------------------------------------------------------------------------------------------
// Gates

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

/// Is `at_unix` inside one of the windows? (`None`: no windows, always open.)
pub fn window_open(env: &Environment, at_unix: i64) -> Result<Option<bool>, String> {
    if env.windows.is_empty() {
        return Ok(None);
    }
    for w in &env.windows {
        let off =
            tz_offset_minutes(&w.timezone, at_unix).ok_or_else(|| format!("unknown time zone `{}`", w.timezone))?;
        let local = at_unix + i64::from(off) * 60;
        let minutes = (local.rem_euclid(86_400) / 60) as u32;
        // 1970-01-01 was a Thursday.
        let weekday = ((local.div_euclid(86_400) + 3).rem_euclid(7)) as usize; // 0 = Monday
        let day = [
            crate::model::Weekday::Mon,
            crate::model::Weekday::Tue,
            crate::model::Weekday::Wed,
            crate::model::Weekday::Thu,
            crate::model::Weekday::Fri,
            crate::model::Weekday::Sat,
            crate::model::Weekday::Sun,
        ][weekday];
        let (start, end) = (
            crate::model::validate::parse_hhmm(&w.start).unwrap_or(0),
            crate::model::validate::parse_hhmm(&w.end).unwrap_or(0),
        );
        if w.days.contains(&day) && minutes >= start && minutes < end {
            return Ok(Some(true));
        }
    }
    Ok(Some(false))
}

/// Parse an RFC 3339 instant to unix seconds.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    if !crate::model::validate::looks_rfc3339(s) {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (n(0..4)?, n(5..7)?, n(8..10)?, n(11..13)?, n(14..16)?, n(17..19)?);
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if mo <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if mo > 2 { mo - 3 } else { mo + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let tail = s[19..].trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let off = if tail == "Z" {
        0
    } else {
        let m = crate::model::validate::parse_hhmm(&tail[1..])? as i64;
        if tail.starts_with('-') {
            -m
        } else {
            m
        }
    };
    Some(days * 86_400 + h * 3600 + mi * 60 + se - off * 60)
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
    store: &Store,
    env_name: &str,
    env: &Environment,
    release: &str,
    actor: &str,
) -> Result<Result<String, String>, DeployError> {
    let Some(a) = &env.approval else { return Ok(Ok("no approval required".into())) };
    let mut rows = store
        .with_index(|i| {
            i.rows(
                "SELECT approver, expires_at, comment, token FROM approvals WHERE env = ?1 AND release = ?2 ORDER BY at DESC",
                &[&env_name, &release],
            )
        })
        .map_err(|e| DeployError::Store(e.to_string()))?;
    if !a.keys.is_empty() {
        // Only approvals whose signature still verifies, for exactly this row, count.
        let trusted = crate::keys::Trusted::parse(&a.keys).map_err(DeployError::Gate)?;
        rows.retain(|r| {
            SignedApproval::verify(&r[3], &trusted).is_ok_and(|s| {
                s.env == env_name && s.release == release && s.approver == r[0] && s.expires_at.to_string() == r[1]
            })
        });
        if rows.is_empty() {
            return Ok(Err("no signed approval for this release".to_string()));
        }
    }
    let now = now_ms();
    let valid = rows.iter().find(|r| {
        r[1].parse::<i64>().unwrap_or(0) > now
            && a.reviewers.contains(&r[0])
            && (a.allow_self_approval || r[0] != actor)
    });
    Ok(match valid {
        Some(r) => Ok(format!("approved by {} ({})", r[0], r[2])),
        None if rows.is_empty() => Err("no approval for this release".to_string()),
        None if rows.iter().all(|r| r[1].parse::<i64>().unwrap_or(0) <= now) => {
            Err("its approval has expired".to_string())
        }
        None if rows.iter().any(|r| r[0] == actor) && !a.allow_self_approval => {
            Err(format!("{actor} may not approve their own deploy"))
        }
        None => Err("no approval from a designated reviewer".to_string()),
    })
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
    store: &Store,
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
    let now = now_ms();
    store
        .with_index(|i| {
            i.exec(
                "INSERT INTO approvals (env, release, approver, comment, at, expires_at, token) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                &[&s.env, &s.release, &s.approver, &s.comment, &now, &s.expires_at, &token.trim()],
            )?;
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'approve', ?4)",
                &[&now, &s.env, &s.approver, &format!("signed approval of release {}", s.release)],
            )
        })
        .map_err(|e| DeployError::Store(e.to_string()))?;
    Ok(s)
}

/// Why the environment is closed for deploys at `now_unix` (outside every window, in a
/// freeze); empty when open.
pub fn closed_now(env: &Environment, now_unix: i64) -> Result<Vec<String>, String> {
    let mut closed = Vec::new();
    if window_open(env, now_unix)? == Some(false) {
        closed.push("outside its deploy windows".to_string());
    }
    for f in &env.freezes {
        if let (Some(from), Some(until)) = (parse_rfc3339(&f.from), parse_rfc3339(&f.until)) {
            if now_unix >= from && now_unix < until {
                closed.push(format!("in a freeze ({})", f.reason));
            }
        }
    }
    Ok(closed)
}

/// Check every gate; `Err` says which is closed and what to do.
pub fn check_gates(store: &Store, g: &GateInput) -> Result<Vec<String>, DeployError> {
    let mut notes = Vec::new();
    if !g.env.branches.is_empty() {
        let ok = g.branch.is_some_and(|b| g.env.branches.iter().any(|p| crate::plan::trigger::branch_matches(p, b)));
        if !ok {
            return Err(DeployError::Gate(format!(
                "error: `{}` deploys only from {}; this is {}\n  hint: deploy from an allowed branch (pass --branch if cairn guessed wrong)",
                g.env_name,
                g.env.branches.join(", "),
                g.branch.map(|b| format!("`{b}`")).unwrap_or_else(|| "no branch".into())
            )));
        }
    }
    if let Some(a) = &g.env.approval {
        match approval_state(store, g.env_name, g.env, g.release, g.actor)? {
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

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// Take the environment's lease, waiting in line while another live deploy holds it.
pub fn acquire_lease(
    store: &Arc<Store>,
    env: &str,
    run_id: &str,
    who: &str,
    ttl: Duration,
    console: &Console,
) -> Result<Lease, DeployError> {
    let ttl_ms = ttl.as_millis() as i64;
    let mut announced = false;
    loop {
        let now = now_ms();
        let got = store
            .with_index(|i| {
                i.immediate(|i| {
                    i.exec(
                        "INSERT OR IGNORE INTO lease_queue (env, run_id, since, seen) VALUES (?1, ?2, ?3, ?3)",
                        &[&env, &run_id, &now],
                    )?;
                    i.exec("UPDATE lease_queue SET seen = ?3 WHERE env = ?1 AND run_id = ?2", &[&env, &run_id, &now])?;
                    // Waiters that stopped polling have left the line.
                    i.exec("DELETE FROM lease_queue WHERE env = ?1 AND seen < ?2", &[&env, &(now - 10_000)])?;
                    let holder = i.rows("SELECT run_id, holder, expires_at FROM leases WHERE env = ?1", &[&env])?;
                    let free = holder.first().is_none_or(|h| h[2].parse::<i64>().unwrap_or(0) <= now);
                    let first = i.rows("SELECT run_id FROM lease_queue WHERE env = ?1 ORDER BY since, run_id LIMIT 1", &[&env])?;
                    let my_turn = first.first().is_some_and(|r| r[0] == run_id);
                    if free && my_turn {
                        i.exec(
                            "INSERT OR REPLACE INTO leases (env, holder, run_id, host, pid, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                            &[&env, &who, &run_id, &host(), &(std::process::id() as i64), &now, &(now + ttl_ms)],
                        )?;
                        i.exec("DELETE FROM lease_queue WHERE env = ?1 AND run_id = ?2", &[&env, &run_id])?;
                        return Ok(None);
                    }
                    Ok(Some(holder.first().map(|h| h[1].clone()).unwrap_or_else(|| "an earlier run".into())))
                })
            })
            .map_err(|e| DeployError::Store(e.to_string()))?;
        match got {
            None => break,
            Some(holder) => {
                if !announced {
                    console.note(&format!("cairn: `{env}` is being deployed by {holder}; waiting for the lease"));
                    announced = true;
                }
                if process::interrupted() {
                    let _ = store.with_index(|i| {
                        i.exec("DELETE FROM lease_queue WHERE env = ?1 AND run_id = ?2", &[&env, &run_id])
                    });
                    return Err(DeployError::Halted("interrupted while waiting for the lease".into()));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (store, env, run_id, stop) = (store.clone(), env.to_string(), run_id.to_string(), stop.clone());
        std::thread::spawn(move || {
            let beat = (ttl / 3).max(Duration::from_millis(100));
            while !stop.load(Ordering::SeqCst) {
                let until = Instant::now() + beat;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let exp = now_ms() + ttl_ms;
                let _ = store.with_index(|i| {
                    i.exec("UPDATE leases SET expires_at = ?3 WHERE env = ?1 AND run_id = ?2", &[&env, &run_id, &exp])
                });
            }
        })
    };
    Ok(Lease { env: env.to_string(), run_id: run_id.to_string(), stop, heartbeat: Some(heartbeat) })
}

impl Lease {
    pub fn release(mut self, store: &Store) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let _ = store
            .with_index(|i| i.exec("DELETE FROM leases WHERE env = ?1 AND run_id = ?2", &[&self.env, &self.run_id]));
    }
}

// ---------------------------------------------------------------------------------------------
// Running phases

pub struct Runner<'a> {
    pub pipeline: &'a Pipeline,
    pub env_name: &'a str,
    pub env: &'a Environment,
    pub root: PathBuf,
    pub store: Arc<Store>,
    pub console: &'a Console,
    pub masker: Masker,
    pub secret_env: BTreeMap<String, String>,
    pub release: String,
    pub run_id: String,
}

fn journal(store: &Store, run_id: &str, phase: usize, what: &str, state: &str, detail: &str) {
    let _ = store.with_index(|i| {
        let seq: i64 = i
            .rows("SELECT COALESCE(MAX(seq), 0) + 1 FROM deploy_journal WHERE run_id = ?1", &[&run_id])
            .ok()
            .and_then(|r| r.first().and_then(|r| r[0].parse().ok()))
            .unwrap_or(1);
        i.exec(
            "INSERT INTO deploy_journal (run_id, seq, at, phase, what, state, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            &[&run_id, &seq, &now_ms(), &(phase as i64), &what, &state, &detail],
        )
    });
}

impl Runner<'_> {
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
        journal(&self.store, &self.run_id, phase, &what, "started", "");
        let r = self.run_cmd("rollback", &cmd, Some(Duration::from_secs(900)));
        journal(
            &self.store,
            &self.run_id,
            phase,
            &what,
            if r.is_ok() { "done" } else { "failed" },
            &r.err().unwrap_or_default(),
        );
        notify(self, "rolled-back", &format!("{} rolled back in {}", self.env_name, region.unwrap_or("all regions")));
        if let Some(r) = region {
            let _ = self.store.with_index(|i| {
                i.exec("DELETE FROM region_state WHERE env = ?1 AND region = ?2", &[&self.env_name, &r])
            });
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
                        let cur = self
                            .store
                            .with_index(|i| {
                                i.rows(
                                    "SELECT release FROM region_state WHERE env = ?1 AND region = ?2",
                                    &[&self.env_name, &reg],
                                )
                            })
                            .unwrap_or_default();
                        if cur.first().is_some_and(|x| x[0] == self.release) {
                            self.console.note(&format!("cairn: {reg} already runs release {}; skipped", self.release));
                            journal(
                                &self.store,
                                &self.run_id,
                                k,
                                &format!("deploy {reg}"),
                                "skipped",
                                "already running this release",
                            );
                            completed_regions.push((k, Some(reg.to_string())));
                            continue;
                        }
                    }
                    let what = format!("deploy {label}");
                    journal(&self.store, &self.run_id, k, &what, "started", "");
                    notify(
                        self,
                        "region-started",
                        &format!("{} {label}: deploying release {}", self.env_name, self.release),
                    );
                    let cmd = render_env(&self.env.deploy, &vars, r, &self.release);
                    if let Err(e) = self.run_cmd(&label, &cmd, Some(Duration::from_secs(3600))) {
                        journal(&self.store, &self.run_id, k, &what, "failed", &e);
                        notify(self, "region-failed", &format!("{} {label}: deploy failed: {e}", self.env_name));
                        self.fail_policy(k, r, &completed_regions);
                        return Err(HaltReason::DeployFailed { region: label, detail: e });
                    }
                    if let Err(e) = self.health(r) {
                        journal(&self.store, &self.run_id, k, &what, "failed", &e);
                        notify(self, "region-failed", &format!("{} {label}: {e}", self.env_name));
                        self.fail_policy(k, r, &completed_regions);
                        return Err(HaltReason::Unhealthy { region: label, detail: e });
                    }
                    if let Some(b) = bake.as_deref().and_then(|b| crate::model::Dur::parse(b).ok()) {
                        let until = Instant::now() + b.0;
                        while Instant::now() < until && !process::interrupted() {
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    if let Some(reg) = r {
                        let _ = self.store.with_index(|i| {
                            i.exec(
                                "INSERT OR REPLACE INTO region_state (env, region, release, at) VALUES (?1, ?2, ?3, ?4)",
                                &[&self.env_name, &reg, &self.release, &now_ms()],
                            )
                        });
                    }
                    journal(&self.store, &self.run_id, k, &what, "done", "");
                    notify(
                        self,
                        "region-healthy",
                        &format!("{} {label}: healthy on release {}", self.env_name, self.release),
                    );
                    completed_regions.push((k, r.map(String::from)));
                }
                Phase::Migration { command } => {
                    journal(&self.store, &self.run_id, k, "migrate", "started", "");
                    let timeout = self.env.migration.as_ref().and_then(|m| m.timeout).map(|d| d.0);
                    if let Err(e) = self.run_cmd("migrate", command, timeout) {
                        journal(&self.store, &self.run_id, k, "migrate", "failed", &e);
                        notify(
                            self,
                            "migration-failed",
                            &format!("{}: migration failed ({e}); apps were NOT rolled back", self.env_name),
                        );
                        return Err(HaltReason::MigrationFailed { detail: e });
                    }
                    journal(&self.store, &self.run_id, k, "migrate", "done", "");
                    notify(self, "migration-done", &format!("{}: migration done", self.env_name));
                }
                Phase::Switch { command } => {
                    journal(&self.store, &self.run_id, k, "switch", "started", "");
                    if let Err(e) = self.run_cmd("switch", command, Some(Duration::from_secs(900))) {
                        journal(&self.store, &self.run_id, k, "switch", "failed", &e);
                        return Err(HaltReason::SwitchFailed { detail: e });
                    }
                    journal(&self.store, &self.run_id, k, "switch", "done", "");
                }
            }
        }
        Ok(())
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
