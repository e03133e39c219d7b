//! Reconcile: make the catalog match the disk under one path of one root.
//!
//! The same routine serves start-up (the whole root), watcher events (a file
//! or a directory) and rescans after an overflow (the whole root again). It
//! compares `stat` results with the stored validators and reads again only
//! what changed, so a restart over an unchanged tree reads no file content.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};
use walkdir::WalkDir;

use super::Source;
use crate::config::{RootKind, Scheme};
use crate::names::is_hidden;
use crate::tile::{Format, Tile};
use crate::validators::Validators;

/// What one reconcile did.
#[derive(Debug, Default, Clone)]
pub struct ReconcileStats {
    /// Entries that were new or whose stat changed, and so were read again.
    pub rereads: u64,
    pub deleted: u64,
    pub unchanged: u64,
    /// Logs whose time index this reconcile left unfinished (its read
    /// budget ran out): the worker continues them a chunk at a time.
    pub unfinished: Vec<String>,
    /// Paths (relative to the root) of the entries re-read or deleted, and
    /// of MBTiles `-wal` files written: what the caches in front are told
    /// (`invalidate`). Past [`CHANGED_MAX`] paths it holds only "", which
    /// stands for the whole root (a first start over a large tree).
    pub changed: Vec<String>,
}

/// Changed paths one reconcile lists one by one; more make it "the whole root".
pub const CHANGED_MAX: usize = 10_000;

impl ReconcileStats {
    pub fn add(&mut self, other: &ReconcileStats) {
        self.rereads += other.rereads;
        self.deleted += other.deleted;
        self.unchanged += other.unchanged;
        self.unfinished.extend(other.unfinished.iter().cloned());
        for rel in &other.changed {
            self.note_change(rel);
        }
    }

    /// Notes a changed path, or the whole root once there are too many.
    pub fn note_change(&mut self, rel: &str) {
        if self.changed.first().is_some_and(String::is_empty) {
            return;
        }
        if self.changed.len() >= CHANGED_MAX || rel.is_empty() {
            self.changed = vec![String::new()];
        } else {
            self.changed.push(rel.to_string());
        }
    }

    pub fn changes(&self) -> u64 {
        self.rereads + self.deleted
    }
}

/// What a path inside a root is, judged by its shape alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    Tile {
        tileset: String,
        z: u32,
        x: u32,
        y: u32,
        ext: String,
    },
    /// `{tileset}/metadata.json`, as tippecanoe, ogr2ogr and mbutil write it.
    Metadata {
        tileset: String,
    },
    /// `{tileset}.mbtiles` at the top of a tiles root.
    Mbtiles {
        tileset: String,
    },
    /// `{tileset}.pmtiles` at the top of a tiles root.
    Pmtiles {
        tileset: String,
    },
    Log {
        device: String,
        file: String,
    },
}

impl Entry {
    /// The tileset a tiles-root entry belongs to.
    fn tileset(&self) -> Option<&str> {
        match self {
            Entry::Tile { tileset, .. }
            | Entry::Metadata { tileset }
            | Entry::Mbtiles { tileset }
            | Entry::Pmtiles { tileset } => Some(tileset),
            Entry::Log { .. } => None,
        }
    }
}

/// `{tileset}/{z}/{x}/{y}.{ext}` in a tiles root, `{device}/{file}` in a logs root.
pub fn classify(kind: RootKind, rel: &str) -> Option<Entry> {
    let parts: Vec<&str> = rel.split('/').collect();
    match (kind, parts.as_slice()) {
        (RootKind::Tiles, [tileset, "metadata.json"]) => Some(Entry::Metadata { tileset: tileset.to_string() }),
        (RootKind::Tiles, [file]) => {
            if let Some(tileset) = file.strip_suffix(".pmtiles").filter(|t| !t.is_empty()) {
                return Some(Entry::Pmtiles { tileset: tileset.to_string() });
            }
            let tileset = file.strip_suffix(".mbtiles").filter(|t| !t.is_empty())?;
            Some(Entry::Mbtiles { tileset: tileset.to_string() })
        }
        (RootKind::Tiles, [_, _, _, _]) => {
            let (tileset, tile) = Tile::parse_rel(rel)?;
            Some(Entry::Tile { tileset: tileset.to_string(), z: tile.z, x: tile.x, y: tile.y, ext: tile.ext })
        }
        (RootKind::Logs, [device, file]) => Some(Entry::Log { device: device.to_string(), file: file.to_string() }),
        _ => None,
    }
}

