//! Unit tests of edits beyond sequential writes: staging (seek, append, truncate,
//! read-write), the staging cache bound, rename, symlinks, persisted metadata, the memory
//! budget.

use std::time::Duration;

use bytes::Bytes;

use super::*;

#[tokio::test]
async fn a_seek_in_a_new_file_under_one_part_continues_it_staged() {
    let store = memory();
    let fs = fs_over(store.clone());
    let (_, fh) = fs.create(ROOT_INO, "f", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"abc")).await.unwrap();
    fs.write(fh, 10, Bytes::from_static(b"x")).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"A")).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        store.get_all("f").await.unwrap().unwrap(),
        &b"Abc\0\0\0\0\0\0\0x"[..]
    );
}

#[tokio::test]
async fn a_seek_back_after_parts_were_uploaded_continues_the_file_staged() {
    let store = memory();
    let fs = fs_over(store.clone());
    let (_, fh) = fs.create(ROOT_INO, "f.zip", excl()).await.unwrap();
    let mut want = data(2500);
    fs.write(fh, 0, Bytes::from(want.clone())).await.unwrap();
    assert!(
        store.count(Op::PutPart) >= 1,
        "a part went out while writing"
    );
    // zipfile rewrites a header it wrote first.
    fs.write(fh, 10, Bytes::from_static(b"HEADER"))
        .await
        .unwrap();
    fs.write(fh, 2500, Bytes::from_static(b"tail"))
        .await
        .unwrap();
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    want[10..16].copy_from_slice(b"HEADER");
    want.extend_from_slice(b"tail");
    assert!(store.object("f.zip").unwrap()[..] == want[..]);
    assert!(
        store.count(Op::Abort) >= 1,
        "the first upload was abandoned"
    );
    assert_eq!(fs.cache_used(), 0);
}

#[tokio::test]
async fn a_seek_back_with_no_room_to_keep_the_parts_fails_close_and_publishes_nothing() {
    let store = memory();
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            max_cache_size: 500,
            ..config()
        },
    );
    let (_, fh) = fs.create(ROOT_INO, "f", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from(data(2500))).await.unwrap();
    let e = fs.write(fh, 0, Bytes::from_static(b"x")).await.unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.message.contains("--max-cache-size"), "{e}");
    assert_eq!(fs.flush(fh, 7).await.unwrap_err().errno, libc::EIO);
    let _ = fs.release(fh).await;
    assert!(store.object("f").is_none());
    assert_eq!(store.count(Op::Complete), 0);
}

#[tokio::test]
async fn appends_and_in_place_writes_edit_existing_objects() {
    let store = memory();
    put(store.as_ref(), "log", b"one\n").await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "log").await.unwrap();
    for line in ["two\n", "three\n"] {
        let fh = fs.open(a.ino, append()).await.unwrap();
        // O_APPEND writes land at the end whatever offset the caller had.
        fs.write(fh, 0, Bytes::from(line)).await.unwrap();
        fs.flush(fh, 7).await.unwrap();
        fs.release(fh).await.unwrap();
    }
    assert_eq!(
        store.get_all("log").await.unwrap().unwrap(),
        &b"one\ntwo\nthree\n"[..]
    );
    // Read-write: reads see the written bytes before close.
    let fh = fs.open(a.ino, rw()).await.unwrap();
    fs.write(fh, 4, Bytes::from_static(b"TWO")).await.unwrap();
    assert_eq!(
        &fs.read(fh, 0, 100).await.unwrap()[..],
        b"one\nTWO\nthree\n"
    );
    assert_eq!(
        store.get_all("log").await.unwrap().unwrap(),
        &b"one\ntwo\nthree\n"[..],
        "not before close"
    );
    fs.setattr(a.ino, size(8)).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(
        store.get_all("log").await.unwrap().unwrap(),
        &b"one\nTWO\n"[..]
    );
    assert_eq!(fs.getattr(a.ino).await.unwrap().size, 8);
}

