//! Hostile clients: path attacks of every spelling, malformed and oversized
//! request heads, absurd ranges, garbage, thousands of idle and slow
//! connections, and more connections than `max_connections` allows.
//!
//! Every test asserts outcomes (statuses, bodies, closes, timings, memory),
//! then that the server is still healthy. The tests of this file run one at
//! a time (`serial()`): several of them measure latency or open thousands of
//! sockets, and would disturb each other on a small machine. The flood of
//! idle and slow connections is second tier (`#[ignore]`, run by
//! `cargo test -- --ignored`).

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::symlink;
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;

/// How long any single hostile exchange may take before it counts as a hang.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(5);

/// Sends `bytes` on a fresh connection and reads until the server closes it
/// (or `deadline` passes). Returns every byte received; `Err` only for a
/// connect or send failure, or a hang past the deadline.
fn exchange_raw(addr: SocketAddr, bytes: &[u8], deadline: Duration) -> io::Result<Vec<u8>> {
    let mut conn = RawConn::try_connect(addr, deadline)?;
    conn.stream.set_write_timeout(Some(deadline))?;
    // A server may answer and close before it read everything (431): the
    // send can then fail with a reset, and the answer is still to be read.
    let sent = conn.send(bytes);
    let (raw, _) = conn.read_to_end(Instant::now() + deadline)?;
    if raw.is_empty() {
        sent?;
    }
    Ok(raw)
}

/// `METHOD TARGET HTTP/1.1` with Host and `Connection: close`, the target as raw bytes.
fn request_raw_target(method: &str, target: &[u8], extra: &[(&str, &str)]) -> Vec<u8> {
    let mut req = Vec::new();
    req.extend_from_slice(method.as_bytes());
    req.push(b' ');
    req.extend_from_slice(target);
    req.extend_from_slice(b" HTTP/1.1\r\nHost: tessera.test\r\nConnection: close\r\n");
    for (k, v) in extra {
        req.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    req.extend_from_slice(b"\r\n");
    req
}

fn show(target: &[u8]) -> String {
    let s = String::from_utf8_lossy(target);
    if s.len() > 120 {
        format!("{}…({} bytes)", &s[..s.char_indices().nth(100).map_or(s.len(), |(i, _)| i)], target.len())
    } else {
        format!("{s:?}")
    }
}

fn unique() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    format!("{}-{nanos}", std::process::id())
}

// ---------------------------------------------------------------------------
// 1. Path attacks
// ---------------------------------------------------------------------------

/// What the corpus must never see in an answer.
struct Canaries {
    /// In files outside every root.
    outside: String,
    /// In hidden files and hidden directories inside the roots.
    hidden: String,
}

/// The fixture of the path-attack corpus: legitimate files, canaries outside
/// the roots and hidden inside them, and every kind of symbolic link out.
fn attack_fixture(fx: &Fixture) -> Canaries {
    let id = unique();
    let canaries = Canaries { outside: format!("CANARY-OUTSIDE-{id}"), hidden: format!("CANARY-HIDDEN-{id}") };
    // Canary files look like logs and tiles, so that nothing refuses them for their content.
    let outside = format!("2024-01-01T00:00:00Z {}\n", canaries.outside).into_bytes();
    let hidden = format!("2024-01-01T00:00:00Z {}\n", canaries.hidden).into_bytes();
    let mut outside_png = b"\x89PNG\r\n\x1a\n".to_vec();
    outside_png.extend_from_slice(&outside);
    let mut hidden_png = b"\x89PNG\r\n\x1a\n".to_vec();
    hidden_png.extend_from_slice(&hidden);

    let root = fx.root();
    let (tiles, logs) = (fx.tiles(), fx.logs());

    // Outside every root: at the fixture's top (where `../..` from a root lands), and a tree.
    write_file(&root.join("canary.txt"), &outside);
    write_file(&root.join("canary.log"), &outside);
    write_file(&root.join("outside").join("secret.log"), &outside);
    write_file(&root.join("outside").join("0").join("0").join("0.png"), &outside_png);
    write_file(&root.join("outside").join("4").join("0").join("0.png"), &outside_png);

    // Legitimate content.
    write_pyramid(&tiles, "world", 2);
    write_file(&logs.join("dev1").join("real.log"), b"2024-05-01T00:00:00Z legitimate line\n");

    // Hidden files and directories inside the roots.
    write_file(&logs.join("dev1").join(".secret"), &hidden);
    write_file(&logs.join("dev1").join(".git").join("config"), &hidden);
    write_file(&logs.join(".git").join("config"), &hidden);
    write_file(&logs.join(".hidden").join("x.log"), &hidden);
    write_file(&tiles.join("world").join(".git").join("config"), &hidden);
    write_file(&tiles.join(".hidden").join("0").join("0").join("0.png"), &hidden_png);
    write_file(&tiles.join("world").join("0").join("0").join(".0.png"), &hidden_png);

    // Symbolic links out of the roots: files and directories, absolute and relative.
    let dev1 = logs.join("dev1");
    symlink(root.join("canary.txt"), dev1.join("abs.log")).unwrap();
    symlink("../../canary.txt", dev1.join("rel.log")).unwrap();
    symlink("/etc/passwd", dev1.join("passwd.log")).unwrap();
    symlink(root.join("outside"), logs.join("absdir")).unwrap();
    symlink("../outside", logs.join("reldir")).unwrap();
    // ... into the other root, to hidden names inside the root, loops, nowhere.
    symlink("../../tiles/world/0/0/0.png", dev1.join("cross.log")).unwrap();
    symlink(".secret", dev1.join("visible.log")).unwrap();
    symlink("dev1/.git", logs.join("gitdev")).unwrap();
    symlink("loop.log", dev1.join("loop.log")).unwrap();
    symlink("nowhere.log", dev1.join("dangling.log")).unwrap();
    let world = tiles.join("world");
    symlink(root.join("outside"), tiles.join("absset")).unwrap();
    symlink("../outside", tiles.join("relset")).unwrap();
    symlink(".hidden", tiles.join("hidlink")).unwrap();
    fs::create_dir_all(world.join("3").join("0")).unwrap();
    fs::create_dir_all(world.join("3").join("1")).unwrap();
    symlink(root.join("canary.txt"), world.join("3").join("0").join("0.png")).unwrap();
    symlink("../../../../canary.txt", world.join("3").join("0").join("1.png")).unwrap();
    symlink("../../.git/config", world.join("3").join("1").join("0.png")).unwrap();
    symlink(root.join("outside").join("4"), world.join("4")).unwrap();
    symlink("../../outside/4", world.join("5")).unwrap();

    // Things that are not regular files: a FIFO (an open must not hang) and,
    // where the container allows it, a character device (/dev/zero).
    let fifo = std::ffi::CString::new(dev1.join("pipe.log").to_str().unwrap()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0, "mkfifo");
    let zero = std::ffi::CString::new(dev1.join("zero.log").to_str().unwrap()).unwrap();
    let _ = unsafe { libc::mknod(zero.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) };
    canaries
}

