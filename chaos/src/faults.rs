//! Faults: what they are (recorded in the history) and the seeded schedule that picks them (pure). The
//! run applies them ([`crate::run`]).
//!
//! The list is open (disk corruption is a later variant of [`FaultKind`] and [`Fault`]); the checker does not
//! match on the fault list except for leader kills.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use rand::Rng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

/// The kinds of fault a run may inject (`--faults`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// `kill -9` of a partition's leader or of a random node, restarted after the hold.
    Kill,
    /// SIGSTOP of a partition's leader or of a random node, SIGCONT after the hold.
    Pause,
    /// Network partitions between nodes (namespaces only): one node isolated, a partition's leader in the
    /// minority, or two majorities that overlap in one node.
    Partition,
    /// Membership change: remove a node from the cluster (admin RemoveNode), kill it and wipe its data, then
    /// start it empty and add it again (admin AddNode).
    Membership,
    /// Graceful restart: SIGTERM to a partition's leader or a random node (kill -9 if it has not exited
    /// within 10 s), started again after the hold.
    Restart,
    /// Power loss of a partition's leader or a random node: kill -9, and what its disk had not fsynced is
    /// dropped (`powerloss`); started again after the hold. Puts every node's data on the power-loss
    /// filesystem.
    Power,
    /// Power loss of every node at once. Not in `all`: a mode of its own.
    PowerAll,
}

impl FaultKind {
    /// What `all` means: the faults that need no special filesystem.
    pub const ALL: [FaultKind; 5] =
        [FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Membership, FaultKind::Restart];
    /// Every kind `--faults` takes by name.
    pub const NAMED: [FaultKind; 7] = [
        FaultKind::Kill,
        FaultKind::Pause,
        FaultKind::Partition,
        FaultKind::Membership,
        FaultKind::Restart,
        FaultKind::Power,
        FaultKind::PowerAll,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Pause => "pause",
            FaultKind::Partition => "partition",
            FaultKind::Membership => "membership",
            FaultKind::Restart => "restart",
            FaultKind::Power => "power",
            FaultKind::PowerAll => "power-all",
        }
    }

    /// Whether the node's data directory must sit on the power-loss filesystem for it.
    pub fn cuts_power(self) -> bool {
        matches!(self, FaultKind::Power | FaultKind::PowerAll)
    }

    /// `none`, or a comma-separated list of kinds and `all` (`all,power`).
    pub fn parse_list(text: &str) -> Result<Vec<FaultKind>, String> {
        if matches!(text.trim(), "none" | "") {
            return Ok(Vec::new());
        }
        let mut kinds = BTreeSet::new();
        for part in text.split([',', '+']) {
            if part.trim() == "all" {
                kinds.extend(Self::ALL);
                continue;
            }
            let kind = Self::NAMED.into_iter().find(|k| k.name() == part.trim()).ok_or_else(|| {
                format!(
                    "unknown fault {part:?} (kill, pause, partition, membership, restart, power, power-all, none, all)"
                )
            })?;
            kinds.insert(kind);
        }
        Ok(kinds.into_iter().collect())
    }
}

/// Whom a fault hits, before the run resolves it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    /// The current leader of this Raft group (1..=partitions: a partition's group).
    LeaderOf(u32),
    /// This node id.
    Node(u64),
}

/// A fault as planned by the schedule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Planned {
    Kill(Target),
    Pause(Target),
    /// Cut the target off from every other node.
    Isolate(Target),
    /// `bridge` sees everyone; every node of `left` is cut off from every node of `right`.
    Bridge {
        bridge: u64,
        left: Vec<u64>,
        right: Vec<u64>,
    },
    /// Remove the target from the cluster, wipe it, add it again.
    Membership(Target),
    Restart(Target),
    /// Kill the target and drop what its disk had not fsynced.
    Power(Target),
    /// The same for every node at once.
    PowerAll,
}

