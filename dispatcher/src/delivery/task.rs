//! Delivering one event to one consumer, from the first attempt to its settlement: delivered (and its reply
//! committed), dead-lettered (to the sink, or kept in the consumer's dead-letter stream), or dropped.
//!
//! The decisions are [`super::policy`]'s; this is the shell that sends, sleeps until the retry instant it was
//! given, and appends replies and dead letters through the log. Its partition dispatcher polls it (one future per
//! delivery, not a task) and drops it at an await point when it stops or aborts it; the event is then
//! redelivered from the committed offset.

mod append_retry;
mod reply;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use sluice_broker::Node;
use sluice_broker::{IngressSettings, PublishError, publish};
use sluice_cloudevent::{AttrValue, CloudEvent};

use crate::capacity::{DeliverySlot, DestinationLimits};
use crate::consumer::{CONSUMER_UID_ATTRIBUTE, ConsumerSpec, DeadLetterMode, Format, Protocol, ReplyTarget};
use crate::delivery::policy::{FailureReason, Outcome, RetryAfter, Step, classify, next_step_jittered};
use crate::delivery::sender::{AttemptResult, BROKER_TTL, MAX_ERROR_DATA_BYTES, ReplyUse, Sender, redacted_url};
use append_retry::{REPLY_APPEND_RETRY_FOR, append_retry_wait_ms, reply_append_wait};
use reply::{ReplyDone, ReplyError, handle_reply};
/// Largest reply event accepted from a subscriber (encoded).
pub(crate) const MAX_REPLY_EVENT_BYTES: usize = 1 << 20;

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Settlement {
    Delivered {
        attempts: u32,
    },
    /// Sent to the dead-letter sink.
    DeadLetterSink {
        attempts: u32,
    },
    /// Kept in the consumer's dead-letter stream.
    DeadLetterStream {
        attempts: u32,
    },
    Dropped {
        attempts: u32,
    },
}

/// Each event's offset and settlement, for one delivery (one event inline, a batch on the heap).
pub(crate) type Settled = smallvec::SmallVec<[(u64, Settlement); 1]>;

/// Dead letters of a failed batch written at once (each may retry against a sink, or append through Raft).
const BATCH_DEAD_LETTERS_AT_ONCE: usize = 16;

/// The protocol a request to `url` goes out with: the subscriber's (`sluice.dev/subscriber-protocol`) to the
/// subscriber's URL, HTTP/1.1 to any other (the dead-letter sink, a Subscription's reply address). The protocol
/// is a property of the destination, looked up by URL as its CA certificates and audience are; before, h2c went
/// to every URL a delivery sent to, and a sink or reply address speaking only HTTP/1.1 failed every time.
fn protocol_towards(url: &str, subscriber_uri: &str, subscriber_protocol: Protocol) -> Protocol {
    if url == subscriber_uri { subscriber_protocol } else { Protocol::Http1 }
}

pub(crate) use sluice_cloudevent::clock::now_ms;

async fn sleep_until_ms(at_ms: u64) {
    let wait = at_ms.saturating_sub(now_ms());
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait)).await;
    }
}

/// How [`send_with_retries`] ended.
enum Sent {
    Done {
        attempts: u32,
    },
    /// The policy gave up (dead letter or drop): the last attempt, why, and the judge's note if it overrode the
    /// outcome.
    GaveUp {
        attempts: u32,
        result: AttemptResult,
        reason: FailureReason,
        note: Option<String>,
    },
}

type JudgeFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = (Outcome, Option<String>)> + Send + 'a>>;

/// What a send loop's caller adds to each attempt: its outcome from the result (with a note that explains an
/// override), and what to do before each retry.
trait Judge: Send {
    fn judge<'a>(&'a mut self, result: &'a AttemptResult, elapsed: Duration) -> JudgeFuture<'a>;

    fn on_retry(&mut self, _attempt: u32, _result: &AttemptResult, _at_ms: u64) {}

    /// The `Retry-After` the next retry honours: the response's, unless the judge knows a leg that failed after
    /// it.
    fn retry_after(&self, result: &AttemptResult) -> Option<RetryAfter> {
        result.retry_after
    }
}

/// The status alone decides (replies forwarded to a URI, dead-letter sinks).
struct ByStatus;

