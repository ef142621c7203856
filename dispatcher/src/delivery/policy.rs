//! At-least-once delivery decisions: what to do after each HTTP attempt to a subscriber.
//!
//! What flows in: a Trigger's (or Subscription's) `spec.delivery`, Knative's DeliverySpec, parsed once by
//! [`DeliveryPolicy::from_spec`]; then, after every delivery attempt, the attempt's HTTP status (or `None` for a
//! network error or a timeout), the response's `Retry-After` header (already converted by the caller into a
//! [`RetryAfter`]) and the current time from the caller's clock. [`classify`] turns the status into an
//! [`Outcome`] following the data-plane contract's response-code table, and [`next_step_jittered`] decides the [`Step`]
//! that flows out: delivery is done, retry at a given instant, hand the event to the dead-letter sink, or drop it.
//!
//! Everything here is pure and synchronous: the clock is an argument (`now_ms`, milliseconds on whatever
//! monotonic or wall clock the caller uses), there is no I/O, no sleeping and no randomness, so that the
//! delivery loop around it stays trivial and every schedule can be tested exactly.
//!
//! Where the Knative specification is silent (defaults, `timeout`, `retryAfterMax`, `Retry-After`), the choices
//! are documented on the item concerned.

use serde_json::Value as Json;
// The controller's parsers, not a copy: a DeliverySpec or annotation the controller's validation accepts is one
// this consumer build accepts (docs/resources.md, "Durations").
use sluice_controller::validate::{DeliveryDuration, DurationError, parse_backoff_max_ms};

/// The most any single wait between two attempts can last, whatever the backoff schedule or a `Retry-After`
/// header ask for: an exponential schedule overflows quickly, and an event parked for days behind a
/// misbehaving subscriber is better sent to the dead-letter sink after its retries than forgotten.
pub(crate) const MAX_DELAY_MS: u64 = 60 * 60 * 1000;

/// The least any wait between two attempts lasts: `backoffDelay: PT0S` (which Knative accepts, as Sluice does) or a
/// `Retry-After: 0` would otherwise resend as fast as a failing subscriber answers, each event of the consumer's
/// window (up to 10,000) in a loop of its own, for up to `retry` (2³² − 1) attempts. 10 ms keeps such a retry
/// next to immediate and an event's retries to at most 100 a second (decision, session 73).
pub(crate) const MIN_RETRY_WAIT_MS: u64 = 10;

/// Default `retry`: no retries. The DeliverySpec marks `retry` OPTIONAL and the specification gives no default
/// ("Retry is the minimum number of retries the sender should attempt"), so an absent field means none.
pub(crate) const DEFAULT_RETRY: u32 = 0;

/// Default `backoffDelay`: 0.2 s. The specification gives no default ("The initial delay when retrying delivery,
/// in ISO 8601 format"); 0.2 s (`PT0.2S`) is Sluice's choice, short enough that a retry after a transient
/// failure costs little latency, long enough not to hammer a subscriber that is restarting.
pub(crate) const DEFAULT_BACKOFF_DELAY_MS: u64 = 200;

/// Default per-attempt `timeout`: 30 s. `timeout` is not part of the DeliverySpec in the specification (it is a
/// Knative extension); without one a subscriber that never answers would hold a delivery forever.
pub(crate) const DEFAULT_TIMEOUT_MS: u64 = 30 * 1000;

/// A DeliverySpec that cannot be used. `path` names the offending field (`delivery.backoffDelay`), the way the
/// controller names fields, so that an operator can find it in the object. The controller's validation refuses
/// all of these before the object is stored; here they guard objects stored by an older controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DeliveryError {
    #[error("{path}: expected {expected}")]
    WrongType { path: String, expected: &'static str },
    #[error("{path}: unsupported backoff policy {policy:?}, expected \"linear\" or \"exponential\"")]
    UnknownBackoffPolicy { path: String, policy: String },
    /// A duration the controller's parser refuses, a zero `timeout` among them.
    #[error("{path}: {source}")]
    Duration { path: String, source: DurationError },
}

impl DeliveryError {
    /// The offending field, relative to the object's spec (the error's text starts with it).
    #[cfg(test)]
    pub(crate) fn path(&self) -> &str {
        match self {
            DeliveryError::WrongType { path, .. }
            | DeliveryError::UnknownBackoffPolicy { path, .. }
            | DeliveryError::Duration { path, .. } => path,
        }
    }
}

/// How the delay grows from one retry to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackoffPolicy {
    /// `backoffDelay * n` before the n-th retry. The DeliverySpec table says "Linear policy uses the same
    /// `backoffDelay` for each attempt", but Knative's documentation and implementation grow the delay with the
    /// retry number, and Sluice follows the implementation that subscribers are tuned against.
    Linear,
    /// `backoffDelay * 2^(n-1)` before the n-th retry, so that the first retry waits `backoffDelay`, the
    /// "initial delay" of the specification.
    Exponential,
}

