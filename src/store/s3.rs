//! S3 and S3-compatible stores (AWS, R2, SeaweedFS, MinIO, GCS through HMAC keys):
//! endpoint, addressing style and the credential chain.

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AwsCredential};
use object_store::client::HttpClient;
use object_store::{ClientOptions, RetryConfig, StaticCredentialProvider};

use super::raw::{Raw, S3Raw};
use super::source::Credentials;
use super::{Result, Source, Store, StoreError, StoreErrorKind, StoreOptions};

/// Default region when none is configured.
const DEFAULT_REGION: &str = "us-east-1";

pub(super) fn client_options(opts: &StoreOptions, allow_http: bool) -> ClientOptions {
    ClientOptions::new()
        .with_allow_http(allow_http)
        .with_timeout(opts.request_timeout.unwrap_or(Duration::from_secs(30)))
        .with_connect_timeout(Duration::from_secs(5))
        .with_pool_max_idle_per_host(64)
}

pub(super) fn retry_config(opts: &StoreOptions) -> RetryConfig {
    RetryConfig {
        max_retries: opts.max_retries.unwrap_or(10),
        retry_timeout: Duration::from_secs(120),
        ..Default::default()
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Credentials from the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE` or
/// `~/.aws/credentials`), profile `AWS_PROFILE` or `default`.
fn profile_credentials(profile: Option<&str>) -> Option<Credentials> {
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .or_else(|| env("HOME").map(|h| format!("{h}/.aws/credentials")))?;
    let text = std::fs::read_to_string(path).ok()?;
    let wanted = profile
        .map(str::to_string)
        .or_else(|| env("AWS_PROFILE"))
        .unwrap_or_else(|| "default".into());
    parse_profile(&text, &wanted)
}

fn parse_profile(text: &str, wanted: &str) -> Option<Credentials> {
    let (mut section, mut id, mut secret, mut token) = (String::new(), None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') && line.ends_with(']') {
            section = line[1..line.len() - 1].trim().to_string();
            continue;
        }
        if section != wanted {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim().to_string();
            match k.trim() {
                "aws_access_key_id" => id = Some(v),
                "aws_secret_access_key" => secret = Some(v),
                "aws_session_token" => token = Some(v),
                _ => {}
            }
        }
    }
    Some(Credentials {
        access_key_id: id?,
        secret_access_key: secret?,
        session_token: token,
    })
}

/// Resolve credentials that are not left to `object_store`'s own chain (env, web identity,
/// container and instance metadata).
fn static_credentials(opts: &StoreOptions) -> Option<Credentials> {
    if let Some(c) = &opts.credentials {
        return Some(c.clone());
    }
    if let (Some(id), Some(secret)) = (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY")) {
        return Some(Credentials {
            access_key_id: id,
            secret_access_key: secret,
            session_token: env("AWS_SESSION_TOKEN"),
        });
    }
    profile_credentials(opts.profile.as_deref())
}

pub(super) fn open(source: &Source, opts: &StoreOptions) -> Result<Store> {
    let region = opts
        .region
        .clone()
        .or_else(|| env("AWS_REGION"))
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .unwrap_or_else(|| DEFAULT_REGION.to_string());
    let (endpoint, path_style) = match &opts.endpoint_url {
        Some(e) => {
            let e = e.trim_end_matches('/').to_string();
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(StoreError::new(
                    StoreErrorKind::Config,
                    format!("bad endpoint URL {e:?}: expected http:// or https://"),
                ));
            }
            (e, true)
        }
        None => (
            format!("https://s3.{region}.amazonaws.com"),
            opts.force_path_style,
        ),
    };
    let allow_http = endpoint.starts_with("http://");
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&source.bucket)
        .with_region(&region)
        .with_client_options(client_options(opts, allow_http))
        .with_retry(retry_config(opts))
        .with_request_payer(opts.requester_pays)
        .with_skip_signature(opts.no_sign_request);
    if opts.endpoint_url.is_some() {
        builder = builder.with_endpoint(&endpoint);
    } else {
        builder = builder.with_virtual_hosted_style_request(!path_style);
    }
    let web_identity =
        env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() && env("AWS_ROLE_ARN").is_some();
    let container = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some();
    let creds = if opts.no_sign_request {
        None
    } else {
        static_credentials(opts)
    };
    if let Some(c) = &creds {
        let provider = Arc::new(StaticCredentialProvider::new(AwsCredential {
            key_id: c.access_key_id.clone(),
            secret_key: c.secret_access_key.clone(),
            token: c.session_token.clone(),
        }));
        builder = builder.with_credentials(provider);
    } else if !opts.no_sign_request {
        if web_identity {
            builder = builder
                .with_config(
                    object_store::aws::AmazonS3ConfigKey::from_str_lenient(
                        "aws_web_identity_token_file",
                    ),
                    env("AWS_WEB_IDENTITY_TOKEN_FILE").unwrap_or_default(),
                )
                .with_config(
                    object_store::aws::AmazonS3ConfigKey::from_str_lenient("aws_role_arn"),
                    env("AWS_ROLE_ARN").unwrap_or_default(),
                );
        } else if !container && env("AWS_EC2_METADATA_DISABLED").as_deref() == Some("true") {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "no S3 credentials: set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, a profile, \
                 a web identity token, or --no-sign-request (instance metadata is disabled \
                 by AWS_EC2_METADATA_DISABLED=true)",
            ));
        }
    }
    let s3 = builder
        .build()
        .map_err(|e| StoreError::new(StoreErrorKind::Config, e.to_string()))?;
    let credentials = (!opts.no_sign_request).then(|| s3.credentials().clone());
    let http_client = reqwest_client(opts, allow_http)?;
    let markers = Raw::S3(S3Raw {
        http: http_client,
        endpoint: endpoint.clone(),
        bucket: source.bucket.clone(),
        path_style,
        region,
        credentials,
        requester_pays: opts.requester_pays,
    });
    let description = format!("s3://{}/{} ({endpoint})", source.bucket, source.prefix);
    Ok(Store::new(Arc::new(s3), markers, true, description))
}

pub(super) fn reqwest_client(opts: &StoreOptions, allow_http: bool) -> Result<HttpClient> {
    let client = reqwest::Client::builder()
        .timeout(opts.request_timeout.unwrap_or(Duration::from_secs(30)))
        .connect_timeout(Duration::from_secs(5))
        .https_only(!allow_http)
        .build()
        .map_err(|e| StoreError::new(StoreErrorKind::Config, format!("HTTP client: {e}")))?;
    Ok(HttpClient::new(client))
}

trait Lenient {
    fn from_str_lenient(s: &str) -> Self;
}
impl Lenient for object_store::aws::AmazonS3ConfigKey {
    fn from_str_lenient(s: &str) -> Self {
        s.parse().expect("known configuration key")
    }
}

#[cfg(test)]
mod tests {
    use super::parse_profile;

    #[test]
    fn profiles_are_read_from_the_named_section() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = B\n\
                    [work]\naws_access_key_id=C\naws_secret_access_key=D\naws_session_token=T\n";
        let d = parse_profile(text, "default").unwrap();
        assert_eq!(
            (d.access_key_id.as_str(), d.secret_access_key.as_str()),
            ("A", "B")
        );
        let w = parse_profile(text, "work").unwrap();
        assert_eq!(w.session_token.as_deref(), Some("T"));
        assert!(parse_profile(text, "missing").is_none());
    }
}
