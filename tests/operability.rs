//! What an operator sees of a volume through the node plugin alone, on real FUSE: its
//! mount process's log lines on the plugin's output with the volume and pod, per-volume
//! Prometheus counters and latency histograms after a pod read and wrote (every series the
//! shipped dashboard uses among them, no secret in any), and the admin's volume limit.

mod common;

use std::time::{Duration, Instant};

use common::csi::{Driver, SECRET, publish_req, static_context, unpublish_req};
use common::*;
use pail::csi::pb::NodeGetInfoRequest;

/// The value of the series `name{labels}` in `text`.
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn a_volumes_log_lines_and_counters_reach_the_node_plugins_output_and_metrics() {
    let s3 = s3();
    let prefix = unique("operable");
    let body = data(3 << 20, 5);
    s3.store()
        .put(
            &format!("{prefix}in.bin"),
            body.clone().into(),
            &Default::default(),
        )
        .await
        .unwrap();
    let d = Driver::start_with(
        &[
            "--allowed-endpoints=127.0.0.1",
            "--max-volumes-per-node=17",
            "--metrics-namespace-labels",
        ],
        &[],
    );
    let mut node = d.node().await;
    let info = node
        .node_get_info(NodeGetInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.max_volumes_per_node, 17);
    let t = d.target("pod-uid-1");
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("csi.storage.k8s.io/pod.name".into(), "trainer-0".into());
    ctx.insert("csi.storage.k8s.io/pod.namespace".into(), "ml".into());
    node.node_publish_volume(publish_req(&s3, "vol-ops", &t, ctx))
        .await
        .unwrap();
    let e = std::fs::metadata(t.join("no-such-file")).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    assert!(std::fs::read(t.join("in.bin")).unwrap() == body);
    std::fs::write(t.join("out.txt"), b"twelve bytes").unwrap();

    // The mount's own log lines, on the plugin's output, with the volume and the pod.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = d.log();
        if log.lines().any(|l| {
            l.contains("pail::mount")
                && l.contains("mounted")
                && l.contains("vol-ops")
                && l.contains("trainer-0")
                && l.contains("ml")
        }) {
            break;
        }
        assert!(Instant::now() < deadline, "no mount log line in:\n{log}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Counters: the mount process writes them every 5 s; the plugin serves them per volume.
    // The mount label: a digest of the mount point, the same for every series of the mount.
    let mount = pail::mounter::state::slug(&t);
    let vl = format!("volume_id=\"vol-ops\",namespace=\"ml\",mount=\"{mount}\"");
    let labels = format!("{{{vl}}}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let metrics = loop {
        let m = d.metrics();
        if value(&m, &format!("pail_volume_read_bytes_total{labels}"))
            .is_some_and(|v| v >= body.len() as f64)
        {
            break m;
        }
        assert!(Instant::now() < deadline, "no read counter in:\n{m}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        value(
            &metrics,
            &format!("pail_volume_written_bytes_total{labels}")
        ) >= Some(12.0),
        "{metrics}"
    );
    assert_eq!(
        value(&metrics, &format!("pail_volume_up{labels}")),
        Some(1.0)
    );
    let get_ok =
        format!("pail_volume_store_request_seconds_count{{{vl},op=\"get\",status=\"ok\"}}");
    assert!(value(&metrics, &get_ok) >= Some(1.0), "{metrics}");
    assert!(
        metrics.contains(&format!(
            "pail_volume_fuse_operation_seconds_bucket{{{vl},op=\"read\""
        )),
        "{metrics}"
    );
    // Failed operations are counted by their errno.
    assert!(
        metrics.contains(&format!(
            "pail_volume_fuse_operation_seconds_count{{{vl},op=\"lookup\",status=\"ENOENT\"}}"
        )),
        "{metrics}"
    );
    assert!(!metrics.contains(SECRET), "a secret in the metrics");
    // Every series the shipped dashboard plots exists.
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/pail.json"),
    )
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("pail_"))
        .collect();
    names.sort();
    names.dedup();
    assert!(names.len() >= 8, "{names:?}");
    for name in names {
        let base = name.trim_end_matches("_bucket").trim_end_matches("_count");
        assert!(
            metrics.contains(&format!("# TYPE {base} "))
                || metrics.contains(&format!("# TYPE {name} ")),
            "the dashboard plots {name}, which the plugin does not serve"
        );
    }
    node.node_unpublish_volume(unpublish_req("vol-ops", &t))
        .await
        .unwrap();
    assert!(!is_mounted(&t));
}
