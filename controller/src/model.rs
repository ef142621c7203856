//! Knative's resource types, with Knative's JSON field names, so that the
//! CRD controller can later derive its CRDs from the same types.
//!
//! The types are also the allow-list of fields: they have every field of
//! Knative's v1 Go types (and of Kubernetes' `ObjectMeta`), and validation
//! ([`crate::validate`]) refuses any field they do not have, naming its path,
//! as Knative's webhook does (it decodes with `DisallowUnknownFields`). A
//! field a newer Knative adds is added here when Sluice supports it. So no
//! type here may use `#[serde(flatten)]`: the strict reader learns a type's
//! fields from serde's `deserialize_struct`, which a flattened type does not
//! call. Reading stored objects (`serde_json::from_value`) stays lenient:
//! serde ignores fields these types do not have.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Kubernetes' `metav1.ObjectMeta`, every field.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub self_link: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owner_references: Vec<OwnerReference>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub finalizers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub managed_fields: Vec<ManagedFieldsEntry>,
}

/// `metav1.OwnerReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub uid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub controller: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub block_owner_deletion: Option<bool>,
}

/// `metav1.ManagedFieldsEntry` (server-side apply's bookkeeping, as
/// `kubectl get -o yaml --show-managed-fields` prints it).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ManagedFieldsEntry {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manager: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_type: Option<String>,
    /// A field set, any JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields_v1: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subresource: Option<String>,
}

/// `duckv1.KReference`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KReference {
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// The name of one of the referent's addresses (`status.addresses[].name`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
}

/// `duckv1.Destination`: a `ref`, a `uri`, or a `ref` plus a relative `uri`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    #[serde(default, rename = "CACerts", skip_serializing_if = "Option::is_none")]
    pub ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}

/// `eventingduckv1.DeliverySpec`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeliverySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink: Option<Destination>,
    /// An `int32` in Knative.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff_delay: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_max: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<KReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// `TriggerFilter`: attribute name → value ("" matches any value).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributes: Option<BTreeMap<String, String>>,
}

/// A Subscriptions API filter: exactly one dialect per object. The keys of
/// `exact`, `prefix` and `suffix` are attribute names (data, not fields).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionsApiFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub all: Option<Vec<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::array_of_any_objects")]
    pub any: Option<Vec<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub not: Option<Box<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cesql: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    /// Empty when the Trigger names its Broker with `brokerRef` instead.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub broker: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_ref: Option<KReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TriggerFilter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<SubscriptionsApiFilter>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// `messagingv1.ChannelTemplateSpec`: the kind of channel backing a Channel.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelTemplateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Passed verbatim to the backing channel: any JSON object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "crate::schema::any_object")]
    pub spec: Option<serde_json::Value>,
}

/// `duckv1.AuthStatus`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_account_names: Vec<String>,
}

/// `eventingduckv1.SubscriberSpec`: a channel's resolved subscription, which
/// Knative's Subscription controller writes into `spec.subscribers`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriberSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Not in the Go type, but in the InMemoryChannel CRD's schema.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    #[serde(default, rename = "subscriberCACerts", skip_serializing_if = "Option::is_none")]
    pub subscriber_ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_uri: Option<String>,
    #[serde(default, rename = "replyCACerts", skip_serializing_if = "Option::is_none")]
    pub reply_ca_certs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_audience: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthStatus>,
}

/// Channel: `channelTemplate` plus `ChannelableSpec` (`subscribers`, `delivery`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChannelSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel_template: Option<ChannelTemplateSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<SubscriberSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// InMemoryChannel: `ChannelableSpec` only (no `channelTemplate`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InMemoryChannelSpec {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribers: Vec<SubscriberSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SubscriptionSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channel: Option<KReference>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply: Option<Destination>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// A Kubernetes-style object with spec `S`. `status` is derived
/// ([`crate::status`]): an applied one may hold anything and is not stored
/// ([`crate::meta::merge_for_apply`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Object<S> {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: S,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

pub type Broker = Object<BrokerSpec>;
pub type Trigger = Object<TriggerSpec>;

impl TriggerSpec {
    /// The Broker this spec names: `broker`, or else `brokerRef.name` (see [`trigger_broker`]).
    pub fn broker_name(&self) -> &str {
        match (&self.broker, &self.broker_ref) {
            (broker, Some(reference)) if broker.is_empty() => &reference.name,
            (broker, _) => broker,
        }
    }
}

/// The Broker a stored Trigger names: `spec.broker`, or else `spec.brokerRef.name` (Knative's other spelling,
/// in the Trigger's own namespace: validation refuses a `brokerRef` to another one).
pub fn trigger_broker(trigger: &serde_json::Value) -> &str {
    let at = |pointer: &str| trigger.pointer(pointer).and_then(serde_json::Value::as_str).unwrap_or_default();
    match at("/spec/broker") {
        "" => at("/spec/brokerRef/name"),
        broker => broker,
    }
}

