//! Snapshots (insta) of what people and machines read: `cairn plan` as text and JSON, the
//! build table, and the shape of the run summary. Digests, durations, ids and temporary paths
//! are redacted, so a snapshot changes only when the output's form does. Review a change with
//! `cargo insta review` (or accept it with `INSTA_UPDATE=always cargo test`).

use crate::util::Project;

/// Replace what differs between runs: hex digests (12+ characters), durations, run ids and
/// the project's temporary path.
fn redact(text: &str, tmp: &std::path::Path) -> String {
    let text = text.replace(&tmp.display().to_string(), "<tmp>");
    let mut out = String::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let word_start = i == 0 || !chars[i - 1].is_ascii_alphanumeric();
        if word_start && c.is_ascii_hexdigit() {
            let mut j = i;
            while j < chars.len() && chars[j].is_ascii_hexdigit() {
                j += 1;
            }
            let word_end = j == chars.len() || !chars[j].is_ascii_alphanumeric();
            if word_end && j - i >= 12 && chars[i..j].iter().any(|c| c.is_ascii_alphabetic()) {
                out.push_str("<hex>");
                i = j;
                continue;
            }
        }
        if word_start && c.is_ascii_digit() {
            let mut j = i;
            while j < chars.len() && (chars[j].is_ascii_digit() || chars[j] == '.') {
                j += 1;
            }
            let rest: String = chars[j..chars.len().min(j + 2)].iter().collect();
            let unit = if rest == "ms" {
                Some(2)
            } else if rest.starts_with('s') && rest.chars().nth(1).is_none_or(|c| !c.is_ascii_alphanumeric()) {
                Some(1)
            } else if j - i >= 10 && chars[i..j].iter().all(|c| c.is_ascii_digit()) {
                Some(0) // a timestamp or run id
            } else {
                None
            };
            if let Some(u) = unit {
                out.push_str("<t>");
                i = j + u;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

/// Every value replaced by its type (keys kept), arrays by their first element: the shape a
/// consumer of `--summary json` relies on.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(a) => Value::Array(a.first().map(shape).into_iter().collect()),
        Value::String(_) => Value::String("string".into()),
        Value::Number(_) => Value::String("number".into()),
        Value::Bool(_) => Value::String("bool".into()),
        Value::Null => Value::Null,
    }
}

const PIPELINE: &str = r#"Pipeline(
  name: "snap",
  steps: {
    "deps": (run: "mkdir -p deps && echo d > deps/d.txt", inputs: ["mix.lock"], outputs: ["deps/"]),
    "compile": (run: "cat deps/d.txt src/a.ex > app.txt", needs: ["deps"], inputs: ["src/**"], outputs: ["app.txt"]),
    "test": (run: "cat app.txt", needs: ["compile"], inputs: ["test/**"]),
    "migrate": (run: "true", needs: ["compile"], cache: false),
  },
  triggers: [
    (on: Push, branches: ["main"], run: ["test"], deploy: [(branch: "main", environment: "production")]),
    (on: PullRequest, run: ["test"]),
  ],
  environments: {
    "production": (
      branches: ["main"],
      requires: ["test", "migrate"],
      approval: (reviewers: ["lead"], expires: "12h"),
      regions: ["nrt", "fra"],
      deploy: "flyctl deploy --app {app}-{region}",
      health: (probe: Http("https://{app}-{region}.example/health"), retries: 3, interval: "5s", timeout: "2s"),
      migration: (run: "flyctl ssh console --app {app}-nrt -C migrate", phase: AfterAll),
    ),
  },
)"#;

fn project() -> Project {
    Project::new()
        .pipeline(PIPELINE)
        .file("mix.lock", "%{}\n")
        .file("src/a.ex", "defmodule A do end\n")
        .file("test/a_test.exs", "# test\n")
}

#[test]
fn plan_text_and_json() {
    let p = project();
    let args = ["plan", "-p", "pipelines/test.ron", "--event", "push", "--branch", "main"];
    let text = p.run(&args).ok().stdout;
    insta::assert_snapshot!("plan_push_main_text", redact(&text, p.path()));
    let mut json_args = args.to_vec();
    json_args.push("--json");
    let json = p.run(&json_args).ok().stdout;
    insta::assert_snapshot!("plan_push_main_json", redact(&json, p.path()));
    let pr = p.run(&["plan", "-p", "pipelines/test.ron", "--event", "pull_request", "--branch", "main"]).ok().stdout;
    insta::assert_snapshot!("plan_pull_request_text", redact(&pr, p.path()));
}

/// Columns are padded to their widest value, which redaction changes: runs of spaces are
/// folded so the snapshot shows the columns, not the widths of this run's durations.
/// The command lines of steps that run at once come in either order: only the table is kept.
fn fold_spaces(text: &str) -> String {
    // The kernel's Landlock version is the machine's, not the output's form.
    let abi = cairn::exec::sandbox::abi().map(|a| format!("(ABI {a})")).unwrap_or_default();
    let text = if abi.is_empty() { text.to_string() } else { text.replace(&abi, "(ABI <n>)") };
    text.lines()
        .filter(|l| !l.starts_with('['))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn build_table_cold_then_warm() {
    let p = project();
    let args = ["build", "-q", "-p", "pipelines/test.ron"];
    let cold = p.run(&args).ok().stderr;
    insta::assert_snapshot!("build_table_cold", fold_spaces(&redact(&cold, p.path())));
    let warm = p.run(&args).ok().stderr;
    insta::assert_snapshot!("build_table_warm", fold_spaces(&redact(&warm, p.path())));
}

#[test]
fn run_summary_json_shape() {
    let p = project();
    p.run(&["build", "-q", "-p", "pipelines/test.ron"]).ok();
    let v = p.run(&["build", "-q", "-p", "pipelines/test.ron", "--summary", "json"]).ok().json();
    let text = serde_json::to_string_pretty(&shape(&v)).unwrap();
    insta::assert_snapshot!("run_summary_shape", text);
}
