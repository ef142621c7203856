//! Tests of the delivery policy: response classes, DeliverySpec parsing, ISO-8601 durations, backoff schedules,
//! giving up, and Retry-After.

use super::*;
use serde_json::json;
use sluice_controller::validate::parse_iso_duration_ms;

fn policy(spec: Json) -> DeliveryPolicy {
    DeliveryPolicy::from_spec(Some(&spec)).expect("valid DeliverySpec")
}

fn error(spec: Json) -> DeliveryError {
    DeliveryPolicy::from_spec(Some(&spec)).expect_err("invalid DeliverySpec")
}

// --- classify -------------------------------------------------------------------------------------------

#[test]
fn every_2xx_is_success() {
    for status in [200, 201, 202, 203, 204, 206, 250, 299] {
        assert_eq!(classify(Some(status)), Outcome::Success, "{status}");
    }
}

#[test]
fn listed_retryable_codes_and_5xx_are_retryable() {
    for status in [404, 408, 409, 429, 500, 501, 502, 503, 504, 550, 599] {
        assert_eq!(classify(Some(status)), Outcome::Retryable { status: Some(status) }, "{status}");
    }
}

#[test]
fn other_4xx_1xx_and_3xx_are_permanent() {
    for status in [100, 101, 103, 199, 300, 301, 302, 304, 307, 308, 399, 400, 401, 402, 403, 405, 406, 407]
        .into_iter()
        .chain([410, 411, 412, 413, 414, 415, 418, 422, 425, 426, 428, 431, 451, 499])
    {
        assert_eq!(classify(Some(status)), Outcome::Permanent { status }, "{status}");
    }
}

#[test]
fn network_errors_are_retryable() {
    assert_eq!(classify(None), Outcome::Retryable { status: None });
}

#[test]
fn codes_outside_the_table_are_retryable() {
    for status in [0, 1, 99, 600, 999, u16::MAX] {
        assert_eq!(classify(Some(status)), Outcome::Retryable { status: Some(status) }, "{status}");
    }
}

// --- DeliverySpec ---------------------------------------------------------------------------------------

#[test]
fn defaults_without_delivery() {
    let expected = DeliveryPolicy {
        retry: 0,
        backoff_policy: BackoffPolicy::Exponential,
        backoff_delay_ms: 200,
        timeout_ms: 30_000,
        retry_after_max_ms: None,
        has_dead_letter_sink: false,
        backoff_max_ms: None,
        backoff_jitter_permille: 0,
    };
    assert_eq!(DeliveryPolicy::default(), expected);
    assert_eq!(DeliveryPolicy::from_spec(None), Ok(expected.clone()));
    assert_eq!(DeliveryPolicy::from_spec(Some(&Json::Null)), Ok(expected.clone()));
    assert_eq!(policy(json!({})), expected);
    let nulls = json!({"retry": null, "backoffPolicy": null, "backoffDelay": null, "timeout": null,
        "retryAfterMax": null, "deadLetterSink": null});
    assert_eq!(policy(nulls), expected);
}

#[test]
fn full_delivery_spec() {
    let spec = json!({
        "retry": 5,
        "backoffPolicy": "linear",
        "backoffDelay": "PT0.5S",
        "timeout": "PT10S",
        "retryAfterMax": "PT2M",
        "deadLetterSink": {"ref": {"apiVersion": "v1", "kind": "Service", "name": "dls"}},
        "someFutureField": true,
    });
    assert_eq!(
        policy(spec),
        DeliveryPolicy {
            retry: 5,
            backoff_policy: BackoffPolicy::Linear,
            backoff_delay_ms: 500,
            timeout_ms: 10_000,
            retry_after_max_ms: Some(120_000),
            has_dead_letter_sink: true,
            backoff_max_ms: None,
            backoff_jitter_permille: 0,
        }
    );
    assert_eq!(policy(json!({"backoffPolicy": "exponential"})).backoff_policy, BackoffPolicy::Exponential);
    assert!(policy(json!({"deadLetterSink": {"uri": "http://dls.example"}})).has_dead_letter_sink);
    assert_eq!(policy(json!({"retry": 0})).retry, 0);
    assert_eq!(policy(json!({"retry": u32::MAX})).retry, u32::MAX);
    assert_eq!(policy(json!({"backoffDelay": "PT0S"})).backoff_delay_ms, 0);
}

