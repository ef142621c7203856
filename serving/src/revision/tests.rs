use std::sync::atomic::AtomicU64;

use sluice_autoscaler::Reason;

use super::*;

fn gate_state(container_concurrency: u32, queue_limit: usize) -> GateState {
    GateState {
        gate: Gate::new(container_concurrency, queue_limit),
        waiters: HashMap::new(),
        addrs: HashMap::new(),
        next_waiter: 0,
        meter: Meter::new(monotonic_ms()),
        failed: None,
        crash_looping: false,
        start_deferred: None,
        stopped: false,
    }
}

#[test]
fn requests_held_at_zero_count_as_arrivals_for_rps() {
    // No instance yet: every request is held. `metric: rps` counted responses that ended, so 1,000 held
    // requests read as 0 rps.
    let mut state = gate_state(1, QUEUE_LIMIT);
    for waiter in 1..=1_000 {
        assert_eq!(state.admit(waiter), Admit::Wait, "held");
    }
    let requests = state.meter.close(monotonic_ms()).requests;
    assert_eq!(requests, 1_000, "held requests arrived");
    // Given a slot or turned away (the queue full), a request arrived all the same.
    let mut small = gate_state(1, 1);
    small.gate.add(1);
    small.gate.set_ready(1, true);
    let admitted: Vec<Admit> = (1..=3).map(|waiter| small.admit(waiter)).collect();
    assert_eq!(admitted, [Admit::Go(1), Admit::Wait, Admit::Full]);
    assert_eq!(small.meter.close(monotonic_ms()).requests, 3);
    // A response that ends is not an arrival.
    let woken = small.gate.release(1);
    small.hand_out(woken);
    assert_eq!(small.meter.close(monotonic_ms()).requests, 0);
}

/// Hands out one gauge per name (one revision per test: labels are not told apart), to read back.
#[derive(Default)]
struct GaugeRecorder {
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
}

impl GaugeRecorder {
    fn value(&self, name: &str) -> Option<f64> {
        let gauges = self.gauges.lock().ok()?;
        gauges.get(name).map(|gauge| f64::from_bits(gauge.load(Ordering::Relaxed)))
    }
}

impl metrics::Recorder for GaugeRecorder {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::noop()
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        // One series per name, as a real recorder has one per key: every run of the revision sets the same one.
        let gauge = match self.gauges.lock() {
            Ok(mut gauges) => gauges.entry(key.name().to_string()).or_default().clone(),
            Err(_) => Arc::new(AtomicU64::new(0)),
        };
        metrics::Gauge::from_arc(gauge)
    }

    fn register_histogram(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::noop()
    }
}

#[test]
fn a_revision_task_that_ends_leaves_its_autoscaler_gauges_at_zero() {
    let recorder = GaugeRecorder::default();
    let gauges = metrics::with_local_recorder(&recorder, || AutoscalerGauges::new("default/gauges-at-zero-00001", 1));
    let decision = some_decision();
    gauges.show(&decision, 4);
    let names = [
        ("sluice_autoscaler_desired_instances", 3.0),
        ("sluice_autoscaler_ready_instances", 2.0),
        ("sluice_autoscaler_actual_instances", 4.0),
        ("sluice_autoscaler_panic", 1.0),
        ("sluice_autoscaler_excess_burst_capacity", -5.0),
        ("sluice_autoscaler_backlog_events", 40.0),
        ("sluice_autoscaler_stable_metric", 7.5),
        ("sluice_autoscaler_panic_metric", 9.0),
    ];
    for (name, shown) in names {
        assert_eq!(recorder.value(name), Some(shown), "{name} while the task decides");
    }
    drop(gauges);
    for (name, _) in names {
        assert_eq!(recorder.value(name), Some(0.0), "{name} once the task ended");
    }
}

#[test]
fn a_replaced_run_leaves_its_successors_gauges_alone() {
    // Both runs set the revision's one series.
    let recorder = GaugeRecorder::default();
    let revision = "default/replaced-00001";
    let (replaced, successor) = metrics::with_local_recorder(&recorder, || {
        (AutoscalerGauges::new(revision, 1), AutoscalerGauges::new(revision, 2))
    });
    successor.show(&some_decision(), 4);
    replaced.show(&Decision { desired: 9, ..some_decision() }, 9);
    assert_eq!(recorder.value("sluice_autoscaler_desired_instances"), Some(3.0), "the successor's decision");
    drop(replaced);
    assert_eq!(recorder.value("sluice_autoscaler_desired_instances"), Some(3.0), "not zeroed by the replaced run");
    drop(successor);
    assert_eq!(recorder.value("sluice_autoscaler_desired_instances"), Some(0.0), "the last run gone: zero");
}

