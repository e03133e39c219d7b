//! The request-head path of the connection driver: `delivery::head::parse`,
//! then `Head::request` as the driver builds it for the Router (a request it
//! cannot build is refused), fed the way the driver feeds it (a growing buffer, then the rest after
//! each request it serves), with the default limits and with tight ones.
//!
//! Invariants, beyond "never panics":
//!  * a `Request { len }` has `0 < len <= buf.len()`, its head ends with
//!    CRLF CRLF, has no bare LF, and parsing exactly `buf[..len]` gives the
//!    same request (a head delimits itself; what follows cannot change it);
//!  * the outcome does not depend on how the bytes were split into reads:
//!    whenever a prefix of the buffer already gives an answer (not Partial),
//!    the whole buffer gives the same answer (the same request and `len`, the
//!    same hand-off reason, a refusal for a refusal);
//!  * parsing is deterministic;
//!  * a served request is one the driver can serve without framing doubts:
//!    HTTP/1.0 or 1.1, exactly one Host for 1.1 (at most one for 1.0), no
//!    body (at most one Content-Length and it is zero), no
//!    Transfer-Encoding, Expect or Upgrade, at most `max_headers` fields;
//!  * its target is origin-form (path starts with '/'), `*` for OPTIONS, or
//!    absolute-form (http or https with an authority), never authority-form
//!    or an empty path;
//!  * `Connection: close` is never kept alive; HTTP/1.0 is kept alive only
//!    when it asked for keep-alive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tessera::config::HttpSettings;
use tessera::config::MAX_HEADERS;
use tessera::delivery::head::{parse, Head, Parsed};

/// At most this many pipelined requests are followed in one input.
const MAX_PIPELINED: usize = 8;
/// Prefixes checked per head beyond the first `ALL_PREFIXES` bytes.
const SAMPLED_PREFIXES: usize = 48;
const ALL_PREFIXES: usize = 192;

fuzz_target!(|data: &[u8]| {
    let default = HttpSettings::default();
    let tight = HttpSettings { max_head_bytes: 96, max_headers: 3, ..HttpSettings::default() };
    drive(data, &default);
    drive(data, &tight);
});

