//! Path attacks never reach a file outside a root, nor a hidden file inside one.

mod common;

use std::os::unix::fs::symlink;
use std::time::{SystemTime, UNIX_EPOCH};

use common::*;

#[test]
fn path_attacks_never_reach_outside_a_root() {
    let fx = Fixture::new();
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos();
    let marker = format!("TESSERA-SECRET-{}-{nanos}", std::process::id());
    // The secret starts with a timestamp so that a log indexer would happily read it.
    let secret = format!("2024-01-01T00:00:00Z {marker}\n");

    // Outside every root.
    let root = fx.root();
    write_file(&root.join("secret.txt"), secret.as_bytes());
    let outside = root.join("outside");
    write_file(&outside.join("secret.txt"), secret.as_bytes());
    write_file(&outside.join("0").join("0").join("0.png"), secret.as_bytes());

    // Inside the roots: legitimate files, and ways out.
    write_pyramid(&fx.tiles(), "world", 1);
    let logs = fx.logs();
    let dev1 = logs.join("dev1");
    let real = b"2024-05-01T00:00:00Z legitimate line\n".to_vec();
    write_file(&dev1.join("real.log"), &real);
    write_file(&dev1.join(".hidden"), secret.as_bytes());
    symlink("../../secret.txt", dev1.join("link.log")).unwrap();
    symlink(root.join("secret.txt"), dev1.join("abs.log")).unwrap();
    symlink(&outside, logs.join("outdir")).unwrap();
    symlink(&outside, fx.tiles().join("evil")).unwrap();
    write_file(&fx.tiles().join(".private").join("0").join("0").join("0.png"), secret.as_bytes());

    let server = fx.start_ready();

    // Control: the routes work, so the 4xx below are refusals, not a dead server.
    let r = server.get("/logs/dev1/real.log");
    assert_eq!(r.status, 200, "control log");
    assert!(r.body == real, "control log body");
    assert_eq!(server.get("/tiles/world/1/1/1.png").status, 200, "control tile");

    let attacks = [
        "/logs/dev1/../../secret.txt",
        "/logs/dev1/../../../secret.txt",
        "/logs/../secret.txt",
        "/logs/dev1/%2e%2e/%2e%2e/secret.txt",
        "/logs/dev1/%2E%2E/%2E%2E/secret.txt",
        "/logs/dev1/%2e%2e%2f%2e%2e%2fsecret.txt",
        "/logs/dev1/..%2f..%2fsecret.txt",
        "/logs/..%2f..%2fsecret.txt",
        "/logs/%2e%2e/secret.txt",
        "/logs/dev1/..%5c..%5csecret.txt",
        "/logs/dev1/..\\..\\secret.txt",
        "/logs/dev1/secret.txt%00.log",
        "/logs/dev1/real.log%00",
        "/logs/dev1/%252e%252e%252fsecret.txt",
        "/logs/dev1/link.log",
        "/logs/dev1/abs.log",
        "/logs/outdir/secret.txt",
        "/logs/dev1/.hidden",
        "/logs/dev1/%2ehidden",
        "/tiles/..%2f..%2fsecret.txt/0/0/0.png",
        "/tiles/world/..%2f..%2f..%2fsecret.txt/0/0.png",
        "/tiles/world/0/0/..%2f..%2f..%2f..%2fsecret.txt",
        "/tiles/world/../../secret.txt",
        "/tiles/evil/0/0/0.png",
        "/tiles/.private/0/0/0.png",
        "/tiles/evil.json",
        "/tiles/.private.json",
    ];
    let mut failures = Vec::new();
    for target in attacks {
        for method in ["GET", "HEAD"] {
            let r = server.request(method, target, &[]);
            if contains_bytes(&r.body, marker.as_bytes()) {
                failures.push(format!("{method} {target}: LEAKED the secret (status {})", r.status));
            }
            if ![400, 403, 404].contains(&r.status) {
                failures.push(format!("{method} {target}: status {} (expected 400, 403 or 404)", r.status));
            }
        }
    }
    assert!(failures.is_empty(), "path attacks:\n{}", failures.join("\n"));

    // Listings name nothing outside the roots and nothing hidden.
    let listing = server.get("/logs").text();
    for name in [".hidden", "link.log", "abs.log", "outdir", &marker] {
        assert!(!listing.contains(name), "/logs lists {name:?}, which is outside a root or hidden: {listing}");
    }
    assert!(listing.contains("real.log"), "/logs lacks real.log: {listing}");
    let tiles = server.get("/tiles").text();
    for name in ["evil", ".private", &marker] {
        assert!(!tiles.contains(name), "/tiles lists {name:?}, which is outside a root or hidden: {tiles}");
    }
    assert!(tiles.contains("world"), "/tiles lacks world: {tiles}");

    // Still sane afterwards.
    let r = server.get("/healthz");
    assert_eq!(r.status, 200, "/healthz after the attacks");
    assert_eq!(server.get("/logs/dev1/real.log").status, 200);
}
