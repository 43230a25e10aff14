//! The CSI driver driven the way kubelet and external-provisioner drive it: real gRPC over
//! its unix socket, real FUSE mounts of the SeaweedFS test bucket.

mod common;

use std::collections::HashMap;
use std::fs;
use std::time::{Duration, Instant};

use common::csi::*;
use common::*;
use hyper_util::rt::TokioIo;
use pail::csi::pb::identity_client::IdentityClient;
use pail::csi::pb::volume_capability::access_mode::Mode;
use pail::csi::pb::volume_capability::{AccessMode, AccessType, BlockVolume};
use pail::csi::pb::*;
use std::process::{Command, Stdio};
use tokio::net::UnixStream;
use tonic::Code;
use tonic::transport::Endpoint;

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
    let left = (store.list_dir(&base)).await.unwrap();
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
        pail::store::Payload::from(b"static".as_slice()),
        &pail::store::PutOptions::default(),
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
    // A wrong key fails the publish with the store's answer as a category and a hint (no
    // response body), and leaves nothing mounted.
    let mut r = good.clone();
    r.secrets
        .insert("AWS_SECRET_ACCESS_KEY".into(), "wrong".into());
    let e = node.node_publish_volume(r).await.unwrap_err();
    assert!(
        e.message().contains("the endpoint refused the credentials"),
        "{e:?}"
    );
    assert!(!e.message().contains("SignatureDoesNotMatch"), "{e:?}");
    // ... naming the bucket and endpoint it tried, never the secret.
    assert!(
        e.message().contains(&format!("s3://{}/", s3.bucket)) && e.message().contains(&s3.endpoint),
        "{e:?}"
    );
    assert!(!e.message().contains("wrong"), "{e:?}");
    assert!(!is_mounted(&d.target("pod-x")));
    assert!(!d.log().contains(SECRET), "the secret reached the log");
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
    let gone = pail::store::open(
        &pail::store::Source::parse(&format!("s3://{name}/")).unwrap(),
        &pail::store::StoreOptions {
            endpoint_url: Some(s3.endpoint.clone()),
            auth: pail::store::Auth::Keys(pail::store::Credentials {
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

/// One HTTP/2 frame: (type, flags, stream, payload).
async fn read_frame(s: &mut UnixStream) -> (u8, u8, u32, Vec<u8>) {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
    let stream = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    (head[3], head[4], stream, payload)
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.extend([kind, flags]);
    v.extend(stream.to_be_bytes());
    v.extend(payload);
    v
}

/// kubelet before 1.26 (grpc-go dialling a bare socket path) sends that path as the HTTP/2
/// `:authority`, which h2 alone refuses with RST_STREAM(PROTOCOL_ERROR): the driver must
/// answer it anyway, or kubelet can neither register nor publish.
#[tokio::test]
async fn a_client_sending_the_socket_path_as_authority_is_answered() {
    use tokio::io::AsyncWriteExt;
    let d = Driver::start();
    let socket = d.socket();
    let lit = |s: &[u8]| {
        let mut v = vec![s.len() as u8];
        v.extend(s);
        v
    };
    // :method POST, :scheme http, :path, :authority = the socket path, content-type, te.
    let mut block = vec![0x83, 0x86, 0x44];
    block.extend(lit(b"/csi.v1.Identity/GetPluginInfo"));
    block.push(0x41);
    block.extend(lit(socket.as_os_str().as_encoded_bytes()));
    block.push(0x5f);
    block.extend(lit(b"application/grpc"));
    block.push(0x40);
    block.extend(lit(b"te"));
    block.extend(lit(b"trailers"));
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    out.extend(frame(0x1, 0x4, 1, &block)); // HEADERS, END_HEADERS
    out.extend(frame(0x0, 0x1, 1, &[0, 0, 0, 0, 0])); // an empty request, END_STREAM

    let mut s = UnixStream::connect(&socket).await.unwrap();
    s.write_all(&out).await.unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let (kind, flags, stream, payload) = read_frame(&mut s).await;
            match kind {
                0x4 if flags & 0x1 == 0 => s.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(),
                0x0 if stream == 1 => return Ok(payload),
                0x3 => return Err(format!("RST_STREAM {payload:?}")),
                0x7 => return Err(format!("GOAWAY {payload:?}")),
                _ => {}
            }
        }
    })
    .await
    .expect("no answer within 10 s");
    let payload = answer.unwrap();
    let body = String::from_utf8_lossy(&payload);
    assert!(body.contains("s3.csi.pail.dev"), "answer: {body:?}");
}

#[test]
fn an_endpoint_in_a_missing_directory_is_refused_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing/dir");
    let out = std::process::Command::new(pail_bin())
        .args(["csi", "--mode", "controller", "--endpoint"])
        .arg(format!("unix://{}/csi.sock", missing.display()))
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("does not exist") && err.contains(&missing.display().to_string()),
        "{err}"
    );
    assert!(!dir.path().join("missing").exists(), "a directory was made");
}
