//! `sluice apply | get | describe | delete`: Knative resource objects through a node's admin API, the way
//! kubectl handles them: several kinds (`get broker,trigger`) and names (`get trigger a b`, `get trigger/a`),
//! label selectors (`-l`), `-o wide|json|yaml|name|jsonpath=TEMPLATE`, `get -w`, `delete --all`,
//! `apply --dry-run=server|client`. An object that does not exist is exit 3 with kubectl's message. See
//! docs/operations.md, "Resources".
//!
//! What flows in: each command's arguments ([`ApplyArgs`], [`GetArgs`], [`DeleteArgs`], [`DescribeArgs`]) and
//! the manifests `-f` names. What flows out: calls to the node's Admin Resources API (Apply, Get, List, Watch,
//! Delete; `describe` also reads the Log, Cluster and Serving APIs), and text, JSON or YAML on stdout (errors
//! on stderr, with kubectl's exit codes). This module holds what the verbs share: the arguments, `--dry-run`,
//! `-o`, the connection, the targets (`KIND NAME`, `KIND/NAME`) and fetching them; each verb is a submodule.

use std::path::PathBuf;

use crate::admin_channel::AdminChannel;
use anyhow::{Context, Result, bail};
use clap::Args;
use serde_json::Value;
use sluice_controller::model::{KindInfo, kind_info};
use sluice_proto::admin::resources_client::ResourcesClient;
use sluice_proto::admin::{ListResourcesRequest, ResourceRef};
use tonic::{Code, Status};

use crate::admin_cli::{EXIT_NOT_FOUND, ServerError, error_code_suffix, from_status};
use crate::jsonpath::Template;
use crate::resources_print::{group, str_at};
use crate::selector::Selector;

mod apply;
mod delete;
mod describe;
mod get;
mod manifests;

pub(crate) use apply::apply;
pub(crate) use delete::delete;
pub(crate) use describe::describe;
pub(crate) use get::get;

/// kubectl's `--dry-run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum DryRun {
    /// Store the objects.
    None,
    /// Validate each object here and compare it with the stored one (read with Get): nothing is sent to be
    /// stored.
    Client,
    /// The node validates and merges each object as it would store it, and stores nothing.
    Server,
}

impl DryRun {
    /// What kubectl appends to each line.
    fn suffix(self) -> &'static str {
        match self {
            DryRun::None => "",
            DryRun::Client => " (dry run)",
            DryRun::Server => " (server dry run)",
        }
    }
}

