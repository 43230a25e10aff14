//! Data replies written to the FUSE connection from several buffers at once (`writev`):
//! object data goes to the kernel in the pieces the store sent it in, never joined first.
//!
//! fuser's `ReplyData` takes one slice, so a reply of several pieces is written here, on a
//! duplicate of the descriptor the session reads (the same open file, so the same FUSE
//! device and queue of requests), and fuser's reply object is then let go without sending
//! (it would answer the request a second time).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use fuser::ReplyData;

use crate::fs::Payload;

/// Most pieces in one reply: `IOV_MAX` (1024) less the header's. A reply of more pieces is
/// joined into one buffer first.
const MAX_PIECES: usize = 1023;

/// The FUSE connection, for replies written from several buffers.
pub(super) struct Vectored {
    fd: OwnedFd,
}

impl Vectored {
    /// Write replies on (a duplicate of) `fd`, the descriptor the session reads requests from.
    pub fn new(fd: BorrowedFd<'_>) -> io::Result<Self> {
        Ok(Vectored {
            fd: fd.try_clone_to_owned()?,
        })
    }

    /// Answer request `unique` with `data`.
    pub fn data(&self, unique: u64, data: &Payload, reply: ReplyData) {
        let pieces = data.chunks();
        if pieces.len() <= 1 || pieces.len() > MAX_PIECES {
            return reply.data(&data.to_bytes());
        }
        match self.write(unique, pieces) {
            Ok(()) => {
                // Answered above: dropping `reply` would answer again (with EIO). Forgetting it
                // leaves one count of fuser's shared handle on the connection, nothing else.
                std::mem::forget(reply);
            }
            // The request is gone (interrupted, the connection aborted): nothing to answer.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                tracing::debug!(unique, "read answered after its request was interrupted");
                std::mem::forget(reply);
            }
            Err(e) => {
                tracing::debug!(unique, error = %e, "vectored reply refused; replying joined");
                reply.data(&data.to_bytes());
            }
        }
    }

    fn write(&self, unique: u64, pieces: &[bytes::Bytes]) -> io::Result<()> {
        let total = 16 + pieces.iter().map(|p| p.len()).sum::<usize>();
        let len = u32::try_from(total)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "reply too long"))?;
        // struct fuse_out_header { u32 len; i32 error; u64 unique; }, in the host's order.
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&len.to_ne_bytes());
        header[8..16].copy_from_slice(&unique.to_ne_bytes());
        let mut iov = Vec::with_capacity(pieces.len() + 1);
        iov.push(libc::iovec {
            iov_base: header.as_mut_ptr().cast(),
            iov_len: header.len(),
        });
        for p in pieces {
            iov.push(libc::iovec {
                iov_base: p.as_ptr() as *mut libc::c_void,
                iov_len: p.len(),
            });
        }
        loop {
            // SAFETY: every iovec points into `header` or a piece of `pieces`, all alive and
            // unchanged for the call; the kernel only reads them.
            let n = unsafe { libc::writev(self.fd.as_raw_fd(), iov.as_ptr(), iov.len() as i32) };
            if n >= 0 {
                // A write to the FUSE device takes the whole message or fails.
                return if n as usize == total {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "short reply: {n} of {total} bytes"
                    )))
                };
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn a_reply_of_several_pieces_is_one_message_with_the_fuse_header() {
        let (a, b) = UnixDatagram::pair().unwrap();
        let fd = OwnedFd::from(a);
        let v = Vectored::new(std::os::fd::AsFd::as_fd(&fd)).unwrap();
        let data: Payload = [
            bytes::Bytes::from_static(b"hello, "),
            bytes::Bytes::from_static(b"pieces"),
            bytes::Bytes::from_static(b"!"),
        ]
        .into_iter()
        .collect();
        v.write(0x1234_5678_9abc, data.chunks()).unwrap();
        let mut buf = [0u8; 64];
        let n = b.recv(&mut buf).unwrap();
        assert_eq!(n, 16 + 14);
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 30);
        assert_eq!(i32::from_ne_bytes(buf[4..8].try_into().unwrap()), 0);
        assert_eq!(
            u64::from_ne_bytes(buf[8..16].try_into().unwrap()),
            0x1234_5678_9abc
        );
        assert_eq!(&buf[16..n], b"hello, pieces!");
        // Nothing else was sent.
        b.set_nonblocking(true).unwrap();
        assert!(b.recv(&mut buf).is_err());
    }
}
