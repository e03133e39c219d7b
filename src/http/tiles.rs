//! Tiles: `/tiles` (catalog), `/tiles/{tileset}.json` (TileJSON 3.0.0),
//! `/tiles/{tileset}/{z}/{x}/{y}.{ext}` (from a directory, a PMTiles archive
//! or an MBTiles file) and `/tiles/{tileset}.pmtiles` (the archive itself).

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use percent_encoding::percent_decode_str;
use serde_json::json;

use std::sync::Arc;

use bytes::Bytes;

use super::{error, files, json_response, wire, App, AppState};
use crate::access::Caller;
use crate::cache::FileEntry;
use crate::catalog::{Source, Tileset};
use crate::config::{Scheme, TilesetSpec, DEFAULT_TILES_CACHE_CONTROL};
use crate::delivery::{FileBody, FileSlice, Held, ReplayWhile};
use crate::metrics::Route;
use crate::names::safe_segment;
use crate::roots::Root;
use crate::tile::{NotATile, Tile};

/// The tile a request names: its tileset (a safe name) and address.
/// `Err(400)` for what is not a tile address at all, `Err(404)` for an
/// unsafe tileset name, an unknown format or a coordinate outside its zoom
/// level. Every tile request goes through this before any path is built;
/// pure, for the fuzzer.
pub fn tile_address<'a>(tileset: &'a str, z: &str, x: &str, file: &str) -> Result<(&'a str, Tile), StatusCode> {
    if !safe_segment(tileset) {
        return Err(StatusCode::NOT_FOUND);
    }
    match Tile::parse(z, x, file) {
        Ok(tile) => Ok((tileset, tile)),
        Err(NotATile::Malformed) => Err(StatusCode::BAD_REQUEST),
        Err(NotATile::Outside) => Err(StatusCode::NOT_FOUND),
    }
}

/// The file a tile address names inside a tiles root: the row flipped when
/// the tileset's directory numbers rows as TMS.
pub fn stored_rel(tileset: &str, tile: &Tile, tms: bool) -> String {
    if tms {
        tile.flipped().rel(tileset)
    } else {
        tile.rel(tileset)
    }
}

/// The segments of a `/tiles/...` path, each percent-decoded on its own (so
/// an encoded `/` stays inside its segment and then fails `safe_segment`).
/// At most four; `Err(404)` for more, `Err(400)` for a segment that is not
/// UTF-8 once decoded. Pure, for the fuzzer.
pub fn segments(path: &str) -> Result<Vec<std::borrow::Cow<'_, str>>, StatusCode> {
    let rest = path.strip_prefix("/tiles/").unwrap_or_default();
    let mut decoded = Vec::with_capacity(4);
    for part in rest.split('/') {
        if decoded.len() == 4 {
            return Err(StatusCode::NOT_FOUND);
        }
        decoded.push(percent_decode_str(part).decode_utf8().map_err(|_| StatusCode::BAD_REQUEST)?);
    }
    Ok(decoded)
}

/// `/tiles/{tileset}.json` and `/tiles/{tileset}/{z}/{x}/{y}.{ext}`, told
/// apart by their number of segments. Each segment of the raw path is
/// percent-decoded on its own, so an encoded `/` stays inside its segment
/// (and then fails `safe_segment`).
pub async fn dispatch(State(app): State<AppState>, method: Method, headers: HeaderMap, uri: Uri) -> Response {
    let decoded = match segments(uri.path()) {
        Ok(decoded) => decoded,
        Err(StatusCode::BAD_REQUEST) => return error(StatusCode::BAD_REQUEST, "path is not UTF-8"),
        Err(status) => return error(status, "not found"),
    };
    let (route, mut response) = match decoded.as_slice() {
        [name] if name.ends_with(".json") => (TILEJSON, tilejson(app, &headers, name).await),
        [name] if name.ends_with(".pmtiles") => (ARCHIVE, archive_download(app, &method, &headers, name).await),
        [name] if safe_segment(name) => (PREVIEW, redirect_to_preview(name)),
        [name, last] if last.is_empty() && safe_segment(name) => (PREVIEW, preview()),
        [tileset, z, x, file] => (TILE, tile(app, &method, &headers, tileset, z, x, file).await),
        _ => return error(StatusCode::NOT_FOUND, "not found"),
    };
    response.extensions_mut().insert(route);
    response
}

