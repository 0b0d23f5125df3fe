//! `cairn serve`: a remote cache speaking the Turborepo remote-cache HTTP API v8.
//!
//! Endpoints: `PUT`/`GET`/`HEAD /v8/artifacts/{hash}`, `GET /v8/artifacts/status`,
//! `POST /v8/artifacts/events`, and the batch query `POST /v8/artifacts`. cairn's own: the step
//! index `GET /v8/artifacts/steps/{id}` and the deploy ledger `POST /v8/cairn/ledger`
//! ([`crate::deploy::ledger`]: approvals, leases, runs and the journal, shared by CI runners). The namespace of an
//! artifact is the `teamId`, `slug` or `team` query parameter (in that order), else `default`.
//!
//! # Guarantees
//! - **Write-once**: a body is staged in `.tmp/`, fsynced, and published with `link(2)`, which
//!   fails if the name exists: concurrent uploads of one key can't interleave, and a killed
//!   upload is never visible. An identical re-upload is a no-op success; different bytes for an
//!   existing key are refused with 409.
//! - **Integrity**: the body's blake3 is computed while it is received; when the client states
//!   it (`x-cairn-blob-digest`, as cairn does) a mismatch is refused.
//! - **Limits**: bodies over `--max-body` are refused with 413 from `Content-Length` before any
//!   byte is read (and cut off at the limit otherwise); request headers must arrive within
//!   `--header-timeout` and every body chunk within `--body-timeout` (no slowloris).
//! - **Quota**: above `--quota` bytes, least recently used artifacts are evicted.
//! - **Shutdown**: SIGTERM/SIGINT stop accepting and let requests in flight finish.
//! - **Trust**: see [`tokens`]; tokens are never logged.

// Handlers return axum `Response`s as early-exit errors (the HTTP answer itself); boxing them
// would only add noise.
#![allow(clippy::result_large_err)]

mod artifacts;
pub mod tokens;

use artifacts::{evict, get_artifact, latest_for_step, paths, put_artifact, read_meta};

use axum::body::Body;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokens::{Access, Scope, Tokens};

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub listen: SocketAddr,
    /// Local directory: artifacts, staging, and the LRU bookkeeping.
    pub store: PathBuf,
    /// When set, artifacts live in this S3-compatible bucket instead (staging stays local;
    /// the quota is left to the bucket's lifecycle rules).
    pub s3: Option<crate::cache::s3::S3>,
    pub tokens: Tokens,
    pub max_body: u64,
    pub quota: u64,
    pub header_timeout: Duration,
    pub body_timeout: Duration,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Meta {
    size: u64,
    digest: String,
    duration_ms: u64,
    tag: Option<String>,
}

struct Lru {
    /// (namespace, hash) → (size, last used)
    items: HashMap<(String, String), (u64, SystemTime)>,
    total: u64,
}

struct AppState {
    opts: ServeOptions,
    lru: Mutex<Lru>,
    events: Mutex<(u64, u64)>,
    /// Each namespace's deploy ledger, opened on first use.
    ledgers: Mutex<HashMap<String, Arc<Mutex<crate::cache::index::Index>>>>,
}

type Shared = Arc<AppState>;

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    let body = serde_json::json!({"error": {"code": code, "message": message}});
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn valid_hash(h: &str) -> bool {
    !h.is_empty() && h.len() <= 128 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

fn namespace(q: &HashMap<String, String>) -> Result<String, Response> {
    let ns = q
        .get("teamId")
        .or_else(|| q.get("slug"))
        .or_else(|| q.get("team"))
        .cloned()
        .unwrap_or_else(|| "default".into());
    // A namespace is a directory of the store: it must start with a letter or digit, so no
    // token (not even `*`) can name the server's own `.tmp/`, `.ledger/` or `.steps/`.
    let ok = ns.len() <= 100
        && ns.as_bytes().first().is_some_and(u8::is_ascii_alphanumeric)
        && ns.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    if ok {
        Ok(ns)
    } else {
        Err(error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "invalid team or slug: letters, digits, `-`, `_` and `.`, starting with a letter or digit",
        ))
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers.get("authorization")?.to_str().ok()?.strip_prefix("Bearer ").map(str::trim)
}

fn authorize(st: &AppState, headers: &HeaderMap, ns: &str, need: Scope) -> Result<(), Response> {
    match st.opts.tokens.check(bearer(headers), ns, need) {
        Access::Granted => Ok(()),
        Access::Unauthenticated => Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "missing or unknown token")),
        Access::Forbidden => Err(error(
            StatusCode::FORBIDDEN,
            "forbidden",
            if need == Scope::Write {
                "this token may not write to this team"
            } else {
                "this token may not read this team"
            },
        )),
    }
}

