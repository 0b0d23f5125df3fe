//! Command-line declarations (clap). No I/O here: `commands/` does the work.
//! Doc comments on flags are the long help.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

/// cairn: reproducible build-and-deploy pipelines with content-addressed caching.
///
/// Exit codes: 0 success, 1 a step failed, 2 usage error, 3 invalid pipeline,
/// 4 I/O or store problem, 5 a gate is closed, 130 interrupted.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about, long_about, after_help = crate::error::exit_codes_help())]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct PipelineArg {
    /// The pipeline file (RON).
    #[arg(short = 'p', long = "pipeline", default_value = "pipelines/cairn.ron", value_name = "FILE")]
    pub pipeline: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a pipeline: syntax, schema, names, cycles, globs, placeholders.
    Check(PipelineArg),
    /// Draw the step graph.
    Graph {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Output format.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Show what a trigger would run: steps in order, each hit or will-run and why, and each
    /// environment's deploy phases.
    Plan(PlanArgs),
    /// Run steps (default: all) and their dependencies; unchanged steps are restored from the store.
    Build(BuildArgs),
    /// Inspect and maintain the local store.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Explain what changed in a step's key since its previous entry.
    Why(WhyArgs),
    /// Check that stored steps are reproducible: rebuild them in a scratch copy of the
    /// worktree and compare their outputs with the stored entries, file by file (exit 1 on a
    /// difference).
    Verify(VerifyArgs),
    /// Run steps traced (report mode) and print the declarations they lack (inputs, input
    /// sets, needs, outputs, network, host paths) as RON, or add them with --apply.
    Learn(LearnArgs),
    /// Run history, run diffs, and pictures (HTML timeline, Chrome trace, badge).
    Report(ReportArgs),
    /// Turn another CI system's workflow into a pipeline.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write a workflow for another CI system that runs a pipeline.
    #[command(subcommand)]
    Export(ExportCommand),
    /// What cairn is for, in seconds: a small project built cold, warm, restored, and after
    /// one change (exactly its dependents run), then `why` and the HTML report.
    Demo(DemoArgs),
    /// Serve a remote cache (Turborepo remote-cache API v8) for CI runners and turbo.
    Serve(ServeArgs),
    /// Signing keys for remote cache entries.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Deploy an environment: gates, lease, region waves, migration (or `resume`, `history`).
    Deploy(DeployCli),
    /// Approve the current (or a given) release of an environment.
    Approve(ApproveArgs),
    /// Deploy leases: who holds them, and forced release (audited).
    #[command(subcommand)]
    Lock(LockCommand),
    /// Run an environment's rollback command, region by region in reverse order.
    Rollback(RollbackArgs),
    /// Do what the workflow does for a trigger: build its steps, then deploy.
    Run(RunArgs),
}

/// `cairn deploy ENV`, `cairn deploy resume ENV`, `cairn deploy history ENV`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DeployCli {
    #[command(subcommand)]
    pub action: Option<DeployAction>,
    /// The environment to deploy.
    #[arg(required = true)]
    pub env: Option<String>,
    #[command(flatten)]
    pub target: EnvTarget,
    #[command(flatten)]
    pub gates: GateFlags,
}

