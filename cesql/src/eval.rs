//! Evaluation of an expression tree against an event.
//!
//! Errors are collected in evaluation order (complete evaluation mode, §4.1). A node whose operand evaluation
//! raised an error returns the zero value of its own return type (§3.2, §3.3), so an error anywhere below an
//! operator yields that operator's zero value; an error raised by the operator itself (an implicit cast, a
//! division by zero, a function's own failure) keeps the value the operator defines for that case.

use super::parser::{BinaryOp, Function, Node, PatternItem};
use super::{EvalError, EventAttributes, Type, Value};

/// Result of evaluating one node: its value, and whether an error was raised in it or below it.
struct Out {
    value: Value,
    failed: bool,
}

impl Out {
    fn ok(value: Value) -> Out {
        Out { value, failed: false }
    }

    fn failed(value: Value) -> Out {
        Out { value, failed: true }
    }
}

pub(crate) struct Evaluator<'a> {
    event: &'a dyn EventAttributes,
    pub errors: Vec<EvalError>,
}

impl<'a> Evaluator<'a> {
    pub(crate) fn new(event: &'a dyn EventAttributes) -> Self {
        Evaluator { event, errors: Vec::new() }
    }

    pub(crate) fn evaluate(&mut self, node: &Node) -> Value {
        self.eval(node).value
    }

    /// Implicit cast (§3.7). Integer → Boolean is not applied implicitly: it raises a CastError and yields false.
    fn implicit_cast(&mut self, value: Value, target: Type) -> (Value, bool) {
        match (value, target) {
            (Value::Integer(i), Type::Boolean) => {
                self.errors.push(EvalError::Cast(format!("cannot implicitly cast integer {i} to boolean")));
                (Value::Boolean(false), true)
            }
            (value, target) => self.explicit_cast(value, target),
        }
    }

    /// Cast following the semantics of §3.7's table.
    fn explicit_cast(&mut self, value: Value, target: Type) -> (Value, bool) {
        match cast(value, target) {
            Ok(v) => (v, false),
            Err((v, err)) => {
                self.errors.push(err);
                (v, true)
            }
        }
    }

    fn eval(&mut self, node: &Node) -> Out {
        match node {
            Node::Literal(v) => Out::ok(v.clone()),
            Node::Attribute(name) => match self.event.attribute(name) {
                Some(v) => Out::ok(v),
                None => {
                    self.errors.push(EvalError::MissingAttribute(name.clone()));
                    // Return type unknown to the attribute itself: Boolean is assumed (§3.2).
                    Out::failed(Value::Boolean(false))
                }
            },
            Node::Exists(name) => Out::ok(Value::Boolean(self.event.attribute(name).is_some())),
            Node::Not(inner) => {
                let x = self.eval(inner);
                if x.failed {
                    return Out::failed(Value::Boolean(false));
                }
                let (v, failed) = self.implicit_cast(x.value, Type::Boolean);
                Out { value: Value::Boolean(!as_bool(&v)), failed }
            }
            Node::Negate(inner) => {
                let x = self.eval(inner);
                if x.failed {
                    return Out::failed(Value::Integer(0));
                }
                let (v, mut failed) = self.implicit_cast(x.value, Type::Integer);
                let i = as_int(&v);
                let value = match i.checked_neg() {
                    Some(n) => n,
                    None => {
                        self.errors.push(EvalError::Math(format!("-({i}) overflows a 32 bit integer")));
                        failed = true;
                        i32::MAX
                    }
                };
                Out { value: Value::Integer(value), failed }
            }
            Node::Binary(op, left, right) => self.binary(*op, left, right),
            Node::Like { operand, pattern, negated } => {
                let x = self.eval(operand);
                if x.failed {
                    return Out::failed(Value::Boolean(false));
                }
                let (v, failed) = self.implicit_cast(x.value, Type::String);
                let text: Vec<char> = as_str(&v).chars().collect();
                match like(&text, pattern, LIKE_MAX_STEPS) {
                    Some(matched) => Out { value: Value::Boolean(matched != *negated), failed },
                    None => {
                        self.errors.push(EvalError::FunctionEvaluation(format!(
                            "LIKE gave up after {LIKE_MAX_STEPS} steps (a {}-character value, a {}-item pattern)",
                            text.len(),
                            pattern.len()
                        )));
                        Out::failed(Value::Boolean(false))
                    }
                }
            }
            Node::In { operand, set, negated } => {
                let x = self.eval(operand);
                if x.failed {
                    return Out::failed(Value::Boolean(false));
                }
                let target = x.value.value_type();
                let mut found = false;
                let mut failed = false;
                for element in set {
                    let e = self.eval(element);
                    if e.failed {
                        return Out::failed(Value::Boolean(false));
                    }
                    let (v, cast_failed) = self.implicit_cast(e.value, target);
                    failed |= cast_failed;
                    found |= v == x.value;
                }
                Out { value: Value::Boolean(found != *negated), failed }
            }
            Node::Call { function, args } => self.call(*function, args),
            Node::MissingFunction { name, arity } => {
                self.errors.push(EvalError::MissingFunction(format!("{name} with arity {arity}")));
                Out::failed(Value::Boolean(false))
            }
        }
    }

