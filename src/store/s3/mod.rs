//! S3 and S3-compatible stores (AWS, R2, SeaweedFS, MinIO, GCS through HMAC keys): the
//! [`Bucket`] over pail's own signed-request client, so that every key S3 can hold (control
//! characters included) can be listed, read, written, copied and deleted, and conditional
//! writes, part copies and markers are ordinary requests.

mod client;
mod credentials;
mod multipart;
mod xml;

use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderName, Method};
use object_store::{ClientOptions, RetryConfig};

use self::client::{Answer, Call, Client, Target};
use self::multipart::{S3Upload, copy_in_parts};
use super::retry::RetryPolicy;
use super::{
    Bucket, Condition, CopyOptions, Features, ListOptions, ObjectInfo, Page, Payload, PutOptions,
    PutResult, Result, Source, StoreError, StoreErrorKind, StoreOptions, Upload, check_key,
};

/// Default region when none is configured.
const DEFAULT_REGION: &str = "us-east-1";
/// The largest object one CopyObject copies.
const COPY_LIMIT: u64 = 5 << 30;

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Timeouts and retries of `opts`, as `object_store` takes them (for credential requests).
pub(super) fn client_options(opts: &StoreOptions, allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(opts.request_timeout())
        .with_connect_timeout(Duration::from_secs(5))
        .with_pool_max_idle_per_host(64)
}

pub(super) fn retry_config(opts: &StoreOptions) -> RetryConfig {
    RetryPolicy::of(opts).object_store()
}

/// Headers carrying a write's metadata, Content-Type and (for single requests) condition.
pub(super) fn headers_of(opts: &PutOptions, with_condition: bool) -> Vec<(HeaderName, String)> {
    let mut h = Vec::new();
    for (k, v) in &opts.meta {
        if let Ok(name) = HeaderName::try_from(format!("x-amz-meta-{k}")) {
            h.push((name, v.clone()));
        }
    }
    if let Some(ct) = &opts.content_type {
        h.push((http::header::CONTENT_TYPE, ct.clone()));
    }
    if with_condition {
        match &opts.condition {
            Some(Condition::IfNoneMatch) => h.push((http::header::IF_NONE_MATCH, "*".into())),
            Some(Condition::IfMatch(e)) => h.push((http::header::IF_MATCH, e.clone())),
            None => {}
        }
    }
    h
}

/// The headers of server-side encryption and storage class every write carries.
fn write_headers(opts: &StoreOptions) -> Vec<(HeaderName, String)> {
    let mut h = Vec::new();
    let name = |n: &'static str| HeaderName::from_static(n);
    if let Some(s) = &opts.sse {
        h.push((name("x-amz-server-side-encryption"), s.clone()));
    }
    if let Some(k) = &opts.sse_kms_key_id {
        h.push((
            name("x-amz-server-side-encryption-aws-kms-key-id"),
            k.clone(),
        ));
    }
    if let Some(c) = &opts.storage_class {
        h.push((name("x-amz-storage-class"), c.clone()));
    }
    h
}

fn info_of(key: &str, a: &Answer) -> ObjectInfo {
    let mut meta = super::Meta::new();
    for (name, value) in &a.headers {
        if let Some(k) = name.as_str().strip_prefix("x-amz-meta-") {
            meta.insert(
                k.to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            );
        }
    }
    ObjectInfo {
        key: key.to_string(),
        size: a
            .header("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0),
        mtime: a
            .header("last-modified")
            .and_then(|v| httpdate::parse_http_date(&v).ok())
            .unwrap_or(SystemTime::UNIX_EPOCH),
        etag: a.header("etag"),
        meta,
        content_type: a.header("content-type"),
    }
}

/// An S3 bucket.
#[derive(Debug)]
pub struct S3Bucket {
    client: Arc<Client>,
    description: String,
    /// Objects larger than this are copied in parts.
    copy_limit: u64,
}

impl S3Bucket {
    /// Open the bucket `source` names.
    pub fn open(source: &Source, opts: &StoreOptions) -> Result<S3Bucket> {
        let region = opts
            .region
            .clone()
            .or_else(|| env("AWS_REGION"))
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| DEFAULT_REGION.to_string());
        let (target, path_style) = match &opts.endpoint_url {
            Some(e) => {
                let url = url::Url::parse(e)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host_str().is_some());
                let Some(url) = url else {
                    return Err(StoreError::new(
                        StoreErrorKind::Config,
                        format!("bad endpoint URL {e:?}: expected http:// or https://host[:port]"),
                    ));
                };
                let target = Target {
                    endpoint: url.origin().ascii_serialization(),
                    region: region.clone(),
                    aws_regional: false,
                };
                (target, true)
            }
            None => (Target::aws(&region), opts.force_path_style),
        };
        let endpoint = target.endpoint.clone();
        let allow_http = endpoint.starts_with("http://");
        if let Some(p) = &opts.net {
            let url = url::Url::parse(&endpoint)
                .map_err(|e| StoreError::new(StoreErrorKind::Config, e.to_string()))?;
            p.check_endpoint(&url)?;
        }
        let credentials = credentials::provider(
            opts,
            &source.bucket,
            &region,
            client_options(opts, allow_http),
            retry_config(opts),
        )?;
        let client = Client {
            http: super::net::http_client(&opts.http(allow_http), false)?,
            target: std::sync::RwLock::new(target),
            follow_region: opts.region.is_none(),
            bucket: source.bucket.clone(),
            path_style,
            credentials,
            at_instance_metadata: matches!(opts.auth, crate::store::Auth::Chain)
                && credentials::chain() == credentials::Chain::Instance,
            requester_pays: opts.requester_pays,
            retry: RetryPolicy::of(opts),
            write_headers: write_headers(opts),
            net: opts.net.clone(),
        };
        Ok(S3Bucket {
            client: Arc::new(client),
            description: format!("s3://{}/{} ({endpoint})", source.bucket, source.prefix),
            copy_limit: COPY_LIMIT,
        })
    }

    /// Copy objects larger than `bytes` in parts (tests use a small limit).
    pub fn with_copy_limit(mut self, bytes: u64) -> S3Bucket {
        self.copy_limit = bytes;
        self
    }
}

