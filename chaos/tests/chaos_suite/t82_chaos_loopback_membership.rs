//! The second CI chaos run, covering what `t80` does not: the loopback network, whose partitions are cuts in
//! the TCP proxy on each peer link (`proxy.rs`), membership changes (remove a node, wipe it, add it back with
//! its old id), faults that overlap (two held at once), and a dedupe window short enough (3 s, the nodes
//! giving an idle stream's window up right after it) that a node cut off or removed gives its windows up and
//! rebuilds them from disk as it catches up (a producer's retry further apart than the window is stored
//! again, and allowed). 3 nodes, about 90 s of faults. Fails on any safety violation, like `t80`.
//! `CHAOS_SEED` and `CHAOS_DURATION` override the seed and the fault phase.

use std::time::Duration;

use sluice_chaos::faults::FaultKind;
use sluice_chaos::netns::NetworkKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_partitions_membership_and_overlapping_faults() -> anyhow::Result<()> {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut config = sluice_chaos::ci::config("t82", tmp, Duration::from_secs(90)).map_err(anyhow::Error::msg)?;
    config.network = NetworkKind::Loopback;
    config.faults = vec![FaultKind::Kill, FaultKind::Partition, FaultKind::Membership];
    config.max_overlapping_faults = 2;
    config.dedupe_window = Some(Duration::from_secs(3));
    let started = std::time::Instant::now();
    let report = sluice_chaos::run(config.clone()).await?;
    sluice_chaos::ci::verdict("t82", &config, &report, started.elapsed()).map_err(anyhow::Error::msg)
}
