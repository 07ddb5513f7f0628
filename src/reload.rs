//! `ssegate reload -c FILE`: apply an edited configuration the way
//! `nginx -s reload` does, on top of pingora's zero-downtime upgrade.
//!
//! ```text
//!  load FILE ──✗──▶ every error (FILE:LINE:COLUMN), exit 64; nothing touched
//!    │
//!  old pid ◀── server.pid_file, alive? ──✗──▶ exit 1; nothing touched
//!    │
//!  spawn `ssegate run -c FILE --upgrade --daemon`: it loads FILE, builds
//!    │   its server, then waits on server.upgrade_sock for the sockets
//!  wait: the socket is there ──✗ (it exited, or --timeout)──▶ it is killed,
//!    │                                  exit 1; the old process untouched
//!  SIGQUIT to the old pid ──▶ it sends its listening sockets, then drains
//!    │
//!  wait: the spawned process exits 0 (it forked its daemon once it held
//!    │   the sockets), the pid file names a new live pid, every listener
//!    │   accepts ──✗──▶ exit 1, saying how far it got
//!  "reloaded: pid OLD -> NEW (FILE)", exit 0
//! ```
//!
//! The order is pingora's: the old process sends its sockets only when it
//! gets SIGQUIT, and gives up after about five seconds if nobody listens on
//! the upgrade socket (then drains and exits with nothing to take over).
//! So SIGQUIT is sent only once the new process is known to wait there, and
//! every failure before it leaves the old process as it was.
//!
//! The new process is a daemon (pingora's `--daemon`): it outlives
//! `reload` and writes `server.pid_file` itself, which is what a service
//! manager's `PIDFile=` follows. Its standard error is `reload`'s (unless
//! `server.error_log` is set), as with `ssegate run --daemon`.

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::cli::ReloadArgs;
use crate::config::{self, Config};
use crate::pid_file;

/// Exit code for an unusable configuration, as `ssegate check` uses.
const EXIT_CONFIG: u8 = 64;

/// How often the files, processes and ports waited for are looked at.
const POLL: Duration = Duration::from_millis(20);

/// Appended to every failure that happens before SIGQUIT.
const UNTOUCHED: &str = "the running process was not signalled and serves on";

/// The two processes of a reload that worked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reloaded {
    pub old: u32,
    pub new: u32,
}

/// `ssegate reload`: exit 0 with one line on stdout, 64 for an invalid
/// file, 1 for any other failure (explained on stderr).
pub fn main(args: ReloadArgs) -> ExitCode {
    let file = args.config.config;
    let cfg = match config::load(&file) {
        Ok(cfg) => cfg,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "{}: {} error(s); nothing reloaded, the running process serves on",
                file.display(),
                errors.0.len()
            );
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    match reload(&cfg, &file, args.timeout) {
        Ok(Reloaded { old, new }) => {
            // A closed stdout is no reason to call the reload failed.
            let _ = writeln!(
                std::io::stdout().lock(),
                "reloaded: pid {old} -> {new} ({})",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ssegate reload: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the steps of the module's chart for the valid configuration `cfg`
/// read from `file`, within `timeout` in all.
pub fn reload(cfg: &Config, file: &Path, timeout: Duration) -> Result<Reloaded, String> {
    let deadline = Instant::now() + timeout;
    let server = &cfg.server;
    for (key, path) in [
        ("pid_file", &server.pid_file),
        ("upgrade_sock", &server.upgrade_sock),
    ] {
        // The daemon runs in `/`, where a relative path means something else.
        if path.is_relative() {
            return Err(format!(
                "server.{key} is {}, a relative path; reload needs an absolute one. Nothing was changed",
                path.display()
            ));
        }
    }
    let old = running_pid(&server.pid_file)?;
    let sock = &server.upgrade_sock;
    // A socket file left by an earlier attempt would pass for the new
    // process waiting; pingora removes it before binding anyway.
    match std::fs::remove_file(sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot remove the old {} (server.upgrade_sock): {e}; {UNTOUCHED}",
                sock.display()
            ))
        }
    }
    let mut child = spawn(file).map_err(|e| format!("{e}; {UNTOUCHED}"))?;
    if let Err(e) = wait_for_socket(&mut child, sock, deadline, timeout) {
        stop(&mut child, sock);
        return Err(format!("{e}; {UNTOUCHED}"));
    }
    if let Err(e) = kill(nix_pid(old), Signal::SIGQUIT) {
        stop(&mut child, sock);
        return Err(format!(
            "cannot send SIGQUIT to process {old}: {e}; the new process was stopped; {UNTOUCHED}"
        ));
    }
    let new = wait_until_serving(&mut child, cfg, old, deadline, timeout).map_err(|e| {
        format!(
            "{e}. Process {old} got SIGQUIT: it drains its streams and exits, so check \
             that ssegate serves (ssegate run -c FILE starts it again)"
        )
    })?;
    Ok(Reloaded { old, new })
}

/// The pid in `path`, if that process runs.
fn running_pid(path: &Path) -> Result<u32, String> {
    let pid = pid_file::read(path).map_err(|e| {
        format!(
            "cannot read the running process's pid from {} (server.pid_file): {e}; \
             is ssegate running with this configuration? Nothing was changed",
            path.display()
        )
    })?;
    match kill(nix_pid(pid), None) {
        Ok(()) => Ok(pid),
        Err(Errno::ESRCH) => Err(format!(
            "process {pid} (from {}) is not running; start ssegate with `ssegate run`. \
             Nothing was changed",
            path.display()
        )),
        Err(e) => Err(format!(
            "cannot signal process {pid} (from {}): {e}; run reload as the user ssegate \
             runs as. Nothing was changed",
            path.display()
        )),
    }
}

fn nix_pid(pid: u32) -> Pid {
    // pid_file::parse only gives pids that fit.
    Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX))
}

