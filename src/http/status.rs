//! Status: `/` (a page for people), `/healthz`, `/readyz` and `/metrics`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;

use super::{text_response, wire, AppState};
use crate::access::Caller;
use crate::config::RootKind;
use crate::delivery::Unlogged;

/// Logs listed in the page's plain table.
const PLAIN_LOGS: usize = 500;

pub async fn healthz(headers: HeaderMap) -> Response {
    let mut response = text_response("text/plain; charset=utf-8", "ok\n");
    // The watchdog's own check is not a client: kept out of the access log.
    if headers.contains_key(crate::systemd::SELF_CHECK_HEADER) {
        response.extensions_mut().insert(Unlogged);
    }
    response
}

/// Ready once the first reconcile is done: before it, listings are incomplete.
pub async fn readyz(State(app): State<AppState>) -> Response {
    if app.ready.load(Ordering::Acquire) {
        text_response("text/plain; charset=utf-8", "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, text_response("text/plain; charset=utf-8", "reconciling catalog\n"))
            .into_response()
    }
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    text_response("text/plain; version=0.0.4; charset=utf-8", app.metrics.render())
}

/// `/`: the console page, holding the plain status tables (roots,
/// tilesets, logs) for browsers without JavaScript.
pub async fn index(State(app): State<AppState>, caller: Option<Extension<Caller>>) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let may_read = |path: &str| app.may_read(caller.as_ref(), path);
    let tile_order = app.root_order(RootKind::Tiles);
    let log_order = app.root_order(RootKind::Logs);
    let listed = app.query(move |q| Ok((q.tilesets(&tile_order)?, q.logs(&log_order, &Default::default())?))).await;
    let (tilesets, logs) = listed.unwrap_or_default();
    // The plain tables, inside the console page: what a browser without
    // JavaScript shows, and what the console's script replaces by pictures.
    let mut page = String::new();
    let ready = if app.ready.load(Ordering::Acquire) { "ready" } else { "reconciling the catalog" };
    let _ = write!(page, "<p>{ready}; up {} s.", app.started.elapsed().as_secs());
    // Roots and metrics are the operator's view: shown to whoever may read `/metrics`.
    let operator = may_read("/metrics");
    if operator {
        page.push_str(" <a href=/metrics>metrics</a></p><h2>Roots</h2><table>");
        page.push_str("<tr><th>kind<th>path<th>storage<th>delivery<th>watcher</tr>");
    } else {
        page.push_str("</p><table>");
    }
    for root in app.roots.iter().filter(|_| operator) {
        let _ = write!(
            page,
            "<tr><td>{}<td>{}<td>{}{}<td>{}<td>{:?}</tr>",
            root.kind(),
            escape(&root.path().display().to_string()),
            root.storage.fs_name,
            if root.storage.shared { " (shared)" } else { "" },
            root.delivery.as_str(),
            root.watcher
        );
    }
    page.push_str(
        "</table><h2>Tilesets</h2><table><tr><th>name (preview)<th>source<th>format<th>zoom<th>tiles<th>TileJSON</tr>",
    );
    for t in tilesets.iter().filter(|t| may_read(&super::tileset_path(&t.name))) {
        let name = escape(&t.name);
        let url = wire::segment(&t.name);
        let _ = write!(
            page,
            "<tr><td><a href=\"/tiles/{url}/\">{name}</a><td>{}<td>{}<td>{}&ndash;{}<td>{}<td><a href=\"/tiles/{url}.json\">/tiles/{name}.json</a></tr>",
            t.source.as_str(), t.format, t.minzoom, t.maxzoom, t.tile_count
        );
    }
    page.push_str("</table><h2>Logs</h2><table><tr><th>device<th>file<th>size<th>first<th>last</tr>");
    // The first rows only: with many thousands of logs the page would be
    // megabytes before its script could run; `/logs` pages through all.
    let readable = logs.iter().filter(|l| may_read(&super::logs::url(&l.device, &l.file)));
    for (shown, l) in readable.enumerate() {
        if shown == PLAIN_LOGS {
            let _ = write!(page, "<tr><td colspan=5>… more in <a href=/logs>/logs</a></tr>");
            break;
        }
        let _ = write!(
            page,
            "<tr><td>{}<td><a href=\"{}\">{}</a><td>{}<td>{}<td>{}</tr>",
            escape(&l.device),
            super::logs::url(&l.device, &l.file),
            escape(&l.file),
            l.size,
            l.first_ms.map(wire::rfc3339_ms).as_deref().unwrap_or("-"),
            l.last_ms.map(wire::rfc3339_ms).as_deref().unwrap_or("-")
        );
    }
    page.push_str("</table>");
    let mut response = text_response("text/html; charset=utf-8", super::console::page(&page));
    // The page runs only tessera's own script: nothing else may run in it,
    // frame it, or be taken for another type.
    let headers = response.headers_mut();
    headers.insert(
        "content-security-policy",
        axum::http::HeaderValue::from_static(
            "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    headers.insert("x-content-type-options", axum::http::HeaderValue::from_static("nosniff"));
    response
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}
