//! Soak: tile and log traffic mixed with constant file churn, bounded in time
//! and loopback only. It ends with zero corrupt bodies, zero 5xx answers and a
//! catalog that matches the disk.
//!
//! Every file's content names its own identity and version, so that any body
//! (or any slice of one, for a 206) can be checked against the version it
//! claims to be: tiles are records `<{tileset}/{z}/{x}/{y} v{N} #{i}>` up to a
//! length that changes with the version; logs are fixed-width lines naming the
//! log, its generation (a rotation starts a new one) and the line number.
//!
//! Second tier (`#[ignore]`: `cargo test -- --ignored`). For [`SOAK`] (or
//! `TESSERA_SOAK_SECS` seconds, to run longer by hand), client threads send
//! keep-alive GETs ([`KeepAlive`]) of random tiles (plain, gzip,
//! If-None-Match, Range), HEADs, `/tiles`, TileJSON, `/logs`, and log
//! downloads (whole, ranges, `bytes=N-` resumes), and one more hammers the few
//! tiles rewritten in place most often, while one churn thread replaces tiles
//! by atomic rename, rewrites some in place, deletes and re-creates others,
//! appends to logs, rotates one, and creates and deletes a whole tileset.
//!
//! A tile rewritten in place (truncate, write) may have its connection closed
//! early (the server saw the file end under a response; rare), or be served as
//! what the file really held for a moment: empty, or the first whole pages of
//! its new version. No body may ever carry one state's length and another
//! state's bytes (torn), no other file may ever be closed early or missing
//! unless deleted, and nothing may answer 5xx. Then the churn stops, and the
//! catalog must come to match the disk, and every file be served as it is.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// How long the traffic and the churn run (`TESSERA_SOAK_SECS` overrides;
/// `TESSERA_SOAK_ARGS` adds arguments to `tessera serve`).
const SOAK: Duration = Duration::from_secs(15);
/// Client threads (each with one keep-alive connection at a time), besides
/// the one that hammers the tiles rewritten in place.
const CLIENTS: u64 = 4;
/// Fewest requests per second of soak below which the soak did no real work.
const MIN_REQUESTS_PER_SEC: u64 = 100;
/// How long the catalog may take to match the disk once the churn stopped.
const QUIESCE: Duration = Duration::from_secs(10);
/// Pause of the churn thread between two tile operations.
const CHURN_PAUSE: Duration = Duration::from_millis(3);
/// Appends to the growing logs happen this often.
const APPEND_EVERY: Duration = Duration::from_millis(20);
/// The rotating log is rotated this often.
const ROTATE_EVERY: Duration = Duration::from_millis(1500);
/// The ephemeral tileset appears or disappears this often.
const EPHEMERAL_EVERY: Duration = Duration::from_millis(2500);
/// At most this many tiles are deleted at once.
const MAX_DELETED: usize = 24;

fn soak_duration() -> Duration {
    match std::env::var("TESSERA_SOAK_SECS") {
        Ok(s) => Duration::from_secs(s.trim().parse().unwrap_or_else(|_| panic!("TESSERA_SOAK_SECS={s:?}"))),
        Err(_) => SOAK,
    }
}

// ---------------------------------------------------------------------------
// The fixture's files and their contents
// ---------------------------------------------------------------------------

struct TilesetSpec {
    name: &'static str,
    ext: &'static str,
    maxzoom: u32,
    /// Stored gzip (vector tiles), served as stored or decompressed.
    gzip: bool,
    /// Smallest length of a tile's plain content, and the spread added by identity.
    base: usize,
    spread: usize,
}

/// `base`: small raster tiles (memory path); `aerial`: larger ones (sendfile);
/// `roads`: gzipped vector tiles; `eph`: created and deleted as a whole.
const TILESETS: [TilesetSpec; 4] = [
    TilesetSpec { name: "base", ext: "png", maxzoom: 4, gzip: false, base: 300, spread: 1500 },
    TilesetSpec { name: "aerial", ext: "jpg", maxzoom: 3, gzip: false, base: 6000, spread: 20_000 },
    TilesetSpec { name: "roads", ext: "pbf", maxzoom: 4, gzip: true, base: 200, spread: 2500 },
    TilesetSpec { name: "eph", ext: "png", maxzoom: 2, gzip: false, base: 300, spread: 1000 },
];
const EPHEMERAL: usize = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Tile {
    set: usize,
    z: u32,
    x: u32,
    y: u32,
}

impl Tile {
    fn spec(&self) -> &'static TilesetSpec {
        &TILESETS[self.set]
    }

    fn id(&self) -> String {
        format!("{}/{}/{}/{}", self.spec().name, self.z, self.x, self.y)
    }

    fn url(&self) -> String {
        format!("/tiles/{}.{}", self.id(), self.spec().ext)
    }

    fn rel(&self) -> String {
        format!("{}.{}", self.id(), self.spec().ext)
    }

    /// Tiles rewritten in place by the churn (the others are only ever
    /// replaced by rename, deleted and re-created).
    fn in_place(&self) -> bool {
        self.set != EPHEMERAL && (self.x + 2 * self.y + self.z) % 5 == 0
    }
}

fn pyramid(set: usize) -> Vec<Tile> {
    let mut out = Vec::new();
    for z in 0..=TILESETS[set].maxzoom {
        for x in 0..(1u32 << z) {
            for y in 0..(1u32 << z) {
                out.push(Tile { set, z, x, y });
            }
        }
    }
    out
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1000_0000_01b3))
}

/// Length of a tile's plain content: its identity's own, plus a step that
/// changes with every version (versions 17 apart share a length).
fn plain_len(id: &str, spec: &TilesetSpec, version: u64) -> usize {
    spec.base + (fnv(id) % spec.spread as u64) as usize + 61 * (version % 17) as usize
}

