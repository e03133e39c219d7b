//! A fleet behind a cache (issue 19): two nodes over the same data give
//! the same validators for everything, and a node tells the caches in
//! front (`[[caches]]`) what changed. The rig with Varnish, sshfs and a
//! writer is `benches/fleet`; these tests start the real server twice.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// Copies the repository's sample tiles and logs into `fx`, plus an
/// MBTiles tileset, dated an hour back (settled, as deployed data is).
fn sample_data(fx: &Fixture) {
    fx.copy_samples();
    let conn = rusqlite::Connection::open(fx.tiles().join("stations.mbtiles")).expect("create mbtiles");
    conn.execute_batch(
        "CREATE TABLE metadata (name TEXT, value TEXT);
         CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);
         CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);
         INSERT INTO metadata VALUES ('name', 'Stations'), ('format', 'png');",
    )
    .expect("schema");
    for (z, x, row) in [(0, 0, 0), (1, 0, 0), (1, 1, 1)] {
        let data = format!("\u{89}PNG\r\n\u{1a}\nstation {z}/{x}/{row}").into_bytes();
        conn.execute("INSERT INTO tiles VALUES (?1, ?2, ?3, ?4)", rusqlite::params![z, x, row, data]).unwrap();
    }
    drop(conn);
    backdate(fx.root(), "1 hour ago");
}

fn backdate(dir: &Path, when: &str) {
    let status = Command::new("find")
        .arg(dir)
        .args(["-type", "f", "-exec", "touch", "-d", when, "{}", "+"])
        .status()
        .expect("find");
    assert!(status.success());
}

/// A second fixture holding a copy of `fx`'s tiles and logs: new inodes
/// (and, with `cp -a`, the same mtimes), as a second appliance's disk.
fn copy_of(fx: &Fixture, keep_mtimes: bool) -> Fixture {
    let other = Fixture::new();
    for (from, to) in [(fx.tiles(), other.tiles()), (fx.logs(), other.logs())] {
        let flag = if keep_mtimes { "-a" } else { "-R" };
        let status = Command::new("cp").arg(flag).arg(format!("{}/.", from.display())).arg(&to).status().unwrap();
        assert!(status.success());
    }
    other
}

fn start(fx: &Fixture, toml: &str) -> Server {
    let config = fx.root().join("tessera.toml");
    std::fs::write(&config, toml).expect("config");
    // The roots come from the file (command-line roots would replace them).
    let args: Vec<std::ffi::OsString> = vec!["serve".into(), "--config".into(), config.into()];
    let server = Server::spawn(&args, &fx.root().join("server.stderr"));
    server.wait_ready();
    // Every log's time index and digest done, so that both nodes list the
    // same facts (they are taken in the background).
    assert!(
        poll_until(Duration::from_secs(20), || {
            let logs = server.get_json("/logs?limit=1000");
            logs["logs"].as_array().is_some_and(|l| l.iter().all(|l| !l["digest"].is_null()))
        }),
        "digests not computed"
    );
    server
}

