//! The tile API map clients rely on (issue 5): TMS tilesets, metadata.json,
//! MBTiles, gzip negotiation of vector tiles, missing tiles, CORS, TileJSON
//! with a versioned template, per-tileset Cache-Control and the preview page.

mod common;

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use common::*;

/// Starts the fixture's server with `toml` as its configuration file.
fn start_with_config(fx: &Fixture, toml: &str) -> Server {
    let config = fx.root().join("tessera.toml");
    std::fs::write(&config, toml).expect("config");
    fx.start_ready_with(&fx.state(), &["--config", config.to_str().expect("utf-8 path")])
}

fn tilejson(server: &Server, name: &str) -> Value {
    server.get_json(&format!("/tiles/{name}.json"))
}

/// The path and query of the TileJSON template for tile z/x/y.
fn template_target(tj: &Value, z: u32, x: u32, y: u32) -> String {
    let url = tj["tiles"][0].as_str().unwrap_or_else(|| panic!("no tiles template in {tj}"));
    let url = url.replace("{z}", &z.to_string()).replace("{x}", &x.to_string()).replace("{y}", &y.to_string());
    let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
    rest[rest.find('/').expect("path in URL")..].to_string()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data).read_to_end(&mut out).expect("valid gzip");
    out
}

fn vector_tile_path(root: &Path, tileset: &str, z: u32, x: u32, y: u32, ext: &str) -> std::path::PathBuf {
    root.join(tileset).join(z.to_string()).join(x.to_string()).join(format!("{y}.{ext}"))
}

fn assert_cors(r: &Response, what: &str) {
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}: no CORS header in {:?}", r.headers);
}

