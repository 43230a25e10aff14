//! Shared harness of the integration tests: the test servers started by `scripts/test.sh`
//! (SeaweedFS for S3, fake-gcs-server for GCS), real `pail mount` processes on real FUSE,
//! and helpers to look at the bucket directly.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub mod connect;
pub mod csi;
pub mod http;
pub mod proxy;

#[allow(unused_imports)]
pub use pail::store::{BucketExt, Payload, PutOptions};

use pail::mounter::ready::{Readiness, spawn_and_wait};
use pail::store::{Credentials, S3Bucket, SharedBucket, Source, StoreOptions};

/// The `pail` binary under test.
pub fn pail_bin() -> &'static str {
    env!("CARGO_BIN_EXE_pail")
}

pub fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: run the tests with scripts/test.sh, which starts the test servers"
        )
    })
}

/// The S3 test server (SeaweedFS on 127.0.0.1).
#[derive(Debug, Clone)]
pub struct S3 {
    pub endpoint: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

/// The S3 server from the environment.
pub fn s3() -> S3 {
    S3 {
        endpoint: required("PAIL_TEST_S3_ENDPOINT"),
        bucket: required("PAIL_TEST_S3_BUCKET"),
        access_key: required("PAIL_TEST_S3_ACCESS_KEY"),
        secret_key: required("PAIL_TEST_S3_SECRET_KEY"),
    }
}

impl S3 {
    /// Environment for a `pail mount` with the test credentials.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID".into(), self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY".into(), self.secret_key.clone()),
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ]
    }

    /// `pail mount` flags to reach the server.
    pub fn args(&self) -> Vec<String> {
        vec!["--endpoint-url".into(), self.endpoint.clone()]
    }

    /// The store layer on the test bucket (to look at objects directly).
    pub fn store(&self) -> SharedBucket {
        std::sync::Arc::new(self.bucket())
    }

    /// The S3 store layer on the test bucket.
    pub fn bucket(&self) -> S3Bucket {
        pail::store::init_crypto();
        let source = Source::parse(&format!("s3://{}/", self.bucket)).unwrap();
        S3Bucket::open(
            &source,
            &StoreOptions {
                endpoint_url: Some(self.endpoint.clone()),
                auth: pail::store::Auth::Keys(Credentials {
                    access_key_id: self.access_key.clone(),
                    secret_access_key: self.secret_key.clone(),
                    session_token: None,
                }),
                ..Default::default()
            },
        )
        .unwrap()
    }

    /// The URL of a fresh prefix of the test bucket.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }
}

/// The GCS emulator (fake-gcs-server on 127.0.0.1).
#[derive(Debug, Clone)]
pub struct Gcs {
    pub endpoint: String,
    pub bucket: String,
    pub key_file: PathBuf,
}

/// The GCS emulator from the environment.
pub fn gcs() -> Gcs {
    Gcs {
        endpoint: required("PAIL_TEST_GCS_ENDPOINT"),
        bucket: required("PAIL_TEST_GCS_BUCKET"),
        key_file: PathBuf::from(required("PAIL_TEST_GCS_KEY_FILE")),
    }
}

/// A prefix no other test uses.
pub fn unique(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{name}-{}-{nanos}/", std::process::id())
}

/// A running `pail mount` process and its mount point.
pub struct Mount {
    child: Option<Child>,
    _dir: tempfile::TempDir,
    pub path: PathBuf,
    pub log: PathBuf,
}

/// Start `pail mount SOURCE <tmpdir> ARGS…` with `env`; Err carries what pail printed.
pub fn try_mount(source: &str, args: &[String], env: &[(String, String)]) -> Result<Mount, String> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mnt");
    std::fs::create_dir(&path).unwrap();
    let log = dir.path().join("pail.log");
    let mut cmd = Command::new(pail_bin());
    cmd.arg("mount")
        .arg(source)
        .arg(&path)
        .args(args)
        .arg("--log-file")
        .arg(&log)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let (mut child, readiness) = spawn_and_wait(&mut cmd, Duration::from_secs(60)).unwrap();
    match readiness {
        Readiness::Ready => Ok(Mount {
            child: Some(child),
            _dir: dir,
            path,
            log,
        }),
        Readiness::Failed(why) => {
            let mut stderr = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut stderr);
            }
            let _ = child.wait();
            Err(format!("{why} {}", stderr.trim()))
        }
        Readiness::TimedOut => {
            let _ = child.kill();
            let _ = child.wait();
            Err("timed out".into())
        }
    }
}

