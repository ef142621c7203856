//! EventPolicies (`eventing.knative.dev/v1alpha1`), read from the objects: which apply to a Broker or
//! Channel (`to`: references, label selectors, or the whole namespace), who they let in (`from` resolved to
//! OIDC subjects), and the status both sides show. Pure: the ingress compiles [`applied_policies`] into its
//! per-target authorizer, status calls the rest.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::model::{EventPolicySelector, EventPolicySpec};
use crate::world::World;

pub const EVENT_POLICY_API_VERSION: &str = "eventing.knative.dev/v1alpha1";

pub use crate::world::DefaultAuthorization;

/// An EventPolicy that applies to a target, ready to decide with.
#[derive(Clone, Debug, PartialEq)]
pub struct AppliedPolicy {
    pub name: String,
    /// Subjects allowed (a trailing `*` matches any suffix); unresolved `from` references add none.
    pub subjects: Vec<String>,
    /// `spec.filters` as stored (a JSON array), for the ingress to compile.
    pub filters: Option<Value>,
}

/// Whether `subject` is matched by `pattern` (exact, or a prefix when the pattern ends with `*`).
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => subject.starts_with(prefix),
        None => pattern == subject,
    }
}

fn labels_of(object: &Value) -> BTreeMap<String, String> {
    object
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| labels.iter().filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string()))).collect())
        .unwrap_or_default()
}

/// `metav1.LabelSelector` semantics: every `matchLabels` pair and every requirement must hold.
pub fn selector_matches(selector: &EventPolicySelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let requirements = selector.match_expressions.iter().flatten().all(|r| {
        let values = r.values.as_deref().unwrap_or_default();
        match r.operator.as_str() {
            "In" => labels.get(&r.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&r.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&r.key),
            "DoesNotExist" => !labels.contains_key(&r.key),
            _ => false,
        }
    });
    pairs && requirements
}

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// The policy's spec, its nulls read as absent fields (objects stored before apply pruned them). `None`: it does
/// not parse, and the policy fails closed (it applies to every target of its namespace and lets nobody in).
fn spec_of(policy: &Value) -> Option<EventPolicySpec> {
    let mut spec = policy.get("spec").cloned().unwrap_or_else(|| Value::Object(Default::default()));
    crate::admission::prune_nulls(&mut spec);
    serde_json::from_value(spec).ok()
}

/// Channel and InMemoryChannel are one kind of target here (both are served as channels).
fn same_target_kind(a: &str, b: &str) -> bool {
    let channel = |k: &str| matches!(k, "Channel" | "InMemoryChannel");
    a == b || (channel(a) && channel(b))
}

/// Whether `policy` applies to `target` (a Broker, Channel or InMemoryChannel object).
pub fn applies_to(policy: &Value, target: &Value) -> bool {
    if str_at(policy, "/metadata/namespace") != str_at(target, "/metadata/namespace") {
        return false;
    }
    // One that cannot be read stands in the way of everyone rather than of no one.
    let Some(spec) = spec_of(policy) else { return true };
    if spec.to.is_empty() {
        return true;
    }
    let (kind, name) = (str_at(target, "/kind"), str_at(target, "/metadata/name"));
    spec.to.iter().any(|to| match (&to.reference, &to.selector) {
        (Some(reference), _) => same_target_kind(&reference.kind, kind) && reference.name == name,
        (None, Some(selector)) => {
            same_target_kind(&selector.kind, kind) && selector_matches(selector, &labels_of(target))
        }
        (None, None) => false,
    })
}

/// The OIDC service account Sluice sends as for a Trigger's or Subscription's deliveries (its
/// `status.auth.serviceAccountName`; the subject is `system:serviceaccount:NS:ACCOUNT`).
pub fn sender_account(kind: &str, name: &str) -> Option<String> {
    let prefix = match kind {
        "Trigger" => "sluice-trigger-",
        "Subscription" => "sluice-subscription-",
        _ => return None,
    };
    Some(account_name(prefix, name))
}

/// The longest ServiceAccount name (a DNS-1123 subdomain).
const MAX_ACCOUNT_NAME_BYTES: usize = 253;
/// Hex digits of the SHA-256 that end a shortened account name (128 bits, as Knative's `kmeta.ChildName`
/// keeps with MD5).
const ACCOUNT_DIGEST_HEX: usize = 32;

