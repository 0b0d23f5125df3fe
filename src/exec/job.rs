//! One step on a worker: complete its key, look it up (locally, then remotely), restore the
//! entry or run the command, check what it did (inputs unchanged, outputs produced, no secret
//! in them, nothing written into other steps' outputs), pack and commit.

use super::*;
use std::path::{Path, PathBuf};

impl Job<'_> {
    /// Remember outputs this job wrote whose fingerprint was recorded racy.
    fn unsettled(&self, settles: Option<i64>, outputs_digest: &str) {
        if let Some(at) = settles {
            self.unsettled.lock().unwrap_or_else(|p| p.into_inner()).push((self.node, outputs_digest.into(), at));
        }
    }

    pub(super) fn execute(&self) -> StepReport {
        let b = self.build;
        let node = &b.graph.nodes[self.node];
        let t = Instant::now();
        let key = self.manifest.key();
        phase(0, t);
        let start_ms = self.t0.elapsed().as_millis() as u64;
        let mut report = StepReport {
            name: node.name.clone(),
            key: Some(key.clone()),
            status: Status::Ran,
            reasons: vec![],
            detail: None,
            duration_ms: 0,
            saved_ms: 0,
            bytes_restored: 0,
            bytes_stored: 0,
            start_ms,
            end_ms: start_ms,
            worker: self.worker,
            warnings: vec![],
            contribution: None,
            missing_secret: None,
            sandbox: None,
            undeclared: vec![],
        };
        let has_outputs = !node.step.outputs.is_empty();
        let prefix = format!("[{}]", node.name);
        let mut pending = None;
        if !node.step.cache {
            report.reasons.push(DirtyReason::NotCacheable);
        } else {
            use crate::cache::{EntryStore, Found};
            let t = Instant::now();
            let forced = b.is_forced(self.node);
            // Local, then remote (a forced step is run whatever is stored: no remote fetch).
            let tiers = crate::cache::tiered::Tiered {
                local: b.store,
                remote: if forced { None } else { b.remote.as_deref() },
                root: &b.root,
            };
            let found = tiers.find(&node.name, &key, &self.manifest, &b.root);
            phase(1, t);
            match found {
                Err(e) => {
                    b.console.note(&format!("warning: {}: store lookup failed, running the step: {e}", node.name));
                    report.warnings.push(format!("store lookup failed: {e}"));
                    report.reasons.push(DirtyReason::StoreError { detail: e.to_string() });
                }
                Ok(Found::Hit { .. }) if forced => {
                    report.reasons.push(DirtyReason::Forced);
                    pending = Some(b.store.pending_forced(&node.name, self.manifest.clone().into_owned()));
                }
                Ok(Found::Hit { entry, remote }) => {
                    let status = if remote { Status::HitRemote } else { Status::HitLocal };
                    match self.restore_hit(&entry, &mut report, status, &prefix) {
                        Ok(()) => {
                            report.reasons.clear();
                            return report;
                        }
                        Err(_) if process::interrupted() => {
                            report.status = Status::Cancelled;
                            report.detail = Some("interrupted".into());
                            return report;
                        }
                        Err(e) => {
                            report.reasons.push(DirtyReason::Corrupt { detail: e.clone() });
                            b.console
                                .note(&format!("warning: {}: stored entry unusable, running again: {e}", node.name));
                            match b.store.lookup(&node.name, &key, &self.manifest) {
                                Ok(Lookup::Miss(p, _)) => pending = Some(p),
                                _ => report.warnings.push("could not re-open the entry after dropping it".into()),
                            }
                        }
                    }
                }
                Ok(Found::Miss { pending: p, reasons, warnings }) => {
                    for w in warnings {
                        b.console.note(&format!("warning: {}: {w}; running the step", node.name));
                    }
                    report.reasons.extend(reasons);
                    if forced {
                        report.reasons.insert(0, DirtyReason::Forced);
                    }
                    pending = Some(p);
                }
            }
        }

        // Run it: only now are its secrets needed.
        if let Some(e) = node.step.secrets.iter().find_map(|s| self.prepared.secret_errors.get(s)) {
            report.status = Status::Failed;
            report.detail = Some(e.lines().next().unwrap_or("a secret is missing").to_string());
            report.missing_secret = Some(e.clone());
            report.end_ms = self.t0.elapsed().as_millis() as u64;
            return report;
        }
        let mut env = process::base_env(node.step.pass_env.iter().map(String::as_str));
        env.extend(node.env.clone());
        for s in &node.step.secrets {
            if let Some(v) = self.prepared.secret_values.get(s) {
                env.insert(s.clone(), v.clone());
            }
        }
        let Some(_slot) = self.slots.acquire() else {
            report.status = Status::Cancelled;
            report.detail = Some("interrupted".into());
            return report;
        };
        if let Some(p) = self.build.prefetch {
            p.wrote(self.node);
        }
        report.start_ms = self.t0.elapsed().as_millis() as u64;
        for svc in &node.step.services {
            match self.services.acquire(svc) {
                Ok(exports) => env.extend(exports),
                Err(e) => {
                    b.console.note(&format!("{prefix} {e}"));
                    report.status = Status::Failed;
                    report.detail = Some(e.lines().next().unwrap_or("service failed").to_string());
                    report.end_ms = self.t0.elapsed().as_millis() as u64;
                    return report;
                }
            }
        }
        // Outputs restored by hard link share their inodes with the store's unpacked copy: a
        // step rebuilding them in place must write private copies (see archive::linked).
        if has_outputs && b.store.dir().join("unpacked").is_dir() {
            let (outs, _) = archive::split_outputs(&node.outputs);
            let t = Instant::now();
            if let Err(e) = archive::linked::unshare(&b.root, &outs) {
                report.status = Status::Failed;
                report.detail = Some(format!("could not make its outputs private before it runs: {e}"));
                return report;
            }
            timing("unshare outputs", t);
        }
        let cwd = b.root.join(node.step.workdir.as_deref().unwrap_or("."));
        let mut policy = match self.sandbox_policy() {
            Ok(p) => p,
            Err(e) => {
                b.console.note(&format!("{prefix} error: {e}"));
                report.status = Status::Failed;
                report.detail = Some(e);
                report.end_ms = self.t0.elapsed().as_millis() as u64;
                return report;
            }
        };
        // A sandboxed step gets a temporary directory of its own, removed when it ends.
        let private_tmp = policy.as_ref().and_then(|_| {
            let dir = std::env::temp_dir().join(format!("cairn-step-{}", archive::unique()));
            std::fs::create_dir_all(&dir).ok().map(|()| dir)
        });
        if let Some(dir) = &private_tmp {
            env.insert("TMPDIR".into(), dir.display().to_string());
            if let Some(outside) = policy.as_mut().and_then(|p| p.outside.as_mut()) {
                outside.push(dir.clone());
            }
        }
        report.sandbox = Some(match &policy {
            Some(p) => match (p.enforce, p.trace, b.landlock) {
                (true, true, Some(abi)) => format!("strict (landlock ABI {abi} + seccomp)"),
                (true, false, Some(abi)) => format!("landlock (ABI {abi})"),
                (false, true, _) => "report (seccomp)".to_string(),
                _ => "off".to_string(),
            },
            None if self.sandbox_mode() != crate::model::SandboxMode::Off => "unavailable".to_string(),
            None => "off".to_string(),
        });
        let started_ns = inputs::now_ns();
        b.console.note(&format!("{prefix} $ {}", self.prepared.masker.mask(&node.run)));
        let cmd = runner::StepCommand {
            step: &node.name,
            command: &node.run,
            cwd: &cwd,
            env: &env,
            timeout: node.step.timeout.map(|d| d.0),
            prefix: &prefix,
            sandbox: policy.as_ref().map(|p| (b.root.as_path(), p)),
        };
        let outcome = b.runner.run(&cmd, b.console, &self.prepared.masker);
        report.end_ms = self.t0.elapsed().as_millis() as u64;
        if let Some(p) = &policy {
            p.unmake();
        }
        if let Some(dir) = &private_tmp {
            let _ = archive::remove_any(dir);
        }
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                report.status = Status::Failed;
                report.detail = Some(format!("could not start `sh -c`: {e}"));
                return report;
            }
        };
        report.duration_ms = outcome.duration.as_millis() as u64;
        if let (Some(p), Some(accesses)) = (&policy, &outcome.accesses) {
            report.undeclared = self.undeclared(p, accesses, private_tmp.as_deref());
            for f in &report.undeclared {
                let m = f.message(&node.name);
                b.console.note(&format!("{prefix} undeclared: {m}"));
                report.warnings.push(m);
            }
        }
        if policy.as_ref().is_some_and(|p| p.enforce && !p.trace)
            && !outcome.success()
            && outcome.exit != Exit::Interrupted
        {
            b.console.note(&format!(
                "{prefix} hint: the sandbox denies reads of undeclared files and writes outside the outputs; `cairn learn {}` names what the step needs",
                node.name
            ));
            // `rm -rf dist` before a build: the rule that makes `dist/` writable is on that
            // directory, so the step may empty it but not delete and re-make it.
            let err = String::from_utf8_lossy(&outcome.stderr);
            let removed = node.step.outputs.iter().filter(|o| o.ends_with('/')).find(|o| {
                let name = o.trim_end_matches('/').rsplit('/').next().unwrap_or("");
                err.lines().any(|l| l.contains("cannot remove") && l.contains(&format!("{name}'")))
            });
            if let Some(o) = removed {
                let o = o.trim_end_matches('/');
                // As the step's command names it: relative to its working directory.
                let wd = node.step.workdir.as_deref().map(|w| format!("{}/", w.trim_end_matches('/')));
                let shown = wd.as_deref().and_then(|w| o.strip_prefix(w)).unwrap_or(o);
                b.console.note(&format!(
                    "{prefix} hint: under the sandbox a step may empty its output directory `{o}/` but not delete it: write `rm -rf {shown}/*` instead of `rm -rf {shown}`, or give the step `sandbox: Off`"
                ));
            }
        }
        match &outcome.exit {
            Exit::Code(0) => {}
            Exit::Interrupted => {
                report.status = Status::Cancelled;
                report.detail = Some("interrupted".into());
                return report;
            }
            other => {
                report.status = Status::Failed;
                report.detail = Some(match other {
                    Exit::Code(c) => format!("exited with status {c}"),
                    Exit::Signal(s) => format!("killed by signal {s}"),
                    Exit::TimedOut => {
                        format!("timed out after {}", node.step.timeout.map(|d| d.to_string()).unwrap_or_default())
                    }
                    Exit::Interrupted => unreachable!("handled above"),
                });
                return report;
            }
        }
        report.contribution = Some(Upstream::Key(key.clone()));
        if !policy.as_ref().is_some_and(|p| p.trace) {
            // Traced, such writes were named already, one by one.
            self.foreign_writes(&mut report, started_ns);
        }
        if report.undeclared.iter().any(|f| f.blocks_store()) {
            let w = "not stored: it read what it did not declare, so no hit may rest on it (declare it, or run `cairn learn`)".to_string();
            b.console.note(&format!("warning: {}: {w}", node.name));
            report.warnings.push(w);
            return report;
        }
        let Some(pending) = pending else {
            return report;
        };
        if b.store.is_read_only() {
            return report; // said once when the store was opened
        }
        if has_outputs && !node.step.secrets.is_empty() {
            if let Some(refused) = self.secret_in_outputs(&mut report) {
                if refused {
                    return report;
                }
            }
        }
        // Inputs must not have changed while the step ran.
        let t = Instant::now();
        let inputs = &self.prepared.inputs[&self.node];
        // Only the part of the tree its globs reach: a change costs what it changes.
        let bases = inputs::walk_bases(&inputs.include);
        let rescan =
            inputs::scan_within(&self.prepared.walk, std::slice::from_ref(inputs), &Default::default(), &bases)
                .and_then(|mut a| {
                    inputs::add_untracked(&b.root, std::slice::from_ref(inputs), &mut a.per_step).map(|()| a)
                });
        match rescan {
            Ok(after) if after.per_step[0] != self.manifest.inputs => {
                let changed = changed_paths(&self.manifest.inputs, &after.per_step[0]);
                let w = format!("inputs changed while the step ran ({}); the result is not stored", changed.join(", "));
                b.console.note(&format!("warning: {}: {w}", node.name));
                report.warnings.push(w);
                return report;
            }
            Ok(_) => {}
            Err(e) => {
                report.warnings.push(format!("could not re-check inputs ({e}); the result is not stored"));
                return report;
            }
        }
        timing("re-check inputs", t);
        let logs: [(&str, &[u8]); 2] = [(archive::LOG_STDOUT, &outcome.stdout), (archive::LOG_STDERR, &outcome.stderr)];
        let t = Instant::now();
        let packed = archive::pack(&b.root, &node.outputs, &logs, &b.store.tmp_dir(), b.zstd_level);
        timing("pack", t);
        match packed {
            Err(archive::ArchiveError::MissingOutput(o)) => {
                report.status = Status::Failed;
                let made = policy.iter().flat_map(|p| &p.made).any(|(d, _)| d.ends_with(&o));
                report.detail = Some(if made {
                    format!(
                        "declared output `{o}` was not produced (the sandbox made it, empty, before the step ran, and the step left it so)"
                    )
                } else {
                    format!("declared output `{o}` was not produced")
                });
                report.contribution = None;
            }
            Err(e) => {
                report.warnings.push(format!("could not store the result: {e}"));
                b.console.note(&format!("warning: {}: could not store the result: {e}", node.name));
            }
            Ok(mut packed) => {
                let tmp = packed.tmp_path.clone();
                let fingerprint = packed.fingerprint.take();
                let blob_size = packed.blob_size;
                let t = Instant::now();
                let committed = pending.commit(b.store, packed, report.duration_ms);
                timing("commit", t);
                match committed {
                    Ok(entry) => {
                        report.bytes_stored = blob_size;
                        for (path, d) in &self.manifest.inputs {
                            if crate::plan::lockfile::is_lockfile(path) {
                                if let Ok(text) = std::fs::read_to_string(b.root.join(path)) {
                                    b.store.save_snapshot(&d.digest, &text);
                                }
                            }
                        }
                        let shareable = node.step.reproducible != Some(false) || b.share_unreproducible;
                        if let Some(remote) = b.remote.as_ref().filter(|_| shareable) {
                            remote.upload_later(
                                &node.name,
                                &self.manifest,
                                &b.store.blob_path(&entry.blob),
                                crate::cache::remote::UploadInfo {
                                    blob_digest: entry.blob.clone(),
                                    outputs_digest: entry.outputs_digest.clone(),
                                    log_bytes: entry.log_bytes.max(0) as u64,
                                    duration_ms: entry.duration_ms,
                                    blob_size: entry.blob_size,
                                },
                            );
                        }
                        if has_outputs {
                            let settles = b.store.worktree(&b.root).record_packed(
                                &node.name,
                                &node.outputs,
                                &entry.outputs_digest,
                                fingerprint.as_ref(),
                            );
                            self.unsettled(settles, &entry.outputs_digest);
                            report.contribution = Some(Upstream::Outputs(entry.outputs_digest));
                        }
                    }
                    Err(e) => {
                        let _ = std::fs::remove_file(tmp);
                        report.warnings.push(format!("could not store the result: {e}"));
                    }
                }
            }
        }
        report
    }
}

