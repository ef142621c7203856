//! The test app the serving tests run as a Knative Service's `command`: Knative's helloworld, plus what the
//! tests measure. Listens on `$PORT`.
//!
//! - `GET /` → `Hello $TARGET!` (default `World`), with `x-revision: $K_REVISION`; `?sleep_ms=N` answers
//!   after N ms; `?hold_until=PATH` answers once the file PATH exists (a test releases it when it has seen
//!   what it waits for, rather than guessing a sleep long enough).
//! - `GET /env` → the runtime contract as the app sees it (`PORT`, `K_SERVICE`, `K_CONFIGURATION`,
//!   `K_REVISION`, and `ADDRESS` for the tests of `$(VAR)` expansion) as JSON.
//! - `GET /stats` → `{"max_concurrent": N, "requests": N}`: the most requests it ever had at once.
//! - `GET /ws` with a WebSocket upgrade (in origin-form, as Node's `ws` wants it): echoes every text message as
//!   `$K_REVISION: MESSAGE`; counted as a request in flight (in `/stats`) until the WebSocket closes.
//! - `POST` (a CloudEvent) → 202; the event's `ce-id` is appended to `$HELLO_RECORD` when set; with
//!   `?fail_until=PATH`, 503 while the file PATH does not exist (a subscriber failing until a test says).
//! - `HELLO_STARTUP_MS`: waits that long before listening; `HELLO_CRASH=N`: writes a line to stderr and exits
//!   with code N at start; `HELLO_CRASH_WHEN=PATH`: exits with code 1 once the file PATH exists, at start or
//!   while running (a revision that was ready and then crash-loops).
//! - Exits when the process that started it (the node) is gone, unless `HELLO_OUTLIVE_PARENT` is set (to
//!   test that a restarted node stops what its killed predecessor left running).
//! - SIGTERM: stops accepting, lets in-flight requests finish, exits 0; with `HELLO_ABRUPT_TERM` set it exits
//!   at once instead, dropping them (to prove that the runtime drains an instance before it stops it).

use std::convert::Infallible;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Notify;

#[derive(Default)]
struct Stats {
    current: AtomicU64,
    max: AtomicU64,
    requests: AtomicU64,
    idle: Notify,
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_default()
}