#[derive(Args, Debug)]
pub(crate) struct ApplyArgs {
    /// A YAML or JSON file (several documents allowed), a directory of them, an http(s) URL, or - for standard
    /// input.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// The directories -f names, with their subdirectories.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// The namespace of objects that name none; an object naming another is refused (kubectl's -n).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Only show what would happen: server (the node validates and merges, stores nothing) or client
    /// (validated here against the stored object).
    #[arg(long, value_enum, default_value = "none")]
    dry_run: DryRun,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

/// Which objects: a namespace (or all of them) and a label selector.
#[derive(Args, Clone, Debug)]
pub(crate) struct ScopeArgs {
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only objects whose labels match, e.g. app=x, app!=x, 'app in (a,b)', 'app notin (a)', app, '!app';
    /// commas join requirements that must all hold.
    #[arg(short = 'l', long, value_parser = Selector::parse)]
    selector: Option<Selector>,
}

impl ScopeArgs {
    fn contains(&self, object: &Value) -> bool {
        let in_namespace = self.all_namespaces || str_at(object, "/metadata/namespace") == self.namespace;
        in_namespace && self.selector.as_ref().is_none_or(|selector| selector.matches(object))
    }
}

/// How `get` prints objects (`-o`).
#[derive(Clone, Debug)]
pub(crate) enum Output {
    Table,
    Wide,
    Json,
    Yaml,
    Name,
    JsonPath(Template),
}

fn parse_output(text: &str) -> Result<Output, String> {
    match text {
        "table" => Ok(Output::Table),
        "wide" => Ok(Output::Wide),
        "json" => Ok(Output::Json),
        "yaml" => Ok(Output::Yaml),
        "name" => Ok(Output::Name),
        _ => match text.strip_prefix("jsonpath=") {
            Some(template) => Template::parse(template).map(Output::JsonPath).map_err(|e| format!("jsonpath: {e}")),
            None => Err("expected table, wide, json, yaml, name or jsonpath=TEMPLATE".into()),
        },
    }
}

#[derive(Args, Debug)]
pub(crate) struct GetArgs {
    /// KIND[,KIND...] [NAME...], or KIND/NAME...; kinds: brokers, triggers, channels, inmemorychannels,
    /// subscriptions, eventpolicies, services, configurations, revisions, routes (or broker, trigger, ch, imc,
    /// sub, ep, ksvc, cfg, rev, rt).
    #[arg(required = true, value_name = "KIND [NAME]")]
    targets: Vec<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// table (the default), wide, json, yaml, name, or jsonpath=TEMPLATE (kubectl's JSONPath, e.g.
    /// jsonpath='{.items[*].metadata.name}').
    #[arg(short = 'o', long, default_value = "table", value_parser = parse_output)]
    output: Output,
    /// After the list, print objects as they are added, changed or deleted, until Ctrl-C.
    #[arg(short = 'w', long)]
    watch: bool,
    /// Like --watch, without printing the list first.
    #[arg(long)]
    watch_only: bool,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

#[derive(Args, Debug)]
pub(crate) struct DeleteArgs {
    /// KIND[,KIND...] NAME..., or KIND/NAME...; with --all or -l only the kinds.
    #[arg(value_name = "KIND [NAME]")]
    targets: Vec<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Every object of the kinds in the namespace (with -A, in every namespace).
    #[arg(long)]
    all: bool,
    /// A missing object is not an error.
    #[arg(long)]
    ignore_not_found: bool,
    /// Delete the objects these files (directories, http(s) URLs, - for standard input) describe.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    /// The directories -f names, with their subdirectories.
    #[arg(short = 'R', long)]
    recursive: bool,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

#[derive(Args, Debug)]
pub(crate) struct DescribeArgs {
    /// KIND [NAME...], or KIND/NAME...; without a name, every object of the kind.
    #[arg(required = true, value_name = "KIND [NAME]")]
    targets: Vec<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    #[arg(long, env = "SLUICE_ADMIN", default_value = "127.0.0.1:9090")]
    admin: String,
}

async fn connect(admin: &str) -> Result<ResourcesClient<AdminChannel>> {
    // A list holds every object of a kind (each up to 1.5 MiB): more than tonic's default 4 MiB.
    crate::admin_channel::connect(admin)
        .await
        .map(|channel| ResourcesClient::new(channel).max_decoding_message_size(64 << 20))
}

/// kubectl's `Error from server (NotFound): triggers.eventing.knative.dev "nope" not found`.
fn not_found(info: &KindInfo, name: &str, status: &Status) -> ServerError {
    ServerError {
        exit_code: EXIT_NOT_FOUND,
        reason: "NotFound",
        message: format!("{}.{} \"{name}\" not found{}", info.plural, group(info), error_code_suffix(status)),
    }
}

/// A kind as kubectl takes it: its name, plural or short name, alone or with its API group (`triggers.eventing.knative.dev`,
/// `trigger.eventing.knative.dev`: what `-o name` prints, so that `get -o name | xargs sluice delete` works).
/// Regression: a name with its group was an unknown kind.
fn resolve_kind(kind: &str) -> Result<&'static KindInfo> {
    let (name, api_group) = match kind.split_once('.') {
        Some((name, api_group)) => (name, Some(api_group)),
        None => (kind, None),
    };
    kind_info(name)
        .filter(|info| api_group.is_none_or(|api_group| api_group.eq_ignore_ascii_case(group(info))))
        .with_context(|| format!("unknown kind {kind:?}: use {}", known_kinds()))
}

/// Every kind by its plural, as `resolve_kind` accepts them (from the one list, so none is left out: the
/// message named the five eventing kinds of its first version long after Serving's and EventPolicy came).
fn known_kinds() -> String {
    let plurals: Vec<&str> = sluice_controller::model::KINDS.iter().map(|info| info.plural).collect();
    match plurals.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
        _ => plurals.join(""),
    }
}

/// One kind, and one of its objects or (None) all of them in scope.
#[derive(Clone, Debug, PartialEq)]
struct Target {
    kind: &'static KindInfo,
    name: Option<String>,
}

/// The positional arguments of get, describe and delete, as kubectl reads them: `KIND[,KIND...] [NAME...]`
/// (each kind with each name), or `KIND/NAME...`.
fn parse_targets(args: &[String]) -> Result<Vec<Target>> {
    let Some(first) = args.first() else {
        bail!("say which kind: e.g. triggers, brokers, trigger NAME, trigger/NAME");
    };
    if first.contains('/') {
        return args
            .iter()
            .map(|arg| {
                let Some((kind, name)) = arg.split_once('/').filter(|(_, name)| !name.is_empty()) else {
                    bail!(
                        "{arg:?}: there is no need to specify a resource type as a separate argument when passing \
                         arguments in resource/name form (e.g. 'trigger/a trigger/b')"
                    );
                };
                Ok(Target { kind: resolve_kind(kind)?, name: Some(name.to_string()) })
            })
            .collect();
    }
    let mut kinds: Vec<&'static KindInfo> = Vec::new();
    for kind in first.split(',').filter(|k| !k.is_empty()) {
        let info = resolve_kind(kind)?;
        if !kinds.contains(&info) {
            kinds.push(info);
        }
    }
    if kinds.is_empty() {
        bail!("{first:?} names no kind");
    }
    let names = &args[1..];
    if let Some(bad) = names.iter().find(|n| n.contains('/')) {
        bail!("{bad:?}: a name after a kind has no '/'; use either KIND NAME... or KIND/NAME...");
    }
    Ok(kinds
        .into_iter()
        .flat_map(|kind| match names {
            [] => vec![Target { kind, name: None }],
            names => names.iter().map(|name| Target { kind, name: Some(name.clone()) }).collect(),
        })
        .collect())
}

/// kubectl prints a lone object (not a List) when exactly one object was asked for by name.
fn single_object_implied(targets: &[Target]) -> bool {
    matches!(targets, [Target { name: Some(_), .. }])
}

fn distinct_kinds(targets: &[Target]) -> usize {
    let mut kinds: Vec<&str> = targets.iter().map(|t| t.kind.kind).collect();
    kinds.dedup();
    kinds.len()
}

fn check_scope(targets: &[Target], scope: &ScopeArgs) -> Result<()> {
    let named = targets.iter().any(|t| t.name.is_some());
    if named && scope.selector.is_some() {
        bail!("name cannot be provided when a selector is specified");
    }
    if named && scope.all_namespaces {
        bail!("a resource cannot be retrieved by name across all namespaces");
    }
    Ok(())
}

/// An object by name, with its status; `Ok(Err(not found))` when it does not exist.
async fn get_object(
    client: &mut ResourcesClient<AdminChannel>,
    info: &'static KindInfo,
    namespace: &str,
    name: &str,
) -> Result<Result<Value, ServerError>> {
    let reference =
        ResourceRef { kind: info.kind.to_string(), namespace: namespace.to_string(), name: name.to_string() };
    match client.get(reference).await {
        Ok(reply) => {
            let json = reply.into_inner().object_json;
            Ok(Ok(serde_json::from_str(&json).with_context(|| format!("the node answered {name} with bad JSON"))?))
        }
        Err(status) if status.code() == Code::NotFound => Ok(Err(not_found(info, name, &status))),
        Err(status) => Err(from_status(status)),
    }
}

/// Every object of a kind within the scope, with its status.
async fn list_objects(
    client: &mut ResourcesClient<AdminChannel>,
    info: &KindInfo,
    scope: &ScopeArgs,
) -> Result<Vec<Value>> {
    let list = client.list(ListResourcesRequest { kind: info.kind.to_string() }).await.map_err(from_status)?;
    Ok(list
        .into_inner()
        .objects_json
        .iter()
        .filter_map(|json| serde_json::from_str(json).ok())
        .filter(|object| scope.contains(object))
        .collect())
}

/// The objects of each kind asked for, in the order asked, and the named ones that do not exist.
struct Found {
    blocks: Vec<(&'static KindInfo, Vec<Value>)>,
    missing: Vec<ServerError>,
}

impl Found {
    fn objects(&self) -> impl Iterator<Item = (&'static KindInfo, &Value)> {
        self.blocks.iter().flat_map(|(info, objects)| objects.iter().map(move |object| (*info, object)))
    }
}

async fn fetch(client: &mut ResourcesClient<AdminChannel>, targets: &[Target], scope: &ScopeArgs) -> Result<Found> {
    let mut found = Found { blocks: Vec::new(), missing: Vec::new() };
    for target in targets {
        let objects = match &target.name {
            None => list_objects(client, target.kind, scope).await?,
            Some(name) => match get_object(client, target.kind, &scope.namespace, name).await? {
                Ok(object) => vec![object],
                Err(missing) => {
                    found.missing.push(missing);
                    Vec::new()
                }
            },
        };
        match found.blocks.iter_mut().find(|(kind, _)| *kind == target.kind) {
            Some((_, block)) => block.extend(objects),
            None => found.blocks.push((target.kind, objects)),
        }
    }
    Ok(found)
}

/// Prints every not-found error but the last, and answers the last (exit 3), as kubectl reports each.
fn report_missing(mut missing: Vec<ServerError>) -> Result<()> {
    let Some(last) = missing.pop() else {
        return Ok(());
    };
    for error in missing {
        eprintln!("{error}");
    }
    Err(anyhow::Error::new(last))
}

#[cfg(test)]
mod tests {
    use sluice_proto::errors::{ErrorCode, error_status};

    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The message for an unknown kind named the five eventing kinds only, after Serving's and EventPolicy
    /// had come; every kind it names resolves.
    #[test]
    fn an_unknown_kind_is_answered_with_every_kind() {
        let message = resolve_kind("foo").expect_err("unknown").to_string();
        for info in sluice_controller::model::KINDS.iter() {
            assert!(message.contains(info.plural), "{message} misses {}", info.plural);
            assert!(resolve_kind(info.plural).is_ok(), "{} does not resolve", info.plural);
        }
        let last = sluice_controller::model::KINDS.last().expect("kinds").plural;
        assert!(message.ends_with(&format!(" or {last}")), "{message}");
    }

