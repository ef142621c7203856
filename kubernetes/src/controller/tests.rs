//! Scenarios in controller-rs's pattern: the real kube `Client` talks to a mock API server (`tower-test`)
//! that asserts each request's method, path and body and answers it; Sluice is an in-memory double that
//! journals what it is asked (no Kubernetes API server can run here; a real Sluice runs in the
//! cross-process tests).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use futures::future::BoxFuture;
use http::Method;
use kube::Resource;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{Context, Settings, backoff, error_policy, reconcile};
use crate::crd::{Broker, BrokerSpec, Trigger};
use crate::error::Error;
use crate::mock_api::{Handle, assert_no_request, mock_client, next_request, respond, respond_not_found};
use crate::reconcile::{BROKER_CLASS_ANNOTATION, FINALIZER};
use crate::sluice_api::{Refusal, SluiceApi};

/// Sluice, in memory: objects by `kind/namespace/name`, every call journalled.
#[derive(Default)]
struct FakeSluice {
    objects: Mutex<BTreeMap<String, Value>>,
    members: Mutex<Vec<u64>>,
    journal: Arc<Mutex<Vec<String>>>,
    unavailable: bool,
    /// What it derives for what it stores: Ready, unless this is set.
    not_ready: bool,
    /// The read after the next apply answers the object as it was before it (a node that has not applied the
    /// write yet).
    lags_after_next_apply: std::sync::atomic::AtomicBool,
    lags_once: std::sync::atomic::AtomicBool,
    before_last_apply: Mutex<Option<Value>>,
}

impl FakeSluice {
    fn note(&self, line: String) {
        if let Ok(mut journal) = self.journal.lock() {
            journal.push(line);
        }
    }

    fn object(&self, key: &str) -> Option<Value> {
        self.objects.lock().ok()?.get(key).cloned()
    }
}

fn unavailable() -> Error {
    Error::SluiceUnavailable { admin: "sluice-admin:9090".into(), reason: "connection refused".into() }
}

impl SluiceApi for FakeSluice {
    fn members(&self) -> BoxFuture<'_, Result<Vec<u64>, Error>> {
        Box::pin(async move { Ok(self.members.lock().map(|m| m.clone()).unwrap_or_default()) })
    }

    fn remove_member(&self, node_id: u64) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.note(format!("remove-member {node_id}"));
            if let Ok(mut members) = self.members.lock() {
                members.retain(|m| *m != node_id);
            }
            Ok(())
        })
    }

    fn apply<'a>(&'a self, object: &'a Value) -> BoxFuture<'a, Result<Result<(), Refusal>, Error>> {
        Box::pin(async move {
            if self.unavailable {
                return Err(unavailable());
            }
            let key = format!(
                "{}/{}/{}",
                object["kind"].as_str().unwrap_or_default(),
                object["metadata"]["namespace"].as_str().unwrap_or_default(),
                object["metadata"]["name"].as_str().unwrap_or_default()
            );
            self.note(format!("apply {key}"));
            // Admitted and merged as the node admits and merges an `ApplyResource` entry.
            let existing = self.object(&key);
            let object = sluice_controller::admission::admitted(object.clone(), existing.as_ref());
            if let Ok(mut before) = self.before_last_apply.lock() {
                *before = existing.clone();
            }
            if self.lags_after_next_apply.swap(false, std::sync::atomic::Ordering::SeqCst) {
                self.lags_once.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            let (mut stored, _) =
                sluice_controller::meta::merge_for_apply_keeping_owned(existing.as_ref(), object.clone(), "u", "t", 1);
            let ready = if self.not_ready { "False" } else { "True" };
            let mut conditions = vec![json!({"type": "Ready", "status": ready})];
            // As the node's status: a Broker or Channel takes events at its address whether or not it is Ready.
            if matches!(object["kind"].as_str(), Some("Broker" | "Channel" | "InMemoryChannel")) {
                conditions.push(json!({"type": "Addressable", "status": "True"}));
            }
            stored["status"] = json!({"conditions": conditions, "subscriberUri": object["spec"]["subscriber"]["uri"]});
            if let Ok(mut objects) = self.objects.lock() {
                objects.insert(key, stored);
            }
            Ok(Ok(()))
        })
    }

    fn get<'a>(
        &'a self,
        kind: &'a str,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Value>, Error>> {
        Box::pin(async move {
            if self.unavailable {
                return Err(unavailable());
            }
            if self.lags_once.swap(false, std::sync::atomic::Ordering::SeqCst) {
                return Ok(self.before_last_apply.lock().ok().and_then(|before| before.clone()));
            }
            Ok(self.object(&format!("{kind}/{namespace}/{name}")))
        })
    }

    fn delete<'a>(&'a self, kind: &'a str, namespace: &'a str, name: &'a str) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            if self.unavailable {
                return Err(unavailable());
            }
            let key = format!("{kind}/{namespace}/{name}");
            self.note(format!("delete {key}"));
            if let Ok(mut objects) = self.objects.lock() {
                objects.remove(&key);
            }
            Ok(())
        })
    }
}