impl Judge for ByStatus {
    fn judge<'a>(&'a mut self, result: &'a AttemptResult, _elapsed: Duration) -> JudgeFuture<'a> {
        Box::pin(std::future::ready((classify(result.status), None)))
    }
}

/// The token a request to `url` carries: for a destination with an OIDC audience, minted by this node for the
/// consumer's subject (cached; a retry after the token's half-life gets a new one).
fn sender_token(ctx: &DeliveryContext, spec: &ConsumerSpec, url: &str) -> Option<String> {
    let audience = spec.audiences.get(url)?;
    let token = ctx.node.sender_tokens().token(&spec.sender_subject, audience, now_ms());
    if token.is_none() {
        metrics::counter!("sluice_dispatch_unsigned_total").increment(1);
        tracing::warn!(consumer = %spec.name, url = %redacted_url(url), "no signing key yet: sent without a token");
    }
    token
}

/// What one delivery sends.
#[derive(Clone, Copy)]
enum Payload<'a> {
    Event {
        format: Format,
        event: &'a CloudEvent,
        /// The attribute not sent: the Broker's TTL to a subscriber (`sender::BROKER_TTL`), none to a sink.
        withheld: Option<&'static str>,
    },
    /// In batched mode, in this order, with the most bytes their JSON array takes (`sender::batch_member_bound`).
    Batch(&'a [(u64, Arc<CloudEvent>)], usize),
}

/// The one send loop: POSTs `payload` to `url` until the consumer's policy (`policy::next_step_jittered`) says it
/// is done or gives up, sleeping until each retry instant, with `slot` (its place in `url`'s in-flight limit)
/// given back meanwhile.
async fn send_with_retries(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    url: &str,
    payload: Payload<'_>,
    reply_use: ReplyUse,
    judge: &mut dyn Judge,
    slot: &mut Option<DeliverySlot>,
) -> Sent {
    let mut attempt = 1u32;
    loop {
        let started = std::time::Instant::now();
        let ca_certs = spec.ca_certs.get(url);
        let token = sender_token(ctx, spec, url);
        let (token, timeout_ms) = (token.as_deref(), spec.policy.timeout_ms);
        let protocol = protocol_towards(url, &spec.subscriber_uri, spec.protocol);
        let result = match payload {
            Payload::Event { format, event, withheld } => {
                let now_ms = now_ms();
                ctx.sender
                    .send(url, ca_certs, protocol, format, event, token, timeout_ms, now_ms, reply_use, withheld)
                    .await
            }
            Payload::Batch(events, bound) => {
                ctx.sender.send_batch(url, ca_certs, protocol, events, bound, token, timeout_ms, now_ms()).await
            }
        };
        let (outcome, note) = judge.judge(&result, started.elapsed()).await;
        // Before session 62 such an attempt was retried as a network error, `retry` times, then dead-lettered
        // as one: objects stored before their URL and CA certificates were validated at apply can still hold one.
        if result.unsendable {
            let note = format!("not sent, not retried: {}", result.error.as_deref().unwrap_or("invalid destination"));
            return Sent::GaveUp { attempts: attempt, result, reason: FailureReason::Unsendable, note: Some(note) };
        }
        let retry_after = judge.retry_after(&result);
        match next_step_jittered(&spec.policy, attempt, outcome, retry_after, now_ms(), rand::random::<f64>()) {
            Step::Done => return Sent::Done { attempts: attempt },
            Step::RetryAt(at_ms) => {
                judge.on_retry(attempt, &result, at_ms);
                // Not held through the backoff: a reply (up to 4 MiB) per delivery waiting, times the window.
                drop(result);
                DeliverySlot::give_back_until(slot, sleep_until_ms(at_ms)).await;
                attempt += 1;
            }
            Step::DeadLetter { reason } | Step::Drop { reason } => {
                return Sent::GaveUp { attempts: attempt, result, reason, note };
            }
        }
    }
}

