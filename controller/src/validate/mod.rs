//! Validation as Knative's webhook does it: every error names the field path.
//!
//! First the object is read into its kind's typed form ([`strict`]): a field
//! Knative's types do not have is refused (`spec.delivery.retires: unknown
//! field (known fields: ...)`), and so is a value of the wrong type
//! (`spec.delivery.retry: expected an integer, got a string "3"`). Then, if
//! the types fit, the webhook's rules run on the typed object.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::model::{
    Broker, Channel, DeliverySpec, Destination, EventPolicy, InMemoryChannel, KReference, Subscription,
    SubscriptionsApiFilter, Trigger, kind_info,
};

mod metadata;
mod strict;

use metadata::validate_metadata;
pub use metadata::{MAX_ANNOTATION_BYTES, MAX_OBJECT_BYTES};

/// The longest dedupe window a Broker may ask for (`sluice.dev/dedupe-window`): it bounds the memory a window
/// holds.
pub const MAX_DEDUPE_WINDOW: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

pub use crate::fields::{
    DeliveryDuration, DurationError, FieldError, is_dns_1035_label, is_dns_label, is_dns_subdomain, label_value_error,
    parse_backoff_max_ms, parse_duration, parse_iso_duration_ms, parse_size, qualified_name_error,
};
use crate::serving::ServingFeatures;
use crate::serving::model as serving;
use crate::serving::validate as serving_rules;

fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), message: message.into() }
}

pub const BROKER_CLASS_ANNOTATION: &str = "eventing.knative.dev/broker.class";
pub const SLUICE_ANNOTATION_PREFIX: &str = "sluice.dev/";
/// The `sluice.dev/` annotations Sluice knows; others under that prefix are refused.
pub const SLUICE_ANNOTATIONS: [&str; 13] = [
    "sluice.dev/ttl",
    "sluice.dev/dedupe-window",
    "sluice.dev/retention",
    "sluice.dev/initial-offset",
    "sluice.dev/delivery-order",
    "sluice.dev/max-inflight",
    "sluice.dev/rate-limit",
    "sluice.dev/backoff-max",
    "sluice.dev/backoff-jitter",
    "sluice.dev/dead-letter",
    "sluice.dev/subscriber-protocol",
    "sluice.dev/paused",
    "sluice.dev/delivery-batch-max-events",
];
/// The kinds a known `sluice.dev/` annotation acts on (`None`: not a known one). Elsewhere it would do nothing,
/// so it is refused, as a typo is: `sluice.dev/ttl` on a Trigger was accepted and ignored.
pub fn sluice_annotation_kinds(key: &str) -> Option<&'static [&'static str]> {
    const STREAMS: &[&str] = &["Broker", "Channel", "InMemoryChannel"];
    const CONSUMERS: &[&str] = &["Trigger", "Subscription"];
    match key {
        "sluice.dev/ttl" | "sluice.dev/dedupe-window" | "sluice.dev/retention" => Some(STREAMS),
        key if SLUICE_ANNOTATIONS.contains(&key) => Some(CONSUMERS),
        _ => None,
    }
}

/// Knative's Kafka broker names the ordering annotation this way; Sluice accepts it too.
pub const KAFKA_DELIVERY_ORDER_ANNOTATION: &str = "kafka.eventing.knative.dev/delivery.order";
/// Most concurrent deliveries `sluice.dev/max-inflight` may ask for, per Trigger and partition.
pub const MAX_INFLIGHT_LIMIT: u32 = 10_000;
/// Most events `sluice.dev/delivery-batch-max-events` may put in one request to the subscriber.
pub const MAX_DELIVERY_BATCH_EVENTS: u32 = 1_000;
/// The bounds of `sluice.dev/rate-limit`, events per second: one event in about 17 minutes, a billion a second.
pub const MIN_RATE_LIMIT: f64 = 0.001;
pub const MAX_RATE_LIMIT: f64 = 1e9;

/// Knative's filter attribute names: `^[a-z][a-z0-9]*$`.
pub fn is_attribute_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

/// Reads `object` strictly into `T`, adding its unknown fields and type
/// error to `errors`; None if a type error leaves no typed object.
fn typed<T: DeserializeOwned>(object: &Value, errors: &mut Vec<FieldError>) -> Option<T> {
    let (typed, mut schema) = strict::read(object);
    errors.append(&mut schema);
    typed
}

