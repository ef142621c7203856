//! An instance's probes on the local runtime: readiness (until ready, then at its rhythm, in and out of
//! rotation), and startup and liveness ([`LivenessTracker`]: they stop an instance that fails them). In: the
//! instance's checks, its environment, its exit. Out: `Ready`/`NotReady` events, and stops with their reason.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::sys::signal::Signal;
use tokio::process::Command;
use tokio::sync::{Mutex, mpsc, watch};

use super::signal_group;
use crate::runtime::liveness::LivenessTracker;
use crate::runtime::{DEFAULT_PROBE_PERIOD, InstanceEvent, ProbeRhythm, Readiness, ReadinessTracker};

/// A TCP or HTTP readiness probe without `periodSeconds`, until the instance is ready: every 5 ms for the first
/// 2 s of its probing (cold starts are short), then every 50 ms, as Knative's queue-proxy probes aggressively.
const FAST_PROBE_EVERY: Duration = Duration::from_millis(5);
const FAST_PROBE_FOR: Duration = Duration::from_secs(2);
const SLOW_PROBE_EVERY: Duration = Duration::from_millis(50);
/// How long an instance a startup or liveness probe stops has between SIGTERM and SIGKILL: Kubernetes'
/// `terminationGracePeriodSeconds` default.
pub(super) const PROBE_KILL_GRACE: Duration = Duration::from_secs(30);

/// Where an exec probe runs: the instance's variables (`PORT`, the container's `env`) and working directory;
/// and when the readiness probe runs, before the instance is ready and after, and how long each attempt has.
#[derive(Clone)]
pub(super) struct ProbeEnv {
    /// The instance's whole environment: what it inherits of the node's, then its own variables.
    pub(super) vars: Vec<(String, String)>,
    pub(super) working_dir: Option<PathBuf>,
    pub(super) rhythm: ProbeRhythm,
}

/// Why the runtime stops an instance itself, if it does, and the one way its rotation changes: a stop and a
/// probe's `Ready` or `NotReady` are each decided and sent under one lock, so that no `Ready` a probe decided on
/// before a stop can reach the revision after the stop's `NotReady` and put an instance being stopped back in
/// rotation (two tasks probe one instance: readiness here, startup and liveness in [`watch_liveness`]).
#[derive(Clone)]
pub(super) struct Rotation {
    state: Arc<Mutex<RotationState>>,
    events: mpsc::Sender<InstanceEvent>,
}

#[derive(Default)]
struct RotationState {
    /// A `Ready` was the last word the revision heard of the instance.
    in_rotation: bool,
    /// The runtime is stopping the instance: it never comes back into rotation. Stays set after the exit took
    /// the reason (a probe not yet cancelled may still decide).
    stopping: bool,
    /// Why, until the exit takes it.
    stop_reason: Option<String>,
}

impl Rotation {
    pub(super) fn new(events: mpsc::Sender<InstanceEvent>) -> Rotation {
        Rotation { state: Arc::default(), events }
    }

    /// Puts the instance (back) in rotation, unless it is being stopped. False once nobody listens.
    async fn ready(&self, id: u64, addr: SocketAddr) -> bool {
        let mut state = self.state.lock().await;
        if state.stopping {
            return true;
        }
        let heard = self.events.send(InstanceEvent::Ready { id, addr }).await.is_ok();
        state.in_rotation = heard;
        heard
    }

    /// Takes the instance out of rotation (its readiness probe fails), if it is in it. False once nobody
    /// listens.
    async fn not_ready(&self, id: u64) -> bool {
        let mut state = self.state.lock().await;
        if !std::mem::take(&mut state.in_rotation) {
            return !self.events.is_closed();
        }
        self.events.send(InstanceEvent::NotReady { id }).await.is_ok()
    }

    /// Records why the instance is being stopped and, if it is in rotation, takes it out, in one step. An
    /// instance whose readiness never passed (a startup probe or the progress deadline stops it) was never in
    /// it, and the revision hears nothing until its exit.
    async fn stopping(&self, id: u64, reason: &str) {
        let mut state = self.state.lock().await;
        state.stopping = true;
        state.stop_reason = Some(reason.to_string());
        // A closed channel means nobody routes to it any more.
        if std::mem::take(&mut state.in_rotation) {
            let _ = self.events.send(InstanceEvent::NotReady { id }).await;
        }
    }

