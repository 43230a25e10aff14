//! `pail csi`: run the CSI driver (node plugin, controller, or both) on a unix socket.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use pail::csi::{DEFAULT_DRIVER_NAME, DriverConfig, Mode};

use super::LogFormat;

/// Arguments of `pail csi`.
#[derive(Debug, Clone, Args)]
pub struct CsiArgs {
    /// Socket to serve on: unix:///path/csi.sock or a path.
    #[arg(long, default_value = "unix:///csi/csi.sock")]
    pub endpoint: String,
    /// This node's id (the Kubernetes node name).
    #[arg(long, env = "NODE_ID", default_value = "")]
    pub node_id: String,
    /// Services to serve.
    #[arg(long, value_enum, default_value = "node")]
    pub mode: Mode,
    /// CSI driver name.
    #[arg(long, default_value = DEFAULT_DRIVER_NAME)]
    pub driver_name: String,
    /// kubelet's root directory (target paths must be under its pods/).
    #[arg(long, default_value = "/var/lib/kubelet")]
    pub kubelet_dir: PathBuf,
    /// Where the node plugin keeps a record of each mount.
    #[arg(long, default_value = "/var/lib/pail")]
    pub state_dir: PathBuf,
    /// Controller: endpoint for DeleteVolume when the secret names none.
    #[arg(long)]
    pub default_endpoint_url: Option<String>,
    /// Controller: region for DeleteVolume when the secret names none.
    #[arg(long)]
    pub default_region: Option<String>,
    /// Register with kubelet by serving its plugin-registration API (no node-driver-registrar).
    #[arg(long)]
    pub register_with_kubelet: bool,
    /// Where kubelet looks for registration sockets (default: <kubelet-dir>/plugins_registry).
    #[arg(long)]
    pub registration_dir: Option<PathBuf>,
    /// The CSI socket as kubelet sees it (default: <kubelet-dir>/plugins/<driver>/csi.sock).
    #[arg(long)]
    pub kubelet_registration_path: Option<String>,
    /// Serve Prometheus metrics of the node plugin on this address (e.g. 127.0.0.1:9812).
    #[arg(long)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// The host's cgroup file system (e.g. /host/sys/fs/cgroup; with the host's PID
    /// namespace): each mount process moves into its root cgroups, so that live mounts
    /// outlive the node plugin's container (restarts, upgrades).
    #[arg(long)]
    pub host_cgroup_root: Option<PathBuf>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug details.
    #[arg(long)]
    pub debug: bool,
}

/// Run `pail csi` until SIGTERM/SIGINT.
pub fn run(args: CsiArgs) -> anyhow::Result<()> {
    super::logging::init(args.log_format, args.debug, None)?;
    let register = args.register_with_kubelet.then(|| {
        let dir = args
            .registration_dir
            .clone()
            .unwrap_or_else(|| args.kubelet_dir.join("plugins_registry"));
        let endpoint = args.kubelet_registration_path.clone().unwrap_or_else(|| {
            format!(
                "{}/plugins/{}/csi.sock",
                args.kubelet_dir.display(),
                args.driver_name
            )
        });
        (dir, endpoint)
    });
    let cfg = DriverConfig {
        register,
        metrics: args.metrics_address,
        host_cgroup_root: args.host_cgroup_root,
        endpoint: args.endpoint,
        name: args.driver_name,
        node_id: args.node_id,
        mode: args.mode,
        kubelet_dir: args.kubelet_dir,
        state_dir: args.state_dir,
        pail_bin: std::env::current_exe().context("locating the pail binary")?,
        default_endpoint: args.default_endpoint_url,
        default_region: args.default_region,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("pail-csi")
        .build()?;
    rt.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let shutdown = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            tracing::info!("signal received; stopping (live mounts keep running)");
        };
        pail::csi::serve(cfg, shutdown).await
    })
}
