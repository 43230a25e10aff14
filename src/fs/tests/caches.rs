//! Unit tests of the caches across opens: the kernel's pages (kept while the object is
//! unchanged), directory listings (kept for the TTL, dropped by the mount's own changes),
//! and the local data cache (loaded once, shared, evicted least recently used, checksummed,
//! never served for another version of an object).

use std::time::Duration;

use super::*;
use crate::fs::readcache::{BLOCK, Version};

fn cached(dir: &std::path::Path, max: u64) -> FsConfig {
    FsConfig {
        read_cache: true,
        cache_dir: dir.to_path_buf(),
        max_cache_size: max,
        ..config()
    }
}

async fn read_via(fs: &Fs, ino: u64) -> (Vec<u8>, Opened) {
    let o = fs.open_with_cache(ino, OpenMode::default()).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(o.fh, out.len() as u64, 70_000).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(o.fh).await.unwrap();
    (out, o)
}

/// Wait until `f` holds (a background load), at most 10 s.
async fn until(f: impl Fn() -> bool) {
    for _ in 0..1000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out");
}

#[tokio::test]
async fn the_kernel_keeps_a_files_pages_until_the_object_changes() {
    let store = memory();
    put(store.as_ref(), "f", b"one").await;
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: Duration::ZERO,
            ..config()
        },
    );
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let first = fs
        .open_with_cache(a.ino, OpenMode::default())
        .await
        .unwrap();
    assert!(!first.keep_cache, "nothing read yet");
    let again = fs
        .open_with_cache(a.ino, OpenMode::default())
        .await
        .unwrap();
    assert!(again.keep_cache, "unchanged since the last open");
    put(store.as_ref(), "f", b"two!").await;
    let changed = fs
        .open_with_cache(a.ino, OpenMode::default())
        .await
        .unwrap();
    assert!(
        !changed.keep_cache,
        "the object changed: the kernel drops its pages"
    );
    // Written through this mount: not kept either.
    let w = fs.open(a.ino, rw()).await.unwrap();
    fs.release(w).await.unwrap();
    let after_write = fs
        .open_with_cache(a.ino, OpenMode::default())
        .await
        .unwrap();
    assert!(!after_write.keep_cache);
}

#[tokio::test]
async fn only_the_first_open_of_a_large_object_reads_past_the_page_cache() {
    let store = memory();
    let big: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
    put(store.as_ref(), "big", &big).await;
    put(store.as_ref(), "small", b"tiny").await;
    let mut cfg = config();
    cfg.metadata_ttl = Duration::ZERO;
    cfg.read.direct_first_read = 4096;
    let fs = Fs::new(store.clone(), cfg);
    let b = fs.lookup(ROOT_INO, "big").await.unwrap();
    let (bytes, first) = read_via(&fs, b.ino).await;
    assert_eq!(bytes, big, "read past the page cache, the same bytes");
    assert!(
        first.direct && !first.keep_cache,
        "first open of a large object"
    );
    let (bytes, again) = read_via(&fs, b.ino).await;
    assert_eq!(bytes, big);
    assert!(
        !again.direct && again.keep_cache,
        "the next open: page cache"
    );
    let s = fs.lookup(ROOT_INO, "small").await.unwrap();
    assert!(!read_via(&fs, s.ino).await.1.direct, "below the size");
    // Another version of the object is a first read again.
    let changed: Vec<u8> = big.iter().rev().copied().collect();
    put(store.as_ref(), "big", &changed).await;
    let (bytes, third) = read_via(&fs, b.ino).await;
    assert_eq!(bytes, changed);
    assert!(third.direct);
    // A write handle never is.
    let w = fs.open_with_cache(b.ino, rw()).await.unwrap();
    assert!(!w.direct);
    fs.release(w.fh).await.unwrap();
    // Off (the default): never.
    let off = Fs::new(store.clone(), config());
    let b = off.lookup(ROOT_INO, "big").await.unwrap();
    assert!(!read_via(&off, b.ino).await.1.direct);
}