fn some_decision() -> Decision {
    Decision {
        at_ms: 0,
        desired: 3,
        reason: Reason::Panic,
        panicking: true,
        ready: 2,
        instances: 3,
        held: 1,
        stable_metric: 7.5,
        panic_metric: 9.0,
        backlog: Backlog { events: 40, ordered_keys: None },
        metric_wanted: 3,
        panic_wanted: 4,
        backlog_wanted: 1,
        excess_burst_capacity: -5,
        reachable: true,
        ready_at_zero: false,
    }
}

/// The run's facts of revision "default/a", as posted.
fn posted(facts: &Facts) -> FactsUpdate {
    FactsUpdate {
        namespace: "default".into(),
        name: "a".into(),
        run: RunId { uid: "u1".into(), generation: 1 },
        facts: facts.clone(),
    }
}

#[test]
fn a_ready_edge_is_posted_until_taken_and_unchanged_facts_are_not_posted_again() {
    // (instances, an instance became ready, the outbox takes the post, the edge posted (None: no post), why)
    let turns = [
        (0, false, true, Some(false), "the run's first facts are always posted"),
        (0, false, true, None, "nothing changed: nothing posted"),
        (1, true, true, Some(true), "an instance became ready: posted with the edge"),
        (1, false, true, None, "the edge was taken and cleared: no post at every turn from now on"),
        (2, false, true, Some(false), "scaled out: posted without an edge"),
        (2, true, false, Some(true), "ready again, the outbox full: not taken"),
        (2, false, true, Some(true), "posted again at the next turn, still with the edge"),
        (2, false, true, None, "taken: nothing more"),
    ];
    let mut facts = Facts::default();
    let mut reported = None;
    for (instances, became_ready, taken, edge, why) in turns {
        facts.instances = instances;
        if became_ready {
            facts.ready = true;
            facts.saw_ready = true;
        }
        let mut posted_edge = None;
        post_if_changed(&mut facts, &mut reported, |facts| {
            posted_edge = Some(facts.saw_ready);
            taken
        });
        assert_eq!(posted_edge, edge, "{why}");
    }
}

#[test]
fn a_ready_edge_still_waiting_in_the_outbox_survives_the_runs_next_facts() {
    let outbox = FactsOutbox::default();
    let mut facts = Facts { ready: true, saw_ready: true, failure: None, instances: 1, ready_instances: 1 };
    let mut reported = None;
    post_if_changed(&mut facts, &mut reported, |facts| outbox.post(posted(facts)));
    assert!(!facts.saw_ready, "cleared on the run's side once posted");
    facts.instances = 2;
    post_if_changed(&mut facts, &mut reported, |facts| outbox.post(posted(facts)));
    let waiting = outbox.take_due(0).map(|w| (w.update.facts.instances, w.update.facts.saw_ready));
    assert_eq!(waiting, Some((2, true)), "the latest facts, with the edge of those they replaced");
}

/// The dispatcher's limit: ready instances × `containerConcurrency`, none without it, and none once the revision
/// is marked failed (or crash-looping) with no instance ready. Regression: a failed revision reported 0, so deliveries to a Service whose instances never
/// became ready waited for good, neither retried nor dead-lettered.
#[test]
fn a_failed_revision_lifts_the_dispatchers_limit() {
    // (containerConcurrency, ready instances, failing (marked failed, or crash-looping), limit)
    let cases = [
        (4, 0, false, 0, "starting: nothing is pushed at it"),
        (4, 3, false, 12, "ready instances × containerConcurrency"),
        (0, 0, false, UNLIMITED, "no containerConcurrency: no limit"),
        (4, 0, true, UNLIMITED, "failed: deliveries go and fail as requests do"),
        // Regression: three exits among ten ready instances (crash-looping) lifted the limit, and the whole
        // window queued behind the seven left, past the deliveries' timeouts.
        (4, 2, true, 8, "failing with ready instances left: they bound it as before"),
        (1, 0, true, UNLIMITED, "ready once, crash-looping since: the same"),
        (usize::MAX, 2, false, usize::MAX, "saturates"),
    ];
    for (cc, ready, failed, limit, why) in cases {
        assert_eq!(dispatcher_capacity(cc, ready, failed), limit, "{why}");
    }
}

