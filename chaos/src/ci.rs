//! What the CI chaos tests (`chaos/tests/t8*`) share: the seed and the fault phase from the environment
//! (`CHAOS_SEED`, default the time; `CHAOS_DURATION`, e.g. `60s`), a history file per run, and one verdict.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::checker::Report;
use crate::config::{Config, default_sluice_bin};

/// A run's configuration for CI test `test` (e.g. `t80`), writing its history under `tmp_dir`.
pub fn config(test: &str, tmp_dir: &Path, default_duration: Duration) -> Result<Config, String> {
    let seed = match std::env::var("CHAOS_SEED") {
        Ok(seed) => seed.parse().map_err(|e| format!("CHAOS_SEED={seed:?}: {e}"))?,
        Err(_) => crate::history::wall_ms(),
    };
    let duration = match std::env::var("CHAOS_DURATION") {
        Ok(text) => crate::parse_duration(&text)?,
        Err(_) => default_duration,
    };
    let mut config = Config::new(default_sluice_bin());
    config.duration = duration;
    config.seed = seed;
    config.history = Some(history_path(test, tmp_dir, seed));
    Ok(config)
}

fn history_path(test: &str, tmp_dir: &Path, seed: u64) -> PathBuf {
    tmp_dir.join(format!("{test}-chaos-{seed}.jsonl"))
}

/// Prints the report and fails (with the seed and the history to check again) on any safety violation, or
/// when the run did not exercise anything (no fault, nothing acknowledged or delivered).
pub fn verdict(test: &str, config: &Config, report: &Report, took: Duration) -> Result<(), String> {
    let history = config.history.as_deref().map(Path::display);
    let history = history.map(|h| h.to_string()).unwrap_or_default();
    println!("{report}");
    println!("{test}: seed {}, history {history}, run took {took:.0?}", config.seed);
    let violations = report.violations();
    if !violations.is_empty() {
        return Err(format!("seed {}, history {history}:\n{}", config.seed, violations.join("\n")));
    }
    if report.faults.values().sum::<usize>() == 0 {
        return Err("no fault was injected".into());
    }
    if report.acknowledged == 0 {
        return Err("no event was acknowledged".into());
    }
    if report.triggers.is_empty() || !report.triggers.values().all(|t| t.delivered > 0) {
        return Err("a Trigger delivered nothing".into());
    }
    Ok(())
}
