//! An in-memory bucket that behaves as S3 does where the file system can tell: markers are
//! `dir/` objects, listings page and group by `/`, multipart uploads copy parts of existing
//! objects, writes and copies honour their conditions, every object has an ETag. It counts
//! every operation and the bytes sent to it, so tests can assert what a file operation
//! cost. Used by `memory://` mounts and the file-system unit tests.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use bytes::Bytes;

use super::{
    Bucket, Condition, CopyOptions, Features, ListOptions, Meta, ObjectInfo, Page, PartFuture,
    Payload, PutOptions, PutResult, Result, StoreError, StoreErrorKind, Upload,
};

/// Store operations, for counters and fault rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// HEAD of an object.
    Head,
    /// One page of a listing.
    List,
    /// Ranged GET.
    Get,
    /// Single-request write (markers included).
    Put,
    /// Start of a multipart upload.
    StartUpload,
    /// Part of a multipart upload sent as data.
    PutPart,
    /// Part of a multipart upload copied from an existing object.
    CopyPart,
    /// Completion of a multipart upload.
    Complete,
    /// Abort of a multipart upload.
    Abort,
    /// Server-side copy of an object.
    Copy,
    /// Delete of an object or marker.
    Delete,
    /// Creation or deletion of the bucket.
    Bucket,
}

const OPS: usize = 12;

fn index(op: Op) -> usize {
    op as usize
}

#[derive(Debug, Clone)]
struct Object {
    data: Bytes,
    meta: Meta,
    content_type: Option<String>,
    etag: String,
    mtime: SystemTime,
}

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<String, Object>,
    next_etag: u64,
    /// Bytes of object data held.
    bytes: u64,
}

impl State {
    fn etag(&mut self) -> String {
        self.next_etag += 1;
        format!("\"m{:08x}\"", self.next_etag)
    }

    fn check(&self, key: &str, condition: Option<&Condition>) -> Result<()> {
        let current = self.objects.get(key).map(|o| o.etag.as_str());
        let ok = match condition {
            None => true,
            Some(Condition::IfNoneMatch) => current.is_none(),
            Some(Condition::IfMatch(e)) => current == Some(e.as_str()),
        };
        if ok {
            Ok(())
        } else {
            Err(StoreError::new(
                StoreErrorKind::Precondition,
                format!("{key:?}: the condition of the write did not hold"),
            ))
        }
    }

    fn insert(
        &mut self,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
        capacity: u64,
    ) -> Result<PutResult> {
        self.check(key, opts.condition.as_ref())?;
        let replaced = self.objects.get(key).map_or(0, |o| o.data.len() as u64);
        let held = self.bytes - replaced;
        if held + data.len() as u64 > capacity {
            return Err(StoreError::new(
                StoreErrorKind::Full,
                format!("{key:?}: the memory bucket holds at most {capacity} bytes"),
            ));
        }
        let etag = self.etag();
        self.bytes = held + data.len() as u64;
        self.objects.insert(
            key.to_string(),
            Object {
                data,
                meta: opts.meta.clone(),
                content_type: opts.content_type.clone(),
                etag: etag.clone(),
                mtime: SystemTime::now(),
            },
        );
        Ok(PutResult { etag: Some(etag) })
    }
}

/// The in-memory bucket.
#[derive(Debug)]
pub struct MemoryBucket {
    state: Arc<Mutex<State>>,
    counts: Arc<[AtomicU64; OPS]>,
    sent: Arc<AtomicU64>,
    /// Every ranged GET's range, in order.
    ranges: Arc<Mutex<Vec<Range<u64>>>>,
    min_part_size: u64,
    page_size: u32,
    capacity: u64,
}

impl Default for MemoryBucket {
    fn default() -> Self {
        Self::new()
    }
}

fn not_found(key: &str) -> StoreError {
    StoreError::new(StoreErrorKind::NotFound, format!("{key:?}: no such object"))
}

