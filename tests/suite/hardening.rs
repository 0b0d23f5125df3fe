//! Issue 13: hostile remotes, hostile stores, signals, closed pipes, concurrent builds, exact
//! restores. Each test fails on the code before the fix it names.

use super::remote::{Server, WRITER};
use crate::util::{git, have, to_run, Project};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

const BUILD: &[&str] = &["build", "-p", "pipelines/test.ron"];

fn summary(p: &Project, extra: &[&str]) -> serde_json::Value {
    let mut args = BUILD.to_vec();
    args.extend_from_slice(&["--summary", "json"]);
    args.extend_from_slice(extra);
    p.run(&args).ok().json()
}

fn step<'a>(v: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    v["steps"].as_array().unwrap().iter().find(|s| s["name"] == name).unwrap_or_else(|| panic!("no step {name}"))
}

fn sigint(child: &std::process::Child) {
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
}

/// Wait for a child, at most `limit`; how long it took and its output (killed if too long).
fn wait_at_most(mut child: std::process::Child, limit: Duration) -> (Duration, crate::util::Run) {
    let t = Instant::now();
    while t.elapsed() < limit {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = t.elapsed();
    let _ = child.kill();
    (took, to_run(child.wait_with_output().unwrap()))
}

// ---- 1. links -------------------------------------------------------------------------------

/// A step whose outputs hold a link onto a source file: the archive is refused on restore, so
/// the step's next run (which writes its output) can never write through it into `src/`.
#[test]
fn a_restored_link_onto_a_source_file_is_refused_and_the_source_survives() {
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "l", steps: {
                 "gen": (run: "mkdir -p out && ln -sf ../src/x.txt out/a.txt && echo made", inputs: ["src/x.txt"], outputs: ["out/"]),
               })"#,
        )
        .file("src/x.txt", "source\n");
    p.run(BUILD).ok();
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let v = summary(&p, &[]);
    let gen = step(&v, "gen");
    assert_eq!(gen["status"], "ran", "{v}");
    let detail = gen["reason"].to_string() + &gen["reasons"].to_string();
    assert!(detail.contains("out/a.txt") && detail.contains("src/x.txt"), "names the link and its target: {v}");
    assert_eq!(p.read("src/x.txt"), "source\n");
}

/// A link in the worktree above an output: restoring never writes through it.
#[test]
fn outputs_are_never_restored_through_a_link_in_the_worktree() {
    let outside = tempfile::tempdir().unwrap();
    // The command itself declines to write through the link (cairn's restore is under test).
    let p = Project::new().pipeline(
        r#"Pipeline(name: "l", steps: {"gen": (run: "test -L build || { mkdir -p build/out && echo hi > build/out/a.txt; }", outputs: ["build/out/"])})"#,
    );
    p.run(BUILD).ok();
    std::fs::remove_dir_all(p.path().join("build")).unwrap();
    std::os::unix::fs::symlink(outside.path(), p.path().join("build")).unwrap();
    let r = p.run(BUILD);
    assert!(r.stderr.contains("`build` in the worktree is a symlink"), "{}", r.stderr);
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0, "nothing was restored outside: {}", r.stderr);
}

// ---- 2. bounded transfers and signals -------------------------------------------------------

/// A remote serving a valid envelope, and the archive in a chosen hostile way.
struct FakeRemote {
    url: String,
    requested: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

#[derive(Clone, Copy)]
enum Body {
    Stall,
    Trickle,
    Oversize,
}

impl FakeRemote {
    fn start(key: String, meta: Vec<u8>, body: Vec<u8>, how: Body) -> FakeRemote {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let requested = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = requested.clone();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (key, meta, body, seen) = (key.clone(), meta.clone(), body.clone(), seen.clone());
                std::thread::spawn(move || {
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut w = s;
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
                        loop {
                            let mut h = String::new();
                            if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                                break;
                            }
                        }
                        let send = |w: &mut std::net::TcpStream, code: &str, len: u64, data: &[u8]| {
                            let _ = write!(w, "HTTP/1.1 {code}\r\ncontent-length: {len}\r\n\r\n");
                            let _ = w.write_all(data);
                            let _ = w.flush();
                        };
                        if path.contains(&format!("/{key}-meta")) {
                            send(&mut w, "200 OK", meta.len() as u64, &meta);
                        } else if path.contains(&format!("/{key}?")) {
                            seen.store(true, std::sync::atomic::Ordering::SeqCst);
                            match how {
                                Body::Oversize => send(&mut w, "200 OK", 5_000_000_000, &body[..10]),
                                Body::Stall => {
                                    send(&mut w, "200 OK", body.len() as u64, &body[..10]);
                                    std::thread::sleep(Duration::from_secs(60));
                                }
                                Body::Trickle => {
                                    send(&mut w, "200 OK", body.len() as u64, &[]);
                                    for b in &body {
                                        if w.write_all(&[*b]).is_err() {
                                            return;
                                        }
                                        std::thread::sleep(Duration::from_millis(300));
                                    }
                                }
                            }
                            return;
                        } else if path.contains("/status") {
                            send(&mut w, "200 OK", 2, b"{}");
                        } else {
                            send(&mut w, "404 Not Found", 0, b"");
                        }
                    }
                });
            }
        });
        FakeRemote { url, requested }
    }
}

