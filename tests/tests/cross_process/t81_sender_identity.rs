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

/// Distinct event ids, so no accepted event is a duplicate of another.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A token of `subject` for the Broker `namespace/name`.
fn token_for(key: &SigningKey, subject: &str, namespace: &str, name: &str) -> Result<String> {
    let claims = json!({"iss": ISSUER, "sub": subject, "exp": now_s() + 600,
                        "aud": format!("eventing.knative.dev/broker/{namespace}/{name}")});
    Ok(format!("Bearer {}", key.sign(&claims)?))
}

async fn send(
    http: &str,
    namespace: &str,
    broker: &str,
    event_type: &str,
    authorization: &str,
) -> Result<(StatusCode, Value)> {
    let response = reqwest::Client::new()
        .post(format!("http://{http}/{namespace}/{broker}"))
        .header("ce-specversion", "1.0")
        .header("ce-id", format!("{event_type}-{}", NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)))
        .header("ce-source", "/t81")
        .header("ce-type", event_type)
        .header("authorization", authorization)
        .body("hello")
        .send()
        .await?;
    let status = response.status();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn get_object(admin: &str, kind: &str, namespace: &str, name: &str) -> Result<Value> {
    let mut resources = ResourcesClient::connect(format!("http://{admin}")).await?;
    let reference = ResourceRef { kind: kind.into(), namespace: namespace.into(), name: name.into() };
    Ok(serde_json::from_str(&resources.get(reference).await?.into_inner().object_json)?)
}

