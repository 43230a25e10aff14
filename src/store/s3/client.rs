//! One signed-request client for every S3 call: URLs (path-style or virtual-hosted, keys
//! percent-encoded byte by byte, so any key S3 can hold can be addressed), SigV4 signing
//! with `object_store`'s signer and credential providers, one retry policy
//! (`--max-retries`, `--request-timeout`, exponential backoff with jitter) and one map from
//! status (and S3 error code) to [`StoreErrorKind`]. Error messages name the operation,
//! the status and the S3 error code, never a response body.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::HttpRequestBody;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::xml;
use crate::store::error::one_line;
use crate::store::{Payload, Result, StoreError, StoreErrorKind};

/// Bytes kept as they are in a URL path: RFC 3986 unreserved characters and `/`.
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');
/// Bytes kept as they are in a query value: RFC 3986 unreserved characters.
const QUERY: &AsciiSet = &PATH.add(b'/');

/// Percent-encode a key for a URL path (`/` kept).
pub fn encode_path(key: &str) -> String {
    utf8_percent_encode(key, PATH).to_string()
}

fn encode_query(v: &str) -> String {
    utf8_percent_encode(v, QUERY).to_string()
}

/// When and how often a failed request is tried again.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: usize,
    /// No retry starts after this much time since the first attempt.
    pub total: Duration,
    /// First backoff.
    pub initial: Duration,
    /// Largest backoff.
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 10,
            total: Duration::from_secs(120),
            initial: Duration::from_millis(100),
            max: Duration::from_secs(15),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `n` (1-based): exponential, with full jitter.
    fn backoff(&self, n: usize) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << (n.min(16) as u32 - 1).min(15));
        let cap = exp.min(self.max);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0) as u64;
        // A cheap jitter in [cap/2, cap].
        let frac = 0.5 + (nanos % 1000) as f64 / 2000.0;
        cap.mul_f64(frac)
    }
}

/// Where and as whom requests go.
pub struct Client {
    /// The HTTP client (no redirects followed).
    pub http: reqwest::Client,
    /// `scheme://host[:port]` of the endpoint.
    pub endpoint: String,
    /// Bucket name.
    pub bucket: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Region requests are signed for.
    pub region: String,
    /// Credentials; unsigned requests when `None`.
    pub credentials: Option<AwsCredentialProvider>,
    /// Send `x-amz-request-payer: requester`.
    pub requester_pays: bool,
    /// Retries.
    pub retry: RetryPolicy,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// One request.
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Object key ("" for the bucket itself).
    pub key: String,
    /// Query parameters.
    pub query: Vec<(&'static str, String)>,
    /// Extra headers.
    pub headers: Vec<(HeaderName, String)>,
    /// Body.
    pub body: Payload,
    /// The answer is an S3 document that may be an `<Error>` despite a 200 status
    /// (CopyObject, UploadPartCopy, CompleteMultipartUpload).
    pub error_in_body: bool,
    /// The body must be exactly this long (a short one is retried).
    pub expect_len: Option<u64>,
}

impl Call {
    /// A bodiless request.
    pub fn new(method: Method, key: impl Into<String>) -> Self {
        Call {
            method,
            key: key.into(),
            query: Vec::new(),
            headers: Vec::new(),
            body: Payload::new(),
            error_in_body: false,
            expect_len: None,
        }
    }

    /// Add a query parameter.
    pub fn query(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.query.push((k, v.into()));
        self
    }

    /// Add a header.
    pub fn header(mut self, k: impl TryInto<HeaderName>, v: impl Into<String>) -> Self {
        if let Ok(k) = k.try_into() {
            self.headers.push((k, v.into()));
        }
        self
    }

    /// Set the body.
    pub fn body(mut self, body: Payload) -> Self {
        self.body = body;
        self
    }

