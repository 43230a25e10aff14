//! The caches across opens on real FUSE against SeaweedFS, with a proxy counting what goes
//! to the store: a second read comes from the kernel's page cache or the local data cache
//! (FUSE passthrough here: the tests run as root on Linux >= 6.9), a listing is kept for the
//! metadata TTL, and once the TTL expired a changed object or directory is never served
//! from any of them.

mod common;

use std::fs;
use std::time::Duration;

use common::proxy::Proxy;
use common::*;

fn mount_via(proxy: &Proxy, s3: &S3, prefix: &str, extra: &[&str]) -> Mount {
    let mut args = vec!["--endpoint-url".to_string(), proxy.endpoint.clone()];
    args.extend(extra.iter().map(|s| s.to_string()));
    mount(&s3.url(prefix), &args, &s3.env())
}

fn put(s3: &S3, key: &str, data: Vec<u8>) {
    block_on(
        s3.store()
            .put(key, Payload::from(data), &PutOptions::default()),
    )
    .unwrap();
}

/// Tests here drop the kernel's page cache, system-wide, while another checks reads from
/// it: one at a time (threads of `cargo test`; nextest runs them in one group,
/// .config/nextest.toml).
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
    TURN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drop the kernel's clean pages, so a read must come from the mount's own caches.
fn drop_page_cache() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "1").unwrap();
}

#[test]
fn a_second_read_comes_from_the_page_cache_until_the_object_changes() {
    let _turn = one_at_a_time();
    let s3 = s3();
    let prefix = unique("pagecache");
    let body = data(3 << 20, 11);
    put(&s3, &format!("{prefix}f"), body.clone());
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(&proxy, &s3, &prefix, &["--metadata-ttl", "1"]);
    let mut first = fs::File::open(m.join("f")).unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut first, &mut got).unwrap();
    assert_eq!(got, body);
    let allowed = refetch_allowed(&first);
    drop(first); // an open handle would lend its reader's parts to the next read
    proxy.take_traffic();
    assert_eq!(fs::read(m.join("f")).unwrap(), body);
    let (_, received) = proxy.take_traffic();
    assert!(received < allowed, "{received} bytes fetched again");
    // Another client replaces it: once the TTL expired the new bytes are read, never the
    // kept pages.
    let new = data(1 << 20, 12);
    put(&s3, &format!("{prefix}f"), new.clone());
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(fs::read(m.join("f")).unwrap(), new);
}

