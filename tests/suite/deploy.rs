//! Issue 7: gated, region-sequenced deploys, with a fake `flyctl` on PATH that records every
//! call (and the token it saw) and fails on demand, and health endpoints on 127.0.0.1.

use crate::util::Project;
use std::io::{Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

struct Fly {
    dir: tempfile::TempDir,
}

impl Fly {
    fn new(delay: &str) -> Fly {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("calls.log");
        let script = format!(
            "#!/bin/sh\necho \"$* token=${{FLY_API_TOKEN:-none}}\" >> '{}'\nfor a in \"$@\"; do [ -e '{}/fail-'\"$a\" ] && exit 1; done\nsleep {delay}\necho \"$*\" >> '{}'\nexit 0\n",
            log.display(),
            dir.path().display(),
            dir.path().join("finished.log").display()
        );
        std::fs::write(dir.path().join("flyctl"), script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir.path().join("flyctl"), std::fs::Permissions::from_mode(0o755)).unwrap();
        Fly { dir }
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(String::from)
            .collect()
    }
    fn fail(&self, arg: &str, on: bool) {
        let f = self.dir.path().join(format!("fail-{arg}"));
        if on {
            std::fs::write(f, "").unwrap();
        } else {
            let _ = std::fs::remove_file(f);
        }
    }
    fn path_env(&self) -> String {
        format!("{}:{}", self.dir.path().display(), std::env::var("PATH").unwrap())
    }
}

/// An HTTP server on 127.0.0.1 answering 200 to everything.
fn health_server() -> u16 {
    http_server("200 OK")
}

/// An HTTP server on 127.0.0.1 answering `status` to everything.
fn http_server(status: &'static str) -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut s in l.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let answer = format!("HTTP/1.1 {status}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
            let _ = s.write_all(answer.as_bytes());
        }
    });
    port
}

const TOKEN: &str = "fly-canary-9f8e7d6c5b4a";

fn pipeline(port: u16, extra_env: &str) -> String {
    format!(
        r#"Pipeline(name: "automata-signal",
  secrets: {{"FLY_API_TOKEN": Env("TEST_FLY_TOKEN")}},
  steps: {{"verify": (run: "echo ok > verified.txt", outputs: ["verified.txt"])}},
  environments: {{
    "production": (
      branches: ["main"],
      requires: ["verify"],
      approval: (reviewers: ["lead", "cto"], expires: "1h"),
      secrets: {{"FLY_API_TOKEN": Inherit}},
      regions: ["nrt", "fra", "syd"],
      deploy: "flyctl deploy --app {{app}}-{{region}} --config fly.prod.{{region}}.toml",
      health: (probe: Http("http://127.0.0.1:{port}/{{region}}/health"), retries: 2, interval: "50ms", timeout: "1s"),
      migration: (run: "flyctl ssh console --app {{app}}-nrt --command migrate", phase: AfterAll),
      rollback: "flyctl releases rollback --app {{app}}-{{region}}",
      lock_ttl: "1s",
      {extra_env}
    ),
  }},
)"#
    )
}

fn project(fly: &Fly, extra: &str) -> Project {
    let p = Project::new()
        .pipeline(&pipeline(health_server(), extra))
        .env("PATH", &fly.path_env())
        .env("TEST_FLY_TOKEN", TOKEN)
        .env("CAIRN_ACTOR", "deployer");
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    p
}

fn approve(p: &Project) {
    p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "lead", "--comment", "ship it"]).ok();
}

fn deploy(p: &Project, extra: &[&str]) -> crate::util::Run {
    let mut args = vec!["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"];
    args.extend_from_slice(extra);
    p.run(&args)
}

fn kinds(calls: &[String]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            c.split(" token=")
                .next()
                .unwrap()
                .split(" --config")
                .next()
                .unwrap()
                .replace("--app ", "")
                .replace(" --command migrate", "")
        })
        .collect()
}

