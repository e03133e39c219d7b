//! The catalog: `/tiles`, TileJSON, `/logs` with timestamps and filters, and the SQLite
//! index across restarts (reconcile re-reads only what changed; losing it loses nothing).

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;

use serde_json::Value;

use common::*;

/// The tiles of the partial `grid` tileset.
const GRID: [(u32, u32, u32); 3] = [(4, 8, 5), (4, 9, 6), (5, 19, 12)];

/// `world` (full pyramid, zoom 0..=3, 85 tiles), `grid` (3 tiles at zoom 4-5), and logs
/// of two devices. Returns the number of files written.
fn setup(fx: &Fixture) -> usize {
    let mut n = write_pyramid(&fx.tiles(), "world", 3);
    for (i, &(z, x, y)) in GRID.iter().enumerate() {
        write_file(&tile_path(&fx.tiles(), "grid", z, x, y), &tile_bytes(100 + i as u64, 900 + i * 10));
        n += 1;
    }
    let mut jsonl = String::new();
    for m in 0..30 {
        jsonl.push_str(&format!("{{\"ts\":\"2024-05-01T10:{m:02}:00Z\",\"kw\":{m}}}\n"));
    }
    write_file(&fx.logs().join("d1").join("a.jsonl"), jsonl.as_bytes());
    write_file(
        &fx.logs().join("d2").join("b.csv"),
        b"timestamp,flow\n2024-05-02T00:00:00Z,1.5\n2024-05-02T06:00:00Z,2.5\n",
    );
    write_file(&fx.logs().join("d2").join("raw.bin"), &pseudo_random(3, 50_000));
    n + 3
}

fn tileset<'a>(listing: &'a Value, name: &str) -> &'a Value {
    find_by(&listing["tilesets"], "name", name).unwrap_or_else(|| panic!("tileset {name} not listed in {listing}"))
}

fn log_entry<'a>(listing: &'a Value, device: &str, file: &str) -> &'a Value {
    listing["logs"]
        .as_array()
        .unwrap_or_else(|| panic!("`logs` is not an array: {listing}"))
        .iter()
        .find(|l| l["device"] == device && l["file"] == file)
        .unwrap_or_else(|| panic!("{device}/{file} not listed in {listing}"))
}

/// The path part of a URL (`http://host/path` → `/path`; a path stays as it is).
fn path_of(url: &str) -> &str {
    match url.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => url,
    }
}

fn rereads(server: &Server) -> f64 {
    server
        .metric("tessera_reconcile_rereads_total")
        .unwrap_or_else(|| panic!("/metrics lacks tessera_reconcile_rereads_total:\n{}", server.metrics_text()))
}

#[test]
fn catalog_and_tilejson_describe_tilesets() {
    let fx = Fixture::new();
    setup(&fx);
    let server = fx.start_ready();

    let r = server.get("/tiles");
    assert_eq!(r.status, 200);
    assert!(r.expect_header("content-type").starts_with("application/json"), "/tiles Content-Type");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let listing = r.json();
    assert_eq!(tileset_names(&listing), ["grid", "world"]);

    let world = tileset(&listing, "world");
    assert_eq!(world["format"], "png");
    assert_eq!(world["scheme"], "xyz");
    assert_eq!(world["minzoom"], 0);
    assert_eq!(world["maxzoom"], 3);
    assert_eq!(world["tile_count"], 85);
    let whole = tile_bounds(0, 0, 0);
    assert!(bounds_match(&world["bounds"], whole), "world bounds {} != {whole:?}", world["bounds"]);
    json_instant(&world["last_change"], "world last_change");
    assert_eq!(world["tilejson"], format!("http://{}/tiles/world.json", server.addr));

    let grid = tileset(&listing, "grid");
    let grid_bounds = union_bounds(&GRID);
    assert_eq!(grid["minzoom"], 4);
    assert_eq!(grid["maxzoom"], 5);
    assert_eq!(grid["tile_count"], 3);
    assert!(bounds_match(&grid["bounds"], grid_bounds), "grid bounds {} != {grid_bounds:?}", grid["bounds"]);

    let r = server.get(path_of(grid["tilejson"].as_str().expect("tilejson URL")));
    assert_eq!(r.status, 200, "TileJSON of grid: {}", r.text());
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let tj = r.json();
    assert_eq!(tj["tilejson"], "3.0.0");
    assert_eq!(tj["name"], "grid");
    assert_eq!(tj["minzoom"], 4);
    assert_eq!(tj["maxzoom"], 5);
    assert!(bounds_match(&tj["bounds"], grid_bounds), "TileJSON bounds {} != {grid_bounds:?}", tj["bounds"]);
    let template =
        tj["tiles"][0].as_str().unwrap_or_else(|| panic!("TileJSON `tiles` is not an array of strings: {tj}"));
    assert!(template.contains("{z}/{x}/{y}"), "tile URL template {template:?}");
    // The template leads to the tile.
    let (z, x, y) = GRID[2];
    let url = template.replace("{z}", &z.to_string()).replace("{x}", &x.to_string()).replace("{y}", &y.to_string());
    let r = server.get(path_of(&url));
    assert_eq!(r.status, 200, "GET {url} from the TileJSON template");
    assert!(r.body == tile_bytes(102, 920), "{url}: wrong body");

    let r = server.get("/tiles/nope.json");
    assert_eq!(r.status, 404, "TileJSON of an unknown tileset");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
}

