//! Media types (RFC 2046) as CloudEvents use them: well-formedness, the essence and charset, and whether a type
//! is JSON or text. A leaf: it imports nothing of this crate.

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
