//! Faults while serving: files replaced, rewritten, truncated and deleted
//! while large responses stream; directories renamed and removed under the
//! watcher; an inotify queue overflow; descriptor exhaustion; a catalog
//! database that is corrupt, locked or read-only.
//!
//! The tests of this file run one at a time (`serial()`): they stream hundreds
//! of megabytes, stop the server, or starve it of descriptors, and would
//! disturb each other's timing on a small machine. The streams under faults,
//! the overflow burst and the locked catalogs take 6 to 9 s each: they are
//! second tier (`#[ignore]`, run by `cargo test -- --ignored`), the others
//! run in the fast tier.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

// ---------------------------------------------------------------------------
// Versioned content: every 64-byte line names its version and its index
// ---------------------------------------------------------------------------

/// `2024-05-01T00:00:00Z v=VVVVV line=IIIIIIIIII PPPPPPPPPPPPPPPPPP\n`: the
/// pad letter depends on the version, so a line torn between two versions
/// matches neither.
const LINE: usize = 64;
const V_AT: usize = 23;
const I_AT: usize = 34;
const PAD_AT: usize = 45;

fn pad_of(version: u32) -> u8 {
    b'A' + (version % 26) as u8
}

fn digits<const N: usize>(mut n: u64) -> [u8; N] {
    let mut out = [b'0'; N];
    for d in out.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out
}

fn make_line(version: u32, index: u64) -> [u8; LINE] {
    let mut line = [b' '; LINE];
    line[..20].copy_from_slice(b"2024-05-01T00:00:00Z");
    line[20..V_AT].copy_from_slice(b" v=");
    line[V_AT..V_AT + 5].copy_from_slice(&digits::<5>(u64::from(version)));
    line[28..I_AT].copy_from_slice(b" line=");
    line[I_AT..I_AT + 10].copy_from_slice(&digits::<10>(index));
    line[PAD_AT..LINE - 1].fill(pad_of(version));
    line[LINE - 1] = b'\n';
    line
}

/// Lines without a version, built once per length, then stamped per version.
struct Template {
    base: Vec<u8>,
}

impl Template {
    fn new(lines: usize) -> Template {
        let mut base = Vec::with_capacity(lines * LINE);
        for i in 0..lines {
            base.extend_from_slice(&make_line(0, i as u64));
        }
        Template { base }
    }

    fn version(&self, version: u32) -> Vec<u8> {
        let mut out = self.base.clone();
        let v = digits::<5>(u64::from(version));
        let pad = pad_of(version);
        for line in out.chunks_exact_mut(LINE) {
            line[V_AT..V_AT + 5].copy_from_slice(&v);
            line[PAD_AT..LINE - 1].fill(pad);
        }
        out
    }
}

/// Every version written so far, by number, with its length.
#[derive(Default)]
struct Versions {
    lengths: Mutex<HashMap<u32, u64>>,
    next: AtomicU32,
}

impl Versions {
    fn create(&self, len: u64) -> u32 {
        let v = self.next.fetch_add(1, Ordering::SeqCst) + 1;
        self.lengths.lock().unwrap().insert(v, len);
        v
    }

    fn len_of(&self, v: u32) -> Option<u64> {
        self.lengths.lock().unwrap().get(&v).copied()
    }
}

/// Checks a body as it arrives, line by line, from a line-aligned offset.
/// Lines are compared with `base` (the version-less lines of the longest
/// template) by slices, which stays fast in a debug build.
struct BodyCheck<'a> {
    base: &'a [u8],
    index: u64,
    pending: Vec<u8>,
    /// Runs of consecutive lines of one version: (version, lines).
    runs: Vec<(u32, u64)>,
    /// The first line that is no version's line at its place.
    bad: Option<String>,
    /// The version of the last whole line checked, its digits and its pad.
    current: Option<(u32, [u8; 5], [u8; LINE - 1 - PAD_AT])>,
}

impl<'a> BodyCheck<'a> {
    fn new(base: &'a [u8], offset: u64) -> BodyCheck<'a> {
        assert_eq!(offset % LINE as u64, 0);
        BodyCheck { base, index: offset / LINE as u64, pending: Vec::new(), runs: Vec::new(), bad: None, current: None }
    }

    fn feed(&mut self, mut data: &[u8]) {
        if !self.pending.is_empty() {
            let take = (LINE - self.pending.len()).min(data.len());
            self.pending.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.pending.len() == LINE {
                let line = std::mem::take(&mut self.pending);
                self.line(&line);
            }
        }
        let whole = data.len() / LINE * LINE;
        let mut at = 0;
        while at < whole {
            let line = &data[at..at + LINE];
            // Fast path (a debug build checks ~20 MiB per answer): the line
            // carries the current run's version digits and pad, and every
            // 64th line is checked whole. Anything else is checked whole.
            match &self.current {
                Some((_, digits, pad))
                    if self.index % 64 != 0
                        && line[V_AT..V_AT + 5] == digits[..]
                        && line[PAD_AT..LINE - 1] == pad[..] =>
                {
                    self.index += 1;
                    if let Some((_, n)) = self.runs.last_mut() {
                        *n += 1;
                    }
                }
                _ => self.line(line),
            }
            at += LINE;
        }
        self.pending.extend_from_slice(&data[whole..]);
    }

    fn version_of(line: &[u8]) -> Option<u32> {
        let d = line.get(V_AT..V_AT + 5)?;
        d.iter().try_fold(0u32, |n, &b| b.is_ascii_digit().then(|| n * 10 + u32::from(b - b'0')))
    }

    /// Whether `line` (whole or the start of one) is version `v`'s line at `index`.
    fn matches(&self, line: &[u8], v: u32, index: u64) -> bool {
        let at = index as usize * LINE;
        let Some(expected) = self.base.get(at..at + LINE) else { return false };
        let n = line.len();
        let part = |r: std::ops::Range<usize>| {
            let r = r.start.min(n)..r.end.min(n);
            line[r.clone()] == expected[r]
        };
        let digits = digits::<5>(u64::from(v));
        let pads = [pad_of(v); LINE];
        part(0..V_AT)
            && line[V_AT.min(n)..(V_AT + 5).min(n)] == digits[..(V_AT + 5).min(n).saturating_sub(V_AT)]
            && part(V_AT + 5..PAD_AT)
            && line[PAD_AT.min(n)..(LINE - 1).min(n)] == pads[..(LINE - 1).min(n).saturating_sub(PAD_AT)]
            && part(LINE - 1..LINE)
    }

    fn line(&mut self, line: &[u8]) {
        let index = self.index;
        self.index += 1;
        match Self::version_of(line).filter(|v| self.matches(line, *v, index)) {
            Some(v) => {
                match self.runs.last_mut() {
                    Some((last, n)) if *last == v => *n += 1,
                    _ => self.runs.push((v, 1)),
                }
                if !matches!(self.current, Some((c, ..)) if c == v) {
                    self.current = Some((v, digits::<5>(u64::from(v)), [pad_of(v); LINE - 1 - PAD_AT]));
                }
            }
            None => {
                if self.bad.is_none() {
                    self.bad = Some(format!("line {index} is no version's: {:?}", String::from_utf8_lossy(line)));
                }
            }
        }
    }

    /// The incomplete last line, if any, must be the start of a version's line.
    fn finish(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let p = std::mem::take(&mut self.pending);
        let v = Self::version_of(&p).unwrap_or(0);
        if !self.matches(&p, v, self.index) && self.bad.is_none() {
            self.bad = Some(format!("partial line {} is no version's: {:?}", self.index, String::from_utf8_lossy(&p)));
        }
    }
}

// ---------------------------------------------------------------------------
// Streaming under faults
// ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// New versions renamed over the file (atomic replacement).
    Rename,
    /// The file rewritten in place: the same length without truncation, or
    /// truncated and written with another length.
    InPlace,
    /// The file shrunk step by step (same inode), then replaced by rename.
    Truncate,
    /// The file deleted, then created again (by rename or by a plain write).
    Delete,
}

