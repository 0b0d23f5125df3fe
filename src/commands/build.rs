//! `cairn build`: run steps, restoring unchanged ones from the store.

use super::{load_pipeline, open_store, project_root};
use crate::cli::{BuildArgs, SummaryFormat};
use crate::error::Error;
use crate::exec::{self, process, Build};
use crate::plan::Graph;
use crate::report;
use std::io::IsTerminal;

pub fn run(args: &BuildArgs) -> Result<(), Error> {
    let t_all = std::time::Instant::now();
    let p = load_pipeline(&args.pipeline.pipeline)?;
    let g = Graph::build(&p)?;
    exec::timing("load pipeline and graph", t_all);
    let root = project_root(&args.pipeline.pipeline);
    process::install_signal_handlers();
    // One build per workspace: a second one waits here (or fails with --no-wait).
    let _lock = exec::workspace::WorkspaceLock::acquire(&root, !args.no_wait, |who| {
        eprintln!("cairn: waiting for another build of this workspace to finish ({who})");
    })?;
    let cleaned = crate::cache::Worktree::clean_leftovers(&root);
    if cleaned > 0 {
        eprintln!("cairn: removed {cleaned} leftover(s) of an interrupted restore from .cairn-tmp/");
    }
    let (store, cache_dir) = open_store(&args.store, &root)?;
    exec::timing("open store", t_all);
    let targets: Vec<String> =
        if args.steps.is_empty() { p.steps.names().map(String::from).collect() } else { args.steps.clone() };
    let selected = g.closure(&targets)?;
    for f in &args.force {
        if !g.nodes.iter().any(|n| &n.name == f || &n.base == f) {
            return Err(Error::Usage(format!("error: --force names unknown step `{f}`")));
        }
    }
    let jobs = args.jobs.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2));
    let started_at = crate::cache::now_ms();
    let prefetch = exec::Prefetch::new(&g, &selected);
    // The outputs are fingerprinted on their own thread while the inputs are scanned.
    let selected_all = selected.clone();
    let (mut outcome, prepared, remote_trouble) = std::thread::scope(|s| -> Result<_, Error> {
        s.spawn(|| prefetch.run(&g, &root));
        let r = build_with(args, &p, &g, &root, &store, &cache_dir, selected, jobs, &prefetch, t_all);
        prefetch.stop(); // the prefetcher stops at its next step
        r
    })?;
    let unreproducible = match args.rebuild_sample {
        Some(fraction) if !outcome.interrupted => {
            rebuild_sample(fraction, &p, &g, &store, &root, &cache_dir, &prepared, &selected_all, &mut outcome)?
        }
        _ => Vec::new(),
    };
    finish(Finish { args, g: &g, store: &store, started_at, t_all, outcome, prepared, remote_trouble })?;
    if unreproducible.is_empty() {
        return Ok(());
    }
    Err(Error::StepFailed(format!(
        "error: not reproducible: {}\n  hint: `cairn verify --rebuild {}` shows every difference; `cairn cache quarantine {}` drops the entries",
        unreproducible.join(", "),
        unreproducible.join(" "),
        unreproducible.join(" ")
    )))
}

/// `--rebuild-sample FRACTION`: rebuild a random share of this build's hits and compare them
/// with their entries; each step found not reproducible gets a warning in the summary. Returns
/// their names.
#[allow(clippy::too_many_arguments)]
fn rebuild_sample(
    fraction: f64,
    p: &crate::model::Pipeline,
    g: &Graph,
    store: &crate::cache::Store,
    root: &std::path::Path,
    cache_dir: &std::path::Path,
    prepared: &exec::Prepared,
    selected: &[usize],
    outcome: &mut exec::BuildOutcome,
) -> Result<Vec<String>, Error> {
    if !(0.0..=1.0).contains(&fraction) {
        return Err(Error::Usage(format!("error: --rebuild-sample {fraction}: give a fraction from 0 to 1")));
    }
    let hits: Vec<usize> = selected
        .iter()
        .zip(&outcome.steps)
        .filter(|(_, r)| r.status == exec::Status::HitLocal || r.status == exec::Status::HitRemote)
        .map(|(&i, _)| i)
        .filter(|_| {
            let mut b = [0u8; 8];
            let _ = getrandom::fill(&mut b);
            (u64::from_le_bytes(b) as f64 / u64::MAX as f64) < fraction
        })
        .collect();
    if hits.is_empty() {
        return Ok(Vec::new());
    }
    eprintln!("cairn: rebuilding {} of {} hits to check they are reproducible", hits.len(), selected.len());
    let states = super::plan::predict(g, selected, prepared, store);
    let console = process::Console::new(false);
    // Verdicts go to stderr: stdout may carry the JSON summary.
    let verdicts = super::verify::check_and_say(p, g, store, root, cache_dir, prepared, &states, &hits, &console, true);
    let mut bad = Vec::new();
    for (i, v) in verdicts {
        if let exec::rebuild::Verdict::Differs(d) = v {
            let name = g.nodes[i].name.clone();
            if let Some(r) = outcome.steps.iter_mut().find(|r| r.name == name) {
                let first = d.first().and_then(|l| l.lines().next()).unwrap_or("outputs differ").to_string();
                r.warnings.push(format!("not reproducible: rebuilt differently ({first})"));
            }
            bad.push(name);
        }
    }
    Ok(bad)
}

