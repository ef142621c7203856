//! Traffic split: which revision the next request of a host goes to.
//!
//! Proportionally fair (Pfair) picks, earliest deadline first, kept as each target's lag: with `T = sum(weights)`,
//! every pick is due to a target of weight `w` by `w/T` (its credit, in units of `1/T`, grows by `w`), and the
//! pick goes to a released target (credit above zero once this pick's due is added) whose credit reaches a whole
//! pick soonest (`ceil((T - credit)/w)` picks from now, Pfair's deadline), the first in order on a tie; it then
//! owes that pick (`- T`). With fixed weights these are Pfair's picks: every deadline is met, and after any
//! number of picks `n` each target has had within one pick of `w·n/T` (strictly), exact over every `T` picks (a
//! 50/50 split answers 500/500 over 1,000 requests), spread out rather than in runs, and per request, as
//! Knative's routing is (not sticky). Smooth weighted round robin (nginx's) was used first; its error can pass one
//! pick (weights 94/1/7/94 give the last 34 picks where 35.01 are due after 73).
//!
//! A change of weights (each step of a gradual rollout) carries every remaining target's lag into the new
//! weights ([`Balancer::rebalanced`]), so each keeps the share due to it summed over the changes. Starting over at
//! each change (before session 65) gave, at about one request per step, every request to the heavier target: the
//! new revision of a rollout had none below 50 % and all of them above.

/// One target of a host's split.
#[derive(Clone, Debug)]
struct Target {
    revision: String,
    /// Percent; never zero (zero weights are left out).
    weight: i64,
    /// Picks owed to it, in units of `1/total` (negative: given ahead). The credits of a balancer sum to zero.
    credit: i64,
    /// `namespace/revision`: the running revisions' key, made once.
    key: String,
}

impl Target {
    /// Picks until its credit reaches a whole pick (`total`) at `weight` per pick: its Pfair deadline.
    fn picks_to_deadline(&self, total: i64) -> i64 {
        ((total - self.credit).max(0) + self.weight - 1) / self.weight
    }
}

/// The balancer of one host.
#[derive(Clone, Debug)]
pub(crate) struct Balancer {
    targets: Vec<Target>,
    /// The targets as given (weight above zero), to tell a table of the same split from another.
    given: Vec<(String, u32)>,
    /// The sum of the weights: a whole pick, in credit units.
    total: i64,
}

impl Balancer {
    /// `targets`: revision and weight (percent); zero weights are never picked.
    /// A revision named by several targets (`latestRevision: true` and the same revision by name) is one
    /// target of their weights summed.
    pub(crate) fn new(namespace: &str, targets: &[(String, u32)]) -> Self {
        let given: Vec<(String, u32)> = targets.iter().filter(|(_, w)| *w > 0).cloned().collect();
        let mut merged: Vec<Target> = Vec::with_capacity(given.len());
        for (revision, weight) in &given {
            match merged.iter_mut().find(|t| t.revision == *revision) {
                Some(target) => target.weight += i64::from(*weight),
                None => merged.push(Target {
                    revision: revision.clone(),
                    weight: i64::from(*weight),
                    credit: 0,
                    key: format!("{namespace}/{revision}"),
                }),
            }
        }
        let total = merged.iter().map(|t| t.weight).sum();
        Balancer { targets: merged, given, total }
    }

    /// The same targets and weights (a table rebuilt with the same route keeps its balancer's state). Called
    /// per request: compares in place, without allocating.
    pub(crate) fn same_targets(&self, targets: &[(String, u32)]) -> bool {
        let wanted = targets.iter().filter(|(_, w)| *w > 0);
        wanted.clone().count() == self.given.len() && wanted.zip(&self.given).all(|(wanted, given)| wanted == given)
    }

    /// The balancer for new weights `targets`, each remaining target keeping its lag from this one (in the new
    /// units, rounded); a removed target's is shared out, so that the credits still sum to zero (what one is
    /// owed, the others were given ahead).
    pub(crate) fn rebalanced(&self, namespace: &str, targets: &[(String, u32)]) -> Self {
        let mut next = Balancer::new(namespace, targets);
        if self.total == 0 || next.targets.is_empty() {
            return next;
        }
        for target in &mut next.targets {
            if let Some(before) = self.targets.iter().find(|t| t.revision == target.revision) {
                let scaled = i128::from(before.credit) * i128::from(next.total);
                let rounded = (scaled + i128::from(self.total) / 2).div_euclid(i128::from(self.total));
                target.credit = i64::try_from(rounded).unwrap_or(0);
            }
        }
        let excess: i64 = next.targets.iter().map(|t| t.credit).sum();
        let count = next.targets.len() as i64;
        for (i, target) in next.targets.iter_mut().enumerate() {
            // `excess` spread as evenly as integers allow, the remainder on the first ones.
            target.credit -= excess.div_euclid(count) + i64::from((i as i64) < excess.rem_euclid(count));
        }
        next
    }

