//! Pod identity end to end on real parts: a workload's token is exchanged at STS (moto's
//! AssumeRoleWithWebIdentity, Google's token exchange faked on 127.0.0.1) and the store is
//! signed with what STS issued; a new token (a republish) reaches the running mount; the
//! CSI driver finds the role in the pod's ServiceAccount annotation through the Kubernetes
//! API (a fake API server behind a kubeconfig) and writes the token where only the mount
//! process can read it.

mod common;

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::csi::{Driver, mount_cap, unpublish_req};
use common::http::Fake;
use common::proxy::Proxy;
use common::*;
use pail::csi::pb::NodePublishVolumeRequest;
use pail::csi::pb::volume_capability::access_mode::Mode;
use pail::store::{Bucket, Credentials, S3Bucket, Source, StoreOptions};

const ROLE: &str = "arn:aws:iam::123456789012:role/pail-reader";

/// moto: STS and an S3 that takes the temporary credentials it issues.
fn moto() -> String {
    std::env::var("PAIL_TEST_MOTO_ENDPOINT")
        .expect("PAIL_TEST_MOTO_ENDPOINT is not set: run scripts/test.sh")
}

/// A fresh bucket in moto.
fn moto_bucket(name: &str) -> String {
    let bucket = format!("pail-{name}-{}", std::process::id());
    pail::store::init_crypto();
    let b = S3Bucket::open(
        &Source::parse(&format!("s3://{bucket}/")).unwrap(),
        &StoreOptions {
            endpoint_url: Some(moto()),
            region: Some("us-east-1".into()),
            auth: pail::store::Auth::Keys(Credentials {
                access_key_id: "setup".into(),
                secret_access_key: "setup".into(),
                session_token: None,
            }),
            ..Default::default()
        },
    )
    .unwrap();
    let _ = block_on(b.create_bucket());
    bucket
}

/// A JWT-shaped token (moto does not check it; pail must pass it as it is).
fn jwt(n: u32) -> String {
    format!(
        "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQ6dGVhbS1hOnRyYWluZXIi{n}.c2ln{n}"
    )
}

fn write_token(path: &Path, token: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, token).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

/// Every S3 request that went through `proxy` was signed with the last key STS issued, with
/// its session token.
fn signed_by_sts(proxy: &Proxy) -> String {
    let issued = proxy.issued();
    let key = issued.last().expect("STS issued credentials").clone();
    assert!(key.starts_with("ASIA"), "{key}");
    let signers = proxy.signers();
    assert!(!signers.is_empty());
    assert!(
        signers
            .iter()
            .all(|s| issued.iter().any(|k| *s == format!("{k}+token"))),
        "every request signed with an issued key and its session token: {signers:?} {issued:?}"
    );
    key
}

#[test]
fn a_mount_signs_with_what_sts_issued_for_its_token_and_follows_a_new_token() {
    let bucket = moto_bucket("web-identity");
    let proxy = Proxy::start(&moto());
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, &jwt(1));
    let token_arg = token_file.display().to_string();
    let args: Vec<String> = [
        "--endpoint-url",
        &proxy.endpoint,
        "--region",
        "us-east-1",
        "--web-identity-token-file",
        &token_arg,
        "--role-arn",
        ROLE,
        "--sts-endpoint",
        &proxy.endpoint,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let env = vec![("AWS_EC2_METADATA_DISABLED".to_string(), "true".to_string())];
    let m = mount(&format!("s3://{bucket}/"), &args, &env);
    std::fs::write(m.join("one.txt"), b"first").unwrap();
    assert_eq!(proxy.web_tokens(), [jwt(1)]);
    let first = signed_by_sts(&proxy);

    // kubelet hands a fresh token (the node plugin rewrites the file): the next request
    // exchanges it, without a remount.
    write_token(&token_file, &jwt(2));
    std::fs::write(m.join("two.txt"), b"second").unwrap();
    assert_eq!(proxy.web_tokens(), [jwt(1), jwt(2)]);
    let second = signed_by_sts(&proxy);
    assert_ne!(first, second, "new credentials for the new token");
    assert_eq!(std::fs::read(m.join("one.txt")).unwrap(), b"first");
    let log = m.log_text();
    assert!(
        !log.contains(&jwt(1)) && !log.contains(&jwt(2)),
        "tokens never logged"
    );
}

