//! Who may read what: the caller's identity, the access rules, bearer-token
//! checks and the per-address limit on failed authentications.
//!
//! The rules are decided on the request's URL path, segment by segment and
//! percent-decoded the way the handlers decode them, so `/logs/pump%2D7`
//! is `/logs/pump-7` for a rule too. The longest matching prefix decides.
//! With no credential configured (no TLS, no token) every path is public,
//! as a loopback appliance always was; once one is, `/logs` and
//! `/metrics` are closed unless a rule opens them (see [`Policy::new`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use percent_encoding::percent_decode_str;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{AccessRule, Config, Grant, TokenSpec};

/// Who is asking, as far as the connection and the request tell.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// Names of a verified client certificate.
    pub device: Option<Arc<[String]>>,
    /// The token the request presented, once it matched a configured one.
    pub token: Option<Arc<TokenSpec>>,
}

impl Caller {
    pub fn anonymous(&self) -> bool {
        self.device.is_none() && self.token.is_none()
    }

    /// A short name for logs: the token's name or the device's first name.
    pub fn name(&self) -> Option<String> {
        match (&self.token, &self.device) {
            (Some(token), _) => Some(format!("token:{}", token.name)),
            (None, Some(names)) => names.first().map(|n| format!("device:{n}")),
            (None, None) => None,
        }
    }

    fn has_role(&self, role: &str) -> bool {
        self.token.as_ref().is_some_and(|t| t.roles.iter().any(|r| r == role))
    }

    fn names_device(&self, device: &str) -> bool {
        self.device.as_ref().is_some_and(|names| names.iter().any(|n| n == device))
    }
}

/// The access rules in force, with the defaults added.
pub struct Policy {
    /// Configured rules and defaults, longest prefix first.
    rules: Vec<Rule>,
    tokens: Vec<Arc<TokenSpec>>,
    /// Any rule other than "public" exists: without one, the guard is not
    /// even installed and every path answers as it always did.
    pub enforced: bool,
}

struct Rule {
    segments: Vec<String>,
    allow: Vec<Grant>,
}

impl Policy {
    /// The configured rules, and once TLS or a token is configured the
    /// defaults for paths no rule names: `/logs` for each device's own
    /// certificate and tokens with role `logs`, `/metrics` for role
    /// `metrics`. Everything else (tiles, `/`, `/healthz`, `/readyz`) is
    /// public unless a rule says otherwise.
    pub fn new(config: &Config) -> Policy {
        let mut rules: Vec<AccessRule> = config.access.clone();
        if config.secured() {
            let defaults = [
                ("/logs", vec![Grant::OwnDevice, Grant::Role("logs".into())]),
                ("/metrics", vec![Grant::Role("metrics".into())]),
            ];
            for (prefix, allow) in defaults {
                if !rules.iter().any(|r| r.prefix == prefix) {
                    rules.push(AccessRule { prefix: prefix.into(), allow });
                }
            }
        }
        let closed = |allow: &[Grant]| allow.iter().all(|g| *g != Grant::Public);
        let enforced = rules.iter().any(|r| closed(&r.allow))
            || config.roots.iter().any(|r| r.access.as_deref().is_some_and(closed));
        let mut rules: Vec<Rule> =
            rules.into_iter().map(|r| Rule { segments: Target::new(&r.prefix).0, allow: r.allow }).collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.segments.len()));
        let tokens = config.tokens.iter().cloned().map(Arc::new).collect();
        Policy { rules, tokens, enforced }
    }

    /// What the rule for `target` allows (public when no rule matches).
    /// `/healthz` and `/readyz` are always public: the service manager's
    /// and load balancers' probes carry no credential.
    pub fn rule(&self, target: &Target) -> &[Grant] {
        let path = target.segments();
        if matches!(path, [p] if p == "healthz" || p == "readyz") {
            return &[Grant::Public];
        }
        self.rules
            .iter()
            .find(|r| path.len() >= r.segments.len() && path.iter().zip(&r.segments).all(|(a, b)| a == b))
            .map_or(&[Grant::Public], |r| &r.allow)
    }

    pub fn is_public(&self, target: &Target) -> bool {
        self.rule(target).contains(&Grant::Public)
    }

    /// Whether `caller` may read `target`.
    pub fn allows(&self, caller: &Caller, target: &Target) -> bool {
        grants_allow(self.rule(target), caller, target)
    }

    /// The configured token whose hash is the presented secret's. Every
    /// configured hash is compared, in constant time, so the time taken says
    /// nothing about which one (or how much of one) matched.
    pub fn token(&self, secret: &str) -> Option<Arc<TokenSpec>> {
        let hash: [u8; 32] = Sha256::digest(secret.as_bytes()).into();
        let mut found = None;
        for token in &self.tokens {
            if bool::from(token.sha256.ct_eq(&hash)) {
                found = Some(token.clone());
            }
        }
        found
    }
}

