//! The run's network: one Linux network namespace per node, joined by a bridge in the root namespace, so
//! that links between nodes can be cut with nftables inside the nodes' namespaces; or, where namespaces
//! cannot be created, loopback with a TCP proxy on every directed peer link (`proxy.rs`) that the harness
//! cuts instead.
//!
//! Namespaces: a bridge `scb<pid>x<run>` with address `10.201.K.1/24` (K chosen per run among /24s no
//! interface uses, so parallel test binaries do not collide), namespace `sc<pid>x<run>-n<i>` per node with a
//! veth (`sv<pid>x<run>n<i>`) into the
//! bridge and address `10.201.K.(10+i)`. The harness (producers, subscribers, admin calls) uses the bridge
//! address, like Jepsen's clients: a partition drops traffic between nodes only. Everything is removed on
//! drop, and leftovers of dead runs (owner pid gone) are removed at start.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ChaosError;
use crate::proxy::LinkProxies;

/// Where one node listens.
#[derive(Clone, Debug)]
pub struct NodeAddrs {
    pub ip: String,
    pub peer: String,
    pub http: String,
    pub admin: String,
}

/// Which network the run uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NetworkKind {
    /// Namespaces if they can be created, else loopback.
    Auto,
    Namespaces,
    Loopback,
}

pub enum Network {
    Namespaces(Namespaces),
    Loopback(Loopback),
}

const PREFIX: &str = "sc";
const BRIDGE_PREFIX: &str = "scb";

