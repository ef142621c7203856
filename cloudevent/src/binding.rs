//! The HTTP binding: an event from binary mode (`ce-` headers, `Content-Type`, body), structured mode (one JSON
//! object) or batched mode (a JSON array), and header values in both directions. Pure functions over bytes
//! and headers; the HTTP shells are the broker's ingress and the dispatcher's sender.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::limits::{AttributeLimits, attribute_header_bytes};
use crate::model::{AttrValue, CloudEvent, EventData, EventError};

// ---------------------------------------------------------------- binary mode

/// One `ce-` header value as an attribute value, taken as sent (docs/ingress.md, "Header values"): its bytes
/// as UTF-8, or, when they are not valid UTF-8, as ISO-8859-1 (what Python's `http.client` and `fetch` send
/// for `é`). No RFC 7230 unquoting and no percent-decoding: the Go SDK (and so Knative's brokers and
/// sources), the Java, JavaScript, Python 1.x and Rust SDKs send values unencoded and read them unencoded,
/// so `"whole"`, `100%` and `a%20b` are data. Control characters are refused.
pub fn decode_header_value(value: &[u8]) -> Result<String, &'static str> {
    if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
        return Err("header values must not contain control characters");
    }
    Ok(match std::str::from_utf8(value) {
        Ok(text) => text.to_string(),
        Err(_) => value.iter().map(|&b| char::from(b)).collect(),
    })
}

/// An attribute value as a `ce-` header value, for binary-mode delivery: its UTF-8 bytes, unencoded, as the
/// SDKs above send and read them, so that `decode_header_value(encode_header_value(v)) == v`. (HTTP trims
/// leading and trailing whitespace from field values: such values survive only in structured mode.)
pub fn encode_header_value(value: &str) -> &[u8] {
    value.as_bytes()
}

/// The attribute a `ce-` header carries, lower-cased (header names are case-insensitive); `None`, and nothing
/// allocated, for every other header of the request.
fn ce_attribute_name(header: &str) -> Option<String> {
    // A match is three ASCII bytes, so the name after it starts on a character boundary.
    crate::media::starts_with_ignore_case(header, "ce-").then(|| header["ce-".len()..].to_ascii_lowercase())
}

/// Binary mode: attributes from `ce-*` headers, `Content-Type` as
/// `datacontenttype`, the body as data.
pub fn from_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&[u8]>,
    body: Bytes,
) -> Result<CloudEvent, EventError> {
    let mut attributes = BTreeMap::new();
    for (name, value) in headers {
        let Some(attribute) = ce_attribute_name(name) else { continue };
        if attribute.is_empty() {
            return Err(EventError::bad("empty attribute header name").attribute("ce-").rule("ce-NAME"));
        }
        if attribute == "datacontenttype" {
            return Err(EventError::bad("ce-datacontenttype is not allowed in binary mode")
                .attribute("datacontenttype")
                .rule("binary mode carries datacontenttype in Content-Type"));
        }
        let decoded = decode_header_value(value)
            .map_err(|rule| EventError::bad("invalid header value").attribute(&attribute).rule(rule))?;
        match attributes.entry(attribute) {
            std::collections::btree_map::Entry::Vacant(vacant) => {
                vacant.insert(AttrValue::String(decoded));
            }
            std::collections::btree_map::Entry::Occupied(occupied) => {
                return Err(EventError::bad("attribute header given twice")
                    .attribute(occupied.key())
                    .rule("one ce- header per attribute"));
            }
        }
    }
    if !attributes.contains_key("specversion") {
        return Err(EventError::bad("missing required attribute")
            .attribute("specversion")
            .rule("binary mode needs a ce-specversion header; structured mode needs Content-Type application/cloudevents+json"));
    }
    if let Some(content_type) = content_type {
        let text = std::str::from_utf8(content_type)
            .map_err(|_| EventError::bad("invalid Content-Type").attribute("datacontenttype").rule("must be ASCII"))?;
        attributes.insert("datacontenttype".into(), AttrValue::String(text.to_string()));
    }
    let event = CloudEvent { attributes, data: (!body.is_empty()).then_some(EventData::Bytes(body)) };
    event.validate()?;
    Ok(event)
}

// ------------------------------------------------------------ structured mode