fn context(sluice: Arc<FakeSluice>) -> (Arc<Context>, Handle) {
    let (client, handle) = mock_client();
    let reporter = Reporter { controller: "sluice-controller".into(), instance: Some("test".into()) };
    (Context::new(client, sluice, Settings::default(), reporter), handle)
}

fn broker(class: &str) -> Broker {
    let mut broker = Broker::new("b", BrokerSpec::default());
    broker.meta_mut().namespace = Some("default".into());
    broker.meta_mut().generation = Some(3);
    broker.meta_mut().annotations = Some([(BROKER_CLASS_ANNOTATION.to_string(), class.to_string())].into());
    broker
}

fn finalized<K: Resource>(mut object: K) -> K {
    object.meta_mut().finalizers = Some(vec![FINALIZER.into()]);
    object
}

fn trigger(subscriber: Value) -> Trigger {
    let mut trigger: Trigger = serde_json::from_value(json!({
        "apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
        "metadata": {"name": "t", "namespace": "default", "generation": 1, "finalizers": [FINALIZER]},
        "spec": {"broker": "b", "subscriber": subscriber}
    }))
    .expect("trigger");
    trigger.meta_mut().namespace = Some("default".into());
    trigger
}

/// Runs `reconcile` while `scenario` plays the API server; both must finish within 5 s.
async fn play<K, S>(object: K, ctx: Arc<Context>, scenario: S) -> Result<Action, Error>
where
    K: super::Pushed,
    S: std::future::Future<Output = ()> + Send + 'static,
{
    let server = tokio::spawn(scenario);
    let result = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(object), ctx))
        .await
        .expect("reconcile finished within 5 s");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("the scenario finished").expect("scenario");
    result
}

/// Regression: every resync applied the object again, a Raft write each time although nothing changed (objects
/// not yet ready are resynced every few seconds).
#[tokio::test]
async fn a_resync_of_a_not_ready_object_sluice_has_unchanged_reads_it_and_writes_nothing() {
    let sluice = Arc::new(FakeSluice { not_ready: true, ..Default::default() });
    let (ctx, mut handle) = context(sluice.clone());
    let object = finalized(broker("Sluice"));
    let echo = serde_json::to_value(&object).expect("json");
    let scenario = async move {
        for _ in 0..2 {
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::PATCH, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/b/status?")
            );
            respond(send, &echo);
        }
        let (method, _, body, send) = next_request(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(body["status"]["observedGeneration"], 4, "the changed object's status");
        respond(send, &echo);
    };
    let server = tokio::spawn(scenario);
    for _ in 0..2 {
        reconcile(Arc::new(object.clone()), ctx.clone()).await.expect("reconcile");
    }
    assert_eq!(*sluice.journal.lock().expect("journal"), vec!["apply Broker/default/b".to_string()]);
    // A change (here an annotation) is applied.
    let mut changed = object.clone();
    changed.meta_mut().generation = Some(4);
    kube::ResourceExt::annotations_mut(&mut changed).insert("team".into(), "payments".into());
    reconcile(Arc::new(changed), ctx.clone()).await.expect("reconcile");
    assert_eq!(
        *sluice.journal.lock().expect("journal"),
        vec!["apply Broker/default/b".to_string(), "apply Broker/default/b".to_string()]
    );
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("the scenario finished").expect("scenario");
}

#[tokio::test]
async fn a_sluice_class_broker_gets_a_finalizer_first() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let object = broker("Sluice");
    let echo = serde_json::to_value(&object).expect("json");
    let action = play(object, ctx, async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(path, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/b?");
        assert_eq!(body[1], json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}));
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
    assert_eq!(action, Action::await_change());
    assert!(sluice.journal.lock().expect("journal").is_empty(), "nothing reaches Sluice before the finalizer");
}

/// Regression: Knative's InMemoryChannel CRD was installed but no controller watched it, so an IMC never
/// reached Sluice and its Subscriptions stayed `ChannelNotFound`.
/// Written as Knative's examples write it: no `spec` (the CRDs required one, and the watch could not read it).
#[tokio::test]
async fn an_in_memory_channel_without_a_spec_is_pushed_and_gets_its_address() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let mut channel: crate::crd::InMemoryChannel = serde_json::from_value(json!({
        "apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
        "metadata": {"name": "c", "namespace": "default", "generation": 1, "finalizers": [FINALIZER]}
    }))
    .expect("channel");
    channel.meta_mut().namespace = Some("default".into());
    let echo = serde_json::to_value(&channel).expect("json");
    play(channel, ctx, async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(path, "/apis/messaging.knative.dev/v1/namespaces/default/inmemorychannels/c/status?");
        assert_eq!(
            body["status"]["address"]["url"],
            "http://sluice-ingress.sluice-system.svc.cluster.local/channels/default/c"
        );
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
    assert_eq!(*sluice.journal.lock().expect("journal"), vec!["apply InMemoryChannel/default/c".to_string()]);
}

