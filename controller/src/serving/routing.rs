//! Traffic: which revisions a Route sends its requests to, by weight, and the hosts it is served under.
//!
//! What flows in: the stored objects. What flows out: for a Route (or a Configuration addressed directly) the
//! resolved targets ([`ResolvedTarget`]: revision, percent, tag), or the reason it cannot route yet (Knative's
//! `AllTrafficAssigned` reasons); and the [`RouteTable`] the data plane serves: host → weighted revisions.

use serde_json::Value;

use super::model::TrafficTarget;
pub use super::model::spec_traffic;
use super::rollout::{ReadyRevision, RolloutClock};
use super::{
    CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, LEGACY_VISIBILITY_LABEL, REVISION_STATE_KIND, VISIBILITY_LABEL,
};

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// The object of `kind` named `namespace/name`.
pub(crate) fn find<'a>(objects: &'a [Value], kind: &str, namespace: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| {
        str_at(o, "/kind") == kind
            && str_at(o, "/metadata/namespace") == namespace
            && str_at(o, "/metadata/name") == name
    })
}

/// What the runtime recorded about a Revision.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RevisionFacts {
    /// An instance became ready at least once (Knative's Revision stays Ready at zero).
    pub ready: bool,
    /// Why the last instance failed, when it did: `(reason, message)`.
    pub failure: Option<(String, String)>,
    /// Instances running now over every node, as each node last recorded its own
    /// ([`instances_over_nodes`]).
    pub instances: u32,
    /// Of them, ready (in rotation), over every node ([`READY_INSTANCES_BY_NODE_FIELD`]).
    pub ready_instances: u32,
    /// When it first became ready (wall clock, ms; [`READY_AT_FIELD`]); `None` when that was not recorded
    /// (ready before a version that records it).
    pub ready_at_ms: Option<u64>,
}

/// The field of a `RevisionState`'s spec with the wall-clock time (ms) the Revision first became ready: where
/// its rollout starts ([`super::rollout`]).
pub const READY_AT_FIELD: &str = "readyAtMs";

/// The facts recorded for a Revision (none yet: nothing known). Facts recorded for another Revision of the
/// same name (deleted and made again, its state not collected yet: `spec.revisionUid` differs) are not its.
pub fn revision_facts(objects: &[Value], namespace: &str, revision: &str) -> RevisionFacts {
    let Some(state) = find(objects, REVISION_STATE_KIND, namespace, revision) else { return RevisionFacts::default() };
    let recorded_for = str_at(state, "/spec/revisionUid");
    let uid = find(objects, "Revision", namespace, revision).map(|r| str_at(r, "/metadata/uid")).unwrap_or_default();
    if !recorded_for.is_empty() && !uid.is_empty() && recorded_for != uid {
        return RevisionFacts::default();
    }
    let failure = match state.pointer("/spec/failureReason").and_then(Value::as_str) {
        Some(reason) if !reason.is_empty() => {
            Some((reason.to_string(), str_at(state, "/spec/failureMessage").to_string()))
        }
        _ => None,
    };
    RevisionFacts {
        ready: state.pointer("/spec/ready").and_then(Value::as_bool).unwrap_or(false),
        failure,
        instances: state.get("spec").map_or(0, instances_over_nodes),
        ready_instances: state.get("spec").map_or(0, ready_instances_over_nodes),
        ready_at_ms: state.pointer("/spec").and_then(|spec| spec.get(READY_AT_FIELD)).and_then(Value::as_u64),
    }
}

/// The field of a `RevisionState`'s spec where each node records its own instances of the revision (node id →
/// count; a node at zero has no entry). Each node writes only its own entry, so a node at zero never hides
/// another's instances, as one shared count did (last writer wins).
pub const INSTANCES_BY_NODE_FIELD: &str = "instancesByNode";

/// The field of a `RevisionState`'s spec where each node records its ready instances of the revision (node id →
/// count; absent while no node has one, and in states written before session 63).
pub const READY_INSTANCES_BY_NODE_FIELD: &str = "readyInstancesByNode";

