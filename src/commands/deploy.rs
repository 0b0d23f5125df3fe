//! `cairn deploy`, `deploy resume`, `deploy history`, `approve`, `lock`, `rollback`, `run`.

use super::{load_pipeline, open_store, project_root};
use crate::cli::{DeployArgs, DeployCommand, LockCommand};
use crate::deploy::{self, DeployError, Runner};
use crate::error::Error;
use crate::exec::process::{self, Console};
use crate::model::Pipeline;
use crate::plan::trigger::{plan_environment, EnvPlan};
use crate::plan::Graph;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

fn de(e: DeployError) -> Error {
    match e {
        DeployError::Gate(m) => Error::GateClosed(m),
        DeployError::Halted(m) => Error::StepFailed(m),
        DeployError::Usage(m) => Error::Usage(m),
        DeployError::Store(m) => Error::Io(format!("error: {m}")),
    }
}

fn store_err(e: impl std::fmt::Display) -> Error {
    Error::Io(format!("error: {e}"))
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

/// Steps an environment requires: its `requires`, else the steps of the triggers deploying
/// to it, else every step.
fn required_steps(p: &Pipeline, env_name: &str) -> Vec<String> {
    let env = p.environments.get(env_name).expect("checked");
    if !env.requires.is_empty() {
        return env.requires.clone();
    }
    let mut out: Vec<String> = Vec::new();
    for t in &p.triggers {
        let deploys = t.deploy.iter().any(|r| {
            r.environment == env_name
                || crate::model::placeholders(&r.environment).iter().any(|ph| {
                    ph.name.strip_prefix("inputs.").and_then(|i| t.inputs.get(i)).is_some_and(
                        |i| matches!(&i.kind, crate::model::InputType::Choice(o) if o.iter().any(|x| x == env_name)),
                    )
                })
        });
        if deploys {
            out.extend(t.run.iter().cloned());
        }
    }
    if out.is_empty() {
        out = p.steps.names().map(String::from).collect();
    }
    out.sort();
    out.dedup();
    out
}

/// Everything a deploy of `env_name` needs before it starts.
struct Prepared {
    p: Pipeline,
    root: PathBuf,
    store: Arc<crate::cache::Store>,
    plan: EnvPlan,
    release: String,
    branch: Option<String>,
}

fn prepare(
    pipeline: &std::path::Path,
    store_arg: &crate::cli::StoreArg,
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
    let requires = required_steps(&p, env_name);
    let selected = g.closure(&requires)?;
    let prepared = crate::exec::prepare(&p, &g, &selected, &root, &store, &cache_dir, 2)
        .map_err(|e| Error::Usage(format!("error: {e}")))?;
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
    Ok(Prepared { p, root, store: Arc::new(store), plan, release, branch })
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
        store: pr.store.clone(),
        console,
        masker,
        secret_env,
        release: pr.release.clone(),
        run_id: run_id.to_string(),
    })
}

/// Run phases under the lease and record the outcome.
fn execute(pr: &Prepared, env_name: &str, run_id: &str, done: &[usize], console: &Console) -> Result<(), Error> {
    let env = pr.p.environments.get(env_name).expect("checked");
    let r = runner(pr, env_name, console, run_id)?;
    let ttl = env.lock_ttl.map(|d| d.0).unwrap_or(std::time::Duration::from_secs(600));
    let lease = deploy::acquire_lease(&pr.store, env_name, run_id, &deploy::actor(), ttl, console).map_err(de)?;
    pr.store
        .with_index(|i| i.exec("UPDATE deploy_runs SET result = 'running' WHERE id = ?1", &[&run_id]))
        .map_err(store_err)?;
    console.note(&format!("cairn: deploying release {} to {env_name} (run {run_id})", pr.release));
    let outcome = r.run(&pr.plan, done);
    let (result, halt) = match &outcome {
        Ok(()) => ("succeeded", String::new()),
        Err(h) => ("halted", h.to_string()),
    };
    let _ = pr.store.with_index(|i| {
        i.exec(
            "UPDATE deploy_runs SET result = ?2, halt_reason = ?3, finished_at = ?4 WHERE id = ?1",
            &[&run_id, &result, &halt, &deploy::now_ms()],
        )
    });
    deploy::notify(
        &r,
        "finished",
        &format!(
            "{env_name}: release {} {result}{}",
            pr.release,
            if halt.is_empty() { String::new() } else { format!(": {halt}") }
        ),
    );
    lease.release(&pr.store);
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
        DeployCommand::History { env, pipeline, store } => history(env, &pipeline.pipeline, store),
    }
}

