//! `cairn export github-actions -p PIPELINE`: a workflow that runs a pipeline on GitHub's
//! runners, one job per step, sharing cairn's remote cache.
//!
//! # Shape
//! - `on:` from `triggers`: push and pull_request with the union of their branches,
//!   workflow_dispatch with the manual trigger's inputs.
//! - One **job per step** (a matrix step is one job building all its expansions), `needs:`
//!   following the graph, so independent steps run on separate runners at once. Each job
//!   checks out, installs cairn (`.github/actions/setup-cairn`, by checksum), and runs `cairn
//!   build STEP`: the steps it needs are restored from the remote cache, where their own jobs
//!   stored them, and only the step itself runs. A job runs only for the events (and
//!   branches) whose triggers include the step.
//! - One **job per deploy rule** (`deploy-ENV`), needing the trigger's steps, running
//!   `cairn deploy ENV`. An environment with `approval:` is also a GitHub environment of the
//!   same name, so GitHub holds the job until a required reviewer approves; cairn's own gates
//!   (branch, windows, its approval in the shared ledger, the deploy lock) still apply.
//! - Pull requests get `CAIRN_READ_TOKEN` (read-only: they never write the cache); pushes and
//!   manual runs get `CAIRN_WRITE_TOKEN` and the signing key. Every job has read-only
//!   `contents` permission and no persisted checkout credentials. `cairn build` writes its
//!   summary to the job summary (`GITHUB_STEP_SUMMARY`).
//!
//! The result passes `actionlint` and `zizmor` (tested).

use crate::model::{Event, InputType, Pipeline};
use crate::plan::Graph;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;

/// `actions/checkout` pinned by commit (v4.2.2), as zizmor asks.
const CHECKOUT: &str = "actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2";

/// Where the exported workflow gets cairn from.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pipeline file, relative to the repository root, as jobs pass it to `-p`.
    pub pipeline: String,
    /// The setup action (`./.github/actions/setup-cairn`, or `OWNER/REPO/.github/actions/setup-cairn@SHA`).
    pub setup_action: String,
    /// The cairn version the setup action installs.
    pub version: String,
    /// The runner label.
    pub runs_on: String,
}

/// A YAML scalar, quoted when plain style would change its meaning.
fn q(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./ ".contains(c))
        && !s.starts_with([' ', '-'])
        && !s.ends_with(' ')
        && !matches!(
            s.to_ascii_lowercase().as_str(),
            "true" | "false" | "yes" | "no" | "on" | "off" | "null" | "y" | "n"
        )
        && s.parse::<f64>().is_err();
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "''"))
    }
}

/// An `if:` value: the bare expression when YAML reads it as plain text, else quoted.
fn cond(expr: &str) -> String {
    let plain = !expr.contains(": ")
        && !expr.contains(" #")
        && !expr.starts_with(['!', '\'', '"', '*', '&', '{', '[', '|', '>', '%', '@', '`', '-', '?', ':', ',', '#']);
    if plain {
        expr.to_string()
    } else {
        q(expr)
    }
}

/// A valid job id for a step name.
fn job_id(name: &str) -> String {
    let mut id: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' }).collect();
    if !id.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_') {
        id.insert(0, '_');
    }
    id
}

/// A GitHub expression testing a branch glob against `ref_expr` (`github.ref` or
/// `github.base_ref`); `None` when the glob has no expression form.
fn branch_test(ref_expr: &str, glob: &str, full_ref: bool) -> Option<String> {
    let prefix = if full_ref { "refs/heads/" } else { "" };
    if !glob.contains(['*', '?', '[', '{']) {
        return Some(format!("{ref_expr} == '{prefix}{glob}'"));
    }
    let head = glob.strip_suffix("**").or_else(|| glob.strip_suffix('*'))?;
    (!head.contains(['*', '?', '[', '{'])).then(|| format!("startsWith({ref_expr}, '{prefix}{head}')"))
}

