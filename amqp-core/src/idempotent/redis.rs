//! [`RedisStore`]: idempotency records in Redis, shared by every process that consumes a queue.

use std::time::Duration;

use futures::future::BoxFuture;
use redis::aio::ConnectionManager;

use super::{BoxError, Claim, IdempotencyStore, token};

/// Claims a key atomically: `SET NX` when absent, else reports done or the lease's time left.
const BEGIN: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {'acquired', 0}
end
if v == 'done' then return {'done', 0} end
return {'busy', redis.call('PTTL', KEYS[1])}
";

/// Deletes a key only while it still holds the caller's lease.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
";

/// Idempotency records in Redis (feature `idempotent-redis`): one key per queue and message id,
/// holding `processing:<token>` with the lease as its expiry, then `done` with the keep time as
/// its expiry. Claims are one Lua script, so two consumers racing on a message cannot both win.
/// The connection reconnects by itself; while Redis is unreachable, deliveries are requeued.
///
/// # Examples
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> amqp_core::Result<()> {
/// use amqp_core::idempotent::{Idempotency, RedisStore};
///
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?; // or RedisStore::from_env()
/// let idempotency = Idempotency::new(store);
/// # let _ = idempotency;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    begin: redis::Script,
    release: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port/db`).
    pub async fn connect(url: &str) -> crate::Result<Self> {
        let store_error = |e: redis::RedisError| crate::Error::Store {
            store: "redis",
            source: Box::new(e),
        };
        let client = redis::Client::open(url).map_err(store_error)?;
        let conn = ConnectionManager::new(client).await.map_err(store_error)?;
        Ok(Self {
            conn,
            begin: redis::Script::new(BEGIN),
            release: redis::Script::new(RELEASE),
        })
    }

    /// Connects to `REDIS_URL`.
    pub async fn from_env() -> crate::Result<Self> {
        let url = std::env::var("REDIS_URL").map_err(|_| {
            crate::Error::Configuration("REDIS_URL is not set (e.g. redis://127.0.0.1:6379)".into())
        })?;
        Self::connect(&url).await
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl IdempotencyStore for RedisStore {
    fn begin<'a>(
        &'a self,
        key: &'a str,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, BoxError>> {
        Box::pin(async move {
            let token = token();
            let mut conn = self.conn.clone();
            let (state, ttl_ms): (String, i64) = self
                .begin
                .key(key)
                .arg(format!("processing:{token}"))
                .arg(millis(lease))
                .invoke_async(&mut conn)
                .await?;
            Ok(match state.as_str() {
                "acquired" => Claim::Acquired(token),
                "done" => Claim::Done,
                _ => Claim::Busy {
                    remaining: Duration::from_millis(ttl_ms.max(0) as u64),
                },
            })
        })
    }

    fn complete<'a>(
        &'a self,
        key: &'a str,
        _token: &'a str,
        keep: Duration,
    ) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: () = redis::cmd("SET")
                .arg(key)
                .arg("done")
                .arg("PX")
                .arg(millis(keep))
                .query_async(&mut conn)
                .await?;
            Ok(())
        })
    }

    fn release<'a>(&'a self, key: &'a str, token: &'a str) -> BoxFuture<'a, Result<(), BoxError>> {
        Box::pin(async move {
            let mut conn = self.conn.clone();
            let _: i64 = self
                .release
                .key(key)
                .arg(format!("processing:{token}"))
                .invoke_async(&mut conn)
                .await?;
            Ok(())
        })
    }
}
