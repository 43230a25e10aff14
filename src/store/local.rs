//! A local directory acting as a bucket: the embedded default, no server needed. Data goes
//! through `object_store`'s local store; listings and markers are the directory tree
//! itself (every directory is a marker, so an emptied directory stays).

use std::ops::Range;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use object_store::local::LocalFileSystem;

use super::objstore::Objects;
use super::{
    Bucket, CopyOptions, Features, ListOptions, ObjectInfo, Page, Payload, PutOptions, PutResult,
    Result, Source, StoreError, StoreErrorKind, Upload, check_key,
};

/// The bucket.
#[derive(Debug)]
pub struct LocalBucket {
    root: PathBuf,
    objects: Objects,
    description: String,
}

fn io_error(e: std::io::Error, key: &str) -> StoreError {
    let kind = match e.kind() {
        std::io::ErrorKind::NotFound => StoreErrorKind::NotFound,
        std::io::ErrorKind::PermissionDenied => StoreErrorKind::PermissionDenied,
        _ => StoreErrorKind::Other,
    };
    StoreError::new(kind, format!("{key:?}: {e}")).with_source(e)
}

/// The ETag `object_store`'s local store gives a file (checked by a test below), so that
/// reads can be pinned to what a listing showed.
fn etag(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{:x}-{mtime:x}-{:x}\"", meta.ino(), meta.len())
}

impl LocalBucket {
    /// The directory `source` names, which must exist.
    pub fn open(source: &Source) -> Result<LocalBucket> {
        let root = PathBuf::from(&source.bucket);
        if !root.is_dir() {
            return Err(StoreError::new(
                StoreErrorKind::NotFound,
                format!("bucket directory {} does not exist", root.display()),
            ));
        }
        let fs = LocalFileSystem::new_with_prefix(&root)
            .map_err(|e| StoreError::new(StoreErrorKind::Config, e.to_string()))?;
        Ok(LocalBucket {
            description: format!("file://{}", root.display()),
            root,
            objects: Objects {
                inner: Arc::new(fs),
                metadata: false,
            },
        })
    }

    fn file(&self, key: &str) -> PathBuf {
        self.root.join(key.trim_end_matches('/'))
    }

    fn entry(&self, key: String, path: &FsPath) -> Option<ObjectInfo> {
        let meta = std::fs::metadata(path).ok()?;
        Some(ObjectInfo {
            key,
            size: meta.len(),
            mtime: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            etag: Some(etag(&meta)),
            meta: Default::default(),
            content_type: None,
        })
    }

