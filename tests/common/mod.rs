//! Shared harness for tessera's integration tests.
//!
//! Every test starts the real `tessera` binary on `127.0.0.1:0` over temporary
//! directories holding real files, and talks to it with the tiny raw HTTP/1.1
//! client below. The client sends the request target byte for byte (no URL
//! normalisation), which the path-attack tests depend on.

// Each test crate uses a different subset of these helpers.
#![allow(dead_code)]

use std::cell::Cell;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tempfile::TempDir;

/// How long the server may take to print its listening line, and to become ready.
pub const START_DEADLINE: Duration = Duration::from_secs(15);
/// How long a change on disk may take to become visible over HTTP.
pub const WATCH_DEADLINE: Duration = Duration::from_secs(2);
/// How long a graceful stop (SIGTERM) may take.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Socket read/write timeout of the test client.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause between two polls.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

pub const LISTENING_PREFIX: &str = "tessera listening on http://";
pub const TLS_LISTENING_PREFIX: &str = "tessera listening on https://";

/// The binary under test: this build's, or `TESSERA_TEST_BIN` (to show that
/// a test fails on an older build).
pub fn bin() -> String {
    std::env::var("TESSERA_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_tessera").to_string())
}

/// A test whose prerequisite this machine lacks (user namespaces, `chattr`,
/// root for network namespaces): skipped with a message on a developer's
/// machine, a failure where every test must run (`TESSERA_REQUIRE_ALL_TESTS`,
/// set by `.ci/run`).
pub fn skip(reason: &str) {
    if std::env::var_os("TESSERA_REQUIRE_ALL_TESTS").is_some() {
        panic!("this test cannot run here and TESSERA_REQUIRE_ALL_TESTS is set: {reason}");
    }
    eprintln!("SKIPPED: {reason}");
}

static SERIAL: Mutex<()> = Mutex::new(());

/// Held for the whole of a test that must not overlap another such test of
/// its binary: it measures latency or timeouts, streams hundreds of megabytes,
/// opens thousands of sockets or starves the server of descriptors, and on a
/// small machine such tests would disturb each other. A test that panicked
/// while holding it does not fail the next.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------
// Polling
// ---------------------------------------------------------------------------

