//! The RON schema. Field docs here are the reference's source of truth; `docs/pipeline.md`
//! shows each construct in use.

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

/// A map written `{ "name": value, ... }` that keeps declaration order and refuses a name
/// declared twice (serde's maps would silently keep the last one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named<T>(pub Vec<(String, T)>);

impl<T> Default for Named<T> {
    fn default() -> Self {
        Named(Vec::new())
    }
}

impl<T> Named<T> {
    pub fn get(&self, name: &str) -> Option<&T> {
        self.0.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
    pub fn contains(&self, name: &str) -> bool {
        self.get(name).is_some()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&String, &T)> {
        self.0.iter().map(|(n, v)| (n, v))
    }
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _)| n.as_str())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Named<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = Named<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of names to definitions, like { \"name\": (...) }")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(String, T)> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    if key.is_empty() {
                        return Err(de::Error::custom("a name may not be empty"));
                    }
                    if out.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!(
                            "duplicate name `{key}`: each name may be declared only once"
                        )));
                    }
                    let value = map.next_value::<T>()?;
                    out.push((key, value));
                }
                Ok(Named(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

/// A duration written as a string: `"500ms"`, `"10s"`, `"5m"`, `"1h30m"`, `"2d"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        if s.is_empty() {
            return Err("empty duration".into());
        }
        let mut total: u128 = 0;
        let mut rest = s;
        while !rest.is_empty() {
            let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                return Err(format!("`{s}` is not a duration"));
            }
            let n: u128 = rest[..digits].parse().map_err(|_| format!("`{s}` is too large"))?;
            rest = &rest[digits..];
            let unit_len = rest.chars().take_while(|c| c.is_ascii_alphabetic()).count();
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let ms: u128 = match unit {
                "ms" => 1,
                "s" => 1_000,
                "m" => 60_000,
                "h" => 3_600_000,
                "d" => 86_400_000,
                "" => return Err(format!("`{s}` has a number without a unit")),
                u => return Err(format!("`{s}` has an unknown unit `{u}`")),
            };
            total = total
                .checked_add(n.checked_mul(ms).ok_or_else(|| format!("`{s}` is too large"))?)
                .ok_or_else(|| format!("`{s}` is too large"))?;
        }
        if total > u128::from(u64::MAX) {
            return Err(format!("`{s}` is too large"));
        }
        Ok(Dur(Duration::from_millis(total as u64)))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        let units = [(86_400_000, "d"), (3_600_000, "h"), (60_000, "m"), (1_000, "s"), (1, "ms")];
        let mut rest = ms;
        for (size, name) in units {
            if rest >= size {
                write!(f, "{}{}", rest / size, name)?;
                rest %= size;
            }
        }
        Ok(())
    }
}

impl Serialize for Dur {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(|e| {
            de::Error::custom(format!("invalid duration: {e}; write it like \"30s\", \"5m\", \"1h30m\" or \"500ms\""))
        })
    }
}

fn yes() -> bool {
    true
}

