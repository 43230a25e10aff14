//! The writes real programs make, on real FUSE against SeaweedFS: zip archives (seek back to
//! write headers), appends across many open/close cycles, `sed -i` (temp file + rename),
//! `mv` of files and directories, `git init/add/commit/log`, truncate. Every result is
//! checked again through a fresh mount, so it really is in the bucket.

mod common;

use std::fs;

use common::*;

fn remount(s3: &S3, prefix: &str) -> Mount {
    mount_s3(s3, prefix, &[])
}

#[test]
fn python_zipfile_writes_an_archive_that_reads_back() {
    let s3 = s3();
    let prefix = unique("zip");
    let m = remount(&s3, &prefix);
    let mp = m.path.display();
    sh(&format!(
        "python3 - <<'PY'\nimport zipfile\nwith zipfile.ZipFile('{mp}/a.zip', 'w', zipfile.ZIP_DEFLATED) as z:\n    for i in range(20):\n        z.writestr(f'member{{i}}.txt', ('line %d\\n' % i) * 1000)\nPY"
    ));
    drop(m);
    let m = remount(&s3, &prefix);
    let out = sh(&format!(
        "python3 -c \"import zipfile; z = zipfile.ZipFile('{}/a.zip'); assert z.testzip() is None; print(len(z.namelist()))\"",
        m.path.display()
    ));
    assert_eq!(out.trim(), "20");
}

#[test]
fn numpy_savez_writes_an_archive_that_loads_back() {
    let s3 = s3();
    if !run_sh("python3 -c 'import numpy'").status.success() {
        panic!("numpy is not installed: .ci/run installs it from PyPI");
    }
    let prefix = unique("npz");
    let m = remount(&s3, &prefix);
    sh(&format!(
        "python3 -c \"import numpy as np; np.savez('{}/arrays.npz', a=np.arange(100000), b=np.ones((300, 300)))\"",
        m.path.display()
    ));
    drop(m);
    let m = remount(&s3, &prefix);
    let out = sh(&format!(
        "python3 -c \"import numpy as np; d = np.load('{}/arrays.npz'); print(int(d['a'].sum()), float(d['b'].sum()))\"",
        m.path.display()
    ));
    assert_eq!(out.trim(), "4999950000 90000.0");
}

#[test]
fn appends_across_many_open_close_cycles_accumulate() {
    let s3 = s3();
    let prefix = unique("append");
    let m = remount(&s3, &prefix);
    let log = m.join("events.log");
    sh(&format!(
        "for i in $(seq 1 50); do echo \"event $i\" >> {}; done",
        log.display()
    ));
    // And through Python's append mode, as TensorBoard's writer does.
    sh(&format!(
        "python3 -c \"\nfor i in range(51, 101):\n    with open('{}', 'ab') as f: f.write(b'event %d\\n' % i)\n\"",
        log.display()
    ));
    drop(m);
    let m = remount(&s3, &prefix);
    let text = fs::read_to_string(m.join("events.log")).unwrap();
    let lines: Vec<_> = text.lines().collect();
    assert_eq!(lines.len(), 100);
    assert_eq!(lines[0], "event 1");
    assert_eq!(lines[99], "event 100");
}

#[test]
fn sed_in_place_and_truncate_edit_files() {
    let s3 = s3();
    let prefix = unique("sed");
    let m = remount(&s3, &prefix);
    fs::write(m.join("conf.ini"), "name=old\nsize=1\n").unwrap();
    sh(&format!(
        "sed -i 's/old/new/' {}",
        m.join("conf.ini").display()
    ));
    fs::write(m.join("t.bin"), vec![7u8; 1000]).unwrap();
    sh(&format!("truncate -s 10 {}", m.join("t.bin").display()));
    drop(m);
    let m = remount(&s3, &prefix);
    assert_eq!(
        fs::read_to_string(m.join("conf.ini")).unwrap(),
        "name=new\nsize=1\n"
    );
    assert_eq!(fs::read(m.join("t.bin")).unwrap(), vec![7u8; 10]);
}

#[test]
fn mv_moves_files_and_small_directories() {
    let s3 = s3();
    let prefix = unique("mv");
    let m = remount(&s3, &prefix);
    fs::create_dir_all(m.join("a/b")).unwrap();
    fs::write(m.join("a/b/f.txt"), b"deep").unwrap();
    fs::write(m.join("a/top.txt"), b"top").unwrap();
    fs::write(m.join("file.txt"), b"file").unwrap();
    fs::write(m.join("target.txt"), b"to be replaced").unwrap();
    sh(&format!(
        "cd {} && mv file.txt target.txt && mv a moved",
        m.path.display()
    ));
    drop(m);
    let m = remount(&s3, &prefix);
    assert_eq!(fs::read(m.join("target.txt")).unwrap(), b"file");
    assert!(fs::metadata(m.join("file.txt")).is_err());
    assert_eq!(fs::read(m.join("moved/b/f.txt")).unwrap(), b"deep");
    assert_eq!(fs::read(m.join("moved/top.txt")).unwrap(), b"top");
    assert!(fs::metadata(m.join("a")).is_err());
}

