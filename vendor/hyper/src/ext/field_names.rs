//! weir patch: the field names most heads carry, read without lowercasing.

use http::header::{self, HeaderName};

// Common names the `http` crate has no constant for: made from static bytes, so that
// reading one neither lowercases nor allocates (`from_bytes` copies a custom name into
// a new buffer).
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
const SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
const SEC_FETCH_USER: HeaderName = HeaderName::from_static("sec-fetch-user");
const SEC_CH_UA: HeaderName = HeaderName::from_static("sec-ch-ua");
const SEC_CH_UA_MOBILE: HeaderName = HeaderName::from_static("sec-ch-ua-mobile");
const SEC_CH_UA_PLATFORM: HeaderName = HeaderName::from_static("sec-ch-ua-platform");
const PRIORITY: HeaderName = HeaderName::from_static("priority");
const X_REQUESTED_WITH: HeaderName = HeaderName::from_static("x-requested-with");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_POWERED_BY: HeaderName = HeaderName::from_static("x-powered-by");

/// Writes [`common_header_name`] (names grouped by length, so that a name is compared
/// only with those as long) and [`COMMON_HEADER_SPELLINGS`] from one table.
macro_rules! common_names {
    ($($length:literal => { $($($spelling:literal)|+ => $name:expr,)+ })+) => {
        /// Every spelling [`common_header_name`] reads: the name as its specification
        /// and most clients write it, then any other usual spelling, then lowercase. For
        /// tests that hold the table to `HeaderName::from_bytes`.
        pub const COMMON_HEADER_SPELLINGS: &[&[u8]] = &[$($($($spelling,)+)+)+];

        /// The field name `bytes` when it is one most heads carry, spelled as clients and
        /// servers write them (`User-Agent` or `user-agent`): matched by length and one
        /// comparison. `HeaderName::from_bytes` lowercases every name into a buffer and
        /// then matches it, 100 to 200 instructions a field, and allocates for a name
        /// without a constant (`Sec-Fetch-Mode`, `X-Forwarded-For`). `None` for any other
        /// name or spelling (`from_bytes` reads it). hyper's head parsers use it, and so
        /// does weir's own upstream client.
        pub fn common_header_name(bytes: &[u8]) -> Option<HeaderName> {
            let name = match bytes.len() {
                $($length => match bytes {
                    $($($spelling)|+ => $name,)+
                    _ => return None,
                },)+
                _ => return None,
            };
            Some(name)
        }
    };
}

