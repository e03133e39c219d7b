//! Changes on disk become visible over HTTP within 2 s, even for files already cached.

mod common;

use std::fs;
use std::io::Write;
use std::time::Duration;

use serde_json::Value;

use common::*;

/// A world pyramid of zoom 0..=2 (21 tiles).
fn setup(fx: &Fixture) -> usize {
    write_pyramid(&fx.tiles(), "world", 2)
}

/// GETs the tile twice (so that it is cached), checks it is the file's content,
/// and returns its ETag.
fn fetch_twice(server: &Server, url: &str, expected: &[u8]) -> String {
    let mut etag = String::new();
    for round in 0..2 {
        let r = server.get(url);
        assert_eq!(r.status, 200, "GET {url} (round {round})");
        assert!(r.body == expected, "GET {url} (round {round}): wrong body");
        etag = r.expect_header("etag").to_string();
    }
    etag
}

/// Polls `url` until it serves `expected`; returns the answer that did. Any answer
/// other than 200 seen on the way is recorded in `not_ok`.
fn poll_for_body(server: &Server, url: &str, expected: &[u8], not_ok: &mut Vec<u16>) -> Option<Response> {
    let mut got = None;
    let mut last_len = None;
    poll_until(WATCH_DEADLINE, || {
        let r = server.get(url);
        if r.status != 200 {
            not_ok.push(r.status);
            return false;
        }
        last_len = Some(r.body.len());
        if r.body == expected {
            got = Some(r);
            return true;
        }
        false
    });
    if got.is_none() {
        eprintln!(
            "{url}: never served the new content within {WATCH_DEADLINE:?}; \
             last 200 body length {last_len:?}, expected {}",
            expected.len()
        );
    }
    got
}

fn tileset<'a>(listing: &'a Value, name: &str) -> Option<&'a Value> {
    find_by(&listing["tilesets"], "name", name)
}

#[test]
fn tile_replaced_by_rename_is_served_new() {
    let fx = Fixture::new();
    setup(&fx);
    let server = fx.start_ready();
    let url = "/tiles/world/2/1/2.png";
    let path = tile_path(&fx.tiles(), "world", 2, 1, 2);
    let old = fs::read(&path).unwrap();
    let old_etag = fetch_twice(&server, url, &old);

    // Same length as the old content: a cache keyed on size alone would serve stale bytes.
    let new = tile_bytes(0xFEED, old.len());
    assert_ne!(new, old);
    replace_atomically(&path, &new);

    let mut not_ok = Vec::new();
    let r = poll_for_body(&server, url, &new, &mut not_ok)
        .unwrap_or_else(|| panic!("{url} still stale {WATCH_DEADLINE:?} after an atomic rename"));
    assert!(not_ok.is_empty(), "an atomically replaced tile must never be missing; got statuses {not_ok:?}");
    let new_etag = r.expect_header("etag");
    assert_ne!(new_etag, old_etag, "ETag must change with the content");
    assert_eq!(r.expect_header("content-length"), new.len().to_string());

    // The old validator no longer matches.
    let r = server.request("GET", url, &[("If-None-Match", &old_etag)]);
    assert_eq!(r.status, 200, "If-None-Match with the old ETag must not be 304");
    assert!(r.body == new, "conditional GET served stale bytes");
    // And the new one does.
    let r = server.request("GET", url, &[("If-None-Match", new_etag)]);
    assert_eq!(r.status, 304, "If-None-Match with the new ETag");
}

