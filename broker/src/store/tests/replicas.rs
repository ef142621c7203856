//! Replicas of one partition apply one log, each in its own way, and must end with the same streams: a
//! reference applies one entry at a time and holds every dedupe window; two others cut the log into batches
//! at random, read their own clocks (ahead, behind, jumping back), give idle windows up at random sweeps
//! (rebuilt from the `time_index` at the stream's next append with dedupe), reopen their stores, and one
//! installs a snapshot of the other partway. Which windows a node holds is a matter of memory and reads:
//! every replica must store the same events at the same offsets, and take the same keys for duplicates.

use proptest::prelude::*;

use super::*;

const STREAMS: [&str; 3] = ["s0", "s1", "s2"];
const KEYS: u8 = 10;
const T0_MS: u64 = 1_000_000;

/// One log entry's appends, or a trim.
#[derive(Clone, Debug)]
enum Command {
    Appends(Vec<Append>),
    Trim { stream: usize, before_offset: u64 },
}

#[derive(Clone, Debug)]
struct Append {
    stream: usize,
    /// How far the leader's clock moved since the previous append, in milliseconds.
    advance_ms: u64,
    keys: Vec<u8>,
    /// None: the Broker has dedupe off.
    window_ms: Option<u64>,
}

fn append_strategy() -> impl Strategy<Value = Append> {
    (
        0..STREAMS.len(),
        prop_oneof![3 => 0u64..80, 1 => 100u64..1_500],
        proptest::collection::vec(0..KEYS, 1..5),
        prop_oneof![6 => (100u64..600).prop_map(Some), 1 => Just(None)],
    )
        .prop_map(|(stream, advance_ms, keys, window_ms)| Append { stream, advance_ms, keys, window_ms })
}

fn command_strategy() -> impl Strategy<Value = Command> {
    prop_oneof![
        8 => proptest::collection::vec(append_strategy(), 1..4).prop_map(Command::Appends),
        1 => (0..STREAMS.len(), 0u64..30).prop_map(|(stream, before_offset)| Command::Trim { stream, before_offset }),
    ]
}

/// What a replica does before it applies the next batch.
#[derive(Clone, Debug)]
enum Between {
    Nothing,
    /// Its clock moves by this much (back, when negative), then it looks for idle windows.
    Sweep {
        clock_step_ms: i64,
    },
    /// Its process restarts on its store (rebuilding the windows worth holding by its clock).
    Reopen,
}

/// How a replica goes through the log: where its batches end, and what it does between them.
#[derive(Clone, Debug)]
struct Schedule {
    /// The clock's start, relative to the leader's first arrival.
    clock_offset_ms: i64,
    /// How long past its window an idle stream keeps its window.
    idle_grace_ms: u64,
    /// Before each entry: whether a batch ends there, and what happens between.
    cuts: Vec<(bool, Between)>,
}

fn schedule_strategy(entries: usize) -> impl Strategy<Value = Schedule> {
    let between = prop_oneof![
        4 => Just(Between::Nothing),
        4 => (-300i64..2_000).prop_map(|clock_step_ms| Between::Sweep { clock_step_ms }),
        1 => Just(Between::Reopen),
    ];
    (-5_000i64..5_000, 0u64..200, proptest::collection::vec((any::<bool>(), between), entries))
        .prop_map(|(clock_offset_ms, idle_grace_ms, cuts)| Schedule { clock_offset_ms, idle_grace_ms, cuts })
}

fn key(k: u8) -> String {
    format!("k{k}")
}

/// The log entries (numbered from 1), with the leader's arrival stamps, and the last of those.
fn log_entries(commands: &[Command]) -> (Vec<crate::command::Entry>, u64) {
    let mut arrival_ms = T0_MS;
    let mut stamp = |append: &Append| {
        arrival_ms += append.advance_ms;
        let keys: Vec<String> = append.keys.iter().map(|k| key(*k)).collect();
        StreamAppend {
            stream: STREAMS[append.stream].to_string(),
            arrival_ms,
            payloads: keys.iter().map(|k| Bytes::from(format!("{k}@{arrival_ms}"))).collect(),
            dedupe: append.window_ms.map(|window_ms| crate::command::Dedupe {
                window_ms,
                keys: keys.into_iter().map(Bytes::from).collect(),
            }),
        }
    };
    let commands = commands
        .iter()
        .map(|command| match command {
            Command::Trim { stream, before_offset } => {
                LogCommand::Trim { stream: STREAMS[*stream].to_string(), before_offset: *before_offset }
            }
            Command::Appends(appends) => LogCommand::append(appends.iter().map(&mut stamp).collect()),
        })
        .collect();
    let mut index = 0;
    let entries = numbered(&mut index, commands);
    (entries, arrival_ms)
}

