//! Pods of a node sharing a staged volume's mount, through the CSI driver on real FUSE and
//! SeaweedFS: pods with the same volume, options and identity bind one mount process (a
//! read-only pod through a read-only bind); a pod with another identity or other options
//! gets its own; the shared mount outlives any one pod and a `kill -9` of its process, and
//! stops with its last pod.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::csi::{
    Driver, mount_pids, publish_req, stage_req, staging_of, static_context, unpublish_req,
};
use common::*;
use pail::csi::pb::NodeUnstageVolumeRequest;

/// The mounts the driver keeps (their mount points), from its records.
fn mounts(d: &Driver) -> Vec<PathBuf> {
    std::fs::read_dir(d.state().join("mounts"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .map(|e| {
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).unwrap()).unwrap();
            PathBuf::from(r["target"].as_str().unwrap())
        })
        .collect()
}

fn pid_of(mount: &Path) -> u32 {
    let pids = mount_pids(mount);
    assert_eq!(
        pids.len(),
        1,
        "one process serves {}: {pids:?}",
        mount.display()
    );
    pids[0]
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks the process exists.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

fn reader_secrets() -> HashMap<String, String> {
    HashMap::from([
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            required("PAIL_TEST_S3_READER_ACCESS_KEY"),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            required("PAIL_TEST_S3_READER_SECRET_KEY"),
        ),
    ])
}

fn unstage_req(id: &str, staging: &Path) -> NodeUnstageVolumeRequest {
    NodeUnstageVolumeRequest {
        volume_id: id.to_string(),
        staging_target_path: staging.display().to_string(),
    }
}

