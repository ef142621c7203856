//! Traffic: which revisions a Route sends its requests to, by weight, and the hosts it is served under.
//!
//! What flows in: the stored objects. What flows out: for a Route (or a Configuration addressed directly) the
//! resolved targets ([`ResolvedTarget`]: revision, percent, tag), or the reason it cannot route yet (Knative's
//! `AllTrafficAssigned` reasons); and the [`RouteTable`] the data plane serves: host → weighted revisions.

use std::collections::BTreeMap;

use serde_json::Value;

use super::model::TrafficTarget;
use super::{CONFIGURATION_GENERATION_LABEL, CONFIGURATION_LABEL, REVISION_STATE_KIND};

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
}

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
    }
}

/// The field of a `RevisionState`'s spec where each node records its own instances of the revision (node id →
/// count; a node at zero has no entry). Each node writes only its own entry, so a node at zero never hides
/// another's instances, as one shared count did (last writer wins).
pub const INSTANCES_BY_NODE_FIELD: &str = "instancesByNode";

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

/// `(latestCreatedRevisionName, latestReadyRevisionName)` of a Configuration.
pub fn latest_revisions(objects: &[Value], namespace: &str, configuration: &str) -> (Option<String>, Option<String>) {
    let revisions = revisions_of(objects, namespace, configuration);
    let name = |r: &&Value| str_at(r, "/metadata/name").to_string();
    let created = revisions.last().map(name);
    let ready = revisions.iter().rev().find(|r| revision_facts(objects, namespace, &name(r)).ready).map(name);
    (created, ready)
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
    /// A Configuration it names has no ready Revision yet (Knative reports Unknown, not False).
    pub waiting: bool,
}

fn missing(reason: &str, message: String) -> TrafficError {
    TrafficError { reason: reason.into(), message, waiting: false }
}

/// The Route's targets with revision names filled in, or why it cannot route.
pub fn resolve_traffic(
    objects: &[Value],
    namespace: &str,
    traffic: &[TrafficTarget],
) -> Result<Vec<ResolvedTarget>, TrafficError> {
    let mut resolved = Vec::with_capacity(traffic.len());
    for target in traffic {
        let percent = target.percent.unwrap_or(0).clamp(0, 100) as u32;
        let (revision, latest) = match (&target.revision_name, &target.configuration_name) {
            (Some(revision), _) => {
                if find(objects, "Revision", namespace, revision).is_none() {
                    return Err(missing(
                        "RevisionMissing",
                        format!("Revision {revision:?} referenced in traffic not found."),
                    ));
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
                match latest_revisions(objects, namespace, configuration).1 {
                    Some(ready) => (ready, true),
                    None => {
                        return Err(TrafficError {
                            reason: "RevisionMissing".into(),
                            message: format!("Configuration {configuration:?} does not have any ready Revision."),
                            waiting: true,
                        });
                    }
                }
            }
            (None, None) => return Err(missing("TrafficInvalid", "a traffic target names no revision".into())),
        };
        resolved.push(ResolvedTarget {
            tag: target.tag.clone(),
            revision,
            configuration: target.configuration_name.clone(),
            latest_revision: latest,
            percent,
        });
    }
    Ok(resolved)
}

/// The Route's (or Service's) traffic as written, with Knative's default: 100 % to the latest revision of the
/// Configuration of the same name.
pub fn spec_traffic(object: &Value, configuration: &str) -> Vec<TrafficTarget> {
    let traffic: Option<Vec<TrafficTarget>> =
        object.pointer("/spec/traffic").and_then(|t| serde_json::from_value(t.clone()).ok());
    match traffic {
        Some(traffic) if !traffic.is_empty() => traffic,
        _ if str_at(object, "/kind") == "Route" => Vec::new(),
        _ => vec![TrafficTarget {
            configuration_name: Some(configuration.to_string()),
            latest_revision: Some(true),
            percent: Some(100),
            ..TrafficTarget::default()
        }],
    }
}

/// `NAME.NAMESPACE.DOMAIN`.
pub fn host(name: &str, namespace: &str, domain: &str) -> String {
    format!("{name}.{namespace}.{domain}")
}

/// `TAG-NAME.NAMESPACE.DOMAIN`.
pub fn tag_host(tag: &str, name: &str, namespace: &str, domain: &str) -> String {
    format!("{tag}-{name}.{namespace}.{domain}")
}

/// Where one host's requests go: revisions and their weights (percent; zero-weight targets are left out).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostTargets {
    pub namespace: String,
    /// The Route (or Configuration) served.
    pub name: String,
    pub targets: Vec<(String, u32)>,
}

/// Every host served, from the Routes that resolve and from Configurations without a Route of their name.
pub type RouteTable = BTreeMap<String, HostTargets>;

pub fn route_table(objects: &[Value], domain: &str) -> RouteTable {
    let mut table = RouteTable::new();
    for route in objects.iter().filter(|o| str_at(o, "/kind") == "Route") {
        let namespace = str_at(route, "/metadata/namespace");
        let name = str_at(route, "/metadata/name");
        let Ok(targets) = resolve_traffic(objects, namespace, &spec_traffic(route, name)) else { continue };
        let weighted: Vec<(String, u32)> =
            targets.iter().filter(|t| t.percent > 0).map(|t| (t.revision.clone(), t.percent)).collect();
        table.insert(
            host(name, namespace, domain),
            HostTargets { namespace: namespace.into(), name: name.into(), targets: weighted },
        );
        for target in &targets {
            if let Some(tag) = &target.tag {
                table.insert(
                    tag_host(tag, name, namespace, domain),
                    HostTargets {
                        namespace: namespace.into(),
                        name: name.into(),
                        targets: vec![(target.revision.clone(), 100)],
                    },
                );
            }
        }
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