/// The routes under `/tiles/{*rest}`, as metric labels.
const TILEJSON: Route = Route("/tiles/{tileset}.json");
const PREVIEW: Route = Route("/tiles/{tileset}/");
const TILE: Route = Route("/tiles/{tileset}/{z}/{x}/{y}");
const ARCHIVE: Route = Route("/tiles/{tileset}.pmtiles");

async fn tile(
    app: AppState,
    method: &Method,
    headers: &HeaderMap,
    tileset: &str,
    z: &str,
    x: &str,
    file: &str,
) -> Response {
    let (tileset, tile) = match tile_address(tileset, z, x, file) {
        Ok(found) => found,
        Err(StatusCode::BAD_REQUEST) => {
            return error(StatusCode::BAD_REQUEST, "tile URLs are /tiles/{tileset}/{z}/{x}/{y}.{ext}")
        }
        Err(status) => return error(status, "no such tile"),
    };
    let spec = app.tilesets.get(tileset);
    // What the catalog knows decides the row order, MBTiles or files, and
    // what a missing tile gets. Tiles are still served from the disk if the
    // catalog cannot be read.
    // The generation is read first: facts read after it are at least as new.
    let generation = app.generation();
    let list = app.tileset_list().await.ok();
    let info = list.as_deref().and_then(|l| l.iter().find(|t| t.name == tileset));
    match info.map(|t| (t, t.source)) {
        Some((t, Source::Mbtiles)) => return mbtiles_tile(&app, method, headers, t, spec, &tile, generation).await,
        Some((t, Source::Pmtiles)) => return pmtiles_tile(&app, method, headers, t, spec, &tile, generation).await,
        _ => {}
    }
    let tms = stored_scheme(info, spec) == Scheme::Tms;
    // The first root that holds the tileset serves all of it: a later
    // root's tiles of the same name are hidden, as its catalog entry is
    // (and its access rule never applies to another root's files).
    let root = match info.and_then(|t| app.root_by_id(t.root)) {
        Some(index) => app.roots.get(index),
        None => super::guard::tileset_root(&app.roots, tileset),
    };
    let Some(root) = root else { return missing(&app, info, spec, &tile) };
    // Twice at most: a file rewritten while it was being decompressed is
    // opened again (its descriptor leaves the cache) rather than answered 5xx.
    for _ in 0..2 {
        match app.open_in(std::iter::once(root), stored_rel(tileset, &tile, tms)).await {
            Ok(Some(entry)) => match file_tile(method, headers, &entry, tile.format.is_vector()) {
                Some(response) => return response,
                None => app.cache.invalidate(&entry.path),
            },
            Ok(None) => return missing(&app, info, spec, &tile),
            Err(response) => return response,
        }
    }
    error(StatusCode::SERVICE_UNAVAILABLE, "this tile is being rewritten; retry shortly")
}

