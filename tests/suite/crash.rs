//! Crash safety: `cairn build` killed with SIGKILL at random moments, 100 times, while it
//! runs a step and stores its outputs. Afterwards `cairn cache verify` is clean and every
//! entry that was committed restores exactly the bytes that step produced.

use crate::util::Project;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PIPELINE: &str = r#"Pipeline(
  name: "crash",
  steps: {
    "gen": (
      run: "mkdir -p out/deep && N=$(cat src/n.txt) && for i in $(seq 200); do echo \"$N $i\" > out/deep/f$i; done && yes \"$N\" | head -c 1500000 > out/big && echo cairn-crash-marker",
      inputs: ["src/n.txt"],
      outputs: ["out/"],
    ),
  },
)"#;

fn build(p: &Project) -> std::process::Child {
    crate::util::cairn()
        .args(["build", "-q", "-p", "pipelines/test.ron"])
        .current_dir(p.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn expect_outputs(p: &Project, n: u32) {
    assert_eq!(p.read("out/deep/f1"), format!("{n} 1\n"), "iteration {n}");
    assert_eq!(p.read("out/deep/f200"), format!("{n} 200\n"), "iteration {n}");
    let big = std::fs::read(p.path().join("out/big")).unwrap();
    assert_eq!(big.len(), 1_500_000, "iteration {n}");
    assert!(big.starts_with(format!("{n}\n").as_bytes()), "iteration {n}");
}

#[test]
fn kill_9_during_store_never_leaves_a_corrupt_entry() {
    let p = Project::new().pipeline(PIPELINE).file("src/n.txt", "0");
    // Measure uninterrupted builds (the slowest of three, since other tests load the machine)
    // so kills spread over the whole run, commit included. The first build creates the store
    // (index, migrations) and is not one of them: it is slower than every later build.
    p.write("src/n.txt", "warmup first");
    assert!(build(&p).wait().unwrap().success());
    let mut full = Duration::from_millis(50);
    for n in 0..3 {
        p.write("src/n.txt", &format!("warmup {n}"));
        let t = Instant::now();
        assert!(build(&p).wait().unwrap().success());
        full = full.max(t.elapsed());
    }
    let mut rng: u64 = 0x2545_f491_4f6c_dd1d;
    let mut killed_mid_run = 0;
    for n in 1..=100u32 {
        p.write("src/n.txt", &n.to_string());
        let mut child = build(&p);
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = full.mul_f64((rng % 1000) as f64 / 1000.0 * 1.5);
        std::thread::sleep(delay);
        if child.try_wait().unwrap().is_none() {
            killed_mid_run += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        // The step's shell dies with cairn (PR_SET_PDEATHSIG); make sure before going on.
        let _ = Command::new("pkill").args(["-9", "-f", "cairn-crash-marker"]).status();
        let v = p.run(&["cache", "verify", "--cache-dir", "cache"]);
        assert_eq!(v.code, 0, "verify after kill {n}: {}{}", v.stdout, v.stderr);
    }
    assert!(killed_mid_run >= 25, "most kills should land while cairn runs (got {killed_mid_run})");
    // Every committed entry restores exactly what its run produced; the others run again.
    let mut hits = 0;
    for n in (1..=100u32).step_by(3) {
        p.write("src/n.txt", &n.to_string());
        let _ = std::fs::remove_dir_all(p.path().join("out"));
        let r = p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
        if r.stderr.contains("hit-local") {
            hits += 1;
        }
        expect_outputs(&p, n);
    }
    assert!(hits > 0, "some killed runs had committed their entry before the kill");
    p.run(&["cache", "gc", "--cache-dir", "cache", "--max-size", "10GiB"]).ok();
    let tmp_left = std::fs::read_dir(p.path().join("cache/tmp")).unwrap().count();
    assert_eq!(tmp_left, 0, "gc removes what killed runs left in tmp/");
}