/// Every key sent to every stream at `arrival_ms`, the log's last arrival: what a replica stores of it shows
/// which keys its windows take for duplicates.
fn probe(arrival_ms: u64) -> LogCommand {
    let keys: Vec<Bytes> = (0..KEYS).map(|k| Bytes::from(key(k))).collect();
    let appends = STREAMS
        .iter()
        .map(|stream| StreamAppend {
            stream: stream.to_string(),
            arrival_ms,
            payloads: (0..KEYS).map(|k| Bytes::from(format!("probe-{}", key(k)))).collect(),
            dedupe: Some(crate::command::Dedupe { window_ms: 600, keys: keys.clone() }),
        })
        .collect();
    LogCommand::append(appends)
}

/// Every stream as a replica holds it: start, end, and each record (offset, arrival, payload).
type Streams = Vec<(u64, u64, Vec<(u64, u64, Bytes)>)>;

fn streams_of(sm: &GroupStateMachine) -> Streams {
    let view = sm.view();
    STREAMS
        .iter()
        .map(|stream| {
            let batch = view.read(stream, 0, 10_000, usize::MAX).expect("read");
            let records = batch.records.into_iter().map(|r| (r.offset, r.arrival_ms, r.payload)).collect();
            (batch.start_offset, batch.end_offset, records)
        })
        .collect()
}

struct Replica {
    /// First, so that it is closed before its directory goes (the other way round, each close took a second).
    open: Option<(Store, GroupStateMachine)>,
    dir: tempfile::TempDir,
    clock_ms: Arc<AtomicU64>,
    idle_grace_ms: u64,
}

impl Replica {
    fn new(clock_start_ms: u64, idle_grace_ms: u64) -> Replica {
        let mut replica = Replica {
            dir: tempfile::tempdir().expect("tempdir"),
            clock_ms: Arc::new(AtomicU64::new(clock_start_ms)),
            idle_grace_ms,
            open: None,
        };
        replica.reopen();
        replica
    }

    fn reopen(&mut self) {
        drop(self.open.take());
        let store = Store::open(self.dir.path()).expect("open store");
        let clock_ms = self.clock_ms.clone();
        let dedupe_memory = DedupeMemory {
            clock_ms: Arc::new(move || clock_ms.load(Ordering::Relaxed)),
            idle_grace_ms: self.idle_grace_ms,
        };
        let sm = GroupStateMachine::open(
            store.db().clone(),
            2,
            store.snapshot_dir(),
            store.dedupe_horizons().clone(),
            dedupe_memory,
        )
        .expect("open state machine");
        self.open = Some((store, sm));
    }

    fn sm(&mut self) -> &mut GroupStateMachine {
        &mut self.open.as_mut().expect("open").1
    }

    fn step_clock(&self, step_ms: i64) {
        let now = self.clock_ms.load(Ordering::Relaxed);
        self.clock_ms.store(now.saturating_add_signed(step_ms), Ordering::Relaxed);
    }

    /// Applies `entries` as `schedule` cuts them, doing what it says between batches.
    async fn apply_as(&mut self, entries: &[crate::command::Entry], cuts: &[(bool, Between)]) {
        let mut batch = Vec::new();
        for (entry, (cut, between)) in entries.iter().zip(cuts) {
            if *cut && !batch.is_empty() {
                apply(self.sm(), std::mem::take(&mut batch)).await;
                match between {
                    Between::Nothing => {}
                    Between::Sweep { clock_step_ms } => {
                        self.step_clock(*clock_step_ms);
                        self.sm().release_idle_dedupe_windows();
                    }
                    Between::Reopen => self.reopen(),
                }
            }
            batch.push(entry.clone());
        }
        if !batch.is_empty() {
            apply(self.sm(), batch).await;
        }
    }
}

