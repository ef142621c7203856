//! When a revision whose instances keep failing may start another, and whether a request to it is held or
//! answered at once. Pure, on the monotonic clock.
//!
//! Failed starts in a row back off (100 ms doubling to 10 s). After the third without the revision ever
//! having been ready, it is marked failed: requests waiting are answered 503 with the failure, and so is a
//! request that arrives before the backoff has passed; one that arrives after it is held, as at zero, and
//! wakes one more start (answered 503 only if that start fails too), so a transient cause heals on the next
//! request rather than at the node's restart. Restarts nobody asks for (`min-scale`, `initial-scale`, the
//! autoscaler's last count) stop once the revision has been failing for the progress deadline, as Knative
//! gives up on a revision that does not progress; a held request or the backlog asks again, and so does a
//! change (a new run starts with a clean slate).

/// How long an instance must stay ready for its revision's crash-loop backoff to start again from 100 ms. An
/// instance that crashes sooner after becoming ready goes on backing off where the last failures left it (the
/// kubelet resets its CrashLoopBackOff after 10 minutes of running).
pub(crate) const STABLE_READY_MS: u64 = 60_000;

/// Failed starts in a row without the revision ever being ready, before waiting requests are answered 503 with
/// the reason instead of being held until their timeout.
pub(crate) const FAILED_STARTS_BEFORE_GIVING_UP: u32 = 3;

/// How long to wait before starting an instance again after `consecutive_failures` failed starts: 100 ms
/// doubling to 10 s (a crash loop costs little, a transient failure recovers fast). This is also how a
/// revision that cannot become ready backs off its activations: its backlog asks again, the delay answers.
pub(crate) fn restart_delay_ms(consecutive_failures: u32) -> u64 {
    if consecutive_failures == 0 {
        return 0;
    }
    100u64.saturating_mul(1 << consecutive_failures.saturating_sub(1).min(7)).min(10_000)
}

/// A revision's failed starts since an instance of it was last ready.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct FailedStarts {
    pub(crate) in_a_row: u32,
    /// When the last one failed.
    pub(crate) last_ms: u64,
    /// When the first one failed: the progress deadline counts from here.
    pub(crate) since_ms: u64,
    /// When an instance last became ready, and how many failures in a row came before it.
    pub(crate) ready: Option<(u64, u32)>,
}

impl FailedStarts {
    pub(crate) fn record(&mut self, now_ms: u64) {
        if self.in_a_row == 0 {
            self.since_ms = now_ms;
            // A crash soon after a ready spell goes on from the failures before it: an app that passes its
            // readiness and dies a second later backs off as one that never gets ready (it restarted every
            // 100 ms for good when readiness cleaned the slate).
            if let Some((ready_ms, before)) = self.ready
                && now_ms.saturating_sub(ready_ms) < STABLE_READY_MS
            {
                self.in_a_row = before;
            }
        }
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.last_ms = now_ms;
    }

    /// An instance became ready: the slate is clean (nothing failed since), though a crash within
    /// [`STABLE_READY_MS`] picks the backoff up where it was.
    pub(crate) fn ready(&mut self, now_ms: u64) {
        let before =
            match self.ready {
                // Ready again (another instance) with nothing failed since: the failures before the last spell
                // still count while it is not stable, and no more once it is.
                Some((ready_ms, earlier)) if self.in_a_row == 0 => {
                    if now_ms.saturating_sub(ready_ms) < STABLE_READY_MS { earlier } else { 0 }
                }
                _ => self.in_a_row,
            };
        *self = FailedStarts { ready: Some((now_ms, before)), ..FailedStarts::default() };
    }

    /// When the next start may be tried.
    pub(crate) fn retry_at_ms(&self) -> u64 {
        self.last_ms.saturating_add(restart_delay_ms(self.in_a_row))
    }
}

/// Whether an instance may start now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StartVerdict {
    Start,
    /// Not before the restart backoff has passed.
    Backoff,
    /// Failing for the progress deadline and nobody asks: no restart until a request or the backlog does.
    GivenUp,
}

