//! Large files: which path their bytes take (memory, sendfile, buffered), what
//! happens when a file shrinks while it is being sent, and offsets past 4 GiB
//! (a 5 GiB sparse file, read whole: second tier, `cargo test -- --ignored`).

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use common::*;

const HOST: &str = "tessera.test";

fn bytes_sent(server: &Server, path: &str, root: &str) -> f64 {
    server.metric_with("tessera_bytes_sent_total", &[("path", path), ("root", root)]).unwrap_or(0.0)
}

/// Sends a GET of `target` with `headers` on a new connection and reads the head.
fn start_get(server: &Server, target: &str, headers: &[(&str, &str)]) -> (RawConn, Response) {
    let mut all = vec![("Host", HOST)];
    all.extend_from_slice(headers);
    let mut conn = RawConn::connect(server.addr);
    conn.send(&request_bytes("GET", target, &all)).unwrap_or_else(|e| panic!("GET {target}: send: {e}"));
    let head = conn.read_head().unwrap_or_else(|e| panic!("GET {target}: {e}\nstderr:\n{}", server.stderr()));
    (conn, head)
}

fn content_length(r: &Response) -> u64 {
    let v = r.expect_header("content-length");
    v.parse().unwrap_or_else(|_| panic!("Content-Length {v:?} is not a number"))
}

// ---------------------------------------------------------------------------
// A file that shrinks while it is being sent
// ---------------------------------------------------------------------------

const BIG: u64 = 200_000_000;
const KEEP: u64 = 1 << 20;

/// One run: a 200 MB (sparse) log, read slowly for about 1 MiB, cut to 1 MiB, then
/// drained. Returns (body bytes received, time from the truncation to the end of the
/// stream, how it ended).
fn truncate_mid_send(extra: &[&str], path_label: &str) -> (u64, Duration, Ending) {
    let fx = Fixture::new();
    let file = fx.logs().join("meter").join("huge.log");
    let start = pseudo_random(99, KEEP as usize);
    write_file(&file, &start);
    File::options().write(true).open(&file).and_then(|f| f.set_len(BIG)).expect("extend to 200 MB");
    let server = fx.start_ready_with(&fx.state(), extra);
    let logs_root = root_label(&fx.logs());

    // Keep-alive, so that a close can only come from the server giving up on the body.
    let (mut conn, head) = start_get(&server, "/logs/meter/huge.log", &[]);
    assert_eq!(head.status, 200, "GET the 200 MB log: {:?}", head.headers);
    assert_eq!(content_length(&head), BIG, "Content-Length of the 200 MB log");

    // About 1 MiB of body, slowly, checking that it is the file's first bytes.
    let mut body = conn.take_buffered();
    let mut buf = vec![0u8; 64 * 1024];
    while (body.len() as u64) < KEEP {
        let n = conn.stream.read(&mut buf).unwrap_or_else(|e| panic!("{extra:?}: reading the first MiB: {e}"));
        assert!(n > 0, "{extra:?}: the connection ended after {} body bytes, before the truncation", body.len());
        body.extend_from_slice(&buf[..n]);
        thread::sleep(Duration::from_millis(2));
    }
    let checked = body.len().min(KEEP as usize);
    assert!(body[..checked] == start[..checked], "{extra:?}: the first body bytes are not the file's");
    let mut received = body.len() as u64;

    OpenOptions::new().write(true).open(&file).and_then(|f| f.set_len(KEEP)).expect("truncate to 1 MiB");
    let truncated = Instant::now();

    // Drain: what was in flight, then the end of the stream, all within a few seconds.
    let give_up = truncated + Duration::from_secs(5);
    let mut big = vec![0u8; 1 << 20];
    conn.stream.set_read_timeout(Some(Duration::from_millis(100))).expect("read timeout");
    let ending = loop {
        match conn.stream.read(&mut big) {
            Ok(0) => break Ending::Eof,
            Ok(n) => received += n as u64,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break Ending::Reset,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) => panic!("{extra:?}: draining after the truncation: {e}"),
        }
        assert!(
            Instant::now() < give_up,
            "{extra:?}: the connection is still open 5 s after the file was cut to 1 MiB \
             ({received} of {BIG} body bytes received)\nstderr:\n{}",
            server.stderr()
        );
    };
    let took = truncated.elapsed();
    assert!(received < BIG, "{extra:?}: {received} body bytes for a file cut to {KEEP}: padded?");
    assert!(took < Duration::from_secs(1), "{extra:?}: the connection ended {took:?} after the truncation (limit 1 s)");
    // The path under test really carried the body.
    let sent = bytes_sent(&server, path_label, &logs_root);
    assert!(sent >= KEEP as f64, "{extra:?}: only {sent} bytes went by path {path_label:?}");
    // And the server is fine afterwards.
    assert_eq!(server.get("/healthz").status, 200, "{extra:?}: /healthz after the truncation");
    (received, took, ending)
}

