//! Structural diffs of lock files, so "input changed: mix.lock" can say which dependencies
//! changed version. Pure: the caller supplies both contents.
//!
//! - `mix.lock`: an Elixir map, one dependency per line:
//!   `"jason": {:hex, :jason, "1.4.1", "sha", [:mix], [...], "hexpm", "sha"},` or
//!   `"dep": {:git, "https://...", "commit-sha", [...]},` (the commit is the version).
//! - `Cargo.lock`: TOML `[[package]]` tables with `name` and `version` (and `source`).

use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DepChange {
    pub name: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// Is this path a lock file we understand?
pub fn is_lockfile(path: &str) -> bool {
    let base = path.rsplit('/').next().unwrap_or(path);
    base == "mix.lock" || base == "Cargo.lock"
}

fn quoted(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start();
    let rest = s.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// name → version of a `mix.lock`. A git dependency's version is the ref it follows (tag,
/// branch or ref) and its commit: `git v1.2.0 (0123456789ab)`.
pub fn parse_mix_lock(text: &str) -> BTreeMap<String, String> {
    mix_lock_entries(text).into_iter().map(|(name, (version, _))| (name, version)).collect()
}

/// name → (version, the whole entry): the entry also holds the checksums, so a dependency
/// whose checksum changed without its version (a re-published package) is still seen.
fn mix_lock_entries(text: &str) -> BTreeMap<String, (String, String)> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, rest)) = quoted(line) else { continue };
        let Some(rest) = rest.trim_start().strip_prefix(':') else { continue };
        let Some(rest) = rest.trim_start().strip_prefix('{') else { continue };
        let fields: Vec<&str> = rest.splitn(4, ',').map(str::trim).collect();
        let version = match fields.first() {
            Some(&":hex") => fields.get(2).and_then(|f| quoted(f)).map(|(v, _)| v.to_string()),
            Some(&":git") => fields.get(2).and_then(|f| quoted(f)).map(|(sha, _)| {
                let sha = &sha[..sha.len().min(12)];
                let opts = fields.get(3).copied().unwrap_or("");
                let git_ref = ["tag", "branch", "ref"].iter().find_map(|k| {
                    let at = opts.find(&format!("{k}: \""))?;
                    quoted(&opts[at + k.len() + 1..]).map(|(v, _)| v.to_string())
                });
                match git_ref {
                    Some(r) => format!("git {r} ({sha})"),
                    None => format!("git {sha}"),
                }
            }),
            _ => None,
        };
        if let Some(v) = version {
            out.insert(name.to_string(), (v, rest.trim().trim_end_matches(',').to_string()));
        }
    }
    out
}

/// name → version(s) of a `Cargo.lock` (several versions of one crate are joined).
pub fn parse_cargo_lock(text: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        let line = line.trim();
        if line == "[[package]]" {
            name = None;
        } else if let Some(v) = line.strip_prefix("name = ") {
            name = quoted(v).map(|(n, _)| n.to_string());
        } else if let Some(v) = line.strip_prefix("version = ") {
            if let (Some(n), Some((ver, _))) = (name.take(), quoted(v)) {
                out.entry(n).and_modify(|e| *e = format!("{e}, {ver}")).or_insert_with(|| ver.to_string());
            }
        }
    }
    out
}

/// The dependencies whose version differs, was added or was removed.
pub fn diff(path: &str, old: &str, new: &str) -> Vec<DepChange> {
    if !path.ends_with("Cargo.lock") {
        let (a, b) = (mix_lock_entries(old), mix_lock_entries(new));
        let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
        names.sort();
        names.dedup();
        return names
            .into_iter()
            .filter(|n| a.get(*n) != b.get(*n))
            .map(|n| DepChange {
                name: n.clone(),
                old: a.get(n).map(|e| e.0.clone()),
                new: b.get(n).map(|e| e.0.clone()),
            })
            .collect();
    }
    let (a, b) = (parse_cargo_lock(old), parse_cargo_lock(new));
    let mut names: Vec<&String> = a.keys().chain(b.keys()).collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .filter(|n| a.get(*n) != b.get(*n))
        .map(|n| DepChange { name: n.clone(), old: a.get(n).cloned(), new: b.get(n).cloned() })
        .collect()
}