/// A tile file. A gzipped vector tile goes as stored with `Content-Encoding:
/// gzip` to clients that accept it (sendfile and ranges as for any file),
/// and decompressed to those that do not; both say `Vary: Accept-Encoding`
/// (which also keeps the driver from replaying either to the other).
/// `None`: the file changed while it was read; open it again.
fn file_tile(method: &Method, headers: &HeaderMap, entry: &Arc<FileEntry>, vector: bool) -> Option<Response> {
    if !(vector && entry.is_gzip()) {
        return Some(files::respond(method, headers, entry.clone()));
    }
    if accepts_gzip(headers) {
        let mut response = files::respond(method, headers, entry.clone());
        let ok = response.status().is_success();
        let h = response.headers_mut();
        // Only a body is encoded: a 304 or 412 does not describe one
        // (RFC 9110 15.4.5; httplint).
        if ok {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
        return Some(response);
    }
    let stored = match entry.memory() {
        Some(bytes) => Ok(bytes.clone()),
        None => crate::cache::read_exact_at(&entry.file, 0, entry.len() as usize),
    };
    let stored = match stored {
        Ok(stored) if stored.len() as u64 == entry.len() && entry.unchanged() => Ok(stored),
        Ok(_) => return None,
        Err(e) => Err(e),
    };
    let decoded = stored.and_then(|stored| gunzip(&stored));
    let rep = |data: Bytes| files::Representation {
        etag: files::Representation::content_etag(&data),
        data,
        content_type: entry.content_type.clone(),
        modified: Some(entry.validators.modified()),
        cache_control: entry.cache_control.clone(),
    };
    match decoded {
        Ok(data) => {
            let len = data.len() as u64;
            let response = identity(files::respond_bytes(method, headers, rep(data)));
            if response.status() == StatusCode::OK && method == Method::GET {
                entry.counters.buffered.inc_by(len);
            }
            Some(response)
        }
        Err(e) => {
            tracing::warn!(path = %entry.path.display(), error = %e, "cannot decompress a gzipped vector tile");
            Some(error(StatusCode::SERVICE_UNAVAILABLE, "cannot decompress this tile now"))
        }
    }
}

/// Marks a decompressed answer as varying by `Accept-Encoding`.
fn identity(mut response: Response) -> Response {
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    response
}

/// The largest decompressed vector tile served (a gzip bomb stops here).
const MAX_DECODED: u64 = 32 << 20;

fn gunzip(data: &[u8]) -> std::io::Result<Bytes> {
    use std::io::Read;
    let mut out = Vec::with_capacity((data.len() * 3).min(MAX_DECODED as usize));
    flate2::read::MultiGzDecoder::new(data).take(MAX_DECODED + 1).read_to_end(&mut out)?;
    if out.len() as u64 > MAX_DECODED {
        return Err(std::io::Error::other("decompressed tile larger than 32 MiB"));
    }
    Ok(Bytes::from(out))
}

/// Whether `Accept-Encoding` admits gzip (RFC 9110 12.5.3): `gzip`,
/// `x-gzip` or `*`, with a non-zero weight; a bare `gzip;q=0` refuses it.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    accepts(headers, "gzip")
}

/// Whether `Accept-Encoding` admits `coding` (`gzip` also as `x-gzip`), or
/// `*`, with a non-zero weight.
pub fn accepts(headers: &HeaderMap, coding: &str) -> bool {
    let want = coding.to_ascii_lowercase();
    let mut star = None;
    for value in headers.get_all(header::ACCEPT_ENCODING) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut parts = item.split(';');
            let coding = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
            let want = want.as_str();
            let q = parts
                .filter_map(|p| p.trim().strip_prefix("q=").or_else(|| p.trim().strip_prefix("Q=")))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            let named = coding == want || (want == "gzip" && coding == "x-gzip");
            match coding.as_str() {
                _ if named => return q > 0.0,
                "*" => star = Some(q > 0.0),
                _ => {}
            }
        }
    }
    star.unwrap_or(false)
}

/// A tile from an MBTiles file (rows stored from the bottom), answered from
/// memory. The file is opened through the descriptor cache like any tile
/// (its path checked inside the root, its freshness checked) and queried by
/// [`read_source`]. Unless the database is in WAL mode or was modified in
/// the last 60 s, its validators name its content: the ETag is theirs with
/// the tile's address, and the driver may replay the answer while the file
/// stays fresh and the catalog's `generation` stands. Otherwise the ETag is
/// the content's hash and every request reads the database.
async fn mbtiles_tile(
    app: &AppState,
    method: &Method,
    headers: &HeaderMap,
    t: &Tileset,
    spec: Option<&TilesetSpec>,
    tile: &Tile,
    generation: u64,
) -> Response {
    let root = match source_root(app, t, tile) {
        Ok(root) => root,
        Err(why) => return error(StatusCode::NOT_FOUND, why),
    };
    let (z, x, row) = (tile.z, tile.x, tile.flipped().y);
    let read = move |app: &App, entry: &FileEntry| app.mbtiles.tile(&entry.path, entry.validators, z, x, row);
    let quick = |app: &App, entry: &FileEntry| app.mbtiles.quick(&entry.path, entry.validators);
    match read_source(app, root, format!("{}.mbtiles", t.name), quick, read).await {
        Ok(Some((entry, Some(blob)))) => mbtiles_answer(app, method, headers, t, tile, &entry, blob, generation),
        Ok(_) => missing(app, Some(t), spec, tile),
        Err(response) => response,
    }
}

/// The root whose file (an MBTiles file or a PMTiles archive) serves
/// tileset `t`, if `tile` is of its format; else why not (a 404).
fn source_root<'a>(app: &'a App, t: &Tileset, tile: &Tile) -> Result<&'a Root, &'static str> {
    if tile.format != t.format {
        return Err("this tileset has no tiles of that format");
    }
    app.root_by_id(t.root).and_then(|index| app.roots.get(index)).ok_or("no such tileset")
}

