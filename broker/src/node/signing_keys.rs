//! Sluice's own OIDC issuer on one node. In: this node's signing keys (PKCS#8 files under
//! `DATA/signing-keys`, mode 0600) and the clock. Out: their public halves published in the metadata group
//! (internal kind `SigningKey`, namespace `sluice-system`), the current key handed to [`SenderTokens`] (which
//! mints the tokens of Trigger and Subscription deliveries), and the union of every node's published keys:
//! the issuer's JWKS, served on the HTTP port and trusted by this node's ingress when sender identity is on.
//!
//! What to do is `sluice_security::plan_keys`'s decision; [`run`] carries it out every tick. Private keys
//! never leave the node: a node that is lost takes its keys with it, and its published halves expire.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use sluice_security::{KeyTiming, OwnKey, SenderTokens, SigningKey, TrustedIssuer, plan_keys};

use crate::ids::ResourceKey;
use crate::node::Node;

/// The internal kind a node's public key is published as.
pub(crate) const SIGNING_KEY_KIND: &str = "SigningKey";
/// The namespace of internal objects no user applies.
pub(crate) const SYSTEM_NAMESPACE: &str = "sluice-system";
const KEYS_DIR: &str = "signing-keys";
/// Most keys served in the JWKS (what `parse_jwks` accepts).
const MAX_SERVED_KEYS: usize = sluice_security::jwt::jwks::MAX_KEYS;

/// Sender identity settings of a node.
#[derive(Clone, Debug, Default)]
pub struct SenderIdentity {
    /// The `iss` of the tokens this node mints, and the URL its discovery document is served under. `None`: the
    /// node's own ingress address (`http://` or `https://` with TLS). In a cluster give every node the same
    /// address that reaches any of them (a load balancer, or a Kubernetes Service).
    pub issuer: Option<String>,
    pub timing: KeyTiming,
}

pub(crate) fn tokens_for(settings: &SenderIdentity, fallback_issuer: &str) -> SenderTokens {
    SenderTokens::new(settings.issuer.as_deref().unwrap_or(fallback_issuer), settings.timing.token_ttl)
}

fn key_of(kid: &str) -> ResourceKey {
    ResourceKey { kind: SIGNING_KEY_KIND.into(), namespace: SYSTEM_NAMESPACE.into(), name: kid.into() }
}

fn now_ms() -> u64 {
    sluice_cloudevent::clock::now_ms()
}

/// This node's keys, by kid, with when they were made.
type OwnKeys = BTreeMap<String, (Arc<SigningKey>, u64)>;

/// A kid names its node and its creation instant: unique across the cluster without coordination.
fn kid_for(node: u64, created_ms: u64) -> String {
    format!("sluice-{node}-{created_ms}")
}

fn created_of(kid: &str) -> Option<u64> {
    kid.rsplit_once('-').and_then(|(_, ms)| ms.parse().ok())
}

/// Loads the keys kept in `dir`; a file that does not load is reported and skipped (a new key replaces it).
fn load_keys(dir: &Path) -> OwnKeys {
    let mut keys = OwnKeys::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return keys };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(kid) = path.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_suffix(".pk8")) else {
            continue;
        };
        let Some(created_ms) = created_of(kid) else { continue };
        match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|der| SigningKey::from_pkcs8(kid, &der).map_err(|e| e.to_string()))
        {
            Ok(key) => {
                keys.insert(kid.to_string(), (Arc::new(key), created_ms));
            }
            Err(e) => tracing::error!(file = %path.display(), error = %e, "a signing key does not load; skipped"),
        }
    }
    keys
}

fn key_path(dir: &Path, kid: &str) -> PathBuf {
    dir.join(format!("{kid}.pk8"))
}

fn published_object(node: u64, key: &SigningKey, created_ms: u64, published_ms: u64, timing: &KeyTiming) -> Value {
    json!({
        "apiVersion": "sluice.dev/v1alpha1", "kind": SIGNING_KEY_KIND,
        "metadata": {"namespace": SYSTEM_NAMESPACE, "name": key.kid()},
        "spec": {
            "node": node, "createdMs": created_ms, "publishedMs": published_ms,
            "expiresMs": timing.expires_ms(created_ms), "jwk": key.jwk(),
        },
    })
}

/// When the stored object says `key` was published, if it is this key with the expiry the current timing gives
/// it (a node restarted with other timing publishes its keys again with their new expiry).
fn stored_publication(stored: &Value, key: &SigningKey, created_ms: u64, timing: &KeyTiming) -> Option<u64> {
    let spec = stored.get("spec")?;
    let same = spec.get("jwk") == Some(&key.jwk())
        && spec.get("createdMs").and_then(Value::as_u64) == Some(created_ms)
        && spec.get("expiresMs").and_then(Value::as_u64) == Some(timing.expires_ms(created_ms));
    same.then(|| spec.get("publishedMs").and_then(Value::as_u64).unwrap_or(created_ms))
}

