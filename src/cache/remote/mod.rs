//! The remote cache client: any server speaking the Turborepo remote-cache API v8 (`cairn
//! serve`, or another), tiered behind the local store.
//!
//! # Protocol use
//! An entry is two artifacts: the archive under the step key, and a JSON *envelope* under
//! `{key}-meta` (the key manifest, blob and outputs digests, log size, duration and an
//! ed25519 signature). The body is uploaded first, the envelope last, so an envelope means a
//! complete entry. On fetch the envelope's manifest must hash to the key, the body must hash
//! to the envelope's digest, and with trusted keys configured the signature must verify;
//! anything else is refused before a byte is extracted.
//!
//! # Failure policy
//! Remote trouble never fails a build (unless `--remote-required`): reads time out quickly,
//! are retried once with backoff on transient errors, and after the first failure a circuit
//! breaker stops talking to the remote for the rest of the run, after one warning. Uploads run
//! in a background thread and are flushed before cairn exits.

mod transfer;

pub use transfer::{copy_bounded, RateWindow, TransferLimits};

use crate::keys::{message, Secret, Trusted};
use crate::plan::key::KeyManifest;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::Duration;

/// The envelope artifact's `x-artifact-tag` states the entry's outputs digest, so a batch query
/// tells a planner what dependents' keys will be without downloading anything.
pub const OUTPUTS_TAG: &str = "cairn-outputs:";

/// Time allowed for moving one archive (the short client timeout applies to everything else).
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(600);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u32,
    pub key: String,
    pub step: String,
    pub manifest: KeyManifest,
    pub blob_digest: String,
    pub outputs_digest: String,
    pub log_bytes: u64,
    pub duration_ms: u64,
    pub blob_size: u64,
    pub signature: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote cache unavailable: {0}")]
    Unavailable(String),
    #[error("signature check failed: {0}")]
    Signature(String),
    #[error("remote entry refused: {0}")]
    Tampered(String),
    #[error("remote cache: {0}")]
    Other(String),
}

pub struct RemoteConfig {
    /// Base URL, e.g. `http://cache.internal:8080` (the client appends `/v8/...`).
    pub url: String,
    pub token: Option<String>,
    pub namespace: String,
    pub trusted: Trusted,
    pub signer: Option<Secret>,
    pub upload: bool,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
}

/// A fetched entry, its body saved to a temporary file.
pub struct Fetched {
    pub envelope: Envelope,
    pub body: PathBuf,
}

struct Upload {
    key: String,
    blob: PathBuf,
    envelope: Envelope,
}

pub struct Remote {
    cfg: RemoteConfig,
    limits: TransferLimits,
    client: reqwest::blocking::Client,
    /// `s3://` remotes are spoken to directly, on a small runtime of their own.
    s3: Option<(super::s3::S3, tokio::runtime::Runtime)>,
    down: AtomicBool,
    warned: AtomicBool,
    upload_tx: Mutex<Option<mpsc::Sender<Upload>>>,
    upload_thread: Mutex<Option<std::thread::JoinHandle<UploadStats>>>,
    warnings: Mutex<Vec<String>>,
}

#[derive(Debug, Default, Clone, Copy)]
pub struct UploadStats {
    pub uploaded: u64,
    pub bytes: u64,
    pub failed: u64,
}