const REMOTE_PIPELINE: &str = r#"Pipeline(name: "demo", steps: {
  "gen": (run: "mkdir -p out && head -c 300000 /dev/urandom > out/r.bin && echo generated", inputs: ["src/a.txt"], outputs: ["out/"]),
})"#;

/// Upload one entry to a real `cairn serve`, and read its envelope and archive back.
fn published() -> (String, Vec<u8>, Vec<u8>) {
    let server = Server::start(&[]);
    let p = Project::new()
        .pipeline(REMOTE_PIPELINE)
        .file("src/a.txt", "a\n")
        .env("CAIRN_REMOTE", &server.url)
        .env("CAIRN_TOKEN", WRITER);
    let v = summary(&p, &[]);
    let key = step(&v, "gen")["key"].as_str().unwrap().to_string();
    let get = |h: &str| {
        let resp = reqwest::blocking::Client::new()
            .get(format!("{}/v8/artifacts/{h}?slug=demo", server.url))
            .bearer_auth(WRITER)
            .send()
            .unwrap();
        assert!(resp.status().is_success(), "{h}: {}", resp.status());
        resp.bytes().unwrap().to_vec()
    };
    let (meta, body) = (get(&format!("{key}-meta")), get(&key));
    (key, meta, body)
}

#[test]
fn a_stalled_trickling_or_oversized_download_is_a_remote_error_within_seconds() {
    let (key, meta, body) = published();
    for (name, how) in [("stall", Body::Stall), ("trickle", Body::Trickle), ("oversize", Body::Oversize)] {
        let fake = FakeRemote::start(key.clone(), meta.clone(), body.clone(), how);
        let p = Project::new().pipeline(REMOTE_PIPELINE).file("src/a.txt", "a\n").env("CAIRN_REMOTE", &fake.url);
        let t = Instant::now();
        let v = summary(&p, &[]);
        let took = t.elapsed();
        assert!(fake.requested.load(std::sync::atomic::Ordering::SeqCst), "{name}: the archive was asked for");
        let gen = step(&v, "gen");
        assert_eq!(gen["status"], "ran", "{name}: {v}");
        assert!(v.to_string().contains("remote-error"), "{name}: a remote-error reason: {v}");
        assert!(took < Duration::from_secs(5), "{name}: the hostile remote held the build for {took:?}");
    }
}

#[test]
fn ctrl_c_ends_a_stalled_download_within_a_second() {
    let (key, meta, body) = published();
    let fake = FakeRemote::start(key, meta, body, Body::Stall);
    let p = Project::new()
        .pipeline(REMOTE_PIPELINE)
        .file("src/a.txt", "a\n")
        .env("CAIRN_REMOTE", &fake.url)
        .env("CAIRN_REMOTE_TIMEOUT_MS", "60000");
    let child = p.command(BUILD).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    while !fake.requested.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(t.elapsed() < Duration::from_secs(20), "the archive was never requested");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(200));
    sigint(&child);
    let (took, r) = wait_at_most(child, Duration::from_secs(5));
    assert!(took < Duration::from_millis(1500), "took {took:?} to stop: {}", r.stderr);
    assert_eq!(r.code, 130, "{}", r.stderr);
}

/// A step that leaves a daemon holding its stdout: the step is over when its command is.
#[test]
fn a_daemonised_grandchild_holding_stdout_neither_hangs_the_build_nor_ctrl_c() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "d", steps: {
             "daemon": (run: "setsid sleep 30 & echo started", cache: false),
             "slow": (run: "setsid sleep 30 & sleep 30", cache: false),
           })"#,
    );
    let t = Instant::now();
    let r = p.run(&["build", "-p", "pipelines/test.ron", "daemon"]).ok();
    assert!(t.elapsed() < Duration::from_secs(5), "took {:?}", t.elapsed());
    assert!(r.stdout.contains("[daemon] started"), "{}", r.stdout);
    let child = p.command(&["build", "-p", "pipelines/test.ron", "slow"]).stderr(Stdio::piped()).spawn().unwrap();
    std::thread::sleep(Duration::from_millis(700));
    sigint(&child);
    let (took, r) = wait_at_most(child, Duration::from_secs(10));
    assert!(took < Duration::from_millis(1500), "took {took:?} after Ctrl-C: {}", r.stderr);
    assert_eq!(r.code, 130, "{}", r.stderr);
}

// ---- 3. one build per workspace ---------------------------------------------------------------

