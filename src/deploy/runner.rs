//! Running a rollout's phases: region waves, health checks, bakes, the migration, traffic
//! switches and canaries, rollbacks; every transition journaled before and after; events
//! sent to webhooks.

use super::*;

/// Wait out a bake time (Ctrl-C ends it early; the rollout then halts before the next phase).
fn bake_for(bake: Option<&str>) {
    if let Some(b) = bake.and_then(|b| crate::model::Dur::parse(b).ok()) {
        let until = Instant::now() + b.0;
        while Instant::now() < until && !process::interrupted() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The regions a traffic canary watches: those deployed in the canary wave.
fn canary_regions(plan: &EnvPlan) -> Vec<Option<String>> {
    plan.phases
        .iter()
        .filter_map(|p| match p {
            Phase::Deploy { region, wave, .. } if wave == "canary" => Some(region.clone()),
            _ => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Running phases

pub struct Runner<'a> {
    pub pipeline: &'a Pipeline,
    pub env_name: &'a str,
    pub env: &'a Environment,
    pub root: PathBuf,
    pub ledger: Ledger,
    pub console: &'a Console,
    pub masker: Masker,
    pub secret_env: BTreeMap<String, String>,
    pub release: String,
    pub run_id: String,
}

impl Runner<'_> {
    /// Write a transition to the journal. A failed write is a warning, except for a phase's
    /// start: a phase whose start can't be recorded does not start (`Err`), so the journal
    /// never misses something that happened.
    fn journal(&self, phase: usize, what: &str, state: &str, detail: &str) -> Result<(), HaltReason> {
        let op = Op::Journal {
            run_id: self.run_id.clone(),
            phase: phase as i64,
            what: what.to_string(),
            state: state.to_string(),
            detail: self.masker.mask(detail),
        };
        match self.ledger.exec(op) {
            Ok(()) => Ok(()),
            Err(e) if state == "started" => {
                Err(HaltReason::Ledger { detail: format!("could not record `{what}`: {e}") })
            }
            Err(e) => {
                self.console.note(&format!("warning: could not record `{what}` {state}: {e}"));
                Ok(())
            }
        }
    }

    fn set_region(&self, region: &str, release: Option<&str>) {
        let (env, region) = (self.env_name.to_string(), region.to_string());
        let op = match release {
            Some(r) => Op::RegionSet { env, region, release: r.to_string() },
            None => Op::RegionClear { env, region },
        };
        if let Err(e) = self.ledger.exec(op) {
            self.console.note(&format!("warning: {e}"));
        }
    }

    fn env_for_commands(&self) -> BTreeMap<String, String> {
        let mut env = process::base_env([]);
        env.extend(self.secret_env.clone());
        env.insert("CAIRN_RELEASE".into(), self.release.clone());
        env.insert("CAIRN_ENVIRONMENT".into(), self.env_name.to_string());
        env
    }

    /// Run one command; Ok(()) on exit 0.
    fn run_cmd(&self, label: &str, cmd: &str, timeout: Option<Duration>) -> Result<(), String> {
        self.console.note(&format!("[{label}] $ {}", self.masker.mask(cmd)));
        // Not cancellable: Ctrl-C lets a running phase finish; the rollout halts after it.
        let out = process::run_opts(
            cmd,
            &self.root,
            &self.env_for_commands(),
            timeout,
            &format!("[{label}]"),
            self.console,
            &self.masker,
            false,
        )
        .map_err(|e| format!("could not start: {e}"))?;
        match out.exit {
            Exit::Code(0) => Ok(()),
            Exit::Code(c) => Err(format!("exited with status {c}")),
            Exit::Signal(s) => Err(format!("killed by signal {s}")),
            Exit::TimedOut => Err("timed out".into()),
            Exit::Interrupted => Err("interrupted".into()),
        }
    }

    fn health(&self, region: Option<&str>) -> Result<(), String> {
        let Some(h) = &self.env.health else { return Ok(()) };
        let vars = env_vars(self.pipeline, self.env_name, self.env);
        let mut last = String::new();
        for attempt in 0..h.retries.max(1) {
            if attempt > 0 {
                std::thread::sleep(h.interval.0);
            }
            let fill = |t: &str| render_env(t, &vars, region, &self.release);
            let run = |c: &str, timeout: Duration| self.run_cmd("health", c, Some(timeout));
            let ok = match crate::exec::probe::check(&h.probe, h.timeout.0, fill, run) {
                Ok(()) => true,
                Err(e) => {
                    last = e;
                    false
                }
            };
            if ok {
                return Ok(());
            }
        }
        Err(format!("health check failed {} times: {}", h.retries.max(1), self.masker.mask(&last)))
    }

    /// Roll the environment back to this runner's release (`cairn rollback --to`, else
    /// "previous"): blue-green switches traffic back to blue, which kept running; otherwise
    /// the `rollback` command runs in every region, in reverse order. The one rollback rule,
    /// shared by `cairn rollback` and a failing rollout (which rolls back region by region
    /// with [`Runner::rollback_region`]). `Err` names where it failed.
    pub fn roll_back(&self) -> Result<(), String> {
        let vars = env_vars(self.pipeline, self.env_name, self.env);
        match self.switch_back(0, &vars) {
            Some(true) => {
                for r in &self.env.regions {
                    self.set_region(r, None); // green no longer serves anywhere
                }
                return Ok(());
            }
            Some(false) => return Err("switch back".into()),
            None => {}
        }
        if self.env.rollback.is_none() {
            return Err(format!(
                "`{}` has no rollback command\n  hint: add `rollback: \"...\"` to it (or `switch_back` for blue-green)",
                self.env_name
            ));
        }
        let regions: Vec<Option<&str>> = if self.env.regions.is_empty() {
            vec![None]
        } else {
            self.env.regions.iter().rev().map(|r| Some(r.as_str())).collect()
        };
        for (k, region) in regions.into_iter().enumerate() {
            self.rollback_region(region, k).map_err(|_| region.unwrap_or("rollback").to_string())?;
        }
        Ok(())
    }

    fn rollback_region(&self, region: Option<&str>, phase: usize) -> Result<(), String> {
        let Some(rb) = &self.env.rollback else { return Ok(()) };
        let vars = env_vars(self.pipeline, self.env_name, self.env);
        let cmd = render_env(rb, &vars, region, &self.release);
        let what = format!("rollback {}", region.unwrap_or("(all)"));
        // A rollback is a repair: it runs even when its start can't be recorded.
        let _ = self.journal(phase, &what, "started", "");
        let r = self.run_cmd("rollback", &cmd, Some(Duration::from_secs(900)));
        // Not "done": the phase's last word is that it was undone, so a resume deploys it again.
        let state = if r.is_ok() { "rolled-back" } else { "rollback-failed" };
        let _ = self.journal(phase, &what, state, &r.clone().err().unwrap_or_default());
        notify(self, "rolled-back", &format!("{} rolled back in {}", self.env_name, region.unwrap_or("all regions")));
        if r.is_ok() {
            if let Some(reg) = region {
                self.set_region(reg, None);
            }
        }
        r
    }

    /// Run phases from `start`; `done_phases` are skipped (resume).
    pub fn run(&self, plan: &EnvPlan, done_phases: &[usize]) -> Result<(), HaltReason> {
        let vars = env_vars(self.pipeline, self.env_name, self.env);
        let mut completed_regions: Vec<(usize, Option<String>)> = Vec::new();
        for (k, phase) in plan.phases.iter().enumerate() {
            if process::interrupted() {
                return Err(HaltReason::Interrupted);
            }
            if done_phases.contains(&k) {
                continue;
            }
            match phase {
                Phase::Deploy { region, bake, .. } => {
                    let r = region.as_deref();
                    let label = r.unwrap_or("deploy").to_string();
                    // Skip a region already running this release.
                    if let Some(reg) = r {
                        let cur: Option<String> = self
                            .ledger
                            .call(Op::RegionRelease { env: self.env_name.to_string(), region: reg.to_string() })
                            .unwrap_or_default();
                        if cur.as_deref() == Some(self.release.as_str()) {
                            self.console.note(&format!("cairn: {reg} already runs release {}; skipped", self.release));
                            let _ =
                                self.journal(k, &format!("deploy {reg}"), "skipped", "already running this release");
                            completed_regions.push((k, Some(reg.to_string())));
                            continue;
                        }
                    }
                    let what = format!("deploy {label}");
                    self.journal(k, &what, "started", "")?;
                    notify(
                        self,
                        "region-started",
                        &format!("{} {label}: deploying release {}", self.env_name, self.release),
                    );
                    let cmd = render_env(&self.env.deploy, &vars, r, &self.release);
                    if let Err(e) = self.run_cmd(&label, &cmd, Some(Duration::from_secs(3600))) {
                        let _ = self.journal(k, &what, "failed", &e);
                        notify(self, "region-failed", &format!("{} {label}: deploy failed: {e}", self.env_name));
                        self.fail_policy(k, r, &completed_regions);
                        return Err(HaltReason::DeployFailed { region: label, detail: e });
                    }
                    if let Err(e) = self.health(r) {
                        let _ = self.journal(k, &what, "failed", &e);
                        notify(self, "region-failed", &format!("{} {label}: {e}", self.env_name));
                        self.fail_policy(k, r, &completed_regions);
                        return Err(HaltReason::Unhealthy { region: label, detail: e });
                    }
                    bake_for(bake.as_deref());
                    if let Some(reg) = r {
                        self.set_region(reg, Some(&self.release));
                    }
                    let _ = self.journal(k, &what, "done", "");
                    notify(
                        self,
                        "region-healthy",
                        &format!("{} {label}: healthy on release {}", self.env_name, self.release),
                    );
                    completed_regions.push((k, r.map(String::from)));
                }
                Phase::Migration { .. } => {
                    self.journal(k, "migrate", "started", "")?;
                    let timeout = self.env.migration.as_ref().and_then(|m| m.timeout).map(|d| d.0);
                    // Rendered now: the plan's copy names the release as a placeholder.
                    let command = self
                        .env
                        .migration
                        .as_ref()
                        .map(|m| render_env(&m.run, &vars, None, &self.release))
                        .unwrap_or_default();
                    if let Err(e) = self.run_cmd("migrate", &command, timeout) {
                        let _ = self.journal(k, "migrate", "failed", &e);
                        notify(
                            self,
                            "migration-failed",
                            &format!("{}: migration failed ({e}); apps were NOT rolled back", self.env_name),
                        );
                        return Err(HaltReason::MigrationFailed { detail: e });
                    }
                    let _ = self.journal(k, "migrate", "done", "");
                    notify(self, "migration-done", &format!("{}: migration done", self.env_name));
                }
                Phase::Switch { .. } => {
                    self.journal(k, "switch", "started", "")?;
                    let command = match &self.env.strategy {
                        crate::model::Strategy::BlueGreen(bg) => {
                            render_env(&bg.switch, &vars, self.env.regions.first().map(String::as_str), &self.release)
                        }
                        _ => String::new(),
                    };
                    // After the switch, every region is checked again; blue still runs, so a
                    // failure moves traffic straight back.
                    let r = self.run_cmd("switch", &command, Some(Duration::from_secs(900))).and_then(|()| {
                        let regions: Vec<Option<&str>> = if self.env.regions.is_empty() {
                            vec![None]
                        } else {
                            self.env.regions.iter().map(|r| Some(r.as_str())).collect()
                        };
                        regions.into_iter().try_for_each(|r| self.health(r))
                    });
                    if let Err(e) = r {
                        let _ = self.journal(k, "switch", "failed", &e);
                        let detail = match self.switch_back(k, &vars) {
                            Some(true) => format!("{e}; traffic switched back to blue"),
                            Some(false) => format!("{e}; switching back to blue failed too"),
                            None => e,
                        };
                        return Err(HaltReason::SwitchFailed { detail });
                    }
                    let _ = self.journal(k, "switch", "done", "");
                }
                Phase::Shift { share, bake, .. } => {
                    let what = format!("shift {share}%");
                    self.journal(k, &what, "started", "")?;
                    let watched = canary_regions(plan);
                    let r = self
                        .run_cmd("canary", &self.shift_command(*share), Some(Duration::from_secs(900)))
                        .and_then(|()| watched.iter().try_for_each(|reg| self.health(reg.as_deref())));
                    if let Err(e) = r {
                        let _ = self.journal(k, &what, "failed", &e);
                        notify(self, "canary-failed", &format!("{}: canary at {share}% failed: {e}", self.env_name));
                        self.shift_back(plan, k);
                        return Err(HaltReason::CanaryFailed { share: *share, detail: e });
                    }
                    bake_for(bake.as_deref());
                    let _ = self.journal(k, &what, "done", "");
                    notify(
                        self,
                        "traffic-shifted",
                        &format!("{}: {share}% of traffic on release {}", self.env_name, self.release),
                    );
                }
            }
        }
        Ok(())
    }

    /// Blue-green's fast rollback: traffic back to blue, which kept running.
    /// `None` when there is no `switch_back`, else whether it worked.
    fn switch_back(&self, phase: usize, vars: &BTreeMap<String, String>) -> Option<bool> {
        let crate::model::Strategy::BlueGreen(bg) = &self.env.strategy else { return None };
        let back = bg.switch_back.as_ref()?;
        let cmd = render_env(back, vars, self.env.regions.first().map(String::as_str), &self.release);
        let _ = self.journal(phase, "switch back", "started", "");
        let r = self.run_cmd("switch back", &cmd, Some(Duration::from_secs(900)));
        let state = if r.is_ok() { "rolled-back" } else { "rollback-failed" };
        let _ = self.journal(phase, "switch back", state, &r.clone().err().unwrap_or_default());
        notify(self, "rolled-back", &format!("{}: traffic switched back to blue", self.env_name));
        Some(r.is_ok())
    }

    /// The canary's `shift` command for `share` percent.
    fn shift_command(&self, share: u8) -> String {
        let crate::model::Strategy::Canary(c) = &self.env.strategy else { return String::new() };
        let mut vars = env_vars(self.pipeline, self.env_name, self.env);
        vars.insert("share".into(), share.to_string());
        render_env(
            c.shift.as_deref().unwrap_or_default(),
            &vars,
            self.env.regions.first().map(String::as_str),
            &self.release,
        )
    }

    /// A failed share sends all traffic back (`shift` at 0) and marks the shares already
    /// reached as reverted, so a resume climbs again from the first share.
    fn shift_back(&self, plan: &EnvPlan, failed: usize) {
        let _ = self.journal(failed, "shift 0%", "started", "");
        let r = self.run_cmd("canary", &self.shift_command(0), Some(Duration::from_secs(900)));
        let _ = self.journal(
            failed,
            "shift 0%",
            if r.is_ok() { "rolled-back" } else { "rollback-failed" },
            &r.clone().err().unwrap_or_default(),
        );
        for (k, ph) in plan.phases.iter().enumerate().take(failed) {
            if let Phase::Shift { share, .. } = ph {
                let _ = self.journal(k, &format!("shift {share}%"), "reverted", "traffic moved back to 0%");
            }
        }
        notify(self, "rolled-back", &format!("{}: canary traffic moved back to 0%", self.env_name));
    }

    fn fail_policy(&self, phase: usize, failed: Option<&str>, completed: &[(usize, Option<String>)]) {
        if self.env.on_failure.rollback_failed {
            let _ = self.rollback_region(failed, phase); // journaled; the halt stands either way
        }
        if self.env.on_failure.rollback_completed {
            for (k, r) in completed.iter().rev() {
                let _ = self.rollback_region(r.as_deref(), *k);
            }
        }
    }
}

/// Post a deploy event to the environment's webhooks (Slack-compatible JSON) and metric
/// endpoints. Failures are warnings, never a failed deploy.
pub fn notify(r: &Runner, event: &str, text: &str) {
    let text = r.masker.mask(text);
    for n in &r.env.notify {
        let sent = match n {
            crate::model::Notify::Slack(w) => {
                if !w.events.is_empty() && !w.events.iter().any(|e| e == event) {
                    continue;
                }
                let Some(url) = r.secret_env.get(&w.url_secret) else { continue };
                post(url, &serde_json::json!({"text": format!("[cairn] {text}"), "event": event}), None)
            }
            crate::model::Notify::Metric(m) => {
                let mut tags = m.tags.clone();
                tags.push(format!("environment:{}", r.env_name));
                tags.push(format!("app:{}", r.pipeline.name));
                tags.push(format!("event:{event}"));
                let body = serde_json::json!({"series": [{"metric": m.name, "points": [[now_ms() / 1000, 1]], "type": "count", "tags": tags}]});
                let key = m.api_key_secret.as_ref().and_then(|s| r.secret_env.get(s)).map(String::as_str);
                post(&m.url, &body, key)
            }
        };
        if let Err(e) = sent {
            r.console.note(&format!("warning: notification for {event} failed: {}", r.masker.mask(&e)));
        }
    }
}

fn post(url: &str, body: &serde_json::Value, api_key: Option<&str>) -> Result<(), String> {
    let c = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
    let mut rb = c.post(url).json(body);
    if let Some(k) = api_key {
        rb = rb.header("DD-API-KEY", k);
    }
    let r = rb.send().map_err(|e| e.to_string())?;
    if r.status().is_success() {
        Ok(())
    } else {
        Err(format!("HTTP {}", r.status()))
    }
}

/// Resolve the environment's secrets (scoped definitions, `Inherit` from the pipeline).
pub fn env_secrets(p: &Pipeline, env: &Environment, root: &Path) -> Result<BTreeMap<String, String>, DeployError> {
    let mut out = BTreeMap::new();
    for (name, source) in env.secrets.iter() {
        let source = match source {
            crate::model::SecretSource::Inherit => {
                p.secrets.get(name).cloned().unwrap_or(crate::model::SecretSource::Inherit)
            }
            other => other.clone(),
        };
        let v = crate::exec::secrets::resolve(name, &source, root)
            .map_err(|e| DeployError::Usage(format!("error: {e}")))?;
        out.insert(name.clone(), v);
    }
    Ok(out)
}