/// Validates `object`; `existing` is the stored object it would replace
/// (for the immutable fields).
pub fn validate_object(object: &Value, existing: Option<&Value>) -> Result<(), Vec<FieldError>> {
    validate_object_with(object, existing, &ServingFeatures::default())
}

/// [`validate_object`] on a cluster where the serving feature flags `features` are enabled (a node's
/// `--serving-feature`).
pub fn validate_object_with(
    object: &Value,
    existing: Option<&Value>,
    features: &ServingFeatures,
) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    let Some(map) = object.as_object() else {
        return Err(vec![err("", "an object must be a mapping")]);
    };
    let kind = map.get("kind").and_then(Value::as_str).unwrap_or_default();
    // kubectl's "apiVersion not set, kind not set" (regression: `kind: "" is not one of ...`).
    if kind.is_empty() {
        let kinds = crate::model::KINDS.map(|k| k.kind).join(", ");
        let mut missing = vec![err("kind", format!("required: one of {kinds}"))];
        if map.get("apiVersion").is_none_or(Value::is_null) {
            missing.insert(0, err("apiVersion", "required"));
        }
        return Err(missing);
    }
    let Some(info) = kind_info(kind).filter(|k| k.kind == kind) else {
        return Err(vec![err(
            "kind",
            format!("{kind:?} is not one of {}", crate::model::KINDS.map(|k| k.kind).join(", ")),
        )]);
    };
    // A non-string apiVersion is a type error, which the strict reading names.
    let api_version = map.get("apiVersion").unwrap_or(&Value::Null);
    if api_version.as_str() != Some(info.api_version) && (api_version.is_string() || api_version.is_null()) {
        let api_version = api_version.as_str().unwrap_or_default();
        errors.push(err("apiVersion", format!("must be {} for {kind}, got {api_version:?}", info.api_version)));
    }
    // The rules run on a well-typed object only; after a type error only the
    // schema errors are reported, as Knative reports its decoding error alone.
    let mut rules = Vec::new();
    let well_typed = match kind {
        "Broker" => typed::<Broker>(object, &mut errors).map(|b| validate_broker(&b, existing, &mut rules)),
        "Trigger" => typed::<Trigger>(object, &mut errors).map(|t| validate_trigger(&t, existing, &mut rules)),
        "Channel" => typed::<Channel>(object, &mut errors).map(|c| {
            validate_channel(c.spec.delivery.as_ref(), &mut rules);
            // Knative: "spec.channelTemplate ... MUST be immutable" (the backing channel is made from it once).
            // Compared with Knative's default written out: a Channel made without one was made with it.
            let template = |o: &Value| {
                o.pointer("/spec/channelTemplate").cloned().unwrap_or_else(crate::model::default_channel_template)
            };
            if let Some(existing) = existing
                && template(existing) != template(object)
            {
                rules.push(err("spec.channelTemplate", "field is immutable"));
            }
        }),
        "InMemoryChannel" => typed::<InMemoryChannel>(object, &mut errors)
            .map(|c| validate_channel(c.spec.delivery.as_ref(), &mut rules)),
        "Subscription" => {
            typed::<Subscription>(object, &mut errors).map(|s| validate_subscription(&s, existing, &mut rules))
        }
        "Service" => typed::<serving::Service>(object, &mut errors)
            .map(|s| serving_rules::validate_service(&s, existing, features, &mut rules)),
        "Configuration" => typed::<serving::Configuration>(object, &mut errors)
            .map(|c| serving_rules::validate_configuration(&c, existing, features, &mut rules)),
        "Revision" => typed::<serving::Revision>(object, &mut errors)
            .map(|r| serving_rules::validate_revision(&r, existing, features, &mut rules)),
        "Route" => typed::<serving::Route>(object, &mut errors).map(|r| serving_rules::validate_route(&r, &mut rules)),
        "EventPolicy" => typed::<EventPolicy>(object, &mut errors).map(|p| validate_event_policy(&p, &mut rules)),
        other => {
            return Err(vec![err("kind", format!("{other:?} has no validation rules (a bug: it is in KINDS)"))]);
        }
    }
    .is_some();
    if well_typed {
        validate_metadata(object, existing, &mut errors);
        errors.append(&mut rules);
    }
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn validate_channel(delivery: Option<&DeliverySpec>, errors: &mut Vec<FieldError>) {
    if let Some(delivery) = delivery {
        validate_delivery("spec.delivery", delivery, errors);
    }
}