/// The delivery options of one Trigger or Subscription, from its DeliverySpec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DeliveryPolicy {
    /// How many times a retryable failure is retried: at most `retry + 1` attempts in all.
    pub retry: u32,
    pub backoff_policy: BackoffPolicy,
    pub backoff_delay_ms: u64,
    /// How long a single attempt may take before it counts as a network error; for the caller's HTTP client.
    pub timeout_ms: u64,
    /// The longest `Retry-After` honored; `None` when `retryAfterMax` is absent (then [`MAX_DELAY_MS`] applies).
    pub retry_after_max_ms: Option<u64>,
    /// Whether `deadLetterSink` is set: undeliverable events go there instead of being dropped.
    pub has_dead_letter_sink: bool,
    /// `sluice.dev/backoff-max`: the longest backoff wait (Knative has no cap; users ask for one).
    pub backoff_max_ms: Option<u64>,
    /// `sluice.dev/backoff-jitter` in thousandths: each backoff wait grows by up to this fraction of itself, so
    /// that the retries of many events failed together do not arrive together.
    pub backoff_jitter_permille: u32,
}

/// `sluice.dev/backoff-max`.
pub(crate) const ANNOTATION_BACKOFF_MAX: &str = "sluice.dev/backoff-max";
/// `sluice.dev/backoff-jitter`.
pub(crate) const ANNOTATION_BACKOFF_JITTER: &str = "sluice.dev/backoff-jitter";

impl Default for DeliveryPolicy {
    /// The policy of an object without `spec.delivery`: no retry, exponential backoff from 0.2 s, 30 s per
    /// attempt, no dead-letter sink.
    fn default() -> Self {
        DeliveryPolicy {
            retry: DEFAULT_RETRY,
            backoff_policy: BackoffPolicy::Exponential,
            backoff_delay_ms: DEFAULT_BACKOFF_DELAY_MS,
            timeout_ms: DEFAULT_TIMEOUT_MS,
            retry_after_max_ms: None,
            has_dead_letter_sink: false,
            backoff_max_ms: None,
            backoff_jitter_permille: 0,
        }
    }
}

impl DeliveryPolicy {
    /// Parses `spec.delivery` (absent or `null` gives [`DeliveryPolicy::default`]). Unknown fields are ignored,
    /// so that a newer controller's additions do not stop delivery.
    pub(crate) fn from_spec(delivery: Option<&Json>) -> Result<Self, DeliveryError> {
        let mut policy = DeliveryPolicy::default();
        let spec = match delivery {
            None | Some(Json::Null) => return Ok(policy),
            Some(Json::Object(spec)) => spec,
            Some(_) => return Err(wrong_type("delivery", "an object (DeliverySpec)")),
        };
        // `null` is how an absent field may be serialized; it is read as absent, as the controller does.
        let field = |name: &str| spec.get(name).filter(|v| !v.is_null());

        if let Some(retry) = field("retry") {
            policy.retry = retry
                .as_u64()
                .and_then(|r| u32::try_from(r).ok())
                .ok_or_else(|| wrong_type("delivery.retry", "a non-negative integer"))?;
        }
        if let Some(backoff_policy) = field("backoffPolicy") {
            policy.backoff_policy = match backoff_policy.as_str() {
                Some("linear") => BackoffPolicy::Linear,
                Some("exponential") => BackoffPolicy::Exponential,
                Some(other) => {
                    return Err(DeliveryError::UnknownBackoffPolicy {
                        path: "delivery.backoffPolicy".into(),
                        policy: other.into(),
                    });
                }
                None => return Err(wrong_type("delivery.backoffPolicy", "a string")),
            };
        }
        // The ISO-8601 grammar and a `timeout` greater than zero: [`DeliveryDuration::parse_ms`].
        if let Some(delay) = field(DeliveryDuration::BackoffDelay.field()) {
            policy.backoff_delay_ms = duration_field(delay, DeliveryDuration::BackoffDelay)?;
        }
        if let Some(timeout) = field(DeliveryDuration::Timeout.field()) {
            policy.timeout_ms = duration_field(timeout, DeliveryDuration::Timeout)?;
        }
        if let Some(max) = field(DeliveryDuration::RetryAfterMax.field()) {
            policy.retry_after_max_ms = Some(duration_field(max, DeliveryDuration::RetryAfterMax)?);
        }
        if let Some(sink) = field("deadLetterSink") {
            // The controller resolves the Destination into `status.deadLetterSinkUri`; here only its presence
            // matters, but a sink that is not a Destination object is a mistake worth reporting.
            if !sink.is_object() {
                return Err(wrong_type("delivery.deadLetterSink", "an object (Destination)"));
            }
            policy.has_dead_letter_sink = true;
        }
        Ok(policy)
    }

