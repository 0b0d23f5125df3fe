//! # cairn-core
//!
//! The pure core of cairn: everything that decides, nothing that does. The main crate loads
//! files, walks trees, runs processes and talks to stores and servers; it hands this crate
//! values and gets values back.
//!
//! ```text
//! model     the RON schema as users write it, parsing, validation with located diagnostics
//! plan      the step graph, key manifests and keys, dirty reasons, trigger plans, drawings,
//!           lock-file diffs
//! ledger    the deploy ledger's operations and answers (applied by the store)
//! keys      ed25519 signing of remote entries (the caller draws the randomness)
//! events    how a step ended and why: what executors emit and reports read
//! gates     deploy gates as verdicts (windows, freezes, approvals, branches), release names
//! encoding  base64 and URL encoding
//! time      RFC 3339 with a given offset
//! ```
//!
//! Purity is kept by the compiler: this crate's `Cargo.toml` has no database, archive,
//! compression, filesystem-walking, HTTP, async-runtime or libc dependency, and
//! `tests/suite/architecture.rs` in the main crate fails if one appears.

pub mod encoding;
pub mod events;
pub mod gates;
pub mod keys;
pub mod ledger;
pub mod model;
pub mod plan;
pub mod time;
