//! CloudEvents Expression Language (CESQL) v1: parser and evaluator.
//!
//! What flows through it: an expression (text) is parsed once into an
//! [`Expression`]; events (their context attributes) are evaluated against it,
//! giving a value and, if any, the first evaluation error. Pure and
//! synchronous. Its own crate so that both the controller (validating Triggers
//! at apply) and the dispatcher (matching events) use it.
//!
//! ```
//! use sluice_cesql::{self as cesql, Value};
//!
//! let expression = cesql::parse("type LIKE 'com.example.%' AND INT(seq) > 10").expect("valid expression");
//! let mut event = serde_json::Map::new();
//! event.insert("type".into(), "com.example.created".into());
//! event.insert("seq".into(), "11".into());
//! assert_eq!(expression.evaluate(&event), (Value::Boolean(true), None));
//! assert!(expression.matches(&event));
//! ```

mod eval;
mod lexer;
mod parser;

use std::fmt;

/// A CESQL value: the language has three primitive types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Boolean(bool),
    Integer(i32),
    String(String),
}

impl Value {
    fn value_type(&self) -> Type {
        match self {
            Value::Boolean(_) => Type::Boolean,
            Value::Integer(_) => Type::Integer,
            Value::String(_) => Type::String,
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Boolean(b) => write!(f, "{b}"),
            Value::Integer(i) => write!(f, "{i}"),
            Value::String(s) => write!(f, "{s:?}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Type {
    Boolean,
    Integer,
    String,
}

impl Type {
    fn zero(self) -> Value {
        match self {
            Type::Boolean => Value::Boolean(false),
            Type::Integer => Value::Integer(0),
            Type::String => Value::String(String::new()),
        }
    }
}

/// The expression could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CESQL parse error at character {}: {message}", position + 1)]
pub struct ParseError {
    /// Character offset (0-based) in the expression; the message counts from 1, as a person counts (`type IN ()`:
    /// the `)` is character 10).
    pub position: usize,
    pub message: String,
}

impl ParseError {
    fn new(position: usize, message: impl Into<String>) -> Self {
        ParseError { position, message: message.into() }
    }
}

/// An error raised while evaluating an expression; the evaluation still yields a value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EvalError {
    #[error("math error: {0}")]
    Math(String),
    #[error("cast error: {0}")]
    Cast(String),
    #[error("missing function: {0}")]
    MissingFunction(String),
    #[error("function evaluation error: {0}")]
    FunctionEvaluation(String),
    #[error("missing attribute: {0}")]
    MissingAttribute(String),
    #[error("error: {0}")]
    Generic(String),
}

/// Read access to an event's context attributes (and extensions), by name.
pub trait EventAttributes {
    /// The attribute's value, or `None` when the event does not carry it.
    fn attribute(&self, name: &str) -> Option<Value>;
}

/// A JSON object (e.g. a structured-mode CloudEvent). Strings, integers fitting 32 bits and booleans map to the
/// corresponding CESQL types; `null` is an absent attribute; any other value is represented as its JSON text.
impl EventAttributes for serde_json::Map<String, serde_json::Value> {
    fn attribute(&self, name: &str) -> Option<Value> {
        match self.get(name)? {
            serde_json::Value::Null => None,
            serde_json::Value::Bool(b) => Some(Value::Boolean(*b)),
            serde_json::Value::String(s) => Some(Value::String(s.clone())),
            serde_json::Value::Number(n) => match n.as_i64().and_then(|i| i32::try_from(i).ok()) {
                Some(i) => Some(Value::Integer(i)),
                None => Some(Value::String(n.to_string())),
            },
            other => Some(Value::String(other.to_string())),
        }
    }
}

/// A parsed CESQL expression, ready to be evaluated against any number of events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    root: parser::Node,
}

/// Parses a CESQL v1 expression.
pub fn parse(expression: &str) -> Result<Expression, ParseError> {
    parser::parse(expression).map(|root| Expression { root })
}

impl Expression {
    /// Evaluates the expression: its value, and the first error raised during evaluation if any.
    pub fn evaluate(&self, event: &dyn EventAttributes) -> (Value, Option<EvalError>) {
        let mut evaluator = eval::Evaluator::new(event);
        let value = evaluator.evaluate(&self.root);
        (value, evaluator.errors.into_iter().next())
    }