#[test]
fn concurrent_builds_in_one_workspace_never_store_a_racy_output() {
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "c", steps: {
                 "gen": (run: "mkdir -p out && for i in 1 2 3 4 5; do cat src/a.txt >> out/a.tmp; done && mv out/a.tmp out/a.txt", inputs: ["src/a.txt"], outputs: ["out/"]),
               })"#,
        )
        .file("src/a.txt", "line\n");
    let children: Vec<_> = (0..16)
        .map(|_| {
            p.command(&["build", "-q", "-p", "pipelines/test.ron", "--force", "gen"])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let r = to_run(c.wait_with_output().unwrap());
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    p.run(&["cache", "verify"]).ok();
    // A fresh checkout restores exactly what the step makes.
    let q = Project::new().pipeline(&p.read("pipelines/test.ron")).file("src/a.txt", "line\n");
    let cache = p.path().join("cache");
    let r =
        q.run(&["build", "-p", "pipelines/test.ron", "--cache-dir", cache.to_str().unwrap(), "--summary", "json"]).ok();
    assert_eq!(step(&r.json(), "gen")["status"], "hit-local");
    assert_eq!(q.read("out/a.txt"), "line\n".repeat(5));
}

#[test]
fn a_second_build_waits_saying_who_holds_the_workspace_or_fails_fast_with_no_wait() {
    let p = Project::new().pipeline(r#"Pipeline(name: "w", steps: {"slow": (run: "sleep 2", cache: false)})"#);
    let first = p.command(BUILD).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    // The first build has the lock once it says who it is (outside the worktree).
    let root = std::fs::canonicalize(p.path()).unwrap();
    let holder = cairn::exec::workspace::holder_file(&root);
    while !std::fs::read_to_string(&holder).is_ok_and(|s| s.contains(&format!("pid {}", first.id()))) {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    let r = p.run(&["build", "-p", "pipelines/test.ron", "--no-wait"]).code(5);
    assert!(r.stderr.contains("another cairn build holds this workspace") && r.stderr.contains("pid"), "{}", r.stderr);
    let r = p.run(BUILD).ok();
    assert!(r.stderr.contains("waiting for another build of this workspace"), "{}", r.stderr);
    assert!(to_run(first.wait_with_output().unwrap()).code == 0);
}

// ---- 4. the store heals itself ------------------------------------------------------------------

const SIMPLE: &str =
    r#"Pipeline(name: "s", steps: {"gen": (run: "mkdir -p out && echo hi > out/a.txt", outputs: ["out/"])})"#;

#[test]
fn a_damaged_or_deleted_index_and_a_tmp_that_is_a_file_never_brick_the_store() {
    let p = Project::new().pipeline(SIMPLE);
    p.run(BUILD).ok();
    // Damaged: garbage over the database file (its write-ahead log lost).
    std::fs::write(p.path().join("cache/index.sqlite"), vec![0x5a; 8192]).unwrap();
    for ext in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(p.path().join(format!("cache/index.sqlite{ext}")));
    }
    let r = p.run(BUILD).ok();
    assert!(r.stderr.contains("was damaged") && r.stderr.contains("index.sqlite"), "{}", r.stderr);
    assert_eq!(step(&summary(&p, &[]), "gen")["status"], "hit-local", "stored anew, hit next time");
    // Deleted (its write-ahead log left behind), and `tmp` replaced by a file.
    std::fs::remove_file(p.path().join("cache/index.sqlite")).unwrap();
    std::fs::remove_dir_all(p.path().join("cache/tmp")).unwrap();
    std::fs::write(p.path().join("cache/tmp"), "not a directory").unwrap();
    let r = p.run(BUILD).ok();
    assert!(r.stderr.contains("was not a directory"), "{}", r.stderr);
    assert_eq!(step(&summary(&p, &[]), "gen")["status"], "hit-local");
    p.run(&["cache", "verify"]).ok();
}

#[test]
fn a_blob_that_is_a_fifo_is_refused_without_blocking() {
    let p = Project::new().pipeline(SIMPLE);
    p.run(BUILD).ok();
    let blob = walkdir::WalkDir::new(p.path().join("cache/blobs"))
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path();
    std::fs::remove_file(&blob).unwrap();
    let c = std::ffi::CString::new(blob.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let child = p
        .command(&["build", "-p", "pipelines/test.ron", "--summary", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (took, r) = wait_at_most(child, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "blocked on the FIFO: {}", r.stderr);
    assert_eq!(step(&r.json(), "gen")["status"], "ran", "{}", r.stderr);
    assert_eq!(p.read("out/a.txt"), "hi\n");
    // verify does not block on one either.
    p.run(BUILD).ok();
    let blob = walkdir::WalkDir::new(p.path().join("cache/blobs"))
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file())
        .unwrap()
        .into_path();
    std::fs::remove_file(&blob).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(std::ffi::CString::new(blob.to_str().unwrap()).unwrap().as_ptr(), 0o644) }, 0);
    let child = p.command(&["cache", "verify"]).stderr(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    let (took, r) = wait_at_most(child, Duration::from_secs(10));
    assert!(took < Duration::from_secs(5), "verify blocked on the FIFO");
    assert!((r.stdout.clone() + &r.stderr).contains("not a regular file"), "{}{}", r.stdout, r.stderr);
}

#[test]
fn leftovers_of_a_killed_restore_are_cleaned_on_the_next_run() {
    let p = Project::new().pipeline(SIMPLE);
    p.run(BUILD).ok();
    let left = p.path().join(".cairn-tmp/restore-123-abc/out");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join("a.txt"), "partial").unwrap();
    let r = p.run(BUILD).ok();
    assert!(r.stderr.contains("leftover"), "{}", r.stderr);
    assert!(!p.path().join(".cairn-tmp/restore-123-abc").exists());
}

/// A full disk under the store: the build still succeeds, says it could not store, and leaves
/// no partial archive. (A 1 MiB tmpfs: needs root, which CI has.)
#[test]
fn a_full_disk_skips_storing_with_a_warning_and_keeps_building() {
    if !as_root("a_full_disk_skips_storing_with_a_warning_and_keeps_building", "mounting a tmpfs") {
        return;
    }
    let p = Project::new().pipeline(
        r#"Pipeline(name: "f", steps: {
             "big": (run: "mkdir -p out && head -c 3000000 /dev/urandom > out/r.bin", outputs: ["out/"]),
             "after": (run: "echo after > after.txt", needs: ["big"], outputs: ["after.txt"]),
           })"#,
    );
    let cache = tempfile::tempdir().unwrap();
    let Some(_m) = Mounted::new(cache.path(), &["-t", "tmpfs", "-o", "size=1m", "tmpfs"]) else { return };
    let dir = cache.path().join("c");
    let r =
        p.run(&["build", "-p", "pipelines/test.ron", "--cache-dir", dir.to_str().unwrap(), "--summary", "json"]).ok();
    assert!(r.stderr.contains("could not store"), "{}", r.stderr);
    assert_eq!(step(&r.json(), "after")["status"], "ran");
    let leftovers: Vec<_> = std::fs::read_dir(dir.join("tmp")).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(leftovers.is_empty(), "partial archives left: {leftovers:?}");
}

