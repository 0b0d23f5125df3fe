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

pub fn start(a: &DeployArgs, console: &Console) -> Result<(), Error> {
    let pr = prepare(&a.pipeline.pipeline, &a.store, &a.ledger, &a.env, &a.branch)?;
    let env = pr.p.environments.get(&a.env).expect("checked");
    let who = deploy::actor();
    let run_id = format!("{}-{}", deploy::now_ms(), std::process::id());
    let r = runner(&pr, &a.env, console, &run_id)?;
    if pr.ledger.is_shared() {
        console.note(&format!("cairn: deploy state: {}", pr.ledger.describe()));
    }
    let now_unix = deploy::now_ms() / 1000;
    if let Some(token) = &a.approval {
        let signed = deploy::accept_signed_approval(&pr.ledger, &a.env, env, token).map_err(de)?;
        console.note(&format!("cairn: signed approval of release {} by {} accepted", signed.release, signed.approver));
        let text = format!("{}: release {} approved by {} (signed)", a.env, signed.release, signed.approver);
        deploy::notify(&r, "approved", &text);
    }
    if interactive() {
        if let Some(reviewer) = prompt_for_approval(&pr, &a.env, &who, console)? {
            deploy::notify(&r, "approved", &format!("{}: release {} approved by {reviewer}", a.env, pr.release));
        }
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
    let notes = match deploy::check_gates(&pr.ledger, &gates) {
        Ok(notes) => notes,
        Err(e) => {
            let awaiting = deploy::branch_allowed(env, pr.branch.as_deref())
                && env.approval.is_some()
                && matches!(deploy::approval_state(&pr.ledger, &a.env, env, &pr.release, &who), Ok(Err(_)));
            if awaiting {
                let text = format!("{}: release {} by {who} awaits an approval", a.env, pr.release);
                deploy::notify(&r, "awaiting-approval", &text);
            }
            return Err(de(e));
        }
    };
    for n in &notes {
        console.note(&format!("cairn: gate: {n}"));
    }
    let plan_json = serde_json::to_string(&pr.plan).expect("plans serialise");
    let break_glass = notes.iter().find(|n| n.starts_with("break-glass")).cloned().unwrap_or_default();
    pr.ledger
        .exec(Op::RunStart {
            id: run_id.clone(),
            env: a.env.clone(),
            release: pr.release.clone(),
            who,
            plan: plan_json,
            break_glass,
        })
        .map_err(store_err)?;
    deploy::notify(&r, "queued", &format!("{}: release {} queued by {}", a.env, pr.release, deploy::actor()));
    execute(&pr, &r, &[], console)
}

/// A person at a terminal (not CI): approvals can be asked for at the deploy.
fn interactive() -> bool {
    use std::io::IsTerminal;
    std::io::stdin().is_terminal() && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
}

/// The approval gate as a prompt: when the release has no valid approval, a reviewer at this
/// terminal may give one (never the deployer, unless the environment allows self-approval).
/// Environments that take only signed approvals are not prompted for. Nothing entered: the
/// gate stays closed and says so.
/// Answers the reviewer who approved, if one did.
fn prompt_for_approval(pr: &Prepared, env_name: &str, who: &str, console: &Console) -> Result<Option<String>, Error> {
    use std::io::{BufRead, Write};
    let env = pr.p.environments.get(env_name).expect("checked");
    let Some(gate) = &env.approval else { return Ok(None) };
    if !gate.keys.is_empty() || !deploy::branch_allowed(env, pr.branch.as_deref()) {
        return Ok(None);
    }
    let Err(why) = deploy::approval_state(&pr.ledger, env_name, env, &pr.release, who).map_err(de)? else {
        return Ok(None);
    };
    let eligible: Vec<&String> = gate.reviewers.iter().filter(|r| gate.allow_self_approval || *r != who).collect();
    let ask = |q: &str| -> Option<String> {
        eprint!("  {q}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        match std::io::stdin().lock().read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim().to_string()),
            _ => None,
        }
    };
    let regions = if pr.plan.regions.is_empty() { "one deploy".to_string() } else { pr.plan.regions.join(" → ") };
    eprintln!("cairn: `{env_name}` needs an approval of release {} ({why})", pr.release);
    eprintln!(
        "  {} {regions}{}, requested by {who}",
        pr.plan.strategy,
        if pr.plan.migration.is_some() { ", with a migration" } else { "" }
    );
    let names: Vec<&str> = eligible.iter().map(|s| s.as_str()).collect();
    let mut reviewer = None;
    for _ in 0..3 {
        let Some(name) = ask(&format!("reviewer approving ({}), or empty to stop: ", names.join(", "))) else {
            break;
        };
        if name.is_empty() {
            break;
        }
        if names.contains(&name.as_str()) {
            reviewer = Some(name);
            break;
        }
        if name == who && gate.reviewers.contains(&name) {
            eprintln!("  {who} may not approve their own deploy");
        } else {
            eprintln!("  `{name}` is not a reviewer of `{env_name}`");
        }
    }
    let Some(reviewer) = reviewer else { return Ok(None) };
    let confirmed = ask(&format!("approve release {} of {env_name} as {reviewer}? [y/N] ", pr.release))
        .is_some_and(|a| a.eq_ignore_ascii_case("y") || a.eq_ignore_ascii_case("yes"));
    if !confirmed {
        return Ok(None);
    }
    let comment = ask("comment: ").unwrap_or_default();
    let ttl = gate.expires.map(|d| d.0).unwrap_or(std::time::Duration::from_secs(24 * 3600));
    pr.ledger
        .exec(Op::Approve {
            env: env_name.to_string(),
            release: pr.release.clone(),
            approver: reviewer.clone(),
            comment,
            expires_at: deploy::now_ms() + ttl.as_millis() as i64,
            token: String::new(),
            audit: format!("release {}, at the deploy prompt of {who}", pr.release),
        })
        .map_err(store_err)?;
    console.note(&format!("cairn: approved by {reviewer} at the prompt (valid {})", crate::model::Dur(ttl)));
    Ok(Some(reviewer))
}

fn resume(a: &DeployArgs, console: &Console) -> Result<(), Error> {
    let pr = prepare(&a.pipeline.pipeline, &a.store, &a.ledger, &a.env, &a.branch)?;
    let unfinished: Option<(String, String)> =
        pr.ledger.call(Op::Unfinished { env: a.env.clone() }).map_err(store_err)?;
    let Some((run_id, release)) = unfinished else {
        return Err(Error::Usage(format!(
            "error: no unfinished deploy of `{}` to resume\n  hint: `cairn deploy history {}` lists runs",
            a.env, a.env
        )));
    };
    if release != pr.release {
        return Err(Error::GateClosed(format!(
            "error: the unfinished run deployed release {release}, but the current release is {}\n  hint: start a new deploy with `cairn deploy {}` (its gates apply)",
            pr.release, a.env
        )));
    }
    let done: Vec<usize> = pr.ledger.call(Op::DonePhases { run_id: run_id.clone() }).map_err(store_err)?;
    console.note(&format!("cairn: resuming run {run_id} at its first unfinished phase ({} done)", done.len()));
    let r = runner(&pr, &a.env, console, &run_id)?;
    execute(&pr, &r, &done, console)
}

fn history(
    env: &str,
    pipeline: &std::path::Path,
    store: &crate::cli::StoreArg,
    ledger: &RemoteEndpoint,
    json: bool,
) -> Result<(), Error> {
    use crate::report::rfc3339_local;
    let p = load_pipeline(pipeline)?;
    let root = project_root(pipeline);
    let (store, _) = open_store(store, &root)?;
    let ledger = open_ledger(ledger, &p, &Arc::new(store))?;
    let rows: Vec<RunRow> = ledger.call(Op::History { env: env.to_string() }).map_err(store_err)?;
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                let mut v = serde_json::to_value(r).expect("rows serialise");
                v["started"] = rfc3339_local(r.started_at).into();
                for (e, ev) in v["events"].as_array_mut().into_iter().flatten().zip(&r.events) {
                    e["time"] = rfc3339_local(ev.at).into();
                }
                v
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v).expect("json"));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no deploys of {env} yet");
    }
    for r in rows {
        println!(
            "{}  {:<10} release {}  by {:<12} {}{}{}",
            r.id,
            r.result,
            r.release,
            r.who,
            rfc3339_local(r.started_at),
            if r.halt_reason.is_empty() { String::new() } else { format!("  halt: {}", r.halt_reason) },
            if r.break_glass.is_empty() { String::new() } else { format!("  [{}]", r.break_glass) }
        );
        // A run halted and then resumed keeps its halt on record.
        if r.events.iter().any(|e| e.event == "halted") {
            for e in &r.events {
                let detail = if e.detail.is_empty() { String::new() } else { format!(": {}", e.detail) };
                println!("    {}  {}{detail}", rfc3339_local(e.at), e.event);
            }
        }
    }
    Ok(())
}

