//! What a node's serving shares between its parts: the route table and the running revisions (the HTTP
//! router reads them, the supervisor writes them), each host's balancer and metrics, and the dispatcher's signals; and the
//! dispatcher's view of it all, [`SubscriberSignals`].
//!
//! What flows in: the table and revisions from the supervisor, backlog reports from the dispatcher, ready
//! capacities from the revisions. What flows out: the in-flight limit towards a host (the sum of its routed
//! revisions' ready capacity), each revision's backlog, wake-ups.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use sluice_autoscaler::Backlog;
use sluice_controller::serving::autoscaling::Signals as DecidingSignals;
use sluice_controller::serving::routing::RouteTable;
use tokio::sync::watch;

use crate::balance::Balancer;
use crate::clock::monotonic_ms;
use crate::revision::{RevisionHandle, RevisionSignals, UNLIMITED};
use crate::signals::{Signals, routed_revisions};

/// What the HTTP router, the supervisor, the admin API and the dispatcher read.
#[derive(Default)]
pub(crate) struct Shared {
    pub(crate) table: RwLock<Arc<RouteTable>>,
    pub(crate) revisions: RwLock<HashMap<String, Arc<RevisionHandle>>>,
    /// Per Route host: its traffic split's state and its metrics' handles.
    pub(crate) hosts: Mutex<HashMap<String, HostTraffic>>,
    /// The dispatcher's backlog reports and the capacity counter.
    pub(crate) signals: Signals,
}

impl Shared {
    /// Serves `table` from now on. A host no Route serves any more leaves with its balancer and metric handles:
    /// hosts come and go with Services, and kept they would pile up for the node's life.
    /// Answers the table now served.
    pub(crate) fn install_table(&self, table: RouteTable) -> Arc<RouteTable> {
        if let Ok(mut hosts) = self.hosts.lock() {
            hosts.retain(|host, _| table.contains_key(host));
        }
        let table = Arc::new(table);
        if let Ok(mut current) = self.table.write() {
            *current = table.clone();
        }
        table
    }
}

/// One Route host as the HTTP router keeps it between requests.
pub(crate) struct HostTraffic {
    pub(crate) balancer: Balancer,
    pub(crate) metrics: Arc<HostMetrics>,
}

impl HostTraffic {
    pub(crate) fn new(host: &str, namespace: &str, targets: &[(String, u32)]) -> Self {
        HostTraffic { balancer: Balancer::new(namespace, targets), metrics: Arc::new(HostMetrics::new(host)) }
    }
}

/// A host's request metrics, registered once rather than looked up by their labels on every request:
/// `sluice_serving_requests_total{host,code}` and `sluice_serving_request_start_seconds{host}`.
pub(crate) struct HostMetrics {
    host: String,
    start_seconds: metrics::Histogram,
    /// One counter per status code seen (a few dozen at most: status codes are three digits).
    requests_by_code: Mutex<Vec<(u16, metrics::Counter)>>,
}

