//! Sluice's security, what flows in and out:
//! - `tls`: PEM files (certificate chain, private key, CA bundle) in → rustls server and client configs out,
//!   rebuilt when the files change; accepted TCP connections in → plaintext or TLS streams out, told apart
//!   by their first byte, so one port serves both in `permissive` mode.
//! - `jwt`: a bearer token in → its verified claims out, or the one check it failed (pure: issuers' keys and
//!   the clock are given); `jwt::sign` mints tokens; `jwt::issuer` is Sluice as an OIDC issuer for its own
//!   senders: its keys' rotation plan (pure) and the tokens minted with the current key.
//! - `admin_auth`: an admin gRPC call's method and credentials (token or client certificate) in → allowed or
//!   UNAUTHENTICATED / PERMISSION_DENIED out, by two roles (read, operate).
//! - `dev_certs`: a directory in → a local CA and a node certificate signed by it out (`sluice dev --tls`).
//! - `durable_file`: bytes in → a file written whole or not at all, kept across a power cut (keys,
//!   certificates, the broker's small files).
//!
//! Nothing here knows about Brokers or Raft: the broker, dispatcher and CLI call in.

pub mod admin_auth;
mod dev_certs;
mod durable_file;
mod error;
pub mod jwt;
pub mod tls;

pub use dev_certs::{DevCertificates, ensure_dev_certificates, issue_certificate, issue_certificate_for};
pub use durable_file::write_file_durably;
pub use error::TlsError;
pub use jwt::issuer::{KeyPlan, KeyTiming, OwnKey, SenderTokens, plan_keys};
pub use jwt::issuers::{Authenticator, IssuerSource, JwksSource};
pub use jwt::sign::SigningKey;
pub use jwt::{AuthError, Claims, TrustedIssuer};
pub use tls::accept::{AcceptError, ClientCertificate, Conn, ConnInfo, PlaintextPolicy, Transport, accept, incoming};
pub use tls::dial::{TlsDialer, dial, dial_with_config, host_of};
/// A TLS stream this node dialed.
pub type ClientTlsStream = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;
pub use tls::roots::https_client_config;
pub use tls::{Reload, Tls, TlsFiles, TransportEncryption, admin_client_config};
