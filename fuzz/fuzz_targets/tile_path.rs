//! URL-to-path resolution for tiles, as `http::tiles::dispatch` does it
//! (`segments`, then `tile_address` and `stored_rel` for four segments), on
//! the raw input and on the path `http::Uri` makes of it, then
//! `Root::open_file` in a real tiles root planted with hidden files,
//! symbolic links out of the root (relative, absolute, through `/proc`, to a
//! sibling whose name shares the root's prefix), links to hidden names, a
//! FIFO, a loop and a directory named like a tile.
//!
//! Invariants, beyond "never panics":
//!  * `segments` gives 1 to 4 segments;
//!  * an Ok tile path is `{tileset}/{z}/{x}/{y}.{ext}`: exactly four
//!    segments, none empty, hidden (`.`, `..`, `.x`; "a..b" is a fine name)
//!    or holding a separator, NUL or control character; no leading '/';
//!    only normal components;
//!    the tileset is the first decoded segment and passes `safe_segment`;
//!    z <= 30, x and y below 2^z, a known extension in lower case; the TMS
//!    answer differs from the XYZ one only by the flipped row;
//!  * whatever `open_file` opens, for any relative path at all, is a file
//!    inside the root (by its content and by `/proc/self/fd`), and for a
//!    path of safe segments (every tile path) never a hidden one.
#![no_main]

use std::fs;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use http::StatusCode;
use libfuzzer_sys::fuzz_target;
use tessera::config::{RootKind, RootSpec};
use tessera::http::tiles::{segments, stored_rel, tile_address};
use tessera::names::safe_segment;
use tessera::roots::Root;
use tessera::tile::Format;

/// What every file outside the root, or hidden inside it, starts with.
const OUTSIDE: &[u8] = b"OUTSIDE";
const HIDDEN: &[u8] = b"HIDDEN";
const TILE: &[u8] = b"TILE";

struct Fixture {
    root: Root,
    /// The root's canonical path.
    path: PathBuf,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| make_fixture().expect("tiles root fixture"))
}

