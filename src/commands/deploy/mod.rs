//! `cairn deploy`, `deploy resume`, `deploy history`, `approve`, `lock`, `rollback`, `run`.

use super::{load_pipeline, open_store, project_root};
use crate::cli::{DeployArgs, DeployCommand, LockCommand, RemoteEndpoint};
use crate::deploy::ledger::{Ledger, LockInfo, Op, RunRow};
use crate::deploy::{self, DeployError, Runner};
use crate::error::Error;
use crate::exec::process::{self, Console};
use crate::model::Pipeline;
use crate::plan::trigger::{plan_environment, EnvPlan};
use crate::plan::Graph;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

mod approve;
mod history;
mod lock;
mod rollback;
mod start;
mod trigger;

pub use approve::approve;
use history::history;
pub use lock::lock;
pub use rollback::rollback;
use start::resume;
pub use start::start;
pub use trigger::run_trigger;

fn de(e: DeployError) -> Error {
    Error::from(e)
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Io(format!("error: {e}"))
}

/// The deploy ledger: on the remote when one is configured (flags, environment, or the
/// pipeline's `remote`), so every runner shares it; else in the local store.
pub fn open_ledger(args: &RemoteEndpoint, p: &Pipeline, store: &Arc<crate::cache::Store>) -> Result<Ledger, Error> {
    match super::endpoint(args, p) {
        None => Ok(Ledger::Local(store.clone())),
        Some(e) if e.url.starts_with("s3://") => {
            eprintln!(
                "note: deploy approvals, leases and the journal stay in the local store: an s3:// remote can't hold them (serve the bucket with `cairn serve --s3` to share them)"
            );
            Ok(Ledger::Local(store.clone()))
        }
        Some(e) => {
            let r = crate::deploy::ledger::RemoteLedger::new(&e.url, e.token, &e.namespace)
                .map_err(|e| Error::Usage(format!("error: {e}")))?;
            if !r.has_ledger() {
                eprintln!(
                    "note: the remote at {} is a cache without a deploy ledger (not cairn serve): approvals, leases and the journal stay in the local store, unshared",
                    e.url
                );
                return Ok(Ledger::Local(store.clone()));
            }
            Ok(Ledger::Remote(Arc::new(r)))
        }
    }
}

/// The branch: `--branch`, CI's variables, else git.
fn current_branch(arg: &Option<String>, root: &std::path::Path) -> Option<String> {
    arg.clone().or_else(|| std::env::var("GITHUB_REF_NAME").ok().filter(|s| !s.is_empty())).or_else(|| {
        let out = std::process::Command::new("git")
            .args(["rev-parse", "--abbrev-ref", "HEAD"])
            .current_dir(root)
            .output()
            .ok()?;
        let b = String::from_utf8_lossy(&out.stdout).trim().to_string();
        (out.status.success() && !b.is_empty() && b != "HEAD").then_some(b)
    })
}

/// Everything a deploy of `env_name` needs before it starts.
struct Prepared {
    p: Pipeline,
    root: PathBuf,
    ledger: Ledger,
    plan: EnvPlan,
    release: String,
    branch: Option<String>,
}

fn prepare(
    pipeline: &std::path::Path,
    store_arg: &crate::cli::StoreArg,
    ledger: &RemoteEndpoint,
    env_name: &str,
    branch: &Option<String>,
) -> Result<Prepared, Error> {
    let p = load_pipeline(pipeline)?;
    let env = p.environments.get(env_name).ok_or_else(|| {
        let names: Vec<&str> = p.environments.names().collect();
        Error::Usage(format!("error: no environment `{env_name}`\n  hint: {}", crate::model::suggest(env_name, &names)))
    })?;
    let g = Graph::build(&p)?;
    let root = project_root(pipeline);
    let (store, cache_dir) = open_store(store_arg, &root)?;
    let requires = crate::plan::trigger::required_steps(&p, env_name, None);
    let selected = g.closure(&requires)?;
    let prepared = crate::exec::prepare(&p, &g, &selected, &root, &store, &cache_dir, 2)?;
    let states = super::plan::predict(&g, &selected, &prepared, &store);
    let mut keys = BTreeMap::new();
    let mut missing = Vec::new();
    for &i in &selected {
        let n = &g.nodes[i];
        let st = &states[&i];
        if !n.step.cache {
            continue; // never stored, so it can't be checked; it ran in the build that preceded
        }
        match (&st.key, st.hit) {
            (Some(k), true) => {
                keys.insert(n.name.clone(), k.clone());
            }
            _ => missing.push(format!(
                "{} ({})",
                n.name,
                st.reasons.first().map(|r| r.describe()).unwrap_or_else(|| "not built".into())
            )),
        }
    }
    if !missing.is_empty() {
        return Err(Error::GateClosed(format!(
            "error: `{env_name}` requires steps that have not succeeded for their current keys: {}\n  hint: run `cairn build -p {} {}` first",
            missing.join(", "),
            pipeline.display(),
            requires.join(" ")
        )));
    }
    let branch = current_branch(branch, &root);
    let plan = plan_environment(&p, env_name, env, requires, branch.as_deref());
    let release = deploy::release_hash(env_name, &keys, &plan);
    let store = Arc::new(store);
    let ledger = open_ledger(ledger, &p, &store)?;
    Ok(Prepared { p, root, ledger, plan, release, branch })
}

