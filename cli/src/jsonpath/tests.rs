//! Templates as kubectl documents them, values as it prints them, and the bounds.

use serde_json::json;

use super::*;

fn list() -> Value {
    json!({
        "apiVersion": "v1", "kind": "List",
        "items": [
            {"metadata": {"name": "a", "labels": {"app": "x"},
                          "annotations": {"eventing.knative.dev/broker.class": "MTChannelBasedBroker"}},
             "spec": {"broker": "default", "delivery": {"retry": 3}},
             "status": {"conditions": [
                 {"type": "BrokerReady", "status": "True"},
                 {"type": "Ready", "status": "True"}]}},
            {"metadata": {"name": "b"},
             "spec": {"broker": "other", "delivery": {"retry": 10}},
             "status": {"conditions": [{"type": "Ready", "status": "False", "reason": "BrokerDoesNotExist"}]}},
        ]
    })
}

fn render(template: &str, value: &Value) -> String {
    Template::parse(template).and_then(|t| t.render(value)).unwrap_or_else(|e| panic!("{template}: {e}"))
}

/// Regression: a slice step near i64::MAX overflowed the index (a panic in either build).
#[test]
fn regression_a_huge_slice_step_takes_the_first_item_only() {
    assert_eq!(render("{.items[0::9223372036854775807].metadata.name}", &list()), "a");
}

#[test]
fn the_forms_kubectl_documents() {
    let list = list();
    assert_eq!(render("{.items[*].metadata.name}", &list), "a b");
    assert_eq!(render("{.items[0].metadata.name}", &list), "a");
    assert_eq!(render("{.items[-1].metadata.name}", &list), "b");
    assert_eq!(render("{range .items[*]}{.metadata.name}{\"\\n\"}{end}", &list), "a\nb\n");
    assert_eq!(render("{range .items[*]}[{.metadata.name}, {.spec.broker}] {end}", &list), "[a, default] [b, other] ");
    assert_eq!(render("{.items[0].status.conditions[?(@.type==\"Ready\")].status}", &list), "True");
    assert_eq!(render("{.items[*].status.conditions[?(@.type=='Ready')].status}", &list), "True False");
    assert_eq!(render("{.items[?(@.spec.delivery.retry>5)].metadata.name}", &list), "b");
    assert_eq!(render("{.items[?(@.spec.delivery.retry<=3)].metadata.name}", &list), "a");
    assert_eq!(render("{.items[?(@.metadata.labels)].metadata.name}", &list), "a", "existence");
    assert_eq!(render("{.items[?(@.spec.broker!=\"default\")].metadata.name}", &list), "b");
    assert_eq!(render("{..name}", &list), "a b");
    assert_eq!(render("{$.kind}", &list), "List");
    assert_eq!(render("kind: {.kind}\n", &list), "kind: List\n", "text around actions");
    assert_eq!(
        render("{.items[0].metadata.annotations.eventing\\.knative\\.dev/broker\\.class}", &list),
        "MTChannelBasedBroker"
    );
    assert_eq!(render("{.items[0].metadata['labels']['app']}", &list), "x");
    assert_eq!(
        render("{.items[1].metadata.name}{'\\t'}{.items[1].status.conditions[0].reason}", &list),
        "b\tBrokerDoesNotExist"
    );
}

#[test]
fn values_print_as_kubectl_prints_them() {
    let list = list();
    assert_eq!(render("{.items[0].spec.delivery.retry}", &list), "3");
    assert_eq!(render("{.items[0].metadata.labels}", &list), "{\"app\":\"x\"}");
    assert_eq!(render("{.items[0].spec.missing}", &list), "", "a missing field prints nothing");
    assert_eq!(render("{.items[5].metadata.name}", &list), "");
    assert_eq!(render("{.items[*].metadata.missing}", &list), "");
}

#[test]
fn slices_unions_and_wildcards() {
    let value = json!({"n": [0, 1, 2, 3, 4], "m": {"a": 1, "b": 2}});
    assert_eq!(render("{.n[1:3]}", &value), "1 2");
    assert_eq!(render("{.n[:2]}", &value), "0 1");
    assert_eq!(render("{.n[-2:]}", &value), "3 4");
    assert_eq!(render("{.n[::2]}", &value), "0 2 4");
    assert_eq!(render("{.n[::-1]}", &value), "4 3 2 1 0");
    assert_eq!(render("{.n[0,4]}", &value), "0 4");
    assert_eq!(render("{.m.*}", &value), "1 2");
    assert_eq!(render("{.m['a','b']}", &value), "1 2");
    assert_eq!(render("{range .n}{@}-{end}", &value), "0-1-2-3-4-", "range over an array's elements");
    assert_eq!(render("{range .n[0:2]}{range $.m.*}{@}{end};{end}", &value), "12;12;", "nested ranges");
}

#[test]
fn malformed_templates_are_refused() {
    for bad in
        ["{.a", "{range .items[*]}{.x}", "{end}", "{.a[}", "{.a[?(@.b)}", "{.a[x]}", "{}", "{.a[1:2:0]}", "{\"open}"]
    {
        assert!(Template::parse(bad).is_err(), "{bad:?} should be refused");
    }
    assert!(Template::parse("plain text").is_ok_and(|t| t.render(&json!({})) == Ok("plain text".into())));
}

/// Regression: a filter nested in a filter's path recursed once per level (a stack overflow for a few
/// thousand levels), `{range}` likewise, and `..` chains multiplied their results without end.
#[test]
fn regression_deep_or_multiplying_templates_are_refused_not_a_crash() {
    let nested = format!("{{.a{}}}", "[?(@.b".repeat(MAX_NESTING + 1) + &")]".repeat(MAX_NESTING + 1));
    let refused = Template::parse(&nested).err().unwrap_or_default();
    assert!(refused.contains("nest more than 32"), "{refused}");
    let shallow = format!("{{.a{}}}", "[?(@.b".repeat(MAX_NESTING / 2) + &")]".repeat(MAX_NESTING / 2));
    assert!(Template::parse(&shallow).is_ok(), "{MAX_NESTING} levels parse");
    let ranges = "{range .a}".repeat(MAX_NESTING + 1) + &"{end}".repeat(MAX_NESTING + 1);
    assert!(Template::parse(&ranges).err().unwrap_or_default().contains("{range}s nest"));
    let long = "x".repeat(MAX_TEMPLATE_BYTES + 1);
    assert!(Template::parse(&long).err().unwrap_or_default().contains("at most"));
    // A chain 100 deep: each `..*` visits everything under each value the step before yielded.
    let chain = (0..100).fold(json!(0), |inner, _| json!([inner]));
    assert_eq!(render("{..*..*}", &json!({"a": [1]})), "1", "a short chain renders");
    let multiplying = Template::parse("{..*..*..*..*..*}").unwrap_or_else(|e| panic!("{e}"));
    let refused = multiplying.render(&chain).err().unwrap_or_default();
    assert!(refused.contains("more than 10000000 values"), "{refused}");
    let ranges = Template::parse("{range ..*}{range $..*}{range $..*}{range $..*}{end}{end}{end}{end}")
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(ranges.render(&chain).is_err(), "nested ranges that print nothing still end");
}