#[test]
fn invalid_delivery_specs_name_the_field() {
    let cases = [
        (json!("PT1S"), "delivery"),
        (json!([]), "delivery"),
        (json!({"retry": -1}), "delivery.retry"),
        (json!({"retry": 1.5}), "delivery.retry"),
        (json!({"retry": "3"}), "delivery.retry"),
        (json!({"retry": u64::from(u32::MAX) + 1}), "delivery.retry"),
        (json!({"backoffPolicy": "Linear"}), "delivery.backoffPolicy"),
        (json!({"backoffPolicy": "fibonacci"}), "delivery.backoffPolicy"),
        (json!({"backoffPolicy": 1}), "delivery.backoffPolicy"),
        (json!({"backoffDelay": "0.2s"}), "delivery.backoffDelay"),
        (json!({"backoffDelay": 200}), "delivery.backoffDelay"),
        (json!({"timeout": "PT"}), "delivery.timeout"),
        (json!({"timeout": "PT0S"}), "delivery.timeout"),
        (json!({"retryAfterMax": "P1M"}), "delivery.retryAfterMax"),
        (json!({"deadLetterSink": "http://dls.example"}), "delivery.deadLetterSink"),
    ];
    for (spec, path) in cases {
        assert_eq!(error(spec.clone()).path(), path, "{spec}");
    }
    assert_eq!(
        error(json!({"backoffDelay": "PT1X"})).to_string(),
        format!("delivery.backoffDelay: {}", DurationError::Syntax("PT1X".into()))
    );
    assert_eq!(
        error(json!({"timeout": "PT0S"})),
        DeliveryError::Duration { path: "delivery.timeout".into(), source: DurationError::ZeroTimeout("PT0S".into()) }
    );
    assert_eq!(
        error(json!({"backoffPolicy": "fibonacci"})),
        DeliveryError::UnknownBackoffPolicy { path: "delivery.backoffPolicy".into(), policy: "fibonacci".into() }
    );
}

// --- ISO-8601 durations ---------------------------------------------------------------------------------
// The grammar itself is tested where it lives, in the controller (`controller/src/fields.rs`); here, that the
// policy reads every duration field with it.

#[test]
fn duration_fields_are_read_with_the_controllers_parser() {
    for text in ["PT0.2S", "PT0,2S", "PT1.5S", "PT0.123456S", "PT1H2M3.5S", "PT90S", "P1DT2H3M4S", "P1W1D"] {
        let ms = parse_iso_duration_ms(text).expect("a valid duration");
        let read = policy(json!({"backoffDelay": text, "timeout": text, "retryAfterMax": text}));
        assert_eq!((read.backoff_delay_ms, read.timeout_ms, read.retry_after_max_ms), (ms, ms, Some(ms)), "{text}");
    }
    let refused = [
        ("PT1.5M", DurationError::Fraction("PT1.5M".into())),
        ("P1.5D", DurationError::Fraction("P1.5D".into())),
        ("PT.5S", DurationError::Syntax("PT.5S".into())),
        ("PT30S1M", DurationError::Order("PT30S1M".into())),
        ("P1M", DurationError::CalendarUnit("P1M".into())),
        ("PT99999999999999999999S", DurationError::Overflow("PT99999999999999999999S".into())),
    ];
    for (text, source) in refused {
        for field in DeliveryDuration::ALL.map(DeliveryDuration::field) {
            let path = format!("delivery.{field}");
            assert_eq!(
                error(json!({ field: text })),
                DeliveryError::Duration { path, source: source.clone() },
                "{text}"
            );
        }
    }
}

