//! Issue 2: the pipeline language, `check`, `graph` and `plan` on the shipped pipelines and on
//! broken ones.

use crate::util::{in_repo, Project};

const SEED: &str = "pipelines/automata-signal.ron";
const VERIFY: [&str; 8] = ["deps", "compile", "format", "credo", "dialyzer", "sobelow", "migrations", "test"];

fn names(v: &serde_json::Value, key: &str) -> Vec<String> {
    v[key].as_array().unwrap().iter().map(|x| x["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn shipped_pipelines_check() {
    for p in [SEED, "pipelines/cairn.ron"] {
        let r = in_repo(&["check", "-p", p]).ok();
        assert!(r.stdout.contains(": ok"), "{}", r.stdout);
    }
}

#[test]
fn push_to_main_verifies_then_production_nrt_fra_syd_then_migration() {
    let v = in_repo(&["plan", "-p", SEED, "--event", "push", "--branch", "main", "--json"]).ok().json();
    assert_eq!(names(&v, "steps"), VERIFY);
    let envs = v["environments"].as_array().unwrap();
    assert_eq!(envs.len(), 1);
    let prod = &envs[0];
    assert_eq!(prod["name"], "production");
    assert_eq!(prod["regions"], serde_json::json!(["nrt", "fra", "syd"]));
    assert_eq!(prod["migration"]["phase"], "after-all");
    let phases: Vec<String> = prod["phases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}:{}", p["kind"].as_str().unwrap(), p["region"].as_str().unwrap_or("-")))
        .collect();
    assert_eq!(phases, ["deploy:nrt", "deploy:fra", "deploy:syd", "migration:-"]);
    let first = &prod["phases"][0]["command"];
    assert_eq!(first, "flyctl deploy --app automata-signal-nrt --config fly.prod.nrt.toml");
    let gates: Vec<&str> = prod["gates"].as_array().unwrap().iter().map(|g| g["kind"].as_str().unwrap()).collect();
    assert!(gates.contains(&"approval") && gates.contains(&"branch"), "{gates:?}");
}

#[test]
fn push_to_develop_deploys_development_only() {
    let v = in_repo(&["plan", "-p", SEED, "--event", "push", "--branch", "develop", "--json"]).ok().json();
    assert_eq!(names(&v, "steps"), VERIFY);
    assert_eq!(names(&v, "environments"), ["development"]);
}

#[test]
fn pull_request_into_main_verifies_only() {
    let v = in_repo(&["plan", "-p", SEED, "--event", "pull_request", "--branch", "main", "--json"]).ok().json();
    assert_eq!(names(&v, "steps"), VERIFY);
    assert!(v["environments"].as_array().unwrap().is_empty());
}

#[test]
fn manual_run_deploys_staging_by_default_and_checks_inputs() {
    let v = in_repo(&["plan", "-p", SEED, "--event", "manual", "--json"]).ok().json();
    assert_eq!(names(&v, "environments"), ["staging"]);
    let v =
        in_repo(&["plan", "-p", SEED, "--event", "manual", "--input", "environment=production-bluegreen", "--json"])
            .ok()
            .json();
    assert_eq!(names(&v, "environments"), ["production-bluegreen"]);
    assert_eq!(v["environments"][0]["strategy"], "blue-green");
    let r = in_repo(&["plan", "-p", SEED, "--event", "manual", "--input", "environment=prod"]).code(2);
    assert!(r.stderr.contains("`prod` is not one of staging, production-bluegreen"), "{}", r.stderr);
}

#[test]
fn other_branches_run_nothing_and_push_needs_a_branch() {
    let r = in_repo(&["plan", "-p", SEED, "--event", "push", "--branch", "feature/x"]).ok();
    assert!(r.stdout.contains("nothing would run"));
    let r = in_repo(&["plan", "-p", SEED, "--event", "push"]).code(2);
    assert!(r.stderr.contains("needs `--branch`"), "{}", r.stderr);
}

#[test]
fn graph_formats_draw_every_step_and_edge() {
    let m = in_repo(&["graph", "-p", SEED, "--format", "mermaid"]).ok().stdout;
    assert!(m.starts_with("flowchart TD"));
    assert!(m.contains("s0[\"deps\"]") && m.contains("s0 --> s1"), "{m}");
    assert!(m.contains("compat[elixir=1.18,otp=27]"), "matrix expansions are drawn");
    assert!(m.contains("deploy production (nrt → fra → syd)"));
    let d = in_repo(&["graph", "-p", SEED, "--format", "dot"]).ok().stdout;
    assert!(d.starts_with("digraph") && d.contains("s0 -> s1;"));
    let t = in_repo(&["graph", "-p", SEED, "--format", "text"]).ok().stdout;
    assert!(t.contains("2. compile  ← deps"), "{t}");
}

fn broken(content: &[u8]) -> crate::util::Run {
    let p = Project::new();
    std::fs::create_dir_all(p.path().join("pipelines")).unwrap();
    std::fs::write(p.path().join("pipelines/bad.ron"), content).unwrap();
    let r = p.run(&["check", "-p", "pipelines/bad.ron"]).code(3);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    r
}

#[test]
fn a_cycle_is_printed() {
    let r = broken(
        br#"Pipeline(name: "x", steps: {
  "a": (run: "x", needs: ["c"]),
  "b": (run: "y", needs: ["a"]),
  "c": (run: "z", needs: ["b"]),
})"#,
    );
    assert!(r.stderr.contains("bad.ron:2:3: dependency cycle: a → c → b → a"), "{}", r.stderr);
}

