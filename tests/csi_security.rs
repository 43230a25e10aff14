//! The node plugin as a security boundary, attacked over its real socket the way a pod
//! author can (every volume attribute of an inline volume is theirs): no volume reaches the
//! node's credentials, the node's network or its resources, and a mount process holds only
//! what it needs. Every refusal is checked to come before anything was mounted or contacted.

mod common;

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::csi::*;
use common::http::Fake;
use common::proxy::Proxy;
use common::*;
use pail::csi::pb::*;
use tonic::Code;

fn inline(mut ctx: HashMap<String, String>) -> HashMap<String, String> {
    ctx.insert("csi.storage.k8s.io/ephemeral".into(), "true".into());
    ctx
}

fn persistent(mut ctx: HashMap<String, String>) -> HashMap<String, String> {
    ctx.insert("csi.storage.k8s.io/ephemeral".into(), "false".into());
    ctx
}

fn no_secrets(mut r: NodePublishVolumeRequest) -> NodePublishVolumeRequest {
    r.secrets.clear();
    r
}

#[tokio::test]
async fn volumes_never_borrow_the_nodes_identity_unless_the_admin_lends_it() {
    let s3 = s3();
    let proxy = Proxy::start(&s3.endpoint);
    // The plugin itself holds working keys (as a node role would).
    let node_env = [
        ("AWS_ACCESS_KEY_ID", s3.access_key.as_str()),
        ("AWS_SECRET_ACCESS_KEY", s3.secret_key.as_str()),
    ];
    let d = Driver::start_with(&["--allowed-endpoints=127.0.0.1"], &node_env);
    let mut node = d.node().await;
    let mut ctx = static_context(&s3, &unique("noborrow"));
    ctx.insert("endpointUrl".into(), proxy.endpoint.clone());
    for (name, attrs) in [
        ("no secret", inline(ctx.clone())),
        ("driver, inline", {
            let mut c = inline(ctx.clone());
            c.insert("authenticationSource".into(), "driver".into());
            c
        }),
        ("driver, persistent", {
            let mut c = persistent(ctx.clone());
            c.insert("authenticationSource".into(), "driver".into());
            c
        }),
    ] {
        let t = d.target("pod-borrow");
        let e = node
            .node_publish_volume(no_secrets(publish_req(&s3, "v", &t, attrs)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{name}: {e:?}");
        assert!(!is_mounted(&t), "{name}");
    }
    assert_eq!(proxy.take_traffic(), (0, 0), "no request reached the store");
    drop(d);

    // Lent to PersistentVolumes only; inline volumes need the second opt-in.
    let d = Driver::start_with(
        &["--allowed-endpoints=127.0.0.1", "--allow-node-credentials"],
        &node_env,
    );
    let mut node = d.node().await;
    let mut pv = persistent(ctx.clone());
    pv.insert("authenticationSource".into(), "driver".into());
    let t = d.target("pod-pv");
    node.node_publish_volume(no_secrets(publish_req(&s3, "pv", &t, pv)))
        .await
        .unwrap();
    fs::write(t.join("f"), b"with the node's keys").unwrap();
    let mut iv = inline(ctx.clone());
    iv.insert("authenticationSource".into(), "driver".into());
    let e = node
        .node_publish_volume(no_secrets(publish_req(&s3, "iv", &d.target("pod-iv"), iv)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    node.node_unpublish_volume(unpublish_req("pv", &t))
        .await
        .unwrap();
}

#[tokio::test]
async fn endpoints_off_the_list_and_private_addresses_are_refused_before_any_connection() {
    let s3 = s3();
    let internal = Fake::start("200 OK", &[], "node-local secret page");
    let s3_port = s3.endpoint.rsplit(':').next().unwrap().to_string();
    let allowed = format!("--allowed-endpoints=127.0.0.1:{s3_port}");
    let d = Driver::start_with(&[allowed.as_str()], &[]);
    let mut node = d.node().await;
    for endpoint in [
        internal.endpoint.clone(),
        format!("http://localhost:{s3_port}"),
        format!("http://localhost:{}", internal.port),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://[::1]:9000".to_string(),
        "http://10.0.0.1:9000".to_string(),
    ] {
        let mut ctx = static_context(&s3, "x/");
        ctx.insert("endpointUrl".into(), endpoint.clone());
        let t = d.target("pod-ssrf");
        let e = node
            .node_publish_volume(publish_req(&s3, "v", &t, inline(ctx)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{endpoint}: {e:?}");
        assert!(!e.message().contains("secret page"));
        assert!(!is_mounted(&t));
    }
    // A GCS volume whose key names its own base URL is held to the same list.
    let key = format!(
        r#"{{"disable_oauth": true, "client_email": "", "private_key": "", "private_key_id": "", "gcs_base_url": "{}"}}"#,
        internal.endpoint
    );
    let mut req = no_secrets(publish_req(
        &s3,
        "g",
        &d.target("pod-gcs"),
        inline(HashMap::from([
            ("bucketName".to_string(), "some-bucket".to_string()),
            ("provider".to_string(), "gcs".to_string()),
        ])),
    ));
    req.secrets
        .insert("GOOGLE_SERVICE_ACCOUNT_JSON".into(), key);
    let e = node.node_publish_volume(req).await.unwrap_err();
    assert!(e.message().contains("allowed endpoints"), "{e:?}");
    assert_eq!(
        internal.connections(),
        0,
        "the internal service was never contacted"
    );
}

#[tokio::test]
async fn redirects_are_not_followed_and_response_bodies_never_reach_the_status() {
    let s3 = s3();
    let internal = Fake::start("200 OK", &[], "internal");
    let location = format!("Location: {}/stolen", internal.endpoint);
    let redirector = Fake::start("307 Temporary Redirect", &[location.as_str()], "");
    let leaky = Fake::start(
        "403 Forbidden",
        &["Content-Type: application/xml"],
        "<Error><Code>AccessDenied</Code><Message>TOPSECRET-BODY internal hostnames</Message></Error>",
    );
    let d = Driver::start();
    let mut node = d.node().await;
    for fake in [&redirector, &leaky] {
        let mut ctx = static_context(&s3, "x/");
        ctx.insert("endpointUrl".into(), fake.endpoint.clone());
        let t = d.target("pod-redirect");
        let e = node
            .node_publish_volume(publish_req(&s3, "v", &t, inline(ctx)))
            .await
            .unwrap_err();
        assert!(fake.connections() > 0);
        assert!(
            !e.message().contains("TOPSECRET") && !e.message().contains("stolen"),
            "{e:?}"
        );
        assert!(!is_mounted(&t));
    }
    assert_eq!(internal.connections(), 0, "the redirect was not followed");
}

#[tokio::test]
async fn memory_volumes_are_off_unless_allowed_and_then_capped() {
    let s3 = s3();
    let memory = || HashMap::from([("provider".to_string(), "memory".to_string())]);
    let d = Driver::start();
    let mut node = d.node().await;
    let e = node
        .node_publish_volume(publish_req(
            &s3,
            "m",
            &d.target("pod-mem"),
            inline(memory()),
        ))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    drop(d);
    let d = Driver::start_with(
        &["--allowed-endpoints=127.0.0.1", "--memory-volume-size=1M"],
        &[],
    );
    let mut node = d.node().await;
    let t = d.target("pod-mem");
    node.node_publish_volume(publish_req(&s3, "m", &t, inline(memory())))
        .await
        .unwrap();
    fs::write(t.join("small"), vec![1u8; 512 << 10]).unwrap();
    let mut big = fs::File::create(t.join("big")).unwrap();
    std::io::Write::write_all(&mut big, &vec![1u8; 2 << 20]).unwrap();
    let e = big.sync_all().unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
    node.node_unpublish_volume(unpublish_req("m", &t))
        .await
        .unwrap();
}

#[tokio::test]
async fn volumes_asking_for_more_than_the_admin_allows_are_refused() {
    let s3 = s3();
    let d = Driver::start_with(
        &[
            "--allowed-endpoints=127.0.0.1",
            "--max-memory-limit=512M",
            "--max-cache-size=8G",
            "--node-cache-size=12G",
        ],
        &[],
    );
    let mut node = d.node().await;
    let with = |opts: &str| {
        let mut c = static_context(&s3, &unique("limits"));
        c.insert("mountOptions".into(), opts.into());
        inline(c)
    };
    for (opts, field) in [
        ("memory-limit=1500M", "memory-limit"),
        ("max-cache-size=9G", "max-cache-size"),
    ] {
        let e = node
            .node_publish_volume(publish_req(&s3, "v", &d.target("pod-l"), with(opts)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(field), "{e:?}");
    }
    let (a, b) = (d.target("pod-a"), d.target("pod-b"));
    node.node_publish_volume(publish_req(&s3, "a", &a, with("max-cache-size=8G")))
        .await
        .unwrap();
    let e = node
        .node_publish_volume(publish_req(&s3, "b", &b, with("max-cache-size=8G")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(!is_mounted(&b));
    node.node_unpublish_volume(unpublish_req("a", &a))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&s3, "b", &b, with("max-cache-size=8G")))
        .await
        .unwrap();
    node.node_unpublish_volume(unpublish_req("b", &b))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_symlink_in_the_target_path_is_never_followed() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    let outside = tempfile::tempdir().unwrap();
    let pods = d.kubelet().join("pods");
    std::os::unix::fs::symlink(outside.path(), pods.join("evil")).unwrap();
    fs::create_dir_all(pods.join("pod-s/volumes/kubernetes.io~csi/v")).unwrap();
    std::os::unix::fs::symlink(
        outside.path(),
        pods.join("pod-s/volumes/kubernetes.io~csi/v/mount"),
    )
    .unwrap();
    for target in [
        pods.join("evil/volumes/kubernetes.io~csi/v/mount"),
        pods.join("pod-s/volumes/kubernetes.io~csi/v/mount"),
    ] {
        let e = node
            .node_publish_volume(publish_req(&s3, "v", &target, static_context(&s3, "x/")))
            .await
            .unwrap_err();
        assert_eq!(
            e.code(),
            Code::InvalidArgument,
            "{}: {e:?}",
            target.display()
        );
    }
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 0);
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&outside.path().display().to_string()));
}

#[tokio::test]
async fn the_mount_process_runs_unprivileged_with_no_capabilities_and_a_filter() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    let t = d.target("pod-priv");
    let mut ctx = static_context(&s3, &unique("priv"));
    ctx.insert("mountOptions".into(), "memory-limit=200M".into());
    node.node_publish_volume(publish_req(&s3, "v", &t, ctx))
        .await
        .unwrap();
    fs::write(t.join("f"), b"still works").unwrap();
    assert_eq!(fs::read(t.join("f")).unwrap(), b"still works");
    let pids = mount_pids(&t);
    assert_eq!(pids.len(), 1);
    // Its keeper, which holds a copy of the connection, is confined the same way.
    let keeper = keeper_pid(&t).expect("the mount's keeper is recorded");
    for pid in [pids[0], keeper] {
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {status}"))
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        };
        let uid = field("Uid:").parse::<u32>().unwrap();
        assert!(
            (d.first_uid..d.first_uid + 1000).contains(&uid),
            "{uid} is not one of the driver's mount users"
        );
        assert_eq!(Some(uid), mount_uid(&t));
        assert_eq!(field("Gid:"), uid.to_string());
        assert_eq!(field("CapEff:"), "0000000000000000");
        assert_eq!(field("CapPrm:"), "0000000000000000");
        assert_eq!(field("CapBnd:"), "0000000000000000");
        assert_eq!(field("NoNewPrivs:"), "1");
        assert_eq!(field("Seccomp:"), "2");
        // In a cgroup of its own whose memory limit is the volume's memory-limit.
        let cgroups = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
        let limit = cgroups
            .lines()
            .find_map(|l| {
                let (_, rest) = l.split_once(':')?;
                let (controllers, path) = rest.split_once(':')?;
                let file = match controllers {
                    "" => format!("/sys/fs/cgroup{path}/memory.max"),
                    c if c.split(',').any(|c| c == "memory") => {
                        format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
                    }
                    _ => return None,
                };
                assert!(path.contains("pail.slice/mount-"), "{cgroups}");
                Some(fs::read_to_string(file).unwrap().trim().to_string())
            })
            .unwrap_or_else(|| panic!("no memory cgroup in {cgroups}"));
        assert_eq!(limit, (200u64 << 20).to_string());
    }
    assert_eq!(
        fs::read_to_string(format!("/proc/{}/cgroup", pids[0])).unwrap(),
        fs::read_to_string(format!("/proc/{keeper}/cgroup")).unwrap(),
        "the keeper is not in its mount's cgroup"
    );
    node.node_unpublish_volume(unpublish_req("v", &t))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_stopped_mount_does_not_stall_the_plugin() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    let (stuck, fine) = (d.target("pod-stuck"), d.target("pod-fine"));
    for (id, t) in [("stuck", &stuck), ("fine", &fine)] {
        node.node_publish_volume(publish_req(&s3, id, t, static_context(&s3, &unique(id))))
            .await
            .unwrap();
    }
    let pid = mount_pids(&stuck)[0];
    // SAFETY: stopping the mount process this test started through the driver.
    unsafe { libc::kill(pid as i32, libc::SIGSTOP) };
    let stats = |id: &'static str, t: &std::path::Path| NodeGetVolumeStatsRequest {
        volume_id: id.into(),
        volume_path: t.display().to_string(),
        staging_target_path: String::new(),
    };
    let started = Instant::now();
    let polls: Vec<_> = (0..8)
        .map(|_| {
            let mut n = node.clone();
            let r = stats("stuck", &stuck);
            tokio::spawn(async move { n.node_get_volume_stats(r).await })
        })
        .collect();
    // Meanwhile the plugin answers.
    let mut id = pail::csi::pb::identity_client::IdentityClient::new(d.channel().await);
    let probe = tokio::time::timeout(Duration::from_secs(2), id.probe(ProbeRequest {})).await;
    assert!(probe.is_ok(), "Probe stalled");
    let other = tokio::time::timeout(
        Duration::from_secs(3),
        node.node_get_volume_stats(stats("fine", &fine)),
    )
    .await
    .expect("another volume's stats stalled")
    .unwrap()
    .into_inner();
    assert!(!other.volume_condition.unwrap().abnormal);
    for p in polls {
        let r = p.await.unwrap().unwrap().into_inner();
        assert!(r.volume_condition.unwrap().abnormal);
    }
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
    for (id, t) in [("stuck", &stuck), ("fine", &fine)] {
        node.node_unpublish_volume(unpublish_req(id, t))
            .await
            .unwrap();
        assert!(!is_mounted(t));
    }
}

/// The peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_store_sending_more_than_asked_cannot_grow_a_mount_past_its_limit() {
    let s3 = s3();
    let d = Driver::start();
    let mut node = d.node().await;
    // 1 GiB answers to every ranged GET of a 64 MiB object: announced, then streamed.
    for declared in [true, false] {
        let greedy = common::http::Greedy::start(64 << 20, 1 << 30, declared);
        let mut ctx = static_context(&s3, "g/");
        ctx.insert("endpointUrl".into(), greedy.endpoint.clone());
        ctx.insert("mountOptions".into(), "memory-limit=64M".into());
        let t = d.target(&format!("pod-greedy-{declared}"));
        node.node_publish_volume(publish_req(&s3, "greedy", &t, inline(ctx)))
            .await
            .unwrap();
        let pid = mount_pids(&t)[0];
        let e = fs::read(t.join("big")).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        let peak = peak_rss(pid);
        assert!(
            peak < 160 << 20,
            "declared {declared}: the mount process peaked at {} MiB",
            peak >> 20
        );
        assert!(
            (greedy.written() as u64) < 512 << 20,
            "declared {declared}: the mount kept reading ({} MiB)",
            greedy.written() >> 20
        );
        node.node_unpublish_volume(unpublish_req("greedy", &t))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn publishes_beyond_the_nodes_budgets_are_refused_and_leave_nothing() {
    let s3 = s3();
    let d = Driver::start_with(
        &[
            "--allowed-endpoints=127.0.0.1",
            "--max-volumes-per-node=2",
            "--node-memory-limit=400M",
        ],
        &[],
    );
    let mut node = d.node().await;
    let ctx = |memory: &str| {
        let mut c = static_context(&s3, &unique("budget"));
        c.insert("mountOptions".into(), format!("memory-limit={memory}"));
        c
    };
    let (a, b, c) = (d.target("pod-a"), d.target("pod-b"), d.target("pod-c"));
    node.node_publish_volume(publish_req(&s3, "a", &a, ctx("256M")))
        .await
        .unwrap();
    // 256M + 256M is more than the node's 400M for mounts.
    let e = node
        .node_publish_volume(publish_req(&s3, "b", &b, ctx("256M")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("memory-limit"), "{}", e.message());
    assert!(!is_mounted(&b));
    node.node_publish_volume(publish_req(&s3, "b", &b, ctx("64M")))
        .await
        .unwrap();
    // A third volume is one more than --max-volumes-per-node.
    let e = node
        .node_publish_volume(publish_req(&s3, "c", &c, ctx("64M")))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(
        e.message().contains("--max-volumes-per-node"),
        "{}",
        e.message()
    );
    assert!(!is_mounted(&c));
    assert!(mount_pids(&c).is_empty());
    node.node_unpublish_volume(unpublish_req("a", &a))
        .await
        .unwrap();
    node.node_publish_volume(publish_req(&s3, "c", &c, ctx("64M")))
        .await
        .unwrap();
    for (id, t) in [("b", &b), ("c", &c)] {
        node.node_unpublish_volume(unpublish_req(id, t))
            .await
            .unwrap();
    }
}

/// Whether any process but `except` has `needle` in its environment.
fn environ_holds(needle: &str, except: u32) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|&pid| pid != except)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.windows(needle.len()).any(|w| w == needle.as_bytes()))
        })
        .collect()
}