/// Tests that mount filesystems need root, which CI has: elsewhere they say they skipped.
fn as_root(test: &str, what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("SKIPPED {test}: {what} needs root");
    assert!(std::env::var_os("CI").is_none(), "CI must run {test} as root");
    false
}

/// A mount at `at`, unmounted when dropped.
struct Mounted(std::path::PathBuf);

impl Mounted {
    /// Mount, or `None` (said, and only outside CI) where mounting is not permitted, as in a
    /// Landlock sandbox (cairn's own pipeline runs its tests in one).
    fn new(at: &std::path::Path, args: &[&str]) -> Option<Mounted> {
        let ok = std::process::Command::new("mount").args(args).arg(at).stderr(Stdio::null()).status().unwrap();
        if !ok.success() {
            eprintln!("SKIPPED: mount {args:?} is not permitted here");
            assert!(std::env::var_os("CI").is_none(), "CI must be able to mount {args:?}");
            return None;
        }
        Some(Mounted(at.to_path_buf()))
    }
    fn remount(at: &std::path::Path, options: &str) {
        let ok = std::process::Command::new("mount").args(["-o", options]).arg(at).status().unwrap();
        assert!(ok.success(), "mount -o {options} {}", at.display());
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

// ---- 5. exact restores ----------------------------------------------------------------------

#[test]
fn read_only_outputs_come_back_read_only_and_a_no_op_restores_nothing() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "g", steps: {"objects": (
             run: "mkdir -p out/objects/ab && echo blob > out/objects/ab/cd && chmod 444 out/objects/ab/cd && chmod 555 out/objects/ab",
             outputs: ["out/"])})"#,
    );
    p.run(BUILD).ok();
    // Removing read-only outputs needs write permission on their directory.
    std::fs::set_permissions(p.path().join("out/objects/ab"), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let v = summary(&p, &[]);
    assert_eq!(step(&v, "objects")["status"], "hit-local");
    assert!(step(&v, "objects")["bytes_restored"].as_u64().unwrap() > 0);
    let mode = |rel: &str| std::fs::metadata(p.path().join(rel)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode("out/objects/ab/cd"), mode("out/objects/ab")), (0o444, 0o555));
    for _ in 0..2 {
        let v = summary(&p, &[]);
        assert_eq!(step(&v, "objects")["bytes_restored"], 0, "a no-op restores nothing: {v}");
    }
}

#[test]
fn outputs_restored_because_someone_edited_them_say_which_file() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "e", steps: {"deps": (run: "mkdir -p deps/decimal/lib && echo 'defmodule D do end' > deps/decimal/lib/decimal.ex && echo x > deps/other", outputs: ["deps/"])})"#,
    );
    p.run(BUILD).ok();
    p.write("deps/decimal/lib/decimal.ex", "edited\n");
    let r = p.run(BUILD).ok();
    assert!(
        r.stderr.contains("restored deps/: deps/decimal/lib/decimal.ex was changed since cairn wrote it"),
        "{}",
        r.stderr
    );
    assert_eq!(p.read("deps/decimal/lib/decimal.ex"), "defmodule D do end\n");
    // Only touched (same bytes): nothing is restored, and nothing said.
    let f = p.path().join("deps/other");
    let c = std::ffi::CString::new(f.to_str().unwrap()).unwrap();
    // SAFETY: utimes with a valid path and null times (now).
    unsafe { libc::utimes(c.as_ptr(), std::ptr::null()) };
    let v = summary(&p, &[]);
    assert_eq!(step(&v, "deps")["bytes_restored"], 0, "{v}");
}

// ---- 8. secrets ------------------------------------------------------------------------------