#[test]
fn a_token_sts_refuses_fails_the_mount_with_the_sts_error() {
    let sts = Fake::start(
        "400 Bad Request",
        &["Content-Type: text/xml"],
        "<ErrorResponse><Error><Type>Sender</Type><Code>InvalidIdentityToken</Code>\
         <Message>Couldn't retrieve verification key from your identity provider</Message>\
         </Error></ErrorResponse>",
    );
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, &jwt(3));
    let args: Vec<String> = [
        "--endpoint-url",
        &moto(),
        "--web-identity-token-file",
        &token_file.display().to_string(),
        "--role-arn",
        ROLE,
        "--sts-endpoint",
        &sts.endpoint,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let e = try_mount("s3://pail-refused/", &args, &[])
        .err()
        .expect("a refused token is an error");
    assert!(e.contains("AssumeRoleWithWebIdentity"), "{e}");
    assert!(e.contains("InvalidIdentityToken"), "{e}");
    assert!(!e.contains(&jwt(3)), "{e}");
    assert_eq!(sts.connections(), 1, "a refusal is not retried");
}

#[test]
fn a_gcs_mount_exchanges_its_token_and_impersonates_the_service_account() {
    let gcs = gcs();
    let sts = Fake::start(
        "200 OK",
        &["Content-Type: application/json"],
        r#"{"access_token": "federated-1", "issued_token_type": "urn:ietf:params:oauth:token-type:access_token", "token_type": "Bearer", "expires_in": 3600}"#,
    );
    let iam = Fake::start(
        "200 OK",
        &["Content-Type: application/json"],
        r#"{"accessToken": "impersonated-1", "expireTime": "2099-01-01T00:00:00Z"}"#,
    );
    let proxy = Proxy::start_as_upstream_host(&gcs.endpoint);
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    write_token(&token_file, &jwt(4));
    let provider = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/k8s/providers/e2e";
    let args: Vec<String> = [
        "--endpoint-url",
        &proxy.endpoint,
        "--web-identity-token-file",
        &token_file.display().to_string(),
        "--workload-identity-provider",
        provider,
        "--gcp-service-account",
        "reader@proj.iam.gserviceaccount.com",
        "--sts-endpoint",
        &sts.endpoint,
        "--iam-credentials-endpoint",
        &iam.endpoint,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let prefix = unique("wif");
    let m = mount(&format!("gs://{}/{prefix}", gcs.bucket), &args, &[]);
    std::fs::write(m.join("g.txt"), b"gcs via wif").unwrap();
    let back = std::fs::read(m.join("g.txt"));
    assert_eq!(
        back.as_deref().ok(),
        Some(&b"gcs via wif"[..]),
        "{}",
        m.log_text()
    );
    let exchange = sts.requests();
    assert_eq!(exchange.len(), 1, "one exchange while the token is good");
    assert!(exchange[0].starts_with("POST /v1/token"), "{}", exchange[0]);
    assert!(exchange[0].contains(&jwt(4)) && exchange[0].contains(provider));
    let impersonation = iam.requests();
    assert!(
        impersonation[0].contains("reader%40proj.iam.gserviceaccount.com:generateAccessToken"),
        "{}",
        impersonation[0]
    );
    assert!(impersonation[0].contains("Bearer federated-1"));
    let bearers = proxy.bearers();
    assert!(!bearers.is_empty());
    assert!(bearers.iter().all(|b| b == "impersonated-1"), "{bearers:?}");
}

/// A kubeconfig for a fake API server that serves one ServiceAccount with a role.
fn fake_api(dir: &Path) -> (Fake, String) {
    let sa = format!(
        r#"{{"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {{"name": "trainer", "namespace": "team-a", "annotations": {{"eks.amazonaws.com/role-arn": "{ROLE}"}}}}}}"#
    );
    let api = Fake::start("200 OK", &["Content-Type: application/json"], &sa);
    let config = dir.join("kubeconfig");
    std::fs::write(
        &config,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\n\
             current-context: x\n",
            api.endpoint
        ),
    )
    .unwrap();
    (api, config.display().to_string())
}

