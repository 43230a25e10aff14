//! Where store clients may connect. The CSI driver gives each mount a policy: an allow-list
//! of endpoint hosts (the public cloud endpoints, plus what the admin names), checked on
//! every request URL and on every address a name resolves to, with redirects never
//! followed, so a volume's attributes cannot make the node reach its own services, the
//! cloud metadata address or private networks. Answers are read bounded by what was asked
//! ([`body`]). `pail mount` run by hand has no policy (its bodies are bounded all the same).
//! Admin ranges are `ipnet` networks.

mod addr;
pub mod body;
mod hosts;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;

pub use addr::is_public;

use super::{StoreError, StoreErrorKind};

/// The proxy settings a mount process takes from the node plugin (the admin's).
pub const PROXY_ENV: &[&str] = &[
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// The instance metadata and container credentials addresses (AWS, GCP, ECS, EKS).
const METADATA: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

/// An entry of the admin's list.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name or address (`*.` matches any subdomain), on any port or one.
    Host { pattern: String, port: Option<u16> },
    /// An address range.
    Net(IpNet),
}

/// The policy of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPolicy {
    /// The admin's entries (the stores' service hosts are always allowed).
    rules: Vec<Rule>,
    /// The instance metadata and container credentials addresses may be asked for
    /// credentials (an admin turned driver-level identity on).
    pub metadata: bool,
    /// Requests go through an egress proxy (which resolves names itself): names are
    /// resolved and checked here before every request.
    pub proxied: bool,
}

/// Who allows a host: the admin (it may resolve to private addresses) or the stores'
/// service list (public addresses only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Allowed {
    Service,
    Admin,
}

fn refused(msg: String) -> StoreError {
    StoreError::new(StoreErrorKind::Config, msg)
}

impl Rule {
    fn parse(item: &str) -> Result<Rule, String> {
        let item = item.trim().to_ascii_lowercase();
        if item.contains('/') {
            let net: IpNet = item
                .parse()
                .map_err(|_| format!("{item:?}: not a CIDR range"))?;
            return Ok(Rule::Net(net));
        }
        let (host, port) = match item.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') || h.starts_with('[') => {
                let port = p.parse().map_err(|_| format!("{item:?}: bad port"))?;
                (
                    h.trim_matches(|c| c == '[' || c == ']').to_string(),
                    Some(port),
                )
            }
            _ => (
                item.trim_matches(|c| c == '[' || c == ']').to_string(),
                None,
            ),
        };
        let name = host.strip_prefix("*.").unwrap_or(&host);
        let ok = !name.is_empty()
            && (name.parse::<IpAddr>().is_ok()
                || name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        if !ok {
            return Err(format!("{item:?}: not a host name, address or CIDR range"));
        }
        Ok(Rule::Host {
            pattern: host,
            port,
        })
    }

    /// Whether the rule names `host` (lowercase) on `port`.
    fn names(&self, host: &str, port: u16) -> bool {
        match self {
            Rule::Host { pattern, port: p } => {
                let host_ok = match pattern.strip_prefix("*.") {
                    Some(suffix) => {
                        host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
                    }
                    None => host == pattern,
                };
                host_ok && p.is_none_or(|p| p == port)
            }
            Rule::Net(net) => host.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
        }
    }

    /// Whether the rule names `host` (lowercase) on some port.
    fn names_host(&self, host: &str) -> bool {
        match self {
            Rule::Host { port: Some(p), .. } => self.names(host, *p),
            _ => self.names(host, 0),
        }
    }

    fn is_wildcard(&self) -> bool {
        matches!(self, Rule::Host { pattern, .. } if pattern.starts_with("*."))
    }
}

impl NetPolicy {
    /// The stores' service hosts plus the admin's entries (`host[:port]`, `*.domain`, or a
    /// CIDR range).
    pub fn new(admin: &[String], metadata: bool) -> Result<NetPolicy, String> {
        let mut rules = Vec::new();
        for item in admin.iter().flat_map(|s| s.split(',')) {
            if !item.trim().is_empty() {
                rules.push(Rule::parse(item)?);
            }
        }
        Ok(NetPolicy {
            rules,
            metadata,
            proxied: false,
        })
    }

