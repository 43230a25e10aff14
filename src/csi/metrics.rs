//! A minimal Prometheus text endpoint of the node plugin (`--metrics-address`): live mounts
//! and mounts found dead. Loopback by default; plain HTTP/1.0, one response per connection.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::mounter::Mounter;

fn render(mounter: &dyn Mounter) -> String {
    let stats = mounter.stats();
    format!(
        "# HELP pail_mounts Volumes published on this node.\n# TYPE pail_mounts gauge\npail_mounts {}\n\
         # HELP pail_dead_mounts_total Mount processes found dead (by NodeGetVolumeStats or NodeUnpublishVolume).\n\
         # TYPE pail_dead_mounts_total counter\npail_dead_mounts_total {}\n\
         # HELP pail_mount_restarts_total Mount processes started on a live connection to replace one that died.\n\
         # TYPE pail_mount_restarts_total counter\npail_mount_restarts_total {}\n",
        stats.mounts, stats.dead_mounts, stats.restarts
    )
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
