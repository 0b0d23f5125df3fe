//! Semantic checks over a parsed pipeline: every name resolves, the step graph is acyclic,
//! outputs don't collide, globs compile, every placeholder is defined.
//!
//! Each check yields a [`Diagnostic`] located in the source text with [`Locator`], naming what
//! is wrong and what to do. All problems are collected, not just the first.

use super::{placeholders, suggest, Diagnostic, Locator, Pipeline, Probe, SecretSource, DEPLOY_EVENTS};
use std::collections::{BTreeMap, BTreeSet};

struct Checker<'a> {
    loc: &'a Locator<'a>,
    out: Vec<Diagnostic>,
}

impl Checker<'_> {
    fn push(&mut self, at: (usize, usize), message: String, hint: Option<String>) {
        self.out.push(Diagnostic { file: self.loc.file().to_string(), line: at.0, col: at.1, message, hint });
    }

    /// A reference from `owner` to `name`, which must be one of `known`.
    fn reference(&mut self, owner: &str, what: &str, name: &str, known: &[&str], hint_extra: &str) {
        if known.contains(&name) {
            return;
        }
        let at = self.loc.locate(Some(owner), name);
        let mut hint = suggest(name, known);
        if known.is_empty() {
            hint = format!("no {what} is declared; {hint_extra}");
        }
        self.push(at, format!("`{owner}` refers to unknown {what} `{name}`"), Some(hint));
    }

    fn glob(&mut self, owner: &str, glob: &str) {
        let pattern = glob.strip_prefix('!').unwrap_or(glob);
        if let Err(e) = globset::GlobBuilder::new(pattern).literal_separator(true).build() {
            let at = self.loc.locate(Some(owner), glob);
            self.push(
                at,
                format!("invalid glob `{glob}` in `{owner}`: {}", e.kind()),
                Some("globs use `*`, `**`, `?`, `[abc]` and `{a,b}`".into()),
            );
        }
        if pattern.starts_with('/') || pattern.split('/').any(|c| c == "..") {
            let at = self.loc.locate(Some(owner), glob);
            self.push(
                at,
                format!("glob `{glob}` in `{owner}` leaves the project"),
                Some("inputs are relative to the pipeline root and may not contain `..`".into()),
            );
        }
    }

    fn relative_path(&mut self, owner: &str, what: &str, path: &str) {
        let bad = path.is_empty()
            || path.starts_with('/')
            || path.starts_with('!')
            || path.split('/').any(|c| c == "..")
            || path.contains('\0');
        if bad {
            let at = self.loc.locate(Some(owner), path);
            self.push(
                at,
                format!("{what} `{path}` of `{owner}` must be a relative path inside the project"),
                Some("write it relative to the pipeline root, without `..`".into()),
            );
        }
    }

    fn template(&mut self, owner: &str, field: &str, template: &str, defined: &BTreeSet<String>) {
        for p in placeholders(template) {
            if !defined.contains(&p.name) {
                let at = self.loc.locate(Some(owner), template);
                let known: Vec<&str> = defined.iter().map(String::as_str).collect();
                self.push(
                    at,
                    format!("placeholder `{{{}}}` in {field} of `{owner}` is not defined", p.name),
                    Some(format!(
                        "{}; define it in `vars`, or write `{{{{` for a literal brace",
                        suggest(&p.name, &known)
                    )),
                );
            }
        }
    }

    fn env_name(&mut self, owner: &str, name: &str) {
        let ok = !name.is_empty()
            && !name.starts_with(|c: char| c.is_ascii_digit())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            let at = self.loc.locate(Some(owner), name);
            self.push(
                at,
                format!("`{name}` in `{owner}` is not a valid environment variable name"),
                Some("use letters, digits and `_`, not starting with a digit".into()),
            );
        }
    }
}

