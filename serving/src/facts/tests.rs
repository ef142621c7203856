use super::*;

fn update(name: &str, generation: u64, instances: u32) -> FactsUpdate {
    FactsUpdate {
        namespace: "default".into(),
        name: name.into(),
        run: RunId { uid: "u1".into(), generation },
        facts: Facts { ready: true, failure: None, instances },
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
        let mut pending: BTreeMap<String, FactsUpdate> = waiting
            .into_iter()
            .map(|(name, generation, instances)| (format!("default/{name}"), update(name, generation, instances)))
            .collect();
        let before = pending.len();
        assert_eq!(coalesce(&mut pending, posted, limit), outcome, "{why}");
        let left = pending.get("default/a").map(|u| (u.run.generation, u.facts.instances));
        assert_eq!(left, after, "{why}");
        assert!(pending.len() <= limit.max(before), "{why}: bounded");
    }
}

#[test]
fn many_changes_of_one_revision_never_grow_the_outbox() {
    let outbox = FactsOutbox::default();
    for instances in 0..10_000 {
        assert!(outbox.post(update("a", 1, instances)));
    }
    let taken = outbox.take();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].facts.instances, 9_999, "the latest");
    assert!(outbox.take().is_empty());
}

fn state(spec: Value) -> Value {
    json!({"kind": "RevisionState", "metadata": {"name": "a", "namespace": "default"}, "spec": spec})
}

fn facts(ready: bool, instances: u32) -> Facts {
    Facts { ready, failure: None, instances }
}

#[test]
fn each_node_records_its_own_instances_and_drops_those_of_nodes_gone() {
    let members: BTreeSet<NodeId> = [1, 2].into();
    let idle = facts(true, 0);
    let busy = facts(true, 10);
    let failing = Facts { ready: false, failure: Some(("ExitCode1".into(), "boom".into())), instances: 0 };
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
        let next = next_spec(stored.as_ref(), me, members, change);
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
    let after_one = next_spec(None, 1, Some(&members), Change::Run { uid: "u1", facts: &busy }).map(state);
    let after_two = match next_spec(after_one.as_ref(), 2, Some(&members), Change::Run { uid: "u1", facts: &idle }) {
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