/// What the readers saw.
#[derive(Default, Debug)]
struct Tally {
    complete: u64,
    /// Complete bodies that are a state the file had while a write was in
    /// progress: a newer version's first lines, then an older one's.
    complete_mid_write: u64,
    closed_early: u64,
    /// Bodies that ended early and carried bytes the file never had there.
    short_with_foreign_bytes: u64,
    not_found: u64,
    range_not_satisfiable: u64,
    bytes: u64,
    failures: Vec<String>,
}

/// Line counts of the versions' lengths: 20 MiB, 24 MiB, and 20 MiB + 1.5 KiB.
const LENGTHS: [usize; 3] = [327_680, 393_216, 327_704];

struct Stream {
    url: String,
    path: PathBuf,
}

/// Changes `path` according to `fault` until `stop`; returns how many changes.
fn mutate(path: &Path, fault: Fault, versions: &Versions, templates: &[Template], stop: &AtomicBool) -> u64 {
    let mut ops = 0u64;
    let mut turn = 0usize;
    let pause = || thread::sleep(Duration::from_millis(40));
    let new_version = |turn: usize| {
        let t = &templates[turn % templates.len()];
        let v = versions.create(t.base.len() as u64);
        (v, t.version(v))
    };
    while !stop.load(Ordering::Relaxed) {
        turn += 1;
        match fault {
            Fault::Rename => {
                let (_, content) = new_version(turn);
                replace_atomically(path, &content);
                ops += 1;
            }
            Fault::InPlace => {
                let same_length = turn % 2 == 0;
                let current = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
                let t = if same_length {
                    templates.iter().find(|t| t.base.len() as u64 == current).unwrap_or(&templates[0])
                } else {
                    &templates[turn % templates.len()]
                };
                let v = versions.create(t.base.len() as u64);
                let content = t.version(v);
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .truncate(!same_length)
                    .open(path)
                    .expect("open for an in-place rewrite");
                f.write_all(&content).expect("rewrite in place");
                ops += 1;
            }
            Fault::Truncate => {
                let (_, content) = new_version(turn);
                replace_atomically(path, &content);
                ops += 1;
                let len = content.len() as u64;
                for fraction in [4u64, 3, 2, 1, 0] {
                    pause();
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let f = fs::OpenOptions::new().write(true).open(path).expect("open to truncate");
                    f.set_len(len * fraction / 5 + if fraction > 0 { 17 } else { 0 }).expect("truncate");
                    ops += 1;
                }
            }
            Fault::Delete => {
                fs::remove_file(path).expect("delete");
                ops += 1;
                pause();
                let (_, content) = new_version(turn);
                if turn % 2 == 0 {
                    replace_atomically(path, &content);
                } else {
                    fs::write(path, &content).expect("create again by a plain write");
                }
                ops += 1;
            }
        }
        pause();
    }
    ops
}

