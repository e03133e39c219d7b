//! PMTiles archives as tilesets: archives written by an independent writer
//! (the Protomaps `pmtiles` Python package, `tests/archives/make.py`) from
//! the sample tilesets and from an MBTiles file are served tile for tile,
//! byte for byte; the raw archive downloads with ranges; a malformed archive
//! is refused naming the file; a replaced or rewritten archive is served new
//! and never mixes versions.

mod common;

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use common::*;

/// The Python that has the `pmtiles` package: `TESSERA_PYTHON` (`.ci/run`
/// sets it to its virtual environment), else `python3`. `None` (skipped, or
/// a failure under `TESSERA_REQUIRE_ALL_TESTS`) when it cannot import it.
fn python() -> Option<OsString> {
    let python = std::env::var_os("TESSERA_PYTHON").unwrap_or_else(|| "python3".into());
    let ok = Command::new(&python).args(["-c", "import pmtiles.writer"]).status().is_ok_and(|s| s.success());
    if ok {
        Some(python)
    } else {
        skip("the pmtiles Python package is needed (pip install pmtiles; TESSERA_PYTHON names the interpreter)");
        None
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs tests/archives/make.py and returns the header counts it prints.
fn make(python: &OsString, args: &[&Path]) -> Value {
    let out = Command::new(python).arg(repo().join("tests/archives/make.py")).args(args).output().expect("run make.py");
    assert!(out.status.success(), "make.py {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("make.py prints JSON")
}

fn p(s: &str) -> &Path {
    Path::new(s)
}

/// Every tile file of a directory tileset: (z, x, y, ext, path).
fn tile_files(dir: &Path) -> Vec<(u32, u32, u32, String, PathBuf)> {
    let mut out = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(3).max_depth(3) {
        let entry = entry.expect("walk");
        let rel = entry.path().strip_prefix(dir).expect("below").to_str().expect("utf-8").to_string();
        let parts: Vec<&str> = rel.split('/').collect();
        let Some((y, ext)) = parts[2].split_once('.') else { continue };
        let (Ok(z), Ok(x), Ok(y)) = (parts[0].parse(), parts[1].parse(), y.parse()) else { continue };
        out.push((z, x, y, ext.to_string(), entry.path().to_path_buf()));
    }
    out.sort();
    out
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).expect("valid gzip");
    out
}

/// Asks for every tile of `source` from tileset `name` and compares it with
/// the file, after decoding the transfer encoding; gzip tiles both as stored
/// (to a client that accepts gzip) and decompressed (to one that does not).
/// Then every absent tile of the pyramid up to the source's last zoom gets
/// the tileset's missing-tile status.
fn assert_serves(server: &Server, name: &str, source: &Path, missing_status: u16) -> usize {
    let mut client = KeepAlive::new(server.addr, "localhost");
    let files = tile_files(source);
    let mut present = std::collections::HashSet::new();
    for (z, x, y, ext, path) in &files {
        let want = std::fs::read(path).expect("source tile");
        let target = format!("/tiles/{name}/{z}/{x}/{y}.{ext}");
        let gz = client.exchange("GET", &target, &[("Accept-Encoding", "gzip, br")]).expect("tile");
        assert_eq!(gz.status, 200, "{target}: {}", gz.text());
        assert_eq!(gz.body, want, "{target}: not the source's bytes");
        let etag = gz.expect_header("etag").to_string();
        assert!(etag.starts_with('"'), "{target}: strong ETag, got {etag}");
        if want.starts_with(&[0x1f, 0x8b]) {
            assert_eq!(gz.header("content-encoding"), Some("gzip"), "{target}");
            assert_eq!(gz.header("vary"), Some("accept-encoding"), "{target}");
            let plain = client.exchange("GET", &target, &[]).expect("tile");
            assert_eq!(plain.status, 200, "{target} without gzip");
            assert_eq!(plain.header("content-encoding"), None);
            assert_eq!(plain.body, gunzip(&want), "{target}: decompressed for a client without gzip");
            assert_ne!(plain.header("etag"), Some(etag.as_str()), "{target}: the decoded form has its own ETag");
        } else {
            assert_eq!(gz.header("content-encoding"), None, "{target}");
        }
        if present.len() < 100 {
            let again = client.exchange("GET", &target, &[("Accept-Encoding", "gzip"), ("If-None-Match", &etag)]);
            assert_eq!(again.expect("conditional").status, 304, "{target}: If-None-Match");
        }
        present.insert((*z, *x, *y));
    }
    let (ext, maxzoom) = (&files[0].3, files.iter().map(|f| f.0).max().expect("tiles"));
    for z in 0..=maxzoom {
        for x in 0..1u32 << z {
            for y in (0..1u32 << z).filter(|y| !present.contains(&(z, x, *y))) {
                let target = format!("/tiles/{name}/{z}/{x}/{y}.{ext}");
                let r = client.exchange("GET", &target, &[]).expect("missing tile");
                assert_eq!(r.status, missing_status, "{target}: absent from the archive");
            }
        }
    }
    files.len()
}

/// Archives of every shape the writer makes are served tile for tile: the
/// raster sample clustered (with runs and deduplicated tiles), the gzip
/// vector sample unclustered with leaf directories, a pyramid whose root
/// directory does not fit the first 16 KiB (leaves by the writer's own
/// choice), and an archive converted from an MBTiles file. The catalog and
/// TileJSON carry the archives' header and metadata.
#[test]
fn archives_from_an_independent_writer_serve_every_tile_byte_for_byte() {
    let Some(python) = python() else { return };
    let fx = Fixture::new();
    let (tiles, work) = (fx.tiles(), fx.root().join("work"));
    std::fs::create_dir_all(&work).expect("work dir");
    let samples = repo().join("tiles");

    let world = make(&python, &[p("dir"), &samples.join("world"), &tiles.join("world.pmtiles")]);
    assert!(world["clustered"].as_bool().expect("clustered"), "{world}");
    assert!(world["entries"].as_u64() < world["addressed"].as_u64(), "runs of one tile: {world}");
    assert!(world["contents"].as_u64() < world["entries"].as_u64(), "deduplicated tiles: {world}");
    let countries = make(
        &python,
        &[
            p("dir"),
            &samples.join("countries"),
            &tiles.join("countries.pmtiles"),
            p("--unclustered"),
            p("--leaves"),
            p("4"),
        ],
    );
    assert!(!countries["clustered"].as_bool().expect("clustered"), "{countries}");
    assert!(countries["leaves_length"].as_u64() > Some(0), "leaf directories: {countries}");
    assert_eq!(countries["tile_compression"], 2, "gzip vector tiles: {countries}");
    let big = make(&python, &[p("synthetic"), &tiles.join("big.pmtiles"), &work.join("big"), p("7")]);
    // Published an hour ago: answers that rest on an archive's validators
    // (replays) are made only for a file left alone for a while.
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(tiles.join("big.pmtiles"))
        .and_then(|f| f.set_modified(hour_ago))
        .expect("mtime");
    assert!(big["leaves_length"].as_u64() > Some(0), "the writer made leaves itself: {big}");
    assert!(big["entries"].as_u64() < big["addressed"].as_u64(), "runs: {big}");
    let from_db = make(
        &python,
        &[p("mbtiles"), &samples.join("world"), &work.join("world.mbtiles"), &tiles.join("fromdb.pmtiles")],
    );
    assert_eq!(from_db["addressed"], 85, "{from_db}");

    let server = fx.start_ready();
    assert_eq!(assert_serves(&server, "world", &samples.join("world"), 404), 85);
    assert_eq!(assert_serves(&server, "countries", &samples.join("countries"), 204), 78);
    assert_eq!(assert_serves(&server, "big", &work.join("big"), 404), 21_845);
    assert_eq!(assert_serves(&server, "fromdb", &samples.join("world"), 404), 85);
    // The same raster tile again: the driver replays the Router's answer.
    let replays = || server.metric("tessera_replays_total").unwrap_or(0.0);
    let before = replays();
    let mut client = KeepAlive::new(server.addr, "localhost");
    for _ in 0..3 {
        let r = client.exchange("GET", "/tiles/big/7/100/50.png", &[]).expect("tile");
        assert_eq!(r.body, std::fs::read(work.join("big/7/100/50.png")).expect("source"));
    }
    assert!(replays() >= before + 2.0, "raster tiles from archives are replayed: {before} then {}", replays());

    let listing = server.get_json("/tiles");
    let list = listing["tilesets"].as_array().expect("tilesets");
    let entry = |name: &str| list.iter().find(|t| t["name"] == name).unwrap_or_else(|| panic!("{name} in {listing}"));
    for (name, format, count) in [("world", "png", 85), ("countries", "pbf", 78), ("big", "png", 21_845)] {
        assert_eq!((entry(name)["source"].as_str(), entry(name)["format"].as_str()), (Some("pmtiles"), Some(format)));
        assert_eq!(entry(name)["tile_count"], count, "{name}");
    }
    let tj = server.get_json("/tiles/countries.json");
    assert_eq!((tj["minzoom"].as_u64(), tj["maxzoom"].as_u64()), (Some(0), Some(3)));
    assert_eq!(tj["format"], "pbf");
    assert_eq!(tj["attribution"], "Made with Natural Earth");
    assert_eq!(tj["vector_layers"][0]["id"], "countries", "vector_layers from the archive's metadata: {tj}");
    assert_eq!(tj["center"], serde_json::json!([0.0, 20.0, 1]), "{tj}");
    let bounds: Vec<f64> =
        tj["bounds"].as_array().expect("bounds").iter().map(|v| v.as_f64().expect("number")).collect();
    assert_eq!(bounds, vec![-180.0, -85.0511, 180.0, 85.0511], "the header's bounds: {tj}");
    let template = tj["tiles"][0].as_str().expect("template");
    assert!(template.contains("/tiles/countries/{z}/{x}/{y}.pbf?v="), "{template}");

    // `tessera index` reads what the archives declare, never every tile.
    server.stop();
    let args: Vec<OsString> = ["index", "--tiles", tiles.to_str().unwrap(), "--logs", fx.logs().to_str().unwrap()]
        .into_iter()
        .map(OsString::from)
        .chain(["--state".into(), fx.root().join("state2").into_os_string()])
        .collect();
    let (status, stdout, stderr) = run_tessera(&args);
    assert!(status.success(), "{stdout}\n{stderr}");
}

/// The archive itself at `/tiles/{name}.pmtiles`, as MapLibre's `pmtiles`
/// protocol reads it: `application/vnd.pmtiles`, no Content-Encoding, ranges
/// with a strong ETag that `If-Range` honours; it and its tiles carry the
/// tileset's configured Cache-Control.
#[test]
fn the_raw_archive_downloads_with_ranges() {
    let Some(python) = python() else { return };
    let fx = Fixture::new();
    let archive = fx.tiles().join("world.pmtiles");
    make(&python, &[p("dir"), &repo().join("tiles/world"), &archive]);
    let bytes = std::fs::read(&archive).expect("archive");
    let config = fx.root().join("tessera.toml");
    std::fs::write(&config, "[tilesets.world]\ncache_control = \"public, max-age=7\"\n").expect("config");
    let server = fx.start_ready_with(&fx.state(), &["--config", config.to_str().expect("utf-8")]);

    // The tileset's Cache-Control, on its tiles and on its archive.
    assert_eq!(server.get("/tiles/world/0/0/0.png").header("cache-control"), Some("public, max-age=7"));
    let whole = server.get("/tiles/world.pmtiles");
    assert_eq!(whole.header("cache-control"), Some("public, max-age=7"));
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, bytes);
    assert_eq!(whole.expect_header("content-type"), "application/vnd.pmtiles");
    assert_eq!(whole.header("content-encoding"), None);
    assert_eq!(whole.header("accept-ranges"), Some("bytes"));
    let etag = whole.expect_header("etag").to_string();
    assert!(etag.starts_with('"'), "{etag}");

    let head = server.request("GET", "/tiles/world.pmtiles", &[("Range", "bytes=0-16383")]);
    assert_eq!(head.status, 206);
    assert_eq!(head.body, bytes[..16384]);
    assert_eq!(content_range(head.expect_header("content-range")), Some((0, 16383, bytes.len() as u64)));
    let resumed = server.request("GET", "/tiles/world.pmtiles", &[("Range", "bytes=1000-1999"), ("If-Range", &etag)]);
    assert_eq!((resumed.status, resumed.body.as_slice()), (206, &bytes[1000..2000]));
    let other = server.request("GET", "/tiles/world.pmtiles", &[("Range", "bytes=1000-1999"), ("If-Range", "\"old\"")]);
    assert_eq!((other.status, other.body.len()), (200, bytes.len()), "another version's ETag gets the whole");
    assert_eq!(server.get("/tiles/nothere.pmtiles").status, 404);
    assert_eq!(server.get("/tiles/..%2Fworld.pmtiles").status, 404);
}

/// A truncated archive, one that is not an archive at all, and one whose
/// directory points outside its tile data are refused when indexed, with a
/// message naming the file and why; the server lists none of them, answers
/// their URLs with 404 and stays healthy.
#[test]
fn malformed_archives_are_refused_naming_the_file() {
    let Some(python) = python() else { return };
    let fx = Fixture::new();
    let good = fx.root().join("good.pmtiles");
    make(&python, &[p("dir"), &repo().join("tiles/world"), &good]);
    let bytes = std::fs::read(&good).expect("archive");
    write_file(&fx.tiles().join("cut.pmtiles"), &bytes[..bytes.len() / 2]);
    write_file(&fx.tiles().join("junk.pmtiles"), b"PMTiles is a good format, this is not one");
    // Tile data one byte short: the last entry ends past it.
    let mut short = bytes.clone();
    let length = u64::from_le_bytes(short[64..72].try_into().expect("8 bytes"));
    short[64..72].copy_from_slice(&(length - 1).to_le_bytes());
    write_file(&fx.tiles().join("short.pmtiles"), &short);
    std::fs::copy(&good, fx.tiles().join("world.pmtiles")).expect("copy");

    let server = fx.start_ready();
    let stderr = server.stderr();
    for name in ["cut", "junk", "short"] {
        let line = stderr
            .lines()
            .find(|l| l.contains(&format!("{name}.pmtiles")) && l.contains("refused"))
            .unwrap_or_else(|| panic!("no refusal naming {name}.pmtiles in:\n{stderr}"));
        assert!(line.contains("PMTiles"), "{line}");
        assert_eq!(server.get(&format!("/tiles/{name}/0/0/0.png")).status, 404, "{name}");
        assert_eq!(server.get(&format!("/tiles/{name}.json")).status, 404, "{name}");
        assert_eq!(server.get(&format!("/tiles/{name}.pmtiles")).status, 404, "{name}: not offered whole either");
    }
    assert!(stderr.contains("ends past the file"), "the reason is given: {stderr}");
    let listing = server.get_json("/tiles");
    let names: Vec<&str> =
        listing["tilesets"].as_array().expect("list").iter().filter_map(|t| t["name"].as_str()).collect();
    assert_eq!(names, vec!["world"], "{listing}");
    assert_eq!(server.get("/tiles/world/0/0/0.png").status, 200);
    assert_eq!(server.get("/healthz").status, 200);
}

/// Tile 3/3/3 and 0/0/0 of a copy of the raster sample with both replaced:
/// a second version of the archive.
fn second_version(python: &OsString, work: &Path) -> (PathBuf, Vec<u8>, Vec<u8>) {
    let dir = work.join("world-v2");
    for (z, x, y, _, path) in tile_files(&repo().join("tiles/world")) {
        write_file(&dir.join(format!("{z}/{x}/{y}.png")), &std::fs::read(path).expect("tile"));
    }
    std::fs::copy(repo().join("tiles/world/metadata.json"), dir.join("metadata.json")).expect("metadata");
    let (a, b) = (tile_bytes(31, 3000), tile_bytes(32, 200_000));
    write_file(&dir.join("3/3/3.png"), &a);
    write_file(&dir.join("0/0/0.png"), &b);
    let out = work.join("world-v2.pmtiles");
    make(python, &[p("dir"), &dir, &out]);
    (out, a, b)
}

/// An archive replaced by rename is served new within the freshness bound
/// (also after the driver replayed the old answer); one rewritten in place
/// is served new too, and no answer ever pairs one version's ETag with
/// another version's bytes. An answer whose file is truncated under it after
/// its head went out ends short of its Content-Length, which is the one
/// honest outcome left at that point.
#[test]
fn replaced_and_rewritten_archives_are_served_new_and_never_mixed() {
    let Some(python) = python() else { return };
    let fx = Fixture::new();
    let work = fx.root().join("work");
    let archive = fx.tiles().join("base.pmtiles");
    make(&python, &[p("dir"), &repo().join("tiles/world"), &archive]);
    let v1 = std::fs::read(&archive).expect("v1");
    let (v2_path, new_333, new_000) = second_version(&python, &work);
    let v2 = std::fs::read(&v2_path).expect("v2");
    let old_333 = std::fs::read(repo().join("tiles/world/3/3/3.png")).expect("tile");
    let old_000 = std::fs::read(repo().join("tiles/world/0/0/0.png")).expect("tile");
    let server = fx.start_ready();
    let mut client = KeepAlive::new(server.addr, "localhost");
    let mut ask = |target: &str| client.exchange("GET", target, &[]);
    for _ in 0..5 {
        assert_eq!(ask("/tiles/base/3/3/3.png").expect("answer").body, old_333);
    }

    // By rename, as a pipeline publishes a new build.
    let tmp = fx.tiles().join(".base.pmtiles.new");
    std::fs::write(&tmp, &v2).expect("write new");
    std::fs::rename(&tmp, &archive).expect("rename");
    let started = Instant::now();
    assert!(
        poll_until(Duration::from_secs(2), || ask("/tiles/base/3/3/3.png").expect("answer").body == new_333),
        "the renamed archive is served"
    );
    eprintln!("served new {:?} after the rename", started.elapsed());
    assert_eq!(ask("/tiles/base/0/0/0.png").expect("answer").body, new_000);

    // In place, while a client keeps asking: each ETag names one content.
    let mut seen: HashMap<String, Vec<u8>> = HashMap::new();
    let writer = {
        let (archive, v1) = (archive.clone(), v1.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            std::thread::sleep(Duration::from_millis(50));
            let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(&archive).expect("open in place");
            for chunk in v1.chunks(4096) {
                f.write_all(chunk).expect("write");
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut settled = false;
    let mut early_closes = 0;
    while Instant::now() < deadline {
        for target in ["/tiles/base/3/3/3.png", "/tiles/base/0/0/0.png"] {
            let r = match ask(target) {
                Ok(r) => r,
                // Truncated under a sendfile that had sent the head: the
                // connection ends short of Content-Length, which the client
                // sees as a failed answer, never as a whole wrong one.
                Err(Failure::EarlyClose { status: 200, .. }) => {
                    early_closes += 1;
                    continue;
                }
                Err(other) => panic!("{target}: {other:?}"),
            };
            if r.status != 200 {
                assert!([404, 503].contains(&r.status), "{target}: {}", r.status);
                continue;
            }
            let known = [&old_333, &new_333, &old_000, &new_000];
            assert!(known.contains(&&r.body), "{target}: a body that is no version's tile ({} bytes)", r.body.len());
            let etag = r.expect_header("etag").to_string();
            if let Some(before) = seen.insert(etag.clone(), r.body.clone()) {
                assert_eq!(before, r.body, "{target}: ETag {etag} with two contents");
            }
        }
        if writer.is_finished() && ask("/tiles/base/3/3/3.png").expect("answer").body == old_333 {
            settled = true;
            break;
        }
    }
    writer.join().expect("writer");
    eprintln!("{early_closes} answers cut short while the archive was rewritten in place");
    assert!(settled, "the archive rewritten in place is served as written");
    assert_eq!(ask("/tiles/base/0/0/0.png").expect("answer").body, old_000);
    assert_eq!(server.get("/healthz").status, 200);
}
