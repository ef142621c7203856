//! The CI chaos run: 3 nodes in network namespaces, about 3 minutes of kill -9, pause, partition and
//! graceful restart faults, producers and Trigger deliveries throughout; then heal, drain, read every node's
//! log and check the history. Fails on any safety violation (lost, unexpected, divergence, offset conflicts,
//! gaps, duplicates in the log, dispatch incomplete, committed offsets going back). `CHAOS_SEED` and
//! `CHAOS_DURATION` (e.g. `60s`) override the seed (default: the time) and the fault phase.

use std::time::Duration;

use sluice_chaos::faults::FaultKind;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_kill_pause_partitions_and_restarts() -> anyhow::Result<()> {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut config = sluice_chaos::ci::config("t80", tmp, Duration::from_secs(180)).map_err(anyhow::Error::msg)?;
    config.nodes = 3;
    config.partitions = 2;
    config.faults = vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Restart];
    let started = std::time::Instant::now();
    let report = sluice_chaos::run(config.clone()).await?;
    sluice_chaos::ci::verdict("t80", &config, &report, started.elapsed()).map_err(anyhow::Error::msg)
}
