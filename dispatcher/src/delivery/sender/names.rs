//! How a destination's host becomes addresses. In: the host of a URL; out: the addresses to connect to:
//! loopback for `*.localhost`, the node's own HTTP port for the cluster-local name of a Route it serves, the
//! system resolver for the rest.

use hyper_util::client::legacy::connect::dns::Name;
use sluice_broker::NodeRoutes;

/// Resolves every `*.localhost` name to loopback, as RFC 6761 asks and as browsers and curl do (the system
/// resolver here does not), so that a subscriber URL of a Knative Service served by this machine
/// (`http://hello.default.localhost:8080`) reaches the node's HTTP port; other names go to the system resolver.
#[derive(Clone, Copy)]
pub(super) struct LoopbackNames;

impl LoopbackNames {
    async fn lookup(host: String) -> std::io::Result<Vec<std::net::SocketAddr>> {
        if host == "localhost" || host.ends_with(".localhost") {
            return Ok(vec![std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))]);
        }
        Ok(tokio::net::lookup_host((host.as_str(), 0)).await?.collect())
    }

    fn host_of(name: &str) -> String {
        name.trim_end_matches('.').to_ascii_lowercase()
    }
}

impl reqwest::dns::Resolve for LoopbackNames {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = Self::host_of(name.as_str());
        Box::pin(async move {
            let addrs: reqwest::dns::Addrs = Box::new(Self::lookup(host).await?.into_iter());
            Ok(addrs)
        })
    }
}

/// hyper's connector's names: [`LoopbackNames`], and the cluster-local names of the Routes this node serves
/// ([`NodeRoutes`]: its own HTTP port). An address with a port keeps it for a URL without one (hyper's connector
/// replaces it only with a port the URL names).
#[derive(Clone)]
pub(super) struct PlainNames {
    pub(super) node: Option<NodeRoutes>,
}

impl tower::Service<Name> for PlainNames {
    type Response = std::vec::IntoIter<std::net::SocketAddr>;
    type Error = std::io::Error;
    type Future = futures::future::BoxFuture<'static, std::io::Result<Self::Response>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let host = LoopbackNames::host_of(name.as_str());
        if let Some(address) = self.node.as_ref().and_then(|node| node.address_of(&host)) {
            return Box::pin(std::future::ready(Ok(vec![address].into_iter())));
        }
        Box::pin(async move { Ok(LoopbackNames::lookup(host).await?.into_iter()) })
    }
}
