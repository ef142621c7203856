//! CloudEvents as Sluice stores them: parsing from the HTTP binding's binary,
//! structured and batched modes, validation against the CloudEvents spec
//! (1.0 and 0.3, each kept as sent), and the stored encoding.
//!
//! Pure functions over bytes and headers; the HTTP shell is `ingress`.
//! Every error names the attribute (or member, or batch index) and the rule.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// An attribute's value as it arrived: binary mode gives strings, the JSON
/// format may give integers and booleans for extensions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrValue {
    String(String),
    Integer(i64),
    Boolean(bool),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The canonical string form (what binary mode carries).
    pub fn to_canonical_string(&self) -> String {
        match self {
            AttrValue::String(s) => s.clone(),
            AttrValue::Integer(i) => i.to_string(),
            AttrValue::Boolean(b) => b.to_string(),
        }
    }
}

/// The event's data, kept byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventData {
    /// Binary mode's body, or structured mode's decoded `data_base64`.
    Bytes(Bytes),
    /// Structured mode's `data` member: its JSON text exactly as sent.
    Json(String),
}

/// A CloudEvent with every context attribute (`specversion` included) by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CloudEvent {
    pub attributes: BTreeMap<String, AttrValue>,
    pub data: Option<EventData>,
}

/// Why an event (or request) was refused; becomes a 4xx with a JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventError {
    pub status: u16,
    pub error: String,
    pub attribute: Option<String>,
    pub rule: Option<String>,
    pub index: Option<usize>,
}

impl EventError {
    pub fn bad(error: impl Into<String>) -> Self {
        Self { status: 400, error: error.into(), attribute: None, rule: None, index: None }
    }

    pub fn attribute(mut self, name: impl Into<String>) -> Self {
        self.attribute = Some(name.into());
        self
    }

    pub fn rule(mut self, rule: impl Into<String>) -> Self {
        self.rule = Some(rule.into());
        self
    }

    pub fn status(mut self, status: u16) -> Self {
        self.status = status;
        self
    }

    pub fn at_index(mut self, index: usize) -> Self {
        self.index = Some(index);
        self
    }

    pub fn to_json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({ "error": self.error });
        if let Some(attribute) = &self.attribute {
            body["attribute"] = attribute.clone().into();
        }
        if let Some(rule) = &self.rule {
            body["rule"] = rule.clone().into();
        }
        if let Some(index) = self.index {
            body["index"] = index.into();
        }
        body
    }
}

impl std::fmt::Display for EventError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.to_json())
    }
}

impl std::error::Error for EventError {}

pub const SPEC_VERSIONS: [&str; 2] = ["1.0", "0.3"];
const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

impl CloudEvent {
    pub fn get(&self, name: &str) -> Option<&AttrValue> {
        self.attributes.get(name)
    }

