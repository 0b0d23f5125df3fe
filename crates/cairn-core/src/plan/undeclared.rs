//! What a traced step touched that it did not declare, and the declaration that fixes it.
//!
//! Report mode (`exec::trace`) records every file a step's processes opened or executed. The
//! executor turns each into a [`Seen`] (where it is relative to the workspace, whether it is
//! an existing regular file, whether git ignores it); [`classify`] compares them with what the
//! step declared and says, per path, what is wrong and what to add. Pure: no filesystem here.
//!
//! A hit may rest only on declared inputs, so a step that read an undeclared file is never
//! stored ([`Finding::blocks_store`]); a write outside its outputs is reported by name.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// What a call did with a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Touch {
    /// Opened for reading or executed.
    Read,
    /// Opened for writing, created or truncated.
    Write,
    /// Connected to `abs` (`ADDRESS:PORT`) over TCP.
    Connect(u16),
}

/// One traced path, with the facts about it the executor looked up.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Relative to the workspace root (`/`-separated, normalised), or `None` outside it.
    pub rel: Option<String>,
    /// The absolute path, normalised (what strict mode reports outside the workspace).
    pub abs: String,
    pub touch: Touch,
    /// It is a regular file now (a read of anything else is a probe or a directory listing).
    pub is_file: bool,
    /// Git ignores it (so it can be no input: another checkout won't have it).
    pub git_ignored: bool,
}

/// What the step declared.
#[derive(Debug, Clone, Default)]
pub struct Declared {
    /// Files and trees it may read (its inputs, its upstream steps' outputs, its own outputs).
    pub reads: BTreeSet<String>,
    /// Files and trees it may write (its outputs and scratch paths).
    pub writes: BTreeSet<String>,
    /// Every other step's outputs: path → (step, whether this step needs it).
    pub others: BTreeMap<String, (String, bool)>,
    /// The step's input sets with their include globs, in the order it names them.
    pub input_sets: Vec<(String, Vec<String>)>,
    /// Strict mode: the paths outside the workspace it may read (system directories, its
    /// private temp dir, its `host` paths); `None` when not strict.
    pub host: Option<Vec<String>>,
    /// `$HOME`, to write `~/...` in suggestions.
    pub home: Option<String>,
    /// The ports it may connect to (its services'); `None`: any (`network: true`).
    pub ports: Option<Vec<u16>>,
}

/// One thing the step did that it did not declare.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Finding {
    /// Read a file that is not among its inputs: add `glob` to input set `set` (or to the
    /// step's own `inputs` when `set` is `None`).
    UndeclaredRead { path: String, glob: String, set: Option<String> },
    /// Read another step's output without needing that step.
    UndeclaredNeed { path: String, step: String },
    /// Read a file git ignores: declare it `untracked` (hashed when present).
    IgnoredRead { path: String },
    /// Read git's own state, which no input can cover.
    GitRead { path: String },
    /// Wrote outside its outputs and scratch paths.
    StrayWrite { path: String },
    /// Wrote into another step's outputs.
    ForeignWrite { path: String, step: String },
    /// Strict mode: read outside the workspace, outside system paths and its `host` paths.
    HostRead { path: String, host: String },
    /// Connected out without declaring `network: true`.
    Network { to: String },
}

impl Finding {
    /// A step that did this is not stored: its result may rest on something no key covers.
    pub fn blocks_store(&self) -> bool {
        !matches!(self, Finding::StrayWrite { .. } | Finding::ForeignWrite { .. })
    }

    /// The path concerned.
    pub fn path(&self) -> &str {
        match self {
            Finding::UndeclaredRead { path, .. }
            | Finding::UndeclaredNeed { path, .. }
            | Finding::IgnoredRead { path }
            | Finding::GitRead { path }
            | Finding::StrayWrite { path }
            | Finding::ForeignWrite { path, .. }
            | Finding::HostRead { path, .. }
            | Finding::Network { to: path } => path,
        }
    }

