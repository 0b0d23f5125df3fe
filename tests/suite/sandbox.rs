//! Issue 15: hermetic steps. A cacheable step runs under Landlock (`Enforce`, the default):
//! inside the workspace it reads only its declared inputs, the outputs of the steps it needs
//! and its own outputs, writes only its outputs (and `scratch`), and connects only to its
//! services' ports unless it declares `network: true`.

use crate::util::Project;
use std::process::Stdio;

const BUILD: &[&str] = &["build", "-p", "pipelines/test.ron"];

fn landlock() -> bool {
    cairn::exec::sandbox::abi().is_some()
}

/// Skip (saying so, and never in CI) where the kernel has no Landlock.
fn needs_landlock(test: &str) -> bool {
    if landlock() {
        return true;
    }
    eprintln!("SKIPPED {test}: this kernel has no Landlock");
    assert!(std::env::var_os("CI").is_none(), "CI machines have Landlock (ABI 7)");
    false
}

fn summary(p: &Project, args: &[&str]) -> crate::util::Run {
    let mut a = BUILD.to_vec();
    a.extend_from_slice(&["--summary", "json"]);
    a.extend_from_slice(args);
    p.run(&a)
}

fn step(v: &serde_json::Value, name: &str) -> serde_json::Value {
    v["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap().clone()
}

#[test]
fn an_undeclared_read_is_denied_naming_the_file_and_nothing_is_stored() {
    if !needs_landlock("an_undeclared_read_is_denied_naming_the_file_and_nothing_is_stored") {
        return;
    }
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "s", sandbox: Enforce, steps: {
                 "gen": (run: "mkdir -p out && cat src/a.txt > out/a.txt", inputs: ["src/**"], outputs: ["out/"]),
                 "use": (run: "cat out/a.txt src/a.txt > all.txt", needs: ["gen"], inputs: ["src/a.txt"], outputs: ["all.txt"]),
                 "sneaky": (run: "cat notes/undeclared.txt > b.txt", inputs: ["src/a.txt"], outputs: ["b.txt"]),
               })"#,
        )
        .file("src/a.txt", "a\n")
        .file("notes/undeclared.txt", "not an input\n");
    let r = summary(&p, &["--keep-going"]).code(1);
    let v = r.json();
    // Declared inputs and an upstream step's outputs are readable.
    assert_eq!((step(&v, "gen")["status"].clone(), step(&v, "use")["status"].clone()), ("ran".into(), "ran".into()));
    assert_eq!(p.read("all.txt"), "a\na\n");
    // The undeclared read fails, and the tool names the file.
    assert_eq!(step(&v, "sneaky")["status"], "failed");
    assert!(r.stderr.contains("notes/undeclared.txt: Permission denied"), "{}", r.stderr);
    assert!(step(&v, "gen")["sandbox"].as_str().unwrap().starts_with("landlock"), "{v}");
    // Nothing was stored for it: declared, it runs and is stored.
    p.write(
        "pipelines/test.ron",
        &p.read("pipelines/test.ron").replace(
            r#"inputs: ["src/a.txt"], outputs: ["b.txt"]"#,
            r#"inputs: ["src/a.txt", "notes/**"], outputs: ["b.txt"]"#,
        ),
    );
    let v = summary(&p, &[]).ok().json();
    assert_eq!(step(&v, "sneaky")["status"], "ran");
    assert_eq!(step(&summary(&p, &[]).ok().json(), "sneaky")["status"], "hit-local");
}

