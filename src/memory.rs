//! Gives the heap memory freed after a burst back to the OS.
//!
//! glibc keeps what a burst of connections freed (thousands of streams
//! reconnecting at once after an upstream restart or an upgrade) in its
//! arenas for reuse, so a process that held 10,000 streams keeps that
//! resident size after they are gone. That looks like a leak to an operator
//! watching RSS, and it is memory other processes could use. A background
//! thread looks at the open-connection count every [`PERIOD`] and, once it
//! is at most half of the high-water mark since the last trim (and at least
//! [`MIN_DROP`] connections below it), calls `malloc_trim(0)`, which returns
//! free pages from every arena. Steady load never triggers it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Once};
use std::time::Duration;

/// How often the connection count is looked at.
const PERIOD: Duration = Duration::from_secs(10);
/// A drop smaller than this is not worth a trim.
const MIN_DROP: usize = 256;

/// Whether a trim is due: the count fell to half its peak, by `MIN_DROP` at least.
fn due(peak: usize, now: usize) -> bool {
    now <= peak / 2 && peak - now >= MIN_DROP
}

/// Starts the trimming thread once per process, watching `(open,
/// high_water)`: connections open now, and the most open at once since the
/// thread last reset it. Started from the first connection rather than at
/// startup, so that it runs in the process that serves (after `--daemon`
/// forked).
pub fn start_trimmer((open, high_water): (Arc<AtomicUsize>, Arc<AtomicUsize>)) {
    static STARTED: Once = Once::new();
    STARTED.call_once(|| {
        let spawned = std::thread::Builder::new()
            .name("ssegate-trim".into())
            .spawn(move || loop {
                std::thread::sleep(PERIOD);
                let now = open.load(Ordering::Relaxed);
                let peak = high_water.load(Ordering::Relaxed);
                if due(peak, now) {
                    trim();
                    log::debug!("{peak} connections fell to {now}: freed heap memory returned");
                    high_water.store(now, Ordering::Relaxed);
                }
            });
        if let Err(e) = spawned {
            log::warn!("memory trimming thread not started: {e}");
        }
    });
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim only walks and releases glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_only_after_a_large_drop() {
        assert!(due(10_000, 0));
        assert!(due(10_000, 5_000));
        assert!(!due(10_000, 5_001), "not yet half");
        assert!(!due(200, 0), "too small to matter");
        assert!(!due(0, 0));
        assert!(!due(5_000, 9_000), "growing");
    }
}
