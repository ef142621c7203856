//! Scenario tests of the serving kinds: children, traffic, status and validation, over objects as stored.

use serde_json::{Value, json};

use super::autoscaling::AutoscalerDefaults;
use super::children::{self, revision_name};
use super::model::TrafficTarget;
use super::rollout::RolloutClock;
use super::routing::{HostTargets, RouteTable, instances_over_nodes, resolve_traffic, route_table};
use crate::meta::merge_for_apply_keeping_owned;
use crate::status::{Environment, World, reconcile};
use crate::validate_object;

mod rollout;
mod validation;

fn env() -> Environment {
    Environment::new("http://127.0.0.1:8080")
}

fn hello_service(target: &str) -> Value {
    json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": "ghcr.io/knative/helloworld-go",
            "command": ["/bin/hello"], "env": [{"name": "TARGET", "value": target}]}]}}}})
}

/// Stores `object` as the state machine would (uid, generation, resourceVersion).
fn store(objects: &mut Vec<Value>, object: Value) {
    let key = |o: &Value| (o["kind"].clone(), o["metadata"]["namespace"].clone(), o["metadata"]["name"].clone());
    let position = objects.iter().position(|o| key(o) == key(&object));
    let existing = position.map(|i| objects[i].clone());
    let uid = format!(
        "uid-{}-{}",
        object["kind"].as_str().unwrap_or_default(),
        object["metadata"]["name"].as_str().unwrap_or_default()
    );
    let (merged, _) = merge_for_apply_keeping_owned(
        existing.as_ref(),
        object,
        &uid,
        "2026-11-28T00:00:00Z",
        objects.len() as u64 + 1,
    );
    match position {
        Some(i) => objects[i] = merged,
        None => objects.push(merged),
    }
}

/// Runs the children reconcile until it has nothing left to write, as the metadata leader's loop does.
fn settle(objects: &mut Vec<Value>) -> Vec<String> {
    let mut written = Vec::new();
    for _ in 0..10 {
        let plan = children::plan(objects);
        if plan.put.is_empty() && plan.delete.is_empty() {
            return written;
        }
        for child in plan.put {
            written.push(format!(
                "{}/{}",
                child["kind"].as_str().unwrap_or_default(),
                child["metadata"]["name"].as_str().unwrap_or_default()
            ));
            store(objects, child);
        }
        for (kind, namespace, name) in plan.delete {
            written.push(format!("-{kind}/{name}"));
            objects.retain(|o| {
                !(o["kind"] == kind.as_str()
                    && o["metadata"]["namespace"] == namespace.as_str()
                    && o["metadata"]["name"] == name.as_str())
            });
        }
    }
    panic!("the children reconcile does not settle: {written:?}");
}

fn ready_fact(objects: &mut Vec<Value>, revision: &str) {
    store(
        objects,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
        "metadata": {"name": revision, "namespace": "default"}, "spec": {"ready": true, "instances": 1}}),
    );
}

fn condition(status: &Value, kind: &str) -> (String, String) {
    let found =
        status["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == kind)).cloned().unwrap_or_default();
    (found["status"].as_str().unwrap_or_default().into(), found["reason"].as_str().unwrap_or_default().into())
}

fn status_of(objects: &[Value], kind: &str, name: &str) -> Value {
    let object =
        objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).cloned().unwrap_or_default();
    reconcile(&object, &World { objects }, &env())
}

#[test]
fn a_service_makes_a_configuration_a_route_and_one_revision_per_template() {
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    assert_eq!(settle(&mut objects), ["Configuration/hello", "Route/hello", "Revision/hello-00001"]);
    let revision = objects.iter().find(|o| o["kind"] == "Revision").cloned().unwrap_or_default();
    assert_eq!(revision["metadata"]["labels"]["serving.knative.dev/configurationGeneration"], "1");
    assert_eq!(revision["metadata"]["labels"]["serving.knative.dev/service"], "hello");
    assert_eq!(revision["metadata"]["ownerReferences"][0]["uid"], "uid-Configuration-hello");
    assert_eq!(revision["spec"]["containers"][0]["env"][0]["value"], "one");

    // Same template again: nothing. A traffic-only change: the Route only. A template change: a new revision.
    store(&mut objects, hello_service("one"));
    assert!(settle(&mut objects).is_empty());
    let mut with_traffic = hello_service("one");
    with_traffic["spec"]["traffic"] = json!([{"revisionName": "hello-00001", "percent": 100}]);
    store(&mut objects, with_traffic);
    assert_eq!(settle(&mut objects), ["Route/hello"]);
    store(&mut objects, hello_service("two"));
    assert_eq!(settle(&mut objects), ["Configuration/hello", "Route/hello", "Revision/hello-00002"]);

    // Deleting the Service deletes what it owns, then what they own.
    objects.retain(|o| o["kind"] != "Service");
    let deleted = settle(&mut objects);
    assert_eq!(deleted, ["-Configuration/hello", "-Route/hello", "-Revision/hello-00001", "-Revision/hello-00002"]);
    assert!(objects.is_empty());
}

#[test]
fn revision_names_follow_knative() {
    assert_eq!(revision_name("hello", "", 1), "hello-00001");
    assert_eq!(revision_name("hello", "hello-v2", 7), "hello-v2", "the template's own name");
    let long = "a".repeat(60);
    let cut = revision_name(&long, "", 3);
    assert!(cut.len() <= 63 && cut.ends_with("-00003"), "{cut}");
    assert_eq!(cut, revision_name(&long, "", 3), "stable");
}