#[test]
fn a_git_ignored_file_read_by_a_declared_one_is_denied() {
    if !needs_landlock("a_git_ignored_file_read_by_a_declared_one_is_denied") {
        return;
    }
    // config/config.exs imports a git-ignored config/local.exs: the glob `config/**` never
    // matches the ignored file, so a hit would rest on it. Under the sandbox it is denied.
    let p = Project::new()
        .pipeline(r#"Pipeline(name: "g", sandbox: Enforce, steps: {"compile": (run: "cat config/config.exs $(cat config/config.exs) > out.txt", inputs: ["config/**"], outputs: ["out.txt"])})"#)
        .file(".gitignore", "config/local.exs\n")
        .file("config/config.exs", "config/local.exs\n")
        .file("config/local.exs", "secret local settings\n");
    let r = p.run(BUILD).code(1);
    assert!(r.stderr.contains("config/local.exs: Permission denied"), "{}", r.stderr);
}

#[test]
fn a_write_outside_the_outputs_is_denied_and_scratch_is_writable() {
    if !needs_landlock("a_write_outside_the_outputs_is_denied_and_scratch_is_writable") {
        return;
    }
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "w", sandbox: Enforce, steps: {
                 "stray": (run: "echo x > src/generated.txt; echo ok > out.txt", inputs: ["src/**"], outputs: ["out.txt"]),
                 "tool": (run: "mkdir -p target/debug && echo cache > target/debug/c && echo ok > out2.txt", inputs: ["src/**"], outputs: ["out2.txt"], scratch: ["target/"]),
               })"#,
        )
        .file("src/a.txt", "a\n");
    let r = p.run(BUILD).ok();
    assert!(r.stderr.contains("src/generated.txt: Permission denied"), "{}", r.stderr);
    assert!(!p.path().join("src/generated.txt").exists(), "the source tree was not written");
    assert_eq!(p.read("target/debug/c"), "cache\n");
}

#[test]
fn a_sandboxed_step_gets_a_private_temporary_directory_removed_after_it() {
    if !needs_landlock("a_sandboxed_step_gets_a_private_temporary_directory_removed_after_it") {
        return;
    }
    let p = Project::new().pipeline(
        r#"Pipeline(name: "t", sandbox: Enforce, steps: {"s": (run: "echo scratch > $TMPDIR/x && cat $TMPDIR/x > out.txt && echo $TMPDIR > where.txt", outputs: ["out.txt", "where.txt"])})"#,
    );
    p.run(BUILD).ok();
    assert_eq!(p.read("out.txt"), "scratch\n");
    let dir = p.read("where.txt").trim().to_string();
    assert!(dir.contains("cairn-step-"), "{dir}");
    assert!(!std::path::Path::new(&dir).exists(), "removed after the step");
}