/// Rows of a TMS tileset count from the bottom: the file z/x/(2^z-1-y) is
/// served at the XYZ URL z/x/y, whether the configuration or the tileset's
/// metadata.json says `tms`, and the bounds are where the tiles really are.
#[test]
fn tms_tilesets_are_served_in_xyz_order() {
    let fx = Fixture::new();
    // Stored TMS row 0 at zoom 2 is the bottom row: XYZ row 3.
    write_file(&tile_path(&fx.tiles(), "flipcfg", 2, 1, 0), &tile_bytes(1, 900));
    write_file(&tile_path(&fx.tiles(), "flipmeta", 2, 1, 0), &tile_bytes(2, 900));
    write_file(&fx.tiles().join("flipmeta/metadata.json"), br#"{"name": "flip", "scheme": "tms"}"#);
    write_file(&tile_path(&fx.tiles(), "plain", 2, 1, 0), &tile_bytes(3, 900));
    let server = start_with_config(&fx, "[tilesets.flipcfg]\nscheme = \"tms\"\n");

    for (name, seed) in [("flipcfg", 1), ("flipmeta", 2)] {
        let r = server.get(&format!("/tiles/{name}/2/1/3.png"));
        assert_eq!(r.status, 200, "{name}: XYZ row 3 is stored TMS row 0");
        assert_eq!(r.body, tile_bytes(seed, 900), "{name}");
        assert_eq!(server.get(&format!("/tiles/{name}/2/1/0.png")).status, 404, "{name}: XYZ row 0 has no tile");
        let tj = tilejson(&server, name);
        assert!(
            bounds_match(&tj["bounds"], tile_bounds(2, 1, 3)),
            "{name} bounds {} are not XYZ 2/1/3's",
            tj["bounds"]
        );
        assert_eq!(tj["scheme"], "xyz", "{name}: the template is always XYZ");
        assert_eq!(server.get(&template_target(&tj, 2, 1, 3)).body, tile_bytes(seed, 900));
    }
    assert_eq!(server.get("/tiles/plain/2/1/0.png").body, tile_bytes(3, 900), "XYZ is the default");
    let listing = server.get_json("/tiles");
    let flip = find_by(&listing["tilesets"], "name", "flipmeta").expect("listed");
    assert_eq!(flip["scheme"], "tms");
}

/// metadata.json as tippecanoe writes it (numbers as strings, vector_layers
/// inside a `json` string) feeds TileJSON; zoom levels and bounds stay the
/// catalog's, since metadata can be stale.
#[test]
fn metadata_json_fields_reach_tilejson() {
    let fx = Fixture::new();
    let plain = b"\x1a\x05hello".to_vec();
    for (z, x, y) in [(0, 0, 0), (1, 1, 0)] {
        write_file(&vector_tile_path(&fx.tiles(), "roads", z, x, y, "pbf"), &gzip_stored(&plain));
    }
    let metadata = serde_json::json!({
        "name": "Roads of the grid",
        "description": "Feeder roads",
        "attribution": "© Grid operator",
        "version": "1.2.0",
        "format": "pbf",
        "minzoom": "0",
        "maxzoom": "14",
        "bounds": "0,0,1,1",
        "center": "10.5,20.25,1",
        "json": "{\"vector_layers\":[{\"id\":\"roads\",\"fields\":{\"class\":\"String\"},\"minzoom\":0,\"maxzoom\":1}]}"
    });
    write_file(&fx.tiles().join("roads/metadata.json"), metadata.to_string().as_bytes());
    let server = fx.start_ready();
    let tj = tilejson(&server, "roads");
    assert_eq!(tj["tilejson"], "3.0.0");
    assert_eq!(tj["name"], "Roads of the grid");
    assert_eq!(tj["description"], "Feeder roads");
    assert_eq!(tj["attribution"], "© Grid operator");
    assert_eq!(tj["version"], "1.2.0");
    assert_eq!(tj["format"], "pbf");
    assert_eq!((tj["minzoom"].as_u64(), tj["maxzoom"].as_u64()), (Some(0), Some(1)), "true zoom levels: {tj}");
    assert!(bounds_match(&tj["bounds"], tile_bounds(0, 0, 0)), "true bounds, not metadata's: {}", tj["bounds"]);
    assert_eq!(tj["center"], serde_json::json!([10.5, 20.25, 1]));
    assert_eq!(tj["vector_layers"][0]["id"], "roads", "vector_layers from the json string: {tj}");
    assert_eq!(tj["vector_layers"][0]["fields"]["class"], "String");

    // An edit of metadata.json is picked up by the watcher.
    let edited = serde_json::json!({ "name": "Renamed", "vector_layers": [{ "id": "lines", "fields": {} }] });
    replace_atomically(&fx.tiles().join("roads/metadata.json"), edited.to_string().as_bytes());
    assert!(
        poll_until(Duration::from_secs(3), || tilejson(&server, "roads")["name"] == "Renamed"),
        "metadata.json edit not seen"
    );
    assert_eq!(tilejson(&server, "roads")["vector_layers"][0]["id"], "lines", "a plain vector_layers array");
}

fn create_mbtiles(path: &Path, format: &str, tiles: &[(u32, u32, u32, Vec<u8>)]) {
    let conn = rusqlite::Connection::open(path).expect("create mbtiles");
    conn.execute_batch(
        "CREATE TABLE metadata (name TEXT, value TEXT);
         CREATE TABLE tiles (zoom_level INTEGER, tile_column INTEGER, tile_row INTEGER, tile_data BLOB);
         CREATE UNIQUE INDEX tile_index ON tiles (zoom_level, tile_column, tile_row);",
    )
    .expect("schema");
    for (name, value) in [("name", "Substations"), ("format", format), ("attribution", "© Utility")] {
        conn.execute("INSERT INTO metadata VALUES (?1, ?2)", [name, value]).expect("metadata");
    }
    for (z, x, row, data) in tiles {
        conn.execute("INSERT INTO tiles VALUES (?1, ?2, ?3, ?4)", rusqlite::params![z, x, row, data]).expect("tile");
    }
}

/// An MBTiles file is a tileset: its tiles come back byte for byte, rows
/// flipped from TMS, with a strong ETag; a file replaced under the server is
/// served new at once.
#[test]
fn mbtiles_tilesets_serve_their_blobs_and_follow_replacement() {
    let fx = Fixture::new();
    let (a, b, c) = (tile_bytes(11, 2_000), tile_bytes(12, 3_000), tile_bytes(13, 2_500));
    // TMS row 1 at zoom 1 is XYZ row 0.
    create_mbtiles(&fx.tiles().join("subs.mbtiles"), "png", &[(1, 0, 1, a.clone()), (1, 1, 0, b.clone())]);
    let server = fx.start_ready();

    let r = server.get("/tiles/subs/1/0/0.png");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, a, "tile 1/0/0 is the blob at TMS row 1");
    assert_eq!(r.expect_header("content-type"), "image/png");
    assert_cors(&r, "MBTiles tile");
    let etag = r.expect_header("etag").to_string();
    assert!(etag.starts_with('"'), "strong ETag, got {etag}");
    assert_eq!(server.get("/tiles/subs/1/1/1.png").body, b);
    assert_eq!(server.request("GET", "/tiles/subs/1/0/0.png", &[("If-None-Match", &etag)]).status, 304);
    let missing = server.get("/tiles/subs/1/0/1.png");
    assert_eq!(missing.status, 404, "a raster tile missing in range");
    assert_cors(&missing, "404 of an MBTiles tileset");
    assert_eq!(server.get("/tiles/subs/2/0/0.png").status, 404, "outside the zoom levels");

    let tj = tilejson(&server, "subs");
    assert_eq!((tj["name"].as_str(), tj["attribution"].as_str()), (Some("Substations"), Some("© Utility")));
    assert_eq!((tj["minzoom"].as_u64(), tj["maxzoom"].as_u64()), (Some(1), Some(1)));
    let expected = union_bounds(&[(1, 0, 0), (1, 1, 1)]);
    assert!(bounds_match(&tj["bounds"], expected), "bounds {} != {expected:?}", tj["bounds"]);
    let listing = server.get_json("/tiles");
    assert_eq!(find_by(&listing["tilesets"], "name", "subs").expect("listed")["source"], "mbtiles");

    // Replace the file by rename, as a tile pipeline publishes a new build.
    let tmp = fx.tiles().join(".subs.mbtiles.new");
    create_mbtiles(&tmp, "png", &[(1, 0, 1, c.clone())]);
    std::fs::rename(&tmp, fx.tiles().join("subs.mbtiles")).expect("rename");
    // Within the freshness bound of any file: the watcher's event, or the
    // descriptor cache's own stat of the path.
    assert!(
        poll_until(Duration::from_secs(1), || server.get("/tiles/subs/1/0/0.png").body == c),
        "the replaced file is served within the bound"
    );
    let r = server.get("/tiles/subs/1/0/0.png");
    assert_ne!(r.header("etag"), Some(etag.as_str()));
    assert!(
        poll_until(Duration::from_secs(3), || server.get("/tiles/subs/1/1/1.png").status == 404),
        "a tile gone from the new file must not be served"
    );
}

