//! `sluice delete`: objects by name, by label selector, `--all` of a kind, or those manifests (`-f`) describe.

use anyhow::{Result, bail};
use serde_json::Value;
use sluice_controller::model::{KindInfo, kind_info};
use sluice_proto::admin::ResourceRef;
use tonic::Code;

use super::manifests::read_documents;
use super::{DeleteArgs, check_scope, connect, list_objects, not_found, parse_targets, report_missing};
use crate::admin_cli::from_status;
use crate::resources_print::{resource, str_at, text_at};

/// An object to delete: its kind, namespace and name.
type Doomed = (&'static KindInfo, String, String);

/// The Sluice objects a manifest's documents (where each is, the object) name, and why each other document names
/// none, as kubectl says it. A document names a Sluice object by its exact `kind` and `apiVersion`, as apply takes
/// it: a manifest's `apps/v1 Deployment` or `v1 Service` (a Knative tutorial's sink) is another API's object,
/// not a Knative Service of that name. Pure.
fn manifest_targets(documents: Vec<(String, Value)>, namespace: &str) -> (Vec<Doomed>, Vec<String>) {
    let (mut doomed, mut not_sluice) = (Vec::new(), Vec::new());
    for (place, object) in documents {
        let (kind, api_version, name) =
            (str_at(&object, "/kind"), str_at(&object, "/apiVersion"), str_at(&object, "/metadata/name"));
        let info = kind_info(kind).filter(|info| info.kind == kind && info.api_version == api_version);
        match info {
            Some(info) if !name.is_empty() => {
                let in_namespace = Some(str_at(&object, "/metadata/namespace")).filter(|n| !n.is_empty());
                doomed.push((info, in_namespace.unwrap_or(namespace).to_string(), name.to_string()));
            }
            Some(_) => not_sluice.push(format!("error: {place}: the object has no metadata.name")),
            None => not_sluice.push(format!(
                "error: resource mapping not found for name: {name:?} from {place}: no matches for kind {kind:?} in \
                 version {api_version:?}"
            )),
        }
    }
    (doomed, not_sluice)
}

pub(crate) async fn delete(args: DeleteArgs) -> Result<()> {
    let mut client = connect(&args.admin).await?;
    let mut doomed: Vec<Doomed> = Vec::new();
    let mut not_sluice = Vec::new();
    if !args.files.is_empty() {
        if !args.targets.is_empty() || args.all {
            bail!("give either -f FILE or KIND NAME..., not both");
        }
        (doomed, not_sluice) =
            manifest_targets(read_documents(&args.files, args.recursive).await?, &args.scope.namespace);
    } else {
        let targets = parse_targets(&args.targets)?;
        check_scope(&targets, &args.scope)?;
        let named = targets.iter().any(|t| t.name.is_some());
        if args.all || args.scope.selector.is_some() {
            if named {
                bail!("names cannot be given with --all or --selector");
            }
            for target in &targets {
                for object in list_objects(&mut client, target.kind, &args.scope).await? {
                    doomed.push((
                        target.kind,
                        text_at(&object, "/metadata/namespace"),
                        text_at(&object, "/metadata/name"),
                    ));
                }
            }
            if doomed.is_empty() {
                eprintln!("No resources found");
            }
        } else if !named {
            bail!(
                "resource(s) were provided, but no name was specified: give names, or --all for every object of the kind"
            );
        } else {
            for target in targets {
                doomed.push((target.kind, args.scope.namespace.clone(), target.name.unwrap_or_default()));
            }
        }
    }
    let mut missing = Vec::new();
    for (info, namespace, name) in doomed {
        let reference = ResourceRef { kind: info.kind.to_string(), namespace, name: name.clone() };
        match client.delete(reference).await {
            Ok(_) => outln!("{} \"{name}\" deleted", resource(info))?,
            Err(status) if status.code() == Code::NotFound => {
                if !args.ignore_not_found {
                    missing.push(not_found(info, &name, &status));
                }
            }
            Err(status) => return Err(from_status(status)),
        }
    }
    if !not_sluice.is_empty() {
        for line in &not_sluice {
            eprintln!("{line}");
        }
        for error in &missing {
            eprintln!("{error}");
        }
        bail!("{} document(s) name no Sluice object", not_sluice.len());
    }
    report_missing(missing)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// Regression: the kind alone was looked up, without its case or its API: a Knative tutorial's manifest (a
    /// `v1 Service` and an `apps/v1 Deployment` for the sink, then a Broker and a Trigger) failed whole at the
    /// Deployment, and without it, `sluice delete -f` deleted the Knative Service named like the core Service.
    #[test]
    fn only_documents_of_a_sluice_kind_and_api_version_are_deleted_the_rest_are_named() {
        let document = |api_version: &str, kind: &str, name: &str| json!({"apiVersion": api_version, "kind": kind, "metadata": {"name": name}});
        let mut trigger = document("eventing.knative.dev/v1", "Trigger", "t");
        trigger["metadata"]["namespace"] = json!("team-a");
        let documents = vec![
            ("a.yaml: document 1".to_string(), document("apps/v1", "Deployment", "hello")),
            ("a.yaml: document 2".to_string(), document("v1", "Service", "hello")),
            ("a.yaml: document 3".to_string(), document("eventing.knative.dev/v1", "Broker", "b")),
            ("a.yaml: document 4".to_string(), trigger),
            ("a.yaml: document 5".to_string(), document("serving.knative.dev/v1", "service", "lowercase")),
            ("a.yaml: document 6".to_string(), document("serving.knative.dev/v1", "Service", "")),
            ("a.yaml: document 7".to_string(), document("serving.knative.dev/v1", "Service", "ksvc")),
        ];
        let (doomed, not_sluice) = manifest_targets(documents, "default");
        let named: Vec<(&str, &str, &str)> =
            doomed.iter().map(|(info, namespace, name)| (info.kind, namespace.as_str(), name.as_str())).collect();
        assert_eq!(named, [("Broker", "default", "b"), ("Trigger", "team-a", "t"), ("Service", "default", "ksvc")]);
        assert_eq!(not_sluice.len(), 4, "{not_sluice:#?}");
        assert!(
            not_sluice[0].contains(
                "\"hello\" from a.yaml: document 1: no matches for kind \"Deployment\" in version \"apps/v1\""
            ),
            "{}",
            not_sluice[0]
        );
        assert!(not_sluice[1].contains("kind \"Service\" in version \"v1\""), "{}", not_sluice[1]);
        assert!(not_sluice[3].contains("document 6: the object has no metadata.name"), "{}", not_sluice[3]);
    }
}
