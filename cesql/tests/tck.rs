//! Runs the official CESQL v1 conformance suite (TCK) against the engine.

use serde_json::{Map, Value as Json};
use serde_yaml_ng::Value as Yaml;
use sluice_cesql::{self as cesql, EvalError, Value};

/// `$SLUICE_CESQL_TCK` when set, else `../shared/specs/cesql-tck` next to the repository (the CloudEvents spec's
/// TCK as this workspace provides it; not vendored into the repository), found from `CARGO_MANIFEST_DIR` at run
/// time (cargo sets it for test processes; a binary reused from a shared target directory may come from another
/// checkout).
fn tck_dir() -> std::path::PathBuf {
    if let Some(dir) = std::env::var_os("SLUICE_CESQL_TCK") {
        return dir.into();
    }
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest.join("../../shared/specs/cesql-tck")
}

fn default_event() -> Map<String, Json> {
    let mut event = Map::new();
    event.insert("specversion".into(), "1.0".into());
    event.insert("id".into(), "tck-id".into());
    event.insert("source".into(), "http://localhost.localdomain".into());
    event.insert("type".into(), "io.sluice.tck".into());
    event
}

fn to_json_object(yaml: &Yaml) -> Map<String, Json> {
    match serde_json::to_value(yaml).expect("YAML event converts to JSON") {
        Json::Object(map) => map,
        other => panic!("event is not an object: {other}"),
    }
}

fn expected_value(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Bool(b) => Value::Boolean(*b),
        Yaml::Number(n) => Value::Integer(i32::try_from(n.as_i64().expect("integer result")).expect("32 bit result")),
        Yaml::String(s) => Value::String(s.clone()),
        other => panic!("unsupported result {other:?}"),
    }
}

fn error_kind(error: &EvalError) -> &'static str {
    match error {
        EvalError::Math(_) => "math",
        EvalError::Cast(_) => "cast",
        EvalError::MissingFunction(_) => "missingFunction",
        EvalError::FunctionEvaluation(_) => "functionEvaluation",
        EvalError::MissingAttribute(_) => "missingAttribute",
        EvalError::Generic(_) => "generic",
    }
}

/// The raw text of every `expression:` key of a TCK file, in order. YAML resolves plain scalars such as `TRUE`,
/// `0` or `-10` to booleans and numbers, losing the spelling the engine must parse; this recovers it.
fn raw_expressions(text: &str) -> Vec<String> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let line = line.strip_prefix("- ").unwrap_or(line);
            line.strip_prefix("expression:").map(|rest| rest.trim().to_owned())
        })
        .collect()
}

fn scalar_text(yaml: &Yaml) -> Option<String> {
    match yaml {
        Yaml::String(s) => Some(s.clone()),
        Yaml::Bool(b) => Some(b.to_string()),
        Yaml::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Runs one case; `Err` describes the mismatch.
fn run_case(case: &Yaml, expression: &str) -> Result<(), String> {
    let expected_error = case.get("error").and_then(Yaml::as_str);
    let expected_result = case.get("result").map(expected_value);

    let parsed = cesql::parse(expression);
    if expected_error == Some("parse") {
        return match parsed {
            Err(_) => Ok(()),
            Ok(expr) => Err(format!("expected a parse error, parsed as {expr:?}")),
        };
    }
    let expr = parsed.map_err(|e| format!("unexpected {e}"))?;

    let event = match case.get("event") {
        Some(event) => to_json_object(event),
        None => {
            let mut event = default_event();
            if let Some(overrides) = case.get("eventOverrides") {
                event.extend(to_json_object(overrides));
            }
            event
        }
    };
    let (value, error) = expr.evaluate(&event);
    let actual_error = error.as_ref().map(error_kind);
    let mut problems = Vec::new();
    if let Some(expected) = &expected_result
        && *expected != value
    {
        problems.push(format!("expected result {expected}, got {value}"));
    }
    if expected_error != actual_error {
        problems.push(format!("expected error {expected_error:?}, got {error:?}"));
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

#[test]
fn cesql_tck() {
    let dir_buf = tck_dir();
    let dir = dir_buf.as_path();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read the CESQL TCK in {}: {e} (the CloudEvents spec's cesql/cesql_tck/*.yaml; set SLUICE_CESQL_TCK to their directory)",
                dir.display()
            )
        })
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no TCK files in {}", dir.display());

    let mut total = 0;
    let mut failures = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).expect("TCK file readable");
        let suite: Yaml = serde_yaml_ng::from_str(&text).expect("TCK file is valid YAML");
        let file_name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let tests = suite["tests"].as_sequence().expect("TCK file has a tests list");
        let raw = raw_expressions(&text);
        assert_eq!(raw.len(), tests.len(), "{file_name}: one `expression:` line per test expected");
        for (case, raw_expression) in tests.iter().zip(raw) {
            total += 1;
            let expression = match &case["expression"] {
                Yaml::String(s) => s.clone(),
                _ => raw_expression,
            };
            if let Err(problem) = run_case(case, &expression) {
                let name = scalar_text(&case["name"]).unwrap_or_else(|| "<unnamed>".to_owned());
                failures.push(format!("{file_name} / {name} [{expression}]: {problem}"));
            }
        }
    }
    println!("cesql tck: {total} cases, {} failed", failures.len());
    for failure in &failures {
        println!("  FAIL {failure}");
    }
    assert!(total > 0, "no TCK cases found");
    assert!(failures.is_empty(), "{} of {total} CESQL TCK cases failed:\n{}", failures.len(), failures.join("\n"));
}
