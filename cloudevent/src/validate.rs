//! Validation against the CloudEvents spec of the event's own `specversion` (1.0 and 0.3): attribute names,
//! the types and formats of the context attributes, media types and URIs.

use crate::media::is_media_type;
use crate::model::{AttrValue, CloudEvent, EventError};

pub const SPEC_VERSIONS: [&str; 2] = ["1.0", "0.3"];
pub(crate) const REQUIRED: [&str; 4] = ["id", "source", "specversion", "type"];

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

pub(crate) fn validate_attribute(version: &str, name: &str, value: &AttrValue) -> Result<(), EventError> {
    if !is_valid_attribute_name(name) {
        return Err(EventError::bad("invalid attribute name")
            .attribute(name)
            .rule("names are lower-case letters and digits: [a-z0-9]"));
    }
    if name == "data" {
        // The JSON format's member for the payload: an attribute of that name would be written twice there.
        return Err(EventError::bad("reserved attribute name")
            .attribute(name)
            .rule("attribute names must not be \"data\" (the CloudEvents spec reserves it)"));
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
        // Each is a context attribute in one version only (1.0 renamed 0.3's `schemaurl` to `dataschema`), and in
        // the other an extension, whose value is any string.
        "dataschema" if version == "1.0" => {
            let s = string_only("must be a URI")?;
            if !is_absolute_uri(s) {
                return Err(EventError::bad("attribute is not a URI")
                    .attribute(name)
                    .rule("RFC 3986 URI with a scheme (a fragment allowed)"));
            }
        }
        "schemaurl" if version == "0.3" => {
            let s = string_only("must be a URI-reference")?;
            if s.is_empty() || !is_uri_reference(s) {
                return Err(EventError::bad("attribute is not a URI").attribute(name).rule("RFC 3986 URI-reference"));
            }
        }
        "time" => {
            let s = string_only("must be an RFC 3339 timestamp")?;
            // chrono also takes a space for the `T` and a Unicode minus in the offset, which RFC 3339's grammar
            // does not (nor the Go SDK subscribers of Knative use: such an event would fail every delivery).
            let rfc3339_shape = s.is_ascii() && matches!(s.as_bytes().get(10), Some(b'T' | b't'));
            let parsed = chrono::DateTime::parse_from_rfc3339(s);
            if !rfc3339_shape || parsed.is_err() {
                return Err(EventError::bad("attribute is not an RFC 3339 timestamp")
                    .attribute(name)
                    .rule("RFC 3339, e.g. 2018-04-05T17:31:00Z"));
            }
            // chrono takes a second of 60 at any minute as a leap second; Go's `time.Parse` refuses every one, so
            // such an event would fail every delivery to a Go SDK subscriber (Knative's own).
            if parsed.is_ok_and(|time| chrono::Timelike::nanosecond(&time) >= 1_000_000_000) {
                return Err(EventError::bad("attribute is not an RFC 3339 timestamp")
                    .attribute(name)
                    .rule("seconds 00 to 59 (a leap second's 60 is refused, as Go's SDK refuses it)"));
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

/// The CloudEvents `URI` type: a URI with a scheme. A fragment is accepted, as the Go SDK (Knative's broker:
/// `URL.IsAbs`) and the spec's own JSON schema (`format: uri`) accept it: `dataschema:
/// https://x/schema.json#/definitions/A` is a common JSON Schema pointer (refusing it, as RFC 3986 §4.3's
/// absolute-URI would, broke such producers for a few hours in session 41).
pub fn is_absolute_uri(s: &str) -> bool {
    let first_delim = s.find(['/', '?', '#']).unwrap_or(s.len());
    is_uri_reference(s)
        && s[..first_delim].contains(':')
        && s.split_once(':').is_some_and(|(scheme, _)| is_scheme(scheme))
}

impl CloudEvent {
    /// Checks the event against the spec of its own `specversion`.
    pub fn validate(&self) -> Result<(), EventError> {
        for name in REQUIRED {
            match self.attributes.get(name) {
                None => {
                    return Err(EventError::bad("missing required attribute")
                        .attribute(name)
                        .rule("specversion, id, source and type are required"));
                }
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
}