/// Calls `f` until it returns true or `timeout` has passed; returns whether it succeeded.
/// `f` is always called at least once, and once more after the deadline has passed.
pub fn poll_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        let late = Instant::now() >= deadline;
        if f() {
            return true;
        }
        if late {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

// ---------------------------------------------------------------------------
// Fixture: a temporary directory with tiles/, logs/ and state/
// ---------------------------------------------------------------------------

pub struct Fixture {
    pub dir: TempDir,
    starts: Cell<usize>,
}

impl Default for Fixture {
    fn default() -> Self {
        Self::new()
    }
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("tessera-it-").tempdir().expect("create temp dir");
        for sub in ["tiles", "logs", "state"] {
            fs::create_dir(dir.path().join(sub)).expect("create fixture dir");
        }
        Fixture { dir, starts: Cell::new(0) }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn tiles(&self) -> PathBuf {
        self.dir.path().join("tiles")
    }

    pub fn logs(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    /// Copies the repository's sample `tiles/` and `logs/` into this fixture.
    pub fn copy_samples(&self) {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        for (from, to) in [(repo.join("tiles"), self.tiles()), (repo.join("logs"), self.logs())] {
            let status = Command::new("cp").arg("-R").arg(format!("{}/.", from.display())).arg(&to).status();
            assert!(status.is_ok_and(|s| s.success()), "cp {}", from.display());
        }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts `tessera serve` over this fixture's tiles/, logs/ and state/.
    /// Its stderr goes to `server-N.stderr` in the fixture directory.
    pub fn start(&self) -> Server {
        self.start_with(&self.state(), &[])
    }

    /// Starts the server and waits until `/readyz` answers 200.
    pub fn start_ready(&self) -> Server {
        let server = self.start();
        server.wait_ready();
        server
    }
}

// ---------------------------------------------------------------------------
// Server process
// ---------------------------------------------------------------------------

pub struct Server {
    child: Option<Child>,
    /// The plaintext listener, or the TLS one if there is no other.
    pub addr: SocketAddr,
    /// The TLS listener, if the server has one.
    pub tls_addr: Option<SocketAddr>,
    stderr_path: PathBuf,
}

impl Server {
    /// Spawns the binary with `args`, stderr to `stderr_path`, and waits (at most
    /// [`START_DEADLINE`]) for the `tessera listening on http://ADDR` line on stdout.
    pub fn spawn(args: &[OsString], stderr_path: &Path) -> Server {
        let mut command = Command::new(bin());
        command.args(args);
        Server::spawn_command(command, stderr_path)
    }

    /// [`Server::spawn`] for a command the caller prepared (environment,
    /// inherited descriptors, a wrapper).
    pub fn spawn_command(mut command: Command, stderr_path: &Path) -> Server {
        let stderr = fs::File::create(stderr_path).expect("create stderr file");
        let mut child = command
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("spawn tessera");

        // A thread reads stdout line by line and keeps draining it for the whole life
        // of the process, so the server never blocks on a full pipe.
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let mut tx = Some(tx);
            loop {
                line.clear();
                match reader.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if let Some(sender) = &tx {
                            if sender.send(line.trim_end().to_string()).is_err() {
                                tx = None;
                            }
                        }
                    }
                }
            }
        });

        let deadline = Instant::now() + START_DEADLINE;
        let mut seen = Vec::new();
        // A TLS server prints its https line first, then the plaintext one
        // if it has one, in the same write: wait a moment for the second.
        let mut tls_addr = None;
        let addr = loop {
            let until = match tls_addr {
                Some(_) => deadline.min(Instant::now() + Duration::from_millis(500)),
                None => deadline,
            };
            let left = until.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let parse = |rest: &str| -> SocketAddr {
                        rest.trim_end_matches('/')
                            .parse()
                            .unwrap_or_else(|e| panic!("bad listening line {line:?}: {e}"))
                    };
                    if let Some(rest) = line.trim().strip_prefix(LISTENING_PREFIX) {
                        break parse(rest);
                    }
                    if let Some(rest) = line.trim().strip_prefix(TLS_LISTENING_PREFIX) {
                        tls_addr = Some(parse(rest));
                        continue;
                    }
                    seen.push(line);
                }
                Err(_) if tls_addr.is_some() => break tls_addr.expect("checked"),
                Err(e) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!(
                        "tessera did not print {LISTENING_PREFIX:?}ADDR within {START_DEADLINE:?} \
                         ({e}); exit: {status:?}; stdout so far: {seen:?}\nstderr:\n{}",
                        tail_of_file(stderr_path, 8000)
                    );
                }
            }
        };
        assert!(
            addr.ip().is_loopback() && addr.port() != 0,
            "listening address {addr} should be 127.0.0.1 with a real port"
        );
        Server { child: Some(child), addr, tls_addr, stderr_path: stderr_path.to_path_buf() }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    pub fn stderr(&self) -> String {
        tail_of_file(&self.stderr_path, 16_000)
    }

    /// Polls `/readyz` until it answers 200, at most [`START_DEADLINE`].
    pub fn wait_ready(&self) {
        let mut last = String::from("no answer");
        let ok = poll_until(START_DEADLINE, || match http_request(self.addr, "GET", "/readyz", &[]) {
            Ok(r) if r.status == 200 => true,
            Ok(r) => {
                last = format!("status {}", r.status);
                false
            }
            Err(e) => {
                last = e.to_string();
                false
            }
        });
        assert!(ok, "/readyz did not answer 200 within {START_DEADLINE:?} (last: {last})\nstderr:\n{}", self.stderr());
    }

    /// Sends one request; panics (with the server's stderr) if no HTTP response comes back.
    pub fn request(&self, method: &str, target: &str, headers: &[(&str, &str)]) -> Response {
        match http_request(self.addr, method, target, headers) {
            Ok(r) => r,
            Err(e) => panic!("{method} {target:?}: no valid HTTP response: {e}\nstderr:\n{}", self.stderr()),
        }
    }

    pub fn get(&self, target: &str) -> Response {
        self.request("GET", target, &[])
    }

    /// A GET with `Authorization: Bearer {token}`.
    pub fn get_with_token(&self, target: &str, token: &str) -> Response {
        self.request("GET", target, &[("Authorization", &format!("Bearer {token}"))])
    }

    pub fn head(&self, target: &str) -> Response {
        self.request("HEAD", target, &[])
    }

    /// GET `target`, assert 200, parse the body as JSON.
    pub fn get_json(&self, target: &str) -> Value {
        let r = self.get(target);
        assert_eq!(r.status, 200, "GET {target}: expected 200, body: {}", r.text());
        r.json()
    }

    /// The text of `/metrics`.
    pub fn metrics_text(&self) -> String {
        let r = self.get("/metrics");
        assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
        r.text()
    }

    /// The value of a metric (sum over its label sets), or None if it is not exposed.
    pub fn metric(&self, name: &str) -> Option<f64> {
        metric_value(&self.metrics_text(), name, &[])
    }

    /// The value of a metric, summed over the label sets matching every `(label, value)`.
    pub fn metric_with(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric_value(&self.metrics_text(), name, labels)
    }

    /// Stops the server gracefully with SIGTERM and waits for it to exit, at most
    /// [`STOP_DEADLINE`]; panics (after killing it) if it does not stop in time.
    pub fn stop(mut self) -> ExitStatus {
        let mut child = self.child.take().expect("server running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !sent {
            // No `kill` utility: fall back to SIGKILL.
            let _ = child.kill();
        }
        let deadline = Instant::now() + STOP_DEADLINE;
        loop {
            match child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "tessera did not exit within {STOP_DEADLINE:?} of SIGTERM\nstderr:\n{}",
                        tail_of_file(&self.stderr_path, 8000)
                    );
                }
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- tessera stderr ({}) ----\n{}\n---- end of tessera stderr ----",
                self.stderr_path.display(),
                tail_of_file(&self.stderr_path, 16_000)
            );
        }
    }
}

