//! One module per subcommand: load → plan → (execute) → report. Only this layer and the
//! effect layers below it touch files; `model/` and `plan/` stay pure.

pub mod build;
pub mod cache;
pub mod check;
pub mod demo;
pub mod deploy;
pub mod graph;
pub mod interop;
pub mod learn;
pub mod plan;
pub mod report;
pub mod serve;
pub mod verify;
pub mod why;

use crate::error::Error;
use crate::model::Pipeline;
use std::path::Path;

/// Where the remote is, once flags, environment and the pipeline's `remote` are combined.
pub struct Endpoint {
    pub url: String,
    pub token: Option<String>,
    pub namespace: String,
}

/// The remote a command talks to, if one is configured (an empty `--remote` / `CAIRN_REMOTE`
/// turns the pipeline's off).
pub fn endpoint(e: &crate::cli::RemoteEndpoint, p: &Pipeline) -> Option<Endpoint> {
    let settings = p.remote.clone().unwrap_or_default();
    let url = e.remote.clone().or(settings.url).filter(|u| !u.is_empty())?;
    Some(Endpoint {
        url,
        token: e.token.clone().filter(|t| !t.is_empty()),
        namespace: e.namespace.clone().or(settings.namespace).unwrap_or_else(|| p.name.clone()),
    })
}

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

/// The project root of a pipeline: the directory holding `pipelines/`, or the file's own
/// directory when it is not in a `pipelines/` folder.
pub fn project_root(pipeline: &Path) -> std::path::PathBuf {
    let abs = std::path::absolute(pipeline).unwrap_or_else(|_| pipeline.to_path_buf());
    let dir = abs.parent().map(Path::to_path_buf).unwrap_or_else(|| ".".into());
    let root = if dir.file_name().is_some_and(|n| n == "pipelines") {
        dir.parent().map(Path::to_path_buf).unwrap_or(dir)
    } else {
        dir
    };
    root.canonicalize().unwrap_or(root)
}

/// Open the store: `--cache-dir` / `CAIRN_CACHE_DIR`, else `cache/` in the project root.
pub fn open_store(arg: &crate::cli::StoreArg, root: &Path) -> Result<(crate::cache::Store, std::path::PathBuf), Error> {
    let dir = arg.cache_dir.clone().unwrap_or_else(|| root.join("cache"));
    let store = crate::cache::Store::open(&dir).map_err(|e| {
        Error::Io(format!(
            "error: cannot open the store at {}: {e}\n  hint: check the directory is writable, or pass --cache-dir",
            dir.display()
        ))
    })?;
    for w in store.warnings() {
        eprintln!("warning: {w}");
    }
    Ok((store, dir))
}

/// "10GiB", "500MB", "123" (bytes).
pub fn parse_size(s: &str) -> Result<u64, Error> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 =
        num.parse().map_err(|_| Error::Usage(format!("error: `{s}` is not a size; write it like 10GiB or 500MB")))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tb" => 1e12,
        "tib" => 1024f64.powi(4),
        u => {
            return Err(Error::Usage(format!(
                "error: unknown size unit `{u}` in `{s}`; use B, KB, KiB, MB, MiB, GB, GiB"
            )))
        }
    };
    Ok((n * mult) as u64)
}
