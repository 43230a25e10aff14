//! Non-root pods on real FUSE through the CSI driver: the pod's fsGroup (kubelet's
//! `volume_mount_group`) owns the volume, group-writable, so a pod running as uid 1000 with
//! that group writes, renames and deletes, while another uid without it gets EACCES; older
//! kubelets get the same from `uid`/`gid`/modes in the PV's mountOptions.

mod common;

use std::path::Path;

use common::csi::{Driver, publish_req, static_context, unpublish_req};
use common::*;
use pail::csi::pb::volume_capability::AccessType;

/// Run `script` in `dir` as `uid` with primary group `gid` and supplementary `groups`.
fn as_user(uid: u32, gid: u32, groups: &str, dir: &Path, script: &str) -> std::process::Output {
    std::process::Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={gid}"),
            &if groups.is_empty() {
                "--clear-groups".to_string()
            } else {
                format!("--groups={groups}")
            },
            "sh",
            "-c",
            script,
        ])
        .current_dir(dir)
        .output()
        .unwrap()
}

fn ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn denied(out: &std::process::Output) {
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Permission denied"), "{err}");
}

const WORK: &str =
    "echo a > f && mkdir d && mv f d/g && cat d/g && rm d/g && rmdir d && echo b > kept";

#[tokio::test]
async fn the_pods_fs_group_may_write_rename_and_delete_and_other_users_may_not() {
    let s3 = s3();
    let driver = Driver::start();
    let mut node = driver.node().await;
    let prefix = unique("fsgroup");
    let target = driver.target("nonroot");
    let mut req = publish_req(&s3, "fsg", &target, static_context(&s3, &prefix));
    if let Some(AccessType::Mount(m)) = req
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.volume_mount_group = "1000".into();
    }
    node.node_publish_volume(req).await.unwrap();
    let meta = std::fs::metadata(&target).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.gid(), meta.mode() & 0o777), (1000, 0o775));
    // runAsUser 1000, runAsGroup 1000, fsGroup 1000.
    ok(&as_user(1000, 1000, "1000", &target, WORK));
    // Any uid with the fsGroup as a supplementary group (how kubelet adds it).
    ok(&as_user(
        3000,
        3000,
        "1000",
        &target,
        "echo c > other && rm other",
    ));
    // Another pod's uid without the group: reads, but cannot write or delete.
    let stranger = as_user(2000, 2000, "", &target, "cat kept && echo x > mine");
    denied(&stranger);
    assert!(String::from_utf8_lossy(&stranger.stdout).contains('b'));
    denied(&as_user(2000, 2000, "", &target, "rm kept"));
    let stored = s3.store().get_all(&format!("{prefix}kept")).await.unwrap();
    assert_eq!(stored.as_deref(), Some(&b"b\n"[..]));
    node.node_unpublish_volume(unpublish_req("fsg", &target))
        .await
        .unwrap();
}

#[tokio::test]
async fn mount_options_give_a_non_root_pod_the_volume_on_kubelets_without_fs_group() {
    let s3 = s3();
    let driver = Driver::start();
    let mut node = driver.node().await;
    let prefix = unique("uid-opts");
    // A PV's mountOptions, as docs/CONFIGURATION.md shows for Kubernetes < 1.23.
    let target = driver.target("pv-pod");
    let mut req = publish_req(&s3, "pv", &target, static_context(&s3, &prefix));
    if let Some(AccessType::Mount(m)) = req
        .volume_capability
        .as_mut()
        .and_then(|c| c.access_type.as_mut())
    {
        m.mount_flags = vec!["uid=1000".into(), "gid=1000".into()];
    }
    node.node_publish_volume(req).await.unwrap();
    ok(&as_user(1000, 1000, "", &target, WORK));
    denied(&as_user(2000, 2000, "", &target, "echo x > mine"));
    // An inline volume that says anyone may write.
    let open = driver.target("inline-pod");
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("mountOptions".into(), "file-mode=0666,dir-mode=0777".into());
    node.node_publish_volume(publish_req(&s3, "open", &open, ctx))
        .await
        .unwrap();
    ok(&as_user(
        2000,
        2000,
        "",
        &open,
        "echo x > anyone && rm anyone",
    ));
    for (id, t) in [("pv", &target), ("open", &open)] {
        node.node_unpublish_volume(unpublish_req(id, t))
            .await
            .unwrap();
    }
}
