//! From objects to what runs: a Revision object becomes a [`RevisionRun`] (command, environment, port,
//! readiness, concurrency, timeout, scale bounds), and the set of revisions this node should be ready to run
//! is compared with what runs ([`plan`]). Pure.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use sluice_controller::serving::ServingRuntime;
use sluice_controller::serving::autoscaling::{AutoscalerDefaults, revision_autoscaling};
use sluice_controller::serving::model::{Container, Probe, serving_container_index};
use sluice_controller::serving::routing::{RouteTable, latest_revisions, revision_facts, spec_traffic};
use sluice_controller::serving::status::runnable;
use sluice_controller::serving::{CONFIGURATION_LABEL, DEFAULT_TIMEOUT_SECONDS, SERVICE_LABEL};

use crate::revision::RevisionRun;
use crate::runtime::{KillingProbe, ProbeRhythm, Readiness};

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn label<'a>(object: &'a Value, name: &str) -> Option<&'a str> {
    object.pointer("/metadata/labels").and_then(|l| l.get(name)).and_then(Value::as_str)
}

/// A timeout of the Revision's spec in milliseconds; none when absent or 0 (validated at apply).
fn seconds_ms(revision: &Value, pointer: &str) -> Option<u64> {
    revision.pointer(pointer).and_then(Value::as_u64).filter(|s| *s > 0).map(|s| s.saturating_mul(1000))
}

/// What running a Revision takes, or why `runtime` cannot run it: `(reason, message)`.
pub(crate) fn revision_run(
    revision: &Value,
    defaults: &AutoscalerDefaults,
    runtime: ServingRuntime,
) -> Result<RevisionRun, (String, String)> {
    let containers: Vec<Container> =
        revision.pointer("/spec/containers").and_then(|c| serde_json::from_value(c.clone()).ok()).unwrap_or_default();
    runnable(&containers, runtime)?;
    let container = containers.get(serving_container_index(&containers)).cloned().unwrap_or_default();
    let name = str_at(revision, "/metadata/name").to_string();
    // `runnable` refused `valueFrom` and `envFrom` on the local runtime; Kubernetes resolves them in the pod. A
    // name may come twice (Kubernetes and Knative accept it): every definition is kept in order, so the last one
    // wins where the runtime sets the variables (the local runtime's `Command::envs`) and a `$(VAR)` reference
    // sees the definitions before it, as Kubernetes expands them.
    let mut env = Vec::new();
    for var in container.env.iter().filter(|var| var.value_from.is_none()) {
        env.push((var.name.clone(), var.value.clone().unwrap_or_default()));
    }
    if let Some(service) = label(revision, SERVICE_LABEL) {
        env.push(("K_SERVICE".into(), service.into()));
    }
    env.push(("K_CONFIGURATION".into(), label(revision, CONFIGURATION_LABEL).unwrap_or_default().into()));
    env.push(("K_REVISION".into(), name.clone()));
    let port =
        container.ports.first().and_then(|p| p.container_port).and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
    let h2c = container.ports.first().and_then(|p| p.name.as_deref()) == Some("h2c");
    let readiness = readiness_of(container.readiness_probe.as_ref());
    let readiness_rhythm = rhythm_of(container.readiness_probe.as_ref());
    let startup = killing_probe_of(container.startup_probe.as_ref());
    let liveness = killing_probe_of(container.liveness_probe.as_ref());
    let container_concurrency = revision
        .pointer("/spec/containerConcurrency")
        .and_then(Value::as_u64)
        .map_or(0, |c| c.min(u64::from(u32::MAX)) as u32);
    // Validated at apply against the defaults of the node applied through; a node whose defaults make them invalid
    // (a lower `max-scale-limit`) says why, and so does the Revision's status.
    let autoscaling = revision_autoscaling(revision, defaults)?;
    // Knative's defaulting: `timeoutSeconds` unset or 0 is the default (validation refuses a negative one).
    let timeout_seconds = revision
        .pointer("/spec/timeoutSeconds")
        .and_then(Value::as_i64)
        .filter(|seconds| *seconds > 0)
        .unwrap_or(DEFAULT_TIMEOUT_SECONDS);
    let object = serde_json::json!({
        "metadata": {
            "name": name,
            "namespace": str_at(revision, "/metadata/namespace"),
            "labels": revision.pointer("/metadata/labels").cloned().unwrap_or_default(),
        },
        "spec": revision.pointer("/spec").cloned().unwrap_or_default(),
    });
    let progress_deadline = revision
        .pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(sluice_controller::serving::PROGRESS_DEADLINE_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|value| sluice_controller::serving::progress_deadline_ms(value).ok())
        .map(std::time::Duration::from_millis);
    Ok(RevisionRun {
        namespace: str_at(revision, "/metadata/namespace").to_string(),
        name,
        uid: str_at(revision, "/metadata/uid").to_string(),
        object: std::sync::Arc::new(object),
        argv: container.command.iter().chain(&container.args).cloned().collect(),
        env,
        working_dir: container.working_dir.map(PathBuf::from),
        port,
        readiness,
        readiness_rhythm,
        startup,
        liveness,
        h2c,
        container_concurrency,
        timeout_ms: u64::try_from(timeout_seconds).unwrap_or(0).saturating_mul(1000),
        response_start_timeout_ms: seconds_ms(revision, "/spec/responseStartTimeoutSeconds"),
        idle_timeout_ms: seconds_ms(revision, "/spec/idleTimeoutSeconds"),
        autoscaling,
        progress_deadline,
    })
}

