//! `pail csi`: run the CSI driver (node plugin, controller, or both) on a unix socket.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use pail::csi::controller::{ControllerService, Defaults, StoreOpener};
use pail::csi::identity::IdentityService;
use pail::csi::node::NodeService;
use pail::csi::pod_identity::KubeAnnotations;
use pail::csi::policy::DriverPolicy;
use pail::csi::registration::RegistrationService;
use pail::csi::{DEFAULT_DRIVER_NAME, Mode, Services};
use pail::mounter::{Mounter, NodeBudget, ProcessMounter, UidRange};
use pail::options::LogFormat;
use pail::store::net::NetPolicy;

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
    /// Node plugin: most pail volumes on this node (the scheduler places no more, and a
    /// publish past it is refused with RESOURCE_EXHAUSTED); 0: no limit.
    #[arg(long, default_value_t = 0)]
    pub max_volumes_per_node: u32,
    /// Node plugin: a mount process that dies is replaced on the same FUSE connection;
    /// this many successors may fail to start in a row before the mount is given up
    /// (ENOTCONN). 0: a dead mount process is not replaced.
    #[arg(long, default_value_t = pail::mounter::supervisor::MAX_FAILED_STARTS)]
    pub max_failed_restarts: u32,
    /// The host's cgroup file system (e.g. /host/sys/fs/cgroup; with the host's PID
    /// namespace): each mount process moves into its root cgroups, so that live mounts
    /// outlive the node plugin's container (restarts, upgrades).
    #[arg(long)]
    pub host_cgroup_root: Option<PathBuf>,
    /// Node plugin: endpoints mounts may reach besides the public AWS, R2 and GCS ones:
    /// host[:port], *.domain or a CIDR range, comma-separated (an in-cluster store). Names
    /// not on the list, and public names resolving to private addresses, are refused.
    #[arg(long, value_delimiter = ',')]
    pub allowed_endpoints: Vec<String>,
    /// Node plugin: a PersistentVolume with `authenticationSource: driver` may use this
    /// plugin's own identity (its environment: IRSA, Pod Identity, instance metadata).
    #[arg(long)]
    pub allow_node_credentials: bool,
    /// Node plugin: ... and so may inline volumes (anyone who can create a pod writes those).
    #[arg(long, requires = "allow_node_credentials")]
    pub allow_node_credentials_inline: bool,
    /// Node plugin: most `memory-limit` a volume may ask for.
    #[arg(long, default_value = "2G", value_parser = pail::options::parse_size)]
    pub max_memory_limit: u64,
    /// Node plugin: most `max-cache-size` a volume may ask for.
    #[arg(long, default_value = "10G", value_parser = pail::options::parse_size)]
    pub max_cache_size: u64,
    /// Node plugin: most staging space all mounts of the node reserve together (each its
    /// `max-cache-size`; also never more than the state directory has free).
    #[arg(long, default_value = "50G", value_parser = pail::options::parse_size)]
    pub node_cache_size: u64,
    /// Node plugin: the node's read cache, shared by every mount with `read-cache` (root
    /// only; a hostPath keeps it across plugin restarts and upgrades); default: `cache/` in
    /// the state directory.
    #[arg(long)]
    pub shared_cache_dir: Option<PathBuf>,
    /// Node plugin: most bytes the node's read cache holds (0: no node cache; each mount
    /// keeps its own copies in its staging space).
    #[arg(long, default_value = "10G", value_parser = pail::options::parse_size)]
    pub shared_cache_size: u64,
    /// Node plugin: most memory all mounts of the node reserve together (each its
    /// `memory-limit`, which its cgroup enforces); default: half of the node's memory.
    #[arg(long, value_parser = pail::options::parse_size)]
    pub node_memory_limit: Option<u64>,
    /// Node plugin: allow `provider: memory` volumes of at most this size (off when unset).
    #[arg(long, value_parser = pail::options::parse_size)]
    pub memory_volume_size: Option<u64>,
    /// Node plugin: the Google workload identity provider (STS audience) pod tokens of gcs
    /// volumes are exchanged at, when a volume names none.
    #[arg(long, value_parser = pail::options::parse_word)]
    pub workload_identity_provider: Option<String>,
    /// Node plugin: extra PEM certificates mount processes trust (the private CA of an
    /// in-cluster store or of an egress proxy); readable by the mount user.
    #[arg(long)]
    pub ca_bundle: Option<PathBuf>,
    /// Node plugin: the user ids mount processes run as, one of its own each (its group has
    /// the same id), first-last; no other process of the node may use them.
    #[arg(long, default_value = "900000000-900999999", value_parser = UidRange::parse)]
    pub mount_uids: UidRange,
    /// Node plugin: label per-volume metrics with the pod's namespace (off: anyone who
    /// reaches the metrics port would learn the tenants' namespaces).
    #[arg(long)]
    pub metrics_namespace_labels: bool,
    /// Node plugin: memory limit of all mount processes together (pail.slice, with
    /// --host-cgroup-root).
    #[arg(long, value_parser = pail::options::parse_size)]
    pub mounts_memory_max: Option<u64>,
    /// Node plugin: most processes and threads of all mount processes together.
    #[arg(long)]
    pub mounts_pids_max: Option<u64>,
    /// Log format.
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log debug details.
    #[arg(long)]
    pub debug: bool,
}

