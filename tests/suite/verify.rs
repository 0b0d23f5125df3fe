//! Issue 6: the seed's verify job for real — a real Elixir app, a real PostgreSQL service,
//! secrets, toolchain requirements — plus service failure handling.

use crate::util::{have, repo_root, Project};
use std::process::Command;
use std::time::{Duration, Instant};

/// PostgreSQL scenarios run one at a time, so "nothing left running" is about this test alone.
static POSTGRES: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A copy of examples/automata-signal in a temporary directory.
fn example() -> Option<Project> {
    if !(have("mix") && have("initdb") && have("pg_isready")) {
        assert!(
            std::env::var_os("CAIRN_SKIP_ELIXIR").is_some(),
            "Elixir and PostgreSQL are needed (apt-get install elixir postgresql)"
        );
        eprintln!("SKIPPED: Elixir or PostgreSQL is not installed (CAIRN_SKIP_ELIXIR is set)");
        return None;
    }
    let p = Project::new();
    let src = repo_root().join("examples/automata-signal");
    for e in walkdir::WalkDir::new(&src).into_iter().flatten() {
        let rel = e.path().strip_prefix(&src).unwrap();
        let first = rel.components().next().map(|c| c.as_os_str().to_string_lossy().to_string()).unwrap_or_default();
        if ["_build", "deps", "cache"].contains(&first.as_str()) {
            continue;
        }
        let dst = p.path().join(rel);
        if e.file_type().is_dir() {
            std::fs::create_dir_all(&dst).unwrap();
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
    Some(p.env("GITHUB_TOKEN", "ghp_exampleCanary0123456789"))
}

fn statuses(p: &Project, extra: &[&str]) -> (Vec<String>, String) {
    let mut args = vec!["build", "-p", "pipelines/verify.ron", "--summary", "json"];
    args.extend_from_slice(extra);
    let r = p.run(&args).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let s = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect();
    (s, r.stderr)
}

fn leftover_services() -> String {
    let out = Command::new("pgrep").args(["-af", "cairn-svc-"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_verify_job_cold_warm_changed_and_restored() {
    let _one = POSTGRES.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = example() else { return };
    let (s, err) = statuses(&p, &[]);
    assert_eq!(s, ["deps:ran", "format:ran", "compile:ran", "test:ran"], "{err}");
    assert!(err.contains("5 tests, 0 failures"), "the database test ran against PostgreSQL: {err}");
    assert_eq!(leftover_services(), "", "PostgreSQL stopped after the run");

    let (s, err) = statuses(&p, &[]);
    assert_eq!(s, ["deps:hit-local", "format:hit-local", "compile:hit-local", "test:hit-local"]);
    assert!(!err.contains("[test] $ mix") && !err.contains("[compile] $ mix"), "no mix command ran: {err}");

    let f = p.path().join("lib/automata/regions.ex");
    let text = std::fs::read_to_string(&f)
        .unwrap()
        .replace("\"automata-signal-\" <> region", "\"automata-signal-\" <> String.downcase(region)");
    std::fs::write(&f, text).unwrap();
    let (s, _) = statuses(&p, &[]);
    assert_eq!(
        s,
        ["deps:hit-local", "format:ran", "compile:ran", "test:ran"],
        "compile and test again, deps stays a hit"
    );

    std::fs::remove_dir_all(p.path().join("_build")).unwrap();
    std::fs::remove_dir_all(p.path().join("deps")).unwrap();
    let (s, _) = statuses(&p, &[]);
    assert!(s.iter().all(|x| x.ends_with("hit-local")), "{s:?}");
    let out = Command::new("mix").arg("compile").current_dir(p.path()).env("MIX_ENV", "test").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !text.contains("Compiling"),
        "after a restore mix finds nothing to recompile: {text}"
    );
    assert_eq!(leftover_services(), "");
}

#[test]
fn no_postgres_is_left_after_a_failed_run_or_ctrl_c() {
    let _one = POSTGRES.lock().unwrap_or_else(|p| p.into_inner());
    let Some(p) = example() else { return };
    // A failing test.
    let t = p.path().join("test/regions_test.exs");
    let good = std::fs::read_to_string(&t).unwrap();
    std::fs::write(&t, good.replace("\"nrt\", \"fra\", \"syd\"]", "\"nrt\", \"syd\", \"fra\"]")).unwrap();
    let r = p.run(&["build", "-q", "-p", "pipelines/verify.ron"]).code(1);
    assert!(r.stderr.contains("step `test`"), "{}", r.stderr);
    assert_eq!(leftover_services(), "", "stopped after a failed run");
    std::fs::write(&t, good).unwrap();
    // Ctrl-C while the tests run (PostgreSQL is up then).
    std::fs::write(
        p.path().join("test/slow_test.exs"),
        "defmodule SlowTest do\n  use ExUnit.Case\n\n  test \"slow\" do\n    Process.sleep(30_000)\n  end\nend\n",
    )
    .unwrap();
    let mut child = crate::util::cairn()
        .args(["build", "-q", "-p", "pipelines/verify.ron"])
        .current_dir(p.path())
        .env("GITHUB_TOKEN", "ghp_exampleCanary0123456789")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while leftover_services().is_empty() {
        assert!(Instant::now() < deadline, "PostgreSQL never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "interrupted");
    assert_eq!(leftover_services(), "", "stopped after Ctrl-C");
}

#[test]
fn a_service_that_never_gets_ready_fails_within_its_retry_budget_with_its_log() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "s", services: {
            "flaky": (start: "echo warming up the flux capacitor; sleep 60", ready: (probe: Command("false"), interval: "200ms", timeout: "1s", retries: 3)),
          },
          steps: {"uses": (run: "echo never", services: ["flaky"])})"#,
    );
    let t = Instant::now();
    let r = p.run(&["build", "-p", "pipelines/test.ron"]).code(1);
    assert!(t.elapsed() < Duration::from_secs(8), "retry budget: 200ms grace + 3 × 200ms, took {:?}", t.elapsed());
    assert!(r.stderr.contains("service `flaky` not ready after 3 probes"), "{}", r.stderr);
    assert!(r.stderr.contains("warming up the flux capacitor"), "the log's tail is shown: {}", r.stderr);
    let left = Command::new("pgrep").args(["-f", "flux capacitor"]).output().unwrap();
    assert!(left.stdout.is_empty(), "nothing is left running");
}

#[test]
fn a_tcp_service_exports_its_free_port_to_steps() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "s", services: {
            "echo": (start: "python3 -m http.server {port} --bind 127.0.0.1", export: {"SVC_URL": "http://127.0.0.1:{port}/"},
                     ready: (probe: Http("http://127.0.0.1:{port}/"), interval: "5s", timeout: "2s", retries: 5)),
          },
          steps: {"get": (run: "python3 -c \"import os,urllib.request; print(urllib.request.urlopen(os.environ['SVC_URL']).status)\" > status.txt", services: ["echo"], outputs: ["status.txt"])})"#,
    );
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    assert_eq!(p.read("status.txt"), "200\n");
    // The port is runtime state, not part of the key: the next run is a hit.
    let r = p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("hit-local"), "{}", r.stderr);
}

