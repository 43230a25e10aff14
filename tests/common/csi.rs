//! The CSI driver harness: a `pail csi --mode all` process with its own kubelet, state and
//! socket directories, gRPC clients over its socket, and request builders.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper_util::rt::TokioIo;
use pail::csi::pb::controller_client::ControllerClient;
use pail::csi::pb::node_client::NodeClient;
use pail::csi::pb::volume_capability::access_mode::Mode;
use pail::csi::pb::volume_capability::{AccessMode, AccessType, MountVolume};
use pail::csi::pb::*;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint};

use super::{S3, pail_bin};

pub const SECRET: &str = "pailtestsecret";

/// A `pail csi --mode all` process with its own kubelet, state and socket directories.
pub struct Driver {
    pub child: Option<Child>,
    /// The binary the driver runs (and so its mount processes): `pail_bin()` unless set.
    pub bin: PathBuf,
    dir: tempfile::TempDir,
    metrics_port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
}

impl Driver {
    /// A driver whose admin allows the loopback test servers.
    pub fn start() -> Driver {
        Driver::start_with(&["--allowed-endpoints=127.0.0.1"], &[])
    }

    /// A driver with these extra flags and environment.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Driver {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kubelet/pods")).unwrap();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut d = Driver {
            child: None,
            bin: PathBuf::from(pail_bin()),
            dir,
            metrics_port,
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        };
        d.spawn();
        d
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("csi.sock")
    }

    pub fn kubelet(&self) -> PathBuf {
        self.dir.path().join("kubelet")
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub fn spawn(&mut self) {
        // A killed predecessor leaves its socket file behind: wait for a live one.
        let _ = fs::remove_file(self.socket());
        let log = fs::File::create(self.dir.path().join("driver.log")).unwrap();
        let child = Command::new(&self.bin)
            .arg("csi")
            .arg(format!("--endpoint=unix://{}", self.socket().display()))
            .args(["--node-id=test-node", "--mode=all"])
            .args(&self.args)
            .arg(format!("--metrics-address=127.0.0.1:{}", self.metrics_port))
            .arg(format!("--kubelet-dir={}", self.kubelet().display()))
            .arg(format!("--state-dir={}", self.state().display()))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.socket().exists() {
            assert!(
                Instant::now() < deadline,
                "the driver did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL the plugin (mounts it started keep running), then start a new one.
    pub fn kill_and_restart(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
        self.spawn();
    }

    pub fn target(&self, pod: &str) -> PathBuf {
        self.kubelet()
            .join(format!("pods/{pod}/volumes/kubernetes.io~csi/vol/mount"))
    }

    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let mut c = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        c.read_to_string(&mut out).unwrap();
        out
    }

    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("driver.log")).unwrap_or_default()
    }

    pub async fn channel(&self) -> Channel {
        let path = self.socket();
        Endpoint::try_from("http://[::]:50051")
            .unwrap()
            .connect_with_connector(tower::service_fn(move |_| {
                let path = path.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
            }))
            .await
            .unwrap()
    }

    pub async fn node(&self) -> NodeClient<Channel> {
        NodeClient::new(self.channel().await)
    }

    pub async fn controller(&self) -> ControllerClient<Channel> {
        ControllerClient::new(self.channel().await)
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // Unmount anything a failed test left behind, then stop the driver.
        let pods = self.kubelet().join("pods");
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for line in mounts.lines() {
            if let Some(mp) = line.split(' ').nth(4)
                && Path::new(mp).starts_with(&pods)
            {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn mount_cap(mode: Mode) -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn secrets(s3: &S3) -> HashMap<String, String> {
    HashMap::from([
        ("AWS_ACCESS_KEY_ID".to_string(), s3.access_key.clone()),
        ("AWS_SECRET_ACCESS_KEY".to_string(), s3.secret_key.clone()),
        ("endpointUrl".to_string(), s3.endpoint.clone()),
    ])
}

pub fn static_context(s3: &S3, prefix: &str) -> HashMap<String, String> {
    HashMap::from([
        ("bucketName".to_string(), s3.bucket.clone()),
        ("prefix".to_string(), prefix.to_string()),
        ("endpointUrl".to_string(), s3.endpoint.clone()),
        ("forcePathStyle".to_string(), "true".to_string()),
    ])
}

pub fn publish_req(
    s3: &S3,
    id: &str,
    target: &Path,
    context: HashMap<String, String>,
) -> NodePublishVolumeRequest {
    let mut secrets = secrets(s3);
    secrets.remove("endpointUrl");
    NodePublishVolumeRequest {
        volume_id: id.to_string(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        secrets,
        volume_context: context,
        ..Default::default()
    }
}

pub fn unpublish_req(id: &str, target: &Path) -> NodeUnpublishVolumeRequest {
    NodeUnpublishVolumeRequest {
        volume_id: id.to_string(),
        target_path: target.display().to_string(),
    }
}

/// The pids of pail mount processes serving `target`.
pub fn mount_pids(target: &Path) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true);
        if !zombie
            && args.contains(&&b"mount"[..])
            && args.contains(&target.as_os_str().as_encoded_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}
