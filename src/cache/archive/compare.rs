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

/// Every difference between a stored entry's outputs (extracted into `stored`) and a rebuild
/// of them (in `rebuilt`), each said the way a person checks it: a short unified diff for a
/// text file, sizes and the first differing byte for a binary one, or what is missing or extra.
pub fn differences(stored: &Path, rebuilt: &Path, outputs: &[String]) -> Vec<String> {
    let (a, b) = (list(stored, outputs), list(rebuilt, outputs));
    let there: std::collections::HashMap<&str, &Item> = b.iter().map(|i| (i.rel.as_str(), i)).collect();
    let mut out = Vec::new();
    for it in &a {
        let Some(w) = there.get(it.rel.as_str()) else {
            out.push(format!("{}: stored, but the rebuild did not produce it", it.rel));
            continue;
        };
        match (&it.kind, &w.kind) {
            (Kind::Dir, Kind::Dir) => {}
            (Kind::Symlink(x), Kind::Symlink(y)) if x == y => {}
            (Kind::Symlink(x), Kind::Symlink(y)) => {
                out.push(format!("{}: a link to `{}`, rebuilt as a link to `{}`", it.rel, x.display(), y.display()))
            }
            (Kind::File, Kind::File) => {
                let (x, y) = (fs::read(&it.abs).unwrap_or_default(), fs::read(&w.abs).unwrap_or_default());
                if x != y {
                    out.push(describe_file_change(&it.rel, &x, &y));
                } else if it.mode != w.mode {
                    out.push(format!("{}: mode {:o}, rebuilt as {:o}", it.rel, it.mode, w.mode));
                }
            }
            _ => out.push(format!("{}: a different kind of entry in the rebuild", it.rel)),
        }
    }
    let stored_names: HashSet<&str> = a.iter().map(|i| i.rel.as_str()).collect();
    for w in b.iter().filter(|w| !stored_names.contains(w.rel.as_str())) {
        out.push(format!("{}: produced by the rebuild, not in the stored entry", w.rel));
    }
    out
}

/// One changed file: a unified diff of the changed lines (text), or sizes and the first
/// differing offset (binary).
fn describe_file_change(rel: &str, old: &[u8], new: &[u8]) -> String {
    const MAX_LINES: usize = 12;
    match (std::str::from_utf8(old), std::str::from_utf8(new)) {
        (Ok(x), Ok(y)) if !x.contains('\0') && !y.contains('\0') => {
            let (xl, yl): (Vec<&str>, Vec<&str>) = (x.lines().collect(), y.lines().collect());
            let prefix = xl.iter().zip(&yl).take_while(|(a, b)| a == b).count();
            let suffix = xl[prefix..].iter().rev().zip(yl[prefix..].iter().rev()).take_while(|(a, b)| a == b).count();
            let (gone, came) = (&xl[prefix..xl.len() - suffix], &yl[prefix..yl.len() - suffix]);
            let mut s = format!(
                "{rel}: differs\n--- stored/{rel}\n+++ rebuilt/{rel}\n@@ -{},{} +{},{} @@",
                prefix + 1,
                gone.len(),
                prefix + 1,
                came.len()
            );
            for l in gone.iter().take(MAX_LINES) {
                s.push_str(&format!("\n-{l}"));
            }
            for l in came.iter().take(MAX_LINES) {
                s.push_str(&format!("\n+{l}"));
            }
            if gone.len() > MAX_LINES || came.len() > MAX_LINES {
                s.push_str("\n…");
            }
            if gone.is_empty() && came.is_empty() {
                s.push_str("\n(only line endings or the final newline differ)");
            }
            s
        }
        _ => {
            let at = old.iter().zip(new).position(|(a, b)| a != b).unwrap_or(old.len().min(new.len()));
            format!("{rel}: binary, {} bytes stored, {} rebuilt, first difference at byte {at}", old.len(), new.len())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_text_file_is_shown_as_a_short_diff_and_a_binary_by_offset() {
        let d = describe_file_change(
            "out/v.txt",
            b"name: app\nbuilt: 2026-12-01\nend\n",
            b"name: app\nbuilt: 2026-12-02\nend\n",
        );
        assert_eq!(d, "out/v.txt: differs\n--- stored/out/v.txt\n+++ rebuilt/out/v.txt\n@@ -2,1 +2,1 @@\n-built: 2026-12-01\n+built: 2026-12-02");
        let b = describe_file_change("out/x.bin", b"\0\x01\x02\x03", b"\0\x01\x09\x03\x04");
        assert_eq!(b, "out/x.bin: binary, 4 bytes stored, 5 rebuilt, first difference at byte 2");
    }
}
