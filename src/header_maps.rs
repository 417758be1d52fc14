//! Spare header maps, per thread: the map of a request weir is done with becomes, emptied,
//! the map of a response head it builds next (weir's upstream client parsing a head, a
//! cache hit's served head). hyper does the same inside one connection (the head it wrote
//! becomes the map it parses the next head into); this carries the idea across the two
//! sides of a proxied request, so that in steady state no header map is allocated.
//!
//! Also the last value of a rendered field, per thread and field: `Age` and a hit's
//! `Cache-Status` change once a second, so a hot entry's are made once a second rather
//! than once a response. And the decimal writer such values (and a `Content-Length`) use,
//! and the names of common fields read without lowercasing ([`field_name`]).

use std::cell::RefCell;
use std::thread::LocalKey;

use bytes::Bytes;
use http::header::{self, HeaderName, InvalidHeaderName};
use http::{HeaderMap, HeaderValue};

/// Maps kept per thread: one per request in flight on it is plenty.
const KEPT: usize = 64;
/// A map grown past this many fields is not kept (one odd request should not pin it).
const LARGEST_KEPT: usize = 128;

thread_local! {
    static SPARE: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
}

/// Keeps `map`, emptied, for a later [`take`] on this thread.
pub fn recycle(mut map: HeaderMap) {
    if map.capacity() == 0 || map.capacity() > LARGEST_KEPT {
        return;
    }
    map.clear();
    // During the thread's teardown there is no list: the map is just dropped.
    let _ = SPARE.try_with(|spare| {
        let mut spare = spare.borrow_mut();
        if spare.len() < KEPT {
            spare.push(map);
        }
    });
}

/// An empty map with room for at least `fields` fields: a recycled one if there is one.
pub fn take(fields: usize) -> HeaderMap {
    let spare = SPARE
        .try_with(|spare| spare.borrow_mut().pop())
        .ok()
        .flatten();
    match spare {
        Some(mut map) => {
            map.reserve(fields);
            map
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Heads of up to this many fields are scanned for a name before its hash is looked up
/// (see [`first`]).
const SCANNED_FIELDS: usize = 8;

/// Whether `map` surely holds no `name` field: a small head's names, compared in order.
/// A proxied request looks up about ten fields, most of them absent (`TE`, `Upgrade`,
/// `traceparent`…); comparing a name with a few fields' costs ~5 instructions each,
/// hashing it and probing the table ~90.
fn surely_absent(map: &HeaderMap, name: &HeaderName) -> bool {
    map.keys_len() <= SCANNED_FIELDS && !map.keys().any(|field| field == name)
}

/// The first `name` field's value in `map`, as [`HeaderMap::get`] finds it, answered
/// without hashing when a small head has no such field.
pub fn first<'a>(map: &'a HeaderMap, name: &HeaderName) -> Option<&'a HeaderValue> {
    if surely_absent(map, name) {
        return None;
    }
    map.get(name)
}

/// Whether `map` holds a `name` field, as [`HeaderMap::contains_key`] says, answered
/// without hashing when a small head has none. For the fields a cache hit asks after and
/// seldom finds (`Cache-Control`, `Pragma`, `Range`, conditionals, the stored `Vary`).
pub fn contains(map: &HeaderMap, name: &HeaderName) -> bool {
    !surely_absent(map, name) && map.contains_key(name)
}

/// Every `name` field's value in `map`, in order, as [`HeaderMap::get_all`] gives them,
/// answered without hashing when a small head has no such field.
pub fn all<'a>(map: &'a HeaderMap, name: &HeaderName) -> Values<'a> {
    Values((!surely_absent(map, name)).then(|| map.get_all(name).into_iter()))
}

/// The values [`all`] finds.
pub struct Values<'a>(Option<header::ValueIter<'a, HeaderValue>>);

impl<'a> Iterator for Values<'a> {
    type Item = &'a HeaderValue;

    fn next(&mut self) -> Option<&'a HeaderValue> {
        self.0.as_mut()?.next()
    }
}

/// `value` in decimal digits, written into `digits` (a `u64` has at most 20).
pub fn decimal(value: u64, digits: &mut [u8; 20]) -> &[u8] {
    let mut at = digits.len();
    let mut rest = value;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    &digits[at..]
}

/// The field name `bytes`, as [`HeaderName::from_bytes`] reads it. The fields most
/// heads carry, spelled as servers write them (`Content-Length` or `content-length`),
/// are recognised by length and a comparison (the table hyper's parsers use too, in
/// weir's patch): `from_bytes` lowercases every name into a buffer and then matches it,
/// about 175 instructions a field, 5 % of a proxied request for a plain five-field
/// response head.
pub fn field_name(bytes: &[u8]) -> Result<HeaderName, InvalidHeaderName> {
    match hyper::ext::common_header_name(bytes) {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(bytes),
    }
}

/// Longest value [`memoized`] keeps.
pub const SHORT_VALUE: usize = 96;

/// The last value of one field on this thread.
pub type LastValue = RefCell<Option<HeaderValue>>;

/// A short value's bytes, shared from the start: its clones allocate nothing.
struct ShortValue {
    bytes: [u8; SHORT_VALUE],
    len: usize,
}

