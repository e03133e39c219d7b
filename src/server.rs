//! Wiring: what `serve`, `index` and `check` do, start to end.
//!
//! Start-up order matters for freshness: the watchers start before the
//! start-up reconcile, so a change made while the catalog is being built is
//! queued and applied after it, never lost; the listener opens at once,
//! since files are served from the disk and need no catalog.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use std::time::Duration;

use anyhow::Context;
use axum::Router;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpListener;

use crate::cache::DescriptorCache;
use crate::catalog::{self, worker::Worker};
use crate::config::{Config, ConfigArgs, HttpSettings, Transport};
use crate::delivery::driver::{self, Shared};
use crate::delivery::handoff;
use crate::http::{self, App};
use crate::metrics::Metrics;
use crate::roots::Root;
use crate::watch;

/// Opens and classifies every configured root, logging what was decided.
fn open_roots(config: &Config) -> anyhow::Result<Vec<Root>> {
    let mut roots = Vec::new();
    for (index, spec) in config.roots.iter().enumerate() {
        let mut root = Root::open(index, spec.clone())
            .with_context(|| format!("cannot open {} root {}", spec.kind, spec.path.display()))?;
        root.first_of_kind = !roots.iter().any(|r: &Root| r.kind() == root.kind());
        tracing::info!(
            kind = %root.kind(),
            root = %root.path().display(),
            fs = root.storage.fs_name,
            shared = root.storage.shared,
            delivery = root.delivery.as_str(),
            watcher = ?root.watcher,
            "root"
        );
        if root.storage.shared {
            tracing::warn!(root = %root.path().display(), fs = root.storage.fs_name,
                "shared storage: descriptors are not cached and files are revalidated on every request");
        }
        roots.push(root);
    }
    Ok(roots)
}

/// Opens the catalog and builds the worker that owns its writer connection.
fn catalog_worker(config: &Config, roots: Arc<Vec<Root>>, metrics: Arc<Metrics>) -> anyhow::Result<Worker> {
    let (conn, location) = catalog::open_or_memory(&config.state)?;
    let register = |conn: &rusqlite::Connection| {
        roots
            .iter()
            .map(|r| {
                let by_content = r.spec.etag == crate::config::EtagMode::Content;
                catalog::root_id(conn, &r.kind().to_string(), r.path(), by_content)
            })
            .collect::<rusqlite::Result<Vec<i64>>>()
    };
    // A database another process keeps locked past the busy timeout must
    // not keep tessera from serving: use memory, as for an unusable file.
    let (conn, location, root_ids) = match register(&conn) {
        Ok(ids) => (conn, location, ids),
        Err(e) => {
            tracing::warn!(error = %e, "cannot register the roots in the catalog database; keeping the catalog in memory");
            let conn = catalog::open_memory()?;
            let ids = register(&conn)?;
            (conn, catalog::Location::Memory, ids)
        }
    };
    Ok(Worker {
        conn,
        location,
        roots,
        root_ids,
        metrics,
        ready: Arc::new(AtomicBool::new(false)),
        generation: Arc::default(),
        tiles_generation: Arc::default(),
        tiles_changed: false,
        unfinished: Default::default(),
        index_failures: Default::default(),
        on_change: None,
        changed: Default::default(),
    })
}

