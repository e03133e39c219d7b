//! Configuration: the command line, the TOML file, and their merge into one
//! validated [`Config`].
//!
//! Every setting of the file has a command-line twin for the common cases.
//! A root given on the command line replaces the file's roots of that kind,
//! so `--tiles DIR` always means "serve exactly this".
//!
//! Errors in the file name the file, the 1-based line and the reason, the way
//! `apachectl configtest` does, so that `tessera check` can refuse a bad edit
//! before it replaces a working server.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde::Deserialize;
use toml::Spanned;

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about = "Telemetry tile server: tiles and telemetry logs over HTTP")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Index the roots, watch them and serve them over HTTP (the default).
    Serve(ConfigArgs),
    /// Bring the SQLite index up to date with the disk, print what changed, and exit.
    Index(ConfigArgs),
    /// Validate a configuration and exit non-zero naming the line and the reason.
    Check(ConfigArgs),
    /// Per root: filesystem, local or shared, delivery path and why, watcher,
    /// limits, and a live sendfile probe.
    Doctor(ConfigArgs),
}

/// The flags shared by every subcommand; they override the configuration file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, for example 127.0.0.1:8080 or [::]:80.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A tiles root (repeatable); replaces the configuration file's tile roots.
    #[arg(long, value_name = "DIR")]
    pub tiles: Vec<PathBuf>,
    /// A logs root (repeatable); replaces the configuration file's log roots.
    #[arg(long, value_name = "DIR")]
    pub logs: Vec<PathBuf>,
    /// Directory that holds the SQLite index.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Delivery path for every root: auto, sendfile or buffered.
    #[arg(long, value_name = "MODE")]
    pub delivery: Option<Delivery>,
    /// HTTP transport: tessera's own driver (sendfile capable) or plain hyper.
    #[arg(long, value_name = "NAME")]
    pub transport: Option<Transport>,
}

/// Which code carries HTTP/1.1 connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// tessera's connection driver: sendfile and memory fast paths, hyper
    /// for whatever it does not handle itself.
    #[default]
    Driver,
    /// hyper for everything (buffered path only): for comparison and as an
    /// escape hatch.
    Hyper,
}

/// How file bodies travel (DESIGN.md decision 2). The buffered path is the
/// only one until the sendfile connection driver lands; the setting is
/// already carried per root so that the driver only has to read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Delivery {
    /// sendfile on local storage, buffered on shared storage.
    #[default]
    Auto,
    Sendfile,
    Buffered,
}

/// How a root is watched for changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMode {
    /// inotify on local storage, polling on shared storage.
    #[default]
    Auto,
    Inotify,
    Poll,
    /// No watcher: only start-up reconcile (and per-request revalidation).
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RootKind {
    Tiles,
    Logs,
}

impl fmt::Display for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Delivery::Auto => "auto",
            Delivery::Sendfile => "sendfile",
            Delivery::Buffered => "buffered",
        })
    }
}

impl fmt::Display for RootKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RootKind::Tiles => "tiles",
            RootKind::Logs => "logs",
        })
    }
}

/// One directory tree that tessera indexes and serves.
#[derive(Debug, Clone)]
pub struct RootSpec {
    pub kind: RootKind,
    /// Absolute, canonical path.
    pub path: PathBuf,
    pub delivery: Delivery,
    pub watch: WatchMode,
    pub poll_interval: Duration,
    pub cache_control: String,
    /// Subdirectories with their own delivery setting (Apache's
    /// `EnableSendfile` in a `<Directory>` block); each is also classified
    /// on its own, since it may be a mount point of other storage.
    pub dirs: Vec<DirSpec>,
    /// Per-tileset settings (`[tilesets.NAME]`), shared by every tiles root:
    /// the descriptor cache reads a tileset's `cache_control` from here.
    pub tilesets: Arc<BTreeMap<String, TilesetSpec>>,
}

