//! Subscriptions API filters: compiled once per Trigger (or EventPolicy), evaluated for every event.
//!
//! What flows in: a Trigger's `spec.filter.attributes` (Knative's legacy exact-match map) and `spec.filters` (the
//! CloudEvents Subscriptions API dialects `exact`, `prefix`, `suffix`, `all`, `any`, `not` and `cesql`), as the
//! controller stored them. [`compile`] validates them and parses every CESQL expression once, producing a
//! [`CompiledFilter`]. What flows out: for each event (anything implementing [`EventAttributes`]), a yes/no
//! decision per Trigger, from [`CompiledFilter::matches`] or, for all the Triggers of a Broker at once, from
//! [`FilterIndex::matching`].
//!
//! Semantics:
//! - `filter.attributes`: every key must be present on the event; a non-empty value must equal the attribute's
//!   canonical string form (case-sensitive); an empty value matches any value. A missing or empty map matches
//!   every event.
//! - `filters`: every filter of the list must match. When `filters` is present and non-empty it replaces
//!   `filter.attributes` (Knative's rule); when both are absent every event matches.
//! - A missing attribute never matches `exact`, `prefix` or `suffix`; a CESQL expression matches only when it
//!   evaluates to `TRUE` without any error.
//!
//! Everything here is pure and synchronous: no I/O, no clock, no randomness.

use std::collections::{BTreeMap, HashMap};

use serde_json::Value as Json;

/// A CESQL evaluation error, as a filter's evaluation reports it ([`CompiledFilter::matches_noting_errors`]).
pub use sluice_cesql::EvalError;
use sluice_cesql::{self as cesql, EventAttributes, Expression, Value};

/// A Trigger filter that cannot be compiled. `path` names the offending field relative to the Trigger's spec
/// (`filter.attributes[Type]`, `filters[0].cesql`, `filters[1].all[0].exact`), the same way the controller
/// names fields, so that an operator can find it in the object.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("{path}: expected {expected}")]
    WrongType { path: String, expected: &'static str },
    #[error("{path}: a filter holds at most one of exact, prefix, suffix, all, any, not, cesql; got {found}")]
    DialectCount { path: String, found: usize },
    #[error("{path}: unsupported filter dialect {dialect:?}")]
    UnknownDialect { path: String, dialect: String },
    #[error("{path}: attribute names match ^[a-z][a-z0-9]*$")]
    InvalidAttributeName { path: String },
    #[error("{path}: must not be empty")]
    EmptyValue { path: String },
    #[error("{path}: {source}")]
    Cesql { path: String, source: cesql::ParseError },
}

impl FilterError {
    /// The offending field, relative to the Trigger's spec.
    pub fn path(&self) -> &str {
        match self {
            FilterError::WrongType { path, .. }
            | FilterError::DialectCount { path, .. }
            | FilterError::UnknownDialect { path, .. }
            | FilterError::InvalidAttributeName { path }
            | FilterError::EmptyValue { path }
            | FilterError::Cesql { path, .. } => path,
        }
    }
}

/// The dialects of the Subscriptions API that Sluice supports, in the controller's order. `cesql` is Knative's
/// name for the Subscriptions API's optional `sql` dialect; `sql` itself is not accepted because the controller
/// does not know it either, and a Trigger the controller would store must compile the same way here.
const DIALECTS: [&str; 7] = ["exact", "prefix", "suffix", "all", "any", "not", "cesql"];

/// One node of a compiled filter.
#[derive(Debug, Clone)]
enum Node {
    /// The attribute is present and its canonical string form equals `value`.
    Exact {
        attribute: String,
        value: String,
    },
    /// The attribute is present and its canonical string form starts with `value`.
    Prefix {
        attribute: String,
        value: String,
    },
    /// The attribute is present and its canonical string form ends with `value`.
    Suffix {
        attribute: String,
        value: String,
    },
    /// The attribute is present, whatever its value (legacy `filter.attributes` with an empty value).
    Present {
        attribute: String,
    },
    /// Every nested node matches; an empty list matches everything (no filter at all).
    All(Vec<Node>),
    /// At least one nested node matches.
    Any(Vec<Node>),
    Not(Box<Node>),
    Cesql(Box<Expression>),
}

