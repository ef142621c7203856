//! Traffic split: which revision the next request of a host goes to.
//!
//! Smooth weighted round robin (nginx's): each pick adds every target's weight to its credit, takes the target
//! with the most credit and takes the total from it. Deterministic and exact over every window of
//! `sum(weights)` picks (a 50/50 split answers 500/500 over 1,000 requests), spread out rather than in runs,
//! and per request, as Knative's routing is (not sticky).

/// The balancer of one host.
#[derive(Clone, Debug)]
pub(crate) struct Balancer {
    /// (revision, weight, credit, `namespace/revision`: the running revisions' key, made once).
    targets: Vec<(String, i64, i64, String)>,
}

impl Balancer {
    /// `targets`: revision and weight (percent); zero weights are never picked.
    pub(crate) fn new(namespace: &str, targets: &[(String, u32)]) -> Self {
        Balancer {
            targets: targets
                .iter()
                .filter(|(_, w)| *w > 0)
                .map(|(r, w)| (r.clone(), i64::from(*w), 0, format!("{namespace}/{r}")))
                .collect(),
        }
    }

    /// The same targets and weights (a table rebuilt with the same route keeps its balancer's state). Called
    /// per request: compares in place, without allocating.
    pub(crate) fn same_targets(&self, targets: &[(String, u32)]) -> bool {
        let wanted = targets.iter().filter(|(_, w)| *w > 0);
        wanted.clone().count() == self.targets.len()
            && wanted.zip(&self.targets).all(|((r, w), (ours, weight, _, _))| r == ours && i64::from(*w) == *weight)
    }

    /// The next revision, as its `namespace/revision` key.
    pub(crate) fn pick(&mut self) -> Option<&str> {
        let total: i64 = self.targets.iter().map(|(_, w, _, _)| w).sum();
        for (_, weight, credit, _) in &mut self.targets {
            *credit += *weight;
        }
        // The first of the targets with the most credit (so equal weights alternate in their order).
        let best = self.targets.iter_mut().rev().max_by_key(|(_, _, credit, _)| *credit)?;
        best.2 -= total;
        Some(best.3.as_str())
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

    proptest! {
        /// Over any whole number of periods each target gets exactly its share, and within a period never more
        /// than one pick away from it.
        #[test]
        fn every_target_gets_its_share(weights in prop::collection::vec(0u32..=100, 1..5), periods in 1usize..4) {
            let targets: Vec<(String, u32)> = weights.iter().enumerate().map(|(i, w)| (format!("r{i}"), *w)).collect();
            let total: u32 = weights.iter().sum();
            prop_assume!(total > 0);
            let mut balancer = Balancer::new("ns", &targets);
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            for pick in 1..=(total as usize * periods) {
                *counts.entry(balancer.pick().unwrap_or_default().trim_start_matches("ns/").to_string()).or_default() += 1;
                for (name, weight) in &targets {
                    let expected = f64::from(*weight) * pick as f64 / f64::from(total);
                    let got = counts.get(name).copied().unwrap_or(0) as f64;
                    prop_assert!((got - expected).abs() <= 1.0 + 1e-9, "{} after {}: {} vs {}", name, pick, got, expected);
                }
            }
            for (name, weight) in &targets {
                prop_assert_eq!(counts.get(name).copied().unwrap_or(0), u64::from(*weight) * periods as u64);
            }
        }
    }
}
