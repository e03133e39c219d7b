//! Log lines by time (`?since=&until=` and `/logs/{device}/.lines`): every
//! slice is compared byte for byte with what a plain line filter of the file
//! returns, written here independently of the server (serde_json, chrono and
//! a split on commas), in the three line shapes, across index marks, while
//! the log grows, rotates and is truncated, out of time order, compressed,
//! and across a device's files.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::Duration;

use common::*;

const BASE: &str = "2026-11-20T00:00:00Z";

fn base_ms() -> i64 {
    chrono::DateTime::parse_from_rfc3339(BASE).unwrap().timestamp_millis()
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).unwrap().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// A line's time as a plain reader of each shape would find it.
fn reference_time(csv_column: Option<usize>, line: &str) -> Option<i64> {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis());
    let line = line.trim();
    if line.starts_with('{') {
        let value: serde_json::Value = serde_json::from_str(line).ok()?;
        return ["ts", "timestamp", "time"].iter().find_map(|k| value.get(*k)?.as_str().and_then(parse));
    }
    if let Some(col) = csv_column {
        return line.split(',').nth(col).and_then(|f| parse(f.trim()));
    }
    parse(line.split([' ', ',']).next()?)
}

/// The lines of `body` whose time is in `[since, until)`, each with the
/// untimed lines after it; only lines ended by a newline, and none that
/// starts with a NUL byte (space not written yet).
fn line_filter(body: &[u8], since: i64, until: i64) -> Vec<u8> {
    let text = std::str::from_utf8(body).unwrap();
    let first = text.lines().next().unwrap_or("");
    let csv_column = (!first.starts_with('{') && first.contains(','))
        .then(|| first.split(',').position(|c| c.trim() == "timestamp"))
        .flatten();
    let mut out = Vec::new();
    let mut inside = false;
    for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n')) {
        if line.starts_with('\0') {
            inside = false;
        } else if let Some(t) = reference_time(csv_column, line) {
            inside = since <= t && t < until;
        }
        if inside {
            out.extend_from_slice(line.as_bytes());
        }
    }
    out
}

#[derive(Clone, Copy)]
enum Shape {
    Plain,
    Json,
    Csv,
}

/// `n` lines from `from` on, one every `step_ms`, in a shape; plain logs
/// get an untimed continuation line now and then, and times repeat in pairs.
fn log_lines(shape: Shape, from: usize, n: usize, step_ms: i64) -> Vec<u8> {
    let mut out = String::new();
    if from == 0 {
        if let Shape::Csv = shape {
            out.push_str("flow,timestamp,pressure\n");
        }
    }
    for i in from..from + n {
        let ts = rfc3339(base_ms() + (i as i64 / 2) * 2 * step_ms);
        match shape {
            Shape::Plain => {
                out.push_str(&format!("{ts} INFO station=pump-7 reading={i} flow={}.{}\n", i % 97, i % 10));
                if i % 17 == 0 {
                    out.push_str(&format!("    at valve {i}: pressure falling\n"));
                }
            }
            Shape::Json => out.push_str(&format!(
                "{{\"device\":\"pump-7\",\"ts\":\"{ts}\",\"reading\":{i},\"flow\":{}.{}}}\n",
                i % 97,
                i % 10
            )),
            Shape::Csv => out.push_str(&format!("{}.{},{ts},{}\n", i % 97, i % 10, i % 13)),
        }
    }
    out.into_bytes()
}

fn query(since: Option<i64>, until: Option<i64>) -> String {
    let mut q = Vec::new();
    if let Some(s) = since {
        q.push(format!("since={}", rfc3339(s)));
    }
    if let Some(u) = until {
        q.push(format!("until={}", rfc3339(u)));
    }
    q.join("&")
}

