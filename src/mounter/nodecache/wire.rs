//! Messages of the node cache's socket: a length, JSON, and at most one descriptor riding
//! with the first byte (`SCM_RIGHTS`).

use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;

/// Room for one descriptor's control message (`CMSG_SPACE(4)`, 8-byte aligned).
const CONTROL: usize = 24;

/// A message header of one buffer (`iov`) and room for one descriptor (`control`).
fn header(iov: &mut libc::iovec, control: &mut [u64; CONTROL / 8]) -> libc::msghdr {
    // SAFETY: a zeroed msghdr is valid; the caller keeps `iov` and `control` alive while
    // the header is used.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = CONTROL as _;
    msg
}

/// The result of a system call `f`, retried while interrupted.
fn retried(mut f: impl FnMut() -> isize) -> std::io::Result<usize> {
    loop {
        let n = f();
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Send `body`, with `fd` if any.
pub fn send(sock: &UnixStream, body: &[u8], fd: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    if body.len() > super::MAX_MESSAGE {
        return Err(std::io::Error::other("message too large"));
    }
    let mut head = (body.len() as u32).to_le_bytes();
    let mut iov = libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: head.len(),
    };
    let mut control = [0u64; CONTROL / 8];
    let mut msg = header(&mut iov, &mut control);
    if let Some(fd) = fd {
        // SAFETY: CMSG_* only compute sizes and offsets within `control`.
        unsafe {
            msg.msg_controllen = libc::CMSG_SPACE(4) as _;
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(4) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd.as_raw_fd());
        }
    } else {
        msg.msg_control = std::ptr::null_mut();
        msg.msg_controllen = 0;
    }
    // SAFETY: msg points at live buffers.
    let sent = retried(|| unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) })?;
    let mut w = sock;
    w.write_all(&head[sent..])?;
    w.write_all(body)
}

/// Receive one message of at most `max` bytes, and the descriptor that came with it.
/// More than one descriptor, or a message past `max`, is an error (the descriptors are
/// closed).
pub fn recv(sock: &UnixStream, max: usize) -> std::io::Result<(Vec<u8>, Option<OwnedFd>)> {
    let mut head = [0u8; 4];
    let mut iov = libc::iovec {
        iov_base: head.as_mut_ptr().cast(),
        iov_len: head.len(),
    };
    let mut control = [0u64; CONTROL / 8];
    let mut msg = header(&mut iov, &mut control);
    // SAFETY: msg points at live buffers.
    let got =
        retried(|| unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    let mut fds = Vec::new();
    // SAFETY: walking the control messages the kernel wrote into `control`.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let n = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                let data = libc::CMSG_DATA(c).cast::<i32>();
                for i in 0..n {
                    fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(data.add(i))));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    if got == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > 1 {
        return Err(std::io::Error::other("more than one descriptor"));
    }
    let mut r = sock;
    r.read_exact(&mut head[got..])?;
    let len = u32::from_le_bytes(head) as usize;
    if len > max {
        return Err(std::io::Error::other(format!(
            "a message of {len} bytes (at most {max})"
        )));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)?;
    Ok((body, fds.pop()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_message_carries_one_descriptor_and_oversized_ones_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let file = tempfile::tempfile().unwrap();
        send(&a, b"hello", Some(file.as_fd())).unwrap();
        let (body, fd) = recv(&b, 100).unwrap();
        assert_eq!(body, b"hello");
        assert!(fd.is_some());
        send(&a, b"plain", None).unwrap();
        let (body, fd) = recv(&b, 100).unwrap();
        assert_eq!((body.as_slice(), fd.is_none()), (&b"plain"[..], true));
        send(&a, &[7u8; 200], None).unwrap();
        assert!(recv(&b, 100).is_err(), "a message past the bound");
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        assert!(recv(&b, 100).is_err(), "the other end closed");
    }
}