fn clock_start(schedule: &Schedule) -> u64 {
    T0_MS.saturating_add_signed(schedule.clock_offset_ms)
}

fn case_strategy() -> impl Strategy<Value = (Vec<Command>, Schedule, Schedule, usize, usize)> {
    proptest::collection::vec(command_strategy(), 4..36).prop_flat_map(|commands| {
        let entries = commands.len();
        (Just(commands), schedule_strategy(entries), schedule_strategy(entries), 1..entries, 0..entries).prop_map(
            |(commands, a, b, snapshot_at, installed_after)| {
                (commands, a, b, snapshot_at, installed_after.min(snapshot_at))
            },
        )
    })
}

async fn run_case(
    commands: Vec<Command>,
    a: Schedule,
    b: Schedule,
    snapshot_at: usize,
    installed_after: usize,
) -> Result<(), TestCaseError> {
    let (mut entries, last_arrival_ms) = log_entries(&commands);
    entries.push(entry(entries.len() as u64 + 1, probe(last_arrival_ms)));
    let n = entries.len();
    let mut a_cuts = a.cuts.clone();
    let mut b_cuts = b.cuts.clone();
    a_cuts.push((true, Between::Nothing));
    b_cuts.push((true, Between::Nothing));

    // The reference: one entry per apply, every window held (its clock never passes the arrivals).
    let mut reference = Replica::new(0, u64::MAX);
    for entry in &entries {
        apply(reference.sm(), vec![entry.clone()]).await;
    }

    // A: the whole log its way; its snapshot after `snapshot_at` entries is what B installs.
    let mut replica_a = Replica::new(clock_start(&a), a.idle_grace_ms);
    replica_a.apply_as(&entries[..snapshot_at], &a_cuts[..snapshot_at]).await;
    let snapshot = snapshot_to_send(replica_a.sm()).await;
    let received = tempfile::tempdir().expect("tempdir");
    let copy = received.path().join("incoming.snap.incoming");
    receive(snapshot.snapshot, &copy).await;
    replica_a.apply_as(&entries[snapshot_at..], &a_cuts[snapshot_at..]).await;

    // B: its way up to `installed_after`, then A's snapshot (a follower that fell behind), then the rest.
    let mut replica_b = Replica::new(clock_start(&b), b.idle_grace_ms);
    replica_b.apply_as(&entries[..installed_after], &b_cuts[..installed_after]).await;
    let b_copy = replica_b.dir.path().join("incoming.snap.incoming");
    std::fs::copy(&copy, &b_copy).expect("copy snapshot");
    replica_b.sm().install_snapshot(&snapshot.meta, SnapshotData::File { path: b_copy }).await.expect("install");
    replica_b.apply_as(&entries[snapshot_at..], &b_cuts[snapshot_at..]).await;

    let expected = streams_of(reference.sm());
    prop_assert_eq!(&streams_of(replica_a.sm()), &expected, "A (log of {} entries)", n);
    prop_assert_eq!(&streams_of(replica_b.sm()), &expected, "B (log of {} entries)", n);
    // And after a restart each, by clocks far ahead (no window held) and at the arrivals (all held).
    replica_a.clock_ms.store(u64::MAX / 2, Ordering::Relaxed);
    replica_a.reopen();
    replica_b.reopen();
    let again = entry(n as u64 + 1, probe(last_arrival_ms));
    for replica in [&mut reference, &mut replica_a, &mut replica_b] {
        apply(replica.sm(), vec![again.clone()]).await;
    }
    let expected = streams_of(reference.sm());
    prop_assert_eq!(&streams_of(replica_a.sm()), &expected, "A after a reopen with no window held");
    prop_assert_eq!(&streams_of(replica_b.sm()), &expected, "B after a reopen");
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]

    #[test]
    fn replicas_that_batch_sweep_reopen_and_install_differently_store_the_same_events(
        (commands, a, b, snapshot_at, installed_after) in case_strategy()
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(run_case(commands, a, b, snapshot_at, installed_after))?;
    }
}