#[test]
fn an_unknown_need_is_located_with_a_suggestion() {
    let r = broken(b"Pipeline(name: \"x\", steps: {\n  \"build\": (run: \"x\"),\n  \"test\": (run: \"y\", needs: [\"biuld\"]),\n})");
    assert!(r.stderr.contains("bad.ron:3:30: `test` refers to unknown step `biuld`"), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean `build`?"));
}

#[test]
fn a_misspelt_field_gets_the_closest_name() {
    let r = broken(b"Pipeline(name: \"x\", steps: {\n  \"a\": (run: \"x\", ouputs: [\"out/\"]),\n})");
    assert!(r.stderr.contains("bad.ron:2:19: unknown field `ouputs`"), "{}", r.stderr);
    assert!(r.stderr.contains("did you mean `outputs`?"));
}

#[test]
fn syntax_errors_empty_files_and_random_bytes_are_refused() {
    let r = broken(b"Pipeline(name: \"x\", steps: {\"a\": (run: \"x\")");
    assert!(r.stderr.contains("bad.ron:1:"), "{}", r.stderr);
    let r = broken(b"");
    assert!(r.stderr.contains("bad.ron:1:1: the pipeline file is empty"));
    let r = broken(&[0xff, 0xfe, 0x00, 0x13, 0x88, 0x9a]);
    assert!(r.stderr.contains("not valid UTF-8"));
}

#[test]
fn semantic_problems_are_all_reported() {
    let r = broken(
        br#"Pipeline(name: "x",
  services: {"db": (start: "db", ready: (probe: Tcp("127.0.0.1:{port}")))},
  steps: {
    "a": (run: "make {target}", outputs: ["out/"], inputs: ["src/[a"], services: ["dbb"], secrets: ["TOKEN"]),
    "b": (run: "x", outputs: ["out/lib"]),
  },
  triggers: [(on: Push, run: ["a"], deploy: [(environment: "prod")])],
)"#,
    );
    for want in [
        "placeholder `{target}` in run of `a` is not defined",
        "invalid glob `src/[a`",
        "unknown service `dbb`",
        "did you mean `db`?",
        "unknown secret `TOKEN`",
        "steps `a` and `b` both claim output `out/lib`",
        "deploys to unknown environment `prod`",
    ] {
        assert!(r.stderr.contains(want), "missing {want:?} in:\n{}", r.stderr);
    }
}

#[test]
fn bad_durations_and_duplicate_names_point_at_their_place() {
    let r = broken(b"Pipeline(name: \"x\", steps: {\n  \"a\": (run: \"x\", timeout: \"5 minutes\"),\n})");
    assert!(r.stderr.contains("bad.ron:2:") && r.stderr.contains("invalid duration"), "{}", r.stderr);
    let r = broken(b"Pipeline(name: \"x\", steps: {\n  \"a\": (run: \"x\"),\n  \"a\": (run: \"y\"),\n})");
    assert!(r.stderr.contains("bad.ron:3:") && r.stderr.contains("duplicate name `a`"), "{}", r.stderr);
}

#[test]
fn a_missing_file_is_an_io_error_with_a_hint() {
    let r = Project::new().run(&["check", "-p", "nope.ron"]).code(4);
    assert!(r.stderr.contains("cannot read nope.ron") && r.stderr.contains("hint:"), "{}", r.stderr);
}
