//! Who may read what: the caller's identity, the access rules, bearer-token
//! checks and the per-address limit on failed authentications.
//!
//! The rules are decided on the request's URL path, segment by segment and
//! percent-decoded the way the handlers decode them, so `/logs/pump%2D7`
//! is `/logs/pump-7` for a rule too. The longest matching prefix decides.
//! With no credential configured (no TLS, no token) every path is public,
//! as a loopback appliance always was; once one is, `/logs` and
//! `/metrics` are closed unless a rule opens them (see [`Policy::new`]).

use std::collections::HashMap;
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
            rules.into_iter().map(|r| Rule { segments: segments(&r.prefix), allow: r.allow }).collect();
        rules.sort_by_key(|r| std::cmp::Reverse(r.segments.len()));
        let tokens = config.tokens.iter().cloned().map(Arc::new).collect();
        Policy { rules, tokens, enforced }
    }

    /// What the rule for `path` allows (public when no rule matches).
    pub fn rule(&self, path: &str) -> &[Grant] {
        let path = segments(path);
        self.rules
            .iter()
            .find(|r| path.len() >= r.segments.len() && path.iter().zip(&r.segments).all(|(a, b)| a == b))
            .map_or(&[Grant::Public], |r| &r.allow)
    }

    pub fn is_public(&self, path: &str) -> bool {
        self.rule(path).contains(&Grant::Public)
    }

    /// Whether `caller` may read `path`.
    pub fn allows(&self, caller: &Caller, path: &str) -> bool {
        grants_allow(self.rule(path), caller, path)
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

/// Whether one of `grants` lets `caller` read `path` (a path rule's, or a root's).
pub fn grants_allow(grants: &[Grant], caller: &Caller, path: &str) -> bool {
    grants.iter().any(|grant| match grant {
        Grant::Public => true,
        Grant::Authenticated => !caller.anonymous(),
        Grant::Device => caller.device.is_some(),
        Grant::Role(role) => caller.has_role(role),
        Grant::OwnDevice => own_device(caller, path),
    })
}

/// `own-device`: a device reads `/logs/{one of its names}` and below, and
/// may list `/logs` (the listing then shows only its own).
fn own_device(caller: &Caller, path: &str) -> bool {
    let Some(_) = &caller.device else { return false };
    let segments = segments(path);
    match segments.as_slice() {
        [logs] => logs == "logs",
        [logs, device, ..] => logs == "logs" && caller.names_device(device),
        _ => false,
    }
}

/// A path's segments, each percent-decoded; empty segments dropped.
pub fn segments(path: &str) -> Vec<String> {
    path.split('/').filter(|s| !s.is_empty()).map(|s| percent_decode_str(s).decode_utf8_lossy().into_owned()).collect()
}

/// An `Authorization` header that is not `Bearer TOKEN`.
#[derive(Debug, PartialEq)]
pub struct NotBearer;

/// The bearer token of an `Authorization` header: `Ok(None)` without one.
pub fn bearer(value: Option<&[u8]>) -> Result<Option<&str>, NotBearer> {
    let Some(value) = value else { return Ok(None) };
    let value = std::str::from_utf8(value).map_err(|_| NotBearer)?;
    let (scheme, token) = value.split_once(' ').ok_or(NotBearer)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(NotBearer);
    }
    Ok(Some(token))
}

/// Failed authentications per client address: a token bucket of
/// [`BURST`] failures refilled at [`REFILL_PER_SECOND`]. A failure past the
/// burst is answered only after the time its token takes to come back, and
/// once [`MAX_DEBT`] seconds of failures are owed the address gets 429
/// before its credentials are even looked at, so a guesser gets about one
/// try a second however many connections it opens.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