/// Reads `url` over and over on keep-alive connections until `stop`,
/// checking every answer; every third request asks for a range.
fn read_loop(
    addr: SocketAddr,
    url: &str,
    fault: Fault,
    strict_short: bool,
    (versions, base): (&Versions, &[u8]),
    stop: &AtomicBool,
    tally: &Mutex<Tally>,
) {
    let mut local = Tally::default();
    let mut n = 0u64;
    let fail = |local: &mut Tally, msg: String| {
        if local.failures.len() < 20 {
            local.failures.push(format!("{url}: {msg}"));
        }
    };
    'connections: while !stop.load(Ordering::Relaxed) {
        // (Panics if the server stopped accepting: that fails the test too.)
        let mut conn = RawConn::connect(addr);
        conn.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        conn.stream.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut first = true;
        while !stop.load(Ordering::Relaxed) {
            n += 1;
            let offset = if n % 3 == 0 { (n * 7919 % 300_000) * LINE as u64 } else { 0 };
            let mut headers = vec![("Host", "tessera.test".to_string())];
            if offset > 0 {
                headers.push(("Range", format!("bytes={offset}-")));
            }
            let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
            if conn.send(&request_bytes("GET", url, &headers)).is_err() {
                continue 'connections;
            }
            let head = match conn.read_head() {
                Ok(head) => head,
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    fail(&mut local, format!("no response head within 5 s (a hang): {e}"));
                    continue 'connections;
                }
                Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                    fail(&mut local, format!("unparsable response head after the previous answer: {e}"));
                    continue 'connections;
                }
                Err(e) if first => {
                    fail(&mut local, format!("a new connection got no answer: {e}"));
                    continue 'connections;
                }
                // The server closed a kept-alive connection: open another.
                Err(_) => continue 'connections,
            };
            first = false;
            let cl: u64 = match head.header("content-length").and_then(|v| v.parse().ok()) {
                Some(cl) => cl,
                None => {
                    fail(&mut local, format!("status {} without Content-Length: {:?}", head.status, head.headers));
                    continue 'connections;
                }
            };
            let start = match head.status {
                200 => 0,
                206 => {
                    let cr = head.header("content-range").unwrap_or_default().to_string();
                    match content_range(&cr) {
                        Some((a, b, total)) if a == offset && b + 1 == a + cl && b < total => a,
                        _ => {
                            fail(
                                &mut local,
                                format!("206 with Content-Range {cr:?} for bytes={offset}- and length {cl}"),
                            );
                            continue 'connections;
                        }
                    }
                }
                404 | 416 => {
                    if head.status == 404 {
                        local.not_found += 1;
                    } else {
                        local.range_not_satisfiable += 1;
                    }
                    // Small bodies: read them to stay in step.
                    let mut rest = conn.take_buffered();
                    while (rest.len() as u64) < cl {
                        let mut buf = [0u8; 4096];
                        match conn.stream.read(&mut buf) {
                            Ok(0) | Err(_) => continue 'connections,
                            Ok(k) => rest.extend_from_slice(&buf[..k]),
                        }
                    }
                    if rest.len() as u64 > cl {
                        fail(&mut local, format!("{} bytes after a {} answer", rest.len() as u64 - cl, head.status));
                        continue 'connections;
                    }
                    continue;
                }
                status => {
                    fail(&mut local, format!("status {status}: {:?}", head.headers));
                    continue 'connections;
                }
            };

            // The body, checked as it comes.
            let mut check = BodyCheck::new(base, start);
            let mut got = 0u64;
            let pre = conn.take_buffered();
            if pre.len() as u64 > cl {
                fail(&mut local, format!("{} bytes beyond Content-Length {cl} arrived at once", pre.len() as u64 - cl));
                continue 'connections;
            }
            check.feed(&pre);
            got += pre.len() as u64;
            let mut buf = vec![0u8; 256 * 1024];
            let mut ended = None;
            while got < cl {
                let want = ((cl - got) as usize).min(buf.len());
                match conn.stream.read(&mut buf[..want]) {
                    Ok(0) => {
                        ended = Some("eof");
                        break;
                    }
                    Ok(k) => {
                        check.feed(&buf[..k]);
                        got += k as u64;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                        fail(&mut local, format!("body stalled for 5 s at {got} of {cl} bytes (a hang)"));
                        ended = Some("hang");
                        break;
                    }
                    Err(_) => {
                        ended = Some("reset");
                        break;
                    }
                }
            }
            check.finish();
            local.bytes += got;
            if ended.is_some() {
                // Closed early: the designed outcome when the file changes
                // under a response. What did arrive must still be real lines.
                local.closed_early += 1;
                if let Some(bad) = check.bad.filter(|_| fault != Fault::InPlace) {
                    // Bytes that were never in the file, in a body that ended early.
                    local.short_with_foreign_bytes += 1;
                    if strict_short {
                        fail(&mut local, format!("a body closed early at {got} of {cl} bytes carried {bad}"));
                    } else if local.short_with_foreign_bytes == 1 {
                        eprintln!("{url}: a body closed early at {got} of {cl} bytes carried {bad}");
                    }
                }
                continue 'connections;
            }
            // Complete: the body must be one version (or, while an in-place
            // write is in progress, a state the file really had).
            let runs = &check.runs;
            if let Some(bad) = &check.bad {
                // In place, a line can straddle a page written and one not
                // yet written: the same undetectable case as below. A
                // truncation followed by a rewrite to the same length within
                // one tick of the coarse file clock (a few ms) leaves length
                // and mtime as they were: zeros can then go out unnoticed.
                if matches!(fault, Fault::InPlace | Fault::Truncate) {
                    local.complete_mid_write += 1;
                } else {
                    fail(&mut local, format!("a complete {cl}-byte body (from {start}) has {bad}; runs {runs:?}"));
                }
                continue 'connections;
            }
            match runs.as_slice() {
                [] if cl == 0 => local.complete += 1,
                [(v, _)] => {
                    local.complete += 1;
                    let whole = versions.len_of(*v);
                    if matches!(fault, Fault::Rename) && whole != Some(start + cl) {
                        fail(
                            &mut local,
                            format!(
                                "a complete body from {start} of {cl} bytes is version {v}, whose length is {whole:?}"
                            ),
                        );
                    }
                }
                [(newer, _), (older, _)] if fault == Fault::InPlace && newer > older => {
                    local.complete_mid_write += 1;
                }
                // An in-place rewrite in progress when the response started
                // (one long write() moves mtime once, at its start), or of a
                // log (served as append-only), is not detectable from the
                // descriptor: the body is as long as its head says, and may
                // mix versions. docs/SECURITY.md says so and asks producers
                // to publish by rename, which gives whole versions (tested
                // above). Counted, not failed; so is a truncation written
                // back within one tick of the coarse file clock (see above).
                _ if matches!(fault, Fault::InPlace | Fault::Truncate) => {
                    local.complete_mid_write += 1;
                }
                _ => fail(
                    &mut local,
                    format!(
                        "TORN: a complete {cl}-byte body (from {start}, Content-Length honoured, connection kept) \
                         mixes versions (version, lines): {:?}",
                        &runs[..runs.len().min(6)]
                    ),
                ),
            }
        }
    }
    let mut t = tally.lock().unwrap();
    t.complete += local.complete;
    t.complete_mid_write += local.complete_mid_write;
    t.closed_early += local.closed_early;
    t.short_with_foreign_bytes += local.short_with_foreign_bytes;
    t.not_found += local.not_found;
    t.range_not_satisfiable += local.range_not_satisfiable;
    t.bytes += local.bytes;
    t.failures.extend(local.failures);
}

