use super::*;

fn update(name: &str, generation: u64, instances: u32) -> FactsUpdate {
    FactsUpdate {
        namespace: "default".into(),
        name: name.into(),
        run: RunId { uid: "u1".into(), generation },
        facts: Facts { ready: true, saw_ready: true, failure: None, instances, ready_instances: instances },
    }
}

#[test]
fn a_revisions_latest_facts_of_its_latest_run_wait_and_nothing_else_does() {
    // (waiting: (name, generation, instances), posted, limit, outcome, what waits for "a" after, why)
    let cases = [
        (vec![], update("a", 1, 3), 10, Posted::Waiting, Some((1, 3)), "nothing waited"),
        (vec![("a", 1, 3)], update("a", 1, 5), 10, Posted::Waiting, Some((1, 5)), "the run's later facts replace"),
        (vec![("a", 2, 4)], update("a", 1, 0), 10, Posted::Superseded, Some((2, 4)), "an earlier run's last word"),
        (vec![("a", 1, 4)], update("a", 2, 0), 10, Posted::Waiting, Some((2, 0)), "the replacement's facts"),
        (vec![("b", 1, 1)], update("a", 1, 2), 1, Posted::Full, None, "full: another revision waits"),
        (vec![("a", 1, 1)], update("a", 1, 2), 1, Posted::Waiting, Some((1, 2)), "full, but its own entry"),
    ];
    for (waiting, posted, limit, outcome, after, why) in cases {
        let mut pending = Pending::default();
        for (name, generation, instances) in waiting {
            pending.post(update(name, generation, instances), usize::MAX);
        }
        let before = pending.waiting.len();
        assert_eq!(pending.post(posted, limit), outcome, "{why}");
        let left = pending.waiting.get("default/a").map(|w| (w.update.run.generation, w.update.facts.instances));
        assert_eq!(left, after, "{why}");
        assert!(pending.waiting.len() <= limit.max(before), "{why}: bounded");
    }
}

#[test]
fn many_changes_of_one_revision_never_grow_the_outbox() {
    let outbox = FactsOutbox::default();
    for instances in 0..10_000 {
        assert!(outbox.post(update("a", 1, instances)));
    }
    let taken = outbox.take_due(0);
    assert_eq!(taken.map(|t| t.update.facts.instances), Some(9_999), "the latest, alone");
    assert!(outbox.take_due(u64::MAX).is_none());
    assert!(outbox.take_all().is_empty());
}

#[test]
fn a_failed_record_is_retried_after_a_backoff_that_doubles_to_a_cap() {
    let delays: Vec<u64> = (0..9).map(retry_delay_ms).collect();
    assert_eq!(delays, [0, 1_000, 2_000, 4_000, 8_000, 16_000, 30_000, 30_000, 30_000]);
}

/// Facts of "a" taken out, that failed `failures` times before.
fn taken(generation: u64, instances: u32, failures: u32) -> Waiting {
    Waiting { update: update("a", generation, instances), failures, not_before_ms: 0, place: 0 }
}

#[test]
fn facts_that_fail_to_record_go_back_behind_their_backoff_and_newer_facts_win() {
    const NOW: u64 = 10_000;
    // (waiting for "a" meanwhile: (generation, instances), failed, after: (generation, instances, failures,
    // due at), why)
    let cases = [
        (None, taken(1, 3, 0), (1, 3, 1, NOW + 1_000), "back in line, 1 s later"),
        (None, taken(1, 3, 1), (1, 3, 2, NOW + 2_000), "failed again: 2 s"),
        (None, taken(1, 3, 9), (1, 3, 10, NOW + 30_000), "never more than 30 s"),
        (Some((1, 5)), taken(1, 3, 0), (1, 5, 1, NOW + 1_000), "the run posted since: its newer facts, same backoff"),
        (Some((2, 0)), taken(1, 3, 0), (2, 0, 1, NOW + 1_000), "a later run's facts wait: they stay"),
        (Some((1, 0)), taken(2, 4, 0), (2, 4, 1, NOW + 1_000), "an earlier run's last word does not replace"),
    ];
    for (meanwhile, failed, after, why) in cases {
        let mut pending = Pending::default();
        if let Some((generation, instances)) = meanwhile {
            pending.post(update("a", generation, instances), PENDING_FACTS_LIMIT);
        }
        pending.put_back(failed, NOW);
        let left = pending
            .waiting
            .get("default/a")
            .map(|w| (w.update.run.generation, w.update.facts.instances, w.failures, w.not_before_ms));
        assert_eq!(left, Some(after), "{why}");
        assert_eq!(pending.waiting.len(), 1, "{why}: one entry per revision");
    }
}

