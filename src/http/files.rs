//! File responses: validators, conditional requests and byte ranges, the same
//! for tiles and logs.
//!
//! Preconditions are evaluated in the order of RFC 9110 section 13.2.2:
//! If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, then
//! If-Range decides whether Range applies.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use http_range_header::{EndPosition, StartPosition};
use sha2::Digest;

use crate::cache::FileEntry;
use crate::delivery::{FileBody, FileSlice};

/// The part of the file a request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    Whole,
    /// One satisfiable range: first and last byte, inclusive.
    Range(u64, u64),
    Unsatisfiable,
}

/// Answers a GET or HEAD for an open file.
pub fn respond(method: &Method, headers: &HeaderMap, entry: Arc<FileEntry>) -> Response {
    let etag = entry.etag.to_str().unwrap_or_default();
    if let Some(status) = precondition(headers, etag, entry.validators.modified()) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        let h = response.headers_mut();
        h.insert(header::ETAG, entry.etag.clone());
        h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
        h.insert(header::CACHE_CONTROL, entry.cache_control.clone());
        return response;
    }

    let len = entry.len();
    let selection =
        if if_range_allows(headers, &entry) { select(headers.get(header::RANGE), len) } else { Selection::Whole };
    let (status, offset, count) = match selection {
        Selection::Whole => (StatusCode::OK, 0, len),
        Selection::Range(first, last) => (StatusCode::PARTIAL_CONTENT, first, last - first + 1),
        Selection::Unsatisfiable => {
            let mut response = Response::new(Body::empty());
            *response.status_mut() = StatusCode::RANGE_NOT_SATISFIABLE;
            let h = response.headers_mut();
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"));
            h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
            h.insert(header::ETAG, entry.etag.clone());
            return response;
        }
    };

    let slice = FileSlice { entry: entry.clone(), offset, len: count };
    let mut response = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let mut response = Response::new(Body::new(FileBody::new(&slice)));
        response.extensions_mut().insert(slice);
        response
    };
    *response.status_mut() = status;
    // Room for these and the CORS headers added on the way out: no regrowth.
    *response.headers_mut() = HeaderMap::with_capacity(12);
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, entry.content_type.clone());
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(count));
    h.insert(header::ETAG, entry.etag.clone());
    h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
    h.insert(header::CACHE_CONTROL, entry.cache_control.clone());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        let range = format!("bytes {}-{}/{}", offset, offset + count - 1, len);
        h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&range).expect("ascii"));
    }
    response
}

