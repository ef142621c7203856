//! Consumers: what the dispatcher needs to know about one Trigger or Subscription, derived from the resource
//! objects (as stored in the metadata group).
//!
//! What flows in: every Broker, Trigger, Channel, InMemoryChannel and Subscription object (JSON) and the
//! node's ingress address (to resolve references to Brokers and Channels). What flows out: one
//! [`ConsumerSpec`] per Trigger or Subscription that can be dispatched (its stream, cursor name, filter,
//! resolved subscriber/reply/dead-letter URLs, delivery policy and Sluice's delivery annotations), and the
//! reasons why others cannot be (their subscriber does not resolve, ...): those keep their offset and wait.
//!
//! Pure: a function of the objects.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::Value;
use sluice_broker::{IngressSettings, stream_name};
use sluice_controller::model::Destination;
use sluice_controller::status::{Environment, World, resolve_address};

use crate::delivery::policy::DeliveryPolicy;
use crate::filter::{self, CompiledFilter};
use crate::window::Ordering;

pub(crate) const ANNOTATION_INITIAL_OFFSET: &str = "sluice.dev/initial-offset";
pub(crate) const ANNOTATION_DELIVERY_ORDER: &str = "sluice.dev/delivery-order";
pub(crate) const ANNOTATION_KAFKA_DELIVERY_ORDER: &str = "kafka.eventing.knative.dev/delivery.order";
pub(crate) const ANNOTATION_MAX_INFLIGHT: &str = "sluice.dev/max-inflight";
pub(crate) const ANNOTATION_RATE_LIMIT: &str = "sluice.dev/rate-limit";
pub(crate) const ANNOTATION_DEAD_LETTER: &str = "sluice.dev/dead-letter";
pub(crate) const ANNOTATION_SUBSCRIBER_PROTOCOL: &str = "sluice.dev/subscriber-protocol";
/// `sluice.dev/delivery-batch-max-events: "N"`: the subscriber takes `application/cloudevents-batch+json`, up to N
/// events per request (docs/dispatch.md "Batched delivery").
pub(crate) const ANNOTATION_DELIVERY_BATCH_MAX_EVENTS: &str = "sluice.dev/delivery-batch-max-events";
/// `sluice.dev/paused: "true"`: the consumer keeps its offset but nothing is delivered (`sluice trigger pause`).
pub(crate) const ANNOTATION_PAUSED: &str = "sluice.dev/paused";

/// Default `sluice.dev/max-inflight`: concurrent deliveries per consumer and partition.
pub(crate) const DEFAULT_MAX_INFLIGHT: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConsumerKind {
    Trigger,
    Subscription,
}

impl ConsumerKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ConsumerKind::Trigger => "trigger",
            ConsumerKind::Subscription => "subscription",
        }
    }

    /// The object's `kind`.
    pub(crate) fn object_kind(self) -> &'static str {
        match self {
            ConsumerKind::Trigger => "Trigger",
            ConsumerKind::Subscription => "Subscription",
        }
    }
}

/// Where a subscriber's reply goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplyTarget {
    /// A Trigger's reply: appended to its Broker's stream, like an event from ingress.
    Broker { stream: String, settings: IngressSettings },
    /// A Subscription's `spec.reply`, POSTed.
    Uri(String),
    /// A Subscription without `spec.reply`: replies are discarded.
    Discard,
}

/// What happens to an event that could not be delivered and has no (working) dead-letter sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum DeadLetterMode {
    /// Sluice's default: kept in the consumer's dead-letter stream.
    Keep,
    /// `sluice.dev/dead-letter: drop`: Knative's behaviour.
    Drop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    Binary,
    Structured,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    /// HTTP/2 without TLS, with prior knowledge (`sluice.dev/subscriber-protocol: h2c`).
    H2c,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InitialOffset {
    /// Knative's behaviour: events that arrived from the consumer's creation on (`creationTimestamp`, to the
    /// second).
    FromCreation { created_ms: u64 },
    /// `sluice.dev/initial-offset: earliest`: every retained event.
    Earliest,
}

