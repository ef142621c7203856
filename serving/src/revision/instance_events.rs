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
                state.crash_looping = false;
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
                let message = exit_message(&reason, &last_output);
                tracing::warn!(revision = %key, instance = id, %reason, output = %last_output, "instance exited unexpectedly");
                metrics::counter!("sluice_serving_instance_failures_total", "revision" => key).increment(1);
                let told_clients = told_clients(&reason);
                fail(revision, instances, reason, message, told_clients);
                // Failing, the revision lifts the dispatcher's limit (`dispatcher_capacity`).
                publish_capacity(revision, env);
            }
        }
    }
}

/// What a request turned away by a revision whose instances keep exiting is told: the reason, not the app's
/// output (which the Revision's status and `sluice logs` show its owners).
pub(super) fn told_clients(reason: &str) -> String {
    format!("its instances keep failing ({reason}); the Revision's status says more")
}

/// The most bytes of a failure message, as Kubernetes caps a container's termination message (4 KiB). The message
/// is replicated through Raft into the revision's state and shown in its Revision's, Configuration's and
/// Service's status: an instance's last lines (10 of up to 16 KiB each) went there whole.
const MAX_FAILURE_MESSAGE_BYTES: usize = 4 * 1024;
/// What stands where the start of an instance's output was cut from its failure message.
const OUTPUT_CUT_MARK: &str = "[earlier output cut]…";

/// The failure message of an instance that exited unexpectedly: its reason and the end of its output, at most
/// [`MAX_FAILURE_MESSAGE_BYTES`] in all. Pure.
pub(super) fn exit_message(reason: &str, last_output: &str) -> String {
    // An instance the runtime stopped for not being ready in time did not exit by itself. Regression: it was
    // said to have exited, with an empty output after the colon.
    let what = match reason {
        "ProgressDeadlineExceeded" => "container was not ready within its progress deadline and was stopped",
        _ => "container exited",
    };
    let output = last_output.trim();
    let head = if output.is_empty() { format!("{what} ({reason})") } else { format!("{what} ({reason}): ") };
    let room = MAX_FAILURE_MESSAGE_BYTES.saturating_sub(head.len());
    let mut message = head;
    message.push_str(&end_within(output, room));
    // A runtime's reason is a word; were it a long one, the message is bounded all the same.
    if message.len() > MAX_FAILURE_MESSAGE_BYTES {
        let mut end = MAX_FAILURE_MESSAGE_BYTES;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
    }
    message
}

/// The end of `text` in at most `max` bytes: the text itself when it fits, else [`OUTPUT_CUT_MARK`] and the last
/// bytes that fit, cut on a char boundary (a crash's cause is usually in the last lines an app wrote). Too little
/// room for the mark and a byte: nothing. Pure.
fn end_within(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let Some(room) = max.checked_sub(OUTPUT_CUT_MARK.len()).filter(|room| *room > 0) else {
        return String::new();
    };
    // The first char boundary from which the rest fits (the end of the text is one).
    let mut start = text.len() - room;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    format!("{OUTPUT_CUT_MARK}{}", &text[start..])
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The end of an instance's output is kept within the room, the cut marked, never splitting a char.
    #[test]
    fn a_long_output_keeps_its_end_within_the_room() {
        let marked = |kept: &str| format!("{OUTPUT_CUT_MARK}{kept}");
        let room = OUTPUT_CUT_MARK.len() + 10;
        let long = "x".repeat(64);
        let cut_line = format!("{}\nend", "x".repeat(40));
        let wide = format!("{}a", "é".repeat(20));
        // (text, room, what is kept, why)
        let cases = [
            ("short", room, "short".to_string(), "fits: as it is"),
            ("exactly10!", 10, "exactly10!".to_string(), "fits exactly"),
            ("first line of the output\nsecond\nlast line", room, marked("\nlast line"), "the last lines"),
            (cut_line.as_str(), room, marked("xxxxxx\nend"), "a line cut keeps its end"),
            (wide.as_str(), room, marked("ééééa"), "on a char boundary (é is 2 bytes)"),
            (long.as_str(), OUTPUT_CUT_MARK.len(), String::new(), "no room but for the mark"),
            (long.as_str(), 3, String::new(), "no room at all"),
        ];
        for (text, room, kept, why) in cases {
            let got = end_within(text, room);
            assert_eq!(got, kept, "{why}");
            assert!(got.len() <= room, "{why}: {} bytes in {room}", got.len());
        }
    }

    /// Regression: an instance's last 10 lines of up to 16 KiB each went whole into its failure message, which is
    /// replicated through Raft and shown in the status of its Revision, Configuration and Service.
    #[test]
    fn a_failure_message_is_bounded_as_a_termination_message_and_ends_with_the_output() {
        let line = "y".repeat(16 * 1024);
        let output = format!("{}\npanic: the cause", [line.as_str(); 10].join("\n"));
        let cut = format!("container exited (ExitCode2): {OUTPUT_CUT_MARK}yyy");
        // (reason, output, the message starts with, ends with)
        let cases = [
            ("ExitCode1", "boom\n", "container exited (ExitCode1): boom", "boom"),
            ("ExitCode2", output.as_str(), cut.as_str(), "y\npanic: the cause"),
            ("Signal9", "", "container exited (Signal9)", "(Signal9)"),
            (
                "ProgressDeadlineExceeded",
                " \n",
                "container was not ready within its progress deadline and was stopped (ProgressDeadlineExceeded)",
                "(ProgressDeadlineExceeded)",
            ),
        ];
        for (reason, output, starts, ends) in cases {
            let message = exit_message(reason, output);
            assert!(message.len() <= MAX_FAILURE_MESSAGE_BYTES, "{reason}: {} bytes", message.len());
            assert!(message.starts_with(starts), "{reason}: {message:.80}");
            assert!(message.ends_with(ends), "{reason}");
        }
        let long_reason = "R".repeat(MAX_FAILURE_MESSAGE_BYTES * 2);
        assert_eq!(exit_message(&long_reason, "out").len(), MAX_FAILURE_MESSAGE_BYTES, "a long reason too");
    }
}