/// Every URL a client of the fleet would ask: listings, TileJSON, every
/// tile (both encodings), every log, a slice of each and each device's span.
fn urls(server: &Server, fx: &Fixture) -> Vec<(String, Vec<(&'static str, &'static str)>)> {
    let mut urls = vec!["/tiles".to_string(), "/logs?limit=1000".to_string()];
    let listing = server.get_json("/tiles");
    for t in listing["tilesets"].as_array().expect("tilesets") {
        let name = t["name"].as_str().unwrap();
        urls.push(format!("/tiles/{name}.json"));
        let tms = t["scheme"] == "tms" || t["source"] == "mbtiles";
        if t["source"] == "mbtiles" {
            for (z, x, row) in [(0u32, 0u32, 0u32), (1, 0, 0), (1, 1, 1)] {
                urls.push(format!("/tiles/{name}/{z}/{x}/{}.png", (1 << z) - 1 - row));
            }
            continue;
        }
        for file in walk(&fx.tiles().join(name)) {
            let rel = file.strip_prefix(fx.tiles().join(name)).unwrap().to_str().unwrap().to_string();
            let parts: Vec<&str> = rel.split('/').collect();
            let [z, x, y] = parts[..] else { continue };
            let (y, ext) = y.split_once('.').unwrap();
            let (z, y): (u32, u32) = (z.parse().unwrap(), y.parse().unwrap());
            let y = if tms && t["scheme"] == "tms" { (1 << z) - 1 - y } else { y };
            urls.push(format!("/tiles/{name}/{z}/{x}/{y}.{ext}"));
        }
    }
    let logs = server.get_json("/logs?limit=1000");
    let mut devices = std::collections::BTreeSet::new();
    for l in logs["logs"].as_array().expect("logs") {
        let url = l["url"].as_str().unwrap();
        let path = &url[url.find("/logs/").unwrap()..];
        urls.push(path.to_string());
        if let (Some(first), Some(last)) = (l["first"].as_str(), l["last"].as_str()) {
            urls.push(format!("{path}?since={first}&until={last}"));
        }
        devices.insert(l["device"].as_str().unwrap().to_string());
    }
    for d in devices {
        urls.push(format!("/logs/{d}"));
        urls.push(format!("/logs/{d}/.lines?since=2000-01-01T00:00:00Z"));
    }
    let mut out = Vec::new();
    for u in urls {
        out.push((u.clone(), vec![]));
        if u.starts_with("/tiles/") && !u.ends_with(".json") {
            out.push((u, vec![("Accept-Encoding", "gzip")]));
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else if path.extension().is_some_and(|e| e != "json") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// Status, ETag and (for JSON) body of every URL, by URL and headers.
fn answers(server: &Server, urls: &[(String, Vec<(&'static str, &'static str)>)]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (url, headers) in urls {
        let r = server.request("GET", url, headers);
        let json = r.header("content-type").is_some_and(|t| t.contains("json"));
        let body = if json { r.text() } else { String::new() };
        out.insert(
            format!("{url} {headers:?}"),
            format!("{} etag={:?} {body}", r.status, r.header("etag").map(str::to_string)),
        );
    }
    out
}

fn assert_same(a: &BTreeMap<String, String>, b: &BTreeMap<String, String>) {
    assert_eq!(a.len(), b.len());
    let differing: Vec<_> = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).collect();
    assert!(
        differing.is_empty(),
        "{} of {} answers differ between nodes, e.g. {:?} vs {:?}",
        differing.len(),
        a.len(),
        differing.first(),
        differing.first().and_then(|(k, _)| b.get(*k))
    );
}

/// Both nodes are reached by one name (the cache's), which their absolute
/// URLs carry.
const CONFIG: &str = "listen = \"127.0.0.1:0\"\nstate = \"state\"\n[http]\npublic_url = \"http://tiles.example.net\"\n\
                      [[tiles]]\npath = \"tiles\"\n[[logs]]\npath = \"logs\"\n";

/// Two nodes over copies of the same files (other inodes, other devices,
/// the same names, lengths and mtimes) answer every URL with the same
/// ETag, version token and listing, also after the same tile is deleted
/// from both at different times.
#[test]
fn two_nodes_over_copies_give_identical_validators() {
    let a = Fixture::new();
    sample_data(&a);
    let b = copy_of(&a, true);
    let (node_a, node_b) = (start(&a, CONFIG), start(&b, CONFIG));
    let urls = urls(&node_a, &a);
    let tiles = urls.iter().filter(|(u, _)| u.matches('/').count() == 5).count();
    assert!(tiles > 100, "only {tiles} tile URLs");
    let (answers_a, answers_b) = (answers(&node_a, &urls), answers(&node_b, &urls));
    let ok = answers_a.values().filter(|v| v.starts_with("200 etag=Some")).count();
    assert!(ok + 20 > urls.len(), "only {ok} of {} URLs answered 200 with an ETag: {answers_a:?}", urls.len());
    assert_same(&answers_a, &answers_b);

    // The same tile deleted from both copies, a second apart.
    let victim = walk(&a.tiles().join("world")).pop().unwrap();
    let rel = victim.strip_prefix(a.tiles()).unwrap().to_path_buf();
    let count = |s: &Server| s.get_json("/tiles")["tilesets"].to_string();
    let before = count(&node_a);
    std::fs::remove_file(a.tiles().join(&rel)).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    std::fs::remove_file(b.tiles().join(&rel)).unwrap();
    for node in [&node_a, &node_b] {
        assert!(poll_until(Duration::from_secs(5), || count(node) != before), "deletion not seen");
    }
    assert_same(&answers(&node_a, &urls), &answers(&node_b, &urls));
    node_a.stop();
    node_b.stop();
}

/// Under `etag = "content"`, copies that did not keep mtimes still give
/// the same ETag for every tile, and the same TileJSON (its `?v=`); under
/// the default they do not (so the comparison can fail). (The listing's
/// `last_change` is each node's newest mtime: docs/FLEET.md says so.)
#[test]
fn content_etags_agree_where_mtimes_do_not() {
    let a = Fixture::new();
    sample_data(&a);
    let b = copy_of(&a, false);
    backdate(b.root(), "2 hours ago");
    let tiles_only = |urls: Vec<(String, Vec<(&'static str, &'static str)>)>| -> Vec<_> {
        urls.into_iter().filter(|(u, _)| u.matches('/').count() == 5 || u.ends_with(".json")).collect()
    };
    let differing = {
        let (node_a, node_b) = (start(&a, CONFIG), start(&b, CONFIG));
        let urls = tiles_only(urls(&node_a, &a));
        let (x, y) = (answers(&node_a, &urls), answers(&node_b, &urls));
        node_a.stop();
        node_b.stop();
        x.iter().filter(|(k, v)| y.get(*k) != Some(*v)).count()
    };
    // (Gzip tiles decompressed for a client are tagged by content anyway.)
    assert!(differing > 100, "mtime ETags should differ between copies with other mtimes");
    let content = CONFIG.replace("path = \"tiles\"\n", "path = \"tiles\"\netag = \"content\"\n");
    let (node_a, node_b) = (start(&a, &content), start(&b, &content));
    let urls = tiles_only(urls(&node_a, &a));
    let (x, y) = (answers(&node_a, &urls), answers(&node_b, &urls));
    assert!(x.values().filter(|v| v.starts_with("200 ") && v.contains("\\\"c-")).count() > 100, "{x:?}");
    assert_same(&x, &y);
    // A conditional request with the content ETag gets 304 from either node.
    let (url, _) = &urls[0];
    let etag = node_a.get(url).header("etag").unwrap().to_string();
    assert_eq!(node_b.request("GET", url, &[("If-None-Match", &etag)]).status, 304);
    node_a.stop();
    node_b.stop();
}

/// What a cache in front received: method, path and headers of each request.
type Received = Arc<Mutex<Vec<(String, String, Vec<(String, String)>)>>>;

/// A cache's invalidation endpoint on a real socket: records each request
/// and answers 503 (a cache restarting) while `failing` is above zero,
/// counting it down.
fn cache_endpoint() -> (u16, Received, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Received = Arc::default();
    let failing = Arc::new(AtomicUsize::new(0));
    let (seen, fail) = (received.clone(), failing.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (seen, fail) = (seen.clone(), fail.clone());
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (method, path) =
                        (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").to_string());
                    let mut headers = Vec::new();
                    let mut length = 0usize;
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                        let (k, v) = h.trim().split_once(':').unwrap();
                        if k.eq_ignore_ascii_case("content-length") {
                            length = v.trim().parse().unwrap();
                        }
                        headers.push((k.to_ascii_lowercase(), v.trim().to_string()));
                    }
                    let mut body = vec![0; length];
                    reader.read_exact(&mut body).unwrap();
                    seen.lock().unwrap().push((method, path, headers));
                    let failed = fail.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                    let status = if failed { "503 Service Unavailable" } else { "200 OK" };
                    let _ = write!(writer, "HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n");
                }
            });
        }
    });
    (port, received, failing)
}