/// `sluice.dev/retention`: a duration, a size, or one of each (comma-separated), each above zero. Regression:
/// `0s` and `0` (keep nothing: every event trimmed at the next check) were accepted, as were two durations or two
/// sizes, of which the last silently won.
fn check_retention(value: &str) -> Result<(), String> {
    const FORM: &str = "a duration and/or a size, e.g. 7d, 24h, 10GiB or 24h,10GiB";
    let (mut durations, mut sizes) = (0, 0);
    for part in value.split(',') {
        // Regression: "300" was taken as 300 bytes, and a Broker meant to keep 300 seconds kept one event.
        if !part.trim().is_empty() && part.trim().bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!(
                "{FORM}: {:?} has no unit (a size takes B, KB, MiB, ...; a duration s, m, h or d)",
                part.trim()
            ));
        }
        if let Some(bytes) = parse_size(part) {
            if bytes == 0 {
                return Err(format!("{FORM}: a size of 0 keeps nothing (to keep nothing, delete the Broker)"));
            }
            sizes += 1;
        } else if let Ok(duration) = parse_duration(part) {
            if duration.is_zero() {
                return Err(format!("{FORM}: a duration of 0 keeps nothing (to keep nothing, delete the Broker)"));
            }
            durations += 1;
        } else {
            return Err(FORM.to_string());
        }
    }
    if durations > 1 || sizes > 1 {
        return Err(format!("{FORM}: at most one duration and one size"));
    }
    Ok(())
}

fn validate_broker(broker: &Broker, existing: Option<&Value>, errors: &mut Vec<FieldError>) {
    if let Some(config) = &broker.spec.config {
        // Knative's `KReference.Validate`: kind, name and apiVersion (`v1` for a ConfigMap).
        validate_reference("spec.config", config, true, errors);
    }
    // As the class: a Broker stored without one (Knative would have defaulted it from `config-br-defaults`,
    // Sluice uses none) may get one once, then it is fixed.
    if let Some(stored_config) = existing.and_then(|e| e.pointer("/spec/config"))
        && Some(stored_config) != serde_json::to_value(&broker.spec.config).ok().filter(|v| !v.is_null()).as_ref()
    {
        errors.push(err("spec.config", "field is immutable"));
    }
    if let Some(delivery) = &broker.spec.delivery {
        validate_delivery("spec.delivery", delivery, errors);
    }
}

/// Knative's `knative.dev/dependency` annotation on a Trigger: a JSON object reference (kind, name and
/// apiVersion; a namespace, if any, the Trigger's own) to what the Trigger waits for.
const DEPENDENCY_ANNOTATION: &str = "knative.dev/dependency";
/// Knative's `eventing.knative.dev/injection`: `enabled` or `disabled`, and only on a Trigger of Broker `default`.
const INJECTION_ANNOTATION: &str = "eventing.knative.dev/injection";

fn validate_trigger_annotations(trigger: &Trigger, errors: &mut Vec<FieldError>) {
    let annotations = &trigger.metadata.annotations;
    if let Some(dependency) = annotations.get(DEPENDENCY_ANNOTATION) {
        let path = format!("metadata.annotations[{DEPENDENCY_ANNOTATION}]");
        match serde_json::from_str::<serde_json::Map<String, Value>>(dependency) {
            Err(e) => errors.push(err(
                &path,
                format!("The provided annotation was not a corev1.ObjectReference: {dependency:?}: {e}"),
            )),
            Ok(reference) => {
                let field = |name: &str| reference.get(name).and_then(Value::as_str).unwrap_or_default();
                let own = trigger.metadata.namespace.as_str();
                if !field("namespace").is_empty() && field("namespace") != own {
                    errors.push(err(
                        format!("{path}.namespace"),
                        format!("Namespace must be empty or equal to the trigger namespace {own:?}"),
                    ));
                }
                for required in ["kind", "name", "apiVersion"] {
                    if field(required).is_empty() {
                        errors.push(err(format!("{path}.{required}"), "missing field(s)"));
                    }
                }
            }
        }
    }
    if let Some(injection) = annotations.get(INJECTION_ANNOTATION) {
        let path = format!("metadata.annotations[{INJECTION_ANNOTATION}]");
        if injection != "enabled" && injection != "disabled" {
            errors.push(err(
                path,
                format!(
                    "The provided injection annotation value can only be \"enabled\" or \"disabled\", not {injection:?}"
                ),
            ));
        } else {
            let broker = trigger.spec.broker_name();
            if broker != "default" {
                errors.push(err(
                    path,
                    format!(
                        "The provided injection annotation is only used for default broker, but non-default broker specified here: {broker:?}"
                    ),
                ));
            }
        }
    }
}

