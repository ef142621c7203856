//! Sluice's Jepsen-style fault-injection suite (`docs/reliability.md`).
//!
//! A pure core — the [`history`] format, the seeded fault schedule ([`faults`]) and the [`checker`] — and an
//! async shell that runs real `sluice node` processes in per-node network namespaces ([`netns`]) or on
//! loopback with a cuttable TCP proxy per peer link, optionally over the power-loss filesystem, drives the
//! [`workload`] (producers over HTTP, recording subscribers behind Triggers), injects faults on the node
//! processes (`cluster`), heals, reads every node's log back and checks the history ([`run`], set up by
//! [`config`]).

mod admin_calls;
pub mod checker;
pub mod ci;
mod cluster;
pub mod config;
mod drain;
pub mod faults;
pub mod history;
pub mod netns;
pub mod powerloss;
pub mod proxy;
pub mod run;
pub mod workload;

pub use checker::{Report, check};
pub use config::Config;
pub use run::run;

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("{0}")]
    Setup(String),
    #[error("admin API: {0}")]
    Admin(#[from] tonic::Status),
    #[error("admin connection: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("HTTP client: {0}")]
    Http(#[from] reqwest::Error),
    #[error("{0}")]
    History(String),
    #[error("timed out after {after:?}: {what}")]
    Timeout { what: String, after: std::time::Duration },
}

impl ChaosError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        ChaosError::Io { what: what.into(), source }
    }
}

/// Parses a duration such as `3m`, `90s`, `500ms`, `1h` or a number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("not a duration: {text:?} (e.g. 3m, 90s, 500ms)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("unknown unit {unit:?} in {text:?} (ms, s, m, h)")),
    };
    Ok(std::time::Duration::from_secs_f64(seconds))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn durations_parse() {
        assert_eq!(super::parse_duration("3m"), Ok(Duration::from_secs(180)));
        assert_eq!(super::parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(super::parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(super::parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert!(super::parse_duration("3 weeks").is_err());
    }
}
