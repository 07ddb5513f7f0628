//! An L4 balancer for the cluster tests: Debian's HAProxy in `mode tcp`,
//! round robin over the given servers, health-checked every 100 ms, started
//! in the foreground (`-db`) on a free loopback port and killed on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::net::TcpStream;

use super::{free_port, TempDir};

/// The `haproxy` binary: `$HAPROXY`, Debian's path, or `PATH`'s.
pub fn haproxy_bin() -> PathBuf {
    super::system_bin("HAPROXY", "/usr/sbin/haproxy", "haproxy")
}

pub struct Haproxy {
    pub addr: SocketAddr,
    child: Child,
    pub dir: TempDir,
}

/// The config: `mode tcp`, `balance roundrobin`, a connect retried on
/// another server (`option redispatch`) so a client that connects between a
/// server's death and its health check failing is not refused.
fn config(addr: SocketAddr, servers: &[SocketAddr]) -> String {
    let mut s = format!(
        "global\n  maxconn 4096\n\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 5m\n  timeout server 5m\n  \
         retries 3\n  option redispatch 1\n\n\
         frontend fe\n  bind {addr}\n  default_backend be\n\n\
         backend be\n  balance roundrobin\n"
    );
    for (i, a) in servers.iter().enumerate() {
        s.push_str(&format!(
            "  server s{i} {a} check inter 100ms fall 1 rise 2\n"
        ));
    }
    s
}

impl Haproxy {
    /// Starts a balancer in front of `servers` and waits until it accepts.
    pub async fn start(servers: &[SocketAddr]) -> Haproxy {
        for _attempt in 0..5 {
            let dir = TempDir::new("haproxy");
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            let path = dir.0.join("haproxy.cfg");
            std::fs::write(&path, config(addr, servers)).unwrap();
            let log = std::fs::File::create(dir.0.join("haproxy.log")).unwrap();
            let mut child = Command::new(haproxy_bin())
                .arg("-db")
                .arg("-f")
                .arg(&path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .unwrap_or_else(|e| {
                    panic!(
                        "cannot run {}: {e} (./dev setup installs Debian's haproxy)",
                        haproxy_bin().display()
                    )
                });
            let mut up = false;
            for _ in 0..500 {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect(addr).await.is_ok() {
                    up = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            if up {
                return Haproxy { addr, child, dir };
            }
            let _ = child.kill();
            let _ = child.wait();
            eprintln!(
                "haproxy did not start:\n{}",
                std::fs::read_to_string(dir.0.join("haproxy.log")).unwrap_or_default()
            );
        }
        panic!("haproxy did not start");
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
