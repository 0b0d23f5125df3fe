//! `cairn rollback ENV`: the rollback command region by region, in reverse order.

use super::*;

pub fn rollback(a: &crate::cli::RollbackArgs) -> Result<(), Error> {
    process::install_signal_handlers();
    let p = load_pipeline(&a.target.pipeline.pipeline)?;
    let env = p.environments.get(&a.env).ok_or_else(|| Error::Usage(format!("error: no environment `{}`", a.env)))?;
    // Blue-green keeps blue running: its fast rollback is moving traffic back.
    let switch_back = matches!(&env.strategy, crate::model::Strategy::BlueGreen(bg) if bg.switch_back.is_some());
    if !switch_back && env.rollback.is_none() {
        return Err(Error::Usage(format!(
            "error: `{}` has no rollback command\n  hint: add `rollback: \"...\"` to it (or `switch_back` for blue-green)",
            a.env
        )));
    }
    let root = project_root(&a.target.pipeline.pipeline);
    let (store, _) = open_store(&a.target.store, &root)?;
    let ledger = open_ledger(&a.target.ledger, &p, &Arc::new(store))?;
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
    let failed = r.roll_back().err();
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