/// 412 or 304 if a precondition says so, in RFC 9110's order, for a
/// representation with these validators.
pub fn precondition(headers: &HeaderMap, etag: &str, modified: SystemTime) -> Option<StatusCode> {
    let modified = truncate_to_seconds(modified);
    if let Some(if_match) = header_str(headers, header::IF_MATCH) {
        if !etag_list_matches(if_match, etag, true) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let Some(since) = header_date(headers, header::IF_UNMODIFIED_SINCE) {
        if modified > since {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    if let Some(if_none_match) = header_str(headers, header::IF_NONE_MATCH) {
        if etag_list_matches(if_none_match, etag, false) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let Some(since) = header_date(headers, header::IF_MODIFIED_SINCE) {
        if modified <= since {
            return Some(StatusCode::NOT_MODIFIED);
        }
    }
    None
}

/// A representation held in memory (a tile from an MBTiles file, a
/// decompressed vector tile): its bytes and the headers that describe it.
pub struct Representation {
    pub data: bytes::Bytes,
    pub content_type: HeaderValue,
    pub etag: HeaderValue,
    pub modified: SystemTime,
    pub cache_control: HeaderValue,
}

impl Representation {
    /// A strong entity tag from the content itself, for representations with
    /// no file of their own to take validators from.
    pub fn content_etag(data: &[u8]) -> HeaderValue {
        let digest = sha2::Sha256::digest(data);
        let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
        HeaderValue::from_str(&format!("\"{hex}\"")).expect("ascii")
    }
}

/// Answers a GET or HEAD for a representation in memory: preconditions as
/// for files; a Range is not honoured (the answer is the whole, 200).
pub fn respond_bytes(method: &Method, headers: &HeaderMap, rep: Representation) -> Response {
    let status = precondition(headers, rep.etag.to_str().unwrap_or_default(), rep.modified);
    let len = rep.data.len();
    let mut response = match status {
        Some(_) => Response::new(Body::empty()),
        None if method == Method::HEAD => Response::new(Body::empty()),
        None => Response::new(Body::from(rep.data)),
    };
    *response.status_mut() = status.unwrap_or(StatusCode::OK);
    let h = response.headers_mut();
    if status.is_none() {
        h.insert(header::CONTENT_TYPE, rep.content_type);
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    }
    h.insert(header::ETAG, rep.etag);
    if let Ok(value) = HeaderValue::from_str(&httpdate::fmt_http_date(rep.modified)) {
        h.insert(header::LAST_MODIFIED, value);
    }
    h.insert(header::CACHE_CONTROL, rep.cache_control);
    response
}

/// If-Range: the range applies only to the representation the client has.
/// An entity tag must match strongly; a date must equal Last-Modified.
fn if_range_allows(headers: &HeaderMap, entry: &FileEntry) -> bool {
    match header_str(headers, header::IF_RANGE) {
        None => true,
        Some(v) if v.starts_with('"') => v == entry.etag.to_str().unwrap_or_default(),
        Some(v) if v.starts_with("W/") => false,
        Some(v) => httpdate::parse_http_date(v).ok() == Some(truncate_to_seconds(entry.validators.modified())),
    }
}

/// Interprets a Range header for a file of `len` bytes. A header that does
/// not parse is ignored (RFC 9110 section 14.2); several ranges are answered
/// with the whole file when any of them is satisfiable.
pub fn select(range: Option<&HeaderValue>, len: u64) -> Selection {
    let Some(value) = range.and_then(|v| v.to_str().ok()) else { return Selection::Whole };
    let Ok(parsed) = http_range_header::parse_range_header(value) else { return Selection::Whole };
    let mut satisfiable = Vec::new();
    for range in &parsed.ranges {
        let (first, last) = match (range.start, range.end) {
            (StartPosition::Index(first), EndPosition::LastByte) => (first, len.saturating_sub(1)),
            (StartPosition::Index(first), EndPosition::Index(last)) if last < first => return Selection::Whole,
            (StartPosition::Index(first), EndPosition::Index(last)) => (first, last.min(len.saturating_sub(1))),
            (StartPosition::FromLast(n), _) => (len.saturating_sub(n), len.saturating_sub(1)),
        };
        if first < len {
            satisfiable.push((first, last));
        }
    }
    match satisfiable.as_slice() {
        [] => Selection::Unsatisfiable,
        [(first, last)] if parsed.ranges.len() == 1 => Selection::Range(*first, *last),
        _ => Selection::Whole,
    }
}

/// Whether a comma-separated list of entity tags (or `*`) matches `etag`.
/// Strong comparison for If-Match, weak for If-None-Match (RFC 9110 8.8.3.2).
fn etag_list_matches(list: &str, etag: &str, strong: bool) -> bool {
    if list.trim() == "*" {
        return true;
    }
    let opaque = |t: &str| t.trim().trim_start_matches("W/").to_string();
    list.split(',').map(str::trim).any(|candidate| {
        if strong {
            !candidate.starts_with("W/") && candidate == etag
        } else {
            opaque(candidate) == opaque(etag)
        }
    })
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

fn header_date(headers: &HeaderMap, name: header::HeaderName) -> Option<SystemTime> {
    header_str(headers, name).and_then(|v| httpdate::parse_http_date(v).ok())
}

/// HTTP dates have whole seconds; compare file times at that resolution.
fn truncate_to_seconds(t: SystemTime) -> SystemTime {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => SystemTime::UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => SystemTime::UNIX_EPOCH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sel(v: &str, len: u64) -> Selection {
        select(Some(&HeaderValue::from_str(v).unwrap()), len)
    }

    #[test]
    fn ranges() {
        assert_eq!(sel("bytes=0-9", 100), Selection::Range(0, 9));
        assert_eq!(sel("bytes=90-200", 100), Selection::Range(90, 99));
        assert_eq!(sel("bytes=-10", 100), Selection::Range(90, 99));
        assert_eq!(sel("bytes=-500", 100), Selection::Range(0, 99));
        assert_eq!(sel("bytes=100-", 100), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=0-", 0), Selection::Unsatisfiable);
        assert_eq!(sel("bytes=9-3", 100), Selection::Whole, "an invalid range is ignored");
        assert_eq!(sel("items=0-3", 100), Selection::Whole);
        assert_eq!(sel("bytes=0-1,5-6", 100), Selection::Whole);
        assert_eq!(sel("bytes=200-300,400-", 100), Selection::Unsatisfiable);
    }

    #[test]
    fn etag_comparison() {
        assert!(etag_list_matches("\"a\", \"b\"", "\"b\"", true));
        assert!(!etag_list_matches("W/\"b\"", "\"b\"", true));
        assert!(etag_list_matches("W/\"b\"", "\"b\"", false));
        assert!(etag_list_matches("*", "\"b\"", false));
        assert!(!etag_list_matches("\"c\"", "\"b\"", false));
    }
}
