//! Logs: `/logs` and `/logs/{device}` (JSON listings with filters) and
//! `/logs/{device}/{file}` (downloads with validators and ranges).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderName, Method, StatusCode};
use axum::response::Response;
use axum::Extension;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Serialize;
use serde_json::json;

use super::{error, files, follow, json_response, slices, wire, AppState};
use crate::access::Caller;
use crate::catalog::LogFilter;
use crate::catalog::LogRecord;
use crate::config::RootKind;
use crate::delivery::NoReplay;
use crate::names::safe_segment;

/// Most logs on one page of a listing, and the default page size.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;

/// One log of a listing, as clients read it.
#[derive(Serialize)]
struct Listed<'a> {
    device: &'a str,
    file: &'a str,
    url: String,
    size: u64,
    /// RFC 3339 modification time (`last_change` says the same; `mtime` is kept for older clients).
    mtime: String,
    last_change: String,
    first: Option<String>,
    last: Option<String>,
    etag: &'a str,
    growing: bool,
    digest: Option<&'a str>,
    /// How a time slice of it is answered: `indexed` (from the time index),
    /// `filtered` (read through: its lines are out of time order, or the
    /// index has not read it yet) or `decompressed` (a `.gz` log).
    slices: &'static str,
    /// Whether every line's time is at least the one before (unknown for compressed logs).
    ordered: Option<bool>,
    /// Marks in its time index, and how far the index has read.
    marks: Option<u64>,
    indexed_to: Option<u64>,
}

impl Listed<'_> {
    fn of(l: &LogRecord) -> Listed<'_> {
        let mtime = wire::rfc3339_ns(l.mtime_ns);
        Listed {
            device: &l.device,
            file: &l.file,
            url: url(&l.device, &l.file),
            size: l.size,
            last_change: mtime.clone(),
            mtime,
            first: l.first_ms.map(wire::rfc3339_ms),
            last: l.last_ms.map(wire::rfc3339_ms),
            etag: &l.etag,
            growing: l.growing,
            digest: l.digest.as_deref(),
            slices: match l.index {
                Some(index) if index.ordered => "indexed",
                Some(_) => "filtered",
                None if crate::catalog::logscan::compressed(std::path::Path::new(&l.file)) => "decompressed",
                None => "filtered",
            },
            ordered: l.index.map(|i| i.ordered),
            marks: l.index.map(|i| i.marks),
            indexed_to: l.index.map(|i| i.indexed_to),
        }
    }
}

/// The URL of a log's download.
pub fn url(device: &str, file: &str) -> String {
    format!("/logs/{}/{}", wire::segment(device), wire::segment(file))
}

/// Reads `device`, `since`, `until` (RFC 3339), `limit` and `cursor` from the
/// query. `Err` carries the message for a 400.
fn filter(query: &HashMap<String, String>) -> Result<LogFilter, String> {
    let time = |key: &str| slices::time(query, key);
    for key in query.keys() {
        if !matches!(key.as_str(), "device" | "since" | "until" | "limit" | "cursor") {
            return Err(format!("unknown parameter `{key}`: use device, since, until, limit, cursor"));
        }
    }
    let limit = match query.get("limit") {
        None => DEFAULT_PAGE,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_PAGE).contains(n))
            .ok_or(format!("limit must be a number from 1 to {MAX_PAGE}"))?,
    };
    let after = match query.get("cursor") {
        None => None,
        Some(c) => Some(decode_cursor(c).ok_or("cursor is not one this server gave out")?),
    };
    Ok(LogFilter {
        device: query.get("device").cloned(),
        since_ms: time("since")?,
        until_ms: time("until")?,
        after,
        limit: Some(limit),
    })
}

/// A page boundary: the last device and file of the page, so that the next
/// page starts after them whatever was added or removed meanwhile.
fn encode_cursor(device: &str, file: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("{device}/{file}"))
}

fn decode_cursor(cursor: &str) -> Option<(String, String)> {
    let text = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).ok()?).ok()?;
    let (device, file) = text.split_once('/')?;
    (safe_segment(device) && safe_segment(file)).then(|| (device.to_string(), file.to_string()))
}