/// A Trigger with `delivery` and `annotations`, valid otherwise.
fn trigger(delivery: Json, annotations: Json) -> Json {
    json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "t", "namespace": "default", "annotations": annotations},
        "spec": {"broker": "default", "subscriber": {"uri": "http://subscriber.example/"}, "delivery": delivery},
    })
}

/// Whether the controller's validation accepts `value` in each duration field and in `sluice.dev/backoff-max`,
/// and whether the consumer build ([`DeliveryPolicy::from_spec`], [`DeliveryPolicy::apply_annotations`]) does:
/// `(field, validated, built)`.
fn verdicts(value: &str) -> Vec<(String, bool, bool)> {
    let mut verdicts = Vec::new();
    for field in DeliveryDuration::ALL.map(DeliveryDuration::field) {
        let object = trigger(json!({ field: value }), json!({}));
        let validated = sluice_controller::validate_object(&object, None);
        let built = DeliveryPolicy::from_spec(object.pointer("/spec/delivery"));
        if let (Err(fields), Err(built)) = (&validated, &built) {
            let path = format!("spec.{}", built.path());
            assert!(fields.iter().any(|e| e.path == path), "{value:?}: the validation names {path}: {fields:?}");
        }
        verdicts.push((field.to_string(), validated.is_ok(), built.is_ok()));
    }
    let object = trigger(json!({}), json!({ANNOTATION_BACKOFF_MAX: value}));
    let validated = sluice_controller::validate_object(&object, None);
    let built =
        DeliveryPolicy::default().apply_annotations(object.pointer("/metadata/annotations").and_then(Json::as_object));
    verdicts.push((ANNOTATION_BACKOFF_MAX.to_string(), validated.is_ok(), built.is_ok()));
    verdicts
}

/// The defect this guards against: the controller accepted `PT1.5M`, `PT0S` as a timeout or `1h30m` as
/// `sluice.dev/backoff-max`, the consumer build refused them, and the Trigger showed Ready without delivering.
#[test]
fn the_validation_accepts_exactly_the_durations_the_consumer_build_accepts() {
    let values = [
        "PT0.2S",
        "PT0,2S",
        "PT0S",
        "PT0.0001S",
        "PT0.001S",
        "P0D",
        "PT30S",
        "PT1H30M",
        "P1DT2H",
        "P1W",
        "PT1.5M",
        "P1.5D",
        "PT.5S",
        "PT1.S",
        "PT30S1M",
        "PT1H1H",
        "P1M",
        "P1Y",
        "PT",
        "P",
        "",
        " PT1S",
        "PT1S ",
        "pt1s",
        "PT99999999999999999999S",
        "200ms",
        "30s",
        "0s",
        "5m",
        "1h",
        "1d",
        "1h30m",
        "0.5s",
        "30",
        "soon",
        " 30s",
    ];
    for value in values {
        for (field, validated, built) in verdicts(value) {
            assert_eq!(
                validated, built,
                "{field} = {value:?}: validation accepts: {validated}, consumer build: {built}"
            );
        }
    }
}

proptest::proptest! {
    /// Any string of duration-like characters: whatever the validation accepts, the consumer build accepts
    /// (and the other way round), field by field.
    #[test]
    fn the_validation_and_the_consumer_build_agree_on_any_duration(value in "[PTWDYHMSmsh0-9.,+ -]{0,9}") {
        for (field, validated, built) in verdicts(&value) {
            proptest::prop_assert_eq!(validated, built, "{} = {:?}", field, value);
        }
    }
}

// --- backoff --------------------------------------------------------------------------------------------

fn schedule(policy: &DeliveryPolicy, now_ms: u64) -> Vec<Step> {
    (1..=5).map(|attempt| next_step(policy, attempt, Outcome::Retryable { status: Some(500) }, None, now_ms)).collect()
}

