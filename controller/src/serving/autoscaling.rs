//! Knative's autoscaling knobs, resolved for one Revision: the `autoscaling.knative.dev/*` annotations of its
//! template over the cluster's defaults (the keys of Knative's `config-autoscaler` ConfigMap, given to each
//! node with `--autoscaler KEY=VALUE`), with Knative's bounds and defaults (`pkg/autoscaler/config`,
//! `pkg/apis/autoscaling/annotation_validation.go`), and `containerConcurrency` capping the target.
//!
//! What flows in: a template's annotations, its `containerConcurrency`, the cluster's [`AutoscalerDefaults`].
//! What flows out: [`Autoscaling`], every knob in its unit, or the [`FieldError`]s that name the annotation
//! and the rule (the same errors refuse the object at apply). Pure.
//!
//! Sluice's own knobs sit beside Knative's: `autoscaling.sluice.dev/backlog-target` (events waiting in the log
//! per instance, default 100, Knative's Kafka `lag-threshold` default) and
//! `autoscaling.sluice.dev/activation-backlog` (a revision at zero wakes when its backlog passes it; default
//! 0, strictly greater, as KEDA's activation threshold).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::fields::{FieldError, parse_duration};

pub const CLASS_ANNOTATION: &str = "autoscaling.knative.dev/class";
pub const METRIC_ANNOTATION: &str = "autoscaling.knative.dev/metric";
pub const TARGET_ANNOTATION: &str = "autoscaling.knative.dev/target";
pub const TARGET_UTILIZATION_ANNOTATION: &str = "autoscaling.knative.dev/target-utilization-percentage";
pub const WINDOW_ANNOTATION: &str = "autoscaling.knative.dev/window";
pub const PANIC_WINDOW_ANNOTATION: &str = "autoscaling.knative.dev/panic-window-percentage";
pub const PANIC_THRESHOLD_ANNOTATION: &str = "autoscaling.knative.dev/panic-threshold-percentage";
pub const MAX_SCALE_UP_RATE_ANNOTATION: &str = "autoscaling.knative.dev/max-scale-up-rate";
pub const MAX_SCALE_DOWN_RATE_ANNOTATION: &str = "autoscaling.knative.dev/max-scale-down-rate";
pub const MIN_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/min-scale";
pub const MAX_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/max-scale";
pub const INITIAL_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/initial-scale";
pub const ACTIVATION_SCALE_ANNOTATION: &str = "autoscaling.knative.dev/activation-scale";
pub const SCALE_DOWN_DELAY_ANNOTATION: &str = "autoscaling.knative.dev/scale-down-delay";
pub const POD_RETENTION_ANNOTATION: &str = "autoscaling.knative.dev/scale-to-zero-pod-retention-period";
pub const TARGET_BURST_CAPACITY_ANNOTATION: &str = "autoscaling.knative.dev/target-burst-capacity";
pub const AGGREGATION_ANNOTATION: &str = "autoscaling.knative.dev/metric-aggregation-algorithm";
/// Knative's earlier camelCase spellings, which Knative still reads (its `KeyPriority`s): an alias is read as
/// its key, and both spellings on one object are refused as ambiguous.
const ALIASES: [(&str, &str); 10] = [
    ("autoscaling.knative.dev/minScale", MIN_SCALE_ANNOTATION),
    ("autoscaling.knative.dev/maxScale", MAX_SCALE_ANNOTATION),
    ("autoscaling.knative.dev/initialScale", INITIAL_SCALE_ANNOTATION),
    ("autoscaling.knative.dev/scaleDownDelay", SCALE_DOWN_DELAY_ANNOTATION),
    ("autoscaling.knative.dev/targetUtilizationPercentage", TARGET_UTILIZATION_ANNOTATION),
    ("autoscaling.knative.dev/targetBurstCapacity", TARGET_BURST_CAPACITY_ANNOTATION),
    ("autoscaling.knative.dev/panicWindowPercentage", PANIC_WINDOW_ANNOTATION),
    ("autoscaling.knative.dev/panicThresholdPercentage", PANIC_THRESHOLD_ANNOTATION),
    ("autoscaling.knative.dev/metricAggregationAlgorithm", AGGREGATION_ANNOTATION),
    // KServe and older Knative releases write it so.
    ("autoscaling.knative.dev/scaleToZeroPodRetentionPeriod", POD_RETENTION_ANNOTATION),
];
pub const BACKLOG_TARGET_ANNOTATION: &str = "autoscaling.sluice.dev/backlog-target";
pub const ACTIVATION_BACKLOG_ANNOTATION: &str = "autoscaling.sluice.dev/activation-backlog";

