//! A Trigger's filters refused at apply when they could never match.

use serde_json::json;

use super::*;

/// Regression: a CESQL filter calling a function CESQL does not have was taken and the Trigger was Ready, though it
/// could never match ("Implementations SHOULD reject subscriptions with invalid CloudEvents SQL expressions").
#[test]
fn a_cesql_filter_calling_no_function_is_refused() {
    let with = |expression: &str| set(trigger(), "/spec/filters", json!([{"cesql": expression}]));
    assert_eq!(validate_object(&with("LOWER(type) = 'order.created'"), None), Ok(()));
    let errors = validate_object(&with("LOWR(type) = 'order.created'"), None).expect_err("no such function");
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].path, "spec.filters[0].cesql");
    assert!(errors[0].message.contains("LOWR/1") && errors[0].message.contains("could never match"), "{errors:?}");
    assert!(validate_object(&with("ABS(1, 2) = 1"), None).is_err(), "a known name with another arity");
}
