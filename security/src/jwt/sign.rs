//! Signing: an ES256 key that mints JWTs and publishes itself as a JWK. Sluice's own issuer and the tests'
//! token factories use it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};

use crate::error::TlsError;

/// A P-256 signing key with its key id.
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

fn key_error(context: &str) -> impl Fn(ring::error::Unspecified) -> TlsError + '_ {
    move |_| TlsError::Generate { context: context.to_string(), reason: "ring refused the key".into() }
}

impl SigningKey {
    /// A new random key named `kid`.
    pub fn generate(kid: &str) -> Result<SigningKey, TlsError> {
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map_err(key_error("generating a signing key"))?;
        SigningKey::from_pkcs8(kid, pkcs8.as_ref())
    }

    /// A key kept as PKCS#8 (DER) bytes.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Result<SigningKey, TlsError> {
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &SystemRandom::new())
            .map_err(|e| TlsError::Generate { context: format!("signing key {kid}"), reason: e.to_string() })?;
        Ok(SigningKey { kid: kid.to_string(), pair, pkcs8: pkcs8.to_vec() })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public half as a JWK (`kty: EC`, `crv: P-256`, `alg: ES256`, `use: sig`).
    pub fn jwk(&self) -> Value {
        let point = self.pair.public_key().as_ref();
        json!({
            "kty": "EC", "crv": "P-256", "alg": "ES256", "use": "sig", "kid": self.kid,
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..65]),
        })
    }

    /// A compact JWT of `claims`, signed with ES256 under this key's id.
    pub fn sign(&self, claims: &Value) -> Result<String, TlsError> {
        self.sign_with_header(&json!({"alg": "ES256", "typ": "JWT", "kid": self.kid}), claims)
    }

    /// The same with a header of the caller's (tests forge odd ones with it).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String, TlsError> {
        let signing_input =
            format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
        let signature =
            self.pair.sign(&SystemRandom::new(), signing_input.as_bytes()).map_err(key_error("signing a token"))?;
        Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.as_ref())))
    }
}
