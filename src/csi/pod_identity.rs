//! Pod identity: the service-account tokens kubelet passes with a publish (`tokenRequests`),
//! which one a volume uses, and what it is exchanged for: an AWS role (a volume attribute,
//! else the ServiceAccount's `eks.amazonaws.com/role-arn` annotation) or a Google workload
//! identity provider (+ the `iam.gke.io/gcp-service-account` annotation). Tokens are
//! secrets: never logged, never in an error.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use tonic::Status;

/// The tokens kubelet adds to the volume context (JSON: audience → token).
pub const TOKENS_KEY: &str = "csi.storage.k8s.io/serviceAccount.tokens";
/// The pod's ServiceAccount (podInfoOnMount).
pub const SERVICE_ACCOUNT_KEY: &str = "csi.storage.k8s.io/serviceAccount.name";
/// The pod's namespace (podInfoOnMount).
pub const NAMESPACE_KEY: &str = "csi.storage.k8s.io/pod.namespace";
/// The pod's name (podInfoOnMount).
pub const POD_KEY: &str = "csi.storage.k8s.io/pod.name";
/// The ServiceAccount annotation naming its AWS role (IRSA).
pub const ROLE_ANNOTATION: &str = "eks.amazonaws.com/role-arn";
/// The ServiceAccount annotation naming its Google service account (GKE).
pub const GCP_SA_ANNOTATION: &str = "iam.gke.io/gcp-service-account";
/// The audience AWS STS expects.
pub const AWS_AUDIENCE: &str = "sts.amazonaws.com";

#[derive(Deserialize)]
struct Token {
    token: String,
}

/// Whether kubelet passed tokens with this publish.
pub fn has_tokens(attrs: &HashMap<String, String>) -> bool {
    attrs.get(TOKENS_KEY).is_some_and(|t| !t.is_empty())
}

/// The token a volume uses: the one for `audience` if named, else AWS STS's (S3) or the
/// only other one (GCS).
pub fn pick_token(
    attrs: &HashMap<String, String>,
    audience: Option<&str>,
    gcs: bool,
) -> Result<String, Status> {
    let none = || {
        Status::failed_precondition(
            "authenticationSource: pod: kubelet passed no service account token; the CSIDriver \
             needs tokenRequests (the chart's node.tokenAudiences) and requiresRepublish, and \
             Kubernetes 1.20 needs the CSIServiceAccountToken feature gate",
        )
    };
    let raw = attrs
        .get(TOKENS_KEY)
        .filter(|t| !t.is_empty())
        .ok_or_else(none)?;
    let tokens: BTreeMap<String, Token> = serde_json::from_str(raw).map_err(|_| {
        Status::invalid_argument(format!("{TOKENS_KEY}: not a map of audiences to tokens"))
    })?;
    let chosen = match audience {
        Some(a) => tokens.get(a),
        None if !gcs => tokens.get(AWS_AUDIENCE).or_else(|| {
            (tokens.len() == 1)
                .then(|| tokens.values().next())
                .flatten()
        }),
        None => tokens
            .iter()
            .find(|(a, _)| a.as_str() != AWS_AUDIENCE)
            .map(|(_, t)| t)
            .or_else(|| {
                (tokens.len() == 1)
                    .then(|| tokens.values().next())
                    .flatten()
            }),
    };
    let token = chosen.ok_or_else(|| {
        let have: Vec<&str> = tokens.keys().map(String::as_str).collect();
        Status::failed_precondition(format!(
            "authenticationSource: pod: no service account token for audience {:?} (kubelet passed tokens for {have:?}; set tokenAudience)",
            audience.unwrap_or(if gcs { "<the workload identity pool's>" } else { AWS_AUDIENCE })
        ))
    })?;
    if token.token.is_empty()
        || token.token.len() > 16 * 1024
        || token
            .token
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Status::invalid_argument(format!(
            "{TOKENS_KEY}: the token is not a JWT"
        )));
    }
    Ok(token.token.clone())
}

/// Whether `s` is a Kubernetes object name (a DNS-1123 subdomain: lowercase letters,
/// digits, `-` and `.`, starting and ending with a letter or digit, at most 253 bytes), so
/// that it is safe in an API path, a label or a log line.
pub fn is_object_name(s: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && alnum(b[0])
        && alnum(b[b.len() - 1])
        && b.iter().all(|c| alnum(*c) || *c == b'-' || *c == b'.')
}

