//! Google Cloud Storage: reads, HEADs, copies and multipart uploads through
//! `object_store`'s GCS client (XML API); listings, whole-object writes (with metadata),
//! deletes and directory markers through the JSON API, which names every object exactly
//! (markers included) and which every GCS server and emulator implements. A service account
//! JSON or the application-default chain; `--endpoint-url` points it at an emulator.

use std::ops::Range;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use object_store::client::{HttpClient, HttpRequestBody};
use object_store::gcp::{GcpCredentialProvider, GoogleCloudStorageBuilder};
use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
use serde::Deserialize;

use super::objstore::Objects;
use super::retry::RetryPolicy;
use super::s3::{client_options, retry_config};
use super::{
    Auth, Bucket, Condition, CopyOptions, Features, ListOptions, Meta, ObjectInfo, Page, Payload,
    PutOptions, PutResult, Result, Source, StoreError, StoreErrorKind, StoreOptions, Upload,
    check_key,
};

const DEFAULT_BASE_URL: &str = "https://storage.googleapis.com";

/// Whether credentials may come from the GCE metadata server: under a policy, when the admin
/// turned driver-level identity on; by hand, with `PAIL_GCS_METADATA=true`.
fn gcs_metadata_allowed(opts: &StoreOptions) -> bool {
    match &opts.net {
        Some(p) => p.metadata,
        None => std::env::var("PAIL_GCS_METADATA").as_deref() == Ok("true"),
    }
}

/// A GCS bucket.
#[derive(Debug)]
pub struct GcsBucket {
    objects: Objects,
    json: Json,
    description: String,
}

struct Json {
    http: HttpClient,
    base_url: String,
    bucket: String,
    credentials: Option<GcpCredentialProvider>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Json {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Json")
            .field("base_url", &self.base_url)
            .field("bucket", &self.bucket)
            .finish_non_exhaustive()
    }
}

fn encode(s: &str) -> String {
    utf8_percent_encode(s, NON_ALPHANUMERIC).to_string()
}

