//! Sender identity: a bearer JWT in, the verified claims (or the one check that failed) out.
//!
//! Pure: the trusted issuers with their keys and the clock are given. Asymmetric algorithms only (RS256,
//! ES256, EdDSA): `none` and the HMAC family are refused, since a verifier that holds only public keys must
//! never let a token pick a symmetric algorithm (the classic key-confusion attack). Errors say which check
//! failed and never which key would have worked.

pub mod issuer;
pub mod issuers;
pub mod jwks;
pub mod sign;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use serde_json::Value;

pub use jwks::{Jwk, PublicKey, parse_jwks};

/// Longest accepted token (a JWT of a few claims is well under 4 KiB; this bounds the work on hostile input).
pub const MAX_TOKEN_BYTES: usize = 8 << 10;

/// An issuer this node trusts and its current public keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustedIssuer {
    /// The `iss` claim, exactly.
    pub issuer: String,
    pub keys: Vec<Jwk>,
}

/// What a verified token says.
#[derive(Clone, Debug, PartialEq)]
pub struct Claims {
    pub issuer: String,
    /// `sub`: who sent it (for Kubernetes service accounts `system:serviceaccount:NS:NAME`).
    pub subject: String,
    pub audiences: Vec<String>,
    pub expires_at_s: u64,
    /// Every claim, for policies.
    pub all: serde_json::Map<String, Value>,
}

/// Why a token was refused: each is a 401 whose body names the check.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token: send `Authorization: Bearer <JWT>`")]
    Missing,
    #[error("the Authorization header is not `Bearer <JWT>`")]
    NotBearer,
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's algorithm {0:?} is not accepted (RS256, ES256 or EdDSA)")]
    Algorithm(String),
    #[error("the token's issuer is not trusted")]
    UntrustedIssuer,
    #[error("the token's key id is not among the issuer's current keys")]
    UnknownKey,
    #[error("the token's signature does not verify")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet (nbf)")]
    NotYetValid,
    #[error("the token's audience is not {expected:?}")]
    WrongAudience { expected: String },
}

impl AuthError {
    /// A stable name for metrics and the error body's `rule`.
    pub fn check(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::NotBearer => "not_bearer",
            AuthError::Malformed(_) => "malformed",
            AuthError::Algorithm(_) => "algorithm",
            AuthError::UntrustedIssuer => "issuer",
            AuthError::UnknownKey => "key_id",
            AuthError::BadSignature => "signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongAudience { .. } => "audience",
        }
    }
}

/// The token of an `Authorization` header value.
pub fn bearer_token(header: Option<&str>) -> Result<&str, AuthError> {
    let header = header.ok_or(AuthError::Missing)?.trim();
    match header.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(AuthError::NotBearer),
    }
}

fn decode_part(part: &str, what: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).map_err(|_| AuthError::Malformed(what))
}

fn seconds(value: Option<&Value>) -> Option<u64> {
    // NumericDate may carry a fraction.
    value.and_then(|v| v.as_u64().or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64)))
}

/// Largest number of keys one token's signature is tried against: a token without `kid` names none, and an
/// issuer may publish dozens, each check a public-key operation an unauthenticated sender would make the node do.
const MAX_KEYS_TRIED: usize = 2;

/// Verifies `token` against `issuers` for `audience` at `now_s`, allowing `skew_s` of clock difference on
/// `exp` and `nbf`.
pub fn verify(
    token: &str,
    issuers: &[TrustedIssuer],
    audience: &str,
    now_s: u64,
    skew_s: u64,
) -> Result<Claims, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed("longer than 8 KiB"));
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AuthError::Malformed("not three dot-separated parts"));
    };
    let header: Value = serde_json::from_slice(&decode_part(header_b64, "header is not base64url")?)
        .map_err(|_| AuthError::Malformed("header is not JSON"))?;
    let algorithm = header.get("alg").and_then(Value::as_str).ok_or(AuthError::Malformed("header has no alg"))?;
    if !matches!(algorithm, "RS256" | "ES256" | "EdDSA") {
        return Err(AuthError::Algorithm(algorithm.to_string()));
    }
    // RFC 7515 §4.1.11: a token whose `crit` names extensions the recipient does not understand is invalid, and
    // this verifier understands none (an empty `crit` is not allowed either). Such a token may mean its signature
    // covers something else than the header and payload as read here (RFC 7797's `b64: false`).
    if header.get("crit").is_some() {
        return Err(AuthError::Malformed("header has crit extensions this verifier does not understand"));
    }
    let payload: Value = serde_json::from_slice(&decode_part(payload_b64, "payload is not base64url")?)
        .map_err(|_| AuthError::Malformed("payload is not JSON"))?;
    let Value::Object(all) = payload else { return Err(AuthError::Malformed("payload is not a JSON object")) };
    let signature = decode_part(signature_b64, "signature is not base64url")?;

    let issuer_name = all.get("iss").and_then(Value::as_str).ok_or(AuthError::UntrustedIssuer)?;
    let issuer = issuers.iter().find(|i| i.issuer == issuer_name).ok_or(AuthError::UntrustedIssuer)?;
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&Jwk> =
        issuer.keys.iter().filter(|key| key.fits(algorithm) && (kid.is_none() || key.kid.as_deref() == kid)).collect();
    // A token without `kid` against an issuer of many keys is refused rather than tried against each.
    if candidates.is_empty() || candidates.len() > MAX_KEYS_TRIED {
        return Err(AuthError::UnknownKey);
    }
    // The claims that cost nothing to check are checked before the signature: refusing them early grants
    // nothing, and spares a public-key operation per token that would be refused anyway.
    let expires_at_s = seconds(all.get("exp")).ok_or(AuthError::Malformed("no exp claim"))?;
    if now_s > expires_at_s.saturating_add(skew_s) {
        return Err(AuthError::Expired);
    }
    match all.get("nbf") {
        None => {}
        Some(nbf) => {
            let not_before_s = seconds(Some(nbf)).ok_or(AuthError::Malformed("nbf is not a NumericDate"))?;
            if now_s.saturating_add(skew_s) < not_before_s {
                return Err(AuthError::NotYetValid);
            }
        }
    }
    let audiences: Vec<String> = match all.get("aud") {
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Array(many)) => many.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => Vec::new(),
    };
    if !audiences.iter().any(|a| a == audience) {
        return Err(AuthError::WrongAudience { expected: audience.to_string() });
    }
    let signed = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
    if !candidates.iter().any(|key| key.public.verifies(signed, &signature)) {
        return Err(AuthError::BadSignature);
    }
    Ok(Claims {
        issuer: issuer_name.to_string(),
        subject: all.get("sub").and_then(Value::as_str).unwrap_or_default().to_string(),
        audiences,
        expires_at_s,
        all,
    })
}

impl PublicKey {
    fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        match self {
            PublicKey::Rsa { n, e } => {
                RsaPublicKeyComponents { n, e }.verify(&RSA_PKCS1_2048_8192_SHA256, message, signature).is_ok()
            }
            PublicKey::P256 { point } => ring::signature::UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(message, signature)
                .is_ok(),
            PublicKey::Ed25519 { x } => {
                ring::signature::UnparsedPublicKey::new(&ED25519, x).verify(message, signature).is_ok()
            }
        }
    }
}

#[cfg(test)]
mod tests;
