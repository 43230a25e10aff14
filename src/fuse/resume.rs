//! Taking over a FUSE connection whose INIT a predecessor already answered (the node plugin
//! kept the connection open when the predecessor died or was replaced). fuser only starts a
//! session with an INIT, so the successor's session runs on one end of a socket pair that
//! preserves message boundaries (`SOCK_SEQPACKET`): it is handed the INIT the kernel sent
//! the predecessor (recorded in the journal), its reply is dropped, and from then on two
//! threads copy each request from the kernel to it and each reply back. Then the kernel is
//! asked to send again the requests the predecessor had read but not answered
//! (`FUSE_NOTIFY_RESEND`, Linux ≥ 6.9), so operations in flight at the crash are retried.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::Arc;

use fuser::Session;
use tokio::runtime::Handle;

use super::FuseFs;
use super::session::{Initialized, MountConfig, Mounted, config, run};
use crate::fs::{Fs, InitParams};

/// The largest message on a FUSE connection: a 1 MiB write plus its header, with room.
const MAX_MESSAGE: usize = (1 << 20) + (64 << 10);
const FUSE_INIT: u32 = 26;
const FUSE_NOTIFY_RESEND: i32 = 7;

/// The socket pair a taken-over session runs on: made while the process may still raise
/// socket buffers past the system default (they must hold a whole 1 MiB message).
pub struct ResumePair {
    session: OwnedFd,
    relay: OwnedFd,
}

impl ResumePair {
    /// Make the pair (before dropping privileges).
    pub fn new() -> io::Result<ResumePair> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors socketpair(2) returns.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socketpair returned two new descriptors we now own.
        let (a, b) = unsafe {
            use std::os::fd::FromRawFd;
            (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1]))
        };
        for fd in [&a, &b] {
            for opt in [libc::SO_SNDBUFFORCE, libc::SO_RCVBUFFORCE] {
                let size: libc::c_int = 4 * MAX_MESSAGE as libc::c_int;
                // SAFETY: setting an int socket option on our own socket.
                let r = unsafe {
                    libc::setsockopt(
                        fd.as_raw_fd(),
                        libc::SOL_SOCKET,
                        opt,
                        &size as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    )
                };
                if r != 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::PermissionDenied,
                        format!(
                            "socket buffers for the take-over: {} (needs CAP_NET_ADMIN before privileges are dropped)",
                            io::Error::last_os_error()
                        ),
                    ));
                }
            }
        }
        Ok(ResumePair {
            session: a,
            relay: b,
        })
    }
}

/// The INIT request the kernel sent the predecessor, as bytes fuser reads.
fn init_request(init: &InitParams) -> Vec<u8> {
    let mut arg = Vec::with_capacity(64);
    for v in [
        init.major,
        init.minor,
        init.max_readahead,
        init.flags as u32,
        (init.flags >> 32) as u32,
    ] {
        arg.extend_from_slice(&v.to_le_bytes());
    }
    arg.resize(64, 0);
    let mut msg = Vec::with_capacity(40 + arg.len());
    msg.extend_from_slice(&((40 + arg.len()) as u32).to_le_bytes());
    msg.extend_from_slice(&FUSE_INIT.to_le_bytes());
    msg.extend_from_slice(&u64::MAX.to_le_bytes()); // unique
    msg.extend_from_slice(&0u64.to_le_bytes()); // nodeid
    msg.extend_from_slice(&[0u8; 12]); // uid, gid, pid
    msg.extend_from_slice(&[0u8; 4]); // total_extlen, padding
    msg.extend_from_slice(&arg);
    msg
}

/// Copy whole messages from `from` to `to` until either side ends.
fn relay(mut from: std::fs::File, mut to: std::fs::File, name: &'static str) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => match e.raw_os_error() {
                // An interrupted request vanished; a signal: go on.
                Some(libc::ENOENT | libc::EINTR | libc::EAGAIN) => continue,
                _ => break,
            },
        };
        if let Err(e) = to.write_all(&buf[..n])
            && !matches!(e.raw_os_error(), Some(libc::ENOENT))
        {
            tracing::debug!(relay = name, error = %e, "relay ended");
            break;
        }
    }
}

/// Serve the connection `fd`, already initialized by a predecessor, with `fs`.
pub fn serve_resumed(
    fs: Arc<Fs>,
    rt: Handle,
    fd: OwnedFd,
    pair: ResumePair,
    cfg: &MountConfig,
) -> io::Result<Mounted> {
    let init = fs.resumed_init().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            "the journal holds no INIT of the connection: it cannot be taken over",
        )
    })?;
    let mut relay_end = UnixStream::from(pair.relay);
    relay_end.write_all(&init_request(&init))?;
    let c = config(cfg);
    let acl = c.acl;
    let initialized = Arc::new(Initialized::default());
    let fuse = FuseFs::new(fs, rt, initialized.clone(), Some(pair.session.as_fd())).resumed();
    // Reads the INIT written above and answers it into the pair.
    let session = Session::from_fd(fuse, pair.session, acl, c)?;
    let mut reply = vec![0u8; 4096];
    let n = relay_end.read(&mut reply)?;
    if n < 16 || reply[4..8] != [0, 0, 0, 0] {
        return Err(io::Error::other(
            "the new session refused the recorded INIT",
        ));
    }
    let kernel = std::fs::File::from(fd);
    let relay_file = std::fs::File::from(OwnedFd::from(relay_end));
    let (k_in, r_out) = (kernel.try_clone()?, relay_file.try_clone()?);
    std::thread::Builder::new()
        .name("fuse-relay-in".into())
        .spawn(move || {
            relay(k_in, r_out, "kernel to session");
            // The kernel ended the connection (unmounted): end the process as a session
            // reading /dev/fuse itself would (its end of the pair cannot tell).
            // SAFETY: signalling our own process.
            unsafe { libc::raise(libc::SIGTERM) };
        })?;
    let (r_in, k_out) = (relay_file, kernel.try_clone()?);
    std::thread::Builder::new()
        .name("fuse-relay-out".into())
        .spawn(move || {
            relay(r_in, k_out, "session to kernel");
        })?;
    // Ask for the requests the predecessor read and never answered.
    let mut resend = Vec::with_capacity(16);
    resend.extend_from_slice(&16u32.to_le_bytes());
    resend.extend_from_slice(&FUSE_NOTIFY_RESEND.to_le_bytes());
    resend.extend_from_slice(&0u64.to_le_bytes());
    if let Err(e) = (&kernel).write_all(&resend) {
        tracing::warn!(error = %e, "the kernel did not take FUSE_NOTIFY_RESEND (Linux < 6.9): requests in flight at the crash are lost");
    }
    tracing::info!("took over the FUSE connection");
    // The connection keeps the number it came on for the life of the process: a plugin that
    // takes this process over (an upgrade) duplicates it from there, and a descriptor opened
    // later must never take that number.
    std::mem::forget(kernel);
    run(session, initialized, None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_init_is_replayed_as_the_kernel_sent_it() {
        let msg = init_request(&InitParams {
            major: 7,
            minor: 41,
            flags: (1 << 33) | 3,
            max_readahead: 128 << 10,
        });
        assert_eq!(msg.len(), 104);
        assert_eq!(u32::from_le_bytes(msg[0..4].try_into().unwrap()), 104);
        assert_eq!(u32::from_le_bytes(msg[4..8].try_into().unwrap()), FUSE_INIT);
        assert_eq!(u32::from_le_bytes(msg[44..48].try_into().unwrap()), 41);
        assert_eq!(u32::from_le_bytes(msg[52..56].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(msg[56..60].try_into().unwrap()), 2);
    }
}