/// Brings the rows under `prefix` (relative to the root, "" for all of it) in
/// line with the disk.
pub fn reconcile(
    conn: &mut Connection,
    root_id: i64,
    kind: RootKind,
    root_path: &Path,
    prefix: &str,
    by_content: bool,
) -> rusqlite::Result<ReconcileStats> {
    let mut stats = ReconcileStats::default();
    // Log bytes this reconcile may read for the time index (see `timeindex::INLINE_BUDGET`).
    let mut budget = super::timeindex::INLINE_BUDGET;
    if is_hidden(Path::new(prefix)) {
        return Ok(stats);
    }
    // IMMEDIATE: take the write lock up front, so a concurrent writer (the
    // digester) makes us wait (busy timeout) instead of failing the upgrade.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut known = HashMap::new();
    for table in tables(kind) {
        known.extend(known_rows(&tx, table, root_id, prefix)?);
    }
    // the tilesets whose files changed
    let mut touched: BTreeSet<String> = BTreeSet::new();

    let start = if prefix.is_empty() { root_path.to_path_buf() } else { root_path.join(prefix) };
    // A path through a symbolic link (an event inside a linked directory
    // names it by the link) is not part of the root: nothing under it is
    // indexed, whatever the link points to.
    if start.symlink_metadata().is_ok() && !crate::roots::crosses_symlink(root_path, prefix) {
        let walk = WalkDir::new(&start).follow_links(false).follow_root_links(false).into_iter();
        for item in walk.filter_entry(|e| e.depth() == 0 || !e.file_name().as_encoded_bytes().starts_with(b".")) {
            let item = match item {
                Ok(item) => item,
                Err(e) => {
                    tracing::debug!(error = %e, "skipping unreadable entry");
                    continue;
                }
            };
            if !item.file_type().is_file() {
                continue;
            }
            let Some(rel) = item.path().strip_prefix(root_path).ok().and_then(|r| r.to_str()) else { continue };
            let Some(entry) = classify(kind, rel) else {
                // An MBTiles file in WAL mode changes by its `-wal` alone:
                // not a catalog row, but a change for the caches in front.
                if kind == RootKind::Tiles && rel.ends_with(".mbtiles-wal") && !rel.contains('/') {
                    stats.note_change(rel);
                }
                continue;
            };
            let Ok(meta) = item.metadata() else { continue };
            let v = Validators::of(&meta);
            let previous = known.remove(rel);
            if previous == Some(v) {
                stats.unchanged += 1;
                continue;
            }
            if !upsert(&tx, root_id, rel, &entry, &v, root_path, by_content, &mut budget)? {
                stats.unfinished.push(rel.to_string());
            }
            stats.rereads += 1;
            stats.note_change(rel);
            if let Some(tileset) = entry.tileset() {
                touched.insert(tileset.to_string());
            }
        }
    }

    for rel in known.keys() {
        for table in tables(kind) {
            tx.prepare_cached(&format!("DELETE FROM {table} WHERE root = ?1 AND rel = ?2"))?
                .execute(params![root_id, rel])?;
        }
        if kind == RootKind::Logs {
            super::timeindex::remove(&tx, root_id, rel)?;
        }
        stats.deleted += 1;
        stats.note_change(rel);
        if let Some(tileset) = classify(kind, rel).as_ref().and_then(Entry::tileset) {
            touched.insert(tileset.to_string());
        }
    }
    for tileset in &touched {
        refresh_tileset(&tx, root_id, tileset)?;
    }
    tx.commit()?;
    Ok(stats)
}