/// The condition under which a trigger applies (event and branch).
fn trigger_test(on: Event, branches: &[String]) -> String {
    let (event, ref_expr, full) = match on {
        Event::Push => ("push", "github.ref", true),
        Event::PullRequest => ("pull_request", "github.base_ref", false),
        Event::Manual => ("workflow_dispatch", "github.ref", true),
    };
    let tests: Vec<String> = branches.iter().filter_map(|b| branch_test(ref_expr, b, full)).collect();
    if tests.is_empty() || tests.len() < branches.len() {
        format!("github.event_name == '{event}'")
    } else {
        format!("(github.event_name == '{event}' && ({}))", tests.join(" || "))
    }
}

/// The environment variable a secret is read from (its `Env(...)` source, through `Inherit`),
/// which the job sets from the GitHub secret of the same name; `None` for file and command
/// sources (the runner provides those itself).
fn env_var(p: &Pipeline, env: Option<&crate::model::Environment>, name: &str) -> Option<String> {
    use crate::model::SecretSource;
    let source = env.and_then(|e| e.secrets.get(name)).filter(|s| !matches!(s, SecretSource::Inherit));
    match source.or_else(|| p.secrets.get(name))? {
        SecretSource::Env(v) => Some(v.clone()),
        _ => None,
    }
}