#[tokio::test]
async fn a_sluice_class_broker_gets_its_status_and_address() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let object = finalized(broker("Sluice"));
    let echo = serde_json::to_value(&object).expect("json");
    let action = play(object, ctx, async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(method, Method::PATCH);
        assert_eq!(path, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/b/status?");
        let status = &body["status"];
        assert_eq!(status["observedGeneration"], 3);
        assert_eq!(status["address"]["url"], "http://sluice-ingress.sluice-system.svc.cluster.local/default/b");
        assert_eq!(status["conditions"][0], json!({"type": "Ready", "status": "True"}));
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
    assert_eq!(action, Action::requeue(Settings::default().resync_ready));
    assert_eq!(*sluice.journal.lock().expect("journal"), vec!["apply Broker/default/b".to_string()]);
    let pushed = sluice.object("Broker/default/b").expect("pushed");
    assert_eq!(pushed["metadata"]["annotations"][BROKER_CLASS_ANNOTATION], "Sluice");
    assert!(pushed["metadata"].get("finalizers").is_none(), "{pushed}");
}

/// Regression: the status read back from a node that had not yet applied the push (a write forwarded to the
/// leader returns once the leader applied it) was written with the new generation and the old spec's conditions.
/// It is left as it is, and the object read again shortly.
#[tokio::test]
async fn a_status_read_before_the_node_applied_the_push_is_not_written() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, _handle) = context(sluice.clone());
    // Sluice has the Broker's earlier spec; the new generation changes it.
    let earlier = finalized(broker("Sluice"));
    sluice
        .apply(&super::desired_sluice_object(&serde_json::to_value(&earlier).expect("json")))
        .await
        .expect("up")
        .expect("taken");
    let mut changed = finalized(broker("Sluice"));
    changed.meta_mut().generation = Some(4);
    changed.spec.0.delivery = serde_json::from_value(json!({"retry": 3})).expect("delivery");
    sluice.lags_after_next_apply.store(true, std::sync::atomic::Ordering::SeqCst);
    // No request reaches the API server: the status is not patched (the mock answers none, and the reconcile
    // would wait past `play`'s 5 s).
    let action = play(changed, ctx, async {}).await.expect("reconcile");
    assert_eq!(action, Action::requeue(super::STALE_READ_AGAIN));
    assert_eq!(sluice.object("Broker/default/b").expect("pushed")["spec"]["delivery"]["retry"], 3);
}

/// Regression: the address was published only while the Broker was Ready, so a Broker made not Ready by an
/// EventPolicy (which any policy is while sender identity is off) lost its address, and the sources resolving
/// it stopped sending, although it still took its authorized senders' events. Knative keeps the address while
/// the Broker is `Addressable`.
#[tokio::test]
async fn a_broker_that_is_not_ready_but_takes_events_keeps_its_address() {
    let sluice = Arc::new(FakeSluice { not_ready: true, ..Default::default() });
    let (ctx, mut handle) = context(sluice.clone());
    let object = finalized(broker("Sluice"));
    let echo = serde_json::to_value(&object).expect("json");
    play(object, ctx, async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/b/status?")
        );
        assert_eq!(body["status"]["conditions"][0], json!({"type": "Ready", "status": "False"}));
        assert_eq!(body["status"]["address"]["url"], "http://sluice-ingress.sluice-system.svc.cluster.local/default/b");
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
}

#[tokio::test]
async fn an_mt_class_broker_is_left_alone() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    // Bounded: a reconcile that asked the API server anything would wait for an answer that never comes.
    let action = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(broker("MTChannelBasedBroker")), ctx))
        .await
        .expect("the reconcile finished without asking the API server")
        .expect("reconcile");
    assert_eq!(action, Action::await_change());
    // Radio silence: no request at all (no finalizer, no status), and Sluice is not told.
    assert_no_request(&mut handle).await;
    assert!(sluice.journal.lock().expect("journal").is_empty());
}

