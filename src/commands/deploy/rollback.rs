//! `cairn rollback ENV`: the rollback command region by region, in reverse order.

use super::*;

pub fn rollback(a: &crate::cli::RollbackArgs) -> Result<(), Error> {
    process::install_signal_handlers();
    let p = load_pipeline(&a.target.pipeline.pipeline)?;
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
