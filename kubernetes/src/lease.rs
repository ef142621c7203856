//! One active controller at a time: a `coordination.k8s.io` Lease, decided here over what was read
//! ([`LeaseView`]), what this candidate saw of it before ([`LeaseObserver`]) and the time, carried out by
//! [`hold`] (get, then replace with the read resourceVersion, so two candidates cannot both win).
//!
//! Expiry is judged as client-go's leader election judges it: by this candidate's own monotonic clock, from
//! when it saw the Lease's record last change, never by comparing the holder's `renewTime` with this
//! machine's wall clock. A candidate whose clock runs ahead of the holder's would otherwise take a Lease that
//! is still being renewed, and two controllers would act at once.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// The Lease as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// When the holder last renewed it (ms since the epoch, by the holder's clock).
    pub renewed_at_ms: Option<i64>,
    pub duration_s: i32,
    /// The object's resourceVersion: any write changes it.
    pub version: String,
}

/// What a candidate does with the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Take it (nobody holds it, or the holder let it expire): become the leader.
    Acquire,
    /// It is ours: renew it, stay the leader.
    Renew,
    /// Someone else holds it until `expires_at_ms` (this candidate's monotonic clock).
    Follow { holder: String, expires_at_ms: i64 },
}

/// `view` is the Lease as just read, `changed_at_ms` when this candidate saw its record last change, `now_ms`
/// the time; both on this candidate's monotonic clock.
pub fn lease_step(view: Option<&LeaseView>, me: &str, changed_at_ms: i64, now_ms: i64) -> LeaseStep {
    let Some(view) = view else { return LeaseStep::Acquire };
    match &view.holder {
        Some(holder) if holder == me => LeaseStep::Renew,
        Some(holder) if !holder.is_empty() => {
            let expires_at_ms = changed_at_ms.saturating_add(i64::from(view.duration_s) * 1000);
            if now_ms < expires_at_ms {
                LeaseStep::Follow { holder: holder.clone(), expires_at_ms }
            } else {
                LeaseStep::Acquire
            }
        }
        _ => LeaseStep::Acquire,
    }
}

/// What one candidate has seen of the Lease over its rounds: the record last read and when (its own clock) that
/// record last changed. Kept by the caller from one [`hold`] to the next.
#[derive(Debug)]
pub struct LeaseObserver {
    started: Instant,
    /// `None` before the first read; `Some(None)` once the Lease was read as absent.
    seen: Option<Option<LeaseView>>,
    changed_at_ms: i64,
}

impl Default for LeaseObserver {
    fn default() -> Self {
        LeaseObserver { started: Instant::now(), seen: None, changed_at_ms: 0 }
    }
}

impl LeaseObserver {
    /// This candidate's monotonic clock, in ms.
    fn now_ms(&self) -> i64 {
        i64::try_from(self.started.elapsed().as_millis()).unwrap_or(i64::MAX)
    }

    /// Records a read at `now_ms`; answers when the record last changed (now, when it differs from the last
    /// one seen, or when it is the first).
    pub fn observe(&mut self, view: Option<&LeaseView>, now_ms: i64) -> i64 {
        if self.seen.as_ref().map(Option::as_ref) != Some(view) {
            self.seen = Some(view.cloned());
            self.changed_at_ms = now_ms;
        }
        self.changed_at_ms
    }
}