/// Opens a tileset's own file (`rel`: an MBTiles file or a PMTiles archive)
/// through the descriptor cache and runs `read` on it: inline when the file
/// is local and `quick` says the read cannot wait on anything but the page
/// cache (an immutable SQLite query, a cached directory: microseconds), on
/// the blocking pool otherwise. The file must be unchanged after the read,
/// or the answer could mix versions: then it is opened again, once.
/// `Ok(None)`: no such file.
async fn read_source<T, E>(
    app: &AppState,
    root: &Root,
    rel: String,
    quick: impl Fn(&App, &FileEntry) -> bool,
    read: impl Fn(&App, &FileEntry) -> Result<T, E> + Send + Clone + 'static,
) -> Result<Option<(Arc<FileEntry>, T)>, Response>
where
    T: Send + 'static,
    E: std::fmt::Display + Send + 'static,
{
    for _ in 0..2 {
        let entry = match app.open_in(std::iter::once(root), rel.clone()).await? {
            Some(entry) => entry,
            None => return Ok(None),
        };
        let result = if entry.local && quick(app, &entry) {
            Some(read(app, &entry))
        } else {
            let (app2, entry2, read) = (app.clone(), entry.clone(), read.clone());
            tokio::task::spawn_blocking(move || read(&app2, &entry2)).await.ok()
        };
        if !entry.unchanged() {
            app.cache.invalidate(&entry.path);
            continue;
        }
        return match result {
            Some(Ok(value)) => Ok(Some((entry, value))),
            Some(Err(e)) => {
                tracing::warn!(path = %entry.path.display(), error = %e, "cannot read a tileset's file");
                Err(error(StatusCode::SERVICE_UNAVAILABLE, "cannot read this tileset now, retry shortly"))
            }
            None => Err(error(StatusCode::INTERNAL_SERVER_ERROR, "a read of this tileset failed")),
        };
    }
    Err(error(StatusCode::SERVICE_UNAVAILABLE, "this tileset is being rewritten; retry shortly"))
}

