//! MBTiles files: SQLite databases of tiles, rows numbered from the bottom
//! (TMS), opened read-only.
//!
//! The catalog reads a file's metadata and extent once per change
//! ([`summarise`]); the HTTP layer opens the file through the descriptor
//! cache (its path checked inside the root, its freshness checked as any
//! file's) and reads tiles through [`MbtilesFiles`], which keeps a few
//! connections per file version and starts afresh the moment the file's
//! validators change, so a replaced `.mbtiles` is served new within the
//! descriptor cache's bound, as any file is.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use percent_encoding::{percent_encode, AsciiSet, CONTROLS};

use crate::tile::Format;
use crate::validators::Validators;

/// What the catalog keeps of an MBTiles file.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The `metadata` table as a JSON object of strings (`json` included as written).
    pub metadata: serde_json::Value,
    pub format: Format,
    /// Per zoom level: z, first and last column, first and last (TMS) row.
    pub levels: Vec<[u32; 5]>,
    pub tile_count: u64,
}

fn open(path: &Path) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(2))?;
    // A WAL-mode file needs its `-shm` beside it, which a read-only data
    // directory (the appliance's) cannot hold. Then read it as immutable:
    // safe here, since a changed file gets new connections (validators).
    if conn.query_row("PRAGMA schema_version", [], |r| r.get::<_, i64>(0)).is_err() {
        let uri = format!("file:{}?mode=ro&immutable=1", percent_encode_path(path));
        let conn = Connection::open_with_flags(uri, flags | OpenFlags::SQLITE_OPEN_URI)?;
        return Ok(conn);
    }
    Ok(conn)
}

/// A read connection for serving tiles: `immutable` (no locks, no check of
/// the file's change counter, no look for a hot journal: most of the
/// MBTiles path's SQLite time went to those, perf and strace) unless the
/// database is in WAL mode, whose commits only `-wal` shows. Safe because
/// the handle is per file version and the caller checks the file's
/// validators after each query. Not memory-mapped: a mapped file truncated
/// under a query (`cp` over it) would end the process with SIGBUS, where a
/// short `pread` is an error and a retry.
fn serving(path: &Path, wal: bool) -> rusqlite::Result<Connection> {
    if wal {
        return open(path);
    }
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(format!("file:{}?mode=ro&immutable=1", percent_encode_path(path)), flags)?;
    // 8 MiB of pages per connection (SQLite's default is 2): the index and
    // the table's inner pages stay, so a tile costs only the `pread`s of its
    // own pages (strace: about four for a 16 KB tile), 38.9 -> 32.5 us per
    // request on the benchmark pyramid.
    conn.pragma_update(None, "cache_size", -8192)?;
    Ok(conn)
}

/// A path as the path part of an SQLite `file:` URI.
fn percent_encode_path(path: &Path) -> String {
    // What SQLite's URI parser would take for syntax, and every byte that is
    // not ASCII (it decodes `%XX` back to the file name's bytes).
    const URI_PATH: &AsciiSet = &CONTROLS.add(b'?').add(b'#').add(b'%');
    percent_encode(path.as_os_str().as_encoded_bytes(), URI_PATH).to_string()
}

/// Reads an MBTiles file's metadata and the extent of its tiles.
pub fn summarise(path: &Path) -> rusqlite::Result<Summary> {
    let conn = open(path)?;
    let mut metadata = serde_json::Map::new();
    let mut stmt = conn.prepare("SELECT name, value FROM metadata")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?)))? {
        let (name, value) = row?;
        metadata.insert(name, serde_json::Value::String(value.unwrap_or_default()));
    }
    let mut stmt = conn.prepare(
        "SELECT zoom_level, MIN(tile_column), MAX(tile_column), MIN(tile_row), MAX(tile_row), COUNT(*)
         FROM tiles WHERE zoom_level BETWEEN 0 AND 30 GROUP BY zoom_level ORDER BY zoom_level",
    )?;
    let mut levels = Vec::new();
    let mut tile_count = 0u64;
    for row in
        stmt.query_map([], |r| Ok(([r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?], r.get::<_, i64>(5)?)))?
    {
        let (level, count): ([u32; 5], i64) = row?;
        levels.push(level);
        tile_count += count as u64;
    }
    let declared = metadata.get("format").and_then(|f| f.as_str()).and_then(Format::from_name);
    let format = match declared {
        Some(format) => format,
        None => {
            let first: Option<Vec<u8>> =
                conn.query_row("SELECT tile_data FROM tiles LIMIT 1", [], |r| r.get(0)).optional()?;
            Format::sniff(first.as_deref().unwrap_or_default())
        }
    };
    Ok(Summary { metadata: serde_json::Value::Object(metadata), format, levels, tile_count })
}

