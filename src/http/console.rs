//! The operator console: the page (`/`, with the plain tables inside for
//! browsers without JavaScript, and its script and style, all served from
//! here: the console works with no network beyond the appliance) and its
//! data: `/console/data.json` (the last hour of figures, sampled every
//! [`INTERVAL`] from the metrics, plus roots and tilesets),
//! `/console/devices.json` (each device's log spans) and
//! `/console/coverage/{tileset}` (which tiles exist at a zoom level).
//!
//! The figures are kept here, not asked of Prometheus: an appliance on an
//! isolated network often has no Grafana, and the console must show the
//! last hour the moment it opens.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use parking_lot::Mutex;
use prometheus::core::Collector;
use serde::{Deserialize, Serialize};

use super::{error, json_response, wire, AppState};
use crate::access::Caller;
use crate::catalog::Source;
use crate::config::RootKind;
use crate::metrics::{Metrics, LATENCY_BUCKETS};

const PAGE: &str = include_str!("console/console.html");
const SCRIPT: &str = include_str!("console/console.js");
const STYLE: &str = include_str!("console/console.css");

/// The console page around `tables` (the plain status tables, which the
/// script hides once it has drawn the richer views).
pub fn page(tables: &str) -> String {
    PAGE.replacen("<!--tables-->", tables, 1)
}

/// `/console/console.js`.
pub async fn script(headers: HeaderMap) -> Response {
    super::revalidated(&headers, "text/javascript; charset=utf-8", SCRIPT)
}

/// `/console/console.css`.
pub async fn style(headers: HeaderMap) -> Response {
    super::revalidated(&headers, "text/css; charset=utf-8", STYLE)
}

/// How often the figures are sampled.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// Samples kept: an hour.
const KEPT: usize = 720;
/// Tiles one coverage answer lists at most (a 64 × 64 zoom level).
const COVERAGE_MAX: usize = 4096;

/// One look at the counters (cumulative, as the metrics hold them).
#[derive(Debug, Clone, Default)]
struct Sample {
    t_ms: i64,
    requests: u64,
    /// 2xx, 3xx, 4xx, 5xx.
    status: [u64; 4],
    /// sendfile, memory, buffered, body.
    bytes: [u64; 4],
    connections: i64,
    cache_hits: u64,
    cache_misses: u64,
    invalidations: u64,
    catalog_changes: u64,
    /// Cumulative count per latency bucket (then +Inf).
    latency: Vec<u64>,
}

/// The last hour of samples.
#[derive(Default)]
pub struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn push(&self, sample: Sample) {
        let mut samples = self.samples.lock();
        if samples.len() == KEPT {
            samples.pop_front();
        }
        samples.push_back(sample);
    }
}

/// Samples the metrics every [`INTERVAL`] for as long as the server runs.
pub async fn sample(app: AppState) {
    let mut ticks = tokio::time::interval(INTERVAL);
    // After a stall, one sample, not a burst of them a moment apart.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        app.history.push(take(&app.metrics));
    }
}

