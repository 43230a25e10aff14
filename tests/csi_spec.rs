//! The CSI spec's own checks, as a conformance run makes them, over the driver's real
//! socket: NOT_FOUND for unknown volumes whatever the path's form, ALREADY_EXISTS for a
//! conflicting publish to a live target, and volume ids within 128 bytes for any valid name.

mod common;

use common::csi::*;
use common::*;
use pail::csi::pb::*;
use tonic::Code;

#[tokio::test]
async fn unknown_volumes_are_not_found() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    for path in [
        "some/path",
        "/elsewhere/x",
        &d.target("nobody").display().to_string(),
    ] {
        let e = node
            .node_get_volume_stats(NodeGetVolumeStatsRequest {
                volume_id: "no-such-volume".into(),
                volume_path: path.into(),
                staging_target_path: String::new(),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound, "{path}: {}", e.message());
    }
    let mut ctl = d.controller().await;
    let e = ctl
        .validate_volume_capabilities(ValidateVolumeCapabilitiesRequest {
            volume_id: format!("s3/{}/{}", s3.bucket, unique("never-made")),
            volume_capabilities: vec![mount_cap(
                volume_capability::access_mode::Mode::MultiNodeMultiWriter,
            )],
            secrets: secrets(&s3),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{}", e.message());
}

#[tokio::test]
async fn a_conflicting_publish_to_a_live_target_is_already_exists() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    let t = d.target("pod-conflict");
    let ctx = static_context(&s3, &unique("conflict"));
    node.node_publish_volume(publish_req(&s3, "vol-a", &t, ctx.clone()))
        .await
        .unwrap();
    let e = node
        .node_publish_volume(publish_req(&s3, "vol-b", &t, ctx.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    let mut ro = publish_req(&s3, "vol-a", &t, ctx.clone());
    ro.readonly = true;
    let e = node.node_publish_volume(ro).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{}", e.message());
    // The first volume is still the one mounted, writable.
    std::fs::write(t.join("still-mine"), b"x").unwrap();
    assert_eq!(mount_pids(&t).len(), 1);
    node.node_publish_volume(publish_req(&s3, "vol-a", &t, ctx))
        .await
        .unwrap();
    node.node_unpublish_volume(unpublish_req("vol-a", &t))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_volume_named_with_128_characters_gets_an_id_of_128_bytes_at_most() {
    let s3 = s3();
    let d = Driver::start();
    let mut ctl = d.controller().await;
    let base = unique("longname");
    let name = "v".repeat(128);
    let create = || CreateVolumeRequest {
        name: name.clone(),
        volume_capabilities: vec![mount_cap(
            volume_capability::access_mode::Mode::MultiNodeMultiWriter,
        )],
        parameters: [
            ("bucketName".to_string(), s3.bucket.clone()),
            ("prefix".to_string(), base.clone()),
            ("endpointUrl".to_string(), s3.endpoint.clone()),
        ]
        .into(),
        secrets: secrets(&s3),
        ..Default::default()
    };
    let v = ctl
        .create_volume(create())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert!(v.volume_id.len() <= 128, "{} bytes", v.volume_id.len());
    let again = ctl
        .create_volume(create())
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v.volume_id, "the same name keeps its id");
    let prefix = &v.volume_context["prefix"];
    assert!(prefix.starts_with(&base), "{prefix}");
    assert!(
        s3.store().dir_exists(prefix).await.unwrap(),
        "the prefix is in the bucket"
    );
    ctl.delete_volume(DeleteVolumeRequest {
        volume_id: v.volume_id,
        secrets: secrets(&s3),
    })
    .await
    .unwrap();
    assert!(!s3.store().dir_exists(prefix).await.unwrap());
}
