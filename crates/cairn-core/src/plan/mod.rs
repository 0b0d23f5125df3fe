//! Planning: from a validated [`Pipeline`](crate::model::Pipeline) to printable data.
//!
//! **Pure**, like `model/`: no filesystem, processes, clocks or network. Everything a plan
//! depends on from the outside world (branch, manual inputs, and later input digests and
//! cache state) is passed in as values, so planner tests need no files.
//!
//! - [`graph`]: matrix expansion and a stable topological order of steps.
//! - [`trigger`]: which steps and environments an event runs; deploy phases and gates.
//! - [`render`]: Mermaid, DOT and text drawings of the graph.
//! - [`undeclared`]: what a traced step touched that it did not declare, and the fix.
//! - [`freshness`]: which steps a build would restore or run, and why, over a lookup trait
//!   the stores implement.

pub mod freshness;
pub mod graph;
pub mod key;
pub mod lockfile;
pub mod render;
pub mod trigger;
pub mod undeclared;

pub use freshness::{predict, Known, Lookup, StepState};
pub use graph::{Graph, GraphError, Node};
pub use trigger::{plan_trigger, EnvPlan, Gate, GateStatus, Phase, RunPlan, TriggerError, TriggerRequest};
