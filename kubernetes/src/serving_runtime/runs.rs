//! Which runs of a revision a node's pod task serves. Runs of one revision overlap on a node: one drains while
//! its replacement starts (a Revision deleted and made again under its name, or a run restarted because what
//! it takes changed), and both use the revision's Deployment, which is one per node. Pure: the task asks it
//! whether a start brings a later run (whose Deployment the task applies from then on: a namesake may run
//! another image) and whether a run's retirement may delete the Deployment (not when a later run uses it).

/// The latest run that started an instance through the task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Runs {
    latest: Option<u64>,
}

/// What a start tells of its run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RunStart {
    /// The run the task serves, or an earlier one still draining: nothing changes.
    Known,
    /// A later run than any before: the task takes its Deployment and Service.
    Later,
}

impl Runs {
    pub(crate) fn start(&mut self, run: u64) -> RunStart {
        match self.latest {
            Some(latest) if run <= latest => RunStart::Known,
            _ => {
                self.latest = Some(run);
                RunStart::Later
            }
        }
    }

    /// Whether `run`, stopped, may have the Deployment and Service deleted: no later run has used them.
    pub(crate) fn may_retire(&self, run: u64) -> bool {
        self.latest.is_none_or(|latest| run >= latest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_earlier_runs_retirement_leaves_a_later_runs_deployment_alone() {
        // (runs that started instances, in order; the run retiring; whether it may delete; why)
        let cases: [(&[u64], u64, bool, &str); 6] = [
            (&[], 1, true, "no run started an instance: nothing to keep"),
            (&[1], 1, true, "its own run"),
            (&[1, 2], 1, false, "the replacement (run 2) started meanwhile: its Deployment stays"),
            (&[1, 2], 2, true, "the replacement retires: it goes"),
            (&[2, 1], 1, false, "an earlier run's late start does not make it the latest"),
            (&[1, 1, 1], 1, true, "one run's many starts"),
        ];
        for (started, retiring, may, why) in cases {
            let mut runs = Runs::default();
            for run in started {
                runs.start(*run);
            }
            assert_eq!(runs.may_retire(retiring), may, "{why}");
        }
    }

    #[test]
    fn only_a_later_run_brings_its_deployment() {
        let mut runs = Runs::default();
        let starts: Vec<RunStart> = [1, 1, 2, 1, 3].into_iter().map(|run| runs.start(run)).collect();
        assert_eq!(starts, [RunStart::Later, RunStart::Known, RunStart::Later, RunStart::Known, RunStart::Later]);
    }
}
