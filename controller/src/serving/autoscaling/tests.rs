use super::*;

fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn knatives_defaults_resolve_to_knatives_targets() {
    let defaults = AutoscalerDefaults::default();
    let none = resolve(&BTreeMap::new(), 0, &defaults).expect("defaults resolve");
    assert_eq!((none.metric, none.total, none.target), (Metric::Concurrency, 100.0, 70.0));
    assert_eq!((none.stable_window_ms, none.panic_window_ms, none.panic_threshold), (60_000, 6_000, 2.0));
    assert_eq!((none.max_scale_up_rate, none.max_scale_down_rate), (1000.0, 2.0));
    assert_eq!((none.min_scale, none.max_scale, none.initial_scale, none.activation_scale), (0, 0, 1, 1));
    assert_eq!((none.target_burst_capacity, none.scale_to_zero_grace_ms, none.tick_ms), (211.0, 30_000, 2_000));
    let cc4 = resolve(&BTreeMap::new(), 4, &defaults).expect("resolves");
    assert_eq!((cc4.total, cc4.target), (4.0, 4.0 * 0.7), "containerConcurrency is the total without a target");
    let capped = resolve(&annotations(&[(TARGET_ANNOTATION, "10")]), 4, &defaults).expect("resolves");
    assert_eq!(capped.total, 4.0, "containerConcurrency caps the target");
    let rps = resolve(&annotations(&[(METRIC_ANNOTATION, "rps")]), 4, &defaults).expect("resolves");
    assert_eq!((rps.metric, rps.total), (Metric::Rps, 200.0), "rps targets are not capped by containerConcurrency");
    let tuned = resolve(
        &annotations(&[
            (WINDOW_ANNOTATION, "20s"),
            (PANIC_WINDOW_ANNOTATION, "25"),
            (TARGET_UTILIZATION_ANNOTATION, "50"),
            (TARGET_ANNOTATION, "10"),
            (BACKLOG_TARGET_ANNOTATION, "40"),
            (ACTIVATION_BACKLOG_ANNOTATION, "5"),
        ]),
        0,
        &defaults,
    )
    .expect("resolves");
    assert_eq!((tuned.stable_window_ms, tuned.panic_window_ms, tuned.target), (20_000, 5_000, 5.0));
    assert_eq!((tuned.backlog_target, tuned.activation_backlog), (40.0, 5));
}

#[test]
fn knatives_earlier_camel_case_spellings_are_read_and_named_as_written() {
    let defaults = AutoscalerDefaults::default();
    let old = resolve(
        &annotations(&[
            ("autoscaling.knative.dev/minScale", "1"),
            ("autoscaling.knative.dev/maxScale", "5"),
            ("autoscaling.knative.dev/initialScale", "2"),
            ("autoscaling.knative.dev/scaleDownDelay", "15s"),
            ("autoscaling.knative.dev/targetUtilizationPercentage", "50"),
            ("autoscaling.knative.dev/scaleToZeroPodRetentionPeriod", "30s"),
        ]),
        0,
        &defaults,
    )
    .expect("resolves");
    assert_eq!((old.min_scale, old.max_scale, old.initial_scale), (1, 5, 2));
    assert_eq!((old.scale_down_delay_ms, old.target), (15_000, 50.0));
    assert_eq!(old.pod_retention_ms, 30_000, "KServe's spelling");

    let broken =
        resolve(&annotations(&[("autoscaling.knative.dev/maxScale", "-1")]), 0, &defaults).expect_err("refused");
    assert_eq!(broken[0].path, "[autoscaling.knative.dev/maxScale]", "{broken:?}");
    let both =
        resolve(&annotations(&[("autoscaling.knative.dev/minScale", "1"), (MIN_SCALE_ANNOTATION, "2")]), 0, &defaults)
            .expect_err("refused");
    assert_eq!(both[0].path, "[autoscaling.knative.dev/minScale]");
    assert!(both[0].message.contains("expected exactly one"), "{both:?}");
}

