//! Knative's per-event metrics, `event_count` and `event_dispatch_latencies`, recorded by ingress for each
//! request and by the dispatcher for each delivery attempt, with their handles kept.
//!
//! In: a scope (who recorded: a Broker, a Trigger), the event's type, the response code, and how to build the
//! full label set; out: the two metrics updated. Building six labels (each an owned string) and looking them up
//! in the registry cost about as much as the update itself on every request; the handles are looked up once
//! per (scope, type, code) and kept, up to a bound.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Mutex, PoisonError};

use metrics::{Counter, Histogram};

/// Kept handles; more distinct (scope, type, code) than this empty the table and it fills again.
const MAX_KEPT: usize = 4096;

/// The handles of one label set.
struct Kept {
    scope: Box<[Box<str>]>,
    event_type: Box<str>,
    code: u16,
    count: Counter,
    latency_ms: Histogram,
}

impl Kept {
    fn is_for(&self, scope: &[&str], event_type: &str, code: u16) -> bool {
        self.code == code
            && *self.event_type == *event_type
            && self.scope.len() == scope.len()
            && self.scope.iter().zip(scope).all(|(kept, asked)| **kept == **asked)
    }
}

/// `event_count` and `event_dispatch_latencies` by label set, for one recording site.
#[derive(Default)]
pub struct EventMetrics {
    kept: Mutex<HashMap<u64, Kept>>,
    hasher: std::collections::hash_map::RandomState,
}

impl EventMetrics {
    /// Counts `events` of `event_type` answered `code` (0: no response) for `scope`, and records `latency_ms`
    /// once. `labels` builds the full label set, called only the first time this (scope, type, code) is seen.
    pub fn record(
        &self,
        scope: &[&str],
        event_type: &str,
        code: u16,
        events: u64,
        latency_ms: f64,
        labels: impl FnOnce() -> Vec<(&'static str, String)>,
    ) {
        let key = self.hasher.hash_one((scope, event_type, code));
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(handles) = kept.get(&key)
            && handles.is_for(scope, event_type, code)
        {
            handles.count.increment(events);
            handles.latency_ms.record(latency_ms);
            return;
        }
        let labels = labels();
        let handles = Kept {
            scope: scope.iter().map(|part| Box::from(*part)).collect(),
            event_type: event_type.into(),
            code,
            count: metrics::counter!("event_count", &labels),
            latency_ms: metrics::histogram!("event_dispatch_latencies", &labels),
        };
        handles.count.increment(events);
        handles.latency_ms.record(latency_ms);
        if kept.len() >= MAX_KEPT {
            kept.clear();
        }
        // A hash shared by another label set replaces it; either is looked up again when it next comes.
        kept.insert(key, handles);
    }

    #[cfg(test)]
    fn kept(&self) -> usize {
        self.kept.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(scope: &str, event_type: &str, code: u16) -> Vec<(&'static str, String)> {
        vec![("scope", scope.to_string()), ("event_type", event_type.to_string()), ("response_code", code.to_string())]
    }

    #[test]
    fn labels_are_built_once_per_label_set() {
        let metrics = EventMetrics::default();
        let built = std::cell::RefCell::new(Vec::new());
        let record = |scope: &str, event_type: &str, code: u16| {
            metrics.record(&[scope], event_type, code, 1, 1.5, || {
                built.borrow_mut().push(format!("{scope} {event_type} {code}"));
                labels(scope, event_type, code)
            });
        };
        for (scope, event_type, code) in
            [("a", "t1", 202), ("a", "t1", 202), ("a", "t2", 202), ("a", "t1", 500), ("b", "t1", 202), ("a", "t2", 202)]
        {
            record(scope, event_type, code);
        }
        assert_eq!(*built.borrow(), ["a t1 202", "a t2 202", "a t1 500", "b t1 202"]);
        assert_eq!(metrics.kept(), 4);
    }

    #[test]
    fn scopes_of_several_parts_are_told_apart_and_the_table_is_bounded() {
        let metrics = EventMetrics::default();
        let built = std::cell::Cell::new(0);
        let record = |scope: &[&str], event_type: &str| {
            metrics.record(scope, event_type, 202, 1, 1.0, || {
                built.set(built.get() + 1);
                labels(&scope.join("/"), event_type, 202)
            });
        };
        // ["ab", "c"] and ["a", "bc"] join to the same text but are different scopes.
        record(&["ab", "c"], "t");
        record(&["a", "bc"], "t");
        record(&["ab", "c"], "t");
        assert_eq!(built.get(), 2);
        for i in 0..MAX_KEPT + 10 {
            record(&["s"], &format!("t{i}"));
        }
        assert!(metrics.kept() <= MAX_KEPT);
    }
}
