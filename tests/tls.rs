//! HTTPS, device certificates, tokens and the access rules, with real
//! clients: curl (HTTP/1.1 and HTTP/2 over ALPN, client certificates) and a
//! rustls client that keeps one connection open across a certificate
//! reload. The PKI is made per test with rcgen: a CA, a server certificate
//! for 127.0.0.1, device certificates (by CN, by DNS SAN), an expired one,
//! one from an unknown CA and a revoked one with its CRL.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyIdMethod, KeyPair, KeyUsagePurpose, RevocationReason, RevokedCertParams, SanType, SerialNumber,
};
use sha2::{Digest, Sha256};

use common::*;

/// A CA that signs certificates into files under `dir`.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    dir: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("key");
        let cert = params.self_signed(&key).expect("self-signed CA");
        let dir = dir.to_path_buf();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).expect("write CA");
        Ca { cert, key, dir }
    }

    fn pem_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }

    /// Signs a leaf and writes `{file}.pem` and `{file}.key`; returns their paths.
    fn issue(&self, file: &str, mut params: CertificateParams) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("key");
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.cert, &self.key).expect("sign");
        let (pem, key_path) = (self.dir.join(format!("{file}.pem")), self.dir.join(format!("{file}.key")));
        std::fs::write(&pem, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (pem, key_path)
    }

    fn server(&self, file: &str, serial: u64) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        params.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        self.issue(file, params)
    }

    fn device(&self, file: &str, cn: Option<&str>, dns: Option<&str>, serial: u64) -> (PathBuf, PathBuf) {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        if let Some(dns) = dns {
            params.subject_alt_names.push(SanType::DnsName(dns.try_into().expect("dns name")));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(SerialNumber::from(serial));
        self.issue(file, params)
    }

    fn crl(&self, file: &str, revoked: &[u64]) -> PathBuf {
        let now = time::OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(1),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|serial| RevokedCertParams {
                    serial_number: SerialNumber::from(*serial),
                    revocation_time: now - time::Duration::minutes(5),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        let crl = params.signed_by(&self.cert, &self.key).expect("CRL");
        let path = self.dir.join(format!("{file}.pem"));
        std::fs::write(&path, crl.pem().expect("CRL PEM")).expect("write CRL");
        path
    }
}

/// What a test's server was started with.
struct Setup {
    fx: Fixture,
    ca: Ca,
    server: Server,
    tls: SocketAddr,
}

const TOKEN: &str = "s3cret-metrics-token-0123456789";
const WRONG_TOKEN: &str = "not-the-token-9876543210";

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// A server with TLS, devices verified against a CA and a CRL, one token
/// with role `metrics`, a plaintext listener beside, and logs for two devices.
fn start(tls_extra: &str, extra_toml: &str, env: &[(&str, &str)]) -> Setup {
    let fx = Fixture::new();
    let pki = fx.root().join("pki");
    std::fs::create_dir(&pki).expect("pki dir");
    let ca = Ca::new(&pki, "ca");
    ca.server("server", 100);
    ca.device("pump-7", Some("pump-7"), None, 7);
    ca.device("pump-8", None, Some("pump-8"), 8);
    ca.device("revoked", Some("pump-9"), None, 9);
    let crl = ca.crl("crl", &[9]);
    for (device, text) in [("pump-7", "pump-7 line\n"), ("pump-8", "pump-8 line\n")] {
        std::fs::create_dir_all(fx.logs().join(device)).expect("device dir");
        std::fs::write(fx.logs().join(device).join("a.log"), text.repeat(100)).expect("log");
    }
    std::fs::create_dir_all(fx.tiles().join("osm/0/0")).expect("tiles");
    std::fs::write(fx.tiles().join("osm/0/0/0.png"), tile_bytes()).expect("tile");
    let config = fx.root().join("tessera.toml");
    let toml = format!(
        "[tls]\ncert = {:?}\nkey = {:?}\nclient_ca = {:?}\ncrl = [{:?}]\nplaintext_listen = \"127.0.0.1:0\"\n{tls_extra}\n\
         [[tokens]]\nname = \"grafana\"\nsha256 = \"{}\"\nroles = [\"metrics\"]\n{extra_toml}",
        pki.join("server.pem"),
        pki.join("server.key"),
        ca.pem_path("ca"),
        crl,
        sha256_hex(TOKEN),
    );
    std::fs::write(&config, toml).expect("config");
    let mut command = Command::new(bin());
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config);
    command.arg("--tiles").arg(fx.tiles()).arg("--logs").arg(fx.logs()).arg("--state").arg(fx.state());
    for (k, v) in env {
        command.env(k, v);
    }
    let server = Server::spawn_command(command, &fx.root().join("server.stderr"));
    let tls = server.tls_addr.expect("a TLS listener");
    assert_ne!(tls, server.addr, "the plaintext listener is a second socket");
    server.wait_ready();
    Setup { fx, ca, server, tls }
}