    /// The environment variable that carries a policy to a mount process.
    pub const ENV: &'static str = "PAIL_ALLOWED_ENDPOINTS";
    /// The environment variable that allows the metadata addresses for credentials.
    pub const METADATA_ENV: &'static str = "PAIL_METADATA_CREDENTIALS";

    /// The admin's part, as [`NetPolicy::ENV`] carries it.
    pub fn admin_list(&self) -> String {
        self.rules
            .iter()
            .map(|r| match r {
                Rule::Host {
                    pattern,
                    port: Some(p),
                } if pattern.contains(':') => format!("[{pattern}]:{p}"),
                Rule::Host {
                    pattern,
                    port: Some(p),
                } => format!("{pattern}:{p}"),
                Rule::Host {
                    pattern,
                    port: None,
                } => pattern.clone(),
                Rule::Net(net) => net.to_string(),
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The policy a mount process was started with, if any. The admin's proxies (the
    /// `HTTPS_PROXY` and `HTTP_PROXY` it was given) may be reached too.
    pub fn from_env() -> Result<Option<NetPolicy>, String> {
        let Ok(list) = std::env::var(Self::ENV) else {
            return Ok(None);
        };
        let metadata = std::env::var(Self::METADATA_ENV).is_ok_and(|v| v == "true");
        NetPolicy::new(&[list], metadata)
            .map(NetPolicy::with_proxies_from_env)
            .map(Some)
    }

    /// The same policy, also allowing the admin's proxies (`HTTPS_PROXY`, `HTTP_PROXY` of
    /// this process) and checking names itself before each request when one is set.
    pub fn with_proxies_from_env(mut self) -> NetPolicy {
        for var in PROXY_ENV
            .iter()
            .filter(|v| !v.starts_with("NO") && !v.starts_with("no"))
        {
            if let Some(host) = std::env::var(var)
                .ok()
                .and_then(|u| url::Url::parse(&u).ok())
                .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
                && let Ok(rule) = Rule::parse(&host)
            {
                self.rules.push(rule);
                self.proxied = true;
            }
        }
        self
    }

    /// Who allows `host`:`port` over `https` (or not), if anyone.
    fn named(&self, host: &str, port: u16, https: bool) -> Option<Allowed> {
        let host = host.to_ascii_lowercase();
        let host = host.trim_matches(|c| c == '[' || c == ']');
        if self.rules.iter().any(|r| r.names(host, port)) {
            return Some(Allowed::Admin);
        }
        (https && port == 443 && hosts::is_service_host(host)).then_some(Allowed::Service)
    }

    /// Whether an address a name allowed by `who` resolved to may be used;
    /// `for_credentials`: a credential request, which may reach the metadata addresses when
    /// the policy says so.
    fn address_ok(&self, ip: IpAddr, who: Allowed, for_credentials: bool) -> bool {
        if METADATA.contains(&ip) {
            return for_credentials && self.metadata;
        }
        is_public(ip) || who == Allowed::Admin
    }

    /// Check the URL of a store endpoint (never the metadata addresses).
    pub fn check_endpoint(&self, url: &url::Url) -> Result<(), StoreError> {
        self.check(url, false)
    }

    fn check(&self, url: &url::Url, for_credentials: bool) -> Result<(), StoreError> {
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused(format!("{url}: only http and https are allowed")));
        }
        let host = url.host_str().unwrap_or_default();
        let port = url.port_or_known_default().unwrap_or(443);
        let ip: Option<IpAddr> = host.trim_matches(|c| c == '[' || c == ']').parse().ok();
        if for_credentials && self.metadata && ip.is_some_and(|ip| METADATA.contains(&ip)) {
            return Ok(());
        }
        let Some(who) = self.named(host, port, url.scheme() == "https") else {
            return Err(refused(format!(
                "endpoint {}://{host}:{port} is not on the driver's list of allowed endpoints (the stores' own hosts over https on 443, and --allowed-endpoints)",
                url.scheme()
            )));
        };
        if let Some(ip) = ip
            && !self.address_ok(ip, who, for_credentials)
        {
            return Err(refused(format!(
                "endpoint {host}: a private, loopback or link-local address not named by the admin"
            )));
        }
        Ok(())
    }

    /// Resolve `host` and keep the addresses the policy allows for it. A name only the
    /// stores' service list allows is refused whole when any of its addresses is not
    /// public (it is not the store's).
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        for_credentials: bool,
    ) -> Result<Vec<SocketAddr>, StoreError> {
        // The resolver sees neither scheme nor port: the URL was checked before; here only
        // whether the admin named the host decides which addresses it may have.
        let lower = host.to_ascii_lowercase();
        let who = if self.rules.iter().any(|r| r.names_host(&lower)) {
            Allowed::Admin
        } else {
            Allowed::Service
        };
        let found = tokio::time::timeout(
            Duration::from_secs(10),
            tokio::net::lookup_host((host, port)),
        )
        .await
        .map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{host}: name resolution timed out"),
            )
        })?
        .map_err(|e| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{host}: cannot resolve: {e}"),
            )
        })?;
        self.judge(host, found.collect(), who, for_credentials)
    }

    /// The addresses of `host` that may be used: every one when a service name has any that
    /// is not public is refused; an admin's name keeps those allowed.
    fn judge(
        &self,
        host: &str,
        all: Vec<SocketAddr>,
        who: Allowed,
        for_credentials: bool,
    ) -> Result<Vec<SocketAddr>, StoreError> {
        let bad = all
            .iter()
            .any(|a| !self.address_ok(a.ip(), who, for_credentials));
        let ok: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.address_ok(a.ip(), who, for_credentials))
            .collect();
        if (bad && who == Allowed::Service) || (ok.is_empty() && !all.is_empty()) {
            return Err(refused(format!(
                "endpoint {host} resolves to a private, loopback or link-local address not named by the admin"
            )));
        }
        Ok(ok)
    }

    /// Check an endpoint URL the way a mount will use it: its host named, and every address
    /// its name resolves to allowed. An admin's wildcard that resolves to a private address
    /// is allowed, with a warning (it may not be what the admin meant).
    pub async fn check_endpoint_resolved(&self, url: &url::Url) -> Result<(), StoreError> {
        self.check_endpoint(url)?;
        let host = url.host_str().unwrap_or_default();
        if host
            .trim_matches(|c| c == '[' || c == ']')
            .parse::<IpAddr>()
            .is_ok()
        {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        let addrs = self.resolve(host, port, false).await?;
        let lower = host.to_ascii_lowercase();
        let by_wildcard = self
            .rules
            .iter()
            .any(|r| r.is_wildcard() && r.names(&lower, port));
        if by_wildcard && let Some(a) = addrs.iter().find(|a| !is_public(a.ip())) {
            tracing::warn!(host, address = %a.ip(), "an --allowed-endpoints wildcard lets a volume reach a private address");
        }
        Ok(())
    }

    /// Before a request to `url` through a proxy (which resolves names itself): resolve its
    /// host here and refuse it unless every address is allowed, as a direct connection
    /// would be.
    pub async fn check_proxied(
        &self,
        url: &url::Url,
        for_credentials: bool,
    ) -> Result<(), StoreError> {
        if !self.proxied {
            return Ok(());
        }
        let host = url.host_str().unwrap_or_default();
        let bare = host.trim_matches(|c| c == '[' || c == ']');
        if bare.parse::<IpAddr>().is_ok() {
            return Ok(());
        }
        let port = url.port_or_known_default().unwrap_or(443);
        self.resolve(bare, port, for_credentials).await.map(|_| ())
    }
}