impl std::fmt::Display for DepChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.old, &self.new) {
            (Some(o), Some(n)) if o == n => write!(f, "{} {o}: checksum changed (same version)", self.name),
            (Some(o), Some(n)) => write!(f, "{} {o} → {n}", self.name),
            (None, Some(n)) => write!(f, "{} added ({n})", self.name),
            (Some(o), None) => write!(f, "{} removed (was {o})", self.name),
            (None, None) => write!(f, "{}", self.name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_lock_versions() {
        let old = r#"%{
  "jason": {:hex, :jason, "1.4.1", "af1504e35f629ddcdd6addb3513c3853991f694921b1b9368b0bd32beb9f1b63", [:mix], [], "hexpm", "fbb01ecdfd565b56261302f7e1fcc27c4fb8f32d56eab74db621fc154604a7a1"},
  "plug": {:hex, :plug, "1.15.0", "abc", [:mix], [], "hexpm", "def"},
  "ash": {:git, "https://github.com/ash-project/ash.git", "0123456789abcdef0123", []},
}"#;
        let new = old
            .replace("\"1.4.1\"", "\"1.4.4\"")
            .replace("  \"plug\": {:hex, :plug, \"1.15.0\", \"abc\", [:mix], [], \"hexpm\", \"def\"},\n", "")
            + "\n  \"telemetry\": {:hex, :telemetry, \"1.2.1\", \"x\", [:rebar3], [], \"hexpm\", \"y\"},";
        let d = diff("mix.lock", old, &new);
        let shown: Vec<String> = d.iter().map(|c| c.to_string()).collect();
        assert_eq!(shown, ["jason 1.4.1 → 1.4.4", "plug removed (was 1.15.0)", "telemetry added (1.2.1)"]);
        assert_eq!(parse_mix_lock(old)["ash"], "git 0123456789ab");
    }

    #[test]
    fn mix_lock_git_refs_and_checksum_only_changes() {
        let old = r#"%{
  "decimal": {:git, "https://github.com/ericmj/decimal.git", "aaaaaaaaaaaaaaaaaaaa", [tag: "v2.0.0"]},
  "plug": {:git, "https://github.com/elixir-plug/plug.git", "cccccccccccccccccccc", [branch: "main"]},
  "jason": {:hex, :jason, "1.4.1", "abc", [:mix], [], "hexpm", "def"},
}"#;
        let new = old
            .replace("aaaaaaaaaaaaaaaaaaaa\", [tag: \"v2.0.0\"]", "bbbbbbbbbbbbbbbbbbbb\", [tag: \"v2.1.0\"]")
            .replace("\"hexpm\", \"def\"", "\"hexpm\", \"XYZ\"");
        let shown: Vec<String> = diff("mix.lock", old, &new).iter().map(|c| c.to_string()).collect();
        assert_eq!(
            shown,
            [
                "decimal git v2.0.0 (aaaaaaaaaaaa) → git v2.1.0 (bbbbbbbbbbbb)",
                "jason 1.4.1: checksum changed (same version)"
            ]
        );
        assert_eq!(parse_mix_lock(old)["plug"], "git main (cccccccccccc)");
    }

    #[test]
    fn cargo_lock_versions() {
        let old = "[[package]]\nname = \"blake3\"\nversion = \"1.8.6\"\n\n[[package]]\nname = \"tar\"\nversion = \"0.4.46\"\n";
        let new = old.replace("1.8.6", "1.8.7");
        assert_eq!(diff("Cargo.lock", old, &new)[0].to_string(), "blake3 1.8.6 → 1.8.7");
    }
}
