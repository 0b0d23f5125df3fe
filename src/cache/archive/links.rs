//! Where a restore's symlinks may lead (see [`LinkRules`]).

use super::*;

/// Where a restore's symlinks may lead.
///
/// Every link is resolved the way the kernel would once the outputs are in place: through the
/// links of the archive itself (inside the step's outputs the archive is what will be there)
/// and through the links already in the worktree (outside them). A link is refused when that
/// resolution leaves the workspace, ends in `.git/` or cairn's own working directories, or
/// ends on a path `protected` names (the inputs of steps: a later run writing through such a
/// link would overwrite a source file). Resolution is done once every entry is known, so the
/// order of entries in the archive cannot hide a chain.
pub struct LinkRules<'a> {
    pub root: &'a Path,
    /// The step's declared outputs (as declared; normalised here).
    pub outputs: &'a [String],
    /// Why a path (relative to the root, `/`-separated) may not be a link's target, if so.
    pub protected: &'a (dyn Fn(&str) -> Option<String> + Sync),
}

impl<'a> LinkRules<'a> {
    /// Links may point anywhere inside the workspace except cairn's and git's own directories.
    pub fn within(root: &'a Path, outputs: &'a [String]) -> LinkRules<'a> {
        LinkRules { root, outputs, protected: &|_| None }
    }
}

/// Follow `link -> target` (both relative to the root) to the path it finally names, through
/// the links `lookup` knows. Errors say how the chain escapes.
pub(super) fn resolve_link(
    link: &Path,
    target: &Path,
    lookup: &dyn Fn(&Path) -> Option<PathBuf>,
) -> Result<PathBuf, String> {
    use std::collections::VecDeque;
    use std::ffi::OsString;
    fn parts(p: &Path) -> Result<Vec<OsString>, ()> {
        let mut v = Vec::new();
        for c in p.components() {
            match c {
                Component::Normal(n) => v.push(n.to_owned()),
                Component::CurDir => {}
                Component::ParentDir => v.push("..".into()),
                Component::RootDir | Component::Prefix(_) => return Err(()),
            }
        }
        Ok(v)
    }
    let absolute = || format!("target `{}` leads to an absolute path", target.display());
    let mut cur: Vec<OsString> = parts(link.parent().unwrap_or(Path::new(""))).map_err(|_| absolute())?;
    let mut pending: VecDeque<OsString> = parts(target).map_err(|_| absolute())?.into();
    let mut hops = 0;
    while let Some(c) = pending.pop_front() {
        if c == ".." {
            if cur.pop().is_none() {
                return Err(format!("target `{}` leads outside the workspace", target.display()));
            }
            continue;
        }
        cur.push(c);
        let here: PathBuf = cur.iter().collect();
        if let Some(next) = lookup(&here) {
            hops += 1;
            if hops > 40 {
                return Err(format!("target `{}`: too many levels of symbolic links", target.display()));
            }
            cur.pop();
            let spliced = parts(&next).map_err(|_| {
                format!("target `{}` leads through `{}` to an absolute path", target.display(), here.display())
            })?;
            for s in spliced.into_iter().rev() {
                pending.push_front(s);
            }
        }
    }
    Ok(cur.iter().collect())
}

/// Is `rel` (relative to the root) `out` or inside it?
fn under(rel: &Path, out: &str) -> bool {
    rel.starts_with(out)
}

/// Check every symlink of an extracted archive against `rules` (see [`LinkRules`]).
pub(super) fn check_links(
    links: &std::collections::HashMap<PathBuf, PathBuf>,
    rules: &LinkRules,
) -> Result<(), ArchiveError> {
    if links.is_empty() {
        return Ok(());
    }
    let (outputs, _) = split_outputs(rules.outputs);
    let lookup = |p: &Path| -> Option<PathBuf> {
        if let Some(t) = links.get(p) {
            return Some(t.clone());
        }
        if outputs.iter().any(|o| under(p, o)) {
            return None; // replaced by the archive's content
        }
        let abs = rules.root.join(p);
        match fs::symlink_metadata(&abs) {
            Ok(m) if m.file_type().is_symlink() => Some(fs::read_link(&abs).unwrap_or_else(|_| PathBuf::from("/"))),
            _ => None,
        }
    };
    let mut sorted: Vec<_> = links.iter().collect();
    sorted.sort();
    for (link, target) in sorted {
        let raw = link.display().to_string();
        let end = resolve_link(link, target, &lookup).map_err(|why| unsafe_entry(&raw, format!("symlink {why}")))?;
        let end_s = end.to_string_lossy().replace('\\', "/");
        let first = end.components().next().map(|c| c.as_os_str().to_string_lossy().to_string()).unwrap_or_default();
        if end.as_os_str().is_empty() {
            return Err(unsafe_entry(
                &raw,
                format!("symlink target `{}` is the workspace root itself", target.display()),
            ));
        }
        if first == ".git" || first == ".cairn-tmp" {
            return Err(unsafe_entry(&raw, format!("symlink target `{}` points into `{first}/`", target.display())));
        }
        if let Some(why) = (rules.protected)(&end_s) {
            return Err(unsafe_entry(
                &raw,
                format!("symlink target `{}` resolves to `{end_s}`, {why}", target.display()),
            ));
        }
    }
    Ok(())
}
