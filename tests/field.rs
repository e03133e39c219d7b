//! Field links: devices pull logs over cellular and radio links of a few KB/s
//! that stall. Each test runs the real server and its clients in network
//! namespaces of their own whose loopback is rate-limited with `tc tbf`
//! (data and ACKs cross the one shaped `lo`), and checks on each delivery path:
//!
//! - `curl` pulls a 3 MiB log at about 11 KB/s and gets every byte (sha-256):
//!   some 280 s against a write timeout of 20 s, which only a timeout that
//!   counts the client's acknowledgements as progress can pass;
//! - a reader with a small receive buffer that stops reading for 0.7x the
//!   write timeout (3 s), four times over a body of 1.25 MiB (the last stall while
//!   the server waits for its final bytes to be acknowledged), gets it whole;
//! - readers silent past the write timeout (from the start, mid-body and, on
//!   the sendfile path, in the final drain) are dropped after it, not before
//!   and not much later.
//!
//! The three scenarios of one path run at once, each in its own namespace
//! (its own link), and both paths' tests run in parallel: the test binary
//! takes about as long as one 3 MiB pull (some 4.5 minutes).
//!
//! Needs root (CAP_NET_ADMIN: `ip netns`, `tc`), `ip` and `tc` (iproute2) and
//! `curl`; without them the tests fail saying so. `.ci/run` installs them and
//! runs them in the second tier (`#[ignore]`: `cargo test -- --ignored`).

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::*;

/// The shaped link: `tc tbf` on the namespace's loopback. Through it curl
/// gets about 11.5 KB/s (the rest goes to TCP/IP headers and the ACKs that
/// share the bucket).
const RATE_KBIT: u64 = 100;
const RATE_BYTES_PER_SEC: u64 = RATE_KBIT * 1000 / 8;
/// `lo`'s MTU in the namespace: the default 65536 is larger than the bucket,
/// and tbf drops a packet larger than its burst.
const MTU: &str = "1500";
const BURST: &str = "3000";
/// How long tbf queues a packet before dropping it, as a modem's buffer: a
/// bloated one, so that the pull's socket holds a lot (below).
const QUEUE_LATENCY: &str = "2s";

/// `[http] write_timeout_ms` of the stall and silence scenarios' servers:
/// small, so that they stay short. Their readers' small windows keep the
/// link's queue short, and with it TCP's own pauses.
const WRITE_TIMEOUT: Duration = Duration::from_millis(3_000);
/// `[http] write_timeout_ms` of the pull's server. Measured over 3 MiB pulls
/// on this link: ACKs came at most 5.8 s apart (retransmission timeouts up
/// to 7.4 s), and the sendfile path's socket held 490 KB when the body had
/// been handed to it, 42 s of the link. So 20 s is above TCP's own longest
/// pause (even one doubling of it), and a server that wants its queue gone
/// within the timeout fails, while one that waits as long as the client
/// acknowledges passes.
const PULL_WRITE_TIMEOUT: Duration = Duration::from_millis(20_000);
/// The log curl pulls.
const PULL_LEN: usize = 3 << 20;
/// The body of the stall and silence scenarios: above 1 MiB, so that the
/// sendfile path waits for the socket to drain before its last byte.
const BODY_LEN: usize = (1 << 20) + (256 << 10);
/// How far from the end of the body a reader is while the sendfile path
/// waits for its queue to drain (the queue is larger than this).
const TAIL: usize = 24 << 10;
/// SO_RCVBUF asked for by the Rust readers (the kernel doubles it): a modem's
/// small window, so that a reader that stops reading stops the server soon.
const SMALL_RCVBUF: usize = 4096;
/// How long a stalled reader stops reading, each time.
const STALL: Duration = Duration::from_millis(WRITE_TIMEOUT.as_millis() as u64 * 7 / 10);
/// How long after a reader went silent the server must have dropped it.
const DROP_WITHIN: Duration = Duration::from_secs(WRITE_TIMEOUT.as_secs() + 15);

