//! The store against openraft's storage suite, and the state machine's own
//! behaviour: offsets, reads, the time index, snapshots.

use bytes::Bytes;
use futures::stream;
use openraft::storage::RaftStateMachine;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::vote::RaftLeaderId;
use openraft::{RaftSnapshotBuilder, StorageError};

use std::sync::atomic::{AtomicU64, Ordering};

use super::*;
use crate::command::{LogCommand, StreamAppend, TypeConfig};
use crate::store::keys::CF_EVENTS;
use crate::store::{StoredRecord, StreamExtent, StreamView};

mod replicas;

struct RocksBuilder;

impl StoreBuilder<TypeConfig, GroupLogStore, GroupStateMachine, tempfile::TempDir> for RocksBuilder {
    async fn build(&self) -> Result<(tempfile::TempDir, GroupLogStore, GroupStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let store = Store::open(dir.path())
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&std::io::Error::other(e.to_string()))))?;
        // A non-zero group id, so that key prefixes are exercised.
        let group = 3;
        let log = GroupLogStore::new(store.db().clone(), store.wal().clone(), group);
        let sm = GroupStateMachine::open(
            store.db().clone(),
            group,
            store.snapshot_dir(),
            store.dedupe_horizons().clone(),
            store.dedupe_memory(),
        )
        .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        // As in a running group: the current snapshot is asked for to send it, so its data is written.
        sm.raft_started().store(true, std::sync::atomic::Ordering::Release);
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite_passes() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(RocksBuilder).await
}

fn append(stream: &str, arrival_ms: u64, payloads: &[&str]) -> StreamAppend {
    StreamAppend {
        stream: stream.to_string(),
        arrival_ms,
        payloads: payloads.iter().map(|p| Bytes::copy_from_slice(p.as_bytes())).collect(),
        dedupe: None,
    }
}

fn entry(index: u64, command: LogCommand) -> crate::command::Entry {
    entry_in_term(1, index, command)
}

/// An entry appended by a leader of `term`.
fn entry_in_term(term: u64, index: u64, command: LogCommand) -> crate::command::Entry {
    let log_id = openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId::new(term, 1).to_committed(), index);
    openraft::Entry { log_id, payload: openraft::EntryPayload::Normal(command) }
}

/// `commands` as the entries after `index`, which moves past them.
fn numbered(index: &mut u64, commands: Vec<LogCommand>) -> Vec<crate::command::Entry> {
    commands
        .into_iter()
        .map(|command| {
            *index += 1;
            entry(*index, command)
        })
        .collect()
}

async fn apply(sm: &mut GroupStateMachine, entries: Vec<crate::command::Entry>) {
    let items = entries.into_iter().map(|e| Ok((e, None)));
    sm.apply(stream::iter(items)).await.expect("apply");
}

/// A state machine whose clock stands at the epoch: the tests' arrivals (a few seconds in) are all ahead of
/// it, so every window with dedupe is worth holding and none is released (see `open_at`).
fn open(dir: &std::path::Path, group: u32) -> (Store, GroupStateMachine) {
    open_at(dir, group, Arc::new(AtomicU64::new(0)))
}

/// A state machine whose clock reads `now_ms`, which the test moves.
fn open_at(dir: &std::path::Path, group: u32, now_ms: Arc<AtomicU64>) -> (Store, GroupStateMachine) {
    let store = Store::open(dir).expect("open store");
    let sm = state_machine_on(&store, group, now_ms);
    (store, sm)
}

fn state_machine_on(store: &Store, group: u32, now_ms: Arc<AtomicU64>) -> GroupStateMachine {
    let dedupe_memory = DedupeMemory {
        clock_ms: Arc::new(move || now_ms.load(Ordering::Relaxed)),
        idle_grace_ms: DEFAULT_IDLE_GRACE_MS,
    };
    GroupStateMachine::open(
        store.db().clone(),
        group,
        store.snapshot_dir(),
        store.dedupe_horizons().clone(),
        dedupe_memory,
    )
    .expect("open state machine")
}

/// What a follower receives, written to `path`.
async fn receive(snapshot: SnapshotData, path: &std::path::Path) {
    snapshot.save_to(path).await.expect("receive snapshot");
}

/// What a running group sends a follower: a snapshot is sent once one was built (the log was purged up to it).
async fn snapshot_to_send(source: &mut GroupStateMachine) -> Snapshot {
    source.get_snapshot_builder().await.build_snapshot().await.expect("build");
    source.raft_started().store(true, std::sync::atomic::Ordering::Release);
    source.get_current_snapshot().await.expect("current").expect("a snapshot")
}

/// The snapshot and meta files anywhere under `dir`, by name.
fn snapshot_files(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|ext| ext == "snap" || ext == "meta") {
                found.push(path.file_name().expect("name").to_string_lossy().into_owned());
            }
        }
    }
    found.sort();
    found
}

#[tokio::test]
async fn offsets_are_dense_per_stream_and_survive_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (_store, mut sm) = open(dir.path(), 1);
        apply(
            &mut sm,
            vec![
                entry(1, LogCommand::append(vec![append("a", 100, &["a0", "a1"]), append("b", 100, &["b0"])])),
                entry(2, LogCommand::append(vec![append("a", 200, &["a2"])])),
            ],
        )
        .await;
        let view = sm.view();
        assert_eq!(view.end_offset("a"), 3);
        assert_eq!(view.end_offset("b"), 1);
        assert_eq!(view.end_offset("never-written"), 0);
    }
    let (_store, sm) = open(dir.path(), 1);
    let view = sm.view();
    let batch = view.read("a", 0, 100, 1 << 20).expect("read");
    let payloads: Vec<_> = batch.records.iter().map(|r| (r.offset, r.payload.clone())).collect();
    assert_eq!(payloads, vec![(0, Bytes::from("a0")), (1, Bytes::from("a1")), (2, Bytes::from("a2"))]);
    assert_eq!(batch.end_offset, 3);
    assert_eq!(view.read("a", 1, 1, 1 << 20).expect("read").records.len(), 1, "max_records bounds a read");
    assert_eq!(view.read("a", 0, 100, 1).expect("read").records.len(), 1, "max_bytes bounds a read");
    assert!(view.read("a", 3, 100, 1 << 20).expect("read").records.is_empty());
}

#[tokio::test]
async fn arrival_times_never_go_back_and_index_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    apply(
        &mut sm,
        vec![
            entry(1, LogCommand::append(vec![append("s", 1_000, &["x0", "x1"])])),
            // A leader whose clock lags: applied as 2_000, not 1_500.
            entry(2, LogCommand::append(vec![append("s", 2_000, &["x2"])])),
            entry(3, LogCommand::append(vec![append("s", 1_500, &["x3"])])),
            entry(4, LogCommand::append(vec![append("s", 3_000, &["x4"])])),
        ],
    )
    .await;
    let view = sm.view();
    assert_eq!(view.offset_for_time("s", 0).expect("time"), 0);
    assert_eq!(view.offset_for_time("s", 1_000).expect("time"), 0);
    assert_eq!(view.offset_for_time("s", 1_001).expect("time"), 2);
    assert_eq!(view.offset_for_time("s", 2_000).expect("time"), 2);
    assert_eq!(view.offset_for_time("s", 2_001).expect("time"), 4);
    assert_eq!(view.offset_for_time("s", 9_999).expect("time"), 5, "past the end: the end offset");
    let records = view.read("s", 0, 10, 1 << 20).expect("read").records;
    let arrivals: Vec<u64> = records.iter().map(|r| r.arrival_ms).collect();
    assert_eq!(arrivals, vec![1_000, 1_000, 2_000, 2_000, 3_000]);
}

/// Regression: openraft builds a snapshot on a task of its own while the state machine installs one. A build
/// that ran in the middle of the install recorded a meta for the state being replaced and removed the received
/// file that a crash mid-install needs on restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_built_during_an_install_waits_and_records_the_installed_state() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (_source_store, mut source) = open(source_dir.path(), 2);
    apply(
        &mut source,
        vec![
            entry(1, LogCommand::append(vec![append("a", 10, &["a0"])])),
            entry(2, LogCommand::append(vec![append("a", 20, &["a1"])])),
            entry(3, LogCommand::append(vec![append("b", 30, &["b0"])])),
        ],
    )
    .await;
    let snapshot = snapshot_to_send(&mut source).await;

    let target_dir = tempfile::tempdir().expect("tempdir");
    let (target_store, mut target) = open(target_dir.path(), 2);
    apply(&mut target, vec![entry(1, LogCommand::append(vec![append("stale", 5, &["old0"])]))]).await;
    let copy = target_dir.path().join("incoming.snap.incoming");
    receive(snapshot.snapshot, &copy).await;

    // The install runs (here under the test's own hold of the lock, as the state machine's install takes it);
    // meanwhile openraft starts a build.
    let lock = target.snapshot_lock();
    let mut builder = target.get_snapshot_builder().await;
    let mut held = lock.hold();
    let build = tokio::spawn(async move { builder.build_snapshot().await });
    let dir = target_store.snapshot_dir().join("group-2");
    let (installed, _) =
        snapshot::install_snapshot(&mut held, target_store.db(), 2, &copy, &dir, &snapshot.meta).expect("install");
    drop(held);
    let built = build.await.expect("build task").expect("build");

    assert_eq!(installed.last_log_id.map(|id| id.index), Some(3));
    assert_eq!(built.meta, installed, "the build waited for the install and names the installed state");
    assert_eq!(snapshot_files(target_dir.path()), vec!["00000000000000000004.meta"]);
}