fn validate_trigger(trigger: &Trigger, existing: Option<&Value>, errors: &mut Vec<FieldError>) {
    validate_trigger_annotations(trigger, errors);
    let spec = &trigger.spec;
    // Knative: `broker` or `brokerRef`, exactly one. A `brokerRef` names a Broker of the Trigger's namespace (a
    // namespace of its own needs Knative's cross-namespace event links, which Sluice does not have).
    let (broker_path, broker) = match (&spec.broker, &spec.broker_ref) {
        (broker, None) => ("spec.broker", broker.as_str()),
        (broker, Some(reference)) if broker.is_empty() => {
            validate_reference("spec.brokerRef", reference, true, errors);
            if reference.kind != "Broker" && !reference.kind.is_empty() {
                errors.push(err("spec.brokerRef.kind", format!("invalid value: {}: must be Broker", reference.kind)));
            }
            let own = trigger.metadata.namespace.as_str();
            if reference.namespace.as_deref().is_some_and(|namespace| !namespace.is_empty() && namespace != own) {
                errors.push(err(
                    "spec.brokerRef.namespace",
                    "must not set the field(s): cross-namespace event links are not supported; the Broker is in the \
                     Trigger's namespace",
                ));
            }
            ("spec.brokerRef.name", reference.name.as_str())
        }
        (_, Some(_)) => {
            errors.push(err("spec", "expected exactly one, got both: spec.broker, spec.brokerRef"));
            ("spec.broker", spec.broker.as_str())
        }
    };
    if broker.is_empty() {
        if spec.broker_ref.is_none() {
            errors.push(err("spec.broker", "required"));
        }
    } else if !is_dns_subdomain(broker) {
        errors.push(err(broker_path, format!("{broker:?} must be a DNS-1123 subdomain (a Broker's name)")));
    }
    if let Some(existing) = existing {
        let before = crate::model::trigger_broker(existing);
        if before != broker {
            errors.push(err(broker_path, format!("field is immutable (was {before:?})")));
        }
    }
    match &spec.subscriber {
        None => errors.push(err("spec.subscriber", "required")),
        Some(subscriber) => validate_destination("spec.subscriber", subscriber, errors),
    }
    if let Some(attributes) = spec.filter.as_ref().and_then(|f| f.attributes.as_ref()) {
        for name in attributes.keys() {
            if !is_attribute_name(name) {
                errors.push(err(format!("spec.filter.attributes[{name}]"), "attribute names match ^[a-z][a-z0-9]*$"));
            }
        }
    }
    for (i, filter) in spec.filters.iter().flatten().enumerate() {
        validate_filter(&format!("spec.filters[{i}]"), filter, errors);
    }
    if let Some(delivery) = &spec.delivery {
        validate_delivery("spec.delivery", delivery, errors);
    }
}

/// Whether a filter sets no dialect (`{}`).
fn sets_no_dialect(filter: &SubscriptionsApiFilter) -> bool {
    filter.exact.is_none()
        && filter.prefix.is_none()
        && filter.suffix.is_none()
        && filter.all.is_none()
        && filter.any.is_none()
        && filter.not.is_none()
        && filter.cesql.is_none()
}

