//! Running instances of a revision. The [`Runtime`] interface is what the revision task needs: start an
//! instance, learn when it is ready (and where it listens) or has exited, stop it (SIGTERM, then SIGKILL after a
//! grace period), and let a revision go once nothing of it runs. The local runtime runs the container's
//! `command` as a child process; the Kubernetes runtime (in `sluice-kubernetes`) claims pods of a Deployment
//! it scales.

pub(crate) mod liveness;
pub(crate) mod local;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use sluice_controller::serving::ServingRuntime;
use tokio::sync::mpsc;

use crate::error::ServingError;
pub use crate::gate::InstanceId;
pub use crate::logs::RevisionLog;
pub use liveness::KillingProbe;

/// How an instance's readiness is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// A TCP connection to the port is accepted (the default, as Knative's queue-proxy does).
    TcpConnect { port: u16 },
    /// `GET http://127.0.0.1:PORT{path}` answers 2xx or 3xx.
    HttpGet { port: u16, path: String },
    /// The command exits 0.
    Exec { argv: Vec<String> },
}

impl Readiness {
    /// The same check, of an instance listening on `port` (an exec probe has no port).
    pub(crate) fn on_port(&self, port: u16) -> Readiness {
        match self {
            Readiness::TcpConnect { .. } => Readiness::TcpConnect { port },
            Readiness::HttpGet { path, .. } => Readiness::HttpGet { port, path: path.clone() },
            exec @ Readiness::Exec { .. } => exec.clone(),
        }
    }
}

/// Kubernetes' `periodSeconds` default.
pub(crate) const DEFAULT_PROBE_PERIOD: Duration = Duration::from_secs(10);
/// Kubernetes' `timeoutSeconds` default.
pub(crate) const DEFAULT_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

/// When a readiness probe runs and how long each attempt has. Until the instance is first ready: from
/// `initial_delay` after its start, every `period` when one was given (an `exec` probe every 10 s without one,
/// as the kubelet runs it; a TCP or HTTP one without one as Knative's queue-proxy does, in quick succession).
/// Once it is ready, as the kubelet checks a readiness probe: every `period` (10 s unset), out of rotation after
/// `failure_threshold` failures in a row, back after `success_threshold` successes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeRhythm {
    /// `periodSeconds`, when given (and not 0, Knative's "probe aggressively").
    pub period: Option<Duration>,
    pub failure_threshold: u32,
    pub success_threshold: u32,
    /// `timeoutSeconds`: an attempt that takes longer failed.
    pub timeout: Duration,
    /// `initialDelaySeconds`: from the instance's start to the first attempt.
    pub initial_delay: Duration,
}

impl ProbeRhythm {
    /// How often the probe runs once the instance is ready: `periodSeconds`, else Kubernetes' 10 s.
    pub(crate) fn period_once_ready(&self) -> Duration {
        self.period.unwrap_or(DEFAULT_PROBE_PERIOD)
    }
}

impl Default for ProbeRhythm {
    /// Kubernetes' defaults: no period given (10 s once ready), 3 failures, 1 success, 1 s to answer, no delay.
    fn default() -> Self {
        ProbeRhythm {
            period: None,
            failure_threshold: 3,
            success_threshold: 1,
            timeout: DEFAULT_PROBE_TIMEOUT,
            initial_delay: Duration::ZERO,
        }
    }
}

/// A ready instance's readiness from its probes' results: results in, a change (ready or not) out.
#[derive(Clone, Debug)]
pub(crate) struct ReadinessTracker {
    rhythm: ProbeRhythm,
    ready: bool,
    /// Results in a row that disagree with `ready`.
    against: u32,
}

impl ReadinessTracker {
    /// Of an instance that just became ready.
    pub(crate) fn ready(rhythm: ProbeRhythm) -> Self {
        ReadinessTracker { rhythm, ready: true, against: 0 }
    }

    /// One probe's result; `Some(ready)` when the instance's readiness changes with it.
    pub(crate) fn observe(&mut self, passed: bool) -> Option<bool> {
        if passed == self.ready {
            self.against = 0;
            return None;
        }
        self.against = self.against.saturating_add(1);
        let needed = if self.ready { self.rhythm.failure_threshold } else { self.rhythm.success_threshold };
        if self.against < needed.max(1) {
            return None;
        }
        self.ready = passed;
        self.against = 0;
        Some(passed)
    }
}