/// A received file that is not the snapshot openraft describes is refused before anything changes: the old
/// state stays whole, and builds go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_file_that_is_not_the_one_described_is_refused_before_any_change() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (_source_store, mut source) = open(source_dir.path(), 2);
    apply(&mut source, vec![entry(1, LogCommand::append(vec![append("a", 10, &["a0"])]))]).await;
    let snapshot = snapshot_to_send(&mut source).await;
    let target_dir = tempfile::tempdir().expect("tempdir");
    let (_target_store, mut target) = open(target_dir.path(), 2);
    apply(&mut target, vec![entry(1, LogCommand::append(vec![append("stale", 5, &["old0"])]))]).await;
    let copy = target_dir.path().join("incoming.snap.incoming");
    receive(snapshot.snapshot, &copy).await;
    let mut described = snapshot.meta.clone();
    described.last_log_id =
        Some(openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId::new(1, 1).to_committed(), 9));
    assert!(target.install_snapshot(&described, SnapshotData::File { path: copy }).await.is_err());
    assert_eq!(target.view().end_offset("stale"), 1, "nothing was replaced");
    let built = target.get_snapshot_builder().await.build_snapshot().await.expect("a build after the refusal");
    assert_eq!(built.meta.last_log_id.map(|id| id.index), Some(1));
}

/// An install that failed midway leaves a half-replaced state and the received file that a restart installs
/// again: a build after it must record nothing, and in particular must not remove that file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_snapshot_is_built_after_an_install_that_did_not_finish() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mut sm) = open(dir.path(), 2);
    apply(&mut sm, vec![entry(1, LogCommand::append(vec![append("a", 10, &["a0"])]))]).await;
    let received = store.snapshot_dir().join("group-2").join("00000000000000000009.snap");
    std::fs::write(&received, b"what a restart installs again").expect("write");
    let lock = sm.snapshot_lock();
    {
        // Stands for an install that began and then failed (an I/O error or a panic before it finished).
        let mut held = lock.hold();
        held.begin_install();
    }
    assert!(sm.get_snapshot_builder().await.build_snapshot().await.is_err(), "no meta over a half-installed state");
    assert!(received.exists(), "the received snapshot stays for the restart");
    assert_eq!(snapshot_files(dir.path()), vec!["00000000000000000009.snap"]);
}

#[tokio::test]
async fn a_snapshot_installs_the_same_streams_elsewhere() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (_source_store, mut source) = open(source_dir.path(), 2);
    apply(
        &mut source,
        vec![
            entry(1, LogCommand::append(vec![append("a", 10, &["a0", "a1"])])),
            entry(2, LogCommand::append(vec![append("b", 20, &["b0"])])),
        ],
    )
    .await;
    // Building records the meta only; a meta file can never be installed as a snapshot.
    let built = source.get_snapshot_builder().await.build_snapshot().await.expect("build");
    assert_eq!(built.meta.last_log_id.as_ref().map(|id| id.index), Some(2));
    let SnapshotData::File { path: built_path } = built.snapshot else { panic!("a build records a file") };
    assert_eq!(built_path.extension().and_then(|e| e.to_str()), Some("meta"));
    assert!(SnapshotData::File { path: built_path.clone() }.into_chunks().is_err(), "a meta file has no data to send");
    // Once the group runs, asking for the current snapshot (a follower needs it) opens the state as of now;
    // nothing is written to the source's disk.
    source.raft_started().store(true, std::sync::atomic::Ordering::Release);
    let snapshot = source.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(snapshot.meta, built.meta);
    assert!(matches!(snapshot.snapshot, SnapshotData::Live(_)));
    assert_eq!(snapshot_files(source_dir.path()), vec!["00000000000000000003.meta"]);

    let target_dir = tempfile::tempdir().expect("tempdir");
    let (_target_store, mut target) = open(target_dir.path(), 2);
    // Data the snapshot must replace: a stream with the id that `a` has in the snapshot, and as many records,
    // in the readers' tail too.
    apply(&mut target, vec![entry(1, LogCommand::append(vec![append("stale", 5, &["old0", "old1"])]))]).await;
    let copy = target_dir.path().join("incoming.snap.incoming");
    receive(snapshot.snapshot, &copy).await;
    let meta_only = target_dir.path().join("meta-only.snap.incoming");
    std::fs::copy(&built_path, &meta_only).expect("copy meta");
    assert!(
        target.install_snapshot(&built.meta, SnapshotData::File { path: meta_only }).await.is_err(),
        "a meta file is refused, not installed as an empty state"
    );
    assert_eq!(target.view().end_offset("stale"), 2, "nothing was replaced");
    target.install_snapshot(&snapshot.meta, SnapshotData::File { path: copy }).await.expect("install");
    assert_eq!(
        snapshot_files(target_dir.path()),
        vec!["00000000000000000003.meta"],
        "once installed, the received copy is replaced by its meta"
    );

    let view = target.view();
    assert_eq!(view.end_offset("stale"), 0, "the snapshot replaced the old state");
    assert_eq!(view.end_offset("a"), 2);
    let a = view.read("a", 0, 10, 1 << 20).expect("read").records;
    assert_eq!(a.iter().map(|r| r.payload.clone()).collect::<Vec<_>>(), [Bytes::from("a0"), Bytes::from("a1")]);
    let b = view.read("b", 0, 10, 1 << 20).expect("read").records;
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].payload, Bytes::from("b0"));
    let (applied, _) = target.applied_state().await.expect("applied");
    assert_eq!(applied.map(|id| id.index), Some(2));
    let current = target.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(current.meta, snapshot.meta);

    // New appends continue the installed streams.
    apply(&mut target, vec![entry(3, LogCommand::append(vec![append("a", 30, &["a2"])]))]).await;
    assert_eq!(target.view().end_offset("a"), 3);
}

#[tokio::test]
async fn a_reader_that_keeps_up_is_answered_from_memory_with_what_rocksdb_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let s3 = Bytes::from("s3");
    let entries = vec![
        entry(1, LogCommand::append(vec![append("s", 10, &["s0", "s1"]), append("t", 10, &["t0"])])),
        entry(2, LogCommand::append(vec![append("s", 20, &["s2"])])),
        entry(3, LogCommand::Trim { stream: "s".into(), before_offset: 1 }),
        entry(
            4,
            LogCommand::append(vec![StreamAppend {
                payloads: vec![s3.clone(), Bytes::from("s4")],
                ..append("s", 30, &[])
            }]),
        ),
    ];
    let reads = |view: &StreamView| -> Vec<Vec<StoredRecord>> {
        let mut reads = Vec::new();
        for (stream, end) in [("s", 6), ("t", 2)] {
            for from in 0..end {
                for (max_records, max_bytes) in [(100, 1 << 20), (1, 1 << 20), (100, 1)] {
                    reads.push(view.read(stream, from, max_records, max_bytes).expect("read").records);
                }
            }
        }
        reads
    };
    let from_memory = {
        let (_store, mut sm) = open(dir.path(), 1);
        apply(&mut sm, entries).await;
        let view = sm.view();
        let s3_read = view.read("s", 3, 1, 1 << 20).expect("read").records;
        assert_eq!(s3_read[0].payload.as_ptr(), s3.as_ptr(), "the applied payload itself, not a copy");
        reads(&view)
    };
    // Reopened, the tail is empty: every read is RocksDB's.
    let (_store, sm) = open(dir.path(), 1);
    let view = sm.view();
    assert_ne!(view.read("s", 3, 1, 1 << 20).expect("read").records[0].payload.as_ptr(), s3.as_ptr());
    assert_eq!(from_memory, reads(&view));
    assert_eq!(from_memory[0].iter().map(|r| r.offset).collect::<Vec<_>>(), [1, 2, 3, 4], "trimmed below 1");
}

/// A group 2 with two records in stream `a`, applied at index 1 and built, running, and the snapshot a follower
/// would be sent.
async fn source_with_snapshot(dir: &std::path::Path) -> (Store, GroupStateMachine, Snapshot) {
    let (store, mut source) = open(dir, 2);
    apply(&mut source, vec![entry(1, LogCommand::append(vec![append("a", 10, &["a0", "a1"])]))]).await;
    let snapshot = snapshot_to_send(&mut source).await;
    (store, source, snapshot)
}

#[tokio::test]
async fn a_received_snapshot_is_checked_whole_before_it_is_installed() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (_source_store, _source, snapshot) = source_with_snapshot(source_dir.path()).await;
    let received = source_dir.path().join("received");
    receive(snapshot.snapshot, &received).await;
    assert_eq!(check_snapshot_file(&received, 2).expect("whole"), snapshot.meta);
    assert!(check_snapshot_file(&received, 3).is_err(), "another group's keys");

    let whole = std::fs::read(&received).expect("read");
    let cut = source_dir.path().join("cut");
    for len in (0..whole.len()).step_by(3).chain([whole.len() - 1]) {
        std::fs::write(&cut, &whole[..len]).expect("write");
        assert!(check_snapshot_file(&cut, 2).is_err(), "cut after {len} of {} bytes", whole.len());
    }
    std::fs::write(&cut, [&whole[..], b"x"].concat()).expect("write");
    assert!(check_snapshot_file(&cut, 2).is_err(), "a byte after the end marker");
}

