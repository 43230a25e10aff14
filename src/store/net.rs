//! Where store clients may connect. The CSI driver gives each mount a policy: an allow-list
//! of endpoint hosts (the public cloud endpoints, plus what the admin names), checked on
//! every request URL and on every address a name resolves to, with redirects never
//! followed, so a volume's attributes cannot make the node reach its own services, the
//! cloud metadata address or private networks. `pail mount` run by hand has no policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

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

/// The public endpoints every policy allows (their names must resolve to public addresses).
pub const DEFAULT_ENDPOINTS: &[&str] = &[
    "*.amazonaws.com",
    "*.amazonaws.com.cn",
    "*.r2.cloudflarestorage.com",
    "storage.googleapis.com",
    "oauth2.googleapis.com",
    "sts.googleapis.com",
    "iamcredentials.googleapis.com",
];

/// The instance metadata and container credentials addresses (AWS, GCP, ECS, EKS).
const METADATA: &[IpAddr] = &[
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 2)),
    IpAddr::V4(Ipv4Addr::new(169, 254, 170, 23)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x23)),
];

#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    /// A host name or address (`*.` matches any subdomain), on any port or one.
    Host {
        pattern: String,
        port: Option<u16>,
        /// Named by the admin: may resolve to private addresses (an in-cluster store).
        admin: bool,
    },
    /// An admin's address range.
    Net { addr: IpAddr, bits: u8 },
}

/// The policy of one mount.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPolicy {
    rules: Vec<Rule>,
    /// The instance metadata and container credentials addresses may be asked for
    /// credentials (an admin turned driver-level identity on).
    pub metadata: bool,
}

fn in_net(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits.min(32))
            };
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits.min(128))
            };
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local, unique
/// local, shared, unspecified, multicast or broadcast).
pub fn is_public(ip: IpAddr) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    };
    let private: &[(IpAddr, u8)] = &[
        (IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 8),
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8),
        (IpAddr::V4(Ipv4Addr::new(100, 64, 0, 0)), 10),
        (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
        (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
        (IpAddr::V4(Ipv4Addr::new(172, 16, 0, 0)), 12),
        (IpAddr::V4(Ipv4Addr::new(192, 0, 0, 0)), 24),
        (IpAddr::V4(Ipv4Addr::new(192, 168, 0, 0)), 16),
        (IpAddr::V4(Ipv4Addr::new(198, 18, 0, 0)), 15),
        (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 3),
        (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
        (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
        (IpAddr::V6(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0)), 7),
        (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
        (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
        (
            IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 1, 0, 0, 0, 0, 0)),
            48,
        ),
    ];
    !private.iter().any(|(n, b)| in_net(ip, *n, *b))
}

fn refused(msg: String) -> StoreError {
    StoreError::new(StoreErrorKind::Config, msg)
}

impl Rule {
    fn parse(item: &str, admin: bool) -> Result<Rule, String> {
        let item = item.trim().to_ascii_lowercase();
        if let Some((addr, bits)) = item.split_once('/') {
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("{item:?}: not a CIDR range"))?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let bits: u8 = bits
                .parse()
                .ok()
                .filter(|b| *b <= max)
                .ok_or_else(|| format!("{item:?}: bad prefix length"))?;
            return Ok(Rule::Net { addr, bits });
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
            admin,
        })
    }

    /// Whether the rule names `host` (lowercase) on `port`; `Some(admin)` if so.
    fn names(&self, host: &str, port: u16) -> Option<bool> {
        match self {
            Rule::Host {
                pattern,
                port: p,
                admin,
            } => {
                let host_ok = match pattern.strip_prefix("*.") {
                    Some(suffix) => {
                        host.ends_with(suffix) && host[..host.len() - suffix.len()].ends_with('.')
                    }
                    None => host == pattern,
                };
                (host_ok && p.is_none_or(|p| p == port)).then_some(*admin)
            }
            Rule::Net { addr, bits } => host
                .parse::<IpAddr>()
                .ok()
                .filter(|ip| in_net(*ip, *addr, *bits))
                .map(|_| true),
        }
    }
}

impl NetPolicy {
    /// The default endpoints plus the admin's (`host[:port]`, `*.domain`, or a CIDR range).
    pub fn new(admin: &[String], metadata: bool) -> Result<NetPolicy, String> {
        let mut rules: Vec<Rule> = DEFAULT_ENDPOINTS
            .iter()
            .map(|d| Rule::parse(d, false).expect("valid defaults"))
            .collect();
        for item in admin.iter().flat_map(|s| s.split(',')) {
            if !item.trim().is_empty() {
                rules.push(Rule::parse(item, true)?);
            }
        }
        Ok(NetPolicy { rules, metadata })
    }

