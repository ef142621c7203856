//! Status, derived from the objects: a pure reconcile step. Nothing here is
//! stored; `get`, `describe` and the dispatcher compute it from the current
//! objects, so it can never be stale.

use serde_json::{Value, json};

use crate::model::{Destination, KReference};

pub use crate::world::{Environment, HttpsIngress, ServingRuntime, World};

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn condition(kind: &str, ok: Result<(), (String, String)>) -> Value {
    match ok {
        Ok(()) => json!({"type": kind, "status": "True"}),
        Err((reason, message)) => json!({"type": kind, "status": "False", "reason": reason, "message": message}),
    }
}

fn path_of(kind: &str, namespace: &str, name: &str) -> String {
    match kind {
        "Broker" => format!("/{namespace}/{name}"),
        _ => format!("/channels/{namespace}/{name}"),
    }
}

/// The URL events for a Broker or Channel are sent to: https when the ingress serves TLS (Knative: "producers
/// must send events to HTTPS endpoints, if available").
fn address_of(env: &Environment, kind: &str, namespace: &str, name: &str) -> String {
    let base = env.ingress_https.as_ref().map_or(env.ingress_base.as_str(), |https| https.base.as_str());
    format!("{base}{}", path_of(kind, namespace, name))
}

/// The OIDC audience of a Broker or Channel, as Knative names it: `eventing.knative.dev/broker/NS/NAME`,
/// `messaging.knative.dev/channel/NS/NAME`.
pub fn audience_of(kind: &str, namespace: &str, name: &str) -> String {
    match kind {
        "Broker" => format!("eventing.knative.dev/broker/{namespace}/{name}"),
        _ => format!("messaging.knative.dev/channel/{namespace}/{name}"),
    }
}

/// `status.address` and `status.addresses` of a Broker or Channel, as Knative's transport-encryption modes
/// give them: `disabled` http only; `permissive` https first, then http; `strict` https only. Each carries
/// the audience when sender identity is on.
fn addresses(env: &Environment, kind: &str, namespace: &str, name: &str) -> (Value, Value) {
    let path = path_of(kind, namespace, name);
    let mut http = json!({"name": "http", "url": format!("{}{path}", env.ingress_base)});
    let mut secure = env
        .ingress_https
        .as_ref()
        .map(|https| json!({"name": "https", "url": format!("{}{path}", https.base), "CACerts": https.ca_certs}));
    if env.audiences {
        let audience = audience_of(kind, namespace, name);
        http["audience"] = audience.clone().into();
        if let Some(secure) = &mut secure {
            secure["audience"] = audience.into();
        }
    }
    match (secure, &env.ingress_https) {
        (Some(secure), Some(https)) => {
            let all = if https.plaintext_too { json!([secure, http]) } else { json!([secure]) };
            (secure, all)
        }
        _ => (http.clone(), json!([http])),
    }
}

/// A resolved Destination: where to send, and what to trust there (Knative's `duckv1.Addressable`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedAddress {
    pub url: String,
    /// CA certificates (PEM) to trust for `url` besides the system's: the Destination's own `CACerts`, else
    /// the node's CA when the Destination is a Broker or Channel served over https here.
    pub ca_certs: Option<String>,
    /// The OIDC audience a token for `url` is minted for.
    pub audience: Option<String>,
}

/// Resolves a Destination to its address, or says why it cannot be.
pub fn resolve_address(
    destination: &Destination,
    namespace: &str,
    world: &World,
    env: &Environment,
) -> Result<ResolvedAddress, (String, String)> {
    let url = resolve(destination, namespace, world, env)?;
    let served_here = env.ingress_https.as_ref().filter(|https| url.starts_with(&format!("{}/", https.base)));
    let ca_certs = destination.ca_certs.clone().or_else(|| served_here.map(|https| https.ca_certs.clone()));
    let audience = destination.audience.clone().or_else(|| {
        let reference = destination.reference.as_ref().filter(|_| env.audiences)?;
        let kind = if reference.kind == "Broker" { "Broker" } else { "Channel" };
        matches!(reference.kind.as_str(), "Broker" | "Channel" | "InMemoryChannel").then(|| {
            let namespace = reference.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(namespace);
            audience_of(kind, namespace, &reference.name)
        })
    });
    Ok(ResolvedAddress { url, ca_certs, audience })
}

/// Resolves a Destination to a URL, or says why it cannot be.
pub fn resolve(
    destination: &Destination,
    namespace: &str,
    world: &World,
    env: &Environment,
) -> Result<String, (String, String)> {
    let base = match &destination.reference {
        None => return destination.uri.clone().ok_or_else(|| ("Unresolved".into(), "neither ref nor uri".into())),
        Some(reference) => resolve_reference(reference, namespace, world, env)?,
    };
    Ok(match &destination.uri {
        Some(relative) => format!("{}/{}", base.trim_end_matches('/'), relative.trim_start_matches('/')),
        None => base,
    })
}

