//! Unit tests of the Controller service over in-memory buckets (and injected failures).

use std::sync::Mutex;

use super::*;
use crate::csi::pb::volume_capability::access_mode::Mode;
use crate::csi::pb::volume_capability::{AccessMode, AccessType, MountVolume};
use crate::store::{Faulty, MemoryBucket, Op, Rule};

/// Hands out one bucket per name, remembering every target it was asked for.
#[derive(Default)]
struct Buckets {
    buckets: Mutex<HashMap<String, SharedBucket>>,
    faults: Mutex<Option<Faulty>>,
}

impl BucketOpener for Buckets {
    fn open(&self, t: &Target, _secrets: &Secrets) -> Result<SharedBucket, Status> {
        if let Some(f) = self.faults.lock().unwrap().clone() {
            return Ok(Arc::new(f));
        }
        Ok(self
            .buckets
            .lock()
            .unwrap()
            .entry(t.bucket.clone())
            .or_insert_with(|| Arc::new(MemoryBucket::new()))
            .clone())
    }
}

fn service() -> (ControllerService, Arc<Buckets>) {
    let buckets = Arc::new(Buckets::default());
    let svc = ControllerService {
        defaults: Defaults::default(),
        opener: buckets.clone(),
    };
    (svc, buckets)
}

fn cap() -> VolumeCapability {
    VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume::default())),
        access_mode: Some(AccessMode {
            mode: Mode::MultiNodeMultiWriter as i32,
        }),
    }
}

