//! Issue 3: content-addressed builds. Every scenario is run cold, then warm.

use crate::util::Project;
use std::path::Path;

/// A project whose steps append their name to `runs.log` outside the project (a pass-through
/// env var, so it is not part of keys): the log tells exactly which commands ran.
struct Counted {
    p: Project,
    log: tempfile::TempDir,
}

impl Counted {
    fn new(pipeline: &str) -> Counted {
        let log = tempfile::tempdir().unwrap();
        let p = Project::new().pipeline(pipeline).env("RUNLOG", log.path().join("runs.log").to_str().unwrap());
        Counted { p, log }
    }
    fn file(self, rel: &str, content: &str) -> Counted {
        self.p.write(rel, content);
        self
    }
    /// Build and return the names of the steps whose command ran.
    fn build(&self, extra: &[&str]) -> Vec<String> {
        let _ = std::fs::remove_file(self.log.path().join("runs.log"));
        let mut args = vec!["build", "-p", "pipelines/test.ron"];
        args.extend_from_slice(extra);
        self.p.run(&args).ok();
        self.ran()
    }
    fn clear(&self) {
        let _ = std::fs::remove_file(self.log.path().join("runs.log"));
    }
    fn ran(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_to_string(self.log.path().join("runs.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect();
        v.sort();
        v
    }
}

const CHAIN: &str = r#"Pipeline(
  name: "chain",
  steps: {
    "gen": (
      run: "echo gen >> $RUNLOG; mkdir -p out && grep -v '^#' src/a.txt > out/a.txt",
      inputs: ["src/a.txt"], outputs: ["out/"], pass_env: ["RUNLOG"],
    ),
    "use": (
      run: "echo use >> $RUNLOG; mkdir -p res && cat out/a.txt src/b.txt > res/all.txt",
      inputs: ["src/b.txt"], needs: ["gen"], outputs: ["res/all.txt"], pass_env: ["RUNLOG"],
    ),
    "lint": (run: "echo lint >> $RUNLOG; test -s src/b.txt", inputs: ["src/*.txt"], pass_env: ["RUNLOG"]),
  },
)"#;

fn chain() -> Counted {
    Counted::new(CHAIN).file("src/a.txt", "# comment\nalpha\n").file("src/b.txt", "beta\n").file("README", "docs\n")
}

#[test]
fn warm_run_executes_no_command_and_restores_outputs() {
    let c = chain();
    assert_eq!(c.build(&[]), ["gen", "lint", "use"]);
    assert_eq!(c.p.read("res/all.txt"), "alpha\nbeta\n");
    std::fs::remove_dir_all(c.p.path().join("out")).unwrap();
    std::fs::remove_dir_all(c.p.path().join("res")).unwrap();
    assert!(c.build(&[]).is_empty(), "a warm run runs nothing");
    assert_eq!(c.p.read("res/all.txt"), "alpha\nbeta\n", "outputs restored from the store");
    assert_eq!(c.p.read("out/a.txt"), "alpha\n");
}

#[test]
fn touching_one_input_reruns_exactly_its_dependents() {
    let c = chain();
    c.build(&[]);
    c.p.write("src/b.txt", "beta 2\n");
    assert_eq!(c.build(&[]), ["lint", "use"]);
    assert_eq!(c.p.read("res/all.txt"), "alpha\nbeta 2\n");
    c.p.write("README", "changed docs\n");
    assert!(c.build(&[]).is_empty(), "a file that is no step's input changes nothing");
}

#[test]
fn early_cutoff_keeps_dependents_hit_when_upstream_bytes_are_identical() {
    let c = chain();
    c.build(&[]);
    c.p.write("src/a.txt", "# another comment\nalpha\n");
    assert_eq!(c.build(&[]), ["gen", "lint"], "gen re-ran, produced identical bytes, so `use` stays a hit");
    c.p.write("src/a.txt", "# another comment\nalpha!\n");
    assert_eq!(c.build(&[]), ["gen", "lint", "use"]);
}

#[test]
fn plan_and_summary_say_why_a_step_will_run() {
    let c = chain();
    c.build(&[]);
    c.p.write("src/b.txt", "beta 3\n");
    let r = c.p.run(&["plan", "-p", "pipelines/test.ron", "--event", "manual", "--no-cache-state"]);
    assert_eq!(r.code, 0, "{}", r.stderr); // no trigger: says nothing runs
    let t = c.p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(t.stderr.contains("input changed: src/b.txt"), "{}", t.stderr);
    assert!(t.stderr.contains("gen") && t.stderr.contains("hit-local"), "{}", t.stderr);
}

#[test]
fn plan_shows_hit_or_will_run_with_reasons() {
    let pipeline = CHAIN.replace("\n)", "\n  triggers: [(on: Manual, run: [\"use\", \"lint\"])],\n)");
    let c = Counted::new(&pipeline).file("src/a.txt", "a\n").file("src/b.txt", "b\n");
    let v = c.p.run(&["plan", "-p", "pipelines/test.ron", "--event", "manual", "--json"]).ok().json();
    let steps = v["steps"].as_array().unwrap();
    assert!(steps.iter().all(|s| s["state"]["cache"] == "will-run"), "{v}");
    assert_eq!(steps[0]["state"]["reasons"][0]["code"], "no-entry");
    c.build(&[]);
    c.p.write("src/a.txt", "a2\n");
    let v = c.p.run(&["plan", "-p", "pipelines/test.ron", "--event", "manual", "--json"]).ok().json();
    let by: std::collections::BTreeMap<String, serde_json::Value> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s["state"].clone()))
        .collect();
    assert_eq!(by["gen"]["reasons"][0]["detail"], "input changed: src/a.txt");
    assert_eq!(by["use"]["reasons"][0]["code"], "upstream-will-run");
    assert_eq!(by["lint"]["reasons"][0]["code"], "input-changed");
    c.p.write("src/a.txt", "a\n");
    let v = c.p.run(&["plan", "-p", "pipelines/test.ron", "--event", "manual", "--json"]).ok().json();
    assert!(v["steps"].as_array().unwrap().iter().all(|s| s["state"]["cache"] == "hit"), "{v}");
}