/// The node service: a process mounter with its records, and its metrics endpoint.
fn node_service(args: &CsiArgs) -> anyhow::Result<NodeService> {
    if args.node_id.is_empty() {
        bail!("--node-id is required in node mode");
    }
    raise_open_files();
    let pail_bin = std::env::current_exe().context("locating the pail binary")?;
    let mut mounter = ProcessMounter::new(pail_bin, &args.state_dir, args.kubelet_dir.join("pods"))
        .with_context(|| format!("state directory {}", args.state_dir.display()))?;
    mounter.max_failed_restarts = args.max_failed_restarts;
    let node_memory = args
        .node_memory_limit
        .unwrap_or_else(|| pail::options::node_memory().unwrap_or(1 << 30) / 2);
    mounter.cgroups = Some(pail::mounter::cgroup::Placement {
        root: args
            .host_cgroup_root
            .clone()
            .unwrap_or_else(|| PathBuf::from("/sys/fs/cgroup")),
        host: args.host_cgroup_root.is_some(),
        limits: pail::mounter::cgroup::Limits {
            memory: Some(args.mounts_memory_max.unwrap_or(node_memory)),
            pids: args.mounts_pids_max,
        },
    });
    mounter.uids = args.mount_uids;
    if args.shared_cache_size > 0 {
        let dir = args
            .shared_cache_dir
            .clone()
            .unwrap_or_else(|| args.state_dir.join("cache"));
        mounter
            .enable_node_cache(&dir, args.shared_cache_size)
            .with_context(|| format!("the node cache in {}", dir.display()))?;
    }
    mounter.budget = NodeBudget {
        max_volumes: args.max_volumes_per_node as usize,
        memory: Some(node_memory),
        staging: Some(args.node_cache_size),
    };
    if let Some(ca) = &args.ca_bundle {
        std::fs::read(ca).with_context(|| format!("--ca-bundle {}", ca.display()))?;
        mounter.ca_bundle = Some(ca.clone());
    }
    let cluster = pail::csi::events::Cluster::new(&args.node_id, &args.driver_name);
    let events = cluster.sink();
    mounter.events = Some(events.clone());
    mounter.follow_logs();
    cluster.remove_startup_taint_when_registered();
    let recorded = mounter.mount_count();
    mounter.sweep_cgroups();
    if recorded > 0 {
        let adopted = mounter.adopt_live();
        tracing::info!(
            mounts = recorded,
            adopted,
            "found mounts started by an earlier node plugin; they keep running, served by this version"
        );
    }
    let mounter: Arc<dyn Mounter> = Arc::new(mounter);
    if let Some(addr) = args.metrics_address {
        let m = mounter.clone();
        let namespaces = args.metrics_namespace_labels;
        tokio::spawn(async move {
            if let Err(e) = pail::csi::metrics::serve(addr, m, namespaces).await {
                tracing::error!(%addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let net = NetPolicy::new(&args.allowed_endpoints, args.allow_node_credentials)
        .map_err(|e| anyhow::anyhow!("--allowed-endpoints: {e}"))?;
    let policy = DriverPolicy {
        net: Arc::new(net),
        node_credentials: args.allow_node_credentials,
        node_credentials_inline: args.allow_node_credentials_inline,
        driver_env: if args.allow_node_credentials {
            DriverPolicy::capture_driver_env()
        } else {
            Vec::new()
        },
        max_memory_limit: args.max_memory_limit,
        max_cache_size: args.max_cache_size,
        memory_volume_size: args.memory_volume_size,
        gcp_workload_identity_provider: args.workload_identity_provider.clone(),
    };
    Ok(NodeService {
        node_id: args.node_id.clone(),
        allowed_root: args.kubelet_dir.join("pods"),
        mounter,
        policy,
        probing: Default::default(),
        annotations: Arc::new(KubeAnnotations::default()),
        max_volumes: args.max_volumes_per_node as i64,
        events: Some(events),
        abnormal: Default::default(),
    })
}

/// The services `args.mode` asks for.
fn services(args: &CsiArgs) -> anyhow::Result<Services> {
    let node = match args.mode {
        Mode::Controller => None,
        Mode::Node | Mode::All => Some(node_service(args)?),
    };
    let controller = (args.mode != Mode::Node).then(|| ControllerService {
        defaults: Defaults {
            endpoint: args.default_endpoint_url.clone(),
            region: args.default_region.clone(),
        },
        opener: Arc::new(StoreOpener),
    });
    let registration = args.register_with_kubelet.then(|| {
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
        let service = RegistrationService {
            name: args.driver_name.clone(),
            endpoint,
        };
        (dir, service)
    });
    Ok(Services {
        identity: IdentityService {
            name: args.driver_name.clone(),
            controller: controller.is_some(),
        },
        node,
        controller,
        registration,
    })
}

/// Run `pail csi` until SIGTERM/SIGINT.
pub fn run(args: CsiArgs) -> anyhow::Result<()> {
    super::logging::init(args.log_format, args.debug, None)?;
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
        let services = services(&args)?;
        pail::csi::serve(&args.endpoint, services, shutdown).await
    })
}

/// Raise the soft limit of open files to the hard one: the node plugin holds every mount's
/// FUSE connection, their pidfds and the node cache's queued offers.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::debug!(error = %std::io::Error::last_os_error(), "could not raise the open-files limit");
            }
        }
    }
}
