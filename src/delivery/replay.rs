//! Replays: the Router's answer to a plain GET or HEAD of a whole file (no
//! conditional, no range, no `Vary`) is the same bytes for as long as the
//! file's descriptor-cache entry stays current, so each worker thread keeps
//! the head it wrote, by request target, next to that entry, and answers the
//! same request again without calling the Router. An invalidation, eviction
//! or due safety-net check of the entry ends the replay (perf: the Router
//! stack was most of the tile path's user time).

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, Weak};

use axum::http::{header, StatusCode};
use bytes::Bytes;

use super::driver::Shared;
use super::{FileSlice, Held, ReplayWhile};
use crate::cache::FileEntry;
use crate::metrics::Route;
use crate::roots::Root;
use crate::validators::Validators;

/// A current replay: the file and the part of it to send (or the bytes
/// held for it), and the head kept for it.
pub(super) struct Found {
    pub(super) slice: FileSlice,
    pub(super) held: Option<Bytes>,
    pub(super) head: Bytes,
    pub(super) route: Route,
}

/// A response the driver may send again for the same request target.
struct Replay {
    /// Weak: a replay must not keep a descriptor open after the descriptor
    /// cache let it go (that leaked descriptors past the open-file limit).
    entry: Weak<FileEntry>,
    /// Status line and headers as the Router's response had them, without
    /// `Date`, framing of the driver's own or `Connection`.
    head: Bytes,
    route: Route,
    /// The part of the file the body is: all of it, or (with `while_`) a
    /// representation inside it; or bytes read from it (`held`).
    offset: u64,
    len: u64,
    held: Option<Bytes>,
    while_: Option<ReplayWhile>,
    /// Where the file is and which version the head describes, to re-open
    /// it once the cache has let the entry go.
    root: usize,
    rel: Box<str>,
    validators: Validators,
}

impl Replay {
    fn found(&self, entry: Arc<FileEntry>) -> Found {
        Found {
            slice: FileSlice { entry, offset: self.offset, len: self.len },
            held: self.held.clone(),
            head: self.head.clone(),
            route: self.route,
        }
    }
}

thread_local! {
    /// This worker thread's replays, by request target. foldhash, seeded
    /// per process, instead of SipHash: a tenth of a replay's instructions
    /// went to hashing the target (callgrind); only targets that were
    /// answered with a whole file get in, and the map is bounded.
    static REPLAYS: RefCell<HashMap<String, Replay, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::with_hasher(foldhash::fast::RandomState::default()));
}

/// More replays than this and the map starts afresh (it is a cache of
/// what the descriptor cache already bounds).
const REPLAYS_MAX: usize = 1 << 15;
/// Longer targets are never remembered: every query-string variant of a tile
/// would otherwise take a key of its own, up to the head size limit each
/// (32 Ki keys of 16 KiB: half a GiB per worker).
const REPLAY_TARGET_MAX: usize = 256;

/// Bytes held by one worker's replays at most (tiles read from MBTiles
/// files): past it, the held replays start afresh.
const HELD_MAX: usize = 32 << 20;