#[test]
fn network_is_denied_unless_declared() {
    if !needs_landlock("network_is_denied_unless_declared") {
        return;
    }
    if cairn::exec::sandbox::abi().unwrap_or(0) < 4 {
        eprintln!("SKIPPED network_is_denied_unless_declared: Landlock ABI 4 (TCP rules) is needed");
        return;
    }
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in l.incoming() {});
    let connect = format!(
        "python3 -c \"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2); print('connected')\""
    );
    let p = Project::new().pipeline(&format!(
        r#"Pipeline(name: "n", sandbox: Enforce, steps: {{
             "closed": (run: "{c}", cache: true),
             "open": (run: "{c}", network: true),
           }})"#,
        c = connect.replace('"', "\\\"")
    ));
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--keep-going"]).code(1);
    assert!(r.stdout.contains("[open] connected"), "{}{}", r.stdout, r.stderr);
    assert!(
        !r.stdout.contains("[closed] connected") && r.stderr.contains("Permission denied"),
        "{}{}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn without_landlock_steps_run_unsandboxed_with_one_warning_or_fail_when_required() {
    let p = Project::new()
        .pipeline(r#"Pipeline(name: "d", sandbox: Enforce, steps: {"a": (run: "cat notes.txt > out.txt", outputs: ["out.txt"]), "b": (run: "echo b > b.txt", outputs: ["b.txt"])})"#)
        .file("notes.txt", "n\n");
    let none = [("CAIRN_LANDLOCK", "off")];
    let r = p.run_with(&["build", "-p", "pipelines/test.ron", "--summary", "json"], &none).ok();
    assert_eq!(r.stderr.matches("has no Landlock").count(), 1, "one warning: {}", r.stderr);
    assert_eq!(step(&r.json(), "a")["sandbox"], "unavailable");
    let r = p.run_with(&["build", "-p", "pipelines/test.ron", "--force", "a", "--require-sandbox"], &none).code(1);
    assert!(r.stderr.contains("no Landlock") && r.stderr.contains("--require-sandbox"), "{}", r.stderr);
    // Turned off on purpose: no warning.
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--force", "a", "--sandbox", "off", "--summary", "json"]).ok();
    assert!(!r.stderr.contains("Landlock"), "{}", r.stderr);
    assert_eq!(step(&r.json(), "a")["sandbox"], "off");
}

/// Landlock needs no privilege: the same build works for a user who is not root.
#[test]
fn the_sandbox_works_unprivileged() {
    if !needs_landlock("the_sandbox_works_unprivileged") {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Already unprivileged: the other tests prove it.
        return;
    }
    let dir = tempfile::Builder::new().prefix("cairn-nobody").tempdir().unwrap();
    let root = dir.path().join("p");
    std::fs::create_dir_all(root.join("pipelines")).unwrap();
    std::fs::create_dir_all(root.join("src")).unwrap();
    std::fs::write(root.join("src/a.txt"), "a\n").unwrap();
    std::fs::write(root.join("secret.txt"), "s\n").unwrap();
    std::fs::write(
        root.join("pipelines/test.ron"),
        r#"Pipeline(name: "u", sandbox: Enforce, steps: {"ok": (run: "cat src/a.txt > out.txt", inputs: ["src/**"], outputs: ["out.txt"]), "no": (run: "cat secret.txt > n.txt", outputs: ["n.txt"])})"#,
    )
    .unwrap();
    let chown = std::process::Command::new("chown").args(["-R", "65534:65534"]).arg(dir.path()).status().unwrap();
    assert!(chown.success());
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::util::cairn_bin())
        .args(["build", "-p", "pipelines/test.ron", "--keep-going"])
        .current_dir(&root)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(std::fs::read_to_string(root.join("out.txt")).unwrap(), "a\n", "{err}");
    assert!(err.contains("secret.txt: Permission denied"), "{err}");
    // Report mode (seccomp user notification) needs no privilege either.
    if !cairn::exec::trace::available() {
        assert!(std::env::var_os("CI").is_none(), "CI machines have seccomp user notification");
        eprintln!("SKIPPED the report-mode half: this kernel has no seccomp user notification");
        return;
    }
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(crate::util::cairn_bin())
        .args(["build", "-p", "pipelines/test.ron", "--sandbox", "report", "--force", "no"])
        .current_dir(&root)
        .env("HOME", dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("step `no` read secret.txt, which is not among its inputs"), "{err}");
}

/// `rm -rf dist` in a build script: the sandbox's rule is on `dist/` itself, so the step may
/// empty it but not delete it. The failure says exactly that, with the line to write instead.
#[test]
fn deleting_an_output_directory_fails_with_the_fix_and_emptying_it_works() {
    if !needs_landlock("deleting_an_output_directory_fails_with_the_fix_and_emptying_it_works") {
        return;
    }
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "d", steps: {"b": (run: "rm -rf dist && mkdir -p dist && cp src/a.txt dist/", workdir: "pkg", inputs: ["pkg/src/**"], outputs: ["pkg/dist/"])})"#,
        )
        .file("pkg/src/a.txt", "a\n");
    let r = p.run(&["build", "-p", "pipelines/test.ron"]).code(1);
    assert!(
        r.stderr.contains("may empty its output directory `pkg/dist/` but not delete it: write `rm -rf dist/*` instead of `rm -rf dist`"),
        "{}",
        r.stderr
    );
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("rm -rf dist &&", "rm -rf dist/* &&"));
    p.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert_eq!(p.read("pkg/dist/a.txt"), "a\n");
}
