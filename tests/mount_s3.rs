//! `pail mount` on the real kernel FUSE against a real S3 server (SeaweedFS), driven with
//! std::fs and real tools (cp, tar, sha256sum, python3, ls).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;

use common::*;
use pail::store::{Payload, PutOptions};

#[test]
fn files_written_read_overwritten_and_deleted_land_in_the_bucket() {
    let s3 = s3();
    let prefix = unique("rw");
    let m = mount_s3(&s3, &prefix, &[]);
    let store = s3.store();

    fs::write(m.join("a.txt"), b"hello").unwrap();
    assert_eq!(fs::read(m.join("a.txt")).unwrap(), b"hello");
    let info = block_on(store.head(&format!("{prefix}a.txt")))
        .unwrap()
        .unwrap();
    assert_eq!(info.size, 5);

    fs::write(m.join("a.txt"), b"bye").unwrap();
    assert_eq!(fs::read(m.join("a.txt")).unwrap(), b"bye");
    let meta = fs::metadata(m.join("a.txt")).unwrap();
    assert_eq!((meta.len(), meta.mode() & 0o777), (3, 0o644));

    fs::remove_file(m.join("a.txt")).unwrap();
    assert!(
        block_on(store.head(&format!("{prefix}a.txt")))
            .unwrap()
            .is_none()
    );
    let e = fs::read(m.join("a.txt")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn directories_persist_and_only_empty_ones_can_be_removed() {
    let s3 = s3();
    let prefix = unique("dirs");
    {
        let m = mount_s3(&s3, &prefix, &[]);
        fs::create_dir(m.join("new")).unwrap();
        fs::create_dir_all(m.join("a/b/c")).unwrap();
        fs::write(m.join("a/b/c/f"), b"deep").unwrap();
        let e = fs::create_dir(m.join("new")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let e = fs::remove_dir(m.join("a/b/c")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOTEMPTY));
    }
    // A fresh mount sees the empty directory and the tree.
    let m = mount_s3(&s3, &prefix, &[]);
    assert!(fs::metadata(m.join("new")).unwrap().is_dir());
    assert_eq!(fs::read(m.join("a/b/c/f")).unwrap(), b"deep");
    fs::remove_dir(m.join("new")).unwrap();
    fs::remove_file(m.join("a/b/c/f")).unwrap();
    fs::remove_dir(m.join("a/b/c")).unwrap();
    let m2 = mount_s3(&s3, &prefix, &[]);
    assert!(fs::metadata(m2.join("new")).is_err());
    assert!(fs::metadata(m2.join("a/b/c")).is_err());
}

#[test]
fn a_multipart_file_round_trips_with_the_same_checksum() {
    let s3 = s3();
    let prefix = unique("big");
    let m = mount_s3(&s3, &prefix, &[]);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("big.bin");
    // 120 MiB: 15 parts of 8 MiB, uploaded while cp is still writing.
    let mut f = fs::File::create(&src).unwrap();
    for i in 0..30 {
        f.write_all(&data(4 << 20, i)).unwrap();
    }
    drop(f);
    sh(&format!(
        "cp {} {}",
        src.display(),
        m.join("big.bin").display()
    ));
    let sums = sh(&format!(
        "sha256sum {} {} | cut -d' ' -f1",
        src.display(),
        m.join("big.bin").display()
    ));
    let lines: Vec<_> = sums.lines().collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0], lines[1]);
    let info = block_on(s3.store().head(&format!("{prefix}big.bin")))
        .unwrap()
        .unwrap();
    assert_eq!(info.size, 120 << 20);
    // A fresh mount reads it back from the server (not the page cache).
    let m2 = mount_s3(&s3, &prefix, &[]);
    let again = sh(&format!(
        "sha256sum {} | cut -d' ' -f1",
        m2.join("big.bin").display()
    ));
    assert_eq!(again.trim(), lines[0]);
}

#[test]
fn random_reads_return_the_right_bytes() {
    let s3 = s3();
    let prefix = unique("random");
    let bytes = data(3 << 20, 7);
    block_on(s3.store().put(
        &format!("{prefix}r.bin"),
        Payload::from(bytes.clone()),
        &PutOptions::default(),
    ))
    .unwrap();
    let m = mount_s3(&s3, &prefix, &[]);
    let mut f = fs::File::open(m.join("r.bin")).unwrap();
    use std::io::{Seek, SeekFrom};
    for off in [2_000_000u64, 5, 1_048_570, 3_145_000, 777_777] {
        f.seek(SeekFrom::Start(off)).unwrap();
        let mut buf = vec![0u8; 4096];
        let n = f.read(&mut buf).unwrap();
        let want = &bytes[off as usize..(off as usize + 4096).min(bytes.len())];
        assert_eq!(&buf[..n], &want[..n], "at {off}");
        assert!(n > 0);
    }
}