#[tokio::test]
async fn a_full_staging_cache_fails_writes_with_enospc() {
    let store = memory();
    put(store.as_ref(), "f", b"").await;
    let fs = Fs::new(
        store,
        FsConfig {
            max_cache_size: 100,
            ..config()
        },
    );
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let fh = fs
        .open(
            a.ino,
            OpenMode {
                write: true,
                read: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    fs.write(fh, 0, Bytes::from(vec![1u8; 100])).await.unwrap();
    let e = fs
        .write(fh, 100, Bytes::from_static(b"x"))
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::ENOSPC);
    fs.release(fh).await.unwrap();
    assert_eq!(fs.cache_used(), 0);
}

#[tokio::test]
async fn rename_of_a_file_replaces_the_target() {
    let store = memory();
    put(store.as_ref(), "a", b"new").await;
    put(store.as_ref(), "d/b", b"old").await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "a").await.unwrap();
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    fs.rename(ROOT_INO, "a", d.ino, "b", false).await.unwrap();
    assert!(store.head("a").await.unwrap().is_none());
    assert_eq!(store.get_all("d/b").await.unwrap().unwrap(), &b"new"[..]);
    // The kernel's inode follows the file.
    assert_eq!(read_all(&fs, a.ino).await, b"new");
    assert_eq!(
        fs.lookup(ROOT_INO, "a").await.unwrap_err().errno,
        libc::ENOENT
    );
    put(store.as_ref(), "c", b"c").await;
    let e = fs
        .rename(ROOT_INO, "c", d.ino, "b", true)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EEXIST);
}

#[tokio::test]
async fn rename_of_a_directory_moves_every_key_up_to_the_limit() {
    let store = memory();
    put(store.as_ref(), "src/x", b"x").await;
    put(store.as_ref(), "src/sub/y", b"y").await;
    let fs = fs_over(store.clone());
    fs.lookup(ROOT_INO, "src").await.unwrap();
    fs.rename(ROOT_INO, "src", ROOT_INO, "dst", false)
        .await
        .unwrap();
    assert_eq!(
        store.get_all("dst/sub/y").await.unwrap().unwrap(),
        &b"y"[..]
    );
    assert!(store.head("src/x").await.unwrap().is_none());
    let fresh = fs_over(store.clone());
    assert_eq!(names(&fresh, ROOT_INO).await, [".", "..", "dst"]);
    let dst = fresh.lookup(ROOT_INO, "dst").await.unwrap();
    assert_eq!(names(&fresh, dst.ino).await, [".", "..", "sub", "x"]);

    for i in 0..5 {
        put(store.as_ref(), &format!("big/f{i}"), b"").await;
    }
    let small = Fs::new(
        store.clone(),
        FsConfig {
            rename_dir_limit: 4,
            ..config()
        },
    );
    small.lookup(ROOT_INO, "big").await.unwrap();
    let e = small
        .rename(ROOT_INO, "big", ROOT_INO, "big2", false)
        .await
        .unwrap_err();
    assert_eq!(e.errno, libc::EXDEV);
    assert!(
        store.head("big/f0").await.unwrap().is_some(),
        "nothing moved"
    );
}

