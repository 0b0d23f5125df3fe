//! cairn's integration tests: one binary, scenarios per module, a small builder in `util`.

mod suite;
mod util;