#[test]
fn a_revision_in_backoff_is_not_taken_before_its_time_and_keeps_no_other_waiting() {
    let mut pending = Pending::default();
    pending.post(update("a", 1, 1), PENDING_FACTS_LIMIT);
    pending.post(update("b", 1, 1), PENDING_FACTS_LIMIT);
    let first = pending.take_due(0);
    assert_eq!(first.as_ref().map(|w| w.update.name.as_str()), Some("a"), "the longest waiting first");
    if let Some(first) = first {
        pending.put_back(first, 5_000);
    }
    assert_eq!(pending.next_due_ms(), Some(0), "b is due");
    assert_eq!(pending.take_due(5_000).map(|w| w.update.name), Some("b".to_string()), "a waits its backoff");
    assert_eq!(pending.next_due_ms(), Some(6_000), "the wake-up: a's backoff ends");
    assert!(pending.take_due(5_999).is_none(), "not before its time: no spinning");
    // A change of "a" meanwhile does not jump its backoff.
    pending.post(update("a", 1, 7), PENDING_FACTS_LIMIT);
    assert!(pending.take_due(5_999).is_none(), "a change does not retry sooner");
    let retried = pending.take_due(6_000);
    assert_eq!(retried.map(|w| (w.update.facts.instances, w.failures)), Some((7, 1)), "the latest, on time");
    assert!(pending.take_all().is_empty());
}

fn state(spec: Value) -> Value {
    json!({"kind": "RevisionState", "metadata": {"name": "a", "namespace": "default"}, "spec": spec})
}

/// Facts of a run that saw an instance ready when `ready`.
fn facts(ready: bool, instances: u32) -> Facts {
    Facts { ready, saw_ready: ready, failure: None, instances, ready_instances: instances }
}

