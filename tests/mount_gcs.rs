//! `pail mount gs://…` through the native GCS backend against fake-gcs-server on 127.0.0.1.
//! (The emulator implements neither the XML multipart API nor directory-marker listings, so
//! files stay under one part here and empty directories are checked on S3.)

mod common;

use std::fs;

use common::*;

fn mount_gcs(g: &Gcs, prefix: &str) -> Mount {
    let args = vec![
        "--endpoint-url".to_string(),
        g.endpoint.clone(),
        "--service-account-file".to_string(),
        g.key_file.display().to_string(),
    ];
    mount(&format!("gs://{}/{prefix}", g.bucket), &args, &[])
}

#[test]
fn files_and_directories_round_trip_through_gcs() {
    let g = gcs();
    let prefix = unique("gcs");
    {
        let m = mount_gcs(&g, &prefix);
        fs::write(m.join("a.txt"), b"hello gcs").unwrap();
        fs::create_dir_all(m.join("x/y")).unwrap();
        let blob = data(3 << 20, 3);
        fs::write(m.join("x/y/blob"), &blob).unwrap();
        assert_eq!(fs::read(m.join("x/y/blob")).unwrap(), blob);
        fs::write(m.join("gone"), b"x").unwrap();
        fs::remove_file(m.join("gone")).unwrap();
    }
    let m = mount_gcs(&g, &prefix);
    assert_eq!(fs::read(m.join("a.txt")).unwrap(), b"hello gcs");
    assert_eq!(fs::read(m.join("x/y/blob")).unwrap(), data(3 << 20, 3));
    let mut names: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["a.txt", "x"]);
    fs::write(m.join("a.txt"), b"overwritten").unwrap();
    assert_eq!(fs::read(m.join("a.txt")).unwrap(), b"overwritten");
}

#[test]
fn a_missing_gcs_bucket_is_a_clear_error() {
    let g = gcs();
    let args = vec![
        "--endpoint-url".to_string(),
        g.endpoint.clone(),
        "--service-account-file".to_string(),
        g.key_file.display().to_string(),
    ];
    let err = try_mount("gs://no-such-gcs-bucket/", &args, &[])
        .err()
        .expect("must fail");
    assert!(err.contains("no-such-gcs-bucket"), "{err}");
}

#[test]
fn symlinks_and_modes_use_object_metadata_on_gcs() {
    let g = gcs();
    let prefix = unique("gcslink");
    let args = vec![
        "--endpoint-url".to_string(),
        g.endpoint.clone(),
        "--service-account-file".to_string(),
        g.key_file.display().to_string(),
        "--persist-metadata".to_string(),
    ];
    let source = format!("gs://{}/{prefix}", g.bucket);
    {
        let m = mount(&source, &args, &[]);
        fs::write(m.join("target.txt"), b"t").unwrap();
        std::os::unix::fs::symlink("target.txt", m.join("link")).unwrap();
        sh(&format!("chmod 600 {}", m.join("target.txt").display()));
    }
    let m = mount(&source, &args, &[]);
    assert_eq!(
        fs::read_link(m.join("link")).unwrap().to_str(),
        Some("target.txt")
    );
    assert_eq!(fs::read(m.join("link")).unwrap(), b"t");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        fs::metadata(m.join("target.txt"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
}