#[async_trait::async_trait]
impl Bucket for S3Bucket {
    fn describe(&self) -> &str {
        &self.description
    }

    fn features(&self) -> Features {
        Features {
            metadata: true,
            part_copy: true,
            min_part_size: 5 << 20,
            conditional_writes: true,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        check_key(key)?;
        match self.client.send(&Call::new(Method::HEAD, key)).await {
            Ok(a) => Ok(Some(info_of(key, &a))),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        check_key(prefix)?;
        let mut call = Call::new(Method::GET, "")
            .query("list-type", "2")
            .query("encoding-type", "url")
            .query("prefix", prefix);
        if opts.delimiter {
            call = call.query("delimiter", "/");
        }
        if let Some(t) = &opts.token {
            call = call.query("continuation-token", t.clone());
        }
        if let Some(n) = opts.max_keys {
            call = call.query("max-keys", n.to_string());
        }
        let answer = self.client.send(&call).await?;
        let page = xml::list_page(&answer.body.to_bytes())?;
        Ok(Page {
            objects: page.objects,
            prefixes: page.prefixes,
            next: page.next,
        })
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes> {
        Ok(self.get_parts(key, range, if_match).await?.to_bytes())
    }

    async fn get_parts(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Payload> {
        check_key(key)?;
        if range.start >= range.end {
            return Ok(Payload::new());
        }
        let mut call = Call::new(Method::GET, key).header(
            http::header::RANGE,
            format!("bytes={}-{}", range.start, range.end - 1),
        );
        if let Some(e) = if_match {
            call = call.header(http::header::IF_MATCH, e);
        }
        call.expect_len = Some(range.end - range.start);
        Ok(self.client.send(&call).await?.body)
    }

    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        check_key(key)?;
        let mut call = Call::new(Method::PUT, key).body(data);
        call.headers = headers_of(opts, true);
        call.headers
            .extend(self.client.write_headers.iter().cloned());
        let answer = self.client.send(&call).await?;
        Ok(PutResult {
            etag: answer.header("etag"),
        })
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        check_key(key)?;
        Ok(Box::new(
            S3Upload::start(self.client.clone(), key, opts).await?,
        ))
    }

    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult> {
        check_key(from)?;
        check_key(to)?;
        let info = self.head(from).await?.ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::NotFound,
                format!("{from:?}: no such object"),
            )
        })?;
        if info.size > self.copy_limit {
            let put = opts.replace.clone().unwrap_or(PutOptions {
                meta: info.meta.clone(),
                content_type: info.content_type.clone(),
                condition: None,
            });
            let part = (self.copy_limit / 2).clamp(5 << 20, 512 << 20);
            return copy_in_parts(
                self.client.clone(),
                from,
                to,
                info.size,
                part,
                &put,
                opts.if_match.as_deref(),
            )
            .await;
        }
        let mut call = Call::new(Method::PUT, to);
        if let Some(put) = &opts.replace {
            call.headers = headers_of(put, false);
            call = call.header("x-amz-metadata-directive", "REPLACE");
        }
        call.headers
            .extend(self.client.write_headers.iter().cloned());
        call = call.header("x-amz-copy-source", self.client.copy_source(from));
        if let Some(e) = &opts.if_match {
            call = call.header("x-amz-copy-source-if-match", e.clone());
        }
        call.error_in_body = true;
        let answer = self.client.send(&call).await?;
        Ok(PutResult {
            etag: xml::etag(&answer.body.to_bytes()),
        })
    }

    async fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        match self.client.send(&Call::new(Method::DELETE, key)).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn create_bucket(&self) -> Result<()> {
        let body = xml::create_bucket_body(&self.client.region());
        let call = Call::new(Method::PUT, "").body(Payload::from(body.into_bytes()));
        match self.client.send(&call).await {
            Ok(_) => Ok(()),
            // Ours already (S3 answers BucketAlreadyOwnedByYou; a 409 without our
            // ownership is BucketAlreadyExists, which stays an error).
            Err(e)
                if e.kind == StoreErrorKind::AlreadyExists && e.message.contains("OwnedByYou") =>
            {
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn delete_bucket(&self) -> Result<()> {
        match self.client.send(&Call::new(Method::DELETE, "")).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}