#[test]
fn force_reruns_one_step() {
    let c = chain();
    c.build(&[]);
    assert_eq!(c.build(&["--force", "gen"]), ["gen"]);
}

#[test]
fn a_failure_stops_dependents_and_names_the_step() {
    let c = Counted::new(
        r#"Pipeline(name: "f", steps: {
      "bad": (run: "echo bad >> $RUNLOG; echo boom >&2; exit 3", pass_env: ["RUNLOG"]),
      "after": (run: "echo after >> $RUNLOG", needs: ["bad"], pass_env: ["RUNLOG"]),
      "slow": (run: "sleep 0.3; echo slow >> $RUNLOG", pass_env: ["RUNLOG"]),
    })"#,
    );
    let r = c.p.run(&["build", "-p", "pipelines/test.ron", "-j", "2"]).code(1);
    assert!(r.stderr.contains("step `bad` (exited with status 3) failed"), "{}", r.stderr);
    assert!(r.stderr.contains("[bad] boom"), "live output is prefixed: {}", r.stderr);
    assert!(!c.ran().contains(&"after".to_string()));
    assert!(r.stderr.contains("skipped"), "{}", r.stderr);
    let r = c.p.run(&["build", "-p", "pipelines/test.ron", "-j", "1", "--keep-going"]).code(1);
    assert!(c.ran().contains(&"slow".to_string()), "--keep-going runs independent steps: {}", r.stderr);
}