/// MBTiles answers are replayed by the driver while the file is unchanged,
/// and a database updated in place is served new within the bound: in
/// rollback-journal mode (the file itself changes) and in WAL mode (only its
/// `-wal` changes, so tessera reads the database on every request).
#[test]
fn mbtiles_updated_in_place_are_served_new_in_either_journal_mode() {
    let fx = Fixture::new();
    let (a, b) = (tile_bytes(21, 2_000), tile_bytes(22, 2_100));
    create_mbtiles(&fx.tiles().join("plain.mbtiles"), "png", &[(0, 0, 0, a.clone())]);
    create_mbtiles(&fx.tiles().join("wal.mbtiles"), "png", &[(0, 0, 0, a.clone())]);
    // Written an hour ago: answers that rest on a file's validators (its
    // ETag, replays) are made only for a file left alone for a while.
    let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    let plain = std::fs::File::options().write(true).open(fx.tiles().join("plain.mbtiles")).expect("open");
    plain.set_modified(hour_ago).expect("mtime");
    let wal = rusqlite::Connection::open(fx.tiles().join("wal.mbtiles")).expect("open");
    let mode: String = wal.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).expect("wal");
    assert_eq!(mode, "wal");
    let server = fx.start_ready();
    let replays = || server.metric("tessera_replays_total").unwrap_or(0.0);

    let mut client = KeepAlive::new(server.addr, "localhost");
    let before = replays();
    for _ in 0..8 {
        assert_eq!(client.exchange("GET", "/tiles/plain/0/0/0.png", &[]).expect("tile").body, a);
    }
    // Most of them: a change of a tiles root's catalog rows (a late event
    // of the files made above) ends replays once.
    assert!(replays() >= before + 5.0, "replayed: {before} then {}", replays());
    let before = replays();
    for _ in 0..4 {
        assert_eq!(client.exchange("GET", "/tiles/wal/0/0/0.png", &[]).expect("tile").body, a);
    }
    assert_eq!(replays(), before, "a WAL database is read on every request");
    // Its mtime does not move with its commits: no Last-Modified, and the
    // date conditions are ignored (RFC 9110 13.1.3, 13.1.4).
    let wal_tile = client.exchange("GET", "/tiles/wal/0/0/0.png", &[]).expect("tile");
    assert_eq!(wal_tile.header("last-modified"), None);
    let future = "Fri, 01 Jan 2100 00:00:00 GMT";
    let past = "Thu, 01 Jan 1970 00:00:01 GMT";
    let by_date = client.exchange("GET", "/tiles/wal/0/0/0.png", &[("If-Modified-Since", future)]).expect("tile");
    assert_eq!(by_date.status, 200, "If-Modified-Since ignored");
    let by_date = client.exchange("GET", "/tiles/wal/0/0/0.png", &[("If-Unmodified-Since", past)]).expect("tile");
    assert_eq!(by_date.status, 200, "If-Unmodified-Since ignored");

    let update = "UPDATE tiles SET tile_data = ?1 WHERE zoom_level = 0";
    rusqlite::Connection::open(fx.tiles().join("plain.mbtiles")).expect("open").execute(update, [&b]).expect("update");
    wal.execute(update, [&b]).expect("update");
    for name in ["plain", "wal"] {
        let target = format!("/tiles/{name}/0/0/0.png");
        assert!(
            poll_until(Duration::from_secs(1), || client.exchange("GET", &target, &[]).expect("tile").body == b),
            "{name}: the updated tile is served within the bound"
        );
    }
    drop(wal);
}

