//! Status of the serving kinds, derived from the objects and the runtime's facts, with Knative's conditions
//! and reasons: Revision `ContainerHealthy`, `ResourcesAvailable`, `Active`; Configuration latest created and
//! ready revisions; Route `AllTrafficAssigned`, `IngressReady` (judged against the hosts the node's data plane
//! serves, `Environment::served_routes`), `traffic`, `url`; Service `ConfigurationsReady`, `RoutesReady`.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::children::{configuration_spec, owned_by, revision_name, route_spec};
use super::model::Container;
use super::routing::{
    HostTargets, ResolvedTarget, RouteTable, TrafficError, Visibility, find, is_cluster_local, latest_revisions,
    main_host, main_tag_host, resolve_traffic, revision_facts, rolled_out, route_hosts, route_table, spec_traffic,
    unready_configuration, visibility,
};
use crate::world::{Environment, ServingRuntime, World};

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// A condition: `Ok(true)` True, `Ok(false)` Unknown with the reason, `Err` False.
type Condition = Result<Option<(String, String)>, (String, String)>;

fn condition(kind: &str, state: &Condition) -> Value {
    match state {
        Ok(None) => json!({"type": kind, "status": "True"}),
        Ok(Some((reason, message))) => json!({"type": kind, "status": "Unknown", "reason": reason, "message": message}),
        Err((reason, message)) => json!({"type": kind, "status": "False", "reason": reason, "message": message}),
    }
}

/// Ready from the conditions it depends on: the first False, else the first Unknown, else True.
fn ready_of(parts: &[&Condition]) -> Condition {
    if let Some(Err(e)) = parts.iter().find(|c| c.is_err()) {
        return Err(e.clone());
    }
    if let Some(Ok(Some(u))) = parts.iter().find(|c| matches!(c, Ok(Some(_)))) {
        return Ok(Some(u.clone()));
    }
    Ok(None)
}

/// The URL a host is served at: the node's HTTP port on that host.
pub fn url_for(host: &str, env: &Environment) -> String {
    // The cluster's own names are Knative's, on the default port: the node's dispatcher takes them to its own
    // port (docs/serving.md "Visibility").
    if is_cluster_local(host) {
        return format!("http://{host}");
    }
    let port = env.ingress_base.rsplit_once(':').map(|(_, port)| port.trim_end_matches('/')).unwrap_or("80");
    if port == "80" { format!("http://{host}") } else { format!("http://{host}:{port}") }
}

