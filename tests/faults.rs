//! Faults between pail and the store, injected by a proxy on 127.0.0.1 in front of the S3
//! test server: transient errors are retried, permanent ones are not, a hung or cut
//! connection fails the read instead of hanging it or returning wrong bytes, a failed upload
//! fails close() and leaves nothing behind, an object replaced mid-read fails the read.

mod common;

use std::fs;
use std::io::Read;
use std::time::{Duration, Instant};

use common::proxy::{Fault, Proxy};
use common::*;
use pail::store::{Payload, PutOptions};

fn mount_via(proxy: &Proxy, s3: &S3, prefix: &str, extra: &[&str]) -> Result<Mount, String> {
    let mut args = vec!["--endpoint-url".to_string(), proxy.endpoint.clone()];
    args.extend(extra.iter().map(|s| s.to_string()));
    try_mount(&s3.url(prefix), &args, &s3.env())
}

fn put(s3: &S3, key: &str, data: Vec<u8>) {
    block_on(
        s3.store()
            .put(key, Payload::from(data), &PutOptions::default()),
    )
    .unwrap();
}

#[test]
fn transient_errors_are_retried() {
    let s3 = s3();
    let prefix = unique("retry");
    put(&s3, &format!("{prefix}f"), b"survived".to_vec());
    let proxy = Proxy::start(&s3.endpoint);
    proxy.add(Some("GET"), "", Fault::Status(503), Some(2));
    proxy.add(Some("HEAD"), "", Fault::Status(500), Some(1));
    proxy.add(Some("GET"), "", Fault::Reset, Some(1));
    let m = mount_via(&proxy, &s3, &prefix, &[]).unwrap();
    assert_eq!(fs::read(m.join("f")).unwrap(), b"survived");
    assert_eq!(proxy.hits(), 4);
}

