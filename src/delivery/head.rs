//! Request heads, parsed strictly with httparse (the parser hyper uses).
//!
//! The driver serves only requests it understands completely: no body, one
//! Host, no framing ambiguity. Anything that carries a body or asks for
//! protocol changes (`Transfer-Encoding`, a non-zero `Content-Length`,
//! `Expect`, `Upgrade`, the HTTP/2 preface) is handed to hyper with the bytes
//! already read. Anything ambiguous, the classic request-smuggling shapes,
//! gets 400 and a close: two `Content-Length` or `Host` fields,
//! `Content-Length` with `Transfer-Encoding`, obsolete line folding, a bare LF.

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use crate::config::HttpSettings;

/// What the bytes at the start of the connection buffer are.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request the driver serves itself; `len` bytes of head consumed.
    Request { request: Box<Request<()>>, len: usize, keep_alive: bool },
    /// A request for hyper: leave every byte in the buffer.
    Handoff(&'static str),
    /// Refuse with this status, then close.
    Reject(StatusCode, &'static str),
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The most header fields a request may have, whatever the configuration
/// says: parsing uses a stack array of this size (no allocation).
pub const MAX_HEADERS: usize = 128;

pub fn parse(buf: &[u8], limits: &HttpSettings) -> Parsed {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] && n > 0 {
        return if n == H2_PREFACE.len() { Parsed::Handoff("HTTP/2 prior knowledge") } else { Parsed::Partial };
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers[..limits.max_headers.min(MAX_HEADERS)]);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() > limits.max_head_bytes => {
            return Parsed::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large")
        }
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "too many header fields")
        }
        Err(httparse::Error::Version) => {
            return Parsed::Reject(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1")
        }
        Err(_) => return Parsed::Reject(StatusCode::BAD_REQUEST, "malformed request head"),
    };
    if len > limits.max_head_bytes {
        return Parsed::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large");
    }
    if has_bare_lf(&buf[..len]) {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "bare LF in request head");
    }
    build(&req, len)
}

/// httparse accepts a lone `\n` as a line end; HTTP/1.1 front ends may not,
/// and a disagreement between two parsers is how smuggling starts.
fn has_bare_lf(head: &[u8]) -> bool {
    head.iter().enumerate().any(|(i, &b)| b == b'\n' && (i == 0 || head[i - 1] != b'\r'))
}

fn build(req: &httparse::Request<'_, '_>, len: usize) -> Parsed {
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Parsed::Reject(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1"),
    };
    let Ok(method) = Method::from_bytes(req.method.unwrap_or_default().as_bytes()) else {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid method");
    };
    let target = req.path.unwrap_or_default();
    if !(target.starts_with('/') || (target == "*" && method == Method::OPTIONS) || target.starts_with("http")) {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid request target");
    }
    let Ok(uri) = target.parse::<Uri>() else {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid request target");
    };
    // Origin-form, `OPTIONS *` or absolute-form with an http(s) scheme and a
    // host: never authority-form (`GET host:80`) nor a scheme that merely
    // starts with "http" (found by the `head` fuzz target).
    let origin = target.starts_with('/') || target == "*";
    let absolute = uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
        && uri.authority().is_some();
    if !(origin || absolute) {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid request target");
    }

    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let (mut hosts, mut lengths, mut close, mut keep) = (0, 0, false, false);
    for h in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
            return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid header name");
        };
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Parsed::Reject(StatusCode::BAD_REQUEST, "obsolete line folding");
        }
        let Ok(value) = HeaderValue::from_bytes(h.value) else {
            return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid header value");
        };
        match name.as_str() {
            "host" => hosts += 1,
            "content-length" => {
                lengths += 1;
                match std::str::from_utf8(h.value)
                    .ok()
                    .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                {
                    Some(v) if v.trim_start_matches('0').is_empty() => {}
                    Some(_) => return after_checks(req, "a request body"),
                    None => return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid Content-Length"),
                }
            }
            "transfer-encoding" => return after_checks(req, "Transfer-Encoding"),
            "expect" => return after_checks(req, "Expect"),
            "upgrade" => return after_checks(req, "Upgrade"),
            "connection" => {
                // Bytes, not `to_str`: one non-ASCII token must not hide a
                // `close` next to it (found by the `head` fuzz target).
                for token in h.value.split(|&b| b == b',') {
                    let token = token.trim_ascii();
                    close |= token.eq_ignore_ascii_case(b"close");
                    keep |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            _ => {}
        }
        headers.append(name, value);
    }
    if hosts > 1 || lengths > 1 {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "duplicate Host or Content-Length");
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "HTTP/1.1 request without Host");
    }
    let keep_alive = if version == Version::HTTP_11 { !close } else { keep && !close };
    let mut request = Request::new(());
    *request.method_mut() = method;
    *request.uri_mut() = uri;
    *request.version_mut() = version;
    *request.headers_mut() = headers;
    Parsed::Request { request: Box::new(request), len, keep_alive }
}