    pub fn get_str(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).and_then(AttrValue::as_str)
    }

    pub fn spec_version(&self) -> &str {
        self.get_str("specversion").unwrap_or_default()
    }

    /// Checks the event against the spec of its own `specversion`.
    pub fn validate(&self) -> Result<(), EventError> {
        for name in REQUIRED {
            match self.attributes.get(name) {
                None => return Err(EventError::bad("missing required attribute").attribute(name)),
                Some(AttrValue::String(s)) if s.is_empty() => {
                    return Err(EventError::bad("required attribute is empty")
                        .attribute(name)
                        .rule("must be a non-empty string"));
                }
                Some(AttrValue::String(_)) => {}
                Some(_) => {
                    return Err(EventError::bad("attribute has the wrong type")
                        .attribute(name)
                        .rule("must be a string"));
                }
            }
        }
        let version = self.spec_version();
        if !SPEC_VERSIONS.contains(&version) {
            return Err(EventError::bad("unsupported specversion").attribute("specversion").rule("must be 1.0 or 0.3"));
        }
        for (name, value) in &self.attributes {
            validate_attribute(version, name, value)?;
        }
        Ok(())
    }

    /// The stored form: a format byte, then postcard.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = vec![STORED_FORMAT_V1];
        out.extend(postcard::to_allocvec(self)?);
        Ok(out)
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        match bytes.split_first() {
            Some((&STORED_FORMAT_V1, rest)) => postcard::from_bytes(rest),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }

    /// The event in the JSON format (structured mode), as text: attributes with their types, and the data
    /// exactly as it arrived (see [`CloudEvent::structured_data`]): JSON data is copied byte for byte, never
    /// re-parsed (so big numbers, `1e2` and the order of object keys survive).
    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(128 + self.data_len());
        out.push('{');
        for (i, (name, value)) in self.attributes.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            push_json_string(&mut out, name);
            out.push(':');
            match value {
                AttrValue::String(s) => push_json_string(&mut out, s),
                AttrValue::Integer(i) => out.push_str(&i.to_string()),
                AttrValue::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            }
        }
        let member = |out: &mut String, name: &str| {
            if out.len() > 1 {
                out.push(',');
            }
            push_json_string(out, name);
            out.push(':');
        };
        match self.structured_data() {
            Some(StructuredData::Json(raw)) => {
                member(&mut out, "data");
                out.push_str(raw);
            }
            Some(StructuredData::Text(text)) => {
                member(&mut out, "data");
                push_json_string(&mut out, text);
            }
            Some(StructuredData::Base64(bytes)) => {
                member(&mut out, "data_base64");
                push_json_string(&mut out, &base64::engine::general_purpose::STANDARD.encode(bytes));
            }
            None => {}
        }
        out.push('}');
        out
    }

    fn data_len(&self) -> usize {
        match &self.data {
            Some(EventData::Bytes(bytes)) => bytes.len() * 4 / 3 + 4,
            Some(EventData::Json(text)) => text.len(),
            None => 0,
        }
    }

    /// How the data goes into the JSON format (JSON format spec §3.1, as the SDKs read it back):
    /// - JSON data (structured mode's `data`, or binary-mode bytes that are valid JSON under a JSON
    ///   `datacontenttype`) as the `data` member, byte for byte;
    /// - text (`text/*`, or a `charset=utf-8` parameter) that is valid UTF-8 as a JSON string in `data`;
    /// - anything else as `data_base64`.
    pub fn structured_data(&self) -> Option<StructuredData<'_>> {
        match &self.data {
            None => None,
            Some(EventData::Json(raw)) => Some(StructuredData::Json(raw)),
            Some(EventData::Bytes(bytes)) => {
                let content_type = self.get_str("datacontenttype");
                if content_type.is_some_and(is_json_media_type)
                    && serde_json::from_slice::<&RawValue>(bytes).is_ok()
                    && let Ok(text) = std::str::from_utf8(bytes)
                {
                    return Some(StructuredData::Json(text));
                }
                if content_type.is_some_and(is_text_media_type)
                    && let Ok(text) = std::str::from_utf8(bytes)
                {
                    return Some(StructuredData::Text(text));
                }
                Some(StructuredData::Base64(bytes))
            }
        }
    }

    /// The data as binary mode's HTTP body: bytes as stored; structured mode's JSON `data` as its text, except a
    /// JSON string under a non-JSON `datacontenttype` (`text/plain` data sent in structured mode), whose body is
    /// the string itself, as the SDKs write it.
    pub fn binary_body(&self) -> Bytes {
        match &self.data {
            None => Bytes::new(),
            Some(EventData::Bytes(bytes)) => bytes.clone(),
            Some(EventData::Json(raw)) => {
                let json_content = self.get_str("datacontenttype").is_none_or(is_json_media_type);
                if !json_content
                    && raw.trim_start().starts_with('"')
                    && let Ok(text) = serde_json::from_str::<String>(raw)
                {
                    return Bytes::from(text);
                }
                Bytes::from(raw.clone())
            }
        }
    }
}