/// Whether one of `grants` lets `caller` read `target` (a path rule's, or a root's).
pub fn grants_allow(grants: &[Grant], caller: &Caller, target: &Target) -> bool {
    grants.iter().any(|grant| match grant {
        Grant::Public => true,
        Grant::Authenticated => !caller.anonymous(),
        Grant::Device => caller.device.is_some(),
        Grant::Role(role) => caller.has_role(role),
        Grant::OwnDevice => own_device(caller, target),
    })
}

/// `own-device`: a device reads `/logs/{one of its names}` and below, and
/// may list `/logs` (the listing then shows only its own).
fn own_device(caller: &Caller, target: &Target) -> bool {
    let Some(_) = &caller.device else { return false };
    match target.segments() {
        [logs] => logs == "logs",
        [logs, device, ..] => logs == "logs" && caller.names_device(device),
        _ => false,
    }
}

/// A request path as the rules read it, parsed once per request: its
/// segments, each percent-decoded, empty ones dropped. A tileset's
/// TileJSON, `/tiles/{name}.json`, and a PMTiles tileset's archive,
/// `/tiles/{name}.pmtiles`, are `/tiles/{name}` for the rules: they describe
/// or hold the tileset and are closed with it.
pub struct Target(Vec<String>);

impl Target {
    pub fn new(path: &str) -> Target {
        let mut segments: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned())
            .collect();
        if let [tiles, name] = segments.as_mut_slice() {
            if tiles == "tiles" {
                if let Some(stem) = name.strip_suffix(".json").or_else(|| name.strip_suffix(".pmtiles")) {
                    *name = stem.to_string();
                }
            }
        }
        Target(segments)
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }
}

/// An `Authorization: Bearer` header without a usable token.
#[derive(Debug, PartialEq)]
pub struct NotBearer;

/// The bearer token of an `Authorization` header: `Ok(None)` without one,
/// or for another scheme (a browser's or a proxy's `Basic` is not meant
/// for tessera, and is no failed attempt either).
pub fn bearer(value: Option<&[u8]>) -> Result<Option<&str>, NotBearer> {
    let Some(value) = value else { return Ok(None) };
    let scheme_end = value.iter().position(|&b| b == b' ').unwrap_or(value.len());
    if !value[..scheme_end].eq_ignore_ascii_case(b"bearer") {
        return Ok(None);
    }
    let token = std::str::from_utf8(&value[scheme_end..]).map_err(|_| NotBearer)?.trim();
    if token.is_empty() {
        return Err(NotBearer);
    }
    Ok(Some(token))
}

/// Failed authentications per client address: a token bucket of
/// [`BURST`] failures refilled at [`REFILL_PER_SECOND`]. A failure past the
/// burst is answered only after the time its token takes to come back, and
/// once [`MAX_DEBT`] seconds of failures are owed the address gets 429
/// before its token is even looked at, so a guesser gets about one try a
/// second however many connections it opens.
///
/// Addresses are counted exactly (an IPv6 /64 is often a whole LAN, and
/// one bad device must not lock out its neighbours), the least recently
/// failed forgotten past [`MAX_ADDRESSES`]. Loopback is never refused: it
/// is the local reverse proxy or tool, whose clients all arrive as one
/// address, and it is slowed like any other.
pub struct Limiter {
    buckets: Mutex<lru::LruCache<IpAddr, Bucket>>,
}

