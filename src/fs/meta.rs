//! File metadata kept in object metadata, in s3fs's convention so that buckets written by
//! s3fs and by pail show the same modes: `mode` (decimal st_mode, file type included),
//! `uid`, `gid`, `mtime` (seconds since the epoch). A symbolic link is an object whose
//! body is the target and whose `mode` has S_IFLNK.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::inode::{Kind, Stat};
use crate::store::{Meta, ObjectInfo};

/// File type bits of st_mode.
pub const S_IFMT: u32 = 0o170000;
/// Symbolic link.
pub const S_IFLNK: u32 = 0o120000;
/// Regular file.
pub const S_IFREG: u32 = 0o100000;

/// st_mode recorded for an object, if any.
pub fn mode(meta: &Meta) -> Option<u32> {
    meta.get("mode")?.trim().parse().ok()
}

/// Owner recorded for an object, if any.
pub fn uid(meta: &Meta) -> Option<u32> {
    meta.get("uid")?.trim().parse().ok()
}

/// Group recorded for an object, if any.
pub fn gid(meta: &Meta) -> Option<u32> {
    meta.get("gid")?.trim().parse().ok()
}

/// Modification time recorded for an object, if any.
pub fn mtime(meta: &Meta) -> Option<SystemTime> {
    let secs: f64 = meta.get("mtime")?.trim().parse().ok()?;
    (secs.is_finite() && secs >= 0.0).then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// gcsfuse's symlink convention on GCS: the target in this metadata key, an empty body.
pub const GCSFUSE_SYMLINK: &str = "gcsfuse_symlink_target";

/// The kind and stat of an object as the store describes it.
pub fn stat_of(info: ObjectInfo) -> (Kind, Stat) {
    let kind = match mode(&info.meta) {
        Some(m) if m & S_IFMT == S_IFLNK => Kind::Symlink,
        _ if info.meta.contains_key(GCSFUSE_SYMLINK) => Kind::Symlink,
        _ => Kind::File,
    };
    let size = match info.meta.get(GCSFUSE_SYMLINK) {
        Some(t) if kind == Kind::Symlink => t.len() as u64,
        _ => info.size,
    };
    let stat = Stat {
        size,
        mtime: mtime(&info.meta).unwrap_or(info.mtime),
        etag: info.etag,
        meta: info.meta,
    };
    (kind, stat)
}

/// Metadata of a new object.
pub fn new_meta(mode: u32, uid: u32, gid: u32, mtime: SystemTime) -> Meta {
    let mut m = Meta::new();
    m.insert("mode".into(), mode.to_string());
    m.insert("uid".into(), uid.to_string());
    m.insert("gid".into(), gid.to_string());
    set_mtime(&mut m, mtime);
    m
}

/// Record `t` as the modification time.
pub fn set_mtime(meta: &mut Meta, t: SystemTime) {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    meta.insert("mtime".into(), secs.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3fs_metadata_is_read_as_s3fs_writes_it() {
        let info = ObjectInfo {
            key: "l".into(),
            size: 6,
            mtime: UNIX_EPOCH,
            etag: None,
            content_type: None,
            meta: [
                ("mode", "41471"),
                ("uid", "1000"),
                ("gid", "100"),
                ("mtime", "1700000000"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        };
        let (kind, stat) = stat_of(info);
        assert_eq!(kind, Kind::Symlink);
        assert_eq!(mode(&stat.meta), Some(0o120777));
        assert_eq!(stat.mtime, UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        assert_eq!((uid(&stat.meta), gid(&stat.meta)), (Some(1000), Some(100)));
    }
}
