//! The checker's tests: histories built by hand, each with the figures and violations it must give.

use super::*;

const STREAM: &str = "broker/default/chaos";

struct H {
    entries: Vec<Entry>,
    t: u64,
}

fn ev(offset: u64, source: &str, id: &str, event_type: &str) -> LoggedEvent {
    LoggedEvent { offset, source: source.into(), id: id.into(), event_type: event_type.into(), arrival_ms: 0 }
}

impl H {
    fn new() -> Self {
        let mut h = H { entries: Vec::new(), t: 0 };
        h.push(Op::Start {
            seed: 42,
            nodes: 3,
            partitions: 1,
            faults: vec!["kill".into()],
            network: "namespaces".into(),
            stream: STREAM.into(),
            dedupe: true,
            dedupe_window_ms: None,
            triggers: vec![
                TriggerSpec {
                    name: "all".into(),
                    type_filter: None,
                    dead_letter_stream: "deadletter/trigger/default/all".into(),
                },
                TriggerSpec {
                    name: "b".into(),
                    type_filter: Some("b".into()),
                    dead_letter_stream: "deadletter/trigger/default/b".into(),
                },
            ],
            planted_bug: None,
        });
        h
    }

    fn push(&mut self, op: Op) -> &mut Self {
        self.t += 1_000_000;
        self.entries.push(Entry { t: self.t, wall_ms: self.t / 1_000_000, op });
        self
    }

    fn publish(&mut self, process: usize, id: &str, outcome: &str) -> &mut Self {
        let (source, id) = (format!("p{process}"), id.to_string());
        self.push(Op::Invoke { process, source: source.clone(), id: id.clone(), node: 1 });
        match outcome {
            "ok" => self.push(Op::Ok { process, source, id, node: 1 }),
            "fail" => self.push(Op::Fail { process, source, id, node: 1, status: 400, error: "bad".into() }),
            _ => self.push(Op::Info { process, source, id, node: 1, error: "timeout".into() }),
        }
    }

    fn deliver(&mut self, trigger: &str, source: &str, id: &str, status: u16) -> &mut Self {
        self.push(Op::Deliver { trigger: trigger.into(), source: source.into(), id: id.into(), attempt: 1, status })
    }

    fn read(&mut self, node: u64, stream: &str, events: Vec<LoggedEvent>) -> &mut Self {
        self.push(Op::Read { node, stream: stream.into(), partition: 0, events })
    }

    fn offsets(&mut self, node: u64, incarnation: u32, offset: u64, is_final: bool) -> &mut Self {
        self.push(Op::Offsets { node, incarnation, trigger: "all".into(), committed: vec![(0, offset)], is_final })
    }

    /// Two events acknowledged (a: type a, b: type b), read identically on three nodes, delivered to
    /// both triggers as they match.
    fn clean() -> Self {
        let mut h = H::new();
        h.publish(0, "1", "ok").publish(0, "2", "ok");
        h.deliver("all", "p0", "1", 200).deliver("all", "p0", "2", 200).deliver("b", "p0", "2", 202);
        h.offsets(1, 1, 1, false).offsets(1, 1, 2, true);
        for node in 1..=3 {
            h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b")]);
        }
        h
    }

    fn check(&self) -> Report {
        check(&self.entries)
    }
}

#[test]
fn a_clean_history_is_clean() {
    let report = H::clean().check();
    assert_eq!(report.violations(), Vec::<String>::new());
    assert_eq!(report.acknowledged, 2);
    assert_eq!(report.stored, 2);
    assert_eq!(report.attempts, 2);
    assert_eq!(report.triggers["all"].matching, 2);
    assert_eq!(report.triggers["all"].delivered, 2);
    assert_eq!(report.triggers["b"].matching, 1, "the type filter applies");
    assert_eq!(report.seed, 42);
    assert!(report.to_string().contains("OK: no safety violation"));
}

#[test]
fn an_acknowledged_event_missing_everywhere_is_lost() {
    let mut h = H::clean();
    h.publish(1, "9", "ok");
    let report = h.check();
    assert_eq!(report.lost, vec![("p1".to_string(), "9".to_string())]);
    assert!(report.violations()[0].contains("1 acknowledged events lost"));
    assert!(report.to_string().contains("VIOLATION"));
}

