//! One revision on this node: its instances, its [`Gate`], and the task that scales it.
//!
//! Requests (HTTP through the Route, and the dispatcher's deliveries, which come the same way) take a slot
//! with [`RevisionHandle::acquire`]: at once when an instance has room, else they wait, bounded, while the task
//! starts an instance (a revision at zero wakes on its first request, or on the dispatcher's backlog). The
//! gate's [`Meter`] measures the traffic exactly; each bucket becomes a sample for the revision's
//! [`Autoscaler`], which decides at each tick (and at once when a revision at zero is asked for) how many
//! instances run. The task starts them through the [`Runtime`], marks them ready (and tells the dispatcher the
//! capacity grew), restarts crashed ones with backoff, and takes surplus ones out: drained first, so in-flight
//! requests finish, then SIGTERM.

mod gauges;
mod instance_events;
mod start_instance;
mod starts;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::uri::Authority;
use serde_json::Value;
use sluice_cloudevent::clock::now_ms;
use sluice_controller::serving::ServingRuntime;
use sluice_controller::serving::autoscaling::Autoscaling;
use tokio::sync::{Notify, broadcast, mpsc, oneshot};

use crate::clock::monotonic_ms;
use crate::error::ServingError;
use crate::facts::{Facts, FactsOutbox, FactsUpdate, RunId};
use crate::gate::{Admit, Gate, InstanceId, Meter, WaiterId};
use crate::logs::LogHub;
use crate::runtime::local::free_port;
use crate::runtime::{Instance, InstanceEvent, InstanceSpec, KillingProbe, ProbeRhythm, Readiness, Runtime};
use gauges::AutoscalerGauges;
use instance_events::on_instance_event;
use sluice_autoscaler::{Autoscaler, Backlog, Decision, Observation};
use start_instance::start_instance;
use starts::{
    Failed, FailedStarts, StartVerdict, backoff_left_ms, crash_looping, marks_failed, start_verdict, turned_away,
};

/// Requests waiting for a slot of one revision on one node, at most.
pub(crate) const QUEUE_LIMIT: usize = 10_000;
/// The port a container listens on when it names none, where instances do not share a host (Knative's).
const DEFAULT_CONTAINER_PORT: u16 = 8080;
/// The ready capacity of a revision without `containerConcurrency`.
pub(crate) const UNLIMITED: usize = usize::MAX;
/// Decisions kept per revision (for `sluice describe revision` and the admin API).
const DECISIONS_KEPT: usize = 30;
/// How long a stopped run tries to post its last facts while the outbox is full.
const LAST_FACTS_TRIES: u32 = 50;
/// Instances of one run drained and waiting for the run's task to stop them, at most: each instance drained
/// sends one. No cap on instances is known here (a node's local limit is the runtime's, a pod's has none), so a
/// fixed one: a drain that finds it full waits for room in its own task, never the run's, and loses nothing.
const DRAINED_QUEUED: usize = 1_024;
/// Runs of revisions started on this node so far: each run's generation ([`RunId`]).
static RUNS_STARTED: AtomicU64 = AtomicU64::new(0);

/// What it takes to run a revision, from its object.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct RevisionRun {
    pub(crate) namespace: String,
    pub(crate) name: String,
    /// The Revision's `metadata.uid`: a Revision deleted and made again under its name is another run.
    pub(crate) uid: String,
    /// The Revision's metadata (name, namespace, labels) and spec: what a runtime that runs images needs.
    pub(crate) object: Arc<Value>,
    pub(crate) argv: Vec<String>,
    pub(crate) env: Vec<(String, String)>,
    pub(crate) working_dir: Option<PathBuf>,
    /// `ports[0].containerPort`; else each instance gets a free port.
    pub(crate) port: Option<u16>,
    /// The probe, with `0` standing for the instance's port.
    pub(crate) readiness: Readiness,
    /// When it runs, until an instance is ready and after, and how long each attempt has.
    pub(crate) readiness_rhythm: ProbeRhythm,
    /// `startupProbe` and `livenessProbe`, with `0` standing for the instance's port.
    pub(crate) startup: Option<KillingProbe>,
    pub(crate) liveness: Option<KillingProbe>,
    pub(crate) h2c: bool,
    pub(crate) container_concurrency: u32,
    /// `timeoutSeconds`: the whole request, from its arrival (waiting included) to its response's last byte.
    pub(crate) timeout_ms: u64,
    /// `responseStartTimeoutSeconds`: from the request's delivery to the instance until its response starts.
    pub(crate) response_start_timeout_ms: Option<u64>,
    /// `idleTimeoutSeconds`: the longest silence of the response body (none when unset or 0).
    pub(crate) idle_timeout_ms: Option<u64>,
    pub(crate) autoscaling: Autoscaling,
    /// `serving.knative.dev/progress-deadline`; else the node's.
    pub(crate) progress_deadline: Option<Duration>,
}

