//! Requests `object_store` cannot make. Directory marker objects (`dir/`): its paths cannot
//! end in `/`, so markers are written with raw signed requests on S3 and GCS, as real
//! directories on a local disk, and in a side table for the in-memory store. On GCS, whole
//! objects are also written and deleted through the JSON API (which every GCS server and
//! emulator implements) rather than the XML API.

use std::collections::BTreeSet;
use std::path::PathBuf;

use object_store::aws::AwsCredentialProvider;
use object_store::client::{HttpClient, HttpRequest, HttpRequestBody};
use object_store::gcp::GcpCredentialProvider;
use tokio::sync::Mutex;

use super::{Result, StoreError, StoreErrorKind};

/// How directory markers are made in one store.
pub(super) enum Raw {
    /// S3: raw SigV4-signed `PUT`/`DELETE` of `key/`.
    S3(S3Raw),
    /// GCS: JSON API upload/delete of the object `key/`.
    Gcs(GcsJson),
    /// A local directory: markers are directories.
    Local(PathBuf),
    /// Memory: a set of directory keys.
    Memory(Mutex<BTreeSet<String>>),
}

impl std::fmt::Debug for Raw {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Raw::S3(_) => "Raw::S3",
            Raw::Gcs(_) => "Raw::Gcs",
            Raw::Local(_) => "Raw::Local",
            Raw::Memory(_) => "Raw::Memory",
        })
    }
}

pub(super) struct S3Raw {
    pub http: HttpClient,
    /// `scheme://host[:port]` of the endpoint.
    pub endpoint: String,
    pub bucket: String,
    pub path_style: bool,
    pub region: String,
    pub credentials: Option<AwsCredentialProvider>,
    pub requester_pays: bool,
}

pub(super) struct GcsJson {
    pub http: HttpClient,
    pub base_url: String,
    pub bucket: String,
    pub credentials: Option<GcpCredentialProvider>,
}

impl Raw {
    /// Whether a marker exists for `dir` that a prefix listing would not show.
    pub async fn exists(&self, dir: &str) -> Result<bool> {
        Ok(match self {
            Raw::S3(_) | Raw::Gcs(_) => false,
            Raw::Local(root) => root.join(dir.trim_end_matches('/')).is_dir(),
            Raw::Memory(set) => set.lock().await.contains(dir),
        })
    }

    /// Directory names one level below `dir` known only through markers.
    pub async fn children(&self, dir: &str) -> Result<Vec<String>> {
        Ok(match self {
            Raw::Memory(set) => set
                .lock()
                .await
                .iter()
                .filter_map(|k| {
                    let rest = k.strip_prefix(dir)?.strip_suffix('/')?;
                    (!rest.is_empty() && !rest.contains('/')).then(|| rest.to_string())
                })
                .collect(),
            _ => Vec::new(),
        })
    }

    pub async fn put(&self, dir: &str) -> Result<()> {
        debug_assert!(dir.ends_with('/'));
        match self {
            Raw::S3(s3) => s3.send("PUT", dir).await,
            Raw::Gcs(gcs) => gcs.upload(dir, HttpRequestBody::empty()).await,
            Raw::Local(root) => std::fs::create_dir_all(root.join(dir.trim_end_matches('/')))
                .map_err(|e| io_error(e, dir)),
            Raw::Memory(set) => {
                set.lock().await.insert(dir.to_string());
                Ok(())
            }
        }
    }

    /// Create the bucket itself (S3 only).
    pub async fn create_bucket(&self) -> Result<()> {
        match self {
            Raw::S3(s3) => s3.send("PUT", "").await,
            _ => Err(StoreError::new(
                StoreErrorKind::Config,
                "creating buckets is supported on S3 only",
            )),
        }
    }

    /// Delete the (empty) bucket itself (S3 only).
    pub async fn delete_bucket(&self) -> Result<()> {
        match self {
            Raw::S3(s3) => s3.send("DELETE", "").await,
            _ => Err(StoreError::new(
                StoreErrorKind::Config,
                "deleting buckets is supported on S3 only",
            )),
        }
    }

