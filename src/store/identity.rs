//! Credentials from a workload's own token (web identity federation): AWS STS
//! `AssumeRoleWithWebIdentity`, and Google's STS token exchange with optional service
//! account impersonation. The token is a file (the CSI node plugin rewrites it when kubelet
//! hands a fresh one); it is read again before each use, and credentials are fetched again
//! before they expire or as soon as the token changes. While STS is unreachable, credentials
//! that have not expired yet keep serving.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use object_store::aws::AwsCredential;
use object_store::gcp::GcpCredential;
use serde::Deserialize;

use super::error::one_line;
use super::retry::RetryPolicy;
use super::{Result, StoreError, StoreErrorKind, StoreOptions};

/// A workload identity: the token file and what to exchange it for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WebIdentity {
    /// The file holding the workload's token (a JWT).
    pub token_file: PathBuf,
    /// AWS: the role to assume.
    pub role_arn: Option<String>,
    /// AWS: the session name (default `pail-<time>`).
    pub session_name: Option<String>,
    /// The STS endpoint (default: the region's AWS STS, or Google's).
    pub sts_endpoint: Option<String>,
    /// Google: the workload identity provider (the STS audience).
    pub gcp_audience: Option<String>,
    /// Google: the service account to impersonate.
    pub gcp_service_account: Option<String>,
    /// Google: the IAM credentials endpoint (impersonation).
    pub iam_endpoint: Option<String>,
}

const GOOGLE_STS: &str = "https://sts.googleapis.com";
const GOOGLE_IAM: &str = "https://iamcredentials.googleapis.com";
const GOOGLE_SCOPE: &str = "https://www.googleapis.com/auth/cloud-platform";
/// Bytes escaped in a path segment: all but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// Token exchanges follow the store's retry policy, with fewer retries: a fetch that
/// fails is tried again at the next request, and stale credentials serve meanwhile.
const TOKEN_RETRY: RetryPolicy = RetryPolicy {
    max_retries: 2,
    total: Duration::from_secs(30),
    initial: Duration::from_millis(400),
    max: Duration::from_secs(2),
};

fn denied(msg: String) -> StoreError {
    StoreError::new(StoreErrorKind::PermissionDenied, one_line(&msg))
}

fn to_object_store(e: StoreError) -> object_store::Error {
    object_store::Error::Generic {
        store: "identity",
        source: Box::new(e),
    }
}

fn read_token(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| denied(format!("web identity token {}: {e}", path.display())))?;
    let token = text.trim().to_string();
    if token.is_empty() {
        return Err(denied(format!(
            "web identity token {} is empty",
            path.display()
        )));
    }
    Ok(token)
}

fn digest(token: &str) -> u64 {
    let mut h = DefaultHasher::new();
    token.hash(&mut h);
    h.finish()
}

/// Credentials and when they stop working.
struct Issued<T> {
    value: Arc<T>,
    expires: SystemTime,
}

struct Entry<T> {
    issued: Issued<T>,
    obtained: SystemTime,
    token: u64,
}

impl<T> Entry<T> {
    /// Still good for long enough: more than a quarter of their life (at most 5 minutes).
    fn fresh(&self, now: SystemTime) -> bool {
        let life = self
            .issued
            .expires
            .duration_since(self.obtained)
            .unwrap_or_default();
        let margin = (life / 4).min(Duration::from_secs(300));
        self.issued
            .expires
            .duration_since(now)
            .is_ok_and(|left| left > margin)
    }
}

/// The credentials of one token file, fetched once at a time.
struct Cache<T> {
    token_file: PathBuf,
    entry: tokio::sync::Mutex<Option<Entry<T>>>,
}

impl<T> Cache<T> {
    fn new(token_file: PathBuf) -> Self {
        Cache {
            token_file,
            entry: tokio::sync::Mutex::new(None),
        }
    }