/// The answer for a tile read from an MBTiles file (see [`mbtiles_tile`]).
#[allow(clippy::too_many_arguments)]
fn mbtiles_answer(
    app: &AppState,
    method: &Method,
    headers: &HeaderMap,
    t: &Tileset,
    tile: &Tile,
    entry: &Arc<FileEntry>,
    blob: crate::mbtiles::Blob,
    generation: u64,
) -> Response {
    let gzipped = blob.data.starts_with(&[0x1f, 0x8b]) && t.format.is_vector();
    let decode = gzipped && !accepts_gzip(headers);
    let data = if decode {
        match gunzip(&blob.data) {
            Ok(data) => data,
            Err(e) => {
                tracing::warn!(tileset = t.name, error = %e, "cannot decompress an MBTiles vector tile");
                return error(StatusCode::SERVICE_UNAVAILABLE, "cannot decompress this tile now");
            }
        }
    } else {
        blob.data.clone()
    };
    // The validators name the content only outside WAL mode, and only for
    // a file left alone for a while (a write in place within the same mtime
    // tick leaves them unchanged); under `etag = "content"` the tile's own
    // bytes do, whatever the file's mtime on this node.
    let by_content = app.roots[entry.root].spec.etag == crate::config::EtagMode::Content;
    let named = !blob.wal && entry.settled() && !by_content;
    let etag = if !named {
        files::Representation::content_etag(&data)
    } else {
        let file = entry.etag.to_str().unwrap_or_default().trim_matches('"');
        let form = if decode { ".d" } else { "" };
        HeaderValue::from_str(&format!("\"{file}.{}.{}.{}{form}\"", tile.z, tile.x, tile.y)).expect("ascii")
    };
    // A WAL-mode file's mtime does not move with its commits: it says
    // nothing of the tile, so no Last-Modified, and no precondition by date.
    let rep = files::Representation {
        data: data.clone(),
        content_type: HeaderValue::from_static(t.format.content_type()),
        etag,
        modified: (!blob.wal).then(|| entry.validators.modified()),
        // The tileset's, prepared once per descriptor (`Root::cache_control_for`).
        cache_control: entry.cache_control.clone(),
    };
    let mut response = files::respond_bytes(method, headers, rep);
    let ok = response.status() == StatusCode::OK;
    let sent = ok && method == Method::GET;
    if sent && named {
        let while_ = ReplayWhile { epoch: app.generation_counter(), at: generation };
        response.extensions_mut().insert(Held { entry: entry.clone(), data: data.clone(), while_ });
    }
    if sent {
        entry.counters.memory.inc_by(data.len() as u64);
    }
    let h = response.headers_mut();
    // Only a body is encoded: a 304 or 412 does not describe one.
    if gzipped && !decode && ok {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if gzipped {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    response
}

/// A tile from a PMTiles archive: the archive is opened as any file (the
/// descriptor cache, its freshness checks), the tile found through its
/// directories ([`crate::archive`]), and the body is the tile's byte range of
/// the open archive, so the driver sends it by the archive's own delivery
/// path (sendfile on local storage). Tiles stored compressed go as stored to
/// clients that accept the encoding; gzip ones are decompressed for those
/// that do not, and brotli or zstd ones get 406 (tessera carries no decoder
/// for them; every browser accepts both). The driver may replay the answer
/// while the archive is fresh and the catalog's `generation` (read before
/// the facts `t` came from) stands.
async fn pmtiles_tile(
    app: &AppState,
    method: &Method,
    headers: &HeaderMap,
    t: &Tileset,
    spec: Option<&TilesetSpec>,
    tile: &Tile,
    generation: u64,
) -> Response {
    let root = match source_root(app, t, tile) {
        Ok(root) => root,
        Err(why) => return error(StatusCode::NOT_FOUND, why),
    };
    let (z, x, y) = (tile.z, tile.x, tile.y);
    let locate = move |app: &App, e: &FileEntry| app.archives.locate(&e.file, e.validators, e.settled(), z, x, y);
    let quick = |app: &App, entry: &FileEntry| app.archives.quick(entry.validators);
    // Twice at most: an archive rewritten while its tile was read is opened again.
    for _ in 0..2 {
        let (entry, located) = match read_source(app, root, format!("{}.pmtiles", t.name), quick, locate).await {
            Ok(Some(found)) => found,
            Ok(None) => return missing(app, Some(t), spec, tile),
            Err(response) => return response,
        };
        let Some(section) = located.tile else { return missing(app, Some(t), spec, tile) };
        let coding = located.header.tile_compression.content_encoding();
        match archive_tile(method, headers, t, &entry, section, coding) {
            Some(mut response) => {
                // Not for an archive modified lately: a write in place within
                // the same mtime tick would leave its validators unchanged.
                if entry.settled() {
                    response.extensions_mut().insert(ReplayWhile { epoch: app.generation_counter(), at: generation });
                }
                return response;
            }
            None => app.cache.invalidate(&entry.path),
        }
    }
    error(StatusCode::SERVICE_UNAVAILABLE, "this tileset is being rewritten; retry shortly")
}

/// The answer for one tile found in an archive: `section` of the open
/// archive, stored with `coding` (a `Content-Encoding`, or none). Its
/// entity tag is the archive's (length and mtime) with the tile's offset
/// and length: strong, since one place in one archive version is one
/// content, and the same on every node that serves a copy of the archive.
/// `None`: the archive changed while the tile was read; open it again.
fn archive_tile(
    method: &Method,
    headers: &HeaderMap,
    t: &Tileset,
    entry: &Arc<FileEntry>,
    section: crate::pmtiles::Section,
    coding: Option<&'static str>,
) -> Option<Response> {
    let archive = entry.etag.to_str().unwrap_or_default().trim_matches('"');
    let etag = HeaderValue::from_str(&format!("\"{archive}.{:x}.{:x}\"", section.offset, section.length)).ok()?;
    let vary = coding.is_some();
    if let Some(coding) = coding.filter(|c| !accepts(headers, c)) {
        if coding != "gzip" {
            let mut response = error(
                StatusCode::NOT_ACCEPTABLE,
                &format!("this tileset's tiles are stored with {coding} encoding, which the request does not accept"),
            );
            response.headers_mut().insert(header::VARY, HeaderValue::from_static("accept-encoding"));
            return Some(response);
        }
        if section.length > MAX_DECODED {
            return Some(error(StatusCode::SERVICE_UNAVAILABLE, "this tile is too large to decompress"));
        }
        let stored = crate::cache::read_exact_at(&entry.file, section.offset, section.length as usize);
        let stored = match stored {
            Ok(stored) if entry.unchanged() => stored,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!(path = %entry.path.display(), error = %e, "cannot read a tile from a PMTiles archive");
                return Some(error(StatusCode::SERVICE_UNAVAILABLE, "cannot read this tile now"));
            }
        };
        return Some(match gunzip(&stored) {
            Ok(data) => {
                let len = data.len() as u64;
                let rep = files::Representation {
                    etag: files::Representation::content_etag(&data),
                    data,
                    content_type: HeaderValue::from_static(t.format.content_type()),
                    modified: Some(entry.validators.modified()),
                    cache_control: entry.cache_control.clone(),
                };
                let response = identity(files::respond_bytes(method, headers, rep));
                if response.status() == StatusCode::OK && method == Method::GET {
                    entry.counters.buffered.inc_by(len);
                }
                response
            }
            Err(e) => {
                tracing::warn!(path = %entry.path.display(), error = %e, "cannot decompress a PMTiles tile");
                error(StatusCode::SERVICE_UNAVAILABLE, "cannot decompress this tile now")
            }
        });
    }
    let mut response = Response::new(axum::body::Body::empty());
    let precondition =
        files::precondition(headers, etag.to_str().unwrap_or_default(), Some(entry.validators.modified()));
    if let Some(status) = precondition {
        *response.status_mut() = status;
    } else if method != Method::HEAD {
        let slice = FileSlice { entry: entry.clone(), offset: section.offset, len: section.length };
        response = Response::new(axum::body::Body::new(FileBody::new(&slice)));
        response.extensions_mut().insert(slice);
    }
    let h = response.headers_mut();
    if precondition.is_none() {
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(t.format.content_type()));
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(section.length));
        if let Some(coding) = coding {
            h.insert(header::CONTENT_ENCODING, HeaderValue::from_static(coding));
        }
    }
    h.insert(header::ETAG, etag);
    h.insert(header::LAST_MODIFIED, entry.last_modified.clone());
    // The tileset's, prepared once per descriptor (`Root::cache_control_for`).
    h.insert(header::CACHE_CONTROL, entry.cache_control.clone());
    if vary {
        h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    }
    Some(response)
}

