//! Sluice as the OIDC issuer of its own senders (docs/security.md): a subscriber that verifies Sluice's tokens
//! through the discovery document and JWKS accepts Trigger deliveries and dead letters, refuses a forged token,
//! and keeps verifying across a key rotation; with sender identity on, a Trigger delivering to another Broker
//! gets through that Broker's EventPolicy as the Trigger, and a reply its Broker's policies refuse is
//! dead-lettered, not stored.

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde_json::{Value, json};
use sluice_security::jwt::{TrustedIssuer, parse_jwks, verify};
use sluice_security::{AuthError, SigningKey};
use sluice_tests::subscriber::{Delivery, Reply, Subscriber};
use sluice_tests::{apply_resource, broker_object, read_events, send_event, start_single_node, wait_until};

const SUBSCRIBER_AUDIENCE: &str = "urn:t84:subscriber";
const SINK_AUDIENCE: &str = "urn:t84:dead-letter-sink";

fn now_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A verifier as a subscriber would run one: the issuer's keys, refetched from its JWKS every 200 ms.
#[derive(Clone)]
struct Verifier {
    issuer: String,
    keys: Arc<RwLock<Vec<TrustedIssuer>>>,
}

impl Verifier {
    /// Discovers `http`'s issuer and keeps its keys current until the runtime ends.
    async fn discover(http: &str) -> Result<(Verifier, String)> {
        let client = reqwest::Client::new();
        let discovery: Value =
            client.get(format!("http://{http}/.well-known/openid-configuration")).send().await?.json().await?;
        let issuer = discovery["issuer"].as_str().context("an issuer")?.to_string();
        let jwks_uri = discovery["jwks_uri"].as_str().context("a jwks_uri")?.to_string();
        let verifier = Verifier { issuer: issuer.clone(), keys: Arc::default() };
        verifier.refresh(&client, &jwks_uri).await?;
        let refreshing = verifier.clone();
        let uri = jwks_uri.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = refreshing.refresh(&client, &uri).await;
            }
        });
        Ok((verifier, jwks_uri))
    }

    async fn refresh(&self, client: &reqwest::Client, jwks_uri: &str) -> Result<()> {
        let body = client.get(jwks_uri).send().await?.bytes().await?;
        let keys = parse_jwks(&body).map_err(anyhow::Error::msg)?;
        *self.keys.write().unwrap_or_else(std::sync::PoisonError::into_inner) =
            vec![TrustedIssuer { issuer: self.issuer.clone(), keys }];
        Ok(())
    }

    fn verify(&self, authorization: Option<&str>, audience: &str) -> Result<sluice_security::Claims, AuthError> {
        let token = sluice_security::jwt::bearer_token(authorization)?;
        let keys = self.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        verify(token, &keys, audience, now_s(), 5)
    }
}

fn kid_of(delivery: &Delivery) -> String {
    let token = delivery.header("authorization").unwrap_or_default().trim_start_matches("Bearer ");
    let header = token.split('.').next().unwrap_or_default();
    let decoded = base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header).unwrap_or_default();
    serde_json::from_slice::<Value>(&decoded).ok().and_then(|h| h["kid"].as_str().map(String::from)).unwrap_or_default()
}