impl RevisionRun {
    /// Its progress deadline: its annotation's, else the node's `--progress-deadline-ms`.
    fn progress_deadline_ms(&self, env: &RevisionEnv) -> u64 {
        u64::try_from(self.progress_deadline.unwrap_or(env.progress_deadline).as_millis()).unwrap_or(u64::MAX)
    }
}

/// What a waiting request is given: a slot on an instance at an address, or why it gets none.
type Grant = Result<(InstanceId, Authority), ServingError>;

struct GateState {
    gate: Gate,
    waiters: HashMap<WaiterId, oneshot::Sender<Grant>>,
    /// Each ready instance's `host:port`, made once (every request to it needs it for its URI).
    addrs: HashMap<InstanceId, Authority>,
    next_waiter: WaiterId,
    meter: Meter,
    /// Set while the revision cannot start: waiters are answered with it, and so are requests that arrive
    /// before its restart backoff has passed (later ones are held, and wake a start).
    failed: Option<Failed>,
    /// Set while instances of a revision that was ready once keep failing (`starts::crash_looping`), until one
    /// is ready again: requests still wait for a restart, the dispatcher's limit is lifted.
    crash_looping: bool,
    /// Why the last start of an instance was deferred (the node has no room for it: `--max-local-instances`, a
    /// fixed port held), until one starts: what a request that times out waiting is told.
    start_deferred: Option<String>,
    /// Set once the revision stops: no request waits for it any more.
    stopped: bool,
}

impl GateState {
    /// Records the gate's level after a change.
    fn measure(&mut self) {
        let load = self.gate.load();
        self.meter.set(monotonic_ms(), load.in_flight + load.waiting as u32);
    }

    /// A request asks for a slot: it gets one, waits, or finds the queue full. Whichever, it arrived, and
    /// counts for `metric: rps` now (as Knative counts arrivals), not when its response ends: requests held
    /// at a revision at zero must be able to scale it up.
    fn admit(&mut self, waiter: WaiterId) -> Admit {
        let admitted = self.gate.admit(waiter);
        self.meter.arrived();
        self.measure();
        admitted
    }

