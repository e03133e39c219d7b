//! Catalog: the SQLite index of tilesets, tiles and logs.
//!
//! SQLite is a derived index, not the truth (DESIGN.md decision 6): the
//! filesystem is. A missing, corrupt or foreign database is moved aside and
//! rebuilt from the disk with a warning. One writer connection belongs to the
//! catalog worker thread; HTTP handlers read through a second connection on
//! blocking threads (WAL lets them run side by side).

pub mod digest;
pub mod logscan;
mod reconcile;
pub mod timeindex;
pub mod worker;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension};

use crate::config::Scheme;
use crate::tile::{flip_row, Format};

pub use reconcile::{classify, reconcile, tile_range_bounds, Entry, ReconcileStats};

/// Bump when the schema changes: an older database is rebuilt, not migrated,
/// since everything in it can be read again from the disk.
const SCHEMA_VERSION: i64 = 8;
const DB_FILE: &str = "tessera.db";

const SCHEMA: &str = "
CREATE TABLE roots (
    id    INTEGER PRIMARY KEY,
    kind  TEXT NOT NULL,
    path  TEXT NOT NULL UNIQUE,
    -- What the rows' stamps were taken from: 'mtime' or 'content'.
    stamps TEXT NOT NULL DEFAULT 'mtime'
);
CREATE TABLE tiles (
    root     INTEGER NOT NULL,
    rel      TEXT NOT NULL,
    tileset  TEXT NOT NULL,
    z        INTEGER NOT NULL,
    x        INTEGER NOT NULL,
    y        INTEGER NOT NULL,
    ext      TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    -- Its share of the tileset's version: the mtime, or a hash of the
    -- content under etag = 'content' (validators::Tag).
    stamp    INTEGER NOT NULL,
    PRIMARY KEY (root, rel)
) WITHOUT ROWID;
CREATE INDEX tiles_by_tileset ON tiles (root, tileset, z, x, y);
-- Files that describe or hold a whole tileset: `{tileset}/metadata.json`
-- (kind 'metadata'), `{tileset}.mbtiles` (kind 'mbtiles', with the summary
-- of its tiles table) and `{tileset}.pmtiles` (kind 'pmtiles', with the
-- summary of its header, metadata and directories). `levels` NULL: the
-- file was refused.
CREATE TABLE sources (
    root        INTEGER NOT NULL,
    rel         TEXT NOT NULL,
    tileset     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    dev         INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    stamp       INTEGER NOT NULL,
    metadata    TEXT,
    format      TEXT,
    levels      TEXT,
    tile_count  INTEGER,
    PRIMARY KEY (root, rel)
) WITHOUT ROWID;
-- One row per tileset: its tiles' extent per zoom level as stored on disk
-- (`levels`: JSON [[z, x0, x1, y0, y1], ...], rows in the tileset's own
-- scheme), and the metadata its files declare.
CREATE TABLE tilesets (
    root        INTEGER NOT NULL,
    name        TEXT NOT NULL,
    source      TEXT NOT NULL,
    format      TEXT NOT NULL,
    scheme      TEXT NOT NULL,
    minzoom     INTEGER NOT NULL,
    maxzoom     INTEGER NOT NULL,
    levels      TEXT NOT NULL,
    tile_count  INTEGER NOT NULL,
    fingerprint INTEGER NOT NULL,
    max_mtime_ns INTEGER NOT NULL,
    metadata    TEXT,
    PRIMARY KEY (root, name)
);
CREATE TABLE logs (
    root     INTEGER NOT NULL,
    rel      TEXT NOT NULL,
    device   TEXT NOT NULL,
    file     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    dev      INTEGER NOT NULL,
    ino      INTEGER NOT NULL,
    etag     TEXT NOT NULL,
    first_ms INTEGER,
    last_ms  INTEGER,
    -- `sha-256=:BASE64:` (RFC 9530) of the file with exactly these validators;
    -- computed in the background, NULL until then and after any change.
    digest   TEXT,
    PRIMARY KEY (root, rel)
) WITHOUT ROWID;
CREATE INDEX logs_by_device ON logs (device, file);
-- The time index of each plain log (catalog/timeindex.rs): how far it was
-- read, for the next append, and what was learnt on the way.
CREATE TABLE log_index (
    id          INTEGER PRIMARY KEY,
    root        INTEGER NOT NULL,
    rel         TEXT NOT NULL,
    dev         INTEGER NOT NULL,
    ino         INTEGER NOT NULL,
    -- End of the last whole line read, and a hash of the 4 KiB before it.
    indexed_to  INTEGER NOT NULL,
    tail_check  INTEGER NOT NULL,
    csv_column  INTEGER,
    -- 1 while no line's time is earlier than the one before it.
    ordered     INTEGER NOT NULL,
    prev_ms     INTEGER,
    min_ms      INTEGER,
    max_ms      INTEGER,
    last_mark   INTEGER,
    marks       INTEGER NOT NULL,
    -- The file's length and mtime when the last pass read it.
    size        INTEGER NOT NULL,
    mtime_ns    INTEGER NOT NULL,
    -- 0 while a pass left the rest for later (the worker continues it).
    complete    INTEGER NOT NULL,
    UNIQUE (root, rel)
);
-- Line starts by time: about one per 64 KiB of log.
CREATE TABLE log_marks (
    log    INTEGER NOT NULL,
    ms     INTEGER NOT NULL,
    offset INTEGER NOT NULL,
    PRIMARY KEY (log, ms, offset)
) WITHOUT ROWID;
";