/// A request that waits in the gate until its `timeoutSeconds` runs out was never sent to an instance: a 503 (with
/// `Retry-After`, safe to send again), as Knative's activator answers a request whose deadline passes in its
/// queue; a 504 stays for an app that got the request and did not answer in time. Regression: the wait's timeout
/// was a 504 too, telling a client that the app might have acted on a request it never saw.
#[tokio::test]
async fn a_request_whose_wait_for_a_slot_times_out_is_a_503_and_was_not_sent() {
    let revision = serde_json::json!({
        "metadata": {"name": "waits-00001", "namespace": "default", "uid": "waits-uid"},
        "spec": {"containers": [{"image": "ghcr.io/knative/helloworld-go", "command": ["/bin/hello"]}],
                 "containerConcurrency": 1, "timeoutSeconds": 1}});
    let run = crate::plan::revision_run(
        &revision,
        &sluice_controller::serving::autoscaling::AutoscalerDefaults::default(),
        ServingRuntime::Local,
    )
    .expect("runnable");
    let handle = Arc::new(RevisionHandle::new(run, RunId { uid: "waits-uid".into(), generation: 1 }, true));
    // No instance yet: the request waits, and its time runs out.
    let waited = handle.acquire(20).await.err().expect("no slot without an instance");
    assert!(
        matches!(&waited, ServingError::NoCapacity { revision, waited_ms: 20, waiting_for_room: None } if revision == "default/waits-00001"),
        "{waited:?}"
    );
    assert_eq!(waited.status_code(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    assert!(waited.to_string().contains("not sent"), "{waited}");
    // It left the queue: the next request is not behind it.
    assert_eq!(handle.state.lock().expect("gate").gate.load().waiting, 0);
    let app_too_slow = ServingError::Timeout { revision: handle.key(), after_ms: 1000 };
    assert_eq!(app_too_slow.status_code(), axum::http::StatusCode::GATEWAY_TIMEOUT);
}

/// Regression: a revision whose instances kept exiting before they were ever ready (in this run: a node restarted
/// while a dependency was down) answered its routed requests 503 with the app's last 4 KiB of output, to anyone
/// who reaches the HTTP port. They are told the reason; the output stays in the status.
#[tokio::test]
async fn a_failed_revision_tells_requests_its_reason_and_keeps_the_apps_output_for_its_status() {
    let revision = serde_json::json!({
        "metadata": {"name": "leaky-00001", "namespace": "default", "uid": "leaky-uid"},
        "spec": {"containers": [{"image": "ghcr.io/knative/helloworld-go", "command": ["/bin/hello"]}]}});
    let run = crate::plan::revision_run(
        &revision,
        &sluice_controller::serving::autoscaling::AutoscalerDefaults::default(),
        ServingRuntime::Local,
    )
    .expect("runnable");
    let handle = Arc::new(RevisionHandle::new(run, RunId { uid: "leaky-uid".into(), generation: 1 }, true));
    let mut instances = Instances::new(false);
    let output = "connecting to postgres://app:hunter2@db/app failed";
    for _ in 0..starts::FAILED_STARTS_BEFORE_GIVING_UP {
        let reason = "ExitCode1".to_string();
        let (message, told) = (instance_events::exit_message(&reason, output), instance_events::told_clients(&reason));
        fail(&handle, &mut instances, reason, message, told);
    }
    let turned_away = handle.acquire(1_000).await.err().expect("marked failed: turned away");
    let ServingError::RevisionFailed { reason, .. } = &turned_away else { panic!("{turned_away:?}") };
    assert!(reason.contains("ExitCode1") && !reason.contains("hunter2"), "{reason}");
    assert_eq!(turned_away.status_code(), axum::http::StatusCode::SERVICE_UNAVAILABLE);
    let (status_reason, status_message) = instances.facts.failure.clone().expect("recorded for the status");
    assert_eq!(status_reason, "ExitCode1");
    assert!(status_message.contains("hunter2"), "the owners still see the output: {status_message}");
}