#[test]
fn restart_over_unchanged_tree_rereads_nothing() {
    let fx = Fixture::new();
    let files = setup(&fx);

    let first = fx.start_ready();
    let first_rereads = rereads(&first);
    assert!(
        first_rereads > 0.0,
        "the first start indexes {files} files, yet tessera_reconcile_rereads_total = {first_rereads}"
    );
    let tiles_before = normalise_listing(&first.get_json("/tiles"), first.addr);
    let logs_before = normalise_listing(&first.get_json("/logs"), first.addr);
    assert_eq!(tileset_names(&tiles_before), ["grid", "world"]);
    assert_eq!(log_names(&logs_before), ["d1/a.jsonl", "d2/b.csv", "d2/raw.bin"]);
    let status = first.stop();
    assert!(status.success(), "SIGTERM must stop tessera cleanly, got {status}");

    // Same tree, same state directory: nothing is re-read.
    let second = fx.start_ready();
    assert_eq!(rereads(&second), 0.0, "a restart over an unchanged tree re-read entries");
    assert_eq!(
        normalise_listing(&second.get_json("/tiles"), second.addr),
        tiles_before,
        "/tiles changed across a restart"
    );
    assert_eq!(
        normalise_listing(&second.get_json("/logs"), second.addr),
        logs_before,
        "/logs changed across a restart"
    );
    let r = second.get("/tiles/world/3/5/2.png");
    assert_eq!(r.status, 200);
    assert!(r.body == tile_content(3, 5, 2));
    second.stop();

    // While it is down, one log grows and one tile goes: only the change is re-read.
    let grown = fx.logs().join("d1").join("a.jsonl");
    fs::OpenOptions::new()
        .append(true)
        .open(&grown)
        .unwrap()
        .write_all(b"{\"ts\":\"2024-05-01T11:00:00Z\",\"kw\":99}\n")
        .unwrap();
    let size = fs::metadata(&grown).unwrap().len();
    fs::remove_file(tile_path(&fx.tiles(), "world", 3, 7, 7)).unwrap();

    let third = fx.start_ready();
    let third_rereads = rereads(&third);
    assert!(
        third_rereads >= 1.0 && third_rereads < first_rereads,
        "after one file changed, tessera_reconcile_rereads_total = {third_rereads} \
         (first start: {first_rereads})"
    );
    let logs = third.get_json("/logs");
    let entry = log_entry(&logs, "d1", "a.jsonl");
    assert_eq!(entry["size"], size, "size of the grown log: {entry}");
    assert_eq!(
        json_instant(&entry["last"], "last"),
        parse_rfc3339("2024-05-01T11:00:00Z").unwrap(),
        "last timestamp of the grown log: {entry}"
    );
    let tiles = third.get_json("/tiles");
    assert_eq!(tileset(&tiles, "world")["tile_count"], 84);
    assert_eq!(third.get("/tiles/world/3/7/7.png").status, 404);
}