/// A name resolver that keeps only the addresses a policy allows.
#[derive(Debug, Clone)]
struct Resolver {
    policy: Arc<NetPolicy>,
    for_credentials: bool,
}

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let this = self.clone();
        Box::pin(async move {
            let addrs = this
                .policy
                .resolve(name.as_str(), 0, this.for_credentials)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Settings of an HTTP client of the store layer.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Per-request timeout.
    pub timeout: Duration,
    /// Plain HTTP allowed.
    pub allow_http: bool,
    /// The network policy, if any.
    pub policy: Option<Arc<NetPolicy>>,
    /// Extra certificates to trust (PEM).
    pub ca_bundle: Option<Arc<Vec<u8>>>,
}

/// An HTTP client: the same timeouts, no redirects followed, names resolved through the
/// policy (for credential requests, the metadata addresses allowed when it says so).
pub fn http_client(s: &HttpSettings, for_credentials: bool) -> Result<reqwest::Client, StoreError> {
    let mut b = reqwest::Client::builder()
        .timeout(s.timeout)
        .connect_timeout(Duration::from_secs(5))
        .pool_max_idle_per_host(64)
        .redirect(reqwest::redirect::Policy::none())
        .https_only(!s.allow_http && !for_credentials);
    if let Some(pem) = &s.ca_bundle {
        let certs = reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| StoreError::new(StoreErrorKind::Config, format!("--ca-bundle: {e}")))?;
        if certs.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                "--ca-bundle: no PEM certificate in it",
            ));
        }
        b = b.tls_certs_merge(certs);
    }
    if let Some(p) = &s.policy {
        b = b.dns_resolver(Arc::new(Resolver {
            policy: p.clone(),
            for_credentials,
        }));
    }
    b.build()
        .map_err(|e| StoreError::new(StoreErrorKind::Config, format!("HTTP client: {e}")))
}

