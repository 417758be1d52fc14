//! weir patch: response fields written out once and sent as they are.
//!
//! A cache sends the same stored fields with every hit. Put in a response's header map
//! one by one, each costs an insert (hashing its name) and, when the head is written,
//! its own encoding: about 300 instructions a field. A [`FieldBlock`] is the fields
//! already written as HTTP/1 lines: the map holds it as one entry, and the HTTP/1
//! server copies its lines into the head.
//!
//! The block travels in the map under [`FIELD_BLOCK`], and its value begins with a
//! random token made once per process. A field of that name from anywhere else (an
//! upstream's response passed on, say) lacks the token and is written as the ordinary
//! field it is: only a block made by [`FieldBlock::from_fields`] is taken as lines.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The name a [`FieldBlock`] is kept under in a header map.
pub const FIELD_BLOCK: HeaderName = HeaderName::from_static("hyper-field-block");

/// Counts are written in digits of six bits, each the byte `b'0'` + its value (`0` to
/// `o`): visible ASCII, and read back with a subtraction and a shift.
const DIGIT_BITS: u32 = 6;
/// Digits of each line's length: a line is at most 262 143 bytes…
const LENGTH_DIGITS: usize = 3;
const MAX_LINE: usize = (1 << (DIGIT_BITS * LENGTH_DIGITS as u32)) - 1;
/// …and of the count of lines: a block holds at most 4 095.
const COUNT_DIGITS: usize = 2;
const MAX_LINES: usize = (1 << (DIGIT_BITS * COUNT_DIGITS as u32)) - 1;
/// The token's length: 16 hex digits of a random `u64`.
const TOKEN_LEN: usize = 16;
const HAS_DATE: u8 = b'D';
const NO_DATE: u8 = b'-';
/// Where each line's CRLF goes: two bytes that a value may hold, overwritten as the
/// lines are copied.
const LINE_END_ROOM: &[u8; 2] = b"  ";

/// Response fields written out as HTTP/1 lines, to be sent as they are (see the module
/// documentation).
///
/// The HTTP/1 server writes its lines where the block stands in the map, in lowercase
/// whatever case the connection is told to write names in. The HTTP/2 server sends its
/// fields as ordinary ones. An HTTP/1 client does not read it: requests should not
/// carry one.
#[derive(Clone, Debug)]
pub struct FieldBlock {
    /// The token, the `Date` flag, the count of lines and each line's length (see
    /// [`DIGIT_BITS`]), then the lines (`name: value`), each followed by
    /// [`LINE_END_ROOM`]: the server copies the lines in one go and puts each CRLF in
    /// its room.
    value: HeaderValue,
}

impl FieldBlock {
    /// The block of `fields`, or `None` if one of them is a field the HTTP/1 server must
    /// see to frame the message (`Content-Length`, `Transfer-Encoding`, `Connection`,
    /// `Trailer`) or longer than 262 143 bytes as a line, or if there are more than
    /// 4 095. `Date`, when present, is noted: the server then adds none. A field named
    /// [`FIELD_BLOCK`] among them is written as the ordinary line it is.
    pub fn from_fields(fields: &HeaderMap) -> Option<FieldBlock> {
        let count = fields.len();
        if count > MAX_LINES {
            return None;
        }
        let text: usize = fields
            .iter()
            .map(|(name, value)| name.as_str().len() + 2 + value.len() + LINE_END_ROOM.len())
            .sum();
        let mut out =
            Vec::with_capacity(TOKEN_LEN + 1 + COUNT_DIGITS + count * LENGTH_DIGITS + text);
        out.extend_from_slice(token());
        out.push(if fields.contains_key(header::DATE) {
            HAS_DATE
        } else {
            NO_DATE
        });
        push_digits(&mut out, count, COUNT_DIGITS);
        for (name, value) in fields {
            if matches!(
                *name,
                header::CONTENT_LENGTH
                    | header::TRANSFER_ENCODING
                    | header::CONNECTION
                    | header::TRAILER
            ) {
                return None;
            }
            let line = name.as_str().len() + 2 + value.len();
            if line > MAX_LINE {
                return None;
            }
            push_digits(&mut out, line, LENGTH_DIGITS);
        }
        for (name, value) in fields {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(LINE_END_ROOM);
        }
        // Token, flag, digits and room are visible ASCII or spaces, and the names and
        // values were valid.
        let value = HeaderValue::from_maybe_shared(Bytes::from(out)).ok()?;
        Some(FieldBlock { value })
    }

