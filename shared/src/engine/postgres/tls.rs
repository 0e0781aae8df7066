//! rustls client configurations for the three levels of checking libpq's ssl modes ask for.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};

#[derive(Debug, Clone, thiserror::Error)]
pub enum CaBundleError {
    #[error("ca_bundle: cannot read file {path:?}: {reason}")]
    Read { path: String, reason: String },
    #[error("ca_bundle: no PEM certificate found (give PEM text or the path of a PEM file)")]
    Empty,
    #[error("verify-ca and verify-full trust only the roots they are given: set ca_bundle to the CA that signed the server's certificate (PEM text or a file path), or to \"system\" to trust the public web roots (libpq's sslrootcert=system)")]
    NoRoots,
    #[error("ca_bundle: certificate {index} is not valid: {reason}")]
    Invalid { index: usize, reason: String },
    #[error("TLS set-up failed: {0}")]
    Tls(String),
}

/// The configurations one endpoint needs, built once: unverified for allow/prefer/require,
/// chain-only for verify-ca, and full for verify-full.
#[derive(Debug)]
pub(crate) struct TlsConfigs {
    pub unverified: Arc<ClientConfig>,
    verified: Result<(Arc<ClientConfig>, Arc<ClientConfig>), CaBundleError>,
}

impl TlsConfigs {
    pub fn new(ca_bundle: Option<&str>) -> Result<Self, CaBundleError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let unverified = config(&provider, Arc::new(NoVerification(provider.clone())))?;
        // A bad bundle fails the verifying modes only, with the bundle's own error.
        let verified = roots(ca_bundle).and_then(|roots| {
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| CaBundleError::Tls(e.to_string()))?;
            let chain_only = config(&provider, Arc::new(ChainOnly(webpki.clone())))?;
            let full = config(&provider, webpki)?;
            Ok((chain_only, full))
        });
        Ok(TlsConfigs { unverified, verified })
    }

    pub fn chain_only(&self) -> Result<Arc<ClientConfig>, CaBundleError> {
        self.verified.as_ref().map(|(c, _)| c.clone()).map_err(Clone::clone)
    }

    pub fn full(&self) -> Result<Arc<ClientConfig>, CaBundleError> {
        self.verified.as_ref().map(|(_, f)| f.clone()).map_err(Clone::clone)
    }
}

fn config(provider: &Arc<CryptoProvider>, verifier: Arc<dyn ServerCertVerifier>) -> Result<Arc<ClientConfig>, CaBundleError> {
    let config = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| CaBundleError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The `ca_bundle` that stands for the public web roots (Mozilla's list), as libpq's
/// `sslrootcert=system` does for the system's: trusted only when named.
pub const SYSTEM_ROOTS: &str = "system";

/// The roots a verifying mode trusts: exactly the certificates of `ca_bundle` (PEM text, or a
/// path to a PEM file), or the public web roots when it is [`SYSTEM_ROOTS`]; none otherwise.
/// Adding the public roots to a private bundle would let any publicly trusted certificate pass
/// `verify-ca`, and any public CA vouch for the server's name under `verify-full`.
fn roots(ca_bundle: Option<&str>) -> Result<RootCertStore, CaBundleError> {
    let bundle = ca_bundle.ok_or(CaBundleError::NoRoots)?;
    if bundle.trim() == SYSTEM_ROOTS {
        return Ok(RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() });
    }
    let mut roots = RootCertStore::empty();
    let pem: Vec<u8> = if bundle.trim_start().starts_with("-----BEGIN") {
        bundle.as_bytes().to_vec()
    } else {
        std::fs::read(bundle).map_err(|e| CaBundleError::Read { path: bundle.to_owned(), reason: e.to_string() })?
    };
    let mut added = 0;
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| CaBundleError::Invalid { index, reason: e.to_string() })?;
        roots.add(cert).map_err(|e| CaBundleError::Invalid { index, reason: e.to_string() })?;
        added += 1;
    }
    if added == 0 {
        return Err(CaBundleError::Empty);
    }
    Ok(roots)
}

/// verify-ca: the chain must lead to a trusted root; the name in the certificate is not checked.
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
    ) -> Result<ServerCertVerified, Error> {
        // webpki checks the chain before the name, so a name error means the chain was good.
        match self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(Error::InvalidCertificate(CertificateError::NotValidForName))
            | Err(Error::InvalidCertificate(CertificateError::NotValidForNameContext { .. })) => {
                Ok(ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// allow, prefer and require: encryption without identity, as libpq does in those modes.
/// Handshake signatures are still checked, so the peer holds the certificate's key.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_bundles_are_named() {
        assert!(matches!(roots(Some("/nonexistent/ca.pem")), Err(CaBundleError::Read { .. })));
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(roots(Some(key_only)), Err(CaBundleError::Empty)));
        assert!(roots(Some("-----BEGIN CERTIFICATE-----\nnot closed")).is_err());
        let garbage = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(matches!(roots(Some(garbage)), Err(CaBundleError::Invalid { index: 0, .. })));
        assert!(matches!(roots(None), Err(CaBundleError::NoRoots)), "no bundle, no roots");
        assert!(roots(Some("system")).unwrap().len() > 100, "the public roots only when named");
        let rds = roots(Some(crate::engine::postgres::RDS_CA_BUNDLE)).unwrap();
        let in_bundle = crate::engine::postgres::RDS_CA_BUNDLE.matches("-----BEGIN CERTIFICATE-----").count();
        assert_eq!(rds.len(), in_bundle, "a bundle is trusted alone, without the public roots");
    }
}