    pub async fn delete(&self, dir: &str) -> Result<()> {
        match self {
            Raw::S3(s3) => s3.send("DELETE", dir).await,
            Raw::Gcs(gcs) => gcs.delete(dir).await,
            Raw::Local(root) => match std::fs::remove_dir(root.join(dir.trim_end_matches('/'))) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_error(e, dir)),
            },
            Raw::Memory(set) => {
                set.lock().await.remove(dir);
                Ok(())
            }
        }
    }
}

fn io_error(e: std::io::Error, key: &str) -> StoreError {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => StoreErrorKind::PermissionDenied,
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, format!("{key:?}: {e}"))
}

/// Percent-encode a key for a URL path, keeping `/` (RFC 3986 unreserved stay as they are).
pub(super) fn encode_key(key: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        let c = b as char;
        if c.is_ascii_alphanumeric() || "-_.~".contains(c) || (keep_slash && c == '/') {
            out.push(c);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn execute(http: &HttpClient, req: HttpRequest, key: &str) -> Result<()> {
    let resp = http
        .execute(req)
        .await
        .map_err(|e| StoreError::new(StoreErrorKind::Other, format!("{key:?}: {e}")))?;
    let status = resp.status();
    if status.is_success() || status.as_u16() == 404 {
        return Ok(());
    }
    let body = resp.into_body().bytes().await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body);
    let kind = match status.as_u16() {
        401 | 403 => StoreErrorKind::PermissionDenied,
        _ => StoreErrorKind::Other,
    };
    Err(StoreError::new(
        kind,
        format!(
            "{key:?}: HTTP {status}: {}",
            text.chars().take(300).collect::<String>()
        ),
    ))
}

impl S3Raw {
    /// A bodiless signed request on `key`; a missing key is success (idempotent deletes).
    async fn send(&self, method: &str, key: &str) -> Result<()> {
        match self.call(method, key, "", &[], Vec::new()).await {
            Ok(_) => Ok(()),
            Err(e) if e.kind == StoreErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

impl GcsJson {
    async fn bearer(&self, key: &str) -> Result<Option<String>> {
        match &self.credentials {
            None => Ok(None),
            Some(p) => {
                let c = p
                    .get_credential()
                    .await
                    .map_err(|e| StoreError::from_object_store(e, key))?;
                Ok((!c.bearer.is_empty()).then(|| c.bearer.clone()))
            }
        }
    }

    async fn request(
        &self,
        method: &str,
        url: String,
        key: &str,
        body: HttpRequestBody,
        content_type: Option<&str>,
    ) -> Result<()> {
        let mut b = http::Request::builder().method(method).uri(&url).header(
            http::header::CONTENT_LENGTH,
            body.content_length().to_string(),
        );
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(token) = self.bearer(key).await? {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = b
            .body(body)
            .map_err(|e| StoreError::new(StoreErrorKind::InvalidKey, format!("{key:?}: {e}")))?;
        execute(&self.http, req, key).await
    }

    /// Write the whole object `key` (a JSON API media upload).
    pub async fn upload(&self, key: &str, body: HttpRequestBody) -> Result<()> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}",
            self.base_url,
            self.bucket,
            encode_key(key, false)
        );
        self.request("POST", url, key, body, None).await
    }

    /// Write the whole object `key` with user metadata (a JSON API multipart upload:
    /// the object resource, then the data).
    pub async fn upload_with_meta(
        &self,
        key: &str,
        data: bytes::Bytes,
        meta: &super::Meta,
    ) -> Result<()> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart",
            self.base_url, self.bucket
        );
        let resource = serde_json::json!({ "name": key, "metadata": meta });
        let boundary = "pail-boundary-7f3a9c";
        let mut body = Vec::with_capacity(data.len() + 512);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{resource}\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        body.extend_from_slice(&data);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/related; boundary={boundary}");
        self.request("POST", url, key, HttpRequestBody::from(body), Some(&ct))
            .await
    }

    /// Delete the object `key`.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base_url,
            self.bucket,
            encode_key(key, false)
        );
        self.request("DELETE", url, key, HttpRequestBody::empty(), None)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::encode_key;

    #[test]
    fn keys_are_percent_encoded_for_urls() {
        assert_eq!(encode_key("a b/c+d/", true), "a%20b/c%2Bd/");
        assert_eq!(encode_key("a/b/", false), "a%2Fb%2F");
    }
}
