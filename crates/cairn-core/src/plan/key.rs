//! Step keys: what a step's result depends on, hashed in one canonical encoding.
//!
//! # Design
//!
//! A step's **key** is the blake3 hash of its [`KeyManifest`], serialised as canonical JSON
//! (struct fields in declaration order, every map a `BTreeMap`, so sorted). Two runs of a step
//! with the same key would produce the same outputs, so the second one is never run: its
//! outputs and logs are restored from the store. The manifest itself is stored beside each
//! entry so a later run can say *why* a key changed ([`diff`]), as cargo's fingerprints do.
//!
//! | field | why it is in the key |
//! |---|---|
//! | `schema` | [`KEY_SCHEMA_VERSION`]: bump it when anything here changes meaning, so old entries can never match |
//! | `command` | the command after placeholders are filled (matrix values included) |
//! | `workdir` | relative working directory: the same command elsewhere is different work |
//! | `env` | declared environment values (`env` and matrix values); the step sees exactly these |
//! | `secrets` | secret **names** only: which secrets a step receives changes what it may do |
//! | `toolchains` | each listed toolchain's probe output (e.g. `elixir --version`) |
//! | `services` | the digest of each used service's *definition*, not its runtime state |
//! | `platform` | OS and architecture: outputs are rarely portable across them |
//! | `inputs` | every input file: relative path → (blake3 of content, executable bit) |
//! | `upstream` | per needed step: the digest of what it produced (its outputs archive), or its key when it declares no outputs |
//! | `outputs` | the declared output paths: the same work restoring different paths is different |
//!
//! **Early cutoff** (as Nix content-addressed derivations): a dependent hashes the digest of
//! its upstream step's *outputs*, not the upstream key. An upstream step that re-ran because a
//! comment changed but produced identical bytes leaves its dependents' keys unchanged.
//!
//! # Never in a key, and why
//! - **mtimes, inodes, owners**: they change on checkout and restore without changing content.
//!   (The stat cache uses them only to skip re-reading unchanged files, never as identity.)
//! - **absolute paths**: the same project in another checkout or on another runner must hit.
//! - **the pipeline's formatting, comments, step order or the step's name**: only the parsed
//!   values above reach the manifest; renaming a step keeps its entries.
//! - **secret values**: a key is printed, stored and shared; values must never be recoverable
//!   from it (even by brute force of short tokens), so only names are hashed.
//! - **pass-through environment** (`pass_env`) and **timeouts**: by declaration they do not
//!   change results.
//!
//! # Known weaknesses
//! - Anything the command reads that is not declared (an undeclared file, the network, a
//!   tool not listed as a toolchain) is invisible to the key. Declare it, or mark the step
//!   `cache: false`.
//! - Files a step reads that are *outputs of other steps* are excluded from its input globs;
//!   they are covered through `upstream` only if the producing step is in `needs`.
//! - Probe output identifies a toolchain only as precisely as the probe prints it.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Bump when any field of [`KeyManifest`] is added, removed or changes meaning.
pub const KEY_SCHEMA_VERSION: u32 = 1;

/// One input file as it appears in a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// blake3 of the content, hex.
    pub digest: String,
    pub exec: bool,
}

/// What a needed step contributes to a dependent's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Upstream {
    /// The digest of the upstream step's outputs (early cutoff).
    Outputs(String),
    /// The upstream step's key, when it declares no outputs.
    Key(String),
}

impl Upstream {
    /// What a step contributes to its dependents: its outputs digest, or its key when it
    /// declares no outputs.
    pub fn of(has_outputs: bool, key: &str, outputs_digest: &str) -> Upstream {
        if has_outputs {
            Upstream::Outputs(outputs_digest.to_string())
        } else {
            Upstream::Key(key.to_string())
        }
    }
}

