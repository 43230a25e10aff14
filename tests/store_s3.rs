//! The store layer against the real S3 server where it goes beyond `object_store`: large
//! server-side copies in parts, directory markers, metadata.

mod common;

use bytes::Bytes;
use common::*;
use object_store::PutPayload;

#[test]
fn objects_over_the_copy_threshold_are_copied_in_parts_with_their_metadata() {
    let s3 = s3();
    let prefix = unique("bigcopy");
    let store = s3.store().with_copy_threshold(6 << 20);
    let body = data((17 << 20) + 123, 4);
    let meta: pail::store::Meta = [("mode".to_string(), "33188".to_string())].into();
    block_on(async {
        store
            .put_meta(
                &format!("{prefix}src"),
                PutPayload::from(Bytes::from(body.clone())),
                &meta,
            )
            .await
            .unwrap();
        store
            .copy_any(&format!("{prefix}src"), &format!("{prefix}dst"))
            .await
            .unwrap();
        let copied = store
            .get_all(&format!("{prefix}dst"))
            .await
            .unwrap()
            .unwrap();
        assert!(copied[..] == body[..], "the parts add up to the source");
        let info = store.head(&format!("{prefix}dst")).await.unwrap().unwrap();
        assert_eq!(info.meta.get("mode").map(String::as_str), Some("33188"));
        // A missing source is NotFound, and leaves no upload behind to complete.
        let e = store
            .copy_any(&format!("{prefix}nope"), &format!("{prefix}x"))
            .await
            .unwrap_err();
        assert_eq!(e.kind, pail::store::StoreErrorKind::NotFound);
    });
}