#[test]
fn status_follows_the_revisions_facts() {
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    let service = status_of(&objects, "Service", "hello");
    assert_eq!(condition(&service, "Ready").0, "Unknown", "no instance ready yet: {service}");
    assert_eq!(
        condition(&status_of(&objects, "Revision", "hello-00001"), "ContainerHealthy"),
        ("Unknown".into(), "Deploying".into())
    );

    ready_fact(&mut objects, "hello-00001");
    let service = status_of(&objects, "Service", "hello");
    assert_eq!(condition(&service, "Ready").0, "True", "{service}");
    assert_eq!(condition(&service, "ConfigurationsReady").0, "True");
    assert_eq!(condition(&service, "RoutesReady").0, "True");
    assert_eq!(service["url"], "http://hello.default.localhost:8080");
    assert_eq!(service["address"]["url"], "http://hello.default.localhost:8080");
    assert_eq!(service["latestCreatedRevisionName"], "hello-00001");
    assert_eq!(service["latestReadyRevisionName"], "hello-00001");
    assert_eq!(
        service["traffic"],
        json!([{"revisionName": "hello-00001", "configurationName": "hello", "latestRevision": true, "percent": 100}])
    );

    // A new template whose revision fails: the old one keeps the traffic, the Service says why.
    store(&mut objects, hello_service("two"));
    settle(&mut objects);
    store(
        &mut objects,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
        "metadata": {"name": "hello-00002", "namespace": "default"},
        "spec": {"ready": false, "failureReason": "ExitCode3", "failureMessage": "boom", "instances": 0}}),
    );
    let service = status_of(&objects, "Service", "hello");
    assert_eq!(condition(&service, "Ready"), ("False".into(), "RevisionFailed".into()), "{service}");
    assert_eq!(service["latestReadyRevisionName"], "hello-00001");
    assert_eq!(service["traffic"][0]["revisionName"], "hello-00001");
    let revision = status_of(&objects, "Revision", "hello-00002");
    assert_eq!(condition(&revision, "ContainerHealthy"), ("False".into(), "ExitCode3".into()));
    // Its resources are not known to be short: only a missed progress deadline says so (Knative's rule).
    assert_eq!(condition(&revision, "ResourcesAvailable"), ("Unknown".into(), "Deploying".into()));
    assert_eq!(condition(&revision, "Ready"), ("False".into(), "ExitCode3".into()));
}

/// `networking.knative.dev/visibility: cluster-local`: every host of the Route (its tags' too) is under the
/// cluster's own domain and none under the serving domain; its URLs and its address are that name (on the
/// default port). A public Route is served under both domains, its URLs the serving domain's.
#[test]
fn a_cluster_local_route_is_served_and_addressed_only_under_the_clusters_domain() {
    let public = hello_split_between_two_ready_revisions(json!({"latestRevision": true, "percent": 50}));
    let mut local = public.clone();
    for object in local.iter_mut().filter(|o| o["kind"] == "Service" || o["kind"] == "Route") {
        object["metadata"]["labels"]["networking.knative.dev/visibility"] = json!("cluster-local");
    }
    let hosts = |objects: &[Value]| {
        route_table(objects, "localhost", &RouteTable::new(), RolloutClock::default()).into_keys().collect::<Vec<_>>()
    };
    assert_eq!(
        hosts(&public),
        [
            "hello.default.localhost",
            "hello.default.svc.cluster.local",
            "old-hello.default.localhost",
            "old-hello.default.svc.cluster.local"
        ]
    );
    assert_eq!(hosts(&local), ["hello.default.svc.cluster.local", "old-hello.default.svc.cluster.local"]);

    let address =
        |objects: &[Value]| crate::serving::status::address("Service", "default", "hello", &World { objects }, &env());
    assert_eq!(address(&public), Ok("http://hello.default.localhost:8080".to_string()));
    assert_eq!(address(&local), Ok("http://hello.default.svc.cluster.local".to_string()));
    // A Configuration is served under its Route's names (review: it resolved to the public host, never served).
    let configuration = |objects: &[Value]| {
        crate::serving::status::address("Configuration", "default", "hello", &World { objects }, &env())
    };
    assert_eq!(configuration(&local), Ok("http://hello.default.svc.cluster.local".to_string()));
    assert_eq!(configuration(&public), Ok("http://hello.default.localhost:8080".to_string()));
    for kind in ["Service", "Route"] {
        let status = status_of(&local, kind, "hello");
        assert_eq!(status["url"], "http://hello.default.svc.cluster.local", "{kind}: {status}");
        assert_eq!(status["address"]["url"], "http://hello.default.svc.cluster.local", "{kind}: {status}");
        assert_eq!(status["traffic"][0]["url"], "http://old-hello.default.svc.cluster.local", "{kind}: {status}");
        assert_eq!(status_of(&public, kind, "hello")["url"], "http://hello.default.localhost:8080", "{kind}");
    }
    // The label put on the Service only: until its Route carries it, the Route is out of date (review: the
    // Service was Ready with its public URL meanwhile).
    let mut labelled_service = public.clone();
    for object in labelled_service.iter_mut().filter(|o| o["kind"] == "Service") {
        object["metadata"]["labels"]["networking.knative.dev/visibility"] = json!("cluster-local");
    }
    let service = status_of(&labelled_service, "Service", "hello");
    assert_eq!(condition(&service, "RoutesReady"), ("Unknown".into(), "OutOfDate".into()), "{service}");
    // Any other value is public in Knative's reader (and refused by its webhook: the validation tests).
    let mut other = public.clone();
    for object in other.iter_mut().filter(|o| o["kind"] == "Route") {
        object["metadata"]["labels"]["networking.knative.dev/visibility"] = json!("public");
    }
    assert_eq!(hosts(&other), hosts(&public));
}

#[test]
fn routes_split_and_tag_by_revision_and_unresolvable_traffic_says_why() {
    let mut objects = hello_split_between_two_ready_revisions(json!({"latestRevision": true, "percent": 50}));
    let table = route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default());
    let target = |host: &str| table.get(host).cloned().unwrap_or_default();
    assert_eq!(
        target("hello.default.localhost"),
        HostTargets {
            namespace: "default".into(),
            name: "hello".into(),
            targets: vec![("hello-00001".into(), 50), ("hello-00002".into(), 50)]
        }
    );
    assert_eq!(target("old-hello.default.localhost").targets, vec![("hello-00001".to_string(), 100)]);
    let route = status_of(&objects, "Route", "hello");
    assert_eq!(route["traffic"][0]["url"], "http://old-hello.default.localhost:8080");

    let missing = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route", "metadata": {"name": "r", "namespace": "default"},
        "spec": {"traffic": [{"revisionName": "nope-00001", "percent": 100}]}});
    store(&mut objects, missing);
    let route = status_of(&objects, "Route", "r");
    assert_eq!(condition(&route, "AllTrafficAssigned"), ("False".into(), "RevisionMissing".into()));
    assert!(!table.contains_key("r.default.localhost"));
}

