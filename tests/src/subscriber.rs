//! Recording HTTP subscribers for the dispatcher's end-to-end tests.
//!
//! [`Subscriber`] is an in-process HTTP server (HTTP/1.1 and h2c on
//! 127.0.0.1) that records every request as a [`Delivery`] and answers
//! with whatever its [`Behavior`] says, optionally after a delay.
//! [`PythonSubscriber`] runs `python/subscriber.py`, a subscriber written
//! with the Python `cloudevents` SDK, and reads back the events it parsed.

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::AsyncBufReadExt;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

const STRUCTURED_JSON: &str = "application/cloudevents+json";

/// One request as the subscriber received it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// When the request (headers and body) had fully arrived.
    pub at: Instant,
    pub path: String,
    /// Header names lower-cased, in arrival order.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub http_version: String,
}

impl Delivery {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether the request is a structured-mode (`application/cloudevents+json`) event.
    pub fn is_structured(&self) -> bool {
        self.header("content-type").is_some_and(|ct| ct.trim().to_ascii_lowercase().starts_with(STRUCTURED_JSON))
    }

    /// The CloudEvent in this request, binary or structured mode.
    ///
    /// Binary mode: each `ce-*` header is an attribute (percent-decoded),
    /// `content-type` is `datacontenttype`, the body is the data.
    /// Structured mode: every member but `data`/`data_base64` is an attribute
    /// (strings as they are, other JSON values as their JSON text);
    /// `data_base64` is decoded, `data` is its JSON text (`serde_json::to_vec`).
    pub fn event(&self) -> Result<ReceivedEvent> {
        if self.is_structured() {
            return parse_structured(&self.body);
        }
        let mut attributes = BTreeMap::new();
        for (name, value) in &self.headers {
            if let Some(attribute) = name.strip_prefix("ce-") {
                attributes.insert(attribute.to_string(), percent_decode(value)?);
            } else if name == "content-type" {
                attributes.insert("datacontenttype".to_string(), value.clone());
            }
        }
        for required in ["specversion", "id", "source", "type"] {
            if !attributes.contains_key(required) {
                bail!("binary-mode event without ce-{required} (headers: {:?})", self.headers);
            }
        }
        Ok(ReceivedEvent { attributes, data: self.body.to_vec() })
    }

    /// (source, id) of the event, if it has both: what attempts are counted by.
    fn event_key(&self) -> Option<(String, String)> {
        let event = self.event().ok()?;
        Some((event.get("source")?.to_string(), event.get("id")?.to_string()))
    }
}

fn parse_structured(body: &[u8]) -> Result<ReceivedEvent> {
    let value: serde_json::Value = serde_json::from_slice(body).context("structured event is not JSON")?;
    let serde_json::Value::Object(object) = value else { bail!("structured event is not a JSON object") };
    let mut attributes = BTreeMap::new();
    let mut data = Vec::new();
    for (name, value) in object {
        match (name.as_str(), value) {
            ("data_base64", serde_json::Value::String(encoded)) => {
                data = base64::engine::general_purpose::STANDARD.decode(encoded).context("data_base64")?;
            }
            ("data_base64", other) => bail!("data_base64 is not a string: {other}"),
            ("data", value) => data = serde_json::to_vec(&value)?,
            (_, serde_json::Value::String(text)) => {
                attributes.insert(name, text);
            }
            (_, other) => {
                attributes.insert(name, other.to_string());
            }
        }
    }
    Ok(ReceivedEvent { attributes, data })
}

fn percent_decode(value: &str) -> Result<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
            out.push(byte.ok_or_else(|| anyhow!("bad percent-encoding in header value {value:?}"))?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).with_context(|| format!("header value {value:?} is not UTF-8 once decoded"))
}

/// A CloudEvent parsed from a [`Delivery`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedEvent {
    /// Every context attribute and extension, as strings.
    pub attributes: BTreeMap<String, String>,
    pub data: Vec<u8>,
}

impl ReceivedEvent {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.attributes.get(name).map(String::as_str)
    }
}

/// What the subscriber answers to one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Answer only after this long (other requests are served meanwhile).
    pub delay: Option<Duration>,
    /// Answer only once this gate is open (after the delay, if any).
    pub gate: Option<Gate>,
}

/// Holds replies until the test opens it: for checks made "while a delivery is in flight" that must not depend
/// on how long a reply is delayed against how fast the machine is.
#[derive(Debug, Clone)]
pub struct Gate(Arc<tokio::sync::Semaphore>);

impl Gate {
    pub fn closed() -> Self {
        Gate(Arc::new(tokio::sync::Semaphore::new(0)))
    }

