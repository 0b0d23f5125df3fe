//! `cairn demo`: what cairn is for, in a few seconds, with tools every machine has.
//!
//! The demo project (`examples/demo/`, embedded in the binary) is written to a scratch
//! directory and built five ways by this same binary, each run checked against what it must
//! show: a cold run (every step runs), a warm run (every step a hit, no command runs), a run
//! after deleting the outputs (restored from the store), a run after editing one doc (exactly
//! the steps that depend on it run), then `cairn why` on the re-run step and the HTML report.
//! A run that does not show what it should fails the demo, so it doubles as a smoke test.

use crate::cli::DemoArgs;
use crate::error::Error;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// The demo project's files, embedded at build time.
const FILES: &[(&str, &str)] = &[
    ("pipelines/demo.ron", include_str!("../../examples/demo/pipelines/demo.ron")),
    ("src/alpha.txt", include_str!("../../examples/demo/src/alpha.txt")),
    ("src/beta.txt", include_str!("../../examples/demo/src/beta.txt")),
    ("docs/intro.md", include_str!("../../examples/demo/docs/intro.md")),
    ("docs/usage.md", include_str!("../../examples/demo/docs/usage.md")),
];

/// Marks a directory the demo made, so a rerun may replace it (and nothing else).
const MARKER: &str = ".cairn-demo";

pub fn run(a: &DemoArgs) -> Result<(), Error> {
    let t0 = Instant::now();
    let dir = std::path::absolute(&a.dir).unwrap_or_else(|_| a.dir.clone());
    prepare(&dir)?;
    let exe = std::env::current_exe().map_err(|e| Error::Io(format!("error: cannot find cairn's own binary: {e}")))?;
    let bold = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let say = |n: usize, text: &str| {
        if bold {
            eprintln!("\n\x1b[1m── {n}/5 {text}\x1b[0m");
        } else {
            eprintln!("\n── {n}/5 {text}");
        }
    };
    let show = dir.display();

    say(1, &format!("cold run in {show}: every step runs"));
    let v = build(&exe, &dir, "cold")?;
    expect(&v, |_, s| s == "ran", "every step runs on a cold store")?;

    say(2, "warm run, nothing changed: every step is a hit and no command runs");
    let v = build(&exe, &dir, "warm")?;
    expect(&v, |_, s| s == "hit-local", "every step is a hit")?;
    let saved = v["totals"]["saved_ms"].as_u64().unwrap_or(0);

    say(3, "out/ and dist/ deleted: the outputs come back from the store, still no command runs");
    for d in ["out", "dist"] {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
    let v = build(&exe, &dir, "restore")?;
    expect(&v, |_, s| s == "hit-local", "every step is restored")?;
    if !dir.join("dist/site.html").is_file() {
        return Err(Error::StepFailed("error: demo: dist/site.html was not restored".into()));
    }

    say(4, "docs/intro.md edited: exactly the steps that depend on it (pages, site) run again");
    let intro = dir.join("docs/intro.md");
    let mut text = std::fs::read_to_string(&intro).unwrap_or_default();
    text.push_str("A line added by `cairn demo`.\n");
    std::fs::write(&intro, text).map_err(|e| Error::Io(format!("error: cannot edit {}: {e}", intro.display())))?;
    let v = build(&exe, &dir, "change")?;
    expect(
        &v,
        |name, s| if matches!(name, "pages" | "site") { s == "ran" } else { s == "hit-local" },
        "pages and site run, words, index and bundle are hits",
    )?;

    say(5, "why did `pages` run? (`cairn why pages`), and the HTML report");
    cairn(&exe, &dir, &["why", "-p", "pipelines/demo.ron", "pages"])?;
    cairn(&exe, &dir, &["report", "--html", "report.html"])?;
    eprintln!(
        "\ndemo finished in {:.1}s: the warm run saved {:.1}s of work. Explore it:\n  cd {show}\n  {} graph -p pipelines/demo.ron\n  open report.html   # the timeline of the last run and the hit-rate trend",
        t0.elapsed().as_secs_f64(),
        saved as f64 / 1000.0,
        exe.display(),
    );
    Ok(())
}

/// Write the demo project into `dir`, replacing an earlier demo (never anything else).
fn prepare(dir: &Path) -> Result<(), Error> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(Error::Usage(format!(
                "error: {} exists and is not a cairn demo\n  hint: pass another directory with --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir)
            .map_err(|e| Error::Io(format!("error: cannot remove the previous demo in {}: {e}", dir.display())))?;
    }
    for (rel, text) in FILES.iter().chain(&[(MARKER, "made by `cairn demo`; safe to delete\n")]) {
        let path = dir.join(rel);
        let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| std::fs::write(&path, text));
        written.map_err(|e| Error::Io(format!("error: cannot write {}: {e}", path.display())))?;
    }
    Ok(())
}

/// One `cairn build` of the demo; its JSON summary.
fn build(exe: &Path, dir: &Path, label: &str) -> Result<serde_json::Value, Error> {
    let summary = dir.join(format!(".summary-{label}.json"));
    let file = summary.display().to_string();
    cairn(exe, dir, &["build", "-p", "pipelines/demo.ron", "--summary-file", &file])?;
    let text = std::fs::read(&summary).map_err(|e| Error::Io(format!("error: demo: no summary at {file}: {e}")))?;
    let _ = std::fs::remove_file(&summary);
    serde_json::from_slice(&text).map_err(|e| Error::Io(format!("error: demo: unreadable summary {file}: {e}")))
}

fn cairn(exe: &Path, dir: &Path, args: &[&str]) -> Result<(), Error> {
    let status = Command::new(exe)
        .args(args)
        .current_dir(dir)
        .status()
        .map_err(|e| Error::Io(format!("error: cannot run {}: {e}", exe.display())))?;
    if status.success() {
        Ok(())
    } else {
        Err(Error::StepFailed(format!("error: demo: `cairn {}` failed ({status})", args.join(" "))))
    }
}

/// Every step's status must pass `ok`.
fn expect(v: &serde_json::Value, ok: impl Fn(&str, &str) -> bool, what: &str) -> Result<(), Error> {
    let steps = v["steps"].as_array().cloned().unwrap_or_default();
    let bad: Vec<String> = steps
        .iter()
        .filter_map(|s| {
            let (name, status) = (s["name"].as_str()?, s["status"].as_str()?);
            (!ok(name, status)).then(|| format!("{name}: {status}"))
        })
        .collect();
    if steps.len() == FILES_STEPS && bad.is_empty() {
        return Ok(());
    }
    Err(Error::StepFailed(format!("error: demo: expected {what}, got {}", bad.join(", "))))
}

/// How many steps the demo pipeline has.
const FILES_STEPS: usize = 5;