/// The tables whose rows are files of a root of `kind`.
fn tables(kind: RootKind) -> &'static [&'static str] {
    match kind {
        RootKind::Tiles => &["tiles", "sources"],
        RootKind::Logs => &["logs"],
    }
}

/// Stored validators of every row at or under `prefix`.
fn known_rows(
    conn: &Connection,
    table: &str,
    root_id: i64,
    prefix: &str,
) -> rusqlite::Result<HashMap<String, Validators>> {
    // `rel >= p || '/' AND rel < p || '0'` is "starts with p/": '0' follows '/' in ASCII.
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT rel, size, mtime_ns, dev, ino FROM {table}
         WHERE root = ?1 AND (?2 = '' OR rel = ?2 OR (rel >= ?2 || '/' AND rel < ?2 || '0'))"
    ))?;
    let rows = stmt.query_map(params![root_id, prefix], |r| {
        Ok((
            r.get::<_, String>(0)?,
            Validators {
                len: r.get::<_, i64>(1)? as u64,
                mtime_ns: r.get::<_, i64>(2)? as i128,
                dev: r.get::<_, i64>(3)? as u64,
                ino: r.get::<_, i64>(4)? as u64,
            },
        ))
    })?;
    rows.collect()
}

/// Writes the row of one changed file; false when it is a log whose time
/// index was left unfinished (the read `budget` ran out).
#[allow(clippy::too_many_arguments)]
fn upsert(
    conn: &Connection,
    root_id: i64,
    rel: &str,
    entry: &Entry,
    v: &Validators,
    root_path: &Path,
    by_content: bool,
    budget: &mut u64,
) -> rusqlite::Result<bool> {
    // Content is read through a descriptor opened beneath the root with no
    // symbolic link followed, never by path (a directory swapped for a link
    // after the walk must not make us read outside).
    let path = &root_path.join(rel);
    let open = || crate::roots::open_for_index(root_path, rel);
    // A tiles-root file's share of its tileset's version: its mtime, or
    // under `etag = "content"` its content's, as its ETag is, with the
    // validators of the bytes hashed. A file that cannot be hashed now
    // fails the reconcile, which the worker retries: stamping it by mtime
    // would give this node a version of its own.
    let tagged = match (by_content, entry) {
        (true, Entry::Tile { .. } | Entry::Metadata { .. } | Entry::Mbtiles { .. } | Entry::Pmtiles { .. }) => {
            let tag = open().and_then(|file| crate::validators::Tag::of(&file, true)).map_err(|e| {
                rusqlite::Error::ToSqlConversionFailure(format!("cannot hash {}: {e}", path.display()).into())
            })?;
            Some(tag)
        }
        _ => None,
    };
    let v = tagged.as_ref().map_or(v, |t| &t.validators);
    let (size, mtime, dev, ino) = (v.len as i64, v.mtime_ns as i64, v.dev as i64, v.ino as i64);
    let stamp = tagged.as_ref().map_or(mtime, |t| t.stamp);
    match entry {
        Entry::Tile { tileset, z, x, y, ext } => {
            conn.prepare_cached(
                "INSERT OR REPLACE INTO tiles (root, rel, tileset, z, x, y, ext, size, mtime_ns, dev, ino, stamp)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![root_id, rel, tileset, z, x, y, ext, size, mtime, dev, ino, stamp])?;
        }
        Entry::Metadata { tileset } => {
            let metadata = open().and_then(|file| read_metadata_json(file, path)).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot read metadata.json; ignored");
                None
            });
            conn.prepare_cached(
                "INSERT OR REPLACE INTO sources (root, rel, tileset, kind, size, mtime_ns, dev, ino, stamp, metadata)
                 VALUES (?1, ?2, ?3, 'metadata', ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![root_id, rel, tileset, size, mtime, dev, ino, stamp, metadata])?;
        }
        Entry::Mbtiles { tileset } => {
            // SQLite opens by name: check first that the name is a file inside the root.
            let summary = match open()
                .map_err(|e| e.to_string())
                .and_then(|_| crate::mbtiles::summarise(path).map_err(|e| e.to_string()))
            {
                Ok(summary) => Some(summary),
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot read MBTiles file; not serving it until it changes");
                    None
                }
            };
            let (metadata, format, levels, count) = match &summary {
                Some(s) => (
                    Some(s.metadata.to_string()),
                    Some(s.format.as_str()),
                    Some(serde_json::to_string(&s.levels).expect("serialisable")),
                    Some(s.tile_count as i64),
                ),
                None => (None, None, None, None),
            };
            conn.prepare_cached(
                "INSERT OR REPLACE INTO sources (root, rel, tileset, kind, size, mtime_ns, dev, ino, stamp, metadata, format, levels, tile_count)
                 VALUES (?1, ?2, ?3, 'mbtiles', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![root_id, rel, tileset, size, mtime, dev, ino, stamp, metadata, format, levels, count])?;
        }
        Entry::Pmtiles { tileset } => {
            let summary = open().map_err(crate::pmtiles::Error::Io).and_then(|file| pmtiles_summary(&file, v.len));
            let (metadata, format, levels, count) = match summary {
                Ok((metadata, format, levels, count)) => {
                    (Some(metadata), Some(format.as_str()), Some(levels), Some(count as i64))
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "PMTiles archive refused; not serving it until it changes");
                    (None, None, None, None)
                }
            };
            conn.prepare_cached(
                "INSERT OR REPLACE INTO sources (root, rel, tileset, kind, size, mtime_ns, dev, ino, stamp, metadata, format, levels, tile_count)
                 VALUES (?1, ?2, ?3, 'pmtiles', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
            )?
            .execute(params![root_id, rel, tileset, size, mtime, dev, ino, stamp, metadata, format, levels, count])?;
        }
        Entry::Log { device, file } => {
            let (first, last, finished) = log_times(conn, root_id, rel, path, v, open, budget)?;
            // (The digest column is reset: it described the old validators.)
            conn.prepare_cached(
                "INSERT OR REPLACE INTO logs (root, rel, device, file, size, mtime_ns, dev, ino, etag, first_ms, last_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![root_id, rel, device, file, size, mtime, dev, ino, v.etag(), first, last])?;
            return Ok(finished);
        }
    }
    Ok(true)
}

/// A log's first and last time, and whether its time index is complete:
/// from its time index, brought up to date within the read `budget` (plain
/// logs; while the index is unfinished, from the log's two ends as well),
/// or by reading it through (compressed ones, which have no index: their
/// slices are decompressed and filtered on request). A file that cannot be
/// read now is left unfinished, so that the worker tries it again
/// (`Job::Index`); `Err` is a catalog error only.
fn log_times(
    conn: &Connection,
    root_id: i64,
    rel: &str,
    path: &Path,
    v: &Validators,
    open: impl Fn() -> std::io::Result<std::fs::File>,
    budget: &mut u64,
) -> rusqlite::Result<(Option<i64>, Option<i64>, bool)> {
    let file = match open() {
        Ok(file) => file,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot open log to read its times; will retry");
            return Ok((None, None, false));
        }
    };
    if super::logscan::compressed(path) {
        let (first, last) = super::logscan::compressed_span(file).unwrap_or_else(|e| {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the times of a compressed log");
            (None, None)
        });
        return Ok((first, last, true));
    }
    // A savepoint: a pass that fails half way (a read error after its old
    // marks were dropped) leaves the index as it was.
    conn.execute_batch("SAVEPOINT log_index")?;
    let (progress, pass) = match super::timeindex::update(conn, root_id, rel, &file, v, *budget) {
        Ok(done) => {
            conn.execute_batch("RELEASE log_index")?;
            done
        }
        Err(e) => {
            conn.execute_batch("ROLLBACK TO log_index; RELEASE log_index")?;
            let e = match e {
                super::timeindex::IndexError::Catalog(e) => return Err(e),
                super::timeindex::IndexError::Read(e) => e,
            };
            tracing::warn!(path = %path.display(), error = %e, "time index not updated; will retry");
            let (first, last) = crate::logline::ends(&file, v.len).unwrap_or_default();
            return Ok((first, last, false));
        }
    };
    *budget = budget.saturating_sub(pass.read);
    if pass.finished {
        return Ok((progress.min_ms, progress.max_ms, true));
    }
    let (first, last) = crate::logline::ends(&file, v.len).unwrap_or_default();
    let min = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).min();
    let max = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).max();
    Ok((min(first, progress.min_ms), max(last, progress.max_ms), false))
}

