//! How the pods of a StatefulSet form a Sluice cluster by themselves, and follow its scaling: pure decisions
//! over what a pod observes (its hostname, which peers' names resolve, what the cluster reports), carried out
//! by `sluice node --statefulset`.
//!
//! - Identity: pod `sluice-2` is node 3 (ordinal + 1: node ids are positive), and its peer address is its
//!   stable DNS name under the headless Service: `sluice-2.sluice-peers.NAMESPACE.svc.cluster.local:7070`.
//! - Forming: the first `initial_members` pods are the founding members. Pod 0 initialises the cluster with
//!   all of them once every founding pod's name resolves (the headless Service publishes not-ready
//!   addresses, so names exist before readiness); the others wait to be told. Init is idempotent: a cluster
//!   already initialised with the same members answers as if it were new, so a restarted pod 0 is harmless.
//! - Growing: a pod whose ordinal is at or past `initial_members` asks a member to add it (AddNode is
//!   idempotent for a node that is already a member).
//! - Coming back on an empty volume: a pod whose data dir is empty asks the cluster, before it opens the dir,
//!   whether its node is a member that published itself (held the cluster's state once). If so its volume
//!   was lost: a voter with no log could grant a vote it already gave, or complete a quorum and then forget
//!   the entry, so it asks a member to remove it and is added again as a new node ([`before_open`]).
//! - Shrinking: the StatefulSet deletes its highest ordinals first; a pod stopping with an ordinal at or past
//!   the desired replicas removes itself from the cluster in its preStop ([`leave_on_stop`]), and the
//!   controller removes any member left behind by a pod that died instead ([`members_to_remove`]).

/// A pod's place in its StatefulSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodIdentity {
    /// The StatefulSet's name (the hostname without `-ORDINAL`).
    pub set: String,
    pub ordinal: u32,
}

impl PodIdentity {
    /// From the pod's hostname, `SET-ORDINAL` (the StatefulSet controller names pods so).
    pub fn from_hostname(hostname: &str) -> Result<PodIdentity, String> {
        let hostname = hostname.split('.').next().unwrap_or(hostname);
        let (set, ordinal) = hostname
            .rsplit_once('-')
            .ok_or_else(|| format!("hostname {hostname:?} is not a StatefulSet pod's (SET-ORDINAL)"))?;
        let ordinal: u32 = ordinal
            .parse()
            .map_err(|_| format!("hostname {hostname:?} does not end in a StatefulSet ordinal (SET-ORDINAL)"))?;
        if set.is_empty() {
            return Err(format!("hostname {hostname:?} has no StatefulSet name before its ordinal"));
        }
        Ok(PodIdentity { set: set.to_string(), ordinal })
    }

    /// The Sluice node id: the ordinal + 1 (ids are positive and stable across restarts, as the ordinal is).
    pub fn node_id(&self) -> u64 {
        u64::from(self.ordinal) + 1
    }
}

/// The pod of a node id: the inverse of [`PodIdentity::node_id`].
pub fn ordinal_of(node_id: u64) -> Option<u32> {
    node_id.checked_sub(1).and_then(|o| u32::try_from(o).ok())
}

/// A pod's DNS name under the headless Service.
pub const DEFAULT_HOST_TEMPLATE: &str = "{pod}.{service}.{namespace}.svc.{domain}";

/// Where the StatefulSet's pods reach each other: by default `POD.SERVICE.NAMESPACE.svc.DOMAIN:PORT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerNaming {
    /// A pod's host with `{pod}`, `{ordinal}`, `{service}`, `{namespace}` and `{domain}` to fill in
    /// ([`DEFAULT_HOST_TEMPLATE`]; tests on one machine give each pod a loopback address instead).
    pub host_template: String,
    pub set: String,
    pub headless_service: String,
    pub namespace: String,
    pub cluster_domain: String,
    pub peer_port: u16,
}

