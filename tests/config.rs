//! `tessera check --config FILE`: exit 0 on a good configuration; otherwise exit
//! non-zero with `FILE:LINE:` and the reason on stderr.

mod common;

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::*;

/// A TOML basic string holding `p`.
fn toml_str(p: &Path) -> String {
    let s = p.to_str().expect("UTF-8 temp path");
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Writes `text` to the file `name` in the fixture directory and returns its path.
fn write_config(fx: &Fixture, name: &str, text: &str) -> PathBuf {
    let path = fx.root().join(name);
    write_file(&path, text.as_bytes());
    path
}

fn check(config: &Path) -> (bool, Option<i32>, String) {
    let args: Vec<OsString> = vec!["check".into(), "--config".into(), config.into()];
    let (status, _stdout, stderr) = run_tessera(&args);
    (status.success(), status.code(), stderr)
}

/// Asserts that `check` rejects `config` with a message `FILE:LINE: ...` that contains
/// every one of `needles` (case-insensitively) somewhere in stderr.
fn assert_rejected(config: &Path, line: usize, needles: &[&str]) {
    let text = std::fs::read_to_string(config).unwrap();
    let (ok, code, stderr) = check(config);
    assert!(!ok && code.is_some_and(|c| c != 0), "check must fail (exit {code:?}) for:\n{text}\nstderr:\n{stderr}");
    let prefix = format!("{}:{line}:", config.display());
    let at = stderr
        .find(&prefix)
        .unwrap_or_else(|| panic!("stderr must contain {prefix:?} for:\n{text}\nstderr:\n{stderr}"));
    let reason = stderr[at + prefix.len()..].lines().next().unwrap_or("").trim();
    assert!(!reason.is_empty(), "no reason after {prefix:?}; stderr:\n{stderr}");
    let lower = stderr.to_lowercase();
    for needle in needles {
        assert!(
            lower.contains(&needle.to_lowercase()),
            "stderr must mention {needle:?} for:\n{text}\nstderr:\n{stderr}"
        );
    }
}

#[test]
fn check_accepts_a_good_config() {
    let fx = Fixture::new();
    for delivery in ["auto", "sendfile", "buffered"] {
        let text = format!(
            "listen = \"127.0.0.1:8080\"\n\
             state = {}\n\
             [[tiles]]\n\
             path = {}\n\
             delivery = \"{delivery}\"\n\
             [[logs]]\n\
             path = {}\n",
            toml_str(&fx.state()),
            toml_str(&fx.tiles()),
            toml_str(&fx.logs()),
        );
        let config = write_config(&fx, &format!("good-{delivery}.toml"), &text);
        let (ok, code, stderr) = check(&config);
        assert!(ok && code == Some(0), "check must accept (exit {code:?}):\n{text}\nstderr:\n{stderr}");
    }
}

#[test]
fn check_rejects_a_toml_syntax_error_with_its_line() {
    let fx = Fixture::new();
    let text = format!(
        "listen = \"127.0.0.1:8080\"\n\
         state = {}\n\
         this line is not toml\n\
         [[tiles]]\n\
         path = {}\n",
        toml_str(&fx.state()),
        toml_str(&fx.tiles()),
    );
    let config = write_config(&fx, "syntax.toml", &text);
    assert_rejected(&config, 3, &[]);
}

#[test]
fn check_rejects_an_unknown_key_and_names_it() {
    let fx = Fixture::new();
    let text = format!(
        "# tessera configuration\n\
         listen = \"127.0.0.1:8080\"\n\
         state = {}\n\
         frobnicate_level = 11\n\
         [[tiles]]\n\
         path = {}\n",
        toml_str(&fx.state()),
        toml_str(&fx.tiles()),
    );
    let config = write_config(&fx, "unknown-key.toml", &text);
    assert_rejected(&config, 4, &["frobnicate_level"]);
}

#[test]
fn check_rejects_a_bad_delivery_value_and_names_it() {
    let fx = Fixture::new();
    let text = format!(
        "listen = \"127.0.0.1:8080\"\n\
         state = {}\n\
         [[tiles]]\n\
         path = {}\n\
         delivery = \"fast\"\n\
         [[logs]]\n\
         path = {}\n",
        toml_str(&fx.state()),
        toml_str(&fx.tiles()),
        toml_str(&fx.logs()),
    );
    let config = write_config(&fx, "delivery.toml", &text);
    assert_rejected(&config, 5, &["fast"]);
}

#[test]
fn check_rejects_a_tiles_path_that_does_not_exist() {
    let fx = Fixture::new();
    let missing = fx.root().join("no-such-tiles-dir");
    // The second [[tiles]] table is the bad one; its path is on its second line.
    let text = format!(
        "listen = \"127.0.0.1:8080\"\n\
         state = {}\n\
         [[tiles]]\n\
         path = {}\n\
         [[tiles]]\n\
         delivery = \"buffered\"\n\
         path = {}\n\
         [[logs]]\n\
         path = {}\n",
        toml_str(&fx.state()),
        toml_str(&fx.tiles()),
        toml_str(&missing),
        toml_str(&fx.logs()),
    );
    let config = write_config(&fx, "missing-path.toml", &text);
    assert_rejected(&config, 7, &[]);
    let (_, _, stderr) = check(&config);
    let lower = stderr.to_lowercase();
    assert!(
        lower.contains("does not exist") || lower.contains("no such file or directory"),
        "stderr must say the path does not exist:\n{stderr}"
    );
}

/// Per-tileset settings and the public URL are checked like the rest: the
/// line of the bad value and what is allowed.
#[test]
fn check_rejects_bad_tileset_settings_and_public_urls() {
    let fx = Fixture::new();
    let bad_status = write_config(&fx, "status.toml", "[tilesets.roads]\nscheme = \"tms\"\nmissing_tile = 500\n");
    assert_rejected(&bad_status, 3, &["missing_tile", "204 or 404"]);
    let bad_scheme = write_config(&fx, "scheme.toml", "[tilesets.roads]\nscheme = \"quadkey\"\n");
    assert_rejected(&bad_scheme, 2, &["quadkey"]);
    let bad_name = write_config(&fx, "name.toml", "[tilesets.\".hidden\"]\nscheme = \"tms\"\n");
    assert_rejected(&bad_name, 1, &["not a tileset name"]);
    let bad_url = write_config(&fx, "url.toml", "[http]\n\npublic_url = \"maps.example.net\"\n");
    assert_rejected(&bad_url, 3, &["public_url", "https://"]);
    let good = write_config(
        &fx,
        "good.toml",
        "[http]\npublic_url = \"https://maps.example.net/\"\n[tilesets.roads]\nscheme = \"tms\"\nmissing_tile = 404\n",
    );
    let (ok, code, stderr) = check(&good);
    assert!(ok, "a good tileset config was refused ({code:?}): {stderr}");
}

/// `[[caches]]` and `etag`: a URL that is not http://HOST:PORT, a secret
/// header without its file, an unreadable secret file, and an unknown
/// protocol or ETag mode are each refused at their line.
#[test]
fn check_rejects_bad_cache_settings() {
    let fx = Fixture::new();
    let tiles = toml_str(&fx.tiles());
    let cases: [(&str, usize, &[&str]); 5] = [
        ("[[caches]]\nurl = \"https://varnish:6081\"\n", 4, &["caches.url", "http://HOST:PORT"]),
        ("[[caches]]\nurl = \"http://varnish\"\n", 4, &["caches.url"]),
        ("[[caches]]\nurl = \"http://127.0.0.1:6081\"\nsecret_header = \"X-Key\"\n", 3, &["secret_file"]),
        (
            "[[caches]]\nurl = \"http://127.0.0.1:6081\"\nsecret_header = \"X-Key\"\nsecret_file = \"nowhere\"\n",
            6,
            &["caches.secret_file", "nowhere"],
        ),
        ("[[caches]]\nurl = \"http://127.0.0.1:6081\"\nprotocol = \"xkey\"\n", 5, &["xkey", "ban"]),
    ];
    for (i, (table, line, needles)) in cases.iter().enumerate() {
        let text = format!("[[tiles]]\npath = {tiles}\n{table}");
        assert_rejected(&write_config(&fx, &format!("caches-{i}.toml"), &text), *line, needles);
    }
    let text = format!("[[tiles]]\npath = {tiles}\netag = \"inode\"\n");
    assert_rejected(&write_config(&fx, "etag.toml", &text), 3, &["inode", "content"]);
    let logs = toml_str(&fx.logs());
    let text = format!("[[logs]]\npath = {logs}\netag = \"content\"\n");
    assert_rejected(&write_config(&fx, "etag-logs.toml", &text), 2, &["tiles", "only"]);
    let text = format!("[[tiles]]\npath = {tiles}\n[[caches]]\nurl = \"http://127.0.0.1:0\"\n");
    assert_rejected(&write_config(&fx, "port0.toml", &text), 4, &["caches.url"]);
    std::fs::write(fx.root().join("secret"), "s").unwrap();
    let text = format!(
        "[[tiles]]\npath = {tiles}\n[[caches]]\nurl = \"http://127.0.0.1:6081\"\nsecret_header = \"Host\"\nsecret_file = \"secret\"\n"
    );
    assert_rejected(&write_config(&fx, "host.toml", &text), 5, &["secret_header"]);
    let good = format!(
        "[[tiles]]\npath = {tiles}\netag = \"content\"\n[[caches]]\nurl = \"http://127.0.0.1:6081\"\nprotocol = \"purge\"\n"
    );
    let (ok, _, stderr) = check(&write_config(&fx, "good.toml", &good));
    assert!(ok, "{stderr}");
}
