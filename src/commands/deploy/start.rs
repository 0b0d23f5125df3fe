//! `cairn deploy ENV` and `cairn deploy resume ENV`: gates, the lease, region waves.

use super::*;

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

pub(super) fn resume(a: &DeployArgs, console: &Console) -> Result<(), Error> {
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