pub fn start(a: &DeployArgs, console: &Console) -> Result<(), Error> {
    let pr = prepare(&a.pipeline.pipeline, &a.store, &a.env, &a.branch)?;
    let env = pr.p.environments.get(&a.env).expect("checked");
    let who = deploy::actor();
    let now_unix = deploy::now_ms() / 1000;
    if let Some(token) = &a.approval {
        let signed = deploy::accept_signed_approval(&pr.store, &a.env, env, token).map_err(de)?;
        console.note(&format!("cairn: signed approval of release {} by {} accepted", signed.release, signed.approver));
    }
    let gates = deploy::GateInput {
        env_name: &a.env,
        env,
        release: &pr.release,
        branch: pr.branch.as_deref(),
        actor: &who,
        now_unix,
        break_glass: a.break_glass.as_deref(),
    };
    let notes = deploy::check_gates(&pr.store, &gates).map_err(de)?;
    for n in &notes {
        console.note(&format!("cairn: gate: {n}"));
    }
    let run_id = format!("{}-{}", deploy::now_ms(), std::process::id());
    let plan_json = serde_json::to_string(&pr.plan).expect("plans serialise");
    let break_glass = notes.iter().find(|n| n.starts_with("break-glass")).cloned().unwrap_or_default();
    pr.store
        .with_index(|i| {
            i.exec(
                "INSERT INTO deploy_runs (id, env, release, who, started_at, result, plan, break_glass) VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7)",
                &[&run_id, &a.env, &pr.release, &who, &deploy::now_ms(), &plan_json, &break_glass],
            )?;
            if !break_glass.is_empty() {
                i.exec(
                    "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'break-glass', ?4)",
                    &[&deploy::now_ms(), &a.env, &who, &break_glass],
                )?;
            }
            Ok::<(), crate::cache::index::IndexError>(())
        })
        .map_err(store_err)?;
    execute(&pr, &a.env, &run_id, &[], console)
}

fn resume(a: &DeployArgs, console: &Console) -> Result<(), Error> {
    let pr = prepare(&a.pipeline.pipeline, &a.store, &a.env, &a.branch)?;
    let rows = pr
        .store
        .with_index(|i| {
            i.rows(
                "SELECT id, release FROM deploy_runs WHERE env = ?1 AND result IN ('halted', 'running', 'queued') ORDER BY started_at DESC LIMIT 1",
                &[&a.env],
            )
        })
        .map_err(store_err)?;
    let Some(row) = rows.first() else {
        return Err(Error::Usage(format!(
            "error: no unfinished deploy of `{}` to resume\n  hint: `cairn deploy history {}` lists runs",
            a.env, a.env
        )));
    };
    let (run_id, release) = (row[0].clone(), row[1].clone());
    if release != pr.release {
        return Err(Error::GateClosed(format!(
            "error: the unfinished run deployed release {release}, but the current release is {}\n  hint: start a new deploy with `cairn deploy {}` (its gates apply)",
            pr.release, a.env
        )));
    }
    let done: Vec<usize> = pr
        .store
        .with_index(|i| {
            i.rows(
                "SELECT DISTINCT phase FROM deploy_journal WHERE run_id = ?1 AND state IN ('done', 'skipped')",
                &[&run_id],
            )
        })
        .map_err(store_err)?
        .iter()
        .filter_map(|r| r[0].parse().ok())
        .collect();
    console.note(&format!("cairn: resuming run {run_id} at its first unfinished phase ({} done)", done.len()));
    execute(&pr, &a.env, &run_id, &done, console)
}