fn bans(received: &Received) -> Vec<regex::Regex> {
    received
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, _, _)| m == "BAN")
        .flat_map(|(_, _, h)| {
            h.iter().filter(|(k, _)| k == "x-tessera-ban").map(|(_, v)| v.clone()).collect::<Vec<_>>()
        })
        .map(|v| regex::Regex::new(&v).unwrap_or_else(|e| panic!("ban expression {v}: {e}")))
        .collect()
}

/// A tile renamed into place is banned at the cache, with its TileJSON and
/// the listing (and nothing of another tileset), carrying the secret
/// header; a cache that fails first is retried, and the metrics count both.
#[test]
fn changes_are_sent_to_the_caches_in_front() {
    let fx = Fixture::new();
    sample_data(&fx);
    let (port, received, failing) = cache_endpoint();
    std::fs::write(fx.root().join("cache-secret"), "s3cret\n").unwrap();
    let config = format!(
        "{CONFIG}[[caches]]\nurl = \"http://127.0.0.1:{port}\"\nprotocol = \"ban\"\nsecret_header = \"X-Tessera-Secret\"\nsecret_file = \"cache-secret\"\n"
    );
    // An MBTiles file in WAL mode: its commits change only its `-wal`.
    let wal = rusqlite::Connection::open(fx.tiles().join("stations.mbtiles")).unwrap();
    wal.pragma_update(None, "journal_mode", "wal").unwrap();
    wal.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    let server = start(&fx, &config);
    // The first reconcile found every file new: the cache was told so.
    assert!(
        poll_until(Duration::from_secs(10), || {
            !received.lock().unwrap().is_empty() && server.metric("tessera_invalidations_pending") == Some(0.0)
        }),
        "the start-up changes were not sent"
    );
    received.lock().unwrap().clear();
    failing.store(1, Ordering::SeqCst);
    let version = |s: &Server| s.get_json("/tiles/world.json")["tiles"][0].as_str().unwrap().to_string();
    let old_version = version(&server);
    let before_sent = server.metric_with("tessera_invalidations_total", &[("outcome", "sent")]).unwrap_or(0.0);

    let dir = fx.tiles().join("world/9/3");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(".new.png"), b"\x89PNG\r\n\x1a\nnew").unwrap();
    std::fs::rename(dir.join(".new.png"), dir.join("7.png")).unwrap();
    let banned = |url: &str| bans(&received).iter().any(|r| r.is_match(url));
    assert!(
        poll_until(Duration::from_secs(10), || received.lock().unwrap().len() >= 2 && banned("/tiles/world/9/3/7.png")),
        "no ban for the new tile, or no retry after the 503: {:?}",
        received.lock().unwrap()
    );
    // A cache told of the change and asking this node at once gets the
    // new version, not the old one it would keep until its TTL.
    assert_ne!(version(&server), old_version, "banned before the node serves the new version");
    assert!(banned("/tiles/world/9/3/7.png?v=abc"), "query variants are banned too");
    assert!(banned("/tiles/world.json") && banned("/tiles/world.json?v=1") && banned("/tiles"));
    assert!(!banned("/tiles/world/9/3/8.png") && !banned("/tiles/countries.json") && !banned("/tiles/world2.json"));
    let requests = received.lock().unwrap().clone();
    assert!(requests.len() >= 2, "the 503 was retried: {requests:?}");
    for (method, path, headers) in &requests {
        assert_eq!((method.as_str(), path.as_str()), ("BAN", "/"));
        assert!(headers.contains(&("x-tessera-secret".to_string(), "s3cret".to_string())), "{headers:?}");
    }
    assert!(server.metric_with("tessera_invalidations_total", &[("outcome", "failed")]).unwrap_or(0.0) >= 1.0);
    assert!(server.metric_with("tessera_invalidations_total", &[("outcome", "sent")]).unwrap() > before_sent);

    // A commit to the WAL-mode MBTiles file: its tileset.
    received.lock().unwrap().clear();
    wal.execute("INSERT INTO tiles VALUES (2, 0, 0, x'89504e470d0a1a0a')", []).unwrap();
    assert!(
        poll_until(Duration::from_secs(10), || banned("/tiles/stations/2/0/3.png")),
        "no ban for a WAL commit: {:?}",
        received.lock().unwrap()
    );
    assert!(banned("/tiles/stations.json") && !banned("/tiles/world.json"));
    drop(wal);

    // A log appended to: the file with any query, the device and the listing.
    received.lock().unwrap().clear();
    let log = walk(&fx.logs().join("pump-station-7")).pop().unwrap();
    let name = log.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(b"\n").unwrap();
    let url = format!("/logs/pump-station-7/{name}");
    assert!(poll_until(Duration::from_secs(10), || banned(&url)), "no ban for the log");
    assert!(banned(&format!("{url}?since=2026-01-01T00:00:00Z")) && banned("/logs/pump-station-7/.lines?since=x"));
    assert!(banned("/logs/pump-station-7") && banned("/logs?limit=5") && !banned("/logs/feeder-12/x.log"));
    server.stop();
}

/// A cache that never answers loses its invalidations after the stated
/// attempts (counted as dropped), and serving never waits for it.
#[test]
fn an_unreachable_cache_is_given_up_and_never_slows_serving() {
    let fx = Fixture::new();
    sample_data(&fx);
    // A port nobody listens on: every connection is refused at once.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!("{CONFIG}[[caches]]\nurl = \"http://127.0.0.1:{port}\"\nprotocol = \"purge\"\n");
    let server = start(&fx, &config);
    std::fs::write(fx.tiles().join("world/0/0/0.png"), b"\x89PNG\r\n\x1a\nchanged").unwrap();
    let started = std::time::Instant::now();
    for _ in 0..50 {
        assert_eq!(server.get("/tiles/world/0/0/0.png").status, 200);
    }
    assert!(started.elapsed() < Duration::from_secs(5), "serving waited for the cache");
    assert!(
        poll_until(Duration::from_secs(60), || {
            server.metric_with("tessera_invalidations_total", &[("outcome", "dropped")]).unwrap_or(0.0) >= 1.0
        }),
        "never dropped: {}",
        server.metrics_text()
    );
    assert!(server.stderr().contains("invalidations dropped"), "the journal says so");
    server.stop();
}
