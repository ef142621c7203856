//! A subscriber's reply to a delivery: a Trigger's is checked and committed into its Broker (one hop further,
//! held to ingress's attribute limits and its Broker's EventPolicies), a Subscription's forwarded to its
//! `spec.reply`; what cannot go on is the dead letter.

use super::*;

pub(super) enum ReplyError {
    /// The subscriber's reply is not a valid event: retrying will not fix it.
    Invalid(String),
    /// A Trigger's reply could not be stored in its Broker's `stream`. `may_pass`: for a reason that may pass (no
    /// leader, a full queue) that lasted through [`REPLY_APPEND_RETRY_FOR`] of retries, and the delivery is
    /// retried by its policy; otherwise a bug or a fatal Raft error, and it is not (sending the event again
    /// would repeat its effects at the subscriber for a reply that cannot be stored).
    NotStored { stream: String, reason: String, may_pass: bool },
    /// A Subscription's `spec.reply` refused the reply for now: the delivery is retried.
    NotDelivered { uri: String, result: AttemptResult },
}

/// What became of a reply that needs nothing more of the subscriber.
pub(super) enum ReplyDone {
    /// Committed to the Broker, taken by the reply destination, or dropped for want of one.
    Passed,
    /// It cannot go on (its TTL ran out, the reply destination refused it for good): it is dead-lettered itself,
    /// and the event counts as delivered.
    DeadLetter { reply: CloudEvent, failure: Failure },
}

/// The subscriber's reply as it goes on: without the arrival time of the event it may have copied (its own is
/// set when it is stored).
fn outgoing_reply(received: &CloudEvent) -> CloudEvent {
    let mut reply = received.clone();
    reply.attributes.remove("knativearrivaltime");
    reply
}

