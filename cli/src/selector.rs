//! Kubernetes label selectors (`-l`, `--selector`), matched against `metadata.labels` on the client.
//!
//! The syntax is kubectl's: requirements separated by commas, all of which must hold:
//! `app=x` (or `app==x`), `app!=x`, `app in (a,b)`, `app notin (a)`, `app` (the label exists), `!app` (it
//! does not). As in Kubernetes, `app!=x` and `app notin (...)` also match objects without the label.

use std::collections::BTreeSet;

use sluice_controller::validate::{label_value_error, qualified_name_error};

/// A parsed label selector; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Selector {
    requirements: Vec<Requirement>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// Splits at the commas that are not inside parentheses.
fn split_requirements(text: &str) -> Result<Vec<&str>, String> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth < 0 {
                    return Err("unbalanced ')'".into());
                }
            }
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err("unclosed '('".into());
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// A label key, by the API server's rule the validation of objects uses (`sluice_controller::validate`).
fn check_key(key: &str) -> Result<String, String> {
    match qualified_name_error(key) {
        None => Ok(key.to_string()),
        Some(rule) => Err(format!("{key:?} is not a valid label key: {rule}")),
    }
}

/// A label value, by the same rule as an object's.
fn check_value(value: &str) -> Result<String, String> {
    let value = value.trim();
    match label_value_error(value) {
        None => Ok(value.to_string()),
        Some(rule) => Err(format!("{value:?} is not a valid label value: {rule}")),
    }
}

fn parse_requirement(text: &str) -> Result<Requirement, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty requirement (two commas in a row?)".into());
    }
    if let Some(key) = text.strip_prefix('!') {
        return Ok(Requirement::DoesNotExist(check_key(key.trim())?));
    }
    if let Some(open) = text.find('(') {
        let Some(values) = text[open + 1..].strip_suffix(')') else {
            return Err(format!("{text:?}: the value list must end with ')'"));
        };
        let mut words = text[..open].split_whitespace();
        let (Some(key), Some(operator), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!("{text:?}: expected KEY in (V1,V2) or KEY notin (V1,V2)"));
        };
        let values: BTreeSet<String> = values.split(',').map(check_value).collect::<Result<_, _>>()?;
        let key = check_key(key)?;
        return match operator {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            other => Err(format!("{text:?}: unknown operator {other:?} (in, notin)")),
        };
    }
    if let Some((key, value)) = text.split_once("!=") {
        return Ok(Requirement::NotEquals(check_key(key.trim())?, check_value(value)?));
    }
    if let Some((key, value)) = text.split_once("==").or_else(|| text.split_once('=')) {
        return Ok(Requirement::Equals(check_key(key.trim())?, check_value(value)?));
    }
    Ok(Requirement::Exists(check_key(text)?))
}

impl Selector {
    /// Parses `app=x,tier!=db,env in (a,b),!legacy`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let requirements = split_requirements(text)
            .and_then(|parts| parts.into_iter().map(parse_requirement).collect::<Result<_, _>>())
            .map_err(|e| format!("label selector {text:?}: {e}"))?;
        Ok(Self { requirements })
    }

    /// Whether an object's `metadata.labels` (a JSON object of strings, or absent) satisfy every requirement.
    pub(crate) fn matches(&self, object: &serde_json::Value) -> bool {
        let label = |key: &str| object.pointer("/metadata/labels").and_then(|l| l.get(key)).and_then(|v| v.as_str());
        self.requirements.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => label(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => label(key) != Some(value.as_str()),
            Requirement::In(key, values) => label(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => label(key).is_none_or(|v| !values.contains(v)),
            Requirement::Exists(key) => label(key).is_some(),
            Requirement::DoesNotExist(key) => label(key).is_none(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn labelled(labels: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": "x", "labels": labels}})
    }

    fn matches(selector: &str, labels: serde_json::Value) -> bool {
        Selector::parse(selector).map(|s| s.matches(&labelled(labels))).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_operator_matches_as_in_kubernetes() {
        let app_x = json!({"app": "x", "tier": "web"});
        assert!(matches("app=x", app_x.clone()));
        assert!(matches("app==x", app_x.clone()));
        assert!(!matches("app=y", app_x.clone()));
        assert!(matches("app!=y", app_x.clone()));
        assert!(!matches("app!=x", app_x.clone()));
        assert!(matches("app!=x", json!({})), "!= matches objects without the label");
        assert!(matches("app in (a, x)", app_x.clone()));
        assert!(!matches("app in (a,b)", app_x.clone()));
        assert!(!matches("app in (a,b)", json!({})));
        assert!(matches("app notin (a,b)", app_x.clone()));
        assert!(!matches("app notin (x)", app_x.clone()));
        assert!(matches("app notin (x)", json!({})), "notin matches objects without the label");
        assert!(matches("app", app_x.clone()));
        assert!(!matches("app", json!({})));
        assert!(matches("!legacy", app_x.clone()));
        assert!(!matches("!app", app_x.clone()));
        assert!(matches("", app_x.clone()), "the empty selector matches everything");
    }

    #[test]
    fn commas_are_and_except_inside_parentheses() {
        let labels = json!({"app": "x", "tier": "web", "sluice.dev/team": "a"});
        assert!(matches("app=x,tier=web", labels.clone()));
        assert!(!matches("app=x,tier=db", labels.clone()));
        assert!(matches("app in (x,y),tier notin (db),!legacy,sluice.dev/team", labels.clone()));
        assert!(matches(" app = x , tier in ( web ) ", labels.clone()));
        // Objects without labels at all.
        assert!(Selector::parse("!app").is_ok_and(|s| s.matches(&json!({"metadata": {"name": "x"}}))));
    }

    #[test]
    fn malformed_selectors_are_refused() {
        for bad in [
            "app in (a",
            "app in a)",
            "app=x,,tier=y",
            "app in ()x",
            "a b in (x)",
            "app within (x)",
            "=x",
            "app=-x-",
            "!",
            "/x=y",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad:?} should be refused");
        }
        assert!(Selector::parse("app in (a,b)").is_ok());
        assert!(Selector::parse("app=").is_ok(), "an empty value is a value");
    }
}