/// The workflow for pipeline `p`.
pub fn export(p: &Pipeline, g: &Graph, o: &Options) -> String {
    let mut y = String::new();
    let _ = writeln!(
        y,
        "# Generated by `cairn export github-actions -p {}`: regenerate it rather than edit it.",
        o.pipeline
    );
    y.push_str("# One job per step; each restores what it needs from cairn's remote cache (CAIRN_REMOTE,\n");
    y.push_str("# a repository variable) and runs only its own step. Secrets: CAIRN_READ_TOKEN (pull\n");
    y.push_str("# requests), CAIRN_WRITE_TOKEN and CAIRN_SIGNING_KEY (pushes, manual runs). See\n");
    y.push_str("# docs/github-actions.md in cairn's repository.\n");
    let _ = writeln!(y, "name: {}", q(&p.name));
    // on:
    y.push_str("on:\n");
    let by_event = |e: Event| p.triggers.iter().filter(move |t| t.on == e).collect::<Vec<_>>();
    for (e, key) in [(Event::Push, "push"), (Event::PullRequest, "pull_request")] {
        let ts = by_event(e);
        if ts.is_empty() {
            continue;
        }
        let _ = writeln!(y, "  {key}:");
        if ts.iter().all(|t| !t.branches.is_empty()) {
            let b: BTreeSet<&String> = ts.iter().flat_map(|t| &t.branches).collect();
            let _ = writeln!(y, "    branches: [{}]", b.iter().map(|b| q(b)).collect::<Vec<_>>().join(", "));
        }
    }
    let manual = by_event(Event::Manual);
    if !manual.is_empty() {
        y.push_str("  workflow_dispatch:\n");
        let inputs: Vec<_> = manual.iter().flat_map(|t| t.inputs.iter()).collect();
        if !inputs.is_empty() {
            y.push_str("    inputs:\n");
            for (name, i) in inputs {
                let _ = writeln!(y, "      {name}:");
                if let Some(d) = &i.description {
                    let _ = writeln!(y, "        description: {}", q(d));
                }
                let _ = writeln!(y, "        required: {}", i.default.is_none());
                match &i.kind {
                    InputType::Choice(opts) => {
                        y.push_str("        type: choice\n        options:\n");
                        for opt in opts {
                            let _ = writeln!(y, "          - {}", q(opt));
                        }
                    }
                    InputType::Boolean => y.push_str("        type: boolean\n"),
                    InputType::Number => y.push_str("        type: number\n"),
                    InputType::String => y.push_str("        type: string\n"),
                }
                if let Some(d) = &i.default {
                    let _ = writeln!(y, "        default: {}", q(d));
                }
            }
        }
    }
    y.push_str("permissions: {}\n");
    y.push_str("env:\n  CAIRN_REMOTE: ${{ vars.CAIRN_REMOTE }}\n");
    y.push_str("jobs:\n");

    // Which triggers run each step (by base name), through `run` and what it needs.
    let mut runs_in: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (ti, t) in p.triggers.iter().enumerate() {
        if let Ok(closure) = g.closure(&t.run) {
            for i in closure {
                let v = runs_in.entry(g.nodes[i].base.clone()).or_default();
                if !v.contains(&ti) {
                    v.push(ti);
                }
            }
        }
    }
    let all: Vec<usize> = (0..p.triggers.len()).collect();
    let cond_for = |ts: &[usize]| -> Option<String> {
        if ts.len() == all.len() && p.triggers.iter().all(|t| t.branches.is_empty()) {
            return None;
        }
        let tests: BTreeSet<String> =
            ts.iter().map(|&ti| trigger_test(p.triggers[ti].on, &p.triggers[ti].branches)).collect();
        Some(tests.into_iter().collect::<Vec<_>>().join(" || "))
    };
    let token = "${{ github.event_name == 'pull_request' && secrets.CAIRN_READ_TOKEN || secrets.CAIRN_WRITE_TOKEN }}";
    let signing = "${{ github.event_name != 'pull_request' && secrets.CAIRN_SIGNING_KEY || '' }}";
    let setup = |y: &mut String| {
        let _ = writeln!(y, "      - uses: {CHECKOUT}\n        with:\n          persist-credentials: false");
        let _ = writeln!(y, "      - uses: {}\n        with:\n          version: {}", o.setup_action, q(&o.version));
    };
    let key_script = "          if [ -n \"$CAIRN_SIGNING_KEY_TEXT\" ]; then\n            printf '%s\\n' \"$CAIRN_SIGNING_KEY_TEXT\" > \"$RUNNER_TEMP/cairn.key\"\n            export CAIRN_SIGNING_KEY=\"$RUNNER_TEMP/cairn.key\"\n          fi\n";

    // Step jobs, in the graph's order, one per base step.
    let mut done = BTreeSet::new();
    for n in &g.nodes {
        if !done.insert(n.base.clone()) || !runs_in.contains_key(&n.base) {
            continue;
        }
        let step = &n.step;
        let needs: BTreeSet<String> = step.needs.iter().map(|d| job_id(d)).collect();
        let _ = writeln!(y, "  {}:", job_id(&n.base));
        let _ = writeln!(y, "    name: {}", q(&n.base));
        let _ = writeln!(y, "    runs-on: {}", q(&o.runs_on));
        if !needs.is_empty() {
            let _ = writeln!(y, "    needs: [{}]", needs.into_iter().collect::<Vec<_>>().join(", "));
        }
        if let Some(c) = cond_for(&runs_in[&n.base]) {
            let _ = writeln!(y, "    if: {}", cond(&c));
        }
        y.push_str("    permissions:\n      contents: read\n");
        if let Some(t) = step.timeout {
            let _ = writeln!(y, "    timeout-minutes: {}", t.0.as_secs().div_ceil(60) + 10);
        }
        if !step.toolchains.is_empty() {
            let _ = writeln!(
                y,
                "    # Needs the toolchains {}: install them before `cairn build` (setup actions, pinned).",
                step.toolchains.join(", ")
            );
        }
        y.push_str("    steps:\n");
        setup(&mut y);
        let _ = writeln!(y, "      - name: cairn build {}", q(&n.base));
        y.push_str("        env:\n");
        let _ = writeln!(y, "          CAIRN_TOKEN: {token}");
        let _ = writeln!(y, "          CAIRN_SIGNING_KEY_TEXT: {signing}");
        for v in step.secrets.iter().filter_map(|s| env_var(p, None, s)).collect::<BTreeSet<_>>() {
            let _ = writeln!(y, "          {v}: ${{{{ secrets.{v} }}}}");
        }
        y.push_str("        run: |\n");
        y.push_str(key_script);
        let _ = writeln!(y, "          cairn build -p {} {}", q(&o.pipeline), q(&n.base));
    }

    // Deploy jobs: one per (trigger, rule), merged per environment.
    let mut deploys: BTreeMap<String, (BTreeSet<String>, BTreeSet<String>)> = BTreeMap::new(); // env → (needs, conditions)
    for t in &p.triggers {
        let needs: BTreeSet<String> = t.run.iter().map(|r| job_id(r)).collect();
        for rule in &t.deploy {
            let branches: Vec<String> = rule.branch.iter().cloned().collect();
            let mut base = trigger_test(t.on, if branches.is_empty() { &t.branches } else { &branches });
            let envs: Vec<String> = match rule.environment.strip_prefix("{inputs.").and_then(|r| r.strip_suffix('}')) {
                Some(input) => {
                    let opts = match t.inputs.get(input).map(|i| &i.kind) {
                        Some(InputType::Choice(o)) => o.clone(),
                        _ => p.environments.names().map(String::from).collect(),
                    };
                    base = format!("{base} && github.event.inputs.{input} == '{{ENV}}'");
                    opts
                }
                None => vec![rule.environment.clone()],
            };
            for env in envs {
                if p.environments.get(&env).is_none() {
                    continue;
                }
                let e = deploys.entry(env.clone()).or_default();
                e.0.extend(needs.iter().cloned());
                e.1.insert(base.replace("{ENV}", &env));
            }
        }
    }
    for (env, (needs, conds)) in &deploys {
        let Some(e) = p.environments.get(env) else { continue };
        let _ = writeln!(y, "  {}:", job_id(&format!("deploy-{env}")));
        let _ = writeln!(y, "    name: {}", q(&format!("deploy {env}")));
        let _ = writeln!(y, "    runs-on: {}", q(&o.runs_on));
        if !needs.is_empty() {
            let _ = writeln!(y, "    needs: [{}]", needs.iter().cloned().collect::<Vec<_>>().join(", "));
        }
        let c: Vec<&String> = conds.iter().collect();
        let _ = writeln!(y, "    if: {}", cond(&c.iter().map(|c| format!("({c})")).collect::<Vec<_>>().join(" || ")));
        if e.approval.is_some() {
            let _ = writeln!(
                y,
                "    # Approval: GitHub environment `{env}` (set its required reviewers in the repository's settings)."
            );
            let _ = writeln!(y, "    environment: {}", q(env));
        }
        let _ = writeln!(
            y,
            "    concurrency:\n      group: {}\n      cancel-in-progress: false",
            q(&format!("cairn-deploy-{env}"))
        );
        y.push_str("    permissions:\n      contents: read\n    steps:\n");
        setup(&mut y);
        let _ = writeln!(y, "      - name: cairn deploy {}", q(env));
        y.push_str("        env:\n");
        y.push_str("          CAIRN_TOKEN: ${{ secrets.CAIRN_WRITE_TOKEN }}\n");
        y.push_str("          CAIRN_APPROVAL: ${{ secrets.CAIRN_APPROVAL }}\n");
        let names: BTreeSet<&str> = e.secrets.names().collect();
        for v in names.into_iter().filter_map(|s| env_var(p, Some(e), s)).collect::<BTreeSet<_>>() {
            let _ = writeln!(y, "          {v}: ${{{{ secrets.{v} }}}}");
        }
        let _ = writeln!(y, "        run: cairn deploy {} -p {}", q(env), q(&o.pipeline));
    }
    y
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_and_ids() {
        assert_eq!(q("main"), "main");
        assert_eq!(q("on"), "'on'");
        assert_eq!(q("it's"), "'it''s'");
        assert_eq!(q("1.18"), "'1.18'");
        assert_eq!(job_id("test[otp=26]"), "test-otp-26-");
        assert_eq!(job_id("1st"), "_1st");
        assert_eq!(
            branch_test("github.ref", "release/*", true).unwrap(),
            "startsWith(github.ref, 'refs/heads/release/')"
        );
        assert!(branch_test("github.ref", "*/x", true).is_none());
    }
}