fn tail_of_file(path: &Path, max: usize) -> String {
    match fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        }
        Err(e) => format!("<cannot read {}: {e}>", path.display()),
    }
}

/// Runs the binary with `args` to completion (at most [`START_DEADLINE`]) and returns
/// its exit status, stdout and stderr.
pub fn run_tessera(args: &[OsString]) -> (ExitStatus, String, String) {
    let out_dir = tempfile::tempdir().expect("temp dir for output");
    let out_path = out_dir.path().join("stdout");
    let err_path = out_dir.path().join("stderr");
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .expect("spawn tessera");
    let deadline = Instant::now() + START_DEADLINE;
    let status = loop {
        match child.try_wait().expect("try_wait") {
            Some(status) => break status,
            None if Instant::now() < deadline => thread::sleep(POLL_INTERVAL),
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "tessera {args:?} did not exit within {START_DEADLINE:?}\nstderr:\n{}",
                    tail_of_file(&err_path, 8000)
                );
            }
        }
    };
    let stdout = String::from_utf8_lossy(&fs::read(&out_path).unwrap_or_default()).into_owned();
    let stderr = String::from_utf8_lossy(&fs::read(&err_path).unwrap_or_default()).into_owned();
    (status, stdout, stderr)
}

// ---------------------------------------------------------------------------
// The HTTP/1.1 client
// ---------------------------------------------------------------------------
//
// The tests' requests all go through `RawConn`: `http_request` (one request
// with `Connection: close`, read to the close), `KeepAlive` (one connection
// reused across requests), and tests that pipeline, stall or read bodies
// themselves (`RawConn::stream`, `RawConn::take_buffered`). `parse_response`
// and `RawConn::over` frame bytes already received with the same code, so
// there is one head parser and one chunked decoder. (The floods of
// tests/hostile.rs hold bare sockets: they send a few bytes, or none, and
// only watch for the close.)

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body: de-chunked if `Transfer-Encoding: chunked`, otherwise every byte
    /// after the head up to EOF (so for HEAD and 304 it must be empty).
    pub body: Vec<u8>,
}

impl Response {
    /// First value of a header, case-insensitive name lookup.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// The header's value; panics with the whole head if it is missing.
    pub fn expect_header(&self, name: &str) -> &str {
        match self.header(name) {
            Some(v) => v,
            None => panic!("response {} lacks header {name:?}; headers: {:?}", self.status, self.headers),
        }
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        match serde_json::from_slice(&self.body) {
            Ok(v) => v,
            Err(e) => panic!("body is not JSON ({e}): {}", self.text()),
        }
    }

    /// Whether the body is framed by chunked transfer coding.
    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    /// Whether the server said it closes the connection after this answer.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// Whether a response has no body whatever its headers say: the answer to a
/// HEAD, a 1xx, 204 or 304.
fn bodyless(head_request: bool, status: u16) -> bool {
    head_request || status == 204 || status == 304 || (100..200).contains(&status)
}

/// `bytes FIRST-LAST/TOTAL` (the Content-Range of a 206 or of one part of a
/// `multipart/byteranges` body) as (first, last, total).
pub fn content_range(v: &str) -> Option<(u64, u64, u64)> {
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (first, last) = range.split_once('-')?;
    Some((first.parse().ok()?, last.parse().ok()?, total.parse().ok()?))
}

/// The bytes of `METHOD TARGET HTTP/1.1` with exactly `headers` (no Host or
/// Connection added: pass them if wanted) and the empty line.
pub fn request_bytes(method: &str, target: &str, headers: &[(&str, &str)]) -> Vec<u8> {
    let mut req = format!("{method} {target} HTTP/1.1\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

/// Sends `METHOD TARGET HTTP/1.1` with `Host` and `Connection: close` plus `headers`,
/// reads to EOF and parses the answer. The target is sent exactly as given.
pub fn http_request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> io::Result<Response> {
    let host = addr.to_string();
    let mut all = vec![("Host", host.as_str()), ("Connection", "close")];
    all.extend_from_slice(headers);
    let mut conn = RawConn::try_connect(addr, IO_TIMEOUT)?;
    conn.send(&request_bytes(method, target, &all))?;
    let raw = conn.read_until_closed()?;
    parse_response(&raw, method.eq_ignore_ascii_case("HEAD"))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Parses everything a server sent for one request, up to its close: the
/// head, then the de-chunked body if chunked, else every byte after the head
/// (for a HEAD, 204 or 304 these must be none, and for a body whatever its
/// Content-Length says: the caller compares).
pub fn parse_response(raw: &[u8], head_request: bool) -> io::Result<Response> {
    let mut conn = RawConn::over(raw);
    let head = conn.read_head().map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => invalid(format!(
            "incomplete response head ({} bytes): {:?}",
            raw.len(),
            String::from_utf8_lossy(&raw[..raw.len().min(512)])
        )),
        _ => e,
    })?;
    let body = if head.is_chunked() && !bodyless(head_request, head.status) {
        conn.read_chunked()?
    } else {
        conn.read_rest()?
    };
    Ok(Response { body, ..head })
}

/// Where `needle` first occurs in `hay` (None for an empty needle).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A parsed head's fields as owned (name, trimmed value) pairs.
fn owned_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers.iter().map(|h| (h.name.to_string(), String::from_utf8_lossy(h.value).trim().to_string())).collect()
}

pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    find(hay, needle).is_some()
}

