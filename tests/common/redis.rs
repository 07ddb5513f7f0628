//! A real `redis-server` for the cluster tests: on a free loopback port,
//! without persistence, stopped and restarted on the same port, frozen
//! (SIGSTOP) and thawed, and read and written through the `redis` crate on
//! a fresh connection per command (so a restart never leaves the test
//! holding a dead connection).
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use redis::Value;

use super::{free_port, within, TempDir};

/// The `redis-server` binary: `$REDIS_SERVER`, Debian's path, or `PATH`'s.
pub fn redis_server_bin() -> PathBuf {
    super::system_bin("REDIS_SERVER", "/usr/bin/redis-server", "redis-server")
}

/// A running `redis-server`, killed on drop.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
    pub dir: TempDir,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers PING.
    pub async fn start() -> RedisServer {
        for _attempt in 0..5 {
            let mut r = RedisServer {
                port: free_port(),
                child: None,
                dir: TempDir::new("redis"),
            };
            if r.spawn().await {
                return r;
            }
        }
        panic!("redis-server did not start");
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Spawns the server on `self.port`; `false` if it exited (a lost port
    /// race) or never answered.
    async fn spawn(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.0.join("redis.log")).unwrap();
        let mut child = Command::new(redis_server_bin())
            .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
            .args(["--port", &self.port.to_string()])
            .args(["--dir", &self.dir.0.display().to_string()])
            .args(["--protected-mode", "no", "--loglevel", "warning"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run {}: {e} (./dev setup installs Debian's redis-server)",
                    redis_server_bin().display()
                )
            });
        for _ in 0..500 {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if self.ping().await {
                self.child = Some(child);
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    /// Whether the server answers PING now.
    pub async fn ping(&self) -> bool {
        let attempt = async {
            let client = redis::Client::open(self.url()).ok()?;
            let mut con = client.get_multiplexed_async_connection().await.ok()?;
            redis::cmd("PING")
                .query_async::<String>(&mut con)
                .await
                .ok()
        };
        matches!(
            tokio::time::timeout(Duration::from_millis(500), attempt).await,
            Ok(Some(ref pong)) if pong == "PONG"
        )
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("redis-server is not running");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} {pid}");
    }

    /// SIGTERM, then waits for the process to exit: the port refuses.
    pub async fn stop(&mut self) {
        self.signal("TERM");
        let mut child = self.child.take().unwrap();
        within("redis-server to exit", async {
            loop {
                if child.try_wait().unwrap().is_some() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
    }

    /// Starts it again on the same port (empty: nothing was saved).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "restart of a running redis-server");
        for _ in 0..50 {
            if self.spawn().await {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("redis-server did not restart on port {}", self.port);
    }

    /// SIGSTOP: connections stay open, commands get no answer.
    pub fn freeze(&self) {
        self.signal("STOP");
    }

    /// SIGCONT after `freeze`.
    pub fn thaw(&self) {
        self.signal("CONT");
    }

    /// One command on a fresh connection, bounded by `WAIT`.
    pub async fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let url = self.url();
        within(&format!("redis {args:?}"), async move {
            let client = redis::Client::open(url).unwrap();
            let mut con = client.get_multiplexed_async_connection().await.unwrap();
            let mut c = redis::cmd(args[0]);
            for a in &args[1..] {
                c.arg(*a);
            }
            c.query_async::<T>(&mut con)
                .await
                .unwrap_or_else(|e| panic!("redis {args:?}: {e}"))
        })
        .await
    }

    pub async fn flushall(&self) {
        let ok: String = self.cmd(&["FLUSHALL"]).await;
        assert_eq!(ok, "OK");
    }

    /// Every key matching `pattern`, sorted.
    pub async fn keys(&self, pattern: &str) -> Vec<String> {
        let mut keys: Vec<String> = self.cmd(&["KEYS", pattern]).await;
        keys.sort();
        keys
    }

    /// `PTTL key`: ms left, -1 without expiry, -2 when the key is gone.
    pub async fn pttl(&self, key: &str) -> i64 {
        self.cmd(&["PTTL", key]).await
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        self.cmd(&["GET", key]).await
    }

    pub async fn hgetall(&self, key: &str) -> BTreeMap<String, Vec<u8>> {
        self.cmd(&["HGETALL", key]).await
    }

    pub async fn key_type(&self, key: &str) -> String {
        self.cmd(&["TYPE", key]).await
    }

    /// Every entry of the Redis Stream `key`: its id and its fields.
    pub async fn xrange(&self, key: &str) -> Vec<(String, BTreeMap<String, Vec<u8>>)> {
        let v: Value = self.cmd(&["XRANGE", key, "-", "+"]).await;
        let Value::Array(entries) = v else {
            panic!("XRANGE {key}: {v:?}");
        };
        entries
            .into_iter()
            .map(|e| {
                let (id, fields): (String, Vec<Vec<u8>>) =
                    redis::from_redis_value(e).expect("an XRANGE entry");
                let mut map = BTreeMap::new();
                for pair in fields.chunks(2) {
                    map.insert(String::from_utf8(pair[0].clone()).unwrap(), pair[1].clone());
                }
                (id, map)
            })
            .collect()
    }

    /// `INFO commandstats` as command name (lower case, `cmdstat_` cut) to calls.
    pub async fn command_calls(&self) -> BTreeMap<String, u64> {
        let text: String = self.cmd(&["INFO", "commandstats"]).await;
        text.lines()
            .filter_map(|l| l.strip_prefix("cmdstat_"))
            .filter_map(|l| {
                let (name, rest) = l.split_once(':')?;
                let calls = rest
                    .split(',')
                    .find_map(|kv| kv.strip_prefix("calls="))?
                    .parse()
                    .ok()?;
                Some((name.to_ascii_lowercase(), calls))
            })
            .collect()
    }

    /// `CONFIG RESETSTAT`: command statistics from zero.
    pub async fn reset_stats(&self) {
        let ok: String = self.cmd(&["CONFIG", "RESETSTAT"]).await;
        assert_eq!(ok, "OK");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // A frozen server dies on SIGKILL too.
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
