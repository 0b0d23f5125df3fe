//! Comparing outputs on disk with each other and with what a step was expected to leave:
//! why outputs were restored, what a step wrote, whether an output holds a secret.

use super::*;

/// Every entry of `outputs` under `root`, sorted and without duplicates (unreadable or
/// missing outputs are left out).
fn list(root: &Path, outputs: &[String]) -> Vec<Item> {
    let mut items = Vec::new();
    let (walk, carve) = split_outputs(outputs);
    for out in &walk {
        let _ = collect(root, out, &mut items, &carve);
    }
    items.sort_by(|a, b| a.rel.cmp(&b.rel));
    items.dedup_by(|a, b| a.rel == b.rel);
    items
}

/// The first path where the worktree's outputs differ from freshly extracted ones, said the
/// way a person wants to hear why outputs were restored: `deps/x.ex was changed`.
pub fn first_difference(staged: &Path, worktree: &Path, outputs: &[String]) -> Option<String> {
    let (a, b) = (list(staged, outputs), list(worktree, outputs));
    let there: std::collections::HashMap<&str, &Item> = b.iter().map(|i| (i.rel.as_str(), i)).collect();
    for it in &a {
        let Some(w) = there.get(it.rel.as_str()) else {
            return Some(format!("{} was removed", it.rel));
        };
        let differs = match (&it.kind, &w.kind) {
            (Kind::Dir, Kind::Dir) => it.mode != w.mode,
            (Kind::Symlink(x), Kind::Symlink(y)) => x != y,
            (Kind::File, Kind::File) => {
                it.mode != w.mode || it.size != w.size || fs::read(&it.abs).ok() != fs::read(&w.abs).ok()
            }
            _ => true,
        };
        if differs {
            let how = if it.mode != w.mode && matches!((&it.kind, &w.kind), (Kind::File, Kind::File)) {
                format!("had its permissions changed ({:o} → {:o})", it.mode, w.mode)
            } else {
                "was changed".to_string()
            };
            return Some(format!("{} {how}", it.rel));
        }
    }
    let staged: HashSet<&str> = a.iter().map(|i| i.rel.as_str()).collect();
    b.iter().find(|w| !staged.contains(w.rel.as_str())).map(|w| format!("{} was added", w.rel))
}

/// Entries of `outputs` changed (written, created, chmod'ed) at or after `since_ns`.
pub fn changed_since(root: &Path, outputs: &[String], since_ns: i64) -> Vec<String> {
    list(root, outputs)
        .into_iter()
        .filter(|it| !matches!(it.kind, Kind::Dir) && (it.stat.mtime >= since_ns || it.stat.ctime >= since_ns))
        .map(|it| it.rel)
        .collect()
}

/// The first output file (in path order) whose content `pred` flags, with what it said.
pub fn find_in_outputs(
    root: &Path,
    outputs: &[String],
    pred: impl Fn(&[u8]) -> Option<String>,
) -> Option<(String, String)> {
    for it in list(root, outputs) {
        if matches!(it.kind, Kind::File) {
            if let Some(what) = fs::read(&it.abs).ok().and_then(|bytes| pred(&bytes)) {
                return Some((it.rel, what));
            }
        }
    }
    None
}
