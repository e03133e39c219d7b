//! tessera's own HTTP/1.1 connection driver: it must answer exactly as plain hyper
//! does, keep pipelined answers in order, and never let a smuggled request through.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Every request sends this Host, so that listings (whose URLs come from Host)
/// are the same from both servers.
const HOST: &str = "tessera.test";
/// How long a connection may take to end once the server has decided to close it.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

struct World {
    tile_url: String,
    tile: Vec<u8>,
    log_url: String,
    log: Vec<u8>,
}

/// Tileset `demo` (zoom 0..=2, one tile of 20,000 bytes: below the 64 KiB memory
/// limit) and logs: `dev1/big.log`, about 200 KiB of text lines (above it), and a
/// small `dev2/events.log`.
fn setup(fx: &Fixture) -> World {
    write_pyramid(&fx.tiles(), "demo", 2);
    let tile = tile_bytes(11, 20_000);
    write_file(&tile_path(&fx.tiles(), "demo", 2, 3, 1), &tile);
    let mut log = Vec::new();
    let mut i = 0u32;
    while log.len() < 200 * 1024 {
        let line = format!(
            "2024-05-01T{:02}:{:02}:{:02}Z sensor=pump-{} pressure={}.{:03} flow={}\n",
            i / 3600 % 24,
            i / 60 % 60,
            i % 60,
            i % 7,
            3 + i % 5,
            i * 37 % 1000,
            i * 13 % 977
        );
        log.extend_from_slice(line.as_bytes());
        i += 1;
    }
    write_file(&fx.logs().join("dev1").join("big.log"), &log);
    write_file(&fx.logs().join("dev2").join("events.log"), b"2024-05-01T00:00:00Z start\n2024-05-01T00:00:05Z stop\n");
    World { tile_url: "/tiles/demo/2/3/1.png".into(), tile, log_url: "/logs/dev1/big.log".into(), log }
}

/// One request of the comparison: method, target, extra headers, and the status the
/// driver must give (so that both servers being wrong the same way still fails).
struct Case {
    method: &'static str,
    target: String,
    headers: Vec<(&'static str, String)>,
    status: u16,
    /// The body a GET must return, when it is known here.
    body: Option<Vec<u8>>,
    /// The length of the whole file, for requests of a file.
    full_len: Option<usize>,
}

impl Case {
    fn label(&self) -> String {
        let extra: Vec<String> = self.headers.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        format!("{} {} {:?}", self.method, self.target, extra)
    }

    fn bytes(&self, close: bool) -> Vec<u8> {
        let mut headers: Vec<(&str, &str)> = vec![("Host", HOST)];
        if close {
            headers.push(("Connection", "close"));
        }
        headers.extend(self.headers.iter().map(|(k, v)| (*k, v.as_str())));
        request_bytes(self.method, &self.target, &headers)
    }
}

fn cases(w: &World, tile_validators: (String, String), log_validators: (String, String)) -> Vec<Case> {
    let case = |method: &'static str, target: &str, headers: Vec<(&'static str, String)>, status: u16| Case {
        method,
        target: target.to_string(),
        headers,
        status,
        body: None,
        full_len: None,
    };
    let mut out = Vec::new();
    for method in ["GET", "HEAD"] {
        let mut tile = case(method, &w.tile_url, vec![], 200);
        let mut log = case(method, &w.log_url, vec![], 200);
        if method == "GET" {
            tile.body = Some(w.tile.clone());
            log.body = Some(w.log.clone());
        }
        out.push(tile);
        out.push(log);
        out.push(case(method, "/tiles/demo/3/5/5.png", vec![], 404));
        out.push(case(method, "/tiles/nope/0/0/0.png", vec![], 404));
        out.push(case(method, "/tiles", vec![], 200));
        out.push(case(method, "/tiles/demo.json", vec![], 200));
        out.push(case(method, "/tiles/x.json", vec![], 404));
        out.push(case(method, "/logs", vec![], 200));
        out.push(case(method, "/logs?device=dev1", vec![], 200));
        let mut health = case(method, "/healthz", vec![], 200);
        if method == "GET" {
            health.body = Some(b"ok\n".to_vec());
        }
        out.push(health);
    }
    // CORS preflight and a method the routes do not allow: no body, still the Router's answer.
    let preflight = vec![
        ("Origin", "http://dashboard.example".to_string()),
        ("Access-Control-Request-Method", "GET".to_string()),
        ("Access-Control-Request-Headers", "range".to_string()),
    ];
    // A CORS preflight, answered by tower-http's CorsLayer: 200 with no body
    // (any 2xx is an "ok status" to the Fetch standard).
    out.push(case("OPTIONS", &w.tile_url, preflight, 200));
    out.push(case("DELETE", &w.tile_url, vec![], 405));
    for (url, bytes, (etag, modified)) in
        [(&w.tile_url, &w.tile, tile_validators), (&w.log_url, &w.log, log_validators)]
    {
        let n = bytes.len();
        let mut first = case("GET", url, vec![("Range", "bytes=0-99".into())], 206);
        first.body = Some(bytes[..100].to_vec());
        out.push(first);
        let mut last = case("GET", url, vec![("Range", "bytes=-100".into())], 206);
        last.body = Some(bytes[n - 100..].to_vec());
        out.push(last);
        out.push(case("HEAD", url, vec![("Range", "bytes=0-99".into())], 206));
        out.push(case("GET", url, vec![("Range", "bytes=999999999-".into())], 416));
        out.push(case("GET", url, vec![("If-None-Match", etag.clone())], 304));
        out.push(case("HEAD", url, vec![("If-None-Match", etag.clone())], 304));
        out.push(case("GET", url, vec![("If-Modified-Since", modified.clone())], 304));
        let mut stale = case("GET", url, vec![("If-None-Match", "\"not-the-etag\"".into())], 200);
        stale.body = Some(bytes.to_vec());
        out.push(stale);
    }
    for case in &mut out {
        if case.target == w.tile_url {
            case.full_len = Some(w.tile.len());
        } else if case.target == w.log_url {
            case.full_len = Some(w.log.len());
        }
    }
    out
}