/// A gzipped vector tile is sent as stored with Content-Encoding to clients
/// that take gzip and decompressed for those that do not; both vary by
/// Accept-Encoding and have different strong ETags. Content-Type is right for
/// every format.
#[test]
fn gzipped_vector_tiles_are_negotiated() {
    let fx = Fixture::new();
    let plain: Vec<u8> = (0..5_000u32).map(|i| (i % 251) as u8).collect();
    let stored = gzip_stored(&plain);
    write_file(&vector_tile_path(&fx.tiles(), "vec", 3, 4, 2, "pbf"), &stored);
    write_file(&vector_tile_path(&fx.tiles(), "vec", 3, 4, 3, "pbf"), &plain);
    write_file(&vector_tile_path(&fx.tiles(), "mv", 0, 0, 0, "mvt"), &stored);
    write_file(&vector_tile_path(&fx.tiles(), "photo", 0, 0, 0, "jpg"), b"\xff\xd8\xff\xe0 jpeg");
    write_file(&vector_tile_path(&fx.tiles(), "web", 0, 0, 0, "webp"), b"RIFF\x00\x00\x00\x00WEBPVP8 ");
    create_mbtiles(&fx.tiles().join("vmb.mbtiles"), "pbf", &[(0, 0, 0, stored.clone())]);
    let server = fx.start_ready();

    for target in ["/tiles/vec/3/4/2.pbf", "/tiles/vmb/0/0/0.pbf", "/tiles/mv/0/0/0.mvt"] {
        let gz = server.request("GET", target, &[("Accept-Encoding", "br, gzip;q=0.8")]);
        assert_eq!(gz.status, 200, "{target}");
        assert_eq!(gz.header("content-encoding"), Some("gzip"), "{target}: gzip for a client that takes it");
        assert_eq!(gunzip(&gz.body), plain, "{target}");
        assert!(gz.expect_header("vary").to_ascii_lowercase().contains("accept-encoding"), "{target}");
        assert_eq!(gz.expect_header("content-type"), "application/x-protobuf", "{target}");
        // A 304 describes no body: no Content-Encoding, but the same Vary (RFC 9110 15.4.5).
        let gz_etag = gz.expect_header("etag");
        let not_modified = server.request("GET", target, &[("Accept-Encoding", "gzip"), ("If-None-Match", gz_etag)]);
        assert_eq!(not_modified.status, 304, "{target}");
        assert_eq!(not_modified.header("content-encoding"), None, "{target}: a 304 with Content-Encoding");
        assert_eq!(not_modified.header("etag"), Some(gz_etag), "{target}");
        assert!(not_modified.expect_header("vary").to_ascii_lowercase().contains("accept-encoding"), "{target}");

        for accept in [None, Some("gzip;q=0"), Some("identity")] {
            let headers: Vec<(&str, &str)> = accept.map(|a| vec![("Accept-Encoding", a)]).unwrap_or_default();
            let id = server.request("GET", target, &headers);
            assert_eq!(id.status, 200, "{target} {accept:?}");
            assert_eq!(id.header("content-encoding"), None, "{target} {accept:?}: must be decompressed");
            assert_eq!(id.body, plain, "{target} {accept:?}");
            assert_eq!(id.expect_header("content-length"), plain.len().to_string());
            assert!(id.expect_header("vary").to_ascii_lowercase().contains("accept-encoding"));
            assert_ne!(id.header("etag"), gz.header("etag"), "{target}: two representations, two strong ETags");
            let etag = id.expect_header("etag");
            assert_eq!(server.request("GET", target, &[("If-None-Match", etag)]).status, 304);
        }
        let head = server.head(target);
        assert_eq!(head.expect_header("content-length"), plain.len().to_string(), "HEAD {target}");
        assert!(head.body.is_empty());
    }
    // Stored plain: sent as it is, and nothing varies.
    let r = server.request("GET", "/tiles/vec/3/4/3.pbf", &[("Accept-Encoding", "gzip")]);
    assert_eq!((r.body.as_slice(), r.header("content-encoding"), r.header("vary")), (plain.as_slice(), None, None));
    assert_eq!(server.get("/tiles/photo/0/0/0.jpg").expect_header("content-type"), "image/jpeg");
    assert_eq!(server.get("/tiles/web/0/0/0.webp").expect_header("content-type"), "image/webp");
}

