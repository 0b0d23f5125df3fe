//! An S3-compatible object store (through the `object_store` crate) for remote entries: the
//! storage of `cairn serve --store s3://BUCKET/PREFIX`, and a remote that clients can use
//! directly (`--remote s3://BUCKET/PREFIX`) when a team has no server.
//!
//! Credentials and endpoint come from the usual variables: `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION` (default `us-east-1`) and, for S3-compatible servers,
//! `AWS_ENDPOINT_URL` (plain `http://` is allowed for it). Write-once uses conditional puts
//! (`If-None-Match: *`): an object is never overwritten.

use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct S3 {
    store: Arc<AmazonS3>,
    prefix: String,
    pub url: String,
}

/// What a write-once put found.
#[derive(Debug, PartialEq, Eq)]
pub enum Put {
    Created,
    Exists,
}

impl S3 {
    pub fn from_url(url: &str) -> Result<S3, String> {
        let rest = url.strip_prefix("s3://").ok_or_else(|| format!("`{url}` is not an s3:// URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(format!("`{url}` names no bucket"));
        }
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_region(env("AWS_REGION").or(env("AWS_DEFAULT_REGION")).unwrap_or_else(|| "us-east-1".into()));
        if let (Some(k), Some(s)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
            b = b.with_access_key_id(k).with_secret_access_key(s);
        }
        if let Some(endpoint) = env("AWS_ENDPOINT_URL").or(env("AWS_ENDPOINT")) {
            b = b
                .with_allow_http(endpoint.starts_with("http://"))
                .with_virtual_hosted_style_request(false)
                .with_endpoint(endpoint);
        }
        let store = b.build().map_err(|e| format!("S3 {url}: {e}"))?;
        Ok(S3 { store: Arc::new(store), prefix: prefix.trim_matches('/').to_string(), url: url.to_string() })
    }

    fn path(&self, ns: &str, name: &str) -> ObjPath {
        if self.prefix.is_empty() {
            ObjPath::from(format!("{ns}/{name}"))
        } else {
            ObjPath::from(format!("{}/{ns}/{name}", self.prefix))
        }
    }

    pub async fn get(&self, ns: &str, name: &str) -> Result<Option<bytes::Bytes>, String> {
        match self.store.get(&self.path(ns, name)).await {
            Ok(r) => r.bytes().await.map(Some).map_err(|e| e.to_string()),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.to_string()),
        }
    }

    /// An object, read within `limits`: no larger than `max_archive`, no stall longer than
    /// `idle`, no slower than `min_rate`, and given up on Ctrl-C.
    pub async fn get_bounded(
        &self,
        ns: &str,
        name: &str,
        limits: &super::remote::TransferLimits,
    ) -> Result<Option<bytes::Bytes>, String> {
        use futures::StreamExt;
        let r = match tokio::time::timeout(limits.idle * 3, self.store.get(&self.path(ns, name))).await {
            Err(_) => return Err(format!("no answer within {:.1}s", (limits.idle * 3).as_secs_f64())),
            Ok(Ok(r)) => r,
            Ok(Err(object_store::Error::NotFound { .. })) => return Ok(None),
            Ok(Err(e)) => return Err(e.to_string()),
        };
        if r.meta.size > limits.max_archive {
            return Err(format!(
                "{name} is {} bytes, over the limit of {} (CAIRN_REMOTE_MAX_BYTES)",
                r.meta.size, limits.max_archive
            ));
        }
        let mut stream = r.into_stream();
        let mut out = bytes::BytesMut::new();
        let mut window = super::remote::RateWindow::default();
        loop {
            if crate::interrupt::interrupted() {
                return Err("interrupted".into());
            }
            match tokio::time::timeout(limits.idle, stream.next()).await {
                Err(_) => return Err(format!("the download stalled: no data for {:.1}s", limits.idle.as_secs_f64())),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(e.to_string()),
                Ok(Some(Ok(chunk))) => {
                    window.add(chunk.len() as u64);
                    out.extend_from_slice(&chunk);
                    if out.len() as u64 > limits.max_archive {
                        return Err(format!("{name} is larger than the limit of {} bytes", limits.max_archive));
                    }
                }
            }
            window.check(limits.min_rate).map_err(|rate| {
                format!("the download is too slow ({rate:.0} bytes/s, under {} bytes/s)", limits.min_rate)
            })?;
        }
        Ok(Some(out.freeze()))
    }

    pub async fn exists(&self, ns: &str, name: &str) -> Result<bool, String> {
        match self.store.head(&self.path(ns, name)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.to_string()),
        }
    }

    pub async fn delete(&self, ns: &str, name: &str) -> Result<(), String> {
        match self.store.delete(&self.path(ns, name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Write-once put.
    pub async fn put_once(&self, ns: &str, name: &str, data: Vec<u8>) -> Result<Put, String> {
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.store.put_opts(&self.path(ns, name), PutPayload::from(data), opts).await {
            Ok(_) => Ok(Put::Created),
            Err(object_store::Error::AlreadyExists { .. }) | Err(object_store::Error::Precondition { .. }) => {
                Ok(Put::Exists)
            }
            Err(e) => Err(e.to_string()),
        }
    }
}