    /// Why the runtime stopped the instance, for its exit (once).
    pub(super) async fn take_stop_reason(&self) -> Option<String> {
        self.state.lock().await.stop_reason.take()
    }
}

/// An instance that is not ready `after` it started is stopped (its process group killed), saying why.
pub(super) struct Deadline {
    pub(super) after: Duration,
    pub(super) group: Option<u32>,
}

/// How long the readiness probe of an instance not ready yet waits after an attempt that failed, `probing_for`
/// after its first attempt. An `exec` probe starts a process at each attempt: it runs every `periodSeconds` (10 s
/// unset), as the kubelet runs it (Knative leaves an `exec` readiness probe to the kubelet). A TCP or HTTP probe
/// runs every `periodSeconds` when one is given, else as Knative's queue-proxy probes, in quick succession, so
/// that an instance takes requests as soon as it listens. Before session 58 every probe ran every 5 ms, then
/// 50 ms, until the progress deadline: an `exec` probe started 20 to 200 processes a second. Pure.
fn wait_after_failed_attempt(check: &Readiness, rhythm: &ProbeRhythm, probing_for: Duration) -> Duration {
    match (check, rhythm.period) {
        (_, Some(period)) => period,
        (Readiness::Exec { .. }, None) => DEFAULT_PROBE_PERIOD,
        (Readiness::TcpConnect { .. } | Readiness::HttpGet { .. }, None) if probing_for < FAST_PROBE_FOR => {
            FAST_PROBE_EVERY
        }
        (Readiness::TcpConnect { .. } | Readiness::HttpGet { .. }, None) => SLOW_PROBE_EVERY,
    }
}

/// Probes until the instance is ready (its first attempt `initialDelaySeconds` after the instance's start, each
/// within `timeoutSeconds`, [`wait_after_failed_attempt`] apart), then goes on probing at the probe's rhythm: an
/// instance whose probe fails `failureThreshold` times in a row is taken out of rotation (`NotReady`) and put
/// back once it passes again. Before session 40 the probe stopped at the first success, and an instance that
/// stopped answering its probe kept its share of the requests until it exited.
pub(super) async fn probe_until_ready(
    readiness: Readiness,
    env: ProbeEnv,
    deadline: Deadline,
    id: u64,
    addr: SocketAddr,
    rotation: Rotation,
    (mut started_up, exited): (watch::Receiver<bool>, watch::Receiver<bool>),
) {
    let started = tokio::time::Instant::now();
    let mut exit = exited.clone();
    // The progress deadline counts from the start, a startup probe's time included.
    let out_of_time = tokio::select! {
        passed = started_up.wait_for(|passed| *passed) => if passed.is_err() { return } else { false },
        _ = exit.wait_for(|exited| *exited) => return,
        _ = tokio::time::sleep(deadline.after) => true,
    };
    if out_of_time {
        return deadline.give_up(id, &rotation).await;
    }
    let deadline_at = started + deadline.after;
    // `initialDelaySeconds` counts from the instance's start, as the kubelet counts it (a startup probe's time
    // included); the attempts before a passing one count from the first.
    let mut attempt_at = started + env.rhythm.initial_delay;
    let mut probing_since = None;
    loop {
        // The last attempt is at the deadline at the latest.
        tokio::select! {
            _ = tokio::time::sleep_until(attempt_at.min(deadline_at)) => {}
            _ = exit.wait_for(|exited| *exited) => return,
        }
        // Both may have been due: an instance gone is not probed (its port may be another's by now).
        if *exited.borrow() {
            return;
        }
        let now = tokio::time::Instant::now();
        let first_attempt = *probing_since.get_or_insert(now);
        if probe_once(&readiness, &env, env.rhythm.timeout).await {
            if rotation.ready(id, addr).await {
                keep_probing(&readiness, &env, (id, addr), &rotation, exited).await;
            }
            return;
        }
        if tokio::time::Instant::now() >= deadline_at {
            return deadline.give_up(id, &rotation).await;
        }
        attempt_at = now + wait_after_failed_attempt(&readiness, &env.rhythm, now.duration_since(first_attempt));
    }
}

