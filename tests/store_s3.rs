//! The S3 store layer against the real S3 server: keys of any bytes, listings that page,
//! conditional writes, markers, part copies pinned to a version, and large server-side
//! copies in parts with their metadata.

mod common;

use std::sync::Arc;

use common::*;
use pail::store::{
    Bucket, BucketExt, Condition, CopyOptions, ListOptions, Payload, PutOptions, SharedBucket,
    StoreErrorKind,
};

fn body(b: &[u8]) -> Payload {
    Payload::from(b.to_vec())
}

#[test]
fn objects_over_the_copy_limit_are_copied_in_parts_with_their_metadata() {
    let s3 = s3();
    let prefix = unique("bigcopy");
    let store = s3.bucket().with_copy_limit(6 << 20);
    let data = data((17 << 20) + 123, 4);
    let opts = PutOptions {
        meta: [("mode".to_string(), "33188".to_string())].into(),
        ..Default::default()
    };
    block_on(async {
        store
            .put(&format!("{prefix}src"), Payload::from(data.clone()), &opts)
            .await
            .unwrap();
        store
            .copy(
                &format!("{prefix}src"),
                &format!("{prefix}dst"),
                &CopyOptions::default(),
            )
            .await
            .unwrap();
        let copied = store
            .get_all(&format!("{prefix}dst"))
            .await
            .unwrap()
            .unwrap();
        assert!(copied[..] == data[..], "the parts add up to the source");
        let info = store.head(&format!("{prefix}dst")).await.unwrap().unwrap();
        assert_eq!(info.meta.get("mode").map(String::as_str), Some("33188"));
        // A missing source is NotFound, and leaves no upload behind to complete.
        let e = store
            .copy(
                &format!("{prefix}nope"),
                &format!("{prefix}x"),
                &CopyOptions::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::NotFound);
    });
}

#[test]
fn keys_with_control_characters_and_odd_bytes_round_trip() {
    let s3 = s3();
    let prefix = unique("keys");
    let store = s3.store();
    block_on(async {
        let keys = [
            format!("{prefix}tab\there"),
            format!("{prefix}cr\rlf\n"),
            format!("{prefix}ctl\u{1}x"),
            format!("{prefix}plus+space %20é&<>\"'?#"),
        ];
        for k in &keys {
            store
                .put(k, body(k.as_bytes()), &PutOptions::default())
                .await
                .unwrap();
        }
        let listing = store.list_dir(&prefix).await.unwrap();
        let mut names: Vec<String> = listing
            .files
            .iter()
            .map(|(n, _)| format!("{prefix}{n}"))
            .collect();
        names.sort();
        let mut want = keys.to_vec();
        want.sort();
        assert_eq!(names, want);
        for k in &keys {
            assert_eq!(&store.get_all(k).await.unwrap().unwrap()[..], k.as_bytes());
            let copy = format!("{k}.copy");
            store.copy(k, &copy, &CopyOptions::default()).await.unwrap();
            store.delete(k).await.unwrap();
            assert!(store.head(k).await.unwrap().is_none());
            assert!(store.head(&copy).await.unwrap().is_some());
        }
    });
}

#[test]
fn listings_page_with_their_tokens_and_markers_are_objects() {
    let s3 = s3();
    let prefix = unique("pages");
    let store = s3.store();
    block_on(async {
        for i in 0..25 {
            store
                .put(
                    &format!("{prefix}f{i:02}"),
                    body(b""),
                    &PutOptions::default(),
                )
                .await
                .unwrap();
        }
        store.put_marker(&format!("{prefix}dir/")).await.unwrap();
        let mut opts = ListOptions {
            delimiter: true,
            token: None,
            max_keys: Some(10),
        };
        let (mut objects, mut prefixes, mut pages) = (0, Vec::new(), 0);
        loop {
            let page = store.list(&prefix, &opts).await.unwrap();
            pages += 1;
            objects += page.objects.len();
            prefixes.extend(page.prefixes);
            match page.next {
                Some(t) => opts.token = Some(t),
                None => break,
            }
        }
        assert_eq!((objects, pages), (25, 3));
        assert_eq!(prefixes, [format!("{prefix}dir/")]);
        assert!(store.dir_exists(&format!("{prefix}dir/")).await.unwrap());
        store.delete(&format!("{prefix}dir/")).await.unwrap();
        assert!(!store.dir_exists(&format!("{prefix}dir/")).await.unwrap());
    });
}

#[test]
fn conditional_writes_and_pinned_part_copies_refuse_a_changed_object() {
    let s3 = s3();
    let prefix = unique("cond");
    let store: SharedBucket = Arc::new(s3.bucket());
    let key = format!("{prefix}k");
    block_on(async {
        let create = PutOptions {
            condition: Some(Condition::IfNoneMatch),
            ..Default::default()
        };
        let first = store
            .put(&key, Payload::from(data(6 << 20, 1)), &create)
            .await
            .unwrap();
        let e = store.put(&key, body(b"again"), &create).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Precondition);
        let stale = PutOptions {
            condition: Some(Condition::IfMatch("\"0123\"".into())),
            ..Default::default()
        };
        let e = store.put(&key, body(b"x"), &stale).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Precondition);
        // A part copied from the version just written, then new bytes.
        let mut up = store
            .start_upload(&key, &PutOptions::default())
            .await
            .unwrap();
        up.copy_part(&key, 0..(5 << 20), first.etag.as_deref())
            .await
            .unwrap();
        up.put_part(body(b"tail")).await.unwrap();
        up.complete().await.unwrap();
        let got = store.get_all(&key).await.unwrap().unwrap();
        assert_eq!(got.len(), (5 << 20) + 4);
        assert!(got[..5 << 20] == data(6 << 20, 1)[..5 << 20]);
        // Pinned to the old version now: refused.
        let mut up = store
            .start_upload(&key, &PutOptions::default())
            .await
            .unwrap();
        let e = up
            .copy_part(&key, 0..(5 << 20), first.etag.as_deref())
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Precondition);
        up.abort().await.unwrap();
        let e = store
            .get_range(&key, 0..10, first.etag.as_deref())
            .await
            .unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Precondition);
    });
}