/// A tile reached through a symbolic link inside the root: replacing the
/// link's target by rename names the target's path in the watcher's event,
/// not the link's, so the cached entry of the link finds out only by its own
/// path check (the `stat` of `FileEntry::fresh`, which follows the link).
#[test]
fn tile_behind_a_symlink_follows_its_replaced_target() {
    let fx = Fixture::new();
    setup(&fx);
    let target = tile_path(&fx.tiles(), "world", 1, 0, 0);
    let link = tile_path(&fx.tiles(), "world", 2, 3, 3);
    fs::remove_file(&link).unwrap();
    std::os::unix::fs::symlink("../../1/0/0.png", &link).unwrap();
    let server = fx.start_ready();
    let url = "/tiles/world/2/3/3.png";
    let old = fs::read(&target).unwrap();
    fetch_twice(&server, url, &old);

    let new = tile_bytes(0xBEEF, old.len());
    replace_atomically(&target, &new);
    let mut not_ok = Vec::new();
    poll_for_body(&server, url, &new, &mut not_ok)
        .unwrap_or_else(|| panic!("{url} (a link) still stale {WATCH_DEADLINE:?} after its target was replaced"));
    assert!(not_ok.is_empty(), "statuses on the way: {not_ok:?}");
}

#[test]
fn tile_rewritten_in_place_is_served_new() {
    let fx = Fixture::new();
    setup(&fx);
    let server = fx.start_ready();
    let url = "/tiles/world/2/2/1.png";
    let path = tile_path(&fx.tiles(), "world", 2, 2, 1);
    let old = fs::read(&path).unwrap();
    let mut etag = fetch_twice(&server, url, &old);

    // Grow the file, then shrink it, each time rewriting it in place.
    for (round, len) in [(1u64, old.len() + 777), (2, old.len() / 2)] {
        let new = tile_bytes(0xBEEF + round, len);
        {
            let mut f = fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
            f.write_all(&new).unwrap();
        }
        let mut not_ok = Vec::new();
        let r = poll_for_body(&server, url, &new, &mut not_ok).unwrap_or_else(|| {
            panic!(
                "{url} still stale {WATCH_DEADLINE:?} after an in-place rewrite to {len} bytes \
                 (round {round}; other statuses seen: {not_ok:?})"
            )
        });
        assert_eq!(r.expect_header("content-length"), len.to_string(), "round {round}: Content-Length");
        let new_etag = r.expect_header("etag").to_string();
        assert_ne!(new_etag, etag, "round {round}: ETag must change");
        etag = fetch_twice(&server, url, &new);
        assert_eq!(etag, new_etag, "round {round}: ETag must be stable");
    }
}

#[test]
fn deleted_tile_stops_being_served() {
    let fx = Fixture::new();
    let count = setup(&fx);
    let server = fx.start_ready();
    let url = "/tiles/world/2/3/3.png";
    let path = tile_path(&fx.tiles(), "world", 2, 3, 3);
    fetch_twice(&server, url, &fs::read(&path).unwrap());

    let listing = server.get_json("/tiles");
    let world = tileset(&listing, "world").expect("world listed");
    assert_eq!(world["tile_count"], count, "tile_count before the delete");

    fs::remove_file(&path).unwrap();

    let mut last = None;
    let gone = poll_until(WATCH_DEADLINE, || {
        let r = server.get(url);
        last = Some(r.status);
        if r.status == 404 {
            assert_eq!(r.header("access-control-allow-origin"), Some("*"), "CORS on 404");
        }
        r.status == 404
    });
    assert!(gone, "{url} still answered (last status {last:?}) {WATCH_DEADLINE:?} after deletion");
    let r = server.head(url);
    assert_eq!(r.status, 404, "HEAD {url} after deletion");

    let mut last_count = Value::Null;
    let counted = poll_until(WATCH_DEADLINE, || {
        let listing = server.get_json("/tiles");
        last_count = tileset(&listing, "world").map_or(Value::Null, |w| w["tile_count"].clone());
        last_count == count - 1
    });
    assert!(counted, "/tiles world tile_count is {last_count}, expected {} after a delete", count - 1);
    // Its neighbours are unaffected.
    assert_eq!(server.get("/tiles/world/2/3/2.png").status, 200);
}