impl Job<'_> {
    /// Why a restored link may not lead to `rel` (relative to the root): no link may end on
    /// a file some step reads, nor on a directory holding another step's inputs (a later
    /// run writing through it would change sources). A directory of this step's own inputs
    /// may be linked to: mix links `_build/*/lib/APP/priv` to the project's `priv/`.
    fn protected(&self, rel: &str) -> Option<String> {
        let g = self.build.graph;
        let owners = self.prepared.input_owners.get_or_init(|| {
            let mut m = BTreeMap::new();
            for (&node, manifest) in &self.prepared.manifests {
                for path in manifest.inputs.keys() {
                    m.entry(path.clone()).or_insert(node);
                }
            }
            m
        });
        if let Some(&owner) = owners.get(rel) {
            return Some(format!("an input of step `{}`", g.nodes[owner].name));
        }
        let dir = format!("{}/", rel.trim_end_matches('/'));
        let inside = |node: usize| {
            self.prepared
                .manifests
                .get(&node)
                .is_some_and(|m| m.inputs.range(dir.clone()..).next().is_some_and(|(p, _)| p.starts_with(&dir)))
        };
        // A directory of this step's own sources may be linked to (mix links
        // `_build/*/lib/APP/priv` to `priv/`); one holding only other steps' inputs may not.
        if inside(self.node) {
            return None;
        }
        self.prepared
            .manifests
            .keys()
            .copied()
            .find(|&n| inside(n))
            .map(|n| format!("a directory holding inputs of step `{}`", g.nodes[n].name))
    }

    /// The sandbox mode in force for this step (see [`crate::model::SandboxMode::for_step`]).
    fn sandbox_mode(&self) -> crate::model::SandboxMode {
        let b = self.build;
        crate::model::SandboxMode::for_step(b.sandbox_override, &b.graph.nodes[self.node].step, b.pipeline)
    }

    /// What the step may touch, when it is to be sandboxed and can be (see [`sandbox`]).
    /// `Err` when it must be (`--require-sandbox`) and cannot.
    fn sandbox_policy(&self) -> Result<Option<sandbox::Policy>, String> {
        let b = self.build;
        let g = b.graph;
        let node = &g.nodes[self.node];
        let mode = self.sandbox_mode();
        let enforce = mode.enforces() && b.landlock.is_some();
        let trace = mode.traces() && b.seccomp;
        if b.require_sandbox {
            if mode.enforces() && !enforce {
                return Err("this machine has no Landlock (Linux 5.13 or later with Landlock enabled), and --require-sandbox is set".into());
            }
            if mode.traces() && !trace {
                return Err(
                    "this machine has no seccomp user notification (Linux 5.5 or later), and --require-sandbox is set"
                        .into(),
                );
            }
        }
        if !enforce && !trace {
            return Ok(None);
        }
        let declared = step_inputs(b.pipeline, &node.step);
        let mut policy = sandbox::Policy {
            read: sandbox::input_rules(
                &declared.include,
                &declared.exclude,
                self.manifest.inputs.keys().cloned(),
                |tree| {
                    walkdir::WalkDir::new(b.root.join(tree))
                        .into_iter()
                        .flatten()
                        .filter(|e| !e.file_type().is_dir())
                        .count()
                },
            ),
            enforce,
            trace,
            ..Default::default()
        };
        // The outputs of every step it needs, directly or not.
        for d in g.ancestors(self.node) {
            let (outs, _) = archive::split_outputs(&g.nodes[d].outputs);
            policy.read.extend(outs);
        }
        // Its own outputs and scratch: directories made now (rules attach to existing
        // paths); a file output may be created in its directory.
        for out in node.step.outputs.iter().chain(&node.step.scratch) {
            let rel = archive::normalize_output(out);
            let is_dir = out.ends_with('/') || b.root.join(&rel).is_dir() || node.step.scratch.contains(out);
            if !enforce || archive::linked_ancestor(&b.root, &rel).is_some() {
                // Rules attach only to what exists, so Landlock needs outputs made first;
                // tracing doesn't. Never make anything through a link (it may lead out of
                // the workspace).
            } else if is_dir {
                let dir = b.root.join(&rel);
                if !dir.exists() && std::fs::create_dir_all(&dir).is_ok() && !node.step.scratch.contains(out) {
                    policy.made.push((dir, None));
                }
            } else {
                // A file output: made empty now, so a rule can name it alone (a rule on its
                // directory would let the step write anywhere below it). The step writes it in
                // place; one written elsewhere and renamed over it is refused.
                let file = b.root.join(&rel);
                if !file.exists() {
                    if let Some(parent) = file.parent() {
                        let _ = std::fs::create_dir_all(parent);
                    }
                    if std::fs::File::create(&file).is_ok() {
                        let at = std::fs::metadata(&file).and_then(|m| m.modified()).ok();
                        policy.made.push((file, at));
                    }
                }
            }
            policy.write.insert(rel);
        }
        if !node.step.network {
            let ports = node.step.services.iter().filter_map(|s| self.services.port_of(s)).collect();
            policy.connect = Some(ports);
        }
        if mode == crate::model::SandboxMode::Strict {
            let mut outside: Vec<PathBuf> = sandbox::SYSTEM.iter().map(PathBuf::from).collect();
            outside.extend(self.host_paths());
            policy.outside = Some(outside);
        }
        Ok(Some(policy))
    }

    /// `host` paths of the step and the pipeline, `~` expanded.
    fn host_paths(&self) -> Vec<PathBuf> {
        let b = self.build;
        let home = std::env::var("HOME").ok();
        b.pipeline
            .host
            .iter()
            .chain(&b.graph.nodes[self.node].step.host)
            .map(|h| match (h.strip_prefix("~/"), &home) {
                (Some(rest), Some(home)) => Path::new(home).join(rest),
                _ => PathBuf::from(h),
            })
            .collect()
    }

    /// What the traced step touched that it did not declare (see `plan::undeclared`).
    fn undeclared(
        &self,
        policy: &sandbox::Policy,
        accesses: &[trace::Access],
        tmp: Option<&Path>,
    ) -> Vec<crate::plan::undeclared::Finding> {
        use crate::plan::undeclared::{classify, Declared, Seen, Touch};
        let b = self.build;
        let g = b.graph;
        let ancestors: std::collections::BTreeSet<usize> = g.ancestors(self.node).into_iter().collect();
        let mut others = BTreeMap::new();
        for (i, n) in g.nodes.iter().enumerate() {
            if i == self.node {
                continue;
            }
            for o in archive::split_outputs(&n.outputs).0 {
                others.entry(o).or_insert((n.name.clone(), ancestors.contains(&i)));
            }
        }
        let step = &g.nodes[self.node].step;
        let home = std::env::var("HOME").ok();
        let strict = policy.outside.is_some();
        let decl = Declared {
            reads: policy.read.clone(),
            writes: policy.write.clone(),
            others,
            input_sets: step
                .input_sets
                .iter()
                .filter_map(|n| b.pipeline.input_sets.get(n).map(|s| (n.clone(), s.include.clone())))
                .collect(),
            host: strict.then(|| {
                let mut h: Vec<String> = sandbox::SYSTEM.iter().map(|s| s.to_string()).collect();
                h.extend(self.host_paths().iter().map(|p| p.display().to_string()));
                h.extend(tmp.map(|t| t.display().to_string()));
                h
            }),
            home: home.clone(),
            ports: policy.connect.clone(),
        };
        let root = b.root.canonicalize().unwrap_or_else(|_| b.root.clone());
        let mut ignored = trace::GitIgnored::new(&root, b.pipeline.gitignore);
        let mut done = std::collections::HashSet::new();
        let mut seen = Vec::new();
        for a in accesses {
            if !done.insert((a.path.clone(), a.kind)) {
                continue;
            }
            let touch = match a.kind {
                trace::Kind::Read | trace::Kind::Exec => Touch::Read,
                trace::Kind::Stat => continue, // not traced in report mode
                trace::Kind::Write => Touch::Write,
                trace::Kind::Connect(port) => Touch::Connect(port),
            };
            if let Touch::Connect(_) = touch {
                let abs = a.path.display().to_string();
                seen.push(Seen { rel: None, abs, touch, is_file: false, git_ignored: false });
                continue;
            }
            let path = trace::resolve(&a.path);
            let is_file = std::fs::metadata(&path).is_ok_and(|m| m.is_file());
            let rel = path.strip_prefix(&root).ok().and_then(|r| r.to_str()).map(String::from);
            let git_ignored = rel.as_deref().is_some_and(|r| is_file && ignored.is_ignored(r));
            seen.push(Seen { rel, abs: path.display().to_string(), touch, is_file, git_ignored });
        }
        classify(&decl, seen)
    }

    /// Did the step write into the outputs of a step it needs (done earlier in this build)?
    /// `mix test` writes `.mix_test_failures` into compile's `_build/test/`: said by name,
    /// with the declaration that keeps the other step's outputs in place.
    fn foreign_writes(&self, report: &mut StepReport, since_ns: i64) {
        let b = self.build;
        let g = b.graph;
        for a in g.ancestors(self.node) {
            let other = &g.nodes[a];
            if other.step.outputs.is_empty() {
                continue;
            }
            let Some(recorded) = b.store.worktree(&b.root).installed_fingerprint(&other.name) else { continue };
            if inputs::outputs_fingerprint(&b.root, &other.outputs).is_some_and(|(fp, _)| fp == recorded) {
                continue;
            }
            let written = archive::changed_since(&b.root, &other.outputs, since_ns);
            if written.is_empty() {
                continue;
            }
            let shown: Vec<&str> = written.iter().take(3).map(String::as_str).collect();
            let more = if written.len() > 3 { format!(" and {} more", written.len() - 3) } else { String::new() };
            let decl: Vec<String> = written.iter().take(3).map(|w| format!("\"{w}\"")).collect();
            let w = format!(
                "step `{}` wrote into the outputs of step `{}`: {}{more}; declare them as outputs of `{}` (outputs: [{}]) so `{}`'s outputs stay in place",
                g.nodes[self.node].name,
                other.name,
                shown.join(", "),
                g.nodes[self.node].name,
                decl.join(", "),
                other.name
            );
            b.console.note(&format!("warning: {w}"));
            report.warnings.push(w);
        }
    }

    /// Did the step write one of its secrets into an output? Warns naming the step, the
    /// output and the secret; `Some(true)` when the result must not be stored.
    fn secret_in_outputs(&self, report: &mut StepReport) -> Option<bool> {
        let b = self.build;
        let node = &b.graph.nodes[self.node];
        let maskers: Vec<(&String, Masker)> = node
            .step
            .secrets
            .iter()
            .filter_map(|s| self.prepared.secret_values.get(s).map(|v| (s, Masker::new([v.as_str()]))))
            .filter(|(_, m)| !m.is_empty())
            .collect();
        if maskers.is_empty() {
            return None;
        }
        let (file, secret) = archive::find_in_outputs(&b.root, &node.outputs, |bytes| {
            maskers.iter().find(|(_, m)| m.found_in(bytes)).map(|(name, _)| name.to_string())
        })?;
        let store = node.step.store_outputs_with_secret.or(b.pipeline.cache.store_outputs_with_secret).unwrap_or(false);
        let w = if store {
            format!("step `{}` wrote secret `{secret}` into its output `{file}`; it is stored as it is (`store_outputs_with_secret: true`): anyone who can read the cache can read it", node.name)
        } else {
            format!("step `{}` wrote secret `{secret}` into its output `{file}`; the result is not stored (cairn never puts a secret in the cache; set `store_outputs_with_secret: true` on the step to store it anyway)", node.name)
        };
        b.console.note(&format!("warning: {w}"));
        report.warnings.push(w);
        Some(!store)
    }

    /// Put a stored entry's outputs in place (or find them there) and replay its logs.
    fn restore_hit(
        &self,
        entry: &crate::cache::Entry,
        report: &mut StepReport,
        status: Status,
        prefix: &str,
    ) -> Result<(), String> {
        let b = self.build;
        let node = &b.graph.nodes[self.node];
        let has_outputs = !node.step.outputs.is_empty();
        let started = Instant::now();
        let t = Instant::now();
        let fingerprint = || match b.prefetch {
            Some(p) => p.fingerprint(self.node, &b.root, &node.outputs),
            None => inputs::outputs_fingerprint(&b.root, &node.outputs),
        };
        let in_place = has_outputs
            && b.store.worktree(&b.root).outputs_in_place(
                &node.name,
                &node.outputs,
                &entry.outputs_digest,
                fingerprint,
            );
        if !in_place && has_outputs {
            if let Some(p) = b.prefetch {
                p.wrote(self.node); // about to restore into the worktree
            }
        }
        phase(2, t);
        let t = Instant::now();
        // Nothing to put in place (outputs already there, or none declared): replay the logs
        // alone, without unpacking into a staging directory in the worktree.
        let restored = if in_place || !has_outputs {
            b.store.read_logs(entry).map(|(stdout, stderr)| crate::cache::Restored {
                unpacked: archive::Unpacked { stdout, stderr, ..Default::default() },
                bytes: 0,
                changed: None,
            })
        } else {
            // Outputs cairn itself installed with these very bytes were edited: say which file.
            let explain =
                b.store.worktree(&b.root).installed_digest(&node.name).is_some_and(|d| d == entry.outputs_digest);
            let protected = |rel: &str| self.protected(rel);
            b.store.restore(entry, &b.root, &node.outputs, &protected, explain).inspect(|r| {
                if let Some(what) = &r.changed {
                    let outs: Vec<String> = node.step.outputs.iter().map(|o| archive::normalize_output(o)).collect();
                    let out = outs
                        .iter()
                        .find(|o| Path::new(what.split(' ').next().unwrap_or("")).starts_with(o.as_str()))
                        .map(|o| format!("{o}/"))
                        .unwrap_or_else(|| outs.join(", "));
                    let msg = format!("restored {out}: {what} since cairn wrote it");
                    b.console.note(&format!("{prefix} {msg}"));
                    report.warnings.push(msg);
                }
                let settles =
                    b.store.worktree(&b.root).record_installed(&node.name, &node.outputs, &entry.outputs_digest);
                self.unsettled(settles, &entry.outputs_digest);
            })
        };
        phase(3, t);
        let restored = restored.map_err(|e| e.to_string())?;
        for (bytes, err) in [(&restored.unpacked.stdout, false), (&restored.unpacked.stderr, true)] {
            for line in String::from_utf8_lossy(bytes).lines() {
                b.console.line(prefix, line, err);
            }
        }
        report.status = status;
        report.saved_ms = entry.duration_ms;
        report.bytes_restored = restored.bytes;
        report.duration_ms = started.elapsed().as_millis() as u64;
        report.contribution = Some(Upstream::of(has_outputs, &entry.key, &entry.outputs_digest));
        report.end_ms = self.t0.elapsed().as_millis() as u64;
        Ok(())
    }
}

fn changed_paths(a: &BTreeMap<String, FileDigest>, b: &BTreeMap<String, FileDigest>) -> Vec<String> {
    let mut out: Vec<String> = a.keys().chain(b.keys()).filter(|k| a.get(*k) != b.get(*k)).cloned().collect();
    out.sort();
    out.dedup();
    out
}
