//! Safety of the node plugin under restarts, crashes and load, and secrets that stay
//! secret: a plugin killed and restarted, a mount given up, 100 concurrent publishes,
//! and an opt-in soak of 1,000 cycles.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::csi::*;
use common::*;
use pail::csi::pb::node_client::NodeClient;
use pail::csi::pb::*;
use tonic::transport::Channel;

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
async fn a_mount_given_up_fails_fast_and_is_cleaned_up_by_unpublish() {
    let s3 = s3();
    // No successor may start: the mount is given up at the first death (the same path as
    // successors that keep failing).
    let d = Driver::start_with(
        &["--allowed-endpoints=127.0.0.1", "--max-failed-restarts=0"],
        &[],
    );
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
    // The plugin aborts the connection: callers fail at once instead of waiting.
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
    // Nor in its environment (the mount process reads its spec from a descriptor).
    let pids = mount_pids(&t);
    assert_eq!(pids.len(), 1);
    let env = fs::read(format!("/proc/{}/environ", pids[0])).unwrap();
    assert!(
        !String::from_utf8_lossy(&env).contains(SECRET),
        "the mount process has the secret in its environment"
    );
    // No log line (the driver's, the mount process's at debug level) and no state file has it;
    // the state directory can be crossed (to each mount's private directory), not read; its
    // records and logs are root-only.
    assert!(!d.log().contains(SECRET));
    let mut files = 0;
    let mut stack = vec![d.state()];
    while let Some(dir) = stack.pop() {
        let mode = fs::metadata(&dir).unwrap().permissions().mode();
        if dir == d.state() {
            assert_eq!(mode & 0o066, 0, "state dir mode {mode:o}");
        }
        if dir == d.state().join("mounts") {
            assert_eq!(mode & 0o077, 0, "records dir mode {mode:o}");
        }
        for e in fs::read_dir(&dir).unwrap().flatten() {
            let kind = e.file_type().unwrap();
            if kind.is_dir() {
                stack.push(e.path());
            } else if std::os::unix::fs::FileTypeExt::is_socket(&kind) {
                // The node cache's socket: no content.
                assert_eq!(e.file_name(), "cache.sock");
            } else {
                files += 1;
                let text = String::from_utf8_lossy(&fs::read(e.path()).unwrap()).into_owned();
                // The mount's spec (what a successor starts from) is the one file that
                // holds it: root's, in the root-only records directory.
                let spec = d
                    .state()
                    .join("mounts")
                    .join(format!("{}.spec", pail::mounter::state::slug(&t)));
                if e.path() == spec {
                    let meta = fs::metadata(&spec).unwrap();
                    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
                    assert_eq!(std::os::unix::fs::MetadataExt::uid(&meta), 0);
                    continue;
                }
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