/// Asks for `[since, until)` and compares with the line filter of `body`.
fn check_slice(server: &Server, url: &str, body: &[u8], since: Option<i64>, until: Option<i64>) -> Response {
    let r = server.get(&format!("{url}?{}", query(since, until)));
    assert_eq!(r.status, 200, "{url} {since:?}..{until:?}: {}", r.text());
    // Without since or until it is the file's download, every byte.
    let want = match (since, until) {
        (None, None) => body.to_vec(),
        _ => line_filter(body, since.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX)),
    };
    assert!(
        r.body == want,
        "{url} {:?}..{:?}: {} bytes, want {} (first differing byte {:?})",
        since.map(rfc3339),
        until.map(rfc3339),
        r.body.len(),
        want.len(),
        r.body.iter().zip(&want).position(|(a, b)| a != b)
    );
    assert_eq!(r.expect_header("content-length"), want.len().to_string());
    if since.is_some() || until.is_some() {
        assert!(r.expect_header("etag").starts_with("\"s-"), "a slice has its own strong ETag");
    }
    r
}

/// Spans at line times, between them, across many marks, before the first
/// line and after the last, open at either end, and empty.
fn spans(last_ms: i64) -> Vec<(Option<i64>, Option<i64>)> {
    let b = base_ms();
    let mut spans = vec![
        (None, None),
        (Some(b - 3_600_000), Some(b - 1)),
        (Some(b - 3_600_000), Some(b + 1)),
        (Some(last_ms + 1), None),
        (Some(last_ms), None),
        (None, Some(b)),
        (Some(b), Some(b)),
        (None, Some(last_ms / 2 + b / 2)),
        (Some(last_ms / 2 + b / 2), None),
    ];
    for k in 1..12i64 {
        let from = b + (last_ms - b) * k / 13;
        spans.push((Some(from), Some(from + (last_ms - b) / 29 + 7)));
        spans.push((Some(from + 3), Some(from + 1234)));
    }
    spans
}

/// A log's entry in its device's listing (null if it is not listed).
fn listing_entry(server: &Server, device: &str, file: &str) -> serde_json::Value {
    let listing = server.get_json(&format!("/logs/{device}"));
    let logs = listing["logs"].as_array().expect("logs").clone();
    logs.into_iter().find(|l| l["file"] == file).unwrap_or_default()
}

fn wait_indexed(server: &Server, device: &str, file: &str, len: usize) -> serde_json::Value {
    let mut entry = serde_json::Value::Null;
    let done = poll_until(Duration::from_secs(10), || {
        entry = listing_entry(server, device, file);
        entry["indexed_to"].as_u64().is_some_and(|n| n + 200 >= len as u64)
    });
    assert!(done, "{file} was not indexed: {entry}");
    entry
}

/// Slices of logs in the three shapes, each over many index marks, equal
/// the line filter for every span; the listing says how each is answered.
#[test]
fn slices_equal_a_line_filter_in_three_shapes() {
    let fx = Fixture::new();
    let shapes = [(Shape::Plain, "plain.log"), (Shape::Json, "json.jsonl"), (Shape::Csv, "table.csv")];
    let n = 20_000;
    let step = 1_700;
    let mut bodies = Vec::new();
    for (shape, name) in shapes {
        let body = log_lines(shape, 0, n, step);
        write_file(&fx.logs().join("pump-7").join(name), &body);
        bodies.push((name, body));
    }
    let server = fx.start_ready();
    let last_ms = base_ms() + n as i64 * step;
    for (name, body) in &bodies {
        let entry = wait_indexed(&server, "pump-7", name, body.len());
        assert_eq!(entry["slices"], "indexed", "{entry}");
        assert_eq!(entry["ordered"], true);
        let marks = entry["marks"].as_u64().unwrap();
        assert!(marks as usize >= body.len() / (64 * 1024), "{name}: {marks} marks for {} bytes", body.len());
        for (since, until) in spans(last_ms) {
            check_slice(&server, &format!("/logs/pump-7/{name}"), body, since, until);
        }
    }
    assert!(server.metric_with("tessera_log_slices_total", &[("how", "indexed")]).unwrap_or(0.0) > 50.0);
    assert_eq!(
        server.metric_with("tessera_log_slices_total", &[("how", "filtered")]),
        None,
        "no file needed reading through"
    );
    // HEAD tells a slice's size without its body.
    let q = query(Some(base_ms() + 3_000_000), Some(base_ms() + 9_000_000));
    let head = server.head(&format!("/logs/pump-7/plain.log?{q}"));
    let get = server.get(&format!("/logs/pump-7/plain.log?{q}"));
    assert_eq!(head.status, 200);
    assert!(head.body.is_empty());
    assert_eq!(head.expect_header("content-length"), get.body.len().to_string());
    assert_eq!(head.expect_header("etag"), get.expect_header("etag"));
}