/// `hello` served 50/50 by two ready revisions, `hello-00001` also under the tag `old`, `hello-00002` by
/// `second` (a traffic target of 50 %).
fn hello_split_between_two_ready_revisions(second: Value) -> Vec<Value> {
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    ready_fact(&mut objects, "hello-00001");
    store(&mut objects, hello_service("two"));
    settle(&mut objects);
    ready_fact(&mut objects, "hello-00002");
    let mut split = hello_service("two");
    split["spec"]["traffic"] = json!([
        {"revisionName": "hello-00001", "percent": 50, "tag": "old"},
        second,
    ]);
    store(&mut objects, split);
    settle(&mut objects);
    objects
}

fn failed_fact(objects: &mut Vec<Value>, revision: &str) {
    store(
        objects,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
        "metadata": {"name": revision, "namespace": "default"},
        "spec": {"ready": false, "failureReason": "ExitCode3", "failureMessage": "boom"}}),
    );
}

/// Regression: a Route whose traffic stopped resolving (a misspelt `revisionName`; a Revision not made or not
/// ready yet, as in a blue/green apply that names the new template and pins the traffic to it at once) lost
/// its hosts, main and tags, and every request got 404. Knative leaves the ingress as it was until the traffic
/// resolves: the last good routing keeps serving.
#[test]
fn regression_a_route_that_stops_resolving_keeps_serving_its_previous_hosts() {
    let objects = hello_split_between_two_ready_revisions(json!({"revisionName": "hello-00002", "percent": 50}));
    let before = route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default());
    assert_eq!(
        before.keys().collect::<Vec<_>>(),
        [
            "hello.default.localhost",
            "hello.default.svc.cluster.local",
            "old-hello.default.localhost",
            "old-hello.default.svc.cluster.local"
        ]
    );
    let pinned_to = |target: &str, revision: &str| {
        let mut service = hello_service(target);
        service["spec"]["traffic"] = json!([{"revisionName": revision, "percent": 100}]);
        service
    };
    let not_found = ("False".to_string(), "RevisionMissing".to_string());
    let waiting = ("Unknown".to_string(), "RevisionMissing".to_string());
    // (the Service applied, hello-00003 failed, the Route's AllTrafficAssigned, why)
    let cases = [
        (pinned_to("two", "hello-00009"), false, not_found.clone(), "a misspelt revisionName"),
        (pinned_to("three", "hello-00003"), false, waiting, "a new template pinned at once, not ready yet"),
        (pinned_to("three", "hello-00003"), true, not_found, "a new template pinned at once, failed"),
    ];
    for (service, failed, assigned, why) in cases {
        let mut objects = objects.clone();
        store(&mut objects, service);
        settle(&mut objects);
        if failed {
            failed_fact(&mut objects, "hello-00003");
        }
        assert_eq!(condition(&status_of(&objects, "Route", "hello"), "AllTrafficAssigned"), assigned, "{why}");
        assert_eq!(
            route_table(&objects, "localhost", &before, RolloutClock::default()),
            before,
            "{why}: the hosts and weights served before"
        );
        assert!(
            route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default()).is_empty(),
            "{why}: nothing to keep without a table served before"
        );
    }

    // Once it resolves, the Route serves its new traffic, and the tag it no longer has goes.
    let mut resolved = objects.clone();
    store(&mut resolved, pinned_to("three", "hello-00003"));
    settle(&mut resolved);
    ready_fact(&mut resolved, "hello-00003");
    let after = route_table(&resolved, "localhost", &before, RolloutClock::default());
    let served: Vec<_> = after.iter().map(|(host, served)| (host.as_str(), served.targets.clone())).collect();
    let only_the_third = vec![("hello-00003".to_string(), 100)];
    assert_eq!(
        served,
        [("hello.default.localhost", only_the_third.clone()), ("hello.default.svc.cluster.local", only_the_third)]
    );

    // A Route that never resolved has no host, and another Route's previous hosts are not its.
    let mut objects = objects;
    store(
        &mut objects,
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
            "metadata": {"name": "r", "namespace": "default"},
            "spec": {"traffic": [{"revisionName": "nope-00001", "percent": 100}]}}),
    );
    let table = route_table(&objects, "localhost", &before, RolloutClock::default());
    assert!(!table.contains_key("r.default.localhost"), "{table:?}");
    assert!(table.values().all(|served| served.name == "hello"), "{table:?}");
}

/// Regression (review of session 40): a canary pinned at 0 % under a tag that failed took its whole Route down
/// on a node with no table served before (one restarted), for good: the targets with a share still serve, the
/// canary's host does not. And a Service rolled out to a pinned revision not ready yet keeps its URL for the
/// Triggers that deliver to it, as Knative's Route keeps its address.
#[test]
fn a_canary_at_zero_percent_that_failed_takes_nothing_from_the_others() {
    let mut objects = hello_split_between_two_ready_revisions(json!({"revisionName": "hello-00002", "percent": 50}));
    let mut canary = hello_service("three");
    canary["spec"]["traffic"] = json!([{"revisionName": "hello-00002", "percent": 100},
        {"revisionName": "hello-00003", "percent": 0, "tag": "canary"}]);
    store(&mut objects, canary);
    settle(&mut objects);
    failed_fact(&mut objects, "hello-00003");
    let table = route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default());
    let served: Vec<_> = table.iter().map(|(host, served)| (host.as_str(), served.targets.clone())).collect();
    let only_the_second = vec![("hello-00002".to_string(), 100)];
    assert_eq!(
        served,
        [("hello.default.localhost", only_the_second.clone()), ("hello.default.svc.cluster.local", only_the_second)]
    );
    let address =
        |objects: &[Value]| crate::serving::status::address("Service", "default", "hello", &World { objects }, &env());
    assert!(address(&objects).is_ok());

    let mut blue_green = hello_service("four");
    blue_green["spec"]["traffic"] = json!([{"revisionName": "hello-00004", "percent": 100}]);
    store(&mut objects, blue_green);
    settle(&mut objects);
    assert!(
        route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default()).is_empty(),
        "nothing to serve it from here"
    );
    assert_eq!(address(&objects), Ok("http://hello.default.localhost:8080".to_string()), "its URL stays");
    let mut misspelt = hello_service("four");
    misspelt["spec"]["traffic"] = json!([{"revisionName": "hello-00009", "percent": 100}]);
    store(&mut objects, misspelt);
    settle(&mut objects);
    assert!(address(&objects).is_err(), "a Revision that does not exist is no rollout");
}

