//! The harness's calls to a node's admin API (gRPC): what flows in is a node's admin address, what flows out
//! is what that node itself reports (its status, a stream's records and end, a Trigger's dispatch). Shared
//! by the run (`run.rs`) and the drain (`drain.rs`).

use std::time::Duration;

use sluice_proto::admin::cluster_client::ClusterClient;
use sluice_proto::admin::consumers_client::ConsumersClient;
use sluice_proto::admin::log_client::LogClient;
use sluice_proto::admin::{ConsumerRef, PartitionStatus, ReadRequest, StatusReply, StatusRequest};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

use crate::ChaosError;
use crate::history::LoggedEvent;

/// The namespace of the run's Broker and Triggers.
pub(crate) const NAMESPACE: &str = "default";

/// Polls `check` until it answers a value, at most `timeout`.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T, ChaosError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout { what: what.to_string(), after: timeout });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub(crate) async fn channel(admin: &str) -> Result<Channel, ChaosError> {
    channel_with_timeout(admin, Duration::from_secs(3)).await
}

/// A channel whose calls may take `timeout` (membership changes wait for replication; a call cut short by the
/// client is cancelled on the server, possibly half done).
pub(crate) async fn channel_with_timeout(admin: &str, timeout: Duration) -> Result<Channel, ChaosError> {
    let endpoint = Endpoint::from_shared(format!("http://{admin}"))
        .map_err(|e| ChaosError::Setup(format!("admin address {admin}: {e}")))?
        .connect_timeout(Duration::from_millis(500))
        .timeout(timeout);
    Ok(endpoint.connect().await?)
}

pub(crate) async fn status(admin: &str) -> Result<StatusReply, ChaosError> {
    Ok(ClusterClient::new(channel(admin).await?).status(StatusRequest {}).await?.into_inner())
}

/// Decodes stored records into (offset, source, id, type, arrival).
fn logged(records: Vec<sluice_proto::admin::Record>) -> Vec<LoggedEvent> {
    records
        .into_iter()
        .map(|r| match sluice_cloudevent::CloudEvent::decode(&r.payload) {
            Ok(event) => LoggedEvent {
                offset: r.offset,
                source: event.get_str("source").unwrap_or_default().to_string(),
                id: event.get_str("id").unwrap_or_default().to_string(),
                event_type: event.get_str("type").unwrap_or_default().to_string(),
                arrival_ms: r.arrival_ms,
            },
            Err(e) => LoggedEvent {
                offset: r.offset,
                source: "(undecodable)".into(),
                id: format!("{e}"),
                event_type: String::new(),
                arrival_ms: r.arrival_ms,
            },
        })
        .collect()
}

/// Every record of a stream's partition as applied on the node at `admin` (Log.Read reads the asked node's
/// own applied state; it never forwards).
pub(crate) async fn read_partition(admin: &str, stream: &str, partition: u32) -> Result<Vec<LoggedEvent>, ChaosError> {
    let mut client = LogClient::new(channel(admin).await?);
    let mut events: Vec<LoggedEvent> = Vec::new();
    let mut from = 0;
    loop {
        let reply = client
            .read(ReadRequest {
                stream: stream.to_string(),
                partition,
                from_offset: from,
                max_records: 5000,
                max_bytes: 0,
            })
            .await?
            .into_inner();
        let Some(last) = reply.records.last().map(|r| r.offset) else { return Ok(events) };
        from = last + 1;
        events.extend(logged(reply.records));
        if from >= reply.end_offset {
            return Ok(events);
        }
    }
}

pub(crate) async fn end_offset(admin: &str, stream: &str, partition: u32) -> Result<u64, ChaosError> {
    let mut client = LogClient::new(channel(admin).await?);
    let request =
        ReadRequest { stream: stream.to_string(), partition, from_offset: u64::MAX, max_records: 1, max_bytes: 0 };
    Ok(client.read(request).await?.into_inner().end_offset)
}

pub(crate) async fn committed_offsets(admin: &str, trigger: &str) -> Result<Vec<(u32, u64)>, ChaosError> {
    Ok(dispatch_status(admin, trigger).await?.iter().map(|p| (p.partition, p.committed_offset)).collect())
}

/// A Trigger's dispatch, per partition, as `admin` reports it.
pub(crate) async fn dispatch_status(admin: &str, trigger: &str) -> Result<Vec<PartitionStatus>, ChaosError> {
    let mut client = ConsumersClient::new(channel(admin).await?);
    let reference = ConsumerRef { kind: "trigger".into(), namespace: NAMESPACE.into(), name: trigger.into() };
    Ok(client.status(reference).await?.into_inner().partitions)
}
