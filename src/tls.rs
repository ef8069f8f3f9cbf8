//! TLS settings of the pipeline's connections: PostgreSQL's `sslmode` (as libpq spells it:
//! disable, prefer, require, verify-ca, verify-full) with a CA file, and the CA file of an
//! AMQPS broker. rustls on the ring provider only (the one the MongoDB driver and lapin use).
//!
//! Certificates are read once, when the settings are resolved, so a missing, unreadable or empty
//! file stops the start with an error naming its setting and path. What each mode checks:
//!
//! | mode | encrypted | server certificate checked |
//! |---|---|---|
//! | `disable` | no | — |
//! | `prefer` (default) | when the server offers TLS; a plaintext session is logged | no |
//! | `require` | always | no, or against the CA when one is given (as libpq) |
//! | `verify-ca` | always | signed by the CA |
//! | `verify-full` | always | signed by the CA and issued for the host name |

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::ConfigError;

/// The value of `sslrootcert` that selects the public web roots instead of a file (as libpq).
pub(crate) const SYSTEM_ROOTS: &str = "system";

/// How a PostgreSQL session is secured (libpq's `sslmode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    /// libpq's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// What tokio-postgres negotiates; the certificate checks are the rustls verifier's.
    pub fn wire(self) -> tokio_postgres::config::SslMode {
        match self {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        }
    }
}

impl FromStr for SslMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?}; expected disable, prefer, require, verify-ca or \
                     verify-full"
                ));
            }
        })
    }
}

/// The resolved PostgreSQL TLS settings: the mode, where the CA came from, and the rustls
/// connector built from them.
#[derive(Clone)]
pub struct PgTls {
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file, or [`SYSTEM_ROOTS`].
    pub root_cert: Option<String>,
    connector: MakeRustlsConnect,
}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("mode", &self.mode)
            .field("root_cert", &self.root_cert)
            .finish()
    }
}

impl Default for PgTls {
    /// libpq's default, `prefer`, with no CA.
    fn default() -> Self {
        PgTls::new(SslMode::Prefer, None, "POSTGRES_SSLROOTCERT")
            .expect("prefer without a CA reads no file")
    }
}

impl PgTls {
    /// Build the settings; `root_setting` names where `root_cert` came from, for errors.
    pub fn new(
        mode: SslMode,
        root_cert: Option<String>,
        root_setting: &str,
    ) -> Result<PgTls, ConfigError> {
        let err = |message: String| ConfigError::Env {
            name: root_setting.to_string(),
            message,
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match root_cert.as_deref() {
            None => None,
            Some(SYSTEM_ROOTS) => Some(RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            }),
            Some(path) => Some(root_store(
                root_setting,
                &read_ca_file(root_setting, Path::new(path))?.certs,
            )?),
        };
        let verifier: Arc<dyn ServerCertVerifier> = match (mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(err(format!(
                    "sslmode={} needs the server's CA: set POSTGRES_SSLROOTCERT (or sslrootcert \
                     in POSTGRES_URL) to its PEM file, or to \"{SYSTEM_ROOTS}\" for the public web \
                     roots",
                    mode.as_str()
                )));
            }
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
                Arc::new(EncryptOnly(provider.clone()))
            }
            (SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, Some(roots)) => {
                let webpki =
                    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                        .build()
                        .map_err(|e| err(format!("cannot use the CA certificates: {e}")))?;
                if mode == SslMode::VerifyFull {
                    webpki
                } else {
                    Arc::new(AnyName(webpki))
                }
            }
        };
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| err(format!("TLS setup: {e}")))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(PgTls {
            mode,
            root_cert,
            connector: MakeRustlsConnect::new(config),
        })
    }

    /// The rustls connector for tokio-postgres.
    pub(crate) fn connector(&self) -> MakeRustlsConnect {
        self.connector.clone()
    }

    /// What the server's certificate is checked against, for error messages.
    pub fn describe(&self) -> String {
        let against = match (self.mode, self.root_cert.as_deref()) {
            (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
                return format!("sslmode={}", self.mode.as_str());
            }
            (_, Some(SYSTEM_ROOTS)) => "the public web roots".to_string(),
            (_, Some(path)) => format!("the CA in {path}"),
            (_, None) => "no CA".to_string(),
        };
        format!("sslmode={}, checked against {against}", self.mode.as_str())
    }
}

/// A PEM file of CA certificates, read and checked.
#[derive(Clone)]
pub struct CaFile {
    pub path: PathBuf,
    /// The file's text (lapin takes the PEM itself).
    pub pem: String,
    certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CaFile({})", self.path.display())
    }
}

/// Read a CA file named by setting `setting`: at least one PEM certificate.
pub(crate) fn read_ca_file(setting: &str, path: &Path) -> Result<CaFile, ConfigError> {
    let err = |message: String| ConfigError::Env {
        name: setting.to_string(),
        message,
    };
    let pem = std::fs::read_to_string(path)
        .map_err(|e| err(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(format!("{} is not a PEM file: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(err(format!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(CaFile {
        path: path.to_path_buf(),
        pem,
        certs,
    })
}

fn root_store(
    setting: &str,
    certs: &[CertificateDer<'static>],
) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    let (_, _) = roots.add_parsable_certificates(certs.iter().cloned());
    if roots.is_empty() {
        return Err(ConfigError::Env {
            name: setting.to_string(),
            message: "none of the file's certificates can serve as a trust anchor".into(),
        });
    }
    Ok(roots)
}

/// `sslmode` prefer or require without a CA: the session is encrypted and the server's
/// signature over the handshake is checked, but not who issued its certificate (libpq does the
/// same; verify-ca or verify-full are what stop a man in the middle).
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
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
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca` (and `require` with a CA): the chain must lead to the CA; the host name is not
/// compared (the chain is verified before the name, so only a name mismatch is forgiven).
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_libpq_spells_them() {
        for m in ["disable", "prefer", "require", "verify-ca", "verify-full"] {
            assert_eq!(m.parse::<SslMode>().unwrap().as_str(), m);
        }
        let err = "verify_full".parse::<SslMode>().unwrap_err();
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn verification_without_a_ca_is_refused_naming_the_setting() {
        let err = PgTls::new(SslMode::VerifyFull, None, "POSTGRES_SSLROOTCERT")
            .unwrap_err()
            .to_string();
        assert!(err.contains("POSTGRES_SSLROOTCERT"), "{err}");
        assert!(err.contains("verify-full"), "{err}");
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_named() {
        let err = PgTls::new(
            SslMode::VerifyCa,
            Some("/nonexistent/ca.pem".into()),
            "POSTGRES_URL",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("POSTGRES_URL") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let empty = tempfile::NamedTempFile::new().unwrap();
        let err = read_ca_file("RABBITMQ_CA_FILE", empty.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("RABBITMQ_CA_FILE") && err.contains("no PEM certificate"),
            "{err}"
        );
    }

    #[test]
    fn system_roots_need_no_file() {
        let t = PgTls::new(SslMode::VerifyFull, Some(SYSTEM_ROOTS.into()), "x").unwrap();
        assert!(
            t.describe().contains("public web roots"),
            "{}",
            t.describe()
        );
    }
}
