//! Multipart uploads made with raw signed requests, whose parts are UploadPartCopy ranges of
//! an object or bytes sent: copies of objects larger than one CopyObject allows (5 GiB on
//! S3), with the source's user metadata, and uploads that keep an object's unchanged
//! leading parts (appends). A failure aborts the upload, so nothing appears.

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::AwsAuthorizer;
use object_store::client::{HttpRequest, HttpRequestBody};

use super::raw::{S3Raw, encode_key};
use super::{Meta, Result, StoreError, StoreErrorKind};

/// Parts of one multipart upload in flight at once.
const PARALLEL_PARTS: usize = 4;

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
        Ok(self
            .call_full(method, key, query, headers, body)
            .await?
            .body)
    }

    /// One signed request; a 2xx answer, or an error.
    async fn call_full(
        &self,
        method: &str,
        key: &str,
        query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Answer> {
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
        let etag = resp
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = resp.into_body().bytes().await.unwrap_or_default();
        if status.is_success() {
            return Ok(Answer { body: text, etag });
        }
        let kind = match status.as_u16() {
            401 | 403 => StoreErrorKind::PermissionDenied,
            404 => StoreErrorKind::NotFound,
            412 => StoreErrorKind::Precondition,
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
        let mut start = 0;
        self.multipart(to, meta, || {
            if start >= size {
                return Ok(None);
            }
            let end = (start + part_size).min(size);
            let part = Part::Copy {
                from: from.to_string(),
                range: start..end,
                if_match: None,
            };
            start = end;
            Ok(Some(part))
        })
        .await
        .map(|_| ())
    }

    /// A multipart upload to `to` of the parts `next` yields, in order; the new object's
    /// ETag when the store says it. A failure aborts the upload, so nothing appears.
    pub(super) async fn multipart(
        &self,
        to: &str,
        meta: &Meta,
        mut next: impl FnMut() -> Result<Option<Part>>,
    ) -> Result<Option<String>> {
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
            // Up to PARALLEL_PARTS parts in flight; their ETags collected in order.
            let mut parts = Vec::new();
            let mut in_flight = futures::stream::FuturesOrdered::new();
            let mut exhausted = false;
            loop {
                while !exhausted && in_flight.len() < PARALLEL_PARTS {
                    match next()? {
                        Some(part) => {
                            let n = parts.len() + in_flight.len() + 1;
                            in_flight.push_back(self.send_part(to, &id, n, part));
                        }
                        None => exhausted = true,
                    }
                }
                match in_flight.next().await {
                    Some(etag) => parts.push(etag?),
                    None => break,
                }
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
            let done = self
                .call("POST", to, &format!("uploadId={id}"), &[], xml.into_bytes())
                .await?;
            // CompleteMultipartUpload can fail after its 200 status line.
            if xml_value(&done, "Code").is_some() {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    format!(
                        "{to:?}: completing the upload failed: {}",
                        String::from_utf8_lossy(&done)
                    ),
                ));
            }
            Ok(xml_value(&done, "ETag"))
        }
        .await;
        if result.is_err() {
            let _ = self
                .call("DELETE", to, &format!("uploadId={id}"), &[], Vec::new())
                .await;
        }
        result
    }

    /// Upload part `n` of the upload `id` (URL-encoded) to `to`; its ETag.
    async fn send_part(&self, to: &str, id: &str, n: usize, part: Part) -> Result<String> {
        let query = format!("partNumber={n}&uploadId={id}");
        let (headers, body) = match part {
            Part::Copy {
                from,
                range,
                if_match,
            } => {
                let mut h = vec![
                    (
                        "x-amz-copy-source".to_string(),
                        format!("/{}/{}", self.bucket, encode_key(&from, true)),
                    ),
                    (
                        "x-amz-copy-source-range".to_string(),
                        format!("bytes={}-{}", range.start, range.end - 1),
                    ),
                ];
                if let Some(etag) = if_match {
                    h.push(("x-amz-copy-source-if-match".to_string(), etag));
                }
                (h, Vec::new())
            }
            Part::Data(data) => (Vec::new(), data),
        };
        let answer = self
            .call_retrying("PUT", to, &query, &headers, body)
            .await?;
        match xml_value(&answer.body, "ETag") {
            Some(etag) => Ok(etag),
            None => answer.etag.ok_or_else(|| {
                StoreError::new(
                    StoreErrorKind::Other,
                    format!("{to:?}: no ETag for part {n}"),
                )
            }),
        }
    }

    /// [`Self::call`] for an idempotent request, tried again (three times in all) after
    /// errors other than refusals; with the answer's ETag header.
    async fn call_retrying(
        &self,
        method: &str,
        key: &str,
        query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Answer> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .call_full(method, key, query, headers, body.clone())
                .await
            {
                Ok(a) => return Ok(a),
                Err(e) if e.kind == StoreErrorKind::Other && attempt < 3 => {
                    tracing::debug!(key, attempt, error = %e, "retrying a part");
                    tokio::time::sleep(std::time::Duration::from_millis(200 * attempt)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// One part of a [`S3Raw::multipart`] upload.
pub(super) enum Part {
    /// Bytes `range` of the object `from`, copied by the server; `if_match` pins its version.
    Copy {
        from: String,
        range: std::ops::Range<u64>,
        if_match: Option<String>,
    },
    /// Bytes sent with the request.
    Data(Vec<u8>),
}

/// A 2xx answer: its body and its ETag header.
pub(super) struct Answer {
    body: Bytes,
    etag: Option<String>,
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