    async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<T>>
    where
        F: FnOnce(String) -> Fut,
        Fut: std::future::Future<Output = Result<Issued<T>>>,
    {
        let token = read_token(&self.token_file);
        let mut entry = self.entry.lock().await;
        let now = SystemTime::now();
        let usable = |e: &Option<Entry<T>>| {
            e.as_ref()
                .filter(|e| e.issued.expires > now + Duration::from_secs(10))
                .map(|e| e.issued.value.clone())
        };
        let token = match token {
            Ok(t) => t,
            // The file is being replaced or gone: what was issued still works until it expires.
            Err(e) => return usable(&entry).ok_or(e),
        };
        let hash = digest(&token);
        if let Some(e) = entry.as_ref()
            && e.token == hash
            && e.fresh(now)
        {
            return Ok(e.issued.value.clone());
        }
        match fetch(token).await {
            Ok(issued) => {
                let value = issued.value.clone();
                *entry = Some(Entry {
                    issued,
                    obtained: now,
                    token: hash,
                });
                Ok(value)
            }
            Err(e) => match usable(&entry) {
                Some(v) if e.kind == StoreErrorKind::Unavailable => {
                    tracing::warn!(error = %e, "refreshing credentials failed; the current ones still work");
                    Ok(v)
                }
                _ => Err(e),
            },
        }
    }
}

/// POST `body` to `url` (form or JSON), trying again where the one status map says it may
/// help (transport errors, 408, 429, 5xx).
async fn post(
    http: &reqwest::Client,
    what: &str,
    url: &str,
    bearer: Option<&str>,
    content_type: &str,
    body: String,
) -> Result<(reqwest::StatusCode, bytes::Bytes)> {
    let started = std::time::Instant::now();
    let mut retries = 0;
    loop {
        let mut req = http
            .post(url)
            .header(http::header::CONTENT_TYPE, content_type)
            .body(body.clone());
        if let Some(b) = bearer {
            req = req.bearer_auth(b);
        }
        let failed = match req.send().await {
            Ok(resp) => {
                let status = resp.status();
                // STS and token answers are small documents: a longer one is refused.
                match super::net::body::read(resp, super::net::body::MAX_DOCUMENT).await {
                    Ok(body) if !super::retry::classify(status.as_u16(), None).1 => {
                        return Ok((status, body));
                    }
                    Ok(_) => format!("HTTP {}", status.as_u16()),
                    Err(e @ super::net::body::BodyError::TooLong { .. }) => {
                        return Err(StoreError::new(
                            StoreErrorKind::Other,
                            format!("{what} at {url}: {e}"),
                        ));
                    }
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => {
                let mut cause: &dyn std::error::Error = &e;
                while let Some(next) = cause.source() {
                    cause = next;
                }
                cause.to_string()
            }
        };
        if !TOKEN_RETRY.wait(&mut retries, started, &failed).await {
            return Err(StoreError::new(
                StoreErrorKind::Unavailable,
                one_line(&format!("{what} at {url}: {failed}")),
            ));
        }
    }
}

/// The first `n` characters of a message from a server, on one line.
fn excerpt(text: &str) -> String {
    one_line(&text.chars().take(300).collect::<String>())
}

fn http_for(opts: &StoreOptions, url: &str) -> Result<reqwest::Client> {
    let parsed = url::Url::parse(url).map_err(|e| {
        StoreError::new(
            StoreErrorKind::Config,
            format!("bad STS endpoint {url:?}: {e}"),
        )
    })?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(StoreError::new(
            StoreErrorKind::Config,
            format!("bad STS endpoint {url:?}: expected http:// or https://host[:port]"),
        ));
    }
    if let Some(p) = &opts.net {
        p.check_endpoint(&parsed)?;
    }
    super::net::http_client(&opts.http(parsed.scheme() == "http"), false)
}

/// AWS: a role assumed with the workload's token.
pub struct AwsWebIdentity {
    http: reqwest::Client,
    endpoint: String,
    role_arn: String,
    session_name: String,
    cache: Cache<AwsCredential>,
}

impl std::fmt::Debug for AwsWebIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsWebIdentity")
            .field("endpoint", &self.endpoint)
            .field("role_arn", &self.role_arn)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeResponse {
    assume_role_with_web_identity_result: AssumeResult,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AssumeResult {
    credentials: StsCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsCredentials {
    access_key_id: String,
    secret_access_key: String,
    #[serde(default)]
    session_token: Option<String>,
    expiration: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsErrorResponse {
    error: StsError,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct StsError {
    code: String,
    #[serde(default)]
    message: String,
}

fn parse_time(what: &str, s: &str) -> Result<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s.trim())
        .map(SystemTime::from)
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{what}: bad expiration {s:?}: {e}"),
            )
        })
}