#[test]
fn linear_schedule() {
    let policy = policy(json!({"retry": 5, "backoffPolicy": "linear", "backoffDelay": "PT0.2S"}));
    assert_eq!(schedule(&policy, 1_000), [200, 400, 600, 800, 1_000].map(|delay_ms| Step::RetryAt(1_000 + delay_ms)));
}

#[test]
fn exponential_schedule() {
    let policy = policy(json!({"retry": 5, "backoffPolicy": "exponential", "backoffDelay": "PT0.2S"}));
    assert_eq!(schedule(&policy, 1_000), [200, 400, 800, 1_600, 3_200].map(|delay_ms| Step::RetryAt(1_000 + delay_ms)));
    // The default policy is exponential too.
    let default = policy_with_retry(5);
    assert_eq!(schedule(&default, 0), [200, 400, 800, 1_600, 3_200].map(Step::RetryAt));
}

fn policy_with_retry(retry: u32) -> DeliveryPolicy {
    DeliveryPolicy { retry, ..DeliveryPolicy::default() }
}

#[test]
fn backoff_is_capped_and_saturates() {
    let exponential = DeliveryPolicy { retry: u32::MAX, backoff_delay_ms: 1_000, ..DeliveryPolicy::default() };
    assert_eq!(exponential.backoff_ms(12), 2_048_000);
    assert_eq!(exponential.backoff_ms(13), MAX_DELAY_MS);
    assert_eq!(exponential.backoff_ms(64), MAX_DELAY_MS);
    assert_eq!(exponential.backoff_ms(65), MAX_DELAY_MS);
    assert_eq!(exponential.backoff_ms(u32::MAX), MAX_DELAY_MS);
    let linear = DeliveryPolicy { backoff_policy: BackoffPolicy::Linear, ..exponential.clone() };
    assert_eq!(linear.backoff_ms(3_600), MAX_DELAY_MS);
    assert_eq!(linear.backoff_ms(u32::MAX), MAX_DELAY_MS);
    let huge = DeliveryPolicy { backoff_delay_ms: u64::MAX, ..linear };
    assert_eq!(huge.backoff_ms(2), MAX_DELAY_MS);
    let zero = DeliveryPolicy { backoff_delay_ms: 0, ..exponential.clone() };
    assert_eq!(zero.backoff_ms(u32::MAX), 0);
    // Attempt 0 is read as attempt 1.
    assert_eq!(exponential.backoff_ms(0), 1_000);
    assert_eq!(next_step(&exponential, 0, Outcome::Retryable { status: None }, None, 0), Step::RetryAt(1_000));
    // The retry instant saturates instead of wrapping around.
    assert_eq!(
        next_step(&exponential, 1, Outcome::Retryable { status: None }, None, u64::MAX - 10),
        Step::RetryAt(u64::MAX)
    );
}

/// Regression: `backoffDelay: PT0S` (or a `Retry-After: 0`, or `sluice.dev/backoff-max: 0s`) made every retry
/// immediate, each event of a window resending as fast as a failing subscriber answered.
#[test]
fn a_zero_backoff_still_waits_the_least_retry_wait() {
    let zero = DeliveryPolicy { retry: u32::MAX, backoff_delay_ms: 0, ..DeliveryPolicy::default() };
    let linear_zero = DeliveryPolicy { backoff_policy: BackoffPolicy::Linear, ..zero.clone() };
    let capped_at_zero = DeliveryPolicy { backoff_max_ms: Some(0), ..policy_with_retry(u32::MAX) };
    let cases = [
        (&zero, 1, classify(Some(500)), None),
        (&zero, 40, classify(None), None),
        (&linear_zero, 7, classify(Some(503)), Some(RetryAfter::Seconds(0))),
        (&zero, 1, classify(Some(429)), Some(RetryAfter::AtMs(1_000))),
        (&capped_at_zero, 3, classify(Some(500)), None),
    ];
    for (policy, attempt, outcome, retry_after) in cases {
        let step = next_step(policy, attempt, outcome, retry_after, 5_000);
        assert_eq!(step, Step::RetryAt(5_000 + MIN_RETRY_WAIT_MS), "attempt {attempt}, {outcome:?}, {retry_after:?}");
    }
    // A longer wait is kept as it is.
    let short = DeliveryPolicy { backoff_delay_ms: 11, ..zero };
    assert_eq!(next_step(&short, 1, classify(None), None, 5_000), Step::RetryAt(5_011));
}