/// Refuse pod information that is not made of Kubernetes names (kubelet sets these keys; a
/// volume that brings its own values gets them checked).
pub fn check_pod_info(attrs: &HashMap<String, String>) -> Result<(), Status> {
    for key in [NAMESPACE_KEY, SERVICE_ACCOUNT_KEY, POD_KEY] {
        if let Some(v) = attrs.get(key).filter(|v| !v.is_empty())
            && !is_object_name(v)
        {
            let shown: String = v.chars().take(64).flat_map(char::escape_debug).collect();
            return Err(Status::invalid_argument(format!(
                "{key}: \"{shown}\" is not a Kubernetes object name"
            )));
        }
    }
    Ok(())
}

/// The pod a publish is for: namespace, ServiceAccount, pod name (only valid names).
pub fn pod_of(attrs: &HashMap<String, String>) -> Option<(String, String, String)> {
    let get = |k| {
        attrs
            .get(k)
            .filter(|v: &&String| is_object_name(v))
            .cloned()
    };
    Some((
        get(NAMESPACE_KEY)?,
        get(SERVICE_ACCOUNT_KEY)?,
        get(POD_KEY).unwrap_or_default(),
    ))
}

/// Reads ServiceAccount annotations from the API server.
#[tonic::async_trait]
pub trait Annotations: Send + Sync {
    /// The annotations of ServiceAccount `namespace/name`.
    async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, Status>;
}

/// The API server, through the node plugin's own ServiceAccount (or a kubeconfig), connected
/// on first use.
#[derive(Default)]
pub struct KubeAnnotations {
    client: tokio::sync::OnceCell<kube::Client>,
}

impl KubeAnnotations {
    async fn client(&self) -> Result<&kube::Client, Status> {
        self.client
            .get_or_try_init(|| async {
                kube::Client::try_default().await.map_err(|e| {
                    Status::failed_precondition(format!(
                        "reading the pod's ServiceAccount: no access to the Kubernetes API from the node plugin: {}",
                        crate::store::one_line(&e.to_string())
                    ))
                })
            })
            .await
    }
}

#[tonic::async_trait]
impl Annotations for KubeAnnotations {
    async fn service_account(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<BTreeMap<String, String>, Status> {
        use k8s_openapi::api::core::v1::ServiceAccount;
        let api: kube::Api<ServiceAccount> =
            kube::Api::namespaced(self.client().await?.clone(), namespace);
        let sa = api.get(name).await.map_err(|e| {
            let what = format!("ServiceAccount {namespace}/{name}");
            match &e {
                kube::Error::Api(s) if s.code == 404 => {
                    Status::failed_precondition(format!("{what} not found"))
                }
                kube::Error::Api(s) if s.code == 401 || s.code == 403 => {
                    Status::failed_precondition(format!(
                        "{what}: the node plugin may not read ServiceAccounts (its RBAC needs get on serviceaccounts)"
                    ))
                }
                _ => Status::unavailable(format!(
                    "reading {what}: {}",
                    crate::store::one_line(&e.to_string())
                )),
            }
        })?;
        Ok(sa.metadata.annotations.unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(tokens: &str) -> HashMap<String, String> {
        HashMap::from([(TOKENS_KEY.to_string(), tokens.to_string())])
    }

    #[test]
    fn the_token_for_the_volume_is_picked_by_audience() {
        let both = attrs(
            r#"{"sts.amazonaws.com": {"token": "aws.jwt.x", "expirationTimestamp": "2026-01-01T00:00:00Z"},
                "pool.svc.id.goog": {"token": "gcp.jwt.y", "expirationTimestamp": "2026-01-01T00:00:00Z"}}"#,
        );
        assert_eq!(pick_token(&both, None, false).unwrap(), "aws.jwt.x");
        assert_eq!(pick_token(&both, None, true).unwrap(), "gcp.jwt.y");
        assert_eq!(
            pick_token(&both, Some("pool.svc.id.goog"), false).unwrap(),
            "gcp.jwt.y"
        );
        let e = pick_token(&both, Some("other"), false).unwrap_err();
        assert_eq!(e.code(), tonic::Code::FailedPrecondition);
        assert!(!e.message().contains("jwt"), "{}", e.message());
        let one = attrs(r#"{"custom": {"token": "only.jwt.z"}}"#);
        assert_eq!(pick_token(&one, None, false).unwrap(), "only.jwt.z");
        let e = pick_token(&HashMap::new(), None, false).unwrap_err();
        assert!(e.message().contains("tokenRequests"), "{}", e.message());
        let bad = attrs(r#"{"a": {"token": "has space"}}"#);
        assert_eq!(
            pick_token(&bad, None, false).unwrap_err().code(),
            tonic::Code::InvalidArgument
        );
        let junk = attrs("secret-ish not json");
        let e = pick_token(&junk, None, false).unwrap_err();
        assert!(!e.message().contains("secret-ish"), "{}", e.message());
    }
}