#[test]
fn a_step_writing_a_secret_into_an_output_is_warned_about_and_not_stored() {
    let p = Project::new()
        .pipeline(
            r#"Pipeline(name: "s", secrets: {"TOKEN": Env("CAIRN_TEST_SECRET")}, steps: {
                 "leak": (run: "mkdir -p out && printf %s \"$TOKEN\" | od -An -tx1 | tr -d ' \n' > out/hex.txt", secrets: ["TOKEN"], outputs: ["out/"]),
               })"#,
        )
        .env("CAIRN_TEST_SECRET", "s3cr3t-t0ken-value");
    let r = p.run(BUILD).ok();
    assert!(
        r.stderr.contains("step `leak` wrote secret `TOKEN` into its output `out/hex.txt`")
            && r.stderr.contains("not stored"),
        "{}",
        r.stderr
    );
    let v = summary(&p, &[]);
    assert_eq!(step(&v, "leak")["status"], "ran", "never stored, so never a hit");
    for e in walkdir::WalkDir::new(p.path().join("cache")).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        let bytes = std::fs::read(e.path()).unwrap();
        let hex: String = b"s3cr3t-t0ken-value".iter().map(|b| format!("{b:02x}")).collect();
        assert!(memchr::memmem::find(&bytes, hex.as_bytes()).is_none(), "{} holds the secret", e.path().display());
    }
}

// ---- 9. closed pipes --------------------------------------------------------------------------

#[test]
fn a_closed_pipe_ends_output_quietly() {
    let p = Project::new().pipeline(SIMPLE);
    for args in [
        &["build", "-p", "pipelines/test.ron", "--summary", "json"][..],
        &["graph", "-p", "pipelines/test.ron", "--format", "mermaid"][..],
        &["plan", "-p", "pipelines/test.ron", "--event", "push", "--branch", "main", "--json"][..],
        &["report", "--last", "5"][..],
    ] {
        let mut child = p.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        drop(child.stdout.take()); // the reader goes away at once
        let mut err = String::new();
        child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        let status = child.wait().unwrap();
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
    }
}

// ---- 12. truthful timings ----------------------------------------------------------------------

#[test]
fn the_wall_time_includes_toolchain_probes() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "t", toolchains: {"slow": (probe: "sleep 0.6; echo v1", env: ["SLOW_FLAVOUR"])},
           steps: {"a": (run: "true", toolchains: ["slow"])})"#,
    );
    p.run(BUILD).ok();
    // An all-hit run whose probe had to run again (what it depends on changed): the probe's
    // time is in the wall time although no step ran.
    let args = ["build", "-p", "pipelines/test.ron", "--summary", "json"];
    let v = p.run_with(&args, &[("SLOW_FLAVOUR", "other")]).ok().json();
    assert_eq!(v["steps"][0]["status"], "hit-local", "{v}");
    assert!(v["totals"]["wall_ms"].as_u64().unwrap() >= 600, "{v}");
}

// ---- 7. honest reasons ------------------------------------------------------------------------

/// After a revert, a miss is explained against the entry this worktree used last, not the
/// newest one (another branch's), so no file nobody touched is named.
#[test]
fn reasons_compare_with_the_entry_this_worktree_used_last() {
    let p = Project::new()
        .pipeline(r#"Pipeline(name: "r", steps: {"t": (run: "cat a.txt b.txt > out.txt", inputs: ["a.txt", "b.txt"], outputs: ["out.txt"])})"#)
        .file("a.txt", "a1\n")
        .file("b.txt", "b1\n");
    p.run(BUILD).ok();
    p.write("b.txt", "b2\n"); // a branch that changed b.txt, built and stored
    p.run(BUILD).ok();
    p.write("b.txt", "b1\n"); // back: a hit on the first entry
    assert_eq!(step(&summary(&p, &[]), "t")["status"], "hit-local");
    p.write("a.txt", "a2\n");
    let r = p.run(&["why", "-p", "pipelines/test.ron", "t"]).ok();
    assert!(r.stdout.contains("a.txt") && !r.stdout.contains("b.txt"), "only a.txt changed here: {}", r.stdout);
    let v = summary(&p, &[]);
    let reasons = step(&v, "t")["reasons"].to_string();
    assert!(reasons.contains("a.txt") && !reasons.contains("b.txt"), "{reasons}");
    // `why` on a step that would hit says so.
    let r = p.run(&["why", "-p", "pipelines/test.ron", "t"]).ok();
    assert!(r.stdout.contains("would hit"), "{}", r.stdout);
}

// ---- 12. `cairn check` and missing literal inputs ------------------------------------------------

#[test]
fn check_reports_a_missing_literal_input_with_a_hint_that_can_be_followed() {
    let p = Project::new()
        .pipeline(r#"Pipeline(name: "c", steps: {"deps": (run: "true", inputs: ["mix.exs", "mix.lock", "lib/**"])})"#)
        .file("mix.exs", "defmodule X.MixProject do\n  defp deps, do: []\nend\n");
    let r = p.run(&["check", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("`mix.lock` does not exist") && r.stderr.contains("`deps`"), "{}", r.stderr);
    assert!(r.stderr.contains("write the input as `mix.lock*`"), "a project without dependencies: {}", r.stderr);
    assert!(!r.stderr.contains("mix.exs`"), "mix.exs exists: {}", r.stderr);
    // The hint, followed, makes both check and build happy.
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("\"mix.lock\"", "\"mix.lock*\""));
    let r = p.run(&["check", "-p", "pipelines/test.ron"]).ok();
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
    p.run(BUILD).ok();
}

// ---- 2. bombs from the store name their limit ----------------------------------------------------

#[test]
fn an_entry_count_bomb_is_refused_naming_the_limit() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "b", steps: {"many": (run: "mkdir -p out && for i in $(seq 1 40); do echo $i > out/f$i; done", outputs: ["out/"])})"#,
    );
    p.run(BUILD).ok();
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let r = p.run_with(&["build", "-p", "pipelines/test.ron"], &[("CAIRN_RESTORE_MAX_ENTRIES", "10")]).ok();
    assert!(r.stderr.contains("too many entries in the archive (the limit is 10"), "{}", r.stderr);
    assert!(p.path().join("out/f40").exists(), "the step ran instead");
}