#[tokio::test]
async fn a_snapshot_sent_is_the_state_as_of_when_it_was_opened() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (source_store, mut source, snapshot) = source_with_snapshot(source_dir.path()).await;
    assert_eq!(snapshot.meta.last_log_id.as_ref().map(|id| id.index), Some(1));
    // Applied while the snapshot waits to be sent: not part of it, or meta and data would disagree.
    apply(&mut source, vec![entry(2, LogCommand::append(vec![append("a", 20, &["a2"]), append("b", 20, &["b0"])]))])
        .await;

    let target_dir = tempfile::tempdir().expect("tempdir");
    let (_target_store, mut target) = open(target_dir.path(), 2);
    let copy = target_dir.path().join("incoming.snap.incoming");
    receive(snapshot.snapshot, &copy).await;
    target.install_snapshot(&snapshot.meta, SnapshotData::File { path: copy }).await.expect("install");
    assert_eq!(target.view().end_offset("a"), 2);
    assert_eq!(target.view().end_offset("b"), 0);
    let (applied, _) = target.applied_state().await.expect("applied");
    assert_eq!(applied.map(|id| id.index), Some(1));

    // Each snapshot is as of its own opening, one dropped unread included.
    drop(source.get_current_snapshot().await.expect("current"));
    let later = source.get_current_snapshot().await.expect("current").expect("a snapshot");
    assert_eq!(later.meta.last_log_id.as_ref().map(|id| id.index), Some(2));

    // Cut into 7-byte chunks (records across chunks), the same bytes as in the default chunks.
    let (small_meta, small) = snapshot::open_live(source_store.db().clone(), 2, 7).await.expect("open");
    assert_eq!(small_meta, later.meta);
    let mut chunks = SnapshotData::Live(small).into_chunks().expect("chunks");
    let mut small_bytes = Vec::new();
    while let Some(chunk) = chunks.recv().await {
        let chunk = chunk.expect("chunk");
        assert!(chunk.len() <= 7);
        small_bytes.extend(chunk);
    }
    let whole = target_dir.path().join("whole");
    receive(later.snapshot, &whole).await;
    assert_eq!(small_bytes, std::fs::read(&whole).expect("read"));
}

#[test]
fn raft_messages_round_trip_through_postcard() {
    use crate::command::{decode, encode};
    let e = entry(7, LogCommand::append(vec![append("s", 1, &["payload"])]));
    let back: crate::command::Entry = decode(&encode(&e).expect("encode")).expect("decode");
    assert_eq!(back, e);
    let vote = openraft::impls::Vote::new(3, 2);
    let request = openraft::raft::VoteRequest::<TypeConfig>::new(vote, Some(e.log_id));
    let back: openraft::raft::VoteRequest<TypeConfig> = decode(&encode(&request).expect("encode")).expect("decode");
    assert_eq!(back.vote, request.vote);
}

#[tokio::test]
async fn trimming_moves_the_start_and_keeps_offsets() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    apply(
        &mut sm,
        vec![
            entry(1, LogCommand::append(vec![append("s", 1_000, &["aa", "bb"])])),
            entry(2, LogCommand::append(vec![append("s", 2_000, &["ccc"])])),
            entry(3, LogCommand::Trim { stream: "s".into(), before_offset: 2 }),
            // Idempotent, and never beyond the end.
            entry(4, LogCommand::Trim { stream: "s".into(), before_offset: 1 }),
        ],
    )
    .await;
    let view = sm.view();
    assert_eq!(view.extent("s"), StreamExtent { start_offset: 2, end_offset: 3, retained_bytes: 3 });
    let records = view.read("s", 0, 10, 1 << 20).expect("read").records;
    assert_eq!(records.iter().map(|r| r.offset).collect::<Vec<_>>(), vec![2], "reads start at the new start");
    assert_eq!(view.offset_for_time("s", 0).expect("time"), 2, "times before the start answer the start");
    apply(&mut sm, vec![entry(5, LogCommand::append(vec![append("s", 3_000, &["d"])]))]).await;
    assert_eq!(view.extent("s"), StreamExtent { start_offset: 2, end_offset: 4, retained_bytes: 4 });
    apply(&mut sm, vec![entry(6, LogCommand::Trim { stream: "s".into(), before_offset: 99 })]).await;
    assert_eq!(view.extent("s"), StreamExtent { start_offset: 4, end_offset: 4, retained_bytes: 0 });
}

#[tokio::test]
async fn a_streams_state_after_several_appends_and_a_trim_in_one_apply_survives_reopen() {
    // The apply writes each stream's state once, as its last command left it.
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = StreamExtent { start_offset: 2, end_offset: 5, retained_bytes: 4 };
    {
        let (_store, mut sm) = open(dir.path(), 1);
        apply(
            &mut sm,
            vec![
                entry(1, LogCommand::append(vec![append("s", 1_000, &["aa", "bb"]), append("t", 1_000, &["t0"])])),
                entry(2, LogCommand::append(vec![append("s", 2_000, &["c"]), append("s", 2_000, &["d"])])),
                entry(3, LogCommand::Trim { stream: "s".into(), before_offset: 2 }),
                entry(4, LogCommand::append(vec![append("s", 3_000, &["ee"])])),
            ],
        )
        .await;
        assert_eq!(sm.view().extent("s"), expected);
    }
    let (_store, mut sm) = open(dir.path(), 1);
    assert_eq!(sm.view().extent("s"), expected);
    assert_eq!(sm.view().extent("t"), StreamExtent { start_offset: 0, end_offset: 1, retained_bytes: 2 });
    // Offsets go on from the end written, not from an earlier append's.
    apply(&mut sm, vec![entry(5, LogCommand::append(vec![append("s", 4_000, &["f"])]))]).await;
    let offsets: Vec<u64> =
        sm.view().read("s", 0, 10, 1 << 20).expect("read").records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, vec![2, 3, 4, 5]);
}

/// A column family's blob files (those of the current version: obsolete ones are not counted).
fn blob_files(store: &Store, name: &str) -> u64 {
    let handle = cf(store.db(), name).expect("cf");
    store.db().property_int_value_cf(handle, "rocksdb.num-blob-files").expect("property").expect("known property")
}

#[tokio::test]
async fn event_bytes_live_in_blob_files_that_go_once_their_events_are_trimmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mut sm) = open(dir.path(), 1);
    let large: Vec<String> = (0..200).map(|i| format!("{i:04}{}", "e".repeat(1020))).collect();
    let large: Vec<&str> = large.iter().map(String::as_str).collect();
    apply(&mut sm, vec![entry(1, LogCommand::append(vec![append("s", 1_000, &large), append("t", 1_000, &["tiny"])]))])
        .await;
    let events = cf(store.db(), CF_EVENTS).expect("cf");
    store.db().flush_cf(events).expect("flush");
    assert_eq!(blob_files(&store, CF_EVENTS), 1, "the flush wrote the large events to a blob file");
    let view = sm.view();
    let records = view.read("s", 0, 1_000, 1 << 30).expect("read").records;
    assert_eq!(records.len(), 200);
    assert!(records.iter().zip(&large).all(|(r, want)| r.payload.as_ref() == want.as_bytes()), "read back whole");
    assert_eq!(view.read("t", 0, 10, 1 << 20).expect("read").records[0].payload.as_ref(), b"tiny");

    apply(&mut sm, vec![entry(2, LogCommand::Trim { stream: "s".into(), before_offset: 200 })]).await;
    store.db().flush_cf(events).expect("flush");
    store.db().compact_range_cf(events, None::<&[u8]>, None::<&[u8]>);
    assert_eq!(blob_files(&store, CF_EVENTS), 0, "every blob in the file was trimmed: the file went");
    assert_eq!(view.read("t", 0, 10, 1 << 20).expect("read").records[0].payload.as_ref(), b"tiny", "inline");
}

fn commit(cursor: &str, offset: u64, reset: bool) -> crate::command::OffsetCommit {
    crate::command::OffsetCommit { cursor: cursor.to_string(), offset, reset }
}

#[tokio::test]
async fn committed_offsets_only_move_forward_unless_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    let view = sm.view();
    assert_eq!(view.committed_offset("t1").expect("read"), None);
    apply(&mut sm, vec![entry(1, LogCommand::CommitOffsets(vec![commit("t1", 10, false), commit("t2", 3, false)]))])
        .await;
    assert_eq!(view.committed_offset("t1").expect("read"), Some(10));
    // A late commit (an old leader's, or a retry) does not move the cursor back.
    apply(&mut sm, vec![entry(2, LogCommand::CommitOffsets(vec![commit("t1", 7, false)]))]).await;
    assert_eq!(view.committed_offset("t1").expect("read"), Some(10));
    apply(&mut sm, vec![entry(3, LogCommand::CommitOffsets(vec![commit("t1", 12, false)]))]).await;
    assert_eq!(view.committed_offset("t1").expect("read"), Some(12));
    // Reset sets exactly the given offset (operator replay).
    apply(&mut sm, vec![entry(4, LogCommand::CommitOffsets(vec![commit("t1", 2, true)]))]).await;
    assert_eq!(view.committed_offset("t1").expect("read"), Some(2));
    assert_eq!(view.committed_offsets().expect("read"), vec![("t1".to_string(), 2), ("t2".to_string(), 3)]);
}

#[tokio::test]
async fn deleted_offsets_are_gone_and_absent_ones_are_fine() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    apply(
        &mut sm,
        vec![
            entry(1, LogCommand::CommitOffsets(vec![commit("a", 5, false), commit("b", 6, false)])),
            entry(2, LogCommand::DeleteOffsets(vec!["a".to_string(), "never".to_string()])),
        ],
    )
    .await;
    let view = sm.view();
    assert_eq!(view.committed_offset("a").expect("read"), None);
    assert_eq!(view.committed_offsets().expect("read"), vec![("b".to_string(), 6)]);
    // A cursor committed again after deletion starts from the new commit.
    apply(&mut sm, vec![entry(3, LogCommand::CommitOffsets(vec![commit("a", 1, false)]))]).await;
    assert_eq!(view.committed_offset("a").expect("read"), Some(1));
}