    /// Reads Sluice's backoff annotations (`sluice.dev/backoff-max`, `sluice.dev/backoff-jitter`) from an object's
    /// `metadata.annotations`. Errors name the annotation the way the controller does.
    pub(crate) fn apply_annotations(
        &mut self,
        annotations: Option<&serde_json::Map<String, Json>>,
    ) -> Result<(), DeliveryError> {
        let Some(annotations) = annotations else { return Ok(()) };
        let path = |name: &str| format!("metadata.annotations[{name}]");
        if let Some(max) = annotations.get(ANNOTATION_BACKOFF_MAX) {
            let text = max.as_str().ok_or_else(|| wrong_type(&path(ANNOTATION_BACKOFF_MAX), "a duration string"))?;
            let ms = parse_backoff_max_ms(text)
                .map_err(|source| DeliveryError::Duration { path: path(ANNOTATION_BACKOFF_MAX), source })?;
            self.backoff_max_ms = Some(ms);
        }
        if let Some(jitter) = annotations.get(ANNOTATION_BACKOFF_JITTER) {
            let fraction = jitter
                .as_str()
                .and_then(|t| t.trim().parse::<f64>().ok())
                .filter(|j| (0.0..=1.0).contains(j))
                .ok_or_else(|| wrong_type(&path(ANNOTATION_BACKOFF_JITTER), "a fraction from 0 to 1"))?;
            self.backoff_jitter_permille = (fraction * 1000.0).round() as u32;
        }
        Ok(())
    }

    /// The wait before the retry following attempt `attempt`, with jitter and the cap: the schedule's backoff,
    /// plus `jitter_sample` (in `[0, 1)`, the caller's randomness) times the jitter fraction of it, at most
    /// `backoff_max_ms`.
    pub(crate) fn wait_ms(&self, attempt: u32, jitter_sample: f64) -> u64 {
        let base = self.backoff_ms(attempt);
        let sample = if jitter_sample.is_finite() { jitter_sample.clamp(0.0, 1.0) } else { 0.0 };
        let extra = (base as f64 * f64::from(self.backoff_jitter_permille) / 1000.0 * sample) as u64;
        let wait = base.saturating_add(extra).min(MAX_DELAY_MS);
        self.backoff_max_ms.map_or(wait, |max| wait.min(max))
    }

    /// The wait before the retry following attempt number `attempt` (1 for the original request), from the
    /// backoff schedule alone, capped at [`MAX_DELAY_MS`].
    pub(crate) fn backoff_ms(&self, attempt: u32) -> u64 {
        let attempt = attempt.max(1);
        let factor = match self.backoff_policy {
            BackoffPolicy::Linear => u64::from(attempt),
            BackoffPolicy::Exponential => 2u64.checked_pow(attempt - 1).unwrap_or(u64::MAX),
        };
        self.backoff_delay_ms.saturating_mul(factor).min(MAX_DELAY_MS)
    }
}

fn wrong_type(path: &str, expected: &'static str) -> DeliveryError {
    DeliveryError::WrongType { path: path.into(), expected }
}

fn duration_field(value: &Json, kind: DeliveryDuration) -> Result<u64, DeliveryError> {
    let path = format!("delivery.{}", kind.field());
    let Some(text) = value.as_str() else {
        return Err(DeliveryError::WrongType { path, expected: "an ISO-8601 duration string" });
    };
    kind.parse_ms(text).map_err(|source| DeliveryError::Duration { path, source })
}

/// What an attempt's response means for the delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The subscriber accepted the event: delivery is complete.
    Success,
    /// The attempt failed and may succeed later; `status` is `None` for a network error or a timeout.
    Retryable { status: Option<u16> },
    /// The attempt failed and retrying will not help.
    Permanent { status: u16 },
}

/// Classifies an attempt's HTTP status (`None`: no response, a network error or a timeout) following the table of
/// the data-plane contract ("Event Acknowledgement and Delivery Retry"):
/// - `2xx`: success ("other `2xx`: Retry No, Delivery completed Yes").
/// - `404`, `408`, `409`, `429`, `5xx`: retryable (Retry Yes).
/// - `1xx`, `3xx`, `400`, `401`, `403` and every other `4xx`: permanent failure (Retry No, Error Yes); the
///   unspecified `1xx` and `3xx` are handled as the table's "No\*", as errors without retry.
/// - Anything outside `100..=599`: retryable, because "A response code not in this table SHOULD be treated as a
///   retriable error."
/// - No response: retryable. The table does not cover it, but a network error or a timeout says nothing about
///   the event, and the same rule for codes not in the table applies a fortiori; Knative retries them too.
pub(crate) fn classify(status: Option<u16>) -> Outcome {
    let Some(code) = status else {
        return Outcome::Retryable { status: None };
    };
    match code {
        200..=299 => Outcome::Success,
        404 | 408 | 409 | 429 | 500..=599 => Outcome::Retryable { status },
        100..=199 | 300..=499 => Outcome::Permanent { status: code },
        _ => Outcome::Retryable { status },
    }
}