#[test]
fn each_node_records_its_own_instances_and_drops_those_of_nodes_gone() {
    let members: BTreeSet<NodeId> = [1, 2].into();
    let idle = facts(true, 0);
    let busy = facts(true, 10);
    let failing = Facts {
        ready: false,
        saw_ready: false,
        failure: Some(("ExitCode1".into(), "boom".into())),
        instances: 0,
        ready_instances: 0,
    };
    let nothing = Facts::default();
    // (stored spec, node, members, change, instancesByNode after (None: no write), ready after, why)
    type Case<'a> = (Option<Value>, NodeId, Option<&'a BTreeSet<NodeId>>, Change<'a>, Option<Value>, bool, &'a str);
    let cases: Vec<Case> = vec![
        (None, 1, Some(&members), Change::Run { uid: "u1", facts: &busy }, Some(json!({"1": 10})), true, "first"),
        (
            Some(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 10}, "instances": 10,
                "failureReason": "", "failureMessage": "", "token": "t"})),
            2,
            Some(&members),
            Change::Run { uid: "u1", facts: &idle },
            None,
            true,
            "an idle node changes nothing: node 1 still runs 10",
        ),
        (
            Some(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 10}, "token": "t"})),
            2,
            Some(&members),
            Change::Run { uid: "u1", facts: &busy },
            Some(json!({"1": 10, "2": 10})),
            true,
            "a second node adds its own",
        ),
        (
            Some(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 10, "2": 3}})),
            1,
            Some(&members),
            Change::Run { uid: "u1", facts: &idle },
            Some(json!({"2": 3})),
            true,
            "a node that stops it takes its entry out",
        ),
        (
            Some(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 1, "3": 7}})),
            1,
            Some(&members),
            Change::Run { uid: "u1", facts: &busy },
            Some(json!({"1": 10})),
            true,
            "node 3 left the cluster: its entry goes",
        ),
        (
            Some(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 1, "3": 7}})),
            1,
            None,
            Change::Run { uid: "u1", facts: &busy },
            Some(json!({"1": 10, "3": 7})),
            true,
            "membership unknown: nothing dropped",
        ),
        (
            Some(json!({"ready": true, "revisionUid": "u0", "instancesByNode": {"2": 4}})),
            1,
            Some(&members),
            Change::Run { uid: "u1", facts: &failing },
            Some(json!({})),
            false,
            "a namesake's facts (another uid) are not carried over",
        ),
        (
            Some(json!({"ready": true, "instances": 4})),
            1,
            Some(&members),
            Change::Run { uid: "u1", facts: &busy },
            Some(json!({"1": 10})),
            true,
            "an older version's state: its uid unknown, it is the same revision",
        ),
        (
            Some(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 2, "2": 3}})),
            1,
            Some(&members),
            Change::Forget,
            Some(json!({"2": 3})),
            true,
            "forgotten after a restart",
        ),
        (
            Some(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"2": 3}, "instances": 3})),
            1,
            Some(&members),
            Change::Forget,
            None,
            true,
            "nothing to forget",
        ),
        (
            Some(json!({"ready": false, "revisionUid": "u1", "instancesByNode": {}, "instances": 0,
                "failureReason": "ExitCode1", "failureMessage": "boom"})),
            2,
            Some(&members),
            Change::Run { uid: "u1", facts: &nothing },
            None,
            false,
            "a run just started on another node saw nothing: node 1's failure stands",
        ),
        (None, 1, Some(&members), Change::Forget, None, false, "no state: nothing to forget"),
        (None, 1, Some(&members), Change::Run { uid: "u1", facts: &nothing }, None, false, "nothing to say"),
    ];
    for (stored, me, members, change, by_node, ready, why) in cases {
        let stored = stored.map(state);
        let next = next_spec(stored.as_ref(), me, members, change, Some("u1"));
        assert_eq!(next.as_ref().map(|s| s[INSTANCES_BY_NODE_FIELD].clone()), by_node, "{why}: {next:?}");
        if let Some(next) = next {
            assert_eq!(next["ready"], json!(ready), "{why}");
            let total: u64 =
                next[INSTANCES_BY_NODE_FIELD].as_object().map_or(0, |b| b.values().filter_map(Value::as_u64).sum());
            assert_eq!(next["instances"], json!(total), "{why}: the total for older readers");
            assert!(next.get("token").is_none(), "{why}: the shell sets the token");
        }
    }
}

#[test]
fn the_status_reads_what_the_nodes_wrote_as_the_sum() {
    // Node 1 runs 10, then node 2 (idle) writes its facts: the revision still shows 10 and Active.
    let members: BTreeSet<NodeId> = [1, 2].into();
    let busy = facts(true, 10);
    let idle = facts(true, 0);
    let after_one = next_spec(None, 1, Some(&members), Change::Run { uid: "u1", facts: &busy }, Some("u1")).map(state);
    let idle_two = Change::Run { uid: "u1", facts: &idle };
    let after_two = match next_spec(after_one.as_ref(), 2, Some(&members), idle_two, Some("u1")) {
        Some(spec) => state(spec),
        None => after_one.clone().unwrap_or_default(),
    };
    assert_eq!(sluice_controller::serving::routing::instances_over_nodes(&after_two["spec"]), 10);
    assert!(has_entry(&after_two, 1) && !has_entry(&after_two, 2));
}