#[test]
fn new_tileset_directory_is_indexed() {
    let fx = Fixture::new();
    setup(&fx);
    let server = fx.start_ready();
    let listing = server.get_json("/tiles");
    assert!(tileset(&listing, "fresh").is_none(), "fresh listed before it exists");

    // The directory and then, with no pause, its tiles.
    let fresh = fx.tiles().join("fresh");
    fs::create_dir(&fresh).unwrap();
    let a = tile_bytes(0xA, 1234);
    let b = tile_bytes(0xB, 4321);
    fs::create_dir_all(fresh.join("2").join("1")).unwrap();
    fs::write(fresh.join("2").join("1").join("1.png"), &a).unwrap();
    fs::create_dir_all(fresh.join("3").join("3")).unwrap();
    fs::write(fresh.join("3").join("3").join("3.png"), &b).unwrap();

    let expected_bounds = union_bounds(&[(2, 1, 1), (3, 3, 3)]);
    let mut last = Value::Null;
    let listed = poll_until(WATCH_DEADLINE, || {
        let listing = server.get_json("/tiles");
        last = tileset(&listing, "fresh").cloned().unwrap_or(Value::Null);
        last["minzoom"] == 2
            && last["maxzoom"] == 3
            && last["tile_count"] == 2
            && bounds_match(&last["bounds"], expected_bounds)
    });
    assert!(
        listed,
        "within {WATCH_DEADLINE:?} /tiles should list fresh with minzoom 2, maxzoom 3, \
         tile_count 2, bounds {expected_bounds:?}; last seen: {last}"
    );
    assert_eq!(last["format"], "png");
    assert_eq!(last["scheme"], "xyz");
    json_instant(&last["last_change"], "fresh last_change");

    for (url, bytes) in [("/tiles/fresh/2/1/1.png", &a), ("/tiles/fresh/3/3/3.png", &b)] {
        let r = server.get(url);
        assert_eq!(r.status, 200, "GET {url}");
        assert!(r.body == *bytes, "GET {url}: wrong body");
    }
    let tj = server.get_json("/tiles/fresh.json");
    assert_eq!(tj["minzoom"], 2, "TileJSON minzoom: {tj}");
    assert_eq!(tj["maxzoom"], 3, "TileJSON maxzoom: {tj}");
    assert!(bounds_match(&tj["bounds"], expected_bounds), "TileJSON bounds {} != {expected_bounds:?}", tj["bounds"]);
    // The existing tileset is still there.
    let listing = server.get_json("/tiles");
    assert!(tileset(&listing, "world").is_some(), "world disappeared");
}

/// Waits until `/tiles` lists `name` with `count` tiles; the last listing
/// entry seen otherwise.
fn wait_for_count(server: &Server, name: &str, count: u64) -> Result<(), Value> {
    let mut last = Value::Null;
    if poll_until(WATCH_DEADLINE, || {
        last = tileset(&server.get_json("/tiles"), name).cloned().unwrap_or(Value::Null);
        last["tile_count"] == count
    }) {
        Ok(())
    } else {
        Err(last)
    }
}

/// A directory renamed over an empty one, and two directories swapped with
/// RENAME_EXCHANGE, stay watched under their new names: tiles written into
/// them afterwards reach the catalog (the listing's tile counts), which has
/// no per-request check to fall back on.
#[test]
fn directories_moved_over_others_stay_watched() {
    let fx = Fixture::new();
    setup(&fx);
    let tiles = fx.tiles();
    for (name, z) in [("east", 1), ("west", 2)] {
        write_file(&tiles.join(format!("{name}/{z}/0/0.png")), &tile_bytes(z, 300));
    }
    fs::create_dir_all(tiles.join("east/3")).unwrap();
    let server = fx.start_ready();
    wait_for_count(&server, "east", 1).expect("east at start");

    // A zoom level prepared under a hidden name, renamed over the empty one.
    write_file(&tiles.join(".z3/0/0.png"), &tile_bytes(30, 300));
    fs::rename(tiles.join(".z3"), tiles.join("east/3")).unwrap();
    wait_for_count(&server, "east", 2).expect("east with zoom 3 renamed in");
    write_file(&tiles.join("east/3/0/1.png"), &tile_bytes(31, 300));
    if let Err(last) = wait_for_count(&server, "east", 3) {
        panic!("a tile written into the directory renamed over another is never indexed: {last}");
    }

    // The two tilesets swapped in one step.
    nix::fcntl::renameat2(
        nix::fcntl::AT_FDCWD,
        &tiles.join("east"),
        nix::fcntl::AT_FDCWD,
        &tiles.join("west"),
        nix::fcntl::RenameFlags::RENAME_EXCHANGE,
    )
    .expect("renameat2 RENAME_EXCHANGE");
    wait_for_count(&server, "west", 3).expect("west after the exchange");
    wait_for_count(&server, "east", 1).expect("east after the exchange");
    for name in ["east", "west"] {
        write_file(&tiles.join(format!("{name}/4/0/0.png")), &tile_bytes(40, 300));
    }
    for (name, count) in [("east", 2), ("west", 4)] {
        if let Err(last) = wait_for_count(&server, name, count) {
            panic!("{name}: a tile written after RENAME_EXCHANGE is never indexed: {last}");
        }
    }
    assert_eq!(server.get("/tiles/west/4/0/0.png").body, tile_bytes(40, 300));
}

