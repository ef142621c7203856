//! What the validation rules share, with no dependency of its own: the error that names a field, and the
//! syntaxes of names, durations and sizes that eventing and serving objects both use. The DeliverySpec's
//! durations and `sluice.dev/backoff-max` are parsed here for the dispatcher as well (it depends on this crate),
//! so that the validation and the consumer build cannot disagree on them.

use std::time::Duration;

/// One rule an object breaks, at one field (the whole object when `path` is empty).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

/// Kubernetes DNS-1123 label.
pub fn is_dns_label(s: &str) -> bool {
    s.len() <= 63 && is_dns_label_chars(s.as_bytes())
}

/// Kubernetes DNS-1123 subdomain (the API server's rule for most objects' names, Knative's eventing objects
/// among them): labels of lower-case letters, digits and '-' joined by '.', at most 253 characters in all.
pub fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|label| is_dns_label_chars(label.as_bytes()))
}

/// A label's characters, whatever its length: alphanumeric at both ends, '-' allowed between.
fn is_dns_label_chars(b: &[u8]) -> bool {
    !b.is_empty()
        && b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// Kubernetes' qualified name, the syntax of label and annotation keys: a name of at most 63 letters, digits, '-',
/// '_' and '.', starting and ending with a letter or digit, after an optional DNS-1123 subdomain prefix and '/'.
/// The rule `key` breaks, in the API server's words, else `None`.
pub fn qualified_name_error(key: &str) -> Option<String> {
    const NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an \
                             alphanumeric character (e.g. 'MyName', 'my.name' or '123-abc')";
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    match prefix {
        Some("") => return Some("prefix part must be non-empty".into()),
        Some(prefix) if !is_dns_subdomain(prefix) => {
            return Some(format!(
                "prefix part {prefix:?} must be a lowercase DNS-1123 subdomain (e.g. 'example.com'), at most 253 \
                 characters"
            ));
        }
        _ => {}
    }
    if name.is_empty() {
        Some("name part must be non-empty".into())
    } else if name.len() > 63 {
        Some(format!("name part must be no more than 63 characters (has {})", name.len()))
    } else if !is_label_value_chars(name.as_bytes()) {
        Some(format!("name part {NAME_RULE}"))
    } else {
        None
    }
}

/// Kubernetes' label value: empty, or at most 63 characters of a qualified name's name part. The rule broken,
/// else `None`.
pub fn label_value_error(value: &str) -> Option<String> {
    if value.len() > 63 {
        Some(format!("must be no more than 63 characters (has {})", value.len()))
    } else if !value.is_empty() && !is_label_value_chars(value.as_bytes()) {
        Some(
            "a label value must be empty or consist of alphanumeric characters, '-', '_' or '.', and must start and \
             end with an alphanumeric character"
                .into(),
        )
    } else {
        None
    }
}

fn is_label_value_chars(b: &[u8]) -> bool {
    let inner = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    matches!((b.first(), b.last()), (Some(first), Some(last)) if first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric())
        && b.iter().all(inner)
}

/// DNS-1035 label (Knative's revision names and traffic tags): like a DNS-1123 label, starting with a letter.
pub fn is_dns_1035_label(s: &str) -> bool {
    is_dns_label(s) && s.as_bytes()[0].is_ascii_lowercase()
}

/// Durations as people write them: `500ms`, `30s`, `2m`, `1h`, `1h30m`, or
/// ISO 8601 (`PT2M`, `PT0.5S`, `P1DT2H`). Lenient (`PT1.5M` passes), for the
/// annotations and flags the broker and the CLI read with it; never for the
/// DeliverySpec or `sluice.dev/backoff-max`, which the dispatcher reads with
/// the stricter [`DeliveryDuration::parse_ms`] and [`parse_backoff_max_ms`].
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Some(iso) = text.strip_prefix('P') {
        let (days, time) = match iso.split_once('T') {
            Some((days, time)) => (days, Some(time)),
            None => (iso, None),
        };
        let mut seconds = 0.0;
        if !days.is_empty() {
            seconds +=
                parse_units(days, &[("D", 86400.0), ("W", 604800.0)]).ok_or_else(|| iso_error(text))?.as_secs_f64();
        }
        if let Some(time) = time {
            seconds += parse_units(time, &[("H", 3600.0), ("M", 60.0), ("S", 1.0)])
                .ok_or_else(|| iso_error(text))?
                .as_secs_f64();
        }
        if days.is_empty() && time.is_none_or(str::is_empty) {
            return Err(iso_error(text));
        }
        return Duration::try_from_secs_f64(seconds).map_err(|_| iso_error(text));
    }
    parse_units(text, &[("ms", 0.001), ("d", 86400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)])
        .ok_or_else(|| format!("{text:?} is not a duration like 500ms, 30s, 2m or PT2M"))
}