#[test]
fn only_the_current_run_of_the_stored_revision_records_facts() {
    let run = |uid: &str, generation| RunId { uid: uid.into(), generation };
    // (the revision's current run on the node, the stored Revision's uid, the run posting, applies, why)
    let cases = [
        (Some(run("u1", 1)), Some("u1"), run("u1", 1), true, "the current run"),
        (None, Some("u1"), run("u1", 1), true, "stopped, nothing replaced it: its last word (zero) stands"),
        (Some(run("u1", 2)), Some("u1"), run("u1", 1), false, "an earlier run draining after a restart"),
        (Some(run("u2", 2)), Some("u2"), run("u1", 1), false, "deleted and made again: the namesake's run"),
        (None, Some("u2"), run("u1", 1), false, "made again, not started here yet: not the old run's"),
        (None, None, run("u1", 1), false, "the Revision is gone: its state goes with it"),
        (None, Some(""), run("u1", 1), true, "a Revision without a uid"),
    ];
    for (current, revision_uid, posting, applies, why) in cases {
        assert_eq!(still_applies(current.as_ref(), revision_uid, &posting), applies, "{why}");
    }
}

#[test]
fn a_run_replaces_another_revisions_state_only_when_the_revision_stored_now_is_its_own() {
    // (state stored for, Revision stored now (None: gone), the run's uid, may write, why)
    let cases = [
        ("u1", Some("u1"), "u1", true, "its own state"),
        ("", Some("u1"), "u1", true, "nothing stored yet"),
        ("u0", Some("u1"), "u1", true, "a namesake's state, deleted since: replaced"),
        ("u2", Some("u2"), "u1", false, "a lagging node's old run, caught up: the new Revision's state stands"),
        ("u1", Some("u2"), "u1", false, "made again, no state yet: the old run's facts are nobody's"),
        ("u2", Some(""), "u1", false, "a Revision without a uid does not vouch for another uid's state"),
        ("", Some(""), "u1", true, "a Revision without a uid, nothing stored"),
        ("u1", None, "u1", false, "the Revision is gone"),
        ("u2", Some("u2"), "", true, "a run without a uid (an older version's Revision)"),
    ];
    for (stored, revision, run, may, why) in cases {
        assert_eq!(run_may_write(stored, revision, run), may, "{why}");
    }
    // The lagging node's first attempt read the old Revision; after the conflict it caught up: no write.
    let members: BTreeSet<NodeId> = [1, 2].into();
    let busy = facts(true, 2);
    let new_state = state(json!({"ready": true, "revisionUid": "u2", "instancesByNode": {"2": 3}, "token": "t"}));
    let old_run = Change::Run { uid: "u1", facts: &busy };
    assert!(next_spec(Some(&new_state), 1, Some(&members), old_run, Some("u1")).is_some(), "before catching up");
    assert_eq!(next_spec(Some(&new_state), 1, Some(&members), old_run, Some("u2")), None, "after catching up");
}

#[test]
fn a_failure_is_cleared_only_by_a_run_that_saw_its_own_instance_ready() {
    let members: BTreeSet<NodeId> = [1, 2].into();
    let stored = state(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 1}, "instances": 1,
        "failureReason": "ExitCode1", "failureMessage": "boom", "token": "t"}));
    let oom = Some(("OOMKilled".to_string(), "killed".to_string()));
    // (node 2's run's facts, failureReason after, why)
    let cases = [
        (
            Facts { ready: true, saw_ready: false, failure: None, instances: 1, ready_instances: 1 },
            "ExitCode1",
            "a run restarted on node 2, ready only as the revision was once: node 1's crash loop stands",
        ),
        (
            Facts { ready: true, saw_ready: true, failure: None, instances: 1, ready_instances: 1 },
            "",
            "its instance became ready: cleared",
        ),
        (
            Facts { ready: true, saw_ready: true, failure: oom, instances: 0, ready_instances: 0 },
            "OOMKilled",
            "its own failure since",
        ),
        (
            Facts { ready: false, saw_ready: false, failure: None, instances: 0, ready_instances: 0 },
            "ExitCode1",
            "saw nothing",
        ),
    ];
    for (facts, reason, why) in cases {
        let next = next_spec(Some(&stored), 2, Some(&members), Change::Run { uid: "u1", facts: &facts }, Some("u1"));
        let after = next.as_ref().unwrap_or(&stored["spec"]);
        assert_eq!(after["failureReason"], json!(reason), "{why}");
    }
}