/// One request on a fresh connection with `Connection: close`: the response, then
/// the connection must end with nothing more.
fn exchange_closing(server: &Server, case: &Case) -> Response {
    let mut conn = RawConn::connect(server.addr);
    conn.send(&case.bytes(true)).unwrap_or_else(|e| panic!("{}: send: {e}", case.label()));
    let r = conn
        .read_response(case.method == "HEAD")
        .unwrap_or_else(|e| panic!("{}: {e}\nstderr:\n{}", case.label(), server.stderr()));
    let (rest, _) = conn
        .read_to_end(Instant::now() + CLOSE_DEADLINE)
        .unwrap_or_else(|e| panic!("{}: after the response: {e}", case.label()));
    assert!(
        rest.is_empty(),
        "{}: {} bytes after the response: {:?}",
        case.label(),
        rest.len(),
        String::from_utf8_lossy(&rest[..rest.len().min(300)])
    );
    r
}

fn describe(r: &Response) -> String {
    format!("{} {:?} body {} bytes", r.status, header_set(r, &[]), r.body.len())
}

/// Compares one pair of answers; pushes what differs to `diffs`.
///
/// On a 304 `content-length` is left out: RFC 9110 section 8.6 governs it (checked in
/// [`check_expected`]), and hyper itself is not consistent there (it drops the
/// Router's `content-length: 0` on a 304 to GET but keeps it on a 304 to HEAD).
fn compare(label: &str, driver: &Response, hyper: &Response, exclude: &[&str], diffs: &mut Vec<String>) {
    if driver.status != hyper.status {
        diffs.push(format!("{label}: status driver {} hyper {}", driver.status, hyper.status));
    }
    let mut exclude = exclude.to_vec();
    if driver.status == 304 && hyper.status == 304 {
        exclude.push("content-length");
    }
    let (d, h) = (header_set(driver, &exclude), header_set(hyper, &exclude));
    if d != h {
        let only_d: Vec<_> = d.iter().filter(|x| !h.contains(x)).collect();
        let only_h: Vec<_> = h.iter().filter(|x| !d.contains(x)).collect();
        diffs.push(format!("{label}: headers only from the driver {only_d:?}, only from hyper {only_h:?}"));
    }
    if driver.body != hyper.body {
        let at = driver.body.iter().zip(&hyper.body).position(|(a, b)| a != b);
        diffs.push(format!(
            "{label}: bodies differ (driver {} bytes, hyper {} bytes, first difference at {at:?}): driver {:?} hyper {:?}",
            driver.body.len(),
            hyper.body.len(),
            String::from_utf8_lossy(&driver.body[..driver.body.len().min(200)]),
            String::from_utf8_lossy(&hyper.body[..hyper.body.len().min(200)]),
        ));
    }
}