/// Where the catalog lives: its file in the state directory, or, when that
/// cannot be written (a read-only or full disk, wrong permissions), an
/// in-memory database shared by tessera's connections, rebuilt at each
/// start. Serving never depends on the file.
#[derive(Debug, Clone)]
pub enum Location {
    File(PathBuf),
    Memory,
}

/// The shared-cache in-memory database every connection of this process opens.
const MEMORY_URI: &str = "file:tessera-catalog?mode=memory&cache=shared";

impl Location {
    fn open(&self, flags: OpenFlags) -> rusqlite::Result<Connection> {
        match self {
            Location::File(path) => Connection::open_with_flags(path, flags),
            Location::Memory => Connection::open_with_flags(
                MEMORY_URI,
                (flags - OpenFlags::SQLITE_OPEN_READ_ONLY)
                    | OpenFlags::SQLITE_OPEN_READ_WRITE
                    | OpenFlags::SQLITE_OPEN_URI,
            ),
        }
    }
}

/// The catalog's writer connection and where it lives: the state
/// directory's database (see [`open`]) or, if that cannot be used, memory
/// (with a warning).
pub fn open_or_memory(state: &Path) -> anyhow::Result<(Connection, Location)> {
    match open(state) {
        Ok(conn) => Ok((conn, Location::File(db_path(state)))),
        Err(e) => {
            tracing::warn!(state = %state.display(), error = %format!("{e:#}"),
                "cannot use the catalog database; keeping the catalog in memory (rebuilt at each start)");
            Ok((open_memory()?, Location::Memory))
        }
    }
}

/// The in-memory catalog (see [`Location::Memory`]), with its schema.
pub fn open_memory() -> rusqlite::Result<Connection> {
    let conn = Location::Memory.open(OpenFlags::default())?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version != SCHEMA_VERSION {
        conn.execute_batch(SCHEMA)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    }
    Ok(conn)
}

/// Opens the catalog database in `state`, rebuilding it if it is missing,
/// unreadable, corrupt or of another schema version.
pub fn open(state: &Path) -> anyhow::Result<Connection> {
    std::fs::create_dir_all(state)
        .map_err(|e| anyhow::anyhow!("cannot create state directory {}: {e}", state.display()))?;
    let path = state.join(DB_FILE);
    if !path.exists() {
        tracing::warn!(path = %path.display(), "catalog database missing; building it from the disk");
        return create(&path);
    }
    match open_existing(&path) {
        Ok(conn) => Ok(conn),
        // Another process holds it: it is not broken, leave it alone.
        Err(reason) if reason.contains("database is locked") || reason.contains("database table is locked") => {
            Err(anyhow::anyhow!("catalog database {} is locked by another process: {reason}", path.display()))
        }
        Err(reason) => {
            tracing::warn!(path = %path.display(), %reason, "catalog database unusable; moving it aside and rebuilding from the disk");
            move_aside(&path);
            create(&path)
        }
    }
}

