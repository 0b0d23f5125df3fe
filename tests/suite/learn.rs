//! Issue 15, items 2 and 3: report mode names every undeclared read and write (seccomp user
//! notification), never stores a step that read one, and `cairn learn` turns the findings into
//! declarations that `cairn check` accepts; strict mode adds host paths; enforce is the
//! default for cacheable steps.

use crate::util::{git, have, Project};

fn step(v: &serde_json::Value, name: &str) -> serde_json::Value {
    v["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
}

/// Skip (saying so, and never in CI) where the kernel cannot trace or sandbox.
fn can_trace(test: &str) -> bool {
    if cairn::exec::trace::available() && cairn::exec::sandbox::abi().is_some() {
        return true;
    }
    eprintln!("SKIPPED {test}: this kernel has no seccomp user notification or no Landlock");
    assert!(std::env::var_os("CI").is_none(), "CI machines have both");
    false
}

/// A project whose `compile` reads four kinds of undeclared file (an Erlang source outside
/// the `lib/**` set, a root file read at compile time, a git-ignored local config, another
/// step's output) and writes a stray file and into another step's outputs.
fn leaky() -> Project {
    let p = Project::new()
        .pipeline(
            r#"Pipeline(
  name: "leaky",
  // The shipped example's input set: lib/** and config/**, nothing else.
  input_sets: {
    "elixir": (include: ["lib/**", "config/**", "mix.exs"]),
  },
  steps: {
    "docs": (run: "mkdir -p doc && echo docs > doc/index.html", outputs: ["doc/"]),
    "deps": (run: "mkdir -p deps && echo dep > deps/dep.txt", inputs: ["mix.exs"], outputs: ["deps/"]),
    "compile": (
      run: "cat lib/app.ex src/native.erl README.md doc/index.html > /dev/null && (test -f config/local.exs && cat config/local.exs || true) && mkdir -p out && cat lib/app.ex > out/app.beam && echo crash > erl_crash.dump && echo touched > deps/.touched",
      needs: ["deps"],
      input_sets: ["elixir"],
      outputs: ["out/"],
    ),
  },
)"#,
        )
        .file("mix.exs", "mix\n")
        .file("lib/app.ex", "app\n")
        .file("src/native.erl", "-module(native).\n")
        .file("README.md", "readme\n")
        .file("config/config.exs", "import local\n")
        .file("config/local.exs", "local secrets\n")
        .file(".gitignore", "/config/local.exs\n/cache/\n/out/\n/deps/\n/doc/\n");
    git(p.path(), &["init", "-q"]);
    p
}

#[test]
fn report_mode_names_every_undeclared_file_with_its_fix_and_stores_nothing() {
    if !can_trace("report_mode_names_every_undeclared_file_with_its_fix_and_stores_nothing") {
        return;
    }
    let p = leaky();
    p.run(&["build", "-p", "pipelines/test.ron", "docs", "-q"]).ok();
    let r = p.run(&["build", "-p", "pipelines/test.ron", "compile", "--sandbox", "report", "--summary", "json"]).ok();
    let c = step(&r.json(), "compile");
    assert_eq!(c["status"], "ran");
    assert_eq!(c["sandbox"], "report (seccomp)");
    for want in [
        r#"step `compile` read src/native.erl, which is not among its inputs: add "src/**" to input set "elixir""#,
        r#"step `compile` read README.md, which is not among its inputs: add "README.md" to input set "elixir""#,
        r#"step `compile` read config/local.exs, which git ignores"#,
        r#"step `compile` read doc/index.html, an output of step `docs`, without needing it: add "docs" to the needs of step `compile`"#,
        r#"step `compile` wrote erl_crash.dump, which is not among its outputs"#,
        r#"step `compile` wrote deps/.touched, an output of step `deps`"#,
    ] {
        assert!(r.stderr.contains(want), "missing `{want}` in:\n{}", r.stderr);
    }
    let kinds: Vec<&str> = c["undeclared"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.len(), 6, "{c}");
    // Declared reads (lib/app.ex, deps/ of a needed step) and its own outputs say nothing.
    assert!(!r.stderr.contains("read lib/app.ex") && !r.stderr.contains("read deps/dep.txt"), "{}", r.stderr);
    assert!(r.stderr.contains("compile: not stored"), "{}", r.stderr);
    // Nothing was stored: the next run runs again.
    let v = p
        .run(&["build", "-p", "pipelines/test.ron", "compile", "--sandbox", "report", "--summary", "json"])
        .ok()
        .json();
    assert_eq!(step(&v, "compile")["status"], "ran");
    assert_eq!(step(&v, "compile")["reason"], "no-entry");
}

