//! The executor seam: where a step's command is handed over to run.
//!
//! The dispatcher decides *what* runs (a miss, its environment, its working directory, its
//! timeout); a [`StepRunner`] decides *how*. [`LocalProcess`] runs it as a child process group
//! on this machine, under the step's sandbox (Landlock and/or tracing) when the job hands it
//! a policy; a remote executor plugs in here without touching the dispatcher.
//! Runners stream output through the [`Console`] they are given and never print otherwise.

use super::process::{self, Console, Outcome};
use super::secrets::Masker;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One command to run for a step.
pub struct StepCommand<'a> {
    /// The step's name (for runners that label or isolate per step).
    pub step: &'a str,
    /// `sh -c` text, placeholders filled.
    pub command: &'a str,
    pub cwd: &'a Path,
    /// Exactly the environment the command gets.
    pub env: &'a BTreeMap<String, String>,
    pub timeout: Option<Duration>,
    /// The `[step]` prefix of its output lines.
    pub prefix: &'a str,
    /// The workspace root and what the step may touch in it; `None`: not sandboxed.
    pub sandbox: Option<(&'a Path, &'a super::sandbox::Policy)>,
}

/// Runs step commands.
pub trait StepRunner: Sync {
    /// Run `cmd` to completion (or timeout, or Ctrl-C), streaming its masked output to
    /// `console`; `Err` only when it could not be started.
    fn run(&self, cmd: &StepCommand, console: &Console, masker: &Masker) -> std::io::Result<Outcome>;
}

/// A child process group on this machine.
pub struct LocalProcess;

impl StepRunner for LocalProcess {
    fn run(&self, cmd: &StepCommand, console: &Console, masker: &Masker) -> std::io::Result<Outcome> {
        match cmd.sandbox {
            None => process::run(cmd.command, cmd.cwd, cmd.env, cmd.timeout, cmd.prefix, console, masker),
            Some((root, policy)) => {
                let ruleset = if policy.enforce {
                    Some(super::sandbox::ruleset(root, policy).map_err(std::io::Error::other)?)
                } else {
                    None
                };
                process::run_sandboxed(
                    cmd.command,
                    cmd.cwd,
                    cmd.env,
                    cmd.timeout,
                    cmd.prefix,
                    console,
                    masker,
                    ruleset,
                    policy.trace,
                )
                .map_err(|e| match e.raw_os_error() {
                    // The kernel allows one seccomp listener per process tree.
                    Some(libc::EBUSY) if policy.trace => std::io::Error::other(
                        "report mode cannot trace here: this process is already traced (a `cairn build --sandbox report` inside a traced step); run it with --sandbox enforce",
                    ),
                    _ => e,
                })
            }
        }
    }
}
