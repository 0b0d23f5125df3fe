//! # cairn
//!
//! Declarative, reproducible build-and-deploy pipelines with content-addressed caching.
//!
//! ## Layers, and who may call whom
//! ```text
//! main.rs    → lib::run          thin: parse arguments, map the result to an exit code
//! cli        clap declarations    no I/O
//! commands   one module a command load → plan → execute → report; the only caller of effects
//! error      the top-level error  wraps each layer's error; the exit code follows from its type
//!
//! cairn-core (crates/cairn-core)  PURE, a crate of its own so the compiler keeps it so:
//!   model    the RON schema, parsing, validation with located diagnostics
//!   plan     step graph, keys and dirty reasons, required steps, trigger plans, drawings
//!   gates    deploy gate verdicts (clock and time zones passed in), release names
//!   events   how steps ended: what exec emits and report reads
//!   keys     ed25519 signing of remote entries
//!
//! inputs     effects              walking the tree, globs, hashing, the stat cache, journals
//! cache      effects              the store: SQLite index (sole owner), blobs, archives; remote, S3
//! exec       effects              the dispatcher; prepare, jobs, the runner seam, probes,
//!                                 processes, services, secrets, the workspace lock
//! deploy     effects              gates with the world plugged in, leases, runner, ledger
//! report     over summaries       run summary, table, JSON, Markdown, HTML, trace, badge
//! server     effects              `cairn serve`: the remote cache (Turborepo API v8), ledger
//! interop    text to text         GitHub Actions workflows imported and exported
//! clock, interrupt                leaves: the time in words; Ctrl-C
//! ```
//! Who may import whom is checked by `tests/suite/architecture.rs`: report, cache and server
//! never import exec; inputs imports no other layer; the leaves import nothing; nothing but
//! `commands` and `lib` imports `commands` or `cli`; and the layers form no cycle. The design,
//! with the seams, is in `docs/architecture.md`.

// `println!` and friends that never panic. The standard ones panic when stdout or stderr is a
// closed pipe (`cairn graph | head -c 100`) or a full disk; these drop the output instead and
// the command ends with the exit code of its work. Defined before the modules, so they shadow
// the standard macros in every one of them.
macro_rules! println {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! print {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout(), $($t)*);
    }};
}
macro_rules! eprintln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($t)*);
    }};
}
macro_rules! eprint {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stderr(), $($t)*);
    }};
}

// The pure core lives in its own crate (crates/cairn-core); its modules keep their paths.
pub use cairn_core::{events, keys, model, plan};

pub mod cache;
pub mod cli;
pub mod clock;
pub mod commands;
pub mod deploy;
pub mod error;
pub mod exec;
pub mod inputs;
pub mod interop;
pub mod interrupt;
pub mod report;
pub mod server;

use clap::Parser;
pub use error::{exit, Error};

/// Run cairn with the process's arguments; returns the exit code.
pub fn run() -> u8 {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print(); // clap's own printing ignores a closed pipe
            return if e.use_stderr() { exit::USAGE } else { exit::OK };
        }
    };
    match dispatch(cli) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}

fn dispatch(cli: cli::Cli) -> Result<(), Error> {
    use cli::Command;
    match cli.command {
        Command::Check(p) => commands::check::run(&p),
        Command::Graph { pipeline, format } => commands::graph::run(&pipeline, format),
        Command::Plan(args) => commands::plan::run(&args),
        Command::Build(args) => commands::build::run(&args),
        Command::Cache(cmd) => commands::cache::run(&cmd),
        Command::Why(args) => commands::why::run(&args),
        Command::Verify(args) => commands::verify::run(&args),
        Command::Learn(args) => commands::learn::run(&args),
        Command::Demo(args) => commands::demo::run(&args),
        Command::Import(c) => commands::interop::import(&c),
        Command::Export(c) => commands::interop::export(&c),
        Command::Report(args) => commands::report::run(&args),
        Command::Serve(args) => commands::serve::run(&args),
        Command::Keys(cmd) => commands::serve::keys(&cmd),
        Command::Deploy(d) => commands::deploy::run(&d.command()),
        Command::Approve(a) => commands::deploy::approve(&a),
        Command::Lock(c) => commands::deploy::lock(&c),
        Command::Rollback(a) => commands::deploy::rollback(&a),
        Command::Run(a) => commands::deploy::run_trigger(&a),
    }
}