/// What a tileset's summary row is made of.
struct Summary {
    source: Source,
    format: Format,
    scheme: Scheme,
    levels: Vec<[u32; 5]>,
    tile_count: i64,
    fingerprint: i64,
    max_mtime_ns: i64,
    metadata: Option<String>,
}

/// Recomputes a tileset's summary row from its tiles (a directory) or, when
/// it has no tile files, from its PMTiles or MBTiles file. A directory wins
/// over an archive of the same name, and PMTiles over MBTiles (the one
/// served by byte ranges of the file).
fn refresh_tileset(conn: &Connection, root_id: i64, tileset: &str) -> rusqlite::Result<()> {
    let summary = match directory_summary(conn, root_id, tileset)? {
        Some(summary) => Some(summary),
        None => match archive_summary(conn, root_id, tileset, Source::Pmtiles)? {
            Some(summary) => Some(summary),
            None => archive_summary(conn, root_id, tileset, Source::Mbtiles)?,
        },
    };
    let Some(summary) = summary else {
        conn.execute("DELETE FROM tilesets WHERE root = ?1 AND name = ?2", params![root_id, tileset])?;
        return Ok(());
    };
    let minzoom = summary.levels.iter().map(|l| l[0]).min().unwrap_or(0);
    let maxzoom = summary.levels.iter().map(|l| l[0]).max().unwrap_or(0);
    conn.prepare_cached(
        "INSERT INTO tilesets (root, name, source, format, scheme, minzoom, maxzoom, levels, tile_count, fingerprint, max_mtime_ns, metadata)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)
         ON CONFLICT (root, name) DO UPDATE SET
            source = excluded.source, format = excluded.format, scheme = excluded.scheme,
            minzoom = excluded.minzoom, maxzoom = excluded.maxzoom, levels = excluded.levels,
            tile_count = excluded.tile_count, fingerprint = excluded.fingerprint,
            max_mtime_ns = excluded.max_mtime_ns,
            metadata = excluded.metadata",
    )?
    .execute(params![
        root_id,
        tileset,
        summary.source.as_str(),
        summary.format.as_str(),
        summary.scheme.as_str(),
        minzoom,
        maxzoom,
        serde_json::to_string(&summary.levels).expect("serialisable"),
        summary.tile_count,
        summary.fingerprint,
        summary.max_mtime_ns,
        summary.metadata,
    ])?;
    Ok(())
}

