//! Artifacts: reading, receiving (staged, fsynced, digested), publishing write-once (disk by
//! `link(2)`, S3 by conditional put), repairing what a crash left half-published, the
//! per-step index of envelopes, and LRU eviction under the quota.

use super::*;

pub(super) fn paths(st: &AppState, ns: &str, hash: &str) -> (PathBuf, PathBuf) {
    let dir = st.opts.store.join(ns);
    (dir.join(hash), dir.join(format!("{hash}.meta")))
}

pub(super) fn read_meta(p: &Path) -> Option<Meta> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

pub(super) fn artifact_headers(meta: &Meta) -> Vec<(&'static str, HeaderValue)> {
    let mut h = vec![
        ("content-type", HeaderValue::from_static("application/octet-stream")),
        ("x-artifact-duration", HeaderValue::from(meta.duration_ms)),
        ("content-length", HeaderValue::from(meta.size)),
    ];
    if let Some(tag) = meta.tag.as_deref().and_then(|t| HeaderValue::from_str(t).ok()) {
        h.push(("x-artifact-tag", tag));
    }
    h
}

/// A 200 answer for an artifact: its body (empty for HEAD) and the v8 headers.
pub(super) fn artifact_response(meta: &Meta, body: Body) -> Response {
    let mut resp = Response::new(body);
    for (k, v) in artifact_headers(meta) {
        resp.headers_mut().insert(k, v);
    }
    resp
}

pub(super) fn touch(st: &AppState, ns: &str, hash: &str) {
    let mut lru = st.lru.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(e) = lru.items.get_mut(&(ns.to_string(), hash.to_string())) {
        e.1 = SystemTime::now();
    }
    drop(lru);
    let (_, meta) = paths(st, ns, hash);
    if let Ok(f) = std::fs::File::options().append(true).open(meta) {
        let _ = f.set_modified(SystemTime::now());
    }
}

pub(super) async fn get_artifact(
    State(st): State<Shared>,
    method: Method,
    UrlPath(hash): UrlPath<String>,
    Granted(ns): Granted<false>,
) -> Response {
    if !valid_hash(&hash) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "invalid artifact hash");
    }
    if let Some(s3) = &st.opts.s3 {
        let meta: Option<Meta> = match s3.get(&ns, &format!("{hash}.meta")).await {
            Ok(m) => m.and_then(|b| serde_json::from_slice(&b).ok()),
            Err(e) => return error(StatusCode::BAD_GATEWAY, "storage", &format!("object store: {e}")),
        };
        let Some(meta) = meta else { return error(StatusCode::NOT_FOUND, "not_found", "no such artifact") };
        let body = if method == Method::HEAD {
            Body::empty()
        } else {
            match s3.get(&ns, &hash).await {
                Ok(Some(b)) => Body::from(b),
                Ok(None) => return error(StatusCode::NOT_FOUND, "not_found", "no such artifact"),
                Err(e) => return error(StatusCode::BAD_GATEWAY, "storage", &format!("object store: {e}")),
            }
        };
        return artifact_response(&meta, body);
    }
    let (body_path, meta_path) = paths(&st, &ns, &hash);
    let Some(meta) = read_meta(&meta_path) else {
        return error(StatusCode::NOT_FOUND, "not_found", "no such artifact");
    };
    let file = match tokio::fs::File::open(&body_path).await {
        Ok(f) => f,
        Err(_) => return error(StatusCode::NOT_FOUND, "not_found", "no such artifact"),
    };
    touch(&st, &ns, &hash);
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10))
    };
    artifact_response(&meta, body)
}

