//! The flags of transport encryption and sender identity, shared by `sluice node` and `sluice dev`
//! (docs/security.md).

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use clap::Args;
use sluice_security::{Tls, TlsFiles, TransportEncryption};

#[derive(Args, Clone, Debug, Default)]
pub(crate) struct TlsArgs {
    /// Knative's transport-encryption: `disabled`; `permissive` (TLS and plaintext on the HTTP and admin
    /// ports, https addresses first; mutual TLS between nodes); `strict` (TLS only: plaintext HTTP gets 426
    /// except /healthz and /readyz).
    #[arg(long, env = "SLUICE_TRANSPORT_ENCRYPTION", value_parser = parse_mode)]
    pub transport_encryption: Option<TransportEncryption>,
    /// This node's certificate chain (PEM). Re-read every 2 s: a rotated file is served without a restart.
    #[arg(long, env = "SLUICE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "SLUICE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The cluster's CA bundle (PEM): every node's certificate is signed by it; advertised as CACerts.
    #[arg(long, env = "SLUICE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

fn parse_mode(text: &str) -> std::result::Result<TransportEncryption, String> {
    text.parse().map_err(|e: sluice_security::TlsError| e.to_string())
}

impl TlsArgs {
    fn files(&self) -> Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                Ok(Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() }))
            }
            _ => bail!("--tls-cert, --tls-key and --tls-ca go together: give all three"),
        }
    }

    /// The mode (`disabled` unless given) and its loaded files.
    pub(crate) fn load(&self) -> Result<Option<Tls>> {
        let files = self.files()?;
        let mode = self.transport_encryption.unwrap_or_default();
        if mode == TransportEncryption::Disabled && files.is_some() {
            bail!("--tls-cert is given but --transport-encryption is disabled: set it to permissive or strict");
        }
        Ok(Tls::load(mode, files)?)
    }

    /// `sluice dev --tls`: the dev CA's files under `data` (made on first use), in `permissive` mode unless a
    /// mode is given.
    pub(crate) fn with_dev_certificates(&self, data: &Path) -> Result<TlsArgs> {
        let files = sluice_security::ensure_dev_certificates(&data.join("tls"))?;
        Ok(TlsArgs {
            transport_encryption: Some(self.transport_encryption.unwrap_or(TransportEncryption::Permissive)),
            tls_cert: Some(files.cert),
            tls_key: Some(files.key),
            tls_ca: Some(files.ca),
        })
    }

    /// The same flags for a child `sluice node`.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(mode) = self.transport_encryption {
            args.extend(["--transport-encryption".to_string(), mode.to_string()]);
        }
        for (flag, path) in [("--tls-cert", &self.tls_cert), ("--tls-key", &self.tls_key), ("--tls-ca", &self.tls_ca)] {
            if let Some(path) = path {
                args.extend([flag.to_string(), path.display().to_string()]);
            }
        }
        args
    }
}

/// Sender identity (Knative's `authentication-oidc`).
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct OidcArgs {
    /// Trust bearer tokens of this issuer (repeatable): `ISSUER=JWKS_FILE` (the file re-read every --oidc-refresh-s),
    /// or `ISSUER` for OpenID discovery at ISSUER/.well-known/openid-configuration. With one or more, ingress
    /// requires `Authorization: Bearer <JWT>` whose audience is the Broker's or Channel's
    /// (`eventing.knative.dev/broker/NS/NAME`); without, senders are anonymous.
    #[arg(long = "oidc-issuer", value_name = "ISSUER[=JWKS_FILE]")]
    pub oidc_issuers: Vec<sluice_security::IssuerSource>,
    /// Clock difference allowed on a token's exp and nbf, in seconds.
    #[arg(long, default_value_t = 60)]
    pub oidc_skew_s: u64,
    /// How often the issuers' keys are re-read (a rotated key set is trusted within this).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub oidc_refresh_s: u64,
    /// What a Broker or Channel without an EventPolicy lets in, with sender identity on (Knative's
    /// default-authorization-mode): allow-same-namespace (service accounts of its namespace), allow-all,
    /// deny-all.
    #[arg(long, default_value = "allow-same-namespace")]
    pub default_authorization_mode: sluice_controller::policy::DefaultAuthorization,
    /// Sluice's own issuer (the `iss` of the tokens its Trigger and Subscription deliveries carry to
    /// destinations with an audience; discovery at ISSUER/.well-known/openid-configuration). Default: this
    /// node's HTTP address. In a cluster give every node the same URL, one that reaches any of them.
    #[arg(long, value_name = "URL")]
    pub sender_issuer: Option<String>,
    /// Lifetime of the tokens Sluice mints, in seconds (a token is reused while half of it remains).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..=86_400))]
    pub sender_token_ttl_s: u64,
    /// A node makes a new signing key when its newest is this old, in seconds.
    #[arg(long, default_value_t = 86_400, value_parser = clap::value_parser!(u64).range(2..))]
    pub signing_key_rotation_s: u64,
    /// A new signing key is published this long before it signs, in seconds (longer than verifiers take to
    /// refetch the JWKS).
    #[arg(long, default_value_t = 120)]
    pub signing_key_publish_lead_s: u64,
}