/// Missing tiles: 204 for vector tilesets and 404 for raster ones inside the
/// zoom levels (each configurable), 404 outside them and for unknown
/// tilesets; every answer carries CORS headers.
#[test]
fn missing_tiles_get_204_or_404_with_cors() {
    let fx = Fixture::new();
    for z in 1..=2 {
        write_file(&vector_tile_path(&fx.tiles(), "vec", z, 0, 0, "pbf"), &gzip_stored(b"\x1a\x00"));
        write_file(&vector_tile_path(&fx.tiles(), "vec404", z, 0, 0, "pbf"), &gzip_stored(b"\x1a\x00"));
        write_file(&tile_path(&fx.tiles(), "ras", z, 0, 0), &tile_bytes(1, 500));
        write_file(&tile_path(&fx.tiles(), "ras204", z, 0, 0), &tile_bytes(1, 500));
    }
    let server = start_with_config(
        &fx,
        "[tilesets.vec404]\nmissing_tile = 404\n\n[tilesets.ras204]\nmissing_tile = 204\ncache_control = \"public, max-age=5\"\n",
    );
    let cases = [
        ("/tiles/vec/2/3/3.pbf", 204, "vector, in range"),
        ("/tiles/ras/2/3/3.png", 404, "raster, in range"),
        ("/tiles/vec404/2/3/3.pbf", 404, "vector configured 404"),
        ("/tiles/ras204/2/3/3.png", 204, "raster configured 204"),
        ("/tiles/vec/0/0/0.pbf", 404, "vector, below minzoom"),
        ("/tiles/vec/3/0/0.pbf", 404, "vector, above maxzoom"),
        ("/tiles/ras/5/0/0.png", 404, "raster, above maxzoom"),
        ("/tiles/vec/2/3/3.png", 404, "wrong format"),
        ("/tiles/nosuch/1/0/0.pbf", 404, "unknown tileset"),
        ("/tiles/vec/2/4/0.pbf", 404, "x outside zoom 2"),
    ];
    for (target, status, what) in cases {
        let r = server.get(target);
        assert_eq!(r.status, status, "{what}: {target}: {}", r.text());
        assert_cors(&r, what);
        if status == 204 {
            assert!(r.body.is_empty(), "{what}: 204 has no body");
            assert!(r.header("content-length").is_none(), "{what}: 204 has no Content-Length");
            assert!(r.header("cache-control").is_some(), "{what}: 204 says how long to keep it");
        }
    }
    assert_eq!(server.get("/tiles/ras204/2/3/3.png").header("cache-control"), Some("public, max-age=5"));
    // A preflight for a tile gets CORS too.
    let pre = server.request(
        "OPTIONS",
        "/tiles/vec/2/3/3.pbf",
        &[("Origin", "https://ops.example"), ("Access-Control-Request-Method", "GET")],
    );
    assert!(pre.status == 204 || pre.status == 200, "preflight status {}", pre.status);
    assert_cors(&pre, "preflight");
}