#[tokio::test]
async fn truncate_by_path_rewrites_the_object() {
    let store = memory();
    put(store.as_ref(), "f", b"12345").await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(fs.setattr(a.ino, size(5)).await.unwrap().size, 5);
    assert_eq!(fs.setattr(a.ino, size(2)).await.unwrap().size, 2);
    assert_eq!(store.get_all("f").await.unwrap().unwrap(), &b"12"[..]);
    assert_eq!(fs.setattr(a.ino, size(4)).await.unwrap().size, 4);
    assert_eq!(store.get_all("f").await.unwrap().unwrap(), &b"12\0\0"[..]);
    assert_eq!(fs.cache_used(), 0, "staged files are dropped after upload");
    let (c, _fh) = fs
        .create(
            ROOT_INO,
            "new",
            CreateMode {
                exclusive: false,
                pid: 1,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(fs.setattr(c.ino, size(0)).await.unwrap().size, 0);
}

#[tokio::test]
async fn symlinks_are_objects_with_an_s3fs_mode() {
    let store = memory();
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            persist_metadata: true,
            ..config()
        },
    );
    let l = fs
        .symlink(ROOT_INO, "link", "target/file.txt", 1000, 100)
        .await
        .unwrap();
    assert_eq!(l.kind, Kind::Symlink);
    assert_eq!(&fs.readlink(l.ino).await.unwrap()[..], b"target/file.txt");
    assert_eq!(
        store.get_all("link").await.unwrap().unwrap(),
        &b"target/file.txt"[..]
    );
    let info = store.head("link").await.unwrap().unwrap();
    assert_eq!(info.meta.get("mode").map(String::as_str), Some("41471"));
    // Another mount sees a symlink, through lookup and through a listing.
    let fresh = Fs::new(
        store.clone(),
        FsConfig {
            persist_metadata: true,
            ..config()
        },
    );
    assert_eq!(
        fresh.lookup(ROOT_INO, "link").await.unwrap().kind,
        Kind::Symlink
    );
    let fresh = Fs::new(
        store,
        FsConfig {
            persist_metadata: true,
            ..config()
        },
    );
    let fh = fresh.opendir(ROOT_INO).await.unwrap();
    let entries = fresh.readdir(ROOT_INO, fh, 0, 10).await.unwrap();
    assert_eq!(entries[2].attr.kind, Kind::Symlink);
    assert_eq!(
        fs.symlink(ROOT_INO, "link", "x", 0, 0)
            .await
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
}

#[tokio::test]
async fn modes_owners_and_mtimes_persist_with_persist_metadata() {
    let store = memory();
    let cfg = FsConfig {
        persist_metadata: true,
        ..config()
    };
    let fs = Fs::new(store.clone(), cfg.clone());
    let (a, fh) = fs
        .create(
            ROOT_INO,
            "f",
            CreateMode {
                perm: 0o600,
                uid: 1000,
                gid: 100,
                pid: 7,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    fs.write(fh, 0, Bytes::from_static(b"data")).await.unwrap();
    fs.release(fh).await.unwrap();
    let fresh = Fs::new(store.clone(), cfg.clone());
    let f = fresh.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!((f.perm, f.uid, f.gid), (0o600, 1000, 100));
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let set = SetAttr {
        mode: Some(0o755),
        uid: Some(7),
        mtime: Some(when),
        ..Default::default()
    };
    fs.setattr(a.ino, set).await.unwrap();
    let fresh = Fs::new(store.clone(), cfg);
    let f = fresh.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!((f.perm, f.uid, f.gid, f.mtime), (0o755, 7, 100, when));
    assert_eq!(read_all(&fresh, f.ino).await, b"data");
    // Without the option, chmod succeeds and changes nothing.
    let plain = fs_over(store.clone());
    let p = plain.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(
        plain
            .setattr(
                p.ino,
                SetAttr {
                    mode: Some(0o700),
                    ..Default::default()
                }
            )
            .await
            .unwrap()
            .perm,
        0o644
    );
}

#[tokio::test]
async fn a_small_memory_budget_slows_reads_and_writes_but_bounds_them() {
    let store = memory();
    let bytes = data(30_000);
    put(store.as_ref(), "big", &bytes).await;
    // Room for two 1,000-byte parts: prefetch stops early, writers wait for uploads.
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            memory_limit: 2048,
            ..config()
        },
    );
    let a = fs.lookup(ROOT_INO, "big").await.unwrap();
    let fh = fs.open(a.ino, OpenMode::default()).await.unwrap();
    let mut got = Vec::new();
    loop {
        let chunk = fs.read(fh, got.len() as u64, 700).await.unwrap();
        if chunk.is_empty() {
            break;
        }
        assert!(
            fs.memory_in_use() <= 2048,
            "{} bytes held",
            fs.memory_in_use()
        );
        got.extend_from_slice(&chunk);
    }
    assert_eq!(got, bytes);
    fs.release(fh).await.unwrap();
    write_file(&fs, ROOT_INO, "w", &data(9_000)).await;
    assert_eq!(store.get_all("w").await.unwrap().unwrap(), &data(9_000)[..]);
    assert_eq!(fs.memory_in_use(), 0, "everything is given back");
}

#[tokio::test]
async fn staged_files_fetch_only_the_chunks_they_touch() {
    let store = memory();
    let body = data(3 << 20);
    put(store.as_ref(), "big", &body).await;
    let etag = store.head("big").await.unwrap().unwrap().etag;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "big").await.unwrap();
    let rw = rw();
    // Opened read-write but only read: one chunk fetched, nothing uploaded.
    let fh = fs.open(a.ino, rw).await.unwrap();
    let got = fs.read(fh, (3 << 19) + 5, 10).await.unwrap();
    assert_eq!(&got[..], &body[(3 << 19) + 5..(3 << 19) + 15]);
    let file = fs.open_file(a.ino).unwrap();
    if let super::open::Content::Staged(staged) = &*file.content.lock().await {
        assert_eq!(staged.fetches, 1);
    } else {
        panic!("not staged");
    }
    fs.release(fh).await.unwrap();
    assert_eq!(
        store.head("big").await.unwrap().unwrap().etag,
        etag,
        "not re-uploaded"
    );
    // A one-byte edit fetches the rest before the upload, so nothing is lost.
    let fh = fs.open(a.ino, rw).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"X")).await.unwrap();
    fs.release(fh).await.unwrap();
    let mut want = body.clone();
    want[0] = b'X';
    assert!(store.get_all("big").await.unwrap().unwrap()[..] == want[..]);
}

