//! One module per subcommand: load → plan → (execute) → report. Only this layer and the
//! effect layers below it touch files; `model/` and `plan/` stay pure.

pub mod check;
pub mod graph;
pub mod plan;

use crate::error::Error;
use crate::model::Pipeline;
use std::path::Path;

/// Read and validate a pipeline file.
pub fn load_pipeline(path: &Path) -> Result<Pipeline, Error> {
    let bytes = std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        hint: if source.kind() == std::io::ErrorKind::NotFound {
            "pass the pipeline with `-p FILE`; pipelines live in `pipelines/*.ron`".into()
        } else {
            "check the file's permissions".into()
        },
        source,
    })?;
    crate::model::load(&path.display().to_string(), &bytes).map_err(Error::Pipeline)
}
