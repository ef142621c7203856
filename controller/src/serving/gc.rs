//! Garbage collection of old Revisions, with Knative's `config-gc` defaults: a Revision that no Route sends
//! traffic to and that is not its Configuration's latest (created or ready) is *non-active*; of those, the
//! 20 newest are always kept, any beyond 1,000 are collected, and in between one is collected once it was
//! created more than 48 hours ago (Knative also waits 15 hours since it was last routed; Sluice does not
//! record that time, so creation stands for it). `serving.knative.dev/no-gc: "true"` keeps one for good.
//!
//! Pure: the children reconcile on the metadata leader deletes what [`collect`] names.

use std::collections::BTreeSet;

use serde_json::Value;

use super::CONFIGURATION_LABEL;
use super::routing::{RouteTable, latest_revisions, spec_traffic};

/// Knative's `config-gc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GcSettings {
    pub retain_since_create_ms: u64,
    pub min_non_active: usize,
    pub max_non_active: usize,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings { retain_since_create_ms: 48 * 3600 * 1000, min_non_active: 20, max_non_active: 1000 }
    }
}

pub const NO_GC_ANNOTATION: &str = "serving.knative.dev/no-gc";

fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn created_ms(revision: &Value) -> u64 {
    chrono_free_rfc3339_ms(str_at(revision, "/metadata/creationTimestamp")).unwrap_or(u64::MAX)
}

/// Milliseconds since the epoch of an RFC 3339 UTC time as the state machine writes it
/// (`2026-11-28T10:00:00Z`); `None` for anything else.
fn chrono_free_rfc3339_ms(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.splitn(3, '-').map(|p| p.parse::<i64>());
    let (year, month, day) = (date.next()?.ok()?, date.next()?.ok()?, date.next()?.ok()?);
    let time = time.split('.').next()?;
    let mut time = time.splitn(3, ':').map(|p| p.parse::<i64>());
    let (hour, minute, second) = (time.next()?.ok()?, time.next()?.ok()?, time.next()?.ok()?);
    // Days from civil (Howard Hinnant's algorithm).
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second;
    u64::try_from(seconds).ok().map(|s| s * 1000)
}

