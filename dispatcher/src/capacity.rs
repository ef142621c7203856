//! In-flight limits towards subscribers that say how much they can take (Knative Services this node runs), and
//! the backlog the dispatcher holds back from them.
//!
//! What flows in: the node's [`SubscriberCapacity`] (serving, through the binary that wires the two), a
//! delivery asking to start towards a host, deliveries ending. What flows out: a [`DeliverySlot`] (or "not
//! now": the event waits in the log, admitted to its window but not started), backlog reports per consumer
//! and partition, and a wake-up counter that moves when capacity grew or a slot was given back to a host that
//! had turned someone away.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

/// What the node's serving tells the dispatcher about the subscribers it runs.
pub trait SubscriberCapacity: Send + Sync + 'static {
    /// Deliveries to `host` (an authority as a subscriber URI writes it) that may be in flight from this node
    /// now; `None`: no limit.
    fn limit(&self, host: &str) -> Option<DeliveryLimit>;
    /// Replaces `reporter`'s last report: `events` waiting in the log for `host` (`ordered_keys`: how many
    /// ordering keys they have, for ordered delivery).
    fn report_backlog(&self, reporter: &str, host: &str, events: u64, ordered_keys: Option<u64>);
    /// Moves whenever some limit grew.
    fn capacity_grown(&self) -> watch::Receiver<u64>;
}

/// A limited host's room, and what its deliveries are counted under: serving names what takes them (the
/// revisions behind the host), so hosts that reach the same instances share one count, however they are
/// written (a port, capitals, a Route's host and a tag's).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeliveryLimit {
    pub max_in_flight: usize,
    pub counted_as: String,
}

/// Deliveries in flight per limited host, across every partition this node dispatches.
pub(crate) struct DestinationLimits {
    capacity: Arc<dyn SubscriberCapacity>,
    in_flight: Mutex<HashMap<String, usize>>,
    /// Retries past their backoff waiting for a slot, per host as they name it: backlog the partitions'
    /// reports do not count (their windows hold such an event as in flight).
    retries_waiting: Mutex<HashMap<String, u64>>,
    /// Someone was turned away since the last wake-up.
    turned_away: AtomicBool,
    wake: watch::Sender<u64>,
}

/// A delivery's place in its host's limit, given back when dropped (the delivery ended or was aborted, or it
/// waits out a retry's backoff: [`DeliverySlot::give_back_until`]).
pub(crate) struct DeliverySlot {
    limits: Arc<DestinationLimits>,
    /// As the delivery named it (what a slot is asked for again with).
    host: String,
    /// What it is counted under: [`DeliveryLimit::counted_as`].
    counted_as: String,
}

impl DeliverySlot {
    /// Gives `slot` back while `pause` runs (a retry's backoff: a delivery waiting is not in flight, and a
    /// subscriber limited to a few slots would sit idle through the whole wait, with events behind it), then
    /// takes a slot again, waiting for room as a new delivery would. No slot (an unlimited host): just `pause`.
    pub(crate) async fn give_back_until(slot: &mut Option<DeliverySlot>, pause: impl Future<Output = ()>) {
        let Some(held) = slot.take() else { return pause.await };
        let (limits, host) = (held.limits.clone(), held.host.clone());
        drop(held);
        pause.await;
        *slot = limits.wait_for_slot(&host).await;
    }
}

