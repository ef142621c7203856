//! `sluice delete`: objects by name, by label selector, `--all` of a kind, or those manifests (`-f`) describe.

use anyhow::{Result, bail};
use sluice_controller::model::KindInfo;
use sluice_proto::admin::ResourceRef;
use tonic::Code;

use super::{
    DeleteArgs, check_scope, connect, list_objects, not_found, parse_targets, read_documents, report_missing,
    resolve_kind,
};
use crate::admin_cli::from_status;
use crate::resources_print::{resource, str_at, text_at};

pub(crate) async fn delete(args: DeleteArgs) -> Result<()> {
    let mut client = connect(&args.admin).await?;
    let mut doomed: Vec<(&'static KindInfo, String, String)> = Vec::new();
    if !args.files.is_empty() {
        if !args.targets.is_empty() || args.all {
            bail!("give either -f FILE or KIND NAME..., not both");
        }
        for (_, object) in read_documents(&args.files)? {
            let namespace = Some(str_at(&object, "/metadata/namespace")).filter(|n| !n.is_empty());
            doomed.push((
                resolve_kind(str_at(&object, "/kind"))?,
                namespace.unwrap_or(&args.scope.namespace).to_string(),
                str_at(&object, "/metadata/name").to_string(),
            ));
        }
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
    report_missing(missing)
}
