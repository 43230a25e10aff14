//! Serving the CSI services on a unix socket: endpoint parsing, stale-socket removal, the
//! services a mode needs, graceful shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use tokio::net::UnixListener;

use super::controller::ControllerService;
use super::identity::IdentityService;
use super::node::NodeService;
use super::pb::controller_server::ControllerServer;
use super::pb::identity_server::IdentityServer;
use super::pb::node_server::NodeServer;
use super::registration::{self, RegistrationService};
use crate::mounter::ProcessMounter;

/// Which services a process serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Identity + Node (the DaemonSet).
    Node,
    /// Identity + Controller (the Deployment).
    Controller,
    /// All three (single-process installs and tests).
    All,
}

/// Everything a driver process needs.
#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Socket: `unix:///path` or a bare path.
    pub endpoint: String,
    /// Driver name.
    pub name: String,
    /// Node id (node mode).
    pub node_id: String,
    /// Services.
    pub mode: Mode,
    /// kubelet's root directory: targets must be under its `pods/`.
    pub kubelet_dir: PathBuf,
    /// Where mount records live.
    pub state_dir: PathBuf,
    /// The `pail` binary mount processes run.
    pub pail_bin: PathBuf,
    /// Controller defaults for DeleteVolume.
    pub default_endpoint: Option<String>,
    /// Controller default region.
    pub default_region: Option<String>,
    /// Register with kubelet without a sidecar: (registration dir, CSI socket path as
    /// kubelet sees it).
    pub register: Option<(PathBuf, String)>,
    /// Serve Prometheus metrics of the node plugin here.
    pub metrics: Option<std::net::SocketAddr>,
    /// The host's cgroup file system, where mount processes move so that they outlive the
    /// plugin's container (needs the host's PID namespace).
    pub host_cgroup_root: Option<PathBuf>,
}

/// How long open connections may delay a shutdown.
const GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The default driver name.
pub const DEFAULT_DRIVER_NAME: &str = "s3.csi.pail.dev";

/// Parse `unix:///path`, `unix:/path` or `/path`.
pub fn socket_path(endpoint: &str) -> anyhow::Result<PathBuf> {
    let path = endpoint
        .strip_prefix("unix://")
        .or_else(|| endpoint.strip_prefix("unix:"))
        .unwrap_or(endpoint);
    if !path.starts_with('/') {
        bail!("--endpoint {endpoint:?}: expected unix:///absolute/path or an absolute path");
    }
    Ok(PathBuf::from(path))
}

/// Check a driver name: at most 63 characters of `[a-z0-9A-Z.-]`, starting and ending with
/// a letter.
pub fn validate_driver_name(name: &str) -> anyhow::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
        && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name.chars().last().is_some_and(|c| c.is_ascii_alphabetic());
    if !ok {
        bail!(
            "--driver-name {name:?}: at most 63 characters of a-z, 0-9, '.' and '-', starting and ending with a letter"
        );
    }
    Ok(())
}

fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))
}

/// Serve until `shutdown` completes.
pub async fn serve(
    cfg: DriverConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    validate_driver_name(&cfg.name)?;
    let path = socket_path(&cfg.endpoint)?;
    let identity = IdentityService {
        name: cfg.name.clone(),
        controller: cfg.mode != Mode::Node,
    };
    let node = if cfg.mode != Mode::Controller {
        if cfg.node_id.is_empty() {
            bail!("--node-id is required in node mode");
        }
        let mut mounter = ProcessMounter::new(cfg.pail_bin.clone(), &cfg.state_dir)
            .with_context(|| format!("state directory {}", cfg.state_dir.display()))?;
        mounter.host_cgroup_root = cfg.host_cgroup_root.clone();
        let mounter = Arc::new(mounter);
        if let Some(addr) = cfg.metrics {
            let m = mounter.clone();
            tokio::spawn(async move {
                if let Err(e) = super::metrics::serve(addr, m).await {
                    tracing::error!(%addr, error = %e, "metrics endpoint failed");
                }
            });
        }
        let recorded = mounter.mount_count();
        if recorded > 0 {
            tracing::info!(
                mounts = recorded,
                "found mounts started by an earlier node plugin; they keep running"
            );
        }
        Some(NodeServer::new(NodeService {
            node_id: cfg.node_id.clone(),
            allowed_root: cfg.kubelet_dir.join("pods"),
            mounter,
        }))
    } else {
        None
    };
    let controller = (cfg.mode != Mode::Node).then(|| {
        ControllerServer::new(ControllerService {
            default_endpoint: cfg.default_endpoint.clone(),
            default_region: cfg.default_region.clone(),
        })
    });
    let listener = bind(&path)?;
    tracing::info!(socket = %path.display(), driver = %cfg.name, mode = ?cfg.mode, "serving CSI");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // Register only once the CSI socket answers: kubelet calls it right after GetInfo.
    let registration = cfg.register.clone().map(|(dir, endpoint)| {
        let service = RegistrationService {
            name: cfg.name.clone(),
            endpoint,
        };
        tokio::spawn(registration::serve(
            registration::socket_in(&dir, &cfg.name),
            service,
            stopped(stop_rx.clone()),
        ))
    });
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(identity))
            .add_optional_service(node)
            .add_optional_service(controller)
            .serve_with_incoming_shutdown(super::authority::incoming(listener), stopped(stop_rx)),
    );
    tokio::pin!(shutdown);
    tokio::select! {
        r = &mut server => {
            r.context("CSI server task")?.context("CSI server")?;
        }
        _ = &mut shutdown => {
            let _ = stop_tx.send(true);
            // Graceful, but bounded: a client that keeps its connection open cannot hold
            // the plugin forever.
            match tokio::time::timeout(GRACE, &mut server).await {
                Ok(r) => r.context("CSI server task")?.context("CSI server")?,
                Err(_) => {
                    tracing::warn!("connections still open after {GRACE:?}; stopping anyway");
                    server.abort();
                }
            }
        }
    }
    if let Some(r) = registration {
        match tokio::time::timeout(GRACE, r).await {
            Ok(r) => r.context("registration task")??,
            Err(_) => tracing::warn!("registration socket still busy after {GRACE:?}"),
        }
    }
    let _ = std::fs::remove_file(&path);
    tracing::info!("CSI server stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_take_unix_urls_and_paths() {
        assert_eq!(
            socket_path("unix:///csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert_eq!(
            socket_path("/csi/csi.sock").unwrap(),
            PathBuf::from("/csi/csi.sock")
        );
        assert!(socket_path("tcp://1.2.3.4:5").is_err());
    }

    #[test]
    fn driver_names_start_and_end_with_a_letter() {
        validate_driver_name(DEFAULT_DRIVER_NAME).unwrap();
        for bad in ["", "1abc", "abc-", "a_b", &"a".repeat(64)] {
            assert!(validate_driver_name(bad).is_err(), "{bad}");
        }
    }
}
