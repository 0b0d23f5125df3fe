//! One deploy per environment: a lease with a time-to-live, renewed by a heartbeat, waiting
//! runs queued in arrival order.

use super::*;

// ---------------------------------------------------------------------------------------------
// The lease

pub struct Lease {
    env: String,
    run_id: String,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_string()).unwrap_or_else(|_| "?".into())
}

/// Take the environment's lease, waiting in line while another live deploy holds it.
pub fn acquire_lease(
    ledger: &Ledger,
    env: &str,
    run_id: &str,
    who: &str,
    ttl: Duration,
    console: &Console,
) -> Result<Lease, DeployError> {
    let ttl_ms = ttl.as_millis() as i64;
    let mut announced = false;
    loop {
        let answer: LeaseAnswer = ledger.call(Op::LeaseTry {
            env: env.to_string(),
            run_id: run_id.to_string(),
            holder: who.to_string(),
            host: host(),
            pid: i64::from(std::process::id()),
            ttl_ms,
        })?;
        if answer.acquired {
            break;
        }
        if !announced {
            let holder = answer.holder.unwrap_or_else(|| "an earlier run".into());
            console.note(&format!("cairn: `{env}` is being deployed by {holder}; waiting for the lease"));
            announced = true;
        }
        if process::interrupted() {
            let _ = ledger.exec(Op::LeaseLeave { env: env.to_string(), run_id: run_id.to_string() });
            return Err(DeployError::Halted("interrupted while waiting for the lease".into()));
        }
        std::thread::sleep(if ledger.is_shared() { Duration::from_millis(500) } else { Duration::from_millis(200) });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let heartbeat = {
        let (ledger, env, run_id, stop) = (ledger.clone(), env.to_string(), run_id.to_string(), stop.clone());
        std::thread::spawn(move || {
            let beat = (ttl / 3).max(Duration::from_millis(100));
            let mut warned = false;
            while !stop.load(Ordering::SeqCst) {
                let until = Instant::now() + beat;
                while Instant::now() < until && !stop.load(Ordering::SeqCst) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                // A lost heartbeat never cancels the running phase (a production deploy is
                // not cut midway); it is said once, loudly.
                let renewed: Result<bool, _> =
                    ledger.call(Op::LeaseRenew { env: env.clone(), run_id: run_id.clone(), ttl_ms });
                let problem = match renewed {
                    Ok(true) => None,
                    Ok(false) => Some(format!("the lease of `{env}` was broken (cairn lock release --force)")),
                    Err(e) => Some(format!("could not renew the lease of `{env}`: {e}")),
                };
                if let Some(p) = problem {
                    if !warned {
                        eprintln!("warning: {p}; this deploy goes on, but another may start");
                        warned = true;
                    }
                }
            }
        })
    };
    Ok(Lease { env: env.to_string(), run_id: run_id.to_string(), stop, heartbeat: Some(heartbeat) })
}

impl Lease {
    pub fn release(mut self, ledger: &Ledger) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.heartbeat.take() {
            let _ = h.join();
        }
        let _ = ledger.exec(Op::LeaseRelease { env: self.env.clone(), run_id: self.run_id.clone() });
    }
}