async fn listing(
    app: AppState,
    caller: Option<Extension<Caller>>,
    headers: &HeaderMap,
    filter: LogFilter,
    query: HashMap<String, String>,
    base: &str,
) -> Response {
    let order = app.root_order(RootKind::Logs);
    let limit = filter.limit.unwrap_or(DEFAULT_PAGE);
    let mut ask = filter.clone();
    // One more tells whether there is a next page. Under access rules the
    // rows the caller may not read are left out before the page is cut, so
    // that a page and its cursor name only what the caller may read.
    let caller = caller.map(|Extension(c)| c);
    let filtered = app.policy.enforced;
    ask.limit = if filtered { None } else { Some(limit + 1) };
    let mut logs = match app.query(move |q| q.logs(&order, &ask)).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    if filtered {
        logs.retain(|l| app.may_read(caller.as_ref(), &url(&l.device, &l.file)));
    }
    let more = logs.len() > limit;
    logs.truncate(limit);
    let next_cursor = logs.last().filter(|_| more).map(|l| encode_cursor(&l.device, &l.file));
    let next = next_cursor.as_ref().map(|cursor| {
        let mut pairs: Vec<(String, String)> =
            query.into_iter().filter(|(k, _)| k != "cursor").chain([("cursor".into(), cursor.clone())]).collect();
        pairs.sort();
        let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}={}", wire::segment(v))).collect();
        format!("{base}?{}", query.join("&"))
    });
    let logs: Vec<Listed<'_>> = logs.iter().map(Listed::of).collect();
    json_response(headers, &json!({ "logs": logs, "next_cursor": next_cursor, "next": next }))
}

pub async fn list(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    match filter(&query) {
        Ok(filter) => listing(app, caller, &headers, filter, query, "/logs").await,
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

pub async fn list_device(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(device): Path<String>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !safe_segment(&device) {
        return error(StatusCode::NOT_FOUND, "no such device");
    }
    match filter(&query) {
        Ok(mut filter) => {
            let base = format!("/logs/{}", wire::segment(&device));
            filter.device = Some(device);
            listing(app, caller, &headers, filter, query, &base).await
        }
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

/// `/logs/{device}/{file}`: the file, with `Repr-Digest` once its digest is
/// known; `?follow` streams it and then what is appended.
/// `?since=&until=` make it a time slice ([`slices`]), and
/// `/logs/{device}/.lines` is the device's lines from all its logs.
pub async fn download(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    method: Method,
    headers: HeaderMap,
    Path((device, file)): Path<(String, String)>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !safe_segment(&device) || !(safe_segment(&file) || file == slices::DEVICE_LINES) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    if let Some(key) = query.keys().find(|k| !matches!(k.as_str(), "follow" | "since" | "until")) {
        return error(StatusCode::BAD_REQUEST, &format!("unknown parameter `{key}`: since, until, follow"));
    }
    let span = match slices::span(&query) {
        Ok(span) => span,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    let follow = query.contains_key("follow");
    if file == slices::DEVICE_LINES {
        let caller = caller.map(|Extension(c)| c);
        let span = span.unwrap_or(slices::Span::ALL);
        return slices::device(&app, caller.as_ref(), &method, &headers, device, span, follow).await;
    }
    let rel = format!("{device}/{file}");
    let entry = match app.open(RootKind::Logs, rel.clone()).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return error(StatusCode::NOT_FOUND, "no such log"),
        Err(response) => return response,
    };
    if let Some(span) = span {
        return slices::file(&app, &method, &headers, entry, rel, span, follow).await;
    }
    if follow {
        return follow::start(&app, &method, &headers, entry);
    }
    let digest = app.digests.get(&entry.validators);
    let mut response = files::respond(&method, &headers, entry);
    match digest {
        Some(digest) if matches!(response.status(), StatusCode::OK | StatusCode::PARTIAL_CONTENT) => {
            response.headers_mut().insert(HeaderName::from_static("repr-digest"), digest);
        }
        Some(_) => {}
        // The answer will gain a header once the digest is known: not one to replay.
        None => {
            response.extensions_mut().insert(NoReplay);
        }
    }
    response
}