fn resolve_reference(
    reference: &KReference,
    namespace: &str,
    world: &World,
    env: &Environment,
) -> Result<String, (String, String)> {
    let namespace = reference.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(namespace);
    let api_version = reference.api_version.as_deref().unwrap_or_default();
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    // Each kind below is served at v1 only (Knative's CRDs, Kubernetes' core group): another version does not
    // resolve, as it does not on Kubernetes. Regression: `serving.knative.dev/v2` resolved.
    if version != "v1" {
        return Err((
            "UnsupportedReference".into(),
            format!("cannot resolve a {} ({api_version}): no such version of it is served", reference.kind),
        ));
    }
    match (group, reference.kind.as_str()) {
        ("eventing.knative.dev", "Broker") | ("messaging.knative.dev", "Channel" | "InMemoryChannel") => {
            match world.find(&reference.kind, namespace, &reference.name) {
                Some(_) => Ok(address_of(env, &reference.kind, namespace, &reference.name)),
                None => Err((
                    "DestinationNotFound".into(),
                    format!("{} {namespace}/{} does not exist", reference.kind, reference.name),
                )),
            }
        }
        ("", "Service") => Ok(format!("http://{}.{namespace}.svc.cluster.local", reference.name)),
        ("serving.knative.dev", kind @ ("Service" | "Route" | "Configuration")) => {
            crate::serving::status::address(kind, namespace, &reference.name, world, env)
        }
        (_, kind) => Err(("UnsupportedReference".into(), format!("cannot resolve a {kind} ({api_version})"))),
    }
}