fn open_existing(path: &Path) -> Result<Connection, String> {
    let conn = Connection::open(path).map_err(|e| e.to_string())?;
    configure(&conn).map_err(|e| e.to_string())?;
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| e.to_string())?;
    if version != SCHEMA_VERSION {
        return Err(format!("schema version {version}, expected {SCHEMA_VERSION}"));
    }
    let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0)).map_err(|e| e.to_string())?;
    if check != "ok" {
        return Err(format!("integrity check: {check}"));
    }
    Ok(conn)
}

fn create(path: &Path) -> anyhow::Result<Connection> {
    let conn = Connection::open(path)?;
    configure(&conn)?;
    conn.execute_batch(SCHEMA)?;
    conn.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    Ok(conn)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    Ok(())
}

/// Keeps a broken database for a post-mortem instead of deleting it.
fn move_aside(path: &Path) {
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%S");
    let aside = path.with_extension(format!("db.broken-{stamp}"));
    if let Err(e) = std::fs::rename(path, &aside) {
        tracing::warn!(error = %e, "could not move the broken database aside; removing it");
        let _ = std::fs::remove_file(path);
    }
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// A second writer for background work (the digester): SQLite serialises
/// it with the catalog worker's writes (WAL, busy timeout).
pub fn open_second_writer(location: &Location) -> anyhow::Result<Connection> {
    let conn = location.open(OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX)?;
    if let Location::File(_) = location {
        configure(&conn)?;
    }
    conn.busy_timeout(Duration::from_secs(5))?;
    Ok(conn)
}

/// The catalog as the HTTP layer reads it: one read-only connection,
/// opened on first use and opened again after an error (the database may
/// have been rebuilt under it). Its queries block: run them on a blocking
/// thread. Handlers see [`Queries`], never the connection itself.
pub struct Reader {
    location: Location,
    conn: parking_lot::Mutex<Option<Connection>>,
}

/// What a read can ask of the catalog.
pub struct Queries<'a>(&'a Connection);

/// Why a catalog read failed.
pub type Error = rusqlite::Error;

impl Reader {
    pub fn new(location: Location) -> Reader {
        Reader { location, conn: parking_lot::Mutex::new(None) }
    }

    /// Runs `f` on the read connection; the error is for a log line.
    pub fn read<T>(&self, f: impl FnOnce(Queries<'_>) -> Result<T, Error>) -> Result<T, String> {
        let mut conn = self.conn.lock();
        if conn.is_none() {
            *conn = Some(open_reader(&self.location).map_err(|e| e.to_string())?);
        }
        let result = f(Queries(conn.as_ref().expect("opened")));
        if result.is_err() {
            *conn = None;
        }
        result.map_err(|e| e.to_string())
    }
}

impl Queries<'_> {
    /// See [`tilesets`].
    pub fn tilesets(&self, root_order: &[i64]) -> Result<Vec<Tileset>, Error> {
        tilesets(self.0, root_order)
    }

    /// See [`logs`].
    pub fn logs(&self, root_order: &[i64], filter: &LogFilter) -> Result<Vec<LogRecord>, Error> {
        logs(self.0, root_order, filter)
    }