#[tokio::test]
async fn commits_in_one_apply_batch_see_each_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    apply(
        &mut sm,
        vec![
            entry(1, LogCommand::CommitOffsets(vec![commit("c", 9, false)])),
            // Lower than the staged 9, not the (absent) value on disk: stays 9.
            entry(2, LogCommand::CommitOffsets(vec![commit("c", 4, false), commit("d", 1, false)])),
            entry(3, LogCommand::DeleteOffsets(vec!["d".to_string()])),
            entry(4, LogCommand::CommitOffsets(vec![commit("d", 2, false)])),
        ],
    )
    .await;
    let view = sm.view();
    assert_eq!(view.committed_offset("c").expect("read"), Some(9));
    assert_eq!(view.committed_offset("d").expect("read"), Some(2));
    apply(
        &mut sm,
        vec![
            entry(5, LogCommand::CommitOffsets(vec![commit("c", 1, true)])),
            entry(6, LogCommand::CommitOffsets(vec![commit("c", 3, false)])),
        ],
    )
    .await;
    assert_eq!(view.committed_offset("c").expect("read"), Some(3), "a reset, then a commit above it");
}

/// Regression (review of session 67): a deposed leader's dispatcher could still send a forward-only commit
/// (forwarded to the new leader) that was appended in the new leader's term after that leader's dispatcher had
/// reset the cursor for an operator's replay; it moved the cursor forward again, and the replayed events were
/// skipped after the next failover. Fenced by the term its dispatcher started in, it is not written.
#[tokio::test]
async fn a_commit_fenced_by_an_earlier_term_does_not_undo_a_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    let in_term =
        |term, offset| LogCommand::CommitOffsetsInTerm { term, leader: 1, commits: vec![commit("t", offset, false)] };
    apply(&mut sm, vec![entry_in_term(1, 1, in_term(1, 100))]).await;
    assert_eq!(sm.view().committed_offset("t").expect("read"), Some(100), "in its own term: written");
    // The leader of term 2 replays from 50.
    apply(&mut sm, vec![entry_in_term(2, 2, LogCommand::CommitOffsets(vec![commit("t", 50, true)]))]).await;
    // Term 1's dispatcher's last commit lands now.
    apply(&mut sm, vec![entry_in_term(2, 3, in_term(1, 150))]).await;
    assert_eq!(sm.view().committed_offset("t").expect("read"), Some(50), "stale: the replay stands");
    apply(&mut sm, vec![entry_in_term(2, 4, in_term(2, 60))]).await;
    assert_eq!(sm.view().committed_offset("t").expect("read"), Some(60), "term 2's own commit goes on from it");
    // Another node's dispatcher of the same term (openraft's leader ids allow one leader per node and term).
    let other_leader = LogCommand::CommitOffsetsInTerm { term: 2, leader: 2, commits: vec![commit("t", 90, false)] };
    apply(&mut sm, vec![entry_in_term(2, 5, other_leader)]).await;
    assert_eq!(sm.view().committed_offset("t").expect("read"), Some(60), "appended by node 1, not node 2: stale");
    // Unfenced, as before (and as a cluster still being upgraded writes it), it would have undone the replay.
    apply(&mut sm, vec![entry_in_term(2, 6, LogCommand::CommitOffsets(vec![commit("t", 150, false)]))]).await;
    assert_eq!(sm.view().committed_offset("t").expect("read"), Some(150));
}

#[tokio::test]
async fn committed_offsets_survive_reopen_and_stay_in_their_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, mut sm) = open(dir.path(), 1);
        apply(&mut sm, vec![entry(1, LogCommand::CommitOffsets(vec![commit("t", 42, false)]))]).await;
        let mut other = GroupStateMachine::open(
            store.db().clone(),
            2,
            store.snapshot_dir(),
            store.dedupe_horizons().clone(),
            store.dedupe_memory(),
        )
        .expect("open group 2");
        apply(&mut other, vec![entry(1, LogCommand::CommitOffsets(vec![commit("t", 7, false)]))]).await;
    }
    let (store, sm) = open(dir.path(), 1);
    assert_eq!(sm.view().committed_offsets().expect("read"), vec![("t".to_string(), 42)]);
    let other = GroupStateMachine::open(
        store.db().clone(),
        2,
        store.snapshot_dir(),
        store.dedupe_horizons().clone(),
        store.dedupe_memory(),
    )
    .expect("open group 2");
    assert_eq!(other.view().committed_offset("t").expect("read"), Some(7));
}

#[tokio::test]
async fn committed_offsets_travel_with_snapshots() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (_source_store, mut source) = open(source_dir.path(), 2);
    apply(
        &mut source,
        vec![
            entry(1, LogCommand::append(vec![append("a", 10, &["a0"])])),
            entry(2, LogCommand::CommitOffsets(vec![commit("t", 1, false)])),
        ],
    )
    .await;
    let snapshot = snapshot_to_send(&mut source).await;
    let target_dir = tempfile::tempdir().expect("tempdir");
    let (_target_store, mut target) = open(target_dir.path(), 2);
    apply(&mut target, vec![entry(1, LogCommand::CommitOffsets(vec![commit("stale", 5, false)]))]).await;
    let copy = target_dir.path().join("incoming.snap.incoming");
    receive(snapshot.snapshot, &copy).await;
    target.install_snapshot(&snapshot.meta, SnapshotData::File { path: copy }).await.expect("install");
    assert_eq!(target.view().committed_offsets().expect("read"), vec![("t".to_string(), 1)]);
}

fn dedupe_append(arrival_ms: u64, keys: &[&str]) -> StreamAppend {
    StreamAppend {
        stream: "d".to_string(),
        arrival_ms,
        payloads: keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect(),
        dedupe: Some(crate::command::Dedupe {
            window_ms: 100,
            keys: keys.iter().map(|k| Bytes::copy_from_slice(k.as_bytes())).collect(),
        }),
    }
}

fn with_window(mut append: StreamAppend, window_ms: u64) -> StreamAppend {
    if let Some(dedupe) = append.dedupe.as_mut() {
        dedupe.window_ms = window_ms;
    }
    append
}

fn count(store: &Store, name: &str) -> usize {
    store.db().iterator_cf(cf(store.db(), name).expect("cf"), rocksdb::IteratorMode::Start).count()
}

#[tokio::test]
async fn a_key_is_a_duplicate_within_the_window_and_new_past_it_with_no_write_per_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (store, mut sm) = open(dir.path(), 2);
    // Many keys, each pushed out of the window by later appends.
    let mut index = 1;
    for round in 0..50u64 {
        let keys: Vec<String> = (0..10).map(|k| format!("r{round}k{k}")).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        apply(&mut sm, vec![entry(index, LogCommand::append(vec![dedupe_append(1_000 + round * 50, &keys)]))]).await;
        index += 1;
    }
    assert_eq!(sm.view().end_offset("d"), 500);
    // Within the window: a duplicate is not stored.
    apply(&mut sm, vec![entry(index, LogCommand::append(vec![dedupe_append(3_460, &["r49k0"])]))]).await;
    index += 1;
    assert_eq!(sm.view().end_offset("d"), 500, "r49k0 was seen 10 ms ago");
    // Past the window: the key was forgotten, so the same id is stored again.
    apply(&mut sm, vec![entry(index, LogCommand::append(vec![dedupe_append(3_000, &["r0k0"])]))]).await;
    assert_eq!(sm.view().end_offset("d"), 501, "r0k0 expired long ago");
    // Only what the window holds is in memory: rounds 48 (3_400 ms) and 49 (3_450 ms), and r0k0 again.
    assert_eq!(sm.dedupe_keys(), 21);
    // The keys are not written one by one: each append's fingerprints ride on its one time-index entry.
    assert_eq!(count(&store, crate::store::keys::CF_DEDUPE), 0);
    assert_eq!(count(&store, crate::store::keys::CF_TIME_INDEX), 51);
}

/// The readers' tail holds an applied payload itself (it may be a slice of the message its entry came in),
/// except for an append that dropped duplicates: its records' payloads are copies there, so that they never keep
/// alive a message the tail does not count. Regression (review of session 70).
#[tokio::test]
async fn the_tail_copies_the_records_of_an_append_that_dropped_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 2);
    apply(&mut sm, vec![entry(1, LogCommand::append(vec![dedupe_append(1_000, &["a"])]))]).await;
    let fresh = dedupe_append(1_010, &["b", "c"]);
    let fresh_payload = fresh.payloads[0].clone();
    apply(&mut sm, vec![entry(2, LogCommand::append(vec![fresh]))]).await;
    let mixed = dedupe_append(1_020, &["a", "d"]);
    let mixed_payload = mixed.payloads[1].clone();
    apply(&mut sm, vec![entry(3, LogCommand::append(vec![mixed]))]).await;
    let records = sm.view().read("d", 0, 100, 1 << 20).expect("read").records;
    assert_eq!(records.iter().map(|r| r.payload.as_ref()).collect::<Vec<_>>(), [b"a", b"b", b"c", b"d"]);
    assert_eq!(records[1].payload.as_ptr(), fresh_payload.as_ptr(), "no duplicate dropped: the payload itself");
    assert_ne!(records[3].payload.as_ptr(), mixed_payload.as_ptr(), "a duplicate dropped: a copy");
}