/// Whether the object a Trigger or Subscription hangs on (its Broker, its Channel) is Ready, as Knative
/// propagates it: not Ready is `reason` with the referent's own message.
fn referent_ready(referent: &Value, reason: &str, world: &World, env: &Environment) -> Result<(), (String, String)> {
    let status = reconcile(referent, world, env);
    let ready = status
        .get("conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| conditions.iter().find(|c| c.get("type").and_then(Value::as_str) == Some("Ready")));
    match ready {
        Some(ready) if ready.get("status").and_then(Value::as_str) == Some("True") => Ok(()),
        Some(ready) => Err((
            reason.to_string(),
            format!(
                "{} {}: {}",
                str_at(referent, "/kind"),
                str_at(referent, "/metadata/name"),
                ready.get("message").and_then(Value::as_str).unwrap_or("not ready")
            ),
        )),
        None => Err((reason.to_string(), format!("{} has no Ready condition", str_at(referent, "/kind")))),
    }
}

/// The destination at `pointer`; `{}` is none (Knative's `isDestinationNilOrEmpty`: `reply: {}` is no reply).
fn destination_at(object: &Value, pointer: &str) -> Option<Destination> {
    object
        .pointer(pointer)
        .filter(|v| v.as_object().is_none_or(|fields| !fields.is_empty()))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
}

/// A dead-letter sink not configured (no error to tell).
const NOT_CONFIGURED: Option<(String, String)> = None;

/// `status` for `object`, computed from the objects around it.
pub fn reconcile(object: &Value, world: &World, env: &Environment) -> Value {
    if let Some(status) = crate::serving::status::reconcile(object, world, env) {
        return status;
    }
    let kind = str_at(object, "/kind");
    let namespace = str_at(object, "/metadata/namespace");
    let name = str_at(object, "/metadata/name");
    let generation = object.pointer("/metadata/generation").cloned().unwrap_or(json!(1));
    let mut conditions = Vec::new();
    let mut status = serde_json::Map::new();
    status.insert("observedGeneration".into(), generation);

    // A Trigger or Subscription without a `delivery` of its own is delivered with its Broker's or Channel's, whole
    // (the spec: "If a Trigger specifies any delivery options, this field MUST be ignored"), as the dispatcher
    // does: its dead-letter sink is that one.
    let delivery_owner = match crate::model::own_delivery(object) {
        Some(_) => Some(object),
        None => match kind {
            "Trigger" => world.find("Broker", namespace, crate::model::trigger_broker(object)),
            "Subscription" => {
                let channel = str_at(object, "/spec/channel/name");
                let kinds = crate::model::subscription_channel_kinds(object);
                kinds.iter().find_map(|kind| world.find(kind, namespace, channel))
            }
            _ => Some(object),
        },
    };
    let dead_letter = delivery_owner.and_then(|owner| destination_at(owner, "/spec/delivery/deadLetterSink"));
    // Knative's conformance: a destination that cannot be resolved reports its URI as the empty string.
    let dead_letter_ok = match &dead_letter {
        None => Err(NOT_CONFIGURED),
        Some(sink) => {
            let resolved = resolve(sink, namespace, world, env);
            status.insert("deadLetterSinkUri".into(), resolved.as_deref().unwrap_or_default().into());
            resolved.map(|_| ()).map_err(Some)
        }
    };
    let dead_letter_condition = match &dead_letter_ok {
        Err(None) => {
            json!({"type": "DeadLetterSinkResolved", "status": "True", "reason": "DeadLetterSinkNotConfigured",
            "message": "No dead letter sink is configured."})
        }
        Ok(()) => condition("DeadLetterSinkResolved", Ok(())),
        Err(Some(unresolved)) => condition("DeadLetterSinkResolved", Err(unresolved.clone())),
    };

    match kind {
        "Broker" | "Channel" | "InMemoryChannel" => {
            let (address, all) = addresses(env, kind, namespace, name);
            status.insert("address".into(), address);
            status.insert("addresses".into(), all);
            conditions.push(event_policies_ready(object, world, env, &mut status));
            conditions.push(condition("Addressable", Ok(())));
            // Each kind's conditions as Knative names them (the MT Broker's, the Channel's, the IMC's): Sluice's
            // ingress, log and dispatcher are all of them, ready when the node answers.
            if kind == "Broker" {
                conditions.push(condition("IngressReady", Ok(())));
                conditions.push(condition("FilterReady", Ok(())));
                conditions.push(condition("TriggerChannelReady", Ok(())));
                let class = str_at(object, "/metadata/annotations/eventing.knative.dev~1broker.class");
                if !class.is_empty() && class != "Sluice" {
                    status.insert(
                        "annotations".into(),
                        json!({"sluice.dev/class-note": format!("broker class {class} is served by Sluice here")}),
                    );
                }
            } else if kind == "Channel" {
                conditions.push(condition("BackingChannelReady", Ok(())));
            } else {
                for ready in ["ChannelServiceReady", "DispatcherReady", "ServiceReady", "EndpointsReady"] {
                    conditions.push(condition(ready, Ok(())));
                }
            }
            conditions.push(dead_letter_condition);
        }
        "Trigger" => {
            let broker = crate::model::trigger_broker(object);
            let broker_ok = match world.find("Broker", namespace, broker) {
                Some(found) => referent_ready(found, "BrokerNotReady", world, env),
                None => Err(("BrokerDoesNotExist".into(), format!("Broker {namespace}/{broker} does not exist"))),
            };
            conditions.push(condition("BrokerReady", broker_ok));
            // Knative's Trigger is subscribed to its Broker's channel; Sluice's consumer of the Broker's log is.
            conditions.push(condition("SubscriptionReady", Ok(())));
            conditions.push(condition("DependencyReady", Ok(())));
            let subscriber = destination_at(object, "/spec/subscriber");
            let subscriber_ok = match &subscriber {
                None => Err(("SubscriberMissing".into(), "spec.subscriber is required".into())),
                Some(destination) => {
                    let resolved = resolve(destination, namespace, world, env);
                    status.insert("subscriberUri".into(), resolved.as_deref().unwrap_or_default().into());
                    resolved.map(|_| ())
                }
            };
            conditions.push(condition("SubscriberResolved", subscriber_ok));
            conditions.push(dead_letter_condition);
        }
        "EventPolicy" => {
            // Without sender identity nothing enforces the policy: it is not Ready, so that nobody takes it for a
            // guard, and its subjects are not resolved (Knative's EventPolicy reconciler stops there too).
            if env.audiences {
                conditions.push(condition("AuthenticationEnabled", Ok(())));
                let (subjects, resolved) = crate::policy::event_policy_status(object, world);
                status.insert("from".into(), subjects);
                conditions.push(condition("SubjectsResolved", resolved));
            } else {
                conditions.push(condition(
                    "AuthenticationEnabled",
                    Err((
                        "OIDCAuthenticationDisabled".into(),
                        "Feature \"authentication-oidc\" must be enabled to enforce EventPolicies".into(),
                    )),
                ));
                conditions.push(json!({"type": "SubjectsResolved", "status": "Unknown"}));
            }
        }
        "Subscription" => {
            let channel: Option<KReference> =
                object.pointer("/spec/channel").and_then(|v| serde_json::from_value(v.clone()).ok());
            let is_channel = |c: &KReference| {
                c.api_version.as_deref().is_some_and(|v| v.starts_with("messaging.knative.dev/"))
                    && matches!(c.kind.as_str(), "Channel" | "InMemoryChannel")
            };
            let channel_ok = match &channel {
                Some(c) if !is_channel(c) => Err((
                    "ChannelNotFound".into(),
                    format!(
                        "{} {} is not a channel (messaging.knative.dev Channel or InMemoryChannel)",
                        c.kind, c.name
                    ),
                )),
                Some(c) => match world.find(&c.kind, namespace, &c.name) {
                    Some(found) => referent_ready(found, "ChannelNotReady", world, env),
                    None => {
                        Err(("ChannelNotFound".into(), format!("{} {namespace}/{} does not exist", c.kind, c.name)))
                    }
                },
                None => Err(("ChannelMissing".into(), "spec.channel is required".into())),
            };
            // Knative's `AddedToChannel`: Sluice's consumer of the Channel's log exists once the Channel does.
            let added = match &channel_ok {
                Err((reason, message)) if reason != "ChannelNotReady" => Err((reason.clone(), message.clone())),
                _ => Ok(()),
            };
            conditions.push(condition("ChannelReady", channel_ok));
            conditions.push(condition("AddedToChannel", added));
            // Knative's layout: what the Subscription resolves to is its `physicalSubscription` (a Subscription's
            // CRD prunes the Trigger-style fields at the top of its status).
            let mut physical = serde_json::Map::new();
            let mut resolved = Ok(());
            for (field, pointer) in [("subscriberUri", "/spec/subscriber"), ("replyUri", "/spec/reply")] {
                if let Some(destination) = destination_at(object, pointer) {
                    let uri = resolve(&destination, namespace, world, env);
                    physical.insert(field.into(), uri.as_deref().unwrap_or_default().into());
                    if let Err(e) = uri {
                        resolved = resolved.and(Err(e));
                    }
                }
            }
            if let Some(uri) = status.remove("deadLetterSinkUri") {
                physical.insert("deadLetterSinkUri".into(), uri);
            }
            status.insert("physicalSubscription".into(), Value::Object(physical));
            // Knative's Subscription has no `DeadLetterSinkResolved`: its dead-letter sink is one of the references
            // `ReferencesResolved` is about.
            if let Err(Some(unresolved)) = dead_letter_ok {
                resolved = resolved.and(Err(unresolved));
            }
            conditions.push(condition("ReferencesResolved", resolved));
        }
        _ => {}
    }
    if env.audiences
        && let Some(account) = crate::policy::sender_account(kind, name)
    {
        // Who Sluice sends this consumer's deliveries as (EventPolicies' `from.ref` resolves to it).
        status.insert("auth".into(), json!({"serviceAccountName": account}));
    }
    let failing: Vec<&Value> = conditions.iter().filter(|c| c["status"] == "False").collect();
    let ready = match failing.first() {
        None => json!({"type": "Ready", "status": "True"}),
        Some(first) => {
            json!({"type": "Ready", "status": "False", "reason": first["reason"], "message": first["message"]})
        }
    };
    conditions.insert(0, ready);
    status.insert("conditions".into(), Value::Array(conditions));
    Value::Object(status)
}

/// A Broker's or Channel's `EventPoliciesReady` and its `status.policies`, as Knative's reconcilers set them: a
/// policy that applies and is not ready (a `from` reference unresolved, or sender identity off, which enforces
/// nothing) makes the target not Ready and is left out of `status.policies`; with none applying the condition
/// names the default authorization mode, or that sender identity is off.
fn event_policies_ready(
    target: &Value,
    world: &World,
    env: &Environment,
    status: &mut serde_json::Map<String, Value>,
) -> Value {
    const TYPE: &str = "EventPoliciesReady";
    let (policies, not_ready) = crate::policy::policies_status(target, world, env.audiences);
    let none_ready = policies.as_array().is_some_and(Vec::is_empty);
    // Knative's field is `omitempty`.
    if !none_ready {
        status.insert("policies".into(), policies);
    }
    if !not_ready.is_empty() {
        return condition(
            TYPE,
            Err(("EventPoliciesNotReady".into(), format!("event policies {} are not ready", not_ready.join(", ")))),
        );
    }
    match (none_ready, env.audiences) {
        (false, _) => condition(TYPE, Ok(())),
        (true, true) => json!({"type": TYPE, "status": "True", "reason": "DefaultAuthorizationMode",
            "message": format!("Default authz mode is \"{}\"", env.default_authorization)}),
        (true, false) => json!({"type": TYPE, "status": "True", "reason": "OIDCDisabled",
            "message": "Feature \"authentication-oidc\" must be enabled to support Authorization"}),
    }
}

/// The object with its status filled in.
pub fn with_status(mut object: Value, world: &World, env: &Environment) -> Value {
    let status = reconcile(&object, world, env);
    if let Some(map) = object.as_object_mut() {
        map.insert("status".into(), status);
    }
    object
}

#[cfg(test)]
mod tests;
