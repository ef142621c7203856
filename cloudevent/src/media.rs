//! Media types (RFC 2046) as CloudEvents use them: well-formedness, the essence and charset, and whether a type
//! is JSON or text. A leaf: it imports nothing of this crate.

/// RFC 2045 token characters.
fn is_token(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?=".contains(&b))
}

/// The `;name=value` parameters after a media type's essence, in order (a quoted value unquoted, its `\`
/// escapes undone), or `None` when one is malformed: no `=`, a name that is no token, a quoted value left
/// open, a control character. A quoted value may hold `;` (`boundary="a;b"`) and, as HTTP's `obs-text`,
/// bytes past ASCII; an unquoted one is read up to the next `;`, leniently, as producers write them
/// (`profile=http://x/y`). Empty parameters (`;;`, a trailing `;`) are skipped.
fn parameters(mut rest: &str) -> Option<Vec<(&str, std::borrow::Cow<'_, str>)>> {
    let control = |c: char| c.is_control() && c != '\t';
    let mut parameters = Vec::new();
    loop {
        rest = rest.trim_start_matches([' ', '\t']);
        let Some(after) = rest.strip_prefix(';') else {
            return rest.is_empty().then_some(parameters);
        };
        rest = after.trim_start_matches([' ', '\t']);
        if rest.is_empty() || rest.starts_with(';') {
            continue;
        }
        let (name, after) = rest.split_once('=')?;
        let name = name.trim_end_matches([' ', '\t']);
        if !is_token(name) {
            return None;
        }
        let after = after.trim_start_matches([' ', '\t']);
        match after.strip_prefix('"') {
            Some(quoted) => {
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next()? {
                        (i, '"') => break i,
                        (_, '\\') => match chars.next()? {
                            (_, c) if control(c) => return None,
                            (_, c) => value.push(c),
                        },
                        (_, c) if control(c) => return None,
                        (_, c) => value.push(c),
                    }
                };
                parameters.push((name, std::borrow::Cow::Owned(value)));
                rest = &quoted[end + 1..];
            }
            None => {
                let end = after.find(';').unwrap_or(after.len());
                let value = after[..end].trim_end_matches([' ', '\t']);
                if value.chars().any(control) {
                    return None;
                }
                parameters.push((name, std::borrow::Cow::Borrowed(value)));
                rest = &after[end..];
            }
        }
    }
}

/// The essence before the parameters, and the rest (`;...`).
fn split_essence(content_type: &str) -> (&str, &str) {
    let end = content_type.find(';').unwrap_or(content_type.len());
    (content_type[..end].trim(), &content_type[end..])
}

/// `type/subtype` with RFC 2045 token characters, and `;name=value` parameters, a value a token-ish run or a
/// quoted string (see [`parameters`]).
pub fn is_media_type(s: &str) -> bool {
    let (essence, rest) = split_essence(s);
    let Some((kind, subtype)) = essence.split_once('/') else { return false };
    is_token(kind) && is_token(subtype) && parameters(rest).is_some()
}

/// The media type's `type/subtype`, lower-cased, and its charset if any.
pub fn media_essence(content_type: &str) -> (String, Option<String>) {
    let (essence, rest) = split_essence(content_type);
    let charset = parameters(rest)
        .unwrap_or_default()
        .into_iter()
        .find_map(|(name, value)| name.eq_ignore_ascii_case("charset").then(|| value.trim().to_ascii_lowercase()));
    (essence.to_ascii_lowercase(), charset)
}

/// `text/*`, or any type that declares a UTF-8 charset. Compared in place, as [`media_essence`] would read
/// them: a delivery asks this and [`is_json_media_type`] of an event's data (the JSON format's `data`, a
/// batch's length bound, a binary body made from structured data), and a lower-cased copy of the essence per
/// question was an allocation per event each time.
pub fn is_text_media_type(content_type: &str) -> bool {
    let (essence, rest) = split_essence(content_type);
    if starts_with_ignore_case(essence, "text/") {
        return true;
    }
    let Some(parameters) = parameters(rest) else { return false };
    parameters.iter().find(|(name, _)| name.eq_ignore_ascii_case("charset")).is_some_and(|(_, value)| {
        let value = value.trim();
        value.eq_ignore_ascii_case("utf-8") || value.eq_ignore_ascii_case("us-ascii")
    })
}

/// `*/json` or `*/*+json`, in any case.
pub fn is_json_media_type(content_type: &str) -> bool {
    let (essence, _) = split_essence(content_type);
    essence
        .split_once('/')
        .is_some_and(|(_, sub)| sub.eq_ignore_ascii_case("json") || ends_with_ignore_case(sub, "+json"))
}

pub(crate) fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.as_bytes().get(..prefix.len()).is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn ends_with_ignore_case(text: &str, suffix: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() >= suffix.len() && bytes[bytes.len() - suffix.len()..].eq_ignore_ascii_case(suffix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The classifiers as they were written before they compared in place: through [`media_essence`].
    fn is_text_by_essence(content_type: &str) -> bool {
        let (essence, charset) = media_essence(content_type);
        essence.starts_with("text/") || charset.as_deref().is_some_and(|c| c == "utf-8" || c == "us-ascii")
    }

    fn is_json_by_essence(content_type: &str) -> bool {
        let (essence, _) = media_essence(content_type);
        essence.split_once('/').is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
    }

    #[test]
    fn the_classifiers_answer_as_the_essence_does() {
        for content_type in [
            "text/plain",
            "TEXT/Plain",
            " text/x ; charset=latin1",
            "text",
            "tex",
            "application/json",
            "Application/JSON",
            "application/vnd.x+JSON; charset=UTF-8",
            "application/json-seq",
            "application/+json",
            "/json",
            "/JSON",
            "json",
            "application/octet-stream",
            "application/octet-stream; charset=\"US-ASCII\"",
            "application/xml; Charset= utf-8 ",
            "application/xml; charset=utf-8; charset=latin1",
            "application/xml; charset=latin1; charset=utf-8",
            "multipart/mixed; boundary=\"x;charset=utf-8\"",
            "application/xml; charset=\"utf-8",
            "application/xml; charset",
            "application/xml;; charset=utf-8;",
            "",
            ";charset=utf-8",
            "a/b+json;x=\"\u{1}\"",
            "\u{e9}/json",
        ] {
            assert_eq!(is_text_media_type(content_type), is_text_by_essence(content_type), "text: {content_type:?}");
            assert_eq!(is_json_media_type(content_type), is_json_by_essence(content_type), "json: {content_type:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn the_classifiers_answer_as_the_essence_does_on_any_string(
            content_type in "(text|TeXt|application|[a-zé]{0,3})?/?([a-z+]{0,6}(json|JSON)?)?( ?;( ?(charset|ChArSeT|x)? ?=? ?(\"?(utf-8|UTF-8|us-ascii|latin1|;|\\\\)\"?)?)?){0,3}",
            any in "\\PC{0,24}",
        ) {
            proptest::prop_assert_eq!(is_text_media_type(&content_type), is_text_by_essence(&content_type));
            proptest::prop_assert_eq!(is_json_media_type(&content_type), is_json_by_essence(&content_type));
            proptest::prop_assert_eq!(is_text_media_type(&any), is_text_by_essence(&any));
            proptest::prop_assert_eq!(is_json_media_type(&any), is_json_by_essence(&any));
        }
    }
}
