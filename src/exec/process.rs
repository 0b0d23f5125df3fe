//! Running one command: its own process group, a clean environment, live output with a step
//! prefix (masked), capture for the store, a timeout, and Ctrl-C.

use super::secrets::Masker;
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a command gets to exit after SIGTERM when the run is interrupted, before SIGKILL.
pub const INTERRUPT_GRACE: Duration = Duration::from_millis(500);

pub use crate::interrupt::{install_signal_handlers, interrupted, INTERRUPTED};

/// Environment names every step gets from cairn's own environment.
pub const BASE_ENV: &[&str] = &["PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "TERM", "TMPDIR", "SHELL", "TZ"];

/// The environment every command cairn runs starts from: [`BASE_ENV`] and the `extra` names
/// (a step's `pass_env`), with the values cairn itself has.
pub fn base_env<'a>(extra: impl IntoIterator<Item = &'a str>) -> BTreeMap<String, String> {
    BASE_ENV.iter().copied().chain(extra).filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect()
}

/// Where live output goes. Lines are written whole, so concurrent steps don't interleave
/// within a line.
pub struct Console {
    lock: Mutex<()>,
    pub quiet: bool,
    /// Send steps' standard output to stderr too (when stdout carries JSON).
    pub all_to_stderr: bool,
    /// On a terminal (and not in CI), progress is one status line redrawn under the output.
    tty: bool,
    status: Mutex<String>,
}

impl Console {
    pub fn new(quiet: bool) -> Console {
        use std::io::IsTerminal;
        let tty = std::io::stderr().is_terminal()
            && std::env::var_os("CI").is_none()
            && std::env::var_os("TERM").is_some_and(|t| t != "dumb");
        Console { lock: Mutex::new(()), quiet, all_to_stderr: false, tty, status: Mutex::new(String::new()) }
    }

    /// Clear the status line (terminal only); call with the lock held.
    fn clear_status(&self, err: &mut dyn Write) {
        if self.tty && !self.status.lock().unwrap_or_else(|p| p.into_inner()).is_empty() {
            let _ = write!(err, "\r\x1b[2K");
        }
    }

    fn redraw_status(&self, err: &mut dyn Write) {
        if self.tty {
            let st = self.status.lock().unwrap_or_else(|p| p.into_inner());
            if !st.is_empty() {
                let _ = write!(err, "\x1b[2m{st}\x1b[0m");
                let _ = err.flush();
            }
        }
    }

    pub fn line(&self, prefix: &str, text: &str, to_stderr: bool) {
        if self.quiet {
            return;
        }
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        self.clear_status(&mut err);
        if to_stderr || self.all_to_stderr {
            let _ = writeln!(err, "{prefix} {text}");
        } else {
            let _ = err.flush();
            let _ = writeln!(std::io::stdout().lock(), "{prefix} {text}");
            let _ = std::io::stdout().flush();
        }
        self.redraw_status(&mut err);
    }

    /// Progress: a redrawn status line on a terminal, plain lines elsewhere (suppressed with
    /// `--quiet`).
    pub fn progress(&self, text: &str) {
        if self.quiet {
            return;
        }
        if self.tty {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let mut err = std::io::stderr().lock();
            self.clear_status(&mut err);
            *self.status.lock().unwrap_or_else(|p| p.into_inner()) = text.to_string();
            self.redraw_status(&mut err);
        } else {
            self.note(text);
        }
    }

    /// Remove the status line (end of run).
    pub fn finish(&self) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        self.clear_status(&mut err);
        self.status.lock().unwrap_or_else(|p| p.into_inner()).clear();
        let _ = err.flush();
    }

    pub fn note(&self, text: &str) {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let mut err = std::io::stderr().lock();
        self.clear_status(&mut err);
        let _ = writeln!(err, "{text}");
        self.redraw_status(&mut err);
    }
}

/// Run `sh -c command` in `cwd` (inheriting cairn's environment) and capture its output, in
/// its own process group; Ctrl-C kills the group and returns `Err(Interrupted)`. For short
/// commands whose output cairn reads (toolchain probes, secret providers).
pub fn capture(command: &str, cwd: &Path, inherit_stderr: bool) -> std::io::Result<std::process::Output> {
    capture_inner(command, cwd, inherit_stderr, None).map(|(o, _)| o)
}

/// [`capture`], traced (see `exec::trace`): also what the command's processes opened and
/// executed, absent paths included (toolchain probes are cached on these).
pub fn capture_traced(command: &str, cwd: &Path) -> std::io::Result<(std::process::Output, Vec<super::trace::Access>)> {
    let tracer = super::trace::Tracer::start_with_stats()?;
    capture_inner(command, cwd, false, Some(tracer)).map(|(o, a)| (o, a.unwrap_or_default()))
}

type Captured = (std::process::Output, Option<Vec<super::trace::Access>>);