    /// One line for step `step`, naming the path and what to declare.
    pub fn message(&self, step: &str) -> String {
        match self {
            Finding::UndeclaredRead { path, glob, set: Some(set) } => {
                format!("step `{step}` read {path}, which is not among its inputs: add \"{glob}\" to input set \"{set}\"")
            }
            Finding::UndeclaredRead { path, glob, set: None } => format!(
                "step `{step}` read {path}, which is not among its inputs: add \"{glob}\" to the inputs of step `{step}`"
            ),
            Finding::UndeclaredNeed { path, step: other } => format!(
                "step `{step}` read {path}, an output of step `{other}`, without needing it: add \"{other}\" to the needs of step `{step}`"
            ),
            Finding::IgnoredRead { path } => format!(
                "step `{step}` read {path}, which git ignores (other checkouts may lack it or hold another): add \"{path}\" to the untracked inputs of step `{step}` (hashed when present)"
            ),
            Finding::GitRead { path } => format!(
                "step `{step}` read {path}, git's own state, which no input can cover: pass what it needs in env instead"
            ),
            Finding::StrayWrite { path } => format!(
                "step `{step}` wrote {path}, which is not among its outputs: declare it in outputs (stored) or scratch (not stored)"
            ),
            Finding::ForeignWrite { path, step: other } => format!(
                "step `{step}` wrote {path}, an output of step `{other}`: declare it as an output of `{step}` too (outputs: [\"{path}\"]) so `{other}`'s outputs stay in place"
            ),
            Finding::HostRead { path, host } => format!(
                "step `{step}` read {path}, outside the workspace and outside system paths: add \"{host}\" to the host paths of step `{step}`"
            ),
            Finding::Network { to } => format!(
                "step `{step}` connected to {to} without declaring the network: add `network: true` to step `{step}` (its result then rests on what it fetched)"
            ),
        }
    }
}

/// Is `path` the tree or file `decl`, or inside it?
fn under(path: &str, decl: &str) -> bool {
    let d = decl.trim_end_matches('/');
    d.is_empty() || d == "." || path == d || path.strip_prefix(d).is_some_and(|r| r.starts_with('/'))
}

/// The glob to suggest for `path`: its top directory's whole tree (`src/**`), or the file
/// itself at the root.
fn glob_for(path: &str) -> String {
    match path.split_once('/') {
        Some((top, _)) => format!("{top}/**"),
        None => path.to_string(),
    }
}

/// The input set to extend for `glob`: the one whose globs already reach into the same top
/// directory, else the step's first; `None` when it names none.
fn set_for(glob: &str, sets: &[(String, Vec<String>)]) -> Option<String> {
    let top = glob.trim_end_matches("/**");
    sets.iter()
        .find(|(_, inc)| inc.iter().any(|g| g.starts_with(&format!("{top}/"))))
        .or(sets.first())
        .map(|(n, _)| n.clone())
}

/// Compare what a step touched with what it declared; one finding per path, sorted.
pub fn classify(decl: &Declared, seen: impl IntoIterator<Item = Seen>) -> Vec<Finding> {
    let mut out = BTreeSet::new();
    for s in seen {
        let finding = match (&s.rel, s.touch) {
            (Some(rel), Touch::Read) => {
                if !s.is_file || decl.reads.iter().any(|d| under(rel, d)) || decl.writes.iter().any(|d| under(rel, d)) {
                    continue;
                }
                let owner = decl.others.iter().find(|(o, _)| under(rel, o)).map(|(_, owner)| owner);
                if let Some((step, needed)) = owner {
                    if *needed {
                        continue; // a needed step's output, granted through `reads`
                    }
                    Finding::UndeclaredNeed { path: rel.clone(), step: step.clone() }
                } else if rel == ".git" || rel.starts_with(".git/") {
                    Finding::GitRead { path: rel.clone() }
                } else if s.git_ignored {
                    Finding::IgnoredRead { path: rel.clone() }
                } else {
                    let glob = glob_for(rel);
                    let set = set_for(&glob, &decl.input_sets);
                    Finding::UndeclaredRead { path: rel.clone(), glob, set }
                }
            }
            (Some(rel), Touch::Write) => {
                if decl.writes.iter().any(|d| under(rel, d)) {
                    continue;
                }
                match decl.others.iter().find(|(o, _)| under(rel, o)) {
                    Some((_, (step, _))) => Finding::ForeignWrite { path: rel.clone(), step: step.clone() },
                    None => Finding::StrayWrite { path: rel.clone() },
                }
            }
            (None, Touch::Read) => {
                let Some(host) = &decl.host else { continue };
                if !s.is_file || host.iter().any(|h| under(&s.abs, h)) {
                    continue;
                }
                Finding::HostRead { path: tilde(&s.abs, decl), host: tilde(&host_for(&s.abs, decl), decl) }
            }
            (None, Touch::Write) => continue, // outside the workspace: Landlock's business
            (_, Touch::Connect(port)) => {
                if decl.ports.as_ref().is_none_or(|p| p.contains(&port)) {
                    continue;
                }
                Finding::Network { to: s.abs.clone() }
            }
        };
        out.insert(finding);
    }
    out.into_iter().collect()
}

