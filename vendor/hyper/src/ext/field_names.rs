//! weir patch: the field names most heads carry, read without lowercasing.

use http::header::{self, HeaderName};

/// The field name `bytes` when it is one most heads carry, spelled as clients and servers
/// write them (`User-Agent` or `user-agent`): matched by length and one comparison.
/// `HeaderName::from_bytes` lowercases every name into a buffer and then matches it, 100
/// to 200 instructions a field. `None` for any other name or spelling (`from_bytes` reads
/// it). hyper's head parsers use it, and so does weir's own upstream client.
pub fn common_header_name(bytes: &[u8]) -> Option<HeaderName> {
    let name = match bytes.len() {
        3 => match bytes {
            b"Age" | b"age" => header::AGE,
            _ => return None,
        },
        4 => match bytes {
            b"Host" | b"host" => header::HOST,
            b"Date" | b"date" => header::DATE,
            b"ETag" | b"Etag" | b"etag" => header::ETAG,
            b"Vary" | b"vary" => header::VARY,
            _ => return None,
        },
        6 => match bytes {
            b"Accept" | b"accept" => header::ACCEPT,
            b"Cookie" | b"cookie" => header::COOKIE,
            b"Origin" | b"origin" => header::ORIGIN,
            b"Server" | b"server" => header::SERVER,
            _ => return None,
        },
        7 => match bytes {
            b"Referer" | b"referer" => header::REFERER,
            b"Expires" | b"expires" => header::EXPIRES,
            _ => return None,
        },
        8 => match bytes {
            b"Location" | b"location" => header::LOCATION,
            _ => return None,
        },
        10 => match bytes {
            b"User-Agent" | b"user-agent" => header::USER_AGENT,
            b"Connection" | b"connection" => header::CONNECTION,
            b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
            _ => return None,
        },
        12 => match bytes {
            b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
            _ => return None,
        },
        13 => match bytes {
            b"Authorization" | b"authorization" => header::AUTHORIZATION,
            b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
            b"If-None-Match" | b"if-none-match" => header::IF_NONE_MATCH,
            b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
            b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
            _ => return None,
        },
        14 => match bytes {
            b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
            _ => return None,
        },
        15 => match bytes {
            b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
            b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
            _ => return None,
        },
        16 => match bytes {
            b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
            _ => return None,
        },
        17 => match bytes {
            b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
            b"If-Modified-Since" | b"if-modified-since" => header::IF_MODIFIED_SINCE,
            _ => return None,
        },
        _ => return None,
    };
    Some(name)
}