fn take(m: &Metrics) -> Sample {
    let mut s = Sample { t_ms: now_ms(), ..Sample::default() };
    for family in m.requests.collect() {
        for metric in family.get_metric() {
            let count = metric.get_counter().get_value() as u64;
            s.requests += count;
            let status = metric.get_label().iter().find(|l| l.name() == "status").map(|l| l.value());
            if let Some(class) = status.and_then(|v| v.as_bytes().first()).and_then(|c| c.checked_sub(b'2')) {
                if let Some(slot) = s.status.get_mut(class as usize) {
                    *slot += count;
                }
            }
        }
    }
    for family in m.bytes_sent.collect() {
        for metric in family.get_metric() {
            let path = metric.get_label().iter().find(|l| l.name() == "path").map(|l| l.value());
            let slot = match path {
                Some("sendfile") => 0,
                Some("memory") => 1,
                Some("buffered") => 2,
                _ => 3,
            };
            s.bytes[slot] += metric.get_counter().get_value() as u64;
        }
    }
    s.connections = m.connections.get();
    s.cache_hits = m.cache_hits.get();
    s.cache_misses = m.cache_misses.get();
    s.invalidations = m.cache_invalidations.get();
    s.catalog_changes = m.catalog_changes.get();
    let histogram = m.request_seconds.collect();
    if let Some(h) = histogram.first().and_then(|f| f.get_metric().first()).map(|m| m.get_histogram()) {
        s.latency = h.get_bucket().iter().map(|b| b.cumulative_count()).collect();
        s.latency.push(h.get_sample_count());
    }
    s
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// The `q` quantile (0..1) of the requests between two samples, in ms, by
/// linear interpolation inside the bucket it falls in; None without requests.
fn quantile(before: &[u64], after: &[u64], q: f64) -> Option<f64> {
    let delta: Vec<u64> =
        after.iter().zip(before.iter().chain(std::iter::repeat(&0))).map(|(a, b)| a.saturating_sub(*b)).collect();
    let total = *delta.last()?;
    if total == 0 {
        return None;
    }
    let rank = q * total as f64;
    let mut lower = 0.0;
    let mut below = 0u64;
    for (i, &cumulative) in delta.iter().enumerate() {
        let upper = LATENCY_BUCKETS.get(i).copied().unwrap_or(lower * 2.0);
        if cumulative as f64 >= rank {
            let inside = (cumulative - below).max(1) as f64;
            let at = lower + (upper - lower) * ((rank - below as f64) / inside).clamp(0.0, 1.0);
            return Some((at * 1e6).round() / 1e3);
        }
        lower = upper;
        below = cumulative;
    }
    None
}

#[derive(Serialize, Default)]
struct Series {
    t_ms: Vec<i64>,
    requests: Vec<u64>,
    status: BTreeMap<&'static str, Vec<u64>>,
    bytes: BTreeMap<&'static str, Vec<u64>>,
    p50_ms: Vec<Option<f64>>,
    p99_ms: Vec<Option<f64>>,
    connections: Vec<i64>,
    cache_hits: Vec<u64>,
    cache_misses: Vec<u64>,
    revalidations: Vec<u64>,
    catalog_changes: Vec<u64>,
}

fn series(history: &History) -> Series {
    let samples = history.samples.lock();
    let mut out = Series::default();
    let mut previous: Option<&Sample> = None;
    for s in samples.iter() {
        out.t_ms.push(s.t_ms);
        out.requests.push(s.requests);
        for (i, class) in ["2xx", "3xx", "4xx", "5xx"].into_iter().enumerate() {
            out.status.entry(class).or_default().push(s.status[i]);
        }
        for (i, path) in ["sendfile", "memory", "buffered", "body"].into_iter().enumerate() {
            out.bytes.entry(path).or_default().push(s.bytes[i]);
        }
        let before = previous.map_or(&[][..], |p| &p.latency[..]);
        out.p50_ms.push(previous.and_then(|_| quantile(before, &s.latency, 0.5)));
        out.p99_ms.push(previous.and_then(|_| quantile(before, &s.latency, 0.99)));
        out.connections.push(s.connections);
        out.cache_hits.push(s.cache_hits);
        out.cache_misses.push(s.cache_misses);
        out.revalidations.push(s.invalidations);
        out.catalog_changes.push(s.catalog_changes);
        previous = Some(s);
    }
    out
}

#[derive(Serialize)]
struct RootView {
    kind: String,
    path: String,
    fs: String,
    shared: bool,
    delivery: &'static str,
    why: String,
    watcher: String,
    unwatched_dirs: i64,
}

#[derive(Serialize)]
struct TilesetView {
    name: String,
    source: &'static str,
    format: String,
    minzoom: u32,
    maxzoom: u32,
    tile_count: u64,
    last_change: String,
    preview: String,
    tilejson: String,
}

#[derive(Serialize)]
struct Span {
    file: String,
    url: String,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    size: u64,
}

#[derive(Serialize)]
struct Device {
    device: String,
    spans: Vec<Span>,
}

#[derive(Serialize)]
struct Data {
    now_ms: i64,
    up_s: u64,
    ready: bool,
    interval_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    series: Option<Series>,
    #[serde(skip_serializing_if = "Option::is_none")]
    roots: Option<Vec<RootView>>,
    /// `tessera doctor`'s findings (once taken, after start).
    #[serde(skip_serializing_if = "Option::is_none")]
    doctor: Option<Vec<String>>,
    tilesets: Vec<TilesetView>,
}

#[derive(Serialize)]
struct Devices {
    devices: Vec<Device>,
}

/// `/console/data.json`: what the console redraws every few seconds. The
/// figures and the roots are the operator's view (whoever may read
/// `/metrics`); tilesets are those the caller may read.
pub async fn data(State(app): State<AppState>, caller: Option<Extension<Caller>>, headers: HeaderMap) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let may_read = |path: &str| app.may_read(caller.as_ref(), path);
    let operator = may_read("/metrics");
    let list = match app.tileset_list().await {
        Ok(list) => list,
        Err(response) => return response,
    };
    let tilesets = list
        .iter()
        .filter(|t| may_read(&super::tileset_path(&t.name)))
        .map(|t| {
            let url = wire::segment(&t.name);
            TilesetView {
                name: t.name.clone(),
                source: t.source.as_str(),
                format: t.format.to_string(),
                minzoom: t.minzoom,
                maxzoom: t.maxzoom,
                tile_count: t.tile_count,
                last_change: wire::rfc3339_ns(t.last_change_ns),
                preview: format!("/tiles/{url}/"),
                tilejson: format!("/tiles/{url}.json"),
            }
        })
        .collect();
    let roots = operator.then(|| {
        app.roots
            .iter()
            .map(|r| RootView {
                kind: r.kind().to_string(),
                path: r.path().display().to_string(),
                fs: r.storage.fs_name.clone(),
                shared: r.storage.shared,
                delivery: r.delivery.as_str(),
                why: r.areas.first().map(|a| a.reason.clone()).unwrap_or_default(),
                watcher: format!("{:?}", r.watcher).to_lowercase(),
                unwatched_dirs: app
                    .metrics
                    .unwatched_dirs
                    .get_metric_with_label_values(&[&r.path().display().to_string()])
                    .map_or(0, |g| g.get()),
            })
            .collect()
    });
    let data = Data {
        now_ms: now_ms(),
        up_s: app.started.elapsed().as_secs(),
        ready: app.ready.load(Ordering::Acquire),
        interval_s: INTERVAL.as_secs(),
        series: operator.then(|| series(&app.history)),
        roots,
        doctor: operator.then(|| app.doctor.lock().clone()).filter(|d| !d.is_empty()),
        tilesets,
    };
    json_response(&headers, &data)
}