/// A request headed for hyper must still pass the checks that make framing
/// unambiguous: hyper would refuse some of them too, but one place decides.
fn after_checks(req: &httparse::Request<'_, '_>, why: &'static str) -> Parsed {
    let count = |name: &str| req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case(name)).count();
    let (hosts, lengths, codings) = (count("host"), count("content-length"), count("transfer-encoding"));
    if hosts > 1 || lengths > 1 {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "duplicate Host or Content-Length");
    }
    if lengths > 0 && codings > 0 {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "both Content-Length and Transfer-Encoding");
    }
    if req.headers.iter().any(|h| h.value.iter().any(|&b| b == b'\r' || b == b'\n')) {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "obsolete line folding");
    }
    Parsed::Handoff(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(raw: &str) -> Parsed {
        parse(raw.as_bytes(), &HttpSettings::default())
    }

    fn rejected(raw: &str) -> bool {
        matches!(p(raw), Parsed::Reject(..))
    }

    #[test]
    fn plain_get() {
        match p("GET /tiles HTTP/1.1\r\nHost: a\r\n\r\nGET /next") {
            Parsed::Request { request, len, keep_alive } => {
                assert_eq!(request.uri().path(), "/tiles");
                assert_eq!(len, "GET /tiles HTTP/1.1\r\nHost: a\r\n\r\n".len());
                assert!(keep_alive);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p("GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial));
    }

    #[test]
    fn keep_alive_rules() {
        let keep = |raw: &str| match p(raw) {
            Parsed::Request { keep_alive, .. } => keep_alive,
            other => panic!("{other:?}"),
        };
        assert!(!keep("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        let odd = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep\xe0alive, close\r\n\r\n";
        match parse(odd, &HttpSettings::default()) {
            Parsed::Request { keep_alive, .. } => assert!(!keep_alive, "close next to a non-ASCII token"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn smuggling_shapes_are_refused_or_handed_off() {
        assert!(rejected("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"));
        assert!(rejected("GET / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"));
        assert!(rejected("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 5\r\n\r\n"));
        assert!(rejected("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
        assert!(rejected("GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n"));
        assert!(rejected("GET / HTTP/1.1\nHost: a\n\n"));
        assert!(rejected("GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 needs Host");
        assert!(rejected("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n"));
        assert!(matches!(p("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"), Parsed::Handoff(_)));
        assert!(matches!(p("GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\n\r\n"), Parsed::Handoff(_)));
        assert!(matches!(p("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), Parsed::Handoff(_)));
        assert!(matches!(p("PRI * HTTP/2.0\r\n"), Parsed::Partial));
    }

    #[test]
    fn limits() {
        let long = format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(20_000));
        assert!(matches!(p(&long), Parsed::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, _)));
        let many: String = (0..100).map(|i| format!("X-{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n");
        assert!(matches!(p(&raw), Parsed::Reject(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, _)));
        assert!(rejected("GET / HTTP/3.0\r\nHost: a\r\n\r\n"));
        assert!(rejected("G@T / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(rejected("GET http:80 HTTP/1.1\r\nHost: a\r\n\r\n"), "authority-form");
        assert!(rejected("GET httpx://a/logs/dev/app.log HTTP/1.1\r\nHost: a\r\n\r\n"), "not an http scheme");
        assert!(!rejected("GET http://a/tiles HTTP/1.1\r\nHost: a\r\n\r\n"), "absolute-form");
    }
}