/// Whether `runtime` can run a revision with these containers, or why not `(reason, message)`: the local
/// runtime runs one container's `command` + `args`, not images; the Kubernetes runtime runs images.
pub fn runnable(containers: &[Container], runtime: ServingRuntime) -> Result<(), (String, String)> {
    let Some(container) = containers.get(super::model::serving_container_index(containers)) else {
        return Err(("ContainerMissing".into(), "the Revision has no container".into()));
    };
    let name = container.name.as_deref().unwrap_or("user-container");
    let image = container.image.as_deref().unwrap_or_default();
    match runtime {
        ServingRuntime::Kubernetes => {
            if let Some((index, _)) =
                containers.iter().enumerate().find(|(_, c)| c.image.as_deref().is_none_or(str::is_empty))
            {
                return Err((
                    "ImageMissing".into(),
                    format!(
                        "spec.containers[{index}].image: the Kubernetes runtime runs images, and this container names none"
                    ),
                ));
            }
        }
        ServingRuntime::Local if containers.len() > 1 => {
            return Err((
                "SidecarsNotSupported".into(),
                "the local runtime runs one container per revision; sidecars run on the Kubernetes runtime".into(),
            ));
        }
        ServingRuntime::Local if container.command.is_empty() => {
            return Err((
                "LocalRuntimeNeedsCommand".into(),
                format!(
                    "container {name:?} has image {image:?} but no command: the local runtime runs commands (the Kubernetes runtime runs images)"
                ),
            ));
        }
        ServingRuntime::Local => {
            // Checked here, where the Revision's status reads them, and not only when a node plans the run: a
            // Revision refused there only was logged, and stayed "Deploying" for ever.
            if container.env_from.as_ref().is_some_and(|from| !from.is_null()) {
                return Err((
                    "CreateContainerConfigError".into(),
                    "envFrom reads ConfigMaps and Secrets, which only the Kubernetes runtime resolves".into(),
                ));
            }
            if let Some(var) = container.env.iter().find(|var| var.value_from.is_some()) {
                return Err((
                    "CreateContainerConfigError".into(),
                    format!("env {:?} uses valueFrom, which only the Kubernetes runtime resolves", var.name),
                ));
            }
            let port = container
                .ports
                .first()
                .and_then(|p| p.container_port)
                .and_then(|p| u16::try_from(p).ok())
                .filter(|p| *p > 0);
            if let Some(probed) = probe_port_beside(container.readiness_probe.as_ref(), port) {
                return Err((
                    "ProbePortNotSupported".into(),
                    format!(
                        "the readiness probe names port {probed}, not the container's: the local runtime runs instances \
                         side by side on one address, so a second port would be shared between them; it runs on the \
                         Kubernetes runtime"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Whether this node can run the Revision `revision` (its serving `containers` parsed): its runtime can run the
/// containers ([`runnable`]) and its autoscaling annotations hold under the node's defaults (`--autoscaler`: a
/// `max-scale` above `max-scale-limit` is `InvalidAutoscaling`). Before session 58 the second was only logged by
/// the node that would run it, and the Revision stayed Deploying.
fn runs_here(revision: &Value, containers: &[Container], env: &Environment) -> Result<(), (String, String)> {
    runnable(containers, env.serving_runtime)?;
    super::autoscaling::revision_autoscaling(revision, &env.serving_autoscaler).map(|_| ())
}

/// The port a readiness probe names when it is not the container's own (`container_port`, 8080 by default).
fn probe_port_beside(probe: Option<&super::model::Probe>, container_port: Option<u16>) -> Option<i64> {
    let probe = probe?;
    let named = probe
        .http_get
        .as_ref()
        .and_then(|h| h.port.as_ref())
        .or(probe.tcp_socket.as_ref().and_then(|t| t.port.as_ref()));
    let number = named?.as_i64()?;
    let serving = i64::from(container_port.unwrap_or(8080));
    (number != 0 && number != serving).then_some(number)
}

/// The reason of an instance not ready within the progress deadline (its exit's, on either runtime), and Knative's
/// for a Revision whose resources did not become available by then.
const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
/// The reason of an instance whose Deployment (or Service) name is held by another (the Kubernetes runtime), and
/// Knative's for a Revision whose Deployment exists and is not its own.
const NOT_OWNED: &str = "NotOwned";

/// Failures of the resources around the container, not of the container: they make `ResourcesAvailable` False.
fn resources_failed(reason: &str) -> bool {
    reason == PROGRESS_DEADLINE_EXCEEDED || reason == NOT_OWNED
}

/// A Revision's `ContainerHealthy` and `ResourcesAvailable`, from whether the node can run it (`can_run`:
/// [`runs_here`]), the last failure its instances recorded and whether one was ever ready. As Knative's revision
/// reconciler decides them: a container that cannot run or exits makes `ContainerHealthy` False with its reason
/// (`ExitCodeN`, `LocalRuntimeNeedsCommand`, `InvalidAutoscaling`, ...), and `ResourcesAvailable` stays Unknown
/// (`Deploying`), or True once an instance was ready; only an instance not ready within the progress deadline, or
/// a Deployment of its name not its own, makes `ResourcesAvailable` False with `ProgressDeadlineExceeded` or
/// `NotOwned` (its container did not fail: `ContainerHealthy` stays as it was). Before session 58 any failure made `ResourcesAvailable` False, `ProgressDeadlineExceeded`,
/// seconds after a deploy whose command exited. Pure.
fn revision_health(
    can_run: Result<(), (String, String)>,
    failure: Option<&(String, String)>,
    ready: bool,
) -> (Condition, Condition) {
    let (deadline_missed, container_failed) = match failure {
        Some(failure) if resources_failed(&failure.0) => (Some(failure), None),
        failure => (None, failure),
    };
    let healthy: Condition = match (can_run, container_failed, ready) {
        (Err(e), _, _) => Err(e),
        (Ok(()), Some(failure), _) => Err(failure.clone()),
        (Ok(()), None, true) => Ok(None),
        (Ok(()), None, false) => {
            Ok(Some(("Deploying".into(), "waiting for the first instance to become ready".into())))
        }
    };
    let resources: Condition = match (deadline_missed, ready) {
        (Some(missed), _) => Err(missed.clone()),
        (None, true) => Ok(None),
        (None, false) => Ok(Some(("Deploying".into(), String::new()))),
    };
    (healthy, resources)
}

fn revision_status(object: &Value, world: &World, env: &Environment, status: &mut Map<String, Value>) -> Vec<Value> {
    let namespace = str_at(object, "/metadata/namespace");
    let name = str_at(object, "/metadata/name");
    let containers: Vec<Container> =
        object.pointer("/spec/containers").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
    let facts = revision_facts(world.objects, namespace, name);
    let (healthy, resources) =
        revision_health(runs_here(object, &containers, env), facts.failure.as_ref(), facts.ready);
    // Knative's: Active once a pod is ready, "Activating" (Unknown) while instances start and none is ready yet;
    // `actualReplicas` counts the ready ones. Regression: both counted instances still starting, so a cold
    // start showed one replica and Active for as long as its requests were held.
    let active: Condition = match (facts.ready_instances, facts.instances) {
        (0, 0) => Err(("NoTraffic".into(), "The target is not receiving traffic.".into())),
        (0, _) => Ok(Some(("Activating".into(), "The revision is activating.".into()))),
        _ => Ok(None),
    };
    status.insert("actualReplicas".into(), facts.ready_instances.into());
    // Knative's is the replicas its autoscaler asked for (ready or not): here, the instances the nodes run,
    // starting ones included.
    status.insert("desiredReplicas".into(), facts.instances.into());
    let serving = containers.get(super::model::serving_container_index(&containers));
    if let Some(image) = serving.and_then(|c| c.image.clone()) {
        let name = serving.and_then(|c| c.name.clone()).unwrap_or_else(|| "user-container".into());
        status.insert("containerStatuses".into(), json!([{"name": name, "imageDigest": image}]));
    }
    let ready = ready_of(&[&healthy, &resources]);
    vec![
        condition("Ready", &ready),
        condition("Active", &active),
        condition("ContainerHealthy", &healthy),
        condition("ResourcesAvailable", &resources),
    ]
}

fn configuration_ready(object: &Value, world: &World, env: &Environment, status: &mut Map<String, Value>) -> Condition {
    let namespace = str_at(object, "/metadata/namespace");
    let name = str_at(object, "/metadata/name");
    let generation = object.pointer("/metadata/generation").and_then(Value::as_i64).unwrap_or(1);
    let expected = revision_name(name, str_at(object, "/spec/template/metadata/name"), generation);
    let (created, ready) = latest_revisions(world.objects, namespace, name);
    if let Some(created) = &created {
        status.insert("latestCreatedRevisionName".into(), created.clone().into());
    }
    if let Some(ready) = &ready {
        status.insert("latestReadyRevisionName".into(), ready.clone().into());
    }
    let collision =
        find(world.objects, "Revision", namespace, &expected).filter(|revision| !owned_by(revision, object));
    if collision.is_some() {
        return Err((
            "RevisionFailed".into(),
            format!(
                "Revision {expected:?} already exists and was not made from this template; give the template a new name"
            ),
        ));
    }
    match (&created, &ready) {
        (Some(created), _) if *created != expected => {
            Ok(Some(("Deploying".into(), format!("Revision {expected:?} is being created"))))
        }
        // A failure first, even of a Revision that was ready (its instances crash since): Knative marks the
        // latest created Revision failed whenever its Ready is False, and keeps `latestReadyRevisionName`.
        // Checked after readiness, a crash loop after the first start left the Configuration and Service Ready.
        (Some(created), ready) => match revision_facts(world.objects, namespace, created).failure {
            Some((_, message)) => {
                Err(("RevisionFailed".into(), format!("Revision {created:?} failed with message: {message}.")))
            }
            None if ready.as_ref() == Some(created) => Ok(None),
            None => {
                let revision = find(world.objects, "Revision", namespace, created);
                let containers: Vec<Container> = revision
                    .and_then(|r| r.pointer("/spec/containers"))
                    .and_then(|c| serde_json::from_value(c.clone()).ok())
                    .unwrap_or_default();
                let can_run = match revision {
                    Some(revision) => runs_here(revision, &containers, env),
                    None => runnable(&containers, env.serving_runtime),
                };
                match can_run {
                    Err((_, message)) => {
                        Err(("RevisionFailed".into(), format!("Revision {created:?} failed with message: {message}.")))
                    }
                    Ok(()) => Ok(Some(("Deploying".into(), format!("Revision {created:?} is not ready yet")))),
                }
            }
        },
        (None, _) => Ok(Some(("Deploying".into(), format!("Revision {expected:?} is being created")))),
    }
}

fn traffic_status(
    targets: &[ResolvedTarget],
    name: &str,
    namespace: &str,
    visibility: Visibility,
    env: &Environment,
) -> Value {
    Value::Array(
        targets
            .iter()
            .map(|t| {
                let mut entry =
                    json!({"revisionName": t.revision, "latestRevision": t.latest_revision, "percent": t.percent});
                if let Some(configuration) = &t.configuration {
                    entry["configurationName"] = configuration.clone().into();
                }
                if let Some(tag) = &t.tag {
                    entry["tag"] = tag.clone().into();
                    let tag_host = main_tag_host(tag, name, namespace, &env.serving_domain, visibility);
                    entry["url"] = url_for(&tag_host, env).into();
                }
                entry
            })
            .collect(),
    )
}

/// A Route's `AllTrafficAssigned` and `IngressReady`.
fn route_conditions(
    object: &Value,
    world: &World,
    env: &Environment,
    status: &mut Map<String, Value>,
) -> (Condition, Condition) {
    let namespace = str_at(object, "/metadata/namespace");
    let name = str_at(object, "/metadata/name");
    let visibility = visibility(object);
    let url = url_for(&main_host(name, namespace, &env.serving_domain, visibility), env);
    status.insert("url".into(), url.clone().into());
    status.insert("address".into(), json!({"url": url}));
    let assigned = match resolve_traffic(world.objects, namespace, &spec_traffic(object, name)) {
        Ok(targets) => {
            // As the data plane serves it: a rollout's split, as of now.
            let rolled = rolled_out(world.objects, object, targets, env.rollout_clock());
            let rolling = rolled.next_change_at_ms.is_some();
            status.insert("traffic".into(), traffic_status(&rolled.targets, name, namespace, visibility, env));
            let served = Some((rolled.targets.as_slice(), rolling));
            return (Ok(None), ingress_ready(namespace, name, visibility, served, env));
        }
        Err(error) => unassigned(error, namespace, world, env),
    };
    (assigned, ingress_ready(namespace, name, visibility, None, env))
}

/// Knative's `IngressReady`, judged against the hosts this node's data plane serves now: the Route's traffic
/// is served as it says (`targets`), or, while it does not resolve, its last good routing is still served.
/// Before, a Service was Ready with its new traffic while the data plane still sent requests to the old one.
fn ingress_ready(
    namespace: &str,
    name: &str,
    visibility: Visibility,
    targets: Option<(&[ResolvedTarget], bool)>,
    env: &Environment,
) -> Condition {
    let Some(served) = env.served_routes.as_deref() else { return Ok(None) };
    let domain = &env.serving_domain;
    let serving = match targets {
        // While a rollout is under way the data plane and this status may stand a step apart (each takes its
        // own now): the same revisions served is enough.
        Some((targets, rolling)) => {
            route_hosts(namespace, name, domain, visibility, targets).iter().all(|(host, wanted)| {
                served.get(host).is_some_and(|s| s == wanted || (rolling && same_revisions(s, wanted)))
            })
        }
        None => served
            .get(&main_host(name, namespace, domain, visibility))
            .is_some_and(|s| s.namespace == namespace && s.name == name),
    };
    if serving {
        Ok(None)
    } else {
        Ok(Some(("IngressNotConfigured".into(), "The data plane does not serve this traffic yet.".into())))
    }
}

/// The same Route's host, to the same revisions (whatever their weights).
fn same_revisions(served: &HostTargets, wanted: &HostTargets) -> bool {
    let revisions = |h: &HostTargets| h.targets.iter().map(|(r, _)| r.clone()).collect::<BTreeSet<String>>();
    served.namespace == wanted.namespace && served.name == wanted.name && revisions(served) == revisions(wanted)
}

/// `AllTrafficAssigned` for a Route whose traffic does not resolve.
fn unassigned(mut error: TrafficError, namespace: &str, world: &World, env: &Environment) -> Condition {
    // A Configuration with no ready Revision: False when its own Ready is False (Knative's
    // `errUnreadyConfiguration`), which its status decides with what the node's runtime can run.
    let named = error.unready_configuration.as_deref();
    let unready = named.and_then(|c| find(world.objects, "Configuration", namespace, c));
    if let Some(configuration) = unready {
        let failed = configuration_ready(configuration, world, env, &mut Map::new()).is_err();
        error = unready_configuration(str_at(configuration, "/metadata/name"), failed);
    }
    if error.waiting { Ok(Some((error.reason, error.message))) } else { Err((error.reason, error.message)) }
}

/// Knative's reason and message for a Service's child that does not reflect the Service's spec yet.
fn out_of_date(kind: &str) -> (String, String) {
    ("OutOfDate".into(), format!("The {kind} is still working to reflect the latest desired specification."))
}

/// Status of a serving object (`None` for other kinds).
pub fn reconcile(object: &Value, world: &World, env: &Environment) -> Option<Value> {
    let kind = str_at(object, "/kind");
    let namespace = str_at(object, "/metadata/namespace");
    let name = str_at(object, "/metadata/name");
    let mut status = Map::new();
    status.insert("observedGeneration".into(), object.pointer("/metadata/generation").cloned().unwrap_or(json!(1)));
    let conditions = match kind {
        "Revision" => revision_status(object, world, env, &mut status),
        "Configuration" => {
            let ready = configuration_ready(object, world, env, &mut status);
            vec![condition("Ready", &ready)]
        }
        "Route" => {
            let (assigned, ingress) = route_conditions(object, world, env, &mut status);
            let certificate: Condition = Ok(None);
            let ready = ready_of(&[&assigned, &ingress]);
            let mut certificate_condition = condition("CertificateProvisioned", &certificate);
            certificate_condition["reason"] = "TLSNotEnabled".into();
            vec![
                condition("Ready", &ready),
                condition("AllTrafficAssigned", &assigned),
                condition("IngressReady", &ingress),
                certificate_condition,
            ]
        }
        "Service" => {
            let owned = |kind: &str| find(world.objects, kind, namespace, name).filter(|o| owned_by(o, object));
            // Not there yet, or there and someone else's (Knative's `NotOwned`: the Service leaves it alone).
            let missing = |kind: &str| match find(world.objects, kind, namespace, name) {
                Some(_) => {
                    Err(("NotOwned".into(), format!("There is an existing {kind} {name:?} that we do not own.")))
                }
                None => Ok(Some(("Deploying".into(), format!("{kind} {name:?} is being created")))),
            };
            // A Configuration or Route that does not say yet what the Service says (the children loop has not
            // written it since the Service changed) speaks of the Service's previous generation: Unknown until it
            // catches up, as Knative's `OutOfDate`: else the Service is Ready for its new generation at once, from
            // its children's old one, and `kubectl wait` right after an apply returns early.
            let mut configuration_status = Map::new();
            let configurations: Condition = match owned("Configuration") {
                Some(configuration) => {
                    let ready = configuration_ready(configuration, world, env, &mut configuration_status);
                    if configuration.get("spec") == Some(&configuration_spec(object)) {
                        ready
                    } else {
                        Ok(Some(out_of_date("Configuration")))
                    }
                }
                None => missing("Configuration"),
            };
            for field in ["latestCreatedRevisionName", "latestReadyRevisionName"] {
                if let Some(value) = configuration_status.remove(field) {
                    status.insert(field.into(), value);
                }
            }
            let mut route_status = Map::new();
            let routes: Condition = match owned("Route") {
                Some(route) => {
                    let (assigned, ingress) = route_conditions(route, world, env, &mut route_status);
                    let ready = ready_of(&[&assigned, &ingress]);
                    // Its visibility is the Service's once the Route carries the Service's labels.
                    let current =
                        route.get("spec") == Some(&route_spec(object)) && visibility(route) == visibility(object);
                    if current { ready } else { Ok(Some(out_of_date("Route"))) }
                }
                None => missing("Route"),
            };
            for field in ["url", "address", "traffic"] {
                if let Some(value) = route_status.remove(field) {
                    status.insert(field.into(), value);
                }
            }
            let ready = ready_of(&[&configurations, &routes]);
            vec![
                condition("Ready", &ready),
                condition("ConfigurationsReady", &configurations),
                condition("RoutesReady", &routes),
            ]
        }
        _ => return None,
    };
    status.insert("conditions".into(), Value::Array(conditions));
    Some(Value::Object(status))
}

/// The URL a reference to a Service, Route or Configuration resolves to, once it routes somewhere.
pub fn address(
    kind: &str,
    namespace: &str,
    name: &str,
    world: &World,
    env: &Environment,
) -> Result<String, (String, String)> {
    let Some(object) = find(world.objects, kind, namespace, name) else {
        return Err(("DestinationNotFound".into(), format!("{kind} {namespace}/{name} does not exist")));
    };
    // Computed on read: there is no table served before to keep a Route's last good routing from.
    let served = route_table(world.objects, &env.serving_domain, &RouteTable::new(), env.rollout_clock());
    // A Service's labels reach its Route; a Configuration is served under its Route's names, if it has one.
    let visibility = match kind {
        "Configuration" => find(world.objects, "Route", namespace, name).map_or(Visibility::Public, visibility),
        _ => visibility(object),
    };
    let host = main_host(name, namespace, &env.serving_domain, visibility);
    if served.get(&host).is_some_and(|targets| !targets.targets.is_empty()) {
        return Ok(url_for(&host, env));
    }
    // A Route waiting for a Revision it pins (a blue/green rollout to a named revision) keeps its URL, as Knative's
    // Route keeps its address: its data plane serves its last good routing meanwhile.
    let rolling_out = find(world.objects, "Route", namespace, name).is_some_and(|route| {
        resolve_traffic(world.objects, namespace, &spec_traffic(route, name)).is_err_and(|e| e.pinned_unready)
    });
    if rolling_out {
        return Ok(url_for(&host, env));
    }
    Err(("RouteNotReady".into(), format!("{kind} {namespace}/{name} has no ready revision to route to yet")))
}

#[cfg(test)]
mod revision_health_tests {
    use super::*;

    /// A condition as `(status, reason)`.
    fn shown(condition: &Condition) -> (&str, &str) {
        match condition {
            Ok(None) => ("True", ""),
            Ok(Some((reason, _))) => ("Unknown", reason.as_str()),
            Err((reason, _)) => ("False", reason.as_str()),
        }
    }

    /// Regression: any failure (an exit code, a command the local runtime cannot run) made `ResourcesAvailable`
    /// False with `ProgressDeadlineExceeded`, "no instance became ready", seconds after the deploy. Knative says
    /// that only when the progress deadline passed; a container that fails is `ContainerHealthy` False.
    #[test]
    fn only_a_missed_progress_deadline_makes_resources_unavailable() {
        let failure = |reason: &str| (reason.to_string(), format!("{reason}: the app's last words"));
        let no_command: Result<(), (String, String)> = Err(failure("LocalRuntimeNeedsCommand"));
        let (exit, deadline) = (failure("ExitCode1"), failure(PROGRESS_DEADLINE_EXCEEDED));
        let not_owned = failure(NOT_OWNED);
        let deploying = ("Unknown", "Deploying");
        // (runnable, the last failure, ready once, ContainerHealthy, ResourcesAvailable)
        let cases = [
            (Ok(()), None, false, deploying, deploying),
            (Ok(()), None, true, ("True", ""), ("True", "")),
            (Ok(()), Some(&exit), false, ("False", "ExitCode1"), deploying),
            (Ok(()), Some(&exit), true, ("False", "ExitCode1"), ("True", "")),
            (no_command.clone(), None, false, ("False", "LocalRuntimeNeedsCommand"), deploying),
            (no_command, Some(&exit), false, ("False", "LocalRuntimeNeedsCommand"), deploying),
            (Ok(()), Some(&deadline), false, deploying, ("False", PROGRESS_DEADLINE_EXCEEDED)),
            (Ok(()), Some(&deadline), true, ("True", ""), ("False", PROGRESS_DEADLINE_EXCEEDED)),
            (Ok(()), Some(&not_owned), false, deploying, ("False", NOT_OWNED)),
        ];
        for (can_run, failure, ready, healthy, resources) in cases {
            let case = format!("{can_run:?} {failure:?} ready={ready}");
            let refused = can_run.is_err();
            let (got_healthy, got_resources) = revision_health(can_run, failure, ready);
            assert_eq!((shown(&got_healthy), shown(&got_resources)), (healthy, resources), "{case}");
            // Whichever condition fails, the Revision is not Ready.
            let ready_condition = ready_of(&[&got_healthy, &got_resources]);
            assert_eq!(ready_condition.is_err(), refused || failure.is_some(), "{case}");
        }
        let (_, missed) = revision_health(Ok(()), Some(&deadline), false);
        assert_eq!(missed, Err(deadline.clone()), "the deadline's message is shown");
    }
}

#[cfg(test)]
mod runnable_tests {
    use super::*;

    fn containers(value: Value) -> Vec<Container> {
        serde_json::from_value(value).expect("containers")
    }

    #[test]
    fn each_runtime_says_what_it_cannot_run() {
        let command_only = json!([{"command": ["/bin/app"]}]);
        let image_only = json!([{"image": "ghcr.io/knative/helloworld-go"}]);
        let both = json!([{"image": "x", "command": ["/bin/app"]}]);
        let sidecar = json!([{"image": "x", "command": ["/bin/app"]}, {"image": "proxy"}]);
        let sidecar_without_image = json!([{"image": "x"}, {"command": ["/bin/proxy"]}]);
        let cases = [
            (json!([]), ServingRuntime::Local, Some("ContainerMissing")),
            (json!([]), ServingRuntime::Kubernetes, Some("ContainerMissing")),
            (command_only.clone(), ServingRuntime::Local, None),
            (command_only, ServingRuntime::Kubernetes, Some("ImageMissing")),
            (image_only.clone(), ServingRuntime::Local, Some("LocalRuntimeNeedsCommand")),
            (image_only, ServingRuntime::Kubernetes, None),
            (both.clone(), ServingRuntime::Local, None),
            (both, ServingRuntime::Kubernetes, None),
            (sidecar.clone(), ServingRuntime::Local, Some("SidecarsNotSupported")),
            (sidecar, ServingRuntime::Kubernetes, None),
            (sidecar_without_image, ServingRuntime::Kubernetes, Some("ImageMissing")),
            // Regression: these were refused only where a node planned the run, so the Revision stayed Deploying.
            (
                json!([{"command": ["/bin/app"], "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]),
                ServingRuntime::Local,
                Some("CreateContainerConfigError"),
            ),
            (
                json!([{"image": "x", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]),
                ServingRuntime::Kubernetes,
                None,
            ),
            (
                json!([{"command": ["/bin/app"], "envFrom": [{"configMapRef": {"name": "c"}}]}]),
                ServingRuntime::Local,
                Some("CreateContainerConfigError"),
            ),
            (
                json!([{"command": ["/bin/app"], "readinessProbe": {"httpGet": {"port": 9090}}}]),
                ServingRuntime::Local,
                Some("ProbePortNotSupported"),
            ),
            (
                json!([{"command": ["/bin/app"], "ports": [{"containerPort": 9090}], "readinessProbe": {"httpGet": {"port": 9090}}}]),
                ServingRuntime::Local,
                None,
            ),
            (
                json!([{"image": "x", "readinessProbe": {"tcpSocket": {"port": 9090}}}]),
                ServingRuntime::Kubernetes,
                None,
            ),
        ];
        for (value, runtime, refused) in cases {
            let outcome = runnable(&containers(value.clone()), runtime);
            assert_eq!(outcome.as_ref().err().map(|(reason, _)| reason.as_str()), refused, "{value} on {runtime:?}");
        }
        let (_, message) =
            runnable(&containers(json!([{"image": "x"}, {}])), ServingRuntime::Kubernetes).expect_err("no image");
        assert!(message.starts_with("spec.containers[1].image"), "{message}");
    }
}
