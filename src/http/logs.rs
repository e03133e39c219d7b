//! Logs: `/logs` and `/logs/{device}` (JSON listings with filters) and
//! `/logs/{device}/{file}` (downloads with validators and ranges).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::Response;
use serde_json::json;

use super::{error, files, json_response, AppState};
use crate::catalog::{self, LogFilter};
use crate::config::RootKind;
use crate::roots::safe_segment;

/// Reads `device`, `since` and `until` (RFC 3339) from the query.
/// `Err` carries the message for a 400.
fn filter(query: &HashMap<String, String>) -> Result<LogFilter, String> {
    let time = |key: &str| -> Result<Option<i64>, String> {
        match query.get(key) {
            None => Ok(None),
            Some(v) => chrono::DateTime::parse_from_rfc3339(v)
                .map(|t| Some(t.timestamp_millis()))
                .map_err(|_| format!("{key} must be an RFC 3339 time such as 2026-11-20T06:00:00Z")),
        }
    };
    for key in query.keys() {
        if !matches!(key.as_str(), "device" | "since" | "until") {
            return Err(format!("unknown parameter `{key}`: use device, since, until"));
        }
    }
    Ok(LogFilter { device: query.get("device").cloned(), since_ms: time("since")?, until_ms: time("until")? })
}

async fn listing(app: AppState, filter: LogFilter) -> Response {
    let order = app.root_order(RootKind::Logs);
    match app.query(move |c| catalog::logs(c, &order, &filter)).await {
        Ok(logs) => json_response(&json!({ "logs": logs })),
        Err(response) => response,
    }
}

pub async fn list(State(app): State<AppState>, Query(query): Query<HashMap<String, String>>) -> Response {
    match filter(&query) {
        Ok(filter) => listing(app, filter).await,
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

pub async fn list_device(
    State(app): State<AppState>,
    Path(device): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    if !safe_segment(&device) {
        return error(StatusCode::NOT_FOUND, "no such device");
    }
    match filter(&query) {
        Ok(mut filter) => {
            filter.device = Some(device);
            listing(app, filter).await
        }
        Err(message) => error(StatusCode::BAD_REQUEST, &message),
    }
}

pub async fn download(
    State(app): State<AppState>,
    method: Method,
    headers: HeaderMap,
    Path((device, file)): Path<(String, String)>,
) -> Response {
    if !safe_segment(&device) || !safe_segment(&file) {
        return error(StatusCode::NOT_FOUND, "not found");
    }
    match app.open(RootKind::Logs, format!("{device}/{file}")).await {
        Ok(Some(entry)) => files::respond(&method, &headers, entry),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such log"),
        Err(response) => response,
    }
}