/// The only class this autoscaler is (Knative's default).
pub const KPA_CLASS: &str = "kpa.autoscaling.knative.dev";

/// What the autoscaler counts per instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Metric {
    /// Requests in flight (and held), averaged over time.
    Concurrency,
    /// Requests completed per second.
    Rps,
}

/// Which signals decide: Sluice's one decision over both, or one of them alone, as Knative's KPA
/// (concurrency, with the dispatcher pushing its own window regardless of capacity) and KEDA (the backlog)
/// decide. A node setting (`signals=`), for comparisons; `both` unless told otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signals {
    Both,
    Concurrency,
    Backlog,
}

/// The cluster's defaults: Knative's `config-autoscaler` keys, same defaults, plus Sluice's.
#[derive(Clone, Debug, PartialEq)]
pub struct AutoscalerDefaults {
    pub container_concurrency_target_default: f64,
    pub container_concurrency_target_percentage: f64,
    pub requests_per_second_target_default: f64,
    pub target_burst_capacity: f64,
    pub stable_window_ms: u64,
    pub panic_window_percentage: f64,
    pub panic_threshold_percentage: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_period_ms: u64,
    pub scale_to_zero_pod_retention_period_ms: u64,
    pub scale_down_delay_ms: u64,
    pub initial_scale: u32,
    pub allow_zero_initial_scale: bool,
    pub min_scale: u32,
    /// 0: none.
    pub max_scale: u32,
    /// 0: none; a revision's `max-scale` may not exceed it.
    pub max_scale_limit: u32,
    /// Sluice: events waiting per instance.
    pub backlog_target: f64,
    /// Sluice: a revision at zero wakes when its backlog is above this.
    pub activation_backlog: u64,
    /// Sluice: how often a decision is taken (Knative's is fixed at 2 s). Metrics are kept in buckets of
    /// `min(1 s, tick)`.
    pub tick_interval_ms: u64,
    /// Sluice: which signals decide.
    pub signals: Signals,
}

impl Default for AutoscalerDefaults {
    fn default() -> Self {
        AutoscalerDefaults {
            container_concurrency_target_default: 100.0,
            container_concurrency_target_percentage: 70.0,
            requests_per_second_target_default: 200.0,
            target_burst_capacity: 211.0,
            stable_window_ms: 60_000,
            panic_window_percentage: 10.0,
            panic_threshold_percentage: 200.0,
            max_scale_up_rate: 1000.0,
            max_scale_down_rate: 2.0,
            enable_scale_to_zero: true,
            scale_to_zero_grace_period_ms: 30_000,
            scale_to_zero_pod_retention_period_ms: 0,
            scale_down_delay_ms: 0,
            initial_scale: 1,
            allow_zero_initial_scale: false,
            min_scale: 0,
            max_scale: 0,
            max_scale_limit: 0,
            backlog_target: 100.0,
            activation_backlog: 0,
            tick_interval_ms: 2_000,
            signals: Signals::Both,
        }
    }
}

fn number(key: &str, value: &str) -> Result<f64, String> {
    match value.trim().parse::<f64>() {
        Ok(n) if n.is_finite() => Ok(n),
        _ => Err(format!("{key}: {value:?} is not a number")),
    }
}

fn count(key: &str, value: &str) -> Result<u32, String> {
    let text = value.trim();
    match text.parse::<i64>() {
        Ok(n) if (0..=i64::from(i32::MAX)).contains(&n) => Ok(n as u32),
        Ok(n) => Err(format!("{key}: expected 0 <= {n} <= 2147483647")),
        // An integer too large for 64 bits is out of range, not "not an integer".
        Err(_) if is_integer_text(text) => Err(format!("{key}: expected 0 <= {text} <= 2147483647")),
        Err(_) => Err(format!("{key}: {value:?} is not an integer")),
    }
}