    fn what(&self) -> String {
        let op = self
            .query
            .first()
            .map(|(k, _)| format!(" ?{k}"))
            .unwrap_or_default();
        format!("{:?}: {}{op}", self.key, self.method)
    }
}

/// A successful answer.
pub struct Answer {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Answer {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }
}

struct Failure {
    error: StoreError,
    retry: bool,
}

/// The kind of a failed answer, and whether trying again may help.
fn classify(status: StatusCode, code: Option<&str>) -> (StoreErrorKind, bool) {
    match (status.as_u16(), code) {
        (_, Some("SlowDown" | "InternalError" | "RequestTimeout" | "ServiceUnavailable")) => {
            (StoreErrorKind::Unavailable, true)
        }
        (404, _) => (StoreErrorKind::NotFound, false),
        (401 | 403, _) => (StoreErrorKind::PermissionDenied, false),
        (412, _) => (StoreErrorKind::Precondition, false),
        (409, Some("BucketAlreadyExists" | "BucketAlreadyOwnedByYou")) => {
            (StoreErrorKind::AlreadyExists, false)
        }
        // A concurrent conditional write: trying again gives the real answer.
        (409, Some("ConditionalRequestConflict" | "OperationAborted")) => {
            (StoreErrorKind::Unavailable, true)
        }
        (301 | 307 | 308, _) => (StoreErrorKind::Config, false),
        (408 | 429, _) => (StoreErrorKind::Unavailable, true),
        (s, _) if s >= 500 => (StoreErrorKind::Unavailable, true),
        _ => (StoreErrorKind::Other, false),
    }
}

fn transport_error(what: &str, e: &reqwest::Error) -> String {
    // The innermost cause says most ("connection refused", "timed out").
    let mut cause: &dyn std::error::Error = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    one_line(&format!("{what}: {kind}: {cause}"))
}

impl Client {
    /// The URL of `key` with `query`.
    pub fn url(&self, key: &str, query: &[(&'static str, String)]) -> String {
        let path = encode_path(key);
        let mut url = if self.path_style {
            if key.is_empty() {
                format!("{}/{}", self.endpoint, self.bucket)
            } else {
                format!("{}/{}/{path}", self.endpoint, self.bucket)
            }
        } else {
            let (scheme, host) = self
                .endpoint
                .split_once("://")
                .unwrap_or(("https", &self.endpoint));
            format!("{scheme}://{}.{host}/{path}", self.bucket)
        };
        for (i, (k, v)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(k);
            url.push('=');
            url.push_str(&encode_query(v));
        }
        url
    }

    /// The `x-amz-copy-source` value naming `key` in this bucket.
    pub fn copy_source(&self, key: &str) -> String {
        format!("/{}/{}", self.bucket, encode_path(key))
    }

    async fn signed_headers(&self, call: &Call, url: &str) -> Result<HeaderMap> {
        let bad = |e: String| {
            StoreError::new(StoreErrorKind::InvalidKey, format!("{}: {e}", call.what()))
        };
        let mut req = http::Request::builder()
            .method(call.method.clone())
            .uri(url)
            .body(HttpRequestBody::empty())
            .map_err(|e| bad(e.to_string()))?;
        for (k, v) in &call.headers {
            let v = HeaderValue::from_str(v).map_err(|e| bad(format!("header {k}: {e}")))?;
            req.headers_mut().insert(k.clone(), v);
        }
        if let Some(provider) = &self.credentials {
            let cred = provider.get_credential().await.map_err(|e| {
                StoreError::new(
                    StoreErrorKind::PermissionDenied,
                    format!(
                        "{}: no credentials: {}",
                        call.what(),
                        one_line(&e.to_string())
                    ),
                )
            })?;
            AwsAuthorizer::new(&cred, "s3", &self.region)
                .with_sign_payload(false)
                .with_request_payer(self.requester_pays)
                .try_authorize(&mut req, None)
                .map_err(|e| bad(e.to_string()))?;
        } else if self.requester_pays {
            req.headers_mut()
                .insert("x-amz-request-payer", HeaderValue::from_static("requester"));
        }
        Ok(req.headers().clone())
    }

    async fn attempt(&self, call: &Call, url: &str) -> std::result::Result<Answer, Failure> {
        let fail = |error, retry| Failure { error, retry };
        let headers = self
            .signed_headers(call, url)
            .await
            .map_err(|e| fail(e, false))?;
        let len = call.body.len();
        let body = match call.body.chunks() {
            [] => reqwest::Body::from(Bytes::new()),
            [one] => reqwest::Body::from(one.clone()),
            many => {
                let chunks: Vec<std::result::Result<Bytes, std::io::Error>> =
                    many.iter().cloned().map(Ok).collect();
                reqwest::Body::wrap_stream(futures::stream::iter(chunks))
            }
        };
        let mut req = self
            .http
            .request(call.method.clone(), url)
            .headers(headers)
            .body(body);
        if call.method != Method::GET && call.method != Method::HEAD {
            req = req.header(http::header::CONTENT_LENGTH, len.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| fail(self.unavailable(transport_error(&call.what(), &e)), true))?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|e| fail(self.unavailable(transport_error(&call.what(), &e)), true))?;
        let code = if !status.is_success() || call.error_in_body {
            xml::error_code(&body)
        } else {
            None
        };
        if status.is_success() && code.is_none() {
            if let Some(want) = call.expect_len
                && body.len() as u64 != want
            {
                let msg = format!(
                    "{}: short body: {} of {want} bytes",
                    call.what(),
                    body.len()
                );
                return Err(fail(self.unavailable(msg), true));
            }
            return Ok(Answer { headers, body });
        }
        let (kind, retry) = classify(
            if status.is_success() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                status
            },
            code.as_deref(),
        );
        let mut msg = format!("{}: HTTP {}", call.what(), status.as_u16());
        if let Some(c) = &code {
            msg.push(' ');
            msg.push_str(c);
        }
        if let Some(region) = headers
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .filter(|r| r.len() <= 32 && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
            && region != self.region
        {
            msg.push_str(&format!(
                " (the bucket is in region {region}, not {})",
                self.region
            ));
        }
        Err(fail(StoreError::new(kind, msg), retry))
    }

    fn unavailable(&self, msg: String) -> StoreError {
        StoreError::new(StoreErrorKind::Unavailable, msg)
    }

    /// Send `call`, trying again after transient failures as the policy allows.
    pub async fn send(&self, call: &Call) -> Result<Answer> {
        let url = self.url(&call.key, &call.query);
        let started = Instant::now();
        let mut retries = 0;
        loop {
            match self.attempt(call, &url).await {
                Ok(a) => return Ok(a),
                Err(f) => {
                    if !f.retry
                        || retries >= self.retry.max_retries
                        || started.elapsed() >= self.retry.total
                    {
                        return Err(f.error);
                    }
                    retries += 1;
                    let wait = self.retry.backoff(retries);
                    tracing::debug!(error = %f.error, retries, ?wait, "retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(path_style: bool) -> Client {
        crate::store::init_crypto();
        Client {
            http: reqwest::Client::new(),
            endpoint: "https://s3.eu-west-1.amazonaws.com".into(),
            bucket: "b".into(),
            path_style,
            region: "eu-west-1".into(),
            credentials: None,
            requester_pays: false,
            retry: RetryPolicy::default(),
        }
    }

    #[test]
    fn urls_encode_every_byte_of_a_key_but_slashes_and_unreserved() {
        let c = client(true);
        assert_eq!(
            c.url("a b/c+d\u{1}é~", &[("x-id", "a/b c".into())]),
            "https://s3.eu-west-1.amazonaws.com/b/a%20b/c%2Bd%01%C3%A9~?x-id=a%2Fb%20c"
        );
        assert_eq!(c.url("", &[]), "https://s3.eu-west-1.amazonaws.com/b");
        assert_eq!(
            client(false).url("k", &[]),
            "https://b.s3.eu-west-1.amazonaws.com/k"
        );
        assert_eq!(c.copy_source("a b"), "/b/a%20b");
    }

    #[test]
    fn statuses_and_codes_decide_the_kind_and_retries() {
        let k = |s: u16, c: Option<&str>| classify(StatusCode::from_u16(s).unwrap(), c);
        assert_eq!(k(404, Some("NoSuchKey")), (StoreErrorKind::NotFound, false));
        assert_eq!(k(403, None), (StoreErrorKind::PermissionDenied, false));
        assert_eq!(k(412, None), (StoreErrorKind::Precondition, false));
        assert_eq!(
            k(503, Some("SlowDown")),
            (StoreErrorKind::Unavailable, true)
        );
        assert_eq!(k(500, None), (StoreErrorKind::Unavailable, true));
        assert_eq!(
            k(200, Some("InternalError")),
            (StoreErrorKind::Unavailable, true)
        );
        assert_eq!(
            k(400, Some("InvalidArgument")),
            (StoreErrorKind::Other, false)
        );
        assert_eq!(k(301, None), (StoreErrorKind::Config, false));
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        assert!(p.backoff(1) <= Duration::from_millis(100));
        assert!(p.backoff(4) >= Duration::from_millis(400));
        assert!(p.backoff(30) <= Duration::from_secs(15));
    }
}
