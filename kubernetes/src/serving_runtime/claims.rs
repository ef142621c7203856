//! Which pod is which instance: the revision task on a node starts and stops instances one by one; Kubernetes
//! runs a Deployment's pods by count. [`Claims`] maps one onto the other, pure: each started instance is a claim
//! the Deployment's replica count covers; a claim is bound to a ready pod the EndpointSlices show (and reported
//! ready at its address); stopping a bound claim marks its pod as the cheapest to delete before the count goes
//! down, so the ReplicaSet takes that pod and no other; a bound pod that stops serving is reported exited, as
//! is a waiting claim while a pod of the revision cannot start (its image cannot be pulled, it crash-loops).
//!
//! Events in ([`Input`]), commands out ([`Command`]); the shell (`super`) watches and patches.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;

use sluice_serving::runtime::InstanceId;

/// A pod as the revision's EndpointSlices show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Endpoint {
    pub(crate) pod: String,
    pub(crate) addr: SocketAddr,
    /// `conditions.ready` (absent counts as ready, as Kubernetes defines it).
    pub(crate) ready: bool,
    pub(crate) terminating: bool,
}

impl Endpoint {
    fn serving(&self) -> bool {
        self.ready && !self.terminating
    }
}

/// Why a pod of the revision cannot start (a container waiting with `ImagePullBackOff`, `CrashLoopBackOff`, ...,
/// or the pod unschedulable).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct PodProblem {
    pub(crate) pod: String,
    pub(crate) reason: String,
    pub(crate) message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Input {
    Start(InstanceId),
    Stop(InstanceId),
    /// Every endpoint the revision's slices list now.
    Endpoints(Vec<Endpoint>),
    /// Every problem the revision's pods have now.
    Problems(Vec<PodProblem>),
    /// The last scale patch failed: ask again at the next step.
    ScaleFailed,
    /// Whether the Deployment or Service of the revision's name is another's (`Some`: why): while it is, the node
    /// leaves it alone, and no claim can have a pod.
    NotOwned(Option<String>),
    /// Look again (after a failed patch).
    Resync,
    /// The time, on the shell's monotonic clock: a claim still waiting past its progress deadline fails.
    Tick {
        now_ms: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Command {
    /// Set the Deployment's replicas (the scale subresource).
    Scale(i32),
    /// Make this pod the one the ReplicaSet deletes first (`controller.kubernetes.io/pod-deletion-cost`).
    MarkForDeletion {
        pod: String,
    },
    /// Take that mark off again: the pod was handed to another instance before it went.
    Unmark {
        pod: String,
    },
    Ready {
        id: InstanceId,
        addr: SocketAddr,
    },
    Exited {
        id: InstanceId,
        reason: String,
        message: String,
    },
    /// The stop of this instance is done (its pod is gone or terminating, or it never had one).
    Stopped(InstanceId),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Claim {
    /// Counted in the replicas, waiting for a ready pod until `deadline_ms` (or for ever).
    Waiting {
        deadline_ms: Option<u64>,
    },
    Bound {
        pod: String,
    },
    /// Stopped while bound: waiting for its pod to go (`marked`: for deletion, see [`Command::MarkForDeletion`]).
    Stopping {
        pod: String,
        marked: bool,
    },
}

#[derive(Debug, Default)]
pub(crate) struct Claims {
    claims: BTreeMap<InstanceId, Claim>,
    endpoints: BTreeMap<String, Endpoint>,
    problems: Vec<PodProblem>,
    /// Why the Deployment or Service of the revision's name is not the node's to apply ([`Input::NotOwned`]).
    not_owned: Option<String>,
    /// What was last asked of the Deployment (`None`: not yet, or the ask failed).
    replicas: Option<i32>,
    /// How long a claim may wait for a ready pod (Knative's progress deadline; `None`: for ever).
    progress_deadline_ms: Option<u64>,
    /// The last [`Input::Tick`].
    now_ms: u64,
}

impl Claims {
    /// Claims whose instances fail (`ProgressDeadlineExceeded`) when no pod of theirs is ready within
    /// `progress_deadline_ms`, as the local runtime's do.
    pub(crate) fn with_progress_deadline(progress_deadline_ms: u64) -> Self {
        Claims { progress_deadline_ms: Some(progress_deadline_ms), ..Claims::default() }
    }

    /// No claim left: nothing of the revision runs for this node.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    /// Nothing serves or waits to: every claim left is a stop waiting for its pod to go (deleting the
    /// Deployment takes those pods too).
    pub(crate) fn only_stopping(&self) -> bool {
        self.claims.values().all(|c| matches!(c, Claim::Stopping { .. }))
    }

    pub(crate) fn step(&mut self, input: Input) -> Vec<Command> {
        let mut out = Vec::new();
        match input {
            Input::Start(id) => {
                let deadline_ms = self.progress_deadline_ms.map(|d| self.now_ms.saturating_add(d));
                self.claims.entry(id).or_insert(Claim::Waiting { deadline_ms });
            }
            Input::Stop(id) => match self.claims.remove(&id) {
                // A claim waits for a pod: it gets this one, which goes on serving (see `bind`).
                Some(Claim::Bound { pod })
                    if self.endpoints.get(&pod).is_some_and(Endpoint::serving) && !self.waiting().is_empty() =>
                {
                    self.claims.insert(id, Claim::Stopping { pod, marked: false });
                }
                Some(Claim::Bound { pod }) if self.endpoints.get(&pod).is_some_and(|e| !e.terminating) => {
                    out.push(Command::MarkForDeletion { pod: pod.clone() });
                    self.claims.insert(id, Claim::Stopping { pod, marked: true });
                }
                Some(stopping @ Claim::Stopping { .. }) => {
                    self.claims.insert(id, stopping);
                }
                _ => out.push(Command::Stopped(id)),
            },
            Input::Endpoints(endpoints) => {
                self.endpoints = endpoints.into_iter().map(|e| (e.pod.clone(), e)).collect();
                let mut gone = Vec::new();
                for (id, claim) in &self.claims {
                    match claim {
                        Claim::Bound { pod } => match self.endpoints.get(pod) {
                            Some(endpoint) if endpoint.serving() => {}
                            Some(endpoint) if endpoint.terminating => gone.push((*id, "PodTerminating", pod)),
                            Some(_) => gone.push((*id, "PodNotReady", pod)),
                            None => gone.push((*id, "PodGone", pod)),
                        },
                        Claim::Stopping { pod, .. } => {
                            if self.endpoints.get(pod).is_none_or(|e| e.terminating) {
                                out.push(Command::Stopped(*id));
                            }
                        }
                        Claim::Waiting { .. } => {}
                    }
                }
                for (id, reason, pod) in gone {
                    out.push(Command::Exited {
                        id,
                        reason: reason.into(),
                        message: format!("pod {pod} no longer serves (its endpoint is not ready)"),
                    });
                }
                self.claims.retain(|id, _| {
                    !out.iter().any(|c| matches!(c, Command::Stopped(s) | Command::Exited { id: s, .. } if s == id))
                });
            }
            Input::Problems(problems) => self.problems = problems,
            Input::NotOwned(why) => self.not_owned = why,
            // Not asked again in this step: at the next step (the shell's 2 s resync tick, or the next event).
            Input::ScaleFailed => {
                self.replicas = None;
                return out;
            }
            Input::Resync => {}
            Input::Tick { now_ms } => self.now_ms = self.now_ms.max(now_ms),
        }
        self.bind(&mut out);
        self.expire(&mut out);
        self.charge_problems(&mut out);
        self.refuse_while_not_owned(&mut out);
        self.rescale(&mut out);
        out
    }

    /// The pods a claim holds (serving or stopping).
    fn held_pods(&self) -> BTreeSet<String> {
        self.claims
            .values()
            .filter_map(|c| match c {
                Claim::Bound { pod } | Claim::Stopping { pod, .. } => Some(pod.clone()),
                Claim::Waiting { .. } => None,
            })
            .collect()
    }

    /// The claims waiting for a pod, oldest first.
    fn waiting(&self) -> Vec<InstanceId> {
        self.claims.iter().filter(|(_, c)| matches!(c, Claim::Waiting { .. })).map(|(id, _)| *id).collect()
    }

    /// Ready pods go to waiting claims, oldest first: first those no claim holds, then those of stopping claims
    /// (whose stop is then done: the pod serves on as the waiting claim's). Without the second, a stop while a
    /// claim waits could hang for ever: the scale-down makes the ReplicaSet delete the waiting claim's pending
    /// pod (it ranks pending pods before any deletion cost), so the stopping pod never goes and the waiting
    /// claim never gets one.
    fn bind(&mut self, out: &mut Vec<Command>) {
        let mut bound = BTreeSet::new();
        let mut stopping = BTreeMap::new();
        for (id, claim) in &self.claims {
            match claim {
                Claim::Bound { pod } => {
                    bound.insert(pod.clone());
                }
                Claim::Stopping { pod, marked } => {
                    stopping.insert(pod.clone(), (*id, *marked));
                }
                Claim::Waiting { .. } => {}
            }
        }
        let serving = || self.endpoints.values().filter(|e| e.serving() && !bound.contains(&e.pod));
        let mut free: Vec<Endpoint> = serving().filter(|e| !stopping.contains_key(&e.pod)).cloned().collect();
        free.extend(serving().filter(|e| stopping.contains_key(&e.pod)).cloned());
        for (id, endpoint) in self.waiting().into_iter().zip(free) {
            if let Some((stopped, marked)) = stopping.get(&endpoint.pod) {
                self.claims.remove(stopped);
                out.push(Command::Stopped(*stopped));
                if *marked {
                    out.push(Command::Unmark { pod: endpoint.pod.clone() });
                }
            }
            self.claims.insert(id, Claim::Bound { pod: endpoint.pod.clone() });
            out.push(Command::Ready { id, addr: endpoint.addr });
        }
    }

    /// A claim that waited past its deadline for a ready pod fails: the revision task counts it as a failed start
    /// (the Revision says `ProgressDeadlineExceeded`) and backs off before it asks again. Bound after the
    /// pods of this step are: a pod that became ready in time is taken first.
    fn expire(&mut self, out: &mut Vec<Command>) {
        let now_ms = self.now_ms;
        let late: Vec<InstanceId> = self
            .claims
            .iter()
            .filter(|(_, c)| matches!(c, Claim::Waiting { deadline_ms: Some(deadline_ms) } if *deadline_ms <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.claims.remove(&id);
            let waited_s = self.progress_deadline_ms.unwrap_or_default() / 1000;
            out.push(Command::Exited {
                id,
                reason: "ProgressDeadlineExceeded".into(),
                message: format!("no pod of the revision became ready within {waited_s} s (--progress-deadline-ms)"),
            });
        }
    }

    /// A pod that cannot start fails a waiting claim (the oldest), once per pod and step: the revision task
    /// counts it as a failed start and backs off before it asks again.
    fn charge_problems(&mut self, out: &mut Vec<Command>) {
        let held = self.held_pods();
        let problems: Vec<PodProblem> = self.problems.iter().filter(|p| !held.contains(&p.pod)).cloned().collect();
        let waiting = self.waiting();
        for (id, problem) in waiting.into_iter().zip(problems) {
            self.claims.remove(&id);
            out.push(Command::Exited {
                id,
                reason: problem.reason.clone(),
                message: format!("pod {}: {}", problem.pod, problem.message),
            });
        }
    }

    /// While the revision's Deployment or Service is another's, every waiting claim fails at once with
    /// `NotOwned` (the Revision says so, as Knative's does), rather than at its progress deadline: its pod cannot
    /// come. The revision task backs off and asks again, and a claim then waits as usual once the name is free.
    fn refuse_while_not_owned(&mut self, out: &mut Vec<Command>) {
        let Some(why) = &self.not_owned else { return };
        for id in self.waiting() {
            self.claims.remove(&id);
            out.push(Command::Exited { id, reason: "NotOwned".into(), message: why.clone() });
        }
    }

    /// The Deployment runs a pod for each claim not being stopped; nothing is asked of a Deployment that is not
    /// the node's (asked again once it is).
    fn rescale(&mut self, out: &mut Vec<Command>) {
        if self.not_owned.is_some() {
            self.replicas = None;
            return;
        }
        let wanted = self.claims.values().filter(|c| !matches!(c, Claim::Stopping { .. })).count();
        let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
        if self.replicas != Some(wanted) {
            self.replicas = Some(wanted);
            out.push(Command::Scale(wanted));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn endpoint(pod: &str, last_octet: u8, ready: bool, terminating: bool) -> Endpoint {
        Endpoint { pod: pod.into(), addr: SocketAddr::from(([10, 0, 0, last_octet], 8080)), ready, terminating }
    }

    fn ready(pod: &str, last_octet: u8) -> Endpoint {
        endpoint(pod, last_octet, true, false)
    }

    fn addr(last_octet: u8) -> SocketAddr {
        SocketAddr::from(([10, 0, 0, last_octet], 8080))
    }

    #[test]
    fn a_start_scales_up_and_the_first_ready_pod_is_its_instance() {
        let mut claims = Claims::default();
        assert_eq!(claims.step(Input::Start(1)), [Command::Scale(1)]);
        // Not ready yet: nothing to bind.
        assert_eq!(claims.step(Input::Endpoints(vec![endpoint("p-a", 1, false, false)])), []);
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1)])), [Command::Ready { id: 1, addr: addr(1) }]);
        // A second start gets the next ready pod, not the one instance 1 holds.
        assert_eq!(claims.step(Input::Start(2)), [Command::Scale(2)]);
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1)])), []);
        assert_eq!(
            claims.step(Input::Endpoints(vec![ready("p-a", 1), ready("p-b", 2)])),
            [Command::Ready { id: 2, addr: addr(2) }]
        );
    }

    #[test]
    fn a_stop_marks_its_own_pod_before_the_count_goes_down_and_ends_when_the_pod_goes() {
        let mut claims = Claims::default();
        claims.step(Input::Start(1));
        claims.step(Input::Start(2));
        claims.step(Input::Endpoints(vec![ready("p-a", 1), ready("p-b", 2)]));
        assert_eq!(
            claims.step(Input::Stop(2)),
            [Command::MarkForDeletion { pod: "p-b".into() }, Command::Scale(1)],
            "the mark comes first: the ReplicaSet picks the pod to delete when the count goes down"
        );
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1), ready("p-b", 2)])), [], "still there");
        assert_eq!(claims.step(Input::Stop(2)), [], "a second stop waits as the first");
        assert!(!claims.only_stopping(), "p-a serves");
        assert_eq!(
            claims.step(Input::Endpoints(vec![ready("p-a", 1), endpoint("p-b", 2, false, true)])),
            [Command::Stopped(2)]
        );
        assert!(!claims.is_empty());
        // A waiting claim stops at once.
        claims.step(Input::Start(3));
        assert_eq!(claims.step(Input::Stop(3)), [Command::Stopped(3), Command::Scale(1)]);
        assert_eq!(claims.step(Input::Stop(1)), [Command::MarkForDeletion { pod: "p-a".into() }, Command::Scale(0)]);
        assert!(claims.only_stopping() && !claims.is_empty());
        assert_eq!(claims.step(Input::Endpoints(vec![])), [Command::Stopped(1)]);
        assert!(claims.is_empty());
        assert_eq!(claims.step(Input::Stop(9)), [Command::Stopped(9)], "an unknown stop is done");
    }

    #[test]
    fn a_claim_with_no_ready_pod_by_its_progress_deadline_fails_saying_why() {
        let mut claims = Claims::with_progress_deadline(600_000);
        claims.step(Input::Tick { now_ms: 1_000 });
        assert_eq!(claims.step(Input::Start(1)), [Command::Scale(1)]);
        claims.step(Input::Tick { now_ms: 300_000 });
        assert_eq!(claims.step(Input::Start(2)), [Command::Scale(2)]);
        // Running, never ready (its readiness probe fails): no problem to report, only the deadline.
        assert_eq!(claims.step(Input::Endpoints(vec![endpoint("p-a", 1, false, false)])), []);
        assert_eq!(claims.step(Input::Tick { now_ms: 600_999 }), []);
        let exited = claims.step(Input::Tick { now_ms: 601_000 });
        assert!(
            matches!(&exited[..], [Command::Exited { id: 1, reason, .. }, Command::Scale(1)] if reason == "ProgressDeadlineExceeded"),
            "{exited:?}"
        );
        // A pod ready in time is taken, even in the step whose tick is past the deadline.
        let bound = claims.step(Input::Endpoints(vec![ready("p-a", 1)]));
        assert_eq!(bound, [Command::Ready { id: 2, addr: addr(1) }]);
        assert_eq!(claims.step(Input::Tick { now_ms: 10_000_000 }), [], "a bound claim has no deadline");
        // A clock that goes back does not move the deadline.
        assert_eq!(claims.step(Input::Tick { now_ms: 5 }), []);
        let mut forever = Claims::default();
        forever.step(Input::Start(1));
        assert_eq!(forever.step(Input::Tick { now_ms: u64::MAX }), [], "no deadline set");
    }

    /// Regression: a stop while another claim waited marked the stopping pod and lowered the count, but the
    /// ReplicaSet deletes a pending pod before any marked one: the waiting claim's pod went, the stopping pod
    /// stayed, and neither claim ever moved on.
    #[test]
    fn regression_a_stop_while_a_claim_waits_hands_the_pod_over_and_never_hangs() {
        let mut claims = Claims::default();
        claims.step(Input::Start(1));
        claims.step(Input::Endpoints(vec![ready("p-a", 1)]));
        assert_eq!(claims.step(Input::Start(2)), [Command::Scale(2)]);
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1), endpoint("p-b", 2, false, false)])), []);
        assert_eq!(
            claims.step(Input::Stop(1)),
            [Command::Stopped(1), Command::Ready { id: 2, addr: addr(1) }, Command::Scale(1)],
            "no mark: the count going down takes the pending pod"
        );
        // The ReplicaSet deletes p-b; claim 2 serves on p-a.
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1), endpoint("p-b", 2, false, true)])), []);
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1)])), []);

        // A start that comes after a stop, before the stopping pod went, takes that pod too.
        assert_eq!(claims.step(Input::Stop(2)), [Command::MarkForDeletion { pod: "p-a".into() }, Command::Scale(0)]);
        assert_eq!(
            claims.step(Input::Start(3)),
            [
                Command::Stopped(2),
                Command::Unmark { pod: "p-a".into() },
                Command::Ready { id: 3, addr: addr(1) },
                Command::Scale(1)
            ],
            "the mark comes off before the pod serves again, or the next scale-down would take it"
        );
        // A free ready pod is preferred to a stopping one.
        claims.step(Input::Start(4));
        assert_eq!(
            claims.step(Input::Endpoints(vec![ready("p-a", 1), ready("p-c", 3)])),
            [Command::Ready { id: 4, addr: addr(3) }]
        );
        assert_eq!(claims.step(Input::Stop(4)), [Command::MarkForDeletion { pod: "p-c".into() }, Command::Scale(1)]);
        // p-d is ready and no claim's (one more pod than claims, for a while): it is taken, p-c's stop goes on.
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1), ready("p-c", 3), ready("p-d", 4)])), []);
        assert_eq!(claims.step(Input::Start(5)), [Command::Ready { id: 5, addr: addr(4) }, Command::Scale(2)]);
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p-a", 1), ready("p-d", 4)])), [Command::Stopped(4)]);
    }

    #[test]
    fn a_pod_that_stops_serving_is_an_exit_and_its_claim_goes() {
        let cases = [
            (vec![endpoint("p-a", 1, false, false)], "PodNotReady"),
            (vec![endpoint("p-a", 1, true, true)], "PodTerminating"),
            (vec![], "PodGone"),
        ];
        for (endpoints, reason) in cases {
            let mut claims = Claims::default();
            claims.step(Input::Start(1));
            claims.step(Input::Endpoints(vec![ready("p-a", 1)]));
            let out = claims.step(Input::Endpoints(endpoints));
            assert!(matches!(&out[0], Command::Exited { id: 1, reason: r, .. } if r == reason), "{out:?}");
            assert_eq!(out[1..], [Command::Scale(0)]);
            assert!(claims.is_empty());
        }
    }

    #[test]
    fn a_pod_that_cannot_start_fails_the_oldest_waiting_claim() {
        let mut claims = Claims::default();
        claims.step(Input::Start(1));
        claims.step(Input::Start(2));
        claims.step(Input::Endpoints(vec![ready("p-a", 1)]));
        let problem =
            PodProblem { pod: "p-b".into(), reason: "ImagePullBackOff".into(), message: "no such image".into() };
        let out = claims.step(Input::Problems(vec![problem.clone()]));
        assert_eq!(
            out,
            [
                Command::Exited { id: 2, reason: "ImagePullBackOff".into(), message: "pod p-b: no such image".into() },
                Command::Scale(1)
            ]
        );
        // The next start meets the same problem at once (the revision task backs off between starts).
        let out = claims.step(Input::Start(3));
        assert!(matches!(&out[0], Command::Exited { id: 3, .. }), "{out:?}");
        // A problem of a pod that serves a claim is not a waiting claim's.
        let mut claims = Claims::default();
        claims.step(Input::Start(1));
        claims.step(Input::Endpoints(vec![ready("p-a", 1)]));
        let crash = PodProblem { pod: "p-a".into(), reason: "CrashLoopBackOff".into(), message: String::new() };
        assert_eq!(claims.step(Input::Problems(vec![crash])), []);
    }

    #[test]
    fn while_the_deployment_is_another_s_claims_fail_at_once_and_nothing_is_scaled() {
        let mut claims = Claims::with_progress_deadline(600_000);
        let why = "There is an existing Deployment \"hello-00001-n1-deployment\" that we do not own".to_string();
        assert_eq!(claims.step(Input::NotOwned(Some(why.clone()))), []);
        assert_eq!(
            claims.step(Input::Start(1)),
            [Command::Exited { id: 1, reason: "NotOwned".into(), message: why.clone() }],
            "fails at once, not at its progress deadline, and no scale is asked"
        );
        assert!(claims.is_empty());
        assert_eq!(claims.step(Input::Tick { now_ms: 2_000 }), []);
        // The name is free again (the other's was deleted): the next start waits for its pod as usual.
        assert_eq!(claims.step(Input::NotOwned(None)), [Command::Scale(0)]);
        assert_eq!(claims.step(Input::Start(2)), [Command::Scale(1)]);
        assert_eq!(claims.step(Input::Endpoints(vec![ready("p", 7)])), [Command::Ready { id: 2, addr: addr(7) }]);
    }

    #[test]
    fn a_failed_scale_is_asked_again() {
        let mut claims = Claims::default();
        assert_eq!(claims.step(Input::Start(1)), [Command::Scale(1)]);
        assert_eq!(claims.step(Input::Resync), []);
        assert_eq!(claims.step(Input::ScaleFailed), [], "not at once");
        assert_eq!(claims.step(Input::Resync), [Command::Scale(1)]);
    }

    fn input() -> impl Strategy<Value = Input> {
        let pods = ["p-a", "p-b", "p-c", "p-d"];
        let endpoints =
            proptest::collection::vec((0..4usize, any::<bool>(), any::<bool>()), 0..4).prop_map(move |list| {
                let mut seen = BTreeSet::new();
                list.into_iter()
                    .filter(|(i, _, _)| seen.insert(*i))
                    .map(|(i, ready, terminating)| endpoint(pods[i], i as u8 + 1, ready, terminating))
                    .collect::<Vec<_>>()
            });
        prop_oneof![
            (1..6u64).prop_map(Input::Start),
            (1..6u64).prop_map(Input::Stop),
            endpoints.prop_map(Input::Endpoints),
            (0..4usize).prop_map(move |i| Input::Problems(vec![PodProblem {
                pod: pods[i].into(),
                reason: "ErrImagePull".into(),
                message: String::new()
            }])),
            Just(Input::Problems(vec![])),
            Just(Input::ScaleFailed),
            Just(Input::Resync),
            Just(Input::NotOwned(Some("another's".into()))),
            Just(Input::NotOwned(None)),
            (0u64..2_000_000).prop_map(|now_ms| Input::Tick { now_ms }),
        ]
    }

    proptest! {
        /// Whatever happens: no pod is two instances' at once, a ready report names a pod that serves, the
        /// replicas last asked are the claims not stopping, and every stop is answered once the pod is gone.
        #[test]
        fn claims_never_share_a_pod_and_the_count_follows_them(inputs in proptest::collection::vec(input(), 1..60)) {
            let mut claims = Claims::with_progress_deadline(500_000);
            let mut asked = None;
            let mut live: BTreeMap<InstanceId, SocketAddr> = BTreeMap::new();
            for input in inputs {
                let out = claims.step(input.clone());
                for command in &out {
                    match command {
                        Command::Scale(n) => asked = Some(*n),
                        Command::Ready { id, addr } => {
                            prop_assert!(claims.endpoints.values().any(|e| e.addr == *addr && e.serving()));
                            prop_assert!(!live.values().any(|a| a == addr), "{addr} given twice");
                            live.insert(*id, *addr);
                        }
                        Command::Exited { id, .. } | Command::Stopped(id) => {
                            live.remove(id);
                        }
                        Command::MarkForDeletion { .. } | Command::Unmark { .. } => {}
                    }
                }
                if let Input::Stop(id) = input {
                    live.remove(&id);
                }
                if claims.not_owned.is_some() {
                    prop_assert!(!out.iter().any(|c| matches!(c, Command::Scale(_))), "scaled another's Deployment");
                    prop_assert!(claims.waiting().is_empty(), "a claim waits for a pod that cannot come");
                }
                let bound: Vec<&String> = claims.claims.values().filter_map(|c| match c {
                    Claim::Bound { pod } | Claim::Stopping { pod, .. } => Some(pod),
                    Claim::Waiting { .. } => None,
                }).collect();
                let unique: BTreeSet<&String> = bound.iter().copied().collect();
                prop_assert_eq!(bound.len(), unique.len(), "a pod bound twice");
                let counted = claims.claims.values().filter(|c| !matches!(c, Claim::Stopping { .. })).count() as i32;
                if claims.replicas.is_some() {
                    prop_assert_eq!(asked, Some(counted));
                }
                for id in live.keys() {
                    prop_assert!(matches!(claims.claims.get(id), Some(Claim::Bound { .. })), "instance {} reported ready but not bound", id);
                }
                // No claim waits while a ready pod is held only by a stop (the scale-in deadlock).
                if claims.claims.values().any(|c| matches!(c, Claim::Waiting { .. })) {
                    let stuck = claims.claims.values().any(|c| matches!(c, Claim::Stopping { pod, .. }
                        if claims.endpoints.get(pod).is_some_and(Endpoint::serving)));
                    prop_assert!(!stuck, "a claim waits beside a stopping pod that still serves");
                }
            }
        }
    }
}
