//! Field links on the loopback: clients that read slowly and stall for most
//! of the write timeout get every byte on every delivery path, and logs
//! rewritten in place or truncated by `copytruncate` under a slow reader are
//! cut short, never completed as a body spliced from two versions, nor
//! resumed into one. (`tests/field.rs` does the same through a rate-limited
//! link in a network namespace.) The slow and stalling readers take about
//! 10 s: second tier, `cargo test -- --ignored`.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// The servers' write timeout in these tests: every stall and slow stretch
/// below lasts longer than it in all, but never leaves it without an
/// acknowledged byte.
const WRITE_TIMEOUT_MS: u64 = 1_000;
/// A stall: most of the write timeout without reading a byte.
const STALL: Duration = Duration::from_millis(700);
/// A slow stretch reads this much every tick (10 KB/s).
const SLOW_READ: usize = 1024;
const SLOW_TICK: Duration = Duration::from_millis(100);
/// The reader's receive buffer: a field device's, and small enough that the
/// server's socket fills at once and every wait is the server's.
const RCVBUF: usize = 4096;
/// A large log: past the size from which sendfile drains the socket before
/// its final check.
const LOG_LEN: usize = 1_536 * 1024;
/// A log larger than the socket buffers on both ends (a few MiB on the
/// loopback), so that a path which copies is still reading it when it changes.
const BIG_LOG_LEN: usize = 6 << 20;

/// How a test client reads a stream: slowly within `slow`, and pausing for
/// [`STALL`] once it reaches each offset of `stalls`. Stalls lie apart from
/// each other and from the slow stretches: after a stall the receive window
/// opens again only once a few KiB are free, so a stall needs reading after
/// it before the server hears an acknowledgment.
#[derive(Clone, Default)]
struct Plan {
    slow: Vec<Range<usize>>,
    stalls: Vec<usize>,
}

/// What a paced read got.
struct Got {
    bytes: Vec<u8>,
    /// The stream reached `want` bytes (else it ended before).
    complete: bool,
}

/// Reads from `conn` (after what it already buffered) until `want` bytes,
/// the end of the stream, or `deadline` (a failure), pacing itself by `plan`.
fn read_paced(conn: &mut RawConn, want: usize, plan: &Plan, deadline: Instant) -> Got {
    let mut bytes = conn.take_buffered();
    let start = bytes.len();
    let mut stalls = plan.stalls.iter().copied().filter(|&at| at >= start).peekable();
    let mut buf = vec![0u8; 64 * 1024];
    conn.stream.set_read_timeout(Some(Duration::from_millis(200))).expect("read timeout");
    while bytes.len() < want {
        assert!(Instant::now() < deadline, "no end after {} of {want} bytes by the deadline", bytes.len());
        let pos = bytes.len();
        if stalls.next_if(|&at| pos >= at).is_some() {
            thread::sleep(STALL);
            continue;
        }
        let slow = plan.slow.iter().any(|r| r.contains(&pos));
        // Never read past the next place where the pace changes.
        let boundary = plan
            .slow
            .iter()
            .flat_map(|r| [r.start, r.end])
            .chain(stalls.peek().copied())
            .filter(|&b| b > pos)
            .min()
            .unwrap_or(want);
        let max = (if slow { SLOW_READ } else { buf.len() }).min(boundary - pos).min(want - pos);
        match conn.stream.read(&mut buf[..max]) {
            Ok(0) => return Got { bytes, complete: false },
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return Got { bytes, complete: false },
            Err(e) => panic!("reading after {pos} bytes: {e}"),
        }
        if slow {
            thread::sleep(SLOW_TICK);
        }
    }
    Got { bytes, complete: true }
}

/// Starts a GET on a connection with a small receive buffer and reads its head.
fn start_get(server: &Server, target: &str, headers: &[(&str, &str)]) -> (RawConn, Response) {
    let mut all = vec![("Host", "field.test")];
    all.extend_from_slice(headers);
    let mut conn = RawConn::connect_small(server.addr, RCVBUF);
    conn.send(&request_bytes("GET", target, &all)).expect("send");
    let head = conn.read_head().unwrap_or_else(|e| panic!("GET {target}: {e}\nstderr:\n{}", server.stderr()));
    (conn, head)
}

