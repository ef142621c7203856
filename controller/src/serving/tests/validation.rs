//! Template specs as Knative's webhook judges them: its rules, its defaults, its names.

use super::*;

fn service_with_spec(spec: Value) -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"}, "spec": {"template": {"spec": spec}}})
}

/// Regressions (a review against Knative's source): Knative YAML its webhook accepts was refused (a false
/// refusal is a defect), and rules it has were missing. Each row: the template's spec, Ok or (the error's path,
/// part of its message), why.
#[test]
fn template_specs_are_refused_as_knatives_webhook_refuses_them() {
    let app = json!({"image": "app", "command": ["/bin/app"]});
    let serving = json!({"image": "app", "command": ["/bin/app"], "ports": [{"containerPort": 8080}]});
    let with = |container: &Value, field: &str, value: Value| {
        let mut container = container.clone();
        container[field] = value;
        container
    };
    let refused = |path: &str, message: &str| -> Result<(), (String, String)> {
        Err((format!("spec.template.spec.{path}"), message.to_string()))
    };
    let cases = [
        (
            json!({"containers": [with(&app, "readinessProbe", json!({"periodSeconds": 1}))]}),
            Ok(()),
            "the serving container's readiness probe without a handler is Knative's default tcpSocket one",
        ),
        (
            json!({"containers": [with(&app, "livenessProbe", json!({"periodSeconds": 1}))]}),
            refused("containers[0].livenessProbe", "expected exactly one, got neither"),
            "a liveness probe gets no default handler",
        ),
        (
            json!({"containers": [serving, with(&app, "readinessProbe", json!({"periodSeconds": 1}))]}),
            refused("containers[1].readinessProbe.periodSeconds", "must not set the field(s)"),
            "a sidecar's probes need multi-container-probing",
        ),
        (
            json!({"containers": [serving, with(&app, "livenessProbe", json!({"httpGet": {"path": "/"}}))]}),
            refused("containers[1].livenessProbe.httpGet", "multi-container-probing"),
            "its liveness probe too, however complete",
        ),
        (
            json!({"timeoutSeconds": 0, "responseStartTimeoutSeconds": 30, "containers": [app]}),
            Ok(()),
            "timeoutSeconds 0 is the default (300 s), and bounds nothing",
        ),
        (
            json!({"timeoutSeconds": 60, "responseStartTimeoutSeconds": 900, "idleTimeoutSeconds": 900,
                "containers": [app]}),
            Ok(()),
            "Knative's webhook does not bound the response-start and idle timeouts",
        ),
        (
            json!({"responseStartTimeoutSeconds": -1, "containers": [app]}),
            refused("responseStartTimeoutSeconds", "must not be negative"),
            "Sluice's rule: a negative timeout",
        ),
        (
            json!({"idleTimeoutSeconds": -5, "containers": [app]}),
            refused("idleTimeoutSeconds", "must not be negative"),
            "Sluice's rule: a negative timeout",
        ),
        (
            json!({"containers": [serving, with(&app, "env", json!([{"name": "PORT", "value": "9000"}]))]}),
            Ok(()),
            "a sidecar may set PORT (Knative's reservedSidecarEnvVars)",
        ),
        (
            json!({"containers": [with(&serving, "env", json!([{"name": "PORT", "value": "1"}])), app]}),
            refused("containers[0].env[0].name", "\"PORT\" is a reserved environment variable"),
            "the serving container may not",
        ),
        (
            json!({"containers": [with(&serving, "env", json!([{"name": "K_REVISION", "value": "1"}])),
                with(&app, "env", json!([{"name": "K_SERVICE", "value": "1"}]))]}),
            refused("containers[0].env[0].name", "reserved"),
            "K_* are reserved in every container",
        ),
        (
            json!({"containers": [with(&app, "env",
                json!([{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]))]}),
            Ok(()),
            "an env var defined twice: the last one wins, as in Kubernetes",
        ),
        (
            json!({"containers": [with(&app, "readinessProbe", json!({"httpGet": {"port": "http"}}))]}),
            Ok(()),
            "`http` is the name of an unnamed serving port",
        ),
        (
            json!({"containers": [with(&with(&serving, "ports", json!([{"name": "h2c"}])), "readinessProbe",
                json!({"tcpSocket": {"port": "h2c"}}))]}),
            Ok(()),
            "the serving port's own name",
        ),
        (
            json!({"containers": [with(&with(&serving, "ports", json!([{"name": "h2c"}])), "livenessProbe",
                json!({"tcpSocket": {"port": "http"}}))]}),
            refused("containers[0].livenessProbe.tcpSocket.port", "Probe port must match container port"),
            "`http` is not a port named h2c",
        ),
        (
            json!({"containers": [with(&app, "livenessProbe",
                json!({"httpGet": {}, "periodSeconds": 0, "failureThreshold": 3, "timeoutSeconds": 2}))]}),
            Ok(()),
            "periodSeconds 0 is the readiness probe's aggressive probing only",
        ),
        (
            json!({"containers": [with(&app, "startupProbe", json!({"exec": {"command": ["true"]},
                "periodSeconds": 0, "failureThreshold": 3}))]}),
            Ok(()),
            "nor the startup probe's",
        ),
        (
            json!({"containers": [with(&app, "readinessProbe",
                json!({"tcpSocket": {}, "periodSeconds": 0, "failureThreshold": 0, "timeoutSeconds": 0}))]}),
            Ok(()),
            "0 is unset (Kubernetes' int32s)",
        ),
        (
            json!({"containers": [with(&app, "readinessProbe",
                json!({"tcpSocket": {}, "periodSeconds": 0, "timeoutSeconds": 1}))]}),
            refused("containers[0].readinessProbe.timeoutSeconds", "disallowed when periodSeconds is zero"),
            "the readiness probe keeps the rule",
        ),
        (
            json!({"containers": [with(&serving, "ports", json!([{"containerPort": 8008}]))]}),
            refused("containers[0].ports.containerPort", "8008 is a reserved port"),
            "Knative's profiling port",
        ),
        (
            json!({"containers": [with(&serving, "name", json!("app")), with(&app, "name", json!("app"))]}),
            refused("containers[1].name", "duplicate container name \"app\""),
            "Kubernetes refuses two containers of one name",
        ),
        (
            json!({"containers": [with(&serving, "name", json!("app"))],
                "initContainers": [{"name": "app", "image": "sidecar"}]}),
            refused("initContainers[0].name", "duplicate container name \"app\""),
            "nor may an init container take a container's name",
        ),
        (json!({"containers": [serving, app]}), Ok(()), "unnamed containers get distinct names"),
    ];
    for (spec, expected, why) in cases {
        let outcome = validate_object(&service_with_spec(spec), None);
        match expected {
            Ok(()) => assert_eq!(outcome, Ok(()), "{why}"),
            Err((path, message)) => {
                let errors = outcome.expect_err(why);
                assert!(
                    errors.iter().any(|e| e.path == path && e.message.contains(&message)),
                    "{why}: wanted {path}: {message}, got {errors:?}"
                );
            }
        }
    }
}

/// Regression: a sidecar's readiness and liveness probes were accepted where Knative refuses them unless the
/// cluster enables `multi-container-probing`; with the flag, they follow the probe rules.
#[test]
fn a_sidecars_probes_are_judged_only_where_multi_container_probing_is_enabled() {
    let serving = json!({"image": "app", "command": ["/bin/app"], "ports": [{"containerPort": 8080}]});
    let sidecar = |probe: Value| json!({"image": "sidecar", "readinessProbe": probe});
    let probing = crate::serving::ServingFeatures::parse(&["multi-container-probing=enabled"]).expect("a flag");
    let validate = |probe: Value, features: &crate::serving::ServingFeatures| {
        let service = service_with_spec(json!({"containers": [serving.clone(), sidecar(probe)]}));
        crate::validate_object_with(&service, None, features).map_err(|errors| {
            errors.into_iter().map(|e| (e.path, e.message.split(':').next().unwrap_or_default().to_string())).collect()
        })
    };
    let path = "spec.template.spec.containers[1].readinessProbe";
    let neither = "expected exactly one, got neither".to_string();
    let must_not = "must not set the field(s)".to_string();
    type Outcome = Result<(), Vec<(String, String)>>;
    let cases: [(Value, &crate::serving::ServingFeatures, Outcome); 4] = [
        (json!({"httpGet": {"port": 9090}}), &probing, Ok(())),
        (json!({"periodSeconds": 5}), &probing, Err(vec![(path.to_string(), neither)])),
        (
            json!({"httpGet": {"port": 9090}, "periodSeconds": 5}),
            &Default::default(),
            Err(vec![(format!("{path}.httpGet"), must_not.clone()), (format!("{path}.periodSeconds"), must_not)]),
        ),
        (json!(null), &Default::default(), Ok(())),
    ];
    for (probe, features, expected) in cases {
        assert_eq!(validate(probe.clone(), features), expected, "{probe}");
    }
}

/// Regression: a sum of traffic percents past `i64` overflowed (a panic in a debug build).
#[test]
fn traffic_percents_that_overflow_are_refused_not_a_panic() {
    let mut service = hello_service("one");
    service["spec"]["traffic"] =
        json!([{"latestRevision": true, "percent": i64::MAX}, {"revisionName": "hello-00001", "percent": i64::MAX}]);
    let errors = validate_object(&service, None).expect_err("out of bounds");
    assert!(errors.iter().any(|e| e.path == "spec.traffic[0].percent"), "{errors:?}");
    assert!(errors.iter().any(|e| e.path == "spec.traffic" && e.message.contains("want 100")), "{errors:?}");
}

/// Regression: serving objects' names were checked as DNS-1123 labels; Knative's are DNS-1035 labels (they
/// start with a letter). Eventing objects keep their rule.
#[test]
fn serving_names_start_with_a_letter() {
    let app = json!({"containers": [{"image": "app", "command": ["/bin/app"]}]});
    let objects = [
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "1hello"},
            "spec": {"template": {"spec": app}}}),
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Configuration", "metadata": {"name": "1hello"},
            "spec": {"template": {"spec": app}}}),
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision", "metadata": {"name": "1hello"},
            "spec": app}),
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route", "metadata": {"name": "1hello"},
            "spec": {"traffic": [{"revisionName": "hello-00001", "percent": 100}]}}),
    ];
    for object in objects {
        // A digit first, a '.', or more than 63: each a DNS-1123 subdomain (the metadata rule of every kind) that
        // is no DNS-1035 label, named once.
        for name in ["1hello", "hello.world", &"h".repeat(64)] {
            let mut misnamed = object.clone();
            misnamed["metadata"]["name"] = json!(name);
            let errors = validate_object(&misnamed, None).expect_err(name);
            assert_eq!(errors.len(), 1, "{name}: {errors:?}");
            assert_eq!(errors[0].path, "metadata.name");
            assert!(errors[0].message.contains("not a DNS 1035 label"), "{errors:?}");
        }
        let mut named = object.clone();
        named["metadata"]["name"] = json!("hello");
        assert_eq!(validate_object(&named, None), Ok(()), "{}", object["kind"]);
    }
    let broker = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
        "metadata": {"name": "1default.team-a", "namespace": "default"}, "spec": {}});
    assert_eq!(validate_object(&broker, None), Ok(()), "an eventing name keeps the DNS-1123 subdomain rule");
}

