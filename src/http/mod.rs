//! HTTP: the axum Router that produces every response (DESIGN.md decision 1),
//! whatever transport then carries it.

pub mod console;
pub mod files;
mod follow;
mod guard;
mod logs;
pub mod observe;
mod slices;
mod status;
pub mod tiles;
pub mod wire;

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use parking_lot::Mutex;

use crate::access::{Caller, Limiter, Policy, Target};
use crate::cache::{DescriptorCache, FileEntry};
use crate::catalog::digest::Digests;
use crate::catalog::{self, Tileset};
use crate::config::{Config, RootKind, TilesetSpec};
use crate::mbtiles::MbtilesFiles;
use crate::metrics::Metrics;
use crate::roots::Root;
use crate::watch::Followers;

/// Everything a handler may need.
pub struct App {
    pub roots: Arc<Vec<Root>>,
    /// Database id of each root, by root index.
    pub root_ids: Vec<i64>,
    pub cache: Arc<DescriptorCache>,
    pub metrics: Arc<Metrics>,
    pub ready: Arc<AtomicBool>,
    pub started: Instant,
    /// Digests of logs, by file version (`Repr-Digest`).
    pub digests: Arc<Digests>,
    /// Wake-ups for `?follow` downloads, and how many run (at most `max_followers`).
    pub followers: Arc<Followers>,
    pub following: AtomicUsize,
    pub max_followers: usize,
    /// `[tilesets.NAME]` settings.
    pub tilesets: Arc<BTreeMap<String, TilesetSpec>>,
    pub public_url: Option<String>,
    pub mbtiles: MbtilesFiles,
    /// Cached headers and directories of the PMTiles archives served.
    pub archives: crate::archive::Archives,
    /// The catalog worker's generation of tiles roots, and the tilesets read at one.
    generation: Arc<AtomicU64>,
    snapshot: Mutex<Option<(u64, Arc<Vec<Tileset>>)>>,
    /// The catalog's read side.
    reader: Arc<catalog::Reader>,
    /// The access rules, and the limits on wrong bearer tokens per address.
    pub policy: Arc<Policy>,
    pub limiter: Arc<Limiter>,
    /// The last hour of figures, for the console.
    pub history: console::History,
    /// `tessera doctor`'s report, line by line, taken once after start
    /// (by `server`: it walks the roots), for the console's roots view.
    pub doctor: Mutex<Vec<String>>,
}

pub type AppState = Arc<App>;

/// The service's status line for systemd (`systemctl status tessera`).
pub struct Status(pub AppState);

impl crate::systemd::StatusSource for Status {
    async fn status(&self) -> String {
        let app = &self.0;
        let (tile_order, log_order) = (app.root_order(RootKind::Tiles), app.root_order(RootKind::Logs));
        let counts = app
            .query(move |q| {
                let tilesets = q.tilesets(&tile_order)?.len();
                Ok((tilesets, q.logs(&log_order, &Default::default())?.len()))
            })
            .await;
        use prometheus::core::Collector;
        let requests: u64 = app
            .metrics
            .requests
            .collect()
            .iter()
            .flat_map(|family| family.get_metric())
            .map(|m| m.get_counter().get_value() as u64)
            .sum();
        match counts {
            Ok((tilesets, logs)) => format!(
                "{tilesets} tilesets, {logs} logs, {requests} requests, {} files open",
                app.metrics.cache_open_files.get()
            ),
            Err(_) => format!("catalog unavailable; {requests} requests"),
        }
    }
}

/// What the HTTP layer shares with the catalog's threads.
pub struct CatalogState {
    /// Database id of each root, by root index.
    pub root_ids: Vec<i64>,
    /// Set once the start-up reconcile is done.
    pub ready: Arc<AtomicBool>,
    /// The catalog worker's generation of tiles roots (moves when a
    /// reconcile may have changed a tileset).
    pub generation: Arc<AtomicU64>,
    pub digests: Arc<Digests>,
    pub location: catalog::Location,
}