/// A log whose times go backwards is found out by the index and answered
/// by reading it through, still exactly; the listing says so.
#[test]
fn logs_out_of_time_order_are_filtered_exactly() {
    let fx = Fixture::new();
    let mut body = log_lines(Shape::Plain, 0, 6_000, 1_000);
    // A device whose clock jumped back an hour, then on.
    body.extend(log_lines(Shape::Plain, 0, 3_000, 1_000));
    body.extend(log_lines(Shape::Plain, 6_000, 2_000, 1_000));
    let path = fx.logs().join("rtu-3").join("clock.log");
    write_file(&path, &body);
    let server = fx.start_ready();
    let entry = wait_indexed(&server, "rtu-3", "clock.log", body.len());
    assert_eq!(entry["ordered"], false, "{entry}");
    assert_eq!(entry["slices"], "filtered");
    for (since, until) in spans(base_ms() + 8_000_000) {
        check_slice(&server, "/logs/rtu-3/clock.log", &body, since, until);
    }
    assert!(server.metric_with("tessera_log_slices_total", &[("how", "filtered")]).unwrap_or(0.0) > 10.0);
}

/// A growing log: slices right after appends (before and after the index
/// catches up), a response whose log grows while it is read, then a
/// rotation and a truncation under the same name.
#[test]
fn appends_rotation_and_truncation_keep_slices_exact() {
    let fx = Fixture::new();
    let path = fx.logs().join("pump-9").join("live.log");
    let mut body = log_lines(Shape::Plain, 0, 4_000, 900);
    write_file(&path, &body);
    let server = fx.start_ready();
    wait_indexed(&server, "pump-9", "live.log", body.len());
    let url = "/logs/pump-9/live.log";
    let open = |from: i64| (Some(base_ms() + from), None);
    for round in 0..5 {
        let more = log_lines(Shape::Plain, 4_000 + round * 500, 500, 900);
        append_file(&path, &more);
        body.extend_from_slice(&more);
        // At once, whatever the index has read so far.
        let (since, until) = open(3_000_000);
        check_slice(&server, url, &body, since, until);
        check_slice(
            &server,
            url,
            &body,
            Some(base_ms() + 100_000),
            Some(base_ms() + 4_000_000 + round as i64 * 300_000),
        );
    }
    // A partial last line is not part of any slice until its newline comes.
    append_file(&path, b"2026-11-20T23:00:00Z INFO half a li");
    let r = server.get(&format!("{url}?{}", query(Some(base_ms() + 4_000_000), None)));
    assert!(!r.text().contains("half a li"));
    append_file(&path, b"ne\n");
    body.extend_from_slice(b"2026-11-20T23:00:00Z INFO half a line\n");
    check_slice(&server, url, &body, Some(base_ms() + 4_000_000), None);
    wait_indexed(&server, "pump-9", "live.log", body.len());
    check_slice(&server, url, &body, Some(base_ms() + 1_000_000), None);

    // A slice being read while the log grows is the log as it was asked for.
    let mut conn = RawConn::connect(server.addr);
    let target = format!("{url}?{}", query(None, None));
    conn.send(&request_bytes("GET", &target, &[("Host", "t"), ("Connection", "close")])).unwrap();
    let first = conn.read_some(1000, std::time::Instant::now() + Duration::from_secs(3)).unwrap();
    append_file(&path, &log_lines(Shape::Plain, 9_000, 3_000, 900));
    let mut rest = first;
    let (more, _) = conn.read_to_end(std::time::Instant::now() + Duration::from_secs(5)).unwrap();
    rest.extend(more);
    let response = parse_response(&rest, false).unwrap();
    assert_eq!(response.body, line_filter(&body, i64::MIN, i64::MAX));
    body.extend(log_lines(Shape::Plain, 9_000, 3_000, 900));

    // Rotation: a new file under the name, another time range.
    std::fs::rename(&path, fx.logs().join("pump-9").join("live.log.1")).unwrap();
    let rotated = body.clone();
    body = log_lines(Shape::Plain, 20_000, 3_000, 700);
    write_file(&path, &body);
    check_slice(&server, url, &body, Some(base_ms() + 7_200_000), None);
    wait_indexed(&server, "pump-9", "live.log", body.len());
    check_slice(&server, url, &body, Some(base_ms() + 7_200_000), Some(base_ms() + 7_900_000));
    check_slice(&server, "/logs/pump-9/live.log.1", &rotated, Some(base_ms() + 1_000_000), Some(base_ms() + 2_000_000));

    // Truncation and new content written in place.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(0).unwrap();
    drop(file);
    body = log_lines(Shape::Plain, 0, 2_500, 1_300);
    append_file(&path, &body);
    check_slice(&server, url, &body, Some(base_ms() + 500_000), Some(base_ms() + 1_500_000));
    wait_indexed(&server, "pump-9", "live.log", body.len());
    let entry = listing_entry(&server, "pump-9", "live.log");
    assert_eq!(entry["slices"], "indexed", "{entry}");
    check_slice(&server, url, &body, Some(base_ms() + 500_000), Some(base_ms() + 1_500_000));
    assert_eq!(server.get("/healthz").status, 200);
}