fn alive(pid: u32) -> bool {
    kill(nix_pid(pid), None).is_ok()
}

/// Starts `ssegate run -c FILE --upgrade --daemon` from this very binary.
fn spawn(file: &Path) -> Result<Child, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this binary: {e}"))?;
    // The daemon runs in `/`; its -c must not depend on our folder.
    let file = std::fs::canonicalize(file).map_err(|e| format!("{}: {e}", file.display()))?;
    Command::new(&exe)
        .arg("run")
        .arg("-c")
        .arg(&file)
        .arg("--upgrade")
        .arg("--daemon")
        .stdin(Stdio::null())
        // Nothing goes to stdout; a daemon holding ours would keep a pipe
        // (`ssegate reload | …`) open for its whole life.
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))
}

/// Waits until the new process waits on `sock` for the listening sockets.
fn wait_for_socket(
    child: &mut Child,
    sock: &Path,
    deadline: Instant,
    timeout: Duration,
) -> Result<(), String> {
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!(
                "the new process exited ({status}) before taking the listening sockets \
                 (its errors are above)"
            ));
        }
        if is_waiting_socket(sock) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the new process was not waiting on {} (server.upgrade_sock) after {timeout:?}; \
                 it was stopped",
                sock.display()
            ));
        }
        std::thread::sleep(POLL);
    }
}

/// pingora binds the upgrade socket, makes it `0666`, then listens on it:
/// the mode says the bind is done and the listen a moment away (were the
/// old process to connect in between, it would retry once, a second later).
fn is_waiting_socket(sock: &Path) -> bool {
    std::fs::metadata(sock)
        .is_ok_and(|m| m.file_type().is_socket() && m.permissions().mode() & 0o777 == 0o666)
}

/// Stops a new process that has not taken the sockets, leaving nothing of it.
fn stop(child: &mut Child, sock: &Path) {
    let _ = child.kill();
    let _ = child.wait();
    // Killed, it could not remove its socket file (a stale one was removed
    // before it started, so the file is its own).
    let _ = std::fs::remove_file(sock);
}

/// After SIGQUIT: the pid of the new daemon once it holds the sockets,
/// wrote its pid and every listener (and the admin one) accepts.
fn wait_until_serving(
    child: &mut Child,
    cfg: &Config,
    old: u32,
    deadline: Instant,
    timeout: Duration,
) -> Result<u32, String> {
    let late = |what: &str| format!("{what} after {timeout:?}");
    // The process we started forks its daemon once it holds the sockets and
    // then exits 0; a failed hand-over makes it exit 1 instead.
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            return Err(late("the new process had not taken the listening sockets"));
        }
        std::thread::sleep(POLL);
    };
    if !status.success() {
        return Err(format!(
            "the new process exited ({status}) while taking the listening sockets over \
             (its errors are above)"
        ));
    }
    let pid_path = &cfg.server.pid_file;
    let new = loop {
        // pingora creates the file before it writes the pid: an unreadable
        // or empty file is a moment to wait, not an error.
        if let Ok(pid) = pid_file::read(pid_path) {
            if pid != old && alive(pid) {
                break pid;
            }
        }
        if Instant::now() >= deadline {
            return Err(late(&format!(
                "{} did not name a new running process",
                pid_path.display()
            )));
        }
        std::thread::sleep(POLL);
    };
    let addresses = cfg
        .listeners
        .iter()
        .map(|l| l.address)
        .chain(cfg.admin.iter().map(|a| a.address));
    for address in addresses {
        let target = connectable(address);
        while TcpStream::connect_timeout(&target, Duration::from_millis(200)).is_err() {
            if !alive(new) {
                return Err(format!("the new process {new} exited before serving"));
            }
            if Instant::now() >= deadline {
                return Err(late(&format!("{address} did not accept a connection")));
            }
            std::thread::sleep(POLL);
        }
    }
    Ok(new)
}

/// Where to connect to reach a listener: its address, or the loopback
/// address of its family for a wildcard one.
fn connectable(address: SocketAddr) -> SocketAddr {
    let ip = match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, address.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcard_listeners_are_reached_on_loopback() {
        let cases = [
            ("0.0.0.0:80", "127.0.0.1:80"),
            ("[::]:443", "[::1]:443"),
            ("10.1.2.3:8080", "10.1.2.3:8080"),
        ];
        for (listen, reach) in cases {
            assert_eq!(connectable(listen.parse().unwrap()), reach.parse().unwrap());
        }
    }

    #[test]
    fn a_plain_file_is_not_a_waiting_socket() {
        let path = std::env::temp_dir().join(format!("ssegate-notsock-{}", std::process::id()));
        std::fs::write(&path, "").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(!is_waiting_socket(&path));
        std::fs::remove_file(&path).unwrap();
        assert!(!is_waiting_socket(&path));
    }
}