/// A directory tileset from its tile rows and its `metadata.json`, if any.
/// The fingerprint sums, per tile, its stamp (mtime, or content hash) and
/// length mixed with its address, so that replacing any tile changes it even when no mtime moves
/// forward (`cp -p`, `rsync -t`), and two tiles swapping files do too. It
/// reads only what every node sharing the files sees alike: never an inode
/// or device number (DESIGN.md decision 5).
fn directory_summary(conn: &Connection, root_id: i64, tileset: &str) -> rusqlite::Result<Option<Summary>> {
    let mut stmt = conn.prepare_cached(
        "SELECT z, MIN(x), MAX(x), MIN(y), MAX(y), COUNT(*), MAX(mtime_ns), SUM((((stamp % 4294967291) + (size % 4294967291)) * ((x * 65599 + y * 31 + z) % 65521 + 1)) % 4294967291)
         FROM tiles WHERE root = ?1 AND tileset = ?2 GROUP BY z",
    )?;
    let rows: Vec<([u32; 5], i64, i64, i64)> = stmt
        .query_map(params![root_id, tileset], |r| {
            Ok(([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?], r.get(5)?, r.get(6)?, r.get(7)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    if rows.is_empty() {
        return Ok(None);
    }
    let format: String = conn.query_row(
        "SELECT ext FROM tiles WHERE root = ?1 AND tileset = ?2 GROUP BY ext ORDER BY COUNT(*) DESC, ext LIMIT 1",
        params![root_id, tileset],
        |r| r.get(0),
    )?;
    let meta: Option<(Option<String>, i64, i64)> = conn
        .prepare_cached("SELECT metadata, mtime_ns, stamp FROM sources WHERE root = ?1 AND rel = ?2")?
        .query_row(params![root_id, format!("{tileset}/metadata.json")], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let (metadata, meta_mtime, meta_stamp) = meta.unwrap_or((None, 0, 0));
    let tms = metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
        .is_some_and(|m| m["scheme"].as_str().is_some_and(|s| s.eq_ignore_ascii_case("tms")));
    Ok(Some(Summary {
        source: Source::Directory,
        format: Format::from_name(&format).unwrap_or(Format::Png),
        scheme: if tms { Scheme::Tms } else { Scheme::Xyz },
        levels: rows.iter().map(|r| r.0).collect(),
        tile_count: rows.iter().map(|r| r.1).sum(),
        max_mtime_ns: rows.iter().map(|r| r.2).max().unwrap_or(0).max(meta_mtime),
        fingerprint: rows.iter().fold(meta_stamp, |acc, r| acc.wrapping_add(r.3)),
        metadata,
    }))
}

/// An MBTiles or PMTiles tileset from the summary stored when its file was
/// read (none if the file was refused). MBTiles rows count from the bottom
/// (TMS), PMTiles ones from the top. The fingerprint is the file's length
/// and stamp (its mtime, or its content's hash), what every node sharing
/// the file sees alike.
fn archive_summary(
    conn: &Connection,
    root_id: i64,
    tileset: &str,
    source: Source,
) -> rusqlite::Result<Option<Summary>> {
    let row = conn
        .prepare_cached(
            "SELECT metadata, format, levels, tile_count, mtime_ns, size, stamp FROM sources
             WHERE root = ?1 AND rel = ?2 AND levels IS NOT NULL",
        )?
        .query_row(params![root_id, format!("{tileset}.{}", source.as_str())], |r| {
            let (mtime, size, stamp): (i64, i64, i64) = (r.get(4)?, r.get(5)?, r.get(6)?);
            let levels: String = r.get(2)?;
            let format: String = r.get(1)?;
            Ok(Summary {
                source,
                format: Format::from_name(&format).unwrap_or(Format::Pbf),
                scheme: if source == Source::Mbtiles { Scheme::Tms } else { Scheme::Xyz },
                levels: serde_json::from_str(&levels).unwrap_or_default(),
                tile_count: r.get(3)?,
                max_mtime_ns: mtime,
                fingerprint: stamp.wrapping_add(size),
                metadata: r.get(0)?,
            })
        })
        .optional()?;
    Ok(row)
}

/// What the catalog keeps of a PMTiles archive: its metadata (the archive's
/// JSON, with the header's bounds and, when the JSON has none, its center),
/// format, extent per zoom level (from the header's bounds: the directories
/// are checked, not mapped back to coordinates) and tile count.
fn pmtiles_summary(file: &std::fs::File, len: u64) -> Result<(String, Format, String, u64), crate::pmtiles::Error> {
    use crate::pmtiles::{Malformed, TileType};
    let s = crate::pmtiles::summarise(file, len)?;
    let h = &s.header;
    let format = match h.tile_type {
        TileType::Mvt => Format::Pbf,
        TileType::Png => Format::Png,
        TileType::Jpeg => Format::Jpeg,
        TileType::Webp => Format::Webp,
        TileType::Unknown if !s.first_tile.is_empty() => Format::sniff(&s.first_tile),
        other => {
            return Err(Malformed(format!("tiles of type {other:?} are not served (mvt, png, jpeg or webp)")).into())
        }
    };
    let mut metadata = s.metadata;
    metadata.insert("bounds".into(), serde_json::json!(h.bounds));
    if !metadata.contains_key("center") {
        metadata.insert("center".into(), serde_json::json!([h.center[0], h.center[1], h.center_zoom]));
    }
    let levels: Vec<[u32; 5]> =
        (u32::from(h.min_zoom)..=u32::from(h.max_zoom)).map(|z| crate::tile::extent(z, h.bounds)).collect();
    let levels = serde_json::to_string(&levels).expect("serialisable");
    Ok((serde_json::Value::Object(metadata).to_string(), format, levels, s.tile_count))
}

/// `metadata.json` as a JSON object, or None (with a warning) if it is not one.
fn read_metadata_json(file: std::fs::File, path: &Path) -> std::io::Result<Option<String>> {
    use std::io::Read;
    const MAX: u64 = 4 << 20;
    let mut text = String::new();
    file.take(MAX + 1).read_to_string(&mut text)?;
    if text.len() as u64 > MAX {
        tracing::warn!(path = %path.display(), "metadata.json larger than 4 MiB; ignored");
        return Ok(None);
    }
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(value) if value.is_object() => Ok(Some(value.to_string())),
        Ok(_) => {
            tracing::warn!(path = %path.display(), "metadata.json is not a JSON object; ignored");
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "metadata.json is not JSON; ignored");
            Ok(None)
        }
    }
}

/// West, south, east, north of the XYZ tiles x0..=x1, y0..=y1 at zoom z.
pub fn tile_range_bounds(z: u32, x0: u32, x1: u32, y0: u32, y1: u32) -> [f64; 4] {
    let n = f64::from(1u32 << z);
    let lon = |x: f64| x / n * 360.0 - 180.0;
    let lat = |y: f64| (std::f64::consts::PI * (1.0 - 2.0 * y / n)).sinh().atan().to_degrees();
    [lon(f64::from(x0)), lat(f64::from(y1) + 1.0), lon(f64::from(x1) + 1.0), lat(f64::from(y0))]
}

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_tiles_and_logs_by_shape() {
        assert_eq!(
            classify(RootKind::Tiles, "world/2/1/3.png"),
            Some(Entry::Tile { tileset: "world".into(), z: 2, x: 1, y: 3, ext: "png".into() })
        );
        assert_eq!(classify(RootKind::Tiles, "world/2/4/0.png"), None, "x outside the zoom level");
        assert_eq!(classify(RootKind::Tiles, "world/2/1/1.txt"), None);
        assert_eq!(classify(RootKind::Tiles, "world/metadata.json"), Some(Entry::Metadata { tileset: "world".into() }));
        assert_eq!(classify(RootKind::Tiles, "roads.mbtiles"), Some(Entry::Mbtiles { tileset: "roads".into() }));
        assert_eq!(classify(RootKind::Tiles, ".mbtiles"), None);
        assert_eq!(classify(RootKind::Tiles, "base.pmtiles"), Some(Entry::Pmtiles { tileset: "base".into() }));
        assert_eq!(classify(RootKind::Tiles, "a/base.pmtiles"), None);
        assert_eq!(classify(RootKind::Tiles, "world/notes.json"), None);
        assert_eq!(
            classify(RootKind::Logs, "pump/2026.csv"),
            Some(Entry::Log { device: "pump".into(), file: "2026.csv".into() })
        );
        assert_eq!(classify(RootKind::Logs, "loose.log"), None);
    }

    #[test]
    fn whole_world_at_zoom_zero() {
        let b = tile_range_bounds(0, 0, 0, 0, 0);
        assert!((b[0] + 180.0).abs() < 1e-9 && (b[2] - 180.0).abs() < 1e-9);
        assert!((b[3] - 85.051_128_779_806_6).abs() < 1e-9 && (b[1] + 85.051_128_779_806_6).abs() < 1e-9);
    }
}
