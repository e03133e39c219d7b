//! The module layering ARCHITECTURE.md states, checked on the source: each
//! top-level module of `src/` may import (`crate::...`) only the modules
//! listed for it below, so imports run one way and no cycle can form; and
//! the absences it names hold (no SQLite in the HTTP layer, no URL in the
//! catalog). Adding an import that is not listed fails here: either it is
//! wrong, or the layering changed and this table, ARCHITECTURE.md and the
//! reason go together.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Module, and the crate modules it may import. Lower layers first.
const ALLOWED: &[(&str, &[&str])] = &[
    ("names", &[]),
    ("validators", &[]),
    ("metrics", &[]),
    ("logging", &[]),
    ("tile", &[]),
    ("logline", &[]),
    ("pmtiles", &[]),
    ("mime", &["tile"]),
    ("config", &["names"]),
    ("access", &["config"]),
    ("roots", &["config", "names"]),
    ("cache", &["config", "metrics", "mime", "roots", "validators"]),
    ("mbtiles", &["roots", "tile", "validators"]),
    ("catalog", &["config", "logline", "mbtiles", "metrics", "names", "pmtiles", "roots", "tile", "validators"]),
    ("archive", &["pmtiles", "validators"]),
    ("watch", &["cache", "catalog", "metrics", "names", "roots"]),
    ("delivery", &["cache", "config", "logging", "metrics", "roots", "validators"]),
    ("systemd", &[]),
    ("tls", &["access", "config", "delivery", "metrics", "names"]),
    (
        "http",
        &[
            "access",
            "archive",
            "cache",
            "catalog",
            "config",
            "delivery",
            "logging",
            "logline",
            "mbtiles",
            "metrics",
            "mime",
            "names",
            "pmtiles",
            "roots",
            "systemd",
            "tile",
            "validators",
            "watch",
        ],
    ),
    ("invalidate", &["config", "http", "metrics", "tile"]),
    ("doctor", &["access", "config", "delivery", "names", "roots", "tls", "watch"]),
    (
        "server",
        &[
            "access",
            "cache",
            "catalog",
            "config",
            "delivery",
            "doctor",
            "http",
            "invalidate",
            "logging",
            "metrics",
            "roots",
            "systemd",
            "tls",
            "watch",
        ],
    ),
];

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file belongs to (`src/http/tiles.rs` -> `http`).
fn module_of(file: &Path) -> String {
    let rel = file.strip_prefix(src()).expect("under src");
    let first = rel.components().next().expect("a component").as_os_str().to_string_lossy().into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The code of a file without comments (line comments, doc comments).
fn code(text: &str) -> String {
    text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// The crate modules a file's code names (`crate::x`).
fn imports(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        let after = &rest[at + "crate::".len()..];
        let name: String = after.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
        assert!(!name.is_empty(), "a `crate::{{...}}` group: name each module on its own line\n{after:.60}");
        found.insert(name);
        rest = after;
    }
    found
}

#[test]
fn imports_run_one_way() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> =
        ALLOWED.iter().map(|(m, deps)| (*m, deps.iter().copied().collect())).collect();
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut wrong = Vec::new();
    for file in &files {
        let module = module_of(file);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(may) = allowed.get(module.as_str()) else {
            wrong.push(format!("{}: module `{module}` is not in the layering table", file.display()));
            continue;
        };
        let text = fs::read_to_string(file).expect("read");
        for import in imports(&code(&text)) {
            if import != module && !may.contains(import.as_str()) {
                wrong.push(format!("{}: `{module}` imports `{import}`", file.display()));
            }
        }
    }
    assert!(wrong.is_empty(), "imports against the layering:\n{}", wrong.join("\n"));
    // The table itself has no cycle: each module lists only modules above it.
    let order: Vec<&str> = ALLOWED.iter().map(|(m, _)| *m).collect();
    for (i, (module, deps)) in ALLOWED.iter().enumerate() {
        for dep in *deps {
            let at = order.iter().position(|m| m == dep).unwrap_or_else(|| panic!("`{dep}` is not in the table"));
            assert!(at < i, "`{module}` may import `{dep}`, listed after it: a cycle could form");
        }
    }
}

/// The absences ARCHITECTURE.md names that imports alone do not show.
#[test]
fn the_http_layer_holds_no_sqlite_and_the_catalog_builds_no_url() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    for file in &files {
        let text = code(&fs::read_to_string(file).expect("read"));
        match module_of(file).as_str() {
            "http" | "delivery" => {
                assert!(!text.contains("rusqlite"), "{}: the HTTP layer names rusqlite", file.display())
            }
            "catalog" => assert!(
                !text.contains("\"/logs") && !text.contains("\"/tiles"),
                "{}: the catalog builds a URL",
                file.display()
            ),
            _ => {}
        }
    }
}
