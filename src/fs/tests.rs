//! Unit tests of the file-system core against the in-memory store (no kernel, no network).

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::store::{Bucket, MemoryBucket, Op, Payload, PutOptions};

fn config() -> FsConfig {
    FsConfig {
        metadata_ttl: Duration::from_secs(60),
        read: ReadConfig {
            part_size: 1024,
            initial_window: 256,
            max_window: 4096,
            direct_first_read: 0,
        },
        write: WriteConfig {
            part_size: 1000,
            max_in_flight: 2,
        },
        ..FsConfig::default()
    }
}

/// A new file, O_EXCL, created by process 7.
fn excl() -> CreateMode {
    CreateMode {
        exclusive: true,
        pid: 7,
        ..Default::default()
    }
}

/// An existing file opened O_WRONLY|O_TRUNC by process 7.
fn trunc() -> OpenMode {
    OpenMode {
        write: true,
        truncate: true,
        pid: 7,
        ..Default::default()
    }
}

/// An existing file opened O_RDWR by process 7.
fn rw() -> OpenMode {
    OpenMode {
        write: true,
        read: true,
        pid: 7,
        ..Default::default()
    }
}

/// An existing file opened O_WRONLY|O_APPEND by process 7.
fn append() -> OpenMode {
    OpenMode {
        write: true,
        append: true,
        pid: 7,
        ..Default::default()
    }
}

/// Set the size.
fn size(n: u64) -> SetAttr {
    SetAttr {
        size: Some(n),
        ..Default::default()
    }
}

/// An empty in-memory bucket.
fn memory() -> Arc<MemoryBucket> {
    Arc::new(MemoryBucket::new())
}