fn is_integer_text(text: &str) -> bool {
    let digits = text.strip_prefix(['-', '+']).unwrap_or(text);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// `expected LOW <= VALUE <= HIGH`, without the upper bound where there is none (`f64::MAX`, which `{}` prints
/// with 309 digits).
fn out_of_bounds(low: f64, value: f64, high: f64) -> String {
    if high == f64::MAX { format!("expected {low} <= {value}") } else { format!("expected {low} <= {value} <= {high}") }
}

/// Go's `time.ParseDuration`, which Knative reads its duration annotations and keys with: an optional sign,
/// then `0`, or numbers (with a fraction or not) each followed by a unit, `ns`, `us` (`µs`), `ms`, `s`, `m` or
/// `h` (`0`, `1h30m`, `1.5s`, `300ms`). In nanoseconds; None when it does not parse or is past Go's `int64`.
fn go_duration_ns(text: &str) -> Option<i128> {
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let number_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if (whole.is_empty() && fraction.is_empty()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let unit_end = after.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after.len());
        let (unit, tail) = after.split_at(unit_end);
        let scale: i128 = match unit {
            "ns" => 1,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
        let mut value = whole.checked_mul(scale)?;
        let mut place = scale;
        for digit in fraction.bytes() {
            place /= 10;
            value = value.checked_add(i128::from(digit - b'0') * place)?;
        }
        total = total.checked_add(value)?;
        rest = tail;
    }
    (total <= i128::from(i64::MAX)).then_some(if negative { -total } else { total })
}

/// A duration of an annotation or a `config-autoscaler` key in nanoseconds: Go's syntax, as Knative reads it
/// ([`go_duration_ns`]), or Sluice's lenient one besides (ISO 8601 `PT30S`, days: `parse_duration`).
fn duration_ns(text: &str) -> Result<i128, String> {
    if let Some(ns) = go_duration_ns(text.trim()) {
        return Ok(ns);
    }
    parse_duration(text).map(|d| i128::try_from(d.as_nanos()).unwrap_or(i128::MAX))
}

pub(crate) fn millis(key: &str, value: &str) -> Result<u64, String> {
    match duration_ns(value) {
        Ok(ns) if ns >= 0 => Ok(u64::try_from(ns / 1_000_000).unwrap_or(u64::MAX)),
        Ok(_) => Err(format!("{key}: {:?} is negative", value.trim())),
        Err(e) => Err(format!("{key}: {e}")),
    }
}

/// Knative's rule for a duration annotation (`annotation_validation.go`): its bounds in milliseconds, and whether
/// it must be whole seconds ("must be specified with at most second precision").
#[derive(Clone, Copy)]
struct DurationRule {
    low_ms: u64,
    high_ms: u64,
    whole_seconds: bool,
}

/// `window`: 6 s to 1 h, whole seconds.
const WINDOW_RULE: DurationRule = DurationRule { low_ms: 6_000, high_ms: 3_600_000, whole_seconds: true };
/// `scale-down-delay`: 0 to 1 h, whole seconds.
const SCALE_DOWN_DELAY_RULE: DurationRule = DurationRule { low_ms: 0, high_ms: 3_600_000, whole_seconds: true };
/// `scale-to-zero-pod-retention-period`: 0 to 1 h.
const RETENTION_RULE: DurationRule = DurationRule { low_ms: 0, high_ms: 3_600_000, whole_seconds: false };

/// Knative's `target-burst-capacity`: -1 (unlimited) or at least 0.
fn burst_capacity(key: &str, value: f64) -> Result<f64, String> {
    if value < -1.0 || (value > -1.0 && value < 0.0) {
        Err(format!("{key}: {value} must be -1 (unlimited) or at least 0"))
    } else {
        Ok(value)
    }
}

fn within(key: &str, low: f64, value: f64, high: f64) -> Result<f64, String> {
    if (low..=high).contains(&value) { Ok(value) } else { Err(format!("{key}: {}", out_of_bounds(low, value, high))) }
}

impl AutoscalerDefaults {
    /// Sets one `config-autoscaler` key (`stable-window=60s`, `max-scale-up-rate=1000`, ...).
    pub fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        let v = value;
        match key {
            "container-concurrency-target-default" => {
                self.container_concurrency_target_default = within(key, 0.01, number(key, v)?, f64::MAX)?
            }
            "container-concurrency-target-percentage" => {
                self.container_concurrency_target_percentage = within(key, 1.0, number(key, v)?, 100.0)?
            }
            "requests-per-second-target-default" => {
                self.requests_per_second_target_default = within(key, 0.01, number(key, v)?, f64::MAX)?
            }
            "target-burst-capacity" => self.target_burst_capacity = burst_capacity(key, number(key, v)?)?,
            // Sluice's nodes accept windows below Knative's 6 s for tests and demos; annotations keep the bounds.
            "stable-window" => {
                self.stable_window_ms = within(key, 100.0, millis(key, v)? as f64, 3_600_000.0)? as u64;
            }
            "panic-window-percentage" => self.panic_window_percentage = within(key, 1.0, number(key, v)?, 100.0)?,
            "panic-threshold-percentage" => {
                self.panic_threshold_percentage = within(key, 110.0, number(key, v)?, 1000.0)?
            }
            "max-scale-up-rate" => self.max_scale_up_rate = rate(key, number(key, v)?)?,
            "max-scale-down-rate" => self.max_scale_down_rate = rate(key, number(key, v)?)?,
            "enable-scale-to-zero" => self.enable_scale_to_zero = boolean(key, v)?,
            "allow-zero-initial-scale" => self.allow_zero_initial_scale = boolean(key, v)?,
            "scale-to-zero-grace-period" => self.scale_to_zero_grace_period_ms = millis(key, v)?,
            "scale-to-zero-pod-retention-period" => self.scale_to_zero_pod_retention_period_ms = millis(key, v)?,
            "scale-down-delay" => {
                self.scale_down_delay_ms = within(key, 0.0, millis(key, v)? as f64, 3_600_000.0)? as u64;
            }
            "initial-scale" => self.initial_scale = count(key, v)?,
            "min-scale" => self.min_scale = count(key, v)?,
            "max-scale" => self.max_scale = count(key, v)?,
            "max-scale-limit" => self.max_scale_limit = count(key, v)?,
            "backlog-target" => self.backlog_target = within(key, 1.0, number(key, v)?, f64::MAX)?,
            "activation-backlog" => self.activation_backlog = u64::from(count(key, v)?),
            "tick-interval" => {
                self.tick_interval_ms = within(key, 10.0, millis(key, v)? as f64, 60_000.0)? as u64;
            }
            "signals" => {
                self.signals = match v.trim() {
                    "both" => Signals::Both,
                    "concurrency" => Signals::Concurrency,
                    "backlog" => Signals::Backlog,
                    other => return Err(format!("signals: {other:?} is not both, concurrency or backlog")),
                }
            }
            other => return Err(format!("{other:?} is not a config-autoscaler key Sluice knows")),
        }
        if self.initial_scale == 0 && !self.allow_zero_initial_scale {
            return Err("initial-scale: 0 needs allow-zero-initial-scale=true".into());
        }
        if self.max_scale != 0 && self.max_scale < self.min_scale {
            return Err(format!("max-scale={} is less than min-scale={}", self.max_scale, self.min_scale));
        }
        Ok(())
    }

    /// The defaults with `KEY=VALUE` pairs applied in order.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut defaults = AutoscalerDefaults::default();
        for pair in pairs {
            let (key, value) = pair.split_once('=').ok_or_else(|| format!("{pair:?} is not KEY=VALUE"))?;
            defaults.set(key.trim(), value)?;
        }
        Ok(defaults)
    }
}