/// Every request target of the corpus, as raw bytes.
fn attack_corpus() -> Vec<Vec<u8>> {
    // Ways to climb out of a directory, ending at the canary.
    let climbs: &[&str] = &[
        "../../canary.txt",
        "../../../canary.txt",
        "../../../../canary.txt",
        "%2e%2e/%2e%2e/canary.txt",
        "%2E%2E/%2E%2E/%2E%2E/canary.txt",
        ".%2e/.%2e/canary.txt",
        "%2e./%2e./canary.txt",
        ".%2E/%2e./../canary.txt",
        "%252e%252e/%252e%252e/canary.txt",
        "%25252e%25252e/%25252e%25252e/canary.txt",
        "..%2f..%2fcanary.txt",
        "..%2F..%2F..%2Fcanary.txt",
        "%2e%2e%2f%2e%2e%2fcanary.txt",
        "..%252f..%252fcanary.txt",
        "%252e%252e%252f%252e%252e%252fcanary.txt",
        "..\\..\\canary.txt",
        "..%5c..%5ccanary.txt",
        "..%5C..%5C..%5Ccanary.txt",
        "%2e%2e%5c%2e%2e%5ccanary.txt",
        "..%255c..%255ccanary.txt",
        "%c0%ae%c0%ae/%c0%ae%c0%ae/canary.txt",
        "%c0%ae%c0%ae%c0%af%c0%ae%c0%ae%c0%afcanary.txt",
        "..%c0%af..%c0%afcanary.txt",
        "..%c1%9c..%c1%9ccanary.txt",
        "%e0%80%ae%e0%80%ae/%e0%80%ae%e0%80%ae/canary.txt",
        "%f0%80%80%ae%f0%80%80%ae/%f0%80%80%ae%f0%80%80%ae/canary.txt",
        "%ef%bc%8e%ef%bc%8e/%ef%bc%8e%ef%bc%8e/canary.txt",
        "%ef%bc%8e%ef%bc%8e%ef%bc%8f%ef%bc%8e%ef%bc%8e%ef%bc%8fcanary.txt",
        "%e2%80%a4%e2%80%a4/%e2%80%a4%e2%80%a4/canary.txt",
        "..%e2%88%95..%e2%88%95canary.txt",
        "..%e2%81%84..%e2%81%84canary.txt",
        "..%20/..%20/canary.txt",
        "%20../%20../canary.txt",
        "..%09/..%09/canary.txt",
        "..%00/..%00/canary.txt",
        "canary.txt%00.log",
        "..;/..;/canary.txt",
        "....//....//canary.txt",
        "..././..././canary.txt",
        ".../.../canary.txt",
        "%u002e%u002e/%u002e%u002e/canary.txt",
        "%%32%65%%32%65/%%32%65%%32%65/canary.txt",
        "%2e%2e//%2e%2e//canary.txt",
        "/..//..//canary.txt",
    ];
    let prefixes = ["/logs/dev1/", "/logs/", "/logs/dev1/real.log/", "/tiles/world/0/0/", "/tiles/world/", "/tiles/"];
    let mut out: Vec<Vec<u8>> = Vec::new();
    for prefix in prefixes {
        for climb in climbs {
            out.push(format!("{prefix}{climb}").into_bytes());
        }
    }
    // Climbs placed where a tile URL has its tileset, zoom or row.
    for climb in ["..%2f..%2fcanary.txt", "%2e%2e%2f%2e%2e%2foutside", "..%5c..%5coutside", "%252e%252e%252foutside"] {
        out.push(format!("/tiles/{climb}/0/0/0.png").into_bytes());
        out.push(format!("/tiles/world/{climb}/0/0.png").into_bytes());
        out.push(format!("/tiles/world/0/{climb}/0.png").into_bytes());
        out.push(format!("/tiles/{climb}.json").into_bytes());
        out.push(format!("/logs/{climb}/secret.log").into_bytes());
        out.push(format!("/logs/{climb}").into_bytes());
    }

    let fixed: &[&str] = &[
        // Absolute paths smuggled in.
        "//etc/passwd",
        "/logs/dev1//etc/passwd",
        "/logs/dev1/%2fetc%2fpasswd",
        "/logs/%2fetc/passwd",
        "/logs/dev1/%252fetc%252fpasswd",
        "/tiles/%2fetc/0/0/0.png",
        "/logs/dev1/file:%2f%2f%2fetc%2fpasswd",
        "http://tessera.test/logs/dev1/../../canary.txt",
        "http://tessera.test/logs/dev1/%2e%2e/%2e%2e/canary.txt",
        // Symbolic links out of the roots, and to hidden names inside.
        "/logs/dev1/abs.log",
        "/logs/dev1/rel.log",
        "/logs/dev1/passwd.log",
        "/logs/absdir/secret.log",
        "/logs/reldir/secret.log",
        "/logs/absdir",
        "/logs/reldir",
        "/logs/dev1/cross.log",
        "/logs/dev1/visible.log",
        "/logs/gitdev/config",
        "/logs/dev1/loop.log",
        "/logs/dev1/dangling.log",
        "/logs/dev1/pipe.log",
        "/logs/dev1/zero.log",
        "/tiles/absset/0/0/0.png",
        "/tiles/relset/0/0/0.png",
        "/tiles/absset/4/0/0.png",
        "/tiles/absset.json",
        "/tiles/relset.json",
        "/tiles/hidlink/0/0/0.png",
        "/tiles/hidlink.json",
        "/tiles/world/3/0/0.png",
        "/tiles/world/3/0/1.png",
        "/tiles/world/3/1/0.png",
        "/tiles/world/4/0/0.png",
        "/tiles/world/5/0/0.png",
        // Hidden files and directories, plainly and encoded.
        "/logs/dev1/.secret",
        "/logs/dev1/%2esecret",
        "/logs/dev1/%2Esecret",
        "/logs/dev1/%252esecret",
        "/logs/dev1/.secret/",
        "/logs/dev1/./.secret",
        "/logs/dev1/.git/config",
        "/logs/dev1/.git%2fconfig",
        "/logs/dev1/%2egit%2fconfig",
        "/logs/.git/config",
        "/logs/%2egit/config",
        "/logs/.git",
        "/logs/.hidden",
        "/logs/.hidden/x.log",
        "/logs/%2ehidden/x.log",
        "/tiles/.hidden/0/0/0.png",
        "/tiles/%2ehidden/0/0/0.png",
        "/tiles/%2Ehidden/0/0/0.png",
        "/tiles/.hidden.json",
        "/tiles/.hidden",
        "/tiles/.hidden/",
        "/tiles/world/.git/config",
        "/tiles/world/.git/config/0.png",
        "/tiles/world/%2egit%2fconfig/0/0.png",
        "/tiles/world/0/0/.0.png",
        "/tiles/world/0/0/%2e0.png",
        // Hard-to-see names: trailing and leading spaces, look-alikes of '.',
        // zero-width characters, byte-order marks, right-to-left override.
        "/logs/dev1/.secret%20",
        "/logs/dev1/%20.secret",
        "/logs/dev1/.secret.",
        "/logs/dev1/.secret%00",
        "/logs/dev1/.secret%00.log",
        "/logs/dev1/real.log%00",
        "/logs/dev1/real.log%00.png",
        "/logs/dev1/%ef%bc%8esecret",
        "/logs/dev1/%e2%80%a4secret",
        "/logs/dev1/%e2%80%8b.secret",
        "/logs/dev1/.%e2%80%8bsecret",
        "/logs/dev1/%e2%80%8c.secret",
        "/logs/dev1/%ef%bb%bf.secret",
        "/logs/dev1/%e2%80%ae.secret",
        "/logs/dev1/%e2%80%aeterces.",
        "/logs/dev1/%d6%bc.secret",
        "/logs/%ef%bc%8egit/config",
        "/logs/%e2%80%8b.git/config",
        "/tiles/%ef%bc%8ehidden/0/0/0.png",
        "/tiles/%e2%80%8b.hidden/0/0/0.png",
        "/tiles/.hidden%20/0/0/0.png",
        "/tiles/%20.hidden/0/0/0.png",
        "/tiles/world/0/0/0.png%20",
        "/tiles/world/0/0/0.png%00",
        "/tiles/world/0/0/0%00.png",
        "/tiles/world/0/0/%ef%bc%90.png",
        "/tiles/world/%ef%bc%90/0/0.png",
        // `/logs/{device}/{file}` forms that are not a device and a file.
        "/logs/../dev1/real.log",
        "/logs/dev1/../dev1/real.log",
        "/logs/./dev1/real.log",
        "/logs/dev1/./real.log",
        "/logs/dev1/.",
        "/logs/dev1/..",
        "/logs/.",
        "/logs/..",
        "/logs/%2e",
        "/logs/%2e%2e",
        "/logs/%2e%2e/%2e%2e",
        "/logs/dev1%2freal.log",
        "/logs/dev1%2f..%2f..%2fcanary.txt",
        "/logs/dev1/real.log/..",
        "/logs/dev1/real.log/.secret",
        "/logs/%00/real.log",
        "/logs/dev1/%00",
        "/logs/dev1/%ff%fe",
        "/logs/dev1/%c0%80",
        "/logs/dev1/%",
        "/logs/dev1/%zz",
        "/logs/dev1/%2",
    ];
    out.extend(fixed.iter().map(|t| t.as_bytes().to_vec()));

    // Very long paths: about 10 KB of segments (inside the head limit), a
    // segment longer than any file name, and a target just over max_head_bytes.
    out.push(format!("/logs/{}", "a/".repeat(5_000)).into_bytes());
    out.push(format!("/tiles/{}canary.txt", "../".repeat(3_300)).into_bytes());
    out.push(format!("/logs/dev1/{}canary.txt", "%2e%2e%2f".repeat(1_100)).into_bytes());
    out.push(format!("/tiles/world/{}0/0.png", "%2e%2e/".repeat(1_400)).into_bytes());
    out.push(format!("/tiles/world/0/0/{}.png", "9".repeat(10_000)).into_bytes());
    out.push(format!("/logs/dev1/{}", "a".repeat(300)).into_bytes());
    out.push(format!("/tiles/{}/0/0/0.png", "w".repeat(300)).into_bytes());
    out.push(format!("/logs/dev1/{}", "a".repeat(16_500)).into_bytes());
    out.push(format!("/tiles/{}canary.txt", "../".repeat(5_600)).into_bytes());

    // Raw bytes the client does not encode: NUL, controls, backslashes,
    // non-ASCII (look-alikes of '.' and '/', overlong UTF-8 as sent).
    let raw: &[&[u8]] = &[
        b"/logs/dev1/\x00",
        b"/logs/dev1/..\x00/../canary.txt",
        b"/logs/dev1/real.log\x00.png",
        b"/logs/dev1/\x01.secret",
        b"/logs/dev1/\x7f",
        b"/logs/dev1/..\\..\\canary.txt",
        b"/tiles/..\\..\\canary.txt/0/0/0.png",
        b"/logs/dev1/\xc0\xae\xc0\xae/\xc0\xae\xc0\xae/canary.txt",
        b"/logs/dev1/\xe0\x80\xae\xe0\x80\xae/canary.txt",
        b"/logs/dev1/\xef\xbc\x8e\xef\xbc\x8e/\xef\xbc\x8e\xef\xbc\x8e/canary.txt",
        b"/logs/dev1/\xef\xbc\x8esecret",
        b"/logs/dev1/\xe2\x80\x8b.secret",
        b"/logs/dev1/\xe2\x80\xae.secret",
        b"/tiles/\xef\xbc\x8ehidden/0/0/0.png",
        b"/logs/dev1/\xff",
        b"/logs/dev1/\t.secret",
    ];
    out.extend(raw.iter().map(|t| t.to_vec()));
    out
}