fn fs_over(store: SharedBucket) -> Fs {
    Fs::new(store, config())
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

async fn put(store: &dyn Bucket, key: &str, bytes: &[u8]) {
    store
        .put(key, Payload::from(bytes.to_vec()), &PutOptions::default())
        .await
        .unwrap();
}

async fn write_file(fs: &Fs, parent: u64, name: &str, bytes: &[u8]) -> Attr {
    let (attr, fh) = fs.create(parent, name, excl()).await.unwrap();
    for (i, chunk) in bytes.chunks(300).enumerate() {
        fs.write(fh, (i * 300) as u64, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    attr
}

async fn read_all(fs: &Fs, ino: u64) -> Vec<u8> {
    let fh = fs.open(ino, OpenMode::default()).await.unwrap();
    let mut out = Vec::new();
    loop {
        let chunk = fs.read(fh, out.len() as u64, 333).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    fs.release(fh).await.unwrap();
    out
}

async fn names(fs: &Fs, ino: u64) -> Vec<String> {
    let fh = fs.opendir(ino).await.unwrap();
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let batch = fs.readdir(ino, fh, offset, 100).await.unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        out.extend(batch.into_iter().map(|e| e.name));
    }
    fs.release(fh).await.unwrap();
    out
}

#[tokio::test]
async fn missing_names_are_enoent_and_cached_as_absent() {
    let fs = fs_over(memory());
    let e = fs.lookup(ROOT_INO, "nope").await.unwrap_err();
    assert_eq!(e.errno, libc::ENOENT);
    fs.lookup(ROOT_INO, "nope").await.unwrap_err();
    assert_eq!(fs.counters.remote_lookups.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn objects_are_files_and_prefixes_are_directories() {
    let store = memory();
    put(store.as_ref(), "a.txt", b"hello").await;
    put(store.as_ref(), "dir/b.txt", b"bee").await;
    put(store.as_ref(), "dir/sub/c.txt", b"sea").await;
    let fs = fs_over(store);
    let a = fs.lookup(ROOT_INO, "a.txt").await.unwrap();
    assert_eq!((a.kind, a.size, a.perm), (Kind::File, 5, 0o644));
    let d = fs.lookup(ROOT_INO, "dir").await.unwrap();
    assert_eq!((d.kind, d.perm), (Kind::Dir, 0o755));
    assert_eq!(names(&fs, d.ino).await, [".", "..", "b.txt", "sub"]);
    assert_eq!(read_all(&fs, a.ino).await, b"hello");
}

#[tokio::test]
async fn a_file_shadows_a_directory_of_the_same_name() {
    let store = memory();
    put(store.as_ref(), "x", b"file").await;
    put(store.as_ref(), "x/inner", b"in").await;
    let fs = fs_over(store);
    let x = fs.lookup(ROOT_INO, "x").await.unwrap();
    assert_eq!((x.kind, x.size), (Kind::File, 4));
    assert_eq!(names(&fs, ROOT_INO).await, [".", "..", "x"]);
    assert_eq!(fs.counters.remote_lookups.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn the_mount_prefix_is_the_root() {
    let store = memory();
    put(store.as_ref(), "p/q/in.txt", b"in").await;
    put(store.as_ref(), "out.txt", b"out").await;
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            prefix: "p/q/".into(),
            ..config()
        },
    );
    assert_eq!(names(&fs, ROOT_INO).await, [".", "..", "in.txt"]);
    write_file(&fs, ROOT_INO, "new.txt", b"n").await;
    assert!(store.head("p/q/new.txt").await.unwrap().is_some());
}

#[tokio::test]
async fn written_files_become_objects_at_close() {
    let store = memory();
    let fs = fs_over(store.clone());
    let bytes = data(5555); // several 1000-byte parts: a multipart upload
    let (attr, fh) = fs.create(ROOT_INO, "f.bin", excl()).await.unwrap();
    for (i, chunk) in bytes.chunks(700).enumerate() {
        fs.write(fh, (i * 700) as u64, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    assert!(
        store.head("f.bin").await.unwrap().is_none(),
        "visible before close"
    );
    assert_eq!(fs.getattr(attr.ino).await.unwrap().size, 5555);
    assert!(names(&fs, ROOT_INO).await.contains(&"f.bin".to_string()));
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    let info = store.head("f.bin").await.unwrap().unwrap();
    assert_eq!(info.size, 5555);
    let fresh = fs_over(store);
    let a = fresh.lookup(ROOT_INO, "f.bin").await.unwrap();
    assert_eq!(read_all(&fresh, a.ino).await, bytes);
}

#[tokio::test]
async fn small_and_empty_files_are_single_puts() {
    let store = memory();
    let fs = fs_over(store.clone());
    write_file(&fs, ROOT_INO, "small", b"abc").await;
    let (_, fh) = fs.create(ROOT_INO, "empty", excl()).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.head("small").await.unwrap().unwrap().size, 3);
    assert_eq!(store.head("empty").await.unwrap().unwrap().size, 0);
}

#[tokio::test]
async fn overwrite_with_o_trunc_replaces_the_object() {
    let store = memory();
    put(store.as_ref(), "f", b"old contents").await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let fh = fs.open(a.ino, trunc()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"new")).await.unwrap();
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fs.getattr(a.ino).await.unwrap().size, 3);
    assert_eq!(read_all(&fs, a.ino).await, b"new");
}

#[tokio::test]
async fn exclusive_create_of_an_existing_file_is_eexist() {
    let store = memory();
    put(store.as_ref(), "f", b"x").await;
    let fs = fs_over(store);
    let e = fs
        .create(
            ROOT_INO,
            "f",
            CreateMode {
                exclusive: true,
                pid: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
}

#[tokio::test]
async fn a_read_across_two_parts_is_answered_from_both_without_joining_them() {
    let store = memory();
    let bytes = data(8_000);
    put(store.as_ref(), "big", &bytes).await;
    let fs = fs_over(store);
    let a = fs.lookup(ROOT_INO, "big").await.unwrap();
    let fh = fs.open(a.ino, OpenMode::default()).await.unwrap();
    // Parts are 1024 bytes once the window opens: read on until a read straddles two.
    let mut off = 0u64;
    let mut straddled = false;
    while off < 8_000 {
        let got = fs.read_parts(fh, off, 700).await.unwrap();
        let end = (off + 700).min(8_000);
        assert_eq!(
            got.to_bytes(),
            &bytes[off as usize..end as usize],
            "at {off}"
        );
        if got.chunks().len() > 1 {
            straddled = true;
            assert_eq!(got.len(), end - off);
        }
        off = end;
    }
    assert!(
        straddled,
        "some read crossed a part boundary and kept both pieces"
    );
}

#[tokio::test]
async fn sequential_reads_prefetch_in_parts_and_random_reads_fetch_only_the_range() {
    let store = memory();
    let bytes = data(20_000);
    put(store.as_ref(), "big", &bytes).await;
    let fs = fs_over(store);
    let a = fs.lookup(ROOT_INO, "big").await.unwrap();
    assert_eq!(read_all(&fs, a.ino).await, bytes);

    let fh = fs.open(a.ino, OpenMode::default()).await.unwrap();
    let got = fs.read(fh, 12_345, 100).await.unwrap();
    assert_eq!(&got[..], &bytes[12_345..12_445]);
    let got = fs.read(fh, 3, 10).await.unwrap();
    assert_eq!(&got[..], &bytes[3..13]);
    let h = fs.handle(fh).unwrap();
    if let Handle::Read(r) = &*h.lock().await {
        assert_eq!(r.requests(), 2, "each random read is one exact GET");
    } else {
        panic!("not a read handle");
    }
    // Past the end: empty.
    assert!(fs.read(fh, 30_000, 10).await.unwrap().is_empty());
}

#[tokio::test]
async fn slightly_out_of_order_reads_are_served_from_the_prefetched_parts() {
    let store = memory();
    let bytes = data(10_000);
    put(store.as_ref(), "f", &bytes).await;
    let fs = fs_over(store);
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let fh = fs.open(a.ino, OpenMode::default()).await.unwrap();
    for (off, len) in [
        (0u64, 100u32),
        (200, 100),
        (100, 100),
        (300, 500),
        (900, 100),
        (800, 100),
    ] {
        let got = fs.read(fh, off, len).await.unwrap();
        assert_eq!(
            &got[..],
            &bytes[off as usize..(off as usize + len as usize)],
            "at {off}"
        );
    }
    let h = fs.handle(fh).unwrap();
    if let Handle::Read(r) = &*h.lock().await {
        assert!(
            r.requests() <= 6,
            "{} requests: reordering must not refetch",
            r.requests()
        );
    };
}

#[tokio::test]
async fn a_storm_of_lookups_in_one_directory_lists_it_once_instead_of_a_head_per_name() {
    let store = memory();
    for i in 0..200 {
        put(store.as_ref(), &format!("d/f{i:03}"), &data(i + 1)).await;
    }
    let fs = fs_over(store.clone());
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let (heads, lists) = (store.count(Op::Head), store.count(Op::List));
    for i in 0..200 {
        let a = fs.lookup(d.ino, &format!("f{i:03}")).await.unwrap();
        assert_eq!(a.size, i as u64 + 1);
    }
    let heads = store.count(Op::Head) - heads;
    let lists = store.count(Op::List) - lists;
    assert!(heads <= 32, "{heads} HEADs for 200 lookups");
    assert!(lists <= 2, "{lists} listings");
    // A name the listing does not have is still asked of the store.
    put(store.as_ref(), "d/later", b"x").await;
    assert_eq!(fs.lookup(d.ino, "later").await.unwrap().size, 1);
    assert!(fs.lookup(d.ino, "absent").await.is_err());
    // With object metadata kept, lookups stay HEADs (a listing has none).
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            persist_metadata: true,
            ..config()
        },
    );
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let lists = store.count(Op::List);
    for i in 0..100 {
        fs.lookup(d.ino, &format!("f{i:03}")).await.unwrap();
    }
    assert_eq!(store.count(Op::List), lists);
}

#[tokio::test]
async fn handles_of_one_file_open_at_once_share_its_readers_and_fetch_it_once() {
    let store = memory();
    let bytes = data(40_000);
    put(store.as_ref(), "f", &bytes).await;
    // Two handles (two pods' binds of one mount) reading it together: the kernel's page
    // cache is one for both, so it asks pail for each page once, of whichever handle read
    // it first — here, the chunks alternately.
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let (h1, h2) = (
        fs.open(a.ino, OpenMode::default()).await.unwrap(),
        fs.open(a.ino, OpenMode::default()).await.unwrap(),
    );
    let readers = |fh: u64| {
        let h = fs.handle(fh).unwrap();
        let h = h.try_lock().unwrap();
        match &*h {
            Handle::Read(r) => r.clone(),
            _ => panic!("not a read handle"),
        }
    };
    assert!(Arc::ptr_eq(&readers(h1), &readers(h2)), "shared");
    let gets = store.count(Op::Get);
    for (i, off) in (0..bytes.len() as u64).step_by(1000).enumerate() {
        let fh = [h1, h2][i % 2];
        if off == 30_000 {
            // A handle lagging behind (pages the kernel dropped) reads aside: the stream
            // goes on without starting over.
            let got = fs.read(h2, 5_000, 1000).await.unwrap();
            assert_eq!(&got[..], &bytes[5_000..6_000]);
        }
        let got = fs.read(fh, off, 1000).await.unwrap();
        assert_eq!(&got[..], &bytes[off as usize..off as usize + 1000]);
    }
    let shared = store.count(Op::Get) - gets;
    // The same through one handle alone.
    let alone = fs_over(store.clone());
    let b = alone.lookup(ROOT_INO, "f").await.unwrap();
    let h = alone.open(b.ino, OpenMode::default()).await.unwrap();
    let gets = store.count(Op::Get);
    for off in (0..bytes.len() as u64).step_by(1000) {
        alone.read(h, off, 1000).await.unwrap();
    }
    let one = store.count(Op::Get) - gets;
    assert_eq!(
        shared,
        one + 1,
        "one stream for both handles, and the read aside"
    );
    fs.release(h1).await.unwrap();
    fs.release(h2).await.unwrap();
    // Once all are closed, the next open starts afresh.
    let h3 = fs.open(a.ino, OpenMode::default()).await.unwrap();
    let h = fs.handle(h3).unwrap();
    if let Handle::Read(r) = &*h.lock().await {
        assert_eq!(r.requests(), 0, "new readers");
    } else {
        panic!("not a read handle");
    }
}

#[tokio::test]
async fn listings_of_more_than_ten_thousand_entries_page_with_stable_offsets() {
    let store = memory();
    for i in 0..10_050 {
        put(store.as_ref(), &format!("many/f{i:05}"), b"").await;
    }
    let fs = fs_over(store.clone());
    let d = fs.lookup(ROOT_INO, "many").await.unwrap();
    let fh = fs.opendir(d.ino).await.unwrap();
    let first = fs.readdir(d.ino, fh, 0, 500).await.unwrap();
    // The directory changes under the open handle: offsets stay valid.
    put(store.as_ref(), "many/a-new-one", b"").await;
    let mut all: Vec<String> = first.iter().map(|e| e.name.clone()).collect();
    let mut offset = first.last().unwrap().offset;
    loop {
        let batch = fs.readdir(d.ino, fh, offset, 500).await.unwrap();
        let Some(last) = batch.last() else { break };
        offset = last.offset;
        all.extend(batch.into_iter().map(|e| e.name));
    }
    assert_eq!(all.len(), 10_052);
    assert_eq!(all[2], "f00000");
    assert_eq!(all.last().unwrap(), "f10049");
    fs.release(fh).await.unwrap();
    assert_eq!(fs.counters.listings.load(Ordering::Relaxed), 1);
    assert!(fs.inode_count() < 10, "plain readdir must not pin inodes");
}

#[tokio::test]
async fn mkdir_persists_and_rmdir_removes_only_empty_directories() {
    let store = memory();
    let fs = fs_over(store.clone());
    let d = fs.mkdir(ROOT_INO, "new", 0o755, 0, 0).await.unwrap();
    assert_eq!(d.kind, Kind::Dir);
    assert_eq!(
        fs.mkdir(ROOT_INO, "new", 0o755, 0, 0)
            .await
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    // A fresh mount of the same bucket sees the empty directory.
    let fresh = fs_over(store.clone());
    assert_eq!(fresh.lookup(ROOT_INO, "new").await.unwrap().kind, Kind::Dir);
    assert!(names(&fresh, ROOT_INO).await.contains(&"new".to_string()));

    write_file(&fs, d.ino, "f", b"x").await;
    assert_eq!(
        fs.rmdir(ROOT_INO, "new").await.unwrap_err().errno,
        libc::ENOTEMPTY
    );
    fs.unlink(d.ino, "f").await.unwrap();
    fs.rmdir(ROOT_INO, "new").await.unwrap();
    let fresh = fs_over(store);
    assert_eq!(
        fresh.lookup(ROOT_INO, "new").await.unwrap_err().errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn unlink_deletes_the_object() {
    let store = memory();
    put(store.as_ref(), "gone", b"x").await;
    let fs = fs_over(store.clone());
    fs.lookup(ROOT_INO, "gone").await.unwrap();
    fs.unlink(ROOT_INO, "gone").await.unwrap();
    assert!(store.head("gone").await.unwrap().is_none());
    assert_eq!(
        fs.lookup(ROOT_INO, "gone").await.unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(
        fs.unlink(ROOT_INO, "gone").await.unwrap_err().errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn type_mismatches_have_their_errnos() {
    let store = memory();
    put(store.as_ref(), "d/f", b"x").await;
    let fs = fs_over(store);
    assert_eq!(
        fs.unlink(ROOT_INO, "d").await.unwrap_err().errno,
        libc::EISDIR
    );
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    assert_eq!(fs.rmdir(d.ino, "f").await.unwrap_err().errno, libc::ENOTDIR);
    let f = fs.lookup(d.ino, "f").await.unwrap();
    assert_eq!(
        fs.lookup(f.ino, "x").await.unwrap_err().errno,
        libc::ENOTDIR
    );
    assert_eq!(fs.opendir(f.ino).await.unwrap_err().errno, libc::ENOTDIR);
    assert_eq!(
        fs.open(d.ino, OpenMode::default()).await.unwrap_err().errno,
        libc::EISDIR
    );
}

#[tokio::test]
async fn read_only_mounts_refuse_every_change_with_erofs() {
    let store = memory();
    put(store.as_ref(), "f", b"x").await;
    let fs = Fs::new(
        store,
        FsConfig {
            read_only: true,
            ..config()
        },
    );
    let f = fs.lookup(ROOT_INO, "f").await.unwrap();
    let erofs = |r: FsResult<()>| assert_eq!(r.unwrap_err().errno, libc::EROFS);
    erofs(
        fs.create(
            ROOT_INO,
            "g",
            CreateMode {
                exclusive: false,
                pid: 1,
                ..Default::default()
            },
        )
        .await
        .map(|_| ()),
    );
    erofs(fs.mkdir(ROOT_INO, "d", 0o755, 0, 0).await.map(|_| ()));
    erofs(fs.unlink(ROOT_INO, "f").await);
    erofs(fs.rmdir(ROOT_INO, "f").await);
    erofs(
        fs.open(
            f.ino,
            OpenMode {
                write: true,
                truncate: true,
                ..Default::default()
            },
        )
        .await
        .map(|_| ()),
    );
    erofs(fs.setattr(f.ino, size(0)).await.map(|_| ()));
    assert_eq!(read_all(&fs, f.ino).await, b"x");
}

#[tokio::test]
async fn changes_in_the_store_stay_hidden_within_the_metadata_ttl_and_show_after_it() {
    let store = memory();
    put(store.as_ref(), "f", b"one").await;
    let ttl = Duration::from_millis(300);
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: ttl,
            ..config()
        },
    );
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(
        fs.lookup(ROOT_INO, "g").await.unwrap_err().errno,
        libc::ENOENT
    );
    put(store.as_ref(), "f", b"three").await;
    put(store.as_ref(), "g", b"").await;
    // Within the TTL: the cached size and the cached absence hold, with no request.
    let heads = store.count(Op::Head);
    assert_eq!(fs.getattr(a.ino).await.unwrap().size, 3);
    assert_eq!(
        fs.lookup(ROOT_INO, "g").await.unwrap_err().errno,
        libc::ENOENT
    );
    assert_eq!(store.count(Op::Head), heads);
    tokio::time::sleep(ttl + Duration::from_millis(50)).await;
    assert_eq!(fs.getattr(a.ino).await.unwrap().size, 5);
    assert!(fs.lookup(ROOT_INO, "g").await.is_ok());
    // With TTL 0 every stat asks the store.
    let fresh = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: Duration::ZERO,
            ..config()
        },
    );
    let f = fresh.lookup(ROOT_INO, "f").await.unwrap();
    put(store.as_ref(), "f", b"four!!").await;
    assert_eq!(fresh.getattr(f.ino).await.unwrap().size, 6);
}

#[tokio::test]
async fn forgotten_inodes_are_freed() {
    let store = memory();
    put(store.as_ref(), "f", b"x").await;
    let fs = fs_over(store);
    let before = fs.inode_count();
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    fs.lookup(ROOT_INO, "f").await.unwrap();
    fs.forget(a.ino, 1);
    assert_eq!(fs.inode_count(), before + 1);
    fs.forget(a.ino, 1);
    assert_eq!(fs.inode_count(), before);
}

mod caches;
mod edits;
mod failures;
mod trust;

#[tokio::test]
async fn a_stream_asks_for_ranges_that_never_cross_a_part_boundary() {
    let store = memory();
    let bytes: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
    put(store.as_ref(), "f", &bytes).await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let h = fs.open(a.ino, OpenMode::default()).await.unwrap();
    for off in (0..bytes.len() as u64).step_by(700) {
        let got = fs.read(h, off, 700).await.unwrap();
        let end = (off as usize + 700).min(bytes.len());
        assert_eq!(&got[..], &bytes[off as usize..end]);
    }
    let ranges = store.ranges();
    assert!(ranges.len() > 10, "{ranges:?}");
    // After the window's ramp (256, 512 bytes), every range is one whole part of 1024
    // bytes: none costs the store two of its pieces.
    for r in &ranges {
        assert_eq!(r.start / 1024, (r.end - 1) / 1024, "{r:?} of {ranges:?}");
    }
}