/// The client `object_store` uses (data and credential requests): every request URL is
/// checked against the policy before it is sent.
#[derive(Debug)]
pub(super) struct Guarded {
    client: reqwest::Client,
    policy: Option<Arc<NetPolicy>>,
}

impl Guarded {
    /// A client for data requests under `s`'s policy.
    pub fn new(s: &HttpSettings) -> Result<Guarded, StoreError> {
        Ok(Guarded {
            client: http_client(s, false)?,
            policy: s.policy.clone(),
        })
    }
}

#[async_trait::async_trait]
impl object_store::client::HttpService for Guarded {
    async fn call(
        &self,
        req: object_store::client::HttpRequest,
    ) -> Result<object_store::client::HttpResponse, object_store::client::HttpError> {
        use object_store::client::{HttpError, HttpErrorKind, HttpResponse, HttpResponseBody};
        if let Some(p) = &self.policy {
            let url = url::Url::parse(&req.uri().to_string())
                .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
            p.check(&url, true)
                .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
            p.check_proxied(&url, true)
                .await
                .map_err(|e| HttpError::new(HttpErrorKind::Request, e))?;
        }
        let limit = body::limit_of(req.headers());
        let head = req.method() == http::Method::HEAD;
        let resp = object_store::client::HttpService::call(&self.client, req).await?;
        let declared = resp
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let limit = if resp.status().is_success() {
            limit
        } else {
            body::MAX_ERROR_BODY
        };
        if !head && declared.is_some_and(|n| n > limit) && resp.status().is_success() {
            return Err(HttpError::new(
                HttpErrorKind::Decode,
                std::io::Error::other(body::BodyError::TooLong { limit }.to_string()),
            ));
        }
        let (parts, inner) = resp.into_parts();
        Ok(HttpResponse::from_parts(
            parts,
            HttpResponseBody::new(body::Bounded::new(inner, limit)),
        ))
    }
}

/// The connector handing `object_store` a [`Guarded`] client.
#[derive(Debug, Clone)]
pub(super) struct Connector(pub HttpSettings);

