//! `sluice apply -f FILE...`: each document of the manifests applied (or dry-run, on the server or here) through
//! the Resources API, one line per object on stdout.

use anyhow::Result;
use serde_json::Value;
use sluice_controller::model::kind_info;
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{ApplyResourceRequest, ResourceRef};
use sluice_proto::errors::{ErrorCode, error_status};
use tonic::{Code, Status};

use super::manifests::{in_namespace, read_documents};
use super::{ApplyArgs, DryRun, connect};
use crate::admin_channel::AdminChannel;
use crate::admin_cli::{AdminError, error_code_suffix, exit_code_for};
use crate::resources_print::{group, str_at};

/// How a document of a manifest is named in apply's output: `trigger.eventing.knative.dev/NAME` from its
/// kind, API group and name (`service/NAME` for the core group, `<no kind>` and `<no name>` for what is
/// missing).
fn display_name(object: &Value) -> String {
    if !object.is_object() {
        return "<not an object>".into();
    }
    let kind = str_at(object, "/kind");
    let name = Some(str_at(object, "/metadata/name")).filter(|n| !n.is_empty()).unwrap_or("<no name>");
    if kind.is_empty() {
        return format!("<no kind>/{name}");
    }
    let group = match object.get("apiVersion").and_then(Value::as_str) {
        Some(api_version) => api_version.split_once('/').map(|(group, _)| group).unwrap_or_default(),
        // Without an apiVersion, the group Sluice knows for the kind.
        None => kind_info(kind).map(group).unwrap_or_default(),
    };
    let kind = kind.to_ascii_lowercase();
    if group.is_empty() { format!("{kind}/{name}") } else { format!("{kind}.{group}/{name}") }
}

/// An object as the node takes it before it reads the stored one (`resource_record`): a field set to null is
/// absent, the namespace `default` when none is given, a Trigger labelled with its Broker. Regression: the client dry run kept the nulls (`kn`'s and
/// `kubectl get -o yaml`'s `creationTimestamp: null`), and said `configured` where apply says `unchanged`.
fn as_the_node_takes_it(object: &Value) -> Value {
    sluice_controller::admission::admitted(object.clone(), None)
}

/// `--dry-run=client`: validated here as the node would (immutable fields against the stored object, read
/// with Get), and the outcome Apply would report. Nothing is sent to be stored.
async fn client_dry_run(client: &mut ResourcesClient<AdminChannel>, object: &Value) -> Result<String, Status> {
    let invalid = |errors: Vec<sluice_controller::validate::FieldError>| {
        let text: Vec<String> = errors.iter().map(ToString::to_string).collect();
        error_status(ErrorCode::InvalidResource, text.join("; "))
    };
    let object = as_the_node_takes_it(object);
    sluice_controller::validate::validate_object(&object, None).map_err(invalid)?;
    let reference = ResourceRef {
        kind: str_at(&object, "/kind").to_string(),
        namespace: str_at(&object, "/metadata/namespace").to_string(),
        name: str_at(&object, "/metadata/name").to_string(),
    };
    let existing: Option<Value> = match client.get(reference).await {
        Ok(reply) => serde_json::from_str(&reply.into_inner().object_json).ok(),
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => return Err(status),
    };
    let object = sluice_controller::admission::admitted(object, existing.as_ref());
    sluice_controller::validate::validate_object(&object, existing.as_ref()).map_err(invalid)?;
    let (_, outcome) = sluice_controller::meta::merge_for_apply_keeping_owned(existing.as_ref(), object, "", "", 0);
    Ok(outcome.as_str().to_string())
}

/// Applies one object (or dry-runs it): the outcome apply reports, `created`, `configured` or `unchanged`.
async fn apply_one(
    client: &mut ResourcesClient<AdminChannel>,
    object: &Value,
    dry_run: DryRun,
) -> Result<String, Status> {
    match dry_run {
        DryRun::Client => client_dry_run(client, object).await,
        DryRun::None | DryRun::Server => client
            .apply(ApplyResourceRequest { object_json: object.to_string(), dry_run: dry_run == DryRun::Server })
            .await
            .map(|reply| reply.into_inner().outcome),
    }
}