#[test]
fn deleting_the_database_loses_nothing() {
    let fx = Fixture::new();
    setup(&fx);

    let first = fx.start_ready();
    let tiles_before = normalise_listing(&first.get_json("/tiles"), first.addr);
    let logs_before = normalise_listing(&first.get_json("/logs"), first.addr);
    assert_eq!(tileset_names(&tiles_before), ["grid", "world"]);
    assert_eq!(log_names(&logs_before).len(), 3);
    first.stop();

    let mut removed = Vec::new();
    for entry in fs::read_dir(fx.state()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            fs::remove_dir_all(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
        removed.push(path);
    }
    assert!(!removed.is_empty(), "the state directory {} is empty: where is the SQLite index?", fx.state().display());

    let second = fx.start_ready();
    assert!(rereads(&second) > 0.0, "a start without its database must re-read everything");
    assert_eq!(
        normalise_listing(&second.get_json("/tiles"), second.addr),
        tiles_before,
        "/tiles differs after the database was deleted (removed {removed:?})"
    );
    assert_eq!(
        normalise_listing(&second.get_json("/logs"), second.addr),
        logs_before,
        "/logs differs after the database was deleted (removed {removed:?})"
    );
    let r = second.get("/tiles/grid/4/9/6.png");
    assert_eq!(r.status, 200);
    assert!(r.body == tile_bytes(101, 910), "tile body after rebuild");
    let r = second.get("/logs/d2/raw.bin");
    assert_eq!(r.status, 200);
    assert!(r.body == pseudo_random(3, 50_000), "log body after rebuild");
    assert!(fs::read_dir(fx.state()).unwrap().next().is_some(), "the index was not rebuilt in the state directory");
}

/// Expected listing entry: device, file, first and last instants (None = null).
struct Expect {
    device: &'static str,
    file: &'static str,
    first: Option<&'static str>,
    last: Option<&'static str>,
}

#[test]
fn logs_listing_reads_timestamps_and_filters() {
    let fx = Fixture::new();
    let logs = fx.logs();
    // JSON lines, with each of the accepted field names.
    write_file(
        &logs.join("d1").join("a.jsonl"),
        b"{\"ts\":\"2024-05-01T10:00:00Z\",\"v\":1}\n\
          {\"level\":\"info\",\"timestamp\":\"2024-05-01T11:00:00.500Z\",\"v\":2}\n\
          {\"time\":\"2024-05-01T12:30:00Z\",\"v\":3}\n",
    );
    // CSV with a `timestamp` column that is not the first.
    write_file(
        &logs.join("d2").join("b.csv"),
        b"device,timestamp,value\n\
          pump-7,2024-05-02T00:00:00Z,1.0\n\
          pump-7,2024-05-02T03:30:00Z,1.5\n\
          pump-7,2024-05-02T06:00:00Z,2.0\n",
    );
    // Plain lines starting with an RFC 3339 timestamp, with an offset and a fraction.
    write_file(
        &logs.join("d3").join("c.log"),
        b"2024-05-03T08:00:00+02:00 boot ok\n\
          2024-05-03T07:00:00Z link up\n\
          2024-05-03T09:15:30.250Z shutdown\n",
    );
    // Gzipped CSV with a `time` column.
    write_file(
        &logs.join("d3").join("d.csv.gz"),
        &gzip_stored(
            b"time,temp\n\
              2024-05-04T01:00:00Z,20.5\n\
              2024-05-04T02:00:00Z,21.0\n\
              2024-05-04T23:59:59Z,19.0\n",
        ),
    );
    // No timestamps at all.
    write_file(&logs.join("d4").join("notes.txt"), b"hello\nno timestamps here\n");

    let expected = [
        Expect {
            device: "d1",
            file: "a.jsonl",
            first: Some("2024-05-01T10:00:00Z"),
            last: Some("2024-05-01T12:30:00Z"),
        },
        Expect { device: "d2", file: "b.csv", first: Some("2024-05-02T00:00:00Z"), last: Some("2024-05-02T06:00:00Z") },
        Expect {
            device: "d3",
            file: "c.log",
            first: Some("2024-05-03T06:00:00Z"),
            last: Some("2024-05-03T09:15:30.250Z"),
        },
        Expect {
            device: "d3",
            file: "d.csv.gz",
            first: Some("2024-05-04T01:00:00Z"),
            last: Some("2024-05-04T23:59:59Z"),
        },
        Expect { device: "d4", file: "notes.txt", first: None, last: None },
    ];

    let server = fx.start_ready();
    let r = server.get("/logs");
    assert_eq!(r.status, 200);
    assert!(r.expect_header("content-type").starts_with("application/json"), "/logs Content-Type");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    let listing = r.json();
    assert_eq!(log_names(&listing), ["d1/a.jsonl", "d2/b.csv", "d3/c.log", "d3/d.csv.gz", "d4/notes.txt"]);

    for e in &expected {
        let entry = log_entry(&listing, e.device, e.file);
        let what = format!("{}/{}: {entry}", e.device, e.file);
        let path = logs.join(e.device).join(e.file);
        let meta = fs::metadata(&path).unwrap();
        let url = format!("/logs/{}/{}", e.device, e.file);
        assert_eq!(entry["url"], url.as_str(), "{what}");
        assert_eq!(entry["size"], meta.len(), "{what}");
        let (mtime, _) = json_instant(&entry["mtime"], "mtime");
        let disk_mtime = unix_secs(meta.modified().unwrap());
        assert!((mtime - disk_mtime).abs() <= 1, "{what}: mtime {mtime} is not the file's ({disk_mtime})");
        for (field, want) in [("first", e.first), ("last", e.last)] {
            match want {
                Some(want) => assert_eq!(
                    json_instant(&entry[field], field),
                    parse_rfc3339(want).unwrap(),
                    "{what}: {field} should be {want}"
                ),
                None => assert!(entry[field].is_null(), "{what}: {field} should be null"),
            }
        }
        // The listed ETag is the one the file is served with.
        let served = server.get(&url);
        assert_eq!(served.status, 200, "GET {url}");
        assert!(served.body == fs::read(&path).unwrap(), "GET {url}: body differs (a .gz log is served as stored)");
        assert_eq!(entry["etag"], served.expect_header("etag"), "{what}: listed etag differs from the served ETag");
    }

    // Filters. Logs without timestamps are left out of the time comparisons.
    let query = |q: &str| -> BTreeSet<String> {
        let listing = server.get_json(&format!("/logs?{q}"));
        log_names(&listing).into_iter().collect()
    };
    let timed = |q: &str| -> BTreeSet<String> { query(q).into_iter().filter(|n| n != "d4/notes.txt").collect() };
    let set = |names: &[&str]| -> BTreeSet<String> { names.iter().map(|s| s.to_string()).collect() };

    assert_eq!(query("device=d3"), set(&["d3/c.log", "d3/d.csv.gz"]));
    assert_eq!(query("device=d1"), set(&["d1/a.jsonl"]));
    assert_eq!(query("device=nobody"), set(&[]));
    assert_eq!(
        timed("since=2024-05-02T03:00:00Z&until=2024-05-03T07:00:00Z"),
        set(&["d2/b.csv", "d3/c.log"]),
        "since/until keep logs whose [first, last] overlaps"
    );
    assert_eq!(timed("since=2024-05-03T10:00:00Z"), set(&["d3/d.csv.gz"]), "since alone");
    assert_eq!(timed("until=2024-05-01T11:00:00Z"), set(&["d1/a.jsonl"]), "until alone");
    assert_eq!(
        timed("since=2024-05-01T12:00:00Z&until=2024-05-01T13:00:00Z"),
        set(&["d1/a.jsonl"]),
        "a window inside one log's span"
    );
    assert_eq!(timed("since=2024-06-01T00:00:00Z"), set(&[]), "a window after every log");
    assert_eq!(timed("device=d3&since=2024-05-03T10:00:00Z"), set(&["d3/d.csv.gz"]), "device and since together");
    assert_eq!(timed("device=d2&since=2024-05-03T10:00:00Z"), set(&[]), "device and since together, no match");
}