/// Run every check; an empty result means the pipeline is valid.
pub fn validate(p: &Pipeline, loc: &Locator) -> Vec<Diagnostic> {
    let mut c = Checker { loc, out: Vec::new() };
    let step_names: Vec<&str> = p.steps.names().collect();
    let services: Vec<&str> = p.services.names().collect();
    let secrets: Vec<&str> = p.secrets.names().collect();
    let toolchains: Vec<&str> = p.toolchains.names().collect();
    let sets: Vec<&str> = p.input_sets.names().collect();
    let envs: Vec<&str> = p.environments.names().collect();

    let mut base_vars: BTreeSet<String> = p.vars.names().map(String::from).collect();
    base_vars.insert("app".into());

    if p.steps.is_empty() {
        c.push(
            (1, 1),
            "the pipeline declares no steps".into(),
            Some("add `steps: { \"build\": (run: \"...\") }`".into()),
        );
    }

    for (name, set) in p.input_sets.iter() {
        for g in set.include.iter().chain(&set.exclude) {
            c.glob(name, g);
        }
    }
    for (name, source) in p.secrets.iter() {
        c.env_name(name, name);
        if *source == SecretSource::Inherit {
            let at = loc.definition(name);
            c.push(
                at,
                format!("secret `{name}` uses `Inherit` at the pipeline level"),
                Some("`Inherit` is for environments; here say where the value comes from: Env(..), File(..) or Command(..)".into()),
            );
        }
    }
    for (name, tc) in p.toolchains.iter() {
        c.template(name, "probe", &tc.probe, &base_vars);
    }

    if let Some(r) = &p.remote {
        if let Err(e) = crate::keys::Trusted::parse(&r.trusted_keys) {
            let at = r.trusted_keys.first().map(|k| loc.locate(None, k)).unwrap_or((1, 1));
            c.push(at, e, Some("use the public key `cairn keys generate` printed: NAME:BASE64".into()));
        }
        if let Some(u) = &r.url {
            if !(u.starts_with("http://") || u.starts_with("https://")) {
                let at = loc.locate(None, u);
                c.push(at, format!("remote url `{u}` must start with http:// or https://"), None);
            }
        }
    }

    // Steps.
    let mut claimed: Vec<(String, &str)> = Vec::new();
    for (name, step) in p.steps.iter() {
        for need in &step.needs {
            if need == name {
                let at = loc.locate(Some(name), need);
                c.push(at, format!("step `{name}` needs itself"), Some("remove it from `needs`".into()));
            } else {
                c.reference(name, "step", need, &step_names, "declare it under `steps`");
            }
        }
        for s in &step.services {
            c.reference(name, "service", s, &services, "declare it under `services`");
        }
        for s in &step.secrets {
            c.reference(name, "secret", s, &secrets, "declare it under `secrets`");
        }
        for t in &step.toolchains {
            c.reference(name, "toolchain", t, &toolchains, "declare it under `toolchains`");
        }
        for s in &step.input_sets {
            c.reference(name, "input set", s, &sets, "declare it under `input_sets`");
        }
        if let Some(what) = &step.unported {
            let at = c.loc.locate(Some(name), "unported");
            c.push(
                at,
                format!("step `{name}` stands for {what}, which cairn cannot run"),
                Some("replace its `run` with the commands it should run, then delete its `unported` field".into()),
            );
        }
        for g in step.inputs.iter().chain(&step.exclude).chain(&step.untracked) {
            c.glob(name, g);
        }
        for u in &step.untracked {
            c.relative_path(name, "untracked input", u);
        }
        if let Some(w) = &step.workdir {
            c.relative_path(name, "working directory", w);
        }
        for (k, _) in step.env.iter() {
            c.env_name(name, k);
        }
        for k in &step.pass_env {
            c.env_name(name, k);
        }
        let mut defined = base_vars.clone();
        for (k, values) in step.matrix.iter() {
            defined.insert(format!("matrix.{k}"));
            if values.is_empty() {
                let at = loc.locate(Some(name), k);
                c.push(
                    at,
                    format!("matrix axis `{k}` of `{name}` has no values"),
                    Some("give at least one value".into()),
                );
            }
        }
        c.template(name, "run", &step.run, &defined);
        for (_, v) in step.env.iter() {
            c.template(name, "env", v, &defined);
        }
        for s in &step.scratch {
            c.relative_path(name, "scratch path", s);
        }
        for out in &step.outputs {
            c.relative_path(name, "output", out);
            let norm = out.trim_end_matches('/').trim_start_matches("./").to_string();
            for (other_path, other) in &claimed {
                // An output strictly inside another step's is that step's to carve out, when
                // the inner one runs after it (`mix test` writing into compile's `_build/`).
                let nested_ok = (norm.starts_with(&format!("{other_path}/")) && needs_transitively(p, name, other))
                    || (other_path.starts_with(&format!("{norm}/")) && needs_transitively(p, other, name));
                let overlaps = norm == *other_path
                    || norm.starts_with(&format!("{other_path}/"))
                    || other_path.starts_with(&format!("{norm}/"));
                if overlaps && !nested_ok && *other != name.as_str() {
                    let at = loc.locate(Some(name), out);
                    c.push(
                        at,
                        format!("steps `{other}` and `{name}` both claim output `{out}`"),
                        Some(
                            "each path may be the output of one step only; split the directory or merge the steps, \
                             or let the step whose output lies inside the other's `needs` it"
                                .into(),
                        ),
                    );
                }
            }
            claimed.push((norm, name));
        }
        if !step.cache && !step.outputs.is_empty() {
            let at = loc.definition(name);
            c.push(
                at,
                format!("step `{name}` has `cache: false` but declares outputs"),
                Some("outputs of an uncached step are never stored; remove them or allow caching".into()),
            );
        }
    }
    if let Some(cycle) = find_cycle(p) {
        let at = loc.definition(&cycle[0]);
        c.push(
            at,
            format!("dependency cycle: {}", cycle.join(" → ")),
            Some("remove one of these `needs` so the steps can run in an order".into()),
        );
    }

    // Services.
    for (name, svc) in p.services.iter() {
        let mut defined = base_vars.clone();
        defined.extend(["port", "dir", "service"].map(String::from));
        for t in [Some(&svc.start), svc.stop.as_ref(), svc.setup.as_ref(), svc.init.as_ref()].into_iter().flatten() {
            c.template(name, "a command", t, &defined);
        }
        for (k, v) in svc.env.iter().chain(svc.export.iter()) {
            c.env_name(name, k);
            c.template(name, "env", v, &defined);
        }
        let probe = match &svc.ready.probe {
            Probe::Command(s) | Probe::Tcp(s) | Probe::Http(s) => s,
        };
        c.template(name, "the readiness probe", probe, &defined);
    }

    // Environments.
    for (name, env) in p.environments.iter() {
        for r in &env.requires {
            c.reference(name, "step", r, &step_names, "declare it under `steps`");
        }
        for g in &env.branches {
            c.glob(name, g);
        }
        for (s, source) in env.secrets.iter() {
            c.env_name(name, s);
            if *source == SecretSource::Inherit && !p.secrets.contains(s) {
                let at = loc.locate(Some(name), s);
                c.push(
                    at,
                    format!("environment `{name}` inherits secret `{s}`, which the pipeline does not declare"),
                    Some(format!("declare `{s}` under the pipeline's `secrets`, or give its source here")),
                );
            }
        }
        let mut defined = base_vars.clone();
        defined.extend(env.vars.names().map(String::from));
        defined.extend(["environment", "release"].map(String::from));
        let mut regional = defined.clone();
        if !env.regions.is_empty() {
            regional.insert("region".into());
        }
        c.template(name, "deploy", &env.deploy, &regional);
        if let Some(r) = &env.rollback {
            c.template(name, "rollback", r, &regional);
        }
        if let Some(h) = &env.health {
            let (Probe::Command(s) | Probe::Tcp(s) | Probe::Http(s)) = &h.probe;
            c.template(name, "health", s, &regional);
        }
        if let Some(m) = &env.migration {
            c.template(name, "migration", &m.run, &defined);
        }
        let mut seen = BTreeSet::new();
        for r in &env.regions {
            if !seen.insert(r) {
                let at = loc.locate(Some(name), r);
                c.push(at, format!("region `{r}` appears twice in `{name}`"), Some("list each region once".into()));
            }
        }
        match &env.strategy {
            super::Strategy::Canary(canary) => {
                let regions: Vec<&str> = env.regions.iter().map(String::as_str).collect();
                for r in &canary.first {
                    c.reference(name, "region", r, &regions, "list it in `regions`");
                }
                if canary.first.is_empty() && canary.shares.is_empty() {
                    let at = loc.definition(name);
                    c.push(
                        at,
                        format!("canary of `{name}` names no first regions and no traffic shares"),
                        Some("set `first: [\"nrt\"]`, or `shares: [10, 50]` with a `shift` command".into()),
                    );
                }
                let rising = canary.shares.windows(2).all(|w| w[0] < w[1]);
                if !rising || canary.shares.iter().any(|s| *s == 0 || *s >= 100) {
                    let at = loc.definition(name);
                    c.push(
                        at,
                        format!("canary shares of `{name}` must rise strictly between 1 and 99: {:?}", canary.shares),
                        Some("100 is implied as the last step; write e.g. `shares: [10, 50]`".into()),
                    );
                }
                match (&canary.shift, canary.shares.is_empty()) {
                    (Some(_), true) => {
                        let at = loc.definition(name);
                        c.push(
                            at,
                            format!("canary of `{name}` has a `shift` command but no traffic shares"),
                            Some("add `shares: [10, 50]`, or remove `shift`".into()),
                        );
                    }
                    (Some(shift), false) => {
                        let mut with_share = regional.clone();
                        with_share.insert("share".into());
                        c.template(name, "shift", shift, &with_share);
                    }
                    (None, false) => {
                        let at = loc.definition(name);
                        c.push(
                            at,
                            format!("canary of `{name}` has traffic shares but no `shift` command"),
                            Some("add `shift: \"./ops/traffic.sh {app} {release} {share}\"`".into()),
                        );
                    }
                    (None, true) => {}
                }
            }
            super::Strategy::BlueGreen(bg) => {
                c.template(name, "switch", &bg.switch, &regional);
                if let Some(s) = &bg.switch_back {
                    c.template(name, "switch_back", s, &regional);
                }
            }
            super::Strategy::Rolling => {}
        }
        if let Some(a) = &env.approval {
            if a.reviewers.is_empty() {
                let at = loc.definition(name);
                c.push(
                    at,
                    format!("approval of `{name}` names no reviewers"),
                    Some("list who may approve in `reviewers`".into()),
                );
            }
            if let Err(e) = crate::keys::Trusted::parse(&a.keys) {
                let at = a.keys.first().map(|k| loc.locate(Some(name), k)).unwrap_or_else(|| loc.definition(name));
                c.push(at, e, Some("use the public key `cairn keys generate REVIEWER` printed: NAME:BASE64".into()));
            }
            for k in &a.keys {
                let owner = k.rsplit_once(':').map(|(n, _)| n).unwrap_or_default();
                if !a.reviewers.iter().any(|r| r == owner) {
                    c.push(
                        loc.locate(Some(name), k),
                        format!("approval key `{owner}` of `{name}` is not one of its reviewers"),
                        Some(format!("name the key after a reviewer ({})", a.reviewers.join(", "))),
                    );
                }
            }
        }
        for w in &env.windows {
            for t in [&w.start, &w.end] {
                if parse_hhmm(t).is_none() {
                    let at = loc.locate(Some(name), t);
                    c.push(
                        at,
                        format!("deploy window time `{t}` of `{name}` is not HH:MM"),
                        Some("write it like \"09:00\"".into()),
                    );
                }
            }
            if w.days.is_empty() {
                let at = loc.definition(name);
                c.push(
                    at,
                    format!("a deploy window of `{name}` lists no days"),
                    Some("e.g. days: [Mon, Tue, Wed, Thu]".into()),
                );
            }
            if !valid_timezone(&w.timezone) {
                let at = loc.locate(Some(name), &w.timezone);
                c.push(
                    at,
                    format!("time zone `{}` of `{name}` is not recognised", w.timezone),
                    Some("use \"UTC\", a fixed offset like \"+09:00\", or an IANA name like \"Asia/Seoul\"".into()),
                );
            }
        }
        for f in &env.freezes {
            for t in [&f.from, &f.until] {
                if !looks_rfc3339(t) {
                    let at = loc.locate(Some(name), t);
                    c.push(
                        at,
                        format!("freeze time `{t}` of `{name}` is not an RFC 3339 instant"),
                        Some("write it like \"2026-12-20T00:00:00+09:00\"".into()),
                    );
                }
            }
        }
        let env_secrets: Vec<&str> = p.secrets.names().chain(env.secrets.names()).collect();
        for n in &env.notify {
            match n {
                super::Notify::Slack(w) => {
                    c.reference(name, "secret", &w.url_secret, &env_secrets, "declare it under `secrets`");
                    for e in &w.events {
                        c.reference(name, "deploy event", e, DEPLOY_EVENTS, "");
                    }
                }
                super::Notify::Metric(m) => {
                    if let Some(s) = &m.api_key_secret {
                        c.reference(name, "secret", s, &env_secrets, "declare it under `secrets`");
                    }
                }
            }
        }
    }

    // Triggers.
    for (i, t) in p.triggers.iter().enumerate() {
        let owner = format!("triggers[{i}]");
        for s in &t.run {
            if !step_names.contains(&s.as_str()) {
                let at = loc.locate(None, s);
                c.push(
                    at,
                    format!("trigger {} ({}) runs unknown step `{s}`", i + 1, t.on.as_str()),
                    Some(suggest(s, &step_names)),
                );
            }
        }
        for g in &t.branches {
            c.glob(&owner, g);
        }
        let input_names: BTreeSet<String> = t.inputs.names().map(|n| format!("inputs.{n}")).collect();
        for (iname, input) in t.inputs.iter() {
            if let (super::InputType::Choice(options), Some(d)) = (&input.kind, &input.default) {
                if !options.contains(d) {
                    let at = loc.locate(Some(iname), d);
                    c.push(
                        at,
                        format!("default `{d}` of input `{iname}` is not one of its choices"),
                        Some(format!("choose one of: {}", options.join(", "))),
                    );
                }
            }
        }
        for rule in &t.deploy {
            if let Some(b) = &rule.branch {
                c.glob(&owner, b);
            }
            let holes = placeholders(&rule.environment);
            if holes.is_empty() {
                if !envs.contains(&rule.environment.as_str()) {
                    let at = loc.locate(None, &rule.environment);
                    c.push(
                        at,
                        format!(
                            "trigger {} ({}) deploys to unknown environment `{}`",
                            i + 1,
                            t.on.as_str(),
                            rule.environment
                        ),
                        Some(suggest(&rule.environment, &envs)),
                    );
                }
            } else {
                for h in holes {
                    if !input_names.contains(&h.name) {
                        let at = loc.locate(None, &rule.environment);
                        c.push(
                            at,
                            format!("placeholder `{{{}}}` in trigger {} is not one of its inputs", h.name, i + 1),
                            Some("declare it under the trigger's `inputs`".into()),
                        );
                    } else if let Some(super::InputType::Choice(options)) =
                        t.inputs.get(&h.name["inputs.".len()..]).map(|i| &i.kind)
                    {
                        for o in options {
                            if rule.environment == format!("{{{}}}", h.name) && !envs.contains(&o.as_str()) {
                                let at = loc.locate(None, o);
                                c.push(
                                    at,
                                    format!("choice `{o}` selects an environment that is not declared"),
                                    Some(suggest(o, &envs)),
                                );
                            }
                        }
                    }
                }
            }
        }
    }
    c.out.sort_by_key(|d| (d.line, d.col));
    c.out.dedup();
    c.out
}

