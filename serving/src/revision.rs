//! One revision on this node: its instances, its [`Gate`], and the task that scales it.
//!
//! Requests (HTTP through the Route, and the dispatcher's deliveries, which come the same way) take a slot
//! with [`RevisionHandle::acquire`]: at once when an instance has room, else they wait, bounded, while the task
//! starts an instance (a revision at zero wakes on its first request). The task decides how many instances run
//! ([`crate::scale`]), starts them through the [`Runtime`], marks them ready, restarts crashed ones with
//! backoff, and takes idle ones out: drained first, so in-flight requests finish, then SIGTERM.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sluice_cloudevent::clock::now_ms;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::error::ServingError;
use crate::gate::{Admit, Gate, InstanceId, WaiterId};
use crate::logs::LogHub;
use crate::runtime::local::free_port;
use crate::runtime::{Instance, InstanceEvent, InstanceSpec, Readiness, Runtime};
use crate::scale::{ScaleInput, ScaleSettings, restart_delay_ms, wanted_instances};

/// Requests waiting for a slot of one revision on one node, at most.
pub(crate) const QUEUE_LIMIT: usize = 10_000;
/// After this many failed starts in a row without ever being ready, waiting requests are answered 503 with the
/// reason instead of being held until their timeout.
const FAILED_STARTS_BEFORE_GIVING_UP: u32 = 3;
/// How often the scaler looks again without being poked.
const SCALE_TICK: Duration = Duration::from_millis(200);

/// What it takes to run a revision, from its object.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RevisionRun {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) working_dir: Option<PathBuf>,
    /// `ports[0].containerPort`; else each instance gets a free port.
    pub(crate) port: Option<u16>,
    /// The probe, with `0` standing for the instance's port.
    pub(crate) readiness: Readiness,
    pub(crate) h2c: bool,
    pub(crate) container_concurrency: u32,
    pub(crate) timeout_ms: u64,
    pub(crate) scale: ScaleSettings,
}

/// What the runtime learnt about a revision (recorded for its status).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Facts {
    pub(crate) ready: bool,
    pub(crate) failure: Option<(String, String)>,
    pub(crate) instances: u32,
}

/// What a waiting request is given: a slot on an instance at an address, or why it gets none.
type Grant = Result<(InstanceId, SocketAddr), ServingError>;

struct GateState {
    gate: Gate,
    waiters: HashMap<WaiterId, oneshot::Sender<Grant>>,
    addrs: HashMap<InstanceId, SocketAddr>,
    next_waiter: WaiterId,
    last_active_ms: u64,
    /// Set while the revision cannot start (waiters are answered with it).
    failed: Option<String>,
}

impl GateState {
    fn hand_out(&mut self, woken: Vec<(WaiterId, InstanceId)>) {
        let mut released = Vec::new();
        for (waiter, id) in woken {
            let addr = self.addrs.get(&id).copied();
            match (self.waiters.remove(&waiter), addr) {
                (Some(tx), Some(addr)) => {
                    if tx.send(Ok((id, addr))).is_err() {
                        released.push(id);
                    }
                }
                _ => released.push(id),
            }
        }
        for id in released {
            let woken = self.gate.release(id);
            self.hand_out(woken);
        }
    }
}

/// A revision as requests see it.
pub(crate) struct RevisionHandle {
    pub(crate) run: RevisionRun,
    state: Mutex<GateState>,
    /// Wakes the revision's task (a request waits, a slot was given back).
    poke: Notify,
    /// Notified whenever a slot is given back (scale-in waits for its instance to drain).
    released: Notify,
}

/// A slot on an instance; given back when dropped (when the response body has ended or was dropped).
pub(crate) struct Permit {
    revision: Arc<RevisionHandle>,
    instance: InstanceId,
    pub(crate) addr: SocketAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut state) = self.revision.state.lock() {
            state.last_active_ms = now_ms();
            let woken = state.gate.release(self.instance);
            state.hand_out(woken);
        }
        self.revision.poke.notify_one();
        self.revision.released.notify_waiters();
    }
}