/// A session name AWS accepts (`[\w+=,.@-]{2,64}`), from `name`.
pub fn session_name(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect();
    while s.len() < 2 {
        s.push('-');
    }
    s
}

impl AwsWebIdentity {
    /// A provider for `id` (which names a role); STS in `region` unless an endpoint is given.
    pub fn new(id: &WebIdentity, region: &str, opts: &StoreOptions) -> Result<AwsWebIdentity> {
        let role_arn = id.role_arn.clone().ok_or_else(|| {
            StoreError::new(StoreErrorKind::Config, "a web identity needs a role ARN")
        })?;
        let endpoint = id
            .sts_endpoint
            .clone()
            .unwrap_or_else(|| format!("https://sts.{region}.amazonaws.com"))
            .trim_end_matches('/')
            .to_string();
        let session = id.session_name.clone().unwrap_or_else(|| {
            let secs = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            format!("pail-{secs}")
        });
        Ok(AwsWebIdentity {
            http: http_for(opts, &endpoint)?,
            endpoint: format!("{endpoint}/"),
            role_arn,
            session_name: session_name(&session),
            cache: Cache::new(id.token_file.clone()),
        })
    }

    async fn assume(&self, token: String) -> Result<Issued<AwsCredential>> {
        let what = format!("STS AssumeRoleWithWebIdentity for {}", self.role_arn);
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("Action", "AssumeRoleWithWebIdentity")
            .append_pair("Version", "2011-06-15")
            .append_pair("RoleArn", &self.role_arn)
            .append_pair("RoleSessionName", &self.session_name)
            .append_pair("WebIdentityToken", &token)
            .finish();
        let (status, body) = post(
            &self.http,
            &what,
            &self.endpoint,
            None,
            "application/x-www-form-urlencoded",
            body,
        )
        .await?;
        let text = String::from_utf8_lossy(&body);
        if !status.is_success() {
            let detail = quick_xml::de::from_str::<StsErrorResponse>(&text)
                .map(|e| format!("{} {}", e.error.code, excerpt(&e.error.message)))
                .unwrap_or_default();
            let kind = if status.as_u16() == 429 || detail.starts_with("Throttling") {
                StoreErrorKind::Unavailable
            } else {
                StoreErrorKind::PermissionDenied
            };
            return Err(StoreError::new(
                kind,
                one_line(&format!("{what}: HTTP {} {detail}", status.as_u16())),
            ));
        }
        let parsed: AssumeResponse = quick_xml::de::from_str(&text).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{what}: malformed answer: {e}"),
            )
        })?;
        let c = parsed.assume_role_with_web_identity_result.credentials;
        let expires = parse_time(&what, &c.expiration)?;
        tracing::info!(role = %self.role_arn, key_id = %c.access_key_id, "assumed the role with the workload's token");
        Ok(Issued {
            value: Arc::new(AwsCredential {
                key_id: c.access_key_id,
                secret_key: c.secret_access_key,
                token: c.session_token.filter(|t| !t.is_empty()),
            }),
            expires,
        })
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for AwsWebIdentity {
    type Credential = AwsCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<AwsCredential>> {
        self.cache
            .get(|token| self.assume(token))
            .await
            .map_err(to_object_store)
    }
}

/// Google: a federated token (and optionally an impersonated service account's).
pub struct GcpWorkloadIdentity {
    http: reqwest::Client,
    sts: String,
    iam: String,
    audience: String,
    service_account: Option<String>,
    cache: Cache<GcpCredential>,
}