    /// Appends the block to `headers`, sharing its bytes.
    pub fn append_to(&self, headers: &mut HeaderMap) {
        headers.append(FIELD_BLOCK, self.value.clone());
    }

    /// The block's size in bytes, for whoever counts what it keeps.
    pub fn len(&self) -> usize {
        self.value.len()
    }

    /// Whether the block holds no field.
    pub fn is_empty(&self) -> bool {
        self.value.len() == TOKEN_LEN + 1 + COUNT_DIGITS
    }
}

/// This process's token, made on first use.
fn token() -> &'static [u8; TOKEN_LEN] {
    static TOKEN: OnceLock<[u8; TOKEN_LEN]> = OnceLock::new();
    TOKEN.get_or_init(|| {
        // `RandomState`'s keys are random per process (and per thread, then counted up).
        let random = RandomState::new().hash_one(0x5eed_u64);
        let mut token = [0; TOKEN_LEN];
        for (i, digit) in token.iter_mut().enumerate() {
            *digit = hex_digit((random >> (4 * (TOKEN_LEN - 1 - i))) as usize & 0xF);
        }
        token
    })
}

fn hex_digit(nibble: usize) -> u8 {
    b"0123456789abcdef"[nibble & 0xF]
}

/// `n` in `digits` digits of [`DIGIT_BITS`] (`n` fits: the callers check).
fn push_digits(out: &mut Vec<u8>, n: usize, digits: usize) {
    for place in (0..digits).rev() {
        let digit = (n >> (DIGIT_BITS as usize * place)) & ((1 << DIGIT_BITS) - 1);
        out.push(b'0' + digit as u8);
    }
}

/// The number [`push_digits`] wrote. Not checked: a block is known to be this process's
/// by its token, and whoever uses a count checks it against the text's bounds.
fn read_digits(digits: &[u8]) -> usize {
    digits.iter().fold(0, |n, &d| {
        n << DIGIT_BITS | usize::from(d.wrapping_sub(b'0'))
    })
}

/// A block of this process's, taken apart.
struct Parts<'a> {
    /// Each line's length, [`LENGTH_DIGITS`] digits apiece.
    lengths: &'a [u8],
    /// The lines, each followed by [`LINE_END_ROOM`].
    text: &'a [u8],
    has_date: bool,
}

/// The parts of `value` when it is a block of this process's; `None` for anything else.
fn parts(value: &HeaderValue) -> Option<Parts<'_>> {
    let rest = value.as_bytes().strip_prefix(token().as_slice())?;
    let (&flag, rest) = rest.split_first()?;
    let (count, rest) = rest.split_at_checked(COUNT_DIGITS)?;
    let (lengths, text) = rest.split_at_checked(read_digits(count) * LENGTH_DIGITS)?;
    Some(Parts {
        lengths,
        text,
        has_date: flag == HAS_DATE,
    })
}