/// Where a Trigger or Subscription without a committed offset starts: from its `creationTimestamp`, or the
/// stream's start with `sluice.dev/initial-offset: earliest`.
pub(crate) fn initial_offset(object: &Value) -> Result<InitialOffset, String> {
    Ok(match annotation(object, ANNOTATION_INITIAL_OFFSET) {
        Some("earliest") => InitialOffset::Earliest,
        _ => {
            let created = str_at(object, "/metadata/creationTimestamp");
            let created_ms = chrono::DateTime::parse_from_rfc3339(created)
                .map(|t| t.timestamp_millis().max(0) as u64)
                .map_err(|_| format!("metadata.creationTimestamp: {created:?} is not RFC 3339"))?;
            InitialOffset::FromCreation { created_ms }
        }
    })
}

/// One Trigger or Subscription, ready to dispatch.
#[derive(Debug, Clone)]
pub(crate) struct ConsumerSpec {
    pub kind: ConsumerKind,
    pub namespace: String,
    pub name: String,
    /// The Broker's or Channel's name (metrics label).
    pub source_name: String,
    /// The stream it reads.
    pub stream: String,
    /// Its offsets' name in each partition group: `{stream}#{kind}/{name}/{uid}`.
    pub cursor: String,
    /// The object's uid: a consumer deleted and made again under its name is another one.
    pub uid: String,
    pub subscriber_uri: String,
    pub reply: ReplyTarget,
    pub dead_letter_uri: Option<String>,
    pub dead_letter_mode: DeadLetterMode,
    /// The consumer's own dead-letter stream (same partition as the event).
    pub dead_letter_stream: String,
    /// CA certificates (PEM) to trust, by destination URL (subscriber, reply, dead-letter sink): the
    /// Destination's `CACerts`, or the node's CA for a Broker or Channel served over https.
    pub ca_certs: BTreeMap<String, Arc<str>>,
    /// OIDC audiences by destination URL: a request there carries a token Sluice mints for `sender_subject`
    /// and that audience (the Destination's `audience`, or the Broker's or Channel's it refers to).
    pub audiences: BTreeMap<String, Arc<str>>,
    /// Who the deliveries are from: `system:serviceaccount:NS:sluice-trigger-NAME` (or `-subscription-`).
    pub sender_subject: String,
    /// With sender identity on, the EventPolicies a Trigger's replies must pass to enter its Broker (as from
    /// `sender_subject`), and the default mode when none applies; `None` with it off.
    pub reply_authorization: Option<ReplyAuthorization>,
    pub policy: DeliveryPolicy,
    pub format: Format,
    pub protocol: Protocol,
    pub ordering: Ordering,
    pub max_inflight: usize,
    /// `Some(n)`: events go to the subscriber in CloudEvents' batched content mode, up to `n` per request (and
    /// [`crate::delivery::MAX_DELIVERY_BATCH_BYTES`]); `None`: one event per request, Knative's contract.
    pub delivery_batch: Option<usize>,
    /// Events per second for the whole consumer (shared evenly by the partitions).
    pub rate_limit: Option<f64>,
    pub initial: InitialOffset,
    pub filter: CompiledFilter,
    /// `sluice.dev/paused`: read nothing, deliver nothing new; the offset stays.
    pub paused: bool,
    /// Changes whenever anything above changes: a dispatcher restarts the consumer then.
    pub version: String,
}

/// The EventPolicy check of a Trigger's replies (the same decision as its Broker's ingress makes).
#[derive(Debug, Clone)]
pub(crate) struct ReplyAuthorization {
    pub policies: Arc<Vec<sluice_broker::CompiledPolicy>>,
    pub mode: sluice_controller::policy::DefaultAuthorization,
}

/// What a destination needs besides its URL, by URL.
#[derive(Default)]
struct DestinationTrust {
    ca_certs: BTreeMap<String, Arc<str>>,
    audiences: BTreeMap<String, Arc<str>>,
}

/// The attribute a letter kept in a dead-letter stream carries: the uid of the consumer that dead-lettered it. The
/// stream is named by the consumer's name, which a consumer deleted and made again shares: its letters are not
/// the new one's to redrive (they may come from another Broker, to a subscriber that never asked for them).
pub(crate) const CONSUMER_UID_ATTRIBUTE: &str = "sluiceconsumeruid";

/// The dead-letter stream of a consumer.
/// The uids of every Trigger and Subscription in `node`'s copy of the metadata.
pub(crate) fn live_consumer_uids(node: &sluice_broker::Node) -> std::collections::HashSet<String> {
    ["Trigger", "Subscription"]
        .into_iter()
        .flat_map(|kind| node.resources(kind))
        .filter_map(|(_, json)| serde_json::from_str::<Value>(&json).ok())
        .filter_map(|o| o.pointer("/metadata/uid").and_then(Value::as_str).map(str::to_string))
        .collect()
}