/// How long a publication this node saw committed counts before the node's own copy of the metadata shows it
/// (it applies the entry a moment after the leader answered).
const APPLY_GRACE_MS: u64 = 30_000;

/// Every node's published keys that have not expired at `now_ms`, newest first, as a JWKS document.
pub(crate) fn published_jwks(node: &Node, now_ms: u64) -> Value {
    let mut keys: Vec<(u64, Value)> = node
        .resources(SIGNING_KEY_KIND)
        .into_iter()
        .filter_map(|(_, json)| serde_json::from_str::<Value>(&json).ok())
        .filter(|object| object.pointer("/spec/expiresMs").and_then(Value::as_u64).is_some_and(|e| e > now_ms))
        .filter_map(|object| {
            let created = object.pointer("/spec/createdMs").and_then(Value::as_u64)?;
            Some((created, object.pointer("/spec/jwk")?.clone()))
        })
        .collect();
    keys.sort_by_key(|key| std::cmp::Reverse(key.0));
    keys.truncate(MAX_SERVED_KEYS);
    json!({"keys": keys.into_iter().map(|(_, jwk)| jwk).collect::<Vec<_>>()})
}

/// Keeps this node's keys as the plan says, every tick, until the runtime ends.
pub(crate) async fn run(node: Node) {
    let timing = node.settings().sender_identity.timing.clone();
    let tick = (timing.publish_lead / 4).clamp(Duration::from_millis(200), Duration::from_secs(10));
    let dir = node.settings().data_dir.join(KEYS_DIR);
    if let Err(e) = crate::durable_fs::create_dir_all(&dir) {
        tracing::error!(dir = %dir.display(), error = %e, "no signing-key directory: deliveries carry no token");
        return;
    }
    let mut keys = load_keys(&dir);
    let mut published = BTreeMap::new();
    loop {
        step(&node, &dir, &timing, &mut keys, &mut published, now_ms()).await;
        tokio::time::sleep(tick).await;
    }
}

/// The plan's view of `keys`: each one's publication as the metadata group holds it, or as this node saw it
/// committed (`committed`: kid → when) within the last [`APPLY_GRACE_MS`]. A key whose object is gone (deleted
/// by hand) or stale is unpublished to the plan: it stops signing and is published again.
fn own_keys(
    node: &Node,
    keys: &OwnKeys,
    committed: &BTreeMap<String, u64>,
    timing: &KeyTiming,
    now_ms: u64,
) -> Vec<OwnKey> {
    keys.iter()
        .map(|(kid, (key, created_ms))| {
            let stored = node
                .resource(&key_of(kid))
                .and_then(|json| serde_json::from_str::<Value>(&json).ok())
                .and_then(|object| stored_publication(&object, key, *created_ms, timing));
            let seen = committed.get(kid).copied();
            let published_ms = match (stored, seen) {
                (Some(stored), seen) => Some(stored.max(seen.unwrap_or(0))),
                (None, Some(seen)) if now_ms < seen.saturating_add(APPLY_GRACE_MS) => Some(seen),
                (None, _) => None,
            };
            OwnKey { kid: kid.clone(), created_ms: *created_ms, published_ms }
        })
        .collect()
}

