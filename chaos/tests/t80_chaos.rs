//! The CI chaos run: 3 nodes, about 3 minutes of kill -9, pause, partition and graceful restart faults,
//! producers and Trigger deliveries throughout; then heal, drain, read every node's log and check the history. Fails on
//! any safety violation (lost, unexpected, divergence, offset conflicts, gaps, duplicates in the log,
//! dispatch incomplete, committed offsets going back). `CHAOS_SEED` and `CHAOS_DURATION` (e.g. `60s`)
//! override the seed (default: the time) and the fault phase.

use std::time::Duration;

use sluice_chaos::faults::FaultKind;
use sluice_chaos::run::{Config, default_sluice_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_survive_kill_pause_partitions_and_restarts() -> anyhow::Result<()> {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(seed) => seed.parse()?,
        Err(_) => sluice_chaos::history::wall_ms(),
    };
    let duration = match std::env::var("CHAOS_DURATION") {
        Ok(text) => sluice_chaos::parse_duration(&text).map_err(anyhow::Error::msg)?,
        Err(_) => Duration::from_secs(180),
    };
    let history = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("t80-chaos-{seed}.jsonl"));
    let mut config = Config::new(default_sluice_bin());
    config.nodes = 3;
    config.partitions = 2;
    config.duration = duration;
    config.faults = vec![FaultKind::Kill, FaultKind::Pause, FaultKind::Partition, FaultKind::Restart];
    config.seed = seed;
    config.history = Some(history.clone());
    let started = std::time::Instant::now();
    let report = sluice_chaos::run(config).await?;
    println!("{report}");
    println!("t80: seed {seed}, history {}, run took {:.0?}", history.display(), started.elapsed());
    let violations = report.violations();
    assert!(violations.is_empty(), "seed {seed}, history {}:\n{}", history.display(), violations.join("\n"));
    assert!(report.faults.values().sum::<usize>() > 0, "faults were injected");
    assert!(report.acknowledged > 0, "events were acknowledged");
    assert!(report.triggers.values().all(|t| t.delivered > 0), "events were delivered");
    Ok(())
}