/// How a tileset directory numbers its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    /// Row 0 at the top (OSM, Google, MapLibre): what tessera serves.
    Xyz,
    /// Row 0 at the bottom (TMS, MBTiles): flipped on the way in.
    Tms,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Xyz => "xyz",
            Scheme::Tms => "tms",
        }
    }
}

/// Settings of one tileset, by name (`[tilesets.NAME]` in the file). Each
/// is optional: unset means what the tileset's own files say, then the default.
#[derive(Debug, Clone, Default)]
pub struct TilesetSpec {
    /// Overrides `scheme` of `metadata.json`; the default is XYZ.
    pub scheme: Option<Scheme>,
    /// Status of a missing tile inside the zoom range: 204 or 404 (default:
    /// 204 for vector tilesets, where MapLibre takes 204 as "empty", and 404
    /// for raster ones).
    pub missing_tile: Option<StatusCode>,
    /// Overrides the root's `cache_control` for this tileset's tiles.
    pub cache_control: Option<String>,
}

/// A subdirectory of a root with its own delivery setting.
#[derive(Debug, Clone)]
pub struct DirSpec {
    /// Relative to the root, without `..` or hidden components.
    pub rel: PathBuf,
    pub delivery: Delivery,
}

/// Limits and timeouts of the HTTP connection driver.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub transport: Transport,
    /// Largest request head (request line and headers) accepted; larger gets 431.
    pub max_head_bytes: usize,
    /// Most header fields accepted; more gets 431.
    pub max_headers: usize,
    /// Time allowed to send a whole request head once its first byte arrived
    /// (and for the first request of a connection); then 408 and close.
    pub head_timeout: Duration,
    /// Time an idle keep-alive connection is kept open.
    pub idle_timeout: Duration,
    /// Time a response write may make no progress before the connection is dropped.
    pub write_timeout: Duration,
    /// Most bytes one sendfile call moves, so one fast reader cannot starve others.
    pub sendfile_chunk: u64,
    /// Driver threads, each with its own single-threaded runtime and its own
    /// `SO_REUSEPORT` listener (nginx's worker model); 0 means one per core.
    pub workers: usize,
    /// The URL clients reach tessera by (behind a proxy, say), without a
    /// trailing slash; TileJSON builds its tile URLs from it. Unset: from the
    /// request's `Host`.
    pub public_url: Option<String>,
    /// Most `?follow` downloads at once (each holds a descriptor and a task); more get 503.
    pub max_followers: usize,
    /// Most client connections at once; a connection over the limit gets a
    /// 503 and is closed at once (it never holds a descriptor for long).
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings {
            transport: Transport::Driver,
            max_head_bytes: 16 * 1024,
            max_headers: 64,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(30),
            sendfile_chunk: 4 * 1024 * 1024,
            workers: 0,
            public_url: None,
            max_followers: 256,
            max_connections: 10_000,
        }
    }
}

/// Limits of the descriptor cache.
#[derive(Debug, Clone)]
pub struct CacheSettings {
    /// Most open files kept in the descriptor cache.
    pub max_open_files: usize,
    /// A cached descriptor (or replay) not checked for this long is
    /// confirmed with one `stat` of its path before use. inotify usually
    /// makes a change visible at once; this bounds staleness even when the
    /// watcher thread waits for a core under load, or an event is lost
    /// (default 40 ms, under DESIGN.md's 50 ms).
    pub revalidate_after: Duration,
    /// Files up to this size are also kept in memory and answered with one
    /// write of head and body.
    pub memory_max_file: u64,
    /// Most bytes of file content kept in memory in all.
    pub memory_budget: u64,
}

impl Default for CacheSettings {
    fn default() -> Self {
        CacheSettings {
            max_open_files: 1024,
            revalidate_after: Duration::from_millis(40),
            memory_max_file: 4 * 1024,
            memory_budget: 64 * 1024 * 1024,
        }
    }
}