    fn binary(&mut self, op: BinaryOp, left: &Node, right: &Node) -> Out {
        match op {
            BinaryOp::And | BinaryOp::Or => {
                let l = self.eval(left);
                if l.failed {
                    return Out::failed(Value::Boolean(false));
                }
                let (lv, l_failed) = self.implicit_cast(l.value, Type::Boolean);
                let lb = as_bool(&lv);
                // Short circuit: the right operand is not evaluated.
                if (op == BinaryOp::And && !lb) || (op == BinaryOp::Or && lb) {
                    return Out { value: Value::Boolean(lb), failed: l_failed };
                }
                let r = self.eval(right);
                if r.failed {
                    return Out::failed(Value::Boolean(false));
                }
                let (rv, r_failed) = self.implicit_cast(r.value, Type::Boolean);
                Out { value: Value::Boolean(as_bool(&rv)), failed: l_failed || r_failed }
            }
            _ => {
                let l = self.eval(left);
                let r = self.eval(right);
                let return_type = match op {
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div | BinaryOp::Mod => Type::Integer,
                    _ => Type::Boolean,
                };
                if l.failed || r.failed {
                    return Out::failed(return_type.zero());
                }
                self.apply_binary(op, l.value, r.value)
            }
        }
    }

    fn apply_binary(&mut self, op: BinaryOp, l: Value, r: Value) -> Out {
        match op {
            BinaryOp::Xor => {
                let (lv, lf) = self.implicit_cast(l, Type::Boolean);
                let (rv, rf) = self.implicit_cast(r, Type::Boolean);
                Out { value: Value::Boolean(as_bool(&lv) ^ as_bool(&rv)), failed: lf || rf }
            }
            BinaryOp::Eq | BinaryOp::NotEq => {
                // Ambiguous operator: the right operand's type selects the definition, the left one is cast.
                let target = r.value_type();
                let (lv, failed) = self.implicit_cast(l, target);
                let equal = lv == r;
                Out { value: Value::Boolean(if op == BinaryOp::Eq { equal } else { !equal }), failed }
            }
            _ => {
                let (lv, lf) = self.implicit_cast(l, Type::Integer);
                let (rv, rf) = self.implicit_cast(r, Type::Integer);
                let (x, y) = (as_int(&lv), as_int(&rv));
                let mut failed = lf || rf;
                let value = match op {
                    BinaryOp::Lt => Value::Boolean(x < y),
                    BinaryOp::Le => Value::Boolean(x <= y),
                    BinaryOp::Gt => Value::Boolean(x > y),
                    BinaryOp::Ge => Value::Boolean(x >= y),
                    _ => {
                        let (result, error) = arithmetic(op, x, y);
                        if let Some(e) = error {
                            self.errors.push(e);
                            failed = true;
                        }
                        Value::Integer(result)
                    }
                };
                Out { value, failed }
            }
        }
    }

    fn call(&mut self, function: Function, args: &[Node]) -> Out {
        let return_type = match function {
            Function::Abs | Function::Length | Function::Int => Type::Integer,
            Function::Bool | Function::IsBool | Function::IsInt => Type::Boolean,
            _ => Type::String,
        };
        let mut values = Vec::with_capacity(args.len());
        let mut any_failed = false;
        for arg in args {
            let out = self.eval(arg);
            any_failed |= out.failed;
            values.push(out.value);
        }
        if any_failed {
            return Out::failed(return_type.zero());
        }
        match function {
            Function::Int | Function::Bool | Function::String => {
                let target = return_type;
                let value = values.into_iter().next().unwrap_or(Value::Boolean(false));
                let (v, failed) = self.explicit_cast(value, target);
                return Out { value: v, failed };
            }
            Function::IsBool | Function::IsInt => {
                let target = return_type_of_check(function);
                let value = values.into_iter().next().unwrap_or(Value::Boolean(false));
                let result = match (&value, target) {
                    (Value::String(_), t) => cast(value, t).is_ok(),
                    (v, t) => v.value_type() == t,
                };
                return Out::ok(Value::Boolean(result));
            }
            _ => {}
        }
        let param_types: Vec<Type> = (0..values.len())
            .map(|i| match (function, i) {
                (Function::Abs, _) => Type::Integer,
                (Function::Left | Function::Right | Function::Substring, i) if i > 0 => Type::Integer,
                _ => Type::String,
            })
            .collect();
        let mut failed = false;
        let mut cast_values = Vec::with_capacity(values.len());
        for (v, t) in values.into_iter().zip(param_types) {
            let (cv, f) = self.implicit_cast(v, t);
            failed |= f;
            cast_values.push(cv);
        }
        let (value, error) = builtin(function, &cast_values);
        if let Some(e) = error {
            self.errors.push(e);
            failed = true;
        }
        Out { value, failed }
    }
}