    /// The calls no function can answer (an unknown name, or a known one with another number of arguments), as
    /// `NAME/ARITY`, in the order written: each raises a MissingFunctionError whatever the event, so the
    /// expression can never match. The spec leaves them to evaluation ("error checks SHOULD be done at compile
    /// time"): a subscription's validation refuses them.
    pub fn missing_functions(&self) -> Vec<String> {
        let mut missing = Vec::new();
        parser::missing_functions(&self.root, &mut missing);
        missing
    }

    /// Refuses an expression that calls a function CESQL does not have ([`Expression::missing_functions`]): what a
    /// filter's validation and a filtered read ask, so that all say it alike.
    pub fn check_functions(&self) -> Result<(), String> {
        let missing = self.missing_functions();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("calls a function CESQL does not have (name/arguments): {}", missing.join(", ")))
        }
    }

    /// Filter semantics (Subscriptions API): the event matches when the expression evaluates to `true` without
    /// any error.
    pub fn matches(&self, event: &dyn EventAttributes) -> bool {
        matches!(self.evaluate(event), (Value::Boolean(true), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: messages named the lexer's tokens (`RParen`, `String("s")`) at a 0-based position.
    #[test]
    fn parse_errors_quote_the_expression_and_count_from_one() {
        let said = |e: &str| parse(e).expect_err("does not parse").to_string();
        assert_eq!(said("type IN ()"), "CESQL parse error at character 10: unexpected token )");
        // A quote is escaped with a backslash: `'it''s'` is two strings.
        assert_eq!(said("type = 'it''s'"), "CESQL parse error at character 12: unexpected token 's'");
    }

    #[test]
    fn calls_no_function_answers_are_listed() {
        let missing = |e: &str| parse(e).expect("parses").missing_functions();
        assert_eq!(missing("LOWER(type) = 'a' AND ABS(1) = 1"), Vec::<String>::new());
        assert_eq!(missing("LOWR(type) = 'a'"), ["LOWR/1"]);
        assert_eq!(missing("NOT (ABS(1, 2) = 1) OR type IN ('a', NOSUCH())"), ["ABS/2", "NOSUCH/0"]);
        assert_eq!(missing("SUBSTRING(UPPER(x(type)), 1) LIKE 'a%'"), ["x/1"], "as written");
        let checked = parse("LOWR(type) = 'a' OR ABS(1, 2) = 1").expect("parses").check_functions();
        assert_eq!(checked, Err("calls a function CESQL does not have (name/arguments): LOWR/1, ABS/2".into()));
    }

    #[test]
    fn hostile_nesting_and_length_are_refused_not_followed() {
        // (what, the expression, the rule that refuses it)
        for (what, expression, rule) in [
            ("a long text", format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000)), "longer than"),
            ("parentheses", format!("{}1{}", "(".repeat(100), ")".repeat(100)), "nested deeper"),
            ("NOT", format!("{}TRUE", "NOT ".repeat(1_000)), "nested deeper"),
            ("minus", format!("{}1", "- ".repeat(100)), "nested deeper"),
            ("calls", format!("{}1{}", "ABS(".repeat(1_000), ")".repeat(1_000)), "nested deeper"),
            // Regression: IN sets skipped the nesting guard (refused by the token count alone).
            ("IN sets", format!("{}1{}", "1 IN (".repeat(100), ")".repeat(100)), "nested deeper"),
            ("a long chain", vec!["1"; 5_000].join(" + "), "operators"),
            ("many tokens", format!("1 IN ({})", vec!["1"; 9_000].join(",")), "tokens"),
        ] {
            let error = parse(&expression).expect_err(what);
            assert!(error.message.contains(rule), "{what}: {error:?}");
        }
    }

    /// Regression: an IN set of a few hundred event types (common in a Trigger; Knative sets no limit) was
    /// refused by the length and token limits, which were there to bound depth, not a flat set.
    #[test]
    fn a_long_in_set_of_types_parses_and_matches() {
        let types: Vec<String> = (0..1_000).map(|i| format!("'com.example.orders.v1.event{i}'")).collect();
        let expression = parse(&format!("id IN ({})", types.join(", "))).expect("a flat set of 1,000 parses");
        assert_eq!(expression.evaluate(&event()), (Value::Boolean(false), None));
        let expression = parse(&format!("id IN ({}, '1')", types.join(", "))).expect("parses");
        assert_eq!(expression.evaluate(&event()), (Value::Boolean(true), None));
    }

    /// Regression: LIKE backtracks to its last `%`, and a 64 KiB value (CONCAT_WS) against a pattern of thousands
    /// of items took about 10⁸ steps for every event the Trigger saw. It gives up past a step budget: false, with
    /// an error, as any evaluation error; ordinary patterns over long values stay far within it.
    #[test]
    fn regression_a_like_past_its_step_budget_gives_up_with_an_error() {
        let mut value = "'aaaaaaaa'".to_string();
        for _ in 0..13 {
            value = format!("CONCAT_WS({value},'','','')");
        }
        let pattern = format!("%{}b", "a".repeat(3_000));
        let (matched, error) = parse(&format!("{value} LIKE '{pattern}'")).expect("parses").evaluate(&event());
        assert_eq!(matched, Value::Boolean(false));
        assert!(matches!(&error, Some(EvalError::FunctionEvaluation(m)) if m.contains("gave up")), "{error:?}");
        let ordinary = format!("{value} LIKE '%a%aaaa_a%'");
        assert_eq!(parse(&ordinary).expect("parses").evaluate(&event()), (Value::Boolean(true), None));
    }

    /// Regression: a CONCAT_WS whose separator is another CONCAT_WS doubles its result per level; forty levels
    /// pass the parser's limits and asked for 2^40 bytes, aborting the node for any event a Trigger saw.
    #[test]
    fn regression_nested_concat_ws_is_refused_not_grown_without_bound() {
        let mut expression = "'x'".to_string();
        for _ in 0..40 {
            expression = format!("CONCAT_WS({expression},'','','')");
        }
        let expression = parse(&expression).expect("within the parser's limits");
        let (value, error) = expression.evaluate(&event());
        assert_eq!(value, Value::String(String::new()));
        assert!(matches!(error, Some(EvalError::FunctionEvaluation(ref m)) if m.contains("over 65536")), "{error:?}");
        let short = parse("CONCAT_WS('-', 'a', 'b')").expect("parses").evaluate(&event());
        assert_eq!(short, (Value::String("a-b".into()), None));
    }

    #[test]
    fn the_largest_accepted_tree_evaluates_and_drops_on_a_small_stack() {
        // A left-deep chain at the operator limit, the deepest tree the limits allow, on a 1 MiB stack (tokio's
        // workers have 2 MiB).
        let chain = vec!["1"; parser::MAX_OPERATORS + 1].join(" + ");
        let nested = format!("{}1{}", "(".repeat(parser::MAX_NESTING / 2 - 1), ")".repeat(parser::MAX_NESTING / 2 - 1));
        let worker = std::thread::Builder::new().stack_size(1 << 20).spawn(move || {
            let expression = parse(&chain).expect("at the limit parses");
            let (value, error) = expression.evaluate(&event());
            drop(expression);
            let nested = parse(&nested).expect("nesting within the limit parses");
            (value, error, nested.evaluate(&event()).0)
        });
        let (value, error, nested) = worker.expect("thread").join().expect("no stack overflow");
        assert_eq!((value, error, nested), (Value::Integer(parser::MAX_OPERATORS as i32 + 1), None, Value::Integer(1)));
    }

    fn event() -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        m.insert("id".into(), "1".into());
        m.insert("seq".into(), "10".into());
        m.insert("n".into(), 7.into());
        m
    }

    fn eval(expression: &str) -> (Value, Option<EvalError>) {
        parse(expression).expect("expression parses").evaluate(&event())
    }

    #[test]
    fn multiplicative_binds_tighter_than_additive() {
        assert_eq!(eval("1 + 2 * 3"), (Value::Integer(7), None));
        assert_eq!(eval("(1 + 2) * 3"), (Value::Integer(9), None));
        assert_eq!(eval("10 - 4 - 3"), (Value::Integer(3), None));
        assert_eq!(eval("-2 * 3 + 1"), (Value::Integer(-5), None));
    }

    #[test]
    fn comparison_binds_tighter_than_logic_and_logic_is_left_to_right() {
        assert_eq!(eval("1 + 1 = 2 AND 3 > 2"), (Value::Boolean(true), None));
        // AND, OR, XOR share one precedence level and associate left to right (spec §3.6).
        assert_eq!(eval("TRUE OR FALSE AND FALSE"), (Value::Boolean(false), None));
        assert_eq!(eval("NOT FALSE AND TRUE"), (Value::Boolean(true), None));
    }

    #[test]
    fn like_and_in_bind_tighter_than_binary_operators() {
        assert_eq!(eval("'abc' LIKE 'a%' = TRUE"), (Value::Boolean(true), None));
        assert_eq!(eval("1 IN (1, 2) AND 3 NOT IN (1, 2)"), (Value::Boolean(true), None));
    }

    #[test]
    fn equality_casts_left_operand_to_right_type() {
        assert_eq!(eval("seq = 10"), (Value::Boolean(true), None));
        assert_eq!(eval("n = '7'"), (Value::Boolean(true), None));
        assert_eq!(eval("TRUE = 'true'"), (Value::Boolean(true), None));
        assert_eq!(eval("'TRUE' = TRUE"), (Value::Boolean(true), None));
        assert_eq!(eval("TRUE = 'TRUE'"), (Value::Boolean(false), None));
    }

    #[test]
    fn arithmetic_casts_and_cast_errors() {
        assert_eq!(eval("seq + n"), (Value::Integer(17), None));
        assert!(matches!(eval("'x' + 1"), (Value::Integer(1), Some(EvalError::Cast(_)))));
        assert!(matches!(eval("NOT 1"), (Value::Boolean(true), Some(EvalError::Cast(_)))));
        assert_eq!(eval("BOOL(1)"), (Value::Boolean(true), None));
        assert!(matches!(eval("2147483647 + 1"), (_, Some(EvalError::Math(_)))));
    }

    #[test]
    fn errors_below_an_operator_yield_its_zero_value() {
        assert!(matches!(eval("TRUE AND (1 != 1 / 0)"), (Value::Boolean(false), Some(EvalError::Math(_)))));
        assert!(matches!(eval("missing * 5"), (Value::Integer(0), Some(EvalError::MissingAttribute(_)))));
        assert!(matches!(eval("NOSUCH(1)"), (Value::Boolean(false), Some(EvalError::MissingFunction(_)))));
        assert!(!parse("missing = 1").expect("parses").matches(&event()));
        assert!(parse("EXISTS id AND id = 1").expect("parses").matches(&event()));
    }

    #[test]
    fn parse_errors() {
        assert!(parse("ABC(").is_err());
        assert!(parse("x LIKE 1").is_err());
        assert!(parse("2147483648").is_err());
        assert_eq!(eval("-2147483648"), (Value::Integer(i32::MIN), None));
        assert!(parse("1 +").is_err());
        assert!(parse("(1").is_err());
    }
}