#[tokio::test]
async fn pods_of_a_staged_volume_share_one_mount_and_another_identity_gets_its_own() {
    let s3 = s3();
    let prefix = unique("shared");
    let mut d = Driver::start();
    let mut node = d.node().await;
    let id = "pv-shared";
    let ctx = static_context(&s3, &prefix);
    let staging = staging_of(&d, id);
    node.node_stage_volume(stage_req(id, &staging, ctx.clone()))
        .await
        .unwrap();
    // Staging twice is fine; another volume at the same staging path is not.
    node.node_stage_volume(stage_req(id, &staging, ctx.clone()))
        .await
        .unwrap();
    let e = node
        .node_stage_volume(stage_req("pv-other", &staging, ctx.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");

    let kubelet = d.kubelet();
    let target_of =
        |pod: &str| kubelet.join(format!("pods/{pod}/volumes/kubernetes.io~csi/vol/mount"));
    let publish = |pod: &str, read_only: bool| {
        let mut r = publish_req(&s3, id, &target_of(pod), ctx.clone());
        r.staging_target_path = staging.display().to_string();
        r.readonly = read_only;
        r
    };
    let (a, b, ro) = (d.target("pod-a"), d.target("pod-b"), d.target("pod-ro"));
    node.node_publish_volume(publish("pod-a", false))
        .await
        .unwrap();
    node.node_publish_volume(publish("pod-b", false))
        .await
        .unwrap();
    node.node_publish_volume(publish("pod-ro", true))
        .await
        .unwrap();
    // A republish (a token refresh) changes nothing.
    node.node_publish_volume(publish("pod-b", false))
        .await
        .unwrap();
    let shared = mounts(&d);
    assert_eq!(shared.len(), 1, "one mount for three pods: {shared:?}");
    let shared = shared[0].clone();
    assert!(shared.starts_with(&staging), "{}", shared.display());
    let pid = pid_of(&shared);

    // What one pod writes, the others read at once (one mount, one cache).
    std::fs::write(a.join("from-a.txt"), b"written by pod a").unwrap();
    assert_eq!(
        std::fs::read(b.join("from-a.txt")).unwrap(),
        b"written by pod a"
    );
    assert_eq!(
        std::fs::read(ro.join("from-a.txt")).unwrap(),
        b"written by pod a"
    );
    let e = std::fs::write(ro.join("from-ro.txt"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    let key = format!("{prefix}from-a.txt");
    assert_eq!(
        s3.store().get_all(&key).await.unwrap().unwrap().as_ref(),
        b"written by pod a"
    );

    // Another identity (a read-only user of the store) never shares the writer's mount.
    let r = d.target("pod-reader");
    let mut req = publish("pod-reader", false);
    req.secrets = reader_secrets();
    node.node_publish_volume(req).await.unwrap();
    assert_eq!(mounts(&d).len(), 2);
    // The plugin's metrics count the pods of each mount.
    // Two mounts of the volume: two series, told apart by their mount label.
    let metrics = d.metrics();
    let pods: Vec<(&str, &str)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("pail_volume_pods{{volume_id=\"{id}\",mount=\"")))
        .filter_map(|l| l.split_once("\"} "))
        .collect();
    assert_eq!(pods.len(), 2, "{metrics}");
    assert_ne!(pods[0].0, pods[1].0, "{metrics}");
    let mut counts: Vec<&str> = pods.iter().map(|p| p.1).collect();
    counts.sort();
    assert_eq!(counts, ["1", "3"], "{metrics}");
    assert_eq!(
        std::fs::read(r.join("from-a.txt")).unwrap(),
        b"written by pod a"
    );
    // (fsync: std's close ignores the error close returns.)
    let wrote = std::fs::File::create(r.join("from-reader.txt")).and_then(|mut f| {
        std::io::Write::write_all(&mut f, b"denied")?;
        f.sync_all()
    });
    assert!(
        wrote.is_err(),
        "the reader's own credentials refuse the write"
    );
    assert!(
        s3.store()
            .get_all(&format!("{prefix}from-reader.txt"))
            .await
            .unwrap()
            .is_none()
    );
    // Other options, another mount too.
    let mut req = publish("pod-opts", false);
    req.volume_capability = Some(pail::csi::pb::VolumeCapability {
        access_type: Some(pail::csi::pb::volume_capability::AccessType::Mount(
            pail::csi::pb::volume_capability::MountVolume {
                mount_flags: vec!["file-mode=0640".into()],
                ..Default::default()
            },
        )),
        ..req.volume_capability.clone().unwrap()
    });
    node.node_publish_volume(req).await.unwrap();
    assert_eq!(mounts(&d).len(), 3);
    node.node_unpublish_volume(unpublish_req(id, &d.target("pod-opts")))
        .await
        .unwrap();
    assert_eq!(mounts(&d).len(), 2);

    // kill -9 of the shared process while two pods read: both carry on.
    let body = data(4 << 20, 3);
    std::fs::write(a.join("big.bin"), &body).unwrap();
    let stops = [
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    ];
    let reads = Arc::new(AtomicU64::new(0));
    let mut readers: Vec<_> = [a.clone(), b.clone()]
        .into_iter()
        .zip(stops.clone())
        .map(|(t, stop)| {
            let (reads, body) = (reads.clone(), body.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                while !stop.load(Ordering::Relaxed) {
                    assert_eq!(std::fs::read(t.join("big.bin")).unwrap(), body);
                    // A name never seen before always reaches the mount process.
                    assert!(!t.join(format!("none-{i}")).exists());
                    i += 1;
                    reads.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: signalling the shared mount's process found above.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(1500));
    let before = reads.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        reads.load(Ordering::Relaxed) > before,
        "reads go on after the kill"
    );
    let successor = pid_of(&shared);
    assert_ne!(successor, pid);

    // A pod that leaves (its reader done) takes nothing from the other, still reading.
    stops[0].store(true, Ordering::Relaxed);
    readers.remove(0).join().expect("no read of pod a failed");
    node.node_unpublish_volume(unpublish_req(id, &a))
        .await
        .unwrap();
    assert!(!a.exists());
    let before = reads.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert!(reads.load(Ordering::Relaxed) > before, "pod b reads on");
    stops[1].store(true, Ordering::Relaxed);
    readers.remove(0).join().expect("no read of pod b failed");
    assert_eq!(std::fs::read(b.join("big.bin")).unwrap(), body);
    assert!(alive(successor));

    // A restarted plugin adopts the shared mount: a new pod joins it, nothing restarts.
    d.kill_and_restart();
    let mut node = d.node().await;
    node.node_publish_volume(publish("pod-c", false))
        .await
        .unwrap();
    assert_eq!(mounts(&d).len(), 2);
    assert_eq!(pid_of(&shared), successor);
    assert_eq!(
        std::fs::read(d.target("pod-c").join("big.bin")).unwrap(),
        body
    );
    node.node_unpublish_volume(unpublish_req(id, &d.target("pod-c")))
        .await
        .unwrap();

    // Unstaging while a pod still has the volume is refused.
    let e = node
        .node_unstage_volume(unstage_req(id, &staging))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition, "{e:?}");

    // The last pod out stops the mount.
    for t in [&b, &ro, &r] {
        node.node_unpublish_volume(unpublish_req(id, t))
            .await
            .unwrap();
    }
    assert!(mounts(&d).is_empty());
    for _ in 0..100 {
        if !alive(successor) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!alive(successor), "the shared mount's process is gone");
    node.node_unstage_volume(unstage_req(id, &staging))
        .await
        .unwrap();
    node.node_unstage_volume(unstage_req(id, &staging))
        .await
        .unwrap();
    let left: Vec<_> = std::fs::read_dir(&staging)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(
        left.is_empty(),
        "nothing left below the staging path: {left:?}"
    );
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&d.kubelet().display().to_string()));
}

#[tokio::test]
async fn a_staging_path_through_a_symlink_is_refused_and_nothing_is_mounted_beyond_it() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    let id = "pv-evil";
    let ctx = static_context(&s3, &unique("evil"));
    // A link planted on the way to the staging path, pointing out of kubelet's directory.
    let outside = tempfile::tempdir().unwrap();
    let pv = d.kubelet().join("plugins/kubernetes.io/csi/pv");
    std::fs::create_dir_all(&pv).unwrap();
    std::os::unix::fs::symlink(outside.path(), pv.join(id)).unwrap();
    let staging = staging_of(&d, id);
    let e = node
        .node_stage_volume(stage_req(id, &staging, ctx.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("symlink"), "{}", e.message());
    let target = d.target("pod-evil");
    let mut req = publish_req(&s3, id, &target, ctx);
    req.staging_target_path = staging.display().to_string();
    let e = node.node_publish_volume(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // Nothing was made or mounted beyond the link, nor left running.
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mountinfo.contains(&outside.path().display().to_string()));
    assert!(!mountinfo.contains(&d.kubelet().display().to_string()));
    assert!(mounts(&d).is_empty());
    // Non-canonical staging paths never reach the mounter.
    for bad in ["relative/path", "/a/../b", "/a//b"] {
        let e = node
            .node_stage_volume(stage_req(id, Path::new(bad), HashMap::new()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{bad}");
    }
}
