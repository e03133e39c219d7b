//! Telemetry log pulls (issue 6): paginated listings, resumable and verifiable
//! downloads (ranges, If-Range, multipart, Repr-Digest), growing and rotated
//! logs, and follow mode.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine;
use sha2::{Digest, Sha256};

use common::*;

fn lines(from: usize, to: usize) -> Vec<u8> {
    (from..to)
        .map(|i| format!("2026-11-20T06:{:02}:{:02}Z INFO reading {i}\n", (i / 60) % 60, i % 60))
        .collect::<String>()
        .into_bytes()
}

fn repr_digest(data: &[u8]) -> String {
    format!("sha-256=:{}:", base64::engine::general_purpose::STANDARD.encode(Sha256::digest(data)))
}

/// Files older than the digester's settle time, so their digest comes soon.
fn settle(path: &std::path::Path) {
    let old = std::time::SystemTime::now() - Duration::from_secs(60);
    let file = std::fs::File::options().write(true).open(path).expect("open");
    file.set_modified(old).expect("set mtime");
}

/// Listings are ordered by device and file and paginated by a cursor that
/// stays put when logs are added before it or removed; each entry says
/// whether the log is growing and, once known, its digest.
#[test]
fn listings_paginate_with_a_stable_cursor() {
    let fx = Fixture::new();
    for d in ["d1", "d2", "d3"] {
        for f in ["a.log", "b.log"] {
            write_file(&fx.logs().join(d).join(f), &lines(0, 10));
        }
    }
    let server = fx.start_ready();
    let first = server.get_json("/logs?limit=4");
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .map(|l| format!("{}/{}", l["device"].as_str().unwrap(), l["file"].as_str().unwrap()))
            .collect()
    };
    assert_eq!(names(&first), ["d1/a.log", "d1/b.log", "d2/a.log", "d2/b.log"]);
    let next = first["next"].as_str().expect("a next link").to_string();
    assert!(next.starts_with("/logs?") && next.contains("limit=4"), "{next}");
    // Changes before the cursor do not move the boundary.
    write_file(&fx.logs().join("d0/z.log"), &lines(0, 3));
    std::fs::remove_file(fx.logs().join("d1/a.log")).expect("remove");
    assert!(poll_until(Duration::from_secs(3), || names(&server.get_json("/logs"))[0] == "d0/z.log"), "d0 not indexed");
    let second = server.get_json(&next);
    assert_eq!(names(&second), ["d3/a.log", "d3/b.log"]);
    assert!(second["next"].is_null() && second["next_cursor"].is_null(), "last page: {second}");

    let device = server.get_json("/logs/d3?limit=1");
    assert_eq!(names(&device), ["d3/a.log"]);
    assert_eq!(names(&server.get_json(device["next"].as_str().expect("next"))), ["d3/b.log"]);

    let entry = &second["logs"][0];
    for key in ["url", "size", "etag", "last_change", "growing"] {
        assert!(!entry[key].is_null(), "{key} missing in {entry}");
    }
    // Written just now: growing (modified in the last 5 minutes); one
    // left alone for an hour is not.
    assert_eq!(entry["growing"], true);
    let old = std::fs::File::options().append(true).open(fx.logs().join("d3/b.log")).expect("open");
    old.set_modified(std::time::SystemTime::now() - Duration::from_secs(3600)).expect("set mtime");
    let b = |s: &Server| s.get_json("/logs/d3")["logs"][1]["growing"].clone();
    assert!(poll_until(Duration::from_secs(3), || b(&server) == false), "an hour-old log listed as growing");
    for bad in ["/logs?limit=0", "/logs?limit=5000", "/logs?limit=x", "/logs?cursor=%21%21", "/logs?page=2"] {
        let r = server.get(bad);
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
    }

    // A dashboard polling a listing revalidates it: 304 while nothing
    // changed (digests of this fixture are settled once the tag repeats),
    // 200 with a new tag once a log grows.
    let tag_of = |target: &str| server.get(target).expect_header("etag").to_owned();
    let mut etag = tag_of("/logs/d2");
    assert!(
        poll_until(Duration::from_secs(10), || {
            let now = tag_of("/logs/d2");
            std::mem::replace(&mut etag, now) == etag
        }),
        "the listing's ETag never settled"
    );
    let r = server.request("GET", "/logs/d2", &[("If-None-Match", &etag)]);
    assert_eq!((r.status, r.body.len()), (304, 0), "an unchanged listing");
    assert_eq!(r.header("etag"), Some(etag.as_str()));
    append_file(&fx.logs().join("d2/a.log"), b"one more line\n");
    assert!(
        poll_until(Duration::from_secs(5), || server.request("GET", "/logs/d2", &[("If-None-Match", &etag)]).status
            == 200),
        "a grown log left the listing's ETag as it was"
    );
}

