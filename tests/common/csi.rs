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

/// The mount user ranges of drivers running now, one each (`/tmp/pail-test-uids/<n>`
/// holds the pid of the test process using range `n`), so that every process of a range is
/// one driver's.
fn take_uid_range() -> (u32, PathBuf) {
    let dir = Path::new("/tmp/pail-test-uids");
    fs::create_dir_all(dir).unwrap();
    for n in 0..900u32 {
        let slot = dir.join(n.to_string());
        let mine = std::process::id().to_string();
        let claimed = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&slot)
            .and_then(|mut f| std::io::Write::write_all(&mut f, mine.as_bytes()));
        if claimed.is_ok() {
            return (900_000_000 + n * 1000, slot);
        }
        // A slot of a test process that is gone is free again.
        let owner = fs::read_to_string(&slot).unwrap_or_default();
        if !owner.is_empty()
            && owner != mine
            && !Path::new(&format!("/proc/{owner}")).exists()
            && fs::remove_file(&slot).is_ok()
            && fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&slot)
                .and_then(|mut f| std::io::Write::write_all(&mut f, mine.as_bytes()))
                .is_ok()
        {
            return (900_000_000 + n * 1000, slot);
        }
    }
    panic!("no free mount user range for the test driver");
}

/// A `pail csi --mode all` process with its own kubelet, state and socket directories.
pub struct Driver {
    pub child: Option<Child>,
    /// The binary the driver runs (and so its mount processes): `pail_bin()` unless set.
    pub bin: PathBuf,
    dir: tempfile::TempDir,
    metrics_port: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    /// The first of its mount users (a thousand).
    pub first_uid: u32,
    uid_slot: PathBuf,
}

impl Driver {
    /// A driver whose admin allows the loopback test servers.
    pub fn start() -> Driver {
        Driver::start_with(&["--allowed-endpoints=127.0.0.1"], &[])
    }

    /// A driver with these extra flags and environment.
    /// Unless `args` say otherwise, the node's budgets are far above what tests publish.
    pub fn start_with(args: &[&str], env: &[(&str, &str)]) -> Driver {
        let mut args: Vec<&str> = args.to_vec();
        for (flag, roomy) in [
            ("--node-cache-size", "--node-cache-size=100T"),
            ("--node-memory-limit", "--node-memory-limit=100T"),
        ] {
            if !args.iter().any(|a| a.starts_with(flag)) {
                args.push(roomy);
            }
        }
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("kubelet/pods")).unwrap();
        let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let (first_uid, uid_slot) = take_uid_range();
        fs::write(dir.path().join("uids"), first_uid.to_string()).unwrap();
        let mut d = Driver {
            child: None,
            bin: PathBuf::from(pail_bin()),
            first_uid,
            uid_slot,
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
            .arg(format!(
                "--mount-uids={}-{}",
                self.first_uid,
                self.first_uid + 999
            ))
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
        self.kill();
        self.spawn();
    }

    /// SIGKILL the node plugin (its mounts' processes run on).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
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
        let pods = self.kubelet();
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
        let _ = fs::remove_file(&self.uid_slot);
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

/// A staging path of `volume` below the driver's kubelet directory (as kubelet 1.20 makes).
pub fn staging_of(d: &Driver, volume: &str) -> PathBuf {
    d.kubelet()
        .join(format!("plugins/kubernetes.io/csi/pv/{volume}/globalmount"))
}

pub fn stage_req(
    id: &str,
    staging: &Path,
    context: HashMap<String, String>,
) -> NodeStageVolumeRequest {
    NodeStageVolumeRequest {
        volume_id: id.to_string(),
        staging_target_path: staging.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
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

fn real_uid(pid: u32) -> Option<u32> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub fn zombie_or_gone(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

/// The pail mount processes serving `target`, found as the driver knows them (its record
/// of the mount: the process, and every process of the mount's own user), and any process
/// of the driver's mount users that no record names (left by an interrupted publish).
pub fn mount_pids(target: &Path) -> Vec<u32> {
    // (Not in the target itself: a mount there may answer any name.)
    let Some(dir) = target
        .ancestors()
        .skip(1)
        .find(|a| a.join("uids").is_file())
    else {
        return Vec::new();
    };
    let first: u32 = fs::read_to_string(dir.join("uids"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let records: Vec<serde_json::Value> = fs::read_dir(dir.join("state/mounts"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .filter_map(|e| serde_json::from_slice(&fs::read(e.path()).ok()?).ok())
                .collect()
        })
        .unwrap_or_default();
    let known: std::collections::HashSet<u64> =
        records.iter().filter_map(|r| r["uid"].as_u64()).collect();
    let own = records
        .iter()
        .find(|r| r["target"].as_str() == Some(&target.display().to_string()));
    let own_uid = own.and_then(|r| r["uid"].as_u64());
    let own_pid = own.and_then(|r| r["pid"].as_u64()).unwrap_or(0) as u32;
    // Each mount's keeper (`pail keep-connection`) runs as its user too, and serves nothing.
    let keepers: std::collections::HashSet<u32> = records
        .iter()
        .filter_map(|r| r["keeper"]["pid"].as_u64())
        .map(|p| p as u32)
        .collect();
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if zombie_or_gone(pid) || keepers.contains(&pid) {
            continue;
        }
        let Some(uid) = real_uid(pid) else { continue };
        let uid = uid as u64;
        let stray = (first as u64..first as u64 + 1000).contains(&uid) && !known.contains(&uid);
        if pid == own_pid || Some(uid) == own_uid || stray {
            pids.push(pid);
        }
    }
    pids
}

/// The driver's record of the mount at `target`.
fn record_of(target: &Path) -> Option<serde_json::Value> {
    serde_json::from_slice(&fs::read(record_path(target)?).ok()?).ok()
}

/// Where the driver keeps `target`'s record.
fn record_path(target: &Path) -> Option<PathBuf> {
    let dir = target
        .ancestors()
        .skip(1)
        .find(|a| a.join("uids").is_file())?;
    let slug = pail::mounter::state::slug(target);
    Some(dir.join(format!("state/mounts/{slug}.json")))
}

/// The FUSE connection `target`'s record names (`None` where the kernel does not say).
pub fn recorded_connection(target: &Path) -> Option<u64> {
    record_of(target)?["connection"].as_u64()
}

/// Make `target`'s record name connection `number` (a record that disagrees with what its
/// processes hold), while no plugin runs.
pub fn set_recorded_connection(target: &Path, number: u64) {
    let mut r = record_of(target).expect("a record");
    r["connection"] = number.into();
    fs::write(
        record_path(target).unwrap(),
        serde_json::to_vec(&r).unwrap(),
    )
    .unwrap();
}

/// The keeper of `target`'s connection, from the driver's record.
pub fn keeper_pid(target: &Path) -> Option<u32> {
    record_of(target)?["keeper"]["pid"]
        .as_u64()
        .map(|p| p as u32)
}

/// The user a mount's process runs as, from the driver's record.
pub fn mount_uid(target: &Path) -> Option<u32> {
    record_of(target)?["uid"].as_u64().map(|u| u as u32)
}

/// Run the shell `script` with `args` as `uid` (group `uid`, no other groups): its stdout.
pub fn run_as(uid: u32, script: &str, args: &[PathBuf]) -> String {
    use std::os::unix::process::CommandExt;
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("sh")
        .args(args)
        .uid(uid)
        .gid(uid)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every file and directory under `dir` (not following links), `dir` first.
pub fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].clone();
        i += 1;
        if fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir()) {
            out.extend(fs::read_dir(&p).unwrap().flatten().map(|e| e.path()));
        }
    }
    out
}