/// `/logs/{device}` and `/tiles/{name}` with one segment are not file
/// requests: a device listing (200, with no logs for a name that is not an
/// indexed device) and a redirect to the preview page of a tileset name
/// (308 to the same segment with a `/`). They open no file, so for them
/// these answers are as safe as a 4xx.
fn harmless_listing(target: &[u8], r: &Response) -> bool {
    let Ok(target) = std::str::from_utf8(target) else { return false };
    if let Some(device) = target.strip_prefix("/logs/").filter(|d| !d.contains(['/', '?'])) {
        let empty = r.body.is_empty()
            || serde_json::from_slice::<serde_json::Value>(&r.body)
                .is_ok_and(|v| v["logs"].as_array().is_some_and(|l| l.is_empty()));
        return r.status == 200 && empty && !device.is_empty();
    }
    if let Some(name) = target.strip_prefix("/tiles/").filter(|n| !n.contains(['/', '?'])) {
        let to = r.header("location").unwrap_or_default();
        return r.status == 308 && !name.is_empty() && to.eq_ignore_ascii_case(&format!("{target}/"));
    }
    false
}

/// Runs the corpus against `server`: every answer a 4xx (or, for the
/// one-segment listing routes, see [`harmless_listing`]), no canary anywhere
/// in any answer, and the server healthy and correct afterwards.
fn run_corpus(server: &Server, canaries: &Canaries, transport: &str) {
    // Control: the routes work, so the 4xx below are refusals, not a dead server.
    let r = server.get("/logs/dev1/real.log");
    assert_eq!(r.status, 200, "[{transport}] control log");
    assert_eq!(server.get("/tiles/world/1/1/1.png").status, 200, "[{transport}] control tile");

    let passwd = fs::read_to_string("/etc/passwd").ok().filter(|p| p.contains("root:x:0:0:")).map(|_| "root:x:0:0:");
    let mut needles = vec![canaries.outside.as_str(), canaries.hidden.as_str()];
    needles.extend(passwd);

    let corpus = attack_corpus();
    let mut failures = Vec::new();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    let started = Instant::now();
    for target in &corpus {
        for method in ["GET", "HEAD"] {
            let label = format!("[{transport}] {method} {}", show(target));
            let raw = match exchange_raw(server.addr, &request_raw_target(method, target, &[]), EXCHANGE_DEADLINE) {
                Ok(raw) => raw,
                Err(e) => {
                    failures.push(format!("{label}: no answer: {e}"));
                    continue;
                }
            };
            for needle in &needles {
                if contains_bytes(&raw, needle.as_bytes()) {
                    failures.push(format!("{label}: LEAKED {needle:?}: {:?}", String::from_utf8_lossy(&raw)));
                }
            }
            match parse_response(&raw, method == "HEAD") {
                Ok(r) => {
                    *statuses.entry(r.status).or_default() += 1;
                    if !(400..500).contains(&r.status) && !harmless_listing(target, &r) {
                        failures.push(format!(
                            "{label}: status {} (expected a 4xx); body {:?}",
                            r.status,
                            String::from_utf8_lossy(&r.body[..r.body.len().min(200)])
                        ));
                    }
                }
                Err(e) if raw.is_empty() => {
                    failures.push(format!("{label}: connection closed without an answer ({e})"))
                }
                Err(e) => failures.push(format!("{label}: unparsable answer: {e}")),
            }
        }
    }
    eprintln!("[{transport}] {} targets × GET/HEAD in {:?}; statuses {statuses:?}", corpus.len(), started.elapsed());
    assert!(failures.is_empty(), "{} path attacks failed:\n{}", failures.len(), failures.join("\n"));

    // Listings name nothing outside the roots and nothing hidden.
    let listing = server.get("/logs?limit=1000");
    assert_eq!(listing.status, 200);
    let names = log_names(&listing.json());
    assert_eq!(names, vec!["dev1/real.log".to_string()], "[{transport}] /logs lists only the real log");
    let tiles = server.get_json("/tiles");
    assert_eq!(tileset_names(&tiles), vec!["world".to_string()], "[{transport}] /tiles lists only world");
    for text in [listing.text(), tiles.to_string(), server.get("/").text()] {
        for needle in &needles {
            assert!(!text.contains(needle), "[{transport}] a listing contains {needle:?}: {text}");
        }
    }

    // Still healthy and still correct.
    let r = server.get("/healthz");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]), "[{transport}] /healthz after the corpus");
    let r = server.get("/tiles/world/2/3/1.png");
    assert_eq!(r.status, 200, "[{transport}] a tile after the corpus");
    assert!(r.body == tile_content(2, 3, 1), "[{transport}] tile body after the corpus");
}

