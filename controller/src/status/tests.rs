//! Status of the eventing kinds: resolving destinations, conditions, propagation.

use super::*;

fn env() -> Environment {
    Environment::new("http://127.0.0.1:8080")
}

fn broker(name: &str, dls: Option<Value>) -> Value {
    let mut b = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
                       "metadata": {"name": name, "namespace": "default", "generation": 3}, "spec": {}});
    if let Some(dls) = dls {
        b["spec"]["delivery"] = json!({"deadLetterSink": dls});
    }
    b
}

fn trigger(subscriber: Value) -> Value {
    json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
           "metadata": {"name": "t", "namespace": "default", "generation": 1},
           "spec": {"broker": "default", "subscriber": subscriber}})
}

fn condition_of<'a>(status: &'a Value, kind: &str) -> &'a Value {
    status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == kind)).expect("condition present")
}

#[test]
fn event_policies_ready_says_what_decides_who_gets_in() {
    use crate::policy::DefaultAuthorization;
    let b = broker("default", None);
    let policy = |name: &str, from: Value| {
        json!({"apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
               "metadata": {"name": name, "namespace": "default"}, "spec": {"from": from}})
    };
    let ready = policy("ready", json!([{"sub": "system:serviceaccount:default:a"}]));
    let unresolved = policy("unresolved", json!([{"ref": {"apiVersion": "v1", "kind": "Trigger", "name": "missing"}}]));
    let on = env().with_audiences(true);
    // What applies, where, and the condition's status and reason, and the policies listed.
    type Case = (&'static str, Vec<Value>, Environment, &'static str, &'static str, Value);
    let cases: [Case; 6] = [
        ("sender identity off, no policy", vec![], env(), "True", "OIDCDisabled", Value::Null),
        (
            "sender identity off: no policy is ready",
            vec![ready.clone()],
            env(),
            "False",
            "EventPoliciesNotReady",
            Value::Null,
        ),
        ("no policy", vec![], on.clone(), "True", "DefaultAuthorizationMode", Value::Null),
        (
            "no policy, deny-all",
            vec![],
            on.clone().with_default_authorization(DefaultAuthorization::DenyAll),
            "True",
            "DefaultAuthorizationMode",
            Value::Null,
        ),
        (
            "a ready policy",
            vec![ready.clone()],
            on.clone(),
            "True",
            "",
            json!([{"apiVersion": "eventing.knative.dev/v1alpha1", "name": "ready"}]),
        ),
        (
            "one not ready",
            vec![ready, unresolved],
            on,
            "False",
            "EventPoliciesNotReady",
            json!([{"apiVersion": "eventing.knative.dev/v1alpha1", "name": "ready"}]),
        ),
    ];
    for (what, policies, environment, expected, reason, listed) in cases {
        let mut objects = vec![b.clone()];
        objects.extend(policies);
        let status = reconcile(&b, &World { objects: &objects }, &environment);
        let condition = condition_of(&status, "EventPoliciesReady");
        assert_eq!(condition["status"], expected, "{what}: {condition}");
        assert_eq!(condition["reason"].as_str().unwrap_or_default(), reason, "{what}: {condition}");
        assert_eq!(status["policies"], listed, "{what}");
        assert_eq!(condition_of(&status, "Ready")["status"], expected, "{what}: Ready follows");
    }
    let deny_all = env().with_audiences(true).with_default_authorization(DefaultAuthorization::DenyAll);
    let status = reconcile(&b, &World { objects: std::slice::from_ref(&b) }, &deny_all);
    assert!(condition_of(&status, "EventPoliciesReady")["message"].as_str().is_some_and(|m| m.contains("deny-all")));
}

#[test]
fn addresses_follow_the_transport_encryption_mode() {
    let b = broker("default", None);
    let objects = [b.clone()];
    let world = World { objects: &objects };
    let https = |plaintext_too| HttpsIngress {
        base: "https://127.0.0.1:8080".into(),
        ca_certs: "-----BEGIN CERTIFICATE-----".into(),
        plaintext_too,
    };
    let http = json!({"name": "http", "url": "http://127.0.0.1:8080/default/default"});
    let secure = json!({"name": "https", "url": "https://127.0.0.1:8080/default/default",
                        "CACerts": "-----BEGIN CERTIFICATE-----"});
    for (mode, environment, address, all) in [
        ("disabled", env(), &http, json!([http])),
        ("permissive", env().with_https(Some(https(true))), &secure, json!([secure, http])),
        ("strict", env().with_https(Some(https(false))), &secure, json!([secure])),
    ] {
        let status = reconcile(&b, &world, &environment);
        assert_eq!(&status["address"], address, "{mode}");
        assert_eq!(status["addresses"], all, "{mode}");
        let to_broker: Destination = serde_json::from_value(
            json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}),
        )
        .expect("destination");
        assert_eq!(
            resolve(&to_broker, "default", &world, &environment).as_ref(),
            Ok(&address["url"].as_str().expect("url").to_string()),
            "{mode}"
        );
    }
}