fn create(name: &str, bytes: i64, params: &[(&str, &str)]) -> CreateVolumeRequest {
    CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(CapacityRange {
            required_bytes: bytes,
            limit_bytes: 0,
        }),
        volume_capabilities: vec![cap()],
        parameters: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn create_is_idempotent_per_name_and_delete_removes_everything() {
    let (svc, buckets) = service();
    let params = [("bucketName", "shared"), ("prefix", "vols")];
    let v1 = svc
        .create_volume(Request::new(create("pvc-1", 1 << 30, &params)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v1.volume_id, "s3/shared/vols/pvc-1/");
    assert_eq!(v1.volume_context["prefix"], "vols/pvc-1/");
    let again = svc
        .create_volume(Request::new(create("pvc-1", 1 << 30, &params)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(again.volume_id, v1.volume_id);
    let e = svc
        .create_volume(Request::new(create("pvc-1", 2 << 30, &params)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::AlreadyExists);
    let bucket = buckets.buckets.lock().unwrap()["shared"].clone();
    bucket
        .put(
            "vols/pvc-1/data.bin",
            Payload::from(b"x".as_slice()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
    svc.delete_volume(Request::new(DeleteVolumeRequest {
        volume_id: v1.volume_id.clone(),
        secrets: Default::default(),
    }))
    .await
    .unwrap();
    assert!(bucket.list_keys("", 10).await.unwrap().unwrap().is_empty());
    // A second delete, and one of an id pail did not make, succeed.
    for id in [v1.volume_id.as_str(), "vol-123"] {
        svc.delete_volume(Request::new(DeleteVolumeRequest {
            volume_id: id.into(),
            secrets: Default::default(),
        }))
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn long_names_get_short_stable_ids() {
    let (svc, _) = service();
    let params = [("bucketName", "shared"), ("prefix", "some/base")];
    let names = [
        "p".repeat(128),
        format!("{}x", "p".repeat(127)),
        "é".repeat(64),
    ];
    let mut ids = Vec::new();
    for name in &names {
        let v = svc
            .create_volume(Request::new(create(name, 0, &params)))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert!(v.volume_id.len() <= 128, "{} bytes", v.volume_id.len());
        let (_, bucket, prefix) = parse_volume_id(&v.volume_id).unwrap();
        assert_eq!(
            (bucket, prefix),
            ("shared", v.volume_context["prefix"].as_str())
        );
        assert!(prefix.starts_with("some/base/ppp") || prefix.starts_with("some/base/é"));
        let again = svc
            .create_volume(Request::new(create(name, 0, &params)))
            .await
            .unwrap()
            .into_inner()
            .volume
            .unwrap();
        assert_eq!(again.volume_id, v.volume_id);
        ids.push(v.volume_id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 3, "names sharing a stem keep their own ids");
}

#[tokio::test]
async fn validate_of_a_missing_volume_is_not_found() {
    let (svc, _) = service();
    let validate = |id: &str| ValidateVolumeCapabilitiesRequest {
        volume_id: id.into(),
        volume_capabilities: vec![cap()],
        ..Default::default()
    };
    for id in ["s3/shared/none/", "vol-123"] {
        let e = svc
            .validate_volume_capabilities(Request::new(validate(id)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{id}");
    }
    let v = svc
        .create_volume(Request::new(create(
            "pvc-2",
            0,
            &[("bucketName", "shared")],
        )))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    let ok = svc
        .validate_volume_capabilities(Request::new(validate(&v.volume_id)))
        .await
        .unwrap()
        .into_inner();
    assert!(ok.confirmed.is_some());
}

#[tokio::test]
async fn bad_parameters_are_refused_before_any_bucket_is_opened() {
    let (svc, buckets) = service();
    for (params, field) in [
        (vec![("bucketName", "shared"), ("color", "blue")], "color"),
        (
            vec![("bucketName", "shared"), ("mountOptions", "part-size=1K")],
            "part-size",
        ),
        (
            vec![("bucketName", "shared"), ("provider", "memory")],
            "memory",
        ),
        (
            vec![("bucketName", "shared"), ("prefixTemplate", "${nope}")],
            "prefixTemplate",
        ),
        (
            vec![("bucketName", "shared"), ("prefixTemplate", "${pvc.name}")],
            "extra-create-metadata",
        ),
        (vec![("prefix", "x")], "bucketName"),
    ] {
        let e = svc
            .create_volume(Request::new(create("pvc", 0, &params)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains(field), "{field}: {}", e.message());
    }
    assert!(buckets.buckets.lock().unwrap().is_empty());
}

#[tokio::test]
async fn store_failures_become_retryable_statuses_and_leave_no_record() {
    let (svc, buckets) = service();
    let mem: SharedBucket = Arc::new(MemoryBucket::new());
    let faulty = Faulty::new(mem.clone());
    faulty.add(Rule::fail(
        Op::Put,
        ".pail-volume.json",
        StoreErrorKind::Unavailable,
        Some(1),
    ));
    *buckets.faults.lock().unwrap() = Some(faulty.clone());
    let params = [("bucketName", "shared")];
    let e = svc
        .create_volume(Request::new(create("pvc-3", 0, &params)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);
    assert!(mem.head("pvc-3.pail-volume.json").await.unwrap().is_none());
    // The provisioner retries: now it works.
    svc.create_volume(Request::new(create("pvc-3", 0, &params)))
        .await
        .unwrap();
    assert!(mem.head("pvc-3.pail-volume.json").await.unwrap().is_some());
    faulty.add(Rule::fail(
        Op::Head,
        "",
        StoreErrorKind::PermissionDenied,
        None,
    ));
    let e = svc
        .create_volume(Request::new(create("pvc-3", 0, &params)))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
}

#[tokio::test]
async fn a_volume_can_have_its_own_bucket() {
    let (svc, buckets) = service();
    let v = svc
        .create_volume(Request::new(create(
            "PVC_Own.1",
            0,
            &[("bucketPerVolume", "true")],
        )))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    assert_eq!(v.volume_id, "s3/pvc-own-1/");
    assert!(buckets.buckets.lock().unwrap().contains_key("pvc-own-1"));
    svc.delete_volume(Request::new(DeleteVolumeRequest {
        volume_id: v.volume_id,
        secrets: Default::default(),
    }))
    .await
    .unwrap();
}

#[tokio::test]
async fn every_attribute_a_storage_class_sets_reaches_the_volume() {
    let (svc, _) = service();
    // A valid value of every volume attribute: a new attribute without one fails here.
    let sample = |key: &str| -> &str {
        match key {
            keys::BUCKET => "shared",
            keys::PREFIX => "base/",
            keys::PROVIDER => "s3",
            keys::ENDPOINT => "https://s3.eu-west-1.amazonaws.com",
            keys::REGION => "eu-west-1",
            keys::PATH_STYLE | keys::REQUESTER_PAYS => "true",
            keys::MOUNT_OPTIONS => "max-threads=4",
            keys::AUTH_SOURCE => "pod",
            keys::ROLE_ARN => "arn:aws:iam::123456789012:role/r",
            keys::STS_ENDPOINT => "https://sts.eu-west-1.amazonaws.com",
            keys::TOKEN_AUDIENCE => "sts.amazonaws.com",
            keys::WORKLOAD_IDENTITY_PROVIDER => "//iam.googleapis.com/projects/1/p",
            keys::GCP_SERVICE_ACCOUNT => "sa@p.iam.gserviceaccount.com",
            keys::SSE => "aws:kms",
            keys::SSE_KMS_KEY_ID => "arn:aws:kms:eu-west-1:123456789012:key/k",
            keys::STORAGE_CLASS => "STANDARD_IA",
            other => panic!("no sample value for the volume attribute {other}: add one"),
        }
    };
    let params: Vec<(&str, &str)> = VOLUME_ATTRIBUTES.iter().map(|k| (*k, sample(k))).collect();
    let v = svc
        .create_volume(Request::new(create("pvc-all", 0, &params)))
        .await
        .unwrap()
        .into_inner()
        .volume
        .unwrap();
    for key in VOLUME_ATTRIBUTES {
        let got = v.volume_context.get(*key).map(String::as_str);
        match *key {
            // The controller's own: the volume's place in the bucket.
            keys::PREFIX => assert!(got.unwrap().starts_with("base/"), "{got:?}"),
            _ => assert_eq!(got, Some(sample(key)), "{key} was accepted but not carried"),
        }
    }
    // What a volume could not use is refused, not dropped.
    for (key, bad) in [
        (keys::AUTH_SOURCE, "node"),
        (keys::ENDPOINT, "ftp://x"),
        (keys::REGION, "eu west"),
    ] {
        let mut params = params.clone();
        params.retain(|(k, _)| *k != key);
        params.push((key, bad));
        let e = svc
            .create_volume(Request::new(create("pvc-bad", 0, &params)))
            .await
            .unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{key}: {e:?}");
        assert!(e.message().contains(key), "{key}: {}", e.message());
    }
}
