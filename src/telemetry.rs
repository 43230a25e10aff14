//! Counters and latency histograms of one mount process (object-store requests by
//! operation and outcome, FUSE operations, bytes, retries), the snapshot of them the process
//! writes (`--metrics-file`), and its rendering as Prometheus text, per volume, by the node
//! plugin. Process-wide: one process serves one mount.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Upper bounds of the latency buckets, in seconds.
pub const BOUNDS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// A latency histogram (counts per bucket, not cumulative; the last one is +Inf).
#[derive(Default)]
struct Histogram {
    counts: [AtomicU64; BOUNDS.len() + 1],
    sum_us: AtomicU64,
}

impl Histogram {
    fn observe(&self, took: Duration) {
        let s = took.as_secs_f64();
        let i = BOUNDS.iter().position(|b| s <= *b).unwrap_or(BOUNDS.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    fn snapshot(&self, op: &str, status: &str) -> Series {
        Series {
            op: op.to_string(),
            status: status.to_string(),
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_seconds: self.sum_us.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Monotonic counters.
#[derive(Debug, Clone, Copy)]
pub enum Counter {
    /// Bytes read by applications.
    BytesRead,
    /// Bytes written by applications.
    BytesWritten,
    /// Store requests sent again after a transient failure.
    Retries,
    /// Bytes of object data read from the store.
    BytesFetched,
}

type Family = RwLock<BTreeMap<(&'static str, &'static str), Arc<Histogram>>>;

#[derive(Default)]
struct Registry {
    store: Family,
    fuse: Family,
    counters: [AtomicU64; 4],
}

fn registry() -> &'static Registry {
    static R: OnceLock<Registry> = OnceLock::new();
    R.get_or_init(Registry::default)
}

fn observe(family: &Family, op: &'static str, status: &'static str, took: Duration) {
    if let Some(h) = family
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .get(&(op, status))
    {
        h.observe(took);
        return;
    }
    family
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry((op, status))
        .or_default()
        .observe(took);
}

/// One object-store request `op` that ended with `status` (`ok` or an error kind).
pub fn store_request(op: &'static str, status: &'static str, took: Duration) {
    observe(&registry().store, op, status, took);
}

/// Record FUSE operation `op`, answered with `errno` (0: success) after `took`.
pub fn fuse_op(op: &'static str, errno: i32, took: Duration) {
    observe(&registry().fuse, op, errno_name(errno), took);
}

/// The status label of an answer: `ok`, the errno's name, or `error` for a rare one.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        0 => "ok",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EEXIST => "EEXIST",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENOSPC => "ENOSPC",
        libc::EINVAL => "EINVAL",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EXDEV => "EXDEV",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::EROFS => "EROFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::EINTR => "EINTR",
        libc::EBADF => "EBADF",
        libc::EFBIG => "EFBIG",
        libc::ENOSYS => "ENOSYS",
        libc::EAGAIN => "EAGAIN",
        libc::ENOTCONN => "ENOTCONN",
        _ => "error",
    }
}

/// Add `n` to `counter`.
pub fn add(counter: Counter, n: u64) {
    registry().counters[counter as usize].fetch_add(n, Ordering::Relaxed);
}

/// One histogram in a snapshot.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Series {
    /// Operation.
    pub op: String,
    /// Outcome.
    pub status: String,
    /// Count per bucket of [`BOUNDS`], then above the last.
    pub counts: Vec<u64>,
    /// Sum of the observed latencies.
    pub sum_seconds: f64,
}

/// What a mount process reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Snapshot {
    /// Store requests.
    pub store: Vec<Series>,
    /// FUSE operations.
    pub fuse: Vec<Series>,
    /// Bytes read by applications.
    pub bytes_read: u64,
    /// Bytes written by applications.
    pub bytes_written: u64,
    /// Retried store requests.
    pub retries: u64,
    /// Bytes of object data read from the store.
    #[serde(default)]
    pub fetched_bytes: u64,
    /// Reads answered by the local data cache.
    pub cache_hits: u64,
    /// Reads that went to the store (GET requests).
    pub cache_misses: u64,
    /// Bytes of the memory budget in use.
    pub memory_bytes: u64,
    /// Bytes of staging and data-cache space in use.
    pub staging_bytes: u64,
}

/// Series a snapshot may carry per family; more is not a mount process's doing.
const MAX_SERIES: usize = 256;

impl Snapshot {
    /// A snapshot as read from a mount process, which is not trusted: series of the wrong
    /// shape are dropped, and at most [`MAX_SERIES`] of each family are kept (label values
    /// are escaped when rendered).
    pub fn sane(mut self) -> Snapshot {
        for family in [&mut self.store, &mut self.fuse] {
            family.retain(|s| {
                s.counts.len() == BOUNDS.len() + 1
                    && s.sum_seconds.is_finite()
                    && s.op.len() <= 64
                    && s.status.len() <= 64
            });
            family.truncate(MAX_SERIES);
        }
        self
    }
}

/// The process's counters now; the caller fills in the gauges it owns.
pub fn snapshot() -> Snapshot {
    let r = registry();
    let series = |f: &Family| {
        f.read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((op, status), h)| h.snapshot(op, status))
            .collect::<Vec<_>>()
    };
    let store = series(&r.store);
    let gets = store
        .iter()
        .filter(|s| s.op == "get")
        .map(|s| s.counts.iter().sum::<u64>())
        .sum();
    Snapshot {
        fuse: series(&r.fuse),
        store,
        bytes_read: r.counters[Counter::BytesRead as usize].load(Ordering::Relaxed),
        bytes_written: r.counters[Counter::BytesWritten as usize].load(Ordering::Relaxed),
        retries: r.counters[Counter::Retries as usize].load(Ordering::Relaxed),
        fetched_bytes: r.counters[Counter::BytesFetched as usize].load(Ordering::Relaxed),
        cache_misses: gets,
        ..Default::default()
    }
}