impl HostMetrics {
    fn new(host: &str) -> Self {
        HostMetrics {
            host: host.to_string(),
            start_seconds: metrics::histogram!("sluice_serving_request_start_seconds", "host" => host.to_string()),
            requests_by_code: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn record(&self, code: u16, elapsed_seconds: f64) {
        self.start_seconds.record(elapsed_seconds);
        let Ok(mut counters) = self.requests_by_code.lock() else { return };
        match counters.iter().find(|(c, _)| *c == code) {
            Some((_, counter)) => counter.increment(1),
            None => {
                let counter = requests_counter(&self.host, code);
                counter.increment(1);
                counters.push((code, counter));
            }
        }
    }

    /// A request to a host no Route serves, under one label for all of them: the client chooses the `Host`
    /// header, and a label per name would let anyone grow the node's series (and `/metrics`) without bound.
    pub(crate) fn record_unrouted(code: u16, elapsed_seconds: f64) {
        requests_counter(UNROUTED_HOST_LABEL, code).increment(1);
        metrics::histogram!("sluice_serving_request_start_seconds", "host" => UNROUTED_HOST_LABEL)
            .record(elapsed_seconds);
    }
}

/// The `host` label of requests to hosts that no Route serves.
pub(crate) const UNROUTED_HOST_LABEL: &str = "_unrouted";

fn requests_counter(host: &str, code: u16) -> metrics::Counter {
    metrics::counter!("sluice_serving_requests_total", "host" => host.to_string(), "code" => code.to_string())
}

impl RevisionSignals for Shared {
    fn backlog(&self, namespace: &str, name: &str) -> Backlog {
        let table = self.table.read().map(|t| t.clone()).unwrap_or_default();
        self.signals.backlog_for(&table, namespace, name, monotonic_ms())
    }

    fn capacity_grew(&self) {
        self.signals.capacity_grew();
    }
}

/// What may be in flight towards a host from this node, and what those deliveries are counted under.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostLimit {
    pub max_in_flight: usize,
    /// The revisions the host's Route sends traffic to ([`counted_as`]): hosts that reach the same revisions
    /// (a Route's own and a tag's naming its one revision, or the host written with a port or in capitals)
    /// share one count, since the same instances take their deliveries.
    pub counted_as: String,
}

/// The key of a host's count: its namespace and the revisions with a share of its traffic, sorted.
fn counted_as(namespace: &str, targets: &[(String, u32)]) -> String {
    let mut names: Vec<&str> = routed_revisions(targets).into_iter().map(|(name, _)| name).collect();
    names.sort_unstable();
    format!("{namespace}/{}", names.join(","))
}

/// The node's serving, as the dispatcher sees it.
#[derive(Clone)]
pub struct SubscriberSignals {
    pub(crate) shared: Arc<Shared>,
}

/// `Host` without the port and a trailing dot, lower case: as the data plane reads a request's host
/// (`request_host`), so that a subscriber written `hello.default.localhost.:8080` is the route it reaches
/// (it was not, and its deliveries ran without the revision's in-flight limit).
fn host_name(host: &str) -> String {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(host, |(address, _)| address),
        None => match host.rsplit_once(':') {
            Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    name.trim_end_matches('.').to_ascii_lowercase()
}

impl SubscriberSignals {
    /// Deliveries to `host` that may be in flight from this node now: the ready capacity of the revisions its
    /// Route sends traffic to. `None`: not a Route served here, a revision without `containerConcurrency` (no
    /// limit from serving), or a routed revision this node does not run (one its own settings refuse, such as a
    /// `max-scale` above its `--autoscaler max-scale-limit=N`) or has marked failed (`dispatcher_capacity`): its
    /// deliveries go and fail as any request to it does, and are retried and dead-lettered, rather than wait for
    /// room that never comes (they used to, holding the consumer's watermark for good).
    pub fn limit(&self, host: &str) -> Option<HostLimit> {
        let host = host_name(host);
        let table = self.shared.table.read().ok()?.clone();
        let route = table.get(&host)?;
        let revisions = self.shared.revisions.read().ok()?;
        let max_in_flight = host_limit(&route.targets, |name| {
            let revision = revisions.get(&format!("{}/{name}", route.namespace));
            revision_limit(revision.map(|r| (r.run.autoscaling.signals, r.ready_capacity.load(Ordering::Relaxed))))
        })?;
        Some(HostLimit { max_in_flight, counted_as: counted_as(&route.namespace, &route.targets) })
    }

    /// Replaces `reporter`'s last report: `events` waiting for `host` (`ordered_keys` of them ordered). A
    /// revision at zero that this wakes starts at once.
    pub fn report_backlog(&self, reporter: &str, host: &str, events: u64, ordered_keys: Option<u64>) {
        let host = host_name(host);
        let backlog = Backlog { events, ordered_keys };
        if !self.shared.signals.report(reporter, &host, backlog, monotonic_ms()) || events == 0 {
            return;
        }
        // Wake the revisions this host routes to, so that one at zero starts without waiting for its tick.
        let Ok(table) = self.shared.table.read().map(|t| t.clone()) else { return };
        let Some(route) = table.get(&host) else { return };
        if let Ok(revisions) = self.shared.revisions.read() {
            for (name, _) in &route.targets {
                if let Some(revision) = revisions.get(&format!("{}/{name}", route.namespace)) {
                    revision.poke();
                }
            }
        }
    }

    /// Moves whenever a revision's ready capacity grew.
    pub fn capacity_grown(&self) -> watch::Receiver<u64> {
        self.shared.signals.subscribe()
    }
}

/// What one routed revision allows in flight from this node, given how it decides and its ready capacity when
/// this node runs it: `None` (no limit) when it does not run here, decides on concurrency alone (Knative's
/// way: the dispatcher pushes its own window) or has no `containerConcurrency`.
fn revision_limit(run_here: Option<(DecidingSignals, usize)>) -> Option<usize> {
    let (signals, capacity) = run_here?;
    (signals != DecidingSignals::Concurrency && capacity != UNLIMITED).then_some(capacity)
}

/// A host's in-flight limit: the ready capacity of each revision its route sends traffic to, counted once
/// however many entries of the route name it (`latestRevision: true` and the same revision by name: its
/// instances take its capacity once). `capacity`: a revision's ready capacity, or `None` where serving sets
/// no limit, which lifts the host's.
fn host_limit(targets: &[(String, u32)], capacity: impl Fn(&str) -> Option<usize>) -> Option<usize> {
    let mut limit = 0usize;
    for (revision, _) in routed_revisions(targets) {
        limit = limit.saturating_add(capacity(revision)?);
    }
    Some(limit)
}

#[cfg(test)]
mod tests {
    use sluice_controller::serving::routing::HostTargets;

    use super::*;

    fn routed(hosts: &[&str]) -> RouteTable {
        let targets = |host: &str| HostTargets {
            namespace: "default".into(),
            name: host.split('.').next().unwrap_or_default().into(),
            targets: vec![("rev-00001".into(), 100)],
        };
        hosts.iter().map(|host| (host.to_string(), targets(host))).collect()
    }

    fn traffic(shared: &Shared, host: &str) {
        let targets = vec![("rev-00001".to_string(), 100)];
        if let Ok(mut hosts) = shared.hosts.lock() {
            hosts.insert(host.into(), HostTraffic::new(host, "default", &targets));
        }
    }

    /// Regression: a host kept its balancer and metric handles after its Route was gone, for the node's life.
    #[test]
    fn a_host_no_route_serves_any_more_is_forgotten_when_the_table_changes() {
        let shared = Shared::default();
        shared.install_table(routed(&["a.default.localhost", "b.default.localhost"]));
        traffic(&shared, "a.default.localhost");
        traffic(&shared, "b.default.localhost");
        shared.install_table(routed(&["a.default.localhost", "c.default.localhost"]));
        let kept: Vec<String> = shared.hosts.lock().map(|h| h.keys().cloned().collect()).unwrap_or_default();
        assert_eq!(kept, ["a.default.localhost"], "b left with its Route; c has had no request yet");
        let served: Vec<String> = shared.table.read().map(|t| t.keys().cloned().collect()).unwrap_or_default();
        assert_eq!(served, ["a.default.localhost", "c.default.localhost"]);
    }

    /// Regression: a routed revision this node does not run counted as no room (0), so its deliveries waited
    /// for good; it sets no limit now.
    #[test]
    fn a_revision_sets_a_limit_only_when_run_here_on_both_signals_with_a_concurrency() {
        let cases = [
            (None, None, "not run here"),
            (Some((DecidingSignals::Both, 0)), Some(0), "run here, none ready: no room yet"),
            (Some((DecidingSignals::Both, 8)), Some(8), "ready capacity"),
            (Some((DecidingSignals::Backlog, 8)), Some(8), "deciding on the backlog alone"),
            (Some((DecidingSignals::Concurrency, 8)), None, "Knative's way: the dispatcher's own window"),
            (Some((DecidingSignals::Both, UNLIMITED)), None, "no containerConcurrency"),
        ];
        for (run_here, limit, why) in cases {
            assert_eq!(revision_limit(run_here), limit, "{why}");
        }
    }

    /// Regression: a Route's host and a tag's host sending to one revision were counted apart, so the
    /// dispatcher could keep twice the revision's capacity in flight towards it.
    #[test]
    fn hosts_reaching_the_same_revisions_share_one_count() {
        let targets = |entries: &[(&str, u32)]| -> Vec<(String, u32)> {
            entries.iter().map(|(r, p)| (r.to_string(), *p)).collect()
        };
        let key = |entries: &[(&str, u32)]| counted_as("default", &targets(entries));
        assert_eq!(key(&[("hello-00002", 100)]), key(&[("hello-00002", 50), ("hello-00002", 50)]), "route and tag");
        assert_eq!(key(&[("a", 50), ("b", 50)]), key(&[("b", 10), ("a", 90)]), "the same revisions, any split");
        assert_eq!(key(&[("a", 100), ("b", 0)]), key(&[("a", 100)]), "no traffic, not counted with");
        assert_ne!(key(&[("a", 100)]), key(&[("a", 50), ("b", 50)]), "a split is counted apart from one side");
        assert_ne!(counted_as("default", &targets(&[("a", 100)])), counted_as("other", &targets(&[("a", 100)])));
    }

    #[test]
    fn a_host_is_named_without_its_port_and_in_lower_case() {
        assert_eq!(host_name("Hello.Default.localhost:8080"), "hello.default.localhost");
        assert_eq!(host_name("[::1]:80"), "::1");
        assert_eq!(host_name("hello"), "hello");
        // Regression (review): a trailing dot, which the data plane drops, kept the host out of the route table.
        assert_eq!(host_name("hello.default.localhost.:8080"), "hello.default.localhost");
    }

    #[test]
    fn a_revision_listed_twice_adds_its_capacity_once() {
        let capacities = HashMap::from([("a", Some(4)), ("b", Some(3)), ("unlimited", None), ("cold", Some(0))]);
        let capacity = |revision: &str| capacities.get(revision).copied().unwrap_or(None);
        // (targets, limit, why)
        type Entries<'a> = &'a [(&'a str, u32)];
        let cases: [(Entries, Option<usize>, &str); 7] = [
            (&[("a", 100)], Some(4), "one revision"),
            (&[("a", 50), ("a", 50)], Some(4), "latestRevision and by name: one revision"),
            (&[("a", 25), ("b", 50), ("a", 25)], Some(7), "each revision once"),
            (&[("a", 100), ("b", 0)], Some(4), "no traffic, no capacity"),
            (&[("a", 50), ("unlimited", 50)], None, "a revision without a limit lifts it"),
            (&[("cold", 100)], Some(0), "run here, none ready: no room yet"),
            (&[("elsewhere", 100)], None, "a revision without a limit here"),
        ];
        for (entries, limit, why) in cases {
            let targets: Vec<(String, u32)> = entries.iter().map(|(r, p)| (r.to_string(), *p)).collect();
            assert_eq!(host_limit(&targets, capacity), limit, "{why}: {entries:?}");
        }
    }
}
