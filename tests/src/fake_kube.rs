//! A Kubernetes API server in the test, for what the mock-API scenarios cannot show: the real kube client and
//! `Controller` (inside the real `sluice kube-controller` binary) running their whole loop over HTTP. It keeps
//! objects in memory and speaks the protocol the controller uses, for any kind: list (with a
//! resourceVersion), watch (newline-delimited events from a resourceVersion on, history included so nothing
//! between list and watch is missed), get, create, replace (with the resourceVersion compared), merge/JSON/apply
//! patches of an object or its `status`, and delete with finalizers (a deletionTimestamp until they are gone).
//! Not an API server: no admission, no validation against schemas, no authentication, no field managers.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context as TaskContext, Poll};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc};

/// One change, as a watch sends it.
#[derive(Clone, Debug)]
struct Change {
    resource_version: u64,
    collection: String,
    namespace: String,
    event: Value,
}

#[derive(Default)]
struct Store {
    resource_version: u64,
    /// collection (`GROUP/VERSION/PLURAL`, `core/v1/PLURAL`) → (namespace, name) → object.
    objects: BTreeMap<String, BTreeMap<(String, String), Value>>,
    history: Vec<Change>,
    requests: Vec<String>,
}

struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Change>,
}

impl Shared {
    fn store(&self) -> std::sync::MutexGuard<'_, Store> {
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running fake API server.
pub struct FakeKube {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeKube {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a request points.
struct Target {
    collection: String,
    api_version: String,
    namespace: Option<String>,
    name: Option<String>,
    subresource: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("core", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(namespace.to_string()), rest),
        rest => (None, rest),
    };
    let (plural, name, subresource) = match rest {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return None,
    };
    let api_version = if group == "core" { version.to_string() } else { format!("{group}/{version}") };
    Some(Target { collection: format!("{group}/{version}/{plural}"), api_version, namespace, name, subresource })
}

fn query_value(query: &str, key: &str) -> Option<String> {
    query.split('&').find_map(|pair| pair.strip_prefix(&format!("{key}=")).map(percent_decode))
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = || std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex()) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether an object's labels match a selector of `key=value` (or `key==value`) terms, comma-separated (the
/// equality-based selectors; set-based ones are not supported and match nothing).
pub fn labels_match(object: &Value, selector: &str) -> bool {
    selector.split(',').filter(|term| !term.is_empty()).all(|term| {
        let (key, value) = match term.split_once("==").or_else(|| term.split_once('=')) {
            Some(pair) => pair,
            None => return false,
        };
        object["metadata"]["labels"][key.trim()].as_str() == Some(value.trim())
    })
}

fn status_body(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": reason,
           "message": message, "code": code})
}

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn respond(code: u16, body: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())).boxed());
    *response.status_mut() = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    response
}