fn capture_inner(
    command: &str,
    cwd: &Path,
    inherit_stderr: bool,
    mut tracer: Option<super::trace::Tracer>,
) -> std::io::Result<Captured> {
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(cwd).stdin(Stdio::null()).stdout(Stdio::piped()).process_group(0);
    cmd.stderr(if inherit_stderr { Stdio::inherit() } else { Stdio::piped() });
    if let Some(t) = &tracer {
        // SAFETY: the hook only makes system calls (see `Tracer::hook`).
        unsafe {
            cmd.pre_exec(t.hook());
        }
    }
    let spawned = cmd.spawn();
    if let Some(t) = tracer.as_mut() {
        t.spawned();
    }
    let mut child = spawned?;
    let pid = child.id();
    let mut out = child.stdout.take().expect("piped");
    let err = child.stderr.take();
    let output = std::thread::scope(|s| {
        let o = s.spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        let e = s.spawn(move || {
            let mut v = Vec::new();
            if let Some(mut err) = err {
                let _ = err.read_to_end(&mut v);
            }
            v
        });
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if interrupted() {
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait();
                return Err(std::io::Error::new(std::io::ErrorKind::Interrupted, "interrupted"));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        kill_group(pid, libc::SIGKILL); // nothing it started may hold the pipes open
        Ok(std::process::Output { status, stdout: o.join().unwrap_or_default(), stderr: e.join().unwrap_or_default() })
    })?;
    Ok((output, tracer.map(super::trace::Tracer::finish)))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut,
    Interrupted,
}

#[derive(Debug)]
pub struct Outcome {
    pub exit: Exit,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub duration: Duration,
    /// What the command's processes opened and executed, when it was traced (report mode).
    pub accesses: Option<Vec<super::trace::Access>>,
}

impl Outcome {
    pub fn success(&self) -> bool {
        self.exit == Exit::Code(0)
    }
}

const CAPTURE_LIMIT: usize = 64 << 20;

/// After the command exits, how long its output is still read while it keeps coming: a
/// process it left behind (a daemon, `sleep 1000 &`) can hold the pipe open for ever, and
/// the step is over all the same.
const DRAIN_QUIET: Duration = Duration::from_millis(200);
const DRAIN_MAX: Duration = Duration::from_secs(2);

/// When the command itself ended (milliseconds after `since`), shared with the readers.
struct Ended {
    since: Instant,
    at_ms: std::sync::atomic::AtomicU64,
}

impl Ended {
    const NOT_YET: u64 = u64::MAX;
    fn new() -> Ended {
        Ended { since: Instant::now(), at_ms: std::sync::atomic::AtomicU64::new(Self::NOT_YET) }
    }
    fn mark(&self) {
        self.at_ms.store(self.since.elapsed().as_millis() as u64, Ordering::SeqCst);
    }
    /// Time since the command ended, if it has.
    fn ago(&self) -> Option<Duration> {
        let at = self.at_ms.load(Ordering::SeqCst);
        (at != Self::NOT_YET).then(|| self.since.elapsed().saturating_sub(Duration::from_millis(at)))
    }
}

/// Read a command's stream line by line until it closes, or until the command has ended
/// and the stream has been quiet for [`DRAIN_QUIET`] (at most [`DRAIN_MAX`] after the end).
fn pump(
    mut reader: impl Read + std::os::fd::AsRawFd,
    ended: &Ended,
    prefix: &str,
    to_stderr: bool,
    console: &Console,
    masker: &Masker,
) -> Vec<u8> {
    let mut captured = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let emit = |line: &[u8], captured: &mut Vec<u8>| {
        let text = String::from_utf8_lossy(line);
        let masked = masker.mask(text.trim_end_matches(['\n', '\r']));
        console.line(prefix, &masked, to_stderr);
        if captured.len() < CAPTURE_LIMIT {
            captured.extend_from_slice(masked.as_bytes());
            captured.push(b'\n');
        }
    };
    let fd = reader.as_raw_fd();
    loop {
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd for a descriptor we own, for the length we pass.
        let r = unsafe { libc::poll(&mut pfd, 1, 100) };
        if r == 0 || (r < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted) {
            if ended.ago().is_some_and(|t| t >= DRAIN_QUIET) {
                break;
            }
            continue;
        }
        if r < 0 {
            break;
        }
        match reader.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                pending.extend_from_slice(&buf[..n]);
                while let Some(i) = memchr::memchr(b'\n', &pending) {
                    emit(&pending[..=i], &mut captured);
                    pending.drain(..=i);
                }
            }
        }
        if ended.ago().is_some_and(|t| t >= DRAIN_MAX) {
            break;
        }
    }
    if !pending.is_empty() {
        emit(&pending, &mut captured);
    }
    captured
}