/// The whole, validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub state: PathBuf,
    pub roots: Vec<RootSpec>,
    pub cache: CacheSettings,
    pub http: HttpSettings,
    pub tilesets: Arc<BTreeMap<String, TilesetSpec>>,
    /// Where the configuration came from, for messages.
    pub source: Option<PathBuf>,
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_TILES_CACHE_CONTROL: &str = "public, max-age=60";
pub const DEFAULT_LOGS_CACHE_CONTROL: &str = "no-cache";
const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(2);

/// A configuration error, with the place it was found when there is one.
#[derive(Debug)]
pub struct ConfigError {
    pub file: Option<PathBuf>,
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.file, self.line) {
            (Some(file), Some(line)) => write!(f, "{}:{}: {}", file.display(), line, self.message),
            (Some(file), None) => write!(f, "{}: {}", file.display(), self.message),
            (None, _) => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

// ---- the file as written ----------------------------------------------------

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<Spanned<String>>,
    state: Option<Spanned<PathBuf>>,
    #[serde(default)]
    tiles: Vec<FileRoot>,
    #[serde(default)]
    logs: Vec<FileRoot>,
    cache: Option<FileCache>,
    http: Option<FileHttp>,
    #[serde(default)]
    tilesets: BTreeMap<Spanned<String>, FileTileset>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTileset {
    scheme: Option<Scheme>,
    missing_tile: Option<Spanned<u16>>,
    cache_control: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRoot {
    path: Spanned<PathBuf>,
    delivery: Option<Delivery>,
    watch: Option<WatchMode>,
    poll_interval_ms: Option<Spanned<u64>>,
    cache_control: Option<Spanned<String>>,
    #[serde(default)]
    directories: Vec<FileDir>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDir {
    path: Spanned<PathBuf>,
    delivery: Delivery,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    transport: Option<Transport>,
    max_head_bytes: Option<Spanned<usize>>,
    max_headers: Option<Spanned<usize>>,
    head_timeout_ms: Option<u64>,
    idle_timeout_ms: Option<u64>,
    write_timeout_ms: Option<u64>,
    sendfile_chunk_kib: Option<Spanned<u64>>,
    workers: Option<usize>,
    public_url: Option<Spanned<String>>,
    max_followers: Option<usize>,
    max_connections: Option<Spanned<usize>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCache {
    max_open_files: Option<Spanned<usize>>,
    revalidate_after_ms: Option<u64>,
    memory_max_file_kib: Option<u64>,
    memory_budget_mib: Option<u64>,
}

/// Maps byte offsets of the file to 1-based line numbers.
struct Lines<'a> {
    file: &'a Path,
    text: &'a str,
}

impl Lines<'_> {
    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.text.len());
        self.text.as_bytes()[..end].iter().filter(|b| **b == b'\n').count() + 1
    }

    fn error(&self, span: Option<Range<usize>>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: Some(self.file.to_path_buf()),
            line: span.map(|s| self.line_of(s.start)),
            message: message.into(),
        }
    }
}