fn pod_publish(
    bucket: &str,
    endpoint: &str,
    target: &Path,
    token: &str,
) -> NodePublishVolumeRequest {
    let tokens = format!(
        r#"{{"sts.amazonaws.com": {{"token": "{token}", "expirationTimestamp": "2099-01-01T00:00:00Z"}}}}"#
    );
    let ctx: HashMap<String, String> = [
        ("bucketName", bucket),
        ("endpointUrl", endpoint),
        ("stsEndpoint", endpoint),
        ("region", "us-east-1"),
        ("csi.storage.k8s.io/serviceAccount.tokens", &tokens),
        ("csi.storage.k8s.io/serviceAccount.name", "trainer"),
        ("csi.storage.k8s.io/pod.namespace", "team-a"),
        ("csi.storage.k8s.io/pod.name", "trainer-0"),
        ("csi.storage.k8s.io/ephemeral", "true"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    NodePublishVolumeRequest {
        volume_id: "pod-vol".into(),
        target_path: target.display().to_string(),
        volume_capability: Some(mount_cap(Mode::MultiNodeMultiWriter)),
        volume_context: ctx,
        ..Default::default()
    }
}

#[tokio::test]
async fn the_driver_assumes_the_service_accounts_role_and_a_republish_hands_over_the_new_token() {
    let bucket = tokio::task::spawn_blocking(|| moto_bucket("csi-pod"))
        .await
        .unwrap();
    let proxy = Arc::new(Proxy::start(&moto()));
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = fake_api(dir.path());
    let driver = Driver::start_with(
        &["--allowed-endpoints=127.0.0.1"],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let mut node = driver.node().await;
    let target = driver.target("trainer-0");
    node.node_publish_volume(pod_publish(&bucket, &proxy.endpoint, &target, &jwt(5)))
        .await
        .unwrap();
    // (The plugin also asks for its node's CSINode, to lift its startup taint.)
    let requests = api.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.starts_with("GET /api/v1/namespaces/team-a/serviceaccounts/trainer ")),
        "{requests:?}"
    );
    std::fs::write(target.join("model.pt"), b"weights").unwrap();
    assert_eq!(proxy.web_tokens(), [jwt(5)]);
    signed_by_sts(&proxy);

    // The token sits in the root-owned tokens/ directory, readable by the mount's group only.
    let token_file = driver
        .state()
        .join("tokens")
        .join(pail::mounter::state::slug(&target));
    let meta = std::fs::symlink_metadata(&token_file).expect("a token file");
    assert!(meta.is_file());
    assert_eq!(meta.mode() & 0o777, 0o640);
    assert_eq!(meta.uid(), 0);
    assert_eq!(Some(meta.gid()), common::csi::mount_uid(&target));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), jwt(5));

    // kubelet's republish with a fresh token: same mount process, new token in use.
    let pids = common::csi::mount_pids(&target);
    node.node_publish_volume(pod_publish(&bucket, &proxy.endpoint, &target, &jwt(6)))
        .await
        .unwrap();
    assert_eq!(common::csi::mount_pids(&target), pids, "no remount");
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), jwt(6));
    std::fs::write(target.join("step-2.pt"), b"more").unwrap();
    assert_eq!(proxy.web_tokens(), [jwt(5), jwt(6)]);
    signed_by_sts(&proxy);
    assert!(!driver.log().contains(&jwt(5)), "tokens never logged");

    node.node_unpublish_volume(unpublish_req("pod-vol", &target))
        .await
        .unwrap();
    assert!(!token_file.exists(), "the token goes with the mount");
}

/// Two tenants' pod-identity mounts on one node: the state directory as each sees it.
struct Tenants {
    driver: Driver,
    api: Fake,
    _dir: tempfile::TempDir,
    bucket: String,
}