fn make_fixture() -> std::io::Result<Fixture> {
    // Under $TMPDIR (.ci/fuzz points it at its own work directory).
    let base = std::env::temp_dir().join(format!("tessera-fuzz-tiles-{}", std::process::id()));
    let _ = fs::remove_dir_all(&base);
    fs::create_dir_all(&base)?;
    let base = base.canonicalize()?;
    let file = |rel: &str, content: &[u8]| -> std::io::Result<()> {
        let p = base.join(rel);
        fs::create_dir_all(p.parent().expect("parent"))?;
        fs::write(p, content)
    };
    let link = |rel: &str, to: &str| -> std::io::Result<()> {
        let p = base.join(rel);
        fs::create_dir_all(p.parent().expect("parent"))?;
        symlink(to, p)
    };
    let abs = base.to_str().expect("UTF-8 temp dir").to_owned();

    // Outside the root "r": beside it, above it, and a sibling "r2" whose
    // name starts with the root's.
    file("outside/secret.png", OUTSIDE)?;
    file("outside/0/0/0.png", OUTSIDE)?;
    file("0/0/0.png", OUTSIDE)?;
    file("r2/world/0/0/0.png", OUTSIDE)?;
    // Inside, served.
    file("r/world/0/0/0.png", TILE)?;
    file("r/world/1/0/0.png", TILE)?;
    file("r/world/1/1/1.png", TILE)?;
    file("r/0/0/0/0.png", TILE)?;
    file("r/0/0/0.png", TILE)?;
    // Inside, hidden.
    file("r/.hidden/0/0/0.png", HIDDEN)?;
    file("r/world/3/0/.secret", HIDDEN)?;
    file("r/world/.git/0/0.png", HIDDEN)?;
    // Files that are links.
    link("r/world/1/0/1.png", "../../../../outside/secret.png")?;
    link("r/world/1/1/0.png", &format!("{abs}/outside/secret.png"))?;
    link("r/world/2/0/0.png", "../../../.hidden/0/0/0.png")?;
    link("r/world/2/0/1.png", "../../../world/0/0/0.png")?; // inside: fine
    link("r/world/2/0/3.png", "3.png")?; // a loop
    link("r/world/2/1/0.png", "../../../../r2/world/0/0/0.png")?;
    link("r/world/2/1/2.png", "../1/../../../../outside/secret.png")?;
    link("r/world/2/2/0.png", "../../.git/0/0.png")?;
    link("r/world/3/0/0.png", "../../.././world/0/0/0.png")?; // inside: fine
    link("r/world/3/0/1.png", ".secret")?;
    link("r/world/3/0/2.png", &format!("/proc/self/root{abs}/outside/secret.png"))?;
    link("r/world/3/0/3.png", "/proc/self/cwd")?;
    link("r/world/3/1/0.png", "../../../../r/.hidden/0/0/0.png")?;
    link("r/world/3/1/1.png", &format!("{abs}/r/.hidden/0/0/0.png"))?;
    // Directories that are links.
    link("r/esc", "../outside")?;
    link("r/abs", &format!("{abs}/outside"))?;
    link("r/hid", ".hidden")?;
    link("r/ok", "world")?; // inside: fine
    link("r/sib", "../r2/world")?;
    link("r/up", "..")?;
    link("r/dot", ".")?; // inside: fine
    link("r/world/4", "../.hidden")?;
    link("r/proc", "/proc/self/root")?;
    // Not regular files.
    fs::create_dir_all(base.join("r/world/2/1/3.png"))?;
    let fifo = std::ffi::CString::new(format!("{abs}/r/world/2/0/2.png")).expect("no NUL");
    // SAFETY: a valid C string; mkfifo only creates a node.
    if unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) } != 0 {
        return Err(std::io::Error::last_os_error());
    }

    let path = base.join("r");
    let root = Root::open(0, RootSpec::new(RootKind::Tiles, path.clone()))?;
    Ok(Fixture { root, path })
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let Ok(input) = std::str::from_utf8(data) else {
        // Arbitrary bytes still make a relative path to open.
        open_any(fx, &String::from_utf8_lossy(data));
        return;
    };
    check_path(fx, input);
    // What the router sees: the path of the parsed request target.
    if let Ok(uri) = input.parse::<http::Uri>() {
        check_path(fx, uri.path());
    }
    // And the input as a relative path handed straight to the root.
    open_any(fx, input);
    open_any(fx, input.trim_start_matches("/tiles/"));
});

fn check_path(fx: &Fixture, path: &str) {
    let segs = segments(path);
    if let Ok(segs) = &segs {
        assert!((1..=4).contains(&segs.len()), "{} segments", segs.len());
        // The decoded segments joined, as a careless caller would: the root
        // must still confine them.
        open_any(fx, &segs.join("/"));
    }
    let xyz = tile_rel(path, false);
    let tms = tile_rel(path, true);
    match (&xyz, &tms) {
        (Ok(a), Ok(b)) => {
            let first = segs.as_ref().expect("segments of a tile path")[0].as_ref();
            let (za, xa, ya) = check_rel(a, first);
            let (zb, xb, yb) = check_rel(b, first);
            assert_eq!((za, xa), (zb, xb), "TMS changed more than the row: {a} / {b}");
            assert_eq!(u64::from(yb), (1u64 << za) - 1 - u64::from(ya), "TMS row of {a} is not flipped in {b}");
            assert_eq!(a.rsplit_once('.').map(|p| p.1), b.rsplit_once('.').map(|p| p.1));
            open_tile(fx, a);
            open_tile(fx, b);
        }
        (Err(a), Err(b)) => assert_eq!(a, b, "TMS and XYZ refuse {path:?} differently"),
        _ => panic!("TMS and XYZ disagree on {path:?}: {xyz:?} / {tms:?}"),
    }
}

