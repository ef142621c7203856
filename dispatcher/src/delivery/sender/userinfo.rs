//! A destination URL's `user:password@`: in, the URL; out, the URL without it and the Basic `Authorization`
//! value it stands for (Knative's Go client sends it so), and the URL as logs and dead letters may show it.

/// `uri` without its `user:password@`, and that as a Basic `Authorization` value (percent-decoded, RFC 7617).
pub(super) fn without_userinfo(uri: http::Uri) -> (http::Uri, Option<http::HeaderValue>) {
    use base64::Engine as _;
    let Some((userinfo, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else { return (uri, None) };
    let decoded = |text: &str| percent_encoding::percent_decode_str(text).decode_utf8_lossy().into_owned();
    let (user, password) = userinfo.split_once(':').unwrap_or((userinfo, ""));
    let credentials =
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", decoded(user), decoded(password)));
    let basic = http::HeaderValue::try_from(format!("Basic {credentials}")).ok().map(|mut value| {
        value.set_sensitive(true);
        value
    });
    let Ok(authority) = http::uri::Authority::try_from(host) else { return (uri, None) };
    let mut parts = uri.clone().into_parts();
    parts.authority = Some(authority);
    (http::Uri::from_parts(parts).unwrap_or(uri), basic)
}

/// `url` with the password of its `user:password@` replaced by `xxxxx` (Go's `URL.Redacted`): what a dead
/// letter's `knativeerrordest` and the logs may show. Regression: dead letters carried the password.
pub(crate) fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:xxxxx@{host}{path}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}
