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