impl PeerNaming {
    pub fn host(&self, ordinal: u32) -> String {
        self.host_template
            .replace("{pod}", &format!("{}-{ordinal}", self.set))
            .replace("{ordinal}", &ordinal.to_string())
            .replace("{service}", &self.headless_service)
            .replace("{namespace}", &self.namespace)
            .replace("{domain}", &self.cluster_domain)
    }

    pub fn peer_address(&self, ordinal: u32) -> String {
        format!("{}:{}", self.host(ordinal), self.peer_port)
    }
}

/// What a pod has seen this round.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// The members of the cluster as a reachable node reports them (node ids); `None` when no node reached
    /// reports an initialised cluster.
    pub members: Option<Vec<u64>>,
    /// The founding pods whose names resolve now (ordinals).
    pub resolvable: Vec<u32>,
}

/// What the pod does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// This node is a member: nothing left to do.
    Joined,
    /// Initialise the cluster with these members (node id, peer address). Pod 0 only.
    Init { members: Vec<(u64, String)> },
    /// Ask a member to add this node.
    AddSelf { id: u64, peer: String },
    /// Wait and observe again, for this reason.
    Wait { reason: String },
}

/// The next bootstrap step of pod `me`, whose StatefulSet founds the cluster with `initial_members` pods.
pub fn next_step(me: &PodIdentity, naming: &PeerNaming, initial_members: u32, observed: &Observed) -> Step {
    let id = me.node_id();
    match &observed.members {
        Some(members) if members.contains(&id) => Step::Joined,
        Some(_) => Step::AddSelf { id, peer: naming.peer_address(me.ordinal) },
        None if me.ordinal >= initial_members.max(1) => {
            Step::Wait { reason: "no founding member reports an initialised cluster yet".into() }
        }
        None if me.ordinal > 0 => Step::Wait { reason: format!("pod {}-0 initialises the cluster", me.set) },
        None => {
            let missing: Vec<u32> = (0..initial_members.max(1)).filter(|o| !observed.resolvable.contains(o)).collect();
            if missing.is_empty() {
                let members = (0..initial_members.max(1)).map(|o| (u64::from(o) + 1, naming.peer_address(o))).collect();
                Step::Init { members }
            } else {
                Step::Wait { reason: format!("founding pods {missing:?} do not resolve yet") }
            }
        }
    }
}

/// What the pods asked answered before this pod opened its data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterAnswer {
    /// No pod answered.
    Nobody,
    /// A pod answered and knows no initialised cluster.
    NotInitialised,
    /// A pod answered with the cluster's members, and those that published themselves.
    Members { members: Vec<u64>, published: Vec<u64> },
}

/// What a pod does before it opens its data dir.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenStep {
    /// Open it (and go on with [`next_step`]).
    Open,
    /// This node lost its volume: ask a member to remove it, then ask again (it is added again as new).
    RemoveSelf { id: u64 },
    /// Ask again, for this reason.
    Wait { reason: String },
}

/// The step of pod `me` before it opens its data dir. A dir with data is opened as it is. An empty one is
/// opened when the cluster does not list this node as a member that published itself; when it does, the
/// volume was lost and the node is removed first. When nobody answers, pod 0 opens (it may be founding the
/// cluster, with every other pod waiting for it) and any other pod waits for an answer.
pub fn before_open(me: &PodIdentity, data_dir_empty: bool, answer: &ClusterAnswer) -> OpenStep {
    let id = me.node_id();
    if !data_dir_empty {
        return OpenStep::Open;
    }
    match answer {
        ClusterAnswer::Members { members, published } if members.contains(&id) && published.contains(&id) => {
            OpenStep::RemoveSelf { id }
        }
        ClusterAnswer::Members { .. } | ClusterAnswer::NotInitialised => OpenStep::Open,
        ClusterAnswer::Nobody if me.ordinal == 0 => OpenStep::Open,
        ClusterAnswer::Nobody => OpenStep::Wait {
            reason: "this pod's volume is empty and no pod answers whether its node ran before".into(),
        },
    }
}

/// Whether a stopping pod leaves the cluster: only when the StatefulSet no longer wants its ordinal (a
/// scale-down), not when it is restarted, rescheduled or upgraded.
pub fn leave_on_stop(me: &PodIdentity, desired_replicas: u32) -> bool {
    me.ordinal >= desired_replicas
}

