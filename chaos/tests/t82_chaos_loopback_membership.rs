//! The second CI chaos run, covering what `t80` does not: the loopback network, whose partitions are cuts in
//! the TCP proxy on each peer link (`proxy.rs`), membership changes (remove a node, wipe it, add it back with
//! its old id), and faults that overlap (two held at once). 3 nodes, about 90 s of faults. Fails on any
//! safety violation, like `t80`. `CHAOS_SEED` and `CHAOS_DURATION` override the seed and the fault phase.

use std::time::Duration;

use sluice_chaos::faults::FaultKind;
use sluice_chaos::netns::NetworkKind;
use sluice_chaos::run::{Config, default_sluice_bin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_partitions_membership_and_overlapping_faults() -> anyhow::Result<()> {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(seed) => seed.parse()?,
        Err(_) => sluice_chaos::history::wall_ms(),
    };
    let duration = match std::env::var("CHAOS_DURATION") {
        Ok(text) => sluice_chaos::parse_duration(&text).map_err(anyhow::Error::msg)?,
        Err(_) => Duration::from_secs(90),
    };
    let history = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("t82-chaos-{seed}.jsonl"));
    let mut config = Config::new(default_sluice_bin());
    config.network = NetworkKind::Loopback;
    config.duration = duration;
    config.faults = vec![FaultKind::Kill, FaultKind::Partition, FaultKind::Membership];
    config.max_overlapping_faults = 2;
    config.seed = seed;
    config.history = Some(history.clone());
    let started = std::time::Instant::now();
    let report = sluice_chaos::run(config).await?;
    println!("{report}");
    println!("t82: seed {seed}, history {}, run took {:.0?}", history.display(), started.elapsed());
    let violations = report.violations();
    assert!(violations.is_empty(), "seed {seed}, history {}:\n{}", history.display(), violations.join("\n"));
    assert!(report.faults.values().sum::<usize>() > 0, "faults were injected");
    assert!(report.acknowledged > 0, "events were acknowledged");
    assert!(report.triggers.values().all(|t| t.delivered > 0), "events were delivered");
    Ok(())
}