async fn tenants() -> Tenants {
    let bucket = tokio::task::spawn_blocking(|| moto_bucket("tenants"))
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (api, kubeconfig) = fake_api(dir.path());
    let driver = Driver::start_with(
        &["--allowed-endpoints=127.0.0.1"],
        &[("KUBECONFIG", &kubeconfig)],
    );
    Tenants {
        driver,
        api,
        _dir: dir,
        bucket,
    }
}

#[tokio::test]
async fn another_mounts_user_reads_nothing_of_a_tenants_token_spec_or_files() {
    let t = tenants().await;
    let mut node = t.driver.node().await;
    let (a, b) = (t.driver.target("tenant-a"), t.driver.target("tenant-b"));
    for (target, n) in [(&a, 21), (&b, 22)] {
        node.node_publish_volume(pod_publish(&t.bucket, &moto(), target, &jwt(n)))
            .await
            .unwrap();
    }
    std::fs::write(a.join("a.txt"), b"tenant a's data").unwrap();
    let (ua, ub) = (
        common::csi::mount_uid(&a).unwrap(),
        common::csi::mount_uid(&b).unwrap(),
    );
    assert_ne!(ua, ub, "each mount a user of its own");
    let state = t.driver.state();
    let all = common::csi::walk(&state);
    let slug_a = pail::mounter::state::slug(&a);
    assert!(
        all.iter()
            .any(|p| p.display().to_string().contains(&slug_a)),
        "tenant a has files in {}",
        state.display()
    );
    // What b's user can open or list, of every path the state directory holds.
    let can_read = r#"for f; do if [ -d "$f" ]; then ls "$f" >/dev/null 2>&1 && echo "$f"; else head -c1 "$f" >/dev/null 2>&1 && echo "$f"; fi; done"#;
    let readable = common::csi::run_as(ub, can_read, &all);
    let own_token = state.join("tokens").join(pail::mounter::state::slug(&b));
    assert!(
        readable.lines().any(|l| Path::new(l) == own_token),
        "b's user reads its own token: {readable}"
    );
    for l in readable.lines() {
        assert!(
            !l.contains(&slug_a),
            "{l} (tenant a's) is readable by another mount's user"
        );
    }
    // Every file, by name (the user cannot list tokens/, only open what it is named).
    let files: Vec<_> = all.iter().filter(|p| p.is_file()).cloned().collect();
    let grep =
        |uid, token: &str| common::csi::run_as(uid, &format!("grep -lF '{token}' \"$@\""), &files);
    assert_eq!(grep(ub, &jwt(21)), "", "a's token is read by b's user");
    assert_ne!(grep(ub, &jwt(22)), "", "b's user finds its own token");
    assert_eq!(grep(ua, &jwt(22)), "", "b's token is read by a's user");
    for (target, _) in [(&a, 21), (&b, 22)] {
        node.node_unpublish_volume(unpublish_req("pod-vol", target))
            .await
            .unwrap();
    }
    // A normal unmount is no failure: no Warning Event for either pod.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let requests = t.api.requests();
    for r in requests.iter().filter(|r| r.contains("/events")) {
        assert!(
            !r.contains("Warning") && !r.contains("MountProcessDied"),
            "an unwanted warning: {r}"
        );
    }
}