/// The TileJSON template carries a version of the tileset: a replaced tile
/// changes it at once, so clients that cache tiles for long fetch the new
/// one. The template's host is the request's, or the configured public URL.
#[test]
fn tilejson_template_is_versioned_and_built_from_host_or_public_url() {
    let fx = Fixture::new();
    write_file(&tile_path(&fx.tiles(), "live", 1, 0, 0), &tile_bytes(1, 700));
    write_file(&tile_path(&fx.tiles(), "live", 1, 1, 1), &tile_bytes(2, 700));
    let server = start_with_config(
        &fx,
        "[http]\npublic_url = \"https://maps.example.net/grid/\"\n\n[tilesets.live]\ncache_control = \"public, max-age=86400\"\n",
    );
    let tj = tilejson(&server, "live");
    let template = tj["tiles"][0].as_str().expect("template").to_string();
    assert!(
        template.starts_with("https://maps.example.net/grid/tiles/live/{z}/{x}/{y}.png?v="),
        "template from public_url: {template}"
    );
    // The proxy at the public URL strips its /grid prefix.
    let proxied = |tj: &Value| template_target(tj, 1, 0, 0).replacen("/grid", "", 1);
    let r = server.get(&proxied(&tj));
    assert_eq!(r.body, tile_bytes(1, 700), "the versioned URL serves the tile");
    assert_eq!(r.header("cache-control"), Some("public, max-age=86400"), "per-tileset Cache-Control");

    replace_atomically(&tile_path(&fx.tiles(), "live", 1, 0, 0), &tile_bytes(3, 700));
    assert!(
        poll_until(Duration::from_secs(3), || tilejson(&server, "live")["tiles"][0].as_str() != Some(&template)),
        "the template's version did not change after a tile was replaced"
    );
    let tj = tilejson(&server, "live");
    assert_eq!(server.get(&proxied(&tj)).body, tile_bytes(3, 700));

    // Without a public URL, the Host the client used.
    let fx2 = Fixture::new();
    write_file(&tile_path(&fx2.tiles(), "live", 1, 0, 0), &tile_bytes(1, 700));
    let server2 = fx2.start_ready();
    let mut conn = RawConn::connect(server2.addr);
    conn.send(&request_bytes("GET", "/tiles/live.json", &[("Host", "substation-7.local:8080")])).expect("send");
    let r = conn.read_response(false).expect("response");
    let template = r.json()["tiles"][0].as_str().expect("template").to_string();
    assert!(template.starts_with("http://substation-7.local:8080/tiles/live/{z}/{x}/{y}.png?v="), "{template}");
    let listing = server2.get_json("/tiles");
    let live = find_by(&listing["tilesets"], "name", "live").expect("listed");
    assert!(live["tilejson"].as_str().is_some_and(|u| u.ends_with("/tiles/live.json")));
    assert!(live["preview"].as_str().is_some_and(|u| u.ends_with("/tiles/live/")));
}

