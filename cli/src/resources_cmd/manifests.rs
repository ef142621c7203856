//! The manifests `apply -f` and `delete -f` name, read into objects. In: files, directories (their
//! `.yaml`, `.yml` and `.json` files in name order; with `-R` their subdirectories' too, as kubectl's
//! `--recursive`), `-` for standard input, and `http://` or `https://` URLs (kubectl's `-f URL`; https trusts the
//! system's CAs). Out: every object with where it is: `SOURCE: document N`, or `SOURCE: document N, item M` for
//! the items of a `kind: List` (what `kubectl get -o yaml` and `sluice get -o yaml` print), which kubectl applies
//! item by item.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The most one manifest (a file, standard input, a URL's body) may hold: far above any set of Knative objects
/// (each is at most what the node takes in one apply), and a bound on what a wrong URL can make the CLI read.
pub(super) const MAX_MANIFEST_BYTES: usize = 64 * 1024 * 1024;

/// How long fetching a URL may take, connection to last byte.
const URL_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a manifest is read from.
#[derive(Clone, Debug, PartialEq)]
enum Source {
    Stdin,
    Url(String),
    File(PathBuf),
}

fn is_manifest_file(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
}

/// The manifests `-f` names, directories expanded (their subdirectories with `recursive`), in order.
fn sources(files: &[PathBuf], recursive: bool) -> Result<Vec<Source>> {
    fn walk(dir: &Path, recursive: bool, found: &mut Vec<Source>) -> Result<()> {
        let mut entries: Vec<(PathBuf, bool)> = std::fs::read_dir(dir)
            .with_context(|| format!("cannot read directory {}", dir.display()))?
            .filter_map(|e| e.ok())
            // The entry's own type: a link to a directory is not walked into (as kubectl's `-R`), so a link back
            // up the tree cannot make the walk endless.
            .map(|e| (e.path(), e.file_type().is_ok_and(|t| t.is_dir())))
            .collect();
        entries.sort();
        for (entry, is_dir) in entries {
            if is_dir {
                if recursive {
                    walk(&entry, recursive, found)?;
                }
            } else if is_manifest_file(&entry) {
                found.push(Source::File(entry));
            }
        }
        Ok(())
    }
    let mut found = Vec::new();
    for file in files {
        let text = file.to_str().unwrap_or_default();
        if file == Path::new("-") {
            found.push(Source::Stdin);
        } else if text.starts_with("http://") || text.starts_with("https://") {
            found.push(Source::Url(text.to_string()));
        } else if file.is_dir() {
            walk(file, recursive, &mut found)?;
        } else {
            found.push(Source::File(file.clone()));
        }
    }
    Ok(found)
}