/// The path-attack corpus against tessera's own connection driver.
#[test]
fn path_attack_corpus_is_refused_by_the_driver() {
    let _serial = serial();
    let fx = Fixture::new();
    let canaries = attack_fixture(&fx);
    let server = fx.start_ready();
    run_corpus(&server, &canaries, "driver");
    assert!(server.stderr().find("panicked").is_none(), "a panic in the server:\n{}", server.stderr());
}

/// The same corpus through plain hyper (`--transport hyper`), which parses
/// request targets itself.
#[test]
fn path_attack_corpus_is_refused_by_hyper() {
    let _serial = serial();
    let fx = Fixture::new();
    let canaries = attack_fixture(&fx);
    let server = fx.start_ready_with(&fx.state(), &["--transport", "hyper"]);
    run_corpus(&server, &canaries, "hyper");
    assert!(server.stderr().find("panicked").is_none(), "a panic in the server:\n{}", server.stderr());
}

// ---------------------------------------------------------------------------
// 2. Malformed heads, absurd ranges, garbage
// ---------------------------------------------------------------------------

/// The status of the answer to `bytes`, which must come within the deadline.
fn status_of(addr: SocketAddr, bytes: &[u8], head: bool) -> Result<Response, String> {
    let raw = exchange_raw(addr, bytes, EXCHANGE_DEADLINE).map_err(|e| format!("no answer: {e}"))?;
    parse_response(&raw, head).map_err(|e| format!("unparsable answer ({} bytes): {e}", raw.len()))
}

fn headers_bytes(target: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: tessera.test\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.into_bytes()
}