/// `tessera serve`: index, watch and serve until SIGTERM or SIGINT.
/// `inherited`: the listening socket systemd passed (socket activation),
/// used instead of binding `config.listen`.
pub async fn serve(config: Config, inherited: Option<std::net::TcpListener>) -> anyhow::Result<()> {
    let metrics = Arc::new(Metrics::new());
    let roots = Arc::new(open_roots(&config)?);
    let mut worker = catalog_worker(&config, roots.clone(), metrics.clone())?;
    if let Some(invalidator) = crate::invalidate::Invalidator::start(&config.caches, metrics.clone())? {
        worker.on_change = Some(Box::new(move |kind, rels| invalidator.changed(kind, rels)));
    }
    for cache in &config.caches {
        tracing::info!(cache = %cache.url, protocol = ?cache.protocol, "telling a cache in front of every change");
    }
    let (root_ids, ready, generation) = (worker.root_ids.clone(), worker.ready.clone(), worker.generation.clone());
    let tiles_generation = worker.tiles_generation.clone();
    let location = worker.location.clone();
    let cache = Arc::new(DescriptorCache::new(&config.cache, &roots, metrics.clone()));

    let followers = Arc::new(watch::Followers::default());
    let (jobs, job_queue) = std::sync::mpsc::channel();
    let watchers = watch::start(&roots, &cache, &jobs, &metrics, &followers);
    drop(jobs); // the watchers hold the senders; the worker stops when they are gone
    std::thread::Builder::new().name("catalog".into()).spawn(move || worker.run(job_queue))?;
    let digests = Arc::new(catalog::digest::Digests::default());
    let digester = catalog::digest::Digester {
        conn: catalog::open_second_writer(&location)?,
        roots: roots.clone(),
        root_ids: root_ids.clone(),
        digests: digests.clone(),
        generation: generation.clone(),
    };
    std::thread::Builder::new().name("digest".into()).spawn(move || digester.run())?;

    let activated = inherited.is_some();
    let main = match inherited {
        Some(listener) => listener,
        None => bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?,
    };
    let mut listeners = vec![Listening { socket: main, tls: config.tls.is_some(), activated }];
    if let Some(addr) = config.tls.as_ref().and_then(|t| t.plaintext_listen) {
        let socket = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
        listeners.push(Listening { socket, tls: false, activated: false });
    }
    let certs = match &config.tls {
        Some(settings) => {
            let certs = crate::tls::Certs::load(settings).context("TLS refused")?;
            certs.watch(metrics.clone())?;
            Some(certs)
        }
        None => None,
    };
    if activated {
        tracing::info!(addr = %listeners[0].socket.local_addr()?, "socket activation: serving on the socket systemd passed");
    }
    for l in &listeners {
        // Tests and scripts read these lines to learn the port of 127.0.0.1:0.
        let (addr, scheme) = (l.socket.local_addr()?, if l.tls { "https" } else { "http" });
        println!("tessera listening on {scheme}://{addr}");
        tracing::info!(%addr, scheme, state = %config.state.display(), "listening");
    }
    std::io::stdout().flush()?;
    let addr = listeners[0].socket.local_addr()?;

    let catalog =
        http::CatalogState { root_ids, ready: ready.clone(), generation: tiles_generation, digests, location };
    let app = Arc::new(App::new(&config, roots, cache, metrics.clone(), catalog, followers));
    warn_if_open(&config, &app);
    // The watchdog's self-check speaks plain HTTP: it needs a plaintext listener.
    let plain = listeners.iter().find(|l| !l.tls).map(|l| l.socket.local_addr()).transpose()?;
    let (check, tls_only) = (plain.unwrap_or(addr), plain.is_none());
    tokio::spawn(crate::systemd::supervise(ready, check, tls_only, http::Status(app.clone())));
    tokio::spawn(http::console::sample(app.clone()));
    // The doctor's findings for the console: once, off the executor (it
    // walks every root; no sendfile probe, which would touch the files).
    let (doctor_config, doctor_app) = (config.clone(), app.clone());
    tokio::task::spawn_blocking(move || {
        let report = crate::doctor::report(&doctor_config, &doctor_app.roots, false);
        *doctor_app.doctor.lock() = report.lines().map(str::to_string).collect();
    });
    // The driver re-opens files of evicted replays through the same cache.
    let files = (app.cache.clone(), app.roots.clone());
    let router = http::router(app);
    serve_listeners(listeners, router, config.http.clone(), metrics, files, certs).await?;
    drop(watchers);
    tracing::info!("stopped");
    Ok(())
}

/// A bound listening socket and what it speaks.
struct Listening {
    socket: std::net::TcpListener,
    tls: bool,
    /// The socket systemd passed: workers share it instead of binding siblings.
    activated: bool,
}

/// Says at start-up what `tessera check` warns about: logs readable by
/// anyone who reaches a listener that is not on loopback.
fn warn_if_open(config: &Config, app: &App) {
    if let Some(warning) = open_logs_warning(config, &app.policy) {
        tracing::warn!("{warning}");
    }
}