/// The data of an event in the JSON format: see [`CloudEvent::structured_data`].
#[derive(Debug, PartialEq, Eq)]
pub enum StructuredData<'a> {
    /// JSON text, copied as the `data` member.
    Json(&'a str),
    /// Text, written as a JSON string in `data`.
    Text(&'a str),
    /// Bytes, written base64-encoded as `data_base64`.
    Base64(&'a [u8]),
}

fn push_json_string(out: &mut String, value: &str) {
    // Serialising a str into JSON cannot fail.
    out.push_str(&serde_json::to_string(value).unwrap_or_default());
}

const STORED_FORMAT_V1: u8 = 1;

fn is_valid_attribute_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Characters the CloudEvents String type excludes.
fn has_forbidden_chars(s: &str) -> bool {
    s.chars().any(|c| {
        let u = c as u32;
        u <= 0x1f || (0x7f..=0x9f).contains(&u) || (0xfdd0..=0xfdef).contains(&u) || (u & 0xfffe) == 0xfffe
    })
}

fn validate_attribute(version: &str, name: &str, value: &AttrValue) -> Result<(), EventError> {
    if !is_valid_attribute_name(name) {
        return Err(EventError::bad("invalid attribute name")
            .attribute(name)
            .rule("names are lower-case letters and digits: [a-z0-9]"));
    }
    let string_only = |rule: &str| -> Result<&str, EventError> {
        value
            .as_str()
            .ok_or_else(|| EventError::bad("attribute has the wrong type").attribute(name).rule(rule.to_string()))
    };
    if let AttrValue::String(s) = value
        && has_forbidden_chars(s)
    {
        return Err(EventError::bad("attribute contains a control character")
            .attribute(name)
            .rule("strings must not contain U+0000-U+001F or U+007F-U+009F"));
    }
    match name {
        "id" | "type" | "specversion" => {}
        "source" => {
            let s = string_only("must be a URI-reference")?;
            if !is_uri_reference(s) {
                return Err(EventError::bad("attribute is not a URI-reference")
                    .attribute(name)
                    .rule("RFC 3986 URI-reference"));
            }
        }
        "subject" => {
            let s = string_only("must be a string")?;
            if s.is_empty() {
                return Err(EventError::bad("attribute is empty")
                    .attribute(name)
                    .rule("must be a non-empty string when present"));
            }
        }
        "datacontenttype" => {
            let s = string_only("must be an RFC 2046 media type")?;
            if !is_media_type(s) {
                return Err(EventError::bad("attribute is not a media type")
                    .attribute(name)
                    .rule("RFC 2046 media type, e.g. application/json"));
            }
        }
        "dataschema" | "schemaurl" => {
            let s = string_only("must be a URI")?;
            let ok = if name == "dataschema" && version == "1.0" {
                is_absolute_uri(s)
            } else {
                is_uri_reference(s) && !s.is_empty()
            };
            if !ok {
                let rule = if name == "dataschema" { "RFC 3986 absolute URI" } else { "RFC 3986 URI-reference" };
                return Err(EventError::bad("attribute is not a URI").attribute(name).rule(rule));
            }
        }
        "time" => {
            let s = string_only("must be an RFC 3339 timestamp")?;
            if chrono::DateTime::parse_from_rfc3339(s).is_err() {
                return Err(EventError::bad("attribute is not an RFC 3339 timestamp")
                    .attribute(name)
                    .rule("RFC 3339, e.g. 2018-04-05T17:31:00Z"));
            }
        }
        "datacontentencoding" if version == "0.3" => {
            let s = string_only("must be a string")?;
            if !s.eq_ignore_ascii_case("base64") {
                return Err(EventError::bad("unsupported datacontentencoding").attribute(name).rule("must be base64"));
            }
        }
        _ => {}
    }
    Ok(())
}

/// RFC 3986 URI-reference: only URI characters and well-formed `%XX`, and a
/// valid scheme if there is one.
pub fn is_uri_reference(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            if i + 2 >= bytes.len() {
                return false;
            }
            if !(bytes[i + 1].is_ascii_hexdigit() && bytes[i + 2].is_ascii_hexdigit()) {
                return false;
            }
            i += 3;
            continue;
        }
        let allowed = b.is_ascii_alphanumeric() || b"-._~:/?#[]@!$&'()*+,;=".contains(&b);
        if !allowed {
            return false;
        }
        i += 1;
    }
    // A colon before any '/', '?' or '#' means a scheme, which must be well formed.
    let first_delim = s.find(['/', '?', '#']).unwrap_or(s.len());
    match s[..first_delim].find(':') {
        Some(colon) => is_scheme(&s[..colon]),
        None => true,
    }
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

pub fn is_absolute_uri(s: &str) -> bool {
    let first_delim = s.find(['/', '?', '#']).unwrap_or(s.len());
    is_uri_reference(s)
        && s[..first_delim].contains(':')
        && s.split_once(':').is_some_and(|(scheme, _)| is_scheme(scheme))
}

/// `type/subtype` with RFC 2045 token characters, optional `;param=value`s.
pub fn is_media_type(s: &str) -> bool {
    let mut parts = s.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let Some((kind, subtype)) = essence.split_once('/') else { return false };
    let token =
        |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b));
    token(kind)
        && token(subtype)
        && parts.all(|p| p.trim().is_empty() || p.split_once('=').is_some_and(|(k, _)| token(k.trim())))
}

