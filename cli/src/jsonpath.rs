//! kubectl's JSONPath templates (`-o jsonpath=TEMPLATE`), the subset kubectl documents:
//!
//! - text, printed as it is, and `{EXPRESSION}` actions;
//! - paths: `.field`, `['field']`, `['a','b']`, `.*`, `[*]`, `[n]` (negative from the end), `[n:m]`,
//!   `[n:m:step]`, `[0,2]`, `..field` (recursive descent), `$` (the root) and `@` (the current object),
//!   `\.` for a dot inside a field name (`.metadata.annotations.eventing\.knative\.dev/broker\.class`);
//! - filters `[?(@.type=="Ready")]` with `==`, `!=`, `<`, `<=`, `>`, `>=` against a quoted string, a number,
//!   `true`, `false`, `null` or another path, and `[?(@.field)]` (the field exists);
//! - `{range PATH}...{end}` (nested too), and string literals `{"\n"}`, `{'\t'}`.
//!
//! As in kubectl: the several results of one expression are separated by spaces, strings print without
//! quotes and other values as compact JSON, and a missing field prints nothing
//! (`--allow-missing-template-keys`, kubectl's default).
//!
//! Bounds (a template is the user's own input, but `..` chains and nested ranges multiply): a template of at
//! most [`MAX_TEMPLATE_BYTES`], brackets, filters and ranges nested at most [`MAX_NESTING`] deep, and at most
//! [`MAX_VALUES`] values visited while rendering one document; past one, a clear error rather than a stack
//! overflow or a machine out of memory.

use serde_json::Value;

/// The longest template accepted.
pub(crate) const MAX_TEMPLATE_BYTES: usize = 16 * 1024;
/// How deep brackets, filters' parentheses and `{range}`s may nest.
pub(crate) const MAX_NESTING: usize = 32;
/// How many values rendering one document may visit (every step's results, ranges' iterations included).
pub(crate) const MAX_VALUES: u64 = 10_000_000;

/// What rendering may still visit.
struct Budget {
    values_left: u64,
}

impl Budget {
    fn spend(&mut self, values: usize) -> Result<(), String> {
        match self.values_left.checked_sub(values as u64) {
            Some(left) => {
                self.values_left = left;
                Ok(())
            }
            None => Err(format!("the template visits more than {MAX_VALUES} values in one document; narrow its paths")),
        }
    }
}

/// A parsed template.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Template {
    nodes: Vec<Node>,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Text(String),
    Path(Path),
    Range(Path, Vec<Node>),
}

#[derive(Clone, Debug, PartialEq)]
struct Path {
    /// Starts at `$` rather than at the current object.
    from_root: bool,
    steps: Vec<Step>,
}

#[derive(Clone, Debug, PartialEq)]
enum Step {
    Field(String),
    Fields(Vec<String>),
    /// Every member of an object, every element of an array.
    Wildcard,
    /// The value and every value under it (`..`), for the next step to select from.
    Descendants,
    Index(i64),
    Indexes(Vec<i64>),
    Slice {
        start: Option<i64>,
        end: Option<i64>,
        step: Option<i64>,
    },
    Filter(Box<Filter>),
}

#[derive(Clone, Debug, PartialEq)]
struct Filter {
    left: Path,
    /// None: the left path exists.
    comparison: Option<(Operator, Operand)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Operator {
    Equal,
    NotEqual,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

#[derive(Clone, Debug, PartialEq)]
enum Operand {
    Literal(Value),
    Path(Path),
}

/// The text of one `{...}` action.
enum Action {
    Path(Path),
    Literal(String),
    Range(Path),
    End,
}

impl Template {
    /// Parses a template such as `{range .items[*]}{.metadata.name}{"\n"}{end}`.
    pub(crate) fn parse(template: &str) -> Result<Self, String> {
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(format!("the template has {} bytes; at most {MAX_TEMPLATE_BYTES}", template.len()));
        }
        if nesting_depth(template) > MAX_NESTING {
            return Err(format!("brackets and parentheses nest more than {MAX_NESTING} deep"));
        }
        let mut actions = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find('{') {
                None => {
                    actions.push(Err(rest.to_string()));
                    rest = "";
                }
                Some(open) => {
                    if open > 0 {
                        actions.push(Err(rest[..open].to_string()));
                    }
                    let close = find_unquoted(&rest[open + 1..], '}')
                        .ok_or_else(|| format!("unclosed action: {:?}", &rest[open..]))?;
                    let inside = &rest[open + 1..open + 1 + close];
                    actions.push(Ok(parse_action(inside)?));
                    rest = &rest[open + 1 + close + 1..];
                }
            }
        }
        let mut actions = actions.into_iter();
        let nodes = build_nodes(&mut actions, 0)?;
        Ok(Self { nodes })
    }