/// The namespace of a request whose token may read it (`Granted<false>`) or write it
/// (`Granted<true>`). Anything else is answered (400, 401 or 403) before the handler runs.
struct Granted<const WRITE: bool>(String);

impl<const WRITE: bool> axum::extract::FromRequestParts<Shared> for Granted<WRITE> {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, st: &Shared) -> Result<Self, Response> {
        let Query(q) = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map_err(|_| error(StatusCode::BAD_REQUEST, "bad_request", "invalid query string"))?;
        let need = if WRITE { Scope::Write } else { Scope::Read };
        access(st, &q, &parts.headers, need).map(Granted)
    }
}

/// The namespace of a request, once its token may `need` it.
fn access(st: &AppState, q: &HashMap<String, String>, headers: &HeaderMap, need: Scope) -> Result<String, Response> {
    let ns = namespace(q)?;
    authorize(st, headers, &ns, need)?;
    Ok(ns)
}

async fn status() -> Response {
    (StatusCode::OK, [("content-type", "application/json")], r#"{"status":"enabled"}"#).into_response()
}

async fn events(State(st): State<Shared>, _: Granted<false>, body: axum::body::Bytes) -> Response {
    if let Ok(serde_json::Value::Array(list)) = serde_json::from_slice::<serde_json::Value>(&body) {
        let mut ev = st.events.lock().unwrap_or_else(|p| p.into_inner());
        for e in list {
            match e["event"].as_str() {
                Some("HIT") => ev.0 += 1,
                Some("MISS") => ev.1 += 1,
                _ => {}
            }
        }
    }
    (StatusCode::OK, [("content-type", "application/json")], "{}").into_response()
}

/// `POST /v8/artifacts {"hashes": [...]}`: which exist, with size, duration and tag.
async fn query(State(st): State<Shared>, Granted(ns): Granted<false>, body: axum::body::Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "expected {\"hashes\": [...]}");
    };
    let Some(hashes) = req["hashes"].as_array() else {
        return error(StatusCode::BAD_REQUEST, "bad_request", "expected {\"hashes\": [...]}");
    };
    if hashes.len() > 10_000 {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "at most 10000 hashes per query");
    }
    let mut out = serde_json::Map::new();
    for h in hashes.iter().filter_map(|h| h.as_str()) {
        let v = if !valid_hash(h) {
            serde_json::json!({"error": {"message": "invalid hash"}})
        } else {
            let found = match &st.opts.s3 {
                Some(s3) => s3
                    .get(&ns, &format!("{h}.meta"))
                    .await
                    .ok()
                    .flatten()
                    .and_then(|b| serde_json::from_slice::<Meta>(&b).ok()),
                None => {
                    let (body_path, meta_path) = paths(&st, &ns, h);
                    read_meta(&meta_path).filter(|_| body_path.exists())
                }
            };
            match found {
                Some(m) => serde_json::json!({"size": m.size, "taskDurationMs": m.duration_ms, "tag": m.tag}),
                None => serde_json::json!({"error": {"message": "not found"}}),
            }
        };
        out.insert(h.to_string(), v);
    }
    (StatusCode::OK, [("content-type", "application/json")], serde_json::Value::Object(out).to_string()).into_response()
}

/// The namespace's deploy ledger database, `.ledger/{blake3(namespace)}.sqlite` in the store
/// directory (also with `--s3`: a ledger needs transactions, which a bucket doesn't have).
fn ledger_of(st: &AppState, ns: &str) -> Result<Arc<Mutex<crate::cache::index::Index>>, String> {
    let mut all = st.ledgers.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(l) = all.get(ns) {
        return Ok(l.clone());
    }
    let dir = st.opts.store.join(".ledger");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(format!("{}.sqlite", &blake3::hash(ns.as_bytes()).to_hex()[..32]));
    let index = crate::cache::index::Index::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let l = Arc::new(Mutex::new(index));
    all.insert(ns.to_string(), l.clone());
    Ok(l)
}

