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
        object_store::PutPayload::from_static(b"e"),
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