#[test]
fn indeterminate_and_refused_events_may_be_missing_or_stored() {
    let mut h = H::new();
    h.publish(0, "1", "info").publish(0, "2", "info").publish(0, "3", "fail");
    h.read(1, STREAM, vec![ev(0, "p0", "1", "a")]);
    h.deliver("all", "p0", "1", 200);
    let report = h.check();
    assert_eq!(report.violations(), Vec::<String>::new());
    assert_eq!((report.indeterminate, report.indeterminate_stored, report.failed), (2, 1, 1));
}

#[test]
fn an_event_never_sent_is_unexpected() {
    let mut h = H::clean();
    h.read(1, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b"), ev(2, "ghost", "1", "a")]);
    let report = h.check();
    assert_eq!(report.unexpected, vec![("ghost".to_string(), "1".to_string())]);
    assert!(report.violations().iter().any(|v| v.contains("unexpected")));
}

#[test]
fn a_shorter_copy_is_divergence() {
    let mut h = H::clean();
    h.read(3, STREAM, vec![ev(0, "p0", "1", "a")]);
    let report = h.check();
    assert_eq!(report.divergent.len(), 1, "{:?}", report.divergent);
    assert!(report.divergent[0].contains("node 3 has 1 events"));
    assert_eq!(report.offset_conflicts, 0);
    assert!(report.lost.is_empty(), "still on other nodes: divergence, not loss");
}

#[test]
fn two_events_at_one_offset_are_a_conflict() {
    let mut h = H::clean();
    h.publish(0, "3", "info");
    h.read(2, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "3", "b")]);
    let report = h.check();
    assert_eq!(report.offset_conflicts, 1);
    assert!(report.divergent.iter().any(|d| d.contains("node 2 differs") && d.contains("offset 1")));
    assert!(report.violations().iter().any(|v| v.contains("1 offsets hold different events")));
}

#[test]
fn offsets_that_are_not_dense_are_a_gap() {
    let mut h = H::clean();
    for node in 1..=3 {
        h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(2, "p0", "2", "b")]);
    }
    let report = h.check();
    assert_eq!(report.gaps.len(), 3);
    assert!(report.divergent.is_empty());
}

#[test]
fn duplicates_in_the_log_violate_only_with_dedupe() {
    let mut h = H::clean();
    for node in 1..=3 {
        h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b"), ev(2, "p0", "1", "a")]);
    }
    let report = h.check();
    assert_eq!(report.log_duplicates, vec![("p0".to_string(), "1".to_string())]);
    assert!(report.violations().iter().any(|v| v.contains("stored twice")));
    let mut no_dedupe = h.entries.clone();
    if let Op::Start { dedupe, .. } = &mut no_dedupe[0].op {
        *dedupe = false;
    }
    let report = check(&no_dedupe);
    assert_eq!(report.log_duplicates.len(), 1, "still reported");
    assert_eq!(report.violations(), Vec::<String>::new());
}

/// With a dedupe window set (`--dedupe-window`), an event stored again further apart than the window came
/// again as a new one (a producer's retry past it); within the window it is a violation, as without one.
#[test]
fn with_a_dedupe_window_only_copies_within_it_violate() {
    let at = |offset, id: &str, arrival_ms| {
        let event_type = if id == "2" { "b" } else { "a" };
        LoggedEvent { arrival_ms, ..ev(offset, "p0", id, event_type) }
    };
    let mut h = H::clean();
    for node in 1..=3 {
        h.read(node, STREAM, vec![at(0, "1", 1_000), at(1, "2", 1_500), at(2, "1", 2_001), at(3, "2", 2_500)]);
    }
    if let Op::Start { dedupe_window_ms, .. } = &mut h.entries[0].op {
        *dedupe_window_ms = Some(1_000);
    }
    let report = h.check();
    assert_eq!(report.stored_again_past_window, 1, "1 came again 1,001 ms later");
    assert_eq!(report.log_duplicates, vec![("p0".to_string(), "2".to_string())], "2 came again at the window's edge");
    assert!(report.violations().iter().any(|v| v.contains("stored twice")));
    assert!(report.to_string().contains("1 (within the 1000 ms window; 1 stored again past it)"), "{report}");
}