fn view_of(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed_at_ms: spec.renew_time.map(|t| t.0.as_millisecond()),
        duration_s: spec.lease_duration_seconds.unwrap_or(15),
        version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// One round: reads the Lease, and takes or renews it when [`lease_step`] says so. `Ok(true)`: this
/// candidate is the leader until `duration` from now.
pub async fn hold(
    api: &Api<Lease>,
    name: &str,
    me: &str,
    duration: Duration,
    observer: &mut LeaseObserver,
) -> Result<bool, kube::Error> {
    let existing = api.get_opt(name).await?;
    let view = existing.as_ref().map(view_of);
    let now_ms = observer.now_ms();
    let changed_at_ms = observer.observe(view.as_ref(), now_ms);
    let step = lease_step(view.as_ref(), me, changed_at_ms, now_ms);
    if let LeaseStep::Follow { .. } = step {
        return Ok(false);
    }
    let now = Timestamp::now();
    let acquiring = step == LeaseStep::Acquire;
    let previous = existing.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
    let spec = LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs().try_into().unwrap_or(i32::MAX)),
        renew_time: Some(MicroTime(now)),
        acquire_time: if acquiring { Some(MicroTime(now)) } else { previous.acquire_time },
        lease_transitions: Some(
            previous.lease_transitions.unwrap_or(0).saturating_add(i32::from(acquiring && existing.is_some())),
        ),
        ..Default::default()
    };
    let result = match existing {
        Some(lease) => {
            // The resourceVersion read makes this a compare-and-swap: a concurrent taker gets a conflict.
            let replacement = Lease { metadata: lease.metadata, spec: Some(spec) };
            api.replace(name, &PostParams::default(), &replacement).await
        }
        None => {
            let lease =
                Lease { metadata: ObjectMeta { name: Some(name.to_string()), ..Default::default() }, spec: Some(spec) };
            api.create(&PostParams::default(), &lease).await
        }
    };
    match result {
        Ok(written) => {
            // Our own write is a change we made: seen now, so a later round does not count it as the holder's.
            observer.observe(Some(&view_of(&written)), now_ms);
            Ok(true)
        }
        // Another candidate wrote first (409), or created it first (409 AlreadyExists): not this round.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed_at_ms: i64) -> LeaseView {
        LeaseView {
            holder: Some(holder.into()),
            renewed_at_ms: Some(renewed_at_ms),
            duration_s: 15,
            version: "1".into(),
        }
    }

    #[test]
    fn a_lease_is_taken_when_free_or_unchanged_for_its_duration_and_kept_by_its_holder() {
        // (the Lease read, when this candidate saw it change, now), on the candidate's clock.
        let cases = [
            (None, 0, 0, LeaseStep::Acquire),
            (Some(LeaseView::default()), 0, 0, LeaseStep::Acquire),
            (Some(held_by("me", 0)), 0, 100_000, LeaseStep::Renew),
            (
                Some(held_by("other", 10_000)),
                10_000,
                24_999,
                LeaseStep::Follow { holder: "other".into(), expires_at_ms: 25_000 },
            ),
            (Some(held_by("other", 10_000)), 10_000, 25_000, LeaseStep::Acquire),
            // The holder's renewTime says nothing about expiry: here its clock lags this machine's by hours.
            (
                Some(held_by("other", 0)),
                100_000,
                100_001,
                LeaseStep::Follow { holder: "other".into(), expires_at_ms: 115_000 },
            ),
            (
                Some(LeaseView {
                    holder: Some(String::new()),
                    renewed_at_ms: Some(10_000),
                    duration_s: 15,
                    version: "1".into(),
                }),
                0,
                0,
                LeaseStep::Acquire,
            ),
        ];
        for (view, changed_at_ms, now_ms, want) in cases {
            assert_eq!(lease_step(view.as_ref(), "me", changed_at_ms, now_ms), want, "{view:?} at {now_ms}");
        }
    }

    #[test]
    fn the_observer_dates_a_record_from_when_it_was_first_seen_and_from_each_change() {
        let mut observer = LeaseObserver::default();
        let first = held_by("other", 5);
        assert_eq!(observer.observe(Some(&first), 1_000), 1_000, "first sight");
        assert_eq!(observer.observe(Some(&first), 9_000), 1_000, "unchanged");
        let renewed = LeaseView { renewed_at_ms: Some(6), version: "2".into(), ..first.clone() };
        assert_eq!(observer.observe(Some(&renewed), 12_000), 12_000, "renewed");
        assert_eq!(observer.observe(None, 13_000), 13_000, "deleted");
        assert_eq!(observer.observe(None, 14_000), 13_000, "still absent");
    }

    use crate::mock_api::{assert_no_request, mock_client, next_request, respond, respond_not_found};
    use http::Method;
    use serde_json::json;

    /// The Lease as the API server returns it, held by `pod-b` since `renewed`, taken twice before.
    fn held_by_pod_b(renewed: &str) -> serde_json::Value {
        json!({
            "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "sluice-controller", "namespace": "sluice-system", "resourceVersion": "5"},
            "spec": {"holderIdentity": "pod-b", "leaseDurationSeconds": 15, "renewTime": renewed, "leaseTransitions": 2}
        })
    }

    #[tokio::test]
    async fn a_missing_lease_is_created_and_held() {
        let (client, mut handle) = mock_client();
        let api: Api<Lease> = Api::namespaced(client, "sluice-system");
        let server = tokio::spawn(async move {
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::GET, "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-controller")
            );
            respond_not_found(send);
            let (method, path, body, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::POST, "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases?")
            );
            assert_eq!(body["spec"]["holderIdentity"], "pod-a");
            assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
            respond(send, &body);
        });
        let mut observer = LeaseObserver::default();
        assert!(hold(&api, "sluice-controller", "pod-a", Duration::from_secs(15), &mut observer).await.expect("hold"));
        server.await.expect("scenario");
    }

    #[tokio::test]
    async fn a_lease_held_by_a_live_candidate_is_left_to_it() {
        let (client, mut handle) = mock_client();
        let api: Api<Lease> = Api::namespaced(client, "sluice-system");
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next_request(&mut handle).await;
            respond(send, &held_by_pod_b(&Timestamp::now().to_string()));
            assert_no_request(&mut handle).await;
        });
        let mut observer = LeaseObserver::default();
        assert!(!hold(&api, "sluice-controller", "pod-a", Duration::from_secs(15), &mut observer).await.expect("hold"));
        server.await.expect("scenario");
    }

    /// Regression: expiry was the holder's `renewTime` plus the duration, against this machine's wall clock, so a
    /// candidate whose clock ran ahead of the holder's (here by years) took a Lease still being renewed.
    #[tokio::test]
    async fn regression_a_lease_renewed_by_a_holder_whose_clock_lags_is_not_taken_on_sight() {
        let (client, mut handle) = mock_client();
        let api: Api<Lease> = Api::namespaced(client, "sluice-system");
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next_request(&mut handle).await;
            respond(send, &held_by_pod_b("2020-01-01T00:00:00.000000Z"));
            assert_no_request(&mut handle).await;
        });
        let mut observer = LeaseObserver::default();
        assert!(!hold(&api, "sluice-controller", "pod-a", Duration::from_secs(15), &mut observer).await.expect("hold"));
        server.await.expect("scenario");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_with_the_version_read() {
        let (client, mut handle) = mock_client();
        let api: Api<Lease> = Api::namespaced(client, "sluice-system");
        let server = tokio::spawn(async move {
            let (_, _, _, send) = next_request(&mut handle).await;
            respond(send, &held_by_pod_b("2020-01-01T00:00:00.000000Z"));
            let (method, path, body, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/sluice-system/leases/sluice-controller?")
            );
            assert_eq!(body["metadata"]["resourceVersion"], "5");
            assert_eq!(body["spec"]["holderIdentity"], "pod-a");
            assert_eq!(body["spec"]["leaseTransitions"], 3);
            respond(send, &body);
        });
        // This candidate has seen that same record, unchanged, for longer than the Lease's duration.
        let mut observer = LeaseObserver::default();
        let lease: Lease = serde_json::from_value(held_by_pod_b("2020-01-01T00:00:00.000000Z")).expect("lease");
        observer.observe(Some(&view_of(&lease)), -20_000);
        assert!(hold(&api, "sluice-controller", "pod-a", Duration::from_secs(15), &mut observer).await.expect("hold"));
        server.await.expect("scenario");
    }
}