#[test]
fn a_pinned_revision_resolves_once_it_is_ready_and_a_failed_one_says_so() {
    let revision = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
        "metadata": {"name": "r1", "namespace": "default", "uid": "u1"}, "spec": {}});
    let state = |spec: Value| {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
            "metadata": {"name": "r1", "namespace": "default"}, "spec": spec})
    };
    let failed = json!({"ready": false, "failureReason": "ExitCode1", "failureMessage": "boom"});
    let pinned = json!([{"revisionName": "r1", "percent": 100}]);
    // The revisions resolved, or (waiting, message).
    type Resolved = Result<Vec<String>, (bool, String)>;
    let not_ready: Resolved = Err((true, r#"Revision "r1" is not yet ready."#.to_string()));
    let failed_to_start: Resolved = Err((false, r#"Revision "r1" failed to become ready."#.to_string()));
    let not_found: Resolved = Err((false, r#"Revision "r9" referenced in traffic not found."#.to_string()));
    // (the traffic, the facts of r1, resolved revisions or (waiting, message), why)
    let cases = [
        (pinned.clone(), None, not_ready.clone(), "no facts yet"),
        (pinned.clone(), Some(json!({"ready": false, "instancesByNode": {"1": 1}})), not_ready, "starting"),
        (pinned.clone(), Some(failed.clone()), failed_to_start, "failed: False, not waiting"),
        (pinned.clone(), Some(json!({"ready": true})), Ok(vec!["r1".to_string()]), "ready"),
        (
            pinned,
            Some(json!({"ready": true, "failureReason": "ExitCode1", "failureMessage": "boom"})),
            Ok(vec!["r1".to_string()]),
            "ready once is ready for good, as the Revision's own status",
        ),
        (
            json!([{"revisionName": "r1", "percent": 50}, {"revisionName": "r9", "percent": 50}]),
            None,
            not_found.clone(),
            "a target that failed outweighs an earlier one that waits",
        ),
        (
            json!([{"revisionName": "r9", "percent": 50}, {"revisionName": "r1", "percent": 50}]),
            Some(failed),
            not_found,
            "else the first",
        ),
    ];
    for (traffic, facts, expected, why) in cases {
        let mut objects = vec![revision.clone()];
        objects.extend(facts.map(state));
        let traffic: Vec<TrafficTarget> = serde_json::from_value(traffic).expect("valid traffic");
        let resolved = resolve_traffic(&objects, "default", &traffic)
            .map(|targets| targets.into_iter().map(|t| t.revision).collect::<Vec<_>>())
            .map_err(|e| (e.waiting, e.message));
        assert_eq!(resolved, expected, "{why}");
    }
}

/// Regression: rolling back to an earlier template name (`hello-v1`, `hello-v2`, then `hello-v1` again with
/// its spec) makes no Revision (it exists), and the latest created was the newest generation label's
/// (`hello-v2`): the Configuration stayed "being created" for ever and the traffic stayed on `hello-v2`.
/// Knative takes the Revision the template names, made by this Configuration from this spec, as the latest.
#[test]
fn regression_a_rollback_to_an_earlier_template_name_makes_its_revision_the_latest_again() {
    let named = |name: &str, target: &str| {
        let mut service = hello_service(target);
        service["spec"]["template"]["metadata"] = json!({"name": name});
        service
    };
    // (hello-v1's facts, the rolled-back template's TARGET, latest created, latest ready (served), the
    // Configuration's Ready, why)
    let cases = [
        (Some(true), "one", "hello-v1", "hello-v1", "True", "ready: it is the latest ready again, and served"),
        (None, "one", "hello-v1", "hello-v2", "Unknown", "never ready yet: the latest ready stays"),
        (Some(false), "one", "hello-v1", "hello-v2", "False", "failed: the latest ready stays, and it says why"),
        (
            Some(true),
            "changed",
            "hello-v2",
            "hello-v2",
            "Unknown",
            "another spec under the name: a collision (refused at apply), as before not taken for the latest",
        ),
    ];
    for (v1_ready, target, created, ready, configurations, why) in cases {
        let mut objects = Vec::new();
        store(&mut objects, named("hello-v1", "one"));
        settle(&mut objects);
        match v1_ready {
            Some(true) => ready_fact(&mut objects, "hello-v1"),
            Some(false) => failed_fact(&mut objects, "hello-v1"),
            None => {}
        }
        store(&mut objects, named("hello-v2", "two"));
        settle(&mut objects);
        ready_fact(&mut objects, "hello-v2");
        store(&mut objects, named("hello-v1", target));
        assert_eq!(settle(&mut objects), ["Configuration/hello"], "{why}: no Revision made again");
        let service = status_of(&objects, "Service", "hello");
        assert_eq!(service["latestCreatedRevisionName"], created, "{why}: {service}");
        assert_eq!(service["latestReadyRevisionName"], ready, "{why}");
        assert_eq!(condition(&service, "ConfigurationsReady").0, configurations, "{why}: {service}");
        assert_eq!(service["traffic"][0]["revisionName"], ready, "{why}");
        let table = route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default());
        let served = table.get("hello.default.localhost").map(|served| served.targets.clone()).unwrap_or_default();
        assert_eq!(served, [(ready.to_string(), 100)], "{why}");
    }
}

/// Regression: a Service's status is computed on read, so right after a template change it was Ready for the
/// new generation from its Configuration's old template, before the children loop wrote the new one, and
/// `kubectl wait` or `kn --wait` right after an apply returned early. Knative says `OutOfDate` until the
/// child caught up.
#[test]
fn regression_a_service_is_not_ready_before_its_children_say_what_it_says() {
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    ready_fact(&mut objects, "hello-00001");
    assert_eq!(condition(&status_of(&objects, "Service", "hello"), "Ready").0, "True");
    let mut pinned = hello_service("one");
    pinned["spec"]["traffic"] = json!([{"revisionName": "hello-00001", "percent": 100}]);
    let mut without_nulls = hello_service("one");
    without_nulls["spec"]["template"]["spec"]["containers"][0]["workingDir"] = Value::Null;
    let ready = ("True".to_string(), String::new());
    let out_of_date = ("Unknown".to_string(), "OutOfDate".to_string());
    // (the Service applied, before the children loop ran: ConfigurationsReady, RoutesReady, why)
    let cases = [
        (hello_service("two"), out_of_date.clone(), ready.clone(), "a new template"),
        (pinned, ready.clone(), out_of_date, "new traffic"),
        (hello_service("one"), ready.clone(), ready.clone(), "the same spec again: nothing to catch up"),
        (without_nulls, ready.clone(), ready, "a null is an absent field, as the child is stored"),
    ];
    for (service, configurations, routes, why) in cases {
        let mut objects = objects.clone();
        store(&mut objects, service);
        let status = status_of(&objects, "Service", "hello");
        assert_eq!(condition(&status, "ConfigurationsReady"), configurations, "{why}: {status}");
        assert_eq!(condition(&status, "RoutesReady"), routes, "{why}: {status}");
        let ready_ones = ["ConfigurationsReady", "RoutesReady"].map(|kind| condition(&status, kind).0);
        let expected = if ready_ones.iter().all(|state| state == "True") { "True" } else { "Unknown" };
        assert_eq!(condition(&status, "Ready").0, expected, "{why}");
        settle(&mut objects);
        let status = status_of(&objects, "Service", "hello");
        for kind in ["ConfigurationsReady", "RoutesReady"] {
            assert_ne!(condition(&status, kind).1, "OutOfDate", "{why}: {kind} once the children loop ran");
        }
    }
}

#[test]
fn knatives_own_hello_world_and_a_traffic_split_validate() {
    let service = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {
            "metadata": {"name": "hello-world", "annotations": {"autoscaling.knative.dev/min-scale": "1", "autoscaling.knative.dev/window": "30s"}},
            "spec": {"containerConcurrency": 10, "timeoutSeconds": 300, "containers": [{
                "image": "ghcr.io/knative/helloworld-go:latest", "ports": [{"containerPort": 8080}],
                "env": [{"name": "TARGET", "value": "World"}],
                "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                "resources": {"limits": {"cpu": "1"}}, "securityContext": {"runAsNonRoot": true}}]}},
            "traffic": [{"tag": "current", "revisionName": "hello-world", "percent": 100},
                {"tag": "latest", "latestRevision": true, "percent": 0}]}});
    assert_eq!(validate_object(&service, None), Ok(()));
    let route = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route", "metadata": {"name": "r"},
        "spec": {"traffic": [{"configurationName": "c", "percent": 90}, {"revisionName": "c-00001", "percent": 10, "tag": "v1"}]}});
    assert_eq!(validate_object(&route, None), Ok(()));
    for spec in [json!({}), json!({"traffic": []})] {
        let empty =
            json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route", "metadata": {"name": "r"}, "spec": spec});
        let errors = validate_object(&empty, None).expect_err("a Route with no traffic");
        assert!(errors.iter().any(|e| e.path == "spec.traffic" && e.message.contains("sum to 0")), "{errors:?}");
    }
}

/// Knative's `max-revision-timeout-seconds`: 600 s unless the cluster raises it (a long job's `timeoutSeconds:
/// 1800` was refused with nothing that could allow it).
#[test]
fn the_longest_timeout_is_the_clusters_setting() {
    let mut long = hello_service("x");
    long["spec"]["template"]["spec"]["timeoutSeconds"] = json!(1800);
    long["spec"]["template"]["spec"]["idleTimeoutSeconds"] = json!(1800);
    let refused = validate_object(&long, None).expect_err("over 600 s");
    assert!(refused.iter().any(|e| e.path == "spec.template.spec.timeoutSeconds"), "{refused:?}");
    let raised = super::ServingFeatures::default().with_max_revision_timeout_seconds(3600).expect("valid");
    assert_eq!(crate::validate_object_with(&long, None, &raised).err(), None);
    let lower = super::ServingFeatures::default().with_max_revision_timeout_seconds(400).expect("valid");
    let mut over = hello_service("x");
    over["spec"]["template"]["spec"]["timeoutSeconds"] = json!(500);
    assert!(crate::validate_object_with(&over, None, &lower).is_err(), "a lowered limit holds too");
    let below_default = super::ServingFeatures::default().with_max_revision_timeout_seconds(60);
    assert!(below_default.is_err(), "below the 300 s a revision that sets none gets");
}

/// Regression: autoscaling annotations were validated over Knative's stock defaults, not the node's
/// `--autoscaler` ones: `initial-scale: "0"` was refused on a node that allows it, and a `max-scale` above the
/// node's `max-scale-limit` was taken, and its revision never ran. Each row: the node's `--autoscaler` settings,
/// the template's annotations, the annotation refused (None: taken), why.
#[test]
fn autoscaling_annotations_are_validated_over_the_nodes_defaults() {
    let node = |pairs: &[&str]| {
        let defaults = AutoscalerDefaults::from_pairs(pairs.iter().copied()).expect("valid settings");
        super::ServingFeatures::default().with_autoscaler_defaults(defaults)
    };
    let initial_zero = json!({"autoscaling.knative.dev/initial-scale": "0"});
    let ten = json!({"autoscaling.knative.dev/max-scale": "10"});
    let cases = [
        (node(&[]), initial_zero.clone(), Some("initial-scale"), "Knative's default: not allowed"),
        (node(&["allow-zero-initial-scale=true"]), initial_zero, None, "allowed on this node"),
        (node(&[]), ten.clone(), None, "no limit"),
        (node(&["max-scale-limit=5"]), ten, Some("max-scale"), "above this node's limit"),
    ];
    for (features, annotations, refused, why) in cases {
        let mut service = hello_service("x");
        service["spec"]["template"]["metadata"] = json!({"annotations": annotations});
        let errors = crate::validate_object_with(&service, None, &features).err().unwrap_or_default();
        let paths: Vec<String> = errors.into_iter().map(|e| e.path).collect();
        let expected: Vec<String> = refused
            .map(|key| format!("spec.template.metadata.annotations[autoscaling.knative.dev/{key}]"))
            .into_iter()
            .collect();
        assert_eq!(paths, expected, "{why}");
    }
}

/// Regression: a Revision whose annotations the node's autoscaling defaults make invalid (a `max-scale` above a
/// `max-scale-limit` set after it was applied) never ran, only the node's log said why, and its status stayed
/// Deploying. It is `Ready=False`, `InvalidAutoscaling`, naming the annotation, and its Configuration failed.
#[test]
fn a_revision_the_nodes_autoscaling_defaults_refuse_says_why_in_its_status() {
    let mut objects = Vec::new();
    let mut service = hello_service("one");
    service["spec"]["template"]["metadata"] = json!({"annotations": {"autoscaling.knative.dev/max-scale": "10"}});
    store(&mut objects, service);
    settle(&mut objects);
    let limited = AutoscalerDefaults::from_pairs(["max-scale-limit=5"]).expect("valid settings");
    let status = |kind: &str, name: &str, env: &Environment| {
        let object =
            objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name).cloned().unwrap_or_default();
        reconcile(&object, &World { objects: &objects }, env)
    };
    let revision = status("Revision", "hello-00001", &env().with_autoscaler_defaults(limited.clone()));
    assert_eq!(condition(&revision, "ContainerHealthy"), ("False".into(), "InvalidAutoscaling".into()), "{revision}");
    assert_eq!(condition(&revision, "Ready"), ("False".into(), "InvalidAutoscaling".into()));
    let healthy = revision["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "ContainerHealthy"));
    let message = healthy.and_then(|c| c["message"].as_str()).unwrap_or_default();
    assert!(message.contains("autoscaling.knative.dev/max-scale") && message.contains("max-scale-limit"), "{message}");
    let configuration = status("Configuration", "hello", &env().with_autoscaler_defaults(limited));
    assert_eq!(condition(&configuration, "Ready"), ("False".into(), "RevisionFailed".into()), "{configuration}");
    let unlimited = status("Revision", "hello-00001", &env());
    assert_eq!(
        condition(&unlimited, "ContainerHealthy"),
        ("Unknown".into(), "Deploying".into()),
        "no limit: it deploys"
    );
}

#[test]
fn revisions_and_named_templates_are_immutable() {
    let revision = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision", "metadata": {"name": "r"},
        "spec": {"containers": [{"image": "app", "command": ["/bin/a"]}]}});
    let mut changed = revision.clone();
    changed["spec"]["containers"][0]["command"] = json!(["/bin/b"]);
    let errors = validate_object(&changed, Some(&revision)).expect_err("immutable");
    assert_eq!(errors[0].path, "spec");
    assert_eq!(validate_object(&revision, Some(&revision)), Ok(()));

    let mut named = hello_service("one");
    named["spec"]["template"]["metadata"] = json!({"name": "hello-v1"});
    let mut renamed_not = hello_service("two");
    renamed_not["spec"]["template"]["metadata"] = json!({"name": "hello-v1"});
    let errors = validate_object(&renamed_not, Some(&named)).expect_err("a new template needs a new name");
    assert_eq!(errors[0].path, "spec.template.metadata.name");
}

/// Regression: the model named the fields `hostPid` and `hostIpc` (serde's camelCase of `host_pid`), so
/// Knative's `hostPID`/`hostIPC` were refused as unknown fields and the CRDs listed the wrong names.
#[test]
fn regression_host_pid_and_ipc_are_read_by_their_kubernetes_names() {
    for (field, flag) in [("hostPID", "kubernetes.podspec-hostpid"), ("hostIPC", "kubernetes.podspec-hostipc")] {
        let mut revision = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": "r"}, "spec": {"containers": [{"image": "app", "command": ["/bin/a"]}]}});
        revision["spec"][field] = json!(false);
        assert_eq!(validate_object(&revision, None), Ok(()), "{field}: false");
        revision["spec"][field] = json!(true);
        let errors = validate_object(&revision, None).expect_err(field);
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert_eq!(errors[0].path, format!("spec.{field}"));
        assert!(errors[0].message.contains(flag), "{errors:?}");
    }
}

#[test]
fn a_revisions_instances_are_the_sum_over_the_nodes_that_recorded_theirs() {
    // (spec of the RevisionState, instances over the nodes)
    let cases = [
        (json!({"instancesByNode": {"1": 10, "2": 0}}), 10, "an idle node does not hide another's instances"),
        (json!({"instancesByNode": {"1": 10, "2": 3}}), 13, "summed"),
        (json!({"instancesByNode": {}}), 0, "no node runs it"),
        (json!({"instancesByNode": {"1": 4}, "instances": 9}), 4, "the per-node record wins"),
        (json!({"instances": 2}), 2, "a state an older version wrote"),
        (json!({}), 0, "nothing recorded"),
        (json!({"instancesByNode": {"1": "x", "2": -1, "3": 2}}), 2, "what is not a count counts 0"),
        (json!({"instancesByNode": {"1": u64::MAX, "2": 5}}), u32::MAX, "saturates"),
    ];
    for (spec, instances, why) in cases {
        assert_eq!(instances_over_nodes(&spec), instances, "{why}: {spec}");
    }
}

#[test]
fn revision_status_counts_every_nodes_instances_and_ignores_a_namesakes_facts() {
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    let state = |spec: Value| {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
            "metadata": {"name": "hello-00001", "namespace": "default"}, "spec": spec})
    };
    // Node 1 runs 10; node 2, idle, wrote last. Each node has its own entry: still 10, still Active.
    store(
        &mut objects,
        state(json!({"ready": true, "revisionUid": "uid-Revision-hello-00001", "instancesByNode": {"1": 10},
            "readyInstancesByNode": {"1": 10}})),
    );
    let revision = status_of(&objects, "Revision", "hello-00001");
    assert_eq!(revision["actualReplicas"], 10, "{revision}");
    assert_eq!(revision["desiredReplicas"], 10, "{revision}");
    assert_eq!(condition(&revision, "Active").0, "True");
    assert_eq!(condition(&revision, "Ready").0, "True");
    // A cold start: an instance starting, none ready yet. Knative counts ready pods and says "Activating".
    // Regression: one replica and Active while every request was held.
    store(
        &mut objects,
        state(json!({"ready": true, "revisionUid": "uid-Revision-hello-00001", "instancesByNode": {"1": 1}})),
    );
    let revision = status_of(&objects, "Revision", "hello-00001");
    assert_eq!(
        (revision["actualReplicas"].clone(), condition(&revision, "Active")),
        (json!(0), ("Unknown".into(), "Activating".into()))
    );
    assert_eq!(revision["desiredReplicas"], 1, "the instance starting is desired: {revision}");
    // Every node at zero: Ready stays (Knative's Revision is Ready at zero), Active goes.
    store(
        &mut objects,
        state(json!({"ready": true, "revisionUid": "uid-Revision-hello-00001", "instancesByNode": {}})),
    );
    let revision = status_of(&objects, "Revision", "hello-00001");
    assert_eq!(
        (revision["actualReplicas"].clone(), condition(&revision, "Active")),
        (json!(0), ("False".into(), "NoTraffic".into()))
    );
    assert_eq!(condition(&revision, "Ready").0, "True");
    // Facts recorded for an earlier Revision of that name (deleted and made again) are not this one's.
    store(&mut objects, state(json!({"ready": true, "revisionUid": "an-earlier-uid", "instancesByNode": {"1": 2}})));
    let revision = status_of(&objects, "Revision", "hello-00001");
    assert_eq!(revision["actualReplicas"], 0, "{revision}");
    assert_eq!(condition(&revision, "Ready"), ("Unknown".into(), "Deploying".into()));
}