fn rate(key: &str, value: f64) -> Result<f64, String> {
    if value > 1.0 { Ok(value) } else { Err(format!("{key}: {value} must be greater than 1")) }
}

fn boolean(key: &str, value: &str) -> Result<bool, String> {
    match value.trim() {
        "true" => Ok(true),
        "false" => Ok(false),
        other => Err(format!("{key}: {other:?} is not true or false")),
    }
}

/// One revision's knobs, each in its unit.
#[derive(Clone, Debug, PartialEq)]
pub struct Autoscaling {
    pub metric: Metric,
    /// What one instance should carry (`total × utilization`, at least 0.01).
    pub target: f64,
    /// What one instance can carry at most (Knative's `TotalValue`: burst capacity is counted in it).
    pub total: f64,
    pub stable_window_ms: u64,
    pub panic_window_ms: u64,
    /// As a ratio (`panic-threshold-percentage / 100`).
    pub panic_threshold: f64,
    pub max_scale_up_rate: f64,
    pub max_scale_down_rate: f64,
    pub min_scale: u32,
    /// 0: none.
    pub max_scale: u32,
    pub initial_scale: u32,
    pub activation_scale: u32,
    pub scale_down_delay_ms: u64,
    pub enable_scale_to_zero: bool,
    pub scale_to_zero_grace_ms: u64,
    pub pod_retention_ms: u64,
    pub target_burst_capacity: f64,
    pub backlog_target: f64,
    pub activation_backlog: u64,
    pub tick_ms: u64,
    pub bucket_ms: u64,
    pub signals: Signals,
}