fn tile_bytes() -> Vec<u8> {
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend((0..2000u32).map(|i| (i % 251) as u8));
    png
}

/// curl against the TLS listener: (HTTP status, body, HTTP version, exit code).
fn curl(setup: &Setup, path: &str, args: &[&str]) -> (u16, Vec<u8>, String, i32) {
    let out_file = setup.fx.root().join(format!("curl-{}.out", std::process::id()));
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert"])
        .arg(setup.ca.pem_path("ca"))
        .args(args)
        .arg("-o")
        .arg(&out_file)
        .args(["-w", "%{http_code} %{http_version}"])
        .arg(format!("https://{}{path}", setup.tls))
        .output()
        .expect("run curl (apt-get install curl)");
    let written = String::from_utf8_lossy(&output.stdout).to_string();
    let mut parts = written.split_whitespace();
    let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let version = parts.next().unwrap_or_default().to_string();
    let body = std::fs::read(&out_file).unwrap_or_default();
    let _ = std::fs::remove_file(&out_file);
    (status, body, version, output.status.code().unwrap_or(-1))
}

fn device_args(setup: &Setup, name: &str) -> Vec<String> {
    let dir = setup.fx.root().join("pki");
    vec![
        "--cert".into(),
        dir.join(format!("{name}.pem")).display().to_string(),
        "--key".into(),
        dir.join(format!("{name}.key")).display().to_string(),
    ]
}