/// The main delivery: metrics per attempt, and a 200's reply committed (or forwarded) before the event counts
/// as delivered.
struct SubscriberJudge<'c> {
    ctx: &'c DeliveryContext,
    spec: &'c ConsumerSpec,
    event: &'c CloudEvent,
    offset: u64,
    /// The last attempt's reply leg, when that is what failed, for the dead letter if the retries run out.
    reply_failed: Option<ReplyLegFailure>,
    /// A reply that cannot go on (its TTL ran out, the reply destination refused it for good), to be
    /// dead-lettered itself once the attempt is done with and its response dropped (the event counts as
    /// delivered). Not done while judging: the response (up to 4 MiB) would be held through the dead letter's
    /// own retries.
    reply_dead_letter: Option<(CloudEvent, Failure)>,
}

/// What failed in an attempt's reply leg, after the subscriber's 200.
enum ReplyLegFailure {
    /// A Subscription's `spec.reply` refused the reply for now: where it went and what came back.
    NotDelivered { uri: String, result: AttemptResult },
    /// A Trigger's reply could not be stored in its Broker's stream: which stream, and why.
    NotStored { stream: String, reason: String },
}

impl Judge for SubscriberJudge<'_> {
    fn judge<'a>(&'a mut self, result: &'a AttemptResult, elapsed: Duration) -> JudgeFuture<'a> {
        Box::pin(async move {
            let event_type = self.event.get_str("type").unwrap_or_default();
            let (scope, code, ms) =
                ([self.spec.cursor.as_str()], result.status.unwrap_or(0), elapsed.as_secs_f64() * 1000.0);
            DISPATCH_EVENT_METRICS
                .record(&scope, event_type, code, 1, ms, || labels(self.spec, event_type, result.status));
            self.reply_failed = None;
            self.reply_dead_letter = None;
            // Without a reply destination (a Subscription without `spec.reply`) the reply is dropped unread, as
            // Knative says: a 200 is a delivery, whatever its body, and never a dead letter or a retry.
            if matches!(self.spec.reply, ReplyTarget::Discard) {
                return (classify(result.status), None);
            }
            if let Some(reason) = &result.reply_cut {
                return (Outcome::Retryable { status: None }, Some(format!("the reply was cut off: {reason}")));
            }
            let outcome = classify(result.status);
            match (&outcome, &result.reply) {
                (Outcome::Success, Some(reply)) => match handle_reply(self.ctx, self.spec, self.event, reply).await {
                    Ok(ReplyDone::Passed) => (outcome, None),
                    Ok(ReplyDone::DeadLetter { reply, failure }) => {
                        self.reply_dead_letter = Some((reply, failure));
                        (outcome, None)
                    }
                    Err(ReplyError::Invalid(reason)) => {
                        (Outcome::Permanent { status: result.status.unwrap_or(200) }, Some(reason))
                    }
                    Err(ReplyError::NotStored { stream, reason, may_pass }) => {
                        // Retried by the policy when it may pass; either way the dead letter names the Broker's
                        // stream, not the subscriber, whose 200 was no failure.
                        let failed = if may_pass {
                            Outcome::Retryable { status: None }
                        } else {
                            Outcome::Permanent { status: result.status.unwrap_or(200) }
                        };
                        self.reply_failed = Some(ReplyLegFailure::NotStored { stream, reason: reason.clone() });
                        (failed, Some(reason))
                    }
                    Err(ReplyError::NotDelivered { uri, result }) => {
                        let reason = format!(
                            "the reply was not delivered to {uri}: {}",
                            result.status.map_or_else(
                                || result.error.clone().unwrap_or_default(),
                                |code| format!("status {code}")
                            )
                        );
                        let status = result.status;
                        self.reply_failed = Some(ReplyLegFailure::NotDelivered { uri, result });
                        (Outcome::Retryable { status }, Some(reason))
                    }
                },
                _ => (outcome, None),
            }
        })
    }

    /// When the reply leg failed (a Subscription's `spec.reply` answered 429 or 503), its `Retry-After`: the
    /// subscriber's 200 has none, and the reply destination's was ignored. A reply Sluice could not store has
    /// none.
    fn retry_after(&self, result: &AttemptResult) -> Option<RetryAfter> {
        match &self.reply_failed {
            Some(ReplyLegFailure::NotDelivered { result: reply, .. }) => reply.retry_after,
            Some(ReplyLegFailure::NotStored { .. }) => None,
            None => result.retry_after,
        }
    }

    fn on_retry(&mut self, attempt: u32, result: &AttemptResult, at_ms: u64) {
        let spec = self.spec;
        metrics::counter!("sluice_dispatch_retries_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone()).increment(1);
        tracing::debug!(consumer = %spec.name, offset = self.offset, attempt, status = ?result.status, wait_ms = at_ms.saturating_sub(now_ms()), "retrying");
    }
}