/// The hello Service with `spec` as its template's spec.
/// Regression: a Revision whose instances crash after it was ready (its failure recorded, `ready` kept) left its
/// Configuration and Service Ready. Knative marks the latest created Revision failed whenever its Ready is
/// False, keeping `latestReadyRevisionName`; the traffic stays where it was.
#[test]
fn regression_a_revision_that_crashes_after_it_was_ready_fails_its_configuration_until_it_recovers() {
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    ready_fact(&mut objects, "hello-00001");
    assert_eq!(condition(&status_of(&objects, "Service", "hello"), "Ready").0, "True");
    let crashed = |failure: &str| {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
        "metadata": {"name": "hello-00001", "namespace": "default"},
        "spec": {"ready": true, "failureReason": failure, "failureMessage": "exit status 1", "instances": 1}})
    };
    store(&mut objects, crashed("ExitCode1"));
    let configuration = status_of(&objects, "Configuration", "hello");
    assert_eq!(condition(&configuration, "Ready"), ("False".into(), "RevisionFailed".into()), "{configuration}");
    assert_eq!(configuration["latestReadyRevisionName"], "hello-00001", "kept");
    let service = status_of(&objects, "Service", "hello");
    assert_eq!(condition(&service, "ConfigurationsReady"), ("False".into(), "RevisionFailed".into()));
    assert_eq!(condition(&service, "Ready").0, "False", "{service}");
    assert_eq!(service["traffic"][0]["revisionName"], "hello-00001", "the traffic stays");
    assert_eq!(condition(&status_of(&objects, "Revision", "hello-00001"), "ContainerHealthy").1, "ExitCode1");

    store(&mut objects, crashed(""));
    assert_eq!(condition(&status_of(&objects, "Service", "hello"), "Ready").0, "True", "an instance ready again");
}