fn return_type_of_check(function: Function) -> Type {
    if function == Function::IsInt { Type::Integer } else { Type::Boolean }
}

fn as_bool(v: &Value) -> bool {
    matches!(v, Value::Boolean(true))
}

fn as_int(v: &Value) -> i32 {
    match v {
        Value::Integer(i) => *i,
        _ => 0,
    }
}

fn as_str(v: &Value) -> &str {
    match v {
        Value::String(s) => s,
        _ => "",
    }
}

fn int_arg(values: &[Value], i: usize) -> i32 {
    values.get(i).map_or(0, as_int)
}

fn str_arg(values: &[Value], i: usize) -> &str {
    values.get(i).map_or("", as_str)
}

/// Cast semantics of §3.7; on failure returns the target type's zero value with a CastError.
pub(crate) fn cast(value: Value, target: Type) -> Result<Value, (Value, EvalError)> {
    match (value, target) {
        (v, t) if v.value_type() == t => Ok(v),
        (Value::Integer(i), Type::String) => Ok(Value::String(i.to_string())),
        (Value::Integer(i), Type::Boolean) => Ok(Value::Boolean(i != 0)),
        (Value::Boolean(b), Type::Integer) => Ok(Value::Integer(i32::from(b))),
        (Value::Boolean(b), Type::String) => Ok(Value::String(b.to_string())),
        (Value::String(s), Type::Integer) => parse_int(&s).map(Value::Integer).ok_or_else(|| {
            (Value::Integer(0), EvalError::Cast(format!("cannot cast string {s:?} to a 32 bit integer")))
        }),
        (Value::String(s), Type::Boolean) => match s.to_lowercase().as_str() {
            "true" => Ok(Value::Boolean(true)),
            "false" => Ok(Value::Boolean(false)),
            _ => Err((Value::Boolean(false), EvalError::Cast(format!("cannot cast string {s:?} to boolean")))),
        },
        (v, t) => Err((t.zero(), EvalError::Generic(format!("unsupported cast of {v:?} to {t:?}")))),
    }
}

/// Base 10, optional leading sign, must fit in 32 bits.
fn parse_int(s: &str) -> Option<i32> {
    let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
    if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    s.parse::<i32>().ok()
}

fn arithmetic(op: BinaryOp, x: i32, y: i32) -> (i32, Option<EvalError>) {
    let overflow = |wrapped: i32| (wrapped, Some(EvalError::Math(format!("{op:?} of {x} and {y} overflows"))));
    match op {
        BinaryOp::Add => x.checked_add(y).map_or_else(|| overflow(x.wrapping_add(y)), |v| (v, None)),
        BinaryOp::Sub => x.checked_sub(y).map_or_else(|| overflow(x.wrapping_sub(y)), |v| (v, None)),
        BinaryOp::Mul => x.checked_mul(y).map_or_else(|| overflow(x.wrapping_mul(y)), |v| (v, None)),
        BinaryOp::Div | BinaryOp::Mod if y == 0 => (0, Some(EvalError::Math("division by zero".to_owned()))),
        BinaryOp::Div => x.checked_div(y).map_or_else(|| overflow(x.wrapping_div(y)), |v| (v, None)),
        BinaryOp::Mod => (x.wrapping_rem(y), None),
        _ => (0, Some(EvalError::Generic(format!("{op:?} is not an arithmetic operator")))),
    }
}

/// The longest string a function may build (an event's attributes are far shorter; the limit keeps a hostile
/// expression from growing one without bound).
pub(crate) const MAX_STRING_RESULT_BYTES: usize = 64 << 10;

