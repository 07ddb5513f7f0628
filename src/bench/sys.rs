//! The process's own resources: the open-files limit (raised at start, so
//! 20,000 sockets fit), CPU seconds and peak memory (so a report shows
//! whether the load generator itself was the bottleneck). Linux `/proc`
//! and `setrlimit` through the `rlimit` crate; no unsafe code here.

use std::fmt;

use rlimit::Resource;

/// File descriptors a process needs besides its sockets: stdio, the runtime's
/// epoll and wakers, a listener, some slack.
pub const SPARE_FDS: u64 = 32;

/// Linux's default `fs.nr_open`, the most a soft limit can be raised to.
const NR_OPEN_DEFAULT: u64 = 1 << 20;

/// The open-files limit after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub soft: u64,
    pub hard: u64,
    /// Descriptors the caller said it needs.
    pub needed: u64,
}

impl NofileLimit {
    pub fn is_enough(&self) -> bool {
        self.soft >= self.needed
    }
}

impl fmt::Display for NofileLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "open-files limit is {} (hard {})", self.soft, self.hard)
    }
}

/// Raises the soft open-files limit to the hard one, and past it to `needed`
/// when the process may (root); reports what is in force afterwards.
pub fn raise_nofile_limit(needed: u64) -> NofileLimit {
    let (mut soft, mut hard) = rlimit::getrlimit(Resource::NOFILE).unwrap_or((0, 0));
    if hard < needed && rlimit::setrlimit(Resource::NOFILE, needed, needed).is_ok() {
        (soft, hard) = (needed, needed);
    }
    // An unlimited hard limit is still capped by the kernel's nr_open.
    for target in [hard, hard.min(NR_OPEN_DEFAULT)] {
        if soft < target && rlimit::setrlimit(Resource::NOFILE, target, hard).is_ok() {
            soft = target;
        }
    }
    NofileLimit { soft, hard, needed }
}

/// Kernel clock ticks per second in `/proc` times (`USER_HZ`): 100 on every
/// Linux architecture that runs tokio.
const USER_HZ: f64 = 100.0;

/// User plus system CPU time of this whole process (all threads, including
/// exited ones), in seconds; `None` without `/proc`.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    cpu_ticks(&stat).map(|ticks| ticks as f64 / USER_HZ)
}

/// `utime + stime` from a `/proc/PID/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so fields are counted after its last `)`.
fn cpu_ticks(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    // Fields 3.. follow; utime and stime are fields 14 and 15.
    let mut fields = after_name.split_whitespace().skip(14 - 3);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Peak resident memory of this process in bytes (`VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_kib(&status, "VmHWM:").map(|kib| kib * 1024)
}

/// The value in kB of a `/proc/PID/status` line starting with `key`.
fn status_kib(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line[key.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_skip_odd_command_names() {
        let stat = "4242 (my (odd) prog) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                    250 17 0 0 20 0 9 0 12345 1000000 500 18446744073709551615";
        assert_eq!(cpu_ticks(stat), Some(267));
        assert_eq!(cpu_ticks("garbage"), None);
        assert_eq!(cpu_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn reads_own_process() {
        assert!(cpu_seconds().is_some_and(|s| s >= 0.0));
        assert!(peak_rss_bytes().is_some_and(|b| b > 0));
        assert_eq!(
            status_kib("Name:\tx\nVmHWM:\t  1234 kB\n", "VmHWM:"),
            Some(1234)
        );
    }

    #[test]
    fn limit_message_names_both_limits() {
        let limit = NofileLimit {
            soft: 1024,
            hard: 4096,
            needed: 20_032,
        };
        assert!(!limit.is_enough());
        assert_eq!(limit.to_string(), "open-files limit is 1024 (hard 4096)");
    }
}
