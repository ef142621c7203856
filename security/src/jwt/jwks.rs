//! JSON Web Key Sets (RFC 7517): the public keys an issuer publishes at its `jwks_uri`.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::Value;

/// Keys of a set: bounded, so a hostile or broken JWKS cannot make every verification slow.
pub const MAX_KEYS: usize = 64;

/// One public key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Jwk {
    pub kid: Option<String>,
    /// `alg` when the key names one: it then verifies only that algorithm.
    pub alg: Option<String>,
    pub public: PublicKey,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PublicKey {
    /// RS256: modulus and exponent, big-endian.
    Rsa { n: Vec<u8>, e: Vec<u8> },
    /// ES256: the uncompressed point `04 || x || y`.
    P256 { point: Vec<u8> },
    /// EdDSA over Ed25519.
    Ed25519 { x: Vec<u8> },
}

impl Jwk {
    /// Whether this key may verify a token signed with `algorithm`.
    pub fn fits(&self, algorithm: &str) -> bool {
        let by_type = matches!(
            (&self.public, algorithm),
            (PublicKey::Rsa { .. }, "RS256") | (PublicKey::P256 { .. }, "ES256") | (PublicKey::Ed25519 { .. }, "EdDSA")
        );
        by_type && self.alg.as_deref().is_none_or(|alg| alg == algorithm)
    }
}

fn field(key: &Value, name: &str) -> Result<Vec<u8>, String> {
    let text = key.get(name).and_then(Value::as_str).ok_or_else(|| format!("no {name:?}"))?;
    URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).map_err(|_| format!("{name:?} is not base64url"))
}

fn parse_key(key: &Value) -> Result<Option<Jwk>, String> {
    if key.get("use").and_then(Value::as_str).is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let public = match (key.get("kty").and_then(Value::as_str), key.get("crv").and_then(Value::as_str)) {
        (Some("RSA"), _) => {
            let n = field(key, "n")?;
            if n.len() < 256 {
                return Err("RSA modulus under 2048 bits".into());
            }
            PublicKey::Rsa { n, e: field(key, "e")? }
        }
        (Some("EC"), Some("P-256")) => {
            let (x, y) = (field(key, "x")?, field(key, "y")?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 coordinates must be 32 bytes".into());
            }
            let mut point = vec![4u8];
            point.extend(x);
            point.extend(y);
            PublicKey::P256 { point }
        }
        (Some("OKP"), Some("Ed25519")) => PublicKey::Ed25519 { x: field(key, "x")? },
        // Other key types (symmetric `oct` among them) are never used to verify.
        _ => return Ok(None),
    };
    Ok(Some(Jwk {
        kid: key.get("kid").and_then(Value::as_str).map(String::from),
        alg: key.get("alg").and_then(Value::as_str).map(String::from),
        public,
    }))
}

/// The usable signing keys of a JWKS document; keys of other types are skipped, a malformed key of a
/// known type is an error naming its index.
pub fn parse_jwks(text: &[u8]) -> Result<Vec<Jwk>, String> {
    let document: Value = serde_json::from_slice(text).map_err(|e| format!("not JSON: {e}"))?;
    let keys = document.get("keys").and_then(Value::as_array).ok_or("no \"keys\" array")?;
    if keys.len() > MAX_KEYS {
        return Err(format!("{} keys, more than {MAX_KEYS}", keys.len()));
    }
    let mut parsed = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        if let Some(jwk) = parse_key(key).map_err(|e| format!("keys[{index}]: {e}"))? {
            parsed.push(jwk);
        }
    }
    Ok(parsed)
}