/// A log preallocated with zeros and written in place: the zeros belong to
/// no slice, and lines written over them are found as appends are.
#[test]
fn a_preallocated_log_written_in_place() {
    let fx = Fixture::new();
    let path = fx.logs().join("rtu").join("prealloc.log");
    let first = log_lines(Shape::Plain, 0, 3_000, 1_000);
    write_file(&path, &first);
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(4 << 20).unwrap();
    let mut body = std::fs::read(&path).unwrap();
    let server = fx.start_ready();
    let entry = wait_indexed(&server, "rtu", "prealloc.log", first.len());
    assert_eq!(entry["indexed_to"].as_u64(), Some(first.len() as u64), "the index stops where the zeros begin");
    let url = "/logs/rtu/prealloc.log";
    for (since, until) in [(Some(base_ms() + 1_000_000), None), (None, Some(base_ms() + 2_000_000)), (None, None)] {
        check_slice(&server, url, &body, since, until);
    }
    // The logger writes on where it stopped, in place: same length, new lines.
    let more = log_lines(Shape::Plain, 3_000, 2_000, 1_000);
    std::os::unix::fs::FileExt::write_all_at(
        &std::fs::OpenOptions::new().write(true).open(&path).unwrap(),
        &more,
        first.len() as u64,
    )
    .unwrap();
    body[first.len()..first.len() + more.len()].copy_from_slice(&more);
    check_slice(&server, url, &body, Some(base_ms() + 2_500_000), None);
    wait_indexed(&server, "rtu", "prealloc.log", first.len() + more.len());
    check_slice(&server, url, &body, Some(base_ms() + 2_500_000), Some(base_ms() + 4_000_000));
    assert_eq!(
        server.get(&format!("{url}?{}", query(Some(base_ms() + 4_500_000), None))).body,
        line_filter(&body, base_ms() + 4_500_000, i64::MAX)
    );
}