impl AsRef<[u8]> for ShortValue {
    fn as_ref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// The field value `bytes`: `last`'s when it is the same, else a new one that becomes
/// `last`. `None` for bytes no field value may hold (or longer than [`SHORT_VALUE`]).
pub fn memoized(last: &'static LocalKey<LastValue>, bytes: &[u8]) -> Option<HeaderValue> {
    let remembered = last
        .try_with(|last| {
            last.borrow()
                .as_ref()
                .filter(|value| value.as_bytes() == bytes)
                .cloned()
        })
        .ok()
        .flatten();
    if remembered.is_some() {
        return remembered;
    }
    let mut short = ShortValue {
        bytes: [0; SHORT_VALUE],
        len: bytes.len(),
    };
    short.bytes.get_mut(..bytes.len())?.copy_from_slice(bytes);
    let value = HeaderValue::from_maybe_shared(Bytes::from_owner(short)).ok()?;
    let _ = last.try_with(|last| *last.borrow_mut() = Some(value.clone()));
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn first_all_and_contains_find_what_get_get_all_and_contains_key_find() {
        let names = [
            header::HOST,
            header::TE,
            header::CONNECTION,
            HeaderName::from_static("traceparent"),
            HeaderName::from_static("x-request-id"),
        ];
        // Heads around the size searched in order, with repeated and absent fields.
        for fields in 0..=2 * SCANNED_FIELDS {
            let mut map = HeaderMap::new();
            for i in 0..fields {
                let name = names[i * 7 % names.len()].clone();
                map.append(name, HeaderValue::from(i));
            }
            for name in names.iter().chain([&header::UPGRADE]) {
                assert_eq!(first(&map, name), map.get(name), "{fields} fields, {name}");
                assert_eq!(
                    contains(&map, name),
                    map.contains_key(name),
                    "{fields} fields, {name}"
                );
                let ours: Vec<_> = all(&map, name).collect();
                let its: Vec<_> = map.get_all(name).iter().collect();
                assert_eq!(ours, its, "{fields} fields, {name}");
            }
        }
    }

    #[test]
    fn common_field_names_read_as_from_bytes_reads_them() {
        // Each spelling in the table gives what from_bytes gives.
        for spelling in hyper::ext::COMMON_HEADER_SPELLINGS {
            let common = hyper::ext::common_header_name(spelling);
            assert_eq!(
                common.as_ref(),
                Some(&HeaderName::from_bytes(spelling).unwrap()),
                "{}",
                String::from_utf8_lossy(spelling)
            );
        }
        // Other spellings and names take from_bytes's way, with its answers.
        for other in [
            "CONTENT-LENGTH",
            "X-Custom",
            "Content-Lengt",
            "Date ",
            "",
            "SEC-FETCH-MODE",
            "X-Forwarded-Fo",
        ] {
            assert!(
                hyper::ext::common_header_name(other.as_bytes()).is_none(),
                "{other}"
            );
            assert_eq!(
                field_name(other.as_bytes()).ok(),
                HeaderName::from_bytes(other.as_bytes()).ok(),
                "{other}"
            );
        }
        assert!(field_name(b"Bad Name").is_err());
        assert_eq!(
            field_name(b"CONTENT-LENGTH").unwrap(),
            header::CONTENT_LENGTH
        );
    }

    #[test]
    fn a_recycled_map_comes_back_empty_with_its_room() {
        let mut map = HeaderMap::with_capacity(24);
        map.insert("x-a", HeaderValue::from_static("1"));
        let room = map.capacity();
        recycle(map);
        let again = take(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room);
        // Nothing left to recycle: a new map with the room asked for.
        let fresh = take(4);
        assert!(fresh.capacity() >= 4);
    }

    thread_local! {
        static LAST: LastValue = const { RefCell::new(None) };
    }

    #[test]
    fn decimals_read_back() {
        let mut digits = [0; 20];
        for value in [0, 7, 10, 3599, u64::MAX] {
            assert_eq!(decimal(value, &mut digits), value.to_string().as_bytes());
        }
    }

    #[test]
    fn a_value_like_the_last_is_the_last_one_shared() {
        let first = memoized(&LAST, b"42").unwrap();
        let again = memoized(&LAST, b"42").unwrap();
        assert_eq!(first, again);
        // The same bytes, not a copy.
        assert_eq!(first.as_bytes().as_ptr(), again.as_bytes().as_ptr());
        let other = memoized(&LAST, b"43").unwrap();
        assert_eq!(other, "43");
        assert_ne!(other.as_bytes().as_ptr(), first.as_bytes().as_ptr());
        assert!(memoized(&LAST, b"bad\r\nvalue").is_none());
        assert!(memoized(&LAST, &[b'a'; SHORT_VALUE + 1]).is_none());
    }

    #[test]
    fn empty_and_oversized_maps_are_not_kept() {
        recycle(HeaderMap::new());
        let mut big = HeaderMap::with_capacity(LARGEST_KEPT * 2);
        big.insert("x-a", HeaderValue::from_static("1"));
        recycle(big);
        assert!(take(1).capacity() < LARGEST_KEPT);
    }
}