impl Drop for DeliverySlot {
    fn drop(&mut self) {
        if let Ok(mut in_flight) = self.limits.in_flight.lock()
            && let Some(count) = in_flight.get_mut(&self.counted_as)
        {
            *count = count.saturating_sub(1);
            if *count == 0 {
                in_flight.remove(&self.counted_as);
            }
        }
        if self.limits.turned_away.swap(false, Ordering::AcqRel) {
            self.limits.wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

/// The reporter under which the retries waiting for a slot towards `host` are reported.
pub(crate) fn retries_waiting_reporter(host: &str) -> String {
    format!("retries-waiting-for-a-slot@{host}")
}

/// How often the retries waiting for a slot are reported again while they wait (serving forgets a report after
/// `sluice_serving`'s five seconds).
const RETRIES_WAITING_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// One retry counted as waiting for a slot, until dropped.
struct RetryWaiting {
    limits: Arc<DestinationLimits>,
    host: String,
}

impl RetryWaiting {
    fn count(limits: &Arc<DestinationLimits>, host: &str) -> RetryWaiting {
        limits.count_retries_waiting(host, 1);
        RetryWaiting { limits: limits.clone(), host: host.to_string() }
    }
}

impl Drop for RetryWaiting {
    fn drop(&mut self) {
        self.limits.count_retries_waiting(&self.host, -1);
    }
}

/// The host of a subscriber URI (`http://hello.default.localhost:8080/x` → `hello.default.localhost:8080`).
pub(crate) fn host_of(uri: &str) -> &str {
    let rest = uri.split_once("://").map_or(uri, |(_, rest)| rest);
    rest.split(['/', '?', '#']).next().unwrap_or_default()
}

impl DestinationLimits {
    /// Limits over `capacity`; a task forwards its growth to [`DestinationLimits::wake`].
    pub(crate) fn new(capacity: Arc<dyn SubscriberCapacity>) -> Arc<Self> {
        let limits = Arc::new(DestinationLimits {
            capacity,
            in_flight: Mutex::new(HashMap::new()),
            retries_waiting: Mutex::new(HashMap::new()),
            turned_away: AtomicBool::new(false),
            wake: watch::channel(0).0,
        });
        let mut grown = limits.capacity.capacity_grown();
        let weak = Arc::downgrade(&limits);
        tokio::spawn(async move {
            while grown.changed().await.is_ok() {
                let Some(limits) = weak.upgrade() else { return };
                limits.wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        });
        limits
    }

    /// Whether `host` limits what may be in flight towards it.
    pub(crate) fn is_limited(&self, host: &str) -> bool {
        self.capacity.limit(host).is_some()
    }

    /// What may be in flight towards `host` from this node now (`None`: no limit).
    pub(crate) fn limit(&self, host: &str) -> Option<usize> {
        self.capacity.limit(host).map(|limit| limit.max_in_flight)
    }

    /// A slot towards `host`: `Some(None)` when it has no limit, `Some(Some(slot))` when it has room, `None`
    /// when it is full (the event waits; the dispatcher wakes when room appears).
    pub(crate) fn try_start(self: &Arc<Self>, host: &str) -> Option<Option<DeliverySlot>> {
        let Some(DeliveryLimit { max_in_flight, counted_as }) = self.capacity.limit(host) else { return Some(None) };
        let Ok(mut in_flight) = self.in_flight.lock() else { return Some(None) };
        // Looked up before it is counted, so a host turned away leaves no entry behind.
        if in_flight.get(&counted_as).copied().unwrap_or(0) >= max_in_flight {
            self.turned_away.store(true, Ordering::Release);
            return None;
        }
        *in_flight.entry(counted_as.clone()).or_insert(0) += 1;
        Some(Some(DeliverySlot { limits: self.clone(), host: host.to_string(), counted_as }))
    }

    /// A slot towards `host` once it has room (`None` at once when it has no limit any more). While it waits
    /// it counts as backlog of `host` ([`retries_waiting_reporter`]). Regression: a retry whose backoff outlived
    /// the subscriber's scale to zero (no request, no backlog reported: the window holds it as in flight)
    /// waited for a slot that nothing would ever make, neither retried nor dead-lettered.
    pub(crate) async fn wait_for_slot(self: &Arc<Self>, host: &str) -> Option<DeliverySlot> {
        // Subscribed before trying, so a slot given back in between wakes this wait.
        let mut wake = self.wake();
        let mut counted: Option<RetryWaiting> = None;
        loop {
            if let Some(slot) = self.try_start(host) {
                return slot;
            }
            match &counted {
                None => counted = Some(RetryWaiting::count(self, host)),
                // Reports expire (serving forgets a reporter silent for a few seconds): said again while waiting.
                Some(_) => self.count_retries_waiting(host, 0),
            }
            let changed = tokio::select! {
                changed = wake.changed() => changed,
                _ = tokio::time::sleep(RETRIES_WAITING_REPORT_EVERY) => continue,
            };
            if changed.is_err() {
                // The limits are gone with the dispatcher: nothing to hold a place in.
                return None;
            }
        }
    }

    pub(crate) fn report_backlog(&self, reporter: &str, host: &str, events: u64, ordered_keys: Option<u64>) {
        self.capacity.report_backlog(reporter, host, events, ordered_keys);
    }

    /// Adds `change` to the retries waiting for a slot towards `host`, and reports their number.
    fn count_retries_waiting(&self, host: &str, change: i64) {
        let Ok(mut waiting) = self.retries_waiting.lock() else { return };
        let count = waiting.entry(host.to_string()).or_insert(0);
        *count = count.saturating_add_signed(change);
        let events = *count;
        if events == 0 {
            waiting.remove(host);
        }
        // Reported under the lock, so that reports of one host cannot overtake each other.
        self.capacity.report_backlog(&retries_waiting_reporter(host), host, events, None);
    }

    /// Moves when capacity grew or a slot was freed after someone was turned away.
    pub(crate) fn wake(&self) -> watch::Receiver<u64> {
        self.wake.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed {
        /// Per host: its limit and the key it is counted under (the host itself unless given).
        limits: Mutex<HashMap<String, (usize, String)>>,
        reports: Mutex<Vec<(String, String, u64)>>,
        grown: watch::Sender<u64>,
    }

    impl SubscriberCapacity for Fixed {
        fn limit(&self, host: &str) -> Option<DeliveryLimit> {
            let (max_in_flight, counted_as) = self.limits.lock().ok()?.get(host).cloned()?;
            Some(DeliveryLimit { max_in_flight, counted_as })
        }
        fn report_backlog(&self, reporter: &str, host: &str, events: u64, _ordered_keys: Option<u64>) {
            if let Ok(mut reports) = self.reports.lock() {
                reports.push((reporter.into(), host.into(), events));
            }
        }
        fn capacity_grown(&self) -> watch::Receiver<u64> {
            self.grown.subscribe()
        }
    }

    /// A capacity of fixed limits per host.
    fn fixed(limits: &[(&str, usize)]) -> Arc<Fixed> {
        counted(&limits.iter().map(|(host, limit)| (*host, *limit, *host)).collect::<Vec<_>>())
    }

    /// A capacity of fixed limits per host, each counted under the key given.
    fn counted(limits: &[(&str, usize, &str)]) -> Arc<Fixed> {
        Arc::new(Fixed {
            limits: Mutex::new(
                limits.iter().map(|(host, limit, key)| (host.to_string(), (*limit, key.to_string()))).collect(),
            ),
            reports: Mutex::new(Vec::new()),
            grown: watch::channel(0).0,
        })
    }

    #[tokio::test]
    async fn a_full_host_turns_deliveries_away_until_a_slot_is_given_back() {
        let fixed = fixed(&[("ksvc:80", 2)]);
        let limits = DestinationLimits::new(fixed.clone());
        let mut wake = limits.wake();
        assert!(matches!(limits.try_start("other:80"), Some(None)), "no limit");
        let first = limits.try_start("ksvc:80").expect("room").expect("a slot");
        let _second = limits.try_start("ksvc:80").expect("room").expect("a slot");
        assert!(limits.try_start("ksvc:80").is_none(), "full");
        drop(first);
        wake.changed().await.expect("woken: a slot was freed after a refusal");
        assert!(limits.try_start("ksvc:80").is_some());
        fixed.limits.lock().expect("lock").insert("ksvc:80".into(), (5, "ksvc:80".into()));
        fixed.grown.send_modify(|n| *n += 1);
        wake.changed().await.expect("woken: capacity grew");
        limits.report_backlog("t/0", "ksvc:80", 7, None);
        assert_eq!(fixed.reports.lock().expect("lock").as_slice(), [("t/0".into(), "ksvc:80".into(), 7)]);
        assert_eq!(host_of("http://hello.default.localhost:8080/path?q"), "hello.default.localhost:8080");
        assert_eq!(host_of("hello.default.localhost"), "hello.default.localhost");
    }

    /// Regression: in-flight deliveries were counted per authority as written (then per host name), while
    /// what takes them is the revisions behind the host: two hosts serving counts as one share one count.
    #[tokio::test]
    async fn hosts_counted_as_one_share_one_count() {
        let fixed = counted(&[
            ("hello.default.localhost:8080", 2, "default/hello-00001"),
            ("latest-hello.default.localhost", 2, "default/hello-00001"),
            ("other.default.localhost", 2, "default/other-00001"),
        ]);
        let limits = DestinationLimits::new(fixed);
        let held = limits.try_start("hello.default.localhost:8080").expect("room");
        let _tagged = limits.try_start("latest-hello.default.localhost").expect("room");
        assert!(limits.try_start("hello.default.localhost:8080").is_none(), "the same revision: full");
        assert!(limits.try_start("latest-hello.default.localhost").is_none(), "the same revision: full");
        assert!(matches!(limits.try_start("other.default.localhost"), Some(Some(_))), "counted apart");
        drop(held);
        assert!(matches!(limits.try_start("latest-hello.default.localhost"), Some(Some(_))), "room again");
    }

    /// Regression: a retry waiting for a slot towards a subscriber scaled to zero (its limit 0) reported no
    /// backlog, so nothing scaled the subscriber up and the retry waited for ever. It is backlog now: the
    /// report scales the subscriber from zero, its capacity grows, and the retry has its slot.
    #[tokio::test]
    async fn a_retry_waiting_for_a_subscriber_at_zero_is_backlog_that_scales_it_up() {
        let fixed = fixed(&[("ksvc:80", 0)]);
        let limits = DestinationLimits::new(fixed.clone());
        let mut retry = Box::pin(limits.wait_for_slot("ksvc:80"));
        assert!(futures::poll!(&mut retry).is_pending(), "no room at zero");
        assert_eq!(
            fixed.reports.lock().expect("lock").as_slice(),
            [(retries_waiting_reporter("ksvc:80"), "ksvc:80".into(), 1)],
            "the waiting retry is reported as the host's backlog"
        );
        // Serving scales the revision up on that report: its capacity grows.
        fixed.limits.lock().expect("lock").insert("ksvc:80".into(), (1, "ksvc:80".into()));
        fixed.grown.send_modify(|n| *n += 1);
        let slot = tokio::time::timeout(std::time::Duration::from_secs(10), retry).await.expect("woken");
        assert!(slot.is_some(), "the retry has its slot");
        let last = fixed.reports.lock().expect("lock").last().cloned();
        assert_eq!(
            last,
            Some((retries_waiting_reporter("ksvc:80"), "ksvc:80".into(), 0)),
            "and is no backlog any more"
        );
    }

    /// Regression: a delivery kept its slot through a retry's backoff, so a subscriber of one slot whose one
    /// failing event waited out (up to an hour with `Retry-After`) delivered nothing else meanwhile.
    #[tokio::test]
    async fn a_retry_waiting_out_its_backoff_gives_its_slot_back_and_waits_for_room_after() {
        let fixed = fixed(&[("ksvc:80", 1)]);
        let limits = DestinationLimits::new(fixed.clone());
        let mut failing = limits.try_start("ksvc:80").expect("room");
        assert!(failing.is_some(), "the one slot");
        let (backoff_over, backoff) = tokio::sync::oneshot::channel::<()>();
        let retry = tokio::spawn({
            async move {
                DeliverySlot::give_back_until(&mut failing, async {
                    let _ = backoff.await;
                })
                .await;
                failing
            }
        });
        // During the backoff another delivery takes the slot.
        let given_back = async {
            loop {
                if let Some(Some(slot)) = limits.try_start("ksvc:80") {
                    break slot;
                }
                tokio::task::yield_now().await;
            }
        };
        let other = tokio::time::timeout(std::time::Duration::from_secs(10), given_back)
            .await
            .expect("the slot was given back for the backoff");
        backoff_over.send(()).expect("the retry waits");
        // The backoff is over, the slot is taken: the retry waits for room, then has it.
        tokio::task::yield_now().await;
        assert!(!retry.is_finished(), "no room: the retry waits");
        drop(other);
        let slot = retry.await.expect("the retry");
        assert!(slot.is_some(), "the retry holds the slot again");
        assert!(limits.try_start("ksvc:80").is_none(), "and only it");
        // While it waited it was backlog of the host; no more once it has its slot.
        let reports = fixed.reports.lock().expect("lock").clone();
        let waiting: Vec<u64> = reports
            .iter()
            .filter(|(reporter, ..)| *reporter == retries_waiting_reporter("ksvc:80"))
            .map(|r| r.2)
            .collect();
        // (said again every second while it waits)
        assert_eq!((waiting.first(), waiting.last()), (Some(&1), Some(&0)), "{waiting:?}");
        assert!(waiting.iter().all(|n| *n <= 1), "{waiting:?}");
        // An unlimited host: the pause alone.
        let mut none: Option<DeliverySlot> = None;
        DeliverySlot::give_back_until(&mut none, async {}).await;
        assert!(none.is_none());
    }
}
