//! The benchmark: each workload through a pail mount and through pail's own store layer with
//! no FUSE in between (the "direct" client, the practical limit here), in the same run,
//! against the S3 test server. Prints one table: medians of several runs, pail/direct, and
//! the peak RSS of the mount process. Run with `scripts/bench.sh`.

use std::collections::HashMap;
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

struct Env {
    endpoint: String,
    bucket: String,
    key: String,
    secret: String,
    pail: PathBuf,
    runs: usize,
    big: u64,
    write: u64,
    many: usize,
    small: usize,
    random_secs: u64,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/bench.sh"))
}

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

impl Env {
    fn store(&self) -> SharedBucket {
        pail::store::open(
            &Source::parse(&format!("s3://{}/", self.bucket)).unwrap(),
            &StoreOptions {
                endpoint_url: Some(self.endpoint.clone()),
                credentials: Some(Credentials {
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
struct Mount {
    child: Child,
    dir: tempfile::TempDir,
}

impl Mount {
    fn new(e: &Env) -> Mount {
        drop_caches();
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(&e.pail);
        cmd.arg("mount")
            .arg(format!("s3://{}/bench/", e.bucket))
            .arg(dir.path())
            .arg("--endpoint-url")
            .arg(&e.endpoint)
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

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// Peak resident memory of the mount process so far, MiB.
    fn peak_rss_mib(&self) -> f64 {
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
        let _ = Command::new("umount").arg(self.dir.path()).status();
        let _ = self.child.wait();
    }
}

fn drop_caches() {
    // SAFETY: sync(2) has no preconditions.
    unsafe { libc::sync() };
    let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

struct Row {
    name: String,
    unit: &'static str,
    pail: f64,
    direct: f64,
    higher_is_better: bool,
    rss: Option<f64>,
}

fn mb(bytes: u64, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

async fn setup(e: &Env, store: &SharedBucket) {
    println!(
        "writing the data set (bucket {}, prefix bench/)...",
        e.bucket
    );
    if store.head("bench/big.bin").await.unwrap().map(|i| i.size) != Some(e.big) {
        let mut up = store
            .start_upload("bench/big.bin", &Default::default())
            .await
            .unwrap();
        let part = 8u64 << 20;
        let mut off = 0;
        let mut tasks = Vec::new();
        while off < e.big {
            let n = part.min(e.big - off);
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
async fn direct_seq_read(store: &SharedBucket, key: &str, size: u64) -> Duration {
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

fn mount_seq_read(path: &Path) -> Duration {
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

fn rand_offsets(n: usize, size: u64, seed: u64) -> Vec<u64> {
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

fn mount_random(path: &Path, size: u64, secs: u64) -> Vec<Duration> {
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

async fn direct_random(store: &SharedBucket, key: &str, size: u64, secs: u64) -> Vec<Duration> {
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

fn mount_write(path: &Path, size: u64) -> Duration {
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

async fn direct_write(store: &SharedBucket, key: &str, size: u64) -> Duration {
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

fn time_cmd(script: &str) -> Duration {
    let start = Instant::now();
    let s = Command::new("bash").arg("-c").arg(script).status().unwrap();
    assert!(s.success(), "{script}");
    start.elapsed()
}

fn mount_small_files(dir: &Path, n: usize, readers: usize) -> Duration {
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

async fn direct_small_files(store: &SharedBucket, n: usize, readers: usize) -> Duration {
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

fn mount_stat(dir: &Path, n: usize) -> Duration {
    let start = Instant::now();
    for i in 0..n {
        std::fs::metadata(dir.join(format!("f{i:05}"))).unwrap();
    }
    start.elapsed()
}

async fn direct_stat(store: &SharedBucket, n: usize) -> Duration {
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

#[tokio::main]
async fn main() {
    let e = Env {
        endpoint: env("PAIL_TEST_S3_ENDPOINT"),
        bucket: env("PAIL_TEST_S3_BUCKET"),
        key: env("PAIL_TEST_S3_ACCESS_KEY"),
        secret: env("PAIL_TEST_S3_SECRET_KEY"),
        pail: PathBuf::from(env("PAIL_BIN")),
        runs: env_num("PAIL_BENCH_RUNS", 3) as usize,
        big: env_num("PAIL_BENCH_BIG_MIB", 2048) << 20,
        write: env_num("PAIL_BENCH_WRITE_MIB", 1024) << 20,
        many: env_num("PAIL_BENCH_MANY", 10_000) as usize,
        small: env_num("PAIL_BENCH_SMALL", 2_000) as usize,
        random_secs: env_num("PAIL_BENCH_RANDOM_SECS", 10),
    };
    let store = e.store();
    setup(&e, &store).await;
    let mut rows: Vec<Row> = Vec::new();
    let runs = e.runs;
    let mut rss: HashMap<&str, f64> = HashMap::new();

    println!("sequential read of {} MiB...", e.big >> 20);
    let (mut p, mut d) = (vec![], vec![]);
    for _ in 0..runs {
        let m = Mount::new(&e);
        let path = m.path("big.bin");
        let t = tokio::task::spawn_blocking(move || mount_seq_read(&path))
            .await
            .unwrap();
        p.push(mb(e.big, t));
        *rss.entry("read").or_default() = rss
            .get("read")
            .copied()
            .unwrap_or(0.0)
            .max(m.peak_rss_mib());
        drop(m);
        drop_caches();
        d.push(mb(
            e.big,
            direct_seq_read(&store, "bench/big.bin", e.big).await,
        ));
    }
    rows.push(Row {
        name: format!("sequential read {} MiB (cold)", e.big >> 20),
        unit: "MB/s",
        pail: median(p),
        direct: median(d),
        higher_is_better: true,
        rss: rss.get("read").copied(),
    });

    println!("random 4 KiB reads for {} s...", e.random_secs);
    let m = Mount::new(&e);
    let path = m.path("big.bin");
    let (size, secs) = (e.big, e.random_secs);
    let mut pl = tokio::task::spawn_blocking(move || mount_random(&path, size, secs))
        .await
        .unwrap();
    let mut dl = direct_random(&store, "bench/big.bin", e.big, e.random_secs).await;
    let (pn, dn) = (pl.len() as f64 / secs as f64, dl.len() as f64 / secs as f64);
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    rows.push(Row {
        name: "random 4 KiB reads".into(),
        unit: "IOPS",
        pail: pn,
        direct: dn,
        higher_is_better: true,
        rss: Some(m.peak_rss_mib()),
    });
    rows.push(Row {
        name: "random 4 KiB p50 latency".into(),
        unit: "ms",
        pail: ms(percentile(&mut pl, 0.5)),
        direct: ms(percentile(&mut dl, 0.5)),
        higher_is_better: false,
        rss: None,
    });
    rows.push(Row {
        name: "random 4 KiB p99 latency".into(),
        unit: "ms",
        pail: ms(percentile(&mut pl, 0.99)),
        direct: ms(percentile(&mut dl, 0.99)),
        higher_is_better: false,
        rss: None,
    });
    drop(m);

    println!("sequential write of {} MiB...", e.write >> 20);
    let (mut p, mut d) = (vec![], vec![]);
    let mut write_rss: f64 = 0.0;
    for i in 0..runs {
        let m = Mount::new(&e);
        let path = m.path(&format!("written-{i}.bin"));
        let size = e.write;
        let t = tokio::task::spawn_blocking(move || mount_write(&path, size))
            .await
            .unwrap();
        p.push(mb(e.write, t));
        write_rss = write_rss.max(m.peak_rss_mib());
        drop(m);
        d.push(mb(
            e.write,
            direct_write(&store, &format!("bench/direct-{i}.bin"), e.write).await,
        ));
    }
    rows.push(Row {
        name: format!("sequential write {} MiB (until close)", e.write >> 20),
        unit: "MB/s",
        pail: median(p),
        direct: median(d),
        higher_is_better: true,
        rss: Some(write_rss),
    });

    println!("ls -l of {} entries...", e.many);
    let (mut cold, mut warm, mut d) = (vec![], vec![], vec![]);
    for _ in 0..runs {
        let m = Mount::new(&e);
        let dir = m.path("many");
        cold.push(time_cmd(&format!("ls -l {} > /dev/null", dir.display())).as_secs_f64());
        warm.push(time_cmd(&format!("ls -l {} > /dev/null", dir.display())).as_secs_f64());
        let t = Instant::now();
        assert_eq!(
            store.list_dir("bench/many/").await.unwrap().files.len(),
            e.many
        );
        d.push(t.elapsed().as_secs_f64());
    }
    let direct_list = median(d);
    rows.push(Row {
        name: format!("ls -l {} entries, cold", e.many),
        unit: "s",
        pail: median(cold),
        direct: direct_list,
        higher_is_better: false,
        rss: None,
    });
    rows.push(Row {
        name: format!("ls -l {} entries, warm", e.many),
        unit: "s",
        pail: median(warm),
        direct: direct_list,
        higher_is_better: false,
        rss: None,
    });

    for readers in [1usize, 8] {
        println!("{} files of 64 KiB with {readers} reader(s)...", e.small);
        let (mut p, mut d) = (vec![], vec![]);
        for _ in 0..runs {
            let m = Mount::new(&e);
            let dir = m.path("small");
            let n = e.small;
            let t = tokio::task::spawn_blocking(move || mount_small_files(&dir, n, readers))
                .await
                .unwrap();
            p.push(e.small as f64 / t.as_secs_f64());
            d.push(
                e.small as f64
                    / direct_small_files(&store, e.small, readers)
                        .await
                        .as_secs_f64(),
            );
        }
        rows.push(Row {
            name: format!("{} files of 64 KiB, {readers} reader(s)", e.small),
            unit: "files/s",
            pail: median(p),
            direct: median(d),
            higher_is_better: true,
            rss: None,
        });
    }

    println!("stat of {} files...", e.many);
    let (mut p, mut d) = (vec![], vec![]);
    for _ in 0..runs {
        let m = Mount::new(&e);
        let dir = m.path("many");
        let n = e.many;
        let t = tokio::task::spawn_blocking(move || mount_stat(&dir, n))
            .await
            .unwrap();
        p.push(e.many as f64 / t.as_secs_f64());
        d.push(e.many as f64 / direct_stat(&store, e.many).await.as_secs_f64());
    }
    rows.push(Row {
        name: format!("stat {} files (lookup each)", e.many),
        unit: "ops/s",
        pail: median(p),
        direct: median(d),
        higher_is_better: true,
        rss: None,
    });

    println!();
    println!(
        "{:<42} {:>8} {:>11} {:>11} {:>8} {:>14}",
        "workload", "unit", "pail", "direct", "ratio", "peak RSS MiB"
    );
    for r in &rows {
        let ratio = r.pail / r.direct;
        let note = if r.higher_is_better {
            ""
        } else {
            " (lower is better)"
        };
        println!(
            "{:<42} {:>8} {:>11.2} {:>11.2} {:>8.2} {:>14}{note}",
            r.name,
            r.unit,
            r.pail,
            r.direct,
            ratio,
            r.rss.map(|v| format!("{v:.0}")).unwrap_or_default()
        );
    }
    println!(
        "(medians of {runs} runs; direct = pail's store layer without FUSE; ratio = pail/direct)"
    );
}