    /// The tiles of a directory tileset at zoom `z` (as stored: rows in the
    /// tileset's own scheme), at most `limit` of them.
    pub fn tiles_at(&self, root_id: i64, tileset: &str, z: u32, limit: usize) -> Result<Vec<(u32, u32)>, Error> {
        let mut stmt = self.0.prepare_cached(
            "SELECT DISTINCT x, y FROM tiles WHERE root = ?1 AND tileset = ?2 AND z = ?3 ORDER BY x, y LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![root_id, tileset, z, limit as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    }

    /// See [`timeindex::log_index`].
    pub fn log_index(
        &self,
        root_id: i64,
        rel: &str,
        since: i64,
        until: i64,
    ) -> Result<Option<timeindex::LogIndex>, Error> {
        timeindex::log_index(self.0, root_id, rel, since, until)
    }
}

/// A read-only connection (the HTTP layer's, through [`Reader`]).
fn open_reader(location: &Location) -> anyhow::Result<Connection> {
    let conn = location
        .open(OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI)?;
    if let Location::Memory = location {
        // Shared-cache readers would otherwise fail with SQLITE_LOCKED
        // (which no busy timeout waits out) while the worker writes.
        conn.pragma_update(None, "read_uncommitted", true)?;
    }
    conn.busy_timeout(Duration::from_secs(2))?;
    Ok(conn)
}

/// The database id of a root, creating its row if needed. A tiles root
/// whose stamps changed kind (`etag` mode) has its rows dropped, so that
/// the start-up reconcile stamps every file again.
pub fn root_id(conn: &Connection, kind: &str, path: &Path, by_content: bool) -> rusqlite::Result<i64> {
    let path = path.to_string_lossy();
    let stamps = if by_content { "content" } else { "mtime" };
    let known = conn
        .query_row("SELECT id, stamps FROM roots WHERE path = ?1", [&path], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?))
        })
        .optional()?;
    if let Some((id, was)) = known {
        // Written only when it changed: a start over an unchanged database writes nothing.
        conn.execute("UPDATE roots SET kind = ?2 WHERE id = ?1 AND kind <> ?2", params![id, kind])?;
        if was != stamps {
            // Stamps of the other kind would make this root's versions
            // disagree with other nodes': its rows are read again.
            for table in ["tiles", "sources", "tilesets"] {
                conn.execute(&format!("DELETE FROM {table} WHERE root = ?1"), [id])?;
            }
            conn.execute("UPDATE roots SET stamps = ?2 WHERE id = ?1", params![id, stamps])?;
        }
        return Ok(id);
    }
    conn.execute("INSERT INTO roots (kind, path, stamps) VALUES (?1, ?2, ?3)", params![kind, path, stamps])?;
    Ok(conn.last_insert_rowid())
}

/// Where a tileset's tiles are: a directory of files, an MBTiles file or a
/// PMTiles archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Directory,
    Mbtiles,
    Pmtiles,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Directory => "directory",
            Source::Mbtiles => "mbtiles",
            Source::Pmtiles => "pmtiles",
        }
    }

    fn from_column(s: &str) -> Source {
        match s {
            "mbtiles" => Source::Mbtiles,
            "pmtiles" => Source::Pmtiles,
            _ => Source::Directory,
        }
    }
}

/// A tileset as the catalog knows it: facts of the disk only. What the
/// configuration adds (a scheme override, the missing-tile status) is the
/// HTTP layer's to apply.
#[derive(Debug, Clone)]
pub struct Tileset {
    pub name: String,
    pub source: Source,
    pub format: Format,
    /// The row order the files declare: TMS for MBTiles and for a
    /// `metadata.json` saying so, else XYZ.
    pub scheme: Scheme,
    pub minzoom: u32,
    pub maxzoom: u32,
    /// Per zoom level: z, first and last column, first and last row, as stored.
    pub levels: Vec<[u32; 5]>,
    pub tile_count: u64,
    /// The newest file's mtime. (A deletion changes the fingerprint and
    /// count, not this: the tileset's version is a function of the files
    /// present, the same on every node that sees them.)
    pub last_change_ns: i64,
    /// Changes whenever any tile of the tileset does (see `refresh_tileset`).
    pub fingerprint: i64,
    /// `metadata.json`, or the MBTiles `metadata` table as an object of strings.
    pub metadata: Option<serde_json::Value>,
    pub root: i64,
}

