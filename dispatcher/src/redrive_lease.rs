//! A cluster-wide claim on one consumer's dead letters while a redrive (or a purge) of them runs, so that two
//! redrives of the same consumer started through two nodes cannot both deliver the same letters. The claim is a
//! `RedriveLease` object in the metadata group (`sluice-system/<kind>.<namespace>.<name>`), taken, renewed and
//! given back with a conditional write on its `spec.token` (`ApplyResourceIfToken`): of two nodes taking it at
//! once, one wins. It lasts [`LEASE_DURATION_MS`] past its last renewal (every [`RENEW_EVERY_MS`]), so the claim
//! of a node that died runs out by itself.
//!
//! In: the lease as this node reads it, and the wall clock ([`decide`], pure). Out: take it (over which token),
//! or who holds it and until when. The holder stops its redrive when it can no longer renew before its own
//! claim runs out, or finds it taken: the lease then belongs to another node. Wall clocks are assumed to
//! agree within a few seconds, as Kubernetes' Leases assume; a node whose clock runs far ahead could take over
//! a live claim early.
//!
//! Within one node the claim is [`RedriveGuard`], taken first: a second redrive or purge through the same node
//! is refused before it writes anything.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use sluice_broker::{BrokerError, Node, ResourceKey};
use tokio::sync::watch;

use crate::delivery::task::now_ms;

pub(crate) const LEASE_KIND: &str = "RedriveLease";
const LEASE_NAMESPACE: &str = "sluice-system";
/// How long a claim lasts past its last renewal.
pub(crate) const LEASE_DURATION_MS: u64 = 30_000;
/// How often the holder renews it.
const RENEW_EVERY_MS: u64 = 10_000;
/// The holder gives up this long before its claim runs out when it could not renew: by then another node may
/// take it over.
const GIVE_UP_BEFORE_MS: u64 = 5_000;

/// A lease as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaseView {
    pub(crate) holder: u64,
    pub(crate) token: String,
    /// 0 once given back.
    pub(crate) expires_at_ms: u64,
    pub(crate) operation: String,
}

impl LeaseView {
    fn parse(object: &Value) -> Option<LeaseView> {
        let spec = object.get("spec")?;
        Some(LeaseView {
            holder: spec.get("holder")?.as_u64()?,
            token: spec.get("token")?.as_str()?.to_string(),
            expires_at_ms: spec.get("expiresAtMs")?.as_u64()?,
            operation: spec.get("operation").and_then(Value::as_str).unwrap_or_default().to_string(),
        })
    }
}

/// What to do about a lease.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum LeaseStep {
    /// Take it: over the stored token (`None`: there is none).
    Take { over: Option<String> },
    /// Another node holds it.
    HeldBy { holder: u64, operation: String, until_ms: u64 },
}

/// Whether node `me` may take the lease `stored` at `now_ms`: when there is none, it was given back or ran out,
/// or `me` holds it already (a claim this node did not give back: its own redrives are one at a time, by the
/// node's guard, so no other runs here).
pub(crate) fn decide(stored: Option<&LeaseView>, me: u64, now_ms: u64) -> LeaseStep {
    match stored {
        None => LeaseStep::Take { over: None },
        Some(lease) if lease.holder == me || lease.expires_at_ms <= now_ms => {
            LeaseStep::Take { over: Some(lease.token.clone()) }
        }
        Some(lease) => LeaseStep::HeldBy {
            holder: lease.holder,
            operation: lease.operation.clone(),
            until_ms: lease.expires_at_ms,
        },
    }
}

/// Why a lease was not taken.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseRefused {
    #[error("a {operation} of it is running on node {holder} (its claim runs out by itself within {} s if that node has died)", LEASE_DURATION_MS / 1000)]
    HeldBy { holder: u64, operation: String },
    #[error("another node took the claim on its dead letters at the same moment")]
    Lost,
    #[error("the claim on its dead letters could not be written: {0}")]
    NotWritten(#[from] BrokerError),
}

/// A lease this node holds: renewed until [`HeldLease::release`] (or dropped, when it runs out by itself).
pub(crate) struct HeldLease {
    node: Node,
    key: ResourceKey,
    operation: &'static str,
    /// The token stored now: every renewal writes a new one, so that a node deciding from an older copy of the
    /// lease (one that shows it run out) cannot write over a renewed claim.
    token: Arc<Mutex<String>>,
    /// Turns true when the claim is lost (taken over, or not renewed in time).
    lost: watch::Receiver<bool>,
    renewing: tokio::task::JoinHandle<()>,
}

