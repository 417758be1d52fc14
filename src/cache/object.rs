//! What the cache stores: responses with their policy, and vary records.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_cache_semantics::CachePolicy;
use hyper::ext::FieldBlock;
use serde::{Deserialize, Serialize};

/// A header field's slot in a `HeaderMap` (its bucket and index entry), as allocated.
const FIELD_SLOT_BYTES: usize = 96;
/// What an entry costs beside its heads and body: the policy (with its copy of the
/// request head and its parsed directives) and the memory tier's own record.
const ENTRY_BYTES: usize = 2048;

/// A stored response: head, body and what decides its reuse.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResponse {
    /// The policy as the `http-cache-semantics` crate built it (it may see an adjusted
    /// `Cache-Control`: `CDN-Cache-Control` or a route's TTL override).
    pub policy: CachePolicy,
    #[serde(with = "http_serde::status_code")]
    pub status: StatusCode,
    /// The origin's headers as they will be served (hop-by-hop fields removed), every
    /// value of repeated fields kept.
    #[serde(with = "http_serde::header_map")]
    pub headers: HeaderMap,
    /// Unix milliseconds until which the response is fresh (0 after a soft purge).
    pub fresh_until_ms: u64,
    /// `stale-while-revalidate` and `stale-if-error` windows, in seconds.
    pub stale_while_revalidate: u64,
    pub stale_if_error: u64,
    /// Seconds past freshness the entry may answer while the origin is unreachable (0
    /// when the response forbids stale use). Absent in entries stored by older builds.
    #[serde(default)]
    pub stale_if_unreachable: u64,
    /// `must-revalidate`, `proxy-revalidate` or `no-cache`: never served stale.
    pub revalidate_always: bool,
    /// Surrogate keys from `Surrogate-Key` / `Cache-Tag`, for purge by tag.
    pub tags: Vec<String>,
    /// Unix milliseconds after which the entry is dropped from storage.
    pub keep_until_ms: u64,
    #[serde(skip)]
    pub body: Bytes,
    /// `headers` written out once for hits to HTTP/1 clients ([`served_field_block`]):
    /// a hit then puts one entry in its response's map instead of every stored field,
    /// and hyper copies the lines. Made with the entry (stored or read from Redis) from
    /// `headers`, which nothing changes afterwards; `None` when a field must go through
    /// the map.
    #[serde(skip)]
    pub field_block: Option<FieldBlock>,
    /// When the response's age was zero: its response time less the `Age` it came with
    /// (see [`age_origin`]), so that a hit's `Age` is a subtraction. The policy's own
    /// `age` reads its stored `Age` field again by a lowercased name, ~270 instructions
    /// of a 14 000-instruction hit. Made with the entry (stored or read from Redis);
    /// `None` (a time before 1970) leaves it to the policy. Before the response time
    /// (a clock set back) it says 0 where the policy says the stored `Age`; an entry
    /// read from Redis while this clock is behind the storing instance's ages from the
    /// read on, at most that skew older than the policy would say.
    #[serde(skip)]
    pub age_origin: Option<SystemTime>,
}

impl StoredResponse {
    /// The response's current age (RFC 9111 §4.2.3), as its policy would say it.
    pub fn age(&self, now: SystemTime) -> Duration {
        match self.age_origin {
            Some(origin) => now.duration_since(origin).unwrap_or_default(),
            None => self.policy.age(now),
        }
    }

    pub fn is_fresh_at(&self, now: SystemTime) -> bool {
        unix_ms(now) < self.fresh_until_ms
    }

    /// How long past freshness the response is at `now` (zero while fresh).
    pub fn staleness(&self, now: SystemTime) -> Duration {
        Duration::from_millis(unix_ms(now).saturating_sub(self.fresh_until_ms))
    }

    /// Remaining storage lifetime at `now`.
    pub fn keep_for(&self, now: SystemTime) -> Duration {
        Duration::from_millis(self.keep_until_ms.saturating_sub(unix_ms(now)))
    }

    /// Bytes this entry costs in memory: the body, the served head and the policy's copy
    /// of it (each field a map slot of about [`FIELD_SLOT_BYTES`] beside its name and
    /// value), and [`ENTRY_BYTES`] for the rest. Measured: 30 000 stored 1 KiB responses
    /// of five fields grew the process by 4.2 KiB each; this says 4.3 KiB (it said 2.1,
    /// and before the heads and bodies were copied out of the read buffers each entry
    /// held 13.5 KiB).
    pub fn weight(&self) -> u32 {
        let headers: usize = self
            .headers
            .iter()
            .map(|(n, v)| n.as_str().len() + v.len() + FIELD_SLOT_BYTES)
            .sum();
        let block = self.field_block.as_ref().map_or(0, FieldBlock::len);
        let total = self.body.len() + headers * 2 + block + ENTRY_BYTES;
        u32::try_from(total).unwrap_or(u32::MAX)
    }

    /// A copy that counts as stale from now on (soft purge).
    pub fn marked_stale(&self) -> Self {
        let mut copy = self.clone();
        copy.fresh_until_ms = 0;
        copy
    }
}