/// The driver replays the Router's answer to a repeated plain GET of a file;
/// a replay must end the moment the file changes, by rename or in place. One
/// keep-alive connection keeps every request on one worker thread (replays
/// are per thread).
#[test]
fn replayed_answers_end_when_the_file_changes() {
    let fx = Fixture::new();
    let path = tile_path(&fx.tiles(), "rp", 3, 2, 1);
    let first = tile_bytes(1, 5_000);
    write_file(&path, &first);
    let server = fx.start_ready();
    let target = "/tiles/rp/3/2/1.png";
    let mut conn = RawConn::connect(server.addr);
    let get = |conn: &mut RawConn| {
        conn.send(&request_bytes("GET", target, &[("Host", "tessera.test")])).expect("send");
        conn.read_response(false).expect("response")
    };

    let before = server.metric("tessera_replays_total").unwrap_or(0.0);
    let a = get(&mut conn);
    let b = get(&mut conn);
    let c = get(&mut conn);
    assert_eq!((a.status, b.status, c.status), (200, 200, 200));
    assert!(a.body == first && b.body == first && c.body == first);
    // The counter moves just after a replay's bytes are written: poll.
    let replayed = || server.metric("tessera_replays_total").unwrap_or(0.0) - before;
    assert!(
        poll_until(Duration::from_secs(2), || replayed() >= 2.0),
        "the repeats should be replays, counted {}",
        replayed()
    );
    let replay_headers = header_set(&b, &["date"]);
    assert_eq!(header_set(&a, &["date"]), replay_headers, "a replay has the Router's headers");
    for r in [&b, &c] {
        assert!(r.header("date").is_some_and(httpdate_like), "a replay carries Date (RFC 9110 6.6.1)");
    }

    // Atomic replace: the next answers carry the new bytes within the deadline.
    let second = tile_bytes(2, 6_000);
    replace_atomically(&path, &second);
    assert!(poll_until(Duration::from_secs(2), || get(&mut conn).body == second), "a replay outlived an atomic rename");
    let again = get(&mut conn);
    assert_eq!(again.body, second);
    assert_eq!(again.header("content-length"), Some("6000"));

    // In place, shorter: length and bytes change together. A response that
    // began before the server saw the rewrite may end early: the connection
    // then closes (never a body that disagrees with its length), and the
    // client reconnects.
    let third = tile_bytes(3, 3_000);
    write_file(&path, &third);
    assert!(
        poll_until(Duration::from_secs(2), || {
            conn.send(&request_bytes("GET", target, &[("Host", "tessera.test")])).expect("send");
            let Ok(r) = conn.read_response(false) else {
                conn = RawConn::connect(server.addr);
                return false;
            };
            assert_eq!(
                r.body.len().to_string(),
                r.header("content-length").unwrap_or_default(),
                "length disagrees with body"
            );
            r.body == third
        }),
        "a replay outlived an in-place rewrite"
    );
}