fn open_logs_warning(config: &Config, policy: &crate::access::Policy) -> Option<String> {
    let mut addrs = vec![config.listen];
    addrs.extend(config.tls.as_ref().and_then(|t| t.plaintext_listen));
    let exposed: Vec<String> = addrs.iter().filter(|a| !a.ip().is_loopback()).map(|a| a.to_string()).collect();
    let has_logs = config.roots.iter().any(|r| r.kind == crate::config::RootKind::Logs);
    (!exposed.is_empty() && has_logs && policy.is_public(&crate::access::Target::new("/logs/any/any"))).then(|| {
        format!(
            "logs are readable without authentication on {} (not loopback): configure [tls] with client_ca, or [[tokens]], \
             or an [[access]] rule for /logs",
            exposed.join(", ")
        )
    })
}

/// Serves with one thread per worker, each with a single-threaded runtime
/// and its own `SO_REUSEPORT` sibling of every listener, so that a
/// connection lives on one thread from accept to close (no work stealing,
/// no cross-thread wake-ups; this halved the scheduler's share of the tile
/// path in perf). Plaintext connections go to the driver (or to hyper
/// under `transport = "hyper"`), TLS ones to hyper over rustls. On a
/// signal, listeners close, idle connections close, and requests in flight
/// finish.
async fn serve_listeners(
    listeners: Vec<Listening>,
    router: Router,
    settings: HttpSettings,
    metrics: Arc<Metrics>,
    (cache, roots): (Arc<DescriptorCache>, Arc<Vec<Root>>),
    certs: Option<Arc<crate::tls::Certs>>,
) -> anyhow::Result<()> {
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let max_connections = settings.max_connections.min(tokio::sync::Semaphore::MAX_PERMITS);
    let workers = match settings.workers {
        0 => std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        n => n,
    };
    let mut per_worker: Vec<Vec<(std::net::TcpListener, bool)>> = (0..workers).map(|_| Vec::new()).collect();
    for l in listeners {
        let addr = l.socket.local_addr()?;
        for sockets in per_worker.iter_mut().skip(1) {
            // A socket systemd passed is shared by every worker (the kernel
            // wakes one waiting accept per connection); our own get a
            // `SO_REUSEPORT` sibling each.
            sockets.push((if l.activated { l.socket.try_clone()? } else { bind(addr)? }, l.tls));
        }
        per_worker[0].push((l.socket, l.tls));
    }
    let limits = handoff::Limits::new(&settings, shutdown.clone());
    let tls = certs.map(|certs| crate::tls::Context {
        certs,
        router: router.clone(),
        metrics: metrics.clone(),
        refusals: Arc::default(),
        handshake_timeout: settings.head_timeout,
        limits,
    });
    let shared = Arc::new(Shared {
        router,
        cache,
        roots,
        settings,
        metrics: metrics.clone(),
        shutdown,
        idle_close: Arc::new(tokio::sync::Notify::new()),
        idle_close_rings: std::sync::atomic::AtomicU64::new(0),
        connection_slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
    });
    let mut threads = Vec::new();
    for (i, sockets) in per_worker.into_iter().enumerate() {
        let (shared, tls) = (shared.clone(), tls.clone());
        threads.push(std::thread::Builder::new().name(format!("http-{i}")).spawn(move || {
            // Few blocking threads: only reads from shared storage use them.
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().max_blocking_threads(16).build()?;
            runtime.block_on(async move {
                let loops = sockets.into_iter().map(|(socket, is_tls)| {
                    let kind = if is_tls { tls.clone().map(Kind::Tls) } else { Some(Kind::Plain) };
                    tokio::spawn(accept_loop(socket, kind.expect("TLS settings for a TLS listener"), shared.clone()))
                });
                for result in futures_util::future::join_all(loops).await {
                    result.map_err(std::io::Error::other)??;
                }
                Ok::<(), std::io::Error>(())
            })
        })?);
    }
    tracing::info!(workers, "workers started");
    shutdown_signal().await;
    let _ = stop.send(true);
    shared.ring_idle_close();
    for thread in threads {
        match thread.join() {
            Ok(Err(e)) => tracing::warn!(error = %e, "worker failed"),
            Err(_) => tracing::warn!("worker panicked"),
            Ok(Ok(())) => {}
        }
    }
    Ok(())
}

/// What a listener's connections speak.
#[derive(Clone)]
enum Kind {
    Plain,
    Tls(crate::tls::Context),
}

