//! The system-call filter of mount processes started by the CSI driver: the calls a mount
//! that already holds its FUSE descriptor makes (measured with `strace -f` over reads,
//! writes, staged edits, renames, listings, xattrs and unmounts), and a few harmless
//! neighbours; anything else fails with ENOSYS (so code with a fallback keeps working)
//! instead of reaching the kernel. Mounting, ptrace, kexec, module loading, namespaces, bpf,
//! keyrings and the like are not on the list.

/// The allowed calls.
fn allowed() -> Vec<libc::c_long> {
    let mut v = vec![
        // Memory and threads.
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_membarrier,
        libc::SYS_set_robust_list,
        libc::SYS_set_tid_address,
        libc::SYS_rseq,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getrandom,
        libc::SYS_prlimit64,
        libc::SYS_prctl,
        libc::SYS_uname,
        libc::SYS_exit,
        libc::SYS_exit_group,
        // Signals and time.
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_tgkill,
        libc::SYS_restart_syscall,
        libc::SYS_clock_gettime,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        // Files: the FUSE descriptor, the staging cache, the log.
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_lseek,
        libc::SYS_openat,
        libc::SYS_close,
        libc::SYS_fcntl,
        libc::SYS_ioctl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_statx,
        libc::SYS_newfstatat,
        libc::SYS_fstat,
        libc::SYS_fstatfs,
        libc::SYS_ftruncate,
        libc::SYS_fallocate,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_getdents64,
        libc::SYS_mkdirat,
        libc::SYS_unlinkat,
        libc::SYS_renameat,
        libc::SYS_renameat2,
        libc::SYS_readlinkat,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_getcwd,
        // Polling and the network.
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_wait,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_eventfd2,
        libc::SYS_ppoll,
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_sendmmsg,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_recvmmsg,
        libc::SYS_shutdown,
        libc::SYS_bind,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_poll,
        libc::SYS_epoll_create,
        libc::SYS_mkdir,
        libc::SYS_unlink,
        libc::SYS_rename,
        libc::SYS_rmdir,
        libc::SYS_readlink,
        libc::SYS_access,
        libc::SYS_dup2,
        libc::SYS_pipe,
        libc::SYS_arch_prctl,
        libc::SYS_getdents,
    ]);
    v
}

#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xC000_00B7;

const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const JSET_K: u16 = 0x45;
/// CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
/// CLONE_NEWNET: threads yes, namespaces no.
const CLONE_NAMESPACES: u32 = 0x7E02_0000;
const RET_K: u16 = 0x06;
const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;

fn op(code: u16, jt: u8, jf: u8, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The program: check the architecture, refuse x32 calls, allow the list and `clone`
/// without namespace flags (`clone3`, whose flags a filter cannot see, gets ENOSYS and the
/// C library falls back to `clone`), ENOSYS for everything else.
fn program() -> Vec<libc::sock_filter> {
    let calls = allowed();
    let n = calls.len();
    assert!(n + 4 < 255, "jump offsets are one byte");
    let mut p = vec![
        op(LD_W_ABS, 0, 0, 4),
        op(JEQ_K, 1, 0, ARCH),
        op(RET_K, 0, 0, RET_KILL),
        op(LD_W_ABS, 0, 0, 0),
        // x32 system calls (bit 30) on x86_64: not ours.
        op(JGE_K, (n + 3) as u8, 0, 0x4000_0000),
    ];
    for (i, call) in calls.iter().enumerate() {
        p.push(op(JEQ_K, (n + 3 - i) as u8, 0, *call as u32));
    }
    p.extend([
        op(JEQ_K, 0, 2, libc::SYS_clone as u32),
        // The low word of clone's flags.
        op(LD_W_ABS, 0, 0, 16),
        op(JSET_K, 0, 1, CLONE_NAMESPACES),
        op(RET_K, 0, 0, RET_ERRNO | libc::ENOSYS as u32),
        op(RET_K, 0, 0, RET_ALLOW),
    ]);
    p
}

/// Install the filter on this process (and every thread it starts later).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
pub fn install() -> std::io::Result<()> {
    let filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &prog as *const libc::sock_fprog as libc::c_ulong,
            0,
            0,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// No filter on other architectures (a warning says so).
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
pub fn install() -> std::io::Result<()> {
    tracing::warn!("no system-call filter on this architecture");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_well_formed_and_leaves_out_dangerous_calls() {
        let p = program();
        let calls = allowed();
        let (allow, errno) = (p.len() - 1, p.len() - 2);
        assert_eq!(p[allow].k, RET_ALLOW);
        assert_eq!(p[errno].k, RET_ERRNO | libc::ENOSYS as u32);
        // Every allowed call jumps exactly to the final ALLOW; x32 calls to ENOSYS.
        for (i, ins) in p.iter().enumerate().skip(5).take(calls.len()) {
            assert_eq!(i + 1 + ins.jt as usize, allow);
        }
        assert_eq!(4 + 1 + p[4].jt as usize, errno);
        // clone: namespace flags to ENOSYS, others allowed.
        let jset = p.len() - 3;
        assert_eq!(p[jset].code, JSET_K);
        assert_eq!(jset + 1 + p[jset].jt as usize, errno);
        assert_eq!(jset + 1 + p[jset].jf as usize, allow);
        assert_eq!(p.len() - 5 + 1 + p[p.len() - 5].jf as usize, errno);
        for bad in [
            libc::SYS_mount,
            libc::SYS_umount2,
            libc::SYS_ptrace,
            libc::SYS_execve,
            libc::SYS_setuid,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_kexec_load,
            libc::SYS_keyctl,
            libc::SYS_process_vm_readv,
            libc::SYS_clone3,
        ] {
            assert!(!calls.contains(&bad), "{bad}");
        }
    }
}