/// `/tiles/{tileset}.pmtiles`: the archive itself, as a file (Range,
/// If-Range, multipart ranges), for clients that read PMTiles directly (the
/// `pmtiles` protocol of MapLibre reads the header, then directories and
/// tiles by ranges, and checks that the ETag stays the same). Only an
/// archive the catalog serves as a tileset: one refused at indexing is not
/// offered whole either.
async fn archive_download(app: AppState, method: &Method, headers: &HeaderMap, name: &str) -> Response {
    let Some(tileset) = name.strip_suffix(".pmtiles").filter(|n| safe_segment(n)) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let list = match app.tileset_list().await {
        Ok(list) => list,
        Err(response) => return response,
    };
    let served = list.iter().find(|t| t.name == tileset && t.source == Source::Pmtiles);
    let Some(root) = served.and_then(|t| app.root_by_id(t.root)).and_then(|index| app.roots.get(index)) else {
        return error(StatusCode::NOT_FOUND, "no such archive");
    };
    match app.open_in(std::iter::once(root), name.to_string()).await {
        Ok(Some(entry)) => files::respond(method, headers, entry),
        Ok(None) => error(StatusCode::NOT_FOUND, "no such archive"),
        Err(response) => response,
    }
}

/// `Cache-Control` of a tileset: its own setting, else its root's.
fn cache_control(app: &AppState, t: &Tileset) -> HeaderValue {
    // The same rule as for the tileset's files (`Root::cache_control_for`).
    app.root_by_id(t.root)
        .map(|root| app.roots[root].cache_control_for(&t.name))
        .and_then(|c| HeaderValue::from_str(c).ok())
        .unwrap_or(HeaderValue::from_static(DEFAULT_TILES_CACHE_CONTROL))
}