    /// Lets every held reply go, and every later one at once.
    pub fn open(&self) {
        self.0.close();
    }

    async fn passed(&self) {
        // No permit is ever added: `acquire` ends only with the semaphore closed, which is the gate opening.
        let _opened = self.0.acquire().await;
    }
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), body: Vec::new(), delay: None, gate: None }
    }

    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn after(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Answer once `gate` is open.
    pub fn held_by(mut self, gate: &Gate) -> Self {
        self.gate = Some(gate.clone());
        self
    }
}

/// Decides the reply to a delivery; the `u32` is the attempt number of this
/// event (same source and id) at this subscriber, starting at 1.
pub type Behavior = Arc<dyn Fn(&Delivery, u32) -> Reply + Send + Sync>;

struct Shared {
    behavior: Behavior,
    deliveries: watch::Sender<Vec<Delivery>>,
    attempts: Mutex<HashMap<(String, String), u32>>,
}

/// An HTTP/1.1 + h2c server on 127.0.0.1 that records what it receives.
/// Dropping it stops the server and every open connection.
pub struct Subscriber {
    addr: std::net::SocketAddr,
    scheme: &'static str,
    deliveries: watch::Receiver<Vec<Delivery>>,
    task: JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(behavior: Behavior) -> Result<Subscriber> {
        Self::start_with(behavior, None).await
    }

    /// The same over TLS only (HTTPS), with `tls`'s certificate.
    pub async fn start_tls(behavior: Behavior, tls: sluice_security::Tls) -> Result<Subscriber> {
        Self::start_with(behavior, Some(tls)).await
    }

    async fn start_with(behavior: Behavior, tls: Option<sluice_security::Tls>) -> Result<Subscriber> {
        let listener = TcpListener::bind("127.0.0.1:0").await.context("binding the subscriber")?;
        let addr = listener.local_addr()?;
        let (sender, receiver) = watch::channel(Vec::new());
        let shared = Arc::new(Shared { behavior, deliveries: sender, attempts: Mutex::new(HashMap::new()) });
        let scheme = if tls.is_some() { "https" } else { "http" };
        let task = tokio::spawn(serve(listener, shared, tls));
        Ok(Subscriber { addr, scheme, deliveries: receiver, task })
    }

    /// Answers every request with an empty 202.
    pub fn ok() -> Behavior {
        Arc::new(|_, _| Reply::status(202))
    }

    /// `http://127.0.0.1:PORT/` (`https://` when started with TLS)
    pub fn url(&self) -> String {
        format!("{}://{}/", self.scheme, self.addr)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries.borrow().clone()
    }

    /// Waits until at least `count` deliveries have arrived.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Result<Vec<Delivery>> {
        self.wait_until(timeout, |d| d.len() >= count)
            .await
            .with_context(|| format!("expected at least {count} deliveries"))
    }

    /// Waits until `predicate` holds for the deliveries so far.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        predicate: impl Fn(&[Delivery]) -> bool,
    ) -> Result<Vec<Delivery>> {
        let mut receiver = self.deliveries.clone();
        match tokio::time::timeout(timeout, receiver.wait_for(|d| predicate(d))).await {
            Ok(Ok(deliveries)) => Ok(deliveries.clone()),
            Ok(Err(_)) => bail!("subscriber stopped; {} deliveries arrived", self.deliveries.borrow().len()),
            Err(_) => {
                bail!("condition not met within {timeout:?}; {} deliveries arrived", self.deliveries.borrow().len())
            }
        }
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts connections until aborted; connections live in a `JoinSet`
/// owned by this task, so aborting it ends them too.
async fn serve(listener: TcpListener, shared: Arc<Shared>, tls: Option<sluice_security::Tls>) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
            Some(_) = connections.join_next() => continue,
        };
        let builder = builder.clone();
        let (shared, tls) = (shared.clone(), tls.clone());
        connections.spawn(async move {
            let accepted = sluice_security::accept(
                stream,
                tls.as_ref(),
                sluice_security::PlaintextPolicy::Refuse,
                sluice_security::ClientCertificate::Optional,
                Duration::from_secs(10),
            )
            .await;
            let Ok(conn) = accepted else { return };
            let service = service_fn(move |request| handle(shared.clone(), request));
            let _ = builder.serve_connection(TokioIo::new(conn), service).await;
        });
    }
}

