//! The only code that talks to object storage: the [`Bucket`] trait (what the file system
//! and the controller need from a bucket) and its implementations: S3 and S3-compatible
//! stores (own signed-request client over `object_store`'s credentials and signer), GCS,
//! a local directory, and two fakes for tests, an in-memory bucket and a fault injector.
//!
//! Keys are plain strings relative to the bucket root, exactly as stored. A key ending in
//! `/` is a directory marker; the root of the bucket is the empty string.

mod error;
mod faults;
mod gcs;
pub mod identity;
mod local;
mod memory;
mod metered;
pub mod net;
mod objstore;
mod ops;
pub mod retry;
mod s3;
pub mod source;

use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Once};
use std::time::SystemTime;

use bytes::Bytes;
use futures::future::BoxFuture;

pub use error::{StoreError, StoreErrorKind, one_line};

/// The Content-Type of directory markers, as s3fs writes and recognises them (so that s3fs
/// lists pail's directories, and pail s3fs's).
pub const DIRECTORY_CONTENT_TYPE: &str = "application/x-directory";
pub use faults::{Action, Faulty, Rule};
pub use identity::WebIdentity;
pub use memory::{MemoryBucket, Op};
pub use ops::{BucketExt, Listing, valid_name};
pub use s3::S3Bucket;
pub use source::{Auth, Credentials, Provider, Source, StoreOptions};

/// Result of store operations.
pub type Result<T> = std::result::Result<T, StoreError>;

/// User metadata of an object, keys without their `x-amz-meta-` prefix.
pub type Meta = std::collections::BTreeMap<String, String>;

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
    /// User metadata, read by [`Bucket::head`] only (listings do not carry it).
    pub meta: Meta,
    /// Content-Type, read by [`Bucket::head`] only.
    pub content_type: Option<String>,
}

/// One page of a listing.
#[derive(Debug, Default, Clone)]
pub struct Page {
    /// Objects (with a delimiter: directly under the prefix), in key order.
    pub objects: Vec<ObjectInfo>,
    /// With a delimiter: the full keys (ending in `/`) of the prefixes one level down.
    pub prefixes: Vec<String>,
    /// The token of the next page, when there is one.
    pub next: Option<String>,
}

/// How to list.
#[derive(Debug, Default, Clone)]
pub struct ListOptions {
    /// Group keys one level below the prefix (delimiter `/`).
    pub delimiter: bool,
    /// Continue a listing where this token (from [`Page::next`]) left it.
    pub token: Option<String>,
    /// At most this many entries (the store's own page size when `None`).
    pub max_keys: Option<u32>,
}

/// Bytes in the pieces they came in: the body of a write (chunks as they were written),
/// or object data as it arrived from the store; sent on without being joined.
#[derive(Debug, Default, Clone)]
pub struct Payload {
    pieces: Vec<Bytes>,
    /// Their total length.
    len: u64,
}

impl Payload {
    /// An empty body.
    pub fn new() -> Self {
        Payload::default()
    }

    /// Append a chunk.
    pub fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.len += b.len() as u64;
            self.pieces.push(b);
        }
    }

    /// Total length in bytes.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The chunks.
    pub fn chunks(&self) -> &[Bytes] {
        &self.pieces
    }

    /// Bytes `range` (clamped to the length), sharing the pieces: no copy.
    pub fn slice(&self, range: Range<u64>) -> Payload {
        let mut out = Payload::new();
        let mut pos = 0u64;
        for b in &self.pieces {
            let (start, end) = (pos, pos + b.len() as u64);
            pos = end;
            if end <= range.start {
                continue;
            }
            if start >= range.end {
                break;
            }
            let from = range.start.saturating_sub(start) as usize;
            let to = (range.end.min(end) - start) as usize;
            out.push(b.slice(from..to));
        }
        out
    }

    /// Append all pieces of `other`.
    pub fn extend(&mut self, other: Payload) {
        for b in other.pieces {
            self.push(b);
        }
    }

    /// All bytes in one buffer (copies unless there is a single chunk).
    pub fn to_bytes(&self) -> Bytes {
        match self.pieces.as_slice() {
            [] => Bytes::new(),
            [one] => one.clone(),
            many => {
                let mut v = Vec::with_capacity(self.len() as usize);
                for b in many {
                    v.extend_from_slice(b);
                }
                Bytes::from(v)
            }
        }
    }
}