/// Start a mount that must succeed.
pub fn mount(source: &str, args: &[String], env: &[(String, String)]) -> Mount {
    try_mount(source, args, env).unwrap_or_else(|e| panic!("pail mount {source} failed: {e}"))
}

/// Mount `prefix` of the S3 test bucket with extra flags.
pub fn mount_s3(s3: &S3, prefix: &str, extra: &[&str]) -> Mount {
    let mut args = s3.args();
    args.extend(extra.iter().map(|s| s.to_string()));
    mount(&s3.url(prefix), &args, &s3.env())
}

impl Mount {
    /// A path inside the mount.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// The pail process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Send SIGTERM and wait for the process; returns its exit status success.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log the mount process wrote.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        self.terminate();
        if is_mounted(&self.path) {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// Whether `path` is a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let p = path.to_string_lossy();
    text.lines()
        .any(|l| l.split(' ').nth(4).is_some_and(|mp| mp == p))
}

/// Run a shell command, asserting success; returns stdout.
pub fn sh(script: &str) -> String {
    let out = run_sh(script);
    assert!(
        out.status.success(),
        "`{script}` failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a shell command and return its output, whatever the status.
pub fn run_sh(script: &str) -> Output {
    Command::new("bash").arg("-c").arg(script).output().unwrap()
}

/// Deterministic pseudo-random bytes.
pub fn data(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A current-thread runtime for store calls in tests.
pub fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// Run `f` over a read-only shared mapping of the whole of `file` (`len` bytes).
pub fn with_shared_map<T>(file: &std::fs::File, len: usize, f: impl FnOnce(&[u8]) -> T) -> T {
    use std::os::fd::AsRawFd;
    // SAFETY: a read-only shared mapping of an open file, alive while `f` runs, then unmapped;
    // the slice covers exactly the mapping.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        );
        assert_ne!(p, libc::MAP_FAILED, "{}", std::io::Error::last_os_error());
        let out = f(std::slice::from_raw_parts(p as *const u8, len));
        libc::munmap(p, len);
        out
    }
}

/// Pages of `path` the kernel holds (mincore of a shared mapping, which faults nothing in).
pub fn resident(path: &std::path::Path) -> usize {
    resident_of(&std::fs::File::open(path).unwrap())
}

/// Pages of an open file the kernel holds, asked through that descriptor (no new open,
/// which could itself drop the pages).
pub fn resident_of(f: &std::fs::File) -> usize {
    let len = f.metadata().unwrap().len() as usize;
    with_shared_map(f, len, |m| {
        let mut pages = vec![0u8; len.div_ceil(4096)];
        // SAFETY: mincore writes one byte per page of the mapping into `pages`.
        let rc = unsafe { libc::mincore(m.as_ptr() as *mut libc::c_void, len, pages.as_mut_ptr()) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        pages.iter().filter(|b| **b & 1 == 1).count()
    })
}

/// Bytes a re-read of the file open as `f` may fetch from the store: next to nothing
/// (64 KiB for requests and headers) while the kernel holds every page of it; if the kernel
/// dropped some, up to the file once more. Not only memory pressure drops pages: proactive
/// reclaim does (this lab's VM runs DAMON `pageout`, docs/BENCHMARKS.md "The caches").
/// `f` is the descriptor the earlier read used, so that this check opens nothing (an open
/// without `FOPEN_KEEP_CACHE` would itself drop the pages and hide that bug).
pub fn refetch_allowed(f: &std::fs::File) -> u64 {
    let len = f.metadata().unwrap().len();
    if resident_of(f) as u64 >= len.div_ceil(4096) {
        64 << 10
    } else {
        (64 << 10) + len
    }
}