/// The first dependency cycle among steps, as names with the first repeated at the end.
pub fn find_cycle(p: &Pipeline) -> Option<Vec<String>> {
    let edges: BTreeMap<&str, Vec<&str>> = p
        .steps
        .iter()
        .map(|(n, s)| (n.as_str(), s.needs.iter().map(String::as_str).filter(|d| p.steps.contains(d)).collect()))
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    let mut mark: BTreeMap<&str, Mark> = edges.keys().map(|k| (*k, Mark::New)).collect();
    // Iterative DFS keeping the active path.
    for start in p.steps.names() {
        if mark[start] != Mark::New {
            continue;
        }
        let mut stack: Vec<(&str, usize)> = vec![(start, 0)];
        mark.insert(start, Mark::Active);
        while let Some((node, i)) = stack.last().copied() {
            let next = edges[node].get(i).copied();
            match next {
                Some(n) => {
                    stack.last_mut().unwrap().1 += 1;
                    match mark[n] {
                        Mark::New => {
                            mark.insert(n, Mark::Active);
                            stack.push((n, 0));
                        }
                        Mark::Active => {
                            let from = stack.iter().position(|(s, _)| *s == n).unwrap_or(0);
                            let mut cycle: Vec<String> = stack[from..].iter().map(|(s, _)| s.to_string()).collect();
                            cycle.push(n.to_string());
                            return Some(cycle);
                        }
                        Mark::Done => {}
                    }
                }
                None => {
                    mark.insert(node, Mark::Done);
                    stack.pop();
                }
            }
        }
    }
    None
}