    #[test]
    fn targets_read_as_kubectl_reads_them() -> Result<()> {
        let described = |args: &[&str]| -> Result<Vec<(String, Option<String>)>> {
            Ok(parse_targets(&strings(args))?.into_iter().map(|t| (t.kind.kind.to_string(), t.name)).collect())
        };
        assert_eq!(described(&["triggers"])?, [("Trigger".into(), None)]);
        assert_eq!(
            described(&["trigger", "a", "b"])?,
            [("Trigger".into(), Some("a".into())), ("Trigger".into(), Some("b".into()))]
        );
        assert_eq!(described(&["brokers,triggers"])?, [("Broker".into(), None), ("Trigger".into(), None)]);
        assert_eq!(described(&["broker,brokers,imc"])?, [("Broker".into(), None), ("InMemoryChannel".into(), None)]);
        assert_eq!(
            described(&["trigger/a", "broker/default"])?,
            [("Trigger".into(), Some("a".into())), ("Broker".into(), Some("default".into()))]
        );
        // With the API group, as `-o name` prints them (regression: an unknown kind).
        assert_eq!(
            described(&["trigger.eventing.knative.dev/a", "service.serving.knative.dev/s"])?,
            [("Trigger".into(), Some("a".into())), ("Service".into(), Some("s".into()))]
        );
        assert_eq!(described(&["triggers.eventing.knative.dev"])?, [("Trigger".into(), None)]);
        assert!(parse_targets(&strings(&["triggers.serving.knative.dev"])).is_err(), "not that kind's group");
        assert!(parse_targets(&strings(&["trigger/a", "b"])).is_err(), "mixed forms");
        assert!(parse_targets(&strings(&["trigger", "broker/b"])).is_err());
        assert!(parse_targets(&strings(&["pods"])).is_err());
        assert!(parse_targets(&strings(&["trigger/"])).is_err());
        assert!(parse_targets(&[]).is_err());
        assert!(single_object_implied(&parse_targets(&strings(&["trigger", "a"]))?));
        assert!(single_object_implied(&parse_targets(&strings(&["trigger/a"]))?));
        assert!(!single_object_implied(&parse_targets(&strings(&["trigger", "a", "b"]))?));
        assert!(!single_object_implied(&parse_targets(&strings(&["triggers"]))?));
        Ok(())
    }

    #[test]
    fn dry_run_suffixes_are_kubectls() {
        assert_eq!(DryRun::None.suffix(), "");
        assert_eq!(DryRun::Client.suffix(), " (dry run)");
        assert_eq!(DryRun::Server.suffix(), " (server dry run)");
    }

    #[test]
    fn not_found_reads_as_kubectl() -> Result<()> {
        let status = error_status(ErrorCode::ResourceNotFound, "Trigger default/nope not found");
        let error = not_found(resolve_kind("trigger")?, "nope", &status);
        assert_eq!(
            error.to_string(),
            "Error from server (NotFound): triggers.eventing.knative.dev \"nope\" not found (RESOURCE_NOT_FOUND 1008)"
        );
        assert_eq!(error.exit_code, 3);
        Ok(())
    }
}