/// A revision's ready instances over every node: the sum of `spec.readyInstancesByNode`.
pub fn ready_instances_over_nodes(spec: &Value) -> u32 {
    let count = |value: &Value| value.as_u64().map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    spec.get(READY_INSTANCES_BY_NODE_FIELD)
        .and_then(Value::as_object)
        .map_or(0, |by_node| by_node.values().fold(0u32, |sum, n| sum.saturating_add(count(n))))
}

/// A revision's instances over every node: the sum of `spec.instancesByNode`; a state written before there was
/// one (by an older version) has its single `spec.instances`.
pub fn instances_over_nodes(spec: &Value) -> u32 {
    let count = |value: &Value| value.as_u64().map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX));
    match spec.get(INSTANCES_BY_NODE_FIELD).and_then(Value::as_object) {
        Some(by_node) => by_node.values().fold(0u32, |sum, n| sum.saturating_add(count(n))),
        None => spec.get("instances").map_or(0, count),
    }
}

/// The Revisions a Configuration made, oldest generation first.
pub fn revisions_of<'a>(objects: &'a [Value], namespace: &str, configuration: &str) -> Vec<&'a Value> {
    let mut revisions: Vec<&Value> = objects
        .iter()
        .filter(|o| str_at(o, "/kind") == "Revision" && str_at(o, "/metadata/namespace") == namespace)
        .filter(|o| {
            o.pointer("/metadata/labels").and_then(|l| l.get(CONFIGURATION_LABEL)).and_then(Value::as_str)
                == Some(configuration)
        })
        .collect();
    revisions.sort_by_key(|r| {
        let generation = r
            .pointer("/metadata/labels")
            .and_then(|l| l.get(CONFIGURATION_GENERATION_LABEL))
            .and_then(Value::as_str)
            .and_then(|g| g.parse::<i64>().ok())
            .unwrap_or(0);
        (generation, str_at(r, "/metadata/name").to_string())
    });
    revisions
}

/// `(latestCreatedRevisionName, latestReadyRevisionName)` of a Configuration: the Revision of its newest
/// generation, or the one its template names when this Configuration made it from this template already (a
/// rollback to an earlier template name makes nothing new); the latest ready is the latest created when it is
/// ready, else the newest ready one.
pub fn latest_revisions(objects: &[Value], namespace: &str, configuration: &str) -> (Option<String>, Option<String>) {
    let revisions = revisions_of(objects, namespace, configuration);
    let name = |r: &&Value| str_at(r, "/metadata/name").to_string();
    let newest_ready = revisions.iter().rev().find(|r| revision_facts(objects, namespace, &name(r)).ready).map(name);
    // Knative's `latestCreatedRevision` looks the template's name up before the generation label: after
    // `svc-v1`, `svc-v2` and `svc-v1` again, `svc-v1` (not made again: Revisions are immutable) is the latest,
    // though its generation label is older; by the label, `svc-v1` stayed "being created" for ever and the
    // traffic stayed on `svc-v2`.
    match named_by_template(objects, namespace, configuration, &revisions) {
        Some(named) => {
            let named = name(&named);
            let named_ready = revision_facts(objects, namespace, &named).ready;
            let ready = if named_ready { Some(named.clone()) } else { newest_ready };
            (Some(named), ready)
        }
        None => (revisions.last().map(name), newest_ready),
    }
}

/// The Revision the Configuration's template names, when the Configuration made it from this very template
/// (owned by it, the same spec). A Revision of that name made otherwise is a name collision, which the
/// Configuration's status reports; it is not the latest.
fn named_by_template<'a>(
    objects: &[Value],
    namespace: &str,
    configuration: &str,
    revisions: &[&'a Value],
) -> Option<&'a Value> {
    let owner = find(objects, "Configuration", namespace, configuration)?;
    let template = owner.pointer("/spec/template")?;
    let named = str_at(template, "/metadata/name");
    if named.is_empty() {
        return None;
    }
    revisions
        .iter()
        .copied()
        .find(|revision| str_at(revision, "/metadata/name") == named)
        .filter(|revision| super::children::made_from_template(revision, owner))
}