/// Facts of "a", of run `generation`, with a ready edge when `saw_ready`.
fn edge(generation: u64, saw_ready: bool) -> FactsUpdate {
    let mut update = update("a", generation, 1);
    update.facts.saw_ready = saw_ready;
    update
}

#[test]
fn a_ready_edge_waiting_is_not_lost_to_newer_facts_of_its_run() {
    // (waiting: (generation, saw_ready), posted: (generation, saw_ready), saw_ready waiting after, why)
    let cases = [
        ((1, true), (1, false), true, "the run cleared its edge once posted: its newer facts carry it on"),
        ((1, false), (1, true), true, "a new edge"),
        ((1, true), (1, true), true, "an edge either way"),
        ((1, false), (1, false), false, "no edge"),
        ((1, true), (2, false), false, "a later run's facts: the earlier run's edge is not theirs"),
        ((2, true), (1, false), true, "an earlier run's last word is dropped: the later run's edge stays"),
    ];
    for ((waiting, waiting_edge), (posted, posted_edge), after, why) in cases {
        let mut pending = Pending::default();
        pending.post(edge(waiting, waiting_edge), PENDING_FACTS_LIMIT);
        pending.post(edge(posted, posted_edge), PENDING_FACTS_LIMIT);
        let left = pending.waiting.get("default/a").map(|w| w.update.facts.saw_ready);
        assert_eq!(left, Some(after), "{why}");
        assert_eq!(pending.waiting.len(), 1, "{why}: one entry per revision");
    }
}

#[test]
fn a_ready_edge_whose_record_failed_is_kept_for_the_retry() {
    const NOW: u64 = 10_000;
    // (waiting meanwhile: (generation, saw_ready), failed: (generation, saw_ready), saw_ready waiting after, why)
    let cases = [
        (None, (1, true), true, "back in line with its edge"),
        (Some((1, false)), (1, true), true, "the run's newer facts, without an edge of their own, take the failed one"),
        (Some((1, true)), (1, false), true, "the run's newer facts keep their own edge"),
        (Some((1, false)), (1, false), false, "no edge either way"),
        (Some((2, false)), (1, true), false, "a later run's facts stay, without the earlier run's edge"),
        (Some((1, true)), (2, false), false, "the failed facts are a later run's: they replace, without the edge"),
    ];
    for (meanwhile, (generation, saw_ready), after, why) in cases {
        let mut pending = Pending::default();
        if let Some((newer, newer_edge)) = meanwhile {
            pending.post(edge(newer, newer_edge), PENDING_FACTS_LIMIT);
        }
        let failed = Waiting { update: edge(generation, saw_ready), failures: 0, not_before_ms: 0, place: 0 };
        pending.put_back(failed, NOW);
        let left = pending.waiting.get("default/a").map(|w| w.update.facts.saw_ready);
        assert_eq!(left, Some(after), "{why}");
    }
}

