//! How Knative objects print as kubectl prints them: names (`trigger.eventing.knative.dev/NAME`), Knative's
//! printer columns, and tables sized to their cells. Pure functions of the objects and the time.

use serde_json::Value;
use sluice_controller::model::KindInfo;

use crate::table;

pub(crate) fn str_at<'a>(object: &'a Value, pointer: &str) -> &'a str {
    object.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

/// A value for a table cell: strings as they are, other values as JSON, missing as empty.
pub(crate) fn text_at(object: &Value, pointer: &str) -> String {
    match object.pointer(pointer) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `eventing.knative.dev`: the API group of a kind.
pub(crate) fn group(info: &KindInfo) -> &'static str {
    info.api_version.split_once('/').map(|(group, _)| group).unwrap_or_default()
}

/// `trigger.eventing.knative.dev`: how kubectl names a kind in `-o name` and in apply's and delete's output.
pub(crate) fn resource(info: &KindInfo) -> String {
    format!("{}.{}", info.kind.to_ascii_lowercase(), group(info))
}

/// `trigger.eventing.knative.dev/NAME`.
pub(crate) fn object_name(info: &KindInfo, object: &Value) -> String {
    format!("{}/{}", resource(info), str_at(object, "/metadata/name"))
}

/// What a table shows besides the kind's own columns.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Layout {
    pub(crate) all_namespaces: bool,
    pub(crate) wide: bool,
    /// Several kinds were asked for: names read `trigger.eventing.knative.dev/NAME`, as kubectl shows them.
    pub(crate) show_kind: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Column {
    Namespace,
    Name,
    Field { header: &'static str, pointer: &'static str },
    Age,
    Ready,
    Reason,
}

/// The columns of a kind: Knative's printer columns (Trigger: NAME BROKER SUBSCRIBER_URI AGE READY REASON;
/// Broker, Channel, InMemoryChannel: NAME URL AGE READY REASON; Subscription: NAME AGE READY REASON; Service:
/// NAME URL LATESTCREATED LATESTREADY; Configuration: NAME LATESTCREATED LATESTREADY; EventPolicy: NAME AGE READY
/// REASON; Revision: NAME CONFIG NAME
/// GENERATION ... ACTUAL REPLICAS DESIRED REPLICAS; Route: NAME URL), with NAMESPACE first for -A, and more with -o wide.
pub(crate) fn columns(info: &KindInfo, layout: Layout) -> Vec<Column> {
    let field = |header, pointer| Column::Field { header, pointer };
    let mut columns = Vec::new();
    if layout.all_namespaces {
        columns.push(Column::Namespace);
    }
    columns.push(Column::Name);
    match info.kind {
        "Trigger" => {
            columns.push(field("BROKER", "/spec/broker"));
            columns.push(field("SUBSCRIBER_URI", "/status/subscriberUri"));
        }
        // Knative's printer columns for these are READY and REASON only (an EventPolicy has no address).
        "Subscription" | "EventPolicy" => {}
        "Service" | "Configuration" => {
            if info.kind == "Service" {
                columns.push(field("URL", "/status/url"));
            }
            columns.push(field("LATESTCREATED", "/status/latestCreatedRevisionName"));
            columns.push(field("LATESTREADY", "/status/latestReadyRevisionName"));
        }
        "Revision" => {
            columns.push(field("CONFIG NAME", "/metadata/labels/serving.knative.dev~1configuration"));
            columns.push(field("GENERATION", "/metadata/labels/serving.knative.dev~1configurationGeneration"));
        }
        "Route" => columns.push(field("URL", "/status/url")),
        _ => columns.push(field("URL", "/status/address/url")),
    }
    columns.extend([Column::Age, Column::Ready, Column::Reason]);
    if info.kind == "Revision" {
        columns.push(field("ACTUAL REPLICAS", "/status/actualReplicas"));
        columns.push(field("DESIRED REPLICAS", "/status/desiredReplicas"));
    }
    if layout.wide {
        if info.kind == "Subscription" {
            columns.push(field("CHANNEL", "/spec/channel/name"));
            columns.push(field("SUBSCRIBER_URI", "/status/physicalSubscription/subscriberUri"));
        }
        // A Revision's GENERATION column is its Configuration's already (Knative's printer column).
        if info.kind != "Revision" {
            columns.push(field("GENERATION", "/metadata/generation"));
        }
    }
    columns
}

pub(crate) fn header(columns: &[Column]) -> Vec<String> {
    columns
        .iter()
        .map(|column| match column {
            Column::Namespace => "NAMESPACE",
            Column::Name => "NAME",
            Column::Field { header, .. } => header,
            Column::Age => "AGE",
            Column::Ready => "READY",
            Column::Reason => "REASON",
        })
        .map(str::to_string)
        .collect()
}

/// The Ready condition's status and reason; an object without one is `Unknown`.
pub(crate) fn ready_of(object: &Value) -> (String, String) {
    let ready = object
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|conditions| conditions.iter().find(|c| c["type"] == "Ready"));
    match ready {
        Some(ready) => (text_at(ready, "/status"), text_at(ready, "/reason")),
        None => ("Unknown".into(), String::new()),
    }
}

pub(crate) fn row(
    info: &KindInfo,
    columns: &[Column],
    layout: Layout,
    object: &Value,
    now: chrono::DateTime<chrono::Utc>,
) -> Vec<String> {
    columns
        .iter()
        .map(|column| match column {
            Column::Namespace => text_at(object, "/metadata/namespace"),
            Column::Name if layout.show_kind => object_name(info, object),
            Column::Name => text_at(object, "/metadata/name"),
            Column::Field { pointer, .. } => text_at(object, pointer),
            Column::Age => table::age(object.pointer("/metadata/creationTimestamp").and_then(Value::as_str), now),
            Column::Ready => ready_of(object).0,
            Column::Reason => ready_of(object).1,
        })
        .collect()
}

/// The table of one kind: a header and a row per object, columns sized to their content.
pub(crate) fn table_lines<'a>(
    info: &KindInfo,
    objects: impl IntoIterator<Item = &'a Value>,
    layout: Layout,
    now: chrono::DateTime<chrono::Utc>,
) -> (Vec<String>, Vec<usize>) {
    let columns = columns(info, layout);
    let mut rows = vec![header(&columns)];
    rows.extend(objects.into_iter().map(|object| row(info, &columns, layout, object, now)));
    let widths = table::column_widths(&rows);
    (rows.iter().map(|r| table::format_row(r, &widths)).collect(), widths)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Revision's columns are Knative's printer columns; `-o wide` printed a second GENERATION (the object's,
    /// beside Knative's, its Configuration's) and the table lacked DESIRED REPLICAS.
    #[test]
    fn a_revisions_columns_are_knatives_printer_columns() {
        let info = sluice_controller::model::kind_info("revisions").expect("kind");
        for wide in [false, true] {
            let layout = Layout { all_namespaces: false, wide, show_kind: false };
            assert_eq!(
                header(&columns(info, layout)),
                ["NAME", "CONFIG NAME", "GENERATION", "AGE", "READY", "REASON", "ACTUAL REPLICAS", "DESIRED REPLICAS"],
                "wide: {wide}"
            );
        }
    }

    /// An EventPolicy's columns are Knative's (READY, REASON); it printed an empty URL (it has no address).
    #[test]
    fn an_event_policys_columns_have_no_url() {
        let info = sluice_controller::model::kind_info("eventpolicies").expect("kind");
        let layout = Layout::default();
        assert_eq!(header(&columns(info, layout)), ["NAME", "AGE", "READY", "REASON"]);
    }
}