#[test]
fn production_goes_region_by_region_then_migrates_once_and_the_token_stays_secret() {
    let fly = Fly::new("0");
    let p = project(&fly, "");
    approve(&p);
    let r = deploy(&p, &[]).ok();
    assert_eq!(
        kinds(&fly.calls()),
        [
            "deploy automata-signal-nrt",
            "deploy automata-signal-fra",
            "deploy automata-signal-syd",
            "ssh console automata-signal-nrt"
        ]
    );
    assert!(fly.calls().iter().all(|c| c.ends_with(&format!("token={TOKEN}"))), "FLY_API_TOKEN reached flyctl");
    let printed = r.stdout + &r.stderr;
    assert!(!printed.contains(TOKEN), "{printed}");
    for e in walkdir::WalkDir::new(p.path()).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        let b = std::fs::read(e.path()).unwrap();
        assert!(!String::from_utf8_lossy(&b).contains(TOKEN), "token in {}", e.path().display());
    }
    let h = p.run(&["deploy", "history", "production", "-p", "pipelines/test.ron"]).ok().stdout;
    assert!(h.contains("succeeded") && h.contains("by deployer"), "{h}");
    // The same release again: every region already runs it.
    deploy(&p, &[]).ok();
    assert_eq!(fly.calls().len(), 5, "only the migration ran again: {:?}", fly.calls());
}

#[test]
fn a_failing_region_halts_rolls_back_and_resume_continues_there() {
    let fly = Fly::new("0");
    let p = project(&fly, "");
    approve(&p);
    fly.fail("automata-signal-fra", true);
    let r = deploy(&p, &[]).code(1);
    assert!(r.stderr.contains("halted: deploy to fra failed"), "{}", r.stderr);
    assert_eq!(
        kinds(&fly.calls()),
        ["deploy automata-signal-nrt", "deploy automata-signal-fra", "releases rollback automata-signal-fra"],
        "syd untouched, fra rolled back, no migration"
    );
    let h = p.run(&["deploy", "history", "production", "-p", "pipelines/test.ron"]).ok().stdout;
    assert!(h.contains("halted") && h.contains("halt: deploy to fra failed"), "{h}");
    fly.fail("automata-signal-fra", false);
    let r = p.run(&["deploy", "resume", "production", "-p", "pipelines/test.ron", "--branch", "main"]).ok();
    assert!(r.stderr.contains("resuming run"), "{}", r.stderr);
    assert_eq!(
        kinds(&fly.calls())[3..],
        ["deploy automata-signal-fra", "deploy automata-signal-syd", "ssh console automata-signal-nrt"],
        "resumed at fra; nrt not redeployed"
    );
    // The halt stays on record after the resume, in order, with RFC 3339 times.
    let h = p.run_with(&["deploy", "history", "production", "-p", "pipelines/test.ron"], &[("TZ", "UTC")]).ok().stdout;
    let (halted, resumed, done) = (h.find("halted: deploy to fra failed"), h.find("resumed"), h.rfind("succeeded"));
    assert!(halted.is_some() && halted < resumed && resumed < done, "{h}");
    assert!(h.contains("T") && h.contains("Z  halted"), "RFC 3339 in the machine's zone: {h}");
    let h = p
        .run_with(&["deploy", "history", "production", "-p", "pipelines/test.ron"], &[("TZ", "Asia/Tokyo")])
        .ok()
        .stdout;
    assert!(h.contains("+09:00"), "{h}");
    let j = p.run(&["deploy", "history", "production", "-p", "pipelines/test.ron", "--json"]).ok().json();
    let events: Vec<&str> = j[0]["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(events, ["started", "halted", "resumed", "succeeded"], "{j}");
    assert_eq!(j[0]["result"], "succeeded");
    assert!(j[0]["events"][1]["detail"].as_str().unwrap().contains("deploy to fra failed"), "{j}");
}

#[test]
fn approvals_must_match_the_release_be_fresh_and_not_self_approved() {
    let fly = Fly::new("0");
    let p = project(&fly, "");
    let r = deploy(&p, &[]).code(5);
    assert!(
        r.stderr.contains("needs an approval") && r.stderr.contains("no approval for this release"),
        "{}",
        r.stderr
    );
    p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "lead", "--release", "0123456789abcdef"]).ok();
    let r = deploy(&p, &[]).code(5);
    assert!(r.stderr.contains("needs an approval"), "an approval of another release does not count: {}", r.stderr);
    p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "lead", "--expires", "1ms"]).ok();
    std::thread::sleep(Duration::from_millis(20));
    let r = deploy(&p, &[]).code(5);
    assert!(r.stderr.contains("expired"), "{}", r.stderr);
    let selfish = p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "cto"]);
    assert_eq!(selfish.code, 0);
    let r = p.run(&["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"]);
    assert_eq!(r.code, 0, "cto approved, deployer deploys: {}", r.stderr);
    // Self-approval refused: cto deploys with only cto's approval of a new release.
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("echo ok", "echo ok2"));
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "cto"]).ok();
    let mut cmd = crate::util::cairn();
    cmd.args(["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"])
        .current_dir(p.path())
        .env("PATH", fly.path_env())
        .env("TEST_FLY_TOKEN", TOKEN)
        .env("CAIRN_ACTOR", "cto");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not approve their own deploy"));
    // Branch policy.
    let r = p.run(&["deploy", "production", "-p", "pipelines/test.ron", "--branch", "feature/x"]).code(5);
    assert!(r.stderr.contains("deploys only from main"), "{}", r.stderr);
}