/// The window is rebuilt at open from the time index: what was within it still catches a duplicate, what
/// was behind the horizon stays forgotten.
#[tokio::test]
async fn after_a_reopen_the_dedupe_window_is_rebuilt() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (_store, mut sm) = open(dir.path(), 2);
        apply(&mut sm, vec![entry(1, LogCommand::append(vec![dedupe_append(1_000, &["a", "b"])]))]).await;
        apply(&mut sm, vec![entry(2, LogCommand::append(vec![dedupe_append(1_150, &["c"])]))]).await;
    }
    let (_store, mut sm) = open(dir.path(), 2);
    assert_eq!(sm.dedupe_keys(), 1, "a and b were behind 1_050");
    apply(&mut sm, vec![entry(3, LogCommand::append(vec![dedupe_append(1_160, &["c", "a"])]))]).await;
    assert_eq!(sm.view().end_offset("d"), 4, "c is a duplicate, a is not");
}

fn dedupe_append_to(stream: &str, arrival_ms: u64, keys: &[&str]) -> StreamAppend {
    StreamAppend { stream: stream.to_string(), ..with_window(dedupe_append(arrival_ms, keys), 60_000) }
}

/// A stream with no append for longer than its window (and a grace) leaves its window's keys to the index:
/// a Broker deleted or gone quiet no longer holds memory until its next event. Released early (a leader
/// whose clock is behind this node's stamps the next append within the window), the window is rebuilt
/// from the index and still catches the duplicate.
#[tokio::test]
async fn an_idle_streams_window_leaves_memory_and_still_catches_a_duplicate_when_rebuilt() {
    const T: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let now_ms = Arc::new(AtomicU64::new(T));
    let (_store, mut sm) = open_at(dir.path(), 2, now_ms.clone());
    let mut index = 0;
    let appends = vec![dedupe_append_to("quiet", T, &["a", "b"]), dedupe_append_to("busy", T, &["x"])];
    apply(&mut sm, numbered(&mut index, vec![LogCommand::append(appends)])).await;
    assert_eq!(sm.dedupe_keys(), 3);
    // Within the window and the grace: nothing is released.
    now_ms.store(T + 60_000 + DEFAULT_IDLE_GRACE_MS, Ordering::Relaxed);
    sm.release_idle_dedupe_windows();
    assert_eq!(sm.dedupe_keys(), 3);
    // Past them for both; busy appends again, and then the idle windows are looked for.
    now_ms.store(T + 60_000 + DEFAULT_IDLE_GRACE_MS + 1, Ordering::Relaxed);
    let busy = dedupe_append_to("busy", now_ms.load(Ordering::Relaxed), &["y"]);
    apply(&mut sm, numbered(&mut index, vec![LogCommand::append(vec![busy])])).await;
    sm.release_idle_dedupe_windows();
    assert_eq!(sm.dedupe_keys(), 1, "only busy's y is held: quiet's window and busy's x (behind its horizon) went");
    // Within quiet's window by the leader's clock: a is a duplicate, read from the index, c is new.
    let quiet = dedupe_append_to("quiet", T + 1_000, &["a", "c"]);
    apply(&mut sm, numbered(&mut index, vec![LogCommand::append(vec![quiet])])).await;
    assert_eq!(sm.view().end_offset("quiet"), 3, "a was seen, c was not");
    assert_eq!(sm.dedupe_keys(), 4, "quiet's a, b and c again, and busy's y");
}

/// At open a node rebuilds only the windows worth holding by its clock; the others come back from the index
/// at their stream's next append, and decide as before.
#[tokio::test]
async fn a_reopened_node_rebuilds_only_the_windows_worth_holding() {
    const T: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let now_ms = Arc::new(AtomicU64::new(T));
    {
        let (_store, mut sm) = open_at(dir.path(), 2, now_ms.clone());
        let appends = vec![
            dedupe_append_to("old", T, &["a", "b"]),
            // No dedupe: its horizon stays 0, and nothing of it is read at open.
            append("plain", T, &["p"]),
        ];
        apply(&mut sm, vec![entry(1, LogCommand::append(appends))]).await;
        let recent = dedupe_append_to("recent", T + 100_000, &["r"]);
        apply(&mut sm, vec![entry(2, LogCommand::append(vec![recent]))]).await;
    }
    now_ms.store(T + 100_000, Ordering::Relaxed);
    let (_store, mut sm) = open_at(dir.path(), 2, now_ms);
    assert_eq!(sm.dedupe_keys(), 1, "recent's r; old's window is past its time");
    let appends =
        vec![dedupe_append_to("old", T + 50_000, &["b", "c"]), dedupe_append_to("recent", T + 100_001, &["r"])];
    apply(&mut sm, vec![entry(3, LogCommand::append(appends))]).await;
    assert_eq!(sm.view().end_offset("old"), 3, "b was seen (the window rebuilt), c was not");
    assert_eq!(sm.view().end_offset("recent"), 1, "r was seen");
}

/// Regression (review of the compaction-filter expiry, kept for the in-memory window): what one replica
/// forgot physically must not change a later decision. A window made longer than before must not bring
/// back keys behind the horizon, whether the replica kept running or reopened (rebuilt) in between.
#[tokio::test]
async fn a_longer_window_does_not_bring_back_keys_whether_or_not_the_window_was_rebuilt() {
    let entries = || {
        vec![
            entry(1, LogCommand::append(vec![dedupe_append(1_000, &["x"])])),
            entry(2, LogCommand::append(vec![dedupe_append(1_300, &["y"])])),
        ]
    };
    let longer = with_window(dedupe_append(1_310, &["x"]), 1_000);
    let mut ends = Vec::new();
    for reopen_first in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, mut sm) = open(dir.path(), 2);
        apply(&mut sm, entries()).await;
        let (_store, mut sm) = if reopen_first {
            drop((store, sm));
            open(dir.path(), 2)
        } else {
            (store, sm)
        };
        apply(&mut sm, vec![entry(3, LogCommand::append(vec![longer.clone()]))]).await;
        ends.push(sm.view().end_offset("d"));
    }
    assert_eq!(ends, vec![3, 3], "x is stored again on both, rebuilt or not");
}

/// Retention decides too: a trimmed event's key is forgotten with it, on every replica alike (a rebuilt
/// window could not know it: its index entry went with the trim).
#[tokio::test]
async fn a_trimmed_events_key_is_new_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 2);
    let window = |append| with_window(append, 60_000);
    apply(
        &mut sm,
        vec![
            entry(1, LogCommand::append(vec![window(dedupe_append(1_000, &["a", "b"]))])),
            entry(2, LogCommand::Trim { stream: "d".into(), before_offset: 1 }),
            entry(3, LogCommand::append(vec![window(dedupe_append(1_010, &["a", "b"]))])),
        ],
    )
    .await;
    assert_eq!(sm.view().end_offset("d"), 3, "a was trimmed (stored again), b was not (a duplicate)");
}

/// Regression (a trim that splits an append deleted its time-index entry, while the window kept the keys
/// after the split): a replica that reopened then forgot them, and one that kept running did not, so a
/// duplicate of one was stored by the first and not by the second. The entry now stays while it may
/// straddle the start, and the window reads its fingerprints there.
#[tokio::test]
async fn a_trim_mid_append_keeps_the_later_keys_whether_or_not_the_window_was_rebuilt() {
    let window = |append| with_window(append, 60_000);
    let mut ends = Vec::new();
    for reopen in [false, true] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, mut sm) = open(dir.path(), 2);
        apply(&mut sm, vec![entry(1, LogCommand::append(vec![window(dedupe_append(1_000, &["a", "b", "c"]))]))]).await;
        apply(&mut sm, vec![entry(2, LogCommand::Trim { stream: "d".into(), before_offset: 1 })]).await;
        let (_store, mut sm) = if reopen {
            drop((store, sm));
            open(dir.path(), 2)
        } else {
            (store, sm)
        };
        apply(&mut sm, vec![entry(3, LogCommand::append(vec![window(dedupe_append(1_010, &["c", "a"]))]))]).await;
        ends.push(sm.view().end_offset("d"));
        assert_eq!(sm.dedupe_keys(), 3, "b and c, and a again; reopened: {reopen}");
    }
    assert_eq!(ends, vec![4, 4], "c is a duplicate and a is new, on both");
}

/// An append's later keys are looked up in its time-index entry once it is written: a duplicate of one,
/// applied in a later batch, is found there.
#[tokio::test]
async fn a_duplicate_in_a_later_batch_is_confirmed_from_the_time_index() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 2);
    let keys: Vec<String> = (0..200).map(|i| format!("k{i}")).collect();
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    apply(&mut sm, vec![entry(1, LogCommand::append(vec![dedupe_append(1_000, &keys)]))]).await;
    apply(&mut sm, vec![entry(2, LogCommand::append(vec![dedupe_append(1_010, &["k7", "k199", "new"])]))]).await;
    assert_eq!(sm.view().end_offset("d"), 201, "k7 and k199 were seen, new was not");
}

/// Turns the data dir into one an earlier version wrote: every time-index value empty, and each of `seen`
/// (stream id, key, seen at) in the `dedupe` column family of `group`.
fn as_written_by_an_earlier_version(store: &Store, group: u32, seen: &[(u32, &[u8], u64)]) {
    let db = store.db();
    let index = cf(db, crate::store::keys::CF_TIME_INDEX).expect("cf");
    let keys: Vec<_> = db.iterator_cf(index, rocksdb::IteratorMode::Start).map(|kv| kv.expect("kv").0).collect();
    for key in keys {
        db.put_cf(index, key, []).expect("put");
    }
    let dedupe = cf(db, crate::store::keys::CF_DEDUPE).expect("cf");
    for (stream_id, key, seen_ms) in seen {
        db.put_cf(dedupe, crate::store::keys::dedupe_seen_key(group, *stream_id, key), seen_ms.to_be_bytes())
            .expect("put");
    }
}

