//! The CSI driver driven the way kubelet and external-provisioner drive it: real gRPC over
//! its unix socket, real FUSE mounts of the SeaweedFS test bucket, a real plugin restart.

mod common;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use hyper_util::rt::TokioIo;
use pail::csi::pb::controller_client::ControllerClient;
use pail::csi::pb::identity_client::IdentityClient;
use pail::csi::pb::node_client::NodeClient;
use pail::csi::pb::volume_capability::access_mode::Mode;
use pail::csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use pail::csi::pb::*;
use tokio::net::UnixStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const SECRET: &str = "pailtestsecret";

/// A `pail csi --mode all` process with its own kubelet, state and socket directories.
struct Driver {
    child: Option<Child>,
    dir: tempfile::TempDir,
    metrics_port: u16,
}

impl Driver {
    fn start() -> Driver {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kubelet/pods")).unwrap();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut d = Driver {
            child: None,
            dir,
            metrics_port,
        };
        d.spawn();
        d
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }

    fn kubelet(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn spawn(&mut self) {
        // A killed predecessor leaves its socket file behind: wait for a live one.
        let _ = fs::remove_file(self.socket());
        let log = fs::File::create(self.dir.path().join("driver.log")).unwrap();
        let child = Command::new(pail_bin())
            .arg("csi")
            .arg(format!("--endpoint=unix://{}", self.socket().display()))
            .args(["--node-id=test-node", "--mode=all"])
            .arg(format!("--metrics-address=127.0.0.1:{}", self.metrics_port))
            .arg(format!("--kubelet-dir={}", self.kubelet().display()))
            .arg(format!("--state-dir={}", self.state().display()))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "the driver did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the plugin (mounts it started keep running), then start a new one.
    fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self.spawn();
    }

    fn target(&self, pod: &str) -> PathBuf {
        self.kubelet()
            .join(format!("pods/{pod}/volumes/kubernetes.io~csi/vol/mount"))
    }

    fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("driver.log")).unwrap_or_default()
    }

    async fn channel(&self) -> Channel {
        let path = self.socket();
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .unwrap()
    }

    async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Unmount anything a failed test left behind, then stop the driver.
        let pods = self.kubelet().join("pods");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if let Some(mp) = line.split(' ').nth(4)
                && Path::new(mp).starts_with(&pods)
            {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn secrets(s3: &S3) -> HashMap<String, String> {
    HashMap::from([
        ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), s3.secret_key.clone()),
        ("endpointUrl".to_string(), s3.endpoint.clone()),
    ])
}

fn static_context(s3: &S3, prefix: &str) -> HashMap<String, String> {
    HashMap::from([
        ("bucketName".to_string(), s3.bucket.clone()),
        ("prefix".to_string(), prefix.to_string()),
        ("endpointUrl".to_string(), s3.endpoint.clone()),
        ("forcePathStyle".to_string(), "true".to_string()),
    ])
}

fn publish_req(
    s3: &S3,
    id: &str,
    target: &Path,
    context: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    let mut secrets = secrets(s3);
    secrets.remove("endpointUrl");
    NodePublishVolumeRequest {
        volume_id: id.to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        secrets,
        volume_context: context,
        ..Default::default()
    }
}

fn unpublish_req(id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: id.to_string(),
        target_path: target.display().to_string(),
    }
}