impl object_store::client::HttpConnector for Connector {
    fn connect(
        &self,
        _options: &object_store::ClientOptions,
    ) -> object_store::Result<object_store::client::HttpClient> {
        let client = http_client(&self.0, true).map_err(|e| object_store::Error::Generic {
            store: "pail",
            source: Box::new(e),
        })?;
        Ok(object_store::client::HttpClient::new(Guarded {
            client,
            policy: self.0.policy.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn endpoints_must_be_named_and_private_addresses_admin_named() {
        let p = NetPolicy::new(
            &["minio.storage.svc:9000,127.0.0.1:18333,10.96.0.0/12".into()],
            false,
        )
        .unwrap();
        for ok in [
            "https://s3.eu-west-1.amazonaws.com",
            "https://bucket.s3.amazonaws.com/x",
            "https://sts.us-east-1.amazonaws.com",
            "https://acct.r2.cloudflarestorage.com",
            "https://storage.googleapis.com",
            "https://storage.googleapis.com:443",
            "http://minio.storage.svc:9000",
            "http://127.0.0.1:18333",
            "http://10.100.1.1:80",
        ] {
            p.check_endpoint(&url(ok))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for bad in [
            "http://127.0.0.1:18334",
            "http://localhost:18333",
            "http://169.254.169.254/latest/meta-data",
            "http://[fd00:ec2::254]/",
            "http://192.168.1.1",
            "http://minio.storage.svc:9001",
            "https://amazonaws.com.evil.example",
            "https://evilamazonaws.com",
            "file:///etc/passwd",
            // The stores' hosts over plain http or on another port, and names under
            // amazonaws.com anyone can rent.
            "http://s3.eu-west-1.amazonaws.com",
            "https://s3.eu-west-1.amazonaws.com:8443",
            "http://storage.googleapis.com",
            "https://ec2-52-1-2-3.compute-1.amazonaws.com",
            "https://lb-1.us-east-1.elb.amazonaws.com",
            "https://abc.execute-api.us-east-1.amazonaws.com",
        ] {
            assert!(p.check_endpoint(&url(bad)).is_err(), "{bad}");
        }
        assert!(NetPolicy::new(&["not a host".into()], false).is_err());
        assert!(NetPolicy::new(&["10.0.0.0/33".into()], false).is_err());
    }

    #[test]
    fn metadata_addresses_are_for_credentials_under_the_opt_in_only() {
        let imds = url("http://169.254.169.254/latest/api/token");
        let off = NetPolicy::new(&[], false).unwrap();
        assert!(off.check(&imds, true).is_err());
        let on = NetPolicy::new(&[], true).unwrap();
        assert!(on.check(&imds, true).is_ok());
        assert!(
            on.check_endpoint(&imds).is_err(),
            "never as a store endpoint"
        );
    }

    #[test]
    fn the_admin_list_round_trips_through_the_environment_form() {
        let p = NetPolicy::new(&["a.example:9000, *.b.example,10.0.0.0/8".into()], true).unwrap();
        let q = NetPolicy::new(&[p.admin_list()], true).unwrap();
        assert_eq!(p, q);
    }

    #[test]
    fn a_service_name_with_any_private_address_is_refused_whole() {
        let p = NetPolicy::new(&["*.corp.example".into()], false).unwrap();
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let public = a("52.216.1.1:443");
        let private = a("10.0.0.5:443");
        let loopback6 = a("[::1]:443");
        let nat64 = a("[64:ff9b::7f00:1]:443");
        assert_eq!(
            p.judge("s3.amazonaws.com", vec![public], Allowed::Service, false)
                .unwrap(),
            vec![public]
        );
        for mix in [vec![public, private], vec![loopback6, public], vec![nat64]] {
            assert!(
                p.judge("s3.amazonaws.com", mix.clone(), Allowed::Service, false)
                    .is_err(),
                "{mix:?}"
            );
        }
        // The admin's names may be private (an in-cluster store).
        assert_eq!(
            p.judge("minio.corp.example", vec![private], Allowed::Admin, false)
                .unwrap(),
            vec![private]
        );
    }

    #[tokio::test]
    async fn names_behind_a_proxy_are_resolved_and_checked_here() {
        let mut p = NetPolicy::new(&["proxy.example:3128".into()], false).unwrap();
        // Without a proxy the connection's resolver checks; with one, the request does.
        assert!(
            p.check_proxied(&url("https://localhost:443/"), false)
                .await
                .is_ok()
        );
        p.proxied = true;
        let e = p
            .check_proxied(&url("https://localhost:443/"), false)
            .await
            .unwrap_err();
        assert!(e.message.contains("private"), "{e}");
        assert!(
            p.check_proxied(&url("https://127.0.0.1:443/"), false)
                .await
                .is_ok(),
            "an address was checked with the URL"
        );
    }

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_unless_admin_named() {
        let p = NetPolicy::new(&["127.0.0.1".into()], false).unwrap();
        // "localhost" is not named, and resolves to loopback.
        let e = p.check_endpoint_resolved(&url("http://localhost:1")).await;
        assert!(e.is_err());
        for admin in ["localhost", "localhost:1"] {
            let named = NetPolicy::new(&[admin.into()], false).unwrap();
            named
                .check_endpoint_resolved(&url("http://localhost:1"))
                .await
                .unwrap_or_else(|e| panic!("{admin}: {e}"));
            // The connection's resolver sees no port: the admin's name still counts.
            assert!(
                !named
                    .resolve("localhost", 0, false)
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
