//! Injected store failures: every store operation the file system uses fails (or is cut)
//! and the file system reports it with the right errno and loses nothing that was stored.

use bytes::Bytes;

use super::*;
use crate::store::{Action, Faulty, Op, Rule, StoreErrorKind};

fn faulty() -> (Arc<MemoryBucket>, Faulty) {
    let mem = memory();
    let f = Faulty::new(mem.clone());
    (mem, f)
}

fn fs_on(f: &Faulty) -> Fs {
    fs_over(Arc::new(f.clone()))
}

fn fail(op: Op, kind: StoreErrorKind) -> Rule {
    Rule::fail(op, "", kind, None)
}

#[tokio::test]
async fn a_failed_small_upload_fails_close_and_leaves_no_object() {
    let (mem, f) = faulty();
    let fs = fs_on(&f);
    let (_, fh) = fs.create(ROOT_INO, "f", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from_static(b"data")).await.unwrap();
    f.add(fail(Op::Put, StoreErrorKind::Unavailable));
    let e = fs.flush(fh, 7).await.unwrap_err();
    assert_eq!(e.errno, libc::EIO);
    assert!(e.message.contains("\"f\""), "{e}");
    // Every later call reports it too.
    assert_eq!(fs.release(fh).await.unwrap_err().errno, libc::EIO);
    f.clear();
    assert!(mem.object("f").is_none());
    assert_eq!(
        fs.lookup(ROOT_INO, "f").await.unwrap_err().errno,
        libc::ENOENT
    );
}

#[tokio::test]
async fn a_failed_multipart_upload_fails_fsync_and_keeps_the_old_object() {
    for op in [Op::StartUpload, Op::PutPart, Op::Complete] {
        let (mem, f) = faulty();
        put(mem.as_ref(), "f", b"old").await;
        let fs = fs_on(&f);
        let a = fs.lookup(ROOT_INO, "f").await.unwrap();
        let fh = fs.open(a.ino, trunc()).await.unwrap();
        f.add(fail(op, StoreErrorKind::Unavailable));
        // The first part may already fail while writing.
        let wrote = fs.write(fh, 0, Bytes::from(data(2500))).await;
        let synced = fs.fsync(fh).await;
        assert!(wrote.is_err() || synced.is_err(), "{op:?}");
        assert_eq!(synced.unwrap_err().errno, libc::EIO, "{op:?}");
        fs.release(fh).await.unwrap_err();
        assert_eq!(&mem.object("f").unwrap()[..], b"old", "{op:?}");
        if op != Op::StartUpload {
            assert!(mem.count(Op::Abort) >= 1, "{op:?}: the upload is aborted");
        }
    }
}

#[tokio::test]
async fn a_completion_whose_answer_is_lost_is_reported_not_assumed() {
    // The store completed the upload but the answer never arrived: close must not claim
    // success it cannot know, and the data is in the store.
    let (mem, f) = faulty();
    let fs = fs_on(&f);
    let (_, fh) = fs.create(ROOT_INO, "f", excl()).await.unwrap();
    fs.write(fh, 0, Bytes::from(data(2500))).await.unwrap();
    f.add(Rule {
        op: Some(Op::Complete),
        key: String::new(),
        action: Action::Cut,
        times: Some(1),
    });
    assert_eq!(fs.flush(fh, 7).await.unwrap_err().errno, libc::EIO);
    let _ = fs.release(fh).await;
    assert_eq!(&mem.object("f").unwrap()[..], &data(2500)[..]);
}

#[tokio::test]
async fn failed_reads_listings_and_lookups_have_their_errnos() {
    let (mem, f) = faulty();
    put(mem.as_ref(), "d/f", &data(5000)).await;
    let fs = fs_on(&f);
    f.add(Rule::fail(
        Op::Head,
        "d",
        StoreErrorKind::PermissionDenied,
        Some(1),
    ));
    assert_eq!(
        fs.lookup(ROOT_INO, "d").await.unwrap_err().errno,
        libc::EACCES
    );
    let d = fs.lookup(ROOT_INO, "d").await.unwrap();
    let a = fs.lookup(d.ino, "f").await.unwrap();
    f.add(fail(Op::List, StoreErrorKind::Unavailable));
    let dh = fs.opendir(d.ino).await.unwrap();
    assert_eq!(
        fs.readdir(d.ino, dh, 0, 10).await.unwrap_err().errno,
        libc::EIO
    );
    f.clear();
    // A cut body is an error, never short data.
    f.add(Rule {
        op: Some(Op::Get),
        key: "d/f".into(),
        action: Action::Cut,
        times: None,
    });
    let fh = fs.open(a.ino, OpenMode::default()).await.unwrap();
    assert_eq!(fs.read(fh, 0, 1000).await.unwrap_err().errno, libc::EIO);
    f.clear();
    // An object replaced under a reader: ESTALE, not a mix of versions.
    put(mem.as_ref(), "d/f", &data(6000)).await;
    assert_eq!(
        fs.read(fh, 2000, 1000).await.unwrap_err().errno,
        libc::ESTALE
    );
    fs.release(fh).await.unwrap();
}