impl MemoryBucket {
    /// An empty bucket, with S3's page size (1,000) and no smallest part.
    pub fn new() -> Self {
        MemoryBucket {
            state: Arc::default(),
            counts: Arc::new(std::array::from_fn(|_| AtomicU64::new(0))),
            sent: Arc::default(),
            ranges: Arc::default(),
            min_part_size: 0,
            page_size: 1000,
            capacity: u64::MAX,
        }
    }

    /// Hold at most `bytes` of object data (writes past it fail, "store full").
    pub fn with_capacity(mut self, bytes: u64) -> Self {
        self.capacity = bytes;
        self
    }

    /// Refuse multipart uploads whose parts but the last are smaller than `n` (S3: 5 MiB).
    pub fn with_min_part_size(mut self, n: u64) -> Self {
        self.min_part_size = n;
        self
    }

    /// List at most `n` entries per page.
    pub fn with_page_size(mut self, n: u32) -> Self {
        self.page_size = n.max(1);
        self
    }

    /// How many times `op` ran.
    pub fn count(&self, op: Op) -> u64 {
        self.counts[index(op)].load(Ordering::Relaxed)
    }

    /// Bytes of data sent to the bucket (single writes and uploaded parts; not copies).
    pub fn bytes_sent(&self) -> u64 {
        self.sent.load(Ordering::Relaxed)
    }

    /// The ranges of every ranged GET so far, in the order they were asked for.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reset every counter.
    pub fn reset_counts(&self) {
        for c in self.counts.iter() {
            c.store(0, Ordering::Relaxed);
        }
        self.sent.store(0, Ordering::Relaxed);
    }

    fn tick(&self, op: Op) {
        self.counts[index(op)].fetch_add(1, Ordering::Relaxed);
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The bytes of the object at `key` (for tests).
    pub fn object(&self, key: &str) -> Option<Bytes> {
        self.state().objects.get(key).map(|o| o.data.clone())
    }

    /// Every key, in order (for tests).
    pub fn keys(&self) -> Vec<String> {
        self.state().objects.keys().cloned().collect()
    }
}

fn info(key: &str, o: &Object) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: o.data.len() as u64,
        mtime: o.mtime,
        etag: Some(o.etag.clone()),
        meta: o.meta.clone(),
        content_type: o.content_type.clone(),
    }
}

#[async_trait::async_trait]
impl Bucket for MemoryBucket {
    fn describe(&self) -> &str {
        "memory://"
    }

