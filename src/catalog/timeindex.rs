//! The time index of logs: for each plain log, marks from a time to the
//! offset of a line start (one every [`MARK_EVERY`](crate::logline::MARK_EVERY) bytes, see
//! [`crate::logline`]), and how far the file has been read. An append is
//! read from where the last pass stopped; a file that is another one (new
//! device or inode), shorter, changed without growing (same length, other
//! mtime) or changed before its indexed end (the 4 KiB before it differ) is
//! read again from the start.
//!
//! The HTTP layer finds a slice's boundaries from two marks
//! ([`log_index`]) and reads at most one mark interval at each end.

use std::fs::File;
use std::time::Instant;

use rusqlite::{params, Connection, OptionalExtension};

use crate::logline::{tail_check, Mark, Progress, Shape};
use crate::validators::Validators;

/// The most bytes of logs one reconcile reads for the index (inside its
/// write transaction): a larger log is listed at once and its index
/// continued by the worker, so that the first reconcile (and readiness) and
/// the changes of other files never wait for gigabytes to be read.
pub const INLINE_BUDGET: u64 = 16 << 20;

/// The most bytes one continuation reads (outside any transaction) before
/// the worker looks at its queue again.
pub const CHUNK: u64 = 64 << 20;

/// What one indexing pass did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Pass {
    /// Bytes read from the file.
    pub read: u64,
    /// Whether it started again from the beginning.
    pub rebuilt: bool,
    /// Whether it reached the file's end (else another pass continues).
    pub finished: bool,
}

/// Why an index pass failed: the catalog (worth retrying the whole
/// reconcile), or the file (worth retrying the file).
#[derive(Debug)]
pub enum IndexError {
    Catalog(rusqlite::Error),
    Read(std::io::Error),
}

impl From<rusqlite::Error> for IndexError {
    fn from(e: rusqlite::Error) -> IndexError {
        IndexError::Catalog(e)
    }
}

impl From<std::io::Error> for IndexError {
    fn from(e: std::io::Error) -> IndexError {
        IndexError::Read(e)
    }
}

impl std::fmt::Display for IndexError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IndexError::Catalog(e) => write!(f, "catalog: {e}"),
            IndexError::Read(e) => write!(f, "reading the log: {e}"),
        }
    }
}

impl std::error::Error for IndexError {}

/// The stored index row of a log.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    id: i64,
    dev: u64,
    ino: u64,
    /// The file's length and mtime when the last pass read it.
    size: u64,
    mtime_ns: i64,
    check: i64,
    progress: Progress,
}

fn load(conn: &Connection, root_id: i64, rel: &str) -> rusqlite::Result<Option<Row>> {
    conn.prepare_cached(
        "SELECT id, dev, ino, indexed_to, tail_check, csv_column, ordered, prev_ms, min_ms, max_ms, last_mark, marks,
                size, mtime_ns
         FROM log_index WHERE root = ?1 AND rel = ?2",
    )?
    .query_row(params![root_id, rel], |r| {
        Ok(Row {
            id: r.get(0)?,
            dev: r.get::<_, i64>(1)? as u64,
            ino: r.get::<_, i64>(2)? as u64,
            size: r.get::<_, i64>(12)? as u64,
            mtime_ns: r.get(13)?,
            check: r.get(4)?,
            progress: Progress {
                indexed_to: r.get::<_, i64>(3)? as u64,
                shape: Shape { csv_column: r.get::<_, Option<i64>>(5)?.map(|c| c as usize) },
                ordered: r.get(6)?,
                prev_ms: r.get(7)?,
                min_ms: r.get(8)?,
                max_ms: r.get(9)?,
                last_mark: r.get::<_, Option<i64>>(10)?.map(|m| m as u64),
                marks: r.get::<_, i64>(11)? as u64,
            },
        })
    })
    .optional()
}

/// One pass over a log, read but not yet stored.
struct Scanned {
    /// The row the pass started from (`None`: a new one).
    row: Option<Row>,
    rebuilt: bool,
    from: u64,
    progress: Progress,
    marks: Vec<Mark>,
    check: i64,
    finished: bool,
}

