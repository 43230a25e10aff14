//! The XML documents of the S3 API pail reads and writes: listings, multipart upload
//! answers, copy results, errors, and the CompleteMultipartUpload request.

use std::time::SystemTime;

use serde::Deserialize;

use crate::store::{ObjectInfo, StoreError, StoreErrorKind};

fn malformed(what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::new(
        StoreErrorKind::Unavailable,
        format!("malformed {what} from the store: {e}"),
    )
}

fn parse<'a, T: Deserialize<'a>>(what: &str, body: &'a [u8]) -> Result<T, StoreError> {
    let text = std::str::from_utf8(body).map_err(|e| malformed(what, e))?;
    quick_xml::de::from_str(text).map_err(|e| malformed(what, e))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBucketResult {
    #[serde(default)]
    contents: Vec<Contents>,
    #[serde(default)]
    common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    is_truncated: bool,
    next_continuation_token: Option<String>,
    encoding_type: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Contents {
    key: String,
    last_modified: Option<String>,
    #[serde(rename = "ETag")]
    etag: Option<String>,
    #[serde(default)]
    size: u64,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CommonPrefix {
    prefix: String,
}

/// One page of a ListObjectsV2 answer.
pub struct ListPage {
    /// Objects.
    pub objects: Vec<ObjectInfo>,
    /// Common prefixes.
    pub prefixes: Vec<String>,
    /// Continuation token.
    pub next: Option<String>,
}

fn decode(s: String, url_encoded: bool) -> Result<String, StoreError> {
    if !url_encoded {
        return Ok(s);
    }
    // encoding-type=url encodes a space as `+`, as forms do.
    let plus = s.replace('+', " ");
    percent_encoding::percent_decode_str(&plus)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|e| malformed("listing key", e))
}

/// An ISO 8601 time as listings give it (`2024-01-02T03:04:05.000Z`).
pub fn iso_time(s: &str) -> Option<SystemTime> {
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| SystemTime::from(t.with_timezone(&chrono::Utc)))
}

/// Parse a ListObjectsV2 answer (keys decoded when the store URL-encoded them).
pub fn list_page(body: &[u8]) -> Result<ListPage, StoreError> {
    let r: ListBucketResult = parse("listing", body)?;
    let url = r.encoding_type.as_deref() == Some("url");
    let mut objects = Vec::with_capacity(r.contents.len());
    for c in r.contents {
        objects.push(ObjectInfo {
            key: decode(c.key, url)?,
            size: c.size,
            mtime: c
                .last_modified
                .as_deref()
                .and_then(iso_time)
                .unwrap_or(SystemTime::UNIX_EPOCH),
            etag: c.etag,
            meta: Default::default(),
            content_type: None,
        });
    }
    let prefixes = r
        .common_prefixes
        .into_iter()
        .map(|p| decode(p.prefix, url))
        .collect::<Result<_, _>>()?;
    let next =
        if r.is_truncated {
            Some(r.next_continuation_token.ok_or_else(|| {
                malformed("listing", "a truncated page without a continuation token")
            })?)
        } else {
            None
        };
    Ok(ListPage {
        objects,
        prefixes,
        next,
    })
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InitiateMultipartUploadResult {
    upload_id: String,
}

/// The UploadId of a CreateMultipartUpload answer.
pub fn upload_id(body: &[u8]) -> Result<String, StoreError> {
    parse::<InitiateMultipartUploadResult>("CreateMultipartUpload answer", body)
        .map(|r| r.upload_id)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct WithEtag {
    #[serde(rename = "ETag")]
    etag: Option<String>,
}

/// The ETag in a CopyPartResult, CopyObjectResult or CompleteMultipartUploadResult.
pub fn etag(body: &[u8]) -> Option<String> {
    parse::<WithEtag>("answer", body).ok()?.etag
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ErrorDoc {
    code: Option<String>,
}

/// The `<Code>` of an S3 error document, if the body is one.
pub fn error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    if !text.contains("<Error") {
        return None;
    }
    let doc: ErrorDoc = quick_xml::de::from_str(text).ok()?;
    doc.code
        .filter(|c| c.len() <= 64 && c.chars().all(|ch| ch.is_ascii_alphanumeric()))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The body of a CompleteMultipartUpload request for parts 1..=n with these ETags.
pub fn complete_body(etags: &[String]) -> String {
    let mut xml = String::from("<CompleteMultipartUpload>");
    for (i, etag) in etags.iter().enumerate() {
        xml.push_str(&format!(
            "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
            i + 1,
            escape(etag)
        ));
    }
    xml.push_str("</CompleteMultipartUpload>");
    xml
}

/// The body of a CreateBucket request in `region` (none for us-east-1).
pub fn create_bucket_body(region: &str) -> String {
    if region == "us-east-1" {
        String::new()
    } else {
        format!(
            "<CreateBucketConfiguration><LocationConstraint>{}</LocationConstraint></CreateBucketConfiguration>",
            escape(region)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_decode_url_encoded_keys_and_carry_the_token() {
        let body = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p%2F</Prefix>
<KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys><EncodingType>url</EncodingType><IsTruncated>true</IsTruncated>
<NextContinuationToken>tok+/=</NextContinuationToken>
<Contents><Key>p/a%01b+c</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>&quot;e1&quot;</ETag><Size>12</Size></Contents>
<Contents><Key>p/x</Key><Size>0</Size></Contents>
<CommonPrefixes><Prefix>p/sub%20dir/</Prefix></CommonPrefixes></ListBucketResult>"#;
        let page = list_page(body).unwrap();
        assert_eq!(page.objects[0].key, "p/a\u{1}b c");
        assert_eq!(page.objects[0].etag.as_deref(), Some("\"e1\""));
        assert_eq!(page.objects[0].size, 12);
        assert_eq!(page.prefixes, ["p/sub dir/"]);
        assert_eq!(page.next.as_deref(), Some("tok+/="));
        let t = page.objects[0].mtime.duration_since(SystemTime::UNIX_EPOCH);
        assert_eq!(t.unwrap().as_secs(), 1_704_164_645);
    }

    #[test]
    fn answers_give_their_ids_etags_and_codes() {
        let up = b"<InitiateMultipartUploadResult><Bucket>b</Bucket><Key>k</Key><UploadId>a&amp;b</UploadId></InitiateMultipartUploadResult>";
        assert_eq!(upload_id(up).unwrap(), "a&b");
        let copied = b"<CopyPartResult><LastModified>x</LastModified><ETag>&quot;e&quot;</ETag></CopyPartResult>";
        assert_eq!(etag(copied).as_deref(), Some("\"e\""));
        let err = b"<Error><Code>NoSuchKey</Code><Message>gone</Message></Error>";
        assert_eq!(error_code(err).as_deref(), Some("NoSuchKey"));
        assert_eq!(error_code(b"<html>nope</html>"), None);
        assert!(complete_body(&["\"a\"".into()]).contains("<ETag>&quot;a&quot;</ETag>"));
        assert!(
            list_page(b"<ListBucketResult><IsTruncated>true</IsTruncated></ListBucketResult>")
                .is_err()
        );
    }
}