impl OidcArgs {
    /// The authenticator, its keys loaded and a refresh task started; `None` without issuers. Discovery trusts
    /// the cluster's CA (of `tls`) besides the system's.
    pub(crate) async fn start(&self, tls: Option<&Tls>) -> Result<Option<sluice_security::Authenticator>> {
        if self.oidc_issuers.is_empty() {
            return Ok(None);
        }
        let cluster_ca: Vec<String> = tls.map(Tls::ca_pem).into_iter().collect();
        let authenticator = sluice_security::Authenticator::start(
            self.oidc_issuers.clone(),
            std::time::Duration::from_secs(self.oidc_skew_s),
            &cluster_ca,
        )
        .await
        .map_err(anyhow::Error::msg)?;
        tokio::spawn(authenticator.clone().refresh(std::time::Duration::from_secs(self.oidc_refresh_s)));
        Ok(Some(authenticator))
    }

    /// Sluice's own issuer settings, checked.
    pub(crate) fn sender_identity(&self) -> Result<sluice_broker::SenderIdentity> {
        let timing = sluice_security::KeyTiming {
            token_ttl: std::time::Duration::from_secs(self.sender_token_ttl_s),
            rotation: std::time::Duration::from_secs(self.signing_key_rotation_s),
            publish_lead: std::time::Duration::from_secs(self.signing_key_publish_lead_s),
            skew: std::time::Duration::from_secs(self.oidc_skew_s),
        };
        timing.check().map_err(|e| anyhow::anyhow!("--signing-key-publish-lead-s / --signing-key-rotation-s: {e}"))?;
        if let Some(issuer) = &self.sender_issuer
            && !(issuer.starts_with("https://") || issuer.starts_with("http://"))
        {
            anyhow::bail!("--sender-issuer {issuer:?}: must be an http:// or https:// URL");
        }
        Ok(sluice_broker::SenderIdentity { issuer: self.sender_issuer.clone(), timing })
    }

    pub(crate) fn to_args(&self) -> Vec<String> {
        let mut args = vec![
            "--sender-token-ttl-s".to_string(),
            self.sender_token_ttl_s.to_string(),
            "--signing-key-rotation-s".into(),
            self.signing_key_rotation_s.to_string(),
            "--signing-key-publish-lead-s".into(),
            self.signing_key_publish_lead_s.to_string(),
            "--oidc-skew-s".to_string(),
            self.oidc_skew_s.to_string(),
            "--oidc-refresh-s".into(),
            self.oidc_refresh_s.to_string(),
            "--default-authorization-mode".into(),
            self.default_authorization_mode.as_str().into(),
        ];
        for source in &self.oidc_issuers {
            let flag = match &source.jwks {
                sluice_security::JwksSource::File(path) => format!("{}={}", source.issuer, path.display()),
                sluice_security::JwksSource::Discovery => source.issuer.clone(),
            };
            args.extend(["--oidc-issuer".to_string(), flag]);
        }
        if let Some(issuer) = &self.sender_issuer {
            args.extend(["--sender-issuer".to_string(), issuer.clone()]);
        }
        args
    }
}

/// Who may use the admin API.
#[derive(Args, Clone, Debug, Default)]
pub(crate) struct AdminAuthArgs {
    /// Require credentials on the admin API: bearer tokens from this file (`TOKEN,NAME,ROLE` per line, ROLE
    /// `read` or `operate`), or client certificates of the cluster's CA. Strict transport encryption requires
    /// credentials even without this file (client certificates only).
    #[arg(long, env = "SLUICE_ADMIN_TOKENS")]
    pub admin_tokens: Option<PathBuf>,
}

impl AdminAuthArgs {
    /// The same flag for a child `sluice node`.
    pub(crate) fn to_args(&self) -> Vec<String> {
        match &self.admin_tokens {
            Some(path) => vec!["--admin-tokens".into(), path.display().to_string()],
            None => Vec::new(),
        }
    }

    pub(crate) fn load(&self, tls: Option<&Tls>) -> Result<Option<sluice_security::admin_auth::AdminTokens>> {
        match &self.admin_tokens {
            Some(path) => Ok(Some(sluice_security::admin_auth::AdminTokens::load(path).map_err(anyhow::Error::msg)?)),
            None if tls.is_some_and(|tls| tls.mode() == TransportEncryption::Strict) => Ok(Some(Default::default())),
            None => Ok(None),
        }
    }
}