fn content_length(r: &Response) -> usize {
    r.expect_header("content-length").parse().expect("numeric Content-Length")
}

fn config(fx: &Fixture, name: &str) -> String {
    let path = fx.root().join(name);
    fs::write(&path, format!("[http]\nwrite_timeout_ms = {WRITE_TIMEOUT_MS}\n")).expect("config");
    path.to_str().expect("UTF-8 path").to_string()
}

fn metric(server: &Server, name: &str, labels: &[(&str, &str)]) -> f64 {
    server.metric_with(name, labels).unwrap_or(0.0)
}

/// Telemetry lines numbered from `first`, `len` bytes in all: every line
/// says when it was written, as a rewritten log's lines do.
fn log_lines(first: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 100);
    let mut n = first;
    while out.len() < len {
        out.extend_from_slice(
            format!(
                "{{\"ts\":\"2026-11-20T06:{:02}:{:02}.{:03}Z\",\"seq\":{n},\"v\":{}}}\n",
                (n / 60_000) % 60,
                (n / 1000) % 60,
                n % 1000,
                n * 7 % 1013
            )
            .as_bytes(),
        );
        n += 1;
    }
    out.truncate(len);
    out
}

/// A slow reader with stalls, on one delivery path: the whole log, byte for
/// byte, then the connection still serves.
fn pull_log(server: &Server, target: &str, log: &[u8]) {
    let len = log.len();
    let plan = Plan {
        // On the loopback the server's socket takes about a MiB (its MSS is
        // 64 KiB): the last stretch and stalls fall where the sendfile path
        // waits for the peer's acknowledgments before its final check.
        slow: vec![256 * 1024..304 * 1024, len - 200 * 1024..len - 176 * 1024],
        stalls: vec![512 * 1024, len - 128 * 1024, len - 64 * 1024],
    };
    let (mut conn, head) = start_get(server, target, &[]);
    assert_eq!((head.status, content_length(&head)), (200, len), "GET {target}");
    let got = read_paced(&mut conn, len, &plan, Instant::now() + Duration::from_secs(60));
    assert!(
        got.complete && got.bytes == log,
        "{target}: {} of {len} bytes, {} the file's\nstderr:\n{}",
        got.bytes.len(),
        if log.starts_with(&got.bytes) { "a prefix of" } else { "NOT" },
        server.stderr()
    );
    conn.send(&request_bytes("GET", "/healthz", &[("Host", "field.test")])).expect("send on the same connection");
    assert_eq!(conn.read_response(false).expect("second response").status, 200, "{target}: keep-alive after");
}

/// Small tiles (answered from memory) pipelined to a slow, stalling reader.
fn pull_tiles(server: &Server, tile: &[u8], count: usize) {
    let mut conn = RawConn::connect_small(server.addr, RCVBUF);
    let mut requests = Vec::new();
    for i in 0..count {
        let close = if i + 1 == count { vec![("Connection", "close")] } else { vec![] };
        let mut headers = vec![("Host", "field.test")];
        headers.extend(close);
        requests.extend(request_bytes("GET", "/tiles/slow/0/0/0.png", &headers));
    }
    conn.send(&requests).expect("send the pipelined requests");
    let plan = Plan { slow: vec![64 * 1024..96 * 1024, 360 * 1024..376 * 1024], stalls: vec![200 * 1024, 300 * 1024] };
    let got = read_paced(&mut conn, usize::MAX, &plan, Instant::now() + Duration::from_secs(60));
    assert!(!got.complete);
    let mut rest = got.bytes.as_slice();
    for i in 0..count {
        // Parsed as a head; what follows it is this body, then the next response.
        let r = parse_response(rest, false).unwrap_or_else(|e| panic!("tile response {i} of {count}: {e}"));
        assert_eq!(r.status, 200, "tile response {i}");
        assert!(r.body.starts_with(tile), "tile response {i}: the tile's bytes");
        rest = &rest[rest.len() - r.body.len() + tile.len()..];
    }
    assert!(rest.is_empty(), "{} bytes after the last response", rest.len());
}