/// Headers as a comparable set: names lowercased, values trimmed, sorted (so
/// order-insensitive but multi-valued), without the names in `exclude`.
pub fn header_set(r: &Response, exclude: &[&str]) -> Vec<(String, String)> {
    let mut set: Vec<(String, String)> = r
        .headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .filter(|(k, _)| !exclude.contains(&k.as_str()))
        .collect();
    set.sort();
    set
}

/// How a read of a connection to its end finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// The peer closed (read returned 0).
    Eof,
    /// The peer reset the connection.
    Reset,
}

/// One client connection that reads responses one at a time, framed by
/// `Content-Length` or chunked encoding, keeping whatever follows for the next.
/// Over a byte slice ([`RawConn::over`]) it frames responses already received.
pub struct RawConn<S = TcpStream> {
    pub stream: S,
    buf: Vec<u8>,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        RawConn::try_connect(addr, IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// A connection, or why not: refused, or no handshake within `timeout`.
    pub fn try_connect(addr: SocketAddr, timeout: Duration) -> io::Result<RawConn> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(RawConn { stream, buf: Vec::new() })
    }

    /// A connection whose receive buffer is `rcvbuf` bytes (set before the
    /// handshake, so the window it advertises stays that small): a field
    /// device's modest socket, or a reader the server can fill quickly.
    pub fn connect_small(addr: SocketAddr, rcvbuf: usize) -> RawConn {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(rcvbuf).expect("SO_RCVBUF");
        socket.connect_timeout(&addr.into(), IO_TIMEOUT).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
        RawConn { stream, buf: Vec::new() }
    }

    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    /// Reads until the peer closes, waiting at most the socket's read timeout
    /// for each read; a reset after some bytes counts as the close (a server
    /// may close with input unread). Returns every byte not yet consumed.
    pub fn read_until_closed(&mut self) -> io::Result<Vec<u8>> {
        loop {
            match self.fill() {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if !self.buf.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => return Err(e),
            }
        }
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads everything up to the end of the stream (EOF or reset), giving up with
    /// `TimedOut` at `deadline`. Returns the unconsumed bytes and how it ended;
    /// after another error they stay buffered ([`RawConn::take_buffered`]).
    pub fn read_to_end(&mut self, deadline: Instant) -> io::Result<(Vec<u8>, Ending)> {
        let ending = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let _ = self.stream.set_read_timeout(Some(IO_TIMEOUT));
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "no end of stream by the deadline ({} bytes pending: {:?})",
                        self.buf.len(),
                        self.preview()
                    ),
                ));
            }
            self.stream.set_read_timeout(Some(left.min(Duration::from_millis(100))))?;
            match self.fill() {
                Ok(0) => break Ending::Eof,
                Ok(_) => {}
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break Ending::Reset,
                Err(e) => return Err(e),
            }
        };
        self.stream.set_read_timeout(Some(IO_TIMEOUT))?;
        Ok((std::mem::take(&mut self.buf), ending))
    }

    /// What a reader with a small buffer gets: the bytes already buffered if
    /// any, else what one read of at most `max` bytes returns. End of stream
    /// and `deadline` are errors.
    pub fn read_some(&mut self, max: usize, deadline: Instant) -> io::Result<Vec<u8>> {
        if !self.buf.is_empty() {
            return Ok(std::mem::take(&mut self.buf));
        }
        let mut chunk = vec![0u8; max];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "deadline passed while reading"));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection")),
                Ok(n) => {
                    chunk.truncate(n);
                    return Ok(chunk);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl<'a> RawConn<&'a [u8]> {
    /// Frames responses already received: `bytes` is all there is, and their
    /// end is the connection's.
    pub fn over(bytes: &'a [u8]) -> RawConn<&'a [u8]> {
        RawConn { stream: bytes, buf: Vec::new() }
    }

    /// Whether every byte has been consumed.
    pub fn at_end(&self) -> bool {
        self.buf.is_empty() && self.stream.is_empty()
    }
}

impl<S: Read> RawConn<S> {
    /// Responses read from any stream (a TLS one, say).
    pub fn wrap(stream: S) -> RawConn<S> {
        RawConn { stream, buf: Vec::new() }
    }

    /// Bytes read but not yet consumed by a response.
    pub fn buffered(&self) -> &[u8] {
        &self.buf
    }

    /// Takes the bytes read but not yet consumed (after [`RawConn::read_head`]: the
    /// start of the body), so that the caller can go on reading `stream` itself.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }

    /// Reads more into the buffer; `Ok(0)` at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; 64 * 1024];
        loop {
            match self.stream.read(&mut chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
    }

    fn fill_or_eof_error(&mut self, what: &str) -> io::Result<()> {
        if self.fill()? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("connection closed in {what} ({} bytes pending: {:?})", self.buf.len(), self.preview()),
            ));
        }
        Ok(())
    }

    fn preview(&self) -> String {
        String::from_utf8_lossy(&self.buf[..self.buf.len().min(300)]).into_owned()
    }

    /// Reads exactly one response (an interim 1xx counts as one). `head_request`:
    /// the request was HEAD, so the response has no body whatever its headers say.
    /// A response with neither length nor chunking is read to end of stream.
    pub fn read_response(&mut self, head_request: bool) -> io::Result<Response> {
        let head = self.read_head()?;
        let body = if bodyless(head_request, head.status) {
            Vec::new()
        } else if head.is_chunked() {
            self.read_chunked()?
        } else if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().map_err(|_| invalid(format!("bad Content-Length {len:?}")))?;
            self.read_body(len)?
        } else {
            self.read_rest()?
        };
        Ok(Response { body, ..head })
    }

    /// Reads one response head only (the returned body is empty); whatever was read
    /// past it stays buffered, see [`RawConn::take_buffered`]. An unparsable head is
    /// `InvalidData`; an end of stream before a whole head is `UnexpectedEof`, with
    /// what came of it still buffered.
    pub fn read_head(&mut self) -> io::Result<Response> {
        let (status, headers, head_len) = loop {
            let mut hdrs = [httparse::EMPTY_HEADER; 128];
            let mut parsed = httparse::Response::new(&mut hdrs);
            match parsed.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    let status = parsed.code.ok_or_else(|| invalid("no status code".into()))?;
                    break (status, owned_headers(parsed.headers), n);
                }
                Ok(httparse::Status::Partial) => self.fill_or_eof_error("a response head")?,
                Err(e) => return Err(invalid(format!("unparsable response ({e}): {:?}", self.preview()))),
            }
        };
        self.buf.drain(..head_len);
        Ok(Response { status, headers, body: Vec::new() })
    }

    /// Reads a body of exactly `len` bytes. An end of stream before it is an
    /// error, and what did arrive stays buffered.
    pub fn read_body(&mut self, len: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < len {
            self.fill_or_eof_error("a body")?;
        }
        Ok(self.buf.drain(..len).collect())
    }

    /// Reads to the end of the stream: a body delimited by the close.
    pub fn read_rest(&mut self) -> io::Result<Vec<u8>> {
        while self.fill()? > 0 {}
        Ok(std::mem::take(&mut self.buf))
    }

    /// Reads a chunked body through its last chunk and trailers; returns it de-chunked.
    pub fn read_chunked(&mut self) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        loop {
            let line_end = loop {
                match find(&self.buf, b"\r\n") {
                    Some(i) => break i,
                    None => self.fill_or_eof_error("a chunk size line")?,
                }
            };
            let line = String::from_utf8_lossy(&self.buf[..line_end]).into_owned();
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size_str, 16).map_err(|_| invalid(format!("bad chunk size {size_str:?}")))?;
            self.buf.drain(..line_end + 2);
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let end = loop {
                        match find(&self.buf, b"\r\n") {
                            Some(i) => break i,
                            None => self.fill_or_eof_error("chunked trailers")?,
                        }
                    };
                    self.buf.drain(..end + 2);
                    if end == 0 {
                        return Ok(out);
                    }
                }
            }
            while self.buf.len() < size + 2 {
                self.fill_or_eof_error("a chunk")?;
            }
            out.extend_from_slice(&self.buf[..size]);
            if &self.buf[size..size + 2] != b"\r\n" {
                return Err(invalid("chunk not followed by CRLF".into()));
            }
            self.buf.drain(..size + 2);
        }
    }
}