    /// Every key below the directory `dir` (a key ending in `/` or ""), recursively:
    /// files, and directories as markers.
    fn walk(&self, dir: &str, out: &mut Vec<ObjectInfo>) {
        let Ok(entries) = std::fs::read_dir(self.file(dir)) else {
            return;
        };
        let mut names: Vec<_> = entries
            .flatten()
            .filter_map(|e| Some((e.file_name().into_string().ok()?, e.file_type().ok()?)))
            .collect();
        names.sort_by(|a, b| a.0.cmp(&b.0));
        for (name, ty) in names {
            if ty.is_dir() {
                let key = format!("{dir}{name}/");
                if let Some(i) = self.entry(key.clone(), &self.file(&key)) {
                    out.push(ObjectInfo { size: 0, ..i });
                }
                self.walk(&key, out);
            } else if ty.is_file() {
                let key = format!("{dir}{name}");
                if let Some(i) = self.entry(key.clone(), &self.file(&key)) {
                    out.push(i);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Bucket for LocalBucket {
    fn describe(&self) -> &str {
        &self.description
    }

    fn features(&self) -> Features {
        Features {
            metadata: false,
            part_copy: false,
            min_part_size: 0,
            conditional_writes: false,
        }
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        if key.ends_with('/') {
            let path = self.file(key);
            return Ok(path
                .is_dir()
                .then(|| self.entry(key.to_string(), &path))
                .flatten()
                .map(|i| ObjectInfo { size: 0, ..i }));
        }
        match self.objects.head(key).await {
            // A directory is not an object.
            Err(e) if e.kind == StoreErrorKind::Unavailable && self.file(key).is_dir() => Ok(None),
            r => r,
        }
    }

    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page> {
        check_key(prefix)?;
        // The directory holding the prefix, and the start of the names in it.
        let (dir, start) = match prefix.rfind('/') {
            Some(i) => (&prefix[..=i], &prefix[i + 1..]),
            None => ("", prefix),
        };
        let mut all = Vec::new();
        if start.is_empty() && !dir.is_empty() && self.file(dir).is_dir() {
            // The directory's own marker, as S3 lists `dir/` under the prefix `dir/`.
            if let Some(i) = self.entry(dir.to_string(), &self.file(dir)) {
                all.push(ObjectInfo { size: 0, ..i });
            }
        }
        self.walk(dir, &mut all);
        let mut page = Page::default();
        for info in all {
            let Some(rest) = info.key.strip_prefix(prefix) else {
                continue;
            };
            if !info.key[dir.len()..].starts_with(start) {
                continue;
            }
            match rest.find('/') {
                Some(i) if opts.delimiter => {
                    let p = format!("{prefix}{}", &rest[..=i]);
                    if page.prefixes.last() != Some(&p) {
                        page.prefixes.push(p);
                    }
                }
                _ => page.objects.push(info),
            }
        }
        if let Some(max) = opts.max_keys {
            page.objects.truncate(max as usize);
            page.prefixes.truncate(max as usize);
        }
        Ok(page)
    }

    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes> {
        self.objects.get_range(key, range, if_match).await
    }

    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult> {
        if key.ends_with('/') {
            self.put_marker(key).await?;
            return Ok(PutResult::default());
        }
        self.objects.put(key, data, opts).await
    }

    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>> {
        self.objects.start_upload(key, opts).await
    }

    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult> {
        if opts.replace.as_ref().is_some_and(|p| !p.meta.is_empty()) {
            return Err(StoreError::new(
                StoreErrorKind::Unsupported,
                "a local directory does not keep object metadata",
            ));
        }
        if let Some(e) = &opts.if_match {
            let current = self.head(from).await?.and_then(|i| i.etag);
            if current.as_ref() != Some(e) {
                return Err(StoreError::new(
                    StoreErrorKind::Precondition,
                    format!("{from:?}: the object changed"),
                ));
            }
        }
        self.objects.copy(from, to).await?;
        Ok(PutResult::default())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if key.ends_with('/') {
            check_key(key)?;
            return match std::fs::remove_dir(self.file(key)) {
                Ok(()) => Ok(()),
                // A directory with children exists through them, as a prefix does.
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        || e.raw_os_error() == Some(libc::ENOTEMPTY) =>
                {
                    Ok(())
                }
                Err(e) => Err(io_error(e, key)),
            };
        }
        self.objects.delete(key).await
    }

    async fn put_marker(&self, dir: &str) -> Result<()> {
        check_key(dir)?;
        std::fs::create_dir_all(self.file(dir)).map_err(|e| io_error(e, dir))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{BucketExt, Provider};

    #[tokio::test]
    async fn listings_show_directories_and_pin_to_the_same_etag_as_reads() {
        let dir = tempfile::tempdir().unwrap();
        let b = LocalBucket::open(&Source {
            provider: Provider::Local,
            bucket: dir.path().display().to_string(),
            prefix: String::new(),
        })
        .unwrap();
        b.put(
            "a/b.txt",
            Payload::from(b"hello".as_slice()),
            &PutOptions::default(),
        )
        .await
        .unwrap();
        b.put_marker("a/empty/").await.unwrap();
        let l = b.list_dir("a/").await.unwrap();
        assert_eq!(l.dirs, ["empty"]);
        let (name, info) = &l.files[0];
        assert_eq!(name, "b.txt");
        let head = b.head("a/b.txt").await.unwrap().unwrap();
        assert_eq!(info.etag, head.etag);
        let data = b
            .get_range("a/b.txt", 1..4, info.etag.as_deref())
            .await
            .unwrap();
        assert_eq!(&data[..], b"ell");
        assert!(b.dir_exists("a/empty/").await.unwrap());
        b.delete("a/empty/").await.unwrap();
        assert!(!b.dir_exists("a/empty/").await.unwrap());
        assert!(b.head("a/").await.unwrap().is_some());
    }
}
