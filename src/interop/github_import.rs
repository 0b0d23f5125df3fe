//! `cairn import github-actions WORKFLOW.yml`: a GitHub Actions workflow as a cairn pipeline.
//!
//! # What becomes what
//! - `on:` push / pull_request (with `branches`) and `workflow_dispatch` (with `inputs`) →
//!   `triggers`; other events are named in a comment (cairn has no trigger for them).
//! - A job → one **step** named after the job: its `run:` steps become one command (`set -e`,
//!   in order, as the job ran them on one runner), `needs:` → `needs`, `env:` and
//!   `${{ secrets.X }}` → `env` and `secrets`, `services:` → services with readiness probes
//!   from their health options, `strategy.matrix` → `matrix`, `timeout-minutes` → `timeout`.
//!   One step per job keeps a job's state (files one `run:` leaves for the next) where it was;
//!   `cairn learn` then tells which inputs and outputs each has, to split it where useful.
//! - A job with `environment:`, or whose id or name starts with "deploy" → an **environment**:
//!   its first `run:` is the deploy command (a `for R in A B C; do ...; done` loop becomes
//!   `regions: ["A", "B", "C"]` with `{region}`), a later `run:` that migrates becomes the
//!   `migration`, `environment:` (GitHub's protection rules) becomes an `approval`, and the
//!   job's `if: github.event_name == ... && github.ref == ...` decides which triggers deploy it
//!   and from which branches.
//! - `actions/cache` → dropped (a comment says so); its paths become the step's `outputs`,
//!   stored under the step's key. `actions/checkout` → nothing. Known setup actions
//!   (`erlef/setup-beam`, `actions/setup-node`, `dtolnay/rust-toolchain`, ...) → `toolchains`
//!   with `require`. Any other `uses:`, and expressions cairn cannot give a step (another
//!   step's outputs), → a step with `unported:` that `cairn check` reports until a person
//!   replaces it.
//!
//! Every step reads every tracked file (`inputs: ["**"]`): a correct key from the first run,
//! if a coarse one. The pipeline runs its steps in `Report` sandbox mode and lets them use the
//! network as GitHub's runners do, so the first build names what each step really reads.

use super::{ron_list, ron_str};
use serde_yaml_ng::Value;
use std::collections::{BTreeMap, BTreeSet};

/// What `import` needs besides the text.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// The pipeline's name (default: the workflow's `name:`, as a slug).
    pub name: Option<String>,
}

/// An imported pipeline: RON text, and what a person should look at.
#[derive(Debug)]
pub struct Imported {
    pub ron: String,
    /// Things dropped or left for a person, each naming its workflow line.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{file}:{line}: {message}\n  hint: {hint}")]
    At { file: String, line: usize, message: String, hint: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Push,
    PullRequest,
    Manual,
}

impl Event {
    fn ron(self) -> &'static str {
        match self {
            Event::Push => "Push",
            Event::PullRequest => "PullRequest",
            Event::Manual => "Manual",
        }
    }
}

/// A job's `if:` as alternatives of (event, branch); `None`: always.
#[derive(Debug, Clone, Default)]
struct Cond(Option<Vec<(Option<Event>, Option<String>)>>);

impl Cond {
    fn admits(&self, e: Event) -> Vec<Option<String>> {
        match &self.0 {
            None => vec![None],
            Some(alts) => alts.iter().filter(|(ev, _)| ev.is_none_or(|x| x == e)).map(|(_, b)| b.clone()).collect(),
        }
    }
}

#[derive(Default)]
struct StepOut {
    name: String,
    comments: Vec<String>,
    parts: Vec<String>,
    needs: Vec<String>,
    env: BTreeMap<String, String>,
    secrets: BTreeSet<String>,
    pass_env: BTreeSet<String>,
    toolchains: BTreeSet<String>,
    services: Vec<String>,
    outputs: Vec<String>,
    matrix: Vec<(String, Vec<String>)>,
    timeout: Option<String>,
    workdir: Option<String>,
    unported: Option<String>,
    cond: Cond,
}

#[derive(Default)]
struct EnvOut {
    name: String,
    comments: Vec<String>,
    approval: bool,
    secrets: BTreeSet<String>,
    deploy: Option<String>,
    regions: Vec<String>,
    migration: Option<String>,
    requires: Vec<String>,
    cond: Cond,
}

struct Ctx<'a> {
    file: &'a str,
    text: &'a str,
    notes: Vec<String>,
    secrets: BTreeSet<String>,
    toolchains: BTreeMap<String, (String, Option<String>)>,
    services: BTreeMap<String, String>,
}

impl Ctx<'_> {
    /// The first line at or after `from` holding `needle` (1-based; `from` if none does).
    fn line(&self, needle: &str, from: usize) -> usize {
        self.text
            .lines()
            .enumerate()
            .skip(from.saturating_sub(1))
            .find(|(_, l)| l.contains(needle))
            .map_or(from.max(1), |(i, _)| i + 1)
    }

    fn note(&mut self, line: usize, what: String) {
        self.notes.push(format!("{}:{line}: {what}", self.file));
    }

    fn err(&self, line: usize, message: String, hint: &str) -> ImportError {
        ImportError::At { file: self.file.to_string(), line, message, hint: hint.to_string() }
    }
}

fn get<'v>(v: &'v Value, key: &str) -> Option<&'v Value> {
    v.as_mapping()?.get(key)
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn strings(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Sequence(s)) => s.iter().filter_map(as_string).collect(),
        Some(v) => as_string(v).into_iter().collect(),
        None => vec![],
    }
}

/// `Deploy to Development` → `development`; `deploy_dev` → `dev`.
fn slug(s: &str) -> String {
    let mut o = String::new();
    for c in s.trim().chars() {
        if c.is_ascii_alphanumeric() {
            o.push(c.to_ascii_lowercase());
        } else if !o.ends_with('-') && !o.is_empty() {
            o.push('-');
        }
    }
    o.trim_end_matches('-').to_string()
}