/// One step of the schedule: wait `gap` (the cluster recovers), inject, hold, heal.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub gap: Duration,
    pub planned: Planned,
    pub hold: Duration,
}

/// Timing of the schedule.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Range of the pause between faults.
    pub gap_ms: (u64, u64),
    /// Range of how long a fault lasts.
    pub hold_ms: (u64, u64),
    /// Probability that a kill or pause hits a partition's leader (else a random node).
    pub leader_bias: f64,
}

impl Default for Timing {
    fn default() -> Self {
        Self { gap_ms: (2_000, 5_000), hold_ms: (3_000, 10_000), leader_bias: 0.6 }
    }
}

/// The next fault, drawn from `rng` (seeded: the same seed gives the same schedule).
pub fn next_step(rng: &mut StdRng, kinds: &[FaultKind], nodes: u64, partitions: u32, timing: Timing) -> Option<Step> {
    let kind = *kinds.get(rng.random_range(0..kinds.len().max(1)))?;
    let gap = Duration::from_millis(rng.random_range(timing.gap_ms.0..=timing.gap_ms.1));
    let hold = Duration::from_millis(rng.random_range(timing.hold_ms.0..=timing.hold_ms.1));
    let target = |rng: &mut StdRng| {
        if rng.random_bool(timing.leader_bias.clamp(0.0, 1.0)) {
            Target::LeaderOf(rng.random_range(1..=partitions.max(1)))
        } else {
            Target::Node(rng.random_range(1..=nodes))
        }
    };
    let planned = match kind {
        FaultKind::Kill => Planned::Kill(target(rng)),
        FaultKind::Pause => Planned::Pause(target(rng)),
        FaultKind::Membership => Planned::Membership(target(rng)),
        FaultKind::Restart => Planned::Restart(target(rng)),
        FaultKind::Power => Planned::Power(target(rng)),
        FaultKind::PowerAll => Planned::PowerAll,
        FaultKind::Partition => match rng.random_range(0..3) {
            0 => Planned::Isolate(Target::Node(rng.random_range(1..=nodes))),
            1 => Planned::Isolate(Target::LeaderOf(rng.random_range(1..=partitions.max(1)))),
            _ => {
                let mut ids: Vec<u64> = (1..=nodes).collect();
                ids.shuffle(rng);
                let bridge = ids.remove(0);
                let right = ids.split_off(ids.len() / 2);
                Planned::Bridge { bridge, left: ids, right }
            }
        },
    };
    Some(Step { gap, planned, hold })
}

/// A fault as injected (in the history).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Fault {
    Kill {
        /// Sequence number of the fault in the run.
        n: u64,
        node: u64,
        /// Set when the node was killed as the leader of this group.
        leader_of_group: Option<u32>,
    },
    Pause {
        n: u64,
        node: u64,
        leader_of_group: Option<u32>,
    },
    Partition {
        n: u64,
        /// "isolate", "leader-minority" or "bridge".
        name: String,
        /// The cut links (each once, smaller id first).
        cut: Vec<(u64, u64)>,
        leader_of_group: Option<u32>,
    },
    Membership {
        n: u64,
        node: u64,
        leader_of_group: Option<u32>,
    },
    Restart {
        n: u64,
        node: u64,
        leader_of_group: Option<u32>,
        /// Whether the node exited on SIGTERM in time (else it was killed).
        graceful: bool,
    },
    /// A power cut of one node: `dropped_bytes` of written data its disk had not fsynced were lost, and
    /// `undone_entries` directory entries not made durable.
    Power {
        n: u64,
        node: u64,
        leader_of_group: Option<u32>,
        dropped_bytes: u64,
        undone_entries: u64,
    },
    /// A power cut of every node at once.
    PowerAll {
        n: u64,
        dropped_bytes: u64,
        undone_entries: u64,
    },
}

