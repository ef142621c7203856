//! The waits between tries of an append that failed for a reason that may pass (no leader, a full queue): a
//! dead letter's append into its stream, and a Trigger's reply into its Broker's. Pure, but for [`wait`], which
//! sleeps the wait decided and counts it.

use std::time::Duration;

use crate::consumer::ConsumerSpec;

/// The wait before the first retry of an append that failed for a reason that may pass (no leader, a full queue);
/// each later wait doubles, up to [`APPEND_RETRY_MAX_WAIT_MS`].
const APPEND_RETRY_FIRST_WAIT_MS: u64 = 100;
/// The longest wait between two tries of such an append.
const APPEND_RETRY_MAX_WAIT_MS: u64 = 5_000;
/// How long the append of a Trigger's reply is tried again (with [`append_retry_wait_ms`]) while it fails for a
/// reason that may pass, before the attempt fails. A leader election or a full queue lasts well under this
/// (failover p99 806 ms, docs/reliability.md); without it, such a failure failed the attempt at once, and under
/// the default `retry: 0` dead-lettered an event the subscriber had already taken. Bounded, because the
/// delivery holds its place in the consumer's window (and the subscriber's in-flight limit) meanwhile.
pub(crate) const REPLY_APPEND_RETRY_FOR: Duration = Duration::from_secs(10);

/// The wait before try `retry + 1` of an append that failed for a reason that may pass (`retry` 0: before the
/// first retry): 100 ms, doubling, at most 5 s.
pub(super) fn append_retry_wait_ms(retry: u32) -> u64 {
    let factor = 2u64.checked_pow(retry).unwrap_or(u64::MAX);
    APPEND_RETRY_FIRST_WAIT_MS.saturating_mul(factor).min(APPEND_RETRY_MAX_WAIT_MS)
}

/// The wait before retry `retry` (from 0) of a reply's append first tried `elapsed` ago: the append schedule,
/// cut to what is left of [`REPLY_APPEND_RETRY_FOR`]; `None` once that is spent (the attempt fails).
pub(super) fn reply_append_wait(retry: u32, elapsed: Duration) -> Option<Duration> {
    let left = REPLY_APPEND_RETRY_FOR.checked_sub(elapsed).filter(|left| !left.is_zero())?;
    Some(Duration::from_millis(append_retry_wait_ms(retry)).min(left))
}

/// Sleeps `wait` before the next try of `spec`'s `append` (`reply` or `dead_letter`), counted in
/// `sluice_dispatch_append_retries_total`: an election or a full queue the delivery rode out, visible to alerts.
pub(super) async fn wait(spec: &ConsumerSpec, append: &'static str, wait: Duration) {
    let labels = [("consumer", spec.name.clone()), ("namespace", spec.namespace.clone()), ("append", append.into())];
    metrics::counter!("sluice_dispatch_append_retries_total", &labels).increment(1);
    tokio::time::sleep(wait).await;
}
