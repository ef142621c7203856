//! Knative's rules for a revision's volumes and the containers' mounts of them (its `validateVolumeMounts`
//! and the pod spec's volume checks); which volume sources a cluster allows is [`super::isolation`]'s.
//!
//! In: a revision spec's `volumes` and each container's `volumeMounts`. Out: field errors, with Knative's
//! paths and messages.

use std::collections::BTreeSet;

use serde_json::Value;

use super::model::RevisionSpec;
use crate::fields::{FieldError, is_dns_label};

/// Paths no volume may be mounted at (Knative's `reservedPaths`): the runtime and the logging agent use them.
const RESERVED_PATHS: [&str; 6] = ["/", "/dev", "/dev/log", "/tmp", "/var", "/var/log"];

fn err(path: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError { path: path.into(), message: message.into() }
}

/// `path` cleaned as Go's `filepath.Clean` does for an absolute path: `.` and empty segments dropped, `..`
/// taking one back (never above `/`), no trailing slash.
fn clean(path: &str) -> String {
    let mut segments: Vec<&str> = Vec::new();
    for segment in path.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            other => segments.push(other),
        }
    }
    format!("/{}", segments.join("/"))
}

/// The volumes' names must be DNS labels and distinct, each volume must be mounted by some container, and each
/// mount must name a volume, at an absolute, unreserved path of its own, read-only unless the volume is an
/// `emptyDir` or a writable claim.
pub(crate) fn validate_volumes(path: &str, spec: &RevisionSpec, errors: &mut Vec<FieldError>) {
    let volumes: Vec<&Value> = spec.volumes.as_ref().and_then(Value::as_array).into_iter().flatten().collect();
    let name_of = |volume: &Value| volume.get("name").and_then(Value::as_str).unwrap_or_default().to_string();
    let mut names = BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let name = name_of(volume);
        let name_path = format!("{path}.volumes[{i}].name");
        if name.is_empty() {
            errors.push(err(name_path, "missing field(s)"));
        } else if !is_dns_label(&name) {
            errors.push(err(name_path, format!("invalid value: {name}: a DNS-1123 label")));
        } else if !names.insert(name.clone()) {
            errors.push(err(name_path, format!("duplicate volume name {name:?}")));
        }
    }
    let volume_named = |name: &str| volumes.iter().find(|v| name_of(v) == name).copied();
    let mut mounted = BTreeSet::new();
    for (c, container) in spec.containers.iter().enumerate() {
        let mounts = container.volume_mounts.as_ref().and_then(Value::as_array).into_iter().flatten();
        let mut paths = BTreeSet::new();
        for (m, mount) in mounts.enumerate() {
            let at = format!("{path}.containers[{c}].volumeMounts[{m}]");
            let name = mount.get("name").and_then(Value::as_str).unwrap_or_default();
            let read_only = mount.get("readOnly").and_then(Value::as_bool).unwrap_or(false);
            mounted.insert(name.to_string());
            let Some(volume) = volume_named(name) else {
                errors.push(err(format!("{at}.name"), "volumeMount has no matching volume"));
                continue;
            };
            match mount.get("mountPath").and_then(Value::as_str).unwrap_or_default() {
                "" => errors.push(err(format!("{at}.mountPath"), "missing field(s)")),
                mount_path if RESERVED_PATHS.contains(&clean(mount_path).as_str()) => errors.push(err(
                    format!("{at}.mountPath"),
                    format!("mountPath {:?} is a reserved path", clean(mount_path)),
                )),
                mount_path if !mount_path.starts_with('/') => {
                    errors.push(err(format!("{at}.mountPath"), format!("invalid value: {mount_path}")))
                }
                mount_path if !paths.insert(clean(mount_path)) => {
                    errors.push(err(format!("{at}.mountPath"), format!("invalid value: {mount_path:?} must be unique")))
                }
                _ => {}
            }
            let claim = volume.get("persistentVolumeClaim").filter(|c| !c.is_null());
            let writable = volume.get("emptyDir").is_some_and(|e| !e.is_null()) || claim.is_some();
            if !writable && !read_only {
                errors.push(err(format!("{at}.readOnly"), "volume mount should be readOnly for this type of volume"));
            }
            if claim.is_some_and(|c| c.get("readOnly") == Some(&Value::Bool(true))) && !read_only {
                errors.push(err(
                    format!("{at}.readOnly"),
                    "volume is readOnly but volume mount is not (the claim is mounted readOnly)",
                ));
            }
        }
    }
    for (i, volume) in volumes.iter().enumerate() {
        let name = name_of(volume);
        if !name.is_empty() && !mounted.contains(&name) {
            errors.push(err(format!("{path}.volumes[{i}].name"), format!("volume with name {name:?} not mounted")));
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors_of(spec: Value) -> Vec<String> {
        let spec: RevisionSpec = serde_json::from_value(spec).expect("a revision spec");
        let mut errors = Vec::new();
        validate_volumes("spec", &spec, &mut errors);
        errors.iter().map(ToString::to_string).collect()
    }

    fn mounting(volumes: Value, mounts: Value) -> Value {
        json!({"containers": [{"image": "app", "volumeMounts": mounts}], "volumes": volumes})
    }

    #[test]
    fn volumes_and_their_mounts_follow_knatives_rules() {
        let config = json!([{"name": "conf", "configMap": {"name": "c"}}]);
        let scratch = json!([{"name": "scratch", "emptyDir": {}}]);
        let cases: Vec<(Value, Vec<&str>, &str)> = vec![
            (
                mounting(config.clone(), json!([{"name": "conf", "mountPath": "/etc/app", "readOnly": true}])),
                vec![],
                "fine",
            ),
            (
                mounting(scratch.clone(), json!([{"name": "scratch", "mountPath": "/data"}])),
                vec![],
                "an emptyDir may be written",
            ),
            (
                mounting(config.clone(), json!([{"name": "conf", "mountPath": "/etc/app"}])),
                vec![
                    "spec.containers[0].volumeMounts[0].readOnly: volume mount should be readOnly for this type of volume",
                ],
                "a configMap is mounted readOnly",
            ),
            (
                mounting(config.clone(), json!([{"name": "other", "mountPath": "/etc/app", "readOnly": true}])),
                vec![
                    "spec.containers[0].volumeMounts[0].name: volumeMount has no matching volume",
                    "spec.volumes[0].name: volume with name \"conf\" not mounted",
                ],
                "a mount names a volume, and every volume is mounted",
            ),
            (
                mounting(scratch.clone(), json!([{"name": "scratch", "mountPath": "/var/log/"}])),
                vec!["spec.containers[0].volumeMounts[0].mountPath: mountPath \"/var/log\" is a reserved path"],
                "reserved, once cleaned",
            ),
            (
                mounting(scratch.clone(), json!([{"name": "scratch", "mountPath": "data"}])),
                vec!["spec.containers[0].volumeMounts[0].mountPath: invalid value: data"],
                "absolute",
            ),
            (
                mounting(scratch.clone(), json!([{"name": "scratch"}])),
                vec!["spec.containers[0].volumeMounts[0].mountPath: missing field(s)"],
                "a path is required",
            ),
            (
                mounting(
                    scratch.clone(),
                    json!([{"name": "scratch", "mountPath": "/a/b"}, {"name": "scratch", "mountPath": "/a/./b"}]),
                ),
                vec!["spec.containers[0].volumeMounts[1].mountPath: invalid value: \"/a/./b\" must be unique"],
                "one path, one mount",
            ),
            (
                mounting(
                    json!([{"name": "d", "emptyDir": {}}, {"name": "d", "emptyDir": {}}]),
                    json!([{"name": "d", "mountPath": "/d"}]),
                ),
                vec!["spec.volumes[1].name: duplicate volume name \"d\""],
                "distinct names",
            ),
            (
                mounting(json!([{"name": "Data", "emptyDir": {}}]), json!([{"name": "Data", "mountPath": "/d"}])),
                vec!["spec.volumes[0].name: invalid value: Data: a DNS-1123 label"],
                "a DNS label",
            ),
            (
                mounting(
                    json!([{"name": "db", "persistentVolumeClaim": {"claimName": "x", "readOnly": true}}]),
                    json!([{"name": "db", "mountPath": "/db"}]),
                ),
                vec![
                    "spec.containers[0].volumeMounts[0].readOnly: volume is readOnly but volume mount is not (the claim is mounted readOnly)",
                ],
                "a read-only claim is mounted read-only",
            ),
            (
                mounting(
                    json!([{"name": "db", "persistentVolumeClaim": {"claimName": "x"}}]),
                    json!([{"name": "db", "mountPath": "/db"}]),
                ),
                vec![],
                "a writable claim may be written",
            ),
        ];
        for (spec, expected, why) in cases {
            assert_eq!(errors_of(spec), expected, "{why}");
        }
    }

    #[test]
    fn a_sidecar_may_mount_what_the_serving_container_does_not() {
        let spec = json!({"containers": [{"image": "app", "ports": [{"containerPort": 8080}]},
            {"image": "agent", "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
            "volumes": [{"name": "shared", "emptyDir": {}}]});
        assert_eq!(errors_of(spec), Vec::<String>::new());
    }

    #[test]
    fn paths_are_cleaned_as_go_cleans_them() {
        for (path, cleaned) in
            [("/", "/"), ("/var/log/", "/var/log"), ("/a/../var", "/var"), ("//tmp/.", "/tmp"), ("/..", "/")]
        {
            assert_eq!(clean(path), cleaned, "{path}");
        }
    }
}