#[derive(Debug, Subcommand)]
pub enum DeployAction {
    /// Continue a halted rollout at its first unfinished phase.
    Resume {
        /// The environment whose halted rollout to continue.
        env: String,
        #[command(flatten)]
        target: EnvTarget,
        #[command(flatten)]
        gates: GateFlags,
    },
    /// Every run of an environment: who, which release, when, its result, halts and resumes.
    History {
        /// The environment.
        env: String,
        #[command(flatten)]
        target: EnvTarget,
        /// The runs and their events as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Where an environment's pipeline, store and deploy ledger are: shared by `deploy`,
/// `approve`, `lock`, `rollback`.
#[derive(Debug, Args, Clone)]
pub struct EnvTarget {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub store: StoreArg,
    #[command(flatten)]
    pub ledger: RemoteEndpoint,
}

/// What the gates of a deploy get told: shared by `deploy`, `deploy resume` and `run`.
#[derive(Debug, Args, Clone, Default)]
pub struct GateFlags {
    /// The branch being deployed (default: GITHUB_REF_NAME, else git's current branch).
    #[arg(long)]
    pub branch: Option<String>,
    /// Deploy although a window is closed or a freeze is on; the reason is recorded.
    #[arg(long, value_name = "REASON")]
    pub break_glass: Option<String>,
    /// A signed approval (from `cairn approve --sign`), for CI: verified against the
    /// environment's `approval.keys` and recorded before the gates are checked.
    #[arg(long, value_name = "TOKEN", env = "CAIRN_APPROVAL", hide_env_values = true)]
    pub approval: Option<String>,
}

/// The remote: its URL, token and namespace. It holds the shared cache and, when it is
/// `cairn serve`, the deploy ledger (approvals, leases, runs, the journal) every runner shares.
#[derive(Debug, Args, Clone, Default)]
pub struct RemoteEndpoint {
    /// Remote cache base URL (overrides the pipeline's `remote.url`; empty: none).
    #[arg(long, env = "CAIRN_REMOTE", value_name = "URL")]
    pub remote: Option<String>,
    /// Bearer token for the remote (uploads and deploys need write access).
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Team / slug on the remote (default: the pipeline's `remote.namespace`, else its name).
    #[arg(long, env = "CAIRN_NAMESPACE")]
    pub namespace: Option<String>,
}

/// What `cairn deploy` was asked to do.
pub enum DeployCommand {
    Start(DeployArgs),
    Resume(DeployArgs),
    History { env: String, pipeline: PipelineArg, store: StoreArg, ledger: RemoteEndpoint, json: bool },
}

#[derive(Debug, Clone)]
pub struct DeployArgs {
    pub env: String,
    pub pipeline: PipelineArg,
    pub store: StoreArg,
    pub branch: Option<String>,
    pub break_glass: Option<String>,
    pub approval: Option<String>,
    pub ledger: RemoteEndpoint,
}

impl DeployArgs {
    pub fn new(env: String, target: &EnvTarget, gates: &GateFlags) -> DeployArgs {
        DeployArgs {
            env,
            pipeline: target.pipeline.clone(),
            store: target.store.clone(),
            branch: gates.branch.clone(),
            break_glass: gates.break_glass.clone(),
            approval: gates.approval.clone(),
            ledger: target.ledger.clone(),
        }
    }
}

impl DeployCli {
    /// What was asked, as the command layer takes it.
    pub fn command(&self) -> DeployCommand {
        match &self.action {
            Some(DeployAction::Resume { env, target, gates }) => {
                DeployCommand::Resume(DeployArgs::new(env.clone(), target, gates))
            }
            Some(DeployAction::History { env, target, json }) => DeployCommand::History {
                env: env.clone(),
                pipeline: target.pipeline.clone(),
                store: target.store.clone(),
                ledger: target.ledger.clone(),
                json: *json,
            },
            None => {
                DeployCommand::Start(DeployArgs::new(self.env.clone().unwrap_or_default(), &self.target, &self.gates))
            }
        }
    }
}

#[derive(Debug, Args)]
pub struct ApproveArgs {
    pub env: String,
    #[command(flatten)]
    pub target: EnvTarget,
    /// The release to approve (default: the current one).
    #[arg(long)]
    pub release: Option<String>,
    /// The reviewer approving.
    #[arg(long, env = "CAIRN_ACTOR")]
    pub by: String,
    #[arg(long)]
    pub comment: Option<String>,
    /// How long the approval is valid (default: the environment's `approval.expires`, else 24h).
    #[arg(long)]
    pub expires: Option<String>,
    /// Sign the approval with this private key (`cairn keys generate NAME`, NAME being the
    /// reviewer) and print it as a token for CI (`cairn deploy --approval TOKEN`).
    #[arg(long, value_name = "KEYFILE")]
    pub sign: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum LockCommand {
    /// Who holds an environment's lease, and who waits.
    Status {
        env: String,
        #[command(flatten)]
        target: EnvTarget,
    },
    /// Break a lease (recorded in the audit log).
    Release {
        env: String,
        #[command(flatten)]
        target: EnvTarget,
        #[arg(long)]
        force: bool,
        #[arg(long)]
        reason: Option<String>,
    },
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    pub env: String,
    #[command(flatten)]
    pub target: EnvTarget,
    /// The release to roll back to (available to the command as {release}).
    #[arg(long)]
    pub to: Option<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub store: StoreArg,
    #[arg(long, value_enum)]
    pub event: EventArg,
    #[command(flatten)]
    pub gates: GateFlags,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

impl RunArgs {
    pub fn event_name(&self) -> &'static str {
        crate::model::Event::from(self.event).as_str()
    }
}

#[derive(Debug, Args, Clone, Default)]
pub struct RemoteArgs {
    #[command(flatten)]
    pub endpoint: RemoteEndpoint,
    /// Private key to sign uploads with (from `cairn keys generate`).
    #[arg(long, env = "CAIRN_SIGNING_KEY", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Fail the build if the remote cache is unreachable (default: warn and go on locally).
    #[arg(long)]
    pub remote_required: bool,
    /// Read from the remote but never upload.
    #[arg(long)]
    pub no_upload: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: std::net::SocketAddr,
    /// Directory holding the artifacts (and, with --s3, only staging and bookkeeping).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Keep artifacts in an S3-compatible bucket: s3://BUCKET/PREFIX (AWS_* variables for
    /// credentials; AWS_ENDPOINT_URL for S3-compatible servers).
    #[arg(long, value_name = "URL")]
    pub s3: Option<String>,
    /// Tokens file: `SCOPE NAMESPACES TOKEN` per line (see docs).
    #[arg(long, value_name = "FILE")]
    pub tokens: PathBuf,
    /// Largest accepted artifact.
    #[arg(long, default_value = "2GiB")]
    pub max_body: String,
    /// Total size kept; least recently used artifacts are evicted above it.
    #[arg(long, default_value = "50GiB")]
    pub quota: String,
    /// Time allowed for a request's headers.
    #[arg(long, default_value = "10s")]
    pub header_timeout: String,
    /// Time allowed between two chunks of a request body.
    #[arg(long, default_value = "30s")]
    pub body_timeout: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Make a signing key pair: writes the private key, prints the public key to trust.
    Generate {
        /// Key name, shown in signatures (e.g. ci-2026).
        #[arg(long)]
        name: String,
        /// Where to write the private key (mode 0600).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct WhyArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// The step (a matrix step's name explains every expansion).
    pub step: String,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// With a remote cache, a step never built here is compared with the newest entry the
    /// remote holds for it (what CI built last).
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    pub store: StoreArg,
    /// How many recent runs to show (and plot in --html).
    #[arg(long, default_value_t = 20)]
    pub last: usize,
    /// Compare two runs step by step: ids, id prefixes, `last`, `last~1` ...
    #[arg(long, num_args = 2, value_names = ["RUN_A", "RUN_B"])]
    pub diff: Option<Vec<String>>,
    /// The run for --html / --trace / --badge (default: the last one).
    #[arg(long)]
    pub run: Option<String>,
    /// Write a self-contained HTML page: timeline and hit-rate trend.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
    /// Write Chrome trace-event JSON (open in Perfetto).
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Write an SVG status badge.
    #[arg(long, value_name = "FILE")]
    pub badge: Option<PathBuf>,
    /// History as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SummaryFormat {
    Table,
    Json,
    None,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum GraphFormat {
    Mermaid,
    Dot,
    Text,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum EventArg {
    Push,
    #[value(name = "pull_request", alias = "pull-request")]
    PullRequest,
    Manual,
}

impl From<EventArg> for crate::model::Event {
    fn from(e: EventArg) -> Self {
        match e {
            EventArg::Push => crate::model::Event::Push,
            EventArg::PullRequest => crate::model::Event::PullRequest,
            EventArg::Manual => crate::model::Event::Manual,
        }
    }
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Don't look at the store (no toolchain probes, no input hashing).
    #[arg(long)]
    pub no_cache_state: bool,
    /// The event to plan for.
    #[arg(long, value_enum)]
    pub event: EventArg,
    /// The branch pushed to, or for pull requests the target branch.
    #[arg(long)]
    pub branch: Option<String>,
    /// A manual run's input, NAME=VALUE (repeatable).
    #[arg(long = "input", value_name = "NAME=VALUE")]
    pub inputs: Vec<String>,
    /// Print the plan as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub remote: RemoteArgs,
}

#[derive(Debug, Args, Clone)]
pub struct StoreArg {
    /// The local store (default: `cache/` beside `pipelines/`).
    #[arg(long = "cache-dir", env = "CAIRN_CACHE_DIR", value_name = "DIR")]
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Rebuild the steps and compare (the only check `cairn verify` makes).
    #[arg(long)]
    pub rebuild: bool,
    /// Steps to check (default: every cacheable step with a stored entry).
    pub steps: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// A GitHub Actions workflow (`.github/workflows/*.yml`) as a pipeline that `cairn check`
    /// accepts: jobs become steps, deploy jobs environments (docs/github-actions.md).
    GithubActions {
        /// The workflow file.
        workflow: PathBuf,
        /// Where to write the pipeline (default: pipelines/NAME.ron; `-` for stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The pipeline's name (default: the workflow's `name:`, as a slug).
        #[arg(long)]
        name: Option<String>,
        /// Replace an existing output file.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// A GitHub Actions workflow running the pipeline one job per step, sharing the remote
    /// cache (docs/github-actions.md).
    GithubActions {
        #[command(flatten)]
        pipeline: PipelineArg,
        /// Where to write the workflow (default: stdout).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// The action that installs cairn in each job.
        #[arg(long, default_value = "./.github/actions/setup-cairn")]
        setup_action: String,
        /// The cairn version it installs (default: this one's).
        #[arg(long)]
        cairn_version: Option<String>,
        /// The runner label of every job.
        #[arg(long, default_value = "ubuntu-24.04")]
        runs_on: String,
    },
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where to write the demo project (replaced if an earlier demo is there).
    #[arg(long, default_value = "cairn-demo")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct LearnArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Steps to learn (they run, forced; what they need runs or is restored as usual).
    #[arg(required = true)]
    pub steps: Vec<String>,
    /// Add the declarations to the pipeline file (comments and layout kept) instead of
    /// printing them.
    #[arg(long)]
    pub apply: bool,
    /// Also learn the paths outside the workspace the steps read (`host`), under the strict
    /// sandbox.
    #[arg(long)]
    pub strict: bool,
    /// Don't stream the steps' output.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub pipeline: PipelineArg,
    #[command(flatten)]
    pub store: StoreArg,
    /// Steps to run, with everything they need (default: every step).
    /// A matrix step's name selects all its expansions.
    pub steps: Vec<String>,
    /// How many steps may run at once (default: the number of cores).
    #[arg(short = 'j', long = "jobs")]
    pub jobs: Option<usize>,
    /// Keep running independent steps after one failed.
    #[arg(long)]
    pub keep_going: bool,
    /// Run this step even if its result is stored (repeatable).
    #[arg(long = "force", value_name = "STEP")]
    pub force: Vec<String>,
    /// Don't stream step output (the stored logs keep it).
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// The end-of-run summary: a table on stderr, JSON on stdout, or none.
    #[arg(long, value_enum, default_value_t = SummaryFormat::Table)]
    pub summary: SummaryFormat,
    /// Also write the summary JSON to this file.
    #[arg(long, value_name = "PATH")]
    pub summary_file: Option<PathBuf>,
    #[command(flatten)]
    pub remote: RemoteArgs,
    /// Fail at once (exit 5) if another build holds this workspace, instead of waiting.
    #[arg(long)]
    pub no_wait: bool,
    /// After the build, rebuild this share of its hits (0.0–1.0, chosen at random) in a
    /// scratch copy and compare them with their entries, as `cairn verify --rebuild` does; a
    /// step found not reproducible fails the build (exit 1) and is named in the summary.
    #[arg(long, value_name = "FRACTION")]
    pub rebuild_sample: Option<f64>,
    /// Upload the entries of steps marked `reproducible: false` to the remote too.
    #[arg(long)]
    pub share_unreproducible: bool,
    /// Sandbox every step this way, whatever the pipeline says.
    #[arg(long, value_enum)]
    pub sandbox: Option<SandboxArg>,
    /// Fail a step that should be sandboxed where the machine cannot (no Landlock for
    /// `enforce`, no seccomp user notification for `report`), instead of running it
    /// unsandboxed with a warning.
    #[arg(long)]
    pub require_sandbox: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum SandboxArg {
    /// Landlock: a step reads only what it declared (the default for cacheable steps).
    Enforce,
    /// Trace: name every undeclared read and write, never store a step that read one.
    Report,
    /// Both, and outside the workspace only system paths and the step's `host` paths.
    Strict,
    Off,
}

impl From<SandboxArg> for crate::model::SandboxMode {
    fn from(a: SandboxArg) -> Self {
        match a {
            SandboxArg::Enforce => crate::model::SandboxMode::Enforce,
            SandboxArg::Report => crate::model::SandboxMode::Report,
            SandboxArg::Strict => crate::model::SandboxMode::Strict,
            SandboxArg::Off => crate::model::SandboxMode::Off,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Entries, sizes, hit counts.
    Stats {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Evict least recently used entries above a size cap; remove orphans.
    Gc {
        #[command(flatten)]
        store: StoreArg,
        /// The cap, e.g. 10GiB, 500MB (default: the pipeline's `cache.max_size`, else 10GiB).
        #[arg(long)]
        max_size: Option<String>,
        /// Pipeline whose `cache.max_size` applies.
        #[arg(short = 'p', long = "pipeline", value_name = "FILE")]
        pipeline: Option<PathBuf>,
        /// Show what would go, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-hash every blob; drop and report corrupt entries.
    Verify {
        #[command(flatten)]
        store: StoreArg,
    },
    /// Pin the current entries of steps (never evicted), or unpin them.
    Pin {
        #[command(flatten)]
        pipeline: PipelineArg,
        #[command(flatten)]
        store: StoreArg,
        /// Steps whose current entries to pin.
        #[arg(required = true)]
        steps: Vec<String>,
        #[arg(long)]
        unpin: bool,
    },
    /// Drop every entry of steps and of the steps that depend on them, so the next build
    /// rebuilds them (a step found not reproducible, a suspected bad entry).
    Quarantine {
        #[command(flatten)]
        pipeline: PipelineArg,
        #[command(flatten)]
        store: StoreArg,
        /// Steps whose entries (and their dependents') to drop.
        #[arg(required = true)]
        steps: Vec<String>,
    },
}
