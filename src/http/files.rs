//! File responses: validators, conditional requests and byte ranges, the same
//! for tiles and logs.
//!
//! Preconditions are evaluated in the order of RFC 9110 section 13.2.2:
//! If-Match, If-Unmodified-Since, If-None-Match, If-Modified-Since, then
//! If-Range decides whether Range applies.

use std::sync::Arc;
use std::time::SystemTime;

use axum::body::Body;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use headers::{ETag, HeaderMapExt, IfMatch, IfModifiedSince, IfNoneMatch, IfUnmodifiedSince};
use http_body::Frame;
use http_range_header::{EndPosition, StartPosition};
use sha2::Digest;

use crate::cache::FileEntry;
use crate::delivery::{FileBody, FileSlice};

/// The part of the file a request gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Whole,
    /// One satisfiable range: first and last byte, inclusive.
    Range(u64, u64),
    /// Several satisfiable ranges, in the order asked, none overlapping:
    /// `multipart/byteranges`.
    Multi(Vec<(u64, u64)>),
    Unsatisfiable,
}

/// The most parts of a `multipart/byteranges` answer; more ranges get the
/// whole file (RFC 9110 14.2 lets a server ignore many small ranges).
pub const MAX_PARTS: usize = 16;

/// Answers a GET or HEAD for an open file.
pub fn respond(method: &Method, headers: &HeaderMap, entry: Arc<FileEntry>) -> Response {
    let etag = entry.etag.to_str().unwrap_or_default();
    if let Some(status) = precondition(headers, etag, Some(entry.validators.modified())) {
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
        Selection::Multi(ranges) => return multipart(method, &entry, &ranges),
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

/// 412 or 304 if a precondition says so, in RFC 9110's order (13.2.2), for
/// a representation with these validators. The comparisons are the
/// `headers` crate's (strong for If-Match, weak for If-None-Match, dates to
/// the second); a field that does not parse is ignored, as RFC 9110 asks.
/// Without a modification date (`None`), the date conditions are ignored
/// (RFC 9110 13.1.3, 13.1.4).
pub fn precondition(headers: &HeaderMap, etag: &str, modified: Option<SystemTime>) -> Option<StatusCode> {
    let etag: ETag = etag.parse().ok()?;
    if let Some(if_match) = headers.typed_get::<IfMatch>() {
        if !if_match.precondition_passes(&etag) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    } else if let (Some(since), Some(modified)) = (headers.typed_get::<IfUnmodifiedSince>(), modified) {
        if !since.precondition_passes(modified) {
            return Some(StatusCode::PRECONDITION_FAILED);
        }
    }
    if let Some(if_none_match) = headers.typed_get::<IfNoneMatch>() {
        if !if_none_match.precondition_passes(&etag) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    } else if let (Some(since), Some(modified)) = (headers.typed_get::<IfModifiedSince>(), modified) {
        if !since.is_modified(modified) {
            return Some(StatusCode::NOT_MODIFIED);
        }
    }
    None
}

/// If-None-Match against a representation that has an entity tag but no
/// modification time (a JSON document built from the catalog): true when the
/// client's copy is current and a 304 is the answer.
pub fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    let (Some(if_none_match), Ok(etag)) = (headers.typed_get::<IfNoneMatch>(), etag.parse::<ETag>()) else {
        return false;
    };
    !if_none_match.precondition_passes(&etag)
}

/// A representation held in memory (a tile from an MBTiles file, a
/// decompressed vector tile): its bytes and the headers that describe it.
pub struct Representation {
    pub data: bytes::Bytes,
    pub content_type: HeaderValue,
    pub etag: HeaderValue,
    /// None when no date says when the content changed (it is then left
    /// out, and so are the date preconditions).
    pub modified: Option<SystemTime>,
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
    if let Some(Ok(value)) = rep.modified.map(|m| HeaderValue::from_str(&httpdate::fmt_http_date(m))) {
        h.insert(header::LAST_MODIFIED, value);
    }
    h.insert(header::CACHE_CONTROL, rep.cache_control);
    response
}

/// If-Range: the range applies only to the representation the client has,
/// named by its strong entity tag. A date never allows it: a file can change
/// twice within the second a date names (a log truncated by `copytruncate`
/// and appended to again, a tile written twice), so the date cannot tell the
/// version the client holds from the current one, and RFC 9110 (13.1.5,
/// 8.8.2.2) counts such a date as weak. That client gets the whole file
/// (200), with the ETag to resume by next time.
fn if_range_allows(headers: &HeaderMap, entry: &FileEntry) -> bool {
    match header_str(headers, header::IF_RANGE) {
        None => true,
        Some(v) => v.starts_with('"') && v == entry.etag.to_str().unwrap_or_default(),
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
        [(first, last)] => Selection::Range(*first, *last),
        parts if parts.len() <= MAX_PARTS && !overlapping(parts) => Selection::Multi(satisfiable),
        _ => Selection::Whole,
    }
}

/// Whether any two ranges share a byte (a classic amplification shape).
fn overlapping(ranges: &[(u64, u64)]) -> bool {
    let mut sorted = ranges.to_vec();
    sorted.sort_unstable();
    sorted.windows(2).any(|w| w[1].0 <= w[0].1)
}

/// A `multipart/byteranges` 206: each part's head, then its bytes read from
/// the open file chunk by chunk (bounded memory), then the closing boundary.
/// The length is known in advance; a file that shrinks meanwhile ends the
/// connection, as for any file body.
fn multipart(method: &Method, entry: &Arc<FileEntry>, ranges: &[(u64, u64)]) -> Response {
    let len = entry.len();
    let boundary = format!("tessera-{}", &entry.etag.to_str().unwrap_or("x").trim_matches('"').replace('-', ""));
    let content_type = entry.content_type.to_str().unwrap_or("application/octet-stream");
    let parts: Vec<(Bytes, u64, u64)> = ranges
        .iter()
        .map(|&(first, last)| {
            let head = format!(
                "\r\n--{boundary}\r\ncontent-type: {content_type}\r\ncontent-range: bytes {first}-{last}/{len}\r\n\r\n"
            );
            (Bytes::from(head), first, last - first + 1)
        })
        .collect();
    let closing = Bytes::from(format!("\r\n--{boundary}--\r\n"));
    let total: u64 = parts.iter().map(|(head, _, n)| head.len() as u64 + n).sum::<u64>() + closing.len() as u64;

    let mut response = if method == Method::HEAD {
        Response::new(Body::empty())
    } else {
        let entry = entry.clone();
        // Frames in order: head of part 1, its chunks, head of part 2, ..., closing.
        let frames = futures_util::stream::unfold(
            (parts.into_iter(), None::<(u64, u64)>, Some(closing), entry),
            |(mut parts, mut current, mut closing, entry)| async move {
                if let Some((offset, remaining)) = current.filter(|(_, remaining)| *remaining > 0) {
                    let chunk = crate::delivery::read_chunk(&entry, offset, remaining).await;
                    if let Ok(bytes) = &chunk {
                        let n = bytes.len() as u64;
                        current = Some((offset + n, remaining - n));
                    }
                    return Some((chunk.map(Frame::data), (parts, current, closing, entry)));
                }
                if let Some((head, offset, count)) = parts.next() {
                    return Some((Ok(Frame::data(head)), (parts, Some((offset, count)), closing, entry)));
                }
                let last = closing.take()?;
                // The closing boundary only if the file is still the version the parts came from.
                if !entry.holds_snapshot() {
                    return Some((
                        Err(std::io::Error::other("file changed while being sent")),
                        (parts, None, None, entry),
                    ));
                }
                Some((Ok(Frame::data(last)), (parts, None, None, entry)))
            },
        );
        Response::new(Body::new(http_body_util::StreamBody::new(frames)))
    };
    *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    let h = response.headers_mut();
    let multipart_type = format!("multipart/byteranges; boundary={boundary}");
    h.insert(header::CONTENT_TYPE, HeaderValue::from_str(&multipart_type).expect("ascii"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(total));
    h.insert(header::ETAG, entry.etag.clone());
    h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
    h.insert(header::CACHE_CONTROL, entry.cache_control.clone());
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    response
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
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
        assert_eq!(sel("bytes=0-1,5-6", 100), Selection::Multi(vec![(0, 1), (5, 6)]));
        assert_eq!(sel("bytes=50-59,0-9", 100), Selection::Multi(vec![(50, 59), (0, 9)]), "in the order asked");
        assert_eq!(sel("bytes=0-10,5-20", 100), Selection::Whole, "overlapping ranges get the whole file");
        let many: Vec<String> = (0..17).map(|i| format!("{}-{}", i * 2, i * 2)).collect();
        assert_eq!(sel(&format!("bytes={}", many.join(",")), 100), Selection::Whole, "too many parts");
        assert_eq!(sel("bytes=0-1,500-600", 100), Selection::Range(0, 1), "one satisfiable range of two");
        assert_eq!(sel("bytes=200-300,400-", 100), Selection::Unsatisfiable);
    }

    #[test]
    fn preconditions_compare_as_rfc_9110_says() {
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000);
        let ask = |name: header::HeaderName, value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(name, HeaderValue::from_str(value).unwrap());
            precondition(&headers, "\"b\"", Some(now))
        };
        assert_eq!(ask(header::IF_MATCH, "\"a\", \"b\""), None, "strong match in a list");
        assert_eq!(ask(header::IF_MATCH, "W/\"b\""), Some(StatusCode::PRECONDITION_FAILED), "If-Match is strong");
        assert_eq!(ask(header::IF_NONE_MATCH, "W/\"b\""), Some(StatusCode::NOT_MODIFIED), "If-None-Match is weak");
        assert_eq!(ask(header::IF_NONE_MATCH, "*"), Some(StatusCode::NOT_MODIFIED));
        assert_eq!(ask(header::IF_NONE_MATCH, "\"c\""), None);
        let date = httpdate::fmt_http_date(now);
        assert_eq!(ask(header::IF_MODIFIED_SINCE, &date), Some(StatusCode::NOT_MODIFIED));
        let earlier = httpdate::fmt_http_date(now - std::time::Duration::from_secs(1));
        assert_eq!(ask(header::IF_UNMODIFIED_SINCE, &earlier), Some(StatusCode::PRECONDITION_FAILED));
        assert_eq!(ask(header::IF_MODIFIED_SINCE, "not a date"), None, "an unparsable date is ignored");
    }
}
