//! `cairn why STEP`: what changed in a step's key since its previous entry.

use super::{load_pipeline, open_store, project_root};
use crate::cli::WhyArgs;
use crate::error::Error;
use crate::plan::key::{diff, DirtyReason};
use crate::plan::{lockfile, Graph};
use serde_json::json;

pub fn run(args: &WhyArgs) -> Result<(), Error> {
    let p = load_pipeline(&args.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    let root = project_root(&args.pipeline.pipeline);
    let (store, cache_dir) = open_store(&args.store, &root)?;
    let wanted: Vec<usize> =
        (0..g.nodes.len()).filter(|&i| g.nodes[i].name == args.step || g.nodes[i].base == args.step).collect();
    if wanted.is_empty() {
        return Err(crate::plan::GraphError::UnknownStep(args.step.clone()).into());
    }
    let selected = g.closure(&[args.step.as_str()])?;
    let prepared = crate::exec::prepare(&p, &g, &selected, &root, &store, &cache_dir, 2)?;
    let states = super::plan::predict(&g, &selected, &prepared, &store);
    let remote = super::build::remote_client(&args.remote, &p)?;
    let mut out = Vec::new();
    for i in wanted {
        let n = &g.nodes[i];
        let state = &states[&i];
        let mut current = prepared.manifests[&i].clone();
        for &d in &n.needs {
            if let Some(c) = states.get(&d).and_then(|s| s.contribution()) {
                current.upstream.insert(g.nodes[d].name.clone(), c);
            }
        }
        let key = current.key();
        let stored_now = store.get(&key).map_err(|e| Error::Io(format!("error: {e}")))?;
        // Explain the key against the entry this worktree last used for the step (after a
        // revert the newest entry is another branch's), else the newest other entry.
        let last_here = store.worktree(&root).last_key(&n.name);
        let previous =
            store.worktree(&root).previous_entry(&n.name, &key).map_err(|e| Error::Io(format!("error: {e}")))?;
        let mut reasons: Vec<serde_json::Value> = Vec::new();
        let mut text: Vec<String> = Vec::new();
        let hit = stored_now.is_some() && n.step.cache;
        let status = if hit { "would hit" } else { "will run" };
        if hit {
            text.push(format!(
                "would hit: key {} is stored, so `cairn build` restores it and runs nothing",
                &key[..12]
            ));
            if last_here.as_deref() == Some(key.as_str()) {
                text.push("it is the entry this worktree used last".into());
            }
        }
        if !state.hit && state.key.is_none() {
            text.push(format!(
                "an upstream step will run first: {}",
                state.reasons.iter().map(|r| r.describe()).collect::<Vec<_>>().join("; ")
            ));
        }
        // The previous entry: the newest local one, else the newest the remote holds.
        let mut compared: Option<(String, crate::plan::key::KeyManifest, &str)> =
            previous.as_ref().and_then(|e| e.manifest().map(|m| (e.key.clone(), m, "local")));
        if compared.is_none() {
            if let Some(r) = &remote {
                match r.latest_key_for_step(&n.name) {
                    Ok(Some(k)) if k != key => match r.envelope(&k) {
                        Ok(Some(env)) => compared = Some((k, env.manifest, "remote")),
                        Ok(None) => {}
                        Err(e) => text.push(format!("the remote's newest entry could not be read: {e}")),
                    },
                    Ok(_) => {}
                    Err(e) => text.push(format!("the remote could not be asked: {e}")),
                }
            }
        }
        let compared_key = compared.as_ref().map(|c| c.0.clone());
        let compared_source = compared.as_ref().map(|c| c.2);
        match compared {
            None => {
                text.push("no earlier entry of this step in the store: nothing to compare with".into());
                reasons.push(json!({"code": "no-entry", "detail": DirtyReason::NoEntry.describe()}));
            }
            Some((prev_key, old, source)) => {
                let d = diff(&old, &current);
                if source == "remote" {
                    text.push(format!("compared with the newest remote entry {} (never built here)", &prev_key[..12]));
                }
                let which = if last_here.as_deref() == Some(prev_key.as_str()) {
                    "the entry this worktree used last"
                } else {
                    "the previous entry"
                };
                if d.is_empty() {
                    text.push(format!("identical to {which} {}", &prev_key[..12]));
                } else if hit {
                    text.push(format!("differs from {which} {} in:", &prev_key[..12]));
                }
                for r in d {
                    let mut v = json!({"code": r.code(), "detail": r.describe(), "reason": r});
                    let mut line = r.describe();
                    if let DirtyReason::InputChanged { path } = &r {
                        if lockfile::is_lockfile(path) {
                            let old_digest = &old.inputs[path].digest;
                            let before = store.snapshot(old_digest).ok().flatten();
                            let after = std::fs::read_to_string(root.join(path)).ok();
                            if let (Some(before), Some(after)) = (before, after) {
                                let changes = lockfile::diff(path, &before, &after);
                                let shown: Vec<String> = changes.iter().map(|c| c.to_string()).collect();
                                if !shown.is_empty() {
                                    line = format!("{line}: {}", shown.join(", "));
                                }
                                v["dependencies"] = json!(changes);
                            }
                        }
                    }
                    text.push(line);
                    reasons.push(v);
                }
            }
        }
        if args.json {
            out.push(json!({
                "step": n.name,
                "key": state.key,
                "status": status,
                "would_hit": hit,
                "compared_with": compared_key,
                "compared_source": compared_source,
                "reasons": reasons,
            }));
        } else {
            println!("{} ({status}, key {}):", n.name, state.key.as_deref().map(|k| &k[..12]).unwrap_or("unknown yet"));
            for t in text {
                println!("  - {}", prepared.masker.mask(&t));
            }
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&out).expect("json");
        println!("{}", prepared.masker.mask(&text));
    }
    Ok(())
}