impl RevisionHandle {
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.run.namespace, self.run.name)
    }

    /// A slot on a ready instance, waiting (at most `timeout_ms`) while none has room.
    pub(crate) async fn acquire(self: &Arc<Self>, timeout_ms: u64) -> Result<Permit, ServingError> {
        let rx = {
            let mut state = self.state.lock().map_err(|_| self.upstream("gate poisoned"))?;
            state.last_active_ms = now_ms();
            if let Some(reason) = &state.failed {
                return Err(ServingError::RevisionFailed { revision: self.key(), reason: reason.clone() });
            }
            state.next_waiter += 1;
            let waiter = state.next_waiter;
            match state.gate.admit(waiter) {
                Admit::Go(id) => {
                    let Some(addr) = state.addrs.get(&id).copied() else {
                        let woken = state.gate.release(id);
                        state.hand_out(woken);
                        return Err(self.upstream("an instance without an address"));
                    };
                    return Ok(Permit { revision: self.clone(), instance: id, addr });
                }
                Admit::Full => return Err(ServingError::QueueFull { revision: self.key(), limit: QUEUE_LIMIT }),
                Admit::Wait => {
                    let (tx, rx) = oneshot::channel();
                    state.waiters.insert(waiter, tx);
                    WaitGuard { revision: self.clone(), waiter, rx, settled: false }
                }
            }
        };
        let mut guard = rx;
        metrics::gauge!("sluice_serving_waiting", "revision" => self.key()).increment(1.0);
        self.poke.notify_one();
        let outcome = tokio::time::timeout(Duration::from_millis(timeout_ms), &mut guard.rx).await;
        match outcome {
            Ok(Ok(Ok((instance, addr)))) => {
                guard.settled = true;
                Ok(Permit { revision: self.clone(), instance, addr })
            }
            Ok(Ok(Err(e))) => {
                guard.settled = true;
                Err(e)
            }
            Ok(Err(_)) => {
                guard.settled = true;
                Err(self.upstream("the revision stopped"))
            }
            // The guard leaves the queue (and gives back a slot handed out at the last moment).
            Err(_) => Err(ServingError::Timeout { revision: self.key(), after_ms: timeout_ms }),
        }
    }

    fn upstream(&self, reason: &str) -> ServingError {
        ServingError::Upstream { revision: self.key(), reason: reason.into() }
    }
}

/// A request waiting for a slot. Dropped before it got one (a timeout, or the request went away), it leaves
/// the queue and gives back a slot handed to it at the last moment, so no slot is ever lost.
struct WaitGuard {
    revision: Arc<RevisionHandle>,
    waiter: WaiterId,
    rx: oneshot::Receiver<Grant>,
    settled: bool,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        metrics::gauge!("sluice_serving_waiting", "revision" => self.revision.key()).decrement(1.0);
        if self.settled {
            return;
        }
        // From here on a hand-out fails to send, and gives the slot back itself.
        self.rx.close();
        if let Ok(mut state) = self.revision.state.lock() {
            state.gate.cancel(self.waiter);
            state.waiters.remove(&self.waiter);
            if let Ok(Ok((id, _))) = self.rx.try_recv() {
                let woken = state.gate.release(id);
                state.hand_out(woken);
            }
        }
        self.revision.released.notify_waiters();
    }
}

/// The revision's task and its handle.
pub(crate) struct RunningRevision {
    pub(crate) handle: Arc<RevisionHandle>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningRevision {
    /// `ready_before`: it has been ready before (on any node), so it need not start an instance to prove it.
    pub(crate) fn start(
        run: RevisionRun,
        ready_before: bool,
        runtime: Arc<dyn Runtime>,
        logs: Arc<LogHub>,
        grace: Duration,
        facts: mpsc::UnboundedSender<(String, String, Facts)>,
    ) -> Self {
        let handle = Arc::new(RevisionHandle {
            state: Mutex::new(GateState {
                gate: Gate::new(run.container_concurrency, QUEUE_LIMIT),
                waiters: HashMap::new(),
                addrs: HashMap::new(),
                next_waiter: 0,
                last_active_ms: 0,
                failed: None,
            }),
            run,
            poke: Notify::new(),
            released: Notify::new(),
        });
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run_revision(handle.clone(), ready_before, runtime, logs, grace, facts, stopped));
        RunningRevision { handle, stop: Some(stop), task }
    }

    /// Stops every instance (drained, then SIGTERM) and ends the task.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = (&mut self.task).await;
    }
}

struct Instances {
    running: BTreeMap<InstanceId, Box<dyn Instance>>,
    stopping: BTreeSet<InstanceId>,
    next_id: InstanceId,
    ever_ready: bool,
    consecutive_failures: u32,
    last_failure_ms: u64,
    facts: Facts,
}