/// Everything a delivery needs.
#[derive(Clone)]
pub(crate) struct DeliveryContext {
    pub node: Node,
    pub sender: Sender,
    pub partition: u32,
    /// In-flight limits towards subscribers that have them (Knative Services this node runs).
    pub limits: Option<Arc<DestinationLimits>>,
}

/// Why a delivery failed, for the dead letter's error attributes.
#[derive(Debug, Clone)]
struct Failure {
    destination: String,
    status: Option<u16>,
    /// At most [`MAX_ERROR_DATA_BYTES`] of the response body, or a description when there was none.
    data: Bytes,
    reason: String,
}

/// The failure `result` (from `destination`) stands for. Of its body only what `knativeerrordata` keeps is taken,
/// and copied: a slice would share the body's allocation (up to 4 MiB), held as long as the dead letter waits on
/// its sink's retries.
fn failure_from(destination: &str, result: &AttemptResult, reason: String) -> Failure {
    let data = if result.body.is_empty() {
        Bytes::from(result.error.clone().unwrap_or_else(|| reason.clone()))
    } else {
        Bytes::copy_from_slice(&result.body[..result.body.len().min(MAX_ERROR_DATA_BYTES)])
    };
    Failure { destination: destination.to_string(), status: result.status, data, reason }
}

/// What the dead letter of a delivery that gave up names as failed: the reply leg when that is what failed last
/// (the reply destination and its answer; or the Broker's stream that could not store the reply, with no status,
/// as the subscriber's 200 was no failure), else the subscriber and its last answer.
fn final_failure(
    subscriber_uri: &str,
    last: &AttemptResult,
    reply_failed: Option<ReplyLegFailure>,
    reason: String,
) -> Failure {
    match reply_failed {
        Some(ReplyLegFailure::NotDelivered { uri, result }) => failure_from(&uri, &result, reason),
        Some(ReplyLegFailure::NotStored { stream, reason: why }) => {
            Failure { destination: stream, status: None, data: Bytes::from(why), reason }
        }
        None => failure_from(subscriber_uri, last, reason),
    }
}

/// Knative's `event_count` and `event_dispatch_latencies` of deliveries, by consumer, event type and response
/// code.
static DISPATCH_EVENT_METRICS: std::sync::LazyLock<sluice_broker::EventMetrics> =
    std::sync::LazyLock::new(Default::default);

fn labels(spec: &ConsumerSpec, event_type: &str, status: Option<u16>) -> Vec<(&'static str, String)> {
    // A subscriber may answer any code of 100 to 999: past the registered classes (1xx to 5xx) they are one
    // label value, so that what subscribers answer cannot grow the series without bound.
    let (code, class) = match status {
        None => ("0".to_string(), "none".to_string()),
        Some(status @ 100..=599) => (status.to_string(), format!("{}xx", status / 100)),
        Some(_) => ("other".to_string(), "other".to_string()),
    };
    let source_label = match spec.kind {
        crate::consumer::ConsumerKind::Trigger => "broker_name",
        crate::consumer::ConsumerKind::Subscription => "channel_name",
    };
    let consumer_label = match spec.kind {
        crate::consumer::ConsumerKind::Trigger => "trigger_name",
        crate::consumer::ConsumerKind::Subscription => "subscription_name",
    };
    vec![
        (source_label, spec.source_name.clone()),
        (consumer_label, spec.name.clone()),
        ("namespace_name", spec.namespace.clone()),
        ("event_type", sluice_cloudevent::event_type_label(event_type)),
        ("response_code", code),
        ("response_code_class", class),
    ]
}

