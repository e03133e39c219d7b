//! Prometheus counters, exposed as text at `/metrics`.

use std::cell::RefCell;
use std::collections::HashMap;

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Per-root counters of how body bytes left the process.
#[derive(Debug, Clone)]
pub struct DeliveryCounters {
    pub sendfile: IntCounter,
    pub buffered: IntCounter,
    pub memory: IntCounter,
    /// Files that fell back from sendfile to the buffered path.
    pub fallbacks: IntCounter,
}

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by matched route and status code.
    pub requests: IntCounterVec,
    /// Body bytes handed to the transport, by delivery path (buffered, sendfile, memory) and root.
    pub bytes_sent: IntCounterVec,
    pub sendfile_fallbacks: IntCounterVec,
    pub memory_bytes: IntGauge,
    pub connections: IntGauge,
    pub handoffs: IntCounter,
    pub write_stalls: IntCounter,
    pub changed_while_sent: IntCounter,
    /// Requests answered by the driver from a replay of an earlier answer.
    pub replays: IntCounter,
    pub rejected_heads: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_invalidations: IntCounter,
    pub cache_open_files: IntGauge,
    pub watch_events: IntCounter,
    pub rescans: IntCounter,
    /// Directories of a local root polled because inotify refused them a watch, by root.
    pub unwatched_dirs: IntGaugeVec,
    /// Entries new or changed on disk that start-up reconcile had to read again.
    pub reconcile_rereads: IntCounter,
    /// Catalog rows inserted, updated or deleted since start.
    pub catalog_changes: IntCounter,
    pub catalog_errors: IntCounter,
    /// Requests refused by the access rules, by reason (missing, bad_token,
    /// forbidden, throttled).
    pub auth_refusals: IntCounterVec,
    /// TLS handshakes that failed, by reason (client certificate, protocol, timeout).
    pub tls_handshake_failures: IntCounterVec,
    /// Successful reloads of the TLS certificate and key, and refused ones.
    pub tls_reloads: IntCounterVec,
    /// Log slices by time answered, by how (indexed, filtered, decompressed).
    pub log_slices: IntCounterVec,
    /// Invalidations for the caches in front, by cache and outcome (sent,
    /// failed: an attempt that will be retried, dropped: given up).
    pub invalidations: IntCounterVec,
    /// Invalidations waiting to be sent, over all caches.
    pub invalidations_pending: IntGauge,
    /// Time from a request's dispatch to its answer's head (a replay: to
    /// its last byte handed to the kernel), for the console's p50 and p99.
    pub request_seconds: Histogram,
}