/// What the driver would do with a parse result, comparable across parses.
#[derive(Debug, PartialEq)]
enum Outcome {
    Partial,
    Request { len: usize, keep_alive: bool, summary: String },
    Handoff(&'static str),
    Reject,
}

fn outcome(buf: &[u8], parsed: &Parsed) -> Outcome {
    match parsed {
        Parsed::Partial => Outcome::Partial,
        Parsed::Request(head) => match head.request(buf) {
            Ok(request) => Outcome::Request {
                len: head.len,
                keep_alive: head.keep_alive,
                summary: format!(
                    "{} {} {:?} {:?} {}",
                    request.method(),
                    request.uri(),
                    request.version(),
                    request.headers(),
                    head.target(buf)
                ),
            },
            Err(_) => Outcome::Reject,
        },
        Parsed::Handoff(why) => Outcome::Handoff(why),
        Parsed::Reject(..) => Outcome::Reject,
    }
}

/// The driver's loop over one connection's bytes: parse, serve, advance.
fn drive(data: &[u8], limits: &HttpSettings) {
    let mut buf = data;
    for _ in 0..MAX_PIPELINED {
        if buf.is_empty() {
            return;
        }
        let parsed = parse(buf, limits);
        let again = outcome(buf, &parse(buf, limits));
        let got = outcome(buf, &parsed);
        assert_eq!(got, again, "parse is not deterministic");
        check_prefixes(buf, limits, &got);
        match parsed {
            Parsed::Request(head) => {
                let Ok(request) = head.request(buf) else { return };
                check_request(buf, limits, &request, &head);
                buf = &buf[head.len..];
            }
            Parsed::Reject(status, why) => {
                assert!(status.is_client_error() || status.is_server_error(), "refusal with {status} ({why})");
                return;
            }
            Parsed::Partial | Parsed::Handoff(_) => return,
        }
    }
}

/// A read may end anywhere: every prefix of `buf` that already gives an
/// answer must give the answer the whole buffer gives.
fn check_prefixes(buf: &[u8], limits: &HttpSettings, whole: &Outcome) {
    let check = |k: usize| {
        if k == 0 || k >= buf.len() {
            return;
        }
        let early = outcome(&buf[..k], &parse(&buf[..k], limits));
        if early == Outcome::Partial {
            return;
        }
        assert_eq!(
            &early,
            whole,
            "a read ending after {k} of {} bytes decides differently from the whole buffer",
            buf.len()
        );
    };
    let end = match whole {
        // Past a served head the prefix is that head plus part of the next.
        Outcome::Request { len, .. } => *len,
        _ => buf.len(),
    };
    for k in 1..end.min(ALL_PREFIXES) {
        check(k);
    }
    if end > ALL_PREFIXES {
        // Line ends, then a spread of others, all deterministic.
        let mut n = 0;
        for (i, &b) in buf[..end].iter().enumerate().skip(ALL_PREFIXES) {
            if n < SAMPLED_PREFIXES && (b == b'\n' || b == b'\r' || b == b':') {
                check(i);
                check(i + 1);
                n += 1;
            }
        }
        let step = (end / SAMPLED_PREFIXES).max(1);
        for k in (ALL_PREFIXES..end).step_by(step) {
            check(k);
        }
    }
}

fn check_request(buf: &[u8], limits: &HttpSettings, request: &http::Request<()>, parsed: &Head) {
    use http::{header, Method, Version};

    let (len, keep_alive) = (parsed.len, parsed.keep_alive);
    // A replayable head is one whose answer depends on its target alone.
    let target = parsed.target(buf);
    if parsed.replayable() {
        let conditional = [
            header::RANGE,
            header::IF_NONE_MATCH,
            header::IF_MODIFIED_SINCE,
            header::IF_MATCH,
            header::IF_UNMODIFIED_SINCE,
            header::IF_RANGE,
        ];
        assert!(!conditional.iter().any(|h| request.headers().contains_key(h)), "a conditional request is replayable");
        assert!(
            request.method() == Method::GET || request.method() == Method::HEAD,
            "a {} is replayable",
            request.method()
        );
        assert!(target.starts_with('/'), "replayable target {target:?} is not origin-form");
    }
    assert!(len > 0 && len <= buf.len(), "len {len} outside a buffer of {}", buf.len());
    let head = &buf[..len];
    assert!(head.ends_with(b"\r\n\r\n"), "a served head does not end with CRLF CRLF");
    assert!(len <= limits.max_head_bytes, "a served head of {len} bytes is over the limit");
    for (i, &b) in head.iter().enumerate() {
        assert!(b != b'\n' || (i > 0 && head[i - 1] == b'\r'), "bare LF at {i} in a served head");
    }
    // The head alone, with nothing after it, is the same request.
    let alone = outcome(head, &parse(head, limits));
    match &alone {
        Outcome::Request { len: l, .. } if *l == len => {}
        other => panic!("the head alone parses as {other:?}, not as the request"),
    }

    let version = request.version();
    assert!(version == Version::HTTP_10 || version == Version::HTTP_11, "served {version:?}");
    let h = request.headers();
    assert!(h.len() <= limits.max_headers.min(MAX_HEADERS), "{} header fields served", h.len());
    let hosts = h.get_all(header::HOST).iter().count();
    if version == Version::HTTP_11 {
        assert_eq!(hosts, 1, "an HTTP/1.1 request served with {hosts} Host fields");
    } else {
        assert!(hosts <= 1, "an HTTP/1.0 request served with {hosts} Host fields");
    }
    let lengths: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
    assert!(lengths.len() <= 1, "served with {} Content-Length fields", lengths.len());
    if let Some(v) = lengths.first() {
        let v = v.as_bytes();
        assert!(!v.is_empty() && v.iter().all(|&b| b == b'0'), "served with a body: Content-Length {v:?}");
    }
    for name in [header::TRANSFER_ENCODING, header::EXPECT, header::UPGRADE] {
        assert!(!h.contains_key(&name), "served despite {name}");
    }
    for (name, value) in h {
        assert!(!value.as_bytes().iter().any(|&b| b == b'\r' || b == b'\n'), "CR or LF inside {name}");
    }

    let uri = request.uri();
    match uri.scheme_str() {
        None => assert!(
            uri.path().starts_with('/') || (uri == "*" && request.method() == Method::OPTIONS),
            "served a request whose target {uri:?} is neither origin-form, absolute-form nor OPTIONS * (path {:?}, authority {:?})",
            uri.path(),
            uri.authority()
        ),
        Some(scheme) => {
            assert!(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"), "scheme {scheme}");
            assert!(uri.authority().is_some(), "absolute-form target {uri:?} without an authority");
            assert!(uri.path().starts_with('/'), "absolute-form target {uri:?} with path {:?}", uri.path());
        }
    }

    // Connection tokens, read from the raw bytes (not only the ASCII ones).
    let (mut close, mut keep) = (false, false);
    for value in h.get_all(header::CONNECTION) {
        for token in value.as_bytes().split(|&b| b == b',') {
            let token = token.trim_ascii();
            close |= token.eq_ignore_ascii_case(b"close");
            keep |= token.eq_ignore_ascii_case(b"keep-alive");
        }
    }
    if close {
        assert!(!keep_alive, "Connection: close kept alive");
    }
    if version == Version::HTTP_10 && keep_alive {
        assert!(keep, "an HTTP/1.0 request kept alive without Connection: keep-alive");
    }
}