#[test]
fn a_missing_declared_output_fails_and_nothing_is_stored() {
    let c = Counted::new(
        r#"Pipeline(name: "m", steps: {"s": (run: "echo s >> $RUNLOG", outputs: ["dist/"], pass_env: ["RUNLOG"])})"#,
    );
    let r = c.p.run(&["build", "-p", "pipelines/test.ron"]).code(1);
    assert!(r.stderr.contains("declared output `dist` was not produced"), "{}", r.stderr);
    c.p.run(&["build", "-p", "pipelines/test.ron"]).code(1);
    assert_eq!(c.ran(), ["s", "s"], "a failed step is never stored, so it runs again");
}

#[test]
fn steps_see_only_declared_environment() {
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "e", steps: {"s": (run: "echo \"[$LEAK][$DECLARED][$PASSED]\" > seen.txt", env: {"DECLARED": "d"}, pass_env: ["PASSED"], outputs: ["seen.txt"])})"#,
        )
        .env("LEAK", "leaked")
        .env("PASSED", "p");
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert_eq!(p.read("seen.txt"), "[][d][p]\n");
}

#[test]
fn a_timeout_kills_the_step() {
    let p = Project::new().pipeline(r#"Pipeline(name: "t", steps: {"s": (run: "sleep 30", timeout: "300ms")})"#);
    let started = std::time::Instant::now();
    let r = p.run(&["build", "-p", "pipelines/test.ron"]).code(1);
    assert!(r.stderr.contains("timed out after 300ms"), "{}", r.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[test]
fn restored_outputs_are_newer_than_their_inputs() {
    let c = chain();
    c.build(&[]);
    std::fs::remove_dir_all(c.p.path().join("out")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    c.p.write("src/b.txt", "beta\n"); // same content, newer mtime
    assert!(c.build(&[]).is_empty());
    let m = |rel: &str| std::fs::metadata(c.p.path().join(rel)).unwrap().modified().unwrap();
    assert!(m("out/a.txt") >= m("src/a.txt") && m("out/a.txt") >= m("src/b.txt"));
}

fn blobs(store: &Path) -> Vec<std::path::PathBuf> {
    let mut v = Vec::new();
    for shard in std::fs::read_dir(store.join("blobs")).unwrap().flatten() {
        for f in std::fs::read_dir(shard.path()).unwrap().flatten() {
            v.push(f.path());
        }
    }
    v
}

#[test]
fn a_corrupt_blob_is_a_miss_with_that_reason_and_verify_reports_it() {
    let c = chain();
    c.build(&[]);
    for b in blobs(&c.p.path().join("cache")) {
        let mut bytes = std::fs::read(&b).unwrap();
        let mid = bytes.len() / 2;
        bytes[mid] ^= 0xff;
        std::fs::write(&b, bytes).unwrap();
    }
    let v = c.p.run(&["cache", "verify", "--cache-dir", "cache"]).code(4);
    assert!(v.stdout.contains("corrupt:"), "{}", v.stdout);
    std::fs::remove_dir_all(c.p.path().join("out")).unwrap();
    c.clear();
    let r = c.p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("the stored entry was corrupt and dropped: digest mismatch"), "{}", r.stderr);
    assert_eq!(c.ran(), ["gen", "lint", "use"]);
    assert_eq!(c.p.read("out/a.txt"), "alpha\n");
    c.p.run(&["cache", "verify", "--cache-dir", "cache"]).ok();
}

#[test]
fn a_corrupt_blob_found_at_restore_is_dropped_and_rerun() {
    let c = chain();
    c.build(&[]);
    for b in blobs(&c.p.path().join("cache")) {
        std::fs::write(&b, b"garbage").unwrap();
    }
    // Every hit with outputs must restore. (A hit with nothing to restore, such as `lint`,
    // which has no outputs and printed nothing, or outputs already in place, never reads its
    // blob; `cache verify` is what finds those.)
    std::fs::remove_dir_all(c.p.path().join("out")).unwrap();
    std::fs::remove_dir_all(c.p.path().join("res")).unwrap();
    c.clear();
    let r = c.p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("stored entry was corrupt and dropped"), "{}", r.stderr);
    assert_eq!(c.ran(), ["gen", "use"]);
    let v = c.p.run(&["cache", "verify", "--cache-dir", "cache"]);
    assert!(
        v.stdout.contains("lint") || v.stderr.contains("lint"),
        "verify finds the last one: {} {}",
        v.stdout,
        v.stderr
    );
    assert_eq!(c.build(&[]), ["lint"], "verify dropped lint's corrupt entry: it runs once more");
    assert!(c.build(&[]).is_empty(), "the re-run results were stored");
}

#[test]
fn gc_evicts_least_recently_used_and_misses_say_evicted() {
    let c = chain();
    c.build(&[]);
    c.p.run(&["cache", "pin", "-p", "pipelines/test.ron", "--cache-dir", "cache", "gen"]).ok();
    let dry = c.p.run(&["cache", "gc", "--cache-dir", "cache", "--max-size", "0", "--dry-run"]).ok();
    assert!(dry.stdout.contains("would evict"), "{}", dry.stdout);
    assert!(c.build(&[]).is_empty(), "dry run changed nothing");
    c.p.run(&["cache", "gc", "--cache-dir", "cache", "--max-size", "0"]).ok();
    c.clear();
    let r = c.p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("evicted"), "{}", r.stderr);
    assert_eq!(c.ran(), ["lint", "use"], "the pinned entry survived gc");
    let s = c.p.run(&["cache", "stats", "--cache-dir", "cache"]).ok();
    assert!(s.stdout.contains("pinned: 1"), "{}", s.stdout);
}

#[test]
fn a_matrix_step_runs_once_per_combination_with_separate_keys() {
    let c = Counted::new(
        r#"Pipeline(name: "m", steps: {"t": (run: "echo t-$MATRIX_OTP-{matrix.elixir} >> $RUNLOG", pass_env: ["RUNLOG"],
            matrix: {"elixir": ["1.17", "1.18"], "otp": ["26", "27"]})})"#,
    );
    assert_eq!(c.build(&[]), ["t-26-1.17", "t-26-1.18", "t-27-1.17", "t-27-1.18"]);
    assert!(c.build(&[]).is_empty());
}

