//! The issuers a node trusts, with their keys kept current: the async shell around [`super::verify`].
//!
//! An issuer is given as `ISSUER=JWKS_FILE` (the file re-read every refresh, so a rotated key set is picked up
//! without a restart) or as `ISSUER` alone (OpenID discovery: `ISSUER/.well-known/openid-configuration` names
//! the `jwks_uri`, fetched at start and every refresh). A source that fails to refresh keeps its last good
//! keys; one that never loaded is not trusted yet, so its tokens are refused as from an unknown issuer.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::jwt::{AuthError, Claims, TrustedIssuer, bearer_token, parse_jwks, verify};

/// Largest JWKS or discovery document read.
const MAX_DOCUMENT_BYTES: usize = 1 << 20;
/// Clock difference allowed on `exp` and `nbf` (Kubernetes' own token review allows the same order).
pub const DEFAULT_SKEW: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JwksSource {
    File(PathBuf),
    Discovery,
}

/// One `--oidc-issuer` flag.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IssuerSource {
    pub issuer: String,
    pub jwks: JwksSource,
}

impl std::str::FromStr for IssuerSource {
    type Err = String;

    fn from_str(flag: &str) -> Result<Self, Self::Err> {
        let (issuer, jwks) = match flag.split_once('=') {
            Some((issuer, file)) if !file.is_empty() => (issuer, JwksSource::File(PathBuf::from(file))),
            Some(_) => return Err(format!("--oidc-issuer {flag:?}: expected ISSUER or ISSUER=JWKS_FILE")),
            None => (flag, JwksSource::Discovery),
        };
        if issuer.is_empty() {
            return Err(format!("--oidc-issuer {flag:?}: the issuer is empty"));
        }
        // Keys fetched over plaintext could be swapped by anyone on the path.
        if jwks == JwksSource::Discovery && !issuer.starts_with("https://") {
            return Err(format!("--oidc-issuer {flag:?}: discovery needs an https issuer URL, or give =JWKS_FILE"));
        }
        Ok(IssuerSource { issuer: issuer.to_string(), jwks })
    }
}

