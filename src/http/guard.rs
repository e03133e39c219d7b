//! The access rules applied to every request (see `access`): who the
//! caller is (a verified device certificate from the transport's [`Peer`],
//! a bearer token), then 401, 403 or the handler. CORS preflights never get
//! here (the CORS layer outside answers them), so a browser dashboard can
//! always ask.
//!
//! A wrong token is a failed authentication of the client's address:
//! slowed past a burst, refused unheard (429) when too many are owed, and
//! logged once per burst with the address and the reason, never the token.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use super::error;
use crate::access::{bearer, grants_allow, Caller, Limiter, NotBearer, Policy, Target};
use crate::config::{Grant, RootKind};
use crate::delivery::{Identity, NoReplay, Peer};
use crate::metrics::Metrics;
use crate::roots::Root;

pub struct Guard {
    pub roots: Arc<Vec<Root>>,
    pub policy: Arc<Policy>,
    pub limiter: Arc<Limiter>,
    pub metrics: Arc<Metrics>,
}

pub async fn guard(State(guard): State<Arc<Guard>>, mut request: Request, next: Next) -> Response {
    let peer = request.extensions().get::<Peer>().cloned();
    let client = peer.as_ref().map(|p| p.addr.ip());
    let mut caller = Caller { device: peer.and_then(|p| p.device), token: None };
    let presented = bearer(request.headers().get(header::AUTHORIZATION).map(HeaderValue::as_bytes));
    match presented {
        Ok(None) => {}
        Ok(Some(secret)) => {
            if let Some(wait) = client.and_then(|ip| guard.limiter.throttled(ip)) {
                return guard.throttled(wait);
            }
            match guard.policy.token(secret) {
                Some(token) => caller.token = Some(token),
                None => return guard.failed(client, &caller, "unknown token").await,
            }
        }
        Err(NotBearer) => return guard.failed(client, &caller, "empty or malformed bearer token").await,
    }
    let target = Target::new(request.uri().path());
    let decision = decide(&guard.policy, &guard.roots, &caller, &target);
    if !decision.allowed {
        return if caller.anonymous() {
            guard.metrics.auth_refusals.with_label_values(&["missing"]).inc();
            unauthorized(None)
        } else {
            guard.metrics.auth_refusals.with_label_values(&["forbidden"]).inc();
            error(StatusCode::FORBIDDEN, "this identity may not read this path")
        };
    }
    let name = caller.name();
    request.extensions_mut().insert(caller);
    let mut response = next.run(request).await;
    // An answer only some callers may have is never replayed to the next.
    if !decision.public {
        response.extensions_mut().insert(NoReplay);
        private(&mut response);
    } else if lists(&target) {
        // Listings show each caller what it may read: one answer per caller.
        private(&mut response);
    }
    if let Some(name) = name {
        response.extensions_mut().insert(Identity(name.into()));
    }
    response
}

impl Guard {
    /// A wrong credential: counted, logged once per burst, answered 401
    /// after the delay the address has earned.
    async fn failed(&self, client: Option<std::net::IpAddr>, caller: &Caller, reason: &'static str) -> Response {
        self.metrics.auth_refusals.with_label_values(&["bad_token"]).inc();
        if let Some(ip) = client {
            let failure = self.limiter.failed(ip);
            if let Some(earlier) = failure.log {
                tracing::warn!(client = %ip, identity = caller.name(), reason, earlier_failures = earlier,
                    "authentication failed");
            }
            tokio::time::sleep(failure.delay).await;
        }
        unauthorized(Some("invalid_token"))
    }

    fn throttled(&self, wait: std::time::Duration) -> Response {
        self.metrics.auth_refusals.with_label_values(&["throttled"]).inc();
        let mut response = error(StatusCode::TOO_MANY_REQUESTS, "too many failed authentications, retry later");
        let seconds = wait.as_secs().max(1).to_string();
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_str(&seconds).expect("digits"));
        response
    }
}

