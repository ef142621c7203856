//! Which entries (of the metadata group and, since format 4, the partitions') a node may propose while nodes of older versions may still be members: each node
//! publishes the newest metadata entry format it reads (`SluiceNode` objects in the metadata group, written
//! with an entry every version reads), and the nodes propose an entry kind only once every current member
//! has published a format that has it. In: the cluster's members and what each published. Out: the format
//! to write in. A node of an older version cannot decode an entry kind added after it, so without this a
//! rolling upgrade stalled the metadata group's writes until a quorum ran the new version.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use super::Node;
use super::signing_keys::SYSTEM_NAMESPACE;
use crate::command::{NodeId, ResourceKey};

/// The kind of the objects in which nodes publish what they are.
pub(crate) const NODE_INFO_KIND: &str = "SluiceNode";

/// The metadata entry formats: before session 36 (`PutResource`, `SetAnnotation`), with the applies that keep
/// what the admin API set (`ApplyResource`, `SetAdminAnnotation`), and with the conditional apply.
pub(crate) const FORMAT_PUT_RESOURCE: u64 = 1;
pub(crate) const FORMAT_APPLY_RESOURCE: u64 = 2;
/// With the conditional apply (`ApplyResourceIfToken`) that cluster-wide leases take (session 37).
pub(crate) const FORMAT_APPLY_IF_TOKEN: u64 = 3;
/// With the conditional offset commit (`CommitOffsetsIf`) that a replay's request takes (session 63).
pub(crate) const FORMAT_COMMIT_OFFSETS_IF: u64 = 4;
/// With the apply conditional on the stored object's version (`ApplyResourceIfVersion`) that the admin API's
/// Apply takes (session 65).
pub(crate) const FORMAT_APPLY_IF_VERSION: u64 = 5;
/// With the offset commit fenced by its dispatcher's term (`CommitOffsetsInTerm`, session 67).
pub(crate) const FORMAT_COMMIT_IN_TERM: u64 = 6;
/// The newest format this version reads and writes.
pub(crate) const LOG_FORMAT: u64 = FORMAT_COMMIT_IN_TERM;

/// How often a node tries to publish its format until it is stored.
const PUBLISH_RETRY: Duration = Duration::from_secs(2);

/// The format every one of `members` reads: the lowest any of them published; a member that published none
/// runs a version from before the formats were published, which reads the first.
pub(crate) fn cluster_log_format(members: impl IntoIterator<Item = NodeId>, published: &BTreeMap<NodeId, u64>) -> u64 {
    members
        .into_iter()
        .map(|member| published.get(&member).copied().unwrap_or(FORMAT_PUT_RESOURCE))
        .min()
        .unwrap_or(FORMAT_PUT_RESOURCE)
        .clamp(FORMAT_PUT_RESOURCE, LOG_FORMAT)
}

fn node_info_key(node: NodeId) -> ResourceKey {
    ResourceKey { kind: NODE_INFO_KIND.into(), namespace: SYSTEM_NAMESPACE.into(), name: format!("node-{node}") }
}

fn node_info(node: NodeId) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": NODE_INFO_KIND,
        "metadata": {"namespace": SYSTEM_NAMESPACE, "name": format!("node-{node}")},
        "spec": {"node": node, "logFormat": LOG_FORMAT},
    })
}

impl Node {
    /// The metadata entry format every current member reads (see the module's doc).
    pub(crate) fn cluster_log_format(&self) -> u64 {
        let Some(config) = self.cluster_config() else { return FORMAT_PUT_RESOURCE };
        let published: BTreeMap<NodeId, u64> = config
            .members
            .keys()
            .filter_map(|member| {
                let object: Value = serde_json::from_str(&self.resource(&node_info_key(*member))?).ok()?;
                Some((*member, object.pointer("/spec/logFormat")?.as_u64()?))
            })
            .collect();
        cluster_log_format(config.members.keys().copied(), &published)
    }

    /// Whether `node` published its format: it held the cluster's config (and so its state) at least once.
    pub(crate) fn has_published(&self, node: NodeId) -> bool {
        self.resource(&node_info_key(node)).is_some()
    }

    fn published_log_format(&self) -> Option<u64> {
        let object: Value = serde_json::from_str(&self.resource(&node_info_key(self.id()))?).ok()?;
        object.pointer("/spec/logFormat")?.as_u64()
    }
}

/// Publishes this node's format once the cluster is initialised (retried until it is stored), and again
/// whenever it is found missing or different (a node restarted on a newer version), until the runtime ends.
pub(crate) async fn run(node: Node) {
    loop {
        if node.cluster_config().is_some() && node.published_log_format() != Some(LOG_FORMAT) {
            // The first format's entry, which a node of any version reads.
            match node.put_internal_object_in_format(&node_info(node.id()), FORMAT_PUT_RESOURCE).await {
                Ok(_) => tracing::info!(log_format = LOG_FORMAT, "published this node's metadata entry format"),
                Err(e) => tracing::debug!(error = %e, "this node's format is not published yet"),
            }
        }
        tokio::time::sleep(PUBLISH_RETRY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_writes_what_its_oldest_member_reads() {
        type Case = (&'static str, Vec<NodeId>, Vec<(NodeId, u64)>, u64);
        let cases: Vec<Case> = vec![
            ("every member published the newest format", vec![1, 2, 3], vec![(1, 3), (2, 3), (3, 3)], 3),
            ("every member published the second format", vec![1, 2, 3], vec![(1, 2), (2, 3), (3, 2)], 2),
            ("one member has not published (an older version)", vec![1, 2, 3], vec![(1, 2), (3, 2)], 1),
            ("one member published the first", vec![1, 2, 3], vec![(1, 2), (2, 1), (3, 2)], 1),
            ("a removed node's publication does not count", vec![1, 2], vec![(1, 2), (2, 2), (3, 1)], 2),
            ("a newer format than this version knows", vec![1, 2], vec![(1, 9), (2, 9)], LOG_FORMAT),
            ("no members (before init)", vec![], vec![], 1),
        ];
        for (case, members, published, expected) in cases {
            let published: BTreeMap<NodeId, u64> = published.into_iter().collect();
            assert_eq!(cluster_log_format(members, &published), expected, "{case}");
        }
    }
}