/// Data dirs of earlier versions kept each key in the `dedupe` column family and wrote empty time-index
/// values: until the window passes those appends, a key not in memory is looked up there.
#[tokio::test]
async fn keys_an_earlier_version_kept_on_disk_still_catch_duplicates() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let (store, mut sm) = open(dir.path(), 2);
        apply(&mut sm, vec![entry(1, LogCommand::append(vec![dedupe_append(1_000, &["old"])]))]).await;
        as_written_by_an_earlier_version(&store, 2, &[(0, b"old", 1_000)]);
    }
    let (_store, mut sm) = open(dir.path(), 2);
    assert_eq!(sm.dedupe_keys(), 0, "nothing to rebuild from");
    apply(&mut sm, vec![entry(2, LogCommand::append(vec![dedupe_append(1_050, &["old", "new"])]))]).await;
    assert_eq!(sm.view().end_offset("d"), 2, "old was found on disk, new was stored");
    apply(&mut sm, vec![entry(3, LogCommand::append(vec![dedupe_append(1_060, &["new"])]))]).await;
    assert_eq!(sm.view().end_offset("d"), 2, "new is in memory");
    apply(&mut sm, vec![entry(4, LogCommand::append(vec![dedupe_append(1_120, &["old"])]))]).await;
    assert_eq!(sm.view().end_offset("d"), 3, "past the window, the old key no longer counts");
}

/// Regression (review of session 67): a window rebuilt in the middle of an apply batch took the stream's end as
/// staged, past an append without dedupe earlier in the batch, for where an earlier version's last append
/// ends; that append's key, trimmed with its event, then counted again on the replica that rebuilt, and not on
/// one that held its window.
#[tokio::test]
async fn a_window_rebuilt_mid_batch_ends_an_earlier_versions_append_where_the_index_does() {
    const T: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let now_ms = Arc::new(AtomicU64::new(T));
    {
        let (store, mut sm) = open_at(dir.path(), 2, now_ms.clone());
        apply(&mut sm, vec![entry(1, LogCommand::append(vec![dedupe_append_to("d", T, &["old"])]))]).await;
        as_written_by_an_earlier_version(&store, 2, &[(0, b"old", T)]);
        apply(&mut sm, vec![entry(2, LogCommand::Trim { stream: "d".into(), before_offset: 1 })]).await;
    }
    // Reopened by a clock past the window: no window held, the next append with dedupe rebuilds it.
    now_ms.store(T + 10 * 60_000, Ordering::Relaxed);
    let (_store, mut sm) = open_at(dir.path(), 2, now_ms);
    let batch = vec![append("d", T + 1_000, &["plain"]), dedupe_append_to("d", T + 1_000, &["old"])];
    apply(&mut sm, vec![entry(3, LogCommand::append(batch))]).await;
    assert_eq!(sm.view().end_offset("d"), 3, "old's event was trimmed: old is new again, as with a window held");
}

/// A rebuild reads only the index entries of appends below the stream's written end: an entry past it was
/// never written by an apply (the index, the events and the stream's state go in one batch), so it is
/// refused as corruption, whether the window is rebuilt at open or at the stream's next append, rather than
/// counted as keys of events that are not stored.
#[tokio::test]
async fn an_index_entry_past_the_streams_end_is_refused_as_corruption_by_a_rebuild() {
    const T: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let now_ms = Arc::new(AtomicU64::new(T));
    {
        let (store, mut sm) = open_at(dir.path(), 2, now_ms.clone());
        apply(&mut sm, vec![entry(1, LogCommand::append(vec![dedupe_append_to("d", T, &["a", "b"])]))]).await;
        let index = cf(store.db(), crate::store::keys::CF_TIME_INDEX).expect("cf");
        // It straddles the end: from offset 1 (the second of the two events stored) to 3.
        let stray = [b"b".as_slice(), b"c"].map(crate::store::dedupe_window::Fingerprint::of_key);
        let value = crate::store::dedupe_window::index_value(Some(&stray));
        store.db().put_cf(index, crate::store::keys::time_index_key(2, 0, T + 1, 1), value).expect("put");
    }
    // At open (the window is worth holding by this clock).
    let store = Store::open(dir.path()).expect("open store");
    let clock = now_ms.clone();
    let memory = DedupeMemory { clock_ms: Arc::new(move || clock.load(Ordering::Relaxed)), idle_grace_ms: 0 };
    let opened =
        GroupStateMachine::open(store.db().clone(), 2, store.snapshot_dir(), store.dedupe_horizons().clone(), memory);
    let error = opened.err().expect("the rebuild at open refuses the stray entry").to_string();
    assert!(error.contains("at offsets 1..3 reaches past the stream's written end 2"), "{error}");
    drop(store);
    // At the next append, by a node that held no window (its clock past the window).
    now_ms.store(T + 10 * 60_000, Ordering::Relaxed);
    let (_store, mut sm) = open_at(dir.path(), 2, now_ms);
    assert_eq!(sm.dedupe_keys(), 0);
    let next = vec![(entry(2, LogCommand::append(vec![dedupe_append_to("d", T + 2, &["c"])])), None)];
    let error = sm.apply(stream::iter(next.into_iter().map(Ok))).await.expect_err("the rebuild refuses it");
    assert!(error.to_string().contains("the store is corrupt"), "{error}");
    assert_eq!(sm.view().end_offset("d"), 2, "nothing of the append was written");
}

/// A follower that installs a snapshot rebuilds the windows from it, and decides as the leader does.
#[tokio::test]
async fn a_snapshot_carries_the_dedupe_window() {
    let source_dir = tempfile::tempdir().expect("tempdir");
    let (_source_store, mut source) = open(source_dir.path(), 2);
    apply(&mut source, vec![entry(1, LogCommand::append(vec![dedupe_append(1_000, &["a", "b"])]))]).await;
    let snapshot = snapshot_to_send(&mut source).await;
    let target_dir = tempfile::tempdir().expect("tempdir");
    let (_target_store, mut target) = open(target_dir.path(), 2);
    let copy = target_dir.path().join("incoming.snap.incoming");
    receive(snapshot.snapshot, &copy).await;
    target.install_snapshot(&snapshot.meta, SnapshotData::File { path: copy }).await.expect("install");
    let next = || vec![entry(2, LogCommand::append(vec![dedupe_append(1_010, &["b", "c"])]))];
    apply(&mut source, next()).await;
    apply(&mut target, next()).await;
    assert_eq!(source.view().end_offset("d"), 3);
    assert_eq!(target.view().end_offset("d"), 3, "b is a duplicate on both");
}

/// Regression (review): `SetMembers` carried a whole member list built before it committed, so two changes
/// run through different nodes could undo each other. `AddMember` / `RemoveMember` apply to the list current
/// at apply time, and the state machine remembers when each former member was removed, across a reopen.
#[tokio::test]
async fn member_changes_apply_to_the_current_list_and_record_removals() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 0);
    let members = |ids: &[u64]| ids.iter().map(|id| (*id, format!("10.0.0.{id}:7070"))).collect();
    let config = crate::command::cluster_config::ClusterConfig::new(2, members(&[1, 2, 3])).expect("config");
    apply(&mut sm, vec![entry(1, LogCommand::InitCluster(config))]).await;
    // Node 4 added through one node while node 3 is removed through another: both stand.
    apply(
        &mut sm,
        vec![
            entry(2, LogCommand::RemoveMember(3)),
            entry(3, LogCommand::AddMember { node: 4, addr: "10.0.0.4:7070".into() }),
        ],
    )
    .await;
    let applied = sm.view().watch_cluster_config().borrow().clone().expect("config");
    assert_eq!(applied.config.members, members(&[1, 2, 4]));
    assert_eq!(applied.removed_at, std::collections::BTreeMap::from([(3, 2)]));
    // The last member is never removed; an old-style whole list records what it drops.
    apply(&mut sm, vec![entry(4, LogCommand::SetMembers(members(&[4]))), entry(5, LogCommand::RemoveMember(4))]).await;
    apply(&mut sm, vec![entry(6, LogCommand::AddMember { node: 3, addr: "10.0.0.3:7070".into() })]).await;
    let expected = std::collections::BTreeMap::from([(1, 4), (2, 4), (3, 2)]);
    let applied = sm.view().watch_cluster_config().borrow().clone().expect("config");
    assert_eq!((applied.config.members, applied.removed_at), (members(&[3, 4]), expected.clone()));
    drop(sm);
    drop(_store);
    let (_store, sm) = open(dir.path(), 0);
    let applied = sm.view().watch_cluster_config().borrow().clone().expect("config after reopen");
    assert_eq!((applied.config.members, applied.removed_at), (members(&[3, 4]), expected));
}

#[test]
fn a_column_familys_options_can_be_tuned_from_the_environment_and_bad_ones_are_named() {
    assert_eq!(cf_options_variable("raft_log"), "SLUICE_ROCKSDB_OPTIONS_RAFT_LOG");
    let set = |wanted: &'static str| {
        move |variable: &str| (variable == "SLUICE_ROCKSDB_OPTIONS_EVENTS").then(|| wanted.to_string())
    };
    assert!(super::tuned_cf_options("events", set("level0_file_num_compaction_trigger=8")).is_ok());
    assert!(super::tuned_cf_options("events", set("  ")).is_ok(), "blank is unset");
    let error = super::tuned_cf_options("events", set("level0_file_num_compaction_trigger=many")).err();
    assert!(error.as_deref().is_some_and(|e| e.starts_with("SLUICE_ROCKSDB_OPTIONS_EVENTS: ")), "{error:?}");
    let error = super::tuned_cf_options("events", set("no_such_option=1")).err();
    assert!(error.is_some(), "an unknown option is refused, not ignored");
    assert!(super::tuned_cf_options("dedupe", set("no_such_option=1")).is_ok(), "only the named family");
}

