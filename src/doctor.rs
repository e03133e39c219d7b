//! `tessera doctor`: what tessera decided about each root and why, the
//! limits that bound it, and a live sendfile probe, in the spirit of
//! Apache's advice to check that sendfile is really called.

use std::fmt::Write;
use std::io::{Read, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use walkdir::WalkDir;

use crate::config::Config;
use crate::delivery::sendfile;
use crate::names::is_hidden;
use crate::roots::{Area, Root, WatcherKind};
use crate::watch::limit::{self, WatchLimit};

/// How many directory entries the probe looks through for a file to send.
const PROBE_SEARCH: usize = 10_000;

/// The report, as text for people. Problems are marked `warning:`.
/// `probe`: try a sendfile of a file of each area (`tessera doctor`; the
/// console's copy, taken inside the server, leaves the files alone).
pub fn report(config: &Config, roots: &[Root], probe: bool) -> String {
    let mut out = String::new();
    let (soft, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap_or((0, 0));
    let mut inotify_dirs = 0u64;
    for root in roots {
        let _ = writeln!(out, "{} root {}", root.kind(), root.path().display());
        for area in &root.areas {
            describe_area(&mut out, root, area, probe);
        }
        let dirs = count_dirs(root.path());
        let watcher = match root.watcher {
            WatcherKind::Inotify => {
                inotify_dirs += dirs;
                format!(
                    "inotify: {dirs} directories, one watch each (past the watch limit, polled every {} ms)",
                    root.spec.poll_interval.as_millis()
                )
            }
            WatcherKind::Poll => {
                format!("polling every {} ms ({dirs} directories)", root.spec.poll_interval.as_millis())
            }
            WatcherKind::Off => "off: changes are seen at the next start (and by per-request checks)".to_string(),
        };
        let _ = writeln!(out, "  watcher      {watcher}");
    }
    let _ = writeln!(out, "limits");
    describe_watch_limit(&mut out, config, inotify_dirs);
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
    describe_security(&mut out, config);
    out
}

/// TLS (whether the files load, device verification), kernel TLS, tokens,
/// and the access rule of each kind of path.
fn describe_security(out: &mut String, config: &Config) {
    let _ = writeln!(out, "security");
    match &config.tls {
        None => {
            let _ = writeln!(out, "  tls          off: plaintext HTTP on {}", config.listen);
        }
        Some(tls) => {
            let loaded = match crate::tls::server_config(tls) {
                Ok(_) => "loads".to_string(),
                Err(e) => format!("warning: does not load: {e:#}"),
            };
            let _ = writeln!(
                out,
                "  tls          {} on {}: {} ({loaded})",
                tls.cert.display(),
                config.listen,
                tls.key.display()
            );
            let devices = match &tls.client_ca {
                Some(ca) => {
                    format!("verified against {} ({:?}), {} CRL files", ca.display(), tls.client_auth, tls.crls.len())
                }
                None => "not asked for (no client_ca)".to_string(),
            };
            let _ = writeln!(out, "  devices      {devices}");
            if let Some(plain) = tls.plaintext_listen {
                let _ = writeln!(out, "  plaintext    also on {plain}");
            }
        }
    }
    // TLS bodies are encrypted in user space; kernel TLS would let sendfile
    // carry them, and is reported here for when it is there.
    let ktls = match crate::tls::kernel_tls() {
        Some(true) => "offered (tls in tcp_available_ulp); tessera does not use it yet",
        Some(false) => {
            "not offered (no tls in /proc/sys/net/ipv4/tcp_available_ulp): TLS bodies take the buffered path"
        }
        None => "unknown (/proc/sys/net/ipv4/tcp_available_ulp unreadable)",
    };
    let _ = writeln!(out, "  kernel tls   {ktls}");
    let _ = writeln!(out, "  tokens       {}", config.tokens.len());
    let policy = crate::access::Policy::new(config);
    for path in ["/tiles", "/logs", "/metrics", "/"] {
        let rule: Vec<String> = policy.rule(&crate::access::Target::new(path)).iter().map(|g| g.to_string()).collect();
        let _ = writeln!(out, "  access       {path:<9} {}", rule.join(", "));
    }
}

fn describe_area(out: &mut String, root: &Root, area: &Area, live: bool) {
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
    if live {
        let _ = writeln!(out, "{indent}sendfile     {}", probe(root, area));
    }
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

/// The inotify watch limit against what the inotify roots need: its value
/// and source, the watches this user's processes hold already, and how many
/// directories would be polled for want of watches.
fn describe_watch_limit(out: &mut String, config: &Config, needed: u64) {
    let Some(limit) = WatchLimit::read() else {
        let _ = writeln!(
            out,
            "  inotify      limit unknown ({} and {} unreadable)",
            limit::SYSTEM_SETTING,
            limit::NAMESPACE_SETTING
        );
        return;
    };
    let in_use = limit::own_uid().map(limit::watches_in_use).unwrap_or(0);
    let free = limit.value.saturating_sub(in_use);
    let polled = needed.saturating_sub(free);
    let _ = writeln!(out, "  inotify      limit {limit}");
    let _ = writeln!(
        out,
        "  inotify      {in_use} watches in use by this user's processes (a running tessera's included), \
         {free} free; the inotify roots need {needed}"
    );
    if polled > 0 {
        let _ = writeln!(
            out,
            "  warning: {polled} of {needed} directories would be polled instead of watched (changes seen within \
             poll_interval_ms, not at once); {}",
            limit.advice(needed + in_use)
        );
    }
    if let Some(live) = live_unwatched(config.listen) {
        let _ = writeln!(
            out,
            "  inotify      tessera at {} polls {live} directories now (tessera_watch_unwatched_directories)",
            config.listen
        );
    }
}

/// `tessera_watch_unwatched_directories` (summed over roots) of a tessera
/// answering at `addr`, if one does within a moment.
fn live_unwatched(addr: SocketAddr) -> Option<u64> {
    if addr.port() == 0 {
        return None;
    }
    let timeout = Duration::from_millis(300);
    let mut stream = TcpStream::connect_timeout(&addr, timeout).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    stream.set_write_timeout(Some(timeout)).ok()?;
    stream.write_all(format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes()).ok()?;
    let mut text = String::new();
    stream.take(4 << 20).read_to_string(&mut text).ok()?;
    let values: Vec<u64> = text
        .lines()
        .filter(|l| l.starts_with("tessera_watch_unwatched_directories{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}