#[tokio::test]
async fn failed_directory_operations_change_nothing() {
    let (mem, f) = faulty();
    put(mem.as_ref(), "src/a", b"a").await;
    put(mem.as_ref(), "src/b", b"b").await;
    let fs = fs_on(&f);
    f.add(fail(Op::Put, StoreErrorKind::PermissionDenied));
    assert_eq!(
        fs.mkdir(ROOT_INO, "new", 0o755, 0, 0)
            .await
            .unwrap_err()
            .errno,
        libc::EACCES
    );
    f.clear();
    // A copy failing midway leaves the source whole.
    f.add(Rule::fail(
        Op::Copy,
        "dst/b",
        StoreErrorKind::Unavailable,
        None,
    ));
    assert_eq!(
        fs.rename(ROOT_INO, "src", ROOT_INO, "dst", false)
            .await
            .unwrap_err()
            .errno,
        libc::EIO
    );
    assert_eq!(mem.object("src/a").as_deref(), Some(&b"a"[..]));
    assert_eq!(mem.object("src/b").as_deref(), Some(&b"b"[..]));
    f.clear();
    f.add(fail(Op::Delete, StoreErrorKind::PermissionDenied));
    assert_eq!(
        fs.unlink(ROOT_INO, "src").await.unwrap_err().errno,
        libc::EISDIR
    );
    let s = fs.lookup(ROOT_INO, "src").await.unwrap();
    assert_eq!(fs.unlink(s.ino, "a").await.unwrap_err().errno, libc::EACCES);
    assert!(mem.object("src/a").is_some());
}

#[tokio::test]
async fn a_staged_edit_whose_upload_fails_keeps_the_old_object_and_can_be_retried() {
    let (mem, f) = faulty();
    put(mem.as_ref(), "log", b"line1\n").await;
    let fs = fs_on(&f);
    let a = fs.lookup(ROOT_INO, "log").await.unwrap();
    let fh = fs.open(a.ino, append()).await.unwrap();
    fs.write(fh, 6, Bytes::from_static(b"line2\n"))
        .await
        .unwrap();
    f.add(Rule::fail(
        Op::Put,
        "log",
        StoreErrorKind::Unavailable,
        Some(1),
    ));
    assert_eq!(fs.fsync(fh).await.unwrap_err().errno, libc::EIO);
    assert_eq!(&mem.object("log").unwrap()[..], b"line1\n");
    // The staged data is still there: the next close uploads it.
    fs.flush(fh, 7).await.unwrap();
    fs.release(fh).await.unwrap();
    assert_eq!(&mem.object("log").unwrap()[..], b"line1\nline2\n");
}

#[tokio::test]
async fn closing_a_reading_descriptor_never_waits_behind_a_read_stuck_in_the_store() {
    // Every fork+exec of a process that holds a file open closes a copy of its descriptor:
    // that close must not wait until a read on the same handle gets its answer (seen as
    // a new program hanging in exec while the store was down).
    let (mem, f) = faulty();
    put(mem.as_ref(), "f", &data(100_000)).await;
    let fs = fs_on(&f);
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let fh = fs.open(a.ino, OpenMode::default()).await.unwrap();
    f.add(Rule {
        op: Some(Op::Get),
        key: String::new(),
        action: Action::Delay(std::time::Duration::from_secs(600)),
        times: None,
    });
    let read = fs.read(fh, 0, 4096);
    tokio::pin!(read);
    let waited = tokio::time::timeout(std::time::Duration::from_millis(300), &mut read).await;
    assert!(waited.is_err(), "the read is waiting for the store");
    let closed = tokio::time::timeout(std::time::Duration::from_secs(5), fs.flush(fh, 4242)).await;
    assert!(closed.is_ok(), "close() waited behind the read");
    closed.unwrap().unwrap();
    let synced = tokio::time::timeout(std::time::Duration::from_secs(5), fs.fsync(fh)).await;
    assert!(synced.is_ok(), "fsync() waited behind the read");
    synced.unwrap().unwrap();
}

#[tokio::test]
async fn a_read_held_back_by_the_store_does_not_hold_up_another_read_of_the_same_handle() {
    let (mem, f) = faulty();
    let bytes = data(64 << 20);
    put(mem.as_ref(), "f", &bytes).await;
    let fs = Arc::new(fs_on(&f));
    let a = fs.lookup(ROOT_INO, "f").await.unwrap();
    let fh = fs.open(a.ino, OpenMode::default()).await.unwrap();
    // The next GET waits 3 s at the store.
    f.add(Rule {
        op: Some(Op::Get),
        key: String::new(),
        action: Action::Delay(Duration::from_secs(3)),
        times: Some(1),
    });
    let slow = tokio::spawn({
        let fs = fs.clone();
        async move { fs.read(fh, 0, 4096).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Shuffled reads of one descriptor by other threads go on meanwhile, right bytes each.
    let started = std::time::Instant::now();
    // (Far from the slow read's stream: reads near it wait for it, to keep a stream whole.)
    for off in [40u64 << 20, 20 << 20, 60 << 20, 30 << 20] {
        let got = tokio::time::timeout(Duration::from_secs(2), fs.read(fh, off, 4096))
            .await
            .expect("a read of the same handle is not held up by the slow one")
            .unwrap();
        let end = (off as usize + 4096).min(bytes.len());
        assert_eq!(&got[..], &bytes[off as usize..end], "at {off}");
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!slow.is_finished(), "the slow read is still at the store");
    assert_eq!(&slow.await.unwrap().unwrap()[..], &bytes[..4096]);
}