#[test]
fn outputs_already_in_place_are_not_rewritten_but_edited_outputs_are_restored() {
    let c = chain();
    c.build(&[]);
    // Outside the racy window, a no-op leaves the output files untouched (same inode, mtime).
    std::thread::sleep(std::time::Duration::from_millis(1100));
    c.build(&[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let before = std::fs::metadata(c.p.path().join("out/a.txt")).unwrap();
    assert!(c.build(&[]).is_empty());
    let after = std::fs::metadata(c.p.path().join("out/a.txt")).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((before.ino(), before.mtime_nsec()), (after.ino(), after.mtime_nsec()), "not rewritten");
    // An output edited by hand no longer matches: the hit restores the stored bytes.
    c.p.write("out/a.txt", "tampered\n");
    assert!(c.build(&[]).is_empty());
    assert_eq!(c.p.read("out/a.txt"), "alpha\n");
}

/// Set every source file and directory of the project two minutes into the past, as a tree
/// checked out a while ago looks (out of the racy window). Outputs are left alone: touching
/// them changes their ctime, and outputs that changed are restored again.
fn age(root: &Path) {
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg("find . -path ./cache -prune -o -path ./out -prune -o -path ./res/all.txt -prune -o -exec touch -h -d '2 minutes ago' {} +")
        .current_dir(root)
        .status()
        .unwrap();
    assert!(st.success());
}

impl Counted {
    /// Build with a JSON summary; the steps that ran and how the inputs were read.
    fn build_scan(&self) -> (Vec<String>, String) {
        self.clear();
        let r = self.p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
        let scan = r.json()["totals"]["inputs_scan"].as_str().unwrap_or_default().to_string();
        (self.ran(), scan)
    }
}

#[test]
fn the_scan_journal_skips_the_walk_and_still_sees_every_change() {
    let c = chain();
    age(c.p.path());
    assert_eq!(c.build_scan(), (vec!["gen".into(), "lint".into(), "use".into()], "walk".into()));
    // The run created out/ and res/ in the root: its directory changed, so the next run walks.
    assert_eq!(c.build_scan(), (vec![], "walk".into()));
    // Aged, the root's mtime moved again: the next run walks, or (when its listing was taken
    // out of the racy window, which depends on how fast the last run ended) reads the root
    // again and finds the same names. Either way nothing runs.
    age(c.p.path());
    assert_eq!(c.build_scan().0, Vec::<String>::new());
    // Nothing changed since that walk: the journal replays it, stats only.
    assert_eq!(c.build_scan(), (vec![], "journal".into()));
    // A file edited in place: still no walk, and exactly its dependents run.
    c.p.write("src/b.txt", "beta 2\n");
    assert_eq!(c.build_scan(), (vec!["lint".into(), "use".into()], "journal".into()));
    // A new file in a watched directory: back to the walk, which finds it.
    age(c.p.path());
    c.build_scan();
    assert_eq!(c.build_scan().1, "journal");
    c.p.write("src/c.txt", "gamma\n");
    assert_eq!(c.build_scan(), (vec!["lint".into()], "walk".into()));
    // The journal can be turned off (filesystems with untrustworthy directory mtimes).
    age(c.p.path());
    c.build_scan();
    let r = c.p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]);
    assert_eq!(r.ok().json()["totals"]["inputs_scan"], "journal");
    let args = ["build", "-p", "pipelines/test.ron", "--summary", "json"];
    let r = c.p.run_with(&args, &[("CAIRN_NO_SCAN_JOURNAL", "1")]).ok();
    assert_eq!(r.json()["totals"]["inputs_scan"], "walk");
}