fn lease_key(consumer: &str) -> ResourceKey {
    ResourceKey { kind: LEASE_KIND.into(), namespace: LEASE_NAMESPACE.into(), name: consumer.into() }
}

fn lease_object(key: &ResourceKey, holder: u64, token: &str, expires_at_ms: u64, operation: &str) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": LEASE_KIND,
        "metadata": {"namespace": key.namespace, "name": key.name},
        "spec": {"holder": holder, "token": token, "expiresAtMs": expires_at_ms, "operation": operation},
    })
}

fn new_token() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// Takes the lease on `consumer`'s dead letters (`<kind>.<namespace>.<name>`, lowercase) for `operation`.
/// `Ok(None)`: some member of the cluster does not read conditional writes yet (a rolling upgrade); the
/// caller goes on with its node's own guard only, as before.
pub(crate) async fn take(
    node: &Node,
    consumer: &str,
    operation: &'static str,
) -> Result<Option<HeldLease>, LeaseRefused> {
    let key = lease_key(consumer);
    // Up to the metadata group's read index: a restarted or lagging node would otherwise decide from an old copy
    // and miss a claim committed before it asked (the conditional write would still refuse its stale decision).
    node.catch_up_metadata().await?;
    let stored = node.resource(&key).and_then(|json| serde_json::from_str::<Value>(&json).ok());
    let stored = stored.as_ref().and_then(LeaseView::parse);
    let over = match decide(stored.as_ref(), node.id(), now_ms()) {
        LeaseStep::Take { over } => over,
        LeaseStep::HeldBy { holder, operation, .. } => return Err(LeaseRefused::HeldBy { holder, operation }),
    };
    let token = new_token();
    // Computed before the write: the claim lasts from here as stored, however long the write takes.
    let expires_at_ms = now_ms() + LEASE_DURATION_MS;
    let object = lease_object(&key, node.id(), &token, expires_at_ms, operation);
    match node.put_internal_object_if_token(&object, over.as_deref()).await? {
        None => return Ok(None),
        Some(false) => return Err(LeaseRefused::Lost),
        Some(true) => {}
    }
    metrics::counter!("sluice_redrive_leases_taken_total").increment(1);
    let (lost_tx, lost) = watch::channel(false);
    let token = Arc::new(Mutex::new(token));
    let renewing = tokio::spawn(renew(node.clone(), key.clone(), token.clone(), operation, expires_at_ms, lost_tx));
    Ok(Some(HeldLease { node: node.clone(), key, operation, token, lost, renewing }))
}

/// Renews the claim every [`RENEW_EVERY_MS`] with a new token, until it is lost: taken over (the conditional write
/// fails), or not renewed by [`GIVE_UP_BEFORE_MS`] before it runs out as stored (each write is bounded by that).
async fn renew(
    node: Node,
    key: ResourceKey,
    token: Arc<Mutex<String>>,
    operation: &str,
    mut expires_at_ms: u64,
    lost: watch::Sender<bool>,
) {
    let give_up_in = |expires_at_ms: u64| {
        Duration::from_millis(expires_at_ms.saturating_sub(GIVE_UP_BEFORE_MS).saturating_sub(now_ms()))
    };
    let mut next_attempt = tokio::time::Instant::now() + Duration::from_millis(RENEW_EVERY_MS);
    loop {
        let give_up_at = tokio::time::Instant::now() + give_up_in(expires_at_ms);
        tokio::time::sleep_until(next_attempt.min(give_up_at)).await;
        if tokio::time::Instant::now() >= give_up_at {
            tracing::warn!(lease = %key.name, "the redrive's claim could not be renewed in time");
            let _ = lost.send(true);
            return;
        }
        let current = token.lock().map(|t| t.clone()).unwrap_or_default();
        let (renewed, next_expiry) = (new_token(), now_ms() + LEASE_DURATION_MS);
        let object = lease_object(&key, node.id(), &renewed, next_expiry, operation);
        let write = node.put_internal_object_if_token(&object, Some(&current));
        match tokio::time::timeout_at(give_up_at, write).await {
            Ok(Ok(Some(true))) => {
                if let Ok(mut token) = token.lock() {
                    *token = renewed;
                }
                expires_at_ms = next_expiry;
                next_attempt = tokio::time::Instant::now() + Duration::from_millis(RENEW_EVERY_MS);
            }
            Ok(Ok(Some(false))) => {
                // Taken over, or an earlier renewal whose answer was lost did land: either way this node no
                // longer knows the token, and stops.
                tracing::warn!(lease = %key.name, "the redrive's claim was taken over");
                let _ = lost.send(true);
                return;
            }
            // Not written (no leader, a rolling upgrade started meanwhile): tried again soon, until it is too late.
            Ok(Ok(None) | Err(_)) => next_attempt = tokio::time::Instant::now() + Duration::from_secs(1),
            Err(_elapsed) => {
                tracing::warn!(lease = %key.name, "the redrive's claim could not be renewed in time");
                let _ = lost.send(true);
                return;
            }
        }
    }
}

