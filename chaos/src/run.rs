//! One chaos run: start the cluster, the subscribers and the producers; quiet phase; faults for the
//! configured time; heal everything; drain (subscribers catch up, every node's copies converge); read every
//! node's log from that node; check the history.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use rand::SeedableRng;
use rand::rngs::StdRng;
use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{ApplyResourceRequest, InitRequest, Member};
use tokio::time::Instant;

use crate::ChaosError;
pub use crate::admin_calls::wait_until;
use crate::admin_calls::{NAMESPACE, channel, committed_offsets, read_partition, status};
use crate::checker::{Report, check};
use crate::cluster::{Cluster, NodeProc};
pub use crate::config::{Config, default_sluice_bin};
use crate::drain::{converge, drain_blockers, final_offsets, offsets_agree};
use crate::faults::{self, Fault, FaultKind, Planned};
use crate::history::{History, Op, TriggerSpec};
use crate::netns::Network;
use crate::powerloss::LazyFsProcess;
use crate::workload::{FailSchedule, Producers, Subscribers, TYPES};

const BROKER: &str = "chaos";

fn stream() -> String {
    format!("broker/{NAMESPACE}/{BROKER}")
}

fn trigger_specs() -> Vec<TriggerSpec> {
    [("t-all", None), ("t-b", Some(TYPES[1].to_string()))]
        .into_iter()
        .map(|(name, type_filter)| TriggerSpec {
            name: name.to_string(),
            type_filter,
            dead_letter_stream: format!("deadletter/trigger/{NAMESPACE}/{name}"),
        })
        .collect()
}