/// Knative's `validateClusterVisibilityLabel` on Services and Routes: the label says `cluster-local` or is absent
/// (a misspelt value would be read as public).
#[test]
fn the_visibility_label_of_a_service_or_route_says_cluster_local() {
    let app = json!({"containers": [{"image": "app", "command": ["/bin/app"]}]});
    let objects = [
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service", "metadata": {"name": "hello"},
            "spec": {"template": {"spec": app}}}),
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route", "metadata": {"name": "hello"},
            "spec": {"traffic": [{"revisionName": "hello-00001", "percent": 100}]}}),
    ];
    let values = [("cluster-local", false), ("cluster-locale", true), ("public", true), ("", true)];
    let labels = ["networking.knative.dev/visibility", "serving.knative.dev/visibility"];
    for object in &objects {
        for (value, refused) in values {
            for label in labels {
                let mut labelled = object.clone();
                labelled["metadata"]["labels"] = json!({label: value});
                match validate_object(&labelled, None) {
                    Ok(()) => assert!(!refused, "{label}={value:?} accepted on a {}", object["kind"]),
                    Err(errors) => {
                        assert!(refused, "{label}={value:?} refused: {errors:?}");
                        assert_eq!(errors.len(), 1, "{errors:?}");
                        assert_eq!(errors[0].path, format!("metadata.labels[{label}]"));
                        assert!(errors[0].message.contains("cluster-local"), "{errors:?}");
                    }
                }
            }
        }
    }
}

