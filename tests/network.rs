//! Stores as production networks reach them: over TLS with a private CA, through an egress
//! proxy (HTTP CONNECT), with the write settings bucket policies require (server-side
//! encryption, storage class); by hand and through the CSI driver, whose mount processes
//! get the proxy and the CA from the node plugin.

mod common;

use std::path::PathBuf;

use common::connect::ConnectProxy;
use common::csi::{Driver, publish_req, static_context, unpublish_req};
use common::*;

fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set: run scripts/test.sh"))
}

/// SeaweedFS's TLS port and the CA that signed its certificate.
fn tls() -> (String, PathBuf) {
    (
        required("PAIL_TEST_S3_HTTPS_ENDPOINT"),
        PathBuf::from(required("PAIL_TEST_CA_FILE")),
    )
}

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[test]
fn a_store_with_a_private_ca_is_reached_through_a_connect_proxy() {
    let s3 = s3();
    let (endpoint, ca) = tls();
    let proxy = ConnectProxy::start();
    let prefix = unique("tls");
    let mut env = s3.env();
    env.push(("HTTPS_PROXY".into(), proxy.url.clone()));
    // The CA is not trusted by default: the mount says so and does not start.
    let e = try_mount(
        &s3.url(&prefix),
        &args(&["--endpoint-url", &endpoint]),
        &env,
    )
    .err()
    .expect("an unknown CA is refused");
    assert!(e.to_lowercase().contains("certificate"), "{e}");
    let ca_arg = ca.display().to_string();
    let m = mount(
        &s3.url(&prefix),
        &args(&["--endpoint-url", &endpoint, "--ca-bundle", &ca_arg]),
        &env,
    );
    std::fs::write(m.join("a.txt"), b"over tls, through the proxy").unwrap();
    assert_eq!(
        std::fs::read(m.join("a.txt")).unwrap(),
        b"over tls, through the proxy"
    );
    let stored = block_on(s3.store().get_all(&format!("{prefix}a.txt"))).unwrap();
    assert_eq!(stored.as_deref(), Some(&b"over tls, through the proxy"[..]));
    let host = endpoint.trim_start_matches("https://");
    let tunnels = proxy.tunnels();
    assert!(!tunnels.is_empty(), "requests went through the proxy");
    assert!(tunnels.iter().all(|t| t == host), "{tunnels:?}");
    // A garbage bundle is a clear error, not a silent fallback.
    let junk = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(junk.path(), "not a certificate").unwrap();
    let junk_arg = junk.path().display().to_string();
    let e = try_mount(
        &s3.url(&prefix),
        &args(&["--endpoint-url", &endpoint, "--ca-bundle", &junk_arg]),
        &env,
    )
    .err()
    .expect("a bundle without certificates is refused");
    assert!(e.contains("--ca-bundle"), "{e}");
}

#[tokio::test]
async fn mount_processes_of_the_driver_get_its_proxy_and_ca() {
    let s3 = s3();
    let (endpoint, ca) = tls();
    let proxy = ConnectProxy::start();
    let ca_flag = format!("--ca-bundle={}", ca.display());
    let driver = Driver::start_with(
        &["--allowed-endpoints=127.0.0.1", &ca_flag],
        &[("HTTPS_PROXY", &proxy.url)],
    );
    let mut node = driver.node().await;
    let prefix = unique("csi-tls");
    let target = driver.target("tls-pod");
    let mut ctx = static_context(&s3, &prefix);
    ctx.insert("endpointUrl".into(), endpoint.clone());
    node.node_publish_volume(publish_req(&s3, "tls-vol", &target, ctx))
        .await
        .unwrap();
    std::fs::write(target.join("f"), b"via the node's proxy").unwrap();
    let stored = s3.store().get_all(&format!("{prefix}f")).await.unwrap();
    assert_eq!(stored.as_deref(), Some(&b"via the node's proxy"[..]));
    assert!(
        !proxy.tunnels().is_empty(),
        "the mount process used the proxy"
    );
    node.node_unpublish_volume(unpublish_req("tls-vol", &target))
        .await
        .unwrap();
}

