//! A container's `image`, parsed as Knative's webhook parses it (go-containerregistry's
//! `name.ParseReference` with weak validation): in, the reference as written; out, why it is not one.
//!
//! A reference is `[REGISTRY/]REPOSITORY[:TAG]` or `[REGISTRY/]REPOSITORY[:TAG]@sha256:HEX`. The first
//! path element is the registry only when it holds a `.` or a `:` (`localhost:5000/app`, `gcr.io/x/app`);
//! otherwise the whole path is the repository, on Docker Hub. Weak validation does not ask for Docker
//! Hub's `library/` namespace, so `nginx` is a reference; `x` is not (a repository has 2–255 characters).

const REPOSITORY_CHARS: &str = "abcdefghijklmnopqrstuvwxyz0123456789_-./";
const TAG_CHARS: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.";
const DIGEST_PREFIX: &str = "sha256:";

/// Why `image` is not an image reference; `None` when it is one.
pub(crate) fn reference_error(image: &str) -> Option<String> {
    let as_tag = tag_reference_error(image)?;
    match digest_reference_error(image) {
        None => None,
        // A reference with an `@` is meant as a digest: say what is wrong with the digest.
        Some(digest_error) if image.contains('@') => Some(digest_error),
        Some(_) => Some(as_tag),
    }
}

/// `[REGISTRY/]REPOSITORY[:TAG]`.
fn tag_reference_error(name: &str) -> Option<String> {
    let (base, tag) = split_tag(name);
    let tag_error = tag.filter(|tag| !tag.is_empty()).and_then(|tag| element_error("tag", tag, TAG_CHARS, 1, 128));
    tag_error.or_else(|| repository_error(base))
}

/// `NAME@sha256:HEX`, where NAME is a tag reference (its tag ignored) or a repository.
fn digest_reference_error(name: &str) -> Option<String> {
    let mut parts = name.split('@');
    let (Some(base), Some(digest), None) = (parts.next(), parts.next(), parts.next()) else {
        return Some(format!(
            "a digest must contain exactly one '@' separator (e.g. registry/repository@digest): {name}"
        ));
    };
    let Some(hex) = digest.strip_prefix(DIGEST_PREFIX) else {
        return Some(format!("unsupported digest algorithm: {digest}"));
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return Some(format!("invalid sha256 digest (64 lowercase hex digits): {hex}"));
    }
    let repository = if tag_reference_error(base).is_none() { split_tag(base).0 } else { base };
    repository_error(repository)
}

/// The last `:`-separated part is a tag unless it holds a `/` (then the `:` was a registry's port).
fn split_tag(name: &str) -> (&str, Option<&str>) {
    match name.rsplit_once(':') {
        Some((base, tag)) if !tag.contains('/') => (base, Some(tag)),
        _ => (name, None),
    }
}

fn repository_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a repository name must be specified".into());
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) => (Some(first), rest),
        _ => (None, name),
    };
    element_error("repository", repository, REPOSITORY_CHARS, 2, 255).or_else(|| registry.and_then(registry_error))
}

/// A registry must be a URI authority: a host (name, IPv4, or bracketed IPv6) and an optional port.
fn registry_error(registry: &str) -> Option<String> {
    let refused = || Some(format!("registries must be valid RFC 3986 URI authorities: {registry}"));
    let (host, port) = match registry.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((ipv6, rest)) if ipv6.parse::<std::net::Ipv6Addr>().is_ok() => ("ipv6", rest.strip_prefix(':')),
            _ => return refused(),
        },
        None => match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        },
    };
    let host_ok =
        !host.is_empty() && host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=%".contains(&b));
    let port_ok = port.is_none_or(|port| port.bytes().all(|b| b.is_ascii_digit()));
    if host_ok && port_ok { None } else { refused() }
}

fn element_error(what: &str, element: &str, allowed: &str, min: usize, max: usize) -> Option<String> {
    if !(min..=max).contains(&element.len()) {
        return Some(format!("{what} must be between {min} and {max} characters in length: {element}"));
    }
    if let Some(bad) = element.chars().find(|c| !allowed.contains(*c)) {
        return Some(format!("{what} can only contain the characters `{allowed}`, not {bad:?}: {element}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: &str = "sha256:deb6d1a9b5ee3c3cdd15b6d0ed9f7df2d1e8d5f2b9d7f3c2ba3b4e5f6a7b8c9d";

    #[test]
    fn references_knative_users_write_parse() {
        for image in [
            "nginx",
            "ab",
            "gcr.io/knative-samples/helloworld-go",
            "ghcr.io/knative/helloworld-go:latest",
            "docker.io/library/python:3.12-slim",
            "localhost:5000/app",
            "localhost:5000/app:v1.2",
            "registry.example.com:8443/team/app_x/web-ui:2024.10.01",
            "[::1]:5000/app",
            "127.0.0.1:5000/app",
            "user/app",
            // An empty tag is no tag, as go-containerregistry reads it.
            "app:",
            &format!("gcr.io/knative-samples/helloworld-go@{DIGEST}"),
            &format!("gcr.io/app:v1@{DIGEST}"),
            &format!("localhost:5000/app@{DIGEST}"),
        ] {
            assert_eq!(reference_error(image), None, "{image}");
        }
    }

    #[test]
    fn non_references_are_refused_with_the_rule_they_break() {
        for (image, rule) in [
            ("x", "repository must be between 2 and 255"),
            ("App", "repository can only contain"),
            ("gcr.io/Knative/app", "repository can only contain"),
            ("app:v 1", "tag can only contain"),
            ("app@sha256:abc", "invalid sha256 digest"),
            (&format!("app@md5:{}", "0".repeat(32)), "unsupported digest algorithm"),
            (&format!("a@b@{DIGEST}"), "exactly one '@'"),
            (&format!("app@{}", DIGEST.to_uppercase().replace("SHA256", "sha256")), "invalid sha256 digest"),
            ("gcr.io:port/app", "registries must be valid"),
            ("[zz]:5000/app", "registries must be valid"),
            (&format!("gcr.io/{}", "a".repeat(256)), "between 2 and 255"),
            (&format!("app:{}", "t".repeat(129)), "tag must be between 1 and 128"),
            ("", "a repository name must be specified"),
        ] {
            let error = reference_error(image).unwrap_or_else(|| panic!("{image:?} parsed"));
            assert!(error.contains(rule), "{image:?}: {error}");
        }
    }

    #[test]
    fn a_port_is_not_taken_for_a_tag() {
        assert_eq!(split_tag("localhost:5000/app"), ("localhost:5000/app", None));
        assert_eq!(split_tag("localhost:5000/app:v1"), ("localhost:5000/app", Some("v1")));
        assert_eq!(split_tag("app"), ("app", None));
    }
}