/// `prefix` and `name`, or, when that is longer than a ServiceAccount name may be (a name near its own 253),
/// its first bytes and a digest of all of it, as Knative's `kmeta.ChildName` shortens a child's name: still a
/// DNS-1123 subdomain, and two names stay two accounts (a shared one would let an EventPolicy that admits one
/// Trigger admit the other). A cryptographic digest, because a Trigger's name is its author's to choose.
fn account_name(prefix: &str, name: &str) -> String {
    let full = format!("{prefix}{name}");
    if full.len() <= MAX_ACCOUNT_NAME_BYTES {
        return full;
    }
    let digest = ring::digest::digest(&ring::digest::SHA256, full.as_bytes());
    let mut cut = MAX_ACCOUNT_NAME_BYTES - ACCOUNT_DIGEST_HEX;
    while !full.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut account = String::with_capacity(MAX_ACCOUNT_NAME_BYTES);
    account.push_str(&full[..cut]);
    for byte in &digest.as_ref()[..ACCOUNT_DIGEST_HEX / 2] {
        account.push(char::from_digit(u32::from(byte >> 4), 16).unwrap_or('0'));
        account.push(char::from_digit(u32::from(byte & 0xf), 16).unwrap_or('0'));
    }
    account
}

/// The OIDC subject of a Trigger's or Subscription's deliveries: what the tokens Sluice mints for them say.
pub fn sender_subject(kind: &str, namespace: &str, name: &str) -> Option<String> {
    sender_account(kind, name).map(|account| format!("system:serviceaccount:{namespace}:{account}"))
}

/// The subjects `policy`'s `from` resolves to, and why each unresolved reference is not.
pub fn subjects_of(policy: &Value, world: &World) -> (Vec<String>, Vec<String>) {
    let namespace = str_at(policy, "/metadata/namespace");
    let Some(spec) = spec_of(policy) else { return (Vec::new(), vec!["spec does not parse".into()]) };
    let (mut subjects, mut unresolved) = (Vec::new(), Vec::new());
    for from in &spec.from {
        if let Some(sub) = &from.sub {
            subjects.push(sub.clone());
        }
        let Some(reference) = &from.reference else { continue };
        let source_namespace = reference.namespace.as_deref().filter(|n| !n.is_empty()).unwrap_or(namespace);
        let Some(source) = world.find(&reference.kind, source_namespace, &reference.name) else {
            unresolved.push(format!("{} {source_namespace}/{} does not exist here", reference.kind, reference.name));
            continue;
        };
        // Sluice's own senders have a derived identity; Knative's sources name their service account in
        // status.auth.
        let accounts: Vec<String> = match sender_account(&reference.kind, &reference.name) {
            Some(account) => vec![account],
            None => match source.pointer("/status/auth") {
                Some(auth) => auth
                    .get("serviceAccountNames")
                    .and_then(Value::as_array)
                    .map(|names| names.iter().filter_map(Value::as_str).map(String::from).collect())
                    .or_else(|| auth.get("serviceAccountName").and_then(Value::as_str).map(|name| vec![name.into()]))
                    .unwrap_or_default(),
                None => Vec::new(),
            },
        };
        if accounts.is_empty() {
            unresolved.push(format!(
                "{} {source_namespace}/{} has no OIDC identity (status.auth.serviceAccountName)",
                reference.kind, reference.name
            ));
        }
        subjects.extend(accounts.iter().map(|account| format!("system:serviceaccount:{source_namespace}:{account}")));
    }
    (subjects, unresolved)
}

/// Every EventPolicy that applies to `target`, by name.
pub fn applied_policies(target: &Value, world: &World) -> Vec<AppliedPolicy> {
    let mut applied: Vec<AppliedPolicy> = world
        .objects
        .iter()
        .filter(|o| str_at(o, "/kind") == "EventPolicy" && applies_to(o, target))
        .map(|policy| AppliedPolicy {
            name: str_at(policy, "/metadata/name").to_string(),
            subjects: subjects_of(policy, world).0,
            filters: policy.pointer("/spec/filters").filter(|f| !f.is_null()).cloned(),
        })
        .collect();
    applied.sort_by(|a, b| a.name.cmp(&b.name));
    applied
}

/// An EventPolicy's status fields: `from` (the resolved subjects) and the condition on its references.
pub fn event_policy_status(policy: &Value, world: &World) -> (Value, Result<(), (String, String)>) {
    let (subjects, unresolved) = subjects_of(policy, world);
    let resolved =
        if unresolved.is_empty() { Ok(()) } else { Err(("SubjectsNotResolved".into(), unresolved.join("; "))) };
    (json!(subjects), resolved)
}