fn as_strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn curl_gets_tiles_over_http1_and_http2_and_tls_bodies_are_exact() {
    let setup = start("", "", &[]);
    let (status, body, version, _) = curl(&setup, "/tiles/osm/0/0/0.png", &["--http1.1"]);
    assert_eq!((status, version.as_str()), (200, "1.1"));
    assert_eq!(body, tile_bytes());
    let (status, body, version, _) = curl(&setup, "/tiles/osm/0/0/0.png", &["--http2"]);
    assert_eq!((status, version.as_str()), (200, "2"), "ALPN h2");
    assert_eq!(body, tile_bytes());
    // A large log over TLS arrives whole (the buffered path, chunk by chunk).
    let big: Vec<u8> = (0..3_000_000u32).map(|i| b"0123456789abcdef\n"[(i % 17) as usize]).collect();
    std::fs::write(setup.fx.logs().join("pump-7/big.log"), &big).expect("big log");
    let args = device_args(&setup, "pump-7");
    let (status, body, _, _) = curl(&setup, "/logs/pump-7/big.log", &as_strs(&args));
    assert_eq!(status, 200);
    assert!(body == big, "a 3 MB log over TLS is byte-identical ({} bytes came)", body.len());
    // The plaintext listener beside it serves the same tile.
    let plain = setup.server.get("/tiles/osm/0/0/0.png");
    assert_eq!(plain.status, 200);
    assert_eq!(plain.body, tile_bytes());

    // Plaintext keeps sendfile; TLS takes the buffered path.
    let tile: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::create_dir_all(setup.fx.tiles().join("osm/2/0")).expect("dir");
    std::fs::write(setup.fx.tiles().join("osm/2/0/0.png"), &tile).expect("tile");
    let sent = |path: &str| -> f64 {
        let text = setup.server.get_with_token("/metrics", TOKEN).text();
        let series = format!("tessera_bytes_sent_total{{path=\"{path}\"");
        text.lines().filter(|l| l.starts_with(&series)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
    };
    let (sendfile, buffered) = (sent("sendfile"), sent("buffered"));
    assert_eq!(setup.server.get("/tiles/osm/2/0/0.png").body, tile);
    assert!(sent("sendfile") - sendfile >= 300_000.0, "plaintext: by sendfile");
    let (status, body, _, _) = curl(&setup, "/tiles/osm/2/0/0.png", &[]);
    assert_eq!((status, body == tile), (200, true));
    assert!(sent("buffered") - buffered >= 300_000.0, "TLS: buffered");
}

#[test]
fn a_device_reads_its_own_logs_and_no_other() {
    let setup = start("", "", &[]);
    let own = fs_log(&setup, "pump-7");
    let args = device_args(&setup, "pump-7");
    let (status, body, _, _) = curl(&setup, "/logs/pump-7/a.log", &as_strs(&args));
    assert_eq!((status, body), (200, own));
    let (status, _, _, _) = curl(&setup, "/logs/pump-8/a.log", &as_strs(&args));
    assert_eq!(status, 403, "another device's log");
    let (status, _, _, _) = curl(&setup, "/metrics", &as_strs(&args));
    assert_eq!(status, 403, "a device has no metrics role");
    // The listing shows only its own logs.
    let (status, body, _, _) = curl(&setup, "/logs", &as_strs(&args));
    assert_eq!(status, 200);
    let listing: serde_json::Value = serde_json::from_slice(&body).expect("JSON listing");
    let devices: Vec<&str> =
        listing["logs"].as_array().expect("logs").iter().map(|l| l["device"].as_str().unwrap_or_default()).collect();
    assert_eq!(devices, ["pump-7"], "{listing}");
    // Time slices and a device's lines across its logs follow the same rules.
    let timed = "2026-11-20T06:00:00Z flow 1\n2026-11-20T07:00:00Z flow 2\n";
    for device in ["pump-7", "pump-8"] {
        std::fs::write(setup.fx.logs().join(device).join("t.log"), timed).expect("timed log");
    }
    let span = "since=2026-11-20T06:30:00Z";
    let indexed = poll_until(Duration::from_secs(5), || {
        curl(&setup, &format!("/logs/pump-7/.lines?{span}"), &as_strs(&args)).1 == b"2026-11-20T07:00:00Z flow 2\n"
    });
    assert!(indexed, "pump-7 never got its own lines of the span");
    assert_eq!(curl(&setup, &format!("/logs/pump-7/t.log?{span}"), &as_strs(&args)).0, 200);
    assert_eq!(curl(&setup, &format!("/logs/pump-8/.lines?{span}"), &as_strs(&args)).0, 403);
    assert_eq!(curl(&setup, &format!("/logs/pump-8/t.log?{span}"), &as_strs(&args)).0, 403);
    assert_eq!(setup.server.get(&format!("/logs/pump-7/.lines?{span}")).status, 401);
    // A DNS SAN names a device as well as a CN does.
    let args8 = device_args(&setup, "pump-8");
    let (status, body, _, _) = curl(&setup, "/logs/pump-8/a.log", &as_strs(&args8));
    assert_eq!((status, body), (200, fs_log(&setup, "pump-8")));
    // Without a certificate: 401 with a challenge.
    let response = setup.server.get("/logs/pump-7/a.log");
    assert_eq!(response.status, 401);
    assert!(response.expect_header("www-authenticate").starts_with("Bearer"));
    // CORS preflights are still answered for a browser dashboard.
    let preflight = setup.server.request(
        "OPTIONS",
        "/logs/pump-7/a.log",
        &[("Origin", "https://dash.example"), ("Access-Control-Request-Method", "GET")],
    );
    assert!(preflight.status < 300, "preflight answered {}", preflight.status);
}

fn fs_log(setup: &Setup, device: &str) -> Vec<u8> {
    std::fs::read(setup.fx.logs().join(device).join("a.log")).expect("log")
}

#[test]
fn expired_unknown_and_revoked_certificates_are_refused() {
    let setup = start("", "", &[]);
    let pki = setup.fx.root().join("pki");
    // Expired: valid from 2020 to 2021, signed by the right CA.
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, "pump-7");
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2021, 1, 1);
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    setup.ca.issue("expired", params);
    // Another CA's certificate for the same name.
    let other = Ca::new(&pki, "other-ca");
    other.device("stranger", Some("pump-7"), None, 7);
    for name in ["expired", "stranger", "revoked"] {
        let args = device_args(&setup, name);
        let (status, body, _, exit) = curl(&setup, "/logs/pump-7/a.log", &as_strs(&args));
        assert!(status == 0 && exit != 0, "{name}: the handshake must fail, got {status} and {} bytes", body.len());
    }
    let metric = setup.server.get_with_token("/metrics", TOKEN);
    assert_eq!(metric.status, 200);
    let refused = metric_value(&metric.text(), "tessera_tls_handshake_failures_total{reason=\"client_certificate\"}");
    assert!(refused >= 3.0, "three refused certificates counted, saw {refused}");
    // The valid one still works after the refusals.
    let args = device_args(&setup, "pump-7");
    assert_eq!(curl(&setup, "/logs/pump-7/a.log", &as_strs(&args)).0, 200);
}