pub(crate) fn dead_letter_stream(kind: ConsumerKind, namespace: &str, name: &str) -> String {
    format!("deadletter/{}/{namespace}/{name}", kind.as_str())
}

/// The prefix of every cursor reading `stream` (to find cursors whose consumer is gone).
pub(crate) fn cursor_prefix(stream: &str) -> String {
    format!("{stream}#")
}

/// A consumer's cursor name in each partition group.
pub(crate) fn cursor_name(stream: &str, kind: ConsumerKind, name: &str, uid: &str) -> String {
    format!("{}{}/{name}/{uid}", cursor_prefix(stream), kind.as_str())
}

/// The stream a Trigger or Subscription object reads (whether or not its Broker or Channel exists).
pub(crate) fn stream_of(kind: ConsumerKind, object: &Value) -> String {
    let namespace = str_at(object, "/metadata/namespace");
    match kind {
        ConsumerKind::Trigger => stream_name("Broker", namespace, sluice_controller::model::trigger_broker(object)),
        ConsumerKind::Subscription => stream_name("Channel", namespace, str_at(object, "/spec/channel/name")),
    }
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn annotation<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object.pointer("/metadata/annotations").and_then(|a| a.get(name)).and_then(Value::as_str).map(str::trim)
}

/// Brokers and channels by (kind, namespace, name), so that resolving each consumer's source is a lookup.
type Sources<'a> = HashMap<(&'a str, &'a str, &'a str), &'a Value>;

fn find<'a>(sources: &Sources<'a>, kinds: &[&str], namespace: &str, name: &str) -> Option<&'a Value> {
    kinds.iter().find_map(|kind| sources.get(&(*kind, namespace, name)).copied())
}

fn resolve_at(
    object: &Value,
    pointer: &str,
    namespace: &str,
    world: &World,
    env: &Environment,
    trust: &mut DestinationTrust,
) -> Result<Option<String>, String> {
    // `{}` is no destination (Knative's `isDestinationNilOrEmpty`: an empty `reply: {}` is no reply).
    let present = |v: &&Value| !v.is_null() && v.as_object().is_none_or(|fields| !fields.is_empty());
    let Some(value) = object.pointer(pointer).filter(present) else { return Ok(None) };
    let destination: Destination = serde_json::from_value(value.clone())
        .map_err(|e| format!("{}: not a Destination: {e}", pointer_path(pointer)))?;
    let address = resolve_address(&destination, namespace, world, env)
        .map_err(|(reason, message)| format!("{}: {reason}: {message}", pointer_path(pointer)))?;
    if let Some(ca_certs) = address.ca_certs {
        trust.ca_certs.insert(address.url.clone(), ca_certs.into());
    }
    if let Some(audience) = address.audience {
        trust.audiences.insert(address.url.clone(), audience.into());
    }
    Ok(Some(address.url))
}

fn pointer_path(pointer: &str) -> String {
    pointer.trim_start_matches('/').replace('/', ".")
}

/// Every dispatchable consumer, and `(kind/namespace/name, reason)` for those that are not.
pub(crate) fn consumers(
    objects: &[Value],
    env: &Environment,
    default_authorization: sluice_controller::policy::DefaultAuthorization,
) -> (Vec<Arc<ConsumerSpec>>, Vec<(String, String)>) {
    let world = World { objects };
    let sources: Sources = objects
        .iter()
        .filter(|o| matches!(str_at(o, "/kind"), "Broker" | "Channel" | "InMemoryChannel"))
        .map(|o| ((str_at(o, "/kind"), str_at(o, "/metadata/namespace"), str_at(o, "/metadata/name")), o))
        .collect();
    let mut specs = Vec::new();
    let mut problems = Vec::new();
    for object in objects {
        let kind = match str_at(object, "/kind") {
            "Trigger" => ConsumerKind::Trigger,
            "Subscription" => ConsumerKind::Subscription,
            _ => continue,
        };
        match consumer(kind, object, &sources, &world, env, default_authorization) {
            Ok(spec) => specs.push(Arc::new(spec)),
            Err(reason) => problems.push((
                format!(
                    "{}/{}/{}",
                    kind.as_str(),
                    str_at(object, "/metadata/namespace"),
                    str_at(object, "/metadata/name")
                ),
                reason,
            )),
        }
    }
    specs.sort_by(|a, b| a.cursor.cmp(&b.cursor));
    (specs, problems)
}