pub(super) async fn put_artifact(
    State(st): State<Shared>,
    UrlPath(hash): UrlPath<String>,
    Granted(ns): Granted<true>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if !valid_hash(&hash) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "invalid artifact hash");
    }
    let declared: Option<u64> =
        headers.get("content-length").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    if declared.is_some_and(|n| n > st.opts.max_body) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "artifact exceeds the server's size limit");
    }
    let duration_ms: u64 =
        headers.get("x-artifact-duration").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
    let tag = headers.get("x-artifact-tag").and_then(|v| v.to_str().ok()).map(String::from);
    let claimed_digest = headers.get("x-cairn-blob-digest").and_then(|v| v.to_str().ok()).map(String::from);

    // Stage the body.
    let tmp_dir = st.opts.store.join(".tmp");
    let tmp = tmp_dir.join(format!("{}-{}", hash, crate::cache::archive::unique()));
    let staged = receive(&st, body, &tmp).await;
    let (size, digest) = match staged {
        Ok(v) => v,
        Err(resp) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return resp;
        }
    };
    if claimed_digest.as_deref().is_some_and(|c| c != digest) {
        let _ = tokio::fs::remove_file(&tmp).await;
        return error(StatusCode::BAD_REQUEST, "digest_mismatch", "the body does not match x-cairn-blob-digest");
    }
    let meta = Meta { size, digest, duration_ms, tag };
    let indexed = step_of_envelope(&hash, size, &tmp);
    let published = match &st.opts.s3 {
        Some(s3) => publish_s3(s3, &ns, &hash, &tmp, &meta).await,
        None => tokio::task::spawn_blocking({
            let st = st.clone();
            let (ns, hash, tmp) = (ns.clone(), hash.clone(), tmp.clone());
            move || publish(&st, &ns, &hash, &tmp, &meta)
        })
        .await
        .unwrap_or_else(|e| Err(error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &e.to_string()))),
    };
    let _ = tokio::fs::remove_file(&tmp).await;
    match published {
        Ok(()) => {
            if let Some((step, key)) = &indexed {
                record_latest(&st, &ns, step, key);
            }
            let body = serde_json::json!({"urls": [format!("{ns}/{hash}")]});
            (StatusCode::ACCEPTED, [("content-type", "application/json")], body.to_string()).into_response()
        }
        Err(r) => r,
    }
}

/// A cairn envelope (`{key}-meta`) names its step: the server keeps the newest key per step,
/// so `cairn why` on a fresh checkout can compare with what CI built last. Anything else, or
/// an envelope that does not hash to its key, is stored but not indexed.
pub(super) fn step_of_envelope(hash: &str, size: u64, staged: &Path) -> Option<(String, String)> {
    let key = hash.strip_suffix("-meta")?;
    if size > 32 * 1024 * 1024 {
        return None;
    }
    let env: crate::cache::remote::Envelope = serde_json::from_slice(&std::fs::read(staged).ok()?).ok()?;
    (env.key == key && env.manifest.key() == key).then_some((env.step, env.key))
}

pub(super) fn steps_dir(st: &AppState, ns: &str) -> PathBuf {
    st.opts.store.join(".steps").join(&blake3::hash(ns.as_bytes()).to_hex()[..32])
}

pub(super) fn record_latest(st: &AppState, ns: &str, step: &str, key: &str) {
    let dir = steps_dir(st, ns);
    let id = blake3::hash(step.as_bytes()).to_hex().to_string();
    let tmp = dir.join(format!(".{id}-{}", crate::cache::archive::unique()));
    let ok = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&tmp, key))
        .and_then(|()| std::fs::rename(&tmp, dir.join(&id)));
    if ok.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// `GET /v8/artifacts/steps/{id}`: the newest key uploaded for the step whose name hashes
/// (blake3, hex) to `id`, as `{"key": ...}`; 404 when none.
pub(super) async fn latest_for_step(
    State(st): State<Shared>,
    UrlPath(id): UrlPath<String>,
    Granted(ns): Granted<false>,
) -> Response {
    if id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return error(StatusCode::BAD_REQUEST, "bad_request", "step id is a blake3 hex digest");
    }
    match std::fs::read_to_string(steps_dir(&st, &ns).join(&id)) {
        Ok(key) => {
            (StatusCode::OK, [("content-type", "application/json")], serde_json::json!({"key": key}).to_string())
                .into_response()
        }
        Err(_) => error(StatusCode::NOT_FOUND, "not_found", "no entry of this step yet"),
    }
}