/// Members whose pods the StatefulSet no longer wants (ordinal at or past `desired_replicas`) and that are gone
/// (no pod with their ordinal in `pods_present`), in the order to remove them (highest first, as the
/// StatefulSet deletes them). A pod still there, stopping or not yet stopped, leaves in its own preStop after
/// handing its leaderships over: removing its member under it would cut those groups' leaders without a
/// handover. Never all of them: a cluster scaled to zero keeps its members, so scaling back up finds its data.
pub fn members_to_remove(members: &[u64], desired_replicas: u32, pods_present: &[u32]) -> Vec<u64> {
    if desired_replicas == 0 {
        return Vec::new();
    }
    let mut gone: Vec<u64> = members
        .iter()
        .copied()
        .filter(|id| ordinal_of(*id).is_none_or(|o| o >= desired_replicas && !pods_present.contains(&o)))
        .collect();
    gone.sort_unstable_by(|a, b| b.cmp(a));
    gone
}

/// Whether a pod still counts as there for [`members_to_remove`]: yes until its deletion has run past its grace
/// period by a minute. A pod on a node that was lost stays `Terminating` for ever (nothing confirms that it
/// stopped), so without this its member would never be removed; its preStop, if it ever ran, had that time.
pub fn pod_still_there(deletion_started_ms: Option<i64>, grace_period_s: Option<i64>, now_ms: i64) -> bool {
    const MARGIN_MS: i64 = 60_000;
    match deletion_started_ms {
        None => true,
        Some(started_ms) => {
            let grace_ms = grace_period_s.unwrap_or(30).max(0).saturating_mul(1000);
            now_ms < started_ms.saturating_add(grace_ms).saturating_add(MARGIN_MS)
        }
    }
}

/// A Raft group as a stopping node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupView {
    pub group_id: u32,
    pub leader: Option<u64>,
    pub voters: Vec<u64>,
}