/// What a verifying subscriber decided for each request, at receipt: (event id, the check that failed or
/// `None`).
type Verdicts = Arc<std::sync::Mutex<Vec<(String, Option<&'static str>)>>>;

/// Answers 202 to a request whose token verifies for `audience` when it arrives, else 401 naming the check
/// (the Trigger's retries then give up: such events end as dead letters); records each verdict.
fn verifying(verifier: Verifier, audience: &'static str, verdicts: Verdicts) -> sluice_tests::subscriber::Behavior {
    Arc::new(move |delivery: &Delivery, _| {
        let id = delivery.event().ok().and_then(|e| e.get("id").map(String::from)).unwrap_or_default();
        let verdict = verifier.verify(delivery.header("authorization"), audience).err().map(|e| e.check());
        verdicts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push((id, verdict));
        match verdict {
            None => Reply::status(202),
            Some(check) => Reply::status(401).with_body(check),
        }
    })
}

#[tokio::test]
async fn a_subscriber_verifies_sluices_tokens_and_refuses_a_forged_one() -> Result<()> {
    let (_root, node) = start_single_node(
        1,
        &[
            "--signing-key-rotation-s",
            "6",
            "--signing-key-publish-lead-s",
            "1",
            "--sender-token-ttl-s",
            "10",
            "--oidc-skew-s",
            "5",
        ],
    )
    .await?;
    let (verifier, jwks_uri) = Verifier::discover(&node.http).await?;
    assert_eq!(verifier.issuer, format!("http://{}", node.http), "the issuer defaults to the node's address");
    assert_eq!(jwks_uri, format!("http://{}/.well-known/jwks.json", node.http));
    // The node's first key is published once the cluster is initialised; the verifier has it before any
    // delivery (a subscriber would refetch on an unknown kid; this one refreshes every 200 ms).
    wait_until(Duration::from_secs(20), || async {
        let keys = verifier.keys.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        Ok(keys.first().is_some_and(|issuer| !issuer.keys.is_empty()).then_some(()))
    })
    .await?;

    let verdicts = Verdicts::default();
    let subscriber = Subscriber::start(verifying(verifier.clone(), SUBSCRIBER_AUDIENCE, verdicts.clone())).await?;
    let sink = Subscriber::start(verifying(verifier.clone(), SINK_AUDIENCE, Verdicts::default())).await?;
    let refusing = Subscriber::start(Arc::new(|_, _| Reply::status(500))).await?;
    apply_resource(&node.admin, broker_object("default", "default", json!({}))).await?;
    let trigger = |name: &str, event_type: &str, uri: &str| {
        json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {
                "broker": "default",
                "filter": {"attributes": {"type": event_type}},
                "subscriber": {"uri": uri, "audience": SUBSCRIBER_AUDIENCE},
                "delivery": {"retry": 0, "deadLetterSink": {"uri": sink.url(), "audience": SINK_AUDIENCE}},
            },
        })
    };
    apply_resource(&node.admin, trigger("verified", "t84.ok", &subscriber.url())).await?;
    apply_resource(&node.admin, trigger("failing", "t84.fail", &refusing.url())).await?;

    let client = reqwest::Client::new();
    let send = |id: String, event_type: &'static str| {
        let client = client.clone();
        let http = node.http.clone();
        async move { send_event(&client, &http, "/default/default", &id, event_type, &[], "{}").await }
    };
    wait_until(Duration::from_secs(20), || async {
        Ok((send(format!("warm-{}", rand_suffix()), "t84.ok").await? == 202).then_some(()))
    })
    .await?;
    for i in 0..20 {
        assert_eq!(send(format!("ok-{i}"), "t84.ok").await?, 202);
    }
    assert_eq!(send("fail-1".into(), "t84.fail").await?, 202);

    // Every delivery carries a token that verifies, for the Trigger's identity, through the JWKS alone.
    let deliveries = subscriber
        .wait_until(Duration::from_secs(30), |d| {
            d.iter().filter(|d| d.event().is_ok_and(|e| e.get("id").is_some_and(|id| id.starts_with("ok-")))).count()
                >= 20
        })
        .await?;
    for delivery in &deliveries {
        let claims = verifier.verify(delivery.header("authorization"), SUBSCRIBER_AUDIENCE).map_err(|e| {
            anyhow::anyhow!(
                "delivery {:?} does not verify: {e}",
                delivery.event().ok().and_then(|e| e.get("id").map(String::from))
            )
        })?;
        assert_eq!(claims.subject, "system:serviceaccount:default:sluice-trigger-verified");
        assert_eq!(claims.issuer, verifier.issuer);
    }
    // The dead letter of the failing Trigger goes to the sink with a token for the sink's audience.
    let is_fail_1 = |d: &Delivery| d.event().is_ok_and(|e| e.get("id") == Some("fail-1"));
    let dead: Vec<Delivery> = sink
        .wait_until(Duration::from_secs(30), |d| d.iter().any(is_fail_1))
        .await?
        .into_iter()
        .filter(is_fail_1)
        .collect();
    let claims = verifier.verify(dead[0].header("authorization"), SINK_AUDIENCE).map_err(anyhow::Error::msg)?;
    assert_eq!(claims.subject, "system:serviceaccount:default:sluice-trigger-failing");
    assert!(
        verifier.verify(dead[0].header("authorization"), SUBSCRIBER_AUDIENCE).is_err(),
        "a token is good for its own audience only"
    );

    // A forged token (the current kid, another key) and a missing one are refused by the same subscriber.
    let kid = kid_of(&deliveries[0]);
    let forger = SigningKey::generate(&kid)?;
    let forged = forger.sign(&json!({
        "iss": verifier.issuer, "sub": "system:serviceaccount:default:sluice-trigger-verified",
        "aud": [SUBSCRIBER_AUDIENCE], "exp": now_s() + 60,
    }))?;
    for (what, authorization, check) in
        [("forged", Some(format!("Bearer {forged}")), "signature"), ("no token", None, "missing")]
    {
        let mut request = client
            .post(subscriber.url())
            .header("ce-specversion", "1.0")
            .header("ce-id", format!("forged-{what}"))
            .header("ce-source", "/t84")
            .header("ce-type", "t84.ok");
        if let Some(authorization) = authorization {
            request = request.header("authorization", authorization);
        }
        let response = request.send().await?;
        assert_eq!(response.status().as_u16(), 401, "{what}");
        assert_eq!(response.text().await?, check, "{what}");
    }

    // Keys rotate (every 6 s here): a new kid appears in the JWKS before it signs, deliveries switch to it and
    // still verify, and the old kid stays published while its tokens may be alive.
    let rotated = wait_until(Duration::from_secs(30), || async {
        send(format!("later-{}", rand_suffix()), "t84.ok").await?;
        let latest = subscriber.deliveries().last().map(kid_of).unwrap_or_default();
        Ok((!latest.is_empty() && latest != kid).then_some(latest))
    })
    .await?;
    let jwks: Value = client.get(&jwks_uri).send().await?.json().await?;
    let kids: Vec<&str> = jwks["keys"].as_array().into_iter().flatten().filter_map(|k| k["kid"].as_str()).collect();
    assert!(kids.contains(&rotated.as_str()) && kids.contains(&kid.as_str()), "{kids:?} holds {kid} and {rotated}");
    // Every delivery from Sluice, before and across the rotation, verified when it arrived.
    let refused: Vec<(String, Option<&str>)> = verdicts
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .iter()
        .filter(|(id, verdict)| !id.starts_with("forged-") && verdict.is_some())
        .cloned()
        .collect();
    assert!(refused.is_empty(), "deliveries refused at receipt: {refused:?}");
    Ok(())
}