#[test]
fn listings_of_ten_thousand_entries_are_complete_in_ls_and_readdir() {
    let s3 = s3();
    let prefix = unique("many");
    let store = s3.store();
    block_on(async {
        use futures::StreamExt;
        futures::stream::iter(0..10_050)
            .map(|i| {
                let store = store.clone();
                let key = format!("{prefix}d/f{i:05}");
                async move {
                    store
                        .put(&key, Payload::from(b"x".as_slice()), &PutOptions::default())
                        .await
                }
            })
            .buffer_unordered(64)
            .for_each(|r| async move {
                r.unwrap();
            })
            .await;
    });
    let m = mount_s3(&s3, &prefix, &[]);
    let n = fs::read_dir(m.join("d")).unwrap().count();
    assert_eq!(n, 10_050);
    let out = sh(&format!("ls -l {} | tail -n +2", m.join("d").display()));
    let lines: Vec<_> = out.lines().collect();
    assert_eq!(lines.len(), 10_050);
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("-rw-r--r--") && l.contains(" 1 ")),
        "{}",
        lines[0]
    );
    assert!(lines[0].ends_with("f00000") && lines[10_049].ends_with("f10049"));
}

#[test]
fn a_prefix_mount_shows_and_writes_only_under_its_prefix() {
    let s3 = s3();
    let base = unique("prefix");
    let store = s3.store();
    block_on(store.put(
        &format!("{base}inside/in.txt"),
        Payload::from(b"in".as_slice()),
        &PutOptions::default(),
    ))
    .unwrap();
    block_on(store.put(
        &format!("{base}outside.txt"),
        Payload::from(b"out".as_slice()),
        &PutOptions::default(),
    ))
    .unwrap();
    // The prefix may come in the URL or as --prefix.
    let mut args = s3.args();
    args.extend(["--prefix".to_string(), "inside".to_string()]);
    let m = mount(&s3.url(&base), &args, &s3.env());
    let names: Vec<_> = fs::read_dir(&m.path)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, ["in.txt"]);
    fs::write(m.join("w.txt"), b"w").unwrap();
    assert!(
        block_on(store.head(&format!("{base}inside/w.txt")))
            .unwrap()
            .is_some()
    );
}

#[test]
fn a_read_only_mount_refuses_writes_with_erofs() {
    let s3 = s3();
    let prefix = unique("ro");
    block_on(s3.store().put(
        &format!("{prefix}f"),
        Payload::from(b"data".as_slice()),
        &PutOptions::default(),
    ))
    .unwrap();
    let m = mount_s3(&s3, &prefix, &["--read-only"]);
    assert_eq!(fs::read(m.join("f")).unwrap(), b"data");
    for e in [
        fs::write(m.join("new"), b"x").unwrap_err(),
        fs::create_dir(m.join("d")).unwrap_err(),
        fs::remove_file(m.join("f")).unwrap_err(),
        fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(m.join("f"))
            .unwrap_err(),
    ] {
        assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    }
}

#[test]
fn a_wrong_key_is_refused_at_mount_time_with_a_clear_error() {
    let s3 = s3();
    let mut env = s3.env();
    env[1].1 = "not-the-secret".into();
    let err = try_mount(&s3.url(&unique("key")), &s3.args(), &env)
        .err()
        .expect("mount with a wrong secret must fail");
    assert!(err.contains("access denied"), "{err}");
    assert!(err.contains(&s3.bucket), "{err}");
}

#[test]
fn a_second_mount_on_a_mounted_point_is_refused_and_stacks_nothing() {
    let s3 = s3();
    let m = mount_s3(&s3, &unique("twice"), &[]);
    let mp = m.path.display().to_string();
    let out = std::process::Command::new(pail_bin())
        .args(["mount", &s3.url(&unique("twice")), &mp])
        .args(s3.args())
        .envs(s3.env())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("already mounted") && err.contains(&mp),
        "{err}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert_eq!(mounts.lines().filter(|l| l.contains(&mp)).count(), 1);
}

#[test]
fn errors_of_common_mistakes_are_one_line_naming_the_cause_and_the_fix() {
    let s3 = s3();
    let mut env = s3.env();
    env[1].1 = "not-the-secret".into();
    let err = try_mount(&s3.url(&unique("msg")), &s3.args(), &env)
        .err()
        .unwrap();
    let last = err
        .lines()
        .rfind(|l| l.starts_with("pail:"))
        .unwrap_or(&err);
    assert!(last.contains("AWS_SECRET_ACCESS_KEY"), "{err}");
    assert!(!last.contains("\"\""), "an empty key in {err}");
    let err = try_mount("s3://no-such-bucket-pail/", &s3.args(), &s3.env())
        .err()
        .unwrap();
    assert!(err.contains("check the bucket name"), "{err}");
    let args = [
        "--endpoint-url".to_string(),
        "http://127.0.0.1:1".to_string(),
        "--max-retries".into(),
        "0".into(),
    ];
    let err = try_mount(&s3.url(&unique("msg")), &args, &s3.env())
        .err()
        .unwrap();
    assert!(
        err.contains("unreachable") || err.contains("unavailable"),
        "{err}"
    );
    assert!(err.contains("--endpoint-url"), "{err}");
}