/// Escape a Prometheus label value.
pub fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn histogram(
    out: &mut String,
    name: &str,
    help: &str,
    volumes: &[(String, &Snapshot)],
    pick: fn(&Snapshot) -> &Vec<Series>,
) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
    for (labels, snap) in volumes {
        for s in pick(snap) {
            let l = format!(
                "{labels},op=\"{}\",status=\"{}\"",
                label(&s.op),
                label(&s.status)
            );
            let mut cumulative = 0;
            for (i, c) in s.counts.iter().enumerate() {
                cumulative += c;
                let le = BOUNDS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "{name}_bucket{{{l},le=\"{le}\"}} {cumulative}");
            }
            let _ = writeln!(out, "{name}_sum{{{l}}} {}", s.sum_seconds);
            let _ = writeln!(out, "{name}_count{{{l}}} {cumulative}");
        }
    }
}

/// A per-volume series: name, type, help, value.
type Scalar = (
    &'static str,
    &'static str,
    &'static str,
    fn(&Snapshot) -> u64,
);

/// Prometheus text of `volumes`: each a label set (`volume_id="…",namespace="…"`) and
/// the snapshot of its mount process.
pub fn render(volumes: &[(String, &Snapshot)]) -> String {
    let mut out = String::new();
    let scalars: [Scalar; 9] = [
        (
            "pail_volume_read_bytes_total",
            "counter",
            "Bytes applications read from the volume.",
            |s| s.bytes_read,
        ),
        (
            "pail_volume_fetched_bytes_total",
            "counter",
            "Bytes of object data the volume's mount read from the store.",
            |s| s.fetched_bytes,
        ),
        (
            "pail_volume_written_bytes_total",
            "counter",
            "Bytes applications wrote to the volume.",
            |s| s.bytes_written,
        ),
        (
            "pail_volume_store_retries_total",
            "counter",
            "Store requests sent again after a transient failure.",
            |s| s.retries,
        ),
        (
            "pail_volume_cache_hits_total",
            "counter",
            "Reads answered by the local data cache (--read-cache).",
            |s| s.cache_hits,
        ),
        (
            "pail_volume_cache_misses_total",
            "counter",
            "Ranged GETs sent to the store.",
            |s| s.cache_misses,
        ),
        (
            "pail_volume_memory_bytes",
            "gauge",
            "Bytes of the mount's memory budget in use (read-ahead and upload buffers).",
            |s| s.memory_bytes,
        ),
        (
            "pail_volume_staging_bytes",
            "gauge",
            "Bytes of local staging and data-cache space in use.",
            |s| s.staging_bytes,
        ),
        (
            "pail_volume_store_requests_total",
            "counter",
            "Store requests, all operations.",
            |s| s.store.iter().map(|x| x.counts.iter().sum::<u64>()).sum(),
        ),
    ];
    for (name, kind, help, get) in scalars {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, snap) in volumes {
            let _ = writeln!(out, "{name}{{{labels}}} {}", get(snap));
        }
    }
    histogram(
        &mut out,
        "pail_volume_store_request_seconds",
        "Latency of store requests by operation and outcome (including retries).",
        volumes,
        |s| &s.store,
    );
    histogram(
        &mut out,
        "pail_volume_fuse_operation_seconds",
        "Latency of FUSE operations answered by the mount process, by operation and outcome.",
        volumes,
        |s| &s.fuse,
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets_per_volume() {
        store_request("get", "ok", Duration::from_micros(700));
        store_request("get", "ok", Duration::from_secs(20));
        add(Counter::BytesRead, 5);
        add(Counter::BytesFetched, 7);
        let snap = snapshot();
        let text = render(&[("volume_id=\"v\",namespace=\"ns\"".to_string(), &snap)]);
        assert!(
            text.contains("pail_volume_read_bytes_total{volume_id=\"v\",namespace=\"ns\"} 5"),
            "{text}"
        );
        assert!(
            text.contains("pail_volume_fetched_bytes_total{volume_id=\"v\",namespace=\"ns\"} 7"),
            "{text}"
        );
        assert!(text.contains(
            "pail_volume_store_request_seconds_bucket{volume_id=\"v\",namespace=\"ns\",op=\"get\",status=\"ok\",le=\"0.001\"} 1"
        ), "{text}");
        assert!(text.contains(
            "pail_volume_store_request_seconds_bucket{volume_id=\"v\",namespace=\"ns\",op=\"get\",status=\"ok\",le=\"+Inf\"} 2"
        ), "{text}");
        assert!(
            text.contains("pail_volume_cache_misses_total{volume_id=\"v\",namespace=\"ns\"} 2")
        );
        let back: Snapshot = serde_json::from_str(&serde_json::to_string(&snap).unwrap()).unwrap();
        assert_eq!(back.clone().sane(), snap);
        // What a hostile process might write: wrong shapes and a flood of series go.
        let mut bad = back;
        bad.store[0].counts.push(1);
        bad.fuse = (0..1000)
            .map(|i| Series {
                op: format!("op{i}"),
                counts: vec![0; BOUNDS.len() + 1],
                ..Default::default()
            })
            .collect();
        let bad = bad.sane();
        assert!(bad.store.iter().all(|s| s.counts.len() == BOUNDS.len() + 1));
        assert_eq!(bad.fuse.len(), MAX_SERIES);
        assert_eq!(label("a\"b\\"), "a\\\"b\\\\");
    }
}