/// A body fed from a channel: the watch stream.
struct ChannelBody(mpsc::Receiver<Bytes>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

impl FakeKube {
    pub async fn start() -> Result<FakeKube> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (changes, _) = broadcast::channel(4096);
        let shared = Arc::new(Shared { store: Mutex::default(), changes });
        let serving = shared.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(handle(&shared, request).await) }
                    });
                    let _ =
                        auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(stream), service).await;
                });
            }
        });
        Ok(FakeKube { addr, shared, task })
    }

    /// A kubeconfig that points at this server (plain HTTP, no credentials).
    pub fn write_kubeconfig(&self, dir: &Path) -> Result<PathBuf> {
        let path = dir.join("kubeconfig");
        let config = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: http://{}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             users:\n- name: fake\n  user: {{}}\n",
            self.addr
        );
        std::fs::write(&path, config)?;
        Ok(path)
    }

    /// Creates an object as `kubectl create` would (`collection`: `eventing.knative.dev/v1/brokers`).
    pub fn create(&self, collection: &str, object: Value) -> Result<Value> {
        let namespace = object["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
        create(&self.shared, collection, &namespace, object).map_err(|(code, e)| anyhow::anyhow!("{code}: {e}"))
    }

    pub fn get(&self, collection: &str, namespace: &str, name: &str) -> Option<Value> {
        self.shared.store().objects.get(collection)?.get(&(namespace.to_string(), name.to_string())).cloned()
    }

    /// Changes an object as `kubectl edit` would (`change` gets the stored object), as a MODIFIED event.
    pub fn update(
        &self,
        collection: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Option<Value> {
        let before = self.get(collection, namespace, name)?;
        let mut after = before.clone();
        change(&mut after);
        Some(store_changed(&self.shared, collection, namespace, &before, after))
    }

    /// Deletes as `kubectl delete` would: with finalizers, only marked.
    pub fn delete(&self, collection: &str, namespace: &str, name: &str) {
        delete(&self.shared, collection, namespace, name);
    }

    /// Every object of a collection, in every namespace.
    pub fn list(&self, collection: &str) -> Vec<Value> {
        self.shared.store().objects.get(collection).map(|c| c.values().cloned().collect()).unwrap_or_default()
    }

    /// Told of every change, as a watch of every collection would be (its collection's name).
    pub fn changes(&self) -> broadcast::Receiver<String> {
        let (sender, receiver) = broadcast::channel(4096);
        let mut changes = self.shared.changes.subscribe();
        tokio::spawn(async move {
            loop {
                match changes.recv().await {
                    Ok(change) => {
                        if sender.send(change.collection).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if sender.send(String::new()).is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        receiver
    }

    /// Every request so far, as `METHOD PATH`.
    pub fn requests(&self) -> Vec<String> {
        self.shared.store().requests.clone()
    }
}

fn record(shared: &Shared, store: &mut Store, collection: &str, namespace: &str, kind: &str, object: &Value) {
    store.resource_version += 1;
    let change = Change {
        resource_version: store.resource_version,
        collection: collection.to_string(),
        namespace: namespace.to_string(),
        event: json!({"type": kind, "object": object}),
    };
    store.history.push(change.clone());
    let _ = shared.changes.send(change);
}

fn create(shared: &Shared, collection: &str, namespace: &str, mut object: Value) -> Result<Value, (u16, String)> {
    let name = object["metadata"]["name"].as_str().ok_or((422, "metadata.name is required".to_string()))?.to_string();
    let mut store = shared.store();
    let exists = store.objects.get(collection).is_some_and(|c| c.contains_key(&(namespace.to_string(), name.clone())));
    if exists {
        return Err((409, format!("{collection} {namespace}/{name} already exists")));
    }
    let resource_version = store.resource_version + 1;
    let metadata = &mut object["metadata"];
    metadata["namespace"] = json!(namespace);
    metadata["uid"] = json!(format!("uid-{resource_version}"));
    metadata["resourceVersion"] = json!(resource_version.to_string());
    metadata["generation"] = json!(1);
    metadata["creationTimestamp"] = json!("2026-11-28T00:00:00Z");
    store.objects.entry(collection.to_string()).or_default().insert((namespace.to_string(), name), object.clone());
    record(shared, &mut store, collection, namespace, "ADDED", &object);
    Ok(object)
}

/// Stores a changed object (or removes it, once it is deleted and has no finalizer left).
fn store_changed(shared: &Shared, collection: &str, namespace: &str, before: &Value, mut after: Value) -> Value {
    // As the API server does: a write that changes nothing is no new version and no watch event.
    if &after == before {
        return after;
    }
    let mut store = shared.store();
    let name = before["metadata"]["name"].as_str().unwrap_or_default().to_string();
    let deleting = after["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null());
    let finalizers = after["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
    if deleting && !finalizers {
        if let Some(objects) = store.objects.get_mut(collection) {
            objects.remove(&(namespace.to_string(), name));
        }
        record(shared, &mut store, collection, namespace, "DELETED", &after);
        return after;
    }
    if before["spec"] != after["spec"] {
        let generation = before["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
        after["metadata"]["generation"] = json!(generation);
    }
    after["metadata"]["resourceVersion"] = json!((store.resource_version + 1).to_string());
    store.objects.entry(collection.to_string()).or_default().insert((namespace.to_string(), name), after.clone());
    record(shared, &mut store, collection, namespace, "MODIFIED", &after);
    after
}

fn delete(shared: &Shared, collection: &str, namespace: &str, name: &str) -> Option<Value> {
    let before = shared.store().objects.get(collection)?.get(&(namespace.to_string(), name.to_string())).cloned()?;
    let mut after = before.clone();
    after["metadata"]["deletionTimestamp"] = json!("2026-11-28T00:00:01Z");
    Some(store_changed(shared, collection, namespace, &before, after))
}

async fn handle(shared: &Arc<Shared>, request: Request<Incoming>) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let query = request.uri().query().unwrap_or_default().to_string();
    shared.store().requests.push(format!("{method} {path}"));
    let content_type =
        request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let bytes = request.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let Some(target) = parse_target(&path) else {
        return respond(404, &status_body(404, "NotFound", &format!("no such path {path}")));
    };
    let namespace = target.namespace.clone().unwrap_or_default();
    let found = |name: &str| {
        shared
            .store()
            .objects
            .get(&target.collection)
            .and_then(|c| c.get(&(namespace.clone(), name.to_string())).cloned())
    };
    match (&method, &target.name) {
        (&Method::GET, None) if query_value(&query, "watch").as_deref() == Some("true") => {
            let from = query_value(&query, "resourceVersion").and_then(|v| v.parse().ok()).unwrap_or(0);
            let selector = query_value(&query, "labelSelector").unwrap_or_default();
            watch(shared, &target, from, selector)
        }
        (&Method::GET, None) => {
            let store = shared.store();
            let selector = query_value(&query, "labelSelector").unwrap_or_default();
            let items: Vec<Value> = store
                .objects
                .get(&target.collection)
                .map(|c| {
                    c.iter()
                        .filter(|((ns, _), _)| target.namespace.as_ref().is_none_or(|want| want == ns))
                        .filter(|(_, object)| labels_match(object, &selector))
                        .map(|(_, object)| object.clone())
                        .collect()
                })
                .unwrap_or_default();
            respond(
                200,
                &json!({"apiVersion": target.api_version, "kind": "List",
                                 "metadata": {"resourceVersion": store.resource_version.to_string()}, "items": items}),
            )
        }
        (&Method::GET, Some(name)) if target.subresource.as_deref() == Some("scale") => match found(name) {
            Some(object) => respond(200, &scale_of(&object)),
            None => respond(404, &status_body(404, "NotFound", name)),
        },
        (&Method::PATCH, Some(name)) if target.subresource.as_deref() == Some("scale") => {
            let Some(before) = found(name) else {
                return respond(404, &status_body(404, "NotFound", name));
            };
            let Some(replicas) = body["spec"]["replicas"].as_i64() else {
                return respond(422, &status_body(422, "Invalid", "spec.replicas: Required value"));
            };
            let mut after = before.clone();
            after["spec"]["replicas"] = json!(replicas);
            respond(200, &scale_of(&store_changed(shared, &target.collection, &namespace, &before, after)))
        }
        (&Method::GET, Some(name)) => match found(name) {
            Some(object) => respond(200, &object),
            None => respond(
                404,
                &status_body(404, "NotFound", &format!("{} {namespace}/{name} not found", target.collection)),
            ),
        },
        (&Method::POST, None) => match create(shared, &target.collection, &namespace, body) {
            Ok(object) => respond(201, &object),
            Err((code, message)) => respond(code, &status_body(code, "AlreadyExists", &message)),
        },
        (&Method::PUT, Some(name)) => {
            let Some(before) = found(name) else {
                return respond(404, &status_body(404, "NotFound", name));
            };
            if body["metadata"]["resourceVersion"] != before["metadata"]["resourceVersion"] {
                return respond(409, &status_body(409, "Conflict", "the object has been modified"));
            }
            respond(200, &store_changed(shared, &target.collection, &namespace, &before, body))
        }
        (&Method::PATCH, Some(name)) => {
            let before = match found(name) {
                Some(before) => before,
                // Server-side apply creates.
                None if content_type.starts_with("application/apply-patch") => {
                    return match create(shared, &target.collection, &namespace, body) {
                        Ok(object) => respond(201, &object),
                        Err((code, message)) => respond(code, &status_body(code, "Invalid", &message)),
                    };
                }
                None => return respond(404, &status_body(404, "NotFound", name)),
            };
            let mut patched = before.clone();
            if content_type.starts_with("application/json-patch") {
                let mut patch: json_patch::Patch = match serde_json::from_value(body) {
                    Ok(patch) => patch,
                    Err(e) => return respond(400, &status_body(400, "BadRequest", &e.to_string())),
                };
                // As Kubernetes' JSON patch does: a `test` for null passes on a path that does not exist.
                patch.0.retain(|op| match op {
                    json_patch::PatchOperation::Test(test) => {
                        !(test.value.is_null() && patched.pointer(test.path.as_str()).is_none())
                    }
                    _ => true,
                });
                if let Err(e) = json_patch::patch(&mut patched, &patch) {
                    return respond(422, &status_body(422, "Invalid", &e.to_string()));
                }
            } else {
                json_patch::merge(&mut patched, &body);
            }
            // The status subresource changes only status; the object itself, everything but status.
            let after = if target.subresource.as_deref() == Some("status") {
                let mut after = before.clone();
                after["status"] = patched["status"].clone();
                after
            } else {
                patched["status"] = before["status"].clone();
                if patched["status"].is_null()
                    && let Some(object) = patched.as_object_mut()
                {
                    object.remove("status");
                }
                patched
            };
            respond(200, &store_changed(shared, &target.collection, &namespace, &before, after))
        }
        (&Method::DELETE, Some(name)) => match delete(shared, &target.collection, &namespace, name) {
            Some(object) => respond(200, &object),
            None => respond(404, &status_body(404, "NotFound", name)),
        },
        _ => respond(405, &status_body(405, "MethodNotAllowed", &format!("{method} {path}"))),
    }
}

/// The `autoscaling/v1` Scale of an object with `spec.replicas`.
fn scale_of(object: &Value) -> Value {
    json!({"apiVersion": "autoscaling/v1", "kind": "Scale",
           "metadata": {"name": object["metadata"]["name"], "namespace": object["metadata"]["namespace"],
                        "resourceVersion": object["metadata"]["resourceVersion"]},
           "spec": {"replicas": object["spec"]["replicas"]},
           "status": {"replicas": object["status"]["replicas"].as_i64().unwrap_or(0)}})
}

/// A watch from `from` on: the history after it, then every change as it happens, one JSON event per line.
fn watch(shared: &Arc<Shared>, target: &Target, from: u64, selector: String) -> Response<Body> {
    let mut live = shared.changes.subscribe();
    let backlog: Vec<Change> = shared.store().history.iter().filter(|c| c.resource_version > from).cloned().collect();
    let (sender, receiver) = mpsc::channel::<Bytes>(64);
    let collection = target.collection.clone();
    let namespace = target.namespace.clone();
    tokio::spawn(async move {
        let wanted = |change: &Change| {
            change.collection == collection
                && namespace.as_ref().is_none_or(|ns| *ns == change.namespace)
                && labels_match(&change.event["object"], &selector)
        };
        let mut last = from;
        for change in backlog.into_iter().filter(|c| wanted(c)) {
            last = change.resource_version;
            if sender.send(Bytes::from(format!("{}\n", change.event))).await.is_err() {
                return;
            }
        }
        while let Ok(change) = live.recv().await {
            if change.resource_version <= last || !wanted(&change) {
                continue;
            }
            last = change.resource_version;
            if sender.send(Bytes::from(format!("{}\n", change.event))).await.is_err() {
                return;
            }
        }
    });
    let mut response = Response::new(ChannelBody(receiver).boxed());
    response.headers_mut().insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    response
}