/// Stream a request body into `tmp`, with the size limit and a per-chunk timeout.
pub(super) async fn receive(st: &AppState, mut body: Body, tmp: &Path) -> Result<(u64, String), Response> {
    use tokio::io::AsyncWriteExt;
    let internal = |e: std::io::Error| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("storage: {e}"));
    tokio::fs::create_dir_all(tmp.parent().expect("tmp has a parent")).await.map_err(internal)?;
    let mut file = tokio::fs::File::create(tmp).await.map_err(internal)?;
    let mut hasher = blake3::Hasher::new();
    let mut size: u64 = 0;
    loop {
        let frame = match tokio::time::timeout(st.opts.body_timeout, body.frame()).await {
            Err(_) => return Err(error(StatusCode::REQUEST_TIMEOUT, "timeout", "the request body arrived too slowly")),
            Ok(None) => break,
            Ok(Some(Err(_))) => {
                return Err(error(StatusCode::BAD_REQUEST, "bad_request", "the request body was cut off"))
            }
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            size += data.len() as u64;
            if size > st.opts.max_body {
                return Err(error(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    "artifact exceeds the server's size limit",
                ));
            }
            hasher.update(&data);
            file.write_all(&data).await.map_err(internal)?;
        }
    }
    file.sync_all().await.map_err(internal)?;
    Ok((size, hasher.finalize().to_hex().to_string()))
}

/// A body whose metadata never came: published (linked) longer ago than any publication
/// takes, so not one in progress.
pub(super) fn orphaned(body: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(m) = std::fs::symlink_metadata(body) else { return false };
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
    now - m.ctime() > 5
}

pub(super) fn file_digest(p: &Path) -> Option<String> {
    let mut h = blake3::Hasher::new();
    h.update_reader(std::fs::File::open(p).ok()?).ok()?;
    Some(h.finalize().to_hex().to_string())
}

/// Write an artifact's metadata atomically (beside the staged body, then renamed).
pub(super) fn write_meta(meta_path: &Path, tmp: &Path, meta: &Meta) -> std::io::Result<()> {
    let meta_tmp = tmp.with_extension("meta-repair");
    std::fs::write(&meta_tmp, serde_json::to_vec(meta).expect("meta serialises"))?;
    std::fs::File::open(&meta_tmp).and_then(|f| f.sync_all())?;
    std::fs::rename(&meta_tmp, meta_path)
}

/// Make a staged body visible, write-once.
pub(super) fn publish(st: &AppState, ns: &str, hash: &str, tmp: &Path, meta: &Meta) -> Result<(), Response> {
    let internal = |e: std::io::Error| error(StatusCode::INTERNAL_SERVER_ERROR, "internal", &format!("storage: {e}"));
    let (body_path, meta_path) = paths(st, ns, hash);
    let dir = body_path.parent().expect("artifact paths have a directory");
    std::fs::create_dir_all(dir).map_err(internal)?;
    let conflict_or_same = || -> Result<(), Response> {
        match read_meta(&meta_path) {
            Some(existing) if existing.digest == meta.digest => Ok(()),
            Some(_) => {
                Err(error(StatusCode::CONFLICT, "conflict", "this artifact exists with different content (write-once)"))
            }
            None => Err(error(StatusCode::CONFLICT, "conflict", "this artifact is being written by another upload")),
        }
    };
    if body_path.exists() && read_meta(&meta_path).is_none() && orphaned(&body_path) {
        // A server that died between publishing a body and its metadata left the body alone:
        // the same bytes get their metadata now; other bytes replace the orphan.
        if file_digest(&body_path).as_deref() == Some(meta.digest.as_str()) {
            write_meta(&meta_path, tmp, meta).map_err(internal)?;
            return Ok(());
        }
        std::fs::remove_file(&body_path).map_err(internal)?;
    }
    if body_path.exists() {
        return conflict_or_same();
    }
    // The metadata first (atomically), then the body by link(2), which refuses to replace.
    let meta_tmp = tmp.with_extension("meta");
    std::fs::write(&meta_tmp, serde_json::to_vec(meta).expect("meta serialises")).map_err(internal)?;
    std::fs::File::open(&meta_tmp).and_then(|f| f.sync_all()).map_err(internal)?;
    match std::fs::hard_link(tmp, &body_path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let _ = std::fs::remove_file(&meta_tmp);
            return conflict_or_same();
        }
        Err(e) => {
            let _ = std::fs::remove_file(&meta_tmp);
            return Err(internal(e));
        }
    }
    std::fs::rename(&meta_tmp, &meta_path).map_err(internal)?;
    let _ = std::fs::File::open(dir).and_then(|d| d.sync_all());
    let mut lru = st.lru.lock().unwrap_or_else(|p| p.into_inner());
    lru.items.insert((ns.to_string(), hash.to_string()), (meta.size, SystemTime::now()));
    lru.total += meta.size;
    evict(st, &mut lru);
    Ok(())
}