impl Autoscaling {
    /// The cluster's defaults alone (a revision without annotations).
    pub fn from_defaults(defaults: &AutoscalerDefaults, container_concurrency: u32) -> Self {
        resolve(&BTreeMap::new(), container_concurrency, defaults)
            .unwrap_or_else(|_| unreachable_defaults(defaults, container_concurrency))
    }
}

/// Validated defaults always resolve; this keeps the function total if they were built by hand wrongly.
fn unreachable_defaults(defaults: &AutoscalerDefaults, container_concurrency: u32) -> Autoscaling {
    let total = if container_concurrency > 0 { f64::from(container_concurrency) } else { 100.0 };
    Autoscaling {
        metric: Metric::Concurrency,
        target: (total * 0.7).max(0.01),
        total,
        stable_window_ms: 60_000,
        panic_window_ms: 6_000,
        panic_threshold: 2.0,
        max_scale_up_rate: 1000.0,
        max_scale_down_rate: 2.0,
        min_scale: 0,
        max_scale: 0,
        initial_scale: 1,
        activation_scale: 1,
        scale_down_delay_ms: 0,
        enable_scale_to_zero: defaults.enable_scale_to_zero,
        scale_to_zero_grace_ms: 30_000,
        pod_retention_ms: 0,
        target_burst_capacity: 211.0,
        backlog_target: 100.0,
        activation_backlog: 0,
        tick_ms: 2_000,
        bucket_ms: 1_000,
        signals: defaults.signals,
    }
}

/// The reason a Revision cannot run with the autoscaling its annotations ask for under a node's defaults (a
/// `max-scale` above its `max-scale-limit`, an `initial-scale` of 0 it does not allow).
pub const INVALID_AUTOSCALING: &str = "InvalidAutoscaling";

/// A stored Revision's knobs: its annotations and `containerConcurrency` over the node's `defaults`, or why it
/// cannot run with them, `(INVALID_AUTOSCALING, every annotation that breaks a rule)`: what the node that would
/// run it refuses, and what its status shows.
pub fn revision_autoscaling(revision: &Value, defaults: &AutoscalerDefaults) -> Result<Autoscaling, (String, String)> {
    let annotations: BTreeMap<String, String> = revision
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| a.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default();
    let container_concurrency = revision
        .pointer("/spec/containerConcurrency")
        .and_then(Value::as_u64)
        .map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX));
    resolve(&annotations, container_concurrency, defaults).map_err(|errors| {
        let broken: Vec<String> =
            errors.iter().map(|e| format!("metadata.annotations{}: {}", e.path, e.message)).collect();
        (INVALID_AUTOSCALING.to_string(), broken.join("; "))
    })
}