#[test]
fn a_resolved_address_carries_what_to_trust() {
    let objects = [broker("default", None)];
    let world = World { objects: &objects };
    let https = env().with_https(Some(HttpsIngress {
        base: "https://127.0.0.1:8080".into(),
        ca_certs: "cluster CA".into(),
        plaintext_too: true,
    }));
    let destination = |d: Value| -> Destination { serde_json::from_value(d).expect("destination") };
    let to_broker =
        destination(json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}}));
    let own_ca = destination(json!({"uri": "https://sink.example/x", "CACerts": "sink CA", "audience": "sink"}));
    let plain_uri = destination(json!({"uri": "https://sink.example/x"}));
    for (what, d, environment, url, ca) in [
        ("broker, tls off", &to_broker, env(), "http://127.0.0.1:8080/default/default", None),
        ("broker, tls on", &to_broker, https.clone(), "https://127.0.0.1:8080/default/default", Some("cluster CA")),
        ("uri with CACerts", &own_ca, https.clone(), "https://sink.example/x", Some("sink CA")),
        ("uri without", &plain_uri, https.clone(), "https://sink.example/x", None),
    ] {
        let resolved = resolve_address(d, "default", &world, &environment).expect("resolves");
        assert_eq!(resolved.url, url, "{what}");
        assert_eq!(resolved.ca_certs.as_deref(), ca, "{what}");
    }
    assert_eq!(
        resolve_address(&own_ca, "default", &world, &https).expect("resolves").audience.as_deref(),
        Some("sink")
    );
}

#[test]
fn a_trigger_waits_for_its_broker() {
    let t = trigger(json!({"uri": "http://svc/x"}));
    let alone = [t.clone()];
    let status = reconcile(&t, &World { objects: &alone }, &env());
    assert_eq!(condition_of(&status, "Ready")["status"], "False");
    assert_eq!(condition_of(&status, "Ready")["reason"], "BrokerDoesNotExist");
    let both = [t.clone(), broker("default", None)];
    let status = reconcile(&t, &World { objects: &both }, &env());
    assert_eq!(condition_of(&status, "Ready")["status"], "True");
    assert_eq!(status["subscriberUri"], "http://svc/x");
    // Regression: a Broker that is not Ready (its dead-letter sink does not resolve) left its Triggers
    // Ready; Knative's conformance says a Trigger is not Ready then.
    let dead_letter =
        json!({"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "no"}});
    let not_ready = [t.clone(), broker("default", Some(dead_letter))];
    let status = reconcile(&t, &World { objects: &not_ready }, &env());
    assert_eq!(condition_of(&status, "BrokerReady")["status"], "False");
    assert_eq!(condition_of(&status, "Ready")["reason"], "BrokerNotReady");

    // Knative's conformance: a subscriber or dead-letter sink that cannot be resolved reports "".
    let mut unresolved =
        trigger(json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "gone"}}));
    unresolved["spec"]["delivery"] =
        json!({"deadLetterSink": {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "gone"}}});
    let objects = [unresolved.clone(), broker("default", None)];
    let status = reconcile(&unresolved, &World { objects: &objects }, &env());
    assert_eq!(condition_of(&status, "SubscriberResolved")["status"], "False");
    assert_eq!((&status["subscriberUri"], &status["deadLetterSinkUri"]), (&json!(""), &json!("")), "{status}");
}