/// The driver's answer must be what the case says, whatever hyper does.
fn check_expected(label: &str, case: &Case, r: &Response, problems: &mut Vec<String>) {
    if r.status != case.status {
        problems.push(format!("{label}: status {} (expected {}): {}", r.status, case.status, describe(r)));
    }
    if let Some(body) = &case.body {
        if &r.body != body {
            problems.push(format!("{label}: body of {} bytes differs from the expected {}", r.body.len(), body.len()));
        }
    }
    if (case.method == "HEAD" || r.status == 304) && !r.body.is_empty() {
        problems.push(format!("{label}: {} body bytes on a bodiless answer", r.body.len()));
    }
    // RFC 9110 section 8.6: a 304 to a GET may carry Content-Length only if it is the
    // length a 200 would have had. (To a HEAD, `0` is what the same GET would send: a
    // 304 has no content. hyper answers so too.)
    if r.status == 304 {
        if let (Some(cl), Some(full)) = (r.header("content-length"), case.full_len) {
            let allowed = cl == full.to_string() || (case.method == "HEAD" && cl == "0");
            if !allowed {
                problems.push(format!(
                    "{label}: 304 with `content-length: {cl}`, but a 200 has {full} bytes (RFC 9110 section 8.6)"
                ));
            }
        }
    }
}

#[test]
fn driver_and_hyper_agree() {
    let fx = Fixture::new();
    let w = setup(&fx);
    let (state_d, state_h) = (fx.root().join("state-driver"), fx.root().join("state-hyper"));
    let driver = fx.start_ready_with(&state_d, &["--transport", "driver"]);
    let hyper = fx.start_ready_with(&state_h, &["--transport", "hyper"]);

    let validators = |url: &str| {
        let r = exchange_closing(
            &driver,
            &Case { method: "GET", target: url.into(), headers: vec![], status: 200, body: None, full_len: None },
        );
        assert_eq!(r.status, 200, "GET {url}: {}", describe(&r));
        (r.expect_header("etag").to_string(), r.expect_header("last-modified").to_string())
    };
    let cases = cases(&w, validators(&w.tile_url), validators(&w.log_url));

    let started = Instant::now();
    let mut diffs = Vec::new();
    let mut problems = Vec::new();

    // One connection per request, each with `Connection: close`.
    for case in &cases {
        let label = format!("[close] {}", case.label());
        let (d, h) = (exchange_closing(&driver, case), exchange_closing(&hyper, case));
        check_expected(&label, case, &d, &mut problems);
        if d.header("connection").map(str::to_ascii_lowercase).as_deref() != Some("close") {
            problems.push(format!("{label}: the driver's answer lacks `connection: close`: {}", describe(&d)));
        }
        compare(&label, &d, &h, &["date"], &mut diffs);
    }

    // The same requests on one keep-alive connection per server.
    let (mut dc, mut hc) = (RawConn::connect(driver.addr), RawConn::connect(hyper.addr));
    let mut connection_diffs = Vec::new();
    for case in &cases {
        let label = format!("[keep-alive] {}", case.label());
        let answer = |conn: &mut RawConn, server: &Server| {
            conn.send(&case.bytes(false)).unwrap_or_else(|e| panic!("{label}: send: {e}"));
            conn.read_response(case.method == "HEAD")
                .unwrap_or_else(|e| panic!("{label}: {e}\nstderr:\n{}", server.stderr()))
        };
        let (d, h) = (answer(&mut dc, &driver), answer(&mut hc, &hyper));
        check_expected(&label, case, &d, &mut problems);
        if d.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
            problems.push(format!("{label}: the driver closes a keep-alive connection"));
        }
        if d.header("connection") != h.header("connection") {
            connection_diffs.push(format!(
                "{label}: connection: driver {:?} hyper {:?}",
                d.header("connection"),
                h.header("connection")
            ));
        }
        compare(&label, &d, &h, &["date", "connection"], &mut diffs);
    }
    for (name, conn) in [("driver", &dc), ("hyper", &hc)] {
        assert!(conn.buffered().is_empty(), "{name}: bytes beyond the last keep-alive answer: {:?}", conn.buffered());
    }
    eprintln!(
        "{} requests compared twice in {:?}; `connection` header differences on keep-alive: {}",
        cases.len(),
        started.elapsed(),
        if connection_diffs.is_empty() { "none".to_string() } else { connection_diffs.join("\n") }
    );
    assert!(
        problems.is_empty() && diffs.is_empty(),
        "the driver's answers are wrong:\n{}\n\nthe driver and hyper answer differently:\n{}",
        or_none(&problems),
        or_none(&diffs)
    );
}