/// Structured mode: one JSON object.
/// The rule for an attribute sent as a number that is no 32-bit integer: an extension's (any integer attribute's)
/// is the integer range, a context attribute's its own type. `"specversion": 1.0` was told that numbers are
/// 32-bit integers, and sent again as `1` it was told it must be a string.
fn number_rule(attribute: &str) -> &'static str {
    match attribute {
        "specversion" => "must be a string, such as \"1.0\"",
        "id" | "type" | "subject" => "must be a string",
        "source" => "must be a URI-reference",
        "dataschema" => "must be a URI",
        "datacontenttype" => "must be an RFC 2046 media type",
        "time" => "must be an RFC 3339 timestamp",
        _ => "numbers are 32-bit integers",
    }
}

pub fn from_structured(body: &[u8]) -> Result<CloudEvent, EventError> {
    from_structured_within(body, &AttributeLimits::UNLIMITED)
}

/// Structured mode, the event's attributes held to `limits` as the object is read: an object of 100,000 tiny
/// members is refused at the first one past the limit, not once all are parsed. (The count and bytes of
/// what is sent; [`AttributeLimits::check`] counts what the broker adds on top.)
pub fn from_structured_within(body: &[u8], limits: &AttributeLimits) -> Result<CloudEvent, EventError> {
    let text = std::str::from_utf8(body).map_err(|e| EventError::bad("body is not valid UTF-8").rule(e.to_string()))?;
    let raw: Box<RawValue> =
        serde_json::from_str(text).map_err(|e| EventError::bad("malformed JSON").rule(e.to_string()))?;
    from_json_object(&raw, limits)
}

/// Batched mode: a JSON array of events; all valid or the whole batch is refused.
pub fn from_batch(body: &[u8], max_events: usize) -> Result<Vec<CloudEvent>, EventError> {
    from_batch_within(body, max_events, &AttributeLimits::UNLIMITED)
}

/// Batched mode, each event's attributes held to `limits` as it is read (see [`from_structured_within`]). Every
/// event must have the first one's `specversion` (HTTP binding §3.3: "All batched CloudEvents MUST have the
/// same specversion attribute"); an error names the `index` of its event.
pub fn from_batch_within(
    body: &[u8],
    max_events: usize,
    limits: &AttributeLimits,
) -> Result<Vec<CloudEvent>, EventError> {
    let text = std::str::from_utf8(body).map_err(|e| EventError::bad("body is not valid UTF-8").rule(e.to_string()))?;
    let too_many = || {
        EventError::bad("batch has too many events").rule(format!("at most {max_events} events per batch")).status(413)
    };
    // One pass: each item is split into its members and made an event as the array is read; an event's refusal
    // is kept aside (with its index) while serde unwinds.
    let mut refused = None;
    let visitor = BatchVisitor { max: max_events, limits, refused: &mut refused };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let events = serde::Deserializer::deserialize_seq(&mut deserializer, visitor)
        .and_then(|events| deserializer.end().map(|()| events));
    match (events, refused) {
        (Ok(events), _) => Ok(events),
        (Err(_), Some(refusal)) => Err(refusal),
        (Err(e), None) if e.to_string().starts_with(TOO_MANY_ITEMS) => Err(too_many()),
        (Err(e), None) if text.trim_start().starts_with('[') => {
            Err(EventError::bad("malformed JSON").rule(e.to_string()))
        }
        (Err(_), None) => Err(EventError::bad("a batch must be a JSON array")
            .rule("application/cloudevents-batch+json is an array of events")),
    }
}

/// The start of the error that stops reading a batch past its limit.
const TOO_MANY_ITEMS: &str = "more items than the limit";
/// The error that stops reading a batch at an event refused (the refusal itself is in [`BatchVisitor::refused`]).
const EVENT_REFUSED: &str = "an event of the batch was refused";

/// A batch's events, read no further than `max` + 1 items (a 4 MiB body of tiny events is refused at the first
/// past the limit, not once tens of thousands are made) and no further than the first item refused.
struct BatchVisitor<'r, 'l> {
    max: usize,
    limits: &'l AttributeLimits,
    refused: &'r mut Option<EventError>,
}

impl BatchVisitor<'_, '_> {
    fn refuse<E: serde::de::Error>(&mut self, refusal: EventError, index: usize) -> E {
        *self.refused = Some(refusal.at_index(index));
        E::custom(EVENT_REFUSED)
    }
}