/// A listening socket with `SO_REUSEPORT`, so that each worker has its own
/// accept queue and the kernel spreads connections between them.
fn bind(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Over `max_connections`: a short 503 if the socket takes it at once, then
/// close. Nothing waits on this client, so a flood of connections costs
/// an accept and a close each, never a descriptor held open.
fn refuse(stream: tokio::net::TcpStream, kind: &Kind, shared: &Shared) {
    shared.metrics.rejected_heads.with_label_values(&["503"]).inc();
    // A TLS client would read plaintext as a broken handshake: just close.
    if matches!(kind, Kind::Tls(_)) {
        return;
    }
    let _ = stream.try_write(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nretry-after: 1\r\nconnection: close\r\n\r\n",
    );
    tracing::debug!("connection refused: max_connections reached");
}

/// One worker: accept until shutdown, then wait for its connections.
///
/// Each connection owns a permit of the process-wide `max_connections`
/// semaphore and a sender of this worker's `finished` channel, both dropped
/// when its task ends: over the limit an accepted connection gets 503, and
/// the shutdown drain is `finished` closing, with no polling (as tokio's
/// mini-redis does both).
async fn accept_loop(listener: std::net::TcpListener, kind: Kind, shared: Arc<Shared>) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener)?;
    let mut shutdown = shared.shutdown.clone();
    let (finished, mut all_finished) = tokio::sync::mpsc::channel::<()>(1);
    // A descriptor kept in reserve for answering when the others run out.
    let mut spare = std::fs::File::open("/dev/null").ok();
    let mut last_warning = std::time::Instant::now() - Duration::from_secs(60);
    loop {
        tokio::select! {
            _ = crate::delivery::stopped(&mut shutdown) => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => match shared.connection_slots.clone().try_acquire_owned() {
                    Ok(slot) => {
                        let (shared, finished, kind) = (shared.clone(), finished.clone(), kind.clone());
                        tokio::spawn(async move {
                            // Counted from accept to close, whoever carries it
                            // (a TLS connection from its handshake on).
                            shared.metrics.connections.inc();
                            let metrics = shared.metrics.clone();
                            match kind {
                                Kind::Tls(cx) => crate::tls::serve(stream, addr, cx).await,
                                Kind::Plain if shared.settings.transport == Transport::Hyper => {
                                    let peer = crate::delivery::Peer { addr, tls: false, device: None };
                                    let (router, limits) = (shared.router.clone(), shared.hyper_limits());
                                    handoff::serve(stream, bytes::Bytes::new(), peer, router, limits).await;
                                }
                                Kind::Plain => driver::serve_connection(stream, addr, shared).await,
                            }
                            metrics.connections.dec();
                            drop((slot, finished));
                        });
                    }
                    Err(_) => refuse(stream, &kind, &shared),
                },
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE) | Some(libc::ENFILE)) => {
                    // Out of descriptors: idle keep-alive connections close,
                    // and the spare descriptor is given back to take the
                    // waiting connection, tell it 503 and close it, so that
                    // clients get an answer instead of a silent backlog.
                    if last_warning.elapsed() >= Duration::from_secs(1) {
                        tracing::warn!(error = %e, "out of file descriptors; refusing new connections with 503");
                        last_warning = std::time::Instant::now();
                    }
                    shared.ring_idle_close();
                    let had_spare = spare.take().is_some();
                    match tokio::time::timeout(Duration::from_millis(10), listener.accept()).await {
                        Ok(Ok((stream, _))) => refuse(stream, &kind, &shared),
                        other => tracing::debug!(had_spare, ?other, "no descriptor to refuse with"),
                    }
                    spare = std::fs::File::open("/dev/null").ok();
                    if spare.is_none() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    // This runtime's tasks die with it: wait for its connections first.
    drop(finished);
    let _ = tokio::time::timeout(DRAIN, all_finished.recv()).await;
    Ok(())
}

/// How long shutdown waits for requests in flight.
const DRAIN: Duration = Duration::from_secs(30);

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: finishing requests in flight"),
        _ = int.recv() => tracing::info!("SIGINT: finishing requests in flight"),
    }
    crate::systemd::stopping();
}

