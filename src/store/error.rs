//! Store errors: a kind (from the HTTP status or the library's error variant, never from
//! message text) that callers decide on, a message safe to log, and the source kept.

use std::fmt;
use std::sync::Arc;

/// What went wrong, as far as callers need to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// No such object or bucket.
    NotFound,
    /// The credentials were refused (403) or missing (401).
    PermissionDenied,
    /// A condition of the request did not hold: the object changed since it was first
    /// seen (ETag mismatch), or it exists where it must not.
    Precondition,
    /// The object or bucket already exists.
    AlreadyExists,
    /// The key cannot be addressed in this store.
    InvalidKey,
    /// The configuration is wrong (bad URL, missing credentials...).
    Config,
    /// This store cannot do that (part copies on GCS, metadata on a local directory...).
    Unsupported,
    /// The store could not be reached or kept failing (network, 5xx after retries).
    Unavailable,
    /// The store is full (a capped `memory://` bucket).
    Full,
    /// Anything else the store refused.
    Other,
}

/// An error from the object store, with the key it concerned.
#[derive(Debug, Clone)]
pub struct StoreError {
    /// The kind of failure.
    pub kind: StoreErrorKind,
    /// What happened, without secrets and without response bodies.
    pub message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync>>,
}

impl StoreError {
    /// A new error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error, keeping `source` as its cause.
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// Classify an `object_store` error about `key` by its variant.
    pub(crate) fn from_object_store(e: object_store::Error, key: &str) -> Self {
        use object_store::Error as E;
        let kind = match &e {
            E::NotFound { .. } => StoreErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                StoreErrorKind::PermissionDenied
            }
            E::Precondition { .. } | E::NotModified { .. } => StoreErrorKind::Precondition,
            E::AlreadyExists { .. } => StoreErrorKind::AlreadyExists,
            E::InvalidPath { .. } => StoreErrorKind::InvalidKey,
            E::NotSupported { .. } | E::NotImplemented { .. } => StoreErrorKind::Unsupported,
            E::UnknownConfigurationKey { .. } => StoreErrorKind::Config,
            _ => StoreErrorKind::Unavailable,
        };
        let message = format!("{key:?}: {}", one_line(&e.to_string()));
        StoreError::new(kind, message).with_source(e)
    }

    /// What went wrong and what to do, in words safe to show the pod author (no response
    /// body, no address beyond what they gave).
    pub fn category(&self) -> (&'static str, &'static str) {
        match self.kind {
            StoreErrorKind::PermissionDenied => (
                "the endpoint refused the credentials",
                "check the keys in the volume's Secret and the bucket's policy",
            ),
            StoreErrorKind::NotFound => (
                "bucket not found",
                "check bucketName, region and endpointUrl",
            ),
            StoreErrorKind::Unavailable => (
                "endpoint unreachable",
                "check endpointUrl and the node's network; details are in the mount's log",
            ),
            StoreErrorKind::Config | StoreErrorKind::InvalidKey => (
                "configuration error",
                "check the volume's attributes and Secret; details are in the mount's log",
            ),
            _ => ("store error", "details are in the mount's log"),
        }
    }

    /// Whether the error means "no such object".
    pub fn is_not_found(&self) -> bool {
        self.kind == StoreErrorKind::NotFound
    }
}

/// A message on one line, at most `max` characters.
pub fn one_line(s: &str) -> String {
    let joined = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() > 300 {
        let cut: String = joined.chars().take(300).collect();
        format!("{cut}…")
    } else {
        joined
    }
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            StoreErrorKind::NotFound => "not found",
            StoreErrorKind::PermissionDenied => "access denied",
            StoreErrorKind::Precondition => "object changed",
            StoreErrorKind::AlreadyExists => "already exists",
            StoreErrorKind::InvalidKey => "invalid key",
            StoreErrorKind::Config => "configuration error",
            StoreErrorKind::Unsupported => "not supported by this store",
            StoreErrorKind::Unavailable => "store unavailable",
            StoreErrorKind::Full => "store full",
            StoreErrorKind::Other => "store error",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}