impl<'de> serde::de::Visitor<'de> for BatchVisitor<'_, '_> {
    type Value = Vec<CloudEvent>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON array of events")
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut events: Vec<CloudEvent> = Vec::new();
        loop {
            let index = events.len();
            if index == self.max {
                return match seq.next_element::<serde::de::IgnoredAny>()? {
                    Some(_) => Err(serde::de::Error::custom(TOO_MANY_ITEMS)),
                    None => Ok(events),
                };
            }
            let seed = MembersVisitor { limits: self.limits, _members: std::marker::PhantomData };
            let members = match seq.next_element_seed(seed) {
                Ok(Some(members)) => members,
                Ok(None) => return Ok(events),
                Err(e) => {
                    let message = e.to_string();
                    return Err(match members_refusal(&message, self.limits) {
                        Some(refusal) => self.refuse(refusal, index),
                        None if message.starts_with("invalid type") => self.refuse(not_an_object(), index),
                        None => e,
                    });
                }
            };
            let event = match event_from_members(members) {
                Ok(event) => event,
                Err(refusal) => return Err(self.refuse(refusal, index)),
            };
            if let Some(first) = events.first()
                && event.spec_version() != first.spec_version()
            {
                let refusal = EventError::bad("a batch mixes spec versions").attribute("specversion").rule(format!(
                    "every event of a batch has the same specversion (the first has {:?}, this one {:?})",
                    first.spec_version(),
                    event.spec_version()
                ));
                return Err(self.refuse(refusal, index));
            }
            events.push(event);
        }
    }
}

/// The starts of the errors that stop reading an event past its [`AttributeLimits`].
const TOO_MANY_ATTRIBUTES: &str = "more attributes than the limit";
/// Starts the message of a member given twice, which goes on with the member's name.
const REPEATED_MEMBER: &str = "member given twice: ";
const ATTRIBUTES_TOO_LARGE: &str = "more bytes of attributes than the limit";

/// An object's members as written, refusing a member named twice: JSON leaves its meaning open and parsers keep
/// the first or the last, so two readers of one event (Sluice's dedupe, a subscriber) could see two ids.
struct Members<'a>(Vec<(String, &'a RawValue)>);

/// Reads an event's object into [`Members`], counting its attributes (members other than `data`,
/// `data_base64` and `null` ones) as they come and stopping at the first past `limits`.
struct MembersVisitor<'a, 'l> {
    limits: &'l AttributeLimits,
    _members: std::marker::PhantomData<&'a ()>,
}

