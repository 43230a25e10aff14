//! Unit tests of "data you can trust": concurrent writers of one file, files deleted or
//! renamed while open, conflicts with other clients, and the calls real tools make (mknod,
//! odd names, touch, times, directory modes, xattrs, Content-Type).

use std::time::{Duration, UNIX_EPOCH};

use bytes::Bytes;

use super::*;

fn persist() -> FsConfig {
    FsConfig {
        persist_metadata: true,
        ..config()
    }
}

#[tokio::test]
async fn concurrent_writers_of_one_file_share_it_and_every_close_keeps_its_bytes() {
    let store = memory();
    let body = data(25_000);
    put(store.as_ref(), "shared", &body).await;
    let fs = Arc::new(fs_over(store.clone()));
    let a = fs.lookup(ROOT_INO, "shared").await.unwrap();
    let mut tasks = Vec::new();
    for i in 0..10u8 {
        let fs = fs.clone();
        tasks.push(tokio::spawn(async move {
            let fh = fs.open(a.ino, rw()).await.unwrap();
            let chunk = vec![b'a' + i; 160];
            fs.write(fh, i as u64 * 2_000, Bytes::from(chunk))
                .await
                .unwrap();
            tokio::task::yield_now().await;
            let closed = fs.flush(fh, 7).await;
            fs.release(fh).await.unwrap();
            closed
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("every close succeeds");
    }
    let stored = store.object("shared").unwrap();
    for i in 0..10u8 {
        let at = i as usize * 2_000;
        assert!(
            stored[at..at + 160].iter().all(|b| *b == b'a' + i),
            "writer {i} lost"
        );
    }
    assert!(stored[160..2_000] == body[160..2_000]);
}

#[tokio::test]
async fn a_second_writer_of_a_new_file_joins_the_first() {
    let store = memory();
    let fs = fs_over(store.clone());
    let (a, one) = fs.create(ROOT_INO, "f", excl()).await.unwrap();
    fs.write(one, 0, Bytes::from_static(b"first."))
        .await
        .unwrap();
    let two = fs.open(a.ino, rw()).await.unwrap();
    fs.write(two, 6, Bytes::from_static(b"second"))
        .await
        .unwrap();
    assert_eq!(&fs.read(two, 0, 100).await.unwrap()[..], b"first.second");
    fs.release(one).await.unwrap();
    fs.release(two).await.unwrap();
    assert_eq!(&store.object("f").unwrap()[..], b"first.second");
}

#[tokio::test]
async fn a_file_deleted_while_open_for_writing_never_comes_back() {
    let store = memory();
    put(store.as_ref(), "d/keep", b"x").await;
    let fs = fs_over(store.clone());
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    // A new streamed file (one part already sent), then a staged edit of an existing one.
    let (f, fh) = fs.create(d.ino, "tmp", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from(data(1_500))).await.unwrap();
    fs.unlink(d.ino, "tmp").await.unwrap();
    fs.write(fh, 1_500, Bytes::from(data(1_000))).await.unwrap();
    assert_eq!(fs.getattr(f.ino).await.unwrap().nlink, 0);
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    put(store.as_ref(), "d/edit", b"old").await;
    let e = fs.lookup(d.ino, "edit").await.unwrap();
    let fh = fs.open(e.ino, rw()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"new")).await.unwrap();
    fs.unlink(d.ino, "edit").await.unwrap();
    assert_eq!(
        &fs.read(fh, 0, 10).await.unwrap()[..],
        b"new",
        "still readable by fd"
    );
    fs.release(fh).await.unwrap();
    fs.unlink(d.ino, "keep").await.unwrap();
    assert_eq!(store.keys(), Vec::<String>::new(), "nothing uploaded");
    fs.rmdir(ROOT_INO, "d").await.unwrap();
    assert_eq!(
        store.count(Op::Abort),
        1,
        "the stream's upload was abandoned"
    );
    assert_eq!(store.count(Op::Complete), 0);
}

#[tokio::test]
async fn a_file_renamed_while_open_is_uploaded_under_its_new_name_only() {
    let store = memory();
    let fs = fs_over(store.clone());
    let (_, fh) = fs.create(ROOT_INO, "a.tmp", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"hello")).await.unwrap();
    fs.rename(ROOT_INO, "a.tmp", ROOT_INO, "a.txt", false)
        .await
        .unwrap();
    fs.write(fh, 5, Bytes::from_static(b" world"))
        .await
        .unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.keys(), ["a.txt"]);
    assert_eq!(&store.object("a.txt").unwrap()[..], b"hello world");
    // Renamed, then deleted under its new name: nothing at all.
    let (_, fh) = fs.create(ROOT_INO, "b.tmp", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"x")).await.unwrap();
    fs.rename(ROOT_INO, "b.tmp", ROOT_INO, "b", false)
        .await
        .unwrap();
    fs.unlink(ROOT_INO, "b").await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.keys(), ["a.txt"]);
    // A staged edit of a stored file, renamed while open: its edits land at the new name.
    let a = fs.lookup(ROOT_INO, "a.txt").await.unwrap();
    let fh = fs.open(a.ino, append()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"!")).await.unwrap();
    fs.rename(ROOT_INO, "a.txt", ROOT_INO, "c.txt", false)
        .await
        .unwrap();
    fs.write(fh, 0, Bytes::from_static(b"?")).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.keys(), ["c.txt"]);
    assert_eq!(&store.object("c.txt").unwrap()[..], b"hello world!?");
}