/// Why a [`KeepAlive`] exchange failed.
#[derive(Debug)]
pub enum Failure {
    /// No whole head came back: the connect, the send or a read failed, or the
    /// connection ended first (`UnexpectedEof` if nothing came, `InvalidData`
    /// after part of a head).
    NoHead(io::Error),
    /// The head came, then the connection ended inside the body, after `got`
    /// of its `expected` bytes (0 of 0 for a chunked body).
    EarlyClose { status: u16, got: usize, expected: usize, error: io::Error },
    /// The answer could not be framed: an unparsable head, a bad
    /// Content-Length, or neither a length nor chunking on a kept-alive connection.
    Garbled(String),
}

/// A client that keeps one connection alive across requests, as map clients
/// and dashboards do: it connects when it has none, sends each request with
/// `Host` (and no `Connection` header), and drops the connection after a
/// failure or an answer that closes it.
pub struct KeepAlive {
    addr: SocketAddr,
    host: String,
    conn: Option<RawConn>,
    /// Connections opened so far.
    pub connects: u64,
}

impl KeepAlive {
    pub fn new(addr: SocketAddr, host: &str) -> KeepAlive {
        KeepAlive { addr, host: host.to_string(), conn: None, connects: 0 }
    }

    /// One request and its whole answer.
    pub fn exchange(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Result<Response, Failure> {
        let result = self.try_exchange(method, target, headers);
        if !matches!(&result, Ok(answer) if !answer.closes()) {
            self.conn = None;
        }
        result
    }

    fn try_exchange(&mut self, method: &str, target: &str, headers: &[(&str, &str)]) -> Result<Response, Failure> {
        if self.conn.is_none() {
            let conn = RawConn::try_connect(self.addr, IO_TIMEOUT).map_err(Failure::NoHead)?;
            conn.stream.set_nodelay(true).map_err(Failure::NoHead)?;
            self.conn = Some(conn);
            self.connects += 1;
        }
        let conn = self.conn.as_mut().expect("connected");
        let mut all = vec![("Host", self.host.as_str())];
        all.extend_from_slice(headers);
        conn.send(&request_bytes(method, target, &all)).map_err(Failure::NoHead)?;
        let head = match conn.read_head() {
            Ok(head) => head,
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return Err(Failure::Garbled(e.to_string())),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && !conn.buffered().is_empty() => {
                let part = conn.buffered().len();
                return Err(Failure::NoHead(invalid(format!("closed after {part} bytes of head"))));
            }
            Err(e) => return Err(Failure::NoHead(e)),
        };
        let status = head.status;
        if bodyless(method.eq_ignore_ascii_case("HEAD"), status) {
            return Ok(head);
        }
        let body = if head.is_chunked() {
            conn.read_chunked().map_err(|error| Failure::EarlyClose { status, got: 0, expected: 0, error })?
        } else if let Some(len) = head.header("content-length") {
            let len: usize = len.parse().map_err(|_| Failure::Garbled(format!("Content-Length {len:?}")))?;
            conn.read_body(len).map_err(|error| Failure::EarlyClose {
                status,
                got: conn.buffered().len(),
                expected: len,
                error,
            })?
        } else {
            return Err(Failure::Garbled(format!("{status} with neither length nor chunking")));
        };
        Ok(Response { body, ..head })
    }
}

// ---------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------

/// Sums the samples of metric `name` whose labels include every `(label, value)` in
/// `filter`. Returns None if no matching sample is exposed.
pub fn metric_value(text: &str, name: &str, filter: &[(&str, &str)]) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
        if &line[..name_end] != name {
            continue;
        }
        let mut rest = &line[name_end..];
        let mut labels = Vec::new();
        if rest.starts_with('{') {
            let close = closing_brace(rest)?;
            labels = parse_labels(&rest[1..close]);
            rest = &rest[close + 1..];
        }
        if !filter.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)) {
            continue;
        }
        let value: f64 = rest.split_whitespace().next()?.parse().ok()?;
        *total.get_or_insert(0.0) += value;
    }
    total
}