/// The leaderships a stopping node hands away before it stops (its preStop), so that no group waits an
/// election timeout for a leader: each group it leads goes to a reachable voter, spread over them by group.
pub fn handover(me: u64, groups: &[GroupView], reachable: &[u64]) -> Vec<(u32, u64)> {
    groups
        .iter()
        .filter(|g| g.leader == Some(me))
        .filter_map(|g| {
            let candidates: Vec<u64> = g.voters.iter().copied().filter(|v| *v != me && reachable.contains(v)).collect();
            let index = usize::try_from(g.group_id).unwrap_or(0) % candidates.len().max(1);
            candidates.get(index).map(|to| (g.group_id, *to))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naming() -> PeerNaming {
        PeerNaming {
            host_template: DEFAULT_HOST_TEMPLATE.into(),
            set: "sluice".into(),
            headless_service: "sluice-peers".into(),
            namespace: "sluice-system".into(),
            cluster_domain: "cluster.local".into(),
            peer_port: 7070,
        }
    }

    fn pod(ordinal: u32) -> PodIdentity {
        PodIdentity { set: "sluice".into(), ordinal }
    }

    #[test]
    fn identity_from_hostnames() {
        // The StatefulSet's name, the ordinal and the node id; `None`: not a StatefulSet pod's hostname.
        type Expected<'a> = Option<(&'a str, u32, u64)>;
        let cases: [(&str, Expected); 7] = [
            ("sluice-0", Some(("sluice", 0, 1))),
            ("sluice-12", Some(("sluice", 12, 13))),
            ("my-sluice-2", Some(("my-sluice", 2, 3))),
            ("sluice-1.sluice-peers.ns.svc.cluster.local", Some(("sluice", 1, 2))),
            ("sluice", None),
            ("sluice-x", None),
            ("-3", None),
        ];
        for (hostname, want) in cases {
            let got = PodIdentity::from_hostname(hostname);
            match want {
                Some((set, ordinal, id)) => {
                    let got = got.expect(hostname);
                    assert_eq!((got.set.as_str(), got.ordinal, got.node_id()), (set, ordinal, id), "{hostname}");
                    assert_eq!(ordinal_of(id), Some(ordinal));
                }
                None => assert!(got.is_err(), "{hostname}: {got:?}"),
            }
        }
        assert_eq!(ordinal_of(0), None);
    }

    #[test]
    fn peer_addresses_are_stable_dns_names() {
        assert_eq!(naming().peer_address(2), "sluice-2.sluice-peers.sluice-system.svc.cluster.local:7070");
        let loopback = PeerNaming { host_template: "127.0.0.1{ordinal}".into(), ..naming() };
        assert_eq!(loopback.peer_address(2), "127.0.0.12:7070");
    }

    #[test]
    fn pod_zero_initialises_once_every_founder_resolves() {
        let waiting = Observed { members: None, resolvable: vec![0, 2] };
        assert!(matches!(next_step(&pod(0), &naming(), 3, &waiting), Step::Wait { reason } if reason.contains("[1]")));
        let ready = Observed { members: None, resolvable: vec![2, 1, 0] };
        let Step::Init { members } = next_step(&pod(0), &naming(), 3, &ready) else { panic!("expected init") };
        assert_eq!(members.iter().map(|(id, _)| *id).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(members[1].1, naming().peer_address(1));
    }

    #[test]
    fn other_founders_wait_for_pod_zero_and_then_are_members() {
        let before = Observed { members: None, resolvable: vec![0, 1, 2] };
        assert!(matches!(next_step(&pod(1), &naming(), 3, &before), Step::Wait { .. }));
        let after = Observed { members: Some(vec![1, 2, 3]), resolvable: vec![0, 1, 2] };
        for ordinal in 0..3 {
            assert_eq!(next_step(&pod(ordinal), &naming(), 3, &after), Step::Joined);
        }
    }

    #[test]
    fn a_pod_past_the_founders_adds_itself_to_a_formed_cluster() {
        let formed = Observed { members: Some(vec![1, 2, 3]), resolvable: vec![] };
        assert_eq!(next_step(&pod(3), &naming(), 3, &formed), Step::AddSelf { id: 4, peer: naming().peer_address(3) });
        assert!(matches!(next_step(&pod(3), &naming(), 3, &Observed::default()), Step::Wait { .. }));
        let grown = Observed { members: Some(vec![1, 2, 3, 4]), resolvable: vec![] };
        assert_eq!(next_step(&pod(3), &naming(), 3, &grown), Step::Joined);
    }

    #[test]
    fn a_pod_on_an_empty_volume_whose_node_ran_before_is_removed_first() {
        let members = |members: &[u64], published: &[u64]| ClusterAnswer::Members {
            members: members.to_vec(),
            published: published.to_vec(),
        };
        // (pod, data dir empty, answer, step)
        let cases = [
            // A volume with data is opened as it is, whatever the cluster says.
            (1, false, members(&[1, 2, 3], &[1, 2, 3]), OpenStep::Open),
            (1, false, ClusterAnswer::Nobody, OpenStep::Open),
            // The volume was lost: listed and published.
            (1, true, members(&[1, 2, 3], &[1, 2, 3]), OpenStep::RemoveSelf { id: 2 }),
            (0, true, members(&[1, 2, 3, 4], &[1, 2, 3, 4]), OpenStep::RemoveSelf { id: 1 }),
            // A founder starting for the first time: listed (pod 0 initialised the cluster), not published.
            (1, true, members(&[1, 2, 3], &[1, 3]), OpenStep::Open),
            // A new pod of a scale-up, or one already removed: not listed.
            (3, true, members(&[1, 2, 3], &[1, 2, 3]), OpenStep::Open),
            (1, true, members(&[1, 3], &[1, 2, 3]), OpenStep::Open),
            (2, true, ClusterAnswer::NotInitialised, OpenStep::Open),
            // Nobody answers: pod 0 founds (every other pod waits for it); the others wait.
            (0, true, ClusterAnswer::Nobody, OpenStep::Open),
        ];
        for (ordinal, empty, answer, expected) in cases {
            assert_eq!(before_open(&pod(ordinal), empty, &answer), expected, "pod {ordinal} empty {empty} {answer:?}");
        }
        assert!(matches!(before_open(&pod(2), true, &ClusterAnswer::Nobody), OpenStep::Wait { .. }));
    }

    #[test]
    fn a_single_node_set_initialises_itself() {
        let Step::Init { members } = next_step(&pod(0), &naming(), 1, &Observed { members: None, resolvable: vec![0] })
        else {
            panic!("expected init")
        };
        assert_eq!(members.len(), 1);
        // `initial_members: 0` is read as 1: a cluster has at least one founder.
        assert!(matches!(
            next_step(&pod(0), &naming(), 0, &Observed { members: None, resolvable: vec![0] }),
            Step::Init { .. }
        ));
    }

    #[test]
    fn a_stopping_leader_hands_its_groups_to_reachable_voters() {
        let group = |group_id, leader, voters: &[u64]| GroupView { group_id, leader, voters: voters.to_vec() };
        let groups = [
            group(0, Some(1), &[1, 2, 3]),
            group(1, Some(1), &[1, 2, 3]),
            group(2, Some(2), &[1, 2, 3]),
            group(3, Some(1), &[1]),
            group(4, None, &[1, 2, 3]),
        ];
        assert_eq!(handover(1, &groups, &[1, 2, 3]), vec![(0, 2), (1, 3)]);
        // Only reachable voters take a group; one with no other voter stays.
        assert_eq!(handover(1, &groups, &[1, 3]), vec![(0, 3), (1, 3)]);
        assert_eq!(handover(1, &groups, &[1]), vec![]);
        assert_eq!(handover(4, &groups, &[1, 2, 3]), vec![]);
    }

    #[test]
    fn a_pod_whose_deletion_ran_a_minute_past_its_grace_period_no_longer_counts() {
        // (deletion started, grace period, now, still there)
        let cases = [
            (None, None, 10_000_000, true),
            (Some(1_000_000), Some(60), 1_000_000 + 60_000 + 59_999, true),
            (Some(1_000_000), Some(60), 1_000_000 + 120_000, false),
            (Some(1_000_000), None, 1_000_000 + 89_999, true),
            (Some(1_000_000), None, 1_000_000 + 90_000, false),
            (Some(1_000_000), Some(-5), 1_000_000 + 60_000, false),
        ];
        for (started, grace, now, expected) in cases {
            assert_eq!(pod_still_there(started, grace, now), expected, "{started:?} {grace:?} at {now}");
        }
    }

    #[test]
    fn scale_down_removes_the_highest_ordinals_and_never_every_member() {
        assert!(leave_on_stop(&pod(4), 3));
        assert!(leave_on_stop(&pod(3), 3));
        assert!(!leave_on_stop(&pod(2), 3));
        /// (members, desired replicas, ordinals of the pods still there, members to remove)
        type Case<'a> = (&'a [u64], u32, &'a [u32], &'a [u64]);
        let cases: [Case; 6] = [
            (&[1, 2, 3, 4, 5], 3, &[0, 1, 2], &[5, 4]),
            // Pod 4 (node 5) is still stopping: its preStop hands over and leaves; pod 3's died.
            (&[1, 2, 3, 4, 5], 3, &[0, 1, 2, 4], &[4]),
            // The spec just changed and no pod has stopped yet: nothing to do.
            (&[1, 2, 3, 4, 5], 3, &[0, 1, 2, 3, 4], &[]),
            (&[1, 2, 3], 3, &[], &[]),
            (&[1, 2, 3], 0, &[], &[]),
            // A member that is no StatefulSet pod's (node id 0) is not the cluster's to keep.
            (&[0, 1, 2], 2, &[0, 1], &[0]),
        ];
        for (members, desired, present, expected) in cases {
            assert_eq!(members_to_remove(members, desired, present), expected, "{members:?} {desired} {present:?}");
        }
    }
}