fn kill_group(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) with a negative pid signals the process group we created.
    unsafe {
        libc::kill(-(pid as libc::pid_t), signal);
    }
}

/// Run `sh -c command` in `cwd` with exactly `env`.
pub fn run(
    command: &str,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    prefix: &str,
    console: &Console,
    masker: &Masker,
) -> std::io::Result<Outcome> {
    run_opts(command, cwd, env, timeout, prefix, console, masker, true)
}

/// [`run`] under a Landlock ruleset (see `exec::sandbox`) and/or traced (see `exec::trace`),
/// both applied in the child just before the command runs.
#[allow(clippy::too_many_arguments)]
pub fn run_sandboxed(
    command: &str,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    prefix: &str,
    console: &Console,
    masker: &Masker,
    ruleset: Option<landlock::RulesetCreated>,
    trace: bool,
) -> std::io::Result<Outcome> {
    let tracer = if trace { Some(super::trace::Tracer::start()?) } else { None };
    let hook = ruleset.map(|r| {
        let mut slot = Some(r);
        Box::new(move || slot.take().map_or(Ok(()), super::sandbox::restrict)) as PreExec
    });
    run_inner(command, cwd, env, timeout, prefix, console, masker, true, hook, tracer)
}

/// A hook run in the child between fork and exec.
type PreExec = Box<dyn FnMut() -> std::io::Result<()> + Send + Sync>;

/// [`run`], choosing whether Ctrl-C stops the command (`cancellable`) or lets it finish: a
/// deploy phase is never cut off midway; the deploy halts after it.
#[allow(clippy::too_many_arguments)]
pub fn run_opts(
    command: &str,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    prefix: &str,
    console: &Console,
    masker: &Masker,
    cancellable: bool,
) -> std::io::Result<Outcome> {
    run_inner(command, cwd, env, timeout, prefix, console, masker, cancellable, None, None)
}

#[allow(clippy::too_many_arguments)]
fn run_inner(
    command: &str,
    cwd: &Path,
    env: &BTreeMap<String, String>,
    timeout: Option<Duration>,
    prefix: &str,
    console: &Console,
    masker: &Masker,
    cancellable: bool,
    pre_exec: Option<PreExec>,
    mut tracer: Option<super::trace::Tracer>,
) -> std::io::Result<Outcome> {
    let started = Instant::now();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(command)
        .current_dir(cwd)
        .env_clear()
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    // SAFETY: prctl is async-signal-safe; if cairn dies (even by SIGKILL) its direct child is
    // killed too instead of running on unobserved.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
        if let Some(hook) = pre_exec {
            // The ruleset was built (paths opened, memory allocated) in the parent; the hook
            // only makes two system calls.
            cmd.pre_exec(hook);
        }
        // Traced: the filter goes on last, after Landlock (see `Tracer::hook`).
        if let Some(t) = &tracer {
            cmd.pre_exec(t.hook());
        }
    }
    let spawned = cmd.spawn();
    if let Some(t) = tracer.as_mut() {
        t.spawned();
    }
    let mut child = spawned?;
    let pid = child.id();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let ended = Ended::new();
    let (stdout, stderr, exit) = std::thread::scope(|s| {
        let o = s.spawn(|| pump(out, &ended, prefix, false, console, masker));
        let e = s.spawn(|| pump(err, &ended, prefix, true, console, masker));
        let deadline = timeout.map(|t| started + t);
        let exit = loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    use std::os::unix::process::ExitStatusExt;
                    break match (status.code(), status.signal()) {
                        (Some(c), _) => Exit::Code(c),
                        (None, Some(sig)) => Exit::Signal(sig),
                        _ => Exit::Code(-1),
                    };
                }
                Ok(None) => {}
                Err(_) => break Exit::Code(-1),
            }
            let why = if cancellable && interrupted() {
                Some(Exit::Interrupted)
            } else if deadline.is_some_and(|d| Instant::now() >= d) {
                Some(Exit::TimedOut)
            } else {
                None
            };
            if let Some(why) = why {
                kill_group(pid, libc::SIGTERM);
                // Ctrl-C must end the run within a second; a timeout can wait longer for a
                // command to clean up after itself.
                let grace =
                    Instant::now() + if why == Exit::Interrupted { INTERRUPT_GRACE } else { Duration::from_secs(3) };
                while Instant::now() < grace {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                kill_group(pid, libc::SIGKILL);
                let _ = child.wait();
                break why;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        // Make sure nothing of the group survives to hold the pipes open (a process that left
        // the group is not waited for: the readers stop once the pipes go quiet).
        kill_group(pid, libc::SIGKILL);
        ended.mark();
        (o.join().unwrap_or_default(), e.join().unwrap_or_default(), exit)
    });
    let duration = started.elapsed();
    Ok(Outcome { exit, stdout, stderr, duration, accesses: tracer.map(super::trace::Tracer::finish) })
}