fn closing_brace(s: &str) -> Option<usize> {
    let mut in_quotes = false;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if in_quotes => escaped = true,
            '"' => in_quotes = !in_quotes,
            '}' if !in_quotes => return Some(i),
            _ => {}
        }
    }
    None
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while matches!(chars.peek(), Some(',') | Some(' ')) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next() != Some('=') || chars.next() != Some('"') {
            return out;
        }
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(other) => value.push(other),
                    None => break,
                },
                '"' => break,
                _ => value.push(c),
            }
        }
        out.push((key.trim().to_string(), value));
    }
}

// ---------------------------------------------------------------------------
// Files and content
// ---------------------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        out.extend_from_slice(&state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Tile-like content: a PNG signature followed by pseudo-random bytes.
pub fn tile_bytes(seed: u64, len: usize) -> Vec<u8> {
    assert!(len >= 8);
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    out.extend_from_slice(&pseudo_random(seed, len - 8));
    out
}

pub fn write_file(path: &Path, bytes: &[u8]) {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).expect("create parent dirs");
    }
    fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// Publishes `bytes` at `path` the way tile pipelines do: written under a
/// hidden temporary name beside it, then renamed over it (one atomic step
/// for readers and one `IN_MOVED_TO` for the watcher).
pub fn replace_atomically(path: &Path, bytes: &[u8]) {
    let name = path.file_name().expect("file name").to_string_lossy().into_owned();
    let tmp = path.with_file_name(format!(".{name}.tmp"));
    write_file(&tmp, bytes);
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}