impl Default for Limiter {
    fn default() -> Self {
        let cap = std::num::NonZeroUsize::new(MAX_ADDRESSES).expect("non-zero");
        Limiter { buckets: Mutex::new(lru::LruCache::new(cap)) }
    }
}

const BURST: f64 = 5.0;
const REFILL_PER_SECOND: f64 = 1.0;
const MAX_DEBT: f64 = 10.0;
/// Addresses remembered at once; each costs about a hundred bytes.
const MAX_ADDRESSES: usize = 4096;

struct Bucket {
    tokens: f64,
    at: Instant,
    /// Failures since the last log line for this address.
    unlogged: u64,
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let earned = now.duration_since(self.at).as_secs_f64() * REFILL_PER_SECOND;
        self.tokens = (self.tokens + earned).min(BURST);
        self.at = now;
    }
}

/// What a failure costs the address.
#[derive(Debug, PartialEq)]
pub struct Failure {
    /// Wait this long before answering.
    pub delay: Duration,
    /// Log this failure, with this many earlier ones of the same burst
    /// that were not logged (`None`: stay quiet, it is the same burst).
    pub log: Option<u64>,
}

impl Limiter {
    /// Whether the address owes so much that it is refused unheard (429),
    /// and for how long.
    pub fn throttled(&self, ip: IpAddr) -> Option<Duration> {
        if ip.is_loopback() || ip.to_canonical().is_loopback() {
            return None;
        }
        let mut buckets = self.buckets.lock();
        let bucket = buckets.peek_mut(&ip.to_canonical())?;
        bucket.refill(Instant::now());
        (bucket.tokens <= -MAX_DEBT).then(|| Duration::from_secs_f64((1.0 - bucket.tokens) / REFILL_PER_SECOND))
    }