// --- giving up ------------------------------------------------------------------------------------------

#[test]
fn retries_exhausted_go_to_the_dead_letter_sink_or_are_dropped() {
    let with_sink = DeliveryPolicy { has_dead_letter_sink: true, ..policy_with_retry(2) };
    let without_sink = policy_with_retry(2);
    for policy in [&with_sink, &without_sink] {
        assert!(matches!(next_step(policy, 1, classify(Some(503)), None, 0), Step::RetryAt(_)));
        assert!(matches!(next_step(policy, 2, classify(None), None, 0), Step::RetryAt(_)));
    }
    let reason = FailureReason::RetriesExhausted { attempts: 3, last_status: Some(503) };
    assert_eq!(next_step(&with_sink, 3, classify(Some(503)), None, 0), Step::DeadLetter { reason });
    assert_eq!(next_step(&without_sink, 3, classify(Some(503)), None, 0), Step::Drop { reason });
    let reason = FailureReason::RetriesExhausted { attempts: 4, last_status: None };
    assert_eq!(next_step(&with_sink, 4, classify(None), None, 0), Step::DeadLetter { reason });
    assert_eq!(next_step(&without_sink, 4, classify(None), None, 0), Step::Drop { reason });
}

#[test]
fn no_retry_by_default() {
    let reason = FailureReason::RetriesExhausted { attempts: 1, last_status: Some(500) };
    assert_eq!(next_step(&DeliveryPolicy::default(), 1, classify(Some(500)), None, 0), Step::Drop { reason });
}

#[test]
fn permanent_failures_are_not_retried() {
    let with_sink = DeliveryPolicy { has_dead_letter_sink: true, ..policy_with_retry(10) };
    let without_sink = policy_with_retry(10);
    for status in [100, 301, 400, 401, 403, 410, 422] {
        let reason = FailureReason::NotRetryable { status };
        assert_eq!(next_step(&with_sink, 1, classify(Some(status)), None, 0), Step::DeadLetter { reason });
        assert_eq!(next_step(&without_sink, 1, classify(Some(status)), None, 0), Step::Drop { reason });
    }
}

#[test]
fn success_is_done_at_any_attempt() {
    let policy = policy_with_retry(2);
    for attempt in [0, 1, 2, 3, 100] {
        assert_eq!(next_step(&policy, attempt, classify(Some(202)), Some(RetryAfter::Seconds(9)), 0), Step::Done);
    }
}

#[test]
fn failure_reasons_read_well() {
    assert_eq!(FailureReason::NotRetryable { status: 400 }.to_string(), "non-retryable response 400");
    assert_eq!(
        FailureReason::RetriesExhausted { attempts: 3, last_status: Some(503) }.to_string(),
        "3 attempt(s) failed, the last with response 503"
    );
    assert_eq!(
        FailureReason::RetriesExhausted { attempts: 1, last_status: None }.to_string(),
        "1 attempt(s) failed, the last with a network error or timeout"
    );
}

// --- Retry-After ----------------------------------------------------------------------------------------