/// The preimage of a step key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyManifest {
    pub schema: u32,
    pub command: String,
    pub workdir: String,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<String>,
    pub toolchains: BTreeMap<String, String>,
    pub services: BTreeMap<String, String>,
    pub platform: String,
    pub inputs: BTreeMap<String, FileDigest>,
    pub upstream: BTreeMap<String, Upstream>,
    pub outputs: Vec<String>,
}

impl KeyManifest {
    /// The canonical encoding that is hashed (and stored).
    pub fn canonical(&self) -> String {
        serde_json::to_string(self).expect("a manifest always serialises")
    }

    /// The step key: blake3 of the canonical encoding, hex.
    ///
    /// Streamed into the hasher: the same bytes as [`KeyManifest::canonical`] without building
    /// them. The input map (hundreds of entries per step, keyed on every build) is written by
    /// hand; every other field, and any path that needs escaping, goes through serde_json.
    /// The destructuring below makes a new field a compile error here until it is written.
    pub fn key(&self) -> String {
        use std::io::Write;
        struct Sink(blake3::Hasher);
        impl Write for Sink {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.update(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        /// A JSON string as serde_json writes it: raw unless it holds `"`, `\` or a control
        /// character.
        fn string(w: &mut impl Write, s: &str) -> std::io::Result<()> {
            if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
                w.write_all(b"\"")?;
                w.write_all(s.as_bytes())?;
                w.write_all(b"\"")
            } else {
                serde_json::to_writer(w, s).map_err(std::io::Error::other)
            }
        }
        let KeyManifest {
            schema,
            command,
            workdir,
            env,
            secrets,
            toolchains,
            services,
            platform,
            inputs,
            upstream,
            outputs,
        } = self;
        let mut w = std::io::BufWriter::with_capacity(64 * 1024, Sink(blake3::Hasher::new()));
        // Fields in declaration order, as serde writes a struct; `inputs` between the two runs.
        let before: [(&str, &dyn erased::Json); 8] = [
            ("schema", schema),
            ("command", command),
            ("workdir", workdir),
            ("env", env),
            ("secrets", secrets),
            ("toolchains", toolchains),
            ("services", services),
            ("platform", platform),
        ];
        let after: [(&str, &dyn erased::Json); 2] = [("upstream", upstream), ("outputs", outputs)];
        let field = |w: &mut std::io::BufWriter<Sink>, first: bool, (name, value): (&str, &dyn erased::Json)| {
            w.write_all(if first { b"{\"" } else { b",\"" })?;
            w.write_all(name.as_bytes())?;
            w.write_all(b"\":")?;
            value.write(w)
        };
        let written: std::io::Result<()> = (|| {
            for (i, f) in before.into_iter().enumerate() {
                field(&mut w, i == 0, f)?;
            }
            w.write_all(b",\"inputs\":{")?;
            for (i, (path, d)) in inputs.iter().enumerate() {
                if i > 0 {
                    w.write_all(b",")?;
                }
                string(&mut w, path)?;
                w.write_all(b":{\"digest\":")?;
                string(&mut w, &d.digest)?;
                w.write_all(if d.exec { b",\"exec\":true}" } else { b",\"exec\":false}" })?;
            }
            w.write_all(b"}")?;
            for f in after {
                field(&mut w, false, f)?;
            }
            w.write_all(b"}")
        })();
        written.expect("the sink never fails");
        let sink = w.into_inner().unwrap_or_else(|_| unreachable!("the sink never fails"));
        sink.0.finalize().to_hex().to_string()
    }
}

/// serde_json over a `dyn` value (the key writer's fields have different types).
mod erased {
    pub trait Json {
        fn write(&self, w: &mut dyn std::io::Write) -> std::io::Result<()>;
    }
    impl<T: serde::Serialize> Json for T {
        fn write(&self, w: &mut dyn std::io::Write) -> std::io::Result<()> {
            serde_json::to_writer(w, self).map_err(std::io::Error::other)
        }
    }
}

/// Why a step's key differs from its previous entry: typed, with old and new values; rendered
/// by the report layer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "reason", rename_all = "kebab-case")]
pub enum DirtyReason {
    /// No earlier entry of this step at all.
    NoEntry,
    SchemaChanged {
        old: u32,
        new: u32,
    },
    CommandChanged {
        old: String,
        new: String,
    },
    WorkdirChanged {
        old: String,
        new: String,
    },
    InputChanged {
        path: String,
    },
    InputAdded {
        path: String,
    },
    InputRemoved {
        path: String,
    },
    /// Declared environment value changed (values are shown, since secrets never reach `env`).
    EnvChanged {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    SecretsChanged {
        old: Vec<String>,
        new: Vec<String>,
    },
    ToolchainChanged {
        name: String,
        old: Option<String>,
        new: Option<String>,
    },
    ServiceChanged {
        name: String,
    },
    PlatformChanged {
        old: String,
        new: String,
    },
    UpstreamChanged {
        step: String,
    },
    OutputsChanged {
        old: Vec<String>,
        new: Vec<String>,
    },
    /// The entry existed but was evicted by garbage collection.
    Evicted,
    /// The entry's blob was missing or failed verification; it was dropped.
    Corrupt {
        detail: String,
    },
    /// A remote entry existed but its signature is missing, untrusted or wrong.
    Signature {
        detail: String,
    },
    /// The remote cache failed (unavailable, refused, tampered entry).
    RemoteError {
        detail: String,
    },
    /// The store could not be asked (an I/O or database error): not a plain miss.
    StoreError {
        detail: String,
    },
    /// `--force`.
    Forced,
    /// `cache: false`.
    NotCacheable,
    /// An upstream step will run, so this key is not known until it has.
    UpstreamWillRun {
        step: String,
    },
}

impl DirtyReason {
    /// A short stable code for reports.
    pub fn code(&self) -> &'static str {
        match self {
            DirtyReason::NoEntry => "no-entry",
            DirtyReason::SchemaChanged { .. } => "schema-changed",
            DirtyReason::CommandChanged { .. } => "command-changed",
            DirtyReason::WorkdirChanged { .. } => "workdir-changed",
            DirtyReason::InputChanged { .. } | DirtyReason::InputAdded { .. } | DirtyReason::InputRemoved { .. } => {
                "input-changed"
            }
            DirtyReason::EnvChanged { .. } | DirtyReason::SecretsChanged { .. } => "env-changed",
            DirtyReason::ToolchainChanged { .. } => "toolchain-changed",
            DirtyReason::ServiceChanged { .. } => "service-changed",
            DirtyReason::PlatformChanged { .. } => "platform-changed",
            DirtyReason::UpstreamChanged { .. } => "upstream-changed",
            DirtyReason::OutputsChanged { .. } => "outputs-changed",
            DirtyReason::Evicted => "evicted",
            DirtyReason::Corrupt { .. } => "corrupt",
            DirtyReason::StoreError { .. } => "store-error",
            DirtyReason::Signature { .. } => "signature",
            DirtyReason::RemoteError { .. } => "remote-error",
            DirtyReason::Forced => "forced",
            DirtyReason::NotCacheable => "not-cacheable",
            DirtyReason::UpstreamWillRun { .. } => "upstream-will-run",
        }
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        fn opt(v: &Option<String>) -> String {
            v.as_deref().map(|s| format!("`{s}`")).unwrap_or_else(|| "unset".into())
        }
        match self {
            DirtyReason::NoEntry => "no entry in the store for this step".into(),
            DirtyReason::SchemaChanged { old, new } => format!("key schema changed ({old} → {new})"),
            DirtyReason::CommandChanged { old, new } => format!("command changed: `{old}` → `{new}`"),
            DirtyReason::WorkdirChanged { old, new } => format!("working directory changed: `{old}` → `{new}`"),
            DirtyReason::InputChanged { path } => format!("input changed: {path}"),
            DirtyReason::InputAdded { path } => format!("input added: {path}"),
            DirtyReason::InputRemoved { path } => format!("input removed: {path}"),
            DirtyReason::EnvChanged { name, old, new } => format!("env {name} changed: {} → {}", opt(old), opt(new)),
            DirtyReason::SecretsChanged { old, new } => {
                format!("secret names changed: [{}] → [{}]", old.join(", "), new.join(", "))
            }
            DirtyReason::ToolchainChanged { name, .. } => format!("toolchain {name} changed"),
            DirtyReason::ServiceChanged { name } => format!("service {name} definition changed"),
            DirtyReason::PlatformChanged { old, new } => format!("platform changed: {old} → {new}"),
            DirtyReason::UpstreamChanged { step } => format!("upstream step {step} produced different outputs"),
            DirtyReason::OutputsChanged { .. } => "declared outputs changed".into(),
            DirtyReason::Evicted => "the entry was evicted from the store".into(),
            DirtyReason::Corrupt { detail } => format!("the stored entry was corrupt and dropped: {detail}"),
            DirtyReason::StoreError { detail } => format!("the store could not be read: {detail}"),
            DirtyReason::Signature { detail } => format!("remote entry rejected, signature: {detail}"),
            DirtyReason::RemoteError { detail } => detail.clone(),
            DirtyReason::Forced => "forced with --force".into(),
            DirtyReason::NotCacheable => "step has `cache: false`".into(),
            DirtyReason::UpstreamWillRun { step } => format!("upstream step {step} will run"),
        }
    }
}

/// Everything that differs between a previous manifest of a step and the current one.
pub fn diff(old: &KeyManifest, new: &KeyManifest) -> Vec<DirtyReason> {
    let mut out = Vec::new();
    if old.schema != new.schema {
        out.push(DirtyReason::SchemaChanged { old: old.schema, new: new.schema });
    }
    if old.command != new.command {
        out.push(DirtyReason::CommandChanged { old: old.command.clone(), new: new.command.clone() });
    }
    if old.workdir != new.workdir {
        out.push(DirtyReason::WorkdirChanged { old: old.workdir.clone(), new: new.workdir.clone() });
    }
    for (path, d) in &new.inputs {
        match old.inputs.get(path) {
            None => out.push(DirtyReason::InputAdded { path: path.clone() }),
            Some(o) if o != d => out.push(DirtyReason::InputChanged { path: path.clone() }),
            _ => {}
        }
    }
    for path in old.inputs.keys() {
        if !new.inputs.contains_key(path) {
            out.push(DirtyReason::InputRemoved { path: path.clone() });
        }
    }
    for name in old.env.keys().chain(new.env.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (o, n) = (old.env.get(name), new.env.get(name));
        if o != n {
            out.push(DirtyReason::EnvChanged { name: name.clone(), old: o.cloned(), new: n.cloned() });
        }
    }
    if old.secrets != new.secrets {
        out.push(DirtyReason::SecretsChanged { old: old.secrets.clone(), new: new.secrets.clone() });
    }
    for name in old.toolchains.keys().chain(new.toolchains.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (o, n) = (old.toolchains.get(name), new.toolchains.get(name));
        if o != n {
            out.push(DirtyReason::ToolchainChanged { name: name.clone(), old: o.cloned(), new: n.cloned() });
        }
    }
    for name in old.services.keys().chain(new.services.keys()).collect::<std::collections::BTreeSet<_>>() {
        if old.services.get(name) != new.services.get(name) {
            out.push(DirtyReason::ServiceChanged { name: name.clone() });
        }
    }
    if old.platform != new.platform {
        out.push(DirtyReason::PlatformChanged { old: old.platform.clone(), new: new.platform.clone() });
    }
    for step in old.upstream.keys().chain(new.upstream.keys()).collect::<std::collections::BTreeSet<_>>() {
        if old.upstream.get(step) != new.upstream.get(step) {
            out.push(DirtyReason::UpstreamChanged { step: step.clone() });
        }
    }
    if old.outputs != new.outputs {
        out.push(DirtyReason::OutputsChanged { old: old.outputs.clone(), new: new.outputs.clone() });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest() -> KeyManifest {
        KeyManifest {
            schema: KEY_SCHEMA_VERSION,
            command: "mix compile".into(),
            workdir: ".".into(),
            env: BTreeMap::from([("MIX_ENV".into(), "test".into())]),
            secrets: vec!["GITHUB_TOKEN".into()],
            toolchains: BTreeMap::from([("elixir".into(), "Elixir 1.18.1".into())]),
            services: BTreeMap::new(),
            platform: "linux-x86_64".into(),
            inputs: BTreeMap::from([("lib/a.ex".into(), FileDigest { digest: "aa".into(), exec: false })]),
            upstream: BTreeMap::from([("deps".into(), Upstream::Outputs("bb".into()))]),
            outputs: vec!["_build/".into()],
        }
    }

    #[test]
    fn key_is_stable_and_sensitive_to_every_field() {
        let base = manifest();
        assert_eq!(base.key(), manifest().key(), "same manifest, same key");
        assert_eq!(base.key().len(), 64);
        // The streamed key is the digest of the stored canonical manifest (entries are checked
        // against it when fetched from a remote).
        assert_eq!(base.key(), blake3::hash(base.canonical().as_bytes()).to_hex().to_string());
        let mut variants: Vec<KeyManifest> = Vec::new();
        let mut m = manifest();
        m.command.push(' ');
        variants.push(m);
        let mut m = manifest();
        m.env.insert("MIX_ENV".into(), "dev".into());
        variants.push(m);
        let mut m = manifest();
        m.inputs.get_mut("lib/a.ex").unwrap().exec = true;
        variants.push(m);
        let mut m = manifest();
        m.upstream.insert("deps".into(), Upstream::Outputs("cc".into()));
        variants.push(m);
        let mut m = manifest();
        m.toolchains.insert("elixir".into(), "Elixir 1.19.0".into());
        variants.push(m);
        let mut m = manifest();
        m.platform = "linux-aarch64".into();
        variants.push(m);
        let mut m = manifest();
        m.secrets.clear();
        variants.push(m);
        for v in &variants {
            assert_ne!(v.key(), base.key());
            assert!(!diff(&base, v).is_empty(), "diff must name the change: {v:?}");
        }
    }

    #[test]
    fn the_hand_written_key_hashes_exactly_the_canonical_bytes() {
        let mut m = manifest();
        m.services.insert("postgres".into(), "cc".into());
        m.upstream.insert("web".into(), Upstream::Key("k\"ey".into()));
        m.outputs.push("dist/".into());
        for (i, path) in
            ["plain/a.ex", "quote\"d", "back\\slash", "new\nline", "tab\t", "bell\u{7}", "del\u{7f}", "ünïcødé/ß", ""]
                .iter()
                .enumerate()
        {
            m.inputs.insert(path.to_string(), FileDigest { digest: format!("{i:064x}"), exec: i % 2 == 0 });
        }
        assert_eq!(m.key(), blake3::hash(m.canonical().as_bytes()).to_hex().to_string());
        let mut empty = manifest();
        empty.inputs.clear();
        assert_eq!(empty.key(), blake3::hash(empty.canonical().as_bytes()).to_hex().to_string());
    }

    #[test]
    fn diff_names_exactly_what_changed() {
        let old = manifest();
        let mut new = manifest();
        new.inputs.insert("lib/a.ex".into(), FileDigest { digest: "zz".into(), exec: false });
        new.inputs.insert("lib/b.ex".into(), FileDigest { digest: "yy".into(), exec: false });
        new.upstream.insert("deps".into(), Upstream::Outputs("dd".into()));
        let reasons = diff(&old, &new);
        assert_eq!(
            reasons,
            vec![
                DirtyReason::InputChanged { path: "lib/a.ex".into() },
                DirtyReason::InputAdded { path: "lib/b.ex".into() },
                DirtyReason::UpstreamChanged { step: "deps".into() },
            ]
        );
        assert_eq!(reasons[0].code(), "input-changed");
    }
}