impl Remote {
    pub fn new(cfg: RemoteConfig) -> Result<std::sync::Arc<Remote>, String> {
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.read_timeout)
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {e}"))?;
        let s3 = if cfg.url.starts_with("s3://") {
            let s3 = super::s3::S3::from_url(&cfg.url)?;
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(|e| format!("cannot start the S3 client: {e}"))?;
            Some((s3, rt))
        } else {
            None
        };
        let upload_allowed = cfg.upload && (cfg.token.is_some() || s3.is_some());
        let limits = TransferLimits::from_env(cfg.read_timeout);
        let remote = std::sync::Arc::new(Remote {
            limits,
            cfg,
            client,
            s3,
            down: AtomicBool::new(false),
            warned: AtomicBool::new(false),
            upload_tx: Mutex::new(None),
            upload_thread: Mutex::new(None),
            warnings: Mutex::new(Vec::new()),
        });
        remote.probe();
        if upload_allowed {
            let (tx, rx) = mpsc::channel::<Upload>();
            let r = remote.clone();
            let handle = std::thread::spawn(move || {
                let mut stats = UploadStats::default();
                for u in rx {
                    if r.is_down() || crate::interrupt::interrupted() {
                        stats.failed += 1;
                        continue;
                    }
                    match r.upload_now(&u) {
                        Ok(bytes) => {
                            stats.uploaded += 1;
                            stats.bytes += bytes;
                        }
                        Err(e) => {
                            stats.failed += 1;
                            r.warn(&format!("upload of {} failed: {e}", &u.key[..12.min(u.key.len())]));
                        }
                    }
                    let _ = std::fs::remove_file(&u.blob);
                }
                stats
            });
            *remote.upload_tx.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
            *remote.upload_thread.lock().unwrap_or_else(|p| p.into_inner()) = Some(handle);
        }
        Ok(remote)
    }

    /// One quick status request at start: a dead or hanging remote trips the breaker here,
    /// once, instead of costing a timeout later (an upload, a forced step's fetch).
    fn probe(&self) {
        if let Some((s3, rt)) = &self.s3 {
            let r = rt.block_on(async {
                tokio::time::timeout(self.cfg.read_timeout * 3, s3.exists(&self.cfg.namespace, "cairn-probe")).await
            });
            match r {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => self.trip(&e),
                Err(_) => self.trip("timed out"),
            }
            return;
        }
        let url = format!("{}/v8/artifacts/status", self.cfg.url.trim_end_matches('/'));
        match self.auth(self.client.get(url)).send() {
            Ok(r) if r.status().is_success() || r.status().is_client_error() => {}
            Ok(r) => self.trip(&format!("status check answered HTTP {}", r.status())),
            Err(e) if e.is_timeout() => self.trip("timed out"),
            Err(e) => self.trip(&e.to_string()),
        }
    }

    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::SeqCst)
    }

    /// Open the breaker; the first time, say so once.
    fn trip(&self, why: &str) {
        self.down.store(true, Ordering::SeqCst);
        if !self.warned.swap(true, Ordering::SeqCst) {
            let w = format!("remote cache {} unavailable ({why}); continuing with the local store only", self.cfg.url);
            eprintln!("warning: {w}");
            self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(w);
        }
    }

    fn warn(&self, w: &str) {
        eprintln!("warning: {w}");
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).push(w.to_string());
    }

    pub fn warnings(&self) -> Vec<String> {
        self.warnings.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn artifact_url(&self, hash: &str) -> String {
        format!("{}/v8/artifacts/{hash}?slug={}", self.cfg.url.trim_end_matches('/'), self.cfg.namespace)
    }

    fn auth(&self, rb: reqwest::blocking::RequestBuilder) -> reqwest::blocking::RequestBuilder {
        match &self.cfg.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// GET with one retry on transient failure; `Ok(None)` on 404. Timeouts open the breaker
    /// at once (a hanging remote must not cost a timeout per step).
    fn get(&self, hash: &str, long: bool) -> Result<Option<reqwest::blocking::Response>, RemoteError> {
        if self.is_down() {
            return Err(RemoteError::Unavailable("skipped after an earlier failure".into()));
        }
        let mut last = String::new();
        for attempt in 0..2 {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(150));
            }
            let mut rb = self.auth(self.client.get(self.artifact_url(hash)));
            if long {
                rb = rb.timeout(TRANSFER_TIMEOUT); // archives can be large; envelopes can't
            }
            match rb.send() {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
                Ok(r) if r.status().is_success() => return Ok(Some(r)),
                Ok(r) if r.status().is_server_error() || r.status() == reqwest::StatusCode::TOO_MANY_REQUESTS => {
                    last = format!("HTTP {}", r.status());
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().unwrap_or_default();
                    let msg = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(String::from))
                        .unwrap_or(body);
                    let e = format!("HTTP {status}: {msg}");
                    self.trip(&e);
                    return Err(RemoteError::Unavailable(e));
                }
                Err(e) if e.is_timeout() => {
                    self.trip("timed out");
                    return Err(RemoteError::Unavailable("timed out".into()));
                }
                Err(e) => last = e.to_string(),
            }
        }
        self.trip(&last);
        Err(RemoteError::Unavailable(last))
    }

    /// Fetch and verify an entry; the body goes to a temporary file in `tmp_dir`.
    pub fn fetch(&self, key: &str, tmp_dir: &Path) -> Result<Option<Fetched>, RemoteError> {
        if self.s3.is_some() {
            return self.fetch_s3(key, tmp_dir);
        }
        let Some(resp) = self.get(&format!("{key}-meta"), false)? else { return Ok(None) };
        let text = self.read_bounded(resp, self.limits.max_envelope, "envelope")?;
        let env = self.verify_envelope(key, &text)?;
        if env.blob_size > self.limits.max_archive {
            return Err(RemoteError::Tampered(format!(
                "the archive claims {} bytes, over the limit of {} (CAIRN_REMOTE_MAX_BYTES)",
                env.blob_size, self.limits.max_archive
            )));
        }
        let Some(resp) = self.get(key, true)? else {
            return Err(RemoteError::Tampered("the envelope exists but the archive does not".into()));
        };
        if let Some(len) = resp.content_length().filter(|&l| l != env.blob_size) {
            return Err(RemoteError::Tampered(format!(
                "the archive is {len} bytes long, but its envelope says {}",
                env.blob_size
            )));
        }
        std::fs::create_dir_all(tmp_dir).map_err(|e| RemoteError::Other(e.to_string()))?;
        let body = tmp_dir.join(format!("remote-{}-{}.tmp", &key[..12.min(key.len())], super::archive::unique()));
        let mut file = std::fs::File::create(&body).map_err(|e| RemoteError::Other(e.to_string()))?;
        let mut hasher = blake3::Hasher::new();
        let copied = copy_bounded(
            resp,
            &mut |chunk| {
                hasher.update(chunk);
                std::io::Write::write_all(&mut file, chunk)
            },
            env.blob_size,
            &self.limits,
        );
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&body);
            if matches!(e, RemoteError::Unavailable(_)) {
                self.trip(&e.to_string());
            }
            return Err(e);
        }
        let digest = hasher.finalize().to_hex().to_string();
        if digest != env.blob_digest {
            let _ = std::fs::remove_file(&body);
            return Err(RemoteError::Tampered("the archive does not match its digest".into()));
        }
        Ok(Some(Fetched { envelope: env, body }))
    }

    /// A small response body (an envelope, an index answer), read within the transfer limits.
    fn read_bounded(&self, resp: reqwest::blocking::Response, max: u64, what: &str) -> Result<Vec<u8>, RemoteError> {
        if resp.content_length().is_some_and(|l| l > max) {
            return Err(RemoteError::Tampered(format!(
                "the {what} claims {} bytes, over the limit of {max}",
                resp.content_length().unwrap_or(0)
            )));
        }
        let mut out = Vec::new();
        copy_bounded(
            resp,
            &mut |chunk| {
                out.extend_from_slice(chunk);
                Ok(())
            },
            max,
            &self.limits,
        )
        .inspect_err(|e| {
            if matches!(e, RemoteError::Unavailable(_)) {
                self.trip(&e.to_string());
            }
        })?;
        Ok(out)
    }

    fn s3_get(&self, name: &str) -> Result<Option<bytes::Bytes>, RemoteError> {
        if self.is_down() {
            return Err(RemoteError::Unavailable("skipped after an earlier failure".into()));
        }
        let (s3, rt) = self.s3.as_ref().expect("called for s3 remotes");
        rt.block_on(s3.get_bounded(&self.cfg.namespace, name, &self.limits)).map_err(|e| {
            self.trip(&e);
            RemoteError::Unavailable(e)
        })
    }

    fn verify_envelope(&self, key: &str, text: &[u8]) -> Result<Envelope, RemoteError> {
        let env: Envelope =
            serde_json::from_slice(text).map_err(|e| RemoteError::Tampered(format!("unreadable envelope: {e}")))?;
        if env.key != key || env.manifest.key() != key {
            return Err(RemoteError::Tampered("the manifest does not hash to the step key".into()));
        }
        if !self.cfg.trusted.is_empty() {
            let msg = message(key, &env.blob_digest, &env.outputs_digest, env.log_bytes, env.duration_ms);
            self.cfg.trusted.verify(env.signature.as_deref(), &msg).map_err(RemoteError::Signature)?;
        }
        Ok(env)
    }

    fn fetch_s3(&self, key: &str, tmp_dir: &Path) -> Result<Option<Fetched>, RemoteError> {
        let Some(meta) = self.s3_get(&format!("{key}-meta"))? else { return Ok(None) };
        let env = self.verify_envelope(key, &meta)?;
        let Some(body) = self.s3_get(key)? else {
            return Err(RemoteError::Tampered("the envelope exists but the archive does not".into()));
        };
        if blake3::hash(&body).to_hex().as_str() != env.blob_digest {
            return Err(RemoteError::Tampered("the archive does not match its digest".into()));
        }
        std::fs::create_dir_all(tmp_dir).map_err(|e| RemoteError::Other(e.to_string()))?;
        let path = tmp_dir.join(format!("remote-{}-{}.tmp", &key[..12.min(key.len())], super::archive::unique()));
        std::fs::write(&path, &body).map_err(|e| RemoteError::Other(e.to_string()))?;
        Ok(Some(Fetched { envelope: env, body: path }))
    }

    /// The newest key the remote has for `step` (cairn serve indexes uploaded envelopes by
    /// step); `Ok(None)` when it has none or the server keeps no such index.
    pub fn latest_key_for_step(&self, step: &str) -> Result<Option<String>, RemoteError> {
        if self.s3.is_some() || self.is_down() {
            return Ok(None);
        }
        let id = blake3::hash(step.as_bytes()).to_hex().to_string();
        let Some(resp) = self.get(&format!("steps/{id}"), false)? else { return Ok(None) };
        let body = self.read_bounded(resp, 1 << 20, "step index")?;
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| RemoteError::Other(format!("step index: {e}")))?;
        Ok(v["key"].as_str().map(String::from))
    }

    /// An entry's envelope alone (verified: its manifest hashes to `key`, and its signature
    /// when keys are trusted), for comparing manifests without downloading the archive.
    pub fn envelope(&self, key: &str) -> Result<Option<Envelope>, RemoteError> {
        let text = if self.s3.is_some() {
            self.s3_get(&format!("{key}-meta"))?.map(|b| b.to_vec())
        } else {
            match self.get(&format!("{key}-meta"), false)? {
                Some(r) => Some(self.read_bounded(r, self.limits.max_envelope, "envelope")?),
                None => None,
            }
        };
        text.map(|t| self.verify_envelope(key, &t)).transpose()
    }

    /// Which of `keys` the remote holds, in one request: for each, `None` when absent, else
    /// the outputs digest the envelope's tag states (`Some(None)` if it states none).
    pub fn exists_many(&self, keys: &[String]) -> Result<Vec<Option<Option<String>>>, RemoteError> {
        if self.is_down() {
            return Err(RemoteError::Unavailable("skipped after an earlier failure".into()));
        }
        let hashes: Vec<String> = keys.iter().map(|k| format!("{k}-meta")).collect();
        if let Some((s3, rt)) = &self.s3 {
            return hashes
                .iter()
                .map(|h| {
                    let found = rt.block_on(s3.exists(&self.cfg.namespace, h)).map_err(RemoteError::Unavailable)?;
                    Ok(found.then_some(None))
                })
                .collect();
        }
        let url = format!("{}/v8/artifacts?slug={}", self.cfg.url.trim_end_matches('/'), self.cfg.namespace);
        let resp =
            self.auth(self.client.post(url)).json(&serde_json::json!({ "hashes": hashes })).send().map_err(|e| {
                self.trip(&e.to_string());
                RemoteError::Unavailable(e.to_string())
            })?;
        if !resp.status().is_success() {
            return Err(RemoteError::Other(format!("batch query: HTTP {}", resp.status())));
        }
        let body = self.read_bounded(resp, self.limits.max_envelope, "batch answer")?;
        let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| RemoteError::Other(e.to_string()))?;
        Ok(hashes
            .iter()
            .map(|h| {
                v[h].get("size")
                    .map(|_| v[h]["tag"].as_str().and_then(|t| t.strip_prefix(OUTPUTS_TAG)).map(String::from))
            })
            .collect())
    }

    /// Queue an upload of a committed entry (the blob is copied so the local store can evict).
    pub fn upload_later(&self, step: &str, manifest: &KeyManifest, blob: &Path, info: UploadInfo) {
        let tx = self.upload_tx.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let Some(tx) = tx else { return };
        if self.is_down() {
            return;
        }
        let key = manifest.key();
        let copy = blob.with_file_name(format!("upload-{}-{}.tmp", &key[..12], super::archive::unique()));
        let tmp = std::env::temp_dir().join(copy.file_name().expect("named above"));
        if std::fs::hard_link(blob, &tmp).or_else(|_| std::fs::copy(blob, &tmp).map(|_| ())).is_err() {
            return;
        }
        let signature =
            self.cfg.signer.as_ref().map(|s| {
                s.sign(&message(&key, &info.blob_digest, &info.outputs_digest, info.log_bytes, info.duration_ms))
            });
        let envelope = Envelope {
            v: 1,
            key: key.clone(),
            step: step.to_string(),
            manifest: manifest.clone(),
            blob_digest: info.blob_digest,
            outputs_digest: info.outputs_digest,
            log_bytes: info.log_bytes,
            duration_ms: info.duration_ms,
            blob_size: info.blob_size,
            signature,
        };
        let _ = tx.send(Upload { key, blob: tmp, envelope });
    }

    fn put(
        &self,
        hash: &str,
        body: reqwest::blocking::Body,
        size: u64,
        digest: &str,
        duration: u64,
        tag: Option<&str>,
    ) -> Result<(), RemoteError> {
        // 10 s plus one second per MiB: generous for a slow link, bounded for a hung server.
        let timeout = Duration::from_secs(10 + size / (1 << 20)).min(TRANSFER_TIMEOUT);
        let mut rb = self.auth(self.client.put(self.artifact_url(hash)));
        if let Some(t) = tag {
            rb = rb.header("x-artifact-tag", t);
        }
        let resp = rb
            .header("content-type", "application/octet-stream")
            .header("x-artifact-duration", duration.to_string())
            .header("x-cairn-blob-digest", digest)
            .timeout(timeout)
            .body(body)
            .send()
            .map_err(|e| {
                self.trip(&e.to_string());
                RemoteError::Unavailable(e.to_string())
            })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(());
        }
        let text = resp.text().unwrap_or_default();
        let msg = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or(text);
        if status == reqwest::StatusCode::FORBIDDEN || status == reqwest::StatusCode::UNAUTHORIZED {
            // A read-only token: stop trying for this run, say so once.
            self.down.store(true, Ordering::SeqCst);
        }
        Err(RemoteError::Other(format!("HTTP {status}: {msg}")))
    }

    fn upload_now(&self, u: &Upload) -> Result<u64, RemoteError> {
        if let Some((s3, rt)) = &self.s3 {
            let body = std::fs::read(&u.blob).map_err(|e| RemoteError::Other(e.to_string()))?;
            let size = body.len() as u64;
            let env = serde_json::to_vec(&u.envelope).expect("envelopes serialise");
            let ns = &self.cfg.namespace;
            rt.block_on(async {
                s3.put_once(ns, &u.key, body).await?;
                s3.put_once(ns, &format!("{}-meta", u.key), env).await
            })
            .map_err(|e| {
                self.trip(&e);
                RemoteError::Unavailable(e)
            })?;
            return Ok(size);
        }
        let file = std::fs::File::open(&u.blob).map_err(|e| RemoteError::Other(e.to_string()))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        self.put(
            &u.key,
            reqwest::blocking::Body::sized(file, size),
            size,
            &u.envelope.blob_digest,
            u.envelope.duration_ms,
            None,
        )?;
        let env = serde_json::to_vec(&u.envelope).expect("envelopes serialise");
        let digest = blake3::hash(&env).to_hex().to_string();
        let len = env.len() as u64;
        let tag = format!("{OUTPUTS_TAG}{}", u.envelope.outputs_digest);
        self.put(
            &format!("{}-meta", u.key),
            reqwest::blocking::Body::from(env),
            len,
            &digest,
            u.envelope.duration_ms,
            Some(&tag),
        )?;
        Ok(size)
    }

    /// Wait for queued uploads (called before cairn exits).
    /// Wait for queued uploads to finish (each bounded by its own timeout); on Ctrl-C, stop
    /// waiting at once: an upload cut short is never visible (the envelope goes last).
    pub fn flush(&self) -> UploadStats {
        drop(self.upload_tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        let Some(handle) = self.upload_thread.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            return UploadStats::default();
        };
        while !handle.is_finished() {
            if crate::interrupt::interrupted() {
                return UploadStats::default();
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        handle.join().unwrap_or_default()
    }
}

/// What an upload's envelope states about the entry.
pub struct UploadInfo {
    pub blob_digest: String,
    pub outputs_digest: String,
    pub log_bytes: u64,
    pub duration_ms: u64,
    pub blob_size: u64,
}