/// The options RocksDB recorded for a column family in the newest OPTIONS file of `dir`.
fn recorded_option(dir: &std::path::Path, cf: &str, option: &str) -> Option<String> {
    let newest = std::fs::read_dir(dir.join("db"))
        .expect("db dir")
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("OPTIONS-")))
        .max()?;
    let text = std::fs::read_to_string(newest).expect("read OPTIONS");
    let section = text.split("[CFOptions \"").find(|section| section.starts_with(&format!("{cf}\"")))?;
    section.lines().find_map(|line| line.trim().strip_prefix(&format!("{option}=")).map(str::to_string))
}

#[test]
fn events_time_index_and_dedupe_compact_tiered_and_the_raft_log_leveled() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(dir.path()).expect("open");
    drop(store);
    let style = |cf: &str| recorded_option(dir.path(), cf, "compaction_style");
    assert_eq!(style("events").as_deref(), Some("kCompactionStyleUniversal"));
    assert_eq!(style("dedupe").as_deref(), Some("kCompactionStyleUniversal"));
    assert_eq!(style("time_index").as_deref(), Some("kCompactionStyleUniversal"));
    assert_eq!(style("raft_log").as_deref(), Some("kCompactionStyleLevel"));
    assert_eq!(recorded_option(dir.path(), "events", "enable_blob_files").as_deref(), Some("true"));
    assert_eq!(recorded_option(dir.path(), "raft_log", "enable_blob_files").as_deref(), Some("true"));
    assert_eq!(recorded_option(dir.path(), "time_index", "enable_blob_files").as_deref(), Some("true"));
    assert_eq!(recorded_option(dir.path(), "events", "level0_file_num_compaction_trigger").as_deref(), Some("8"));
    assert_eq!(recorded_option(dir.path(), "time_index", "level0_file_num_compaction_trigger").as_deref(), Some("8"));
    assert_eq!(recorded_option(dir.path(), "dedupe", "level0_file_num_compaction_trigger").as_deref(), Some("4"));
    assert_eq!(recorded_option(dir.path(), "dedupe", "enable_blob_files").as_deref(), Some("false"));
}

/// Data dirs of versions before session 72 compacted `time_index` leveled: such a dir, its entries pushed
/// to the bottom level, opens with the tiered compaction and answers reads by time and dedupe lookups from
/// those entries as before.
#[tokio::test]
async fn a_time_index_compacted_leveled_by_an_earlier_version_reads_back_when_tiered() {
    let dir = tempfile::tempdir().expect("tempdir");
    let keys: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();
    {
        let leveled = |variable: &str| {
            (variable == cf_options_variable(keys::CF_TIME_INDEX))
                .then(|| "compaction_style=kCompactionStyleLevel;level0_file_num_compaction_trigger=4".to_string())
        };
        let store = Store::open_tuned(dir.path(), leveled).expect("open leveled");
        let mut sm = state_machine_on(&store, 2, Arc::new(AtomicU64::new(0)));
        // One append of one key per entry, as single-event requests make them.
        for (i, key) in keys.iter().enumerate() {
            let append = with_window(dedupe_append(1_000 + 10 * i as u64, &[key.as_str()]), 60_000);
            apply(&mut sm, vec![entry(i as u64 + 1, LogCommand::append(vec![append]))]).await;
        }
        let time_index = cf(store.db(), keys::CF_TIME_INDEX).expect("cf");
        store.db().compact_range_cf(time_index, None::<&[u8]>, None::<&[u8]>);
        let files_at = |level: u32| {
            store
                .db()
                .property_int_value_cf(time_index, &format!("rocksdb.num-files-at-level{level}"))
                .expect("property")
        };
        assert_eq!(files_at(0), Some(0), "compacted out of L0");
        assert!((1..7).any(|level| files_at(level).unwrap_or(0) > 0), "on a lower level, as leveled keeps them");
    }
    assert_eq!(recorded_option(dir.path(), "time_index", "compaction_style").as_deref(), Some("kCompactionStyleLevel"));
    let (_store, mut sm) = open(dir.path(), 2);
    assert_eq!(
        recorded_option(dir.path(), "time_index", "compaction_style").as_deref(),
        Some("kCompactionStyleUniversal")
    );
    let view = sm.view();
    assert_eq!(view.offset_for_time("d", 1_000).expect("time"), 0);
    assert_eq!(view.offset_for_time("d", 1_101).expect("time"), 11);
    assert_eq!(view.offset_for_time("d", 9_999).expect("time"), 40, "past the end: the end offset");
    let duplicates_and_one_new = with_window(dedupe_append(1_500, &["k3", "k39", "new"]), 60_000);
    apply(&mut sm, vec![entry(41, LogCommand::append(vec![duplicates_and_one_new]))]).await;
    assert_eq!(sm.view().end_offset("d"), 41, "k3 and k39 were seen in the rebuilt window, new was not");
}

/// The metadata group's committed log id is on disk at once; a partition group's goes with its next append.
#[tokio::test]
async fn a_partitions_committed_log_id_is_written_with_its_next_append() {
    use openraft::storage::{IOFlushed, RaftLogStorage};
    let dir = tempfile::tempdir().expect("tempdir");
    let committed =
        |index| openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId::new(1, 1).to_committed(), index);
    let partition = crate::ids::partition_group(0);
    {
        let store = Store::open(dir.path()).expect("open store");
        let mut metadata = GroupLogStore::new(store.db().clone(), store.wal().clone(), crate::ids::METADATA_GROUP);
        let mut log = GroupLogStore::new(store.db().clone(), store.wal().clone(), partition);
        let blank = |index| openraft::Entry { log_id: committed(index), payload: openraft::EntryPayload::Blank };
        log.append([blank(1), blank(2)], IOFlushed::noop()).await.expect("append");
        metadata.save_committed(Some(committed(7))).await.expect("save");
        log.save_committed(Some(committed(1))).await.expect("save");
        log.append([blank(3)], IOFlushed::noop()).await.expect("append");
        log.save_committed(Some(committed(3))).await.expect("save");
        assert_eq!(log.read_committed().await.expect("read"), Some(committed(3)), "what this process was given");
        // The appends' fsyncs run on the WAL thread, which holds the DB while it syncs (nothing above waited
        // for them): once a later sync is done, so are they, and dropping the store closes the DB here.
        // Without this the reopen below found the DB still open about once in ten runs.
        store.wal().sync().await.expect("sync");
    }
    let store = Store::open(dir.path()).expect("reopen store");
    let mut metadata = GroupLogStore::new(store.db().clone(), store.wal().clone(), crate::ids::METADATA_GROUP);
    let mut log = GroupLogStore::new(store.db().clone(), store.wal().clone(), partition);
    assert_eq!(metadata.read_committed().await.expect("read"), Some(committed(7)));
    assert_eq!(log.read_committed().await.expect("read"), Some(committed(1)), "3 came after the last append");
}

/// Regression: `trigger pause` read the object, set its annotation and wrote the object whole, so an apply that
/// landed in between was undone. `SetAnnotation` is applied to the object as it is at apply time.
#[tokio::test]
async fn an_annotation_is_set_on_the_object_current_at_apply_time_and_keeps_a_change_applied_meanwhile() {
    use crate::command::{ResourceKey, ResourceRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 0);
    let key = ResourceKey { kind: "Trigger".into(), namespace: "default".into(), name: "t".into() };
    let trigger = |uri: &str| ResourceRecord {
        key: key.clone(),
        json: serde_json::json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": "t", "namespace": "default"},
            "spec": {"broker": "default", "subscriber": {"uri": uri}}})
        .to_string(),
        uid: "uid-1".into(),
        applied_at: "2026-12-01T00:00:00Z".into(),
    };
    let set = |value: Option<&str>| LogCommand::SetAnnotation {
        key: key.clone(),
        uid: "uid-1".into(),
        annotation: "sluice.dev/paused".into(),
        value: value.map(str::to_string),
    };
    let absent_key = ResourceKey { name: "gone".into(), ..key.clone() };
    apply(
        &mut sm,
        vec![
            entry(1, LogCommand::PutResource(trigger("http://one"))),
            // The pause was asked for with the first object; an apply lands before it commits.
            entry(2, LogCommand::PutResource(trigger("http://two"))),
            entry(3, set(Some("true"))),
            entry(
                4,
                LogCommand::SetAnnotation {
                    key: absent_key.clone(),
                    uid: String::new(),
                    annotation: "a".into(),
                    value: None,
                },
            ),
            // Meant for another object of that name (deleted and created again since): not this one.
            entry(
                5,
                LogCommand::SetAnnotation {
                    key: key.clone(),
                    uid: "uid-0".into(),
                    annotation: "other".into(),
                    value: Some("x".into()),
                },
            ),
        ],
    )
    .await;
    let stored = |sm: &GroupStateMachine| -> serde_json::Value {
        serde_json::from_str(&sm.view().resource(&key).expect("stored")).expect("json")
    };
    let object = stored(&sm);
    assert_eq!(object["spec"]["subscriber"]["uri"], "http://two", "the apply in between is kept");
    assert_eq!(object["metadata"]["annotations"]["sluice.dev/paused"], "true");
    assert_eq!(object["metadata"]["generation"], 2, "an annotation is not a spec change");
    assert_eq!(object["metadata"]["uid"], "uid-1");
    assert_eq!(object["metadata"]["resourceVersion"], "3");
    assert!(sm.view().resource(&absent_key).is_none(), "nothing is created for an absent object");
    assert!(object["metadata"]["annotations"].get("other").is_none(), "another object's annotation: {object}");

    apply(&mut sm, vec![entry(6, set(None)), entry(7, set(None))]).await;
    let object = stored(&sm);
    assert!(object["metadata"].get("annotations").is_none(), "removed, and the emptied map with it: {object}");
    assert_eq!(object["metadata"]["resourceVersion"], "6", "removing it again changes nothing");
    assert_eq!(object["spec"]["subscriber"]["uri"], "http://two");
}