/// The digest arrives in the background (never blocking a download), is
/// listed, is sent as Repr-Digest on full and partial answers, equals the
/// SHA-256 of the file, and is dropped the moment the file changes.
#[test]
fn repr_digest_follows_the_file_version() {
    let fx = Fixture::new();
    let path = fx.logs().join("pump").join("flow.log");
    let body = lines(0, 20_000);
    write_file(&path, &body);
    settle(&path);
    let server = fx.start_ready();
    let want = [("Want-Repr-Digest", "sha-256=10")];
    let r = server.request("GET", "/logs/pump/flow.log", &want);
    assert_eq!((r.status, r.body.len()), (200, body.len()), "the file comes whether or not its digest is known");

    let expected = repr_digest(&body);
    assert!(
        poll_until(Duration::from_secs(10), || server.head("/logs/pump/flow.log").header("repr-digest")
            == Some(&expected)),
        "Repr-Digest {expected} never came; last: {:?}",
        server.head("/logs/pump/flow.log").header("repr-digest")
    );
    let partial = server.request("GET", "/logs/pump/flow.log", &[("Range", "bytes=100-199")]);
    assert_eq!(partial.status, 206);
    assert_eq!(partial.header("repr-digest"), Some(expected.as_str()), "the whole file's digest on a 206");
    let listed = server.get_json("/logs/pump");
    assert_eq!(listed["logs"][0]["digest"], expected.as_str());

    // Append: the old digest must not be sent for the new length.
    append_file(&path, &lines(20_000, 20_100));
    assert!(
        poll_until(Duration::from_secs(3), || server.head("/logs/pump/flow.log").header("repr-digest")
            != Some(&expected)),
        "the digest of the old version was still sent"
    );
    let grown = std::fs::read(&path).expect("read");
    assert!(poll_until(Duration::from_secs(3), || server.get_json("/logs/pump")["logs"][0]["growing"] == true));
    for _ in 0..20 {
        let r = server.get("/logs/pump/flow.log");
        if let Some(d) = r.header("repr-digest") {
            assert_eq!(d, repr_digest(&r.body), "a digest always describes the bytes it comes with");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    settle(&path);
    assert!(
        poll_until(Duration::from_secs(10), || server.head("/logs/pump/flow.log").header("repr-digest")
            == Some(&repr_digest(&grown))),
        "no digest for the grown file"
    );
}

/// Resuming a growing log with `bytes=N-` gets exactly the new bytes; a
/// rotated log (a new file at the name) has a new ETag, so If-Range with the
/// old one gets the whole new file; a gzipped log is served as stored.
#[test]
fn growing_and_rotated_logs_resume_correctly() {
    let fx = Fixture::new();
    let path = fx.logs().join("feeder").join("events.log");
    write_file(&path, &lines(0, 1_000));
    let gz = gzip_stored(&lines(0, 500));
    write_file(&fx.logs().join("feeder").join("old.log.gz"), &gz);
    let server = fx.start_ready();
    let target = "/logs/feeder/events.log";
    let first = server.get(target);
    let (len, etag) = (first.body.len(), first.expect_header("etag").to_string());

    append_file(&path, &lines(1_000, 1_200));
    let range = format!("bytes={len}-");
    assert!(
        poll_until(Duration::from_secs(3), || server.request("GET", target, &[("Range", &range)]).status == 206),
        "the appended bytes never became a 206"
    );
    let rest = server.request("GET", target, &[("Range", &range)]);
    assert_eq!(rest.body, lines(1_000, 1_200), "resume gets exactly the new bytes");
    let total = len + rest.body.len();
    assert_eq!(rest.header("content-range"), Some(format!("bytes {len}-{}/{total}", total - 1).as_str()));

    // Rotation: a new file takes the name.
    replace_atomically(&path, &lines(5_000, 5_300));
    assert!(poll_until(Duration::from_secs(3), || server.get(target).body == lines(5_000, 5_300)));
    let r = server.request("GET", target, &[("Range", "bytes=10-"), ("If-Range", &etag)]);
    assert_eq!(r.status, 200, "If-Range with the old ETag gets the whole new file");
    assert_eq!(r.body, lines(5_000, 5_300));
    let now_etag = r.expect_header("etag").to_string();
    let r = server.request("GET", target, &[("Range", "bytes=10-"), ("If-Range", &now_etag)]);
    assert_eq!((r.status, r.body.len()), (206, lines(5_000, 5_300).len() - 10));

    let g = server.request("GET", "/logs/feeder/old.log.gz", &[("Accept-Encoding", "gzip"), ("Range", "bytes=0-9")]);
    assert_eq!(g.status, 206);
    assert_eq!(g.header("content-type"), Some("application/gzip"));
    assert_eq!(g.header("content-encoding"), None, "a stored gzip is the representation, not an encoding");
    assert_eq!(g.body, gz[..10], "ranges are ranges of the stored file");
}

/// Several ranges come back as multipart/byteranges with each part's bytes;
/// hundreds of overlapping ranges get the whole file with a 200, without the
/// server's memory growing with the request.
#[test]
fn multiple_ranges_are_multipart_and_abuse_gets_the_whole_file() {
    let fx = Fixture::new();
    let data = pseudo_random(9, 32 << 20);
    write_file(&fx.logs().join("scada").join("dump.bin"), &data);
    let server = fx.start_ready();
    let target = "/logs/scada/dump.bin";
    let r = server.request("GET", target, &[("Range", "bytes=0-99,1000-1099,-50")]);
    assert_eq!(r.status, 206);
    let ct = r.expect_header("content-type").to_string();
    let boundary = ct.strip_prefix("multipart/byteranges; boundary=").expect("multipart type").to_string();
    assert_eq!(r.expect_header("content-length"), r.body.len().to_string());
    let text = r.body.clone();
    let len = data.len();
    for (first, last) in [(0, 99), (1000, 1099), (len - 50, len - 1)] {
        let head = format!("--{boundary}\r\ncontent-type: application/octet-stream\r\ncontent-range: bytes {first}-{last}/{len}\r\n\r\n");
        let at = find(&text, head.as_bytes()).unwrap_or_else(|| panic!("part {first}-{last} missing"));
        let start = at + head.len();
        assert_eq!(&text[start..start + (last - first + 1)], &data[first..=last], "part {first}-{last}");
    }
    assert!(text.ends_with(format!("\r\n--{boundary}--\r\n").as_bytes()));

    let before = vm_rss_kib(server.pid());
    let abuse = format!(
        "bytes={}",
        (0..400).map(|i| format!("{}-{}", i * 10, 1_000_000 + i * 10)).collect::<Vec<_>>().join(",")
    );
    for _ in 0..3 {
        let r = server.request("GET", target, &[("Range", &abuse)]);
        assert_eq!(r.status, 200, "overlapping ranges get the whole file");
        assert_eq!(r.body.len(), data.len());
    }
    let grown = vm_rss_kib(server.pid()).saturating_sub(before);
    assert!(grown < 16 * 1024, "serving the abuse grew the server by {grown} KiB");
    assert_eq!(server.get("/healthz").status, 200);
}

/// A follow stream: reads from the range's offset, delivers appended lines
/// within a second (woken by the watcher), and ends once the file is rotated.
#[test]
fn follow_streams_appends_and_ends_on_rotation() {
    let fx = Fixture::new();
    let path = fx.logs().join("rtu").join("live.log");
    let start = lines(0, 100);
    write_file(&path, &start);
    let server = fx.start_ready();
    let offset = start.len() - lines(99, 100).len();
    let mut conn = RawConn::connect(server.addr);
    conn.stream.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    let range = format!("bytes={offset}-");
    conn.send(&request_bytes("GET", "/logs/rtu/live.log?follow", &[("Host", "t"), ("Range", &range)])).expect("send");
    let stream = &mut conn.stream;
    let mut got = Vec::new();
    let read_until = |stream: &mut TcpStream, got: &mut Vec<u8>, needle: &[u8], within: Duration| -> bool {
        let deadline = Instant::now() + within;
        let mut buf = [0u8; 65536];
        while Instant::now() < deadline {
            if find(got, needle).is_some() {
                return true;
            }
            match stream.read(&mut buf) {
                Ok(0) => return find(got, needle).is_some(),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        find(got, needle).is_some()
    };
    assert!(read_until(stream, &mut got, &lines(99, 100), Duration::from_secs(3)), "the start never came");
    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("transfer-encoding: chunked"));
    assert!(find(&got, &lines(98, 99)).is_none(), "the stream starts at the range's offset");

    for i in 0..3 {
        let line = lines(100 + i, 101 + i);
        let sent = Instant::now();
        append_file(&path, &line);
        assert!(read_until(stream, &mut got, &line, Duration::from_secs(1)), "append {i} not streamed within a second");
        assert!(sent.elapsed() < Duration::from_secs(1));
    }

    // Rotation: the stream sends what the old file still gets... then ends.
    std::fs::rename(&path, fx.logs().join("rtu").join("live.log.1")).expect("rotate");
    write_file(&path, b"new file\n");
    assert!(
        read_until(stream, &mut got, b"\r\n0\r\n\r\n", Duration::from_secs(8)),
        "the stream did not end on rotation"
    );
    assert!(find(&got, b"new file").is_none(), "the old stream must not switch files");
    assert_eq!(server.get("/healthz").status, 200);
    assert!(
        poll_until(Duration::from_secs(3), || server.metrics_text().contains("route=\"/logs/{device}/{file}\"")),
        "the follow request was not counted"
    );
}

/// `copytruncate` under a follow stream that has caught up: the log is
/// copied away, truncated and written again past where the stream stands,
/// faster than the stream wakes. The stream ends; it never goes on with the
/// new file's bytes from its old offset as if they were appends.
#[test]
fn follow_ends_on_copytruncate_without_the_new_lines() {
    let fx = Fixture::new();
    let path = fx.logs().join("rtu").join("live.log");
    let start = lines(0, 2_000);
    write_file(&path, &start);
    let server = fx.start_ready();
    let mut conn = RawConn::connect(server.addr);
    conn.stream.set_read_timeout(Some(Duration::from_millis(100))).expect("timeout");
    conn.send(&request_bytes("GET", "/logs/rtu/live.log?follow", &[("Host", "t")])).expect("send");
    let stream = &mut conn.stream;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    let mut read_until = |got: &mut Vec<u8>, needle: &[u8], within: Duration| -> bool {
        let deadline = Instant::now() + within;
        while find(got, needle).is_none() && Instant::now() < deadline {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
        find(got, needle).is_some()
    };
    assert!(read_until(&mut got, &lines(1_999, 2_000), Duration::from_secs(3)), "the stream never caught up");
    // Caught up: the stream now waits for the watcher.
    std::thread::sleep(Duration::from_millis(200));

    std::fs::copy(&path, fx.logs().join("rtu").join("live.log.1")).expect("copy");
    let rewritten = lines(50_000, 53_000);
    let mut file = std::fs::OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(0).expect("truncate");
    file.write_all(&rewritten).expect("write the new lines");
    drop(file);

    assert!(read_until(&mut got, b"\r\n0\r\n\r\n", Duration::from_secs(8)), "the stream did not end on copytruncate");
    assert!(find(&got, &lines(50_000, 50_001)).is_none(), "the stream went on with the new file's lines");
    assert_eq!(server.get("/logs/rtu/live.log").body, rewritten, "the log itself is the new version");
}

/// A follower that hangs up is noticed while the file is quiet: its slot is freed.
#[test]
fn a_departed_follower_frees_its_slot() {
    let fx = Fixture::new();
    write_file(&fx.logs().join("rtu").join("quiet.log"), &lines(0, 10));
    let config = fx.root().join("followers.toml");
    std::fs::write(&config, "[http]\nmax_followers = 1\n").expect("config");
    let server = fx.start_ready_with(&fx.state(), &["--config", config.to_str().expect("utf-8")]);
    let open = || {
        let mut conn = RawConn::connect(server.addr);
        conn.send(&request_bytes("GET", "/logs/rtu/quiet.log?follow", &[("Host", "t")])).expect("send");
        conn.stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let mut buf = [0u8; 4096];
        let n = conn.stream.read(&mut buf).expect("a response");
        (conn, String::from_utf8_lossy(&buf[..n]).to_string())
    };
    let (first, head) = open();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let (_second, head) = open();
    assert!(head.starts_with("HTTP/1.1 503"), "a second follower over the limit: {head}");
    drop(first);
    assert!(
        poll_until(Duration::from_secs(3), || open().1.starts_with("HTTP/1.1 200")),
        "the slot of the follower that left was never freed"
    );
}