/// Reads the next part of the log `rel` (open as `file`, with validators
/// `v`) for its index, at most `budget` bytes, without writing anything.
fn read_pass(
    conn: &Connection,
    root_id: i64,
    rel: &str,
    file: &File,
    v: &Validators,
    budget: u64,
) -> Result<Scanned, IndexError> {
    let row = load(conn, root_id, rel)?;
    // The bytes before the indexed end are what the index read: an append
    // (or a write into space never written before, where the index
    // stopped) continues from there.
    let continues = match &row {
        Some(row) if row.dev == v.dev && row.ino == v.ino && v.len >= row.progress.indexed_to => {
            tail_check(file, row.progress.indexed_to)? == row.check
        }
        _ => false,
    };
    let mut progress = match &row {
        Some(row) if continues => row.progress.clone(),
        _ => Progress::new(),
    };
    let from = progress.indexed_to;
    let until = v.len.min(from.saturating_add(budget));
    let (marks, held) = progress.extend(file, until)?;
    let check = tail_check(file, progress.indexed_to)?;
    // Held at an unwritten line: nothing more to read until it is written.
    let finished = until == v.len || held;
    Ok(Scanned { row, rebuilt: !continues, from, progress, marks, check, finished })
}

/// Writes what a pass read.
fn store_pass(conn: &Connection, root_id: i64, rel: &str, v: &Validators, read: &Scanned) -> rusqlite::Result<()> {
    if let (true, Some(row)) = (read.rebuilt, &read.row) {
        conn.prepare_cached("DELETE FROM log_marks WHERE log = ?1")?.execute([row.id])?;
    }
    let p = &read.progress;
    let values = params![
        root_id,
        rel,
        v.dev as i64,
        v.ino as i64,
        p.indexed_to as i64,
        read.check,
        p.shape.csv_column.map(|c| c as i64),
        p.ordered,
        p.prev_ms,
        p.min_ms,
        p.max_ms,
        p.last_mark.map(|m| m as i64),
        p.marks as i64,
        v.len as i64,
        v.mtime_ns as i64,
        read.finished
    ];
    let id: i64 = conn
        .prepare_cached(
            "INSERT INTO log_index (root, rel, dev, ino, indexed_to, tail_check, csv_column, ordered, prev_ms, min_ms, max_ms, last_mark, marks, size, mtime_ns, complete)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)
             ON CONFLICT (root, rel) DO UPDATE SET
                dev = excluded.dev, ino = excluded.ino, indexed_to = excluded.indexed_to,
                tail_check = excluded.tail_check, csv_column = excluded.csv_column, ordered = excluded.ordered,
                prev_ms = excluded.prev_ms, min_ms = excluded.min_ms, max_ms = excluded.max_ms,
                last_mark = excluded.last_mark, marks = excluded.marks, size = excluded.size,
                mtime_ns = excluded.mtime_ns, complete = excluded.complete
             RETURNING id",
        )?
        .query_row(values, |r| r.get(0))?;
    let mut insert = conn.prepare_cached("INSERT OR IGNORE INTO log_marks (log, ms, offset) VALUES (?1, ?2, ?3)")?;
    for mark in &read.marks {
        insert.execute(params![id, mark.ms, mark.offset as i64])?;
    }
    Ok(())
}

/// Brings the index of the log `rel` (open as `file`, with validators `v`)
/// towards its current length, reading at most `budget` bytes; returns what
/// it knows of the file's times. Reads and writes on `conn` as it is (the
/// reconcile's transaction).
pub fn update(
    conn: &Connection,
    root_id: i64,
    rel: &str,
    file: &File,
    v: &Validators,
    budget: u64,
) -> Result<(Progress, Pass), IndexError> {
    let started = Instant::now();
    let read = read_pass(conn, root_id, rel, file, v, budget)?;
    store_pass(conn, root_id, rel, v, &read)?;
    let pass = log_pass(rel, &read, started);
    Ok((read.progress, pass))
}

fn log_pass(rel: &str, read: &Scanned, started: Instant) -> Pass {
    let pass = Pass { read: read.progress.indexed_to - read.from, rebuilt: read.rebuilt, finished: read.finished };
    tracing::debug!(
        rel,
        from = read.from,
        read = pass.read,
        marks = read.marks.len(),
        rebuilt = pass.rebuilt,
        finished = pass.finished,
        elapsed_us = started.elapsed().as_micros() as u64,
        "log time index updated"
    );
    pass
}

