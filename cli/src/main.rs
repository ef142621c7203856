//! The `sluice` binary: `sluice dev` (everything in one process, or a local
//! 3-node cluster), `sluice node` (a cluster member), and the operators' and
//! platform teams' commands over a node's admin API: `sluice cluster`
//! (init, status, membership, leadership, pre-stop), `apply`/`get`/`describe`/
//! `delete` (Knative YAML), `events`, `trigger`, `dlq`, `logs`; plus `crds` and
//! `kube-controller` for Kubernetes.

/// jemalloc, not glibc's malloc, for Rust and for RocksDB's C++ alike (it replaces `malloc` for the whole
/// process): in the node's profile glibc's allocator took about a quarter of the CPU (chunk coalescing under
/// many threads), and RocksDB's blocks and memtables freed into glibc's per-thread arenas stayed in the RSS
/// (docs/benchmarks.md, sessions 11 and 14).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start: a background thread gives freed pages back to the system after a
/// second (the default waits for more allocations, 10 s), so a drained backlog does not stay in the RSS, and
/// gives them back outright (`muzzy_decay_ms:0`: not first marked lazily freeable, which the kernel leaves
/// in the RSS until it needs the memory); and two arenas, not four per core: each arena keeps its own freed
/// pages for a second, and with eight of them (two cores) a 10 M-event backlog peaked at 260-264 MiB of RSS
/// against 239 MiB with two, at the same ingest rate (docs/benchmarks.md, "Session 26"). Threads take most
/// small allocations from their own caches, so the arenas' locks see little traffic; `MALLOC_CONF` (read
/// after this) overrides any of it, e.g. `narenas:8`.
/// jemalloc reads a `const char *` by this name; a `&u8` to the first byte of a NUL-terminated string is one.
#[allow(unsafe_code, non_upper_case_globals)]
#[unsafe(export_name = "malloc_conf")]
pub static malloc_conf: &u8 = &b"background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,narenas:2\0"[0];

