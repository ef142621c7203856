//! Spreads partition leadership evenly over the nodes.
//!
//! In: every partition group as this node sees it (its leader and voters) and, for the groups this node
//! leads, each voter's matched log index, the age of its last heartbeat acknowledgement and how long this
//! node has led. Out: at most one leadership transfer per check, of a group this node leads, to the voter
//! that leads the fewest partitions.
//!
//! Why: an election is won by whichever node times out first, so after a cluster starts (or a node comes
//! back) one node often leads every partition. That node then does every partition's leader work (its
//! appends, its fsyncs, every forwarded request, the dispatch) while the others idle, and a cluster's
//! throughput is that one node's. Kafka rebalances to preferred leaders for the same reason. Sluice
//! balances by count instead of by a fixed preference, so a manual `cluster transfer-leader` that keeps
//! the counts even is not undone.
//!
//! Rule: a node that leads at least two partitions more than some healthy voter hands one of them to that
//! voter (the one leading fewest, then the lowest id; the lowest group). Each transfer narrows the gap, and
//! nothing moves once the counts differ by at most one, so concurrent decisions of several nodes settle.
//! A target must be caught up (openraft's transfer only completes to a voter whose log is current) and
//! acknowledging heartbeats; this node must have led the group for a while (after a failover, the node
//! that comes back first proves it stays up before it gets leadership back).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use crate::command::{GroupId, METADATA_GROUP, NodeId, group_name};

use super::{GroupStatus, Node};

/// A partition group as this node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct GroupView {
    pub group: GroupId,
    pub leader: Option<NodeId>,
    pub voters: Vec<NodeId>,
    /// Only where this node leads the group.
    pub led_here: Option<LedHere>,
}