#[tokio::test]
async fn an_edit_of_an_object_another_client_replaced_is_estale_and_keeps_theirs() {
    let store = memory();
    put(store.as_ref(), "f", b"original").await;
    let ours = fs_over(store.clone());
    let a = ours.lookup(ROOT_INO, "f").await.unwrap();
    let fh = ours.open(a.ino, rw()).await.unwrap();
    assert_eq!(&ours.read(fh, 0, 100).await.unwrap()[..], b"original");
    ours.write(fh, 0, Bytes::from_static(b"OURS"))
        .await
        .unwrap();
    put(store.as_ref(), "f", b"theirs, written meanwhile").await;
    assert_eq!(ours.flush(fh, 7).await.unwrap_err().errno, libc::ESTALE);
    let _ = ours.release(fh).await;
    assert_eq!(
        &store.object("f").unwrap()[..],
        b"theirs, written meanwhile"
    );
}

#[tokio::test]
async fn mknod_makes_empty_files_and_special_files_only_with_persist_metadata() {
    let store = memory();
    let fs = fs_over(store.clone());
    let a = fs
        .mknod(ROOT_INO, "empty", excl(), meta::S_IFREG, 0)
        .await
        .unwrap();
    assert_eq!((a.kind, a.size), (Kind::File, 0));
    assert_eq!(store.object("empty").unwrap().len(), 0);
    for kind in [libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK] {
        let e = fs.mknod(ROOT_INO, "x", excl(), kind, 0).await.unwrap_err();
        assert_eq!(e.errno, libc::EPERM);
    }
    assert!(store.object("x").is_none());
    assert_eq!(
        fs.mknod(ROOT_INO, "empty", excl(), meta::S_IFREG, 0)
            .await
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    // With --persist-metadata: empty objects whose mode says what they are (s3fs's way),
    // seen as such by another mount.
    let fs = Fs::new(store.clone(), persist());
    let fifo = fs
        .mknod(ROOT_INO, "fifo", excl(), libc::S_IFIFO, 0)
        .await
        .unwrap();
    assert_eq!(fifo.kind, Kind::Special(libc::S_IFIFO));
    let dev = fs
        .mknod(ROOT_INO, "tty", excl(), libc::S_IFCHR, 0x0504)
        .await
        .unwrap();
    assert_eq!((dev.kind, dev.rdev), (Kind::Special(libc::S_IFCHR), 0x0504));
    let info = store.head("fifo").await.unwrap().unwrap();
    assert_eq!(info.size, 0);
    assert_eq!(
        meta::mode(&info.meta).map(|m| m & meta::S_IFMT),
        Some(libc::S_IFIFO)
    );
    let other = Fs::new(store.clone(), persist());
    for (name, kind, rdev) in [("fifo", libc::S_IFIFO, 0), ("tty", libc::S_IFCHR, 0x0504)] {
        let a = other.lookup(ROOT_INO, name).await.unwrap();
        assert_eq!((a.kind, a.rdev), (Kind::Special(kind), rdev), "{name}");
    }
    assert_eq!(
        fs.mknod(ROOT_INO, "fifo", excl(), libc::S_IFIFO, 0)
            .await
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    // Renamed and removed as files are.
    fs.rename(ROOT_INO, "fifo", ROOT_INO, "pipe", false)
        .await
        .unwrap();
    assert_eq!(
        other.lookup(ROOT_INO, "pipe").await.unwrap().kind,
        Kind::Special(libc::S_IFIFO)
    );
    fs.unlink(ROOT_INO, "pipe").await.unwrap();
    assert!(store.object("pipe").is_none());
}

#[tokio::test]
async fn names_with_control_characters_work_and_long_ones_are_enametoolong() {
    let store = memory();
    let fs = fs_over(store.clone());
    for name in ["tab\there", "cr\rlf\n", "ctl\u{1}", "sp ace"] {
        write_file(&fs, ROOT_INO, name, name.as_bytes()).await;
        assert_eq!(&store.object(name).unwrap()[..], name.as_bytes());
    }
    let mut listed = names(&fs, ROOT_INO).await;
    listed.sort();
    assert_eq!(
        listed,
        [".", "..", "cr\rlf\n", "ctl\u{1}", "sp ace", "tab\there"]
    );
    fs.rename(ROOT_INO, "tab\there", ROOT_INO, "new\tname", false)
        .await
        .unwrap();
    fs.unlink(ROOT_INO, "new\tname").await.unwrap();
    let long = "n".repeat(256);
    for e in [
        fs.lookup(ROOT_INO, &long).await.map(|_| ()),
        fs.create(ROOT_INO, &long, excl()).await.map(|_| ()),
        fs.mkdir(ROOT_INO, &long, 0o755, 0, 0).await.map(|_| ()),
    ] {
        assert_eq!(e.unwrap_err().errno, libc::ENAMETOOLONG);
    }
}

#[tokio::test]
async fn touch_of_an_existing_file_persists_its_mtime_without_rewriting_the_data() {
    let store = memory();
    put(store.as_ref(), "f", &data(5_000)).await;
    let fs = Fs::new(store.clone(), persist());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    store.reset_counts();
    // touch: open for writing (no O_TRUNC), utimensat, close without writing.
    let when = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    let fh = fs
        .open(
            a.ino,
            OpenMode {
                write: true,
                pid: 7,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let set = SetAttr {
        atime: Some(when),
        mtime: Some(when),
        ..Default::default()
    };
    fs.setattr(a.ino, set).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(store.bytes_sent(), 0, "metadata only");
    assert_eq!(store.count(Op::Copy), 1);
    let fresh = Fs::new(store.clone(), persist());
    let f = fresh.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!((f.mtime, f.atime), (when, when));
    assert!(store.object("f").unwrap()[..] == data(5_000)[..]);
}

#[tokio::test]
async fn ctime_follows_changes_and_atime_follows_utimensat() {
    let store = memory();
    put(store.as_ref(), "f", b"x").await;
    let fs = fs_over(store.clone());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!((a.atime, a.ctime), (a.mtime, a.mtime));
    let when = UNIX_EPOCH + Duration::from_secs(1_000_000_000);
    let set = SetAttr {
        atime: Some(when),
        ..Default::default()
    };
    let b = fs.setattr(a.ino, set).await.unwrap();
    assert_eq!(b.atime, when);
    assert!(b.ctime > a.ctime, "utimensat changes ctime");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let mode = SetAttr {
        mode: Some(0o600),
        ..Default::default()
    };
    let c = fs.setattr(a.ino, mode).await.unwrap();
    assert!(c.ctime > b.ctime, "chmod changes ctime");
    tokio::time::sleep(Duration::from_millis(20)).await;
    fs.rename(ROOT_INO, "f", ROOT_INO, "g", false)
        .await
        .unwrap();
    let d = fs.lookup(ROOT_INO, "g").await.unwrap();
    assert!(d.ctime > c.ctime, "rename changes ctime");
    assert_eq!(d.atime, when, "the access time moves with the file");
    // With --persist-metadata they are stored in s3fs's keys.
    let p = Fs::new(store.clone(), persist());
    let g = p.lookup(ROOT_INO, "g").await.unwrap();
    p.setattr(g.ino, set).await.unwrap();
    let m = store.head("g").await.unwrap().unwrap().meta;
    assert_eq!(m["atime"], "1000000000");
    assert!(m.contains_key("ctime"));
}

#[tokio::test]
async fn directory_modes_and_owners_persist_on_their_markers() {
    let store = memory();
    let fs = Fs::new(store.clone(), persist());
    let d = fs.mkdir(ROOT_INO, "d", 0o750, 10, 20).await.unwrap();
    assert_eq!((d.perm, d.uid, d.gid), (0o750, 10, 20));
    let set = SetAttr {
        mode: Some(0o700),
        uid: Some(1000),
        ..Default::default()
    };
    fs.setattr(d.ino, set).await.unwrap();
    let fresh = Fs::new(store.clone(), persist());
    let d = fresh.lookup(ROOT_INO, "d").await.unwrap();
    assert_eq!((d.perm, d.uid, d.gid), (0o700, 1000, 20));
    let listed = fresh.opendir(ROOT_INO).await.unwrap();
    let entries = fresh.readdir(ROOT_INO, listed, 0, 10).await.unwrap();
    let e = entries.iter().find(|e| e.name == "d").unwrap();
    assert_eq!(e.attr.perm, 0o700);
    // The bucket root has no marker.
    let root = SetAttr {
        mode: Some(0o700),
        ..Default::default()
    };
    assert_eq!(
        fs.setattr(ROOT_INO, root).await.unwrap_err().errno,
        libc::EPERM
    );
}

#[tokio::test]
async fn xattrs_persist_in_s3fs_form_and_need_the_option() {
    let store = memory();
    put(store.as_ref(), "f", b"x").await;
    let plain = fs_over(store.clone());
    let a = plain.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(
        plain.getxattr(a.ino, "user.k").unwrap_err().errno,
        libc::EOPNOTSUPP
    );
    assert_eq!(
        plain
            .setxattr(a.ino, "user.k", b"v", 0)
            .await
            .unwrap_err()
            .errno,
        libc::EOPNOTSUPP
    );
    let fs = Fs::new(store.clone(), persist());
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(
        fs.getxattr(a.ino, "user.k").unwrap_err().errno,
        libc::ENODATA
    );
    fs.setxattr(a.ino, "user.k", b"v\0bin", 0).await.unwrap();
    assert_eq!(
        fs.setxattr(a.ino, "user.k", b"w", libc::XATTR_CREATE)
            .await
            .unwrap_err()
            .errno,
        libc::EEXIST
    );
    assert_eq!(
        fs.setxattr(a.ino, "user.none", b"w", libc::XATTR_REPLACE)
            .await
            .unwrap_err()
            .errno,
        libc::ENODATA
    );
    fs.setxattr(a.ino, "user.two", b"2", 0).await.unwrap();
    let fresh = Fs::new(store.clone(), persist());
    let f = fresh.lookup(ROOT_INO, "f").await.unwrap();
    assert_eq!(fresh.getxattr(f.ino, "user.k").unwrap(), b"v\0bin");
    assert_eq!(fresh.listxattr(f.ino).unwrap(), ["user.k", "user.two"]);
    fresh.removexattr(f.ino, "user.k").await.unwrap();
    assert_eq!(
        fresh.removexattr(f.ino, "user.k").await.unwrap_err().errno,
        libc::ENODATA
    );
    assert_eq!(&store.object("f").unwrap()[..], b"x", "the data stays");
    let big = vec![b'z'; 3000];
    assert_eq!(
        fresh
            .setxattr(f.ino, "user.big", &big, 0)
            .await
            .unwrap_err()
            .errno,
        libc::ENOSPC
    );
}

#[tokio::test]
async fn objects_get_a_content_type_from_their_extension_and_their_new_names_when_renamed() {
    let store = memory();
    let fs = fs_over(store.clone());
    write_file(&fs, ROOT_INO, "page.html", b"<p>").await;
    write_file(&fs, ROOT_INO, "big.json", &data(2_500)).await;
    write_file(&fs, ROOT_INO, "noext", b"x").await;
    let ct = |k: &'static str| {
        let store = store.clone();
        async move { store.head(k).await.unwrap().unwrap().content_type }
    };
    assert_eq!(ct("page.html").await.as_deref(), Some("text/html"));
    assert_eq!(ct("big.json").await.as_deref(), Some("application/json"));
    assert_eq!(ct("noext").await, None);
    // A name without a type of its own keeps the object's.
    fs.rename(ROOT_INO, "page.html", ROOT_INO, "moved", false)
        .await
        .unwrap();
    assert_eq!(ct("moved").await.as_deref(), Some("text/html"));
    // A name of another type gives the object that type (an editor's `x.tmp` → `x.csv`,
    // a multipart object included); data and metadata are kept.
    fs.rename(ROOT_INO, "big.json", ROOT_INO, "big.csv", false)
        .await
        .unwrap();
    assert_eq!(ct("big.csv").await.as_deref(), Some("text/csv"));
    assert_eq!(
        read_all(&fs, fs.lookup(ROOT_INO, "big.csv").await.unwrap().ino).await,
        data(2_500)
    );
    fs.rename(ROOT_INO, "moved", ROOT_INO, "page.txt", false)
        .await
        .unwrap();
    assert_eq!(ct("page.txt").await.as_deref(), Some("text/plain"));
    // Directory markers carry s3fs's type for directories.
    fs.mkdir(ROOT_INO, "dir", 0o755, 0, 0).await.unwrap();
    assert_eq!(
        ct("dir/").await.as_deref(),
        Some(crate::store::DIRECTORY_CONTENT_TYPE)
    );
}

#[tokio::test]
async fn a_time_set_on_a_directory_is_shown_for_the_mounts_life_and_never_reverts() {
    let store = memory();
    put(store.as_ref(), "d/f", b"x").await; // a directory that is only a prefix
    let fs = Fs::new(
        store.clone(),
        FsConfig {
            metadata_ttl: Duration::ZERO,
            ..config()
        },
    );
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let when = std::time::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    let set = SetAttr {
        mtime: Some(when),
        ..Default::default()
    };
    fs.setattr(d.ino, set).await.unwrap();
    assert_eq!(fs.getattr(d.ino).await.unwrap().mtime, when);
    // Asked of the store again (the TTL is 0): still the time set.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(fs.lookup(ROOT_INO, "d").await.unwrap().mtime, when);
    assert_eq!(fs.getattr(d.ino).await.unwrap().mtime, when);
    // It moves with the directory.
    fs.rename(ROOT_INO, "d", ROOT_INO, "e", false)
        .await
        .unwrap();
    assert_eq!(fs.lookup(ROOT_INO, "e").await.unwrap().mtime, when);
}