#[test]
fn another_nodes_later_failure_is_cleared_only_by_facts_with_a_new_ready_edge() {
    let members: BTreeSet<NodeId> = [1, 2].into();
    // Node 1's instance became ready and was recorded: the revision is ready, without a failure.
    let mut stored = state(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"1": 1}, "instances": 1,
        "failureReason": "", "failureMessage": "", "token": "t"}));
    let crashed = Some(("ExitCode1".to_string(), "boom".to_string()));
    // (node, its facts, failureReason after, why): each write on the state the one before left.
    let writes = [
        (
            2,
            Facts { ready: true, saw_ready: false, failure: crashed, instances: 0, ready_instances: 0 },
            "ExitCode1",
            "node 2 fails",
        ),
        (
            1,
            Facts { ready: true, saw_ready: false, failure: None, instances: 2, ready_instances: 2 },
            "ExitCode1",
            "node 1 only scaled out since its instance was ready: node 2's failure stands",
        ),
        (
            1,
            Facts { ready: true, saw_ready: false, failure: None, instances: 1, ready_instances: 1 },
            "ExitCode1",
            "node 1 scaled in: still nothing became ready",
        ),
        (
            1,
            Facts { ready: true, saw_ready: true, failure: None, instances: 1, ready_instances: 1 },
            "",
            "an instance of node 1 became ready again since its last facts: cleared",
        ),
    ];
    for (me, facts, reason, why) in writes {
        let change = Change::Run { uid: "u1", facts: &facts };
        if let Some(spec) = next_spec(Some(&stored), me, Some(&members), change, Some("u1")) {
            stored = state(spec);
        }
        assert_eq!(stored["spec"]["failureReason"], json!(reason), "{why}");
    }
}

#[test]
fn the_ready_time_is_stamped_on_the_edge_to_ready_and_kept() {
    let not_ready = state(json!({"ready": false, "revisionUid": "u1"}));
    let ready_old_style = state(json!({"ready": true, "revisionUid": "u1"}));
    let table: [(&str, Option<&Value>, Value, Option<u64>); 5] = [
        ("first ready, nothing stored", None, json!({"ready": true}), Some(7)),
        ("first ready, stored not ready", Some(&not_ready), json!({"ready": true}), Some(7)),
        ("not ready yet", Some(&not_ready), json!({"ready": false}), None),
        // Stamping it now would start a rollout back to it from the Revisions before.
        ("ready in a state written before the field", Some(&ready_old_style), json!({"ready": true}), None),
        ("ready, stamped before", Some(&ready_old_style), json!({"ready": true, "readyAtMs": 3}), Some(3)),
    ];
    for (why, stored, mut spec, expected) in table {
        stamp_ready_at(stored, &mut spec, 7);
        assert_eq!(spec.get(READY_AT_FIELD).and_then(Value::as_u64), expected, "{why}");
    }
}

/// Each node's ready instances are its own entry of `readyInstancesByNode`, gone at zero, and the field is gone
/// while no node has one (a state without it reads as none ready, as states written before it).
#[test]
fn each_nodes_ready_instances_are_its_own_entry() {
    let members: BTreeSet<NodeId> = [1, 2].into();
    let starting = Facts { ready: true, saw_ready: false, failure: None, instances: 2, ready_instances: 0 };
    let serving = Facts { ready: true, saw_ready: false, failure: None, instances: 2, ready_instances: 2 };
    let stored = state(json!({"ready": true, "revisionUid": "u1", "instancesByNode": {"2": 1},
        "readyInstancesByNode": {"2": 1}}));
    let next = next_spec(Some(&stored), 1, Some(&members), Change::Run { uid: "u1", facts: &serving }, Some("u1"))
        .expect("a write");
    assert_eq!(next[READY_INSTANCES_BY_NODE_FIELD], json!({"1": 2, "2": 1}));
    let next =
        next_spec(Some(&state(next)), 2, Some(&members), Change::Run { uid: "u1", facts: &starting }, Some("u1"))
            .expect("a write");
    assert_eq!(next[READY_INSTANCES_BY_NODE_FIELD], json!({"1": 2}), "node 2's instances start again: none ready");
    let next = next_spec(Some(&state(next)), 1, Some(&members), Change::Forget, Some("u1")).expect("a write");
    assert!(next.get(READY_INSTANCES_BY_NODE_FIELD).is_none(), "none ready anywhere: {next}");
    assert_eq!(next[INSTANCES_BY_NODE_FIELD], json!({"2": 2}));
}