#[tokio::test]
async fn a_trigger_on_a_sluice_broker_reaches_sluice_with_its_core_service_resolved_and_reports_ready() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let object = trigger(json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "sink"}}));
    let echo = serde_json::to_value(&object).expect("json");
    let the_broker = serde_json::to_value(broker("Sluice")).expect("json");
    let action = play(object, ctx, async move {
        let (method, path, _, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::GET, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/b")
        );
        respond(send, &the_broker);
        let (method, path, _, send) = next_request(&mut handle).await;
        assert_eq!((method, path.as_str()), (Method::GET, "/api/v1/namespaces/default/services/sink"));
        respond(
            send,
            &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sink", "namespace": "default"},
                              "spec": {"ports": [{"port": 8080}]}}),
        );
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/eventing.knative.dev/v1/namespaces/default/triggers/t/status?")
        );
        assert_eq!(body["status"]["conditions"][0]["status"], "True");
        assert_eq!(body["status"]["subscriberUri"], "http://sink.default.svc.cluster.local:8080");
        assert!(body["status"].get("address").is_none());
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
    assert_eq!(action, Action::requeue(Settings::default().resync_ready));
    let pushed = sluice.object("Trigger/default/t").expect("pushed");
    assert_eq!(pushed["spec"]["subscriber"], json!({"uri": "http://sink.default.svc.cluster.local:8080"}));
}

/// A Trigger reconciled, paused through the admin API (in Sluice's copy), and reconciled again (a resync): the
/// journal of what Sluice was asked, and Sluice's copy after.
async fn resync_after_an_admin_pause(sluice: Arc<FakeSluice>) -> (Vec<String>, Value) {
    let (ctx, mut handle) = context(sluice.clone());
    let object = trigger(json!({"uri": "http://sink.example"}));
    let echo = serde_json::to_value(&object).expect("json");
    let the_broker = serde_json::to_value(broker("Sluice")).expect("json");
    let scenario = async move {
        for _ in 0..2 {
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::GET, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/b")
            );
            respond(send, &the_broker);
            let (method, _, _, send) = next_request(&mut handle).await;
            assert_eq!(method, Method::PATCH);
            respond(send, &echo);
        }
    };
    let server = tokio::spawn(scenario);
    reconcile(Arc::new(object.clone()), ctx.clone()).await.expect("reconcile");
    let key = "Trigger/default/t";
    let stored = sluice.object(key).expect("pushed");
    let (paused, _) = sluice_controller::meta::set_admin_annotation(&stored, "sluice.dev/paused", Some("true"), 2);
    sluice.objects.lock().expect("objects").insert(key.into(), paused);
    reconcile(Arc::new(object), ctx.clone()).await.expect("reconcile");
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("the scenario finished").expect("scenario");
    let journal = sluice.journal.lock().expect("journal").clone();
    (journal, sluice.object(key).expect("stored"))
}

/// A Trigger paused through the admin API (`sluice trigger pause`) was resumed by the next resync, which applied
/// the Kubernetes object, without the annotation, over it. A Ready object is applied at its resync, and the
/// pause stays: the whole loop with the node's merge (the merge itself is tested in `controller::meta` and the
/// state machine; `t72` checks it on real nodes).
#[tokio::test]
async fn a_resync_keeps_a_pause_set_through_the_admin_api() {
    let (journal, stored) = resync_after_an_admin_pause(Arc::new(FakeSluice::default())).await;
    let apply = "apply Trigger/default/t".to_string();
    assert_eq!(journal, vec![apply.clone(), apply]);
    assert_eq!(stored["metadata"]["annotations"]["sluice.dev/paused"], "true", "{stored}");
}

/// A not-Ready object whose Sluice copy differs from Kubernetes' only by a pause set through the admin API is
/// read at its resync, not applied again (an apply is a Raft write; not-Ready objects resync every few seconds).
#[tokio::test]
async fn a_resync_of_a_paused_not_ready_trigger_writes_nothing() {
    let sluice = Arc::new(FakeSluice { not_ready: true, ..Default::default() });
    let (journal, stored) = resync_after_an_admin_pause(sluice).await;
    assert_eq!(journal, vec!["apply Trigger/default/t".to_string()], "one apply, then a read");
    assert_eq!(stored["metadata"]["annotations"]["sluice.dev/paused"], "true", "{stored}");
}