/// `Range` and `If-Range` within a slice; its ETag holds while the log
/// grows past it; `curl -C -` resumes a cut download.
#[test]
fn slices_resume_with_ranges() {
    let fx = Fixture::new();
    let path = fx.logs().join("pump-7").join("day.log");
    let body = log_lines(Shape::Plain, 0, 30_000, 1_000);
    write_file(&path, &body);
    let server = fx.start_ready();
    wait_indexed(&server, "pump-7", "day.log", body.len());
    let (since, until) = (base_ms() + 2_000_000, base_ms() + 12_000_000);
    let target = format!("/logs/pump-7/day.log?{}", query(Some(since), Some(until)));
    let want = line_filter(&body, since, until);
    let whole = server.get(&target);
    assert_eq!(whole.body, want);
    let etag = whole.expect_header("etag").to_string();

    let r = server.request("GET", &target, &[("Range", "bytes=1000-1999")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, &want[1000..2000]);
    assert_eq!(r.expect_header("content-range"), format!("bytes 1000-1999/{}", want.len()));
    let r = server.request("GET", &target, &[("Range", "bytes=5000-"), ("If-Range", &etag)]);
    assert_eq!((r.status, &r.body[..]), (206, &want[5000..]));
    let r = server.request("GET", &target, &[("Range", "bytes=5000-"), ("If-Range", "\"s-other\"")]);
    assert_eq!((r.status, r.body.len()), (200, want.len()), "a stale If-Range gets the whole slice");
    let r = server.request("GET", &target, &[("If-None-Match", &etag)]);
    assert_eq!(r.status, 304);
    let r = server.request("GET", &target, &[("Range", &format!("bytes={}-", want.len()))]);
    assert_eq!(r.status, 416);
    assert_eq!(r.expect_header("content-range"), format!("bytes */{}", want.len()));

    // Lines appended after the span change neither the slice nor its ETag.
    append_file(&path, &log_lines(Shape::Plain, 30_000, 2_000, 1_000));
    wait_indexed(&server, "pump-7", "day.log", body.len() + 1);
    let again = server.get(&target);
    assert_eq!(again.body, want);
    assert_eq!(again.expect_header("etag"), etag, "a closed slice keeps its ETag while the log grows");

    // curl -C - continues a file it has part of.
    if Command::new("curl").arg("--version").output().is_err() {
        skip("curl is not installed");
        return;
    }
    let out = fx.root().join("resumed.log");
    std::fs::write(&out, &want[..want.len() / 3]).unwrap();
    let url = format!("{}{target}", server.base_url());
    let status = Command::new("curl").args(["-sSf", "-C", "-", "-o"]).arg(&out).arg(&url).status().unwrap();
    assert!(status.success());
    assert!(std::fs::read(&out).unwrap() == want, "the resumed download differs");
}

/// `/logs/{device}/.lines` is the device's lines from all its logs in time
/// order: here a compressed one, a rotated one and the live one, whose
/// names sort in another order than their times.
#[test]
fn device_lines_concatenate_its_logs_in_time_order() {
    let fx = Fixture::new();
    let dir = fx.logs().join("pump-7");
    let oldest = log_lines(Shape::Plain, 0, 5_000, 1_000);
    let middle = log_lines(Shape::Plain, 5_000, 5_000, 1_000);
    let newest = log_lines(Shape::Plain, 10_000, 5_000, 1_000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&oldest).unwrap();
    write_file(&dir.join("pump.log.2.gz"), &gz.finish().unwrap());
    write_file(&dir.join("pump.log.1"), &middle);
    write_file(&dir.join("pump.log"), &newest);
    write_file(&fx.logs().join("pump-8").join("other.log"), &log_lines(Shape::Plain, 0, 100, 1_000));
    let server = fx.start_ready();
    wait_indexed(&server, "pump-7", "pump.log", newest.len());
    wait_indexed(&server, "pump-7", "pump.log.1", middle.len());
    for (since, until) in spans(base_ms() + 15_000_000) {
        let (s, u) = (since.unwrap_or(i64::MIN), until.unwrap_or(i64::MAX));
        let want = [line_filter(&oldest, s, u), line_filter(&middle, s, u), line_filter(&newest, s, u)].concat();
        let r = server.get(&format!("/logs/pump-7/.lines?{}", query(since, until)));
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.body == want, "{since:?}..{until:?}: {} bytes, want {}", r.body.len(), want.len());
    }
    // A range across the files' seams, and the compressed file alone.
    let all = [oldest.clone(), middle.clone(), newest.clone()].concat();
    let seam = oldest.len() as u64;
    let r = server.request("GET", "/logs/pump-7/.lines", &[("Range", &format!("bytes={}-{}", seam - 10, seam + 10))]);
    assert_eq!((r.status, &r.body[..]), (206, &all[seam as usize - 10..=seam as usize + 10]));
    let (s, u) = (base_ms() + 1_000_000, base_ms() + 2_000_000);
    let r = server.get(&format!("/logs/pump-7/pump.log.2.gz?{}", query(Some(s), Some(u))));
    assert_eq!(r.status, 200);
    assert_eq!(r.body, line_filter(&oldest, s, u));
    assert_eq!(r.expect_header("content-type"), "application/octet-stream", "pump.log.2 has no known type");
    assert!(r.header("content-encoding").is_none(), "a compressed log's slice is sent decompressed");
    assert!(server.metric_with("tessera_log_slices_total", &[("how", "decompressed")]).unwrap_or(0.0) > 1.0);
    assert_eq!(server.get("/logs/nobody/.lines").status, 404);
}