#[test]
fn enforce_is_the_default_for_cacheable_steps_and_denies_the_same_reads() {
    if !can_trace("enforce_is_the_default_for_cacheable_steps_and_denies_the_same_reads") {
        return;
    }
    let p = leaky();
    // The pipeline says nothing about the sandbox: a cacheable step is enforced.
    let r = p.run(&["build", "-p", "pipelines/test.ron", "compile", "--summary", "json"]).code(1);
    let c = step(&r.json(), "compile");
    assert_eq!(c["status"], "failed");
    assert!(c["sandbox"].as_str().unwrap().starts_with("landlock (ABI "), "{c}");
    assert!(r.stderr.contains("src/native.erl: Permission denied"), "{}", r.stderr);
    assert!(r.stderr.contains("`cairn learn compile` names what the step needs"), "{}", r.stderr);
    // A step with `cache: false` is not sandboxed unless it asks.
    let q = Project::new()
        .pipeline(r#"Pipeline(name: "q", steps: {"d": (run: "cat notes.txt", cache: false)})"#)
        .file("notes.txt", "n\n");
    let v = q.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok().json();
    assert_eq!(step(&v, "d")["sandbox"], "off");
}

#[test]
fn learn_prints_declarations_and_apply_makes_the_build_clean_and_the_wrong_hit_go() {
    if !can_trace("learn_prints_declarations_and_apply_makes_the_build_clean_and_the_wrong_hit_go") {
        return;
    }
    let p = leaky();
    p.run(&["build", "-p", "pipelines/test.ron", "docs", "-q"]).ok();
    let before = p.read("pipelines/test.ron");
    let r = p.run(&["learn", "-p", "pipelines/test.ron", "compile", "-q"]).ok();
    assert_eq!(p.read("pipelines/test.ron"), before, "printing changes nothing");
    for want in [
        r#""elixir": (include: ["README.md", "src/**"]),"#,
        r#""compile": (needs: ["docs"], outputs: ["deps/.touched", "erl_crash.dump"], untracked: ["config/local.exs"]),"#,
    ] {
        assert!(r.stdout.contains(want), "missing `{want}` in:\n{}", r.stdout);
    }
    let r = p.run(&["learn", "-p", "pipelines/test.ron", "compile", "-q", "--apply"]).ok();
    assert!(r.stdout.contains("applied to pipelines/test.ron"), "{}", r.stdout);
    let text = p.read("pipelines/test.ron");
    assert!(text.contains("// The shipped example's input set"), "comments are kept:\n{text}");
    assert!(
        text.contains(r#""elixir": (include: ["lib/**", "config/**", "mix.exs", "README.md", "src/**"]),"#),
        "{text}"
    );
    p.run(&["check", "-p", "pipelines/test.ron"]).ok();
    // Traced again: nothing undeclared, and it is stored.
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--sandbox", "report", "--summary", "json"]).ok();
    let c = step(&r.json(), "compile");
    assert!(c.get("undeclared").is_none(), "{c}");
    assert!(!r.stderr.contains("undeclared"), "{}", r.stderr);
    assert!(c["bytes_stored"].as_u64().unwrap() > 0, "{c}");
    // Enforced (the default), it passes and hits.
    let v = p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok().json();
    assert_eq!(step(&v, "compile")["status"], "hit-local");
    // The hits that rested on undeclared files are gone: each of them now re-runs the step.
    for (file, change) in
        [("src/native.erl", "-module(native2).\n"), ("README.md", "new\n"), ("config/local.exs", "other\n")]
    {
        p.write(file, change);
        let v = p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok().json();
        let c = step(&v, "compile");
        assert_eq!(c["status"], "ran", "{file}: {c}");
        assert!(c["reasons"].to_string().contains(file), "{file}: {c}");
    }
    std::fs::remove_file(p.path().join("config/local.exs")).unwrap();
    let v = p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok().json();
    assert_eq!(step(&v, "compile")["status"], "ran", "a checkout without the local config does not hit");
    // Nothing left to learn.
    let r = p.run(&["learn", "-p", "pipelines/test.ron", "compile", "-q"]).ok();
    assert!(r.stdout.contains("nothing undeclared: compile"), "{}", r.stdout);
}

#[test]
fn report_mode_sees_connections_and_learn_declares_the_network() {
    if !can_trace("report_mode_sees_connections_and_learn_declares_the_network") {
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in l.incoming() {});
    let p = Project::new().pipeline(&format!(
        r#"Pipeline(name: "n", steps: {{
             "fetch": (run: "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2)\" && echo ok > got.txt", outputs: ["got.txt"]),
           }})"#
    ));
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--sandbox", "report"]).ok();
    assert!(
        r.stderr.contains(&format!(
            "step `fetch` connected to 127.0.0.1:{port} without declaring the network: add `network: true`"
        )),
        "{}",
        r.stderr
    );
    p.run(&["learn", "-p", "pipelines/test.ron", "fetch", "--apply", "-q"]).ok();
    assert!(
        p.read("pipelines/test.ron").contains("\"fetch\": (network: true, run:"),
        "{}",
        p.read("pipelines/test.ron")
    );
    // Declared, the enforced sandbox lets it connect.
    p.run(&["build", "-p", "pipelines/test.ron", "--force", "fetch"]).ok();
}

