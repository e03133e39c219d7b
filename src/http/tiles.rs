//! Tiles: `/tiles` (catalog), `/tiles/{tileset}.json` (TileJSON 3.0.0) and
//! `/tiles/{tileset}/{z}/{x}/{y}.{ext}`.

use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use percent_encoding::percent_decode_str;
use serde_json::json;

use super::{base_url, error, files, json_response, AppState};
use crate::catalog::{self, Tileset};
use crate::config::RootKind;
use crate::roots::safe_segment;

/// Tile coordinates from a request, checked before any path is built.
#[derive(Debug, PartialEq, Eq)]
pub struct TileRequest {
    pub z: u32,
    pub x: u32,
    pub y: u32,
    pub ext: String,
}

/// Parses `{z}`, `{x}` and `{y}.{ext}`. `Err(400)` for what is not a
/// coordinate at all, `Err(404)` for a coordinate outside the zoom level.
pub fn parse_tile(z: &str, x: &str, file: &str) -> Result<TileRequest, StatusCode> {
    let number = |s: &str| -> Result<u32, StatusCode> {
        if s.is_empty() || s.len() > 10 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(StatusCode::BAD_REQUEST);
        }
        s.parse().map_err(|_| StatusCode::BAD_REQUEST)
    };
    let (y, ext) = file.split_once('.').ok_or(StatusCode::BAD_REQUEST)?;
    let (z, x, y) = (number(z)?, number(x)?, number(y)?);
    let ext = ext.to_ascii_lowercase();
    if !catalog::TILE_EXTENSIONS.contains(&ext.as_str()) {
        return Err(StatusCode::NOT_FOUND);
    }
    if z > 30 || x >> z != 0 || y >> z != 0 {
        return Err(StatusCode::NOT_FOUND);
    }
    Ok(TileRequest { z, x, y, ext })
}

/// `/tiles/{tileset}.json` and `/tiles/{tileset}/{z}/{x}/{y}.{ext}`, told
/// apart by their number of segments. Each segment of the raw path is
/// percent-decoded on its own, so an encoded `/` stays inside its segment
/// (and then fails `safe_segment`).
pub async fn dispatch(State(app): State<AppState>, method: Method, headers: HeaderMap, uri: Uri) -> Response {
    let rest = uri.path().strip_prefix("/tiles/").unwrap_or_default();
    let mut parts = [""; 5];
    let mut n = 0;
    for part in rest.split('/') {
        if n == parts.len() {
            return error(StatusCode::NOT_FOUND, "not found");
        }
        parts[n] = part;
        n += 1;
    }
    let mut decoded = Vec::with_capacity(n);
    for part in &parts[..n] {
        match percent_decode_str(part).decode_utf8() {
            Ok(segment) => decoded.push(segment),
            Err(_) => return error(StatusCode::BAD_REQUEST, "path is not UTF-8"),
        }
    }
    match decoded.as_slice() {
        [name] => tilejson(app, &headers, name).await,
        [tileset, z, x, file] => tile(app, &method, &headers, tileset, z, x, file).await,
        _ => error(StatusCode::NOT_FOUND, "not found"),
    }
}

async fn tile(
    app: AppState,
    method: &Method,
    headers: &HeaderMap,
    tileset: &str,
    z: &str,
    x: &str,
    file: &str,
) -> Response {
    if !safe_segment(tileset) {
        return error(StatusCode::NOT_FOUND, "no such tileset");
    }
    let tile = match parse_tile(z, x, file) {
        Ok(tile) => tile,
        Err(StatusCode::BAD_REQUEST) => {
            return error(StatusCode::BAD_REQUEST, "tile URLs are /tiles/{tileset}/{z}/{x}/{y}.{ext}")
        }
        Err(status) => return error(status, "no such tile"),
    };
    let rel = format!("{tileset}/{}/{}/{}.{}", tile.z, tile.x, tile.y, tile.ext);
    match app.open(RootKind::Tiles, rel).await {
        Ok(entry) => files::respond(method, headers, entry),
        Err(response) => response,
    }
}

/// `/tiles`: every tileset with its catalog facts and its TileJSON URL.
pub async fn catalog(State(app): State<AppState>, headers: HeaderMap) -> Response {
    let order = app.root_order(RootKind::Tiles);
    let tilesets = match app.query(move |c| catalog::tilesets(c, &order)).await {
        Ok(t) => t,
        Err(response) => return response,
    };
    let base = base_url(&headers);
    let list: Vec<serde_json::Value> = tilesets
        .iter()
        .map(|t| {
            let mut v = serde_json::to_value(t).expect("serialisable");
            v["tilejson"] = json!(format!("{base}/tiles/{}.json", catalog::urlencode(&t.name)));
            v
        })
        .collect();
    json_response(&json!({ "tilesets": list }))
}

/// `/tiles/{tileset}.json`: TileJSON 3.0.0 from the catalog.
async fn tilejson(app: AppState, headers: &HeaderMap, name: &str) -> Response {
    let Some(name) = name.strip_suffix(".json").filter(|n| safe_segment(n)).map(str::to_owned) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let order = app.root_order(RootKind::Tiles);
    let tilesets = match app.query(move |c| catalog::tilesets(c, &order)).await {
        Ok(t) => t,
        Err(response) => return response,
    };
    match tilesets.into_iter().find(|t| t.name == name) {
        Some(t) => json_response(&tilejson_of(&t, &base_url(headers))),
        None => error(StatusCode::NOT_FOUND, "no such tileset"),
    }
}

fn tilejson_of(t: &Tileset, base: &str) -> serde_json::Value {
    let [w, s, e, n] = t.bounds;
    let center_zoom = t.minzoom.max(t.maxzoom.min(2));
    json!({
        "tilejson": "3.0.0",
        "name": t.name,
        "scheme": t.scheme,
        "format": t.format,
        "tiles": [format!("{base}/tiles/{}/{{z}}/{{x}}/{{y}}.{}", catalog::urlencode(&t.name), t.format)],
        "minzoom": t.minzoom,
        "maxzoom": t.maxzoom,
        "bounds": t.bounds,
        "center": [(w + e) / 2.0, (s + n) / 2.0, center_zoom],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_coordinates() {
        assert_eq!(parse_tile("2", "3", "1.png"), Ok(TileRequest { z: 2, x: 3, y: 1, ext: "png".into() }));
        assert_eq!(parse_tile("2", "4", "1.png"), Err(StatusCode::NOT_FOUND));
        assert_eq!(parse_tile("31", "0", "0.png"), Err(StatusCode::NOT_FOUND));
        assert_eq!(parse_tile("a", "0", "0.png"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(parse_tile("-1", "0", "0.png"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(parse_tile("1", "0", "0.exe"), Err(StatusCode::NOT_FOUND));
        assert_eq!(parse_tile("1", "0", "0"), Err(StatusCode::BAD_REQUEST));
        assert_eq!(parse_tile("1", "+1", "0.png"), Err(StatusCode::BAD_REQUEST));
    }
}