fn history(env: &str, pipeline: &std::path::Path, store: &crate::cli::StoreArg) -> Result<(), Error> {
    let root = project_root(pipeline);
    let (store, _) = open_store(store, &root)?;
    let rows = store
        .with_index(|i| {
            i.rows(
                "SELECT id, who, release, started_at, result, COALESCE(halt_reason, ''), COALESCE(break_glass, '') FROM deploy_runs WHERE env = ?1 ORDER BY started_at DESC",
                &[&env],
            )
        })
        .map_err(store_err)?;
    if rows.is_empty() {
        println!("no deploys of {env} yet");
    }
    for r in rows {
        println!(
            "{}  {:<10} release {}  by {:<12} {}{}{}",
            r[0],
            r[4],
            r[2],
            r[1],
            r[3],
            if r[5].is_empty() { String::new() } else { format!("  halt: {}", r[5]) },
            if r[6].is_empty() { String::new() } else { format!("  [{}]", r[6]) }
        );
    }
    Ok(())
}

pub fn approve(a: &crate::cli::ApproveArgs) -> Result<(), Error> {
    let pr = prepare(&a.pipeline.pipeline, &a.store, &a.env, &None)?;
    let env = pr.p.environments.get(&a.env).expect("checked");
    let Some(gate) = &env.approval else {
        return Err(Error::Usage(format!("error: `{}` needs no approval", a.env)));
    };
    let release = a.release.clone().unwrap_or_else(|| pr.release.clone());
    if !gate.reviewers.contains(&a.by) {
        return Err(Error::GateClosed(format!(
            "error: {} is not a reviewer of `{}` ({})",
            a.by,
            a.env,
            gate.reviewers.join(", ")
        )));
    }
    let ttl = match &a.expires {
        Some(s) => crate::model::Dur::parse(s).map_err(|e| Error::Usage(format!("error: --expires: {e}")))?.0,
        None => gate.expires.map(|d| d.0).unwrap_or(std::time::Duration::from_secs(24 * 3600)),
    };
    let now = deploy::now_ms();
    let comment = a.comment.clone().unwrap_or_default();
    if let Some(keyfile) = &a.sign {
        let text = std::fs::read_to_string(keyfile)
            .map_err(|e| Error::Usage(format!("error: cannot read the signing key {}: {e}", keyfile.display())))?;
        let secret = crate::keys::Secret::parse(&text)
            .map_err(|e| Error::Usage(format!("error: {}: {e}", keyfile.display())))?;
        if secret.name != a.by {
            return Err(Error::Usage(format!(
                "error: the key {} belongs to `{}`, not to {}\n  hint: sign with your own key, or pass --by {}",
                keyfile.display(),
                secret.name,
                a.by,
                secret.name
            )));
        }
        let approval = deploy::SignedApproval {
            env: a.env.clone(),
            release: release.clone(),
            approver: a.by.clone(),
            comment,
            expires_at: now + ttl.as_millis() as i64,
        };
        let token = approval.sign(&secret);
        println!("{token}");
        eprintln!(
            "signed approval of release {release} of {} by {} (valid {}); in CI: cairn deploy {} --approval TOKEN (or CAIRN_APPROVAL)",
            a.env,
            a.by,
            crate::model::Dur(ttl),
            a.env
        );
        return Ok(());
    }
    if !gate.keys.is_empty() {
        return Err(Error::GateClosed(format!(
            "error: `{}` takes only signed approvals\n  hint: cairn approve {} --by {} --sign KEYFILE (a key from `cairn keys generate {}`, whose public half is in approval.keys)",
            a.env, a.env, a.by, a.by
        )));
    }
    pr.store
        .with_index(|i| {
            i.exec(
                "INSERT INTO approvals (env, release, approver, comment, at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                &[&a.env, &release, &a.by, &comment, &now, &(now + ttl.as_millis() as i64)],
            )?;
            i.exec(
                "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'approve', ?4)",
                &[&now, &a.env, &a.by, &format!("release {release}")],
            )
        })
        .map_err(store_err)?;
    println!("approved release {release} of {} by {} (valid {})", a.env, a.by, crate::model::Dur(ttl));
    Ok(())
}

