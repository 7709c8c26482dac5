//! TLS on both sides of the proxy: clients to the proxy (`[tls]`), and the
//! proxy to its databases (`sslmode`, `sslrootcert`), with certificates
//! made at test time by a throwaway CA.

mod clients;
mod databases;

use anyhow::Result;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;
use tempfile::TempDir;

/// A test CA and one server certificate it signed, for `localhost` and
/// `127.0.0.1`, written as PEM files in a temporary directory.
pub struct Pki {
    dir: TempDir,
    /// The CA's certificate (PEM).
    pub ca_pem: String,
    /// The server's certificate (PEM).
    pub cert_pem: String,
    /// The server's private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl Pki {
    /// A new CA named `name` and a server certificate signed by it.
    pub fn new(name: &str) -> Result<Pki> {
        let ca_key = KeyPair::generate()?;
        let mut ca = CertificateParams::new(Vec::<String>::new())?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, name);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_cert = ca.self_signed(&ca_key)?;
        let key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
        server.distinguished_name.push(DnType::CommonName, "localhost");
        let cert = server.signed_by(&key, &ca_cert, &ca_key)?;
        let pki = Pki {
            dir: tempfile::Builder::new().prefix("switchyard-tls-").tempdir()?,
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(pki.ca_path(), &pki.ca_pem)?;
        std::fs::write(pki.cert_path(), &pki.cert_pem)?;
        std::fs::write(pki.key_path(), &pki.key_pem)?;
        Ok(pki)
    }

    /// The CA certificate's file.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate's file.
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server key's file.
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// A file in the same directory, for a test's own PEM.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A rustls client configuration that trusts this CA only (verify-full,
    /// as tokio-postgres-rustls checks the host name).
    pub fn client_config(&self) -> Result<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth())
    }

    /// A tokio-postgres connector that verifies the server against this CA.
    pub fn connector(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new(self.client_config()?))
    }
}