/// The Revisions to delete now: `(namespace, name)`.
pub fn collect(objects: &[Value], table: &RouteTable, now_ms: u64, settings: &GcSettings) -> Vec<(String, String)> {
    let mut routed: BTreeSet<(&str, &str)> = table
        .values()
        .flat_map(|host| host.targets.iter().map(move |(revision, _)| (host.namespace.as_str(), revision.as_str())))
        .collect();
    // Every Revision a Route's (or Service's) traffic names is active, as Knative has it, also at 0 % without a
    // tag and while the Route does not resolve: deleting one would make its Route fail to resolve for good.
    let named: Vec<(&str, String)> = objects
        .iter()
        .filter(|o| matches!(str_at(o, "/kind"), "Route" | "Service"))
        .flat_map(|o| {
            let namespace = str_at(o, "/metadata/namespace");
            spec_traffic(o, str_at(o, "/metadata/name"))
                .into_iter()
                .filter_map(move |t| Some((namespace, t.revision_name?)))
        })
        .collect();
    routed.extend(named.iter().map(|(namespace, revision)| (*namespace, revision.as_str())));
    let mut by_configuration: std::collections::BTreeMap<(String, String), Vec<&Value>> = Default::default();
    for revision in objects.iter().filter(|o| str_at(o, "/kind") == "Revision") {
        let namespace = str_at(revision, "/metadata/namespace").to_string();
        let configuration = revision
            .pointer("/metadata/labels")
            .and_then(|l| l.get(CONFIGURATION_LABEL))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if configuration.is_empty() {
            continue;
        }
        by_configuration.entry((namespace, configuration)).or_default().push(revision);
    }
    let mut collected = Vec::new();
    for ((namespace, configuration), revisions) in by_configuration {
        let (latest_created, latest_ready) = latest_revisions(objects, &namespace, &configuration);
        let mut non_active: Vec<&Value> = revisions
            .into_iter()
            .filter(|r| {
                let name = str_at(r, "/metadata/name");
                !routed.contains(&(namespace.as_str(), name))
                    && latest_created.as_deref() != Some(name)
                    && latest_ready.as_deref() != Some(name)
                    && str_at(r, &format!("/metadata/annotations/{}", NO_GC_ANNOTATION.replace('/', "~1"))) != "true"
            })
            .collect();
        // Newest first: the first `min_non_active` stay.
        non_active.sort_by_key(|r| std::cmp::Reverse((created_ms(r), str_at(r, "/metadata/name").to_string())));
        for (position, revision) in non_active.iter().enumerate() {
            let old = now_ms.saturating_sub(created_ms(revision)) > settings.retain_since_create_ms;
            if position >= settings.max_non_active || (position >= settings.min_non_active && old) {
                collected.push((namespace.clone(), str_at(revision, "/metadata/name").to_string()));
            }
        }
    }
    collected
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn revision(name: &str, generation: u32, created: &str) -> Value {
        json!({"kind": "Revision", "metadata": {"name": name, "namespace": "default", "creationTimestamp": created,
            "labels": {"serving.knative.dev/configuration": "c", "serving.knative.dev/configurationGeneration": generation.to_string()}}})
    }

    #[test]
    fn rfc3339_times_are_read() {
        assert_eq!(chrono_free_rfc3339_ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(chrono_free_rfc3339_ms("2026-11-28T10:00:00Z"), Some(1_795_860_000_000));
        assert_eq!(chrono_free_rfc3339_ms("2026-11-28T10:00:00+01:00"), None);
    }

    #[test]
    fn old_non_active_revisions_beyond_the_minimum_are_collected() {
        let now = chrono_free_rfc3339_ms("2026-11-28T10:00:00Z").unwrap_or(0);
        let mut objects: Vec<Value> =
            (1..=5).map(|g| revision(&format!("c-0000{g}"), g, &format!("2026-11-2{g}T00:00:00Z"))).collect();
        let mut pinned = revision("c-00000", 0, "2026-11-01T00:00:00Z");
        pinned["metadata"]["annotations"] = json!({"serving.knative.dev/no-gc": "true"});
        objects.push(pinned);
        let mut table = RouteTable::new();
        table.insert(
            "c.default.localhost".into(),
            super::super::routing::HostTargets {
                namespace: "default".into(),
                name: "c".into(),
                targets: vec![("c-00002".into(), 100)],
            },
        );
        let settings = GcSettings { min_non_active: 1, ..GcSettings::default() };
        // Non-active: 1, 3, 4 (2 is routed, 5 the latest, 0 has no-gc). Newest of them (4) stays as the
        // minimum; 3 (created 2026-11-23) and 1 (11-21) are older than 48 h.
        assert_eq!(
            collect(&objects, &table, now, &settings),
            [("default".to_string(), "c-00003".to_string()), ("default".into(), "c-00001".into())]
        );
        let recent =
            GcSettings { retain_since_create_ms: 30 * 24 * 3600 * 1000, min_non_active: 1, max_non_active: 1000 };
        assert!(collect(&objects, &table, now, &recent).is_empty(), "younger than the retention");
        let capped = GcSettings { retain_since_create_ms: u64::MAX, min_non_active: 0, max_non_active: 2 };
        assert_eq!(
            collect(&objects, &table, now, &capped),
            [("default".to_string(), "c-00001".to_string())],
            "beyond the maximum"
        );
        assert!(collect(&objects, &table, now, &GcSettings::default()).is_empty(), "Knative's defaults keep 20");
    }

    /// Regression: a Revision pinned at 0 % without a tag was not in the serving table, so it looked unrouted and
    /// was collected, and its Route then failed to resolve.
    #[test]
    fn a_revision_a_route_names_is_kept_even_at_zero_percent() {
        let now = chrono_free_rfc3339_ms("2026-11-28T10:00:00Z").unwrap_or(0);
        let mut objects: Vec<Value> =
            (1..=3).map(|g| revision(&format!("c-0000{g}"), g, &format!("2026-11-2{g}T00:00:00Z"))).collect();
        objects.push(json!({"kind": "Route", "metadata": {"name": "c", "namespace": "default"},
            "spec": {"traffic": [{"revisionName": "c-00003", "percent": 100}, {"revisionName": "c-00001", "percent": 0}]}}));
        let settings = GcSettings { min_non_active: 0, ..GcSettings::default() };
        // Nothing in the table (the Route did not resolve, or 0 % is left out of it): only c-00002 is non-active.
        assert_eq!(
            collect(&objects, &RouteTable::new(), now, &settings),
            [("default".to_string(), "c-00002".to_string())]
        );
    }
}