#[test]
fn a_freeze_is_refused_unless_broken_with_a_reason_which_history_shows() {
    let fly = Fly::new("0");
    let p = project(
        &fly,
        r#"freezes: [(from: "2020-01-01T00:00:00Z", until: "2099-01-01T00:00:00Z", reason: "audit season")],"#,
    );
    approve(&p);
    let r = deploy(&p, &[]).code(5);
    assert!(r.stderr.contains("closed for deploys: in a freeze (audit season)"), "{}", r.stderr);
    assert!(fly.calls().is_empty());
    deploy(&p, &["--break-glass", "sev1 hotfix"]).ok();
    assert_eq!(fly.calls().len(), 4);
    let h = p.run(&["deploy", "history", "production", "-p", "pipelines/test.ron"]).ok().stdout;
    assert!(h.contains("break-glass") && h.contains("sev1 hotfix"), "{h}");
}

#[test]
fn two_deploys_queue_and_a_killed_deploys_lease_expires() {
    let fly = Fly::new("0.3");
    let p = project(&fly, "");
    approve(&p);
    let spawn = || {
        crate::util::cairn()
            .args(["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"])
            .current_dir(p.path())
            .env("PATH", fly.path_env())
            .env("TEST_FLY_TOKEN", TOKEN)
            .env("CAIRN_ACTOR", "deployer")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn();
    std::thread::sleep(Duration::from_millis(400));
    let second = spawn();
    let a = first.wait_with_output().unwrap();
    let b = second.wait_with_output().unwrap();
    assert!(a.status.success() && b.status.success());
    assert!(
        String::from_utf8_lossy(&b.stderr).contains("waiting for the lease"),
        "{}",
        String::from_utf8_lossy(&b.stderr)
    );
    let k = kinds(&fly.calls());
    assert_eq!(
        k[..4],
        [
            "deploy automata-signal-nrt",
            "deploy automata-signal-fra",
            "deploy automata-signal-syd",
            "ssh console automata-signal-nrt"
        ],
        "the second waited its turn: {k:?}"
    );

    // A deploy killed mid-flight leaves a lease that expires (ttl 1s) instead of blocking forever.
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("echo ok", "echo v3"));
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    approve(&p);
    let mut victim = spawn();
    std::thread::sleep(Duration::from_millis(500));
    victim.kill().unwrap();
    let _ = victim.wait();
    let s = p.run(&["lock", "status", "production", "-p", "pipelines/test.ron"]).ok().stdout;
    assert!(s.contains("held by deployer") || s.contains("expired"), "{s}");
    let t = Instant::now();
    let r = p.run(&["deploy", "resume", "production", "-p", "pipelines/test.ron", "--branch", "main"]).ok();
    assert!(t.elapsed() < Duration::from_secs(20), "{}", r.stderr);
    let forced = p.run(&["lock", "release", "production", "-p", "pipelines/test.ron", "--force"]);
    assert_eq!(forced.code, 2, "--force needs a reason");
}

