//! Serving the CSI services on a unix socket: endpoint parsing, stale-socket removal,
//! graceful shutdown. The services themselves are built by the caller (`cli`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use tokio::net::UnixListener;

use super::controller::ControllerService;
use super::identity::IdentityService;
use super::node::NodeService;
use super::pb::controller_server::ControllerServer;
use super::pb::identity_server::IdentityServer;
use super::pb::node_server::NodeServer;
use super::registration::{self, RegistrationService};

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

/// The services one driver process serves, built by the caller.
pub struct Services {
    /// Identity (always).
    pub identity: IdentityService,
    /// Node.
    pub node: Option<NodeService>,
    /// Controller.
    pub controller: Option<ControllerService>,
    /// Kubelet plugin registration without a sidecar: the registration directory and the
    /// service to serve there.
    pub registration: Option<(PathBuf, RegistrationService)>,
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
    let dir = path.parent().unwrap_or(Path::new("/"));
    if !dir.is_dir() {
        bail!(
            "--endpoint: the directory {} does not exist (it must, so a typo is not served)",
            dir.display()
        );
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::info!(socket = %path.display(), "removed a stale socket"),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", path.display())),
    }
    // Bound (and listening) under another name, then renamed into place: the socket never
    // exists unanswered, so a client that sees it connects (no ECONNREFUSED window).
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let listener =
        UnixListener::bind(&tmp).with_context(|| format!("listening on {}", tmp.display()))?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("listening on {}", path.display()));
    }
    Ok(listener)
}

/// Serve `services` on the unix socket `endpoint` until `shutdown` completes.
pub async fn serve(
    endpoint: &str,
    services: Services,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    validate_driver_name(&services.identity.name)?;
    let path = socket_path(endpoint)?;
    let name = services.identity.name.clone();
    let listener = bind(&path)?;
    tracing::info!(socket = %path.display(), driver = %name, node = services.node.is_some(), controller = services.controller.is_some(), "serving CSI");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    // Register only once the CSI socket answers: kubelet calls it right after GetInfo.
    let registration = services.registration.map(|(dir, service)| {
        tokio::spawn(registration::serve(
            registration::socket_in(&dir, &name),
            service,
            stopped(stop_rx.clone()),
        ))
    });
    let mut server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(IdentityServer::new(services.identity))
            .add_optional_service(services.node.map(NodeServer::new))
            .add_optional_service(services.controller.map(ControllerServer::new))
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
