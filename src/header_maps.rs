//! Spare header maps, per thread: the map of a request weir is done with becomes, emptied,
//! the map of a response head it builds next (weir's upstream client parsing a head, a
//! cache hit's served head). hyper does the same inside one connection (the head it wrote
//! becomes the map it parses the next head into); this carries the idea across the two
//! sides of a proxied request, so that in steady state no header map is allocated.

use std::cell::RefCell;

use http::HeaderMap;

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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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

    #[test]
    fn empty_and_oversized_maps_are_not_kept() {
        recycle(HeaderMap::new());
        let mut big = HeaderMap::with_capacity(LARGEST_KEPT * 2);
        big.insert("x-a", HeaderValue::from_static("1"));
        recycle(big);
        assert!(take(1).capacity() < LARGEST_KEPT);
    }
}