/// As a seed, it reads an array's item in place (a batch's events in the pass that reads the array).
impl<'de: 'a, 'a> serde::de::DeserializeSeed<'de> for MembersVisitor<'a, '_> {
    type Value = Members<'a>;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Members<'a>, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de: 'a, 'a> serde::de::Visitor<'de> for MembersVisitor<'a, '_> {
    type Value = Members<'a>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'a>, A::Error> {
        let mut members: Vec<(String, &'a RawValue)> = Vec::new();
        let (mut attributes, mut bytes) = (0usize, 0usize);
        while let Some(name) = map.next_key::<String>()? {
            let value: &'a RawValue = map.next_value()?;
            if !matches!(name.as_str(), "data" | "data_base64") && value.get().trim() != "null" {
                // Never more than the later check counts (AttributeLimits::check), so that both refuse alike:
                // `knativearrivaltime` is replaced on arrival by a value of ARRIVAL_TIME_LEN bytes.
                let mut value_len = canonical_len(value);
                if name == "knativearrivaltime" {
                    value_len = value_len.min(crate::knative::ARRIVAL_TIME_LEN);
                }
                attributes += 1;
                bytes = bytes.saturating_add(attribute_header_bytes(&name, value_len));
                if attributes > self.limits.max_attributes {
                    return Err(serde::de::Error::custom(TOO_MANY_ATTRIBUTES));
                }
                if bytes > self.limits.max_bytes {
                    return Err(serde::de::Error::custom(ATTRIBUTES_TOO_LARGE));
                }
            }
            members.push((name, value));
        }
        // Checked once all are read, borrowing the names: nothing allocated per member on the ingress
        // path; a set past a few members, as a 1 MiB event can hold 100,000.
        let repeated = if members.len() <= 32 {
            members
                .iter()
                .enumerate()
                .find(|(i, (name, _))| members[..*i].iter().any(|(seen, _)| seen == name))
                .map(|(_, (name, _))| name)
        } else {
            let mut seen = std::collections::HashSet::with_capacity(members.len());
            members.iter().map(|(name, _)| name).find(|name| !seen.insert(name.as_str()))
        };
        if let Some(name) = repeated {
            return Err(serde::de::Error::custom(format!("{REPEATED_MEMBER}{name}")));
        }
        Ok(Members(members))
    }
}

/// The length of an attribute value's canonical string form ([`AttrValue::canonical`]) from its JSON text,
/// never more: exact for the values an attribute may have (strings, 32-bit integers, booleans), 0 for the
/// others (refused later for their type). Only a string with escapes is decoded.
pub(crate) fn canonical_len(value: &RawValue) -> usize {
    let text = value.get().trim();
    match text.as_bytes().first() {
        Some(b'"') if !text.contains('\\') => text.len().saturating_sub(2),
        Some(b'"') => serde_json::from_str::<String>(text).map_or(0, |s| s.len()),
        Some(b't' | b'f') => text.len(),
        _ => serde_json::from_str::<i64>(text).map_or(0, |i| i.to_string().len()),
    }
}

/// The text of a JSON string value that has no escapes, borrowed from the body (nothing to decode: the body
/// parsed, so it holds no raw control characters); `None` for any other value, which is parsed instead.
fn plain_json_string(value: &RawValue) -> Option<&str> {
    let text = value.get().trim();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    (!inner.contains('\\')).then_some(inner)
}

fn from_json_object(raw: &RawValue, limits: &AttributeLimits) -> Result<CloudEvent, EventError> {
    // `raw` is valid JSON already (the body parsed): one pass splits the object into its members, whose values
    // stay unparsed text borrowed from the body until each is read below (the data is never parsed).
    if !raw.get().trim_start().starts_with('{') {
        return Err(not_an_object());
    }
    let mut deserializer = serde_json::Deserializer::from_str(raw.get());
    let visitor = MembersVisitor { limits, _members: std::marker::PhantomData };
    let members = serde::Deserializer::deserialize_map(&mut deserializer, visitor)
        .and_then(|members| deserializer.end().map(|()| members))
        .map_err(|e| {
            let message = e.to_string();
            members_refusal(&message, limits).unwrap_or_else(|| EventError::bad("malformed JSON").rule(message))
        })?;
    event_from_members(members)
}

fn not_an_object() -> EventError {
    EventError::bad("an event must be a JSON object").rule("structured mode carries one JSON object")
}

/// The refusal [`MembersVisitor`] stopped reading an object for, from its error's message (`None`: not one of
/// its own, the JSON itself is at fault).
fn members_refusal(message: &str, limits: &AttributeLimits) -> Option<EventError> {
    if message.starts_with(TOO_MANY_ATTRIBUTES) {
        Some(limits.too_many())
    } else if message.starts_with(ATTRIBUTES_TOO_LARGE) {
        Some(limits.too_large())
    } else if let Some(name) = message.strip_prefix(REPEATED_MEMBER) {
        // serde_json adds " at line L column C" after the name.
        let name = name.rsplit_once(" at line ").map_or(name, |(name, _)| name);
        Some(
            EventError::bad("member given twice")
                .attribute(name)
                .rule("each member of an event once (parsers differ on which one they keep)"),
        )
    } else {
        None
    }
}

/// The event an object's members make: attributes typed, the data kept as it was written (JSON) or decoded
/// (`data_base64`), then validated.
fn event_from_members(Members(members): Members<'_>) -> Result<CloudEvent, EventError> {
    let mut attributes = BTreeMap::new();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in members {
        match name.as_str() {
            "data" => data = Some(value),
            // `null` is unset (JSON Event Format: "When decoding ... a null value is encountered, it MUST be
            // treated as the equivalent of unset or omitted"), beside `data` too; `data: null` stays data (§3.1.1).
            "data_base64" if value.get().trim() == "null" => {}
            "data_base64" => data_base64 = Some(value),
            _ => {
                if let Some(text) = plain_json_string(value) {
                    attributes.insert(name, AttrValue::String(text.to_string()));
                    continue;
                }
                // An array or object is refused from its first byte: parsed first, a batch's 4 MiB of `[[],[],…]`
                // built about a million values before its type was looked at.
                if value.get().trim_start().starts_with(['[', '{']) {
                    return Err(EventError::bad("attribute has the wrong type")
                        .attribute(name)
                        .rule("attributes are strings, integers or booleans"));
                }
                // The body is JSON already: what fails here is a value serde cannot hold (a number such as 1e400,
                // a string with an unpaired surrogate escape).
                let parsed: serde_json::Value = serde_json::from_str(value.get()).map_err(|e| {
                    let rule = if value.get().trim_start().starts_with('"') {
                        format!("strings are Unicode: no unpaired surrogate (\\uD800-\\uDFFF) ({e})")
                    } else {
                        format!("{} ({e})", number_rule(&name))
                    };
                    EventError::bad("attribute has the wrong type").attribute(&name).rule(rule)
                })?;
                let attribute = match parsed {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => AttrValue::String(s),
                    serde_json::Value::Bool(b) => AttrValue::Boolean(b),
                    serde_json::Value::Number(n) => match n.as_i64().filter(|i| i32::try_from(*i).is_ok()) {
                        Some(i) => AttrValue::Integer(i),
                        None => {
                            let rule = number_rule(&name);
                            return Err(EventError::bad("attribute has the wrong type").attribute(name).rule(rule));
                        }
                    },
                    _ => {
                        return Err(EventError::bad("attribute has the wrong type")
                            .attribute(name)
                            .rule("attributes are strings, integers or booleans"));
                    }
                };
                attributes.insert(name, attribute);
            }
        }
    }
    let data = match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(EventError::bad("data and data_base64 are both present")
                .attribute("data_base64")
                .rule("at most one of data and data_base64"));
        }
        (Some(raw), None) => Some(EventData::Json(raw.get().to_string())),
        (None, Some(raw)) => {
            let encoded: Option<std::borrow::Cow<'_, str>> = match plain_json_string(raw) {
                Some(text) => Some(std::borrow::Cow::Borrowed(text)),
                None => serde_json::from_str::<Option<String>>(raw.get())
                    .map_err(|_| {
                        EventError::bad("data_base64 must be a string").attribute("data_base64").rule("a base64 string")
                    })?
                    .map(std::borrow::Cow::Owned),
            };
            match encoded {
                None => None,
                Some(encoded) => Some(EventData::Bytes(Bytes::from(
                    base64::engine::general_purpose::STANDARD.decode(encoded.as_bytes()).map_err(|e| {
                        EventError::bad("data_base64 is not valid base64").attribute("data_base64").rule(e.to_string())
                    })?,
                ))),
            }
        }
        (None, None) => None,
    };
    let data = base64_data_of_v03(&mut attributes, data)?;
    let event = CloudEvent { attributes, data };
    event.validate()?;
    Ok(event)
}