/// One resolved traffic target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedTarget {
    pub tag: Option<String>,
    pub revision: String,
    pub configuration: Option<String>,
    pub latest_revision: bool,
    pub percent: u32,
}

/// Why a Route cannot route (yet).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrafficError {
    pub reason: String,
    pub message: String,
    /// It may still resolve by itself: a Configuration it names has no ready Revision yet and its latest
    /// created one has not failed, or a Revision it pins is not ready yet and has not failed (Knative reports
    /// Unknown, not False).
    pub waiting: bool,
    /// A Revision it pins exists and is not ready (yet, or it failed): the Route's URL stays the Service's, and
    /// its data plane goes on with its last good routing meanwhile.
    pub pinned_unready: bool,
    /// The Configuration it names that has no ready Revision, when that is why: its status may know more about
    /// why (a latest created Revision the runtime cannot run makes its Ready False: Knative's Route is then
    /// False too, `Configuration "X" does not have any ready Revision.`).
    pub unready_configuration: Option<String>,
}

fn missing(reason: &str, message: String) -> TrafficError {
    TrafficError { reason: reason.into(), message, waiting: false, pinned_unready: false, unready_configuration: None }
}

/// Knative's `AllTrafficAssigned` for a Route to a Configuration with no ready Revision (`MarkConfigurationFailed`
/// and `MarkConfigurationNotReady`): False once the Configuration's Ready is False (its latest created Revision
/// failed), else Unknown while it waits for one to become ready.
pub fn unready_configuration(configuration: &str, failed: bool) -> TrafficError {
    let message = if failed {
        format!("Configuration {configuration:?} does not have any ready Revision.")
    } else {
        format!("Configuration {configuration:?} is waiting for a Revision to become ready.")
    };
    TrafficError {
        reason: "RevisionMissing".into(),
        message,
        waiting: !failed,
        pinned_unready: false,
        unready_configuration: Some(configuration.to_string()),
    }
}

/// The Route's targets with revision names filled in, or why it cannot route: as Knative's traffic builder,
/// the first target that does not resolve, unless a later one failed where it only waits (a failure does not
/// go away by waiting, so the Route says False).
pub fn resolve_traffic(
    objects: &[Value],
    namespace: &str,
    traffic: &[TrafficTarget],
) -> Result<Vec<ResolvedTarget>, TrafficError> {
    let mut resolved = Vec::with_capacity(traffic.len());
    let mut refused: Option<TrafficError> = None;
    for target in traffic {
        match resolve_target(objects, namespace, target) {
            Ok(target) => resolved.push(target),
            Err(error) => {
                if refused.as_ref().is_none_or(|first| first.waiting && !error.waiting) {
                    refused = Some(error);
                }
            }
        }
    }
    match refused {
        Some(error) => Err(error),
        None => Ok(resolved),
    }
}

/// The targets a Route whose traffic does not resolve can still serve: those that resolve, when every target
/// that does not carries no traffic (0 %, with or without a tag). A canary pinned at 0 % that failed, or one
/// not ready yet, then takes nothing from the others (its tag's host is not served); a target with a share that
/// does not resolve leaves the Route to its last good routing.
pub fn servable_targets(objects: &[Value], namespace: &str, traffic: &[TrafficTarget]) -> Option<Vec<ResolvedTarget>> {
    let mut servable = Vec::with_capacity(traffic.len());
    for target in traffic {
        match resolve_target(objects, namespace, target) {
            Ok(resolved) => servable.push(resolved),
            Err(_) if target.percent.unwrap_or(0) <= 0 => {}
            Err(_) => return None,
        }
    }
    Some(servable)
}