#[test]
fn permanent_errors_are_not_retried() {
    let s3 = s3();
    let proxy = Proxy::start(&s3.endpoint);
    proxy.add(Some("GET"), "list-type", Fault::Status(403), None);
    let start = Instant::now();
    let err = mount_via(&proxy, &s3, &unique("perm"), &[])
        .err()
        .expect("403 must fail the mount");
    assert!(err.contains("access denied"), "{err}");
    assert_eq!(proxy.hits(), 1, "a 403 is not retried");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn a_response_cut_mid_body_fails_the_read_instead_of_returning_wrong_bytes() {
    let s3 = s3();
    let prefix = unique("cut");
    let body = data(1 << 20, 5);
    put(&s3, &format!("{prefix}blob"), body.clone());
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(&proxy, &s3, &prefix, &["--max-retries", "2"]).unwrap();
    let meta = fs::metadata(m.join("blob")).unwrap();
    assert_eq!(meta.len(), 1 << 20);
    proxy.add(Some("GET"), "blob", Fault::Cut(5000), None);
    let e = fs::read(m.join("blob")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    proxy.clear();
    let m2 = mount_via(&proxy, &s3, &prefix, &[]).unwrap();
    assert_eq!(fs::read(m2.join("blob")).unwrap(), body);
}

#[test]
fn a_hung_server_does_not_hang_the_reader() {
    let s3 = s3();
    let prefix = unique("hang");
    put(&s3, &format!("{prefix}slow"), b"slow".to_vec());
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(
        &proxy,
        &s3,
        &prefix,
        &["--request-timeout", "1", "--max-retries", "1"],
    )
    .unwrap();
    fs::metadata(m.join("slow")).unwrap();
    proxy.add(
        Some("GET"),
        "slow",
        Fault::Delay(Duration::from_secs(30)),
        None,
    );
    let start = Instant::now();
    let e = fs::read(m.join("slow")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "took {:?}",
        start.elapsed()
    );
}

#[test]
fn a_program_started_while_a_read_waits_for_the_store_starts_at_once() {
    // exec() closes the new program's copy of every descriptor (O_CLOEXEC), which reaches
    // pail as a close of the file: it must not wait for the read on the same file.
    use std::os::unix::fs::FileExt;
    let s3 = s3();
    let prefix = unique("exec");
    put(&s3, &format!("{prefix}big"), data(8 << 20, 3));
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(&proxy, &s3, &prefix, &["--request-timeout", "60"]).unwrap();
    let f = std::sync::Arc::new(fs::File::open(m.join("big")).unwrap());
    let mut first = vec![0u8; 4096];
    f.read_exact_at(&mut first, 0).unwrap();
    proxy.add(
        Some("GET"),
        "big",
        Fault::Delay(Duration::from_secs(12)),
        None,
    );
    let reader = {
        let f = f.clone();
        std::thread::spawn(move || {
            let mut far = vec![0u8; 4096];
            f.read_exact_at(&mut far, 7 << 20).map(|()| far)
        })
    };
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let status = std::process::Command::new("true").status().unwrap();
    let took = start.elapsed();
    assert!(status.success());
    assert!(
        took < Duration::from_secs(5),
        "starting a program took {took:?}: its exec waited behind the read"
    );
    let far = reader.join().unwrap().unwrap();
    assert_eq!(far, data(8 << 20, 3)[7 << 20..(7 << 20) + 4096]);
}

#[test]
fn a_failed_upload_fails_close_and_leaves_no_object() {
    let s3 = s3();
    let prefix = unique("upfail");
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(&proxy, &s3, &prefix, &["--max-retries", "1"]).unwrap();
    proxy.add(Some("PUT"), "lost", Fault::Status(500), None);
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    // close() reports it (Rust's File would drop the error, so close by hand)...
    let mut f = fs::File::create(m.join("lost.txt")).unwrap();
    f.write_all(b"must not vanish silently").unwrap();
    let fd = f.into_raw_fd();
    // SAFETY: closing the descriptor we own.
    let r = unsafe { libc::close(fd) };
    assert_eq!(
        (r, std::io::Error::last_os_error().raw_os_error()),
        (-1, Some(libc::EIO))
    );
    // ...and so does fsync().
    let mut f = fs::File::create(m.join("lost2.txt")).unwrap();
    f.write_all(b"neither must this").unwrap();
    let e = f.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);
    for key in ["lost.txt", "lost2.txt"] {
        assert!(
            block_on(s3.store().head(&format!("{prefix}{key}")))
                .unwrap()
                .is_none()
        );
    }
    assert!(m.log_text().contains("lost.txt"), "the key is in the log");
}

#[test]
fn an_object_replaced_mid_read_fails_the_read() {
    let s3 = s3();
    let prefix = unique("replace");
    put(&s3, &format!("{prefix}v"), data(48 << 20, 1));
    let m = mount_s3(&s3, &prefix, &[]);
    let mut f = fs::File::open(m.join("v")).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    f.read_exact(&mut buf).unwrap();
    put(&s3, &format!("{prefix}v"), data(48 << 20, 2));
    let mut rest = Vec::new();
    let e = f.read_to_end(&mut rest).unwrap_err();
    // ESTALE, as Mountpoint answers: the handle's version is gone.
    assert_eq!(e.raw_os_error(), Some(libc::ESTALE), "{e}");
    // Whatever was returned before the error came from the version that was opened.
    assert_eq!(
        rest[..],
        data(48 << 20, 1)[64 << 10..(64 << 10) + rest.len()]
    );
}

#[test]
fn a_store_outage_during_a_large_read_and_write_is_ridden_out() {
    let s3 = s3();
    let prefix = unique("outage");
    let body = data(24 << 20, 9);
    put(&s3, &format!("{prefix}big"), body.clone());
    let proxy = Proxy::start(&s3.endpoint);
    let m = mount_via(&proxy, &s3, &prefix, &[]).unwrap();
    let mut f = fs::File::open(m.join("big")).unwrap();
    let mut got = vec![0u8; 1 << 20];
    f.read_exact(&mut got).unwrap();
    // The server "restarts": every connection is dropped for a while.
    proxy.add(None, "", Fault::Reset, Some(6));
    f.read_to_end(&mut got).unwrap();
    assert!(got == body, "the read completed with the right bytes");
    assert!(proxy.hits() >= 1);

    // Uploads ride it out too, and close() reports success only once the object is whole.
    let before = proxy.hits();
    proxy.add(Some("PUT"), "", Fault::Reset, Some(3));
    use std::io::Write;
    use std::os::fd::IntoRawFd;
    let mut w = fs::File::create(m.join("written")).unwrap();
    w.write_all(&body[..20 << 20]).unwrap();
    // SAFETY: closing the descriptor we own, to see close()'s result.
    assert_eq!(unsafe { libc::close(w.into_raw_fd()) }, 0);
    assert_eq!(proxy.hits() - before, 3);
    let stored = block_on(s3.store().get_all(&format!("{prefix}written")))
        .unwrap()
        .unwrap();
    assert!(stored[..] == body[..20 << 20]);
}