/// The media type's `type/subtype`, lower-cased, and its charset if any.
pub fn media_essence(content_type: &str) -> (String, Option<String>) {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or_default().trim().to_ascii_lowercase();
    let charset = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim().eq_ignore_ascii_case("charset").then(|| v.trim().trim_matches('"').to_ascii_lowercase())
    });
    (essence, charset)
}

/// `text/*`, or any type that declares a UTF-8 charset.
pub fn is_text_media_type(content_type: &str) -> bool {
    let (essence, charset) = media_essence(content_type);
    essence.starts_with("text/") || charset.as_deref().is_some_and(|c| c == "utf-8" || c == "us-ascii")
}

pub fn is_json_media_type(content_type: &str) -> bool {
    let (essence, _) = media_essence(content_type);
    essence.split_once('/').is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}

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

/// Binary mode: attributes from `ce-*` headers, `Content-Type` as
/// `datacontenttype`, the body as data.
pub fn from_binary<'a>(
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    content_type: Option<&[u8]>,
    body: Bytes,
) -> Result<CloudEvent, EventError> {
    let mut attributes = BTreeMap::new();
    for (name, value) in headers {
        let lower = name.to_ascii_lowercase();
        let Some(attribute) = lower.strip_prefix("ce-") else { continue };
        if attribute.is_empty() {
            return Err(EventError::bad("empty attribute header name").attribute("ce-").rule("ce-NAME"));
        }
        if attribute == "datacontenttype" {
            return Err(EventError::bad("ce-datacontenttype is not allowed in binary mode")
                .attribute("datacontenttype")
                .rule("binary mode carries datacontenttype in Content-Type"));
        }
        let decoded = decode_header_value(value)
            .map_err(|rule| EventError::bad("invalid header value").attribute(attribute).rule(rule))?;
        if attributes.insert(attribute.to_string(), AttrValue::String(decoded)).is_some() {
            return Err(EventError::bad("attribute header given twice")
                .attribute(attribute)
                .rule("one ce- header per attribute"));
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
pub fn from_structured(body: &[u8]) -> Result<CloudEvent, EventError> {
    let text = std::str::from_utf8(body).map_err(|e| EventError::bad("body is not valid UTF-8").rule(e.to_string()))?;
    let raw: Box<RawValue> =
        serde_json::from_str(text).map_err(|e| EventError::bad("malformed JSON").rule(e.to_string()))?;
    from_json_object(&raw)
}

/// Batched mode: a JSON array of events; all valid or the whole batch is refused.
pub fn from_batch(body: &[u8], max_events: usize) -> Result<Vec<CloudEvent>, EventError> {
    let text = std::str::from_utf8(body).map_err(|e| EventError::bad("body is not valid UTF-8").rule(e.to_string()))?;
    let items: Vec<Box<RawValue>> = serde_json::from_str(text).map_err(|e| {
        if text.trim_start().starts_with('[') {
            EventError::bad("malformed JSON").rule(e.to_string())
        } else {
            EventError::bad("a batch must be a JSON array")
                .rule("application/cloudevents-batch+json is an array of events")
        }
    })?;
    if items.is_empty() {
        return Err(EventError::bad("empty batch").rule("a batch holds at least one event"));
    }
    if items.len() > max_events {
        return Err(EventError::bad("batch has too many events")
            .rule(format!("at most {max_events} events per batch, got {}", items.len()))
            .status(413));
    }
    items.iter().enumerate().map(|(i, raw)| from_json_object(raw).map_err(|e| e.at_index(i))).collect()
}

fn from_json_object(raw: &RawValue) -> Result<CloudEvent, EventError> {
    let members: Vec<(String, Box<RawValue>)> =
        match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()) {
            Ok(_) => serde_json::from_str::<BTreeMap<String, Box<RawValue>>>(raw.get())
                .map_err(|e| EventError::bad("malformed JSON").rule(e.to_string()))?
                .into_iter()
                .collect(),
            Err(_) => {
                return Err(
                    EventError::bad("an event must be a JSON object").rule("structured mode carries one JSON object")
                );
            }
        };
    let mut attributes = BTreeMap::new();
    let mut data = None;
    let mut data_base64 = None;
    for (name, value) in members {
        match name.as_str() {
            "data" => data = Some(value),
            "data_base64" => data_base64 = Some(value),
            _ => {
                let parsed: serde_json::Value = serde_json::from_str(value.get())
                    .map_err(|e| EventError::bad("malformed JSON").rule(e.to_string()))?;
                let attribute = match parsed {
                    serde_json::Value::Null => continue,
                    serde_json::Value::String(s) => AttrValue::String(s),
                    serde_json::Value::Bool(b) => AttrValue::Boolean(b),
                    serde_json::Value::Number(n) => match n.as_i64().filter(|i| i32::try_from(*i).is_ok()) {
                        Some(i) => AttrValue::Integer(i),
                        None => {
                            return Err(EventError::bad("attribute has the wrong type")
                                .attribute(name)
                                .rule("numbers are 32-bit integers"));
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
            let encoded: Option<String> = serde_json::from_str(raw.get()).map_err(|_| {
                EventError::bad("data_base64 must be a string").attribute("data_base64").rule("a base64 string")
            })?;
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
    let event = CloudEvent { attributes, data };
    event.validate()?;
    Ok(event)
}

/// FNV-1a 64: stable across builds and platforms (partition choice must never change).
pub fn stable_hash(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf29ce484222325;
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash ^= 0xff;
            hash = hash.wrapping_mul(0x100000001b3);
        }
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x100000001b3);
        }
    }
    hash
}

/// The partition of an event: `partitionkey` if set, else (`source`, `id`).
pub fn partition_of(event: &CloudEvent, partitions: u32) -> u32 {
    let hash = match event.get("partitionkey") {
        Some(key) => stable_hash(&[key.to_canonical_string().as_bytes()]),
        None => stable_hash(&[
            event.get_str("source").unwrap_or_default().as_bytes(),
            event.get_str("id").unwrap_or_default().as_bytes(),
        ]),
    };
    (hash % u64::from(partitions.max(1))) as u32
}

#[cfg(test)]
mod tests;