/// Delivers `event` (at `offset`) to `spec`'s subscriber until it settles, holding `slot` (its place in the
/// subscriber's in-flight limit, if it has one) while it is in flight.
pub(crate) async fn deliver(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    offset: u64,
    event: &CloudEvent,
    slot: &mut Option<DeliverySlot>,
) -> Settlement {
    let span = tracing::debug_span!("deliver", consumer = %spec.cursor, partition = ctx.partition, offset);
    let _ = &span;
    #[cfg(feature = "planted-bugs")]
    if sluice_broker::planted_bug("panic-in-delivery") && event.get_str("type") == Some(PLANTED_PANIC_TYPE) {
        panic!("a planted bug in the delivery of offset {offset}");
    }
    let mut judge = SubscriberJudge { ctx, spec, event, offset, reply_failed: None, reply_dead_letter: None };
    let reply_use = match spec.reply {
        ReplyTarget::Discard => ReplyUse::Discarded,
        ReplyTarget::Broker { .. } | ReplyTarget::Uri(_) => ReplyUse::Wanted,
    };
    let payload = Payload::Event { format: spec.format, event, withheld: Some(BROKER_TTL) };
    match send_with_retries(ctx, spec, &spec.subscriber_uri, payload, reply_use, &mut judge, slot).await {
        Sent::Done { attempts } => {
            // The response is gone by now; a reply that could not go on is dead-lettered before the event
            // settles, as delivered.
            if let Some((reply, failure)) = judge.reply_dead_letter.take() {
                drop(slot.take());
                Box::pin(dead_letter_event(ctx, spec, None, &reply, failure)).await;
            }
            Settlement::Delivered { attempts }
        }
        Sent::GaveUp { attempts, result, reason, note } => {
            // Done with the subscriber: dead-lettering goes elsewhere.
            drop(slot.take());
            let reason = note.unwrap_or_else(|| describe(reason));
            // The error attributes name what failed last: the subscriber, or the reply leg after it.
            let failure = final_failure(&spec.subscriber_uri, &result, judge.reply_failed.take(), reason);
            // Not held while the dead letter waits on the sink's retries: the failure keeps a copy of what it needs.
            drop(result);
            // Boxed: the rare path's state (another send with retries, an append) would otherwise be part of
            // every delivery's future, allocated (and initialised) for each event.
            Box::pin(dead_letter(ctx, spec, offset, event, failure, attempts)).await
        }
    }
}

/// A batch's attempts: metrics for each of its events, the status alone decides (a batch's response carries no
/// reply).
struct BatchJudge<'c> {
    spec: &'c ConsumerSpec,
    events: &'c [(u64, Arc<CloudEvent>)],
}

impl Judge for BatchJudge<'_> {
    fn judge<'a>(&'a mut self, result: &'a AttemptResult, elapsed: Duration) -> JudgeFuture<'a> {
        let (scope, code, ms) =
            ([self.spec.cursor.as_str()], result.status.unwrap_or(0), elapsed.as_secs_f64() * 1000.0);
        // One record per run of events of one type (a batch is usually of one type or a few).
        let types = self.events.iter().map(|(_, event)| event.get_str("type").unwrap_or_default());
        let mut runs: Vec<(&str, u64)> = Vec::new();
        for event_type in types {
            match runs.last_mut() {
                Some((last, count)) if *last == event_type => *count += 1,
                _ => runs.push((event_type, 1)),
            }
        }
        for (event_type, count) in runs {
            DISPATCH_EVENT_METRICS
                .record(&scope, event_type, code, count, ms, || labels(self.spec, event_type, result.status));
        }
        Box::pin(std::future::ready((classify(result.status), None)))
    }

    fn on_retry(&mut self, attempt: u32, result: &AttemptResult, at_ms: u64) {
        let spec = self.spec;
        metrics::counter!("sluice_dispatch_retries_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone())
            .increment(self.events.len() as u64);
        let first_offset = self.events.first().map(|(offset, _)| *offset);
        tracing::debug!(consumer = %spec.name, ?first_offset, events = self.events.len(), attempt, status = ?result.status,
            wait_ms = at_ms.saturating_sub(now_ms()), "retrying a batch");
    }
}