#[test]
fn every_broken_rule_is_named_by_its_annotation() {
    let cases: &[(&str, &str, &str)] = &[
        (WINDOW_ANNOTATION, "5s", "expected 6s <= 5s <= 1h"),
        (WINDOW_ANNOTATION, "soon", "invalid value"),
        (PANIC_WINDOW_ANNOTATION, "0", "expected 1 <= 0 <= 100"),
        (PANIC_THRESHOLD_ANNOTATION, "100", "expected 110 <= 100 <= 1000"),
        (TARGET_ANNOTATION, "0", "expected 0.01 <= 0"),
        (TARGET_UTILIZATION_ANNOTATION, "101", "expected 1 <= 101 <= 100"),
        (MIN_SCALE_ANNOTATION, "-1", "expected 0 <= -1"),
        (ACTIVATION_SCALE_ANNOTATION, "0", "activation-scale=0 must be greater than 1"),
        (ACTIVATION_SCALE_ANNOTATION, "1", "activation-scale=1 must be greater than 1"),
        (ACTIVATION_SCALE_ANNOTATION, "-1", "expected 0 <= -1"),
        (INITIAL_SCALE_ANNOTATION, "0", "not allowed by cluster"),
        (TARGET_BURST_CAPACITY_ANNOTATION, "-2", "expected -1 <= -2"),
        (TARGET_BURST_CAPACITY_ANNOTATION, "-0.5", "-1 (unlimited) or at least 0"),
        (WINDOW_ANNOTATION, "6500ms", "must be specified with at most second precision"),
        (WINDOW_ANNOTATION, "-10s", "expected 6s <= -10s <= 1h0m0s"),
        (SCALE_DOWN_DELAY_ANNOTATION, "1.5s", "must be specified with at most second precision"),
        (SCALE_DOWN_DELAY_ANNOTATION, "-1s", "expected 0s <= -1s <= 1h0m0s"),
        (SCALE_DOWN_DELAY_ANNOTATION, "5", "invalid value"),
        (SCALE_DOWN_DELAY_ANNOTATION, "2h", "expected 0s <= 2h <= 1h0m0s"),
        (MAX_SCALE_UP_RATE_ANNOTATION, "1", "must be greater than 1"),
        (METRIC_ANNOTATION, "cpu", "supports concurrency and rps"),
        (CLASS_ANNOTATION, "hpa.autoscaling.knative.dev", "is not supported"),
        (AGGREGATION_ANNOTATION, "weighted-exponential", "linearly"),
        (BACKLOG_TARGET_ANNOTATION, "0", "expected 1 <= 0"),
        // Regression: out of 64 bits, it was "not an integer".
        (MIN_SCALE_ANNOTATION, "99999999999999999999", "expected 0 <= 99999999999999999999 <= 2147483647"),
    ];
    for (key, value, message) in cases {
        let errors = resolve(&annotations(&[(key, value)]), 0, &AutoscalerDefaults::default())
            .expect_err(&format!("{key}={value} is refused"));
        assert_eq!(errors[0].path, format!("[{key}]"));
        assert!(errors[0].message.contains(message), "{key}={value}: {}", errors[0].message);
        // Regression: an unbounded rule printed `f64::MAX` as its upper bound, 309 digits.
        assert!(errors[0].message.len() < 200, "{key}={value}: {}", errors[0].message);
    }
    let errors = resolve(
        &annotations(&[(MIN_SCALE_ANNOTATION, "3"), (MAX_SCALE_ANNOTATION, "2"), (ACTIVATION_SCALE_ANNOTATION, "5")]),
        0,
        &AutoscalerDefaults::default(),
    )
    .expect_err("refused");
    assert_eq!(errors.len(), 2, "{errors:?}");
}