#[test]
fn client_auth_required_refuses_connections_without_a_device_certificate() {
    let setup = start("client_auth = \"required\"", "", &[]);
    let (status, _, _, exit) = curl(&setup, "/tiles/osm/0/0/0.png", &[]);
    assert!(status == 0 && exit != 0, "no certificate, no connection (got {status})");
    let args = device_args(&setup, "pump-7");
    let (status, body, _, _) = curl(&setup, "/tiles/osm/0/0/0.png", &as_strs(&args));
    assert_eq!((status, body), (200, tile_bytes()));
    assert_eq!(curl(&setup, "/logs/pump-7/a.log", &as_strs(&args)).0, 200);
    let text = setup.server.get_with_token("/metrics", TOKEN).text();
    assert!(metric_value(&text, "tessera_tls_handshake_failures_total{reason=\"no_client_certificate\"}") >= 1.0);
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {series} in metrics"))
}

#[test]
fn tokens_read_by_role_wrong_ones_are_slowed_and_no_secret_is_logged() {
    let _serial = serial(); // measures delays
    let setup = start("", "", &[("TESSERA_LOG", "debug,tessera::access=info,tower_http=trace")]);
    let server = &setup.server;
    let anonymous = server.get("/metrics");
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.expect_header("www-authenticate"), "Bearer realm=\"tessera\"");
    let ok = server.get_with_token("/metrics", TOKEN);
    assert_eq!(ok.status, 200);
    assert!(ok.text().contains("tessera_requests_total"));
    let cc = ok.header("cache-control").unwrap_or_default();
    assert!(cc.starts_with("private"), "an answer for one caller is private to it: {cc}");
    // Over TLS too, with curl.
    let bearer = format!("Authorization: Bearer {TOKEN}");
    assert_eq!(curl(&setup, "/metrics", &["-H", &bearer]).0, 200);
    // The token has no logs role.
    assert_eq!(server.get_with_token("/logs/pump-7/a.log", TOKEN).status, 403);

    // Wrong tokens: a burst is answered at once, then each waits for the
    // bucket to refill, about a second apiece.
    let mut times = Vec::new();
    for _ in 0..8 {
        let started = Instant::now();
        let wrong = server.get_with_token("/metrics", WRONG_TOKEN);
        times.push(started.elapsed());
        assert_eq!(wrong.status, 401);
        assert!(wrong.expect_header("www-authenticate").contains("invalid_token"));
    }
    assert!(times[..5].iter().all(|t| *t < Duration::from_millis(500)), "the burst is not slowed: {times:?}");
    assert!(times[6] >= Duration::from_millis(800), "past the burst, failures wait: {times:?}");
    // A wrong token does not stop the right one from another client... nor this one.
    assert_eq!(server.get_with_token("/metrics", TOKEN).status, 200);
    let text = server.get_with_token("/metrics", TOKEN).text();
    assert!(metric_value(&text, "tessera_auth_refusals_total{reason=\"bad_token\"}") >= 8.0);
    assert!(metric_value(&text, "tessera_auth_refusals_total{reason=\"missing\"}") >= 1.0);

    let log = server.stderr();
    assert!(!log.contains(TOKEN), "the token appears in the log");
    assert!(!log.contains(WRONG_TOKEN), "a presented token appears in the log");
    let warnings = log.lines().filter(|l| l.contains("authentication failed")).count();
    assert_eq!(warnings, 1, "one warning per burst of failures:\n{log}");
    assert!(log.contains("client=127.0.0.1"), "the access log and the warning name the client address");
    assert!(log.contains("user=\"token:grafana\""), "the access log names the token, not its secret");
}

