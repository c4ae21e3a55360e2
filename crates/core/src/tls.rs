//! Which servers to trust. By default the public web PKI (the Mozilla roots
//! bundled as webpki-roots); a server with its own certificate authority
//! is trusted by adding that CA ([`crate::Client::with_ca_cert`]) — in
//! addition, never instead, and never by turning verification off.

use crate::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;

/// Extra trusted roots, ready for both HTTP (reqwest) and WebSocket
/// (tokio-tungstenite) connections.
#[derive(Clone, Debug)]
pub struct Trust {
    pem: Vec<u8>,
    pub(crate) config: Arc<rustls::ClientConfig>,
}

impl Trust {
    /// Trusts the PEM certificates in `pem` besides the public roots.
    pub fn with_extra_roots(pem: &[u8]) -> Result<Trust> {
        let extra: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| Error::Invalid(format!("not a PEM certificate: {e}")))?;
        if extra.is_empty() {
            return Err(Error::Invalid("no certificate in the CA file".into()));
        }
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra {
            roots.add(cert).map_err(|e| Error::Invalid(format!("unusable CA certificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Invalid(format!("TLS setup: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Trust { pem: pem.to_vec(), config: Arc::new(config) })
    }

    /// An HTTP client builder that trusts these roots too.
    pub(crate) fn http(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        let mut builder = builder;
        for cert in reqwest::Certificate::from_pem_bundle(&self.pem).map_err(|e| Error::Invalid(e.to_string()))? {
            builder = builder.add_root_certificate(cert);
        }
        Ok(builder)
    }
}