#[tokio::test]
async fn an_append_copies_the_unchanged_parts_server_side_and_sends_only_the_new_bytes() {
    let store = memory();
    let body = data(10_500);
    put(store.as_ref(), "big", &body).await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "big").await.unwrap();
    store.reset_counts();
    let fh = fs.open(a.ino, append()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"appended"))
        .await
        .unwrap();
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    let mut want = body.clone();
    want.extend_from_slice(b"appended");
    assert!(store.object("big").unwrap()[..] == want[..]);
    // Parts of 1,000 bytes: the first ten are copied, the last one (500 old bytes and the
    // new ones) is sent; only the chunk holding it was fetched.
    assert_eq!(store.count(Op::CopyPart), 10);
    assert_eq!(store.count(Op::PutPart), 1);
    assert_eq!(store.bytes_sent(), 508);
    assert_eq!(store.count(Op::Get), 1);
    // A second append, through a fresh open, builds on the new version.
    let fh = fs.open(a.ino, append()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"+")).await.unwrap();
    fs.release(fh).await.unwrap();
    want.push(b'+');
    assert!(store.object("big").unwrap()[..] == want[..]);
}

#[tokio::test]
async fn an_append_to_an_object_replaced_meanwhile_is_estale_and_keeps_theirs() {
    let store = memory();
    put(store.as_ref(), "big", &data(10_500)).await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "big").await.unwrap();
    let fh = fs.open(a.ino, append()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"mine")).await.unwrap();
    let theirs = data(12_000);
    put(store.as_ref(), "big", &theirs).await;
    assert_eq!(fs.flush(fh, 7).await.unwrap_err().errno, libc::ESTALE);
    let _ = fs.release(fh).await;
    assert!(store.object("big").unwrap()[..] == theirs[..]);
    assert_eq!(store.count(Op::Complete), 0, "no upload completed");
}

#[tokio::test]
async fn a_store_that_cannot_copy_parts_gets_the_whole_file() {
    use crate::store::{Faulty, Rule, StoreErrorKind};
    let store = memory();
    let body = data(5_000);
    put(store.as_ref(), "f", &body).await;
    let faulty = Faulty::new(store.clone());
    faulty.add(Rule::fail(
        Op::CopyPart,
        "",
        StoreErrorKind::Unsupported,
        None,
    ));
    let fs = fs_over(Arc::new(faulty));
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let fh = fs.open(a.ino, append()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"!")).await.unwrap();
    fs.release(fh).await.unwrap();
    let mut want = body;
    want.push(b'!');
    assert!(store.object("f").unwrap()[..] == want[..]);
    assert!(
        store.count(Op::Abort) >= 1,
        "the half-made upload was aborted"
    );
}

