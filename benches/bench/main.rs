//! The benchmark: each workload through a pail mount and through pail's own store layer with
//! no FUSE in between (the "direct" client, the practical limit here), in the same run,
//! against the S3 test server. Prints one table: medians of several runs, pail/direct, and
//! the peak RSS of the mount process; then, for the streaming rows, where the machine's CPU
//! went. Run with `scripts/bench.sh`.

mod cpu;
mod csi;
mod work;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use cpu::{Cpu, ServerApart, Timed, cpu_note, online_cpus};
use pail::store::{BucketExt, SharedBucket};
use work::*;

/// Whether the workload `name` runs: all of them, or those `PAIL_BENCH_ONLY` lists
/// (comma-separated: seq, shuffle, pods, restart, cache, random, write, ls, small, stat).
fn only(name: &str) -> bool {
    match std::env::var("PAIL_BENCH_ONLY") {
        Ok(list) if !list.is_empty() => list.split(',').any(|w| w.trim() == name),
        _ => true,
    }
}

/// Median of `runs` measurements of `f`, and the largest peak RSS it reported.
async fn runs<F, Fut>(n: usize, mut f: F) -> (f64, f64, Option<f64>)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = (f64, f64, Option<f64>)>,
{
    let (mut p, mut d, mut rss) = (vec![], vec![], None::<f64>);
    for _ in 0..n {
        let (a, b, r) = f().await;
        p.push(a);
        d.push(b);
        if let Some(r) = r {
            rss = Some(rss.map_or(r, |x: f64| x.max(r)));
        }
    }
    (median(p), median(d), rss)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn n_per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn read_file(path: PathBuf) -> Duration {
    mount_seq_read(&path)
}

async fn direct_read(store: &SharedBucket, key: &str, size: u64) -> f64 {
    drop_caches();
    mb(size, direct_seq_read(store, key, size).await)
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
        many: env_num("PAIL_BENCH_MANY", 100_000) as usize,
        small: env_num("PAIL_BENCH_SMALL", 2_000) as usize,
        random_secs: env_num("PAIL_BENCH_RANDOM_SECS", 10),
    };
    let store = e.store();
    setup(&e, &store).await;
    let mut rows: Vec<Row> = Vec::new();
    let big_mib = e.big >> 20;
    let mid = e.big / 2;
    let row = |name: String, unit, (pail, direct, rss): (f64, f64, Option<f64>), higher| Row {
        name,
        unit,
        pail,
        direct,
        higher_is_better: higher,
        rss,
    };

    let mut cpu_notes: Vec<String> = Vec::new();
    if only("seq") {
        // By default and with the first read past the page cache; then both again with the
        // server on a core of its own (a remote store does not take the reader's cores).
        for (flags, apart, what) in [
            (&[][..], false, ""),
            (
                &["--direct-first-read", "64M"][..],
                false,
                ", direct 1st read",
            ),
            (&[][..], true, ", server on its own core"),
            (
                &["--direct-first-read", "64M"][..],
                true,
                ", direct 1st read, server apart",
            ),
        ] {
            let _apart = if apart {
                match ServerApart::new() {
                    Some(a) => Some(a),
                    None => continue,
                }
            } else {
                None
            };
            println!("sequential read of {big_mib} MiB{what}...");
            let cpu = std::cell::RefCell::new(Vec::new());
            let r = runs(e.runs, || async {
                let m = Mount::with(&e, flags);
                let c0 = Cpu::now(Some(m.pid()));
                let t = blocking({
                    let p = m.path("big.bin");
                    move || read_file(p)
                })
                .await;
                let cp = Cpu::now(Some(m.pid())).since(c0);
                let rss = m.peak_rss_mib();
                drop(m);
                drop_caches();
                let c1 = Cpu::now(None);
                let d = direct_seq_read(&store, "bench/big.bin", e.big).await;
                let cd = Cpu::now(None).since(c1);
                cpu.borrow_mut().push(Timed {
                    pail: t,
                    pail_cpu: cp,
                    direct: d,
                    direct_cpu: cd,
                });
                (mb(e.big, t), mb(e.big, d), Some(rss))
            })
            .await;
            let name = format!("sequential read {big_mib} MiB (cold){what}");
            cpu_notes.push(cpu_note(&name, e.big, &cpu.into_inner()));
            rows.push(row(name, "MB/s", r, true));
        }
    }

    if only("shuffle") {
        // Data loaders: 8 threads read every 1 MiB block once, shuffled, page cache cold,
        // each run on a fresh mount.
        for (shared, what) in [(true, "one descriptor"), (false, "a descriptor each")] {
            println!("8 threads, shuffled 1 MiB blocks of {big_mib} MiB, {what}...");
            let r = runs(e.runs, || async {
                let m = Mount::new(&e);
                drop_caches();
                let t = blocking({
                    let p = m.path("big.bin");
                    let size = e.big;
                    move || mount_shuffled(&p, size, 8, shared)
                })
                .await;
                let rss = m.peak_rss_mib();
                drop(m);
                let d = direct_shuffled(&store, "bench/big.bin", e.big, 8).await;
                (mb(e.big, t), mb(e.big, d), Some(rss))
            })
            .await;
            rows.push(row(
                format!("8 threads shuffled 1 MiB, {what}"),
                "MB/s",
                r,
                true,
            ));
        }
    }

    if only("pods") {
        // 8 pods of a node reading the same 1 GiB file: binds of one mount (the CSI driver's
        // shared mount) against a mount per pod (before). "direct": the store layer reading
        // it 8 times at once. RSS: the one mount's peak, or the sum of the 8 mounts' peaks.
        println!(
            "8 pods reading one {} MiB file: shared mount, then a mount each...",
            mid >> 20
        );
        let direct = || async {
            drop_caches();
            let start = std::time::Instant::now();
            futures::future::join_all(
                (0..8).map(|_| direct_seq_read(&store, "bench/mid.bin", mid)),
            )
            .await;
            mb(8 * mid, start.elapsed())
        };
        let r = runs(e.runs, || async {
            let m = Mount::new(&e);
            let binds: Vec<Bind> = (0..8).map(|_| Bind::of(&m.path(""))).collect();
            let paths: Vec<PathBuf> = binds.iter().map(|b| b.path("mid.bin")).collect();
            drop_caches();
            let t = blocking(move || parallel_reads(&paths, 8)).await;
            let rss = m.peak_rss_mib();
            let fetched = blocking({
                let m = std::sync::Arc::new(m);
                let m2 = m.clone();
                drop(binds);
                move || {
                    std::thread::sleep(std::time::Duration::from_millis(5500));
                    (m2.fetched_bytes(), m)
                }
            })
            .await;
            println!(
                "  shared mount: fetched {:.2}x the file from the store",
                fetched.0 as f64 / mid as f64
            );
            drop(fetched);
            (mb(8 * mid, t), direct().await, Some(rss))
        })
        .await;
        rows.push(row(
            "8 pods x 1 GiB, one shared mount".into(),
            "MB/s",
            r,
            true,
        ));
        let r = runs(e.runs, || async {
            let mounts: Vec<Mount> = (0..8).map(|_| Mount::new(&e)).collect();
            let paths: Vec<PathBuf> = mounts.iter().map(|m| m.path("mid.bin")).collect();
            drop_caches();
            let t = blocking(move || parallel_reads(&paths, 8)).await;
            let rss: f64 = mounts.iter().map(|m| m.peak_rss_mib()).sum();
            let mounts = std::sync::Arc::new(mounts);
            let fetched: u64 = blocking({
                let mounts = mounts.clone();
                move || {
                    std::thread::sleep(std::time::Duration::from_millis(5500));
                    mounts.iter().map(|m| m.fetched_bytes()).sum()
                }
            })
            .await;
            println!(
                "  a mount each: fetched {:.2}x the file from the store",
                fetched as f64 / mid as f64
            );
            drop(mounts);
            (mb(8 * mid, t), direct().await, Some(rss))
        })
        .await;
        rows.push(row("8 pods x 1 GiB, a mount each".into(), "MB/s", r, true));
    }

    if only("restart") {
        // A pod of the CSI driver reads the small files (8 readers), goes, and comes back on
        // the node: its new mount reads them from the node cache (page cache dropped in
        // between), asking the store only whether each changed.
        println!(
            "a pod's epoch over {} small files, then the pod restarted...",
            e.small
        );
        let (mut first, mut again, mut direct) = (vec![], vec![], vec![]);
        for _ in 0..e.runs {
            let mut node = csi::Node::start(&e).await;
            for (pod, out) in [("pod-1", &mut first), ("pod-2", &mut again)] {
                let target = node.publish(&e, pod, "read-cache,metadata-ttl=60").await;
                drop_caches();
                let n = e.small;
                let dir = target.join("small");
                let t = blocking(move || mount_small_files(&dir, n, 8)).await;
                out.push(n as f64 / t.as_secs_f64());
                // The node keeps the copies in the background.
                tokio::time::sleep(Duration::from_secs(3)).await;
                node.unpublish(pod).await;
            }
            drop(node);
            direct.push(n_per_sec(
                e.small,
                direct_small_files(&store, e.small, 8).await,
            ));
        }
        let d = median(direct);
        let (f, a) = (median(first), median(again));
        println!(
            "  the restarted pod read {:.1}x faster than its first epoch",
            a / f
        );
        let name = |k: &str| format!("{} files of 64 KiB, 8 readers, {k}", e.small);
        rows.push(row(
            name("a pod's first epoch (CSI)"),
            "files/s",
            (f, d, None),
            true,
        ));
        rows.push(row(
            name("the pod restarted (node cache)"),
            "files/s",
            (a, d, None),
            true,
        ));
    }

    if only("cache") {
        println!("second reads (page cache, disk cache)...");
        // The kernel's page cache, kept across opens while the object is unchanged.
        let r = runs(e.runs, || async {
            let m = Mount::new(&e);
            let p = m.path("big.bin");
            blocking({
                let p = p.clone();
                move || read_file(p)
            })
            .await;
            let t = blocking(move || read_file(p)).await;
            let rss = m.peak_rss_mib();
            drop(m);
            (
                mb(e.big, t),
                direct_read(&store, "bench/big.bin", e.big).await,
                Some(rss),
            )
        })
        .await;
        rows.push(row(
            format!("second read {big_mib} MiB (page cache)"),
            "MB/s",
            r,
            true,
        ));
        // The disk cache: the page cache dropped between the reads.
        let (mut first, mut second, mut direct, mut rss) = (vec![], vec![], vec![], 0f64);
        for _ in 0..e.runs {
            let m = Mount::with(&e, &["--read-cache"]);
            let p = m.path("big.bin");
            first.push(mb(
                e.big,
                blocking({
                    let p = p.clone();
                    move || read_file(p)
                })
                .await,
            ));
            tokio::time::sleep(Duration::from_secs(2)).await; // the background verification
            drop_caches();
            second.push(mb(e.big, blocking(move || read_file(p)).await));
            rss = rss.max(m.peak_rss_mib());
            drop(m);
            direct.push(direct_read(&store, "bench/big.bin", e.big).await);
        }
        let d = median(direct);
        rows.push(row(
            format!("first read {big_mib} MiB (--read-cache)"),
            "MB/s",
            (median(first), d, Some(rss)),
            true,
        ));
        rows.push(row(
            format!("second read {big_mib} MiB (disk cache)"),
            "MB/s",
            (median(second), d, Some(rss)),
            true,
        ));
        // Two epochs over the small files, 8 readers.
        let (mut one, mut two, mut direct) = (vec![], vec![], vec![]);
        for _ in 0..e.runs {
            let m = Mount::with(&e, &["--read-cache", "--metadata-ttl", "60"]);
            let n = e.small;
            for epoch in [&mut one, &mut two] {
                let dir = m.path("small");
                drop_caches();
                let t = blocking(move || mount_small_files(&dir, n, 8)).await;
                epoch.push(n as f64 / t.as_secs_f64());
            }
            drop(m);
            direct.push(n as f64 / direct_small_files(&store, n, 8).await.as_secs_f64());
        }
        let d = median(direct);
        let name = |k: &str| format!("{} files of 64 KiB, 8 readers, {k}", e.small);
        rows.push(row(
            name("epoch 1"),
            "files/s",
            (median(one), d, None),
            true,
        ));
        rows.push(row(
            name("epoch 2 (disk cache)"),
            "files/s",
            (median(two), d, None),
            true,
        ));
        // Random 4 KiB reads of a cached file.
        println!("random 4 KiB reads of a cached {} MiB file...", mid >> 20);
        let m = Mount::with(&e, &["--read-cache"]);
        let p = m.path("mid.bin");
        blocking({
            let p = p.clone();
            move || read_file(p)
        })
        .await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let secs = e.random_secs;
        let pl = blocking(move || mount_random(&p, mid, secs)).await;
        let dl = direct_random(&store, "bench/mid.bin", mid, secs).await;
        rows.push(row(
            format!("random 4 KiB reads, {} MiB cached", mid >> 20),
            "IOPS",
            (
                pl.len() as f64 / secs as f64,
                dl.len() as f64 / secs as f64,
                Some(m.peak_rss_mib()),
            ),
            true,
        ));
    }

    if only("random") {
        println!("random 4 KiB reads for {} s...", e.random_secs);
        let m = Mount::new(&e);
        let path = m.path("big.bin");
        let (size, secs) = (e.big, e.random_secs);
        let mut pl = blocking(move || mount_random(&path, size, secs)).await;
        let mut dl = direct_random(&store, "bench/big.bin", e.big, e.random_secs).await;
        let (pn, dn) = (pl.len() as f64 / secs as f64, dl.len() as f64 / secs as f64);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        rows.push(row(
            "random 4 KiB reads".into(),
            "IOPS",
            (pn, dn, Some(m.peak_rss_mib())),
            true,
        ));
        let p50 = (
            ms(percentile(&mut pl, 0.5)),
            ms(percentile(&mut dl, 0.5)),
            None,
        );
        rows.push(row("random 4 KiB p50 latency".into(), "ms", p50, false));
        let p99 = (
            ms(percentile(&mut pl, 0.99)),
            ms(percentile(&mut dl, 0.99)),
            None,
        );
        rows.push(row("random 4 KiB p99 latency".into(), "ms", p99, false));
    }

    if only("write") {
        println!("sequential write of {} MiB...", e.write >> 20);
        let mut i = 0;
        let r = runs(e.runs, || {
            i += 1;
            let i = i;
            let (e, store) = (&e, &store);
            async move {
                let m = Mount::new(e);
                let path = m.path(&format!("written-{i}.bin"));
                let size = e.write;
                let t = blocking(move || mount_write(&path, size)).await;
                let rss = m.peak_rss_mib();
                drop(m);
                let d = direct_write(store, &format!("bench/direct-{i}.bin"), e.write).await;
                (mb(e.write, t), mb(e.write, d), Some(rss))
            }
        })
        .await;
        rows.push(row(
            format!("sequential write {} MiB (until close)", e.write >> 20),
            "MB/s",
            r,
            true,
        ));
    }

    if only("ls") {
        println!("ls -l of {} entries...", e.many);
        let (mut cold, mut warm, mut d) = (vec![], vec![], vec![]);
        for _ in 0..e.runs {
            let m = Mount::with(&e, &["--metadata-ttl", "60"]);
            let dir = m.path("many");
            let ls = format!("ls -l {} > /dev/null", dir.display());
            cold.push(time_cmd(&ls).as_secs_f64());
            warm.push(time_cmd(&ls).as_secs_f64());
            drop(m);
            let t = Instant::now();
            assert_eq!(
                store.list_dir("bench/many/").await.unwrap().files.len(),
                e.many
            );
            d.push(t.elapsed().as_secs_f64());
        }
        let direct_list = median(d);
        let name = |k: &str| format!("ls -l {} entries, {k}", e.many);
        rows.push(row(
            name("cold"),
            "s",
            (median(cold), direct_list, None),
            false,
        ));
        rows.push(row(
            name("warm (TTL 60 s)"),
            "s",
            (median(warm), direct_list, None),
            false,
        ));
    }

    if only("small") {
        for readers in [1usize, 8] {
            println!("{} files of 64 KiB with {readers} reader(s)...", e.small);
            let r = runs(e.runs, || async {
                let m = Mount::new(&e);
                let dir = m.path("small");
                let n = e.small;
                let t = blocking(move || mount_small_files(&dir, n, readers)).await;
                let d = direct_small_files(&store, e.small, readers).await;
                (n as f64 / t.as_secs_f64(), n as f64 / d.as_secs_f64(), None)
            })
            .await;
            let name = format!("{} files of 64 KiB, {readers} reader(s)", e.small);
            rows.push(row(name, "files/s", r, true));
        }
    }

    if only("stat") {
        println!("stat of {} files...", e.many.min(10_000));
        let n = e.many.min(10_000);
        let r = runs(e.runs, || async {
            let m = Mount::new(&e);
            let dir = m.path("many");
            let t = blocking(move || mount_stat(&dir, n)).await;
            let d = direct_stat(&store, n).await;
            (n as f64 / t.as_secs_f64(), n as f64 / d.as_secs_f64(), None)
        })
        .await;
        rows.push(row(
            format!("stat {n} files (lookup each)"),
            "ops/s",
            r,
            true,
        ));
    }

    println!();
    println!(
        "{:<64} {:>8} {:>11} {:>11} {:>8} {:>14}",
        "workload", "unit", "pail", "direct", "ratio", "peak RSS MiB"
    );
    for r in &rows {
        let note = if r.higher_is_better {
            ""
        } else {
            " (lower is better)"
        };
        println!(
            "{:<64} {:>8} {:>11.2} {:>11.2} {:>8.2} {:>14}{note}",
            r.name,
            r.unit,
            r.pail,
            r.direct,
            r.pail / r.direct,
            r.rss.map(|v| format!("{v:.0}")).unwrap_or_default()
        );
    }
    println!(
        "(medians of {} runs; direct = pail's store layer without FUSE, same run; ratio = pail/direct)",
        e.runs
    );
    if !cpu_notes.is_empty() {
        println!();
        println!(
            "CPU-seconds per GiB read, whole machine ({} cores), medians:",
            online_cpus()
        );
        for n in &cpu_notes {
            println!("{n}");
        }
    }
}