#[tokio::test]
async fn a_symlink_a_mount_plants_in_its_directory_never_turns_a_root_file_over() {
    let t = tenants().await;
    let mut node = t.driver.node().await;
    let target = t.driver.target("planter");
    node.node_publish_volume(pod_publish(&t.bucket, &moto(), &target, &jwt(31)))
        .await
        .unwrap();
    let uid = common::csi::mount_uid(&target).unwrap();
    let private = t
        .driver
        .state()
        .join("private")
        .join(pail::mounter::state::slug(&target));
    // A root-only file, and links to it under every name the plugin has ever written in
    // the mount's directory, planted by the mount's own user.
    let victim = t._dir.path().join("victim");
    std::fs::write(&victim, b"root only").unwrap();
    std::fs::set_permissions(&victim, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let names = [
        "token",
        "token.tmp",
        "key.json",
        "key.json.tmp",
        "spec",
        "record",
    ];
    let planted = common::csi::run_as(
        uid,
        &format!(
            "cd \"$1\" && for n in {}; do rm -f \"$n\"; ln -s \"$2\" \"$n\" && echo \"$n\"; done",
            names.join(" ")
        ),
        &[private.clone(), victim.clone()],
    );
    assert_eq!(planted.lines().count(), names.len(), "planted: {planted}");
    // kubelet's republish with a fresh token, then the unpublish.
    node.node_publish_volume(pod_publish(&t.bucket, &moto(), &target, &jwt(32)))
        .await
        .unwrap();
    let token = t
        .driver
        .state()
        .join("tokens")
        .join(pail::mounter::state::slug(&target));
    assert_eq!(std::fs::read_to_string(&token).unwrap(), jwt(32));
    std::fs::write(target.join("after.txt"), b"still signs").unwrap();
    node.node_unpublish_volume(unpublish_req("pod-vol", &target))
        .await
        .unwrap();
    let meta = std::fs::symlink_metadata(&victim).unwrap();
    assert!(meta.is_file());
    assert_eq!((meta.uid(), meta.gid(), meta.mode() & 0o777), (0, 0, 0o600));
    assert_eq!(std::fs::read(&victim).unwrap(), b"root only");
}

#[tokio::test]
async fn pods_of_one_service_account_share_a_mount_and_a_leaving_pods_token_is_dropped() {
    let bucket = tokio::task::spawn_blocking(|| moto_bucket("csi-shared"))
        .await
        .unwrap();
    let proxy = Arc::new(Proxy::start(&moto()));
    let dir = tempfile::tempdir().unwrap();
    let (_api, kubeconfig) = fake_api(dir.path());
    let driver = Driver::start_with(
        &["--allowed-endpoints=127.0.0.1"],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let mut node = driver.node().await;
    let staging = common::csi::staging_of(&driver, "pod-vol");
    let publish = |target: &Path, token: &str| {
        let mut r = pod_publish(&bucket, &proxy.endpoint, target, token);
        r.volume_context.remove("csi.storage.k8s.io/ephemeral");
        r.staging_target_path = staging.display().to_string();
        r
    };
    let (a, b) = (driver.target("trainer-0"), driver.target("trainer-1"));
    node.node_publish_volume(publish(&a, &jwt(7)))
        .await
        .unwrap();
    node.node_publish_volume(publish(&b, &jwt(8)))
        .await
        .unwrap();
    // One mount for both pods, below the staging path, holding the newest token.
    let records: Vec<_> = std::fs::read_dir(driver.state().join("mounts"))
        .unwrap()
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .collect();
    assert_eq!(records.len(), 1);
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(records[0].path()).unwrap()).unwrap();
    let mount = PathBuf::from(r["target"].as_str().unwrap());
    assert!(mount.starts_with(&staging));
    let token_file = driver
        .state()
        .join("tokens")
        .join(pail::mounter::state::slug(&mount));
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), jwt(8));
    std::fs::write(a.join("from-a.pt"), b"a").unwrap();
    assert_eq!(std::fs::read(b.join("from-a.pt")).unwrap(), b"a");
    signed_by_sts(&proxy);
    // Pod b leaves: its token is dropped, the mount takes a's.
    node.node_unpublish_volume(unpublish_req("pod-vol", &b))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), jwt(7));
    // a's refresh reaches the shared mount.
    node.node_publish_volume(publish(&a, &jwt(9)))
        .await
        .unwrap();
    assert_eq!(std::fs::read_to_string(&token_file).unwrap(), jwt(9));
    std::fs::write(a.join("after.pt"), b"b").unwrap();
    assert!(!driver.log().contains(&jwt(7)), "tokens never logged");
    node.node_unpublish_volume(unpublish_req("pod-vol", &a))
        .await
        .unwrap();
    assert!(!token_file.exists(), "the token goes with the mount");
    assert!(!mount.exists());
}