/// Scan the inputs, then run the build.
#[allow(clippy::too_many_arguments)]
fn build_with(
    args: &BuildArgs,
    p: &crate::model::Pipeline,
    g: &Graph,
    root: &std::path::Path,
    store: &crate::cache::Store,
    cache_dir: &std::path::Path,
    selected: Vec<usize>,
    jobs: usize,
    prefetch: &exec::Prefetch,
    t_all: std::time::Instant,
) -> Result<(exec::BuildOutcome, exec::Prepared, bool), Error> {
    let mut prepared = exec::prepare_deferring_journal(p, g, &selected, root, store, cache_dir, jobs.max(2))?;
    let journal = prepared.pending_journal.take();
    let landlock = exec::sandbox::abi();
    let over = args.sandbox.map(crate::model::SandboxMode::from);
    let modes: Vec<_> =
        selected.iter().map(|&i| crate::model::SandboxMode::for_step(over, &g.nodes[i].step, p)).collect();
    let seccomp = modes.iter().any(|m| m.traces()) && exec::trace::available();
    if !args.require_sandbox {
        if landlock.is_none() && modes.iter().any(|m| m.enforces()) {
            eprintln!(
                "warning: this machine has no Landlock (Linux 5.13 or later with Landlock enabled): steps run unenforced, so a hit rests on declared inputs only\n  hint: --require-sandbox makes this an error"
            );
        }
        if !seccomp && modes.iter().any(|m| m.traces()) {
            eprintln!(
                "warning: this machine has no seccomp user notification (Linux 5.5 or later): undeclared reads and writes cannot be reported\n  hint: --require-sandbox makes this an error"
            );
        }
    }
    for w in &prepared.warnings {
        eprintln!("warning: {w}");
    }
    let mut console = process::Console::new(args.quiet);
    console.all_to_stderr = args.summary == SummaryFormat::Json;
    let remote = remote_client(&args.remote, p)?;
    let build = Build {
        pipeline: p,
        graph: g,
        root: root.to_path_buf(),
        store,
        selected,
        jobs,
        keep_going: args.keep_going,
        force: args.force.iter().cloned().collect(),
        console: &console,
        zstd_level: 3,
        remote: remote.clone(),
        prefetch: Some(prefetch),
        started: t_all,
        runner: &exec::runner::LocalProcess,
        share_unreproducible: args.share_unreproducible,
        sandbox_override: args.sandbox.map(Into::into),
        landlock,
        seccomp,
        require_sandbox: args.require_sandbox,
    };
    exec::timing("load and prepare", t_all);
    let t = std::time::Instant::now();
    // The scan journal is kept while the steps run (a one-file change should not wait for it).
    let (outcome, journal_warning) = std::thread::scope(|s| {
        let saver = s.spawn(|| exec::Prepared::save_journal(journal, store));
        let outcome = build.run(&prepared);
        (outcome, saver.join().ok().flatten())
    });
    if let Some(w) = journal_warning {
        eprintln!("warning: {w}");
    }
    exec::timing("dispatch", t);
    let mut remote_trouble = false;
    if let Some(r) = &remote {
        let t = std::time::Instant::now();
        let stats = r.flush();
        exec::timing("flush uploads", t);
        if stats.uploaded > 0 || stats.failed > 0 {
            eprintln!(
                "remote {}: uploaded {} entries ({}){}",
                r.url(),
                stats.uploaded,
                report::bytes(stats.bytes),
                if stats.failed > 0 { format!(", {} uploads failed", stats.failed) } else { String::new() }
            );
        }
        remote_trouble = r.is_down() || stats.failed > 0;
    }
    Ok((outcome, prepared, remote_trouble))
}

struct Finish<'a> {
    args: &'a BuildArgs,
    g: &'a Graph,
    store: &'a crate::cache::Store,
    started_at: i64,
    t_all: std::time::Instant,
    outcome: exec::BuildOutcome,
    prepared: exec::Prepared,
    remote_trouble: bool,
}

