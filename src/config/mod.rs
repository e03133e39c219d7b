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

mod cli;
mod file;
mod security;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use clap::ValueEnum;
use serde::Deserialize;

pub use cli::{Cli, Command, ConfigArgs, TokenArgs};
use file::{parse_file, Lines};
pub use security::{valid_name, AccessRule, ClientAuth, Grant, TlsSettings, TokenSpec};

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

/// The most header fields a request may have, whatever the configuration
/// says (`http.max_headers` is at most this): the driver parses heads into a
/// stack array of this size.
pub const MAX_HEADERS: usize = 128;

/// How file bodies travel (DESIGN.md decision 2), per root or subdirectory.
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
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
    /// Who may read this root's files, on top of the path rules (`access`
    /// in its table); `None`: the path rules alone decide.
    pub access: Option<Vec<Grant>>,
    /// What the files' ETags are made of.
    pub etag: EtagMode,
}

/// What a file's ETag is made of (`etag` in a root's table).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EtagMode {
    /// Modification time and length: free, and the same on every node
    /// whose copy kept the mtimes (shared storage, `rsync -a`, `cp -p`).
    #[default]
    Validators,
    /// A hash of the content, for copies that did not keep mtimes: taken
    /// when a file up to [`crate::validators::CONTENT_ETAG_MAX`] is opened (see
    /// README, "A fleet behind a cache").
    Content,
}

/// An HTTP cache in front of tessera that is told what changed (`[[caches]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheTarget {
    /// `http://host:port`, as configured (for messages and metrics).
    pub url: String,
    /// `host:port` to connect to.
    pub authority: String,
    pub protocol: InvalidationProtocol,
    /// A header every invalidation carries (name, value), so that the
    /// cache can tell tessera's from anyone else's.
    pub secret: Option<(String, String)>,
}

/// How a cache is told what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidationProtocol {
    /// `BAN /` with `X-Tessera-Ban: <regex over path and query>`: one
    /// request for many URLs, or for a whole tileset (image/fleet/tessera.vcl).
    Ban,
    /// `PURGE <path>`, one request per URL (caches that key on the URL).
    Purge,
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
            sendfile_chunk: 256 * 1024,
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
    /// TLS on the main listener, if configured.
    pub tls: Option<TlsSettings>,
    /// Bearer tokens (their hashes), in configuration order.
    pub tokens: Vec<TokenSpec>,
    /// The configured access rules; `access` adds the defaults.
    pub access: Vec<AccessRule>,
    /// Where the configuration came from, for messages.
    pub source: Option<PathBuf>,
    /// Caches in front, told of every change (`[[caches]]`).
    pub caches: Vec<CacheTarget>,
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
            tls: None,
            tokens: Vec::new(),
            access: Vec::new(),
            source: args.config.clone(),
            caches: Vec::new(),
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
            config.apply_file(&file, &base, &lines, &args.credentials)?;
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
        self.apply_tls_args(args)
    }

    /// `--tls-cert` and `--tls-key` replace the file's pair (and keep its
    /// other `[tls]` settings); `--tls-client-ca` and `--plaintext-listen`
    /// need TLS from one or the other.
    fn apply_tls_args(&mut self, args: &ConfigArgs) -> Result<(), ConfigError> {
        let refuse = |message: &str| Err(ConfigError { file: None, line: None, message: message.to_string() });
        match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => {
                for (flag, path) in [("--tls-cert", cert), ("--tls-key", key)] {
                    if !path.is_file() {
                        return refuse(&format!("{flag} {}: not a readable file", path.display()));
                    }
                }
                let tls = self.tls.get_or_insert_with(|| TlsSettings {
                    cert: cert.clone(),
                    key: key.clone(),
                    client_ca: None,
                    crls: Vec::new(),
                    client_auth: ClientAuth::default(),
                    plaintext_listen: None,
                });
                tls.cert = cert.clone();
                tls.key = key.clone();
            }
            (None, None) => {}
            _ => return refuse("--tls-cert and --tls-key go together"),
        }
        let Some(tls) = &mut self.tls else {
            if args.tls_client_ca.is_some() || args.plaintext_listen.is_some() {
                return refuse("--tls-client-ca and --plaintext-listen need TLS (--tls-cert and --tls-key, or [tls])");
            }
            return Ok(());
        };
        if let Some(ca) = &args.tls_client_ca {
            if !ca.is_file() {
                return refuse(&format!("--tls-client-ca {}: not a readable file", ca.display()));
            }
            tls.client_ca = Some(ca.clone());
        }
        if let Some(auth) = args.tls_client_auth {
            tls.client_auth = auth;
        }
        if let Some(addr) = args.plaintext_listen {
            tls.plaintext_listen = Some(addr);
        }
        Ok(())
    }

    /// Whether any credential is configured: then logs and `/metrics` are
    /// closed unless a rule opens them (see `access`).
    pub fn secured(&self) -> bool {
        self.tls.is_some() || !self.tokens.is_empty()
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
            access: None,
            etag: EtagMode::Validators,
        }
    }
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
