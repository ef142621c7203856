//! Partitions without namespaces: a TCP proxy on every directed peer link (node a dialling node b), which
//! the harness can cut and heal. Each node is started with `--peer-route B=PROXY(a→b)` for every other node,
//! so all of its Raft and forwarding traffic to b goes through the proxy of that link; clients (the
//! harness) still reach every node directly, as with namespaces.
//!
//! A cut behaves like nftables dropping packets, not like a reset: bytes already in flight are held, not
//! lost; an open connection stops moving in both directions; a new connection is accepted but not
//! forwarded. On heal everything resumes where it stopped (the peers' own timeouts may have given up on it
//! in the meantime, as they would after a real partition).
//!
//! Differences from a real network that remain: a connection to a dead node is accepted by the proxy and
//! then closed (a reset after connecting, not "connection refused"), so the dialer may count it as an
//! indeterminate failure rather than a refused one; and a TCP connect to a cut link succeeds (to the proxy),
//! so connect-based reachability checks (admin Cluster Status's `connect`) see a cut peer as reachable.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ChaosError;

/// Bytes one direction of a relayed connection holds at a time.
const RELAY_BUFFER_BYTES: usize = 64 << 10;

/// One directed link's proxy: where the dialling node connects, and whether the link is up.
struct LinkProxy {
    listen: SocketAddr,
    up: watch::Sender<bool>,
    accept: JoinHandle<()>,
}

/// The proxies of every directed link between `n` nodes.
pub struct LinkProxies {
    links: BTreeMap<(usize, usize), LinkProxy>,
}

impl LinkProxies {
    /// Starts a proxy for every ordered pair (a, b), a ≠ b, forwarding to `peers[b]`. Must run inside a
    /// tokio runtime.
    pub fn start(peers: &[String]) -> Result<Self, ChaosError> {
        let mut links = BTreeMap::new();
        for (from, _) in peers.iter().enumerate() {
            for (to, target) in peers.iter().enumerate() {
                if from == to {
                    continue;
                }
                let listener = std::net::TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.set_nonblocking(true).map(|()| l))
                    .and_then(TcpListener::from_std)
                    .map_err(|e| ChaosError::io(format!("binding the proxy of link {from}→{to}"), e))?;
                let listen = listener.local_addr().map_err(|e| ChaosError::io("proxy address", e))?;
                let (up, _) = watch::channel(true);
                let accept = tokio::spawn(accept_loop(listener, target.clone(), up.subscribe()));
                links.insert((from, to), LinkProxy { listen, up, accept });
            }
        }
        Ok(Self { links })
    }

    /// Where node `from` dials node `to`.
    pub fn route(&self, from: usize, to: usize) -> Option<SocketAddr> {
        self.links.get(&(from, to)).map(|l| l.listen)
    }

    /// Cuts exactly the directed links `blocked` names (from → the nodes it cannot reach) and heals all others.
    pub fn set_blocked(&self, blocked: &BTreeMap<usize, std::collections::BTreeSet<usize>>) {
        for ((from, to), link) in &self.links {
            let cut = blocked.get(from).is_some_and(|cut| cut.contains(to));
            link.up.send_if_modified(|up| {
                let changed = *up == cut;
                *up = !cut;
                changed
            });
        }
    }
}

impl Drop for LinkProxies {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.accept.abort();
        }
    }
}

async fn accept_loop(listener: TcpListener, target: String, up: watch::Receiver<bool>) {
    loop {
        let Ok((inbound, _)) = listener.accept().await else {
            // Out of file descriptors, typically: back off instead of spinning on the error.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        tokio::spawn(relay(inbound, target.clone(), up.clone()));
    }
}

/// Waits until the link is up; false when the proxy is gone.
async fn wait_up(up: &mut watch::Receiver<bool>) -> bool {
    up.wait_for(|up| *up).await.is_ok()
}

async fn relay(inbound: TcpStream, target: String, mut up: watch::Receiver<bool>) {
    // A connection opened across a cut waits, like a SYN that gets no answer.
    if !wait_up(&mut up).await {
        return;
    }
    // A dead target: dropping the inbound connection refuses it, as the node's closed port would.
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return;
    };
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (inbound_read, inbound_write) = inbound.into_split();
    let (outbound_read, outbound_write) = outbound.into_split();
    // Either direction ending (EOF, reset) ends the connection.
    tokio::select! {
        _ = pump(inbound_read, outbound_write, up.clone()) => {}
        _ = pump(outbound_read, inbound_write, up) => {}
    }
}

async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut up: watch::Receiver<bool>) {
    let mut buffer = vec![0u8; RELAY_BUFFER_BYTES];
    loop {
        if !wait_up(&mut up).await {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => read,
        };
        // Bytes read just before a cut are held until the heal, not delivered across it.
        if !wait_up(&mut up).await || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;

    /// An echo server standing in for a node's peer port.
    async fn echo_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buffer = [0u8; 1024];
                    while let Ok(n) = stream.read(&mut buffer).await {
                        if n == 0 || stream.write_all(&buffer[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream, message: &[u8]) -> Vec<u8> {
        stream.write_all(message).await.expect("write");
        let mut answer = vec![0u8; message.len()];
        stream.read_exact(&mut answer).await.expect("read");
        answer
    }

    #[tokio::test]
    async fn a_cut_link_holds_bytes_until_healed_and_other_links_keep_flowing() {
        let peers = vec![echo_server().await, echo_server().await, echo_server().await];
        let proxies = LinkProxies::start(&peers).expect("proxies");
        let mut zero_to_one = TcpStream::connect(proxies.route(0, 1).expect("route")).await.expect("connect");
        let mut zero_to_two = TcpStream::connect(proxies.route(0, 2).expect("route")).await.expect("connect");
        assert_eq!(round_trip(&mut zero_to_one, b"before").await, b"before");

        proxies.set_blocked(&BTreeMap::from([(0, BTreeSet::from([1])), (1, BTreeSet::from([0]))]));
        // Across the cut: nothing comes back (the echo would answer at once if the bytes got through).
        zero_to_one.write_all(b"during").await.expect("write");
        let mut answer = [0u8; 6];
        let held = tokio::time::timeout(Duration::from_millis(300), zero_to_one.read_exact(&mut answer)).await;
        assert!(held.is_err(), "bytes crossed a cut link");
        // A new connection across the cut is accepted but carries nothing.
        let mut late = TcpStream::connect(proxies.route(1, 0).expect("route")).await.expect("connect");
        late.write_all(b"late").await.expect("write");
        // The other link is not affected.
        assert_eq!(round_trip(&mut zero_to_two, b"other").await, b"other");

        proxies.set_blocked(&BTreeMap::new());
        // Healed: the held bytes arrive, in order, then new ones.
        zero_to_one.read_exact(&mut answer).await.expect("held bytes after heal");
        assert_eq!(&answer, b"during");
        assert_eq!(round_trip(&mut zero_to_one, b"after").await, b"after");
        let mut late_answer = [0u8; 4];
        late.read_exact(&mut late_answer).await.expect("late connection after heal");
        assert_eq!(&late_answer, b"late");
    }

    #[tokio::test]
    async fn a_link_to_a_dead_node_refuses_the_connection() {
        let dead = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            listener.local_addr().expect("addr").to_string()
        };
        let peers = vec![echo_server().await, dead];
        let proxies = LinkProxies::start(&peers).expect("proxies");
        let mut stream = TcpStream::connect(proxies.route(0, 1).expect("route")).await.expect("connect");
        let mut buffer = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buffer)).await.expect("closed");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    }
}