impl From<Bytes> for Payload {
    fn from(b: Bytes) -> Self {
        let mut p = Payload::new();
        p.push(b);
        p
    }
}

impl From<Vec<u8>> for Payload {
    fn from(v: Vec<u8>) -> Self {
        Payload::from(Bytes::from(v))
    }
}

impl From<&'static [u8]> for Payload {
    fn from(v: &'static [u8]) -> Self {
        Payload::from(Bytes::from_static(v))
    }
}

impl FromIterator<Bytes> for Payload {
    fn from_iter<I: IntoIterator<Item = Bytes>>(iter: I) -> Self {
        let mut p = Payload::new();
        for b in iter {
            p.push(b);
        }
        p
    }
}

/// A condition a write must meet, checked by the store atomically with the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Only if no object exists at the key (`If-None-Match: *`).
    IfNoneMatch,
    /// Only if the object's ETag is this one (`If-Match`).
    IfMatch(String),
}

/// Options of a write.
#[derive(Debug, Default, Clone)]
pub struct PutOptions {
    /// User metadata the object carries.
    pub meta: Meta,
    /// Content-Type the object is served with.
    pub content_type: Option<String>,
    /// A condition the write must meet (fails with [`StoreErrorKind::Precondition`]).
    pub condition: Option<Condition>,
}

/// Options of a server-side copy.
#[derive(Debug, Default, Clone)]
pub struct CopyOptions {
    /// Replace the copy's metadata and Content-Type with these (otherwise both are kept).
    pub replace: Option<PutOptions>,
    /// Copy only if the source still has this ETag.
    pub if_match: Option<String>,
}

/// What a completed write reports.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PutResult {
    /// The new object's ETag, when the store says it.
    pub etag: Option<String>,
}

/// What a store can do beyond the basic operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Features {
    /// Objects keep user metadata (modes, symlinks).
    pub metadata: bool,
    /// Multipart uploads can copy parts of existing objects server-side.
    pub part_copy: bool,
    /// Smallest part of a multipart upload (all but the last).
    pub min_part_size: u64,
    /// Writes can be conditional on the current ETag ([`Condition::IfMatch`]).
    pub conditional_writes: bool,
}

/// The future of one part of an [`Upload`]; parts of one upload may run concurrently.
pub type PartFuture = BoxFuture<'static, Result<()>>;

/// A multipart upload owned by the store. Parts are numbered in the order they are
/// started; the object appears only at [`Upload::complete`], after every part's future
/// finished successfully.
#[async_trait::async_trait]
pub trait Upload: Send {
    /// Upload the next part.
    fn put_part(&mut self, data: Payload) -> PartFuture;

    /// The next part is bytes `range` of the existing object `from`, copied by the server;
    /// with `if_match`, only if `from` still has that ETag ([`StoreErrorKind::Unsupported`]
    /// on stores that cannot).
    fn copy_part(&mut self, from: &str, range: Range<u64>, if_match: Option<&str>) -> PartFuture;

    /// Complete the upload: the object appears, whole.
    async fn complete(&mut self) -> Result<PutResult>;

    /// Give up: nothing appears, the parts are freed.
    async fn abort(&mut self) -> Result<()>;
}

/// A bucket: the operations the file system and the controller need.
#[async_trait::async_trait]
pub trait Bucket: Send + Sync + fmt::Debug {
    /// A human-readable name of the bucket, without credentials.
    fn describe(&self) -> &str;

    /// What this store can do.
    fn features(&self) -> Features;

    /// The metadata of the object at `key`, or `None` when there is none.
    async fn head(&self, key: &str) -> Result<Option<ObjectInfo>>;

    /// One page of the keys starting with `prefix`.
    async fn list(&self, prefix: &str, opts: &ListOptions) -> Result<Page>;