#[tokio::test]
async fn event_policies_decide_who_sends_what() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let jwks = keys.path().join("jwks.json");
    let key = SigningKey::generate("key-1")?;
    write_jwks(&jwks, &[&key])?;
    let issuer_flag = format!("{ISSUER}={}", jwks.display());
    let (_root, node) = start_single_node(1, &["--oidc-issuer", &issuer_flag]).await?; // allow-same-namespace
    let admin = node.admin.clone();
    for (name, labels) in [("open", json!({})), ("guarded", json!({})), ("gold", json!({"tier": "gold"}))] {
        let mut broker = broker_object("team", name, json!({}));
        broker["metadata"]["labels"] = labels;
        apply_resource(&admin, broker).await?;
    }
    let trigger = sluice_tests::trigger_object("team", "fwd", "open", "http://127.0.0.1:9/", json!({}), json!({}));
    apply_resource(&admin, trigger).await?;
    let policy = |name: &str, spec: Value| {
        json!({"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
               "metadata": {"name": name, "namespace": "team"}, "spec": spec})
    };
    apply_resource(
        &admin,
        policy(
            "orders-only",
            json!({
                "to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "guarded"}}],
                "from": [
                    {"sub": "system:serviceaccount:team:orders"},
                    {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "name": "fwd"}},
                    {"ref": {"apiVersion": "sources.knative.dev/v1", "kind": "PingSource", "name": "gone"}},
                ],
                "filters": [{"any": [{"prefix": {"type": "order."}}, {"cesql": "type LIKE '%.audit'"}]}],
            }),
        ),
    )
    .await?;
    apply_resource(
        &admin,
        policy(
            "ops-to-gold",
            json!({
                "to": [{"selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "matchLabels": {"tier": "gold"}}}],
                "from": [{"sub": "system:serviceaccount:ops:*"}],
            }),
        ),
    )
    .await?;

    let orders = "system:serviceaccount:team:orders";
    let neighbour = "system:serviceaccount:team:neighbour";
    let oncall = "system:serviceaccount:ops:oncall";
    let trigger_identity = "system:serviceaccount:team:sluice-trigger-fwd";
    let cases = [
        ("default mode, same namespace", neighbour, "open", "any.thing", StatusCode::ACCEPTED),
        ("default mode, other namespace", oncall, "open", "any.thing", StatusCode::FORBIDDEN),
        ("from sub, filter prefix", orders, "guarded", "order.created", StatusCode::ACCEPTED),
        ("from sub, filter cesql", orders, "guarded", "billing.audit", StatusCode::ACCEPTED),
        ("from sub, no filter matches", orders, "guarded", "invoice.created", StatusCode::FORBIDDEN),
        ("from ref to a Trigger", trigger_identity, "guarded", "order.forwarded", StatusCode::ACCEPTED),
        ("same namespace but not in from", neighbour, "guarded", "order.created", StatusCode::FORBIDDEN),
        ("subject glob via selector", oncall, "gold", "any.thing", StatusCode::ACCEPTED),
        ("selector target, not in from", orders, "gold", "any.thing", StatusCode::FORBIDDEN),
    ];
    // Policies take effect as the ingress sees the objects: await the first decision that needs them.
    let guarded_refuses = token_for(&key, neighbour, "team", "guarded")?;
    wait_until(Duration::from_secs(20), || async {
        Ok((send(&node.http, "team", "guarded", "order.created", &guarded_refuses).await?.0 == StatusCode::FORBIDDEN)
            .then_some(()))
    })
    .await?;
    let mut accepted = 0;
    for (what, subject, broker, event_type, expected) in cases {
        let (status, body) =
            send(&node.http, "team", broker, event_type, &token_for(&key, subject, "team", broker)?).await?;
        assert_eq!(status, expected, "{what}: {body}");
        if status == StatusCode::FORBIDDEN {
            assert_eq!(body["subject"], subject, "{what}: {body}");
            assert!(body["rule"].as_str().is_some_and(|r| !r.is_empty()), "{what}: {body}");
        } else {
            accepted += 1;
        }
    }
    let stored: usize = {
        let mut total = 0;
        for broker in ["open", "guarded", "gold"] {
            total += read_events(&admin, &format!("broker/team/{broker}"), 1).await?.len();
        }
        total
    };
    assert_eq!(stored, accepted, "only the accepted requests stored events");

    // Status: the policy names what it resolved and what it could not; the Brokers list the ready policies
    // applied, and one that applies and is not ready makes its Broker not Ready (Knative's reconcilers).
    let condition = |object: &Value, kind: &str| {
        object["status"]["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == kind).cloned())
            .unwrap_or_default()
    };
    let policy_object = get_object(&admin, "EventPolicy", "team", "orders-only").await?;
    assert_eq!(policy_object["status"]["from"], json!([orders, trigger_identity]), "{policy_object}");
    assert_eq!(condition(&policy_object, "SubjectsResolved")["status"], "False", "{policy_object}");
    assert_eq!(condition(&policy_object, "AuthenticationEnabled")["status"], "True", "{policy_object}");
    let guarded = get_object(&admin, "Broker", "team", "guarded").await?;
    assert_eq!(guarded["status"]["policies"], Value::Null, "{guarded}: none is ready (the field is omitempty)");
    let not_ready = condition(&guarded, "EventPoliciesReady");
    assert_eq!((&not_ready["status"], &not_ready["reason"]), (&json!("False"), &json!("EventPoliciesNotReady")));
    assert!(not_ready["message"].as_str().is_some_and(|m| m.contains("orders-only")), "{guarded}");
    assert_eq!(condition(&guarded, "Ready")["status"], "False", "{guarded}");
    let gold = get_object(&admin, "Broker", "team", "gold").await?;
    assert_eq!(
        gold["status"]["policies"],
        json!([{"apiVersion": "eventing.knative.dev/v1alpha1", "name": "ops-to-gold"}])
    );
    assert_eq!(condition(&gold, "EventPoliciesReady")["status"], "True", "{gold}");
    let open = get_object(&admin, "Broker", "team", "open").await?;
    let default_mode = condition(&open, "EventPoliciesReady");
    assert_eq!(default_mode["reason"], "DefaultAuthorizationMode", "{open}");
    assert!(default_mode["message"].as_str().is_some_and(|m| m.contains("allow-same-namespace")), "{open}");
    let fwd = get_object(&admin, "Trigger", "team", "fwd").await?;
    assert_eq!(fwd["status"]["auth"]["serviceAccountName"], "sluice-trigger-fwd", "{fwd}");
    Ok(())
}

#[tokio::test]
async fn default_authorization_modes_deny_all_and_allow_all() -> Result<()> {
    let keys = tempfile::tempdir()?;
    let jwks = keys.path().join("jwks.json");
    let key = SigningKey::generate("key-1")?;
    write_jwks(&jwks, &[&key])?;
    let issuer_flag = format!("{ISSUER}={}", jwks.display());
    for (mode, same_namespace, other_namespace) in [
        ("deny-all", StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        ("allow-all", StatusCode::ACCEPTED, StatusCode::ACCEPTED),
    ] {
        let (_root, node) =
            start_single_node(1, &["--oidc-issuer", &issuer_flag, "--default-authorization-mode", mode]).await?;
        apply_resource(&node.admin, broker_object("team", "b", json!({}))).await?;
        let same = token_for(&key, "system:serviceaccount:team:a", "team", "b")?;
        let status = wait_until(Duration::from_secs(20), || async {
            let status = send(&node.http, "team", "b", "t", &same).await?.0;
            Ok((status != StatusCode::NOT_FOUND && status != StatusCode::SERVICE_UNAVAILABLE).then_some(status))
        })
        .await?;
        assert_eq!(status, same_namespace, "{mode}, same namespace");
        let other = token_for(&key, "system:serviceaccount:other:a", "team", "b")?;
        assert_eq!(send(&node.http, "team", "b", "t", &other).await?.0, other_namespace, "{mode}, other namespace");
    }
    Ok(())
}
