//! Unit tests of volume parsing: attributes become options, bad input names its field and
//! hides secret values, and random input never panics or leaks.

use super::*;
use crate::csi::policy::DriverPolicy;

fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn publish(attrs: &[(&str, &str)], secrets: &[(&str, &str)]) -> Result<MountRequest, Status> {
    publish_at(attrs, secrets, "/t")
}

/// [`publish`] to a given target path (the pod uid comes from it).
fn publish_at(
    attrs: &[(&str, &str)],
    secrets: &[(&str, &str)],
    target: &str,
) -> Result<MountRequest, Status> {
    let attrs = map(attrs);
    let secrets = map(secrets);
    publish_request(
        &PublishInput {
            volume_id: "v",
            attrs: &attrs,
            secrets: &secrets,
            readonly: false,
            cap_read_only: false,
            mount_flags: &[],
            mount_group: None,
            shared: false,
        },
        target.into(),
        &DriverPolicy::strict(),
    )
}

#[test]
fn attributes_become_mount_options() {
    let r = publish(
        &[
            ("bucketName", "data"),
            ("prefix", "a/b"),
            ("endpointUrl", "http://127.0.0.1:9000"),
            ("forcePathStyle", "true"),
            ("mountOptions", "uid=1000 --metadata-ttl 5,read-only"),
            ("csi.storage.k8s.io/pod.name", "p"),
        ],
        &[("AWS_ACCESS_KEY_ID", "id"), ("AWS_SECRET_ACCESS_KEY", "s")],
    )
    .unwrap();
    let a = &r.spec.args;
    assert_eq!(a.source, "s3://data/a/b/");
    assert!(r.read_only && a.volume.read_only);
    assert!(a.volume.allow_other);
    assert_eq!(a.volume.uid, Some(1000));
    assert_eq!(a.volume.metadata_ttl, std::time::Duration::from_secs(5));
    assert_eq!(
        a.store.endpoint_url.as_deref(),
        Some("http://127.0.0.1:9000")
    );
    assert!(a.store.force_path_style);
    assert_eq!(
        r.spec.auth,
        crate::options::Auth::Keys {
            access_key_id: "id".into(),
            secret_access_key: "s".into(),
            session_token: None
        }
    );
    let env: HashMap<_, _> = r.spec.env.iter().cloned().collect();
    assert_eq!(env["AWS_EC2_METADATA_DISABLED"], "true");
    assert!(
        !env.contains_key("AWS_ACCESS_KEY_ID"),
        "keys are in the spec, not the environment"
    );
    let net = r.spec.net.as_ref().unwrap();
    assert!(!net.metadata_credentials);
}

#[test]
fn bad_input_names_the_field_and_hides_secret_values() {
    type Pairs<'a> = &'a [(&'a str, &'a str)];
    let cases: &[(Pairs, Pairs, &str)] = &[
        (&[], &[], "bucketName"),
        (&[("bucketName", "b-1"), ("prefix", "../x")], &[], "prefix"),
        (&[("bucketName", "b-1"), ("color", "x")], &[], "color"),
        (
            &[("bucketName", "b-1"), ("mountOptions", "allow-root")],
            &[],
            "allow-root",
        ),
        (
            &[("bucketName", "b-1"), ("mountOptions", "uid=1;rm")],
            &[],
            "uid",
        ),
        (
            &[("bucketName", "b-1"), ("mountOptions", "part-size=1K")],
            &[],
            "part-size",
        ),
        (
            &[("bucketName", "b-1"), ("endpointUrl", "file:///etc")],
            &[],
            "endpointUrl",
        ),
        (
            &[("bucketName", "b-1"), ("provider", "azure")],
            &[],
            "provider",
        ),
        (
            &[("bucketName", "b-1"), ("provider", "file")],
            &[],
            "provider",
        ),
        (
            &[("bucketName", "b-1")],
            &[("AWS_ACCESS_KEY_ID", "only-the-id")],
            "AWS_SECRET_ACCESS_KEY",
        ),
        (
            &[("bucketName", "b-1")],
            &[("PASSWORD", "hunter2")],
            "PASSWORD",
        ),
    ];
    for (attrs, secrets, field) in cases {
        let Err(e) = publish(attrs, secrets) else {
            panic!("{field}: must be refused")
        };
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(
            e.message().contains(field),
            "{field} not in {:?}",
            e.message()
        );
        assert!(!e.message().contains("hunter2") && !e.message().contains("only-the-id"));
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[(self.next() % items.len() as u64) as usize]
    }
    fn junk(&mut self) -> String {
        let alphabet = [
            'a', 'Z', '0', '/', '.', '-', '_', '=', ' ', ',', '\0', '\n', '\u{7f}', 'é', '$', '{',
            '}', ';', ':',
        ];
        let n = (self.next() % 40) as usize;
        (0..n)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
            .collect()
    }
}

