//! Directory listings kept across opens for the metadata TTL, so that `ls` of a large
//! directory lists the store once per TTL, not once per open. Any change the mount makes to
//! the store (a write, copy, delete, marker, completed upload: seen by wrapping the store)
//! drops every kept listing; changes by others show once the TTL expires.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::store::{
    Bucket, CopyOptions, Features, ListOptions, Listing, ObjectInfo, Page, PartFuture, Payload,
    PutOptions, PutResult, Result, SharedBucket, Upload,
};

/// Most entries (files and sub-directories) all kept listings hold together.
const MAX_ENTRIES: usize = 1_000_000;

/// The kept listings of a mount.
pub struct ListCache {
    ttl: Duration,
    generation: Arc<AtomicU64>,
    kept: Mutex<HashMap<String, Kept>>,
}

struct Kept {
    taken: Instant,
    generation: u64,
    listing: Arc<Listing>,
}

fn size(l: &Listing) -> usize {
    l.files.len() + l.dirs.len()
}

impl ListCache {
    /// Listings kept for `ttl` (none when zero), and the store wrapper that tells it of the
    /// mount's own changes.
    pub fn new(ttl: Duration, store: SharedBucket) -> (ListCache, SharedBucket) {
        let generation = Arc::new(AtomicU64::new(0));
        let tracked = Arc::new(Tracked {
            inner: store,
            generation: generation.clone(),
        });
        let cache = ListCache {
            ttl,
            generation,
            kept: Mutex::new(HashMap::new()),
        };
        (cache, tracked)
    }

    /// The generation to record with a listing taken from now on.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The listing of `dir` taken less than the TTL ago, with no change by the mount since.
    pub fn get(&self, dir: &str) -> Option<Arc<Listing>> {
        let kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let k = kept.get(dir)?;
        (k.taken.elapsed() < self.ttl && k.generation == self.generation())
            .then(|| k.listing.clone())
    }

    /// Keep `listing` of `dir`, taken at `generation`.
    pub fn put(&self, dir: &str, listing: Listing, generation: u64) -> Arc<Listing> {
        let listing = Arc::new(listing);
        if self.ttl.is_zero() || size(&listing) > MAX_ENTRIES {
            return listing;
        }
        let mut kept = self.kept.lock().unwrap_or_else(|p| p.into_inner());
        let now = self.generation();
        kept.retain(|_, k| k.generation == now && k.taken.elapsed() < self.ttl);
        let mut total: usize = kept.values().map(|k| size(&k.listing)).sum();
        while total + size(&listing) > MAX_ENTRIES {
            let Some(oldest) = kept
                .iter()
                .min_by_key(|(_, k)| k.taken)
                .map(|(d, _)| d.clone())
            else {
                break;
            };
            if let Some(k) = kept.remove(&oldest) {
                total -= size(&k.listing);
            }
        }
        kept.insert(
            dir.to_string(),
            Kept {
                taken: Instant::now(),
                generation,
                listing: listing.clone(),
            },
        );
        listing
    }
}

/// The store as the file system sees it: every change bumps the generation.
#[derive(Debug)]
struct Tracked {
    inner: SharedBucket,
    generation: Arc<AtomicU64>,
}

impl Tracked {
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

struct TrackedUpload {
    inner: Box<dyn Upload>,
    generation: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl Upload for TrackedUpload {
    fn put_part(&mut self, data: Payload) -> PartFuture {
        self.inner.put_part(data)
    }

    fn copy_part(&mut self, from: &str, range: Range<u64>, if_match: Option<&str>) -> PartFuture {
        self.inner.copy_part(from, range, if_match)
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let r = self.inner.complete().await;
        self.generation.fetch_add(1, Ordering::AcqRel);
        r
    }

    async fn abort(&mut self) -> Result<()> {
        self.inner.abort().await
    }
}

#[async_trait::async_trait]
impl Bucket for Tracked {
    fn describe(&self) -> &str {
        self.inner.describe()
    }

    fn features(&self) -> Features {
        self.inner.features()
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        self.inner.head(key).await
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        self.inner.list(prefix, opts).await
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes> {
        self.inner.get_range(key, range, if_match).await
    }

    async fn get_parts(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Payload> {
        self.inner.get_parts(key, range, if_match).await
    }

    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        let r = self.inner.put(key, data, opts).await;
        self.changed();
        r
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        let inner = self.inner.start_upload(key, opts).await?;
        Ok(Box::new(TrackedUpload {
            inner,
            generation: self.generation.clone(),
        }))
    }

    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult> {
        let r = self.inner.copy(from, to, opts).await;
        self.changed();
        r
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let r = self.inner.delete(key).await;
        self.changed();
        r
    }

    async fn put_marker(&self, dir: &str) -> Result<()> {
        let r = self.inner.put_marker(dir).await;
        self.changed();
        r
    }

    async fn create_bucket(&self) -> Result<()> {
        self.inner.create_bucket().await
    }

    async fn delete_bucket(&self) -> Result<()> {
        self.inner.delete_bucket().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BucketExt, MemoryBucket};

    #[tokio::test]
    async fn listings_are_kept_for_the_ttl_and_dropped_by_any_change() {
        let mem: SharedBucket = Arc::new(MemoryBucket::new());
        let (cache, store) = ListCache::new(Duration::from_secs(60), mem.clone());
        store
            .put("d/a", Payload::from(vec![1u8]), &PutOptions::default())
            .await
            .unwrap();
        let g = cache.generation();
        cache.put("d/", store.list_dir("d/").await.unwrap(), g);
        assert_eq!(cache.get("d/").unwrap().files.len(), 1);
        // Changes by others: not seen within the TTL.
        mem.put("d/b", Payload::new(), &PutOptions::default())
            .await
            .unwrap();
        assert_eq!(cache.get("d/").unwrap().files.len(), 1);
        // A change by the mount drops it.
        store.delete("d/a").await.unwrap();
        assert!(cache.get("d/").is_none());
        // A listing taken before a change is not kept as current.
        let g = cache.generation();
        let listing = store.list_dir("d/").await.unwrap();
        let mut up = store
            .start_upload("d/c", &PutOptions::default())
            .await
            .unwrap();
        up.put_part(Payload::from(vec![0u8; 10])).await.unwrap();
        up.complete().await.unwrap();
        cache.put("d/", listing, g);
        assert!(cache.get("d/").is_none());
        // No TTL: nothing kept.
        let (none, _) = ListCache::new(Duration::ZERO, mem);
        none.put("d/", Listing::default(), none.generation());
        assert!(none.get("d/").is_none());
    }
}