fn or_none(lines: &[String]) -> String {
    if lines.is_empty() {
        "(none)".to_string()
    } else {
        lines.join("\n")
    }
}

#[test]
fn pipelined_requests_come_back_in_order() {
    let fx = Fixture::new();
    let w = setup(&fx);
    let server = fx.start_ready();
    let other = tile_content(1, 1, 0);
    let etag = server.get(&w.tile_url).expect_header("etag").to_string();
    let missing = server.get("/tiles/nope/0/0/0.png");
    assert_eq!(missing.status, 404, "GET /tiles/nope/0/0/0.png: {}", describe(&missing));

    // (request, HEAD?, status, body)
    let host = ("Host", HOST);
    let plan: Vec<(Vec<u8>, bool, u16, Vec<u8>)> = vec![
        (request_bytes("GET", "/healthz", &[host]), false, 200, b"ok\n".to_vec()),
        (request_bytes("GET", &w.tile_url, &[host]), false, 200, w.tile.clone()),
        (
            request_bytes("GET", &w.log_url, &[host, ("Range", "bytes=1000-1999")]),
            false,
            206,
            w.log[1000..2000].to_vec(),
        ),
        (request_bytes("GET", "/tiles/nope/0/0/0.png", &[host]), false, 404, missing.body.clone()),
        (request_bytes("HEAD", &w.tile_url, &[host]), true, 200, Vec::new()),
        (request_bytes("GET", "/tiles/demo/1/1/0.png", &[host]), false, 200, other),
        (request_bytes("GET", &w.log_url, &[host]), false, 200, w.log.clone()),
        (request_bytes("GET", &w.tile_url, &[host, ("If-None-Match", &etag)]), false, 304, Vec::new()),
        (request_bytes("HEAD", "/healthz", &[host]), true, 200, Vec::new()),
        (request_bytes("GET", "/healthz", &[host, ("Connection", "close")]), false, 200, b"ok\n".to_vec()),
    ];
    let all: Vec<u8> = plan.iter().flat_map(|(req, ..)| req.clone()).collect();

    let started = Instant::now();
    let mut conn = RawConn::connect(server.addr);
    conn.send(&all).expect("send the pipelined requests in one write");
    for (i, (req, head, status, body)) in plan.iter().enumerate() {
        let line =
            String::from_utf8_lossy(&req[..req.iter().position(|&b| b == b'\r').unwrap_or(req.len())]).into_owned();
        let r = conn
            .read_response(*head)
            .unwrap_or_else(|e| panic!("answer {} ({line}): {e}\nstderr:\n{}", i + 1, server.stderr()));
        assert_eq!(r.status, *status, "answer {} ({line}) out of order or wrong: {}", i + 1, describe(&r));
        assert!(
            r.body == *body,
            "answer {} ({line}): body of {} bytes differs from the expected {} bytes: {:?}",
            i + 1,
            r.body.len(),
            body.len(),
            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
        );
        if *head {
            assert!(r.header("content-length").is_some(), "answer {} ({line}): HEAD without Content-Length", i + 1);
        }
        let last = i + 1 == plan.len();
        let closes = r.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        assert_eq!(
            closes,
            last,
            "answer {} ({line}): `connection: close` only on the last one: {}",
            i + 1,
            describe(&r)
        );
    }
    let (rest, ending) =
        conn.read_to_end(Instant::now() + CLOSE_DEADLINE).expect("end of stream after the last answer");
    assert!(rest.is_empty(), "bytes after the last answer: {:?}", String::from_utf8_lossy(&rest));
    eprintln!("10 pipelined answers and {ending:?} in {:?}", started.elapsed());
}

// ---------------------------------------------------------------------------
// Smuggling
// ---------------------------------------------------------------------------

/// A request the attacker hides in the body of the first; answering it would be a 404
/// for tileset SMUGGLED.
const SMUGGLED: &str = "GET /tiles/SMUGGLED/0/0/0.png HTTP/1.1\r\nHost: tessera.test\r\n\r\n";
/// The honest request sent after each attack on the same connection.
const FOLLOW_UP: &str = "GET /healthz HTTP/1.1\r\nHost: tessera.test\r\nConnection: close\r\n\r\n";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// 400 with `connection: close`, then nothing.
    Rejected,
    /// Handed to hyper: these final statuses, in order (hyper may close early,
    /// so a prefix of at least the first is accepted), interim 1xx allowed.
    Served(&'static [u16]),
    /// HTTP/2: only well-formed HTTP/2 frames come back.
    Http2,
}