impl Fault {
    /// The node a kill, pause or membership change holds (a partition holds links, not a node).
    pub fn node(&self) -> Option<u64> {
        match self {
            Fault::Kill { node, .. }
            | Fault::Pause { node, .. }
            | Fault::Membership { node, .. }
            | Fault::Restart { node, .. }
            | Fault::Power { node, .. } => Some(*node),
            Fault::Partition { .. } | Fault::PowerAll { .. } => None,
        }
    }

    pub fn kind(&self) -> FaultKind {
        match self {
            Fault::Kill { .. } => FaultKind::Kill,
            Fault::Pause { .. } => FaultKind::Pause,
            Fault::Partition { .. } => FaultKind::Partition,
            Fault::Membership { .. } => FaultKind::Membership,
            Fault::Restart { .. } => FaultKind::Restart,
            Fault::Power { .. } => FaultKind::Power,
            Fault::PowerAll { .. } => FaultKind::PowerAll,
        }
    }
}

/// The links between `a` and every node of `b`, as the blocked map of both directions (node ids).
pub fn cut_links(cut: &[(u64, u64)]) -> BTreeMap<u64, BTreeSet<u64>> {
    let mut blocked: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for &(a, b) in cut {
        blocked.entry(a).or_default().insert(b);
        blocked.entry(b).or_default().insert(a);
    }
    blocked
}

/// The links cut by isolating `node` among `nodes`.
pub fn isolate(node: u64, nodes: u64) -> Vec<(u64, u64)> {
    (1..=nodes).filter(|&other| other != node).map(|other| (node.min(other), node.max(other))).collect()
}

/// The links cut by a bridge partition.
pub fn bridge(left: &[u64], right: &[u64]) -> Vec<(u64, u64)> {
    let mut cut: Vec<(u64, u64)> =
        left.iter().flat_map(|&a| right.iter().map(move |&b| (a.min(b), a.max(b)))).collect();
    cut.sort_unstable();
    cut
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..20).map(|_| next_step(&mut rng, &FaultKind::ALL, 3, 2, Timing::default())).collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }

    #[test]
    fn bridge_partitions_leave_two_overlapping_majorities() {
        let mut rng = StdRng::seed_from_u64(1);
        for _ in 0..200 {
            if let Some(Step { planned: Planned::Bridge { bridge: b, left, right }, .. }) =
                next_step(&mut rng, &[FaultKind::Partition], 5, 2, Timing::default())
            {
                assert!(!left.contains(&b) && !right.contains(&b));
                assert_eq!(left.len() + right.len(), 4);
                assert!(left.len() + 1 >= 3 && right.len() + 1 >= 3, "each side with the bridge is a majority");
            }
        }
        assert_eq!(bridge(&[1], &[3]), vec![(1, 3)]);
        assert_eq!(isolate(2, 3), vec![(1, 2), (2, 3)]);
        let blocked = cut_links(&isolate(2, 3));
        assert_eq!(blocked[&2], BTreeSet::from([1, 3]));
        assert_eq!(blocked[&1], BTreeSet::from([2]));
    }

    #[test]
    fn fault_lists_parse() {
        assert_eq!(FaultKind::parse_list("none"), Ok(vec![]));
        assert_eq!(FaultKind::parse_list("all"), Ok(FaultKind::ALL.to_vec()));
        assert_eq!(FaultKind::parse_list("partition+kill"), Ok(vec![FaultKind::Kill, FaultKind::Partition]));
        assert!(FaultKind::parse_list("flood").is_err());
        let mut with_power = FaultKind::ALL.to_vec();
        with_power.push(FaultKind::Power);
        assert_eq!(FaultKind::parse_list("all,power"), Ok(with_power));
        assert_eq!(FaultKind::parse_list("power-all"), Ok(vec![FaultKind::PowerAll]));
        assert!(!FaultKind::ALL.iter().any(|k| k.cuts_power()), "`all` needs no special filesystem");
    }
}