impl Tileset {
    /// West, south, east, north in degrees, reading rows as `tms` or not.
    /// A PMTiles archive's are its header's, which are exact; the others'
    /// are those of the tiles' extent.
    pub fn bounds(&self, tms: bool) -> [f64; 4] {
        if self.source == Source::Pmtiles {
            let declared =
                self.metadata.as_ref().and_then(|m| serde_json::from_value::<[f64; 4]>(m["bounds"].clone()).ok());
            if let Some(bounds) = declared {
                return bounds;
            }
        }
        let mut bounds = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        for &[z, x0, x1, y0, y1] in &self.levels {
            let (y0, y1) = if tms { (flip_row(z, y1), flip_row(z, y0)) } else { (y0, y1) };
            let b = tile_range_bounds(z, x0, x1, y0, y1);
            bounds = [bounds[0].min(b[0]), bounds[1].min(b[1]), bounds[2].max(b[2]), bounds[3].max(b[3])];
        }
        if self.levels.is_empty() {
            return [-180.0, -85.051_128_779_806_6, 180.0, 85.051_128_779_806_6];
        }
        bounds
    }

    /// A short token that changes whenever the tileset does: tile URLs carry
    /// it (`?v=`) so that clients caching tiles for long still see changes.
    pub fn version(&self) -> String {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        // Not the newest mtime: under `etag = "content"` each node has its
        // own, and the fingerprint already holds every file's stamp.
        for v in [self.fingerprint, self.tile_count as i64] {
            for b in v.to_le_bytes() {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
        }
        format!("{:012x}", h & 0xffff_ffff_ffff)
    }
}

/// A log file as the catalog knows it: facts of the disk, which the HTTP
/// layer turns into its listing (URLs, dates).
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub device: String,
    pub file: String,
    pub size: u64,
    pub mtime_ns: i64,
    pub etag: String,
    /// The first and last timestamp inside the file (Unix milliseconds).
    pub first_ms: Option<i64>,
    pub last_ms: Option<i64>,
    /// Modified within the last [`GROWING_WINDOW`]: judged by its mtime,
    /// so that every node sharing the log lists it alike.
    pub growing: bool,
    /// `sha-256=:…:` once computed for the file as it is now.
    pub digest: Option<String>,
    /// The database id of its root.
    pub root: i64,
    /// Its time index (none for compressed logs).
    pub index: Option<IndexFacts>,
}

/// What the time index knows of a log, for listings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexFacts {
    /// No line's time is earlier than the line before it.
    pub ordered: bool,
    pub marks: u64,
    /// How far the index has read.
    pub indexed_to: u64,
    /// The last pass read to the end (or to space not written yet).
    pub complete: bool,
}

/// A log modified within this long is listed as growing.
pub const GROWING_WINDOW: Duration = Duration::from_secs(300);

/// Filter for the log listing: the logs whose time span overlaps [since, until].
#[derive(Debug, Default, Clone)]
pub struct LogFilter {
    pub device: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    /// Keyset pagination: only logs after this (device, file).
    pub after: Option<(String, String)>,
    /// At most this many logs (None: all).
    pub limit: Option<usize>,
}

/// Tilesets in root order (`root_order` lists database root ids by
/// configuration order); a name in an earlier root hides the same name later.
pub fn tilesets(conn: &Connection, root_order: &[i64]) -> rusqlite::Result<Vec<Tileset>> {
    let mut stmt = conn.prepare_cached(
        "SELECT root, name, source, format, scheme, minzoom, maxzoom, levels, tile_count, fingerprint,
                max_mtime_ns, metadata
         FROM tilesets ORDER BY name",
    )?;
    let rows = stmt.query_map([], |r| {
        let last_change_ns: i64 = r.get(10)?;
        let levels: String = r.get(7)?;
        let metadata: Option<String> = r.get(11)?;
        Ok(Tileset {
            root: r.get(0)?,
            name: r.get(1)?,
            source: Source::from_column(&r.get::<_, String>(2)?),
            format: Format::from_name(&r.get::<_, String>(3)?).unwrap_or(Format::Png),
            scheme: if r.get::<_, String>(4)? == "tms" { Scheme::Tms } else { Scheme::Xyz },
            minzoom: r.get(5)?,
            maxzoom: r.get(6)?,
            levels: serde_json::from_str(&levels).unwrap_or_default(),
            tile_count: r.get(8)?,
            fingerprint: r.get(9)?,
            last_change_ns,
            metadata: metadata.and_then(|m| serde_json::from_str(&m).ok()),
        })
    })?;
    let mut all: Vec<Tileset> = rows.filter_map(Result::ok).filter(|t| root_order.contains(&t.root)).collect();
    let rank = |t: &Tileset| root_order.iter().position(|r| *r == t.root).unwrap_or(usize::MAX);
    all.sort_by(|a, b| a.name.cmp(&b.name).then(rank(a).cmp(&rank(b))));
    all.dedup_by(|later, earlier| later.name == earlier.name);
    Ok(all)
}

