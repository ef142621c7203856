//! The security crate's errors. Each names the file (and the flag that set it) and what is wrong with it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} {path}: {source}")]
    Read { flag: &'static str, path: PathBuf, source: std::io::Error },

    #[error("{flag} {path} holds no PEM certificate (expected a `BEGIN CERTIFICATE` block)")]
    NoCertificate { flag: &'static str, path: PathBuf },

    #[error("{flag} {path} is not valid PEM: {reason}")]
    BadPem { flag: &'static str, path: PathBuf, reason: String },

    #[error("--tls-key {path} holds no private key (expected a PKCS#8, PKCS#1 or SEC1 `PRIVATE KEY` block)")]
    NoKey { path: PathBuf },

    #[error("--tls-key {key} is not the key of the certificate in --tls-cert {cert}")]
    KeyMismatch { cert: PathBuf, key: PathBuf },

    #[error("--tls-ca {path}: {reason}")]
    BadCa { path: PathBuf, reason: String },

    #[error("CACerts of {what}: {reason}")]
    BadCaCerts { what: String, reason: String },

    #[error("TLS configuration refused by rustls: {0}")]
    Rustls(String),

    #[error("{context}: {reason}")]
    Generate { context: String, reason: String },

    #[error("transport-encryption must be one of disabled, permissive, strict (got {0:?})")]
    UnknownMode(String),

    #[error("transport-encryption {mode} needs --tls-cert, --tls-key and --tls-ca (or `sluice dev --tls`)")]
    MissingFiles { mode: &'static str },
}