async fn handle(shared: Arc<Shared>, request: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) => return Ok(plain(400, format!("reading the body: {e}"))),
    };
    let delivery = Delivery {
        at: Instant::now(),
        path: parts.uri.path_and_query().map_or_else(|| parts.uri.path().to_string(), |pq| pq.as_str().to_string()),
        headers: parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str().to_ascii_lowercase(), String::from_utf8_lossy(value.as_bytes()).into()))
            .collect(),
        body,
        http_version: format!("{:?}", parts.version),
    };
    let attempt = match delivery.event_key() {
        Some(key) => {
            let mut attempts = shared.attempts.lock().unwrap_or_else(PoisonError::into_inner);
            let count = attempts.entry(key).or_insert(0);
            *count += 1;
            *count
        }
        None => 1,
    };
    let reply = (shared.behavior)(&delivery, attempt);
    shared.deliveries.send_modify(|deliveries| deliveries.push(delivery));
    if let Some(delay) = reply.delay {
        tokio::time::sleep(delay).await;
    }
    if let Some(gate) = &reply.gate {
        gate.passed().await;
    }
    let mut response = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        response = response.header(name, value);
    }
    Ok(response.body(Full::new(Bytes::from(reply.body))).unwrap_or_else(|e| plain(500, format!("bad reply: {e}"))))
}

fn plain(status: u16, text: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text)));
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response
}

/// `python/subscriber.py` (the Python `cloudevents` SDK) as a child process.
/// Killed on drop.
pub struct PythonSubscriber {
    port: u16,
    outfile: PathBuf,
    _dir: tempfile::TempDir,
    _child: tokio::process::Child,
}

impl PythonSubscriber {
    pub async fn start() -> Result<PythonSubscriber> {
        let script = crate::manifest_dir().join("python").join("subscriber.py");
        let dir = tempfile::tempdir()?;
        let outfile = dir.path().join("events.jsonl");
        let addr = crate::free_addr();
        let port: u16 = addr.rsplit(':').next().and_then(|p| p.parse().ok()).context("port of free_addr()")?;
        let mut child = tokio::process::Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .arg(&outfile)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting python3 {}", script.display()))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .context("python subscriber did not print `listening` within 20 s")??;
        match first {
            Some(line) if line.starts_with("listening") => {}
            other => bail!("python subscriber did not start: first stdout line {other:?}"),
        }
        Ok(PythonSubscriber { port, outfile, _dir: dir, _child: child })
    }

