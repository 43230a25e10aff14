//! Store errors: a kind the file system maps to an errno, and a message safe to log.

use std::fmt;

/// What went wrong, as far as callers need to decide.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreErrorKind {
    /// No such object or bucket.
    NotFound,
    /// The credentials were refused (403) or missing (401).
    PermissionDenied,
    /// The object changed since it was first seen (ETag mismatch).
    Precondition,
    /// The object already exists.
    AlreadyExists,
    /// The key cannot be addressed in this store.
    InvalidKey,
    /// The configuration is wrong (bad URL, missing credentials...).
    Config,
    /// Anything else: network, server errors after retries.
    Other,
}

/// An error from the object store, with the key it concerned.
#[derive(Debug, Clone)]
pub struct StoreError {
    /// The kind of failure.
    pub kind: StoreErrorKind,
    /// What happened, without secrets.
    pub message: String,
}

impl StoreError {
    /// A new error of `kind`.
    pub fn new(kind: StoreErrorKind, message: impl Into<String>) -> Self {
        StoreError {
            kind,
            message: message.into(),
        }
    }

    /// Classify an `object_store` error about `key`.
    pub fn from_object_store(e: object_store::Error, key: &str) -> Self {
        use object_store::Error as E;
        let kind = match &e {
            E::NotFound { .. } => StoreErrorKind::NotFound,
            E::PermissionDenied { .. } | E::Unauthenticated { .. } => {
                StoreErrorKind::PermissionDenied
            }
            E::Precondition { .. } | E::NotModified { .. } => StoreErrorKind::Precondition,
            E::AlreadyExists { .. } => StoreErrorKind::AlreadyExists,
            E::InvalidPath { .. } => StoreErrorKind::InvalidKey,
            E::UnknownConfigurationKey { .. } => StoreErrorKind::Config,
            _ => classify_message(&e.to_string()),
        };
        StoreError {
            kind,
            message: format!("{key:?}: {}", one_line(&e.to_string())),
        }
    }
}

/// Some stores report 403/404 only inside a generic error: recognise the status text.
fn classify_message(msg: &str) -> StoreErrorKind {
    if msg.contains("NoSuchBucket") || msg.contains("404 Not Found") {
        StoreErrorKind::NotFound
    } else if msg.contains("403 Forbidden")
        || msg.contains("AccessDenied")
        || msg.contains("InvalidAccessKeyId")
        || msg.contains("SignatureDoesNotMatch")
        || msg.contains("401 Unauthorized")
    {
        StoreErrorKind::PermissionDenied
    } else {
        StoreErrorKind::Other
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
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
            StoreErrorKind::Other => "store error",
        };
        write!(f, "{what}: {}", self.message)
    }
}

impl std::error::Error for StoreError {}