    /// Bytes `range` of the object at `key` (exactly that many, or an error). With
    /// `if_match`, fails with [`StoreErrorKind::Precondition`] if the object was replaced.
    async fn get_range(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Bytes>;

    /// [`Bucket::get_range`], the data in the pieces it arrived in (stores that receive it
    /// in pieces skip joining them).
    async fn get_parts(
        &self,
        key: &str,
        range: Range<u64>,
        if_match: Option<&str>,
    ) -> Result<Payload> {
        self.get_range(key, range, if_match)
            .await
            .map(Payload::from)
    }

    /// Write a whole object in one request.
    async fn put(&self, key: &str, data: Payload, opts: &PutOptions) -> Result<PutResult>;

    /// Start a multipart upload to `key`, which carries `opts` once complete.
    async fn start_upload(&self, key: &str, opts: &PutOptions) -> Result<Box<dyn Upload>>;

    /// Server-side copy of `from` to `to` (replacing it), whatever the size; the copy's
    /// ETag when the store says it.
    async fn copy(&self, from: &str, to: &str, opts: &CopyOptions) -> Result<PutResult>;

    /// Delete the object (or, for a key ending in `/`, the directory marker) at `key`.
    /// Deleting what does not exist succeeds.
    async fn delete(&self, key: &str) -> Result<()>;

    /// Create the marker of the directory key `dir` (ending in `/`).
    async fn put_marker(&self, dir: &str) -> Result<()> {
        let opts = PutOptions {
            content_type: Some(DIRECTORY_CONTENT_TYPE.into()),
            ..Default::default()
        };
        self.put(dir, Payload::new(), &opts).await.map(|_| ())
    }

    /// Create the bucket itself (an existing bucket of ours is success).
    async fn create_bucket(&self) -> Result<()> {
        Err(StoreError::new(
            StoreErrorKind::Unsupported,
            format!(
                "{}: creating buckets is supported on S3 only",
                self.describe()
            ),
        ))
    }

    /// Delete the (empty) bucket itself.
    async fn delete_bucket(&self) -> Result<()> {
        Err(StoreError::new(
            StoreErrorKind::Unsupported,
            format!(
                "{}: deleting buckets is supported on S3 only",
                self.describe()
            ),
        ))
    }
}

/// A shared bucket.
pub type SharedBucket = Arc<dyn Bucket>;

static CRYPTO: Once = Once::new();

/// Install the process-wide TLS crypto provider (ring). Idempotent.
pub fn init_crypto() {
    CRYPTO.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Open the bucket a [`Source`] names, with the given options.
pub fn open(source: &Source, opts: &StoreOptions) -> Result<SharedBucket> {
    init_crypto();
    let bucket: SharedBucket = match source.provider {
        Provider::S3 => Arc::new(s3::S3Bucket::open(source, opts)?),
        Provider::Gcs => Arc::new(gcs::GcsBucket::open(source, opts)?),
        Provider::Local => Arc::new(local::LocalBucket::open(source)?),
        Provider::Memory => Arc::new(match opts.memory_capacity {
            Some(n) => MemoryBucket::new().with_capacity(n),
            None => MemoryBucket::new(),
        }),
    };
    Ok(metered::Metered::wrap(bucket))
}

/// Refuse keys a store cannot address: `.`/`..` segments (URLs would resolve them).
pub(crate) fn check_key(key: &str) -> Result<()> {
    if key.split('/').any(|s| s == "." || s == "..") || key.contains('\0') {
        return Err(StoreError::new(
            StoreErrorKind::InvalidKey,
            format!("{key:?}: keys with \".\" or \"..\" segments or NUL cannot be addressed"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    #[test]
    fn a_slice_of_pieces_shares_them_and_holds_exactly_the_range() {
        let p: Payload = [&b"abc"[..], b"", b"defg", b"hi"]
            .into_iter()
            .map(Bytes::from_static)
            .collect();
        assert_eq!(p.len(), 9);
        assert_eq!(p.chunks().len(), 3, "empty pieces are not kept");
        for start in 0..=9u64 {
            for end in start..=11 {
                let s = p.slice(start..end);
                let want = &b"abcdefghi"[start as usize..(end.min(9)) as usize];
                assert_eq!(&s.to_bytes()[..], want, "{start}..{end}");
                assert!(s.chunks().iter().all(|c| !c.is_empty()));
            }
        }
        let mid = p.slice(2..8);
        assert_eq!(mid.chunks().len(), 3);
        assert_eq!(mid.chunks()[1].as_ptr(), p.chunks()[1].as_ptr(), "no copy");
    }
}
