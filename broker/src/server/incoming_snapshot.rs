//! A snapshot a leader streams to this node, received into a `*.incoming` file of the group's snapshot
//! directory. In: the chunks of one `InstallSnapshot` call. Out: the whole file, for the state machine's
//! install to move into place; whatever is left of it once it is dropped is removed, so neither a transfer
//! cut short (the leader cancelled, timed out or went away) nor a refused one leaves a copy of the group's
//! state on disk until the next restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sluice_proto::raft::SnapshotChunk;
use tokio::io::AsyncWriteExt;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

/// How long a transfer may go without a chunk before the receiver gives it up: a leader that stalls
/// mid-stream must not hold the file (the state's size) and the task forever.
pub(crate) const CHUNK_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// A received (or still arriving) snapshot file; removed when dropped, unless the install moved it.
#[derive(Debug)]
pub(crate) struct IncomingSnapshot {
    path: PathBuf,
}

impl IncomingSnapshot {
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for IncomingSnapshot {
    fn drop(&mut self) {
        // Absent once an install moved it into place; a failure to remove it is cleaned at the next start
        // (`remove_partial_snapshots`).
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Writes `first` and the chunks after it into a new `*.incoming` file in `dir` and fsyncs it; gives up
/// when no chunk comes for `idle_timeout` ([`CHUNK_IDLE_TIMEOUT`] in service).
pub(crate) async fn receive_snapshot<S>(
    first: SnapshotChunk,
    mut rest: S,
    dir: &Path,
    idle_timeout: Duration,
) -> Result<IncomingSnapshot, Status>
where
    S: Stream<Item = Result<SnapshotChunk, Status>> + Unpin,
{
    let internal = |e: std::io::Error| Status::internal(format!("receiving a snapshot: {e}"));
    tokio::fs::create_dir_all(dir).await.map_err(internal)?;
    let incoming = IncomingSnapshot { path: dir.join(format!("{}-{}.incoming", std::process::id(), unique_suffix())) };
    let mut file = tokio::fs::File::create(&incoming.path).await.map_err(internal)?;
    file.write_all(&first.data).await.map_err(internal)?;
    loop {
        let next = tokio::time::timeout(idle_timeout, rest.next())
            .await
            .map_err(|_| Status::deadline_exceeded(format!("no snapshot chunk within {idle_timeout:?}")))?;
        let Some(chunk) = next else { break };
        file.write_all(&chunk?.data).await.map_err(internal)?;
    }
    file.sync_all().await.map_err(internal)?;
    Ok(incoming)
}

/// Distinct for every file this process creates (two transfers of one group may overlap: a leader that gave
/// one up sends again).
fn unique_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8]) -> SnapshotChunk {
        SnapshotChunk { group_id: 1, header: Default::default(), data: data.to_vec().into() }
    }

    fn files(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|entries| entries.map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn a_whole_transfer_is_kept_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rest = tokio_stream::iter(vec![Ok(chunk(b"bc")), Ok(chunk(b"d"))]);
        let incoming = receive_snapshot(chunk(b"a"), rest, dir.path(), CHUNK_IDLE_TIMEOUT).await.expect("received");
        assert_eq!(std::fs::read(incoming.path()).expect("read"), b"abcd");
        assert!(incoming.path().to_string_lossy().ends_with(".incoming"));
        drop(incoming);
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_transfer_that_fails_midway_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rest = tokio_stream::iter(vec![Ok(chunk(b"b")), Err(Status::cancelled("the leader gave up"))]);
        let error = receive_snapshot(chunk(b"a"), rest, dir.path(), CHUNK_IDLE_TIMEOUT).await.expect_err("cut short");
        assert_eq!(error.code(), tonic::Code::Cancelled);
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_receive_dropped_midway_leaves_no_file() {
        // The regression: a call the leader cancelled dropped the handler mid-transfer, and its `.incoming`
        // file (the group's whole state, once received) stayed on disk until the node restarted.
        let dir = tempfile::tempdir().expect("tempdir");
        let (chunks, rx) = tokio::sync::mpsc::channel(1);
        let path = dir.path().to_path_buf();
        let receiving = tokio::spawn(async move {
            receive_snapshot(chunk(b"a"), tokio_stream::wrappers::ReceiverStream::new(rx), &path, CHUNK_IDLE_TIMEOUT)
                .await
        });
        chunks.send(Ok(chunk(b"b"))).await.expect("taken");
        // The channel holds one chunk: this send returns once the receiver took "b", after it wrote "a".
        chunks.send(Ok(chunk(b"c"))).await.expect("taken");
        assert_eq!(files(dir.path()).len(), 1, "the transfer is under way");
        receiving.abort();
        assert!(receiving.await.expect_err("aborted").is_cancelled());
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }

    #[tokio::test]
    async fn a_stalled_transfer_is_given_up_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let stalled = tokio_stream::pending::<Result<SnapshotChunk, Status>>();
        let idle_timeout = Duration::from_millis(20);
        let error = receive_snapshot(chunk(b"a"), stalled, dir.path(), idle_timeout).await.expect_err("stalled");
        assert_eq!(error.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(files(dir.path()), Vec::<String>::new());
    }
}
