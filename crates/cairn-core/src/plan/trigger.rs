//! What an event runs: the matching trigger, its steps, and each selected environment's
//! deploy phases and gates. Pure: the branch and manual inputs come in as values.

use super::graph::{Graph, GraphError};
use crate::model::{render, Environment, Event, InputType, MigrationPhase, Pipeline, Probe, Strategy};
use serde::Serialize;
use std::collections::BTreeMap;

/// A request to plan: which event, on which branch, with which manual inputs.
#[derive(Debug, Clone)]
pub struct TriggerRequest {
    pub event: Event,
    pub branch: Option<String>,
    pub inputs: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TriggerError {
    #[error("`--event {0}` needs `--branch` (for pull requests, the target branch)")]
    BranchNeeded(&'static str),
    #[error("manual input `{name}`: {problem}")]
    Input { name: String, problem: String },
    #[error("trigger deploys to `{0}`, which is not a declared environment")]
    UnknownEnvironment(String),
    #[error(transparent)]
    Graph(#[from] GraphError),
}

/// The plan of one triggered run.
#[derive(Debug, Clone, Serialize)]
pub struct RunPlan {
    pub event: &'static str,
    pub branch: Option<String>,
    /// Index of the matching trigger in the pipeline, or `None` if no trigger matches.
    pub trigger: Option<usize>,
    /// Graph node indices to run, in topological order.
    #[serde(skip)]
    pub steps: Vec<usize>,
    pub environments: Vec<EnvPlan>,
}

/// One environment's deploy, as it would happen.
#[derive(Debug, Clone, Serialize)]
pub struct EnvPlan {
    pub name: String,
    pub strategy: &'static str,
    /// Steps that must have succeeded (for the exact current keys) before the deploy.
    pub requires: Vec<String>,
    pub regions: Vec<String>,
    pub gates: Vec<Gate>,
    pub phases: Vec<Phase>,
    pub migration: Option<MigrationPlan>,
    pub secrets: Vec<String>,
    /// The release hash, when `cairn plan` knows every key it depends on (set by the caller:
    /// this layer has no store).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MigrationPlan {
    pub phase: &'static str,
    pub command: String,
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum GateStatus {
    Open,
    Closed,
    /// Decided when the deploy starts (an approval, a window at that time).
    Pending,
}

#[derive(Debug, Clone, Serialize)]
pub struct Gate {
    pub kind: &'static str,
    pub status: GateStatus,
    pub detail: String,
}

/// One step of a rollout, in order.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Phase {
    Migration {
        command: String,
    },
    Deploy {
        region: Option<String>,
        wave: String,
        command: String,
        health: Option<String>,
        bake: Option<String>,
    },
    Switch {
        command: String,
    },
    /// A traffic-share canary step: `share` percent of traffic to the new release, checked
    /// and baked.
    Shift {
        share: u8,
        command: String,
        bake: Option<String>,
    },
}

/// Shell-style glob match of a branch name (`*` matches within a segment, `**` across).
pub fn branch_matches(glob: &str, branch: &str) -> bool {
    globset::GlobBuilder::new(glob)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher().is_match(branch))
        .unwrap_or(false)
}

fn any_branch(globs: &[String], branch: Option<&str>) -> bool {
    globs.is_empty() || branch.is_some_and(|b| globs.iter().any(|g| branch_matches(g, b)))
}

/// Check manual inputs against their declared types, filling defaults.
fn resolve_inputs(
    declared: &crate::model::Named<crate::model::ManualInput>,
    given: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, TriggerError> {
    let mut out = BTreeMap::new();
    for name in given.keys() {
        if !declared.contains(name) {
            let known: Vec<&str> = declared.names().collect();
            return Err(TriggerError::Input {
                name: name.clone(),
                problem: format!("not an input of this trigger; {}", crate::model::suggest(name, &known)),
            });
        }
    }
    for (name, input) in declared.iter() {
        let value = match given.get(name).or(input.default.as_ref()) {
            Some(v) => v.clone(),
            None => {
                return Err(TriggerError::Input {
                    name: name.clone(),
                    problem: "no value and no default; pass --input NAME=VALUE".into(),
                })
            }
        };
        let ok = match &input.kind {
            InputType::String => true,
            InputType::Boolean => value == "true" || value == "false",
            InputType::Number => value.parse::<f64>().is_ok(),
            InputType::Choice(options) => options.contains(&value),
        };
        if !ok {
            let want = match &input.kind {
                InputType::Boolean => "true or false".to_string(),
                InputType::Number => "a number".to_string(),
                InputType::Choice(o) => format!("one of {}", o.join(", ")),
                InputType::String => unreachable!("strings always parse"),
            };
            return Err(TriggerError::Input { name: name.clone(), problem: format!("`{value}` is not {want}") });
        }
        out.insert(format!("inputs.{name}"), value);
    }
    Ok(out)
}

/// Plan what `req` runs.
pub fn plan_trigger(p: &Pipeline, graph: &Graph, req: &TriggerRequest) -> Result<RunPlan, TriggerError> {
    if req.event != Event::Manual && req.branch.is_none() {
        return Err(TriggerError::BranchNeeded(req.event.as_str()));
    }
    let branch = req.branch.as_deref();
    let found = p
        .triggers
        .iter()
        .enumerate()
        .find(|(_, t)| t.on == req.event && (req.event == Event::Manual || any_branch(&t.branches, branch)));
    let Some((ti, trigger)) = found else {
        return Ok(RunPlan {
            event: req.event.as_str(),
            branch: req.branch.clone(),
            trigger: None,
            steps: vec![],
            environments: vec![],
        });
    };
    let inputs = resolve_inputs(&trigger.inputs, &req.inputs)?;
    let mut targets: Vec<String> = trigger.run.clone();
    let mut environments = Vec::new();
    let rule = trigger.deploy.iter().find(|r| match (&r.branch, branch) {
        (None, _) => true,
        (Some(g), Some(b)) => branch_matches(g, b),
        (Some(_), None) => false,
    });
    if let Some(rule) = rule {
        let env_name = render(&rule.environment, |k| inputs.get(k).cloned())
            .map_err(|k| TriggerError::Input { name: k, problem: "not defined".into() })?;
        let env = p.environments.get(&env_name).ok_or_else(|| TriggerError::UnknownEnvironment(env_name.clone()))?;
        let requires = required_steps(p, &env_name, Some(trigger));
        targets.extend(requires.iter().cloned());
        environments.push(plan_environment(p, &env_name, env, requires, branch));
    }
    let steps = graph.closure(&targets)?;
    Ok(RunPlan { event: req.event.as_str(), branch: req.branch.clone(), trigger: Some(ti), steps, environments })
}

/// The steps an environment requires: one rule for deploys, trigger plans and drawings. Its
/// `requires`; else, for a run of a trigger that deploys it (`via`), that trigger's steps;
/// else the steps of every trigger that deploys to it (directly, or through a choice input
/// that can name it); else every step. Sorted, without duplicates.
pub fn required_steps(p: &Pipeline, env_name: &str, via: Option<&crate::model::Trigger>) -> Vec<String> {
    let Some(env) = p.environments.get(env_name) else { return Vec::new() };
    let mut out: Vec<String> = if !env.requires.is_empty() {
        env.requires.clone()
    } else if let Some(t) = via {
        t.run.clone()
    } else {
        p.triggers
            .iter()
            .filter(|t| {
                t.deploy.iter().any(|r| {
                    r.environment == env_name
                        || crate::model::placeholders(&r.environment).iter().any(|ph| {
                            ph.name.strip_prefix("inputs.").and_then(|i| t.inputs.get(i)).is_some_and(|i| {
                                matches!(&i.kind, crate::model::InputType::Choice(o) if o.iter().any(|x| x == env_name))
                            })
                        })
                })
            })
            .flat_map(|t| t.run.iter().cloned())
            .collect()
    };
    if out.is_empty() {
        out = p.steps.names().map(String::from).collect();
    }
    out.sort();
    out.dedup();
    out
}

/// The placeholders an environment's templates see, without `{region}`.
pub fn env_vars(p: &Pipeline, name: &str, env: &Environment) -> BTreeMap<String, String> {
    let mut vars: BTreeMap<String, String> = BTreeMap::new();
    vars.insert("app".into(), p.name.clone());
    for (k, v) in p.vars.iter().chain(env.vars.iter()) {
        vars.insert(k.clone(), v.clone());
    }
    vars.insert("environment".into(), name.to_string());
    vars
}

/// Render a template with environment vars, an optional region and the release name.
pub fn render_env(template: &str, vars: &BTreeMap<String, String>, region: Option<&str>, release: &str) -> String {
    render(template, |k| match k {
        "region" => region.map(String::from),
        "release" => Some(release.to_string()),
        _ => vars.get(k).cloned(),
    })
    .unwrap_or_else(|missing| format!("{template} (placeholder {{{missing}}} undefined)"))
}

/// The gates and phases of one environment's deploy.
pub fn plan_environment(
    p: &Pipeline,
    name: &str,
    env: &Environment,
    requires: Vec<String>,
    branch: Option<&str>,
) -> EnvPlan {
    let vars = env_vars(p, name, env);
    let release = "<release>";
    let mut gates = Vec::new();
    if !env.branches.is_empty() {
        let open = any_branch(&env.branches, branch);
        gates.push(Gate {
            kind: "branch",
            status: if open { GateStatus::Open } else { GateStatus::Closed },
            detail: format!(
                "deploys only from {}; this run is on {}",
                env.branches.join(", "),
                branch.map(|b| format!("`{b}`")).unwrap_or_else(|| "no branch".into())
            ),
        });
    }
    if let Some(a) = &env.approval {
        let expires = a.expires.map(|d| d.to_string()).unwrap_or_else(|| "24h".into());
        gates.push(Gate {
            kind: "approval",
            status: GateStatus::Pending,
            detail: format!(
                "needs an approval from one of {} for this release (valid {expires}{})",
                a.reviewers.join(", "),
                if a.allow_self_approval { "" } else { "; no self-approval" }
            ),
        });
    }
    for w in &env.windows {
        let days: Vec<String> = w.days.iter().map(|d| format!("{d:?}")).collect();
        gates.push(Gate {
            kind: "window",
            status: GateStatus::Pending,
            detail: format!("{} {}–{} {}", days.join(","), w.start, w.end, w.timezone),
        });
    }
    for f in &env.freezes {
        gates.push(Gate {
            kind: "freeze",
            status: GateStatus::Pending,
            detail: format!("{} → {}: {}", f.from, f.until, f.reason),
        });
    }

    let health = |region: Option<&str>| {
        env.health.as_ref().map(|h| {
            let (Probe::Command(s) | Probe::Tcp(s) | Probe::Http(s)) = &h.probe;
            render_env(s, &vars, region, release)
        })
    };
    let bake = env.bake.map(|b| b.to_string());
    let deploy_phase = |region: Option<&str>, wave: &str| Phase::Deploy {
        region: region.map(String::from),
        wave: wave.to_string(),
        command: render_env(&env.deploy, &vars, region, release),
        health: health(region),
        bake: bake.clone(),
    };
    let mut phases = Vec::new();
    let migration = env.migration.as_ref().map(|m| MigrationPlan {
        phase: m.phase.as_str(),
        command: render_env(&m.run, &vars, None, release),
        timeout: m.timeout.map(|t| t.to_string()),
    });
    if let (Some(m), Some(mp)) = (&env.migration, &migration) {
        if m.phase == MigrationPhase::BeforeFirst {
            phases.push(Phase::Migration { command: mp.command.clone() });
        }
    }
    let regions: Vec<Option<&str>> =
        if env.regions.is_empty() { vec![None] } else { env.regions.iter().map(|r| Some(r.as_str())).collect() };
    match &env.strategy {
        Strategy::Rolling => {
            for r in &regions {
                phases.push(deploy_phase(*r, "rolling"));
            }
        }
        Strategy::Canary(c) => {
            // Without `first`, a traffic canary's canary is every region.
            let is_first = |r: &Option<&str>| c.first.is_empty() || r.is_some_and(|r| c.first.iter().any(|f| f == r));
            for r in regions.iter().filter(|r| is_first(r)) {
                let mut ph = deploy_phase(*r, "canary");
                if let Phase::Deploy { bake, .. } = &mut ph {
                    // With traffic shares, each share is baked instead.
                    *bake = c.shares.is_empty().then(|| c.bake.to_string());
                }
                phases.push(ph);
            }
            if let Some(shift) = c.shift.as_deref().filter(|_| !c.shares.is_empty()) {
                for share in c.shares.iter().copied().chain([100]) {
                    let mut v = vars.clone();
                    v.insert("share".into(), share.to_string());
                    phases.push(Phase::Shift {
                        share,
                        command: render_env(shift, &v, regions[0], release),
                        bake: (share < 100).then(|| c.bake.to_string()),
                    });
                }
            }
            for r in regions.iter().filter(|r| !is_first(r)) {
                phases.push(deploy_phase(*r, "widen"));
            }
        }
        Strategy::BlueGreen(bg) => {
            for r in &regions {
                phases.push(deploy_phase(*r, "green"));
            }
            phases.push(Phase::Switch { command: render_env(&bg.switch, &vars, regions[0], release) });
        }
    }
    if let (Some(m), Some(mp)) = (&env.migration, &migration) {
        if m.phase == MigrationPhase::AfterAll {
            phases.push(Phase::Migration { command: mp.command.clone() });
        }
    }
    EnvPlan {
        name: name.to_string(),
        strategy: env.strategy.as_str(),
        requires,
        regions: env.regions.clone(),
        gates,
        release: None,
        phases,
        migration,
        secrets: env.secrets.names().map(String::from).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Event;

    /// The seed's workflow, compiled in: no file is read when the tests run.
    const SEED: &[u8] = include_bytes!("../../../../pipelines/automata-signal.ron");

    fn plan(
        event: Event,
        branch: Option<&str>,
        inputs: &[(&str, &str)],
    ) -> Result<(Vec<String>, Vec<String>), TriggerError> {
        let p = crate::model::load("automata-signal.ron", SEED).unwrap();
        let g = Graph::build(&p).unwrap();
        let req = TriggerRequest {
            event,
            branch: branch.map(String::from),
            inputs: inputs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        };
        let run = plan_trigger(&p, &g, &req)?;
        let mut steps: Vec<String> = run.steps.iter().map(|&i| g.nodes[i].name.clone()).collect();
        steps.sort();
        Ok((steps, run.environments.iter().map(|e| e.name.clone()).collect()))
    }

    #[test]
    fn the_seed_workflows_events_plan_as_its_yaml_says() {
        let verify = ["compile", "credo", "deps", "dialyzer", "format", "migrations", "sobelow", "test"];
        type Case = (Event, Option<&'static str>, &'static [(&'static str, &'static str)], &'static [&'static str]);
        let cases: &[Case] = &[
            (Event::Push, Some("main"), &[], &["production"]),
            (Event::Push, Some("develop"), &[], &["development"]),
            (Event::PullRequest, Some("main"), &[], &[]),
            (Event::Manual, None, &[("environment", "staging")], &["staging"]),
        ];
        for (event, branch, inputs, envs) in cases {
            let (steps, got) = plan(*event, *branch, inputs).unwrap();
            assert_eq!(steps, verify, "{event:?} {branch:?}");
            assert_eq!(got, *envs, "{event:?} {branch:?} {inputs:?}");
        }
        // A branch no trigger covers runs nothing; a push without a branch is an error.
        assert_eq!(plan(Event::Push, Some("feature/x"), &[]).unwrap(), (vec![], vec![]));
        assert_eq!(plan(Event::Push, None, &[]), Err(TriggerError::BranchNeeded("push")));
    }

    #[test]
    fn an_environments_required_steps_are_one_rule() {
        let p = crate::model::load("automata-signal.ron", SEED).unwrap();
        // Production names its requirements; a manual run's environment takes the trigger's steps.
        let prod = required_steps(&p, "production", None);
        assert!(prod.contains(&"test".to_string()) && !prod.contains(&"audit".to_string()), "{prod:?}");
        assert!(required_steps(&p, "nowhere", None).is_empty());
    }
}