#[test]
fn missing_secret_wrong_toolchain_and_missing_lock_file_are_one_line_errors() {
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "e", secrets: {"GITHUB_TOKEN": Env("CAIRN_TEST_NO_SUCH_VAR")},
               toolchains: {"sh": (probe: "echo 'Elixir 1.14.0 (compiled with Erlang/OTP 25)'", require: "1.18")},
               steps: {
                 "needs-secret": (run: "true", secrets: ["GITHUB_TOKEN"]),
                 "old-elixir": (run: "true", toolchains: ["sh"]),
                 "deps": (run: "true", inputs: ["mix.exs", "mix.lock"]),
               })"#,
        )
        .file("mix.exs", "defmodule X do end\n");
    let r = p.run(&["build", "-p", "pipelines/test.ron", "needs-secret"]).code(2);
    assert!(
        r.stderr.contains(
            "\nerror: secret `GITHUB_TOKEN` is missing: environment variable `CAIRN_TEST_NO_SUCH_VAR` is not set"
        ),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("hint: export CAIRN_TEST_NO_SUCH_VAR="), "{}", r.stderr);
    let r = p.run(&["build", "-p", "pipelines/test.ron", "old-elixir"]).code(2);
    assert!(r.stderr.contains("toolchain `sh` must be version 1.18, but `echo"), "{}", r.stderr);
    assert!(r.stderr.contains("reports: Elixir 1.14.0"), "says what was found: {}", r.stderr);
    let r = p.run(&["build", "-p", "pipelines/test.ron", "deps"]).code(2);
    assert_eq!(r.stderr.lines().count(), 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("step `deps` reads `mix.lock`, which does not exist: run `mix deps.get` and commit mix.lock"),
        "{}",
        r.stderr
    );
}