#[tokio::test]
async fn a_process_that_takes_a_dead_mounts_pid_is_never_adopted_nor_copied() {
    use std::os::unix::process::CommandExt;
    let s3 = s3();
    let mut d = Driver::start();
    let mut node = d.node().await;
    let t = d.target("pod-reused");
    node.node_publish_volume(publish_req(
        &s3,
        "v",
        &t,
        static_context(&s3, &unique("reuse")),
    ))
    .await
    .unwrap();
    let pid = mount_pids(&t)[0];
    // The plugin dies, then its mount process; the pid is free again.
    let mut plugin = d.child.take().unwrap();
    plugin.kill().unwrap();
    plugin.wait().unwrap();
    // SAFETY: killing the mount process this test started through the driver.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(Instant::now() < deadline, "{pid} did not go away");
        std::thread::sleep(Duration::from_millis(20));
    }
    // A stand-in takes the pid (the kernel's next pid set just below it): named like a
    // mount being resumed, with a library to preload and a mark in its environment.
    let mark = format!("PAIL_STAND_IN_{}=1", std::process::id());
    let (key, _) = mark.split_once('=').unwrap();
    let mut stand_in = None;
    for _ in 0..500 {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
        let mut child = Command::new("sleep")
            .arg0(format!("pail mount s3://evil/ {} --resume", t.display()))
            .arg("600")
            .env("LD_PRELOAD", "/nonexistent/evil.so")
            .env(key, "1")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        if child.id() == pid {
            stand_in = Some(child);
            break;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let mut stand_in = stand_in.expect("no process got the dead mount's pid");
    d.spawn();
    let _ = d.node().await;
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        d.log().contains("not adopting this mount's process"),
        "{}",
        d.log()
    );
    assert_eq!(
        environ_holds(&mark, pid),
        Vec::<u32>::new(),
        "a process was started with the stand-in's environment"
    );
    let mut node = d.node().await;
    node.node_unpublish_volume(unpublish_req("v", &t))
        .await
        .unwrap();
    assert!(!is_mounted(&t));
    assert!(
        stand_in.try_wait().unwrap().is_none(),
        "the plugin signalled a process that is not its own"
    );
    stand_in.kill().unwrap();
    stand_in.wait().unwrap();
}