pub fn lock(cmd: &LockCommand) -> Result<(), Error> {
    let (env, pipeline, store_arg) = match cmd {
        LockCommand::Status { env, pipeline, store } => (env, pipeline, store),
        LockCommand::Release { env, pipeline, store, .. } => (env, pipeline, store),
    };
    let root = project_root(&pipeline.pipeline);
    let (store, _) = open_store(store_arg, &root)?;
    let holder = store
        .with_index(|i| {
            i.rows("SELECT holder, run_id, host, pid, acquired_at, expires_at FROM leases WHERE env = ?1", &[env])
        })
        .map_err(store_err)?;
    match cmd {
        LockCommand::Status { .. } => {
            match holder.first() {
                Some(h) if h[5].parse::<i64>().unwrap_or(0) > deploy::now_ms() => println!(
                    "{env}: held by {} (run {}, {} pid {}), since {}, lease expires at {}",
                    h[0], h[1], h[2], h[3], h[4], h[5]
                ),
                Some(h) => println!("{env}: free (the last lease, run {}, expired at {})", h[1], h[5]),
                None => println!("{env}: free"),
            }
            let waiting = store
                .with_index(|i| i.rows("SELECT run_id FROM lease_queue WHERE env = ?1 ORDER BY since", &[env]))
                .map_err(store_err)?;
            for (n, w) in waiting.iter().enumerate() {
                println!("  waiting #{}: run {}", n + 1, w[0]);
            }
            Ok(())
        }
        LockCommand::Release { force, reason, .. } => {
            if !force {
                return Err(Error::Usage(
                    "error: releasing another deploy's lease needs --force (and --reason)".into(),
                ));
            }
            let reason = reason
                .clone()
                .filter(|r| !r.trim().is_empty())
                .ok_or_else(|| Error::Usage("error: --force needs --reason \"...\" (it is recorded)".into()))?;
            let who = deploy::actor();
            store
                .with_index(|i| {
                    i.exec("DELETE FROM leases WHERE env = ?1", &[env])?;
                    i.exec(
                        "INSERT INTO audit (at, env, who, action, detail) VALUES (?1, ?2, ?3, 'lock-release-force', ?4)",
                        &[&deploy::now_ms(), env, &who, &format!("{reason} (was {})", holder.first().map(|h| h[1].clone()).unwrap_or_default())],
                    )
                })
                .map_err(store_err)?;
            println!("released the lease of {env} (recorded in the audit log)");
            Ok(())
        }
    }
}