#[test]
fn ctrl_c_never_cuts_a_phase_midway_and_the_rollout_resumes_after_it() {
    let fly = Fly::new("1");
    let p = project(&fly, "");
    approve(&p);
    let child = crate::util::cairn()
        .args(["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"])
        .current_dir(p.path())
        .env("PATH", fly.path_env())
        .env("TEST_FLY_TOKEN", TOKEN)
        .env("CAIRN_ACTOR", "deployer")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fly.calls().is_empty() {
        assert!(Instant::now() < deadline, "the deploy never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let finished = std::fs::read_to_string(fly.dir.path().join("finished.log")).unwrap_or_default();
    assert!(finished.contains("automata-signal-nrt"), "nrt's deploy ran to its end: {finished:?}");
    assert_eq!(fly.calls().len(), 1, "fra was not started");
    let r = p.run(&["deploy", "resume", "production", "-p", "pipelines/test.ron", "--branch", "main"]).ok();
    assert!(r.stderr.contains("resuming run"), "{}", r.stderr);
    assert_eq!(
        kinds(&fly.calls())[1..],
        ["deploy automata-signal-fra", "deploy automata-signal-syd", "ssh console automata-signal-nrt"]
    );
}

#[test]
fn plan_decides_each_gate_now_and_names_the_release_to_approve() {
    let fly = Fly::new("0");
    let freezes = r#"freezes: [
        (from: "2020-01-01T00:00:00Z", until: "2099-01-01T00:00:00Z", reason: "audit season"),
        (from: "2020-01-01T00:00:00Z", until: "2020-02-01T00:00:00Z", reason: "long over"),
      ],"#;
    let p = project(&fly, freezes);
    let text = p.read("pipelines/test.ron").replace(
        "  environments: {",
        r#"  triggers: [(on: Push, branches: ["main"], run: ["verify"], deploy: [(branch: "main", environment: "production")])],
  environments: {"#,
    );
    p.write("pipelines/test.ron", &text);
    let plan = |branch: &str| {
        let r = p.run(&["plan", "-p", "pipelines/test.ron", "--event", "push", "--branch", branch, "--json"]).ok();
        let env = r.json()["environments"][0].clone();
        let gates: Vec<(String, String, String)> = env["gates"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| {
                let s = |k: &str| g[k].as_str().unwrap_or_default().to_string();
                (s("kind"), s("status"), s("detail"))
            })
            .collect();
        (env["release"].as_str().map(String::from), gates)
    };
    let (release, gates) = plan("main");
    let release = release.expect("every key is known: the release is named");
    let status: Vec<(&str, &str)> = gates.iter().map(|(k, s, _)| (k.as_str(), s.as_str())).collect();
    assert_eq!(
        status,
        [("branch", "open"), ("approval", "closed"), ("freeze", "closed"), ("freeze", "open")],
        "{gates:?}"
    );
    assert!(gates[1].2.contains(&release) && gates[1].2.contains("no approval for this release"), "{gates:?}");
    assert!(gates[2].2.contains("in effect now") && gates[3].2.contains("not in effect now"), "{gates:?}");

    // Approving the release the plan named opens the gate, and it is the release deploy uses.
    p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "lead", "--release", &release]).ok();
    let (_, gates) = plan("main");
    assert_eq!(gates[1].1, "open", "{gates:?}");
    assert!(gates[1].2.contains("approved by lead"), "{gates:?}");
    deploy(&p, &["--break-glass", "audit waived"]).ok();
    assert_eq!(fly.calls().len(), 4, "the approval of the planned release let the deploy through");

    // On another branch the branch gate is closed.
    let r = p.run(&["plan", "-p", "pipelines/test.ron", "--event", "push", "--branch", "feature/x"]).ok();
    assert!(r.stdout.contains("no trigger matches") || r.stdout.contains("closed"), "{}", r.stdout);
}

#[test]
fn signed_approvals_carry_a_reviewers_consent_to_ci_and_nothing_else_counts() {
    let fly = Fly::new("0");
    let p = project(&fly, "");
    let key = |name: &str| {
        let out = format!("{name}.key");
        p.run(&["keys", "generate", "--name", name, "--out", &out]).ok().stdout.trim().to_string()
    };
    let lead_pub = key("lead");
    key("cto");
    let text = p.read("pipelines/test.ron").replace(
        r#"approval: (reviewers: ["lead", "cto"], expires: "1h"),"#,
        &format!(r#"approval: (reviewers: ["lead", "cto"], expires: "1h", keys: ["{lead_pub}"]),"#),
    );
    p.write("pipelines/test.ron", &text);
    let r = p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "lead"]).code(5);
    assert!(r.stderr.contains("takes only signed approvals"), "{}", r.stderr);
    assert!(deploy(&p, &[]).code(5).stderr.contains("no signed approval"));

    let sign = |by: &str, keyfile: &str| {
        p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", by, "--sign", keyfile]).ok().stdout
    };
    let token = sign("lead", "lead.key").trim().to_string();
    assert!(token.starts_with("cairn-approval-v1."), "{token}");
    // A key that is not trusted, a token altered in transit, a key used for someone else.
    let r = deploy(&p, &["--approval", sign("cto", "cto.key").trim()]).code(5);
    assert!(r.stderr.contains("untrusted key `cto`"), "{}", r.stderr);
    let mut forged = token.clone().into_bytes();
    forged[25] = if forged[25] == b'A' { b'B' } else { b'A' };
    let r = deploy(&p, &["--approval", &String::from_utf8(forged).unwrap()]).code(5);
    assert!(r.stderr.contains("refused"), "{}", r.stderr);
    let r = p.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "cto", "--sign", "lead.key"]);
    assert!(r.code != 0 && r.stderr.contains("belongs to `lead`"), "{}", r.stderr);
    assert!(fly.calls().is_empty());

    // The real token, from the environment as CI passes it.
    let r = p.run_with(
        &["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"],
        &[("CAIRN_APPROVAL", &token)],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("signed approval of release"), "{}", r.stderr);
    assert_eq!(fly.calls().len(), 4);
    let all = format!("{}{}", r.stdout, r.stderr);
    assert!(!all.contains(&token), "the token is not echoed");
}

