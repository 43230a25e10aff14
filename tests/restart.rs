//! The S3 server really restarting (a SeaweedFS of this test's own, killed and started
//! again on the same data) while a large file is read and written through a mount: the read
//! completes after the server returns, the write completes or fails loudly.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::fd::IntoRawFd;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use pail::store::{Payload, PutOptions};

/// A SeaweedFS of our own on free loopback ports.
struct Server {
    child: Option<Child>,
    dir: tempfile::TempDir,
    base: u16,
}

fn free_base() -> u16 {
    // Five ports in a row (s3, master, volume, filer, admin) and their gRPC twins (+10000).
    for _ in 0..200 {
        let base = 20000 + (std::process::id() as u16 % 500) * 10 + (rand_u16() % 7000);
        let ports = [base, base + 1, base + 2, base + 3, base + 4];
        if ports.iter().all(|p| {
            std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok()
                && std::net::TcpListener::bind(("127.0.0.1", *p + 10000)).is_ok()
        }) {
            return base;
        }
    }
    panic!("no free ports")
}

/// The last lines of a log file.
fn tail(path: &std::path::Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(10)..].join("\n")
}

fn rand_u16() -> u16 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u16
}

impl Server {
    fn start() -> Server {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("identities.json"),
            r#"{"identities":[{"name":"t","credentials":[{"accessKey":"restartkey","secretKey":"restartsecret"}],"actions":["Admin","Read","Write","List"]}]}"#,
        )
        .unwrap();
        let mut s = Server {
            child: None,
            dir,
            base: free_base(),
        };
        s.spawn();
        s
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.base)
    }

    /// Start SeaweedFS on this server's ports and data, and wait until its bucket answers.
    fn spawn(&mut self) {
        self.launch();
        self.wait_until_ready();
    }

    fn log(&self) -> std::path::PathBuf {
        self.dir.path().join("weed.log")
    }

    fn launch(&mut self) {
        let b = self.base;
        let d = self.dir.path();
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap();
        fs::create_dir_all(d.join("data")).unwrap();
        let child = Command::new("weed")
            .arg("mini")
            .arg(format!("-dir={}", d.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-s3.port={b}"))
            .arg(format!("-master.port={}", b + 1))
            .arg(format!("-volume.port={}", b + 2))
            .arg(format!("-filer.port={}", b + 3))
            .arg(format!("-admin.port={}", b + 4))
            .arg(format!(
                "-s3.config={}",
                d.join("identities.json").display()
            ))
            .args([
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-admin.ui=false",
                // Telemetry is on by default: it would leave 127.0.0.1.
                "-master.telemetry=false",
                "-bucket=restart-test",
            ])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    fn wait_until_ready(&mut self) {
        let store = self.store();
        let started = Instant::now();
        // It is started by this process while files of the mount are open here, so its exec
        // closes copies of them: a close that once waited behind the reads stuck on the
        // server that was down, and so kept the server from ever starting.
        let deadline = started + Duration::from_secs(120);
        while let Err(e) = block_on(store.check("")) {
            let exited = self.child.as_mut().unwrap().try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "SeaweedFS did not come up ({}: {e}); the end of its log:\n{}",
                match exited {
                    Some(status) => format!("it exited, {status}"),
                    None => "still not answering after 120 s".into(),
                },
                tail(&self.log())
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn store(&self) -> pail::store::SharedBucket {
        pail::store::open(
            &pail::store::Source::parse("s3://restart-test/").unwrap(),
            &pail::store::StoreOptions {
                endpoint_url: Some(self.endpoint()),
                auth: pail::store::Auth::Keys(pail::store::Credentials {
                    access_key_id: "restartkey".into(),
                    secret_access_key: "restartsecret".into(),
                    session_token: None,
                }),
                max_retries: Some(0),
                ..Default::default()
            },
        )
        .unwrap()
    }

    fn mount(&self) -> Mount {
        mount(
            "s3://restart-test/",
            &["--endpoint-url".to_string(), self.endpoint()],
            &[
                ("AWS_ACCESS_KEY_ID".into(), "restartkey".into()),
                ("AWS_SECRET_ACCESS_KEY".into(), "restartsecret".into()),
                ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
            ],
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

fn close(f: fs::File) -> std::io::Result<()> {
    // SAFETY: closing the descriptor we own, to see close()'s result.
    if unsafe { libc::close(f.into_raw_fd()) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[test]
fn a_server_restart_during_a_large_read_and_write_is_survived_or_reported() {
    let mut server = Server::start();
    let body = data(64 << 20, 11);
    block_on(server.store().put(
        "big.bin",
        Payload::from(body.clone()),
        &PutOptions::default(),
    ))
    .unwrap();
    let m = server.mount();

    // Read: the server goes away after the first 4 MiB and comes back.
    let mut f = fs::File::open(m.join("big.bin")).unwrap();
    let mut got = vec![0u8; 4 << 20];
    f.read_exact(&mut got).unwrap();
    server.kill();
    server.spawn();
    f.read_to_end(&mut got).unwrap();
    assert!(got == body, "the read completed with the right bytes");

    // Write: the server goes away in the middle of a 40 MiB upload.
    let mut w = fs::File::create(m.join("written.bin")).unwrap();
    w.write_all(&body[..20 << 20]).unwrap();
    server.kill();
    server.spawn();
    let rest = w.write_all(&body[20 << 20..40 << 20]);
    let closed = rest.and_then(|()| close(w));
    let stored = block_on(server.store().get_all("written.bin")).unwrap();
    match closed {
        Ok(()) => assert!(
            stored.as_deref() == Some(&body[..40 << 20]),
            "close() succeeded, so the object is whole"
        ),
        Err(e) => {
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
            assert!(stored.is_none(), "a failed upload leaves no object");
        }
    }
}
