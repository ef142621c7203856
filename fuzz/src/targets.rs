//! The fuzz targets: CESQL (parse, then evaluate what parses) and the CloudEvent parsers (structured and
//! batched JSON, with round trips through the JSON format and the stored encoding as oracles).

use sluice_cesql::{self as cesql, EventAttributes, Value};
use sluice_cloudevent::{CloudEvent, EventView};

/// Something to fuzz: bytes in, an outcome signature out; a panic (an oracle failing among them) is a finding.
pub trait Target {
    fn name(&self) -> &'static str;
    fn seeds(&self) -> Vec<Vec<u8>>;
    /// Tokens the mutator inserts (the grammar's words).
    fn dictionary(&self) -> Vec<&'static [u8]>;
    fn run(&self, input: &[u8]) -> String;
}

pub fn by_name(name: &str) -> Option<Box<dyn Target>> {
    match name {
        "cesql" => Some(Box::new(Cesql)),
        "event" => Some(Box::new(Event)),
        _ => None,
    }
}

pub struct Cesql;

fn sample_events() -> [serde_json::Map<String, serde_json::Value>; 2] {
    let event = |value: serde_json::Value| match value {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    };
    [
        event(serde_json::json!({"specversion": "1.0", "id": "1", "source": "/s", "type": "order.created",
                                 "subject": "a", "seq": 7, "flag": true, "big": 9_000_000_000u64})),
        event(serde_json::json!({"specversion": "1.0", "id": "", "source": "", "type": ""})),
    ]
}

fn type_of(value: &Value) -> &'static str {
    match value {
        Value::Boolean(_) => "bool",
        Value::Integer(_) => "int",
        Value::String(_) => "string",
    }
}

/// The kind of a message: its leading lower-case words (at most three), without the names, positions and
/// values that would make every message distinct (outcome signatures must stay few to mean anything).
fn kind_of(message: &str) -> String {
    message
        .split_whitespace()
        .take_while(|word| word.chars().all(|c| c.is_ascii_lowercase() || c == '-'))
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// An evaluation error's variant (`Math`, `Cast`, ...), not its message.
fn variant_of(error: &cesql::EvalError) -> String {
    format!("{error:?}").split('(').next().unwrap_or_default().to_string()
}

impl Target for Cesql {
    fn name(&self) -> &'static str {
        "cesql"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            "type = 'order.created'",
            "EXISTS subject AND subject LIKE 'a%'",
            "seq + 1 > 3 * 2 OR NOT flag",
            "type IN ('a', 'b', 'order.created')",
            "UPPER(type) = 'ORDER.CREATED' AND LENGTH(id) <> 0",
            "CONCAT_WS('-', type, subject) LIKE '%\\_%' ESCAPE '\\'",
            "INT('12') % 5 = -3 / 0",
            "BOOL('true') AND IS_INT(seq) XOR TRUE",
            "SUBSTRING(type, 1, 5) = 'order' AND ABS(-2147483648) > 0",
            "(((seq)))",
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn dictionary(&self) -> Vec<&'static [u8]> {
        vec![
            b" AND ",
            b" OR ",
            b" XOR ",
            b"NOT ",
            b" LIKE ",
            b" IN (",
            b"EXISTS ",
            b"(",
            b")",
            b"'",
            b"\\",
            b"%",
            b"_",
            b" = ",
            b" <> ",
            b" != ",
            b" <= ",
            b" >= ",
            b" + ",
            b" - ",
            b" * ",
            b" / ",
            b" % ",
            b"2147483647",
            b"-2147483648",
            b"99999999999",
            b"TRUE",
            b"FALSE",
            b"ABS(",
            b"INT(",
            b"BOOL(",
            b"STRING(",
            b"LENGTH(",
            b"CONCAT(",
            b"CONCAT_WS(",
            b"LOWER(",
            b"UPPER(",
            b"TRIM(",
            b"LEFT(",
            b"RIGHT(",
            b"SUBSTRING(",
            b"IS_BOOL(",
            b"IS_INT(",
            b"ESCAPE ",
            b", ",
            b"type",
            b"seq",
            b"big",
            b"\"",
            b"\xc3\xa9",
        ]
    }

    fn run(&self, input: &[u8]) -> String {
        let Ok(text) = std::str::from_utf8(input) else { return "not utf-8".into() };
        let expression = match cesql::parse(text) {
            Ok(expression) => expression,
            Err(e) => return format!("parse: {}", kind_of(&e.message)),
        };
        let mut signature = String::from("ok");
        for event in sample_events() {
            let (value, error) = expression.evaluate(&event as &dyn EventAttributes);
            // Filter semantics must agree with evaluation.
            assert_eq!(expression.matches(&event), value == Value::Boolean(true) && error.is_none(), "{text}");
            signature.push_str(&format!(
                " {}{}",
                type_of(&value),
                error.map(|e| format!("!{}", variant_of(&e))).unwrap_or_default()
            ));
        }
        signature
    }
}