fn iso_error(text: &str) -> String {
    format!("{text:?} is not an ISO 8601 duration like PT0.5S")
}

fn parse_units(mut text: &str, units: &[(&str, f64)]) -> Option<Duration> {
    if text.is_empty() {
        return None;
    }
    let mut seconds = 0.0f64;
    while !text.is_empty() {
        let number_len = text.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let number: f64 = text[..number_len].parse().ok()?;
        let rest = &text[number_len..];
        let (unit, factor) = units.iter().find(|(u, _)| rest.starts_with(u))?;
        seconds += number * factor;
        text = &rest[unit.len()..];
    }
    // `try_`: a duration past what `Duration` holds (PT99999999999999999999S) is refused, not a panic.
    Duration::try_from_secs_f64(seconds).ok()
}

/// A duration of a DeliverySpec (`backoffDelay`, `timeout`, `retryAfterMax`) or of the `sluice.dev/backoff-max`
/// annotation that Sluice refuses. The controller's validation and the dispatcher's consumer build parse these
/// with the same functions ([`DeliveryDuration::parse_ms`], [`parse_backoff_max_ms`]), so that an object the
/// controller stores as valid is one the dispatcher can deliver for: a value refused at consumer build only
/// would leave a Trigger Ready that never delivers. Each message states the rule after the value; the caller
/// puts the field path in front.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error(
        "{0:?} is not an ISO-8601 duration like PT30S, PT0.5S, PT1M or P1DT2H (PnWnDTnHnMnS: upper-case \
         designators, each after a whole number; the seconds may have a fraction)"
    )]
    Syntax(String),
    #[error("{0:?}: each unit may appear once, in the order W, D, then after T: H, M, S")]
    Order(String),
    #[error("{0:?}: years and months have no fixed length; use days (nD) or a time part (TnHnMnS)")]
    CalendarUnit(String),
    #[error("{0:?}: only the seconds may have a fraction (PT90S, not PT1.5M)")]
    Fraction(String),
    #[error("{0:?} is too long")]
    Overflow(String),
    #[error("{0:?}: a timeout must be greater than zero (at least PT0.001S)")]
    ZeroTimeout(String),
    #[error("{0:?} is not a duration: one whole number and one unit (250ms, 30s, 5m, 1h, 1d), or ISO 8601 (PT1M)")]
    ShortSyntax(String),
}

/// The duration fields of Knative's DeliverySpec, each an ISO-8601 duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryDuration {
    BackoffDelay,
    Timeout,
    RetryAfterMax,
}

impl DeliveryDuration {
    pub const ALL: [DeliveryDuration; 3] =
        [DeliveryDuration::BackoffDelay, DeliveryDuration::Timeout, DeliveryDuration::RetryAfterMax];

    /// The field's JSON name in the DeliverySpec.
    pub fn field(self) -> &'static str {
        match self {
            DeliveryDuration::BackoffDelay => "backoffDelay",
            DeliveryDuration::Timeout => "timeout",
            DeliveryDuration::RetryAfterMax => "retryAfterMax",
        }
    }

    /// The field's value in milliseconds: [`parse_iso_duration_ms`], and for `timeout` more than zero (a zero
    /// timeout would fail every attempt before it is sent). `backoffDelay` and `retryAfterMax` may be zero.
    pub fn parse_ms(self, text: &str) -> Result<u64, DurationError> {
        let ms = parse_iso_duration_ms(text)?;
        if self == DeliveryDuration::Timeout && ms == 0 {
            return Err(DurationError::ZeroTimeout(text.into()));
        }
        Ok(ms)
    }
}

const HOUR_MS: u64 = 3_600_000;

/// An ISO-8601 designator and the milliseconds one of it stands for.
type Designator = (char, u64);

