//! Server-side copy of objects larger than one CopyObject allows (5 GiB on S3): a multipart
//! upload whose parts are UploadPartCopy ranges of the source, made with raw signed requests.
//! The copy carries the source's user metadata; a failure aborts the upload.

use bytes::Bytes;
use object_store::aws::AwsAuthorizer;
use object_store::client::{HttpRequest, HttpRequestBody};

use super::raw::{S3Raw, encode_key};
use super::{Meta, Result, StoreError, StoreErrorKind};

impl S3Raw {
    fn url(&self, key: &str, query: &str) -> String {
        let path = encode_key(key, true);
        let base = if self.path_style {
            format!("{}/{}/{}", self.endpoint, self.bucket, path)
        } else {
            let (scheme, host) = self
                .endpoint
                .split_once("://")
                .unwrap_or(("https", &self.endpoint));
            format!("{scheme}://{}.{host}/{path}", self.bucket)
        };
        if query.is_empty() {
            base
        } else {
            format!("{base}?{query}")
        }
    }

    /// One signed request; the body of a 2xx answer, or an error.
    pub(super) async fn call(
        &self,
        method: &str,
        key: &str,
        query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Bytes> {
        let mut b = http::Request::builder()
            .method(method)
            .uri(self.url(key, query))
            .header(http::header::CONTENT_LENGTH, body.len().to_string());
        for (k, v) in headers {
            b = b.header(k.as_str(), v.as_str());
        }
        let mut req: HttpRequest = b
            .body(HttpRequestBody::from(body))
            .map_err(|e| StoreError::new(StoreErrorKind::InvalidKey, format!("{key:?}: {e}")))?;
        if let Some(provider) = &self.credentials {
            let cred = provider
                .get_credential()
                .await
                .map_err(|e| StoreError::from_object_store(e, key))?;
            AwsAuthorizer::new(&cred, "s3", &self.region)
                .with_request_payer(self.requester_pays)
                .try_authorize(&mut req, None)
                .map_err(|e| StoreError::from_object_store(e, key))?;
        }
        let resp = self
            .http
            .execute(req)
            .await
            .map_err(|e| StoreError::new(StoreErrorKind::Other, format!("{key:?}: {e}")))?;
        let status = resp.status();
        let text = resp.into_body().bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(text);
        }
        let kind = match status.as_u16() {
            401 | 403 => StoreErrorKind::PermissionDenied,
            404 => StoreErrorKind::NotFound,
            _ => StoreErrorKind::Other,
        };
        Err(StoreError::new(
            kind,
            format!(
                "{key:?}: {method} HTTP {status}: {}",
                String::from_utf8_lossy(&text)
                    .chars()
                    .take(300)
                    .collect::<String>()
            ),
        ))
    }

    /// Copy `from` (`size` bytes) to `to` in parts of `part_size`.
    pub(super) async fn multipart_copy(
        &self,
        from: &str,
        to: &str,
        size: u64,
        part_size: u64,
        meta: &Meta,
    ) -> Result<()> {
        let headers: Vec<(String, String)> = meta
            .iter()
            .map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone()))
            .collect();
        let created = self
            .call("POST", to, "uploads", &headers, Vec::new())
            .await?;
        let upload_id = xml_value(&created, "UploadId").ok_or_else(|| {
            StoreError::new(
                StoreErrorKind::Other,
                format!(
                    "{to:?}: no UploadId in {}",
                    String::from_utf8_lossy(&created)
                ),
            )
        })?;
        let id = encode_key(&upload_id, false);
        let result = async {
            let source = format!("/{}/{}", self.bucket, encode_key(from, true));
            let mut parts = Vec::new();
            let mut start = 0;
            while start < size {
                let end = (start + part_size).min(size) - 1;
                let n = parts.len() + 1;
                let h = vec![
                    ("x-amz-copy-source".to_string(), source.clone()),
                    (
                        "x-amz-copy-source-range".to_string(),
                        format!("bytes={start}-{end}"),
                    ),
                ];
                let answer = self
                    .call(
                        "PUT",
                        to,
                        &format!("partNumber={n}&uploadId={id}"),
                        &h,
                        Vec::new(),
                    )
                    .await?;
                let etag = xml_value(&answer, "ETag").ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Other,
                        format!("{to:?}: no ETag for part {n}"),
                    )
                })?;
                parts.push(etag);
                start = end + 1;
            }
            let mut xml = String::from("<CompleteMultipartUpload>");
            for (i, etag) in parts.iter().enumerate() {
                xml.push_str(&format!(
                    "<Part><PartNumber>{}</PartNumber><ETag>{}</ETag></Part>",
                    i + 1,
                    escape(etag)
                ));
            }
            xml.push_str("</CompleteMultipartUpload>");
            self.call("POST", to, &format!("uploadId={id}"), &[], xml.into_bytes())
                .await
                .map(|_| ())
        }
        .await;
        if result.is_err() {
            let _ = self
                .call("DELETE", to, &format!("uploadId={id}"), &[], Vec::new())
                .await;
        }
        result
    }
}

/// The text of the first `<tag>` in an XML answer, entities undone.
fn xml_value(xml: &[u8], tag: &str) -> Option<String> {
    let text = String::from_utf8_lossy(xml);
    let start = text.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = start + text[start..].find(&format!("</{tag}>"))?;
    Some(
        text[start..end]
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&"),
    )
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    #[test]
    fn xml_values_are_unescaped() {
        let xml = b"<R><UploadId>a&amp;b</UploadId><ETag>&quot;x&quot;</ETag></R>";
        assert_eq!(super::xml_value(xml, "UploadId").as_deref(), Some("a&b"));
        assert_eq!(super::xml_value(xml, "ETag").as_deref(), Some("\"x\""));
        assert_eq!(super::xml_value(xml, "Nope"), None);
    }
}
