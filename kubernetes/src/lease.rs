//! One active controller at a time: a `coordination.k8s.io` Lease, decided here over what was read
//! ([`LeaseView`]) and the time, carried out by [`hold`] (get, then replace with the read resourceVersion, so
//! two candidates cannot both win).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ObjectMeta, PostParams};

/// The Lease as read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaseView {
    pub holder: Option<String>,
    /// When the holder last renewed it (ms since the epoch).
    pub renewed_at_ms: Option<i64>,
    pub duration_s: i32,
}

/// What a candidate does with the Lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaseStep {
    /// Take it (nobody holds it, or the holder let it expire): become the leader.
    Acquire,
    /// It is ours: renew it, stay the leader.
    Renew,
    /// Someone else holds it until `expires_at_ms`.
    Follow { holder: String, expires_at_ms: i64 },
}

pub fn lease_step(view: Option<&LeaseView>, me: &str, now_ms: i64) -> LeaseStep {
    let Some(view) = view else { return LeaseStep::Acquire };
    match &view.holder {
        Some(holder) if holder == me => LeaseStep::Renew,
        Some(holder) if !holder.is_empty() => {
            let expires_at_ms = view.renewed_at_ms.unwrap_or(0).saturating_add(i64::from(view.duration_s) * 1000);
            if now_ms < expires_at_ms {
                LeaseStep::Follow { holder: holder.clone(), expires_at_ms }
            } else {
                LeaseStep::Acquire
            }
        }
        _ => LeaseStep::Acquire,
    }
}

fn view_of(lease: &Lease) -> LeaseView {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseView {
        holder: spec.holder_identity,
        renewed_at_ms: spec.renew_time.map(|t| t.0.as_millisecond()),
        duration_s: spec.lease_duration_seconds.unwrap_or(15),
    }
}

/// One round: reads the Lease, and takes or renews it when [`lease_step`] says so. `Ok(true)`: this
/// candidate is the leader until `duration` from now.
pub async fn hold(api: &Api<Lease>, name: &str, me: &str, duration: Duration) -> Result<bool, kube::Error> {
    let now = Timestamp::now();
    let existing = api.get_opt(name).await?;
    let step = lease_step(existing.as_ref().map(view_of).as_ref(), me, now.as_millisecond());
    if let LeaseStep::Follow { .. } = step {
        return Ok(false);
    }
    let acquiring = step == LeaseStep::Acquire;
    let previous = existing.as_ref().and_then(|l| l.spec.clone()).unwrap_or_default();
    let spec = LeaseSpec {
        holder_identity: Some(me.to_string()),
        lease_duration_seconds: Some(duration.as_secs().try_into().unwrap_or(i32::MAX)),
        renew_time: Some(MicroTime(now)),
        acquire_time: if acquiring { Some(MicroTime(now)) } else { previous.acquire_time },
        lease_transitions: Some(previous.lease_transitions.unwrap_or(0) + i32::from(acquiring && existing.is_some())),
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
        Ok(_) => Ok(true),
        // Another candidate wrote first (409), or created it first (409 AlreadyExists): not this round.
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: &str, renewed_at_ms: i64) -> LeaseView {
        LeaseView { holder: Some(holder.into()), renewed_at_ms: Some(renewed_at_ms), duration_s: 15 }
    }

    #[test]
    fn a_lease_is_taken_when_free_or_expired_and_kept_by_its_holder() {
        let cases = [
            (None, 0, LeaseStep::Acquire),
            (Some(LeaseView::default()), 0, LeaseStep::Acquire),
            (Some(held_by("me", 0)), 100_000, LeaseStep::Renew),
            (
                Some(held_by("other", 10_000)),
                24_999,
                LeaseStep::Follow { holder: "other".into(), expires_at_ms: 25_000 },
            ),
            (Some(held_by("other", 10_000)), 25_000, LeaseStep::Acquire),
            (
                Some(LeaseView { holder: Some(String::new()), renewed_at_ms: Some(10_000), duration_s: 15 }),
                0,
                LeaseStep::Acquire,
            ),
        ];
        for (view, now_ms, want) in cases {
            assert_eq!(lease_step(view.as_ref(), "me", now_ms), want, "{view:?} at {now_ms}");
        }
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
        assert!(hold(&api, "sluice-controller", "pod-a", Duration::from_secs(15)).await.expect("hold"));
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
        assert!(!hold(&api, "sluice-controller", "pod-a", Duration::from_secs(15)).await.expect("hold"));
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
        assert!(hold(&api, "sluice-controller", "pod-a", Duration::from_secs(15)).await.expect("hold"));
        server.await.expect("scenario");
    }
}
