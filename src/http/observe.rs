//! The one layer around the Router: CORS headers on every answer, CORS
//! preflight, request counts by route and status, and one debug line per
//! request.
//!
//! It replaces tower-http's CorsLayer and an axum `from_fn` middleware: both
//! box a future and allocate per request, which perf showed as a large part
//! of the tile path's user time. This layer's future is a plain struct.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::http::{header, HeaderValue, Method, Request, Response, StatusCode};
use pin_project_lite::pin_project;
use prometheus::IntCounter;
use tower::{Layer, Service};

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ObserveLayer {
    metrics: Arc<Metrics>,
}

impl ObserveLayer {
    pub fn new(metrics: Arc<Metrics>) -> ObserveLayer {
        ObserveLayer { metrics }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Observe<S> {
        Observe { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone)]
pub struct Observe<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

impl<S> Service<Request<Body>> for Observe<S>
where
    S: Service<Request<Body>, Response = Response<Body>>,
{
    type Response = Response<Body>;
    type Error = S::Error;
    type Future = ObserveFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let route = route_label(request.uri().path());
        let preflight = request.method() == Method::OPTIONS
            && request.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        let log = request
            .extensions()
            .get::<Driven>()
            .is_none()
            .then(|| (request.method().clone(), request.uri().path().to_owned(), Instant::now()));
        let inner = if preflight { None } else { Some(self.inner.call(request)) };
        ObserveFuture { inner, route, log, metrics: self.metrics.clone() }
    }
}

pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: Option<F>,
        route: &'static str,
        log: Option<(Method, String, Instant)>,
        metrics: Arc<Metrics>,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.inner.as_pin_mut() {
            Some(inner) => ready!(inner.poll(cx))?,
            None => preflight(),
        };
        add_cors(&mut response);
        let status = response.status();
        count(this.metrics, this.route, status);
        if let Some((method, path, started)) = this.log.take() {
            // Served by hyper (a hand-off or `transport = "hyper"`): the
            // length it will send is what the head says.
            let bytes =
                response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
            let elapsed = started.elapsed().as_micros() as u64;
            access(this.route, method.as_str(), &path, status.as_u16(), bytes, "hyper", None, elapsed);
        }
        Poll::Ready(Ok(response))
    }
}

/// Marks a request the connection driver carries: the driver writes its
/// access-log line itself, once it knows how the body travelled.
#[derive(Debug, Clone, Copy)]
pub struct Driven;

/// One access-log event (target `tessera::access`, off by default). In the
/// journal its fields are ROUTE, METHOD, PATH, STATUS, BYTES, DELIVERY
/// (memory, sendfile, buffered, hyper, none), ROOT, and DEVICE or TILESET
/// taken from the URL, so `journalctl -u tessera DEVICE=...` works.
#[allow(clippy::too_many_arguments)]
pub fn access(
    route: &str,
    method: &str,
    path: &str,
    status: u16,
    bytes: u64,
    delivery: &str,
    root: Option<&std::path::Path>,
    elapsed_us: u64,
) {
    if !tracing::enabled!(target: "tessera::access", tracing::Level::INFO) {
        return;
    }
    let mut segments = path.trim_start_matches('/').split('/');
    let (kind, name) = (segments.next().unwrap_or_default(), segments.next().unwrap_or_default());
    let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy();
    let device = (kind == "logs" && !name.is_empty()).then_some(name.as_ref());
    let tileset = (kind == "tiles" && !name.is_empty()).then(|| name.trim_end_matches(".json"));
    tracing::info!(
        target: "tessera::access",
        route,
        method,
        path,
        status,
        bytes,
        delivery,
        root = root.map(|r| r.display().to_string()),
        device,
        tileset,
        elapsed_us,
        "{method} {path} {status} {bytes}"
    );
}

/// CORS on every answer, errors included: map clients and dashboards run in
/// browsers on other origins. The answer is `*` for every origin, so caches
/// need not vary on Origin.
fn add_cors(response: &mut Response<Body>) {
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static("*"));
}

/// The answer to a CORS preflight: any origin, the read-only methods, any header.
fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, HEAD, OPTIONS"));
    h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("*"));
    h.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("86400"));
    response
}

/// Counts a request. Label lookups hash strings under a lock; each thread
/// keeps the counters it has used, keyed by the route's static address.
pub fn count(metrics: &Metrics, route: &'static str, status: StatusCode) {
    thread_local! {
        static COUNTERS: RefCell<HashMap<(usize, u16), IntCounter, foldhash::fast::RandomState>> =
            RefCell::new(HashMap::with_hasher(foldhash::fast::RandomState::default()));
    }
    COUNTERS.with(|counters| {
        let key = (route.as_ptr() as usize, status.as_u16());
        counters
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| metrics.requests.with_label_values(&[route, status.as_str()]))
            .inc();
    });
}

/// The route a path falls under, mirroring the router, for metric labels.
pub fn route_label(path: &str) -> &'static str {
    let mut segments = path.trim_start_matches('/').split('/');
    let first = segments.next().unwrap_or("");
    let rest = segments.count();
    match (first, rest) {
        ("", 0) => "/",
        ("healthz", 0) => "/healthz",
        ("readyz", 0) => "/readyz",
        ("metrics", 0) => "/metrics",
        ("tiles", 0) => "/tiles",
        ("tiles", 1) => "/tiles/{tileset}.json",
        ("tiles", 4) => "/tiles/{tileset}/{z}/{x}/{y}",
        ("logs", 0) => "/logs",
        ("logs", 1) => "/logs/{device}",
        ("logs", 2) => "/logs/{device}/{file}",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::route_label;

    #[test]
    fn labels() {
        assert_eq!(route_label("/"), "/");
        assert_eq!(route_label("/tiles/w/1/2/3.png"), "/tiles/{tileset}/{z}/{x}/{y}");
        assert_eq!(route_label("/tiles/w.json"), "/tiles/{tileset}.json");
        assert_eq!(route_label("/logs/d/f"), "/logs/{device}/{file}");
        assert_eq!(route_label("/logs/d/f/g"), "other");
        assert_eq!(route_label("/nope"), "other");
    }
}
