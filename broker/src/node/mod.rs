//! A Sluice node: the store, the metadata group, the partition groups of the
//! cluster config, and the write/read API the servers and later crates use.

mod handover;
pub use handover::{Handover, TransferOver};
pub(crate) mod leader_balance;
pub(crate) mod log_format;
pub(crate) mod membership;
use crate::command::cluster_config::JoinAsk;
pub(crate) mod publish;
mod reads;
pub(crate) mod retention;
pub(crate) mod signing_keys;
mod status;
mod writes;

pub(crate) use status::GroupStatus;
pub(crate) use writes::validate_stream_name;

use membership::{belongs, watch_cluster_config};
use status::watch_group_leadership;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::{ChangeMembershipError, ClientWriteError};
use openraft::{BasicNode, ChangeMembers};
use sluice_controller::serving::routing::RouteTable;
use tokio::sync::watch;

use crate::command::cluster_config::ClusterConfig;
use crate::command::forward::{ForwardedReply, ForwardedWrite, MembershipOp, MembershipOutcome, WriteFailure};
use crate::command::{GroupId, LogCommand, LogResponse, METADATA_GROUP, NodeId, group_name, partition_group};
use crate::error::BrokerError;
use crate::raft::append_batcher::AppendLimits;
use crate::raft::group::{Group, RaftTuning};
use crate::store::AppliedConfig;
use crate::store::Store;
use crate::transport::client::PeerClients;

/// Bounds of one read.
#[derive(Clone, Debug)]
pub struct ReadLimits {
    pub max_records: usize,
    pub max_bytes: usize,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self { max_records: 10_000, max_bytes: 16 << 20 }
    }
}

#[derive(Clone, Debug)]
pub struct NodeSettings {
    pub node_id: NodeId,
    pub data_dir: PathBuf,
    pub tuning: RaftTuning,
    pub append_limits: AppendLimits,
    pub read_limits: ReadLimits,
    /// How often the leader of a partition applies retention.
    pub retention_check_interval: Duration,
    /// How long past its dedupe window a stream with no new event keeps the window in memory (rebuilt from
    /// disk at its next event; docs/ingress.md, "Dedupe").
    pub dedupe_idle_grace: Duration,
    /// How often the node checks whether it leads more partitions than its share (`node/leader_balance.rs`);
    /// None: never moves leadership on its own.
    pub leader_balance_interval: Option<Duration>,
    /// `--peer-route`: dial a peer advertised as the key at the value instead.
    pub peer_routes: BTreeMap<String, String>,
    /// The rollout duration of a Route without `serving.knative.dev/rollout-duration` (status shows the split the
    /// data plane serves).
    pub serving_rollout_default_ms: u64,
    /// Knative Routes are served (and their URLs given) as `NAME.NAMESPACE.DOMAIN` on the HTTP port.
    pub serving_domain: String,
    /// What runs revisions (what a Revision needs to be runnable, for its status).
    pub serving_runtime: sluice_controller::serving::ServingRuntime,
    /// What a revision may ask for on this cluster: Knative's feature flags enabled (`--serving-feature`), the
    /// longest timeout, and the autoscaling defaults its annotations are validated over (`--autoscaler`).
    pub serving_features: sluice_controller::serving::ServingFeatures,
    /// Transport encryption: the node's certificate, key and CA, when the mode is not `disabled`. The Raft
    /// transport then dials and accepts mutual TLS only.
    pub tls: Option<sluice_security::Tls>,
    /// Sender identity (Knative's `authentication-oidc`): when set, ingress requires a bearer JWT of a trusted
    /// issuer for the Broker's or Channel's audience.
    pub authenticator: Option<sluice_security::Authenticator>,
    /// What a Broker or Channel without an EventPolicy lets in (with sender identity on).
    pub default_authorization: sluice_controller::policy::DefaultAuthorization,
    /// Admin API authentication: `Some` requires a token of these or a client certificate of the cluster's
    /// CA for every call, by role; `None` leaves the admin port open (bind it to loopback then).
    pub admin_tokens: Option<sluice_security::admin_auth::AdminTokens>,
    /// Sluice as the OIDC issuer of its own deliveries: the issuer URL and how keys and tokens live.
    pub sender_identity: signing_keys::SenderIdentity,
    /// What ingress holds an event's attributes to (the header limits less a delivery's own headers); a
    /// Trigger's reply is held to the same before it is stored.
    pub event_attribute_limits: crate::cloudevent::AttributeLimits,
}