/// Record the run, print and write its summary, and turn its outcome into an exit status.
fn finish(f: Finish) -> Result<(), Error> {
    let Finish { args, g, store, started_at, t_all, mut outcome, prepared, remote_trouble } = f;
    exec::print_phases();
    // The wall time is the whole run's: loading, toolchain probes, hashing, the dispatch,
    // uploads (not only the dispatch).
    outcome.wall_ms = t_all.elapsed().as_millis() as u64;
    let t = std::time::Instant::now();
    let id = format!("{started_at}-{}", std::process::id());
    let summary = report::summarize(&id, &args.pipeline.pipeline.display().to_string(), started_at, &outcome, g);
    // Mask once; everything below (store, stdout, files, renderers) sees only the masked summary.
    let mut value = serde_json::to_value(&summary).expect("summaries serialise");
    prepared.masker.mask_json(&mut value);
    // The key manifests hold a path and a digest per input file of every step: freeing them
    // one by one costs a no-op build more than a millisecond, and the process ends next.
    std::mem::forget(prepared.manifests);
    let json = value.to_string();
    let summary: report::RunSummary = serde_json::from_value(value).expect("masking strings keeps the shape");
    if let Err(e) = store.save_run(&id, started_at, &summary.pipeline, &json) {
        eprintln!("warning: could not record the run: {e}");
    }
    let color = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    match args.summary {
        SummaryFormat::Table => eprint!("{}", report::table(&summary, color)),
        SummaryFormat::Json => println!("{}", serde_json::to_string_pretty(&summary).expect("json")),
        SummaryFormat::None => {}
    }
    if let Some(path) = &args.summary_file {
        if let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&summary).expect("json")) {
            eprintln!("warning: cannot write {}: {e}", path.display());
        }
    }
    if let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) {
        use std::io::Write;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(report::render::markdown(&summary).as_bytes()));
        if let Err(e) = written {
            eprintln!("warning: cannot append to GITHUB_STEP_SUMMARY: {e}");
        }
    }
    exec::timing("summary", t);
    exec::timing("total", t_all);
    if outcome.interrupted {
        return Err(Error::Interrupted);
    }
    if remote_trouble && args.remote.remote_required {
        return Err(Error::Io(
            "error: the remote cache failed and --remote-required is set\n  hint: see the warnings above; drop --remote-required to build with the local store alone".into(),
        ));
    }
    // A step that had to run without a secret it needs: the usage error it always was (a
    // fully cached run needs no secrets at all).
    if let Some(e) = outcome.steps.iter().find_map(|s| s.missing_secret.as_ref()) {
        return Err(Error::Usage(format!("error: {e}")));
    }
    let failed = outcome.failed();
    if !failed.is_empty() {
        let details: Vec<String> = outcome
            .steps
            .iter()
            .filter(|s| s.status == exec::Status::Failed)
            .map(|s| format!("`{}` ({})", s.name, s.detail.as_deref().unwrap_or("failed")))
            .collect();
        return Err(Error::StepFailed(format!(
            "error: step {} failed\n  hint: its log is above; fix it and run `cairn build` again (unchanged steps are restored)",
            details.join(", ")
        )));
    }
    Ok(())
}

/// The remote cache client from flags, environment and the pipeline, if one is configured.
pub fn remote_client(
    args: &crate::cli::RemoteArgs,
    p: &crate::model::Pipeline,
) -> Result<Option<std::sync::Arc<crate::cache::remote::Remote>>, Error> {
    let settings = p.remote.clone().unwrap_or_default();
    let Some(endpoint) = super::endpoint(&args.endpoint, p) else {
        if args.remote_required {
            return Err(Error::Usage(
                "error: --remote-required but no remote is configured\n  hint: pass --remote URL or set CAIRN_REMOTE"
                    .into(),
            ));
        }
        return Ok(None);
    };
    let trusted =
        crate::keys::Trusted::parse(&settings.trusted_keys).map_err(|e| Error::Usage(format!("error: {e}")))?;
    let signer = match &args.signing_key {
        None => None,
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("error: cannot read signing key {}: {e}", path.display())))?;
            Some(
                crate::keys::Secret::parse(&text)
                    .map_err(|e| Error::Usage(format!("error: {}: {e}", path.display())))?,
            )
        }
    };
    let cfg = crate::cache::remote::RemoteConfig {
        url: endpoint.url,
        token: endpoint.token,
        namespace: endpoint.namespace,
        trusted,
        signer,
        upload: !args.no_upload,
        connect_timeout: std::time::Duration::from_millis(800),
        // Envelopes and queries are tiny: a remote that can't answer in a second is down.
        read_timeout: std::time::Duration::from_millis(
            std::env::var("CAIRN_REMOTE_TIMEOUT_MS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        ),
    };
    crate::cache::remote::Remote::new(cfg).map(Some).map_err(|e| Error::Usage(format!("error: {e}")))
}
