//! The event as Sluice keeps it: typed attributes (`specversion` included) and the data as it arrived; its
//! stored encoding (a format byte, then postcard); and its JSON format, with JSON data copied byte for byte.

use std::collections::BTreeMap;

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::media::{is_json_media_type, is_text_media_type};

/// An attribute's value as it arrived: binary mode gives strings, the JSON
/// format may give integers and booleans for extensions.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum AttrValue {
    String(String),
    Integer(i64),
    Boolean(bool),
}

impl AttrValue {
    /// Bytes of the value in the stored form beyond its tag and length (an integer's varint is counted by
    /// [`CloudEvent::stored_len_bound`]'s slack).
    fn stored_len(&self) -> usize {
        match self {
            AttrValue::String(s) => s.len(),
            AttrValue::Integer(_) | AttrValue::Boolean(_) => 0,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The canonical string form (what binary mode carries).
    pub fn to_canonical_string(&self) -> String {
        self.canonical().into_owned()
    }

    /// The canonical string form, borrowed where the value is a string (no copy per delivered attribute).
    pub fn canonical(&self) -> std::borrow::Cow<'_, str> {
        match self {
            AttrValue::String(s) => std::borrow::Cow::Borrowed(s),
            AttrValue::Integer(i) => std::borrow::Cow::Owned(i.to_string()),
            AttrValue::Boolean(b) => std::borrow::Cow::Owned(b.to_string()),
        }
    }
}

/// The event's data, kept byte for byte.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventData {
    /// Binary mode's body, or structured mode's decoded `data_base64`.
    Bytes(#[serde(deserialize_with = "crate::shared_bytes::deserialize")] Bytes),
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

    /// The stored form: a format byte, then postcard.
    pub fn encode(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut out = Vec::with_capacity(self.stored_len_bound());
        out.push(STORED_FORMAT_V1);
        postcard::to_extend(self, out)
    }

    /// At least as many bytes as [`CloudEvent::encode`] writes, so that it allocates once: an event grown
    /// from an empty buffer was reallocated and copied several times, then copied once more behind the
    /// format byte.
    pub(crate) fn stored_len_bound(&self) -> usize {
        // A varint length or tag takes at most 10 bytes; an integer attribute at most 10 more.
        const VARINT: usize = 10;
        let attributes: usize =
            self.attributes.iter().map(|(name, value)| 3 * VARINT + name.len() + value.stored_len()).sum();
        let data = match &self.data {
            None => 0,
            Some(EventData::Json(raw)) => raw.len(),
            Some(EventData::Bytes(bytes)) => bytes.len(),
        };
        1 + 4 * VARINT + attributes + data
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, postcard::Error> {
        match bytes.split_first() {
            Some((&STORED_FORMAT_V1, rest)) => postcard::from_bytes(rest),
            _ => Err(postcard::Error::DeserializeBadEncoding),
        }
    }

    /// [`CloudEvent::decode`], with binary data a slice of `stored` rather than a copy of it.
    pub fn decode_shared(stored: &Bytes) -> Result<Self, postcard::Error> {
        crate::shared_bytes::sharing(stored, Self::decode)
    }

    /// The event in the JSON format (structured mode), as text: attributes with their types, and the data
    /// exactly as it arrived (see [`CloudEvent::structured_data`]): JSON data is copied byte for byte, never
    /// re-parsed (so big numbers, `1e2` and the order of object keys survive).
    pub fn to_json_string(&self) -> String {
        let mut out = String::with_capacity(self.json_len_bound());
        self.write_json(&mut out);
        out
    }

    /// Appends [`CloudEvent::to_json_string`]'s text to `out`: a batch is written into one buffer.
    pub fn write_json(&self, out: &mut String) {
        self.write_json_without(out, None);
    }

    /// [`CloudEvent::write_json`] without the attribute `omitted` (one its sender keeps to itself).
    pub fn write_json_without(&self, out: &mut String, omitted: Option<&str>) {
        out.push('{');
        let mut first_member = true;
        let mut member = |out: &mut String, name: &str| {
            if !std::mem::take(&mut first_member) {
                out.push(',');
            }
            push_json_string(out, name);
            out.push(':');
        };
        for (name, value) in &self.attributes {
            if omitted == Some(name.as_str()) {
                continue;
            }
            member(out, name);
            match value {
                AttrValue::String(s) => push_json_string(out, s),
                // Writing into a String cannot fail.
                AttrValue::Integer(i) => {
                    let _ = std::fmt::Write::write_fmt(out, format_args!("{i}"));
                }
                AttrValue::Boolean(b) => out.push_str(if *b { "true" } else { "false" }),
            }
        }
        match self.structured_data() {
            Some(StructuredData::Json(raw)) => {
                member(out, "data");
                out.push_str(raw);
            }
            Some(StructuredData::Text(text)) => {
                member(out, "data");
                push_json_string(out, text);
            }
            Some(StructuredData::Base64(bytes)) => {
                // 0.3's JSON format has no `data_base64`: its bytes are a base64 string in `data`, said by
                // `datacontentencoding: base64`. Regression: `data_base64` was written for 0.3 too, which sdk-go's
                // 0.3 reader takes for an extension: the event arrived without data.
                let v03 = self.get_str("specversion") == Some("0.3");
                if v03 && !self.attributes.contains_key("datacontentencoding") {
                    member(out, "datacontentencoding");
                    out.push_str("\"base64\"");
                }
                member(out, if v03 { "data" } else { "data_base64" });
                // Base64's alphabet needs no escaping in a JSON string.
                out.push('"');
                base64::engine::general_purpose::STANDARD.encode_string(bytes, out);
                out.push('"');
            }
            None => {}
        }
        out.push('}');
    }

    /// At least as many bytes as [`CloudEvent::to_json_string`] writes (each character JSON escapes counted at
    /// its longest, `\u00XX`), without writing it: to fill a batch up to a size before encoding it. Bytes are
    /// scanned only when their content type may send them as text.
    pub fn json_len_bound(&self) -> usize {
        let escaped_bytes =
            |s: &[u8]| s.len() + 2 + 5 * s.iter().filter(|b| **b < 0x20 || **b == b'"' || **b == b'\\').count();
        let escaped = |s: &str| escaped_bytes(s.as_bytes());
        let attributes: usize = self
            .attributes
            .iter()
            .map(|(name, value)| {
                let value_len = match value {
                    AttrValue::String(s) => escaped(s),
                    AttrValue::Integer(_) | AttrValue::Boolean(_) => 20,
                };
                escaped(name) + 2 + value_len
            })
            .sum();
        // Bytes go as JSON, text or base64 by their content type and content (`structured_data`); the longest of
        // those their content type allows, without parsing them.
        let data = match &self.data {
            None => 0,
            Some(EventData::Json(raw)) => raw.len(),
            Some(EventData::Bytes(bytes)) => {
                let content_type = self.get_str("datacontenttype");
                let mut longest = bytes.len().div_ceil(3) * 4 + 2;
                if content_type.is_some_and(is_json_media_type) {
                    longest = longest.max(bytes.len());
                }
                if content_type.is_some_and(is_text_media_type) {
                    longest = longest.max(escaped_bytes(bytes));
                }
                longest
            }
        };
        // `,"data_base64":` (or `,"data":`), and 0.3's `,"datacontentencoding":"base64"` beside its bytes.
        let v03_encoding = if matches!(self.data, Some(EventData::Bytes(_))) { 32 } else { 0 };
        2 + attributes + 16 + v03_encoding + data
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

/// Appends `value` as a JSON string, escaped as serde_json escapes it (`"`, `\\`, the control characters; the
/// rest as is), without an intermediate string.
pub(crate) fn push_json_string(out: &mut String, value: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let mut unescaped_from = 0;
    for (i, byte) in value.bytes().enumerate() {
        let escape = match byte {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // An ASCII byte is always a character boundary.
        out.push_str(&value[unescaped_from..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        } else {
            out.push_str(escape);
        }
        unescaped_from = i + 1;
    }
    out.push_str(&value[unescaped_from..]);
    out.push('"');
}

const STORED_FORMAT_V1: u8 = 1;
