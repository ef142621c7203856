//! Transport encryption: the mode (Knative's `transport-encryption`: disabled, permissive, strict), the three
//! PEM files a node is given, and the rustls configs built from them.
//!
//! In → the files' bytes. Out → [`Tls`]: a server config that asks for (and checks) a client certificate
//! without requiring one, a mutual one that requires it, and a client config that presents this node's
//! certificate and trusts the CA. [`Tls::watch`] re-reads the files and swaps the configs when they change;
//! a change that does not load (a half-written file, a key of another certificate) keeps the old configs
//! and is logged and counted, so a bad rotation never takes a port down.

pub mod accept;
pub mod dial;
pub mod roots;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::TlsError;

/// Knative's `transport-encryption` feature flag, applied to every port of a node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TransportEncryption {
    /// Plaintext only; no certificate needed.
    #[default]
    Disabled,
    /// TLS and plaintext on the same ports (told apart by the first byte); addresses advertise `https`.
    /// Between nodes, mutual TLS only.
    Permissive,
    /// TLS only: plaintext HTTP gets 426 (except the probes `/healthz` and `/readyz`), plaintext gRPC is
    /// closed. Between nodes, mutual TLS only.
    Strict,
}

impl TransportEncryption {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportEncryption::Disabled => "disabled",
            TransportEncryption::Permissive => "permissive",
            TransportEncryption::Strict => "strict",
        }
    }

    /// Whether a client may still speak plaintext to this node's HTTP ingress and admin API.
    pub fn accepts_plaintext(self) -> bool {
        self != TransportEncryption::Strict
    }

    pub fn serves_tls(self) -> bool {
        self != TransportEncryption::Disabled
    }
}

impl fmt::Display for TransportEncryption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TransportEncryption {
    type Err = TlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disabled" => Ok(TransportEncryption::Disabled),
            "permissive" => Ok(TransportEncryption::Permissive),
            "strict" => Ok(TransportEncryption::Strict),
            other => Err(TlsError::UnknownMode(other.to_string())),
        }
    }
}

/// A node's certificate chain, its private key and the cluster's CA bundle (which signs every node's
/// certificate, and which clients and subscribers are told to trust).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The three files' bytes as last read: what a reload compares.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PemBytes {
    cert: Vec<u8>,
    key: Vec<u8>,
    ca: Vec<u8>,
}

impl TlsFiles {
    pub(crate) fn read(&self) -> Result<PemBytes, TlsError> {
        let read = |flag: &'static str, path: &PathBuf| {
            std::fs::read(path).map_err(|source| TlsError::Read { flag, path: path.clone(), source })
        };
        Ok(PemBytes {
            cert: read("--tls-cert", &self.cert)?,
            key: read("--tls-key", &self.key)?,
            ca: read("--tls-ca", &self.ca)?,
        })
    }
}

/// The configs built from one version of the files.
struct Configs {
    pem: PemBytes,
    server: Arc<ServerConfig>,
    mutual: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    ca_pem: String,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(
    flag: &'static str,
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(bytes).collect::<Result<Vec<_>, _>>().map_err(|e| TlsError::BadPem {
        flag,
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate { flag, path: path.to_path_buf() });
    }
    Ok(certs)
}

/// Whether `files` load as a node's TLS configuration would (read and built, then dropped).
pub(crate) fn check_loads(files: &TlsFiles) -> Result<(), TlsError> {
    build(files, files.read()?).map(drop)
}

/// Builds every config from the files' bytes: pure, so a reload can try it and keep the old configs if it
/// fails.
fn build(files: &TlsFiles, pem: PemBytes) -> Result<Configs, TlsError> {
    let chain = certificates("--tls-cert", &files.cert, &pem.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&pem.key).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::NoKey { path: files.key.clone() },
        other => TlsError::BadPem { flag: "--tls-key", path: files.key.clone(), reason: other.to_string() },
    })?;
    let ca = certificates("--tls-ca", &files.ca, &pem.ca)?;
    let mut roots = RootCertStore::empty();
    for cert in &ca {
        roots.add(cert.clone()).map_err(|e| TlsError::BadCa { path: files.ca.clone(), reason: e.to_string() })?;
    }
    let roots = Arc::new(roots);
    let rustls_error = |e: rustls::Error| match e {
        rustls::Error::InconsistentKeys(_) => {
            TlsError::KeyMismatch { cert: files.cert.clone(), key: files.key.clone() }
        }
        other => TlsError::Rustls(other.to_string()),
    };
    let verifier = |optional: bool| {
        let builder = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider());
        let builder = if optional { builder.allow_unauthenticated() } else { builder };
        builder.build().map_err(|e| TlsError::BadCa { path: files.ca.clone(), reason: e.to_string() })
    };
    let server = |optional: bool| -> Result<Arc<ServerConfig>, TlsError> {
        let mut config = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error)?
            .with_client_cert_verifier(verifier(optional)?)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_error)?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    };
    let node_verifier = NodeServerVerifier {
        inner: rustls::client::WebPkiServerVerifier::builder_with_provider(roots.clone(), provider())
            .build()
            .map_err(|e| TlsError::BadCa { path: files.ca.clone(), reason: e.to_string() })?,
    };
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(node_verifier))
        .with_client_auth_cert(chain.clone(), key.clone_key())
        .map_err(rustls_error)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    let ca_pem = String::from_utf8_lossy(&pem.ca).trim().to_string();
    Ok(Configs { server: server(true)?, mutual: server(false)?, client: Arc::new(client), ca_pem, pem })
}