/// Appends `bytes` to an existing file (as a logger does: one write).
pub fn append_file(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file =
        fs::OpenOptions::new().append(true).open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    file.write_all(bytes).unwrap_or_else(|e| panic!("append to {}: {e}", path.display()));
}

pub fn tile_path(tiles_root: &Path, tileset: &str, z: u32, x: u32, y: u32) -> PathBuf {
    tiles_root.join(tileset).join(z.to_string()).join(x.to_string()).join(format!("{y}.png"))
}

/// Writes a full XYZ pyramid of PNG tiles, zoom 0..=maxzoom; returns the number of tiles.
/// Tile (z, x, y) has content `tile_content(z, x, y)`.
pub fn write_pyramid(tiles_root: &Path, tileset: &str, maxzoom: u32) -> usize {
    let mut n = 0;
    for z in 0..=maxzoom {
        for x in 0..(1u32 << z) {
            for y in 0..(1u32 << z) {
                write_file(&tile_path(tiles_root, tileset, z, x, y), &tile_content(z, x, y));
                n += 1;
            }
        }
    }
    n
}

pub fn tile_content(z: u32, x: u32, y: u32) -> Vec<u8> {
    let seed = (u64::from(z) << 40) | (u64::from(x) << 20) | u64::from(y);
    tile_bytes(seed, 300 + ((x * 131 + y * 71 + z * 17) % 1700) as usize)
}

/// Minimal gzip (RFC 1952) of `data` using stored deflate blocks: valid for any reader.
pub fn gzip_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    let mut chunks = data.chunks(65_535).peekable();
    if chunks.peek().is_none() {
        out.extend_from_slice(&[1, 0, 0, 0xff, 0xff]);
    }
    while let Some(chunk) = chunks.next() {
        out.push(u8::from(chunks.peek().is_none()));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xEDB8_8320 & mask);
        }
    }
    !crc
}

// ---------------------------------------------------------------------------
// Geometry
// ---------------------------------------------------------------------------

fn tile_lat(y: f64, n: f64) -> f64 {
    (std::f64::consts::PI * (1.0 - 2.0 * y / n)).sinh().atan().to_degrees()
}

/// `[west, south, east, north]` of XYZ tile (z, x, y) in Web Mercator.
pub fn tile_bounds(z: u32, x: u32, y: u32) -> [f64; 4] {
    let n = f64::from(1u32 << z);
    let west = f64::from(x) / n * 360.0 - 180.0;
    let east = f64::from(x + 1) / n * 360.0 - 180.0;
    let north = tile_lat(f64::from(y), n);
    let south = tile_lat(f64::from(y + 1), n);
    [west, south, east, north]
}

pub fn union_bounds(tiles: &[(u32, u32, u32)]) -> [f64; 4] {
    let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
    for &(z, x, y) in tiles {
        let t = tile_bounds(z, x, y);
        b[0] = b[0].min(t[0]);
        b[1] = b[1].min(t[1]);
        b[2] = b[2].max(t[2]);
        b[3] = b[3].max(t[3]);
    }
    b
}

/// The JSON array `v` as four floats equal to `expected` within 1e-6.
pub fn bounds_match(v: &Value, expected: [f64; 4]) -> bool {
    let Some(arr) = v.as_array() else {
        return false;
    };
    arr.len() == 4 && arr.iter().zip(expected).all(|(a, e)| a.as_f64().is_some_and(|a| (a - e).abs() < 1e-6))
}

// ---------------------------------------------------------------------------
// Time
// ---------------------------------------------------------------------------

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Parses an RFC 3339 date-time into (seconds since the epoch, nanoseconds).
pub fn parse_rfc3339(s: &str) -> Option<(i64, u32)> {
    let b = s.as_bytes();
    if b.len() < 20 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = s.get(r)?;
        if !part.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        part.parse().ok()
    };
    if b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let mut i = 19;
    let mut nanos = 0u32;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        let frac = &s[start..i];
        if frac.is_empty() {
            return None;
        }
        let mut digits: String = frac.chars().take(9).collect();
        while digits.len() < 9 {
            digits.push('0');
        }
        nanos = digits.parse().ok()?;
    }
    let offset = match b.get(i)? {
        b'Z' | b'z' if i + 1 == b.len() => 0,
        sign @ (b'+' | b'-') if i + 6 == b.len() && b[i + 3] == b':' => {
            let off = num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60;
            if *sign == b'+' {
                off
            } else {
                -off
            }
        }
        _ => return None,
    };
    let days = days_from_civil(year, month as u32, day as u32);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    Some((secs, nanos))
}