#[tokio::test]
async fn a_trigger_whose_core_service_is_missing_says_so_and_is_not_pushed() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let object = trigger(json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": "gone"}}));
    let echo = serde_json::to_value(&object).expect("json");
    let the_broker = serde_json::to_value(broker("Sluice")).expect("json");
    play(object, ctx, async move {
        let (_, _, _, send) = next_request(&mut handle).await;
        respond(send, &the_broker);
        let (_, path, _, send) = next_request(&mut handle).await;
        assert_eq!(path, "/api/v1/namespaces/default/services/gone");
        respond_not_found(send);
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/eventing.knative.dev/v1/namespaces/default/triggers/t/status?")
        );
        assert_eq!(body["status"]["conditions"][0]["reason"], "DestinationNotResolved");
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
    assert!(sluice.journal.lock().expect("journal").is_empty());
}

/// Regression: an empty name in a reference was looked up; the client refused it before any request, and that
/// failure was retried with backoff for good, the object never told why.
#[tokio::test]
async fn a_reference_without_a_name_is_refused_in_the_status_not_retried() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let object = trigger(json!({"ref": {"apiVersion": "v1", "kind": "Service", "name": ""}}));
    let echo = serde_json::to_value(&object).expect("json");
    let the_broker = serde_json::to_value(broker("Sluice")).expect("json");
    let action = play(object, ctx, async move {
        let (_, _, _, send) = next_request(&mut handle).await;
        respond(send, &the_broker);
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/eventing.knative.dev/v1/namespaces/default/triggers/t/status?"),
            "no lookup of a Service without a name"
        );
        assert_eq!(body["status"]["conditions"][0]["reason"], "DestinationNotResolved");
        let message = body["status"]["conditions"][0]["message"].as_str().unwrap_or_default().to_string();
        assert!(message.contains("/spec/subscriber.ref.name"), "{message}");
        respond(send, &echo);
    })
    .await;
    assert!(action.is_ok(), "a refusal, not an error to retry: {action:?}");
    assert!(sluice.journal.lock().expect("journal").is_empty());

    // A Trigger naming no Broker at all: no lookup of an empty name; Sluice has the last word on it.
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let mut object = trigger(json!({"uri": "http://example.com/"}));
    object.spec.0.broker = String::new();
    let echo = serde_json::to_value(&object).expect("json");
    let action = play(object, ctx, async move {
        let (method, path, _, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/eventing.knative.dev/v1/namespaces/default/triggers/t/status?")
        );
        respond(send, &echo);
    })
    .await;
    assert!(action.is_ok(), "{action:?}");
    assert_eq!(sluice.journal.lock().expect("journal").as_slice(), ["apply Trigger/default/t"]);
}

/// A `brokerRef` to another namespace is judged by the class of the Broker there (Sluice refuses such a
/// Trigger, but whether it is Sluice's to refuse is that Broker's class).
#[tokio::test]
async fn a_trigger_s_broker_ref_is_looked_up_in_its_namespace() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, handle) = context(sluice.clone());
    let mut object = trigger(json!({"uri": "http://example.com/"}));
    object.meta_mut().finalizers = None;
    object.spec.0.broker = String::new();
    object.spec.0.broker_ref =
        Some(serde_json::from_value(json!({"kind": "Broker", "name": "b", "namespace": "other"})).expect("reference"));
    left_alone_after_an_mt_broker_lookup(object, ctx, handle, "other", &sluice).await;
}

/// Plays an API server that answers the lookup of Broker `b` in `namespace` with an MT-class Broker, then
/// expects no request at all: the object is left alone, and Sluice is told nothing.
async fn left_alone_after_an_mt_broker_lookup<K: super::Pushed>(
    object: K,
    ctx: Arc<Context>,
    mut handle: Handle,
    namespace: &'static str,
    sluice: &FakeSluice,
) {
    let mt_broker = serde_json::to_value(broker("MTChannelBasedBroker")).expect("json");
    let action = play(object, ctx, async move {
        let (method, path, _, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path),
            (Method::GET, format!("/apis/eventing.knative.dev/v1/namespaces/{namespace}/brokers/b"))
        );
        respond(send, &mt_broker);
        assert_no_request(&mut handle).await;
    })
    .await
    .expect("reconcile");
    assert_eq!(action, Action::await_change());
    assert!(sluice.journal.lock().expect("journal").is_empty(), "Sluice is told nothing");
}

#[tokio::test]
async fn a_trigger_on_an_mt_class_broker_is_left_alone() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, handle) = context(sluice.clone());
    let mut object = trigger(json!({"uri": "http://example.com/"}));
    object.meta_mut().finalizers = None;
    left_alone_after_an_mt_broker_lookup(object, ctx, handle, "default", &sluice).await;
}

#[tokio::test]
async fn deleting_removes_from_sluice_before_the_finalizer_is_released() {
    let sluice = Arc::new(FakeSluice::default());
    let journal = sluice.journal.clone();
    let (ctx, mut handle) = context(sluice.clone());
    let mut object = finalized(broker("Sluice"));
    object.meta_mut().deletion_timestamp =
        Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    let echo = serde_json::to_value(&object).expect("json");
    play(object, ctx, async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/eventing.knative.dev/v1/namespaces/default/brokers/b?")
        );
        assert_eq!(body[1], json!({"op": "remove", "path": "/metadata/finalizers/0"}));
        // By the time the finalizer is released, Sluice has forgotten the Broker.
        assert_eq!(*journal.lock().expect("journal"), vec!["delete Broker/default/b".to_string()]);
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
}