impl GcsBucket {
    /// Open the bucket `source` names.
    pub fn open(source: &Source, opts: &StoreOptions) -> Result<GcsBucket> {
        let config = |m: String| StoreError::new(StoreErrorKind::Config, m);
        let key_text = match &opts.auth {
            Auth::GcsKey(text) => Some(text.clone()),
            Auth::GcsKeyFile(path) => Some(
                std::fs::read_to_string(path)
                    .map_err(|e| config(format!("service account file {}: {e}", path.display())))?,
            ),
            Auth::Keys(_) | Auth::Profile(_) => {
                return Err(config(
                    "S3 access keys are for s3:// buckets (GCS through HMAC keys: s3://bucket \
                     --endpoint-url https://storage.googleapis.com)"
                        .into(),
                ));
            }
            Auth::Chain | Auth::WebIdentity(_) | Auth::Anonymous => None,
        };
        let anonymous = matches!(opts.auth, Auth::Anonymous);
        // A key file may name its own endpoint (emulators do).
        let key_base = key_text
            .as_deref()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok())
            .and_then(|v| v.get("gcs_base_url")?.as_str().map(str::to_string));
        let base_url = opts
            .endpoint_url
            .clone()
            .or(key_base)
            .unwrap_or_else(|| DEFAULT_BASE_URL.to_string())
            .trim_end_matches('/')
            .to_string();
        let allow_http = base_url.starts_with("http://");
        if let Some(p) = &opts.net {
            let url = url::Url::parse(&base_url).map_err(|e| config(e.to_string()))?;
            p.check_endpoint(&url)?;
        }
        let mut builder = GoogleCloudStorageBuilder::new()
            .with_bucket_name(&source.bucket)
            .with_client_options(client_options(opts, allow_http))
            .with_http_connector(super::net::Connector(opts.http(allow_http)))
            .with_retry(retry_config(opts))
            .with_skip_signature(anonymous);
        if opts.endpoint_url.is_some() {
            builder = builder.with_base_url(&base_url);
        }
        match (&opts.auth, key_text) {
            (Auth::WebIdentity(id), _) => {
                builder = builder.with_credentials(Arc::new(
                    super::identity::GcpWorkloadIdentity::new(id, opts)?,
                ));
            }
            (_, Some(text)) => builder = builder.with_service_account_key(text),
            (Auth::Anonymous, None) => {}
            (_, None) => match std::env::var("GOOGLE_APPLICATION_CREDENTIALS") {
                Ok(path) => builder = builder.with_application_credentials(path),
                Err(_) if gcs_metadata_allowed(opts) => {}
                Err(_) => {
                    return Err(config(
                        "no GCS credentials found (tried: a service account key \
                         (--service-account-file, or GOOGLE_SERVICE_ACCOUNT_JSON in the volume's \
                         Secret), GOOGLE_APPLICATION_CREDENTIALS; the metadata server is asked \
                         only with PAIL_GCS_METADATA=true)"
                            .into(),
                    ));
                }
            },
        }
        let gcs = builder.build().map_err(|e| config(e.to_string()))?;
        let credentials = (!anonymous).then(|| gcs.credentials().clone());
        let http = super::net::Guarded::new(&opts.http(allow_http))?;
        Ok(GcsBucket {
            description: format!("gs://{}/{} ({base_url})", source.bucket, source.prefix),
            objects: Objects {
                inner: Arc::new(gcs),
                metadata: true,
            },
            json: Json {
                http: HttpClient::new(http),
                base_url,
                bucket: source.bucket.clone(),
                credentials,
                retry: RetryPolicy::of(opts),
            },
        })
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct JsonList {
    #[serde(default)]
    items: Vec<JsonObject>,
    #[serde(default)]
    prefixes: Vec<String>,
    next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JsonObject {
    name: String,
    #[serde(default)]
    size: Option<String>,
    #[serde(default)]
    updated: Option<String>,
}

impl Json {
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

    /// One JSON API request, tried again as the store's retry policy allows; the answer's
    /// body, or an error whose kind is the status's.
    async fn request(
        &self,
        method: &str,
        url: String,
        key: &str,
        body: HttpRequestBody,
        content_type: Option<&str>,
    ) -> Result<Bytes> {
        let started = std::time::Instant::now();
        let mut retries = 0;
        loop {
            match self
                .attempt(method, &url, key, body.clone(), content_type)
                .await
            {
                Ok(b) => return Ok(b),
                Err((e, true)) if self.retry.wait(&mut retries, started, &e.to_string()).await => {}
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// One try of a request: the error, and whether trying again may help.
    async fn attempt(
        &self,
        method: &str,
        url: &str,
        key: &str,
        body: HttpRequestBody,
        content_type: Option<&str>,
    ) -> std::result::Result<Bytes, (StoreError, bool)> {
        let mut b = http::Request::builder().method(method).uri(url).header(
            http::header::CONTENT_LENGTH,
            body.content_length().to_string(),
        );
        if let Some(ct) = content_type {
            b = b.header(http::header::CONTENT_TYPE, ct);
        }
        if let Some(token) = self.bearer(key).await.map_err(|e| (e, false))? {
            b = b.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let req = b.body(body).map_err(|e| {
            (
                StoreError::new(StoreErrorKind::InvalidKey, format!("{key:?}: {e}")),
                false,
            )
        })?;
        let resp = self.http.execute(req).await.map_err(|e| {
            let e = StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{key:?}: {method}: {e}"),
            )
            .with_source(e);
            (e, true)
        })?;
        let status = resp.status();
        let body = match resp.into_body().bytes().await {
            Ok(b) => b,
            Err(e) if status.is_success() => {
                let e = StoreError::new(
                    StoreErrorKind::Unavailable,
                    format!("{key:?}: {method}: reading the answer: {e}"),
                );
                return Err((e, true));
            }
            Err(_) => Bytes::new(),
        };
        if status.is_success() {
            return Ok(body);
        }
        let (kind, retry) = super::retry::classify(status.as_u16(), None);
        Err((
            StoreError::new(kind, format!("{key:?}: {method} HTTP {}", status.as_u16())),
            retry,
        ))
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        let mut url = format!(
            "{}/storage/v1/b/{}/o?prefix={}&projection=noAcl",
            self.base_url,
            self.bucket,
            encode(prefix)
        );
        if opts.delimiter {
            url.push_str("&delimiter=%2F");
        }
        if let Some(t) = &opts.token {
            url.push_str(&format!("&pageToken={}", encode(t)));
        }
        if let Some(n) = opts.max_keys {
            url.push_str(&format!("&maxResults={n}"));
        }
        let body = self
            .request("GET", url, prefix, HttpRequestBody::empty(), None)
            .await?;
        let list: JsonList = serde_json::from_slice(&body).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{prefix:?}: malformed listing: {e}"),
            )
        })?;
        Ok(Page {
            objects: list
                .items
                .into_iter()
                .map(|o| ObjectInfo {
                    size: o.size.and_then(|s| s.parse().ok()).unwrap_or(0),
                    mtime: o
                        .updated
                        .and_then(|u| chrono::DateTime::parse_from_rfc3339(&u).ok())
                        .map(|t| SystemTime::from(t.with_timezone(&chrono::Utc)))
                        .unwrap_or(SystemTime::UNIX_EPOCH),
                    key: o.name,
                    // JSON API ETags differ from the XML API's, which reads would check.
                    etag: None,
                    meta: Meta::new(),
                    content_type: None,
                })
                .collect(),
            prefixes: list.prefixes,
            next: list.next_page_token.filter(|t| !t.is_empty()),
        })
    }

    /// Write the whole object `key` (a JSON API upload: media, or multipart with the
    /// object resource when there is metadata or a condition).
    async fn upload(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<()> {
        let mut query = String::new();
        match &opts.condition {
            Some(Condition::IfNoneMatch) => query.push_str("&ifGenerationMatch=0"),
            Some(Condition::IfMatch(_)) => {
                return Err(StoreError::new(
                    StoreErrorKind::Unsupported,
                    format!("{key:?}: GCS writes cannot be conditional on an ETag"),
                ));
            }
            None => {}
        }
        if opts.meta.is_empty() && opts.content_type.is_none() {
            let url = format!(
                "{}/upload/storage/v1/b/{}/o?uploadType=media&name={}{query}",
                self.base_url,
                self.bucket,
                encode(key)
            );
            let body = HttpRequestBody::from(data.to_bytes());
            return self.request("POST", url, key, body, None).await.map(|_| ());
        }
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart{query}",
            self.base_url, self.bucket
        );
        let mut resource = serde_json::json!({ "name": key, "metadata": opts.meta });
        if let Some(ct) = &opts.content_type {
            resource["contentType"] = serde_json::Value::String(ct.clone());
        }
        let boundary = "pail-boundary-7f3a9c";
        let mut body = Vec::with_capacity(data.len() as usize + 512);
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{resource}\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n")
                .as_bytes(),
        );
        for chunk in data.chunks() {
            body.extend_from_slice(chunk);
        }
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let ct = format!("multipart/related; boundary={boundary}");
        self.request("POST", url, key, HttpRequestBody::from(body), Some(&ct))
            .await
            .map(|_| ())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let url = format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base_url,
            self.bucket,
            encode(key)
        );
        match self
            .request("DELETE", url, key, HttpRequestBody::empty(), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

#[async_trait::async_trait]
impl Bucket for GcsBucket {
    fn describe(&self) -> &str {
        &self.description
    }

    fn features(&self) -> Features {
        Features {
            metadata: true,
            part_copy: false,
            min_part_size: 5 << 20,
            conditional_writes: false,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.objects.head(key).await
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        check_key(prefix)?;
        self.json.list(prefix, opts).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        _if_match: Option<&str>,
    ) -> Result<Bytes> {
        // Not pinned: listings (JSON API) and reads (XML API) see different ETags.
        if range.start >= range.end {
            return Ok(Bytes::new());
        }
        self.objects.get_range(key, range, None).await
    }

    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        check_key(key)?;
        self.json.upload(key, data, opts).await?;
        Ok(PutResult::default())
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        self.objects.start_upload(key, opts).await
    }

    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult> {
        if opts.replace.is_some() || opts.if_match.is_some() {
            return Err(StoreError::new(
                StoreErrorKind::Unsupported,
                format!("{from:?}: GCS copies keep their metadata and cannot be conditional"),
            ));
        }
        self.objects.copy(from, to).await?;
        Ok(PutResult::default())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.json.delete(key).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// A server that answers each request with the next of `answers` (status, body), then
    /// with the last one; it counts the requests.
    async fn server(answers: Vec<(u16, &'static str)>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let (status, body) = answers[n.min(answers.len() - 1)];
                let mut buf = vec![0u8; 64 << 10];
                let _ = conn.read(&mut buf).await;
                let reply = format!(
                    "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                     Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(reply.as_bytes()).await;
            }
        });
        (url, count)
    }

    fn bucket(url: &str, max_retries: usize) -> GcsBucket {
        crate::store::init_crypto();
        let source = Source::parse("gs://bkt/").unwrap();
        let opts = StoreOptions {
            endpoint_url: Some(url.to_string()),
            auth: Auth::Anonymous,
            max_retries: Some(max_retries),
            ..Default::default()
        };
        GcsBucket::open(&source, &opts).unwrap()
    }

    #[tokio::test]
    async fn json_calls_are_tried_again_after_transient_answers() {
        let listing = r#"{"items":[{"name":"a","size":"3"}],"prefixes":["d/"]}"#;
        let (url, count) = server(vec![(503, "{}"), (429, "{}"), (200, listing)]).await;
        let page = bucket(&url, 5)
            .list("", &ListOptions::default())
            .await
            .unwrap();
        assert_eq!(page.objects.len(), 1);
        assert_eq!(page.objects[0].size, 3);
        assert_eq!(page.prefixes, ["d/"]);
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn json_calls_stop_at_the_policys_count_and_say_the_status() {
        let (url, count) = server(vec![(503, "{}")]).await;
        let e = bucket(&url, 2)
            .list("", &ListOptions::default())
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Unavailable);
        assert!(e.to_string().contains("HTTP 503"), "{e}");
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn json_calls_refused_for_good_are_not_tried_again() {
        let (url, count) = server(vec![(403, "{}"), (200, "{}")]).await;
        let e = bucket(&url, 5).delete("k").await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::PermissionDenied);
        assert_eq!(count.load(Ordering::SeqCst), 1);
    }
}
