//! The node's read cache through the CSI driver, on real FUSE and SeaweedFS: a pod that
//! comes back (a new mount process, even after a plugin restart) reads its data set from
//! the node's copies, asking the store only whether each object changed; a pod of another
//! identity is served a copy only after its own credentials read the object; no mount's
//! user can open the node's copies or be served by the plugin without being a mount.
//! (It drops the kernel's page cache: it takes turns with tests/caches.rs.)

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::csi::{Driver, mount_uid, publish_req, run_as, static_context, unpublish_req};
use common::proxy::Proxy;
use common::*;

async fn put(s3: &S3, key: &str, data: Vec<u8>) {
    s3.store()
        .put(key, Payload::from(data), &PutOptions::default())
        .await
        .unwrap();
}

/// The copies the node cache holds (its index files).
fn copies(d: &Driver) -> usize {
    std::fs::read_dir(d.state().join("cache"))
        .map(|r| {
            r.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .count()
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test]
async fn a_pod_that_comes_back_reads_its_data_from_the_nodes_copies() {
    let s3 = s3();
    let prefix = unique("nodecache");
    let files: Vec<(String, Vec<u8>)> = (0..4)
        .map(|i| {
            (
                format!("part-{i}.bin"),
                data((3 << 20) + i * 1000, 40 + i as u64),
            )
        })
        .chain([("small.txt".to_string(), data(70_000, 49))])
        .collect();
    for (name, body) in &files {
        put(&s3, &format!("{prefix}{name}"), body.clone()).await;
    }
    // The store is reached through a proxy that counts the bytes it sends.
    let proxy = Proxy::start(&s3.endpoint);
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("endpointUrl".into(), proxy.endpoint.clone());
    ctx.insert("mountOptions".into(), "read-cache".into());
    let mut d = Driver::start();
    let mut node = d.node().await;
    let read_all = |target: &std::path::Path| {
        for (name, body) in &files {
            assert!(
                std::fs::read(target.join(name)).unwrap() == *body,
                "{name} read back other bytes"
            );
        }
    };

    let first = d.target("pod-1");
    node.node_publish_volume(publish_req(&s3, "pv-cache", &first, ctx.clone()))
        .await
        .unwrap();
    proxy.take_traffic();
    read_all(&first);
    let (_, cold) = proxy.take_traffic();
    let total: usize = files.iter().map(|(_, b)| b.len()).sum();
    assert!(
        cold as usize >= total,
        "the first pod fetched {cold} of {total} bytes"
    );
    wait_for("the node to keep every file", || copies(&d) == files.len());

    // The copies are the plugin's: the mount's own user cannot open them.
    let uid = mount_uid(&first).unwrap();
    let cache_dir = d.state().join("cache");
    let listed = run_as(
        uid,
        "ls \"$1\" && echo listed",
        std::slice::from_ref(&cache_dir),
    );
    assert!(
        !listed.contains("listed"),
        "a mount's user listed the node cache"
    );
    let entry = std::fs::read_dir(&cache_dir)
        .unwrap()
        .flatten()
        .find(|e| e.path().extension().is_none())
        .unwrap()
        .path();
    let read = run_as(uid, "head -c 10 \"$1\" >/dev/null && echo read", &[entry]);
    assert!(!read.contains("read"), "a mount's user read a node copy");
    node.node_unpublish_volume(unpublish_req("pv-cache", &first))
        .await
        .unwrap();

    // The plugin restarts (an upgrade), then the pod comes back: a new mount process reads
    // the data set from the node's copies.
    drop(node);
    d.kill_and_restart();
    let mut node = d.node().await;
    let second = d.target("pod-2");
    node.node_publish_volume(publish_req(&s3, "pv-cache", &second, ctx.clone()))
        .await
        .unwrap();
    proxy.take_traffic();
    read_all(&second);
    let (_, warm) = proxy.take_traffic();
    assert!(
        (warm as usize) < total / 20,
        "the pod that came back fetched {warm} of {total} bytes"
    );
    // Once verified, the copy is read by the kernel directly (passthrough registered by the
    // plugin for the unprivileged mount): a read needs no mount process at all.
    let pids = common::csi::mount_pids(&second);
    assert_eq!(pids.len(), 1, "{pids:?}");
    let (name, body) = &files[0];
    let mut direct = false;
    for _ in 0..50 {
        let f = std::fs::File::open(second.join(name)).unwrap();
        // Not from the kernel's pages of the file (read above).
        // SAFETY: sync(2) has no preconditions.
        unsafe { libc::sync() };
        std::fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
        // SAFETY: stopping and resuming our own child's process.
        unsafe { libc::kill(pids[0] as i32, libc::SIGSTOP) };
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut f = f;
            let mut out = Vec::new();
            let _ = f.read_to_end(&mut out);
            let _ = tx.send(out);
        });
        let got = rx.recv_timeout(Duration::from_secs(2));
        unsafe { libc::kill(pids[0] as i32, libc::SIGCONT) };
        if let Ok(got) = got {
            assert!(got == *body, "a direct read returned other bytes");
            direct = true;
            break;
        }
        rx.recv().unwrap();
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        direct,
        "reads of a cached file always went through the mount process"
    );
    node.node_unpublish_volume(unpublish_req("pv-cache", &second))
        .await
        .unwrap();

    // Another identity (a read-only user of the store): served the node's copies only once
    // its own credentials have read each object (SeaweedFS's single-part ETags are MD5s,
    // so the plugin could match the copies to the store).
    let third = d.target("pod-3");
    let mut req = publish_req(&s3, "pv-cache", &third, ctx.clone());
    req.secrets = HashMap::from([
        (
            "AWS_ACCESS_KEY_ID".to_string(),
            required("PAIL_TEST_S3_READER_ACCESS_KEY"),
        ),
        (
            "AWS_SECRET_ACCESS_KEY".to_string(),
            required("PAIL_TEST_S3_READER_SECRET_KEY"),
        ),
    ]);
    node.node_publish_volume(req).await.unwrap();
    proxy.take_traffic();
    read_all(&third);
    let (_, other) = proxy.take_traffic();
    assert!(
        (other as usize) < total / 20,
        "another identity fetched {other} of {total} bytes"
    );
    node.node_unpublish_volume(unpublish_req("pv-cache", &third))
        .await
        .unwrap();

    // Someone on the node who is not a mount gets nothing from the plugin's socket.
    let socket = d.state().join("cache.sock");
    let stranger = d.first_uid + 999;
    let out = run_as(
        stranger,
        r#"python3 -c 'import socket, sys, struct
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
print("connected")
b = b"{\"op\":\"get\",\"key\":\"x\",\"etag\":\"e\",\"size\":1}"
try:
    s.sendall(struct.pack("<I", len(b)) + b)
    r = s.recv(100)
except OSError:
    r = b""
print("answer", len(r))' "$1" 2>&1"#,
        &[socket],
    );
    assert!(
        out.contains("connected") && out.contains("answer 0"),
        "a stranger was answered: {out}"
    );
}