fn consumer(
    kind: ConsumerKind,
    object: &Value,
    sources: &Sources,
    world: &World,
    env: &Environment,
    default_authorization: sluice_controller::policy::DefaultAuthorization,
) -> Result<ConsumerSpec, String> {
    let namespace = str_at(object, "/metadata/namespace").to_string();
    let name = str_at(object, "/metadata/name").to_string();
    let uid = str_at(object, "/metadata/uid").to_string();
    // The object whose delivery applies: the consumer's own, or else its Broker's/Channel's (wholesale).
    let (source_kind, source_name, source) = match kind {
        ConsumerKind::Trigger => {
            let broker = sluice_controller::model::trigger_broker(object);
            let source = find(sources, &["Broker"], &namespace, broker)
                .ok_or_else(|| format!("spec.broker: Broker {namespace}/{broker} does not exist"))?;
            ("Broker", broker.to_string(), source)
        }
        ConsumerKind::Subscription => {
            let channel = str_at(object, "/spec/channel/name");
            let kinds = sluice_controller::model::subscription_channel_kinds(object);
            let source = find(sources, &kinds, &namespace, channel)
                .ok_or_else(|| format!("spec.channel: channel {namespace}/{channel} does not exist"))?;
            ("Channel", channel.to_string(), source)
        }
    };
    let stream = stream_name(source_kind, &namespace, &source_name);
    let mut trust = DestinationTrust::default();
    let subscriber_uri = resolve_at(object, "/spec/subscriber", &namespace, world, env, &mut trust)?
        .ok_or_else(|| "spec.subscriber: missing".to_string())?;
    let (delivery_owner, delivery) = match sluice_controller::model::own_delivery(object) {
        Some(delivery) => (object, Some(delivery)),
        None => (source, source.pointer("/spec/delivery").filter(|d| !d.is_null())),
    };
    // The error names its field (`delivery.timeout: ...`).
    let mut policy = DeliveryPolicy::from_spec(delivery).map_err(|e| format!("spec.{e}"))?;
    policy
        .apply_annotations(object.pointer("/metadata/annotations").and_then(Value::as_object))
        .map_err(|e| e.to_string())?;
    let owner_namespace = str_at(delivery_owner, "/metadata/namespace").to_string();
    let dead_letter_uri = match delivery {
        Some(_) => {
            resolve_at(delivery_owner, "/spec/delivery/deadLetterSink", &owner_namespace, world, env, &mut trust)?
        }
        None => None,
    };
    let format = match delivery.and_then(|d| d.get("format")).and_then(Value::as_str) {
        Some("json") => Format::Structured,
        _ => Format::Binary,
    };
    let reply = match kind {
        ConsumerKind::Trigger => {
            ReplyTarget::Broker { stream: stream.clone(), settings: IngressSettings::from_object(&source.to_string()) }
        }
        ConsumerKind::Subscription => match resolve_at(object, "/spec/reply", &namespace, world, env, &mut trust)? {
            Some(uri) => ReplyTarget::Uri(uri),
            None => ReplyTarget::Discard,
        },
    };
    let filter = match kind {
        ConsumerKind::Trigger => {
            let attributes: Option<BTreeMap<String, String>> = object
                .pointer("/spec/filter/attributes")
                .filter(|v| !v.is_null())
                .map(|v| serde_json::from_value(v.clone()))
                .transpose()
                .map_err(|e| format!("spec.filter.attributes: {e}"))?;
            filter::compile(attributes.as_ref(), object.pointer("/spec/filters"))
                .map_err(|e| format!("spec.{}: {e}", e.path()))?
        }
        ConsumerKind::Subscription => CompiledFilter::match_all(),
    };
    let ordering = match annotation(object, ANNOTATION_DELIVERY_ORDER)
        .or_else(|| annotation(object, ANNOTATION_KAFKA_DELIVERY_ORDER))
    {
        Some("ordered") => Ordering::Ordered,
        _ => Ordering::Unordered,
    };
    let max_inflight = annotation(object, ANNOTATION_MAX_INFLIGHT)
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n >= 1)
        .unwrap_or(DEFAULT_MAX_INFLIGHT)
        .min(sluice_controller::validate::MAX_INFLIGHT_LIMIT as usize);
    let delivery_batch = annotation(object, ANNOTATION_DELIVERY_BATCH_MAX_EVENTS)
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|n| n.clamp(1, sluice_controller::validate::MAX_DELIVERY_BATCH_EVENTS as usize));
    let rate_limit = annotation(object, ANNOTATION_RATE_LIMIT)
        .and_then(|v| v.parse::<f64>().ok())
        .filter(|r| r.is_finite() && *r > 0.0);
    let dead_letter_mode = if annotation(object, ANNOTATION_DEAD_LETTER) == Some("drop") {
        DeadLetterMode::Drop
    } else {
        DeadLetterMode::Keep
    };
    let protocol =
        if annotation(object, ANNOTATION_SUBSCRIBER_PROTOCOL) == Some("h2c") { Protocol::H2c } else { Protocol::Http1 };
    let initial = initial_offset(object)?;
    // A Trigger's replies enter its Broker as from the Trigger: with sender identity on, its EventPolicies
    // apply to them as at ingress.
    let applied = match kind {
        ConsumerKind::Trigger if env.audiences => Some(sluice_controller::policy::applied_policies(source, world)),
        _ => None,
    };
    let version = format!(
        "{}|{}|{subscriber_uri}|{reply:?}|{dead_letter_uri:?}|{:?}|{:?}|{applied:?}",
        str_at(object, "/metadata/resourceVersion"),
        str_at(source, "/metadata/resourceVersion"),
        trust.ca_certs,
        trust.audiences,
    );
    let reply_authorization = applied.map(|applied| ReplyAuthorization {
        policies: Arc::new(sluice_broker::compile_policies(applied)),
        mode: default_authorization,
    });
    let sender_subject =
        sluice_controller::policy::sender_subject(kind.object_kind(), &namespace, &name).unwrap_or_default();
    Ok(ConsumerSpec {
        kind,
        cursor: cursor_name(&stream, kind, &name, &uid),
        uid: uid.clone(),
        dead_letter_stream: dead_letter_stream(kind, &namespace, &name),
        namespace,
        name,
        source_name,
        stream,
        subscriber_uri,
        reply,
        dead_letter_uri,
        dead_letter_mode,
        ca_certs: trust.ca_certs,
        audiences: trust.audiences,
        sender_subject,
        reply_authorization,
        policy,
        format,
        protocol,
        ordering,
        max_inflight,
        delivery_batch,
        rate_limit,
        initial,
        filter,
        paused: annotation(object, ANNOTATION_PAUSED) == Some("true"),
        version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env() -> Environment {
        Environment::new("http://127.0.0.1:8080")
    }

    fn meta(kind: &str, name: &str, extra: Value) -> Value {
        let mut object = json!({
            "apiVersion": "eventing.knative.dev/v1", "kind": kind,
            "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "resourceVersion": "7", "creationTimestamp": "2026-01-02T03:04:05Z"},
        });
        if let (Some(o), Value::Object(extra)) = (object.as_object_mut(), extra) {
            o.extend(extra);
        }
        object
    }

    /// Regression: a Trigger naming its Broker with Knative's `brokerRef` read the stream of a Broker named "".
    #[test]
    fn a_trigger_with_a_broker_ref_reads_its_brokers_stream() {
        let broker = meta("Broker", "b", json!({}));
        let reference = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "b"});
        let trigger =
            meta("Trigger", "t", json!({"spec": {"brokerRef": reference, "subscriber": {"uri": "http://s/"}}}));
        let (specs, problems) = consumers(&[broker, trigger], &env(), Default::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(specs[0].cursor, "broker/default/b#trigger/t/uid-t");
        assert!(matches!(&specs[0].reply, ReplyTarget::Broker { stream, .. } if stream == "broker/default/b"));
    }

    #[test]
    fn a_trigger_inherits_its_brokers_delivery_wholesale_unless_it_has_one() {
        let broker =
            meta("Broker", "b", json!({"spec": {"delivery": {"retry": 3, "deadLetterSink": {"uri": "http://dls/"}}}}));
        let inherits = meta("Trigger", "t1", json!({"spec": {"broker": "b", "subscriber": {"uri": "http://s1/"}}}));
        let own = meta(
            "Trigger",
            "t2",
            json!({"spec": {"broker": "b", "subscriber": {"uri": "http://s2/"}, "delivery": {"backoffDelay": "PT1S"}},
                "metadata": {"name": "t2", "namespace": "default", "uid": "u2", "creationTimestamp": "2026-01-02T03:04:05Z",
                    "annotations": {"sluice.dev/delivery-order": "ordered", "sluice.dev/max-inflight": "7",
                        "sluice.dev/dead-letter": "drop", "sluice.dev/initial-offset": "earliest",
                        "sluice.dev/delivery-batch-max-events": "64"}}}),
        );
        // Regression (review): `delivery: {}` (a chart's empty default) specifies no option, and took the place of
        // the Broker's: its retries and dead-letter sink were lost.
        let empty = meta(
            "Trigger",
            "t3",
            json!({"spec": {"broker": "b", "subscriber": {"uri": "http://s3/"}, "delivery": {}}}),
        );
        let (specs, problems) = consumers(&[broker, inherits, own, empty], &env(), Default::default());
        assert!(problems.is_empty(), "{problems:?}");
        let t3 = specs.iter().find(|s| s.cursor.contains("trigger/t3")).expect("t3");
        assert_eq!((t3.policy.retry, t3.dead_letter_uri.as_deref()), (3, Some("http://dls/")));
        let t1 = &specs[0];
        assert_eq!(t1.cursor, "broker/default/b#trigger/t1/uid-t1");
        assert_eq!(t1.policy.retry, 3);
        assert_eq!(t1.dead_letter_uri.as_deref(), Some("http://dls/"));
        assert_eq!(t1.ordering, Ordering::Unordered);
        assert_eq!(t1.max_inflight, DEFAULT_MAX_INFLIGHT);
        assert_eq!(t1.delivery_batch, None, "one event per request unless the subscriber opts in");
        assert_eq!(t1.dead_letter_mode, DeadLetterMode::Keep);
        assert_eq!(t1.initial, InitialOffset::FromCreation { created_ms: 1_767_323_045_000 });
        assert!(matches!(&t1.reply, ReplyTarget::Broker { stream, .. } if stream == "broker/default/b"));
        let t2 = &specs[1];
        assert_eq!(t2.policy.retry, 0, "the Trigger's delivery replaces the Broker's");
        assert_eq!(t2.policy.backoff_delay_ms, 1_000);
        assert_eq!(t2.dead_letter_uri, None);
        assert_eq!(t2.ordering, Ordering::Ordered);
        assert_eq!(t2.max_inflight, 7);
        assert_eq!(t2.delivery_batch, Some(64));
        assert_eq!(t2.dead_letter_mode, DeadLetterMode::Drop);
        assert_eq!(t2.initial, InitialOffset::Earliest);
        assert_eq!(t2.dead_letter_stream, "deadletter/trigger/default/t2");
    }

    #[test]
    fn unresolvable_consumers_wait_with_a_reason() {
        let orphan = meta("Trigger", "t", json!({"spec": {"broker": "missing", "subscriber": {"uri": "http://s/"}}}));
        let broker = meta("Broker", "b", json!({"spec": {}}));
        let serving = meta(
            "Trigger",
            "k",
            json!({"spec": {"broker": "b", "subscriber": {"ref": {"apiVersion": "serving.knative.dev/v1", "kind": "Service", "name": "fn"}}}}),
        );
        let (specs, problems) = consumers(&[orphan, broker, serving], &env(), Default::default());
        assert!(specs.is_empty());
        assert_eq!(problems.len(), 2);
        assert!(problems[0].1.contains("Broker default/missing does not exist"), "{problems:?}");
        assert!(problems[1].1.contains("DestinationNotFound"), "a Service that does not exist: {problems:?}");
    }

    #[test]
    fn subscriptions_read_their_channel_and_reply_to_spec_reply() {
        let channel = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
            "metadata": {"name": "c", "namespace": "default", "resourceVersion": "3"},
            "spec": {"delivery": {"retry": 2}}});
        let subscription = json!({"apiVersion": "messaging.knative.dev/v1", "kind": "Subscription",
            "metadata": {"name": "s", "namespace": "default", "uid": "u", "resourceVersion": "4", "creationTimestamp": "2026-01-02T03:04:05Z"},
            "spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"},
                "subscriber": {"uri": "http://sub/"}, "reply": {"uri": "http://reply/"}}});
        let (specs, problems) = consumers(&[channel, subscription], &env(), Default::default());
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(specs[0].stream, "channel/default/c");
        assert_eq!(specs[0].policy.retry, 2, "delivery from the Channel");
        assert_eq!(specs[0].reply, ReplyTarget::Uri("http://reply/".into()));
        assert_eq!(specs[0].cursor, "channel/default/c#subscription/s/u");
    }
}
