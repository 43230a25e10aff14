//! The bench's CSI node plugin: `pail csi --mode node` with a kubelet directory of its own,
//! publishing and unpublishing a volume over its socket as kubelet would, so that rows can
//! measure what pods of a node see (mounts started by the plugin, the node cache).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use pail::csi::pb::node_client::NodeClient;
use pail::csi::pb::volume_capability::access_mode::Mode;
use pail::csi::pb::volume_capability::{AccessMode, AccessType, MountVolume};
use pail::csi::pb::{NodePublishVolumeRequest, NodeUnpublishVolumeRequest, VolumeCapability};
use tonic::transport::{Channel, Endpoint};

use super::work::Env;

/// A node plugin and its directories.
pub struct Node {
    child: Child,
    dir: tempfile::TempDir,
    client: NodeClient<Channel>,
}

impl Node {
    /// Start the plugin, allowed to reach the test server.
    pub async fn start(e: &Env) -> Node {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("kubelet/pods")).unwrap();
        let socket = dir.path().join("csi.sock");
        let child = Command::new(&e.pail)
            .arg("csi")
            .arg(format!("--endpoint=unix://{}", socket.display()))
            .args([
                "--node-id=bench",
                "--mode=node",
                "--allowed-endpoints=127.0.0.1",
            ])
            .arg(format!(
                "--kubelet-dir={}",
                dir.path().join("kubelet").display()
            ))
            .arg(format!(
                "--state-dir={}",
                dir.path().join("state").display()
            ))
            .arg("--mount-uids=901000000-901000999")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "the node plugin did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let channel = Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let socket = socket.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(socket).await?,
                    ))
                }
            }))
            .await
            .unwrap();
        Node {
            child,
            dir,
            client: NodeClient::new(channel),
        }
    }

    /// The target path of `pod`'s volume.
    pub fn target(&self, pod: &str) -> PathBuf {
        self.dir.path().join(format!(
            "kubelet/pods/{pod}/volumes/kubernetes.io~csi/vol/mount"
        ))
    }

    /// Publish the bench prefix to `pod` with these mount options.
    pub async fn publish(&mut self, e: &Env, pod: &str, options: &str) -> PathBuf {
        let target = self.target(pod);
        let req = NodePublishVolumeRequest {
            volume_id: "pv-bench".into(),
            target_path: target.display().to_string(),
            volume_capability: Some(VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: Mode::MultiNodeMultiWriter as i32,
                }),
            }),
            secrets: HashMap::from([
                ("AWS_ACCESS_KEY_ID".into(), e.key.clone()),
                ("AWS_SECRET_ACCESS_KEY".into(), e.secret.clone()),
            ]),
            volume_context: HashMap::from([
                ("bucketName".into(), e.bucket.clone()),
                ("prefix".into(), "bench/".into()),
                ("endpointUrl".into(), e.endpoint.clone()),
                ("forcePathStyle".into(), "true".into()),
                ("mountOptions".into(), options.into()),
            ]),
            ..Default::default()
        };
        self.client.node_publish_volume(req).await.unwrap();
        target
    }

    /// Unpublish `pod`'s volume (its mount process stops).
    pub async fn unpublish(&mut self, pod: &str) {
        let req = NodeUnpublishVolumeRequest {
            volume_id: "pv-bench".into(),
            target_path: self.target(pod).display().to_string(),
        };
        self.client.node_unpublish_volume(req).await.unwrap();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
