//! WebSockets to a Knative Service through the node's HTTP port: the upgrade reaches the revision its Route
//! picks, the tunnel holds its request's slot while it is open (`containerConcurrency` counts it, as Knative
//! does), it outlives `timeoutSeconds` while the app talks, and it is cut once the app has been silent for
//! `idleTimeoutSeconds`.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::{SinkExt, StreamExt};
use serde_json::json;
use sluice_tests::{apply_resource, start_single_node, wait_until};
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use super::t90_serving::{READY_WITHIN, client, service, url, wait_ready};

type Socket = WebSocketStream<TcpStream>;

/// A WebSocket to `host`'s `/ws`, over a connection to the node's HTTP port (as a browser resolving
/// `*.localhost` makes it).
async fn connect(http: &str, host: &str) -> Result<Socket> {
    let stream = TcpStream::connect(http).await?;
    let request = url(host, http, "/ws").replacen("http://", "ws://", 1).into_client_request()?;
    let (socket, response) = tokio_tungstenite::client_async(request, stream).await.context("the handshake")?;
    assert_eq!(response.status().as_u16(), 101, "switched");
    Ok(socket)
}

/// Sends `text` and answers the app's echo.
async fn echo(socket: &mut Socket, text: &str) -> Result<String> {
    socket.send(Message::text(text)).await?;
    match socket.next().await {
        Some(Ok(Message::Text(echoed))) => Ok(echoed.as_str().to_string()),
        other => bail!("no echo of {text}: {other:?}"),
    }
}

/// Waits until the node's `/metrics` has `line` exactly.
async fn metric_line(http: &str, line: String) -> Result<()> {
    let metrics_url = format!("http://{http}/metrics");
    wait_until(READY_WITHIN, || {
        let (metrics_url, line) = (metrics_url.clone(), line.clone());
        async move {
            let text = reqwest::get(&metrics_url).await?.text().await?;
            Ok(text.lines().any(|l| l == line).then_some(()))
        }
    })
    .await
    .with_context(|| format!("/metrics never had {line}"))
}

/// Waits until a plain request to `host` answers (the Service's status can be Ready before the node's route
/// table serves it).
async fn wait_served(http: &str, host: &str) -> Result<()> {
    let client = client(http, &[host])?;
    let address = url(host, http, "/");
    wait_until(READY_WITHIN, || {
        let (client, address) = (client.clone(), address.clone());
        async move { Ok(client.get(&address).send().await.ok().filter(|r| r.status() == 200).map(|_| ())) }
    })
    .await
}

#[tokio::test]
async fn a_websocket_reaches_its_revision_and_holds_its_slot_until_it_closes() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let host = "sockets.default.localhost";
    let annotations = json!({"autoscaling.knative.dev/max-scale": "1"});
    apply_resource(&admin, service("sockets", json!([]), annotations, json!({"containerConcurrency": 1}))).await?;
    wait_ready(&admin, "Service", "sockets").await?;
    wait_served(&http, host).await?;

    let mut socket = connect(&http, host).await?;
    assert_eq!(echo(&mut socket, "hello").await?, "sockets-00001: hello");
    // The one instance takes one request at a time, and the WebSocket is that request while it is open: a plain
    // request waits at the revision...
    let client = client(&http, &[host])?;
    let waiting = tokio::spawn({
        let address = url(host, &http, "/");
        async move {
            let response = client.get(address).send().await?;
            Ok::<_, anyhow::Error>((response.status().as_u16(), response.text().await?))
        }
    });
    metric_line(&http, r#"sluice_serving_waiting{revision="default/sockets-00001"} 1"#.into()).await?;
    assert_eq!(echo(&mut socket, "still here").await?, "sockets-00001: still here");
    assert!(!waiting.is_finished(), "the plain request waited while the WebSocket was open");
    // ...until the WebSocket closes.
    socket.close(None).await?;
    assert_eq!(waiting.await??, (200, "Hello World!\n".to_string()));
    let stats: serde_json::Value = reqwest::Client::builder()
        .resolve(host, http.parse()?)
        .build()?
        .get(url(host, &http, "/stats"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(stats["max_concurrent"], 1, "the app never had the WebSocket and a request at once: {stats}");
    metric_line(&http, r#"sluice_serving_tunnels_ended_total{why="closed"} 1"#.into()).await?;
    Ok(())
}

#[tokio::test]
async fn a_tunnel_outlives_the_timeout_while_the_app_talks_and_is_cut_when_it_is_silent() -> Result<()> {
    let (_dir, node) = start_single_node(1, &[]).await?;
    let (admin, http) = (node.admin.clone(), node.http.clone());
    let host = "quiet.default.localhost";
    // An idle timeout well above the 200 ms between messages, so that a stall of the loaded machine is not
    // taken for silence.
    let timeouts = json!({"timeoutSeconds": 2, "idleTimeoutSeconds": 3});
    apply_resource(&admin, service("quiet", json!([]), json!({}), timeouts)).await?;
    wait_ready(&admin, "Service", "quiet").await?;
    wait_served(&http, host).await?;

    let mut socket = connect(&http, host).await?;
    let opened = Instant::now();
    // Talked over for longer than `timeoutSeconds` (2 s): a request would have been cut, the tunnel is not.
    let mut exchanged = 0;
    let last_sent = loop {
        // Taken before the message goes: the app's last byte, its echo, can only come after it.
        let sent = Instant::now();
        assert_eq!(echo(&mut socket, &format!("m{exchanged}")).await?, format!("quiet-00001: m{exchanged}"));
        exchanged += 1;
        if opened.elapsed() >= Duration::from_millis(4_000) {
            break sent;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // Silent now: cut after `idleTimeoutSeconds` (3 s) without a byte from the app.
    let ended = tokio::time::timeout(READY_WITHIN, socket.next()).await.context("the tunnel was never cut")?;
    let silent_for = last_sent.elapsed();
    assert!(!matches!(ended, Some(Ok(Message::Text(_)))), "nothing was sent after the last echo: {ended:?}");
    assert!(silent_for >= Duration::from_secs(3), "cut after {silent_for:?} of silence, before the idle timeout");
    metric_line(&http, r#"sluice_serving_tunnels_ended_total{why="idle"} 1"#.into()).await?;
    Ok(())
}