/// Streams a ~20 MiB log and a ~20 MiB tile to concurrent readers while
/// `fault` happens to both files, for `churn`.
fn stream_under(fault: Fault, extra: &[&str]) {
    let _serial = serial();
    let fx = Fixture::new();
    let templates: Vec<Template> = LENGTHS.iter().map(|&n| Template::new(n)).collect();
    let versions = Versions::default();
    let streams = [
        Stream { url: "/logs/dev1/big.log".into(), path: fx.logs().join("dev1").join("big.log") },
        Stream { url: "/tiles/big/3/2/1.png".into(), path: tile_path(&fx.tiles(), "big", 3, 2, 1) },
    ];
    for s in &streams {
        let v = versions.create(templates[0].base.len() as u64);
        write_file(&s.path, &templates[0].version(v));
    }
    let server = fx.start_ready_with(&fx.state(), extra);
    let churn = Duration::from_secs(5);
    // Zero-copy sends the page as it is when the socket transmits it: a
    // truncation zeroes the rest of its last page, and a body that then ends
    // early can carry those zeros. The buffered path copies at once and must not.
    let strict_short = extra.contains(&"buffered");

    let stop = AtomicBool::new(false);
    let tally = Mutex::new(Tally::default());
    let ops = AtomicU64::new(0);
    let started = Instant::now();
    thread::scope(|scope| {
        for s in &streams {
            let (stop, versions, templates, ops, tally) = (&stop, &versions, &templates, &ops, &tally);
            scope.spawn(move || {
                let n = mutate(&s.path, fault, versions, templates, stop);
                ops.fetch_add(n, Ordering::Relaxed);
            });
            for _ in 0..2 {
                let addr = server.addr;
                let base = templates.iter().map(|t| t.base.as_slice()).max_by_key(|b| b.len()).unwrap();
                scope.spawn(move || read_loop(addr, &s.url, fault, strict_short, (versions, base), stop, tally));
            }
        }
        thread::sleep(churn);
        stop.store(true, Ordering::Relaxed);
    });
    let elapsed = started.elapsed();
    let tally = tally.into_inner().unwrap();
    let ops = ops.load(Ordering::Relaxed);
    eprintln!(
        "{fault:?} {extra:?}: {ops} changes in {elapsed:?}; {} complete bodies, {} complete mid-write states, \
         {} closed early ({} of them carrying bytes never in the file), {} 404, {} 416, {} MiB read; {} failures",
        tally.complete,
        tally.complete_mid_write,
        tally.closed_early,
        tally.short_with_foreign_bytes,
        tally.not_found,
        tally.range_not_satisfiable,
        tally.bytes >> 20,
        tally.failures.len()
    );
    assert!(
        tally.failures.is_empty(),
        "{fault:?} {extra:?}: answers that broke the contract:\n{}",
        tally.failures.join("\n")
    );
    assert!(ops >= 10, "only {ops} changes were made: the test did not exercise anything");
    assert!(tally.complete + tally.closed_early >= 20, "too few answers to mean anything: {tally:?}");

    // Alive, and once the files are still, exactly their last versions.
    assert_eq!(server.get("/healthz").status, 200, "/healthz after the faults");
    for s in &streams {
        let v = versions.create(templates[1].base.len() as u64);
        let content = templates[1].version(v);
        replace_atomically(&s.path, &content);
        let mut last = (0, 0);
        let fresh = poll_until(WATCH_DEADLINE, || {
            let r = server.get(&s.url);
            last = (r.status, r.body.len());
            r.status == 200 && r.body == content
        });
        assert!(fresh, "{}: not serving the final version after the faults (last: status, length {last:?})", s.url);
    }
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn files_replaced_by_rename_while_streaming() {
    stream_under(Fault::Rename, &[]);
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn files_replaced_by_rename_while_streaming_buffered() {
    stream_under(Fault::Rename, &["--delivery", "buffered"]);
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn files_rewritten_in_place_while_streaming() {
    stream_under(Fault::InPlace, &[]);
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn files_rewritten_in_place_while_streaming_buffered() {
    stream_under(Fault::InPlace, &["--delivery", "buffered"]);
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn files_truncated_while_streaming() {
    stream_under(Fault::Truncate, &[]);
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn files_truncated_while_streaming_buffered() {
    stream_under(Fault::Truncate, &["--delivery", "buffered"]);
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn files_deleted_while_streaming() {
    stream_under(Fault::Delete, &[]);
}

// ---------------------------------------------------------------------------
// Directories renamed and removed under the watcher
// ---------------------------------------------------------------------------

fn visible_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        if is_dir && !name.starts_with('.') {
            out.push((name, entry.path()));
        }
    }
    out
}

fn visible_files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_file()) && !name.starts_with('.') {
            out.push(name);
        }
    }
    out
}

/// Tilesets on disk (directories of `{z}/{x}/{y}.png`) with their tile counts.
fn disk_tilesets(root: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for (name, dir) in visible_dirs(root) {
        let mut n = 0;
        for (_, z) in visible_dirs(&dir) {
            for (_, x) in visible_dirs(&z) {
                n += visible_files(&x).iter().filter(|f| f.ends_with(".png")).count() as u64;
            }
        }
        if n > 0 {
            out.insert(name, n);
        }
    }
    out
}

/// `device/file` of every log on disk, sorted.
fn disk_logs(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for (device, dir) in visible_dirs(root) {
        out.extend(visible_files(&dir).into_iter().map(|f| format!("{device}/{f}")));
    }
    out.sort();
    out
}

/// Tilesets of `/tiles` with their tile counts.
fn listed_tilesets(server: &Server) -> BTreeMap<String, u64> {
    let listing = server.get_json("/tiles");
    listing["tilesets"]
        .as_array()
        .unwrap_or_else(|| panic!("/tiles: {listing}"))
        .iter()
        .map(|t| (t["name"].as_str().unwrap_or("?").to_string(), t["tile_count"].as_u64().unwrap_or(u64::MAX)))
        .collect()
}

fn listed_logs(server: &Server) -> Vec<String> {
    log_names(&server.get_json("/logs?limit=1000"))
}

/// Polls until `/tiles` and `/logs` match the disk; returns the last difference.
fn wait_for_listings_to_match(server: &Server, fx: &Fixture, within: Duration) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = String::new();
    let ok = poll_until(within, || {
        let (tiles_disk, tiles_http) = (disk_tilesets(&fx.tiles()), listed_tilesets(server));
        let (logs_disk, logs_http) = (disk_logs(&fx.logs()), listed_logs(server));
        if tiles_disk == tiles_http && logs_disk == logs_http {
            return true;
        }
        last = format!(
            "tiles on disk {tiles_disk:?}, listed {tiles_http:?}; logs on disk {logs_disk:?}, listed {logs_http:?}"
        );
        false
    });
    if ok {
        Ok(started.elapsed())
    } else {
        Err(last)
    }
}

#[test]
fn directories_renamed_and_removed_under_the_watcher() {
    let _serial = serial();
    let fx = Fixture::new();
    let (tiles, logs, root) = (fx.tiles(), fx.logs(), fx.root().to_path_buf());
    write_pyramid(&tiles, "alpha", 2);
    write_pyramid(&tiles, "beta", 1);
    write_pyramid(&tiles, "epsilon", 1);
    for (device, file) in
        [("dev1", "a.log"), ("dev1", "b.log"), ("dev2", "c.log"), ("dev3", "d.log"), ("dev4", "e.log")]
    {
        write_file(&logs.join(device).join(file), format!("2024-05-01T00:00:00Z {device} {file}\n").as_bytes());
    }
    write_pyramid(&root.join("staging"), "delta", 1);
    let server = fx.start_ready();
    wait_for_listings_to_match(&server, &fx, WATCH_DEADLINE).expect("listings at start");

    // Readers hammer the directories being moved: every answer must be a
    // 200, 204 or 404 (never a 5xx, never no answer).
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let answers = AtomicU64::new(0);
    thread::scope(|scope| {
        for target in ["/tiles/alpha/2/1/1.png", "/logs/dev2/c.log", "/logs/dev1/a.log", "/tiles/gamma/2/1/1.png"] {
            let (stop, failures, answers, addr) = (&stop, &failures, &answers, server.addr);
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match http_request(addr, "GET", target, &[]) {
                        Ok(r) if [200, 204, 404].contains(&r.status) => {
                            answers.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!("{target}: {} {}", r.status, r.text())),
                        Err(e) => failures.lock().unwrap().push(format!("{target}: {e}")),
                    }
                }
            });
        }
        thread::sleep(Duration::from_millis(100));
        fs::rename(tiles.join("alpha"), tiles.join("gamma")).expect("rename a tileset while it is served");
        fs::remove_dir_all(logs.join("dev2")).expect("remove a device directory");
        fs::rename(logs.join("dev1"), logs.join("dev9")).expect("rename a device directory");
        fs::rename(tiles.join("beta"), root.join("beta-out")).expect("move a tileset out of the root");
        fs::rename(root.join("staging").join("delta"), tiles.join("delta")).expect("move a tileset into the root");
        fs::rename(logs.join("dev3"), logs.join(".dev3")).expect("hide a device directory");
        fs::rename(tiles.join("epsilon"), tiles.join(".epsilon")).expect("hide a tileset");
        thread::sleep(Duration::from_millis(300));
        stop.store(true, Ordering::Relaxed);
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "answers while directories moved:\n{}", failures.join("\n"));
    assert!(answers.load(Ordering::Relaxed) > 20, "the readers got too few answers");

    let took = wait_for_listings_to_match(&server, &fx, Duration::from_secs(3))
        .unwrap_or_else(|diff| panic!("3 s after the directory moves, the listings do not match the disk: {diff}"));
    eprintln!("listings matched the disk {took:?} after the moves");

    // Changes inside the moved directories must be seen as well: the watcher
    // must now know them by their new names (and watch the one moved in).
    write_file(&tile_path(&tiles, "gamma", 3, 0, 0), &tile_content(3, 0, 0));
    write_file(&tile_path(&tiles, "delta", 2, 1, 1), &tile_content(2, 1, 1));
    write_file(&logs.join("dev9").join("new.log"), b"2024-05-01T00:00:09Z new\n");
    fs::remove_file(logs.join("dev9").join("b.log")).unwrap();
    fs::remove_file(tile_path(&tiles, "gamma", 2, 3, 3)).unwrap();
    let took = wait_for_listings_to_match(&server, &fx, Duration::from_secs(3)).unwrap_or_else(|diff| {
        panic!("3 s after changes inside the renamed and moved-in directories, the listings do not match: {diff}")
    });
    eprintln!("listings matched the disk {took:?} after changes inside the moved directories");

    // And the files are served by their new names only.
    for (url, status) in [
        ("/tiles/gamma/2/1/1.png", 200),
        ("/tiles/gamma/3/0/0.png", 200),
        ("/tiles/alpha/2/1/1.png", 404),
        ("/tiles/delta/2/1/1.png", 200),
        ("/tiles/beta/1/0/0.png", 404),
        ("/tiles/epsilon/1/0/0.png", 404),
        ("/logs/dev9/a.log", 200),
        ("/logs/dev9/new.log", 200),
        ("/logs/dev1/a.log", 404),
        ("/logs/dev2/c.log", 404),
        ("/logs/dev3/d.log", 404),
    ] {
        assert_eq!(server.get(url).status, status, "GET {url} after the moves");
    }
    assert_eq!(server.get("/tiles/gamma/2/1/1.png").body, tile_content(2, 1, 1));
    assert_eq!(server.get("/healthz").status, 200);
}

