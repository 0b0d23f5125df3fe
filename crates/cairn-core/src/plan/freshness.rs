//! Fresh or dirty, before anything runs: which steps a build would restore and which it would
//! run, and why, from what the stores say about each key.
//!
//! The stores are behind [`Lookup`]: the local store answers one key at a time; a second tier
//! (the remote cache) is asked once per level of the graph for every key the first tier
//! missed, and a remote hit's outputs digest gives its dependents' keys without downloading
//! anything. Keys of steps downstream of one that will run are unknown until it has run: they
//! are reported as such, not guessed.

use super::key::{DirtyReason, KeyManifest, Upstream};
use super::Graph;
use std::collections::BTreeMap;

/// What the first tier (the local store) says about a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Known {
    /// Stored, with its outputs digest.
    Hit { outputs_digest: String },
    /// Not stored, and why (compared with what the store remembers of the step).
    Miss { reasons: Vec<DirtyReason> },
    /// The store could not answer.
    Error(String),
}

/// The stores a prediction asks.
pub trait Lookup {
    /// The first tier's answer for `step`'s `key` (whose manifest is `manifest`).
    fn local(&self, step: &str, key: &str, manifest: &KeyManifest) -> Known;
    /// The second tier, for the keys the first missed, in one request: for each key, `None`
    /// when absent, `Some(outputs digest if stated)` when present. `None` overall: there is no
    /// second tier.
    fn remote(&self, keys: &[String]) -> Option<Result<Vec<Option<Option<String>>>, String>> {
        let _ = keys;
        None
    }
}

/// What the stores say about a step before the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepState {
    /// `None` when an upstream step will run, so the key is not known yet.
    pub key: Option<String>,
    pub hit: bool,
    /// The hit is in the second tier (it will be downloaded).
    pub remote: bool,
    pub reasons: Vec<DirtyReason>,
    pub contribution: Option<Upstream>,
}

impl StepState {
    /// What this step contributes to its dependents' keys, when known.
    pub fn contribution(&self) -> Option<Upstream> {
        self.contribution.clone()
    }

    fn will_run(key: Option<String>, reasons: Vec<DirtyReason>) -> StepState {
        StepState { key, hit: false, remote: false, reasons, contribution: None }
    }
}

