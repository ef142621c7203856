//! Gradual rollout (Knative's `serving.knative.dev/rollout-duration`): a Route's traffic to a Configuration's
//! latest ready Revision moves to a new one in steps over the duration, not at once.
//!
//! What flows in: a target's percent, the Configuration's ready Revisions with the wall-clock time each became
//! ready (recorded in its `RevisionState`), the duration, and now. What flows out: the target's split over the
//! new Revision and those it replaces, newest first, and when that split next changes. Pure: every node
//! computes the same split from the same stored facts, each with its own clock.
//!
//! Knative's steps (`pkg/reconciler/route/traffic/rollout.go`): a new latest ready Revision starts at 1 %; after
//! the first step's time (Knative waits for its ingress; Sluice's data plane takes a table at once, so 1 s,
//! Knative's smallest step) the rest moves in equal steps of at least 1 s, and all of it by the duration's end.
//! A Revision that becomes ready while an earlier one is still rolling out starts its own rollout, taking its
//! share of the whole target; what is left keeps rolling from the older ones as it did (Knative drains the
//! unfinished rollouts the same way, `multiple-rollouts.md`).

use serde_json::Value;

/// The annotation on a Route (or on the Service, which hands it to its Route), in Go's duration syntax.
pub const ROLLOUT_DURATION_ANNOTATION: &str = "serving.knative.dev/rollout-duration";

/// Where rollouts stand: now (wall clock, ms), and the duration of a Route's rollout when it has no
/// annotation (Knative's `config-network` `rollout-duration`: the nodes' `--serving-rollout-duration`; 0, the
/// default, switches at once).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RolloutClock {
    pub now_ms: u64,
    pub default_duration_ms: u64,
}

/// The rollout duration of `object` (a Route) in ms: its annotation's, else `default_ms`. Validation refuses an
/// annotation that does not parse ([`parse_duration_ms`]); one stored anyway counts as absent.
pub(crate) fn duration_ms(object: &Value, default_ms: u64) -> u64 {
    object
        .pointer("/metadata/annotations")
        .and_then(|annotations| annotations.get(ROLLOUT_DURATION_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|value| parse_duration_ms(value).ok())
        .unwrap_or(default_ms)
}

/// Knative's rule for the annotation (and `config-network`'s key): Go's duration syntax (`380s`, `10m`,
/// `1h30m`), not negative.
pub fn parse_duration_ms(value: &str) -> Result<u64, String> {
    super::autoscaling::millis(ROLLOUT_DURATION_ANNOTATION, value).map_err(|why| {
        why.strip_prefix(ROLLOUT_DURATION_ANNOTATION).and_then(|w| w.strip_prefix(": ")).unwrap_or(&why).to_string()
    })
}

/// The first step's length, and the shortest step.
const MIN_STEP_MS: u64 = 1_000;

/// A ready Revision of a Configuration and when it became ready (wall clock, ms).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadyRevision {
    pub name: String,
    pub ready_at_ms: u64,
}

/// A target's percent split by a rollout: `(revision, percent)` newest first, and the wall-clock time the split
/// next changes (`None`: it is final).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutSplit {
    pub shares: Vec<(String, u32)>,
    pub next_change_at_ms: Option<u64>,
}

/// The plan of one rollout of `percent` over `duration_ms`: how many equal steps follow the first 1 %, how much
/// each moves and how long each lasts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Steps {
    count: u64,
    size: u64,
    step_ms: u64,
}

fn steps(percent: u32, duration_ms: u64) -> Steps {
    let rest = u64::from(percent.saturating_sub(1));
    let after_first_ms = duration_ms.saturating_sub(MIN_STEP_MS).max(1);
    let count = rest.min((after_first_ms / MIN_STEP_MS).max(1)).max(1);
    Steps { count, size: rest.div_ceil(count), step_ms: (after_first_ms / count).max(1) }
}

/// The share of `percent` a Revision has `elapsed_ms` after it became ready, in a rollout of `duration_ms`: 1 until
/// the first step's time, then one more step each step's time, all of it from `duration_ms` on. Never more
/// than `percent`; `percent` itself when there is nothing to roll (`duration_ms` 0, or a percent of 1 or less).
pub fn new_revision_share(percent: u32, elapsed_ms: u64, duration_ms: u64) -> u32 {
    if percent <= 1 || elapsed_ms >= duration_ms {
        return percent;
    }
    if elapsed_ms < MIN_STEP_MS {
        return 1;
    }
    let plan = steps(percent, duration_ms);
    let taken = (elapsed_ms - MIN_STEP_MS) / plan.step_ms;
    let share = 1u64.saturating_add(plan.size.saturating_mul(taken));
    u32::try_from(share).unwrap_or(u32::MAX).min(percent)
}