/// The latency histogram's bucket bounds, in seconds: 50 µs to 10 s.
pub const LATENCY_BUCKETS: [f64; 16] =
    [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let requests =
            IntCounterVec::new(Opts::new("tessera_requests_total", "HTTP requests answered"), &["route", "status"])
                .expect("metric");
        registry.register(Box::new(requests.clone())).expect("register");
        let vec = |name: &str, help: &str, labels: &[&str]| {
            let v = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(v.clone())).expect("register");
            v
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let bytes_sent =
            vec("tessera_bytes_sent_total", "Body bytes sent, by delivery path and root", &["path", "root"]);
        let sendfile_fallbacks = vec(
            "tessera_sendfile_fallbacks_total",
            "Files that fell back from sendfile to the buffered path",
            &["root"],
        );
        let rejected_heads =
            vec("tessera_rejected_requests_total", "Request heads refused by the connection driver", &["status"]);
        let memory_bytes = gauge("tessera_memory_cache_bytes", "File bytes held by the memory cache");
        let connections = gauge("tessera_connections", "Open client connections");
        let cache_open_files =
            IntGauge::new("tessera_cache_open_files", "Descriptors held by the descriptor cache").expect("metric");
        registry.register(Box::new(cache_open_files.clone())).expect("register");
        let unwatched_dirs = IntGaugeVec::new(
            Opts::new(
                "tessera_watch_unwatched_directories",
                "Directories polled because inotify refused them a watch (the watch limit), by root",
            ),
            &["root"],
        )
        .expect("metric");
        registry.register(Box::new(unwatched_dirs.clone())).expect("register");
        let auth_refusals = vec(
            "tessera_auth_refusals_total",
            "Requests refused by the access rules, by reason (missing, bad_token, forbidden, throttled)",
            &["reason"],
        );
        let request_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "tessera_request_duration_seconds",
                "Time from a request's dispatch to its answer (a replay: to its last byte handed to the kernel)",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("metric");
        registry.register(Box::new(request_seconds.clone())).expect("register");
        let invalidations = vec(
            "tessera_invalidations_total",
            "Invalidations for the caches in front, by cache and outcome (sent, failed, dropped)",
            &["cache", "outcome"],
        );
        let invalidations_pending = gauge("tessera_invalidations_pending", "Invalidations waiting to be sent");
        let tls_handshake_failures =
            vec("tessera_tls_handshake_failures_total", "TLS handshakes that failed, by reason", &["reason"]);
        let tls_reloads = vec(
            "tessera_tls_reloads_total",
            "TLS certificate reloads after their files changed, by result (ok, refused)",
            &["result"],
        );
        let log_slices = vec(
            "tessera_log_slices_total",
            "Log time slices answered, by how: indexed (from the time index), filtered (a file out of time order or not indexed yet, read through), decompressed (gzip)",
            &["how"],
        );
        Metrics {
            log_slices,
            request_seconds,
            invalidations,
            invalidations_pending,
            auth_refusals,
            tls_handshake_failures,
            tls_reloads,
            requests,
            bytes_sent,
            sendfile_fallbacks,
            rejected_heads,
            memory_bytes,
            connections,
            replays: counter(
                "tessera_replays_total",
                "Requests answered by replaying the Router's answer for a current file",
            ),
            handoffs: counter(
                "tessera_handoffs_total",
                "Connections handed to hyper (bodies, Expect, Upgrade, HTTP/2)",
            ),
            write_stalls: counter(
                "tessera_write_stalls_total",
                "Connections dropped because the client acknowledged nothing for write_timeout_ms",
            ),
            changed_while_sent: counter(
                "tessera_changed_while_sent_total",
                "Responses cut short because their file changed or shrank under them",
            ),
            cache_open_files,
            cache_hits: counter("tessera_cache_hits_total", "Descriptor cache hits"),
            cache_misses: counter("tessera_cache_misses_total", "Descriptor cache misses (file opened)"),
            cache_invalidations: counter(
                "tessera_cache_invalidations_total",
                "Descriptor cache entries dropped because the file changed",
            ),
            watch_events: counter(
                "tessera_watch_events_total",
                "Filesystem changes reported by the watchers (inotify events, changes found by polling)",
            ),
            rescans: counter("tessera_rescans_total", "Full rescans of a root (queue overflow, watch errors)"),
            unwatched_dirs,
            reconcile_rereads: counter(
                "tessera_reconcile_rereads_total",
                "Entries re-read by start-up reconcile because their stat changed",
            ),
            catalog_changes: counter("tessera_catalog_changes_total", "Catalog rows inserted, updated or deleted"),
            catalog_errors: counter("tessera_catalog_errors_total", "Catalog updates that failed and will be retried"),
            registry,
        }
    }

    /// The delivery counters of one root, labelled by its path.
    pub fn delivery(&self, root: &str) -> DeliveryCounters {
        DeliveryCounters {
            sendfile: self.bytes_sent.with_label_values(&["sendfile", root]),
            buffered: self.bytes_sent.with_label_values(&["buffered", root]),
            memory: self.bytes_sent.with_label_values(&["memory", root]),
            fallbacks: self.sendfile_fallbacks.with_label_values(&[root]),
        }
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding cannot fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// The route a request matched, as its metric and access-log label: put on
/// the response by the HTTP layer, read by whichever transport wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route(pub &'static str);

impl Metrics {
    /// Counts a request. Label lookups hash strings under a lock; each thread
    /// keeps the counters it has used, keyed by the route's static address.
    pub fn count_request(&self, route: Route, status: u16) {
        thread_local! {
            static COUNTERS: RefCell<HashMap<(usize, u16), IntCounter, foldhash::fast::RandomState>> =
                RefCell::new(HashMap::with_hasher(foldhash::fast::RandomState::default()));
        }
        COUNTERS.with(|counters| {
            let key = (route.0.as_ptr() as usize, status);
            counters
                .borrow_mut()
                .entry(key)
                .or_insert_with(|| self.requests.with_label_values(&[route.0, &status.to_string()]))
                .inc();
        });
    }
}
