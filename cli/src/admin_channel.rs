//! How the CLI reaches a node's admin API: plaintext, or TLS when given the cluster's CA (`--ca-cert`,
//! SLUICE_CA_CERT), presenting a client certificate when given one (`--client-cert`/`--client-key`), and
//! sending a bearer token when given one (`--token`, SLUICE_TOKEN). docs/security.md has the roles.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use clap::Args;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The admin API's credentials, global flags of every command.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct AdminCredentialArgs {
    /// Bearer token for the admin API (a line of the node's --admin-tokens file).
    #[arg(long, global = true, env = "SLUICE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Speak TLS to the admin API, trusting this CA (PEM).
    #[arg(long, global = true, env = "SLUICE_CA_CERT")]
    pub ca_cert: Option<PathBuf>,
    /// Client certificate (PEM) presented to the admin API; with --client-key.
    #[arg(long, global = true, env = "SLUICE_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, global = true, env = "SLUICE_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

static CREDENTIALS: RwLock<Option<AdminCredentialArgs>> = RwLock::new(None);

/// Called once by `main` with the parsed flags.
pub(crate) fn set(credentials: AdminCredentialArgs) {
    *CREDENTIALS.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(credentials);
}

fn credentials() -> AdminCredentialArgs {
    CREDENTIALS.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone().unwrap_or_default()
}

/// For a process that is a node (`sluice node`, `sluice dev`'s supervisor): its own admin calls (joining a
/// StatefulSet's cluster, initialising the dev cluster) speak TLS with the node's certificate, whose
/// organisation `sluice:node` carries the operate role, unless the caller gave a CA or a client certificate.
pub(crate) fn use_node_identity_unless_given(files: &sluice_security::TlsFiles) {
    let mut guard = CREDENTIALS.write().unwrap_or_else(std::sync::PoisonError::into_inner);
    let credentials = guard.get_or_insert_with(AdminCredentialArgs::default);
    if credentials.ca_cert.is_none() && credentials.client_cert.is_none() {
        credentials.ca_cert = Some(files.ca.clone());
        credentials.client_cert = Some(files.cert.clone());
        credentials.client_key = Some(files.key.clone());
    }
}

/// Adds the bearer token to every call.
#[derive(Clone)]
pub(crate) struct AddToken(Option<Authorization>);

impl tonic::service::Interceptor for AddToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

pub(crate) type AdminChannel = InterceptedService<Channel, AddToken>;

fn client_tls(credentials: &AdminCredentialArgs, ca: &std::path::Path) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    match (&credentials.client_cert, &credentials.client_key) {
        (Some(cert), Some(key)) => {
            let files = sluice_security::TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.to_path_buf() };
            let tls = sluice_security::Tls::load(sluice_security::TransportEncryption::Strict, Some(files))?
                .ok_or_else(|| anyhow::anyhow!("TLS is on"))?;
            Ok(tls.client_config())
        }
        _ => Ok(sluice_security::admin_client_config(ca)?),
    }
}

/// Whether a connection failed in its TLS handshake or its server name (rustls' errors come as `InvalidData`,
/// a bad name as `InvalidInput`), not for want of a listener.
fn tls_refused(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if let Some(io) = error.downcast_ref::<std::io::Error>()
            && matches!(io.kind(), std::io::ErrorKind::InvalidData | std::io::ErrorKind::InvalidInput)
        {
            return true;
        }
        next = error.source();
    }
    false
}

/// The `authorization` value the global `--token` asks for.
fn authorization(credentials: &AdminCredentialArgs) -> anyhow::Result<Option<Authorization>> {
    match &credentials.token {
        Some(token) => Ok(Some(
            format!("Bearer {token}")
                .parse()
                .map_err(|_| anyhow::anyhow!("--token: not a valid header value (printable ASCII only)"))?,
        )),
        None => Ok(None),
    }
}

/// An `authorization` metadata value.
pub(crate) type Authorization = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// For a process that runs for long (the Kubernetes controller): a channel to the admin API at `admin` with the
/// global credentials, connected on first use and again after a failure, each call bounded by `timeout`; and
/// the `authorization` value to send with each call. Regression: the controller dialed plaintext with no
/// token, so it could not work against nodes that ask for either.
pub(crate) fn connect_lazy(admin: &str, timeout: Duration) -> anyhow::Result<(Channel, Option<Authorization>)> {
    let credentials = credentials();
    let endpoint = Endpoint::from_shared(format!("http://{admin}"))
        .map_err(|e| anyhow::anyhow!("--admin {admin}: {e}"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(timeout);
    let channel = match &credentials.ca_cert {
        None => endpoint.connect_lazy(),
        Some(ca) => {
            let config = client_tls(&credentials, ca)?;
            let dialer = sluice_security::TlsDialer::with_config(config, admin, sluice_security::host_of(admin));
            endpoint.connect_with_connector_lazy(dialer)
        }
    };
    Ok((channel, authorization(&credentials)?))
}

/// A channel to the admin API at `admin` (`IP:PORT` or `HOST:PORT`) with the global credentials.
pub(crate) async fn connect(admin: &str) -> anyhow::Result<AdminChannel> {
    let credentials = credentials();
    let token = authorization(&credentials)?;
    let endpoint = Endpoint::from_shared(format!("http://{admin}"))
        .map_err(|e| anyhow::anyhow!("--admin {admin}: {e}"))?
        .connect_timeout(Duration::from_secs(5));
    let channel = match &credentials.ca_cert {
        None => endpoint.connect().await,
        Some(ca) => {
            let config = client_tls(&credentials, ca)?;
            let dialer = sluice_security::TlsDialer::with_config(config, admin, sluice_security::host_of(admin));
            endpoint.connect_with_connector(dialer).await
        }
    }
    .map_err(|e| {
        let cause = std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default();
        // Not reached (nothing listening, refused, timed out) is worth retrying, whatever the command; a TLS
        // handshake refused (an unknown CA, a certificate for another name) is not, until the flags change.
        let exit_code = if tls_refused(&e) { 1 } else { crate::admin_cli::EXIT_UNAVAILABLE };
        anyhow::Error::new(crate::admin_cli::AdminError {
            exit_code,
            message: format!("cannot reach the admin API at {admin} (--admin): {e}: {cause}"),
        })
    })?;
    Ok(InterceptedService::new(channel, AddToken(token)))
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    /// A transport error wrapping the connector's, as tonic's does.
    #[derive(Debug)]
    struct Transport(Error);

    impl std::fmt::Display for Transport {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("transport error")
        }
    }

    impl std::error::Error for Transport {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn a_refused_handshake_is_not_worth_retrying_where_no_listener_is() {
        for (kind, refused) in [
            (ErrorKind::InvalidData, true),
            (ErrorKind::InvalidInput, true),
            (ErrorKind::ConnectionRefused, false),
            (ErrorKind::TimedOut, false),
        ] {
            assert_eq!(super::tls_refused(&Transport(Error::new(kind, "x"))), refused, "{kind:?}");
        }
    }
}