#[test]
fn git_init_add_commit_log_work_in_the_mount() {
    let s3 = s3();
    let prefix = unique("git");
    let m = remount(&s3, &prefix);
    let repo = m.join("repo");
    sh(&format!(
        "mkdir {r} && cd {r} && git init -q -b main && git config user.email t@example.org && git config user.name t \
         && echo hello > README && mkdir src && echo 'fn main() {{}}' > src/main.rs && git add . && git commit -q -m first \
         && echo more >> README && git commit -q -am second",
        r = repo.display()
    ));
    drop(m);
    let m = remount(&s3, &prefix);
    let log = sh(&format!(
        "cd {} && git log --format=%s && git status --porcelain && git fsck >/dev/null",
        m.join("repo").display()
    ));
    assert_eq!(log.lines().collect::<Vec<_>>(), ["second", "first"]);
}

#[test]
fn files_in_parents_that_exist_only_as_prefixes_can_be_created() {
    let s3 = s3();
    let prefix = unique("parents");
    let store = s3.store();
    block_on(store.put(
        &format!("{prefix}x/y/existing"),
        pail::store::Payload::from(b"e".as_slice()),
        &pail::store::PutOptions::default(),
    ))
    .unwrap();
    let m = remount(&s3, &prefix);
    fs::write(m.join("x/y/new"), b"n").unwrap();
    fs::create_dir_all(m.join("p/q/r")).unwrap();
    fs::write(m.join("p/q/r/f"), b"f").unwrap();
    drop(m);
    let m = remount(&s3, &prefix);
    assert_eq!(fs::read(m.join("x/y/new")).unwrap(), b"n");
    assert_eq!(fs::read(m.join("p/q/r/f")).unwrap(), b"f");
}

#[test]
fn rsync_and_tar_round_trip_symlinks_and_modes_with_persist_metadata() {
    let s3 = s3();
    let prefix = unique("rsync");
    let work = tempfile::tempdir().unwrap();
    let w = work.path().display();
    sh(&format!(
        "mkdir -p {w}/src/sub && echo one > {w}/src/one.txt && echo two > {w}/src/sub/two.sh && chmod 755 {w}/src/sub/two.sh \
         && chmod 600 {w}/src/one.txt && ln -s one.txt {w}/src/link && ln -s sub/two.sh {w}/src/sub-link \
         && tar -C {w} -cf {w}/src.tar src"
    ));
    let listing = |dir: &str| {
        sh(&format!(
            "cd {dir} && find . -printf '%y %m %p %l\\n' | sort"
        ))
    };
    {
        let m = mount_s3(&s3, &prefix, &["--persist-metadata"]);
        sh(&format!("rsync -a {w}/src/ {}/synced/", m.path.display()));
        sh(&format!(
            "mkdir {mp}/untar && tar -C {mp}/untar -xf {w}/src.tar",
            mp = m.path.display()
        ));
    }
    let m = mount_s3(&s3, &prefix, &["--persist-metadata"]);
    sh(&format!("rsync -a {}/synced/ {w}/back/", m.path.display()));
    sh(&format!("diff -r {w}/src {w}/back"));
    assert_eq!(listing(&format!("{w}/src")), listing(&format!("{w}/back")));
    assert_eq!(
        listing(&format!("{w}/src")),
        listing(&format!("{}/untar/src", m.path.display()))
    );
    assert_eq!(
        fs::read_link(m.join("synced/link")).unwrap().to_str(),
        Some("one.txt")
    );
}

