//! Knative Serving's webhook rules (knative/serving `pkg/apis/serving/v1/*_validation.go`,
//! `pkg/apis/serving/k8s_validation.go`, `pkg/apis/autoscaling/annotation_validation.go`), with Knative's
//! messages and Sluice's path style (`spec.traffic[1].tag`, `metadata.annotations[key]`). They run on an
//! object that is well typed (see `crate::validate`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use super::isolation::{MULTI_CONTAINER_PROBING, ServingFeatures};
use super::model::{
    Container, Probe, Revision, RevisionTemplateSpec, Route, Service, TrafficTarget, with_knative_defaults,
};
use super::rollout::ROLLOUT_DURATION_ANNOTATION;
use super::{AUTOSCALING_PREFIX, MAX_CONTAINER_CONCURRENCY, RESERVED_ENV, RESERVED_PORTS};
use crate::fields::{FieldError, is_dns_1035_label, is_dns_subdomain};

fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), message: message.into() }
}

fn bounds(path: String, low: i64, value: i64, high: i64, errors: &mut Vec<FieldError>) {
    if value < low || value > high {
        errors.push(err(path, format!("expected {low} <= {value} <= {high}")));
    }
}

/// A serving object's `metadata.name` is a DNS-1035 label (knative.dev/serving's `ValidateObjectMetadata`): it
/// starts with a letter, has no '.' and at most 63 characters. A name that is not even a DNS-1123 subdomain is
/// refused by the metadata rules of every kind (`crate::validate`), so it is not named twice here.
fn serving_name(name: &str, errors: &mut Vec<FieldError>) {
    if is_dns_subdomain(name) && !is_dns_1035_label(name) {
        errors.push(err(
            "metadata.name",
            format!(
                "not a DNS 1035 label: {name:?} must start with a letter, hold lower-case letters, digits and '-', \
                 at most 63"
            ),
        ));
    }
}

pub(crate) fn validate_service(
    service: &Service,
    existing: Option<&Value>,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    let name = &service.metadata.name;
    serving_name(name, errors);
    validate_visibility(&service.metadata.labels, errors);
    no_autoscaling_on_parent(&service.metadata.annotations, errors);
    validate_rollout_duration(&service.metadata.annotations, errors);
    validate_template("spec.template", name, &service.spec.template, existing, features, errors);
    if let Some(traffic) = &service.spec.traffic {
        validate_traffic(traffic, TrafficOf::Service, errors);
    }
}

pub(crate) fn validate_configuration(
    configuration: &super::model::Configuration,
    existing: Option<&Value>,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    serving_name(&configuration.metadata.name, errors);
    no_autoscaling_on_parent(&configuration.metadata.annotations, errors);
    let template = &configuration.spec.template;
    validate_template("spec.template", &configuration.metadata.name, template, existing, features, errors);
}

pub(crate) fn validate_revision(
    revision: &Revision,
    existing: Option<&Value>,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    serving_name(&revision.metadata.name, errors);
    validate_revision_spec("spec", &revision.spec, features, errors);
    validate_scale_annotations("metadata.annotations", &revision.metadata.annotations, features, errors);
    validate_progress_deadline("metadata.annotations", &revision.metadata.annotations, errors);
    // Compared as Knative compares them, after its defaults (Knative stores a Revision defaulted at creation;
    // Sluice stores it as applied).
    if let Some(existing) = existing
        && let Ok(stored) = serde_json::from_value::<Revision>(existing.clone())
        && with_knative_defaults(&stored.spec) != with_knative_defaults(&revision.spec)
    {
        errors.push(err("spec", "Immutable fields changed (-old +new): a Revision's spec never changes"));
    }
}

