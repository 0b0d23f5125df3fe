//! Issue 16, item 4: README's first command runs `cairn demo`, which shows a cold run, a warm
//! all-hit run, a restore, one change re-running exactly its dependents, `why` and the HTML
//! report, with tools every machine has; each run is checked by the demo itself.

use crate::util::cairn;

#[test]
fn the_demo_shows_cold_warm_restore_change_why_and_report_and_checks_each() {
    let dir = tempfile::tempdir().unwrap();
    let demo = dir.path().join("d");
    let out = cairn().args(["demo", "--dir"]).arg(&demo).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    for want in [
        "── 1/5 cold run",
        "5 steps: 0 hit, 5 ran",
        "── 2/5 warm run",
        "5 steps: 5 hit, 0 ran",
        "── 3/5 out/ and dist/ deleted",
        "restored from the store",
        "── 4/5 docs/intro.md edited",
        "5 steps: 3 hit, 2 ran",
        "input changed: docs/intro.md",
        "upstream step pages produced different outputs",
        "── 5/5 why",
        "demo finished in",
    ] {
        assert!(err.contains(want), "missing `{want}` in:\n{err}");
    }
    let html = std::fs::read_to_string(demo.join("report.html")).unwrap();
    assert!(html.contains("pages") && html.contains("site"), "the report shows the run");
    // Run again: the earlier demo is replaced and it starts cold.
    let out = cairn().args(["demo", "--dir"]).arg(&demo).output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("5 steps: 0 hit, 5 ran"));
    // A directory it did not make is never replaced.
    let other = dir.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("keep.txt"), "mine").unwrap();
    let out = cairn().args(["demo", "--dir"]).arg(&other).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not a cairn demo"));
    assert_eq!(std::fs::read_to_string(other.join("keep.txt")).unwrap(), "mine");
}