impl App {
    pub fn new(
        config: &Config,
        roots: Arc<Vec<Root>>,
        cache: Arc<DescriptorCache>,
        metrics: Arc<Metrics>,
        catalog: CatalogState,
        followers: Arc<Followers>,
    ) -> App {
        let CatalogState { root_ids, ready, generation, digests, location } = catalog;
        App {
            roots,
            root_ids,
            cache,
            metrics,
            ready,
            digests,
            followers,
            following: AtomicUsize::new(0),
            max_followers: config.http.max_followers,
            started: Instant::now(),
            tilesets: config.tilesets.clone(),
            public_url: config.http.public_url.clone(),
            mbtiles: MbtilesFiles::default(),
            archives: crate::archive::Archives::default(),
            generation,
            snapshot: Mutex::new(None),
            reader: Arc::new(catalog::Reader::new(location)),
            policy: Arc::new(Policy::new(config)),
            limiter: Arc::default(),
            history: console::History::default(),
            doctor: Mutex::new(Vec::new()),
        }
    }

    /// The catalog worker's generation of tiles roots now.
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The catalog worker's generation counter itself (for replays that
    /// last only while it stands still).
    fn generation_counter(&self) -> Arc<AtomicU64> {
        self.generation.clone()
    }

    /// The catalog's tilesets (first root wins a name), read again only
    /// when the worker's generation of tiles roots has moved since the last
    /// read: the tile path asks for them on every request it does not
    /// replay.
    async fn tileset_list(self: &Arc<Self>) -> Result<Arc<Vec<Tileset>>, Response> {
        let generation = self.generation.load(Ordering::Acquire);
        if let Some((at, list)) = self.snapshot.lock().as_ref() {
            if *at == generation {
                return Ok(list.clone());
            }
        }
        let order = self.root_order(RootKind::Tiles);
        match self.query(move |q| q.tilesets(&order)).await {
            Ok(list) => {
                let list = Arc::new(list);
                *self.snapshot.lock() = Some((generation, list.clone()));
                Ok(list)
            }
            // The catalog is unreadable: keep what was last read (or
            // nothing) for this generation, so that tile requests do not each
            // pay for the failure; the next catalog change retries.
            Err(response) => {
                let mut snapshot = self.snapshot.lock();
                let last = snapshot.as_ref().map(|(_, list)| list.clone()).unwrap_or_default();
                *snapshot = Some((generation, last));
                Err(response)
            }
        }
    }

    /// Whether the caller of a request may read `path`: listings show only
    /// what their caller may read. Without a guard every path is open.
    fn may_read(&self, caller: Option<&Caller>, path: &str) -> bool {
        if !self.policy.enforced {
            return true;
        }
        let anonymous = Caller::default();
        let caller = caller.unwrap_or(&anonymous);
        guard::decide(&self.policy, &self.roots, caller, &Target::new(path)).allowed
    }

    /// The index of the root with this database id.
    fn root_by_id(&self, id: i64) -> Option<usize> {
        self.root_ids.iter().position(|r| *r == id)
    }

    /// The base URL for links clients follow: the configured public URL,
    /// else the one the request came by.
    fn base_url(&self, headers: &HeaderMap) -> String {
        self.public_url.clone().unwrap_or_else(|| base_url(headers))
    }

    /// Database ids of the roots of `kind`, in lookup order.
    fn root_order(&self, kind: RootKind) -> Vec<i64> {
        self.roots.iter().filter(|r| r.kind() == kind).map(|r| self.root_ids[r.index]).collect()
    }

    /// Runs a catalog query on the blocking pool.
    async fn query<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(catalog::Queries<'_>) -> Result<T, catalog::Error> + Send + 'static,
    ) -> Result<T, Response> {
        let reader = self.reader.clone();
        let result = tokio::task::spawn_blocking(move || reader.read(f)).await;
        match result {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "catalog query failed");
                Err(error(StatusCode::SERVICE_UNAVAILABLE, "catalog unavailable, retry shortly"))
            }
            Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())),
        }
    }

    /// Opens `rel` in the first root of `kind` that has it. Local roots open
    /// inline (a cache hit costs no syscall, a miss one `openat2`); shared
    /// storage can block for long, so it opens on the blocking pool.
    /// `Ok(None)`: no root has it.
    async fn open(self: &Arc<Self>, kind: RootKind, rel: String) -> Result<Option<Arc<FileEntry>>, Response> {
        self.open_in(self.roots.iter().filter(|r| r.kind() == kind), rel).await
    }

    /// [`App::open`] among the given roots only.
    async fn open_in(
        self: &Arc<Self>,
        roots: impl Iterator<Item = &Root>,
        rel: String,
    ) -> Result<Option<Arc<FileEntry>>, Response> {
        for root in roots {
            let result = if root.caches_descriptors(&rel) {
                self.cache.open(root, &rel)
            } else {
                let (app, index, rel) = (self.clone(), root.index, rel.clone());
                tokio::task::spawn_blocking(move || app.cache.open(&app.roots[index], &rel))
                    .await
                    .unwrap_or_else(|e| Err(io::Error::other(e)))
            };
            match result {
                Ok(entry) => return Ok(Some(entry)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) || e.raw_os_error() == Some(libc::ELOOP) => continue,
                Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                    tracing::debug!(rel, error = %e, "refused a path outside its root or unreadable");
                    return Err(error(StatusCode::NOT_FOUND, "not found"));
                }
                Err(e) => {
                    tracing::warn!(rel, error = %e, "cannot open file");
                    return Err(error(StatusCode::SERVICE_UNAVAILABLE, "cannot open file now, retry shortly"));
                }
            }
        }
        Ok(None)
    }
}