/// Logs matching `filter`, ordered by device and file. Pagination is by
/// key (the last device and file of the previous page), so a page boundary
/// stays put while logs come and go.
pub fn logs(conn: &Connection, root_order: &[i64], filter: &LogFilter) -> rusqlite::Result<Vec<LogRecord>> {
    let mut stmt = conn.prepare_cached(
        "SELECT l.root, device, file, l.size, l.mtime_ns, etag, first_ms, last_ms, l.mtime_ns, digest,
                i.ordered, i.marks, i.indexed_to, i.complete
         FROM logs l LEFT JOIN log_index i ON i.root = l.root AND i.rel = l.rel
         WHERE (?1 IS NULL OR device = ?1)
           AND (?2 IS NULL OR last_ms IS NULL OR last_ms >= ?2)
           AND (?3 IS NULL OR first_ms IS NULL OR first_ms <= ?3)
           AND (?4 IS NULL OR device > ?4 OR (device = ?4 AND file > ?5))
         ORDER BY device, file",
    )?;
    let (after_device, after_file) = filter.after.clone().unzip();
    let growing_since = reconcile::now_ns() - GROWING_WINDOW.as_nanos() as i64;
    let rows =
        stmt.query_map(params![filter.device, filter.since_ms, filter.until_ms, after_device, after_file], |r| {
            Ok((
                r.get::<_, i64>(0)?,
                LogRecord {
                    device: r.get(1)?,
                    file: r.get(2)?,
                    size: r.get(3)?,
                    mtime_ns: r.get(4)?,
                    etag: r.get(5)?,
                    first_ms: r.get(6)?,
                    last_ms: r.get(7)?,
                    growing: r.get::<_, i64>(8)? > growing_since,
                    digest: r.get(9)?,
                    root: r.get(0)?,
                    index: match r.get::<_, Option<bool>>(10)? {
                        Some(ordered) => Some(IndexFacts {
                            ordered,
                            marks: r.get::<_, i64>(11)? as u64,
                            indexed_to: r.get::<_, i64>(12)? as u64,
                            complete: r.get(13)?,
                        }),
                        None => None,
                    },
                },
            ))
        })?;
    let rank = |id: i64| root_order.iter().position(|r| *r == id).unwrap_or(usize::MAX);
    let mut out: Vec<(usize, LogRecord)> = Vec::new();
    for row in rows {
        let (root, entry) = row?;
        if !root_order.contains(&root) {
            continue;
        }
        // A device/file pair in an earlier root hides the same pair later
        // (rows come sorted by device and file, so the pair is adjacent).
        match out.last_mut() {
            Some((r, last)) if last.device == entry.device && last.file == entry.file => {
                if rank(root) < *r {
                    (*r, *last) = (rank(root), entry);
                }
            }
            _ => out.push((rank(root), entry)),
        }
        // One past the limit: that pair belongs to the next page.
        if filter.limit.is_some_and(|limit| out.len() > limit) {
            out.pop();
            break;
        }
    }
    Ok(out.into_iter().map(|(_, entry)| entry).collect())
}

/// The database file's path in a state directory.
pub fn db_path(state: &Path) -> PathBuf {
    state.join(DB_FILE)
}
