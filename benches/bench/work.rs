//! The bench's harness and workloads: the environment, a fresh mount per run, the data set,
//! and each workload through a mount and through the store layer directly.
#![allow(dead_code)]

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use pail::mounter::ready::{Readiness, spawn_and_wait};
use pail::store::{
    BucketExt, Credentials, Payload, PutOptions, SharedBucket, Source, StoreOptions,
};

pub struct Env {
    pub endpoint: String,
    pub bucket: String,
    pub key: String,
    pub secret: String,
    pub pail: PathBuf,
    pub runs: usize,
    pub big: u64,
    pub write: u64,
    pub many: usize,
    pub small: usize,
    pub random_secs: u64,
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench.sh"))
}

pub fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Env {
    pub fn store(&self) -> SharedBucket {
        pail::store::open(
            &Source::parse(&format!("s3://{}/", self.bucket)).unwrap(),
            &StoreOptions {
                endpoint_url: Some(self.endpoint.clone()),
                auth: pail::store::Auth::Keys(Credentials {
                    access_key_id: self.key.clone(),
                    secret_access_key: self.secret.clone(),
                    session_token: None,
                }),
                ..Default::default()
            },
        )
        .unwrap()
    }
}

/// A `pail mount` of the bench prefix (fresh: nothing cached).
pub struct Mount {
    child: Child,
    dir: tempfile::TempDir,
}

/// The journal a mount of the CSI driver keeps (so a successor can take it over), as the
/// driver runs it; `PAIL_BENCH_JOURNAL=0` measures without.
fn journal(dir: &std::path::Path) -> Vec<String> {
    if std::env::var("PAIL_BENCH_JOURNAL").is_ok_and(|v| v == "0") {
        return vec![];
    }
    vec![
        "--journal".into(),
        dir.join("journal").display().to_string(),
    ]
}

impl Mount {
    pub fn new(e: &Env) -> Mount {
        Mount::with(e, &[])
    }

    /// A fresh mount with extra flags (and `PAIL_BENCH_MOUNT_ARGS`); its cache directory
    /// lives and goes with it.
    pub fn with(e: &Env, extra: &[&str]) -> Mount {
        drop_caches();
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let mut cmd = Command::new(&e.pail);
        std::fs::create_dir(dir.path().join("mnt")).unwrap();
        cmd.arg("mount")
            .arg(format!("s3://{}/bench/", e.bucket))
            .arg(dir.path().join("mnt"))
            .arg("--endpoint-url")
            .arg(&e.endpoint)
            .arg("--cache-dir")
            .arg(&cache)
            .args(extra)
            .args(journal(dir.path()))
            .arg("--metrics-file")
            .arg(dir.path().join("metrics.json"))
            .args(
                std::env::var("PAIL_BENCH_MOUNT_ARGS")
                    .unwrap_or_default()
                    .split_whitespace(),
            )
            .env_clear()
            .env("AWS_ACCESS_KEY_ID", &e.key)
            .env("AWS_SECRET_ACCESS_KEY", &e.secret)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let (child, r) = spawn_and_wait(&mut cmd, Duration::from_secs(60)).unwrap();
        assert!(matches!(r, Readiness::Ready), "mount failed: {r:?}");
        Mount { child, dir }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join("mnt").join(rel)
    }

    /// Bytes of object data the mount read from the store, as its last metrics snapshot
    /// (written every 5 s) says.
    pub fn fetched_bytes(&self) -> u64 {
        let text =
            std::fs::read_to_string(self.dir.path().join("metrics.json")).unwrap_or_default();
        serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| v["fetched_bytes"].as_u64())
            .unwrap_or(0)
    }

    /// Peak resident memory of the mount process so far, MiB.
    pub fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        kb / 1024.0
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(self.dir.path().join("mnt"))
            .status();
        let _ = self.child.wait();
    }
}

pub fn drop_caches() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// One line of the table.
pub struct Row {
    pub name: String,
    pub unit: &'static str,
    pub pail: f64,
    pub direct: f64,
    pub higher_is_better: bool,
    pub rss: Option<f64>,
}

