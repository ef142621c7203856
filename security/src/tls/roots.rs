//! What an HTTPS client of Sluice (deliveries to subscribers, replies and dead-letter sinks) trusts: the
//! system's CA certificates, plus the CAs given for a destination (Knative's `CACerts`) and the cluster's.

use std::sync::{Arc, OnceLock};

use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use crate::error::TlsError;

/// The system's CA certificates, read once (an unreadable store leaves only the given CAs).
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "a system CA certificate could not be read");
        }
        found.certs
    })
}

/// A client config trusting the system's CAs and every certificate in `extra_pems` (each a PEM bundle;
/// `what` names them in errors, e.g. the destination URL).
pub fn https_client_config(extra_pems: &[&str], what: &str) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    // Some system bundles hold certificates rustls refuses (expired, odd encodings): skip those.
    let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
    for pem in extra_pems {
        let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TlsError::BadCaCerts { what: what.to_string(), reason: e.to_string() })?;
        if certs.is_empty() {
            return Err(TlsError::BadCaCerts { what: what.to_string(), reason: "no PEM certificate in it".into() });
        }
        for cert in certs {
            roots.add(cert).map_err(|e| TlsError::BadCaCerts { what: what.to_string(), reason: e.to_string() })?;
        }
    }
    let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::https_client_config;
    use crate::DevCertificates;

    #[test]
    fn given_cas_load_and_bad_ones_are_named() {
        let ca = DevCertificates::new_ca("a destination's CA").expect("CA");
        assert!(https_client_config(&[&ca.ca_cert_pem], "https://sink/").is_ok());
        assert!(https_client_config(&[], "https://sink/").is_ok(), "system roots only");
        let error = https_client_config(&["not a certificate"], "https://sink/").expect_err("no PEM").to_string();
        assert!(error.contains("https://sink/") && error.contains("no PEM certificate"), "{error}");
    }
}
