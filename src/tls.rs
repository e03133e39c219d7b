//! TLS: the server configuration (rustls, TLS 1.2 and 1.3 only, ALPN `h2`
//! and `http/1.1`), its reload when the certificate files change, the
//! device names a client certificate gives, and serving one TLS connection.
//!
//! A TLS connection is served by hyper (HTTP/1.1 or HTTP/2, as ALPN chose)
//! on the buffered path: the kernel here offers no `tls` ULP, so a body
//! must be encrypted in user space and sendfile has nothing to do.
//! Plaintext connections keep the driver and its zero-copy paths.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use parking_lot::RwLock;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::access::Limiter;
use crate::config::{ClientAuth, TlsSettings};
use crate::delivery::{handoff, Peer};
use crate::metrics::Metrics;

/// The TLS configuration new connections get: replaced as a whole when the
/// files change and the new set loads; connections keep the one they began with.
pub struct Certs {
    settings: TlsSettings,
    current: RwLock<Arc<ServerConfig>>,
}

/// How often the certificate files are looked at for a change: a `stat`
/// of each, cheap enough to do every second.
const RELOAD_CHECK: Duration = Duration::from_secs(1);

impl Certs {
    /// Loads the configured files; an error names the file and the reason.
    pub fn load(settings: &TlsSettings) -> anyhow::Result<Arc<Certs>> {
        let config = server_config(settings)?;
        Ok(Arc::new(Certs { settings: settings.clone(), current: RwLock::new(config) }))
    }

    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.read().clone()
    }

    /// Watches the files from a thread of its own, which ends when the
    /// `Certs` are dropped. A new set that loads replaces the old for new
    /// connections; one that does not is refused with a warning, once per
    /// version of the files, and the old set stays.
    pub fn watch(self: &Arc<Certs>, metrics: Arc<Metrics>) -> io::Result<()> {
        let weak: Weak<Certs> = Arc::downgrade(self);
        let mut seen = stamp(&self.settings);
        std::thread::Builder::new().name("tls-reload".into()).spawn(move || loop {
            std::thread::sleep(RELOAD_CHECK);
            let Some(certs) = weak.upgrade() else { return };
            let now = stamp(&certs.settings);
            if now == seen {
                continue;
            }
            seen = now;
            match server_config(&certs.settings) {
                Ok(config) => {
                    *certs.current.write() = config;
                    metrics.tls_reloads.with_label_values(&["ok"]).inc();
                    tracing::info!(cert = %certs.settings.cert.display(), "TLS certificate reloaded for new connections");
                }
                Err(e) => {
                    metrics.tls_reloads.with_label_values(&["refused"]).inc();
                    tracing::warn!(error = %format!("{e:#}"), "new TLS files refused; keeping the certificate in use");
                }
            }
        })?;
        Ok(())
    }
}

/// What a change of the files shows: modification time, size and inode of each.
type Stamp = Vec<Option<(SystemTime, u64, u64)>>;

fn stamp(settings: &TlsSettings) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    files(settings)
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())))
        .collect()
}

fn files(settings: &TlsSettings) -> impl Iterator<Item = &PathBuf> {
    [&settings.cert, &settings.key].into_iter().chain(settings.client_ca.iter()).chain(settings.crls.iter())
}

/// The rustls configuration: the aws-lc-rs provider's safe defaults (ECDHE,
/// with X25519MLKEM768 first, and AES-GCM or ChaCha20-Poly1305; no
/// renegotiation, no compression), TLS 1.3 and 1.2 only, the server's order
/// of suites rather than the client's, ALPN `h2` then `http/1.1`, and client
/// certificates verified against `client_ca` and its CRLs when configured.
pub fn server_config(settings: &TlsSettings) -> anyhow::Result<Arc<ServerConfig>> {
    use anyhow::Context;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let chain = certificates(&settings.cert)?;
    let key = PrivateKeyDer::from_pem_file(&settings.key)
        .with_context(|| format!("{}: no usable private key", settings.key.display()))?;
    let verifier = match &settings.client_ca {
        None => WebPkiClientVerifier::no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for cert in certificates(ca)? {
                roots.add(cert).with_context(|| format!("{}: not a usable CA certificate", ca.display()))?;
            }
            let mut crls = Vec::new();
            for path in &settings.crls {
                let found = CertificateRevocationListDer::pem_file_iter(path)
                    .and_then(|all| all.collect::<Result<Vec<_>, _>>())
                    .with_context(|| format!("{}: cannot read CRLs", path.display()))?;
                anyhow::ensure!(!found.is_empty(), "{}: no CRL in the file", path.display());
                crls.extend(found);
            }
            let builder =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).with_crls(crls);
            let builder = match settings.client_auth {
                ClientAuth::Optional => builder.allow_unauthenticated(),
                ClientAuth::Required => builder,
            };
            builder.build().with_context(|| format!("{}: cannot verify clients with it", ca.display()))?
        }
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .with_context(|| {
            format!("{} and {} do not make a certificate and its key", settings.cert.display(), settings.key.display())
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // Every suite offered is strong, but a client preferring the weakest
    // of them should not get it when the server knows better (testssl rates
    // following the client's order HIGH).
    config.ignore_client_order = true;
    // A resumed session keeps the client certificate it began with, without
    // checking it again: a device certificate that expired (or a CRL that
    // came after) would go on working through ever-renewed tickets. With
    // devices, every connection makes a full handshake.
    if settings.client_ca.is_some() {
        config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
        config.send_tls13_tickets = 0;
    }
    Ok(Arc::new(config))
}

fn certificates(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    use anyhow::Context;
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|all| all.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{}: cannot read PEM certificates", path.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{}: no certificate in the file", path.display());
    Ok(chain)
}