#[test]
fn oversized_heads_bad_methods_and_garbage_get_clear_refusals() {
    let _serial = serial();
    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "world", 1);
    let server = fx.start_ready();
    let addr = server.addr;
    let mut failures = Vec::new();
    let mut check = |label: &str, bytes: &[u8], head: bool, ok: &dyn Fn(u16) -> bool, want: &str| match status_of(
        addr, bytes, head,
    ) {
        Ok(r) if ok(r.status) => eprintln!("{label}: {}", r.status),
        Ok(r) => failures.push(format!("{label}: status {} (expected {want}): {}", r.status, r.text())),
        Err(e) => failures.push(format!("{label}: {e}")),
    };

    // Head size: a head just under the limit is served, one over it gets 431.
    let under = vec![("X-Pad".to_string(), "a".repeat(15_000))];
    check("15 KB head", &headers_bytes("/healthz", &under), false, &|s| s == 200, "200");
    let over = vec![("X-Pad".to_string(), "a".repeat(16_400))];
    check("16.4 KB head", &headers_bytes("/healthz", &over), false, &|s| s == 431, "431");
    let huge = vec![("X-Pad".to_string(), "a".repeat(1 << 20))];
    check("1 MiB header value", &headers_bytes("/healthz", &huge), false, &|s| s == 431, "431");
    let many_small: Vec<(String, String)> = (0..2_000).map(|i| (format!("X-{i}"), "v".into())).collect();
    check("2000 header fields", &headers_bytes("/healthz", &many_small), false, &|s| s == 431, "431");
    // Header count: 50 fields are served, 65 (over max_headers = 64) get 431.
    let fifty: Vec<(String, String)> = (0..48).map(|i| (format!("X-{i}"), "v".into())).collect();
    check("50 header fields", &headers_bytes("/healthz", &fifty), false, &|s| s == 200, "200");
    let sixty_five: Vec<(String, String)> = (0..63).map(|i| (format!("X-{i}"), "v".into())).collect();
    check("65 header fields", &headers_bytes("/healthz", &sixty_five), false, &|s| s == 431, "431");
    // A head that never ends but stays under the limit per read: 431, not a buffer without end.
    let endless = format!("GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: {}", "b".repeat(40_000));
    check("unterminated 40 KB head", endless.as_bytes(), false, &|s| s == 431, "431");

    // Methods: invalid tokens are 400; a valid unknown token is 405 or 501.
    for method in ["G@T", "GET\x01", "(GET)", "GE\"T", "G{}T", "\x00GET"] {
        let bytes = format!("{method} /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        check(&format!("method {method:?}"), bytes.as_bytes(), false, &|s| s == 400, "400");
    }
    for (method, target) in [
        ("FOO", "/healthz"),
        ("FOO", "/tiles/world/0/0/0.png"),
        ("FOO", "/logs"),
        ("get", "/healthz"),
        ("PROPFIND", "/tiles"),
        ("TRACE", "/healthz"),
        ("CONNECT", "/healthz"),
        ("DELETE", "/tiles/world/0/0/0.png"),
        ("PUT", "/tiles/world/0/0/0.png"),
    ] {
        let bytes = format!("{method} {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        check(&format!("method {method} {target}"), bytes.as_bytes(), false, &|s| s == 405 || s == 501, "405 or 501");
    }
    // A long but valid method token.
    let long_method = format!("{} /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", "X".repeat(5_000));
    check("5000-letter method", long_method.as_bytes(), false, &|s| (400..500).contains(&s) || s == 501, "4xx or 501");

    // HTTP/0.9 and other versions: never an HTTP/0.9 answer (a bare body);
    // a 400 or a 505.
    let version_refusal = |s: u16| s == 400 || s == 505;
    for bytes in [
        &b"GET /healthz\r\n\r\n"[..],
        b"GET /healthz\r\n",
        b"GET /\r\n\r\n",
        b"GET /healthz HTTP/0.9\r\n\r\n",
        b"GET /healthz HTTP/2.0\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/1.2\r\nHost: t\r\n\r\n",
        b"GET /healthz HTTP/11\r\nHost: t\r\n\r\n",
        b"GET /healthz FTP/1.1\r\nHost: t\r\n\r\n",
    ] {
        check(&format!("version {:?}", String::from_utf8_lossy(bytes)), bytes, false, &version_refusal, "400 or 505");
    }

    // Garbage: random bytes, NULs, a TLS ClientHello, lone line ends.
    let random = pseudo_random(7, 4096);
    let mut tls = vec![0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03];
    tls.extend_from_slice(&pseudo_random(9, 500));
    let bad_request = |s: u16| (400..500).contains(&s);
    for (label, bytes) in [
        ("4 KiB of random bytes", random),
        ("20 KiB of NUL", vec![0u8; 20_000]),
        ("a TLS ClientHello", tls),
        ("bare LFs", b"\n\n\n\nGET /healthz HTTP/1.1\nHost: t\n\n".to_vec()),
        ("CR only", b"GET /healthz HTTP/1.1\rHost: t\r\r".to_vec()),
        ("a space before the method", b" GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()),
        ("no target", b"GET  HTTP/1.1\r\nHost: t\r\n\r\n".to_vec()),
        ("header without colon", b"GET /healthz HTTP/1.1\r\nHost: t\r\nNoColon\r\n\r\n".to_vec()),
        ("header name with space", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX Y: z\r\n\r\n".to_vec()),
        ("NUL in a header value", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-A: a\x00b\r\n\r\n".to_vec()),
    ] {
        check(label, &bytes, false, &bad_request, "a 4xx");
    }
    assert!(failures.is_empty(), "hostile heads:\n{}", failures.join("\n"));

    // Empty lines before a request (RFC 9112 2.2 lets a server skip them) and
    // a client that connects and closes at once cost nothing.
    for _ in 0..50 {
        drop(TcpStream::connect(addr).expect("connect"));
    }
    let r = status_of(addr, b"\r\n\r\nGET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", false);
    assert!(matches!(&r, Ok(r) if r.status == 200), "leading empty lines are skipped: got {r:?}");

    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "/healthz after the hostile heads");
    assert_eq!(server.get("/tiles/world/1/0/1.png").body, tile_content(1, 0, 1));
    assert!(server.stderr().find("panicked").is_none(), "a panic in the server:\n{}", server.stderr());
}

/// Checks an answer to a Range request for a file of content `file`: a 200
/// with the whole file, a 206 with the bytes its Content-Range names (single
/// or multipart), a 416 with `bytes */LEN`, or another 4xx; never a 5xx.
fn check_range_answer(r: &Response, file: &[u8]) -> Result<(), String> {
    let len = file.len();
    match r.status {
        200 => {
            if r.body != file {
                return Err(format!("200 with a body of {} bytes, not the file's {len}", r.body.len()));
            }
        }
        206 => {
            let ctype = r.header("content-type").unwrap_or_default();
            if let Some(boundary) = ctype.strip_prefix("multipart/byteranges; boundary=") {
                check_multipart(&r.body, boundary.trim_matches('"'), file)?;
            } else {
                let cr = r.header("content-range").ok_or("206 without Content-Range")?;
                let (first, last, total) = content_range_indices(cr).ok_or(format!("bad Content-Range {cr:?}"))?;
                if total != len || last < first || last >= len {
                    return Err(format!("206 with Content-Range {cr:?} for a file of {len} bytes"));
                }
                if r.body != file[first..=last] {
                    return Err(format!("206 body differs from bytes {first}-{last}"));
                }
            }
        }
        416 => {
            let cr = r.header("content-range").unwrap_or_default();
            if cr != format!("bytes */{len}") {
                return Err(format!("416 with Content-Range {cr:?}, expected \"bytes */{len}\""));
            }
        }
        s if (400..500).contains(&s) => {}
        s => return Err(format!("status {s}")),
    }
    if let Some(cl) = r.header("content-length") {
        if cl.parse::<usize>().ok() != Some(r.body.len()) {
            return Err(format!("Content-Length {cl} for a body of {} bytes", r.body.len()));
        }
    }
    Ok(())
}

/// [`content_range`] as indices into a file held in memory.
fn content_range_indices(v: &str) -> Option<(usize, usize, usize)> {
    let (first, last, total) = content_range(v)?;
    Some((first.try_into().ok()?, last.try_into().ok()?, total.try_into().ok()?))
}

fn check_multipart(body: &[u8], boundary: &str, file: &[u8]) -> Result<(), String> {
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut pos = 0;
    let mut parts = 0;
    loop {
        let start = find_from(text, delimiter.as_bytes(), pos).ok_or("multipart: missing delimiter")?;
        let after = start + delimiter.len();
        if text[after..].starts_with(b"--") {
            break;
        }
        let head_end = find_from(text, b"\r\n\r\n", after).ok_or("multipart: part head without end")?;
        let head = String::from_utf8_lossy(&text[after..head_end]).to_ascii_lowercase();
        let cr = head
            .lines()
            .find_map(|l| l.strip_prefix("content-range:"))
            .ok_or("multipart: part without Content-Range")?
            .trim()
            .to_string();
        let (first, last, total) = content_range_indices(&cr).ok_or(format!("multipart: bad Content-Range {cr}"))?;
        if total != file.len() || last < first || last >= file.len() {
            return Err(format!("multipart: Content-Range {cr} for {} bytes", file.len()));
        }
        let data = head_end + 4;
        if text.len() < data + (last - first + 1) || text[data..=data + last - first] != file[first..=last] {
            return Err(format!("multipart: part {cr} has other bytes"));
        }
        pos = data + (last - first + 1);
        parts += 1;
    }
    if parts == 0 {
        return Err("multipart without parts".into());
    }
    Ok(())
}

fn find_from(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|i| i + from)
}

#[test]
fn absurd_ranges_get_a_clear_4xx_or_a_correct_answer() {
    let _serial = serial();
    let fx = Fixture::new();
    let mut log = Vec::new();
    for i in 0..300 {
        log.extend_from_slice(format!("2024-05-01T00:{:02}:{:02}Z reading={i}\n", i / 60 % 60, i % 60).as_bytes());
    }
    write_file(&fx.logs().join("dev1").join("r.log"), &log);
    let tile = tile_bytes(5, 9_000);
    write_file(&tile_path(&fx.tiles(), "world", 0, 0, 0), &tile);
    let server = fx.start_ready();

    let thousands = vec!["0-0"; 3_000].join(",");
    let many_disjoint: String = (0..2_000).map(|i| format!("{}-{}", i * 2, i * 2)).collect::<Vec<_>>().join(",");
    let ranges: Vec<String> = vec![
        "bytes=99999999999999999999-".into(),
        "bytes=0-99999999999999999999".into(),
        "bytes=-99999999999999999999".into(),
        "bytes=18446744073709551615-".into(),
        "bytes=18446744073709551614-18446744073709551615".into(),
        "bytes=-18446744073709551616".into(),
        "bytes=-0".into(),
        "bytes=0-0".into(),
        "bytes=-1".into(),
        format!("bytes={thousands}"),
        format!("bytes={many_disjoint}"),
        "bytes=5-1".into(),
        "bytes=-5-1".into(),
        "bytes=1--5".into(),
        "bytes=--1".into(),
        "bytes=-".into(),
        "bytes=".into(),
        "bytes=,,,,".into(),
        "bytes=0-1,,2-3".into(),
        "bytes=1-2,1-2".into(),
        "bytes=0-1,2-3,4-5,6-7,8-9,10-11,12-13,14-15,16-17,18-19,20-21,22-23,24-25,26-27,28-29,30-31,32-33".into(),
        "bytes=0-1,1000000-2000000".into(),
        "bytes=1000000-2000000".into(),
        "bytes=0x10-0x20".into(),
        "bytes=+1-+2".into(),
        "bytes= 1 - 2 ".into(),
        "bytes=1.5-2".into(),
        "bytes=１-２".into(),
        "bytes=0-1;q=1".into(),
        "Bytes=0-1".into(),
        "BYTES=0-1".into(),
        "bytes 0-1".into(),
        "items=0-5".into(),
        "lines=1-2".into(),
        "none".into(),
        "=0-1".into(),
        format!("bytes=0-{}", "9".repeat(5_000)),
        format!("bytes={}", "0-1,".repeat(3_900)),
        format!("bytes=0-1{}", " ".repeat(10_000)),
        format!("bytes=0-{}", "1".repeat(20_000)),
    ];
    let mut failures = Vec::new();
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    for (target, file) in [("/logs/dev1/r.log", &log), ("/tiles/world/0/0/0.png", &tile)] {
        for range in &ranges {
            for extra in [vec![], vec![("If-Range".to_string(), "\"nope\"".to_string())]] {
                let mut headers = vec![("Range".to_string(), range.clone())];
                headers.extend(extra.clone());
                let label = format!(
                    "{target} Range {}{}",
                    show(range.as_bytes()),
                    if extra.is_empty() { "" } else { " +If-Range" }
                );
                match status_of(server.addr, &headers_bytes(target, &headers), false) {
                    Ok(r) => {
                        *seen.entry(r.status).or_default() += 1;
                        if let Err(e) = check_range_answer(&r, file) {
                            failures.push(format!("{label}: {e}"));
                        }
                    }
                    Err(e) => failures.push(format!("{label}: {e}")),
                }
            }
        }
        // Two Range fields.
        let two = vec![("Range".to_string(), "bytes=0-1".to_string()), ("Range".to_string(), "bytes=2-3".to_string())];
        match status_of(server.addr, &headers_bytes(target, &two), false) {
            Ok(r) => {
                if let Err(e) = check_range_answer(&r, file) {
                    failures.push(format!("{target} two Range fields: {e}"));
                }
            }
            Err(e) => failures.push(format!("{target} two Range fields: {e}")),
        }
    }
    eprintln!("statuses of the absurd ranges: {seen:?}");
    assert!(failures.is_empty(), "absurd ranges:\n{}", failures.join("\n"));
    // Sanity: a plain range is still a 206 and the server is healthy.
    let r = server.request("GET", "/logs/dev1/r.log", &[("Range", "bytes=10-19")]);
    assert_eq!(r.status, 206);
    assert_eq!(r.body, log[10..20]);
    assert_eq!(server.get("/healthz").status, 200, "/healthz after the absurd ranges");
}

#[test]
fn a_request_trickled_byte_by_byte_is_still_served() {
    let _serial = serial();
    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "world", 1);
    let server = fx.start_ready();
    let target = "/tiles/world/1/1/0.png";
    let bytes = request_bytes("GET", target, &[("Host", "tessera.test"), ("Accept", "*/*")]);
    let mut conn = RawConn::connect(server.addr);
    conn.stream.set_nodelay(true).expect("nodelay");
    let started = Instant::now();
    // One to three bytes per write, 15 ms apart: about 40 segments over ~0.6 s.
    let mut i = 0;
    let mut n = 1;
    while i < bytes.len() {
        let end = (i + n).min(bytes.len());
        conn.send(&bytes[i..end]).expect("send a piece of the head");
        i = end;
        n = n % 3 + 1;
        thread::sleep(Duration::from_millis(15));
    }
    let r = conn.read_response(false).expect("an answer to the trickled request");
    assert_eq!(r.status, 200, "trickled request");
    assert!(r.body == tile_content(1, 1, 0), "trickled request: body");
    eprintln!("trickled request answered after {:?}", started.elapsed());

    // The same connection still works for a normal request (keep-alive).
    conn.send(&request_bytes("GET", "/healthz", &[("Host", "tessera.test")])).expect("send");
    assert_eq!(conn.read_response(false).expect("second answer").status, 200);

    // Pipelined requests split at every byte boundary of the second head.
    let mut two = request_bytes("GET", "/healthz", &[("Host", "t")]);
    two.extend(request_bytes("GET", target, &[("Host", "t"), ("Connection", "close")]));
    let mut conn = RawConn::connect(server.addr);
    conn.stream.set_nodelay(true).expect("nodelay");
    for chunk in two.chunks(7) {
        conn.send(chunk).expect("send");
        thread::sleep(Duration::from_millis(5));
    }
    let a = conn.read_response(false).expect("first pipelined answer");
    let b = conn.read_response(false).expect("second pipelined answer");
    assert_eq!((a.status, b.status), (200, 200));
    assert!(b.body == tile_content(1, 1, 0));
}

// ---------------------------------------------------------------------------
// 3. Idle and slow connections by the thousand; the connection limit
// ---------------------------------------------------------------------------

/// Raises this process's soft RLIMIT_NOFILE to its hard limit and returns it.
fn raise_nofile() -> libc::rlim_t {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0, "getrlimit");
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) }, 0, "setrlimit");
        lim.rlim_cur = lim.rlim_max;
    }
    lim.rlim_cur
}