/// `/tiles/{tileset}/` is a self-contained preview page (no outside
/// scripts: control rooms are often offline), and `/` links to it.
#[test]
fn preview_pages_are_served_and_linked() {
    let fx = Fixture::new();
    write_file(&tile_path(&fx.tiles(), "grid", 0, 0, 0), &tile_bytes(1, 500));
    let server = fx.start_ready();
    let page = server.get("/tiles/grid/");
    assert_eq!(page.status, 200);
    assert!(page.expect_header("content-type").starts_with("text/html"));
    let html = page.text();
    assert!(html.contains("<canvas") || html.contains("canvas"), "the page draws on a canvas");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "no outside resources");
    let redirect = server.get("/tiles/grid");
    assert_eq!(redirect.status, 308);
    assert_eq!(redirect.header("location"), Some("/tiles/grid/"));
    assert!(server.get("/").text().contains("href=\"/tiles/grid/\""), "the status page links the preview");
}

/// The catalog's JSON (the tileset list and TileJSON) is `no-cache` with a
/// strong ETag from its bytes: a client revalidates with If-None-Match and
/// gets 304 until the tileset changes, then the new document.
#[test]
fn json_documents_revalidate_with_etags() {
    let fx = Fixture::new();
    write_pyramid(&fx.tiles(), "base", 1);
    let server = fx.start_ready();
    for target in ["/tiles", "/tiles/base.json"] {
        let first = server.get(target);
        assert_eq!(first.status, 200, "{target}");
        assert_eq!(first.expect_header("cache-control"), "no-cache", "{target}");
        assert_eq!(first.expect_header("content-type"), "application/json", "{target}");
        let etag = first.expect_header("etag").to_owned();
        assert!(etag.starts_with('"') && etag.ends_with('"'), "{target}: a strong ETag, got {etag}");
        let again = server.request("GET", target, &[("If-None-Match", &etag)]);
        assert_eq!(again.status, 304, "{target}");
        assert!(again.body.is_empty(), "{target}: a 304 has no body");
        assert_eq!(again.header("etag"), Some(etag.as_str()), "{target}");
        let other = server.request("GET", target, &[("If-None-Match", "\"something-else\"")]);
        assert_eq!((other.status, other.body.as_slice()), (200, first.body.as_slice()), "{target}");
    }
    // A new zoom level changes the TileJSON (maxzoom) and the list, and so their tags.
    let before = server.get("/tiles/base.json").expect_header("etag").to_owned();
    write_file(&tile_path(&fx.tiles(), "base", 2, 0, 0), &tile_bytes(7, 900));
    assert!(
        poll_until(Duration::from_secs(10), || {
            let r = server.request("GET", "/tiles/base.json", &[("If-None-Match", &before)]);
            r.status == 200 && r.json()["maxzoom"] == 2
        }),
        "the TileJSON never changed after a new zoom level"
    );
}