/// Knative's layout and rules for a Subscription: what it resolves to under `physicalSubscription`, and its
/// channel must be a Ready channel.
#[test]
fn a_subscription_resolves_under_physical_subscription_and_waits_for_a_ready_channel() {
    let subscription = |channel: Value| {
        json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Subscription",
            "metadata": {"name": "s", "namespace": "default", "generation": 1},
            "spec": {"channel": channel, "subscriber": {"uri": "http://svc/x"},
                "delivery": {"deadLetterSink": {"uri": "http://dlq/"}}}})
    };
    let channel = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
        "metadata": {"name": "c", "namespace": "default"}});
    let s = subscription(json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"}));
    let objects = [s.clone(), channel.clone()];
    let status = reconcile(&s, &World { objects: &objects }, &env());
    assert_eq!(condition_of(&status, "Ready")["status"], "True");
    assert_eq!(status["physicalSubscription"]["subscriberUri"], "http://svc/x");
    assert_eq!(status["physicalSubscription"]["deadLetterSinkUri"], "http://dlq/");
    assert!(status.get("subscriberUri").is_none() && status.get("deadLetterSinkUri").is_none(), "{status}");

    let on_a_broker =
        subscription(json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "default"}));
    let objects = [on_a_broker.clone(), broker("default", None)];
    let status = reconcile(&on_a_broker, &World { objects: &objects }, &env());
    assert_eq!(condition_of(&status, "ChannelReady")["status"], "False", "a Broker is no channel");

    let mut not_ready = channel.clone();
    not_ready["spec"] = json!({"delivery": {"deadLetterSink": {"ref":
        {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "missing"}}}});
    let objects = [s.clone(), not_ready];
    let status = reconcile(&s, &World { objects: &objects }, &env());
    assert_eq!(condition_of(&status, "Ready")["reason"], "ChannelNotReady");
}