impl HeldLease {
    /// Resolves once the claim is lost (never, while it holds).
    pub(crate) async fn lost(&mut self) {
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            // The renewal ended without losing the claim: it is being given back.
            std::future::pending::<()>().await;
        }
    }

    /// Gives the claim back (it runs out by itself if this fails).
    pub(crate) async fn release(self) {
        self.renewing.abort();
        let current = self.token.lock().map(|t| t.clone()).unwrap_or_default();
        let object = lease_object(&self.key, self.node.id(), &current, 0, self.operation);
        if let Err(e) = self.node.put_internal_object_if_token(&object, Some(&current)).await {
            tracing::debug!(lease = %self.key.name, error = %e, "the claim was not given back; it runs out by itself");
        }
    }
}

impl Drop for HeldLease {
    fn drop(&mut self) {
        self.renewing.abort();
    }
}

/// The dead-letter streams being redriven by this node: a second redrive of the same consumer would deliver
/// the same letters again (and copy the kept ones twice).
pub(crate) type Redrives = Arc<std::sync::Mutex<std::collections::HashMap<String, &'static str>>>;

/// A redrive's (or a purge's) claim on its dead-letter stream, given back when it ends.
pub(crate) struct RedriveGuard {
    redrives: Redrives,
    stream: String,
}

impl RedriveGuard {
    /// The claim for `operation`, or the operation that holds it.
    pub(crate) fn take(
        redrives: &Redrives,
        stream: &str,
        operation: &'static str,
    ) -> Result<RedriveGuard, &'static str> {
        let mut running = redrives.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(holder) = running.get(stream) {
            return Err(*holder);
        }
        running.insert(stream.to_string(), operation);
        Ok(RedriveGuard { redrives: redrives.clone(), stream: stream.into() })
    }
}

impl Drop for RedriveGuard {
    fn drop(&mut self) {
        self.redrives.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.stream);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: u64, expires_at_ms: u64) -> LeaseView {
        LeaseView { holder, token: format!("t{holder}"), expires_at_ms, operation: "redrive".into() }
    }

    #[test]
    fn a_lease_is_taken_when_absent_run_out_given_back_or_already_ours() {
        let cases = [
            ("none stored", None, LeaseStep::Take { over: None }),
            (
                "held by node 2 until 2000",
                Some(lease(2, 2_000)),
                LeaseStep::HeldBy { holder: 2, operation: "redrive".into(), until_ms: 2_000 },
            ),
            ("run out at 1000", Some(lease(2, 1_000)), LeaseStep::Take { over: Some("t2".into()) }),
            ("given back (0)", Some(lease(2, 0)), LeaseStep::Take { over: Some("t2".into()) }),
            ("this node's own, still running", Some(lease(1, 9_000)), LeaseStep::Take { over: Some("t1".into()) }),
        ];
        for (case, stored, expected) in cases {
            assert_eq!(decide(stored.as_ref(), 1, 1_000), expected, "{case}");
        }
    }

    #[test]
    fn a_stored_lease_reads_back_as_written() {
        let key = lease_key("trigger.default.orders");
        let object = lease_object(&key, 3, "abc", 42, "purge");
        let expected = LeaseView { holder: 3, token: "abc".into(), expires_at_ms: 42, operation: "purge".into() };
        assert_eq!(LeaseView::parse(&object), Some(expected));
        assert_eq!(LeaseView::parse(&json!({"spec": {"holder": 3}})), None, "not a lease");
    }
}
