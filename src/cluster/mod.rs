//! The cluster's store (`[cluster]`): shared streams across instances
//! through Redis. This module owns every Redis command ssegate sends; what a
//! stream's instances do with them (who holds the upstream, who follows)
//! is `proxy::share::cluster`'s.
//!
//! ```text
//!  claim    SET lease NX PX, or renew it if ours, and refresh the keys' TTL
//!  append   (holder) XADD the events under the lease, in the epoch the
//!           holder continues; a Lua script, so it is one step in Redis
//!  history  the meta hash and the retained entries (XRANGE), for joining
//!  read     XREAD BLOCK after an entry, on a connection of its own
//!  release  DEL the lease if ours
//! ```
//!
//! Every command but the blocking read runs on one multiplexed connection
//! (redis' `ConnectionManager`, which reconnects), bounded by
//! `cluster.timeout`: slower is a failure, and the caller falls back to
//! local sharing. Blocking reads each get a connection of their own, since
//! a blocked command stalls everything behind it on a multiplexed one
//! (redis-rs #643).

pub mod entry;
pub mod metrics;

use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, Script, Value};
use tokio::sync::OnceCell;

pub use entry::{Continuity, Entry, EntryId, StreamKeys, What};
pub use metrics::ClusterMetrics;

use crate::config::ClusterSettings;

/// Lease: take it if free, renew it if ours, and refresh the stream's TTL
/// when asked. 2: taken now, 1: ours already, 0: someone else's.
const CLAIM: &str = r"
local h = redis.call('GET', KEYS[1])
local r = 0
if h == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  r = 1
elseif not h then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  r = 2
end
if ARGV[4] == '1' then
  redis.call('PEXPIRE', KEYS[2], ARGV[3])
  redis.call('PEXPIRE', KEYS[3], ARGV[3])
end
return r
";

/// Appends events under the lease. ARGV: name, the epoch continued (`''`:
/// start one if there is none, `'new'`: start one whatever there is), the
/// MAXLEN, the keys' TTL in ms, the response head to keep (`''`: keep the
/// one there), then `d`, `f`, `i` per entry (`i` is written only when `f`
/// says there is one: `d=` or `c=`). A new epoch is Redis's clock in ms,
/// above the previous epoch and the newest entry's. Returns {1, epoch,
/// seq}, {0} when the lease is not ours, {-1} when the epoch continued is
/// gone (a flushed or evicted meta hash).
const APPEND: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return {0} end
local e = redis.call('HGET', KEYS[2], 'e')
local s
if e and ARGV[2] == e then
  s = tonumber(redis.call('HGET', KEYS[2], 's')) or 0
elseif ARGV[2] == 'new' or (ARGV[2] == '' and not e) then
  local t = redis.call('TIME')
  local n = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if e and tonumber(e) and tonumber(e) >= n then n = tonumber(e) + 1 end
  local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
  if last[1] then
    local le = tonumber(string.match(last[1][1], '^(%d+)-'))
    if le and le >= n then n = le + 1 end
  end
  e = string.format('%.0f', n)
  s = 0
  redis.call('HSET', KEYS[2], 'e', e)
else
  return {-1}
end
if ARGV[5] ~= '' then redis.call('HSET', KEYS[2], 'h', ARGV[5]) end
for i = 6, #ARGV, 3 do
  s = s + 1
  local id = e .. '-' .. s
  if string.sub(ARGV[i + 1], 2, 2) == '=' then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], id, 'd', ARGV[i], 'i', ARGV[i + 2], 'f', ARGV[i + 1])
  else
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], id, 'd', ARGV[i], 'f', ARGV[i + 1])
  end
end
redis.call('HSET', KEYS[2], 's', s)
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('PEXPIRE', KEYS[3], ARGV[4])
return {1, e, s}
";

/// Gives the lease up if it is ours.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) return 1 end
return 0
";

/// A Redis failure: the command failed, the connection did, or it took
/// longer than `cluster.timeout`.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis: no answer within {0:?}")]
    Timeout(Duration),
    #[error("redis: unexpected answer to {0}")]
    Unexpected(&'static str),
}

/// What [`Cluster::claim`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The lease is ours: just taken (`fresh`), or renewed.
    Ours { fresh: bool },
    /// Another instance holds it.
    Theirs,
}

/// One entry for [`Cluster::append`]: its `d`, `f` and `i` fields.
#[derive(Debug, Clone)]
pub struct Appendable {
    pub data: Bytes,
    pub flags: &'static [u8],
    pub sse_id: Option<std::sync::Arc<[u8]>>,
}

/// What [`Cluster::append`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Appended {
    /// Appended: the epoch and the last seq now.
    Done { epoch: String, seq: u64 },
    /// The lease is not ours (any more).
    NotHolder,
    /// The epoch this holder continued is gone: the history was lost.
    EpochGone,
}

/// Which epoch an append continues.
#[derive(Debug, Clone, Copy)]
pub enum Epoch<'a> {
    /// This one: the holder's stream continues its entries.
    Continue(&'a str),
    /// Whatever is there, or a new one if none.
    Any,
    /// A new one: what this holder appends does not continue what is there.
    New,
}