pub(crate) fn validate_route(route: &Route, errors: &mut Vec<FieldError>) {
    serving_name(&route.metadata.name, errors);
    validate_visibility(&route.metadata.labels, errors);
    validate_rollout_duration(&route.metadata.annotations, errors);
    match route.spec.traffic.as_deref() {
        // A Route is its traffic: with none it would route nothing (a Service's may be left out: it defaults).
        None | Some([]) => errors.push(err("spec.traffic", "Traffic targets sum to 0, want 100")),
        Some(traffic) => validate_traffic(traffic, TrafficOf::Route, errors),
    }
}

/// Knative's `validateClusterVisibilityLabel`: the visibility label, when set, says `cluster-local` (anything else
/// would be read as public, so a typo would publish what was meant to stay inside).
fn validate_visibility(labels: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for label in [super::VISIBILITY_LABEL, super::LEGACY_VISIBILITY_LABEL] {
        if let Some(value) = labels.get(label)
            && value != "cluster-local"
        {
            let message = format!("invalid value: {value:?}: the only visibility is \"cluster-local\"");
            errors.push(err(format!("metadata.labels[{label}]"), message));
        }
    }
}

/// Knative's `ValidateRolloutDurationAnnotation`: Go's duration syntax, and not negative.
fn validate_rollout_duration(annotations: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    let Some(value) = annotations.get(ROLLOUT_DURATION_ANNOTATION) else { return };
    let path = format!("metadata.annotations[{ROLLOUT_DURATION_ANNOTATION}]");
    if super::rollout::parse_duration_ms(value).is_err() {
        let message = if value.trim().starts_with('-') {
            format!("rollout-duration={value} must be positive")
        } else {
            format!("invalid value: {value:?}: not a duration (Go's syntax: 380s, 10m, 1h30m)")
        };
        errors.push(err(path, message));
    }
}

/// Autoscaling annotations act on Revisions: on a Service or Configuration they would do nothing.
fn no_autoscaling_on_parent(annotations: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    for key in annotations.keys().filter(|key| key.starts_with(AUTOSCALING_PREFIX)) {
        errors.push(err(
            format!("metadata.annotations[{key}]"),
            format!(
                "invalid key name {key:?}: autoscaling annotations must be put under spec.template.metadata.annotations to work"
            ),
        ));
    }
}

fn validate_template(
    path: &str,
    parent: &str,
    template: &RevisionTemplateSpec,
    existing: Option<&Value>,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    let name = &template.metadata.name;
    if !name.is_empty() {
        let prefix = format!("{parent}-");
        if !name.starts_with(&prefix) {
            errors.push(err(
                format!("{path}.metadata.name"),
                format!("invalid value: {name:?} must have prefix {prefix:?}"),
            ));
        } else if !is_dns_1035_label(name) {
            errors.push(err(
                format!("{path}.metadata.name"),
                format!("invalid value: {name:?} is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter, at most 63)"),
            ));
        }
        // A template with its own name names one Revision: changing the template means a new name. Both sides
        // are compared after Knative's defaults, as Knative's webhook compares a template it stored defaulted
        // (Sluice stores it as applied): writing out a default (`timeoutSeconds: 300`) changes nothing.
        if let Some(stored) = existing.and_then(|e| e.pointer("/spec/template"))
            && let Ok(stored) = serde_json::from_value::<RevisionTemplateSpec>(stored.clone())
            && stored.metadata.name == *name
            && (with_knative_defaults(&stored.spec) != with_knative_defaults(&template.spec)
                || stored.metadata.annotations != template.metadata.annotations)
        {
            errors.push(err(
                format!("{path}.metadata.name"),
                format!("Saw the following changes without a name change (-old +new): give the template a new name than {name:?}"),
            ));
        }
    }
    let annotations = &template.metadata.annotations;
    validate_scale_annotations(&format!("{path}.metadata.annotations"), annotations, features, errors);
    validate_progress_deadline(&format!("{path}.metadata.annotations"), annotations, errors);
    validate_revision_spec(&format!("{path}.spec"), &template.spec, features, errors);
}

