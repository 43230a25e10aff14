//! File-system errors: an errno for the kernel and a message for the log.

use std::fmt;

use crate::store::{StoreError, StoreErrorKind};

/// An error of a file-system operation.
#[derive(Debug, Clone)]
pub struct FsError {
    /// The errno returned to the caller.
    pub errno: i32,
    /// Why, for the log.
    pub message: String,
}

/// Result of file-system operations.
pub type FsResult<T> = Result<T, FsError>;

impl FsError {
    /// An error with `errno` and a message.
    pub fn new(errno: i32, message: impl Into<String>) -> Self {
        FsError {
            errno,
            message: message.into(),
        }
    }

    /// ENOENT.
    pub fn not_found(what: impl fmt::Display) -> Self {
        Self::new(libc::ENOENT, format!("{what}: no such file or directory"))
    }

    /// EROFS: the mount is read-only.
    pub fn read_only() -> Self {
        Self::new(libc::EROFS, "the mount is read-only")
    }

    /// Whether the error is expected in normal use (not worth a warning in the log).
    pub fn is_expected(&self) -> bool {
        matches!(
            self.errno,
            libc::ENOENT
                | libc::EEXIST
                | libc::ENOTEMPTY
                | libc::EROFS
                | libc::ENOTDIR
                | libc::EISDIR
        )
    }
}

impl From<StoreError> for FsError {
    fn from(e: StoreError) -> Self {
        let errno = match e.kind {
            StoreErrorKind::NotFound => libc::ENOENT,
            StoreErrorKind::PermissionDenied => libc::EACCES,
            StoreErrorKind::AlreadyExists => libc::EEXIST,
            StoreErrorKind::InvalidKey => libc::EINVAL,
            StoreErrorKind::Unsupported => libc::ENOTSUP,
            StoreErrorKind::Full => libc::ENOSPC,
            // The object changed under us: as Mountpoint does, say the handle is stale.
            StoreErrorKind::Precondition => libc::ESTALE,
            StoreErrorKind::Config | StoreErrorKind::Unavailable | StoreErrorKind::Other => {
                libc::EIO
            }
        };
        FsError::new(errno, e.to_string())
    }
}

impl fmt::Display for FsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (errno {})",
            self.message,
            std::io::Error::from_raw_os_error(self.errno)
        )
    }
}

impl std::error::Error for FsError {}