/// The directory to suggest for a host read: under `$HOME`, its first component there
/// (`~/.hex`); elsewhere the first two (`/srv/tools`).
fn host_for(abs: &str, decl: &Declared) -> String {
    if let Some(home) = &decl.home {
        if let Some(rest) = abs.strip_prefix(home.as_str()).and_then(|r| r.strip_prefix('/')) {
            return match rest.split_once('/') {
                Some((first, _)) => format!("{home}/{first}"),
                None => abs.to_string(),
            };
        }
    }
    let parts: Vec<&str> = abs.trim_start_matches('/').splitn(3, '/').collect();
    match parts.len() {
        3 => format!("/{}/{}", parts[0], parts[1]),
        _ => abs.to_string(),
    }
}

fn tilde(abs: &str, decl: &Declared) -> String {
    match &decl.home {
        Some(h) => match abs.strip_prefix(h.as_str()) {
            Some(r) if r.starts_with('/') => format!("~{r}"),
            _ => abs.to_string(),
        },
        None => abs.to_string(),
    }
}

/// The declarations that silence a set of findings, grouped the way a pipeline holds them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Learned {
    /// Input set → globs to add.
    pub input_sets: BTreeMap<String, BTreeSet<String>>,
    /// Step → list field (`inputs`, `untracked`, `needs`, `outputs`, `host`) → values to add.
    pub steps: BTreeMap<String, BTreeMap<&'static str, BTreeSet<String>>>,
    /// Steps that connected out and should declare `network: true`.
    pub network: BTreeSet<String>,
    /// What no declaration fixes (reads of `.git/`), said as messages.
    pub unfixable: Vec<String>,
}

