//! What the HTTP layer adds around every handler: CORS
//! from tower-http on every answer, tower-http's request tracing (debug
//! spans), and tessera's own observation: the route label of each answer
//! (axum's `MatchedPath`, or the handler's finer [`Route`]), requests counted
//! by route and status, and the access-log line for answers that hyper
//! writes (the connection driver writes its own, once it knows how the body
//! travelled).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{header, HeaderName, Method, Request, Response};
use pin_project_lite::pin_project;
use tower::{Layer, Service};
use tower_http::cors::{Any, CorsLayer};

use crate::delivery::{Driven, Identity, Peer, Unlogged};
use crate::logging::Access;
use crate::metrics::{Metrics, Route};

/// CORS on every answer, errors included: map clients and dashboards run in
/// browsers on other origins. The answer is `*` for every origin, so caches
/// need not vary on Origin (no `Vary`, which would also stop the driver's
/// replays). A preflight is answered here: read-only methods, any header,
/// for a day.
pub fn cors() -> CorsLayer {
    CorsLayer::new()
        .allow_origin(Any)
        .expose_headers(Any)
        .allow_methods([Method::GET, Method::HEAD, Method::OPTIONS])
        .allow_headers(Any)
        .max_age(Duration::from_secs(86_400))
        .vary([] as [HeaderName; 0])
}

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
        let matched = request.extensions().get::<MatchedPath>().map(|m| Route(intern(m.as_str())));
        let log = request.extensions().get::<Driven>().is_none().then(|| {
            let client = request.extensions().get::<Peer>().map(|p| p.addr.ip());
            (request.method().clone(), request.uri().path().to_owned(), client, Instant::now())
        });
        let started = Instant::now();
        ObserveFuture { inner: self.inner.call(request), matched, log, metrics: self.metrics.clone(), started }
    }
}

pin_project! {
    pub struct ObserveFuture<F> {
        #[pin]
        inner: F,
        matched: Option<Route>,
        log: Option<(Method, String, Option<std::net::IpAddr>, Instant)>,
        metrics: Arc<Metrics>,
        started: Instant,
    }
}

impl<F, E> Future for ObserveFuture<F>
where
    F: Future<Output = Result<Response<Body>, E>>,
{
    type Output = Result<Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = ready!(this.inner.poll(cx))?;
        // A handler that serves several routes under one pattern names its own.
        let route = response.extensions().get::<Route>().copied().or(*this.matched).unwrap_or(Route("other"));
        response.extensions_mut().insert(route);
        let status = response.status().as_u16();
        this.metrics.count_request(route, status);
        this.metrics.request_seconds.observe(this.started.elapsed().as_secs_f64());
        let log = this.log.take().filter(|_| response.extensions().get::<Unlogged>().is_none());
        if let Some((method, path, client, started)) = log {
            // Served by hyper (a hand-off or `transport = "hyper"`): the
            // length it will send is what the head says.
            let bytes =
                response.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
            let elapsed = started.elapsed().as_micros() as u64;
            let user = response.extensions().get::<Identity>().map(|i| &*i.0);
            let (route, method, delivery) = (route.0, method.as_str(), "hyper");
            Access {
                route,
                method,
                path: &path,
                status,
                bytes,
                delivery,
                root: None,
                elapsed_us: elapsed,
                client,
                user,
            }
            .log();
        }
        Poll::Ready(Ok(response))
    }
}

/// A route pattern as a `&'static str`, the form metric labels and replays
/// keep: each distinct pattern (there are as many as routes) is leaked once,
/// and each thread remembers the ones it has seen.
fn intern(pattern: &str) -> &'static str {
    thread_local! {
        static SEEN: RefCell<Vec<&'static str>> = const { RefCell::new(Vec::new()) };
    }
    static ALL: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    SEEN.with(|seen| {
        if let Some(&known) = seen.borrow().iter().find(|&&s| s == pattern) {
            return known;
        }
        let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
        let known = match all.iter().find(|&&s| s == pattern) {
            Some(&known) => known,
            None => {
                let leaked: &'static str = Box::leak(pattern.to_owned().into_boxed_str());
                all.push(leaked);
                leaked
            }
        };
        seen.borrow_mut().push(known);
        known
    })
}

#[cfg(test)]
mod tests {
    use super::intern;

    #[test]
    fn interned_patterns_are_one_string_each() {
        let a = intern("/logs/{device}");
        let b = intern(&String::from("/logs/{device}"));
        assert!(std::ptr::eq(a, b));
        assert_ne!(intern("/tiles"), a);
    }
}