/// Regression: re-applying a named template with Knative's defaults written out (`timeoutSeconds: 300`,
/// `containerConcurrency: 0`, ...) was refused as changed without a name change, though Knative compares both
/// sides after its defaults; and the Revision made from it must stay its latest.
#[test]
fn regression_a_named_template_with_its_defaults_written_out_is_the_same_template() {
    let mut named = hello_service("one");
    named["spec"]["template"]["metadata"] = json!({"name": "hello-v1"});
    let mut objects = Vec::new();
    store(&mut objects, named.clone());
    settle(&mut objects);
    ready_fact(&mut objects, "hello-v1");
    let mut defaulted = named.clone();
    let spec = &mut defaulted["spec"]["template"]["spec"];
    spec["timeoutSeconds"] = json!(300);
    spec["containerConcurrency"] = json!(0);
    spec["enableServiceLinks"] = json!(false);
    spec["containers"][0]["name"] = json!("user-container");
    spec["containers"][0]["readinessProbe"] = json!({"tcpSocket": {}, "successThreshold": 1});
    let stored = |objects: &[Value], kind: &str| objects.iter().find(|o| o["kind"] == kind).cloned();
    let service = stored(&objects, "Service").unwrap_or_default();
    assert_eq!(validate_object(&defaulted, Some(&service)), Ok(()));
    let revision = stored(&objects, "Revision");
    assert_eq!(children::template_name_collision(&defaulted, revision.as_ref()), None);
    store(&mut objects, defaulted.clone());
    settle(&mut objects);
    assert_eq!(objects.iter().filter(|o| o["kind"] == "Revision").count(), 1, "no Revision made again");
    let status = status_of(&objects, "Service", "hello");
    assert_eq!(condition(&status, "Ready").0, "True", "{status}");
    assert_eq!(status["latestCreatedRevisionName"], "hello-v1");

    let service = stored(&objects, "Service").unwrap_or_default();
    let mut zero = defaulted.clone();
    zero["spec"]["template"]["spec"]["timeoutSeconds"] = json!(0);
    assert_eq!(validate_object(&zero, Some(&service)), Ok(()), "0 is the default timeout too");
    let mut changed = defaulted;
    changed["spec"]["template"]["spec"]["timeoutSeconds"] = json!(301);
    let errors = validate_object(&changed, Some(&service)).expect_err("a real change needs a new name");
    assert_eq!(errors[0].path, "spec.template.metadata.name");
    assert!(children::template_name_collision(&changed, revision.as_ref()).is_some());
}