    /// The environment variable that carries a policy to a mount process.
    pub const ENV: &'static str = "PAIL_ALLOWED_ENDPOINTS";
    /// The environment variable that allows the metadata addresses for credentials.
    pub const METADATA_ENV: &'static str = "PAIL_METADATA_CREDENTIALS";

    /// The admin's part, as [`NetPolicy::ENV`] carries it.
    pub fn admin_list(&self) -> String {
        self.rules
            .iter()
            .filter_map(|r| match r {
                Rule::Host {
                    pattern,
                    port,
                    admin: true,
                } => Some(match port {
                    Some(p) if pattern.contains(':') => format!("[{pattern}]:{p}"),
                    Some(p) => format!("{pattern}:{p}"),
                    None => pattern.clone(),
                }),
                Rule::Net { addr, bits } => Some(format!("{addr}/{bits}")),
                _ => None,
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
        let mut items = vec![list];
        for var in PROXY_ENV
            .iter()
            .filter(|v| !v.starts_with("NO") && !v.starts_with("no"))
        {
            if let Some(host) = std::env::var(var)
                .ok()
                .and_then(|u| url::Url::parse(&u).ok())
                .and_then(|u| Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?)))
            {
                items.push(host);
            }
        }
        NetPolicy::new(&items, metadata).map(Some)
    }

    /// Whether the policy names `host`:`port`: `Some(admin)` when it does.
    fn named(&self, host: &str, port: u16) -> Option<bool> {
        let host = host.to_ascii_lowercase();
        let host = host.trim_matches(|c| c == '[' || c == ']');
        self.rules.iter().filter_map(|r| r.names(host, port)).max()
    }

    /// Whether an address a name the policy names (`admin`: by the admin) resolved to may
    /// be used; `for_credentials`: a credential request, which may reach the metadata
    /// addresses when the policy says so.
    fn address_ok(&self, ip: IpAddr, admin: bool, for_credentials: bool) -> bool {
        if METADATA.contains(&ip) {
            return for_credentials && self.metadata;
        }
        is_public(ip) || admin
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
        let Some(admin) = self.named(host, port) else {
            return Err(refused(format!(
                "endpoint {host}:{port} is not on the driver's list of allowed endpoints (--allowed-endpoints)"
            )));
        };
        if let Some(ip) = ip
            && !self.address_ok(ip, admin, for_credentials)
        {
            return Err(refused(format!(
                "endpoint {host}: a private, loopback or link-local address not named by the admin"
            )));
        }
        Ok(())
    }

    /// Resolve `host` and keep the addresses the policy allows for it.
    pub async fn resolve(
        &self,
        host: &str,
        port: u16,
        for_credentials: bool,
    ) -> Result<Vec<SocketAddr>, StoreError> {
        let admin = self.named(host, port).unwrap_or(false);
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
        let all: Vec<SocketAddr> = found.collect();
        let ok: Vec<SocketAddr> = all
            .iter()
            .copied()
            .filter(|a| self.address_ok(a.ip(), admin, for_credentials))
            .collect();
        if ok.is_empty() && !all.is_empty() {
            return Err(refused(format!(
                "endpoint {host} resolves to a private, loopback or link-local address not named by the admin"
            )));
        }
        Ok(ok)
    }

    /// Check an endpoint URL the way a mount will use it: its host named, and every address
    /// its name resolves to allowed.
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
        self.resolve(host, port, false).await.map(|_| ())
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
        if let Some(p) = &self.policy {
            let url = url::Url::parse(&req.uri().to_string()).map_err(|e| {
                object_store::client::HttpError::new(
                    object_store::client::HttpErrorKind::Request,
                    e,
                )
            })?;
            p.check(&url, true).map_err(|e| {
                object_store::client::HttpError::new(
                    object_store::client::HttpErrorKind::Request,
                    e,
                )
            })?;
        }
        object_store::client::HttpService::call(&self.client, req).await
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
    fn addresses_are_public_or_not() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.20.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fd00:ec2::254",
            "fe80::1",
            "::ffff:127.0.0.1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in ["52.216.1.1", "8.8.8.8", "2600:1f18::1"] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
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
            "https://acct.r2.cloudflarestorage.com",
            "https://storage.googleapis.com",
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

    #[tokio::test]
    async fn names_resolving_to_private_addresses_are_refused_unless_admin_named() {
        let p = NetPolicy::new(&["127.0.0.1".into()], false).unwrap();
        // "localhost" is not named, and resolves to loopback.
        let e = p.check_endpoint_resolved(&url("http://localhost:1")).await;
        assert!(e.is_err());
        let named = NetPolicy::new(&["localhost".into()], false).unwrap();
        named
            .check_endpoint_resolved(&url("http://localhost:1"))
            .await
            .unwrap();
    }
}