/// As Knative's webhook (`hasMultipleDialects`): at most one dialect set with something in it; an empty one
/// (`{"exact": {}}`, `{"all": []}`, `{"not": {}}`, `{"cesql": ""}`) and a filter of none (`{}`) are no condition,
/// skipped where they stand (`sluice_cloudevent::filter`, as Knative's `MaterializeSubscriptionsAPIFilter`).
/// Regression: they were refused, and Knative YAML holding them did not apply.
fn validate_filter(path: &str, filter: &SubscriptionsApiFilter, errors: &mut Vec<FieldError>) {
    let dialects = [
        filter.exact.as_ref().is_some_and(|m| !m.is_empty()),
        filter.prefix.as_ref().is_some_and(|m| !m.is_empty()),
        filter.suffix.as_ref().is_some_and(|m| !m.is_empty()),
        filter.all.as_ref().is_some_and(|l| !l.is_empty()),
        filter.any.as_ref().is_some_and(|l| !l.is_empty()),
        filter.not.as_ref().is_some_and(|n| !sets_no_dialect(n)),
        filter.cesql.as_ref().is_some_and(|e| !e.is_empty()),
    ];
    let count = dialects.iter().filter(|d| **d).count();
    if count > 1 {
        errors.push(err(path, format!("at most one of exact, prefix, suffix, all, any, not, cesql; got {count}")));
        return;
    }
    for (dialect, map) in [("exact", &filter.exact), ("prefix", &filter.prefix), ("suffix", &filter.suffix)] {
        if let Some(map) = map {
            for (name, value) in map {
                if !is_attribute_name(name) {
                    errors.push(err(format!("{path}.{dialect}[{name}]"), "attribute names match ^[a-z][a-z0-9]*$"));
                }
                // Subscriptions API 3.2.4.1.1 and Knative's Trigger CRD: the value MUST NOT be empty (unlike the
                // legacy `filter.attributes`, where an empty value means any value).
                if value.is_empty() {
                    errors.push(err(
                        format!("{path}.{dialect}[{name}]"),
                        "must not be empty (the value of an exact, prefix or suffix filter MUST NOT be empty)",
                    ));
                }
            }
        }
    }
    for (dialect, list) in [("all", &filter.all), ("any", &filter.any)] {
        if let Some(list) = list {
            for (i, nested) in list.iter().enumerate() {
                validate_filter(&format!("{path}.{dialect}[{i}]"), nested, errors);
            }
        }
    }
    if let Some(nested) = &filter.not {
        validate_filter(&format!("{path}.not"), nested, errors);
    }
    if let Some(expression) = filter.cesql.as_ref().filter(|e| !e.is_empty()) {
        match sluice_cesql::parse(expression) {
            Err(e) => errors.push(err(format!("{path}.cesql"), format!("does not parse: {e}"))),
            // "Implementations SHOULD reject subscriptions with invalid CloudEvents SQL expressions": a call no
            // function answers fails on every event. Regression: `LOWR(type) = 'x'` was taken, Ready, and matched
            // nothing, said only by a metric.
            Ok(parsed) => {
                if let Err(e) = parsed.check_functions() {
                    errors.push(err(
                        format!("{path}.cesql"),
                        format!(
                            "{e}; the filter could never match (the functions: LOWER, UPPER, TRIM, LENGTH, CONCAT, \
                             CONCAT_WS, LEFT, RIGHT, SUBSTRING, ABS, INT, BOOL, STRING, IS_INT, IS_BOOL)"
                        ),
                    ));
                }
            }
        }
    }
}

fn validate_event_policy(policy: &EventPolicy, errors: &mut Vec<FieldError>) {
    let spec = &policy.spec;
    for (i, to) in spec.to.iter().enumerate() {
        let path = format!("spec.to[{i}]");
        match (&to.reference, &to.selector) {
            (Some(reference), None) => {
                if reference.name.is_empty() {
                    errors.push(err(format!("{path}.ref.name"), "required"));
                }
                if !matches!(reference.kind.as_str(), "Broker" | "Channel" | "InMemoryChannel") {
                    errors.push(err(format!("{path}.ref.kind"), "must be Broker, Channel or InMemoryChannel"));
                }
            }
            (None, Some(selector)) => {
                if !matches!(selector.kind.as_str(), "Broker" | "Channel" | "InMemoryChannel") {
                    errors.push(err(format!("{path}.selector.kind"), "must be Broker, Channel or InMemoryChannel"));
                }
                for (j, requirement) in selector.match_expressions.iter().flatten().enumerate() {
                    let values = requirement.values.as_ref().map_or(0, Vec::len);
                    let rule = match requirement.operator.as_str() {
                        "In" | "NotIn" if values == 0 => Some("In and NotIn need values"),
                        "Exists" | "DoesNotExist" if values > 0 => Some("Exists and DoesNotExist take no values"),
                        "In" | "NotIn" | "Exists" | "DoesNotExist" => None,
                        _ => Some("operator must be In, NotIn, Exists or DoesNotExist"),
                    };
                    if let Some(rule) = rule {
                        errors.push(err(format!("{path}.selector.matchExpressions[{j}]"), rule));
                    }
                }
            }
            _ => errors.push(err(path, "exactly one of ref and selector")),
        }
    }
    for (i, from) in spec.from.iter().enumerate() {
        let path = format!("spec.from[{i}]");
        match (&from.reference, &from.sub) {
            (Some(reference), None) => {
                if reference.name.is_empty() || reference.kind.is_empty() {
                    errors.push(err(format!("{path}.ref"), "kind and name are required"));
                }
            }
            (None, Some(sub)) => {
                if sub.is_empty() {
                    errors.push(err(format!("{path}.sub"), "must not be empty"));
                } else if sub.trim_end_matches('*').contains('*') {
                    errors.push(err(format!("{path}.sub"), "'*' is allowed only at the end"));
                }
            }
            _ => errors.push(err(path, "exactly one of ref and sub")),
        }
    }
    for (i, filter) in spec.filters.iter().enumerate() {
        validate_filter(&format!("spec.filters[{i}]"), filter, errors);
    }
}