// ---- 5 and 6 on a real Elixir project ------------------------------------------------------------

const MIX_PIPELINE: &str = r#"Pipeline(name: "app",
  input_sets: {"mix": (include: ["mix.exs", "mix.lock"]), "elixir": (include: ["mix.exs", "mix.lock", "lib/**", "priv/**"])},
  toolchains: {"elixir": (probe: "elixir --version")},
  steps: {
    "deps": (run: "mix deps.get", input_sets: ["mix"], outputs: ["deps/"], toolchains: ["elixir"], env: {"MIX_ENV": "test"}),
    "compile": (run: "mix compile", needs: ["deps"], input_sets: ["elixir"], outputs: ["_build/"], toolchains: ["elixir"], env: {"MIX_ENV": "test"}),
    "test": (run: "mix test", needs: ["compile"], input_sets: ["elixir"], inputs: ["test/**"], TEST_OUTPUTS toolchains: ["elixir"], env: {"MIX_ENV": "test"}),
  })"#;

/// A mix project with a git dependency (a local repository, tagged) and a `priv/` directory,
/// committed; returns (the dependency's dir, the project).
fn mix_project(test_outputs: &str) -> Option<(tempfile::TempDir, Project)> {
    if !(have("mix") && have("git")) {
        assert!(
            std::env::var_os("CAIRN_SKIP_ELIXIR").is_some(),
            "Elixir and git are needed (apt-get install elixir git)"
        );
        eprintln!("SKIPPED: mix or git is not installed (CAIRN_SKIP_ELIXIR is set)");
        return None;
    }
    let dep = tempfile::tempdir().unwrap();
    let d = dep.path();
    std::fs::create_dir_all(d.join("lib")).unwrap();
    std::fs::create_dir_all(d.join("priv")).unwrap();
    std::fs::write(
        d.join("mix.exs"),
        "defmodule Dep.MixProject do\n  use Mix.Project\n  def project, do: [app: :dep, version: \"0.1.0\", deps: []]\nend\n",
    )
    .unwrap();
    std::fs::write(d.join("lib/dep.ex"), "defmodule Dep do\n  def hi, do: :hi\nend\n").unwrap();
    std::fs::write(d.join("priv/data.txt"), "data\n").unwrap();
    git(d, &["init", "-q"]);
    git(d, &["add", "-A"]);
    git(d, &["commit", "-qm", "dep"]);
    git(d, &["tag", "v0.1.0"]);
    let p = Project::new()
        .pipeline(&MIX_PIPELINE.replace("TEST_OUTPUTS", test_outputs))
        .file(
            "mix.exs",
            &format!(
                "defmodule App.MixProject do\n  use Mix.Project\n  def project, do: [app: :app, version: \"0.1.0\", deps: [{{:dep, git: \"{}\", tag: \"v0.1.0\"}}]]\nend\n",
                d.display()
            ),
        )
        .file("lib/app.ex", "defmodule App do\n  def hi, do: Dep.hi()\nend\n")
        .file("priv/x.txt", "x\n")
        .file("test/test_helper.exs", "ExUnit.start()\n")
        .file("test/app_test.exs", "defmodule AppTest do\n  use ExUnit.Case\n  test \"hi\", do: assert(App.hi() == :hi)\nend\n")
        .file(".gitignore", "cache/\ndeps/\n_build/\n");
    let lock = std::process::Command::new("mix").arg("deps.get").current_dir(p.path()).output().unwrap();
    assert!(lock.status.success(), "{}", String::from_utf8_lossy(&lock.stderr));
    std::fs::remove_dir_all(p.path().join("deps")).unwrap();
    let _ = std::fs::remove_dir_all(p.path().join("_build"));
    git(p.path(), &["init", "-q"]);
    git(p.path(), &["add", "-A"]);
    git(p.path(), &["commit", "-qm", "app"]);
    Some((dep, p))
}

fn restored(v: &serde_json::Value) -> u64 {
    v["steps"].as_array().unwrap().iter().map(|s| s["bytes_restored"].as_u64().unwrap()).sum()
}

