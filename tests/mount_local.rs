//! `pail mount file://…`: a local directory as a bucket, the README's zero-setup path.

mod common;

use std::fs;

use common::*;

#[test]
fn a_local_directory_mounts_as_a_bucket() {
    let bucket = tempfile::tempdir().unwrap();
    fs::create_dir(bucket.path().join("d")).unwrap();
    fs::write(bucket.path().join("d/f.txt"), b"local").unwrap();
    let source = format!("file://{}", bucket.path().display());
    let m = mount(&source, &[], &[]);
    assert_eq!(fs::read(m.join("d/f.txt")).unwrap(), b"local");
    fs::write(m.join("new.txt"), b"written").unwrap();
    assert_eq!(fs::read(bucket.path().join("new.txt")).unwrap(), b"written");
    fs::create_dir(m.join("empty")).unwrap();
    assert!(bucket.path().join("empty").is_dir());
    fs::remove_dir(m.join("empty")).unwrap();
    assert!(!bucket.path().join("empty").exists());
    fs::remove_file(m.join("d/f.txt")).unwrap();
    assert!(!bucket.path().join("d/f.txt").exists());
    let out = sh(&format!("ls {}", m.path.display()));
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["d", "new.txt"]);
}

#[test]
fn a_missing_local_bucket_names_the_directory() {
    let err = try_mount("file:///definitely/not/here", &[], &[])
        .err()
        .expect("must fail");
    assert!(err.contains("/definitely/not/here"), "{err}");
}

#[test]
fn closing_a_file_opened_for_reading_does_not_wait_for_the_mount_process() {
    let bucket = tempfile::tempdir().unwrap();
    fs::write(bucket.path().join("r.txt"), b"read only").unwrap();
    let m = mount(&format!("file://{}", bucket.path().display()), &[], &[]);
    let read = fs::File::open(m.join("r.txt")).unwrap();
    let written = fs::OpenOptions::new()
        .append(true)
        .open(m.join("r.txt"))
        .unwrap();
    let pid = m.pid() as i32;
    // SAFETY: pausing and resuming the mount process this test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let closed = std::thread::spawn(move || drop(read));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !closed.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let read_closed = closed.is_finished();
    // A handle that may have written still asks the mount at close() (FLUSH stores it).
    let closing = std::thread::spawn(move || drop(written));
    std::thread::sleep(std::time::Duration::from_millis(300));
    let write_waited = !closing.is_finished();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    closing.join().unwrap();
    assert!(
        read_closed,
        "close() of a read-only file waited for the stopped mount process"
    );
    assert!(write_waited, "close() of a writable file did not flush");
    assert_eq!(fs::read(m.join("r.txt")).unwrap(), b"read only");
}