/// 401 with the challenge RFC 6750 describes: a bearer token (or, over
/// TLS, a client certificate, which no header can ask for).
fn unauthorized(error_code: Option<&str>) -> Response {
    let mut response =
        error(StatusCode::UNAUTHORIZED, "authentication required: a bearer token or a device certificate");
    let challenge = match error_code {
        Some(code) => format!("Bearer realm=\"tessera\", error=\"{code}\""),
        None => "Bearer realm=\"tessera\"".to_string(),
    };
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_str(&challenge).expect("ascii"));
    response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// The pages whose content depends on the caller: `/`, `/tiles`, `/logs`,
/// `/logs/{device}` and the console's data.
fn lists(target: &Target) -> bool {
    match target.segments() {
        [] => true,
        [one] => one == "tiles" || one == "logs",
        [logs, _] => logs == "logs" || logs == "console",
        [console, ..] if console == "console" => true,
        _ => false,
    }
}

/// An answer for one caller is no shared cache's to keep: `private` in
/// front of what the root's `Cache-Control` says for private caches (its
/// `public` and `s-maxage`, which would let a shared cache keep it, go).
fn private(response: &mut Response) {
    let current = response.headers().get(header::CACHE_CONTROL).and_then(|v| v.to_str().ok()).unwrap_or_default();
    let kept: Vec<&str> = current
        .split(',')
        .map(str::trim)
        .filter(|d| {
            let name = d.split('=').next().unwrap_or_default();
            !d.is_empty() && !["public", "private", "s-maxage"].iter().any(|n| name.eq_ignore_ascii_case(n))
        })
        .collect();
    let value = std::iter::once("private").chain(kept).collect::<Vec<_>>().join(", ");
    if let Ok(value) = HeaderValue::from_str(&value) {
        response.headers_mut().insert(header::CACHE_CONTROL, value);
    }
}

/// What the rules say of one request: whether its caller may read the
/// target (the path's rule and, if it has one, the serving root's both
/// allow), and whether anyone may.
pub struct Decision {
    pub allowed: bool,
    pub public: bool,
}

pub fn decide(policy: &Policy, roots: &[Root], caller: &Caller, target: &Target) -> Decision {
    let root_rule = root_grants(roots, target);
    Decision {
        allowed: policy.allows(caller, target) && root_rule.map_or(true, |g| grants_allow(g, caller, target)),
        public: policy.is_public(target) && root_rule.map_or(true, |g| g.contains(&Grant::Public)),
    }
}

/// The `access` of the root that serves `target`, when that root has one:
/// the first root of the path's kind that holds the log (`/logs/{device}`
/// and below: the device's directory, or the file) or the tileset
/// ([`tileset_root`]), as the handlers look them up. Costs a `stat` or
/// two, and only when some root of that kind has a rule.
fn root_grants<'a>(roots: &'a [Root], target: &Target) -> Option<&'a [Grant]> {
    let segments = target.segments();
    let (kind, name) = match segments {
        [first, name, ..] if first == "logs" => (RootKind::Logs, name),
        [first, name, ..] if first == "tiles" => (RootKind::Tiles, name),
        _ => return None,
    };
    let mut of_kind = roots.iter().filter(|r| r.kind() == kind);
    if !of_kind.clone().any(|r| r.spec.access.is_some()) || !crate::names::safe_segment(name) {
        return None;
    }
    let root = match kind {
        RootKind::Logs => {
            let rel = match segments.get(2) {
                Some(file) if crate::names::safe_segment(file) => format!("{name}/{file}"),
                _ => name.clone(),
            };
            of_kind.find(|r| r.has(&rel))
        }
        RootKind::Tiles => tileset_root(roots, name),
    };
    root.and_then(|r| r.spec.access.as_deref())
}

/// The first tiles root that holds tileset `name` (its directory,
/// `{name}.pmtiles` or `{name}.mbtiles`): it serves all of the tileset, and
/// a later root's files of the same name are hidden.
pub fn tileset_root<'a>(roots: &'a [Root], name: &str) -> Option<&'a Root> {
    roots
        .iter()
        .filter(|r| r.kind() == RootKind::Tiles)
        .find(|r| r.has(name) || r.has(&format!("{name}.pmtiles")) || r.has(&format!("{name}.mbtiles")))
}
