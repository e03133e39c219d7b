//! The command line (clap): the subcommands and the flags they share.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use super::{ClientAuth, Delivery, Transport};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "tessera", version, about = "Telemetry tile server: tiles and telemetry logs over HTTP")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Make a new bearer token: prints the secret once, and the `[[tokens]]`
    /// entry (its SHA-256) for the configuration.
    Token(TokenArgs),
    /// Index the roots, watch them and serve them over HTTP (the default).
    Serve(ConfigArgs),
    /// Bring the SQLite index up to date with the disk, print what changed, and exit.
    Index(ConfigArgs),
    /// Validate a configuration and exit non-zero naming the line and the reason.
    Check(ConfigArgs),
    /// Per root: filesystem, local or shared, delivery path and why, watcher,
    /// limits, and a live sendfile probe.
    Doctor(ConfigArgs),
}

/// The flags shared by every subcommand; they override the configuration file.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArgs {
    /// TOML configuration file.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, for example 127.0.0.1:8080 or [::]:80.
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// A tiles root (repeatable); replaces the configuration file's tile roots.
    #[arg(long, value_name = "DIR")]
    pub tiles: Vec<PathBuf>,
    /// A logs root (repeatable); replaces the configuration file's log roots.
    #[arg(long, value_name = "DIR")]
    pub logs: Vec<PathBuf>,
    /// Directory that holds the SQLite index.
    #[arg(long, value_name = "DIR")]
    pub state: Option<PathBuf>,
    /// Delivery path for every root: auto, sendfile or buffered.
    #[arg(long, value_name = "MODE")]
    pub delivery: Option<Delivery>,
    /// HTTP transport: tessera's own driver (sendfile capable) or plain hyper.
    #[arg(long, value_name = "NAME")]
    pub transport: Option<Transport>,
    /// PEM certificate (with its chain): `--listen` then speaks TLS.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CAs that issue device (client) certificates.
    #[arg(long, value_name = "FILE")]
    pub tls_client_ca: Option<PathBuf>,
    /// Whether devices must present a certificate: optional or required.
    #[arg(long, value_name = "MODE")]
    pub tls_client_auth: Option<ClientAuth>,
    /// A plaintext listener beside the TLS one, for example 127.0.0.1:8080.
    #[arg(long, value_name = "ADDR")]
    pub plaintext_listen: Option<SocketAddr>,
    /// Read a `[tls]` path `%d/NAME` from PATH instead of
    /// `$CREDENTIALS_DIRECTORY/NAME` (repeatable; NAME:PATH as in
    /// `LoadCredential=`): a check of the files the next start will load.
    #[arg(long = "credential", value_name = "NAME:PATH", value_parser = parse_credential)]
    pub credentials: Vec<(String, PathBuf)>,
}

fn parse_credential(arg: &str) -> Result<(String, PathBuf), String> {
    match arg.split_once(':') {
        Some((name, path)) if !name.is_empty() && !name.contains('/') && !path.is_empty() => {
            Ok((name.to_string(), PathBuf::from(path)))
        }
        _ => Err(format!("`{arg}` is not NAME:PATH, like tls-key:/etc/tessera/tls/key.pem")),
    }
}

/// `tessera token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The token's name, as logs and the access log show it.
    pub name: String,
    /// A role the token holds (repeatable), for example metrics or logs.
    #[arg(long = "role", value_name = "ROLE")]
    pub roles: Vec<String>,
}
