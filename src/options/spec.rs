//! What a mount process of the CSI driver is told, whole and typed: a [`MountSpec`] (its
//! options, where its credentials come from, its network policy and environment), written
//! as JSON to a descriptor the process reads once at start. Nothing about the volume is on
//! its command line; the root-only record of the mount keeps the same spec, from which a
//! successor is started after a crash or an upgrade.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::MountArgs;

/// The descriptor number a mount process reads its spec from.
pub const SPEC_FD: i32 = 5;
/// Largest spec read (a GCS key and an admin's allow-list included).
const MAX_SPEC: u64 = 4 << 20;

/// Where a mount's credentials come from: one value from a volume's `authenticationSource`
/// (or `pail mount`'s flags) to the store's credential chain.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Auth {
    /// The standard chains of the process environment: `pail mount` without credential
    /// flags, or the node plugin's own identity (`authenticationSource: driver`).
    Chain,
    /// A profile of the shared credentials file.
    Profile {
        /// Its name.
        name: String,
    },
    /// S3 keys (a volume's Secret).
    Keys {
        /// Access key id.
        access_key_id: String,
        /// Secret access key.
        secret_access_key: String,
        /// Session token of temporary keys.
        session_token: Option<String>,
    },
    /// A GCS service account key (a volume's Secret).
    GcsKey {
        /// The key's JSON.
        json: String,
    },
    /// A GCS service account key file.
    GcsKeyFile {
        /// Where it is.
        path: PathBuf,
    },
    /// A workload token exchanged at STS (`authenticationSource: pod`, or
    /// `--web-identity-token-file`); the role or provider is in the store options.
    Token {
        /// The file holding the token, read again whenever it changes.
        file: PathBuf,
    },
    /// Unsigned requests (`authenticationSource: none`, `--no-sign-request`).
    Anonymous,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Auth::Chain => f.write_str("Chain"),
            Auth::Profile { name } => write!(f, "Profile({name:?})"),
            Auth::Keys { .. } => f.write_str("Keys(<redacted>)"),
            Auth::GcsKey { .. } => f.write_str("GcsKey(<redacted>)"),
            Auth::GcsKeyFile { path } => write!(f, "GcsKeyFile({})", path.display()),
            Auth::Token { file } => write!(f, "Token({})", file.display()),
            Auth::Anonymous => f.write_str("Anonymous"),
        }
    }
}

/// Where a mount process may connect: the admin's endpoint allow-list (the stores' own
/// service hosts are always allowed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetSpec {
    /// `host[:port]`, `*.domain` and CIDR entries, comma-separated.
    pub allowed_endpoints: String,
    /// The instance metadata and container credential addresses may be asked for
    /// credentials (the admin lends the node's identity).
    pub metadata_credentials: bool,
}

/// Everything a mount process needs, typed.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Its options.
    pub args: MountArgs,
    /// Where its credentials come from.
    pub auth: Auth,
    /// Its network policy (`None`: connect anywhere, as `pail mount` by hand).
    pub net: Option<NetSpec>,
    /// The environment it is started with (logging filter, the admin's proxy and, for the
    /// node's identity, that identity's variables).
    pub env: Vec<(String, String)>,
}

