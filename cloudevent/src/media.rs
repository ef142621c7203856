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

/// `text/*`, or any type that declares a UTF-8 charset.
pub fn is_text_media_type(content_type: &str) -> bool {
    let (essence, charset) = media_essence(content_type);
    essence.starts_with("text/") || charset.as_deref().is_some_and(|c| c == "utf-8" || c == "us-ascii")
}

pub fn is_json_media_type(content_type: &str) -> bool {
    let (essence, _) = media_essence(content_type);
    essence.split_once('/').is_some_and(|(_, sub)| sub == "json" || sub.ends_with("+json"))
}