#[test]
fn a_replaced_certificate_serves_new_connections_and_old_ones_keep_working() {
    let setup = start("", "", &[]);
    let pki = setup.fx.root().join("pki");
    let mut old = TlsClient::connect(setup.tls, &setup.ca.pem_path("ca"));
    let first = old.peer_serial();
    assert_eq!(old.get("/healthz").0, 200);

    // Replace both files (each by rename, as a careful operator does).
    setup.ca.server("next", 200);
    replace(&pki.join("next.key"), &pki.join("server.key"));
    replace(&pki.join("next.pem"), &pki.join("server.pem"));
    let swapped = poll_until(Duration::from_secs(5), || {
        TlsClient::connect(setup.tls, &setup.ca.pem_path("ca")).peer_serial() != first
    });
    assert!(swapped, "new connections get the new certificate within 5 s");
    assert_eq!(old.get("/healthz").0, 200, "the connection made before the reload still works");
    assert_eq!(old.peer_serial(), first);
    let second = TlsClient::connect(setup.tls, &setup.ca.pem_path("ca")).peer_serial();

    // A broken replacement: a key that is not the certificate's.
    setup.ca.server("wrong", 300);
    replace(&pki.join("wrong.key"), &pki.join("server.key"));
    let warned = poll_until(Duration::from_secs(5), || setup.server.stderr().contains("new TLS files refused"));
    assert!(warned, "the broken pair is refused with a warning");
    let mut after = TlsClient::connect(setup.tls, &setup.ca.pem_path("ca"));
    assert_eq!(after.peer_serial(), second, "the last good certificate stays");
    assert_eq!(after.get("/healthz").0, 200);
    assert_eq!(old.get("/healthz").0, 200);
}