/// Reads what the server still sends on `stream` until it closes, or until
/// `deadline`. `Ok(bytes)`: closed (EOF or reset); `Err`: still open.
fn read_until_closed(stream: &mut TcpStream, deadline: Instant) -> Result<Vec<u8>, Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(got);
        }
        let _ = stream.set_read_timeout(Some(left.min(Duration::from_millis(200))));
        match stream.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Ok(got), // reset: closed
        }
    }
}

#[test]
#[ignore = "second tier: run by .ci/run (cargo test -- --ignored)"]
fn slowloris_and_idle_floods_are_cut_and_do_not_starve_normal_clients() {
    let _serial = serial();
    const IDLE: usize = 2_000;
    const SLOW: usize = 200;
    let limit = raise_nofile();
    assert!(
        limit >= (IDLE + SLOW + 200) as libc::rlim_t,
        "RLIMIT_NOFILE of the test process is {limit}: too low for {} client sockets",
        IDLE + SLOW
    );

    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "world", 2);
    write_file(&fx.logs().join("dev1").join("a.log"), b"2024-05-01T00:00:00Z one\n");
    let config = fx.root().join("slow.toml");
    fs::write(&config, "[http]\nhead_timeout_ms = 3000\n").expect("config");
    let server = fx.start_ready_with(&fx.state(), &["--config", config.to_str().unwrap()]);
    let pid = server.pid();
    let rss_before = vm_rss_kib(pid);

    let opened = Instant::now();
    // Slow clients: a request line, then one header byte every 500 ms.
    let mut slow: Vec<TcpStream> = (0..SLOW)
        .map(|i| {
            let mut s = TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("slow connection {i}: {e}"));
            s.set_nodelay(true).unwrap();
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Slow: ").unwrap();
            s
        })
        .collect();
    // Idle clients: connect and say nothing.
    let mut idle: Vec<TcpStream> = (0..IDLE)
        .map(|i| TcpStream::connect(server.addr).unwrap_or_else(|e| panic!("idle connection {i}: {e}")))
        .collect();
    let open_took = opened.elapsed();
    eprintln!("{IDLE} idle and {SLOW} slow connections opened in {open_took:?}");

    // The trickler: one byte per slow connection every 500 ms until told to stop.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let trickler = {
        let stop = stop.clone();
        let mut streams: Vec<TcpStream> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        thread::spawn(move || {
            let mut sent = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for s in &mut streams {
                    if s.write_all(b"a").is_ok() {
                        sent += 1;
                    }
                }
                thread::sleep(Duration::from_millis(500));
            }
            sent
        })
    };

    // While they are all open (well before the 3 s head timeout), a normal
    // client is answered promptly, on new and on kept-alive connections.
    let mut latencies = Vec::new();
    let mut rss_peak = 0;
    let mut keep = RawConn::connect(server.addr);
    for i in 0..12u32 {
        let t = Instant::now();
        let r = server.get(&format!("/tiles/world/2/{}/{}.png", i % 4, i / 4 % 4));
        let fresh = t.elapsed();
        assert_eq!(r.status, 200, "normal request {i} during the flood");
        assert!(r.body == tile_content(2, i % 4, i / 4 % 4));
        let t = Instant::now();
        keep.send(&request_bytes("GET", "/logs/dev1/a.log", &[("Host", "t")])).expect("send");
        let r = keep.read_response(false).expect("keep-alive answer during the flood");
        let kept = t.elapsed();
        assert_eq!(r.status, 200);
        latencies.push(fresh.max(kept));
        rss_peak = rss_peak.max(vm_rss_kib(pid));
        thread::sleep(Duration::from_millis(100));
    }
    let during = opened.elapsed();
    let worst = latencies.iter().max().copied().unwrap_or_default();
    eprintln!("normal requests during the flood: worst {worst:?} (all {latencies:?}), done {during:?} after opening");
    assert!(
        during < Duration::from_millis(3_000),
        "the normal requests took until {during:?} after the flood opened: the check ran past the head timeout"
    );
    assert!(worst < Duration::from_millis(500), "a normal request took {worst:?} during the flood (limit 500 ms)");

    // After the head timeout (3 s from each accept), every flood connection
    // is closed by the server: a 408 then EOF, or just EOF/reset.
    let deadline = opened + Duration::from_millis(3_000) + open_took + Duration::from_secs(4);
    let mut still_open = 0;
    let mut answered_408 = 0;
    let mut other = Vec::new();
    for (kind, streams) in [("slow", &mut slow), ("idle", &mut idle)] {
        for s in streams.iter_mut() {
            match read_until_closed(s, deadline) {
                Ok(bytes) if bytes.is_empty() => {}
                Ok(bytes) if bytes.starts_with(b"HTTP/1.1 408") => answered_408 += 1,
                Ok(bytes) => {
                    other.push(format!("{kind}: {:?}", String::from_utf8_lossy(&bytes[..bytes.len().min(80)])))
                }
                Err(_) => still_open += 1,
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let trickled = trickler.join().expect("trickler");
    let closed_after = opened.elapsed();
    rss_peak = rss_peak.max(vm_rss_kib(pid));
    eprintln!(
        "flood connections: {answered_408} got 408, {still_open} still open at {closed_after:?}, \
         {} other answers; {trickled} bytes trickled; VmRSS {rss_before} KiB before, peak {rss_peak} KiB",
        other.len()
    );
    assert_eq!(still_open, 0, "{still_open} flood connections were still open past the 3 s head timeout");
    assert!(other.is_empty(), "flood connections got other answers than 408: {:?}", &other[..other.len().min(5)]);
    assert!(answered_408 > 0, "no flood connection saw a 408");
    assert!(trickled >= SLOW, "the slow clients did send bytes ({trickled})");
    assert!(rss_peak < 200 * 1024, "VmRSS reached {rss_peak} KiB with {} connections (limit 200 MiB)", IDLE + SLOW);

    // The server is healthy afterwards and its connection gauge came back down.
    assert_eq!(server.get("/healthz").status, 200);
    drop(keep);
    assert!(
        poll_until(Duration::from_secs(5), || server.metric("tessera_connections").unwrap_or(f64::MAX) <= 1.0),
        "tessera_connections stayed at {:?} after every flood connection closed",
        server.metric("tessera_connections")
    );
}

/// Clients that send requests and then stop reading: one with a large log
/// on the sendfile path, one with thousands of pipelined small tiles (heads
/// and bodies written together). Once their socket buffers are full, the
/// server must drop them after `write_timeout_ms`, not before and not never
/// (nginx's `send_timeout`), and go on serving.
#[test]
fn clients_that_stop_reading_are_dropped_after_the_write_timeout() {
    let _serial = serial();
    const TIMEOUT: Duration = Duration::from_millis(2_000);
    let fx = Fixture::new();
    let tile = tile_bytes(7, 3_000);
    write_file(&tile_path(&fx.tiles(), "world", 0, 0, 0), &tile);
    write_file(&fx.logs().join("dev1").join("big.log"), &pseudo_random(9, 16 << 20));
    let config = fx.root().join("stall.toml");
    fs::write(&config, format!("[http]\nwrite_timeout_ms = {}\n", TIMEOUT.as_millis())).expect("config");
    let server = fx.start_ready_with(&fx.state(), &["--config", config.to_str().unwrap()]);

    let mut large = RawConn::connect(server.addr);
    large.send(&request_bytes("GET", "/logs/dev1/big.log", &[("Host", "t")])).expect("send");
    let small = RawConn::connect(server.addr);
    let request = request_bytes("GET", "/tiles/world/0/0/0.png", &[("Host", "t")]);
    let mut writer = small.stream.try_clone().expect("clone");
    // A thread of its own: once the server stops reading, this write blocks
    // until the server drops the connection (then it fails, as it should).
    let pipelined = thread::spawn(move || {
        writer.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
        let _ = writer.write_all(&request.repeat(20_000));
    });
    let sent = Instant::now();
    let ports = [large.stream.local_addr().unwrap().port(), small.stream.local_addr().unwrap().port()];
    let open = |port: u16| server_side_established(server.addr.port(), port);

    thread::sleep(TIMEOUT / 2);
    for port in ports {
        // Only a lower bound: if this thread was descheduled past the timeout,
        // there is nothing to check here.
        if sent.elapsed() < TIMEOUT * 9 / 10 {
            assert!(open(port), "the stalled client on port {port} was dropped before the write timeout");
        }
    }
    assert!(
        poll_until(Duration::from_secs(15), || ports.iter().all(|&p| !open(p))),
        "clients that stopped reading were still connected {:?} after sending",
        sent.elapsed()
    );
    let took = sent.elapsed();
    assert!(took >= TIMEOUT * 9 / 10, "dropped after {took:?}, before the {TIMEOUT:?} write timeout");
    pipelined.join().expect("writer thread");

    // The large client got its head and a prefix of the file, then the
    // close: an incomplete response (shorter than its Content-Length),
    // whose bytes are the file's.
    large.stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = large.stream.read_to_end(&mut got);
    let head_end = find(&got, b"\r\n\r\n").expect("the large client got a head") + 4;
    assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"), "head: {:?}", String::from_utf8_lossy(&got[..head_end]));
    let body = &got[head_end..];
    assert!(!body.is_empty() && body.len() < 16 << 20, "a part of the body, then the close: {} bytes", body.len());
    assert_eq!(body, &pseudo_random(9, 16 << 20)[..body.len()], "the part that arrived is the file's");

    let r = server.get("/tiles/world/0/0/0.png");
    assert_eq!(
        (r.status, r.body.as_slice()),
        (200, tile.as_slice()),
        "the server still serves (dropped after {took:?})"
    );
}

#[test]
fn max_connections_refuses_the_excess_and_recovers() {
    let _serial = serial();
    const MAX: usize = 50;
    raise_nofile();
    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "world", 1);
    let config = fx.root().join("max.toml");
    fs::write(&config, format!("[http]\nmax_connections = {MAX}\n")).expect("config");
    let server = fx.start_ready_with(&fx.state(), &["--config", config.to_str().unwrap()]);

    // MAX keep-alive connections, each answered once, so the server has
    // accepted and counted every one of them.
    let mut held: Vec<RawConn> = Vec::new();
    for i in 0..MAX {
        let mut c = RawConn::connect(server.addr);
        c.send(&request_bytes("GET", "/healthz", &[("Host", "t")])).expect("send");
        let r = c.read_response(false).unwrap_or_else(|e| panic!("connection {i} of {MAX}: {e}"));
        assert_eq!(r.status, 200, "connection {i} of {MAX}");
        held.push(c);
    }

    // Over the limit: each new connection gets a 503 or is closed, promptly.
    let try_one = |label: &str| -> Result<u16, String> {
        let mut conn = RawConn::try_connect(server.addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let _ = conn.send(&request_bytes("GET", "/healthz", &[("Host", "t"), ("Connection", "close")]));
        let bytes = match conn.read_to_end(Instant::now() + Duration::from_secs(3)) {
            Ok((bytes, _)) => bytes,
            Err(e) if e.kind() == io::ErrorKind::TimedOut => {
                return Err(format!("{label}: neither answered nor closed within 3 s ({e})"));
            }
            // Any other error: closed.
            Err(_) => conn.take_buffered(),
        };
        if bytes.is_empty() {
            return Ok(0);
        }
        parse_response(&bytes, false).map(|r| r.status).map_err(|e| format!("{label}: {e}"))
    };
    let mut refused = Vec::new();
    for i in 0..10 {
        let label = format!("connection {} with {MAX} open", MAX + 1 + i);
        match try_one(&label) {
            Ok(status) => refused.push(status),
            Err(e) => panic!("{e}"),
        }
    }
    eprintln!("answers over the limit (0 = closed without an answer): {refused:?}");
    assert!(
        refused.iter().all(|s| *s == 503 || *s == 0),
        "connections over max_connections = {MAX} must get 503 or a close, got {refused:?}"
    );

    // The held connections still work.
    for (i, c) in held.iter_mut().enumerate().take(5) {
        c.send(&request_bytes("GET", "/tiles/world/1/0/0.png", &[("Host", "t")])).expect("send");
        let r = c.read_response(false).unwrap_or_else(|e| panic!("held connection {i}: {e}"));
        assert_eq!(r.status, 200, "held connection {i}");
    }

    // Once connections close, new ones are served again.
    held.truncate(MAX - 10);
    let mut last = Err(String::new());
    let served = poll_until(Duration::from_secs(3), || {
        last = try_one("after closing 10");
        matches!(last, Ok(200))
    });
    assert!(served, "after 10 connections closed, a new one was not served: {last:?}");
    for i in 0..5 {
        let r = server.get("/tiles/world/1/1/1.png");
        assert_eq!(r.status, 200, "request {i} after the limit eased");
    }
    drop(held);
    assert!(
        poll_until(Duration::from_secs(3), || matches!(try_one("after closing all"), Ok(200))),
        "not served after every connection closed"
    );
    assert_eq!(server.get("/healthz").status, 200);
}

/// A symbolic link to a directory outside the root is never followed by the
/// start-up reconcile; it must not be followed either when the watcher hears
/// of a change behind it. Files changed outside the roots, reachable only
/// through such links, must never show up in `/logs` or `/tiles` (their
/// names, sizes, timestamps read from their content, or metadata).
#[test]
fn changes_behind_symlinked_directories_never_reach_the_listings() {
    let _serial = serial();
    let fx = Fixture::new();
    let id = unique();
    let canary = format!("CANARY-BEHIND-LINK-{id}");
    let root = fx.root();
    let (tiles, logs) = (fx.tiles(), fx.logs());
    let pyramid = write_pyramid(&tiles, "world", 1);
    write_file(&logs.join("dev1").join("a.log"), b"2024-05-01T00:00:00Z a\n");
    for dir in ["outside", "outside2", "otiles/0/0", "otiles7/0"] {
        fs::create_dir_all(root.join(dir)).unwrap();
    }
    symlink(root.join("outside"), logs.join("absdir")).unwrap();
    symlink("../outside2", logs.join("reldir")).unwrap();
    symlink(root.join("otiles"), tiles.join("absset")).unwrap();
    symlink("../otiles", tiles.join("relset")).unwrap();
    symlink(root.join("otiles7"), tiles.join("world").join("7")).unwrap();
    let server = fx.start_ready();
    let before_logs = log_names(&server.get_json("/logs?limit=1000"));
    let before_tiles = server.get_json("/tiles");
    assert_eq!(before_logs, vec!["dev1/a.log".to_string()]);
    assert_eq!(tileset_names(&before_tiles), vec!["world".to_string()]);

    // Changes outside the roots, behind the links.
    let line = format!("1999-12-31T23:59:59Z {canary}\n");
    write_file(&root.join("outside").join("new.log"), line.as_bytes());
    write_file(&root.join("outside2").join("new.log"), line.as_bytes());
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend_from_slice(canary.as_bytes());
    write_file(&root.join("otiles").join("0").join("0").join("0.png"), &png);
    write_file(&root.join("otiles").join("metadata.json"), format!("{{\"description\":\"{canary}\"}}").as_bytes());
    write_file(&root.join("otiles7").join("0").join("0.png"), &png);
    // And symbolic links to outside files created while serving (the
    // start-up walk skips links; a watcher event names the link itself).
    write_file(&root.join("late.log"), line.as_bytes());
    write_file(&root.join("late.png"), &png);
    write_file(&root.join("late.json"), format!("{{\"attribution\":\"{canary}\"}}").as_bytes());
    symlink(root.join("late.log"), logs.join("dev1").join("late.log")).unwrap();
    symlink("../../late.log", logs.join("dev1").join("late-rel.log")).unwrap();
    symlink(root.join("late.png"), tile_path(&tiles, "world", 1, 1, 1).with_file_name("0.webp")).unwrap();
    symlink(root.join("late.json"), tiles.join("world").join("metadata.json")).unwrap();
    // Then a change inside the root: once it is listed, the watcher has
    // delivered the earlier events too.
    write_file(&logs.join("dev1").join("control.log"), b"2024-05-01T00:00:01Z control\n");
    write_file(&tile_path(&tiles, "world", 2, 0, 0), &tile_content(2, 0, 0));
    let caught_up = poll_until(WATCH_DEADLINE, || {
        let names = log_names(&server.get_json("/logs?limit=1000"));
        let world = server.get_json("/tiles");
        names.contains(&"dev1/control.log".to_string())
            && find_by(&world["tilesets"], "name", "world").is_some_and(|w| w["maxzoom"] != 1)
    });
    assert!(caught_up, "the control changes inside the roots were not indexed within {WATCH_DEADLINE:?}");
    thread::sleep(Duration::from_millis(300));

    let logs_listing = server.get("/logs?limit=1000").text();
    let tiles_listing = server.get("/tiles").text();
    let mut leaks = Vec::new();
    let names = log_names(&serde_json::from_str(&logs_listing).unwrap());
    if names != ["dev1/a.log", "dev1/control.log"] {
        leaks.push(format!("/logs lists {names:?}, expected only dev1/a.log and dev1/control.log"));
    }
    let tilesets: serde_json::Value = serde_json::from_str(&tiles_listing).unwrap();
    if tileset_names(&tilesets) != ["world"] {
        leaks.push(format!("/tiles lists {:?}, expected only world", tileset_names(&tilesets)));
    }
    let world = find_by(&tilesets["tilesets"], "name", "world").cloned().unwrap_or_default();
    if world["tile_count"] != pyramid + 1 || world["maxzoom"] != 2 {
        leaks.push(format!(
            "world has tile_count {} and maxzoom {} (expected {} and 2): a tile behind world/7 -> outside was indexed",
            world["tile_count"],
            world["maxzoom"],
            pyramid + 1
        ));
    }
    for (what, text) in [
        ("/logs", logs_listing),
        ("/tiles", tiles_listing),
        ("/tiles/absset.json", server.get("/tiles/absset.json").text()),
        ("/tiles/world.json", server.get("/tiles/world.json").text()),
        ("/", server.get("/").text()),
    ] {
        if text.contains(&canary) || text.contains("1999-12-31T23:59:59") {
            leaks.push(format!("{what} shows content of a file outside the roots: {text}"));
        }
    }
    for target in [
        "/logs/absdir/new.log",
        "/logs/reldir/new.log",
        "/logs/dev1/late.log",
        "/logs/dev1/late-rel.log",
        "/tiles/absset/0/0/0.png",
        "/tiles/world/7/0/0.png",
        "/tiles/world/1/1/0.webp",
    ] {
        let r = server.get(target);
        if !(400..500).contains(&r.status) || contains_bytes(&r.body, canary.as_bytes()) {
            leaks.push(format!("GET {target}: status {}", r.status));
        }
    }
    assert!(leaks.is_empty(), "files outside the roots reached the catalog:\n{}", leaks.join("\n"));
}
