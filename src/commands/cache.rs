//! `cairn cache stats|gc|verify|pin`.

use super::{load_pipeline, open_store, parse_size, project_root};
use crate::cli::{CacheCommand, StoreArg};
use crate::error::Error;
use crate::report::bytes;

const DEFAULT_MAX: &str = "10GiB";

fn store_only(arg: &StoreArg) -> Result<crate::cache::Store, Error> {
    let root = std::env::current_dir().map_err(|e| Error::Io(format!("error: no current directory: {e}")))?;
    Ok(open_store(arg, &root)?.0)
}

fn io(e: crate::cache::StoreError) -> Error {
    Error::Io(format!("error: {e}"))
}

pub fn run(cmd: &CacheCommand) -> Result<(), Error> {
    match cmd {
        CacheCommand::Stats { store } => {
            let s = store_only(store)?;
            let entries = s.entries().map_err(io)?;
            let blobs: std::collections::BTreeMap<&str, u64> =
                entries.iter().map(|e| (e.blob.as_str(), e.blob_size)).collect();
            let mut per_step: std::collections::BTreeMap<&str, (usize, u64)> = Default::default();
            for e in &entries {
                let x = per_step.entry(&e.step).or_default();
                x.0 += 1;
                x.1 += e.blob_size;
            }
            println!("store: {}", s.dir().display());
            println!("entries: {}  blobs: {}  size: {}", entries.len(), blobs.len(), bytes(blobs.values().sum()));
            println!("pinned: {}", entries.iter().filter(|e| e.pinned).count());
            let copies = s.unpacked_copies();
            println!(
                "unpacked copies (restores by hard link): {}  size: {}",
                copies.len(),
                bytes(copies.iter().map(|c| c.1).sum())
            );
            for (step, (n, size)) in per_step {
                println!("  {step:<30} {n:>4} entries  {:>10}", bytes(size));
            }
            Ok(())
        }
        CacheCommand::Gc { store, max_size, pipeline, dry_run } => {
            let cap = match (max_size, pipeline) {
                (Some(m), _) => m.clone(),
                (None, Some(p)) => load_pipeline(p)?.cache.max_size.unwrap_or_else(|| DEFAULT_MAX.into()),
                (None, None) => DEFAULT_MAX.into(),
            };
            let max = parse_size(&cap)?;
            let s = store_only(store)?;
            let r = s.gc(max, *dry_run).map_err(io)?;
            let verb = if *dry_run { "would evict" } else { "evicted" };
            for (step, key, size) in &r.evicted {
                println!("{verb} {step} {} ({})", &key[..12.min(key.len())], bytes(*size));
            }
            println!(
                "{}: {} → {} (cap {}), {} entries {verb}, {} unpacked copies {}, {} orphan files {}",
                s.dir().display(),
                bytes(r.before_bytes),
                bytes(r.after_bytes),
                bytes(max),
                r.evicted.len(),
                r.unpacked_dropped,
                if *dry_run { "would go" } else { "removed" },
                r.orphans,
                if *dry_run { "found" } else { "removed" }
            );
            Ok(())
        }
        CacheCommand::Verify { store } => {
            let s = store_only(store)?;
            let r = s.verify().map_err(io)?;
            for (step, key, problem) in &r.corrupt {
                println!("corrupt: {step} {}: {problem} (entry dropped)", &key[..12.min(key.len())]);
            }
            println!("verified {} entries in {} blobs: {} corrupt", r.entries, r.blobs, r.corrupt.len());
            if r.corrupt.is_empty() {
                Ok(())
            } else {
                Err(Error::Io(format!(
                    "error: {} corrupt entries were dropped\n  hint: the next `cairn build` runs those steps again",
                    r.corrupt.len()
                )))
            }
        }
        CacheCommand::Pin { pipeline, store, steps, unpin } => {
            let p = load_pipeline(&pipeline.pipeline)?;
            let g = crate::plan::Graph::build(&p)?;
            let root = project_root(&pipeline.pipeline);
            let (s, cache_dir) = open_store(store, &root)?;
            let selected = g.closure(steps)?;
            let prepared = crate::exec::prepare(&p, &g, &selected, &root, &s, &cache_dir, 2)?;
            let states = super::plan::predict(&g, &selected, &prepared, &s);
            let wanted: Vec<usize> = g.closure(steps)?;
            let mut missing = Vec::new();
            for i in wanted {
                let st = &states[&i];
                match (&st.key, st.hit) {
                    (Some(k), true) => {
                        s.set_pinned(k, !unpin).map_err(io)?;
                        println!("{} {} {}", if *unpin { "unpinned" } else { "pinned" }, g.nodes[i].name, &k[..12]);
                    }
                    _ => missing.push(g.nodes[i].name.clone()),
                }
            }
            if missing.is_empty() {
                Ok(())
            } else {
                Err(Error::Usage(format!(
                    "error: no current entry for {}\n  hint: run `cairn build` first, then pin",
                    missing.join(", ")
                )))
            }
        }
        CacheCommand::Quarantine { pipeline, store, steps } => {
            let p = load_pipeline(&pipeline.pipeline)?;
            let g = crate::plan::Graph::build(&p)?;
            let root = project_root(&pipeline.pipeline);
            let (s, _) = open_store(store, &root)?;
            let named: Vec<usize> = g
                .closure(steps)?
                .into_iter()
                .filter(|&i| steps.iter().any(|t| g.nodes[i].name == *t || g.nodes[i].base == *t))
                .collect();
            let dropped_steps: std::collections::BTreeSet<usize> =
                named.iter().flat_map(|&i| std::iter::once(i).chain(g.dependents(i))).collect();
            let names: std::collections::BTreeSet<&str> =
                dropped_steps.iter().map(|&i| g.nodes[i].name.as_str()).collect();
            let mut dropped = 0;
            for e in s.entries().map_err(io)? {
                if names.contains(e.step.as_str()) {
                    s.drop_entry(&e.key, "quarantined").map_err(io)?;
                    dropped += 1;
                }
            }
            println!(
                "quarantined {}: {dropped} entries dropped; the next build runs them again",
                names.iter().copied().collect::<Vec<_>>().join(", ")
            );
            Ok(())
        }
    }
}