#[test]
fn with_direct_first_read_a_large_objects_first_read_skips_the_page_cache() {
    let _turn = one_at_a_time();
    let s3 = s3();
    let prefix = unique("directfirst");
    let (big, other, small) = (data(3 << 20, 21), data(3 << 20, 22), data(1 << 20, 23));
    put(&s3, &format!("{prefix}big"), big.clone());
    put(&s3, &format!("{prefix}other"), other.clone());
    put(&s3, &format!("{prefix}small"), small.clone());
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(&proxy, &s3, &prefix, &["--direct-first-read", "2M"]);
    // Read with odd sizes: replies go straight into the reader's buffer.
    let mut got = Vec::new();
    let mut f = fs::File::open(m.join("big")).unwrap();
    let mut buf = vec![0u8; 100_003];
    loop {
        let n = std::io::Read::read(&mut f, &mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    drop(f);
    assert!(got == big, "the first read returned other bytes");
    assert_eq!(resident(&m.join("big")), 0, "read past the page cache");
    // The next open reads through the page cache, which then holds it.
    let mut second = fs::File::open(m.join("big")).unwrap();
    got.clear();
    std::io::Read::read_to_end(&mut second, &mut got).unwrap();
    assert!(got == big, "the second read returned other bytes");
    assert!(
        resident(&m.join("big")) >= 700,
        "the second read stayed in the page cache"
    );
    let allowed = refetch_allowed(&second);
    drop(second);
    proxy.take_traffic();
    assert!(fs::read(m.join("big")).unwrap() == big);
    let (_, received) = proxy.take_traffic();
    assert!(
        received < allowed,
        "{received} bytes fetched for a third read"
    );
    // A file opened past the page cache can still be mapped shared (kernel 6.6+).
    let f = fs::File::open(m.join("other")).unwrap();
    let mapped = with_shared_map(&f, other.len(), |m| m.to_vec());
    assert!(mapped == other, "the mapping shows other bytes");
    // Below the size: the page cache from the first read.
    assert!(fs::read(m.join("small")).unwrap() == small);
    assert!(resident(&m.join("small")) >= 200);
}

#[test]
fn the_disk_cache_serves_a_second_read_and_never_an_old_version() {
    let _turn = one_at_a_time();
    let s3 = s3();
    let prefix = unique("diskcache");
    let body = data(5 << 20, 21);
    put(&s3, &format!("{prefix}model.bin"), body.clone());
    let proxy = Proxy::start(&s3.endpoint);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().display().to_string();
    let m = mount_via(
        &proxy,
        &s3,
        &prefix,
        &[
            "--read-cache",
            "--cache-dir",
            &dir,
            "--metadata-ttl",
            "1",
            "--debug",
        ],
    );
    assert_eq!(fs::read(m.join("model.bin")).unwrap(), body);
    // Loaded and verified in the background; then the kernel reads the local copy directly
    // (passthrough: the tests run as root), needing neither its pages nor the store.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !m
        .log_text()
        .contains("passthrough: the kernel reads this file")
    {
        assert!(std::time::Instant::now() < deadline, "no passthrough");
        drop(fs::File::open(m.join("model.bin")).unwrap());
        std::thread::sleep(Duration::from_millis(100));
    }
    proxy.take_traffic();
    for _ in 0..3 {
        drop_page_cache();
        assert_eq!(fs::read(m.join("model.bin")).unwrap(), body);
    }
    let (_, received) = proxy.take_traffic();
    assert!(received < 64 << 10, "{received} bytes fetched again");
    // Random small reads of the cached file.
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(m.join("model.bin")).unwrap();
    let mut buf = [0u8; 4096];
    for off in [0u64, 4 << 20, 12345, (5 << 20) - 4096] {
        f.read_exact_at(&mut buf, off).unwrap();
        assert_eq!(&buf[..], &body[off as usize..off as usize + 4096]);
    }
    // While the kernel reads it directly it takes no other kind of open: a writer gets
    // ETXTBSY (never a write into the local copy); once the readers are gone it may write.
    let busy = fs::OpenOptions::new()
        .append(true)
        .open(m.join("model.bin"))
        .unwrap_err();
    assert_eq!(busy.raw_os_error(), Some(libc::ETXTBSY), "{busy}");
    drop(f);
    {
        use std::io::Write;
        let mut w = fs::OpenOptions::new()
            .append(true)
            .open(m.join("model.bin"))
            .unwrap();
        w.write_all(b"tail").unwrap();
    }
    let mut edited = body.clone();
    edited.extend_from_slice(b"tail");
    assert_eq!(fs::read(m.join("model.bin")).unwrap(), edited);
    // A new version by another client: after the TTL it is what the mount shows.
    let new = data(2 << 20, 22);
    put(&s3, &format!("{prefix}model.bin"), new.clone());
    std::thread::sleep(Duration::from_millis(1100));
    drop_page_cache();
    assert_eq!(fs::read(m.join("model.bin")).unwrap(), new);
    assert!(m.log_text().contains("mounted"));
}

#[test]
fn listings_are_kept_for_the_ttl_and_then_show_what_changed() {
    let _turn = one_at_a_time();
    let s3 = s3();
    let prefix = unique("listcache");
    for i in 0..50 {
        put(&s3, &format!("{prefix}d/f{i:02}"), vec![1]);
    }
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(&proxy, &s3, &prefix, &["--metadata-ttl", "2"]);
    let names = |m: &Mount| {
        let mut v: Vec<String> = fs::read_dir(m.join("d"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(&m).len(), 50);
    let hits = proxy.signers().len();
    assert_eq!(names(&m).len(), 50);
    assert_eq!(proxy.signers().len(), hits, "listed again from memory");
    // The mount's own change shows at once; another client's once the TTL expired.
    fs::write(m.join("d/mine"), b"x").unwrap();
    fs::remove_file(m.join("d/f00")).unwrap();
    let now = names(&m);
    assert!(now.contains(&"mine".to_string()) && !now.contains(&"f00".to_string()));
    block_on(s3.store().delete(&format!("{prefix}d/f01"))).unwrap();
    put(&s3, &format!("{prefix}d/theirs"), vec![2]);
    std::thread::sleep(Duration::from_millis(2100));
    let later = names(&m);
    assert!(later.contains(&"theirs".to_string()), "{later:?}");
    assert!(!later.contains(&"f01".to_string()), "{later:?}");
}

// Each #[tokio::test] runs on its own thread and runtime: the std lock only orders tests.
#[allow(clippy::await_holding_lock)]
#[tokio::test]
async fn a_csi_volume_with_read_cache_reads_a_file_once_from_the_store() {
    let _turn = one_at_a_time();
    use common::csi::{Driver, publish_req, static_context, unpublish_req};
    let s3 = s3();
    let prefix = unique("csi-cache");
    let body = data(3 << 20, 31);
    let key = format!("{prefix}weights.bin");
    s3.store()
        .put(&key, Payload::from(body.clone()), &PutOptions::default())
        .await
        .unwrap();
    let proxy = Proxy::start(&s3.endpoint);
    let driver = Driver::start();
    let mut node = driver.node().await;
    let target = driver.target("cache-pod");
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("endpointUrl".into(), proxy.endpoint.clone());
    ctx.insert("mountOptions".into(), "read-cache,metadata-ttl=60".into());
    node.node_publish_volume(publish_req(&s3, "cache-vol", &target, ctx))
        .await
        .unwrap();
    let file = target.join("weights.bin");
    let read = move || std::fs::read(&file).unwrap();
    assert_eq!(
        tokio::task::spawn_blocking(read.clone()).await.unwrap(),
        body
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.take_traffic();
    for _ in 0..2 {
        tokio::task::spawn_blocking(drop_page_cache).await.unwrap();
        assert_eq!(
            tokio::task::spawn_blocking(read.clone()).await.unwrap(),
            body
        );
    }
    let (_, received) = proxy.take_traffic();
    assert!(received < 64 << 10, "{received} bytes fetched again");
    node.node_unpublish_volume(unpublish_req("cache-vol", &target))
        .await
        .unwrap();
}