/// When the readiness probe runs and how long each attempt has: `periodSeconds` (none when unset or 0, Knative's
/// aggressive probing), `failureThreshold`, `successThreshold` and `timeoutSeconds`, Kubernetes' defaults (3, 1,
/// 1 s) for those unset or not positive, and `initialDelaySeconds` (0).
fn rhythm_of(probe: Option<&Probe>) -> ProbeRhythm {
    let default = ProbeRhythm::default();
    let positive = |value: Option<i64>| value.filter(|v| *v > 0).map(|v| v.min(i64::from(u32::MAX)) as u32);
    let seconds = |value: Option<i64>| positive(value).map(|seconds| Duration::from_secs(u64::from(seconds)));
    let Some(probe) = probe else { return default };
    ProbeRhythm {
        period: seconds(probe.period_seconds),
        failure_threshold: positive(probe.failure_threshold).unwrap_or(default.failure_threshold),
        success_threshold: positive(probe.success_threshold).unwrap_or(default.success_threshold),
        timeout: seconds(probe.timeout_seconds).unwrap_or(default.timeout),
        initial_delay: seconds(probe.initial_delay_seconds).unwrap_or(default.initial_delay),
    }
}

/// A startup or liveness probe as the kubelet runs it: its handler (a gRPC one as a TCP connect: no gRPC
/// health client runs here), `initialDelaySeconds` (0), `periodSeconds` (10), `timeoutSeconds` (1) and
/// `failureThreshold` (3), Kubernetes' defaults for those unset or not positive (a delay of 0 stays 0).
fn killing_probe_of(probe: Option<&Probe>) -> Option<KillingProbe> {
    let probe = probe?;
    let seconds = |value: Option<i64>, default: u64| {
        Duration::from_secs(value.filter(|v| *v > 0).map_or(default, |v| v.unsigned_abs()))
    };
    Some(KillingProbe {
        check: readiness_of(Some(probe)),
        initial_delay: seconds(probe.initial_delay_seconds, 0),
        period: seconds(probe.period_seconds, 10),
        timeout: seconds(probe.timeout_seconds, 1),
        failure_threshold: probe.failure_threshold.filter(|v| *v > 0).map_or(3, |v| v.min(i64::from(u32::MAX)) as u32),
    })
}

/// The readiness check: the probe's handler, else a TCP connect to the port (the port is filled in per
/// instance: a probe runs against the container's port, and one naming another is refused to run here).
fn readiness_of(probe: Option<&Probe>) -> Readiness {
    match probe {
        Some(Probe { http_get: Some(get), .. }) => {
            Readiness::HttpGet { port: 0, path: get.path.clone().unwrap_or_else(|| "/".into()) }
        }
        Some(Probe { exec: Some(exec), .. }) if !exec.command.is_empty() => {
            Readiness::Exec { argv: exec.command.clone() }
        }
        _ => Readiness::TcpConnect { port: 0 },
    }
}

/// The revisions this node should be ready to run, and which of them are reachable.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Wanted {
    /// By `namespace/name`, with what running each takes.
    pub(crate) runs: BTreeMap<String, RevisionRun>,
    /// Those a Route (or a Configuration, or a tag) sends traffic to, the latest created revision of a
    /// Configuration some route follows and a revision a Route's traffic pins (with a percent or a tag) that is
    /// not ready yet (each gets the traffic once Ready: Knative's `pending`, which starts `initial-scale`). The
    /// others are each Configuration's latest created revision while traffic is pinned elsewhere, and a
    /// revision pinned at 0 % without a tag that is not ready yet: they run only to become Ready once
    /// (Knative's unreachable revision: no `min-scale`, no `initial-scale`), then stay at zero.
    pub(crate) reachable: BTreeSet<String>,
    /// `(namespace/name, why it cannot run here)`.
    pub(crate) problems: Vec<(String, String)>,
}

