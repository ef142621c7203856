//! Authorization at ingress (and of the replies the dispatcher appends for a Trigger): an authenticated
//! sender's subject and its events in, allowed or the reason for
//! a 403 out. Pure: the EventPolicies that apply to the target come compiled, the default mode is given.
//!
//! Knative's rules: with no EventPolicy for the target, the default mode decides; with one or more, an event
//! is allowed when some policy lets its sender in (`from`) and every filter of that policy matches it. A
//! batch is allowed only whole: one refused event refuses the request, and nothing of it is stored.

use sluice_cloudevent::filter::{CompiledFilter, compile};
use sluice_cloudevent::{CloudEvent, EventView};
use sluice_controller::policy::{AppliedPolicy, DefaultAuthorization, subject_matches};

/// An EventPolicy that applies to a target, its filters compiled.
#[derive(Debug, Clone)]
pub struct CompiledPolicy {
    pub name: String,
    subjects: Vec<String>,
    /// `None`: the filters do not compile (the controller refuses such objects, so only a stored object from an
    /// older version): the policy then allows nothing rather than everything.
    filter: Option<CompiledFilter>,
}

pub fn compile_policies(applied: Vec<AppliedPolicy>) -> Vec<CompiledPolicy> {
    applied
        .into_iter()
        .map(|policy| {
            let filter = compile(None, policy.filters.as_ref())
                .inspect_err(|e| tracing::error!(policy = %policy.name, error = %e, "EventPolicy filters do not compile; it allows nothing"))
                .ok();
            CompiledPolicy { name: policy.name, subjects: policy.subjects, filter }
        })
        .collect()
}

/// Whether `subject` may send `events` to a target of `namespace` with `policies` applying to it.
pub fn authorize(
    policies: &[CompiledPolicy],
    mode: DefaultAuthorization,
    namespace: &str,
    subject: &str,
    events: &[CloudEvent],
) -> Result<(), String> {
    if policies.is_empty() {
        return match mode {
            DefaultAuthorization::AllowAll => Ok(()),
            DefaultAuthorization::DenyAll => Err("no EventPolicy applies and the default mode is deny-all".into()),
            DefaultAuthorization::AllowSameNamespace => {
                if subject.starts_with(&format!("system:serviceaccount:{namespace}:")) {
                    Ok(())
                } else {
                    Err(format!(
                        "no EventPolicy applies and the default mode (allow-same-namespace) allows only service \
                         accounts of namespace {namespace}"
                    ))
                }
            }
        };
    }
    let senders: Vec<&CompiledPolicy> =
        policies.iter().filter(|p| p.subjects.iter().any(|pattern| subject_matches(pattern, subject))).collect();
    if senders.is_empty() {
        let names: Vec<&str> = policies.iter().map(|p| p.name.as_str()).collect();
        return Err(format!(
            "the sender is not in the from list of any EventPolicy of the target ({})",
            names.join(", ")
        ));
    }
    for (index, event) in events.iter().enumerate() {
        let allowed = senders.iter().any(|p| p.filter.as_ref().is_some_and(|f| f.matches(&EventView(event))));
        if !allowed {
            let id = event.get_str("id").unwrap_or_default();
            return Err(format!(
                "event {index} (id {id:?}) matches the filters of no EventPolicy that lets the sender in"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use sluice_controller::policy::AppliedPolicy;

    use super::*;

    fn event(event_type: &str) -> CloudEvent {
        let body = json!({"specversion": "1.0", "id": "1", "source": "/s", "type": event_type}).to_string();
        sluice_cloudevent::from_structured(body.as_bytes()).expect("event")
    }

    fn policy(name: &str, subjects: &[&str], filters: Option<serde_json::Value>) -> AppliedPolicy {
        AppliedPolicy { name: name.into(), subjects: subjects.iter().map(|s| s.to_string()).collect(), filters }
    }

    #[test]
    fn the_policy_matrix() {
        use DefaultAuthorization::*;
        let orders = compile_policies(vec![
            policy("orders", &["system:serviceaccount:team:orders"], Some(json!([{"prefix": {"type": "order."}}]))),
            policy("ops", &["system:serviceaccount:ops:*"], None),
            policy("audit", &["system:serviceaccount:team:audit"], Some(json!([{"cesql": "type LIKE '%.audited'"}]))),
        ]);
        let team = "system:serviceaccount:team:orders";
        let stranger = "system:serviceaccount:other:x";
        /// What, policies, default mode, subject, event types, allowed.
        type Case<'a> = (&'a str, &'a [CompiledPolicy], DefaultAuthorization, &'a str, Vec<&'a str>, bool);
        let cases: Vec<Case> = vec![
            ("no policy, allow-all", &[], AllowAll, stranger, vec!["a"], true),
            ("no policy, deny-all", &[], DenyAll, team, vec!["a"], false),
            ("no policy, same namespace", &[], AllowSameNamespace, team, vec!["a"], true),
            ("no policy, other namespace", &[], AllowSameNamespace, stranger, vec!["a"], false),
            ("from ref, filter matches", &orders, DenyAll, team, vec!["order.created"], true),
            ("from ref, filter does not", &orders, AllowAll, team, vec!["invoice.created"], false),
            ("subject glob", &orders, DenyAll, "system:serviceaccount:ops:oncall", vec!["anything"], true),
            ("not in any from", &orders, AllowAll, stranger, vec!["order.created"], false),
            ("cesql filter", &orders, DenyAll, "system:serviceaccount:team:audit", vec!["x.audited"], true),
            ("one bad event refuses the batch", &orders, DenyAll, team, vec!["order.a", "invoice.b"], false),
        ];
        for (what, policies, mode, subject, types, allowed) in cases {
            let events: Vec<CloudEvent> = types.iter().map(|t| event(t)).collect();
            let decision = authorize(policies, mode, "team", subject, &events);
            assert_eq!(decision.is_ok(), allowed, "{what}: {decision:?}");
        }
    }

    #[test]
    fn a_policy_whose_filters_do_not_compile_allows_nothing() {
        let broken = compile_policies(vec![policy("broken", &["*"], Some(json!([{"cesql": "type ="}])))]);
        assert!(authorize(&broken, DefaultAuthorization::AllowAll, "team", "anyone", &[event("a")]).is_err());
    }
}
