//! One signed-request client for every S3 call: URLs (path-style or virtual-hosted, keys
//! percent-encoded byte by byte, so any key S3 can hold can be addressed), SigV4 signing
//! with `object_store`'s signer and credential providers, one retry policy
//! (`--max-retries`, `--request-timeout`, exponential backoff with jitter) and one map from
//! status (and S3 error code) to [`StoreErrorKind`]. Error messages name the operation,
//! the status and the S3 error code, never a response body.

use std::time::Instant;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use object_store::aws::{AwsAuthorizer, AwsCredentialProvider};
use object_store::client::HttpRequestBody;
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::xml;
use crate::store::error::one_line;
use crate::store::net::body;
use crate::store::retry::{RetryPolicy, classify};
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

/// Where requests go and the region they are signed for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `scheme://host[:port]` of the endpoint.
    pub endpoint: String,
    /// Region requests are signed for.
    pub region: String,
    /// The endpoint is AWS's regional one (`https://s3.<region>.amazonaws.com`): it moves
    /// with the region.
    pub aws_regional: bool,
}

impl Target {
    /// AWS's endpoint of `region`.
    pub fn aws(region: &str) -> Target {
        Target {
            endpoint: format!("https://s3.{region}.amazonaws.com"),
            region: region.to_string(),
            aws_regional: true,
        }
    }
}

/// Where and as whom requests go.
pub struct Client {
    /// The HTTP client (no redirects followed).
    pub http: reqwest::Client,
    /// Endpoint and region; they change once when the bucket says it is elsewhere.
    pub target: std::sync::RwLock<Target>,
    /// No region was given: follow the one the bucket names.
    pub follow_region: bool,
    /// Bucket name.
    pub bucket: String,
    /// Path-style addressing.
    pub path_style: bool,
    /// Credentials; unsigned requests when `None`.
    pub credentials: Option<AwsCredentialProvider>,
    /// The credentials come from the default chain's last link, instance metadata.
    pub at_instance_metadata: bool,
    /// Send `x-amz-request-payer: requester`.
    pub requester_pays: bool,
    /// Retries.
    pub retry: RetryPolicy,
    /// Headers every write carries (server-side encryption, storage class).
    pub write_headers: Vec<(HeaderName, String)>,
    /// The network policy (names behind a proxy are checked before each request).
    pub net: Option<std::sync::Arc<crate::store::net::NetPolicy>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("target", &self.target())
            .field("bucket", &self.bucket)
            .field("path_style", &self.path_style)
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
        if self.key.is_empty() {
            format!("the bucket: {}{op}", self.method)
        } else {
            format!("{:?}: {}{op}", self.key, self.method)
        }
    }
}

/// A successful answer.
#[derive(Debug)]
pub struct Answer {
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, in the pieces it arrived in.
    pub body: Payload,
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
    /// The region the store says the bucket is in, when it is not the one signed for.
    moved: Option<String>,
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

/// Whether a request failed on the server's TLS certificate.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let mut cause: Option<&dyn std::error::Error> = Some(e);
    while let Some(c) = cause {
        if c.to_string().contains("certificate") {
            return true;
        }
        cause = c.source();
    }
    false
}