#[test]
fn truncated_while_sending_closes_fast() {
    for (extra, path) in [
        (&["--delivery", "sendfile"][..], "sendfile"),
        (&["--delivery", "buffered"][..], "buffered"),
        (&["--transport", "hyper"][..], "buffered"),
    ] {
        let (received, took, ending) = truncate_mid_send(extra, path);
        eprintln!("{extra:?}: {received} body bytes, {ending:?} {took:?} after the truncation");
    }
}

// ---------------------------------------------------------------------------
// Which path the bytes take
// ---------------------------------------------------------------------------

#[test]
fn local_root_uses_sendfile_and_buffered_root_never_does() {
    let fx = Fixture::new();
    let log = pseudo_random(5, 5 * 1024 * 1024 + 17);
    write_file(&fx.logs().join("meter").join("five.bin"), &log);
    let tile = tile_bytes(6, 3_000); // under the 4 KiB memory threshold
    write_file(&tile_path(&fx.tiles(), "grid", 0, 0, 0), &tile);
    let (logs_root, tiles_root) = (root_label(&fx.logs()), root_label(&fx.tiles()));
    let log_len = log.len() as f64;
    let tile_len = tile.len() as f64;

    for (name, extra, path, other) in [
        ("auto", &[][..], "sendfile", "buffered"),
        ("buffered", &["--delivery", "buffered"][..], "buffered", "sendfile"),
    ] {
        let server = fx.start_ready_with(&fx.root().join(format!("state-{name}")), extra);
        let r = server.get("/logs/meter/five.bin");
        assert_eq!(r.status, 200, "{name}: GET the 5 MiB log");
        assert!(r.body == log, "{name}: the 5 MiB log came back different ({} bytes)", r.body.len());
        for _ in 0..2 {
            let r = server.get("/tiles/grid/0/0/0.png");
            assert_eq!(r.status, 200, "{name}: GET the tile");
            assert!(r.body == tile, "{name}: the tile came back different");
        }
        let text = server.metrics_text();
        let m = |path: &str, root: &str| {
            metric_value(&text, "tessera_bytes_sent_total", &[("path", path), ("root", root)]).unwrap_or(0.0)
        };
        let report = format!(
            "logs root: sendfile {} buffered {} memory {}; tiles root: sendfile {} buffered {} memory {}",
            m("sendfile", &logs_root),
            m("buffered", &logs_root),
            m("memory", &logs_root),
            m("sendfile", &tiles_root),
            m("buffered", &tiles_root),
            m("memory", &tiles_root)
        );
        eprintln!("{name}: {report}");
        assert_eq!(m(path, &logs_root), log_len, "{name}: the 5 MiB log must go by {path}: {report}");
        assert_eq!(m(other, &logs_root), 0.0, "{name}: no byte of the log may go by {other}: {report}");
        assert_eq!(m("memory", &logs_root), 0.0, "{name}: a 5 MiB log is not kept in memory: {report}");
        assert_eq!(m("memory", &tiles_root), 2.0 * tile_len, "{name}: the tile twice from memory: {report}");
        assert_eq!(
            m("sendfile", &tiles_root) + m("buffered", &tiles_root),
            0.0,
            "{name}: a small tile never goes by sendfile or buffered: {report}"
        );
        let fallbacks = metric_value(&text, "tessera_sendfile_fallbacks_total", &[("root", &logs_root)]);
        assert_eq!(fallbacks.unwrap_or(0.0), 0.0, "{name}: no sendfile fallback on a local disk");
    }
}

// ---------------------------------------------------------------------------
// Past 4 GiB
// ---------------------------------------------------------------------------

const GIB: u64 = 1 << 30;
const HUGE: u64 = 5 * GIB;
/// Bound of each whole transfer.
const TRANSFER_DEADLINE: Duration = Duration::from_secs(120);

/// Known bytes at known offsets of the sparse file, with zeros around them so that
/// an answer shifted by a few bytes cannot pass.
fn regions() -> Vec<(u64, Vec<u8>)> {
    let z = [0u8; 16];
    let mark = |s: &[u8], before: bool, after: bool| {
        let mut v = Vec::new();
        if before {
            v.extend_from_slice(&z);
        }
        v.extend_from_slice(s);
        if after {
            v.extend_from_slice(&z);
        }
        v
    };
    vec![
        (0, mark(b"TESSERA-MARK-000", false, true)),
        (2 * GIB - 16, mark(b"TESSERA-MARK-2GB", true, true)),
        (4 * GIB - 16, mark(b"TESSERA-MARK-4GB", true, true)),
        (HUGE - 32, mark(b"TESSERA-MARK-END", true, false)),
    ]
}

fn make_huge(path: &Path) {
    fs::create_dir_all(path.parent().expect("parent")).expect("create device dir");
    let f = File::create(path).expect("create the 5 GiB file");
    f.set_len(HUGE).expect("make the file 5 GiB (sparse)");
    f.write_at(b"TESSERA-MARK-000", 0).expect("mark 0");
    f.write_at(b"TESSERA-MARK-2GB", 2 * GIB).expect("mark 2 GiB");
    f.write_at(b"TESSERA-MARK-4GB", 4 * GIB).expect("mark 4 GiB");
    f.write_at(b"TESSERA-MARK-END", HUGE - 16).expect("mark end");
    assert_eq!(f.metadata().expect("stat").len(), HUGE);
}