/// Writes the block's lines, each ended by CRLF, to `dst`. Returns whether it holds a
/// `Date`, or `None`, having written nothing, if `value` is not a block of this
/// process's (then it is an ordinary field).
#[cfg(feature = "server")]
pub(crate) fn write_lines(dst: &mut Vec<u8>, value: &HeaderValue) -> Option<bool> {
    let parts = parts(value)?;
    let start = dst.len();
    dst.extend_from_slice(parts.text);
    let mut at = start;
    for digits in parts.lengths.chunks_exact(LENGTH_DIGITS) {
        let end = at + read_digits(digits);
        match dst.get_mut(end..end + LINE_END_ROOM.len()) {
            Some(room) => room.copy_from_slice(b"\r\n"),
            None => {
                dst.truncate(start);
                return None;
            }
        }
        at = end + LINE_END_ROOM.len();
    }
    if at != dst.len() {
        // The lengths do not account for the text (never, for blocks this module made).
        dst.truncate(start);
        return None;
    }
    Some(parts.has_date)
}

/// Each line of a block's `parts`, or `None` if they do not hold together.
#[cfg(all(feature = "server", feature = "http2"))]
fn lines<'a>(parts: &Parts<'a>) -> Option<Vec<&'a [u8]>> {
    let mut text = parts.text;
    let mut lines = Vec::with_capacity(parts.lengths.len() / LENGTH_DIGITS);
    for digits in parts.lengths.chunks_exact(LENGTH_DIGITS) {
        let (line, rest) = text.split_at_checked(read_digits(digits))?;
        lines.push(line);
        text = rest.strip_prefix(LINE_END_ROOM.as_slice())?;
    }
    text.is_empty().then_some(lines)
}

/// Replaces each block in `headers` by its fields, for a connection that does not
/// write lines (HTTP/2). A field of the name that is not a block stays as it is.
#[cfg(all(feature = "server", feature = "http2"))]
pub(crate) fn expand(headers: &mut HeaderMap) {
    if !headers.contains_key(&FIELD_BLOCK) {
        return;
    }
    let values: Vec<HeaderValue> = match headers.entry(FIELD_BLOCK) {
        header::Entry::Occupied(entry) => entry.remove_entry_mult().1.collect(),
        header::Entry::Vacant(_) => return,
    };
    for value in values {
        let fields = parts(&value).as_ref().and_then(lines).and_then(|lines| {
            lines
                .into_iter()
                .map(parse_line)
                .collect::<Option<Vec<_>>>()
        });
        match fields {
            Some(fields) => {
                for (name, field) in fields {
                    headers.append(name, field);
                }
            }
            None => {
                headers.append(FIELD_BLOCK, value);
            }
        }
    }
}