/// Runs a command; its failure (or a non-zero exit) is an error naming it.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Result<String, ChaosError> {
    let command_line = format!("{program} {}", args.join(" "));
    let mut command = Command::new(program);
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().map_err(|e| ChaosError::io(format!("running {command_line}"), e))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        use std::io::Write;
        pipe.write_all(text.as_bytes()).map_err(|e| ChaosError::io(format!("writing to {command_line}"), e))?;
    }
    let output = child.wait_with_output().map_err(|e| ChaosError::io(format!("running {command_line}"), e))?;
    if !output.status.success() {
        return Err(ChaosError::Command {
            command: command_line,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl Network {
    /// Sets up the network for `nodes` nodes. With `Auto`, a failure to create namespaces falls back to
    /// loopback, and the reason is returned with it.
    pub fn setup(kind: NetworkKind, nodes: usize) -> Result<(Network, Option<String>), ChaosError> {
        match kind {
            NetworkKind::Loopback => Ok((Network::Loopback(Loopback::new(nodes)?), None)),
            NetworkKind::Namespaces => Ok((Network::Namespaces(Namespaces::create(nodes)?), None)),
            NetworkKind::Auto => match Namespaces::create(nodes) {
                Ok(ns) => Ok((Network::Namespaces(ns), None)),
                Err(e) => Ok((Network::Loopback(Loopback::new(nodes)?), Some(e.to_string()))),
            },
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Network::Namespaces(_) => "namespaces",
            Network::Loopback(_) => "loopback",
        }
    }

    /// The address the harness's own servers (subscribers) bind and clients come from.
    pub fn client_ip(&self) -> String {
        match self {
            Network::Namespaces(ns) => ns.bridge_ip().to_string(),
            Network::Loopback(_) => "127.0.0.1".to_string(),
        }
    }

    /// Node `i`'s addresses (0-based index; node id is i + 1).
    pub fn node(&self, i: usize) -> NodeAddrs {
        match self {
            Network::Namespaces(ns) => ns.addrs(i),
            Network::Loopback(lo) => lo.nodes[i].clone(),
        }
    }

    /// A command that runs `program` as node `i` (inside its namespace).
    pub fn command(&self, i: usize, program: &Path) -> Command {
        match self {
            Network::Namespaces(ns) => {
                let mut command = Command::new("ip");
                command.args(["netns", "exec", &ns.netns(i)]).arg(program);
                command
            }
            Network::Loopback(_) => Command::new(program),
        }
    }

    /// Extra `sluice node` arguments for node `i`: on loopback, its peer links go through the link proxies.
    pub fn node_args(&self, i: usize) -> Vec<String> {
        match self {
            Network::Namespaces(_) => Vec::new(),
            Network::Loopback(lo) => (0..lo.nodes.len())
                .filter_map(|j| lo.proxies.route(i, j).map(|via| format!("--peer-route={}={via}", lo.nodes[j].peer)))
                .collect(),
        }
    }

    /// Makes the set of cut links exactly `blocked` (node index → node indexes it cannot exchange packets
    /// with; give both directions). An empty map heals everything.
    pub fn set_blocked(&self, blocked: &BTreeMap<usize, BTreeSet<usize>>) -> Result<(), ChaosError> {
        match self {
            Network::Namespaces(ns) => ns.set_blocked(blocked),
            Network::Loopback(lo) => {
                lo.proxies.set_blocked(blocked);
                Ok(())
            }
        }
    }
}

/// Loopback: every node on 127.0.0.1 with ports from below the ephemeral range, and a proxy on every
/// directed peer link.
pub struct Loopback {
    nodes: Vec<NodeAddrs>,
    proxies: LinkProxies,
}

impl Loopback {
    fn new(nodes: usize) -> Result<Self, ChaosError> {
        let mut next = 20_000 + (std::process::id() * 131) % 10_000;
        let mut free = || loop {
            next = if next >= 32_000 { 20_000 } else { next + 1 };
            if std::net::TcpListener::bind(("127.0.0.1", next as u16)).is_ok() {
                return format!("127.0.0.1:{next}");
            }
        };
        let nodes: Vec<NodeAddrs> = (0..nodes)
            .map(|_| NodeAddrs { ip: "127.0.0.1".into(), peer: free(), http: free(), admin: free() })
            .collect();
        let proxies = LinkProxies::start(&nodes.iter().map(|n| n.peer.clone()).collect::<Vec<_>>())?;
        Ok(Self { nodes, proxies })
    }
}

/// Per-run namespaces and bridge.
pub struct Namespaces {
    tag: String,
    subnet: [u8; 3],
    nodes: usize,
}

impl Namespaces {
    fn create(nodes: usize) -> Result<Self, ChaosError> {
        run("ip", &["netns", "list"], None)?;
        run("nft", &["--version"], None)?;
        cleanup_stale();
        // Unique per run: the pid, and a counter for several runs in one process (test binaries).
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let run_number = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 10;
        let tag = format!("{}x{run_number}", std::process::id());
        let subnet = free_subnet(run_number)?;
        let ns = Self { tag, subnet, nodes };
        // From here on, Drop removes whatever was created.
        ns.build()?;
        Ok(ns)
    }

    fn bridge(&self) -> String {
        format!("{BRIDGE_PREFIX}{}", self.tag)
    }

    fn netns(&self, i: usize) -> String {
        format!("{PREFIX}{}-n{i}", self.tag)
    }

    fn veth(&self, i: usize) -> String {
        format!("sv{}n{i}", self.tag)
    }

    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(self.subnet[0], self.subnet[1], self.subnet[2], host)
    }

    fn bridge_ip(&self) -> Ipv4Addr {
        self.ip(1)
    }

    fn node_ip(&self, i: usize) -> Ipv4Addr {
        self.ip(10 + i as u8)
    }

    fn addrs(&self, i: usize) -> NodeAddrs {
        let ip = self.node_ip(i).to_string();
        NodeAddrs { peer: format!("{ip}:7070"), http: format!("{ip}:8080"), admin: format!("{ip}:9090"), ip }
    }

    fn build(&self) -> Result<(), ChaosError> {
        let bridge = self.bridge();
        let bridge_cidr = format!("{}/24", self.bridge_ip());
        run("ip", &["link", "add", &bridge, "type", "bridge"], None)?;
        run("ip", &["addr", "add", &bridge_cidr, "dev", &bridge], None)?;
        run("ip", &["link", "set", &bridge, "up"], None)?;
        for i in 0..self.nodes {
            let (netns, veth) = (self.netns(i), self.veth(i));
            let inner = format!("{veth}p");
            let cidr = format!("{}/24", self.node_ip(i));
            let _ = run("ip", &["netns", "del", &netns], None);
            run("ip", &["netns", "add", &netns], None)?;
            run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", &inner], None)?;
            run("ip", &["link", "set", &inner, "netns", &netns], None)?;
            run("ip", &["link", "set", &veth, "master", &bridge, "up"], None)?;
            run("ip", &["netns", "exec", &netns, "ip", "addr", "add", &cidr, "dev", &inner], None)?;
            run("ip", &["netns", "exec", &netns, "ip", "link", "set", &inner, "up"], None)?;
            run("ip", &["netns", "exec", &netns, "ip", "link", "set", "lo", "up"], None)?;
        }
        Ok(())
    }

    fn set_blocked(&self, blocked: &BTreeMap<usize, BTreeSet<usize>>) -> Result<(), ChaosError> {
        for i in 0..self.nodes {
            let peers: Vec<String> =
                blocked.get(&i).into_iter().flatten().map(|&j| self.node_ip(j).to_string()).collect();
            // Declaring the table first makes the delete succeed when it does not exist yet.
            let mut script = String::from("table inet chaos\ndelete table inet chaos\n");
            if !peers.is_empty() {
                let set = peers.join(", ");
                script.push_str(&format!(
                    "table inet chaos {{\n\
                     chain input {{ type filter hook input priority 0; policy accept; ip saddr {{ {set} }} drop; }}\n\
                     chain output {{ type filter hook output priority 0; policy accept; ip daddr {{ {set} }} drop; }}\n\
                     }}\n"
                ));
            }
            run("ip", &["netns", "exec", &self.netns(i), "nft", "-f", "-"], Some(&script))?;
        }
        Ok(())
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for i in 0..self.nodes {
            let _ = run("ip", &["netns", "del", &self.netns(i)], None);
            let _ = run("ip", &["link", "del", &self.veth(i)], None);
        }
        let _ = run("ip", &["link", "del", &self.bridge()], None);
    }
}

/// A /24 in 10.201.0.0/16 that no interface has an address in, starting from one derived from the pid and the
/// run number.
fn free_subnet(run_number: u32) -> Result<[u8; 3], ChaosError> {
    let used = run("ip", &["-o", "-4", "addr", "show"], None)?;
    let start = ((std::process::id() + run_number * 37) % 250) as u8;
    for k in 0..250u8 {
        let third = (start.wrapping_add(k) % 250) + 1;
        if !used.contains(&format!("10.201.{third}.")) {
            return Ok([10, 201, third]);
        }
    }
    Err(ChaosError::Setup("no free /24 in 10.201.0.0/16".into()))
}

/// Removes bridges and namespaces of runs whose process is gone (and the nodes still running in them).
fn cleanup_stale() {
    let dead = |pid: &str| {
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists()
    };
    if let Ok(links) = run("ip", &["-o", "link", "show", "type", "bridge"], None) {
        for line in links.lines() {
            let Some(name) = line.split(':').nth(1).map(str::trim) else { continue };
            if let Some((pid, _)) = name.strip_prefix(BRIDGE_PREFIX).and_then(|rest| rest.split_once('x'))
                && dead(pid)
            {
                let _ = run("ip", &["link", "del", name], None);
            }
        }
    }
    if let Ok(list) = run("ip", &["netns", "list"], None) {
        for line in list.lines() {
            let Some(name) = line.split_whitespace().next() else { continue };
            if let Some((pid, _)) = name.strip_prefix(PREFIX).and_then(|rest| rest.split_once('x'))
                && dead(pid)
            {
                // Nodes a killed harness left running in its namespace.
                if let Ok(pids) = run("ip", &["netns", "pids", name], None) {
                    for pid in pids.split_whitespace() {
                        let _ = run("kill", &["-9", pid], None);
                    }
                }
                let _ = run("ip", &["netns", "del", name], None);
            }
        }
    }
}
