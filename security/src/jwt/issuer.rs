//! Sluice as an OIDC issuer for its own senders (Trigger and Subscription deliveries, replies, dead letters,
//! redrives): which of a node's signing keys to publish, sign with and remove (a pure plan over the keys and
//! the clock), and the tokens minted with the current one, cached per (subject, audience).
//!
//! Each node has its own keys; only their public halves leave it (the broker publishes them in the metadata
//! group, and every node serves the union as the issuer's JWKS). A new key is published a lead time before it
//! signs, so verifiers that cache the JWKS have fetched it by then; a retired key stays published until every
//! token it signed has expired.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde_json::{Value, json};

use crate::jwt::sign::SigningKey;

/// Most keys a node keeps: with the timing's rules it needs two or three; more are removed oldest first.
pub const MAX_OWN_KEYS: usize = 8;
/// Most cached tokens; the cache is emptied when it is full (one token per Trigger and destination).
pub const MAX_CACHED_TOKENS: usize = 4096;

/// How long tokens and keys live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyTiming {
    /// A token's lifetime (`exp - iat`). A cached token is reused while at least half of it remains.
    pub token_ttl: Duration,
    /// A new key is made when the newest is this old.
    pub rotation: Duration,
    /// A new key is published this long before it signs (longer than verifiers' JWKS refresh).
    pub publish_lead: Duration,
    /// Clock difference verifiers allow: a retired key stays published this much longer.
    pub skew: Duration,
}

impl Default for KeyTiming {
    fn default() -> Self {
        KeyTiming {
            token_ttl: Duration::from_secs(600),
            rotation: Duration::from_secs(24 * 3600),
            publish_lead: Duration::from_secs(120),
            skew: Duration::from_secs(60),
        }
    }
}

impl KeyTiming {
    /// When a key made at `created_ms` leaves the JWKS at the latest: it signs until its successor (made at
    /// `created + rotation`) is past its lead, counted from the successor's publication, which may come up to
    /// another lead late (a metadata leader being elected) without a gap; its last tokens live `token_ttl`
    /// (+ skew) more.
    pub fn expires_ms(&self, created_ms: u64) -> u64 {
        created_ms
            .saturating_add(ms(self.rotation))
            .saturating_add(ms(self.publish_lead).saturating_mul(2))
            .saturating_add(ms(self.token_ttl))
            .saturating_add(ms(self.skew))
    }

    /// Whether the timing holds together: a key must be able to sign a whole token before it expires.
    pub fn check(&self) -> Result<(), String> {
        if self.token_ttl.is_zero() || self.rotation.is_zero() {
            return Err("the token lifetime and the key rotation period must be more than zero".into());
        }
        if self.publish_lead >= self.rotation {
            return Err(format!(
                "the publish lead ({} s) must be shorter than the key rotation period ({} s)",
                self.publish_lead.as_secs(),
                self.rotation.as_secs()
            ));
        }
        // A key stays published for up to two leads + token lifetime + skew after its successor is made: the keys that
        // overlap then must fit in MAX_OWN_KEYS, or the oldest would go while its tokens are valid.
        let too_large =
            || "the publish lead, token lifetime, clock skew or key rotation period is too large".to_string();
        let overlap = self
            .publish_lead
            .checked_mul(2)
            .and_then(|lead| lead.checked_add(self.token_ttl))
            .and_then(|sum| sum.checked_add(self.skew))
            .ok_or_else(too_large)?;
        let room = self.rotation.checked_mul(MAX_OWN_KEYS as u32 - 2).ok_or_else(too_large)?;
        if overlap > room {
            return Err(format!(
                "the publish lead, token lifetime and clock skew ({} s together) must not exceed {} key rotation \
                 periods ({} s): more keys would be alive at once than a node keeps",
                overlap.as_secs(),
                MAX_OWN_KEYS - 2,
                room.as_secs()
            ));
        }
        Ok(())
    }
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// One of this node's keys as the plan sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnKey {
    pub kid: String,
    pub created_ms: u64,
    /// When its public half was committed in the metadata group with its current expiry (verifiers can find
    /// it from then on); `None`: not published, or published with another expiry.
    pub published_ms: Option<u64>,
}

/// What to do with the keys now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPlan {
    /// Make (and store) a new key.
    pub generate: bool,
    /// Publish these (made, not yet committed).
    pub publish: Vec<String>,
    /// Sign with this one; `None`: no published key can sign a whole token yet (deliveries go without one).
    pub signing: Option<String>,
    /// Unpublish and forget these: no token they signed can still be valid.
    pub remove: Vec<String>,
}