/// An object's server-side encryption and storage class, as the store reports them.
fn head(s3: &S3, key: &str) -> (String, String) {
    let script = format!(
        "import boto3\n\
         c = boto3.client('s3', endpoint_url='{}', region_name='us-east-1', \
         aws_access_key_id='{}', aws_secret_access_key='{}')\n\
         h = c.head_object(Bucket='{}', Key='{key}')\n\
         print(h.get('ServerSideEncryption', '-'), h.get('StorageClass', 'STANDARD'))\n",
        s3.endpoint, s3.access_key, s3.secret_key, s3.bucket
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut words = text.split_whitespace().map(str::to_string);
    (words.next().unwrap(), words.next().unwrap())
}

#[test]
fn writes_carry_the_encryption_and_storage_class_a_bucket_policy_requires() {
    let s3 = s3();
    let prefix = unique("sse");
    let m = mount_s3(
        &s3,
        &prefix,
        &[
            "--sse",
            "AES256",
            "--storage-class",
            "STANDARD_IA",
            "--part-size",
            "5M",
        ],
    );
    std::fs::write(m.join("small"), b"small").unwrap();
    // Large enough for a multipart upload, then renamed (a server-side copy).
    std::fs::write(m.join("big"), data(12 << 20, 7)).unwrap();
    std::fs::rename(m.join("small"), m.join("moved")).unwrap();
    for key in ["big", "moved"] {
        assert_eq!(
            head(&s3, &format!("{prefix}{key}")),
            ("AES256".to_string(), "STANDARD_IA".to_string()),
            "{key}"
        );
    }
    // Without the flags the store's defaults apply.
    let plain = mount_s3(&s3, &prefix, &[]);
    std::fs::write(plain.join("plain"), b"p").unwrap();
    assert_eq!(head(&s3, &format!("{prefix}plain")).1, "STANDARD");
    // A value the store refuses is an error at close, never a silent fallback.
    let bad = try_mount(
        &s3.url(&prefix),
        &args(&["--endpoint-url", &s3.endpoint, "--sse", "rot13"]),
        &s3.env(),
    );
    let e = bad.err().expect("an unknown encryption is refused");
    assert!(e.contains("rot13"), "{e}");
}

#[tokio::test]
async fn a_storage_class_asking_for_encryption_provisions_volumes_that_write_with_it() {
    use pail::csi::pb::volume_capability::access_mode::Mode;
    use pail::csi::pb::{CapacityRange, CreateVolumeRequest};
    let s3 = s3();
    let d = Driver::start();
    let base = unique("sc-sse");
    let mut ctl = d.controller().await;
    let params = std::collections::HashMap::from(
        [
            ("bucketName", s3.bucket.as_str()),
            ("prefix", base.as_str()),
            ("endpointUrl", s3.endpoint.as_str()),
            ("forcePathStyle", "true"),
            ("sse", "AES256"),
            ("storageClass", "STANDARD_IA"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let vol = ctl
        .create_volume(CreateVolumeRequest {
            name: "pvc-sse".into(),
            capacity_range: Some(CapacityRange {
                required_bytes: 1 << 30,
                limit_bytes: 0,
            }),
            volume_capabilities: vec![common::csi::mount_cap(Mode::MultiNodeMultiWriter)],
            parameters: params,
            secrets: common::csi::secrets(&s3),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let mut node = d.node().await;
    let target = d.target("sse-pod");
    node.node_publish_volume(publish_req(
        &s3,
        &vol.volume_id,
        &target,
        vol.volume_context.clone(),
    ))
    .await
    .unwrap();
    std::fs::write(target.join("model.pt"), b"weights").unwrap();
    assert_eq!(
        head(&s3, &format!("{base}pvc-sse/model.pt")),
        ("AES256".to_string(), "STANDARD_IA".to_string()),
        "the provisioned volume wrote without what its StorageClass asked"
    );
    node.node_unpublish_volume(unpublish_req(&vol.volume_id, &target))
        .await
        .unwrap();
}
