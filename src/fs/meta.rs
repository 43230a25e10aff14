//! File metadata kept in object metadata, in s3fs's convention so that buckets written by
//! s3fs and by pail show the same modes: `mode` (decimal st_mode, file type included),
//! `uid`, `gid`, `mtime`, `atime`, `ctime` (seconds since the epoch), `xattr` (URL-encoded
//! JSON of base64 values). A symbolic link is an object whose body is the target and whose
//! `mode` has S_IFLNK. Also: which names can be files, and the Content-Type of a key.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;

use super::error::{FsError, FsResult};
use super::inode::{Kind, Stat};
use crate::store::{Meta, ObjectInfo};

/// File type bits of st_mode.
pub const S_IFMT: u32 = 0o170000;
/// The file-type bits of FIFOs, sockets and character and block devices.
pub const SPECIAL_TYPES: [u32; 4] = [libc::S_IFIFO, libc::S_IFSOCK, libc::S_IFCHR, libc::S_IFBLK];
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

fn time(meta: &Meta, name: &str) -> Option<SystemTime> {
    let secs: f64 = meta.get(name)?.trim().parse().ok()?;
    (secs.is_finite() && (0.0..1e12).contains(&secs))
        .then(|| UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// The device number of a device node (s3fs's `rdev`), else 0.
pub fn rdev(meta: &Meta) -> u32 {
    meta.get("rdev").and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Modification time recorded for an object, if any.
pub fn mtime(meta: &Meta) -> Option<SystemTime> {
    time(meta, "mtime")
}

/// gcsfuse's symlink convention on GCS: the target in this metadata key, an empty body.
pub const GCSFUSE_SYMLINK: &str = "gcsfuse_symlink_target";

/// The kind and stat of an object as the store describes it.
pub fn stat_of(info: ObjectInfo) -> (Kind, Stat) {
    let kind = match mode(&info.meta) {
        Some(m) if m & S_IFMT == S_IFLNK => Kind::Symlink,
        Some(m) if SPECIAL_TYPES.contains(&(m & S_IFMT)) => Kind::Special(m & S_IFMT),
        _ if info.meta.contains_key(GCSFUSE_SYMLINK) => Kind::Symlink,
        _ => Kind::File,
    };
    let size = match info.meta.get(GCSFUSE_SYMLINK) {
        Some(t) if kind == Kind::Symlink => t.len() as u64,
        _ => info.size,
    };
    let mtime = mtime(&info.meta).unwrap_or(info.mtime);
    let stat = Stat {
        size,
        mtime,
        atime: time(&info.meta, "atime").unwrap_or(mtime),
        ctime: time(&info.meta, "ctime").unwrap_or(mtime),
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
    set_times(&mut m, mtime, mtime);
    m
}

fn secs(t: SystemTime) -> String {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        .to_string()
}

/// Record `t` as the modification time.
pub fn set_mtime(meta: &mut Meta, t: SystemTime) {
    meta.insert("mtime".into(), secs(t));
}

/// Record the access and change times.
pub fn set_times(meta: &mut Meta, atime: SystemTime, ctime: SystemTime) {
    meta.insert("atime".into(), secs(atime));
    meta.insert("ctime".into(), secs(ctime));
}

/// Check a name given by the kernel: ENAMETOOLONG past 255 bytes, `invalid` for names no
/// file can have (empty, `.`, `..`, with `/` or NUL).
pub fn check_name(name: &str, invalid: i32) -> FsResult<()> {
    if name.len() > 255 {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!("a name of {} bytes (at most 255)", name.len()),
        ));
    }
    if !crate::store::valid_name(name) {
        return Err(FsError::new(invalid, format!("invalid name {name:?}")));
    }
    Ok(())
}

/// The longest key S3 and GCS store, in bytes (UTF-8).
pub const MAX_KEY: usize = 1024;

/// Check the full key (prefix included) a new name would get: ENAMETOOLONG past
/// [`MAX_KEY`], before anything is written, so nothing is accepted that close would drop.
pub fn check_key(key: &str) -> FsResult<()> {
    check_key_len(key.len())
}

/// [`check_key`] for a key of `len` bytes.
pub fn check_key_len(len: usize) -> FsResult<()> {
    if len > MAX_KEY {
        return Err(FsError::new(
            libc::ENAMETOOLONG,
            format!(
                "the key would be {len} bytes, the prefix included (stores keep at most {MAX_KEY})"
            ),
        ));
    }
    Ok(())
}

/// The Content-Type objects named `key` are written with (from its extension).
pub fn content_type(key: &str) -> Option<String> {
    let name = key.rsplit('/').next().unwrap_or(key);
    name.contains('.')
        .then(|| mime_guess::from_path(name).first_raw())
        .flatten()
        .map(str::to_string)
}

/// The metadata key of extended attributes (s3fs's).
const XATTR: &str = "xattr";

/// The extended attributes recorded for an object.
pub fn xattrs(meta: &Meta) -> FsResult<BTreeMap<String, Vec<u8>>> {
    let Some(raw) = meta.get(XATTR) else {
        return Ok(BTreeMap::new());
    };
    let bad = |why: String| FsError::new(libc::EIO, format!("malformed xattr metadata: {why}"));
    let json = percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map_err(|e| bad(e.to_string()))?;
    let map: BTreeMap<String, String> =
        serde_json::from_str(&json).map_err(|e| bad(e.to_string()))?;
    map.into_iter()
        .map(|(k, v)| {
            let value = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|e| bad(e.to_string()))?;
            Ok((k, value))
        })
        .collect()
}

/// Record `xattrs` (none: the key goes).
pub fn set_xattrs(meta: &mut Meta, xattrs: &BTreeMap<String, Vec<u8>>) {
    if xattrs.is_empty() {
        meta.remove(XATTR);
        return;
    }
    let map: BTreeMap<&str, String> = xattrs
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect();
    let json = serde_json::to_string(&map).expect("a map of strings serializes");
    let encoded = percent_encoding::utf8_percent_encode(&json, percent_encoding::NON_ALPHANUMERIC);
    meta.insert(XATTR.into(), encoded.to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xattrs_round_trip_in_s3fs_form() {
        let mut m = Meta::new();
        let x: BTreeMap<String, Vec<u8>> = [
            ("user.a".to_string(), b"1".to_vec()),
            ("user.bin".to_string(), vec![0, 255, b'"']),
        ]
        .into();
        set_xattrs(&mut m, &x);
        assert!(
            m["xattr"].starts_with("%7B%22user%2Ea%22%3A%22MQ%3D%3D%22"),
            "{}",
            m["xattr"]
        );
        assert_eq!(xattrs(&m).unwrap(), x);
        // As s3fs writes it.
        let s3fs: Meta = [(
            "xattr".to_string(),
            "%7B%22user.k%22%3A%22dg%3D%3D%22%7D".to_string(),
        )]
        .into();
        assert_eq!(xattrs(&s3fs).unwrap()["user.k"], b"v");
        set_xattrs(&mut m, &BTreeMap::new());
        assert!(!m.contains_key("xattr"));
    }

    #[test]
    fn names_and_content_types() {
        assert_eq!(
            check_name(&"x".repeat(256), libc::EINVAL)
                .unwrap_err()
                .errno,
            libc::ENAMETOOLONG
        );
        assert!(check_name(&"x".repeat(255), libc::EINVAL).is_ok());
        assert!(check_name("tab\there\r\u{1}", libc::EINVAL).is_ok());
        assert_eq!(
            check_name("..", libc::ENOENT).unwrap_err().errno,
            libc::ENOENT
        );
        assert_eq!(
            content_type("a/b/data.json").as_deref(),
            Some("application/json")
        );
        assert_eq!(
            content_type("x.tar.gz").as_deref(),
            Some("application/gzip")
        );
        assert_eq!(content_type("README"), None);
    }

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