fn runner<'a>(pr: &'a Prepared, env_name: &'a str, console: &'a Console, run_id: &str) -> Result<Runner<'a>, Error> {
    let env = pr.p.environments.get(env_name).expect("checked");
    let secret_env = deploy::env_secrets(&pr.p, env, &pr.root).map_err(de)?;
    let masker = crate::exec::secrets::Masker::new(secret_env.values().map(String::as_str));
    Ok(Runner {
        pipeline: &pr.p,
        env_name,
        env,
        root: pr.root.clone(),
        ledger: pr.ledger.clone(),
        console,
        masker,
        secret_env,
        release: pr.release.clone(),
        run_id: run_id.to_string(),
    })
}

/// Run phases under the lease and record the outcome.
fn execute(pr: &Prepared, r: &Runner, done: &[usize], console: &Console) -> Result<(), Error> {
    let (env_name, run_id) = (r.env_name, r.run_id.as_str());
    let env = r.env;
    let ttl = env.lock_ttl.map(|d| d.0).unwrap_or(std::time::Duration::from_secs(600));
    let lease = deploy::acquire_lease(&pr.ledger, env_name, run_id, &deploy::actor(), ttl, console).map_err(de)?;
    let running =
        Op::RunResult { id: run_id.into(), result: "running".into(), halt_reason: String::new(), finished: false };
    if let Err(e) = pr.ledger.exec(running) {
        lease.release(&pr.ledger);
        return Err(store_err(e));
    }
    console.note(&format!("cairn: deploying release {} to {env_name} (run {run_id})", pr.release));
    let outcome = r.run(&pr.plan, done);
    let (result, halt) = match &outcome {
        Ok(()) => ("succeeded", String::new()),
        Err(h) => ("halted", h.to_string()),
    };
    let masked = r.masker.mask(&halt);
    let finished = Op::RunResult { id: run_id.into(), result: result.into(), halt_reason: masked, finished: true };
    if let Err(e) = pr.ledger.exec(finished) {
        console.note(&format!("warning: the run's result ({result}) was not recorded: {e}"));
    }
    deploy::notify(
        r,
        "finished",
        &format!(
            "{env_name}: release {} {result}{}",
            pr.release,
            if halt.is_empty() { String::new() } else { format!(": {halt}") }
        ),
    );
    lease.release(&pr.ledger);
    match outcome {
        Ok(()) => {
            console.note(&format!("cairn: {env_name} runs release {}", pr.release));
            Ok(())
        }
        Err(deploy::HaltReason::Interrupted) => Err(Error::Interrupted),
        Err(h) => Err(Error::StepFailed(format!(
            "error: deploy of {env_name} halted: {}\n  hint: fix the cause, then `cairn deploy resume {env_name} -p ...` continues where it stopped",
            r.masker.mask(&h.to_string())
        ))),
    }
}

pub fn run(cmd: &DeployCommand) -> Result<(), Error> {
    process::install_signal_handlers();
    let console = Console::new(false);
    match cmd {
        DeployCommand::Start(a) => start(a, &console),
        DeployCommand::Resume(a) => resume(a, &console),
        DeployCommand::History { env, pipeline, store, ledger, json } => {
            history(env, &pipeline.pipeline, store, ledger, *json)
        }
    }
}
