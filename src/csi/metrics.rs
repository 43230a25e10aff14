//! A minimal Prometheus text endpoint of the node plugin (`--metrics-address`): mounts,
//! restarts, and per volume what its mount process reports (bytes, store requests and
//! latencies, FUSE operation latencies, caches, memory), labelled by volume id, the mount
//! (a volume mounted for two identities is two mounts), and the pod's namespace only when
//! the admin asks. Plain HTTP/1.0, one response per connection;
//! anyone who reaches the node's address may connect, so connections are capped and each
//! must send its request within seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 16;
/// How long a client may take to send its request, and to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(5);

use crate::mounter::Mounter;
use crate::telemetry::{Snapshot, label};

fn render(mounter: &dyn Mounter, namespaces: bool) -> String {
    let stats = mounter.stats();
    let mut out = format!(
        "# HELP pail_mounts Volumes published on this node.\n# TYPE pail_mounts gauge\npail_mounts {}\n\
         # HELP pail_dead_mounts_total Mount processes found dead (by NodeGetVolumeStats or NodeUnpublishVolume).\n\
         # TYPE pail_dead_mounts_total counter\npail_dead_mounts_total {}\n\
         # HELP pail_mount_restarts_total Mount processes started on a live connection to replace one that died.\n\
         # TYPE pail_mount_restarts_total counter\npail_mount_restarts_total {}\n",
        stats.mounts, stats.dead_mounts, stats.restarts
    );
    // Per volume: labelled by volume id, and the pod's namespace when asked (never secrets).
    let volumes = mounter.volumes();
    let labelled: Vec<(String, &crate::mounter::VolumeReport)> = volumes
        .iter()
        .map(|v| {
            let mut l = format!("volume_id=\"{}\"", label(&v.volume_id));
            if namespaces {
                let ns = v.pod.as_ref().map_or("", |p| p.namespace.as_str());
                l.push_str(&format!(",namespace=\"{}\"", label(ns)));
            }
            // Two mounts of one volume (other identities) are two series, never one twice.
            l.push_str(&format!(",mount=\"{}\"", label(&v.mount)));
            (l, v)
        })
        .collect();
    out.push_str("# HELP pail_volume_restarts_total Mount processes of the volume replaced after dying.\n# TYPE pail_volume_restarts_total counter\n");
    for (l, v) in &labelled {
        out.push_str(&format!(
            "pail_volume_restarts_total{{{l}}} {}\n",
            v.restarts
        ));
    }
    out.push_str("# HELP pail_volume_pods Pods of this node using the volume's mount (a shared mount: one bind each).\n# TYPE pail_volume_pods gauge\n");
    for (l, v) in &labelled {
        out.push_str(&format!("pail_volume_pods{{{l}}} {}\n", v.pods));
    }
    out.push_str("# HELP pail_volume_up Whether a mount process serves the volume now.\n# TYPE pail_volume_up gauge\n");
    for (l, v) in &labelled {
        out.push_str(&format!(
            "pail_volume_up{{{l}}} {}\n",
            u8::from(!v.restarting)
        ));
    }
    let snapshots: Vec<(String, Snapshot)> = labelled
        .iter()
        .filter_map(|(l, v)| {
            let snap: Snapshot = serde_json::from_str(v.snapshot.as_deref()?).ok()?;
            Some((l.clone(), snap.sane()))
        })
        .collect();
    let refs: Vec<(String, &Snapshot)> = snapshots.iter().map(|(l, s)| (l.clone(), s)).collect();
    out.push_str(&crate::telemetry::render(&refs));
    out
}

/// Read a request head (at most 4 KiB, within [`IO_TIMEOUT`]); whether one came.
async fn read_head(conn: &mut tokio::net::TcpStream) -> bool {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    let read = async {
        loop {
            match conn.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if buf.windows(4).any(|w| w == b"\r\n\r\n")
                        || buf.windows(2).any(|w| w == b"\n\n")
                    {
                        return true;
                    }
                    if buf.len() > 4096 {
                        return false;
                    }
                }
            }
        }
    };
    tokio::time::timeout(IO_TIMEOUT, read)
        .await
        .unwrap_or(false)
}

/// Serve `/metrics` on `addr` until the task is dropped (`namespaces`: label volumes with
/// their pod's namespace).
pub async fn serve(
    addr: SocketAddr,
    mounter: Arc<dyn Mounter>,
    namespaces: bool,
) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let mut conn = match listener.accept().await {
            Ok((c, _)) => c,
            Err(e) => {
                // Out of descriptors, say: wait instead of spinning or giving up.
                tracing::warn!(error = %e, "metrics: accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            drop(conn);
            continue;
        };
        let mounter = mounter.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if !read_head(&mut conn).await {
                return;
            }
            let m = mounter.clone();
            let body = tokio::task::spawn_blocking(move || render(m.as_ref(), namespaces))
                .await
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = tokio::time::timeout(IO_TIMEOUT, conn.write_all(resp.as_bytes())).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn idle_connections_are_dropped_and_capped() {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let mounter: Arc<dyn Mounter> = Arc::new(crate::mounter::FakeMounter::default());
        tokio::spawn(serve(addr, mounter, false));
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Many idle connections: they do not keep a real client out for long.
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS * 4 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        let started = std::time::Instant::now();
        let body = loop {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
            let mut out = String::new();
            let _ = c.read_to_string(&mut out).await;
            if !out.is_empty() {
                break out;
            }
            assert!(started.elapsed() < IO_TIMEOUT * 3, "never answered");
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        assert!(body.contains("pail_mounts 0"), "{body}");
        // The idle ones were closed by the server.
        let mut closed = 0;
        for mut c in idle {
            let mut b = [0u8; 16];
            if let Ok(Ok(0)) = tokio::time::timeout(IO_TIMEOUT * 2, c.read(&mut b)).await {
                closed += 1;
            }
        }
        assert_eq!(closed, MAX_CONNECTIONS * 4);
    }
}