fn validate_progress_deadline(path: &str, annotations: &BTreeMap<String, String>, errors: &mut Vec<FieldError>) {
    let key = super::PROGRESS_DEADLINE_ANNOTATION;
    if let Some(value) = annotations.get(key)
        && let Err(why) = super::progress_deadline_ms(value)
    {
        errors.push(err(format!("{path}[{key}]"), why));
    }
}

/// The annotations over the autoscaling defaults of the node the object is applied through (`--autoscaler`):
/// bounds that depend on them (`max-scale-limit`, `allow-zero-initial-scale`) are the cluster's, as Knative's
/// webhook reads them from `config-autoscaler`. Before session 58 they were Knative's stock defaults, so an
/// `initial-scale` of 0 was refused on a cluster that allows it, and a `max-scale` above the node's
/// `max-scale-limit` was taken and never ran.
fn validate_scale_annotations(
    path: &str,
    annotations: &BTreeMap<String, String>,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    if let Err(broken) = super::autoscaling::resolve(annotations, 0, features.autoscaler_defaults()) {
        errors.extend(broken.into_iter().map(|e| err(format!("{path}{}", e.path), e.message)));
    }
}

fn validate_revision_spec(
    path: &str,
    spec: &super::model::RevisionSpec,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    if spec.containers.is_empty() {
        errors.push(err(format!("{path}.containers"), "missing field(s)"));
    }
    let with_ports = spec.containers.iter().filter(|c| !c.ports.is_empty()).count();
    if spec.containers.len() > 1 && with_ports != 1 {
        errors.push(err(
            format!("{path}.containers"),
            "exactly one container must specify ports (the one that serves), got ".to_string()
                + &with_ports.to_string(),
        ));
    }
    // Kubernetes: `spec.containers[i].name: Duplicate value`; Knative: "duplicate container name". Unnamed
    // containers get distinct names from Knative's defaults; an init container may not take a container's name.
    let mut names = BTreeSet::new();
    for (i, container) in spec.containers.iter().enumerate() {
        let container_path = format!("{path}.containers[{i}]");
        if let Some(name) = container.name.as_deref().filter(|n| !n.is_empty())
            && !names.insert(name)
        {
            errors.push(err(format!("{container_path}.name"), format!("duplicate container name {name:?}")));
        }
        // Knative's user container: the only one, or the one with the port; the others are sidecars.
        let role =
            if spec.containers.len() == 1 || !container.ports.is_empty() { Role::Serving } else { Role::Sidecar };
        validate_container(&container_path, container, role, features, errors);
    }
    let init_containers = spec.init_containers.as_ref().and_then(Value::as_array).into_iter().flatten();
    for (i, init) in init_containers.enumerate() {
        if let Some(name) = init.get("name").and_then(Value::as_str).filter(|n| !n.is_empty())
            && !names.insert(name)
        {
            errors.push(err(format!("{path}.initContainers[{i}].name"), format!("duplicate container name {name:?}")));
        }
        validate_image(&format!("{path}.initContainers[{i}]"), init.get("image").and_then(Value::as_str), errors);
    }
    super::isolation::validate_pod_isolation(path, spec, features, errors);
    super::volumes::validate_volumes(path, spec, errors);
    if let Some(cc) = spec.container_concurrency {
        bounds(format!("{path}.containerConcurrency"), 0, cc, MAX_CONTAINER_CONCURRENCY, errors);
    }
    // Knative's webhook bounds `timeoutSeconds` only (0 is the default, 300 s). The response-start and idle
    // timeouts are typed int64 by its schema and not bounded: Sluice refuses a negative one (its own rule; a
    // negative wait means nothing), and the data plane takes the earlier of the response start's and the
    // request's deadline, so a response-start timeout above `timeoutSeconds` is simply never reached.
    if let Some(timeout) = spec.timeout_seconds {
        bounds(format!("{path}.timeoutSeconds"), 0, timeout, features.max_revision_timeout_seconds(), errors);
    }
    for (field, value) in [
        ("responseStartTimeoutSeconds", spec.response_start_timeout_seconds),
        ("idleTimeoutSeconds", spec.idle_timeout_seconds),
    ] {
        if let Some(value) = value.filter(|v| *v < 0) {
            errors.push(err(format!("{path}.{field}"), format!("invalid value: {value}: must not be negative")));
        }
    }
}