#[test]
fn destinations_resolve() {
    let world_objects = [broker("default", None), broker("other", None)];
    let world = World { objects: &world_objects };
    let resolve_json = |d: Value| resolve(&serde_json::from_value(d).expect("destination"), "default", &world, &env());
    assert_eq!(resolve_json(json!({"uri": "https://x/y"})), Ok("https://x/y".into()));
    assert_eq!(
        resolve_json(json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "svc"}})),
        Ok("http://svc.default.svc.cluster.local".into())
    );
    assert_eq!(
        resolve_json(
            json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "svc", "namespace": "ns"}, "uri": "/hook"})
        ),
        Ok("http://svc.ns.svc.cluster.local/hook".into())
    );
    assert_eq!(
        resolve_json(json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "other"}})),
        Ok("http://127.0.0.1:8080/default/other".into())
    );
    let missing =
        resolve_json(json!({"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "nope"}}));
    assert_eq!(missing.expect_err("missing").0, "DestinationNotFound");
    let serving =
        resolve_json(json!({"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "ksvc"}}));
    assert_eq!(serving.expect_err("serving").0, "DestinationNotFound", "no such Service");
}

#[test]
fn broker_status_has_address_and_dead_letter_conditions() {
    let b = broker(
        "default",
        Some(json!({"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "dlq"}})),
    );
    let alone = [b.clone()];
    let status = reconcile(&b, &World { objects: &alone }, &env());
    assert_eq!(status["address"]["url"], "http://127.0.0.1:8080/default/default");
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(condition_of(&status, "DeadLetterSinkResolved")["status"], "False");
    assert_eq!(condition_of(&status, "Ready")["status"], "False");
    let dlq = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "metadata": {"name": "dlq", "namespace": "default"}});
    let with_dlq = [b.clone(), dlq];
    let status = reconcile(&b, &World { objects: &with_dlq }, &env());
    assert_eq!(condition_of(&status, "Ready")["status"], "True");
    assert_eq!(status["deadLetterSinkUri"], "http://127.0.0.1:8080/channels/default/dlq");
}

/// Each kind's conditions are Knative's condition set for it (its reconcilers' `NewLivingConditionSet`, less
/// the OIDC identity Sluice does not make): a review found a Subscription with `Resolved` (Knative's
/// `ReferencesResolved`, `AddedToChannel`), a Trigger without `SubscriptionReady`, a Channel with the IMC's.
#[test]
fn each_kind_has_knatives_condition_types() {
    let channel = |kind: &str| json!({"apiVersion": "messaging.knative.dev/v1", "kind": kind, "metadata": {"name": "c", "namespace": "default"}});
    let subscription = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Subscription",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "c"},
            "subscriber": {"uri": "http://svc/"}}});
    let objects =
        [broker("default", None), channel("Channel"), subscription.clone(), trigger(json!({"uri": "http://svc/"}))];
    let world = World { objects: &objects };
    let cases: [(&Value, &[&str]); 5] = [
        (
            &objects[0],
            &[
                "Ready",
                "EventPoliciesReady",
                "Addressable",
                "IngressReady",
                "FilterReady",
                "TriggerChannelReady",
                "DeadLetterSinkResolved",
            ],
        ),
        (&objects[1], &["Ready", "EventPoliciesReady", "Addressable", "BackingChannelReady", "DeadLetterSinkResolved"]),
        (
            &channel("InMemoryChannel"),
            &[
                "Ready",
                "EventPoliciesReady",
                "Addressable",
                "ChannelServiceReady",
                "DispatcherReady",
                "ServiceReady",
                "EndpointsReady",
                "DeadLetterSinkResolved",
            ],
        ),
        (&objects[2], &["Ready", "ChannelReady", "AddedToChannel", "ReferencesResolved"]),
        (
            &objects[3],
            &[
                "Ready",
                "BrokerReady",
                "SubscriptionReady",
                "DependencyReady",
                "SubscriberResolved",
                "DeadLetterSinkResolved",
            ],
        ),
    ];
    for (object, types) in cases {
        let status = reconcile(object, &world, &env());
        let got: Vec<&str> =
            status["conditions"].as_array().into_iter().flatten().filter_map(|c| c["type"].as_str()).collect();
        assert_eq!(got, types, "{}", object["kind"]);
        assert_eq!(condition_of(&status, "Ready")["status"], "True", "{}: {status}", object["kind"]);
    }
    // Without a dead-letter sink: True, reason `DeadLetterSinkNotConfigured`, as Knative marks it.
    let status = reconcile(&objects[0], &world, &env());
    let not_configured = condition_of(&status, "DeadLetterSinkResolved");
    assert_eq!(
        (&not_configured["status"], &not_configured["reason"]),
        (&json!("True"), &json!("DeadLetterSinkNotConfigured"))
    );
    // A Subscription's channel missing: neither ready nor added to it.
    let alone = [subscription.clone()];
    let status = reconcile(&subscription, &World { objects: &alone }, &env());
    assert_eq!(condition_of(&status, "AddedToChannel")["reason"], "ChannelNotFound");
}

/// Regression (a review of the apply path): a Trigger without a `delivery` of its own is dead-lettered to its
/// Broker's sink (the dispatcher takes the Broker's delivery whole), and its status said none was configured.
#[test]
fn a_trigger_without_delivery_reports_its_brokers_dead_letter_sink() {
    let sink = json!({"uri": "http://dlq.example/"});
    let plain = trigger(json!({"uri": "http://svc/"}));
    let mut own_delivery = plain.clone();
    own_delivery["spec"]["delivery"] = json!({"retry": 2});
    let objects = [broker("default", Some(sink)), plain.clone(), own_delivery.clone()];
    let world = World { objects: &objects };
    let status = reconcile(&plain, &world, &env());
    assert_eq!(status["deadLetterSinkUri"], "http://dlq.example/");
    assert!(condition_of(&status, "DeadLetterSinkResolved").get("reason").is_none(), "{status}");
    // A delivery of its own, without a sink: the Broker's is ignored (the spec's "MUST be ignored").
    let status = reconcile(&own_delivery, &world, &env());
    assert!(status.get("deadLetterSinkUri").is_none(), "{status}");
    assert_eq!(condition_of(&status, "DeadLetterSinkResolved")["reason"], "DeadLetterSinkNotConfigured");
    // A Subscription takes its Channel's, the same way; one that does not resolve is a reference unresolved.
    let mut channel = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
        "metadata": {"name": "c", "namespace": "default"}});
    let subscription = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Subscription",
        "metadata": {"name": "s", "namespace": "default"},
        "spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"},
            "subscriber": {"uri": "http://svc/"}}});
    channel["spec"] = json!({"delivery": {"deadLetterSink": {"uri": "http://channel-dlq/"}}});
    let objects = [channel.clone(), subscription.clone()];
    let status = reconcile(&subscription, &World { objects: &objects }, &env());
    assert_eq!(status["physicalSubscription"]["deadLetterSinkUri"], "http://channel-dlq/");
    let mut unresolved = subscription.clone();
    unresolved["spec"]["delivery"] = json!({"deadLetterSink": {"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "Channel", "name": "gone"}}});
    let objects = [channel, unresolved.clone()];
    let status = reconcile(&unresolved, &World { objects: &objects }, &env());
    assert_eq!(condition_of(&status, "ReferencesResolved")["status"], "False");
    assert_eq!(status["physicalSubscription"]["deadLetterSinkUri"], "");
}