/// A 0.3 event's `data` under `datacontentencoding: base64` is its bytes as a base64 string (0.3's JSON format has
/// no `data_base64`): decoded into the bytes, as every other event's binary data is kept, and the encoding, which
/// said how the JSON format carried them, dropped with it (the JSON format writes it again beside such bytes).
/// Regression: the string was kept as JSON text, and a binary-mode delivery sent the base64 text for the bytes.
fn base64_data_of_v03(
    attributes: &mut BTreeMap<String, AttrValue>,
    data: Option<EventData>,
) -> Result<Option<EventData>, EventError> {
    let string_attribute = |name: &str| match attributes.get(name) {
        Some(AttrValue::String(value)) => Some(value.as_str()),
        _ => None,
    };
    let encoded = string_attribute("specversion") == Some("0.3")
        && string_attribute("datacontentencoding").is_some_and(|e| e.eq_ignore_ascii_case("base64"));
    let Some(EventData::Json(raw)) = data.as_ref().filter(|_| encoded) else { return Ok(data) };
    let not_base64 = |reason: String| {
        EventError::bad("data is not a base64 string")
            .attribute("data")
            .rule(format!("with datacontentencoding: base64 (0.3), data is a base64 string ({reason})"))
    };
    let text: String = serde_json::from_str(raw).map_err(|e| not_base64(e.to_string()))?;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(text.as_bytes()).map_err(|e| not_base64(e.to_string()))?;
    attributes.remove("datacontentencoding");
    Ok(Some(EventData::Bytes(Bytes::from(bytes))))
}