#[tokio::test]
async fn listings_are_kept_for_the_ttl_and_the_mounts_changes_show_at_once() {
    let store = memory();
    for i in 0..5 {
        put(store.as_ref(), &format!("d/f{i}"), b"x").await;
    }
    let fs = fs_over(store.clone());
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    assert_eq!(names(&fs, d.ino).await.len(), 7);
    assert_eq!(names(&fs, d.ino).await.len(), 7);
    assert_eq!(
        store.count(Op::List),
        2,
        "the second listing came from memory"
    );
    // The mount's own change: listed again at once.
    write_file(&fs, d.ino, "new", b"n").await;
    fs.unlink(d.ino, "f0").await.unwrap();
    let n = names(&fs, d.ino).await;
    assert!(
        n.contains(&"new".to_string()) && !n.contains(&"f0".to_string()),
        "{n:?}"
    );
    // Another client's change: shown once the TTL expired.
    let short = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: Duration::from_millis(200),
            ..config()
        },
    );
    let d = short.lookup(ROOT_INO, "d").await.unwrap();
    let before = names(&short, d.ino).await;
    put(store.as_ref(), "d/late", b"l").await;
    assert_eq!(names(&short, d.ino).await, before, "within the TTL");
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(names(&short, d.ino).await.contains(&"late".to_string()));
}

#[tokio::test]
async fn a_second_read_comes_from_the_disk_cache_and_a_new_version_never_does() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory();
    let body = data(3 * BLOCK as usize + 1234);
    put(store.as_ref(), "big", &body).await;
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: Duration::ZERO,
            ..cached(dir.path(), 64 << 20)
        },
    );
    let a = fs.lookup(ROOT_INO, "big").await.unwrap();
    let (got, first) = read_via(&fs, a.ino).await;
    assert_eq!(got, body);
    assert!(first.backing.is_none(), "not verified yet");
    let gets = store.count(Op::Get);
    until(|| {
        fs.read_cache
            .as_ref()
            .unwrap()
            .peek(&Version {
                key: "big".into(),
                etag: fs.inode(a.ino).unwrap().stat.etag.unwrap(),
                size: body.len() as u64,
            })
            .is_some_and(|e| e.is_verified())
    })
    .await;
    let (again, second) = read_via(&fs, a.ino).await;
    assert_eq!(again, body);
    assert_eq!(
        store.count(Op::Get),
        gets,
        "no GET: served from the disk cache"
    );
    assert!(fs.read_cache_hits() > 0);
    let backing = second
        .backing
        .expect("a verified local copy for passthrough");
    let mut local = Vec::new();
    use std::io::Read;
    backing.file().read_to_end(&mut local).unwrap();
    assert_eq!(local, body);
    // Another client replaces the object: the next open reads the new version.
    let new_body = data(5000);
    put(store.as_ref(), "big", &new_body).await;
    let (fresh, o) = read_via(&fs, a.ino).await;
    assert_eq!(fresh, new_body);
    assert!(o.backing.is_none());
}

#[tokio::test]
async fn a_damaged_block_is_read_from_the_store_and_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory();
    let body = data(2 * BLOCK as usize);
    put(store.as_ref(), "f", &body).await;
    let fs = Fs::new(store.clone(), cached(dir.path(), 64 << 20));
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(read_via(&fs, a.ino).await.0, body);
    let rc = fs.read_cache.clone().unwrap();
    let version = Version {
        key: "f".into(),
        etag: fs.inode(a.ino).unwrap().stat.etag.unwrap(),
        size: body.len() as u64,
    };
    // Damage it only once the load's own verification pass is over.
    until(|| {
        rc.peek(&version)
            .is_some_and(|e| e.is_verified() && e.is_settled())
    })
    .await;
    rc.corrupt(&version, 1);
    let gets = store.count(Op::Get);
    let (got, o) = read_via(&fs, a.ino).await;
    assert!(got == body, "the damaged block came from the store");
    assert!(
        o.backing.is_none(),
        "a damaged copy is never handed to the kernel"
    );
    assert!(store.count(Op::Get) > gets);
}

#[tokio::test]
async fn the_data_cache_stays_within_its_space_and_staging_takes_precedence() {
    let dir = tempfile::tempdir().unwrap();
    let store = memory();
    let size = 2 * BLOCK as usize;
    for i in 0..4 {
        put(store.as_ref(), &format!("f{i}"), &data(size)).await;
    }
    // Room for two objects.
    let fs = Fs::new(store.clone(), cached(dir.path(), 5 * BLOCK));
    for i in 0..4 {
        let a = fs.lookup(ROOT_INO, &format!("f{i}")).await.unwrap();
        assert_eq!(read_via(&fs, a.ino).await.0, data(size));
        assert!(fs.cache_used() <= 5 * BLOCK, "{}", fs.cache_used());
    }
    // The last one was cached: older ones gave way for it.
    let last = fs.lookup(ROOT_INO, "f3").await.unwrap();
    let rc = fs.read_cache.clone().unwrap();
    let version = Version {
        key: "f3".into(),
        etag: fs.inode(last.ino).unwrap().stat.etag.unwrap(),
        size: size as u64,
    };
    until(|| rc.peek(&version).is_some_and(|e| e.is_verified())).await;
    let gets = store.count(Op::Get);
    assert_eq!(read_via(&fs, last.ino).await.0, data(size));
    assert_eq!(store.count(Op::Get), gets, "f3 came from the disk cache");
    // A staged edit needs the room: cached objects give way, the edit does not fail.
    let a = fs.lookup(ROOT_INO, "f0").await.unwrap();
    let fh = fs.open(a.ino, rw()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"edit")).await.unwrap();
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    assert!(fs.cache_used() <= 5 * BLOCK);
}