/// Parses a JSON string value as RFC 3339; panics with context if it is not one.
pub fn json_instant(v: &Value, what: &str) -> (i64, u32) {
    let s = v.as_str().unwrap_or_else(|| panic!("{what}: expected an RFC 3339 string, got {v}"));
    parse_rfc3339(s).unwrap_or_else(|| panic!("{what}: {s:?} is not RFC 3339"))
}

/// `SystemTime` as whole seconds since the epoch.
pub fn unix_secs(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(e) => -(e.duration().as_secs() as i64),
    }
}

/// IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) of a time, truncated to the second.
pub fn http_date(t: SystemTime) -> String {
    let secs = unix_secs(t);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const WEEKDAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WEEKDAYS[days.rem_euclid(7) as usize],
        d,
        MONTHS[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

// ---------------------------------------------------------------------------
// Listings
// ---------------------------------------------------------------------------

/// A listing made comparable across restarts: every string `http://ADDR` (the port
/// changes on each start) becomes `http://HOST`, and arrays of objects are sorted.
pub fn normalise_listing(v: &Value, addr: SocketAddr) -> Value {
    let from = format!("http://{addr}");
    match v {
        Value::String(s) => Value::String(s.replace(&from, "http://HOST")),
        Value::Array(items) => {
            let mut items: Vec<Value> = items.iter().map(|i| normalise_listing(i, addr)).collect();
            items.sort_by_key(|i| i.to_string());
            Value::Array(items)
        }
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), normalise_listing(v, addr))).collect()),
        other => other.clone(),
    }
}

/// Finds the object in `list` whose `key` equals `value`.
pub fn find_by<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|item| item.get(key).and_then(Value::as_str) == Some(value))
}

/// Sorted `device/file` names of the `logs` array of a `/logs` answer.
pub fn log_names(listing: &Value) -> Vec<String> {
    let mut names: Vec<String> = listing["logs"]
        .as_array()
        .unwrap_or_else(|| panic!("`logs` is not an array: {listing}"))
        .iter()
        .map(|l| format!("{}/{}", l["device"].as_str().unwrap_or("?"), l["file"].as_str().unwrap_or("?")))
        .collect();
    names.sort();
    names
}

/// Sorted tileset names of a `/tiles` answer.
pub fn tileset_names(listing: &Value) -> Vec<String> {
    let mut names: Vec<String> = listing["tilesets"]
        .as_array()
        .unwrap_or_else(|| panic!("`tilesets` is not an array: {listing}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap_or("?").to_string())
        .collect();
    names.sort();
    names
}

// ---------------------------------------------------------------------------
// Servers with extra arguments
// ---------------------------------------------------------------------------

impl Fixture {
    /// Starts `tessera serve` over this fixture's tiles/ and logs/, with the index in
    /// `state` (so that several servers can share one fixture) and `extra` arguments
    /// such as `--transport hyper` or `--delivery buffered`.
    pub fn start_with(&self, state: &Path, extra: &[&str]) -> Server {
        let n = self.starts.get();
        self.starts.set(n + 1);
        let mut args: Vec<OsString> = vec![
            "serve".into(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--tiles".into(),
            self.tiles().into(),
            "--logs".into(),
            self.logs().into(),
            "--state".into(),
            state.into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let stderr = self.dir.path().join(format!("server-{n}.stderr"));
        Server::spawn(&args, &stderr)
    }

    /// [`Fixture::start_with`], then waits until `/readyz` answers 200.
    pub fn start_ready_with(&self, state: &Path, extra: &[&str]) -> Server {
        let server = self.start_with(state, extra);
        server.wait_ready();
        server
    }
}

/// The canonical path of a root directory, as the `root` label of the delivery metrics.
pub fn root_label(dir: &Path) -> String {
    fs::canonicalize(dir).unwrap_or_else(|e| panic!("canonicalize {}: {e}", dir.display())).display().to_string()
}

/// VmRSS of a process, in KiB.
pub fn vm_rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc/PID/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Whether the server's end of the connection from `client_port` to
/// `server_port` is still ESTABLISHED: it leaves that state the moment the
/// server closes, whatever the client does. Read from the TCP table of the
/// calling thread's network namespace (`/proc/thread-self`; `/proc/net` is
/// the main thread's), so a thread inside a test namespace sees its own.
pub fn server_side_established(server_port: u16, client_port: u16) -> bool {
    let table = fs::read_to_string("/proc/thread-self/net/tcp").expect("/proc/thread-self/net/tcp");
    let port = |addr: &str| u16::from_str_radix(addr.rsplit(':').next().unwrap_or(""), 16).ok();
    table.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.len() > 3
            && port(fields[1]) == Some(server_port)
            && port(fields[2]) == Some(client_port)
            && fields[3] == "01"
    })
}
