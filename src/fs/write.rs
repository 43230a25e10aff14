//! Writing one new object: sequential writes are cut into parts that upload in parallel
//! (multipart) while the writer is still writing; the object appears when the upload
//! completes at close or fsync. A small file is sent in one PUT.
//!
//! Memory per writer is bounded by about `part_size * (max_in_flight + 1)` plus one write;
//! parts being uploaded also count against the mount's memory budget. The parts sent are
//! also kept in the staging cache (while it has room), so that a write that seeks back
//! (zip, numpy, torch.save) can continue the file as a staged one. Any failure is kept and
//! returned by every later call, so close()/fsync() report it; an incomplete multipart
//! upload is aborted, so no partial object is ever visible.

use std::collections::VecDeque;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use tokio::task::JoinHandle;

use super::budget::{Budget, Held};
use super::cache::{Cache, CacheFile};
use super::error::{FsError, FsResult};
use crate::store::{Payload, PutOptions, SharedBucket, Upload};

/// Tunables of the uploader.
#[derive(Debug, Clone, Copy)]
pub struct WriteConfig {
    /// Size of one multipart part (also the single-PUT threshold).
    pub part_size: usize,
    /// Parts uploading at once per file.
    pub max_in_flight: usize,
}

impl Default for WriteConfig {
    fn default() -> Self {
        WriteConfig {
            part_size: 8 << 20,
            max_in_flight: 4,
        }
    }
}

enum State {
    Open,
    Done,
    Failed(FsError),
}

/// The write state of one file handle.
pub struct Writer {
    store: SharedBucket,
    key: String,
    cfg: WriteConfig,
    /// Data of the part being filled, as written (no copy until the store sends it).
    buf: Payload,
    buffered: usize,
    budget: Budget,
    /// Metadata, Content-Type and condition the object is written with.
    opts: PutOptions,
    written: u64,
    upload: Option<Box<dyn Upload>>,
    in_flight: VecDeque<JoinHandle<crate::store::Result<()>>>,
    state: State,
    /// Bytes already handed to the upload (parts sent).
    sent: u64,
    /// A local copy of the parts sent; `None` before the first part, or once the cache had
    /// no room for it (`spill_lost`).
    spill: Option<CacheFile>,
    spill_lost: bool,
    cache: Arc<Cache>,
    /// The new object's ETag, once complete.
    etag: Option<String>,
}

/// What a writer hands over when the file continues staged.
pub struct Written {
    /// A local copy of bytes `[0, sent)`, when parts were sent.
    pub copy: Option<CacheFile>,
    /// Bytes sent (and held by `copy`).
    pub sent: u64,
    /// The bytes after them, in order.
    pub rest: Vec<Bytes>,
}

impl Writer {
    /// A writer of a new object at `key`.
    pub fn new(
        store: SharedBucket,
        key: String,
        cfg: WriteConfig,
        budget: Budget,
        cache: Arc<Cache>,
    ) -> Self {
        Writer {
            sent: 0,
            spill: None,
            spill_lost: false,
            cache,
            etag: None,
            store,
            key,
            cfg,
            buf: Payload::new(),
            buffered: 0,
            budget,
            opts: PutOptions::default(),
            written: 0,
            upload: None,
            in_flight: VecDeque::new(),
            state: State::Open,
        }
    }

    /// Write the object with these options (metadata, Content-Type, condition).
    pub fn set_options(&mut self, opts: PutOptions) {
        self.opts = opts;
    }