#[test]
fn an_undelivered_matching_event_is_dispatch_incomplete_unless_dead_lettered() {
    let mut h = H::new();
    h.publish(0, "1", "ok").publish(0, "2", "ok").publish(0, "3", "ok");
    for node in 1..=3 {
        h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p0", "2", "b"), ev(2, "p0", "3", "b")]);
    }
    h.deliver("all", "p0", "1", 200).deliver("all", "p0", "2", 200).deliver("all", "p0", "3", 200);
    h.deliver("all", "p0", "3", 200);
    // Trigger b: event 2 failed then succeeded; event 3 failed only.
    h.deliver("b", "p0", "2", 500).deliver("b", "p0", "2", 200).deliver("b", "p0", "3", 500);
    let report = h.check();
    assert_eq!(report.triggers["b"].incomplete, vec![("p0".to_string(), "3".to_string())]);
    assert_eq!(report.triggers["b"].failed_attempts, 2);
    assert_eq!(report.triggers["all"].duplicate_deliveries, 1);
    assert!((report.triggers["all"].duplicate_rate() - 1.0 / 3.0).abs() < 1e-9);
    assert_eq!(report.dispatch_incomplete(), 1);
    assert!(report.violations().iter().any(|v| v.contains("trigger b: 1 matching events")));
    // Dead-lettered on one node: complete.
    h.read(2, "deadletter/trigger/default/b", vec![ev(0, "p0", "3", "b")]);
    let report = h.check();
    assert_eq!(report.dispatch_incomplete(), 0);
    assert_eq!(report.triggers["b"].dead_lettered, 1);
    // ... but one node's dead-letter stream alone is a divergence.
    assert_eq!(report.divergent.len(), 0, "a copy read on one node only is the longest");
}

#[test]
fn committed_offsets_must_not_go_back() {
    let mut h = H::clean();
    h.offsets(2, 1, 5, false).offsets(2, 2, 3, false);
    assert_eq!(h.check().offset_regressions.len(), 1, "the final offset (2) is below 5");
    let mut h = H::clean();
    h.offsets(2, 1, 2, false).offsets(2, 2, 1, false);
    assert_eq!(h.check().violations(), Vec::<String>::new(), "a restarted node may start lower");
    h.offsets(2, 2, 0, false);
    let report = h.check();
    assert_eq!(report.offset_regressions.len(), 1, "{:?}", report.offset_regressions);
    assert!(report.offset_regressions[0].contains("on node 2: 1 then 0"));
}

#[test]
fn final_committed_offsets_that_differ_between_nodes_are_apart() {
    // The clean history's final offsets are node 1's only: nothing to compare.
    assert!(H::clean().check().offsets_apart.is_empty());
    let mut h = H::clean();
    h.offsets(2, 1, 2, true).offsets(3, 1, 2, true);
    assert_eq!(h.check().violations(), Vec::<String>::new(), "every node at 2");
    let mut h = H::clean();
    // Offsets observed lower during the run on a node are not a difference; only the final ones count.
    h.offsets(3, 1, 1, false).offsets(2, 1, 2, true).offsets(3, 1, 1, true);
    let report = h.check();
    assert_eq!(
        report.offsets_apart,
        vec!["trigger all partition 0: node 1 at 2, node 2 at 2, node 3 at 1".to_string()]
    );
    assert!(report.violations().iter().any(|v| v.starts_with("committed offsets differ between nodes")));
    assert!(report.offset_regressions.is_empty(), "the highest final offset is the run's highest");
    let row = report.to_string().lines().find(|l| l.starts_with("COMMITTED OFFSETS apart")).map(str::to_string);
    assert_eq!(row.as_deref().map(|r| r.split_whitespace().last()), Some(Some("1")), "{report}");
}