pub(crate) async fn apply(args: ApplyArgs) -> Result<()> {
    let documents = read_documents(&args.files, args.recursive).await?;
    // As kubectl: a manifest with no object in it is a mistake (an empty file, a wrong directory). Regression:
    // it printed nothing and exited 0.
    if documents.is_empty() {
        return Err(anyhow::Error::new(AdminError { exit_code: 1, message: "no objects passed to apply".into() }));
    }
    let mut client = connect(&args.admin).await?;
    let mut rejected = 0;
    let mut exit_code = None;
    for (place, object) in documents {
        let name = display_name(&object);
        let outcome = match in_namespace(object, args.namespace.as_deref()) {
            Err(message) => Err(error_status(ErrorCode::InvalidResource, message)),
            Ok(object) => apply_one(&mut client, &object, args.dry_run).await,
        };
        match outcome {
            Ok(outcome) => outln!("{name} {outcome}{}", args.dry_run.suffix())?,
            Err(status) => {
                eprintln!("error: {place} ({name}): {}{}", status.message(), error_code_suffix(&status));
                rejected += 1;
                exit_code.get_or_insert(exit_code_for(&status));
            }
        }
    }
    if rejected > 0 {
        return Err(anyhow::Error::new(AdminError {
            exit_code: exit_code.unwrap_or(1),
            message: format!("{rejected} object(s) rejected"),
        }));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[tokio::test]
    async fn regression_an_empty_manifest_is_refused_before_any_node_is_asked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty.yaml");
        std::fs::write(&empty, "---\n---\n").expect("write");
        let args = ApplyArgs {
            files: vec![empty],
            recursive: false,
            namespace: None,
            dry_run: DryRun::None,
            // Nothing listens there: the refusal comes first.
            admin: "127.0.0.1:1".into(),
        };
        let error = apply(args).await.expect_err("refused");
        assert_eq!(error.to_string(), "no objects passed to apply");
        assert_eq!(error.downcast_ref::<AdminError>().map(|e| e.exit_code), Some(1));
    }

    #[test]
    fn a_client_dry_run_reads_an_object_as_the_node_does() {
        let written = json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
            "metadata": {"name": "hello", "annotations": null},
            "spec": {"template": {"metadata": {"creationTimestamp": null}, "spec": {"containers": [{"image": "x"}]}}}});
        assert_eq!(
            as_the_node_takes_it(&written),
            json!({"apiVersion": "serving.knative.dev/v1", "kind": "Service",
                "metadata": {"name": "hello", "namespace": "default"},
                "spec": {"template": {"metadata": {}, "spec": {"containers": [{"image": "x"}]}}}})
        );
    }

    #[test]
    fn display_names_of_mixed_manifests() {
        let trigger = json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger", "metadata": {"name": "t"}});
        assert_eq!(display_name(&trigger), "trigger.eventing.knative.dev/t");
        let imc =
            json!({"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "metadata": {"name": "c"}});
        assert_eq!(display_name(&imc), "inmemorychannel.messaging.knative.dev/c");
        // The core group has no group part, as in kubectl's `service/x`.
        assert_eq!(
            display_name(&json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}})),
            "service/x"
        );
        // Without apiVersion, the group Sluice knows for the kind.
        assert_eq!(
            display_name(&json!({"kind": "Broker", "metadata": {"name": "b"}})),
            "broker.eventing.knative.dev/b"
        );
        assert_eq!(display_name(&json!({"kind": "Widget", "metadata": {"name": "w"}})), "widget/w");
        assert_eq!(
            display_name(&json!({"apiVersion": "eventing.knative.dev/v1", "metadata": {"name": "n"}})),
            "<no kind>/n"
        );
        assert_eq!(
            display_name(&json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger"})),
            "trigger.eventing.knative.dev/<no name>"
        );
        assert_eq!(display_name(&json!({})), "<no kind>/<no name>");
        assert_eq!(display_name(&json!(["a list"])), "<not an object>");
    }
}