#[tokio::test]
async fn an_unreachable_sluice_produces_an_event_and_a_retry_with_backoff() {
    let sluice = Arc::new(FakeSluice { unavailable: true, ..Default::default() });
    let (ctx, mut handle) = context(sluice);
    let object = finalized(broker("Sluice"));
    let result = play(object.clone(), ctx.clone(), async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!((method, path.as_str()), (Method::POST, "/apis/events.k8s.io/v1/namespaces/default/events?"));
        assert_eq!(body["type"], "Warning");
        assert_eq!(body["reason"], "SluiceUnavailable");
        assert_eq!(body["regarding"]["name"], "b");
        respond(send, &body);
    })
    .await;
    let error = result.expect_err("Sluice is unreachable");
    assert_eq!(error.metric_label(), "SluiceUnavailable");
    let object = Arc::new(object);
    assert_eq!(error_policy(object.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(1)));
    assert_eq!(error_policy(object.clone(), &error, ctx.clone()), Action::requeue(Duration::from_secs(2)));
    assert_eq!(error_policy(object, &error, ctx), Action::requeue(Duration::from_secs(4)));
}

#[tokio::test]
async fn a_knative_service_is_pushed_with_its_template_and_reports_sluices_status() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let object: crate::crd::KnativeService = serde_json::from_value(json!({
        "apiVersion": "serving.knative.dev/v1", "kind": "Service",
        "metadata": {"name": "hello", "namespace": "default", "generation": 2, "finalizers": [FINALIZER]},
        "spec": {"template": {"spec": {"containers": [{"image": "example/hello", "command": ["/hello"]}]}}}
    }))
    .expect("ksvc");
    let echo = serde_json::to_value(&object).expect("json");
    play(object, ctx, async move {
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/serving.knative.dev/v1/namespaces/default/services/hello/status?")
        );
        assert_eq!(body["status"]["observedGeneration"], 2);
        assert_eq!(body["status"]["conditions"][0]["status"], "True");
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
    let pushed = sluice.object("Service/default/hello").expect("pushed");
    assert_eq!(pushed["spec"]["template"]["spec"]["containers"][0]["command"], json!(["/hello"]));
}

#[tokio::test]
async fn members_a_scaled_down_statefulset_left_behind_are_removed_once_their_pods_are_gone() {
    let sluice = Arc::new(FakeSluice { members: Mutex::new(vec![1, 2, 3, 4, 5]), ..Default::default() });
    let (ctx, mut handle) = context(sluice.clone());
    let server = tokio::spawn(async move {
        let (method, path, _, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::GET, "/apis/apps/v1/namespaces/sluice-system/statefulsets/sluice")
        );
        let set = json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
                         "metadata": {"name": "sluice", "namespace": "sluice-system"},
                         "spec": {"replicas": 3, "serviceName": "sluice-peers",
                                  "selector": {"matchLabels": {"app.kubernetes.io/name": "sluice"}},
                                  "template": {}}});
        let pods = |names: &[&str]| {
            let items: Vec<Value> = names
                .iter()
                .map(|name| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "sluice-system"}}))
                .collect();
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
        };
        respond(send, &set);
        // Pod sluice-4 (node 5) is still there (stopping or about to): its own preStop leaves; sluice-3 died
        // without it.
        let (method, path, _, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::GET, "/api/v1/namespaces/sluice-system/pods?&labelSelector=app.kubernetes.io%2Fname%3Dsluice")
        );
        respond(send, &pods(&["sluice-0", "sluice-1", "sluice-2", "sluice-4", "other-3"]));
        // Next round: sluice-4's node was lost: the pod stays Terminating, long past its grace period.
        let (_, path, _, send) = next_request(&mut handle).await;
        assert_eq!(path, "/apis/apps/v1/namespaces/sluice-system/statefulsets/sluice");
        respond(send, &set);
        let (_, _, _, send) = next_request(&mut handle).await;
        let mut listed = pods(&["sluice-0", "sluice-1", "sluice-2", "sluice-4"]);
        listed["items"][3]["metadata"]["deletionTimestamp"] = json!("2020-01-01T00:00:00Z");
        listed["items"][3]["metadata"]["deletionGracePeriodSeconds"] = json!(60);
        respond(send, &listed);
        let (_, path, _, send) = next_request(&mut handle).await;
        assert_eq!(path, "/apis/apps/v1/namespaces/sluice-system/statefulsets/sluice");
        respond_not_found(send);
    });
    assert_eq!(super::tidy_members(&ctx, "sluice-system", "sluice").await.expect("tidy"), vec![4]);
    assert_eq!(super::tidy_members(&ctx, "sluice-system", "sluice").await.expect("tidy"), vec![5]);
    assert_eq!(*sluice.members.lock().expect("members"), vec![1, 2, 3]);
    // No StatefulSet (Sluice not run by one): nothing is removed.
    assert_eq!(super::tidy_members(&ctx, "sluice-system", "sluice").await.expect("tidy"), Vec::<u64>::new());
    assert_eq!(
        *sluice.journal.lock().expect("journal"),
        vec!["remove-member 4".to_string(), "remove-member 5".to_string()]
    );
    server.await.expect("scenario");
}

