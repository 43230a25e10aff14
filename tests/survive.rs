//! Mounts that outlive their process, through the CSI driver on real FUSE: `kill -9` of a
//! volume's mount process while a reader streams a 1 GiB file, a writer appends to another
//! and `ls` lists a 10,000-entry directory; the node plugin starts a successor on the same
//! connection each time, and nobody sees wrong data or a lost close. A restarted plugin of
//! another binary takes the mount over (an upgrade) without unmounting it.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::csi::{
    Driver, keeper_pid, mount_pids, mount_uid, publish_req, recorded_connection,
    set_recorded_connection, static_context, unpublish_req, zombie_or_gone,
};
use common::*;
use futures::StreamExt;
use pail::csi::pb::node_client::NodeClient;
use tonic::transport::Channel;

fn digest(bytes: &[u8]) -> u64 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc64Nvme, bytes)
}

/// Read `path` whole, in 1 MiB reads: its checksum, or the first error.
fn checksum_of(path: &Path) -> std::io::Result<u64> {
    let mut f = std::fs::File::open(path)?;
    let mut all = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(digest(&all));
        }
        all.extend_from_slice(&buf[..n]);
    }
}

struct Setup {
    s3: S3,
    prefix: String,
    big: Vec<u8>,
}

async fn setup(name: &str, big: usize, many: usize) -> Setup {
    let s3 = s3();
    let prefix = unique(name);
    let store = s3.store();
    let body = data(big, 9);
    let mut up = store
        .start_upload(&format!("{prefix}big.bin"), &Default::default())
        .await
        .unwrap();
    for chunk in body.chunks(8 << 20) {
        up.put_part(Payload::from(chunk.to_vec())).await.unwrap();
    }
    up.complete().await.unwrap();
    futures::stream::iter(0..many)
        .map(|i| {
            let store = store.clone();
            let key = format!("{prefix}many/f{i:05}");
            async move {
                store
                    .put(&key, Payload::new(), &PutOptions::default())
                    .await
            }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .for_each(|r| {
            r.unwrap();
        });
    Setup {
        s3,
        prefix,
        big: body,
    }
}

/// Kill the mount process of `target` with SIGKILL; the time until the mount answers again.
fn kill9(target: &Path) -> Duration {
    let pids = mount_pids(target);
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: signalling the mount process found above.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let killed = Instant::now();
    while mount_pids(target) == pids {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::fs::metadata(target.join("big.bin")).unwrap();
    killed.elapsed()
}

#[tokio::test]
async fn a_killed_mount_process_is_replaced_and_readers_writers_and_listings_carry_on() {
    let Setup { s3, prefix, big } = setup("survive", 1 << 30, 10_000).await;
    let driver = Driver::start();
    let mut node = driver.node().await;
    let target = driver.target("survivor");
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("mountOptions".into(), "metadata-ttl=1".into());
    node.node_publish_volume(publish_req(&s3, "survive-vol", &target, ctx))
        .await
        .unwrap();
    let want = digest(&big);
    drop(big);
    let stop = Arc::new(AtomicBool::new(false));
    let (passes, read_errors) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let reader = {
        let (t, stop, passes, errors) = (
            target.clone(),
            stop.clone(),
            passes.clone(),
            read_errors.clone(),
        );
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match checksum_of(&t.join("big.bin")) {
                    Ok(sum) => {
                        assert_eq!(sum, want, "a read returned wrong bytes");
                        passes.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        })
    };
    // The writer appends numbered records, one open/write/close each; a close that fails
    // (its process died with the bytes) is retried, so every record is stored at least once.
    let writer = {
        let (t, stop) = (target.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut retried = Vec::new();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                let rec = format!("record {n:06}\n");
                let ok = std::fs::OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(t.join("log.txt"))
                    .and_then(|mut f| {
                        f.write_all(rec.as_bytes())?;
                        f.sync_all()
                    });
                match ok {
                    Ok(()) => n += 1,
                    Err(e) => {
                        assert!(
                            matches!(e.raw_os_error(), Some(libc::EIO | libc::ESTALE)),
                            "{e}"
                        );
                        retried.push(n);
                    }
                }
            }
            (n, retried)
        })
    };
    let lister = {
        let (t, stop) = (target.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut complete = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Ok(d) = std::fs::read_dir(t.join("many"))
                    && d.filter_map(Result::ok).count() == 10_000
                {
                    complete += 1;
                }
            }
            complete
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut pauses = Vec::new();
    for _ in 0..3 {
        let t = target.clone();
        pauses.push(
            tokio::task::spawn_blocking(move || kill9(&t))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
    let (records, retried) = writer.join().unwrap();
    let listings = lister.join().unwrap();
    eprintln!(
        "pauses from kill to a served request: {pauses:?}; {} whole reads ({} EIO), {records} records ({} retried), {listings} complete listings",
        passes.load(Ordering::Relaxed),
        read_errors.load(Ordering::Relaxed),
        retried.len()
    );
    assert!(passes.load(Ordering::Relaxed) >= 2);
    assert!(listings >= 3);
    // Every record whose close succeeded is there, in order; only a retried one may repeat.
    let log = std::fs::read_to_string(target.join("log.txt")).unwrap();
    let mut next = 0u32;
    for line in log.lines() {
        let k: u32 = line.trim_start_matches("record ").parse().unwrap();
        if k + 1 == next && retried.contains(&k) {
            continue;
        }
        assert_eq!(k, next, "records out of order or lost: {line}");
        next += 1;
    }
    assert!(next >= records, "{next} of {records} records stored");
    let metrics = driver.metrics();
    assert!(metrics.contains("pail_mount_restarts_total 3"), "{metrics}");
    let stats = node
        .node_get_volume_stats(pail::csi::pb::NodeGetVolumeStatsRequest {
            volume_id: "survive-vol".into(),
            volume_path: target.display().to_string(),
            staging_target_path: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let cond = stats.volume_condition.unwrap();
    assert!(
        !cond.abnormal && cond.message.contains("replaced 3 times"),
        "{}",
        cond.message
    );
    node.node_unpublish_volume(unpublish_req("survive-vol", &target))
        .await
        .unwrap();
    assert!(!is_mounted(&target));
    assert!(mount_pids(&target).is_empty());
}

#[tokio::test]
async fn a_new_plugin_version_takes_over_live_mounts_without_unmounting_them() {
    let Setup { s3, prefix, big } = setup("handover", 64 << 20, 0).await;
    // "Version one": the same build under another path, as an image upgrade would be.
    let old = tempfile::tempdir().unwrap();
    let old_bin = old.path().join("pail");
    // Another build: the same program with other bytes (a trailer the loader ignores).
    let mut bytes = std::fs::read(pail_bin()).unwrap();
    bytes.extend_from_slice(b"\0an older build of pail");
    std::fs::write(&old_bin, bytes).unwrap();
    std::fs::set_permissions(
        &old_bin,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let mut driver = Driver::start();
    driver.bin = old_bin.clone();
    driver.kill_and_restart();
    let mut node = driver.node().await;
    let target = driver.target("upgraded");
    node.node_publish_volume(publish_req(
        &s3,
        "handover-vol",
        &target,
        static_context(&s3, &prefix),
    ))
    .await
    .unwrap();
    let exe = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let first = mount_pids(&target);
    assert_eq!(exe(first[0]), old_bin);
    let mut open = std::fs::File::open(target.join("big.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    open.read_exact(&mut head).unwrap();
    // The upgrade: the plugin restarts from the new binary and hands every mount over.
    driver.bin = PathBuf::from(pail_bin());
    driver.kill_and_restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = mount_pids(&target);
        if now.len() == 1 && now != first && exe(now[0]) == Path::new(pail_bin()) {
            break;
        }
        assert!(Instant::now() < deadline, "no hand-over: {now:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(is_mounted(&target), "never unmounted");
    let mut rest = Vec::new();
    open.read_to_end(&mut rest).unwrap();
    head.extend_from_slice(&rest);
    assert!(head == big, "the open file reads on across the hand-over");
    std::fs::write(target.join("after.txt"), b"served by the new version").unwrap();
    // The successor (a process that took the connection over) can itself be taken over: a
    // plugin restarted once more adopts it, and it keeps serving.
    let successor = mount_pids(&target);
    driver.kill_and_restart();
    let mut node = driver.node().await;
    assert!(
        !driver.log().contains("not adopting"),
        "the successor was not adopted: {}",
        driver.log()
    );
    assert_eq!(mount_pids(&target), successor, "adopted, not replaced");
    assert_eq!(
        std::fs::read(target.join("after.txt")).unwrap(),
        b"served by the new version"
    );
    node.node_unpublish_volume(unpublish_req("handover-vol", &target))
        .await
        .unwrap();
    assert!(!is_mounted(&target));
    assert_eq!(
        s3.store()
            .get_all(&format!("{prefix}after.txt"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"served by the new version"[..])
    );
}

#[tokio::test]
async fn after_a_take_over_first_reads_use_the_page_cache() {
    // The successor cannot know whether its predecessor's INIT let files opened past the
    // page cache be mapped: it opens none that way (docs/SEMANTICS.md, take-over).
    let Setup { s3, prefix, big } = setup("directtakeover", 3 << 20, 0).await;
    let other = data(3 << 20, 31);
    s3.store()
        .put(
            &format!("{prefix}other.bin"),
            Payload::from(other.clone()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    let driver = Driver::start();
    let mut node = driver.node().await;
    let target = driver.target("direct");
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("mountOptions".into(), "direct-first-read=2M".into());
    node.node_publish_volume(publish_req(&s3, "direct-vol", &target, ctx))
        .await
        .unwrap();
    assert!(std::fs::read(target.join("big.bin")).unwrap() == big);
    assert_eq!(
        resident(&target.join("big.bin")),
        0,
        "read past the page cache"
    );
    kill9(&target);
    assert!(std::fs::read(target.join("other.bin")).unwrap() == other);
    assert!(
        resident(&target.join("other.bin")) >= 700,
        "after the take-over a first read goes through the page cache"
    );
    node.node_unpublish_volume(unpublish_req("direct-vol", &target))
        .await
        .unwrap();
}

/// A driver with one volume (`NAME-vol`, the object `big.bin` of `size` bytes) published at
/// a target of its own, and the keeper its record names.
struct Kept {
    s3: S3,
    prefix: String,
    big: Vec<u8>,
    driver: Driver,
    target: PathBuf,
    volume: String,
    keeper: u32,
}

async fn publish_kept(name: &str, size: usize) -> (Kept, NodeClient<Channel>) {
    let Setup { s3, prefix, big } = setup(name, size, 0).await;
    let driver = Driver::start();
    let mut node = driver.node().await;
    let target = driver.target(name);
    let volume = format!("{name}-vol");
    node.node_publish_volume(publish_req(
        &s3,
        &volume,
        &target,
        static_context(&s3, &prefix),
    ))
    .await
    .unwrap();
    let keeper = keeper_pid(&target).expect("the mount's keeper is recorded");
    let kept = Kept {
        s3,
        prefix,
        big,
        driver,
        target,
        volume,
        keeper,
    };
    (kept, node)
}

/// Wait for the keeper `pid` to be gone: unpublish SIGKILLs every process of the mount's
/// user, the keeper among them.
fn keeper_gone_after_unpublish(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !zombie_or_gone(pid) {
        assert!(
            Instant::now() < deadline,
            "the keeper outlived the unpublish"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGKILL the one process serving `target` and wait until it is gone.
fn kill_the_mount_process(target: &std::path::Path) {
    let pids = mount_pids(target);
    assert_eq!(pids.len(), 1, "{pids:?}");
    // SAFETY: signalling the mount process found above.
    unsafe { libc::kill(pids[0] as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while mount_pids(target) == pids {
        assert!(Instant::now() < deadline, "the mount process did not die");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test]
async fn a_mount_whose_process_dies_while_the_plugin_is_down_is_served_again_when_it_returns() {
    let (k, node) = publish_kept("orphaned", 16 << 20).await;
    let Kept {
        s3,
        prefix,
        big,
        mut driver,
        target,
        volume,
        keeper,
    } = k;
    let mut open = std::fs::File::open(target.join("big.bin")).unwrap();
    let mut head = vec![0u8; 1 << 20];
    open.read_exact(&mut head).unwrap();
    // The plugin dies; then, while no plugin runs, the mount's process.
    drop(node);
    driver.kill();
    kill_the_mount_process(&target);
    // A read now waits (the keeper holds the connection: no ENOTCONN) ...
    let reader = std::thread::spawn(move || {
        let mut rest = Vec::new();
        open.read_to_end(&mut rest).map(|_| rest)
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !reader.is_finished(),
        "a read was answered with no process serving"
    );
    assert!(
        is_mounted(&target),
        "the mount is kept while nothing serves it"
    );
    // ... until a plugin runs again: it takes the connection from the keeper and starts a
    // successor, which answers the waiting read with the right bytes.
    driver.spawn();
    let mut node = driver.node().await;
    let rest = reader
        .join()
        .unwrap()
        .expect("the waiting read is answered");
    head.extend_from_slice(&rest);
    assert!(
        head == big,
        "the open file reads on with the object's bytes"
    );
    assert!(
        driver
            .log()
            .contains("a successor serves it on the connection its keeper held"),
        "{}",
        driver.log()
    );
    assert_eq!(
        keeper_pid(&target),
        Some(keeper),
        "the same keeper holds on"
    );
    std::fs::write(target.join("after.txt"), b"served again").unwrap();
    node.node_unpublish_volume(unpublish_req(&volume, &target))
        .await
        .unwrap();
    assert!(!is_mounted(&target));
    assert!(
        mount_pids(&target).is_empty(),
        "processes of the mount's user left"
    );
    keeper_gone_after_unpublish(keeper);
    assert_eq!(
        s3.store()
            .get_all(&format!("{prefix}after.txt"))
            .await
            .unwrap()
            .as_deref(),
        Some(&b"served again"[..])
    );
}

#[tokio::test]
async fn a_keeper_that_dies_while_the_plugin_runs_is_replaced_and_keeps_the_mount() {
    let (k, node) = publish_kept("rekept", 4 << 20).await;
    let Kept {
        big,
        mut driver,
        target,
        volume,
        keeper: first,
        ..
    } = k;
    // SAFETY: signalling the keeper the record names.
    unsafe { libc::kill(first as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(15);
    let second = loop {
        if let Some(k) = keeper_pid(&target)
            && k != first
            && !zombie_or_gone(k)
        {
            break k;
        }
        assert!(
            Instant::now() < deadline,
            "the keeper was not replaced: {}",
            driver.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let status = std::fs::read_to_string(format!("/proc/{second}/status")).unwrap();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u32>().ok());
    assert_eq!(
        uid,
        mount_uid(&target),
        "the new keeper runs as the mount's user"
    );
    // The new keeper does a keeper's work: the plugin dies, then the mount's process, and a
    // new plugin serves the mount again on the connection it held.
    drop(node);
    driver.kill();
    kill_the_mount_process(&target);
    driver.spawn();
    let mut node = driver.node().await;
    assert!(
        std::fs::read(target.join("big.bin")).unwrap() == big,
        "the mount serves the object's bytes again"
    );
    let log = driver.log();
    assert!(
        log.contains("a successor serves it on the connection its keeper held"),
        "{log}"
    );
    assert_eq!(keeper_pid(&target), Some(second), "the new keeper holds on");
    node.node_unpublish_volume(unpublish_req(&volume, &target))
        .await
        .unwrap();
    keeper_gone_after_unpublish(second);
}

#[tokio::test]
async fn a_keeper_holding_another_connection_is_refused_and_the_mount_fails_instead_of_hanging() {
    let (k, node) = publish_kept("wrongconn", 1 << 20).await;
    let Kept {
        mut driver,
        target,
        volume,
        keeper,
        ..
    } = k;
    let Some(connection) = recorded_connection(&target) else {
        // A kernel that does not name a descriptor's connection: nothing to check.
        return;
    };
    // While no plugin runs, the record and what the keeper holds disagree (as if the keeper
    // held a fresh /dev/fuse or another mount's connection), and the mount's process dies.
    drop(node);
    driver.kill();
    set_recorded_connection(&target, connection + 1);
    kill_the_mount_process(&target);
    driver.spawn();
    let mut node = driver.node().await;
    // The plugin does not start a successor on that descriptor; the mount's calls fail
    // (ENOTCONN) instead of waiting forever for a server that will not come.
    let path = target.join("big.bin");
    let reader = std::thread::spawn(move || std::fs::read(path));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() {
        assert!(
            Instant::now() < deadline,
            "a read of the lost mount still waits: {}",
            driver.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let e = reader.join().unwrap().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    let log = driver.log();
    assert!(log.contains("is not the mount's FUSE connection"), "{log}");
    assert!(
        !log.contains("a successor serves it on the connection its keeper held"),
        "{log}"
    );
    node.node_unpublish_volume(unpublish_req(&volume, &target))
        .await
        .unwrap();
    assert!(!is_mounted(&target));
    keeper_gone_after_unpublish(keeper);
}
