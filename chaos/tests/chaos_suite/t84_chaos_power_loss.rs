//! Power loss in CI: every node's data on the power-loss filesystem (`sluice-lazyfs`), a partition's leader or
//! a random node cut (kill -9, and what its disk had not fsynced dropped) and restarted, under producers and
//! Triggers. About 45 s of faults. Fails on any safety violation, like `t80`. `CHAOS_SEED` and
//! `CHAOS_DURATION` override the seed and the fault phase.

use std::time::Duration;

use sluice_chaos::faults::{FaultKind, Timing};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_events_survive_power_cuts_of_leaders_and_followers() -> anyhow::Result<()> {
    let tmp = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let mut config = sluice_chaos::ci::config("t84", tmp, Duration::from_secs(45)).map_err(anyhow::Error::msg)?;
    config.faults = vec![FaultKind::Power];
    config.timing = Timing { gap_ms: (2_000, 4_000), hold_ms: (2_000, 5_000), leader_bias: 0.6 };
    let started = std::time::Instant::now();
    let report = sluice_chaos::run(config.clone()).await?;
    sluice_chaos::ci::verdict("t84", &config, &report, started.elapsed()).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(report.faults.get("power").is_some_and(|&n| n >= 2), "power cuts: {:?}", report.faults);
    Ok(())
}