impl Client {
    /// Where requests go now.
    pub fn target(&self) -> Target {
        self.target
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The region requests are signed for.
    pub fn region(&self) -> String {
        self.target().region
    }

    /// The URL of `key` with `query`.
    pub fn url(&self, key: &str, query: &[(&'static str, String)]) -> String {
        let path = encode_path(key);
        let endpoint = self.target().endpoint;
        let mut url = if self.path_style {
            if key.is_empty() {
                format!("{endpoint}/{}", self.bucket)
            } else {
                format!("{endpoint}/{}/{path}", self.bucket)
            }
        } else {
            let (scheme, host) = endpoint.split_once("://").unwrap_or(("https", &endpoint));
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

    async fn signed_headers(&self, call: &Call, url: &str, region: &str) -> Result<HeaderMap> {
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
                super::credentials::fetch_failed(&call.what(), &e, self.at_instance_metadata)
            })?;
            AwsAuthorizer::new(&cred, "s3", region)
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

    async fn attempt(
        &self,
        call: &Call,
        url: &str,
        region: &str,
    ) -> std::result::Result<Answer, Failure> {
        let fail = |error, retry| Failure {
            error,
            retry,
            moved: None,
        };
        if let Some(p) = &self.net
            && let Ok(u) = url::Url::parse(url)
        {
            p.check_proxied(&u, false)
                .await
                .map_err(|e| fail(e, false))?;
        }
        let headers = self
            .signed_headers(call, url, region)
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
        let resp = req.send().await.map_err(|e| {
            let msg = transport_error(&call.what(), &e);
            if is_certificate_error(&e) {
                // Trying again cannot help: the store's certificate is not trusted.
                let hint = " (a private CA? trust it with --ca-bundle)";
                fail(StoreError::new(StoreErrorKind::Config, msg + hint), false)
            } else {
                fail(self.unavailable(msg), true)
            }
        })?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = if call.method == Method::HEAD {
            Payload::new()
        } else if status.is_success() {
            // Object data is bounded by the range asked for, anything else by the largest
            // document S3 sends; more is refused as it arrives, never buffered.
            let limit = call.expect_len.unwrap_or(body::MAX_DOCUMENT);
            match body::read_parts(resp, limit).await {
                Ok(b) => b,
                Err(body::BodyError::TooLong { limit }) => {
                    let msg = format!(
                        "{}: the answer is longer than the {limit} bytes asked for",
                        call.what()
                    );
                    return Err(fail(StoreError::new(StoreErrorKind::Other, msg), false));
                }
                Err(body::BodyError::Transport(e)) => {
                    return Err(fail(
                        self.unavailable(transport_error(&call.what(), &e)),
                        true,
                    ));
                }
            }
        } else {
            Payload::from(body::read_start(resp, body::MAX_ERROR_BODY).await)
        };
        let code = if !status.is_success() || call.error_in_body {
            xml::error_code(&body.to_bytes())
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
                StatusCode::INTERNAL_SERVER_ERROR.as_u16()
            } else {
                status.as_u16()
            },
            code.as_deref(),
        );
        let mut msg = format!("{}: HTTP {}", call.what(), status.as_u16());
        if let Some(c) = &code {
            msg.push(' ');
            msg.push_str(c);
        }
        let moved = headers
            .get("x-amz-bucket-region")
            .and_then(|v| v.to_str().ok())
            .filter(|r| {
                !r.is_empty()
                    && r.len() <= 32
                    && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
            .filter(|r| *r != region)
            .map(str::to_string);
        if let Some(right) = &moved {
            msg.push_str(&format!(" (the bucket is in region {right}, not {region})"));
        }
        Err(Failure {
            error: StoreError::new(kind, msg),
            retry,
            moved,
        })
    }

    fn unavailable(&self, msg: String) -> StoreError {
        StoreError::new(StoreErrorKind::Unavailable, msg)
    }

    /// Move to `region` (and its endpoint, when on AWS's regional ones).
    fn follow(&self, region: &str) {
        let mut t = self.target.write().unwrap_or_else(|e| e.into_inner());
        tracing::info!(bucket = %self.bucket, from = %t.region, to = %region, "the bucket is in another region: following it");
        *t = if t.aws_regional {
            Target::aws(region)
        } else {
            Target {
                region: region.to_string(),
                ..t.clone()
            }
        };
    }

    /// Send `call`, trying again after transient failures as the policy allows; without a
    /// configured region, once in the region the bucket names.
    pub async fn send(&self, call: &Call) -> Result<Answer> {
        let started = Instant::now();
        let mut retries = 0;
        let mut followed = false;
        loop {
            let region = self.region();
            let url = self.url(&call.key, &call.query);
            match self.attempt(call, &url, &region).await {
                Ok(a) => return Ok(a),
                Err(Failure {
                    moved: Some(right), ..
                }) if self.follow_region && !followed => {
                    followed = true;
                    self.follow(&right);
                }
                Err(f) => {
                    if !f.retry
                        || !self
                            .retry
                            .wait(&mut retries, started, &f.error.to_string())
                            .await
                    {
                        return Err(f.error);
                    }
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
            target: std::sync::RwLock::new(Target::aws("eu-west-1")),
            follow_region: false,
            bucket: "b".into(),
            path_style,
            credentials: None,
            at_instance_metadata: false,
            requester_pays: false,
            retry: RetryPolicy::default(),
            write_headers: Vec::new(),
            net: None,
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

    /// A store that wants requests signed for `eu-west-3`, answering others as S3 does
    /// (400 with the bucket's region in a header).
    async fn store_in_eu_west_3() -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).to_string();
                let resp = if head.contains("/eu-west-3/s3/aws4_request") {
                    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else {
                    "HTTP/1.1 400 Bad Request\r\nx-amz-bucket-region: eu-west-3\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = conn.write_all(resp.as_bytes()).await;
            }
        });
        endpoint
    }

    fn signed_client(endpoint: &str, follow_region: bool) -> Client {
        let mut c = client(true);
        c.target = std::sync::RwLock::new(Target {
            endpoint: endpoint.to_string(),
            region: "us-east-1".into(),
            aws_regional: false,
        });
        c.follow_region = follow_region;
        c.credentials = Some(std::sync::Arc::new(
            object_store::StaticCredentialProvider::new(object_store::aws::AwsCredential {
                key_id: "AK".into(),
                secret_key: "SK".into(),
                token: None,
            }),
        ));
        c
    }

    #[tokio::test]
    async fn without_a_region_the_one_the_bucket_names_is_followed() {
        let endpoint = store_in_eu_west_3().await;
        let c = signed_client(&endpoint, true);
        c.send(&Call::new(Method::HEAD, "k")).await.unwrap();
        assert_eq!(c.region(), "eu-west-3");
        assert_eq!(c.target().endpoint, endpoint, "a custom endpoint stays");
        let given = signed_client(&endpoint, false);
        let e = given.send(&Call::new(Method::HEAD, "k")).await.unwrap_err();
        assert!(
            e.message
                .contains("the bucket is in region eu-west-3, not us-east-1"),
            "{e}"
        );
        assert_eq!(given.region(), "us-east-1", "a region given is kept");
        let mut aws = Target::aws("us-east-1");
        assert_eq!(aws.endpoint, "https://s3.us-east-1.amazonaws.com");
        aws = Target::aws("eu-west-3");
        assert!(aws.aws_regional && aws.endpoint.contains("s3.eu-west-3."));
    }
}