/// Readers that take seconds over stretches of a body, at 10 KB/s, and stall
/// for most of the write timeout several times, are not dropped: they keep
/// acknowledging. On the sendfile path (whose last stretch is its wait for
/// the peer's acknowledgments), the buffered path and the memory path.
#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn slow_and_stalling_readers_get_every_byte_on_every_path() {
    let fx = Fixture::new();
    let log = log_lines(0, LOG_LEN);
    write_file(&fx.logs().join("rtu").join("day.log"), &log);
    let tile = tile_bytes(5, 3_000);
    write_file(&tile_path(&fx.tiles(), "slow", 0, 0, 0), &tile);
    let cfg = config(&fx, "links.toml");
    let local = fx.start_ready_with(&fx.root().join("state-local"), &["--config", &cfg]);
    let buffered =
        fx.start_ready_with(&fx.root().join("state-buffered"), &["--config", &cfg, "--delivery", "buffered"]);

    thread::scope(|s| {
        s.spawn(|| pull_log(&local, "/logs/rtu/day.log", &log));
        s.spawn(|| pull_log(&buffered, "/logs/rtu/day.log", &log));
        s.spawn(|| pull_tiles(&local, &tile, 150));
    });

    let (logs, tiles) = (root_label(&fx.logs()), root_label(&fx.tiles()));
    let sent = |server: &Server, path: &str, root: &str| {
        metric(server, "tessera_bytes_sent_total", &[("path", path), ("root", root)])
    };
    assert!(sent(&local, "sendfile", &logs) >= LOG_LEN as f64, "the log went by sendfile");
    assert!(sent(&buffered, "buffered", &logs) >= LOG_LEN as f64, "the log went by the buffered path");
    assert!(sent(&local, "memory", &tiles) >= (150 * tile.len()) as f64, "the tiles went from memory");
    for server in [&local, &buffered] {
        assert_eq!(metric(server, "tessera_write_stalls_total", &[]), 0.0, "no client was dropped as stalled");
    }
}

/// Reads a large log slowly on one path and changes it under the reader
/// with `change`; the body must end short (connection closed) or be the old
/// version whole: never the old length completed with new bytes. Returns
/// what arrived, the response's head, and whether it completed.
fn change_under_reader(
    server: &Server,
    target: &str,
    path: &Path,
    old: &[u8],
    change: impl FnOnce(),
) -> (Got, Response) {
    let (mut conn, head) = start_get(server, target, &[]);
    assert_eq!((head.status, content_length(&head)), (200, old.len()), "GET {target}");
    let first = read_paced(&mut conn, 64 * 1024, &Plan::default(), Instant::now() + Duration::from_secs(10));
    assert!(first.complete, "{target}: the first 64 KiB");
    change();
    let got = read_paced(
        &mut conn,
        old.len() - first.bytes.len(),
        &Plan::default(),
        Instant::now() + Duration::from_secs(20),
    );
    let mut bytes = first.bytes;
    bytes.extend_from_slice(&got.bytes);
    let got = Got { bytes, complete: got.complete };
    assert!(
        !got.complete || got.bytes == old,
        "{target}: a complete body of {} bytes that is not the version its head announced ({} of them differ) after {} changed under it",
        got.bytes.len(),
        got.bytes.iter().zip(old).filter(|(a, b)| a != b).count(),
        path.display()
    );
    (got, head)
}

/// A log overwritten in place (same length, new lines: a re-upload with
/// `rsync --inplace`, a `dd conv=notrunc`) while a slow client downloads it:
/// the connection closes before the end on every path, as for tiles.
#[test]
fn a_log_rewritten_in_place_is_cut_not_mixed() {
    let fx = Fixture::new();
    let cfg = config(&fx, "links.toml");
    let cases: [(&str, &[&str]); 3] =
        [("sendfile", &[]), ("buffered", &["--delivery", "buffered"]), ("hyper", &["--transport", "hyper"])];
    let old = log_lines(0, BIG_LOG_LEN);
    for (name, _) in cases {
        write_file(&fx.logs().join("rtu").join(format!("{name}.log")), &old);
    }
    for (name, extra) in cases {
        let mut args = vec!["--config", cfg.as_str()];
        args.extend_from_slice(extra);
        let server = fx.start_ready_with(&fx.root().join(format!("state-{name}")), &args);
        let path = fx.logs().join("rtu").join(format!("{name}.log"));
        let target = format!("/logs/rtu/{name}.log");
        let new = log_lines(1_000_000, BIG_LOG_LEN);
        let (got, _) = change_under_reader(&server, &target, &path, &old, || {
            let file = OpenOptions::new().write(true).open(&path).expect("open for writing in place");
            file.write_all_at(&new, 0).expect("overwrite in place");
        });
        assert!(!got.complete, "{name}: the body completed although the log was rewritten under it");
        if name != "hyper" {
            assert!(metric(&server, "tessera_changed_while_sent_total", &[]) >= 1.0, "{name}: the cut is counted");
        }
        assert_eq!(server.get(&target).body, new, "{name}: the next download is the new version");
    }
}

