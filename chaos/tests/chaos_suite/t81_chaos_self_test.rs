//! The harness can fail: short chaos runs against nodes with a planted bug (test-only feature
//! `planted-bugs` of `sluice`, switched on per node by `SLUICE_PLANTED_BUG`) must be reported.
//!
//! - `ack-before-commit`: ingress answers 202 and appends 300 ms later. Producers publish to every node all
//!   the time, so every kill -9 drops the acknowledged events buffered in the killed node: lost > 0.
//! - `commit-before-delivery`: the dispatcher commits a consumer's offset as read, before the deliveries
//!   below it settle. The failing Trigger's subscriber fails most attempts (retries with backoff keep dozens of
//!   events in flight), and every kill hits a partition's leader (the node dispatching it), so the next leader
//!   resumes past events that were never delivered nor dead-lettered: dispatch incomplete > 0.
//!
//! - `skip-wal-fsync` and `ack-before-fsync`: the WAL is never fsynced, or the log store reports entries
//!   flushed before the fsync covers them. A kill -9 cannot tell (the OS keeps its cache); a power cut of every
//!   node at once (`power-all`, the nodes' data on the power-loss filesystem) loses what they acknowledged.
//!
//! - `offsets-apply-at-random`: each node's state machine drops about half of the offset commits, at
//!   random, so its committed offsets are not a function of the log. No fault is needed: after the drain the
//!   nodes' final committed offsets differ (offsets apart > 0).
//!
//! Needs the workspace built with `--features sluice/planted-bugs` (scripts/test.sh does).

use std::time::Duration;

use sluice_chaos::checker::Report;
use sluice_chaos::config::{Config, default_sluice_bin};
use sluice_chaos::faults::{FaultKind, Timing};

fn config(bug: &str, seed: u64) -> Config {
    let mut config = Config::new(default_sluice_bin());
    config.seed = seed;
    config.duration = Duration::from_secs(30);
    config.quiet = Duration::from_secs(3);
    config.faults = vec![FaultKind::Kill];
    config.planted_bug = Some(bug.to_string());
    config.drain_timeout = Duration::from_secs(20);
    config.timing = Timing { gap_ms: (2_000, 3_000), hold_ms: (2_000, 4_000), leader_bias: 1.0 };
    config.history = Some(std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("t81-{bug}-{seed}.jsonl")));
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_reports_planted_bugs() -> anyhow::Result<()> {
    let seed = sluice_chaos::history::wall_ms();
    let hint = "is `sluice` built with --features sluice/planted-bugs?";

    let lost = sluice_chaos::run(config("ack-before-commit", seed)).await?;
    println!("{lost}");

    let mut undelivered = config("commit-before-delivery", seed);
    undelivered.fail_rate = 0.6;
    let undelivered = sluice_chaos::run(undelivered).await?;
    println!("{undelivered}");

    assert!(lost.faults.get("kill").is_some_and(|&n| n >= 2), "kills were injected: {:?}", lost.faults);
    assert!(!lost.lost.is_empty(), "ack-before-commit (seed {seed}): no lost event reported; {hint}");
    assert!(lost.violations().iter().any(|v| v.contains("acknowledged events lost")));
    // Lost because the bug dropped them, not because no node could be read (every acknowledged event then
    // counts as lost, whatever the bug): every node was read, and most of what they acknowledged was there.
    assert!(lost.unrecovered.is_empty() && lost.crashed.is_empty(), "ack-before-commit (seed {seed}): {lost}");
    assert!(lost.lost.len() < lost.acknowledged, "ack-before-commit (seed {seed}): nothing found in the reads");
    assert!(
        undelivered.dispatch_incomplete() > 0,
        "commit-before-delivery (seed {seed}): no incomplete dispatch reported; {hint}"
    );
    assert!(undelivered.lost.is_empty(), "that bug loses no acknowledged event");
    Ok(())
}

/// A short run with every node cut at once, against nodes with `bug` (none: `None`).
async fn power_all(bug: Option<&str>, seed: u64) -> anyhow::Result<Report> {
    let mut config = config(bug.unwrap_or_default(), seed);
    config.planted_bug = bug.map(str::to_string);
    config.faults = vec![FaultKind::PowerAll];
    config.duration = Duration::from_secs(12);
    config.timing = Timing { gap_ms: (2_000, 3_000), hold_ms: (2_000, 3_000), leader_bias: 0.0 };
    config.wait_ready_between_faults = false;
    // The nodes may not recover at all (the cluster's own init can be lost): no need to wait long to say so.
    config.recovery_timeout = Duration::from_secs(10);
    config.drain_timeout = Duration::from_secs(10);
    Ok(sluice_chaos::run(config).await?)
}

/// The fsync bugs, reported after power cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_reports_planted_fsync_bugs_after_power_cuts() -> anyhow::Result<()> {
    let seed = sluice_chaos::history::wall_ms();
    let hint = "is `sluice` built with --features sluice/planted-bugs?";
    for bug in ["skip-wal-fsync", "ack-before-fsync"] {
        let report = power_all(Some(bug), seed).await?;
        println!("{report}");
        assert!(report.faults.get("power-all").is_some_and(|&n| n >= 1), "cuts were made: {:?}", report.faults);
        assert!(!report.lost.is_empty(), "{bug} (seed {seed}): no lost event reported; {hint}");
    }
    // The same cuts without a bug lose nothing, and every node recovers and is read: the losses above are the
    // bugs', not a harness that reads nothing after a cut of every node (every acknowledged event then counts
    // as lost).
    let control = power_all(None, seed).await?;
    println!("{control}");
    assert!(control.faults.get("power-all").is_some_and(|&n| n >= 1), "cuts were made: {:?}", control.faults);
    assert!(control.violations().is_empty(), "no planted bug (seed {seed}): {:?}", control.violations());
    assert!(control.acknowledged > 0 && control.stored >= control.acknowledged, "{control}");
    Ok(())
}

/// A state machine that is not a function of its log, found without any fault: the nodes' committed offsets
/// differ at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_reports_committed_offsets_that_differ_between_nodes() -> anyhow::Result<()> {
    let seed = sluice_chaos::history::wall_ms();
    let mut config = config("offsets-apply-at-random", seed);
    config.faults = Vec::new();
    config.duration = Duration::from_secs(8);
    // The drain waits on the first node's committed offsets, which the bug may leave short for good.
    config.drain_timeout = Duration::from_secs(5);
    config.recovery_timeout = Duration::from_secs(5);
    let report = sluice_chaos::run(config).await?;
    println!("{report}");
    assert!(
        !report.offsets_apart.is_empty(),
        "offsets-apply-at-random (seed {seed}): no committed offsets apart; is `sluice` built with --features \
         sluice/planted-bugs?"
    );
    assert!(report.lost.is_empty() && report.divergent.is_empty(), "the bug touches offsets only: {report}");
    Ok(())
}