/// What the leader knows about a group's replicas.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LedHere {
    pub last_log_index: u64,
    /// Each replica's matched log index (None: nothing matched yet).
    pub matched: BTreeMap<NodeId, Option<u64>>,
    /// Ms since each replica last acknowledged (None: never).
    pub heartbeat_age_ms: BTreeMap<NodeId, Option<u64>>,
    pub led_for_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct BalancePolicy {
    /// A target at most this many entries behind the leader's last log index counts as caught up.
    pub max_lag_entries: u64,
    /// A target whose last acknowledgement is older than this counts as down.
    pub max_heartbeat_age_ms: u64,
    /// This node must have led a group this long before it hands it over.
    pub min_led_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transfer {
    pub group: GroupId,
    pub to: NodeId,
}

/// The one transfer `me` should start now, if any; never to a node in `not_to`.
pub(crate) fn plan_transfer(
    me: NodeId,
    groups: &[GroupView],
    not_to: &BTreeSet<NodeId>,
    policy: &BalancePolicy,
) -> Option<Transfer> {
    // While any group is electing, the counts are about to change: decide on the next check.
    if groups.iter().any(|g| g.leader.is_none()) {
        return None;
    }
    let voters: BTreeSet<NodeId> = groups.iter().flat_map(|g| g.voters.iter().copied()).collect();
    let mut led: BTreeMap<NodeId, usize> = voters.iter().map(|v| (*v, 0)).collect();
    for leader in groups.iter().filter_map(|g| g.leader) {
        *led.entry(leader).or_default() += 1;
    }
    let mine = led.get(&me).copied().unwrap_or(0);
    let led = &led;
    groups
        .iter()
        .filter(|g| g.leader == Some(me))
        .filter_map(|g| g.led_here.as_ref().map(|here| (g, here)))
        .filter(|(_, here)| here.led_for_ms >= policy.min_led_ms)
        .flat_map(|(g, here)| {
            g.voters
                .iter()
                .filter(move |v| **v != me && !not_to.contains(*v))
                .filter(move |v| replica_is_current(here, **v, policy))
                .map(move |v| (led.get(v).copied().unwrap_or(0), *v, g.group))
                .collect::<Vec<_>>()
        })
        .filter(|(their_count, _, _)| their_count + 2 <= mine)
        .min()
        .map(|(_, to, group)| Transfer { group, to })
}

/// The replicas of the groups this node leads that have not acknowledged within the policy's heartbeat age.
pub(crate) fn silent_replicas(me: NodeId, groups: &[GroupView], policy: &BalancePolicy) -> BTreeSet<NodeId> {
    groups
        .iter()
        .filter_map(|g| g.led_here.as_ref().map(|here| (g, here)))
        .flat_map(|(g, here)| g.voters.iter().copied().filter(move |v| *v != me && !acknowledges(here, *v, policy)))
        .collect()
}

fn replica_is_current(here: &LedHere, replica: NodeId, policy: &BalancePolicy) -> bool {
    let caught_up = here
        .matched
        .get(&replica)
        .copied()
        .flatten()
        .is_some_and(|matched| matched.saturating_add(policy.max_lag_entries) >= here.last_log_index);
    caught_up && acknowledges(here, replica, policy)
}

/// Whether `replica` acknowledged the leader within the policy's heartbeat age.
fn acknowledges(here: &LedHere, replica: NodeId, policy: &BalancePolicy) -> bool {
    here.heartbeat_age_ms.get(&replica).copied().flatten().is_some_and(|age| age <= policy.max_heartbeat_age_ms)
}

impl Node {
    /// Notes that `from` asked this node to take over a group's leadership (a transfer it started).
    pub(crate) fn note_handover_from(&self, from: NodeId) {
        if let Ok(mut handovers) = self.inner.handovers_from.lock() {
            // Only the members' are kept (the sender's id is the peer's word; with leader balancing off nothing
            // else trims the map).
            let members = self.cluster_config().map(|config| config.members).unwrap_or_default();
            handovers.retain(|node, _| members.contains_key(node));
            if members.contains_key(&from) {
                handovers.insert(from, Instant::now());
            }
        }
    }

    /// The peers that handed this node a leadership within `within` and have not been seen silent since
    /// (one that stopped has finished its drain: when it comes back it may lead again).
    fn recent_handovers_from(&self, within: Duration, silent: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        let Ok(mut handovers) = self.inner.handovers_from.lock() else { return BTreeSet::new() };
        handovers.retain(|node, at| at.elapsed() < within && !silent.contains(node));
        handovers.keys().copied().collect()
    }
}

/// The views of the partition groups in `status`, with how long this node has led each (from `led_since`).
fn views(status: &[GroupStatus], led_since: &BTreeMap<GroupId, (u64, Instant)>, now: Instant) -> Vec<GroupView> {
    status
        .iter()
        .filter(|g| g.group != METADATA_GROUP)
        .map(|g| GroupView {
            group: g.group,
            leader: g.leader,
            voters: g.voters.clone(),
            led_here: match (&g.replication, &g.heartbeat_age_ms, led_since.get(&g.group)) {
                (Some(matched), Some(heartbeat_age_ms), Some((_, since))) => Some(LedHere {
                    last_log_index: g.last_log_index.unwrap_or(0),
                    matched: matched.clone(),
                    heartbeat_age_ms: heartbeat_age_ms.clone(),
                    led_for_ms: now.saturating_duration_since(*since).as_millis() as u64,
                }),
                _ => None,
            },
        })
        .collect()
}

/// A node that handed this one a leadership gets none back from it for this long (unless it is seen silent
/// meanwhile): longer than a Kubernetes pod's default termination grace period (30 s), so a pod's preStop
/// handover is not undone before it stops.
const NO_HANDBACK_FOR: Duration = Duration::from_secs(60);

/// Checks every `interval` and carries out [`plan_transfer`]'s decision (one transfer at a time).
pub(crate) async fn run(node: Node, interval: Duration) {
    let tuning = node.settings().tuning.clone();
    let policy = BalancePolicy {
        // openraft's target ignores a transfer if its log lacks the leader's last entry when the request
        // arrives (the group then elects after an election timeout, like a failover): under load, hand over
        // only at a moment the target has everything.
        max_lag_entries: 0,
        max_heartbeat_age_ms: tuning.election_timeout_max_ms * 2,
        min_led_ms: (interval.as_millis() as u64 * 3).max(tuning.election_timeout_max_ms * 5),
    };
    let transfers = metrics::counter!("sluice_leader_balance_transfers_total");
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Group → (term, when this node was first seen leading it in that term).
    let mut led_since: BTreeMap<GroupId, (u64, Instant)> = BTreeMap::new();
    loop {
        ticker.tick().await;
        if node.is_removed() || node.cluster_config().is_none() {
            continue;
        }
        let me = node.id();
        let now = Instant::now();
        let status = node.status();
        led_since.retain(|group, (term, _)| {
            status.iter().any(|g| g.group == *group && g.leader == Some(me) && g.term == *term)
        });
        for g in status.iter().filter(|g| g.leader == Some(me)) {
            led_since.entry(g.group).or_insert((g.term, now));
        }
        let views = views(&status, &led_since, now);
        let not_to = node.recent_handovers_from(NO_HANDBACK_FOR, &silent_replicas(me, &views, &policy));
        let Some(transfer) = plan_transfer(me, &views, &not_to, &policy) else {
            continue;
        };
        tracing::info!(group = %group_name(transfer.group), to = transfer.to, "leader balance: transferring leadership");
        transfers.increment(1);
        if let Err(e) = node.transfer_leader(transfer.group, transfer.to).await {
            tracing::warn!(group = %group_name(transfer.group), to = transfer.to, error = %e, "leader balance: transfer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const POLICY: BalancePolicy = BalancePolicy { max_lag_entries: 0, max_heartbeat_age_ms: 800, min_led_ms: 2_000 };

    /// Partition groups 1..=leaders.len() over `voters`; `me` leads its groups with every replica current.
    fn cluster(me: NodeId, voters: &[NodeId], leaders: &[Option<NodeId>]) -> Vec<GroupView> {
        leaders
            .iter()
            .enumerate()
            .map(|(i, leader)| GroupView {
                group: i as GroupId + 1,
                leader: *leader,
                voters: voters.to_vec(),
                led_here: (*leader == Some(me)).then(|| LedHere {
                    last_log_index: 1_000,
                    matched: voters.iter().map(|v| (*v, Some(1_000))).collect(),
                    heartbeat_age_ms: voters.iter().map(|v| (*v, Some(50))).collect(),
                    led_for_ms: 10_000,
                }),
            })
            .collect()
    }

    /// Changes what the leader knows of every group it leads.
    fn every_led(groups: &mut [GroupView], change: impl Fn(&mut LedHere)) {
        groups.iter_mut().filter_map(|g| g.led_here.as_mut()).for_each(change);
    }

    fn here(groups: &mut [GroupView], group: GroupId) -> &mut LedHere {
        groups
            .iter_mut()
            .find(|g| g.group == group)
            .and_then(|g| g.led_here.as_mut())
            .expect("the test's node leads this group")
    }

    #[test]
    fn decisions() {
        let s = Some;
        type Case = (&'static str, NodeId, Vec<Option<NodeId>>, Option<Transfer>);
        let cases: Vec<Case> = vec![
            (
                "one node leads all four: to the lowest idle id",
                1,
                vec![s(1), s(1), s(1), s(1)],
                Some(Transfer { group: 1, to: 2 }),
            ),
            ("3-1-0: to the idle node", 1, vec![s(1), s(2), s(1), s(1)], Some(Transfer { group: 1, to: 3 })),
            ("2-1-1 is balanced", 1, vec![s(1), s(2), s(3), s(1)], None),
            ("2-2-0: both leaders give to node 3", 2, vec![s(1), s(2), s(1), s(2)], Some(Transfer { group: 2, to: 3 })),
            ("1-1-1 is balanced", 1, vec![s(1), s(2), s(3)], None),
            ("a follower decides nothing", 2, vec![s(1), s(1), s(1), s(1)], None),
            ("an election under way: wait", 1, vec![s(1), s(1), None, s(1)], None),
            ("2-1-0 differs by two at most once: move", 1, vec![s(1), s(1), s(2)], Some(Transfer { group: 1, to: 3 })),
        ];
        for (name, me, leaders, expected) in cases {
            assert_eq!(
                plan_transfer(me, &cluster(me, &[1, 2, 3], &leaders), &BTreeSet::new(), &POLICY),
                expected,
                "{name}"
            );
        }
    }

    #[test]
    fn only_current_replicas_and_settled_leadership_receive() {
        let s = Some;
        let all_mine = [s(1), s(1), s(1), s(1)];
        let mut lagging = cluster(1, &[1, 2, 3], &all_mine);
        every_led(&mut lagging, |h| {
            h.matched.insert(2, Some(999));
        });
        assert_eq!(
            plan_transfer(1, &lagging, &BTreeSet::new(), &POLICY),
            Some(Transfer { group: 1, to: 3 }),
            "node 2 lags by one entry"
        );
        let mut silent = cluster(1, &[1, 2, 3], &all_mine);
        every_led(&mut silent, |h| {
            h.heartbeat_age_ms.insert(2, Some(5_000));
            h.heartbeat_age_ms.insert(3, None);
        });
        assert_eq!(plan_transfer(1, &silent, &BTreeSet::new(), &POLICY), None, "node 2 silent, node 3 never answered");
        let mut fresh = cluster(1, &[1, 2, 3], &all_mine);
        here(&mut fresh, 1).led_for_ms = 500;
        assert_eq!(
            plan_transfer(1, &fresh, &BTreeSet::new(), &POLICY),
            Some(Transfer { group: 2, to: 2 }),
            "group 1 was just won"
        );
        let mut nothing_matched = cluster(1, &[1, 2, 3], &all_mine);
        every_led(&mut nothing_matched, |h| {
            h.matched.insert(2, None);
            h.matched.insert(3, None);
        });
        assert_eq!(plan_transfer(1, &nothing_matched, &BTreeSet::new(), &POLICY), None);
    }

    #[test]
    fn a_target_must_be_a_voter_of_that_group() {
        let s = Some;
        let mut groups = cluster(1, &[1, 2, 3], &[s(1), s(1), s(1), s(1)]);
        for g in &mut groups {
            g.voters = vec![1, 2];
        }
        // Node 3 is a voter of no group here: it leads none but cannot receive.
        assert_eq!(plan_transfer(1, &groups, &BTreeSet::new(), &POLICY), Some(Transfer { group: 1, to: 2 }));
        // Node 2 is a voter of group 4 only: the others go to node 3.
        for g in &mut groups[..3] {
            g.voters = vec![1, 3];
        }
        assert_eq!(plan_transfer(1, &groups, &BTreeSet::new(), &POLICY), Some(Transfer { group: 4, to: 2 }));
        groups[3].voters = vec![1, 3];
        assert_eq!(plan_transfer(1, &groups, &BTreeSet::new(), &POLICY), Some(Transfer { group: 1, to: 3 }));
    }

    #[test]
    fn no_leadership_goes_back_to_a_node_that_just_handed_some_over() {
        let s = Some;
        // Node 1 led two groups and handed them over (a preStop): 0-2-2.
        let groups = cluster(2, &[1, 2, 3], &[s(2), s(2), s(3), s(3)]);
        assert_eq!(plan_transfer(2, &groups, &BTreeSet::new(), &POLICY), Some(Transfer { group: 1, to: 1 }));
        assert_eq!(plan_transfer(2, &groups, &BTreeSet::from([1]), &POLICY), None);
        // 0-3-1: the gap to node 3 is two as well.
        let more = cluster(2, &[1, 2, 3], &[s(2), s(2), s(3), s(2)]);
        assert_eq!(plan_transfer(2, &more, &BTreeSet::from([1]), &POLICY), Some(Transfer { group: 1, to: 3 }));
    }

    #[test]
    fn a_replica_that_stopped_acknowledging_is_silent() {
        let s = Some;
        let mut groups = cluster(1, &[1, 2, 3], &[s(1), s(2), s(1)]);
        assert_eq!(silent_replicas(1, &groups, &POLICY), BTreeSet::new());
        here(&mut groups, 1).heartbeat_age_ms.insert(3, Some(5_000));
        here(&mut groups, 3).heartbeat_age_ms.insert(2, None);
        assert_eq!(silent_replicas(1, &groups, &POLICY), BTreeSet::from([2, 3]), "one group's view is enough");
        let from_node_2 = cluster(2, &[1, 2, 3], &[s(1), s(2), s(1)]);
        assert_eq!(silent_replicas(2, &from_node_2, &POLICY), BTreeSet::new(), "node 2 hears from everyone");
    }

    proptest! {
        /// Whatever the start, letting the nodes decide (each transfer applied before the next decision, the
        /// deciding node chosen arbitrarily) ends with leaders' counts differing by at most one, within as
        /// many transfers as there are partitions, and every transfer strictly narrows a gap.
        #[test]
        fn nodes_deciding_in_any_order_settle_balanced(
            nodes in 2usize..6,
            start in proptest::collection::vec(0usize..6, 1..24),
            order in proptest::collection::vec(0usize..6, 0..200),
        ) {
            let voters: Vec<NodeId> = (1..=nodes as NodeId).collect();
            let mut leaders: Vec<Option<NodeId>> = start.iter().map(|i| Some(voters[i % nodes])).collect();
            let mut moves = 0;
            let counts = |leaders: &[Option<NodeId>]| -> Vec<usize> {
                voters.iter().map(|v| leaders.iter().filter(|l| **l == Some(*v)).count()).collect()
            };
            // The arbitrary order first, then every node in turn until nobody moves.
            let schedule = order.iter().map(|i| voters[i % nodes]).chain(std::iter::repeat_n(voters.clone(), leaders.len() + 1).flatten());
            for me in schedule {
                if let Some(t) = plan_transfer(me, &cluster(me, &voters, &leaders), &BTreeSet::new(), &POLICY) {
                    let before = counts(&leaders);
                    leaders[t.group as usize - 1] = Some(t.to);
                    let after = counts(&leaders);
                    let gap = |c: &[usize]| c.iter().max().copied().unwrap_or(0) - c.iter().min().copied().unwrap_or(0);
                    prop_assert!(before[me as usize - 1] >= before[t.to as usize - 1] + 2);
                    prop_assert!(gap(&after) <= gap(&before));
                    moves += 1;
                }
            }
            let c = counts(&leaders);
            prop_assert!(c.iter().max().copied().unwrap_or(0) - c.iter().min().copied().unwrap_or(0) <= 1, "{c:?}");
            prop_assert!(moves <= leaders.len(), "{moves} moves for {} partitions", leaders.len());
        }
    }
}