fn builtin(function: Function, args: &[Value]) -> (Value, Option<EvalError>) {
    let s = str_arg(args, 0);
    let string = |v: String| (Value::String(v), None);
    match function {
        Function::Abs => {
            let x = int_arg(args, 0);
            match x.checked_abs() {
                Some(v) => (Value::Integer(v), None),
                None => (Value::Integer(i32::MAX), Some(EvalError::Math(format!("ABS({x}) overflows")))),
            }
        }
        Function::Length => (Value::Integer(i32::try_from(s.chars().count()).unwrap_or(i32::MAX)), None),
        Function::Concat | Function::ConcatWs => {
            let (separator, parts) = match function {
                Function::ConcatWs => (s, args.get(1..).unwrap_or_default()),
                _ => ("", args),
            };
            let parts: Vec<&str> = parts.iter().map(as_str).collect();
            let total = parts.iter().map(|p| p.len()).sum::<usize>()
                + separator.len().saturating_mul(parts.len().saturating_sub(1));
            if total > MAX_STRING_RESULT_BYTES {
                // A CONCAT_WS whose separator is another one doubles per level: 40 levels fit an expression's
                // limits and would ask for a terabyte, in every node, for every event a filter sees.
                let msg = format!("{function:?}: a result of {total} bytes, over {MAX_STRING_RESULT_BYTES}");
                return (Value::String(String::new()), Some(EvalError::FunctionEvaluation(msg)));
            }
            string(parts.join(separator))
        }
        Function::Lower => string(s.to_lowercase()),
        Function::Upper => string(s.to_uppercase()),
        Function::Trim => string(s.trim().to_owned()),
        Function::Left | Function::Right => {
            let y = int_arg(args, 1);
            let Ok(count) = usize::try_from(y) else {
                return (
                    Value::String(s.to_owned()),
                    Some(EvalError::FunctionEvaluation(format!("{function:?}: negative length {y}"))),
                );
            };
            let chars: Vec<char> = s.chars().collect();
            let count = count.min(chars.len());
            if function == Function::Left {
                string(chars[..count].iter().collect())
            } else {
                string(chars[chars.len() - count..].iter().collect())
            }
        }
        Function::Substring => substring(s, int_arg(args, 1), args.get(2).map(as_int)),
        Function::Int | Function::Bool | Function::String | Function::IsBool | Function::IsInt => {
            (Value::Boolean(false), Some(EvalError::Generic(format!("{function:?} is not dispatched here"))))
        }
    }
}

fn substring(s: &str, pos: i32, len: Option<i32>) -> (Value, Option<EvalError>) {
    let chars: Vec<char> = s.chars().collect();
    let n = i64::try_from(chars.len()).unwrap_or(i64::MAX);
    let pos = i64::from(pos);
    let fail = |msg: String| (Value::String(String::new()), Some(EvalError::FunctionEvaluation(msg)));
    if pos > n || pos < -n {
        return fail(format!("SUBSTRING: position {pos} out of range for a string of length {n}"));
    }
    if let Some(l) = len
        && l < 0
    {
        return fail(format!("SUBSTRING: negative length {l}"));
    }
    if pos == 0 {
        return (Value::String(String::new()), None);
    }
    let start = if pos > 0 { pos - 1 } else { n + pos };
    let end = match len {
        Some(l) => (start + i64::from(l)).min(n),
        None => n,
    };
    let (start, end) = (usize::try_from(start).unwrap_or(0), usize::try_from(end).unwrap_or(0));
    (Value::String(chars[start..end].iter().collect()), None)
}

/// The most steps one LIKE takes before it gives up with an error (false, as any evaluation error): the
/// matcher backtracks to its last `%`, so a long value against a long pattern costs their lengths' product
/// (64 KiB of `CONCAT_WS` against a 4,000-item pattern, 2.6×10⁸ steps per event), and a Trigger's filter runs
/// for every event of its Broker. A million steps is a few milliseconds, and far more than a match of any value
/// against a pattern of a few `%` needs (about the value's length per `%` backtracked over).
pub(crate) const LIKE_MAX_STEPS: u64 = 1_000_000;

/// Whether `text` matches `pattern`; `None` past `max_steps`. Wildcard matching with single-star backtracking:
/// linear in practice, no recursion.
fn like(text: &[char], pattern: &[PatternItem], max_steps: u64) -> Option<bool> {
    let (mut t, mut p) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    let mut steps = 0u64;
    while t < text.len() {
        steps += 1;
        if steps > max_steps {
            return None;
        }
        match pattern.get(p) {
            Some(PatternItem::Any) => {
                star = Some((p, t));
                p += 1;
            }
            Some(PatternItem::One) => {
                t += 1;
                p += 1;
            }
            Some(PatternItem::Char(c)) if *c == text[t] => {
                t += 1;
                p += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    p = sp + 1;
                    t = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return Some(false),
            },
        }
    }
    Some(pattern.get(p..).unwrap_or_default().iter().all(|item| *item == PatternItem::Any))
}