/// Regression: a Trigger paused through the admin API was resumed by the next apply of the object without the
/// annotation (the Kubernetes controller applies every Ready object again every few minutes). `ApplyResource`
/// keeps what `SetAdminAnnotation` set; the earlier `PutResource`/`SetAnnotation` entries keep their rules, so a
/// replay of an old log stores what it stored before.
#[tokio::test]
async fn a_pause_set_through_the_admin_api_survives_an_apply_without_it_and_old_entries_keep_their_rules() {
    use crate::command::{ResourceKey, ResourceRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 0);
    let record = |name: &str| ResourceRecord {
        key: ResourceKey { kind: "Trigger".into(), namespace: "default".into(), name: name.into() },
        json: serde_json::json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"broker": "default", "subscriber": {"uri": "http://sink"}}})
        .to_string(),
        uid: format!("uid-{name}"),
        applied_at: "2026-12-02T00:00:00Z".into(),
    };
    let pause = |name: &str, admin: bool| {
        let (key, uid) = (record(name).key, format!("uid-{name}"));
        let (annotation, value) = ("sluice.dev/paused".to_string(), Some("true".to_string()));
        if admin {
            LogCommand::SetAdminAnnotation { key, uid, annotation, value }
        } else {
            LogCommand::SetAnnotation { key, uid, annotation, value }
        }
    };
    apply(
        &mut sm,
        vec![
            entry(1, LogCommand::ApplyResource(record("new"))),
            entry(2, pause("new", true)),
            entry(3, LogCommand::ApplyResource(record("new"))),
            entry(4, LogCommand::PutResource(record("old"))),
            entry(5, pause("old", false)),
            entry(6, LogCommand::PutResource(record("old"))),
        ],
    )
    .await;
    let paused = |name: &str| -> Option<String> {
        let object: serde_json::Value =
            serde_json::from_str(&sm.view().resource(&record(name).key).expect("stored")).expect("json");
        object.pointer("/metadata/annotations/sluice.dev~1paused").and_then(|v| v.as_str()).map(str::to_string)
    };
    assert_eq!(paused("new").as_deref(), Some("true"), "kept by the apply that did not name it");
    assert_eq!(paused("old"), None, "an earlier log's entries: the apply replaced the annotations, as it did");
}

/// The conditional apply a cluster-wide lease takes: written only when the stored object's `spec.token` is the
/// one named (none: only when there is no object), against the object as staged in the same apply too, so that
/// of two writes naming the same token in one entry batch only the first holds.
#[tokio::test]
async fn a_conditional_apply_holds_only_over_the_token_it_names() {
    use crate::command::{ResourceKey, ResourceRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 0);
    let key =
        ResourceKey { kind: "RedriveLease".into(), namespace: "sluice-system".into(), name: "trigger.d.t".into() };
    let write = |token: &str, over: Option<&str>| LogCommand::ApplyResourceIfToken {
        record: ResourceRecord {
            key: key.clone(),
            json: serde_json::json!({"apiVersion": "sluice.dev/v1alpha1", "kind": "RedriveLease",
                "metadata": {"name": "trigger.d.t", "namespace": "sluice-system"},
                "spec": {"holder": 1, "token": token, "expiresAtMs": 1}})
            .to_string(),
            uid: "uid".into(),
            applied_at: "2026-12-02T00:00:00Z".into(),
        },
        token: over.map(str::to_string),
    };
    let stored_token = |sm: &GroupStateMachine| -> Option<String> {
        let object: serde_json::Value = serde_json::from_str(&sm.view().resource(&key)?).ok()?;
        object.pointer("/spec/token").and_then(|t| t.as_str()).map(str::to_string)
    };
    let steps: [(&str, Vec<LogCommand>, &str); 4] = [
        ("created where there was none", vec![write("a", None)], "a"),
        ("not over an object that exists, nor over another token", vec![write("b", None), write("c", Some("x"))], "a"),
        ("over the stored token", vec![write("d", Some("a"))], "d"),
        ("of two over the same token in one batch, the first", vec![write("e", Some("d")), write("f", Some("d"))], "e"),
    ];
    let mut index = 0;
    for (case, commands, expected) in steps {
        apply(&mut sm, numbered(&mut index, commands)).await;
        assert_eq!(stored_token(&sm).as_deref(), Some(expected), "{case}");
    }
}

/// The apply the admin API's Apply takes: written only over the stored object's `resourceVersion` it was checked
/// against (none: only where there is no object), against the object as staged in the same apply too, so that of
/// two applies checked against the same version in one entry batch only the first holds.
#[tokio::test]
async fn an_apply_holds_only_over_the_version_it_was_checked_against() {
    use crate::command::{ResourceKey, ResourceRecord};
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 0);
    let key = ResourceKey { kind: "Trigger".into(), namespace: "default".into(), name: "t".into() };
    let write = |broker: &str, over: Option<u64>| LogCommand::ApplyResourceIfVersion {
        record: ResourceRecord {
            key: key.clone(),
            json: serde_json::json!({"apiVersion": "eventing.knative.dev/v1", "kind": "Trigger",
                "metadata": {"name": "t", "namespace": "default"},
                "spec": {"broker": broker, "subscriber": {"uri": "http://x/"}}})
            .to_string(),
            uid: "uid".into(),
            applied_at: "2026-12-06T00:00:00Z".into(),
        },
        expected_version: over,
    };
    let stored = |sm: &GroupStateMachine| -> Option<(String, u64)> {
        let object: serde_json::Value = serde_json::from_str(&sm.view().resource(&key)?).ok()?;
        let broker = object.pointer("/spec/broker")?.as_str()?.to_string();
        Some((broker, object.pointer("/metadata/resourceVersion")?.as_str()?.parse().ok()?))
    };
    let mut index = 0;
    apply(&mut sm, numbered(&mut index, vec![write("a", None), write("b", None)])).await;
    let (broker, version) = stored(&sm).expect("created");
    assert_eq!(broker, "a", "of two creates in one batch, the first");
    apply(&mut sm, numbered(&mut index, vec![write("c", Some(version + 1)), write("d", None)])).await;
    assert_eq!(stored(&sm).map(|(b, _)| b).as_deref(), Some("a"), "not over another version, nor over none");
    apply(&mut sm, numbered(&mut index, vec![write("e", Some(version)), write("f", Some(version))])).await;
    assert_eq!(stored(&sm).map(|(b, _)| b).as_deref(), Some("e"), "over its version, once");
}

/// The conditional offset commit a replay's request takes: written only when every expected cursor is stored at
/// its offset (absent: 0), against the cursors as staged in the same apply too, so that of two replays asked at
/// once in one entry batch only the first holds.
#[tokio::test]
async fn a_conditional_commit_holds_only_over_the_offsets_it_expects() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    let ask = |target: u64, pending: u64| LogCommand::CommitOffsetsIf {
        expected: vec![("t#replay".to_string(), pending)],
        commits: vec![commit("t#replay", target, true)],
    };
    let steps: [(&str, Vec<LogCommand>, Option<u64>); 5] = [
        ("an absent cursor reads as 0", vec![ask(5, 0)], Some(5)),
        ("not over another value", vec![ask(7, 0), ask(8, 4)], Some(5)),
        ("over the value it expects", vec![ask(9, 5)], Some(9)),
        ("of two over the same value in one batch, the first", vec![ask(1, 9), ask(2, 9)], Some(1)),
        (
            "a reset to 0 (taken) lets the next in",
            vec![LogCommand::CommitOffsets(vec![commit("t#replay", 0, true)]), ask(3, 0)],
            Some(3),
        ),
    ];
    let mut index = 0;
    for (case, commands, expected) in steps {
        apply(&mut sm, numbered(&mut index, commands)).await;
        assert_eq!(sm.view().committed_offset("t#replay").expect("read"), expected, "{case}");
    }
}

/// A size limit's pass reads the retained records only as far as it drops: the records whose sizes add up to
/// what is over the limit, and the first one kept (regression: every retained record, at every pass).
#[tokio::test]
async fn a_size_limits_pass_reads_only_what_it_drops() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (_store, mut sm) = open(dir.path(), 1);
    let payloads: Vec<String> = (0..10).map(|i| format!("{i}").repeat(100)).collect();
    let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
    apply(&mut sm, vec![entry(1, LogCommand::append(vec![append("s", 1_000, &payloads)]))]).await;
    let view = sm.view();
    assert_eq!(view.extent("s").retained_bytes, 1_000);
    // (bytes over the limit, the records read)
    for (over, read) in [(250, 4), (300, 4), (301, 5), (1, 2), (1_000, 10)] {
        let sizes = view.record_sizes_to_drop("s", over).expect("read");
        assert_eq!(sizes.len(), read, "{over} bytes over");
        let policy = crate::node::retention::RetentionPolicy { max_age: None, max_bytes: Some(1_000 - over) };
        let point = crate::node::retention::trim_point(&policy, view.extent("s"), 0, &sizes);
        let kept: u64 = (point.unwrap_or(0)..10).map(|_| 100).sum();
        assert!(kept <= 1_000 - over && kept + 100 > 1_000 - over, "{over}: trims before {point:?}");
    }
}