/// A stream's state in Redis, for an instance that joins it.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// The epoch, if the stream has one.
    pub epoch: Option<String>,
    /// The upstream's response head the holder kept ([`entry::encode_head`]).
    pub head: Option<Vec<u8>>,
    /// The retained entries, oldest first.
    pub entries: Vec<Entry>,
}

/// This instance's handle on the cluster's Redis.
pub struct Cluster {
    client: Client,
    conn: OnceCell<ConnectionManager>,
    pub name: String,
    pub lease: Duration,
    pub timeout: Duration,
    pub metrics: ClusterMetrics,
    claim: Script,
    append: Script,
    release: Script,
}

impl Cluster {
    /// No connection is made here (Redis may be down at start): the first
    /// command connects.
    pub fn new(settings: &ClusterSettings, metrics: ClusterMetrics) -> Result<Cluster, RedisError> {
        Ok(Cluster {
            client: Client::open(settings.redis.as_str())?,
            conn: OnceCell::new(),
            name: settings.name.clone(),
            lease: settings.lease,
            timeout: settings.timeout,
            metrics,
            claim: Script::new(CLAIM),
            append: Script::new(APPEND),
            release: Script::new(RELEASE),
        })
    }

    /// How often leases are renewed and free ones looked for.
    pub fn tick(&self) -> Duration {
        self.lease / 3
    }

    async fn conn(&self) -> Result<ConnectionManager, RedisError> {
        let conn = self
            .conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(self.timeout);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await?;
        Ok(conn.clone())
    }

    /// Runs `f` on the shared connection within the timeout, timing it as `op`.
    async fn timed<T, F>(&self, op: &'static str, f: F) -> Result<T, RedisError>
    where
        F: std::future::Future<Output = Result<T, redis::RedisError>>,
    {
        let started = Instant::now();
        let result = within(self.timeout, f).await;
        self.metrics.observe(op, started.elapsed(), result.is_ok());
        result
    }

    /// Takes the lease of `keys` if it is free, renews it if it is ours;
    /// with `touch`, the stream's keys live `ttl` longer.
    pub async fn claim(
        &self,
        keys: &StreamKeys,
        touch: Option<Duration>,
    ) -> Result<Claim, RedisError> {
        let mut conn = self.conn().await?;
        let mut call = self.claim.key(&keys.lease);
        call.key(&keys.meta)
            .key(&keys.events)
            .arg(&self.name)
            .arg(millis(self.lease))
            .arg(millis(touch.unwrap_or_default()))
            .arg(if touch.is_some() { "1" } else { "0" });
        let r: i64 = self.timed("lease", call.invoke_async(&mut conn)).await?;
        Ok(match r {
            2 => Claim::Ours { fresh: true },
            1 => Claim::Ours { fresh: false },
            _ => Claim::Theirs,
        })
    }

    /// Gives up the lease of `keys` if it is ours.
    pub async fn release(&self, keys: &StreamKeys) -> Result<(), RedisError> {
        let mut conn = self.conn().await?;
        let mut call = self.release.key(&keys.lease);
        call.arg(&self.name);
        let _: i64 = self.timed("lease", call.invoke_async(&mut conn)).await?;
        Ok(())
    }

    /// Appends `entries` (`d`, `f` and `i` fields) to the stream of `keys` under our
    /// lease, in `epoch`; `head` is kept for followers when given. Each
    /// stream keeps about `maxlen` entries; its keys live `ttl` longer.
    #[allow(clippy::too_many_arguments)]
    pub async fn append(
        &self,
        keys: &StreamKeys,
        epoch: Epoch<'_>,
        head: Option<&[u8]>,
        entries: &[Appendable],
        maxlen: usize,
        ttl: Duration,
    ) -> Result<Appended, RedisError> {
        let mut conn = self.conn().await?;
        let epoch = match epoch {
            Epoch::Continue(e) => e,
            Epoch::Any => "",
            Epoch::New => "new",
        };
        let mut call = self.append.key(&keys.lease);
        call.key(&keys.meta)
            .key(&keys.events)
            .arg(&self.name)
            .arg(epoch)
            .arg(maxlen.max(1))
            .arg(millis(ttl))
            .arg(head.unwrap_or_default());
        for e in entries {
            call.arg(e.data.as_ref())
                .arg(e.flags)
                .arg(e.sse_id.as_deref().unwrap_or_default());
        }
        let v: Value = self.timed("append", call.invoke_async(&mut conn)).await?;
        let Value::Array(items) = v else {
            return Err(RedisError::Unexpected("append"));
        };
        Ok(match items.as_slice() {
            [Value::Int(1), e, Value::Int(s)] => Appended::Done {
                epoch: text(e).ok_or(RedisError::Unexpected("append"))?,
                seq: u64::try_from(*s).unwrap_or_default(),
            },
            [Value::Int(0)] => Appended::NotHolder,
            [Value::Int(-1)] => Appended::EpochGone,
            _ => return Err(RedisError::Unexpected("append")),
        })
    }

    /// The stream's epoch, head and retained entries (at most `count`, the
    /// newest), read atomically.
    pub async fn history(&self, keys: &StreamKeys, count: usize) -> Result<History, RedisError> {
        let mut conn = self.conn().await?;
        let mut pipe = redis::pipe();
        pipe.atomic()
            .cmd("HMGET")
            .arg(&keys.meta)
            .arg("e")
            .arg("h")
            .cmd("XREVRANGE")
            .arg(&keys.events)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(count.max(1));
        let (meta, entries): (Vec<Option<Vec<u8>>>, Value) =
            self.timed("history", pipe.query_async(&mut conn)).await?;
        let mut entries = entries_of(&entries).ok_or(RedisError::Unexpected("XREVRANGE"))?;
        entries.reverse();
        let mut meta = meta.into_iter();
        let epoch = meta
            .next()
            .flatten()
            .and_then(|e| String::from_utf8(e).ok());
        let head = meta.next().flatten();
        Ok(History {
            epoch,
            head,
            entries,
        })
    }

    /// The entries after `after`, at most `count` (a catch-up without blocking).
    pub async fn entries_after(
        &self,
        keys: &StreamKeys,
        after: EntryId,
        count: usize,
    ) -> Result<Vec<Entry>, RedisError> {
        let mut conn = self.conn().await?;
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(&keys.events)
            .arg(format!("({after}"))
            .arg("+")
            .arg("COUNT")
            .arg(count.max(1));
        let v: Value = self.timed("history", cmd.query_async(&mut conn)).await?;
        entries_of(&v).ok_or(RedisError::Unexpected("XRANGE"))
    }

    /// A connection of its own for blocking reads.
    pub async fn reader(&self, block: Duration) -> Result<Reader, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(block + self.timeout));
        let connect = self
            .client
            .get_multiplexed_async_connection_with_config(&config);
        let conn = within(self.timeout, connect).await?;
        Ok(Reader {
            conn,
            block,
            timeout: self.timeout,
        })
    }
}