/// The elapsed time at which [`new_revision_share`] next changes after `elapsed_ms` (`None`: it no longer does).
pub fn next_step_after(percent: u32, elapsed_ms: u64, duration_ms: u64) -> Option<u64> {
    if new_revision_share(percent, elapsed_ms, duration_ms) >= percent {
        return None;
    }
    if elapsed_ms < MIN_STEP_MS {
        return Some(MIN_STEP_MS.min(duration_ms));
    }
    let plan = steps(percent, duration_ms);
    let taken = (elapsed_ms - MIN_STEP_MS) / plan.step_ms;
    let next = MIN_STEP_MS.saturating_add(plan.step_ms.saturating_mul(taken + 1));
    Some(next.min(duration_ms))
}

/// How a target of `percent` on a Configuration whose latest ready Revision is `latest` is split now. `ready`:
/// the Configuration's ready Revisions (any order; `latest` may be among them). The latest takes its share;
/// the rest goes to the Revision that was latest before it (the newest that became ready earlier), split the
/// same way when that one is still rolling out itself, and so on; the last in line takes what remains. A
/// `duration_ms` of 0 sends it all to `latest`.
pub fn split(
    percent: u32,
    latest: &ReadyRevision,
    ready: &[ReadyRevision],
    duration_ms: u64,
    now_ms: u64,
) -> RolloutSplit {
    let mut shares = Vec::new();
    let mut next_change_at_ms: Option<u64> = None;
    let mut remaining = percent;
    let mut current = latest;
    loop {
        let predecessor = ready
            .iter()
            .filter(|r| r.name != current.name && r.ready_at_ms < current.ready_at_ms)
            .max_by(|a, b| a.ready_at_ms.cmp(&b.ready_at_ms).then_with(|| b.name.cmp(&a.name)));
        let elapsed_ms = now_ms.saturating_sub(current.ready_at_ms);
        let share = new_revision_share(remaining, elapsed_ms, duration_ms);
        let Some(predecessor) = predecessor.filter(|_| share < remaining) else {
            shares.push((current.name.clone(), remaining));
            break;
        };
        if let Some(after) = next_step_after(remaining, elapsed_ms, duration_ms) {
            let at = current.ready_at_ms.saturating_add(after);
            next_change_at_ms = Some(next_change_at_ms.map_or(at, |next| next.min(at)));
        }
        shares.push((current.name.clone(), share));
        remaining -= share;
        current = predecessor;
    }
    shares.retain(|(_, share)| *share > 0);
    RolloutSplit { shares, next_change_at_ms }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn ready(name: &str, ready_at_ms: u64) -> ReadyRevision {
        ReadyRevision { name: name.into(), ready_at_ms }
    }

    fn shares(split: &RolloutSplit) -> Vec<(&str, u32)> {
        split.shares.iter().map(|(name, share)| (name.as_str(), *share)).collect()
    }

    #[test]
    fn a_minute_long_rollout_of_the_whole_traffic_steps_every_second() {
        // 60 s: 1 % for the first second, then 59 steps of 2 % (99 ÷ 59, rounded up) a second, 100 % at 60 s.
        let table = [
            (0, 1),
            (999, 1),
            (1_000, 1),
            (2_000, 3),
            (2_999, 3),
            (3_000, 5),
            (30_000, 59),
            (50_000, 99),
            (51_000, 100),
            (59_999, 100),
            (60_000, 100),
            (600_000, 100),
        ];
        for (elapsed_ms, expected) in table {
            assert_eq!(new_revision_share(100, elapsed_ms, 60_000), expected, "at {elapsed_ms} ms");
        }
    }

    #[test]
    fn the_step_times_follow_the_shares() {
        assert_eq!(next_step_after(100, 0, 60_000), Some(1_000));
        assert_eq!(next_step_after(100, 1_000, 60_000), Some(2_000));
        assert_eq!(next_step_after(100, 2_500, 60_000), Some(3_000));
        assert_eq!(next_step_after(100, 50_000, 60_000), Some(51_000));
        assert_eq!(next_step_after(100, 51_000, 60_000), None, "all of it already");
        assert_eq!(next_step_after(100, 60_000, 60_000), None);
        // Longer than a step a percent: 99 steps, each 10 s.
        assert_eq!(new_revision_share(100, 11_000, 991_000), 2);
        assert_eq!(next_step_after(100, 11_000, 991_000), Some(21_000));
    }

    #[test]
    fn nothing_to_roll_goes_at_once() {
        assert_eq!(new_revision_share(100, 0, 0), 100, "no duration");
        assert_eq!(new_revision_share(1, 0, 60_000), 1, "one percent");
        assert_eq!(new_revision_share(0, 0, 60_000), 0, "a target at zero");
        assert_eq!(next_step_after(100, 0, 0), None);
        // Shorter than the first step: 1 % until it ends.
        assert_eq!(new_revision_share(100, 400, 500), 1);
        assert_eq!(next_step_after(100, 400, 500), Some(500));
        assert_eq!(new_revision_share(100, 500, 500), 100);
    }

    #[test]
    fn a_new_revision_takes_its_share_from_the_one_it_replaces() {
        let revisions = [ready("v1", 0), ready("v2", 100_000)];
        let at = |now_ms| split(100, &revisions[1], &revisions, 60_000, now_ms);
        assert_eq!(shares(&at(100_000)), vec![("v2", 1), ("v1", 99)]);
        assert_eq!(at(100_000).next_change_at_ms, Some(101_000));
        assert_eq!(shares(&at(130_000)), vec![("v2", 59), ("v1", 41)]);
        assert_eq!(shares(&at(160_000)), vec![("v2", 100)]);
        assert_eq!(at(160_000).next_change_at_ms, None);
        // Without a duration, Knative's default: all at once.
        assert_eq!(shares(&split(100, &revisions[1], &revisions, 0, 100_000)), vec![("v2", 100)]);
        // Alone: nothing to take from.
        assert_eq!(shares(&split(100, &revisions[1], &revisions[1..], 60_000, 100_000)), vec![("v2", 100)]);
    }

    #[test]
    fn a_rollout_during_a_rollout_takes_from_both() {
        // v2 at 59 % when v3 becomes ready: v3 takes 1 %, the 99 left keep rolling from v1 to v2.
        let revisions = [ready("v1", 0), ready("v2", 100_000), ready("v3", 130_000)];
        let at = |now_ms| split(100, &revisions[2], &revisions, 60_000, now_ms);
        assert_eq!(shares(&at(130_000)), vec![("v3", 1), ("v2", 59), ("v1", 40)]);
        assert_eq!(shares(&at(160_000)), vec![("v3", 59), ("v2", 41)], "v2's rollout is over: it holds the rest");
        assert_eq!(shares(&at(190_000)), vec![("v3", 100)]);
        // The next change is the nearer of the two rollouts' next steps.
        assert_eq!(at(130_500).next_change_at_ms, Some(131_000));
    }

    #[test]
    fn a_split_target_keeps_its_percent_and_an_earlier_ready_time_rolls_nothing() {
        let revisions = [ready("v1", 0), ready("v2", 100_000)];
        assert_eq!(shares(&split(40, &revisions[1], &revisions, 60_000, 130_000)), vec![("v2", 20), ("v1", 20)]);
        // A rollback to a Revision ready before the one serving (the template names it again): at once.
        assert_eq!(shares(&split(100, &revisions[0], &revisions, 60_000, 100_500)), vec![("v1", 100)]);
    }

    proptest! {
        #[test]
        fn shares_sum_to_the_target_and_only_grow(
            percent in 0u32..=100,
            duration_ms in 0u64..3_600_000,
            ready_at in proptest::collection::vec(0u64..200_000, 1..5),
            now_ms in 0u64..4_000_000,
            later_ms in 0u64..100_000,
        ) {
            let revisions: Vec<ReadyRevision> =
                ready_at.iter().enumerate().map(|(i, at)| ready(&format!("v{i}"), *at)).collect();
            let latest = revisions.iter().max_by_key(|r| r.ready_at_ms).expect("one");
            let now = split(percent, latest, &revisions, duration_ms, now_ms);
            prop_assert_eq!(now.shares.iter().map(|(_, s)| s).sum::<u32>(), percent);
            prop_assert!(now.shares.iter().all(|(_, s)| *s > 0));
            // The newest only gains as time goes on, and nothing changes before the time given.
            let later = split(percent, latest, &revisions, duration_ms, now_ms + later_ms);
            let newest = |s: &RolloutSplit| s.shares.iter().find(|(n, _)| *n == latest.name).map_or(0, |(_, s)| *s);
            prop_assert!(newest(&later) >= newest(&now));
            match now.next_change_at_ms {
                Some(at) => {
                    prop_assert!(at > now_ms);
                    let just_before = split(percent, latest, &revisions, duration_ms, at - 1);
                    prop_assert_eq!(&just_before.shares, &now.shares);
                }
                None => prop_assert_eq!(&later.shares, &now.shares),
            }
            let share = new_revision_share(percent, now_ms, duration_ms);
            prop_assert!(share <= percent);
            prop_assert_eq!(new_revision_share(percent, duration_ms, duration_ms), percent);
        }
    }
}