/// One instance to start.
#[derive(Clone)]
pub struct InstanceSpec {
    pub id: InstanceId,
    /// `namespace/revision`, for logs and messages.
    pub revision: String,
    /// Which run of the revision on this node starts it: a later run (a replacement under the same name, or
    /// a run restarted because what it takes changed) has a higher number. Runs of one revision overlap while
    /// the earlier drains.
    pub run: u64,
    /// The Revision as stored (its metadata's name, namespace, labels, and its spec): what a runtime that runs
    /// images builds from.
    pub object: Arc<Value>,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    pub port: u16,
    /// `port` is the container's own `containerPort` (the app may listen on it whatever `PORT` says), not one
    /// picked for this instance.
    pub fixed_port: bool,
    pub readiness: Readiness,
    /// When the probe runs (until the instance is ready, and after) and how long each attempt has.
    pub readiness_rhythm: ProbeRhythm,
    /// `startupProbe` and `livenessProbe`, the instance's port filled in ([`liveness`]; the kubelet runs them
    /// where a runtime makes pods).
    pub startup: Option<KillingProbe>,
    pub liveness: Option<KillingProbe>,
    /// Not ready by then: it is stopped, as failed to start (`ProgressDeadlineExceeded`).
    pub progress_deadline: Duration,
    /// Where its output goes.
    pub log: Arc<RevisionLog>,
}

/// What an instance reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InstanceEvent {
    /// It is ready, and takes requests at `addr` (again, after `NotReady`).
    Ready { id: InstanceId, addr: SocketAddr },
    /// It was ready and its readiness probe now fails: no new requests until it is `Ready` again (those it has
    /// finish).
    NotReady { id: InstanceId },
    /// It exited (or could not be started, or is gone): the exit code or signal, the runtime's reason when it
    /// knows one (`ImagePullBackOff`), and its last lines of output (or the runtime's message).
    Exited { id: InstanceId, code: Option<i32>, signal: Option<i32>, reason: Option<String>, last_output: String },
}

/// What runs a node's instances.
pub trait Runtime: Send + Sync + 'static {
    /// Which runtime this is: it decides what a Revision needs to be runnable.
    fn kind(&self) -> ServingRuntime;

    /// Starts an instance; readiness and exit come on `events`.
    fn start(&self, spec: InstanceSpec, events: mpsc::Sender<InstanceEvent>)
    -> Result<Box<dyn Instance>, ServingError>;

    /// Run `run` of the revision (`namespace/name`) has stopped on this node and none of its instances runs:
    /// what the runtime keeps for it may go, unless a later run of the revision (a replacement started while
    /// this one drained) uses it.
    fn retire(&self, revision: &str, run: u64) -> BoxFuture<'static, ()> {
        let _ = (revision, run);
        Box::pin(async {})
    }
}

/// A started instance.
pub trait Instance: Send + Sync {
    /// SIGTERM, then SIGKILL if it has not exited within `grace`; ends when it has exited.
    fn stop(&self, grace: Duration) -> BoxFuture<'static, ()>;
}

/// The longest an argument or a variable may be once its references are expanded: Linux's own limit for one
/// (`MAX_ARG_STRLEN`, 32 pages), past which the program could not be started anyway.
pub(crate) const MAX_EXPANDED_BYTES: usize = 128 << 10;

/// A reference's expansion would pass [`MAX_EXPANDED_BYTES`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ExpansionTooLong;

