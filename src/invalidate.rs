//! Pushed invalidation: tells the HTTP caches in front of the nodes
//! (`[[caches]]`: Varnish with image/fleet/tessera.vcl, or any cache that
//! takes `PURGE`) which URLs a change on disk made stale, so that a cache
//! is as fresh as tessera instead of as old as its TTL.
//!
//! The catalog worker hands over the paths each reconcile changed
//! ([`Invalidator::changed`], which never blocks; `server` wires it); a thread of its own
//! turns them into targets (a tile, a tileset, a log and the listings
//! that show them), batches them per cache, sends them, and retries with
//! backoff. Each cache has its own bounded queue: past [`MAX_PENDING`]
//! targets it becomes one invalidation of each root kind it touched, and
//! the targets of a cache that keeps failing for [`MAX_ATTEMPTS`] tries are
//! dropped (counted, and said in the journal). Every node
//! sharing the storage sends the same invalidations when it sees the same
//! change: a ban or a purge repeated is harmless.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::{CacheTarget, InvalidationProtocol, RootKind};
use crate::metrics::Metrics;
use crate::tile::Tile;

/// Targets one cache may have waiting; more become whole roots.
pub const MAX_PENDING: usize = 4096;
/// Failed sends in a row after which a cache's waiting targets are dropped
/// (with the backoff, about half a minute of a cache that does not answer:
/// one down that long restarts empty, or is gone).
pub const MAX_ATTEMPTS: u32 = 8;
/// More changed tiles of one tileset in one batch become one target for
/// the whole tileset (a re-rendered tileset is one request).
const TILESET_FROM: usize = 64;
/// Changes this close together go out in one request.
const GATHER: Duration = Duration::from_millis(20);
/// The longest a send may take, connection included.
const SEND_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest `X-Tessera-Ban` value: well inside Varnish's default
/// `http_req_hdr_len` (8 KiB), whatever the names' lengths.
const BAN_BYTES: usize = 4096;

/// What a change made stale, as URL paths of this server.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Target {
    /// One tile, under either row order (the directory's scheme is the
    /// catalog's business; invalidating one other tile is harmless).
    Tile { tileset: String, z: u32, x: u32, y: u32, ext: String },
    /// A tileset's TileJSON (its `?v=` moved).
    TileJson(String),
    /// Everything of a tileset: tiles, TileJSON, archive, preview.
    Tileset(String),
    /// The tileset listing.
    Tilesets,
    /// One log file, with any query (slices).
    Log { device: String, file: String },
    /// A device's listing and its `.lines` spans.
    Device(String),
    /// The log listing.
    Logs,
    /// Everything under `/tiles` or `/logs`.
    All(RootKind),
}

impl Target {
    /// The targets a changed path (relative to a root of `kind`) makes stale.
    pub fn of_change(kind: RootKind, rel: &str) -> Vec<Target> {
        // "" is the whole root (`ReconcileStats::changed` past its cap).
        if rel.is_empty() {
            return vec![Target::All(kind)];
        }
        let parts: Vec<&str> = rel.split('/').collect();
        match (kind, parts.as_slice()) {
            (RootKind::Tiles, [_, _, _, _]) => match Tile::parse_rel(rel) {
                Some((tileset, tile)) => vec![
                    Target::Tile { tileset: tileset.to_string(), z: tile.z, x: tile.x, y: tile.y, ext: tile.ext },
                    Target::TileJson(tileset.to_string()),
                    Target::Tilesets,
                ],
                None => Vec::new(),
            },
            (RootKind::Tiles, [tileset, "metadata.json"]) => {
                vec![Target::Tileset(tileset.to_string()), Target::Tilesets]
            }
            // An archive, or an MBTiles file's `-wal` (its commits in WAL mode).
            (RootKind::Tiles, [file]) => {
                let name = [".pmtiles", ".mbtiles", ".mbtiles-wal"].iter().find_map(|ext| file.strip_suffix(ext));
                match name {
                    Some(tileset) if !tileset.is_empty() => {
                        vec![Target::Tileset(tileset.to_string()), Target::Tilesets]
                    }
                    _ => Vec::new(),
                }
            }
            (RootKind::Logs, [device, file]) => vec![
                Target::Log { device: device.to_string(), file: file.to_string() },
                Target::Device(device.to_string()),
                Target::Logs,
            ],
            _ => Vec::new(),
        }
    }