/// What a container is to Knative's rules: the one that serves (the only container, or the one with the port),
/// or a sidecar.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Serving,
    Sidecar,
}

/// Every container, init containers too, names an image reference (Knative parses it whatever runs it).
fn validate_image(path: &str, image: Option<&str>, errors: &mut Vec<FieldError>) {
    match image.filter(|image| !image.is_empty()) {
        None => errors.push(err(format!("{path}.image"), "missing field(s)")),
        Some(image) => {
            if let Some(reason) = super::image::reference_error(image) {
                errors.push(err(format!("{path}.image"), format!("Failed to parse image reference: {reason}")));
            }
        }
    }
}

fn validate_container(
    path: &str,
    container: &Container,
    role: Role,
    features: &ServingFeatures,
    errors: &mut Vec<FieldError>,
) {
    validate_image(path, container.image.as_deref(), errors);
    if container.name.as_deref() == Some("queue-proxy") {
        errors.push(err(format!("{path}.name"), "\"queue-proxy\" is a reserved container name"));
    }
    // A name may come twice: Kubernetes and Knative accept it, and the last definition wins. A sidecar may set
    // `PORT` (Knative's `reservedSidecarEnvVars`): the runtime sets it in the serving container only.
    for (i, env) in container.env.iter().enumerate() {
        let env_path = format!("{path}.env[{i}]");
        let sidecar_port = role == Role::Sidecar && env.name == "PORT";
        let reserved = RESERVED_ENV.contains(&env.name.as_str()) && !sidecar_port;
        if env.name.is_empty() {
            errors.push(err(format!("{env_path}.name"), "missing field(s)"));
        } else if reserved {
            errors.push(err(format!("{env_path}.name"), format!("{:?} is a reserved environment variable", env.name)));
        }
        if env.value.is_some() && env.value_from.is_some() {
            errors.push(err(env_path, "expected exactly one, got both: value, valueFrom"));
        }
    }
    if container.ports.len() > 1 {
        errors.push(err(format!("{path}.ports"), "more than one container port is set"));
    }
    if let Some(port) = container.ports.first() {
        let port_path = format!("{path}.ports");
        if let Some(name) = port.name.as_deref()
            && !matches!(name, "" | "h2c" | "http1")
        {
            errors.push(err(format!("{port_path}.name"), format!("Port name {name} is not allowed (h2c or http1)")));
        }
        if let Some(protocol) = port.protocol.as_deref()
            && protocol != "TCP"
        {
            errors.push(err(format!("{port_path}.protocol"), format!("invalid value: {protocol} (only TCP)")));
        }
        if let Some(number) = port.container_port {
            if RESERVED_PORTS.contains(&number) {
                errors.push(err(
                    format!("{port_path}.containerPort"),
                    format!("invalid value: {number} is a reserved port"),
                ));
            } else {
                bounds(format!("{port_path}.containerPort"), 0, number, 65535, errors);
            }
        }
    }
    // The serving port's name, `http` when it has none (Knative's `validateContainersPorts`): the only name a
    // probe of the serving container may give its port. A sidecar has no port a probe could name.
    let named = container.ports.first().and_then(|p| p.name.as_deref()).filter(|n| !n.is_empty());
    let port_name = (role == Role::Serving).then(|| named.unwrap_or("http"));
    let multi_container_probing = features.is_enabled(MULTI_CONTAINER_PROBING);
    for (field, probe, kind) in [
        ("readinessProbe", &container.readiness_probe, ProbeKind::Readiness),
        ("livenessProbe", &container.liveness_probe, ProbeKind::Other),
        ("startupProbe", &container.startup_probe, ProbeKind::Other),
    ] {
        let Some(probe) = probe else { continue };
        if role == Role::Sidecar && kind_needs_multi_container_probing(field) && !multi_container_probing {
            refuse_sidecar_probe(&format!("{path}.{field}"), probe, errors);
        } else {
            validate_probe(&format!("{path}.{field}"), probe, port_name, kind, errors);
        }
    }
}

