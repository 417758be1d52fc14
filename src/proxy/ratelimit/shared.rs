//! A GCRA bucket in Redis shared by every instance: one key per bucket holding its
//! theoretical arrival time (TAT), updated atomically by a Lua script on Redis's clock, so
//! instances with skewed clocks still agree.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::cache::redis::RedisTier;
use crate::config::RateLimitConfig;

/// KEYS[1]: the bucket. ARGV[1]: emission interval (µs per request); ARGV[2]: tolerance
/// (emission × (burst − 1)). Returns 0 to admit (and advances the TAT), or the µs to wait.
/// Times are µs since the epoch: below 2^53, exact in Lua's doubles.
const GCRA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local emission = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local allow_at = tat - tolerance
if now < allow_at then
  return allow_at - now
end
local new_tat = tat + emission
redis.call('SET', KEYS[1], string.format('%d', new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1)
return 0
"#;

/// What a request's bucket is keyed by.
pub enum KeyValue<'a> {
    Ip(IpAddr),
    Bytes(&'a [u8]),
}

#[derive(Debug)]
pub struct SharedBucket {
    redis: Arc<RedisTier>,
    /// `{key_prefix}:r:{route}:{kind}:`; the key's value follows.
    prefix: String,
    emission_micros: u64,
    tolerance_micros: u64,
}

impl SharedBucket {
    pub fn new(redis: Arc<RedisTier>, route: &str, config: &RateLimitConfig, burst: u32) -> Self {
        let emission_micros = (1_000_000 / u64::from(config.requests_per_second.max(1))).max(1);
        let prefix = format!(
            "{}:r:{route}:{}:",
            redis.config.key_prefix,
            config.key.as_str()
        );
        Self {
            redis,
            prefix,
            emission_micros,
            tolerance_micros: emission_micros * u64::from(burst.max(1) - 1),
        }
    }

    pub fn redis(&self) -> &Arc<RedisTier> {
        &self.redis
    }

    /// The bucket's verdict, or `None` when Redis did not answer in time (the caller
    /// decides locally then).
    pub async fn check(&self, value: Option<KeyValue<'_>>) -> Option<Result<(), Duration>> {
        let mut key = self.prefix.clone().into_bytes();
        match value {
            None => {}
            Some(KeyValue::Ip(ip)) => {
                let mut text = String::with_capacity(40);
                let _ = write!(text, "{ip}");
                key.extend_from_slice(text.as_bytes());
            }
            Some(KeyValue::Bytes(bytes)) => key.extend_from_slice(bytes),
        }
        let wait = self
            .redis
            .eval_int(
                "EVAL gcra",
                GCRA,
                &key,
                &[self.emission_micros, self.tolerance_micros],
            )
            .await?;
        Some(match u64::try_from(wait) {
            Ok(0) => Ok(()),
            Ok(micros) => Err(Duration::from_micros(micros)),
            // A negative answer cannot come from the script; admit rather than refuse.
            Err(_) => Ok(()),
        })
    }
}