#[test]
fn hits_whose_outputs_were_in_place_count_as_used_for_eviction() {
    let c = chain();
    c.build(&[]);
    std::thread::sleep(std::time::Duration::from_millis(20));
    // gen's outputs are in place: nothing is restored, but the entry was used all the same.
    assert!(c.build(&["gen"]).is_empty());
    let dry = c.p.run(&["cache", "gc", "--cache-dir", "cache", "--max-size", "0", "--dry-run"]).ok();
    let order: Vec<&str> =
        dry.stdout.lines().filter_map(|l| l.strip_prefix("would evict ")?.split(' ').next()).collect();
    assert_eq!(order.len(), 3, "{}", dry.stdout);
    assert_eq!(order[2], "gen", "the entry used last is evicted last: {}", dry.stdout);
}

/// Outputs are fingerprinted when they are stored, usually within their timestamps' granule
/// (racy: the next check would read them all to confirm). Those that settle before the build
/// ends are fingerprinted again then, so the next no-op only stats them.
#[test]
fn outputs_written_during_a_build_are_fingerprinted_again_once_settled() {
    use std::os::unix::fs::MetadataExt;
    let p = Project::new().file("src/a", "a\n").pipeline(
        r#"Pipeline(name: "s", steps: {
            "a": (run: "mkdir -p out && cp src/a out/a", inputs: ["src/a"], outputs: ["out/"]),
            "slow": (run: "sleep 0.3", needs: ["a"]),
        })"#,
    );
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let db = rusqlite::Connection::open(p.path().join("cache/index.sqlite")).unwrap();
    let recorded: i64 =
        db.query_row("SELECT recorded_ns FROM installed WHERE step = 'a'", [], |r| r.get(0)).expect("a row for `a`");
    let m = std::fs::metadata(p.path().join("out/a")).unwrap();
    let mtime = m.mtime() * 1_000_000_000 + m.mtime_nsec();
    assert!(recorded >= mtime + 50_000_000, "recorded {recorded} is within 50 ms of the output's mtime {mtime}");
}