#[test]
fn strict_mode_denies_and_reports_host_reads_until_declared() {
    if !can_trace("strict_mode_denies_and_reports_host_reads_until_declared") {
        return;
    }
    let outside = tempfile::Builder::new().prefix("cairn-host").tempdir().unwrap();
    std::fs::write(outside.path().join("tool.conf"), "conf\n").unwrap();
    let conf = outside.path().join("tool.conf");
    let p = Project::new().pipeline(&format!(
        r#"Pipeline(name: "h", steps: {{"s": (run: "cat {} > out.txt", outputs: ["out.txt"])}})"#,
        conf.display()
    ));
    // Enforce leaves the outside alone.
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let r = p
        .run(&["build", "-p", "pipelines/test.ron", "--force", "s", "--sandbox", "strict", "--summary", "json"])
        .code(1);
    assert!(r.stderr.contains("tool.conf: Permission denied"), "{}", r.stderr);
    let host = outside.path().display().to_string();
    let want = format!(
        "step `s` read {}, outside the workspace and outside system paths: add \"{}\" to the host paths of step `s`",
        conf.display(),
        host
    );
    assert!(r.stderr.contains(&want), "missing `{want}` in:\n{}", r.stderr);
    assert!(step(&r.json(), "s")["sandbox"].as_str().unwrap().starts_with("strict (landlock ABI "));
    let r = p.run(&["learn", "-p", "pipelines/test.ron", "s", "--strict", "--apply", "-q"]).ok();
    assert!(r.stdout.contains(&format!("host: [\"{host}\"]")), "{}", r.stdout);
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--force", "s", "--sandbox", "strict"]).ok();
    assert!(!r.stderr.contains("undeclared"), "{}", r.stderr);
}

#[test]
fn without_seccomp_report_mode_degrades_with_one_warning_or_fails_when_required() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "d", sandbox: Report, steps: {"a": (run: "echo a > a.txt", outputs: ["a.txt"]), "b": (run: "echo b > b.txt", outputs: ["b.txt"])})"#,
    );
    let none = [("CAIRN_SECCOMP", "off")];
    let r = p.run_with(&["build", "-p", "pipelines/test.ron", "--summary", "json"], &none).ok();
    assert_eq!(r.stderr.matches("no seccomp user notification").count(), 1, "one warning: {}", r.stderr);
    assert_eq!(step(&r.json(), "a")["sandbox"], "unavailable");
    let r = p.run_with(&["build", "-p", "pipelines/test.ron", "--force", "a", "--require-sandbox"], &none).code(1);
    assert!(
        r.stderr.contains("no seccomp user notification") && r.stderr.contains("--require-sandbox"),
        "{}",
        r.stderr
    );
    let r = p.run_with(&["learn", "-p", "pipelines/test.ron", "a"], &none).code(1);
    assert!(r.stderr.contains("no seccomp user notification"), "{}", r.stderr);
}