/// Requests a receiver got: path, headers, body.
type Received = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

/// A real HTTP receiver on 127.0.0.1: every request's path, headers and body, in arrival order.
fn webhook_receiver() -> (String, Received) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap_or(0);
            let path = line.split_whitespace().nth(1).unwrap_or_default().to_string();
            let (mut headers, mut len) = (String::new(), 0usize);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
                if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                    len = v.trim().parse().unwrap_or(0);
                }
                headers.push_str(&h);
            }
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body).ok();
            seen.lock().unwrap().push((path, headers, String::from_utf8_lossy(&body).into_owned()));
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok");
        }
    });
    (url, got)
}

#[test]
fn deploy_events_reach_a_real_webhook_and_metric_endpoint_in_order() {
    let fly = Fly::new("0");
    let (url, got) = webhook_receiver();
    let notify = format!(
        r#"notify: [Slack((url_secret: "SLACK_URL")), Metric((url: "{url}/api/v1/series", api_key_secret: "DD_KEY", tags: ["team:signal"]))],
      lock_ttl:"#
    );
    let p = project(&fly, "");
    let text = p
        .read("pipelines/test.ron")
        .replace(
            r#"secrets: {"FLY_API_TOKEN": Inherit},"#,
            r#"secrets: {"FLY_API_TOKEN": Inherit, "SLACK_URL": Env("TEST_SLACK_URL"), "DD_KEY": Env("TEST_DD_KEY")},"#,
        )
        .replace("lock_ttl:", &notify);
    p.write("pipelines/test.ron", &text);
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    let slack = format!("{url}/services/T000/B000/secret-hook-path");
    let hooks = [("TEST_SLACK_URL", slack.as_str()), ("TEST_DD_KEY", "dd-key-5e3f")];
    let deploy_args = ["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"];
    p.run_with(&deploy_args, &hooks).code(5);
    p.run_with(&["approve", "production", "-p", "pipelines/test.ron", "--by", "lead"], &hooks).ok();
    let r = p.run_with(&deploy_args, &hooks);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let got = got.lock().unwrap().clone();
    let slack_events: Vec<String> = got
        .iter()
        .filter(|(path, _, _)| path.starts_with("/services/"))
        .map(|(_, _, body)| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["event"].as_str().unwrap().to_string()
        })
        .collect();
    let first =
        |e: &str| slack_events.iter().position(|x| x == e).unwrap_or_else(|| panic!("no {e}: {slack_events:?}"));
    assert_eq!(slack_events[..4], ["awaiting-approval", "approved", "queued", "region-started"], "{slack_events:?}");
    assert!(first("region-started") < first("region-healthy"), "{slack_events:?}");
    assert!(first("region-healthy") < first("migration-done"), "{slack_events:?}");
    assert_eq!(slack_events.last().map(String::as_str), Some("finished"), "{slack_events:?}");
    assert_eq!(slack_events.iter().filter(|e| *e == "region-healthy").count(), 3, "{slack_events:?}");
    for (_, _, body) in got.iter().filter(|(p, _, _)| p.starts_with("/services/")) {
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert!(v["text"].as_str().is_some_and(|t| t.starts_with("[cairn]")), "Slack-compatible: {body}");
    }
    let metrics: Vec<&(String, String, String)> = got.iter().filter(|(p, _, _)| p == "/api/v1/series").collect();
    assert_eq!(metrics.len(), slack_events.len(), "one metric point per event");
    assert!(metrics[0].1.to_ascii_lowercase().contains("dd-api-key: dd-key-5e3f"), "{}", metrics[0].1);
    let tags = metrics[0].2.clone();
    assert!(tags.contains("environment:production") && tags.contains("team:signal"), "{tags}");
    let out = format!("{}{}", r.stdout, r.stderr);
    for secret in [TOKEN, "dd-key-5e3f", "secret-hook-path"] {
        assert!(!out.contains(secret), "{secret} leaked into cairn's output");
        assert!(got.iter().all(|(_, _, b)| !b.contains(secret)), "{secret} leaked into a notification");
    }
}