/// Regression: Knative reads its durations with Go's `time.ParseDuration`, which takes `0` with no unit
/// (`scale-down-delay: "0"` was refused), `1h30m`, fractions and `us`; and it checks `activation-scale`
/// against `min-scale` and refuses a `target-burst-capacity` between -1 and 0.
#[test]
fn knatives_go_durations_and_scale_rules_are_followed() {
    let cases = [
        ("0", Some(0)),
        ("+0", Some(0)),
        ("-0", Some(0)),
        ("0s", Some(0)),
        ("1h30m", Some(5_400_000_000_000)),
        ("1.5s", Some(1_500_000_000)),
        (".5s", Some(500_000_000)),
        ("1.s", Some(1_000_000_000)),
        ("300ms", Some(300_000_000)),
        ("2us", Some(2_000)),
        ("2\u{b5}s", Some(2_000)),
        ("7ns", Some(7)),
        ("-1m", Some(-60_000_000_000)),
        ("", None),
        ("-", None),
        ("5", None),
        ("s", None),
        (".s", None),
        ("1d", None),
        ("1.2.3s", None),
        ("PT1M", None),
        ("1 s", None),
        ("9999999999h", None),
        ("99999999999999999999999999999999999999999h", None),
    ];
    for (text, ns) in cases {
        assert_eq!(go_duration_ns(text), ns, "{text:?}");
    }
    let defaults = AutoscalerDefaults::default();
    let accepted = [
        (SCALE_DOWN_DELAY_ANNOTATION, "0"),
        (SCALE_DOWN_DELAY_ANNOTATION, "1m30s"),
        (POD_RETENTION_ANNOTATION, "1500ms"),
        (WINDOW_ANNOTATION, "6s"),
        (WINDOW_ANNOTATION, "PT10S"),
        (TARGET_BURST_CAPACITY_ANNOTATION, "-1"),
        (TARGET_BURST_CAPACITY_ANNOTATION, "0"),
        (ACTIVATION_SCALE_ANNOTATION, "2"),
    ];
    for (key, value) in accepted {
        assert!(resolve(&annotations(&[(key, value)]), 0, &defaults).is_ok(), "{key}={value}");
    }
    let delayed = resolve(&annotations(&[(SCALE_DOWN_DELAY_ANNOTATION, "0")]), 0, &defaults).expect("resolves");
    assert_eq!(delayed.scale_down_delay_ms, 0);
    let kept = resolve(&annotations(&[(POD_RETENTION_ANNOTATION, "1500ms")]), 0, &defaults).expect("resolves");
    assert_eq!(kept.pod_retention_ms, 1_500, "no second precision asked of the retention period");
    // (annotations, the activation-scale rule broken)
    let activation = [
        ([(MIN_SCALE_ANNOTATION, "3"), (ACTIVATION_SCALE_ANNOTATION, "2")], Some("min-scale=3 is greater")),
        ([(MAX_SCALE_ANNOTATION, "2"), (ACTIVATION_SCALE_ANNOTATION, "3")], Some("max-scale=2 is less")),
        ([(MIN_SCALE_ANNOTATION, "2"), (ACTIVATION_SCALE_ANNOTATION, "2")], None),
    ];
    for (pairs, broken) in activation {
        let outcome = resolve(&annotations(&pairs), 0, &defaults);
        let message = outcome.err().map(|errors| errors[0].message.clone());
        assert_eq!(message.as_deref().map(|m| m.split(" than").next().unwrap_or(m)), broken, "{pairs:?}");
    }
    // A node's own default min-scale is not the annotation Knative compares activation-scale with.
    let warm = AutoscalerDefaults::from_pairs(["min-scale=3"]).expect("valid");
    assert!(resolve(&annotations(&[(ACTIVATION_SCALE_ANNOTATION, "2")]), 0, &warm).is_ok());
    // Regression: nor do its min-scale and max-scale meet the other side's annotation. `--autoscaler max-scale=10`
    // refused a template's min-scale of 20 (naming a max-scale annotation nobody wrote), and a revision stored
    // before the flag stopped serving when the nodes restarted with it. Where they cross, the max bounds the count.
    let capped = AutoscalerDefaults::from_pairs(["max-scale=10"]).expect("valid");
    let resolved =
        resolve(&annotations(&[(MIN_SCALE_ANNOTATION, "20")]), 0, &capped).expect("a default is no annotation");
    assert_eq!((resolved.min_scale, resolved.max_scale), (20, 10));
    let floored = AutoscalerDefaults::from_pairs(["min-scale=2"]).expect("valid");
    let resolved =
        resolve(&annotations(&[(MAX_SCALE_ANNOTATION, "1")]), 0, &floored).expect("a default is no annotation");
    assert_eq!((resolved.min_scale, resolved.max_scale), (2, 1));
    let crossed = resolve(&annotations(&[(MIN_SCALE_ANNOTATION, "3"), (MAX_SCALE_ANNOTATION, "2")]), 0, &defaults);
    let message = crossed.err().map(|errors| errors[0].message.clone()).unwrap_or_default();
    assert_eq!(message, "max-scale=2 is less than min-scale=3", "both written: refused, as Knative does");
    for (pair, ok) in
        [("scale-down-delay=0", true), ("target-burst-capacity=-0.5", false), ("target-burst-capacity=-1", true)]
    {
        assert_eq!(AutoscalerDefaults::from_pairs([pair]).is_ok(), ok, "{pair}");
    }
}

#[test]
fn cluster_defaults_take_config_autoscaler_keys() {
    let defaults = AutoscalerDefaults::from_pairs([
        "stable-window=600ms",
        "scale-to-zero-grace-period=0s",
        "tick-interval=100ms",
        "max-scale-down-rate=4",
        "backlog-target=20",
    ])
    .expect("valid");
    let resolved = Autoscaling::from_defaults(&defaults, 0);
    assert_eq!((resolved.stable_window_ms, resolved.panic_window_ms, resolved.bucket_ms), (600, 100, 100));
    assert_eq!(
        (resolved.scale_to_zero_grace_ms, resolved.max_scale_down_rate, resolved.backlog_target),
        (0, 4.0, 20.0)
    );
    for bad in [
        "stable-window=2h",
        "max-scale-down-rate=1",
        "nope=1",
        "initial-scale=0",
        "min-scale",
        "enable-scale-to-zero=yes",
    ] {
        assert!(AutoscalerDefaults::from_pairs([bad]).is_err(), "{bad} is refused");
    }
    assert!(AutoscalerDefaults::from_pairs(["allow-zero-initial-scale=true", "initial-scale=0"]).is_ok());
}