/// Predict hit or will-run for each selected node. `manifests` are the nodes' key manifests
/// without their upstream part (filled in here from upstream predictions).
pub fn predict(
    g: &Graph,
    selected: &[usize],
    manifests: &BTreeMap<usize, KeyManifest>,
    stores: &dyn Lookup,
) -> BTreeMap<usize, StepState> {
    let mut out: BTreeMap<usize, StepState> = BTreeMap::new();
    loop {
        let mut asked: Vec<(usize, String, Vec<DirtyReason>)> = Vec::new();
        let before = out.len();
        for &i in selected {
            if out.contains_key(&i) || asked.iter().any(|(j, _, _)| *j == i) {
                continue;
            }
            let n = &g.nodes[i];
            if n.needs.iter().any(|d| selected.contains(d) && !out.contains_key(d)) {
                continue; // decided in a later round
            }
            let mut manifest = manifests[&i].clone();
            let mut unknown = None;
            for &d in &n.needs {
                match out.get(&d).and_then(|s| s.contribution.clone()) {
                    Some(c) => {
                        manifest.upstream.insert(g.nodes[d].name.clone(), c);
                    }
                    None => unknown = unknown.or(Some(g.nodes[d].name.clone())),
                }
            }
            if let Some(step) = unknown {
                out.insert(i, StepState::will_run(None, vec![DirtyReason::UpstreamWillRun { step }]));
                continue;
            }
            let key = manifest.key();
            if !n.step.cache {
                out.insert(i, StepState::will_run(Some(key), vec![DirtyReason::NotCacheable]));
                continue;
            }
            let state = match stores.local(&n.name, &key, &manifest) {
                Known::Hit { outputs_digest } => {
                    let c = Upstream::of(!n.step.outputs.is_empty(), &key, &outputs_digest);
                    StepState { key: Some(key), hit: true, remote: false, reasons: vec![], contribution: Some(c) }
                }
                Known::Miss { reasons } => {
                    asked.push((i, key, reasons));
                    continue;
                }
                Known::Error(detail) => StepState::will_run(Some(key), vec![DirtyReason::StoreError { detail }]),
            };
            out.insert(i, state);
        }
        if !asked.is_empty() {
            let keys: Vec<String> = asked.iter().map(|(_, k, _)| k.clone()).collect();
            let answers = stores.remote(&keys);
            for (pos, (i, key, mut reasons)) in asked.into_iter().enumerate() {
                let n = &g.nodes[i];
                let state = match &answers {
                    None => StepState::will_run(Some(key), reasons),
                    Some(Ok(found)) => match found.get(pos).cloned().flatten() {
                        Some(outputs) => {
                            let c = match (n.step.outputs.is_empty(), outputs) {
                                (true, _) => Some(Upstream::Key(key.clone())),
                                (false, Some(d)) => Some(Upstream::Outputs(d)),
                                (false, None) => None,
                            };
                            StepState { key: Some(key), hit: true, remote: true, reasons: vec![], contribution: c }
                        }
                        None => StepState::will_run(Some(key), reasons),
                    },
                    Some(Err(e)) => {
                        reasons.push(DirtyReason::RemoteError { detail: e.clone() });
                        StepState::will_run(Some(key), reasons)
                    }
                };
                out.insert(i, state);
            }
        } else if out.len() == before {
            break;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::key::KEY_SCHEMA_VERSION;
    use std::cell::RefCell;

    /// Stores in memory: the keys each holds (outputs digest), and how often the remote was asked.
    #[derive(Default)]
    struct Mem {
        local: BTreeMap<String, String>,
        remote: Option<BTreeMap<String, Option<String>>>,
        remote_down: bool,
        asked: RefCell<Vec<usize>>,
    }

    impl Lookup for Mem {
        fn local(&self, _: &str, key: &str, _: &KeyManifest) -> Known {
            match self.local.get(key) {
                Some(d) => Known::Hit { outputs_digest: d.clone() },
                None => Known::Miss { reasons: vec![DirtyReason::NoEntry] },
            }
        }
        fn remote(&self, keys: &[String]) -> Option<Result<Vec<Option<Option<String>>>, String>> {
            let r = self.remote.as_ref()?;
            self.asked.borrow_mut().push(keys.len());
            if self.remote_down {
                return Some(Err("connection refused".into()));
            }
            Some(Ok(keys.iter().map(|k| r.get(k).cloned()).collect()))
        }
    }

    fn graph() -> (Graph, BTreeMap<usize, KeyManifest>) {
        let p = crate::model::load(
            "t.ron",
            br#"Pipeline(name: "t", steps: {
                "deps": (run: "fetch", outputs: ["deps/"]),
                "compile": (run: "build", needs: ["deps"], outputs: ["_build/"]),
                "test": (run: "test", needs: ["compile"]),
                "migrate": (run: "migrate", needs: ["compile"], cache: false),
            })"#,
        )
        .unwrap();
        let g = Graph::build(&p).unwrap();
        let manifests = (0..g.nodes.len())
            .map(|i| {
                let m = KeyManifest {
                    schema: KEY_SCHEMA_VERSION,
                    command: g.nodes[i].run.clone(),
                    workdir: ".".into(),
                    env: BTreeMap::new(),
                    secrets: vec![],
                    toolchains: BTreeMap::new(),
                    services: BTreeMap::new(),
                    platform: "test".into(),
                    inputs: BTreeMap::new(),
                    upstream: BTreeMap::new(),
                    outputs: g.nodes[i].step.outputs.clone(),
                };
                (i, m)
            })
            .collect();
        (g, manifests)
    }

    fn key_of(g: &Graph, m: &BTreeMap<usize, KeyManifest>, name: &str, upstream: &[(&str, Upstream)]) -> String {
        let i = g.index(name).unwrap();
        let mut m = m[&i].clone();
        for (u, c) in upstream {
            m.upstream.insert(u.to_string(), c.clone());
        }
        m.key()
    }

    fn summary(g: &Graph, s: &BTreeMap<usize, StepState>) -> Vec<String> {
        s.iter()
            .map(|(&i, st)| {
                let how = match (st.hit, st.remote) {
                    (true, false) => "hit".to_string(),
                    (true, true) => "remote hit".to_string(),
                    _ => st.reasons.iter().map(|r| r.code()).collect::<Vec<_>>().join(","),
                };
                format!("{}: {how}", g.nodes[i].name)
            })
            .collect()
    }

    #[test]
    fn predictions_from_the_stores_table() {
        let (g, m) = graph();
        let all: Vec<usize> = (0..g.nodes.len()).collect();
        let deps = key_of(&g, &m, "deps", &[]);
        let compile = key_of(&g, &m, "compile", &[("deps", Upstream::Outputs("D".into()))]);
        let test = key_of(&g, &m, "test", &[("compile", Upstream::Outputs("C".into()))]);
        type Case = (&'static str, Mem, &'static [&'static str]);
        let cases: Vec<Case> = vec![
            (
                "an empty store: the first step runs, the rest wait on it",
                Mem::default(),
                &[
                    "deps: no-entry",
                    "compile: upstream-will-run",
                    "test: upstream-will-run",
                    "migrate: upstream-will-run",
                ],
            ),
            (
                "all stored: hits, and a step that is never cached runs",
                Mem {
                    local: [(deps.clone(), "D".into()), (compile.clone(), "C".into()), (test.clone(), "T".into())]
                        .into(),
                    ..Mem::default()
                },
                &["deps: hit", "compile: hit", "test: hit", "migrate: not-cacheable"],
            ),
            (
                "the remote holds what the local store misses; its digest gives the next key",
                Mem {
                    local: [(test.clone(), "T".into())].into(),
                    remote: Some([(deps.clone(), Some("D".into())), (compile.clone(), Some("C".into()))].into()),
                    ..Mem::default()
                },
                &["deps: remote hit", "compile: remote hit", "test: hit", "migrate: not-cacheable"],
            ),
            (
                "a remote that is down is a reason, not a failure",
                Mem { remote: Some(BTreeMap::new()), remote_down: true, ..Mem::default() },
                &[
                    "deps: no-entry,remote-error",
                    "compile: upstream-will-run",
                    "test: upstream-will-run",
                    "migrate: upstream-will-run",
                ],
            ),
        ];
        for (what, stores, want) in cases {
            let got = summary(&g, &predict(&g, &all, &m, &stores));
            let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
            let mut got_sorted = got.clone();
            want.sort();
            got_sorted.sort();
            assert_eq!(got_sorted, want, "{what}");
        }
        // One remote request per level of the graph, not one per step.
        let stores = Mem { remote: Some([(deps, Some("D".into()))].into()), ..Mem::default() };
        predict(&g, &all, &m, &stores);
        assert_eq!(*stores.asked.borrow(), [1, 1], "deps, then compile");
    }
}
