//! An object's metadata and identity: label and annotation keys and label values held to the API server's syntax,
//! `kind` and `apiVersion` required.

use serde_json::json;

use super::*;

/// Regression: any string was stored as a label or annotation key (or label value), and `sluice apply` took objects
/// `kubectl apply` is refused; each is refused now, naming the key and the rule.
#[test]
fn label_and_annotation_keys_and_label_values_follow_kubernetes_syntax() {
    let valid = set(
        set(broker(), "/metadata/labels", json!({"app": "x", "example.com/Team_1": "", "a.b": "v-1.2_3"})),
        "/metadata/annotations",
        json!({"Example.COM/anything": "any value at all: spaces, / and ünïcode", "eventing.knative.dev/scope": "namespace"}),
    );
    assert_eq!(validate_object(&valid, None), Ok(()), "Kubernetes accepts these");
    let cases = [
        ("/metadata/labels", json!({"bad key": "x"}), "metadata.labels[bad key]", "invalid key: name part"),
        ("/metadata/labels", json!({"Example.com/x": "y"}), "metadata.labels[Example.com/x]", "prefix part"),
        ("/metadata/labels", json!({"/x": "y"}), "metadata.labels[/x]", "prefix part must be non-empty"),
        (
            "/metadata/labels",
            json!({"example.com/": "y"}),
            "metadata.labels[example.com/]",
            "name part must be non-empty",
        ),
        ("/metadata/labels", json!({"a/b/c": "y"}), "metadata.labels[a/b/c]", "name part"),
        ("/metadata/labels", json!({"ok": "-x"}), "metadata.labels[ok]", "invalid value"),
        ("/metadata/labels", json!({"ok": "x".repeat(64)}), "metadata.labels[ok]", "no more than 63"),
        ("/metadata/annotations", json!({"has space": "v"}), "metadata.annotations[has space]", "invalid key"),
        ("/metadata/annotations", json!({"x".repeat(64): "v"}), "", "no more than 63"),
    ];
    for (pointer, value, path, rule) in cases {
        let object = set(broker(), pointer, value.clone());
        let errors = validate_object(&object, None).expect_err(&format!("{value} must be refused"));
        let found = errors.iter().find(|e| e.message.contains(rule));
        assert!(found.is_some_and(|e| path.is_empty() || e.path == path), "{value}: {errors:?}");
    }
}

/// Regression: a document without `kind` (or `apiVersion`) was told `kind: "" is not one of ...`.
#[test]
fn a_document_without_kind_or_api_version_is_told_they_are_required() {
    let errors = validate_object(&json!({"foo": "bar"}), None).expect_err("no kind");
    let said: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(said.len(), 2, "{said:?}");
    assert_eq!(said[0], "apiVersion: required");
    assert!(said[1].starts_with("kind: required: one of Broker, Trigger"), "{said:?}");
    let with_version = validate_object(&json!({"apiVersion": "eventing.knative.dev/v1"}), None).expect_err("no kind");
    assert_eq!(with_version.len(), 1, "{with_version:?}");
}