    /// The next revision, as its `namespace/revision` key.
    pub(crate) fn pick(&mut self) -> Option<&str> {
        let total = self.total;
        for target in &mut self.targets {
            target.credit += target.weight;
        }
        // The first released target with the earliest deadline. One is always released: the credits sum to
        // `total` once this pick is due; were none, the earliest deadline still goes.
        let best = self
            .targets
            .iter()
            .enumerate()
            .min_by_key(|(i, t)| (t.credit <= 0, t.picks_to_deadline(total), *i))
            .map(|(i, _)| i)?;
        self.targets[best].credit -= total;
        Some(self.targets[best].key.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    fn counts(targets: &[(&str, u32)], picks: usize) -> BTreeMap<String, usize> {
        let targets: Vec<(String, u32)> = targets.iter().map(|(r, w)| (r.to_string(), *w)).collect();
        let mut balancer = Balancer::new("ns", &targets);
        let mut counts = BTreeMap::new();
        for _ in 0..picks {
            let key = balancer.pick().expect("a target");
            *counts.entry(key.trim_start_matches("ns/").to_string()).or_default() += 1;
        }
        counts
    }

    #[test]
    fn splits_are_exact_over_their_period() {
        assert_eq!(counts(&[("a", 50), ("b", 50)], 1000), BTreeMap::from([("a".into(), 500), ("b".into(), 500)]));
        assert_eq!(counts(&[("a", 90), ("b", 10)], 100), BTreeMap::from([("a".into(), 90), ("b".into(), 10)]));
        assert_eq!(
            counts(&[("a", 20), ("b", 30), ("c", 50)], 200),
            BTreeMap::from([("a".into(), 40), ("b".into(), 60), ("c".into(), 100)])
        );
        assert_eq!(counts(&[("dark", 0), ("live", 100)], 10), BTreeMap::from([("live".into(), 10)]));
    }

    #[test]
    fn picks_are_spread_not_in_runs() {
        let targets = vec![("a".to_string(), 50), ("b".to_string(), 50)];
        let mut balancer = Balancer::new("ns", &targets);
        let picks: Vec<String> =
            (0..4).map(|_| balancer.pick().unwrap_or_default().trim_start_matches("ns/").to_string()).collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
        assert!(Balancer::new("ns", &[("x".into(), 0)]).pick().is_none(), "no weight, no target");
        assert!(balancer.same_targets(&[("a".into(), 50), ("dark".into(), 0), ("b".into(), 50)]));
        assert!(!balancer.same_targets(&[("a".into(), 50), ("b".into(), 49)]));
        assert!(!balancer.same_targets(&[("a".into(), 50)]));
    }

    #[test]
    fn regression_smooth_round_robin_passed_one_pick_behind_a_share() {
        // Weights 94/1/7/94: smooth weighted round robin gave r3 34 picks after 73, where 35.01 were due.
        let weights = [94u32, 1, 7, 94];
        let targets: Vec<(String, u32)> = weights.iter().enumerate().map(|(i, w)| (format!("r{i}"), *w)).collect();
        let mut balancer = Balancer::new("ns", &targets);
        let mut r3 = 0u32;
        for _ in 0..73 {
            r3 += u32::from(balancer.pick() == Some("ns/r3"));
        }
        assert!((35..=36).contains(&r3), "r3 had {r3} picks after 73 (35.01 due)");
    }

    /// Every split of 100 percent over three revisions: less than one pick from its share after every pick.
    #[test]
    fn every_three_way_percent_split_stays_within_one_pick() {
        for a in 0..=100u32 {
            for b in 0..=(100 - a) {
                let weights = [a, b, 100 - a - b];
                let targets: Vec<(String, u32)> =
                    weights.iter().enumerate().map(|(i, w)| (format!("r{i}"), *w)).collect();
                let mut balancer = Balancer::new("ns", &targets);
                let mut counts = [0i64; 3];
                for pick in 1..=100i64 {
                    let key = balancer.pick().unwrap_or_default();
                    let index = targets.iter().position(|(r, _)| key == format!("ns/{r}")).unwrap_or(usize::MAX);
                    assert!(index < 3, "{weights:?}: picked {key:?}");
                    counts[index] += 1;
                    for (count, weight) in counts.iter().zip(weights) {
                        assert!(
                            (count * 100 - i64::from(weight) * pick).abs() < 100,
                            "{weights:?} after {pick}: {counts:?}"
                        );
                    }
                }
            }
        }
    }

    /// A revision named twice in a split (the latest revision, and the same one by name) is one target: its lag is
    /// carried whole across a change, not the first entry's twice.
    #[test]
    fn a_revision_named_twice_is_one_target_of_both_weights() {
        let split = [("a".to_string(), 50), ("b".to_string(), 25), ("a".to_string(), 25)];
        let mut balancer = Balancer::new("ns", &split);
        assert!(balancer.same_targets(&split));
        let picks: Vec<bool> = (0..100).map(|_| balancer.pick() == Some("ns/a")).collect();
        assert_eq!(picks.iter().filter(|a| **a).count(), 75);
        let next = balancer.rebalanced("ns", &[("a".to_string(), 60), ("b".to_string(), 40)]);
        assert_eq!(next.targets.iter().map(|t| t.credit).sum::<i64>(), 0);
    }

    /// Regression (a review of the serving data plane): at about one request per step of a rollout, the balancer
    /// started over at each step and the heavier target had every request, so the new revision had none below
    /// 50 % and all of them above. Carried over, its picks follow the cumulative share due at every step.
    #[test]
    fn a_gradual_rollout_at_one_request_per_step_follows_its_share() {
        let mut balancer = Balancer::new("ns", &[("old".into(), 100)]);
        let (mut due, mut got) = (0.0f64, 0u32);
        for step in 1..=100u32 {
            let targets = [("old".to_string(), 100 - step), ("new".to_string(), step)];
            if !balancer.same_targets(&targets) {
                balancer = balancer.rebalanced("ns", &targets);
            }
            got += u32::from(balancer.pick() == Some("ns/new"));
            due += f64::from(step) / 100.0;
            assert!((f64::from(got) - due).abs() < 2.0, "step {step}: {got} picks of the new revision, {due} due");
        }
    }

    proptest! {
        /// Whatever the weights and however often they change, every target present throughout stays within two
        /// picks of the share due to it summed over the steps (its weight at each pick), and what is carried sums
        /// to zero.
        #[test]
        fn a_target_keeps_its_share_across_changes_of_weights(
            steps in prop::collection::vec((prop::collection::vec(1u32..=100, 3), 1usize..12), 1..40),
        ) {
            let names = ["r0", "r1", "r2"];
            let mut balancer: Option<Balancer> = None;
            let (mut due, mut got) = ([0.0f64; 3], [0.0f64; 3]);
            for (weights, picks) in steps {
                let targets: Vec<(String, u32)> = names.iter().map(|n| n.to_string()).zip(weights.clone()).collect();
                let next = match balancer.take() {
                    Some(b) if b.same_targets(&targets) => b,
                    Some(b) => b.rebalanced("ns", &targets),
                    None => Balancer::new("ns", &targets),
                };
                let credits: i64 = next.targets.iter().map(|t| t.credit).sum();
                prop_assert_eq!(credits, 0, "the credits sum to zero");
                let mut b = next;
                let total: u32 = weights.iter().sum();
                for _ in 0..picks {
                    let key = b.pick().unwrap_or_default().trim_start_matches("ns/").to_string();
                    let index = names.iter().position(|n| *n == key).unwrap_or(usize::MAX);
                    prop_assert!(index < 3);
                    got[index] += 1.0;
                    for (d, w) in due.iter_mut().zip(&weights) {
                        *d += f64::from(*w) / f64::from(total);
                    }
                    for i in 0..3 {
                        prop_assert!((got[i] - due[i]).abs() < 2.0, "{}: {} picks, {} due", names[i], got[i], due[i]);
                    }
                }
                balancer = Some(b);
            }
        }

        /// Over any whole number of periods each target gets exactly its share, and after any pick it is less
        /// than one pick away from it.
        #[test]
        fn every_target_gets_its_share(weights in prop::collection::vec(0u32..=100, 1..7), periods in 1usize..4) {
            let targets: Vec<(String, u32)> = weights.iter().enumerate().map(|(i, w)| (format!("r{i}"), *w)).collect();
            let total: u32 = weights.iter().sum();
            prop_assume!(total > 0);
            let mut balancer = Balancer::new("ns", &targets);
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for pick in 1..=(total as usize * periods) {
                *counts.entry(balancer.pick().unwrap_or_default().trim_start_matches("ns/").to_string()).or_default() += 1;
                for (name, weight) in &targets {
                    // |got - weight·pick/total| < 1, in integers: |got·total - weight·pick| < total.
                    let due_times_total = i128::from(*weight) * pick as i128;
                    let got_times_total = i128::from(counts.get(name).copied().unwrap_or(0)) * i128::from(total);
                    prop_assert!(
                        (got_times_total - due_times_total).abs() < i128::from(total),
                        "{} after {}: {} picks vs {} due", name, pick, got_times_total / i128::from(total),
                        due_times_total as f64 / f64::from(total)
                    );
                }
            }
            for (name, weight) in &targets {
                prop_assert_eq!(counts.get(name).copied().unwrap_or(0), u64::from(*weight) * periods as u64);
            }
        }
    }
}
