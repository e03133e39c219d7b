//! Request heads, parsed strictly with httparse (the parser hyper uses).
//!
//! The driver serves only requests it understands completely: no body, one
//! Host, no framing ambiguity. Anything that carries a body or asks for
//! protocol changes (`Transfer-Encoding`, a non-zero `Content-Length`,
//! `Expect`, `Upgrade`, the HTTP/2 preface) is handed to hyper with the bytes
//! already read. Anything ambiguous, the classic request-smuggling shapes,
//! gets 400 and a close: two `Content-Length` or `Host` fields,
//! `Content-Length` with `Transfer-Encoding`, obsolete line folding, a bare LF.

use std::mem::MaybeUninit;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use crate::config::HttpSettings;

/// What the bytes at the start of the connection buffer are.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet.
    Partial,
    /// A request the driver serves itself.
    Request(Head),
    /// A request for hyper: leave every byte in the buffer.
    Handoff(&'static str),
    /// Refuse with this status, then close.
    Reject(StatusCode, &'static str),
}

/// A checked request head, not yet built into an `http::Request`: a replay
/// needs only the method, the target and a few facts about the fields, so
/// the `Request` (its `Uri`, `HeaderMap` and their allocations, a third of a
/// replay's instructions in callgrind) is built only for the Router.
#[derive(Debug)]
pub struct Head {
    pub method: Method,
    pub version: Version,
    /// Bytes of the buffer this head takes.
    pub len: usize,
    pub keep_alive: bool,
    /// Where the request target is in the head.
    target: (usize, usize),
    /// The target is origin-form (starts with `/`).
    origin_form: bool,
    /// No `Range`, no conditional field and no `Authorization`: for a GET or
    /// HEAD of an origin-form target, the answer depends on the target alone.
    pub unconditional: bool,
}

impl Head {
    /// The request target as sent, from the buffer this head was parsed from.
    pub fn target<'a>(&self, buf: &'a [u8]) -> &'a str {
        // httparse hands out the target as `&str`: the range is valid UTF-8.
        std::str::from_utf8(&buf[self.target.0..self.target.1]).unwrap_or_default()
    }

    /// Whether a replay could answer: a GET or HEAD of an origin-form target
    /// without a range or a condition.
    pub fn replayable(&self) -> bool {
        (self.method == Method::GET || self.method == Method::HEAD) && self.unconditional && self.origin_form
    }

    /// The `Request` for the Router, built from the same head. Fails (400)
    /// on what only `http`'s own types refuse: a target `Uri` rejects, or a
    /// field name or value `HeaderName` or `HeaderValue` rejects.
    pub fn request(&self, buf: &[u8]) -> Result<Request<()>, (StatusCode, &'static str)> {
        let head = &buf[..self.len];
        let mut fields = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut []);
        if !matches!(req.parse_with_uninit_headers(head, &mut fields), Ok(httparse::Status::Complete(_))) {
            return Err((StatusCode::BAD_REQUEST, "malformed request head"));
        }
        let Ok(uri) = self.target(buf).parse::<Uri>() else {
            return Err((StatusCode::BAD_REQUEST, "invalid request target"));
        };
        let mut headers = HeaderMap::with_capacity(req.headers.len());
        for h in req.headers.iter() {
            let Ok(name) = HeaderName::from_bytes(h.name.as_bytes()) else {
                return Err((StatusCode::BAD_REQUEST, "invalid header name"));
            };
            let Ok(value) = HeaderValue::from_bytes(h.value) else {
                return Err((StatusCode::BAD_REQUEST, "invalid header value"));
            };
            headers.append(name, value);
        }
        let mut request = Request::new(());
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        *request.version_mut() = self.version;
        *request.headers_mut() = headers;
        Ok(request)
    }
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Parsing uses a stack array of this size (no allocation).
const MAX_HEADERS: usize = crate::config::MAX_HEADERS;

pub fn parse(buf: &[u8], limits: &HttpSettings) -> Parsed {
    let n = buf.len().min(H2_PREFACE.len());
    if buf[..n] == H2_PREFACE[..n] && n > 0 {
        return if n == H2_PREFACE.len() { Parsed::Handoff("HTTP/2 prior knowledge") } else { Parsed::Partial };
    }
    // Uninitialised slots: initialising 128 empty fields was a 4 KiB
    // memset per request (callgrind).
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut headers[..limits.max_headers.min(MAX_HEADERS)]) {
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
    check(buf, &req, len)
}

/// httparse accepts a lone `\n` as a line end; HTTP/1.1 front ends may not,
/// and a disagreement between two parsers is how smuggling starts.
fn has_bare_lf(head: &[u8]) -> bool {
    // memchr: a byte-by-byte pass cost twice the instructions (callgrind).
    memchr::memchr_iter(b'\n', head).any(|i| i == 0 || head[i - 1] != b'\r')
}