fn resolve_target(objects: &[Value], namespace: &str, target: &TrafficTarget) -> Result<ResolvedTarget, TrafficError> {
    let percent = target.percent.unwrap_or(0).clamp(0, 100) as u32;
    let (revision, latest) = match (&target.revision_name, &target.configuration_name) {
        (Some(revision), _) => {
            if find(objects, "Revision", namespace, revision).is_none() {
                return Err(missing(
                    "RevisionMissing",
                    format!("Revision {revision:?} referenced in traffic not found."),
                ));
            }
            // Knative's `errUnreadyRevision`: a pinned Revision gets its share once it is ready, not before (its
            // requests would wait for a start, or get 503 for good from one that failed). Unknown while it may
            // still become ready, False once it failed.
            let facts = revision_facts(objects, namespace, revision);
            if !facts.ready {
                let failed = facts.failure.is_some();
                let message = if failed {
                    format!("Revision {revision:?} failed to become ready.")
                } else {
                    format!("Revision {revision:?} is not yet ready.")
                };
                return Err(TrafficError {
                    reason: "RevisionMissing".into(),
                    message,
                    waiting: !failed,
                    pinned_unready: true,
                    unready_configuration: None,
                });
            }
            (revision.clone(), false)
        }
        (None, Some(configuration)) => {
            if find(objects, "Configuration", namespace, configuration).is_none() {
                return Err(missing(
                    "ConfigurationMissing",
                    format!("Configuration {configuration:?} referenced in traffic not found."),
                ));
            }
            match latest_revisions(objects, namespace, configuration) {
                (_, Some(ready)) => (ready, true),
                // No ready Revision: the Configuration's Ready is False when its latest created one failed
                // (`routing` sees the runtime's facts; the Route's status also asks the Configuration's, which
                // knows what the node's runtime cannot run).
                (created, None) => {
                    let failed = |revision: String| revision_facts(objects, namespace, &revision).failure.is_some();
                    return Err(unready_configuration(configuration, created.is_some_and(failed)));
                }
            }
        }
        (None, None) => return Err(missing("TrafficInvalid", "a traffic target names no revision".into())),
    };
    Ok(ResolvedTarget {
        tag: target.tag.clone(),
        revision,
        configuration: target.configuration_name.clone(),
        latest_revision: latest,
        percent,
    })
}

/// `NAME.NAMESPACE.DOMAIN`.
pub fn host(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.{domain}")
}

/// `TAG-NAME.NAMESPACE.DOMAIN`.
pub fn tag_host(tag: &str, name: &str, namespace: &str, domain: &str) -> String {
    format!("{tag}-{name}.{namespace}.{domain}")
}

/// The domain of the cluster's own names: every Route is served under `NAME.NAMESPACE.svc.cluster.local` too,
/// as Knative's cluster-local gateway serves it.
pub const CLUSTER_LOCAL_DOMAIN: &str = "svc.cluster.local";

/// Whether `host` is a name under the cluster's own domain (`NAME.NAMESPACE.svc.cluster.local`), not the domain.
pub fn is_cluster_local(host: &str) -> bool {
    host.strip_suffix(CLUSTER_LOCAL_DOMAIN).is_some_and(|head| head.ends_with('.'))
}

/// Who may reach a Route: everyone under the serving domain, or only by the cluster's own names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Visibility {
    Public,
    /// `networking.knative.dev/visibility: cluster-local`: served only under [`CLUSTER_LOCAL_DOMAIN`].
    ClusterLocal,
}

/// The visibility a Route (or Service) asks for by its labels; any value but `cluster-local` is public, as in
/// Knative.
pub fn visibility(object: &Value) -> Visibility {
    let labels = object.pointer("/metadata/labels");
    let label = |name: &str| labels.and_then(|l| l.get(name)).and_then(Value::as_str);
    match label(VISIBILITY_LABEL).or_else(|| label(LEGACY_VISIBILITY_LABEL)) {
        Some("cluster-local") => Visibility::ClusterLocal,
        _ => Visibility::Public,
    }
}

/// The host a Route is known by (its `status.url`): under the serving domain, or the cluster's own when it is
/// cluster-local.
pub fn main_host(name: &str, namespace: &str, domain: &str, visibility: Visibility) -> String {
    match visibility {
        Visibility::Public => host(name, namespace, domain),
        Visibility::ClusterLocal => host(name, namespace, CLUSTER_LOCAL_DOMAIN),
    }
}