/// A Broker's or Channel's `status.policies` (Knative's applied-policies list: the ready ones only), and the
/// names of the policies that apply but are not ready: a `from` reference unresolved, or sender identity off
/// (`audiences`), as Knative's EventPolicy reconciler has it.
///
/// Deliberately unlike Knative's data plane, which decides with the ready policies only (and falls back to the
/// default authorization mode when none is): a policy that is not ready still takes part in every decision
/// here, with the subjects it resolved, so a reference that stops resolving narrows who gets in rather than
/// opening the target to the default mode.
pub fn policies_status(target: &Value, world: &World, audiences: bool) -> (Value, Vec<String>) {
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for policy in world.objects.iter().filter(|o| str_at(o, "/kind") == "EventPolicy" && applies_to(o, target)) {
        let name = str_at(policy, "/metadata/name").to_string();
        if audiences && subjects_of(policy, world).1.is_empty() { ready.push(name) } else { not_ready.push(name) }
    }
    ready.sort();
    not_ready.sort();
    let listed = ready.iter().map(|name| json!({"apiVersion": EVENT_POLICY_API_VERSION, "name": name})).collect();
    (Value::Array(listed), not_ready)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression: with a Trigger name near its longest (253), `sluice-trigger-NAME` was 268 bytes, no valid
    /// ServiceAccount name, yet shown in the Trigger's status and minted into its tokens' subject.
    #[test]
    fn regression_a_long_triggers_account_is_a_valid_distinct_service_account_name() {
        assert_eq!(sender_account("Trigger", "orders").as_deref(), Some("sluice-trigger-orders"));
        assert_eq!(sender_account("Broker", "orders"), None);
        let at_the_limit = "a".repeat(MAX_ACCOUNT_NAME_BYTES - "sluice-trigger-".len());
        assert_eq!(sender_account("Trigger", &at_the_limit), Some(format!("sluice-trigger-{at_the_limit}")));
        let mut accounts = std::collections::BTreeSet::new();
        let kept = MAX_ACCOUNT_NAME_BYTES - ACCOUNT_DIGEST_HEX;
        for (kind, prefix) in [("Trigger", "sluice-trigger-"), ("Subscription", "sluice-subscription-")] {
            // Long names alike in the bytes a shortened account keeps: the cut leaves a letter, a '-' or a '.'
            // last, and the names differ only past it.
            let before_cut = kept - prefix.len() - 1;
            for (at_cut, tail) in [('a', "x"), ('a', "y"), ('-', "b.z"), ('.', "b-z"), ('.', "bz")] {
                let name = format!("{}{at_cut}{}{tail}", "a".repeat(before_cut), "b".repeat(40));
                assert!(crate::fields::is_dns_subdomain(&name), "{name}");
                let account = sender_account(kind, &name).expect("an account");
                assert!(account.starts_with(&format!("{prefix}{}{at_cut}", "a".repeat(before_cut))), "{account}");
                assert_eq!(account.len(), MAX_ACCOUNT_NAME_BYTES, "{account}");
                assert!(crate::fields::is_dns_subdomain(&account), "{account}");
                assert_eq!(sender_account(kind, &name).as_ref(), Some(&account), "the same name, the same account");
                accounts.insert(account);
            }
        }
        assert_eq!(accounts.len(), 10, "distinct names, distinct accounts");
    }

    fn broker(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Broker",
               "metadata": {"name": name, "namespace": "team", "labels": labels}})
    }

    fn policy(name: &str, spec: Value) -> Value {
        json!({"apiVersion": EVENT_POLICY_API_VERSION, "kind": "EventPolicy",
               "metadata": {"name": name, "namespace": "team"}, "spec": spec})
    }

    #[test]
    fn to_selects_by_reference_selector_or_namespace() {
        let gold = broker("gold", json!({"tier": "gold"}));
        let plain = broker("plain", json!({}));
        let cases = [
            ("whole namespace", json!({}), true, true),
            (
                "ref",
                json!({"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "gold"}}]}),
                true,
                false,
            ),
            (
                "matchLabels",
                json!({"to": [{"selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "matchLabels": {"tier": "gold"}}}]}),
                true,
                false,
            ),
            (
                "NotIn",
                json!({"to": [{"selector": {"kind": "Broker", "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["gold"]}]}}]}),
                false,
                true,
            ),
            (
                "DoesNotExist",
                json!({"to": [{"selector": {"kind": "Broker", "matchExpressions": [{"key": "tier", "operator": "DoesNotExist"}]}}]}),
                false,
                true,
            ),
            (
                "a Channel's selector",
                json!({"to": [{"selector": {"kind": "Channel", "matchLabels": {}}}]}),
                false,
                false,
            ),
        ];
        for (what, spec, to_gold, to_plain) in cases {
            let p = policy("p", spec);
            assert_eq!((applies_to(&p, &gold), applies_to(&p, &plain)), (to_gold, to_plain), "{what}");
        }
        let elsewhere = json!({"kind": "Broker", "metadata": {"name": "gold", "namespace": "other"}});
        assert!(!applies_to(&policy("p", json!({})), &elsewhere), "a policy never reaches another namespace");
    }

    #[test]
    fn from_resolves_subjects_and_names_what_it_cannot() {
        let trigger = json!({"kind": "Trigger", "metadata": {"name": "fwd", "namespace": "team"}});
        let with_auth = json!({"kind": "Broker", "metadata": {"name": "with-auth", "namespace": "team"},
                               "status": {"auth": {"serviceAccountName": "b-oidc"}}});
        let bare = json!({"kind": "Broker", "metadata": {"name": "bare", "namespace": "team"}});
        let p = policy(
            "p",
            json!({"from": [
                {"sub": "system:serviceaccount:team:*"},
                {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "name": "fwd"}},
                {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "with-auth"}},
                {"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "bare"}},
                {"ref": {"apiVersion": "sources.knative.dev/v1", "kind": "PingSource", "name": "gone"}},
            ]}),
        );
        let objects = [trigger, with_auth, bare, p.clone()];
        let (subjects, unresolved) = subjects_of(&p, &World { objects: &objects });
        assert_eq!(
            subjects,
            [
                "system:serviceaccount:team:*",
                "system:serviceaccount:team:sluice-trigger-fwd",
                "system:serviceaccount:team:b-oidc"
            ]
        );
        assert_eq!(unresolved.len(), 2, "{unresolved:?}");
        assert!(
            unresolved[0].contains("no OIDC identity") && unresolved[1].contains("does not exist"),
            "{unresolved:?}"
        );
    }

    /// Regression: YAML's `from:` (or `spec:`) with nothing after it is a null, which the typed read refused, so
    /// the policy applied to nothing and the default authorization mode let senders in.
    #[test]
    fn a_policy_with_empty_fields_or_a_spec_that_does_not_read_lets_nobody_in() {
        let gold = broker("gold", json!({}));
        let no_spec = json!({"apiVersion": EVENT_POLICY_API_VERSION, "kind": "EventPolicy",
                             "metadata": {"name": "p", "namespace": "team"}});
        let cases = [
            ("spec: (null)", policy("p", Value::Null)),
            ("no spec", no_spec),
            ("from: (null)", policy("p", json!({"from": null}))),
            ("to: and from: (null)", policy("p", json!({"to": null, "from": null}))),
            (
                "a ref's apiVersion (null)",
                policy("p", json!({"to": [{"ref": {"apiVersion": null, "kind": "Broker", "name": "gold"}}]})),
            ),
            ("a spec that does not read", policy("p", json!({"to": "gold", "from": 7}))),
        ];
        for (what, p) in cases {
            assert!(applies_to(&p, &gold), "{what}: applies");
            let objects = [gold.clone(), p.clone()];
            let applied = applied_policies(&gold, &World { objects: &objects });
            assert_eq!(applied.len(), 1, "{what}");
            assert!(applied[0].subjects.is_empty(), "{what}: lets nobody in");
        }
    }

    #[test]
    fn subject_globs_match_suffixes_only() {
        for (pattern, subject, matches) in [
            ("system:serviceaccount:team:sender", "system:serviceaccount:team:sender", true),
            ("system:serviceaccount:team:sender", "system:serviceaccount:team:sender2", false),
            ("system:serviceaccount:team:*", "system:serviceaccount:team:anyone", true),
            ("system:serviceaccount:team:*", "system:serviceaccount:other:anyone", false),
            ("*", "anything", true),
        ] {
            assert_eq!(subject_matches(pattern, subject), matches, "{pattern} ~ {subject}");
        }
    }
}