/// How long a leader waits for a new learner to catch up before it answers
/// "still catching up" (below the forward RPC's timeout; the caller asks again).
const LEARNER_WAIT: Duration = Duration::from_secs(5);
/// Membership changes one node runs or holds waiting at once; more are refused (retryable).
const MEMBERSHIP_QUEUE: usize = 8;

/// How long `cluster add-node` / `remove-node` keep trying one group.
const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(180);
/// How long a removal waits for the removed node to hold the entry that tells it so.
const REMOVAL_NOTICE_WAIT: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct Node {
    inner: Arc<NodeInner>,
}

struct NodeInner {
    settings: NodeSettings,
    store: Store,
    peers: PeerClients,
    groups: RwLock<HashMap<GroupId, Arc<Group>>>,
    /// Serialises group creation (never held by readers).
    creating: tokio::sync::Mutex<()>,
    /// Serialises `cluster add-node` / `remove-node` run by this node: a
    /// client that repeats a change after a timeout waits for the first one
    /// to finish instead of racing it.
    membership_changes: Arc<tokio::sync::Mutex<()>>,
    /// Bounds the changes running or waiting on this node.
    membership_queue: Arc<tokio::sync::Semaphore>,
    /// Set when this node was removed from the cluster (`cluster remove-node`):
    /// its partition groups are stopped.
    removed: std::sync::atomic::AtomicBool,
    /// True once the node is shutting down: long-lived streams (admin Tail and Watch, peers' replication and
    /// forwarding) end then, rather than holding the servers' graceful stop to its timeout.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Bumped whenever a group starts or changes leader or server state, so
    /// that components that act only where this node leads (the dispatcher)
    /// re-check without polling every group.
    leadership: Arc<watch::Sender<u64>>,
    /// Mints the tokens of this node's deliveries (`signing_keys` keeps its key current).
    sender_tokens: sluice_security::SenderTokens,
    /// When each peer last handed this node a group's leadership (`leader_balance` gives none back for a
    /// while: a node handing its leaderships away before it stops must not be refilled).
    handovers_from: std::sync::Mutex<BTreeMap<NodeId, std::time::Instant>>,
    /// Where planned transfers of a partition's leadership are announced (`handover`): the dispatcher.
    handover: std::sync::Mutex<Option<tokio::sync::mpsc::Sender<handover::Handover>>>,
    /// The hosts this node's serving data plane serves now (`None` until serving installs its first table):
    /// Routes' `IngressReady` is judged against it.
    served_routes: RwLock<Option<Arc<RouteTable>>>,
}