/// No tile at these coordinates. Inside the tileset's zoom levels that is
/// an empty area: 204 for vector tilesets (MapLibre draws nothing, without
/// an error) and 404 for raster ones, as configured per tileset; outside
/// them, or for a tileset nobody knows, 404.
fn missing(app: &AppState, info: Option<&Tileset>, spec: Option<&TilesetSpec>, tile: &Tile) -> Response {
    let Some(t) = info else { return error(StatusCode::NOT_FOUND, "no such tileset") };
    if tile.z < t.minzoom || tile.z > t.maxzoom {
        return error(StatusCode::NOT_FOUND, "outside the tileset's zoom levels");
    }
    if tile.format != t.format {
        return error(StatusCode::NOT_FOUND, "this tileset has no tiles of that format");
    }
    let default = if t.format.is_vector() { StatusCode::NO_CONTENT } else { StatusCode::NOT_FOUND };
    let status = spec.and_then(|s| s.missing_tile).unwrap_or(default);
    let mut response = if status == StatusCode::NO_CONTENT {
        let mut response = Response::new(axum::body::Body::empty());
        *response.status_mut() = status;
        response
    } else {
        error(status, "no tile here")
    };
    response.headers_mut().insert(header::CACHE_CONTROL, cache_control(app, t));
    response
}