/// Regression: a Service named like a Configuration applied on its own took it over (rewrote its spec, made
/// itself its owner) and deleted it with itself. Knative leaves it alone and says `NotOwned`.
#[test]
fn regression_a_service_leaves_a_configuration_it_does_not_own_alone() {
    let mut objects = Vec::new();
    let mine = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
        "metadata": {"name": "hello", "namespace": "default"},
        "spec": {"template": {"spec": {"containers": [{"image": "app", "command": ["/bin/mine"]}]}}}});
    store(&mut objects, mine);
    settle(&mut objects);
    let before = objects.iter().find(|o| o["kind"] == "Configuration").cloned().unwrap_or_default();
    store(&mut objects, hello_service("one"));
    let written = settle(&mut objects);
    assert!(!written.contains(&"Configuration/hello".to_string()), "{written:?}");
    let after = objects.iter().find(|o| o["kind"] == "Configuration").cloned().unwrap_or_default();
    assert_eq!(after, before, "the Configuration is as it was applied");
    let service = status_of(&objects, "Service", "hello");
    assert_eq!(condition(&service, "ConfigurationsReady"), ("False".into(), "NotOwned".into()), "{service}");
    let message = service["conditions"].as_array().and_then(|c| c.iter().find(|c| c["type"] == "Ready")).cloned();
    assert_eq!(
        message.and_then(|m| m["message"].as_str().map(str::to_string)).as_deref(),
        Some("There is an existing Configuration \"hello\" that we do not own.")
    );
    // The Service goes; the Configuration stays (it was never the Service's).
    objects.retain(|o| o["kind"] != "Service");
    settle(&mut objects);
    assert!(objects.iter().any(|o| o["kind"] == "Configuration" && o["metadata"]["name"] == "hello"));
}