/// The revisions this node should be ready to run: those a Route (or a Configuration) sends traffic to, each
/// Configuration's latest created one, and those a Route's traffic pins that are not ready yet (so that each
/// starts once and becomes Ready); with what running them takes, and the reason for those that cannot run
/// here. Old revisions nothing routes to are left out: Knative ignores `min-scale` on them, and nothing else
/// would start them.
pub(crate) fn wanted_revisions(
    objects: &[Value],
    table: &RouteTable,
    defaults: &AutoscalerDefaults,
    runtime: ServingRuntime,
) -> Wanted {
    let routed: BTreeSet<(&str, &str)> = table
        .values()
        .flat_map(|host| host.targets.iter().map(move |(revision, _)| (host.namespace.as_str(), revision.as_str())))
        .collect();
    let followed = followed_configurations(objects);
    let pinned = pinned_revisions(objects);
    let mut wanted = Wanted::default();
    for revision in objects.iter().filter(|o| str_at(o, "/kind") == "Revision") {
        let namespace = str_at(revision, "/metadata/namespace");
        let name = str_at(revision, "/metadata/name");
        let configuration = label(revision, CONFIGURATION_LABEL).unwrap_or_default();
        let latest = latest_revisions(objects, namespace, configuration).0.as_deref() == Some(name);
        // A Route routes to a pinned Revision only once it is ready, so nothing routed would ever start one that
        // is not (one made outside a Configuration, or not its latest): it starts for being pinned. Some(whether
        // the Route sends it anything once it resolves).
        let pending = pinned
            .get(&(namespace.to_string(), name.to_string()))
            .copied()
            .filter(|_| !revision_facts(objects, namespace, name).ready);
        let reachable = routed.contains(&(namespace, name))
            || pending == Some(true)
            || (latest && followed.contains(&(namespace.to_string(), configuration.to_string())));
        if !(reachable || latest || pending.is_some()) {
            continue;
        }
        let key = format!("{namespace}/{name}");
        match revision_run(revision, defaults, runtime) {
            Ok(run) => {
                if reachable {
                    wanted.reachable.insert(key.clone());
                }
                wanted.runs.insert(key, run);
            }
            Err((reason, message)) => wanted.problems.push((key, format!("{reason}: {message}"))),
        }
    }
    wanted
}

/// `(namespace, configuration)` of the Configurations whose latest ready revision some route serves: a Route's
/// target that names the Configuration (with a percent, or a tag), or the Configuration's own host when no
/// Route has its name. Their latest created revision gets traffic as soon as it is Ready.
fn followed_configurations(objects: &[Value]) -> BTreeSet<(String, String)> {
    let mut followed = BTreeSet::new();
    for route in objects.iter().filter(|o| str_at(o, "/kind") == "Route") {
        let namespace = str_at(route, "/metadata/namespace");
        for target in spec_traffic(route, str_at(route, "/metadata/name")) {
            let sends = target.percent.unwrap_or(0) > 0 || target.tag.is_some();
            if let (None, Some(configuration), true) = (&target.revision_name, &target.configuration_name, sends) {
                followed.insert((namespace.to_string(), configuration.clone()));
            }
        }
    }
    for configuration in objects.iter().filter(|o| str_at(o, "/kind") == "Configuration") {
        let namespace = str_at(configuration, "/metadata/namespace");
        let name = str_at(configuration, "/metadata/name");
        let has_route = objects.iter().any(|o| {
            str_at(o, "/kind") == "Route"
                && str_at(o, "/metadata/namespace") == namespace
                && str_at(o, "/metadata/name") == name
        });
        if !has_route {
            followed.insert((namespace.to_string(), name.to_string()));
        }
    }
    followed
}

/// `(namespace, revision)` of the Revisions a Route's traffic names, each with whether the Route sends it
/// anything (a percent, or a tag) once it resolves.
fn pinned_revisions(objects: &[Value]) -> BTreeMap<(String, String), bool> {
    let mut pinned: BTreeMap<(String, String), bool> = BTreeMap::new();
    for route in objects.iter().filter(|o| str_at(o, "/kind") == "Route") {
        let namespace = str_at(route, "/metadata/namespace");
        for target in spec_traffic(route, str_at(route, "/metadata/name")) {
            let sends = target.percent.unwrap_or(0) > 0 || target.tag.is_some();
            if let Some(revision) = target.revision_name {
                *pinned.entry((namespace.to_string(), revision)).or_default() |= sends;
            }
        }
    }
    pinned
}

/// What to start and stop so that what runs is what is wanted (a revision whose run changed restarts).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    pub(crate) start: Vec<String>,
    pub(crate) stop: Vec<String>,
}