thread_local! {
    /// This worker thread's bytes held by replays.
    static HELD: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Makes room for `len` more held bytes in this worker's budget: past it,
/// the held replays (not the others) start afresh. False for bytes too
/// large to hold at all.
fn make_room(replays: &mut HashMap<String, Replay, foldhash::fast::RandomState>, len: usize) -> bool {
    if len > HELD_MAX / 64 {
        return false;
    }
    if HELD.get() + len > HELD_MAX {
        replays.retain(|_, r| r.held.is_none());
        HELD.set(0);
    }
    true
}

/// Keeps the head of a whole-file 200 (or of a part the HTTP layer marked
/// [`ReplayWhile`], or of bytes it marked [`Held`]) for replays, if it may
/// be replayed.
pub(super) fn remember(target: String, parts: &axum::http::response::Parts, head: &[u8], roots: &[Root]) {
    let (slice, held, while_) = match (parts.extensions.get::<FileSlice>(), parts.extensions.get::<Held>()) {
        (Some(slice), _) => (slice.clone(), None, parts.extensions.get::<ReplayWhile>().cloned()),
        (None, Some(held)) => {
            let slice = FileSlice { entry: held.entry.clone(), offset: 0, len: held.data.len() as u64 };
            (slice, Some(held.data.clone()), Some(held.while_.clone()))
        }
        (None, None) => return,
    };
    let entry = &slice.entry;
    let whole = held.is_none() && slice.offset == 0 && slice.len == entry.len();
    if target.len() > REPLAY_TARGET_MAX
        || parts.status != StatusCode::OK
        || parts.headers.contains_key(header::VARY)
        || parts.extensions.get::<super::NoReplay>().is_some()
        || !(whole || while_.as_ref().is_some_and(ReplayWhile::holds))
        || !entry.replayable
        || !entry.is_current()
    {
        return;
    }
    let Some(rel) = roots.get(entry.root).and_then(|root| relative(&entry.path, root)) else { return };
    let route = route_of(parts);
    let replay = Replay {
        entry: Arc::downgrade(entry),
        head: Bytes::copy_from_slice(head),
        route,
        offset: slice.offset,
        len: slice.len,
        held,
        while_,
        root: entry.root,
        rel: rel.into(),
        validators: entry.validators,
    };
    REPLAYS.with(|replays| {
        let mut replays = replays.borrow_mut();
        if replays.len() >= REPLAYS_MAX {
            replays.clear();
            HELD.set(0);
        }
        let held = replay.held.as_ref().map_or(0, Bytes::len);
        if held > 0 && !make_room(&mut replays, held) {
            return;
        }
        HELD.set(HELD.get() + held);
        if let Some(old) = replays.insert(target, replay) {
            HELD.set(HELD.get().saturating_sub(old.held.as_ref().map_or(0, Bytes::len)));
        }
    });
}

/// The route the HTTP layer labelled an answer with (its metric label).
pub(super) fn route_of(parts: &axum::http::response::Parts) -> Route {
    parts.extensions.get::<Route>().copied().unwrap_or(Route("other"))
}

/// `path` relative to `root`, as the cache's key was built from them.
fn relative<'a>(path: &'a std::path::Path, root: &Root) -> Option<&'a str> {
    let rel = path.to_str()?.strip_prefix(root.path().to_str()?)?.strip_prefix('/')?;
    (!rel.is_empty()).then_some(rel)
}

/// The file and head of a replay for `target`, if it is still the answer.
/// The common case is a live, current descriptor-cache entry. If the
/// cache let the entry go (an eviction under the open-file limit, or an
/// invalidation), the file is opened again through the cache, and the
/// replay holds only if the new descriptor has the validators the head
/// was written for (so `ETag`, `Last-Modified` and `Content-Length` are
/// still true); anything else drops the replay and the Router answers.
pub(super) fn find(target: &str, shared: &Shared) -> Option<Found> {
    let stale = REPLAYS.with(|replays| {
        let replays = replays.borrow();
        let replay = replays.get(target)?;
        if replay.while_.as_ref().is_some_and(|w| !w.holds()) {
            return Some(Err(None));
        }
        if let Some(entry) = replay.entry.upgrade().filter(|entry| entry.fresh()) {
            shared.metrics.cache_hits.inc();
            return Some(Ok(replay.found(entry)));
        }
        Some(Err(Some((replay.root, replay.rel.clone(), replay.validators))))
    })?;
    let reopened = match stale {
        Ok(found) => return Some(found),
        Err(None) => None,
        Err(Some((root, rel, validators))) => shared
            .cache
            .open(&shared.roots[root], &rel)
            .ok()
            .filter(|entry| entry.validators == validators && entry.replayable && entry.is_current()),
    };
    REPLAYS.with(|replays| {
        let mut replays = replays.borrow_mut();
        match reopened {
            Some(entry) => {
                let replay = replays.get_mut(target)?;
                replay.entry = Arc::downgrade(&entry);
                Some(replay.found(entry))
            }
            None => {
                if let Some(gone) = replays.remove(target) {
                    HELD.set(HELD.get().saturating_sub(gone.held.as_ref().map_or(0, Bytes::len)));
                }
                None
            }
        }
    })
}
