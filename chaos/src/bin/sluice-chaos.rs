//! `sluice-chaos`: one fault-injection run against real `sluice node` processes; prints the checker's
//! report and exits 1 on any safety violation (2 when the run itself failed). `sluice-chaos check FILE`
//! checks a recorded history again.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use sluice_chaos::config::{Config, default_sluice_bin};
use sluice_chaos::faults::{FaultKind, Timing};
use sluice_chaos::netns::NetworkKind;

#[derive(Parser, Debug)]
#[command(name = "sluice-chaos", about = "Jepsen-style fault injection for Sluice (docs/reliability.md)")]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Partitions of the cluster.
    #[arg(long, default_value_t = 2)]
    partitions: u32,
    /// Length of the fault phase (e.g. 3m, 90s).
    #[arg(long, default_value = "3m", value_parser = sluice_chaos::parse_duration)]
    duration: std::time::Duration,
    /// Length of the quiet phase before the faults.
    #[arg(long, default_value = "5s", value_parser = sluice_chaos::parse_duration)]
    quiet: std::time::Duration,
    /// Faults: a list (comma- or plus-separated) of kill, pause, partition, membership, restart, power,
    /// power-all, and all (the first five); or none.
    #[arg(long, default_value = "kill,pause,partition", value_parser = parse_faults)]
    faults: FaultList,
    /// Seed of the fault schedule, the producers' node choices and the subscriber's failures (default: time).
    #[arg(long)]
    seed: Option<u64>,
    /// Write the history (JSON lines) here.
    #[arg(long)]
    history: Option<PathBuf>,
    /// Producers (each its own source).
    #[arg(long, default_value_t = 4)]
    producers: usize,
    /// Events per second per producer.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    #[arg(long, value_enum, default_value_t = Net::Auto)]
    network: Net,
    /// The sluice binary (default: next to this one, or SLUICE_BIN).
    #[arg(long)]
    sluice_bin: Option<PathBuf>,
    /// Switch on a planted bug in the nodes (needs a build with feature sluice/planted-bugs).
    #[arg(long)]
    planted_bug: Option<String>,
    /// How long the drain waits for the subscribers to catch up.
    #[arg(long, default_value = "2m", value_parser = sluice_chaos::parse_duration)]
    drain_timeout: std::time::Duration,
    /// Probability that the failing Trigger's subscriber answers an attempt with 500.
    #[arg(long, default_value_t = 0.3)]
    fail_rate: f64,
    /// Probability that a kill or pause hits a partition's leader.
    #[arg(long, default_value_t = 0.6)]
    leader_bias: f64,
    /// Pause between faults, in ms (MIN..MAX).
    #[arg(long, default_value = "2000..5000", value_parser = parse_range)]
    gap_ms: (u64, u64),
    /// How long a fault lasts, in ms (MIN..MAX).
    #[arg(long, default_value = "3000..10000", value_parser = parse_range)]
    hold_ms: (u64, u64),
    /// Do not wait for every node to be ready after a fault: the next one may hit a cluster still recovering.
    #[arg(long)]
    no_recovery: bool,
    /// Hold up to this many faults at once (they never hit the same node; a membership change runs alone).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=8))]
    overlap: u64,
    /// Keep the nodes' data and logs in this directory.
    #[arg(long)]
    keep: Option<PathBuf>,
    /// Transport encryption on: mutual TLS between the nodes (permissive mode; the workload stays plaintext).
    #[arg(long)]
    tls: bool,
    /// Nodes build a snapshot every N Raft entries and keep N/4 behind it (node default: 20,000 and
    /// 1,000), so that a node back from a fault catches up through a snapshot, not only the log.
    #[arg(long, value_parser = clap::value_parser!(u64).range(4..))]
    snapshot_every_entries: Option<u64>,
    /// The Broker's dedupe window (e.g. 3s; default: the Broker's own, 2 minutes), with nodes that give an
    /// idle stream's window up right after it: a node held back by a fault releases its windows and rebuilds
    /// them as it catches up. An event stored again further apart than the window is then no violation.
    #[arg(long, value_parser = sluice_chaos::parse_duration)]
    dedupe_window: Option<std::time::Duration>,
}

#[derive(Clone, Debug)]
struct FaultList(Vec<FaultKind>);

fn parse_range(text: &str) -> Result<(u64, u64), String> {
    let (low, high) = text.split_once("..").ok_or_else(|| format!("expected MIN..MAX, got {text:?}"))?;
    let low: u64 = low.trim().parse().map_err(|e| format!("{low:?}: {e}"))?;
    let high: u64 = high.trim().parse().map_err(|e| format!("{high:?}: {e}"))?;
    if low > high {
        return Err(format!("{low} > {high}"));
    }
    Ok((low, high))
}

fn parse_faults(text: &str) -> Result<FaultList, String> {
    FaultKind::parse_list(text).map(FaultList)
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a recorded history file again and print its report.
    Check { history: PathBuf },
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Net {
    Auto,
    Namespaces,
    Loopback,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(Command::Check { history }) = &args.command {
        return match sluice_chaos::history::load(history) {
            Ok(entries) => report(&sluice_chaos::check(&entries)),
            Err(e) => {
                eprintln!("sluice-chaos: {e}");
                ExitCode::from(2)
            }
        };
    }
    let seed = args.seed.unwrap_or_else(sluice_chaos::history::wall_ms);
    let mut config = Config::new(args.sluice_bin.clone().unwrap_or_else(default_sluice_bin));
    config.nodes = args.nodes.max(1);
    config.partitions = args.partitions.max(1);
    config.duration = args.duration;
    config.quiet = args.quiet;
    config.faults = args.faults.0.clone();
    config.seed = seed;
    config.history = args.history.clone();
    config.producers = args.producers.max(1);
    config.rate = args.rate;
    config.network = match args.network {
        Net::Auto => NetworkKind::Auto,
        Net::Namespaces => NetworkKind::Namespaces,
        Net::Loopback => NetworkKind::Loopback,
    };
    config.planted_bug = args.planted_bug.clone();
    config.drain_timeout = args.drain_timeout;
    config.fail_rate = args.fail_rate;
    config.timing = Timing { gap_ms: args.gap_ms, hold_ms: args.hold_ms, leader_bias: args.leader_bias };
    config.wait_ready_between_faults = !args.no_recovery;
    config.max_overlapping_faults = args.overlap as usize;
    config.keep_dir = args.keep.clone();
    config.tls = args.tls;
    config.snapshot_every_entries = args.snapshot_every_entries;
    config.dedupe_window = args.dedupe_window;
    eprintln!("sluice-chaos: seed {seed}");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("sluice-chaos: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(sluice_chaos::run(config)) {
        Ok(r) => report(&r),
        Err(e) => {
            eprintln!("sluice-chaos: the run failed (seed {seed}): {e}");
            ExitCode::from(2)
        }
    }
}

fn report(report: &sluice_chaos::Report) -> ExitCode {
    println!("{report}");
    if report.violations().is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) }
}