#[test]
fn the_window_after_a_leader_kill_ends_with_the_first_ack_in_its_partition() {
    let mut h = H::new();
    h.publish(0, "1", "ok");
    h.push(Op::FaultStart { fault: Fault::Kill { n: 1, node: 2, leader_of_group: Some(1) } });
    h.publish(0, "2", "info").publish(1, "3", "info").publish(1, "3", "ok").publish(0, "2", "ok");
    // Another group's leader kill, with no ack in a partition of group 2 after it.
    h.push(Op::FaultStart { fault: Fault::Kill { n: 2, node: 3, leader_of_group: Some(2) } });
    h.push(Op::FaultStart { fault: Fault::Kill { n: 3, node: 1, leader_of_group: None } });
    for node in 1..=3 {
        h.read(node, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p1", "3", "a"), ev(2, "p0", "2", "a")]);
    }
    for id in ["1", "2"] {
        h.deliver("all", "p0", id, 200);
    }
    h.deliver("all", "p1", "3", 200);
    let report = h.check();
    assert_eq!(report.violations(), Vec::<String>::new());
    assert_eq!(report.faults["kill"], 3);
    assert_eq!(report.unavailability.len(), 2);
    // p1/3's second attempt: invoked 5 ms after the kill, acknowledged 6 ms after it.
    assert_eq!(report.unavailability[0].window_ns, Some(6_000_000));
    assert_eq!(report.unavailability[1].window_ns, None);
    assert!(report.to_string().contains("no ack after the kill"));
}

#[test]
fn unavailability_percentiles_are_nearest_rank_and_a_kill_without_ack_is_the_longest() {
    let windows = |ms: &[Option<u64>]| -> Vec<Unavailability> {
        ms.iter()
            .map(|w| Unavailability { at_ns: 0, node: 1, group: 1, window_ns: w.map(|ms| ms * 1_000_000) })
            .collect()
    };
    assert_eq!(UnavailabilitySummary::of(&[]), None);
    // (windows in ms, p50 ms, p99 ms)
    type Row<'a> = (&'a [Option<u64>], Option<u64>, Option<u64>);
    let table: [Row; 4] = [
        (&[Some(700)], Some(700), Some(700)),
        (&[Some(900), Some(100), Some(500)], Some(500), Some(900)),
        (&[Some(100), None, Some(300)], Some(300), None),
        (&[Some(10); 100], Some(10), Some(10)),
    ];
    for (input, p50, p99) in table {
        let summary = UnavailabilitySummary::of(&windows(input)).expect("kills");
        assert_eq!(summary.kills, input.len());
        assert_eq!(summary.p50_ns, p50.map(|ms| ms * 1_000_000), "p50 of {input:?}");
        assert_eq!(summary.p99_ns, p99.map(|ms| ms * 1_000_000), "p99 of {input:?}");
    }
    // 100 kills, one slow: p99 is the 99th, not the slow one.
    let mut many = vec![Some(200u64); 99];
    many.push(Some(5_000));
    let summary = UnavailabilitySummary::of(&windows(&many)).expect("kills");
    assert_eq!(summary.p99_ns, Some(200_000_000));
}

#[test]
fn a_node_that_did_not_recover_is_reported() {
    let mut h = H::clean();
    h.push(Op::Unrecovered { node: 3, reason: "not ready within 60 s".into() });
    let report = h.check();
    assert_eq!(report.unrecovered, vec!["node 3: not ready within 60 s".to_string()]);
    assert!(report.violations().iter().any(|v| v.contains("not recovered after healing: node 3")));
}

#[test]
fn a_node_process_that_exited_by_itself_is_reported() {
    let mut h = H::clean();
    h.push(Op::Crashed { node: 2, incarnation: 3, exit: "exit status: 101".into() });
    let report = h.check();
    assert_eq!(report.crashed, vec!["node 2 (start 3) exited by itself: exit status: 101".to_string()]);
    assert!(report.violations().iter().any(|v| v.starts_with("crashed: node 2")));
    assert!(H::clean().check().violations().is_empty());
}

#[test]
fn a_history_without_final_reads_cannot_pass() {
    let mut h = H::new();
    h.publish(0, "1", "ok");
    let report = h.check();
    assert!(report.violations().iter().any(|v| v.contains("no final read")));
    assert!(!check(&[]).violations().is_empty());
}

#[test]
fn histories_round_trip_through_json_lines() {
    let h = H::clean();
    let text: Vec<String> = h.entries.iter().map(|e| serde_json::to_string(e).unwrap_or_default()).collect();
    let back: Vec<Entry> = text.iter().filter_map(|line| serde_json::from_str(line).ok()).collect();
    assert_eq!(back, h.entries);
    assert!(text[1].contains("\"op\":\"invoke\""), "{}", text[1]);
}

