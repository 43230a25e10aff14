//! How a published volume becomes a running FUSE mount: a separate `pail mount` process per
//! mount, started here and waited for until it reports that the mount is live.

pub mod ready;