fn rand_suffix() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[tokio::test]
async fn triggers_send_as_themselves_through_event_policies() -> Result<()> {
    // Sender identity on at ingress: the test publishes with a key of its own issuer; the Triggers' deliveries to
    // Broker `b` carry Sluice's tokens, which the node trusts without a flag.
    let keys = tempfile::tempdir()?;
    let jwks = keys.path().join("jwks.json");
    let publisher_key = SigningKey::generate("publisher")?;
    std::fs::write(&jwks, json!({"keys": [publisher_key.jwk()]}).to_string())?;
    let issuer = "https://issuer.t84.example";
    let (_root, node) = start_single_node(1, &["--oidc-issuer", &format!("{issuer}={}", jwks.display())]).await?;
    let admin = node.admin.clone();
    for name in ["a", "b"] {
        apply_resource(&admin, broker_object("team", name, json!({}))).await?;
    }
    let policy = |name: &str, to: &str, from: Value| {
        json!({"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
               "metadata": {"name": name, "namespace": "team"},
               "spec": {"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": to}}],
                        "from": from}})
    };
    let trigger_ref =
        |name: &str| json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "name": name}});
    // Into b: only what Trigger `fwd` sends. Into a: only the publisher.
    apply_resource(&admin, policy("only-fwd", "b", json!([trigger_ref("fwd")]))).await?;
    apply_resource(&admin, policy("only-publisher", "a", json!([{"sub": "system:serviceaccount:team:publisher"}])))
        .await?;
    let broker_b = json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "b"}});
    let answering = Subscriber::start(Arc::new(|_, _| {
        Reply::status(200)
            .with_header("ce-specversion", "1.0")
            .with_header("ce-id", "answer-1")
            .with_header("ce-source", "/t84/echo")
            .with_header("ce-type", "t84.answer")
            .with_body("{}")
    }))
    .await?;
    let trigger = |name: &str, event_type: &str, subscriber: Value| {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
               "metadata": {"name": name, "namespace": "team"},
               "spec": {"broker": "a", "filter": {"attributes": {"type": event_type}}, "subscriber": subscriber,
                        "delivery": {"retry": 0}}})
    };
    apply_resource(&admin, trigger("fwd", "t84.order", broker_b.clone())).await?;
    apply_resource(&admin, trigger("stray", "t84.stray", broker_b)).await?;
    apply_resource(&admin, trigger("echo", "t84.ask", json!({"uri": answering.url()}))).await?;

    let token = publisher_key.sign(&json!({
        "iss": issuer, "sub": "system:serviceaccount:team:publisher",
        "aud": "eventing.knative.dev/broker/team/a", "exp": now_s() + 600,
    }))?;
    let client = reqwest::Client::new();
    let publish = |id: &str, event_type: &str| {
        client
            .post(format!("http://{}/team/a", node.http))
            .header("authorization", format!("Bearer {token}"))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/t84")
            .header("ce-type", event_type)
            .body("{}")
            .send()
    };
    // Policies and Triggers take effect as the node applies them: the first order that reaches b shows both.
    let mut sent = 0;
    let admin_ref = &admin;
    wait_until(Duration::from_secs(30), || {
        sent += 1;
        let id = format!("order-{sent}");
        let publish = publish(&id, "t84.order");
        async move {
            assert_eq!(publish.await?.status().as_u16(), 202);
            // Give the dispatcher a moment before asking again (wait_until also paces the loop).
            let reached = read_events(admin_ref, "broker/team/b", 1).await?;
            Ok((!reached.is_empty()).then_some(()))
        }
    })
    .await?;
    // Nobody else can send as the Trigger: a token naming it, signed with another key under a real kid of the
    // cluster's issuer, is refused at b's ingress.
    let issuer_of_node = format!("http://{}", node.http);
    let jwks: Value = client.get(format!("{issuer_of_node}/.well-known/jwks.json")).send().await?.json().await?;
    let kid = jwks["keys"][0]["kid"].as_str().context("a published key")?.to_string();
    let forged = SigningKey::generate(&kid)?.sign(&json!({
        "iss": issuer_of_node, "sub": "system:serviceaccount:team:sluice-trigger-fwd",
        "aud": "eventing.knative.dev/broker/team/b", "exp": now_s() + 600,
    }))?;
    let response = client
        .post(format!("http://{}/team/b", node.http))
        .header("authorization", format!("Bearer {forged}"))
        .header("ce-specversion", "1.0")
        .header("ce-id", "forged-1")
        .header("ce-source", "/t84")
        .header("ce-type", "t84.order")
        .body("{}")
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await?;
    assert_eq!(body["rule"], "signature", "{body}");
    assert_eq!(publish("stray-1", "t84.stray").await?.status().as_u16(), 202);
    assert_eq!(publish("ask-1", "t84.ask").await?.status().as_u16(), 202);

    // `stray` is not in b's policy: its delivery is refused (403) and dead-lettered. `echo`'s reply is not from
    // the publisher: refused by a's policy, so the original event is dead-lettered and nothing enters a.
    let reason_of = |events: &[sluice_cloudevent::CloudEvent]| {
        events.first().and_then(|e| e.get_str("sluiceerrorreason").map(String::from)).unwrap_or_default()
    };
    let stray_dead = wait_until(Duration::from_secs(30), || async {
        let dead = read_events(&admin, "deadletter/trigger/team/stray", 1).await?;
        Ok((!dead.is_empty()).then_some(dead))
    })
    .await?;
    assert_eq!(
        stray_dead[0].get("knativeerrorcode").map(|v| v.to_canonical_string()).as_deref(),
        Some("403"),
        "{}",
        reason_of(&stray_dead)
    );
    let echo_dead = wait_until(Duration::from_secs(30), || async {
        let dead = read_events(&admin, "deadletter/trigger/team/echo", 1).await?;
        Ok((!dead.is_empty()).then_some(dead))
    })
    .await?;
    let reason = reason_of(&echo_dead);
    assert!(reason.contains("not authorized") && reason.contains("sluice-trigger-echo"), "{reason}");
    let in_a: Vec<String> = read_events(&admin, "broker/team/a", 1)
        .await?
        .iter()
        .map(|e| e.get_str("type").unwrap_or_default().to_string())
        .collect();
    assert!(!in_a.iter().any(|t| t == "t84.answer"), "the refused reply was not stored: {in_a:?}");
    let in_b: Vec<String> = read_events(&admin, "broker/team/b", 1)
        .await?
        .iter()
        .map(|e| e.get_str("type").unwrap_or_default().to_string())
        .collect();
    assert!(!in_b.is_empty() && in_b.iter().all(|t| t == "t84.order"), "only fwd's orders entered b: {in_b:?}");
    Ok(())
}