impl Node {
    /// Opens the data dir and starts the metadata group and, if the cluster
    /// is initialised, the partition groups.
    pub async fn open(settings: NodeSettings) -> Result<Node, BrokerError> {
        claim_data_dir(&settings.data_dir, settings.node_id)?;
        let store = Store::open(&settings.data_dir)?.with_dedupe_idle_grace(settings.dedupe_idle_grace);
        let peers = PeerClients::new(settings.peer_routes.clone(), settings.tls.clone());
        let sender_tokens = signing_keys::tokens_for(&settings.sender_identity, "http://127.0.0.1");
        let node = Node {
            inner: Arc::new(NodeInner {
                sender_tokens,
                settings,
                store,
                peers,
                groups: RwLock::new(HashMap::new()),
                creating: tokio::sync::Mutex::new(()),
                membership_changes: Arc::new(tokio::sync::Mutex::new(())),
                membership_queue: Arc::new(tokio::sync::Semaphore::new(MEMBERSHIP_QUEUE)),
                removed: std::sync::atomic::AtomicBool::new(false),
                stopping: tokio::sync::watch::Sender::new(false),
                handovers_from: Default::default(),
                handover: Default::default(),
                served_routes: RwLock::new(None),
                leadership: Arc::new(watch::Sender::new(0)),
            }),
        };
        let metadata = node.start_group(METADATA_GROUP).await?;
        let mut was_member = false;
        if let Some(applied) = metadata.view.watch_cluster_config().borrow().clone() {
            let config = &applied.config;
            // The metrics show the membership of the log only once the group's core runs: wait for it
            // (bounded). A node with a config has one (the initial membership precedes `cluster init`).
            let loaded = metadata
                .raft
                .wait(Some(Duration::from_secs(10)))
                .metrics(|m| m.membership_config.log_id().is_some(), "metadata membership loaded")
                .await;
            if let Err(e) = loaded {
                tracing::warn!(error = %e, "the metadata membership did not load; deciding without it");
            }
            let membership = metadata.raft.metrics().borrow_watched().membership_config.clone();
            // A node being added is in a metadata membership newer than its last removal from the member
            // list before the list names it (`cluster add-node` records it last): it may restart meanwhile.
            was_member = belongs(&applied, &membership, node.id());
            if !was_member {
                // Stop the group first, so that nothing logs after the error.
                let _ = metadata.raft.shutdown().await;
                return Err(BrokerError::NotAMember(format!(
                    "node id {} is not a member of the cluster stored in {} (members: {}; a node removed with `cluster remove-node` cannot rejoin with its old data); start with one of those ids, or use a new --data dir",
                    node.id(),
                    node.inner.settings.data_dir.display(),
                    config.member_ids()
                )));
            }
            node.ensure_partitions(&applied).await?;
        }
        tokio::spawn(watch_cluster_config(node.clone(), metadata.view.watch_cluster_config(), was_member));
        Ok(node)
    }

    pub fn id(&self) -> NodeId {
        self.inner.settings.node_id
    }

    /// What status is computed against on this node: its ingress at `ingress_base` (`http://IP:PORT`), also
    /// as `https://` with the CA when transport encryption is on, its serving domain and runtime.
    pub fn status_environment(&self, ingress_base: &str) -> sluice_controller::status::Environment {
        let settings = &self.inner.settings;
        let https = settings.tls.as_ref().map(|tls| sluice_controller::status::HttpsIngress {
            base: ingress_base.replacen("http://", "https://", 1),
            ca_certs: tls.ca_pem(),
            plaintext_too: tls.mode().accepts_plaintext(),
        });
        sluice_controller::status::Environment::with_domain(ingress_base, &settings.serving_domain)
            .with_rollout_default_ms(settings.serving_rollout_default_ms)
            .with_runtime(settings.serving_runtime)
            .with_autoscaler_defaults(settings.serving_features.autoscaler_defaults().clone())
            .with_https(https)
            .with_audiences(settings.authenticator.is_some())
            .with_default_authorization(settings.default_authorization)
            .with_served_routes(self.inner.served_routes.read().ok().and_then(|table| table.clone()))
    }

    /// Tells status which hosts the node's serving data plane serves from now on (its supervisor calls this
    /// right after installing `table`, so a Route is never `IngressReady` before requests follow it).
    pub fn serve_routes(&self, table: Arc<RouteTable>) {
        if let Ok(mut served) = self.inner.served_routes.write() {
            *served = Some(table);
        }
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.inner.settings
    }

    /// Mints the bearer tokens this node's deliveries carry (Sluice as the OIDC issuer of its senders).
    pub fn sender_tokens(&self) -> &sluice_security::SenderTokens {
        &self.inner.sender_tokens
    }

    /// The issuer's key set now: every node's published signing keys that have not expired.
    pub fn sender_jwks(&self) -> serde_json::Value {
        signing_keys::published_jwks(self, sluice_cloudevent::clock::now_ms())
    }