/// The host a Route's `tag` is known by, as [`main_host`].
pub fn main_tag_host(tag: &str, name: &str, namespace: &str, domain: &str, visibility: Visibility) -> String {
    match visibility {
        Visibility::Public => tag_host(tag, name, namespace, domain),
        Visibility::ClusterLocal => tag_host(tag, name, namespace, CLUSTER_LOCAL_DOMAIN),
    }
}

/// The domains a Route of `visibility` is served under: the serving domain unless it is cluster-local, and the
/// cluster's own always.
fn served_domains(domain: &str, visibility: Visibility) -> Vec<&str> {
    match visibility {
        Visibility::Public if domain != CLUSTER_LOCAL_DOMAIN => vec![domain, CLUSTER_LOCAL_DOMAIN],
        _ => vec![CLUSTER_LOCAL_DOMAIN],
    }
}

pub use crate::world::{HostTargets, RouteTable};

/// The hosts a Route whose traffic resolved to `targets` serves, each with where its requests go: its own host
/// with the weighted split (zero-weight targets left out), and one host per tag with all of that tag's requests;
/// each under every domain its `visibility` is served under ([`served_domains`]), its main host first.
pub fn route_hosts(
    namespace: &str,
    name: &str,
    domain: &str,
    visibility: Visibility,
    targets: &[ResolvedTarget],
) -> Vec<(String, HostTargets)> {
    let served = |targets| HostTargets { namespace: namespace.into(), name: name.into(), targets };
    let domains = served_domains(domain, visibility);
    let weighted: Vec<(String, u32)> =
        targets.iter().filter(|t| t.percent > 0).map(|t| (t.revision.clone(), t.percent)).collect();
    let mut hosts: Vec<(String, HostTargets)> =
        domains.iter().map(|domain| (host(name, namespace, domain), served(weighted.clone()))).collect();
    let mut tags: Vec<&str> = Vec::new();
    for tag in targets.iter().filter_map(|t| t.tag.as_deref()) {
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    for tag in tags {
        let tagged: Vec<&ResolvedTarget> = targets.iter().filter(|t| t.tag.as_deref() == Some(tag)).collect();
        // One target: all of the tag's requests. A tagged target split by its rollout: the split.
        let split = match tagged.as_slice() {
            [one] => vec![(one.revision.clone(), 100)],
            several => several.iter().map(|t| (t.revision.clone(), t.percent)).collect(),
        };
        hosts.extend(domains.iter().map(|domain| (tag_host(tag, name, namespace, domain), served(split.clone()))));
    }
    hosts
}

/// The hosts served now. `previous`: the table served until now (empty when there is none, as for status,
/// computed on read): a Route whose traffic does not resolve now (a misspelt `revisionName`, a Revision not
/// made or not ready yet, a Configuration with no ready Revision) keeps the hosts it had there, main and tags,
/// as they were: Knative's Route reconciler leaves the ingress as it is until every target resolves, so the
/// last good routing keeps serving (dropping its hosts answered every request 404).
/// Targets to a Configuration's latest Revision are split by its rollout as `clock` says ([`rolled_out`]).
pub fn route_table(objects: &[Value], domain: &str, previous: &RouteTable, clock: RolloutClock) -> RouteTable {
    let mut table = RouteTable::new();
    let mut kept: Vec<(&String, &HostTargets)> = Vec::new();
    for route in objects.iter().filter(|o| str_at(o, "/kind") == "Route") {
        let namespace = str_at(route, "/metadata/namespace");
        let name = str_at(route, "/metadata/name");
        let traffic = spec_traffic(route, name);
        let targets = match resolve_traffic(objects, namespace, &traffic) {
            Ok(targets) => targets,
            Err(_) => match servable_targets(objects, namespace, &traffic) {
                Some(targets) => targets,
                None => {
                    kept.extend(
                        previous.iter().filter(|(_, served)| served.namespace == namespace && served.name == name),
                    );
                    continue;
                }
            },
        };
        let targets = rolled_out(objects, route, targets, clock).targets;
        table.extend(route_hosts(namespace, name, domain, visibility(route), &targets));
    }
    // After every Route that resolves: a host one of them serves now is its.
    for (served_host, served) in kept {
        table.entry(served_host.clone()).or_insert_with(|| served.clone());
    }
    for configuration in objects.iter().filter(|o| str_at(o, "/kind") == "Configuration") {
        let namespace = str_at(configuration, "/metadata/namespace");
        let name = str_at(configuration, "/metadata/name");
        let host = host(name, namespace, domain);
        if table.contains_key(&host) || find(objects, "Route", namespace, name).is_some() {
            continue;
        }
        if let Some(ready) = latest_revisions(objects, namespace, name).1 {
            table.insert(
                host,
                HostTargets { namespace: namespace.into(), name: name.into(), targets: vec![(ready, 100)] },
            );
        }
    }
    table
}

/// A Route's resolved targets with each one to a Configuration's latest ready Revision split by that
/// Configuration's rollout as `clock` says (over the Route's `serving.knative.dev/rollout-duration`, else the
/// clock's default; 0: not split), newest first, each part keeping the target's tag; and when the split next
/// changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolledOut {
    pub targets: Vec<ResolvedTarget>,
    /// Wall clock, ms; `None`: no rollout is under way.
    pub next_change_at_ms: Option<u64>,
}

