//! Services (databases and the like) that steps use while they run.
//!
//! A service starts the first time a step that uses it is about to *run* (a cache hit never
//! starts it), in its own process group, with `{port}` (fixed, or a free port), `{dir}` (a fresh
//! private directory) and `{service}` filled in. It is ready when its probe passes:
//!
//! - during the first `interval` cairn probes every 250 ms, and those failures don't count
//!   (so a database that is up in a second is used after a second, not after `interval`);
//! - then every `interval`, each probe limited to `timeout`; failures during `start_period`
//!   don't count; after `retries` counted failures the service is declared failed, the tail of
//!   its log is shown, and its process group is killed.
//!
//! It is stopped (its `stop` command, then SIGTERM and SIGKILL to the group) as soon as no
//! pending step needs it, and whenever the run ends, fails or is interrupted.

use super::process::{base_env, interrupted};
use crate::model::{render, Pipeline, Probe};
use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Running {
    child: Child,
    dir: PathBuf,
    env: BTreeMap<String, String>,
    vars: BTreeMap<String, String>,
    stop: Option<String>,
    exports: BTreeMap<String, String>,
}

pub struct Services<'a> {
    pipeline: &'a Pipeline,
    root: PathBuf,
    running: Mutex<HashMap<String, Running>>,
    /// Steps still to finish per service.
    users: Mutex<HashMap<String, usize>>,
    /// Serialises starts, so two steps needing one service start it once.
    starting: Mutex<()>,
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn kill_group(pid: u32, sig: libc::c_int) {
    // SAFETY: signals the process group cairn created for the service.
    unsafe {
        libc::kill(-(pid as libc::pid_t), sig);
    }
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Run a command to completion within `timeout`; true if it exited 0.
fn run_with_timeout(cmd: &str, env: &BTreeMap<String, String>, cwd: &Path, timeout: Duration) -> bool {
    let Ok(mut child) = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
    else {
        return false;
    };
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(st)) => return st.success(),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                kill_group(child.id(), libc::SIGKILL);
                let _ = child.wait();
                return false;
            }
        }
    }
}

fn probe(
    p: &Probe,
    vars: &BTreeMap<String, String>,
    env: &BTreeMap<String, String>,
    cwd: &Path,
    timeout: Duration,
) -> bool {
    let fill = |t: &str| render(t, |k| vars.get(k).cloned()).unwrap_or_default();
    let run = |c: &str, timeout: Duration| {
        if run_with_timeout(c, env, cwd, timeout) {
            Ok(())
        } else {
            Err("failed".to_string())
        }
    };
    super::probe::check(p, timeout, fill, run).is_ok()
}