pub fn mb(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

/// Write `size` bytes of generated data to `key` unless it is there already.
pub async fn upload_generated(store: &SharedBucket, key: &str, size: u64) {
    if store.head(key).await.unwrap().map(|i| i.size) == Some(size) {
        return;
    }
    let mut up = store.start_upload(key, &Default::default()).await.unwrap();
    let part = 8u64 << 20;
    let mut off = 0;
    let mut tasks = Vec::new();
    while off < size {
        let n = part.min(size - off);
        let data: Vec<u8> = (0..n)
            .map(|i| (((off + i) * 2654435761) >> 13) as u8)
            .collect();
        tasks.push(tokio::spawn(up.put_part(Payload::from(data))));
        if tasks.len() >= 4 {
            tasks.remove(0).await.unwrap().unwrap();
        }
        off += n;
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    up.complete().await.unwrap();
}

pub async fn setup(e: &Env, store: &SharedBucket) {
    println!(
        "writing the data set (bucket {}, prefix bench/)...",
        e.bucket
    );
    upload_generated(store, "bench/big.bin", e.big).await;
    upload_generated(store, "bench/mid.bin", e.big / 2).await;

    let have = store.list_dir("bench/many/").await.unwrap().files.len();
    if have != e.many {
        futures::stream::iter(0..e.many)
            .map(|i| {
                let store = store.clone();
                async move {
                    store
                        .put(
                            &format!("bench/many/f{i:05}"),
                            Payload::new(),
                            &PutOptions::default(),
                        )
                        .await
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
    }
    let have = store.list_dir("bench/small/").await.unwrap().files.len();
    if have != e.small {
        let body = Bytes::from(vec![7u8; 64 << 10]);
        futures::stream::iter(0..e.small)
            .map(|i| {
                let store = store.clone();
                let body = body.clone();
                async move {
                    store
                        .put(
                            &format!("bench/small/s{i:05}"),
                            Payload::from(body),
                            &PutOptions::default(),
                        )
                        .await
                }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<_>>()
            .await
            .unwrap();
    }
}

/// Direct sequential read: the same parallel ranged GETs a good client would make.
pub async fn direct_seq_read(store: &SharedBucket, key: &str, size: u64) -> Duration {
    let part = 8u64 << 20;
    let start = Instant::now();
    let total: usize = futures::stream::iter((0..size).step_by(part as usize))
        .map(|off| {
            let store = store.clone();
            let key = key.to_string();
            async move {
                store
                    .get_range(&key, off..(off + part).min(size), None)
                    .await
                    .unwrap()
                    .len()
            }
        })
        .buffered(8)
        .fold(0, |a, n| async move { a + n })
        .await;
    assert_eq!(total as u64, size);
    start.elapsed()
}

pub fn mount_seq_read(path: &Path) -> Duration {
    let mut f = File::open(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
    }
    start.elapsed()
}

pub fn rand_offsets(n: usize, size: u64, seed: u64) -> Vec<u64> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (size / 4096 - 1)) * 4096
        })
        .collect()
}

pub fn mount_random(path: &Path, size: u64, secs: u64) -> Vec<Duration> {
    let f = File::open(path).unwrap();
    // SAFETY: advising the kernel about our own open descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    let mut buf = vec![0u8; 4096];
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    for off in rand_offsets(10_000_000, size, 99) {
        if Instant::now() > end {
            break;
        }
        let t = Instant::now();
        f.read_exact_at(&mut buf, off).unwrap();
        lat.push(t.elapsed());
    }
    lat
}

pub async fn direct_random(store: &SharedBucket, key: &str, size: u64, secs: u64) -> Vec<Duration> {
    let mut lat = Vec::new();
    let end = Instant::now() + Duration::from_secs(secs);
    for off in rand_offsets(10_000_000, size, 99) {
        if Instant::now() > end {
            break;
        }
        let t = Instant::now();
        store.get_range(key, off..off + 4096, None).await.unwrap();
        lat.push(t.elapsed());
    }
    lat
}

pub fn mount_write(path: &Path, size: u64) -> Duration {
    let buf: Vec<u8> = (0..1u32 << 20).map(|i| (i * 31) as u8).collect();
    let start = Instant::now();
    let f = File::create(path).unwrap();
    let mut off = 0;
    while off < size {
        f.write_all_at(&buf, off).unwrap();
        off += buf.len() as u64;
    }
    drop(f); // close(): returns once the object is complete
    start.elapsed()
}

pub async fn direct_write(store: &SharedBucket, key: &str, size: u64) -> Duration {
    let part: Vec<u8> = (0..8u32 << 20).map(|i| (i * 31) as u8).collect();
    let part = Bytes::from(part);
    let start = Instant::now();
    let mut up = store.start_upload(key, &Default::default()).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..size / part.len() as u64 {
        tasks.push(tokio::spawn(up.put_part(Payload::from(part.clone()))));
        if tasks.len() > 4 {
            tasks.remove(0).await.unwrap().unwrap();
        }
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    up.complete().await.unwrap();
    start.elapsed()
}

pub fn time_cmd(script: &str) -> Duration {
    let start = Instant::now();
    let s = Command::new("bash").arg("-c").arg(script).status().unwrap();
    assert!(s.success(), "{script}");
    start.elapsed()
}

pub fn mount_small_files(dir: &Path, n: usize, readers: usize) -> Duration {
    let names: Vec<PathBuf> = (0..n).map(|i| dir.join(format!("s{i:05}"))).collect();
    let names = Arc::new(names);
    let start = Instant::now();
    let handles: Vec<_> = (0..readers)
        .map(|r| {
            let names = names.clone();
            std::thread::spawn(move || {
                let mut buf = Vec::with_capacity(64 << 10);
                for p in names.iter().skip(r).step_by(readers) {
                    buf.clear();
                    File::open(p).unwrap().read_to_end(&mut buf).unwrap();
                    assert_eq!(buf.len(), 64 << 10);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

pub async fn direct_small_files(store: &SharedBucket, n: usize, readers: usize) -> Duration {
    let start = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let store = store.clone();
            async move {
                let key = format!("bench/small/s{i:05}");
                // What a client must do for a file of unknown size: HEAD, then GET.
                let info = store.head(&key).await.unwrap().unwrap();
                let b = store.get_range(&key, 0..info.size, None).await.unwrap();
                assert_eq!(b.len(), 64 << 10);
            }
        })
        .buffer_unordered(readers)
        .collect::<Vec<_>>()
        .await;
    start.elapsed()
}

pub fn mount_stat(dir: &Path, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        std::fs::metadata(dir.join(format!("f{i:05}"))).unwrap();
    }
    start.elapsed()
}

pub async fn direct_stat(store: &SharedBucket, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        store
            .head(&format!("bench/many/f{i:05}"))
            .await
            .unwrap()
            .unwrap();
    }
    start.elapsed()
}

/// Every 1 MiB block of a `size`-byte object, each once, in a shuffled order (the same for
/// every run and reader).
pub fn shuffled_blocks(size: u64) -> Vec<u64> {
    let mut order: Vec<u64> = (0..size >> 20).collect();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    order
}

/// `threads` threads `pread` every 1 MiB block of `path` once, shuffled, taking blocks from
/// one queue: through one descriptor they all share (`shared`, as DataLoader workers that
/// inherit it do), or a descriptor each.
pub fn mount_shuffled(path: &Path, size: u64, threads: usize, shared: bool) -> Duration {
    let order = Arc::new(shuffled_blocks(size));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let one = Arc::new(File::open(path).unwrap());
    let start = Instant::now();
    let workers: Vec<_> = (0..threads)
        .map(|_| {
            let (order, next) = (order.clone(), next.clone());
            let f = if shared {
                one.clone()
            } else {
                Arc::new(File::open(path).unwrap())
            };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(block) = order.get(i) else { break };
                    f.read_exact_at(&mut buf, block << 20).unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    start.elapsed()
}

/// The same blocks through the store layer, `threads` ranged GETs at a time.
pub async fn direct_shuffled(
    store: &SharedBucket,
    key: &str,
    size: u64,
    threads: usize,
) -> Duration {
    let start = Instant::now();
    futures::stream::iter(shuffled_blocks(size))
        .map(|b| {
            let store = store.clone();
            async move { store.get_range(key, b << 20..(b + 1) << 20, None).await }
        })
        .buffer_unordered(threads)
        .try_for_each(|_| async { Ok(()) })
        .await
        .unwrap();
    start.elapsed()
}

/// `readers` threads each read the whole of one of `paths` (round robin) at once; the time
/// until the last is done.
pub fn parallel_reads(paths: &[PathBuf], readers: usize) -> Duration {
    let start = Instant::now();
    let workers: Vec<_> = (0..readers)
        .map(|i| {
            let p = paths[i % paths.len()].clone();
            std::thread::spawn(move || mount_seq_read(&p))
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    start.elapsed()
}

/// A bind mount of `source` (what the CSI driver gives each pod of a shared mount).
pub struct Bind(tempfile::TempDir);

impl Bind {
    pub fn of(source: &Path) -> Bind {
        let d = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .arg("--bind")
            .arg(source)
            .arg(d.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount --bind");
        Bind(d)
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.path().join(rel)
    }
}

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}
