//! The one hash whose values leave the process: consistent-hash ring points and request
//! keys, and the endpoint ids in sticky cookies. A fleet on mixed builds, or one upgraded
//! to a newer toolchain, must agree on them, so this is XXH3-64 (a published algorithm,
//! here from `xxhash-rust`) with a fixed seed, over bytes laid out explicitly, never
//! `std`'s `DefaultHasher` (whose algorithm std does not promise to keep) or a `Hash` impl
//! (whose byte layout is std's). Imports nothing from weir.

use std::net::IpAddr;

/// `"weirhash"` in ASCII. Changing it moves every ring point and sticky id.
pub const SEED: u64 = 0x7765_6972_6861_7368;

/// XXH3-64 of `bytes` with [`SEED`].
pub fn hash(bytes: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64_with_seed(bytes, SEED)
}

/// Hash of several byte strings, each followed by a 0 byte, so that `("ab", "c")` and
/// `("a", "bc")` differ.
pub fn hash_parts(parts: &[&[u8]]) -> u64 {
    // Streamed: the same value as hashing the joined bytes, without joining them.
    let mut hasher = xxhash_rust::xxh3::Xxh3::with_seed(SEED);
    for part in parts {
        hasher.update(part);
        hasher.update(&[0]);
    }
    hasher.digest()
}

/// Hash of an IP address: its 4 or 16 octets.
pub fn hash_ip(ip: IpAddr) -> u64 {
    match ip {
        IpAddr::V4(v4) => hash(&v4.octets()),
        IpAddr::V6(v6) => hash(&v6.octets()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Known answers, checked against the reference implementation (Python `xxhash`
    /// 3.x, `xxh3_64_intdigest(data, seed=0x7765697268617368)`): if one changes, every
    /// deployed ring and sticky cookie moves.
    #[test]
    fn known_answers() {
        assert_eq!(hash(b""), 14302770641973495869);
        assert_eq!(hash(b"10.0.0.1:8080"), 8571505188882215210);
        assert_eq!(hash(&[b'x'; 300]), 9108522479423808979);
        assert_eq!(hash_parts(&[b"api", b"10.0.0.1:8080"]), 5457699108135842481);
        assert_eq!(hash_ip("192.0.2.7".parse().unwrap()), 17976046921758584288);
        assert_ne!(hash_parts(&[b"ab", b"c"]), hash_parts(&[b"a", b"bc"]));
    }
}