/// A real mix project with the undeclared-input classes the issue names: an Erlang file under
/// `src/`, a file read at compile time into `@moduledoc`, a git-ignored `config/local.exs`
/// imported by `config/config.exs`, and test data outside `test/`.
#[test]
fn a_mix_project_is_learned_in_one_command_and_then_builds_clean() {
    if !can_trace("a_mix_project_is_learned_in_one_command_and_then_builds_clean") {
        return;
    }
    if !have("mix") {
        assert!(std::env::var_os("CAIRN_SKIP_ELIXIR").is_some(), "Elixir is needed (apt-get install elixir)");
        eprintln!("SKIPPED a_mix_project_is_learned_in_one_command_and_then_builds_clean: mix is not installed");
        return;
    }
    let p = Project::new()
        .pipeline(
            r#"Pipeline(
  name: "app",
  input_sets: {"elixir": (include: ["mix.exs", "lib/**", "config/**"])},
  toolchains: {"elixir": (probe: "elixir --version")},
  steps: {
    "compile": (run: "mix compile", input_sets: ["elixir"], outputs: ["_build/"], toolchains: ["elixir"], env: {"MIX_ENV": "test"}),
    "test": (run: "mix test", needs: ["compile"], input_sets: ["elixir"], inputs: ["test/**"], toolchains: ["elixir"], env: {"MIX_ENV": "test"}),
  },
)"#,
        )
        .file(
            "mix.exs",
            "defmodule App.MixProject do\n  use Mix.Project\n  def project, do: [app: :app, version: \"0.1.0\", deps: []]\nend\n",
        )
        .file("README.md", "The app.\n")
        .file(
            "lib/app.ex",
            "defmodule App do\n  @external_resource \"README.md\"\n  @moduledoc File.read!(\"README.md\")\n  def hi, do: :plug_multipart.hi()\n  def level, do: Application.get_env(:app, :level)\nend\n",
        )
        .file("src/plug_multipart.erl", "-module(plug_multipart).\n-export([hi/0]).\nhi() -> hi.\n")
        .file(
            "config/config.exs",
            "import Config\nconfig :app, level: 1\nif File.exists?(Path.expand(\"local.exs\", __DIR__)), do: import_config(\"local.exs\")\n",
        )
        .file("config/local.exs", "import Config\nconfig :app, level: 2\n")
        .file("test/test_helper.exs", "ExUnit.start()\n")
        .file(
            "test/app_test.exs",
            "defmodule AppTest do\n  use ExUnit.Case\n  test \"hi\", do: assert(App.hi() == :hi)\n  test \"data\", do: assert(File.read!(\"fixtures/data.txt\") == \"42\\n\")\nend\n",
        )
        .file("fixtures/data.txt", "42\n")
        .file(".gitignore", "/_build/\n/cache/\n/config/local.exs\n");
    git(p.path(), &["init", "-q"]);
    // Enforced, the compile fails on the first undeclared file, naming it.
    let r = p.run(&["build", "-p", "pipelines/test.ron"]).code(1);
    assert!(r.stderr.contains("cairn learn compile"), "{}", r.stderr);
    let r = p.run(&["learn", "-p", "pipelines/test.ron", "compile", "test", "--apply", "-q"]).ok();
    for want in ["src/**", "README.md", "config/local.exs", "fixtures/**"] {
        assert!(r.stdout.contains(want), "missing {want} in:\n{}{}", r.stdout, r.stderr);
    }
    p.run(&["check", "-p", "pipelines/test.ron"]).ok();
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--sandbox", "report", "--summary", "json"]).ok();
    assert!(!r.stderr.contains("undeclared:"), "{}", r.stderr);
    let v = p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok().json();
    assert_eq!(
        (step(&v, "compile")["status"].clone(), step(&v, "test")["status"].clone()),
        ("hit-local".into(), "hit-local".into())
    );
    // The Erlang file is an input now: a change re-runs compile (it was a wrong hit before).
    p.write("src/plug_multipart.erl", "-module(plug_multipart).\n-export([hi/0]).\nhi() -> hello.\n");
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).code(1);
    assert_eq!(step(&r.json(), "compile")["status"], "ran");
    assert_eq!(step(&r.json(), "test")["status"], "failed", "the test sees the change");
}