    /// `http://127.0.0.1:PORT/`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The events parsed so far (one JSON object each: `mode`, `attributes`, `data`).
    pub fn events(&self) -> Result<Vec<serde_json::Value>> {
        let text = match std::fs::read_to_string(&self.outfile) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        };
        // Only complete lines: the last one may still be being written.
        let complete = text.rfind('\n').map_or("", |end| &text[..end]);
        complete.lines().map(|line| serde_json::from_str(line).context("event line is not JSON")).collect()
    }

    /// Waits (re-reading the file every 50 ms) until at least `count` events were recorded.
    pub async fn wait_for(&self, count: usize, timeout: Duration) -> Result<Vec<serde_json::Value>> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut interval = tokio::time::interval(Duration::from_millis(50));
        loop {
            interval.tick().await;
            let events = self.events()?;
            if events.len() >= count {
                return Ok(events);
            }
            if tokio::time::Instant::now() >= deadline {
                bail!("expected at least {count} events within {timeout:?}; {} arrived", events.len());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAIT: Duration = Duration::from_secs(10);

    async fn post_binary(client: &reqwest::Client, url: &str, id: &str) -> Result<reqwest::Response> {
        Ok(client
            .post(url)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/tests/subscriber")
            .header("ce-type", "test.binary")
            .header("ce-subject", "caf%C3%A9 %25 done")
            .header("content-type", "application/json")
            .body(r#"{"n":1}"#)
            .send()
            .await?)
    }

    #[tokio::test]
    async fn records_binary_and_structured_events() -> Result<()> {
        let subscriber = Subscriber::start(Subscriber::ok()).await?;
        let client = reqwest::Client::new();
        let response = post_binary(&client, &format!("{}some/path?x=1", subscriber.url()), "b-1").await?;
        assert_eq!(response.status().as_u16(), 202);
        let structured = serde_json::json!({
            "specversion": "1.0", "id": "s-1", "source": "/tests/subscriber", "type": "test.structured",
            "datacontenttype": "application/json", "data": {"hello": "world"}, "myext": 7,
        });
        let response = client
            .post(subscriber.url())
            .header("content-type", "application/cloudevents+json; charset=utf-8")
            .body(structured.to_string())
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 202);
        let bytes = serde_json::json!({
            "specversion": "1.0", "id": "s-2", "source": "/tests/subscriber", "type": "test.structured",
            "data_base64": "AAEC",
        });
        client.post(subscriber.url()).header("content-type", STRUCTURED_JSON).body(bytes.to_string()).send().await?;

        let deliveries = subscriber.wait_for(3, WAIT).await?;
        assert_eq!(deliveries.len(), 3);

        let binary = &deliveries[0];
        assert_eq!(binary.path, "/some/path?x=1");
        assert_eq!(binary.http_version, "HTTP/1.1");
        assert!(!binary.is_structured());
        assert_eq!(binary.header("CE-ID"), Some("b-1"));
        let event = binary.event()?;
        assert_eq!(event.get("id"), Some("b-1"));
        assert_eq!(event.get("type"), Some("test.binary"));
        assert_eq!(event.get("subject"), Some("café % done"));
        assert_eq!(event.get("datacontenttype"), Some("application/json"));
        assert_eq!(event.data, br#"{"n":1}"#);

        let structured = &deliveries[1];
        assert!(structured.is_structured());
        let event = structured.event()?;
        assert_eq!(event.get("id"), Some("s-1"));
        assert_eq!(event.get("type"), Some("test.structured"));
        assert_eq!(event.get("myext"), Some("7"));
        assert_eq!(event.get("data"), None);
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&event.data)?, serde_json::json!({"hello": "world"}));

        let event = deliveries[2].event()?;
        assert_eq!(event.data, vec![0, 1, 2]);
        assert_eq!(event.get("data_base64"), None);

        assert_eq!(subscriber.deliveries().len(), 3);
        Ok(())
    }

    #[tokio::test]
    async fn counts_attempts_per_event_and_answers_with_the_behavior() -> Result<()> {
        let behavior: Behavior = Arc::new(|_, attempt| match attempt {
            1 => Reply::status(503).with_header("retry-after", "1"),
            _ => Reply::status(200).with_header("content-type", "text/plain").with_body(format!("attempt {attempt}")),
        });
        let subscriber = Subscriber::start(behavior).await?;
        let client = reqwest::Client::new();
        let first = post_binary(&client, &subscriber.url(), "a").await?;
        assert_eq!(first.status().as_u16(), 503);
        assert_eq!(first.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
        let second = post_binary(&client, &subscriber.url(), "a").await?;
        assert_eq!(second.status().as_u16(), 200);
        assert_eq!(second.text().await?, "attempt 2");
        let third = post_binary(&client, &subscriber.url(), "a").await?;
        assert_eq!(third.text().await?, "attempt 3");
        // Another id is another event: its first attempt.
        assert_eq!(post_binary(&client, &subscriber.url(), "b").await?.status().as_u16(), 503);

        let deliveries =
            subscriber.wait_until(WAIT, |d| d.iter().filter(|d| d.header("ce-id") == Some("a")).count() == 3).await?;
        assert_eq!(deliveries.len(), 4);

        let err = subscriber.wait_for(5, Duration::from_millis(100)).await.err().context("expected a timeout")?;
        assert!(format!("{err:#}").contains("4 deliveries arrived"), "{err:#}");
        Ok(())
    }

    #[tokio::test]
    async fn a_delayed_reply_does_not_hold_up_other_requests() -> Result<()> {
        let behavior: Behavior = Arc::new(|delivery, _| match delivery.header("ce-id") {
            Some("slow") => Reply::status(202).after(Duration::from_secs(2)),
            _ => Reply::status(202),
        });
        let subscriber = Subscriber::start(behavior).await?;
        let client = reqwest::Client::new();
        let started = Instant::now();
        let slow = tokio::spawn({
            let client = client.clone();
            let url = subscriber.url();
            async move { post_binary(&client, &url, "slow").await.map(|r| (r.status().as_u16(), Instant::now())) }
        });
        subscriber.wait_for(1, WAIT).await?;
        let fast = post_binary(&client, &subscriber.url(), "fast").await?;
        assert_eq!(fast.status().as_u16(), 202);
        // Answered while the slow one is still held (below: it ends after this one).
        let fast_done = Instant::now();

        // A client timeout shorter than the delay sees a timeout.
        let timed_out = reqwest::Client::builder().timeout(Duration::from_millis(300)).build()?;
        let err = post_binary(&timed_out, &subscriber.url(), "slow").await.err().context("expected a timeout")?;
        assert!(format!("{err:#}").contains("timed out") || err.chain().any(|e| e.to_string().contains("timed out")));

        let (status, slow_done) = slow.await??;
        assert_eq!(status, 202);
        assert!(slow_done - started >= Duration::from_secs(2));
        assert!(slow_done > fast_done);
        Ok(())
    }

    #[tokio::test]
    async fn a_held_reply_goes_when_its_gate_opens_and_later_ones_at_once() -> Result<()> {
        let gate = Gate::closed();
        let held = gate.clone();
        let subscriber = Subscriber::start(Arc::new(move |_, _| Reply::status(202).held_by(&held))).await?;
        let client = reqwest::Client::new();
        let first = tokio::spawn({
            let (client, url) = (client.clone(), subscriber.url());
            async move { post_binary(&client, &url, "held").await.map(|r| r.status().as_u16()) }
        });
        subscriber.wait_for(1, WAIT).await?;
        // Received and not answered: a client that gives up first sees no reply.
        let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build()?;
        assert!(post_binary(&impatient, &subscriber.url(), "also-held").await.is_err(), "answered while closed");
        assert!(!first.is_finished(), "answered while closed");
        gate.open();
        assert_eq!(first.await??, 202);
        assert_eq!(post_binary(&client, &subscriber.url(), "after").await?.status().as_u16(), 202);
        Ok(())
    }

    #[tokio::test]
    async fn serves_h2c() -> Result<()> {
        let subscriber = Subscriber::start(Subscriber::ok()).await?;
        let client = reqwest::Client::builder().http2_prior_knowledge().build()?;
        let response = post_binary(&client, &subscriber.url(), "h2").await?;
        assert_eq!(response.status().as_u16(), 202);
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        let deliveries = subscriber.wait_for(1, WAIT).await?;
        assert_eq!(deliveries[0].http_version, "HTTP/2.0");
        assert_eq!(deliveries[0].event()?.get("id"), Some("h2"));
        Ok(())
    }

    #[tokio::test]
    async fn dropping_the_subscriber_stops_the_server() -> Result<()> {
        let subscriber = Subscriber::start(Subscriber::ok()).await?;
        let url = subscriber.url();
        let client = reqwest::Client::new();
        assert_eq!(post_binary(&client, &url, "1").await?.status().as_u16(), 202);
        drop(subscriber);
        let fresh = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        assert!(post_binary(&fresh, &url, "2").await.is_err(), "the server still answers after drop");
        Ok(())
    }

    #[tokio::test]
    async fn python_subscriber_parses_binary_and_structured_events() -> Result<()> {
        let subscriber = PythonSubscriber::start().await?;
        let client = reqwest::Client::new();
        let response = post_binary(&client, &subscriber.url(), "py-b").await?;
        assert_eq!(response.status().as_u16(), 202, "{:?}", response.text().await);
        let structured = serde_json::json!({
            "specversion": "1.0", "id": "py-s", "source": "/tests/subscriber", "type": "test.structured",
            "datacontenttype": "text/plain", "data": "plain text", "myext": "x",
        });
        let response = client
            .post(subscriber.url())
            .header("content-type", STRUCTURED_JSON)
            .body(structured.to_string())
            .send()
            .await?;
        assert_eq!(response.status().as_u16(), 202);
        let bytes = client
            .post(subscriber.url())
            .header("ce-specversion", "1.0")
            .header("ce-id", "py-bytes")
            .header("ce-source", "/tests/subscriber")
            .header("ce-type", "test.bytes")
            .header("content-type", "application/octet-stream")
            .body(vec![0u8, 1, 2, 255])
            .send()
            .await?;
        assert_eq!(bytes.status().as_u16(), 202);
        let bad = client.post(subscriber.url()).header("content-type", STRUCTURED_JSON).body("not json").send().await?;
        assert_eq!(bad.status().as_u16(), 400);
        assert!(bad.json::<serde_json::Value>().await?.get("error").is_some());

        let events = subscriber.wait_for(3, WAIT).await?;
        assert_eq!(events.len(), 3);
        assert_eq!(events[0]["mode"], "binary");
        assert_eq!(events[0]["attributes"]["id"], "py-b");
        // The Python SDK 1.x does not percent-decode ce-* header values: it sees them as sent.
        assert_eq!(events[0]["attributes"]["subject"], "caf%C3%A9 %25 done");
        assert_eq!(events[0]["attributes"]["datacontenttype"], "application/json");
        assert_eq!(events[0]["data"], serde_json::json!({"n": 1}));
        assert_eq!(events[1]["mode"], "structured");
        assert_eq!(events[1]["attributes"]["id"], "py-s");
        assert_eq!(events[1]["attributes"]["myext"], "x");
        assert_eq!(events[1]["data"], "plain text");
        assert_eq!(events[2]["data"], serde_json::json!({"base64": "AAEC/w=="}));

        let err = subscriber.wait_for(4, Duration::from_millis(200)).await.err().context("expected a timeout")?;
        assert!(format!("{err:#}").contains("3 arrived"), "{err:#}");
        Ok(())
    }
}