#[test]
fn a_not_ready_object_is_read_again_less_and_less_often_up_to_a_minute() {
    let first = Duration::from_secs(2);
    let waits: Vec<u64> =
        [1, 2, 3, 4, 5, 6, 7, 40].iter().map(|&n| super::not_ready_requeue(first, n).as_secs()).collect();
    assert_eq!(waits, [2, 4, 8, 16, 32, 60, 60, 60]);
    assert_eq!(super::not_ready_requeue(first, 0), first);
}

#[test]
fn backoff_doubles_to_five_minutes() {
    let waits: Vec<u64> = [1, 2, 3, 4, 9, 10, 64, u32::MAX].iter().map(|f| backoff(*f).as_secs()).collect();
    assert_eq!(waits, vec![1, 2, 4, 8, 256, 300, 300, 300]);
    assert_eq!(backoff(0).as_secs(), 1);
}

fn event_policy(namespace: &str) -> crate::crd::EventPolicy {
    serde_json::from_value(json!({
        "apiVersion": "eventing.knative.dev/v1alpha1", "kind": "EventPolicy",
        "metadata": {"name": "p", "namespace": namespace, "generation": 1, "finalizers": [FINALIZER]},
        "spec": {"to": [{"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "b"}}]}
    }))
    .expect("policy")
}

/// Regression: a change to an EventPolicy left its Brokers' status on Kubernetes as it was until their next
/// resync (up to 5 min), although `EventPoliciesReady` follows from the policies. A policy that changes in
/// Sluice now names its namespace to the target kinds' controllers; one whose push changes nothing does not.
#[tokio::test]
async fn a_policy_that_changes_in_sluice_wakes_its_namespace_and_an_unchanged_one_does_not() {
    let sluice = Arc::new(FakeSluice::default());
    let (ctx, mut handle) = context(sluice.clone());
    let mut changes = ctx.policy_changes.subscribe();
    let policy = event_policy("team-a");
    let echo = serde_json::to_value(&policy).expect("json");
    let scenario = async move {
        for _ in 0..2 {
            let (method, path, _, send) = next_request(&mut handle).await;
            assert_eq!(
                (method, path.as_str()),
                (Method::PATCH, "/apis/eventing.knative.dev/v1alpha1/namespaces/team-a/eventpolicies/p/status?")
            );
            respond(send, &echo);
        }
    };
    let server = tokio::spawn(scenario);
    reconcile(Arc::new(policy.clone()), ctx.clone()).await.expect("first push");
    assert_eq!(changes.try_recv().ok().as_deref(), Some("team-a"));
    // A resync: applied again (Ready), but nothing differs in Sluice.
    reconcile(Arc::new(policy), ctx.clone()).await.expect("resync");
    assert!(changes.try_recv().is_err(), "an unchanged policy wakes nobody");
    assert_eq!(sluice.journal.lock().expect("journal").len(), 2);
    tokio::time::timeout(Duration::from_secs(5), server).await.expect("the scenario finished").expect("scenario");
}

/// A policy change reconciles every Broker of its namespace, and only those; a controller that fell behind by
/// more than the queue holds reconciles every Broker once rather than miss one.
#[tokio::test]
async fn a_policy_change_names_the_objects_of_its_namespace_and_every_object_after_missed_changes() {
    let (store, mut writer) = kube::runtime::reflector::store::<Broker>();
    for (namespace, name) in [("team-a", "b1"), ("team-a", "b2"), ("team-b", "b3")] {
        let mut broker = Broker::new(name, BrokerSpec::default());
        broker.meta_mut().namespace = Some(namespace.into());
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(broker));
    }
    let names = |refs: Vec<ObjectRef<Broker>>| {
        let mut names: Vec<String> = refs.into_iter().map(|r| r.name).collect();
        names.sort();
        names
    };
    let (sender, receiver) = broadcast::channel(super::POLICY_CHANGES_QUEUED);
    let mut targets = Box::pin(super::policy_targets(receiver, store.clone()));
    sender.send("team-a".into()).expect("send");
    let first: Vec<_> = (&mut targets).take(2).collect().await;
    assert_eq!(names(first), ["b1", "b2"]);
    sender.send("team-b".into()).expect("send");
    assert_eq!(targets.next().await.map(|r| r.name).as_deref(), Some("b3"));

    let (sender, receiver) = broadcast::channel(2);
    let mut targets = Box::pin(super::policy_targets(receiver, store));
    for _ in 0..3 {
        sender.send("team-b".into()).expect("send");
    }
    drop(sender);
    // The first change was missed: every Broker, then the two changes still queued, then the end.
    let all: Vec<_> = (&mut targets).take(3).collect().await;
    assert_eq!(names(all), ["b1", "b2", "b3"]);
    let rest: Vec<_> = targets.collect().await;
    assert_eq!(names(rest), ["b3", "b3"]);
}

fn context_beside_knative_eventing(sluice: Arc<FakeSluice>) -> (Arc<Context>, Handle) {
    let (client, handle) = mock_client();
    let reporter = Reporter { controller: "sluice-controller".into(), instance: Some("test".into()) };
    let settings = Settings { beside_knative_eventing: true, ..Settings::default() };
    (Context::new(client, sluice, settings, reporter), handle)
}

/// Regression: Channels, InMemoryChannels, Subscriptions and EventPolicies were all claimed, those of Knative
/// Eventing's own brokers included (an MT Broker's InMemoryChannel and its Subscriptions got Sluice's
/// finalizer and status, and the two controllers overwrote each other's). Beside Knative Eventing they are
/// left to it, and a policy is taken only when it may apply to a Sluice Broker.
#[tokio::test]
async fn beside_knative_eventing_its_channels_subscriptions_and_policies_are_left_alone() {
    let sluice = Arc::new(FakeSluice::default());
    let unfinalized = |value: Value| {
        let mut value = value;
        value["metadata"]["finalizers"] = json!([]);
        value
    };
    let channel: crate::crd::InMemoryChannel = serde_json::from_value(unfinalized(json!({
        "apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel",
        "metadata": {"name": "b-kne-trigger", "namespace": "default", "generation": 1}
    })))
    .expect("channel");
    let subscription: crate::crd::Subscription = serde_json::from_value(unfinalized(json!({
        "apiVersion": "messaging.knative.dev/v1", "kind": "Subscription",
        "metadata": {"name": "s", "namespace": "default", "generation": 1},
        "spec": {"channel": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "b-kne-trigger"},
                 "subscriber": {"uri": "http://example.com/"}}
    })))
    .expect("subscription");
    let (ctx, mut handle) = context_beside_knative_eventing(sluice.clone());
    assert_eq!(reconcile(Arc::new(channel), ctx.clone()).await.expect("reconcile"), Action::await_change());
    assert_eq!(reconcile(Arc::new(subscription), ctx).await.expect("reconcile"), Action::await_change());
    assert_no_request(&mut handle).await;

    // A policy naming an MT Broker: its class is looked up, and it is Knative's.
    let mut policy = event_policy("default");
    policy.meta_mut().finalizers = None;
    let (ctx, handle) = context_beside_knative_eventing(sluice.clone());
    left_alone_after_an_mt_broker_lookup(policy, ctx, handle, "default", &sluice).await;

    // Naming a Sluice Broker, it is Sluice's: enforced there (the finalizer first, as for any object).
    let mut policy = event_policy("default");
    policy.meta_mut().finalizers = None;
    let (ctx, mut handle) = context_beside_knative_eventing(sluice.clone());
    let sluice_broker = serde_json::to_value(broker("Sluice")).expect("json");
    let echo = serde_json::to_value(&policy).expect("json");
    play(policy, ctx, async move {
        let (_, _, _, send) = next_request(&mut handle).await;
        respond(send, &sluice_broker);
        let (method, path, body, send) = next_request(&mut handle).await;
        assert_eq!(
            (method, path.as_str()),
            (Method::PATCH, "/apis/eventing.knative.dev/v1alpha1/namespaces/default/eventpolicies/p?")
        );
        assert_eq!(body[1], json!({"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}));
        respond(send, &echo);
    })
    .await
    .expect("reconcile");
}

#[test]
fn a_policy_may_apply_to_a_sluice_broker_unless_it_names_only_other_targets() {
    use super::{PolicyTargets, policy_brokers};
    let policy = |to: Value| json!({"spec": {"to": to}});
    let broker_ref =
        |name: &str| json!({"ref": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": name}});
    let channel_ref =
        json!({"ref": {"apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"}});
    let selector =
        json!({"selector": {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "matchLabels": {"a": "b"}}});
    assert_eq!(policy_brokers(&json!({"spec": {}})), PolicyTargets::Any, "namespace-wide");
    assert_eq!(policy_brokers(&policy(json!([selector, channel_ref]))), PolicyTargets::Any, "a selector");
    assert_eq!(policy_brokers(&policy(json!([channel_ref]))), PolicyTargets::Brokers(vec![]), "channels only");
    assert_eq!(
        policy_brokers(&policy(json!([broker_ref("a"), channel_ref, broker_ref("b")]))),
        PolicyTargets::Brokers(vec!["a".into(), "b".into()])
    );
}