/// A tile's plain content: self-describing records, cut at its length.
fn plain_tile(id: &str, spec: &TilesetSpec, version: u64) -> Vec<u8> {
    let len = plain_len(id, spec, version);
    let mut out = Vec::with_capacity(len + 64);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(format!("<{id} v{version} #{i:05}>\n").as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// What the file of a tile holds at `version`.
fn stored_tile(tile: &Tile, version: u64) -> Vec<u8> {
    let plain = plain_tile(&tile.id(), tile.spec(), version);
    if tile.spec().gzip {
        gzip_stored(&plain)
    } else {
        plain
    }
}

/// The versions named by the records of `id` found in `body`.
fn tile_versions_in(body: &[u8], id: &str) -> Vec<u64> {
    let needle = format!("<{id} v");
    let needle = needle.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&body[at..], needle) {
        let start = at + pos + needle.len();
        let digits: Vec<u8> = body[start..].iter().take_while(|b| b.is_ascii_digit()).copied().collect();
        if let Some(v) = std::str::from_utf8(&digits).ok().and_then(|d| d.parse().ok()) {
            if !found.contains(&v) {
                found.push(v);
            }
        }
        at = start;
    }
    found
}

/// Fixed-width log lines: `{time} {log} g{generation} line {n}`.
fn log_line(log: &str, generation: u64, n: u64) -> String {
    format!(
        "2026-11-20T{:02}:{:02}:{:02}Z {log} g{generation:03} line {n:07}\n",
        (n / 3600) % 24,
        (n / 60) % 60,
        n % 60
    )
}

fn line_width(log: &str) -> u64 {
    log_line(log, 0, 0).len() as u64
}

/// Lines `from..to` of a generation of a log.
fn log_lines(log: &str, generation: u64, from: u64, to: u64) -> Vec<u8> {
    (from..to).map(|n| log_line(log, generation, n)).collect::<String>().into_bytes()
}

/// The generations named by the lines of `log` found in `body`.
fn generations_in(body: &[u8], log: &str) -> Vec<u64> {
    let needle = format!(" {log} g");
    let needle = needle.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(pos) = find(&body[at..], needle) {
        let start = at + pos + needle.len();
        let digits = &body[start..body.len().min(start + 3)];
        if let Some(g) = std::str::from_utf8(digits).ok().filter(|d| d.len() == 3).and_then(|d| d.parse().ok()) {
            if !found.contains(&g) {
                found.push(g);
            }
        }
        // One line is enough for a body of one generation; look on past a whole line for others.
        at = start + line_width(log) as usize - needle.len();
        if at >= body.len() {
            break;
        }
    }
    found
}

/// Bytes `offset..offset+len` of a generation's (endless) stream of lines.
fn log_stream_slice(log: &str, generation: u64, offset: u64, len: u64) -> Vec<u8> {
    let w = line_width(log);
    let first = offset / w;
    let last = (offset + len).div_ceil(w);
    let lines = log_lines(log, generation, first, last);
    let skip = (offset - first * w) as usize;
    lines[skip..skip + len as usize].to_vec()
}

struct LogSpec {
    /// `device/file` as listed and downloaded.
    name: &'static str,
    /// The log whose lines it holds (a rotated file holds its parent's).
    stream: &'static str,
    lines: u64,
    kind: LogKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum LogKind {
    /// Appended to all the time.
    Growing,
    /// Appended to, and rotated (renamed to `.1`, a new generation created).
    Rotating,
    /// The previous generation of a rotating log.
    Rotated,
    /// Never changes.
    Static,
    /// Never changes, stored as gzip.
    StaticGzip,
}

const LOGS: [LogSpec; 6] = [
    LogSpec { name: "rtu-1/grow.log", stream: "rtu-1/grow.log", lines: 3000, kind: LogKind::Growing },
    LogSpec { name: "rtu-2/grow.log", stream: "rtu-2/grow.log", lines: 4000, kind: LogKind::Growing },
    LogSpec { name: "feeder/events.log", stream: "feeder/events.log", lines: 500, kind: LogKind::Rotating },
    LogSpec { name: "feeder/events.log.1", stream: "feeder/events.log", lines: 400, kind: LogKind::Rotated },
    LogSpec { name: "pump/2026-11-20.csv", stream: "pump/2026-11-20.csv", lines: 2000, kind: LogKind::Static },
    LogSpec { name: "pump/2026-11-19.csv.gz", stream: "pump/2026-11-19.csv", lines: 2000, kind: LogKind::StaticGzip },
];

fn initial_log(spec: &LogSpec) -> Vec<u8> {
    match spec.kind {
        LogKind::StaticGzip => gzip_stored(&log_lines(spec.stream, 0, 0, spec.lines)),
        // The rotated file starts as generation 0, the live one as 1.
        LogKind::Rotating => log_lines(spec.stream, 1, 0, spec.lines),
        _ => log_lines(spec.stream, 0, 0, spec.lines),
    }
}

// ---------------------------------------------------------------------------
// What the churn thread and the clients share
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Shared {
    /// Tiles the churn has deleted at least once (recorded before the delete):
    /// only these may be missing.
    ever_deleted: Mutex<HashSet<Tile>>,
    /// The newest generation of the rotating log.
    generation: AtomicU64,
    /// Churn counters, for the report.
    churn: Mutex<BTreeMap<&'static str, u64>>,
}

impl Shared {
    fn count(&self, what: &'static str) {
        *self.churn.lock().unwrap().entry(what).or_default() += 1;
    }
}

/// xorshift64*: deterministic per seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------------------
// Churn
// ---------------------------------------------------------------------------

fn rewrite_in_place(path: &Path, bytes: &[u8]) {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(bytes).unwrap_or_else(|e| panic!("rewrite {}: {e}", path.display()));
}

fn churn(fx_tiles: &Path, fx_logs: &Path, shared: &Shared, deadline: Instant) {
    let mut rng = Rng::new(0xC0FFEE);
    let mut version = 1u64;
    let replaceable: Vec<Tile> = (0..EPHEMERAL).flat_map(pyramid).filter(|t| !t.in_place()).collect();
    let in_place: Vec<Tile> = (0..EPHEMERAL).flat_map(pyramid).filter(|t| t.in_place()).collect();
    // Half the replacements and rewrites hit the low zoom levels, which the
    // clients ask for most (they pick the zoom level first): races there.
    let hot_replaceable: Vec<Tile> = replaceable.iter().copied().filter(|t| t.z <= 2).collect();
    let hot_in_place: Vec<Tile> = in_place.iter().copied().filter(|t| t.z <= 2).collect();
    // And a third of the rewrites hit those of them sent by sendfile.
    let hot_sendfile: Vec<Tile> = hot_in_place.iter().copied().filter(|t| t.spec().base > 4096).collect();
    let mut deleted: Vec<Tile> = Vec::new();
    // Next line number of each appended log.
    let mut next_line: HashMap<&str, u64> = LOGS
        .iter()
        .filter(|l| matches!(l.kind, LogKind::Growing | LogKind::Rotating))
        .map(|l| (l.name, l.lines))
        .collect();
    let mut last_append = Instant::now();
    let mut last_rotate = Instant::now();
    let mut last_ephemeral = Instant::now();
    let mut ephemeral_creations = 0u64;
    let eph_dir = fx_tiles.join(TILESETS[EPHEMERAL].name);

    while Instant::now() < deadline {
        version += 1;
        match rng.below(100) {
            // Replace a tile by rename (re-creating it if it was deleted).
            0..=39 => {
                let from = if rng.below(2) == 0 { &hot_replaceable } else { &replaceable };
                let tile = *rng.pick(from);
                replace_atomically(&fx_tiles.join(tile.rel()), &stored_tile(&tile, version));
                deleted.retain(|t| *t != tile);
                shared.count("tile replaced by rename");
            }
            // Rewrite a tile in place.
            40..=69 => {
                let from = match rng.below(6) {
                    0..=1 => &hot_sendfile,
                    2..=3 => &hot_in_place,
                    _ => &in_place,
                };
                let tile = *rng.pick(from);
                rewrite_in_place(&fx_tiles.join(tile.rel()), &stored_tile(&tile, version));
                shared.count("tile rewritten in place");
            }
            // Delete a tile.
            70..=84 if deleted.len() < MAX_DELETED => {
                let tile = *rng.pick(&replaceable);
                if !deleted.contains(&tile) {
                    shared.ever_deleted.lock().unwrap().insert(tile);
                    fs::remove_file(fx_tiles.join(tile.rel())).expect("delete a tile");
                    deleted.push(tile);
                    shared.count("tile deleted");
                }
            }
            // Re-create a deleted tile (by rename: never seen half-written).
            _ if !deleted.is_empty() => {
                let tile = deleted.swap_remove(rng.below(deleted.len() as u64) as usize);
                replace_atomically(&fx_tiles.join(tile.rel()), &stored_tile(&tile, version));
                shared.count("tile re-created");
            }
            _ => {}
        }

        if last_append.elapsed() >= APPEND_EVERY {
            last_append = Instant::now();
            let generation = shared.generation.load(Ordering::SeqCst);
            for log in LOGS.iter().filter(|l| matches!(l.kind, LogKind::Growing | LogKind::Rotating)) {
                let next = next_line.get_mut(log.name).expect("appended log");
                let n = 1 + rng.below(6);
                let gen = if log.kind == LogKind::Rotating { generation } else { 0 };
                append_file(&fx_logs.join(log.name), &log_lines(log.stream, gen, *next, *next + n));
                *next += n;
                shared.count("log append");
            }
        }

        if last_rotate.elapsed() >= ROTATE_EVERY {
            last_rotate = Instant::now();
            let live = fx_logs.join("feeder/events.log");
            fs::rename(&live, fx_logs.join("feeder/events.log.1")).expect("rotate");
            let generation = shared.generation.load(Ordering::SeqCst) + 1;
            // As a logger does: create the new file, then write to it.
            let mut f = fs::OpenOptions::new().create_new(true).append(true).open(&live).expect("new log");
            shared.generation.store(generation, Ordering::SeqCst);
            f.write_all(&log_lines("feeder/events.log", generation, 0, 50)).expect("write new log");
            next_line.insert("feeder/events.log", 50);
            shared.count("log rotated");
        }

        if last_ephemeral.elapsed() >= EPHEMERAL_EVERY {
            last_ephemeral = Instant::now();
            if eph_dir.exists() {
                fs::remove_dir_all(&eph_dir).expect("delete the ephemeral tileset");
                shared.count("tileset deleted");
            } else if ephemeral_creations % 2 == 0 {
                ephemeral_creations += 1;
                // Built aside under a hidden name, then renamed into place whole.
                let build = fx_tiles.join(".eph-build");
                for tile in pyramid(EPHEMERAL) {
                    write_file(&build.join(tile.rel().split_once('/').expect("rel").1), &stored_tile(&tile, version));
                }
                fs::rename(&build, &eph_dir).expect("rename the ephemeral tileset into place");
                shared.count("tileset created by rename");
            } else {
                ephemeral_creations += 1;
                // Created in place, tile by tile (each by rename).
                for tile in pyramid(EPHEMERAL) {
                    let path = fx_tiles.join(tile.rel());
                    fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
                    replace_atomically(&path, &stored_tile(&tile, version));
                }
                shared.count("tileset created tile by tile");
            }
        }
        thread::sleep(CHURN_PAUSE);
    }
}

// ---------------------------------------------------------------------------
// Checking answers
// ---------------------------------------------------------------------------

#[derive(Default)]
struct Stats {
    requests: u64,
    by_status: BTreeMap<u16, u64>,
    by_kind: BTreeMap<&'static str, u64>,
    /// Bodies checked against the version they carry.
    verified_bodies: u64,
    verified_bytes: u64,
    /// Early closes of tiles rewritten in place (acceptable when rare).
    early_closes_in_place: u64,
    /// Requests for tiles rewritten in place (what the early closes are rare among).
    in_place_requests: u64,
    /// Bodies of in-place tiles that disagree with their headers (torn).
    torn: u64,
    /// In-place tiles served empty (truncated, not yet written).
    in_place_empty: u64,
    /// In-place tiles served as the first pages of a version (mid-write).
    in_place_page_prefix: u64,
    connects: u64,
    failures: u64,
    /// The first failures, in full.
    samples: Vec<String>,
}

impl Stats {
    fn fail(&mut self, msg: String) {
        self.failures += 1;
        if self.samples.len() < 25 {
            self.samples.push(msg);
        }
    }

    fn merge(&mut self, other: Stats) {
        self.requests += other.requests;
        for (k, v) in other.by_status {
            *self.by_status.entry(k).or_default() += v;
        }
        for (k, v) in other.by_kind {
            *self.by_kind.entry(k).or_default() += v;
        }
        self.verified_bodies += other.verified_bodies;
        self.verified_bytes += other.verified_bytes;
        self.early_closes_in_place += other.early_closes_in_place;
        self.in_place_requests += other.in_place_requests;
        self.torn += other.torn;
        self.in_place_empty += other.in_place_empty;
        self.in_place_page_prefix += other.in_place_page_prefix;
        self.connects += other.connects;
        self.failures += other.failures;
        for s in other.samples {
            if self.samples.len() < 40 {
                self.samples.push(s);
            }
        }
    }
}

/// The length part of a file ETag (`"{mtime:x}-{len:x}"`), if it has that shape.
fn etag_len(etag: &str) -> Option<u64> {
    let inner = etag.strip_prefix('"')?.strip_suffix('"')?;
    let (mtime, len) = inner.split_once('-')?;
    u64::from_str_radix(mtime, 16).ok()?;
    u64::from_str_radix(len, 16).ok()
}

/// Where a body sits in its file: (offset, total length), from a 200 or 206.
fn placement(a: &Response) -> Result<(u64, u64), String> {
    let len = a.body.len() as u64;
    match a.status {
        200 => {
            let cl = a.header("content-length").and_then(|v| v.parse::<u64>().ok());
            if cl.is_some_and(|cl| cl != len) {
                return Err(format!("Content-Length {cl:?} but {len} body bytes"));
            }
            Ok((0, len))
        }
        206 => {
            let cr = a.header("content-range").ok_or("206 without Content-Range")?;
            let (first, last, total) = content_range(cr).ok_or(format!("bad Content-Range {cr:?}"))?;
            if last < first || last - first + 1 != len || last >= total {
                return Err(format!("Content-Range {cr:?} but {len} body bytes"));
            }
            Ok((first, total))
        }
        s => Err(format!("no body placement for {s}")),
    }
}

/// What a verified tile body was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// A whole version (or a slice of one, for a 206).
    Whole,
    /// An empty file: a tile rewritten in place, between truncation and write.
    Empty,
    /// The first pages of a version: a tile rewritten in place, mid-write.
    PagePrefix,
}

/// The page size by which a file being written grows.
const PAGE: u64 = 4096;

/// The representation a tile answer is: stored bytes (gzip as stored, or a
/// raster tile) or the decompressed content of a gzipped vector tile.
fn check_tile_body(tile: &Tile, a: &Response, want_gzip: bool) -> Result<Verdict, String> {
    let (offset, total) = placement(a)?;
    // Truncated and not yet written: what the file of a tile rewritten in
    // place holds for a moment (not even gzip, then).
    if total == 0 && tile.in_place() {
        return Ok(Verdict::Empty);
    }
    let spec = tile.spec();
    let encoded = a.header("content-encoding");
    let as_stored = !spec.gzip || want_gzip;
    if spec.gzip {
        if !a.header("vary").is_some_and(|v| v.to_ascii_lowercase().contains("accept-encoding")) {
            return Err("vector tile without Vary: Accept-Encoding".into());
        }
        if want_gzip && encoded != Some("gzip") {
            return Err(format!("asked for gzip, got Content-Encoding {encoded:?}"));
        }
        if !want_gzip && encoded.is_some() {
            return Err(format!("did not ask for gzip, got Content-Encoding {encoded:?}"));
        }
    } else if encoded.is_some() {
        return Err(format!("raster tile with Content-Encoding {encoded:?}"));
    }
    if as_stored {
        if let Some(len) = a.header("etag").and_then(etag_len) {
            if len != total {
                return Err(format!("ETag {:?} names length {len}, the answer {total}", a.header("etag")));
            }
        }
    }
    let id = tile.id();
    let versions = tile_versions_in(&a.body, &id);
    if versions.is_empty() {
        return Err(format!(
            "no record of {id} in {} body bytes at {offset}: {:?}",
            a.body.len(),
            String::from_utf8_lossy(&a.body[..a.body.len().min(80)])
        ));
    }
    for &v in &versions {
        let full = if as_stored { stored_tile(tile, v) } else { plain_tile(&id, spec, v) };
        let end = offset as usize + a.body.len();
        if end > full.len() || full[offset as usize..end] != a.body[..] {
            continue;
        }
        if full.len() as u64 == total {
            return Ok(Verdict::Whole);
        }
        // A file being written grows a page at a time: a tile rewritten in
        // place may be served as what it held then, a whole number of pages
        // of its new version. Any other length is one state's length with
        // another state's bytes.
        if tile.in_place() && as_stored && total % PAGE == 0 && (total as usize) < full.len() {
            return Ok(Verdict::PagePrefix);
        }
    }
    Err(format!(
        "body of {} bytes at {offset} of {total} is no version's: it names versions {versions:?}, whose lengths are {:?}",
        a.body.len(),
        versions
            .iter()
            .map(|&v| if as_stored { stored_tile(tile, v).len() } else { plain_len(&id, spec, v) })
            .collect::<Vec<_>>()
    ))
}

/// A log answer: a slice of some generation's stream (growing logs: any
/// length), or of the exact bytes of a static log.
fn check_log_body(log: &LogSpec, statics: &HashMap<&str, Vec<u8>>, a: &Response, max_gen: u64) -> Result<u64, String> {
    let (offset, total) = placement(a)?;
    if let Some(len) = a.header("etag").and_then(etag_len) {
        if len != total {
            return Err(format!("ETag {:?} names length {len}, the answer {total}", a.header("etag")));
        }
    }
    if let Some(full) = statics.get(log.name) {
        let end = offset as usize + a.body.len();
        if full.len() as u64 != total || end > full.len() || full[offset as usize..end] != a.body[..] {
            return Err(format!("not the static log's bytes {offset}..{end} of {}", full.len()));
        }
        return Ok(0);
    }
    // The generations its lines name; all of them if it is too short to hold a whole line.
    let mut candidates = generations_in(&a.body, log.stream);
    if candidates.is_empty() {
        candidates = (0..=max_gen + 1).collect();
    }
    for &generation in &candidates {
        if log_stream_slice(log.stream, generation, offset, a.body.len() as u64) == a.body {
            return Ok(generation);
        }
    }
    Err(format!(
        "body of {} bytes at {offset} of {total} is no generation's lines (tried {candidates:?}): starts {:?}",
        a.body.len(),
        String::from_utf8_lossy(&a.body[..a.body.len().min(120)])
    ))
}

// ---------------------------------------------------------------------------
// Client threads
// ---------------------------------------------------------------------------

struct LogState {
    /// Bytes already had (the next resume starts there), and their ETag.
    have: u64,
    etag: Option<String>,
}

/// One client thread. A `hammer` asks only for the tiles rewritten in place
/// most often, to catch a body served with another state's length.
fn client(
    addr: SocketAddr,
    seed: u64,
    hammer: bool,
    shared: &Shared,
    statics: &HashMap<&str, Vec<u8>>,
    deadline: Instant,
) -> Stats {
    let mut rng = Rng::new(seed);
    let mut stats = Stats::default();
    let mut client = KeepAlive::new(addr, "soak.test");
    let tiles: Vec<Vec<Tile>> = (0..TILESETS.len()).map(pyramid).collect();
    let hot_in_place: Vec<Tile> = tiles.iter().flatten().copied().filter(|t| t.in_place() && t.z <= 2).collect();
    // Those sent by sendfile (larger than the memory cache's files): a body
    // read after the head was written.
    let hot_sendfile: Vec<Tile> = hot_in_place.iter().copied().filter(|t| t.spec().base > 4096).collect();
    let mut etags: HashMap<(Tile, bool), String> = HashMap::new();
    let mut logs: HashMap<&str, LogState> = HashMap::new();

    while Instant::now() < deadline {
        let roll = if hammer { 0 } else { rng.below(100) };
        if roll < 60 {
            // A tile: plain, gzip, conditional or ranged; sometimes out of range.
            // A fifth of them on the few tiles rewritten in place most often.
            let mut tile = if hammer || rng.below(5) == 0 {
                let from = if hammer && rng.below(4) != 0 { &hot_sendfile } else { &hot_in_place };
                *rng.pick(from)
            } else {
                let set = rng.below(TILESETS.len() as u64) as usize;
                *rng.pick(&tiles[set])
            };
            let set = tile.set;
            let outside = !hammer && rng.below(40) == 0;
            if outside {
                tile.z = 9;
            }
            let want_gzip = TILESETS[set].gzip && rng.below(2) == 0;
            let mut headers: Vec<(&str, String)> = Vec::new();
            if want_gzip {
                headers.push(("Accept-Encoding", "gzip, deflate".into()));
            }
            let (kind, conditional, ranged) = match rng.below(10) {
                0..=1 => match etags.get(&(tile, want_gzip)) {
                    Some(etag) => {
                        headers.push(("If-None-Match", etag.clone()));
                        ("tile If-None-Match", Some(etag.clone()), false)
                    }
                    None => ("tile GET", None, false),
                },
                2..=3 => {
                    let range = match rng.below(3) {
                        0 => "bytes=0-149".to_string(),
                        1 => "bytes=100-299".to_string(),
                        _ => "bytes=-150".to_string(),
                    };
                    headers.push(("Range", range));
                    ("tile Range", None, true)
                }
                _ => ("tile GET", None, false),
            };
            let kind = if want_gzip { "tile gzip" } else { kind };
            let kind = if rng.below(8) == 0 && !ranged && conditional.is_none() { "tile HEAD" } else { kind };
            let method = if kind == "tile HEAD" { "HEAD" } else { "GET" };
            let url = tile.url();
            stats.requests += 1;
            *stats.by_kind.entry(kind).or_default() += 1;
            if tile.in_place() && !outside {
                stats.in_place_requests += 1;
            }
            let answer = match client.exchange(method, &url, &pairs(&headers)) {
                Ok(a) => a,
                Err(f) => {
                    transport_failure(&mut stats, f, method, &url, &headers, tile.in_place() && !outside);
                    continue;
                }
            };
            *stats.by_status.entry(answer.status).or_default() += 1;
            let ctx = || format!("{method} {url} {headers:?} -> {} {:?}", answer.status, answer.headers);
            match answer.status {
                200 if method == "HEAD" && tile.in_place() && answer.header("content-length") == Some("0") => {
                    stats.in_place_empty += 1;
                }
                200 | 206 if method == "HEAD" => {
                    let cl = answer.header("content-length").and_then(|v| v.parse::<usize>().ok());
                    let plausible = (0..17u64).any(|v| {
                        let t = stored_tile(&tile, v);
                        Some(t.len()) == cl || (!want_gzip && Some(plain_len(&tile.id(), tile.spec(), v)) == cl)
                    });
                    if !plausible {
                        stats.fail(format!("HEAD: Content-Length {cl:?} is no version's length: {}", ctx()));
                    }
                }
                200 | 206 if !outside => match check_tile_body(&tile, &answer, want_gzip) {
                    Ok(verdict) => {
                        match verdict {
                            Verdict::Whole => {}
                            Verdict::Empty => stats.in_place_empty += 1,
                            Verdict::PagePrefix => stats.in_place_page_prefix += 1,
                        }
                        stats.verified_bodies += 1;
                        stats.verified_bytes += answer.body.len() as u64;
                        if let (200, Some(etag)) = (answer.status, answer.header("etag")) {
                            if conditional.as_deref() == Some(etag) {
                                stats.fail(format!("200 with the very ETag sent in If-None-Match: {}", ctx()));
                            }
                            etags.insert((tile, want_gzip), etag.to_string());
                        }
                        if answer.status == 206 && !ranged {
                            stats.fail(format!("206 without a Range: {}", ctx()));
                        }
                    }
                    Err(why) if tile.in_place() => {
                        stats.torn += 1;
                        stats.fail(format!("TORN body of a tile rewritten in place: {why}: {}", ctx()));
                    }
                    Err(why) => stats.fail(format!("CORRUPT body: {why}: {}", ctx())),
                },
                304 => {
                    if conditional.is_none() {
                        stats.fail(format!("304 without a condition: {}", ctx()));
                    } else if answer.header("etag") != conditional.as_deref() {
                        stats.fail(format!("304 whose ETag is not the one sent: {}", ctx()));
                    }
                }
                // A range of a tile rewritten in place, truncated at that moment.
                416 if ranged && tile.in_place() && answer.header("content-range") == Some("bytes */0") => {
                    stats.in_place_empty += 1;
                }
                404 if outside => {}
                404 if tile.set == EPHEMERAL => {}
                404 | 204 => {
                    let expected = if tile.spec().gzip { 204 } else { 404 };
                    if answer.status != expected {
                        stats.fail(format!(
                            "a missing tile answered {} (expected {expected}): {}",
                            answer.status,
                            ctx()
                        ));
                    } else if !shared.ever_deleted.lock().unwrap().contains(&tile) {
                        stats.fail(format!("a tile that was never deleted was missing: {}", ctx()));
                    }
                }
                s => stats.fail(format!("unexpected status {s}: {}", ctx())),
            }
        } else if roll < 67 {
            // The catalog, TileJSON, the log listing.
            let (kind, url) = match rng.below(3) {
                0 => ("/tiles", "/tiles".to_string()),
                1 => ("TileJSON", format!("/tiles/{}.json", rng.pick(&TILESETS).name)),
                _ => ("/logs", "/logs?limit=1000".to_string()),
            };
            stats.requests += 1;
            *stats.by_kind.entry(kind).or_default() += 1;
            let answer = match client.exchange("GET", &url, &[]) {
                Ok(a) => a,
                Err(f) => {
                    transport_failure(&mut stats, f, "GET", &url, &[], false);
                    continue;
                }
            };
            *stats.by_status.entry(answer.status).or_default() += 1;
            if let Err(why) = check_listing(kind, &url, &answer) {
                stats.fail(format!("GET {url} -> {} {:?}: {why}", answer.status, answer.headers));
            }
        } else {
            // A log: whole, a range, a resume, HEAD or conditional.
            let log = rng.pick(&LOGS);
            let url = format!("/logs/{}", log.name);
            let state = logs.entry(log.name).or_insert(LogState { have: 0, etag: None });
            let mut headers: Vec<(&str, String)> = Vec::new();
            let kind = match rng.below(10) {
                0..=2 => "log GET",
                3..=5 => {
                    let size = state.have.max(1000);
                    let first = rng.below(size);
                    let last = first + 100 + rng.below(20_000);
                    headers.push(("Range", format!("bytes={first}-{last}")));
                    "log Range"
                }
                6..=8 => {
                    headers.push(("Range", format!("bytes={}-", state.have)));
                    "log resume"
                }
                _ => match &state.etag {
                    Some(etag) if rng.below(2) == 0 => {
                        headers.push(("If-None-Match", etag.clone()));
                        "log If-None-Match"
                    }
                    _ => "log HEAD",
                },
            };
            let method = if kind == "log HEAD" { "HEAD" } else { "GET" };
            stats.requests += 1;
            *stats.by_kind.entry(kind).or_default() += 1;
            let answer = match client.exchange(method, &url, &pairs(&headers)) {
                Ok(a) => a,
                Err(f) => {
                    transport_failure(&mut stats, f, method, &url, &headers, false);
                    continue;
                }
            };
            *stats.by_status.entry(answer.status).or_default() += 1;
            let ctx = || format!("{method} {url} {headers:?} -> {} {:?}", answer.status, answer.headers);
            let max_gen = shared.generation.load(Ordering::SeqCst);
            match answer.status {
                200 if method == "HEAD" => {
                    if answer.header("content-length").and_then(|v| v.parse::<u64>().ok()).is_none() {
                        stats.fail(format!("HEAD without a Content-Length: {}", ctx()));
                    }
                }
                200 | 206 => match check_log_body(log, statics, &answer, max_gen) {
                    Ok(_) => {
                        stats.verified_bodies += 1;
                        stats.verified_bytes += answer.body.len() as u64;
                        let total = placement(&answer).map(|p| p.1).unwrap_or(0);
                        if kind == "log resume" && answer.status == 200 && state.have > 0 {
                            stats.fail(format!("a resume (Range without If-Range) got 200: {}", ctx()));
                        }
                        if kind == "log Range" && answer.status == 200 {
                            stats.fail(format!("a satisfiable range got 200: {}", ctx()));
                        }
                        state.have = total;
                        state.etag = answer.header("etag").map(str::to_string);
                    }
                    Err(why) => stats.fail(format!("CORRUPT log body: {why}: {}", ctx())),
                },
                304 => {
                    if kind != "log If-None-Match" {
                        stats.fail(format!("304 without a condition: {}", ctx()));
                    }
                }
                416 => {
                    let first: u64 = headers
                        .iter()
                        .find(|(k, _)| *k == "Range")
                        .and_then(|(_, v)| v.strip_prefix("bytes=")?.split('-').next()?.parse().ok())
                        .unwrap_or(0);
                    match answer.header("content-range").and_then(|v| v.strip_prefix("bytes */")?.parse::<u64>().ok()) {
                        Some(size) if size <= first => state.have = size,
                        _ => stats.fail(format!("416 for a range starting at {first}: {}", ctx())),
                    }
                }
                404 if log.kind == LogKind::Rotating => state.have = 0,
                s => stats.fail(format!("unexpected status {s}: {}", ctx())),
            }
        }
    }
    stats.connects = client.connects;
    stats
}

/// A request's headers as [`KeepAlive::exchange`] takes them.
fn pairs<'a>(headers: &'a [(&'a str, String)]) -> Vec<(&'a str, &'a str)> {
    headers.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

fn transport_failure(
    stats: &mut Stats,
    failure: Failure,
    method: &str,
    url: &str,
    headers: &[(&str, String)],
    in_place: bool,
) {
    match failure {
        Failure::EarlyClose { status, .. } if in_place && (status == 200 || status == 206) => {
            stats.early_closes_in_place += 1;
            *stats.by_status.entry(status).or_default() += 1;
        }
        Failure::EarlyClose { status, got, expected, error } => {
            *stats.by_status.entry(status).or_default() += 1;
            stats.fail(format!(
                "EARLY CLOSE of a file never rewritten in place: {method} {url} {headers:?} -> {status}, \
                 {got} of {expected} body bytes, then {error}"
            ));
        }
        // A transport that writes the head with the first body bytes (hyper)
        // closes before the head when the file ended before them.
        Failure::NoHead(e) if in_place && method == "GET" && e.kind() == io::ErrorKind::UnexpectedEof => {
            stats.early_closes_in_place += 1;
        }
        Failure::NoHead(e) => stats.fail(format!("NO ANSWER: {method} {url} {headers:?}: {e}")),
        Failure::Garbled(why) => stats.fail(format!("GARBLED answer: {method} {url} {headers:?}: {why}")),
    }
}

fn check_listing(kind: &str, url: &str, a: &Response) -> Result<(), String> {
    let ephemeral_json = format!("/tiles/{}.json", TILESETS[EPHEMERAL].name);
    if a.status == 404 && url == ephemeral_json {
        return Ok(());
    }
    if a.status != 200 {
        return Err(format!("status {}", a.status));
    }
    let v: Value = serde_json::from_slice(&a.body).map_err(|e| format!("not JSON ({e})"))?;
    match kind {
        "/tiles" => {
            for t in v["tilesets"].as_array().ok_or("no tilesets array")? {
                let name = t["name"].as_str().ok_or("a tileset without a name")?;
                let spec = TILESETS.iter().find(|s| s.name == name).ok_or(format!("unknown tileset {name}"))?;
                let count = t["tile_count"].as_u64().ok_or(format!("{name}: no tile_count"))?;
                let most = pyramid(TILESETS.iter().position(|s| s.name == spec.name).expect("spec")).len() as u64;
                if count > most {
                    return Err(format!("{name}: tile_count {count} > the {most} tiles it can have"));
                }
            }
        }
        "TileJSON" => {
            if v["tilejson"] != "3.0.0" {
                return Err(format!("tilejson {}", v["tilejson"]));
            }
            let template = v["tiles"][0].as_str().ok_or("no tiles template")?;
            if !template.contains("/{z}/{x}/{y}.") || !template.contains("?v=") {
                return Err(format!("tiles template {template:?}"));
            }
        }
        _ => {
            for l in v["logs"].as_array().ok_or("no logs array")? {
                let name = format!("{}/{}", l["device"].as_str().unwrap_or("?"), l["file"].as_str().unwrap_or("?"));
                if !LOGS.iter().any(|s| s.name == name) {
                    return Err(format!("unknown log {name}"));
                }
            }
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// The disk, for the final comparison
// ---------------------------------------------------------------------------

fn visible(name: &std::ffi::OsStr) -> bool {
    !name.to_string_lossy().starts_with('.')
}

/// Per tileset directory: (tile count, min zoom, max zoom), of the tiles on disk.
fn tiles_on_disk(root: &Path) -> BTreeMap<String, (u64, u32, u32)> {
    let mut out = BTreeMap::new();
    for set in fs::read_dir(root).expect("read tiles root").flatten() {
        if !visible(&set.file_name()) || !set.path().is_dir() {
            continue;
        }
        let mut summary: Option<(u64, u32, u32)> = None;
        for z in fs::read_dir(set.path()).expect("read tileset").flatten() {
            let Some(zoom) = z.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            for x in fs::read_dir(z.path()).expect("read zoom").flatten() {
                if !visible(&x.file_name()) {
                    continue;
                }
                for y in fs::read_dir(x.path()).expect("read column").flatten() {
                    if !visible(&y.file_name()) || !y.path().is_file() {
                        continue;
                    }
                    let s = summary.get_or_insert((0, zoom, zoom));
                    s.0 += 1;
                    s.1 = s.1.min(zoom);
                    s.2 = s.2.max(zoom);
                }
            }
        }
        if let Some(s) = summary {
            out.insert(set.file_name().to_string_lossy().into_owned(), s);
        }
    }
    out
}

fn logs_on_disk(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for device in fs::read_dir(root).expect("read logs root").flatten() {
        if !visible(&device.file_name()) || !device.path().is_dir() {
            continue;
        }
        for file in fs::read_dir(device.path()).expect("read device").flatten() {
            if visible(&file.file_name()) && file.path().is_file() {
                let name = format!("{}/{}", device.file_name().to_string_lossy(), file.file_name().to_string_lossy());
                out.insert(name, file.metadata().expect("stat").len());
            }
        }
    }
    out
}

fn catalog_tiles(server: &Server) -> BTreeMap<String, (u64, u32, u32)> {
    let v = server.get_json("/tiles");
    let mut out = BTreeMap::new();
    for t in v["tilesets"].as_array().expect("tilesets") {
        let n = |k: &str| t[k].as_u64().unwrap_or(u64::MAX);
        out.insert(
            t["name"].as_str().unwrap_or("?").to_string(),
            (n("tile_count"), n("minzoom") as u32, n("maxzoom") as u32),
        );
    }
    out
}

fn catalog_logs(server: &Server) -> BTreeMap<String, u64> {
    let v = server.get_json("/logs?limit=1000");
    assert!(v["next"].is_null(), "more than one page of logs: {v}");
    let mut out = BTreeMap::new();
    for l in v["logs"].as_array().expect("logs") {
        let name = format!("{}/{}", l["device"].as_str().unwrap_or("?"), l["file"].as_str().unwrap_or("?"));
        out.insert(name, l["size"].as_u64().unwrap_or(u64::MAX));
    }
    out
}

// ---------------------------------------------------------------------------
// The soak
// ---------------------------------------------------------------------------

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn soak_mixed_traffic_under_churn() {
    let soak = soak_duration();
    let fx = Fixture::new();
    let mut tile_count = 0;
    for set in 0..TILESETS.len() {
        for tile in pyramid(set) {
            write_file(&fx.tiles().join(tile.rel()), &stored_tile(&tile, 0));
            tile_count += 1;
        }
    }
    let mut statics: HashMap<&str, Vec<u8>> = HashMap::new();
    for log in &LOGS {
        let bytes = initial_log(log);
        write_file(&fx.logs().join(log.name), &bytes);
        if matches!(log.kind, LogKind::Static | LogKind::StaticGzip) {
            statics.insert(log.name, bytes);
        }
    }
    let shared = Arc::new(Shared::default());
    shared.generation.store(1, Ordering::SeqCst);
    // Extra server arguments, to soak another path by hand (`--delivery buffered`, `--transport hyper`).
    let extra = std::env::var("TESSERA_SOAK_ARGS").unwrap_or_default();
    let extra: Vec<&str> = extra.split_whitespace().collect();
    let server = fx.start_ready_with(&fx.state(), &extra);
    let addr = server.addr;

    let started = Instant::now();
    let deadline = started + soak;
    let statics = Arc::new(statics);
    let clients: Vec<_> = (0..=CLIENTS)
        .map(|i| {
            let (shared, statics) = (shared.clone(), statics.clone());
            thread::spawn(move || client(addr, 0x5EED + i, i == CLIENTS, &shared, &statics, deadline))
        })
        .collect();
    let churner = {
        let (tiles, logs, shared) = (fx.tiles(), fx.logs(), shared.clone());
        thread::spawn(move || churn(&tiles, &logs, &shared, deadline))
    };
    churner.join().unwrap_or_else(|_| panic!("the churn thread panicked\nstderr:\n{}", server.stderr()));
    let mut stats = Stats::default();
    for c in clients {
        stats.merge(c.join().unwrap_or_else(|_| panic!("a client thread panicked\nstderr:\n{}", server.stderr())));
    }
    let traffic = started.elapsed();

    // Quiescence: the catalog comes to match the disk.
    let quiet = Instant::now();
    let disk_tiles = tiles_on_disk(&fx.tiles());
    let disk_logs = logs_on_disk(&fx.logs());
    let mut last = (BTreeMap::new(), BTreeMap::new());
    let matched = poll_until(QUIESCE, || {
        last = (catalog_tiles(&server), catalog_logs(&server));
        last.0 == disk_tiles && last.1 == disk_logs
    });
    let settle = quiet.elapsed();

    // And every file is served as it now is on disk.
    let mut stale = Vec::new();
    for (set, spec) in TILESETS.iter().enumerate() {
        if !disk_tiles.contains_key(spec.name) {
            continue;
        }
        for tile in pyramid(set) {
            let path = fx.tiles().join(tile.rel());
            let Ok(want) = fs::read(&path) else { continue };
            let fresh = poll_until(WATCH_DEADLINE, || {
                let r = server.request("GET", &tile.url(), &[("Accept-Encoding", "gzip")]);
                r.status == 200 && r.body == want
            });
            if !fresh {
                stale.push(tile.url());
            }
        }
    }
    for log in &LOGS {
        let want = fs::read(fx.logs().join(log.name)).expect("read log");
        let url = format!("/logs/{}", log.name);
        if !poll_until(WATCH_DEADLINE, || server.get(&url).body == want) {
            stale.push(url);
        }
    }

    let churn_counts = shared.churn.lock().unwrap().clone();
    let early_limit = (stats.in_place_requests / 50).max(10);
    let mut report = String::new();
    report.push_str(&format!(
        "soak: tessera serve {extra:?}: {} requests in {:.1?} on {} clients ({} connections, {:.0} req/s) over {tile_count} tiles \
         and {} logs\n",
        stats.requests,
        traffic,
        CLIENTS + 1,
        stats.connects,
        stats.requests as f64 / traffic.as_secs_f64(),
        LOGS.len()
    ));
    report.push_str(&format!("soak: by status {:?}\n", stats.by_status));
    report.push_str(&format!("soak: by kind {:?}\n", stats.by_kind));
    report.push_str(&format!(
        "soak: {} bodies ({} bytes) verified against their version; tiles rewritten in place: {} requests, \
         {} early closes (limit {early_limit}), {} served empty, {} served mid-write (whole pages), {} torn; \
         failures: {}\n",
        stats.verified_bodies,
        stats.verified_bytes,
        stats.in_place_requests,
        stats.early_closes_in_place,
        stats.in_place_empty,
        stats.in_place_page_prefix,
        stats.torn,
        stats.failures
    ));
    report.push_str(&format!("soak: churn {churn_counts:?}\n"));
    report.push_str(&format!(
        "soak: catalog {} the disk {settle:.1?} after the churn stopped ({} tilesets, {} logs on disk); \
         {} files served stale at the end\n",
        if matched { "matched" } else { "did NOT match" },
        disk_tiles.len(),
        disk_logs.len(),
        stale.len()
    ));
    // Straight to stderr, past the test harness's capture: a human running
    // `cargo test` sees that the soak did real work.
    let _ = io::stderr().write_all(report.as_bytes());

    let min_requests = MIN_REQUESTS_PER_SEC * soak.as_secs();
    assert!(
        stats.requests >= min_requests,
        "only {} requests (at least {min_requests} expected)\n{report}",
        stats.requests
    );
    assert!(
        stats.failures == 0,
        "{} failures; the first:\n{}\n{report}\nstderr:\n{}",
        stats.failures,
        stats.samples.join("\n"),
        server.stderr()
    );
    assert!(
        !stats.by_status.keys().any(|s| *s >= 500),
        "5xx answers: {:?}\n{report}\nstderr:\n{}",
        stats.by_status,
        server.stderr()
    );
    assert!(
        stats.early_closes_in_place <= early_limit,
        "{} early closes of tiles rewritten in place, more than {early_limit}\n{report}",
        stats.early_closes_in_place
    );
    for kind in ["tile GET", "tile gzip", "tile If-None-Match", "tile Range", "log GET", "log Range", "log resume"] {
        assert!(stats.by_kind.get(kind).copied().unwrap_or(0) > 0, "no {kind} request was made\n{report}");
    }
    for (what, min) in [("tile replaced by rename", 100), ("tile rewritten in place", 100), ("log rotated", 2)] {
        let n = churn_counts.get(what).copied().unwrap_or(0);
        assert!(n >= min * soak.as_secs() / 15, "churn: only {n} × {what}\n{report}");
    }
    assert!(
        matched,
        "the catalog does not match the disk {QUIESCE:?} after the churn stopped\n\
         tilesets (count, minzoom, maxzoom) on disk: {disk_tiles:?}\n in /tiles: {:?}\n\
         logs (size) on disk: {disk_logs:?}\n in /logs: {:?}",
        last.0, last.1
    );
    assert!(stale.is_empty(), "served stale after the churn stopped: {stale:?}");
}