/// A sidecar's readiness and liveness probes: Knative refuses every field of them unless the cluster enables
/// `multi-container-probing` (its `validateSidecarContainer`); a startup probe has no such rule.
fn kind_needs_multi_container_probing(field: &str) -> bool {
    matches!(field, "readinessProbe" | "livenessProbe")
}

/// Knative's "must not set the field(s)", one error per field the probe sets, naming the flag.
fn refuse_sidecar_probe(path: &str, probe: &Probe, errors: &mut Vec<FieldError>) {
    let fields = match serde_json::to_value(probe) {
        Ok(Value::Object(fields)) if !fields.is_empty() => fields.keys().cloned().collect(),
        _ => vec![String::new()],
    };
    for field in fields {
        let field_path = if field.is_empty() { path.to_string() } else { format!("{path}.{field}") };
        errors.push(err(
            field_path,
            format!(
                "must not set the field(s): a sidecar's probes need Knative's feature flag {MULTI_CONTAINER_PROBING}, \
                 which this cluster keeps disabled (a node's --serving-feature {MULTI_CONTAINER_PROBING}=enabled)"
            ),
        ));
    }
}

/// Knative's readiness probe has rules of its own (`periodSeconds: 0`, its aggressive probing).
#[derive(Clone, Copy, PartialEq, Eq)]
enum ProbeKind {
    Readiness,
    Other,
}