/// `/console/devices.json`: each device's logs as spans of time, for the
/// timeline (the logs the caller may read). Apart from the figures: it is
/// the largest part, and changes with the logs, not every few seconds.
pub async fn devices(State(app): State<AppState>, caller: Option<Extension<Caller>>, headers: HeaderMap) -> Response {
    let caller = caller.map(|Extension(c)| c);
    let log_order = app.root_order(RootKind::Logs);
    let logs = match app.query(move |q| q.logs(&log_order, &Default::default())).await {
        Ok(logs) => logs,
        Err(response) => return response,
    };
    let mut devices: Vec<Device> = Vec::new();
    for l in logs.iter() {
        let url = super::logs::url(&l.device, &l.file);
        if !app.may_read(caller.as_ref(), &url) {
            continue;
        }
        let span = Span { file: l.file.clone(), url, first_ms: l.first_ms, last_ms: l.last_ms, size: l.size };
        match devices.last_mut() {
            Some(d) if d.device == l.device => d.spans.push(span),
            _ => devices.push(Device { device: l.device.clone(), spans: vec![span] }),
        }
    }
    json_response(&headers, &Devices { devices })
}

#[derive(Deserialize)]
pub struct CoverageQuery {
    z: Option<u32>,
}

#[derive(Serialize)]
struct Coverage {
    z: u32,
    x0: u32,
    x1: u32,
    y0: u32,
    y1: u32,
    /// XYZ rows. Empty for an archive, whose extent is all it says.
    tiles: Vec<[u32; 2]>,
    /// More tiles than [`COVERAGE_MAX`] exist: the first ones are listed.
    truncated: bool,
    /// An archive: only its extent at this zoom is known here.
    extent_only: bool,
}