/// One tile read from an MBTiles file.
#[derive(Debug, Clone)]
pub struct Blob {
    pub data: Bytes,
    /// The database is in WAL mode: its commits go to `-wal` beside it and
    /// leave the file's own validators as they were, so the validators do
    /// not name its content.
    pub wal: bool,
}

/// The MBTiles files being served, each with a few idle read connections.
#[derive(Default)]
pub struct MbtilesFiles {
    open: Mutex<HashMap<PathBuf, Arc<Handle>>>,
}

struct Handle {
    validators: Validators,
    wal: bool,
    idle: Mutex<Vec<Connection>>,
}

/// Idle connections kept per file (one per worker thread is the common need).
const IDLE_MAX: usize = 4;

impl MbtilesFiles {
    /// Tile `z/x/row` (row counted from the bottom, as MBTiles stores it) of
    /// the MBTiles file at `path` (opened and checked inside its root by the
    /// caller, through the descriptor cache, whose `validators` name the
    /// version being read). `Ok(None)`: no such tile. Blocking: a query of
    /// a local file in the page cache takes microseconds; shared storage
    /// can take long.
    pub fn tile(&self, path: &Path, validators: Validators, z: u32, x: u32, row: u32) -> io::Result<Option<Blob>> {
        let handle = self.handle(path, validators)?;
        let conn = match handle.idle.lock().pop() {
            Some(conn) => conn,
            None => serving(path, handle.wal).map_err(io::Error::other)?,
        };
        let data: Option<Vec<u8>> = conn
            .prepare_cached("SELECT tile_data FROM tiles WHERE zoom_level = ?1 AND tile_column = ?2 AND tile_row = ?3")
            .and_then(|mut stmt| stmt.query_row([z, x, row], |r| r.get(0)).optional())
            .map_err(io::Error::other)?;
        let mut idle = handle.idle.lock();
        if idle.len() < IDLE_MAX {
            idle.push(conn);
        }
        Ok(data.map(|data| Blob { data: Bytes::from(data), wal: handle.wal }))
    }

    /// Whether a query of this file version may run on an async worker
    /// thread: its handle exists and takes no lock. The first query (which
    /// asks the journal mode on a locking connection) and every query of a
    /// WAL-mode file may wait on a writer for the busy timeout.
    pub fn quick(&self, path: &Path, validators: Validators) -> bool {
        self.open.lock().get(path).is_some_and(|h| h.validators == validators && !h.wal)
    }

    /// The handle for the file version `validators` names: a changed file
    /// (new inode, size or mtime) gets fresh connections, so no connection
    /// keeps reading a replaced file. SQLite opens by name, so the name
    /// must still lead to that version once the connection is open (a file
    /// renamed over it, or a link swapped in, would be another).
    fn handle(&self, path: &Path, validators: Validators) -> io::Result<Arc<Handle>> {
        if let Some(handle) = self.open.lock().get(path).filter(|h| h.validators == validators) {
            return Ok(handle.clone());
        }
        let mode: String = open(path)
            .and_then(|conn| conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .map_err(io::Error::other)?;
        let wal = mode.eq_ignore_ascii_case("wal");
        let conn = serving(path, wal).map_err(io::Error::other)?;
        if Validators::of(&std::fs::metadata(path)?) != validators {
            return Err(io::Error::other("the MBTiles file changed while it was opened; retry"));
        }
        let handle = Arc::new(Handle { validators, wal, idle: Mutex::new(vec![conn]) });
        self.open.lock().insert(path.to_path_buf(), handle.clone());
        Ok(handle)
    }
}