    /// A regular expression (PCRE, as Varnish's `ban()` reads it) over
    /// the path, without the anchors and the query part every target shares.
    fn pattern(&self) -> String {
        let seg = |s: &str| escape(&crate::http::wire::segment(s));
        match self {
            Target::Tile { tileset, z, x, y, .. } => {
                let flipped = (1u64 << (*z).min(63)).saturating_sub(1).saturating_sub(u64::from(*y));
                format!("/tiles/{}/{z}/{x}/({y}|{flipped})\\.[^/?]+", seg(tileset))
            }
            Target::TileJson(tileset) => format!("/tiles/{}\\.json", seg(tileset)),
            Target::Tileset(tileset) => format!("/tiles/{}(/[^?]*|\\.json|\\.pmtiles)?", seg(tileset)),
            Target::Tilesets => "/tiles/?".to_string(),
            Target::Log { device, file } => format!("/logs/{}/{}", seg(device), seg(file)),
            Target::Device(device) => format!("/logs/{}(/|/\\.lines)?", seg(device)),
            Target::Logs => "/logs/?".to_string(),
            Target::All(RootKind::Tiles) => "/tiles[/.]?[^?]*".to_string(),
            Target::All(RootKind::Logs) => "/logs[/.]?[^?]*".to_string(),
        }
    }

    /// The exact paths a `PURGE` can reach (a tileset's tiles and any
    /// query variant cannot be listed: `ban` reaches them).
    fn paths(&self) -> Vec<String> {
        let seg = crate::http::wire::segment;
        match self {
            Target::Tile { tileset, z, x, y, ext } => {
                let flipped = (1u64 << (*z).min(63)).saturating_sub(1).saturating_sub(u64::from(*y));
                let mut paths = vec![format!("/tiles/{}/{z}/{x}/{y}.{ext}", seg(tileset))];
                if flipped != u64::from(*y) {
                    paths.push(format!("/tiles/{}/{z}/{x}/{flipped}.{ext}", seg(tileset)));
                }
                paths
            }
            Target::TileJson(tileset) => vec![format!("/tiles/{}.json", seg(tileset))],
            Target::Tileset(tileset) => vec![
                format!("/tiles/{}.json", seg(tileset)),
                format!("/tiles/{}.pmtiles", seg(tileset)),
                format!("/tiles/{}/", seg(tileset)),
            ],
            Target::Tilesets => vec!["/tiles".to_string()],
            Target::Log { device, file } => vec![format!("/logs/{}/{}", seg(device), seg(file))],
            Target::Device(device) => {
                vec![format!("/logs/{}", seg(device)), format!("/logs/{}/.lines", seg(device))]
            }
            Target::Logs => vec!["/logs".to_string()],
            Target::All(RootKind::Tiles) => vec!["/tiles".to_string()],
            Target::All(RootKind::Logs) => vec!["/logs".to_string()],
        }
    }
}

/// Escapes the regular expression's metacharacters in a percent-encoded
/// segment (which holds only letters, digits, `-._~` and `%`).
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// One `X-Tessera-Ban` value for several targets: `^(?:a|b)(\?|$)`.
pub fn ban_expression(targets: &[Target]) -> String {
    let alternatives: Vec<String> = targets.iter().map(Target::pattern).collect();
    format!("^(?:{})(\\?|$)", alternatives.join("|"))
}

/// The targets as `BAN` values of at most about [`BAN_BYTES`] each (one
/// target goes alone whatever its length: a 255-byte name, encoded, is
/// under 1 KiB).
fn ban_expressions(targets: &[Target]) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    let mut group: Vec<Target> = Vec::new();
    let mut bytes = 0;
    for t in targets {
        let len = t.pattern().len() + 1;
        if !group.is_empty() && bytes + len > BAN_BYTES - 16 {
            out.push((ban_expression(&group), group.len()));
            group.clear();
            bytes = 0;
        }
        group.push(t.clone());
        bytes += len;
    }
    if !group.is_empty() {
        out.push((ban_expression(&group), group.len()));
    }
    out
}

/// Replaces many changed tiles of one tileset by the tileset itself, and
/// anything a whole tileset or root covers by that.
fn collapse(targets: BTreeSet<Target>) -> BTreeSet<Target> {
    let mut per_tileset: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for t in &targets {
        if let Target::Tile { tileset, .. } = t {
            *per_tileset.entry(tileset).or_default() += 1;
        }
    }
    let whole: BTreeSet<String> = targets
        .iter()
        .filter_map(|t| match t {
            Target::Tileset(name) => Some(name.clone()),
            Target::Tile { tileset, .. } if per_tileset[tileset.as_str()] > TILESET_FROM => Some(tileset.clone()),
            _ => None,
        })
        .collect();
    let all_tiles = targets.contains(&Target::All(RootKind::Tiles));
    let all_logs = targets.contains(&Target::All(RootKind::Logs));
    let mut out = BTreeSet::new();
    for t in targets {
        let covered = match &t {
            Target::Tile { tileset, .. } | Target::TileJson(tileset) => whole.contains(tileset) || all_tiles,
            Target::Tileset(_) | Target::Tilesets => all_tiles,
            Target::Log { .. } | Target::Device(_) | Target::Logs => all_logs,
            Target::All(_) => false,
        };
        if !covered {
            out.insert(t);
        }
    }
    out.extend(whole.into_iter().filter(|_| !all_tiles).map(Target::Tileset));
    out
}

