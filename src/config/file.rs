//! The configuration file as written (TOML, read with the spans of its
//! values) and how it applies to a [`Config`]: every error names the file,
//! the line and the reason.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde::Deserialize;
use toml::Spanned;

use super::security::{parse_sha256, valid_name, valid_prefix, AccessRule, ClientAuth, Grant, TlsSettings, TokenSpec};
use super::{
    canonical_dir, CacheTarget, Config, ConfigError, Delivery, DirSpec, EtagMode, InvalidationProtocol, RootKind,
    RootSpec, Scheme, TilesetSpec, Transport, WatchMode, MAX_HEADERS,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConfig {
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
    tls: Option<Spanned<FileTls>>,
    #[serde(default)]
    tokens: Vec<Spanned<FileToken>>,
    #[serde(default)]
    access: Vec<Spanned<FileAccess>>,
    #[serde(default)]
    caches: Vec<Spanned<FileCacheTarget>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileCacheTarget {
    url: Spanned<String>,
    protocol: Option<InvalidationProtocol>,
    secret_header: Option<Spanned<String>>,
    secret_file: Option<Spanned<PathBuf>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
    client_ca: Option<Spanned<PathBuf>>,
    #[serde(default)]
    crl: Vec<Spanned<PathBuf>>,
    client_auth: Option<ClientAuth>,
    plaintext_listen: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToken {
    name: Spanned<String>,
    sha256: Spanned<String>,
    #[serde(default)]
    roles: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAccess {
    prefix: Spanned<String>,
    allow: Vec<Spanned<String>>,
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
    access: Option<Spanned<Vec<Spanned<String>>>>,
    etag: Option<EtagMode>,
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
pub(super) struct Lines<'a> {
    pub(super) file: &'a Path,
    pub(super) text: &'a str,
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
    /// `credentials`: the files `--credential` gives for `%d/NAME` paths.
    pub(super) fn apply_file(
        &mut self,
        file: &FileConfig,
        base: &Path,
        lines: &Lines<'_>,
        credentials: &[(String, PathBuf)],
    ) -> Result<(), ConfigError> {
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
            if !crate::names::safe_segment(name.get_ref()) {
                return Err(lines.error(Some(name.span()), format!("tilesets.{}: not a tileset name", name.get_ref())));
            }
            tilesets.insert(name.get_ref().clone(), tileset_spec(name.get_ref(), t, lines)?);
        }
        self.tilesets = Arc::new(tilesets);
        if let Some(tls) = &file.tls {
            self.tls = Some(file_tls(tls, base, lines, credentials)?);
        }
        for token in &file.tokens {
            let token = file_token(token, lines)?;
            if self.tokens.iter().any(|t| t.name == token.name) {
                return Err(lines.error(None, format!("tokens: the name `{}` is used twice", token.name)));
            }
            self.tokens.push(token);
        }
        for rule in &file.access {
            let rule = file_access(rule, lines)?;
            if self.access.iter().any(|r| r.prefix == rule.prefix) {
                return Err(lines.error(None, format!("access: the prefix `{}` has two rules", rule.prefix)));
            }
            self.access.push(rule);
        }
        for cache in &file.caches {
            let target = file_cache_target(cache, base, lines, credentials)?;
            if self.caches.iter().any(|c| c.url == target.url) {
                return Err(lines.error(Some(cache.span()), format!("caches: `{}` is listed twice", target.url)));
            }
            self.caches.push(target);
        }
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
            if h.max_headers > MAX_HEADERS {
                let max = MAX_HEADERS;
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

pub(super) fn parse_file(lines: &Lines<'_>) -> Result<FileConfig, ConfigError> {
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
    if let Some(etag) = root.etag {
        // Logs grow: a content ETag would be taken of bytes already old.
        if kind == RootKind::Logs && etag == EtagMode::Content {
            return Err(lines.error(Some(root.path.span()), "etag = \"content\" applies to [[tiles]] roots only"));
        }
        spec.etag = etag;
    }
    if let Some(access) = &root.access {
        if access.get_ref().is_empty() {
            return Err(lines.error(Some(access.span()), "access: name at least one grant"));
        }
        let grants = access
            .get_ref()
            .iter()
            .map(|g| Grant::parse(g.get_ref()).map_err(|m| lines.error(Some(g.span()), format!("access: {m}"))))
            .collect::<Result<_, _>>()?;
        spec.access = Some(grants);
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

/// A `[[caches]]` table: a plain `http://host:port` (caches sit beside the
/// nodes; tessera does not speak TLS to them), and a secret header read
/// from a file (or a systemd credential), never written in the configuration.
fn file_cache_target(
    cache: &Spanned<FileCacheTarget>,
    base: &Path,
    lines: &Lines<'_>,
    credentials: &[(String, PathBuf)],
) -> Result<CacheTarget, ConfigError> {
    let c = cache.get_ref();
    let url = c.url.get_ref().trim_end_matches('/');
    let authority = url.strip_prefix("http://").filter(|a| {
        !a.is_empty()
            && !a.contains(['/', '?', '#', '@', ' '])
            && a.parse::<axum::http::uri::Authority>()
                .is_ok_and(|auth| !auth.host().is_empty() && auth.port_u16().is_some_and(|p| p != 0))
    });
    let Some(authority) = authority else {
        return Err(lines.error(
            Some(c.url.span()),
            format!("caches.url `{}` must be http://HOST:PORT, like http://127.0.0.1:6081", c.url.get_ref()),
        ));
    };
    let secret = match (&c.secret_header, &c.secret_file) {
        (None, None) => None,
        (Some(name), Some(file)) => {
            // Not a header the request needs for itself.
            const RESERVED: [&str; 6] =
                ["host", "content-length", "transfer-encoding", "connection", "user-agent", "x-tessera-ban"];
            let valid = axum::http::HeaderName::from_bytes(name.get_ref().as_bytes())
                .is_ok_and(|n| !RESERVED.contains(&n.as_str()));
            if !valid {
                return Err(lines.error(
                    Some(name.span()),
                    format!("caches.secret_header `{}` is not a header name of its own", name.get_ref()),
                ));
            }
            let path = credential_path(file.get_ref(), credentials)
                .map_err(|m| lines.error(Some(file.span()), format!("caches.secret_file: {m}")))?
                .unwrap_or_else(|| base.join(file.get_ref()));
            let value = std::fs::read_to_string(&path)
                .map_err(|e| lines.error(Some(file.span()), format!("caches.secret_file {}: {e}", path.display())))?;
            let value = value.trim().to_string();
            if value.is_empty() || axum::http::HeaderValue::from_str(&value).is_err() {
                return Err(lines.error(
                    Some(file.span()),
                    format!("caches.secret_file {}: empty, or not a header value", path.display()),
                ));
            }
            Some((name.get_ref().clone(), value))
        }
        _ => {
            return Err(lines.error(Some(cache.span()), "caches: secret_header and secret_file go together"));
        }
    };
    Ok(CacheTarget {
        url: url.to_string(),
        authority: authority.to_string(),
        protocol: c.protocol.unwrap_or(InvalidationProtocol::Ban),
        secret,
    })
}

fn file_tls(
    tls: &Spanned<FileTls>,
    base: &Path,
    lines: &Lines<'_>,
    credentials: &[(String, PathBuf)],
) -> Result<TlsSettings, ConfigError> {
    let t = tls.get_ref();
    let plaintext_listen = match &t.plaintext_listen {
        None => None,
        Some(addr) => Some(addr.get_ref().parse().map_err(|e| {
            lines.error(
                Some(addr.span()),
                format!("tls.plaintext_listen: `{}` is not an address like 127.0.0.1:8080 ({e})", addr.get_ref()),
            )
        })?),
    };
    // The files are read when the server starts (and again when they
    // change); here only that they are there, so that `check` names the line.
    let readable = |p: &Spanned<PathBuf>, what: &str| {
        let path = credential_path(p.get_ref(), credentials)
            .map_err(|m| lines.error(Some(p.span()), format!("tls.{what}: {m}")))?
            .unwrap_or_else(|| base.join(p.get_ref()));
        match std::fs::metadata(&path) {
            Ok(m) if m.is_file() => Ok(path),
            Ok(_) => Err(lines.error(Some(p.span()), format!("tls.{what} {}: not a file", path.display()))),
            Err(e) => Err(lines.error(Some(p.span()), format!("tls.{what} {}: {e}", path.display()))),
        }
    };
    if t.client_ca.is_none() && (t.client_auth.is_some() || !t.crl.is_empty()) {
        return Err(lines.error(Some(tls.span()), "tls.client_auth and tls.crl need tls.client_ca"));
    }
    Ok(TlsSettings {
        cert: readable(&t.cert, "cert")?,
        key: readable(&t.key, "key")?,
        client_ca: t.client_ca.as_ref().map(|p| readable(p, "client_ca")).transpose()?,
        crls: t.crl.iter().map(|p| readable(p, "crl")).collect::<Result<_, _>>()?,
        client_auth: t.client_auth.unwrap_or_default(),
        plaintext_listen,
    })
}

fn file_token(token: &Spanned<FileToken>, lines: &Lines<'_>) -> Result<TokenSpec, ConfigError> {
    let t = token.get_ref();
    if !valid_name(t.name.get_ref()) {
        return Err(lines.error(Some(t.name.span()), "tokens.name: letters, digits, `-`, `_` and `.` only"));
    }
    let Some(sha256) = parse_sha256(t.sha256.get_ref()) else {
        return Err(lines.error(
            Some(t.sha256.span()),
            "tokens.sha256: 64 hexadecimal digits, the SHA-256 of the token (`tessera token NAME` makes one)",
        ));
    };
    let mut roles = Vec::new();
    for role in &t.roles {
        if !valid_name(role.get_ref()) {
            return Err(lines.error(Some(role.span()), "tokens.roles: letters, digits, `-`, `_` and `.` only"));
        }
        roles.push(role.get_ref().clone());
    }
    Ok(TokenSpec { name: t.name.get_ref().clone(), sha256, roles })
}

fn file_access(rule: &Spanned<FileAccess>, lines: &Lines<'_>) -> Result<AccessRule, ConfigError> {
    let r = rule.get_ref();
    if !valid_prefix(r.prefix.get_ref()) {
        return Err(lines.error(
            Some(r.prefix.span()),
            "access.prefix: an absolute URL path without a trailing slash, like /logs/pump-7",
        ));
    }
    if r.allow.is_empty() {
        return Err(lines.error(Some(rule.span()), "access.allow: name at least one grant"));
    }
    let allow = r
        .allow
        .iter()
        .map(|g| Grant::parse(g.get_ref()).map_err(|m| lines.error(Some(g.span()), format!("access.allow: {m}"))))
        .collect::<Result<_, _>>()?;
    Ok(AccessRule { prefix: r.prefix.get_ref().clone(), allow })
}

/// A `[tls]` path `%d/NAME` names the systemd credential NAME: the file
/// `$CREDENTIALS_DIRECTORY/NAME` that `LoadCredential=` made for the
/// service, so that the service never reads the operator's key file itself.
/// A file `--credential NAME:PATH` gives comes first: the appliance's
/// `systemctl reload` checks with it, as root, the files the restart will
/// copy, since the credentials directory holds the copies of the last start
/// (and systemd 252 does not even show it to ExecReload=, systemd#35227).
fn credential_path(path: &Path, given: &[(String, PathBuf)]) -> Result<Option<PathBuf>, String> {
    let Ok(name) = path.strip_prefix("%d") else { return Ok(None) };
    if let Some((_, file)) = given.iter().find(|(n, _)| Path::new(n) == name) {
        return Ok(Some(file.clone()));
    }
    match std::env::var_os("CREDENTIALS_DIRECTORY") {
        Some(dir) => Ok(Some(Path::new(&dir).join(name))),
        None => Err(format!(
            "{} names a systemd credential, but $CREDENTIALS_DIRECTORY is not set (LoadCredential= in the unit) \
             and no --credential {}:PATH gives it",
            path.display(),
            name.display()
        )),
    }
}
