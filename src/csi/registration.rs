//! Registering with kubelet without the node-driver-registrar sidecar: pail serves kubelet's
//! plugin-registration API on `<registration-dir>/<driver>-reg.sock`; kubelet's plugin
//! watcher finds the socket, asks GetInfo, and reports whether it registered the driver.

use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tonic::{Request, Response, Status};

use super::registration_pb::registration_server::{Registration, RegistrationServer};
use super::registration_pb::*;

/// The registration service of one driver.
pub struct RegistrationService {
    /// Driver name.
    pub name: String,
    /// The CSI socket as kubelet sees it (a host path).
    pub endpoint: String,
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(&self, _req: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
        Ok(Response::new(PluginInfo {
            r#type: "CSIPlugin".into(),
            name: self.name.clone(),
            endpoint: self.endpoint.clone(),
            supported_versions: vec!["1.0.0".into()],
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = req.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.name, "registered with kubelet");
        } else {
            tracing::error!(driver = %self.name, error = %status.error, "kubelet refused the registration");
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// The registration socket of `driver` in `dir`.
pub fn socket_in(dir: &Path, driver: &str) -> PathBuf {
    dir.join(format!("{driver}-reg.sock"))
}

/// Serve the registration API until `shutdown`, then remove the socket (so kubelet
/// deregisters the driver).
pub async fn serve(
    socket: PathBuf,
    service: RegistrationService,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    tracing::info!(socket = %socket.display(), "serving kubelet plugin registration");
    let result = tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(service))
        .serve_with_incoming_shutdown(super::authority::incoming(listener), shutdown)
        .await;
    let _ = std::fs::remove_file(&socket);
    Ok(result?)
}
