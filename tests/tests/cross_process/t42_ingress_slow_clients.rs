//! Slow clients (headers or body trickled) are cut off after the timeouts
//! while normal traffic goes on.

use std::time::{Duration, Instant};

use futures::StreamExt;
use reqwest::StatusCode;
use sluice_tests::{apply_resource, broker_object, wait_for_broker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Writes `chunks` one per 200 ms; answers whether the server closed the
/// connection (EOF or reset) within `limit`, and what it answered, if anything.
async fn trickle(addr: &str, chunks: Vec<Vec<u8>>, limit: Duration) -> anyhow::Result<(bool, String)> {
    let mut stream = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    for chunk in chunks {
        if started.elapsed() > limit {
            break;
        }
        if stream.write_all(&chunk).await.is_err() {
            return Ok((true, String::from_utf8_lossy(&answer).into_owned()));
        }
        // Wait for the next tick, or for the server to answer or close.
        match tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((true, String::from_utf8_lossy(&answer).into_owned())),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    // Stop writing; the server must still close within the limit.
    let rest = limit.saturating_sub(started.elapsed());
    loop {
        match tokio::time::timeout(rest, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Ok((true, String::from_utf8_lossy(&answer).into_owned())),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
            Err(_) => return Ok((false, String::from_utf8_lossy(&answer).into_owned())),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_and_bodies_are_cut_off() -> anyhow::Result<()> {
    let (_root, node) =
        sluice_tests::start_single_node(1, &["--header-read-timeout-ms", "1000", "--body-read-timeout-ms", "1000"])
            .await?;
    apply_resource(&node.admin, broker_object("default", "default", serde_json::json!({}))).await?;
    wait_for_broker(&node.http, "/default/default").await?;

    // Normal traffic keeps flowing while slow clients hold connections.
    let http = node.http.clone();
    let normal = tokio::spawn(async move {
        let client = reqwest::Client::new();
        let mut accepted = 0;
        for i in 0..40 {
            let response = client
                .post(format!("http://{http}/default/default"))
                .header("ce-specversion", "1.0")
                .header("ce-id", format!("n{i}"))
                .header("ce-source", "/normal")
                .header("ce-type", "t")
                .body("x")
                .send()
                .await;
            if response.map(|r| r.status() == StatusCode::ACCEPTED).unwrap_or(false) {
                accepted += 1;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        accepted
    });

    // Headers, one byte per tick: never complete.
    let header_bytes: Vec<Vec<u8>> =
        b"POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\n".iter().map(|b| vec![*b]).collect();
    let (closed, _) = trickle(&node.http, header_bytes, Duration::from_secs(5)).await?;
    assert!(closed, "a client trickling headers is disconnected");

    // Complete headers, then a body one byte per tick.
    let head = b"POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: slow\r\nce-source: /s\r\nce-type: t\r\ncontent-length: 100\r\n\r\n".to_vec();
    let mut chunks = vec![head];
    chunks.extend((0..100).map(|_| b"x".to_vec()));
    let (closed, answer) = trickle(&node.http, chunks, Duration::from_secs(5)).await?;
    assert!(closed, "a client trickling its body is disconnected");
    assert!(answer.starts_with("HTTP/1.1 408"), "answered 408 before closing: {answer:?}");

    // Regression: one byte, or the whole HTTP/2 preface, then silence. hyper's protocol sniffing waits without a
    // timeout, and its header-read timeout had not started: the connection held its slot for ever.
    for (what, opening) in
        [("one byte", b"P".to_vec()), ("the HTTP/2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec())]
    {
        let (closed, _) = trickle(&node.http, vec![opening], Duration::from_secs(5)).await?;
        assert!(closed, "a client that sent {what} and nothing more is disconnected");
    }

    assert_eq!(normal.await?, 40, "normal requests were all accepted meanwhile");
    Ok(())
}

/// Regression: an HTTP/2 connection with no stream open held its slot (of `--max-connections`) for as long as
/// the client kept it; hyper has no idle timeout for HTTP/2. It is now shut down (GOAWAY, then closed) once
/// nothing has moved for the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_connection_is_closed() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &["--idle-connection-timeout-ms", "1000"]).await?;
    let stream = TcpStream::connect(&node.http).await?;
    let (mut sender, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await?;
    let connection = tokio::spawn(connection);
    let request = hyper::Request::get(format!("http://{}/healthz", node.http))
        .body(http_body_util::Empty::<bytes::Bytes>::new())?;
    let response = sender.send_request(request).await?;
    assert_eq!(response.status(), StatusCode::OK);
    http_body_util::BodyExt::collect(response.into_body()).await?;

    let ended = tokio::time::timeout(Duration::from_secs(30), connection).await;
    assert!(matches!(ended, Ok(Ok(Ok(())))), "the idle connection ends cleanly (GOAWAY): {ended:?}");
    let metrics = reqwest::get(format!("http://{}/metrics", node.http)).await?.text().await?;
    let closed = metrics
        .lines()
        .find_map(|l| l.strip_prefix("sluice_http_connections_idle_closed_total "))
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert!(closed.is_some_and(|n| n >= 1.0), "counted: {closed:?}");
    Ok(())
}

/// A node taking events and batches of at most 64 KiB, whose bodies may take a minute to arrive, with `budget`'s
/// flags.
async fn start_with_body_budget(budget: &[&str]) -> anyhow::Result<(tempfile::TempDir, sluice_tests::NodeProc)> {
    let mut args = vec!["--max-event-bytes", "65536", "--max-batch-bytes", "65536", "--body-read-timeout-ms", "60000"];
    args.extend_from_slice(budget);
    sluice_tests::start_single_node(1, &args).await
}

/// Waits until the node at `http` holds at least `bytes` of request bodies (its gauge).
async fn held_body_bytes_reach(http: &str, bytes: f64) -> anyhow::Result<()> {
    let metrics = format!("http://{http}/metrics");
    sluice_tests::wait_until(Duration::from_secs(20), || async {
        let text = reqwest::get(&metrics).await?.text().await?;
        let held = text
            .lines()
            .find_map(|l| l.strip_prefix("sluice_ingress_body_budget_held_bytes "))
            .and_then(|v| v.trim().parse::<f64>().ok());
        Ok(held.is_some_and(|held| held >= bytes).then_some(()))
    })
    .await
}

/// Request bodies held at once are bounded over every connection (`--max-inflight-body-bytes`): two slow
/// senders that sent 64 KiB of their bodies each fill a 128 KiB budget, the next request gets 429 with
/// `Retry-After` and a body naming the limit, and once the slow senders go the budget is free again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_at_once_are_bounded_over_every_connection() -> anyhow::Result<()> {
    let (_root, node) = start_with_body_budget(&["--max-inflight-body-bytes", "131072"]).await?;
    apply_resource(&node.admin, broker_object("default", "default", serde_json::json!({}))).await?;
    wait_for_broker(&node.http, "/default/default").await?;
    let head = |id: &str, length: usize| {
        format!(
            "POST /default/default HTTP/1.1\r\nHost: x\r\nce-specversion: 1.0\r\nce-id: {id}\r\nce-source: /s\r\n\
             ce-type: t\r\ncontent-length: {length}\r\n\r\n"
        )
    };
    let mut slow = Vec::new();
    for id in ["slow-1", "slow-2"] {
        let mut stream = TcpStream::connect(&node.http).await?;
        stream.write_all(head(id, 65536).as_bytes()).await?;
        stream.write_all(&[b'x'; 65_000]).await?;
        slow.push(stream);
    }
    let client = reqwest::Client::new();
    let post = |id: &'static str| {
        client
            .post(format!("http://{}/default/default", node.http))
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/normal")
            .header("ce-type", "t")
            .body(vec![b'y'; 1000])
            .send()
    };
    // The slow senders' requests hold what they sent (64 KiB each, counted in whole KiB) once it is read; the
    // probes wait for that, or one of them could hold the last KiB a slow sender needs and have it refused.
    held_body_bytes_reach(&node.http, 131_072.0).await?;
    let refused = sluice_tests::wait_until(Duration::from_secs(20), || async {
        let response = post("while-full").await?;
        Ok((response.status() == StatusCode::TOO_MANY_REQUESTS).then_some(response))
    })
    .await?;
    assert_eq!(refused.headers().get("retry-after").map(|v| v.as_bytes()), Some(&b"1"[..]));
    let body: serde_json::Value = refused.json().await?;
    assert!(body["rule"].as_str().unwrap_or_default().contains("--max-inflight-body-bytes)"), "{body}");

    drop(slow);
    sluice_tests::wait_until(Duration::from_secs(20), || async {
        Ok((post("after").await?.status() == StatusCode::ACCEPTED).then_some(()))
    })
    .await?;
    Ok(())
}

/// Regression: one HTTP/2 connection's streams could hold the whole body budget, and every other client got
/// 429. A connection holds at most its share; another connection is still let in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_connection_holds_no_more_than_its_share_of_the_body_budget() -> anyhow::Result<()> {
    let (_root, node) = start_with_body_budget(&[
        "--max-inflight-body-bytes",
        "1048576",
        "--max-inflight-body-bytes-per-connection",
        "131072",
    ])
    .await?;
    apply_resource(&node.admin, broker_object("default", "default", serde_json::json!({}))).await?;
    wait_for_broker(&node.http, "/default/default").await?;
    // One client: HTTP/2 without upgrade, so every request is a stream of one connection.
    let greedy = reqwest::Client::builder().http2_prior_knowledge().build()?;
    let url = format!("http://{}/default/default", node.http);
    let post = |client: &reqwest::Client, id: &str, body: reqwest::Body| {
        client
            .post(&url)
            .header("ce-specversion", "1.0")
            .header("ce-id", id)
            .header("ce-source", "/s")
            .header("ce-type", "t")
            .body(body)
            .send()
    };
    // Two streams send 64,000 bytes each (held as 63 KiB: whole KiB) and stall.
    let stalled = |_: ()| {
        let first: Result<bytes::Bytes, std::io::Error> = Ok(bytes::Bytes::from(vec![b'x'; 64_000]));
        reqwest::Body::wrap_stream(futures::stream::iter([first]).chain(futures::stream::pending()))
    };
    // One request first, so the connection is in the client's pool: two first requests at once may each open
    // a connection of their own, and then no connection holds more than 63 KiB.
    assert_eq!(post(&greedy, "first", vec![b'y'; 10].into()).await?.status(), StatusCode::ACCEPTED);
    let slow: Vec<_> = ["slow-1", "slow-2"].iter().map(|id| tokio::spawn(post(&greedy, id, stalled(())))).collect();
    held_body_bytes_reach(&node.http, 2.0 * 63.0 * 1024.0).await?;
    // 126 KiB of the connection's 128 held: a third stream of 4 KiB is refused, on this connection only.
    let refused = post(&greedy, "greedy", vec![b'y'; 4000].into()).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let body: serde_json::Value = refused.json().await?;
    assert!(body["rule"].as_str().unwrap_or_default().contains("per-connection"), "{body}");
    let other = reqwest::Client::builder().http2_prior_knowledge().build()?;
    assert_eq!(post(&other, "other", vec![b'y'; 4000].into()).await?.status(), StatusCode::ACCEPTED);
    for request in slow {
        request.abort();
    }
    Ok(())
}

/// Regression: after the idle shutdown (GOAWAY), hyper's HTTP/2 waits for the client to answer its PING
/// before it closes; a client that never answers kept the connection for ever. A connection still silent one
/// timeout after the shutdown, with no request being handled, is dropped. The client here is frames written
/// by hand, which answer nothing: not even the server's SETTINGS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_h2c_client_that_answers_nothing_is_dropped() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &["--idle-connection-timeout-ms", "1000"]).await?;
    let mut stream = TcpStream::connect(&node.http).await?;
    let frame = |kind: u8, flags: u8, stream_id: u32, payload: &[u8]| {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream_id.to_be_bytes());
        frame.extend_from_slice(payload);
        frame
    };
    // GET /healthz: `:method GET`, `:scheme http` (static table), `:path` and `:authority` as literals.
    let mut headers = vec![0x82, 0x86, 0x44, 8];
    headers.extend_from_slice(b"/healthz");
    headers.extend([0x41, 1, b'x']);
    let mut opening = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    opening.extend(frame(0x4, 0, 0, &[]));
    opening.extend(frame(0x1, 0x5, 1, &headers));
    stream.write_all(&opening).await?;
    let mut received = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut received)).await;
    assert!(ended.is_ok(), "the connection is still open after 30 s ({} bytes received)", received.len());
    // It was served first: a HEADERS frame on stream 1 came back.
    let mut at = 0;
    let mut answered = false;
    while at + 9 <= received.len() {
        let length = u32::from_be_bytes([0, received[at], received[at + 1], received[at + 2]]) as usize;
        let stream_id = u32::from_be_bytes([received[at + 5], received[at + 6], received[at + 7], received[at + 8]]);
        answered |= received[at + 3] == 0x1 && stream_id == 1;
        at += 9 + length;
    }
    assert!(answered, "the request was answered before the connection went");
    Ok(())
}

/// An HTTP/1.1 connection to `addr` from the loopback address `source`.
async fn http1_from(
    source: &str,
    addr: &str,
) -> anyhow::Result<hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(format!("{source}:0").parse()?)?;
    let stream = socket.connect(addr.parse()?).await?;
    let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// `GET path` on a kept-alive connection: the body, or an error when the server closed the connection.
async fn get_on(
    sender: &mut hyper::client::conn::http1::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    addr: &str,
    path: &str,
) -> anyhow::Result<String> {
    sender.ready().await?;
    let request = hyper::Request::get(format!("http://{addr}{path}")).body(http_body_util::Empty::new())?;
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await??;
    let body = http_body_util::BodyExt::collect(response.into_body()).await?.to_bytes();
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// One client address holds at most `--max-connections-per-address` of the node's connections: the next one
/// from it is closed at accept and counted, another address is served meanwhile, and a slot given back is
/// taken again. Loopback is counted here because the test asks for it (`--limit-loopback-connections`); the
/// addresses are 127.0.0.3 and .4, which no helper's client uses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_address_holds_no_more_than_its_share_of_the_connections() -> anyhow::Result<()> {
    let (_root, node) =
        sluice_tests::start_single_node(1, &["--max-connections-per-address", "2", "--limit-loopback-connections"])
            .await?;
    let addr = node.http.as_str();
    let mut first = http1_from("127.0.0.3", addr).await?;
    let mut second = http1_from("127.0.0.3", addr).await?;
    assert_eq!(get_on(&mut first, addr, "/healthz").await?, "ok\n");
    assert_eq!(get_on(&mut second, addr, "/healthz").await?, "ok\n");

    let mut third = http1_from("127.0.0.3", addr).await?;
    let refused = get_on(&mut third, addr, "/healthz").await;
    assert!(refused.is_err(), "a third connection from 127.0.0.3 is closed unanswered: {refused:?}");

    let mut other = http1_from("127.0.0.4", addr).await?;
    assert_eq!(get_on(&mut other, addr, "/healthz").await?, "ok\n", "another address is served");
    let metrics = get_on(&mut other, addr, "/metrics").await?;
    assert!(
        metrics.lines().any(|l| l == "sluice_http_connections_refused_total{limit=\"per_address\"} 1"),
        "the refusal is counted by its limit"
    );
    assert_eq!(get_on(&mut second, addr, "/healthz").await?, "ok\n", "the held connections still work");

    drop(first);
    sluice_tests::wait_until(Duration::from_secs(20), || async {
        let mut again = http1_from("127.0.0.3", addr).await?;
        Ok(get_on(&mut again, addr, "/healthz").await.ok().filter(|body| body == "ok\n"))
    })
    .await?;
    Ok(())
}

/// The node's side of a connection as the kernel's table (`/proc/net/tcp`) shows it: its timer field (`tr`,
/// `02` while a keepalive timer runs), for the connection from `client_port` to `server_port`.
fn server_side_timer(server_port: u16, client_port: u16) -> anyhow::Result<Option<String>> {
    let table = std::fs::read_to_string("/proc/net/tcp")?;
    let port_of = |address: &str| address.rsplit(':').next().and_then(|hex| u16::from_str_radix(hex, 16).ok());
    Ok(table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, timer) = (fields.get(1)?, fields.get(2)?, fields.get(5)?);
        (port_of(local)? == server_port && port_of(remote)? == client_port)
            .then(|| timer.split(':').next().unwrap_or_default().to_string())
    }))
}

/// Regression: accepted connections had no TCP keepalive, so one taken over by an app (a WebSocket to a
/// Knative Service) whose client vanished held its slot and the instance's scale-in for ever. The node's side of
/// an idle connection now runs the kernel's keepalive timer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_accepted_connection_runs_tcp_keepalive() -> anyhow::Result<()> {
    let (_root, node) = sluice_tests::start_single_node(1, &[]).await?;
    let stream = TcpStream::connect(&node.http).await?;
    let (server_port, client_port) = (stream.peer_addr()?.port(), stream.local_addr()?.port());
    let timer = sluice_tests::wait_until(Duration::from_secs(10), || async {
        Ok(server_side_timer(server_port, client_port)?.filter(|timer| timer != "00"))
    })
    .await?;
    assert_eq!(timer, "02", "the keepalive timer");
    drop(stream);
    Ok(())
}