/// A URL's body, at most [`MAX_MANIFEST_BYTES`]; a status other than 2xx is an error naming it.
async fn fetch(url: &str) -> Result<String> {
    let tls = sluice_security::https_client_config(&[], url)?;
    let client = reqwest::Client::builder().use_preconfigured_tls(tls).timeout(URL_TIMEOUT).build()?;
    let mut response = client.get(url).send().await.with_context(|| format!("cannot fetch {url}"))?;
    if !response.status().is_success() {
        bail!("cannot fetch {url}: HTTP {}", response.status());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.with_context(|| format!("reading {url}"))? {
        if body.len() + chunk.len() > MAX_MANIFEST_BYTES {
            bail!("{url}: a manifest is at most {MAX_MANIFEST_BYTES} bytes");
        }
        body.extend_from_slice(&chunk);
    }
    String::from_utf8(body).with_context(|| format!("{url}: not UTF-8 text"))
}

/// Reads at most [`MAX_MANIFEST_BYTES`] of `reader` as text.
fn read_bounded(reader: impl std::io::Read, name: &str) -> Result<String> {
    let mut text = String::new();
    let limit = u64::try_from(MAX_MANIFEST_BYTES).unwrap_or(u64::MAX);
    std::io::Read::read_to_string(&mut std::io::Read::take(reader, limit + 1), &mut text)
        .with_context(|| format!("cannot read {name}"))?;
    if text.len() > MAX_MANIFEST_BYTES {
        bail!("{name}: a manifest is at most {MAX_MANIFEST_BYTES} bytes");
    }
    Ok(text)
}

/// Every object of every manifest `files` names (see the module's text).
pub(super) async fn read_documents(files: &[PathBuf], recursive: bool) -> Result<Vec<(String, Value)>> {
    let mut documents = Vec::new();
    for source in sources(files, recursive)? {
        let (name, text) = match source {
            Source::Stdin => ("-".to_string(), read_bounded(std::io::stdin(), "standard input")?),
            Source::Url(url) => {
                let text = fetch(&url).await?;
                (url, text)
            }
            Source::File(path) => {
                let name = path.display().to_string();
                let file = std::fs::File::open(&path).with_context(|| format!("cannot read {name}"))?;
                let text = read_bounded(file, &name)?;
                (name, text)
            }
        };
        documents.extend(objects_of(&name, &text)?);
    }
    Ok(documents)
}

/// `object` placed in `namespace` (`-n`), as kubectl places it: one without a namespace takes it; one in
/// another namespace is refused with kubectl's message. Without `-n`, as written (the node defaults it).
pub(super) fn in_namespace(mut object: Value, namespace: Option<&str>) -> Result<Value, String> {
    let Some(namespace) = namespace else { return Ok(object) };
    let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) else { return Ok(object) };
    match metadata.get("namespace").and_then(Value::as_str).filter(|n| !n.is_empty()) {
        Some(own) if own != namespace => Err(format!(
            "the namespace from the provided object {own:?} does not match the namespace {namespace:?}. You must \
             pass '--namespace={own}' to perform this operation."
        )),
        _ => {
            metadata.insert("namespace".into(), namespace.into());
            Ok(object)
        }
    }
}