const KEYS: &[&str] = &[
    "bucketName",
    "prefix",
    "endpointUrl",
    "region",
    "forcePathStyle",
    "provider",
    "requesterPays",
    "mountOptions",
    "csi.storage.k8s.io/ephemeral",
    "unknown",
    "",
];
const VALUES: &[&str] = &[
    "my-bucket",
    "a/b/",
    "../etc",
    "/",
    "http://127.0.0.1:9000",
    "file:///etc",
    "true",
    "false",
    "s3",
    "gcs",
    "memory",
    "uid=1000",
    "read-only allow-other",
    "uid",
    "uid=;rm -rf",
    "metadata-ttl minimal",
    "",
];
const FLAGS: &[&str] = &["uid=1000", "read-only", "debug", "--gid 5", "part-size=16M"];
const SECRET_KEYS: &[&str] = &[
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "GOOGLE_SERVICE_ACCOUNT_JSON",
    "x",
];

#[test]
fn random_publish_requests_never_panic_nor_leak_secrets() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..20_000 {
        let mut attrs = HashMap::new();
        if rng.next().is_multiple_of(2) {
            attrs.insert("bucketName".to_string(), "my-bucket".to_string());
        }
        for _ in 0..(rng.next() % 4) {
            let k = rng.pick(KEYS).to_string();
            let v = if rng.next().is_multiple_of(3) {
                rng.junk()
            } else {
                rng.pick(VALUES).to_string()
            };
            attrs.insert(k, v);
        }
        let secret_value = format!("SECRET{}", rng.next());
        let mut secrets = HashMap::new();
        if !rng.next().is_multiple_of(3) {
            secrets.insert("AWS_ACCESS_KEY_ID".to_string(), secret_value.clone());
            secrets.insert("AWS_SECRET_ACCESS_KEY".to_string(), secret_value.clone());
        }
        for _ in 0..(rng.next() % 2) {
            secrets.insert(rng.pick(SECRET_KEYS).to_string(), secret_value.clone());
        }
        let flags: Vec<String> = (0..(rng.next() % 3))
            .map(|_| match rng.next() % 4 {
                0 => rng.junk(),
                _ => rng.pick(FLAGS).to_string(),
            })
            .collect();
        let input = PublishInput {
            volume_id: "v",
            attrs: &attrs,
            secrets: &secrets,
            readonly: rng.next().is_multiple_of(2),
            cap_read_only: rng.next().is_multiple_of(2),
            mount_flags: &flags,
            mount_group: None,
            shared: false,
        };
        match publish_request(&input, "/t".into(), &DriverPolicy::strict()) {
            Ok(req) => {
                accepted += 1;
                let source = &req.spec.args.source;
                assert!(
                    source.starts_with("s3://")
                        || source.starts_with("gs://")
                        || source.starts_with("memory://")
                );
                // Secrets reach the spec's credentials only (never an option or a log line).
                let mut shown = req.spec.clone();
                shown.auth = crate::options::Auth::Anonymous;
                assert!(!String::from_utf8_lossy(&shown.to_json()).contains(&secret_value));
                assert!(!format!("{req:?}").contains(&secret_value));
                assert!(
                    !source.split('/').skip(3).any(|s| s == ".." || s == "."),
                    "{source}"
                );
            }
            Err(e) => {
                refused += 1;
                assert!(
                    matches!(
                        e.code(),
                        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                    ),
                    "{e:?}"
                );
                assert!(!e.message().contains(&secret_value), "{}", e.message());
            }
        }
    }
    // Both branches ran: the generator reaches valid and invalid requests.
    assert!(
        accepted > 100 && refused > 100,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn secrets_as_aws_tools_write_them_and_write_settings_are_accepted() {
    let keys = [
        ("AWS_ACCESS_KEY_ID", "id"),
        ("AWS_SECRET_ACCESS_KEY", "secret"),
        ("AWS_REGION", "eu-central-1"),
        ("AWS_SESSION_TOKEN", "tok"),
    ];
    let attrs = [
        ("bucketName", "b-1"),
        ("sse", "aws:kms"),
        ("sseKmsKeyId", "arn:aws:kms:eu-central-1:1:key/abc"),
        ("storageClass", "STANDARD_IA"),
    ];
    let req = publish(&attrs, &keys).unwrap();
    let s = &req.spec.args.store;
    assert_eq!(s.region.as_deref(), Some("eu-central-1"));
    assert_eq!(s.sse.as_deref(), Some("aws:kms"));
    assert_eq!(s.storage_class.as_deref(), Some("STANDARD_IA"));
    assert!(matches!(
        &req.spec.auth,
        crate::options::Auth::Keys { session_token: Some(t), .. } if t == "tok"
    ));
    // The volume's own region wins over the Secret's.
    let own = publish(&[("bucketName", "b-1"), ("region", "us-west-2")], &keys).unwrap();
    assert_eq!(own.spec.args.store.region.as_deref(), Some("us-west-2"));
    for (k, v) in [
        ("sse", "rot13"),
        ("storageClass", "glacier please"),
        ("roleArn", "role/x"),
        ("stsEndpoint", "ftp://sts"),
        ("sseKmsKeyId", "k"),
    ] {
        let e = publish(&[("bucketName", "b-1"), (k, v)], &keys).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{k}");
        assert!(e.message().contains(k), "{k}: {}", e.message());
    }
    let e = publish(&[("bucketName", "b-1")], &[("AWS_REGION", "not a region!")]).unwrap_err();
    assert!(e.message().contains("region"), "{}", e.message());
}

#[test]
fn pod_information_must_be_kubernetes_names() {
    let keys = [("AWS_ACCESS_KEY_ID", "id"), ("AWS_SECRET_ACCESS_KEY", "s")];
    for (key, bad) in [
        (
            "csi.storage.k8s.io/pod.namespace",
            "../../api/v1/namespaces/kube-system",
        ),
        ("csi.storage.k8s.io/pod.name", "p\nINFO forged line"),
        ("csi.storage.k8s.io/serviceAccount.name", "Upper"),
        ("csi.storage.k8s.io/pod.name", &"a".repeat(254)),
    ] {
        let e = publish(&[("bucketName", "data"), (key, bad)], &keys).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{key}");
        assert!(
            e.message().contains(key) && !e.message().contains('\n'),
            "{}",
            e.message()
        );
    }
    // Valid names become the pod of the mount, with the uid from the target path.
    let r = publish_at(
        &[
            ("bucketName", "data"),
            ("csi.storage.k8s.io/pod.namespace", "ml"),
            ("csi.storage.k8s.io/pod.name", "trainer-0"),
        ],
        &keys,
        "/var/lib/kubelet/pods/0a1b-2c/volumes/kubernetes.io~csi/v/mount",
    )
    .unwrap();
    assert_eq!(
        r.pod,
        Some(PodRef {
            namespace: "ml".into(),
            name: "trainer-0".into(),
            uid: "0a1b-2c".into()
        })
    );
}
