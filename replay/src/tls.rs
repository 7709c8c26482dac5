//! TLS towards the databases, with libpq's `sslmode` and `sslrootcert`: the
//! one place that turns them into a rustls client configuration. The
//! proxy's backend connections use it through [`DbTls::client_config`], and
//! every control connection (catalog, catch-up, cutover, verify, clone)
//! through [`Dsn::connect`].

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::Deserialize;
use std::sync::Arc;
use thiserror::Error;

/// libpq's `sslmode`, for a connection to a database.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never TLS.
    Disable,
    /// TLS if the database accepts it, else clear text.
    #[default]
    Prefer,
    /// TLS or nothing; the certificate is checked only when `sslrootcert`
    /// is set (then as with `verify-ca`, as libpq does).
    Require,
    /// TLS, with a certificate signed by `sslrootcert`.
    VerifyCa,
    /// TLS, with a certificate signed by `sslrootcert` for the host name.
    VerifyFull,
}

impl SslMode {
    /// The name libpq and the config file use.
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether a database that declines TLS is refused.
    pub fn requires_tls(self) -> bool {
        matches!(self, SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// `sslrootcert = "system"`: the system's trusted roots, as libpq 16 and
/// later spell it.
pub const SYSTEM_ROOTS: &str = "system";

/// Why TLS settings cannot be used. The config's fault.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The root certificate file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not PEM certificates.
    #[error("{path}: not a PEM certificate file ({message})")]
    Pem {
        /// The file.
        path: String,
        /// What the parser said.
        message: String,
    },
    /// The file (or the system) holds no usable certificate.
    #[error("{path}: holds no CA certificate (expected PEM blocks \"BEGIN CERTIFICATE\")")]
    NoCerts {
        /// The file, or "system".
        path: String,
    },
    /// A verifying mode without roots to verify against.
    #[error(
        "sslmode = \"{mode}\" checks the database's certificate and needs sslrootcert: the PEM file of the CA that \
         signed it, or \"system\" for the system's trusted roots"
    )]
    NeedsRoots {
        /// The mode.
        mode: &'static str,
    },
    /// rustls refused the configuration.
    #[error("{0}")]
    Rustls(String),
}

/// TLS settings for one database, checked and loaded once.
#[derive(Clone)]
pub struct DbTls {
    mode: SslMode,
    rootcert: Option<String>,
    config: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for DbTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbTls")
            .field("mode", &self.mode)
            .field("rootcert", &self.rootcert)
            .finish()
    }
}

impl DbTls {
    /// Never TLS.
    pub fn disabled() -> DbTls {
        DbTls {
            mode: SslMode::Disable,
            rootcert: None,
            config: None,
        }
    }

    /// Loads `rootcert` (a PEM file, or [`SYSTEM_ROOTS`]) and builds the
    /// client configuration `mode` asks for.
    pub fn new(mode: SslMode, rootcert: Option<&str>) -> Result<DbTls, TlsError> {
        if mode == SslMode::Disable {
            return Ok(DbTls::disabled());
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = rootcert.map(load_roots).transpose()?.map(Arc::new);
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => return Err(TlsError::NeedsRoots { mode: mode.name() }),
            (SslMode::VerifyFull, Some(roots)) => webpki(roots, &provider)?,
            // libpq checks the chain whenever it has a root certificate.
            (_, Some(roots)) => Arc::new(ChainOnly(webpki(roots, &provider)?)),
            (_, None) => Arc::new(Unchecked(provider.clone())),
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(DbTls {
            mode,
            rootcert: rootcert.map(str::to_owned),
            config: Some(Arc::new(config)),
        })
    }

    /// The mode.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The root certificates' file (or "system"), as configured.
    pub fn rootcert(&self) -> Option<&str> {
        self.rootcert.as_deref()
    }

    /// The rustls configuration; `None` when TLS is disabled.
    pub fn client_config(&self) -> Option<&Arc<ClientConfig>> {
        self.config.as_ref()
    }

    /// What a failed handshake is told about the settings it used.
    pub fn describe(&self) -> String {
        match &self.rootcert {
            Some(r) => format!("sslmode = {}, sslrootcert = {r}", self.mode.name()),
            None => format!("sslmode = {}", self.mode.name()),
        }
    }

    /// libpq's environment for the same settings, for pg_dump and
    /// pg_restore.
    pub fn libpq_env(&self) -> Vec<(&'static str, String)> {
        let mut env = vec![("PGSSLMODE", self.mode.name().to_owned())];
        if let Some(r) = &self.rootcert {
            env.push(("PGSSLROOTCERT", r.clone()));
        }
        env
    }
}

/// The name a certificate is checked against for `host`: a DNS name or an
/// IP address.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned())
        .map_err(|e| TlsError::Rustls(format!("{host:?} cannot be checked against a certificate: {e}")))
}

fn load_roots(path: &str) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    if path == SYSTEM_ROOTS {
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            return Err(TlsError::NoCerts { path: path.to_owned() });
        }
        return Ok(roots);
    }
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCerts { path: path.to_owned() });
    }
    Ok(roots)
}

fn webpki(roots: Arc<RootCertStore>, provider: &Arc<CryptoProvider>) -> Result<Arc<WebPkiServerVerifier>, TlsError> {
    WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Rustls(e.to_string()))
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not
/// checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `prefer` and `require` without a root certificate: encrypted, but the
/// certificate is not checked (libpq's behaviour); the handshake's
/// signatures still are.
#[derive(Debug)]
struct Unchecked(Arc<CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A control connection: where and as whom (tokio-postgres's config), and
/// with which TLS.
#[derive(Debug, Clone)]
pub struct Dsn {
    /// Host, port, user, database, password, application name.
    pub pg: tokio_postgres::Config,
    /// TLS towards that database.
    pub tls: DbTls,
}

impl Dsn {
    /// `pg` with `tls`; tokio-postgres is told whether TLS is optional.
    pub fn new(mut pg: tokio_postgres::Config, tls: DbTls) -> Dsn {
        pg.ssl_mode(match tls.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        Dsn { pg, tls }
    }

    /// `pg` in clear text.
    pub fn plain(pg: tokio_postgres::Config) -> Dsn {
        Dsn::new(pg, DbTls::disabled())
    }

    /// The user it logs in as.
    pub fn user(&self) -> Option<&str> {
        self.pg.get_user()
    }

    /// Connects and drives the connection on its own task; its end is
    /// logged at debug level under `label` (e.g. "replay").
    pub async fn connect(&self, label: &'static str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
        match self.tls.client_config() {
            None => {
                let (client, conn) = self.pg.connect(tokio_postgres::NoTls).await?;
                spawn(conn, label);
                Ok(client)
            }
            Some(config) => {
                let tls = tokio_postgres_rustls::MakeRustlsConnect::new(ClientConfig::clone(config));
                let (client, conn) = self.pg.connect(tls).await?;
                spawn(conn, label);
                Ok(client)
            }
        }
    }
}

impl From<tokio_postgres::Config> for Dsn {
    fn from(pg: tokio_postgres::Config) -> Dsn {
        Dsn::plain(pg)
    }
}

impl From<&tokio_postgres::Config> for Dsn {
    fn from(pg: &tokio_postgres::Config) -> Dsn {
        Dsn::plain(pg.clone())
    }
}

impl From<&Dsn> for Dsn {
    fn from(dsn: &Dsn) -> Dsn {
        dsn.clone()
    }
}

fn spawn<F>(conn: F, label: &'static str)
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "{label} connection ended");
        }
    });
}
