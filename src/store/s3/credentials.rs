//! Where S3 credentials come from: explicit keys, a role assumed with the workload's own
//! token (`store::identity`), a named profile of the shared
//! credentials file, then `object_store`'s own chain (`AmazonS3Builder::from_env`:
//! environment keys, a web identity token, container credentials as on ECS and EKS Pod
//! Identity, instance metadata). Instance metadata is refused before any request when
//! `AWS_EC2_METADATA_DISABLED=true`.
//!
//! The shared credentials file is read here, by hand, on purpose: the only maintained parser
//! of AWS's profile format is inside `aws-config`, which brings the AWS SDK's runtime (about a
//! hundred crates) for three keys of one section; generic INI crates differ from AWS's rules
//! (comments, `[profile x]` sections) as much as these few lines do. Only the credentials
//! file's `aws_access_key_id`, `aws_secret_access_key` and `aws_session_token` are read.

use std::sync::Arc;

use object_store::aws::{AmazonS3Builder, AwsCredential, AwsCredentialProvider};
use object_store::{ClientOptions, RetryConfig, StaticCredentialProvider};

use crate::store::identity::AwsWebIdentity;
use crate::store::source::Credentials;
use crate::store::{Auth, Result, StoreError, StoreErrorKind, StoreOptions};

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Credentials of `profile` in the shared credentials file (`AWS_SHARED_CREDENTIALS_FILE`
/// or `~/.aws/credentials`).
fn profile_credentials(profile: &str) -> Option<Credentials> {
    let path = env("AWS_SHARED_CREDENTIALS_FILE")
        .or_else(|| env("HOME").map(|h| format!("{h}/.aws/credentials")))?;
    parse_profile(&std::fs::read_to_string(path).ok()?, profile)
}

fn parse_profile(text: &str, wanted: &str) -> Option<Credentials> {
    let (mut section, mut id, mut secret, mut token) = (String::new(), None, None, None);
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.trim().to_string();
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

fn fixed(c: &Credentials) -> AwsCredentialProvider {
    Arc::new(StaticCredentialProvider::new(AwsCredential {
        key_id: c.access_key_id.clone(),
        secret_key: c.secret_access_key.clone(),
        token: c.session_token.clone(),
    }))
}

/// Which source of credentials the environment names, for errors and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Chain {
    /// `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`.
    EnvKeys,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` + `AWS_ROLE_ARN`.
    WebIdentity,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI`, or `…_FULL_URI` with a token file.
    Container,
    /// Instance metadata (IMDS).
    Instance,
}

/// What the default chain looked at before instance metadata, for "no credentials found".
fn tried(metadata: &str) -> String {
    let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
    [
        "no credentials found (tried: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,".to_string(),
        format!("profile {profile:?} in the shared files,"),
        "a web identity token (AWS_WEB_IDENTITY_TOKEN_FILE), container credentials,".into(),
        format!("instance metadata: {metadata});"),
        "give keys, a --profile, or --no-sign-request for a public bucket".into(),
    ]
    .join(" ")
}

/// The error of a credential fetch that failed: with the default chain at instance
/// metadata, what was tried (the raw error, about an address the user never named, goes to
/// the debug log only); otherwise the provider's own error.
pub fn fetch_failed(what: &str, e: &dyn std::fmt::Display, at_instance: bool) -> StoreError {
    if at_instance {
        tracing::debug!(error = %e, "instance metadata gave no credentials");
        StoreError::new(
            StoreErrorKind::Config,
            format!("{what}: {}", tried("no answer")),
        )
    } else {
        StoreError::new(
            StoreErrorKind::PermissionDenied,
            format!(
                "{what}: no credentials: {}",
                super::super::error::one_line(&e.to_string())
            ),
        )
    }
}

/// The source `object_store`'s chain will use with this environment.
pub fn chain() -> Chain {
    if env("AWS_ACCESS_KEY_ID").is_some() && env("AWS_SECRET_ACCESS_KEY").is_some() {
        Chain::EnvKeys
    } else if env("AWS_WEB_IDENTITY_TOKEN_FILE").is_some() && env("AWS_ROLE_ARN").is_some() {
        Chain::WebIdentity
    } else if env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI").is_some()
        || env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some()
            && env("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE").is_some()
    {
        Chain::Container
    } else {
        Chain::Instance
    }
}

/// The credential provider for `opts` (`None`: unsigned requests).
pub fn provider(
    opts: &StoreOptions,
    bucket: &str,
    region: &str,
    client: ClientOptions,
    retry: RetryConfig,
) -> Result<Option<AwsCredentialProvider>> {
    let config = |msg: String| StoreError::new(StoreErrorKind::Config, msg);
    match &opts.auth {
        Auth::Anonymous => return Ok(None),
        Auth::Keys(c) => return Ok(Some(fixed(c))),
        Auth::WebIdentity(id) => {
            return Ok(Some(Arc::new(AwsWebIdentity::new(id, region, opts)?)));
        }
        Auth::Profile(p) => {
            return profile_credentials(p)
                .map(|c| Some(fixed(&c)))
                .ok_or_else(|| {
                    config(format!(
                        "--profile {p:?}: no such profile with keys in the shared credentials file"
                    ))
                });
        }
        Auth::GcsKey(_) | Auth::GcsKeyFile(_) => {
            return Err(config(
                "a GCS service account key is for gs:// buckets (S3 takes access keys)".into(),
            ));
        }
        Auth::Chain => {}
    }
    let chain = chain();
    if chain == Chain::Instance {
        let profile = env("AWS_PROFILE").unwrap_or_else(|| "default".into());
        if let Some(c) = profile_credentials(&profile) {
            return Ok(Some(fixed(&c)));
        }
        if env("AWS_CONTAINER_CREDENTIALS_FULL_URI").is_some() {
            return Err(config(
                "AWS_CONTAINER_CREDENTIALS_FULL_URI needs AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"
                    .into(),
            ));
        }
        if !opts.metadata_allowed() {
            return Err(config(tried("off (AWS_EC2_METADATA_DISABLED=true)")));
        }
    }
    if chain == Chain::Container && !opts.metadata_allowed() && opts.net.is_some() {
        return Err(config(
            "container credentials are not allowed for this volume (driver-level identity is off)"
                .into(),
        ));
    }
    let s3 = AmazonS3Builder::from_env()
        .with_http_connector(crate::store::net::Connector(opts.http(false)))
        .with_bucket_name(bucket)
        .with_region(region)
        .with_client_options(client)
        .with_retry(retry)
        .build()
        .map_err(|e| config(format!("S3 credentials: {e}")))?;
    Ok(Some(s3.credentials().clone()))
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