/// A response's `Retry-After` header, converted by the caller (which owns the clock and the date parsing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryAfter {
    /// `Retry-After: <delay-seconds>`.
    Seconds(u64),
    /// `Retry-After: <HTTP-date>`, as an instant in ms on the caller's clock (the same clock as `now_ms`).
    AtMs(u64),
}

/// Why an event was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FailureReason {
    /// The subscriber answered with a status that is not retried.
    #[error("non-retryable response {status}")]
    NotRetryable { status: u16 },
    /// Every allowed attempt failed; `last_status` is the last attempt's status (`None`: network error).
    #[error("{attempts} attempt(s) failed, the last with {}", describe_failure(*.last_status))]
    RetriesExhausted { attempts: u32, last_status: Option<u16> },
    /// The request could not be made (the destination's URL or CA certificates are invalid): not retried.
    #[error("the request could not be made (an invalid URL or CA certificates)")]
    Unsendable,
}

fn describe_failure(status: Option<u16>) -> String {
    match status {
        Some(status) => format!("response {status}"),
        None => "a network error or timeout".to_string(),
    }
}

/// What the delivery loop does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// The event is delivered.
    Done,
    /// Attempt again at this instant (ms, on the caller's clock).
    RetryAt(u64),
    /// Give up and send the event to the dead-letter sink.
    DeadLetter { reason: FailureReason },
    /// Give up and drop the event: there is no dead-letter sink ("If no `deadLetterSink` is specified, the event
    /// is dropped.").
    Drop { reason: FailureReason },
}

/// Decides what follows attempt number `attempt` (attempts made so far, the original request included; `0` is
/// read as `1`) whose result was `outcome`, at `now_ms`.
///
/// A retryable failure is retried while fewer than `retry` retries have been made ("it MUST be retried up to
/// `retry` times"), after the backoff of [`DeliveryPolicy::backoff_ms`]. For `429` and `503`, the statuses that
/// carry `Retry-After` (RFC 9110), the wait is the later of the backoff and the `Retry-After`, the latter capped
/// by `retryAfterMax` when set and by [`MAX_DELAY_MS`] otherwise, so that a subscriber cannot park an event
/// indefinitely; the specification itself does not mention `Retry-After`. A `Retry-After` never grants extra
/// attempts. When the event cannot be delivered it goes to the dead-letter sink, or is dropped without one.
/// (Without jitter; the delivery task uses [`next_step_jittered`].)
#[cfg(test)]
pub(crate) fn next_step(
    policy: &DeliveryPolicy,
    attempt: u32,
    outcome: Outcome,
    retry_after: Option<RetryAfter>,
    now_ms: u64,
) -> Step {
    next_step_jittered(policy, attempt, outcome, retry_after, now_ms, 0.0)
}

/// `next_step` (the decision as the tests state it) with the backoff jitter's random sample (`[0, 1)`) supplied by the caller, and the cap of
/// `sluice.dev/backoff-max` applied to the backoff (not to `Retry-After`, which `retryAfterMax` caps).
pub(crate) fn next_step_jittered(
    policy: &DeliveryPolicy,
    attempt: u32,
    outcome: Outcome,
    retry_after: Option<RetryAfter>,
    now_ms: u64,
    jitter_sample: f64,
) -> Step {
    let attempt = attempt.max(1);
    let reason = match outcome {
        Outcome::Success => return Step::Done,
        Outcome::Permanent { status } => FailureReason::NotRetryable { status },
        Outcome::Retryable { status } => {
            let retries_made = attempt - 1;
            if retries_made < policy.retry {
                let backoff_ms = policy.wait_ms(attempt, jitter_sample);
                let retry_after_ms = match (status, retry_after) {
                    (Some(429 | 503), Some(retry_after)) => {
                        let requested_ms = match retry_after {
                            RetryAfter::Seconds(seconds) => seconds.saturating_mul(1000),
                            RetryAfter::AtMs(at_ms) => at_ms.saturating_sub(now_ms),
                        };
                        requested_ms.min(policy.retry_after_max_ms.unwrap_or(MAX_DELAY_MS))
                    }
                    _ => 0,
                };
                let wait_ms = backoff_ms.max(retry_after_ms).max(MIN_RETRY_WAIT_MS);
                return Step::RetryAt(now_ms.saturating_add(wait_ms));
            }
            FailureReason::RetriesExhausted { attempts: attempt, last_status: status }
        }
    };
    if policy.has_dead_letter_sink { Step::DeadLetter { reason } } else { Step::Drop { reason } }
}

#[cfg(test)]
mod tests;
