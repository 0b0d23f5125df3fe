//! The house's floor plan, checked: which layer may import which, no cycle between layers,
//! and a core crate without effects. Fails naming the file, line and import.

use crate::util::repo_root;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layer a source file belongs to: its directory under `src/`, or its file stem.
fn layer(rel: &Path) -> String {
    let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
    first.trim_end_matches(".rs").to_string()
}

/// Code lines of a file, test modules and comments left out.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            break; // test modules come last in this code base
        }
        if t.starts_with("//") {
            continue;
        }
        out.push((i + 1, line));
    }
    out
}

/// Every `crate::LAYER` a layer's code names: layer → (imported layer → first place).
fn imports() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = repo_root().join("src");
    let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for e in
        walkdir::WalkDir::new(&src).into_iter().flatten().filter(|e| e.path().extension().is_some_and(|x| x == "rs"))
    {
        let rel = e.path().strip_prefix(&src).unwrap().to_path_buf();
        let from = layer(&rel);
        let text = std::fs::read_to_string(e.path()).unwrap();
        for (n, line) in code_lines(&text) {
            let mut rest = line;
            while let Some(at) = rest.find("crate::") {
                let name: String =
                    rest[at + 7..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                if !name.is_empty() && name != from {
                    out.entry(from.clone())
                        .or_default()
                        .entry(name)
                        .or_insert_with(|| format!("src/{}:{n}: {}", rel.display(), line.trim()));
                }
                rest = &rest[at + 7..];
            }
        }
    }
    out
}

#[test]
fn no_layer_imports_one_it_must_not() {
    let effects_below_commands = ["commands", "cli"];
    let forbidden: &[(&str, &[&str])] = &[
        // Reports fold summaries: they never reach back into executors, stores or servers.
        ("report", &["exec", "cache", "server", "deploy", "inputs", "commands", "cli"]),
        // The store knows archives and inputs, not who runs steps or deploys.
        ("cache", &["exec", "deploy", "server", "report", "commands", "cli"]),
        ("server", &["exec", "report", "inputs", "commands", "cli"]),
        ("inputs", &["exec", "cache", "deploy", "server", "report", "commands", "cli"]),
        ("exec", &["deploy", "server", "report", "commands", "cli"]),
        ("deploy", &["server", "report", "commands", "cli"]),
        // Leaves.
        ("clock", &["cache", "report", "server", "inputs", "deploy", "exec", "commands", "cli"]),
        ("interrupt", &["cache", "report", "server", "inputs", "deploy", "exec", "commands", "cli", "clock"]),
    ];
    let all = imports();
    let mut wrong = Vec::new();
    for (from, banned) in forbidden {
        for b in banned.iter().chain(&effects_below_commands) {
            if let Some(place) = all.get(*from).and_then(|m| m.get(*b)) {
                wrong.push(format!("`{from}` imports `{b}`: {place}"));
            }
        }
    }
    assert!(wrong.is_empty(), "forbidden imports:\n{}", wrong.join("\n"));
}

#[test]
fn the_layers_import_each_other_without_a_cycle() {
    let all = imports();
    let layers: BTreeSet<String> = all.keys().cloned().collect();
    // Depth-first search for a back edge, reporting the cycle.
    fn visit(
        n: &str,
        all: &BTreeMap<String, BTreeMap<String, String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|s| s == n) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(n.to_string());
            return Some(cycle);
        }
        if done.contains(n) {
            return None;
        }
        stack.push(n.to_string());
        for next in all.get(n).map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
            if let Some(c) = visit(&next, all, stack, done) {
                return Some(c);
            }
        }
        stack.pop();
        done.insert(n.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for l in &layers {
        if let Some(cycle) = visit(l, &all, &mut Vec::new(), &mut done) {
            let places: Vec<String> = cycle.windows(2).map(|w| all[&w[0]][&w[1]].clone()).collect();
            panic!("import cycle {}:\n{}", cycle.join(" → "), places.join("\n"));
        }
    }
}

#[test]
fn the_core_crate_has_no_effects() {
    let core = repo_root().join("crates/cairn-core");
    let manifest = std::fs::read_to_string(core.join("Cargo.toml")).unwrap();
    let deps = manifest.split("[dependencies]").nth(1).unwrap_or("").split("\n[").next().unwrap_or("");
    let effect_crates = [
        "rusqlite",
        "tokio",
        "reqwest",
        "tar",
        "zstd",
        "walkdir",
        "libc",
        "rustix",
        "ignore",
        "object_store",
        "axum",
        "hyper",
    ];
    for c in effect_crates {
        assert!(!deps.lines().any(|l| l.trim_start().starts_with(&format!("{c} "))), "cairn-core depends on {c}");
    }
    // Nor transitively (when cargo is at hand, as under `cargo test`).
    if let Ok(cargo) = std::env::var("CARGO") {
        let out = std::process::Command::new(cargo)
            .args(["tree", "-p", "cairn-core", "-e", "normal", "--prefix", "none", "--offline"])
            .current_dir(repo_root())
            .output()
            .unwrap();
        assert!(out.status.success(), "cargo tree: {}", String::from_utf8_lossy(&out.stderr));
        let tree = String::from_utf8_lossy(&out.stdout);
        for c in effect_crates {
            assert!(!tree.lines().any(|l| l.split_whitespace().next() == Some(c)), "cairn-core pulls in {c}:\n{tree}");
        }
    }
    // And its code asks nothing of the world: no files, processes, network, environment or clock.
    let effects =
        ["std::fs", "std::process", "std::net", "std::env::", "SystemTime::now", "Instant::now", "std::thread"];
    let mut wrong = Vec::new();
    for e in walkdir::WalkDir::new(core.join("src")).into_iter().flatten() {
        if e.path().extension().is_none_or(|x| x != "rs") || e.file_name().to_string_lossy().contains("tests") {
            continue;
        }
        let text = std::fs::read_to_string(e.path()).unwrap();
        for (n, line) in code_lines(&text) {
            if let Some(f) = effects.iter().find(|f| line.contains(*f)) {
                wrong.push(format!("{}:{n}: {f}: {}", e.path().display(), line.trim()));
            }
        }
    }
    assert!(wrong.is_empty(), "effects in the core:\n{}", wrong.join("\n"));
}

#[test]
fn the_exit_code_table_in_readme_and_help_is_the_one_in_the_code() {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let table = cairn::error::exit_codes_markdown();
    assert!(readme.contains(table.trim_end()), "README's exit codes differ from src/error.rs:\n{table}");
    let help = crate::util::cairn().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains(cairn::error::exit_codes_help().trim_end()), "{help}");
}
