//! `[tls]`: TLS between clients and the proxy. The certificate and key are
//! read and checked when the config is validated, so a bad file stops the
//! proxy at start with the key at fault, never at a client's first
//! handshake.

use super::ConfigError;
use crate::net::ServerTls;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS for client connections.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The proxy's certificate chain (PEM), its own certificate first.
    pub cert: PathBuf,
    /// The private key of `cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// `allow` (default): clients choose, as with `sslmode=prefer`;
    /// `require`: a client that does not ask for TLS is refused.
    #[serde(default)]
    pub clients: ClientTls,
}

/// Whether clients must use TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientTls {
    /// A client may connect with or without TLS.
    #[default]
    Allow,
    /// A client must connect with TLS.
    Require,
}

impl ClientTls {
    /// The name used in the config file.
    pub fn name(self) -> &'static str {
        match self {
            ClientTls::Allow => "allow",
            ClientTls::Require => "require",
        }
    }
}

impl TlsConfig {
    /// Reads the certificate and key and builds the server side of TLS.
    pub fn load(&self) -> Result<ServerTls, ConfigError> {
        let certs = read_certs(&self.cert)?;
        let key = read_key(&self.key)?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("tls", e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                invalid(
                    "tls.key",
                    format!(
                        "{}: does not go with the certificate in {} ({e})",
                        self.key.display(),
                        self.cert.display()
                    ),
                )
            })?;
        // What PostgreSQL 17's clients ask for with direct TLS; others ask
        // for no protocol at all, which is fine too.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        Ok(ServerTls {
            config: Arc::new(config),
            required: self.clients == ClientTls::Require,
        })
    }
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message,
    }
}

fn read_file(key: &str, path: &Path, what: &str) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|e| invalid(key, format!("cannot read the {what} {}: {e}", path.display())))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let pem = read_file("tls.cert", path, "certificate file")?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            invalid(
                "tls.cert",
                format!("{}: not a PEM certificate file ({e})", path.display()),
            )
        })?;
    if certs.is_empty() {
        return Err(invalid(
            "tls.cert",
            format!(
                "{}: holds no certificate (expected PEM blocks \"BEGIN CERTIFICATE\")",
                path.display()
            ),
        ));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    let pem = read_file("tls.key", path, "key file")?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        invalid(
            "tls.key",
            format!(
                "{}: holds no private key in PEM (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\"): {e}",
                path.display()
            ),
        )
    })
}