/// The plan for a node's `keys` at `now_ms`.
///
/// - A key signs while `now + token_ttl + skew <= expires`: its tokens, with the verifiers' skew, never
///   outlive its place in the JWKS.
/// - The signing key is the newest published one whose publication is `publish_lead` old, else (a node's
///   first key, or one back after a long stop) the newest published one that can sign.
/// - A new key is made when there is none or the newest is `rotation` old; an unpublished key that has not
///   expired is published.
/// - A key older than the signing key is removed once its successor has been past its lead for
///   `token_ttl + skew` (when its own last token has expired), or once it expired; past [`MAX_OWN_KEYS`] the
///   oldest go ([`KeyTiming::check`] keeps sane timings from getting there).
pub fn plan_keys(keys: &[OwnKey], now_ms: u64, timing: &KeyTiming) -> KeyPlan {
    let mut keys: Vec<&OwnKey> = keys.iter().collect();
    keys.sort_by_key(|k| (k.created_ms, k.kid.clone()));
    let (lead, ttl, skew) = (ms(timing.publish_lead), ms(timing.token_ttl), ms(timing.skew));
    let expires = |k: &OwnKey| timing.expires_ms(k.created_ms);
    let can_sign = |k: &OwnKey| now_ms.saturating_add(ttl).saturating_add(skew) <= expires(k);
    let past_lead = |k: &OwnKey| k.published_ms.is_some_and(|p| p.saturating_add(lead) <= now_ms);
    let signers: Vec<&&OwnKey> = keys.iter().filter(|k| k.published_ms.is_some() && can_sign(k)).collect();
    let signing = signers.iter().rev().find(|k| past_lead(k)).or(signers.last()).map(|k| k.kid.clone());
    let generate = keys.last().is_none_or(|newest| newest.created_ms.saturating_add(ms(timing.rotation)) <= now_ms);
    let publish =
        keys.iter().filter(|k| k.published_ms.is_none() && expires(k) > now_ms).map(|k| k.kid.clone()).collect();
    let signing_index = signing.as_ref().and_then(|kid| keys.iter().position(|k| &k.kid == kid));
    let mut remove = Vec::new();
    for (index, key) in keys.iter().enumerate() {
        let older_than_signing = signing_index.is_some_and(|s| index < s);
        let expired = expires(key) <= now_ms;
        let superseded = older_than_signing
            && keys[index + 1]
                .published_ms
                .is_some_and(|p| p.saturating_add(lead).saturating_add(ttl).saturating_add(skew) <= now_ms);
        if (expired || superseded) && Some(index) != signing_index {
            remove.push(key.kid.clone());
        }
    }
    let kept = keys.len() - remove.len() + usize::from(generate);
    let mut excess = kept.saturating_sub(MAX_OWN_KEYS);
    for key in &keys {
        if excess == 0 {
            break;
        }
        if !remove.contains(&key.kid) && Some(&key.kid) != signing.as_ref() {
            remove.push(key.kid.clone());
            excess -= 1;
        }
    }
    KeyPlan { generate, publish, signing, remove }
}

/// The claims of a token for `subject` towards `audience`, issued at `now_s` by `issuer`.
pub fn claims(issuer: &str, subject: &str, audience: &str, now_s: u64, ttl: Duration) -> Value {
    json!({
        "iss": issuer, "sub": subject, "aud": [audience],
        "iat": now_s, "nbf": now_s, "exp": now_s.saturating_add(ttl.as_secs()),
    })
}