    fn features(&self) -> Features {
        Features {
            metadata: true,
            part_copy: true,
            min_part_size: self.min_part_size,
            conditional_writes: true,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.tick(Op::Head);
        Ok(self.state().objects.get(key).map(|o| info(key, o)))
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        self.tick(Op::List);
        let max = opts
            .max_keys
            .unwrap_or(self.page_size)
            .clamp(1, self.page_size) as usize;
        let state = self.state();
        let mut page = Page::default();
        let token = opts.token.as_deref();
        let mut last: Option<String> = None;
        for (key, o) in state.objects.range(prefix.to_string()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if let Some(t) = token {
                // Resume after the last entry of the previous page: a key, or a whole
                // common prefix.
                let after_prefix = opts.delimiter && t.len() > prefix.len() && t.ends_with('/');
                if key.as_str() <= t || after_prefix && key.starts_with(t) {
                    continue;
                }
            }
            let rest = &key[prefix.len()..];
            let common = if opts.delimiter {
                rest.find('/').map(|i| format!("{prefix}{}", &rest[..=i]))
            } else {
                None
            };
            if common.is_some() && page.prefixes.last() == common.as_ref() {
                continue;
            }
            if page.objects.len() + page.prefixes.len() == max {
                page.next = last;
                return Ok(page);
            }
            match common {
                Some(p) => {
                    last = Some(p.clone());
                    page.prefixes.push(p);
                }
                None => {
                    last = Some(key.clone());
                    page.objects.push(info(key, o));
                }
            }
        }
        Ok(page)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes> {
        self.tick(Op::Get);
        self.ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(range.clone());
        let state = self.state();
        let o = state.objects.get(key).ok_or_else(|| not_found(key))?;
        if if_match.is_some_and(|e| e != o.etag) {
            return Err(StoreError::new(
                StoreErrorKind::Precondition,
                format!("{key:?}: the object changed"),
            ));
        }
        let len = o.data.len() as u64;
        if range.start > range.end || range.end > len {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!("{key:?}: range {range:?} outside an object of {len} bytes"),
            ));
        }
        Ok(o.data.slice(range.start as usize..range.end as usize))
    }

    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        self.tick(Op::Put);
        self.sent.fetch_add(data.len(), Ordering::Relaxed);
        self.state()
            .insert(key, data.to_bytes(), opts, self.capacity)
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        self.tick(Op::StartUpload);
        Ok(Box::new(MemoryUpload {
            bucket: MemoryBucket {
                state: self.state.clone(),
                counts: self.counts.clone(),
                sent: self.sent.clone(),
                ranges: self.ranges.clone(),
                min_part_size: self.min_part_size,
                page_size: self.page_size,
                capacity: self.capacity,
            },
            key: key.to_string(),
            opts: opts.clone(),
            parts: Arc::default(),
            next: 0,
        }))
    }

    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult> {
        self.tick(Op::Copy);
        let mut state = self.state();
        let src = state
            .objects
            .get(from)
            .cloned()
            .ok_or_else(|| not_found(from))?;
        if opts.if_match.as_ref().is_some_and(|e| *e != src.etag) {
            return Err(StoreError::new(
                StoreErrorKind::Precondition,
                format!("{from:?}: the object changed"),
            ));
        }
        let put = match &opts.replace {
            Some(p) => p.clone(),
            None => PutOptions {
                meta: src.meta.clone(),
                content_type: src.content_type.clone(),
                condition: None,
            },
        };
        state.insert(to, src.data, &put, self.capacity)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.tick(Op::Delete);
        let mut state = self.state();
        if let Some(o) = state.objects.remove(key) {
            state.bytes -= o.data.len() as u64;
        }
        Ok(())
    }

    async fn create_bucket(&self) -> Result<()> {
        self.tick(Op::Bucket);
        Ok(())
    }

    async fn delete_bucket(&self) -> Result<()> {
        self.tick(Op::Bucket);
        if self.state().objects.is_empty() {
            Ok(())
        } else {
            Err(StoreError::new(
                StoreErrorKind::Other,
                "memory://: the bucket is not empty",
            ))
        }
    }
}

struct MemoryUpload {
    bucket: MemoryBucket,
    key: String,
    opts: PutOptions,
    parts: Arc<Mutex<BTreeMap<u32, Bytes>>>,
    next: u32,
}

impl MemoryUpload {
    fn number(&mut self) -> u32 {
        self.next += 1;
        self.next
    }
}