/// Write-once publication to S3: the body with a conditional put, then its metadata.
pub(super) async fn publish_s3(
    s3: &crate::cache::s3::S3,
    ns: &str,
    hash: &str,
    tmp: &Path,
    meta: &Meta,
) -> Result<(), Response> {
    use crate::cache::s3::Put;
    let storage = |e: String| error(StatusCode::BAD_GATEWAY, "storage", &format!("object store: {e}"));
    let data = tokio::fs::read(tmp).await.map_err(|e| storage(e.to_string()))?;
    match s3.put_once(ns, hash, data).await.map_err(storage)? {
        Put::Created => {
            let m = serde_json::to_vec(meta).expect("meta serialises");
            s3.put_once(ns, &format!("{hash}.meta"), m).await.map_err(storage)?;
            Ok(())
        }
        Put::Exists => {
            let existing: Option<Meta> = s3
                .get(ns, &format!("{hash}.meta"))
                .await
                .map_err(storage)?
                .and_then(|b| serde_json::from_slice(&b).ok());
            match existing {
                Some(m) if m.digest == meta.digest => Ok(()),
                // The body without its metadata: a server died between the two puts.
                None => {
                    let body = s3.get(ns, hash).await.map_err(storage)?;
                    if body.is_some_and(|b| blake3::hash(&b).to_hex().as_str() == meta.digest) {
                        let m = serde_json::to_vec(meta).expect("meta serialises");
                        s3.put_once(ns, &format!("{hash}.meta"), m).await.map_err(storage)?;
                        return Ok(());
                    }
                    s3.delete(ns, hash).await.map_err(storage)?;
                    let data = tokio::fs::read(tmp).await.map_err(|e| storage(e.to_string()))?;
                    s3.put_once(ns, hash, data).await.map_err(storage)?;
                    let m = serde_json::to_vec(meta).expect("meta serialises");
                    s3.put_once(ns, &format!("{hash}.meta"), m).await.map_err(storage)?;
                    Ok(())
                }
                _ => Err(error(
                    StatusCode::CONFLICT,
                    "conflict",
                    "this artifact exists with different content (write-once)",
                )),
            }
        }
    }
}

pub(super) fn evict(st: &AppState, lru: &mut Lru) {
    while lru.total > st.opts.quota {
        let Some(oldest) = lru.items.iter().min_by_key(|(_, (_, t))| *t).map(|(k, _)| k.clone()) else { break };
        let (size, _) = lru.items.remove(&oldest).expect("just found");
        lru.total -= size;
        let (body, meta) = paths(st, &oldest.0, &oldest.1);
        let _ = std::fs::remove_file(meta);
        let _ = std::fs::remove_file(body);
    }
}