/// The OpenID discovery document of `issuer` (what `ISSUER/.well-known/openid-configuration` answers).
pub fn discovery_document(issuer: &str) -> Value {
    let issuer = issuer.trim_end_matches('/');
    json!({
        "issuer": issuer,
        "jwks_uri": format!("{issuer}{JWKS_PATH}"),
        "response_types_supported": ["id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["ES256"],
    })
}

/// Where the issuer's key set is served (beside the discovery document, on every node's HTTP port).
pub const JWKS_PATH: &str = "/.well-known/jwks.json";
/// Where the discovery document is served.
pub const DISCOVERY_PATH: &str = "/.well-known/openid-configuration";

struct Cached {
    token: String,
    kid: String,
    fresh_until_ms: u64,
}

/// Mints this node's tokens with its current signing key; cheap to clone. Until a key is set, it mints none.
#[derive(Clone)]
pub struct SenderTokens {
    issuer: Arc<str>,
    ttl: Duration,
    key: Arc<RwLock<Option<Arc<SigningKey>>>>,
    cache: Arc<Mutex<HashMap<(String, String), Cached>>>,
}

impl std::fmt::Debug for SenderTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderTokens").field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl SenderTokens {
    pub fn new(issuer: &str, ttl: Duration) -> SenderTokens {
        SenderTokens { issuer: issuer.trim_end_matches('/').into(), ttl, key: Arc::default(), cache: Arc::default() }
    }

    /// The `iss` of the tokens.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Signs with `key` from now on (`None`: mint nothing).
    pub fn set_signing_key(&self, key: Option<Arc<SigningKey>>) {
        *self.key.write().unwrap_or_else(std::sync::PoisonError::into_inner) = key;
    }

    /// The kid signing now.
    pub fn signing_kid(&self) -> Option<String> {
        self.key.read().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref().map(|k| k.kid().to_string())
    }

    /// A token for `subject` towards `audience` at `now_ms`: the cached one while it is fresh and of the current
    /// key, else a new one. `None` when no key signs yet.
    pub fn token(&self, subject: &str, audience: &str, now_ms: u64) -> Option<String> {
        let key = self.key.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()?;
        let mut cache = self.cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let cache_key = (subject.to_string(), audience.to_string());
        if let Some(cached) = cache.get(&cache_key)
            && cached.kid == key.kid()
            && now_ms < cached.fresh_until_ms
        {
            return Some(cached.token.clone());
        }
        let token = match key.sign(&claims(&self.issuer, subject, audience, now_ms / 1000, self.ttl)) {
            Ok(token) => token,
            Err(e) => {
                tracing::error!(error = %e, "cannot sign a sender token");
                return None;
            }
        };
        metrics::counter!("sluice_sender_tokens_minted_total").increment(1);
        if cache.len() >= MAX_CACHED_TOKENS {
            cache.clear();
        }
        let fresh_until_ms = now_ms.saturating_add(ms(self.ttl) / 2);
        cache.insert(cache_key, Cached { token: token.clone(), kid: key.kid().to_string(), fresh_until_ms });
        Some(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    fn timing() -> KeyTiming {
        KeyTiming {
            token_ttl: Duration::from_secs(600),
            rotation: Duration::from_secs(3600),
            publish_lead: Duration::from_secs(120),
            skew: Duration::from_secs(60),
        }
    }

    /// A key made at `created_s` and published `published_after_s` later (`None`: not published).
    fn key(kid: &str, created_s: u64, published_after_s: Option<u64>) -> OwnKey {
        OwnKey {
            kid: kid.into(),
            created_ms: created_s * S,
            published_ms: published_after_s.map(|p| (created_s + p) * S),
        }
    }

    #[test]
    fn a_node_without_keys_makes_one_and_signs_with_it_once_published() {
        let t = timing();
        assert_eq!(plan_keys(&[], 0, &t), KeyPlan { generate: true, ..Default::default() });
        let made = plan_keys(&[key("a", 10, None)], 10 * S, &t);
        assert_eq!(made, KeyPlan { publish: vec!["a".into()], ..Default::default() });
        // A first key signs at once: there is nothing older to sign with during its lead.
        let published = plan_keys(&[key("a", 10, Some(0))], 11 * S, &t);
        assert_eq!(published.signing.as_deref(), Some("a"));
        assert!(!published.generate && published.remove.is_empty());
    }

    #[test]
    fn rotation_publishes_ahead_signs_after_the_lead_and_removes_after_the_last_token() {
        let t = timing();
        // The old key is an hour old: make a new one.
        let due = plan_keys(&[key("a", 0, Some(0))], 3600 * S, &t);
        assert!(due.generate);
        assert_eq!(due.signing.as_deref(), Some("a"));
        // The new key is published but within its lead: the old one still signs.
        let keys = [key("a", 0, Some(0)), key("b", 3600, Some(0))];
        assert_eq!(plan_keys(&keys, 3601 * S, &t).signing.as_deref(), Some("a"));
        assert_eq!(plan_keys(&keys, (3600 + 119) * S, &t).signing.as_deref(), Some("a"));
        // Past the lead the new one signs; the old stays until its last token expired (+ skew).
        let switched = plan_keys(&keys, (3600 + 120) * S, &t);
        assert_eq!(switched.signing.as_deref(), Some("b"));
        assert!(switched.remove.is_empty());
        let retired_until = 3600 + 120 + 600 + 60;
        assert!(plan_keys(&keys, (retired_until - 1) * S, &t).remove.is_empty());
        assert_eq!(plan_keys(&keys, retired_until * S, &t).remove, vec!["a".to_string()]);
        // Never sooner than the old key's expiry would demand.
        assert!(t.expires_ms(0) >= retired_until * S);
    }

    #[test]
    fn the_lead_counts_from_the_publication_not_the_creation() {
        let t = timing();
        // b was made at 3600 s, but its publication only committed 100 s later: verifiers may first see it
        // then, so a keeps signing until 120 s after that.
        let keys = [key("a", 0, Some(0)), key("b", 3600, Some(100))];
        assert_eq!(plan_keys(&keys, (3600 + 121) * S, &t).signing.as_deref(), Some("a"));
        assert_eq!(plan_keys(&keys, (3600 + 219) * S, &t).signing.as_deref(), Some("a"));
        assert_eq!(plan_keys(&keys, (3600 + 220) * S, &t).signing.as_deref(), Some("b"));
        let retired_until = 3600 + 220 + 600 + 60;
        assert!(plan_keys(&keys, (retired_until - 1) * S, &t).remove.is_empty());
        assert_eq!(plan_keys(&keys, retired_until * S, &t).remove, vec!["a".to_string()]);
    }

    #[test]
    fn an_unpublished_key_never_signs_and_a_key_near_expiry_stops_signing() {
        let t = timing();
        let keys = [key("a", 0, Some(0)), key("b", 3600, None)];
        let plan = plan_keys(&keys, (3600 + 100) * S, &t);
        assert_eq!(plan.signing.as_deref(), Some("a"));
        assert_eq!(plan.publish, vec!["b".to_string()]);
        // A node that was stopped past its key's last signing instant signs with nothing until a new key is
        // published, and then with that one at once.
        let stale = [key("a", 0, Some(0))];
        let late = t.expires_ms(0) - 659 * S;
        let plan = plan_keys(&stale, late, &t);
        assert_eq!(plan.signing, None);
        assert!(plan.generate);
        let fresh = [key("a", 0, Some(0)), key("c", late / S, Some(0))];
        assert_eq!(plan_keys(&fresh, late + S, &t).signing.as_deref(), Some("c"));
        // An expired key found after a restart is not published again, only removed.
        let gone = plan_keys(&[key("a", 0, None)], t.expires_ms(0), &t);
        assert!(gone.publish.is_empty() && gone.remove == vec!["a".to_string()], "{gone:?}");
    }

    #[test]
    fn expired_keys_go_and_the_key_count_is_bounded() {
        let t = timing();
        let keys: Vec<OwnKey> = (0..12).map(|i| key(&format!("k{i:02}"), 100 + i, Some(0))).collect();
        let plan = plan_keys(&keys, 200 * S, &t);
        assert_eq!(plan.signing.as_deref(), Some("k11"));
        let kept = keys.len() - plan.remove.len();
        assert!(kept <= MAX_OWN_KEYS, "{plan:?}");
        assert!(!plan.remove.contains(plan.signing.as_ref().expect("a signer")));
        let long_gone = plan_keys(&[key("a", 0, Some(0)), key("b", 1, Some(0))], t.expires_ms(0) + S, &t);
        assert!(long_gone.remove.contains(&"a".to_string()), "{long_gone:?}");
    }

    #[test]
    fn timings_that_would_need_more_keys_than_a_node_keeps_are_refused() {
        assert!(timing().check().is_ok());
        assert!(KeyTiming::default().check().is_ok());
        let tight = KeyTiming { rotation: Duration::from_secs(60), publish_lead: Duration::from_secs(1), ..timing() };
        assert!(tight.check().is_err(), "600 s tokens with a key a minute");
        let lead_too_long = KeyTiming { publish_lead: Duration::from_secs(3600), ..timing() };
        assert!(lead_too_long.check().is_err());
        // Regression: flags near u64::MAX seconds overflowed the arithmetic, a panic at start-up.
        let huge = Duration::from_secs(u64::MAX / 2);
        for timing in [
            KeyTiming { rotation: huge, ..timing() },
            KeyTiming { skew: huge, ..timing() },
            KeyTiming { token_ttl: huge, rotation: huge, ..timing() },
        ] {
            assert!(timing.check().is_err(), "{timing:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the keys and the instant: the signing key is published and can sign a whole token; a removed
        /// key never signs; a key that signed a moment ago is not removed while its tokens may be valid.
        #[test]
        fn the_plan_never_strands_a_token(
            created in proptest::collection::vec((0u64..20_000, proptest::option::of(0u64..500)), 0..6),
            now_s in 1u64..30_000,
        ) {
            let t = timing();
            // Keys are made and published in the past (before the instant before `now`).
            let keys: Vec<OwnKey> = created
                .iter()
                .filter(|(c, p)| c + p.unwrap_or(0) < now_s)
                .enumerate()
                .map(|(i, (c, p))| key(&format!("k{i}"), *c, *p))
                .collect();
            let plan = plan_keys(&keys, now_s * S, &t);
            if let Some(signing) = &plan.signing {
                let k = keys.iter().find(|k| &k.kid == signing).expect("a known key");
                proptest::prop_assert!(k.published_ms.is_some());
                proptest::prop_assert!(now_s * S + 660 * S <= t.expires_ms(k.created_ms));
                proptest::prop_assert!(!plan.remove.contains(signing));
            }
            let before = plan_keys(&keys, (now_s - 1) * S, &t);
            if let Some(previous) = before.signing {
                let k = keys.iter().find(|k| k.kid == previous).expect("a known key");
                if now_s * S < t.expires_ms(k.created_ms) && keys.len() <= MAX_OWN_KEYS {
                    proptest::prop_assert!(!plan.remove.contains(&previous), "{plan:?} removed {previous}");
                }
            }
        }
    }

    #[test]
    fn tokens_are_cached_per_subject_and_audience_and_follow_the_key() {
        let tokens = SenderTokens::new("https://sluice.example/", Duration::from_secs(600));
        assert_eq!(tokens.issuer(), "https://sluice.example");
        assert_eq!(tokens.token("s", "a", 0), None);
        tokens.set_signing_key(Some(Arc::new(SigningKey::generate("k1").expect("key"))));
        let first = tokens.token("s", "a", 1_000_000).expect("token");
        assert_eq!(tokens.token("s", "a", 1_000_000 + 299_999), Some(first.clone()));
        assert_ne!(tokens.token("s", "b", 1_000_000), Some(first.clone()));
        // Half the lifetime gone: a new one.
        assert_ne!(tokens.token("s", "a", 1_000_000 + 300_000), Some(first.clone()));
        tokens.set_signing_key(Some(Arc::new(SigningKey::generate("k2").expect("key"))));
        let rotated = tokens.token("s", "a", 1_000_000 + 300_001).expect("token");
        let header_b64 = rotated.split('.').next().unwrap_or_default();
        let header: Value = serde_json::from_slice(
            &base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, header_b64).expect("base64"),
        )
        .expect("json");
        assert_eq!(header["kid"], "k2");
    }

    #[test]
    fn minted_tokens_verify_with_the_published_key() {
        let key = Arc::new(SigningKey::generate("k1").expect("key"));
        let tokens = SenderTokens::new("http://127.0.0.1:8080", Duration::from_secs(600));
        tokens.set_signing_key(Some(key.clone()));
        let now_ms = 1_700_000_000_000;
        let token = tokens.token("system:serviceaccount:ns:sluice-trigger-t", "aud-1", now_ms).expect("token");
        let keys = crate::jwt::parse_jwks(json!({"keys": [key.jwk()]}).to_string().as_bytes()).expect("jwks");
        let issuers = [crate::jwt::TrustedIssuer { issuer: "http://127.0.0.1:8080".into(), keys }];
        let claims = crate::jwt::verify(&token, &issuers, "aud-1", now_ms / 1000 + 10, 0).expect("verifies");
        assert_eq!(claims.subject, "system:serviceaccount:ns:sluice-trigger-t");
        assert_eq!(claims.expires_at_s, now_ms / 1000 + 600);
        assert!(crate::jwt::verify(&token, &issuers, "aud-2", now_ms / 1000, 0).is_err());
        let discovery = discovery_document("http://127.0.0.1:8080/");
        assert_eq!(discovery["jwks_uri"], "http://127.0.0.1:8080/.well-known/jwks.json");
        assert_eq!(discovery["issuer"], "http://127.0.0.1:8080");
    }
}