/// Parses an ISO-8601 duration `PnDTnHnMnS` (also `nW`) into milliseconds, the grammar of the DeliverySpec's
/// durations. Any component may be omitted but at least one must be present, each at most once and in that
/// order, and `T` must be followed by a time component. Only the seconds may carry a fraction (`.` or `,`, with
/// digits on both sides: `PT0.5S`, not `PT.5S`), truncated to the millisecond; Knative accepts fractional
/// seconds too. Years and months are refused: their length depends on the calendar, and a delivery delay that
/// does is surely a mistake. No surrounding whitespace, no sign, upper-case designators only.
pub fn parse_iso_duration_ms(text: &str) -> Result<u64, DurationError> {
    let syntax = || DurationError::Syntax(text.into());
    let overflow = || DurationError::Overflow(text.into());
    let rest = text.strip_prefix('P').ok_or_else(syntax)?;
    let (date, time) = match rest.split_once('T') {
        Some((_, "")) => return Err(syntax()),
        Some((date, time)) => (date, Some(time)),
        None => (rest, None),
    };
    if date.is_empty() && time.is_none() {
        return Err(syntax());
    }

    let mut total_ms: u64 = 0;
    // Each part lists its designators in the only order ISO-8601 allows them, with their length in ms.
    let parts: [(&str, bool, &[Designator]); 2] = [
        (date, false, &[('W', 7 * 24 * HOUR_MS), ('D', 24 * HOUR_MS)]),
        (time.unwrap_or(""), true, &[('H', HOUR_MS), ('M', 60_000), ('S', 1_000)]),
    ];
    for (part, is_time, units) in parts {
        let mut remaining = part;
        let mut next_unit = 0;
        while !remaining.is_empty() {
            let end = remaining.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ',')).ok_or_else(syntax)?;
            let (number, after) = remaining.split_at(end);
            let mut chars = after.chars();
            let designator = chars.next().ok_or_else(syntax)?;
            remaining = chars.as_str();
            if !is_time && (designator == 'Y' || designator == 'M') {
                return Err(DurationError::CalendarUnit(text.into()));
            }
            let Some(position) = units[next_unit..].iter().position(|(d, _)| *d == designator) else {
                // A designator of this part that came already, or one that belongs before the last one.
                let seen = units[..next_unit].iter().any(|(d, _)| *d == designator);
                return Err(if seen { DurationError::Order(text.into()) } else { syntax() });
            };
            let unit_ms = units[next_unit + position].1;
            next_unit += position + 1;

            let (whole, fraction) = match number.split_once(['.', ',']) {
                Some((whole, fraction)) => (whole, Some(fraction)),
                None => (number, None),
            };
            if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
                return Err(syntax());
            }
            let whole: u64 = whole.parse().map_err(|_| overflow())?;
            let mut ms = whole.checked_mul(unit_ms).ok_or_else(overflow)?;
            if let Some(fraction) = fraction {
                if fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(syntax());
                }
                if !(is_time && designator == 'S') {
                    return Err(DurationError::Fraction(text.into()));
                }
                // Milliseconds: the first three digits of the fraction, the rest truncated.
                let millis = fraction
                    .bytes()
                    .chain(std::iter::repeat(b'0'))
                    .take(3)
                    .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'));
                ms = ms.checked_add(millis).ok_or_else(overflow)?;
            }
            total_ms = total_ms.checked_add(ms).ok_or_else(overflow)?;
        }
    }
    Ok(total_ms)
}

/// `sluice.dev/backoff-max` in milliseconds: an ISO-8601 duration ([`parse_iso_duration_ms`]) when it starts
/// with `P`, else one whole number and one unit, `250ms`, `30s`, `5m`, `1h` or `1d` (not `1h30m`, not `0.5s`).
/// Surrounding whitespace is ignored. Zero is allowed (every backoff wait is then zero).
pub fn parse_backoff_max_ms(text: &str) -> Result<u64, DurationError> {
    let text = text.trim();
    if text.starts_with('P') {
        return parse_iso_duration_ms(text);
    }
    let short = || DurationError::ShortSyntax(text.into());
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(short)?;
    let (number, unit) = text.split_at(split);
    let factor: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => HOUR_MS,
        "d" => 24 * HOUR_MS,
        _ => return Err(short()),
    };
    // `number` is digits only (possibly none, which does not parse): a parse error here is an overflow.
    if number.is_empty() {
        return Err(short());
    }
    let number: u64 = number.parse().map_err(|_| DurationError::Overflow(text.into()))?;
    number.checked_mul(factor).ok_or_else(|| DurationError::Overflow(text.into()))
}