/// `POST /v8/cairn/ledger`: one deploy-ledger operation ([`crate::deploy::ledger::Op`] as JSON),
/// run in one transaction by the server's clock. Reads need a read token, the rest a write token.
async fn ledger_op(
    State(st): State<Shared>,
    Granted(ns): Granted<false>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let op: crate::deploy::ledger::Op = match serde_json::from_slice(&body) {
        Ok(op) => op,
        Err(e) => return error(StatusCode::BAD_REQUEST, "bad_request", &format!("not a ledger operation: {e}")),
    };
    if !op.is_read() {
        if let Err(r) = authorize(&st, &headers, &ns, Scope::Write) {
            return r;
        }
    }
    let answer = tokio::task::spawn_blocking(move || {
        let ledger = ledger_of(&st, &ns)?;
        let mut index = ledger.lock().unwrap_or_else(|p| p.into_inner());
        crate::deploy::ledger::apply(&mut index, &op, crate::cache::now_ms()).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    match answer {
        Ok(v) => (StatusCode::OK, [("content-type", "application/json")], v.to_string()).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "ledger", &e),
    }
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v8/artifacts/status", get(status))
        .route("/v8/artifacts/events", post(events))
        .route("/v8/artifacts", post(query))
        .route("/v8/artifacts/{hash}", get(get_artifact).head(get_artifact).put(put_artifact))
        .route("/v8/artifacts/steps/{id}", get(latest_for_step))
        .route("/v8/cairn/ledger", post(ledger_op))
        .with_state(state)
}

/// Scan the store to rebuild the LRU bookkeeping (last use = the meta file's mtime).
fn scan(store: &Path) -> Lru {
    let mut lru = Lru { items: HashMap::new(), total: 0 };
    for ns in std::fs::read_dir(store).into_iter().flatten().flatten() {
        let name = ns.file_name().to_string_lossy().to_string();
        if name.starts_with('.') || !ns.path().is_dir() {
            continue;
        }
        for f in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
            let fname = f.file_name().to_string_lossy().to_string();
            if !fname.ends_with(".meta") && !ns.path().join(format!("{fname}.meta")).exists() {
                // A body whose metadata a crash never wrote: no client can fetch it.
                let _ = std::fs::remove_file(f.path());
                continue;
            }
            if let Some(hash) = fname.strip_suffix(".meta") {
                if let (Some(meta), Ok(m)) = (read_meta(&f.path()), f.metadata()) {
                    let used = m.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    lru.items.insert((name.clone(), hash.to_string()), (meta.size, used));
                    lru.total += meta.size;
                }
            }
        }
    }
    lru
}

/// Run the server until SIGTERM or SIGINT. Calls `ready` with the bound address.
pub fn serve(opts: ServeOptions, ready: impl FnOnce(SocketAddr)) -> std::io::Result<()> {
    std::fs::create_dir_all(opts.store.join(".tmp"))?;
    // Uploads a killed server left half-written are garbage.
    for f in std::fs::read_dir(opts.store.join(".tmp"))?.flatten() {
        let _ = std::fs::remove_file(f.path());
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(opts.listen).await?;
        let addr = listener.local_addr()?;
        let mut lru = scan(&opts.store);
        let header_timeout = opts.header_timeout;
        let state = Arc::new(AppState {
            lru: Mutex::new(Lru { items: HashMap::new(), total: 0 }),
            opts,
            events: Mutex::new((0, 0)),
            ledgers: Mutex::new(HashMap::new()),
        });
        {
            let mut l = state.lru.lock().unwrap_or_else(|p| p.into_inner());
            evict(&state, &mut lru);
            *l = lru;
        }
        let app = router(state);
        ready(addr);
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut backoff = Duration::from_millis(0);
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let stream = match accepted {
                        Ok((stream, _)) => {
                            backoff = Duration::from_millis(0);
                            stream
                        }
                        Err(e) => {
                            // Out of file descriptors (or memory): accepting again at once
                            // would spin. Back off, up to a second, and say so once a spell.
                            if backoff.is_zero() {
                                eprintln!("cairn serve: cannot accept connections ({e}); backing off");
                            }
                            backoff = (backoff * 2).clamp(Duration::from_millis(10), Duration::from_secs(1));
                            tokio::time::sleep(backoff).await;
                            continue;
                        }
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app.clone());
                    let conn = hyper::server::conn::http1::Builder::new()
                        .timer(hyper_util::rt::TokioTimer::new())
                        .header_read_timeout(header_timeout)
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    let conn = graceful.watch(conn);
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                }
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
            }
        }
        eprintln!("cairn serve: shutting down, finishing requests in flight");
        let _ = tokio::time::timeout(Duration::from_secs(30), graceful.shutdown()).await;
        Ok(())
    })
}