fn validate_subscription(subscription: &Subscription, existing: Option<&Value>, errors: &mut Vec<FieldError>) {
    let spec = &subscription.spec;
    match &spec.channel {
        None => errors.push(err("spec.channel", "required")),
        Some(channel) => {
            validate_reference("spec.channel", channel, true, errors);
            // Stricter than Knative, which only wants it non-empty: the name goes into the channel's stream and
            // the Subscription's cursor, and no channel can have another (a '/' or '#' would reach into another
            // channel's keys).
            if !channel.name.is_empty() && !is_dns_subdomain(&channel.name) {
                errors.push(err(
                    "spec.channel.name",
                    format!("{:?} must be a DNS-1123 subdomain (a channel's name)", channel.name),
                ));
            }
            // Knative: the channel is in the Subscription's namespace, so its `namespace` is unset, empty, or
            // (as Knative's reference check lets through) that same namespace.
            let own = subscription.metadata.namespace.as_str();
            if channel.namespace.as_deref().is_some_and(|namespace| !namespace.is_empty() && namespace != own) {
                errors.push(err(
                    "spec.channel.namespace",
                    "must be unset: the channel is in the Subscription's own namespace",
                ));
            }
        }
    }
    if let Some(existing) = existing
        && existing.pointer("/spec/channel")
            != serde_json::to_value(&spec.channel).ok().filter(|v| !v.is_null()).as_ref()
    {
        errors.push(err("spec.channel", "field is immutable"));
    }
    // Knative v1: a subscriber is required (an empty one is none); an empty `reply: {}` is no reply.
    match spec.subscriber.as_ref().filter(|d| !is_empty_destination(d)) {
        None => errors.push(err("spec.subscriber", "missing field(s): the Subscription must reference a subscriber")),
        Some(subscriber) => validate_destination("spec.subscriber", subscriber, errors),
    }
    if let Some(reply) = spec.reply.as_ref().filter(|d| !is_empty_destination(d)) {
        validate_destination("spec.reply", reply, errors);
    }
    if let Some(delivery) = &spec.delivery {
        validate_delivery("spec.delivery", delivery, errors);
    }
}

fn validate_reference(path: &str, reference: &KReference, needs_api_version: bool, errors: &mut Vec<FieldError>) {
    if reference.kind.is_empty() {
        errors.push(err(format!("{path}.kind"), "required"));
    }
    if reference.name.is_empty() {
        errors.push(err(format!("{path}.name"), "required"));
    }
    if needs_api_version && reference.api_version.as_deref().unwrap_or_default().is_empty() {
        errors.push(err(format!("{path}.apiVersion"), "required"));
    }
}

/// Knative's `isDestinationNilOrEmpty`: a destination with nothing in it.
fn is_empty_destination(destination: &Destination) -> bool {
    destination.reference.is_none()
        && destination.uri.as_deref().is_none_or(str::is_empty)
        && destination.ca_certs.is_none()
        && destination.audience.is_none()
}

/// The host of an absolute `scheme://[userinfo@]host[:port]/...` URL (empty when it has none), and its port's
/// text (`None` without a `:`).
fn uri_host_port(rest_after_scheme: &str) -> (&str, Option<&str>) {
    let authority = rest_after_scheme.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
    match host_port.strip_prefix('[') {
        Some(bracketed) => {
            let (host, after) = bracketed.split_once(']').unwrap_or((bracketed, ""));
            (host, after.strip_prefix(':'))
        }
        None => host_port.split_once(':').map_or((host_port, None), |(host, port)| (host, Some(port))),
    }
}