pub struct Event;

fn event_error(e: &sluice_cloudevent::EventError) -> String {
    const CORE: [&str; 10] = [
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "dataschema",
        "datacontenttype",
        "data",
        "data_base64",
    ];
    let attribute = match e.attribute.as_deref() {
        Some(name) if CORE.contains(&name) => name,
        Some(_) => "extension",
        None => "-",
    };
    format!("{} {} {attribute}", e.status, kind_of(&e.error))
}

/// The oracles an accepted event must pass: the JSON format gives back the same attributes and the same
/// data bytes (the representation may change by design: text bytes under a `text/*` type are written as a
/// JSON string and read back as one; `binary_body` gives the same bytes either way), and writing it again is
/// a fixed point; the stored encoding gives it back whole.
fn round_trips(event: &CloudEvent) {
    let json = event.to_json_string();
    let again = sluice_cloudevent::from_structured(json.as_bytes())
        .unwrap_or_else(|e| panic!("the JSON format of an accepted event is refused: {e:?}: {json}"));
    assert_eq!(again.attributes, event.attributes, "JSON round trip: attributes");
    assert_eq!(again.binary_body(), event.binary_body(), "JSON round trip: data bytes");
    assert_eq!(again.to_json_string(), json, "JSON round trip: a fixed point");
    let stored = event.encode().unwrap_or_else(|e| panic!("an accepted event does not encode: {e}"));
    let decoded = CloudEvent::decode(&stored).unwrap_or_else(|e| panic!("an encoded event does not decode: {e}"));
    assert_eq!(&decoded, event, "stored encoding round trip");
    // Filters read it without panicking.
    let _ = EventView(event).attribute("type");
}

impl Target for Event {
    fn name(&self) -> &'static str {
        "event"
    }

    fn seeds(&self) -> Vec<Vec<u8>> {
        [
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t"}"#,
            r#"{"specversion":"1.0","id":"1","source":"https://x/y?z#f","type":"t","subject":"s","time":"2024-02-29T23:59:60.123456789+01:00","datacontenttype":"application/json","data":{"a":[1,2.5,null,"\u00e9"]},"ext1":7,"ext2":true}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","datacontenttype":"text/plain","data":"hi"}"#,
            r#"{"specversion":"1.0","id":"1","source":"/s","type":"t","data_base64":"AAECAwQ="}"#,
            r#"{"specversion":"0.3","id":"1","source":"/s","type":"t","datacontentencoding":"base64","data":"AA=="}"#,
            r#"[{"specversion":"1.0","id":"1","source":"/s","type":"t"},{"specversion":"1.0","id":"2","source":"/s","type":"t","data":null}]"#,
        ]
        .iter()
        .map(|s| s.as_bytes().to_vec())
        .collect()
    }

    fn dictionary(&self) -> Vec<&'static [u8]> {
        vec![
            b"\"specversion\":",
            b"\"id\":",
            b"\"source\":",
            b"\"type\":",
            b"\"time\":",
            b"\"data\":",
            b"\"data_base64\":",
            b"\"datacontenttype\":",
            b"\"dataschema\":",
            b"\"subject\":",
            b"\"1.0\"",
            b"null",
            b"true",
            b"1e400",
            b"-0",
            b"2147483648",
            b"{",
            b"}",
            b"[",
            b"]",
            b",",
            b"\\u0000",
            b"\\ud800",
            b"\"",
            b"\xef\xbb\xbf",
            b"\"application/json\"",
            b"\"text/plain; charset=utf-8\"",
            b"\"2024-01-01T00:00:00Z\"",
        ]
    }

    fn run(&self, input: &[u8]) -> String {
        let structured = match sluice_cloudevent::from_structured(input) {
            Ok(event) => {
                round_trips(&event);
                "ok".to_string()
            }
            Err(e) => event_error(&e),
        };
        let batch = match sluice_cloudevent::from_batch(input, 100) {
            Ok(events) => {
                events.iter().for_each(round_trips);
                format!("ok{}", events.len().min(3))
            }
            Err(e) => event_error(&e),
        };
        format!("{structured} | {batch}")
    }
}