pub(crate) fn plan(wanted: &BTreeMap<String, RevisionRun>, running: &BTreeMap<String, RevisionRun>) -> Plan {
    let mut plan = Plan::default();
    for (key, run) in running {
        if wanted.get(key) != Some(run) {
            plan.stop.push(key.clone());
        }
    }
    for (key, run) in wanted {
        if running.get(key) != Some(run) {
            plan.start.push(key.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_controller::serving::rollout::RolloutClock;
    use sluice_controller::serving::routing::route_table;

    use super::*;

    fn revision(name: &str, generation: u32, container: Value, annotations: Value) -> Value {
        json!({"apiVersion": "serving.knative.dev/v1", "kind": "Revision",
            "metadata": {"name": name, "namespace": "default", "annotations": annotations,
                "labels": {"serving.knative.dev/configuration": "hello", "serving.knative.dev/service": "hello",
                    "serving.knative.dev/configurationGeneration": generation.to_string()}},
            "spec": {"containers": [container], "containerConcurrency": 1, "timeoutSeconds": 30}})
    }

    #[test]
    fn a_revision_runs_its_command_with_knatives_environment() {
        let container = json!({"image": "ghcr.io/knative/helloworld-go", "command": ["/bin/hello"], "args": ["--x"],
            "env": [{"name": "TARGET", "value": "Sluice"}], "workingDir": "/tmp",
            "ports": [{"containerPort": 9000, "name": "h2c"}],
            "readinessProbe": {"httpGet": {"path": "/healthz"}}});
        let run = revision_run(
            &revision(
                "hello-00001",
                1,
                container,
                json!({"autoscaling.knative.dev/min-scale": "1",
                "autoscaling.knative.dev/max-scale": "3", "autoscaling.knative.dev/window": "10s"}),
            ),
            &AutoscalerDefaults::default(),
            ServingRuntime::Local,
        )
        .expect("runnable");
        assert_eq!(run.argv, ["/bin/hello", "--x"]);
        assert_eq!(run.object["metadata"]["name"], "hello-00001");
        assert_eq!(run.object["spec"]["containers"][0]["image"], "ghcr.io/knative/helloworld-go");
        assert_eq!(
            run.env,
            [
                ("TARGET".to_string(), "Sluice".to_string()),
                ("K_SERVICE".into(), "hello".into()),
                ("K_CONFIGURATION".into(), "hello".into()),
                ("K_REVISION".into(), "hello-00001".into()),
            ]
        );
        assert_eq!(run.working_dir, Some(PathBuf::from("/tmp")));
        assert_eq!((run.port, run.h2c), (Some(9000), true));
        assert_eq!(run.readiness, Readiness::HttpGet { port: 0, path: "/healthz".into() });
        assert_eq!((run.container_concurrency, run.timeout_ms), (1, 30_000));
        assert_eq!((run.response_start_timeout_ms, run.idle_timeout_ms), (None, None));
        let mut timed = revision("hello-00002", 2, json!({"command": ["/bin/hello"]}), json!({}));
        timed["spec"]["responseStartTimeoutSeconds"] = json!(5);
        timed["spec"]["idleTimeoutSeconds"] = json!(0);
        let timed = revision_run(&timed, &AutoscalerDefaults::default(), ServingRuntime::Local).expect("runnable");
        let timeouts = (timed.response_start_timeout_ms, timed.idle_timeout_ms);
        assert_eq!(timeouts, (Some(5_000), None), "0 is no idle timeout");
        let knobs = &run.autoscaling;
        assert_eq!((knobs.min_scale, knobs.max_scale, knobs.initial_scale, knobs.stable_window_ms), (1, 3, 1, 10_000));
        assert_eq!(knobs.total, 1.0, "containerConcurrency 1 is the target's total");
        assert_eq!(run.progress_deadline, None, "the node's");
        // Regression (found by an exploratory test): the annotation was accepted and ignored.
        let annotations = json!({"serving.knative.dev/progress-deadline": "20s"});
        let deadline = revision("hello-00003", 3, json!({"command": ["/bin/hello"]}), annotations);
        let deadline =
            revision_run(&deadline, &AutoscalerDefaults::default(), ServingRuntime::Local).expect("runnable");
        assert_eq!(deadline.progress_deadline, Some(std::time::Duration::from_secs(20)));
    }

    /// Startup and liveness probes keep their handler and timing, Kubernetes' defaults where unset; none
    /// without one.
    #[test]
    fn startup_and_liveness_probes_are_run_with_kubernetes_defaults() {
        let container = json!({"command": ["/bin/hello"],
            "startupProbe": {"exec": {"command": ["test", "-f", "/tmp/up"]}, "periodSeconds": 1, "failureThreshold": 30},
            "livenessProbe": {"httpGet": {"path": "/alive"}, "initialDelaySeconds": 5, "timeoutSeconds": 0}});
        let run = revision_run(
            &revision("hello-00001", 1, container, json!({})),
            &AutoscalerDefaults::default(),
            ServingRuntime::Local,
        )
        .expect("runnable");
        let seconds = std::time::Duration::from_secs;
        let startup = run.startup.expect("a startup probe");
        assert_eq!(startup.check, Readiness::Exec { argv: vec!["test".into(), "-f".into(), "/tmp/up".into()] });
        assert_eq!(
            (startup.initial_delay, startup.period, startup.timeout, startup.failure_threshold),
            (seconds(0), seconds(1), seconds(1), 30)
        );
        let liveness = run.liveness.expect("a liveness probe");
        assert_eq!(liveness.check, Readiness::HttpGet { port: 0, path: "/alive".into() });
        assert_eq!(
            (liveness.initial_delay, liveness.period, liveness.timeout, liveness.failure_threshold),
            (seconds(5), seconds(10), seconds(1), 3)
        );
        assert_eq!(liveness.on_port(8080).check, Readiness::HttpGet { port: 8080, path: "/alive".into() });
        let bare = revision_run(
            &revision("hello-00002", 2, json!({"command": ["/bin/hello"]}), json!({})),
            &AutoscalerDefaults::default(),
            ServingRuntime::Local,
        )
        .expect("runnable");
        assert_eq!((bare.startup, bare.liveness), (None, None));
    }

    /// The readiness probe keeps its handler and timing: Kubernetes' defaults where unset or not positive, and no
    /// period for `periodSeconds` unset or 0 (Knative's aggressive probing). Regression: `timeoutSeconds` and
    /// `initialDelaySeconds` were dropped: every attempt had 1 s, and the first ran at the instance's start.
    #[test]
    fn the_readiness_probe_keeps_its_handler_and_timing() {
        let seconds = Duration::from_secs;
        let rhythm = |period: Option<u64>, failure_threshold, success_threshold, timeout, initial_delay| ProbeRhythm {
            period: period.map(seconds),
            failure_threshold,
            success_threshold,
            timeout: seconds(timeout),
            initial_delay: seconds(initial_delay),
        };
        let defaults = rhythm(None, 3, 1, 1, 0);
        let exec = |command: &[&str]| Readiness::Exec { argv: command.iter().map(|arg| arg.to_string()).collect() };
        let http = |path: &str| Readiness::HttpGet { port: 0, path: path.into() };
        // (readinessProbe (None: none), the check, its rhythm)
        let cases = [
            (None, Readiness::TcpConnect { port: 0 }, defaults),
            (Some(json!({"tcpSocket": {}})), Readiness::TcpConnect { port: 0 }, defaults),
            (
                Some(json!({"httpGet": {"path": "/ready"}, "periodSeconds": 0, "timeoutSeconds": 0})),
                http("/ready"),
                defaults,
            ),
            (
                Some(json!({"exec": {"command": ["cat", "/tmp/ready"]}, "periodSeconds": 5, "timeoutSeconds": 3,
                    "initialDelaySeconds": 2, "failureThreshold": 4, "successThreshold": 2})),
                exec(&["cat", "/tmp/ready"]),
                rhythm(Some(5), 4, 2, 3, 2),
            ),
            (Some(json!({"exec": {"command": ["true"]}})), exec(&["true"]), defaults),
            (Some(json!({"httpGet": {}, "initialDelaySeconds": 30})), http("/"), rhythm(None, 3, 1, 1, 30)),
            (
                Some(json!({"httpGet": {}, "periodSeconds": -1, "timeoutSeconds": -2, "initialDelaySeconds": -3})),
                http("/"),
                defaults,
            ),
        ];
        for (probe, check, expected) in cases {
            let mut container = json!({"command": ["/bin/hello"]});
            if let Some(probe) = &probe {
                container["readinessProbe"] = probe.clone();
            }
            let object = revision("hello-00001", 1, container, json!({}));
            let run = revision_run(&object, &AutoscalerDefaults::default(), ServingRuntime::Local).expect("runnable");
            assert_eq!((run.readiness, run.readiness_rhythm), (check, expected), "{probe:?}");
        }
    }

    /// Regression: `timeoutSeconds: 0` (Knative's "the default") gave requests a 1-second timeout.
    #[test]
    fn a_timeout_of_zero_is_the_default_timeout() {
        // (timeoutSeconds, the request timeout in ms)
        let cases = [(None, 300_000), (Some(json!(0)), 300_000), (Some(json!(45)), 45_000), (Some(json!(-3)), 300_000)];
        for (timeout, ms) in cases {
            let mut object = revision("hello-00001", 1, json!({"command": ["/bin/hello"]}), json!({}));
            match &timeout {
                Some(seconds) => object["spec"]["timeoutSeconds"] = seconds.clone(),
                None => {
                    if let Some(spec) = object["spec"].as_object_mut() {
                        spec.remove("timeoutSeconds");
                    }
                }
            }
            let run = revision_run(&object, &AutoscalerDefaults::default(), ServingRuntime::Local).expect("runnable");
            assert_eq!(run.timeout_ms, ms, "{timeout:?}");
        }
    }

    /// Regression (with the validation that refused them): an env var defined twice is Kubernetes' "the last one
    /// wins"; both definitions reach the runtime in order, and the process gets the last.
    #[test]
    fn an_env_var_defined_twice_takes_its_last_value() {
        let container = json!({"command": ["/bin/hello"],
            "env": [{"name": "TARGET", "value": "first"}, {"name": "OTHER", "value": "x"},
                {"name": "TARGET", "value": "second"}]});
        let object = revision("hello-00001", 1, container, json!({}));
        let run = revision_run(&object, &AutoscalerDefaults::default(), ServingRuntime::Local).expect("runnable");
        let targets: Vec<&str> =
            run.env.iter().filter(|(name, _)| name == "TARGET").map(|(_, value)| value.as_str()).collect();
        assert_eq!(targets, ["first", "second"], "in order");
        // What the local runtime does with them (`Command::envs`): a later value replaces an earlier one.
        let mut command = std::process::Command::new("true");
        command.envs(run.env.iter().map(|(name, value)| (name.as_str(), value.as_str())));
        let set: Vec<_> = command.get_envs().filter(|(name, _)| *name == "TARGET").collect();
        assert_eq!(set, [(std::ffi::OsStr::new("TARGET"), Some(std::ffi::OsStr::new("second")))]);
    }

    #[test]
    fn what_the_local_runtime_cannot_run_says_why() {
        let image_only = revision("a", 1, json!({"image": "ghcr.io/knative/helloworld-go"}), json!({}));
        assert_eq!(
            revision_run(&image_only, &AutoscalerDefaults::default(), ServingRuntime::Local).expect_err("no command").0,
            "LocalRuntimeNeedsCommand"
        );
        let secret = revision(
            "b",
            1,
            json!({"image": "x", "command": ["/bin/true"], "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
            json!({}),
        );
        assert_eq!(
            revision_run(&secret, &AutoscalerDefaults::default(), ServingRuntime::Local).expect_err("valueFrom").0,
            "CreateContainerConfigError"
        );
        let config_map = revision(
            "b",
            1,
            json!({"image": "x", "command": ["/bin/true"], "envFrom": [{"configMapRef": {"name": "settings"}}]}),
            json!({}),
        );
        assert_eq!(
            revision_run(&config_map, &AutoscalerDefaults::default(), ServingRuntime::Local).expect_err("envFrom").0,
            "CreateContainerConfigError",
            "envFrom was ignored: the app ran without the variables it asked for"
        );
        // A health port beside the serving one: Knative allows it; instances here share one address.
        let health_port = |port: Value| {
            revision(
                "h",
                1,
                json!({"image": "x", "command": ["/bin/true"], "ports": [{"containerPort": 9000}],
                    "readinessProbe": {"httpGet": {"path": "/actuator/health", "port": port}}}),
                json!({}),
            )
        };
        let beside = health_port(json!(8081));
        assert_eq!(
            revision_run(&beside, &AutoscalerDefaults::default(), ServingRuntime::Local).expect_err("8081").0,
            "ProbePortNotSupported"
        );
        assert!(revision_run(&beside, &AutoscalerDefaults::default(), ServingRuntime::Kubernetes).is_ok());
        for same in [json!(9000), json!(0)] {
            assert!(
                revision_run(&health_port(same.clone()), &AutoscalerDefaults::default(), ServingRuntime::Local).is_ok(),
                "{same}: the container's own port"
            );
        }
        let tcp = revision("c", 1, json!({"image": "x", "command": ["/bin/true"]}), json!({}));
        let defaults = AutoscalerDefaults::from_pairs(["stable-window=5s"]).expect("valid");
        let run = revision_run(&tcp, &defaults, ServingRuntime::Local).expect("runnable");
        assert_eq!((run.readiness, run.port), (Readiness::TcpConnect { port: 0 }, None));
        assert_eq!(run.autoscaling.stable_window_ms, 5_000, "the cluster's default window");
        // Annotations the node's defaults make invalid: the reason and message its Revision's status shows too.
        let limited = AutoscalerDefaults::from_pairs(["max-scale-limit=5"]).expect("valid");
        let ten =
            revision("d", 1, json!({"command": ["/bin/true"]}), json!({"autoscaling.knative.dev/max-scale": "10"}));
        let (reason, message) = revision_run(&ten, &limited, ServingRuntime::Local).expect_err("above the limit");
        assert_eq!(reason, "InvalidAutoscaling");
        assert!(message.starts_with("metadata.annotations[autoscaling.knative.dev/max-scale]: "), "{message}");
    }

    #[test]
    fn the_kubernetes_runtime_runs_images_and_leaves_secrets_to_the_pod() {
        let defaults = AutoscalerDefaults::default();
        let image_only = revision("a", 1, json!({"image": "ghcr.io/knative/helloworld-go"}), json!({}));
        let run = revision_run(&image_only, &defaults, ServingRuntime::Kubernetes).expect("an image runs");
        assert!(run.argv.is_empty());
        let secret = revision(
            "b",
            1,
            json!({"image": "x", "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}),
            json!({}),
        );
        let run = revision_run(&secret, &defaults, ServingRuntime::Kubernetes).expect("valueFrom is the pod's");
        assert!(run.env.iter().all(|(name, _)| name != "K"), "resolved in the pod, not here: {:?}", run.env);
        let command_only = revision("c", 1, json!({"command": ["/bin/app"]}), json!({}));
        assert_eq!(
            revision_run(&command_only, &defaults, ServingRuntime::Kubernetes).expect_err("no image").0,
            "ImageMissing"
        );
    }

    #[test]
    fn a_latest_revision_is_reachable_only_when_a_route_follows_its_configuration() {
        let app = json!({"image": "x", "command": ["/bin/app"]});
        let configuration = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
            "metadata": {"name": "hello", "namespace": "default", "uid": "c1", "generation": 2}, "spec": {}});
        let ready = json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
            "metadata": {"name": "hello-00001", "namespace": "default"}, "spec": {"ready": true}});
        let base = vec![
            configuration,
            revision("hello-00001", 1, app.clone(), json!({})),
            revision("hello-00002", 2, app, json!({"autoscaling.knative.dev/min-scale": "3"})),
            ready,
        ];
        let latest = json!({"configurationName": "hello", "latestRevision": true, "percent": 100});
        let pinned = json!({"revisionName": "hello-00001", "percent": 100});
        // (the Route's traffic (None: no Route), reachable, why)
        let cases = [
            (Some(json!([latest])), vec!["default/hello-00001", "default/hello-00002"], "follows the latest"),
            (Some(json!([pinned])), vec!["default/hello-00001"], "pinned: the new min-scale 3 revision is not"),
            (
                Some(
                    json!([pinned, {"configurationName": "hello", "latestRevision": true, "percent": 0, "tag": "next"}]),
                ),
                vec!["default/hello-00001", "default/hello-00002"],
                "a tag follows the latest",
            ),
            (
                Some(json!([pinned, {"configurationName": "hello", "latestRevision": true, "percent": 0}])),
                vec!["default/hello-00001"],
                "0 % and no tag: nothing is sent",
            ),
            (None, vec!["default/hello-00001", "default/hello-00002"], "the Configuration's own host follows it"),
        ];
        for (traffic, reachable, why) in cases {
            let mut objects = base.clone();
            if let Some(traffic) = traffic {
                objects.push(json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
                    "metadata": {"name": "hello", "namespace": "default"}, "spec": {"traffic": traffic}}));
            }
            let table = route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default());
            let wanted = wanted_revisions(&objects, &table, &AutoscalerDefaults::default(), ServingRuntime::Local);
            assert_eq!(wanted.runs.len(), 2, "{why}: the latest runs either way (to become Ready)");
            assert_eq!(wanted.reachable.iter().collect::<Vec<_>>(), reachable, "{why}");
        }
    }

    /// Regression: a Route routes to a pinned revision only once it is ready, and only routed revisions and
    /// each Configuration's latest ran, so a pinned revision not ready yet that is not its Configuration's
    /// latest (or made outside any Configuration) never started, and its Route never resolved.
    #[test]
    fn a_pinned_revision_not_ready_yet_runs_to_become_ready() {
        let app = json!({"image": "x", "command": ["/bin/app"]});
        let configuration = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
            "metadata": {"name": "hello", "namespace": "default", "uid": "c1", "generation": 2}, "spec": {}});
        let mut standalone = revision("solo", 0, app.clone(), json!({}));
        standalone["metadata"]["labels"] = json!({});
        let base = vec![
            configuration,
            revision("hello-00001", 1, app.clone(), json!({})),
            revision("hello-00002", 2, app, json!({})),
            standalone,
        ];
        let ready = |name: &str| {
            json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
                "metadata": {"name": name, "namespace": "default"}, "spec": {"ready": true}})
        };
        let old = json!([{"revisionName": "hello-00001", "percent": 100}]);
        let both =
            json!([{"revisionName": "hello-00002", "percent": 100}, {"revisionName": "hello-00001", "percent": 0}]);
        // (the Route's traffic, the revisions ready, wanted, reachable, why)
        let cases = [
            (
                old.clone(),
                vec![],
                vec!["default/hello-00001", "default/hello-00002"],
                vec!["default/hello-00001"],
                "pinned, not ready: it starts, reachable (it gets the traffic once ready)",
            ),
            (
                old,
                vec!["hello-00001"],
                vec!["default/hello-00001", "default/hello-00002"],
                vec!["default/hello-00001"],
                "pinned and ready: routed",
            ),
            (
                both,
                vec!["hello-00002"],
                vec!["default/hello-00001", "default/hello-00002"],
                vec!["default/hello-00002"],
                "0 % without a tag, not ready: it starts, unreachable; the target with the share is served",
            ),
            (
                json!([{"revisionName": "solo", "percent": 100}]),
                vec![],
                vec!["default/hello-00002", "default/solo"],
                vec!["default/solo"],
                "a Revision no Configuration made, pinned",
            ),
        ];
        for (traffic, ready_ones, wanted, reachable, why) in cases {
            let mut objects = base.clone();
            objects.extend(ready_ones.into_iter().map(ready));
            objects.push(json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
                "metadata": {"name": "hello", "namespace": "default"}, "spec": {"traffic": traffic}}));
            let table = route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default());
            let found = wanted_revisions(&objects, &table, &AutoscalerDefaults::default(), ServingRuntime::Local);
            assert!(found.problems.is_empty(), "{why}: {:?}", found.problems);
            assert_eq!(found.runs.keys().collect::<Vec<_>>(), wanted, "{why}");
            assert_eq!(found.reachable.iter().collect::<Vec<_>>(), reachable, "{why}");
        }
    }

    #[test]
    fn routed_latest_and_min_scale_revisions_are_wanted_and_changes_restart() {
        let app = json!({"image": "x", "command": ["/bin/app"]});
        let configuration = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Configuration",
            "metadata": {"name": "hello", "namespace": "default", "uid": "c1", "generation": 3}, "spec": {}});
        let old = revision("hello-00001", 1, app.clone(), json!({}));
        let pinned = revision("hello-00002", 2, app.clone(), json!({}));
        let latest = revision("hello-00003", 3, app.clone(), json!({}));
        let warm_but_old = revision("hello-00000", 0, app.clone(), json!({"autoscaling.knative.dev/min-scale": "2"}));
        let route = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Route",
            "metadata": {"name": "hello", "namespace": "default"},
            "spec": {"traffic": [{"revisionName": "hello-00002", "percent": 100}]}});
        // Ready: a Route routes to a pinned revision once it is.
        let pinned_ready = json!({"apiVersion": "serving.knative.dev/v1", "kind": "RevisionState",
            "metadata": {"name": "hello-00002", "namespace": "default"}, "spec": {"ready": true}});
        let objects = [configuration, old, pinned, latest, warm_but_old, route, pinned_ready];
        let table = route_table(&objects, "localhost", &RouteTable::new(), RolloutClock::default());
        let Wanted { runs: wanted, reachable, problems } =
            wanted_revisions(&objects, &table, &AutoscalerDefaults::default(), ServingRuntime::Local);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(
            wanted.keys().collect::<Vec<_>>(),
            ["default/hello-00002", "default/hello-00003"],
            "routed and latest created; not the old ones, min-scale or not"
        );
        assert_eq!(
            reachable.iter().collect::<Vec<_>>(),
            ["default/hello-00002"],
            "the latest runs to become Ready, unreachable while traffic is pinned to 00002"
        );
        let mut running = wanted.clone();
        assert_eq!(plan(&wanted, &running), Plan::default());
        running.remove("default/hello-00002");
        if let Some(run) = running.get_mut("default/hello-00003") {
            run.container_concurrency = 9;
        }
        running.insert("default/gone".into(), wanted["default/hello-00002"].clone());
        assert_eq!(
            plan(&wanted, &running),
            Plan {
                start: vec!["default/hello-00002".into(), "default/hello-00003".into()],
                stop: vec!["default/gone".into(), "default/hello-00003".into()],
            }
        );
    }
}