/// `/console/coverage/{tileset}?z=N`: which tiles exist at zoom `z`.
pub async fn coverage(
    State(app): State<AppState>,
    caller: Option<Extension<Caller>>,
    Path(name): Path<String>,
    Query(query): Query<CoverageQuery>,
    headers: HeaderMap,
) -> Response {
    let caller = caller.map(|Extension(c)| c);
    if !app.may_read(caller.as_ref(), &super::tileset_path(&name)) {
        return error(StatusCode::NOT_FOUND, "no such tileset");
    }
    let list = match app.tileset_list().await {
        Ok(list) => list,
        Err(response) => return response,
    };
    let Some(t) = list.iter().find(|t| t.name == name) else {
        return error(StatusCode::NOT_FOUND, "no such tileset");
    };
    let z = query.z.unwrap_or(t.minzoom.max(t.maxzoom.min(4)));
    // A rule may close a zoom level (`/tiles/{name}/{z}`) of an open tileset.
    if !app.may_read(caller.as_ref(), &format!("/tiles/{}/{z}", wire::segment(&name))) {
        return error(StatusCode::NOT_FOUND, "no such tileset");
    }
    let Some(&[_, x0, x1, y0, y1]) = t.levels.iter().find(|l| l[0] == z) else {
        return error(StatusCode::NOT_FOUND, "the tileset has no tiles at this zoom");
    };
    let tms = t.scheme == crate::config::Scheme::Tms;
    let flip = |y: u32| if tms { crate::tile::flip_row(z, y) } else { y };
    let (y0, y1) = if tms { (flip(y1), flip(y0)) } else { (y0, y1) };
    let mut answer = Coverage { z, x0, x1, y0, y1, tiles: Vec::new(), truncated: false, extent_only: true };
    if t.source == Source::Directory {
        let (root, tileset) = (t.root, t.name.clone());
        let tiles = app.query(move |q| q.tiles_at(root, &tileset, z, COVERAGE_MAX + 1)).await;
        let mut tiles = match tiles {
            Ok(tiles) => tiles,
            Err(response) => return response,
        };
        answer.truncated = tiles.len() > COVERAGE_MAX;
        tiles.truncate(COVERAGE_MAX);
        answer.tiles = tiles.into_iter().map(|(x, y)| [x, flip(y)]).collect();
        answer.extent_only = false;
    }
    json_response(&headers, &answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_requests_between_two_samples() {
        let n = LATENCY_BUCKETS.len() + 1;
        let before = vec![0; n];
        // 100 requests: 90 under 100 µs (bucket 1), 10 in 1–2.5 ms (bucket 5).
        let mut after = vec![0; n];
        for (i, slot) in after.iter_mut().enumerate() {
            *slot = if i >= 5 {
                100
            } else if i >= 1 {
                90
            } else {
                0
            };
        }
        let p50 = quantile(&before, &after, 0.5).unwrap();
        assert!((0.05..=0.1).contains(&p50), "{p50}");
        let p99 = quantile(&before, &after, 0.99).unwrap();
        assert!((1.0..=2.5).contains(&p99), "{p99}");
        assert_eq!(quantile(&after, &after, 0.5), None, "no request between them");
    }
}
