//! systemd integration (issue 7), without systemd: the protocols are plain
//! enough to play the service manager's part in a test. Socket activation
//! (`LISTEN_FDS`), readiness, status, watchdog and stopping notifications
//! (`NOTIFY_SOCKET`), and the access log's structured fields.

mod common;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;

fn serve_args(fx: &Fixture) -> Vec<String> {
    let s = |p: std::path::PathBuf| p.to_str().expect("utf-8").to_string();
    vec![
        "serve".into(),
        "--tiles".into(),
        s(fx.tiles()),
        "--logs".into(),
        s(fx.logs()),
        "--state".into(),
        s(fx.state()),
    ]
}

/// systemd hands over a listening socket as descriptor 3 with `LISTEN_FDS=1`
/// and `LISTEN_PID` set to the service's pid; tessera serves on it instead of
/// binding its own (so it needs no privilege for port 80).
#[test]
fn serves_on_a_socket_passed_by_systemd() {
    let fx = Fixture::new();
    write_file(&tile_path(&fx.tiles(), "t", 0, 0, 0), &tile_bytes(1, 800));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let fd = listener.as_raw_fd();
    // `sh` sets LISTEN_PID to its own pid, which `exec` hands to tessera.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("LISTEN_PID=$$ LISTEN_FDS=1 exec \"$0\" \"$@\"")
        .arg(bin())
        .args(serve_args(&fx))
        .args(["--listen", "127.0.0.1:1"]); // would fail if it were used
                                            // SAFETY: dup2 is async-signal-safe; it runs in the child between fork and exec.
    unsafe {
        command.pre_exec(move || {
            // dup2 onto itself would keep close-on-exec: clear it instead.
            let ok = if fd == 3 { libc::fcntl(3, libc::F_SETFD, 0) } else { libc::dup2(fd, 3) };
            if ok < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let server = Server::spawn_command(command, &fx.root().join("activated.stderr"));
    assert_eq!(server.addr, addr, "tessera must serve on the passed socket, not bind --listen");
    drop(listener); // the child has its own copy
    server.wait_ready();
    let r = server.get("/tiles/t/0/0/0.png");
    assert_eq!((r.status, r.body.len()), (200, 800));
    // Several workers share the socket: many connections all get answers.
    for _ in 0..20 {
        assert_eq!(server.get("/healthz").status, 200);
    }
    assert!(server.stderr().contains("socket activation"), "the log says where it serves:\n{}", server.stderr());
    assert!(server.stop().success(), "a clean stop exits 0");
}

fn recv_all(socket: &UnixDatagram, until: Instant) -> Vec<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until {
        match socket.recv(&mut buf) {
            Ok(n) => got.push(String::from_utf8_lossy(&buf[..n]).to_string()),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    got
}

/// `READY=1` only once the first reconcile is done, with a STATUS line that
/// counts what is served; `WATCHDOG=1` at half the watchdog period while the
/// server answers; `STOPPING=1` on SIGTERM.
#[test]
fn notifies_ready_status_watchdog_and_stopping() {
    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "world", 2);
    write_file(&fx.logs().join("pump").join("a.log"), b"2026-11-20T06:00:00Z up\n");
    let socket_path = fx.root().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("notify socket");
    socket.set_nonblocking(true).expect("nonblocking");
    // systemd names the process the watchdog is for: `sh` gives its own pid,
    // which `exec` hands to tessera.
    let mut command = Command::new("sh");
    command
        .arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(bin())
        .args(serve_args(&fx))
        .args(["--listen", "127.0.0.1:0"])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000");
    let server = Server::spawn_command(command, &fx.root().join("notify.stderr"));
    let messages = recv_all(&socket, Instant::now() + Duration::from_secs(3));
    let ready = messages.iter().position(|m| m.lines().any(|l| l == "READY=1"));
    let Some(ready) = ready else { panic!("no READY=1 in {messages:?}\n{}", server.stderr()) };
    assert_eq!(server.get("/readyz").status, 200, "READY comes after the first reconcile");
    let status = messages[ready].lines().find_map(|l| l.strip_prefix("STATUS=")).expect("a STATUS with READY");
    assert!(status.contains("1 tilesets") && status.contains("1 logs"), "status line: {status}");
    let pings = messages[ready..].iter().filter(|m| m.lines().any(|l| l == "WATCHDOG=1")).count();
    assert!(pings >= 5, "expected a ping every 200 ms for about 3 s, got {pings}: {messages:?}");

    assert!(server.stop().success());
    let after = recv_all(&socket, Instant::now() + Duration::from_millis(300));
    assert!(after.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")), "no STOPPING=1 in {after:?}");
}

/// With the access log on, each request is one event whose fields name the
/// route, status, bytes, delivery path, root and device (journal fields
/// ROUTE, STATUS, ... under systemd; `key=value` on stderr here).
#[test]
fn access_log_events_carry_structured_fields() {
    let fx = Fixture::new();
    let log = fx.logs().join("pump-7").join("flow.log");
    write_file(&log, &vec![b'x'; 50_000]);
    // Modified long ago: a small body of a file modified lately is copied, not sent by sendfile.
    let long_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options().write(true).open(&log).and_then(|f| f.set_modified(long_ago)).expect("set mtime");
    write_file(&tile_path(&fx.tiles(), "grid", 0, 0, 0), &tile_bytes(1, 700));
    let mut command = Command::new(bin());
    command.args(serve_args(&fx)).args(["--listen", "127.0.0.1:0"]).env("TESSERA_LOG", "info,tessera::access=info");
    let server = Server::spawn_command(command, &fx.root().join("access.stderr"));
    server.wait_ready();
    assert_eq!(server.get("/logs/pump-7/flow.log").status, 200);
    assert_eq!(server.get("/tiles/grid/0/0/0.png").status, 200);
    assert_eq!(server.get("/tiles/grid/0/0/0.png").status, 200); // a replay logs too
    assert_eq!(server.get("/nowhere").status, 404);
    let logged = |needles: &[&str]| {
        poll_until(Duration::from_secs(2), || {
            server.stderr().lines().any(|l| l.contains("tessera::access") && needles.iter().all(|n| l.contains(n)))
        })
    };
    let log_fields =
        ["route=\"/logs/{device}/{file}\"", "status=200", "bytes=50000", "delivery=\"sendfile\"", "device=\"pump-7\""];
    assert!(logged(&log_fields), "no access line with {log_fields:?}:\n{}", server.stderr());
    assert!(logged(&["root=\"", "tileset=\"grid\"", "bytes=700"]), "tile line:\n{}", server.stderr());
    assert!(logged(&["status=404", "path=\"/nowhere\""]), "404 line:\n{}", server.stderr());
    let lines = server
        .stderr()
        .lines()
        .filter(|l| l.contains("tessera::access") && l.contains("/tiles/grid/0/0/0.png"))
        .count();
    assert_eq!(lines, 2, "one line per request, replays included");
}
