//! Tests of the delivery shell's pure decisions: which protocol a destination is sent with.

use super::*;

#[test]
fn the_subscriber_protocol_applies_to_the_subscriber_url_only() {
    let subscriber = "http://subscriber.default.svc/";
    for (url, subscriber_protocol, expected, why) in [
        (subscriber, Protocol::H2c, Protocol::H2c, "the subscriber speaks h2c"),
        (subscriber, Protocol::Http1, Protocol::Http1, "the subscriber speaks HTTP/1.1"),
        ("http://sink.default.svc/", Protocol::H2c, Protocol::Http1, "a dead-letter sink is another server"),
        ("http://reply.default.svc/", Protocol::H2c, Protocol::Http1, "a reply address is another server"),
        ("http://sink.default.svc/", Protocol::Http1, Protocol::Http1, "HTTP/1.1 everywhere"),
        ("http://subscriber.default.svc/other", Protocol::H2c, Protocol::Http1, "another path is another URL"),
    ] {
        assert_eq!(protocol_towards(url, subscriber, subscriber_protocol), expected, "{why}: {url}");
    }
}