fn chunked_smuggle() -> String {
    format!("0\r\n\r\n{SMUGGLED}")
}

fn attacks() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let body = chunked_smuggle();
    let n = body.len();
    let raw = |s: String| s.into_bytes();
    vec![
        (
            "CL.TE",
            raw(format!(
                "POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )),
            Expect::Rejected,
        ),
        (
            "CL.TE with GET",
            raw(format!(
                "GET /healthz HTTP/1.1\r\nHost: tessera.test\r\nContent-Length: {n}\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            )),
            Expect::Rejected,
        ),
        (
            "TE.CL",
            raw(format!(
                "POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{body}"
            )),
            Expect::Rejected,
        ),
        (
            "two Content-Length",
            raw(format!(
                "GET /healthz HTTP/1.1\r\nHost: tessera.test\r\nContent-Length: 0\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            )),
            Expect::Rejected,
        ),
        (
            "two Content-Length, both non-zero",
            raw(format!(
                "POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nContent-Length: {}\r\nContent-Length: 0\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            )),
            Expect::Rejected,
        ),
        (
            "obs-fold Transfer-Encoding",
            raw(format!(
                "POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nContent-Length: {n}\r\nTransfer-Encoding:\r\n chunked\r\n\r\n{body}"
            )),
            Expect::Rejected,
        ),
        (
            "obs-fold plain header",
            raw(format!("GET /healthz HTTP/1.1\r\nHost: tessera.test\r\nX-Folded: a\r\n b\r\n\r\n{SMUGGLED}")),
            Expect::Rejected,
        ),
        (
            "bare LF",
            raw(format!(
                "POST /tiles HTTP/1.1\nHost: tessera.test\nContent-Length: {}\n\n{SMUGGLED}",
                SMUGGLED.len()
            )),
            Expect::Rejected,
        ),
        (
            "bare LF in a GET",
            raw(format!("GET /healthz HTTP/1.1\r\nHost: tessera.test\nX-A: b\r\n\r\n{SMUGGLED}")),
            Expect::Rejected,
        ),
        ("two Host", raw(format!("GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n{SMUGGLED}")), Expect::Rejected),
        ("HTTP/1.1 without Host", raw(format!("GET /healthz HTTP/1.1\r\n\r\n{SMUGGLED}")), Expect::Rejected),
        (
            "Expect: 100-continue",
            raw("POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\nhello".into()),
            Expect::Served(&[405, 200]),
        ),
        (
            "POST with a body that looks like a request",
            raw(format!(
                "POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nContent-Length: {}\r\n\r\n{SMUGGLED}",
                SMUGGLED.len()
            )),
            Expect::Served(&[405, 200]),
        ),
        (
            "chunked POST with the request after the last chunk",
            raw("POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".into()),
            Expect::Served(&[405, 200]),
        ),
        ("h2c prior-knowledge preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(), Expect::Http2),
    ]
}

/// Parses the whole of what the server sent as HTTP/1.1 responses: each one
/// whole, framed by its Content-Length, and nothing after the last.
fn parse_all(raw: &[u8]) -> Result<Vec<Response>, String> {
    let mut conn = RawConn::over(raw);
    let mut out = Vec::new();
    while !conn.at_end() {
        let head = conn.read_head().map_err(|e| format!("not a whole response: {e}"))?;
        let status = head.status;
        let len: usize = if (100..200).contains(&status) || status == 204 || status == 304 {
            0
        } else {
            match head.header("content-length") {
                Some(v) => v.parse().map_err(|_| format!("bad Content-Length {v:?}"))?,
                None => return Err(format!("response {status} without Content-Length: {:?}", head.headers)),
            }
        };
        let body = conn.read_body(len).map_err(|e| format!("response {status} cut short: {e}"))?;
        out.push(Response { body, ..head });
    }
    Ok(out)
}

/// HTTP/2 frames (type, stream, payload) of what the server sent; errors if the
/// bytes are not a sequence of whole frames.
fn h2_frames(mut raw: &[u8]) -> Result<Vec<(u8, u32, Vec<u8>)>, String> {
    let mut frames = Vec::new();
    while !raw.is_empty() {
        if raw.len() < 9 {
            return Err(format!("{} stray bytes: {raw:?}", raw.len()));
        }
        let len = (usize::from(raw[0]) << 16) | (usize::from(raw[1]) << 8) | usize::from(raw[2]);
        let (kind, stream) = (raw[3], u32::from_be_bytes([raw[5] & 0x7f, raw[6], raw[7], raw[8]]));
        if kind > 9 || raw.len() < 9 + len {
            return Err(format!("not an HTTP/2 frame: {:?}", String::from_utf8_lossy(&raw[..raw.len().min(100)])));
        }
        frames.push((kind, stream, raw[9..9 + len].to_vec()));
        raw = &raw[9 + len..];
    }
    Ok(frames)
}

/// An HPACK string literal without Huffman coding (shorter than 127 bytes).
fn hpack_literal(out: &mut Vec<u8>, s: &str) {
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// A client connection preface, an empty SETTINGS frame and a GET of `path` on
/// stream 1, HPACK-encoded with the static table and plain literals.
fn h2_get(path: &str) -> Vec<u8> {
    let mut block = vec![0x82, 0x86]; // :method GET, :scheme http
    block.push(0x44); // :path, literal with indexing
    hpack_literal(&mut block, path);
    block.push(0x41); // :authority, literal with indexing
    hpack_literal(&mut block, HOST);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
    let len = block.len();
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, 1, 0x05, 0, 0, 0, 1]); // HEADERS, END_STREAM|END_HEADERS
    out.extend_from_slice(&block);
    out
}

fn rejected_400(server: &Server) -> f64 {
    server.metric_with("tessera_rejected_requests_total", &[("status", "400")]).unwrap_or(0.0)
}

fn is_smuggled_answer(r: &Response) -> bool {
    r.status == 404
}

#[test]
fn smuggling_never_desynchronises() {
    let fx = Fixture::new();
    let _w = setup(&fx);
    let server = fx.start_ready();
    let rejected_before = rejected_400(&server);
    let handoffs_before = server.metric("tessera_handoffs_total").unwrap_or(0.0);
    let started = Instant::now();
    let mut failures = Vec::new();
    let mut summary = Vec::new();
    let mut rejections = 0.0;
    let mut handoffs = 0.0;

    for (name, attack, expect) in attacks() {
        let mut conn = RawConn::connect(server.addr);
        let mut bytes = attack.clone();
        if expect != Expect::Http2 {
            bytes.extend_from_slice(FOLLOW_UP.as_bytes());
        } else {
            // After an HTTP/2 preface, an HTTP/1.1 request is garbage: it must never be answered.
            bytes.extend_from_slice(SMUGGLED.as_bytes());
        }
        if let Err(e) = conn.send(&bytes) {
            failures.push(format!("{name}: send: {e}"));
            continue;
        }
        let t0 = Instant::now();
        let (raw, ending) = match conn.read_to_end(Instant::now() + CLOSE_DEADLINE) {
            Ok(x) => x,
            Err(e) => {
                failures.push(format!("{name}: the connection did not end: {e}"));
                continue;
            }
        };
        let took = t0.elapsed();
        match expect {
            Expect::Rejected => {
                rejections += 1.0;
                match parse_all(&raw) {
                    Ok(rs) if rs.len() == 1 && rs[0].status == 400 => {
                        if !rs[0].header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close")) {
                            failures.push(format!("{name}: 400 without `connection: close`: {}", describe(&rs[0])));
                        }
                        summary.push(format!("{name}: 400 {:?}, then {ending:?} after {took:?}", rs[0].text().trim()));
                    }
                    Ok(rs) => failures.push(format!(
                        "{name}: expected one 400 then the end, got {:?}",
                        rs.iter().map(describe).collect::<Vec<_>>()
                    )),
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
            Expect::Served(statuses) => {
                handoffs += 1.0;
                match parse_all(&raw) {
                    Ok(rs) => {
                        let finals: Vec<u16> = rs.iter().map(|r| r.status).filter(|s| *s >= 200).collect();
                        if rs.iter().any(is_smuggled_answer) {
                            failures.push(format!("{name}: the smuggled request was answered: {finals:?}"));
                        } else if finals.is_empty() || !statuses.starts_with(&finals) {
                            failures.push(format!("{name}: answers {finals:?}, expected {statuses:?} in order"));
                        }
                        summary.push(format!(
                            "{name}: {:?}, then {ending:?} after {took:?}",
                            rs.iter().map(|r| r.status).collect::<Vec<_>>()
                        ));
                    }
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
            Expect::Http2 => {
                handoffs += 1.0;
                if contains_bytes(&raw, b"HTTP/1.") {
                    failures.push(format!(
                        "{name}: an HTTP/1 answer after the HTTP/2 preface: {:?}",
                        String::from_utf8_lossy(&raw)
                    ));
                }
                match h2_frames(&raw) {
                    Ok(frames) => {
                        let kinds: Vec<u8> = frames.iter().map(|f| f.0).collect();
                        if kinds.first() != Some(&4) {
                            failures.push(format!("{name}: HTTP/2 answer does not start with SETTINGS: {kinds:?}"));
                        }
                        if frames.iter().any(|(kind, stream, _)| *stream != 0 && matches!(kind, 0 | 1)) {
                            failures.push(format!("{name}: a stream was answered: {kinds:?}"));
                        }
                        summary.push(format!("{name}: HTTP/2 frames {kinds:?}, then {ending:?} after {took:?}"));
                    }
                    Err(e) => failures.push(format!("{name}: {e}")),
                }
            }
        }
        // Whatever happened, the server still answers.
        let health = server.get("/healthz");
        if health.status != 200 {
            failures.push(format!("{name}: /healthz afterwards: {}", describe(&health)));
        }
    }

    // A real HTTP/2 request with prior knowledge is served by hyper after the hand-off.
    {
        let mut conn = RawConn::connect(server.addr);
        conn.send(&h2_get("/healthz")).expect("send HTTP/2 request");
        // hyper keeps an HTTP/2 connection open: read until the DATA frame that ends stream 1.
        let deadline = Instant::now() + CLOSE_DEADLINE;
        conn.stream.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
        let mut raw = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        let answer = loop {
            use std::io::Read;
            match conn.stream.read(&mut buf) {
                Ok(0) => break None,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
                Err(_) if Instant::now() < deadline => {}
                Err(_) => break None,
            }
            // Only whole frames: cut the buffer at the last complete one.
            let mut whole = 0;
            while raw.len() >= whole + 9 {
                let len =
                    (usize::from(raw[whole]) << 16) | (usize::from(raw[whole + 1]) << 8) | usize::from(raw[whole + 2]);
                if raw.len() < whole + 9 + len {
                    break;
                }
                whole += 9 + len;
            }
            let frames = h2_frames(&raw[..whole]).unwrap_or_default();
            let headers = frames.iter().find(|(kind, stream, _)| *kind == 1 && *stream == 1);
            let data: Vec<u8> = frames
                .iter()
                .filter(|(kind, stream, _)| *kind == 0 && *stream == 1)
                .flat_map(|f| f.2.clone())
                .collect();
            if headers.is_some() && data == b"ok\n" {
                break headers.map(|h| h.2.clone());
            }
        };
        match answer {
            // 0x88 is `:status: 200` from the HPACK static table.
            Some(block) if block.first() == Some(&0x88) => summary.push("HTTP/2 GET /healthz: 200 \"ok\"".into()),
            Some(block) => failures.push(format!("HTTP/2 GET /healthz: header block {block:?} is not :status 200")),
            None => failures.push(format!("HTTP/2 GET /healthz: no answer; got {raw:?}")),
        }
        handoffs += 1.0;
    }

    // A plain POST with a body, then a pipelined GET: hyper answers both, in order.
    {
        let mut conn = RawConn::connect(server.addr);
        let mut bytes = b"POST /tiles HTTP/1.1\r\nHost: tessera.test\r\nContent-Length: 5\r\n\r\nhello".to_vec();
        bytes.extend_from_slice(b"GET /healthz HTTP/1.1\r\nHost: tessera.test\r\nConnection: close\r\n\r\n");
        conn.send(&bytes).expect("send POST and GET");
        let answers = (conn.read_response(false), conn.read_response(false));
        match answers {
            (Ok(first), Ok(second)) if first.status == 405 && second.status == 200 && second.body == b"ok\n" => {
                match conn.read_to_end(Instant::now() + CLOSE_DEADLINE) {
                    Ok((rest, ending)) if rest.is_empty() => {
                        summary.push(format!("POST /tiles with a body + GET /healthz: [405, 200], then {ending:?}"))
                    }
                    Ok((rest, _)) => failures
                        .push(format!("POST + GET: bytes after both answers: {:?}", String::from_utf8_lossy(&rest))),
                    Err(e) => failures.push(format!("POST + GET: the connection did not end: {e}")),
                }
            }
            (first, second) => failures.push(format!(
                "POST /tiles with a body + GET /healthz: expected 405 then 200 \"ok\", got {:?} then {:?}",
                first.map(|r| describe(&r)),
                second.map(|r| describe(&r))
            )),
        }
        handoffs += 1.0;
    }

    eprintln!("smuggling attempts in {:?}:\n{}", started.elapsed(), summary.join("\n"));
    assert!(failures.is_empty(), "smuggling checks failed:\n{}", failures.join("\n"));

    let rejected = rejected_400(&server) - rejected_before;
    assert_eq!(
        rejected, rejections,
        "tessera_rejected_requests_total{{status=\"400\"}} should count each refused head"
    );
    let handed = server.metric("tessera_handoffs_total").unwrap_or(0.0) - handoffs_before;
    assert_eq!(handed, handoffs, "tessera_handoffs_total should count each connection given to hyper");
}

/// Replays must not keep descriptors the descriptor cache has let go: with
/// the cache bounded to 50 files, serving 300 distinct tiles (each twice, so
/// each gets a replay) leaves about 50 files open, not 300.
#[test]
fn replays_do_not_hold_descriptors_past_the_cache_bound() {
    let fx = Fixture::new();
    for i in 0..300u32 {
        write_file(&tile_path(&fx.tiles(), "many", 9, i, 7), &tile_bytes(u64::from(i), 2_000));
    }
    let config = fx.root().join("small-cache.toml");
    std::fs::write(&config, "[cache]\nmax_open_files = 50\n").expect("config");
    let server = fx.start_with(&fx.state(), &["--config", config.to_str().expect("utf-8 path")]);
    server.wait_ready();
    let mut conn = RawConn::connect(server.addr);
    for i in 0..300u32 {
        for _ in 0..2 {
            let target = format!("/tiles/many/9/{i}/7.png");
            conn.send(&request_bytes("GET", &target, &[("Host", "tessera.test")])).expect("send");
            let r = conn.read_response(false).expect("response");
            assert_eq!(r.status, 200, "{target}");
        }
    }
    assert!(server.metric("tessera_replays_total").unwrap_or(0.0) >= 250.0, "the repeats were replays");
    let open_files = std::fs::read_dir(format!("/proc/{}/fd", server.pid()))
        .expect("/proc/PID/fd")
        .filter_map(Result::ok)
        .filter(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target.starts_with(fx.tiles())))
        .count();
    assert!(open_files <= 50, "{open_files} tile files open with max_open_files = 50");
}

/// A replay whose descriptor the cache evicted re-opens its file and is
/// still a replay if the file is the same version; if the file was replaced
/// meanwhile, the new version is served with its own headers, never the old
/// head over the new bytes. One connection keeps every request on one
/// worker thread (replays are per thread); a cache of one file evicts on
/// every alternate request.
#[test]
fn evicted_replays_reopen_and_never_outlive_their_version() {
    let fx = Fixture::new();
    let (a, b) = (tile_path(&fx.tiles(), "ev", 2, 1, 1), tile_path(&fx.tiles(), "ev", 2, 1, 2));
    write_file(&a, &tile_bytes(1, 3_000));
    write_file(&b, &tile_bytes(2, 5_000));
    let config = fx.root().join("one-file.toml");
    std::fs::write(&config, "[cache]\nmax_open_files = 1\n").expect("config");
    let server = fx.start_with(&fx.state(), &["--config", config.to_str().expect("utf-8 path")]);
    server.wait_ready();
    let mut conn = RawConn::connect(server.addr);
    let mut get = |target: &str| {
        conn.send(&request_bytes("GET", target, &[("Host", "tessera.test")])).expect("send");
        conn.read_response(false).expect("response")
    };
    let (ta, tb) = ("/tiles/ev/2/1/1.png", "/tiles/ev/2/1/2.png");
    let first_a = get(ta);
    get(tb);
    let before = server.metric("tessera_replays_total").unwrap_or(0.0);
    for _ in 0..5 {
        let ra = get(ta);
        assert_eq!(ra.body, tile_bytes(1, 3_000));
        assert_eq!(header_set(&ra, &["date"]), header_set(&first_a, &["date"]));
        assert_eq!(get(tb).body, tile_bytes(2, 5_000));
    }
    // Ten replays; the counter of the last may be bumped just after its bytes arrive.
    let replays = server.metric("tessera_replays_total").unwrap_or(0.0) - before;
    assert!(replays >= 9.0, "alternating requests should replay after each eviction, counted {replays}");

    // Replace `a` while its entry is evicted (b was asked last): the watcher
    // invalidation finds nothing cached, so only the validators stop the replay.
    replace_atomically(&a, &tile_bytes(3, 4_000));
    let ra = get(ta);
    assert_eq!(ra.body, tile_bytes(3, 4_000));
    assert_eq!(ra.header("content-length"), Some("4000"));
    assert_ne!(ra.header("etag"), first_a.header("etag"), "the new version has its own ETag");
}
