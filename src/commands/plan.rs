//! `cairn plan`: what a trigger would run.

use super::{load_pipeline, open_store, project_root};
use crate::cache::Store;
use crate::cli::PlanArgs;
use crate::error::Error;
use crate::exec::Prepared;
use crate::plan::{plan_trigger, Graph, Phase, RunPlan, TriggerRequest};
use std::collections::BTreeMap;
use std::fmt::Write;

pub use crate::plan::StepState;

/// Predict hit or will-run for each selected node, from the local store.
pub fn predict(g: &Graph, selected: &[usize], prepared: &Prepared, store: &Store) -> BTreeMap<usize, StepState> {
    predict_with_remote(g, selected, prepared, store, None)
}

/// Predict with the remote too (one batch request per level of the graph).
pub fn predict_with_remote(
    g: &Graph,
    selected: &[usize],
    prepared: &Prepared,
    store: &Store,
    remote: Option<&crate::cache::remote::Remote>,
) -> BTreeMap<usize, StepState> {
    let stores = crate::cache::tiered::Tiered { local: store, remote, root: &prepared.walk.root };
    crate::plan::predict(g, selected, &prepared.manifests, &stores)
}

pub fn run(args: &PlanArgs) -> Result<(), Error> {
    let p = load_pipeline(&args.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    let mut inputs = BTreeMap::new();
    for kv in &args.inputs {
        let (k, v) =
            kv.split_once('=').ok_or_else(|| Error::Usage(format!("error: `--input {kv}` is not NAME=VALUE")))?;
        inputs.insert(k.to_string(), v.to_string());
    }
    let req = TriggerRequest { event: args.event.into(), branch: args.branch.clone(), inputs };
    let mut plan = plan_trigger(&p, &g, &req)?;
    let mut store = None;
    let states = if args.no_cache_state || plan.steps.is_empty() {
        BTreeMap::new()
    } else {
        let root = project_root(&args.pipeline.pipeline);
        let (s, cache_dir) = open_store(&args.store, &root)?;
        let remote = super::build::remote_client(&args.remote, &p)?;
        let states = match crate::exec::prepare(&p, &g, &plan.steps, &root, &s, &cache_dir, 2) {
            Ok(prepared) => predict_with_remote(&g, &plan.steps, &prepared, &s, remote.as_deref()),
            Err(e) => {
                eprintln!("warning: cache state unknown: {e}");
                BTreeMap::new()
            }
        };
        let s = std::sync::Arc::new(s);
        store = Some(super::deploy::open_ledger(&args.remote.endpoint, &p, &s)?);
        states
    };
    evaluate_gates(&p, &g, &mut plan, &states, store.as_ref(), crate::deploy::now_ms() / 1000);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&plan, &g, &states)).expect("plans serialise"));
    } else {
        print!("{}", to_text(&plan, &g, &states));
    }
    Ok(())
}

/// Decide what can be decided now: windows and freezes against the clock; the approval
/// against the store, for the release the current step keys give. A gate stays pending only
/// while its answer is unknown (a key that depends on a step that has not run yet).
pub fn evaluate_gates(
    p: &crate::model::Pipeline,
    g: &Graph,
    plan: &mut RunPlan,
    states: &BTreeMap<usize, StepState>,
    ledger: Option<&crate::deploy::ledger::Ledger>,
    now_unix: i64,
) {
    use crate::plan::GateStatus;
    for e in &mut plan.environments {
        let Some(env) = p.environments.get(&e.name) else { continue };
        // The release, if every cached step it depends on has a known key.
        let mut keys = BTreeMap::new();
        let mut unknown = Vec::new();
        if let Ok(closure) = g.closure(&e.requires) {
            for i in closure {
                let n = &g.nodes[i];
                if !n.step.cache {
                    continue;
                }
                match states.get(&i).and_then(|s| s.key.clone()) {
                    Some(k) => {
                        keys.insert(n.name.clone(), k);
                    }
                    None => unknown.push(n.name.clone()),
                }
            }
        }
        if unknown.is_empty() && ledger.is_some() {
            e.release = Some(crate::deploy::release_hash(&e.name, &keys, e));
        }
        let (mut windows, mut freezes) = (env.windows.iter(), env.freezes.iter());
        for gate in &mut e.gates {
            let (status, now) = match gate.kind {
                "window" => {
                    let Some(w) = windows.next() else { continue };
                    let one = crate::model::Environment { windows: vec![w.clone()], ..env.clone() };
                    match crate::deploy::window_open(&one, now_unix) {
                        Ok(Some(false)) => (GateStatus::Closed, "closed now".to_string()),
                        Ok(_) => (GateStatus::Open, "open now".to_string()),
                        Err(err) => (GateStatus::Closed, err),
                    }
                }
                "freeze" => {
                    let Some(f) = freezes.next() else { continue };
                    let one = crate::model::Environment { windows: vec![], freezes: vec![f.clone()], ..env.clone() };
                    match crate::deploy::closed_now(&one, now_unix) {
                        Ok(c) if c.is_empty() => (GateStatus::Open, "not in effect now".to_string()),
                        Ok(_) => (GateStatus::Closed, "in effect now".to_string()),
                        Err(err) => (GateStatus::Closed, err),
                    }
                }
                "approval" => match (&e.release, ledger) {
                    (Some(release), Some(ledger)) => {
                        let actor = crate::deploy::actor();
                        match crate::deploy::approval_state(ledger, &e.name, env, release, &actor) {
                            Ok(Ok(note)) => (GateStatus::Open, format!("release {release}: {note}")),
                            Ok(Err(why)) => (
                                GateStatus::Closed,
                                format!("release {release}: {why} (cairn approve {} --release {release})", e.name),
                            ),
                            Err(err) => (GateStatus::Pending, format!("unknown: {err}")),
                        }
                    }
                    _ if !unknown.is_empty() => (
                        GateStatus::Pending,
                        format!(
                            "the release is known once {} {} run",
                            unknown.join(", "),
                            if unknown.len() == 1 { "has" } else { "have" }
                        ),
                    ),
                    _ => continue,
                },
                _ => continue,
            };
            gate.status = status;
            gate.detail = format!("{} — {now}", gate.detail);
        }
    }
}