#[test]
fn retry_after_is_honored_for_429_and_503() {
    let policy = policy_with_retry(3);
    for status in [429, 503] {
        let outcome = classify(Some(status));
        // Later than the 200 ms backoff: Retry-After wins.
        assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::Seconds(10)), 5_000), Step::RetryAt(15_000));
        assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::AtMs(9_000)), 5_000), Step::RetryAt(9_000));
        // Earlier than the backoff (or already past): the backoff wins.
        assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::Seconds(0)), 5_000), Step::RetryAt(5_200));
        assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::AtMs(5_100)), 5_000), Step::RetryAt(5_200));
        assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::AtMs(1_000)), 5_000), Step::RetryAt(5_200));
        assert_eq!(next_step(&policy, 3, outcome, Some(RetryAfter::Seconds(0)), 5_000), Step::RetryAt(5_800));
        // Without the header: the backoff alone.
        assert_eq!(next_step(&policy, 1, outcome, None, 5_000), Step::RetryAt(5_200));
    }
}

#[test]
fn retry_after_is_ignored_for_other_failures() {
    let policy = policy_with_retry(3);
    for outcome in [classify(Some(500)), classify(Some(502)), classify(Some(404)), classify(None)] {
        assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::Seconds(10)), 5_000), Step::RetryAt(5_200));
        assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::AtMs(60_000)), 5_000), Step::RetryAt(5_200));
    }
}

#[test]
fn retry_after_is_capped_by_retry_after_max() {
    let policy = policy(json!({"retry": 3, "retryAfterMax": "PT5S"}));
    let outcome = classify(Some(429));
    assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::Seconds(60)), 0), Step::RetryAt(5_000));
    assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::AtMs(60_000)), 0), Step::RetryAt(5_000));
    assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::Seconds(3)), 0), Step::RetryAt(3_000));
    // The cap applies to Retry-After only: a longer backoff is still waited for.
    let slow = DeliveryPolicy { backoff_delay_ms: 8_000, ..policy.clone() };
    assert_eq!(next_step(&slow, 1, outcome, Some(RetryAfter::Seconds(60)), 0), Step::RetryAt(8_000));
    // retryAfterMax of zero: Retry-After is effectively ignored.
    let zero = DeliveryPolicy { retry_after_max_ms: Some(0), ..policy };
    assert_eq!(next_step(&zero, 1, outcome, Some(RetryAfter::Seconds(60)), 0), Step::RetryAt(200));
}

#[test]
fn retry_after_without_retry_after_max_is_capped_at_the_maximum_delay() {
    let policy = policy_with_retry(3);
    let outcome = classify(Some(503));
    assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::Seconds(86_400)), 0), Step::RetryAt(MAX_DELAY_MS));
    assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::Seconds(u64::MAX)), 0), Step::RetryAt(MAX_DELAY_MS));
    assert_eq!(next_step(&policy, 1, outcome, Some(RetryAfter::AtMs(u64::MAX)), 0), Step::RetryAt(MAX_DELAY_MS));
}

#[test]
fn retry_after_grants_no_extra_attempt() {
    let policy = DeliveryPolicy { has_dead_letter_sink: true, ..policy_with_retry(1) };
    let reason = FailureReason::RetriesExhausted { attempts: 2, last_status: Some(429) };
    assert_eq!(
        next_step(&policy, 2, classify(Some(429)), Some(RetryAfter::Seconds(1)), 0),
        Step::DeadLetter { reason }
    );
}