pub fn approve(a: &crate::cli::ApproveArgs) -> Result<(), Error> {
    let pr = prepare(&a.pipeline.pipeline, &a.store, &a.ledger, &a.env, &None)?;
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
    pr.ledger
        .exec(Op::Approve {
            env: a.env.clone(),
            release: release.clone(),
            approver: a.by.clone(),
            comment,
            expires_at: now + ttl.as_millis() as i64,
            token: String::new(),
            audit: format!("release {release}"),
        })
        .map_err(store_err)?;
    println!("approved release {release} of {} by {} (valid {})", a.env, a.by, crate::model::Dur(ttl));
    // Tell the deploy's channels; a reviewer's machine may lack the secrets they need.
    let console = Console::new(false);
    match runner(&pr, &a.env, &console, "approval") {
        Ok(r) => deploy::notify(&r, "approved", &format!("{}: release {release} approved by {}", a.env, a.by)),
        Err(e) => eprintln!("note: the `approved` event was not sent ({e})"),
    }
    Ok(())
}

pub fn lock(cmd: &LockCommand) -> Result<(), Error> {
    let (env, pipeline, store_arg, ledger_args) = match cmd {
        LockCommand::Status { env, pipeline, store, ledger } => (env, pipeline, store, ledger),
        LockCommand::Release { env, pipeline, store, ledger, .. } => (env, pipeline, store, ledger),
    };
    let p = load_pipeline(&pipeline.pipeline)?;
    let root = project_root(&pipeline.pipeline);
    let (store, _) = open_store(store_arg, &root)?;
    let ledger = open_ledger(ledger_args, &p, &Arc::new(store))?;
    match cmd {
        LockCommand::Status { .. } => {
            let info: LockInfo = ledger.call(Op::LockStatus { env: env.clone() }).map_err(store_err)?;
            match &info.lease {
                Some(h) if info.live => println!(
                    "{env}: held by {} (run {}, {} pid {}), since {}, lease expires at {}",
                    h.holder, h.run_id, h.host, h.pid, h.acquired_at, h.expires_at
                ),
                Some(h) => println!("{env}: free (the last lease, run {}, expired at {})", h.run_id, h.expires_at),
                None => println!("{env}: free"),
            }
            for (n, w) in info.waiting.iter().enumerate() {
                println!("  waiting #{}: run {}", n + 1, w);
            }
            if ledger.is_shared() {
                println!("  (kept by {})", ledger.describe());
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
            let was: String =
                ledger.call(Op::LockBreak { env: env.clone(), who: deploy::actor(), reason }).map_err(store_err)?;
            if was.is_empty() {
                println!("{env} held no lease; the attempt is recorded in the audit log");
            } else {
                println!("released the lease of {env} (run {was}; recorded in the audit log)");
            }
            Ok(())
        }
    }
}

pub fn rollback(a: &crate::cli::RollbackArgs) -> Result<(), Error> {
    process::install_signal_handlers();
    let p = load_pipeline(&a.pipeline.pipeline)?;
    let env = p.environments.get(&a.env).ok_or_else(|| Error::Usage(format!("error: no environment `{}`", a.env)))?;
    // Blue-green keeps blue running: its fast rollback is moving traffic back.
    let switch_back = match &env.strategy {
        crate::model::Strategy::BlueGreen(bg) => bg.switch_back.clone(),
        _ => None,
    };
    let Some(rb) = switch_back.as_ref().or(env.rollback.as_ref()) else {
        return Err(Error::Usage(format!(
            "error: `{}` has no rollback command\n  hint: add `rollback: \"...\"` to it (or `switch_back` for blue-green)",
            a.env
        )));
    };
    let root = project_root(&a.pipeline.pipeline);
    let (store, _) = open_store(&a.store, &root)?;
    let ledger = open_ledger(&a.ledger, &p, &Arc::new(store))?;
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
        ledger: ledger.clone(),
        console: &console,
        masker,
        secret_env,
        release: target.clone(),
        run_id: run_id.clone(),
    };
    let ttl = env.lock_ttl.map(|d| d.0).unwrap_or(std::time::Duration::from_secs(600));
    let lease = deploy::acquire_lease(&ledger, &a.env, &run_id, &deploy::actor(), ttl, &console).map_err(de)?;
    let start = Op::RunStart {
        id: run_id.clone(),
        env: a.env.clone(),
        release: target.clone(),
        who: deploy::actor(),
        plan: "{}".into(),
        break_glass: String::new(),
    };
    if let Err(e) = ledger.exec(start) {
        lease.release(&ledger);
        return Err(store_err(e));
    }
    let vars = crate::plan::trigger::env_vars(&p, &a.env, env);
    let regions: Vec<Option<&str>> = if switch_back.is_some() {
        vec![env.regions.first().map(String::as_str)] // one traffic switch
    } else if env.regions.is_empty() {
        vec![None]
    } else {
        env.regions.iter().rev().map(|r| Some(r.as_str())).collect()
    };
    let mut failed = None;
    for region in regions {
        let cmd = crate::plan::trigger::render_env(rb, &vars, region, &target);
        let label = if switch_back.is_some() { "switch back" } else { region.unwrap_or("rollback") };
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
        let cleared: Vec<&str> = if switch_back.is_some() {
            env.regions.iter().map(String::as_str).collect() // green no longer serves anywhere
        } else {
            region.into_iter().collect()
        };
        for reg in cleared {
            if let Err(e) = ledger.exec(Op::RegionClear { env: a.env.clone(), region: reg.to_string() }) {
                console.note(&format!("warning: {e}"));
            }
        }
    }
    let result = if failed.is_some() { "rollback-failed" } else { "rolled-back" };
    let finished = Op::RunResult {
        id: run_id.clone(),
        result: result.into(),
        halt_reason: failed.as_ref().map(|r| format!("rollback failed in {r}")).unwrap_or_default(),
        finished: true,
    };
    if let Err(e) = ledger.exec(finished) {
        console.note(&format!("warning: the rollback's result was not recorded: {e}"));
    }
    deploy::notify(&r, "rolled-back", &format!("{}: rolled back to {target}", a.env));
    lease.release(&ledger);
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
        no_wait: false,
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
            ledger: a.remote.endpoint.clone(),
        };
        start(&d, &console)?;
    }
    Ok(())
}
