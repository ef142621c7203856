//! A local CA and certificates it signs, for `sluice dev --tls` and for tests: never for production, where
//! certificates come from cert-manager or the organisation's CA (docs/security.md).

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

use crate::durable_file::write_file_durably;
use crate::error::TlsError;
use crate::tls::TlsFiles;

/// A CA's certificate and key in PEM.
#[derive(Clone, Debug)]
pub struct DevCertificates {
    pub ca_cert_pem: String,
    pub ca_key_pem: String,
}

fn generate_error(context: &str) -> impl Fn(rcgen::Error) -> TlsError + '_ {
    move |e| TlsError::Generate { context: context.to_string(), reason: e.to_string() }
}

impl DevCertificates {
    /// A new self-signed CA named `common_name`.
    pub fn new_ca(common_name: &str) -> Result<DevCertificates, TlsError> {
        let key = KeyPair::generate().map_err(generate_error("generating the CA key"))?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error("CA parameters"))?;
        params.distinguished_name.push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let cert = params.self_signed(&key).map_err(generate_error("self-signing the CA"))?;
        Ok(DevCertificates { ca_cert_pem: cert.pem(), ca_key_pem: key.serialize_pem() })
    }
}

/// A node certificate for `names` (DNS names or IP addresses; usable by servers and as a client
/// certificate, organisation `sluice:node`) signed by `ca`: (certificate PEM, key PEM).
pub fn issue_certificate(ca: &DevCertificates, names: &[String]) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(&ca.ca_key_pem).map_err(generate_error("reading the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.ca_cert_pem, ca_key).map_err(generate_error("reading the CA certificate"))?;
    let key = KeyPair::generate().map_err(generate_error("generating a key"))?;
    let mut params = CertificateParams::new(names.to_vec()).map_err(generate_error("certificate names"))?;
    params.distinguished_name.push(DnType::CommonName, names.first().map(String::as_str).unwrap_or("sluice"));
    // A node's certificate: the organisation the peer port and the admin API's operate role ask for.
    params.distinguished_name.push(DnType::OrganizationName, crate::tls::accept::NODE_ORGANISATION);
    params.extended_key_usages =
        vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).map_err(generate_error("signing the certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A client certificate named `common_name` (and organisation, e.g. `sluice:read` for the admin API's read
/// role) signed by `ca`: (certificate PEM, key PEM).
pub fn issue_certificate_for(
    ca: &DevCertificates,
    common_name: &str,
    organisation: Option<&str>,
) -> Result<(String, String), TlsError> {
    let ca_key = KeyPair::from_pem(&ca.ca_key_pem).map_err(generate_error("reading the CA key"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.ca_cert_pem, ca_key).map_err(generate_error("reading the CA certificate"))?;
    let key = KeyPair::generate().map_err(generate_error("generating a key"))?;
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(generate_error("certificate names"))?;
    params.distinguished_name.push(DnType::CommonName, common_name);
    if let Some(organisation) = organisation {
        params.distinguished_name.push(DnType::OrganizationName, organisation);
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).map_err(generate_error("signing the certificate"))?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// `dir`'s CA and node certificate, generated on first use and kept (so a browser or `curl --cacert` that
/// trusts the CA keeps trusting it across restarts). The node certificate names `localhost`, `*.localhost`
/// (serving's Route hosts), 127.0.0.1 and ::1. Each file is written whole ([`write_file_durably`]), the node
/// certificate last; files that are there but do not load (a run stopped as it wrote them, before session 62's
/// whole writes; a file edited by hand) are made again, with a new CA, rather than refused at every start.
pub fn ensure_dev_certificates(dir: &Path) -> Result<TlsFiles, TlsError> {
    let files = TlsFiles { cert: dir.join("node.pem"), key: dir.join("node.key"), ca: dir.join("ca.pem") };
    if files.cert.exists() && files.key.exists() && files.ca.exists() {
        match crate::tls::check_loads(&files) {
            Ok(_) => return Ok(files),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "the dev certificates do not load; making new ones")
            }
        }
    }
    let write = |path: &PathBuf, text: &str| {
        // Keys are readable by their owner only; certificates too, which costs nothing here.
        write_file_durably(path, text.as_bytes(), 0o600).map_err(|source| TlsError::Read {
            flag: "--tls",
            path: path.clone(),
            source,
        })
    };
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Read { flag: "--tls", path: dir.to_path_buf(), source })?;
    let ca = DevCertificates::new_ca("Sluice dev CA")?;
    let names = ["localhost", "*.localhost", "127.0.0.1", "::1"].map(String::from);
    let (cert, key) = issue_certificate(&ca, &names)?;
    write(&dir.join("ca.key"), &ca.ca_key_pem)?;
    write(&files.ca, &ca.ca_cert_pem)?;
    write(&files.key, &key)?;
    write(&files.cert, &cert)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{Tls, TransportEncryption};

    #[test]
    fn dev_certificates_are_made_once_and_kept() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ensure_dev_certificates(dir.path()).expect("made");
        let ca = std::fs::read_to_string(&files.ca).expect("ca");
        assert!(Tls::load(TransportEncryption::Strict, Some(files.clone())).expect("loads").is_some());
        let again = ensure_dev_certificates(dir.path()).expect("kept");
        assert_eq!(std::fs::read_to_string(&again.ca).expect("ca"), ca, "the same CA across restarts");
    }

    /// Regression: the files were written in place, so a run stopped as it wrote them (or a full disk) left a
    /// node certificate cut short beside the others, and every later start failed to load it until the
    /// directory was deleted by hand.
    #[test]
    fn regression_a_node_certificate_cut_short_is_made_again_not_refused_at_every_start() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = ensure_dev_certificates(dir.path()).expect("made");
        let first_ca = std::fs::read_to_string(&files.ca).expect("ca");
        std::fs::write(&files.cert, "").expect("cut short");
        let files = ensure_dev_certificates(dir.path()).expect("made again");
        assert!(Tls::load(TransportEncryption::Strict, Some(files.clone())).expect("loads").is_some());
        assert_ne!(std::fs::read_to_string(&files.ca).expect("ca"), first_ca, "a new CA signs the new certificate");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
}
