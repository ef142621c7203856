//! The HTTP port's connection slots per client address: a connection accepted from an address that already
//! holds `--max-connections-per-address` is closed at once, so that one sender cannot take every slot of
//! `--max-connections` from the others. IPv6 addresses count per /64 (one host commonly holds a whole /64);
//! an IPv4 address mapped into IPv6 counts as the IPv4 address. Loopback addresses are not counted unless
//! asked (`--limit-loopback-connections`): the node's own dispatcher reaches the revisions it serves and its
//! own ingress over loopback, with a connection pool per host, and a sidecar proxy forwards every client from
//! loopback; both count against `--max-connections` only.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// TCP keepalive on every accepted connection: probes after this long without a byte either way...
pub(crate) const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...this far apart...
pub(crate) const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and this many unanswered before the kernel fails the connection: a peer that vanished (powered off, its
/// NAT entry dropped) is found within about a minute.
pub(crate) const KEEPALIVE_RETRIES: u32 = 3;

/// Turns TCP keepalive on for an accepted connection. HTTP connections have the idle watch, but a connection
/// taken over by an app (a WebSocket to a Knative Service) is only bytes: without keepalive, one whose client
/// vanished held its slot at the revision, its place among `--max-connections` and the instance's scale-in
/// for ever, unless the revision set `idleTimeoutSeconds`.
pub(crate) fn keep_alive(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}

/// What one client's connections count against: an IPv4 address, or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum AddressKey {
    V4(u32),
    V6Prefix64(u64),
}

impl AddressKey {
    pub(crate) fn of(address: IpAddr) -> Self {
        match address {
            IpAddr::V4(v4) => AddressKey::V4(u32::from(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => AddressKey::V4(u32::from(v4)),
                None => AddressKey::V6Prefix64(prefix_64(v6)),
            },
        }
    }
}

fn prefix_64(address: Ipv6Addr) -> u64 {
    (u128::from(address) >> 64) as u64
}

/// The connections open per address. The map holds one entry per address with a connection open, so it is
/// bounded by `--max-connections`.
pub(crate) struct AddressSlots {
    per_address: usize,
    limit_loopback: bool,
    open: Mutex<HashMap<AddressKey, usize>>,
}

/// One connection's slot (none for an address not counted); it is given back when dropped.
pub(crate) struct AddressSlot {
    slots: Arc<AddressSlots>,
    key: Option<AddressKey>,
}

impl AddressSlots {
    /// `per_address` of at least 1.
    pub(crate) fn new(per_address: usize, limit_loopback: bool) -> Arc<Self> {
        Arc::new(AddressSlots { per_address: per_address.max(1), limit_loopback, open: Mutex::new(HashMap::new()) })
    }

    /// A slot for a connection from `address`, or `None` when that address already holds its share.
    pub(crate) fn try_take(self: &Arc<Self>, address: IpAddr) -> Option<AddressSlot> {
        if address.to_canonical().is_loopback() && !self.limit_loopback {
            return Some(AddressSlot { slots: self.clone(), key: None });
        }
        let key = AddressKey::of(address);
        let mut open = self.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let count = open.entry(key).or_insert(0);
        if *count >= self.per_address {
            return None;
        }
        *count += 1;
        Some(AddressSlot { slots: self.clone(), key: Some(key) })
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.open.lock().map(|open| open.len()).unwrap_or(0)
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let Some(key) = self.key else { return };
        let mut open = self.slots.open.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(count) = open.get_mut(&key) {
            *count -= 1;
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    #[tokio::test]
    async fn an_accepted_connection_gets_tcp_keepalive() -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let _client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (accepted, _) = listener.accept().await?;
        let socket = socket2::SockRef::from(&accepted);
        assert!(!socket.keepalive()?, "off until asked");
        keep_alive(&accepted)?;
        assert!(socket.keepalive()?);
        assert_eq!(socket.tcp_keepalive_time()?, KEEPALIVE_IDLE);
        assert_eq!(socket.tcp_keepalive_interval()?, KEEPALIVE_INTERVAL);
        assert_eq!(socket.tcp_keepalive_retries()?, KEEPALIVE_RETRIES);
        Ok(())
    }

    #[test]
    fn addresses_count_per_ipv4_address_and_per_ipv6_64() {
        let same =
            [("10.0.0.1", "10.0.0.1"), ("::ffff:10.0.0.1", "10.0.0.1"), ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9")];
        for (a, b) in same {
            assert_eq!(AddressKey::of(ip(a)), AddressKey::of(ip(b)), "{a} and {b}");
        }
        let different = [("10.0.0.1", "10.0.0.2"), ("2001:db8:1:2::1", "2001:db8:1:3::1"), ("::1", "127.0.0.1")];
        for (a, b) in different {
            assert_ne!(AddressKey::of(ip(a)), AddressKey::of(ip(b)), "{a} and {b}");
        }
    }

    #[test]
    fn an_address_gets_its_share_and_no_more_and_slots_come_back_when_dropped() {
        let slots = AddressSlots::new(2, false);
        let first = slots.try_take(ip("10.0.0.1")).expect("first slot");
        let second = slots.try_take(ip("10.0.0.1")).expect("second slot");
        assert!(slots.try_take(ip("10.0.0.1")).is_none(), "a third connection from the same address");
        assert!(slots.try_take(ip("::ffff:10.0.0.1")).is_none(), "the same address, mapped into IPv6");
        let other = slots.try_take(ip("10.0.0.2")).expect("another address is not held back");
        drop(first);
        let again = slots.try_take(ip("10.0.0.1")).expect("a slot given back is taken again");
        drop((second, again, other));
        assert_eq!(slots.addresses(), 0, "no entry is left for an address with no connection");
    }

    #[test]
    fn a_share_of_zero_is_taken_as_one() {
        let slots = AddressSlots::new(0, false);
        let only = slots.try_take(ip("10.1.1.1")).expect("one slot");
        assert!(slots.try_take(ip("10.1.1.1")).is_none());
        drop(only);
    }

    #[test]
    fn loopback_is_counted_only_when_asked() {
        let exempt = AddressSlots::new(1, false);
        let held: Vec<_> = ["127.0.0.1", "127.0.0.1", "::1", "::1", "::ffff:127.0.0.1", "::ffff:127.0.0.1"]
            .into_iter()
            .map(|address| exempt.try_take(ip(address)).expect("loopback is not counted"))
            .collect();
        assert_eq!(exempt.addresses(), 0);
        drop(held);
        let counted = AddressSlots::new(1, true);
        for address in ["127.0.0.1", "::1", "::ffff:127.0.0.2"] {
            let first = counted.try_take(ip(address)).expect("one slot");
            assert!(counted.try_take(ip(address)).is_none(), "{address} is counted when asked");
            drop(first);
        }
    }
}
