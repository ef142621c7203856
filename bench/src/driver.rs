//! What every system under test offers the harness: durable acknowledged publishes, and a subscriber that
//! sees what was published (for end-to-end latency). Sluice, NATS JetStream, RabbitMQ and the bare HTTP
//! ceiling all implement [`System`].
//!
//! Each message carries a 16-byte header (sequence number, intended send time in ns since the Unix epoch) so
//! that end-to-end latency is measured from the intended send time of the open-loop schedule.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;

pub(crate) type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Called with each delivered message's payload.
pub(crate) type OnMessage = Arc<dyn Fn(&[u8]) + Send + Sync>;

pub(crate) trait System: Send + Sync {
    /// E.g. `sluice-3`, `nats-jetstream-3`, `rabbitmq-quorum-3`.
    fn name(&self) -> String;
    /// E.g. `3 replicas, fsync before ack` — said in every row of the report.
    fn durability(&self) -> String;
    /// Publishes one message; resolves once the system acknowledged it (durably, as `durability` says).
    fn publish(&self, payload: Bytes) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Publishes `payloads` the way a producer that batches does with this system (one request, or all sent
    /// before any acknowledgement is awaited); resolves once every one was acknowledged.
    fn publish_batch(&self, payloads: Vec<Bytes>) -> BoxFuture<'_, anyhow::Result<()>>;
    /// User + system CPU time, in µs, used so far by the processes of this system (`None` when it runs
    /// inside the harness itself, as the HTTP ceiling does).
    fn cpu_us(&self) -> Option<u64>;
    /// Starts delivering every message published from now on to `on_message` (a durable consumer for the
    /// peers; a Trigger to an HTTP subscriber for Sluice). Messages are acknowledged after `on_message`.
    fn subscribe(&self, on_message: OnMessage) -> BoxFuture<'_, anyhow::Result<()>>;
    /// Stops every process and task it started (also called on errors; must not hang).
    fn stop(&mut self) -> BoxFuture<'_, ()>;
}

pub(crate) const HEADER_BYTES: usize = 16;

/// A payload of `size` bytes (at least the header) carrying `seq` and the intended send time.
pub(crate) fn payload(seq: u64, intended_unix_ns: u64, size: usize) -> Bytes {
    let mut bytes = vec![b'x'; size.max(HEADER_BYTES)];
    bytes[..8].copy_from_slice(&seq.to_be_bytes());
    bytes[8..16].copy_from_slice(&intended_unix_ns.to_be_bytes());
    Bytes::from(bytes)
}

/// The (sequence number, intended send time) of a payload made by [`payload`].
pub(crate) fn header(payload: &[u8]) -> Option<(u64, u64)> {
    let seq = u64::from_be_bytes(payload.get(..8)?.try_into().ok()?);
    let intended = u64::from_be_bytes(payload.get(8..16)?.try_into().ok()?);
    Some((seq, intended))
}

/// Subscribes, publishes `count` messages (half of them in one batch) and waits (bounded) until every one was delivered: the round trip
/// each system's own test runs.
#[cfg(test)]
pub(crate) async fn publish_and_receive(system: &dyn System, count: u64) -> anyhow::Result<()> {
    use std::time::Duration;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    system
        .subscribe(Arc::new(move |p: &[u8]| {
            let _ = tx.send(header(p).map(|(seq, _)| seq));
        }))
        .await?;
    let published = std::time::Instant::now();
    // The first half one by one, the rest as one batch: both ways a producer publishes.
    let half = count / 2;
    for seq in 0..half {
        system.publish(payload(seq, 0, 256)).await?;
    }
    system.publish_batch((half..count).map(|seq| payload(seq, 0, 256)).collect()).await?;
    eprintln!("{count} acknowledged publishes in {:.1?}", published.elapsed());
    let mut seen = std::collections::BTreeSet::new();
    tokio::time::timeout(Duration::from_secs(30), async {
        while (seen.len() as u64) < count {
            match rx.recv().await {
                Some(Some(seq)) => {
                    seen.insert(seq);
                }
                Some(None) => anyhow::bail!("message without header"),
                None => anyhow::bail!("subscriber ended"),
            }
        }
        Ok(())
    })
    .await
    .map_err(|_| anyhow::anyhow!("received {} of {count}", seen.len()))??;
    anyhow::ensure!(seen == (0..count).collect(), "received {seen:?}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        let p = payload(7, 123_456_789, 1024);
        assert_eq!(p.len(), 1024);
        assert_eq!(header(&p), Some((7, 123_456_789)));
        assert_eq!(payload(1, 2, 3).len(), HEADER_BYTES);
        assert_eq!(header(b"short"), None);
    }
}