/// Regression: a Route to a Configuration whose only Revision failed stayed Unknown for ever. Knative's
/// `AllTrafficAssigned` is False once the Configuration's Ready is False, Unknown while it waits, with its
/// texts.
#[test]
fn regression_a_route_to_a_configuration_whose_revision_failed_is_false() {
    let assigned = |objects: &[Value]| {
        let route = status_of(objects, "Route", "hello");
        let found = route["conditions"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["type"] == "AllTrafficAssigned"))
            .cloned()
            .unwrap_or_default();
        [&found["status"], &found["reason"], &found["message"]].map(|v| v.as_str().unwrap_or_default().to_string())
    };
    let waiting = ["Unknown", "RevisionMissing", "Configuration \"hello\" is waiting for a Revision to become ready."];
    let failed = ["False", "RevisionMissing", "Configuration \"hello\" does not have any ready Revision."];
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    assert_eq!(assigned(&objects), waiting, "no facts yet");
    failed_fact(&mut objects, "hello-00001");
    assert_eq!(assigned(&objects), failed, "its only revision failed");
    let traffic: Vec<TrafficTarget> =
        serde_json::from_value(json!([{"configurationName": "hello", "percent": 100}])).expect("valid traffic");
    let error = resolve_traffic(&objects, "default", &traffic).expect_err("no ready revision");
    assert!(!error.waiting, "a failure does not go away by waiting");

    // A latest created revision this node's runtime cannot run (an image, no command, on the local runtime):
    // the Configuration says False, and so does the Route.
    let mut objects = Vec::new();
    let mut image_only = hello_service("one");
    image_only["spec"]["template"]["spec"]["containers"] = json!([{"image": "ghcr.io/knative/helloworld-go"}]);
    store(&mut objects, image_only);
    settle(&mut objects);
    assert_eq!(assigned(&objects), failed, "not runnable here");
}