impl Deadline {
    /// Kills an instance not ready by the deadline, saying why (it was never in rotation).
    async fn give_up(&self, id: u64, rotation: &Rotation) {
        tracing::warn!(
            instance = id,
            after_ms = self.after.as_millis() as u64,
            "not ready within the progress deadline; stopping it"
        );
        rotation.stopping(id, "ProgressDeadlineExceeded").await;
        if let Some(group) = self.group {
            signal_group(group, Signal::SIGKILL);
        }
    }
}

/// A ready instance's probe, every `periodSeconds` (10 s unset), each attempt within `timeoutSeconds`, until it
/// exits (or nobody listens for its events). An instance being stopped never comes back into rotation
/// ([`Rotation::ready`]), though it may still pass its probe while it drains.
async fn keep_probing(
    readiness: &Readiness,
    env: &ProbeEnv,
    (id, addr): (u64, SocketAddr),
    rotation: &Rotation,
    mut exited: watch::Receiver<bool>,
) {
    let mut tracker = ReadinessTracker::ready(env.rhythm);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(env.rhythm.period_once_ready()) => {}
            _ = exited.wait_for(|exited| *exited) => return,
        }
        let passed = probe_once(readiness, env, env.rhythm.timeout).await;
        let Some(ready) = tracker.observe(passed) else { continue };
        if *exited.borrow() {
            return;
        }
        let listened = if ready { rotation.ready(id, addr).await } else { rotation.not_ready(id).await };
        if !listened {
            return;
        }
    }
}

pub(super) async fn probe_once(readiness: &Readiness, env: &ProbeEnv, timeout: Duration) -> bool {
    let attempt = async {
        match readiness {
            Readiness::TcpConnect { port } => {
                tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, *port)).await.is_ok()
            }
            Readiness::HttpGet { port, path } => http_get_ok(*port, path).await,
            Readiness::Exec { argv } => match argv.split_first() {
                Some((program, args)) => Command::new(program)
                    .args(args)
                    .env_clear()
                    .envs(env.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .current_dir(env.working_dir.as_deref().unwrap_or_else(|| std::path::Path::new(".")))
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .kill_on_drop(true)
                    .status()
                    .await
                    .is_ok_and(|s| s.success()),
                None => false,
            },
        }
    };
    tokio::time::timeout(timeout, attempt).await.unwrap_or(false)
}

/// What stops an instance from outside its revision: its rotation (it leaves rotation before it is asked to
/// stop, and its exit says why), its process group, and its exit.
pub(super) struct Stopper {
    pub(super) rotation: Rotation,
    pub(super) group: Option<u32>,
    pub(super) exited: watch::Receiver<bool>,
}

/// Runs an instance's startup and liveness probes as [`LivenessTracker`] says when; tells readiness once the
/// startup probe passed; stops the instance when either fails too often (SIGTERM, then SIGKILL after
/// [`PROBE_KILL_GRACE`], as the kubelet restarts a container), its exit saying which. It leaves rotation first
/// (as a terminating pod leaves its Endpoints), so that requests wait for another instance rather than go to
/// one being stopped. The revision replaces it as it replaces an instance that crashed.
pub(super) async fn watch_liveness(
    mut tracker: LivenessTracker,
    env: ProbeEnv,
    mut stopper: Stopper,
    started: watch::Sender<bool>,
    revision: String,
    id: u64,
) {
    let start = tokio::time::Instant::now();
    while let Some(due) = tracker.next_probe_at() {
        tokio::select! {
            _ = tokio::time::sleep_until(start + due) => {}
            _ = stopper.exited.wait_for(|exited| *exited) => return,
        }
        let Some(probe) = tracker.current().cloned() else { return };
        let passed = probe_once(&probe.check, &env, probe.timeout).await;
        let verdict = tracker.observe(passed, start.elapsed());
        if tracker.started() {
            started.send_if_modified(|passed| !std::mem::replace(passed, true));
        }
        let Some(reason) = verdict else { continue };
        tracing::warn!(%revision, instance = id, %reason, failures = probe.failure_threshold, "stopping the instance");
        // Out of rotation before the signal.
        stopper.rotation.stopping(id, reason).await;
        metrics::counter!("sluice_serving_probe_stops_total", "revision" => revision, "reason" => reason).increment(1);
        let Some(group) = stopper.group else { return };
        signal_group(group, Signal::SIGTERM);
        if tokio::time::timeout(PROBE_KILL_GRACE, stopper.exited.wait_for(|exited| *exited)).await.is_err() {
            signal_group(group, Signal::SIGKILL);
        }
        return;
    }
}