/// Counts a request in flight until it is answered or dropped (a client that goes away drops it).
struct InFlight(Arc<Stats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.0.current.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

async fn handle(request: Request<Incoming>, stats: Arc<Stats>) -> Result<Response<Full<Bytes>>, Infallible> {
    let now = stats.current.fetch_add(1, Ordering::SeqCst) + 1;
    let in_flight = InFlight(stats.clone());
    stats.max.fetch_max(now, Ordering::SeqCst);
    stats.requests.fetch_add(1, Ordering::SeqCst);
    if request.uri().path() == "/ws" {
        return Ok(websocket(request, in_flight));
    }
    Ok(answer(request, &stats).await)
}

/// Switches to a WebSocket that echoes text messages with the revision's name; the request stays in flight
/// until the WebSocket ends.
fn websocket(mut request: Request<Incoming>, in_flight: InFlight) -> Response<Full<Bytes>> {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;

    let key = request.headers().get("sec-websocket-key").map(|key| derive_accept_key(key.as_bytes()));
    let asks = request.headers().get("upgrade").is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
    // As Node's `ws` and Go's servers read it: an absolute-form request line (`GET http://host/ws`) is refused.
    let origin_form = request.uri().authority().is_none();
    let (Some(accept), true, true) = (key, asks, origin_form) else {
        return Response::builder()
            .status(StatusCode::BAD_REQUEST)
            .body(Full::new(Bytes::from_static(b"a WebSocket upgrade in origin-form is expected\n")))
            .unwrap_or_default();
    };
    let upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let _in_flight = in_flight;
        let Ok(upgraded) = upgrade.await else { return };
        let mut socket =
            tokio_tungstenite::WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        let revision = env("K_REVISION");
        while let Some(Ok(message)) = socket.next().await {
            let echo = match message {
                Message::Text(text) => Message::text(format!("{revision}: {}", text.as_str())),
                Message::Close(_) => return,
                _ => continue,
            };
            if socket.send(echo).await.is_err() {
                return;
            }
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-accept", accept)
        .body(Full::new(Bytes::new()))
        .unwrap_or_default()
}

async fn answer(request: Request<Incoming>, stats: &Stats) -> Response<Full<Bytes>> {
    let sleep_ms: u64 = request
        .uri()
        .query()
        .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("sleep_ms=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if sleep_ms > 0 {
        tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    }
    let hold_until = request.uri().query().and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("hold_until=")));
    if let Some(path) = hold_until {
        // Polled: the file is made by another process, and the request is dropped if the client goes away.
        while !std::path::Path::new(path).exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let revision = env("K_REVISION");
    let text = |status: StatusCode, body: String| {
        Response::builder()
            .status(status)
            .header("x-revision", revision.as_str())
            .body(Full::new(Bytes::from(body)))
            .unwrap_or_default()
    };
    match (request.method().as_str(), request.uri().path()) {
        ("GET", "/stats") => {
            let body = serde_json::json!({
                "max_concurrent": stats.max.load(Ordering::SeqCst),
                "requests": stats.requests.load(Ordering::SeqCst),
            });
            text(StatusCode::OK, body.to_string())
        }
        ("GET", "/headers") => {
            // The request's headers as the app got them (the last value of a repeated one).
            let headers: serde_json::Map<String, serde_json::Value> = request
                .headers()
                .iter()
                .map(|(name, value)| (name.to_string(), String::from_utf8_lossy(value.as_bytes()).into()))
                .collect();
            text(StatusCode::OK, serde_json::Value::Object(headers).to_string())
        }
        ("GET", "/env") => {
            let body = serde_json::json!({
                "PORT": env("PORT"), "K_SERVICE": env("K_SERVICE"),
                "K_CONFIGURATION": env("K_CONFIGURATION"), "K_REVISION": env("K_REVISION"),
                "ADDRESS": env("ADDRESS"),
                "cwd": std::env::current_dir().map(|d| d.display().to_string()).unwrap_or_default(),
            });
            text(StatusCode::OK, body.to_string())
        }
        ("POST", _)
            if request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("fail_until=")))
                .is_some_and(|path| !std::path::Path::new(path).exists()) =>
        {
            let _ = request.into_body().collect().await;
            text(StatusCode::SERVICE_UNAVAILABLE, String::new())
        }
        ("POST", _) => {
            let id = request.headers().get("ce-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
            let _ = request.into_body().collect().await;
            let record = env("HELLO_RECORD");
            if !record.is_empty()
                && let Ok(mut file) = std::fs::OpenOptions::new().create(true).append(true).open(&record)
            {
                // One write per line: instances of a scaled-out revision append to the same file at once, and
                // `writeln!` writes the id and the newline separately (lines came out torn: "k21k20").
                let _ = file.write_all(format!("{id}\n").as_bytes());
            }
            text(StatusCode::ACCEPTED, String::new())
        }
        _ => {
            let target = std::env::var("TARGET").unwrap_or_else(|_| "World".into());
            text(StatusCode::OK, format!("Hello {target}!\n"))
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Taken first: the node may die while this starts (then the parent is already init, and it exits below).
    let parent = std::os::unix::process::parent_id();
    if let Ok(code) = env("HELLO_CRASH").parse::<i32>() {
        eprintln!("hello: crashing at start as asked (HELLO_CRASH={code})");
        std::process::exit(code);
    }
    let crash_when = env("HELLO_CRASH_WHEN");
    let crash_now = move || {
        if !crash_when.is_empty() && std::path::Path::new(&crash_when).exists() {
            eprintln!("hello: crashing as asked ({crash_when} exists)");
            std::process::exit(1);
        }
    };
    crash_now();
    tokio::spawn(async move {
        // Polled: the file is made by a test, in another process.
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            crash_now();
        }
    });
    if let Ok(ms) = env("HELLO_STARTUP_MS").parse::<u64>() {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let port: u16 = match env("PORT").parse() {
        Ok(port) => port,
        Err(_) => {
            eprintln!("hello: PORT is not set");
            std::process::exit(2);
        }
    };
    let listener = match TcpListener::bind(("127.0.0.1", port)).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("hello: cannot listen on {port}: {e}");
            std::process::exit(3);
        }
    };
    println!("hello: listening on {port} as {}", env("K_REVISION"));
    // A test app must not outlive the node that runs it: a node killed with SIGKILL cannot stop it (it stops
    // such orphans only when it starts again), and tests kill nodes. Exit once the parent is gone.
    let watch_parent = env("HELLO_OUTLIVE_PARENT").is_empty();
    tokio::spawn(async move {
        if !watch_parent {
            return;
        }
        loop {
            if parent == 1 || std::os::unix::process::parent_id() != parent {
                // No message: with the node gone, stderr is a broken pipe (and eprintln! would panic).
                std::process::exit(0);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let stats = Arc::new(Stats::default());
    let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(signal) => signal,
        Err(e) => {
            eprintln!("hello: no SIGTERM handler: {e}");
            std::process::exit(4);
        }
    };
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let stats = stats.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(request, stats.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection_with_upgrades(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
    if !env("HELLO_ABRUPT_TERM").is_empty() {
        println!("hello: terminated abruptly with {} in flight", stats.current.load(Ordering::SeqCst));
        std::process::exit(0);
    }
    // Graceful: no new connections; the requests in flight finish.
    drop(listener);
    loop {
        let idle = stats.idle.notified();
        if stats.current.load(Ordering::SeqCst) == 0 {
            break;
        }
        idle.await;
    }
    println!("hello: terminated after {} requests", stats.requests.load(Ordering::SeqCst));
}