/// Reads exactly `len` body bytes that start at file offset `first`, checking the
/// regions they cover; then expects the end of the stream. Returns the bytes read.
fn stream_body(conn: &mut RawConn, what: &str, first: u64, len: u64, deadline: Instant) -> u64 {
    let regions: Vec<(u64, Vec<u8>)> =
        regions().into_iter().filter(|(at, r)| *at >= first && at + r.len() as u64 <= first + len).collect();
    let mut seen: Vec<Vec<u8>> = regions.iter().map(|(_, r)| vec![0xAA; r.len()]).collect();
    let mut filled: Vec<usize> = vec![0; regions.len()];
    let mut check = |pos: u64, chunk: &[u8]| {
        for (i, (at, expect)) in regions.iter().enumerate() {
            let (lo, hi) = (pos.max(*at), (pos + chunk.len() as u64).min(at + expect.len() as u64));
            if lo < hi {
                let src = &chunk[(lo - pos) as usize..(hi - pos) as usize];
                seen[i][(lo - at) as usize..(hi - at) as usize].copy_from_slice(src);
                filled[i] += src.len();
            }
        }
    };
    let mut pos = first;
    let end = first + len;
    let pending = conn.take_buffered();
    let take = pending.len().min(len as usize);
    check(pos, &pending[..take]);
    pos += take as u64;
    let mut buf = vec![0u8; 1 << 20];
    while pos < end {
        assert!(Instant::now() < deadline, "{what}: {} of {len} bytes by the deadline", pos - first);
        let want = ((end - pos) as usize).min(buf.len());
        let n = conn.stream.read(&mut buf[..want]).unwrap_or_else(|e| panic!("{what}: at offset {pos}: {e}"));
        assert!(n > 0, "{what}: the connection ended at offset {pos}, {} of {len} bytes", pos - first);
        check(pos, &buf[..n]);
        pos += n as u64;
    }
    for (i, (at, expect)) in regions.iter().enumerate() {
        assert_eq!(filled[i], expect.len(), "{what}: region at {at} not fully received");
        assert!(
            seen[i] == *expect,
            "{what}: bytes at offset {at}: got {:?}, expected {:?}",
            String::from_utf8_lossy(&seen[i]),
            String::from_utf8_lossy(expect)
        );
    }
    // Connection: close was asked for: nothing more, then the end.
    let (rest, _) = conn.read_to_end(deadline).unwrap_or_else(|e| panic!("{what}: after the body: {e}"));
    assert!(rest.is_empty(), "{what}: {} bytes beyond Content-Length", rest.len());
    pos - first
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn five_gigabyte_sparse_file_whole_and_tail() {
    let fx = Fixture::new();
    make_huge(&fx.logs().join("meter").join("huge.bin"));
    let url = "/logs/meter/huge.bin";
    let logs_root = root_label(&fx.logs());
    let server = fx.start_ready();

    // The whole file over one connection.
    let started = Instant::now();
    let (mut conn, head) = start_get(&server, url, &[("Connection", "close")]);
    assert_eq!(head.status, 200, "GET the 5 GiB file: {:?}", head.headers);
    assert_eq!(content_length(&head), HUGE, "Content-Length of the 5 GiB file");
    let got = stream_body(&mut conn, "whole 5 GiB", 0, HUGE, started + TRANSFER_DEADLINE);
    assert_eq!(got, HUGE);
    let whole = started.elapsed();

    // The last GiB, from exactly 4 GiB.
    let tail = |server: &Server, what: &str| {
        let started = Instant::now();
        let (mut conn, head) = start_get(server, url, &[("Range", "bytes=4294967296-"), ("Connection", "close")]);
        assert_eq!(head.status, 206, "{what}: Range from 4 GiB: {:?}", head.headers);
        assert_eq!(
            head.expect_header("content-range"),
            "bytes 4294967296-5368709119/5368709120",
            "{what}: Content-Range"
        );
        assert_eq!(content_length(&head), GIB, "{what}: Content-Length of the last GiB");
        let got = stream_body(&mut conn, what, 4 * GIB, GIB, started + TRANSFER_DEADLINE);
        assert_eq!(got, GIB);
        started.elapsed()
    };
    let tail_sendfile = tail(&server, "tail by sendfile");
    let sent = bytes_sent(&server, "sendfile", &logs_root);
    assert!(sent >= (HUGE + GIB) as f64, "6 GiB should have gone by sendfile, metrics say {sent}");

    // The same tail by the buffered path (pread at offsets past 4 GiB).
    let buffered = fx.start_ready_with(&fx.root().join("state-buffered"), &["--delivery", "buffered"]);
    let tail_buffered = tail(&buffered, "tail buffered");
    let copied = bytes_sent(&buffered, "buffered", &logs_root);
    assert!(copied >= GIB as f64, "1 GiB should have gone by the buffered path, metrics say {copied}");
    eprintln!(
        "5 GiB whole by sendfile in {whole:?}; last GiB by sendfile in {tail_sendfile:?}, buffered in {tail_buffered:?}"
    );
}