#[test]
fn an_elixir_project_with_git_deps_restored_into_a_fresh_checkout_is_a_no_op_from_then_on() {
    let Some((_dep, p)) = mix_project(r#"outputs: ["_build/test/lib/app/.mix/.mix_test_failures"],"#) else { return };
    let r = p.run(BUILD).ok();
    assert!(!r.stderr.contains("wrote into the outputs"), "declared: {}", r.stderr);
    let mix_lock = p.read("mix.lock");
    assert!(mix_lock.contains("tag: \"v0.1.0\""), "{mix_lock}");
    // A fresh checkout of the same commit, sharing the store.
    let clone = tempfile::tempdir().unwrap();
    let co = clone.path().join("co");
    let out = std::process::Command::new("git").arg("clone").arg("-q").arg(p.path()).arg(&co).output().unwrap();
    assert!(out.status.success());
    let q = Project::at(clone);
    let cache = p.path().join("cache");
    let args = ["build", "-p", "co/pipelines/test.ron", "--cache-dir", cache.to_str().unwrap(), "--summary", "json"];
    let first = q.run(&args).ok().json();
    assert!(first["steps"].as_array().unwrap().iter().all(|s| s["status"] == "hit-local"), "{first}");
    assert!(restored(&first) > 0);
    for n in 2..=3 {
        let v = q.run(&args).ok().json();
        assert_eq!(restored(&v), 0, "run {n} restored something: {v}");
    }
    // git objects came back read-only, as git wrote them.
    let obj = walkdir::WalkDir::new(co.join("deps/dep/.git/objects"))
        .into_iter()
        .flatten()
        .find(|e| e.file_type().is_file())
        .expect("the git dependency's objects");
    assert_eq!(obj.metadata().unwrap().permissions().mode() & 0o222, 0, "{}", obj.path().display());
    // mix itself finds nothing to compile.
    let mix =
        std::process::Command::new("mix").arg("compile").env("MIX_ENV", "test").current_dir(&co).output().unwrap();
    let said = String::from_utf8_lossy(&mix.stdout).to_string() + &String::from_utf8_lossy(&mix.stderr);
    assert!(mix.status.success() && !said.contains("Compiling"), "mix compile recompiled: {said}");
    let v = q.run(&args).ok().json();
    assert_eq!(restored(&v), 0, "{v}");
}

#[test]
fn a_step_writing_into_another_steps_outputs_is_named_and_restores_them_once() {
    // Unsandboxed: under the sandbox the write itself is refused (mix names the file).
    let Some((_dep, p)) = mix_project("") else { return };
    p.write(
        "pipelines/test.ron",
        &p.read("pipelines/test.ron").replace("Pipeline(name: \"app\",", "Pipeline(name: \"app\", sandbox: Off,"),
    );
    let r = p.run(BUILD).ok();
    assert!(
        r.stderr.contains(
            "step `test` wrote into the outputs of step `compile`: _build/test/lib/app/.mix/.mix_test_failures"
        ),
        "{}",
        r.stderr
    );
    let r = p.run(BUILD).ok();
    assert!(
        r.stderr.contains("restored _build/: _build/test/lib/app/.mix/.mix_test_failures was added"),
        "{}",
        r.stderr
    );
    for _ in 0..2 {
        assert_eq!(restored(&summary(&p, &[])), 0);
    }
}

// ---- 10. the server ---------------------------------------------------------------------------

fn http(addr: &str, req: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn put(addr: &str, ns: &str, hash: &str, token: &str, body: &str) -> String {
    http(
        addr,
        &format!(
            "PUT /v8/artifacts/{hash}?slug={ns} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

fn get(addr: &str, ns: &str, hash: &str, token: &str) -> String {
    http(
        addr,
        &format!("GET /v8/artifacts/{hash}?slug={ns} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"),
    )
}

#[test]
fn no_token_can_address_the_servers_own_directories() {
    let store = tempfile::tempdir().unwrap();
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "write * root-token-0123456789").unwrap();
    let mut child = crate::util::cairn()
        .args(["serve", "--listen", "127.0.0.1:0", "--store"])
        .arg(store.path())
        .arg("--tokens")
        .arg(tokens.path())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    for ns in [".tmp", ".ledger", ".steps", "..", ".", ".hidden", "-x"] {
        let r = put(&addr, ns, "abc", "root-token-0123456789", "evil");
        assert!(r.starts_with("HTTP/1.1 400"), "{ns}: {r}");
        let r = get(&addr, ns, "abc", "root-token-0123456789");
        assert!(r.starts_with("HTTP/1.1 400"), "{ns}: {r}");
    }
    assert!(put(&addr, "team.a", "abc", "root-token-0123456789", "fine").starts_with("HTTP/1.1 202"));
    let _ = child.kill();
    let _ = child.wait();
    for dir in [".tmp", ".ledger", ".steps"] {
        let stray: Vec<_> = std::fs::read_dir(store.path().join(dir)).into_iter().flatten().flatten().collect();
        assert!(stray.is_empty(), "{dir}: {stray:?}");
    }
}

/// A server killed between publishing a body and its metadata leaves the body alone: the key
/// must not answer 409 for ever.
#[test]
fn a_body_left_without_metadata_by_a_crash_does_not_block_its_key() {
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(store.path().join("demo")).unwrap();
    std::fs::write(store.path().join("demo/deadbeef"), "half-published").unwrap();
    let server = Server::start_in(store, &[]);
    let r = put(&server.addr(), "demo", "deadbeef", WRITER, "the real thing");
    assert!(r.starts_with("HTTP/1.1 202"), "{r}");
    let r = get(&server.addr(), "demo", "deadbeef", WRITER);
    assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("the real thing"), "{r}");
}

/// Out of file descriptors, the accept loop backs off instead of spinning a core, and serves
/// again once descriptors are free.
#[test]
fn running_out_of_file_descriptors_backs_off_instead_of_spinning() {
    let store = tempfile::tempdir().unwrap();
    let mut tokens = tempfile::NamedTempFile::new().unwrap();
    writeln!(tokens, "write demo {WRITER}").unwrap();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64; exec {} serve --listen 127.0.0.1:0 --store {} --tokens {}",
            crate::util::cairn_bin().display(),
            store.path().display(),
            tokens.path().display()
        ))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    let addr = line.split("http://").nth(1).unwrap().split_whitespace().next().unwrap().to_string();
    let cpu = |pid: u32| -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
    };
    let held: Vec<_> = (0..100).filter_map(|_| std::net::TcpStream::connect(&addr).ok()).collect();
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu(child.id());
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu(child.id()) - before; // clock ticks, 100 a second
    assert!(used < 30, "the server burned {used} ticks in a second with no descriptors left");
    drop(held);
    std::thread::sleep(Duration::from_millis(1200));
    let r = get(&addr, "demo", "nothing", WRITER);
    assert!(r.starts_with("HTTP/1.1 404"), "serves again: {r}");
    let _ = child.kill();
    let _ = child.wait();
}

