//! An object's metadata as the API server and Knative's webhook check it: its name and namespace, its label and
//! annotation keys and label values (Kubernetes' syntax), the annotations' total size, the object's size, and the
//! `sluice.dev/` annotations Sluice reads.

use serde_json::Value;

use super::*;

/// Kubernetes' limit on an object's annotations: keys and values together (`TotalAnnotationSizeLimitB`).
pub const MAX_ANNOTATION_BYTES: usize = 256 << 10;

/// The largest object stored, as JSON: etcd's default `--max-request-bytes` (1.5 MiB), which bounds a Kubernetes
/// object. Regression: objects of any size up to the admin API's 4 MiB message were stored, and two of 3 MiB made
/// every `sluice get` of their kind fail (a list larger than the client's message limit).
pub const MAX_OBJECT_BYTES: usize = 1536 << 10;

/// Runs on an object whose metadata is well typed (names, labels and
/// annotations are strings).
pub(super) fn validate_metadata(object: &Value, existing: Option<&Value>, errors: &mut Vec<FieldError>) {
    let name = object.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() {
        errors.push(err("metadata.name", "required"));
    } else if !is_dns_subdomain(name) {
        errors.push(err(
            "metadata.name",
            format!(
                "{name:?} must be a DNS-1123 subdomain: lower-case letters, digits, '-' and '.', each part starting \
                 and ending with a letter or digit, at most 253"
            ),
        ));
    }
    if let Some(namespace) = object.pointer("/metadata/namespace").and_then(Value::as_str)
        && !is_dns_label(namespace)
    {
        errors.push(err("metadata.namespace", format!("{namespace:?} must be a DNS-1123 label")));
    }
    // The API server's rules for keys and label values (`ValidateLabels`, `ValidateAnnotations`): on Kubernetes such
    // an object is refused before any webhook sees it. Annotation keys are checked lower-cased, as it checks them.
    // Regression: any string was stored, and `sluice apply` took objects `kubectl apply` refuses.
    let labels = object.pointer("/metadata/labels").and_then(Value::as_object);
    for (key, value) in labels.into_iter().flatten() {
        if let Some(rule) = qualified_name_error(key) {
            errors.push(err(format!("metadata.labels[{key}]"), format!("invalid key: {rule}")));
        }
        if let Some(rule) = value.as_str().and_then(label_value_error) {
            errors.push(err(format!("metadata.labels[{key}]"), format!("invalid value: {rule}")));
        }
    }
    let annotations = object.pointer("/metadata/annotations").and_then(Value::as_object);
    for key in annotations.into_iter().flatten().map(|(key, _)| key) {
        if let Some(rule) = qualified_name_error(&key.to_lowercase()) {
            errors.push(err(format!("metadata.annotations[{key}]"), format!("invalid key: {rule}")));
        }
    }
    let annotation_bytes: usize =
        annotations.into_iter().flatten().map(|(key, value)| key.len() + value.as_str().map_or(0, str::len)).sum();
    if annotation_bytes > MAX_ANNOTATION_BYTES {
        errors.push(err(
            "metadata.annotations",
            format!(
                "Too long: must have at most {MAX_ANNOTATION_BYTES} bytes (keys and values, Kubernetes' limit), \
                 has {annotation_bytes}"
            ),
        ));
    }
    let object_bytes = object.to_string().len();
    if object_bytes > MAX_OBJECT_BYTES {
        errors.push(err(
            "",
            format!(
                "the object is {object_bytes} bytes as JSON; at most {MAX_OBJECT_BYTES} (etcd's default request limit)"
            ),
        ));
    }
    for (key, value) in annotations.into_iter().flatten() {
        let path = format!("metadata.annotations[{key}]");
        let Some(value) = value.as_str() else { continue };
        if key == KAFKA_DELIVERY_ORDER_ANNOTATION && !matches!(value, "ordered" | "unordered") {
            errors.push(err(path, "must be ordered or unordered"));
            continue;
        }
        if !key.starts_with(SLUICE_ANNOTATION_PREFIX) {
            continue;
        }
        let kind = object.get("kind").and_then(Value::as_str).unwrap_or_default();
        if let Some(kinds) = sluice_annotation_kinds(key)
            && !kinds.contains(&kind)
        {
            let (last, rest) = kinds.split_last().unwrap_or((&"", &[]));
            let kinds = if rest.is_empty() { (*last).to_string() } else { format!("{} and {last}", rest.join(", ")) };
            errors.push(err(path, format!("applies to {kinds} only, not to a {kind}")));
            continue;
        }
        match key.as_str() {
            // `knativebrokerttl` is a CloudEvents Integer (32 bits): a larger TTL made every stored event one that
            // a downstream Sluice or the Go SDK refuses.
            "sluice.dev/ttl" => {
                if !value.trim().parse::<i64>().is_ok_and(|t| t > 0 && t <= i64::from(i32::MAX)) {
                    errors.push(err(path, "must be a positive integer of at most 2147483647 (a CloudEvents Integer)"));
                }
            }
            // Refused past the most a window holds, rather than cut to it without a word.
            "sluice.dev/dedupe-window" => match parse_duration(value) {
                _ if value.trim() == "off" => {}
                Err(e) => errors.push(err(path, format!("{e}, or off"))),
                Ok(window) if window > MAX_DEDUPE_WINDOW => {
                    errors.push(err(path, "must be at most 24h (the longest dedupe window), or off"))
                }
                Ok(_) => {}
            },
            "sluice.dev/retention" => {
                if let Err(rule) = check_retention(value) {
                    errors.push(err(path, rule));
                }
            }
            "sluice.dev/initial-offset" => {
                if !matches!(value, "earliest" | "latest") {
                    errors.push(err(path, "must be earliest or latest"));
                }
            }
            "sluice.dev/delivery-order" => {
                if !matches!(value, "ordered" | "unordered") {
                    errors.push(err(path, "must be ordered or unordered"));
                }
            }
            "sluice.dev/max-inflight" => {
                if !value.trim().parse::<u32>().is_ok_and(|n| (1..=MAX_INFLIGHT_LIMIT).contains(&n)) {
                    errors.push(err(path, format!("must be an integer from 1 to {MAX_INFLIGHT_LIMIT}")));
                }
            }
            "sluice.dev/rate-limit" => {
                if !value.trim().parse::<f64>().is_ok_and(|r| (MIN_RATE_LIMIT..=MAX_RATE_LIMIT).contains(&r)) {
                    errors.push(err(
                        path,
                        format!(
                            "must be a number of events per second from {MIN_RATE_LIMIT} to {MAX_RATE_LIMIT:e}, \
                             e.g. 100 or 0.5"
                        ),
                    ));
                }
            }
            "sluice.dev/backoff-max" => {
                // The dispatcher's parser: what passes here is what the consumer build accepts.
                if let Err(e) = parse_backoff_max_ms(value) {
                    errors.push(err(path, e.to_string()));
                }
            }
            "sluice.dev/backoff-jitter" => {
                if !value.trim().parse::<f64>().is_ok_and(|j| (0.0..=1.0).contains(&j)) {
                    errors.push(err(path, "must be a fraction from 0 to 1, e.g. 0.2"));
                }
            }
            "sluice.dev/dead-letter" => {
                if !matches!(value, "keep" | "drop") {
                    errors.push(err(path, "must be keep (the Trigger's dead-letter stream) or drop"));
                }
            }
            "sluice.dev/paused" => {
                if !matches!(value, "true" | "false") {
                    errors.push(err(path, "must be true or false"));
                }
            }
            "sluice.dev/delivery-batch-max-events" => {
                if !value.trim().parse::<u32>().is_ok_and(|n| (1..=MAX_DELIVERY_BATCH_EVENTS).contains(&n)) {
                    errors.push(err(
                        path,
                        format!(
                            "must be an integer from 1 to {MAX_DELIVERY_BATCH_EVENTS}: the most events one \
                             application/cloudevents-batch+json request to the subscriber carries"
                        ),
                    ));
                } else if object.get("kind").and_then(Value::as_str) == Some("Subscription")
                    && object.pointer("/spec/reply").is_some_and(|reply| !reply.is_null())
                {
                    // A batch's response is no reply: the Subscription's replies would be lost without a word.
                    errors.push(err(
                        path,
                        "a batched subscriber's responses are not replies: remove spec.reply or this annotation",
                    ));
                }
            }
            "sluice.dev/subscriber-protocol" => {
                if !matches!(value, "http1" | "h2c") {
                    errors.push(err(path, "must be http1 or h2c"));
                }
            }
            _ => errors.push(err(path, format!("unknown Sluice annotation; known: {}", SLUICE_ANNOTATIONS.join(", ")))),
        }
    }
    if let Some(existing) = existing {
        let class = |o: &Value| o.pointer("/metadata/annotations/eventing.knative.dev~1broker.class").cloned();
        // Knative defaults the class at creation; a Broker stored without one
        // (e.g. `sluice dev`'s default) may get one once, then it is fixed.
        if object.get("kind").and_then(Value::as_str) == Some("Broker")
            && class(existing).is_some()
            && class(object) != class(existing)
        {
            errors.push(err(format!("metadata.annotations[{BROKER_CLASS_ANNOTATION}]"), "field is immutable"));
        }
    }
}