/// CI caught a Service Ready with its second revision's traffic while the node's data plane still sent requests
/// to the first: `IngressReady` was always True. It is judged against the table the data plane serves now.
#[test]
fn regression_a_route_is_ingress_ready_only_once_the_data_plane_serves_its_traffic() {
    let domain = crate::serving::DEFAULT_DOMAIN;
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    ready_fact(&mut objects, "hello-00001");
    let first = std::sync::Arc::new(route_table(&objects, domain, &RouteTable::new(), RolloutClock::default()));
    store(&mut objects, hello_service("two"));
    settle(&mut objects);
    ready_fact(&mut objects, "hello-00002");
    let second = std::sync::Arc::new(route_table(&objects, domain, &RouteTable::new(), RolloutClock::default()));
    let split = hello_split_between_two_ready_revisions(json!({"latestRevision": true, "percent": 50}));
    let split_table = std::sync::Arc::new(route_table(&split, domain, &RouteTable::new(), RolloutClock::default()));
    let without_tag = {
        let mut table = (*split_table).clone();
        table.retain(|host, _| !host.starts_with("old-"));
        std::sync::Arc::new(table)
    };
    let ready = ("True".to_string(), String::new());
    let waiting = ("Unknown".to_string(), "IngressNotConfigured".to_string());
    // (the objects, what the data plane serves, IngressReady, why)
    let cases = [
        (&objects, None, ready.clone(), "no data plane on the node: not judged"),
        (&objects, Some(std::sync::Arc::new(RouteTable::new())), waiting.clone(), "nothing installed yet"),
        (&objects, Some(first.clone()), waiting.clone(), "the first revision still served"),
        (&objects, Some(second.clone()), ready.clone(), "the second revision served"),
        (&split, Some(second), waiting.clone(), "the split not served yet"),
        (&split, Some(without_tag), waiting, "the split served without its tag's host"),
        (&split, Some(split_table), ready, "the split and its tag served"),
    ];
    for (objects, served, ingress, why) in cases {
        let env = env().with_served_routes(served);
        let world = World { objects };
        let find = |kind: &str| objects.iter().find(|o| o["kind"] == kind).cloned().unwrap_or_default();
        let route = reconcile(&find("Route"), &world, &env);
        assert_eq!(condition(&route, "IngressReady"), ingress, "{why}: {route}");
        assert_eq!(condition(&route, "AllTrafficAssigned").0, "True", "{why}: {route}");
        assert_eq!(condition(&route, "Ready"), ingress, "{why}: {route}");
        let service = reconcile(&find("Service"), &world, &env);
        assert_eq!(condition(&service, "RoutesReady"), ingress, "{why}: {service}");
        assert_eq!(condition(&service, "Ready").0, ingress.0, "{why}: {service}");
    }
}

/// A Route whose traffic stops resolving keeps its last good routing served: its ingress stays ready while the
/// data plane serves its host, and is not while nothing serves it.
#[test]
fn a_route_that_does_not_resolve_is_ingress_ready_while_its_last_routing_is_served() {
    let domain = crate::serving::DEFAULT_DOMAIN;
    let mut objects = Vec::new();
    store(&mut objects, hello_service("one"));
    settle(&mut objects);
    ready_fact(&mut objects, "hello-00001");
    let served = std::sync::Arc::new(route_table(&objects, domain, &RouteTable::new(), RolloutClock::default()));
    let mut pinned = hello_service("one");
    pinned["spec"]["traffic"] = json!([{"revisionName": "hello-00009", "percent": 100}]);
    store(&mut objects, pinned);
    settle(&mut objects);
    for (table, ingress) in [(served, "True"), (std::sync::Arc::new(RouteTable::new()), "Unknown")] {
        let route = objects.iter().find(|o| o["kind"] == "Route").cloned().unwrap_or_default();
        let status = reconcile(&route, &World { objects: &objects }, &env().with_served_routes(Some(table)));
        assert_eq!(condition(&status, "AllTrafficAssigned").0, "False", "{status}");
        assert_eq!(condition(&status, "IngressReady").0, ingress, "{status}");
    }
}