impl Config {
    /// Builds the configuration from the command line and, if given, the file.
    pub fn load(args: &ConfigArgs) -> Result<Config, ConfigError> {
        let mut config = Config {
            listen: DEFAULT_LISTEN.parse().expect("default listen address"),
            state: default_state_dir(),
            roots: Vec::new(),
            cache: CacheSettings::default(),
            http: HttpSettings::default(),
            tilesets: Arc::default(),
            source: args.config.clone(),
        };
        if let Some(path) = &args.config {
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                file: Some(path.clone()),
                line: None,
                message: format!("cannot read: {e}"),
            })?;
            let lines = Lines { file: path, text: &text };
            let file = parse_file(&lines)?;
            let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
            config.apply_file(&file, &base, &lines)?;
        }
        config.apply_args(args)?;
        if config.roots.is_empty() {
            config.roots = default_roots()?;
        }
        config.check_roots()?;
        for root in &mut config.roots {
            root.tilesets = config.tilesets.clone();
        }
        Ok(config)
    }

    fn apply_file(&mut self, file: &FileConfig, base: &Path, lines: &Lines<'_>) -> Result<(), ConfigError> {
        if let Some(listen) = &file.listen {
            self.listen = listen.get_ref().parse().map_err(|e| {
                lines.error(
                    Some(listen.span()),
                    format!("listen: `{}` is not an address like 127.0.0.1:8080 ({e})", listen.get_ref()),
                )
            })?;
        }
        if let Some(state) = &file.state {
            self.state = base.join(state.get_ref());
        }
        for (kind, roots) in [(RootKind::Tiles, &file.tiles), (RootKind::Logs, &file.logs)] {
            for root in roots {
                self.roots.push(file_root(kind, root, base, lines)?);
            }
        }
        if let Some(cache) = &file.cache {
            if let Some(max) = &cache.max_open_files {
                if *max.get_ref() == 0 {
                    return Err(lines.error(Some(max.span()), "cache.max_open_files must be at least 1"));
                }
                self.cache.max_open_files = *max.get_ref();
            }
            if let Some(ms) = cache.revalidate_after_ms {
                self.cache.revalidate_after = Duration::from_millis(ms);
            }
            if let Some(kib) = cache.memory_max_file_kib {
                self.cache.memory_max_file = kib * 1024;
            }
            if let Some(mib) = cache.memory_budget_mib {
                self.cache.memory_budget = mib * 1024 * 1024;
            }
        }
        if let Some(http) = &file.http {
            self.apply_http(http, lines)?;
        }
        let mut tilesets = BTreeMap::new();
        for (name, t) in &file.tilesets {
            if !crate::roots::safe_segment(name.get_ref()) {
                return Err(lines.error(Some(name.span()), format!("tilesets.{}: not a tileset name", name.get_ref())));
            }
            tilesets.insert(name.get_ref().clone(), tileset_spec(name.get_ref(), t, lines)?);
        }
        self.tilesets = Arc::new(tilesets);
        Ok(())
    }

    fn apply_http(&mut self, http: &FileHttp, lines: &Lines<'_>) -> Result<(), ConfigError> {
        let h = &mut self.http;
        if let Some(t) = http.transport {
            h.transport = t;
        }
        if let Some(w) = http.workers {
            h.workers = w;
        }
        if let Some(n) = http.max_followers {
            h.max_followers = n;
        }
        let at_least = |v: &Spanned<usize>, min: usize, name: &str| {
            if *v.get_ref() < min {
                Err(lines.error(Some(v.span()), format!("http.{name} must be at least {min}")))
            } else {
                Ok(*v.get_ref())
            }
        };
        if let Some(v) = &http.max_connections {
            h.max_connections = at_least(v, 1, "max_connections")?;
        }
        if let Some(v) = &http.max_head_bytes {
            h.max_head_bytes = at_least(v, 1024, "max_head_bytes")?;
        }
        if let Some(v) = &http.max_headers {
            h.max_headers = at_least(v, 8, "max_headers")?;
            if h.max_headers > crate::delivery::head::MAX_HEADERS {
                let max = crate::delivery::head::MAX_HEADERS;
                return Err(lines.error(Some(v.span()), format!("http.max_headers must be at most {max}")));
            }
        }
        if let Some(url) = &http.public_url {
            let trimmed = url.get_ref().trim_end_matches('/');
            let valid = (trimmed.starts_with("http://") || trimmed.starts_with("https://"))
                && trimmed.split_once("://").is_some_and(|(_, rest)| !rest.is_empty())
                && axum::http::HeaderValue::from_str(trimmed).is_ok()
                && !trimmed.contains(['?', '#', ' ']);
            if !valid {
                return Err(lines.error(
                    Some(url.span()),
                    "http.public_url must be an http:// or https:// URL without query, like https://maps.example.net",
                ));
            }
            h.public_url = Some(trimmed.to_string());
        }
        if let Some(kib) = &http.sendfile_chunk_kib {
            if *kib.get_ref() < 64 {
                return Err(lines.error(Some(kib.span()), "http.sendfile_chunk_kib must be at least 64"));
            }
            h.sendfile_chunk = kib.get_ref() * 1024;
        }
        for (value, slot) in [
            (http.head_timeout_ms, &mut h.head_timeout),
            (http.idle_timeout_ms, &mut h.idle_timeout),
            (http.write_timeout_ms, &mut h.write_timeout),
        ] {
            if let Some(ms) = value {
                *slot = Duration::from_millis(ms.max(1));
            }
        }
        Ok(())
    }

    fn apply_args(&mut self, args: &ConfigArgs) -> Result<(), ConfigError> {
        if let Some(listen) = args.listen {
            self.listen = listen;
        }
        if let Some(state) = &args.state {
            self.state = state.clone();
        }
        for (kind, dirs) in [(RootKind::Tiles, &args.tiles), (RootKind::Logs, &args.logs)] {
            if dirs.is_empty() {
                continue;
            }
            self.roots.retain(|r| r.kind != kind);
            for dir in dirs {
                let path = canonical_dir(dir).map_err(|message| ConfigError {
                    file: None,
                    line: None,
                    message: format!("--{kind} {}: {message}", dir.display()),
                })?;
                self.roots.push(RootSpec::new(kind, path));
            }
        }
        if let Some(delivery) = args.delivery {
            for root in &mut self.roots {
                root.delivery = delivery;
                root.dirs.clear();
            }
        }
        if let Some(transport) = args.transport {
            self.http.transport = transport;
        }
        Ok(())
    }

    /// Roots may not overlap: one file must belong to exactly one root, or
    /// the watcher and the catalog would disagree about what it is.
    fn check_roots(&self) -> Result<(), ConfigError> {
        for (i, a) in self.roots.iter().enumerate() {
            for b in &self.roots[i + 1..] {
                if a.path.starts_with(&b.path) || b.path.starts_with(&a.path) {
                    return Err(ConfigError {
                        file: self.source.clone(),
                        line: None,
                        message: format!(
                            "roots overlap: {} root {} and {} root {}",
                            a.kind,
                            a.path.display(),
                            b.kind,
                            b.path.display()
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The roots of one kind, in configuration order (which is lookup order).
    pub fn roots_of(&self, kind: RootKind) -> impl Iterator<Item = &RootSpec> {
        self.roots.iter().filter(move |r| r.kind == kind)
    }
}

impl RootSpec {
    pub fn new(kind: RootKind, path: PathBuf) -> RootSpec {
        RootSpec {
            kind,
            path,
            delivery: Delivery::Auto,
            watch: WatchMode::Auto,
            poll_interval: DEFAULT_POLL_INTERVAL,
            cache_control: match kind {
                RootKind::Tiles => DEFAULT_TILES_CACHE_CONTROL,
                RootKind::Logs => DEFAULT_LOGS_CACHE_CONTROL,
            }
            .to_string(),
            dirs: Vec::new(),
            tilesets: Arc::default(),
        }
    }
}

fn tileset_spec(name: &str, t: &FileTileset, lines: &Lines<'_>) -> Result<TilesetSpec, ConfigError> {
    let missing_tile = match &t.missing_tile {
        None => None,
        Some(code) if matches!(code.get_ref(), 204 | 404) => {
            Some(StatusCode::from_u16(*code.get_ref()).expect("valid status"))
        }
        Some(code) => {
            return Err(lines.error(Some(code.span()), format!("tilesets.{name}.missing_tile must be 204 or 404")))
        }
    };
    if let Some(cc) = &t.cache_control {
        if axum::http::HeaderValue::from_str(cc.get_ref()).is_err() {
            return Err(
                lines.error(Some(cc.span()), format!("tilesets.{name}.cache_control is not a valid header value"))
            );
        }
    }
    Ok(TilesetSpec {
        scheme: t.scheme,
        missing_tile,
        cache_control: t.cache_control.as_ref().map(|c| c.get_ref().clone()),
    })
}

fn parse_file(lines: &Lines<'_>) -> Result<FileConfig, ConfigError> {
    toml::from_str::<FileConfig>(lines.text).map_err(|e| lines.error(e.span(), e.message().trim().to_string()))
}

fn file_root(kind: RootKind, root: &FileRoot, base: &Path, lines: &Lines<'_>) -> Result<RootSpec, ConfigError> {
    let path = base.join(root.path.get_ref());
    let path = canonical_dir(&path)
        .map_err(|m| lines.error(Some(root.path.span()), format!("{kind} path {}: {m}", path.display())))?;
    let mut spec = RootSpec::new(kind, path);
    spec.delivery = root.delivery.unwrap_or_default();
    spec.watch = root.watch.unwrap_or_default();
    if let Some(ms) = &root.poll_interval_ms {
        if *ms.get_ref() < 10 {
            return Err(lines.error(Some(ms.span()), "poll_interval_ms must be at least 10"));
        }
        spec.poll_interval = Duration::from_millis(*ms.get_ref());
    }
    if let Some(cc) = &root.cache_control {
        if axum::http::HeaderValue::from_str(cc.get_ref()).is_err() {
            return Err(lines.error(Some(cc.span()), "cache_control is not a valid header value"));
        }
        spec.cache_control = cc.get_ref().clone();
    }
    for dir in &root.directories {
        let rel = dir.path.get_ref();
        let plain = rel
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(n) if !n.as_encoded_bytes().starts_with(b".")));
        if !plain || rel.as_os_str().is_empty() {
            return Err(
                lines.error(Some(dir.path.span()), "directories.path must be a plain relative path inside the root")
            );
        }
        if !spec.path.join(rel).is_dir() {
            return Err(lines
                .error(Some(dir.path.span()), format!("directory {} does not exist", spec.path.join(rel).display())));
        }
        spec.dirs.push(DirSpec { rel: rel.clone(), delivery: dir.delivery });
    }
    Ok(spec)
}

fn canonical_dir(path: &Path) -> Result<PathBuf, String> {
    let canonical = std::fs::canonicalize(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_string(),
        _ => e.to_string(),
    })?;
    if !canonical.is_dir() {
        return Err("is not a directory".to_string());
    }
    Ok(canonical)
}

/// `$STATE_DIRECTORY` under systemd, otherwise `.tessera` in the working directory.
fn default_state_dir() -> PathBuf {
    match std::env::var_os("STATE_DIRECTORY") {
        // systemd may pass several, separated by colons: the first is ours.
        Some(dirs) => PathBuf::from(dirs.to_string_lossy().split(':').next().unwrap_or(".tessera")),
        None => PathBuf::from(".tessera"),
    }
}

/// With no roots configured, serve the repository's sample data: `tiles/` and
/// `logs/` of the working directory if present, else of the source tree the
/// binary was built from (so `cargo run -- serve` works from anywhere in it).
fn default_roots() -> Result<Vec<RootSpec>, ConfigError> {
    let candidates = [PathBuf::from("."), PathBuf::from(env!("CARGO_MANIFEST_DIR"))];
    for base in &candidates {
        let (tiles, logs) = (base.join("tiles"), base.join("logs"));
        if tiles.is_dir() && logs.is_dir() {
            let mut roots = Vec::new();
            for (kind, dir) in [(RootKind::Tiles, tiles), (RootKind::Logs, logs)] {
                let path = canonical_dir(&dir).map_err(|message| ConfigError { file: None, line: None, message })?;
                roots.push(RootSpec::new(kind, path));
            }
            return Ok(roots);
        }
    }
    Err(ConfigError {
        file: None,
        line: None,
        message: "no roots configured: pass --tiles DIR and --logs DIR, or --config FILE".to_string(),
    })
}