    fn hand_out(&mut self, woken: Vec<(WaiterId, InstanceId)>) {
        let mut released = Vec::new();
        for (waiter, id) in woken {
            let addr = self.addrs.get(&id).cloned();
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
    /// Which run of the revision on this node this is.
    pub(crate) run_id: RunId,
    /// A route sends the revision traffic (the supervisor sets it as routes change; the autoscaler reads it).
    reachable: AtomicBool,
    state: Mutex<GateState>,
    /// Wakes the revision's task (a request waits, a slot was given back).
    poke: Notify,
    /// Notified whenever a slot is given back (scale-in waits for its instance to drain).
    released: Notify,
    /// Ready instances × `containerConcurrency` ([`UNLIMITED`] without it): the dispatcher's in-flight limit.
    pub(crate) ready_capacity: AtomicUsize,
    /// The last decisions, oldest first, and each new one as it is taken.
    decisions: Mutex<VecDeque<Decision>>,
    pub(crate) decision_feed: broadcast::Sender<Decision>,
}

/// A slot on an instance; given back when dropped (when the response body has ended or was dropped).
pub(crate) struct Permit {
    revision: Arc<RevisionHandle>,
    instance: InstanceId,
    /// The instance's `host:port`.
    pub(crate) authority: Authority,
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Ok(mut state) = self.revision.state.lock() {
            let woken = state.gate.release(self.instance);
            state.hand_out(woken);
            state.measure();
        }
        // No poke: the autoscaler samples the gate on its own ticks; only scale-in waits for slots to free.
        self.revision.released.notify_waiters();
    }
}

impl RevisionHandle {
    /// A run's handle before any instance: its gate empty, no request waiting.
    fn new(run: RevisionRun, run_id: RunId, reachable: bool) -> Self {
        RevisionHandle {
            run_id,
            reachable: AtomicBool::new(reachable),
            state: Mutex::new(GateState {
                gate: Gate::new(run.container_concurrency, QUEUE_LIMIT),
                waiters: HashMap::new(),
                stopped: false,
                addrs: HashMap::new(),
                next_waiter: 0,
                meter: Meter::new(monotonic_ms()),
                failed: None,
                crash_looping: false,
                start_deferred: None,
            }),
            ready_capacity: AtomicUsize::new(if run.container_concurrency == 0 { UNLIMITED } else { 0 }),
            run,
            poke: Notify::new(),
            released: Notify::new(),
            decisions: Mutex::new(VecDeque::new()),
            decision_feed: broadcast::channel(64).0,
        }
    }

    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.run.namespace, self.run.name)
    }

    /// Wakes the revision's task (a revision at zero that is asked for decides at once).
    pub(crate) fn poke(&self) {
        self.poke.notify_one();
    }

    /// Whether a route sends the revision traffic now; the task decides again when that changed.
    pub(crate) fn set_reachable(&self, reachable: bool) {
        if self.reachable.swap(reachable, Ordering::Relaxed) != reachable {
            self.poke.notify_one();
        }
    }

    /// The last decisions, oldest first.
    pub(crate) fn decisions(&self) -> Vec<Decision> {
        self.decisions.lock().map(|d| d.iter().cloned().collect()).unwrap_or_default()
    }

    fn record_decision(&self, decision: &Decision) {
        if let Ok(mut decisions) = self.decisions.lock() {
            if decisions.len() >= DECISIONS_KEPT {
                decisions.pop_front();
            }
            decisions.push_back(decision.clone());
        }
        let _ = self.decision_feed.send(decision.clone());
    }

    /// A slot on a ready instance, waiting (at most `timeout_ms`) while none has room.
    pub(crate) async fn acquire(self: &Arc<Self>, timeout_ms: u64) -> Result<Permit, ServingError> {
        let rx = {
            let mut state = self.state.lock().map_err(|_| self.upstream("gate poisoned"))?;
            if let Some(reason) = turned_away(state.failed.as_ref(), monotonic_ms()) {
                return Err(ServingError::RevisionFailed { revision: self.key(), reason: reason.to_string() });
            }
            if state.stopped {
                return Err(ServingError::RevisionStopped { revision: self.key() });
            }
            state.next_waiter += 1;
            let waiter = state.next_waiter;
            match state.admit(waiter) {
                Admit::Go(id) => {
                    let Some(authority) = state.addrs.get(&id).cloned() else {
                        let woken = state.gate.release(id);
                        state.hand_out(woken);
                        state.measure();
                        return Err(self.upstream("an instance without an address"));
                    };
                    return Ok(Permit { revision: self.clone(), instance: id, authority });
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
            Ok(Ok(Ok((instance, authority)))) => {
                guard.settled = true;
                Ok(Permit { revision: self.clone(), instance, authority })
            }
            Ok(Ok(Err(e))) => {
                guard.settled = true;
                Err(e)
            }
            Ok(Err(_)) => {
                guard.settled = true;
                Err(self.upstream("the revision stopped"))
            }
            // The guard leaves the queue (and gives back a slot handed out at the last moment). The request was
            // never sent: no capacity (503), not an app that did not answer (504).
            Err(_) => {
                let waiting_for_room = self.state.lock().ok().and_then(|state| state.start_deferred.clone());
                Err(ServingError::NoCapacity { revision: self.key(), waited_ms: timeout_ms, waiting_for_room })
            }
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
            state.measure();
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

/// What a revision's task exchanges with the dispatcher (through the node's serving state).
pub(crate) trait RevisionSignals: Send + Sync {
    /// The events waiting in the log for `namespace/name` now.
    fn backlog(&self, namespace: &str, name: &str) -> Backlog;
    /// A revision's ready capacity grew: dispatchers waiting for room look again.
    fn capacity_grew(&self);
}

/// What every revision task on the node shares.
#[derive(Clone)]
pub(crate) struct RevisionEnv {
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) logs: Arc<LogHub>,
    pub(crate) grace: Duration,
    pub(crate) progress_deadline: Duration,
    /// Where the revision's facts go to be recorded (latest only, per revision).
    pub(crate) facts: Arc<FactsOutbox>,
    /// The dispatcher's side: backlog in, capacity out.
    pub(crate) signals: Arc<dyn RevisionSignals>,
}

impl RunningRevision {
    /// `ready_before`: it has been ready before (on any node), so it need not start an instance to prove it;
    /// `reachable`: a route sends it traffic.
    pub(crate) fn start(run: RevisionRun, ready_before: bool, reachable: bool, env: RevisionEnv) -> Self {
        let run_id = RunId { uid: run.uid.clone(), generation: RUNS_STARTED.fetch_add(1, Ordering::Relaxed) + 1 };
        let handle = Arc::new(RevisionHandle::new(run, run_id, reachable));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(run_revision(handle.clone(), ready_before, env, stopped));
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
    /// Those that became ready once: a later `Ready` (after `NotReady`) puts one back in rotation and is not a
    /// start that succeeded (it resets no crash-loop backoff and clears no failure).
    ready_once: BTreeSet<InstanceId>,
    next_id: InstanceId,
    failed_starts: FailedStarts,
    /// Restarts stopped at the progress deadline (logged once).
    given_up: bool,
    facts: Facts,
    /// The autoscaler's last word.
    desired: u32,
}

impl Instances {
    /// None yet; `ready_before`: the revision was ready before (on any node).
    fn new(ready_before: bool) -> Self {
        Instances {
            running: BTreeMap::new(),
            stopping: BTreeSet::new(),
            ready_once: BTreeSet::new(),
            next_id: 0,
            failed_starts: FailedStarts::default(),
            given_up: false,
            facts: Facts { ready: ready_before, ..Facts::default() },
            desired: 0,
        }
    }

    /// Running and not draining.
    fn active(&self) -> usize {
        self.running.len() - self.stopping.len()
    }
}

/// Posts the run's facts through `post` (false: not taken, the outbox full) when they changed since the last
/// post taken (`reported`). Once taken, the ready edge is cleared: the outbox carries it until it is recorded,
/// and the run's later facts, posted as it scales, clear no other node's newer failure unless an instance became
/// ready again. `reported` is what the run has after clearing, so facts that did not change since are not posted
/// again.
fn post_if_changed(facts: &mut Facts, reported: &mut Option<Facts>, post: impl FnOnce(&Facts) -> bool) {
    if reported.as_ref() != Some(&*facts) && post(facts) {
        facts.saw_ready = false;
        *reported = Some(facts.clone());
    }
}

/// The run's facts, to post.
fn facts_update(revision: &RevisionHandle, facts: &Facts) -> FactsUpdate {
    FactsUpdate {
        namespace: revision.run.namespace.clone(),
        name: revision.run.name.clone(),
        run: revision.run_id.clone(),
        facts: facts.clone(),
    }
}

async fn run_revision(
    revision: Arc<RevisionHandle>,
    ready_before: bool,
    env: RevisionEnv,
    mut stopped: oneshot::Receiver<()>,
) {
    let (events_tx, mut events) = mpsc::channel::<InstanceEvent>(64);
    let (drained_tx, mut drained) = mpsc::channel::<InstanceId>(DRAINED_QUEUED);
    // The revision's log is held (its file open once written to) while this run is on the node.
    let log_run = env.logs.run(&revision.run.namespace, &revision.run.name);
    let knobs = revision.run.autoscaling.clone();
    // The progress deadline its instances must become ready within also bounds how long `initial-scale` holds.
    let progress_deadline_ms = revision.run.progress_deadline_ms(&env);
    let mut autoscaler =
        Autoscaler::new(knobs.clone(), 0, monotonic_ms(), ready_before).with_progress_deadline_ms(progress_deadline_ms);
    let mut reachable = revision.reachable.load(Ordering::Relaxed);
    autoscaler.set_reachable(reachable);
    let mut instances = Instances::new(ready_before);
    let key = revision.key();
    let gauges = AutoscalerGauges::new(&key, revision.run_id.generation);
    // Nothing reported yet: a run's first facts are always posted, so that what this node recorded before it
    // restarted (its instances then) does not stand.
    let mut reported: Option<Facts> = None;
    let mut buckets = tokio::time::interval(Duration::from_millis(knobs.bucket_ms));
    buckets.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Decisions are taken as a bucket closes (every `tick_ms / bucket_ms` buckets), so that they see it.
    let buckets_per_tick = knobs.tick_ms.div_ceil(knobs.bucket_ms).max(1);
    let mut buckets_since_decision = 0;
    let mut decide_now = true;
    loop {
        let now_reachable = revision.reachable.load(Ordering::Relaxed);
        if now_reachable != reachable {
            reachable = now_reachable;
            autoscaler.set_reachable(reachable);
            decide_now = true;
        }
        if decide_now {
            decide_now = false;
            let decision = decide(&revision, &env, &mut autoscaler, &instances);
            gauges.show(&decision, instances.running.len());
            if decision.desired != instances.desired {
                tracing::info!(revision = %key, desired = decision.desired, reason = decision.reason.as_str(),
                    ready = decision.ready, backlog = decision.backlog.events, stable = decision.stable_metric,
                    panic = decision.panic_metric, panicking = decision.panicking, "autoscaler decision");
            }
            instances.desired = decision.desired;
            if decision.ready_at_zero && !instances.facts.ready && instances.facts.failure.is_none() {
                // `initial-scale: 0` (Knative): ready with no instance; its first request or backlog starts one.
                instances.facts.ready = true;
            }
            revision.record_decision(&decision);
        }
        // A revision that keeps failing starts again when a held request or the backlog asks for it.
        let asked = instances.failed_starts.in_a_row > 0 && {
            let held = revision.state.lock().map_or(0, |s| s.gate.load().waiting as u32);
            autoscaler.wakes(held, backlog(&revision, &env))
        };
        scale(&revision, &env, &events_tx, &drained_tx, &mut instances, asked);
        instances.facts.instances = instances.active() as u32;
        instances.facts.ready_instances = revision.state.lock().map_or(0, |s| s.gate.load().ready as u32);
        // Not taken (the outbox full): posted again at the next turn.
        post_if_changed(&mut instances.facts, &mut reported, |facts| env.facts.post(facts_update(&revision, facts)));
        // A start the backoff held back is tried when the backoff ends, not at the next bucket (a second later).
        let backoff_left =
            backoff_left_ms(&instances.failed_starts, instances.active(), instances.desired, monotonic_ms());
        tokio::select! {
            _ = &mut stopped => break,
            _ = tokio::time::sleep(Duration::from_millis(backoff_left.unwrap_or(0))), if backoff_left.is_some() => {}
            _ = revision.poke.notified() => {
                // Asked for at zero (a request held, a backlog reported): decide now, not at the next tick.
                if instances.active() == 0 && instances.desired == 0 {
                    let held = revision.state.lock().map_or(0, |s| s.gate.load().waiting as u32);
                    let backlog = backlog(&revision, &env);
                    decide_now = autoscaler.wakes(held, backlog);
                }
            }
            _ = buckets.tick() => {
                let now = monotonic_ms();
                if let Ok(mut state) = revision.state.lock() {
                    autoscaler.record(now, state.meter.close(now));
                }
                buckets_since_decision += 1;
                if buckets_since_decision >= buckets_per_tick {
                    buckets_since_decision = 0;
                    decide_now = true;
                }
            }
            Some(id) = drained.recv() => {
                // Drained: no request in flight any more; stop it (in the background, bounded by the grace period).
                if let Some(instance) = instances.running.get(&id) {
                    tokio::spawn(instance.stop(env.grace));
                }
            }
            Some(event) = events.recv() => on_instance_event(event, &revision, &env, &mut instances),
        }
    }
    // No more decisions: the gauges go to zero now rather than show the last one while the instances drain
    // (unless a later run of the revision shows its own already).
    drop(gauges);
    // Nobody stops drained instances one by one any more (all of them stop below): a drain waiting for room is
    // done at once rather than hold the revision until the run ends.
    drop(drained);
    // Stopping: no request waits any more; those waiting go to the revision their route picks now. In one
    // critical section with the drain below, so that no slot released meanwhile is handed to a waiter gone.
    let ids: Vec<InstanceId> = instances.running.keys().copied().collect();
    if let Ok(mut state) = revision.state.lock() {
        state.stopped = true;
        for (_, tx) in state.waiters.drain() {
            let _ = tx.send(Err(ServingError::RevisionStopped { revision: key.clone() }));
        }
        state.gate.cancel_all();
        // In-flight requests finish first (bounded by the revision's timeout), then the instances stop.
        for id in &ids {
            state.gate.drain(*id);
        }
    }
    revision.ready_capacity.store(0, Ordering::Relaxed);
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
    let stops: Vec<_> = instances.running.values().map(|i| i.stop(env.grace)).collect();
    futures::future::join_all(stops).await;
    // This run's: a run of the revision started since (a replacement under its name) keeps what it uses.
    env.runtime.retire(&key, revision.run_id.generation).await;
    // Its instances are gone: with the revision's last run on the node its log closes (a reader still flushing an
    // instance's last line opens it again for that line).
    drop(log_run);
    instances.facts.instances = 0;
    instances.facts.ready_instances = 0;
    if reported.as_ref() != Some(&instances.facts) {
        // The outbox is bounded: full, the run waits a little for room rather than leave its instances shown.
        for _ in 0..LAST_FACTS_TRIES {
            if env.facts.post(facts_update(&revision, &instances.facts)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tracing::info!(revision = %key, "revision stopped");
}

/// The dispatcher's backlog for this revision now.
fn backlog(revision: &RevisionHandle, env: &RevisionEnv) -> Backlog {
    env.signals.backlog(&revision.run.namespace, &revision.run.name)
}

fn decide(
    revision: &RevisionHandle,
    env: &RevisionEnv,
    autoscaler: &mut Autoscaler,
    instances: &Instances,
) -> Decision {
    let load = revision.state.lock().map(|state| state.gate.load()).unwrap_or_default();
    autoscaler.decide(&Observation {
        now_ms: monotonic_ms(),
        wall_ms: now_ms(),
        ready: load.ready as u32,
        instances: instances.active() as u32,
        held: load.waiting as u32,
        backlog: backlog(revision, env),
    })
}

/// The dispatcher's in-flight limit for the revision, [`dispatcher_capacity`]; tells it when that grew.
fn publish_capacity(revision: &RevisionHandle, env: &RevisionEnv) {
    let cc = revision.run.container_concurrency as usize;
    if cc == 0 {
        return;
    }
    let (ready, failing) =
        revision.state.lock().map_or((0, false), |s| (s.gate.load().ready, s.failed.is_some() || s.crash_looping));
    let capacity = dispatcher_capacity(cc, ready, failing);
    let before = revision.ready_capacity.swap(capacity, Ordering::Relaxed);
    if capacity > before {
        env.signals.capacity_grew();
    }
}

/// What the dispatcher may have in flight to a revision with `containerConcurrency` `cc`: its ready instances ×
/// `cc` ([`UNLIMITED`] without `cc`), so that no delivery is pushed at a revision starting up. A failing revision
/// (marked failed, or ready once and crash-looping since: `starts::crash_looping`) with no instance ready has no
/// limit: its deliveries go, are held or answered 503 as a request to it is, and follow their DeliverySpec (its
/// `timeout`, retries, a dead letter). With a limit of 0 they waited for room that does not come while it failed,
/// neither retried nor dead-lettered, holding the consumer's watermark. With instances still ready, they bound it
/// as they do for a healthy revision (a few crashes among many instances must not push the whole window at the
/// rest). Pure.
pub(crate) fn dispatcher_capacity(cc: usize, ready: usize, failing: bool) -> usize {
    if cc == 0 || (failing && ready == 0) { UNLIMITED } else { ready.saturating_mul(cc) }
}

/// Records a failed start: `reason` and `message` (the app's last output, for an exit) go to the revision's status,
/// which its owners read; requests turned away meanwhile are told `told_clients` alone. Serving routes answer
/// anyone who reaches the HTTP port, and an app's output may hold what it must not show them (a connection
/// string, a token it printed).
fn fail(revision: &RevisionHandle, instances: &mut Instances, reason: String, message: String, told_clients: String) {
    instances.failed_starts.record(monotonic_ms());
    if let Ok(mut state) = revision.state.lock() {
        state.crash_looping = crash_looping(&instances.failed_starts);
        if marks_failed(&instances.failed_starts, instances.facts.ready) {
            state.failed =
                Some(Failed { reason: told_clients.clone(), retry_at_ms: instances.failed_starts.retry_at_ms() });
            let waiting: Vec<WaiterId> = state.waiters.keys().copied().collect();
            for waiter in waiting {
                state.gate.cancel(waiter);
                if let Some(tx) = state.waiters.remove(&waiter) {
                    let _ = tx.send(Err(ServingError::RevisionFailed {
                        revision: revision.key(),
                        reason: told_clients.clone(),
                    }));
                }
            }
            state.measure();
        }
    }
    instances.facts.failure = Some((reason, message));
}

/// Starts or takes out instances towards the autoscaler's count. `asked`: a held request or the backlog asks
/// for the revision (a failing one that gave up its restarts tries again).
fn scale(
    revision: &Arc<RevisionHandle>,
    env: &RevisionEnv,
    events: &mpsc::Sender<InstanceEvent>,
    drained: &mpsc::Sender<InstanceId>,
    instances: &mut Instances,
    asked: bool,
) {
    let now = monotonic_ms();
    let progress_deadline_ms = revision.run.progress_deadline_ms(env);
    let wanted = instances.desired as usize;
    let mut active = instances.active();
    while active < wanted {
        // (A fixed `containerPort` fits one local instance on this machine at once, of any revision: the runtime
        // says so with `NoRoom`, and the start is tried again at the next turn.)
        match start_verdict(&instances.failed_starts, now, progress_deadline_ms, asked) {
            StartVerdict::Start => instances.given_up = false,
            StartVerdict::Backoff => return,
            StartVerdict::GivenUp => {
                if !instances.given_up {
                    instances.given_up = true;
                    tracing::warn!(revision = %revision.key(), failed_starts = instances.failed_starts.in_a_row,
                        "no instance became ready within the progress deadline: no more restarts until a request or the backlog asks");
                }
                return;
            }
        }
        if !start_instance(revision, env, events, instances) {
            return;
        }
        active += 1;
    }
    while active > wanted {
        let victim = revision.state.lock().ok().and_then(|mut state| {
            let id = state.gate.least_loaded()?;
            state.gate.drain(id);
            Some((id, state.gate.in_flight(id)))
        });
        let Some((id, in_flight)) = victim else { return };
        active -= 1;
        publish_capacity(revision, env);
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
            // Full: waits for room (the run's task empties it at every turn); closed: the run stops them all.
            let _ = drained.send(id).await;
        });
    }
}

#[cfg(test)]
mod tests;
