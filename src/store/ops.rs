//! Operations every bucket gets from the [`Bucket`] primitives: a whole directory level,
//! whether a directory exists, every key below a prefix, deleting a prefix, small whole
//! objects, and the start-up check.

use std::time::Duration;

use bytes::Bytes;

use super::{Bucket, ListOptions, ObjectInfo, Result, StoreError, StoreErrorKind};

/// One directory level of a listing: the objects directly under a prefix and the
/// sub-prefixes (as names, without the trailing `/`).
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Objects directly under the prefix (names relative to the prefix).
    pub files: Vec<(String, ObjectInfo)>,
    /// Sub-directories (names relative to the prefix).
    pub dirs: Vec<String>,
}

/// Whether `name` can be a file name in the mount.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && !name.contains('/')
        && !name.contains('\0')
        && name.len() <= 255
}

/// The name of `key` one level below the directory key `dir`, if it is a valid file name.
fn child_name(dir: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(dir)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    valid_name(rest).then(|| rest.to_string())
}

/// Helpers over any [`Bucket`].
#[async_trait::async_trait]
pub trait BucketExt: Bucket {
    /// One level of the listing below the directory key `dir` ("" for the bucket root),
    /// all pages. Keys that cannot be file names, and `dir`'s own marker, are left out.
    async fn list_dir(&self, dir: &str) -> Result<Listing> {
        Ok(self
            .list_dir_upto(dir, usize::MAX)
            .await?
            .expect("no bound"))
    }

    /// [`BucketExt::list_dir`], given up (`None`) once it passes `max` entries.
    async fn list_dir_upto(&self, dir: &str, max: usize) -> Result<Option<Listing>> {
        let mut listing = Listing::default();
        let mut opts = ListOptions {
            delimiter: true,
            ..Default::default()
        };
        loop {
            let page = self.list(dir, &opts).await?;
            for p in page.prefixes {
                if let Some(name) = child_name(dir, &p) {
                    listing.dirs.push(name);
                }
            }
            for info in page.objects {
                if info.key.ends_with('/') {
                    // A marker `dir/sub/` listed as an object: a directory.
                    if let Some(name) = child_name(dir, &info.key) {
                        listing.dirs.push(name);
                    }
                    continue;
                }
                if let Some(name) = child_name(dir, &info.key) {
                    listing.files.push((name, info));
                }
            }
            if listing.files.len() + listing.dirs.len() > max {
                return Ok(None);
            }
            match page.next {
                Some(t) => opts.token = Some(t),
                None => break,
            }
        }
        listing.dirs.sort();
        listing.dirs.dedup();
        Ok(Some(listing))
    }

    /// Whether anything exists under the directory key `dir` (which ends in `/`): an
    /// object below it or a marker for it.
    async fn dir_exists(&self, dir: &str) -> Result<bool> {
        let page = self
            .list(
                dir,
                &ListOptions {
                    delimiter: true,
                    token: None,
                    max_keys: Some(1),
                },
            )
            .await?;
        Ok(!page.objects.is_empty() || !page.prefixes.is_empty())
    }

    /// Every key below the directory key `prefix` ("" for the bucket), recursively,
    /// markers included (ending in `/`), at most `limit` of them (`None` when there are
    /// more).
    async fn list_keys(&self, prefix: &str, limit: usize) -> Result<Option<Vec<String>>> {
        let mut keys = Vec::new();
        let mut opts = ListOptions::default();
        loop {
            let page = self.list(prefix, &opts).await?;
            for o in page.objects {
                if keys.len() == limit {
                    return Ok(None);
                }
                keys.push(o.key);
            }
            match page.next {
                Some(t) => opts.token = Some(t),
                None => return Ok(Some(keys)),
            }
        }
    }

    /// Delete every object below the directory key `prefix` ("" for the whole bucket),
    /// directory markers included, and `prefix`'s own marker. Returns how many keys were
    /// deleted.
    async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let keys = self
            .list_keys(prefix, usize::MAX)
            .await?
            .unwrap_or_default();
        // Deepest first, so local directories are empty when their marker goes.
        let mut keys = keys;
        keys.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| b.cmp(a)));
        for key in &keys {
            self.delete(key).await?;
        }
        if !prefix.is_empty() && !keys.iter().any(|k| k == prefix) {
            self.delete(prefix).await?;
        }
        Ok(keys.len())
    }

    /// The whole object at `key` (for small records), or `None`.
    async fn get_all(&self, key: &str) -> Result<Option<Bytes>> {
        let Some(info) = self.head(key).await? else {
            return Ok(None);
        };
        if info.size == 0 {
            return Ok(Some(Bytes::new()));
        }
        match self
            .get_range(key, 0..info.size, info.etag.as_deref())
            .await
        {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Check at start-up that the bucket answers and the credentials work for `prefix`.
    async fn check(&self, prefix: &str) -> Result<()> {
        let opts = ListOptions {
            delimiter: true,
            token: None,
            max_keys: Some(1),
        };
        // Said within seconds, while the retries (which outlast a store restarting) go on.
        let list = self.list(prefix, &opts);
        tokio::pin!(list);
        let first = tokio::time::timeout(Duration::from_secs(5), &mut list).await;
        let answer = match first {
            Ok(r) => Ok(r),
            Err(_) => {
                tracing::warn!(
                    store = %self.describe(),
                    "the store has not answered in 5 s (endpoint down, unreachable or refusing \
                     connections?); retrying for up to a minute"
                );
                tokio::time::timeout(Duration::from_secs(55), list).await
            }
        };
        answer.map_err(|_| {
            StoreError::new(
                StoreErrorKind::Unavailable,
                format!("{}: the store did not answer within 60 s", self.describe()),
            )
        })??;
        Ok(())
    }
}

impl<B: Bucket + ?Sized> BucketExt for B {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryBucket, Payload, PutOptions};

    #[tokio::test]
    async fn listings_group_directories_and_hide_odd_names() {
        let b = MemoryBucket::new();
        for k in ["d/a", "d/sub/x", "d/m/", "d//empty", "d/../up", "d/"] {
            b.put(k, Payload::from(b"x".as_slice()), &PutOptions::default())
                .await
                .unwrap();
        }
        let l = b.list_dir("d/").await.unwrap();
        let files: Vec<_> = l.files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(files, ["a"]);
        assert_eq!(l.dirs, ["m", "sub"]);
        assert!(b.dir_exists("d/m/").await.unwrap());
        assert!(!b.dir_exists("d/none/").await.unwrap());
        let keys = b.list_keys("d/", 100).await.unwrap().unwrap();
        assert_eq!(keys.len(), 6);
        assert_eq!(b.list_keys("d/", 2).await.unwrap(), None);
        assert_eq!(b.delete_prefix("d/").await.unwrap(), 6);
        assert!(b.list_keys("", 10).await.unwrap().unwrap().is_empty());
    }
}