// ---------------------------------------------------------------------------
// inotify queue overflow
// ---------------------------------------------------------------------------

/// Sends `signal` to the process `pid`.
fn signal(pid: u32, signal: i32) {
    assert_eq!(unsafe { libc::kill(pid as i32, signal) }, 0, "kill({pid}, {signal})");
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn an_inotify_overflow_is_followed_by_a_rescan_that_matches_the_disk() {
    let _serial = serial();
    const XS: u32 = 160;
    const YS: u32 = 251; // y = 0 exists at start; 1..=250 come in the burst: 40,000 files
    let fx = Fixture::new();
    let tiles = fx.tiles();
    write_pyramid(&tiles, "seed", 1);
    // The burst's directories exist (and are watched) before it: events for
    // files created in them are queued, one IN_CREATE, IN_MODIFY and
    // IN_CLOSE_WRITE each, far more than the 16,384 of a default queue.
    for x in 0..XS {
        write_file(&tile_path(&tiles, "burst", 8, x, 0), &tile_bytes(u64::from(x), 64));
    }
    let queue = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events").unwrap_or_default();
    let server = fx.start_ready();
    let pid = server.pid();
    let rescans_before = server.metric("tessera_rescans_total").unwrap_or(0.0);
    assert_eq!(listed_tilesets(&server).get("burst"), Some(&u64::from(XS)));

    // The burst happens while the server is stopped (SIGSTOP), as if its
    // watcher thread could not get a core: the kernel queue fills, whatever
    // the speed of this machine. (Without the stop, a fast watcher thread can
    // keep up with one writer and the overflow would not be certain.)
    let started = Instant::now();
    signal(pid, libc::SIGSTOP);
    let burst = std::panic::catch_unwind(|| {
        let content = tile_bytes(99, 100);
        for x in 0..XS {
            for y in 1..YS {
                fs::write(tile_path(&tiles, "burst", 8, x, y), &content).expect("burst write");
            }
        }
    });
    signal(pid, libc::SIGCONT);
    burst.expect("the burst of creates");
    let created = started.elapsed();
    let total = u64::from(XS * YS);
    eprintln!(
        "{} files created in {created:?} while the server was stopped (max_queued_events {})",
        total - u64::from(XS),
        queue.trim()
    );

    // A rescan is logged and counted, and the catalog then matches the disk exactly.
    let deadline = Duration::from_secs(20);
    let mut last = None;
    let matched = poll_until(deadline, || {
        let listed = listed_tilesets(&server);
        last = Some(listed.clone());
        listed.get("burst") == Some(&total) && listed == disk_tilesets(&tiles)
    });
    let rescans = server.metric("tessera_rescans_total").unwrap_or(0.0) - rescans_before;
    eprintln!("catalog caught up {:?} after the burst; {rescans} rescans", started.elapsed());
    assert!(rescans > 0.0, "the queue overflow was not followed by a rescan (tessera_rescans_total did not move)");
    assert!(
        server.stderr().contains("overflow"),
        "no warning about the overflow in the server's log:\n{}",
        server.stderr()
    );
    assert!(matched, "{deadline:?} after the burst, /tiles is {last:?}, the disk has {total} burst tiles");
    assert_eq!(server.get("/tiles/burst/8/159/250.png").status, 200);

    // After the overflow, the watches are whole: a change in an old and in
    // a new directory of the burst is indexed within the usual deadline.
    write_file(&tile_path(&tiles, "burst", 8, 7, 251), &tile_bytes(1, 100));
    write_file(&tile_path(&tiles, "burst", 8, 200, 3), &tile_bytes(2, 100));
    fs::remove_file(tile_path(&tiles, "burst", 8, 9, 9)).unwrap();
    let mut last = None;
    let caught = poll_until(WATCH_DEADLINE, || {
        let listed = listed_tilesets(&server);
        last = listed.get("burst").copied();
        last == Some(total + 1)
    });
    assert!(
        caught,
        "after the overflow, two creates and a delete were not indexed: burst tile_count {last:?}, expected {}",
        total + 1
    );
    assert_eq!(server.get("/healthz").status, 200);
}

// ---------------------------------------------------------------------------
// Descriptor exhaustion
// ---------------------------------------------------------------------------

/// Starts `tessera serve` over the fixture with RLIMIT_NOFILE set to `nofile`
/// in the child, and `extra` arguments.
fn start_with_nofile(fx: &Fixture, nofile: u64, extra: &[&str], name: &str) -> Server {
    let mut command = Command::new(bin());
    command.args(["serve", "--listen", "127.0.0.1:0"]);
    command.arg("--tiles").arg(fx.tiles()).arg("--logs").arg(fx.logs()).arg("--state").arg(fx.state());
    command.args(extra);
    unsafe {
        command.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: nofile, rlim_max: nofile };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::spawn_command(command, &fx.root().join(format!("{name}.stderr")))
}

fn open_descriptors(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

/// One GET on a connection that stays open; `Ok(status)` or why not.
fn keep_alive_get(conn: &mut RawConn, target: &str) -> Result<u16, String> {
    conn.send(&request_bytes("GET", target, &[("Host", "t")])).map_err(|e| format!("send: {e}"))?;
    conn.read_response(false).map(|r| r.status).map_err(|e| e.to_string())
}

/// A fresh connection and one GET with `Connection: close`: `Ok(status)`,
/// `Ok(0)` if the server closed or refused it without an answer, `Err` if
/// nothing happened within `within` (a hang).
fn fresh_get(addr: SocketAddr, target: &str, within: Duration) -> Result<u16, String> {
    let mut conn = match RawConn::try_connect(addr, within) {
        Ok(conn) => conn,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(0),
        Err(e) => return Err(format!("connect: {e}")),
    };
    let _ = conn.send(&request_bytes("GET", target, &[("Host", "t"), ("Connection", "close")]));
    let raw = match conn.read_to_end(Instant::now() + within) {
        Ok((raw, _)) => raw,
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            return Err(format!("no answer and no close within {within:?} ({e})"));
        }
        // Any other error: closed.
        Err(_) => conn.take_buffered(),
    };
    if raw.is_empty() {
        return Ok(0);
    }
    parse_response(&raw, false).map(|r| r.status).map_err(|e| e.to_string())
}

#[test]
fn descriptor_exhaustion_sheds_new_work_and_recovers() {
    let _serial = serial();
    const NOFILE: u64 = 128;
    let fx = Fixture::new();
    for i in 0..400u32 {
        write_file(&tile_path(&fx.tiles(), "many", 9, i, 7), &tile_bytes(u64::from(i), 6_000));
    }
    write_file(&fx.logs().join("dev1").join("a.log"), b"2024-05-01T00:00:00Z a\n");
    let config = fx.root().join("fd.toml");
    fs::write(&config, "[cache]\nmax_open_files = 32\n").unwrap();
    let server = start_with_nofile(&fx, NOFILE, &["--config", config.to_str().unwrap()], "nofile");
    server.wait_ready();
    let pid = server.pid();
    let limits = fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files") && l.split_whitespace().nth(3) == Some("128")),
        "the server does not run with RLIMIT_NOFILE {NOFILE}:\n{limits}"
    );
    let base = open_descriptors(pid);

    // Open connections, each asking for a file no other asked for, until the
    // server runs out of descriptors (or 200 connections).
    let mut held: Vec<RawConn> = Vec::new();
    let mut next_tile = 0u32;
    let mut statuses = BTreeMap::<String, usize>::new();
    let mut exhausted_at = None;
    for i in 0..200 {
        let mut conn = RawConn::connect(server.addr);
        conn.stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let target = format!("/tiles/many/9/{next_tile}/7.png");
        next_tile += 1;
        let outcome = keep_alive_get(&mut conn, &target);
        *statuses.entry(format!("{outcome:?}")).or_default() += 1;
        match outcome {
            Ok(200) => held.push(conn),
            _ => {
                exhausted_at = Some(i);
                held.push(conn);
                break;
            }
        }
    }
    let peak = open_descriptors(pid);
    eprintln!(
        "{base} descriptors at start; {} connections opened, the first refusal at {exhausted_at:?}; \
         {peak} descriptors open; outcomes {statuses:?}",
        held.len()
    );
    assert!(exhausted_at.is_some(), "200 connections never exhausted {NOFILE} descriptors: the limit did not apply");

    // While exhausted: new files on open connections get an error answer
    // (503) or a close, never a hang; a new connection gets an answer or a
    // close, never a hang.
    let mut on_held = Vec::new();
    for conn in held.iter_mut().take(10) {
        let target = format!("/tiles/many/9/{next_tile}/7.png");
        next_tile += 1;
        on_held.push(keep_alive_get(conn, &target));
    }
    let fresh = fresh_get(server.addr, "/tiles/many/9/399/7.png", Duration::from_secs(3));
    eprintln!("while exhausted: new files on held connections {on_held:?}; a new connection {fresh:?}");
    // Every problem is collected, so that one run tells all of them.
    let mut problems = Vec::new();
    for outcome in &on_held {
        match outcome {
            Ok(200) | Ok(503) => {}
            // The connection was closed by the server: acceptable shedding.
            Err(e) if !e.contains("timed out") && !e.contains("WouldBlock") && !e.contains("Resource temporarily") => {}
            other => problems.push(format!(
                "a request on a held connection while descriptors ran out: {other:?} (expected 200, 503 or a close)"
            )),
        }
    }
    // tessera closes idle keep-alive connections when descriptors run out
    // (as nginx drains its reusable connections), so a new client may even
    // be served; what must not happen is a connection left waiting.
    match &fresh {
        Ok(0) | Ok(503) | Ok(200) => {}
        other => problems.push(format!(
            "a new connection while descriptors ran out: {other:?} (expected an answer or a refused or closed \
             connection within 3 s; a connection left in the listen backlog waits until a descriptor frees)"
        )),
    }
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the server died when descriptors ran out:\n{}",
        server.stderr()
    );
    let accept_warnings = server.stderr().matches("accept failed").count();

    // Once the connections close, everything works again: within 5 s, the
    // time the server takes to see every dropped connection's end and close
    // its side (until then a new connection can still meet the limit).
    drop(held);
    let targets =
        ["/tiles/many/9/398/7.png", "/tiles/many/9/5/7.png", "/tiles", "/logs", "/logs/dev1/a.log", "/healthz"];
    let mut last = Vec::new();
    let recovered = poll_until(Duration::from_secs(5), || {
        last = targets
            .iter()
            .map(|target| match http_request(server.addr, "GET", target, &[]) {
                Ok(r) if r.status == 200 => None,
                Ok(r) => Some(format!("GET {target} after recovery: {} {}", r.status, r.text())),
                Err(e) => Some(format!("GET {target} after recovery: {e}")),
            })
            .collect();
        last.iter().all(Option::is_none)
    });
    if !recovered {
        problems.push(format!(
            "5 s after the connections closed, requests still fail: {:?}",
            last.iter().flatten().collect::<Vec<_>>()
        ));
    }
    eprintln!("{accept_warnings} \"accept failed\" warnings logged while exhausted");
    if server.stderr().contains("panicked") {
        problems.push(format!("a panic in the server:\n{}", server.stderr()));
    }
    assert!(problems.is_empty(), "descriptor exhaustion:\n{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------
// A catalog database that is corrupt, locked or read-only
// ---------------------------------------------------------------------------

/// A world pyramid (zoom 0..=2, 21 tiles) and one log.
fn catalog_fixture() -> Fixture {
    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "world", 2);
    write_file(&fx.logs().join("dev1").join("a.log"), b"2024-05-01T00:00:00Z a\n2024-05-01T00:00:09Z b\n");
    fx
}