impl std::fmt::Debug for GcpWorkloadIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcpWorkloadIdentity")
            .field("sts", &self.sts)
            .field("audience", &self.audience)
            .field("service_account", &self.service_account)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct ExchangeAnswer {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ImpersonationAnswer {
    access_token: String,
    expire_time: String,
}

impl GcpWorkloadIdentity {
    /// A provider for `id` (which names a workload identity provider).
    pub fn new(id: &WebIdentity, opts: &StoreOptions) -> Result<GcpWorkloadIdentity> {
        let audience = id.gcp_audience.clone().ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Config,
                "a Google workload identity needs the workload identity provider (audience)",
            )
        })?;
        let sts = id
            .sts_endpoint
            .as_deref()
            .unwrap_or(GOOGLE_STS)
            .trim_end_matches('/')
            .to_string();
        let iam = id
            .iam_endpoint
            .as_deref()
            .unwrap_or(GOOGLE_IAM)
            .trim_end_matches('/')
            .to_string();
        let http = http_for(opts, &sts)?;
        if id.gcp_service_account.is_some() {
            http_for(opts, &iam)?;
        }
        Ok(GcpWorkloadIdentity {
            http,
            sts,
            iam,
            audience,
            service_account: id.gcp_service_account.clone(),
            cache: Cache::new(id.token_file.clone()),
        })
    }

    fn answer<'a, T: Deserialize<'a>>(
        what: &str,
        status: reqwest::StatusCode,
        body: &'a [u8],
    ) -> Result<T> {
        if !status.is_success() {
            let kind = if status.as_u16() == 429 {
                StoreErrorKind::Unavailable
            } else {
                StoreErrorKind::PermissionDenied
            };
            return Err(StoreError::new(
                kind,
                one_line(&format!(
                    "{what}: HTTP {} {}",
                    status.as_u16(),
                    excerpt(&String::from_utf8_lossy(body))
                )),
            ));
        }
        serde_json::from_slice(body).map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{what}: malformed answer: {e}"),
            )
        })
    }

    async fn exchange(&self, token: String) -> Result<Issued<GcpCredential>> {
        let what = format!("Google STS token exchange for {}", self.audience);
        let body = serde_json::json!({
            "grantType": "urn:ietf:params:oauth:grant-type:token-exchange",
            "audience": self.audience,
            "scope": GOOGLE_SCOPE,
            "requestedTokenType": "urn:ietf:params:oauth:token-type:access_token",
            "subjectToken": token,
            "subjectTokenType": "urn:ietf:params:oauth:token-type:jwt",
        });
        let url = format!("{}/v1/token", self.sts);
        let (status, body) = post(
            &self.http,
            &what,
            &url,
            None,
            "application/json",
            body.to_string(),
        )
        .await?;
        let fed: ExchangeAnswer = Self::answer(&what, status, &body)?;
        let now = SystemTime::now();
        let fed_expires = now + Duration::from_secs(fed.expires_in.unwrap_or(3600));
        let Some(sa) = &self.service_account else {
            return Ok(Issued {
                value: Arc::new(GcpCredential {
                    bearer: fed.access_token,
                }),
                expires: fed_expires,
            });
        };
        let what = format!("impersonating {sa}");
        let url = format!(
            "{}/v1/projects/-/serviceAccounts/{}:generateAccessToken",
            self.iam,
            percent_encoding::utf8_percent_encode(sa, PATH_SEGMENT)
        );
        let body = serde_json::json!({ "scope": [GOOGLE_SCOPE], "lifetime": "3600s" });
        let (status, body) = post(
            &self.http,
            &what,
            &url,
            Some(&fed.access_token),
            "application/json",
            body.to_string(),
        )
        .await?;
        let sa_token: ImpersonationAnswer = Self::answer(&what, status, &body)?;
        Ok(Issued {
            value: Arc::new(GcpCredential {
                bearer: sa_token.access_token,
            }),
            expires: parse_time(&what, &sa_token.expire_time)?,
        })
    }
}

#[async_trait::async_trait]
impl object_store::CredentialProvider for GcpWorkloadIdentity {
    type Credential = GcpCredential;

