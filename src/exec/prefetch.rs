//! Output fingerprints taken ahead of the dispatch (see [`Prefetch`]).

use super::*;

/// Output fingerprints taken ahead, on a thread of their own while the inputs are scanned: on
/// a no-op, checking that outputs are still in place is half the work, and it does not depend
/// on the keys. The scan leaves a core idle while it loads its journal and assembles the
/// manifests; the fingerprints fill it.
///
/// A fingerprint taken ahead stands for a step's outputs as they were before this build wrote
/// anything. Once a step writes to the worktree (runs its command, or restores its outputs),
/// the fingerprints of that step and of every step downstream of it no longer count: those
/// steps are checked after the writer, in every schedule, and may see what it wrote (outputs
/// can overlap, like `deps/` inside `_build/`). Steps not downstream are unordered with the
/// writer anyway, so a fingerprint taken before its write is one a legal schedule could have
/// taken. A step looked at by the prefetcher and a worker at once is fingerprinted once.
pub struct Prefetch {
    /// Per step with outputs: its fingerprint, whether that still counts, and the steps it
    /// depends on (transitively).
    slots: BTreeMap<usize, Slot>,
    stop: std::sync::atomic::AtomicBool,
}

struct Slot {
    fingerprint: std::sync::OnceLock<Option<(String, i64)>>,
    stale: std::sync::atomic::AtomicBool,
    upstream: BTreeSet<usize>,
}

impl Prefetch {
    /// Slots for the selected steps that declare outputs.
    pub fn new(g: &Graph, selected: &[usize]) -> Prefetch {
        let slots = selected
            .iter()
            .filter(|&&i| !g.nodes[i].step.outputs.is_empty())
            .map(|&i| {
                let slot = Slot {
                    fingerprint: std::sync::OnceLock::new(),
                    stale: std::sync::atomic::AtomicBool::new(false),
                    upstream: g.ancestors(i).into_iter().collect(),
                };
                (i, slot)
            })
            .collect();
        Prefetch { slots, stop: std::sync::atomic::AtomicBool::new(false) }
    }

    /// Fingerprint every slot's outputs, in order, until stopped.
    pub fn run(&self, g: &Graph, root: &Path) {
        use std::sync::atomic::Ordering::SeqCst;
        for (&i, slot) in &self.slots {
            if self.stop.load(SeqCst) {
                return;
            }
            if !slot.stale.load(SeqCst) {
                slot.fingerprint.get_or_init(|| inputs::outputs_fingerprint(root, &g.nodes[i].outputs));
            }
        }
    }

    /// The prefetcher stops at its next step (the dispatch is over).
    pub fn stop(&self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// `writer` is about to write to the worktree: its fingerprint and those of the steps
    /// downstream of it no longer count.
    pub fn wrote(&self, writer: usize) {
        for (&i, slot) in &self.slots {
            if i == writer || slot.upstream.contains(&writer) {
                slot.stale.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    pub(super) fn fingerprint(&self, node: usize, root: &Path, outputs: &[String]) -> Option<(String, i64)> {
        match self.slots.get(&node) {
            Some(slot) if !slot.stale.load(std::sync::atomic::Ordering::SeqCst) => {
                slot.fingerprint.get_or_init(|| inputs::outputs_fingerprint(root, outputs)).clone()
            }
            _ => inputs::outputs_fingerprint(root, outputs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_fingerprinted_ahead_count_until_the_step_or_one_upstream_writes() {
        let d = tempfile::tempdir().unwrap();
        for dir in ["deps", "build", "docs"] {
            std::fs::create_dir_all(d.path().join(dir)).unwrap();
            std::fs::write(d.path().join(dir).join("a.txt"), "one").unwrap();
        }
        let p = crate::model::load(
            "t.ron",
            br#"Pipeline(name: "t", steps: {
                "deps": (run: "true", outputs: ["deps/"]),
                "build": (run: "true", needs: ["deps"], outputs: ["build/"]),
                "docs": (run: "true", outputs: ["docs/"]),
                "lint": (run: "true"),
            })"#,
        )
        .unwrap();
        let g = Graph::build(&p).unwrap();
        let all: Vec<usize> = (0..g.nodes.len()).collect();
        let at = |name: &str| g.nodes.iter().position(|n| n.name == name).unwrap();
        let out = |dir: &str| vec![format!("{dir}/")];
        let pf = Prefetch::new(&g, &all);
        assert_eq!(pf.slots.len(), 3, "only steps with outputs");
        pf.run(&g, d.path());
        let ahead = |name: &str| pf.fingerprint(at(name), d.path(), &out(name));
        let (build0, docs0) = (ahead("build"), ahead("docs"));
        assert_eq!(build0, inputs::outputs_fingerprint(d.path(), &out("build")));
        // Changes after the prefetch are not seen through it...
        for dir in ["build", "docs"] {
            std::fs::write(d.path().join(dir).join("b.txt"), "two").unwrap();
        }
        assert_eq!(ahead("build"), build0);
        // ...until a step upstream writes: then its dependents are checked afresh; a step not
        // downstream of the writer keeps what was taken ahead.
        pf.wrote(at("deps"));
        assert_ne!(ahead("build"), build0);
        assert_eq!(ahead("build"), inputs::outputs_fingerprint(d.path(), &out("build")));
        assert_eq!(ahead("docs"), docs0);
        pf.wrote(at("docs"));
        assert_ne!(ahead("docs"), docs0);
    }
}