#[test]
fn tls_clients_that_stop_reading_or_stay_idle_are_dropped() {
    let _serial = serial(); // measures timeouts
    let setup = start("", "[http]\nwrite_timeout_ms = 1000\nidle_timeout_ms = 1500\n", &[]);
    let big: Vec<u8> = (0..16_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::create_dir_all(setup.fx.tiles().join("osm/1/0")).expect("dir");
    std::fs::write(setup.fx.tiles().join("osm/1/0/0.png"), &big).expect("big tile");
    let ca = setup.ca.pem_path("ca");

    // A reader that stops: the server gives up after the write timeout.
    let mut stalled = TlsClient::connect_small(setup.tls, &ca);
    write!(stalled.stream, "GET /tiles/osm/1/0/0.png HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("request");
    stalled.stream.flush().expect("flush");
    std::thread::sleep(Duration::from_secs(4));
    let (mut got, started) = (0usize, Instant::now());
    let mut buf = vec![0u8; 1 << 16];
    let ended = loop {
        match stalled.stream.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(_) => break true,
        }
        if started.elapsed() > Duration::from_secs(8) {
            break false;
        }
    };
    assert!(ended && got < big.len(), "a stalled TLS reader is dropped ({got} of {} bytes, ended {ended})", big.len());

    // An idle kept-alive connection is closed after the idle timeout.
    let mut idle = TlsClient::connect(setup.tls, &ca);
    assert_eq!(idle.get("/healthz").0, 200);
    std::thread::sleep(Duration::from_millis(2500));
    write!(idle.stream, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").ok();
    let _ = idle.stream.flush();
    let answer = idle.stream.read(&mut buf);
    assert!(matches!(answer, Ok(0) | Err(_)), "an idle TLS connection is closed, got {answer:?}");

    // A connection that never sends a request is closed too.
    let mut silent = TlsClient::connect(setup.tls, &ca);
    let started = Instant::now();
    let answer = silent.stream.read(&mut buf);
    assert!(matches!(answer, Ok(0) | Err(_)), "a silent TLS connection is closed, got {answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "within the idle timeout ({:?})", started.elapsed());

    // hyper keeps the driver's head limits: 431 for a head over max_head_bytes.
    let mut big_head = TlsClient::connect(setup.tls, &ca);
    let filler = "a".repeat(20_000);
    write!(big_head.stream, "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Filler: {filler}\r\n\r\n").expect("write");
    big_head.stream.flush().expect("flush");
    let status = RawConn::wrap(&mut big_head.stream).read_response(false).map(|r| r.status);
    assert!(matches!(status, Ok(431) | Err(_)), "a 20 KB head over TLS is refused, got {status:?}");

    // A reader that keeps reading gets it all, however long it takes.
    let mut reader = TlsClient::connect_small(setup.tls, &ca);
    let (status, body) = reader.get("/tiles/osm/1/0/0.png");
    assert_eq!(status, 200);
    assert!(body == big, "the whole 16 MB over TLS");
}

fn replace(from: &Path, to: &Path) {
    std::fs::rename(from, to).expect("rename into place");
}

/// One HTTPS connection kept open, with rustls, for HTTP/1.1 keep-alive requests.
struct TlsClient {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsClient {
    fn connect(addr: SocketAddr, ca: &Path) -> TlsClient {
        TlsClient::connect_with(addr, ca, TcpStream::connect(addr).expect("connect"))
    }

    /// A client whose receive buffer is small, so that a server writing to
    /// it soon has to wait.
    fn connect_small(addr: SocketAddr, ca: &Path) -> TlsClient {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(64 * 1024).expect("SO_RCVBUF");
        socket.connect(&addr.into()).expect("connect");
        TlsClient::connect_with(addr, ca, socket.into())
    }

    fn connect_with(_addr: SocketAddr, ca: &Path, tcp: TcpStream) -> TlsClient {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca).expect("CA file") {
            roots.add(cert.expect("CA cert")).expect("add CA");
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("name").to_owned();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        tcp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock).expect("TLS handshake");
        }
        TlsClient { stream }
    }

    /// The serial number of the certificate the server presented.
    fn peer_serial(&self) -> Vec<u8> {
        let der = self.stream.conn.peer_certificates().expect("server certificate")[0].to_vec();
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parse certificate");
        cert.raw_serial().to_vec()
    }

    fn get(&mut self, path: &str) -> (u16, Vec<u8>) {
        write!(self.stream, "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").expect("write");
        self.stream.flush().expect("flush");
        let mut conn = RawConn::wrap(&mut self.stream);
        let response = conn.read_response(false).expect("a whole response");
        assert!(conn.buffered().is_empty(), "nothing follows the response");
        (response.status, response.body)
    }
}

#[test]
fn check_refuses_bad_security_settings_with_the_line_and_warns_of_open_logs() {
    let fx = Fixture::new();
    let bad = [
        ("[[tokens]]\nname = \"grafana\"\nsha256 = \"abc\"\n", 3, "64 hexadecimal digits"),
        ("[[access]]\nprefix = \"/logs\"\nallow = [\"everyone\"]\n", 3, "not one of"),
        ("[[access]]\nprefix = \"logs/\"\nallow = [\"public\"]\n", 2, "absolute URL path"),
        ("[tls]\ncert = \"missing.pem\"\nkey = \"missing.key\"\n", 2, "missing.pem"),
    ];
    for (toml, line, reason) in bad {
        let config = fx.root().join("bad.toml");
        std::fs::write(&config, toml).expect("config");
        let (status, _, stderr) = run_tessera(&[
            "check".into(),
            "--config".into(),
            config.clone().into(),
            "--tiles".into(),
            fx.tiles().into(),
            "--logs".into(),
            fx.logs().into(),
        ]);
        assert!(!status.success(), "{toml} accepted");
        assert!(stderr.contains(&format!("bad.toml:{line}:")), "{toml}: no line {line} in {stderr}");
        assert!(stderr.contains(reason), "{toml}: no reason {reason:?} in {stderr}");
    }
    let (status, stdout, stderr) = run_tessera(&[
        "check".into(),
        "--listen".into(),
        "0.0.0.0:8080".into(),
        "--tiles".into(),
        fx.tiles().into(),
        "--logs".into(),
        fx.logs().into(),
        "--state".into(),
        fx.state().into(),
    ]);
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains("logs are readable without authentication"), "{stdout}");
}

#[test]
fn a_root_with_its_own_access_is_closed_on_top_of_the_path_rules() {
    let fx = Fixture::new();
    let (vault_logs, vault_tiles) = (fx.root().join("vault-logs"), fx.root().join("vault-tiles"));
    for (dir, file, text) in [
        (fx.logs().join("pump-7"), "a.log", "open\n"),
        (fx.logs().join("zeta-9"), "a.log", "open too\n"),
        (vault_logs.join("substation-1"), "a.log", "restricted\n"),
        (fx.tiles().join("osm/0/0"), "0.png", "\u{89}PNG open"),
        (fx.tiles().join("secret/0/0"), "0.png", "\u{89}PNG secret"),
        (fx.tiles().join("shadow/0/0"), "0.png", "\u{89}PNG shadow, open"),
        (vault_tiles.join("shadow/1/0"), "0.png", "\u{89}PNG shadow, vault"),
        (vault_tiles.join("cables/0/0"), "0.png", "\u{89}PNG cables"),
    ] {
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join(file), text).expect("file");
    }
    let toml = format!(
        "[[tiles]]\npath = {:?}\n[[tiles]]\npath = {:?}\naccess = [\"authenticated\"]\n\
         [[logs]]\npath = {:?}\n[[logs]]\npath = {:?}\naccess = [\"role:ops\"]\n\
         [[tokens]]\nname = \"reader\"\nsha256 = \"{}\"\nroles = [\"logs\"]\n\
         [[tokens]]\nname = \"ops\"\nsha256 = \"{}\"\nroles = [\"logs\", \"ops\"]\n\
         [[access]]\nprefix = \"/tiles/secret\"\nallow = [\"role:ops\"]\n",
        fx.tiles(),
        vault_tiles,
        fx.logs(),
        vault_logs,
        sha256_hex("reader-secret"),
        sha256_hex("ops-secret"),
    );
    let config = fx.root().join("tessera.toml");
    std::fs::write(&config, toml).expect("config");
    let mut command = Command::new(bin());
    command.args(["serve", "--listen", "127.0.0.1:0", "--config"]).arg(&config).arg("--state").arg(fx.state());
    let server = Server::spawn_command(command, &fx.root().join("server.stderr"));
    server.wait_ready();

    assert_eq!(server.get_with_token("/logs/pump-7/a.log", "reader-secret").status, 200);
    assert_eq!(
        server.get_with_token("/logs/substation-1/a.log", "reader-secret").status,
        403,
        "root closed to role logs"
    );
    assert_eq!(server.get("/logs/substation-1/a.log").status, 401);
    let ops = server.get_with_token("/logs/substation-1/a.log", "ops-secret");
    assert_eq!((ops.status, ops.text().as_str()), (200, "restricted\n"));
    let devices = |token: &str| -> Vec<String> {
        let listing = server.get_with_token("/logs", token).json();
        listing["logs"]
            .as_array()
            .expect("logs")
            .iter()
            .map(|l| l["device"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(devices("reader-secret"), ["pump-7", "zeta-9"]);
    assert_eq!(devices("ops-secret"), ["pump-7", "substation-1", "zeta-9"]);
    // The status page too: no log and no root for an anonymous caller.
    let page = server.get("/").text();
    assert!(!page.contains("pump-7") && !page.contains("substation-1") && !page.contains("vault-logs"), "{page}");
    assert!(page.contains("osm") && !page.contains("cables"), "public tilesets only: {page}");
    let page = server.get_with_token("/", "ops-secret").text();
    assert!(page.contains("pump-7") && page.contains("substation-1"), "{page}");

    // Tiles: the open root stays public (and replayable), the other needs any identity.
    for _ in 0..3 {
        assert_eq!(server.get("/tiles/osm/0/0/0.png").status, 200);
        assert_eq!(server.get("/tiles/cables/0/0/0.png").status, 401, "never replayed to an anonymous caller");
    }
    assert_eq!(server.get_with_token("/tiles/cables/0/0/0.png", "reader-secret").status, 200);
    assert_eq!(server.get("/tiles/cables.json").status, 401);
    let names = |response: Response| -> Vec<String> {
        let listing = response.json();
        listing["tilesets"]
            .as_array()
            .expect("tilesets")
            .iter()
            .map(|t| t["name"].as_str().unwrap_or("").to_string())
            .collect()
    };
    assert_eq!(names(server.get("/tiles")), ["osm", "shadow"]);
    assert_eq!(names(server.get_with_token("/tiles", "reader-secret")), ["cables", "osm", "shadow"]);

    // A path rule closes a tileset's TileJSON and archive with its tiles, however spelled.
    for target in [
        "/tiles/secret/0/0/0.png",
        "/tiles/secret.json",
        "/tiles/secret%2Ejson",
        "/tiles/s%65cret.json",
        "/tiles/secret.pmtiles",
        "/tiles/secret%2Epmtiles",
    ] {
        assert_eq!(server.get(target).status, 401, "{target}");
    }
    assert_eq!(server.get_with_token("/tiles/secret.json", "ops-secret").status, 200);
    // The first root holding a tileset serves all of it: the vault's tiles
    // of the same name are hidden, to anyone.
    assert_eq!(server.get("/tiles/shadow/0/0/0.png").status, 200);
    for token in [None, Some("ops-secret")] {
        let response = match token {
            Some(t) => server.get_with_token("/tiles/shadow/1/0/0.png", t),
            None => server.get("/tiles/shadow/1/0/0.png"),
        };
        assert!(!response.text().contains("vault"), "a shadowed root's tile came out: {}", response.status);
    }

    // Paging through /logs one by one, a caller learns no name it may not read.
    let mut target = "/logs?limit=1".to_string();
    let mut seen = Vec::new();
    for _ in 0..10 {
        let page = server.get_with_token(&target, "reader-secret").json();
        let text = page.to_string();
        if let Some(cursor) = page["next_cursor"].as_str() {
            use base64::Engine;
            let decoded = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).expect("cursor");
            seen.push(String::from_utf8_lossy(&decoded).into_owned());
        }
        assert!(!text.contains("substation"), "{text}");
        match page["next"].as_str() {
            Some(next) => target = next.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["pump-7/a.log"], "one cursor, naming only what the reader may read");
}

/// `[tls]` paths `%d/NAME` are systemd credentials: `check` reads them from
/// `$CREDENTIALS_DIRECTORY` (as ExecStartPre= does) or from the files
/// `--credential NAME:PATH` names (as the appliance's reload does, as root,
/// where ExecReload= has no readable credentials directory), the flag first.
#[test]
fn check_reads_credentials_from_the_credentials_directory_or_credential_flags() {
    let fx = Fixture::new();
    let pki = fx.root().join("pki");
    std::fs::create_dir(&pki).expect("pki dir");
    let ca = Ca::new(&pki, "ca");
    let (cert, key) = ca.server("server", 1);
    let (_, other_key) = ca.server("other", 2);
    // What LoadCredential= makes: a directory with the credentials' names.
    let credentials = fx.root().join("credentials");
    std::fs::create_dir(&credentials).expect("credentials dir");
    for (from, name) in [(&cert, "tls-cert"), (&key, "tls-key"), (&ca.pem_path("ca"), "tls-client-ca")] {
        std::fs::copy(from, credentials.join(name)).expect("copy credential");
    }
    let config = fx.root().join("tessera.toml");
    std::fs::write(&config, "[tls]\ncert = \"%d/tls-cert\"\nkey = \"%d/tls-key\"\nclient_ca = \"%d/tls-client-ca\"\n")
        .expect("config");
    let check = |directory: Option<&Path>, flags: &[(&str, &Path)]| {
        let mut command = Command::new(bin());
        command.arg("check").arg("--config").arg(&config);
        command.arg("--tiles").arg(fx.tiles()).arg("--logs").arg(fx.logs()).arg("--state").arg(fx.state());
        for (name, path) in flags {
            command.arg("--credential").arg(format!("{name}:{}", path.display()));
        }
        command.env_remove("CREDENTIALS_DIRECTORY");
        if let Some(directory) = directory {
            command.env("CREDENTIALS_DIRECTORY", directory);
        }
        let output = command.output().expect("run tessera check");
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };

    let (ok, text) = check(Some(&credentials), &[]);
    assert!(ok && text.contains("TLS with device certificates"), "{text}");

    let (ok, text) = check(None, &[]);
    assert!(!ok, "accepted without credentials: {text}");
    assert!(text.contains("tessera.toml:2:") && text.contains("--credential tls-cert:PATH"), "{text}");

    // A directory this process may not read (ExecReload= under systemd 252):
    // the flags name every credential, and win.
    let hidden = fx.root().join("hidden");
    let ca_pem = ca.pem_path("ca");
    let all = [("tls-cert", cert.as_path()), ("tls-key", key.as_path()), ("tls-client-ca", ca_pem.as_path())];
    let (ok, text) = check(Some(&hidden), &all);
    assert!(ok && text.contains("TLS with device certificates"), "{text}");

    // A flag replaces just its credential: a key of another certificate is refused.
    let (ok, text) = check(Some(&credentials), &[("tls-key", other_key.as_path())]);
    assert!(!ok && text.contains("TLS refused"), "a mismatched key accepted: {text}");

    let (ok, text) = check(Some(&credentials), &[("tls-key", Path::new(""))]);
    assert!(!ok && text.contains("is not NAME:PATH"), "{text}");
}