/// Commits (Trigger) or forwards (Subscription) a subscriber's reply: `Ok` once it is committed or forwarded, or
/// when it is to be dead-lettered itself.
pub(super) async fn handle_reply(
    ctx: &DeliveryContext,
    spec: &ConsumerSpec,
    original: &CloudEvent,
    reply: &Result<CloudEvent, String>,
) -> Result<ReplyDone, ReplyError> {
    let received = match reply {
        Ok(received) => received,
        Err(reason) => return Err(ReplyError::Invalid(format!("the reply is not a valid CloudEvent: {reason}"))),
    };
    // The reply is one hop further than the event it answers.
    let ttl = original
        .get("knativebrokerttl")
        .and_then(|v| v.to_canonical_string().trim().parse::<i64>().ok())
        .unwrap_or(sluice_cloudevent::DEFAULT_BROKER_TTL)
        .clamp(0, i64::from(i32::MAX))
        - 1;
    match &spec.reply {
        ReplyTarget::Discard => Ok(ReplyDone::Passed),
        ReplyTarget::Broker { stream, settings } => {
            if ttl <= 0 {
                metrics::counter!("sluice_dispatch_reply_ttl_exhausted_total", "consumer" => spec.name.clone())
                    .increment(1);
                let failure = Failure {
                    destination: stream.clone(),
                    status: None,
                    data: Bytes::from_static(b"knativebrokerttl exhausted: the reply is not sent back to the broker"),
                    reason: "knativebrokerttl exhausted".into(),
                };
                // The original delivery succeeded; the reply that cannot go on is the dead letter, with a TTL of
                // 1, the least an event may be stored or sent to a Broker with: redriven, it makes one more hop and
                // its reply is dead-lettered again. Regression: it kept the subscriber's TTL (none, so the
                // default), and a `dlq redrive` of it started the whole loop again, 255 hops.
                let mut reply = outgoing_reply(received);
                reply.attributes.insert("knativebrokerttl".into(), AttrValue::Integer(1));
                return Ok(ReplyDone::DeadLetter { reply, failure });
            }
            // Made again from what the subscriber sent for each retry of the append (which takes its event): no
            // copy is kept for the common case, an append that succeeds at once.
            let to_store = || {
                let mut reply = outgoing_reply(received);
                reply.attributes.insert("knativebrokerttl".into(), AttrValue::Integer(ttl));
                reply
            };
            let reply = to_store();
            // Held to the attribute limits ingress holds events to, so that what is stored can be delivered.
            // Regression: a reply of 200 extensions was stored, and every binary-mode delivery of it was refused
            // (431) and dead-lettered.
            if let Err(refused) = ctx.node.settings().event_attribute_limits.check(&reply, settings.ttl) {
                return Err(ReplyError::Invalid(format!("the reply was refused: {}", refused.to_json())));
            }
            if let Some(authorization) = &spec.reply_authorization {
                let namespace = &spec.namespace;
                let subject = &spec.sender_subject;
                let events = std::slice::from_ref(&reply);
                if let Err(rule) = sluice_broker::authorize_sender(
                    &authorization.policies,
                    authorization.mode,
                    namespace,
                    subject,
                    events,
                ) {
                    metrics::counter!("sluice_dispatch_replies_unauthorized_total", "consumer" => spec.name.clone())
                        .increment(1);
                    return Err(ReplyError::Invalid(format!("the reply is not authorized ({subject}): {rule}")));
                }
            }
            // A reply that kept the identity of the event it answers (a transformer that changed only its type or
            // data) would be taken by the dedupe window for that event and dropped while acknowledged: it is
            // stored without the window. Replies with identities of their own keep it (a delivery retried after
            // its reply was stored gives the same reply again).
            let keeps_the_identity =
                reply.get_str("id") == original.get_str("id") && reply.get_str("source") == original.get_str("source");
            let without_dedupe;
            let settings = if keeps_the_identity {
                without_dedupe = IngressSettings { dedupe_window: None, ..settings.clone() };
                &without_dedupe
            } else {
                settings
            };
            let first_try = std::time::Instant::now();
            let mut next = Some(reply);
            let mut retry = 0u32;
            loop {
                let reply = next.take().unwrap_or_else(to_store);
                let error = match publish(&ctx.node, stream, settings, vec![reply], MAX_REPLY_EVENT_BYTES).await {
                    Ok(_) => {
                        metrics::counter!("sluice_dispatch_replies_total", "consumer" => spec.name.clone())
                            .increment(1);
                        return Ok(ReplyDone::Passed);
                    }
                    Err(PublishError::Invalid(e)) => {
                        return Err(ReplyError::Invalid(format!("the reply was refused: {}", e.to_json())));
                    }
                    Err(PublishError::Broker(e)) => e,
                };
                if !error.is_retryable() {
                    let reason = format!("the reply could not be stored in {stream}: {error}");
                    return Err(ReplyError::NotStored { stream: stream.clone(), reason, may_pass: false });
                }
                // A leader election or a full queue passes: tried again here rather than failing the attempt, which
                // (with the default `retry: 0`) would dead-letter an event the subscriber already took.
                let Some(wait) = reply_append_wait(retry, first_try.elapsed()) else {
                    let reason = format!(
                        "the reply could not be stored in {stream} (tried for {} s): {error}",
                        REPLY_APPEND_RETRY_FOR.as_secs()
                    );
                    return Err(ReplyError::NotStored { stream: stream.clone(), reason, may_pass: true });
                };
                tracing::debug!(consumer = %spec.name, %stream, error = %error, wait_ms = wait.as_millis() as u64, "reply append failed; retrying");
                append_retry::wait(spec, "reply", wait).await;
                retry = retry.saturating_add(1);
            }
        }
        ReplyTarget::Uri(uri) => {
            // A Subscription's reply goes on to spec.reply, once per attempt of the delivery. Knative's
            // conformance: if that fails with a retryable error, the entire delivery is retried (the event sent
            // to the subscriber again, its new reply forwarded), up to `retry` times; when they run out the
            // event is dead-lettered. A reply the reply destination refuses for good is dead-lettered itself,
            // and the event counts as delivered.
            let reply = outgoing_reply(received);
            let ca_certs = spec.ca_certs.get(uri.as_str());
            let token = sender_token(ctx, spec, uri);
            let result = ctx
                .sender
                .send(
                    uri,
                    ca_certs,
                    protocol_towards(uri, &spec.subscriber_uri, spec.protocol),
                    Format::Binary,
                    &reply,
                    token.as_deref(),
                    spec.policy.timeout_ms,
                    now_ms(),
                    ReplyUse::Discarded,
                    None,
                )
                .await;
            match classify(result.status) {
                Outcome::Success => {
                    metrics::counter!("sluice_dispatch_replies_total", "consumer" => spec.name.clone()).increment(1);
                    Ok(ReplyDone::Passed)
                }
                Outcome::Retryable { .. } => Err(ReplyError::NotDelivered { uri: uri.clone(), result }),
                Outcome::Permanent { .. } => {
                    let failure = failure_from(uri, &result, "the reply destination refused the reply".into());
                    Ok(ReplyDone::DeadLetter { reply, failure })
                }
            }
        }
    }
}