    /// Records one failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) -> Failure {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        let bucket = buckets.get_or_insert_mut(ip.to_canonical(), || Bucket { tokens: BURST, at: now, unlogged: 0 });
        bucket.refill(now);
        // A full bucket means the address was quiet long enough: a new burst.
        let log = if bucket.tokens >= BURST {
            Some(std::mem::take(&mut bucket.unlogged))
        } else {
            bucket.unlogged += 1;
            None
        };
        // The debt stops growing a second past where refusals start: an
        // address refused unheard (which costs it nothing more) is let back
        // in a second or so after it stops.
        bucket.tokens = (bucket.tokens - 1.0).max(-MAX_DEBT - 1.0);
        let delay = if bucket.tokens < 0.0 {
            Duration::from_secs_f64(-bucket.tokens / REFILL_PER_SECOND)
        } else {
            Duration::ZERO
        };
        Failure { delay, log }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ConfigArgs, TlsSettings};

    fn policy(rules: &[(&str, &[&str])], tokens: &[(&str, &str, &[&str])], tls: bool) -> Policy {
        let dir = tempfile::tempdir().unwrap();
        let (tiles, logs) = (dir.path().join("t"), dir.path().join("l"));
        std::fs::create_dir_all(&tiles).unwrap();
        std::fs::create_dir_all(&logs).unwrap();
        let args = ConfigArgs { tiles: vec![tiles], logs: vec![logs], ..Default::default() };
        let mut config = Config::load(&args).unwrap();
        config.access = rules
            .iter()
            .map(|(prefix, allow)| AccessRule {
                prefix: prefix.to_string(),
                allow: allow.iter().map(|g| Grant::parse(g).unwrap()).collect(),
            })
            .collect();
        config.tokens = tokens
            .iter()
            .map(|(name, secret, roles)| TokenSpec {
                name: name.to_string(),
                sha256: Sha256::digest(secret.as_bytes()).into(),
                roles: roles.iter().map(|r| r.to_string()).collect(),
            })
            .collect();
        if tls {
            config.tls = Some(TlsSettings {
                cert: "c".into(),
                key: "k".into(),
                client_ca: None,
                crls: vec![],
                client_auth: Default::default(),
                plaintext_listen: None,
            });
        }
        Policy::new(&config)
    }

    fn device(name: &str) -> Caller {
        Caller { device: Some(Arc::from(vec![name.to_string()])), token: None }
    }

    #[test]
    fn without_credentials_everything_stays_open() {
        let p = policy(&[], &[], false);
        assert!(!p.enforced);
        assert!(p.allows(&Caller::default(), &Target::new("/logs/pump-7/a.log")));
        assert!(p.allows(&Caller::default(), &Target::new("/metrics")));
    }

    #[test]
    fn with_tls_logs_and_metrics_close_and_devices_read_their_own() {
        let p = policy(&[], &[("grafana", "s3cret", &["metrics"])], true);
        assert!(p.enforced);
        let anonymous = Caller::default();
        assert!(!p.allows(&anonymous, &Target::new("/logs/pump-7/a.log")));
        assert!(!p.allows(&anonymous, &Target::new("/metrics")));
        assert!(p.allows(&anonymous, &Target::new("/tiles/osm/0/0/0.png")));
        assert!(p.allows(&anonymous, &Target::new("/")));
        let pump = device("pump-7");
        assert!(p.allows(&pump, &Target::new("/logs/pump-7/a.log")));
        assert!(p.allows(&pump, &Target::new("/logs/pump%2D7/a.log")), "decoded as the handler decodes it");
        assert!(p.allows(&pump, &Target::new("/logs")), "a device lists /logs, filtered to its own");
        assert!(!p.allows(&pump, &Target::new("/logs/pump-8/a.log")));
        assert!(!p.allows(&pump, &Target::new("/logs/pump-7x/a.log")));
        assert!(!p.allows(&pump, &Target::new("/metrics")));
        let grafana = Caller { device: None, token: p.token("s3cret") };
        assert!(grafana.token.is_some());
        assert!(p.allows(&grafana, &Target::new("/metrics")));
        assert!(!p.allows(&grafana, &Target::new("/logs/pump-7/a.log")));
        assert!(p.token("s3cret ").is_none());
        assert!(p.token("").is_none());
    }

    #[test]
    fn the_longest_prefix_decides_whole_segments() {
        let p = policy(&[("/logs", &["public"]), ("/logs/secret", &["role:ops"])], &[], true);
        assert!(p.allows(&Caller::default(), &Target::new("/logs/pump-7/a.log")));
        assert!(p.allows(&Caller::default(), &Target::new("/logs/secretive/a.log")));
        assert!(!p.allows(&Caller::default(), &Target::new("/logs/secret/a.log")));
        assert!(!p.allows(&Caller::default(), &Target::new("/logs//secret/a.log")));
        assert!(!p.allows(&Caller::default(), &Target::new("/logs/s%65cret/a.log")));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(None), Ok(None));
        assert_eq!(bearer(Some(b"Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok(Some("abc")));
        assert_eq!(bearer(Some(b"Basic YTpi")), Ok(None));
        assert!(bearer(Some(b"Bearer")).is_err());
        assert!(bearer(Some(b"Bearer \xff")).is_err());
    }

    #[test]
    fn failures_past_the_burst_wait_and_log_once() {
        let limiter = Limiter::default();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let first = limiter.failed(ip);
        assert_eq!(first, Failure { delay: Duration::ZERO, log: Some(0) });
        for _ in 1..BURST as usize {
            assert_eq!(limiter.failed(ip), Failure { delay: Duration::ZERO, log: None });
        }
        let slowed = limiter.failed(ip);
        assert!(slowed.delay > Duration::from_millis(900), "{slowed:?}");
        assert_eq!(slowed.log, None);
        assert!(limiter.throttled(ip).is_none());
        for _ in 0..MAX_DEBT as usize {
            limiter.failed(ip);
        }
        assert!(limiter.throttled(ip).is_some());
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        assert_eq!(limiter.failed(other).delay, Duration::ZERO, "addresses are counted apart");
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..30 {
            limiter.failed(loopback);
        }
        assert!(limiter.throttled(loopback).is_none(), "loopback is slowed, never refused");
    }

    #[test]
    fn the_limiter_remembers_a_bounded_number_of_addresses() {
        let limiter = Limiter::default();
        for i in 0..(MAX_ADDRESSES as u32 * 3) {
            limiter.failed(IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()));
        }
        assert_eq!(limiter.buckets.lock().len(), MAX_ADDRESSES);
    }
}
