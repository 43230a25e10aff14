//! A minimal Prometheus text endpoint of the node plugin (`--metrics-address`): mounts,
//! restarts, and per volume what its mount process reports (bytes, store requests and
//! latencies, FUSE operation latencies, caches, memory). Loopback by default; plain HTTP/1.0, one response per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::mounter::Mounter;
use crate::telemetry::{Snapshot, label};

fn render(mounter: &dyn Mounter) -> String {
    let stats = mounter.stats();
    let mut out = format!(
        "# HELP pail_mounts Volumes published on this node.\n# TYPE pail_mounts gauge\npail_mounts {}\n\
         # HELP pail_dead_mounts_total Mount processes found dead (by NodeGetVolumeStats or NodeUnpublishVolume).\n\
         # TYPE pail_dead_mounts_total counter\npail_dead_mounts_total {}\n\
         # HELP pail_mount_restarts_total Mount processes started on a live connection to replace one that died.\n\
         # TYPE pail_mount_restarts_total counter\npail_mount_restarts_total {}\n",
        stats.mounts, stats.dead_mounts, stats.restarts
    );
    // Per volume: labelled by volume id and the pod's namespace (never secrets).
    let volumes = mounter.volumes();
    let labelled: Vec<(String, &crate::mounter::VolumeReport)> = volumes
        .iter()
        .map(|v| {
            let ns = v.pod.as_ref().map_or("", |p| p.namespace.as_str());
            (
                format!(
                    "volume_id=\"{}\",namespace=\"{}\"",
                    label(&v.volume_id),
                    label(ns)
                ),
                v,
            )
        })
        .collect();
    out.push_str("# HELP pail_volume_restarts_total Mount processes of the volume replaced after dying.\n# TYPE pail_volume_restarts_total counter\n");
    for (l, v) in &labelled {
        out.push_str(&format!(
            "pail_volume_restarts_total{{{l}}} {}\n",
            v.restarts
        ));
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

/// Serve `/metrics` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, mounter: Arc<dyn Mounter>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving metrics");
    loop {
        let (mut conn, _) = listener.accept().await?;
        let mounter = mounter.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let m = mounter.clone();
            let body = tokio::task::spawn_blocking(move || render(m.as_ref()))
                .await
                .unwrap_or_default();
            let resp = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(resp.as_bytes()).await;
        });
    }
}
