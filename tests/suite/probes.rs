//! Issue 17, item 1: toolchain probes cost nothing when nothing changed. A probe's output is
//! reused while every file it opened or executed stats the same, every path it looked for is
//! still absent, and PATH and the toolchain's environment are unchanged; anything else runs it
//! again, and a different output changes the keys of the steps that use it.

use crate::util::Project;

fn probes(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter_map(|l| l.strip_prefix("cairn timing: probe "))
        .map(|l| l.split(')').next().unwrap_or("").to_string() + ")")
        .collect()
}

#[test]
fn a_probe_is_reused_until_what_it_ran_changes() {
    if !cairn::exec::trace::available() {
        eprintln!(
            "SKIPPED a_probe_is_reused_until_what_it_ran_changes: no seccomp user notification (probes are not cached)"
        );
        assert!(std::env::var_os("CI").is_none(), "CI machines have it");
        return;
    }
    let tools = tempfile::tempdir().unwrap();
    let (early, late) = (tools.path().join("early"), tools.path().join("late"));
    std::fs::create_dir_all(&early).unwrap();
    std::fs::create_dir_all(&late).unwrap();
    let tool = late.join("mytool");
    std::fs::write(&tool, "#!/bin/sh\necho mytool 1.0\n").unwrap();
    std::fs::set_permissions(&tool, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}:{}", early.display(), late.display(), std::env::var("PATH").unwrap());
    let p = Project::new().pipeline(
        r#"Pipeline(name: "t", toolchains: {"mytool": (probe: "mytool --version", env: ["MYTOOL_FLAVOUR"])},
             steps: {"s": (run: "echo built > out.txt", outputs: ["out.txt"], toolchains: ["mytool"])})"#,
    );
    let build = |extra: &[(&str, &str)]| {
        let mut env = vec![("PATH", path.as_str()), ("CAIRN_TIMINGS", "1")];
        env.extend_from_slice(extra);
        let r = p.run_with(&["build", "-p", "pipelines/test.ron", "--summary", "json"], &env).ok();
        let status = r.json()["steps"][0]["status"].as_str().unwrap().to_string();
        (probes(&r.stderr), status)
    };
    assert_eq!(build(&[]), (vec!["mytool (ran)".to_string()], "ran".to_string()));
    assert_eq!(build(&[]), (vec!["mytool (cached)".to_string()], "hit-local".to_string()), "nothing changed");
    // The executable changed (an upgrade): probed again; a new version re-runs the step.
    std::fs::write(&tool, "#!/bin/sh\necho mytool 2.0\n").unwrap();
    assert_eq!(build(&[]), (vec!["mytool (ran)".to_string()], "ran".to_string()));
    assert_eq!(build(&[]).0, ["mytool (cached)"]);
    // A tool appearing earlier on PATH (where the shell looked and found nothing): probed again.
    let shadow = early.join("mytool");
    std::fs::write(&shadow, "#!/bin/sh\necho mytool 3.0\n").unwrap();
    std::fs::set_permissions(&shadow, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    assert_eq!(build(&[]), (vec!["mytool (ran)".to_string()], "ran".to_string()));
    // A declared environment variable: probed again (same output, so the step is a hit).
    assert_eq!(build(&[("MYTOOL_FLAVOUR", "x")]), (vec!["mytool (ran)".to_string()], "hit-local".to_string()));
    assert_eq!(build(&[("MYTOOL_FLAVOUR", "x")]).0, ["mytool (cached)"]);
    // A damaged record is ignored: the probe runs.
    for e in std::fs::read_dir(p.path().join("cache/probes")).unwrap() {
        std::fs::write(e.unwrap().path(), "{not json").unwrap();
    }
    assert_eq!(build(&[("MYTOOL_FLAVOUR", "x")]).0, ["mytool (ran)"]);
}
