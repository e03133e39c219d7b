//! Logging: to the journal when stderr is connected to it, human-readable to
//! stderr otherwise.
//!
//! systemd sets `JOURNAL_STREAM=dev:inode` for the stream it connected to
//! stdout and stderr; only when stderr is still that stream do we log to the
//! journal natively (with structured fields). The level comes from
//! `TESSERA_LOG` or `RUST_LOG` (default `info`). Journal fields are the
//! events' field names in capitals, without prefix, so that
//! `journalctl -u tessera DEVICE=pump-7` finds a device's downloads.
//!
//! The access log (one event per request, target `tessera::access`, see
//! [`access`]) is off unless the filter enables it, as
//! the appliance's unit does: `TESSERA_LOG=info,tessera::access=info`.

use std::io::IsTerminal;
use std::os::fd::AsFd;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_env("TESSERA_LOG")
        .or_else(|_| EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| EnvFilter::new("info,tessera::access=off"));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(journal) => {
                tracing_subscriber::registry()
                    .with(filter)
                    .with(journal.with_syslog_identifier("tessera".into()).with_field_prefix(None))
                    .init();
                return;
            }
            Err(e) => eprintln!("tessera: journal unavailable ({e}); logging to stderr"),
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
}

fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(st) = nix::sys::stat::fstat(std::io::stderr().as_fd()) else { return false };
    dev.parse() == Ok(st.st_dev) && ino.parse() == Ok(st.st_ino)
}

/// One access-log event (target `tessera::access`, off by default). In the
/// journal its fields are ROUTE, METHOD, PATH, STATUS, BYTES, DELIVERY
/// (memory, sendfile, buffered, hyper, none), ROOT, CLIENT (the peer's
/// address), USER (`token:NAME` or `device:NAME` once authenticated; never a
/// secret), and DEVICE or TILESET taken from the URL, so
/// `journalctl -u tessera DEVICE=...` works.
pub struct Access<'a> {
    pub route: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub bytes: u64,
    pub delivery: &'a str,
    pub root: Option<&'a std::path::Path>,
    pub elapsed_us: u64,
    pub client: Option<std::net::IpAddr>,
    pub user: Option<&'a str>,
}

impl Access<'_> {
    pub fn log(&self) {
        if !tracing::enabled!(target: "tessera::access", tracing::Level::INFO) {
            return;
        }
        let Access { route, method, path, status, bytes, delivery, root, elapsed_us, client, user } = *self;
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
            client = client.map(|c| c.to_string()),
            user,
            device,
            tileset,
            elapsed_us,
            "{} {method} {path} {status} {bytes}",
            client.map(|c| c.to_string()).unwrap_or_else(|| "-".into())
        );
    }
}