    async fn get_credential(&self) -> object_store::Result<Arc<GcpCredential>> {
        self.cache
            .get(|token| self.exchange(token))
            .await
            .map_err(to_object_store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn entry(life: u64, left: u64) -> Entry<()> {
        let now = SystemTime::now();
        Entry {
            issued: Issued {
                value: Arc::new(()),
                expires: now + Duration::from_secs(left),
            },
            obtained: now + Duration::from_secs(left) - Duration::from_secs(life),
            token: 0,
        }
    }

    #[test]
    fn credentials_are_renewed_before_they_expire() {
        let now = SystemTime::now();
        assert!(entry(3600, 3000).fresh(now));
        assert!(!entry(3600, 200).fresh(now), "within 5 minutes of the end");
        assert!(entry(900, 300).fresh(now));
        assert!(
            !entry(900, 100).fresh(now),
            "within a quarter of a short life"
        );
    }

    #[test]
    fn session_names_are_what_aws_accepts() {
        assert_eq!(session_name("pail-ns/pod 1"), "pail-ns-pod-1");
        assert_eq!(session_name("a"), "a-");
        assert_eq!(session_name(&"x".repeat(100)).len(), 64);
    }

    #[tokio::test]
    async fn a_new_token_fetches_new_credentials_and_stale_ones_serve_while_sts_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "one\n").unwrap();
        let cache: Cache<String> = Cache::new(file.clone());
        let calls = AtomicUsize::new(0);
        let fetch = |t: String| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                Ok(Issued {
                    value: Arc::new(t),
                    expires: SystemTime::now() + Duration::from_secs(3600),
                })
            }
        };
        assert_eq!(*cache.get(fetch).await.unwrap(), "one");
        assert_eq!(*cache.get(fetch).await.unwrap(), "one");
        assert_eq!(calls.load(Ordering::SeqCst), 1, "cached while fresh");
        std::fs::write(&file, "two").unwrap();
        assert_eq!(*cache.get(fetch).await.unwrap(), "two");
        assert_eq!(
            calls.load(Ordering::SeqCst),
            2,
            "a new token is used at once"
        );
        std::fs::write(&file, "three").unwrap();
        let down = |_t: String| async {
            Err::<Issued<String>, _>(StoreError::new(StoreErrorKind::Unavailable, "down"))
        };
        assert_eq!(*cache.get(down).await.unwrap(), "two", "still valid");
        let refused = |_t: String| async {
            Err::<Issued<String>, _>(StoreError::new(StoreErrorKind::PermissionDenied, "no"))
        };
        let e = cache.get(refused).await.unwrap_err();
        assert_eq!(
            e.kind,
            StoreErrorKind::PermissionDenied,
            "a refusal is not hidden"
        );
        std::fs::remove_file(&file).unwrap();
        assert_eq!(
            *cache.get(fetch).await.unwrap(),
            "two",
            "file gone: current ones serve"
        );
        let empty: Cache<String> = Cache::new(dir.path().join("missing"));
        let e = empty.get(fetch).await.unwrap_err();
        assert!(e.message.contains("missing"), "{e}");
    }

    #[test]
    fn sts_answers_parse() {
        let xml = "<AssumeRoleWithWebIdentityResponse xmlns=\"https://sts.amazonaws.com/doc/2011-06-15/\"><AssumeRoleWithWebIdentityResult><Credentials><AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>s</SecretAccessKey><SessionToken>t</SessionToken><Expiration>2026-11-28T02:59:45.726189Z</Expiration></Credentials><AssumedRoleUser><Arn>a</Arn></AssumedRoleUser></AssumeRoleWithWebIdentityResult></AssumeRoleWithWebIdentityResponse>";
        let r: AssumeResponse = quick_xml::de::from_str(xml).unwrap();
        let c = r.assume_role_with_web_identity_result.credentials;
        assert_eq!(c.access_key_id, "ASIAX");
        assert!(parse_time("x", &c.expiration).is_ok());
        let err = "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code><Message>bad</Message></Error></ErrorResponse>";
        let e: StsErrorResponse = quick_xml::de::from_str(err).unwrap();
        assert_eq!(e.error.code, "InvalidIdentityToken");
    }
}