/// Continues the index of a log a chunk at a time (the worker's job once a
/// pass was cut by the budget): the file is opened again, and its listing
/// row gets the exact first and last time once the index has read it all.
/// Returns whether more is left to read. A log that is gone is left to its
/// own reconcile (the watcher queues one); `Err` (the catalog, or a log that
/// cannot be read now) is worth a retry.
pub fn continue_log(conn: &Connection, root_id: i64, root_path: &std::path::Path, rel: &str) -> anyhow::Result<bool> {
    // A compressed log has no index (a reconcile that could not open one
    // leaves it for its next change).
    if super::logscan::compressed(std::path::Path::new(rel)) {
        return Ok(false);
    }
    let opened = crate::roots::open_for_index(root_path, rel)
        .and_then(|file| file.metadata().map(|meta| (file, Validators::of(&meta))));
    let (file, v) = match opened {
        Ok(opened) => opened,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e.into()),
    };
    let stored: Option<(i64, i64)> = conn
        .prepare_cached("SELECT dev, ino FROM logs WHERE root = ?1 AND rel = ?2")?
        .query_row(params![root_id, rel], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    // The log is another file, or gone, since the pass was cut: its own
    // reconcile (queued by the watcher) takes over.
    if stored != Some((v.dev as i64, v.ino as i64)) {
        return Ok(false);
    }
    // Read first, then take the write lock only to store, if nothing else
    // stored a pass for this log meanwhile (else the next chunk starts over
    // from what is stored).
    let started = Instant::now();
    let read = read_pass(conn, root_id, rel, &file, &v, CHUNK)?;
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    if load(&tx, root_id, rel)? != read.row {
        return Ok(true);
    }
    store_pass(&tx, root_id, rel, &v, &read)?;
    let pass = log_pass(rel, &read, started);
    if pass.finished {
        tx.prepare_cached("UPDATE logs SET first_ms = ?3, last_ms = ?4 WHERE root = ?1 AND rel = ?2")?
            .execute(params![root_id, rel, read.progress.min_ms, read.progress.max_ms])?;
    }
    tx.commit()?;
    Ok(!pass.finished)
}

/// The logs whose index a pass left unfinished (root id, relative path):
/// the worker continues them after a restart too.
pub fn unfinished(conn: &Connection) -> rusqlite::Result<Vec<(i64, String)>> {
    let mut stmt = conn.prepare_cached("SELECT root, rel FROM log_index WHERE complete = 0 ORDER BY root, rel")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    rows.collect()
}

/// Forgets the index of a log that is gone.
pub fn remove(conn: &Connection, root_id: i64, rel: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM log_marks WHERE log IN (SELECT id FROM log_index WHERE root = ?1 AND rel = ?2)")?
        .execute(params![root_id, rel])?;
    conn.prepare_cached("DELETE FROM log_index WHERE root = ?1 AND rel = ?2")?.execute(params![root_id, rel])?;
    Ok(())
}

/// What a slice request needs of a log's index: the file it describes,
/// how far it was read, and the marks just before the span's ends.
#[derive(Debug, Clone)]
pub struct LogIndex {
    pub dev: u64,
    pub ino: u64,
    /// The file's length and mtime when the index last read it.
    pub size: u64,
    pub mtime_ns: i64,
    pub marks: u64,
    pub indexed_to: u64,
    pub tail_check: i64,
    pub shape: Shape,
    pub ordered: bool,
    /// The time of the last line read.
    pub prev_ms: Option<i64>,
    /// The first mark (the first timestamped line).
    pub first: Option<Mark>,
    /// The last mark earlier than `since`, and than `until`.
    pub before_since: Option<Mark>,
    pub before_until: Option<Mark>,
}

/// The index of `rel` with the marks for a span, if the log has one.
pub fn log_index(
    conn: &Connection,
    root_id: i64,
    rel: &str,
    since: i64,
    until: i64,
) -> rusqlite::Result<Option<LogIndex>> {
    // One read transaction: the row and its marks from the same state.
    let tx = conn.unchecked_transaction()?;
    let conn = &*tx;
    let Some(row) = load(conn, root_id, rel)? else { return Ok(None) };
    let id = row.id;
    let mark = |r: &rusqlite::Row<'_>| Ok(Mark { offset: r.get::<_, i64>(0)? as u64, ms: r.get(1)? });
    let first = conn
        .prepare_cached("SELECT offset, ms FROM log_marks WHERE log = ?1 ORDER BY ms, offset LIMIT 1")?
        .query_row([id], mark)
        .optional()?;
    let mut before = conn.prepare_cached(
        "SELECT offset, ms FROM log_marks WHERE log = ?1 AND ms < ?2 ORDER BY ms DESC, offset DESC LIMIT 1",
    )?;
    let before_since = before.query_row(params![id, since], mark).optional()?;
    let before_until = before.query_row(params![id, until], mark).optional()?;
    let p = row.progress;
    Ok(Some(LogIndex {
        dev: row.dev,
        ino: row.ino,
        size: row.size,
        mtime_ns: row.mtime_ns,
        marks: p.marks,
        indexed_to: p.indexed_to,
        tail_check: row.check,
        shape: p.shape,
        ordered: p.ordered,
        prev_ms: p.prev_ms,
        first,
        before_since,
        before_until,
    }))
}