/// See [`RolledOut`]. A Revision whose ready time was not recorded counts as ready long ago.
pub fn rolled_out(objects: &[Value], route: &Value, targets: Vec<ResolvedTarget>, clock: RolloutClock) -> RolledOut {
    let duration_ms = super::rollout::duration_ms(route, clock.default_duration_ms);
    if duration_ms == 0 {
        return RolledOut { targets, next_change_at_ms: None };
    }
    let namespace = str_at(route, "/metadata/namespace");
    let mut rolled = RolledOut::default();
    for target in targets {
        let Some(configuration) = target.configuration.clone().filter(|_| target.latest_revision && target.percent > 1)
        else {
            rolled.targets.push(target);
            continue;
        };
        let ready: Vec<ReadyRevision> = revisions_of(objects, namespace, &configuration)
            .into_iter()
            .map(|r| str_at(r, "/metadata/name"))
            .filter_map(|name| {
                let facts = revision_facts(objects, namespace, name);
                facts
                    .ready
                    .then(|| ReadyRevision { name: name.to_string(), ready_at_ms: facts.ready_at_ms.unwrap_or(0) })
            })
            .collect();
        let Some(latest) = ready.iter().find(|r| r.name == target.revision).cloned() else {
            rolled.targets.push(target);
            continue;
        };
        let split = super::rollout::split(target.percent, &latest, &ready, duration_ms, clock.now_ms);
        if let Some(at) = split.next_change_at_ms {
            rolled.next_change_at_ms = Some(rolled.next_change_at_ms.map_or(at, |next| next.min(at)));
        }
        rolled.targets.extend(split.shares.into_iter().map(|(revision, percent)| ResolvedTarget {
            revision,
            percent,
            ..target.clone()
        }));
    }
    rolled
}

/// The Routes whose rollout is under way now (`namespace/name`), each with when its split next changes (wall
/// clock, ms): the data plane's table is due again at the earliest of them.
pub fn rollouts_under_way(objects: &[Value], clock: RolloutClock) -> Vec<(String, u64)> {
    objects
        .iter()
        .filter(|o| str_at(o, "/kind") == "Route")
        .filter_map(|route| {
            let (namespace, name) = (str_at(route, "/metadata/namespace"), str_at(route, "/metadata/name"));
            let traffic = spec_traffic(route, name);
            let targets = resolve_traffic(objects, namespace, &traffic)
                .ok()
                .or_else(|| servable_targets(objects, namespace, &traffic))?;
            let next = rolled_out(objects, route, targets, clock).next_change_at_ms?;
            Some((format!("{namespace}/{name}"), next))
        })
        .collect()
}
