//! Serving files: bytes, validator headers, HEAD, conditional and range requests, metrics.

mod common;

use std::fs;
use std::path::PathBuf;

use common::*;

/// Headers that HEAD must repeat exactly as GET sends them.
const HEAD_MIRRORED: [&str; 7] = [
    "content-length",
    "etag",
    "last-modified",
    "content-type",
    "cache-control",
    "accept-ranges",
    "access-control-allow-origin",
];

struct Served {
    /// Request target.
    url: String,
    /// File on disk.
    path: PathBuf,
    /// Its content.
    bytes: Vec<u8>,
}

/// A world pyramid (zoom 0..=2) with one larger tile, and three logs: 100 KB and
/// 6 MiB of pseudo-random bytes (past any per-call sendfile cap) and a small text log.
fn setup(fx: &Fixture) -> (Served, Vec<Served>) {
    write_pyramid(&fx.tiles(), "world", 2);
    let tile_file = tile_path(&fx.tiles(), "world", 2, 1, 2);
    let tile = tile_bytes(42, 24_576);
    write_file(&tile_file, &tile);

    let mut logs = Vec::new();
    for (device, file, bytes) in [
        ("d1", "dump.bin", pseudo_random(7, 100 * 1024)),
        ("d1", "big.bin", pseudo_random(8, 6 * 1024 * 1024 + 123)),
        ("d2", "events.log", b"2024-05-01T00:00:00Z start\n2024-05-01T00:00:05Z stop\n".to_vec()),
    ] {
        let path = fx.logs().join(device).join(file);
        write_file(&path, &bytes);
        logs.push(Served { url: format!("/logs/{device}/{file}"), path, bytes });
    }
    (Served { url: "/tiles/world/2/1/2.png".into(), path: tile_file, bytes: tile }, logs)
}

fn assert_strong_etag(etag: &str, what: &str) {
    assert!(!etag.starts_with("W/"), "{what}: ETag {etag:?} must be strong");
    assert!(
        etag.len() > 2 && etag.starts_with('"') && etag.ends_with('"'),
        "{what}: ETag {etag:?} must be a quoted string"
    );
}

/// Everything a file answer must carry, for tiles and logs alike.
fn assert_file_answer(r: &Response, f: &Served) {
    let what = &f.url;
    assert_eq!(r.status, 200, "GET {what}: {}", r.text());
    assert_eq!(r.body.len(), f.bytes.len(), "GET {what}: body length differs from the file's");
    assert!(r.body == f.bytes, "GET {what}: body differs from the file");
    assert_eq!(r.expect_header("content-length"), f.bytes.len().to_string(), "GET {what}: Content-Length");
    assert_strong_etag(r.expect_header("etag"), what);
    let mtime = fs::metadata(&f.path).unwrap().modified().unwrap();
    assert_eq!(
        r.expect_header("last-modified"),
        http_date(mtime),
        "GET {what}: Last-Modified must be the file's mtime as an IMF-fixdate"
    );
    assert_eq!(r.expect_header("accept-ranges"), "bytes", "GET {what}: Accept-Ranges");
    assert_eq!(r.expect_header("access-control-allow-origin"), "*", "GET {what}: CORS");
}

#[test]
fn tile_and_log_are_served_byte_for_byte() {
    let fx = Fixture::new();
    let (tile, logs) = setup(&fx);
    let server = fx.start_ready();

    let r = server.get(&tile.url);
    assert_file_answer(&r, &tile);
    assert_eq!(r.expect_header("content-type"), "image/png", "tile Content-Type");
    assert!(!r.expect_header("cache-control").trim().is_empty(), "tile Cache-Control must be explicit");

    // Another tile of the pyramid, small: served from whatever path small files take.
    let small = server.get("/tiles/world/0/0/0.png");
    assert_eq!(small.status, 200);
    assert!(small.body == tile_content(0, 0, 0), "/tiles/world/0/0/0.png body differs from the file");

    for log in &logs {
        let r = server.get(&log.url);
        assert_file_answer(&r, log);
    }

    // A second fetch (now possibly from a cache) is still byte for byte.
    assert_file_answer(&server.get(&tile.url), &tile);
    assert_file_answer(&server.get(&logs[0].url), &logs[0]);

    // Distinct files do not share a validator.
    let etags: Vec<String> =
        std::iter::once(&tile).chain(&logs).map(|f| server.get(&f.url).expect_header("etag").to_string()).collect();
    for (i, a) in etags.iter().enumerate() {
        for b in &etags[i + 1..] {
            assert_ne!(a, b, "two different files got the same ETag");
        }
    }
}