/// Unparseable and reversed times are refused naming the parameter; an
/// empty span is an empty 200; the server stays healthy.
#[test]
fn bad_spans_are_refused_naming_the_parameter() {
    let fx = Fixture::new();
    write_file(&fx.logs().join("pump-7").join("a.log"), &log_lines(Shape::Plain, 0, 100, 1_000));
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&log_lines(Shape::Plain, 0, 100, 1_000)).unwrap();
    write_file(&fx.logs().join("pump-7").join("b.log.gz"), &gz.finish().unwrap());
    let server = fx.start_ready();
    for (target, word) in [
        ("/logs/pump-7/a.log?since=yesterday", "since"),
        ("/logs/pump-7/a.log?until=2026-11-20", "until"),
        ("/logs/pump-7/a.log?since=2026-11-20T01:00:00Z&until=2026-11-20T00:00:00Z", "until"),
        ("/logs/pump-7/a.log?until=2026-11-20T01:00:00Z&follow", "until"),
        ("/logs/pump-7/a.log?from=2026-11-20T01:00:00Z", "from"),
        ("/logs/pump-7/.lines?since=2026-13-01T00:00:00Z", "since"),
        ("/logs/pump-7/b.log.gz?since=2026-11-20T00:00:00Z&follow", "follow"),
    ] {
        let r = server.get(target);
        assert_eq!(r.status, 400, "{target}: {}", r.text());
        assert!(r.text().contains(word), "{target}: {}", r.text());
    }
    write_file(&fx.logs().join("pump-7").join("c.log.gz"), b"\x1f\x8b\x08\x00 not really gzip at all");
    let r = server.get("/logs/pump-7/c.log.gz?since=2026-11-20T00:00:00Z");
    assert_eq!(r.status, 422, "{}", r.text());
    assert!(r.text().contains("cannot be read"), "{}", r.text());
    let r = server.get("/logs/pump-7/a.log?since=2027-01-01T00:00:00Z");
    assert_eq!((r.status, r.body.len()), (200, 0));
    assert_eq!(r.expect_header("content-length"), "0");
    // An offset with a `+` that arrived unescaped still parses.
    let r = server.get("/logs/pump-7/a.log?since=2026-11-20T01:00:30+01:00");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, line_filter(&log_lines(Shape::Plain, 0, 100, 1_000), base_ms() + 30_000, i64::MAX));
    assert_eq!(server.get("/healthz").status, 200);
}

/// Follows `target` until `want` has come, then appends `line` to `log`
/// and returns the body once the line has come too.
fn follow_then_append(server: &Server, target: &str, want: &[u8], log: &std::path::Path, line: &[u8]) -> Vec<u8> {
    let mut conn = RawConn::connect(server.addr);
    conn.send(&request_bytes("GET", target, &[("Host", "t")])).unwrap();
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut appended = false;
    while std::time::Instant::now() < deadline && find(&got, line).is_none() {
        got.extend(conn.read_some(1 << 20, std::time::Instant::now() + Duration::from_millis(200)).unwrap_or_default());
        let caught_up = match want.len() {
            0 => find(&got, b"\r\n\r\n").is_some(),
            n => find(&got, &want[n.saturating_sub(20)..]).is_some(),
        };
        if !appended && caught_up {
            append_file(log, line);
            appended = true;
        }
    }
    let response = parse_response(&[&got[..], b"0\r\n\r\n"].concat(), false).unwrap();
    assert_eq!(response.status, 200, "{target}");
    assert!(response.is_chunked());
    response.body
}