/// Everything that decides between serving, handing off and refusing, on
/// httparse's slices (httparse has already refused control characters in
/// values and anything but token characters in names).
fn check(buf: &[u8], req: &httparse::Request<'_, '_>, len: usize) -> Parsed {
    let version = match req.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Parsed::Reject(StatusCode::HTTP_VERSION_NOT_SUPPORTED, "only HTTP/1.0 and HTTP/1.1"),
    };
    let Ok(method) = Method::from_bytes(req.method.unwrap_or_default().as_bytes()) else {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid method");
    };
    let target = req.path.unwrap_or_default();
    // Origin-form, `OPTIONS *` or absolute-form with an http(s) scheme and a
    // host: never authority-form (`GET host:80`) nor a scheme that merely
    // starts with "http" (found by the `head` fuzz target). An origin-form
    // target's characters are `Uri`'s to judge, in `Head::request`.
    let origin = target.starts_with('/') || (target == "*" && method == Method::OPTIONS);
    if !origin && !is_absolute_http(target) {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid request target");
    }
    let start = target.as_ptr() as usize - buf.as_ptr() as usize;

    let (mut hosts, mut lengths, mut close, mut keep) = (0, 0, false, false);
    let mut unconditional = true;
    for h in req.headers.iter() {
        if h.value.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Parsed::Reject(StatusCode::BAD_REQUEST, "obsolete line folding");
        }
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("content-length") {
            lengths += 1;
            match std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())) {
                Some(v) if v.trim_start_matches('0').is_empty() => {}
                Some(_) => return after_checks(req, "a request body"),
                None => return Parsed::Reject(StatusCode::BAD_REQUEST, "invalid Content-Length"),
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return after_checks(req, "Transfer-Encoding");
        } else if name.eq_ignore_ascii_case("expect") {
            return after_checks(req, "Expect");
        } else if name.eq_ignore_ascii_case("upgrade") {
            return after_checks(req, "Upgrade");
        } else if name.eq_ignore_ascii_case("connection") {
            // Bytes, not `to_str`: one non-ASCII token must not hide a
            // `close` next to it (found by the `head` fuzz target).
            for token in h.value.split(|&b| b == b',') {
                let token = token.trim_ascii();
                close |= token.eq_ignore_ascii_case(b"close");
                keep |= token.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("range")
            || name.len() > 3 && name[..3].eq_ignore_ascii_case("if-")
            || name.eq_ignore_ascii_case("authorization")
        {
            // A credential is the access rules' to judge, in the Router.
            unconditional = false;
        }
    }
    if hosts > 1 || lengths > 1 {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "duplicate Host or Content-Length");
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return Parsed::Reject(StatusCode::BAD_REQUEST, "HTTP/1.1 request without Host");
    }
    let keep_alive = if version == Version::HTTP_11 { !close } else { keep && !close };
    Parsed::Request(Head {
        method,
        version,
        len,
        keep_alive,
        target: (start, start + target.len()),
        origin_form: target.starts_with('/'),
        unconditional,
    })
}

/// An absolute-form target with an http or https scheme and an authority.
fn is_absolute_http(target: &str) -> bool {
    target.starts_with("http")
        && target.parse::<Uri>().is_ok_and(|uri| {
            uri.scheme_str().is_some_and(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"))
                && uri.authority().is_some()
        })
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

    /// Refused by the parse, or by building the `Request` (as the driver does
    /// for any request it does not replay).
    fn rejected(raw: &str) -> bool {
        match p(raw) {
            Parsed::Reject(..) => true,
            Parsed::Request(head) => head.request(raw.as_bytes()).is_err(),
            _ => false,
        }
    }

    #[test]
    fn plain_get() {
        let raw = "GET /tiles?v=1 HTTP/1.1\r\nHost: a\r\nIf-None-Match: \"x\"\r\n\r\nGET /next";
        match p(raw) {
            Parsed::Request(head) => {
                assert_eq!(head.target(raw.as_bytes()), "/tiles?v=1");
                assert_eq!(head.len, raw.len() - "GET /next".len());
                assert!(head.keep_alive);
                assert!(!head.unconditional && !head.replayable());
                let request = head.request(raw.as_bytes()).expect("a request");
                assert_eq!(request.uri().path(), "/tiles");
                assert_eq!(request.headers()["if-none-match"], "\"x\"");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(p("GET / HTTP/1.1\r\nHost: a\r\n"), Parsed::Partial));
    }

    #[test]
    fn keep_alive_rules() {
        let keep = |raw: &str| match p(raw) {
            Parsed::Request(head) => head.keep_alive,
            other => panic!("{other:?}"),
        };
        assert!(!keep("GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"));
        assert!(!keep("GET / HTTP/1.0\r\n\r\n"));
        assert!(keep("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"));
        let odd = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep\xe0alive, close\r\n\r\n";
        match parse(odd, &HttpSettings::default()) {
            Parsed::Request(head) => assert!(!head.keep_alive, "close next to a non-ASCII token"),
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
        assert!(rejected("GET /a<b> HTTP/1.1\r\nHost: a\r\n\r\n"), "a target Uri refuses");
    }

    #[test]
    fn replayable_heads() {
        let replayable = |raw: &str| match p(raw) {
            Parsed::Request(head) => head.replayable(),
            other => panic!("{other:?}"),
        };
        assert!(replayable("GET /tiles/a/0/0/0.png HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n"));
        assert!(replayable("HEAD /x HTTP/1.0\r\n\r\n"));
        assert!(!replayable("GET /x HTTP/1.1\r\nHost: a\r\nrange: bytes=0-1\r\n\r\n"));
        assert!(!replayable("GET /x HTTP/1.1\r\nHost: a\r\nIF-MODIFIED-SINCE: x\r\n\r\n"));
        assert!(!replayable("POST /x HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(!replayable("GET http://a/x HTTP/1.1\r\nHost: a\r\n\r\n"), "absolute-form goes to the Router");
    }
}