/// `Sun, 22 Nov 2026 03:49:24 GMT`: an IMF-fixdate.
fn httpdate_like(value: &str) -> bool {
    value.len() == 29 && value.ends_with(" GMT") && value.as_bytes()[3] == b','
}

/// A command that runs tessera with `args` in a user namespace of its own
/// whose inotify watch limit (`user.max_inotify_watches`) is `limit`: root of
/// that namespace may lower it, and the kernel then refuses the watch past
/// it with `ENOSPC`, as on a machine whose `fs.inotify.max_user_watches` ran
/// out. None (with a message) where user namespaces cannot be made.
fn under_watch_limit(limit: u32, args: &[&std::ffi::OsStr]) -> Option<std::process::Command> {
    let script = format!("echo {limit} > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\"");
    let probe = std::process::Command::new("unshare")
        .args(["-Ur", "sh", "-c", &script, "true"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        skip("`unshare -Ur` cannot lower max_inotify_watches here (no user namespaces)");
        return None;
    }
    let mut command = std::process::Command::new("unshare");
    command.args(["-Ur", "sh", "-c", &script, &bin()]).args(args);
    Some(command)
}

/// The configuration of a tiles root polled every `poll_ms` and a logs root.
fn limit_config(fx: &Fixture, poll_ms: u64) -> std::path::PathBuf {
    let quote = |p: std::path::PathBuf| format!("{:?}", p.display().to_string());
    let text = format!(
        "listen = \"127.0.0.1:0\"\nstate = {}\n[[tiles]]\npath = {}\npoll_interval_ms = {poll_ms}\n[[logs]]\npath = {}\n",
        quote(fx.state()),
        quote(fx.tiles()),
        quote(fx.logs()),
    );
    let path = fx.root().join("tessera.toml");
    fs::write(&path, text).unwrap();
    path
}

fn late_tileset(server: &Server) -> (Value, Value) {
    let listing = server.get_json("/tiles");
    let late = tileset(&listing, "late").cloned().unwrap_or(Value::Null);
    (late["tile_count"].clone(), late["version"].clone())
}

/// Past the inotify watch limit while running, the directories inotify
/// refuses are polled (every `poll_interval_ms`), counted in
/// `tessera_watch_unwatched_directories` and announced by one warning; once
/// watches are free again they move back to inotify.
#[test]
fn directories_past_the_watch_limit_are_polled_then_watched_again() {
    const LIMIT: u32 = 20;
    const POLL_MS: u64 = 200;
    const LATE: u32 = 20;
    let fx = Fixture::new();
    let tiles = fx.tiles();
    // 6 directories of world, 3 of late, the two roots: 11 watches of 20.
    write_pyramid(&tiles, "world", 1);
    write_file(&tile_path(&tiles, "late", 5, 31, 0), &tile_bytes(31, 500));
    let config = limit_config(&fx, POLL_MS);
    let args = ["serve".as_ref(), "--config".as_ref(), config.as_os_str()];
    let Some(command) = under_watch_limit(LIMIT, &args) else { return };
    let server = Server::spawn_command(command, &fx.root().join("server.stderr"));
    server.wait_ready();
    let root = root_label(&tiles);
    let unwatched = || server.metric_with("tessera_watch_unwatched_directories", &[("root", &root)]);
    assert_eq!(unwatched(), Some(0.0), "every directory is watched at start");

    // 20 new directories pass the limit by 11: those are polled.
    for x in 0..LATE {
        fs::create_dir_all(tiles.join("late").join("5").join(x.to_string())).unwrap();
    }
    let expected = f64::from(11 + LATE - LIMIT);
    let mut last = None;
    let counted = poll_until(WATCH_DEADLINE, || {
        last = unwatched();
        last == Some(expected)
    });
    assert!(counted, "tessera_watch_unwatched_directories is {last:?}, expected {expected}");
    let stderr = server.stderr();
    assert!(
        stderr.contains("inotify watch limit") && stderr.contains("max_inotify_watches") && stderr.contains("sysctl"),
        "no warning naming the watch limit and how to raise it:\n{stderr}"
    );
    assert_eq!(stderr.matches("inotify watch limit").count(), 1, "one warning per root:\n{stderr}");

    // A tile in each late directory, watched or polled, is listed within the
    // poll interval (plus the usual margin).
    let (count, version) = late_tileset(&server);
    assert_eq!(count, 1);
    for x in 0..LATE {
        write_file(&tile_path(&tiles, "late", 5, x, 0), &tile_bytes(u64::from(x), 400));
    }
    let deadline = Duration::from_millis(POLL_MS) + WATCH_DEADLINE;
    let mut last = (Value::Null, Value::Null);
    let listed = poll_until(deadline, || {
        last = late_tileset(&server);
        last.0 == 1 + LATE
    });
    assert!(listed, "within {deadline:?} late should count {} tiles; last seen {last:?}", 1 + LATE);
    assert_ne!(last.1, version, "the tileset's version must change with its tiles");
    assert_eq!(server.get("/tiles/late/5/19/0.png").body, tile_bytes(19, 400));

    // Freeing watches (world's 6 directories and 13 late ones) leaves fewer
    // directories than the limit: the polled ones move back to inotify.
    fs::remove_dir_all(tiles.join("world")).unwrap();
    for x in 0..13 {
        fs::remove_dir_all(tiles.join("late").join("5").join(x.to_string())).unwrap();
    }
    let mut last = None;
    let upgraded = poll_until(deadline, || {
        last = unwatched();
        last == Some(0.0)
    });
    assert!(upgraded, "tessera_watch_unwatched_directories is {last:?} after watches were freed, expected 0");
    assert!(
        server.stderr().contains("watched by inotify again"),
        "no note of the return to inotify:\n{}",
        server.stderr()
    );

    // A change in every remaining late directory, formerly polled ones
    // included, is seen through inotify within the usual deadline.
    for x in 13..LATE {
        write_file(&tile_path(&tiles, "late", 5, x, 1), &tile_bytes(100 + u64::from(x), 400));
    }
    let expected = 1 + 2 * (LATE - 13);
    let mut last = (Value::Null, Value::Null);
    let seen = poll_until(WATCH_DEADLINE, || {
        last = late_tileset(&server);
        last.0 == expected
    });
    assert!(seen, "after the upgrade, late should count {expected} tiles; last seen {last:?}");
    let listing = server.get_json("/tiles");
    assert!(tileset(&listing, "world").is_none(), "world was removed: {listing}");
}

/// `tessera doctor` under a watch limit lower than the directories to watch:
/// the limit, where it comes from, and a warning that some directories
/// would be polled, with the way to raise it.
#[test]
fn doctor_reports_the_watch_limit_and_the_directories_it_leaves_polled() {
    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "world", 1); // 7 directories with the root, and the logs root
    let config = limit_config(&fx, 500);
    let args = ["doctor".as_ref(), "--config".as_ref(), config.as_os_str()];
    let Some(mut command) = under_watch_limit(3, &args) else { return };
    let out_path = fx.root().join("doctor.stdout");
    let mut child = command
        .stdin(std::process::Stdio::null())
        .stdout(fs::File::create(&out_path).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn tessera doctor");
    let mut status = None;
    poll_until(START_DEADLINE, || {
        status = child.try_wait().expect("try_wait");
        status.is_some()
    });
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("tessera doctor did not finish within {START_DEADLINE:?}");
    }
    let report = fs::read_to_string(&out_path).unwrap();
    assert!(status.is_some_and(|s| s.success()), "doctor failed:\n{report}");
    for needle in [
        "limit 3 watches (/proc/sys/user/max_inotify_watches",
        "watches in use by this user's processes",
        "the inotify roots need 8",
        "directories would be polled",
        "sysctl user.max_inotify_watches=",
        "polled every 500 ms",
    ] {
        assert!(report.contains(needle), "doctor's report lacks {needle:?}:\n{report}");
    }
}