/// Verifies bearer tokens against the trusted issuers' current keys; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    sources: Arc<Vec<IssuerSource>>,
    /// What the sources last gave.
    loaded: Arc<RwLock<Vec<TrustedIssuer>>>,
    /// Sluice's own issuer (its nodes' published keys), trusted besides the sources.
    own: Arc<RwLock<Option<TrustedIssuer>>>,
    /// Both, as `verify` reads them.
    trusted: Arc<RwLock<Arc<Vec<TrustedIssuer>>>>,
    skew_s: u64,
    http: reqwest::Client,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator").field("sources", &self.sources).finish_non_exhaustive()
    }
}

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn read_limited(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let too_large = || format!("larger than {MAX_DOCUMENT_BYTES} bytes");
    if response.content_length().is_some_and(|length| length > MAX_DOCUMENT_BYTES as u64) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

impl Authenticator {
    /// Loads every source once. A JWKS file that does not load is an error (a typo must not start a node
    /// that refuses every sender); a discovery URL that does not answer is logged and retried at each
    /// refresh.
    ///
    /// Discovery trusts the system's CAs and `extra_ca_pems` (the cluster's CA, so that an issuer it signed,
    /// Sluice's own included, can be fetched), and only https: a redirect to http is refused, where anyone
    /// on the path could swap the keys.
    pub async fn start(
        sources: Vec<IssuerSource>,
        skew: Duration,
        extra_ca_pems: &[String],
    ) -> Result<Authenticator, String> {
        let extra: Vec<&str> = extra_ca_pems.iter().map(String::as_str).collect();
        let tls = crate::tls::roots::https_client_config(&extra, "--oidc-issuer").map_err(|e| e.to_string())?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .https_only(true)
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| format!("building the HTTP client: {e}"))?;
        let authenticator = Authenticator {
            sources: Arc::new(sources),
            loaded: Arc::default(),
            own: Arc::default(),
            trusted: Arc::default(),
            skew_s: skew.as_secs(),
            http,
        };
        let mut trusted = Vec::new();
        for source in authenticator.sources.iter() {
            match authenticator.load(source).await {
                Ok(keys) => trusted.push(TrustedIssuer { issuer: source.issuer.clone(), keys }),
                Err(e) if source.jwks == JwksSource::Discovery => {
                    tracing::warn!(issuer = %source.issuer, error = %e, "OIDC discovery failed; retrying at each refresh");
                }
                Err(e) => return Err(format!("--oidc-issuer {}: {e}", source.issuer)),
            }
        }
        authenticator.replace(trusted);
        Ok(authenticator)
    }

    fn replace(&self, loaded: Vec<TrustedIssuer>) {
        // The trusted list is held from the update to the rebuild: a refresh and a key rotation at once would
        // otherwise each publish a list with the other's previous half.
        let mut trusted = self.trusted.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *self.loaded.write().unwrap_or_else(std::sync::PoisonError::into_inner) = loaded;
        *trusted = Arc::new(self.combined());
    }

    /// Trusts Sluice's own issuer with these keys (replacing the previous ones): the tokens Sluice mints for
    /// its Triggers' deliveries to Brokers verify without a flag. Merged into a source of the same issuer.
    pub fn trust_own_issuer(&self, own: TrustedIssuer) {
        let mut trusted = self.trusted.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        *self.own.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(own);
        *trusted = Arc::new(self.combined());
    }

    /// The sources' keys with Sluice's own. Callers hold the trusted list's lock (taken before either half's).
    fn combined(&self) -> Vec<TrustedIssuer> {
        let mut trusted = self.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if let Some(own) = self.own.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone() {
            match trusted.iter_mut().find(|t| t.issuer == own.issuer) {
                Some(same) => same.keys.extend(own.keys),
                None => trusted.push(own),
            }
        }
        trusted
    }

    fn current(&self) -> Arc<Vec<TrustedIssuer>> {
        self.trusted.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// What the sources last gave (a refresh keeps a failing source's previous keys from here).
    fn loaded(&self) -> Vec<TrustedIssuer> {
        self.loaded.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    async fn load(&self, source: &IssuerSource) -> Result<Vec<crate::jwt::Jwk>, String> {
        let document = match &source.jwks {
            JwksSource::File(path) => {
                use tokio::io::AsyncReadExt;
                // Read no further than the limit: a huge file (or a device) is refused, not loaded whole.
                let file =
                    tokio::fs::File::open(path).await.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let mut text = Vec::new();
                file.take(MAX_DOCUMENT_BYTES as u64 + 1)
                    .read_to_end(&mut text)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if text.len() > MAX_DOCUMENT_BYTES {
                    return Err(format!("{} is larger than {MAX_DOCUMENT_BYTES} bytes", path.display()));
                }
                text
            }
            JwksSource::Discovery => {
                let discovery = format!("{}/.well-known/openid-configuration", source.issuer.trim_end_matches('/'));
                let fetch = |url: String| async move {
                    read_limited(self.http.get(&url).send().await.map_err(|e| format!("{url}: {e}"))?)
                        .await
                        .map_err(|e| format!("{url}: {e}"))
                };
                let configuration: serde_json::Value = serde_json::from_slice(&fetch(discovery.clone()).await?)
                    .map_err(|e| format!("{discovery}: not JSON: {e}"))?;
                let announced = configuration.get("issuer").and_then(serde_json::Value::as_str).unwrap_or_default();
                if announced != source.issuer {
                    return Err(format!("{discovery}: issuer {announced:?} is not {:?}", source.issuer));
                }
                let jwks_uri = configuration
                    .get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| format!("{discovery}: no jwks_uri"))?;
                if !jwks_uri.starts_with("https://") {
                    return Err(format!("{discovery}: jwks_uri {jwks_uri:?} is not https"));
                }
                fetch(jwks_uri.to_string()).await?
            }
        };
        parse_jwks(&document)
    }

    /// Re-reads every source each `interval`; a source that fails keeps its previous keys.
    pub async fn refresh(self, interval: Duration) {
        loop {
            tokio::time::sleep(interval).await;
            let previous = self.loaded();
            let mut trusted = Vec::new();
            for source in self.sources.iter() {
                match self.load(source).await {
                    Ok(keys) => trusted.push(TrustedIssuer { issuer: source.issuer.clone(), keys }),
                    Err(e) => {
                        metrics::counter!("sluice_oidc_refresh_failures_total").increment(1);
                        tracing::warn!(issuer = %source.issuer, error = %e, "OIDC keys not refreshed; the previous stay");
                        if let Some(kept) = previous.iter().find(|t| t.issuer == source.issuer) {
                            trusted.push(kept.clone());
                        }
                    }
                }
            }
            self.replace(trusted);
        }
    }

    /// Checks an `Authorization` header for `audience`, now.
    pub fn authenticate(&self, authorization: Option<&str>, audience: &str) -> Result<Claims, AuthError> {
        let token = bearer_token(authorization)?;
        verify(token, &self.current(), audience, now_s(), self.skew_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issuer_flags_parse() {
        let file: IssuerSource = "https://kubernetes.default.svc=/etc/jwks.json".parse().expect("parses");
        assert_eq!(file.jwks, JwksSource::File("/etc/jwks.json".into()));
        assert_eq!(file.issuer, "https://kubernetes.default.svc");
        let discovery: IssuerSource = "https://accounts.example".parse().expect("parses");
        assert_eq!(discovery.jwks, JwksSource::Discovery);
        for bad in ["", "=x", "issuer=", "not-a-url", "http://plaintext.example"] {
            assert!(bad.parse::<IssuerSource>().is_err(), "{bad:?}");
        }
    }
}

/// Discovery against a real HTTPS issuer on loopback: the issuer's certificate is signed by a CA only the node's
/// cluster CA bundle holds (as Sluice's own issuer, or a private one, would be).
#[cfg(test)]
mod discovery_tests {
    use std::sync::Arc;

    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    use serde_json::json;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::DevCertificates;
    use crate::jwt::sign::SigningKey;

    const AUDIENCE: &str = "eventing.knative.dev/broker/default/default";

    /// Serves `/.well-known/openid-configuration` and `/jwks` over TLS until the test ends; answers its URL.
    async fn issuer_on_loopback(ca: &DevCertificates, key: &SigningKey) -> String {
        let (cert_pem, key_pem) =
            crate::dev_certs::issue_certificate(ca, &["127.0.0.1".to_string()]).expect("a certificate");
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).collect::<Result<_, _>>().expect("certs");
        let private = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).expect("key");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .expect("server config");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let discovery = json!({"issuer": url, "jwks_uri": format!("{url}/jwks")}).to_string();
        let jwks = json!({"keys": [key.jwk()]}).to_string();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let Ok(mut stream) = acceptor.accept(stream).await else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let body = if request.starts_with(b"GET /jwks ") { &jwks } else { &discovery };
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            }
        });
        url
    }

    /// Regression: the discovery client trusted no CA at all (reqwest with manually added roots, none added),
    /// so `--oidc-issuer https://…` never loaded its keys and every token of that issuer was refused.
    #[tokio::test]
    async fn an_issuer_is_discovered_over_https_with_the_cluster_ca() {
        let ca = DevCertificates::new_ca("a private issuer's CA").expect("CA");
        let key = SigningKey::generate("k1").expect("key");
        let url = issuer_on_loopback(&ca, &key).await;
        let now = now_s();
        let token = key
            .sign(
                &json!({"iss": url, "sub": "system:serviceaccount:default:sender", "aud": AUDIENCE, "exp": now + 300}),
            )
            .expect("sign");
        let bearer = format!("Bearer {token}");
        let source: IssuerSource = url.parse().expect("a discovery source");

        let trusting =
            Authenticator::start(vec![source.clone()], Duration::from_secs(60), std::slice::from_ref(&ca.ca_cert_pem))
                .await
                .expect("start");
        let claims = trusting.authenticate(Some(&bearer), AUDIENCE).expect("discovered and verified");
        assert_eq!(claims.subject, "system:serviceaccount:default:sender");

        // Without the CA the issuer's certificate is not trusted: nothing loads, the token is refused.
        let not_trusting = Authenticator::start(vec![source], Duration::from_secs(60), &[]).await.expect("start");
        assert!(not_trusting.authenticate(Some(&bearer), AUDIENCE).is_err());
    }
}