/// What `dispatch` makes of a tile path: the file below the tiles root, or
/// the status it answers.
fn tile_rel(path: &str, tms: bool) -> Result<String, StatusCode> {
    let segs = segments(path)?;
    let [tileset, z, x, file] = segs.as_slice() else { return Err(StatusCode::NOT_FOUND) };
    let (tileset, tile) = tile_address(tileset, z, x, file)?;
    Ok(stored_rel(tileset, &tile, tms))
}

/// Checks the shape of a resolved tile path; returns z, x and y.
fn check_rel(rel: &str, tileset: &str) -> (u32, u32, u32) {
    assert!(!rel.starts_with('/'), "absolute: {rel:?}");
    assert!(!rel.contains('\\') && !rel.contains('\0'), "separator or NUL in {rel:?}");
    assert!(!rel.chars().any(char::is_control), "control character in {rel:?}");
    let parts: Vec<&str> = rel.split('/').collect();
    assert_eq!(parts.len(), 4, "not four segments: {rel:?}");
    for p in &parts {
        // No `.`, `..` or hidden name; ".." inside a name ("a..b") is harmless.
        assert!(!p.is_empty() && !p.starts_with('.'), "empty or hidden segment in {rel:?}");
        assert!(safe_segment(p), "unsafe segment {p:?} in {rel:?}");
    }
    assert!(
        Path::new(rel).components().all(|c| matches!(c, Component::Normal(_))),
        "a component that is not a name in {rel:?}"
    );
    assert_eq!(parts[0], tileset, "the tileset of {rel:?} is not the first segment");
    let number = |s: &str| -> u32 {
        assert!(s.bytes().all(|b| b.is_ascii_digit()), "not a number: {s:?} in {rel:?}");
        s.parse().expect("a u32")
    };
    let (y, ext) = parts[3].split_once('.').expect("y.ext");
    let (z, x, y) = (number(parts[1]), number(parts[2]), number(y));
    assert!(z <= 30 && u64::from(x) < 1u64 << z && u64::from(y) < 1u64 << z, "{rel:?} outside its zoom level");
    assert!(Format::from_name(ext).is_some() && ext == ext.to_ascii_lowercase(), "extension {ext:?} in {rel:?}");
    (z, x, y)
}

/// A tile path: what it opens is inside the root and not hidden.
fn open_tile(fx: &Fixture, rel: &str) {
    if let Ok(file) = fx.root.open_file(rel) {
        confirm(fx, rel, file, true);
    }
}

/// Any relative path: what it opens is inside the root; and not hidden when
/// every segment is safe (the HTTP layer checks names before any open).
fn open_any(fx: &Fixture, rel: &str) {
    if let Ok(file) = fx.root.open_file(rel) {
        confirm(fx, rel, file, rel.split('/').all(safe_segment));
    }
}

fn confirm(fx: &Fixture, rel: &str, mut file: fs::File, safe: bool) {
    let real = fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd())).expect("readlink /proc/self/fd");
    let inside = real.strip_prefix(&fx.path).unwrap_or_else(|_| panic!("{rel:?} opened {real:?}, outside the root"));
    let meta = file.metadata().expect("fstat");
    assert!(meta.is_file(), "{rel:?} opened something that is not a regular file: {real:?}");
    let mut head = [0u8; 8];
    let n = file.read(&mut head).expect("read");
    assert!(!head[..n].starts_with(OUTSIDE), "{rel:?} opened a file from outside the root: {real:?}");
    if safe {
        assert!(!head[..n].starts_with(HIDDEN), "{rel:?} opened a hidden file: {real:?}");
        assert!(
            inside.components().all(|c| matches!(c, Component::Normal(n) if !n.as_encoded_bytes().starts_with(b"."))),
            "{rel:?} opened {real:?}, behind a hidden name"
        );
    }
}