/// `tessera index`: bring the catalog up to date and say what changed.
pub fn index(config: &Config) -> anyhow::Result<String> {
    let roots = Arc::new(open_roots(config)?);
    let mut worker = catalog_worker(config, roots, Arc::new(Metrics::new()))?;
    let stats = worker.reconcile_all();
    worker.finish_indexes();
    let mut report = format!(
        "catalog {}: {} re-read, {} unchanged, {} removed",
        catalog::db_path(&config.state).display(),
        stats.rereads,
        stats.unchanged,
        stats.deleted
    );
    match worker.time_index_size() {
        Ok(size) => report.push_str(&format!(
            "\ntime index: {} marks for {} logs, {} KiB on disk for {} MiB of logs ({:.3} %)",
            size.marks,
            size.logs,
            size.bytes / 1024,
            size.covered >> 20,
            if size.covered == 0 { 0.0 } else { size.bytes as f64 * 100.0 / size.covered as f64 }
        )),
        Err(e) => report.push_str(&format!("\ntime index: size unknown ({e})")),
    }
    Ok(report)
}

/// `tessera token NAME --role ROLE`: a new secret from the kernel's random
/// source, printed once, and the `[[tokens]]` entry with its SHA-256 (the
/// configuration never holds the secret).
pub fn token(args: &crate::config::TokenArgs) -> Result<String, String> {
    use std::io::Read;
    let valid = crate::config::valid_name;
    if !valid(&args.name) {
        return Err(format!("token name `{}`: letters, digits, `-`, `_` and `.` only", args.name));
    }
    if let Some(bad) = args.roles.iter().find(|r| !valid(r)) {
        return Err(format!("role `{bad}`: letters, digits, `-`, `_` and `.` only"));
    }
    let mut random = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut random))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    use base64::Engine;
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random);
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    let roles: Vec<String> = args.roles.iter().map(|r| format!("{r:?}")).collect();
    Ok(format!(
        "# The token, shown this once: clients send `Authorization: Bearer <token>`.\n{secret}\n\n\
         # Add to the configuration:\n[[tokens]]\nname = {:?}\nsha256 = \"{hash}\"\nroles = [{}]\n",
        args.name,
        roles.join(", ")
    ))
}

/// `tessera doctor`: the report of [`crate::doctor`].
pub fn doctor(config: &Config) -> anyhow::Result<String> {
    let roots = open_roots(config)?;
    Ok(crate::doctor::report(config, &roots, true))
}

/// `tessera check`: the configuration loads, every root opens, and the state
/// directory is usable. Returns a one-line summary.
pub fn check(args: &ConfigArgs) -> Result<String, String> {
    let config = Config::load(args).map_err(|e| e.to_string())?;
    let roots = open_roots(&config).map_err(|e| format!("{e:#}"))?;
    // An unusable state directory does not stop serving (the catalog is
    // then kept in memory), so it is a warning here, not a refusal.
    let state_note = match check_state_dir(&config.state) {
        Ok(()) => String::new(),
        Err(e) => format!("; warning: {e}: the catalog will be kept in memory"),
    };
    // The certificate, key, CAs and CRLs must load together, as at start.
    let tls_note = match &config.tls {
        Some(settings) => {
            crate::tls::server_config(settings).map_err(|e| format!("TLS refused: {e:#}"))?;
            let devices = if settings.client_ca.is_some() { " with device certificates" } else { "" };
            format!(", TLS{devices}")
        }
        None => String::new(),
    };
    let policy = crate::access::Policy::new(&config);
    let open_note = open_logs_warning(&config, &policy).map(|w| format!("; warning: {w}")).unwrap_or_default();
    let source = config.source.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "command line".into());
    Ok(format!(
        "configuration OK ({source}): {} roots, listen {}{tls_note}, {} tokens, state {}{state_note}{open_note}",
        roots.len(),
        config.listen,
        config.tokens.len(),
        config.state.display()
    ))
}

fn check_state_dir(state: &Path) -> Result<(), String> {
    let existing = state.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    if !existing.is_dir() {
        return Err(format!("state {}: {} is not a directory", state.display(), existing.display()));
    }
    if nix::unistd::access(existing, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(format!("state {}: {} is not writable", state.display(), existing.display()));
    }
    Ok(())
}