/// Whether the revision's task may start an instance now. `asked`: a request is held or the backlog would wake
/// the revision (what a failed revision needs to try again once it has given up).
pub(crate) fn start_verdict(
    failed: &FailedStarts,
    now_ms: u64,
    progress_deadline_ms: u64,
    asked: bool,
) -> StartVerdict {
    if failed.in_a_row == 0 {
        return StartVerdict::Start;
    }
    if now_ms < failed.retry_at_ms() {
        return StartVerdict::Backoff;
    }
    if now_ms.saturating_sub(failed.since_ms) >= progress_deadline_ms && !asked {
        return StartVerdict::GivenUp;
    }
    StartVerdict::Start
}

/// How long until a start the restart backoff holds back may be tried (`None`: none is held back: nothing failed,
/// no instance is missing, or the backoff has passed). The revision's task sleeps that long, so a crashed
/// instance restarts after 100 ms, not at the task's next bucket. Pure.
pub(crate) fn backoff_left_ms(failed: &FailedStarts, active: usize, desired: u32, now_ms: u64) -> Option<u64> {
    let retry_at_ms = failed.retry_at_ms();
    (failed.in_a_row > 0 && active < desired as usize && now_ms < retry_at_ms).then(|| retry_at_ms - now_ms)
}

/// Whether the revision is marked failed after this many failed starts in a row (`ever_ready`: an instance of
/// it was ready once, on this node or another; a failure then is a crash, and requests wait for the restart).
pub(crate) fn marks_failed(failed: &FailedStarts, ever_ready: bool) -> bool {
    !ever_ready && crash_looping(failed)
}

/// Whether the revision's instances keep failing: [`FAILED_STARTS_BEFORE_GIVING_UP`] in a row, ready once or
/// not. One that was ready once is not marked failed (requests wait for its restart, as Knative's activator
/// holds them), but the dispatcher no longer waits for room on it (`dispatcher_capacity`).
pub(crate) fn crash_looping(failed: &FailedStarts) -> bool {
    failed.in_a_row >= FAILED_STARTS_BEFORE_GIVING_UP
}

/// A revision marked failed: why, and when a request may wake another start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Failed {
    pub(crate) reason: String,
    pub(crate) retry_at_ms: u64,
}