/// Double the braces of anything that would read as a cairn `{placeholder}`.
fn escape_braces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let b: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < b.len() {
        if b[i] == '{' && (i == 0 || b[i - 1] != '$') {
            let n = b[i + 1..].iter().take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')).count();
            if n > 0 && b.get(i + 1 + n) == Some(&'}') {
                out.push_str("{{");
                out.extend(&b[i + 1..i + 1 + n]);
                out.push_str("}}");
                i += n + 2;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// What a `${{ expr }}` becomes in a command; `Err(expr)` when cairn cannot give it.
fn expression(expr: &str, secrets: &mut BTreeSet<String>, pass_env: &mut BTreeSet<String>) -> Result<String, String> {
    let e = expr.trim();
    let ident = |s: &str| s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if let Some(x) = e.strip_prefix("secrets.").filter(|x| ident(x)) {
        secrets.insert(x.to_string());
        return Ok(format!("${x}"));
    }
    if let Some(x) = e.strip_prefix("env.").filter(|x| ident(x)) {
        return Ok(format!("${x}"));
    }
    if let Some(x) = e.strip_prefix("matrix.").filter(|x| ident(x)) {
        return Ok(format!("{{matrix.{x}}}"));
    }
    if let Some(x) = e.strip_prefix("vars.").filter(|x| ident(x)) {
        pass_env.insert(x.to_string());
        return Ok(format!("${x}"));
    }
    for (prefix, env) in [("github.", "GITHUB_"), ("runner.", "RUNNER_")] {
        if let Some(x) = e.strip_prefix(prefix).filter(|x| ident(x) && !x.contains('.')) {
            let name = format!("{env}{}", x.to_ascii_uppercase());
            pass_env.insert(name.clone());
            return Ok(format!("${name}"));
        }
    }
    for prefix in ["inputs.", "github.event.inputs."] {
        if let Some(x) = e.strip_prefix(prefix).filter(|x| ident(x)) {
            let name = format!("INPUT_{}", x.to_ascii_uppercase().replace('-', "_"));
            pass_env.insert(name.clone());
            return Ok(format!("${name}"));
        }
    }
    Err(e.to_string())
}

/// A command with its `${{ }}` expressions replaced; `Err` names the first it cannot give.
fn command(
    run: &str,
    secrets: &mut BTreeSet<String>,
    pass_env: &mut BTreeSet<String>,
    allow: &[(&str, &str)],
) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = run;
    while let Some(i) = rest.find("${{") {
        out.push_str(&escape_braces(&rest[..i]));
        let Some(j) = rest[i..].find("}}") else {
            return Err(rest[i..].to_string());
        };
        let expr = rest[i + 3..i + j].trim();
        match allow.iter().find(|(k, _)| *k == expr) {
            Some((_, v)) => out.push_str(v),
            None => out.push_str(&expression(expr, secrets, pass_env)?),
        }
        rest = &rest[i + j + 2..];
    }
    out.push_str(&escape_braces(rest));
    Ok(out.trim_end().to_string())
}

/// `github.event_name == 'push' && github.ref == 'refs/heads/main'` and the like; `None`
/// when the expression has other terms.
fn parse_if(expr: &str) -> Option<Cond> {
    let e = expr.trim();
    let e = e.strip_prefix("${{").and_then(|x| x.strip_suffix("}}")).unwrap_or(e).trim();
    let mut alts = Vec::new();
    for alt in e.split("||") {
        let mut event = None;
        let mut branch = None;
        for term in alt.split("&&") {
            let t = term.trim().trim_start_matches('(').trim_end_matches(')').trim();
            if matches!(t, "success()" | "always()" | "!cancelled()" | "true") {
                continue;
            }
            let (lhs, rhs) = t.split_once("==")?;
            let (lhs, rhs) = (lhs.trim(), rhs.trim().trim_matches(['\'', '"']));
            match lhs {
                "github.event_name" => {
                    event = Some(match rhs {
                        "push" => Event::Push,
                        "pull_request" | "pull_request_target" => Event::PullRequest,
                        "workflow_dispatch" => Event::Manual,
                        _ => return None,
                    })
                }
                "github.ref" => branch = Some(rhs.strip_prefix("refs/heads/")?.to_string()),
                "github.ref_name" => branch = Some(rhs.to_string()),
                _ => return None,
            }
        }
        alts.push((event, branch));
    }
    Some(Cond(Some(alts)))
}

/// `for region in nrt fra syd; do CMD; done` → (["nrt", "fra", "syd"], CMD with {region}).
fn region_loop(run: &str) -> Option<(Vec<String>, String)> {
    let t = run.trim();
    let rest = t.strip_prefix("for ")?;
    let (var, rest) = rest.split_once(" in ")?;
    let var = var.trim();
    let (list, rest) = rest.split_once("do")?;
    let list: Vec<String> = list.trim().trim_end_matches(';').split_whitespace().map(String::from).collect();
    let body = rest.trim().strip_suffix("done")?.trim().trim_end_matches(';').trim();
    if list.is_empty() || body.contains("\ndone") || body.lines().count() > 1 {
        return None;
    }
    let body = body.replace(&format!("${{{var}}}"), "{region}").replace(&format!("${var}"), "{region}");
    Some((list, body))
}

/// A known setup action → (toolchain name, probe, version input).
fn setup_action(action: &str) -> Option<Vec<(&'static str, &'static str, &'static str)>> {
    Some(match action {
        "erlef/setup-beam" | "erlef/setup-elixir" => vec![
            ("elixir", "elixir --version", "elixir-version"),
            ("otp", "erl -noshell -eval 'io:put_chars(erlang:system_info(otp_release)), halt().'", "otp-version"),
        ],
        "actions/setup-node" => vec![("node", "node --version", "node-version")],
        "actions/setup-python" => vec![("python", "python3 --version", "python-version")],
        "actions/setup-go" => vec![("go", "go version", "go-version")],
        "actions/setup-java" => vec![("java", "java -version 2>&1", "java-version")],
        "ruby/setup-ruby" => vec![("ruby", "ruby --version", "ruby-version")],
        "dtolnay/rust-toolchain" | "actions-rs/toolchain" => vec![("rustc", "rustc --version", "toolchain")],
        "pnpm/action-setup" => vec![("pnpm", "pnpm --version", "version")],
        "superfly/flyctl-actions/setup-flyctl" => vec![("flyctl", "flyctl version", "version")],
        "hashicorp/setup-terraform" => vec![("terraform", "terraform version", "terraform_version")],
        _ => return None,
    })
}

/// A GitHub service container as a cairn service (PostgreSQL and Redis from the machine's own
/// binaries; anything else through `docker run`).
fn service(cx: &mut Ctx, name: &str, v: &Value, line: usize) -> String {
    let image = get(v, "image").and_then(as_string).unwrap_or_default();
    let env: BTreeMap<String, String> = get(v, "env")
        .and_then(Value::as_mapping)
        .map(|m| m.iter().filter_map(|(k, v)| Some((as_string(k)?, as_string(v)?))).collect())
        .unwrap_or_default();
    let ports = strings(get(v, "ports"));
    let host_port = ports.first().and_then(|p| p.split(':').next()).and_then(|p| p.parse::<u16>().ok());
    let cport = ports.first().and_then(|p| p.rsplit(':').next()).unwrap_or("80").to_string();
    let options = get(v, "options").and_then(as_string).unwrap_or_default();
    let opt = |flag: &str| {
        let words: Vec<&str> = options.split_whitespace().collect();
        words.iter().position(|w| *w == flag).and_then(|i| words.get(i + 1)).map(|s| s.to_string())
    };
    let ready = format!(
        "interval: {}, timeout: {}, retries: {}",
        ron_str(&opt("--health-interval").unwrap_or_else(|| "2s".into())),
        ron_str(&opt("--health-timeout").unwrap_or_else(|| "5s".into())),
        opt("--health-retries").unwrap_or_else(|| "30".into())
    );
    let port = host_port.map(|p| format!("\n            // The workflow's port; drop it to let cairn pick a free one (then use what the service exports).\n            port: {p},")).unwrap_or_default();
    let kind = image.split([':', '@']).next().unwrap_or("").rsplit('/').next().unwrap_or("");
    match kind {
        "postgres" | "postgis" => {
            let user = env.get("POSTGRES_USER").cloned().unwrap_or_else(|| "postgres".into());
            let password = env.get("POSTGRES_PASSWORD").cloned().unwrap_or_default();
            let db = env.get("POSTGRES_DB").cloned();
            let init = db
                .as_ref()
                .map(|d| format!("\n            init: {},", ron_str(&format!("createdb -h 127.0.0.1 -p {{port}} -U {user} {d}"))))
                .unwrap_or_default();
            let url_db = db.clone().unwrap_or_else(|| user.clone());
            format!(
                "        // services.{name} ({image}): PostgreSQL from the machine's own binaries, no Docker.\n        {}: (\n            setup: {},\n            start: \"postgres -D {{dir}}/data -p {{port}} -k {{dir}} -c listen_addresses=127.0.0.1 -c fsync=off\",{init}{port}\n            env: {{\"PGPASSWORD\": {}}},\n            export: {{\n                \"DATABASE_URL\": {},\n                \"PGHOST\": \"127.0.0.1\",\n                \"PGPORT\": \"{{port}}\",\n                \"PGUSER\": {},\n            }},\n            ready: (probe: Command(\"pg_isready -h 127.0.0.1 -p {{port}}\"), {ready}),\n        ),\n",
                ron_str(name),
                ron_str(&format!("initdb -D {{dir}}/data -U {user} --auth=trust --no-sync >/dev/null")),
                ron_str(&password),
                ron_str(&format!("postgres://{user}:{password}@127.0.0.1:{{port}}/{url_db}")),
                ron_str(&user),
            )
        }
        "redis" | "valkey" => format!(
            "        // services.{name} ({image}): Redis from the machine's own binaries.\n        {}: (\n            start: \"redis-server --port {{port}} --save '' --appendonly no\",{port}\n            export: {{\"REDIS_URL\": \"redis://127.0.0.1:{{port}}\"}},\n            ready: (probe: Command(\"redis-cli -p {{port}} ping\"), {ready}),\n        ),\n",
            ron_str(name)
        ),
        _ => {
            if image.is_empty() {
                cx.note(line, format!("service `{name}` has no image; it became a service that runs `false`"));
            }
            let envs: String = env.iter().map(|(k, v)| format!(" -e {k}={}", shell_quote(v))).collect();
            format!(
                "        // services.{name} ({image}), through Docker.\n        {}: (\n            start: {},{port}\n            ready: (probe: Tcp(\"127.0.0.1:{{port}}\"), {ready}),\n        ),\n",
                ron_str(name),
                ron_str(&if image.is_empty() {
                    "false".to_string()
                } else {
                    // `{port}` is cairn's; braces in the workflow's values are not.
                    format!("docker run --rm -p 127.0.0.1:{{port}}:{cport}{} {}", escape_braces(&envs), escape_braces(&image))
                })
            )
        }
    }
}

fn shell_quote(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./:@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Import a workflow's text.
pub fn import(file: &str, text: &str, opts: &Options) -> Result<Imported, ImportError> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| ImportError::At {
        file: file.to_string(),
        line: e.location().map_or(1, |l| l.line()),
        message: format!("not valid YAML: {e}"),
        hint: "fix the workflow so GitHub would accept it, then import again".into(),
    })?;
    let mut cx = Ctx {
        file,
        text,
        notes: vec![],
        secrets: BTreeSet::new(),
        toolchains: BTreeMap::new(),
        services: BTreeMap::new(),
    };
    if !doc.is_mapping() {
        return Err(cx.err(
            1,
            "a workflow is a mapping with `on:` and `jobs:`".into(),
            "is this a GitHub Actions workflow?",
        ));
    }
    let jobs = get(&doc, "jobs").and_then(Value::as_mapping).ok_or_else(|| {
        cx.err(cx.line("jobs", 1), "the workflow has no `jobs:` mapping".into(), "a workflow needs at least one job")
    })?;
    let wf_name = get(&doc, "name").and_then(as_string);
    let name = opts.name.clone().unwrap_or_else(|| {
        let s = slug(wf_name.as_deref().unwrap_or(""));
        if s.is_empty() {
            slug(std::path::Path::new(file).file_stem().and_then(|s| s.to_str()).unwrap_or("workflow"))
        } else {
            s
        }
    });

    // Workflow-level env: every job gets it.
    let mut wf_env = BTreeMap::new();
    let mut wf_pass = BTreeSet::new();
    if let Some(m) = get(&doc, "env").and_then(Value::as_mapping) {
        for (k, v) in m {
            if let (Some(k), Some(v)) = (as_string(k), as_string(v)) {
                let l = cx.line(&format!("{k}:"), 1);
                let mut secrets = BTreeSet::new();
                match command(&v, &mut secrets, &mut wf_pass, &[]) {
                    Ok(v) => {
                        if secrets.is_empty() {
                            wf_env.insert(k, v);
                        } else {
                            cx.secrets.extend(secrets);
                        }
                    }
                    Err(e) => cx.note(l, format!("env `{k}` uses `${{{{ {e} }}}}`, which cairn cannot give; dropped")),
                }
            }
        }
    }

    // Triggers.
    let on = doc.as_mapping().and_then(|m| m.get("on").or_else(|| m.get(Value::Bool(true))));
    let mut triggers: Vec<(Event, Vec<String>, String)> = Vec::new();
    let on_line = cx.line("on:", 1);
    let events: Vec<(String, Value)> = match on {
        Some(Value::String(s)) => vec![(s.clone(), Value::Null)],
        Some(Value::Sequence(s)) => s.iter().filter_map(as_string).map(|e| (e, Value::Null)).collect(),
        Some(Value::Mapping(m)) => m.iter().filter_map(|(k, v)| Some((as_string(k)?, v.clone()))).collect(),
        _ => return Err(cx.err(on_line, "the workflow has no `on:`".into(), "say which events run it")),
    };
    for (event, v) in &events {
        let l = cx.line(event, on_line);
        let e = match event.as_str() {
            "push" => Event::Push,
            "pull_request" | "pull_request_target" => Event::PullRequest,
            "workflow_dispatch" => Event::Manual,
            other => {
                cx.note(
                    l,
                    format!("`on: {other}` has no cairn trigger; run `cairn run --event manual` from what fires it"),
                );
                continue;
            }
        };
        for unsupported in ["branches-ignore", "paths", "paths-ignore", "tags-ignore", "types"] {
            if get(v, unsupported).is_some() {
                cx.note(
                    cx.line(unsupported, l),
                    format!("`{event}.{unsupported}` is not a cairn trigger filter; the trigger runs without it (cairn's keys skip unchanged steps anyway)"),
                );
            }
        }
        let branches = strings(get(v, "branches"));
        if e == Event::Push && branches.is_empty() && get(v, "tags").is_some() {
            cx.note(l, "a push of tags has no cairn trigger (cairn triggers on branches); dropped".into());
            continue;
        }
        let mut inputs = String::new();
        if let Some(m) = get(v, "inputs").and_then(Value::as_mapping) {
            let mut lines = Vec::new();
            for (k, iv) in m {
                let Some(k) = as_string(k) else { continue };
                let kind = match get(iv, "type").and_then(as_string).as_deref() {
                    Some("choice") => format!("Choice({})", ron_list(strings(get(iv, "options")))),
                    Some("boolean") => "Boolean".into(),
                    Some("number") => "Number".into(),
                    _ => "String".into(),
                };
                let default = get(iv, "default")
                    .and_then(as_string)
                    .map(|d| format!(", default: {}", ron_str(&d)))
                    .unwrap_or_default();
                let desc = get(iv, "description")
                    .and_then(as_string)
                    .map(|d| format!(", description: {}", ron_str(&d)))
                    .unwrap_or_default();
                lines.push(format!("                {}: (type: {kind}{default}{desc}),", ron_str(&k)));
            }
            if !lines.is_empty() {
                inputs = format!("            inputs: {{\n{}\n            }},\n", lines.join("\n"));
            }
        }
        triggers.push((e, branches, inputs));
    }

    // Jobs.
    let mut steps: Vec<StepOut> = Vec::new();
    let mut envs: Vec<EnvOut> = Vec::new();
    let mut extra_steps: Vec<StepOut> = Vec::new();
    let mut job_kind: BTreeMap<String, bool> = BTreeMap::new(); // id → is a deploy
    for (id, job) in jobs {
        let Some(id) = as_string(id) else { continue };
        let jl = cx.line(&format!("{id}:"), cx.line("jobs:", 1));
        let jname = get(job, "name").and_then(as_string);
        let deploy = get(job, "environment").is_some()
            || id.to_ascii_lowercase().starts_with("deploy")
            || jname.as_deref().is_some_and(|n| n.to_ascii_lowercase().starts_with("deploy"));
        job_kind.insert(id.clone(), deploy);
        if get(job, "uses").is_some() {
            let uses = get(job, "uses").and_then(as_string).unwrap_or_default();
            let l = cx.line(&uses, jl);
            extra_steps.push(StepOut {
                name: id.clone(),
                unported: Some(format!("the reusable workflow `{uses}` (workflow line {l})")),
                needs: strings(get(job, "needs")),
                ..Default::default()
            });
            cx.note(l, format!("job `{id}` calls the reusable workflow `{uses}`: import that workflow too, then replace step `{id}`"));
            continue;
        }
        let cond = match get(job, "if").and_then(as_string) {
            None => Cond::default(),
            Some(expr) => parse_if(&expr).unwrap_or_else(|| {
                let l = cx.line("if:", jl);
                cx.note(l, format!("job `{id}`'s `if: {expr}` is not an event/branch test cairn can map; the job runs on every trigger"));
                Cond::default()
            }),
        };
        let mut s = StepOut { name: id.clone(), cond: cond.clone(), ..Default::default() };
        if let Some(n) = &jname {
            s.comments.push(n.clone());
        }
        s.needs = strings(get(job, "needs"));
        s.env = wf_env.clone();
        s.pass_env = wf_pass.clone();
        if let Some(m) = get(job, "env").and_then(Value::as_mapping) {
            for (k, v) in m {
                let (Some(k), Some(v)) = (as_string(k), as_string(v)) else { continue };
                let mut sec = BTreeSet::new();
                match command(&v, &mut sec, &mut s.pass_env, &[]) {
                    Ok(val) if sec.is_empty() => {
                        s.env.insert(k, val);
                    }
                    Ok(_) => s.secrets.extend(sec.into_iter().map(|_| k.clone())),
                    Err(e) => cx.note(
                        cx.line(&format!("{k}:"), jl),
                        format!("env `{k}` of job `{id}` uses `${{{{ {e} }}}}`; dropped"),
                    ),
                }
            }
        }
        if let Some(t) = get(job, "timeout-minutes").and_then(as_string) {
            s.timeout = Some(format!("{t}m"));
        }
        if let Some(w) = get(job, "defaults")
            .and_then(|d| get(d, "run"))
            .and_then(|r| get(r, "working-directory"))
            .and_then(as_string)
        {
            s.workdir = Some(w);
        }
        if let Some(m) = get(job, "strategy").and_then(|st| get(st, "matrix")) {
            match m.as_mapping() {
                Some(m) => {
                    for (k, v) in m {
                        let Some(k) = as_string(k) else { continue };
                        if k == "include" || k == "exclude" {
                            cx.note(cx.line(&format!("{k}:"), jl), format!("`strategy.matrix.{k}` of job `{id}` has no cairn form; list the combinations as separate steps"));
                            continue;
                        }
                        let vals = strings(Some(v));
                        if vals.is_empty() {
                            cx.note(
                                cx.line(&format!("{k}:"), jl),
                                format!("matrix `{k}` of job `{id}` is not a list of values; dropped"),
                            );
                        } else {
                            s.matrix.push((k, vals));
                        }
                    }
                }
                None => cx.note(cx.line("matrix", jl), format!("the matrix of job `{id}` is an expression; dropped")),
            }
        }
        if get(job, "container").is_some() {
            cx.note(
                cx.line("container:", jl),
                format!("job `{id}` runs in a container; cairn runs it on the machine (install its tools there)"),
            );
        }
        if let Some(svcs) = get(job, "services").and_then(Value::as_mapping) {
            for (k, v) in svcs {
                let Some(k) = as_string(k) else { continue };
                let l = cx.line(&format!("{k}:"), jl);
                let text = service(&mut cx, &k, v, l);
                cx.services.entry(k.clone()).or_insert(text);
                s.services.push(k);
            }
        }
        let mut env_out = EnvOut { cond: cond.clone(), ..Default::default() };
        if deploy {
            env_out.name = match get(job, "environment") {
                Some(Value::String(e)) => e.clone(),
                Some(v @ Value::Mapping(_)) => get(v, "name").and_then(as_string).unwrap_or_else(|| id.clone()),
                _ => {
                    let from_name = jname.as_deref().map(|n| {
                        let l = n.to_ascii_lowercase();
                        slug(l.strip_prefix("deploy to ").or_else(|| l.strip_prefix("deploy ")).unwrap_or(&l))
                    });
                    from_name
                        .filter(|n| !n.is_empty())
                        .or_else(|| Some(slug(id.trim_start_matches("deploy").trim_start_matches(['_', '-']))))
                        .filter(|n| !n.is_empty())
                        .unwrap_or_else(|| slug(&id))
                }
            };
            if env_out.name.contains("${{") {
                return Err(cx.err(
                    cx.line("environment:", jl),
                    format!("job `{id}` picks its environment with an expression"),
                    "name the environment; one cairn environment per GitHub environment",
                ));
            }
            env_out.approval = get(job, "environment").is_some();
            if let Some(n) = &jname {
                env_out.comments.push(n.clone());
            }
            env_out.secrets.extend(s.secrets.iter().cloned());
        }
        // The job's steps.
        let mut from = jl;
        let mut deploy_parts: Vec<String> = Vec::new();
        for (n, st) in get(job, "steps").and_then(Value::as_sequence).into_iter().flatten().enumerate() {
            if let Some(uses) = get(st, "uses").and_then(as_string) {
                let l = cx.line(&format!("uses: {uses}"), from);
                from = l + 1;
                let action = uses.split('@').next().unwrap_or("").to_string();
                let version_ref = uses.split('@').nth(1).map(String::from);
                let with = |k: &str| get(st, "with").and_then(|w| get(w, k)).and_then(as_string);
                if action == "actions/checkout" {
                    continue;
                }
                if action.starts_with("actions/cache") {
                    let paths: Vec<String> = with("path")
                        .unwrap_or_default()
                        .lines()
                        .map(|p| p.trim().to_string())
                        .filter(|p| !p.is_empty())
                        .collect();
                    let mut kept = Vec::new();
                    for p in paths {
                        if p.starts_with('~') || p.starts_with('/') || p.contains("${{") || p.starts_with('!') {
                            cx.note(l, format!("cache path `{p}` of job `{id}` is outside the workspace; dropped (cairn stores only workspace outputs)"));
                            continue;
                        }
                        let p = p.trim_start_matches("./").trim_end_matches("/**").to_string();
                        let is_file =
                            p.rsplit('/').next().is_some_and(|last| last.contains('.') && !last.starts_with('.'));
                        kept.push(if is_file || p.ends_with('/') { p } else { format!("{p}/") });
                    }
                    s.comments.push(format!(
                        "{uses} on {} dropped: this step's key replaces the cache key, and those paths are its outputs",
                        if kept.is_empty() { "paths outside the workspace".to_string() } else { kept.join(", ") }
                    ));
                    for k in kept {
                        if !s.outputs.contains(&k) {
                            s.outputs.push(k);
                        }
                    }
                    continue;
                }
                if let Some(tools) = setup_action(&action) {
                    for (tname, probe, input) in tools {
                        let version = with(input).or_else(|| {
                            (input == "toolchain")
                                .then(|| version_ref.clone())
                                .flatten()
                                .filter(|r| r.chars().next().is_some_and(|c| c.is_ascii_digit()))
                        });
                        let require = match version {
                            Some(v) if v.contains("${{") => {
                                cx.note(
                                    l,
                                    format!(
                                        "`{input}` of {action} is an expression; toolchain `{tname}` has no `require`"
                                    ),
                                );
                                None
                            }
                            Some(v) if v.chars().next().is_some_and(|c| c.is_ascii_digit()) => {
                                Some(v.trim_end_matches(".x").trim_end_matches(".*").to_string())
                            }
                            _ => None,
                        };
                        if deploy {
                            // Environments have no toolchains: the deploy machine provides it.
                            env_out.comments.push(format!("{uses}: `{tname}` must be installed where cairn deploys"));
                            continue;
                        }
                        cx.toolchains.entry(tname.to_string()).or_insert((probe.to_string(), require));
                        s.toolchains.insert(tname.to_string());
                    }
                    continue;
                }
                // Anything else: a step a person must replace.
                let with_text = get(st, "with")
                    .and_then(Value::as_mapping)
                    .map(|m| {
                        m.iter()
                            .filter_map(|(k, v)| {
                                Some(format!("{}={}", as_string(k)?, as_string(v)?.lines().next().unwrap_or("")))
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                let what = if with_text.is_empty() {
                    format!("the GitHub action `{uses}` (workflow line {l})")
                } else {
                    format!("the GitHub action `{uses}` with {with_text} (workflow line {l})")
                };
                let sname = format!(
                    "{id}-{}",
                    slug(get(st, "name").and_then(as_string).as_deref().unwrap_or(&action.replace('/', "-")))
                );
                let sname = if extra_steps.iter().any(|e| e.name == sname) { format!("{sname}-{n}") } else { sname };
                cx.note(
                    l,
                    format!("`uses: {uses}` became step `{sname}`, which `cairn check` reports until you replace it"),
                );
                extra_steps.push(StepOut {
                    name: sname.clone(),
                    unported: Some(what),
                    needs: if deploy { s.needs.clone() } else { vec![id.clone()] },
                    ..Default::default()
                });
                if deploy {
                    env_out.requires.push(sname);
                }
                continue;
            }
            let Some(run) = get(st, "run").and_then(as_string) else { continue };
            let l = cx.line(run.lines().next().unwrap_or(""), from);
            from = l + 1;
            let sname = get(st, "name").and_then(as_string);
            if let Some(shell) = get(st, "shell").and_then(as_string) {
                if !matches!(shell.split_whitespace().next(), Some("bash" | "sh")) {
                    cx.note(l, format!("a `shell: {shell}` step of job `{id}` runs under `sh` in cairn; check it"));
                }
            }
            let mut step_secrets = BTreeSet::new();
            let mut sec_env: Vec<(String, String)> = Vec::new();
            if let Some(m) = get(st, "env").and_then(Value::as_mapping) {
                for (k, v) in m {
                    let (Some(k), Some(v)) = (as_string(k), as_string(v)) else { continue };
                    let mut sec = BTreeSet::new();
                    match command(&v, &mut sec, &mut s.pass_env, &[]) {
                        Ok(_) if !sec.is_empty() => {
                            // `FLY_API_TOKEN: ${{ secrets.FLY_API_TOKEN }}`: the secret under the env name.
                            if sec.len() == 1 && sec.first() == Some(&k) {
                                step_secrets.insert(k);
                            } else {
                                step_secrets.extend(sec.iter().cloned());
                                sec_env.push((k, v));
                            }
                        }
                        Ok(val) => {
                            s.env.insert(k, val);
                        }
                        Err(e) => {
                            cx.note(l, format!("env `{k}` of a step of job `{id}` uses `${{{{ {e} }}}}`; dropped"))
                        }
                    }
                }
            }
            let mut cmd = match command(&run, &mut step_secrets, &mut s.pass_env, &[]) {
                Ok(c) => c,
                Err(e) => {
                    let what = format!("a `run` of job `{id}` using `${{{{ {e} }}}}` (workflow line {l})");
                    cx.note(l, format!("{what}: cairn cannot give a step that value; the step is marked unported"));
                    s.unported.get_or_insert(what);
                    run.clone()
                }
            };
            for (k, v) in sec_env {
                // A secret under another name: exported for this command only.
                let mut none = BTreeSet::new();
                let val = command(&v, &mut none, &mut s.pass_env, &[]).unwrap_or_default();
                cmd = format!("{k}=\"{val}\" {cmd}");
            }
            if let Some(w) = get(st, "working-directory").and_then(as_string) {
                cmd = format!("(cd {} && {cmd})", shell_quote(&w));
            }
            s.secrets.extend(step_secrets.iter().cloned());
            if deploy {
                env_out.secrets.extend(step_secrets);
                let migrates = sname.as_deref().is_some_and(|n| n.to_ascii_lowercase().contains("migrat"))
                    || (cmd.contains("migrat") && env_out.deploy.is_some());
                if migrates && env_out.deploy.is_some() && env_out.migration.is_none() {
                    env_out.migration = Some(cmd);
                } else if env_out.deploy.is_none() {
                    if let Some((regions, body)) = region_loop(&cmd) {
                        env_out.regions = regions;
                        env_out.deploy = Some(body);
                    } else {
                        env_out.deploy = Some(cmd.clone());
                    }
                    deploy_parts.push(cmd);
                } else {
                    let d = env_out.deploy.take().unwrap_or_default();
                    env_out.deploy = Some(format!("{d} && {cmd}"));
                }
            } else {
                if let Some(n) = sname {
                    s.parts.push(format!("# {n}"));
                }
                s.parts.push(cmd);
            }
        }
        if deploy {
            if env_out.deploy.is_none() {
                env_out.deploy = Some("false".into());
                cx.note(jl, format!("deploy job `{id}` has no `run:` step; environment `{}` deploys with `false` until you give it a command", env_out.name));
            }
            env_out.requires.extend(s.needs.iter().cloned());
            envs.push(env_out);
        } else {
            steps.push(s);
        }
    }
    // A deploy job another job needs: that job needs what the deploy needed.
    for s in steps.iter_mut().chain(extra_steps.iter_mut()) {
        let mut needs = Vec::new();
        for n in &s.needs {
            if job_kind.get(n) == Some(&true) {
                cx.notes.push(format!(
                    "{file}: job `{}` needs deploy job `{n}`; cairn runs steps before deploys, so that need is dropped",
                    s.name
                ));
            } else if !needs.contains(n) {
                needs.push(n.clone());
            }
        }
        s.needs = needs;
    }
    for e in &mut envs {
        e.requires.retain(|r| job_kind.get(r) != Some(&true));
    }
    for s in &steps {
        cx.secrets.extend(s.secrets.iter().cloned());
    }
    for e in &envs {
        cx.secrets.extend(e.secrets.iter().cloned());
    }
    Ok(Imported {
        ron: render(&cx, &name, wf_name.as_deref(), file, &steps, &extra_steps, &envs, &triggers),
        notes: cx.notes,
    })
}

#[allow(clippy::too_many_arguments)]
fn render(
    cx: &Ctx,
    name: &str,
    wf_name: Option<&str>,
    file: &str,
    steps: &[StepOut],
    extra: &[StepOut],
    envs: &[EnvOut],
    triggers: &[(Event, Vec<String>, String)],
) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let _ = writeln!(o, "// Imported from {file} by `cairn import github-actions` (docs/github-actions.md).");
    o.push_str("// Each job is one step (its `run:` steps in order); deploy jobs are environments.\n");
    o.push_str("// Every step reads every tracked file (`inputs: [\"**\"]`) and may use the network, as on\n");
    o.push_str("// GitHub's runners; the `Report` sandbox names what each really reads: `cairn learn STEP`\n");
    o.push_str("// adds the declarations, then narrow `inputs` and switch to `sandbox: Enforce`.\n");
    for n in &cx.notes {
        let _ = writeln!(o, "// NOTE {n}");
    }
    o.push_str("Pipeline(\n");
    let _ = writeln!(o, "    name: {},", ron_str(name));
    if let Some(d) = wf_name {
        let _ = writeln!(o, "    description: {},", ron_str(d));
    }
    o.push_str("    sandbox: Report,\n");
    if !cx.toolchains.is_empty() {
        o.push_str("    toolchains: {\n");
        for (t, (probe, require)) in &cx.toolchains {
            let req = require.as_ref().map(|r| format!(", require: {}", ron_str(r))).unwrap_or_default();
            let _ = writeln!(o, "        {}: (probe: {}{req}),", ron_str(t), ron_str(probe));
        }
        o.push_str("    },\n");
    }
    if !cx.services.is_empty() {
        o.push_str("    services: {\n");
        for text in cx.services.values() {
            o.push_str(text);
        }
        o.push_str("    },\n");
    }
    if !cx.secrets.is_empty() {
        o.push_str("    secrets: {\n");
        for s in &cx.secrets {
            let _ = writeln!(o, "        {}: Env({}),", ron_str(s), ron_str(s));
        }
        o.push_str("    },\n");
    }
    o.push_str("    steps: {\n");
    if steps.is_empty() && extra.is_empty() {
        // A workflow of deploy jobs only: a pipeline needs a step, and this one does nothing.
        o.push_str("        // The workflow has deploy jobs only; a pipeline needs a step: this one does nothing.\n");
        o.push_str("        \"ready\": (run: \"true\", cache: false),\n");
    }
    for s in steps.iter().chain(extra) {
        for c in &s.comments {
            let _ = writeln!(o, "        // {c}");
        }
        let _ = writeln!(o, "        {}: (", ron_str(&s.name));
        let run = if s.unported.is_some() && s.parts.is_empty() {
            "false".to_string()
        } else if s.parts.len() == 1 && !s.parts[0].contains('\n') {
            s.parts[0].clone()
        } else if s.parts.iter().all(|p| p.starts_with("# ")) || s.parts.is_empty() {
            "true".to_string()
        } else if s.parts.len() == 2 && s.parts[0].starts_with("# ") && !s.parts[1].contains('\n') {
            s.parts[1].clone()
        } else {
            format!("set -e\n{}", s.parts.join("\n"))
        };
        let _ = writeln!(o, "            run: {},", ron_str(&run));
        if let Some(u) = &s.unported {
            let _ = writeln!(o, "            unported: {},", ron_str(u));
        }
        if s.unported.is_none() || !s.parts.is_empty() {
            o.push_str("            inputs: [\"**\"],\n");
        }
        if !s.needs.is_empty() {
            let _ = writeln!(o, "            needs: {},", ron_list(&s.needs));
        }
        if !s.outputs.is_empty() {
            let _ = writeln!(o, "            outputs: {},", ron_list(&s.outputs));
        }
        if let Some(w) = &s.workdir {
            let _ = writeln!(o, "            workdir: {},", ron_str(w));
        }
        if !s.env.is_empty() {
            let pairs: Vec<String> = s.env.iter().map(|(k, v)| format!("{}: {}", ron_str(k), ron_str(v))).collect();
            let _ = writeln!(o, "            env: {{{}}},", pairs.join(", "));
        }
        if !s.pass_env.is_empty() {
            let _ = writeln!(o, "            pass_env: {},", ron_list(&s.pass_env));
        }
        if !s.secrets.is_empty() {
            let _ = writeln!(o, "            secrets: {},", ron_list(&s.secrets));
        }
        if !s.toolchains.is_empty() {
            let _ = writeln!(o, "            toolchains: {},", ron_list(&s.toolchains));
        }
        if !s.services.is_empty() {
            let _ = writeln!(o, "            services: {},", ron_list(&s.services));
        }
        if s.unported.is_none() || !s.parts.is_empty() {
            o.push_str("            network: true,\n");
        }
        if let Some(t) = &s.timeout {
            let _ = writeln!(o, "            timeout: {},", ron_str(t));
        }
        if !s.matrix.is_empty() {
            let pairs: Vec<String> = s.matrix.iter().map(|(k, v)| format!("{}: {}", ron_str(k), ron_list(v))).collect();
            let _ = writeln!(o, "            matrix: {{{}}},", pairs.join(", "));
        }
        o.push_str("        ),\n");
    }
    o.push_str("    },\n");
    // Triggers: the steps whose job runs on the event, and the environments it deploys.
    o.push_str("    triggers: [\n");
    for (e, branches, inputs) in triggers {
        let mut run: Vec<&str> =
            steps.iter().filter(|s| !s.cond.admits(*e).is_empty()).map(|s| s.name.as_str()).collect();
        if steps.is_empty() && extra.is_empty() {
            run.push("ready");
        }
        let mut rules = Vec::new();
        for env in envs {
            for b in env.cond.admits(*e) {
                let branch = b.map(|b| format!("branch: {}, ", ron_str(&b))).unwrap_or_default();
                rules.push(format!("({branch}environment: {})", ron_str(&env.name)));
            }
        }
        o.push_str("        (\n");
        let _ = writeln!(o, "            on: {},", e.ron());
        if !branches.is_empty() {
            let _ = writeln!(o, "            branches: {},", ron_list(branches));
        }
        o.push_str(inputs);
        let _ = writeln!(o, "            run: {},", ron_list(run));
        if !rules.is_empty() {
            let _ = writeln!(o, "            deploy: [{}],", rules.join(", "));
        }
        o.push_str("        ),\n");
    }
    o.push_str("    ],\n");
    if !envs.is_empty() {
        o.push_str("    environments: {\n");
        for e in envs {
            for c in &e.comments {
                let _ = writeln!(o, "        // {c}");
            }
            let _ = writeln!(o, "        {}: (", ron_str(&e.name));
            let branches: BTreeSet<String> = match &e.cond.0 {
                Some(alts) if alts.iter().all(|(_, b)| b.is_some()) => {
                    alts.iter().filter_map(|(_, b)| b.clone()).collect()
                }
                _ => BTreeSet::new(),
            };
            if !branches.is_empty() {
                let _ = writeln!(o, "            branches: {},", ron_list(&branches));
            }
            if !e.requires.is_empty() {
                let _ = writeln!(o, "            requires: {},", ron_list(&e.requires));
            }
            if e.approval {
                let _ = writeln!(
                    o,
                    "            // GitHub environment `{}`: its required reviewers live in the repository's settings; name them here.",
                    e.name
                );
                let _ =
                    writeln!(o, "            approval: (reviewers: [{}]),", ron_str(&format!("{}-reviewers", e.name)));
            }
            if !e.secrets.is_empty() {
                let pairs: Vec<String> = e.secrets.iter().map(|s| format!("{}: Inherit", ron_str(s))).collect();
                let _ = writeln!(o, "            secrets: {{{}}},", pairs.join(", "));
            }
            if !e.regions.is_empty() {
                let _ = writeln!(o, "            regions: {},", ron_list(&e.regions));
            }
            let _ = writeln!(o, "            deploy: {},", ron_str(e.deploy.as_deref().unwrap_or("false")));
            if let Some(m) = &e.migration {
                let _ = writeln!(o, "            migration: (run: {}, phase: AfterAll),", ron_str(m));
            }
            o.push_str("        ),\n");
        }
        o.push_str("    },\n");
    }
    o.push_str(")\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_expressions_become_events_and_branches() {
        let c = parse_if("github.event_name == 'push' && github.ref == 'refs/heads/develop'").unwrap();
        assert_eq!(c.admits(Event::Push), vec![Some("develop".to_string())]);
        assert!(c.admits(Event::Manual).is_empty());
        let c = parse_if("${{ github.event_name == 'workflow_dispatch' }}").unwrap();
        assert_eq!(c.admits(Event::Manual), vec![None]);
        assert!(parse_if("contains(github.event.head_commit.message, 'deploy')").is_none());
    }

    #[test]
    fn region_loops_and_expressions() {
        let (r, body) = region_loop(
            "for region in nrt fra syd; do\n  flyctl deploy --app a-$region --config fly.prod.${region}.toml\ndone",
        )
        .unwrap();
        assert_eq!(r, ["nrt", "fra", "syd"]);
        assert_eq!(body, "flyctl deploy --app a-{region} --config fly.prod.{region}.toml");
        let (mut s, mut p) = (BTreeSet::new(), BTreeSet::new());
        let c = command("echo ${{ secrets.T }} ${{ matrix.otp }} ${{ github.sha }} {x} ${HOME}", &mut s, &mut p, &[])
            .unwrap();
        assert_eq!(c, "echo $T {matrix.otp} $GITHUB_SHA {{x}} ${HOME}");
        assert!(s.contains("T") && p.contains("GITHUB_SHA"));
        assert_eq!(command("echo ${{ steps.a.outputs.b }}", &mut s, &mut p, &[]).unwrap_err(), "steps.a.outputs.b");
    }
}