/// A Trigger's or Subscription's own `spec.delivery`: absent when null or `{}`, which specify no delivery option,
/// so that the Broker's or Channel's applies (the spec: ignored only if the Trigger "specifies any delivery
/// options"). The dispatcher and the derived status both read it here.
pub fn own_delivery(object: &serde_json::Value) -> Option<&serde_json::Value> {
    object.pointer("/spec/delivery").filter(|d| !d.is_null() && d.as_object().is_none_or(|fields| !fields.is_empty()))
}

/// The kinds a Subscription's channel is looked up as, in order: the kind its `spec.channel` names first, then the
/// other channel kind (a Channel and an InMemoryChannel of one name share the address `/channels/NS/NAME`). The
/// dispatcher and the derived status both read it here.
pub fn subscription_channel_kinds(subscription: &serde_json::Value) -> [&'static str; 2] {
    match subscription.pointer("/spec/channel/kind").and_then(serde_json::Value::as_str) {
        Some("InMemoryChannel") => ["InMemoryChannel", "Channel"],
        _ => ["Channel", "InMemoryChannel"],
    }
}

/// A Channel's `spec.channelTemplate` when none is written: Knative's default channel
/// (`default-ch-webhook`'s cluster default), the in-memory channel.
pub fn default_channel_template() -> serde_json::Value {
    serde_json::json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel"})
}

pub type Channel = Object<ChannelSpec>;
pub type InMemoryChannel = Object<InMemoryChannelSpec>;
pub type Subscription = Object<SubscriptionSpec>;
pub type EventPolicy = Object<EventPolicySpec>;

/// `eventing.knative.dev/v1alpha1` EventPolicy: who may send which events to which Brokers and Channels.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicySpec {
    /// The targets; empty: every Broker and Channel of the policy's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<EventPolicyTo>,
    /// The senders allowed; empty: nobody (the policy then only restricts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<EventPolicyFrom>,
    /// Every filter must match an event for the policy to allow it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<SubscriptionsApiFilter>,
}

/// One target of an EventPolicy: a reference or a label selector (with the kind it selects).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicyTo {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<EventPolicyTargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<EventPolicySelector>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicyTargetRef {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
}

/// `metav1.LabelSelector` plus the kind it selects.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicySelector {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    #[serde(default)]
    pub key: String,
    /// In, NotIn, Exists, DoesNotExist.
    #[serde(default)]
    pub operator: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// One allowed sender: a reference to a source (its OIDC identity) or a subject (`*` at the end matches any
/// suffix).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicyFrom {
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<EventPolicySourceRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventPolicySourceRef {
    #[serde(default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The kinds Sluice stores, with their API groups and kubectl names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KindInfo {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub plural: &'static str,
    pub short_names: &'static [&'static str],
}

pub const KINDS: [KindInfo; 10] = [
    KindInfo { kind: "Broker", api_version: "eventing.knative.dev/v1", plural: "brokers", short_names: &["broker"] },
    KindInfo { kind: "Trigger", api_version: "eventing.knative.dev/v1", plural: "triggers", short_names: &["trigger"] },
    KindInfo {
        kind: "Channel",
        api_version: "messaging.knative.dev/v1",
        plural: "channels",
        short_names: &["channel", "ch"],
    },
    KindInfo {
        kind: "InMemoryChannel",
        api_version: "messaging.knative.dev/v1",
        plural: "inmemorychannels",
        short_names: &["inmemorychannel", "imc"],
    },
    KindInfo {
        kind: "Subscription",
        api_version: "messaging.knative.dev/v1",
        plural: "subscriptions",
        short_names: &["subscription", "sub"],
    },
    KindInfo {
        kind: "Service",
        api_version: "serving.knative.dev/v1",
        plural: "services",
        short_names: &["service", "ksvc", "kservice"],
    },
    KindInfo {
        kind: "Configuration",
        api_version: "serving.knative.dev/v1",
        plural: "configurations",
        short_names: &["configuration", "config", "cfg"],
    },
    KindInfo {
        kind: "Revision",
        api_version: "serving.knative.dev/v1",
        plural: "revisions",
        short_names: &["revision", "rev"],
    },
    KindInfo { kind: "Route", api_version: "serving.knative.dev/v1", plural: "routes", short_names: &["route", "rt"] },
    KindInfo {
        kind: "EventPolicy",
        api_version: "eventing.knative.dev/v1alpha1",
        plural: "eventpolicies",
        short_names: &["eventpolicy", "ep"],
    },
];

/// Every kind whose objects status and resolution read: the [`KINDS`] and the serving runtime's internal facts.
pub fn world_kinds() -> impl Iterator<Item = &'static str> {
    KINDS.iter().map(|k| k.kind).chain(std::iter::once(crate::serving::REVISION_STATE_KIND))
}

/// Finds a kind by its name, plural or short name, case-insensitively.
pub fn kind_info(name: &str) -> Option<&'static KindInfo> {
    let name = name.to_ascii_lowercase();
    KINDS
        .iter()
        .find(|k| k.kind.to_ascii_lowercase() == name || k.plural == name || k.short_names.contains(&name.as_str()))
}