/// The device names a verified client certificate gives: its subject CNs,
/// DNS SANs, and the last segment of each URI SAN (after the last `/` or
/// `:`, so `urn:dev:pump-7` and `spiffe://grid.example/device/pump-7` both
/// name `pump-7`); only names that can be a `/logs/{device}` segment.
pub fn device_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else { return Vec::new() };
    let mut names: Vec<String> =
        cert.subject().iter_common_name().filter_map(|cn| cn.as_str().ok()).map(str::to_string).collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => names.push(dns.to_string()),
                x509_parser::extensions::GeneralName::URI(uri) => {
                    names.push(uri.rsplit(['/', ':']).next().unwrap_or_default().to_string())
                }
                _ => {}
            }
        }
    }
    names.retain(|n| crate::names::safe_segment(n));
    names.dedup();
    names
}

/// What one TLS connection needs besides its socket.
#[derive(Clone)]
pub struct Context {
    pub certs: Arc<Certs>,
    pub router: axum::Router,
    pub metrics: Arc<Metrics>,
    /// Refused client certificates per address, for logging them once per
    /// burst. A certificate cannot be guessed, so nothing is slowed or
    /// refused for them: one device retrying with an expired certificate
    /// must not shut out its neighbours.
    pub refusals: Arc<Limiter>,
    pub handshake_timeout: Duration,
    pub limits: handoff::Limits,
}

/// Serves one TLS connection: the handshake within `handshake_timeout`,
/// then hyper with the caller's [`Peer`] on every request.
pub async fn serve(stream: TcpStream, addr: SocketAddr, cx: Context) {
    let _ = stream.set_nodelay(true);
    let acceptor = TlsAcceptor::from(cx.certs.current());
    let stream = match tokio::time::timeout(cx.handshake_timeout, acceptor.accept(stream).into_fallible()).await {
        Ok(Ok(stream)) => stream,
        Ok(Err((e, stream))) => {
            handshake_failed(&cx, addr, &e);
            return linger(stream).await;
        }
        Err(_) => {
            cx.metrics.tls_handshake_failures.with_label_values(&["timeout"]).inc();
            return;
        }
    };
    let device = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|cert| Arc::from(device_names(cert)));
    let peer = Peer { addr, tls: true, device };
    // ALPN said which HTTP: no bytes need reading to tell.
    let protocol = match stream.get_ref().1.alpn_protocol() {
        Some(b"h2") => handoff::Protocol::Http2,
        _ => handoff::Protocol::Http1,
    };
    handoff::serve_io(stream, protocol, peer, cx.router, cx.limits).await;
}

/// After a refused handshake, the alert saying why is on its way: close our
/// side and read off what the client sent meanwhile (a client such as curl
/// sends its request right after its certificate), so that the kernel does
/// not answer unread bytes with a reset that can overtake the alert.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut sink = [0u8; 4096];
    let drain = async {
        let mut left = LINGER_BYTES;
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// How long, and how much, a refused connection is read off before closing.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 64 * 1024;

/// Counts a failed handshake; a refused client certificate is logged once
/// per burst of its address.
fn handshake_failed(cx: &Context, addr: SocketAddr, e: &io::Error) {
    let rustls_error = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let reason = match rustls_error {
        Some(rustls::Error::InvalidCertificate(_)) => "client_certificate",
        Some(rustls::Error::NoCertificatesPresented) => "no_client_certificate",
        Some(_) => "protocol",
        None => "io",
    };
    cx.metrics.tls_handshake_failures.with_label_values(&[reason]).inc();
    if reason.starts_with("client") || reason == "no_client_certificate" {
        let failure = cx.refusals.failed(addr.ip());
        if let Some(earlier) = failure.log {
            tracing::warn!(client = %addr.ip(), reason, error = %e, earlier_failures = earlier,
                "TLS client certificate refused");
        }
    } else {
        tracing::debug!(client = %addr, reason, error = %e, "TLS handshake failed");
    }
}

/// Whether the kernel offers kernel TLS (`tls` in
/// `/proc/sys/net/ipv4/tcp_available_ulp`), for `doctor`.
pub fn kernel_tls() -> Option<bool> {
    let ulps = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_available_ulp").ok()?;
    Some(ulps.split_whitespace().any(|u| u == "tls"))
}