/// The time index's size on disk (its tables and their b-trees, from
/// SQLite's `dbstat`), its marks and the bytes of logs it covers.
#[derive(Debug, Clone, Copy, Default)]
pub struct Size {
    pub bytes: u64,
    pub marks: u64,
    pub logs: u64,
    pub covered: u64,
}

pub fn size(conn: &Connection) -> rusqlite::Result<Size> {
    let bytes: i64 = conn.query_row(
        "SELECT COALESCE(SUM(pgsize), 0) FROM dbstat WHERE name IN ('log_index', 'log_marks', 'sqlite_autoindex_log_index_1')",
        [],
        |r| r.get(0),
    )?;
    let (marks, logs, covered): (i64, i64, i64) = conn.query_row(
        "SELECT COALESCE(SUM(marks), 0), COUNT(*), COALESCE(SUM(indexed_to), 0) FROM log_index",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    Ok(Size { bytes: bytes as u64, marks: marks as u64, logs: logs as u64, covered: covered as u64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn marks(conn: &Connection) -> Vec<(i64, i64)> {
        let mut stmt = conn.prepare("SELECT ms, offset FROM log_marks ORDER BY offset").unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    }

    /// An index read in small chunks, then extended by an append, equals
    /// one read in one pass; a rewrite in place starts it again.
    #[test]
    fn chunks_and_appends_make_the_same_index_as_one_pass() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let line = |i: u32| {
            format!("2026-11-20T{:02}:{:02}:{:02}Z reading {i} {}\n", i / 3600, (i / 60) % 60, i % 60, "x".repeat(40))
        };
        let body: String = (0..20_000).map(line).collect();
        std::fs::write(&path, &body).unwrap();
        let one = Connection::open_in_memory().unwrap();
        one.execute_batch(super::super::SCHEMA).unwrap();
        let chunked = Connection::open_in_memory().unwrap();
        chunked.execute_batch(super::super::SCHEMA).unwrap();

        let file = File::open(&path).unwrap();
        let v = Validators::of(&file.metadata().unwrap());
        let (whole, pass) = update(&one, 1, "d/a.log", &file, &v, u64::MAX).unwrap();
        assert!(pass.finished && pass.rebuilt && whole.ordered);
        let mut passes = 0;
        loop {
            let (_, pass) = update(&chunked, 1, "d/a.log", &file, &v, 100_000).unwrap();
            passes += 1;
            assert_eq!(pass.rebuilt, passes == 1, "only the first pass starts from the beginning");
            if pass.finished {
                break;
            }
        }
        assert!(passes > 5, "{passes} passes");
        assert_eq!(marks(&one), marks(&chunked));
        assert!(marks(&one).len() as u64 >= body.len() as u64 / crate::logline::MARK_EVERY);

        std::fs::OpenOptions::new().append(true).open(&path).unwrap().write_all(line(30_000).as_bytes()).unwrap();
        let v = Validators::of(&file.metadata().unwrap());
        for conn in [&one, &chunked] {
            let (progress, pass) = update(conn, 1, "d/a.log", &file, &v, u64::MAX).unwrap();
            assert_eq!((pass.rebuilt, pass.read), (false, line(30_000).len() as u64), "an append reads only itself");
            assert_eq!(progress.indexed_to, v.len);
        }
        assert_eq!(marks(&one), marks(&chunked));

        // The same length written again with other bytes: read from the start.
        let rewritten = body.replace("reading 19999", "READING 19999");
        std::fs::write(&path, format!("{rewritten}{}", line(30_000))).unwrap();
        let v = Validators::of(&file.metadata().unwrap());
        let (_, pass) = update(&one, 1, "d/a.log", &file, &v, u64::MAX).unwrap();
        assert!(pass.rebuilt, "a rewrite in place is read again");
        remove(&one, 1, "d/a.log").unwrap();
        assert!(marks(&one).is_empty());
    }
}
