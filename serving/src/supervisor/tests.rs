use super::*;

fn forgetting(names: &[&str]) -> Sweep {
    Sweep::Forgetting(names.iter().map(|name| ("default".to_string(), name.to_string())).collect())
}

#[test]
fn the_start_up_sweep_catches_up_first_forgets_one_at_a_time_and_skips_what_runs_again() {
    // (sweep, now, revisions running, job, sweep after, why)
    let cases = [
        (Sweep::At(0), 0, vec![], Some(SweepJob::CatchUp), Sweep::At(0), "at start: catch up first"),
        (Sweep::At(5_000), 4_999, vec![], None, Sweep::At(5_000), "failed before: not before its retry"),
        (Sweep::At(5_000), 5_000, vec![], Some(SweepJob::CatchUp), Sweep::At(5_000), "its retry is due"),
        (
            forgetting(&["a", "b"]),
            0,
            vec![],
            Some(SweepJob::Forget("default".into(), "b".into())),
            forgetting(&["a"]),
            "one forget per write",
        ),
        (
            forgetting(&["a", "b"]),
            0,
            vec!["default/b"],
            Some(SweepJob::Forget("default".into(), "a".into())),
            forgetting(&[]),
            "b runs again since: its own facts write its entry",
        ),
        (forgetting(&["a"]), 0, vec!["default/a"], None, Sweep::Done, "nothing left to forget: done"),
        (forgetting(&[]), 0, vec![], None, Sweep::Done, "every forget went through: done"),
        (Sweep::Done, 0, vec![], None, Sweep::Done, "done for good"),
    ];
    for (mut sweep, now, running, job, after, why) in cases {
        let runs = |key: &str| running.contains(&key);
        assert_eq!(sweep_step(&mut sweep, now, runs), job, "{why}");
        assert_eq!(sweep, after, "{why}");
        let wakes = sweep_due_ms(&sweep).is_some();
        assert_eq!(wakes, sweep != Sweep::Done, "{why}: the supervisor wakes for it until it is done");
    }
}

fn problems(found: &[(&str, &str)]) -> Vec<(String, String)> {
    found.iter().map(|(key, problem)| (key.to_string(), problem.to_string())).collect()
}

#[test]
fn a_revisions_problem_is_logged_once_while_it_lasts_and_again_when_it_comes_back() {
    let mut logged = HashMap::new();
    // (problems found at a reconcile, those logged, why): each turn on what the one before left.
    let turns = [
        (problems(&[("default/a", "no image")]), problems(&[("default/a", "no image")]), "new: logged"),
        (problems(&[("default/a", "no image")]), problems(&[]), "the same: logged already"),
        (problems(&[("default/a", "bad port")]), problems(&[("default/a", "bad port")]), "changed: logged"),
        (problems(&[("default/b", "no image")]), problems(&[("default/b", "no image")]), "a fixed, b new"),
        (problems(&[]), problems(&[]), "every problem gone"),
        (problems(&[("default/b", "no image")]), problems(&[("default/b", "no image")]), "b back: logged again"),
    ];
    for (found, to_log, why) in turns {
        let found_now = found.len();
        assert_eq!(problems_to_log(&mut logged, found), to_log, "{why}");
        assert_eq!(logged.len(), found_now, "{why}: only the revisions with a problem now are kept");
    }
}