#[test]
fn a_missing_bucket_is_refused_at_mount_time_with_a_clear_error() {
    let s3 = s3();
    let err = try_mount("s3://no-such-bucket-pail/", &s3.args(), &s3.env())
        .err()
        .expect("mount of a missing bucket must fail");
    assert!(err.contains("no-such-bucket-pail"), "{err}");
    assert!(
        err.contains("not found") || err.contains("NoSuchBucket"),
        "{err}"
    );
}

#[test]
fn bad_flags_name_the_bad_value() {
    let out = std::process::Command::new(pail_bin())
        .args(["mount", "s3://bucket-x/", "/tmp", "--part-size", "12Q"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("12Q"));
    let out = std::process::Command::new(pail_bin())
        .args(["mount", "ftp://bucket-x/", "/tmp"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("ftp://bucket-x/"));
}

#[test]
fn real_tools_work_in_the_mount() {
    let s3 = s3();
    let prefix = unique("tools");
    let m = mount_s3(&s3, &prefix, &[]);
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display();
    let mp = m.path.display();
    sh(&format!(
        "mkdir -p {w}/tree/sub/deeper && for i in $(seq 1 20); do head -c $((i * 1000)) /dev/urandom > {w}/tree/sub/f$i; done && \
         echo top > {w}/tree/top.txt && head -c 3000000 /dev/urandom > {w}/tree/sub/deeper/blob"
    ));
    // cp -r in, diff, tar -x from an archive, sha256sum, python3 reading and writing.
    sh(&format!(
        "cp -r {w}/tree {mp}/copied && diff -r {w}/tree {mp}/copied"
    ));
    sh(&format!(
        "tar -C {w} -cf {w}/t.tar tree && mkdir {mp}/untar && tar -C {mp}/untar -xf {w}/t.tar && diff -r {w}/tree {mp}/untar/tree"
    ));
    let a = sh(&format!(
        "cd {w}/tree && find . -type f | sort | xargs sha256sum"
    ));
    let b = sh(&format!(
        "cd {mp}/untar/tree && find . -type f | sort | xargs sha256sum"
    ));
    assert_eq!(a, b);
    sh(&format!(
        "python3 -c \"\nimport json\nwith open('{mp}/data.json', 'w') as f: json.dump({{'k': list(range(1000))}}, f)\nwith open('{mp}/data.json') as f: assert json.load(f)['k'][-1] == 999\n\""
    ));
    // And the bucket really has it: a fresh mount sees the same tree.
    let m2 = mount_s3(&s3, &prefix, &[]);
    sh(&format!("diff -r {w}/tree {}/copied", m2.path.display()));
}

#[test]
fn sigterm_unmounts_cleanly() {
    let s3 = s3();
    let mut m = mount_s3(&s3, &unique("sigterm"), &[]);
    assert!(is_mounted(&m.path));
    assert!(m.terminate(), "pail must exit 0 on SIGTERM");
    assert!(!is_mounted(&m.path), "the mount must be gone after SIGTERM");
}

#[test]
fn umount_from_outside_ends_the_process() {
    let s3 = s3();
    let mut m = mount_s3(&s3, &unique("umount"), &[]);
    sh(&format!("umount {}", m.path.display()));
    assert!(m.terminate(), "pail must exit 0: {}", m.log_text());
    assert!(!is_mounted(&m.path));
}

#[test]
fn background_mode_returns_once_mounted() {
    let s3 = s3();
    let dir = tempfile::tempdir().unwrap();
    let mp = dir.path();
    let out = std::process::Command::new(pail_bin())
        .arg("mount")
        .arg(s3.url(&unique("bg")))
        .arg(mp)
        .args(s3.args())
        .arg("--background")
        .env_clear()
        .envs(s3.env())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(is_mounted(mp));
    fs::write(mp.join("f"), b"bg").unwrap();
    assert_eq!(fs::read(mp.join("f")).unwrap(), b"bg");
    sh(&format!("umount {}", mp.display()));
    assert!(!is_mounted(mp));
}

#[test]
fn a_seek_back_in_a_small_new_file_is_kept() {
    let s3 = s3();
    let prefix = unique("seek");
    let m = mount_s3(&s3, &prefix, &[]);
    let mut f = fs::File::create(m.join("f")).unwrap();
    f.write_all(b"abc").unwrap();
    use std::io::{Seek, SeekFrom};
    f.seek(SeekFrom::Start(100)).unwrap();
    f.write_all(b"x").unwrap();
    f.seek(SeekFrom::Start(0)).unwrap();
    f.write_all(b"A").unwrap();
    drop(f);
    let m2 = mount_s3(&s3, &prefix, &[]);
    let got = fs::read(m2.join("f")).unwrap();
    assert_eq!(got.len(), 101);
    assert_eq!(&got[..3], b"Abc");
    assert_eq!(got[100], b'x');
}
