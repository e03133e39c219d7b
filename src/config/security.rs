//! The security settings: TLS (`[tls]`), bearer tokens (`[[tokens]]`) and
//! the access rules (`[[access]]`), as validated values. What they mean at
//! run time lives in `tls` (the handshake) and `access` (who may read what).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// `[tls]`: the main listener speaks TLS with this certificate and key.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// PEM: the server certificate, then its chain.
    pub cert: PathBuf,
    /// PEM: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM: the CAs that issue device certificates. Unset: no client
    /// certificate is asked for.
    pub client_ca: Option<PathBuf>,
    /// PEM CRLs of those CAs: a revoked device certificate is refused.
    pub crls: Vec<PathBuf>,
    pub client_auth: ClientAuth,
    /// A plaintext listener beside the TLS one (a local reverse proxy,
    /// loopback tools); the access rules hold there too.
    pub plaintext_listen: Option<SocketAddr>,
}

/// Whether a client must present a certificate (when `client_ca` is set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// A client may present one; one that is presented must verify.
    #[default]
    Optional,
    /// The handshake fails without a valid client certificate.
    Required,
}

/// A bearer token: only the SHA-256 of the secret is configured.
#[derive(Clone)]
pub struct TokenSpec {
    pub name: String,
    pub sha256: [u8; 32],
    pub roles: Vec<String>,
}

impl fmt::Debug for TokenSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The hash is not the secret, but there is no reason to print it.
        f.debug_struct("TokenSpec").field("name", &self.name).field("roles", &self.roles).finish_non_exhaustive()
    }
}

/// Who a rule lets in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    /// Anyone, without credentials.
    Public,
    /// Any verified device certificate or valid token.
    Authenticated,
    /// Any verified device certificate.
    Device,
    /// A device, under `/logs/{one of its names}` only.
    OwnDevice,
    /// A token that holds this role.
    Role(String),
}

impl Grant {
    pub fn parse(s: &str) -> Result<Grant, String> {
        Ok(match s {
            "public" => Grant::Public,
            "authenticated" => Grant::Authenticated,
            "device" => Grant::Device,
            "own-device" => Grant::OwnDevice,
            _ => match s.strip_prefix("role:") {
                Some(role) if valid_name(role) => Grant::Role(role.to_string()),
                _ => return Err(format!("`{s}` is not one of public, authenticated, device, own-device, role:NAME")),
            },
        })
    }
}

impl fmt::Display for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Grant::Public => f.write_str("public"),
            Grant::Authenticated => f.write_str("authenticated"),
            Grant::Device => f.write_str("device"),
            Grant::OwnDevice => f.write_str("own-device"),
            Grant::Role(role) => write!(f, "role:{role}"),
        }
    }
}

/// `[[access]]`: the URL paths at and under `prefix` (whole segments) are
/// readable by whoever one of `allow` lets in. The longest prefix decides.
#[derive(Debug, Clone)]
pub struct AccessRule {
    pub prefix: String,
    pub allow: Vec<Grant>,
}

/// A token or role name: letters, digits, `-`, `_`, `.`.
pub fn valid_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// A SHA-256 written as 64 hexadecimal digits.
pub fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A URL path prefix for a rule: absolute, no query, no trailing slash
/// (except `/` itself), no `.` or `..` segment.
pub fn valid_prefix(s: &str) -> bool {
    s.starts_with('/')
        && (s == "/" || !s.ends_with('/'))
        && !s.contains(['?', '#', ' '])
        && s.split('/').skip(1).all(|seg| seg != "." && seg != "..")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_parse_and_print_back() {
        for s in ["public", "authenticated", "device", "own-device", "role:metrics"] {
            assert_eq!(Grant::parse(s).unwrap().to_string(), s);
        }
        assert!(Grant::parse("role:").is_err());
        assert!(Grant::parse("role:a b").is_err());
        assert!(Grant::parse("everyone").is_err());
    }

    #[test]
    fn hashes_are_64_hex_digits() {
        let hex = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        assert_eq!(parse_sha256(hex).unwrap()[0], 0x9f);
        assert!(parse_sha256(&hex[1..]).is_none());
        assert!(parse_sha256(&hex.replace('9', "g")).is_none());
    }

    #[test]
    fn prefixes_are_plain_paths() {
        assert!(valid_prefix("/"));
        assert!(valid_prefix("/logs/pump-7"));
        assert!(!valid_prefix("logs"));
        assert!(!valid_prefix("/logs/"));
        assert!(!valid_prefix("/logs/../metrics"));
    }
}
