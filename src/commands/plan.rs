//! `cairn plan`: what a trigger would run.

use super::load_pipeline;
use crate::cli::PlanArgs;
use crate::error::Error;
use crate::plan::{plan_trigger, Graph, Phase, RunPlan, TriggerRequest};
use std::collections::BTreeMap;
use std::fmt::Write;

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
    let plan = plan_trigger(&p, &g, &req)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&plan, &g)).expect("plans serialise"));
    } else {
        print!("{}", to_text(&plan, &g));
    }
    Ok(())
}

pub fn to_json(plan: &RunPlan, g: &Graph) -> serde_json::Value {
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
                "cache": n.step.cache,
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

pub fn to_text(plan: &RunPlan, g: &Graph) -> String {
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
        o.push('\n');
    }
    if plan.environments.is_empty() {
        let _ = writeln!(o, "no deploy");
    }
    for e in &plan.environments {
        let _ = writeln!(o, "deploy {} ({}), after: {}", e.name, e.strategy, e.requires.join(", "));
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