common_names! {
    2 => {
        b"TE" | b"te" => header::TE,
    }
    3 => {
        b"Via" | b"via" => header::VIA,
        b"DNT" | b"dnt" => header::DNT,
        b"Age" | b"age" => header::AGE,
    }
    4 => {
        b"Host" | b"host" => header::HOST,
        b"Date" | b"date" => header::DATE,
        b"ETag" | b"Etag" | b"etag" => header::ETAG,
        b"Vary" | b"vary" => header::VARY,
    }
    5 => {
        b"Range" | b"range" => header::RANGE,
    }
    6 => {
        b"Accept" | b"accept" => header::ACCEPT,
        b"Cookie" | b"cookie" => header::COOKIE,
        b"Origin" | b"origin" => header::ORIGIN,
        b"Pragma" | b"pragma" => header::PRAGMA,
        b"Expect" | b"expect" => header::EXPECT,
        b"Server" | b"server" => header::SERVER,
    }
    7 => {
        b"Referer" | b"referer" => header::REFERER,
        b"Upgrade" | b"upgrade" => header::UPGRADE,
        b"Expires" | b"expires" => header::EXPIRES,
    }
    8 => {
        b"If-Match" | b"if-match" => header::IF_MATCH,
        b"If-Range" | b"if-range" => header::IF_RANGE,
        b"Location" | b"location" => header::LOCATION,
        b"Priority" | b"priority" => PRIORITY,
    }
    9 => {
        b"Forwarded" | b"forwarded" => header::FORWARDED,
        b"X-Real-IP" | b"x-real-ip" => X_REAL_IP,
        b"sec-ch-ua" | b"Sec-CH-UA" => SEC_CH_UA,
    }
    10 => {
        b"User-Agent" | b"user-agent" => header::USER_AGENT,
        b"Connection" | b"connection" => header::CONNECTION,
        b"Set-Cookie" | b"set-cookie" => header::SET_COOKIE,
        b"tracestate" | b"Tracestate" => TRACESTATE,
        b"Keep-Alive" | b"keep-alive" => KEEP_ALIVE,
    }
    11 => {
        b"traceparent" | b"Traceparent" => TRACEPARENT,
    }
    12 => {
        b"Content-Type" | b"content-type" => header::CONTENT_TYPE,
        b"X-Request-ID" | b"X-Request-Id" | b"x-request-id" => X_REQUEST_ID,
        b"X-Powered-By" | b"x-powered-by" => X_POWERED_BY,
    }
    13 => {
        b"Authorization" | b"authorization" => header::AUTHORIZATION,
        b"If-None-Match" | b"if-none-match" => header::IF_NONE_MATCH,
        b"Cache-Control" | b"cache-control" => header::CACHE_CONTROL,
        b"Last-Modified" | b"last-modified" => header::LAST_MODIFIED,
        b"Accept-Ranges" | b"accept-ranges" => header::ACCEPT_RANGES,
    }
    14 => {
        b"Content-Length" | b"content-length" => header::CONTENT_LENGTH,
        b"Sec-Fetch-Dest" | b"sec-fetch-dest" => SEC_FETCH_DEST,
        b"Sec-Fetch-Mode" | b"sec-fetch-mode" => SEC_FETCH_MODE,
        b"Sec-Fetch-Site" | b"sec-fetch-site" => SEC_FETCH_SITE,
        b"Sec-Fetch-User" | b"sec-fetch-user" => SEC_FETCH_USER,
    }
    15 => {
        b"Accept-Encoding" | b"accept-encoding" => header::ACCEPT_ENCODING,
        b"Accept-Language" | b"accept-language" => header::ACCEPT_LANGUAGE,
        b"X-Frame-Options" | b"x-frame-options" => header::X_FRAME_OPTIONS,
        b"Referrer-Policy" | b"referrer-policy" => header::REFERRER_POLICY,
        b"X-Forwarded-For" | b"x-forwarded-for" => X_FORWARDED_FOR,
    }
    16 => {
        b"Content-Encoding" | b"content-encoding" => header::CONTENT_ENCODING,
        b"Content-Language" | b"content-language" => header::CONTENT_LANGUAGE,
        b"X-XSS-Protection" | b"x-xss-protection" => header::X_XSS_PROTECTION,
        b"X-Forwarded-Host" | b"x-forwarded-host" => X_FORWARDED_HOST,
        b"X-Forwarded-Port" | b"x-forwarded-port" => X_FORWARDED_PORT,
        b"sec-ch-ua-mobile" | b"Sec-CH-UA-Mobile" => SEC_CH_UA_MOBILE,
        b"X-Requested-With" | b"x-requested-with" => X_REQUESTED_WITH,
    }
    17 => {
        b"If-Modified-Since" | b"if-modified-since" => header::IF_MODIFIED_SINCE,
        b"Transfer-Encoding" | b"transfer-encoding" => header::TRANSFER_ENCODING,
        b"X-Forwarded-Proto" | b"x-forwarded-proto" => X_FORWARDED_PROTO,
    }
    18 => {
        b"sec-ch-ua-platform" | b"Sec-CH-UA-Platform" => SEC_CH_UA_PLATFORM,
    }
    19 => {
        b"Proxy-Authorization" | b"proxy-authorization" => header::PROXY_AUTHORIZATION,
        b"Content-Disposition" | b"content-disposition" => header::CONTENT_DISPOSITION,
    }
    22 => {
        b"X-Content-Type-Options" | b"x-content-type-options" => header::X_CONTENT_TYPE_OPTIONS,
    }
    23 => {
        b"Content-Security-Policy" | b"content-security-policy" => header::CONTENT_SECURITY_POLICY,
    }
    25 => {
        b"Upgrade-Insecure-Requests" | b"upgrade-insecure-requests" => header::UPGRADE_INSECURE_REQUESTS,
        b"Strict-Transport-Security" | b"strict-transport-security" => header::STRICT_TRANSPORT_SECURITY,
    }
    27 => {
        b"Access-Control-Allow-Origin" | b"access-control-allow-origin" => header::ACCESS_CONTROL_ALLOW_ORIGIN,
    }
    29 => {
        b"Access-Control-Request-Method" | b"access-control-request-method" => header::ACCESS_CONTROL_REQUEST_METHOD,
        b"Access-Control-Expose-Headers" | b"access-control-expose-headers" => header::ACCESS_CONTROL_EXPOSE_HEADERS,
    }
    30 => {
        b"Access-Control-Request-Headers" | b"access-control-request-headers" => header::ACCESS_CONTROL_REQUEST_HEADERS,
    }
    32 => {
        b"Access-Control-Allow-Credentials" | b"access-control-allow-credentials" => header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
    }
}