/// The pids of pail mount processes serving `target`.
fn mount_pids(target: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !zombie
            && args.contains(&&b"mount"[..])
            && args.contains(&target.as_os_str().as_encoded_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

#[tokio::test]
async fn identity_reports_the_driver_and_its_controller() {
    let d = Driver::start();
    let mut id = IdentityClient::new(d.channel().await);
    let info = id
        .get_plugin_info(GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "s3.csi.pail.dev");
    assert!(!info.vendor_version.is_empty());
    let caps = id
        .get_plugin_capabilities(GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 1);
    assert_eq!(
        id.probe(ProbeRequest {}).await.unwrap().into_inner().ready,
        Some(true)
    );
    let info = d
        .node()
        .await
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "test-node");
}

#[tokio::test]
async fn a_dynamic_volume_is_created_shared_by_two_pods_and_deleted() {
    let s3 = s3();
    let d = Driver::start();
    let base = unique("dyn");
    let mut ctl = d.controller().await;
    let create = |size: i64| CreateVolumeRequest {
        name: "pvc-0001".into(),
        capacity_range: Some(CapacityRange {
            required_bytes: size,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![mount_cap(Mode::MultiNodeMultiWriter)],
        parameters: HashMap::from([
            ("bucketName".to_string(), s3.bucket.clone()),
            ("prefix".to_string(), base.clone()),
            ("forcePathStyle".to_string(), "true".to_string()),
        ]),
        secrets: secrets(&s3),
        ..Default::default()
    };
    let vol = ctl
        .create_volume(create(1 << 30))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.capacity_bytes, 1 << 30);
    assert_eq!(vol.volume_id, format!("s3/{}/{base}pvc-0001/", s3.bucket));
    let again = ctl
        .create_volume(create(1 << 30))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, vol.volume_id, "same name, same volume");
    let e = ctl.create_volume(create(2 << 30)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);

    let mut node = d.node().await;
    let (a, b) = (d.target("pod-a"), d.target("pod-b"));
    for t in [&a, &b] {
        node.node_publish_volume(publish_req(
            &s3,
            &vol.volume_id,
            t,
            vol.volume_context.clone(),
        ))
        .await
        .unwrap();
        assert!(is_mounted(t));
    }
    fs::write(a.join("shared.txt"), b"from pod a").unwrap();
    assert_eq!(fs::read(b.join("shared.txt")).unwrap(), b"from pod a");
    let store = s3.store();
    assert!(
        (store.head(&format!("{base}pvc-0001/shared.txt")))
            .await
            .unwrap()
            .is_some()
    );

    for t in [&a, &b] {
        node.node_unpublish_volume(unpublish_req(&vol.volume_id, t))
            .await
            .unwrap();
        assert!(!is_mounted(t));
        assert!(!t.exists(), "the target dir is removed");
        assert!(mount_pids(t).is_empty(), "the mount process is gone");
    }
    let del = DeleteVolumeRequest {
        volume_id: vol.volume_id.clone(),
        secrets: secrets(&s3),
    };
    ctl.delete_volume(del.clone()).await.unwrap();
    let left = (store.list(&base)).await.unwrap();
    assert!(left.files.is_empty() && left.dirs.is_empty(), "{left:?}");
    ctl.delete_volume(del).await.unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: "not-ours".into(),
        secrets: HashMap::new(),
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn a_static_read_only_volume_publishes_idempotently() {
    let s3 = s3();
    let d = Driver::start();
    let prefix = unique("static");
    (s3.store().put(
        &format!("{prefix}data.txt"),
        object_store::PutPayload::from_static(b"static"),
    ))
    .await
    .unwrap();
    let mut node = d.node().await;
    let t = d.target("pod-ro");
    let mut req = publish_req(&s3, "static-vol", &t, static_context(&s3, &prefix));
    req.readonly = true;
    for _ in 0..10 {
        node.node_publish_volume(req.clone()).await.unwrap();
    }
    assert_eq!(
        mount_pids(&t).len(),
        1,
        "one mount process however often it is published"
    );
    assert_eq!(fs::read(t.join("data.txt")).unwrap(), b"static");
    let e = fs::write(t.join("new.txt"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS));
    // The secret is in no process's argv.
    for pid in mount_pids(&t) {
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        assert!(!String::from_utf8_lossy(&cmdline).contains(SECRET));
    }
    node.node_unpublish_volume(unpublish_req("static-vol", &t))
        .await
        .unwrap();
    node.node_unpublish_volume(unpublish_req("static-vol", &t))
        .await
        .unwrap();
    assert!(!t.exists());
}

#[tokio::test]
async fn an_inline_ephemeral_volume_mounts_from_nodepublish_alone() {
    let s3 = s3();
    let d = Driver::start();
    let prefix = unique("inline");
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    ctx.insert("csi.storage.k8s.io/pod.name".into(), "inline-pod".into());
    let mut node = d.node().await;
    let t = d.target("pod-inline");
    node.node_publish_volume(publish_req(&s3, "csi-inline-1", &t, ctx))
        .await
        .unwrap();
    fs::write(t.join("f"), b"inline").unwrap();
    assert!(
        (s3.store().head(&format!("{prefix}f")))
            .await
            .unwrap()
            .is_some()
    );
    node.node_unpublish_volume(unpublish_req("csi-inline-1", &t))
        .await
        .unwrap();
    assert!(!is_mounted(&t));
}

#[tokio::test]
async fn concurrent_publishes_of_different_volumes_all_succeed() {
    let s3 = s3();
    let d = Driver::start();
    let prefix = unique("conc");
    let mut tasks = Vec::new();
    for i in 0..8 {
        let mut node = d.node().await;
        let t = d.target(&format!("pod-{i}"));
        let req = publish_req(
            &s3,
            &format!("vol-{i}"),
            &t,
            static_context(&s3, &format!("{prefix}{i}/")),
        );
        tasks.push(tokio::spawn(async move {
            node.node_publish_volume(req).await.map(|_| t)
        }));
    }
    let mut targets = Vec::new();
    for task in tasks {
        targets.push(task.await.unwrap().unwrap());
    }
    let mut node = d.node().await;
    for (i, t) in targets.iter().enumerate() {
        assert!(is_mounted(t));
        fs::write(t.join("i"), i.to_string()).unwrap();
        node.node_unpublish_volume(unpublish_req(&format!("vol-{i}"), t))
            .await
            .unwrap();
        assert!(!is_mounted(t));
    }
}

#[tokio::test]
async fn invalid_requests_are_refused_with_the_field_named() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    let good = publish_req(&s3, "v", &d.target("pod-x"), static_context(&s3, "p/"));
    let mut cases: Vec<(NodePublishVolumeRequest, &str)> = Vec::new();
    let mut r = good.clone();
    r.volume_id.clear();
    cases.push((r, "volume_id"));
    let mut r = good.clone();
    r.target_path.clear();
    cases.push((r, "target_path"));
    let mut r = good.clone();
    r.target_path = "/etc/pail-escape".into();
    cases.push((r, "target_path"));
    let mut r = good.clone();
    r.volume_capability = None;
    cases.push((r, "volume_capability"));
    let mut r = good.clone();
    r.volume_capability = Some(VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode {
            mode: Mode::SingleNodeWriter as i32,
        }),
    });
    cases.push((r, "block"));
    let mut r = good.clone();
    r.volume_context.insert("prefix".into(), "a/../../b".into());
    cases.push((r, "prefix"));
    let mut r = good.clone();
    r.volume_context
        .insert("favouriteColour".into(), "blue".into());
    cases.push((r, "favouriteColour"));
    let mut r = good.clone();
    r.secrets.remove("AWS_ACCESS_KEY_ID");
    cases.push((r, "AWS_ACCESS_KEY_ID"));
    for (req, field) in cases {
        let e = node.node_publish_volume(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{field}: {e:?}");
        assert!(
            e.message().contains(field),
            "{field} not in {:?}",
            e.message()
        );
        assert!(!e.message().contains(SECRET));
    }
    let e = node
        .node_unpublish_volume(unpublish_req("", &d.target("pod-x")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // A wrong key fails the publish with the store's answer, and leaves nothing mounted.
    let mut r = good.clone();
    r.secrets
        .insert("AWS_SECRET_ACCESS_KEY".into(), "wrong".into());
    let e = node.node_publish_volume(r).await.unwrap_err();
    assert!(e.message().contains("access denied"), "{e:?}");
    assert!(!is_mounted(&d.target("pod-x")));
    assert!(!d.log().contains(SECRET), "the secret reached the log");
}

#[tokio::test]
async fn a_restarted_plugin_still_unpublishes_what_its_predecessor_published() {
    let s3 = s3();
    let mut d = Driver::start();
    let prefix = unique("restart");
    let t = d.target("pod-r");
    d.node()
        .await
        .node_publish_volume(publish_req(&s3, "vol-r", &t, static_context(&s3, &prefix)))
        .await
        .unwrap();
    fs::write(t.join("before"), b"1").unwrap();
    d.kill_and_restart();
    // The mount survived the plugin.
    assert_eq!(fs::read(t.join("before")).unwrap(), b"1");
    let mut node = d.node().await;
    node.node_publish_volume(publish_req(&s3, "vol-r", &t, static_context(&s3, &prefix)))
        .await
        .unwrap();
    assert_eq!(
        mount_pids(&t).len(),
        1,
        "a retried publish starts no second process"
    );
    node.node_unpublish_volume(unpublish_req("vol-r", &t))
        .await
        .unwrap();
    assert!(!is_mounted(&t));
    assert!(mount_pids(&t).is_empty());
}

#[tokio::test]
async fn a_killed_mount_process_is_cleaned_up_by_unpublish() {
    let s3 = s3();
    let d = Driver::start();
    let t = d.target("pod-k");
    let mut node = d.node().await;
    node.node_publish_volume(publish_req(
        &s3,
        "vol-k",
        &t,
        static_context(&s3, &unique("kill")),
    ))
    .await
    .unwrap();
    let stats = |node: &mut NodeClient<Channel>| {
        let req = NodeGetVolumeStatsRequest {
            volume_id: "vol-k".into(),
            volume_path: t.display().to_string(),
            staging_target_path: String::new(),
        };
        let mut node = node.clone();
        async move { node.node_get_volume_stats(req).await.unwrap().into_inner() }
    };
    let healthy = stats(&mut node).await;
    assert!(!healthy.volume_condition.unwrap().abnormal);
    assert!(healthy.usage[0].total > 0);
    for pid in mount_pids(&t) {
        // SAFETY: killing the mount process this test started through the driver.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !mount_pids(&t).is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The kernel aborts the connection once the last holder of the FUSE descriptor is gone.
    loop {
        let e = fs::metadata(t.join("x")).unwrap_err();
        if e.raw_os_error() == Some(libc::ENOTCONN) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the mount never became disconnected: {e}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The plugin reports the dead mount through the volume condition kubelet polls, and
    // counts it in its metrics.
    let sick = stats(&mut node).await.volume_condition.unwrap();
    assert!(sick.abnormal && sick.message.contains("gone"), "{sick:?}");
    let metrics = d.metrics();
    assert!(metrics.contains("pail_dead_mounts_total 1"), "{metrics}");
    node.node_unpublish_volume(unpublish_req("vol-k", &t))
        .await
        .unwrap();
    assert!(!is_mounted(&t));
    assert!(!t.exists());
}

#[tokio::test]
async fn the_plugin_registers_with_kubelet_by_itself_when_asked() {
    use pail::csi::registration_pb::registration_client::RegistrationClient;
    use pail::csi::registration_pb::{InfoRequest, RegistrationStatus};
    let dir = tempfile::tempdir().unwrap();
    let kubelet = dir.path().join("kubelet");
    let reg_dir = kubelet.join("plugins_registry");
    let sock = dir.path().join("csi.sock");
    let mut child = Command::new(pail_bin())
        .arg("csi")
        .arg(format!("--endpoint={}", sock.display()))
        .args(["--node-id=n1", "--mode=node", "--register-with-kubelet"])
        .arg(format!("--kubelet-dir={}", kubelet.display()))
        .arg(format!(
            "--state-dir={}",
            dir.path().join("state").display()
        ))
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let reg_sock = reg_dir.join("s3.csi.pail.dev-reg.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !reg_sock.exists() {
        assert!(Instant::now() < deadline, "no registration socket");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Act as kubelet's plugin watcher.
    let channel = Endpoint::try_from("http://[::]:50051")
        .unwrap()
        .connect_with_connector(tower::service_fn(move |_| {
            let p = reg_sock.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
        .unwrap();
    let mut reg = RegistrationClient::new(channel);
    let info = reg.get_info(InfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.r#type, "CSIPlugin");
    assert_eq!(info.name, "s3.csi.pail.dev");
    assert_eq!(
        info.endpoint,
        format!("{}/plugins/s3.csi.pail.dev/csi.sock", kubelet.display())
    );
    assert_eq!(info.supported_versions, ["1.0.0"]);
    reg.notify_registration_status(RegistrationStatus {
        plugin_registered: true,
        error: String::new(),
    })
    .await
    .unwrap();
    drop(reg);
    // SIGTERM: the sockets go, so kubelet deregisters the driver.
    // SAFETY: signalling the child this test started.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success());
    assert!(!reg_dir.join("s3.csi.pail.dev-reg.sock").exists());
    assert!(!sock.exists());
}

#[tokio::test]
async fn a_volume_can_have_its_own_bucket() {
    let s3 = s3();
    let d = Driver::start();
    let name = format!(
        "pvc-b{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            % 1_000_000_000_000
    );
    let mut ctl = d.controller().await;
    let vol = ctl
        .create_volume(CreateVolumeRequest {
            name: name.clone(),
            volume_capabilities: vec![mount_cap(Mode::SingleNodeWriter)],
            parameters: HashMap::from([("bucketPerVolume".to_string(), "true".to_string())]),
            secrets: secrets(&s3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(vol.volume_id, format!("s3/{name}/"));
    assert_eq!(vol.volume_context["bucketName"], name);
    let t = d.target("pod-bucket");
    let mut node = d.node().await;
    node.node_publish_volume(publish_req(
        &s3,
        &vol.volume_id,
        &t,
        vol.volume_context.clone(),
    ))
    .await
    .unwrap();
    fs::write(t.join("in-its-own-bucket"), b"b").unwrap();
    node.node_unpublish_volume(unpublish_req(&vol.volume_id, &t))
        .await
        .unwrap();
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: vol.volume_id.clone(),
        secrets: secrets(&s3),
    })
    .await
    .unwrap();
    let gone = pail::store::Store::open(
        &pail::store::Source::parse(&format!("s3://{name}/")).unwrap(),
        &pail::store::StoreOptions {
            endpoint_url: Some(s3.endpoint.clone()),
            credentials: Some(pail::store::Credentials {
                access_key_id: s3.access_key.clone(),
                secret_access_key: s3.secret_key.clone(),
                session_token: None,
            }),
            max_retries: Some(0),
            ..Default::default()
        },
    )
    .unwrap();
    let e = gone.check("").await.unwrap_err();
    assert_eq!(e.kind, pail::store::StoreErrorKind::NotFound, "{e}");
}

#[tokio::test]
async fn secrets_stay_out_of_argv_logs_and_state_files() {
    use std::os::unix::fs::PermissionsExt;
    let s3 = s3();
    let d = Driver::start();
    let t = d.target("pod-secret");
    let mut node = d.node().await;
    let mut req = publish_req(&s3, "vol-s", &t, static_context(&s3, &unique("secret")));
    req.volume_context
        .insert("mountOptions".into(), "debug".into());
    node.node_publish_volume(req).await.unwrap();
    fs::write(t.join("f"), b"x").unwrap();
    assert_eq!(fs::read(t.join("f")).unwrap(), b"x");
    // No process on the machine has it in its command line.
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = fs::read(entry.path().join("cmdline")) {
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(SECRET),
                "pid {:?} has the secret in argv",
                entry.file_name()
            );
        }
    }
    // No log line (the driver's, the mount process's at debug level) and no state file has it;
    // the state directory is root-only.
    assert!(!d.log().contains(SECRET));
    let mut files = 0;
    let mut stack = vec![d.state()];
    while let Some(dir) = stack.pop() {
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        if dir == d.state() {
            assert_eq!(mode & 0o077, 0, "state dir mode {mode:o}");
        }
        for e in fs::read_dir(&dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                files += 1;
                let text = String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned();
                assert!(
                    !text.contains(SECRET),
                    "{} holds the secret",
                    e.path().display()
                );
            }
        }
    }
    assert!(files >= 2, "a record and a log");
    node.node_unpublish_volume(unpublish_req("vol-s", &t))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_plugin_killed_during_a_publish_leaves_no_duplicate_after_the_retry() {
    use common::proxy::{Fault, Proxy};
    let s3 = s3();
    let mut d = Driver::start();
    let prefix = unique("killpub");
    // The mount process's start-up check is slow, so the plugin dies while it waits.
    let proxy = Proxy::start(&s3.endpoint);
    proxy.add(
        Some("GET"),
        "list-type",
        Fault::Delay(Duration::from_secs(2)),
        Some(1),
    );
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("endpointUrl".into(), proxy.endpoint.clone());
    let t = d.target("pod-kp");
    let req = publish_req(&s3, "vol-kp", &t, ctx);
    let mut node = d.node().await;
    let pending = tokio::spawn({
        let req = req.clone();
        async move { node.node_publish_volume(req).await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount_pids(&t).is_empty() {
        assert!(Instant::now() < deadline, "no mount process started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    d.kill_and_restart();
    assert!(
        pending.await.unwrap().is_err(),
        "the caller saw the plugin die"
    );
    // kubelet retries the publish.
    let mut node = d.node().await;
    node.node_publish_volume(req).await.unwrap();
    fs::write(t.join("after-retry"), b"ok").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount_pids(&t).len() > 1 {
        assert!(
            Instant::now() < deadline,
            "a duplicate mount process is left: {:?}",
            mount_pids(&t)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mount_pids(&t).len(), 1);
    node.node_unpublish_volume(unpublish_req("vol-kp", &t))
        .await
        .unwrap();
    assert!(mount_pids(&t).is_empty());
    assert!(!is_mounted(&t));
}

#[tokio::test]
async fn a_hundred_concurrent_publishes_and_unpublishes_leak_nothing() {
    let s3 = s3();
    let d = Driver::start();
    let prefix = unique("load");
    let n = 100;
    let mut tasks = Vec::new();
    for i in 0..n {
        let mut node = d.node().await;
        let t = d.target(&format!("load-{i}"));
        let req = publish_req(&s3, &format!("load-{i}"), &t, static_context(&s3, &prefix));
        tasks.push(tokio::spawn(async move {
            node.node_publish_volume(req).await.unwrap();
            node.node_unpublish_volume(unpublish_req(&format!("load-{i}"), &t))
                .await
                .unwrap();
            t
        }));
    }
    let mut targets = Vec::new();
    for task in tasks {
        targets.push(task.await.unwrap());
    }
    for t in &targets {
        assert!(!is_mounted(t), "{} is still mounted", t.display());
        assert!(
            mount_pids(t).is_empty(),
            "{} still has a process",
            t.display()
        );
        assert!(!t.exists());
    }
    let records = fs::read_dir(d.state().join("mounts")).unwrap().count();
    assert_eq!(records, 0, "mount records left behind");
}

fn rss_kib(pid: u32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

#[tokio::test]
#[ignore = "soak (about a minute): run with scripts/soak.sh"]
async fn node_plugin_memory_stays_flat_over_a_thousand_publish_cycles() {
    let s3 = s3();
    let d = Driver::start();
    let pid = d.child.as_ref().unwrap().id();
    let prefix = unique("soak");
    let mut node = d.node().await;
    let cycle = |i: usize| {
        let t = d.target(&format!("soak-{}", i % 10));
        let req = publish_req(&s3, &format!("soak-{i}"), &t, static_context(&s3, &prefix));
        (req, t)
    };
    let mut after_warmup = 0;
    for i in 0..1000 {
        let (req, t) = cycle(i);
        node.node_publish_volume(req).await.unwrap();
        node.node_unpublish_volume(unpublish_req(&format!("soak-{i}"), &t))
            .await
            .unwrap();
        if i == 99 {
            after_warmup = rss_kib(pid);
        }
    }
    let end = rss_kib(pid);
    assert!(
        end < after_warmup + 8 * 1024,
        "node plugin RSS grew from {after_warmup} KiB to {end} KiB"
    );
}