/// The router with every URL of the contract in DESIGN.md.
pub fn router(app: AppState) -> Router {
    let router = Router::new()
        .route("/", get(status::index))
        .route("/healthz", get(status::healthz))
        .route("/readyz", get(status::readyz))
        .route("/metrics", get(status::metrics))
        .route("/console/data.json", get(console::data))
        .route("/console/devices.json", get(console::devices))
        .route("/console/console.js", get(console::script))
        .route("/console/console.css", get(console::style))
        .route("/console/coverage/{tileset}", get(console::coverage))
        .route("/tiles", get(tiles::catalog))
        // One route for TileJSON and tiles: the handler splits the raw path
        // itself (cheaper than four extracted parameters on the hot path).
        .route("/tiles/{*rest}", get(tiles::dispatch))
        .route("/logs", get(logs::list))
        .route("/logs/{device}", get(logs::list_device))
        .route("/logs/{device}/{file}", get(logs::download))
        .fallback(not_found);
    // Without a rule that closes anything, no guard: every path answers as
    // on a loopback appliance, at no cost per request.
    let router = if app.policy.enforced {
        let guard = Arc::new(guard::Guard {
            roots: app.roots.clone(),
            policy: app.policy.clone(),
            limiter: app.limiter.clone(),
            metrics: app.metrics.clone(),
        });
        router.layer(axum::middleware::from_fn_with_state(guard, guard::guard))
    } else {
        router
    };
    router
        .layer(observe::ObserveLayer::new(app.metrics.clone()))
        .layer(observe::cors())
        .layer(tower_http::trace::TraceLayer::new_for_http())
        // Whatever prints a request's headers (a debug span, a future
        // layer) shows `Authorization` as "Sensitive", never the token.
        .layer(tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer::new([header::AUTHORIZATION]))
        .with_state(app)
}

async fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "not found")
}

/// A small JSON error body: `{"error": "..."}`.
pub fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// The path whose access rules decide whether a tileset is listed: its
/// TileJSON's, which the rules read as exactly `/tiles/{name}` (a name
/// ending in `.json` included).
fn tileset_path(name: &str) -> String {
    format!("/tiles/{}.json", wire::segment(name))
}

/// The base URL clients reached us by, from the Host header when it is sane.
fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.chars().all(|c| c.is_ascii_alphanumeric() || "-.:[]".contains(c)))
        .unwrap_or("localhost");
    format!("http://{host}")
}

/// A JSON document built from the catalog: `no-cache`, with a strong ETag
/// from its bytes, so that a dashboard polling a listing revalidates with
/// If-None-Match and gets a 304 while nothing changed (httplint warned of
/// `no-cache` without a validator).
fn json_response<T: serde::Serialize>(headers: &HeaderMap, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => revalidated(headers, "application/json", body),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot encode JSON: {e}")),
    }
}

/// Bytes made here (a JSON document, a file built into the binary) as a
/// `no-cache` answer with a strong ETag of their content: a 304 for a
/// client that has them already.
fn revalidated(headers: &HeaderMap, content_type: &'static str, body: impl AsRef<[u8]> + Into<Body>) -> Response {
    let etag = files::Representation::content_etag(body.as_ref());
    let mut response = if files::none_match(headers, etag.to_str().unwrap_or_default()) {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::NOT_MODIFIED;
        response
    } else {
        let mut response = Response::new(body.into());
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
        response
    };
    response.headers_mut().insert(header::ETAG, etag);
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn text_response(content_type: &'static str, body: impl Into<Body>) -> Response {
    let mut response = Response::new(body.into());
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