/// Delivers `events` (with the most bytes their JSON array takes) to `spec`'s subscriber in one batched request per
/// attempt until they settle together: a 2xx delivers every one; when the policy gives up, each is dead-lettered on
/// its own, with the batch's failure ([`BATCH_DEAD_LETTERS_AT_ONCE`] at a time).
pub(crate) async fn deliver_batch(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    (events, json_bytes_bound): (&[(u64, Arc<CloudEvent>)], usize),
    slot: &mut Option<DeliverySlot>,
) -> Settled {
    let first_offset = events.first().map(|(offset, _)| *offset);
    let span = tracing::debug_span!("deliver_batch", consumer = %spec.cursor, partition = ctx.partition, ?first_offset, events = events.len());
    let _ = &span;
    let mut judge = BatchJudge { spec, events };
    let payload = Payload::Batch(events, json_bytes_bound);
    match send_with_retries(ctx, spec, &spec.subscriber_uri, payload, ReplyUse::Discarded, &mut judge, slot).await {
        Sent::Done { attempts } => {
            events.iter().map(|(offset, _)| (*offset, Settlement::Delivered { attempts })).collect()
        }
        Sent::GaveUp { attempts, result, reason, note } => {
            drop(slot.take());
            use futures::stream::StreamExt;
            let reason = note.unwrap_or_else(|| describe(reason));
            let failure = failure_from(&spec.subscriber_uri, &result, reason);
            // Not held while the dead letters wait on the sink's retries.
            drop(result);
            // Made up front (they start when polled): a stream's `map` closure held in this future trips the
            // compiler's `Send` proof of the delivery future.
            let dead_letters: Vec<_> = events
                .iter()
                .map(|(offset, event)| {
                    let failure = failure.clone();
                    let offset = *offset;
                    async move { (offset, Box::pin(dead_letter(ctx, spec, offset, event, failure, attempts)).await) }
                })
                .collect();
            futures::stream::iter(dead_letters).buffered(BATCH_DEAD_LETTERS_AT_ONCE).collect::<Settled>().await
        }
    }
}

/// The event type whose deliveries panic under the planted bug `panic-in-delivery` (tests only).
#[cfg(feature = "planted-bugs")]
pub(crate) const PLANTED_PANIC_TYPE: &str = "sluice.test.panic";

/// Settles an event whose delivery panicked (a bug in Sluice): it is dead-lettered like an event that failed,
/// with the reason saying so, rather than left in flight, where it would hold the consumer's watermark (and its
/// ordering key) until the consumer restarted. Kept, it can be redriven once the bug is fixed.
pub(crate) async fn dead_letter_after_panic(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    offset: u64,
    event: &CloudEvent,
) -> Settlement {
    let reason = "internal error: Sluice's delivery of this event panicked (a bug; see the node's log)";
    let failure = Failure {
        destination: spec.subscriber_uri.clone(),
        status: None,
        data: Bytes::from_static(reason.as_bytes()),
        reason: reason.to_string(),
    };
    Box::pin(dead_letter(ctx, spec, offset, event, failure, 0)).await
}

fn describe(reason: FailureReason) -> String {
    reason.to_string()
}

/// The event with Knative's error attributes (and Sluice's reason and source offset).
fn with_error_attributes(event: &CloudEvent, failure: &Failure, offset: Option<u64>) -> CloudEvent {
    let mut event = event.clone();
    let attributes = &mut event.attributes;
    attributes.insert("knativeerrordest".into(), AttrValue::String(redacted_url(&failure.destination)));
    match failure.status {
        Some(status) => attributes.insert("knativeerrorcode".into(), AttrValue::Integer(i64::from(status))),
        None => attributes.remove("knativeerrorcode"),
    };
    let data = &failure.data[..failure.data.len().min(MAX_ERROR_DATA_BYTES)];
    attributes
        .insert("knativeerrordata".into(), AttrValue::String(base64::engine::general_purpose::STANDARD.encode(data)));
    attributes.insert("sluiceerrorreason".into(), AttrValue::String(failure.reason.chars().take(512).collect()));
    if let Some(offset) = offset {
        attributes.insert("sluicesourceoffset".into(), AttrValue::String(offset.to_string()));
    }
    event
}

async fn dead_letter(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    offset: u64,
    event: &CloudEvent,
    failure: Failure,
    attempts: u32,
) -> Settlement {
    tracing::info!(consumer = %spec.name, namespace = %spec.namespace, offset, reason = %failure.reason, "dead-lettering");
    match dead_letter_event(ctx, spec, Some(offset), event, failure).await {
        DeadLettered::Sink => Settlement::DeadLetterSink { attempts },
        DeadLettered::Stream => Settlement::DeadLetterStream { attempts },
        DeadLettered::Dropped => Settlement::Dropped { attempts },
    }
}