#[async_trait::async_trait]
impl Upload for MemoryUpload {
    fn put_part(&mut self, data: Payload) -> PartFuture {
        let n = self.number();
        self.bucket.tick(Op::PutPart);
        self.bucket.sent.fetch_add(data.len(), Ordering::Relaxed);
        let parts = self.parts.clone();
        Box::pin(async move {
            parts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n, data.to_bytes());
            Ok(())
        })
    }

    fn copy_part(&mut self, from: &str, range: Range<u64>, if_match: Option<&str>) -> PartFuture {
        let n = self.number();
        self.bucket.tick(Op::CopyPart);
        let state = self.bucket.state.clone();
        let parts = self.parts.clone();
        let (from, if_match) = (from.to_string(), if_match.map(str::to_string));
        Box::pin(async move {
            let data = {
                let state = state.lock().unwrap_or_else(|p| p.into_inner());
                let o = state.objects.get(&from).ok_or_else(|| not_found(&from))?;
                if if_match.is_some_and(|e| e != o.etag) {
                    return Err(StoreError::new(
                        StoreErrorKind::Precondition,
                        format!("{from:?}: the object changed"),
                    ));
                }
                if range.end > o.data.len() as u64 || range.start >= range.end {
                    return Err(StoreError::new(
                        StoreErrorKind::Other,
                        format!("{from:?}: bad copy range {range:?}"),
                    ));
                }
                o.data.slice(range.start as usize..range.end as usize)
            };
            parts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(n, data);
            Ok(())
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        self.bucket.tick(Op::Complete);
        let parts = std::mem::take(&mut *self.parts.lock().unwrap_or_else(|p| p.into_inner()));
        if parts.len() as u32 != self.next {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!("{:?}: completed with parts missing", self.key),
            ));
        }
        let count = parts.len();
        let mut data = Vec::new();
        for (i, (_, p)) in parts.into_iter().enumerate() {
            if i + 1 < count && (p.len() as u64) < self.bucket.min_part_size {
                return Err(StoreError::new(
                    StoreErrorKind::Other,
                    format!("{:?}: part {} is smaller than the minimum", self.key, i + 1),
                ));
            }
            data.extend_from_slice(&p);
        }
        let capacity = self.bucket.capacity;
        self.bucket
            .state()
            .insert(&self.key, Bytes::from(data), &self.opts, capacity)
    }

    async fn abort(&mut self) -> Result<()> {
        self.bucket.tick(Op::Abort);
        self.parts.lock().unwrap_or_else(|p| p.into_inner()).clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::BucketExt;

    #[tokio::test]
    async fn pages_resume_after_their_token_and_group_prefixes() {
        let b = MemoryBucket::new().with_page_size(2);
        for k in ["p/a", "p/b/1", "p/b/2", "p/c", "p/d/", "q"] {
            b.put(k, Payload::from(b"1".as_slice()), &PutOptions::default())
                .await
                .unwrap();
        }
        let mut seen = Vec::new();
        let mut opts = ListOptions {
            delimiter: true,
            ..Default::default()
        };
        loop {
            let p = b.list("p/", &opts).await.unwrap();
            assert!(p.objects.len() + p.prefixes.len() <= 2);
            seen.extend(p.objects.into_iter().map(|o| o.key));
            seen.extend(p.prefixes);
            match p.next {
                Some(t) => opts.token = Some(t),
                None => break,
            }
        }
        seen.sort();
        assert_eq!(seen, ["p/a", "p/b/", "p/c", "p/d/"]);
        assert_eq!(b.list_keys("p/", 10).await.unwrap().unwrap().len(), 5);
    }

    #[tokio::test]
    async fn conditions_and_part_copies_behave_as_on_s3() {
        let b = MemoryBucket::new().with_min_part_size(4);
        let first = b
            .put(
                "k",
                Payload::from(b"abcdefgh".as_slice()),
                &PutOptions::default(),
            )
            .await
            .unwrap();
        let create = PutOptions {
            condition: Some(Condition::IfNoneMatch),
            ..Default::default()
        };
        let e = b.put("k", Payload::new(), &create).await.unwrap_err();
        assert_eq!(e.kind, StoreErrorKind::Precondition);
        let mut u = b.start_upload("k", &PutOptions::default()).await.unwrap();
        u.copy_part("k", 0..4, first.etag.as_deref()).await.unwrap();
        u.put_part(Payload::from(b"XY".as_slice())).await.unwrap();
        u.complete().await.unwrap();
        assert_eq!(b.object("k").unwrap(), Bytes::from_static(b"abcdXY"));
        let mut stale = b.start_upload("k", &PutOptions::default()).await.unwrap();
        let e = stale.copy_part("k", 0..4, first.etag.as_deref()).await;
        assert_eq!(e.unwrap_err().kind, StoreErrorKind::Precondition);
        assert_eq!(b.count(Op::CopyPart), 2);
        assert_eq!(b.bytes_sent(), 10);
    }
}