    /// The template applied to `root`; an error when it would visit more than [`MAX_VALUES`] values.
    pub(crate) fn render(&self, root: &Value) -> Result<String, String> {
        let mut out = String::new();
        render_nodes(&self.nodes, root, root, &mut out, &mut Budget { values_left: MAX_VALUES })?;
        Ok(out)
    }
}

/// The deepest nesting of `[` and `(` outside quotes.
fn nesting_depth(template: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    for (_, c) in unquoted_chars(template) {
        match c {
            '[' | '(' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            ']' | ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

/// Nodes until `{end}` (inside a range, `ranges` deep) or the end of the template. Text is `Err(text)`.
fn build_nodes(actions: &mut impl Iterator<Item = Result<Action, String>>, ranges: usize) -> Result<Vec<Node>, String> {
    let mut nodes = Vec::new();
    while let Some(action) = actions.next() {
        match action {
            Err(text) => nodes.push(Node::Text(text)),
            Ok(Action::Literal(text)) => nodes.push(Node::Text(text)),
            Ok(Action::Path(path)) => nodes.push(Node::Path(path)),
            Ok(Action::Range(_)) if ranges >= MAX_NESTING => {
                return Err(format!("{{range}}s nest more than {MAX_NESTING} deep"));
            }
            Ok(Action::Range(path)) => nodes.push(Node::Range(path, build_nodes(actions, ranges + 1)?)),
            Ok(Action::End) if ranges > 0 => return Ok(nodes),
            Ok(Action::End) => return Err("{end} without {range}".into()),
        }
    }
    if ranges > 0 { Err("{range} without {end}".into()) } else { Ok(nodes) }
}

/// The characters of `text` outside single or double quotes (a quote's own characters and `\\`-escapes inside
/// it skipped), with their byte offsets.
fn unquoted_chars(text: &str) -> impl Iterator<Item = (usize, char)> + '_ {
    let mut quote: Option<char> = None;
    let mut escaped = false;
    text.char_indices().filter(move |&(_, c)| match quote {
        Some(_) if escaped => {
            escaped = false;
            false
        }
        Some(_) if c == '\\' => {
            escaped = true;
            false
        }
        Some(q) => {
            if c == q {
                quote = None;
            }
            false
        }
        None if c == '"' || c == '\'' => {
            quote = Some(c);
            false
        }
        None => true,
    })
}

/// The byte offset of the first `wanted` outside single or double quotes.
fn find_unquoted(text: &str, wanted: char) -> Option<usize> {
    unquoted_chars(text).find(|&(_, c)| c == wanted).map(|(i, _)| i)
}

fn parse_action(inside: &str) -> Result<Action, String> {
    let text = inside.trim();
    if text == "end" {
        return Ok(Action::End);
    }
    if let Some(path) = text.strip_prefix("range ") {
        return Ok(Action::Range(parse_path(path.trim())?));
    }
    if text.starts_with('"') || text.starts_with('\'') {
        let (literal, rest) = parse_quoted(text)?;
        if !rest.trim().is_empty() {
            return Err(format!("unexpected {rest:?} after the string in {{{inside}}}"));
        }
        return Ok(Action::Literal(literal));
    }
    if text.is_empty() {
        return Err("empty action {}".into());
    }
    Ok(Action::Path(parse_path(text)?))
}

/// A quoted string at the start of `text` (with `\n`, `\t`, `\r`, `\\`, `\"`, `\'`), and what follows it.
fn parse_quoted(text: &str) -> Result<(String, &str), String> {
    let mut chars = text.char_indices();
    let Some((_, quote)) = chars.next() else {
        return Err("expected a string".into());
    };
    let mut value = String::new();
    let mut escaped = false;
    for (i, c) in chars {
        if escaped {
            value.push(match c {
                'n' => '\n',
                't' => '\t',
                'r' => '\r',
                other => other,
            });
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == quote {
            return Ok((value, &text[i + c.len_utf8()..]));
        } else {
            value.push(c);
        }
    }
    Err(format!("unterminated string {text:?}"))
}

fn parse_path(text: &str) -> Result<Path, String> {
    let mut rest = text;
    let mut from_root = false;
    if let Some(after) = rest.strip_prefix('$') {
        from_root = true;
        rest = after;
    } else if let Some(after) = rest.strip_prefix('@') {
        rest = after;
    }
    let mut steps = Vec::new();
    // A bare field name at the start: `{items[0]}` as `{.items[0]}`.
    if !rest.is_empty() && !rest.starts_with('.') && !rest.starts_with('[') {
        let (name, after) = field_name(rest);
        steps.push(Step::Field(name));
        rest = after;
    }
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("..") {
            steps.push(Step::Descendants);
            rest = after;
            if let Some(after) = rest.strip_prefix('*') {
                steps.push(Step::Wildcard);
                rest = after;
            } else if !rest.starts_with('[') {
                let (name, after) = field_name(rest);
                if name.is_empty() {
                    return Err(format!("{text:?}: expected a field name after '..'"));
                }
                steps.push(Step::Field(name));
                rest = after;
            }
        } else if let Some(after) = rest.strip_prefix('.') {
            if let Some(after) = after.strip_prefix('*') {
                steps.push(Step::Wildcard);
                rest = after;
            } else {
                let (name, after) = field_name(after);
                if name.is_empty() {
                    // `{.}`: the current object itself.
                    if after.is_empty() {
                        break;
                    }
                    return Err(format!("{text:?}: expected a field name after '.'"));
                }
                steps.push(Step::Field(name));
                rest = after;
            }
        } else if let Some(after) = rest.strip_prefix('[') {
            let close = find_bracket_end(after).ok_or_else(|| format!("{text:?}: unclosed '['"))?;
            steps.push(parse_bracket(after[..close].trim()).map_err(|e| format!("{text:?}: {e}"))?);
            rest = &after[close + 1..];
        } else {
            return Err(format!("{text:?}: unexpected {rest:?}"));
        }
    }
    Ok(Path { from_root, steps })
}

/// A field name up to the next unescaped `.` or `[`; `\x` stands for `x`.
fn field_name(text: &str) -> (String, &str) {
    let mut name = String::new();
    let mut escaped = false;
    for (i, c) in text.char_indices() {
        if escaped {
            name.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == '.' || c == '[' {
            return (name, &text[i..]);
        } else {
            name.push(c);
        }
    }
    (name, "")
}

/// The offset of the `]` closing a bracket whose content starts `text` (quotes and nested brackets and
/// parentheses skipped).
fn find_bracket_end(text: &str) -> Option<usize> {
    let mut depth = 0i32;
    for (i, c) in unquoted_chars(text) {
        match c {
            '[' | '(' => depth += 1,
            ')' => depth -= 1,
            ']' if depth == 0 => return Some(i),
            ']' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn parse_bracket(inside: &str) -> Result<Step, String> {
    if inside == "*" {
        return Ok(Step::Wildcard);
    }
    if let Some(filter) = inside.strip_prefix('?') {
        let filter = filter.trim();
        let Some(body) = filter.strip_prefix('(').and_then(|f| f.strip_suffix(')')) else {
            return Err(format!("filter {inside:?}: expected ?(EXPRESSION)"));
        };
        return Ok(Step::Filter(Box::new(parse_filter(body.trim())?)));
    }
    if inside.starts_with('\'') || inside.starts_with('"') {
        let mut names = Vec::new();
        let mut rest = inside;
        loop {
            let (name, after) = parse_quoted(rest.trim_start())?;
            names.push(name);
            let after = after.trim_start();
            if after.is_empty() {
                break;
            }
            rest = after.strip_prefix(',').ok_or_else(|| format!("[{inside}]: expected ',' between names"))?;
        }
        return Ok(if names.len() == 1 { Step::Field(names.remove(0)) } else { Step::Fields(names) });
    }
    let number = |text: &str| -> Result<Option<i64>, String> {
        let text = text.trim();
        if text.is_empty() {
            Ok(None)
        } else {
            text.parse().map(Some).map_err(|_| format!("[{inside}]: {text:?} is not a number"))
        }
    };
    if inside.contains(':') {
        let parts: Vec<&str> = inside.split(':').collect();
        if parts.len() > 3 {
            return Err(format!("[{inside}]: a slice is [start:end:step]"));
        }
        let step = match parts.get(2) {
            Some(step) => number(step)?,
            None => None,
        };
        if step == Some(0) {
            return Err(format!("[{inside}]: the step cannot be 0"));
        }
        return Ok(Step::Slice { start: number(parts[0])?, end: number(parts[1])?, step });
    }
    if inside.contains(',') {
        let indexes = inside
            .split(',')
            .map(|i| number(i)?.ok_or_else(|| format!("[{inside}]: empty index")))
            .collect::<Result<_, _>>()?;
        return Ok(Step::Indexes(indexes));
    }
    match number(inside)? {
        Some(index) => Ok(Step::Index(index)),
        None => Err("empty brackets []".into()),
    }
}

fn parse_filter(body: &str) -> Result<Filter, String> {
    // The first operator outside quotes; two-character operators before their one-character prefixes.
    let mut quote: Option<char> = None;
    let chars: Vec<(usize, char)> = body.char_indices().collect();
    for (position, &(i, c)) in chars.iter().enumerate() {
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            continue;
        }
        if c == '"' || c == '\'' {
            quote = Some(c);
            continue;
        }
        let next = chars.get(position + 1).map(|&(_, c)| c);
        let operator = match (c, next) {
            ('=', Some('=')) => Some((Operator::Equal, 2)),
            ('!', Some('=')) => Some((Operator::NotEqual, 2)),
            ('<', Some('=')) => Some((Operator::LessOrEqual, 2)),
            ('>', Some('=')) => Some((Operator::GreaterOrEqual, 2)),
            ('<', _) => Some((Operator::Less, 1)),
            ('>', _) => Some((Operator::Greater, 1)),
            _ => None,
        };
        if let Some((operator, length)) = operator {
            let left = parse_path(body[..i].trim())?;
            let right = parse_operand(body[i + length..].trim())?;
            return Ok(Filter { left, comparison: Some((operator, right)) });
        }
    }
    if body.is_empty() {
        return Err("empty filter ?()".into());
    }
    Ok(Filter { left: parse_path(body)?, comparison: None })
}

fn parse_operand(text: &str) -> Result<Operand, String> {
    if text.starts_with('"') || text.starts_with('\'') {
        let (value, rest) = parse_quoted(text)?;
        if !rest.trim().is_empty() {
            return Err(format!("unexpected {rest:?} in a filter"));
        }
        return Ok(Operand::Literal(Value::String(value)));
    }
    match text {
        "true" => return Ok(Operand::Literal(Value::Bool(true))),
        "false" => return Ok(Operand::Literal(Value::Bool(false))),
        "null" => return Ok(Operand::Literal(Value::Null)),
        _ => {}
    }
    if let Ok(number) = text.parse::<f64>() {
        return Ok(Operand::Literal(serde_json::json!(number)));
    }
    if text.starts_with(['@', '$', '.']) {
        return Ok(Operand::Path(parse_path(text)?));
    }
    Err(format!("{text:?}: expected a quoted string, a number, true, false, null or a path"))
}

impl Path {
    fn evaluate<'a>(&self, root: &'a Value, current: &'a Value, budget: &mut Budget) -> Result<Vec<&'a Value>, String> {
        let mut values = vec![if self.from_root { root } else { current }];
        for step in &self.steps {
            let mut next = Vec::new();
            for value in values {
                next.extend(apply_step(step, root, value, budget)?);
            }
            values = next;
        }
        Ok(values)
    }

    /// Whether the path yields at most one value (no wildcard, slice, union, filter or descent).
    fn is_single_valued(&self) -> bool {
        self.steps.iter().all(|step| matches!(step, Step::Field(_) | Step::Index(_)))
    }
}

/// Python-style index: negative counts from the end.
fn resolve_index(index: i64, len: usize) -> Option<usize> {
    let len = i64::try_from(len).ok()?;
    let index = if index < 0 { len + index } else { index };
    (0..len).contains(&index).then_some(index as usize)
}

/// One step from `value`; what it yields is paid for from `budget`.
fn apply_step<'a>(
    step: &Step,
    root: &'a Value,
    value: &'a Value,
    budget: &mut Budget,
) -> Result<Vec<&'a Value>, String> {
    let values = match step {
        Step::Field(name) => value.get(name.as_str()).into_iter().collect(),
        Step::Fields(names) => names.iter().filter_map(|name| value.get(name.as_str())).collect(),
        Step::Wildcard => match value {
            Value::Object(map) => map.values().collect(),
            Value::Array(items) => items.iter().collect(),
            _ => Vec::new(),
        },
        Step::Descendants => {
            let mut all = Vec::new();
            collect_descendants(value, &mut all, budget)?;
            return Ok(all);
        }
        Step::Index(index) => match value {
            Value::Array(items) => resolve_index(*index, items.len()).map(|i| &items[i]).into_iter().collect(),
            _ => Vec::new(),
        },
        Step::Indexes(indexes) => match value {
            Value::Array(items) => {
                indexes.iter().filter_map(|index| resolve_index(*index, items.len())).map(|i| &items[i]).collect()
            }
            _ => Vec::new(),
        },
        Step::Slice { start, end, step } => match value {
            Value::Array(items) => slice(items, *start, *end, step.unwrap_or(1)),
            _ => Vec::new(),
        },
        Step::Filter(filter) => {
            let items: Vec<&Value> = match value {
                Value::Array(items) => items.iter().collect(),
                Value::Object(map) => map.values().collect(),
                _ => Vec::new(),
            };
            let mut matching = Vec::new();
            for item in items {
                if filter.matches(root, item, budget)? {
                    matching.push(item);
                }
            }
            matching
        }
    };
    budget.spend(values.len())?;
    Ok(values)
}

/// `value` and everything under it (serde_json's parser bounds how deep that goes).
fn collect_descendants<'a>(value: &'a Value, all: &mut Vec<&'a Value>, budget: &mut Budget) -> Result<(), String> {
    budget.spend(1)?;
    all.push(value);
    match value {
        Value::Object(map) => map.values().try_for_each(|v| collect_descendants(v, all, budget)),
        Value::Array(items) => items.iter().try_for_each(|v| collect_descendants(v, all, budget)),
        _ => Ok(()),
    }
}

/// `items[start:end:step]` as Python slices them (bounds clamped, negatives from the end).
fn slice(items: &[Value], start: Option<i64>, end: Option<i64>, step: i64) -> Vec<&Value> {
    let len = i64::try_from(items.len()).unwrap_or(i64::MAX);
    let clamp = |index: i64, low: i64, high: i64| (if index < 0 { index + len } else { index }).clamp(low, high);
    let mut picked = Vec::new();
    if step > 0 {
        let (mut i, end) = (start.map_or(0, |s| clamp(s, 0, len)), end.map_or(len, |e| clamp(e, 0, len)));
        while i < end {
            picked.push(&items[i as usize]);
            let Some(next) = i.checked_add(step) else { break };
            i = next;
        }
    } else {
        let (mut i, end) =
            (start.map_or(len - 1, |s| clamp(s, -1, len - 1)), end.map_or(-1, |e| clamp(e, -1, len - 1)));
        while i > end {
            picked.push(&items[i as usize]);
            i += step;
        }
    }
    picked
}

impl Filter {
    fn matches(&self, root: &Value, item: &Value, budget: &mut Budget) -> Result<bool, String> {
        let lefts = self.left.evaluate(root, item, budget)?;
        let Some((operator, operand)) = &self.comparison else {
            return Ok(!lefts.is_empty());
        };
        let rights: Vec<&Value> = match operand {
            Operand::Literal(value) => vec![value],
            Operand::Path(path) => path.evaluate(root, item, budget)?,
        };
        // Each comparison is a visit too: both sides may be long lists.
        budget.spend(lefts.len().saturating_mul(rights.len()))?;
        Ok(lefts.iter().any(|left| rights.iter().any(|right| compare(left, *operator, right))))
    }
}

fn compare(left: &Value, operator: Operator, right: &Value) -> bool {
    let ordering = match (left, right) {
        (Value::Number(a), Value::Number(b)) => a.as_f64().zip(b.as_f64()).and_then(|(a, b)| a.partial_cmp(&b)),
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (a, b) if a == b => Some(std::cmp::Ordering::Equal),
        _ => None,
    };
    use std::cmp::Ordering::{Equal, Greater, Less};
    match operator {
        Operator::Equal => ordering == Some(Equal),
        Operator::NotEqual => ordering != Some(Equal),
        Operator::Less => ordering == Some(Less),
        Operator::LessOrEqual => matches!(ordering, Some(Less | Equal)),
        Operator::Greater => ordering == Some(Greater),
        Operator::GreaterOrEqual => matches!(ordering, Some(Greater | Equal)),
    }
}

/// A value as kubectl prints it: strings as they are, anything else as compact JSON.
fn text_of(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

fn render_nodes(
    nodes: &[Node],
    root: &Value,
    current: &Value,
    out: &mut String,
    budget: &mut Budget,
) -> Result<(), String> {
    for node in nodes {
        // Every node rendered is a visit, so ranges nested over long lists end too, whatever they print.
        budget.spend(1)?;
        match node {
            Node::Text(text) => out.push_str(text),
            Node::Path(path) => {
                let texts: Vec<String> = path.evaluate(root, current, budget)?.into_iter().map(text_of).collect();
                out.push_str(&texts.join(" "));
            }
            Node::Range(path, body) => {
                let values = path.evaluate(root, current, budget)?;
                // `{range .items}` ranges over the array's elements, as `{range .items[*]}` does.
                let elements: Vec<&Value> = match values.as_slice() {
                    [Value::Array(items)] if path.is_single_valued() => items.iter().collect(),
                    _ => values,
                };
                for element in elements {
                    render_nodes(body, root, element, out, budget)?;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
