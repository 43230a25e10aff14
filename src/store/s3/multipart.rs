//! S3 multipart uploads: parts sent as data or copied from an existing object by the
//! server (UploadPartCopy, optionally pinned to its ETag), many in flight at once, then
//! CompleteMultipartUpload (with the write's condition) or AbortMultipartUpload. Also the
//! multipart copy of objects larger than one CopyObject allows.

use std::ops::Range;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use http::Method;

use super::client::{Call, Client};
use super::{headers_of, xml};
use crate::store::{
    Condition, PartFuture, Payload, PutOptions, PutResult, Result, StoreError, StoreErrorKind,
    Upload,
};

/// Parts of a multipart copy in flight at once.
const PARALLEL_COPIES: usize = 4;

/// One multipart upload.
pub struct S3Upload {
    client: Arc<Client>,
    key: String,
    id: String,
    condition: Option<Condition>,
    etags: Arc<Mutex<Vec<Option<String>>>>,
    done: bool,
}

impl S3Upload {
    /// Start an upload to `key` carrying `opts`.
    pub async fn start(client: Arc<Client>, key: &str, opts: &PutOptions) -> Result<S3Upload> {
        let mut call = Call::new(Method::POST, key).query("uploads", "");
        call.headers = headers_of(opts, false);
        call.headers.extend(client.write_headers.iter().cloned());
        let answer = client.send(&call).await?;
        Ok(S3Upload {
            client,
            key: key.to_string(),
            id: xml::upload_id(&answer.body.to_bytes())?,
            condition: opts.condition.clone(),
            etags: Arc::default(),
            done: false,
        })
    }

    fn next(&mut self) -> usize {
        let mut etags = self.etags.lock().unwrap_or_else(|p| p.into_inner());
        etags.push(None);
        etags.len()
    }

    /// Start part `n`: the PUT `build` completes, sent when the future runs.
    fn part(&mut self, build: impl FnOnce(Call) -> Call) -> PartFuture {
        let n = self.next();
        let call = build(
            Call::new(Method::PUT, self.key.clone())
                .query("partNumber", n.to_string())
                .query("uploadId", self.id.clone()),
        );
        let (client, etags, key) = (self.client.clone(), self.etags.clone(), self.key.clone());
        Box::pin(async move {
            let answer = client.send(&call).await?;
            let etag = xml::etag(&answer.body.to_bytes())
                .or_else(|| answer.header("etag"))
                .ok_or_else(|| {
                    StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("{key:?}: no ETag for part {n}"),
                    )
                })?;
            etags.lock().unwrap_or_else(|p| p.into_inner())[n - 1] = Some(etag);
            Ok(())
        })
    }
}

#[async_trait::async_trait]
impl Upload for S3Upload {
    fn put_part(&mut self, data: Payload) -> PartFuture {
        self.part(move |c| c.body(data))
    }

    fn copy_part(&mut self, from: &str, range: Range<u64>, if_match: Option<&str>) -> PartFuture {
        let source = self.client.copy_source(from);
        let if_match = if_match.map(str::to_string);
        self.part(move |c| {
            let mut c = c.header("x-amz-copy-source", source).header(
                "x-amz-copy-source-range",
                format!("bytes={}-{}", range.start, range.end - 1),
            );
            if let Some(e) = if_match {
                c = c.header("x-amz-copy-source-if-match", e);
            }
            c.error_in_body = true;
            c
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let etags: Vec<String> = {
            let etags = self.etags.lock().unwrap_or_else(|p| p.into_inner());
            etags
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    e.clone().ok_or_else(|| {
                        StoreError::new(
                            StoreErrorKind::Other,
                            format!("{:?}: part {} did not finish", self.key, i + 1),
                        )
                    })
                })
                .collect::<Result<_>>()?
        };
        let mut call = Call::new(Method::POST, self.key.clone())
            .query("uploadId", self.id.clone())
            .body(Payload::from(xml::complete_body(&etags).into_bytes()));
        call = match &self.condition {
            Some(Condition::IfNoneMatch) => call.header("if-none-match", "*"),
            Some(Condition::IfMatch(e)) => call.header("if-match", e.clone()),
            None => call,
        };
        call.error_in_body = true;
        let answer = self.client.send(&call).await?;
        self.done = true;
        Ok(PutResult {
            etag: xml::etag(&answer.body.to_bytes()).or_else(|| answer.header("etag")),
        })
    }

    async fn abort(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        let call = Call::new(Method::DELETE, self.key.clone()).query("uploadId", self.id.clone());
        match self.client.send(&call).await {
            Ok(_) => {
                self.done = true;
                Ok(())
            }
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// Copy `from` (`size` bytes) to `to` in parts of `part` bytes, with `opts`.
pub async fn copy_in_parts(
    client: Arc<Client>,
    from: &str,
    to: &str,
    size: u64,
    part: u64,
    opts: &PutOptions,
    if_match: Option<&str>,
) -> Result<PutResult> {
    let mut upload = S3Upload::start(client, to, opts).await?;
    let mut parts = Vec::new();
    let mut at = 0;
    while at < size {
        let end = (at + part).min(size);
        parts.push(upload.copy_part(from, at..end, if_match));
        at = end;
    }
    let results: Vec<Result<()>> = futures::stream::iter(parts)
        .buffer_unordered(PARALLEL_COPIES)
        .collect()
        .await;
    let result = match results.into_iter().find(|r| r.is_err()) {
        Some(Err(e)) => Err(e),
        _ => upload.complete().await,
    };
    if result.is_err() {
        let _ = upload.abort().await;
    }
    result
}