/// A URL's port as Knative's `url.Parse` and a connection need it: digits (or none, the scheme's default) that
/// name a port, 0 to 65535. A port that is not one must be refused here: the HTTP client would read no port
/// and send the events to the scheme's default port, another server.
fn port_ok(port: &str) -> bool {
    port.is_empty() || (port.bytes().all(|b| b.is_ascii_digit()) && port.parse::<u16>().is_ok())
}

/// Knative's check of a Destination's `CACerts`: PEM, of certificates (not a key or a request), each one that
/// parses as X.509, as the dispatcher's TLS client will need them. `None` when they are fine.
fn ca_certs_problem(pem: &str) -> Option<&'static str> {
    let mut certificates = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let Ok(block) = block else { return Some("CA Cert provided is invalid (not PEM)") };
        if block.label != "CERTIFICATE" {
            return Some("CA Cert provided is not a certificate");
        }
        if block.parse_x509().is_err() {
            return Some("CA Cert provided is invalid (not an X.509 certificate)");
        }
        certificates += 1;
    }
    (certificates == 0).then_some("CA Cert provided is invalid (no PEM certificate in it)")
}

fn validate_destination(path: &str, destination: &Destination, errors: &mut Vec<FieldError>) {
    if let Some(problem) = destination.ca_certs.as_deref().and_then(ca_certs_problem) {
        errors.push(err(format!("{path}.CACerts"), problem));
    }
    match (&destination.reference, &destination.uri) {
        (None, None) => errors.push(err(path, "expected exactly one, got neither: ref, uri")),
        (Some(reference), uri) => {
            validate_reference(&format!("{path}.ref"), reference, true, errors);
            if let Some(uri) = uri
                && uri.contains("://")
            {
                errors.push(err(
                    format!("{path}.uri"),
                    "with a ref, uri must be relative (it is joined to the ref's address)",
                ));
            }
        }
        (None, Some(uri)) => {
            // Knative: an absolute URI with a host (`http:///x` has none).
            let Some((scheme, rest)) = uri.split_once("://") else {
                errors.push(err(format!("{path}.uri"), format!("{uri:?} must be an absolute http(s) URL")));
                return;
            };
            let (host, port) = uri_host_port(rest);
            if !matches!(scheme, "http" | "https") || host.is_empty() || rest.contains(char::is_whitespace) {
                errors.push(err(format!("{path}.uri"), format!("{uri:?} must be an absolute http(s) URL")));
            } else if let Some(port) = port.filter(|port| !port_ok(port)) {
                errors.push(err(format!("{path}.uri"), format!("{uri:?}: port {port:?} must be a number, 0 to 65535")));
            }
        }
    }
}

fn validate_delivery(path: &str, delivery: &DeliverySpec, errors: &mut Vec<FieldError>) {
    if let Some(sink) = &delivery.dead_letter_sink {
        validate_destination(&format!("{path}.deadLetterSink"), sink, errors);
    }
    if let Some(retry) = delivery.retry
        && retry < 0
    {
        errors.push(err(format!("{path}.retry"), "must be >= 0"));
    }
    if let Some(policy) = &delivery.backoff_policy
        && !matches!(policy.as_str(), "linear" | "exponential")
    {
        errors.push(err(format!("{path}.backoffPolicy"), "must be linear or exponential"));
    }
    // The dispatcher parses these with the same function when it builds the consumer, so every rule it applies
    // (the ISO-8601 grammar, a timeout greater than zero) is refused here, before the object is stored.
    for (kind, value) in [
        (DeliveryDuration::BackoffDelay, &delivery.backoff_delay),
        (DeliveryDuration::Timeout, &delivery.timeout),
        (DeliveryDuration::RetryAfterMax, &delivery.retry_after_max),
    ] {
        if let Some(value) = value
            && let Err(e) = kind.parse_ms(value)
        {
            errors.push(err(format!("{path}.{}", kind.field()), e.to_string()));
        }
    }
    if let Some(format) = &delivery.format
        && !matches!(format.as_str(), "json" | "binary")
    {
        errors.push(err(format!("{path}.format"), "must be json or binary"));
    }
}

#[cfg(test)]
mod tests;
