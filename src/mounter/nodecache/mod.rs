//! The node's read cache, shared by every mount of the node: the plugin owns its files (in a
//! directory only root can enter) and its index; mount processes, each running as a user of
//! its own, reach it over a unix socket, where the kernel tells who is asking
//! (`SO_PEERCRED`, never `/proc`). A mount asks for a copy of an object version and gets a
//! read-only descriptor; it offers each object it loaded whole and verified, and the plugin
//! copies it in, checking every block against its checksum (and the whole against an
//! MD5 ETag when the store gave one).
//!
//! Who is served what: a copy stored by mounts of the same identity (the same Secret, or
//! the same ServiceAccount, with the same bucket and options) is served as it is; a copy
//! stored by another identity only when the plugin matched its bytes to the store's MD5
//! ETag, and only to a mount that first proves it may read that version: the plugin names a
//! random range of the object and a nonce, and hands the descriptor over only when the
//! mount answers with the digest of the nonce and those bytes, which it can only have
//! fetched from the store with its own credentials (a ranged GET pinned to the ETag). The
//! plugin itself never talks to a mount's store (its endpoint is the volume author's).
//!
//! The plugin, which holds every mount's FUSE connection and CAP_SYS_ADMIN, also registers
//! a mount's local copies as backing files of that connection (FUSE passthrough): a cached
//! file is then read by the kernel from local disk, with no round trip through the mount.

mod client;
mod server;
mod wire;

pub use client::{Client, Copy, Lookup};
pub use server::{NodeCache, Peer};

use serde::{Deserialize, Serialize};

/// What a mount asks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "lowercase")]
pub enum Request {
    /// A copy of an object version.
    Get {
        /// Key in the mount's bucket.
        key: String,
        /// ETag.
        etag: String,
        /// Size.
        size: u64,
        /// The answer to the challenge the last `Get` of this version got.
        #[serde(default)]
        proof: Option<String>,
    },
    /// Keep this copy (the descriptor travels with the request).
    Put {
        /// Key in the mount's bucket.
        key: String,
        /// ETag.
        etag: String,
        /// Size.
        size: u64,
        /// CRC-32C of each 1 MiB block.
        sums: Vec<u32>,
    },
    /// Register the file that travels with the request as a backing file of the mount's
    /// FUSE connection (FUSE passthrough, which needs CAP_SYS_ADMIN the mount lacks).
    Backing,
    /// Close a backing file this connection registered.
    Unback {
        /// Its id.
        id: u32,
    },
}

/// The plugin's answer.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// A copy comes with this answer (get).
    pub hit: bool,
    /// Its block checksums.
    #[serde(default)]
    pub sums: Vec<u32>,
    /// Stored by another identity: prove first (no descriptor comes with this answer).
    #[serde(default)]
    pub challenge: Option<Challenge>,
    /// The plugin read the copy back and every block matched its sum.
    #[serde(default)]
    pub verified: bool,
    /// The backing id registered (backing).
    #[serde(default)]
    pub backing: u32,
}

/// What a mount of another identity must show before it gets a copy: the digest
/// ([`proof`]) of `nonce` and bytes `offset..offset + len` of the object.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Challenge {
    /// First byte asked.
    pub offset: u64,
    /// Bytes asked (at most [`CHALLENGE`]).
    pub len: u64,
    /// Random, one use.
    pub nonce: String,
}

/// Bytes a challenge asks for, at most.
pub const CHALLENGE: u64 = 1024;

/// The answer to a challenge with `nonce` whose bytes are `bytes`: MD5 of both, in hex.
pub fn proof(nonce: &str, bytes: &[u8]) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update((nonce.len() as u64).to_le_bytes());
    h.update(nonce.as_bytes());
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Largest message either side accepts (a request names one key; checksums of a large
/// object are 4 bytes per MiB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// Checksummed unit of a copy (the read cache's block).
pub const BLOCK: u64 = 1 << 20;

/// Who the mount process of `spec`, running as `uid`, is to the node cache: the objects its
/// keys name (store, bucket, prefix) and the identity it reads them as (credentials, role,
/// environment), from the spec the plugin saved, never from the process.
pub fn peer_of(spec: &crate::options::MountSpec, uid: u32) -> Peer {
    use crate::options::Auth;
    let a = &spec.args;
    let s = &a.store;
    let namespace = server::digest(&[
        a.source.as_bytes(),
        s.prefix.as_deref().unwrap_or_default().as_bytes(),
        s.region.as_deref().unwrap_or_default().as_bytes(),
        s.endpoint_url.as_deref().unwrap_or_default().as_bytes(),
        &[s.force_path_style as u8],
    ]);
    let mut auth = spec.auth.clone();
    if let Auth::Token { file } = &mut auth {
        // The token file is the target's; the identity is the role and session it names.
        *file = std::path::PathBuf::new();
    }
    let mut store = s.clone();
    store.ca_bundle = None;
    let group = server::digest(&[
        namespace.as_bytes(),
        &serde_json::to_vec(&auth).unwrap_or_default(),
        &serde_json::to_vec(&store).unwrap_or_default(),
        &serde_json::to_vec(&spec.env).unwrap_or_default(),
    ]);
    Peer {
        namespace,
        group,
        uid,
        target: spec.args.mountpoint.clone(),
    }
}
