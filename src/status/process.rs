//! The process's own figures for the status page, read from `/proc/self`
//! (Linux); elsewhere they are `None` and the page shows "—".

use super::ProcessView;

/// Resident memory, open descriptors and the pid, now.
pub fn view() -> ProcessView {
    ProcessView {
        pid: std::process::id(),
        rss_bytes: rss_bytes(),
        open_fds: open_fds(),
    }
}

/// `VmRSS` of `/proc/self/status`, which is in kB whatever the page size.
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Entries of `/proc/self/fd`, less the one the listing itself holds open.
fn open_fds() -> Option<u64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    Some(n.saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tssegate\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t4\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_has_memory_and_descriptors() {
        let v = view();
        assert!(v.rss_bytes.unwrap_or(0) > 0);
        assert!(
            v.open_fds.unwrap_or(0) >= 3,
            "stdin, stdout, stderr at least"
        );
    }
}