/// `tessera index` over the fixture: the database exists and is whole.
fn build_catalog(fx: &Fixture) {
    let args: Vec<OsString> = vec![
        "index".into(),
        "--tiles".into(),
        fx.tiles().into(),
        "--logs".into(),
        fx.logs().into(),
        "--state".into(),
        fx.state().into(),
    ];
    let (status, stdout, stderr) = run_tessera(&args);
    assert!(status.success(), "tessera index failed: {stdout}\n{stderr}");
    assert!(fx.state().join("tessera.db").is_file(), "tessera index wrote no database");
}

fn db(fx: &Fixture) -> PathBuf {
    fx.state().join("tessera.db")
}

/// Starts the server; `Err` with its stderr if it does not come up.
fn try_start(fx: &Fixture, extra: &[&str]) -> Result<Server, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fx.start_ready_with(&fx.state(), extra))).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    })
}

/// What a healthy server over [`catalog_fixture`] answers: tiles and the log
/// served, and listings that match the disk. Returns what is wrong.
fn serving_problems(server: &Server, fx: &Fixture) -> Vec<String> {
    let mut problems = Vec::new();
    for (z, x, y) in [(0, 0, 0), (2, 3, 1), (1, 1, 0)] {
        let url = format!("/tiles/world/{z}/{x}/{y}.png");
        match http_request(server.addr, "GET", &url, &[]) {
            Ok(r) if r.status == 200 && r.body == tile_content(z, x, y) => {}
            Ok(r) => problems.push(format!("GET {url}: {} ({} bytes)", r.status, r.body.len())),
            Err(e) => problems.push(format!("GET {url}: {e}")),
        }
    }
    match http_request(server.addr, "GET", "/logs/dev1/a.log", &[]) {
        Ok(r) if r.status == 200 => {}
        other => problems.push(format!("GET /logs/dev1/a.log: {other:?}")),
    }
    let within = wait_for_listings_to_match(server, fx, WATCH_DEADLINE);
    if let Err(diff) = within {
        problems.push(format!("listings do not match the disk: {diff}"));
    }
    problems
}