/// `/tiles/{tileset}/`: a self-contained map page that reads the tileset's
/// TileJSON and draws its tiles (raster as images, vector tiles decoded in
/// the page), with no script from outside the appliance: control rooms are
/// often offline.
fn preview() -> Response {
    let mut response = Response::new(axum::body::Body::from(PREVIEW_HTML));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

const PREVIEW_HTML: &str = include_str!("preview.html");

/// `/tiles/{tileset}` without the slash: the preview page's URL is the
/// directory form, so that its relative links resolve.
fn redirect_to_preview(name: &str) -> Response {
    let location = format!("/tiles/{}/", wire::segment(name));
    let mut response = error(StatusCode::PERMANENT_REDIRECT, &format!("see {location}"));
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// `/tiles`: every tileset with its catalog facts, its TileJSON and its preview page.
pub async fn catalog(State(app): State<AppState>, caller: Option<Extension<Caller>>, headers: HeaderMap) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let tilesets = match app.tileset_list().await {
        Ok(t) => t,
        Err(response) => return response,
    };
    let base = app.base_url(&headers);
    let list: Vec<serde_json::Value> = tilesets
        .iter()
        .filter(|t| app.may_read(caller.as_ref(), &super::tileset_path(&t.name)))
        .map(|t| {
            let scheme = stored_scheme(Some(t), app.tilesets.get(&t.name));
            let id = wire::segment(&t.name);
            json!({
                "name": t.name,
                "source": t.source.as_str(),
                "format": t.format.as_str(),
                "scheme": scheme.as_str(),
                "minzoom": t.minzoom,
                "maxzoom": t.maxzoom,
                "bounds": t.bounds(scheme == Scheme::Tms),
                "tile_count": t.tile_count,
                "last_change": wire::rfc3339_ns(t.last_change_ns),
                "version": t.version(),
                "tilejson": format!("{base}/tiles/{id}.json"),
                "preview": format!("{base}/tiles/{id}/"),
            })
        })
        .collect();
    json_response(&headers, &json!({ "tilesets": list }))
}

/// How a tileset's rows are numbered on disk: the configuration's word,
/// else what its files say. For a tileset the catalog does not know yet (a
/// tile request can come before the first reconcile), the configuration's
/// word, else XYZ. The configuration never overrides an MBTiles file's own.
fn stored_scheme(info: Option<&Tileset>, spec: Option<&TilesetSpec>) -> Scheme {
    match (spec.and_then(|s| s.scheme), info) {
        (Some(scheme), None) => scheme,
        (Some(scheme), Some(t)) if t.source == Source::Directory => scheme,
        (_, Some(t)) => t.scheme,
        _ => Scheme::Xyz,
    }
}

/// `/tiles/{tileset}.json`: TileJSON 3.0.0 from the catalog.
async fn tilejson(app: AppState, headers: &HeaderMap, name: &str) -> Response {
    let Some(name) = name.strip_suffix(".json").filter(|n| safe_segment(n)) else {
        return error(StatusCode::NOT_FOUND, "not found");
    };
    let tilesets = match app.tileset_list().await {
        Ok(t) => t,
        Err(response) => return response,
    };
    match tilesets.iter().find(|t| t.name == name) {
        Some(t) => json_response(headers, &tilejson_of(t, app.tilesets.get(name), &app.base_url(headers))),
        None => error(StatusCode::NOT_FOUND, "no such tileset"),
    }
}

/// TileJSON 3.0.0. Zoom levels and bounds are the catalog's (what is really
/// on disk); name, description, attribution, center and vector_layers come
/// from `metadata.json` or the MBTiles metadata table when they are there.
/// Tiles are always served in XYZ order, whatever the storage's scheme.
fn tilejson_of(t: &Tileset, spec: Option<&TilesetSpec>, base: &str) -> serde_json::Value {
    let bounds = t.bounds(stored_scheme(Some(t), spec) == Scheme::Tms);
    let meta = t.metadata.as_ref().and_then(|m| m.as_object());
    let text = |key: &str| meta.and_then(|m| m.get(key)).and_then(|v| v.as_str()).filter(|v| !v.is_empty());
    let id = wire::segment(&t.name);
    let mut tj = json!({
        "tilejson": "3.0.0",
        "name": text("name").unwrap_or(&t.name),
        "scheme": "xyz",
        "format": t.format.as_str(),
        "tiles": [format!("{base}/tiles/{id}/{{z}}/{{x}}/{{y}}.{}?v={}", t.format, t.version())],
        "minzoom": t.minzoom,
        "maxzoom": t.maxzoom,
        "bounds": bounds,
        "center": center(meta, &bounds, t.minzoom, t.maxzoom),
    });
    for key in ["description", "attribution"] {
        if let Some(value) = text(key) {
            tj[key] = json!(value);
        }
    }
    // TileJSON's `version` is a semver; metadata often has a bare counter.
    if let Some(version) = text("version").filter(|v| v.split('.').count() == 3) {
        tj["version"] = json!(version);
    }
    if t.format.is_vector() {
        tj["vector_layers"] = vector_layers(meta);
    }
    tj
}

/// `center` from the metadata ("lon,lat,zoom" or an array) if it lies in
/// the bounds and zoom levels; else the middle of the bounds.
fn center(
    meta: Option<&serde_json::Map<String, serde_json::Value>>,
    bounds: &[f64; 4],
    minzoom: u32,
    maxzoom: u32,
) -> serde_json::Value {
    let [w, s, e, n] = *bounds;
    let declared: Option<Vec<f64>> = meta.and_then(|m| m.get("center")).and_then(|c| match c {
        serde_json::Value::String(text) => text.split(',').map(|p| p.trim().parse().ok()).collect(),
        serde_json::Value::Array(items) => items.iter().map(|v| v.as_f64()).collect(),
        _ => None,
    });
    if let Some([lon, lat, zoom]) = declared.as_deref() {
        let zoom = zoom.round();
        if (w..=e).contains(lon) && (s..=n).contains(lat) && (f64::from(minzoom)..=f64::from(maxzoom)).contains(&zoom) {
            return json!([lon, lat, zoom as u32]);
        }
    }
    json!([(w + e) / 2.0, (s + n) / 2.0, minzoom.max(maxzoom.min(2))])
}

/// `vector_layers` as tippecanoe writes it (inside the `json` string of
/// metadata.json or of the MBTiles metadata table) or as a plain array.
fn vector_layers(meta: Option<&serde_json::Map<String, serde_json::Value>>) -> serde_json::Value {
    let Some(meta) = meta else { return json!([]) };
    if let Some(layers) = meta.get("vector_layers").filter(|v| v.is_array()) {
        return layers.clone();
    }
    meta.get("json")
        .and_then(|j| j.as_str())
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|j| j.get("vector_layers").filter(|v| v.is_array()).cloned())
        .unwrap_or_else(|| json!([]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tile_addresses_map_to_statuses() {
        assert_eq!(tile_address("w", "2", "3", "1.png").map(|(_, t)| t.rel("w")), Ok("w/2/3/1.png".into()));
        assert_eq!(tile_address(".w", "2", "3", "1.png").err(), Some(StatusCode::NOT_FOUND));
        assert_eq!(tile_address("w", "2", "4", "1.png").err(), Some(StatusCode::NOT_FOUND));
        assert_eq!(tile_address("w", "1", "0", "0.exe").err(), Some(StatusCode::NOT_FOUND));
        assert_eq!(tile_address("w", "a", "0", "0.png").err(), Some(StatusCode::BAD_REQUEST));
        assert_eq!(tile_address("w", "1", "+1", "0.png").err(), Some(StatusCode::BAD_REQUEST));
        let (_, t) = tile_address("w", "2", "3", "1.png").unwrap();
        assert_eq!(stored_rel("w", &t, true), "w/2/3/2.png");
    }
}