/// The objects of one file's text, Lists expanded (nested ones too, as kubectl does).
fn objects_of(name: &str, text: &str) -> Result<Vec<(String, Value)>> {
    fn expand(place: String, value: Value, objects: &mut Vec<(String, Value)>) {
        let is_list = value.get("kind").and_then(Value::as_str).is_some_and(|kind| kind.ends_with("List"))
            && value.get("items").is_some_and(Value::is_array);
        if !is_list {
            objects.push((place, value));
            return;
        }
        if let Some(Value::Array(items)) = value.get("items").cloned() {
            for (item, object) in items.into_iter().enumerate() {
                expand(format!("{place}, item {item}"), object, objects);
            }
        }
    }
    let mut objects = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let not_yaml = |e: serde_yaml_ng::Error| anyhow::anyhow!("{name}: document {index}: not valid YAML: {e}");
        // Merge keys (`<<: *defaults`) expanded first, as kubectl's YAML reader does; read straight into JSON,
        // a `<<` key would be kept as a field (and refused as an unknown one).
        let mut yaml: serde_yaml_ng::Value = serde::Deserialize::deserialize(document).map_err(not_yaml)?;
        yaml.apply_merge().map_err(not_yaml)?;
        let value: Value = serde::Deserialize::deserialize(yaml).map_err(not_yaml)?;
        if !value.is_null() {
            expand(format!("{name}: document {index}"), value, &mut objects);
        }
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources_print::str_at;

    #[test]
    fn a_list_is_applied_item_by_item() -> Result<()> {
        let text = "apiVersion: v1\nkind: List\nmetadata: {}\nitems:\n\
                    - {apiVersion: eventing.knative.dev/v1, kind: Broker, metadata: {name: a}}\n\
                    - {apiVersion: v1, kind: List, items: [{apiVersion: eventing.knative.dev/v1, kind: Broker, metadata: {name: b}}]}\n\
                    ---\n\
                    {apiVersion: eventing.knative.dev/v1, kind: Trigger, metadata: {name: t}}\n\
                    ---\n\
                    {apiVersion: v1, kind: List, items: []}\n";
        let objects = objects_of("f.yaml", text)?;
        let seen: Vec<(&str, &str)> =
            objects.iter().map(|(place, object)| (place.as_str(), str_at(object, "/metadata/name"))).collect();
        assert_eq!(
            seen,
            [
                ("f.yaml: document 0, item 0", "a"),
                ("f.yaml: document 0, item 1, item 0", "b"),
                ("f.yaml: document 1", "t")
            ]
        );
        Ok(())
    }

    /// Regression: a merge key (`<<: *anchor`) was kept as a field named `<<` and refused as unknown; kubectl's
    /// YAML reader expands it, the keys written beside it winning.
    #[test]
    fn yaml_merge_keys_are_expanded_as_kubectl_expands_them() -> Result<()> {
        let text = "apiVersion: eventing.knative.dev/v1\nkind: Trigger\n\
                    metadata:\n  name: t\n  labels: &common {app: shop, tier: web}\n\
                    \x20 annotations:\n    <<: *common\n    tier: events\n\
                    spec:\n  broker: default\n  subscriber: {uri: http://x/}\n";
        let objects = objects_of("f.yaml", text)?;
        let annotations = objects[0].1.pointer("/metadata/annotations").cloned().unwrap_or_default();
        assert_eq!(annotations, serde_json::json!({"app": "shop", "tier": "events"}));
        assert!(objects_of("f.yaml", "a:\n  <<: 3\n").is_err(), "a merge of no mapping is refused");
        Ok(())
    }

    #[test]
    fn directories_are_read_in_name_order_and_their_subdirectories_with_recursive() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let nested = dir.path().join("b-nested");
        std::fs::create_dir(&nested)?;
        for (path, text) in [
            (dir.path().join("c.yaml"), "c"),
            (dir.path().join("a.json"), "a"),
            (dir.path().join("notes.txt"), "x"),
            (nested.join("d.yml"), "d"),
        ] {
            std::fs::write(path, text)?;
        }
        let name = |s: &Source| match s {
            Source::File(path) => path.file_name().and_then(|n| n.to_str()).unwrap_or_default().to_string(),
            other => format!("{other:?}"),
        };
        let flat: Vec<String> = sources(&[dir.path().to_path_buf()], false)?.iter().map(name).collect();
        assert_eq!(flat, ["a.json", "c.yaml"]);
        let all: Vec<String> = sources(&[dir.path().to_path_buf()], true)?.iter().map(name).collect();
        assert_eq!(all, ["a.json", "d.yml", "c.yaml"], "b-nested sorts between a.json and c.yaml");
        std::os::unix::fs::symlink(dir.path(), nested.join("loop"))?;
        let with_a_loop: Vec<String> = sources(&[dir.path().to_path_buf()], true)?.iter().map(name).collect();
        assert_eq!(with_a_loop, ["a.json", "d.yml", "c.yaml"], "a link back up the tree is not followed");
        let mixed = sources(&[PathBuf::from("-"), PathBuf::from("https://example.com/x.yaml")], false)?;
        assert_eq!(mixed, [Source::Stdin, Source::Url("https://example.com/x.yaml".into())]);
        Ok(())
    }

    #[test]
    fn a_manifest_past_its_bound_is_refused() {
        let big = vec![b'a'; MAX_MANIFEST_BYTES + 1];
        let error = read_bounded(&big[..], "big.yaml").expect_err("too big");
        assert!(error.to_string().contains("at most"), "{error}");
        assert_eq!(read_bounded(&b"a: 1"[..], "small.yaml").ok().as_deref(), Some("a: 1"));
    }

    #[test]
    fn namespace_flag_places_objects_as_kubectl_does() {
        let object = |namespace: Option<&str>| match namespace {
            Some(n) => serde_json::json!({"kind": "Broker", "metadata": {"name": "b", "namespace": n}}),
            None => serde_json::json!({"kind": "Broker", "metadata": {"name": "b"}}),
        };
        assert_eq!(in_namespace(object(None), Some("team")), Ok(object(Some("team"))));
        assert_eq!(in_namespace(object(Some("team")), Some("team")), Ok(object(Some("team"))));
        assert_eq!(in_namespace(object(None), None), Ok(object(None)));
        let refused = in_namespace(object(Some("other")), Some("team")).expect_err("mismatch");
        assert!(refused.contains("\"other\" does not match the namespace \"team\""), "{refused}");
    }
}