/// A revision's knobs from its annotations over the cluster's defaults, or every annotation that breaks a
/// rule (paths relative to the annotations: `[autoscaling.knative.dev/window]`).
pub fn resolve(
    annotations: &BTreeMap<String, String>,
    container_concurrency: u32,
    defaults: &AutoscalerDefaults,
) -> Result<Autoscaling, Vec<FieldError>> {
    let mut errors = Vec::new();
    // Each key as the object spells it, so that an error names what the user wrote.
    let mut spelled: BTreeMap<&str, &str> = BTreeMap::new();
    for (alias, key) in ALIASES {
        if annotations.contains_key(alias) {
            if annotations.contains_key(key) {
                errors.push(FieldError {
                    path: format!("[{alias}]"),
                    message: format!("expected exactly one, got both: {key} and its earlier spelling {alias}"),
                });
            } else {
                spelled.insert(key, alias);
            }
        }
    }
    let written = |key: &str| -> String { spelled.get(key).copied().unwrap_or(key).to_string() };
    let mut fail =
        |key: &str, message: String| errors.push(FieldError { path: format!("[{}]", written(key)), message });
    let get = |key: &str| {
        annotations.get(key).or_else(|| spelled.get(key).and_then(|alias| annotations.get(*alias))).map(String::as_str)
    };
    let num = |key: &str, low: f64, high: f64, default: f64, fail: &mut dyn FnMut(&str, String)| -> f64 {
        let Some(text) = get(key) else { return default };
        match text.trim().parse::<f64>() {
            Ok(n) if n.is_finite() && (low..=high).contains(&n) => n,
            Ok(n) if n.is_finite() => {
                fail(key, out_of_bounds(low, n, high));
                default
            }
            _ => {
                fail(key, format!("invalid value: {text:?} is not a number"));
                default
            }
        }
    };
    let int = |key: &str, low: u32, default: u32, fail: &mut dyn FnMut(&str, String)| -> u32 {
        let Some(text) = get(key) else { return default };
        match text.trim().parse::<i64>() {
            Ok(n) if (i64::from(low)..=i64::from(i32::MAX)).contains(&n) => n as u32,
            Ok(n) => {
                fail(key, format!("expected {low} <= {n} <= 2147483647"));
                default
            }
            Err(_) if is_integer_text(text.trim()) => {
                fail(key, format!("expected {low} <= {} <= 2147483647", text.trim()));
                default
            }
            Err(_) => {
                fail(key, format!("invalid value: {text:?} is not an integer"));
                default
            }
        }
    };
    let duration = |key: &str, rule: DurationRule, default: u64, fail: &mut dyn FnMut(&str, String)| -> u64 {
        let Some(text) = get(key) else { return default };
        let (low_ms, high_ms) = (rule.low_ms, rule.high_ms);
        match duration_ns(text) {
            Ok(ns) if !(i128::from(low_ms) * 1_000_000..=i128::from(high_ms) * 1_000_000).contains(&ns) => {
                fail(key, format!("expected {} <= {text} <= {}", show_ms(low_ms), show_ms(high_ms)));
                default
            }
            Ok(ns) if rule.whole_seconds && ns % 1_000_000_000 != 0 => {
                fail(key, "must be specified with at most second precision".into());
                default
            }
            Ok(ns) => u64::try_from(ns / 1_000_000).unwrap_or(default),
            Err(e) => {
                fail(key, format!("invalid value: {e}"));
                default
            }
        }
    };

    if let Some(class) = get(CLASS_ANNOTATION)
        && class != KPA_CLASS
    {
        fail(CLASS_ANNOTATION, format!("{class:?} is not supported: Sluice's autoscaler is {KPA_CLASS:?}"));
    }
    let metric = match get(METRIC_ANNOTATION) {
        None | Some("concurrency") => Metric::Concurrency,
        Some("rps") => Metric::Rps,
        Some(other) => {
            fail(
                METRIC_ANNOTATION,
                format!("invalid value: {other:?}: the {KPA_CLASS} class supports concurrency and rps"),
            );
            Metric::Concurrency
        }
    };
    if let Some(algorithm) = get(AGGREGATION_ANNOTATION)
        && algorithm != "linear"
    {
        fail(AGGREGATION_ANNOTATION, format!("invalid value: {algorithm:?}: Sluice averages windows linearly"));
    }
    let cc = f64::from(container_concurrency);
    let (default_total, default_utilization) = match metric {
        Metric::Concurrency => {
            (defaults.container_concurrency_target_default, defaults.container_concurrency_target_percentage)
        }
        Metric::Rps => (defaults.requests_per_second_target_default, 70.0),
    };
    let mut total = num(TARGET_ANNOTATION, 0.01, f64::MAX, default_total, &mut fail);
    if metric == Metric::Concurrency && container_concurrency > 0 {
        total = if get(TARGET_ANNOTATION).is_some() { total.min(cc) } else { cc };
    }
    let utilization = num(TARGET_UTILIZATION_ANNOTATION, 1.0, 100.0, default_utilization, &mut fail) / 100.0;
    // Knative's annotation bounds (6 s to 1 h) apply to annotations; a node's default may be shorter.
    let stable_window_ms = duration(WINDOW_ANNOTATION, WINDOW_RULE, defaults.stable_window_ms, &mut fail);
    let panic_percentage = num(PANIC_WINDOW_ANNOTATION, 1.0, 100.0, defaults.panic_window_percentage, &mut fail);
    let panic_threshold =
        num(PANIC_THRESHOLD_ANNOTATION, 110.0, 1000.0, defaults.panic_threshold_percentage, &mut fail) / 100.0;
    let max_scale_up_rate = num(MAX_SCALE_UP_RATE_ANNOTATION, 1.0, f64::MAX, defaults.max_scale_up_rate, &mut fail);
    let max_scale_down_rate =
        num(MAX_SCALE_DOWN_RATE_ANNOTATION, 1.0, f64::MAX, defaults.max_scale_down_rate, &mut fail);
    for (key, value) in
        [(MAX_SCALE_UP_RATE_ANNOTATION, max_scale_up_rate), (MAX_SCALE_DOWN_RATE_ANNOTATION, max_scale_down_rate)]
    {
        if get(key).is_some() && value <= 1.0 {
            fail(key, format!("{value} must be greater than 1"));
        }
    }
    let min_scale = int(MIN_SCALE_ANNOTATION, 0, defaults.min_scale, &mut fail);
    let max_scale = int(MAX_SCALE_ANNOTATION, 0, defaults.max_scale, &mut fail);
    // Knative's rules, on the annotations as written (`validateMinMaxScale`): a node's default on the other side
    // neither refuses an apply nor stops a stored revision when the nodes restart with it; where they cross, the
    // max wins, as Knative's scaler bounds the count (`decide` applies the max last).
    let written_count =
        |key: &str| get(key).and_then(|text| text.trim().parse::<i32>().ok()).and_then(|n| u32::try_from(n).ok());
    let (written_min, written_max) =
        (written_count(MIN_SCALE_ANNOTATION).unwrap_or(0), written_count(MAX_SCALE_ANNOTATION).unwrap_or(0));
    if written_max != 0 && written_max < written_min {
        fail(MAX_SCALE_ANNOTATION, format!("max-scale={written_max} is less than min-scale={written_min}"));
    }
    if defaults.max_scale_limit > 0
        && (max_scale == 0 || max_scale > defaults.max_scale_limit)
        && get(MAX_SCALE_ANNOTATION).is_some()
    {
        fail(
            MAX_SCALE_ANNOTATION,
            format!("expected 1 <= {max_scale} <= {} (max-scale-limit)", defaults.max_scale_limit),
        );
    }
    let initial_scale = int(INITIAL_SCALE_ANNOTATION, 0, defaults.initial_scale, &mut fail);
    if initial_scale == 0 && !defaults.allow_zero_initial_scale && get(INITIAL_SCALE_ANNOTATION).is_some() {
        fail(
            INITIAL_SCALE_ANNOTATION,
            format!("invalid value: 0: {INITIAL_SCALE_ANNOTATION}=0 not allowed by cluster"),
        );
    }
    let activation_scale = int(ACTIVATION_SCALE_ANNOTATION, 0, 1, &mut fail);
    // Knative's rules, on the annotations as written (a node's default `min-scale` does not count): min-scale <=
    // activation-scale <= max-scale, and above 1 (a revision at zero wakes to 1 without it).
    if let Some(activation) = written_count(ACTIVATION_SCALE_ANNOTATION) {
        let (min, max) = (written_min, written_max);
        let broken = if min > activation {
            Some(format!("min-scale={min} is greater than activation-scale={activation}"))
        } else if max != 0 && activation > max {
            Some(format!("max-scale={max} is less than activation-scale={activation}"))
        } else if activation < 2 {
            Some(format!("activation-scale={activation} must be greater than 1"))
        } else {
            None
        };
        if let Some(message) = broken {
            fail(ACTIVATION_SCALE_ANNOTATION, message);
        }
    }
    let scale_down_delay_ms =
        duration(SCALE_DOWN_DELAY_ANNOTATION, SCALE_DOWN_DELAY_RULE, defaults.scale_down_delay_ms, &mut fail);
    let pod_retention_ms =
        duration(POD_RETENTION_ANNOTATION, RETENTION_RULE, defaults.scale_to_zero_pod_retention_period_ms, &mut fail);
    let target_burst_capacity =
        num(TARGET_BURST_CAPACITY_ANNOTATION, -1.0, f64::MAX, defaults.target_burst_capacity, &mut fail);
    // Knative: -1 (unlimited) or at least 0; below -1 is out of bounds above.
    if target_burst_capacity > -1.0 && target_burst_capacity < 0.0 {
        fail(
            TARGET_BURST_CAPACITY_ANNOTATION,
            format!("invalid value: {target_burst_capacity}: -1 (unlimited) or at least 0"),
        );
    }
    let backlog_target = num(BACKLOG_TARGET_ANNOTATION, 1.0, f64::MAX, defaults.backlog_target, &mut fail);
    let activation_backlog = u64::from(int(
        ACTIVATION_BACKLOG_ANNOTATION,
        0,
        defaults.activation_backlog.min(u64::from(i32::MAX as u32)) as u32,
        &mut fail,
    ));
    if !errors.is_empty() {
        return Err(errors);
    }
    // Knative's panic window: a percentage of the stable window, at least one bucket (1 s).
    let bucket_ms = defaults.tick_interval_ms.clamp(10, 1_000);
    let panic_window_ms = ((stable_window_ms as f64 * panic_percentage / 100.0).round() as u64).max(bucket_ms);
    Ok(Autoscaling {
        metric,
        target: (total * utilization).max(0.01),
        total,
        stable_window_ms,
        panic_window_ms,
        panic_threshold,
        max_scale_up_rate,
        max_scale_down_rate,
        min_scale,
        max_scale,
        initial_scale,
        activation_scale,
        scale_down_delay_ms,
        enable_scale_to_zero: defaults.enable_scale_to_zero,
        scale_to_zero_grace_ms: defaults.scale_to_zero_grace_period_ms,
        pod_retention_ms,
        target_burst_capacity,
        backlog_target,
        activation_backlog,
        tick_ms: defaults.tick_interval_ms,
        bucket_ms,
        signals: defaults.signals,
    })
}

/// A duration as Go prints it (Knative's messages): `0s`, `6s`, `1h0m0s`, `1m30s`, `500ms`.
fn show_ms(ms: u64) -> String {
    if ms < 1_000 {
        return if ms == 0 { "0s".into() } else { format!("{ms}ms") };
    }
    let (hours, minutes, seconds) = (ms / 3_600_000, ms / 60_000 % 60, (ms % 60_000) as f64 / 1000.0);
    match (hours, minutes) {
        (0, 0) => format!("{seconds}s"),
        (0, m) => format!("{m}m{seconds}s"),
        (h, m) => format!("{h}h{m}m{seconds}s"),
    }
}

#[cfg(test)]
mod tests;
