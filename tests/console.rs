//! The operator console's data (issue 20): the figures sampled from the
//! metrics, the latency histogram behind p50 and p99, the devices' log
//! spans, tileset coverage, and what an anonymous caller may not see.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn the_console_data_holds_figures_spans_and_coverage() {
    let fx = Fixture::new();
    fx.copy_samples();
    let server = fx.start_ready();
    for _ in 0..200 {
        assert_eq!(server.get("/tiles/world/1/0/0.png").status, 200);
    }
    assert_eq!(server.get("/tiles/world/9/0/0.png").status, 404);
    // Two samples at least (one every 5 s): the first request counts.
    let data = || server.get_json("/console/data.json");
    assert!(
        poll_until(Duration::from_secs(15), || data()["series"]["t_ms"].as_array().is_some_and(|t| t.len() >= 2)),
        "fewer than two samples: {}",
        data()
    );
    let d = data();
    let series = &d["series"];
    let requests: Vec<u64> = series["requests"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert!(*requests.last().unwrap() >= 201, "{requests:?}");
    assert!(series["status"]["4xx"].as_array().unwrap().last().unwrap().as_u64().unwrap() >= 1);
    let bytes: u64 = ["sendfile", "memory", "buffered", "body"]
        .iter()
        .map(|p| series["bytes"][p].as_array().unwrap().last().unwrap().as_u64().unwrap())
        .sum();
    assert!(bytes > 200 * 100, "bytes by delivery path: {}", series["bytes"]);
    let p50: Vec<f64> = series["p50_ms"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    let p99: Vec<f64> = series["p99_ms"].as_array().unwrap().iter().filter_map(|v| v.as_f64()).collect();
    assert!(!p50.is_empty() && p50.iter().zip(&p99).all(|(a, b)| a <= b && *a > 0.0), "{p50:?} {p99:?}");
    assert!(series["connections"].as_array().unwrap().iter().all(|c| c.as_i64().is_some()));

    let names: Vec<&str> = d["tilesets"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert!(names.contains(&"world") && names.contains(&"countries"), "{names:?}");
    let devices_json = server.get_json("/console/devices.json");
    let devices = devices_json["devices"].as_array().unwrap();
    let pump = devices.iter().find(|d| d["device"] == "pump-station-7").expect("pump-station-7");
    let spans = pump["spans"].as_array().unwrap();
    assert_eq!(spans.len(), 2, "{pump}");
    assert!(spans.iter().all(|s| s["first_ms"].as_i64() <= s["last_ms"].as_i64() && s["url"].is_string()));
    let roots = d["roots"].as_array().unwrap();
    assert!(roots.iter().any(|r| r["kind"] == "tiles" && r["delivery"] == "sendfile" && r["watcher"] == "inotify"));

    // The doctor's findings, taken once after start, for the roots view.
    assert!(
        poll_until(Duration::from_secs(10), || data()["doctor"].as_array().is_some_and(|d| d
            .iter()
            .any(|l| l.as_str().is_some_and(|l| l.contains("delivery") && l.contains("sendfile"))))),
        "no doctor findings: {}",
        data()
    );

    // The metrics carry the histogram the quantiles come from.
    assert!(server.metric("tessera_request_duration_seconds_count").unwrap() >= 201.0);

    // Coverage: every tile of world at z = 2 (16), in XYZ rows.
    let c = server.get_json("/console/coverage/world?z=2");
    assert_eq!(c["tiles"].as_array().unwrap().len(), 16, "{c}");
    assert_eq!((c["x0"].as_u64(), c["x1"].as_u64()), (Some(0), Some(3)));
    assert_eq!(server.get("/console/coverage/world?z=12").status, 404);
    assert_eq!(server.get("/console/coverage/nowhere?z=1").status, 404);
    assert_eq!(server.get("/console/coverage/world?z=x").status, 400);

    // The page, its script and style come from the server itself, the
    // plain tables inside the page for browsers without JavaScript.
    let page = server.get("/");
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("<script src=\"/console/console.js\"") && html.contains("<div id=plain>"), "{html}");
    assert!(html.contains("<h2>Tilesets</h2>") && html.contains("/tiles/world.json"), "the plain tables: {html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "nothing from outside the appliance");
    for (path, kind) in [("/console/console.js", "javascript"), ("/console/console.css", "css")] {
        let r = server.get(path);
        assert_eq!(r.status, 200);
        assert!(r.expect_header("content-type").contains(kind));
        assert!(!r.text().contains("http://") && !r.text().contains("https://"), "{path} reaches outside");
        let etag = r.expect_header("etag").to_string();
        assert_eq!(server.request("GET", path, &[("If-None-Match", &etag)]).status, 304);
    }
    server.stop();
}

/// With tokens configured, an anonymous caller gets tilesets only: no
/// figures, no roots, no devices.
#[test]
fn an_anonymous_caller_sees_only_public_data() {
    let fx = Fixture::new();
    fx.copy_samples();
    let config = fx.root().join("tessera.toml");
    std::fs::write(
        &config,
        "[[tokens]]\nname = \"ops\"\nsha256 = \"2efbbb4e7ac9c6e451cf0b398323a6935332608297f7deb1d4212610aa6427fb\"\nroles = [\"metrics\", \"logs\"]\n\
         [[access]]\nprefix = \"/tiles/world/3\"\nallow = [\"authenticated\"]\n",
    )
    .unwrap();
    let server = fx.start_ready_with(&fx.state(), &["--config", config.to_str().unwrap()]);
    let d = server.get_json("/console/data.json");
    assert!(d["series"].is_null() && d["roots"].is_null() && d["doctor"].is_null(), "{d}");
    let devices = server.get_json("/console/devices.json");
    assert_eq!(devices["devices"].as_array().unwrap().len(), 0, "{devices}");
    assert!(!d["tilesets"].as_array().unwrap().is_empty());
    // A zoom level closed by a rule is closed to the coverage too.
    assert_eq!(server.get("/console/coverage/world?z=2").status, 200);
    assert_eq!(server.get("/console/coverage/world?z=3").status, 404);
    // Per-caller answers: no shared cache may keep them.
    let cc = server.get("/console/data.json").header("cache-control").unwrap_or_default().to_string();
    assert!(cc.contains("private"), "{cc}");
    server.stop();
}