/// Sizes like `10GiB`, `500MB`, `1024` (bytes).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let digits = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let number: u64 = text[..digits].parse().ok()?;
    let factor: u64 = match &text[digits..] {
        "" | "B" => 1,
        "KB" => 1000,
        "MB" => 1000u64.pow(2),
        "GB" => 1000u64.pow(3),
        "TB" => 1000u64.pow(4),
        "KiB" | "Ki" => 1 << 10,
        "MiB" | "Mi" => 1 << 20,
        "GiB" | "Gi" => 1 << 30,
        "TiB" | "Ti" => 1 << 40,
        _ => return None,
    };
    number.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: a rule of the whole object (its size) was shown with an empty path, `: the object is…`.
    #[test]
    fn a_field_error_names_its_path_and_a_whole_objects_has_none() {
        let at = |path: &str| FieldError { path: path.into(), message: "m".into() }.to_string();
        assert_eq!(at("spec.x"), "spec.x: m");
        assert_eq!(at(""), "m");
    }

    #[test]
    fn dns_names_follow_the_api_servers_rules() {
        let subdomain_253 = format!("{}.{}", "a".repeat(100), "b".repeat(152));
        let label_63 = "a".repeat(63);
        // (name, DNS-1123 label, DNS-1123 subdomain, DNS-1035 label)
        let cases: [(&str, bool, bool, bool); 16] = [
            ("default", true, true, true),
            ("my-broker", true, true, true),
            ("1events", true, true, false),
            (&label_63, true, true, true),
            (&"a".repeat(64), false, true, false),
            ("team-a.events", false, true, false),
            ("a.b.c", false, true, false),
            (&subdomain_253, false, true, false),
            (&format!("{subdomain_253}b"), false, false, false),
            ("", false, false, false),
            ("Default", false, false, false),
            ("my_broker", false, false, false),
            ("-a", false, false, false),
            ("a-", false, false, false),
            ("a..b", false, false, false),
            ("a.-b", false, false, false),
        ];
        for (name, label, subdomain, label_1035) in cases {
            assert_eq!(is_dns_label(name), label, "label {name:?}");
            assert_eq!(is_dns_subdomain(name), subdomain, "subdomain {name:?}");
            assert_eq!(is_dns_1035_label(name), label_1035, "1035 label {name:?}");
        }
    }

    #[test]
    fn qualified_names_and_label_values() {
        let name_63 = "n".repeat(63);
        let prefixed_max = format!("{}/{name_63}", "p".repeat(253));
        // (key, a qualified name, a label value)
        let cases: [(&str, bool, bool); 16] = [
            ("app", true, true),
            ("My_App.v1-2", true, true),
            ("example.com/name", true, false),
            (&prefixed_max, true, false),
            (&name_63, true, true),
            (&"n".repeat(64), false, false),
            ("", false, true),
            ("-a", false, false),
            ("a_", false, false),
            ("a b", false, false),
            ("Example.com/name", false, false),
            ("/name", false, false),
            ("example.com/", false, false),
            ("a/b/c", false, false),
            ("x.", false, false),
            ("ünï", false, false),
        ];
        for (key, qualified, label_value) in cases {
            assert_eq!(qualified_name_error(key).is_none(), qualified, "qualified name {key:?}");
            assert_eq!(label_value_error(key).is_none(), label_value, "label value {key:?}");
        }
    }

    #[test]
    fn iso_durations_parse_to_milliseconds() {
        let cases = [
            ("PT0.2S", 200),
            ("PT0,2S", 200),
            ("PT1S", 1_000),
            ("PT1.5S", 1_500),
            ("PT0.123456S", 123),
            ("PT0.0001S", 0),
            ("PT10.05S", 10_050),
            ("PT1M", 60_000),
            ("PT1H", 3_600_000),
            ("PT1H30M", 5_400_000),
            ("PT1H2M3.5S", 3_723_500),
            ("PT90S", 90_000),
            ("P1D", 86_400_000),
            ("P1DT2H", 93_600_000),
            ("P1DT2H3M4S", 93_784_000),
            ("P1W", 604_800_000),
            ("P1W1D", 691_200_000),
            ("P0D", 0),
            ("PT0S", 0),
        ];
        for (text, ms) in cases {
            assert_eq!(parse_iso_duration_ms(text), Ok(ms), "{text}");
        }
    }

    #[test]
    fn invalid_iso_durations_are_refused_with_their_rule() {
        let syntax = [
            "", "P", "PT", "T1S", "0.2S", "1S", "pt1s", "PT1s", "P1DT", "PT1", "P1", "PTS", "PT.5S", "PT1.S",
            "PT1..5S", "PT-1S", "PT+1S", "P-1D", "PT1D", "P1H", "P1S", "PT1W", " PT1S", "PT1S ", "PT1X", "P1DT1H T",
            "PT1HT1M", "PT1.5.5S", "30s", "1h30m",
        ];
        for text in syntax {
            assert_eq!(parse_iso_duration_ms(text), Err(DurationError::Syntax(text.into())), "{text:?}");
        }
        for text in ["PT1H1H", "PT1S1M", "PT30S1M", "PT1M1H", "P1D1W", "P1D1D"] {
            assert_eq!(parse_iso_duration_ms(text), Err(DurationError::Order(text.into())), "{text:?}");
        }
        for text in ["P1Y", "P1M", "P1Y2M3D", "P1MT1S"] {
            assert_eq!(parse_iso_duration_ms(text), Err(DurationError::CalendarUnit(text.into())), "{text:?}");
        }
        for text in ["PT1.5M", "PT0.5H", "P1.5D", "P0,5W"] {
            assert_eq!(parse_iso_duration_ms(text), Err(DurationError::Fraction(text.into())), "{text:?}");
        }
        for text in ["PT99999999999999999999S", "P999999999999999D", "PT18446744073709551615H"] {
            assert_eq!(parse_iso_duration_ms(text), Err(DurationError::Overflow(text.into())), "{text:?}");
        }
    }

    #[test]
    fn only_the_timeout_must_be_greater_than_zero() {
        let cases = [
            (DeliveryDuration::Timeout, "PT0S", Err(DurationError::ZeroTimeout("PT0S".into()))),
            (DeliveryDuration::Timeout, "PT0.0001S", Err(DurationError::ZeroTimeout("PT0.0001S".into()))),
            (DeliveryDuration::Timeout, "P0D", Err(DurationError::ZeroTimeout("P0D".into()))),
            (DeliveryDuration::Timeout, "PT0.001S", Ok(1)),
            (DeliveryDuration::BackoffDelay, "PT0S", Ok(0)),
            (DeliveryDuration::RetryAfterMax, "PT0S", Ok(0)),
            (DeliveryDuration::BackoffDelay, "PT1.5M", Err(DurationError::Fraction("PT1.5M".into()))),
        ];
        for (kind, text, expected) in cases {
            assert_eq!(kind.parse_ms(text), expected, "{} {text:?}", kind.field());
        }
    }

    #[test]
    fn backoff_max_takes_iso_or_one_number_and_one_unit() {
        let good = [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("1h", 3_600_000),
            ("1d", 86_400_000),
            ("0s", 0),
            (" 30s ", 30_000),
            ("PT1M", 60_000),
            ("PT0.5S", 500),
            (" PT1M", 60_000),
        ];
        for (text, ms) in good {
            assert_eq!(parse_backoff_max_ms(text), Ok(ms), "{text:?}");
        }
        for text in ["", "30", "s", "1h30m", "0.5s", "-5s", "+5s", "5 s", "5S", "5sec", "soon"] {
            assert_eq!(parse_backoff_max_ms(text), Err(DurationError::ShortSyntax(text.trim().into())), "{text:?}");
        }
        assert_eq!(parse_backoff_max_ms("PT1.5M"), Err(DurationError::Fraction("PT1.5M".into())));
        assert_eq!(parse_backoff_max_ms("PT30S1M"), Err(DurationError::Order("PT30S1M".into())));
        assert_eq!(
            parse_backoff_max_ms("99999999999999999999s"),
            Err(DurationError::Overflow("99999999999999999999s".into()))
        );
        assert_eq!(
            parse_backoff_max_ms("999999999999999999d"),
            Err(DurationError::Overflow("999999999999999999d".into()))
        );
    }

    #[test]
    fn duration_errors_state_the_value_and_the_rule() {
        let cases = [
            (
                DurationError::Fraction("PT1.5M".into()),
                "\"PT1.5M\": only the seconds may have a fraction (PT90S, not PT1.5M)",
            ),
            (
                DurationError::Order("PT30S1M".into()),
                "\"PT30S1M\": each unit may appear once, in the order W, D, then after T: H, M, S",
            ),
            (
                DurationError::ZeroTimeout("PT0S".into()),
                "\"PT0S\": a timeout must be greater than zero (at least PT0.001S)",
            ),
        ];
        for (error, message) in cases {
            assert_eq!(error.to_string(), message);
        }
        assert!(DurationError::Syntax("PT.5S".into()).to_string().starts_with("\"PT.5S\" is not an ISO-8601 duration"));
    }
}