enum DeadLettered {
    Sink,
    Stream,
    Dropped,
}

/// Sends `event` with its error attributes to the dead-letter sink (retried with the consumer's policy); when
/// there is none, or it fails too, keeps it in the consumer's dead-letter stream unless the consumer says
/// `sluice.dev/dead-letter: drop`.
async fn dead_letter_event(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    offset: Option<u64>,
    event: &CloudEvent,
    failure: Failure,
) -> DeadLettered {
    let mut dead = with_error_attributes(event, &failure, offset);
    if let Some(sink) = &spec.dead_letter_uri {
        let payload = Payload::Event { format: spec.format, event: &dead, withheld: None };
        // The sink is not the subscriber: no place in the subscriber's limit.
        match send_with_retries(ctx, spec, sink, payload, ReplyUse::Discarded, &mut ByStatus, &mut None).await {
            Sent::Done { .. } => {
                metrics::counter!("sluice_dispatch_dead_lettered_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone(), "to" => "sink").increment(1);
                return DeadLettered::Sink;
            }
            Sent::GaveUp { reason, .. } => {
                tracing::warn!(consumer = %spec.name, sink = %sink, reason = %reason, "the dead-letter sink failed too");
                let sink_reason = format!("{}; then the dead-letter sink {sink} failed: {reason}", failure.reason);
                dead.attributes
                    .insert("sluiceerrorreason".into(), AttrValue::String(sink_reason.chars().take(512).collect()));
            }
        }
    }
    if spec.dead_letter_mode == DeadLetterMode::Drop {
        metrics::counter!("sluice_dispatch_dropped_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone()).increment(1);
        tracing::warn!(consumer = %spec.name, reason = %failure.reason, "dropping an undeliverable event (sluice.dev/dead-letter: drop)");
        return DeadLettered::Dropped;
    }
    // Kept in the stream of the consumer's name: whose it is (see `CONSUMER_UID_ATTRIBUTE`).
    dead.attributes.insert(CONSUMER_UID_ATTRIBUTE.into(), AttrValue::String(spec.uid.clone()));
    let payload = match dead.encode() {
        Ok(payload) => Bytes::from(payload),
        Err(e) => {
            // A bug (the event was decoded from the log): counted with the other lost dead letters, where alerts
            // look; the event itself stays in its stream for a replay.
            metrics::counter!("sluice_dispatch_dead_letters_lost_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone()).increment(1);
            tracing::error!(consumer = %spec.name, error = %e, "cannot encode a dead letter; dropping it");
            return DeadLettered::Dropped;
        }
    };
    // The dead letter must be stored before the event settles: retry while that may still work (or until the
    // delivery is aborted, when the event is redelivered from the committed offset). An append that can never
    // work (larger than an entry may be, a bug) would hold the consumer's window for ever: the dead letter is
    // dropped, loudly; the event itself stays in its stream for a replay.
    let mut retry = 0u32;
    loop {
        match ctx.node.append(&spec.dead_letter_stream, ctx.partition, vec![payload.clone()], now_ms(), None).await {
            Ok(_) => {
                metrics::counter!("sluice_dispatch_dead_lettered_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone(), "to" => "stream").increment(1);
                return DeadLettered::Stream;
            }
            Err(e) if !e.is_retryable() => {
                metrics::counter!("sluice_dispatch_dead_letters_lost_total", "consumer" => spec.name.clone(), "namespace" => spec.namespace.clone()).increment(1);
                tracing::error!(consumer = %spec.name, namespace = %spec.namespace, ?offset, error = %e, "the dead letter cannot be stored; dropping it");
                return DeadLettered::Dropped;
            }
            Err(e) => {
                let wait_ms = append_retry_wait_ms(retry);
                tracing::warn!(consumer = %spec.name, error = %e, wait_ms, "dead-letter stream append failed; retrying");
                append_retry::wait(spec, "dead_letter", Duration::from_millis(wait_ms)).await;
                retry = retry.saturating_add(1);
            }
        }
    }
}

#[cfg(test)]
mod tests;