/// "HH:MM" → minutes after midnight.
pub fn parse_hhmm(s: &str) -> Option<u32> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
    (h < 24 && m < 60).then_some(h * 60 + m)
}

/// "UTC", "+09:00"/"-05:30", or an IANA-shaped name ("Asia/Seoul").
pub fn valid_timezone(tz: &str) -> bool {
    if tz == "UTC" || tz == "Z" {
        return true;
    }
    if let Some(rest) = tz.strip_prefix(['+', '-']) {
        return parse_hhmm(rest).is_some();
    }
    let mut parts = tz.split('/');
    let first = parts.next().unwrap_or("");
    !first.is_empty()
        && tz.contains('/')
        && tz.split('/').all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "_-+".contains(c)))
}

/// A cheap structural check of an RFC 3339 timestamp ("2026-12-20T00:00:00+09:00" or "...Z").
pub fn looks_rfc3339(s: &str) -> bool {
    let b = s.as_bytes();
    if b.len() < 20 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && (b[10] == b'T' || b[10] == b' ')
        && parse_hhmm(&s[11..16]).is_some()
        && b[16] == b':'
        && digits(17..19)
        && {
            let rest = &s[19..];
            let rest =
                rest.strip_prefix('.').map(|r| r.trim_start_matches(|c: char| c.is_ascii_digit())).unwrap_or(rest);
            rest == "Z" || valid_timezone(rest) && rest.starts_with(['+', '-'])
        }
}

/// Does step `a` need step `b`, directly or through other steps?
fn needs_transitively(p: &Pipeline, a: &str, b: &str) -> bool {
    let mut seen = BTreeSet::new();
    let mut stack: Vec<&str> = vec![a];
    while let Some(s) = stack.pop() {
        if let Some(step) = p.steps.get(s) {
            for n in &step.needs {
                if n == b {
                    return true;
                }
                if seen.insert(n.as_str()) {
                    stack.push(n);
                }
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_hhmm("09:30"), Some(570));
        assert_eq!(parse_hhmm("24:00"), None);
        assert!(valid_timezone("Asia/Seoul"));
        assert!(valid_timezone("+09:00"));
        assert!(!valid_timezone("Seoul"));
        assert!(looks_rfc3339("2026-12-20T00:00:00+09:00"));
        assert!(looks_rfc3339("2026-12-20T00:00:00.5Z"));
        assert!(!looks_rfc3339("2026-12-20"));
    }
}