impl Node {
    fn matches(&self, event: &dyn EventAttributes) -> bool {
        self.matches_noting(event, &mut None)
    }

    /// [`Node::matches`], noting in `error` the first CESQL evaluation error met (an error means no match for
    /// its expression; the filter's owner should be told why nothing matches).
    fn matches_noting(&self, event: &dyn EventAttributes, error: &mut Option<cesql::EvalError>) -> bool {
        match self {
            Node::All(nodes) => nodes.iter().all(|n| n.matches_noting(event, error)),
            Node::Any(nodes) => nodes.iter().any(|n| n.matches_noting(event, error)),
            Node::Not(node) => !node.matches_noting(event, error),
            Node::Cesql(expression) => match expression.evaluate(event) {
                (Value::Boolean(true), None) => true,
                (_, None) => false,
                (_, Some(failed)) => {
                    error.get_or_insert(failed);
                    false
                }
            },
            Node::Exact { attribute, value } => attribute_string(event, attribute).is_some_and(|v| v == *value),
            Node::Prefix { attribute, value } => {
                attribute_string(event, attribute).is_some_and(|v| v.starts_with(value.as_str()))
            }
            Node::Suffix { attribute, value } => {
                attribute_string(event, attribute).is_some_and(|v| v.ends_with(value.as_str()))
            }
            Node::Present { attribute } => event.attribute(attribute).is_some(),
        }
    }

    /// Collects the `(attribute, value)` pairs every matching event must carry: the `exact` nodes reachable from
    /// the root through `all` only (an `exact` below `any` or `not` is not required).
    fn required_exact<'a>(&'a self, out: &mut Vec<(&'a str, &'a str)>) {
        match self {
            Node::Exact { attribute, value } => out.push((attribute, value)),
            Node::All(nodes) => nodes.iter().for_each(|n| n.required_exact(out)),
            _ => {}
        }
    }
}

/// An attribute's canonical string form, the form Knative's exact matching and the Subscriptions API's string
/// dialects compare against: strings as they are, integers in base 10, booleans as `true`/`false`.
fn canonical_string(value: Value) -> String {
    match value {
        Value::String(s) => s,
        Value::Integer(i) => i.to_string(),
        Value::Boolean(b) => b.to_string(),
    }
}

fn attribute_string(event: &dyn EventAttributes, attribute: &str) -> Option<String> {
    event.attribute(attribute).map(canonical_string)
}

/// A Trigger's filter, validated and with its CESQL expressions parsed; evaluating it does no parsing.
#[derive(Debug, Clone)]
pub struct CompiledFilter {
    root: Node,
}

impl CompiledFilter {
    /// A filter matching every event: the Trigger has neither `filter.attributes` nor `filters`.
    pub fn match_all() -> Self {
        CompiledFilter { root: Node::All(Vec::new()) }
    }

    /// Whether the event is selected by the Trigger.
    pub fn matches(&self, event: &dyn EventAttributes) -> bool {
        self.root.matches(event)
    }

    /// [`CompiledFilter::matches`], with the first CESQL evaluation error met on the way (a missing attribute,
    /// a cast that fails): the event did not match, and the filter's owner may want to know why.
    pub fn matches_noting_errors(&self, event: &dyn EventAttributes) -> (bool, Option<cesql::EvalError>) {
        let mut error = None;
        let matched = self.root.matches_noting(event, &mut error);
        (matched, error)
    }

    /// The `(attribute, value)` pair a [`FilterIndex`] files this filter under: one exact value every matching
    /// event must carry. `type` is preferred, then `source`, because they are the attributes Triggers filter on
    /// most and they are present on every event; otherwise the smallest attribute name, so the choice does not
    /// depend on the order of the spec's fields.
    fn index_key(&self) -> Option<(&str, &str)> {
        let mut required = Vec::new();
        self.root.required_exact(&mut required);
        let preferred = |name: &str| required.iter().copied().find(|(attribute, _)| *attribute == name);
        preferred("type").or_else(|| preferred("source")).or_else(|| required.iter().copied().min())
    }
}