/// Records every Trigger's committed offsets as each node reports them, every second, until stopped.
fn observe_offsets(
    nodes: Vec<(u64, String, Arc<AtomicU32>)>,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while !stop.load(Ordering::Relaxed) {
            for (id, admin, incarnation) in &nodes {
                for trigger in trigger_specs() {
                    let before = incarnation.load(Ordering::SeqCst);
                    let observed =
                        tokio::time::timeout(Duration::from_secs(1), committed_offsets(admin, &trigger.name)).await;
                    // A restart during the call would mix incarnations: drop that observation.
                    if let Ok(Ok(committed)) = observed
                        && incarnation.load(Ordering::SeqCst) == before
                    {
                        history.record(Op::Offsets {
                            node: *id,
                            incarnation: before,
                            trigger: trigger.name,
                            committed,
                            is_final: false,
                        });
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

fn say(config: &Config, text: &str) {
    if config.verbose {
        eprintln!("[sluice-chaos] {text}");
    }
}

fn trigger_object(spec: &TriggerSpec, subscribers: &Subscribers, config: &Config) -> serde_json::Value {
    let mut object = serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Trigger",
        "metadata": { "name": spec.name, "namespace": NAMESPACE },
        "spec": {
            "broker": BROKER,
            "subscriber": { "uri": subscribers.url(&spec.name) },
            "delivery": {
                "retry": config.retry,
                "backoffPolicy": config.backoff_policy,
                "backoffDelay": config.backoff_delay,
            },
        },
    });
    if let (Some(event_type), Some(spec_object)) =
        (&spec.type_filter, object.pointer_mut("/spec").and_then(|s| s.as_object_mut()))
    {
        spec_object.insert("filter".into(), serde_json::json!({ "attributes": { "type": event_type } }));
    }
    object
}

/// Runs the whole thing and answers the checker's report.
pub async fn run(config: Config) -> Result<Report, ChaosError> {
    let (net, fallback) = Network::setup(config.network, config.nodes)?;
    let kinds = config.faults.clone();
    if let Some(reason) = &fallback {
        say(&config, &format!("network namespaces unavailable ({reason}); falling back to loopback"));
    }
    let temp = tempfile::tempdir().map_err(|e| ChaosError::io("creating a temporary directory", e))?;
    let root = config.keep_dir.clone().unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&root).map_err(|e| ChaosError::io(format!("creating {}", root.display()), e))?;
    // The run keeps its own link to (or copy of) the binary: a rebuild during the run must not give restarted
    // nodes another version.
    let mut config = config;
    let pinned = root.join("sluice");
    let _ = std::fs::remove_file(&pinned);
    if std::fs::hard_link(&config.sluice_bin, &pinned).is_err() {
        std::fs::copy(&config.sluice_bin, &pinned)
            .map_err(|e| ChaosError::io(format!("copying {}", config.sluice_bin.display()), e))?;
    }
    config.sluice_bin = pinned;
    let history = Arc::new(History::new(config.history.as_deref())?);
    say(
        &config,
        &format!(
            "seed {} · {} nodes ({}) · faults {:?} for {:?} · data {}",
            config.seed,
            config.nodes,
            net.name(),
            kinds,
            config.duration,
            root.display()
        ),
    );
    history.record(Op::Start {
        seed: config.seed,
        nodes: config.nodes,
        partitions: config.partitions,
        faults: kinds.iter().map(|k| k.name().to_string()).collect(),
        network: net.name().to_string(),
        stream: stream(),
        dedupe: true,
        dedupe_window_ms: config.dedupe_window.map(|window| window.as_millis() as u64),
        triggers: trigger_specs(),
        planted_bug: config.planted_bug.clone(),
    });
    if let Some(reason) = fallback {
        history.note(format!("loopback fallback: {reason}"));
    }

    let nodes = (1..=config.nodes as u64)
        .map(|id| NodeProc {
            id,
            addrs: net.node((id - 1) as usize),
            data: root.join(format!("node-{id}")),
            disk: None,
            log: root.join(format!("node-{id}.log")),
            child: None,
            paused: false,
            incarnation: Arc::new(AtomicU32::new(0)),
        })
        .collect();
    let mut nodes: Vec<NodeProc> = nodes;
    if kinds.iter().any(|k| k.cuts_power()) {
        // Every node's data on the power-loss filesystem (a node the schedule never cuts is still the same).
        for node in &mut nodes {
            let disk = LazyFsProcess::start(
                &config.lazyfs_bin,
                &root.join(format!("node-{}.disk", node.id)),
                &node.data,
                &root.join(format!("node-{}.lazyfs", node.id)),
            )?;
            node.disk = Some(disk);
        }
    }
    let mut extra_node_args = if config.tls {
        let mut hosts: Vec<String> =
            nodes.iter().map(|n| sluice_security::host_of(&n.addrs.peer).to_string()).collect();
        hosts.extend(["127.0.0.1".to_string(), "localhost".to_string()]);
        hosts.sort();
        hosts.dedup();
        history.note(format!("transport encryption: permissive, mutual TLS between nodes (certificate for {hosts:?})"));
        tls_node_args(&root.join("tls"), &hosts)?
    } else {
        Vec::new()
    };
    if let Some(every) = config.snapshot_every_entries {
        history.note(format!("snapshots every {every} entries, {} kept behind", every / 4));
        extra_node_args.extend(snapshot_node_args(every));
    }
    if let Some(window) = config.dedupe_window {
        history.note(format!("dedupe window {window:?}, idle windows given up right after it"));
        extra_node_args.extend(["--dedupe-idle-grace-ms".to_string(), "0".to_string()]);
    }
    let mut cluster = Cluster {
        net: &net,
        nodes,
        config: config.clone(),
        history: history.clone(),
        partitions: BTreeMap::new(),
        membership_via: BTreeMap::new(),
        extra_node_args,
    };
    let outcome = drive(&mut cluster, &kinds).await;
    if outcome.is_err() {
        eprintln!("{}", cluster.log_tails());
    }
    for node in &mut cluster.nodes {
        node.kill9();
    }
    drop(cluster);
    outcome?;
    let entries = history.finish()?;
    Ok(check(&entries))
}

/// The node arguments for a snapshot every `every` entries with a quarter of them kept behind it.
fn snapshot_node_args(every: u64) -> Vec<String> {
    vec![
        "--snapshot-every-entries".into(),
        every.to_string(),
        "--keep-entries-after-snapshot".into(),
        (every / 4).to_string(),
    ]
}

/// A CA and one certificate for `hosts` under `dir`, and the node flags that use them.
fn tls_node_args(dir: &std::path::Path, hosts: &[String]) -> Result<Vec<String>, ChaosError> {
    let setup = |e: sluice_security::TlsError| ChaosError::Setup(format!("TLS certificates: {e}"));
    let ca = sluice_security::DevCertificates::new_ca("sluice-chaos CA").map_err(setup)?;
    let (cert, key) = sluice_security::issue_certificate(&ca, hosts).map_err(setup)?;
    std::fs::create_dir_all(dir).map_err(|e| ChaosError::io(format!("creating {}", dir.display()), e))?;
    let mut args = vec!["--transport-encryption".to_string(), "permissive".to_string()];
    for (flag, name, text) in
        [("--tls-cert", "node.pem", &cert), ("--tls-key", "node.key", &key), ("--tls-ca", "ca.pem", &ca.ca_cert_pem)]
    {
        let path = dir.join(name);
        std::fs::write(&path, text).map_err(|e| ChaosError::io(format!("writing {}", path.display()), e))?;
        args.extend([flag.to_string(), path.display().to_string()]);
    }
    Ok(args)
}

/// The fault phase until `end`: draws each step from the seeded schedule when a slot is free (at most
/// `max_overlapping_faults` held at once), waits its gap, injects it, and ends each fault after its hold.
/// With one slot: gap, fault, hold, end, recovery, one after another. A fault whose target is busy (an
/// active fault holds that node) or that would overlap a membership change is skipped and noted.
async fn inject_faults(
    cluster: &mut Cluster<'_>,
    kinds: &[FaultKind],
    rng: &mut StdRng,
    end: Instant,
) -> Result<(), ChaosError> {
    let config = cluster.config.clone();
    let history = cluster.history.clone();
    let nodes = cluster.nodes.len() as u64;
    let slots = config.max_overlapping_faults.max(1);
    let mut active: Vec<(Instant, Fault)> = Vec::new();
    let mut pending: Option<(Instant, faults::Step)> = None;
    let mut n = 0;
    loop {
        if pending.is_none() && active.len() < slots {
            let Some(step) = faults::next_step(rng, kinds, nodes, config.partitions, config.timing) else {
                break;
            };
            pending = Some((Instant::now() + step.gap, step));
        }
        let wake = pending.iter().map(|(at, _)| *at).chain(active.iter().map(|(until, _)| *until)).min();
        tokio::time::sleep_until(wake.unwrap_or(end).min(end)).await;
        if Instant::now() >= end {
            break;
        }
        let now = Instant::now();
        let (due, still): (Vec<_>, Vec<_>) = active.into_iter().partition(|(until, _)| *until <= now);
        active = still;
        for (_, fault) in &due {
            cluster.revert(fault).await?;
        }
        if !due.is_empty()
            && active.is_empty()
            && config.wait_ready_between_faults
            && let Err(e) = cluster.wait_ready(Duration::from_secs(30)).await
        {
            history.note(format!("after fault {n}: {e}"));
            say(&config, &format!("after fault {n}: {e}"));
        }
        let Some((_, step)) = pending.take_if(|(at, _)| *at <= Instant::now()) else {
            continue;
        };
        n += 1;
        let alone = |kind: FaultKind| matches!(kind, FaultKind::Membership | FaultKind::PowerAll);
        let alone_active = active.iter().any(|(_, f)| alone(f.kind()));
        let wants_alone = matches!(step.planned, Planned::Membership(_) | Planned::PowerAll);
        if alone_active || (wants_alone && !active.is_empty()) {
            history.note(format!(
                "fault {n} skipped: a membership change or a cut of every node runs alone ({:?})",
                step.planned
            ));
            continue;
        }
        let busy: BTreeSet<u64> = active.iter().filter_map(|(_, f)| f.node()).collect();
        let Some(fault) = cluster.inject(&step.planned, n, &busy).await? else {
            history.note(format!("fault {n} skipped: no target, or its target is busy ({:?})", step.planned));
            continue;
        };
        say(&config, &format!("fault {n}: {fault:?} for {:?}", step.hold));
        active.push((Instant::now() + step.hold, fault));
    }
    // The phase is over: end what is still held (the heal phase would, but each gets its fault-end here).
    for (_, fault) in active {
        cluster.revert(&fault).await?;
    }
    Ok(())
}

async fn drive(cluster: &mut Cluster<'_>, kinds: &[FaultKind]) -> Result<(), ChaosError> {
    let config = cluster.config.clone();
    let history = cluster.history.clone();
    for id in cluster.ids() {
        cluster.start(id)?;
    }
    for node in &cluster.nodes {
        wait_until(&format!("node {} admin", node.id), Duration::from_secs(30), || async {
            status(&node.addrs.admin).await.ok()
        })
        .await?;
    }
    let members =
        cluster.nodes.iter().map(|n| Member { node_id: n.id, peer_addr: n.addrs.peer.clone() }).collect::<Vec<_>>();
    ClusterClient::new(channel(&cluster.nodes[0].addrs.admin).await?)
        .init(InitRequest { members, partitions: config.partitions })
        .await?;
    cluster.wait_ready(Duration::from_secs(60)).await?;

    // Subscribers, Broker, Triggers.
    let rates = HashMap::from([("t-b".to_string(), config.fail_rate)]);
    let subscribers =
        Subscribers::start(&cluster.net.client_ip(), history.clone(), FailSchedule { seed: config.seed, rates })
            .await?;
    let admin = cluster.nodes[0].addrs.admin.clone();
    let mut resources = ResourcesClient::new(channel(&admin).await?);
    let mut broker = serde_json::json!({
        "apiVersion": "eventing.knative.dev/v1",
        "kind": "Broker",
        "metadata": { "name": BROKER, "namespace": NAMESPACE },
    });
    if let Some(window) = config.dedupe_window {
        let window = format!("{}ms", window.as_millis().max(1));
        broker["metadata"]["annotations"] = serde_json::json!({ "sluice.dev/dedupe-window": window });
    }
    resources.apply(ApplyResourceRequest { object_json: broker.to_string(), dry_run: false }).await?;
    for spec in trigger_specs() {
        let object = trigger_object(&spec, &subscribers, &config);
        resources.apply(ApplyResourceRequest { object_json: object.to_string(), dry_run: false }).await?;
    }
    let path = format!("/{NAMESPACE}/{BROKER}");
    let probe = reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?;
    for node in &cluster.nodes {
        let url = format!("http://{}{path}", node.addrs.http);
        wait_until(&format!("broker known on node {}", node.id), Duration::from_secs(30), || async {
            let response = probe
                .post(&url)
                .header("content-type", "application/cloudevents-batch+json")
                .body("[]")
                .send()
                .await
                .ok()?;
            (response.status() != reqwest::StatusCode::NOT_FOUND).then_some(())
        })
        .await?;
    }
    // Every Trigger dispatchable before the first event.
    for spec in trigger_specs() {
        wait_until(&format!("trigger {} known", spec.name), Duration::from_secs(30), || async {
            committed_offsets(&admin, &spec.name).await.ok()
        })
        .await?;
    }

    // Producers and the offset observer.
    let https = cluster.nodes.iter().map(|n| n.addrs.http.clone()).collect();
    let producers = Arc::new(Producers::new(https, &path, history.clone(), config.rate, config.seed)?);
    let mut producer_tasks = tokio::task::JoinSet::new();
    for p in 0..config.producers {
        producer_tasks.spawn(producers.clone().run(p));
    }
    let stop_observer = Arc::new(AtomicBool::new(false));
    let observed_nodes =
        cluster.nodes.iter().map(|n| (n.id, n.addrs.admin.clone(), n.incarnation.clone())).collect::<Vec<_>>();
    let observer = observe_offsets(observed_nodes.clone(), history.clone(), stop_observer.clone());

    history.record(Op::Phase { name: "quiet".into() });
    say(&config, "phase: quiet");
    tokio::time::sleep(config.quiet).await;

    history.record(Op::Phase { name: "faults".into() });
    say(&config, "phase: faults");
    let mut rng = StdRng::seed_from_u64(config.seed);
    let end = Instant::now() + config.duration;
    if kinds.is_empty() {
        // No faults: the phase is the same length, producers and deliveries go on.
        tokio::time::sleep_until(end).await;
    } else {
        inject_faults(cluster, kinds, &mut rng, end).await?;
    }

    history.record(Op::Phase { name: "heal".into() });
    say(&config, "phase: heal");
    cluster.heal()?;
    // A node that does not recover is reported (a violation) and left out of the drain and the final reads;
    // the others are still checked.
    let mut unrecovered = BTreeSet::new();
    for (id, reason) in cluster.unready(config.recovery_timeout).await {
        say(&config, &format!("node {id} did not recover: {reason}"));
        history.record(Op::Unrecovered { node: id, reason });
        unrecovered.insert(id);
    }
    let healthy: Vec<String> =
        cluster.nodes.iter().filter(|n| !unrecovered.contains(&n.id)).map(|n| n.addrs.admin.clone()).collect();
    let first_healthy = healthy.first().cloned().unwrap_or_else(|| cluster.nodes[0].addrs.admin.clone());
    // Producers finish their current id (bounded), then stop.
    producers.producing.store(false, Ordering::Relaxed);
    let settle =
        tokio::time::timeout(Duration::from_secs(30), async { while producer_tasks.join_next().await.is_some() {} })
            .await;
    if settle.is_err() {
        producers.retrying.store(false, Ordering::Relaxed);
        history.note("producers still retrying 30 s after healing: given up (indeterminate)");
        while producer_tasks.join_next().await.is_some() {}
    }

    history.record(Op::Phase { name: "drain".into() });
    say(&config, "phase: drain");
    let specs = trigger_specs();
    let mut streams = vec![stream()];
    streams.extend(specs.iter().map(|t| t.dead_letter_stream.clone()));
    // The drain reads the events from one node: first every node must hold every acknowledged event (the
    // producers have stopped), or an event acknowledged just before the heal, not yet applied on the node
    // read, would be missed and the drain would end while it is still being delivered.
    if let Err(e) = converge(&healthy, &streams[..1], &[], config.partitions, config.recovery_timeout).await {
        history.note(format!("drain: {e}"));
        say(&config, &format!("drain: {e}"));
    }
    // Drained: every matching event delivered or dead-lettered, and every Trigger's dispatcher committed past the
    // end with nothing in flight (so no dead letter is still to come when the copies are compared).
    // What kept the last check from calling it drained, for the note if the drain times out.
    let blocker = std::sync::Mutex::new(String::new());
    let drained = wait_until("subscribers caught up", config.drain_timeout, || async {
        let waiting = drain_blockers(&first_healthy, &stream(), &specs, config.partitions, &subscribers).await;
        let drained = waiting.is_empty();
        if let Ok(mut last) = blocker.lock() {
            *last = waiting.join("; ");
        }
        drained.then_some(())
    })
    .await;
    let drained = drained.map_err(|e| {
        let waiting = blocker.lock().map(|b| b.clone()).unwrap_or_default();
        format!("{e} (still waiting for: {waiting})")
    });
    if let Err(e) = drained {
        history.note(format!("drain: {e}"));
        say(&config, &format!("drain: {e}"));
    }
    // Every node's copies converge (same end offsets everywhere), and so do the Triggers' committed offsets.
    let trigger_names: Vec<String> = specs.iter().map(|spec| spec.name.clone()).collect();
    let converged = converge(&healthy, &streams, &trigger_names, config.partitions, config.recovery_timeout).await;
    if let Err(e) = &converged {
        history.note(format!("final: {e}"));
        say(&config, &format!("final: {e}"));
    }
    stop_observer.store(true, Ordering::Relaxed);
    let _ = observer.await;
    history.record(Op::Phase { name: "final-read".into() });
    let final_nodes: Vec<_> = observed_nodes.iter().filter(|(id, ..)| !unrecovered.contains(id)).collect();
    let final_admins: Vec<String> = final_nodes.iter().map(|(_, admin, _)| admin.clone()).collect();
    // The committed offsets of every node in one pass, before the long reads of the copies. Nodes that agreed in
    // `converge` may disagree here only if a commit landed between two of these reads (a drain that did not end):
    // such a round is read again once they agree, at most twice; a difference that lasts is the checker's.
    let mut finals = final_offsets(&final_admins, &trigger_names).await;
    for _ in 0..2 {
        if converged.is_err() || offsets_agree(&finals) {
            break;
        }
        history.note("final offsets moved while they were read: read again");
        let agreed = converge(&final_admins, &[], &trigger_names, config.partitions, config.recovery_timeout).await;
        finals = final_offsets(&final_admins, &trigger_names).await;
        if agreed.is_err() {
            break;
        }
    }
    for ((id, _, incarnation), offsets) in final_nodes.iter().zip(finals) {
        for (trigger, committed) in trigger_names.iter().zip(offsets) {
            match committed {
                Ok(committed) => history.record(Op::Offsets {
                    node: *id,
                    incarnation: incarnation.load(Ordering::SeqCst),
                    trigger: trigger.clone(),
                    committed,
                    is_final: true,
                }),
                Err(e) => history.note(format!("final offsets of {trigger} on node {id}: {e}")),
            }
        }
    }
    for (id, admin, _) in final_nodes {
        let mut reads = Vec::new();
        for s in &streams {
            for partition in 0..config.partitions {
                match read_partition(admin, s, partition).await {
                    Ok(events) => reads.push(Op::Read { node: *id, stream: s.clone(), partition, events }),
                    Err(e) => {
                        history.record(Op::Unrecovered { node: *id, reason: format!("reading {s}/{partition}: {e}") });
                        reads.clear();
                        break;
                    }
                }
            }
        }
        for read in reads {
            history.record(read);
        }
    }
    cluster.note_crashes();
    drop(subscribers);
    Ok(())
}