    /// Whether a multipart upload was started (its metadata went with its start).
    pub fn is_multipart(&self) -> bool {
        self.upload.is_some()
    }

    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.written
    }

    /// The completed object's ETag, when the store gave one.
    pub fn etag(&self) -> Option<&str> {
        self.etag.as_deref()
    }

    /// Write to `key` instead (a rename of the open file): possible until a part was sent.
    pub fn set_key(&mut self, key: String) -> bool {
        if self.upload.is_some() || !matches!(self.state, State::Open) {
            return false;
        }
        self.key = key;
        true
    }

    /// Whether the object was uploaded (or the upload failed): no more writes.
    pub fn is_finished(&self) -> bool {
        !matches!(self.state, State::Open)
    }

    fn check_open(&self) -> FsResult<()> {
        match &self.state {
            State::Open => Ok(()),
            State::Done => Err(FsError::new(
                libc::EBADF,
                format!("{:?}: already uploaded (closed or fsynced)", self.key),
            )),
            State::Failed(e) => Err(e.clone()),
        }
    }

    /// Append `data` at `offset`, which must be the current end of the file.
    pub async fn write(&mut self, offset: u64, data: Bytes) -> FsResult<u32> {
        self.check_open()?;
        if offset != self.written {
            return Err(FsError::new(
                libc::EINVAL,
                format!(
                    "{:?}: out-of-order write at {offset}, file is {} bytes: new files are written sequentially",
                    self.key, self.written
                ),
            ));
        }
        let n = data.len();
        self.written += n as u64;
        self.buffered += n;
        self.buf.push(data);
        // A part is at least `part_size` bytes (S3 needs 5 MiB but for the last part).
        if self.buffered >= self.cfg.part_size {
            let part = std::mem::take(&mut self.buf);
            self.buffered = 0;
            if let Err(e) = self.send_part(part).await {
                return Err(self.fail(e).await);
            }
        }
        Ok(n as u32)
    }

    /// Keep a local copy of `part`, which starts at `at`, for a later seek back.
    fn keep_copy(&mut self, at: u64, part: &Payload) {
        if self.spill_lost {
            return;
        }
        let result = (|| {
            if self.spill.is_none() {
                self.spill = Some(self.cache.file()?);
            }
            let spill = self.spill.as_mut().expect("just made");
            spill.grow(at + part.len())?;
            let mut off = at;
            for chunk in part.chunks() {
                spill
                    .file
                    .write_all_at(chunk, off)
                    .map_err(|e| FsError::new(libc::EIO, e.to_string()))?;
                off += chunk.len() as u64;
            }
            Ok::<_, FsError>(())
        })();
        if let Err(e) = result {
            tracing::debug!(key = %self.key, error = %e, "no local copy of this new file: a write that seeks back before its end will be refused");
            self.spill = None;
            self.spill_lost = true;
        }
    }

    async fn send_part(&mut self, payload: Payload) -> FsResult<()> {
        let at = self.sent;
        self.sent += payload.len();
        self.keep_copy(at, &payload);
        // Wait for memory before sending (holding none while waiting, so writers cannot
        // deadlock on the budget): a writer faster than the store slows down instead.
        let held = self.budget.take(payload.len()).await;
        if self.upload.is_none() {
            self.upload = Some(self.store.start_upload(&self.key, &self.opts).await?);
        }
        let upload = self.upload.as_mut().expect("upload started");
        let fut = upload.put_part(payload);
        // The part's memory is given back when its upload ends.
        let held: Held = held;
        self.in_flight.push_back(tokio::spawn(async move {
            let r = fut.await;
            drop(held);
            r
        }));
        while self.in_flight.len() > self.cfg.max_in_flight {
            let oldest = self.in_flight.pop_front().expect("non-empty");
            Self::wait_part(&self.key, oldest).await?;
        }
        Ok(())
    }

    async fn wait_part(key: &str, task: JoinHandle<crate::store::Result<()>>) -> FsResult<()> {
        match task.await {
            Ok(r) => Ok(r?),
            Err(e) => Err(FsError::new(
                libc::EIO,
                format!("{key:?}: upload task: {e}"),
            )),
        }
    }

    async fn fail(&mut self, e: FsError) -> FsError {
        let e = if matches!(
            e.errno,
            libc::EINVAL | libc::EBADF | libc::ESTALE | libc::ENOSPC
        ) {
            e
        } else {
            FsError::new(
                libc::EIO,
                format!("upload of {:?} failed: {}", self.key, e.message),
            )
        };
        for t in self.in_flight.drain(..) {
            t.abort();
        }
        if let Some(mut upload) = self.upload.take()
            && let Err(abort) = upload.abort().await
        {
            tracing::warn!(key = %self.key, error = %abort, "could not abort multipart upload");
        }
        self.buf = Payload::new();
        self.buffered = 0;
        self.spill = None;
        self.state = State::Failed(e.clone());
        e
    }

    /// Complete the upload: the object becomes visible. Idempotent once done.
    pub async fn finish(&mut self) -> FsResult<()> {
        match &self.state {
            State::Done => return Ok(()),
            State::Failed(e) => return Err(e.clone()),
            State::Open => {}
        }
        let result = self.complete().await;
        match result {
            Ok(etag) => {
                self.etag = etag;
                self.state = State::Done;
                self.spill = None;
                Ok(())
            }
            Err(e) => Err(self.fail(e).await),
        }
    }

    async fn complete(&mut self) -> FsResult<Option<String>> {
        let rest = std::mem::take(&mut self.buf);
        self.buffered = 0;
        if self.upload.is_none() {
            return Ok(self.store.put(&self.key, rest, &self.opts).await?.etag);
        }
        if !rest.is_empty() {
            self.send_part(rest).await?;
        }
        while let Some(t) = self.in_flight.pop_front() {
            Self::wait_part(&self.key, t).await?;
        }
        let upload = self.upload.as_mut().expect("upload started");
        let done = upload.complete().await?;
        self.upload = None;
        Ok(done.etag)
    }

    /// Stop streaming and hand over everything written, so the file continues staged; an
    /// upload in progress is aborted (the staged file is uploaded whole later). Fails when
    /// parts were sent and the cache had no room to keep their copy.
    pub async fn hand_over(&mut self) -> FsResult<Written> {
        self.check_open()?;
        if self.upload.is_some() && self.spill.is_none() {
            let e = FsError::new(
                libc::EIO,
                format!(
                    "{:?}: a write went back to offsets already uploaded, and the staging cache had no room to keep them (--max-cache-size); the file will not be stored",
                    self.key
                ),
            );
            return Err(self.fail(e).await);
        }
        for t in self.in_flight.drain(..) {
            t.abort();
        }
        if let Some(mut upload) = self.upload.take()
            && let Err(e) = upload.abort().await
        {
            tracing::warn!(key = %self.key, error = %e, "could not abort multipart upload");
        }
        self.state = State::Done;
        self.buffered = 0;
        Ok(Written {
            copy: self.spill.take(),
            sent: self.sent,
            rest: std::mem::take(&mut self.buf).chunks().to_vec(),
        })
    }

    /// Give up: abort the multipart upload, nothing becomes visible.
    pub async fn abort(&mut self) {
        if matches!(self.state, State::Open) {
            let e = FsError::new(libc::EIO, "aborted");
            self.fail(e).await;
        }
    }
}