/// When `policy`'s response had an age of zero ([`StoredResponse::age_origin`]), read
/// at `now`: its age grows with the clock from its response time on.
pub fn age_origin(policy: &CachePolicy, now: SystemTime) -> Option<SystemTime> {
    now.checked_sub(policy.age(now))
}

/// The block of a stored response's served fields ([`StoredResponse::field_block`]).
/// `Content-Length` stays out of it: hyper writes the body's length itself (and a HEAD
/// answer carries the stored one in the map).
pub fn served_field_block(headers: &HeaderMap) -> Option<FieldBlock> {
    if headers.contains_key(header::CONTENT_LENGTH) {
        let mut fields = headers.clone();
        fields.remove(header::CONTENT_LENGTH);
        FieldBlock::from_fields(&fields)
    } else {
        FieldBlock::from_fields(headers)
    }
}

/// `body` in an allocation of its own size. A response's bytes arrive as slices of the
/// connection's read buffer (8 KiB or more), and a slice keeps its whole buffer alive: a
/// stored 1 KiB body held 8 KiB or more while the memory tier counted 1 KiB.
pub fn owned_body(mut body: impl Buf) -> Bytes {
    let mut owned = BytesMut::with_capacity(body.remaining());
    owned.put(&mut body);
    owned.freeze()
}

/// A copy of `headers` whose values share one allocation of their total size, for what
/// the cache keeps: parsed values are slices of the connection's read buffer, and each
/// kept value would keep that buffer alive (see [`owned_body`]).
pub fn owned_headers(headers: &HeaderMap) -> HeaderMap {
    let total = headers.values().map(HeaderValue::len).sum();
    let mut all = BytesMut::with_capacity(total);
    for value in headers.values() {
        all.extend_from_slice(value.as_bytes());
    }
    let mut all = all.freeze();
    let mut owned = HeaderMap::with_capacity(headers.keys_len());
    for (name, value) in headers {
        let bytes = all.split_to(value.len());
        // The bytes were a valid value a moment ago; the fallback copy cannot be needed.
        let mut copy = HeaderValue::from_maybe_shared(bytes).unwrap_or_else(|_| value.clone());
        copy.set_sensitive(value.is_sensitive());
        owned.append(name.clone(), copy);
    }
    owned
}

/// A primary key's record of which request headers select among its variants.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VaryRecord {
    /// Lowercase header names from the origin's `Vary`.
    pub names: Vec<String>,
    /// Random per record, part of each variant's key: after a purge, a new record never
    /// leads to the old variants.
    pub generation: u64,
    pub keep_until_ms: u64,
}

/// One cache value.
#[derive(Debug, Clone)]
pub enum Entry {
    Response(Arc<StoredResponse>),
    Vary(Arc<VaryRecord>),
}

impl Entry {
    pub fn weight(&self) -> u32 {
        match self {
            Entry::Response(r) => r.weight(),
            Entry::Vary(v) => 64 + v.names.iter().map(|n| n.len() as u32).sum::<u32>(),
        }
    }

    pub fn keep_for(&self, now: SystemTime) -> Duration {
        let until = match self {
            Entry::Response(r) => r.keep_until_ms,
            Entry::Vary(v) => v.keep_until_ms,
        };
        Duration::from_millis(until.saturating_sub(unix_ms(now)))
    }

    pub fn has_tag(&self, tag: &str) -> bool {
        matches!(self, Entry::Response(r) if r.tags.iter().any(|t| t == tag))
    }

    /// Bytes for Redis: a kind byte, the JSON head's length, the head, then the body.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, head, body) = match self {
            Entry::Response(r) => (b'R', serde_json::to_vec(r.as_ref()), r.body.as_ref()),
            Entry::Vary(v) => (b'V', serde_json::to_vec(v.as_ref()), &[][..]),
        };
        // Serialising these plain structs cannot fail; an empty head decodes as an error.
        let head = head.unwrap_or_default();
        let mut out = Vec::with_capacity(5 + head.len() + body.len());
        out.push(kind);
        out.extend_from_slice(&(head.len() as u32).to_be_bytes());
        out.extend_from_slice(&head);
        out.extend_from_slice(body);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (&kind, rest) = bytes.split_first().ok_or(DecodeError::Truncated)?;
        let (len, rest) = rest.split_at_checked(4).ok_or(DecodeError::Truncated)?;
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (head, body) = rest.split_at_checked(len).ok_or(DecodeError::Truncated)?;
        match kind {
            b'R' => {
                let mut response: StoredResponse = serde_json::from_slice(head)?;
                response.body = Bytes::copy_from_slice(body);
                response.field_block = served_field_block(&response.headers);
                response.age_origin = age_origin(&response.policy, SystemTime::now());
                Ok(Entry::Response(Arc::new(response)))
            }
            b'V' => Ok(Entry::Vary(Arc::new(serde_json::from_slice(head)?))),
            other => Err(DecodeError::Kind(other)),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("stored value is truncated")]
    Truncated,
    #[error("stored value has unknown kind {0}")]
    Kind(u8),
    #[error("stored head is not valid: {0}")]
    Head(#[from] serde_json::Error),
}

pub fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
