//! `cairn lock status|release ENV`: who holds the deploy lease; forced release is audited.

use super::*;

pub fn lock(cmd: &LockCommand) -> Result<(), Error> {
    let (env, pipeline, store_arg, ledger_args) = match cmd {
        LockCommand::Status { env, target } => (env, &target.pipeline, &target.store, &target.ledger),
        LockCommand::Release { env, target, .. } => (env, &target.pipeline, &target.store, &target.ledger),
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
