//! The Kubernetes API as tests play it: the real kube `Client` over a `tower-test` mock service, whose
//! requests a scenario reads (method, path, JSON body) and answers.

use std::time::Duration;

use http::{Method, Request, Response};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

pub(crate) type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;
pub(crate) type Responder = tower_test::mock::SendResponse<Response<Body>>;

pub(crate) fn mock_client() -> (Client, Handle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, "default"), handle)
}

/// The next request the client sends: its method, path (with query) and body as JSON.
pub(crate) async fn next_request(handle: &mut Handle) -> (Method, String, Value, Responder) {
    let (request, send) = tokio::time::timeout(Duration::from_secs(5), handle.next_request())
        .await
        .expect("the controller made no further request within 5 s")
        .expect("the client is gone");
    let method = request.method().clone();
    let path = request.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
    let bytes = request.into_body().collect_bytes().await.expect("request body");
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).expect("a JSON body") };
    (method, path, body, send)
}

/// No request within 200 ms, or the client went away without making one.
pub(crate) async fn assert_no_request(handle: &mut Handle) {
    if let Ok(Some((request, _))) = tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await {
        panic!("unexpected request: {} {}", request.method(), request.uri());
    }
}

pub(crate) fn respond(send: Responder, body: &Value) {
    send.send_response(
        Response::builder().body(Body::from(serde_json::to_vec(body).expect("json"))).expect("response"),
    );
}

pub(crate) fn respond_not_found(send: Responder) {
    let status = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404});
    send.send_response(
        Response::builder().status(404).body(Body::from(serde_json::to_vec(&status).expect("json"))).expect("response"),
    );
}