/// An append to a large object, or an edit near its end, sends only the parts from the
/// first changed one: the unchanged ones are copied by the server (UploadPartCopy pinned
/// to the version that was read). Edits anywhere else still upload the whole file, and
/// every result reads back exactly.
#[test]
fn appends_to_a_large_object_send_only_the_changed_parts() {
    use common::proxy::Proxy;
    use std::io::{Seek, SeekFrom, Write};

    const MIB: usize = 1 << 20;
    let s3 = s3();
    let prefix = unique("bigappend");
    let key = format!("{prefix}big.bin");
    let mut want = data(20 * MIB + 123, 11);
    let store = s3.store();
    block_on(store.put(&key, Payload::from(want.clone()), &PutOptions::default())).unwrap();
    let proxy = Proxy::start(&s3.endpoint);
    let mut args = vec!["--endpoint-url".to_string(), proxy.endpoint.clone()];
    args.extend(["--part-size".to_string(), "5M".to_string()]);
    let m = mount(&s3.url(&prefix), &args, &s3.env());
    let path = m.join("big.bin");
    let stored = || block_on(store.get_all(&key)).unwrap().unwrap().to_vec();
    // close(2), failing the test if it reports an error (File's drop ignores it).
    let close = |f: fs::File| {
        use std::os::fd::IntoRawFd;
        // SAFETY: closing a descriptor this test owns.
        assert_eq!(
            unsafe { libc::close(f.into_raw_fd()) },
            0,
            "close failed: {}",
            std::io::Error::last_os_error()
        );
    };
    proxy.take_traffic();

    // An append: 4 parts copied, the last one sent.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"appended once\n").unwrap();
    close(f);
    want.extend_from_slice(b"appended once\n");
    let (sent, received) = proxy.take_traffic();
    assert!(sent < MIB as u64, "an append sent {sent} bytes");
    assert!(
        received < 2 * MIB as u64,
        "an append fetched {received} bytes"
    );
    assert!(stored() == want, "the appended object differs");

    // Two appends on one handle with an fsync between: the second starts from the version
    // the first made.
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(b"second\n").unwrap();
    f.sync_all().unwrap();
    f.write_all(b"third\n").unwrap();
    close(f);
    want.extend_from_slice(b"second\nthird\n");
    let (sent, _) = proxy.take_traffic();
    assert!(sent < MIB as u64, "two appends sent {sent} bytes");
    let got = stored();
    let diff = got.iter().zip(&want).position(|(a, b)| a != b);
    assert!(
        got == want,
        "the twice-appended object differs: {} vs {} bytes, first difference at {diff:?}",
        got.len(),
        want.len()
    );
    assert_eq!(
        fs::read(&path).unwrap(),
        want,
        "read back through the mount"
    );

    // An edit in the fourth part: three parts copied, the rest sent.
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(15 * MIB as u64 + 5)).unwrap();
    f.write_all(b"EDIT").unwrap();
    close(f);
    want[15 * MIB + 5..15 * MIB + 9].copy_from_slice(b"EDIT");
    let (sent, _) = proxy.take_traffic();
    assert!(
        sent < 6 * MIB as u64,
        "an edit in the last parts sent {sent} bytes"
    );
    assert!(stored() == want, "the object edited near its end differs");

    // An edit in the first part: everything is sent again.
    let mut f = fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(MIB as u64)).unwrap();
    f.write_all(b"FRONT").unwrap();
    close(f);
    want[MIB..MIB + 5].copy_from_slice(b"FRONT");
    let (sent, _) = proxy.take_traffic();
    assert!(
        sent > 20 * MIB as u64,
        "an edit at the front sent only {sent} bytes"
    );
    assert!(stored() == want, "the object edited at its front differs");
    drop(m);
    let m = remount(&s3, &prefix);
    assert!(fs::read(m.join("big.bin")).unwrap() == want);
}

/// If another writer replaces a large object while it is open for appending, the append's
/// close() fails and the other writer's object stays as it was: the server-side copy of
/// the unchanged prefix is pinned to the version that was opened.
#[test]
fn an_append_to_an_object_replaced_meanwhile_fails_and_changes_nothing() {
    use std::io::Write;

    const MIB: usize = 1 << 20;
    let s3 = s3();
    let prefix = unique("bigreplaced");
    let key = format!("{prefix}big.bin");
    let store = s3.store();
    block_on(store.put(
        &key,
        Payload::from(data(12 * MIB, 1)),
        &PutOptions::default(),
    ))
    .unwrap();
    let m = mount_s3(&s3, &prefix, &["--part-size", "5M"]);
    let mut f = fs::OpenOptions::new()
        .append(true)
        .open(m.join("big.bin"))
        .unwrap();
    f.write_all(b"mine\n").unwrap();
    let theirs = data(12 * MIB, 2);
    block_on(store.put(&key, Payload::from(theirs.clone()), &PutOptions::default())).unwrap();
    use std::os::fd::IntoRawFd;
    // SAFETY: closing a descriptor this test owns.
    let rc = unsafe { libc::close(f.into_raw_fd()) };
    let err = std::io::Error::last_os_error();
    assert_eq!(rc, -1, "close() succeeded over another writer's object");
    assert_eq!(err.raw_os_error(), Some(libc::ESTALE), "{err}");
    let stored = block_on(store.get_all(&key)).unwrap().unwrap();
    assert!(stored == theirs, "the other writer's object was changed");
}