/// Why a request arriving now is answered 503 at once, if it is: only while the revision is marked failed and
/// its backoff has not passed. After it, the request is held and wakes a start.
pub(crate) fn turned_away(failed: Option<&Failed>, now_ms: u64) -> Option<&str> {
    failed.filter(|failed| now_ms < failed.retry_at_ms).map(|failed| failed.reason.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_a_cap() {
        let delays: Vec<u64> = (0..10).map(restart_delay_ms).collect();
        assert_eq!(delays, [0, 100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]);
    }

    /// Regression: readiness cleaned the slate, so an app that became ready and crashed a second later was
    /// restarted every 100 ms for good. Crashes soon after readiness go on backing off; after a stable spell the
    /// backoff starts again from 100 ms.
    #[test]
    fn a_crash_soon_after_readiness_goes_on_backing_off() {
        let mut failed = FailedStarts::default();
        let mut now = 1_000;
        let mut delays = Vec::new();
        for _ in 0..10 {
            failed.ready(now);
            assert_eq!(failed.in_a_row, 0, "ready: nothing failed since");
            assert_eq!(start_verdict(&failed, now, 600_000, false), StartVerdict::Start);
            now += 1_000;
            failed.record(now);
            delays.push(restart_delay_ms(failed.in_a_row));
            now = failed.retry_at_ms() + 500;
        }
        assert_eq!(delays, [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000, 10_000]);
        // Ready for a whole stable spell, then a crash: from 100 ms again.
        failed.ready(now);
        failed.record(now + STABLE_READY_MS);
        assert_eq!((failed.in_a_row, restart_delay_ms(failed.in_a_row)), (1, 100));
        // Ready again after a quick crash, then ready once more with nothing failed between: the count before
        // the first spell is kept, not lost to the second.
        let mut failed = failing(4, 100);
        failed.ready(2_000);
        failed.ready(3_000);
        failed.record(3_500);
        assert_eq!(failed.in_a_row, 5);
        // Another instance ready after a stable spell: the failures before it count no more.
        let mut failed = failing(4, 100);
        failed.ready(2_000);
        failed.ready(2_000 + STABLE_READY_MS);
        failed.record(2_500 + STABLE_READY_MS);
        assert_eq!(failed.in_a_row, 1);
    }

    /// Failed starts at 1 s, then every `gap_ms`, `count` in all.
    fn failing(count: u32, gap_ms: u64) -> FailedStarts {
        let mut failed = FailedStarts::default();
        for i in 0..count {
            failed.record(1_000 + u64::from(i) * gap_ms);
        }
        failed
    }

    #[test]
    fn a_failing_revision_backs_off_gives_up_at_the_deadline_and_starts_again_when_asked() {
        const DEADLINE: u64 = 600_000;
        // (failed starts, every, now, asked, verdict, why)
        let cases = [
            (0, 0, 0, false, StartVerdict::Start, "nothing failed"),
            (1, 0, 1_050, false, StartVerdict::Backoff, "100 ms after the first failure"),
            (1, 0, 1_100, false, StartVerdict::Start, "backoff passed"),
            (3, 1_000, 3_300, true, StartVerdict::Backoff, "asked, but within the backoff (400 ms)"),
            (3, 1_000, 3_400, false, StartVerdict::Start, "crash loop within the deadline: restarts"),
            (60, 10_000, 601_000, false, StartVerdict::GivenUp, "failing for the progress deadline: stops"),
            (60, 10_000, 601_000, true, StartVerdict::Start, "a held request or the backlog asks again"),
            (60, 10_000, 595_000, true, StartVerdict::Backoff, "asked within the backoff: waits for it"),
            (60, 10_000, 700_000, false, StartVerdict::GivenUp, "still nobody asks"),
        ];
        for (count, gap, now, asked, verdict, why) in cases {
            let failed = failing(count, gap);
            assert_eq!(start_verdict(&failed, now, DEADLINE, asked), verdict, "{why}: {failed:?} at {now}");
        }
        let mut healed = failing(60, 10_000);
        healed.ready(650_000);
        assert_eq!(start_verdict(&healed, 700_000, DEADLINE, false), StartVerdict::Start, "ready again: clean slate");
    }

    #[test]
    fn a_task_whose_start_waits_for_the_backoff_wakes_when_it_ends() {
        // (failed starts (a second apart from 1 s), active, desired, now, wake in, why)
        let cases = [
            (0, 0, 1, 1_000, None, "nothing failed: nothing held back"),
            (1, 0, 1, 1_000, Some(100), "crashed at 1 s: restarts at 1.1 s, not at the next bucket"),
            (1, 0, 1, 1_060, Some(40), "the rest of it"),
            (1, 0, 1, 1_100, None, "passed: the start is tried at once, no sleep (no spinning)"),
            (1, 1, 1, 1_000, None, "no instance missing: nothing to wake for"),
            (1, 0, 0, 1_000, None, "none wanted (at zero): a request pokes the task"),
            (4, 1, 3, 4_500, Some(300), "the fourth failure at 4 s: 800 ms"),
        ];
        for (count, active, desired, now, wake, why) in cases {
            let failed = failing(count, 1_000);
            assert_eq!(backoff_left_ms(&failed, active, desired, now), wake, "{why}: {failed:?}");
        }
    }

    #[test]
    fn a_failed_revision_turns_requests_away_only_until_its_backoff_has_passed() {
        // (failed starts, ever ready, now, marked failed, turned away, crash-looping, why)
        let cases = [
            (2, false, 1_250, false, false, false, "two failures: requests are held"),
            (3, false, 1_250, true, true, true, "three: marked; within the backoff, 503 at once"),
            (3, false, 1_600, true, false, true, "backoff (400 ms) passed: held, and wakes one more start"),
            (2, true, 1_250, false, false, false, "ready before, two crashes: requests wait for the restart"),
            (3, true, 1_250, false, false, true, "ready before, three: still held, but a crash loop"),
        ];
        for (count, ever_ready, now, marked, away, looping, why) in cases {
            let failed_starts = failing(count, 100);
            assert_eq!(marks_failed(&failed_starts, ever_ready), marked, "{why}");
            assert_eq!(crash_looping(&failed_starts), looping, "{why}");
            let failed = marked.then(|| Failed { reason: "boom".into(), retry_at_ms: failed_starts.retry_at_ms() });
            assert_eq!(turned_away(failed.as_ref(), now).is_some(), away, "{why}: {failed_starts:?}");
        }
    }
}