#[test]
fn head_matches_get_headers() {
    let fx = Fixture::new();
    let (tile, logs) = setup(&fx);
    let server = fx.start_ready();

    for f in std::iter::once(&tile).chain(&logs) {
        let get = server.get(&f.url);
        let head = server.head(&f.url);
        assert_eq!(get.status, 200, "GET {}", f.url);
        assert_eq!(head.status, 200, "HEAD {}", f.url);
        assert!(head.body.is_empty(), "HEAD {}: must have no body, got {} bytes", f.url, head.body.len());
        assert_eq!(get.expect_header("content-length"), f.bytes.len().to_string());
        get.expect_header("etag");
        get.expect_header("last-modified");
        get.expect_header("content-type");
        for name in HEAD_MIRRORED {
            assert_eq!(head.header(name), get.header(name), "HEAD {}: header {name} differs from GET's", f.url);
        }
    }
}

fn check_conditionals(server: &Server, f: &Served) {
    let len = f.bytes.len();
    let base = server.get(&f.url);
    assert_eq!(base.status, 200, "GET {}", f.url);
    let etag = base.expect_header("etag").to_string();
    let last_modified = base.expect_header("last-modified").to_string();

    for method in ["GET", "HEAD"] {
        let what = format!("{method} {}", f.url);

        // If-None-Match with the current ETag.
        let r = server.request(method, &f.url, &[("If-None-Match", &etag)]);
        assert_eq!(r.status, 304, "{what} If-None-Match: current ETag");
        assert!(r.body.is_empty(), "{what}: 304 must have no body");
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{what}: 304 ETag");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}: CORS on 304");

        // If-None-Match with some other ETag: full answer.
        let r = server.request(method, &f.url, &[("If-None-Match", "\"not-this-one\"")]);
        assert_eq!(r.status, 200, "{what} If-None-Match: other ETag");

        // If-Modified-Since with the Last-Modified value.
        let r = server.request(method, &f.url, &[("If-Modified-Since", &last_modified)]);
        assert_eq!(r.status, 304, "{what} If-Modified-Since: Last-Modified");
        assert!(r.body.is_empty(), "{what}: 304 must have no body");
        assert_eq!(r.header("etag"), Some(etag.as_str()), "{what}: 304 ETag");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}: CORS on 304");

        // If-Modified-Since long before the file: full answer.
        let r = server.request(method, &f.url, &[("If-Modified-Since", "Sat, 01 Jan 2000 00:00:00 GMT")]);
        assert_eq!(r.status, 200, "{what} If-Modified-Since: year 2000");

        // One satisfiable range.
        let r = server.request(method, &f.url, &[("Range", "bytes=0-9")]);
        assert_eq!(r.status, 206, "{what} Range: bytes=0-9");
        assert_eq!(r.header("content-range"), Some(format!("bytes 0-9/{len}").as_str()), "{what}: Content-Range");
        assert_eq!(r.header("content-length"), Some("10"), "{what}: 206 length");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}: CORS on 206");
        if method == "GET" {
            assert_eq!(r.body, &f.bytes[..10], "{what}: 206 body");
        } else {
            assert!(r.body.is_empty(), "{what}: HEAD 206 must have no body");
        }

        // A range from the middle to the end.
        if method == "GET" {
            let from = len / 2;
            let r = server.request(method, &f.url, &[("Range", &format!("bytes={from}-"))]);
            assert_eq!(r.status, 206, "{what} Range: bytes={from}-");
            assert_eq!(r.header("content-range"), Some(format!("bytes {from}-{}/{len}", len - 1).as_str()));
            assert!(r.body == f.bytes[from..], "{what}: open-ended 206 body");
        }

        // Unsatisfiable range.
        let r = server.request(method, &f.url, &[("Range", &format!("bytes={len}-"))]);
        assert_eq!(r.status, 416, "{what} Range: bytes={len}-");
        assert_eq!(r.header("content-range"), Some(format!("bytes */{len}").as_str()), "{what}: 416 Content-Range");
        assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}: CORS on 416");
    }
}

