use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use serde_json::json;

use super::sign::SigningKey;
use super::*;

const NOW: u64 = 1_800_000_000;
const AUDIENCE: &str = "eventing.knative.dev/broker/default/default";
const ISSUER: &str = "https://issuer.example";

fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "system:serviceaccount:default:sender", "aud": AUDIENCE, "exp": NOW + 300, "iat": NOW})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn trusted(keys: &[&SigningKey]) -> Vec<TrustedIssuer> {
    let document = json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()});
    vec![TrustedIssuer { issuer: ISSUER.into(), keys: parse_jwks(document.to_string().as_bytes()).expect("jwks") }]
}

fn unsigned(header: Value, claims: &Value) -> String {
    format!("{}.{}.", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()))
}

#[test]
fn the_authentication_matrix() {
    let key = SigningKey::generate("k1").expect("key");
    let other = SigningKey::generate("k1").expect("key"); // Same kid, another key: a forgery.
    let rotated = SigningKey::generate("k0").expect("key");
    let issuers = trusted(&[&key]);
    let good = key.sign(&claims()).expect("sign");
    // The signature of a real token on claims of the forger's choosing.
    let parts: Vec<&str> = good.split('.').collect();
    let forged_claims = with(claims(), "sub", json!("system:serviceaccount:kube-system:admin"));
    let tampered = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(forged_claims.to_string()), parts[2]);
    let cases: Vec<(&str, String, Result<(), AuthError>)> = vec![
        ("valid", good.clone(), Ok(())),
        ("one part", "abc".into(), Err(AuthError::Malformed("not three dot-separated parts"))),
        ("header not base64", "!!.e30.AA".into(), Err(AuthError::Malformed("header is not base64url"))),
        ("alg none", unsigned(json!({"alg": "none"}), &claims()), Err(AuthError::Algorithm("none".into()))),
        ("alg HS256", unsigned(json!({"alg": "HS256"}), &claims()), Err(AuthError::Algorithm("HS256".into()))),
        (
            "crit extension (RFC 7797 b64=false): the signature would not be over what is read here",
            key.sign_with_header(&json!({"alg": "ES256", "kid": "k1", "b64": false, "crit": ["b64"]}), &claims())
                .expect("sign"),
            Err(AuthError::Malformed("header has crit extensions this verifier does not understand")),
        ),
        (
            "empty crit",
            key.sign_with_header(&json!({"alg": "ES256", "kid": "k1", "crit": []}), &claims()).expect("sign"),
            Err(AuthError::Malformed("header has crit extensions this verifier does not understand")),
        ),
        ("bad signature", other.sign(&claims()).expect("sign"), Err(AuthError::BadSignature)),
        ("tampered payload", tampered, Err(AuthError::BadSignature)),
        ("expired", key.sign(&with(claims(), "exp", json!(NOW - 61))).expect("sign"), Err(AuthError::Expired)),
        ("expired within skew", key.sign(&with(claims(), "exp", json!(NOW - 59))).expect("sign"), Ok(())),
        (
            "not yet valid",
            key.sign(&with(claims(), "nbf", json!(NOW + 61))).expect("sign"),
            Err(AuthError::NotYetValid),
        ),
        (
            "no exp",
            key.sign(&json!({"iss": ISSUER, "aud": AUDIENCE})).expect("sign"),
            Err(AuthError::Malformed("no exp claim")),
        ),
        (
            "wrong issuer",
            key.sign(&with(claims(), "iss", json!("https://evil.example"))).expect("sign"),
            Err(AuthError::UntrustedIssuer),
        ),
        (
            "wrong audience",
            key.sign(&with(claims(), "aud", json!("eventing.knative.dev/broker/default/other"))).expect("sign"),
            Err(AuthError::WrongAudience { expected: AUDIENCE.into() }),
        ),
        ("audience list", key.sign(&with(claims(), "aud", json!(["x", AUDIENCE]))).expect("sign"), Ok(())),
        ("unknown key id", rotated.sign(&claims()).expect("sign"), Err(AuthError::UnknownKey)),
        // Regression: a `nbf` that is not a number was ignored, so the token was taken before its time.
        (
            "nbf not a NumericDate",
            key.sign(&with(claims(), "nbf", json!("2030-01-01"))).expect("sign"),
            Err(AuthError::Malformed("nbf is not a NumericDate")),
        ),
        (
            "no kid, one key",
            key.sign_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &claims()).expect("sign"),
            Ok(()),
        ),
    ];
    for (what, token, expected) in cases {
        let verified = verify(&token, &issuers, AUDIENCE, NOW, 60).map(|_| ());
        assert_eq!(verified, expected, "{what}");
    }
    // Regression: a token without `kid` was tried against every key of the issuer that fits (up to 64), a
    // public-key operation each for any unauthenticated sender. Past two keys it is refused without a check.
    let (second, third) = (SigningKey::generate("k2").expect("key"), SigningKey::generate("k3").expect("key"));
    let no_kid = key.sign_with_header(&json!({"alg": "ES256", "typ": "JWT"}), &claims()).expect("sign");
    let verdict = |keys: &[&SigningKey]| verify(&no_kid, &trusted(keys), AUDIENCE, NOW, 60).map(|_| ());
    assert_eq!(verdict(&[&key, &second, &third]), Err(AuthError::UnknownKey));
    assert_eq!(verdict(&[&second, &key]), Ok(()), "two keys are still tried");
    // After rotation (the JWKS holds only the new key) the old key's tokens are refused.
    let after_rotation = trusted(&[&rotated]);
    assert_eq!(verify(&good, &after_rotation, AUDIENCE, NOW, 60), Err(AuthError::UnknownKey));
    let verified = verify(&rotated.sign(&claims()).expect("sign"), &after_rotation, AUDIENCE, NOW, 60)
        .expect("the new key verifies");
    assert_eq!(verified.subject, "system:serviceaccount:default:sender");
}

#[test]
fn bearer_headers() {
    assert_eq!(bearer_token(None), Err(AuthError::Missing));
    assert_eq!(bearer_token(Some("Basic abc")), Err(AuthError::NotBearer));
    assert_eq!(bearer_token(Some("Bearer ")), Err(AuthError::NotBearer));
    assert_eq!(bearer_token(Some("bearer a.b.c")), Ok("a.b.c"));
}

#[test]
fn jwks_skips_other_key_types_and_names_a_broken_key() {
    let key = SigningKey::generate("k1").expect("key");
    let document = json!({"keys": [{"kty": "oct", "k": "c2VjcmV0"}, key.jwk()]});
    let keys = parse_jwks(document.to_string().as_bytes()).expect("parses");
    assert_eq!(keys.len(), 1, "the symmetric key is never a verifier");
    let broken = json!({"keys": [key.jwk(), {"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]});
    let error = parse_jwks(broken.to_string().as_bytes()).expect_err("broken");
    assert!(error.starts_with("keys[1]"), "{error}");
}

proptest! {
    /// No input makes verification panic, and nothing unsigned by the key verifies.
    #[test]
    fn arbitrary_tokens_never_verify(token in "[A-Za-z0-9_.=-]{0,200}") {
        let key = SigningKey::generate("k1").expect("key");
        prop_assert!(verify(&token, &trusted(&[&key]), AUDIENCE, NOW, 60).is_err());
    }
}