/// Bytes and block sums of a copy.
type Copy = (Vec<u8>, Vec<u32>);

/// The node's copies, as a test keeps them: in memory, files copied in.
#[derive(Default)]
struct Node {
    copies: Mutex<HashMap<Version, Copy>>,
    /// Copies are another identity's: a proof is asked first.
    revalidate: std::sync::atomic::AtomicBool,
    /// Copies come read back and checked by the node.
    verified: std::sync::atomic::AtomicBool,
    /// Proofs given, and how many matched.
    proofs: std::sync::atomic::AtomicUsize,
    proven: std::sync::atomic::AtomicUsize,
}

impl crate::fs::SharedCopies for Node {
    fn get(
        &self,
        v: &Version,
        answer: Option<(&crate::fs::NodeChallenge, &[u8])>,
    ) -> crate::fs::NodeLookup {
        use crate::fs::NodeLookup;
        let Some((data, sums)) = lock(&self.copies).get(v).cloned() else {
            return NodeLookup::Miss;
        };
        if self.revalidate.load(Ordering::Relaxed) {
            let range = v.size / 3..(v.size / 3 + 4096).min(v.size);
            let Some((challenge, bytes)) = answer else {
                return NodeLookup::Prove(crate::fs::NodeChallenge {
                    range,
                    nonce: "n".into(),
                });
            };
            self.proofs.fetch_add(1, Ordering::Relaxed);
            if challenge.range != range || bytes != &data[range.start as usize..range.end as usize]
            {
                return NodeLookup::Miss;
            }
            self.proven.fetch_add(1, Ordering::Relaxed);
        }
        let mut file = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut file, &data).unwrap();
        NodeLookup::Copy(crate::fs::SharedCopy {
            file,
            sums,
            verified: self.verified.load(Ordering::Relaxed),
        })
    }

    fn offer(&self, v: &Version, file: &std::fs::File, sums: &[u32]) {
        use std::os::unix::fs::FileExt;
        let mut data = vec![0u8; v.size as usize];
        file.read_exact_at(&mut data, 0).unwrap();
        lock(&self.copies).insert(v.clone(), (data, sums.to_vec()));
    }
}

#[tokio::test]
async fn a_new_mount_reads_what_another_loaded_from_the_nodes_copy_and_revalidates_anothers() {
    let store = memory();
    let body = data(3 * BLOCK as usize + 17);
    put(store.as_ref(), "f", &body).await;
    let node = Arc::new(Node::default());
    let mount = |dir: &std::path::Path| {
        Fs::new(
            store.clone(),
            FsConfig {
                shared_copies: Some(crate::fs::SharedCopiesRef(node.clone())),
                ..cached(dir, 64 << 20)
            },
        )
    };
    let d1 = tempfile::tempdir().unwrap();
    let first = mount(d1.path());
    let a = first.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(read_via(&first, a.ino).await.0, body);
    until(|| !lock(&node.copies).is_empty()).await;
    drop(first);
    // The next mount (a pod restarted): no GET of the object.
    let d2 = tempfile::tempdir().unwrap();
    let second = mount(d2.path());
    let a = second.lookup(ROOT_INO, "f").await.unwrap();
    let gets = store.count(Op::Get);
    let (got, _) = read_via(&second, a.ino).await;
    assert!(got == body);
    assert_eq!(store.count(Op::Get), gets, "read from the node's copy");
    // A copy another identity stored: this mount proves it may read the object with a
    // ranged GET of the bytes the node asks for, then reads the copy.
    node.revalidate.store(true, Ordering::Relaxed);
    let d3 = tempfile::tempdir().unwrap();
    let third = mount(d3.path());
    let a = third.lookup(ROOT_INO, "f").await.unwrap();
    let gets = store.count(Op::Get);
    assert!(read_via(&third, a.ino).await.0 == body);
    assert_eq!(
        node.proven.load(Ordering::Relaxed),
        1,
        "proved with its own GET"
    );
    assert_eq!(store.count(Op::Get), gets + 1, "one GET: the proof's range");
    // A copy whose blocks do not match their sums is read from the store instead.
    let version = lock(&node.copies).keys().next().cloned().unwrap();
    lock(&node.copies).get_mut(&version).unwrap().0[BLOCK as usize + 3] ^= 0xff;
    node.revalidate.store(false, Ordering::Relaxed);
    let d4 = tempfile::tempdir().unwrap();
    let fourth = mount(d4.path());
    let a = fourth.lookup(ROOT_INO, "f").await.unwrap();
    let gets = store.count(Op::Get);
    assert!(
        read_via(&fourth, a.ino).await.0 == body,
        "the damaged block came from the store"
    );
    assert!(store.count(Op::Get) > gets);
}