impl<'a> Services<'a> {
    /// `users`: for each service, how many selected steps use it.
    pub fn new(pipeline: &'a Pipeline, root: &Path, users: HashMap<String, usize>) -> Services<'a> {
        Services {
            pipeline,
            root: root.to_path_buf(),
            running: Mutex::new(HashMap::new()),
            users: Mutex::new(users),
            starting: Mutex::new(()),
        }
    }

    /// Make sure `name` is up; returns the environment it exports to steps.
    pub fn acquire(&self, name: &str) -> Result<BTreeMap<String, String>, String> {
        let _one_at_a_time = self.starting.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(r) = self.running.lock().unwrap_or_else(|p| p.into_inner()).get(name) {
            return Ok(r.exports.clone());
        }
        let svc = self.pipeline.services.get(name).ok_or_else(|| format!("unknown service `{name}`"))?;
        let port = match svc.port {
            Some(p) => p,
            None => free_port().map_err(|e| format!("service `{name}`: no free port: {e}"))?,
        };
        let dir = std::env::temp_dir().join(format!("cairn-svc-{name}-{}", crate::cache::archive::unique()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("service `{name}`: cannot create {}: {e}", dir.display()))?;
        let mut vars: BTreeMap<String, String> = BTreeMap::new();
        vars.insert("app".into(), self.pipeline.name.clone());
        for (k, v) in self.pipeline.vars.iter() {
            vars.insert(k.clone(), v.clone());
        }
        vars.insert("port".into(), port.to_string());
        vars.insert("dir".into(), dir.display().to_string());
        vars.insert("service".into(), name.to_string());
        let fill = |t: &str| {
            render(t, |k| vars.get(k).cloned()).map_err(|k| format!("service `{name}`: placeholder {{{k}}} undefined"))
        };
        let mut env = base_env([]);
        for (k, v) in svc.env.iter() {
            env.insert(k.clone(), fill(v)?);
        }
        let mut exports = BTreeMap::new();
        for (k, v) in svc.export.iter() {
            exports.insert(k.clone(), fill(v)?);
        }
        let log_path = dir.join("service.log");
        if let Some(setup) = &svc.setup {
            let ok = run_with_timeout(
                &format!("({}) >> '{}' 2>&1", fill(setup)?, log_path.display()),
                &env,
                &self.root,
                Duration::from_secs(300),
            );
            if !ok {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(format!("service `{name}`: setup failed\n{}", tail(&log_path, 20)));
            }
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("service `{name}`: log: {e}"))?;
        let child = Command::new("sh")
            .arg("-c")
            .arg(fill(&svc.start)?)
            .current_dir(&self.root)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("service `{name}`: cannot start: {e}"))?;
        let mut running =
            Running { child, dir: dir.clone(), env: env.clone(), vars: vars.clone(), stop: svc.stop.clone(), exports };
        // Readiness.
        let r = &svc.ready;
        let started = Instant::now();
        let fast_until = started + r.interval.0;
        let mut counted = 0u32;
        let verdict: Result<(), String> = loop {
            if let Ok(Some(status)) = running.child.try_wait() {
                break Err(format!("exited ({status}) before it was ready"));
            }
            if interrupted() {
                break Err("interrupted".into());
            }
            if probe(&r.probe, &vars, &env, &self.root, r.timeout.0) {
                break Ok(());
            }
            let now = Instant::now();
            let in_grace = now < fast_until || now < started + r.start_period.0;
            if !in_grace {
                counted += 1;
                if counted >= r.retries.max(1) {
                    break Err(format!(
                        "not ready after {} probes ({} apart, {} timeout each)",
                        counted, r.interval, r.timeout
                    ));
                }
            }
            let pause = if now < fast_until { Duration::from_millis(250) } else { r.interval.0 };
            let wake = Instant::now() + pause;
            while Instant::now() < wake && !interrupted() {
                std::thread::sleep(Duration::from_millis(20).min(pause));
            }
        };
        if let Err(why) = verdict {
            let log_tail = tail(&log_path, 20);
            self.stop_one(name, running);
            return Err(format!("service `{name}` {why}; the last lines of its log:\n{log_tail}"));
        }
        if let Some(init) = &svc.init {
            let init = fill(init)?;
            if !run_with_timeout(
                &format!("({init}) >> '{}' 2>&1", log_path.display()),
                &env,
                &self.root,
                Duration::from_secs(120),
            ) {
                let log_tail = tail(&log_path, 20);
                self.stop_one(name, running);
                return Err(format!("service `{name}`: init command failed; the last lines of its log:\n{log_tail}"));
            }
        }
        let exports = running.exports.clone();
        self.running.lock().unwrap_or_else(|p| p.into_inner()).insert(name.to_string(), running);
        Ok(exports)
    }

    /// A step that used `name` is done (whatever happened to it); stop the service when no
    /// pending step needs it any more.
    pub fn release(&self, name: &str) {
        let last = {
            let mut users = self.users.lock().unwrap_or_else(|p| p.into_inner());
            let n = users.entry(name.to_string()).or_insert(1);
            *n = n.saturating_sub(1);
            *n == 0
        };
        if last {
            let r = self.running.lock().unwrap_or_else(|p| p.into_inner()).remove(name);
            if let Some(r) = r {
                self.stop_one(name, r);
            }
        }
    }

    fn stop_one(&self, _name: &str, mut r: Running) {
        // Interrupted: the run must end within a second, and a service's data is thrown away
        // with its directory, so it gets SIGTERM and a short grace, not its stop command.
        let interrupted = super::process::interrupted();
        if let Some(stop) = r.stop.as_ref().filter(|_| !interrupted) {
            let cmd = render(stop, |k| r.vars.get(k).cloned()).unwrap_or_default();
            run_with_timeout(&cmd, &r.env, &self.root, Duration::from_secs(15));
        }
        let pid = r.child.id();
        kill_group(pid, libc::SIGTERM);
        let grace = if interrupted { super::process::INTERRUPT_GRACE } else { Duration::from_secs(10) };
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = r.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        kill_group(pid, libc::SIGKILL);
        let _ = r.child.wait();
        let _ = std::fs::remove_dir_all(&r.dir);
    }

    /// The port a running service listens on (for the sandbox's network rule).
    pub fn port_of(&self, name: &str) -> Option<u16> {
        let running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        running.get(name).and_then(|r| r.vars.get("port")).and_then(|p| p.parse().ok())
    }

    /// Stop everything still running (end of run, failure, Ctrl-C).
    pub fn stop_all(&self) {
        let all: Vec<(String, Running)> = self.running.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (name, r) in all {
            self.stop_one(&name, r);
        }
    }
}

impl Drop for Services<'_> {
    fn drop(&mut self) {
        self.stop_all();
    }
}