/// `name: value` back into a field.
#[cfg(all(feature = "server", feature = "http2"))]
fn parse_line(line: &[u8]) -> Option<(HeaderName, HeaderValue)> {
    let colon = line.iter().position(|&b| b == b':')?;
    let (name, value) = line.split_at(colon);
    let value = value.get(2..)?;
    Some((
        HeaderName::from_bytes(name).ok()?,
        HeaderValue::from_bytes(value).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    fn block_value(block: &FieldBlock) -> HeaderValue {
        let mut map = HeaderMap::new();
        block.append_to(&mut map);
        map.get(FIELD_BLOCK).expect("appended").clone()
    }

    #[test]
    fn writes_each_field_as_a_line_in_map_order() {
        let map = fields(&[
            ("content-type", "text/plain"),
            ("cache-control", "max-age=60"),
            ("vary", "accept"),
            ("vary", "origin"),
            ("x-empty", ""),
        ]);
        let block = FieldBlock::from_fields(&map).expect("a block");
        let mut out = Vec::new();
        assert_eq!(write_lines(&mut out, &block_value(&block)), Some(false));
        assert_eq!(
            out,
            b"content-type: text/plain\r\ncache-control: max-age=60\r\n\
              vary: accept\r\nvary: origin\r\nx-empty: \r\n"
        );
        assert!(!block.is_empty());
    }

    #[test]
    fn notes_a_date() {
        let map = fields(&[("date", "Sun, 06 Dec 2026 21:00:00 GMT")]);
        let block = FieldBlock::from_fields(&map).expect("a block");
        let mut out = Vec::new();
        assert_eq!(write_lines(&mut out, &block_value(&block)), Some(true));
        assert_eq!(out, b"date: Sun, 06 Dec 2026 21:00:00 GMT\r\n");
    }

    #[test]
    fn refuses_fields_that_frame_the_message() {
        for name in [
            "content-length",
            "transfer-encoding",
            "connection",
            "trailer",
        ] {
            let mut map = fields(&[("content-type", "text/plain")]);
            map.append(name, HeaderValue::from_static("x"));
            assert!(FieldBlock::from_fields(&map).is_none(), "{name}");
        }
    }

    #[test]
    fn holds_up_to_4095_fields() {
        let mut map = HeaderMap::new();
        for i in 0..MAX_LINES {
            let name = HeaderName::from_bytes(format!("x-{i}").as_bytes()).expect("valid");
            map.append(name, HeaderValue::from_static("v"));
        }
        let block = FieldBlock::from_fields(&map).expect("all fit");
        let mut out = Vec::new();
        assert_eq!(write_lines(&mut out, &block_value(&block)), Some(false));
        assert_eq!(out.split(|&b| b == b'\n').count(), MAX_LINES + 1);
        map.append("x-one-more", HeaderValue::from_static("v"));
        assert!(FieldBlock::from_fields(&map).is_none());
    }

    #[test]
    fn refuses_a_line_too_long_to_count() {
        let long = HeaderValue::from_str(&"a".repeat(MAX_LINE)).expect("valid");
        let mut map = HeaderMap::new();
        map.append("x-long", long);
        assert!(FieldBlock::from_fields(&map).is_none());
        let just = HeaderValue::from_str(&"a".repeat(MAX_LINE - "x-long: ".len())).expect("valid");
        let mut map = HeaderMap::new();
        map.append("x-long", just);
        let block = FieldBlock::from_fields(&map).expect("fits");
        let mut out = Vec::new();
        assert_eq!(write_lines(&mut out, &block_value(&block)), Some(false));
        assert_eq!(out.len(), MAX_LINE + 2);
    }

    #[test]
    fn a_field_of_the_name_from_elsewhere_is_no_block() {
        // What an upstream could send: a plausible block without this process's token.
        let forged = HeaderValue::from_static("0123456789abcdef-01010content-length: 0  ");
        let mut out = Vec::new();
        assert_eq!(write_lines(&mut out, &forged), None);
        assert!(out.is_empty());
        // The token with lines that do not hold together writes nothing either.
        let mut bad = token().to_vec();
        bad.extend_from_slice(b"-01009content");
        let bad = HeaderValue::from_bytes(&bad).expect("valid");
        assert_eq!(write_lines(&mut out, &bad), None);
        assert!(out.is_empty());
        let mut extra = token().to_vec();
        extra.extend_from_slice(b"-01003abc  xyz");
        let extra = HeaderValue::from_bytes(&extra).expect("valid");
        assert_eq!(write_lines(&mut out, &extra), None);
        assert!(out.is_empty());
    }

    #[cfg(feature = "http2")]
    #[test]
    fn expands_into_fields_for_http2() {
        let map = fields(&[("content-type", "text/plain"), ("vary", "a"), ("vary", "b")]);
        let block = FieldBlock::from_fields(&map).expect("a block");
        let mut headers = HeaderMap::new();
        headers.insert("age", HeaderValue::from_static("3"));
        block.append_to(&mut headers);
        let forged = HeaderValue::from_static("not a block");
        headers.append(FIELD_BLOCK, forged.clone());
        expand(&mut headers);
        assert_eq!(headers.get("content-type").unwrap(), "text/plain");
        let vary: Vec<_> = headers.get_all("vary").iter().collect();
        assert_eq!(vary, ["a", "b"]);
        assert_eq!(headers.get("age").unwrap(), "3");
        let left: Vec<_> = headers.get_all(FIELD_BLOCK).iter().collect();
        assert_eq!(left, [&forged]);
    }
}