/// A connection blocked in `XREAD` for one stream.
pub struct Reader {
    conn: MultiplexedConnection,
    block: Duration,
    timeout: Duration,
}

impl Reader {
    /// The entries after `after` (at most `count`), waiting up to the
    /// reader's block time for the first; empty when none came.
    pub async fn read(
        &mut self,
        keys: &StreamKeys,
        after: EntryId,
        count: usize,
    ) -> Result<Vec<Entry>, RedisError> {
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(count.max(1))
            .arg("BLOCK")
            .arg(millis(self.block).max(1))
            .arg("STREAMS")
            .arg(&keys.events)
            .arg(after.to_string());
        let limit = self.block + self.timeout;
        let v: Value = within(limit, cmd.query_async(&mut self.conn)).await?;
        // Nil on a timeout; else [[stream, entries]] (or a map in RESP3).
        let streams: Vec<&Value> = match &v {
            Value::Nil => return Ok(Vec::new()),
            Value::Array(streams) => streams.iter().collect(),
            Value::Map(pairs) => pairs.iter().map(|(_, v)| v).collect(),
            _ => return Err(RedisError::Unexpected("XREAD")),
        };
        let mut out = Vec::new();
        for stream in streams {
            let entries = match stream {
                Value::Array(pair) if pair.len() == 2 => &pair[1],
                other => other,
            };
            out.extend(entries_of(entries).ok_or(RedisError::Unexpected("XREAD"))?);
        }
        Ok(out)
    }
}

/// `f`'s result, or a timeout after `limit`.
async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = Result<T, redis::RedisError>>,
) -> Result<T, RedisError> {
    match tokio::time::timeout(limit, f).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(RedisError::Timeout(limit)),
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// The entries of an XRANGE/XREAD answer; entries that are not ssegate's
/// (another writer's fields or ids) are left out. `None`: not such an answer.
fn entries_of(v: &Value) -> Option<Vec<Entry>> {
    let items = match v {
        Value::Array(items) => items,
        Value::Nil => return Some(Vec::new()),
        _ => return None,
    };
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::Array(pair) = item else {
            return None;
        };
        let [id, fields] = pair.as_slice() else {
            return None;
        };
        let Some(id) = bytes(id).and_then(EntryId::parse) else {
            continue;
        };
        let fields: Vec<&Value> = match fields {
            Value::Array(f) => f.iter().collect(),
            Value::Map(m) => m.iter().flat_map(|(k, v)| [k, v]).collect(),
            _ => continue,
        };
        let (mut data, mut flags, mut sse_id) = (None, None, None);
        for kv in fields.chunks(2) {
            if let [k, v] = kv {
                match bytes(k) {
                    Some(b"d") => data = bytes(v).map(Bytes::copy_from_slice),
                    Some(b"f") => flags = bytes(v),
                    Some(b"i") => sse_id = bytes(v),
                    _ => {}
                }
            }
        }
        let data = data.filter(|d| !d.is_empty());
        if let Some(entry) = flags.and_then(|f| entry::decode(id, data, f, sse_id)) {
            out.push(entry);
        }
    }
    Some(out)
}
