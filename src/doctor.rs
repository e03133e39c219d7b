//! `tessera doctor`: what tessera decided about each root and why, the
//! limits that bound it, and a live sendfile probe, in the spirit of
//! Apache's advice to check that sendfile is really called.

use std::fmt::Write;
use std::path::Path;

use walkdir::WalkDir;

use crate::config::Config;
use crate::delivery::sendfile;
use crate::roots::{is_hidden, Area, Root, WatcherKind};

/// How many directory entries the probe looks through for a file to send.
const PROBE_SEARCH: usize = 10_000;

/// The report, as text for people. Problems are marked `warning:`.
pub fn report(config: &Config, roots: &[Root]) -> String {
    let mut out = String::new();
    let watch_limit = read_number("/proc/sys/fs/inotify/max_user_watches");
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    let mut inotify_dirs = 0u64;
    for root in roots {
        let _ = writeln!(out, "{} root {}", root.kind(), root.path().display());
        for area in &root.areas {
            describe_area(&mut out, root, area);
        }
        let dirs = count_dirs(root.path());
        let watcher = match root.watcher {
            WatcherKind::Inotify => {
                inotify_dirs += dirs;
                format!("inotify, recursive: {dirs} directories, one watch each")
            }
            WatcherKind::Poll => {
                format!("polling every {} ms ({dirs} directories)", root.spec.poll_interval.as_millis())
            }
            WatcherKind::Off => "off: changes are seen at the next start (and by per-request checks)".to_string(),
        };
        let _ = writeln!(out, "  watcher      {watcher}");
    }
    let _ = writeln!(out, "limits");
    match watch_limit {
        Some(limit) => {
            let _ = writeln!(
                out,
                "  inotify      {inotify_dirs} directories watched of fs.inotify.max_user_watches = {limit}"
            );
            if inotify_dirs > limit {
                let _ = writeln!(out, "  warning: more directories than inotify watches; raise fs.inotify.max_user_watches or use watch = \"poll\"");
            }
        }
        None => {
            let _ = writeln!(out, "  inotify      limit unknown (/proc/sys/fs/inotify/max_user_watches unreadable)");
        }
    }
    let _ = writeln!(
        out,
        "  open files   soft {soft}, hard {hard}; descriptor cache holds up to {}",
        config.cache.max_open_files
    );
    if (config.cache.max_open_files as u64) + 256 > soft {
        let _ = writeln!(out, "  warning: the descriptor cache can use most of the open-file limit; raise LimitNOFILE or lower cache.max_open_files");
    }
    let _ = writeln!(
        out,
        "  memory cache files up to {} KiB, {} MiB in all",
        config.cache.memory_max_file / 1024,
        config.cache.memory_budget / (1024 * 1024)
    );
    out
}

fn describe_area(out: &mut String, root: &Root, area: &Area) {
    let indent = if area.rel.as_os_str().is_empty() {
        "  "
    } else {
        let _ = writeln!(out, "  subdirectory {}", area.rel.display());
        "    "
    };
    let storage = if area.storage.shared { "shared storage" } else { "local storage" };
    let (name, magic) = (&area.storage.fs_name, area.storage.fs_type);
    let _ = writeln!(out, "{indent}filesystem   {name} (f_type 0x{magic:x}), {storage}");
    let _ = writeln!(out, "{indent}delivery     {} ({})", area.delivery.as_str(), area.reason);
    let _ = writeln!(out, "{indent}sendfile     {}", probe(root, area));
}

/// Sends up to 64 KiB of the first file found in the area (not in a deeper
/// area of its own) into a socket pair.
fn probe(root: &Root, area: &Area) -> String {
    let start = root.path().join(&area.rel);
    let in_this_area = |path: &Path| {
        path.strip_prefix(root.path()).ok().and_then(|r| r.to_str()).is_some_and(|rel| root.area(rel).rel == area.rel)
    };
    let found = WalkDir::new(&start)
        .into_iter()
        .filter_entry(|e| {
            e.depth() == 0 || (!e.file_name().as_encoded_bytes().starts_with(b".") && in_this_area(e.path()))
        })
        .take(PROBE_SEARCH)
        .filter_map(Result::ok)
        .find(|e| e.file_type().is_file() && e.metadata().map(|m| m.len() > 0).unwrap_or(false));
    let Some(entry) = found else { return "not probed: no non-empty file found".to_string() };
    let Some(rel) = entry.path().strip_prefix(root.path()).ok().and_then(|r| r.to_str()) else {
        return "not probed: file name is not UTF-8".to_string();
    };
    if is_hidden(Path::new(rel)) {
        return "not probed: only hidden files".to_string();
    }
    match root.open_file(rel).and_then(|f| sendfile::probe(&f)) {
        Ok(n) => format!("probe ok: {n} bytes of {rel} moved to a socket pair"),
        Err(e) => format!("probe FAILED on {rel}: {e} (this area would fall back to the buffered path)"),
    }
}

fn count_dirs(root: &Path) -> u64 {
    WalkDir::new(root)
        .into_iter()
        .filter_entry(|e| e.depth() == 0 || !e.file_name().as_encoded_bytes().starts_with(b"."))
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_dir())
        .count() as u64
}

fn read_number(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}