/// How long a whole body may take at the link's rate: twice the nominal
/// time, plus a minute. Every wait here is bounded by it.
fn transfer_deadline(len: usize) -> Duration {
    Duration::from_secs(2 * len as u64 / RATE_BYTES_PER_SEC + 60)
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn sendfile_path_over_a_slow_link() {
    field_link("sendfile");
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn buffered_path_over_a_slow_link() {
    field_link("buffered");
}

/// One scenario, given the delivery path under test; fails by panicking.
type Scenario = fn(&'static str);

/// Runs the three scenarios of one delivery path at once, each on its own
/// thread and link, and fails with every scenario's failure.
fn field_link(delivery: &'static str) {
    require_root_and_tools();
    let scenarios: [(&str, Scenario); 3] =
        [("pull", pull), ("stalled reader", stalled_reader), ("silent readers", silent_readers)];
    let started = Instant::now();
    let handles: Vec<_> = scenarios
        .into_iter()
        .map(|(name, scenario)| {
            let handle = thread::Builder::new()
                .name(format!("{delivery}: {name}"))
                .spawn(move || scenario(delivery))
                .expect("spawn scenario thread");
            (name, handle)
        })
        .collect();
    let failures: Vec<String> = handles
        .into_iter()
        .filter_map(|(name, handle)| handle.join().err().map(|p| format!("{name}: {}", panic_text(&*p))))
        .collect();
    eprintln!("field: {delivery} path: scenarios done in {:.1?}", started.elapsed());
    assert!(
        failures.is_empty(),
        "{delivery} path over a {RATE_KBIT} kbit/s link: {} of 3 scenarios failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panicked".into())
}

// ---------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------

/// `curl` pulls a 3 MiB log through the shaped link and gets every byte,
/// by the delivery path under test, and slowly (which proves the shaping).
fn pull(delivery: &'static str) {
    let ns = Netns::shaped();
    ns.enter();
    let fx = Fixture::new();
    let log = pseudo_random(31, PULL_LEN);
    write_file(&fx.logs().join("rtu-4").join("pull.log"), &log);
    let server = start(&ns, &fx, delivery, PULL_WRITE_TIMEOUT);
    let out = fx.root().join("pulled.log");

    let started = Instant::now();
    let deadline = transfer_deadline(PULL_LEN);
    let curl = ns
        .command("curl")
        .args(["-sS", "--max-time", &deadline.as_secs().to_string(), "-w", "%{http_code} %{size_download}", "-o"])
        .arg(&out)
        .arg(format!("{}/logs/rtu-4/pull.log", server.base_url()))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    let took = started.elapsed();
    let got = fs::read(&out).unwrap_or_default();
    let curl_said = format!(
        "curl {} after {took:.1?}, -w {:?}, stderr {:?}",
        curl.status,
        String::from_utf8_lossy(&curl.stdout),
        String::from_utf8_lossy(&curl.stderr).trim()
    );
    assert!(
        sha256(&got) == sha256(&log),
        "curl's copy differs from the log: {} of {PULL_LEN} bytes{} ({curl_said})",
        got.len(),
        first_difference(&got, &log).map(|i| format!(", first difference at byte {i}")).unwrap_or_default()
    );
    assert!(curl.status.success() && curl.stdout.starts_with(b"200 "), "{curl_said}");

    let root = root_label(&fx.logs());
    let text = server.metrics_text();
    let sent = |path: &str| metric_value(&text, "tessera_bytes_sent_total", &[("path", path), ("root", &root)]);
    let other = if delivery == "sendfile" { "buffered" } else { "sendfile" };
    assert!(
        sent(delivery).unwrap_or(0.0) >= PULL_LEN as f64 && sent(other).unwrap_or(0.0) == 0.0,
        "the body should have gone by the {delivery} path: tessera_bytes_sent_total {delivery} {:?}, {other} {:?}",
        sent(delivery),
        sent(other)
    );
    // A bound that proves the shaping, not a performance goal: unshaped
    // loopback moves 3 MiB in milliseconds.
    let nominal = Duration::from_secs(PULL_LEN as u64 / RATE_BYTES_PER_SEC);
    assert!(took >= nominal / 3, "3 MiB in {took:.1?}: the link is not shaped (nominal {nominal:?})");
    eprintln!(
        "field: {delivery}: curl pulled {PULL_LEN} bytes in {took:.1?} ({:.1} KB/s), sha-256 equal",
        PULL_LEN as f64 / took.as_secs_f64() / 1000.0
    );
}

/// A reader with a small receive buffer stops reading four times for 0.7x the
/// write timeout (the last time while the sendfile path waits for its final
/// bytes to be acknowledged), then reads on: it must get the whole body.
fn stalled_reader(delivery: &'static str) {
    let ns = Netns::shaped();
    ns.enter();
    let fx = Fixture::new();
    let body = pseudo_random(32, BODY_LEN);
    write_file(&fx.logs().join("rtu-5").join("stall.log"), &body);
    let server = start(&ns, &fx, delivery, WRITE_TIMEOUT);

    let stalls = [BODY_LEN / 5, 2 * BODY_LEN / 5, 3 * BODY_LEN / 5, BODY_LEN - TAIL];
    let started = Instant::now();
    let deadline = started + transfer_deadline(BODY_LEN) + STALL * stalls.len() as u32;
    let mut conn = request_small(server.addr, "/logs/rtu-5/stall.log");
    let len = read_head_expecting_200(&mut conn);
    assert_eq!(len, BODY_LEN, "Content-Length");
    let mut hasher = Sha256::new();
    let mut got = 0usize;
    let mut done = 0usize;
    while got < len {
        if done < stalls.len() && got >= stalls[done] {
            thread::sleep(STALL);
            done += 1;
        }
        let chunk = conn.read_some(READ_SIZE, deadline).unwrap_or_else(|e| {
            panic!(
                "the connection ended after {got} of {len} body bytes, {done} of {} stalls of {STALL:?} done, \
                 {:.1?} after the request: {e}",
                stalls.len(),
                started.elapsed()
            )
        });
        hasher.update(&chunk);
        got += chunk.len();
    }
    assert!(hasher.finalize()[..] == sha256(&body)[..], "the body read after the stalls differs from the log");
    eprintln!(
        "field: {delivery}: stalled reader got {len} bytes intact after {} stalls of {STALL:?}, in {:.1?}",
        stalls.len(),
        started.elapsed()
    );
}

/// Readers that go silent (stop reading, small receive buffer) must be
/// dropped after the write timeout: the server's end of the connection leaves
/// ESTABLISHED no sooner than 0.9x the timeout after they went silent and
/// within [`DROP_WITHIN`]; and the client never holds the whole body.
fn silent_readers(delivery: &'static str) {
    let ns = Netns::shaped();
    ns.enter();
    let fx = Fixture::new();
    write_file(&fx.logs().join("rtu-6").join("silent.log"), &pseudo_random(33, BODY_LEN));
    let server = start(&ns, &fx, delivery, WRITE_TIMEOUT);
    let addr = server.addr;

    // Silent from the start: the request, then nothing read at all.
    // Silent mid-body: the server still has most of the body to send.
    // Silent in the tail: everything but the last bytes is in the socket, and
    // the sendfile path waits for it to drain before its last byte (the
    // buffered path has written the whole body by then, so the response is
    // over and only the idle timeout applies: not a write stall).
    let mut readers = vec![("from the start", 0), ("mid-body", 256 << 10)];
    if delivery == "sendfile" {
        readers.push(("in the final drain", BODY_LEN - TAIL));
    }
    let handles: Vec<_> = readers
        .into_iter()
        .map(|(name, quiet_at)| {
            let ns_name = ns.name.clone();
            let handle = thread::spawn(move || {
                Netns::enter_by_name(&ns_name);
                silent_reader(addr, quiet_at)
            });
            (name, handle)
        })
        .collect();
    let mut failures = Vec::new();
    for (name, handle) in handles {
        match handle.join() {
            Ok(Ok(dropped_after)) => {
                eprintln!("field: {delivery}: reader silent {name} dropped {dropped_after:.1?} after it went silent")
            }
            Ok(Err(why)) => failures.push(format!("reader silent {name}: {why}")),
            Err(p) => failures.push(format!("reader silent {name}: {}", panic_text(&*p))),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("; "));

    // The server still serves.
    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "/healthz after the silent readers");
}

/// One silent reader: reads `quiet_at` body bytes (0: not even the head), then
/// nothing. Returns how long after it went silent the server dropped it.
fn silent_reader(addr: SocketAddr, quiet_at: usize) -> Result<Duration, String> {
    let mut conn = request_small(addr, "/logs/rtu-6/silent.log");
    let deadline = Instant::now() + transfer_deadline(BODY_LEN);
    let mut got = 0usize;
    if quiet_at > 0 {
        let len = read_head_expecting_200(&mut conn);
        assert_eq!(len, BODY_LEN, "Content-Length");
        got = conn.take_buffered().len();
        while got < quiet_at {
            let chunk = conn
                .read_some(READ_SIZE, deadline)
                .map_err(|e| format!("ended after {got} bytes, before going silent: {e}"))?;
            got += chunk.len();
        }
    }
    let silent = Instant::now();
    let port = conn.stream.local_addr().expect("local address").port();
    let open = || server_side_established(addr.port(), port);
    // The handshake's last ACK may wait in the link's queue behind other
    // readers' data: the server's end is SYN_RECV until it arrives.
    if quiet_at == 0 && !poll_until(Duration::from_secs(10), open) {
        return Err("the server's end of the connection never became ESTABLISHED".into());
    }
    let dropped = poll_until(DROP_WITHIN.saturating_sub(silent.elapsed()), || !open());
    let after = silent.elapsed();
    if !dropped {
        return Err(format!("still connected {after:.1?} after going silent at byte {got}"));
    }
    if after < WRITE_TIMEOUT * 9 / 10 {
        return Err(format!(
            "dropped {after:.1?} after going silent at byte {got}, before the {WRITE_TIMEOUT:?} timeout"
        ));
    }
    // What the reader can still get: the rest of its receive buffer, then
    // the close. Never the whole body, so that no client takes it as whole.
    let mut rest = Vec::new();
    conn.stream.set_read_timeout(Some(Duration::from_secs(5))).expect("read timeout");
    let _ = conn.stream.read_to_end(&mut rest);
    if quiet_at > 0 && got + rest.len() >= BODY_LEN {
        return Err(format!("dropped, yet the reader got all {BODY_LEN} body bytes"));
    }
    Ok(after)
}

// ---------------------------------------------------------------------------
// The server and its clients in a namespace
// ---------------------------------------------------------------------------

/// Starts `tessera serve` inside `ns` over the fixture with `write_timeout`
/// (stderr to
/// `server.stderr` in it), and waits until it is ready. The calling thread
/// must have entered `ns` (the readiness check connects from it).
fn start(ns: &Netns, fx: &Fixture, delivery: &str, write_timeout: Duration) -> Server {
    let config = fx.root().join("field.toml");
    fs::write(&config, format!("[http]\nwrite_timeout_ms = {}\n", write_timeout.as_millis())).expect("config");
    let mut command = ns.command(bin());
    command
        .args(["serve", "--listen", "127.0.0.1:0", "--delivery", delivery, "--config"])
        .arg(&config)
        .arg("--tiles")
        .arg(fx.tiles())
        .arg("--logs")
        .arg(fx.logs())
        .arg("--state")
        .arg(fx.state());
    let server = Server::spawn_command(command, &fx.root().join("server.stderr"));
    server.wait_ready();
    server
}

/// What one read of a slow reader takes at most, as a modem's reader would.
const READ_SIZE: usize = 4096;

/// Connects with a small receive buffer (set before connecting, so that the
/// window it advertises is small from the start) and sends `GET target`.
fn request_small(addr: SocketAddr, target: &str) -> RawConn {
    let mut conn = RawConn::connect_small(addr, SMALL_RCVBUF);
    conn.send(&request_bytes("GET", target, &[("Host", "field")])).expect("send request");
    conn
}

/// Reads the response head; asserts 200 and returns the Content-Length.
/// Body bytes read with it stay buffered for [`RawConn::read_some`].
fn read_head_expecting_200(conn: &mut RawConn) -> usize {
    conn.stream.set_read_timeout(Some(Duration::from_secs(30))).expect("read timeout");
    let r = conn.read_head().expect("response head");
    assert_eq!(r.status, 200, "status; head {:?}", r.headers);
    r.expect_header("content-length").parse().expect("Content-Length is a number")
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y).or((a.len() != b.len()).then(|| a.len().min(b.len())))
}

// ---------------------------------------------------------------------------
// Network namespaces
// ---------------------------------------------------------------------------

static NAMESPACES: AtomicUsize = AtomicUsize::new(0);

/// A network namespace whose loopback is up and shaped; deleted on drop
/// (also when a test panics). Processes still inside keep it alive until
/// they exit, so a server should be dropped before its namespace.
struct Netns {
    name: String,
}

impl Netns {
    fn shaped() -> Netns {
        let name = format!("tessera-field-{}-{}", std::process::id(), NAMESPACES.fetch_add(1, Ordering::SeqCst));
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        run("ip", &["-n", &ns.name, "link", "set", "lo", "mtu", MTU, "up"]);
        let rate = format!("{RATE_KBIT}kbit");
        let tbf = ["qdisc", "add", "dev", "lo", "root", "tbf", "rate", &rate, "burst", BURST, "latency", QUEUE_LATENCY];
        run("ip", &[&["netns", "exec", &ns.name, "tc"][..], &tbf[..]].concat());
        ns
    }

    /// `ip netns exec NAME program`: a process inside the namespace.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name]).arg(program);
        command
    }

    /// Moves the calling thread into the namespace: its sockets, and the
    /// processes and threads it starts, are then inside (network namespace
    /// membership is per thread).
    fn enter(&self) {
        Netns::enter_by_name(&self.name);
    }

    fn enter_by_name(name: &str) {
        let path = Path::new("/run/netns").join(name);
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
        // SAFETY: setns takes a descriptor, valid for the call, and a flag.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {}: {}", path.display(), io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let status = Command::new("ip").args(["netns", "del", &self.name]).stdin(Stdio::null()).status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("field: could not delete network namespace {}: {status:?}", self.name);
        }
    }
}

/// Runs a command to completion; panics with its output if it fails.
fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program} {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Fails, saying what is missing, unless the tests can shape a link: root
/// (CAP_NET_ADMIN), `ip` and `tc` (iproute2) and `curl`.
fn require_root_and_tools() {
    const NEEDS: &str = "tests/field.rs needs root (CAP_NET_ADMIN, for `ip netns` and `tc`), ip and tc \
                         (iproute2) and curl; .ci/run runs it as root and installs them";
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "{NEEDS}: running as uid {euid}");
    for (tool, arg) in [("ip", "-V"), ("tc", "-V"), ("curl", "--version")] {
        let ok = Command::new(tool).arg(arg).stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(matches!(ok, Ok(s) if s.success()), "{NEEDS}: `{tool} {arg}` did not run ({ok:?})");
    }
}