/// Knative's defaults as two specs are compared (`model::with_knative_defaults`): (one spec, another, the same
/// once defaulted, why).
#[test]
fn specs_compare_after_knatives_defaults() {
    let app = json!({"image": "app"});
    let cases = [
        (json!({"containers": [app]}), json!({"containers": [app], "timeoutSeconds": 0}), true, "0 is 300"),
        (json!({"containers": [app]}), json!({"containers": [app], "timeoutSeconds": 301}), false, "301 is not"),
        (
            json!({"containers": [app, {"image": "sidecar"}]}),
            json!({"containers": [{"image": "app", "name": "user-container-0"},
                {"image": "sidecar", "name": "user-container-1"}]}),
            true,
            "unnamed containers among several",
        ),
        (
            json!({"containers": [{"image": "app", "name": "user-container-0"}, {"image": "sidecar"}]}),
            json!({"containers": [{"image": "app", "name": "user-container-0"},
                {"image": "sidecar", "name": "user-container-1"}]}),
            true,
            "a default name skips one taken",
        ),
        (
            json!({"containers": [{"image": "app", "readinessProbe": {"httpGet": {}, "periodSeconds": 5}}]}),
            json!({"containers": [{"image": "app", "readinessProbe": {"httpGet": {}, "periodSeconds": 5,
                "failureThreshold": 3, "timeoutSeconds": 1, "successThreshold": 1, "initialDelaySeconds": 0}}]}),
            true,
            "a readiness probe's Kubernetes defaults once it has a period",
        ),
        (
            json!({"containers": [{"image": "app", "livenessProbe": {"grpc": {"port": 9000}}}]}),
            json!({"containers": [{"image": "app", "livenessProbe": {"grpc": {"port": 9000, "service": ""}}}]}),
            true,
            "a grpc probe's service",
        ),
        (
            json!({"containers": [{"image": "app", "readinessProbe": {"httpGet": {"path": "/"}}}]}),
            json!({"containers": [app]}),
            false,
            "a probe of its own is not the default one",
        ),
    ];
    for (a, b, same, why) in cases {
        assert_eq!(crate::serving::model::same_revision_spec(&a, &b), same, "{why}");
    }
}