/// A warning about the catalog database in the server's log.
fn warned_about_catalog(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.contains("warn") && (l.contains("catalog") || l.contains("database"))
    })
}

#[test]
fn a_corrupt_catalog_is_rebuilt_with_a_warning() {
    let _serial = serial();
    type Corrupt = fn(&Path);
    let variants: Vec<(&str, Corrupt)> = vec![
        ("garbage header", |p| {
            let mut bytes = fs::read(p).unwrap();
            bytes[..100].copy_from_slice(&pseudo_random(1, 100));
            fs::write(p, bytes).unwrap();
        }),
        ("truncated to half", |p| {
            let f = fs::OpenOptions::new().write(true).open(p).unwrap();
            let len = f.metadata().unwrap().len();
            f.set_len(len / 2).unwrap();
        }),
        ("pages scrambled", |p| {
            let mut bytes = fs::read(p).unwrap();
            let n = bytes.len();
            if n > 4096 {
                bytes[4096..].copy_from_slice(&pseudo_random(2, n - 4096));
            }
            bytes[200..4096].copy_from_slice(&pseudo_random(3, 4096 - 200));
            fs::write(p, bytes).unwrap();
        }),
        ("empty file", |p| fs::write(p, b"").unwrap()),
        ("not SQLite at all", |p| fs::write(p, b"this is not a database\n".repeat(300)).unwrap()),
        ("a directory in its place", |p| {
            fs::remove_file(p).unwrap();
            fs::create_dir_all(p.join("sub")).unwrap();
        }),
        ("another schema version", |p| {
            let conn = rusqlite::Connection::open(p).unwrap();
            conn.pragma_update(None, "user_version", 999).unwrap();
        }),
        ("garbage -wal and -shm files", |p| {
            fs::write(format!("{}-wal", p.display()), pseudo_random(4, 50_000)).unwrap();
            fs::write(format!("{}-shm", p.display()), pseudo_random(5, 32_768)).unwrap();
        }),
    ];
    let mut problems = Vec::new();
    for (name, corrupt) in variants {
        let fx = catalog_fixture();
        build_catalog(&fx);
        corrupt(&db(&fx));
        let server = match try_start(&fx, &[]) {
            Ok(server) => server,
            Err(e) => {
                problems.push(format!("[{name}] the server did not start: {e}"));
                continue;
            }
        };
        problems.extend(serving_problems(&server, &fx).into_iter().map(|p| format!("[{name}] {p}")));
        let wal_only = name.starts_with("garbage -wal");
        if !wal_only && !warned_about_catalog(&server.stderr()) {
            problems.push(format!("[{name}] no warning about the catalog database:\n{}", server.stderr()));
        }
        // Rebuilt on disk: the next start over the same tree finds it whole
        // and reads no file again.
        server.stop();
        match try_start(&fx, &[]) {
            Ok(again) => {
                let rereads = again.metric("tessera_reconcile_rereads_total");
                if rereads != Some(0.0) {
                    problems.push(format!(
                        "[{name}] the restart after the rebuild re-read {rereads:?} files: the rebuilt catalog was not kept"
                    ));
                }
                problems.extend(serving_problems(&again, &fx).into_iter().map(|p| format!("[{name}, restart] {p}")));
            }
            Err(e) => problems.push(format!("[{name}] the restart after the rebuild failed: {e}")),
        }
    }
    assert!(problems.is_empty(), "corrupt catalogs:\n{}", problems.join("\n"));
}

/// Changes made while the catalog cannot be written: a new tile, a new
/// tileset, a tile replaced, a tile deleted. Returns the replaced tile's
/// new content.
fn change_tiles(fx: &Fixture) -> Vec<u8> {
    let tiles = fx.tiles();
    write_file(&tile_path(&tiles, "world", 3, 0, 0), &tile_content(3, 0, 0));
    write_file(&tile_path(&tiles, "fresh", 1, 1, 1), &tile_content(1, 1, 1));
    let replaced = tile_bytes(0xABC, 2_345);
    let path = tile_path(&tiles, "world", 2, 0, 0);
    replace_atomically(&path, &replaced);
    fs::remove_file(tile_path(&tiles, "world", 2, 3, 3)).unwrap();
    replaced
}