/// Kubernetes' `$(VAR)` references in a container's `command`, `args` and `env` values: `$(NAME)` becomes the
/// value of `NAME` in `vars` (the last definition wins), an undefined one stays as written, `$$` is a `$` (so
/// `$$(NAME)` is the text `$(NAME)`), any other `$` stays. At most [`MAX_EXPANDED_BYTES`]: each variable may
/// refer to the one before twice, so forty of a few bytes doubled to terabytes, and the node died of it (a review
/// found it), at every start of the revision.
pub(crate) fn expand_references(text: &str, vars: &[(String, String)]) -> Result<String, ExpansionTooLong> {
    let mut out = String::with_capacity(text.len().min(MAX_EXPANDED_BYTES));
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        if out.len() > MAX_EXPANDED_BYTES {
            return Err(ExpansionTooLong);
        }
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some((name, tail)) = after.strip_prefix('(').and_then(|inner| inner.split_once(')')) {
            match vars.iter().rev().find(|(key, _)| key == name) {
                Some((_, value)) if out.len() + value.len() > MAX_EXPANDED_BYTES => return Err(ExpansionTooLong),
                Some((_, value)) => out.push_str(value),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    if out.len() > MAX_EXPANDED_BYTES {
        return Err(ExpansionTooLong);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_as_kubernetes_does() {
        let vars = vec![
            ("PORT".to_string(), "8080".to_string()),
            ("TARGET".into(), "a".into()),
            ("TARGET".into(), "b".into()),
        ];
        let cases = [
            ("--port=$(PORT)", "--port=8080"),
            ("$(TARGET)-$(TARGET)", "b-b"),
            ("$(MISSING)", "$(MISSING)"),
            ("$$(PORT)", "$(PORT)"),
            ("cost: $5", "cost: $5"),
            ("$(PORT", "$(PORT"),
            ("$", "$"),
            ("plain", "plain"),
        ];
        for (text, expanded) in cases {
            assert_eq!(expand_references(text, &vars), Ok(expanded.to_string()), "{text}");
        }
    }

    /// Regression (review): each variable may refer to the one before it twice; forty of them doubled to
    /// terabytes, and the node died at every start of the revision. Expansion stops at Linux's limit for one
    /// argument or variable.
    #[test]
    fn references_that_double_at_each_variable_stop_at_the_limit() {
        let mut vars: Vec<(String, String)> = vec![("A0".into(), "x".repeat(16))];
        let mut refused_at = None;
        for i in 1..=40 {
            match expand_references(&format!("$(A{})$(A{})", i - 1, i - 1), &vars) {
                Ok(value) => vars.push((format!("A{i}"), value)),
                Err(ExpansionTooLong) => {
                    refused_at = Some(i);
                    break;
                }
            }
        }
        // 16 bytes doubled: 128 KiB at the 13th, past it at the 14th.
        assert_eq!(refused_at, Some(14));
        assert!(vars.iter().all(|(_, value)| value.len() <= MAX_EXPANDED_BYTES));
        assert_eq!(expand_references(&"y".repeat(MAX_EXPANDED_BYTES + 1), &[]), Err(ExpansionTooLong));
    }

    /// The kubelet's rule for a readiness probe after start: out after `failure_threshold` failures in a row,
    /// back after `success_threshold` successes in a row; a result that agrees resets the count.
    #[test]
    fn a_ready_instance_leaves_and_rejoins_rotation_by_its_thresholds() {
        let rhythm = ProbeRhythm {
            period: Some(Duration::from_secs(1)),
            failure_threshold: 3,
            success_threshold: 2,
            ..ProbeRhythm::default()
        };
        let cases: [(&[bool], &[Option<bool>]); 5] = [
            (&[true, true], &[None, None]),
            (&[false, false, false], &[None, None, Some(false)]),
            (&[false, false, true, false, false], &[None, None, None, None, None]),
            (&[false, false, false, true, false, true, true], &[None, None, Some(false), None, None, None, Some(true)]),
            (&[false, false, false, true, true, false], &[None, None, Some(false), None, Some(true), None]),
        ];
        for (results, expected) in cases {
            let mut tracker = ReadinessTracker::ready(rhythm);
            let got: Vec<Option<bool>> = results.iter().map(|passed| tracker.observe(*passed)).collect();
            assert_eq!(got, expected, "{results:?}");
        }
        let mut zero = ReadinessTracker::ready(ProbeRhythm { failure_threshold: 0, success_threshold: 0, ..rhythm });
        assert_eq!(zero.observe(false), Some(false), "a threshold of 0 counts as 1");
        assert_eq!(zero.observe(true), Some(true));
    }
}