/// The handle the catalog worker holds: cheap to call, never blocks on a cache.
#[derive(Clone)]
pub struct Invalidator {
    shared: Arc<Shared>,
}

struct Shared {
    incoming: Mutex<Vec<Target>>,
    wake: tokio::sync::Notify,
}

impl Invalidator {
    /// Starts the sending thread, or returns None when no cache is configured.
    pub fn start(caches: &[CacheTarget], metrics: Arc<Metrics>) -> std::io::Result<Option<Invalidator>> {
        if caches.is_empty() {
            return Ok(None);
        }
        let shared = Arc::new(Shared { incoming: Mutex::new(Vec::new()), wake: tokio::sync::Notify::new() });
        let queues: Vec<Queue> = caches.iter().cloned().map(Queue::new).collect();
        let thread_shared = shared.clone();
        std::thread::Builder::new().name("invalidate".into()).spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime");
            runtime.block_on(run(thread_shared, queues, metrics));
        })?;
        Ok(Some(Invalidator { shared }))
    }

    /// Paths (relative to a root of `kind`) that a batch changed or deleted.
    pub fn changed(&self, kind: RootKind, rels: &[String]) {
        let targets: Vec<Target> = rels.iter().flat_map(|rel| Target::of_change(kind, rel)).collect();
        if targets.is_empty() {
            return;
        }
        self.shared.incoming.lock().extend(targets);
        self.shared.wake.notify_one();
    }
}

/// One cache's waiting targets and its sending state.
struct Queue {
    cache: CacheTarget,
    pending: BTreeSet<Target>,
    failures: u32,
    retry_at: Option<Instant>,
    connection: Option<hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>>,
}

impl Queue {
    fn new(cache: CacheTarget) -> Queue {
        Queue { cache, pending: BTreeSet::new(), failures: 0, retry_at: None, connection: None }
    }

    fn due(&self, now: Instant) -> bool {
        !self.pending.is_empty() && self.retry_at.map_or(true, |at| at <= now)
    }
}

async fn run(shared: Arc<Shared>, mut queues: Vec<Queue>, metrics: Arc<Metrics>) {
    loop {
        let next_retry = queues.iter().filter(|q| !q.pending.is_empty()).filter_map(|q| q.retry_at).min();
        match next_retry {
            Some(at) => {
                let _ = tokio::time::timeout_at(at.into(), shared.wake.notified()).await;
            }
            None => shared.wake.notified().await,
        }
        tokio::time::sleep(GATHER).await;
        let incoming = std::mem::take(&mut *shared.incoming.lock());
        let now = Instant::now();
        // The caches are served side by side: one that does not answer
        // must not hold back the others' invalidations.
        let rounds = queues.iter_mut().map(|q| q.round(&incoming, now, &metrics));
        futures_util::future::join_all(rounds).await;
        metrics.invalidations_pending.set(queues.iter().map(|q| q.pending.len() as i64).sum());
    }
}

impl Queue {
    /// Takes the new targets in, and sends what is waiting if it is due.
    async fn round(&mut self, incoming: &[Target], now: Instant, metrics: &Metrics) {
        let label = self.cache.url.clone();
        self.pending.extend(incoming.iter().cloned());
        self.pending = collapse(std::mem::take(&mut self.pending));
        if self.pending.len() > MAX_PENDING {
            self.pending = overflow(std::mem::take(&mut self.pending));
            tracing::warn!(cache = %label, "more changes than the queue holds: invalidating whole roots");
        }
        if !self.due(now) {
            return;
        }
        let targets: Vec<Target> = self.pending.iter().cloned().collect();
        match send(self, &targets).await {
            Ok((requests, refused)) => {
                let sent = targets.len().saturating_sub(refused) as u64;
                metrics.invalidations.with_label_values(&[&label, "sent"]).inc_by(sent);
                metrics.invalidations.with_label_values(&[&label, "dropped"]).inc_by(refused as u64);
                if self.failures > 0 {
                    tracing::info!(cache = %label, "cache reachable again; invalidations sent");
                }
                tracing::debug!(cache = %label, targets = targets.len(), requests, "invalidations sent");
                self.pending.clear();
                self.failures = 0;
                self.retry_at = None;
            }
            Err(e) => {
                self.connection = None;
                self.failures += 1;
                metrics.invalidations.with_label_values(&[&label, "failed"]).inc();
                if self.failures == 1 {
                    tracing::warn!(cache = %label, error = %e, pending = self.pending.len(), "cannot send invalidations; retrying");
                }
                if self.failures >= MAX_ATTEMPTS {
                    drop_pending(self, metrics, &format!("{} attempts failed, the last: {e}", self.failures));
                } else {
                    let backoff = Duration::from_millis(100 << self.failures.min(7)).min(Duration::from_secs(10));
                    self.retry_at = Some(Instant::now() + backoff);
                }
            }
        }
    }
}