/// The whole file: `Pipeline(name: "...", ...)`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The project's name; also the default value of the `{app}` placeholder.
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Values for `{placeholders}` usable anywhere: `{ "app": "automata-signal" }`.
    #[serde(default)]
    pub vars: Named<String>,
    /// Whether input globs skip what `.gitignore` ignores (default true).
    #[serde(default = "yes")]
    pub gitignore: bool,
    /// Named sets of input globs that several steps reuse (`input_sets: ["elixir"]` on a step).
    #[serde(default)]
    pub input_sets: Named<InputSet>,
    /// Toolchain probes: a command whose output identifies a toolchain, optionally a version
    /// requirement checked before anything runs.
    #[serde(default)]
    pub toolchains: Named<Toolchain>,
    /// Long-running helpers (databases ...) that steps declare in `services`.
    #[serde(default)]
    pub services: Named<Service>,
    /// Where each secret comes from. Only names ever reach keys, logs or reports.
    #[serde(default)]
    pub secrets: Named<SecretSource>,
    /// The step graph.
    pub steps: Named<Step>,
    /// What runs on which event.
    #[serde(default)]
    pub triggers: Vec<Trigger>,
    /// Deploy targets.
    #[serde(default)]
    pub environments: Named<Environment>,
    /// Local store settings.
    #[serde(default)]
    pub cache: CacheSettings,
    /// How cacheable steps are sandboxed (default `Enforce`; a step's own `sandbox` wins).
    #[serde(default)]
    pub sandbox: Option<SandboxMode>,
    /// Paths outside the workspace every step may read in `Strict` mode (`~/.mix`); system
    /// paths always are.
    #[serde(default)]
    pub host: Vec<String>,
    /// The shared remote cache (flags and `CAIRN_REMOTE` / `CAIRN_TOKEN` override it).
    #[serde(default)]
    pub remote: Option<RemoteSettings>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteSettings {
    /// Base URL of a Turborepo-compatible cache, e.g. "https://cache.example.com".
    #[serde(default)]
    pub url: Option<String>,
    /// The team / slug entries are stored under (default: the pipeline's name).
    #[serde(default)]
    pub namespace: Option<String>,
    /// Public keys (`NAME:BASE64`) whose signatures readers accept. When set, unsigned or
    /// badly signed entries are misses with reason `signature`.
    #[serde(default)]
    pub trusted_keys: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSettings {
    /// Size cap of the local store, e.g. "10GiB"; least recently used entries go first.
    #[serde(default)]
    pub max_size: Option<String>,
    /// Store a step's result even when one of its outputs holds a secret's value (in any
    /// form cairn masks). Default `false`: such a result is not stored, with a warning naming
    /// the step, the output and the secret. A step's own setting wins.
    #[serde(default)]
    pub store_outputs_with_secret: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSet {
    /// Globs relative to the pipeline's root (the directory holding `pipelines/`).
    #[serde(default)]
    pub include: Vec<String>,
    /// Globs removed from what `include` matched.
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Toolchain {
    /// A command whose output identifies the toolchain: `"elixir --version"`.
    pub probe: String,
    /// A version the probe's output must show, e.g. "1.18" (matches 1.18.x).
    #[serde(default)]
    pub require: Option<String>,
    /// Environment variables the probe's output depends on, besides `PATH` and the ones
    /// toolchain managers read (`ASDF_*`, `RUSTUP_*`, ...): a change in one re-runs the probe
    /// instead of reusing its cached output.
    #[serde(default)]
    pub env: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The command, run with `sh -c` in `workdir`.
    pub run: String,
    #[serde(default)]
    pub description: Option<String>,
    /// Working directory relative to the pipeline root (default: the root).
    #[serde(default)]
    pub workdir: Option<String>,
    /// Input globs (a leading `!` excludes).
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Globs removed from the inputs.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Files git ignores that the step reads when they exist (a developer's
    /// `config/local.exs`): hashed into its key when present, so a checkout without one
    /// never hits an entry made with one. Literal paths or globs; absent is fine.
    #[serde(default)]
    pub untracked: Vec<String>,
    /// Named input sets this step also reads.
    #[serde(default)]
    pub input_sets: Vec<String>,
    /// Paths the step produces, relative to the root; a trailing `/` marks a directory.
    #[serde(default)]
    pub outputs: Vec<String>,
    /// Declared environment: reaches the step and is part of its key.
    #[serde(default)]
    pub env: Named<String>,
    /// Environment names passed through from the caller; not part of the key.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Secret names, exported as environment variables of the same name; never hashed.
    #[serde(default)]
    pub secrets: Vec<String>,
    /// Steps that must succeed first; their outputs are part of this step's key.
    #[serde(default)]
    pub needs: Vec<String>,
    /// Toolchains whose probe output is part of the key.
    #[serde(default)]
    pub toolchains: Vec<String>,
    /// Services that must be ready while this step runs.
    #[serde(default)]
    pub services: Vec<String>,
    /// `false`: always run, never store (deploy-like or side-effecting steps).
    #[serde(default = "yes")]
    pub cache: bool,
    #[serde(default)]
    pub timeout: Option<Dur>,
    /// Store this step's result even when an output holds a secret's value (see the
    /// pipeline's `cache: (store_outputs_with_secret: ...)`).
    #[serde(default)]
    pub store_outputs_with_secret: Option<bool>,
    /// How this step is sandboxed (default: the pipeline's `sandbox` for a cacheable step,
    /// `Enforce` when the pipeline says nothing, `Off` for a step with `cache: false`).
    #[serde(default)]
    pub sandbox: Option<SandboxMode>,
    /// The step connects to the network (`mix deps.get`, `cargo fetch`): the sandbox lets it.
    #[serde(default)]
    pub network: bool,
    /// Paths in the workspace the step may write but that are not outputs (not stored, not
    /// anyone's input): cargo's `target/`, a tool's cache directory.
    #[serde(default)]
    pub scratch: Vec<String>,
    /// Paths outside the workspace the step may read in `Strict` mode (`~/.hex`), besides
    /// the pipeline's `host` and system paths. Not hashed: declare what changes the result as
    /// a toolchain or an input.
    #[serde(default)]
    pub host: Vec<String>,
    /// `false`: the step is known not to rebuild byte for byte (`cairn verify --rebuild` found
    /// it so). Its entries stay local unless a build passes `--share-unreproducible`.
    #[serde(default)]
    pub reproducible: Option<bool>,
    /// Set by `cairn import` for a GitHub action (or expression) it could not turn into a
    /// command: what the step stands for. `cairn check` reports such a step until a person
    /// replaces it with a real `run` and removes this field.
    #[serde(default)]
    pub unported: Option<String>,
    /// Expand into one step per combination: `{ "otp": ["26", "27"] }`; values are usable as
    /// `{matrix.otp}` and reach the step as `MATRIX_OTP`.
    #[serde(default)]
    pub matrix: Named<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Command that starts the service in the foreground (cairn keeps its process group).
    pub start: String,
    /// Optional command to stop it gracefully before its process group is signalled.
    #[serde(default)]
    pub stop: Option<String>,
    /// A command run once before `start` (e.g. `initdb`).
    #[serde(default)]
    pub setup: Option<String>,
    /// A command run once after the service is ready (e.g. `createdb`).
    #[serde(default)]
    pub init: Option<String>,
    /// Environment of the service's own commands.
    #[serde(default)]
    pub env: Named<String>,
    /// Environment given to the steps that use the service, e.g. `DATABASE_URL`.
    #[serde(default)]
    pub export: Named<String>,
    /// A fixed port; without one cairn picks a free port, available as `{port}`.
    #[serde(default)]
    pub port: Option<u16>,
    pub ready: Readiness,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Readiness {
    pub probe: Probe,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Grace period after start during which failures don't count against `retries`.
    #[serde(default = "zero")]
    pub start_period: Dur,
}

fn default_interval() -> Dur {
    Dur(Duration::from_secs(1))
}
fn default_timeout() -> Dur {
    Dur(Duration::from_secs(5))
}
fn default_retries() -> u32 {
    5
}
fn zero() -> Dur {
    Dur(Duration::ZERO)
}

/// How to tell something is up.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub enum Probe {
    /// Exit status 0 means ready: `Command("pg_isready -h 127.0.0.1 -p {port}")`.
    Command(String),
    /// A TCP connection succeeds: `Tcp("127.0.0.1:{port}")`.
    Tcp(String),
    /// An HTTP GET answers 2xx: `Http("http://127.0.0.1:{port}/health")`.
    Http(String),
}

/// How a step is sandboxed.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum SandboxMode {
    /// Inside the workspace the step reads only its declared inputs, the outputs of the steps
    /// it needs and its own outputs, and writes only its outputs and `scratch` paths (Landlock).
    /// The default for cacheable steps.
    Enforce,
    /// Nothing is denied; every workspace file the step reads or writes undeclared is named,
    /// with the declaration to add, and a step that read one is not stored (seccomp).
    Report,
    /// `Enforce` and `Report` together, and outside the workspace only system paths, the
    /// private temp dir and the step's `host` paths are readable (and reported).
    Strict,
    /// No sandbox.
    Off,
}

impl SandboxMode {
    /// The mode in force for `step`: `over` (`--sandbox`), else the step's own, else the
    /// pipeline's for a cacheable step (`Enforce` when it says nothing), else `Off`.
    pub fn for_step(over: Option<SandboxMode>, step: &Step, pipeline: &Pipeline) -> SandboxMode {
        over.or(step.sandbox).unwrap_or(if step.cache {
            pipeline.sandbox.unwrap_or(SandboxMode::Enforce)
        } else {
            SandboxMode::Off
        })
    }

    /// Landlock applies.
    pub fn enforces(self) -> bool {
        matches!(self, SandboxMode::Enforce | SandboxMode::Strict)
    }

    /// The step is traced.
    pub fn traces(self) -> bool {
        matches!(self, SandboxMode::Report | SandboxMode::Strict)
    }

    /// Lower-case name, as `--sandbox` takes it.
    pub fn name(self) -> &'static str {
        match self {
            SandboxMode::Enforce => "enforce",
            SandboxMode::Report => "report",
            SandboxMode::Strict => "strict",
            SandboxMode::Off => "off",
        }
    }
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub enum SecretSource {
    /// An environment variable of cairn's own process.
    Env(String),
    /// A file's content (trailing newline removed).
    File(String),
    /// A command's standard output (`pass show fly/prod`, `sops -d --extract ...`).
    Command(String),
    /// In an environment: use the pipeline-level definition of the same name.
    Inherit,
}

/// An event and what it runs.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    pub on: Event,
    /// Branch globs; for `PullRequest`, the target branch. Empty: any branch.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Typed inputs of a manual run, usable as `{inputs.NAME}`.
    #[serde(default)]
    pub inputs: Named<ManualInput>,
    /// Steps to run (with everything they need).
    pub run: Vec<String>,
    /// Environments to deploy to after `run` succeeded, first matching rule per branch.
    #[serde(default)]
    pub deploy: Vec<DeployRule>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Event {
    Push,
    PullRequest,
    Manual,
}

impl Event {
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Push => "push",
            Event::PullRequest => "pull_request",
            Event::Manual => "manual",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ManualInput {
    #[serde(rename = "type")]
    pub kind: InputType,
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub enum InputType {
    String,
    Boolean,
    Number,
    Choice(Vec<String>),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DeployRule {
    /// Branch glob this rule applies to; none: every branch the trigger accepts.
    #[serde(default)]
    pub branch: Option<String>,
    /// Environment name, or a placeholder over the trigger's inputs: `"{inputs.environment}"`.
    pub environment: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Environment {
    #[serde(default)]
    pub description: Option<String>,
    /// Branch policy: deploys only from these branches (globs). Empty: any.
    #[serde(default)]
    pub branches: Vec<String>,
    /// Steps that must have succeeded for the exact current keys before a deploy.
    #[serde(default)]
    pub requires: Vec<String>,
    #[serde(default)]
    pub approval: Option<Approval>,
    /// Deploy only inside one of these windows (if any are given).
    #[serde(default)]
    pub windows: Vec<Window>,
    /// Never deploy inside a freeze (unless broken with a recorded reason).
    #[serde(default)]
    pub freezes: Vec<Freeze>,
    /// Environment-scoped secrets: name → source (`Inherit` uses the pipeline's definition).
    #[serde(default)]
    pub secrets: Named<SecretSource>,
    /// Values for placeholders, overriding the pipeline's `vars`.
    #[serde(default)]
    pub vars: Named<String>,
    /// Regions in deploy order. Empty: one deploy without `{region}`.
    #[serde(default)]
    pub regions: Vec<String>,
    /// The deploy command template (`{region}`, `{app}`, `{release}` and vars).
    pub deploy: String,
    #[serde(default)]
    pub health: Option<HealthCheck>,
    /// How long a healthy region is watched before the next one starts.
    #[serde(default)]
    pub bake: Option<Dur>,
    #[serde(default)]
    pub migration: Option<Migration>,
    /// Rollback command template for one region.
    #[serde(default)]
    pub rollback: Option<String>,
    #[serde(default)]
    pub strategy: Strategy,
    #[serde(default)]
    pub on_failure: FailurePolicy,
    #[serde(default)]
    pub notify: Vec<Notify>,
    /// How long a deploy lock lives without a heartbeat.
    #[serde(default)]
    pub lock_ttl: Option<Dur>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    pub reviewers: Vec<String>,
    /// How long an approval stays valid (default 24h).
    #[serde(default)]
    pub expires: Option<Dur>,
    /// May the person who triggered the deploy approve it? (default false)
    #[serde(default)]
    pub allow_self_approval: bool,
    /// Reviewers' public keys (`NAME:BASE64`, from `cairn keys generate NAME`). When set, only
    /// approvals signed with one of them count (`cairn approve --sign`), so a CI runner can't
    /// approve on a reviewer's behalf.
    #[serde(default)]
    pub keys: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq, Eq)]
pub enum Weekday {
    Mon,
    Tue,
    Wed,
    Thu,
    Fri,
    Sat,
    Sun,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Window {
    pub days: Vec<Weekday>,
    /// "HH:MM", inclusive.
    pub start: String,
    /// "HH:MM", exclusive.
    pub end: String,
    /// "UTC", a fixed offset "+09:00", or an IANA name "Asia/Seoul".
    #[serde(default = "utc")]
    pub timezone: String,
}

fn utc() -> String {
    "UTC".into()
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Freeze {
    /// RFC 3339 instants: "2026-12-20T00:00:00+09:00".
    pub from: String,
    pub until: String,
    pub reason: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    pub probe: Probe,
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_interval")]
    pub interval: Dur,
    #[serde(default = "default_timeout")]
    pub timeout: Dur,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Migration {
    pub run: String,
    #[serde(default)]
    pub phase: MigrationPhase,
    #[serde(default)]
    pub timeout: Option<Dur>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq)]
pub enum MigrationPhase {
    /// Once, after every region is healthy (the seed's order).
    #[default]
    AfterAll,
    /// Once, before the first region is deployed.
    BeforeFirst,
}

impl MigrationPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            MigrationPhase::AfterAll => "after-all",
            MigrationPhase::BeforeFirst => "before-first",
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub enum Strategy {
    /// Region after region (the default).
    #[default]
    Rolling,
    /// Deploy `first` (regions) and watch for `bake` before widening to the rest.
    Canary(Canary),
    /// Deploy green, verify, switch traffic, keep blue for a fast rollback.
    BlueGreen(BlueGreen),
}

impl Strategy {
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Rolling => "rolling",
            Strategy::Canary(_) => "canary",
            Strategy::BlueGreen(_) => "blue-green",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Regions deployed first (with `shares`, may be empty: every region is the canary).
    #[serde(default)]
    pub first: Vec<String>,
    /// How long each canary step is watched.
    pub bake: Dur,
    /// Traffic shares in percent, rising (e.g. `[10, 50]`): after the canary regions are
    /// deployed, `shift` moves each share of traffic to the new release, which is checked and
    /// baked at each, then at 100. A failing share moves traffic back (`shift` with share 0).
    #[serde(default)]
    pub shares: Vec<u8>,
    /// Command that sends `{share}` percent of traffic to the new release (placeholders as
    /// in `deploy`, plus `{share}`).
    #[serde(default)]
    pub shift: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// Command that moves traffic to green (placeholders as in `deploy`).
    pub switch: String,
    /// Command that moves traffic back to blue.
    #[serde(default)]
    pub switch_back: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FailurePolicy {
    /// Roll back the region that failed (default true).
    #[serde(default = "yes")]
    pub rollback_failed: bool,
    /// Also roll back the regions already deployed (default false).
    #[serde(default)]
    pub rollback_completed: bool,
}

impl Default for FailurePolicy {
    fn default() -> Self {
        FailurePolicy { rollback_failed: true, rollback_completed: false }
    }
}

/// Where deploy events go.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
pub enum Notify {
    /// Slack-compatible JSON posted to the URL held by the named secret.
    Slack(Webhook),
    /// A deploy metric (Datadog-style series) posted to `url` with environment and app tags.
    Metric(Metric),
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// Secret holding the webhook URL.
    pub url_secret: String,
    /// Events to send (empty: all).
    #[serde(default)]
    pub events: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Metric {
    pub url: String,
    /// Secret holding the API key, sent as `DD-API-KEY`.
    #[serde(default)]
    pub api_key_secret: Option<String>,
    #[serde(default = "metric_name")]
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

fn metric_name() -> String {
    "cairn.deploy".into()
}

/// Deploy-event names accepted in `Webhook.events`.
pub const DEPLOY_EVENTS: &[&str] = &[
    "queued",
    "awaiting-approval",
    "approved",
    "region-started",
    "region-healthy",
    "region-failed",
    "migration-done",
    "migration-failed",
    "traffic-shifted",
    "canary-failed",
    "rolled-back",
    "finished",
];