#[test]
fn regression_a_delivered_event_still_being_retried_after_a_failover_is_not_drained() {
    // seed 9001: `/chaos/p1` 4393 was delivered before a failover, then delivered again by the new leader,
    // failed five times and was dead-lettered 160 ms after the drain had ended and node 1 had been read.
    let spec = TriggerSpec { name: "t-b".into(), type_filter: Some("b".into()), dead_letter_stream: "dl".into() };
    let event = |offset: u64, id: &str, event_type: &str| ev(offset, "/chaos/p1", id, event_type);
    let events = [event(0, "4392", "a"), event(1, "4393", "b")];
    let delivered = |k: &Key| k.1 == "4393";
    let none = BTreeSet::new();
    let retrying = DispatchProgress { end_offset: 2, committed_offset: 1, in_flight: 1 };
    assert_eq!(undrained(&events, &spec, delivered, &none, retrying), 1, "delivered once is not settled");
    let committed = DispatchProgress { end_offset: 2, committed_offset: 2, in_flight: 0 };
    assert_eq!(undrained(&events, &spec, delivered, &none, committed), 0);
    // Committed but never delivered nor dead-lettered: incomplete (the checker's dispatch-complete says so).
    assert_eq!(undrained(&events, &spec, |_: &Key| false, &none, committed), 1);
    let dead = BTreeSet::from([("/chaos/p1".to_string(), "4393".to_string())]);
    assert_eq!(undrained(&events, &spec, |_: &Key| false, &dead, committed), 0);
    // An event the filter does not match is not the Trigger's.
    let all = TriggerSpec { type_filter: None, ..spec.clone() };
    assert_eq!(undrained(&events, &all, |_: &Key| false, &dead, committed), 1, "4392 is t-all's");
}

#[test]
fn an_event_refused_at_every_attempt_yet_stored_is_reported() {
    let mut h = H::new();
    // "1": refused once and never tried otherwise, yet stored. "2": an earlier attempt timed out (it may have
    // been written), then refused: stored is allowed.
    h.publish(0, "1", "fail").publish(1, "2", "info").publish(1, "2", "fail");
    h.read(1, STREAM, vec![ev(0, "p0", "1", "a"), ev(1, "p1", "2", "a")]);
    h.deliver("all", "p0", "1", 200).deliver("all", "p1", "2", 200);
    let report = h.check();
    assert_eq!(report.refused_stored, vec![("p0".to_string(), "1".to_string())]);
    assert!(report.violations().iter().any(|v| v.contains("refused (4xx) at every attempt yet stored")));
}

#[test]
fn a_producers_acknowledged_events_stored_the_other_way_round_are_out_of_order() {
    let mut h = H::new();
    h.publish(0, "1", "ok").publish(0, "2", "ok").publish(1, "1", "ok");
    // p0/2 was sent after p0/1 was acknowledged, yet stored before it; p1's event may go anywhere.
    let events = vec![ev(0, "p1", "1", "a"), ev(1, "p0", "2", "a"), ev(2, "p0", "1", "a")];
    h.read(1, STREAM, events);
    for (source, id) in [("p0", "1"), ("p0", "2"), ("p1", "1")] {
        h.deliver("all", source, id, 200);
    }
    let report = h.check();
    assert_eq!(report.out_of_order.len(), 1, "{:?}", report.out_of_order);
    assert!(report.out_of_order[0].contains("p0/1 (acknowledged first) at offset 2, p0/2 at offset 1"));
    // In order (and the clean history's two events): nothing.
    assert!(H::clean().check().out_of_order.is_empty());
}

#[test]
fn a_delivery_of_an_event_never_stored_or_of_another_type_is_reported() {
    let mut h = H::clean();
    h.deliver("all", "p0", "9", 200).deliver("b", "p0", "1", 500);
    let report = h.check();
    assert_eq!(report.phantom_deliveries, vec!["trigger all: p0/9".to_string()]);
    assert_eq!(report.misrouted_deliveries, vec!["trigger b (type \"b\"): p0/1 of type a".to_string()]);
    let violations = report.violations();
    assert!(violations.iter().any(|v| v.starts_with("phantom delivery")), "{violations:?}");
    assert!(violations.iter().any(|v| v.starts_with("misrouted delivery")), "{violations:?}");
}