/// `?since=T&follow` starts at the first line from T and goes on with what
/// is appended, for one log, for a device's logs, and for a log out of time
/// order (the span's lines, then what comes).
#[test]
fn follow_starts_at_since() {
    let fx = Fixture::new();
    let dir = fx.logs().join("rtu");
    let old = log_lines(Shape::Plain, 0, 1_000, 1_000);
    let mut live = log_lines(Shape::Plain, 1_000, 1_000, 1_000);
    let mut jumbled = log_lines(Shape::Plain, 0, 1_000, 1_000);
    jumbled.extend(log_lines(Shape::Plain, 0, 500, 1_000));
    write_file(&dir.join("live.log.1"), &old);
    write_file(&dir.join("live.log"), &live);
    write_file(&fx.logs().join("clock").join("jumbled.log"), &jumbled);
    let server = fx.start_ready();
    wait_indexed(&server, "rtu", "live.log", live.len());
    assert_eq!(wait_indexed(&server, "clock", "jumbled.log", jumbled.len())["ordered"], false);
    for case in ["file", "device", "out of order", "device from now"] {
        let (target, want, log) = match case {
            "file" => {
                let since = base_ms() + 1_500_000;
                let target = format!("/logs/rtu/live.log?{}&follow", query(Some(since), None));
                (target, line_filter(&live, since, i64::MAX), dir.join("live.log"))
            }
            "device" => {
                let since = base_ms() + 900_000;
                let target = format!("/logs/rtu/.lines?{}&follow", query(Some(since), None));
                (target, [line_filter(&old, since, i64::MAX), live.clone()].concat(), dir.join("live.log"))
            }
            "device from now" => {
                // Later than every line so far: nothing yet, then the newest log's appends.
                let since = base_ms() + 3_500_000;
                let target = format!("/logs/rtu/.lines?{}&follow", query(Some(since), None));
                (target, Vec::new(), dir.join("live.log"))
            }
            _ => {
                let since = base_ms() + 700_000;
                let target = format!("/logs/clock/jumbled.log?{}&follow", query(Some(since), None));
                (target, line_filter(&jumbled, since, i64::MAX), fx.logs().join("clock").join("jumbled.log"))
            }
        };
        let line = format!("{} INFO appended for {case}\n", rfc3339(base_ms() + 3_000_000));
        let body = follow_then_append(&server, &target, &want, &log, line.as_bytes());
        if case == "out of order" {
            jumbled.extend_from_slice(line.as_bytes());
        } else {
            live.extend_from_slice(line.as_bytes());
        }
        assert!(body.len() >= want.len(), "{target}: {} bytes", body.len());
        if body[..want.len()] != want[..] {
            let at = body.iter().zip(&want).position(|(a, b)| a != b).unwrap_or(0);
            panic!(
                "{target}: the span's lines first; differ at {at} of {}: got {:?} want {:?}",
                want.len(),
                String::from_utf8_lossy(&body[at.saturating_sub(60)..(at + 60).min(body.len())]),
                String::from_utf8_lossy(&want[at.saturating_sub(60)..(at + 60).min(want.len())])
            );
        }
        assert_eq!(&body[want.len()..], line.as_bytes(), "{target}: then what was appended");
    }
}

/// A log larger than the index's read budget: the server is ready before
/// the index has read it all, slices are exact meanwhile (read through),
/// and the index gets to the end a chunk at a time.
#[test]
#[ignore = "second tier: writes and indexes a 160 MB log"]
fn a_large_log_is_indexed_in_chunks_after_readiness() {
    let fx = Fixture::new();
    let path = fx.logs().join("pump-7").join("big.log");
    let mut body = Vec::with_capacity(170 << 20);
    let mut i = 0;
    while body.len() < 160 << 20 {
        body.extend(log_lines(Shape::Plain, i, 10_000, 50));
        i += 10_000;
    }
    write_file(&path, &body);
    let last_ms = base_ms() + i as i64 * 50;
    let server = fx.start_ready();
    let early = listing_entry(&server, "pump-7", "big.log");
    let indexed_to = early["indexed_to"].as_u64().unwrap_or(0);
    assert!(indexed_to < body.len() as u64, "the first reconcile read all {indexed_to} bytes before readiness");
    assert!(early["first"].is_string() && early["last"].is_string(), "first and last come from the ends: {early}");
    let span = (Some(last_ms - 600_000), None);
    check_slice(&server, "/logs/pump-7/big.log", &body, span.0, span.1);
    // Stopped half way: the next start goes on with the index by itself
    // (the log does not change, so no event would ask for it).
    server.stop();
    let server = fx.start_ready();
    let entry = wait_indexed(&server, "pump-7", "big.log", body.len());
    assert_eq!(entry["slices"], "indexed");
    check_slice(&server, "/logs/pump-7/big.log", &body, span.0, span.1);
    check_slice(&server, "/logs/pump-7/big.log", &body, Some(base_ms() + 1_000_000), Some(base_ms() + 9_000_000));
}
