//! Where a benchmark's CPU goes (the machine, the S3 server, the mount), and the server on a
//! core of its own.

use std::time::Duration;

use crate::work::median;

/// One timed run of a row: pail's time and CPU, the direct client's time and CPU.
pub struct Timed {
    pub pail: Duration,
    pub pail_cpu: Cpu,
    pub direct: Duration,
    pub direct_cpu: Cpu,
}

/// CPU time spent so far, in seconds: the whole machine (all cores, busy time from
/// `/proc/stat`), the S3 server (`server_pids`), and one process (the mount).
#[derive(Clone, Copy, Default)]
pub struct Cpu {
    pub machine: f64,
    /// Busy seconds of the first two cores (the server's and the first client core when the
    /// server is apart).
    pub core: [f64; 2],
    pub server: f64,
    pub mount: f64,
}

fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a constant of the running kernel.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).max(1) as f64
}

/// utime + stime of a process, in ticks (fields 14 and 15 of `/proc/PID/stat`, counted
/// after the parenthesised command name, which may itself hold spaces).
fn proc_ticks(pid: u32) -> Option<(String, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (head, rest) = s.rsplit_once(')')?;
    let comm = head.split_once('(')?.1.to_string();
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((
        comm,
        f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?,
    ))
}

impl Cpu {
    pub fn now(mount: Option<u32>) -> Cpu {
        let hz = ticks_per_sec();
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // cpu user nice system idle iowait irq softirq steal ...: busy = all but idle, iowait.
        let busy_of = |name: &str| -> u64 {
            stat.lines()
                .find(|l| l.split_whitespace().next() == Some(name))
                .map(|l| {
                    l.split_whitespace()
                        .skip(1)
                        .take(8)
                        .enumerate()
                        .filter(|(i, _)| *i != 3 && *i != 4)
                        .filter_map(|(_, v)| v.parse::<u64>().ok())
                        .sum()
                })
                .unwrap_or(0)
        };
        let busy = busy_of("cpu");
        let core = [busy_of("cpu0") as f64 / hz, busy_of("cpu1") as f64 / hz];
        let server: u64 = server_pids()
            .into_iter()
            .filter_map(proc_ticks)
            .map(|(_, t)| t)
            .sum();
        let mount = mount.and_then(proc_ticks).map_or(0, |(_, t)| t);
        Cpu {
            machine: busy as f64 / hz,
            core,
            server: server as f64 / hz,
            mount: mount as f64 / hz,
        }
    }

    pub fn since(self, start: Cpu) -> Cpu {
        Cpu {
            machine: self.machine - start.machine,
            core: [self.core[0] - start.core[0], self.core[1] - start.core[1]],
            server: self.server - start.server,
            mount: self.mount - start.mount,
        }
    }
}

/// Every thread of process `pid` (and the threads it starts later) runs only on `cpus`.
fn pin_process(pid: u32, cpus: &[usize]) {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &c in cpus {
        unsafe { libc::CPU_SET(c, &mut set) };
    }
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten();
    for tid in tasks.filter_map(|t| t.file_name().to_str()?.parse::<i32>().ok()) {
        // SAFETY: the set outlives the call; a thread gone meanwhile only makes it fail.
        unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) };
    }
}

/// The cores of the machine (not of this process's affinity, which `ServerApart` narrows).
pub fn online_cpus() -> usize {
    // SAFETY: sysconf only reads a value of the running kernel.
    (unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }).max(1) as usize
}

/// The S3 server: the one `scripts/bench.sh` started (`PAIL_BENCH_SERVER_PID`), else every
/// process named `weed`.
fn server_pids() -> Vec<u32> {
    if let Some(pid) = std::env::var("PAIL_BENCH_SERVER_PID")
        .ok()
        .and_then(|v| v.trim().parse().ok())
    {
        return vec![pid];
    }
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&p| proc_ticks(p).is_some_and(|(comm, _)| comm == "weed"))
        .collect()
}

/// While it lives, the S3 server runs on the first core and this process (the reader, the
/// direct client and every mount it starts) on the others: the store on a machine of its
/// own, as a remote store is, instead of competing with pail for the same cores.
pub struct ServerApart;

impl ServerApart {
    pub fn new() -> Option<ServerApart> {
        let n = online_cpus();
        if n < 2 {
            return None;
        }
        for p in server_pids() {
            pin_process(p, &[0]);
        }
        pin_process(std::process::id(), &(1..n).collect::<Vec<_>>());
        Some(ServerApart)
    }
}

impl Drop for ServerApart {
    fn drop(&mut self) {
        let all: Vec<usize> = (0..online_cpus()).collect();
        for p in server_pids() {
            pin_process(p, &all);
        }
        pin_process(std::process::id(), &all);
    }
}

/// Where the CPU of a streaming row went, per GiB read, and how busy the machine was: when
/// it is near 100 %, the ratio is the ratio of CPU per byte of the two paths.
pub fn cpu_note(name: &str, bytes: u64, runs: &[Timed]) -> String {
    let gib = bytes as f64 / (1u64 << 30) as f64;
    let med = |f: &dyn Fn(&Timed) -> f64| median(runs.iter().map(f).collect());
    let busy = |c: &Cpu, d: &Duration| 100.0 * c.machine / (d.as_secs_f64() * online_cpus() as f64);
    let core = |c: &Cpu, d: &Duration, i: usize| 100.0 * c.core[i] / d.as_secs_f64();
    format!(
        "  {name}:\n    pail {:.2} (server {:.2}, mount {:.2}, reader and kernel {:.2}; \
         machine {:.0}% busy, cores {:.0}% {:.0}%)\n    direct {:.2} (server {:.2}, client and \
         kernel {:.2}; machine {:.0}% busy, cores {:.0}% {:.0}%)",
        med(&|r| r.pail_cpu.machine) / gib,
        med(&|r| r.pail_cpu.server) / gib,
        med(&|r| r.pail_cpu.mount) / gib,
        med(&|r| r.pail_cpu.machine - r.pail_cpu.server - r.pail_cpu.mount) / gib,
        med(&|r| busy(&r.pail_cpu, &r.pail)),
        med(&|r| core(&r.pail_cpu, &r.pail, 0)),
        med(&|r| core(&r.pail_cpu, &r.pail, 1)),
        med(&|r| r.direct_cpu.machine) / gib,
        med(&|r| r.direct_cpu.server) / gib,
        med(&|r| r.direct_cpu.machine - r.direct_cpu.server) / gib,
        med(&|r| busy(&r.direct_cpu, &r.direct)),
        med(&|r| core(&r.direct_cpu, &r.direct, 0)),
        med(&|r| core(&r.direct_cpu, &r.direct, 1)),
    )
}