#[tokio::test]
async fn a_copy_another_identity_stored_is_served_only_while_the_store_confirms_its_version() {
    let store = memory();
    let body = data(BLOCK as usize);
    put(store.as_ref(), "f", &body).await;
    let node = Arc::new(Node {
        revalidate: true.into(),
        ..Node::default()
    });
    let d = tempfile::tempdir().unwrap();
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            shared_copies: Some(crate::fs::SharedCopiesRef(node.clone())),
            ..cached(d.path(), 64 << 20)
        },
    );
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let v = Version {
        key: "f".into(),
        etag: fs.inode(a.ino).unwrap().stat.etag.unwrap(),
        size: body.len() as u64,
    };
    let sums = vec![crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, &body) as u32];
    lock(&node.copies).insert(v.clone(), (body.clone(), sums));
    let rc = fs.read_cache.clone().unwrap();
    assert!(
        rc.entry(v.clone()).await.unwrap().is_from_node(),
        "the store confirms it"
    );
    assert_eq!(node.proven.load(Ordering::Relaxed), 1);
    // The object changed in the store since (same size): the mount cannot fetch the asked
    // bytes of that version, so the node's copy of it is not given.
    rc.evict(u64::MAX);
    let mut other = body.clone();
    other[0] ^= 1;
    put(store.as_ref(), "f", &other).await;
    let e = rc.entry(v.clone()).await.unwrap();
    assert!(
        !e.is_from_node(),
        "served a version the store no longer confirms"
    );
    assert_eq!(node.proven.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn a_copy_the_node_checked_is_read_directly_from_the_first_open_and_another_is_checked_first()
{
    let store = memory();
    let body = data(2 * BLOCK as usize + 5);
    put(store.as_ref(), "f", &body).await;
    let node = Arc::new(Node::default());
    let d = tempfile::tempdir().unwrap();
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            shared_copies: Some(crate::fs::SharedCopiesRef(node.clone())),
            ..cached(d.path(), 64 << 20)
        },
    );
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let v = Version {
        key: "f".into(),
        etag: fs.inode(a.ino).unwrap().stat.etag.unwrap(),
        size: body.len() as u64,
    };
    let sums: Vec<u32> = body
        .chunks(BLOCK as usize)
        .map(|c| crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32Iscsi, c) as u32)
        .collect();
    lock(&node.copies).insert(v.clone(), (body.clone(), sums));
    let rc = fs.read_cache.clone().unwrap();
    // Not checked by the node: the mount verifies it before the kernel may read it.
    let e = rc.entry(v.clone()).await.unwrap();
    assert!(e.is_from_node());
    until(|| e.is_settled()).await;
    assert!(e.is_verified());
    // Checked by the node: usable for passthrough at once, no pass of its own.
    rc.evict(u64::MAX);
    drop(e);
    node.verified.store(true, Ordering::Relaxed);
    let e = rc.entry(v.clone()).await.unwrap();
    assert!(e.is_from_node() && e.is_verified() && e.is_settled());
    let read = OpenMode {
        read: true,
        ..Default::default()
    };
    let o = fs.open_with_cache(a.ino, read).await.unwrap();
    assert!(
        o.backing.is_some_and(|b| Arc::ptr_eq(&b, &e)),
        "the first open may be read directly"
    );
    assert!(fs.read(o.fh, 0, 10).await.unwrap() == body[..10]);
    fs.release(o.fh).await.unwrap();
}