#[test]
fn backoff_max_caps_and_jitter_stays_within_its_fraction() {
    let mut policy = DeliveryPolicy { retry: 10, backoff_delay_ms: 1_000, ..DeliveryPolicy::default() };
    let annotations = json!({"sluice.dev/backoff-max": "5s", "sluice.dev/backoff-jitter": "0.5"});
    policy.apply_annotations(annotations.as_object()).expect("valid annotations");
    assert_eq!(policy.backoff_max_ms, Some(5_000));
    assert_eq!(policy.backoff_jitter_permille, 500);
    // Exponential 1s, 2s, 4s, 8s... capped at 5s; jitter adds up to half of the base, still capped.
    assert_eq!(policy.wait_ms(1, 0.0), 1_000);
    assert_eq!(policy.wait_ms(1, 0.5), 1_250);
    assert_eq!(policy.wait_ms(1, 1.0), 1_500);
    assert_eq!(policy.wait_ms(2, 0.999), 2_999);
    assert_eq!(policy.wait_ms(3, 0.0), 4_000);
    assert_eq!(policy.wait_ms(3, 0.9), 5_000);
    assert_eq!(policy.wait_ms(4, 0.0), 5_000);
    assert_eq!(policy.wait_ms(30, 0.3), 5_000);
    for sample in [f64::NAN, -1.0, 7.0] {
        assert!(policy.wait_ms(1, sample) <= 1_500, "{sample}");
    }
    let step = next_step_jittered(&policy, 1, Outcome::Retryable { status: Some(500) }, None, 10_000, 1.0);
    assert_eq!(step, Step::RetryAt(11_500));
    // Retry-After is not capped by backoff-max (retryAfterMax caps it).
    let step = next_step_jittered(
        &policy,
        1,
        Outcome::Retryable { status: Some(503) },
        Some(RetryAfter::Seconds(20)),
        10_000,
        0.0,
    );
    assert_eq!(step, Step::RetryAt(30_000));
    assert_eq!(policy.backoff_ms(4), 8_000, "the schedule itself is unchanged");
}

#[test]
fn backoff_annotations_are_validated() {
    for (annotations, path) in [
        (json!({"sluice.dev/backoff-max": "soon"}), "metadata.annotations[sluice.dev/backoff-max]"),
        (json!({"sluice.dev/backoff-jitter": "2"}), "metadata.annotations[sluice.dev/backoff-jitter]"),
        (json!({"sluice.dev/backoff-jitter": 0.5}), "metadata.annotations[sluice.dev/backoff-jitter]"),
    ] {
        let mut policy = DeliveryPolicy::default();
        let error = policy.apply_annotations(annotations.as_object()).expect_err("invalid");
        assert_eq!(error.path(), path);
    }
    let mut policy = DeliveryPolicy::default();
    policy.apply_annotations(json!({"sluice.dev/backoff-max": "PT1M"}).as_object()).expect("iso");
    assert_eq!(policy.backoff_max_ms, Some(60_000));
    policy.apply_annotations(json!({"sluice.dev/backoff-max": "250ms"}).as_object()).expect("short");
    assert_eq!(policy.backoff_max_ms, Some(250));
}

proptest::proptest! {
    /// A wait is the schedule's backoff plus at most the jitter fraction of it, never above the cap or
    /// [`MAX_DELAY_MS`], and jitter never shortens it.
    #[test]
    fn backoff_and_jitter_stay_in_their_bounds(
        delay_ms in 0u64..100_000,
        exponential in proptest::bool::ANY,
        attempt in 1u32..80,
        jitter_permille in 0u32..=1000,
        sample in 0.0f64..1.0,
        cap in proptest::option::of(1u64..10_000_000),
    ) {
        let policy = DeliveryPolicy {
            backoff_delay_ms: delay_ms,
            backoff_policy: if exponential { BackoffPolicy::Exponential } else { BackoffPolicy::Linear },
            backoff_jitter_permille: jitter_permille,
            backoff_max_ms: cap,
            ..DeliveryPolicy::default()
        };
        let base = policy.backoff_ms(attempt);
        let wait = policy.wait_ms(attempt, sample);
        let ceiling = cap.unwrap_or(MAX_DELAY_MS).min(MAX_DELAY_MS);
        proptest::prop_assert!(base <= MAX_DELAY_MS);
        proptest::prop_assert!(wait <= ceiling);
        proptest::prop_assert!(wait >= base.min(ceiling), "jitter never shortens a wait");
        let most = base as f64 * (1.0 + f64::from(jitter_permille) / 1000.0);
        proptest::prop_assert!(wait as f64 <= most + 1.0);
        proptest::prop_assert!(policy.backoff_ms(attempt + 1) >= base, "the schedule never shrinks");
    }
}