async fn run_revision(
    revision: Arc<RevisionHandle>,
    ready_before: bool,
    runtime: Arc<dyn Runtime>,
    logs: Arc<LogHub>,
    grace: Duration,
    facts_tx: mpsc::UnboundedSender<(String, String, Facts)>,
    mut stopped: oneshot::Receiver<()>,
) {
    let (events_tx, mut events) = mpsc::channel::<InstanceEvent>(64);
    let (drained_tx, mut drained) = mpsc::unbounded_channel::<InstanceId>();
    let mut instances = Instances {
        running: BTreeMap::new(),
        stopping: BTreeSet::new(),
        next_id: 0,
        ever_ready: ready_before,
        consecutive_failures: 0,
        last_failure_ms: 0,
        facts: Facts::default(),
    };
    let key = revision.key();
    let mut reported = Facts { ready: ready_before, ..Facts::default() };
    instances.facts.ready = ready_before;
    loop {
        scale(&revision, &runtime, &logs, &events_tx, &drained_tx, &mut instances);
        instances.facts.instances = (instances.running.len() - instances.stopping.len()) as u32;
        if instances.facts != reported {
            reported = instances.facts.clone();
            let _ = facts_tx.send((revision.run.namespace.clone(), revision.run.name.clone(), reported.clone()));
        }
        tokio::select! {
            _ = &mut stopped => break,
            _ = revision.poke.notified() => {}
            _ = tokio::time::sleep(SCALE_TICK) => {}
            Some(id) = drained.recv() => {
                // Drained: no request in flight any more; stop it (in the background, bounded by the grace period).
                if let Some(instance) = instances.running.get(&id) {
                    tokio::spawn(instance.stop(grace));
                }
            }
            Some(event) = events.recv() => match event {
                InstanceEvent::Ready(id) => {
                    tracing::info!(revision = %key, instance = id, "instance ready");
                    instances.ever_ready = true;
                    instances.consecutive_failures = 0;
                    if let Ok(mut state) = revision.state.lock() {
                        state.failed = None;
                        let woken = state.gate.set_ready(id, true);
                        state.hand_out(woken);
                    }
                    instances.facts.ready = true;
                    instances.facts.failure = None;
                }
                InstanceEvent::Exited { id, code, signal, last_output } => {
                    instances.running.remove(&id);
                    let expected = instances.stopping.remove(&id);
                    if let Ok(mut state) = revision.state.lock() {
                        state.gate.remove(id);
                        state.addrs.remove(&id);
                    }
                    if !expected {
                        let reason = match (code, signal) {
                            (Some(code), _) => format!("ExitCode{code}"),
                            (None, Some(signal)) => format!("Signal{signal}"),
                            (None, None) => "ContainerExited".to_string(),
                        };
                        let message = format!("container exited ({reason}): {}", last_output.trim());
                        tracing::warn!(revision = %key, instance = id, %reason, output = %last_output, "instance exited unexpectedly");
                        metrics::counter!("sluice_serving_instance_failures_total", "revision" => key.clone()).increment(1);
                        fail(&revision, &mut instances, reason, message);
                    }
                }
            },
        }
    }
    // Stopping: waiters are told, instances drain and stop.
    if let Ok(mut state) = revision.state.lock() {
        for (_, tx) in state.waiters.drain() {
            let _ =
                tx.send(Err(ServingError::Upstream { revision: key.clone(), reason: "the revision stopped".into() }));
        }
    }
    // In-flight requests finish first (bounded by the revision's timeout), then the instances stop.
    let ids: Vec<InstanceId> = instances.running.keys().copied().collect();
    if let Ok(mut state) = revision.state.lock() {
        for id in &ids {
            state.gate.drain(*id);
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(revision.run.timeout_ms);
    loop {
        let released = revision.released.notified();
        if revision.state.lock().map(|s| s.gate.load().in_flight).unwrap_or(0) == 0 {
            break;
        }
        if tokio::time::timeout_at(deadline, released).await.is_err() {
            tracing::warn!(revision = %key, "stopping with requests still in flight after the revision's timeout");
            break;
        }
    }
    let stops: Vec<_> = instances.running.values().map(|i| i.stop(grace)).collect();
    futures::future::join_all(stops).await;
    instances.facts.instances = 0;
    if instances.facts != reported {
        let _ = facts_tx.send((revision.run.namespace.clone(), revision.run.name.clone(), instances.facts.clone()));
    }
    tracing::info!(revision = %key, "revision stopped");
}

fn fail(revision: &RevisionHandle, instances: &mut Instances, reason: String, message: String) {
    instances.consecutive_failures += 1;
    instances.last_failure_ms = now_ms();
    if !instances.ever_ready
        && instances.consecutive_failures >= FAILED_STARTS_BEFORE_GIVING_UP
        && let Ok(mut state) = revision.state.lock()
    {
        state.failed = Some(message.clone());
        let waiting: Vec<WaiterId> = state.waiters.keys().copied().collect();
        for waiter in waiting {
            state.gate.cancel(waiter);
            if let Some(tx) = state.waiters.remove(&waiter) {
                let _ =
                    tx.send(Err(ServingError::RevisionFailed { revision: revision.key(), reason: message.clone() }));
            }
        }
    }
    instances.facts.failure = Some((reason, message));
}

fn scale(
    revision: &Arc<RevisionHandle>,
    runtime: &Arc<dyn Runtime>,
    logs: &LogHub,
    events: &mpsc::Sender<InstanceEvent>,
    drained: &mpsc::UnboundedSender<InstanceId>,
    instances: &mut Instances,
) {
    let now = now_ms();
    let (load, last_active_ms) = match revision.state.lock() {
        Ok(state) => (state.gate.load(), state.last_active_ms),
        Err(_) => return,
    };
    let wanted = wanted_instances(
        &revision.run.scale,
        &ScaleInput {
            now_ms: now,
            in_flight: load.in_flight,
            waiting: load.waiting,
            last_active_ms,
            ever_ready: instances.ever_ready,
        },
    ) as usize;
    let active = instances.running.len() - instances.stopping.len();
    // A fixed `containerPort` (the app may listen on it, whatever `PORT` says) fits one instance on this
    // machine: the next starts only once the previous has exited.
    let port_free = revision.run.port.is_none() || instances.running.is_empty();
    if active < wanted
        && port_free
        && now >= instances.last_failure_ms + restart_delay_ms(instances.consecutive_failures)
    {
        instances.next_id += 1;
        let id = instances.next_id;
        let run = &revision.run;
        let port = match run.port {
            Some(port) => Ok(port),
            None => free_port(),
        };
        let started = port.and_then(|port| {
            let readiness = match &run.readiness {
                Readiness::TcpConnect { .. } => Readiness::TcpConnect { port },
                Readiness::HttpGet { path, .. } => Readiness::HttpGet { port, path: path.clone() },
                exec @ Readiness::Exec { .. } => exec.clone(),
            };
            let spec = InstanceSpec {
                id,
                revision: revision.key(),
                argv: run.argv.clone(),
                env: run.env.clone(),
                working_dir: run.working_dir.clone(),
                port,
                readiness,
                log: logs.revision(&run.namespace, &run.name),
            };
            runtime.start(spec, events.clone())
        });
        match started {
            Ok(instance) => {
                metrics::counter!("sluice_serving_instance_starts_total", "revision" => revision.key()).increment(1);
                if let Ok(mut state) = revision.state.lock() {
                    state.gate.add(id);
                    state.addrs.insert(id, instance.addr());
                }
                instances.running.insert(id, instance);
            }
            Err(e) => {
                tracing::warn!(revision = %revision.key(), error = %e, "instance not started");
                fail(revision, instances, "RunContainerError".into(), e.to_string());
            }
        }
    } else if active > wanted {
        let victim = revision.state.lock().ok().and_then(|mut state| {
            let id = state.gate.least_loaded()?;
            state.gate.drain(id);
            Some((id, state.gate.in_flight(id)))
        });
        if let Some((id, in_flight)) = victim {
            tracing::info!(revision = %revision.key(), instance = id, in_flight, "scaling in");
            instances.stopping.insert(id);
            let revision = revision.clone();
            let drained = drained.clone();
            tokio::spawn(async move {
                // In-flight requests finish first (bounded by the revision's timeout): each response that ends
                // notifies `released`.
                let deadline = tokio::time::Instant::now() + Duration::from_millis(revision.run.timeout_ms);
                loop {
                    let released = revision.released.notified();
                    if revision.state.lock().map(|s| s.gate.in_flight(id)).unwrap_or(0) == 0 {
                        break;
                    }
                    if tokio::time::timeout_at(deadline, released).await.is_err() {
                        break;
                    }
                }
                let _ = drained.send(id);
            });
        }
    }
}
