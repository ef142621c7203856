//! Scenario tests of gradual rollout: a Service's rollout duration, the data plane's table and the Route's
//! status over time.

use serde_json::{Value, json};

use super::super::rollout::RolloutClock;
use super::super::routing::{RouteTable, rollouts_under_way, route_table};
use super::{condition, env, hello_service, settle, store};
use crate::status::{World, reconcile};
use crate::validate_object;

/// Now at `now_ms`, no default rollout duration.
fn at(now_ms: u64) -> RolloutClock {
    RolloutClock { now_ms, default_duration_ms: 0 }
}

/// `name`'s RevisionState: ready since `ready_at_ms`.
fn ready_since(objects: &mut Vec<Value>, name: &str, ready_at_ms: u64) {
    store(
        objects,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"ready": true, "instances": 1, "readyAtMs": ready_at_ms}}),
    );
}

#[test]
fn a_service_with_a_rollout_duration_moves_its_traffic_in_steps() {
    let mut service = hello_service("one");
    service["metadata"]["annotations"] = json!({"serving.knative.dev/rollout-duration": "60s"});
    let mut objects = Vec::new();
    store(&mut objects, service.clone());
    settle(&mut objects);
    ready_since(&mut objects, "hello-00001", 1_000);
    let route = objects.iter().find(|o| o["kind"] == "Route").cloned().unwrap_or_default();
    assert_eq!(route["metadata"]["annotations"]["serving.knative.dev/rollout-duration"], "60s", "handed to the Route");
    // The first Revision has nothing to roll from.
    let main = |objects: &[Value], now_ms| {
        route_table(objects, "localhost", &RouteTable::new(), at(now_ms))
            .get("hello.default.localhost")
            .cloned()
            .unwrap_or_default()
            .targets
    };
    assert_eq!(main(&objects, 2_000), vec![("hello-00001".to_string(), 100)]);

    service["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"] = json!("two");
    store(&mut objects, service);
    settle(&mut objects);
    ready_since(&mut objects, "hello-00002", 100_000);
    let split = |revisions: &[(&str, u32)]| revisions.iter().map(|(r, p)| (r.to_string(), *p)).collect::<Vec<_>>();
    assert_eq!(main(&objects, 100_000), split(&[("hello-00002", 1), ("hello-00001", 99)]));
    assert_eq!(main(&objects, 130_000), split(&[("hello-00002", 59), ("hello-00001", 41)]));
    assert_eq!(main(&objects, 160_000), split(&[("hello-00002", 100)]));
    assert_eq!(rollouts_under_way(&objects, at(130_500)), vec![("default/hello".to_string(), 131_000)]);
    assert_eq!(rollouts_under_way(&objects, at(160_000)), vec![]);

    // The Route's status says the split as of its environment's now, both parts the Configuration's latest.
    let mut env = env();
    env.now_ms = 130_000;
    let route = objects.iter().find(|o| o["kind"] == "Route").cloned().unwrap_or_default();
    let status = reconcile(&route, &World { objects: &objects }, &env);
    let traffic: Vec<(String, u64, bool)> = status["traffic"]
        .as_array()
        .map(|t| {
            t.iter()
                .map(|t| {
                    let revision = t["revisionName"].as_str().unwrap_or_default().to_string();
                    (revision, t["percent"].as_u64().unwrap_or(0), t["latestRevision"] == true)
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(traffic, vec![("hello-00002".into(), 59, true), ("hello-00001".into(), 41, true)]);
    // A data plane a step behind still serves this rollout: the Route is ready.
    env.served_routes = Some(std::sync::Arc::new(route_table(&objects, "localhost", &RouteTable::new(), at(129_000))));
    let status = reconcile(&route, &World { objects: &objects }, &env);
    assert_eq!(condition(&status, "IngressReady").0, "True", "{status}");
}

#[test]
fn a_rollout_duration_that_is_not_a_duration_is_refused() {
    for (value, rule) in [("soon", "not a duration"), ("-5s", "must be positive")] {
        let mut service = hello_service("one");
        service["metadata"]["annotations"] = json!({"serving.knative.dev/rollout-duration": value});
        let errors = validate_object(&service, None).expect_err("refused");
        let text = format!("{errors:?}");
        assert!(
            text.contains("metadata.annotations[serving.knative.dev/rollout-duration]") && text.contains(rule),
            "{value}: {text}"
        );
    }
    let mut service = hello_service("one");
    service["metadata"]["annotations"] = json!({"serving.knative.dev/rollout-duration": "1h30m"});
    assert_eq!(validate_object(&service, None), Ok(()));
}

#[test]
fn the_nodes_default_rollout_duration_rolls_a_route_without_the_annotation() {
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    ready_since(&mut objects, "hello-00001", 1_000);
    store(&mut objects, hello_service("two"));
    settle(&mut objects);
    ready_since(&mut objects, "hello-00002", 100_000);
    let main = |objects: &[Value], clock| {
        route_table(objects, "localhost", &RouteTable::new(), clock)
            .get("hello.default.localhost")
            .cloned()
            .unwrap_or_default()
            .targets
    };
    assert_eq!(main(&objects, at(130_000)), vec![("hello-00002".to_string(), 100)], "no default: at once");
    let with_default = RolloutClock { now_ms: 130_000, default_duration_ms: 60_000 };
    assert_eq!(main(&objects, with_default), vec![("hello-00002".to_string(), 59), ("hello-00001".to_string(), 41)]);
    // The annotation wins over the default, 0 included.
    let route = objects.iter_mut().find(|o| o["kind"] == "Route").expect("route");
    route["metadata"]["annotations"] = json!({"serving.knative.dev/rollout-duration": "0s"});
    assert_eq!(main(&objects, with_default), vec![("hello-00002".to_string(), 100)]);
    let mut env = env();
    env.now_ms = 130_000;
    assert_eq!(env.with_rollout_default_ms(60_000).rollout_clock(), with_default);
}

/// `serving.knative.dev/progress-deadline` on the template: Go's durations, above zero, whole seconds.
#[test]
fn a_templates_progress_deadline_is_validated_as_knative_does() {
    let refused = [("soon", "not a duration"), ("0s", "must be positive"), ("1500ms", "second precision")];
    for (value, rule) in refused {
        let mut service = hello_service("one");
        service["spec"]["template"]["metadata"]["annotations"] =
            json!({"serving.knative.dev/progress-deadline": value});
        let errors = validate_object(&service, None).expect_err("refused");
        let text = format!("{errors:?}");
        assert!(
            text.contains("spec.template.metadata.annotations[serving.knative.dev/progress-deadline]")
                && text.contains(rule),
            "{value}: {text}"
        );
    }
    let mut service = hello_service("one");
    service["spec"]["template"]["metadata"]["annotations"] = json!({"serving.knative.dev/progress-deadline": "20s"});
    assert_eq!(validate_object(&service, None), Ok(()));
}
