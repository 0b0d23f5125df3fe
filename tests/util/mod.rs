//! A test builder: a temporary project with files and a pipeline, and a way to run cairn in it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub struct Project {
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(self) -> Run {
        assert_eq!(self.code, 0, "expected success\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    pub fn code(self, want: i32) -> Run {
        assert_eq!(self.code, want, "unexpected exit code\nstdout:\n{}\nstderr:\n{}", self.stdout, self.stderr);
        self
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }
}

pub fn cairn_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cairn"))
}

/// The cairn binary as a command whose environment holds nothing of the developer's or CI's
/// cairn setup: every `CAIRN_*`, `CI` and `GITHUB_*` variable is removed (a test sets what it
/// needs), so a test passes or fails the same on a laptop, in CI and in GitHub Actions.
pub fn cairn() -> Command {
    let mut cmd = Command::new(cairn_bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy();
        if k.starts_with("CAIRN_") || k == "CI" || k.starts_with("GITHUB_") {
            cmd.env_remove(k.as_ref());
        }
    }
    cmd
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

impl Default for Project {
    fn default() -> Self {
        Project::new()
    }
}

impl Project {
    pub fn new() -> Project {
        Project { dir: tempfile::tempdir().expect("tempdir"), env: Vec::new() }
    }

    /// A project in an existing directory.
    pub fn at(dir: tempfile::TempDir) -> Project {
        Project { dir, env: Vec::new() }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn file(self, rel: &str, content: &str) -> Project {
        self.write(rel, content);
        self
    }

    pub fn write(&self, rel: &str, content: &str) {
        let p = self.dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(rel)).unwrap()
    }

    pub fn pipeline(self, content: &str) -> Project {
        self.file("pipelines/test.ron", content)
    }

    pub fn env(mut self, k: &str, v: &str) -> Project {
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn run(&self, args: &[&str]) -> Run {
        self.run_with(args, &[])
    }

    /// Run with extra environment variables for this call only.
    pub fn run_with(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        let mut cmd = self.command(args);
        cmd.envs(extra.iter().copied());
        to_run(cmd.output().expect("run cairn"))
    }

    /// cairn with `args` in this project, with its environment, to spawn.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = cairn();
        cmd.args(args).current_dir(self.dir.path()).env("NO_COLOR", "1");
        cmd.envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        cmd
    }
}

pub fn to_run(out: Output) -> Run {
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Run cairn in the repository itself (for the shipped pipelines).
pub fn in_repo(args: &[&str]) -> Run {
    // A store of its own: tests never read or write the repository's `cache/` (which a
    // sandboxed run of cairn's own pipeline cannot even see).
    let store = tempfile::tempdir().expect("tempdir");
    to_run(
        cairn().args(args).current_dir(repo_root()).env("CAIRN_CACHE_DIR", store.path()).output().expect("run cairn"),
    )
}

/// Is `cmd` on PATH?
pub fn have(cmd: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// Run git in `dir` with a throwaway identity; panics naming the command when it fails.
pub fn git(dir: &Path, args: &[&str]) {
    let ok = Command::new("git")
        .args(["-c", "user.email=t@example.com", "-c", "user.name=t", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap();
    assert!(ok.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&ok.stderr));
}
