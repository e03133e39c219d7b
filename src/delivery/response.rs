//! Writing a response head: the status line and the headers as the Router
//! gave them, then what the connection decides (Date, framing,
//! `Connection`). The Date value is formatted at most once a second per
//! thread.

use std::cell::RefCell;
use std::time::SystemTime;

use axum::http::{header, StatusCode, Version};

pub(super) fn write_status_and_headers(out: &mut Vec<u8>, parts: &axum::http::response::Parts) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    // A 204 never has a body, and a 304's Content-Length would have to be
    // the length of the 200 it stands for (RFC 9110 8.6): axum sets 0 for
    // their empty bodies, which is wrong for both, so drop it (as hyper does).
    let no_length = bodiless_status(parts.status);
    for (name, value) in &parts.headers {
        // Framing and connection management are the driver's to decide.
        if name == header::CONNECTION
            || name == header::TRANSFER_ENCODING
            || (no_length && name == header::CONTENT_LENGTH)
        {
            continue;
        }
        push_header(out, name.as_str(), value.as_bytes());
    }
}

pub(super) fn write_date(out: &mut Vec<u8>, parts: &axum::http::response::Parts) {
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        with_http_date(|date| out.extend_from_slice(date.as_bytes()));
        out.extend_from_slice(b"\r\n");
    }
}

/// `Connection` as the request and version call for, and the head's end.
pub(super) fn finish_head(out: &mut Vec<u8>, keep_alive: bool, version: Version) {
    if !keep_alive {
        push_header(out, "connection", b"close");
    } else if version == Version::HTTP_10 {
        push_header(out, "connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Statuses whose responses never carry a body nor a body length.
pub(super) fn bodiless_status(status: StatusCode) -> bool {
    status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED || status.is_informational()
}

pub(super) fn push_header(out: &mut Vec<u8>, name: &str, value: &[u8]) {
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Calls `f` with the Date header value, formatted at most once a second per thread.
pub(super) fn with_http_date<R>(f: impl FnOnce(&str) -> R) -> R {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((0, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        f(&c.1)
    })
}

pub(super) fn http_date_string() -> String {
    with_http_date(str::to_owned)
}
