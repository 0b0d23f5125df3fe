//! Issue 5: the S3-compatible backend, against a real S3-compatible server (moto) on
//! 127.0.0.1 that `.ci/run` installs: as `cairn serve`'s storage, and used by clients directly.

use super::remote::{statuses, Server};
use crate::util::Project;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto(bucket: &str) -> Option<Moto> {
    let bin = std::env::var("CAIRN_MOTO").unwrap_or_else(|_| "moto_server".into());
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = match Command::new(&bin)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
    {
        Ok(c) => c,
        Err(_) => {
            assert!(std::env::var_os("CAIRN_SKIP_S3").is_some(), "moto_server not found: pip install 'moto[server]'");
            eprintln!("SKIPPED: moto_server is not installed (CAIRN_SKIP_S3 is set)");
            return None;
        }
    };
    let m = Moto { child, endpoint: format!("http://127.0.0.1:{port}") };
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = reqwest::blocking::Client::new().put(format!("{}/{bucket}", m.endpoint)).send().unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());
    Some(m)
}

const PIPELINE: &str = r#"Pipeline(
  name: "demo",
  steps: {
    "gen": (run: "mkdir -p out && tr a-z A-Z < src/a.txt > out/a.txt", inputs: ["src/a.txt"], outputs: ["out/"]),
    "use": (run: "cat out/a.txt > all.txt", needs: ["gen"], outputs: ["all.txt"]),
  },
)"#;

fn aws(p: Project, m: &Moto) -> Project {
    p.env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", &m.endpoint)
}

#[test]
fn clients_share_an_s3_bucket_directly_write_once() {
    let Some(m) = moto("direct") else { return };
    let checkout = || {
        aws(Project::new().pipeline(PIPELINE).file("src/a.txt", "hi\n"), &m).env("CAIRN_REMOTE", "s3://direct/cache")
    };
    let a = checkout();
    let r = a.run(&["build", "-p", "pipelines/test.ron"]).ok();
    assert!(r.stderr.contains("uploaded 2 entries"), "{}", r.stderr);
    let b = checkout();
    let r = b.run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    assert_eq!(statuses(&r.stdout), ["gen:hit-remote", "use:hit-remote"], "{}", r.stderr);
    assert_eq!(b.read("all.txt"), "HI\n");
    // Write-once through conditional puts: a forced re-run uploads again and is refused quietly.
    let r = a.run(&["build", "-p", "pipelines/test.ron", "--force", "gen"]).ok();
    assert!(!r.stderr.contains("uploads failed") && r.stderr.contains("uploaded 1 entries"), "{}", r.stderr);
}

#[test]
fn cairn_serve_stores_artifacts_in_s3() {
    let Some(m) = moto("served") else { return };
    let env = [
        ("AWS_ACCESS_KEY_ID", "test"),
        ("AWS_SECRET_ACCESS_KEY", "test"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT_URL", m.endpoint.as_str()),
    ];
    let server = Server::start_with(tempfile::tempdir().unwrap(), &["--s3", "s3://served/turbo"], &env);
    let art = format!("{}/v8/artifacts/abc?slug=demo", server.url);
    let c = reqwest::blocking::Client::new();
    let put = |body: &'static str| {
        c.put(&art).bearer_auth("writer-token-0123456789").body(body).send().unwrap().status().as_u16()
    };
    assert_eq!(put("one"), 202);
    assert_eq!(put("one"), 202, "identical re-upload is a no-op");
    assert_eq!(put("two"), 409, "write-once on S3 via conditional put");
    let r = c.get(&art).bearer_auth("reader-token-0123456789").send().unwrap();
    assert_eq!(r.headers()["x-artifact-duration"], "0");
    assert_eq!(r.text().unwrap(), "one");
    let checkout = || {
        Project::new()
            .pipeline(PIPELINE)
            .file("src/a.txt", "hey\n")
            .env("CAIRN_REMOTE", &server.url)
            .env("CAIRN_TOKEN", "writer-token-0123456789")
    };
    checkout().run(&["build", "-p", "pipelines/test.ron"]).ok();
    let r = checkout().run(&["build", "-p", "pipelines/test.ron", "--summary", "json"]).ok();
    assert_eq!(statuses(&r.stdout), ["gen:hit-remote", "use:hit-remote"], "{}", r.stderr);
}