    /// Every `interval`, publishes what the store holds in memory (the `sluice_store_*_bytes` gauges) and how
    /// far its compaction is behind (`sluice_store_compaction_*`, `sluice_store_write_*`).
    pub(crate) async fn report_store_gauges(self, interval: Duration) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            self.inner.store.memory_usage().publish();
            self.inner.store.compaction_backlog().publish();
        }
    }

    pub fn cluster_config(&self) -> Option<ClusterConfig> {
        self.group(METADATA_GROUP).ok().and_then(|g| g.view.cluster_config())
    }

    pub(crate) fn group(&self, group: GroupId) -> Result<Arc<Group>, BrokerError> {
        let groups = self.inner.groups.read().map_err(|_| BrokerError::ShuttingDown)?;
        groups.get(&group).cloned().ok_or(if group == METADATA_GROUP {
            BrokerError::ShuttingDown
        } else if self.is_removed() {
            // Regression: a removed node's stopped groups answered "not initialised (run `sluice cluster init`)",
            // which was wrong advice, and "retry" at ingress, which could never succeed here.
            BrokerError::RemovedFromCluster
        } else {
            BrokerError::NotInitialized
        })
    }

    fn groups(&self) -> Vec<Arc<Group>> {
        let mut groups: Vec<_> = self.inner.groups.read().map(|g| g.values().cloned().collect()).unwrap_or_default();
        groups.sort_by_key(|g| g.id);
        groups
    }

    async fn start_group(&self, group: GroupId) -> Result<Arc<Group>, BrokerError> {
        let _creating = self.inner.creating.lock().await;
        if let Ok(existing) = self.group(group)
            && existing.id == group
        {
            return Ok(existing);
        }
        let settings = &self.inner.settings;
        let started = Group::start(
            settings.node_id,
            group,
            &self.inner.store,
            self.inner.peers.clone(),
            &settings.tuning,
            settings.append_limits.clone(),
        )
        .await?;
        self.inner.groups.write().map_err(|_| BrokerError::ShuttingDown)?.insert(group, started.clone());
        // Spawned after the insert: its first bump (the group's start) must
        // find the group in the map.
        tokio::spawn(watch_group_leadership(started.raft.clone(), self.inner.leadership.clone()));
        tracing::info!(group = %group_name(group), "started group");
        Ok(started)
    }

    /// Starts every partition group of `applied`'s config, and founds (Raft-initialises with the members given
    /// to `cluster init`) those not initialised when [`founds_partition_groups`] says this node does; otherwise
    /// a group waits for its leader's replication.
    async fn ensure_partitions(&self, applied: &AppliedConfig) -> Result<(), BrokerError> {
        if self.is_removed() {
            return Ok(());
        }
        let config = &applied.config;
        let members = raft_members(config);
        let leads_metadata =
            self.group(METADATA_GROUP)?.raft.metrics().borrow_watched().current_leader == Some(self.id());
        let founds = founds_partition_groups(applied, self.id(), leads_metadata);
        for partition in 0..config.partitions {
            let group = self.start_group(partition_group(partition)).await?;
            if founds
                && !group
                    .raft
                    .is_initialized()
                    .await
                    .map_err(|e| BrokerError::Raft { group: group.id, reason: e.to_string() })?
            {
                // Every member initialises with the same membership: the
                // initial entries are identical, so this is safe to race.
                if let Err(e) = group.raft.initialize(members.clone()).await {
                    tracing::debug!(group = %group_name(group.id), error = %e, "initialise skipped");
                }
            }
        }
        Ok(())
    }

    /// Initialises a new cluster. Must be sent to one of `config.members`.
    pub async fn init_cluster(&self, config: ClusterConfig) -> Result<(), BrokerError> {
        if !config.is_member(self.id()) {
            return Err(BrokerError::InvalidClusterConfig(format!(
                "this node (id {}) is not in the member list ({}); send init to a member",
                self.id(),
                config.member_ids()
            )));
        }
        if let Some(existing) = self.cluster_config() {
            return if existing.same_init(&config) { Ok(()) } else { Err(already_initialized(&existing)) };
        }
        let metadata = self.group(METADATA_GROUP)?;
        if !metadata
            .raft
            .is_initialized()
            .await
            .map_err(|e| BrokerError::Raft { group: METADATA_GROUP, reason: e.to_string() })?
            && let Err(e) = metadata.raft.initialize(raft_members(&config)).await
        {
            tracing::debug!(error = %e, "metadata group initialise skipped");
        }
        let reply =
            self.write(METADATA_GROUP, ForwardedWrite::Command(LogCommand::InitCluster(config.clone()))).await?;
        if let ForwardedReply::Response(LogResponse::AlreadyInitialized(existing)) = reply
            && !existing.same_init(&config)
        {
            return Err(already_initialized(&existing));
        }
        self.ensure_partitions(&AppliedConfig { config, removed_at: BTreeMap::new() }).await
    }

    /// Stops every group's Raft (in-flight writes fail as indeterminate).
    pub async fn shutdown(&self) {
        self.inner.stopping.send_replace(true);
        for group in self.groups() {
            if let Err(e) = group.raft.shutdown().await {
                tracing::warn!(group = %group_name(group.id), error = %e, "raft shutdown");
            }
        }
    }

    /// `stream`, ended once this node shuts down, with `UNAVAILABLE` ("the node is shutting down") as its last
    /// item. Regression: a stopping node waited for every open Tail, Watch and peer stream to end by itself, 10 s
    /// per server, and then cut them (the client saw an HTTP/2 protocol error).
    pub fn until_stopping<T: Send + 'static>(
        &self,
        stream: impl futures::Stream<Item = Result<T, tonic::Status>> + Send + 'static,
    ) -> std::pin::Pin<Box<dyn futures::Stream<Item = Result<T, tonic::Status>> + Send>> {
        use futures::StreamExt;
        let mut stopping = self.inner.stopping.subscribe();
        let stopped = async move {
            let _ = stopping.wait_for(|stopping| *stopping).await;
        };
        let ended = futures::stream::once(async { Err(tonic::Status::unavailable("the node is shutting down")) });
        Box::pin(stream.take_until(Box::pin(stopped)).chain(ended))
    }

    /// The address this node dials to reach the peer advertised as `addr` (`--peer-route`).
    pub fn peer_dial_addr<'a>(&'a self, addr: &'a str) -> &'a str {
        self.inner.peers.dial_addr(addr)
    }

    /// The connection to the member advertised as `addr`, on its peer listener (mutual TLS when the cluster's
    /// transport is encrypted, `--peer-route` applied): for the services a node asks of another beside Raft
    /// (serving's `Logs` and `Decisions`, gathered from every node). Not the connection Raft uses: a slow
    /// reader of what these calls relay must not hold up replication.
    pub fn peer_channel(&self, addr: &str) -> Result<tonic::transport::Channel, BrokerError> {
        self.inner
            .peers
            .service_channel(addr)
            .map_err(|reason| BrokerError::PeerAddress { addr: addr.to_string(), reason })
    }

    /// Whether this node was removed from the cluster (its partition groups are stopped).
    /// `NOT_INITIALIZED` on a node that has no cluster config (started without `cluster init`, and not added to a
    /// cluster yet), for the admin calls that would otherwise answer "not found", "no resources" or "no leader,
    /// retry". A removed node keeps its config, and says it was removed where that matters.
    pub fn check_initialised(&self) -> Result<(), BrokerError> {
        if self.cluster_config().is_none() { Err(BrokerError::NotInitialized) } else { Ok(()) }
    }

    pub fn is_removed(&self) -> bool {
        self.inner.removed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Whether `node` founds the partition groups it finds not initialised: a member given to `cluster init`, while
/// it leads the metadata group, and only while the cluster has kept its initial members (none added, none ever
/// removed). Any other node waits for a group's leader to replicate it. Regression: every initial member founded
/// them, so a founder removed, wiped and added again (docs/operations.md) founded a group of the initial
/// members again as its config replayed: with one initial member it elected itself, answered 202s on its own
/// and lost them when the real leader's log replaced its own. Only the metadata leader, because a replaying
/// node is a learner of the metadata group, and its config passes through the initial one on the way.
pub(super) fn founds_partition_groups(applied: &AppliedConfig, node: NodeId, leads_metadata: bool) -> bool {
    applied.config.is_initial_member(node)
        && leads_metadata
        && applied.removed_at.is_empty()
        && applied.config.members == applied.config.initial_members
}

/// The membership every group is initialised with: the members given to `cluster init`.
fn raft_members(config: &ClusterConfig) -> BTreeMap<NodeId, BasicNode> {
    config.initial_members.iter().map(|(id, addr)| (*id, BasicNode::new(addr.clone()))).collect()
}

fn already_initialized(existing: &ClusterConfig) -> BrokerError {
    BrokerError::AlreadyInitialized { partitions: existing.partitions, members: existing.member_ids() }
}

/// Ties a data dir to one node id: `DATA/node-id` is written on first use.
fn claim_data_dir(dir: &Path, node_id: NodeId) -> Result<(), BrokerError> {
    let data_dir_error = |reason: String| BrokerError::DataDir { path: dir.to_path_buf(), reason };
    crate::durable_fs::create_dir_all(dir).map_err(|e| data_dir_error(e.to_string()))?;
    let id_file = dir.join("node-id");
    match std::fs::read_to_string(&id_file) {
        Ok(text) => {
            let stored: NodeId =
                text.trim().parse().map_err(|_| data_dir_error(format!("{} is corrupt", id_file.display())))?;
            if stored != node_id {
                return Err(BrokerError::NotAMember(format!(
                    "data dir {} belongs to node {stored}, not --id {node_id}; use --id {stored} or another --data dir",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            crate::durable_fs::write_file(&id_file, format!("{node_id}\n").as_bytes())
                .map_err(|e| data_dir_error(e.to_string()))
        }
        Err(e) => Err(data_dir_error(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use writes::validate_cursor_name;

    #[test]
    fn stream_names_are_validated() {
        assert!(validate_stream_name("broker/default/b").is_ok());
        assert!(validate_stream_name("").is_err());
        assert!(validate_stream_name("a\nb").is_err());
        assert!(validate_stream_name(&"x".repeat(513)).is_err());
        assert!(validate_cursor_name("trigger/default/t1").is_ok());
        assert!(matches!(validate_cursor_name(""), Err(BrokerError::InvalidCursor { .. })));
        assert!(matches!(validate_cursor_name("a\nb"), Err(BrokerError::InvalidCursor { .. })));
        assert!(matches!(validate_cursor_name(&"x".repeat(1025)), Err(BrokerError::InvalidCursor { .. })));
        // Regression: cursors shared the stream's 512 bytes, and a Trigger of a Broker with names at their longest
        // (a 63-byte namespace, 253-byte names) could not commit its offsets.
        let (namespace, name) = ("n".repeat(63), "b".repeat(253));
        let stream = format!("broker/{namespace}/{name}");
        assert!(validate_stream_name(&stream).is_ok());
        let cursor = format!("{stream}#trigger/{name}/{}!delivered", "u".repeat(36));
        assert!(validate_cursor_name(&cursor).is_ok(), "{} bytes", cursor.len());
    }

    fn stored(index: u64, voters: &[&[NodeId]], learners: &[NodeId]) -> crate::command::StoredMembership {
        use openraft::vote::RaftLeaderId;
        let configs: Vec<BTreeSet<NodeId>> = voters.iter().map(|ids| ids.iter().copied().collect()).collect();
        let mut nodes: BTreeMap<NodeId, BasicNode> =
            configs.iter().flatten().map(|id| (*id, BasicNode::new(format!("n{id}:1")))).collect();
        nodes.extend(learners.iter().map(|id| (*id, BasicNode::new(format!("n{id}:1")))));
        let membership = openraft::Membership::new(configs, nodes).expect("membership");
        let log_id = openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId::new(1, 1).to_committed(), index);
        openraft::StoredMembership::new(Some(log_id), membership)
    }

    /// A node belongs while the member list has it, or while a metadata membership newer than its last removal
    /// from the list has it.
    #[test]
    fn membership_newer_than_the_last_removal_decides_whether_a_node_belongs() {
        let members = |ids: &[NodeId]| ids.iter().map(|id| (*id, format!("n{id}:1"))).collect();
        let config_123 = ClusterConfig::new(2, members(&[1, 2, 3])).expect("config");
        let applied = |ids: &[NodeId], removed: &[(NodeId, u64)]| {
            let mut config = config_123.clone();
            config.members = members(ids);
            AppliedConfig { config, removed_at: removed.iter().copied().collect() }
        };
        // Listed: belongs, whatever the membership.
        assert!(belongs(&applied(&[1, 2, 3], &[]), &stored(5, &[&[1, 2]], &[]), 3));
        // Removed from the list at 10 while an older membership (5) still has it as a voter: out.
        let without_3 = applied(&[1, 2], &[(3, 10)]);
        assert!(!belongs(&without_3, &stored(5, &[&[1, 2, 3]], &[]), 3));
        // Being added again: a learner (or voter) in a membership newer than its removal.
        assert!(belongs(&without_3, &stored(20, &[&[1, 2]], &[3]), 3));
        assert!(belongs(&without_3, &stored(21, &[&[1, 2], &[1, 2, 3]], &[]), 3));
        // Other members' changes while it is added do not count against it.
        let also_without_2 = applied(&[1], &[(3, 10), (2, 25)]);
        assert!(belongs(&also_without_2, &stored(21, &[&[1, 2], &[1, 2, 3]], &[]), 3));
        // Being removed from the metadata group: in the joint config's old half only, or gone.
        assert!(!belongs(&without_3, &stored(22, &[&[1, 2, 3], &[1, 2]], &[]), 3));
        assert!(!belongs(&without_3, &stored(23, &[&[1, 2]], &[]), 3));
        // A new id, never removed: not in the initial membership, then a learner.
        assert!(!belongs(&applied(&[1, 2, 3], &[]), &stored(1, &[&[1, 2, 3]], &[]), 4));
        assert!(belongs(&applied(&[1, 2, 3], &[]), &stored(30, &[&[1, 2, 3]], &[4]), 4));
    }

    /// Only a member given to `cluster init`, leading the metadata group, in a cluster that has kept its initial
    /// members, founds partition groups. Regression: a founder removed, wiped and added again founded them anew.
    #[test]
    fn only_the_metadata_leader_of_an_untouched_cluster_founds_partition_groups() {
        let members = |ids: &[NodeId]| ids.iter().map(|id| (*id, format!("n{id}:1"))).collect();
        let applied = |initial: &[NodeId], now: &[NodeId], removed: &[(NodeId, u64)]| {
            let mut config = ClusterConfig::new(2, members(initial)).expect("config");
            config.members = members(now);
            AppliedConfig { config, removed_at: removed.iter().copied().collect() }
        };
        let cases: [(&str, AppliedConfig, NodeId, bool, bool); 8] = [
            (
                "a founder leading the metadata group of a new cluster",
                applied(&[1, 2, 3], &[1, 2, 3], &[]),
                1,
                true,
                true,
            ),
            ("a founder following it waits for replication", applied(&[1, 2, 3], &[1, 2, 3], &[]), 2, false, false),
            ("the one founder of a one-node cluster", applied(&[1], &[1], &[]), 1, true, true),
            ("a node added later, even leading", applied(&[1], &[1, 4], &[]), 4, true, false),
            ("a founder once members were added", applied(&[1], &[1, 4], &[]), 1, true, false),
            ("a founder removed and added again (replaying its config)", applied(&[1], &[1], &[]), 1, false, false),
            ("a founder added again, its removal in the config", applied(&[1], &[1, 2, 3], &[(1, 9)]), 1, true, false),
            ("a founder once another was removed", applied(&[1, 2, 3], &[1, 2], &[(3, 9)]), 1, true, false),
        ];
        for (case, applied, node, leads_metadata, founds) in cases {
            assert_eq!(founds_partition_groups(&applied, node, leads_metadata), founds, "{case}");
        }
    }

    #[test]
    fn a_data_dir_belongs_to_one_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        claim_data_dir(dir.path(), 1).expect("first claim");
        claim_data_dir(dir.path(), 1).expect("same id again");
        let err = claim_data_dir(dir.path(), 2).expect_err("other id");
        assert!(err.to_string().contains("belongs to node 1"), "{err}");
    }
}