/// A fork's pull request has no tokens: a run whose steps are all stored needs no secret.
#[test]
fn a_fully_cached_run_needs_no_secrets() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "s", secrets: {"GITHUB_TOKEN": Env("CAIRN_TEST_TOKEN")},
           steps: {"publish": (run: "test -n \"$GITHUB_TOKEN\" && echo built > out.txt", secrets: ["GITHUB_TOKEN"], outputs: ["out.txt"])})"#,
    );
    p.run_with(&["build", "-p", "pipelines/test.ron"], &[("CAIRN_TEST_TOKEN", "tok-123456")]).ok();
    std::fs::remove_file(p.path().join("out.txt")).unwrap();
    let r = p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("hit-local"), "{}", r.stderr);
    assert_eq!(p.read("out.txt"), "built\n", "restored without the token");
    // Changed, so it must run: now the missing token is the usage error it always was.
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("echo built", "echo rebuilt"));
    let r = p.run(&["build", "-p", "pipelines/test.ron"]).code(2);
    assert!(r.stderr.contains("secret `GITHUB_TOKEN` is missing"), "{}", r.stderr);
}

#[test]
fn secrets_from_files_and_commands_are_masked_line_by_line_everywhere() {
    let canary = format!("c4n4ry-{}-{:x}", std::process::id(), Instant::now().elapsed().as_nanos() ^ 0x5eed);
    let key = format!("-----BEGIN KEY-----\nline-one-{canary}\nline-two-{canary}\n-----END KEY-----");
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "m", secrets: {"KEY": File("secret.pem"), "CMD": Command("cat token.txt")},
               steps: {"leak": (run: "printf '%s\n' \"$KEY\"; echo \"cmd=$CMD\"; printf %s \"$CMD\" | base64; echo out > o.txt", secrets: ["KEY", "CMD"], outputs: ["o.txt"])})"#,
        )
        .file("secret.pem", &key)
        .file("token.txt", &format!("tok-{canary}\n"));
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    let all = r.stdout.clone() + &r.stderr;
    assert!(all.contains("[leak] ***") && all.contains("cmd=***"), "masked in live output: {all}");
    assert!(!all.contains(&canary), "{all}");
    let b64 = cairn::exec::secrets::base64(format!("tok-{canary}").as_bytes());
    assert!(!all.contains(&b64), "base64 form masked");
    // Nothing cairn stored holds it either (the secret files themselves aside).
    for e in walkdir::WalkDir::new(p.path().join("cache")).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        let bytes = std::fs::read(e.path()).unwrap();
        let decoded = zstd::decode_all(&bytes[..]).unwrap_or_default();
        for hay in [bytes, decoded] {
            let s = String::from_utf8_lossy(&hay);
            assert!(!s.contains(&canary) && !s.contains(&b64), "found in {}", e.path().display());
        }
    }
}
