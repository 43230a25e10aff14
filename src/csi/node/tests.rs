//! Unit tests of the Node service over a fake mounter: idempotency, status codes, and
//! that nothing reaches the mounter before a request is checked.

use std::collections::HashMap;

use super::*;
use crate::csi::pb::volume_capability::access_mode::Mode;
use crate::csi::pb::volume_capability::{AccessMode, AccessType, MountVolume};
use crate::mounter::FakeMounter;

const ROOT: &str = "/var/lib/kubelet/pods";

fn service() -> (NodeService, Arc<FakeMounter>) {
    let fake = Arc::new(FakeMounter::default());
    let svc = NodeService {
        node_id: "n".into(),
        allowed_root: PathBuf::from(ROOT),
        mounter: fake.clone(),
        policy: DriverPolicy::strict(),
        probing: Default::default(),
        annotations: Arc::new(FakeAnnotations),
        max_volumes: 0,
        events: None,
        abnormal: Default::default(),
    };
    (svc, fake)
}

#[tokio::test]
async fn node_info_reports_the_admins_volume_limit() {
    let (mut svc, _) = service();
    let info = svc
        .node_get_info(Request::new(NodeGetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((info.node_id.as_str(), info.max_volumes_per_node), ("n", 0));
    svc.max_volumes = 40;
    let info = svc
        .node_get_info(Request::new(NodeGetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.max_volumes_per_node, 40);
}

/// ServiceAccounts: `irsa` has a role, `plain` none, anything else is not found.
struct FakeAnnotations;

#[tonic::async_trait]
impl Annotations for FakeAnnotations {
    async fn service_account(
        &self,
        ns: &str,
        name: &str,
    ) -> Result<std::collections::BTreeMap<String, String>, Status> {
        match name {
            "irsa" | "other-irsa" => Ok([(
                pod_identity::ROLE_ANNOTATION.to_string(),
                format!("arn:aws:iam::111122223333:role/{ns}-reader"),
            )]
            .into()),
            "plain" => Ok(Default::default()),
            _ => Err(Status::failed_precondition(format!(
                "ServiceAccount {ns}/{name} not found"
            ))),
        }
    }
}

fn target(pod: &str) -> String {
    format!("{ROOT}/{pod}/volumes/kubernetes.io~csi/v/mount")
}

fn publish(
    id: &str,
    target: &str,
    read_only: bool,
    attrs: &[(&str, &str)],
) -> NodePublishVolumeRequest {
    NodePublishVolumeRequest {
        volume_id: id.into(),
        target_path: target.into(),
        volume_capability: Some(VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(AccessMode {
                mode: Mode::MultiNodeMultiWriter as i32,
            }),
        }),
        readonly: read_only,
        secrets: [
            ("AWS_ACCESS_KEY_ID".to_string(), "id".to_string()),
            ("AWS_SECRET_ACCESS_KEY".to_string(), "secret".to_string()),
        ]
        .into(),
        volume_context: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

fn stats(id: &str, path: &str) -> NodeGetVolumeStatsRequest {
    NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: path.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn publish_is_idempotent_and_a_conflicting_one_is_already_exists() {
    let (svc, fake) = service();
    let t = target("a");
    let attrs = [("bucketName", "bucket-1")];
    svc.node_publish_volume(Request::new(publish("v1", &t, false, &attrs)))
        .await
        .unwrap();
    svc.node_publish_volume(Request::new(publish("v1", &t, false, &attrs)))
        .await
        .unwrap();
    assert_eq!(
        fake.published.lock().unwrap().len(),
        1,
        "the second publish mounts nothing"
    );
    for (id, ro) in [("v2", false), ("v1", true)] {
        let e = svc
            .node_publish_volume(Request::new(publish(id, &t, ro, &attrs)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::AlreadyExists, "{id} {ro}");
    }
    svc.node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
        volume_id: "v1".into(),
        target_path: t.clone(),
    }))
    .await
    .unwrap();
    svc.node_unpublish_volume(Request::new(NodeUnpublishVolumeRequest {
        volume_id: "v1".into(),
        target_path: t,
    }))
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_requests_never_reach_the_mounter() {
    let (svc, fake) = service();
    let cases = [
        publish(
            "v",
            &target("a"),
            false,
            &[("bucketName", "b-1"), ("mountOptions", "part-size=1K")],
        ),
        publish(
            "v",
            &target("a"),
            false,
            &[("bucketName", "b-1"), ("mountOptions", "cache-dir=/")],
        ),
        publish("v", &target("a"), false, &[]),
        publish("v", "/etc", false, &[("bucketName", "b-1")]),
        publish(
            "v",
            &format!("{ROOT}/a//x"),
            false,
            &[("bucketName", "b-1")],
        ),
        publish("v", &format!("{ROOT}/./x"), false, &[("bucketName", "b-1")]),
        publish(
            &"v".repeat(129),
            &target("a"),
            false,
            &[("bucketName", "b-1")],
        ),
        publish(
            "v\nforged log line",
            &target("a"),
            false,
            &[("bucketName", "b-1")],
        ),
        publish("", &target("a"), false, &[("bucketName", "b-1")]),
    ];
    for req in cases {
        let e = svc
            .node_publish_volume(Request::new(req))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    }
    assert!(fake.published.lock().unwrap().is_empty());
}

#[tokio::test]
async fn stats_find_the_volume_first_and_report_a_dead_mount() {
    let (svc, fake) = service();
    for path in ["some/path", "/elsewhere", &target("nope")] {
        let e = svc
            .node_get_volume_stats(Request::new(stats("v", path)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{path}");
    }
    let t = target("a");
    svc.node_publish_volume(Request::new(publish(
        "v",
        &t,
        false,
        &[("bucketName", "b-1")],
    )))
    .await
    .unwrap();
    let e = svc
        .node_get_volume_stats(Request::new(stats("other", &t)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);
    let ok = svc
        .node_get_volume_stats(Request::new(stats("v", &t)))
        .await
        .unwrap()
        .into_inner();
    assert!(!ok.volume_condition.unwrap().abnormal);
    fake.kill(Path::new(&t));
    let dead = svc
        .node_get_volume_stats(Request::new(stats("v", &t)))
        .await
        .unwrap()
        .into_inner();
    assert!(dead.volume_condition.unwrap().abnormal);
}

#[tokio::test]
async fn a_failed_mount_is_an_internal_error_with_its_reason() {
    let (svc, fake) = service();
    fake.fail_next("no such bucket");
    let e = svc
        .node_publish_volume(Request::new(publish(
            "v",
            &target("a"),
            false,
            &[("bucketName", "b-1")],
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Internal);
    assert!(e.message().contains("no such bucket"));
}

/// The oracle: canonical (no empty, `.` or `..` segments), absolute, strictly below root.
fn acceptable(p: &str) -> bool {
    let Some(rest) = p.strip_prefix(&format!("{ROOT}/")) else {
        return false;
    };
    rest.split('/')
        .all(|s| !s.is_empty() && s != "." && s != "..")
}

#[test]
fn target_paths_are_accepted_exactly_when_canonical_and_below_the_kubelet_dir() {
    let root = Path::new(ROOT);
    let mut x: u64 = 42;
    let parts = [
        "/var", "/lib", "/kubelet", "/pods", "/..", "/.", "/x", "//", "/mount", "kubelet", "/",
    ];
    let (mut ok, mut refused) = (0, 0);
    for i in 0..20_000 {
        let mut p: String = if i % 2 == 0 {
            ROOT.to_string()
        } else {
            String::new()
        };
        for _ in 0..(x % 6) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            p.push_str(parts[(x % parts.len() as u64) as usize]);
        }
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        match check_target(&p, root, "target_path") {
            Ok(t) => {
                ok += 1;
                assert!(acceptable(&p), "{p:?} accepted");
                assert_eq!(t, Path::new(&p));
            }
            Err(e) => {
                refused += 1;
                assert!(!acceptable(&p), "{p:?} refused: {}", e.message());
                assert_eq!(e.code(), tonic::Code::InvalidArgument);
            }
        }
    }
    assert!(
        ok > 100 && refused > 100,
        "{ok} accepted, {refused} refused"
    );
}

/// A publish of an inline volume for pod `pod` running as ServiceAccount `sa`, with kubelet's
/// tokens and no Secret.
fn pod_publish(t: &str, sa: &str, token: &str, attrs: &[(&str, &str)]) -> NodePublishVolumeRequest {
    let mut req = publish("v1", t, false, attrs);
    req.secrets.clear();
    let tokens = format!(
        r#"{{"sts.amazonaws.com": {{"token": "{token}", "expirationTimestamp": "2030-01-01T00:00:00Z"}}}}"#
    );
    for (k, v) in [
        (pod_identity::TOKENS_KEY, tokens.as_str()),
        (pod_identity::NAMESPACE_KEY, "team-a"),
        (pod_identity::SERVICE_ACCOUNT_KEY, sa),
        (pod_identity::POD_KEY, "trainer-0"),
    ] {
        req.volume_context.insert(k.into(), v.into());
    }
    req
}

#[tokio::test]
async fn a_pod_token_assumes_the_role_its_service_account_names_and_a_republish_refreshes_it() {
    let (svc, fake) = service();
    let t = target("p");
    let attrs = [("bucketName", "bucket-1")];
    svc.node_publish_volume(Request::new(pod_publish(&t, "irsa", "jwt.one.a", &attrs)))
        .await
        .unwrap();
    let last = fake.last.lock().unwrap().clone().unwrap();
    assert_eq!(
        last.args.store.role_arn.as_deref(),
        Some("arn:aws:iam::111122223333:role/team-a-reader")
    );
    assert_eq!(
        last.args.store.role_session_name.as_deref(),
        Some("pail-team-a-trainer-0")
    );
    // A republish with a fresh token: no second mount, the token reaches the live one.
    svc.node_publish_volume(Request::new(pod_publish(&t, "irsa", "jwt.two.b", &attrs)))
        .await
        .unwrap();
    assert_eq!(fake.published.lock().unwrap().len(), 1);
    let tokens: Vec<String> = fake
        .tokens
        .lock()
        .unwrap()
        .iter()
        .map(|(_, t)| t.clone())
        .collect();
    assert_eq!(tokens, ["jwt.one.a", "jwt.two.b"]);
    // A volume's own roleArn wins over the annotation.
    let t2 = target("q");
    let own = [
        ("bucketName", "bucket-1"),
        ("roleArn", "arn:aws:iam::1:role/own"),
    ];
    svc.node_publish_volume(Request::new(pod_publish(&t2, "plain", "jwt.x.y", &own)))
        .await
        .unwrap();
    let last = fake.last.lock().unwrap().clone().unwrap();
    assert_eq!(
        last.args.store.role_arn.as_deref(),
        Some("arn:aws:iam::1:role/own")
    );
}

#[tokio::test]
async fn a_pod_without_a_role_is_refused_and_never_gets_the_nodes_identity() {
    let (svc, fake) = service();
    let attrs = [("bucketName", "bucket-1")];
    let e = svc
        .node_publish_volume(Request::new(pod_publish(
            &target("p"),
            "plain",
            "jwt.a.b",
            &attrs,
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    assert!(
        e.message()
            .contains("team-a/plain has no eks.amazonaws.com/role-arn"),
        "{}",
        e.message()
    );
    assert!(!e.message().contains("jwt.a.b"));
    // No tokens at all (the CSIDriver asks for none): the old refusal, naming the choices.
    let mut req = publish("v1", &target("p"), false, &attrs);
    req.secrets.clear();
    let e = svc
        .node_publish_volume(Request::new(req))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
    // authenticationSource: pod without tokens says what the CSIDriver lacks.
    let mut req = publish(
        "v1",
        &target("p"),
        false,
        &[("bucketName", "b-1"), ("authenticationSource", "pod")],
    );
    req.secrets.clear();
    let e = svc
        .node_publish_volume(Request::new(req))
        .await
        .unwrap_err();
    assert!(e.message().contains("tokenRequests"), "{}", e.message());
    // An STS endpoint off the allow-list is refused like any endpoint.
    let evil = [
        ("bucketName", "bucket-1"),
        ("stsEndpoint", "http://169.254.169.254/"),
    ];
    let e = svc
        .node_publish_volume(Request::new(pod_publish(
            &target("p"),
            "irsa",
            "jwt.a.b",
            &evil,
        )))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
    assert!(e.message().contains("stsEndpoint"), "{}", e.message());
    assert!(fake.published.lock().unwrap().is_empty());
}

#[tokio::test]
async fn the_pods_fs_group_owns_the_files_group_writable() {
    let (svc, fake) = service();
    let caps = svc
        .node_get_capabilities(Request::new(NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.iter().any(|c| matches!(
        c.r#type,
        Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type }))
            if r#type == node_service_capability::rpc::Type::VolumeMountGroup as i32
    )));
    let mut req = publish("v1", &target("g"), false, &[("bucketName", "bucket-1")]);
    if let Some(AccessType::Mount(m)) = req
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.volume_mount_group = "1000".into();
    }
    svc.node_publish_volume(Request::new(req.clone()))
        .await
        .unwrap();
    let v = fake.last.lock().unwrap().clone().unwrap().args.volume;
    assert_eq!((v.gid, v.file_mode, v.dir_mode), (Some(1000), 0o664, 0o775));
    if let Some(AccessType::Mount(m)) = req
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.volume_mount_group = "staff".into();
    }
    req.target_path = target("h");
    let e = svc
        .node_publish_volume(Request::new(req))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
}

#[tokio::test]
async fn pods_share_a_mount_only_with_the_same_volume_options_and_identity() {
    let (svc, fake) = service();
    let staging = "/var/lib/kubelet/plugins/kubernetes.io/csi/pv/v1/globalmount";
    let attrs = [("bucketName", "bucket-1")];
    let staged = |mut r: NodePublishVolumeRequest| {
        r.staging_target_path = staging.into();
        r
    };
    let key = |r: NodePublishVolumeRequest| {
        let svc = &svc;
        let fake = &fake;
        let r = r.clone();
        async move {
            let target = r.target_path.clone();
            svc.node_publish_volume(Request::new(r)).await.unwrap();
            let shares = fake.shares.lock().unwrap();
            let (t, share) = shares.last().unwrap().clone();
            assert_eq!(t, PathBuf::from(target));
            share.map(|s| {
                assert_eq!(s.staging, PathBuf::from(staging));
                assert!(s.mountpoint().starts_with(staging));
                s.key
            })
        }
    };
    // Not staged (an inline volume): a mount of its own.
    assert_eq!(key(publish("v1", &target("i"), false, &attrs)).await, None);
    let a = key(staged(publish("v1", &target("a"), false, &attrs))).await;
    let b = key(staged(publish("v1", &target("b"), false, &attrs))).await;
    assert!(a.is_some());
    assert_eq!(a, b, "the same volume, options and Secret share");
    // A read-only pod shares too (its bind is read-only, not the mount).
    let ro = key(staged(publish("v1", &target("ro"), true, &attrs))).await;
    assert_eq!(a, ro);
    assert!(
        !fake
            .last
            .lock()
            .unwrap()
            .clone()
            .unwrap()
            .args
            .volume
            .read_only
    );
    // Another Secret, other options, another volume: never.
    let mut other = staged(publish("v1", &target("s"), false, &attrs));
    other
        .secrets
        .insert("AWS_SECRET_ACCESS_KEY".into(), "another".into());
    assert_ne!(key(other).await, a);
    let opts = [("bucketName", "bucket-1"), ("mountOptions", "uid=1000")];
    assert_ne!(
        key(staged(publish("v1", &target("o"), false, &opts))).await,
        a
    );
    assert_ne!(
        key(staged(publish("v2", &target("v"), false, &attrs))).await,
        a
    );
    // Pod identity: the same ServiceAccount shares whatever the pod and its token; another
    // ServiceAccount never.
    let p1 = key(staged(pod_publish(
        &target("p1"),
        "irsa",
        "jwt.one.a",
        &attrs,
    )))
    .await;
    let p2 = key(staged(pod_publish(
        &target("p2"),
        "irsa",
        "jwt.two.b",
        &attrs,
    )))
    .await;
    let p3 = key(staged(pod_publish(
        &target("p3"),
        "other-irsa",
        "jwt.one.a",
        &attrs,
    )))
    .await;
    assert_eq!(p1, p2);
    assert_ne!(p1, p3);
    assert_ne!(p1, a);
    let session = fake
        .last
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .args
        .store
        .role_session_name;
    assert!(
        session
            .as_deref()
            .is_some_and(|s| s.contains("sa-other-irsa")),
        "{session:?}"
    );
    // A staging path outside kubelet's directory shares nothing.
    let mut out = publish("v1", &target("x"), false, &attrs);
    out.staging_target_path = "/tmp/csi-staging".into();
    assert_eq!(key(out).await, None);
}

#[tokio::test]
async fn stage_and_unstage_check_their_requests() {
    let (svc, _) = service();
    let caps = svc
        .node_get_capabilities(Request::new(NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert!(caps.capabilities.iter().any(|c| matches!(
        c.r#type,
        Some(node_service_capability::Type::Rpc(node_service_capability::Rpc { r#type }))
            if r#type == node_service_capability::rpc::Type::StageUnstageVolume as i32
    )));
    let good = NodeStageVolumeRequest {
        volume_id: "v1".into(),
        staging_target_path: "/var/lib/kubelet/plugins/kubernetes.io/csi/pv/v1/globalmount".into(),
        volume_capability: publish("v1", &target("a"), false, &[]).volume_capability,
        volume_context: [("bucketName".to_string(), "bucket-1".to_string())].into(),
        ..Default::default()
    };
    svc.node_stage_volume(Request::new(good.clone()))
        .await
        .unwrap();
    for (bad, field) in [
        (
            NodeStageVolumeRequest {
                volume_id: String::new(),
                ..good.clone()
            },
            "volume_id",
        ),
        (
            NodeStageVolumeRequest {
                staging_target_path: String::new(),
                ..good.clone()
            },
            "staging_target_path",
        ),
        (
            NodeStageVolumeRequest {
                staging_target_path: "relative/path".into(),
                ..good.clone()
            },
            "staging_target_path",
        ),
        (
            NodeStageVolumeRequest {
                volume_capability: None,
                ..good.clone()
            },
            "volume_capability",
        ),
        (
            NodeStageVolumeRequest {
                volume_context: [("bucketName".to_string(), "B!".to_string())].into(),
                ..good.clone()
            },
            "bucket",
        ),
    ] {
        let e = svc.node_stage_volume(Request::new(bad)).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{}", e.message());
        assert!(e.message().contains(field), "{}", e.message());
    }
    for (id, path, field) in [
        ("", "/var/lib/kubelet/x", "volume_id"),
        ("v1", "", "staging_target_path"),
    ] {
        let e = svc
            .node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
                volume_id: id.into(),
                staging_target_path: path.into(),
            }))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(field), "{}", e.message());
    }
    svc.node_unstage_volume(Request::new(NodeUnstageVolumeRequest {
        volume_id: "v1".into(),
        staging_target_path: good.staging_target_path.clone(),
    }))
    .await
    .unwrap();
}