impl std::fmt::Debug for MountSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSpec")
            .field("args", &self.args)
            .field("auth", &self.auth)
            .field("net", &self.net)
            .field(
                "env",
                &self.env.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl MountSpec {
    /// The JSON a mount process reads.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a spec always serializes")
    }

    /// A spec from its JSON.
    pub fn from_json(bytes: &[u8]) -> Result<MountSpec, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the mount spec: {e}"))
    }

    /// Read the spec from descriptor `fd` (taking it over), at most a few MiB.
    pub fn read_fd(fd: i32) -> Result<MountSpec, String> {
        if fd < 3 {
            return Err(format!("--spec-fd {fd}: not a spec descriptor"));
        }
        // SAFETY: the parent handed this process the descriptor for exactly this read.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut bytes = Vec::new();
        std::fs::File::from(owned)
            .take(MAX_SPEC + 1)
            .read_to_end(&mut bytes)
            .map_err(|e| format!("reading the mount spec from descriptor {fd}: {e}"))?;
        if bytes.len() as u64 > MAX_SPEC {
            return Err(format!("the mount spec is over {MAX_SPEC} bytes"));
        }
        MountSpec::from_json(&bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A spec whose every field has a value other than its default.
    fn full() -> MountSpec {
        let mut a = MountArgs::new("s3://bucket/p/", "/mnt/x");
        a.store.prefix = Some("sub/".into());
        a.store.region = Some("eu-west-1".into());
        a.store.endpoint_url = Some("http://127.0.0.1:9000".into());
        a.store.force_path_style = true;
        a.store.requester_pays = true;
        a.store.sse = Some("aws:kms".into());
        a.store.sse_kms_key_id = Some("k".into());
        a.store.storage_class = Some("STANDARD_IA".into());
        a.store.ca_bundle = Some("/ca.pem".into());
        a.store.role_arn = Some("arn:aws:iam::1:role/r".into());
        a.store.role_session_name = Some("s".into());
        a.store.sts_endpoint = Some("http://127.0.0.1:5000".into());
        a.store.workload_identity_provider = Some("//iam/p".into());
        a.store.gcp_service_account = Some("sa@p".into());
        a.store.iam_credentials_endpoint = Some("http://127.0.0.1:5001".into());
        let v = &mut a.volume;
        v.read_only = true;
        v.allow_other = true;
        v.debug = true;
        v.persist_metadata = true;
        v.uid = Some(7);
        v.gid = Some(8);
        v.file_mode = 0o600;
        v.dir_mode = 0o700;
        v.metadata_ttl = std::time::Duration::from_millis(1500);
        v.part_size = 16 << 20;
        v.max_prefetch = 64 << 20;
        v.read_ahead = 1 << 20;
        v.direct_first_read = 128 << 20;
        v.upload_concurrency = 3;
        v.max_threads = 5;
        v.request_timeout = 9;
        v.max_retries = 4;
        v.max_cache_size = 1 << 30;
        v.memory_limit = 512 << 20;
        v.read_cache = true;
        v.rename_dir_limit = 12;
        a.cache_dir = Some("/c".into());
        a.journal = Some("/j".into());
        a.log_file = Some("/l".into());
        a.log_format = super::super::LogFormat::Json;
        a.fuse_fd = Some(4);
        a.metrics_file = Some("/m".into());
        a.resume = true;
        a.run_as = Some((1000, 1001));
        a.memory_capacity = Some(1 << 20);
        MountSpec {
            args: a,
            auth: Auth::Keys {
                access_key_id: "AK".into(),
                secret_access_key: "SK".into(),
                session_token: Some("ST".into()),
            },
            net: Some(NetSpec {
                allowed_endpoints: "127.0.0.1".into(),
                metadata_credentials: true,
            }),
            env: vec![("PAIL_LOG".into(), "debug".into())],
        }
    }

    /// Every leaf of `v` (numbers, strings, booleans), by path.
    fn leaves(v: &Value, path: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(k.clone());
                    leaves(x, path, out);
                    path.pop();
                }
            }
            Value::Array(a) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(i.to_string());
                    leaves(x, path, out);
                    path.pop();
                }
            }
            _ => out.push(path.clone()),
        }
    }

    fn at<'a>(v: &'a mut Value, path: &[String]) -> &'a mut Value {
        path.iter().fold(v, |v, k| match v {
            Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
            other => &mut other[k.as_str()],
        })
    }

    #[test]
    fn every_field_of_the_spec_crosses_the_descriptor() {
        let spec = full();
        let json = serde_json::to_value(&spec).unwrap();
        assert_eq!(MountSpec::from_json(&spec.to_json()).unwrap(), spec);
        let mut paths = Vec::new();
        leaves(&json, &mut Vec::new(), &mut paths);
        for path in &paths {
            assert!(
                !at(&mut json.clone(), path).is_null(),
                "{path:?} is unset in the full spec: give it a value"
            );
        }
        // Each leaf read back is the one written: changing it changes the spec.
        for path in &paths {
            let mut changed = json.clone();
            let leaf = at(&mut changed, path);
            *leaf = match leaf.clone() {
                Value::Bool(b) => Value::Bool(!b),
                Value::Number(n) => Value::from(n.as_u64().unwrap() + 1),
                Value::String(s) => Value::String(format!("{s}x")),
                other => panic!("{path:?}: {other}"),
            };
            let back: MountSpec = match serde_json::from_value(changed.clone()) {
                Ok(b) => b,
                // A unit enum: take another of the variants the error lists.
                Err(e) if e.to_string().contains("unknown variant") => {
                    let was = at(&mut json.clone(), path).clone();
                    let text = e.to_string();
                    let other = text
                        .split('`')
                        .skip(3)
                        .step_by(2)
                        .find(|v| Value::String(v.to_string()) != was)
                        .unwrap_or_else(|| panic!("{path:?}: one variant only: {text}"));
                    *at(&mut changed, path) = Value::String(other.to_string());
                    serde_json::from_value(changed.clone())
                        .unwrap_or_else(|e| panic!("{path:?}: {e}"))
                }
                Err(e) => panic!("{path:?}: {e}"),
            };
            assert_ne!(back, spec, "{path:?} was not read back");
            // A changed tag (`from`) is another kind of credential with its own fields.
            if path.last().map(String::as_str) != Some("from") {
                assert_eq!(serde_json::to_value(&back).unwrap(), changed, "{path:?}");
            }
        }
        assert!(paths.len() > 50, "{} fields", paths.len());
        // The only fields left out are the command line's own.
        let skipped: Vec<&str> = ["credentials", "foreground", "background"]
            .into_iter()
            .filter(|k| json["args"].get(k).is_none())
            .collect();
        assert_eq!(skipped.len(), 3);
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let text = format!("{:?}", full());
        assert!(!text.contains("SK") && !text.contains("ST\""), "{text}");
        let gcs = Auth::GcsKey {
            json: "{\"private_key\":\"x\"}".into(),
        };
        assert!(!format!("{gcs:?}").contains("private_key"));
    }

    #[test]
    fn a_spec_is_read_from_its_descriptor_and_bounded() {
        use std::io::Write;
        use std::os::fd::IntoRawFd;
        let spec = full();
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(&spec.to_json()).unwrap();
        std::io::Seek::rewind(&mut f).unwrap();
        let fd = f.into_raw_fd();
        assert_eq!(MountSpec::read_fd(fd).unwrap(), spec);
        let mut big = tempfile::tempfile().unwrap();
        big.write_all(&vec![b' '; (MAX_SPEC + 10) as usize])
            .unwrap();
        std::io::Seek::rewind(&mut big).unwrap();
        assert!(
            MountSpec::read_fd(big.into_raw_fd())
                .unwrap_err()
                .contains("over")
        );
        assert!(MountSpec::read_fd(1).is_err());
    }
}