#[tokio::test]
async fn a_key_past_the_stores_limit_is_enametoolong_before_anything_is_written() {
    let store = memory();
    let prefix = format!("{}/", "p".repeat(600));
    put(store.as_ref(), &format!("{prefix}keep.txt"), b"kept").await;
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            prefix: prefix.clone(),
            ..config()
        },
    );
    // Names a kernel allows (255 bytes), keys a store does not (the prefix counts).
    let d = fs
        .mkdir(ROOT_INO, &"d".repeat(200), 0o755, 0, 0)
        .await
        .unwrap();
    let long = "n".repeat(250);
    let too_long = |r: FsResult<()>| match r {
        Err(e) => assert_eq!(e.errno, libc::ENAMETOOLONG, "{e}"),
        Ok(()) => panic!("accepted"),
    };
    too_long(fs.mkdir(d.ino, &long, 0o755, 0, 0).await.map(|_| ()));
    too_long(fs.create(d.ino, &long, excl()).await.map(|_| ()));
    too_long(fs.symlink(d.ino, &long, "t", 0, 0).await.map(|_| ()));
    too_long(fs.rename(ROOT_INO, "keep.txt", d.ino, &long, false).await);
    // A directory whose moved keys would pass the limit is not moved at all.
    let sub = fs.mkdir(ROOT_INO, "sub", 0o755, 0, 0).await.unwrap();
    write_file(&fs, sub.ino, &"f".repeat(230), b"x").await;
    too_long(fs.rename(ROOT_INO, "sub", d.ino, "s", false).await);
    // Nothing changed: no new key, the file where it was.
    let mut keys = store.keys();
    keys.sort();
    assert_eq!(
        keys,
        [
            format!("{prefix}{}/", "d".repeat(200)),
            format!("{prefix}keep.txt"),
            format!("{prefix}sub/"),
            format!("{prefix}sub/{}", "f".repeat(230)),
        ]
    );
    // Just under the limit works.
    let fits = "k".repeat(1024 - prefix.len() - 201);
    write_file(&fs, d.ino, &fits, b"fits").await;
}

#[tokio::test]
async fn a_time_set_before_close_is_the_one_stored_and_a_later_write_replaces_it() {
    let store = memory();
    let cfg = FsConfig {
        persist_metadata: true,
        ..config()
    };
    let fs = Fs::new(store.clone(), cfg.clone());
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    let set_mtime = || SetAttr {
        mtime: Some(when),
        ..Default::default()
    };
    // cp -p: create, write, futimens, close (a stream).
    let (a, fh) = fs.create(ROOT_INO, "copied", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"data")).await.unwrap();
    fs.setattr(a.ino, set_mtime()).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fs.getattr(a.ino).await.unwrap().mtime, when);
    // An edit in place (staged): write, set the time, close.
    let fh = fs.open(a.ino, rw()).await.unwrap();
    fs.write(fh, 4, Bytes::from_static(b"+more")).await.unwrap();
    fs.setattr(a.ino, set_mtime()).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(fs.getattr(a.ino).await.unwrap().mtime, when);
    // A write after the time was set makes the file modified now.
    let (b, fh) = fs.create(ROOT_INO, "touched", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"one")).await.unwrap();
    fs.setattr(b.ino, set_mtime()).await.unwrap();
    fs.write(fh, 3, Bytes::from_static(b"two")).await.unwrap();
    fs.release(fh).await.unwrap();
    // What another mount sees (after a remount).
    let fresh = Fs::new(store.clone(), cfg);
    let copied = fresh.lookup(ROOT_INO, "copied").await.unwrap();
    assert_eq!(copied.mtime, when);
    assert_eq!(read_all(&fresh, copied.ino).await, b"data+more");
    let touched = fresh.lookup(ROOT_INO, "touched").await.unwrap();
    assert!(
        touched.mtime > when + Duration::from_secs(86_400),
        "{:?}",
        touched.mtime
    );
}

#[tokio::test]
async fn a_new_file_closed_last_replaces_what_another_mount_stored_meanwhile() {
    // Mount B creates a file and writes it; mount A creates the same name, writes and
    // closes; B closes last: B's bytes are the object (the last close wins whole).
    let store = memory();
    let b = fs_over(store.clone());
    let a = fs_over(store.clone());
    let create = |pid| CreateMode {
        pid,
        ..Default::default()
    };
    let (_, fb) = b.create(ROOT_INO, "same.bin", create(2)).await.unwrap();
    b.write(fb, 0, Bytes::from_static(b"bbbb")).await.unwrap();
    b.flush(fb, 3).await.unwrap(); // cat's exit: another process than the opener
    let (_, fa) = a.create(ROOT_INO, "same.bin", create(1)).await.unwrap();
    a.write(fa, 0, Bytes::from_static(b"aaaa")).await.unwrap();
    a.flush(fa, 1).await.unwrap();
    a.release(fa).await.unwrap();
    assert_eq!(store.object("same.bin").unwrap(), &b"aaaa"[..]);
    b.flush(fb, 2).await.unwrap();
    b.release(fb).await.unwrap();
    assert_eq!(store.object("same.bin").unwrap(), &b"bbbb"[..]);
}