async fn step(
    node: &Node,
    dir: &Path,
    timing: &KeyTiming,
    keys: &mut OwnKeys,
    committed: &mut BTreeMap<String, u64>,
    now_ms: u64,
) {
    let plan = plan_keys(&own_keys(node, keys, committed, timing, now_ms), now_ms, timing);
    // First the signing key: the writes below may wait for a metadata leader, and the current key may be
    // reaching the end of its signing time meanwhile.
    let signing_key = |plan: &sluice_security::KeyPlan, keys: &OwnKeys| {
        plan.signing.as_ref().and_then(|kid| keys.get(kid)).map(|(key, _)| key.clone())
    };
    node.sender_tokens().set_signing_key(signing_key(&plan, keys));
    let mut publish = plan.publish.clone();
    if plan.generate {
        let created_ms = now_ms.max(keys.values().map(|(_, c)| c + 1).max().unwrap_or(0));
        let kid = kid_for(node.id(), created_ms);
        match SigningKey::generate(&kid).map_err(|e| e.to_string()).and_then(|key| {
            crate::durable_fs::write_private_file(&key_path(dir, &kid), key.pkcs8())
                .map_err(|e| format!("writing {}: {e}", key_path(dir, &kid).display()))
                .map(|()| key)
        }) {
            Ok(key) => {
                tracing::info!(kid = %kid, "new signing key; published ahead of signing");
                metrics::counter!("sluice_signing_keys_created_total").increment(1);
                keys.insert(kid.clone(), (Arc::new(key), created_ms));
                publish.push(kid);
            }
            Err(e) => tracing::error!(error = %e, "cannot make a signing key"),
        }
    }
    for kid in &publish {
        let Some((key, created_ms)) = keys.get(kid) else { continue };
        let object = published_object(node.id(), key, *created_ms, sluice_cloudevent::clock::now_ms(), timing);
        match node.put_internal_object(&object).await {
            Ok(_) => {
                // The lead counts from the commit, which is later than the time the object names.
                committed.insert(kid.clone(), sluice_cloudevent::clock::now_ms());
            }
            Err(e) => {
                // Before `cluster init`, or without a metadata leader: the next tick tries again.
                tracing::debug!(kid = %kid, error = %e, "signing key not published yet");
                metrics::counter!("sluice_signing_key_publish_failures_total").increment(1);
            }
        }
    }
    // Again with what was just published: a node's first key signs as soon as it is committed.
    let now_ms = sluice_cloudevent::clock::now_ms().max(now_ms);
    let plan = if publish.is_empty() {
        plan
    } else {
        let plan = plan_keys(&own_keys(node, keys, committed, timing, now_ms), now_ms, timing);
        node.sender_tokens().set_signing_key(signing_key(&plan, keys));
        plan
    };
    for kid in &plan.remove {
        match node.delete_resource(key_of(kid)).await {
            Ok(_) => {
                keys.remove(kid);
                committed.remove(kid);
                if let Err(e) = std::fs::remove_file(key_path(dir, kid)) {
                    tracing::warn!(kid = %kid, error = %e, "cannot remove a retired signing key's file");
                }
                tracing::info!(kid = %kid, "signing key retired and unpublished");
            }
            Err(e) => tracing::debug!(kid = %kid, error = %e, "retired signing key not unpublished yet"),
        }
    }
    // Keys of nodes that are gone expire: any node removes them once no token of theirs can be valid even on a
    // clock that lags (deleting twice is harmless).
    let grace_ms = u64::try_from((timing.token_ttl + timing.skew).as_millis()).unwrap_or(u64::MAX);
    for (key, json) in node.resources(SIGNING_KEY_KIND) {
        let expired = serde_json::from_str::<Value>(&json)
            .ok()
            .and_then(|o| o.pointer("/spec/expiresMs").and_then(Value::as_u64))
            .is_none_or(|expires| expires.saturating_add(grace_ms) <= now_ms);
        if expired && !keys.contains_key(&key.name) {
            let _ = node.delete_resource(key).await;
        }
    }
    metrics::gauge!("sluice_signing_keys").set(keys.len() as f64);
}

/// With sender identity on, trusts the cluster's own issuer with every node's published keys, again whenever
/// the resources change (a peer's new key is trusted as soon as it is applied here).
pub(crate) async fn trust_own_issuer(node: Node) {
    let Some(authenticator) = node.settings().authenticator.clone() else { return };
    let Some(mut changes) = node.watch_resources() else { return };
    loop {
        let jwks = published_jwks(&node, now_ms());
        match sluice_security::jwt::parse_jwks(jwks.to_string().as_bytes()) {
            Ok(keys) => {
                authenticator.trust_own_issuer(TrustedIssuer { issuer: node.sender_tokens().issuer().into(), keys })
            }
            Err(e) => tracing::error!(error = %e, "the cluster's own signing keys do not parse"),
        }
        // Also wake at least once a minute: keys expire without any change.
        let _ = tokio::time::timeout(Duration::from_secs(60), changes.changed()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kids_carry_their_creation_instant() {
        let kid = kid_for(3, 1_700_000_000_123);
        assert_eq!(kid, "sluice-3-1700000000123");
        assert_eq!(created_of(&kid), Some(1_700_000_000_123));
        assert_eq!(created_of("other"), None);
    }

    #[test]
    fn keys_survive_a_restart_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = SigningKey::generate(&kid_for(1, 5)).expect("key");
        crate::durable_fs::write_private_file(&key_path(dir.path(), key.kid()), key.pkcs8()).expect("written");
        std::fs::write(dir.path().join("sluice-1-9.pk8"), b"not a key").expect("written");
        std::fs::write(dir.path().join("notes.txt"), b"ignored").expect("written");
        let loaded = load_keys(dir.path());
        assert_eq!(loaded.keys().collect::<Vec<_>>(), vec![key.kid()]);
        assert_eq!(loaded[key.kid()].0.jwk(), key.jwk());
        assert_eq!(loaded[key.kid()].1, 5);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(key_path(dir.path(), key.kid())).expect("stat").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
