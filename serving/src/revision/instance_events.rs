//! What a revision's task does with its instances' events. In: ready (first, or again after a failed probe),
//! no longer ready, exited. Out: the gate's rotation and waiters handed a slot, the capacity published to the
//! dispatcher, the run's facts, and the crash-loop bookkeeping of an instance that exited unexpectedly.

use axum::http::uri::Authority;

use super::{Instances, RevisionEnv, RevisionHandle, fail, publish_capacity};
use crate::gate::InstanceId;
use crate::runtime::InstanceEvent;

pub(super) fn on_instance_event(
    event: InstanceEvent,
    revision: &RevisionHandle,
    env: &RevisionEnv,
    instances: &mut Instances,
) {
    let key = revision.key();
    match event {
        InstanceEvent::Ready { id, .. } if instances.ready_once.contains(&id) => {
            tracing::info!(revision = %key, instance = id, "instance ready again: back in rotation");
            set_in_rotation(revision, env, id, true);
        }
        InstanceEvent::Ready { id, addr } => {
            tracing::info!(revision = %key, instance = id, %addr, "instance ready");
            instances.ready_once.insert(id);
            instances.failed_starts.ready(crate::clock::monotonic_ms());
            instances.given_up = false;
            if let Ok(mut state) = revision.state.lock() {
                state.failed = None;
                // A socket address is always a valid authority; were it not, the instance would get no
                // requests rather than requests without an address.
                match Authority::try_from(addr.to_string()) {
                    Ok(authority) => {
                        state.addrs.insert(id, authority);
                        let woken = state.gate.set_ready(id, true);
                        state.hand_out(woken);
                    }
                    Err(e) => {
                        tracing::error!(revision = %key, instance = id, %addr, error = %e, "no URI authority for the instance")
                    }
                }
                state.measure();
            }
            publish_capacity(revision, env);
            instances.facts.ready = true;
            // The edge that clears a failure (another node's too), until the facts carrying it are posted.
            instances.facts.saw_ready = true;
            instances.facts.failure = None;
        }
        InstanceEvent::NotReady { id } => {
            tracing::warn!(revision = %key, instance = id, "instance no longer ready: out of rotation");
            metrics::counter!("sluice_serving_instance_unready_total", "revision" => key).increment(1);
            set_in_rotation(revision, env, id, false);
        }
        InstanceEvent::Exited { id, code, signal, reason, last_output } => {
            instances.running.remove(&id);
            instances.ready_once.remove(&id);
            let expected = instances.stopping.remove(&id);
            if let Ok(mut state) = revision.state.lock() {
                state.gate.remove(id);
                state.addrs.remove(&id);
                state.measure();
            }
            publish_capacity(revision, env);
            if !expected {
                let reason = match (reason, code, signal) {
                    (Some(reason), _, _) => reason,
                    (None, Some(code), _) => format!("ExitCode{code}"),
                    (None, None, Some(signal)) => format!("Signal{signal}"),
                    (None, None, None) => "ContainerExited".to_string(),
                };
                let message = format!("container exited ({reason}): {}", last_output.trim());
                tracing::warn!(revision = %key, instance = id, %reason, output = %last_output, "instance exited unexpectedly");
                metrics::counter!("sluice_serving_instance_failures_total", "revision" => key).increment(1);
                fail(revision, instances, reason, message);
            }
        }
    }
}

/// An instance that was ready once goes in or out of rotation: waiters may get its slots, and the dispatcher
/// learns the capacity.
fn set_in_rotation(revision: &RevisionHandle, env: &RevisionEnv, id: InstanceId, ready: bool) {
    if let Ok(mut state) = revision.state.lock() {
        let woken = state.gate.set_ready(id, ready);
        state.hand_out(woken);
        state.measure();
    }
    publish_capacity(revision, env);
}