/// Compiles a Trigger's filter from its `spec.filter.attributes` and its `spec.filters` (the JSON array of filter
/// objects). Both fields are validated even when `filters` replaces `filter.attributes`, so that a mistake does
/// not lie dormant until the other field is removed.
pub fn compile(
    filter_attributes: Option<&BTreeMap<String, String>>,
    filters: Option<&Json>,
) -> Result<CompiledFilter, FilterError> {
    let legacy = filter_attributes.map(compile_attributes).transpose()?;
    let filters = match filters {
        // `null` is how an absent field may be serialized; the controller reads it as absent too.
        None | Some(Json::Null) => None,
        // A non-empty list is the filter even when each of its filters is empty (Knative: `len(filters) > 0`).
        Some(Json::Array(items)) if !items.is_empty() => Some(filter_list(items, "filters")?),
        Some(Json::Array(_)) => None,
        Some(_) => return Err(FilterError::WrongType { path: "filters".into(), expected: "an array of filters" }),
    };
    let root = match (filters, legacy) {
        (Some(filters), _) => Node::All(filters),
        (None, Some(legacy)) => legacy,
        (None, None) => Node::All(Vec::new()),
    };
    Ok(CompiledFilter { root })
}

fn check_attribute_name(name: &str, path: impl FnOnce() -> String) -> Result<(), FilterError> {
    let mut chars = name.chars();
    let valid = matches!(chars.next(), Some(c) if c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if valid { Ok(()) } else { Err(FilterError::InvalidAttributeName { path: path() }) }
}

/// The attributes Knative's `filter.attributes` sees on every event, set to `""` when the event lacks them
/// (`pkg/eventfilter/attributes`: the SDK's getters): an empty value on one of them matches every event.
const KNATIVE_ALWAYS_PRESENT: [&str; 10] = [
    "specversion",
    "type",
    "source",
    "subject",
    "id",
    "time",
    "schemaurl",
    "datacontenttype",
    "datamediatype",
    "datacontentencoding",
];

fn compile_attributes(attributes: &BTreeMap<String, String>) -> Result<Node, FilterError> {
    let nodes = attributes
        .iter()
        .map(|(attribute, value)| {
            check_attribute_name(attribute, || format!("filter.attributes[{attribute}]"))?;
            Ok(if value.is_empty() && KNATIVE_ALWAYS_PRESENT.contains(&attribute.as_str()) {
                // Regression: `subject: ""` matched only events with a subject, where Knative matches all.
                Node::All(Vec::new())
            } else if value.is_empty() {
                Node::Present { attribute: attribute.clone() }
            } else {
                Node::Exact { attribute: attribute.clone(), value: value.clone() }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Node::All(nodes))
}

/// Whether a dialect's body is empty: set, but with nothing in it (`{"exact": {}}`, `{"all": []}`,
/// `{"not": {}}`, `{"cesql": ""}`, or `null`). Knative's webhook counts only the non-empty ones, and its
/// `MaterializeSubscriptionsAPIFilter` makes no filter of an empty one: the filter is skipped where it stands.
fn is_empty_dialect(dialect: &str, body: &Json) -> bool {
    match (dialect, body) {
        (_, Json::Null) => true,
        ("exact" | "prefix" | "suffix" | "not", Json::Object(map)) => map.is_empty(),
        ("all" | "any", Json::Array(items)) => items.is_empty(),
        ("cesql", Json::String(expression)) => expression.is_empty(),
        _ => false,
    }
}

/// One filter object; `Ok(None)` for one that sets no dialect, or only empty ones ([`is_empty_dialect`]): no
/// condition, skipped where it stands, as in Knative (an `all` or `any` of nothing but such filters, and a
/// `not` of one, are skipped too). Regression: `filters: [{}]`, `{"exact": {}}` and `{"cesql": ""}`, which
/// Knative's webhook accepts, were refused, so Knative YAML holding them did not apply.
fn compile_filter(filter: &Json, path: &str) -> Result<Option<Node>, FilterError> {
    let Json::Object(fields) = filter else {
        return Err(FilterError::WrongType { path: path.into(), expected: "a filter object" });
    };
    // A `null` field is an absent one (the controller's model reads it as `None`). Any other field must be a
    // known dialect: ignoring an unknown one would silently drop a condition and deliver events the Trigger's
    // owner meant to filter out, so it is rejected (Subscriptions API: unsupported dialects MUST be rejected).
    if let Some((dialect, _)) = fields.iter().find(|(d, b)| !b.is_null() && !DIALECTS.contains(&d.as_str())) {
        return Err(FilterError::UnknownDialect { path: path.into(), dialect: dialect.clone() });
    }
    let set: Vec<(&String, &Json)> = fields.iter().filter(|(dialect, body)| !is_empty_dialect(dialect, body)).collect();
    let (dialect, body) = match set.as_slice() {
        [] => return Ok(None),
        [one] => *one,
        _ => return Err(FilterError::DialectCount { path: path.into(), found: set.len() }),
    };
    let path = format!("{path}.{dialect}");
    let list = |body: &Json| -> Result<Vec<Node>, FilterError> {
        let Json::Array(items) = body else {
            return Err(FilterError::WrongType { path: path.clone(), expected: "an array of filters" });
        };
        filter_list(items, &path)
    };
    let node = match dialect.as_str() {
        "exact" => every(attributes(body, &path, true)?, |attribute, value| Node::Exact { attribute, value }),
        "prefix" => every(attributes(body, &path, false)?, |attribute, value| Node::Prefix { attribute, value }),
        "suffix" => every(attributes(body, &path, false)?, |attribute, value| Node::Suffix { attribute, value }),
        "all" => match list(body)? {
            nodes if nodes.is_empty() => return Ok(None),
            nodes => Node::All(nodes),
        },
        "any" => match list(body)? {
            nodes if nodes.is_empty() => return Ok(None),
            nodes => Node::Any(nodes),
        },
        "not" => match compile_filter(body, &path)? {
            Some(node) => Node::Not(Box::new(node)),
            None => return Ok(None),
        },
        "cesql" => {
            let Json::String(expression) = body else {
                return Err(FilterError::WrongType { path, expected: "a CESQL expression (string)" });
            };
            match cesql::parse(expression) {
                Ok(expression) => Node::Cesql(Box::new(expression)),
                Err(source) => return Err(FilterError::Cesql { path, source }),
            }
        }
        other => return Err(FilterError::UnknownDialect { path, dialect: other.into() }),
    };
    Ok(Some(node))
}

/// The body of `exact`, `prefix` or `suffix`: attribute names and their string values, every one of which must
/// match (the Subscriptions API's `{"exact": {"type": …, "subject": …}}`; Knative lifted its one-attribute
/// limit). An empty value is meaningful only for `exact` (the attribute is present and empty), which the
/// controller accepts; an empty prefix or suffix would match every present value and is rejected like the
/// controller does.
fn attributes(body: &Json, path: &str, allow_empty: bool) -> Result<Vec<(String, String)>, FilterError> {
    let Json::Object(map) = body else {
        return Err(FilterError::WrongType { path: path.into(), expected: "an object mapping attributes to values" });
    };
    map.iter()
        .map(|(attribute, value)| {
            let attribute_path = || format!("{path}[{attribute}]");
            check_attribute_name(attribute, attribute_path)?;
            let Json::String(value) = value else {
                return Err(FilterError::WrongType { path: attribute_path(), expected: "a string" });
            };
            if value.is_empty() && !allow_empty {
                return Err(FilterError::EmptyValue { path: attribute_path() });
            }
            Ok((attribute.clone(), value.clone()))
        })
        .collect()
}

/// One attribute's node, or `all` of them for several.
fn every(pairs: Vec<(String, String)>, node: impl Fn(String, String) -> Node) -> Node {
    let mut nodes: Vec<Node> = pairs.into_iter().map(|(attribute, value)| node(attribute, value)).collect();
    if nodes.len() == 1 { nodes.remove(0) } else { Node::All(nodes) }
}

/// The filters of a list (`filters`, or the body of `all` or `any`), those without a condition left out.
fn filter_list(items: &[Json], path: &str) -> Result<Vec<Node>, FilterError> {
    let compiled = items.iter().enumerate().map(|(i, item)| compile_filter(item, &format!("{path}[{i}]")));
    compiled.filter_map(Result::transpose).collect()
}

/// The filters of many Triggers (of one Broker, say), arranged so that matching an event costs in proportion to
/// the Triggers that may match it rather than to all of them.
///
/// A filter that requires an exact value on some attribute is filed under one such `(attribute, value)` pair
/// and evaluated only for events carrying that value; the others are evaluated for every event. Most Triggers
/// filter on `type`, so for a typical Broker an event costs a handful of hash lookups plus the Triggers of its
/// type.
#[derive(Debug, Clone)]
pub struct FilterIndex<K> {
    entries: Vec<(K, CompiledFilter)>,
    /// attribute → canonical value → indices into `entries`. Each entry is filed under at most one pair, so the
    /// candidate lists of an event never overlap and no entry is evaluated twice.
    by_exact: HashMap<String, HashMap<String, Vec<usize>>>,
    /// Indices of the entries without a required exact value.
    always: Vec<usize>,
}

impl<K: Clone + Ord> FilterIndex<K> {
    /// Builds the index. A key may appear more than once (a Trigger whose filter is split in alternatives); it
    /// then matches when any of its filters matches.
    pub fn new(filters: impl IntoIterator<Item = (K, CompiledFilter)>) -> Self {
        let entries: Vec<(K, CompiledFilter)> = filters.into_iter().collect();
        let mut by_exact: HashMap<String, HashMap<String, Vec<usize>>> = HashMap::new();
        let mut always = Vec::new();
        for (i, (_, filter)) in entries.iter().enumerate() {
            match filter.index_key() {
                Some((attribute, value)) => {
                    by_exact.entry(attribute.to_owned()).or_default().entry(value.to_owned()).or_default().push(i)
                }
                None => always.push(i),
            }
        }
        FilterIndex { entries, by_exact, always }
    }

    /// How many filters the index holds.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The keys whose filter matches the event, each once, in ascending order (so the result does not depend on
    /// hashing or on the order the filters were given in).
    pub fn matching(&self, event: &dyn EventAttributes) -> Vec<K> {
        self.matching_counted(event, |_, _| {}).0
    }

    /// [`FilterIndex::matching`], telling `on_error` of each filter whose CESQL expression failed on the event
    /// (no match, [`CompiledFilter::matches_noting_errors`]): its owner should be told why nothing matches.
    pub fn matching_noting_errors(
        &self,
        event: &dyn EventAttributes,
        on_error: impl FnMut(&K, cesql::EvalError),
    ) -> Vec<K> {
        self.matching_counted(event, on_error).0
    }

    /// [`FilterIndex::matching_noting_errors`], plus how many filters were evaluated: the measure of the index's
    /// work, for tests and metrics.
    pub(crate) fn matching_counted(
        &self,
        event: &dyn EventAttributes,
        mut on_error: impl FnMut(&K, cesql::EvalError),
    ) -> (Vec<K>, usize) {
        let mut evaluated = 0;
        let mut matched = Vec::new();
        let mut evaluate = |i: usize| {
            evaluated += 1;
            let (key, filter) = &self.entries[i];
            let (matches, error) = filter.matches_noting_errors(event);
            if let Some(error) = error {
                on_error(key, error);
            }
            if matches {
                matched.push(key.clone());
            }
        };
        // One lookup per indexed attribute name (usually just `type` and `source`), not per filter.
        for (attribute, values) in &self.by_exact {
            if let Some(value) = attribute_string(event, attribute)
                && let Some(candidates) = values.get(&value)
            {
                candidates.iter().for_each(|&i| evaluate(i));
            }
        }
        self.always.iter().for_each(|&i| evaluate(i));
        matched.sort();
        matched.dedup();
        (matched, evaluated)
    }
}

#[cfg(test)]
mod tests;