pub fn rollback(a: &crate::cli::RollbackArgs) -> Result<(), Error> {
    process::install_signal_handlers();
    let p = load_pipeline(&a.pipeline.pipeline)?;
    let env = p.environments.get(&a.env).ok_or_else(|| Error::Usage(format!("error: no environment `{}`", a.env)))?;
    let Some(rb) = &env.rollback else {
        return Err(Error::Usage(format!("error: `{}` has no rollback command", a.env)));
    };
    let root = project_root(&a.pipeline.pipeline);
    let (store, _) = open_store(&a.store, &root)?;
    let store = Arc::new(store);
    let console = Console::new(false);
    let target = a.to.clone().unwrap_or_else(|| "previous".into());
    let secret_env = deploy::env_secrets(&p, env, &root).map_err(de)?;
    let masker = crate::exec::secrets::Masker::new(secret_env.values().map(String::as_str));
    let run_id = format!("{}-{}", deploy::now_ms(), std::process::id());
    let r = Runner {
        pipeline: &p,
        env_name: &a.env,
        env,
        root: root.clone(),
        store: store.clone(),
        console: &console,
        masker,
        secret_env,
        release: target.clone(),
        run_id: run_id.clone(),
    };
    let ttl = env.lock_ttl.map(|d| d.0).unwrap_or(std::time::Duration::from_secs(600));
    let lease = deploy::acquire_lease(&store, &a.env, &run_id, &deploy::actor(), ttl, &console).map_err(de)?;
    let vars = crate::plan::trigger::env_vars(&p, &a.env, env);
    let regions: Vec<Option<&str>> =
        if env.regions.is_empty() { vec![None] } else { env.regions.iter().rev().map(|r| Some(r.as_str())).collect() };
    let mut failed = None;
    for region in regions {
        let cmd = crate::plan::trigger::render_env(rb, &vars, region, &target);
        let label = region.unwrap_or("rollback");
        console.note(&format!("[{label}] $ {}", r.masker.mask(&cmd)));
        let mut env_cmd = process::base_env([]);
        env_cmd.extend(r.secret_env.clone());
        let out = process::run(
            &cmd,
            &root,
            &env_cmd,
            Some(std::time::Duration::from_secs(900)),
            &format!("[{label}]"),
            &console,
            &r.masker,
        );
        if !matches!(out.as_ref().map(|o| o.success()), Ok(true)) {
            failed = Some(label.to_string());
            break;
        }
        if let Some(reg) = region {
            let _ = store
                .with_index(|i| i.exec("DELETE FROM region_state WHERE env = ?1 AND region = ?2", &[&a.env, &reg]));
        }
    }
    let result = if failed.is_some() { "rollback-failed" } else { "rolled-back" };
    let _ = store.with_index(|i| {
        i.exec(
            "INSERT INTO deploy_runs (id, env, release, who, started_at, finished_at, result, plan) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6, '{}')",
            &[&run_id, &a.env, &target, &deploy::actor(), &deploy::now_ms(), &result],
        )
    });
    deploy::notify(&r, "rolled-back", &format!("{}: rolled back to {target}", a.env));
    lease.release(&store);
    match failed {
        None => Ok(()),
        Some(region) => Err(Error::StepFailed(format!("error: rollback failed in {region}"))),
    }
}

/// `cairn run`: what the workflow does for a trigger: build its steps, then deploy.
pub fn run_trigger(a: &crate::cli::RunArgs) -> Result<(), Error> {
    let p = load_pipeline(&a.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    let req = crate::plan::TriggerRequest { event: a.event.into(), branch: a.branch.clone(), inputs: BTreeMap::new() };
    let plan = crate::plan::plan_trigger(&p, &g, &req)?;
    if plan.trigger.is_none() {
        println!("no trigger matches {}: nothing to do", a.event_name());
        return Ok(());
    }
    let steps: Vec<String> = plan.steps.iter().map(|&i| g.nodes[i].name.clone()).collect();
    let build = crate::cli::BuildArgs {
        pipeline: a.pipeline.clone(),
        store: a.store.clone(),
        steps,
        jobs: None,
        keep_going: false,
        force: vec![],
        quiet: false,
        summary: crate::cli::SummaryFormat::Table,
        summary_file: None,
        remote: a.remote.clone(),
    };
    super::build::run(&build)?;
    let console = Console::new(false);
    for e in &plan.environments {
        let d = DeployArgs {
            env: e.name.clone(),
            pipeline: a.pipeline.clone(),
            store: a.store.clone(),
            branch: a.branch.clone(),
            break_glass: a.break_glass.clone(),
            approval: a.approval.clone(),
        };
        start(&d, &console)?;
    }
    Ok(())
}