/// The changes of [`change_tiles`] are served (the disk is the truth, the
/// catalog is not needed for a file) within the watch deadline.
fn changes_served(server: &Server, replaced: &[u8]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut slowest = Duration::ZERO;
    for (url, want) in [
        ("/tiles/world/3/0/0.png", Some(tile_content(3, 0, 0))),
        ("/tiles/fresh/1/1/1.png", Some(tile_content(1, 1, 1))),
        ("/tiles/world/2/0/0.png", Some(replaced.to_vec())),
        ("/tiles/world/2/3/3.png", None),
        ("/tiles/world/1/0/0.png", Some(tile_content(1, 0, 0))),
    ] {
        let mut last = String::new();
        let ok = poll_until(WATCH_DEADLINE, || {
            let t = Instant::now();
            let r = http_request(server.addr, "GET", url, &[]);
            slowest = slowest.max(t.elapsed());
            match (r, &want) {
                (Ok(r), Some(body)) if r.status == 200 && r.body == *body => true,
                (Ok(r), None) if r.status == 404 || r.status == 204 => true,
                (r, _) => {
                    last = format!("{:?}", r.map(|r| (r.status, r.body.len())));
                    false
                }
            }
        });
        if !ok {
            problems.push(format!("{url} while the catalog is locked: last {last}"));
        }
    }
    if slowest > Duration::from_millis(2_500) {
        problems.push(format!("a tile request took {slowest:?} while the catalog was locked"));
    }
    eprintln!("slowest tile request while the catalog was locked: {slowest:?}");
    problems
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn a_locked_catalog_does_not_stop_tiles_and_catches_up_after() {
    let _serial = serial();
    let fx = catalog_fixture();
    let server = fx.start_ready();
    let mut problems = Vec::new();
    problems.extend(serving_problems(&server, &fx));

    // Another process takes the database's write lock and keeps it 7 s,
    // longer than tessera's busy timeout.
    let lock = rusqlite::Connection::open(db(&fx)).expect("open the catalog from the test");
    lock.busy_timeout(Duration::from_secs(5)).unwrap();
    lock.execute_batch("BEGIN EXCLUSIVE").expect("BEGIN EXCLUSIVE on the catalog");
    let locked = Instant::now();
    let errors_before = server.metric("tessera_catalog_errors_total").unwrap_or(0.0);
    let replaced = change_tiles(&fx);
    problems.extend(changes_served(&server, &replaced));
    if let Err(e) = http_request(server.addr, "GET", "/tiles", &[]).map(|r| r.status).and_then(|s| {
        if s == 200 || s == 503 {
            Ok(())
        } else {
            Err(io::Error::other(format!("status {s}")))
        }
    }) {
        problems.push(format!("/tiles while locked: {e}"));
    }
    thread::sleep(Duration::from_secs(7).saturating_sub(locked.elapsed()));
    let errors = server.metric("tessera_catalog_errors_total").unwrap_or(0.0) - errors_before;
    lock.execute_batch("ROLLBACK").expect("release the lock");
    drop(lock);
    eprintln!("{errors} catalog errors while locked");
    if !warned_about_catalog(&server.stderr()) {
        problems.push("no warning about the locked catalog in the log".into());
    }

    // Released: the catalog catches up with what changed meanwhile.
    match wait_for_listings_to_match(&server, &fx, Duration::from_secs(5)) {
        Ok(took) => eprintln!("catalog caught up {took:?} after the lock was released"),
        Err(diff) => problems.push(format!("5 s after the lock was released: {diff}")),
    }
    assert_eq!(server.get("/healthz").status, 200);
    assert!(problems.is_empty(), "locked catalog:\n{}", problems.join("\n"));
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn a_catalog_locked_at_start_does_not_stop_the_server() {
    let _serial = serial();
    let fx = catalog_fixture();
    build_catalog(&fx);
    let lock = rusqlite::Connection::open(db(&fx)).expect("open the catalog from the test");
    lock.execute_batch("BEGIN EXCLUSIVE").expect("BEGIN EXCLUSIVE on the catalog");
    let locked = Instant::now();
    // The lock is released 8 s after it was taken, whatever happens.
    let release = thread::spawn(move || {
        thread::sleep(Duration::from_secs(8));
        let _ = lock.execute_batch("ROLLBACK");
        drop(lock);
    });
    let mut problems = Vec::new();
    // The server must listen at once (files need no catalog) ...
    let server = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fx.start()));
    match &server {
        Ok(server) => {
            eprintln!("listening {:?} after the lock was taken", locked.elapsed());
            let replaced = change_tiles(&fx);
            if locked.elapsed() < Duration::from_secs(7) {
                problems.extend(changes_served(server, &replaced));
            }
        }
        Err(e) => problems.push(format!(
            "the server did not start while another process held the catalog's lock: {}",
            e.downcast_ref::<String>().cloned().unwrap_or_default()
        )),
    }
    release.join().unwrap();
    // ... and once the lock is gone, become ready with a catalog that matches the disk.
    if let Ok(server) = &server {
        let ready = poll_until(Duration::from_secs(8), || {
            http_request(server.addr, "GET", "/readyz", &[]).is_ok_and(|r| r.status == 200)
        });
        if !ready {
            problems.push("not ready 8 s after the lock was released".into());
        }
        if let Err(diff) = wait_for_listings_to_match(server, &fx, Duration::from_secs(5)) {
            problems.push(format!("after the lock was released: {diff}"));
        }
        if !warned_about_catalog(&server.stderr()) {
            problems.push("no warning about the locked catalog in the log".into());
        }
    }
    assert!(problems.is_empty(), "catalog locked at start:\n{}", problems.join("\n"));
}

/// Makes paths immutable (`chattr +i`) and mutable again when dropped, so
/// that the fixture can be removed even if the test fails.
struct Immutable(Vec<PathBuf>);

impl Immutable {
    fn set(paths: &[PathBuf]) -> Option<Immutable> {
        let status = Command::new("chattr").arg("+i").args(paths).status().ok()?;
        status.success().then(|| Immutable(paths.to_vec()))
    }
}

impl Drop for Immutable {
    fn drop(&mut self) {
        let _ = Command::new("chattr").arg("-i").args(&self.0).status();
    }
}

/// A state directory tessera cannot write. Tests run as root, whom `chmod
/// 0555` does not stop (CAP_DAC_OVERRIDE); `chattr +i` (immutable) does, on
/// file systems that support it. Where it cannot be made effective, the
/// case is skipped with a message.
fn read_only_state(fx: &Fixture, with_database: bool) -> Result<(), String> {
    let _serial = serial();
    if with_database {
        build_catalog(fx);
    }
    let mut paths = vec![fx.state()];
    if with_database {
        paths.push(db(fx));
        for extra in ["tessera.db-wal", "tessera.db-shm"] {
            if fx.state().join(extra).exists() {
                paths.push(fx.state().join(extra));
            }
        }
    }
    let Some(_immutable) = Immutable::set(&paths) else {
        skip("chattr +i is not available here, and root ignores chmod 0555");
        return Ok(());
    };
    if fs::write(fx.state().join("probe"), b"x").is_ok() {
        let _ = fs::remove_file(fx.state().join("probe"));
        skip("the state directory is still writable after chattr +i");
        return Ok(());
    }
    let server = try_start(fx, &[]).map_err(|e| format!("the server did not start over a read-only state: {e}"))?;
    let mut problems = serving_problems(&server, fx);
    let replaced = change_tiles(fx);
    problems.extend(changes_served(&server, &replaced));
    if let Err(diff) = wait_for_listings_to_match(&server, fx, Duration::from_secs(3)) {
        problems.push(format!("after changes: {diff}"));
    }
    if !warned_about_catalog(&server.stderr()) {
        problems.push(format!("no warning about the read-only catalog:\n{}", server.stderr()));
    }
    drop(server);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

#[test]
fn a_read_only_catalog_does_not_stop_tiles() {
    let fx = catalog_fixture();
    if let Err(e) = read_only_state(&fx, true) {
        panic!("read-only state directory and database:\n{e}");
    }
}

#[test]
fn a_read_only_state_directory_without_a_catalog_does_not_stop_tiles() {
    let fx = catalog_fixture();
    if let Err(e) = read_only_state(&fx, false) {
        panic!("read-only, empty state directory:\n{e}");
    }
}