impl Learned {
    /// Fold one step's findings in.
    pub fn add(&mut self, step: &str, findings: &[Finding]) {
        let mut field = |f: &'static str, v: String| {
            self.steps.entry(step.to_string()).or_default().entry(f).or_default().insert(v);
        };
        for f in findings {
            match f {
                Finding::UndeclaredRead { glob, set: None, .. } => field("inputs", glob.clone()),
                Finding::UndeclaredNeed { step: other, .. } => field("needs", other.clone()),
                // Declared as this step's output too, the other step's outputs stay in place
                // (`mix test` writes `.mix_test_failures` into compile's `_build/test/`).
                Finding::StrayWrite { path } | Finding::ForeignWrite { path, .. } => field("outputs", path.clone()),
                Finding::HostRead { host, .. } => field("host", host.clone()),
                Finding::UndeclaredRead { glob, set: Some(set), .. } => {
                    self.input_sets.entry(set.clone()).or_default().insert(glob.clone());
                }
                Finding::Network { .. } => {
                    self.network.insert(step.to_string());
                }
                Finding::IgnoredRead { path } => field("untracked", path.clone()),
                Finding::GitRead { .. } => self.unfixable.push(f.message(step)),
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.input_sets.is_empty() && self.steps.is_empty() && self.network.is_empty()
    }

    /// A RON fragment in the pipeline's own shape holding only the additions.
    pub fn to_ron(&self) -> String {
        use std::fmt::Write;
        let list = |v: &BTreeSet<String>| v.iter().map(|s| format!("{s:?}")).collect::<Vec<_>>().join(", ");
        let mut o = String::new();
        if !self.input_sets.is_empty() {
            o.push_str("input_sets: {\n");
            for (name, globs) in &self.input_sets {
                let _ = writeln!(o, "    {name:?}: (include: [{}]),", list(globs));
            }
            o.push_str("},\n");
        }
        let names: BTreeSet<&String> = self.steps.keys().chain(&self.network).collect();
        if !names.is_empty() {
            o.push_str("steps: {\n");
            for name in names {
                let mut fields: Vec<String> =
                    self.steps.get(name).into_iter().flatten().map(|(f, v)| format!("{f}: [{}]", list(v))).collect();
                if self.network.contains(name) {
                    fields.push("network: true".into());
                }
                let _ = writeln!(o, "    {name:?}: ({}),", fields.join(", "));
            }
            o.push_str("},\n");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(rel: &str, touch: Touch) -> Seen {
        Seen { rel: Some(rel.into()), abs: format!("/w/{rel}"), touch, is_file: true, git_ignored: false }
    }

    fn decl() -> Declared {
        Declared {
            reads: ["lib", "mix.exs", "config/config.exs", "deps"].map(String::from).into(),
            writes: ["_build"].map(String::from).into(),
            others: [
                ("deps".to_string(), ("deps".to_string(), true)),
                ("cover".to_string(), ("test".to_string(), false)),
            ]
            .into(),
            input_sets: vec![
                ("elixir".into(), vec!["lib/**".into(), "config/**".into()]),
                ("data".into(), vec!["priv/*.txt".into()]),
            ],
            host: None,
            home: Some("/home/u".into()),
            ports: Some(vec![5432]),
        }
    }

    #[test]
    fn each_undeclared_touch_is_named_with_its_fix() {
        let mut ignored = seen("config/local.exs", Touch::Read);
        ignored.git_ignored = true;
        let mut probe = seen("Elixir.Foo.beam", Touch::Read);
        probe.is_file = false;
        let found = classify(
            &decl(),
            [
                seen("lib/a.ex", Touch::Read),
                seen("src/plug_multipart.erl", Touch::Read),
                seen("priv/static/x.json", Touch::Read),
                seen("README.md", Touch::Read),
                ignored,
                probe,
                seen("deps/decimal/mix.exs", Touch::Read),
                seen("cover/x.html", Touch::Read),
                seen("_build/dev/x.beam", Touch::Write),
                seen("deps/decimal/.fetch", Touch::Write),
                seen("erl_crash.dump", Touch::Write),
            ],
        );
        let msgs: Vec<String> = found.iter().map(|f| f.message("compile")).collect();
        assert!(msgs.iter().all(|m| m.starts_with("step `compile` ")));
        assert!(msgs.contains(&"step `compile` read src/plug_multipart.erl, which is not among its inputs: add \"src/**\" to input set \"elixir\"".to_string()), "{msgs:#?}");
        assert!(msgs.iter().any(|m| m.contains("priv/static/x.json") && m.contains("input set \"data\"")));
        assert!(msgs.iter().any(|m| m.contains("config/local.exs") && m.contains("git ignores")));
        assert!(msgs.iter().any(|m| m.contains("add \"config/local.exs\" to the untracked inputs")));
        assert!(msgs.iter().any(|m| m.contains("cover/x.html") && m.contains("add \"test\" to the needs")));
        assert!(msgs.iter().any(|m| m.contains("wrote deps/decimal/.fetch, an output of step `deps`")));
        assert!(msgs.iter().any(|m| m.contains("wrote erl_crash.dump, which is not among its outputs")));
        assert_eq!(found.len(), 7, "declared reads, writes and probes say nothing: {msgs:#?}");
        assert!(found.iter().filter(|f| f.blocks_store()).count() == 5);

        let mut learned = Learned::default();
        learned.add("compile", &found);
        let ron = learned.to_ron();
        assert!(ron.contains("\"elixir\": (include: [\"README.md\", \"src/**\"])"), "{ron}");
        assert!(
            ron.contains(
                "\"compile\": (needs: [\"test\"], outputs: [\"deps/decimal/.fetch\", \"erl_crash.dump\"], untracked: [\"config/local.exs\"])"
            ),
            "{ron}"
        );
        assert!(learned.unfixable.is_empty());
    }

    #[test]
    fn strict_mode_reports_host_reads_outside_system_paths() {
        let mut d = decl();
        d.host = Some(vec!["/usr".into(), "/home/u/.mix".into()]);
        let outside =
            |abs: &str| Seen { rel: None, abs: abs.into(), touch: Touch::Read, is_file: true, git_ignored: false };
        let found = classify(
            &d,
            [
                outside("/usr/lib/erlang/bin/erl"),
                outside("/home/u/.mix/archives/hex.ez"),
                outside("/home/u/.hex/cache.ets"),
            ],
        );
        assert_eq!(
            found,
            [Finding::HostRead { path: "~/.hex/cache.ets".into(), host: "~/.hex".into() }],
            "only the undeclared host path"
        );
        d.host = None;
        assert!(classify(&d, [outside("/home/u/.hex/cache.ets")]).is_empty(), "not strict: outside is free");
    }

    #[test]
    fn connections_beyond_the_services_need_network() {
        let mut d = decl();
        let to = |abs: &str, port| Seen {
            rel: None,
            abs: abs.into(),
            touch: Touch::Connect(port),
            is_file: false,
            git_ignored: false,
        };
        let found = classify(&d, [to("127.0.0.1:5432", 5432), to("140.82.112.3:443", 443)]);
        assert_eq!(found, [Finding::Network { to: "140.82.112.3:443".into() }]);
        let mut learned = Learned::default();
        learned.add("deps", &found);
        assert_eq!(learned.to_ron(), "steps: {\n    \"deps\": (network: true),\n},\n");
        d.ports = None;
        assert!(classify(&d, [to("140.82.112.3:443", 443)]).is_empty(), "network: true");
    }
}