/// Knative's probe rules. A probe may name another port by number (a health port beside the serving one; the
/// local runtime refuses to run that, the Kubernetes runtime runs it); a port named must be the serving port's
/// name, `http` when it has none (Knative's "Probe port must match container port").
fn validate_probe(path: &str, probe: &Probe, port_name: Option<&str>, kind: ProbeKind, errors: &mut Vec<FieldError>) {
    let handlers = [probe.http_get.is_some(), probe.tcp_socket.is_some(), probe.exec.is_some(), probe.grpc.is_some()];
    // The serving container's readiness probe without a handler is a `tcpSocket` one: Knative's defaulting
    // (`applyProbes`) gives it one before validation. Other probes get no handler by default.
    let defaulted_to_tcp = kind == ProbeKind::Readiness && port_name.is_some();
    match handlers.iter().filter(|set| **set).count() {
        0 if defaulted_to_tcp => {}
        0 => errors.push(err(path, "expected exactly one, got neither: httpGet, tcpSocket, exec, grpc")),
        1 => {}
        _ => errors.push(err(path, "expected exactly one, got both: httpGet, tcpSocket, exec, grpc")),
    }
    let max = i64::from(i32::MAX);
    for (field, value) in [
        ("initialDelaySeconds", probe.initial_delay_seconds),
        ("timeoutSeconds", probe.timeout_seconds),
        ("periodSeconds", probe.period_seconds),
        ("successThreshold", probe.success_threshold),
        ("failureThreshold", probe.failure_threshold),
    ] {
        if let Some(value) = value {
            bounds(format!("{path}.{field}"), 0, value, max, errors);
        }
    }
    // Knative's aggressive readiness probing (`periodSeconds: 0`) takes no failure threshold or timeout (0, as
    // unset, is allowed: Kubernetes' `int32`s). Liveness and startup probes have no such rule.
    let set = |value: Option<i64>| value.is_some_and(|v| v != 0);
    if kind == ProbeKind::Readiness && probe.period_seconds == Some(0) {
        if set(probe.failure_threshold) {
            errors.push(err(
                format!("{path}.failureThreshold"),
                "failureThreshold is disallowed when periodSeconds is zero",
            ));
        }
        if set(probe.timeout_seconds) {
            errors
                .push(err(format!("{path}.timeoutSeconds"), "timeoutSeconds is disallowed when periodSeconds is zero"));
        }
    }
    let port = probe
        .http_get
        .as_ref()
        .and_then(|h| h.port.as_ref())
        .map(|p| ("httpGet", p))
        .or_else(|| probe.tcp_socket.as_ref().and_then(|t| t.port.as_ref()).map(|p| ("tcpSocket", p)));
    if let Some((handler, port)) = port {
        let problem = match port {
            Value::Number(n) if n.as_i64().is_some_and(|n| (0..=65535).contains(&n)) => None,
            Value::Number(_) => Some("expected 0 <= port <= 65535"),
            Value::String(name) if Some(name.as_str()) == port_name => None,
            Value::String(_) => Some("Probe port must match container port"),
            _ => Some("expected a port number or the container port's name"),
        };
        if let Some(problem) = problem {
            errors.push(err(format!("{path}.{handler}.port"), format!("invalid value: {port}: {problem}")));
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum TrafficOf {
    Service,
    Route,
}

fn validate_traffic(traffic: &[TrafficTarget], of: TrafficOf, errors: &mut Vec<FieldError>) {
    let mut sum = 0i64;
    let mut tags: BTreeSet<&str> = BTreeSet::new();
    for (i, target) in traffic.iter().enumerate() {
        let path = format!("spec.traffic[{i}]");
        if let Some(percent) = target.percent {
            bounds(format!("{path}.percent"), 0, percent, 100, errors);
            // Saturating: percents out of bounds are refused above, and their sum must not overflow meanwhile.
            sum = sum.saturating_add(percent);
        }
        if let Some(tag) = target.tag.as_deref() {
            if !is_dns_1035_label(tag) {
                errors.push(err(
                    format!("{path}.tag"),
                    format!("invalid value: {tag:?} is not a DNS-1035 label (lower-case letters, digits and '-', starting with a letter)"),
                ));
            } else if !tags.insert(tag) {
                errors.push(err(format!("{path}.tag"), format!("Multiple definitions for {tag:?}")));
            }
        }
        if target.url.is_some() {
            errors.push(err(format!("{path}.url"), "must not set the field(s)"));
        }
        if let Some(revision) = target.revision_name.as_deref()
            && !is_dns_1035_label(revision)
        {
            errors.push(err(format!("{path}.revisionName"), format!("invalid key name {revision:?}")));
        }
        match of {
            TrafficOf::Service => {
                if target.configuration_name.is_some() {
                    errors.push(err(format!("{path}.configurationName"), "must not set the field(s)"));
                }
            }
            TrafficOf::Route => {
                match (&target.revision_name, &target.configuration_name) {
                    (Some(_), Some(_)) => errors
                        .push(err(path.clone(), "expected exactly one, got both: revisionName, configurationName")),
                    (None, None) => errors
                        .push(err(path.clone(), "expected exactly one, got neither: revisionName, configurationName")),
                    _ => {}
                }
            }
        }
        let revision = target.revision_name.as_deref().unwrap_or_default();
        match target.latest_revision {
            Some(true) if !revision.is_empty() => errors.push(err(
                format!("{path}.latestRevision"),
                format!("may not set revisionName {revision:?} when latestRevision is true"),
            )),
            Some(false) if revision.is_empty() => errors.push(err(
                format!("{path}.latestRevision"),
                "may not set revisionName \"\" when latestRevision is false",
            )),
            _ => {}
        }
    }
    if !traffic.is_empty() && sum != 100 {
        errors.push(err("spec.traffic", format!("Traffic targets sum to {sum}, want 100")));
    }
}
