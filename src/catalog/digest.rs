//! Digests of logs for `Repr-Digest` (RFC 9530), computed in the background.
//!
//! A digest belongs to one version of a file: it is stored next to the
//! validators (device, inode, length, mtime) it was computed for, the
//! reconcile of a changed file drops it, and the HTTP layer looks it up by
//! the validators of the descriptor it sends, so it can never describe other
//! bytes. Downloads never wait for it: until it is known, responses go
//! without `Repr-Digest`. A file is hashed only once it has been still for
//! [`SETTLE`] (a growing log would be stale before the hash finished), on
//! its own thread at a lower priority, with its own SQLite connection.

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderValue;
use base64::Engine;
use parking_lot::RwLock;
use rusqlite::{params, Connection};
use sha2::{Digest, Sha256};

use crate::roots::Root;
use crate::validators::Validators;

/// A file must have been unchanged this long before it is hashed.
pub const SETTLE: Duration = Duration::from_secs(2);
/// How often the digester looks for work when nothing is pending.
const POLL: Duration = Duration::from_millis(200);

/// The known digests, by the validators of the file version they belong to.
#[derive(Default)]
pub struct Digests {
    map: RwLock<HashMap<Validators, HeaderValue>>,
}

impl Digests {
    /// `Repr-Digest` value for this version of a file, if known.
    pub fn get(&self, v: &Validators) -> Option<HeaderValue> {
        self.map.read().get(v).cloned()
    }
}

/// The `Repr-Digest` field value for a SHA-256 digest.
pub fn field_value(digest: &[u8]) -> String {
    format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(digest))
}

pub struct Digester {
    pub conn: Connection,
    pub roots: Arc<Vec<Root>>,
    pub root_ids: Vec<i64>,
    pub digests: Arc<Digests>,
    /// The catalog worker's generation: a change means there may be work.
    pub generation: Arc<AtomicU64>,
}

/// One log without a digest.
struct Pending {
    root: i64,
    rel: String,
    validators: Validators,
}

impl Digester {
    /// Runs until the process ends.
    pub fn run(mut self) {
        lower_priority();
        let mut seen = u64::MAX;
        let mut unsettled = false;
        loop {
            let generation = self.generation.load(Ordering::Acquire);
            if generation != seen || unsettled {
                seen = generation;
                match self.pass() {
                    Ok(left) => unsettled = left,
                    Err(e) => tracing::warn!(error = %e, "digest pass failed; will retry"),
                }
            }
            std::thread::sleep(POLL);
        }
    }

    /// Hashes every settled log without a digest, then reloads the map.
    /// Returns whether some logs were too fresh to hash yet.
    fn pass(&mut self) -> rusqlite::Result<bool> {
        let pending = self.pending()?;
        let now = crate::catalog::reconcile::now_ns();
        let mut unsettled = false;
        for p in pending {
            if now - (p.validators.mtime_ns as i64) < SETTLE.as_nanos() as i64 {
                unsettled = true;
                continue;
            }
            let Some(index) = self.root_ids.iter().position(|id| *id == p.root) else { continue };
            match hash(&self.roots[index], &p.rel, p.validators) {
                Ok(Some(digest)) => {
                    let value = field_value(&digest);
                    let v = p.validators;
                    self.conn.execute(
                        "UPDATE logs SET digest = ?1 WHERE root = ?2 AND rel = ?3
                         AND size = ?4 AND mtime_ns = ?5 AND dev = ?6 AND ino = ?7",
                        params![value, p.root, p.rel, v.len as i64, v.mtime_ns as i64, v.dev as i64, v.ino as i64],
                    )?;
                    tracing::debug!(rel = p.rel, digest = value, "log digest computed");
                }
                // Changed since the catalog saw it: the next reconcile brings new validators.
                Ok(None) => unsettled = true,
                Err(e) => tracing::debug!(rel = p.rel, error = %e, "cannot hash log"),
            }
        }
        self.reload()?;
        Ok(unsettled)
    }

    fn pending(&self) -> rusqlite::Result<Vec<Pending>> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT root, rel, size, mtime_ns, dev, ino FROM logs WHERE digest IS NULL ORDER BY size",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Pending {
                root: r.get(0)?,
                rel: r.get(1)?,
                validators: validators(r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
            })
        })?;
        rows.collect()
    }

    /// The map becomes exactly the catalog's digests: entries of files that
    /// changed since are dropped with their rows' digests.
    fn reload(&self) -> rusqlite::Result<()> {
        let mut stmt =
            self.conn.prepare_cached("SELECT size, mtime_ns, dev, ino, digest FROM logs WHERE digest IS NOT NULL")?;
        let rows = stmt
            .query_map([], |r| Ok((validators(r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?), r.get::<_, String>(4)?)))?;
        let mut map = HashMap::new();
        for row in rows {
            let (v, digest) = row?;
            if let Ok(value) = HeaderValue::from_str(&digest) {
                map.insert(v, value);
            }
        }
        *self.digests.map.write() = map;
        Ok(())
    }
}

fn validators(size: i64, mtime_ns: i64, dev: i64, ino: i64) -> Validators {
    Validators { len: size as u64, mtime_ns: i128::from(mtime_ns), dev: dev as u64, ino: ino as u64 }
}

/// SHA-256 of the file at `rel`, if it still has `expected` validators
/// before and after the read (`Ok(None)` otherwise).
fn hash(root: &Root, rel: &str, expected: Validators) -> std::io::Result<Option<[u8; 32]>> {
    let mut file = root.open_file(rel)?;
    if Validators::of(&file.metadata()?) != expected {
        return Ok(None);
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    if total != expected.len || Validators::of(&file.metadata()?) != expected {
        return Ok(None);
    }
    Ok(Some(hasher.finalize().into()))
}

/// Hashing a large log must not take CPU from serving: nice 10 for this thread.
fn lower_priority() {
    // SAFETY: gettid has no preconditions; setpriority on our own thread id
    // only changes this thread's nice value.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}
