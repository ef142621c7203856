//! Sender identity at ingress (docs/security.md): every way a bearer token can be wrong gets its 401 with
//! the check that failed and nothing stored; a valid token's event is stored; a rotated key set is trusted
//! without a restart; Brokers advertise their audience.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use reqwest::StatusCode;
use serde_json::{Value, json};
use sluice_proto::admin::ResourceRef;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_security::SigningKey;
use sluice_tests::{apply_resource, broker_object, read_events, start_single_node, wait_until};

const ISSUER: &str = "https://issuer.t81.example";
const AUDIENCE: &str = "eventing.knative.dev/broker/default/default";

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn claims() -> Value {
    json!({"iss": ISSUER, "sub": "system:serviceaccount:default:sender", "aud": AUDIENCE, "exp": now_s() + 600})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn write_jwks(path: &std::path::Path, keys: &[&SigningKey]) -> Result<()> {
    let staged = path.with_extension("tmp");
    std::fs::write(&staged, json!({"keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>()}).to_string())?;
    std::fs::rename(staged, path)?; // Whole or not at all, as a Secret's projected file changes.
    Ok(())
}

async fn post(http: &str, id: &str, authorization: Option<&str>) -> Result<(StatusCode, Value)> {
    let mut request = reqwest::Client::new()
        .post(format!("http://{http}/default/default"))
        .header("ce-specversion", "1.0")
        .header("ce-id", id)
        .header("ce-source", "/t81")
        .header("ce-type", "t81.event")
        .body("hello");
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    let response = request.send().await?;
    let status = response.status();
    let body = response.text().await?;
    Ok((status, serde_json::from_str(&body).unwrap_or(Value::String(body))))
}

#[tokio::test]
async fn the_authentication_matrix_at_ingress() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let jwks = keys.path().join("jwks.json");
    let key = SigningKey::generate("key-1")?;
    write_jwks(&jwks, &[&key])?;
    let issuer_flag = format!("{ISSUER}={}", jwks.display());
    let (_root, node) =
        start_single_node(1, &["--oidc-issuer", &issuer_flag, "--oidc-refresh-s", "1", "--oidc-skew-s", "30"]).await?;
    for name in ["default", "other"] {
        apply_resource(&node.admin, broker_object("default", name, json!({}))).await?;
    }
    let valid = format!("Bearer {}", key.sign(&claims())?);
    wait_until(Duration::from_secs(20), || async {
        Ok((post(&node.http, "warm-up", Some(&valid)).await?.0 == StatusCode::ACCEPTED).then_some(()))
    })
    .await?;

    let forger = SigningKey::generate("key-1")?; // The trusted key's id, another key.
    let stranger = SigningKey::generate("key-9")?;
    let unsigned = |header: Value| {
        format!(
            "Bearer {}.{}.",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims().to_string())
        )
    };
    let bearer = |token: String| format!("Bearer {token}");
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("no token", None, "missing"),
        ("basic auth", Some("Basic dXNlcjpwYXNz".into()), "not_bearer"),
        ("malformed", Some("Bearer not-a-jwt".into()), "malformed"),
        ("alg none", Some(unsigned(json!({"alg": "none", "typ": "JWT"}))), "algorithm"),
        ("alg HS256", Some(unsigned(json!({"alg": "HS256", "kid": "key-1"}))), "algorithm"),
        ("bad signature", Some(bearer(forger.sign(&claims())?)), "signature"),
        ("expired", Some(bearer(key.sign(&with(claims(), "exp", json!(now_s() - 120)))?)), "expired"),
        ("not yet valid", Some(bearer(key.sign(&with(claims(), "nbf", json!(now_s() + 120)))?)), "not_yet_valid"),
        ("wrong issuer", Some(bearer(key.sign(&with(claims(), "iss", json!("https://evil.example")))?)), "issuer"),
        (
            "wrong audience",
            Some(bearer(key.sign(&with(claims(), "aud", json!("eventing.knative.dev/broker/default/other")))?)),
            "audience",
        ),
        ("unknown key id", Some(bearer(stranger.sign(&claims())?)), "key_id"),
    ];
    for (what, authorization, check) in &cases {
        let (status, body) = post(&node.http, &format!("refused-{what}"), authorization.as_deref()).await?;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {body}");
        assert_eq!(body["field"], "Authorization", "{what}: {body}");
        assert_eq!(body["rule"], *check, "{what}: {body}");
        assert!(!body.to_string().contains("key-1"), "{what}: the body names no key: {body}");
    }
    assert_eq!(post(&node.http, "accepted-1", Some(&valid)).await?.0, StatusCode::ACCEPTED);
    let stored: Vec<String> = read_events(&node.admin, "broker/default/default", 1)
        .await?
        .iter()
        .map(|e| e.get_str("id").unwrap_or_default().to_string())
        .collect();
    assert_eq!(stored, ["warm-up", "accepted-1"], "no refused request stored anything");

    // Rotation: the JWKS now holds only a new key; the old key's tokens are refused, the new key's accepted.
    let rotated = SigningKey::generate("key-2")?;
    write_jwks(&jwks, &[&rotated])?;
    let new_valid = format!("Bearer {}", rotated.sign(&claims())?);
    wait_until(Duration::from_secs(20), || async {
        Ok((post(&node.http, "after-rotation", Some(&new_valid)).await?.0 == StatusCode::ACCEPTED).then_some(()))
    })
    .await?;
    let (status, body) = post(&node.http, "old-key", Some(&valid)).await?;
    assert_eq!((status, body["rule"].as_str()), (StatusCode::UNAUTHORIZED, Some("key_id")), "{body}");

    // The Broker tells senders which audience to mint tokens for.
    let mut resources = ResourcesClient::connect(format!("http://{}", node.admin)).await?;
    let reference = ResourceRef { kind: "Broker".into(), namespace: "default".into(), name: "default".into() };
    let broker: Value = serde_json::from_str(&resources.get(reference).await?.into_inner().object_json)?;
    assert_eq!(broker["status"]["address"]["audience"], AUDIENCE, "{broker}");
    Ok(())
}