/// `println!` for the command paths: writes to standard output and returns the `io::Result` instead of
/// panicking on a closed pipe (`sluice describe … | head -1`); `main` exits quietly on a broken pipe.
macro_rules! outln {
    () => {
        $crate::output::write_stdout(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// `print!` for the command paths (see `outln!`).
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::write_stdout(format_args!($($arg)*))
    };
}

mod admin_channel;
mod admin_cli;
mod allocator;
mod cluster_cmd;
mod dev;
mod dlq_cmd;
mod events_cmd;
mod jsonpath;
mod kube_cmd;
mod logs_cmd;
mod node_cmd;
mod output;
mod resources_cmd;
mod resources_print;
mod security_args;
mod selector;
mod statefulset;
mod table;
mod trigger_cmd;
mod tuning_args;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "sluice", version, about = "A Raft-replicated CloudEvents broker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    credentials: admin_channel::AdminCredentialArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run Sluice for development: one node in this process, or `--nodes 3` local processes.
    Dev(dev::DevArgs),
    /// Run a cluster member.
    Node(node_cmd::NodeArgs),
    /// Initialise a cluster or show its status.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCommand),
    /// Create or update Knative objects from YAML (like kubectl apply).
    Apply(resources_cmd::ApplyArgs),
    /// List or show Knative objects (like kubectl get: -o name|jsonpath=…, -l, -w).
    Get(resources_cmd::GetArgs),
    /// Delete Knative objects.
    Delete(resources_cmd::DeleteArgs),
    /// Show objects: metadata, spec, stored events and status conditions.
    Describe(resources_cmd::DescribeArgs),
    /// Read, tail and find a broker's or channel's events.
    #[command(subcommand)]
    Events(events_cmd::Command),
    /// Trigger and Subscription delivery: status, replay, pause, resume.
    #[command(subcommand)]
    Trigger(trigger_cmd::Command),
    /// Dead letters: list, redrive, purge.
    #[command(subcommand)]
    Dlq(dlq_cmd::Command),
    /// The output of a Knative Service's instances (ksvc, configuration or revision).
    Logs(logs_cmd::LogsArgs),
    /// Print the CRDs of Knative's kinds as Sluice serves them (for clusters without Knative's own CRDs).
    Crds(kube_cmd::CrdsArgs),
    /// Run the Kubernetes controller: Sluice-class Brokers and their objects pushed into Sluice, status back.
    KubeController(kube_cmd::ControllerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    admin_channel::set(cli.credentials.clone());
    init_tracing();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Dev(args) => dev::run(args).await,
            Command::Node(args) => node_cmd::run(args).await,
            Command::Cluster(command) => cluster_cmd::run(command).await,
            Command::Apply(args) => resources_cmd::apply(args).await,
            Command::Get(args) => resources_cmd::get(args).await,
            Command::Delete(args) => resources_cmd::delete(args).await,
            Command::Describe(args) => resources_cmd::describe(args).await,
            Command::Events(command) => events_cmd::run(command).await,
            Command::Trigger(command) => trigger_cmd::run(command).await,
            Command::Dlq(command) => dlq_cmd::run(command).await,
            Command::Logs(args) => logs_cmd::run(args).await,
            Command::Crds(args) => kube_cmd::crds(args),
            Command::KubeController(args) => kube_cmd::kube_controller(args).await,
        }
    });
    // Background tasks stop here, so the error below is the last line.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader of our output has gone (`| head`): what it wanted was printed.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            // One line that says what to change; errors about a resource object read as kubectl's.
            match e.downcast_ref::<admin_cli::ServerError>() {
                Some(server) => eprintln!("{server}"),
                None => eprintln!("error: {e:#}"),
            }
            // Admin errors carry a meaningful exit code (docs/operations.md).
            match (e.downcast_ref::<admin_cli::AdminError>(), e.downcast_ref::<admin_cli::ServerError>()) {
                (Some(admin), _) => ExitCode::from(admin.exit_code),
                (None, Some(server)) => ExitCode::from(server.exit_code),
                // A call refused as it stood (unauthenticated, not this role's, ...): its gRPC code says which.
                (None, None) => match e.downcast_ref::<tonic::Status>() {
                    Some(status) => ExitCode::from(admin_cli::exit_code_for(status)),
                    None => ExitCode::FAILURE,
                },
            }
        }
    }
}

/// The log filter unless `RUST_LOG` sets one. openraft's heartbeat worker warns of every heartbeat a peer that
/// is down does not take, 20 a second per group it leads; its replication (one warning per try, every 200 ms
/// once backing off) and `sluice_raft_append_stream_failures_total` already say the peer is down.
const DEFAULT_LOG_FILTER: &str = "info,openraft=warn,openraft::core::heartbeat=error";

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    // Colours only for a terminal: logs redirected to files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr).try_init();
}

/// Registers for the next Ctrl-C or SIGTERM now, and answers a future that resolves when one arrives, with the
/// exit code a process stopped by it reports (130, 143). Registered before a graceful stop begins, so that a
/// signal sent once it has begun is not missed.
pub(crate) fn next_signal() -> impl std::future::Future<Output = i32> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt());
    let terminate = signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => tokio::select! {
                _ = interrupt.recv() => 130,
                _ = terminate.recv() => 143,
            },
            _ => std::future::pending().await,
        }
    }
}

/// Runs a node's graceful stop, which a first Ctrl-C or SIGTERM began (requests in flight finish, instances get
/// their termination grace). A second one stops the process at once: `force` kills what must not outlive it (its
/// local instances), then it exits with 130 (143 for SIGTERM). Stopping at once is as safe as `kill -9`: what
/// was acknowledged is on disk, and deliveries not yet acknowledged are sent again.
pub(crate) async fn stop_gracefully_unless_signalled_again(
    graceful: impl std::future::Future<Output = ()>,
    force: impl FnOnce(),
) {
    let again = next_signal();
    tracing::info!("shutting down; a second Ctrl-C or SIGTERM stops at once");
    tokio::select! {
        biased;
        code = again => {
            tracing::warn!("a second signal: stopping at once, without waiting for the graceful stop");
            force();
            std::process::exit(code);
        }
        () = graceful => {}
    }
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