/// Two CI runners (separate checkouts and stores) sharing one `cairn serve`: one lease, the
/// approvals, the region state and the journal live on the server.
#[test]
fn runners_sharing_a_server_share_the_lease_approvals_and_journal() {
    let server = crate::suite::remote::Server::start(&[]);
    let fly = Fly::new("0.6");
    let text = pipeline(health_server(), "");
    let runner = |actor: &str| {
        let p = Project::new()
            .pipeline(&text)
            .env("PATH", &fly.path_env())
            .env("TEST_FLY_TOKEN", TOKEN)
            .env("CAIRN_ACTOR", actor)
            .env("CAIRN_REMOTE", &server.url)
            .env("CAIRN_TOKEN", crate::suite::remote::WRITER)
            .env("CAIRN_NAMESPACE", "demo");
        p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
        p
    };
    let (a, b) = (runner("runner-a"), runner("runner-b"));
    let local = [("CAIRN_REMOTE", "")];

    // An approval given on one machine opens the gate on another, and only through the server.
    a.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "lead"]).ok();
    let alone = b.run_with(&["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"], &local);
    assert_eq!(alone.code, 5, "without the server there is no approval: {}", alone.stderr);

    // Both deploy at once: one lease, so the second waits, then finds every region on the release.
    let spawn = |p: &Project| {
        p.command(&["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let first = spawn(&a);
    let t = Instant::now();
    let status = loop {
        let s = b.run(&["lock", "status", "production", "-p", "pipelines/test.ron"]).ok().stdout;
        if s.contains("held by") || t.elapsed() > Duration::from_secs(10) {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.contains("held by runner-a") && status.contains("shared ledger"), "{status}");
    let second = spawn(&b);
    let (ra, rb) = (first.wait_with_output().unwrap(), second.wait_with_output().unwrap());
    let rb_err = String::from_utf8_lossy(&rb.stderr);
    assert!(ra.status.success() && rb.status.success(), "{}\n{rb_err}", String::from_utf8_lossy(&ra.stderr));
    assert!(rb_err.contains("being deployed by runner-a; waiting for the lease"), "{rb_err}");
    assert!(rb_err.contains("nrt already runs release"), "region state is shared: {rb_err}");
    let deploys = kinds(&fly.calls()).iter().filter(|k| k.starts_with("deploy")).count();
    assert_eq!(deploys, 3, "each region deployed once: {:?}", fly.calls());

    // A new release halts at fra on runner A; runner B resumes it at fra from the shared journal.
    for p in [&a, &b] {
        p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("echo ok", "echo v2"));
        p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    }
    b.run(&["approve", "production", "-p", "pipelines/test.ron", "--by", "cto"]).ok();
    fly.fail("automata-signal-fra", true);
    let before = fly.calls().len();
    a.run(&["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"]).code(1);
    fly.fail("automata-signal-fra", false);
    let r = b.run(&["deploy", "resume", "production", "-p", "pipelines/test.ron", "--branch", "main"]).ok();
    assert!(r.stderr.contains("resuming run"), "{}", r.stderr);
    assert_eq!(
        kinds(&fly.calls())[before..],
        [
            "deploy automata-signal-nrt",
            "deploy automata-signal-fra",
            "releases rollback automata-signal-fra",
            "deploy automata-signal-fra",
            "deploy automata-signal-syd",
            "ssh console automata-signal-nrt"
        ],
        "resumed at fra on the other runner"
    );
    let h = a.run(&["deploy", "history", "production", "-p", "pipelines/test.ron"]).ok().stdout;
    assert_eq!(h.lines().filter(|l| !l.starts_with(' ') && l.contains("succeeded")).count(), 3, "{h}");
    assert!(h.contains("by runner-a") && h.contains("by runner-b"), "{h}");
    let h = a.run_with(&["deploy", "history", "production", "-p", "pipelines/test.ron"], &local).ok().stdout;
    assert!(h.contains("no deploys"), "nothing was kept locally: {h}");
    assert!(server.store.path().join(".ledger").is_dir());

    // A read token can look but not deploy; an unreachable server stops the deploy before it starts.
    let r = a.run_with(
        &["lock", "release", "production", "-p", "pipelines/test.ron", "--force", "--reason", "x"],
        &[("CAIRN_TOKEN", crate::suite::remote::READER)],
    );
    assert!(r.code != 0 && r.stderr.contains("HTTP 403"), "{}", r.stderr);
    let calls = fly.calls().len();
    let r = a.run_with(
        &["deploy", "production", "-p", "pipelines/test.ron", "--branch", "main"],
        &[("CAIRN_REMOTE", "http://127.0.0.1:9")],
    );
    assert!(r.code != 0 && r.stderr.contains("shared deploy ledger at http://127.0.0.1:9"), "{}", r.stderr);
    assert_eq!(fly.calls().len(), calls, "nothing deployed");
    assert!(!(r.stdout + &r.stderr).contains(TOKEN));
    // A remote that is a cache without a ledger (not cairn serve): deploy state stays local,
    // and cairn says so.
    let plain = format!("http://127.0.0.1:{}", http_server("404 Not Found"));
    let r = a.run_with(&["lock", "status", "production", "-p", "pipelines/test.ron"], &[("CAIRN_REMOTE", &plain)]).ok();
    assert!(
        r.stderr.contains("keeps no deploy ledger") || r.stderr.contains("without a deploy ledger"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.contains("production: free") && !r.stdout.contains("shared ledger"), "{}", r.stdout);
}

/// On a terminal, a closed approval gate asks for a reviewer there and then (under `script`,
/// a real pseudo-terminal): never the deployer, nothing entered leaves the gate closed.
#[test]
fn on_a_terminal_the_deploy_asks_a_reviewer_to_approve_it() {
    let fly = Fly::new("0");
    let p = project(&fly, "");
    let at_terminal = |answers: &str| {
        let cmd =
            format!("{} deploy production -p pipelines/test.ron --branch main", crate::util::cairn_bin().display());
        let mut child = Command::new("script")
            .args(["-qec", &cmd, "/dev/null"])
            .current_dir(p.path())
            .env_remove("CI")
            .env("PATH", fly.path_env())
            .env("TEST_FLY_TOKEN", TOKEN)
            .env("CAIRN_ACTOR", "lead")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("script(1) from util-linux");
        child.stdin.take().unwrap().write_all(answers.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stdout).replace('\r', ""))
    };
    // Nothing entered: the gate stays closed.
    let (code, tty) = at_terminal("\n");
    assert_eq!(code, Some(5), "{tty}");
    assert!(tty.contains("needs an approval of release") && tty.contains("reviewer approving (cto)"), "{tty}");
    assert!(fly.calls().is_empty());
    // The deployer can't approve their own deploy; another reviewer at the keyboard can.
    let (code, tty) = at_terminal("lead\ncto\ny\nlooks good\n");
    assert_eq!(code, Some(0), "{tty}");
    assert!(tty.contains("lead may not approve their own deploy"), "{tty}");
    assert!(tty.contains("approved by cto at the prompt (valid 1h)"), "{tty}");
    assert!(tty.contains("gate: approved by cto (looks good)"), "{tty}");
    assert_eq!(fly.calls().len(), 4, "{:?}", fly.calls());
    assert!(!tty.contains(TOKEN));
    // Not a terminal (CI): no prompt, the gate just says what to do.
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("echo ok", "echo v2"));
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    let r = deploy(&p, &[]).code(5);
    assert!(!r.stderr.contains("reviewer approving") && r.stderr.contains("hint: cairn approve"), "{}", r.stderr);
}

/// A canary by share of traffic: every region gets the release, then `shift` sends 10%, 50%
/// and 100% of traffic to it, each checked and baked. A failing share moves traffic back to 0%
/// and a resume climbs again from the first share, without redeploying the regions.
#[test]
fn a_traffic_canary_widens_share_by_share_and_a_failing_share_moves_traffic_back() {
    let fly = Fly::new("0");
    let canary = r#"strategy: Canary((bake: "50ms", shares: [10, 50], shift: "flyctl traffic --app {app} --release {release} --share {share}")),
      lock_ttl:"#;
    let p = project(&fly, "");
    let text = p.read("pipelines/test.ron").replace("lock_ttl:", canary);
    p.write("pipelines/test.ron", &text.replace("--command migrate", "--command migrate --release {release}"));
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    approve(&p);
    fly.fail("50", true);
    let r = deploy(&p, &[]).code(1);
    assert!(
        r.stderr.contains("halted: the canary at 50% failed") && r.stderr.contains("moved back to 0%"),
        "{}",
        r.stderr
    );
    let shares = |calls: &[String]| -> Vec<String> {
        kinds(calls)
            .iter()
            .map(|c| format!("{}{}", c.split(" --release ").next().unwrap(), c.split(" --share").nth(1).unwrap_or("")))
            .collect()
    };
    assert_eq!(
        shares(&fly.calls()),
        [
            "deploy automata-signal-nrt",
            "deploy automata-signal-fra",
            "deploy automata-signal-syd",
            "traffic automata-signal 10",
            "traffic automata-signal 50",
            "traffic automata-signal 0",
        ],
        "regions first, then shares; the failing share sends traffic back; no migration"
    );
    assert!(fly.calls()[3].contains("--release ") && !fly.calls()[3].contains("<release>"), "{:?}", fly.calls());
    fly.fail("50", false);
    let before = fly.calls().len();
    let r = p.run(&["deploy", "resume", "production", "-p", "pipelines/test.ron", "--branch", "main"]).ok();
    assert!(r.stderr.contains("resuming run"), "{}", r.stderr);
    assert_eq!(
        shares(&fly.calls()[before..]),
        [
            "traffic automata-signal 10",
            "traffic automata-signal 50",
            "traffic automata-signal 100",
            "ssh console automata-signal-nrt"
        ],
        "resumed from the first share; the regions were not deployed again"
    );
    let migrate = fly.calls().last().cloned().unwrap();
    assert!(migrate.contains("migrate --release ") && !migrate.contains("<release>"), "{migrate}");
    // Shares must rise, and a share needs a shift command.
    let bad = p.read("pipelines/test.ron").replace("shares: [10, 50]", "shares: [50, 10]");
    p.write("pipelines/test.ron", &bad);
    let r = p.run(&["check", "-p", "pipelines/test.ron"]).code(3);
    assert!(r.stderr.contains("must rise strictly between 1 and 99"), "{}", r.stderr);
}

/// Blue-green: green is deployed and checked region by region, traffic switches, every region
/// is checked again; blue keeps running, so `cairn rollback` (and a failed switch) moves
/// traffic straight back instead of redeploying.
#[test]
fn blue_green_switches_traffic_and_rolls_back_by_switching_back() {
    let fly = Fly::new("0");
    let bg = r#"strategy: BlueGreen((switch: "flyctl ips switch --app {app} --to green", switch_back: "flyctl ips switch --app {app} --to blue")),
      lock_ttl:"#;
    let p = project(&fly, "");
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("lock_ttl:", bg));
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    approve(&p);
    deploy(&p, &[]).ok();
    let green = [
        "deploy automata-signal-nrt",
        "deploy automata-signal-fra",
        "deploy automata-signal-syd",
        "ips switch automata-signal --to green",
    ];
    assert_eq!(kinds(&fly.calls()), [&green[..], &["ssh console automata-signal-nrt"]].concat());
    p.run(&["rollback", "production", "-p", "pipelines/test.ron"]).ok();
    assert_eq!(kinds(&fly.calls())[5..], ["ips switch automata-signal --to blue"], "one switch, no redeploys");

    // A failing switch goes straight back to blue; no migration.
    p.write("pipelines/test.ron", &p.read("pipelines/test.ron").replace("echo ok", "echo v2"));
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    approve(&p);
    fly.fail("green", true);
    let r = deploy(&p, &[]).code(1);
    assert!(
        r.stderr.contains("switching traffic failed") && r.stderr.contains("switched back to blue"),
        "{}",
        r.stderr
    );
    assert_eq!(kinds(&fly.calls())[6..], [&green[..], &["ips switch automata-signal --to blue"]].concat());
}