const BURST: f64 = 5.0;
const REFILL_PER_SECOND: f64 = 1.0;
const MAX_DEBT: f64 = 10.0;
/// Past this many addresses, the ones whose buckets are full again are forgotten.
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
        let mut buckets = self.buckets.lock();
        let bucket = buckets.get_mut(&key(ip))?;
        bucket.refill(Instant::now());
        (bucket.tokens <= -MAX_DEBT).then(|| Duration::from_secs_f64((1.0 - bucket.tokens) / REFILL_PER_SECOND))
    }

    /// Records one failed authentication from `ip`.
    pub fn failed(&self, ip: IpAddr) -> Failure {
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() >= MAX_ADDRESSES {
            buckets.retain(|_, b| {
                b.refill(now);
                b.tokens < BURST
            });
        }
        let bucket = buckets.entry(key(ip)).or_insert(Bucket { tokens: BURST, at: now, unlogged: 0 });
        bucket.refill(now);
        // A full bucket means the address was quiet long enough: a new burst.
        let log = if bucket.tokens >= BURST {
            Some(std::mem::take(&mut bucket.unlogged))
        } else {
            bucket.unlogged += 1;
            None
        };
        bucket.tokens -= 1.0;
        let delay = if bucket.tokens < 0.0 {
            Duration::from_secs_f64(-bucket.tokens / REFILL_PER_SECOND)
        } else {
            Duration::ZERO
        };
        Failure { delay, log }
    }
}

/// IPv6 clients usually own a whole /64: count them by it.
fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
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
        assert!(p.allows(&Caller::default(), "/logs/pump-7/a.log"));
        assert!(p.allows(&Caller::default(), "/metrics"));
    }

    #[test]
    fn with_tls_logs_and_metrics_close_and_devices_read_their_own() {
        let p = policy(&[], &[("grafana", "s3cret", &["metrics"])], true);
        assert!(p.enforced);
        let anonymous = Caller::default();
        assert!(!p.allows(&anonymous, "/logs/pump-7/a.log"));
        assert!(!p.allows(&anonymous, "/metrics"));
        assert!(p.allows(&anonymous, "/tiles/osm/0/0/0.png"));
        assert!(p.allows(&anonymous, "/"));
        let pump = device("pump-7");
        assert!(p.allows(&pump, "/logs/pump-7/a.log"));
        assert!(p.allows(&pump, "/logs/pump%2D7/a.log"), "decoded as the handler decodes it");
        assert!(p.allows(&pump, "/logs"), "a device lists /logs, filtered to its own");
        assert!(!p.allows(&pump, "/logs/pump-8/a.log"));
        assert!(!p.allows(&pump, "/logs/pump-7x/a.log"));
        assert!(!p.allows(&pump, "/metrics"));
        let grafana = Caller { device: None, token: p.token("s3cret") };
        assert!(grafana.token.is_some());
        assert!(p.allows(&grafana, "/metrics"));
        assert!(!p.allows(&grafana, "/logs/pump-7/a.log"));
        assert!(p.token("s3cret ").is_none());
        assert!(p.token("").is_none());
    }

    #[test]
    fn the_longest_prefix_decides_whole_segments() {
        let p = policy(&[("/logs", &["public"]), ("/logs/secret", &["role:ops"])], &[], true);
        assert!(p.allows(&Caller::default(), "/logs/pump-7/a.log"));
        assert!(p.allows(&Caller::default(), "/logs/secretive/a.log"));
        assert!(!p.allows(&Caller::default(), "/logs/secret/a.log"));
        assert!(!p.allows(&Caller::default(), "/logs//secret/a.log"));
        assert!(!p.allows(&Caller::default(), "/logs/s%65cret/a.log"));
    }

    #[test]
    fn bearer_values() {
        assert_eq!(bearer(None), Ok(None));
        assert_eq!(bearer(Some(b"Bearer abc")), Ok(Some("abc")));
        assert_eq!(bearer(Some(b"bearer  abc ")), Ok(Some("abc")));
        assert!(bearer(Some(b"Basic YTpi")).is_err());
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
        assert_eq!(limiter.failed(other).delay, Duration::ZERO);
        let v6a: IpAddr = "2001:db8::1".parse().unwrap();
        let v6b: IpAddr = "2001:db8::2".parse().unwrap();
        assert_eq!(key(v6a), key(v6b));
    }
}