#[test]
fn conditional_and_range_requests() {
    let fx = Fixture::new();
    let (tile, logs) = setup(&fx);
    let server = fx.start_ready();

    check_conditionals(&server, &tile);
    check_conditionals(&server, &logs[0]);
    check_conditionals(&server, &logs[1]);

    for missing in [
        "/tiles/world/9/0/0.png",
        "/tiles/world/2/1/9.png",
        "/tiles/nope/0/0/0.png",
        "/logs/d1/nope.bin",
        "/logs/nobody/dump.bin",
    ] {
        for method in ["GET", "HEAD"] {
            let r = server.request(method, missing, &[]);
            assert_eq!(r.status, 404, "{method} {missing}");
            assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{method} {missing}: CORS on 404");
        }
    }
}

#[test]
fn metrics_count_requests_and_cache_hits() {
    let fx = Fixture::new();
    let (tile, _logs) = setup(&fx);
    let server = fx.start_ready();

    let r = server.get("/metrics");
    assert_eq!(r.status, 200);
    let content_type = r.expect_header("content-type");
    assert!(content_type.starts_with("text/plain"), "/metrics Content-Type {content_type:?} is not Prometheus text");
    let text = r.text();
    assert!(
        text.lines().any(|l| l.starts_with("# TYPE tessera_")),
        "/metrics has no `# TYPE tessera_...` line:\n{text}"
    );

    let requests_ok = |t: &str| metric_value(t, "tessera_requests_total", &[("status", "200")]).unwrap_or(0.0);
    let requests_404 = |t: &str| metric_value(t, "tessera_requests_total", &[("status", "404")]).unwrap_or(0.0);
    let hits = |t: &str| metric_value(t, "tessera_cache_hits_total", &[]).unwrap_or(0.0);
    let misses = |t: &str| metric_value(t, "tessera_cache_misses_total", &[]).unwrap_or(0.0);

    let t0 = server.metrics_text();

    // First fetch of a tile: a cache miss.
    assert_eq!(server.get(&tile.url).status, 200);
    let mut t1 = String::new();
    let ok = poll_until(WATCH_DEADLINE, || {
        t1 = server.metrics_text();
        misses(&t1) >= misses(&t0) + 1.0
    });
    assert!(ok, "tessera_cache_misses_total did not increase after a first fetch\nbefore:\n{t0}\nafter:\n{t1}");

    // Second fetch of the same tile: a cache hit.
    assert_eq!(server.get(&tile.url).status, 200);
    let mut t2 = String::new();
    let ok = poll_until(WATCH_DEADLINE, || {
        t2 = server.metrics_text();
        hits(&t2) >= hits(&t1) + 1.0
    });
    assert!(ok, "tessera_cache_hits_total did not increase on a second fetch\nbefore:\n{t1}\nafter:\n{t2}");

    // A few more tile requests and one miss, all counted per status.
    for (z, x, y) in [(0, 0, 0), (1, 0, 1), (2, 3, 3)] {
        assert_eq!(server.get(&format!("/tiles/world/{z}/{x}/{y}.png")).status, 200);
    }
    assert_eq!(server.get("/tiles/world/9/9/9.png").status, 404);
    let mut t3 = String::new();
    let ok = poll_until(WATCH_DEADLINE, || {
        t3 = server.metrics_text();
        requests_ok(&t3) >= requests_ok(&t0) + 5.0 && requests_404(&t3) >= requests_404(&t0) + 1.0
    });
    assert!(
        ok,
        "tessera_requests_total{{status=...}} did not count 5 answers of 200 and one 404\n\
         before:\n{t0}\nafter:\n{t3}"
    );
    for name in [
        "tessera_requests_total",
        "tessera_cache_hits_total",
        "tessera_cache_misses_total",
        "tessera_reconcile_rereads_total",
    ] {
        assert!(metric_value(&t3, name, &[]).is_some(), "/metrics does not expose {name}:\n{t3}");
        assert!(
            t3.lines().any(|l| l.starts_with("# TYPE ") && l.split_whitespace().nth(2) == Some(name)),
            "/metrics has no `# TYPE {name} ...` line:\n{t3}"
        );
    }
}
