//! Prometheus counters, exposed as text at `/metrics`.

use prometheus::{Encoder, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

pub struct Metrics {
    registry: Registry,
    /// Requests answered, by matched route and status code.
    pub requests: IntCounterVec,
    /// Body bytes handed to the transport, by delivery path (buffered, sendfile, memory).
    pub bytes_sent: IntCounterVec,
    pub cache_hits: IntCounter,
    pub cache_misses: IntCounter,
    pub cache_invalidations: IntCounter,
    pub cache_open_files: IntGauge,
    pub watch_events: IntCounter,
    pub rescans: IntCounter,
    /// Entries new or changed on disk that start-up reconcile had to read again.
    pub reconcile_rereads: IntCounter,
    /// Catalog rows inserted, updated or deleted since start.
    pub catalog_changes: IntCounter,
    pub catalog_errors: IntCounter,
}

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
        let bytes_sent =
            IntCounterVec::new(Opts::new("tessera_bytes_sent_total", "Body bytes sent, by delivery path"), &["path"])
                .expect("metric");
        registry.register(Box::new(bytes_sent.clone())).expect("register");
        let cache_open_files =
            IntGauge::new("tessera_cache_open_files", "Descriptors held by the descriptor cache").expect("metric");
        registry.register(Box::new(cache_open_files.clone())).expect("register");
        Metrics {
            requests,
            bytes_sent,
            cache_open_files,
            cache_hits: counter("tessera_cache_hits_total", "Descriptor cache hits"),
            cache_misses: counter("tessera_cache_misses_total", "Descriptor cache misses (file opened)"),
            cache_invalidations: counter(
                "tessera_cache_invalidations_total",
                "Descriptor cache entries dropped because the file changed",
            ),
            watch_events: counter("tessera_watch_events_total", "Filesystem events received from the watcher"),
            rescans: counter("tessera_rescans_total", "Full rescans of a root (queue overflow, watch errors)"),
            reconcile_rereads: counter(
                "tessera_reconcile_rereads_total",
                "Entries re-read by start-up reconcile because their stat changed",
            ),
            catalog_changes: counter("tessera_catalog_changes_total", "Catalog rows inserted, updated or deleted"),
            catalog_errors: counter("tessera_catalog_errors_total", "Catalog updates that failed and will be retried"),
            registry,
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