/// What a client of a node's admin API without a certificate of its own (the CLI with `--ca-cert` and a
/// token) trusts: the CA in `ca_path` alone (not the system's) and, as a node checks the nodes it dials, only
/// a server whose certificate carries the organisation `sluice:node`. Regression: it trusted the system's CAs
/// too and any certificate of the given CA, so a bearer token could go to a server that is not a node.
pub fn admin_client_config(ca_path: &std::path::Path) -> Result<Arc<ClientConfig>, TlsError> {
    let bytes = std::fs::read(ca_path).map_err(|e| TlsError::BadPem {
        flag: "--ca-cert",
        path: ca_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let mut roots = RootCertStore::empty();
    for cert in certificates("--ca-cert", ca_path, &bytes)? {
        roots.add(cert).map_err(|e| TlsError::BadCa { path: ca_path.to_path_buf(), reason: e.to_string() })?;
    }
    let node_verifier = NodeServerVerifier {
        inner: rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| TlsError::BadCa { path: ca_path.to_path_buf(), reason: e.to_string() })?,
    };
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(node_verifier))
        .with_no_client_auth();
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(client))
}

/// How a node checks the node it dials (peer port, or the admin port as a node): the cluster's CA and the
/// name, as any TLS client does, and the certificate's organisation `sluice:node`, as the peer port demands of
/// its clients. Without the last check, with a CA shared with other workloads, a certificate issued for a
/// node's name to something else would be taken for that node, and get its Raft traffic (every event).
#[derive(Debug)]
struct NodeServerVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl rustls::client::danger::ServerCertVerifier for NodeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        let organisations = accept::certificate_organisations(end_entity.as_ref());
        if !organisations.iter().any(|o| o == accept::NODE_ORGANISATION) {
            return Err(rustls::Error::General(format!(
                "the server's certificate is not a Sluice node's (organisation {} expected, found {organisations:?})",
                accept::NODE_ORGANISATION
            )));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// What one look at the files decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    Unchanged,
    Reloaded,
    /// The files changed but do not load; the previous configs stay.
    Failed(String),
}

/// A node's TLS material, shared by its ports; cheap to clone.
#[derive(Clone)]
pub struct Tls {
    mode: TransportEncryption,
    files: TlsFiles,
    current: Arc<RwLock<Arc<Configs>>>,
    /// Bumped whenever the configs are replaced, so that users of derived state (HTTP clients trusting the
    /// CA) notice a rotation with one atomic load.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl fmt::Debug for Tls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tls").field("mode", &self.mode).field("files", &self.files).finish()
    }
}

impl Tls {
    /// Loads the files; `None` when the mode is `disabled` (the files, if given, are not read).
    pub fn load(mode: TransportEncryption, files: Option<TlsFiles>) -> Result<Option<Tls>, TlsError> {
        if !mode.serves_tls() {
            return Ok(None);
        }
        let files = files.ok_or(TlsError::MissingFiles { mode: mode.as_str() })?;
        let configs = build(&files, files.read()?)?;
        Ok(Some(Tls { mode, files, current: Arc::new(RwLock::new(Arc::new(configs))), generation: Arc::default() }))
    }

    pub fn mode(&self) -> TransportEncryption {
        self.mode
    }

    /// How many times the files were reloaded with a change (0 at start).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn configs(&self) -> Arc<Configs> {
        // A poisoned lock still holds a whole config (it is only ever replaced, never edited).
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// For clients' ports (HTTP ingress, admin): a client certificate is checked when offered, not required.
    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.configs().server.clone()
    }

    /// For the Raft transport: a certificate of the cluster's CA is required.
    pub fn mutual_server_config(&self) -> Arc<ServerConfig> {
        self.configs().mutual.clone()
    }

    /// Dialing another node: presents this node's certificate, trusts only the cluster's CA.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.configs().client.clone()
    }

    /// The CA bundle in PEM, as Knative's `status.address.CACerts`.
    pub fn ca_pem(&self) -> String {
        self.configs().ca_pem.clone()
    }

    /// Reads the files once and swaps the configs if they changed and load.
    pub fn reload(&self) -> Reload {
        let pem = match self.files.read() {
            Ok(pem) => pem,
            Err(e) => return Reload::Failed(e.to_string()),
        };
        if pem == self.configs().pem {
            return Reload::Unchanged;
        }
        match build(&self.files, pem) {
            Ok(configs) => {
                let mut current = match self.current.write() {
                    Ok(current) => current,
                    Err(poisoned) => poisoned.into_inner(),
                };
                *current = Arc::new(configs);
                self.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
                Reload::Reloaded
            }
            Err(e) => Reload::Failed(e.to_string()),
        }
    }

    /// Re-reads the files every `interval` for as long as the runtime runs (cert-manager and kubelet
    /// rotate secrets by replacing the files).
    pub async fn watch(self, interval: Duration) {
        let mut last_failure: Option<String> = None;
        loop {
            tokio::time::sleep(interval).await;
            match self.reload() {
                Reload::Unchanged => {}
                Reload::Reloaded => {
                    last_failure = None;
                    metrics::counter!("sluice_tls_reloads_total", "outcome" => "reloaded").increment(1);
                    tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded");
                }
                Reload::Failed(reason) => {
                    if last_failure.as_deref() != Some(reason.as_str()) {
                        metrics::counter!("sluice_tls_reloads_total", "outcome" => "failed").increment(1);
                        tracing::error!(%reason, "TLS files changed but do not load; the previous certificate stays");
                        last_failure = Some(reason);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
