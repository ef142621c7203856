//! The Raft and background-task tuning flags of `sluice node` and `sluice dev` (passed on to a dev cluster's
//! child nodes as they were given): in, the flags; out, the broker's `RaftTuning` and the intervals of its
//! settings (`node_cmd::settings`).

use clap::Args;
use sluice_broker::RaftTuning;

#[derive(Args, Clone, Debug)]
pub(crate) struct TuningArgs {
    /// Raft heartbeat interval.
    #[arg(long, default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Raft election timeout, lower bound (the upper bound is twice this).
    #[arg(long, default_value_t = 200)]
    pub election_timeout_ms: u64,
    /// Build a snapshot of a group after this many Raft entries.
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every_entries: u64,
    /// Raft entries kept behind a snapshot before the log is purged.
    #[arg(long, default_value_t = 1_000)]
    pub keep_entries_after_snapshot: u64,
    /// `cluster add-node` makes a learner a voter once it is within this many Raft entries of the leader.
    #[arg(long, default_value_t = 5_000)]
    pub learner_catch_up_entries: u64,
    /// `cluster add-node` fails once the new node has not answered its leader for this long (a node not
    /// started, a mistyped `--peer`), instead of waiting 3 minutes for it to catch up.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub learner_contact_timeout_ms: u64,
    /// How often partition leaders apply retention (sluice.dev/retention).
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub retention_check_ms: u64,
    /// How often a node checks whether it leads at least two partitions more than another healthy node,
    /// and if so hands one over (docs/architecture.md, "Leadership balance"); 0 never moves leadership.
    #[arg(long, default_value_t = 1_000)]
    pub leader_balance_ms: u64,
    /// How often the dispatcher commits consumer offsets through Raft. After a crash, events settled within
    /// the last interval (and those in flight) are delivered again.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub dispatch_commit_interval_ms: u64,
    /// How long past its dedupe window a Broker partition with no new event keeps the window in memory; its
    /// next event rebuilds it from disk (docs/ingress.md, "Dedupe"). Memory against reads: never changes what
    /// is stored.
    #[arg(long, default_value_t = sluice_broker::DEFAULT_DEDUPE_IDLE_GRACE_MS)]
    pub dedupe_idle_grace_ms: u64,
}

impl TuningArgs {
    /// The same flags for a child `sluice node` (`sluice dev --nodes N`). Every field is named, so a flag added
    /// here without being passed on does not compile.
    pub(crate) fn to_args(&self) -> Vec<String> {
        let TuningArgs {
            heartbeat_ms,
            election_timeout_ms,
            snapshot_every_entries,
            keep_entries_after_snapshot,
            learner_catch_up_entries,
            learner_contact_timeout_ms,
            retention_check_ms,
            leader_balance_ms,
            dispatch_commit_interval_ms,
            dedupe_idle_grace_ms,
        } = self;
        let flags = [
            ("--heartbeat-ms", heartbeat_ms),
            ("--election-timeout-ms", election_timeout_ms),
            ("--snapshot-every-entries", snapshot_every_entries),
            ("--keep-entries-after-snapshot", keep_entries_after_snapshot),
            ("--learner-catch-up-entries", learner_catch_up_entries),
            ("--learner-contact-timeout-ms", learner_contact_timeout_ms),
            ("--retention-check-ms", retention_check_ms),
            ("--leader-balance-ms", leader_balance_ms),
            ("--dispatch-commit-interval-ms", dispatch_commit_interval_ms),
            ("--dedupe-idle-grace-ms", dedupe_idle_grace_ms),
        ];
        flags.into_iter().flat_map(|(flag, value)| [flag.to_string(), value.to_string()]).collect()
    }
}

impl TuningArgs {
    pub(crate) fn to_tuning(&self) -> anyhow::Result<RaftTuning> {
        if self.heartbeat_ms == 0 || self.election_timeout_ms <= self.heartbeat_ms * 2 {
            anyhow::bail!(
                "--election-timeout-ms ({}) must be more than twice --heartbeat-ms ({})",
                self.election_timeout_ms,
                self.heartbeat_ms
            );
        }
        Ok(RaftTuning {
            heartbeat_ms: self.heartbeat_ms,
            election_timeout_min_ms: self.election_timeout_ms,
            election_timeout_max_ms: self.election_timeout_ms * 2,
            snapshot_every_entries: self.snapshot_every_entries,
            keep_entries_after_snapshot: self.keep_entries_after_snapshot,
            learner_catch_up_entries: self.learner_catch_up_entries,
            learner_contact_timeout_ms: self.learner_contact_timeout_ms,
        })
    }
}