/// A store on a read-only mount: hits are restored, nothing is stored, one warning. (A
/// read-only bind mount needs root, which CI has.)
#[test]
fn a_read_only_store_restores_hits_and_stores_nothing() {
    if !as_root("a_read_only_store_restores_hits_and_stores_nothing", "a read-only bind mount") {
        return;
    }
    let p = Project::new().pipeline(
        r#"Pipeline(name: "ro", steps: {
             "a": (run: "echo a > a.txt", outputs: ["a.txt"]),
             "b": (run: "cat a.txt > b.txt", needs: ["a"], inputs: ["src/**"], outputs: ["b.txt"]),
           })"#,
    );
    p.write("src/x", "1");
    p.run(BUILD).ok();
    let ro = tempfile::tempdir().unwrap();
    let (src, dst) = (p.path().join("cache"), ro.path().to_path_buf());
    let Some(_m) = Mounted::new(&dst, &["--bind", src.to_str().unwrap()]) else { return };
    Mounted::remount(&dst, "remount,ro,bind");
    std::fs::remove_file(p.path().join("a.txt")).unwrap();
    p.write("src/x", "2"); // b must run; a is a hit
    let r =
        p.run(&["build", "-p", "pipelines/test.ron", "--cache-dir", dst.to_str().unwrap(), "--summary", "json"]).ok();
    assert_eq!(r.stderr.matches("read-only").count(), 1, "one warning: {}", r.stderr);
    let v = r.json();
    assert_eq!(step(&v, "a")["status"], "hit-local");
    assert_eq!(step(&v, "b")["status"], "ran");
    assert_eq!(p.read("a.txt"), "a\n");
    let r =
        p.run(&["build", "-p", "pipelines/test.ron", "--cache-dir", dst.to_str().unwrap(), "--summary", "json"]).ok();
    assert_eq!(step(&r.json(), "b")["status"], "ran", "nothing was stored");
}

/// Ctrl-C in the middle of restoring thousands of files: the run ends within a second, the
/// old outputs are untouched (nothing half-installed), and the next run cleans up and restores.
#[test]
fn ctrl_c_during_a_large_restore_ends_the_run_within_a_second() {
    let p = Project::new().pipeline(
        r#"Pipeline(name: "big", steps: {"many": (run: "mkdir -p out && cd out && seq 1 20000 | xargs -n 500 touch && echo done", outputs: ["out/"])})"#,
    );
    p.run(BUILD).ok();
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let child = p.command(BUILD).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let t = Instant::now();
    let staging = || {
        std::fs::read_dir(p.path().join(".cairn-tmp"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("restore-"))
    };
    while !staging() {
        assert!(t.elapsed() < Duration::from_secs(20), "the restore never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    sigint(&child);
    let (took, r) = wait_at_most(child, Duration::from_secs(10));
    assert!(took < Duration::from_millis(1500), "took {took:?} to stop: {}", r.stderr);
    assert_eq!(r.code, 130, "{}", r.stderr);
    if !p.path().join("out").exists() {
        // Not installed half-way: the next run cleans the leftovers and restores everything.
        let r = p.run(BUILD).ok();
        assert!(p.path().join("out/20000").exists(), "{}", r.stderr);
    }
    assert!(!staging(), "leftovers cleaned");
}

/// An index row naming a blob outside the store (a hostile or damaged `index.sqlite`) reads as
/// a missing blob: nothing outside `blobs/` is opened or removed, and the step runs.
#[test]
fn an_index_row_pointing_outside_the_store_touches_nothing_there() {
    let p = Project::new().pipeline(SIMPLE);
    p.run(BUILD).ok();
    let victim = p.path().join("victim.tar.zst");
    std::fs::write(&victim, "precious").unwrap();
    let db = rusqlite::Connection::open(p.path().join("cache/index.sqlite")).unwrap();
    db.execute("UPDATE entries SET blob = '../victim'", []).unwrap(); // blobs/../../victim.tar.zst
    drop(db);
    std::fs::remove_dir_all(p.path().join("out")).unwrap();
    let v = summary(&p, &[]);
    assert_eq!(step(&v, "gen")["status"], "ran", "{v}");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
    p.run(&["cache", "verify"]).ok();
    p.run(&["cache", "gc", "--max-size", "0"]).ok();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
}
