//! The only code that talks to object storage: a small key/value API over `object_store`
//! (S3 and S3-compatible stores, GCS, a local directory, memory), plus directory markers.
//!
//! Keys are plain strings relative to the bucket root, exactly as stored. A directory key
//! ends in `/`; the root of the bucket is the empty string.

mod error;
mod gcs;
mod local;
mod raw;
mod s3;
mod s3copy;
pub mod source;

use std::ops::Range;
use std::sync::{Arc, Once};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

pub use error::{StoreError, StoreErrorKind};
pub use source::{Credentials, Provider, Source, StoreOptions};

use raw::Raw;

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// What the store knows about one object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Full key of the object.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// Last modification time reported by the store.
    pub mtime: SystemTime,
    /// Entity tag, when the store reports one.
    pub etag: Option<String>,
    /// User metadata (`x-amz-meta-*`), read by [`Store::head`] only.
    pub meta: Meta,
}

/// User metadata of an object, keys without their `x-amz-meta-` prefix.
pub type Meta = std::collections::BTreeMap<String, String>;

fn attributes_of(meta: &Meta) -> object_store::Attributes {
    meta.iter()
        .map(|(k, v)| {
            (
                object_store::Attribute::Metadata(k.clone().into()),
                object_store::AttributeValue::from(v.clone()),
            )
        })
        .collect()
}

/// One directory level of a listing: the objects directly under a prefix and the
/// sub-prefixes (as names, without the trailing `/`).
#[derive(Debug, Default, Clone)]
pub struct Listing {
    /// Objects directly under the prefix (names relative to the prefix).
    pub files: Vec<(String, ObjectInfo)>,
    /// Sub-directories (names relative to the prefix).
    pub dirs: Vec<String>,
}

/// An in-progress multipart upload.
pub type Upload = Box<dyn object_store::MultipartUpload>;

/// A bucket (or a local directory acting as one).
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    raw: Arc<Raw>,
    /// Objects larger than this are copied in parts (S3's CopyObject stops at 5 GiB).
    copy_threshold: u64,
    /// Whether ranged reads can be pinned to an ETag with `If-Match`.
    if_match: bool,
    description: String,
}

static CRYPTO: Once = Once::new();