fn state_json(s: Option<&StepState>) -> serde_json::Value {
    match s {
        None => serde_json::json!({"cache": "unknown"}),
        Some(s) => serde_json::json!({
            "cache": if s.remote { "hit-remote" } else if s.hit { "hit" } else { "will-run" },
            "key": s.key,
            "reasons": s.reasons.iter().map(|r| serde_json::json!({"code": r.code(), "detail": r.describe()})).collect::<Vec<_>>(),
        }),
    }
}

fn state_text(s: Option<&StepState>) -> String {
    match s {
        None => String::new(),
        Some(s) if s.remote => "  [hit, remote]".into(),
        Some(s) if s.hit => "  [hit]".into(),
        Some(s) => {
            let why: Vec<String> = s.reasons.iter().take(3).map(|r| r.describe()).collect();
            let more = if s.reasons.len() > 3 { format!(" (+{} more)", s.reasons.len() - 3) } else { String::new() };
            format!("  [will run: {}{more}]", why.join("; "))
        }
    }
}

pub fn to_json(plan: &RunPlan, g: &Graph, states: &BTreeMap<usize, StepState>) -> serde_json::Value {
    let steps: Vec<serde_json::Value> = plan
        .steps
        .iter()
        .map(|&i| {
            let n = &g.nodes[i];
            serde_json::json!({
                "name": n.name,
                "step": n.base,
                "matrix": n.matrix.iter().cloned().collect::<BTreeMap<_, _>>(),
                "run": n.run,
                "needs": n.needs.iter().map(|&d| g.nodes[d].name.clone()).collect::<Vec<_>>(),
                "cacheable": n.step.cache,
                "state": state_json(states.get(&i)),
            })
        })
        .collect();
    serde_json::json!({
        "event": plan.event,
        "branch": plan.branch,
        "trigger": plan.trigger,
        "steps": steps,
        "environments": plan.environments,
    })
}

pub fn to_text(plan: &RunPlan, g: &Graph, states: &BTreeMap<usize, StepState>) -> String {
    let mut o = String::new();
    let on = plan.branch.as_deref().map(|b| format!(" on `{b}`")).unwrap_or_default();
    let Some(t) = plan.trigger else {
        let _ = writeln!(o, "no trigger matches {}{on}: nothing would run", plan.event);
        return o;
    };
    let _ = writeln!(o, "{}{on} (trigger {}): {} steps", plan.event, t + 1, plan.steps.len());
    for (k, &i) in plan.steps.iter().enumerate() {
        let n = &g.nodes[i];
        let _ = write!(o, "  {:>2}. {}", k + 1, n.name);
        if !n.needs.is_empty() {
            let needs: Vec<&str> = n.needs.iter().map(|&d| g.nodes[d].name.as_str()).collect();
            let _ = write!(o, "  ← {}", needs.join(", "));
        }
        if !n.step.cache {
            o.push_str("  (never cached)");
        }
        o.push_str(&state_text(states.get(&i)));
        o.push('\n');
    }
    if plan.environments.is_empty() {
        let _ = writeln!(o, "no deploy");
    }
    for e in &plan.environments {
        let _ = writeln!(o, "deploy {} ({}), after: {}", e.name, e.strategy, e.requires.join(", "));
        if let Some(r) = &e.release {
            let _ = writeln!(o, "  release {r} (from the current step keys)");
        }
        for gate in &e.gates {
            let status =
                serde_json::to_value(&gate.status).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
            let _ = writeln!(o, "  gate {:<9} {:<8} {}", gate.kind, status, gate.detail);
        }
        for (k, ph) in e.phases.iter().enumerate() {
            let _ = match ph {
                Phase::Migration { command } => writeln!(o, "  {:>2}. migrate: {command}", k + 1),
                Phase::Switch { command } => {
                    writeln!(o, "  {:>2}. switch traffic: {command}", k + 1)
                }
                Phase::Shift { share, command, bake } => {
                    let bake = bake.as_deref().map(|b| format!("; bake {b}")).unwrap_or_default();
                    writeln!(o, "  {:>2}. {share}% of traffic [canary]: {command}{bake}", k + 1)
                }
                Phase::Deploy { region, wave, command, health, bake } => {
                    let r = region.as_deref().unwrap_or("(all)");
                    let mut line = format!("  {:>2}. {r} [{wave}]: {command}", k + 1);
                    if let Some(h) = health {
                        let _ = write!(line, "; health {h}");
                    }
                    if let Some(b) = bake {
                        let _ = write!(line, "; bake {b}");
                    }
                    writeln!(o, "{line}")
                }
            };
        }
    }
    o
}