/// What a queue past [`MAX_PENDING`] becomes: every root kind it touched,
/// whole (for `purge`, only the listings: a purge cannot reach the rest).
fn overflow(pending: BTreeSet<Target>) -> BTreeSet<Target> {
    let kind = |t: &Target| match t {
        Target::Tile { .. } | Target::TileJson(_) | Target::Tileset(_) | Target::Tilesets => RootKind::Tiles,
        Target::Log { .. } | Target::Device(_) | Target::Logs => RootKind::Logs,
        Target::All(kind) => *kind,
    };
    pending.iter().map(|t| Target::All(kind(t))).collect()
}

fn drop_pending(q: &mut Queue, metrics: &Metrics, why: &str) {
    let dropped = q.pending.len();
    metrics.invalidations.with_label_values(&[&q.cache.url, "dropped"]).inc_by(dropped as u64);
    tracing::warn!(cache = %q.cache.url, dropped, reason = why, "invalidations dropped: the cache may serve stale answers until their TTL");
    q.pending.clear();
    q.failures = 0;
    q.retry_at = None;
}

/// Sends every target to one cache; returns how many requests it took and
/// how many targets the cache refused. A request the cache refuses (4xx: a
/// bad expression, a wrong secret) is not sent again: it is said in the
/// journal, and the rest go on. A transport error or a 5xx fails the whole
/// round, to be retried.
async fn send(q: &mut Queue, targets: &[Target]) -> anyhow::Result<(usize, usize)> {
    // (method, path, X-Tessera-Ban, targets it carries)
    let requests: Vec<(&'static str, String, Option<String>, usize)> = match q.cache.protocol {
        InvalidationProtocol::Ban => {
            ban_expressions(targets).into_iter().map(|(ban, n)| ("BAN", "/".to_string(), Some(ban), n)).collect()
        }
        InvalidationProtocol::Purge => {
            let paths: BTreeSet<String> = targets.iter().flat_map(Target::paths).collect();
            paths.into_iter().map(|p| ("PURGE", p, None, 1)).collect()
        }
    };
    let mut refused = 0;
    for (method, path, ban, carried) in &requests {
        let status = tokio::time::timeout(SEND_TIMEOUT, request(q, method, path, ban.as_deref()))
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {SEND_TIMEOUT:?}"))??;
        // A purge of something the cache does not hold is 404 for some caches.
        let purged_nothing = *method == "PURGE" && status == axum::http::StatusCode::NOT_FOUND;
        if status.is_client_error() && !purged_nothing {
            tracing::warn!(cache = %q.cache.url, method, path, ban, %status, "the cache refused an invalidation; not sent again");
            refused += carried;
        } else if !status.is_success() && !purged_nothing {
            anyhow::bail!("{method} {path}: the cache answered {status}");
        }
    }
    Ok((requests.len(), refused))
}