/// A bare HTTP/1.1 GET: 2xx or 3xx is ready.
async fn http_get_ok(port: u16, path: &str) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await else { return false };
    let path = if path.starts_with('/') { path.to_string() } else { format!("/{path}") };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUser-Agent: sluice-probe\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    // "HTTP/1.1 200"
    matches!(head.get(9), Some(b'2' | b'3'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr() -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, 8080))
    }

    /// Regression: a readiness probe checked that no stop was under way, then sent `Ready`; a liveness stop
    /// landing between the two sent its `NotReady` first, and the `Ready` after it put the instance being
    /// stopped back in rotation. Here the `Ready` is decided first and held up (the revision's queue is full):
    /// the stop waits for it, so its `NotReady` is the last word, and a later `Ready` sends nothing.
    #[tokio::test]
    async fn no_ready_reaches_the_revision_after_a_stops_not_ready() {
        let (events, mut revision) = mpsc::channel(1);
        let rotation = Rotation::new(events.clone());
        events.send(InstanceEvent::NotReady { id: 0 }).await.expect("the queue has room");
        let probing = tokio::spawn({
            let rotation = rotation.clone();
            async move { rotation.ready(1, addr()).await }
        });
        // The probe decided under the lock, and holds it while it waits for room in the queue.
        let held = async {
            while rotation.state.try_lock().is_ok() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), held)
            .await
            .expect("a probe's Ready is sent under the lock the stop takes");
        let stopping = tokio::spawn({
            let rotation = rotation.clone();
            async move { rotation.stopping(1, "LivenessProbeFailed").await }
        });
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(revision.recv().await.expect("three events come"));
        }
        assert!(probing.await.expect("the probe task ends"));
        stopping.await.expect("the stop task ends");
        assert_eq!(
            seen,
            [
                InstanceEvent::NotReady { id: 0 },
                InstanceEvent::Ready { id: 1, addr: addr() },
                InstanceEvent::NotReady { id: 1 }
            ]
        );
        assert!(rotation.ready(1, addr()).await, "a stopped instance's probe still counts as heard");
        assert!(revision.try_recv().is_err(), "an instance being stopped stays out of rotation");
        assert_eq!(rotation.take_stop_reason().await.as_deref(), Some("LivenessProbeFailed"));
        assert_eq!(rotation.take_stop_reason().await, None, "its exit takes the reason once");
        assert!(rotation.ready(1, addr()).await, "a probe not yet cancelled when the exit took the reason");
        assert!(revision.try_recv().is_err(), "still puts nothing back in rotation");
    }

    /// A stop of an instance never put in rotation (the progress deadline, a failed startup probe, or a
    /// liveness failure before readiness ever passed) sends nothing, and no `Ready` follows it.
    #[tokio::test]
    async fn an_instance_never_in_rotation_is_stopped_without_an_event() {
        let (events, mut revision) = mpsc::channel(4);
        let rotation = Rotation::new(events);
        rotation.stopping(2, "ProgressDeadlineExceeded").await;
        assert!(rotation.ready(2, addr()).await);
        assert!(revision.try_recv().is_err());
        assert!(rotation.not_ready(2).await, "nothing to take out of rotation, and the revision still listens");
        assert!(revision.try_recv().is_err());
    }

    /// Readiness moves an instance in and out of rotation, each change told once.
    #[tokio::test]
    async fn readiness_changes_are_told_once_each() {
        let (events, mut revision) = mpsc::channel(8);
        let rotation = Rotation::new(events);
        assert!(rotation.not_ready(3).await, "not in rotation yet: nothing to tell");
        assert!(rotation.ready(3, addr()).await);
        assert!(rotation.not_ready(3).await);
        assert!(rotation.not_ready(3).await, "already out");
        assert!(rotation.ready(3, addr()).await);
        rotation.stopping(3, "LivenessProbeFailed").await;
        let mut seen = Vec::new();
        while let Ok(event) = revision.try_recv() {
            seen.push(event);
        }
        assert_eq!(
            seen,
            [
                InstanceEvent::Ready { id: 3, addr: addr() },
                InstanceEvent::NotReady { id: 3 },
                InstanceEvent::Ready { id: 3, addr: addr() },
                InstanceEvent::NotReady { id: 3 },
            ]
        );
        drop(revision);
        assert!(!rotation.not_ready(3).await, "nobody listens any more");
    }

    /// Until an instance is first ready: an `exec` probe at its period (10 s unset), never in quick succession; a
    /// TCP or HTTP one at its period when given, else every 5 ms for 2 s, then every 50 ms. Regression: every probe
    /// ran every 5 ms, then 50 ms, until the progress deadline: an `exec` one started 20 to 200 processes a second.
    #[test]
    fn a_probe_not_passed_yet_runs_again_by_its_handler_and_period() {
        let exec = Readiness::Exec { argv: vec!["true".into()] };
        let tcp = Readiness::TcpConnect { port: 8080 };
        let http = Readiness::HttpGet { port: 8080, path: "/".into() };
        let unset = ProbeRhythm::default();
        let every_3s = ProbeRhythm { period: Some(Duration::from_secs(3)), ..unset };
        let (ms, s) = (Duration::from_millis, Duration::from_secs);
        // (check, rhythm, probing for, the wait before the next attempt)
        let cases = [
            (&exec, unset, ms(0), s(10)),
            (&exec, unset, s(60), s(10)),
            (&exec, every_3s, ms(0), s(3)),
            (&tcp, unset, ms(0), ms(5)),
            (&tcp, unset, ms(1_999), ms(5)),
            (&tcp, unset, s(2), ms(50)),
            (&http, unset, ms(10), ms(5)),
            (&http, unset, s(30), ms(50)),
            (&tcp, every_3s, ms(0), s(3)),
            (&http, every_3s, s(30), s(3)),
        ];
        for (check, rhythm, probing_for, wait) in cases {
            let case = format!("{check:?} every {:?}, after {probing_for:?}", rhythm.period);
            assert_eq!(wait_after_failed_attempt(check, &rhythm, probing_for), wait, "{case}");
        }
    }

    /// Probes `check` as an instance started now whose startup passed, until its first event (or 10 s).
    async fn first_event(check: Readiness, rhythm: ProbeRhythm) -> Option<InstanceEvent> {
        let (events, mut revision) = mpsc::channel(4);
        let (_started_tx, started_up) = watch::channel(true);
        let (_exited_tx, exited) = watch::channel(false);
        let env = ProbeEnv { vars: Vec::new(), working_dir: None, rhythm };
        let deadline = Deadline { after: Duration::from_secs(60), group: None };
        let probing = tokio::spawn(probe_until_ready(
            check,
            env,
            deadline,
            1,
            addr(),
            Rotation::new(events),
            (started_up, exited),
        ));
        let event = tokio::time::timeout(Duration::from_secs(10), revision.recv()).await.ok().flatten();
        probing.abort();
        event
    }

    /// Regression: `initialDelaySeconds` was dropped: the first attempt ran at the instance's start.
    #[tokio::test]
    async fn the_first_attempt_waits_for_the_initial_delay() {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind");
        let port = listener.local_addr().expect("its address").port();
        let delay = Duration::from_millis(300);
        let begun = tokio::time::Instant::now();
        let event =
            first_event(Readiness::TcpConnect { port }, ProbeRhythm { initial_delay: delay, ..Default::default() });
        assert!(matches!(event.await, Some(InstanceEvent::Ready { id: 1, .. })), "ready");
        assert!(begun.elapsed() >= delay, "not before its delay: {:?}", begun.elapsed());
    }

    /// Regression: every attempt had 1 s whatever `timeoutSeconds` said, so a check that takes longer (a slow
    /// health script) never passed.
    #[tokio::test]
    async fn an_attempt_has_the_probes_timeout() {
        let slow = || Readiness::Exec { argv: vec!["sleep".into(), "1.5".into()] };
        let patient = ProbeRhythm { timeout: Duration::from_secs(5), ..Default::default() };
        assert!(
            matches!(first_event(slow(), patient).await, Some(InstanceEvent::Ready { id: 1, .. })),
            "5 s to answer"
        );
        let env = ProbeEnv { vars: Vec::new(), working_dir: None, rhythm: ProbeRhythm::default() };
        assert!(!probe_once(&slow(), &env, ProbeRhythm::default().timeout).await, "1 s, the default, is too short");
    }
}