/// Install the process-wide TLS crypto provider (ring). Idempotent.
pub fn init_crypto() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl Store {
    /// Open the store a [`Source`] names, with the given options.
    pub fn open(source: &Source, opts: &StoreOptions) -> Result<Store> {
        init_crypto();
        match source.provider {
            Provider::S3 => s3::open(source, opts),
            Provider::Gcs => gcs::open(source, opts),
            Provider::Local => local::open(source),
            Provider::Memory => Ok(Store::memory()),
        }
    }

    /// An empty in-memory bucket (for unit tests of the file-system core).
    pub fn memory() -> Store {
        Store::wrap(Arc::new(object_store::memory::InMemory::new()))
    }

    /// A store over any `object_store` implementation, with directory markers kept in
    /// memory (tests wrap the in-memory store to inject failures).
    pub fn wrap(inner: Arc<dyn ObjectStore>) -> Store {
        let description = format!("{inner}");
        Store::new(inner, Raw::Memory(Default::default()), true, description)
    }

    fn new(inner: Arc<dyn ObjectStore>, raw: Raw, if_match: bool, description: String) -> Store {
        Store {
            inner,
            raw: Arc::new(raw),
            copy_threshold: 5 << 30,
            if_match,
            description,
        }
    }

    /// A human-readable name of the bucket, without credentials.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The metadata of the object at `key`, or `None` when there is none.
    pub async fn head(&self, key: &str) -> Result<Option<ObjectInfo>> {
        let path = path_of(key)?;
        let opts = GetOptions {
            head: true,
            ..Default::default()
        };
        match self.inner.get_opts(&path, opts).await {
            Ok(r) => {
                let mut info = info_of(key, &r.meta);
                for (k, v) in r.attributes.iter() {
                    if let object_store::Attribute::Metadata(name) = k {
                        info.meta.insert(name.to_string(), v.as_ref().to_string());
                    }
                }
                Ok(Some(info))
            }
            Err(e) => absent(e, key),
        }
    }

    /// Whether anything exists under the directory key `dir` (which ends in `/`): an object
    /// below it or a marker for it.
    pub async fn dir_exists(&self, dir: &str) -> Result<bool> {
        if self.raw.exists(dir).await? {
            return Ok(true);
        }
        let path = path_of(dir)?;
        let mut stream = self.inner.list(Some(&path));
        match stream.try_next().await {
            Ok(found) => Ok(found.is_some()),
            Err(e) => Err(StoreError::from_object_store(e, dir)),
        }
    }

    /// One level of the listing below the directory key `dir` ("" for the bucket root).
    /// Keys that cannot be file names are left out.
    pub async fn list(&self, dir: &str) -> Result<Listing> {
        let path = path_of(dir)?;
        let prefix = if path.as_ref().is_empty() {
            None
        } else {
            Some(&path)
        };
        let result = self
            .inner
            .list_with_delimiter(prefix)
            .await
            .map_err(|e| StoreError::from_object_store(e, dir))?;
        let mut listing = Listing::default();
        for p in result.common_prefixes {
            if let Some(name) = child_name(dir, p.as_ref()) {
                listing.dirs.push(name);
            }
        }
        for meta in result.objects {
            let key = meta.location.as_ref().to_string();
            // A marker object `dir/` comes back as the prefix itself: skip it.
            if let Some(name) = child_name(dir, &key) {
                listing.files.push((name, info_of(&key, &meta)));
            }
        }
        for name in self.raw.children(dir).await? {
            if !listing.dirs.contains(&name) {
                listing.dirs.push(name);
            }
        }
        Ok(listing)
    }

    /// Bytes `range` of the object at `key`. With `etag`, the read fails with
    /// [`StoreErrorKind::Precondition`] if the object was replaced.
    pub async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        etag: Option<&str>,
    ) -> Result<Bytes> {
        let path = path_of(key)?;
        let opts = GetOptions {
            range: Some(GetRange::Bounded(range)),
            if_match: etag.filter(|_| self.if_match).map(str::to_string),
            ..Default::default()
        };
        let result = self
            .inner
            .get_opts(&path, opts)
            .await
            .map_err(|e| StoreError::from_object_store(e, key))?;
        result
            .bytes()
            .await
            .map_err(|e| StoreError::from_object_store(e, key))
    }

    /// Write a whole object in one request.
    pub async fn put(&self, key: &str, data: PutPayload) -> Result<()> {
        self.put_meta(key, data, &Meta::new()).await
    }

    /// Whether objects can carry user metadata here (modes, symlinks).
    pub fn supports_metadata(&self) -> bool {
        matches!(&*self.raw, Raw::S3(_) | Raw::Gcs(_) | Raw::Memory(_))
    }

    /// Whether this is Google Cloud Storage (symlinks follow gcsfuse's convention there).
    pub fn is_gcs(&self) -> bool {
        matches!(&*self.raw, Raw::Gcs(_))
    }

    /// Write a whole object with user metadata.
    pub async fn put_meta(&self, key: &str, data: PutPayload, meta: &Meta) -> Result<()> {
        let path = path_of(key)?;
        if let Raw::Gcs(gcs) = &*self.raw {
            if meta.is_empty() {
                return gcs.upload(key, data.into()).await;
            }
            let bytes: bytes::Bytes = data
                .into_iter()
                .flat_map(|b| b.to_vec())
                .collect::<Vec<u8>>()
                .into();
            return gcs.upload_with_meta(key, bytes, meta).await;
        }
        let opts = object_store::PutOptions {
            attributes: if self.supports_metadata() {
                attributes_of(meta)
            } else {
                Default::default()
            },
            ..Default::default()
        };
        self.inner
            .put_opts(&path, data, opts)
            .await
            .map_err(|e| StoreError::from_object_store(e, key))?;
        Ok(())
    }

    /// Start a multipart upload to `key`. The object appears only when it completes.
    pub async fn start_upload(&self, key: &str, meta: &Meta) -> Result<Upload> {
        let path = path_of(key)?;
        let opts = object_store::PutMultipartOptions {
            attributes: if self.supports_metadata() {
                attributes_of(meta)
            } else {
                Default::default()
            },
            ..Default::default()
        };
        self.inner
            .put_multipart_opts(&path, opts)
            .await
            .map_err(|e| StoreError::from_object_store(e, key))
    }

    /// Delete the object at `key`. Deleting a missing object succeeds.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = path_of(key)?;
        if let Raw::Gcs(gcs) = &*self.raw {
            return gcs.delete(key).await;
        }
        match self.inner.delete(&path).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let e = StoreError::from_object_store(e, key);
                if e.kind == StoreErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Create the marker object for the directory key `dir` (ending in `/`).
    pub async fn put_marker(&self, dir: &str) -> Result<()> {
        self.raw.put(dir).await
    }

    /// Remove the marker object for `dir`, if there is one.
    pub async fn delete_marker(&self, dir: &str) -> Result<()> {
        self.raw.delete(dir).await
    }

    /// The whole object at `key` (for small records), or `None`.
    pub async fn get_all(&self, key: &str) -> Result<Option<Bytes>> {
        let path = path_of(key)?;
        match self.inner.get(&path).await {
            Ok(r) => r
                .bytes()
                .await
                .map(Some)
                .map_err(|e| StoreError::from_object_store(e, key)),
            Err(e) => absent(e, key),
        }
    }

    /// Delete every object below the directory key `prefix` ("" for the whole bucket),
    /// directory markers included. Returns how many objects were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let path = path_of(prefix)?;
        let root = if path.as_ref().is_empty() {
            None
        } else {
            Some(path)
        };
        let mut deleted = 0;
        let mut seen = std::collections::HashSet::new();
        // Objects first; a key listed again after its delete is a marker (`dir/`), which
        // `object_store` cannot address: remove it as a marker.
        for _round in 0..3 {
            let keys: Vec<String> = self
                .inner
                .list(root.as_ref())
                .map_ok(|m| m.location.as_ref().to_string())
                .try_collect()
                .await
                .map_err(|e| StoreError::from_object_store(e, prefix))?;
            if keys.is_empty() {
                break;
            }
            for key in keys {
                if seen.insert(key.clone()) {
                    self.delete(&key).await?;
                } else {
                    self.delete_marker(&format!("{key}/")).await?;
                }
                deleted += 1;
            }
        }
        if !prefix.is_empty() {
            self.delete_marker(prefix).await?;
        }
        Ok(deleted)
    }

    /// Copy objects larger than `bytes` in parts (tests use a small threshold).
    pub fn with_copy_threshold(mut self, bytes: u64) -> Store {
        self.copy_threshold = bytes;
        self
    }

    /// Server-side copy of `from` to `to`, whatever its size: objects over the threshold are
    /// copied in parts of 512 MiB (S3), with their user metadata.
    pub async fn copy_any(&self, from: &str, to: &str) -> Result<()> {
        if let Raw::S3(s3) = &*self.raw
            && let Some(info) = self.head(from).await?
            && info.size > self.copy_threshold
        {
            let part = (self.copy_threshold / 2).clamp(5 << 20, 512 << 20);
            return s3
                .multipart_copy(from, to, info.size, part, &info.meta)
                .await;
        }
        self.copy(from, to).await
    }

    /// Whether [`Store::put_keeping_prefix`] works here (S3).
    pub fn supports_part_copy(&self) -> bool {
        matches!(&*self.raw, Raw::S3(_))
    }

    /// Replace `key` (version `etag`, `keep` or more bytes) with its own first `keep` bytes,
    /// copied by the server in parts of `part` bytes (`keep` is a multiple of it, `part` is
    /// 5 MiB at least), followed by bytes `keep..size` that `read(offset, len)` gives, part
    /// by part: an append to a large object uploads only what was appended. If the object
    /// changed since `etag`, the upload fails and nothing changes.
    #[allow(clippy::too_many_arguments)]
    pub async fn put_keeping_prefix(
        &self,
        key: &str,
        etag: &str,
        keep: u64,
        size: u64,
        part: u64,
        meta: &Meta,
        read: &mut (dyn FnMut(u64, usize) -> std::io::Result<Vec<u8>> + Send),
    ) -> Result<()> {
        let Raw::S3(s3) = &*self.raw else {
            return Err(StoreError::new(
                StoreErrorKind::Config,
                format!("{key:?}: server-side part copies need S3"),
            ));
        };
        if part < 5 << 20 || !keep.is_multiple_of(part) || keep > size {
            return Err(StoreError::new(
                StoreErrorKind::Other,
                format!("{key:?}: bad part layout ({keep} of {size} in parts of {part})"),
            ));
        }
        let mut at = 0;
        s3.multipart(key, meta, || {
            if at >= size {
                return Ok(None);
            }
            let end = (at + part).min(size);
            let p = if at < keep {
                s3copy::Part::Copy {
                    from: key.to_string(),
                    range: at..end,
                    if_match: Some(etag.to_string()),
                }
            } else {
                let data = read(at, (end - at) as usize).map_err(|e| {
                    StoreError::new(StoreErrorKind::Other, format!("{key:?}: staged data: {e}"))
                })?;
                s3copy::Part::Data(data)
            };
            at = end;
            Ok(Some(p))
        })
        .await
        .map(|_| ())
    }

    /// Server-side copy of the object `from` to `to` (replacing `to`).
    pub async fn copy(&self, from: &str, to: &str) -> Result<()> {
        let (src, dst) = (path_of(from)?, path_of(to)?);
        self.inner
            .copy(&src, &dst)
            .await
            .map_err(|e| StoreError::from_object_store(e, from))
    }

    /// Every key below the directory key `prefix`, recursively, at most `limit` of them
    /// (`None` when there are more). Marker objects come back without their trailing `/`.
    pub async fn list_keys(&self, prefix: &str, limit: usize) -> Result<Option<Vec<String>>> {
        let path = path_of(prefix)?;
        let root = if path.as_ref().is_empty() {
            None
        } else {
            Some(path)
        };
        let mut stream = self.inner.list(root.as_ref());
        let mut keys = Vec::new();
        while let Some(meta) = stream
            .try_next()
            .await
            .map_err(|e| StoreError::from_object_store(e, prefix))?
        {
            if keys.len() == limit {
                return Ok(None);
            }
            keys.push(meta.location.as_ref().to_string());
        }
        Ok(Some(keys))
    }

    /// Create the bucket (S3 only; an existing bucket of ours is success).
    pub async fn create_bucket(&self) -> Result<()> {
        self.raw.create_bucket().await
    }

    /// Delete the empty bucket (S3 only).
    pub async fn delete_bucket(&self) -> Result<()> {
        self.raw.delete_bucket().await
    }

    /// Check at start-up that the bucket answers and the credentials work for `prefix`.
    pub async fn check(&self, prefix: &str) -> Result<()> {
        let path = path_of(prefix)?;
        let prefix_path = if path.as_ref().is_empty() {
            None
        } else {
            Some(&path)
        };
        let mut stream = self.inner.list(prefix_path);
        tokio::time::timeout(Duration::from_secs(60), stream.try_next())
            .await
            .map_err(|_| StoreError::new(StoreErrorKind::Other, "the store did not answer"))?
            .map_err(|e| StoreError::from_object_store(e, prefix))?;
        Ok(())
    }
}

/// A missing object is `None`; any other error stays one.
fn absent<T>(e: object_store::Error, key: &str) -> Result<Option<T>> {
    let e = StoreError::from_object_store(e, key);
    if e.kind == StoreErrorKind::NotFound {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Parse a key into an `object_store` path. Keys with empty or relative segments cannot
/// be addressed and are refused.
fn path_of(key: &str) -> Result<Path> {
    Path::parse(key).map_err(|e| StoreError::new(StoreErrorKind::InvalidKey, e.to_string()))
}

fn info_of(key: &str, meta: &object_store::ObjectMeta) -> ObjectInfo {
    ObjectInfo {
        key: key.to_string(),
        size: meta.size,
        mtime: SystemTime::from(meta.last_modified),
        etag: meta.e_tag.clone(),
        meta: Meta::new(),
    }
}

/// The name of `key` one level below the directory key `dir`, if it is a valid file name.
fn child_name(dir: &str, key: &str) -> Option<String> {
    let rest = key.strip_prefix(dir)?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    valid_name(rest).then(|| rest.to_string())
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