async fn request(q: &mut Queue, method: &str, path: &str, ban: Option<&str>) -> anyhow::Result<axum::http::StatusCode> {
    use http_body_util::{BodyExt, Full};
    // A kept connection the cache closed is replaced.
    if q.connection.as_ref().map_or(true, |s| s.is_closed()) {
        let stream = tokio::net::TcpStream::connect(&q.cache.authority).await?;
        stream.set_nodelay(true)?;
        let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        q.connection = Some(sender);
    }
    let sender = q.connection.as_mut().expect("connected above");
    sender.ready().await?;
    let mut builder = axum::http::Request::builder()
        .method(axum::http::Method::from_bytes(method.as_bytes())?)
        .uri(path)
        .header(axum::http::header::HOST, &q.cache.authority)
        .header(axum::http::header::USER_AGENT, concat!("tessera/", env!("CARGO_PKG_VERSION")));
    if let Some(ban) = ban {
        builder = builder.header("X-Tessera-Ban", ban);
    }
    if let Some((name, value)) = &q.cache.secret {
        builder = builder.header(name.as_str(), value.as_str());
    }
    let response = sender.send_request(builder.body(Full::new(bytes::Bytes::new()))?).await?;
    let status = response.status();
    // Read the body, so that the connection can carry the next request.
    let _ = response.into_body().collect().await;
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_map_to_their_urls_and_listings() {
        let t = Target::of_change(RootKind::Tiles, "osm/3/4/5.png");
        assert_eq!(t[0], Target::Tile { tileset: "osm".into(), z: 3, x: 4, y: 5, ext: "png".into() });
        assert!(t.contains(&Target::TileJson("osm".into())) && t.contains(&Target::Tilesets));
        assert_eq!(Target::of_change(RootKind::Tiles, "roads.pmtiles")[0], Target::Tileset("roads".into()));
        assert_eq!(Target::of_change(RootKind::Tiles, "roads/metadata.json")[0], Target::Tileset("roads".into()));
        assert!(Target::of_change(RootKind::Tiles, "roads/notes.txt").is_empty());
        let l = Target::of_change(RootKind::Logs, "pump-7/2026-12-05.log");
        assert_eq!(
            l,
            vec![
                Target::Log { device: "pump-7".into(), file: "2026-12-05.log".into() },
                Target::Device("pump-7".into()),
                Target::Logs
            ]
        );
    }

    /// The expressions match what they should and nothing of a neighbour,
    /// checked with the regex engine's syntax as Varnish reads it (PCRE
    /// escapes are a superset of what we emit).
    #[test]
    fn ban_expressions_are_anchored_and_escaped() {
        let tile = Target::Tile { tileset: "a.b".into(), z: 2, x: 1, y: 0, ext: "png".into() };
        assert_eq!(tile.pattern(), "/tiles/a\\.b/2/1/(0|3)\\.[^/?]+");
        let one = ban_expression(&[tile, Target::Tilesets]);
        assert_eq!(one, "^(?:/tiles/a\\.b/2/1/(0|3)\\.[^/?]+|/tiles/?)(\\?|$)");
        assert_eq!(Target::Tileset("my map".into()).pattern(), "/tiles/my%20map(/[^?]*|\\.json|\\.pmtiles)?");
    }

    /// Long names make more, shorter `BAN`s, each within the header limit,
    /// and every target is in one of them.
    #[test]
    fn ban_values_stay_within_the_header_limit() {
        let name = "é".repeat(120);
        let targets: Vec<Target> = (0..60).map(|i| Target::TileJson(format!("{name}{i}"))).collect();
        let bans = ban_expressions(&targets);
        assert!(bans.len() > 1);
        assert!(
            bans.iter().all(|(b, _)| b.len() <= BAN_BYTES),
            "{:?}",
            bans.iter().map(|b| b.0.len()).collect::<Vec<_>>()
        );
        assert_eq!(bans.iter().map(|(_, n)| n).sum::<usize>(), 60);
        assert_eq!(Target::of_change(RootKind::Tiles, ""), vec![Target::All(RootKind::Tiles)]);
        assert_eq!(Target::of_change(RootKind::Tiles, "roads.mbtiles-wal")[0], Target::Tileset("roads".into()));
    }

    #[test]
    fn many_tiles_of_a_tileset_collapse_into_the_tileset() {
        let mut set: BTreeSet<Target> =
            (0..100).map(|y| Target::Tile { tileset: "osm".into(), z: 7, x: 1, y, ext: "png".into() }).collect();
        set.insert(Target::TileJson("osm".into()));
        set.insert(Target::Tile { tileset: "other".into(), z: 1, x: 0, y: 0, ext: "png".into() });
        let out = collapse(set);
        assert!(out.contains(&Target::Tileset("osm".into())));
        assert_eq!(out.len(), 2, "{out:?}");
        let mut everything = out.clone();
        everything.insert(Target::All(RootKind::Tiles));
        assert_eq!(collapse(everything), BTreeSet::from([Target::All(RootKind::Tiles)]));
    }

    #[test]
    fn purge_paths_name_both_row_orders() {
        let tile = Target::Tile { tileset: "osm".into(), z: 1, x: 0, y: 0, ext: "pbf".into() };
        assert_eq!(tile.paths(), vec!["/tiles/osm/1/0/0.pbf".to_string(), "/tiles/osm/1/0/1.pbf".to_string()]);
    }
}
