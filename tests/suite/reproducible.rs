//! Issue 15, item 4: reproducibility checks. `cairn verify --rebuild` re-runs stored steps in a
//! scratch copy of the worktree and compares their outputs with the entries, file by file;
//! `cairn cache quarantine` drops a step's entries and its dependents'.

use crate::util::Project;

const PIPELINE: &str = r#"Pipeline(name: "r", steps: {
  "gen": (run: "mkdir -p out && tr a-z A-Z < src/a.txt > out/a.txt", inputs: ["src/a.txt"], outputs: ["out/"]),
  "use": (run: "cat out/a.txt src/b.txt > all.txt", needs: ["gen"], inputs: ["src/b.txt"], outputs: ["all.txt"]),
  "stamp": (run: "mkdir -p st && date +%s%N > st/when.txt && head -c 64 /dev/urandom > st/noise.bin", inputs: ["src/a.txt"], outputs: ["st/"]),
})"#;

fn project() -> Project {
    Project::new().pipeline(PIPELINE).file("src/a.txt", "hello\n").file("src/b.txt", "world\n")
}

#[test]
fn verify_rebuild_passes_deterministic_steps_and_names_each_differing_file() {
    let p = project();
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    // A deterministic step, and one that needs another's outputs (restored into the scratch copy).
    let r = p.run(&["verify", "--rebuild", "-p", "pipelines/test.ron", "gen", "use"]).ok();
    assert!(r.stdout.contains("gen: reproducible") && r.stdout.contains("use: reproducible"), "{}", r.stdout);
    // The worktree is untouched: the rebuild ran elsewhere.
    assert_eq!(p.read("all.txt"), "HELLO\nworld\n");
    assert!(!p.path().join(".cairn-tmp").exists(), "the scratch copy is gone");
    // A step that writes the time and random bytes.
    let r = p.run(&["verify", "--rebuild", "-p", "pipelines/test.ron", "stamp"]).code(1);
    assert!(r.stdout.contains("stamp: NOT reproducible"), "{}", r.stdout);
    assert!(
        r.stdout.contains("--- stored/st/when.txt") && r.stdout.contains("+++ rebuilt/st/when.txt"),
        "{}",
        r.stdout
    );
    assert!(
        r.stdout.contains("st/noise.bin: binary, 64 bytes stored, 64 rebuilt, first difference at byte"),
        "{}",
        r.stdout
    );
    assert!(
        r.stderr.contains("not reproducible: stamp") && r.stderr.contains("cairn cache quarantine stamp"),
        "{}",
        r.stderr
    );
    // Without --rebuild: a usage error that points at `cache verify`.
    let r = p.run(&["verify", "-p", "pipelines/test.ron"]).code(2);
    assert!(r.stderr.contains("cairn cache verify"), "{}", r.stderr);
}

#[test]
fn a_step_never_built_is_not_checked_and_says_so() {
    let p = project();
    let r = p.run(&["verify", "--rebuild", "-p", "pipelines/test.ron", "gen"]).ok();
    assert!(r.stdout.contains("gen: not checked: no stored entry"), "{}", r.stdout);
}

#[test]
fn quarantine_drops_a_step_and_its_dependents_so_the_next_build_runs_them() {
    let p = project();
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let r = p.run(&["cache", "quarantine", "-p", "pipelines/test.ron", "gen"]).ok();
    assert!(r.stdout.contains("quarantined gen, use: 2 entries dropped"), "{}", r.stdout);
    let v = p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok().json();
    let status = |n: &str| v["steps"].as_array().unwrap().iter().find(|s| s["name"] == n).unwrap()["status"].clone();
    assert_eq!((status("gen"), status("use"), status("stamp")), ("ran".into(), "ran".into(), "hit-local".into()));
}

#[test]
fn a_build_can_rebuild_a_sample_of_its_hits_and_fails_on_a_difference() {
    let p = project();
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--rebuild-sample", "1", "--summary", "json"]).code(1);
    let stamp = r.json()["steps"].as_array().unwrap().iter().find(|s| s["name"] == "stamp").unwrap().clone();
    assert!(stamp["warnings"].to_string().contains("not reproducible: rebuilt differently (st/"), "{stamp}");
    assert!(
        r.stderr.contains("rebuilding 3 of 3 hits") && r.stderr.contains("not reproducible: stamp"),
        "{}",
        r.stderr
    );
    // Marked as known not to reproduce: not checked, and the build passes.
    p.write(
        "pipelines/test.ron",
        &p.read("pipelines/test.ron").replace(r#"outputs: ["st/"]"#, r#"outputs: ["st/"], reproducible: false"#),
    );
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--rebuild-sample", "1"]).ok();
    assert!(r.stderr.contains("stamp: not checked: declared `reproducible: false`"), "{}", r.stderr);
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--rebuild-sample", "0"]).ok();
    assert!(!r.stderr.contains("rebuilding"), "{}", r.stderr);
}

/// A step marked `reproducible: false` keeps its entries local unless the build says otherwise.
#[test]
fn entries_of_steps_known_not_to_reproduce_are_not_shared_without_a_flag() {
    use super::remote::{Server, WRITER};
    let server = Server::start(&[]);
    let pipeline = PIPELINE
        .replace(r#"outputs: ["st/"]"#, r#"outputs: ["st/"], reproducible: false"#)
        .replace("name: \"r\"", "name: \"demo\"");
    let uploaded = |p: &Project, extra: &[&str]| {
        let mut args = vec!["build", "-p", "pipelines/test.ron", "--force", "stamp", "--summary", "json"];
        args.extend_from_slice(extra);
        let v = p.run(&args).ok().json();
        let key = v["steps"].as_array().unwrap().iter().find(|s| s["name"] == "stamp").unwrap()["key"]
            .as_str()
            .unwrap()
            .to_string();
        server.store.path().join("demo").join(&key).exists()
    };
    let p = Project::new()
        .pipeline(&pipeline)
        .file("src/a.txt", "hello\n")
        .file("src/b.txt", "world\n")
        .env("CAIRN_REMOTE", &server.url)
        .env("CAIRN_TOKEN", WRITER);
    assert!(!uploaded(&p, &[]), "kept local");
    assert!(uploaded(&p, &["--share-unreproducible"]), "shared on request");
}