/// logrotate's `copytruncate` under a slow client: the log is copied away,
/// truncated, and written again past its old length. The download in flight
/// is cut, not completed from the new lines; a resume with If-Range naming
/// the old version (by ETag or by date) gets the whole new log (200), never
/// a 206 spliced onto the old bytes.
#[test]
fn copytruncate_under_a_slow_reader_is_cut_and_never_resumed_across() {
    let fx = Fixture::new();
    let cfg = config(&fx, "links.toml");
    let path = fx.logs().join("pump").join("flow.log");
    let old = log_lines(0, BIG_LOG_LEN);
    write_file(&path, &old);
    let server = fx.start_ready_with(&fx.state(), &["--config", &cfg]);
    let target = "/logs/pump/flow.log";
    let new = log_lines(5_000_000, BIG_LOG_LEN + 300 * 1024);
    let (got, head) = change_under_reader(&server, target, &path, &old, || {
        fs::copy(&path, path.with_file_name("flow.log.1")).expect("copy");
        OpenOptions::new().write(true).open(&path).and_then(|f| f.set_len(0)).expect("truncate");
        append_file(&path, &new);
    });
    // What arrived may end in new lines: the client knows it is incomplete
    // (shorter than its Content-Length) and resumes by validator.
    assert!(!got.complete, "the download in flight completed across the copytruncate");

    let resume = format!("bytes={}-", got.bytes.len());
    for validator in [head.expect_header("etag"), head.expect_header("last-modified")] {
        let r = server.request("GET", target, &[("Range", &resume), ("If-Range", validator)]);
        assert_eq!(r.status, 200, "If-Range: {validator} after copytruncate gets the whole new log");
        assert_eq!(r.body, new, "If-Range: {validator}: the body is the new log");
    }
}

/// A date in If-Range cannot tell apart two versions written within one
/// second (here: rewritten, and its mtime kept in the same second, as
/// `rsync -t` or a fast writer leaves it), so it never allows a range; the
/// strong ETag does.
#[test]
fn a_date_in_if_range_never_resumes_into_another_version() {
    let fx = Fixture::new();
    let path = fx.logs().join("meter").join("kwh.log");
    let old = log_lines(0, 50_000);
    write_file(&path, &old);
    let server = fx.start_ready();
    let target = "/logs/meter/kwh.log";
    let first = server.get(target);
    assert_eq!(first.status, 200);
    let date = first.expect_header("last-modified").to_string();
    let was = fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");

    let new = log_lines(9_000_000, 50_000);
    fs::write(&path, &new).expect("rewrite");
    // Another instant within the same second as the first version.
    let nanos = was.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970").subsec_nanos();
    let same_second = if nanos > 0 { was - Duration::from_nanos(1) } else { was + Duration::from_nanos(1) };
    File::options().write(true).open(&path).and_then(|f| f.set_modified(same_second)).expect("set mtime");
    assert!(poll_until(WATCH_DEADLINE, || server.get(target).body == new), "the rewritten log is served");
    let now = server.get(target);
    assert_eq!(now.expect_header("last-modified"), date, "both versions have the same Last-Modified");

    let r = server.request("GET", target, &[("Range", "bytes=100-"), ("If-Range", &date)]);
    assert_eq!((r.status, r.body == new), (200, true), "If-Range by date gets the whole file");
    let etag = now.expect_header("etag");
    let r = server.request("GET", target, &[("Range", "bytes=100-"), ("If-Range", etag)]);
    assert_eq!((r.status, r.body.as_slice()), (206, &new[100..]), "If-Range by the current ETag resumes");
}
